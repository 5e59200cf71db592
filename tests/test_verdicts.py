"""The verdict rules of divebatch.analysis, each shown to come out both ways on hand-written run
directories: speed at matched quality (a variant that ends 15 pp lower is not "faster" because it
reaches its own lower target early; a variant genuinely faster at matched quality is), no variant
outside the quality tolerance is named the fastest, and an adaptive arm whose batch never resized is
not evidence (claims 1-3 and the estimator study's row 6)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from fixtures.fake_runs import write_run
from scipy import stats

from divebatch.analysis import claims as claims_mod
from divebatch.analysis import collect_runs, main_table, speedup_table
from divebatch.analysis.display import format_matched
from divebatch.analysis.figures import collapsed_runs, plot_curves, plot_noise_scale, plot_speedup_vs_accuracy
from divebatch.analysis.speedups import matched_table, target_ladder
from divebatch.analysis.stats import matched_target
from divebatch.analysis.tables import diversity_table

SGD_ACC = np.array([40.0, 60.0, 75.0, 85.0, 90.0, 92.0, 93.0, 94.0, 95.0, 95.0])
# ends 15 pp below SGD: its own target (79) comes at epoch 4, SGD's (94) at epoch 8
LOW_ACC = np.array([50.0, 70.0, 78.0, 79.5, 80.0, 80.0, 80.0, 80.0, 80.0, 80.0])
# ends with SGD (94.6 vs 95): reaches the matched target 93.6 at epoch 5, SGD at epoch 8
GOOD_ACC = np.array([50.0, 75.0, 88.0, 93.0, 94.0, 94.2, 94.4, 94.5, 94.6, 94.6])
RESIZING = [64, 64, 128, 128, 256, 256, 512, 512, 512, 512]
E = len(SGD_ACC)


def _write(root, name, acc, method, seed, steps_per_epoch, batch=RESIZING, overrides=()):
    write_run(
        root,
        f"{name}/s{seed}",
        val_acc=acc + 0.1 * seed,
        method=method,
        seed=seed,
        dataset="cifar10",
        initial_batch_size=64,
        max_batch_size=512,
        batch_size=batch if method != "sgd" else [64] * E,
        optimizer_steps=np.cumsum([steps_per_epoch + seed] * E),
        overrides=overrides,
    )


def _study(root, dive_acc, dive_steps: int, dive_batch=RESIZING, seeds=(1, 2, 3), ada_steps: int = 80):
    """SGD small (100 steps per epoch) and AdaBatch (``ada_steps``) with SGD's curve; DiveBatch with
    ``dive_acc`` and ``dive_steps`` steps per epoch (each + the seed, so seeds differ)."""
    for seed in seeds:
        _write(root, "sgd", SGD_ACC, "sgd", seed, 100)
        _write(root, "adabatch", SGD_ACC, "adabatch", seed, ada_steps)
        _write(root, "divebatch", dive_acc, "divebatch", seed, dive_steps, dive_batch)
    return collect_runs(root).epochs


def _claim(claims: pd.DataFrame, claim: int, unit: str, definition: str = claims_mod.PER_RUN) -> pd.Series:
    rows = claims[(claims["claim"] == claim) & (claims["unit"] == unit)]
    if claim not in (3, 4, 6):
        rows = rows[rows["definition"] == definition]
    assert len(rows) == 1
    return rows.iloc[0]


def _row(df: pd.DataFrame, **where) -> pd.Series:
    mask = np.logical_and.reduce([df[k].to_numpy() == v for k, v in where.items()])
    assert mask.sum() == 1, where
    return df[mask].iloc[0]


def test_matched_target_is_the_worse_final_for_both_orders_and_for_a_loss():
    assert matched_target(80.0, 95.0) == matched_target(95.0, 80.0) == 79.0
    assert matched_target(2.0, 2.3, within=0.05, higher=False) == pytest.approx(2.35)
    assert matched_target(2.3, 2.0, within=0.05, higher=False) == pytest.approx(2.35)
    assert np.isnan(matched_target(np.nan, 95.0))


def test_a_variant_15pp_lower_is_not_faster_at_the_matched_target(tmp_path):
    """150 steps per epoch against SGD's 100: by its own (lower) target it looks faster, at the
    target both reach (the lower final - 1 pp = 79 %) it is slower."""
    ep = _study(tmp_path, LOW_ACC, dive_steps=150)
    sp = speedup_table(ep)
    own = _row(sp, method="DiveBatch", baseline="SGD (small batch)", target="own", unit="optimizer_steps")
    assert own["speedup"] > 1.3  # the authors' definition rewards ending low: 8 x 101 / (4 x 151) per seed 1
    m = _row(sp, method="DiveBatch", baseline="SGD (small batch)", target="matched", unit="optimizer_steps")
    assert m["target_value"] == pytest.approx(LOW_ACC[-1] + 0.2 - 1)  # seed-mean final 80.2 - 1 pp
    # both reach 79.2 % at epoch 4: SGD (100 + s) x 4 steps, DiveBatch (150 + s) x 4
    per_seed = np.array([(100 + s) / (150 + s) for s in (1, 2, 3)])
    assert m["speedup"] == pytest.approx(np.exp(np.log(per_seed).mean())) and m["ci_high"] < 1
    assert m["curve_speedup"] == pytest.approx(
        np.mean([100 + s for s in (1, 2, 3)]) / np.mean([150 + s for s in (1, 2, 3)])
    )
    look = claims_mod._Lookup(sp).get("cifar10", "DiveBatch", "", "SGD (small batch)", "optimizer_steps")
    assert not look["faster"] and "own target (authors' definition)" in look["text"]
    authors = claims_mod._AuthorsLookup(main_table(ep), sp).get(
        "cifar10", "DiveBatch", "", "SGD (small batch)", "optimizer_steps"
    )
    assert not authors["faster"]  # own-target ratio > 1 alone does not decide
    claims = claims_mod.claims_table(main_table(ep), sp)
    for claim in (1, 2):
        for definition in (claims_mod.AUTHORS, claims_mod.PER_RUN):
            row = _claim(claims, claim, "optimizer steps", definition)
            assert row["verdict"] == claims_mod.FAILS, (claim, definition)
            # 15 pp lower: outside the quality tolerance, so never named the fastest
            assert "no DiveBatch variant keeps the quality" in row["ours"] and "misses by 13.00 pp" in row["ours"]


def test_the_matched_rule_alone_decides_when_the_quality_is_kept(tmp_path):
    """1.5 pp lower (within claim 1's 2 pp): its own target (final - 1 pp) against the baselines' own
    (higher) targets says faster in optimizer steps; at the matched target it is slower. Only the
    matched target decides."""
    late = np.array([50.0, 70.0, 80.0, 85.0, 88.0, 90.0, 91.0, 92.0, 93.0, 93.5])
    ep = _study(tmp_path, late, dive_steps=85, ada_steps=100)
    sp = speedup_table(ep)
    for baseline in ("SGD (small batch)", "AdaBatch"):
        own = _row(sp, method="DiveBatch", baseline=baseline, target="own", unit="optimizer_steps")
        # own targets: baseline 94 + 0.1 s at epoch 8, DiveBatch 92.5 + 0.1 s at epoch 9
        per_seed = [8 * (100 + s) / (9 * (85 + s)) for s in (1, 2, 3)]
        assert own["speedup"] == pytest.approx(np.exp(np.log(per_seed).mean())) and own["ci_low"] > 1
        m = _row(sp, method="DiveBatch", baseline=baseline, target="matched", unit="optimizer_steps")
        # matched target min(93.7, 95.2) - 1 = 92.7: the baseline at epoch 7, DiveBatch at epoch 9
        assert m["target_value"] == pytest.approx(92.7)
        per_seed = [7 * (100 + s) / (9 * (85 + s)) for s in (1, 2, 3)]
        assert m["speedup"] == pytest.approx(np.exp(np.log(per_seed).mean())) and m["ci_high"] < 1
    claims = claims_mod.claims_table(main_table(ep), sp)
    for definition in (claims_mod.AUTHORS, claims_mod.PER_RUN):
        row = _claim(claims, 1, "optimizer steps", definition)
        assert row["verdict"] == claims_mod.FAILS, definition
        assert row["ours"].startswith("cifar10: DiveBatch ")  # judged: it keeps the quality
    assert "0.91x" in _claim(claims, 1, "optimizer steps")["ours"]


def test_a_variant_faster_at_matched_quality_is_faster(tmp_path):
    ep = _study(tmp_path, GOOD_ACC, dive_steps=40)
    sp = speedup_table(ep)
    m = _row(sp, method="DiveBatch", baseline="SGD (small batch)", target="matched", unit="optimizer_steps")
    # matched target = 94.8 - 1 = 93.8 (DiveBatch's seed-mean final 94.8 < SGD's 95.2): DiveBatch at
    # epoch 5 (94.0 + 0.1 s), SGD at epoch 8 (94.0 + 0.1 s)
    assert m["target_value"] == pytest.approx(94.6 + 0.2 - 1)
    logs = np.log([(8 * (100 + s)) / (5 * (40 + s)) for s in (1, 2, 3)])
    half = stats.t.ppf(0.975, 2) * logs.std(ddof=1) / np.sqrt(3)
    assert (m["speedup"], m["ci_low"], m["ci_high"]) == pytest.approx(
        (np.exp(logs.mean()), np.exp(logs.mean() - half), np.exp(logs.mean() + half))
    )
    assert m["ci_low"] > 1 and m["pairing"] == "paired" and m["n_seeds"] == 3 and m["method_reached"] == 3
    claims = claims_mod.claims_table(main_table(ep), sp)
    for claim in (1, 2):
        for definition in (claims_mod.AUTHORS, claims_mod.PER_RUN):
            row = _claim(claims, claim, "optimizer steps", definition)
            assert row["verdict"] == claims_mod.HOLDS, (claim, definition, row["ours"])
    per_run = _claim(claims, 1, "optimizer steps")["ours"]
    assert "(95 % t-interval, n=3, paired) at matched 93.80 %" in per_run
    shown = format_matched(sp)
    assert "Speed-up per seed (95 % t-interval over n seeds)" in shown.columns


def test_a_seed_that_never_reaches_the_matched_target_blocks_faster(tmp_path):
    """Seed 3 of DiveBatch stalls below the matched target: the other two are faster, but a method
    is faster only when every seed gets there."""
    for seed in (1, 2, 3):
        _write(tmp_path, "sgd", SGD_ACC, "sgd", seed, 100)
        _write(tmp_path, "adabatch", SGD_ACC, "adabatch", seed, 80)
        acc = GOOD_ACC if seed < 3 else np.minimum(GOOD_ACC, 92.0)  # target: mean final 93.93 - 1
        _write(tmp_path, "divebatch", acc, "divebatch", seed, 40)
    ep = collect_runs(tmp_path).epochs
    sp = speedup_table(ep)
    m = _row(sp, method="DiveBatch", baseline="SGD (small batch)", target="matched", unit="optimizer_steps")
    assert (m["method_reached"], m["method_seeds"], m["n_seeds"]) == (2, 3, 2)
    look = claims_mod._Lookup(sp).get("cifar10", "DiveBatch", "", "SGD (small batch)", "optimizer_steps")
    assert m["ci_low"] > 1 and not look["faster"] and "1 of 3 seeds never reach it" in look["text"]


@pytest.mark.parametrize("resized", [False, True])
def test_a_divebatch_that_never_resizes_is_not_evidence(tmp_path, resized):
    """Same fast curve and steps; only the batch-size column differs. Constant batch in every seed:
    claims 1-3 say 'not evidence: the batch never resized'; resizing: they are judged (and hold)."""
    batch = RESIZING if resized else [64] * E
    ep = _study(tmp_path, GOOD_ACC, dive_steps=40, dive_batch=batch)
    main = main_table(ep)
    assert _row(main, method="DiveBatch")["resized_seeds"] == (3 if resized else 0)
    claims = claims_mod.claims_table(main, speedup_table(ep))
    rows = [_claim(claims, c, "optimizer steps") for c in (1, 2)] + [
        _claim(claims, 3, "final validation accuracy (pp)")
    ]
    for row in rows:
        if resized:
            assert row["verdict"] == claims_mod.HOLDS and claims_mod.NOT_EVIDENCE not in row["ours"]
        else:
            assert row["verdict"] == claims_mod.NOT_MEASURED
            assert "DiveBatch: not evidence: the batch never resized" in row["ours"]


@pytest.mark.parametrize("resized, verdict", [(False, claims_mod.NOT_MEASURED), (True, claims_mod.HOLDS)])
def test_a_fixed_point_run_that_never_resizes_is_not_evidence_of_recovery(tmp_path, resized, verdict):
    """The estimator study: the authors' estimator loses 10 pp, the fixed-point arm ends with SGD. It
    recovers the accuracy; when its batch never left 64 that is plain small-batch SGD, not evidence."""
    for seed in (1, 2, 3):
        _write(tmp_path, "sgd", SGD_ACC, "sgd", seed, 100)
        for estimator, shift, batch in (
            ("exact", -10.0, RESIZING),
            ("fixed_point", 0.0, RESIZING if resized else [64] * E),
        ):
            _write(
                tmp_path,
                f"dive-{estimator}",
                SGD_ACC + shift,
                "divebatch",
                seed,
                50,
                batch,
                overrides=[f"method.diversity_estimator={estimator}"],
            )
    ep = collect_runs(tmp_path).epochs
    claims = claims_mod.claims_table(main_table(ep), speedup_table(ep))
    row = _claim(claims, 6, "final validation accuracy (pp)")
    assert row["verdict"] == verdict
    assert ("not evidence: the batch never resized" in row["ours"]) == (not resized)


def test_target_ladder_marks_the_matched_target(tmp_path):
    ep = _study(tmp_path, GOOD_ACC, dive_steps=40)
    ladder = target_ladder(ep, "cifar10")
    dive = ladder[(ladder["method"] == "DiveBatch") & (ladder["unit"] == "optimizer_steps")]
    at = dive[dive["matched"]]
    assert len(at) == 1 and at["target_value"].iloc[0] == pytest.approx(93.8)
    # on the seed-mean curves: SGD 8 x 102 steps, DiveBatch 5 x 42
    assert at["speedup"].iloc[0] == pytest.approx(8 * 102 / (5 * 42))
    assert dive["target_value"].is_monotonic_increasing
    assert len(matched_table(ep)) == len(speedup_table(ep).query("target == 'matched'"))


# ---------------------------------------------------------------- figures


def test_collapsed_runs_are_drawn_apart_and_slow_runs_are_not(tmp_path):
    ep = _study(tmp_path, GOOD_ACC, dive_steps=40)
    write_run(tmp_path, "stuck/s1", val_acc=[10.0] * E, method="divebatch", lr_rescale=True, dataset="cifar10")
    write_run(tmp_path, "slow/s1", val_acc=SGD_ACC - 20, method="adabatch", lr_rescale=True, dataset="cifar10")
    ep = collect_runs(tmp_path).epochs
    assert [r.split("/", 1)[1] for r in collapsed_runs(ep)] == ["stuck/s1"]  # not "slow/s1": it learns
    fig = plot_curves(ep, "cifar10")
    assert any(ax.get_title() == "collapsed runs (drawn apart)" for ax in fig.axes)
    top = fig.axes[0]  # accuracy against epochs, the collapsed run left out: the y axis stays above its 10 %
    assert top.get_ylim()[0] > 10.5
    plt.close(fig)


def test_noise_scale_draws_each_run_and_never_averages_estimators(tmp_path):
    for estimator, n_delta in (("exact", 700.0), ("fixed_point", 1.0)):
        for seed in (1, 2):
            write_run(
                tmp_path,
                f"{estimator}/s{seed}",
                val_acc=[50.0, 60.0, 70.0, 80.0],
                seed=seed,
                initial_batch_size=64,
                batch_size=[64, 64, 128, 128],
                grad_diversity=[np.nan, n_delta / 1000, np.nan, n_delta / 1000],
                overrides=[f"method.diversity_estimator={estimator}"],
            )
    div = diversity_table(collect_runs(tmp_path).epochs)
    fig = plot_noise_scale(div)
    left = [ax for ax in fig.axes if ax.get_ylabel().startswith("n * Delta_hat")]  # one row per estimator
    ys = [np.concatenate([line.get_ydata() for line in ax.get_lines() if len(line.get_ydata())]) for ax in left]
    assert sorted(float(np.median(y)) for y in ys) == [1.0, 700.0]  # each estimator on its own axis
    assert not any(np.isclose(y, (700.0 + 1.0) / 2).any() for y in ys)  # their average is never drawn
    plt.close(fig)


def test_speedup_vs_accuracy_gives_each_setting_its_own_marker(tmp_path):
    for seed in (1, 2):
        _write(tmp_path, "sgd", SGD_ACC, "sgd", seed, 100)
        for estimator in ("exact", "fixed_point"):
            _write(
                tmp_path,
                f"dive-{estimator}",
                GOOD_ACC,
                "divebatch",
                seed,
                40,
                overrides=[f"method.diversity_estimator={estimator}"],
            )
    ep = collect_runs(tmp_path).epochs
    fig = plot_speedup_vs_accuracy(main_table(ep), speedup_table(ep))
    markers = {line.get_marker() for line in fig.axes[0].get_lines()} - {None, "None", "", "_", "|"}  # caps
    assert len(markers) == 2  # the two estimators of DiveBatch: two markers, neither hidden under the other
    plt.close(fig)
