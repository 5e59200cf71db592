"""The estimator study's analysis (divebatch.analysis.estimators) on hand-written run directories: the
claims row follows its rule, claims 1-3 see only the authors' estimator, shadow runs stay out of the
main tables and feed the shadow table, and the report writes the study's outputs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from fixtures.fake_runs import write_run

from divebatch.analysis import claims as claims_mod
from divebatch.analysis import collect_runs, main_table, speedup_table
from divebatch.analysis import estimators as est

BASE = np.array([40.0, 70.0, 85.0, 89.0, 90.0])


def _study(root, fixed_point_shift: float, exact_shift: float = -10.0):
    """SGD small (64) and DiveBatch with the authors' estimator (accuracy shifted by ``exact_shift``) and
    with the fixed-point estimator (``fixed_point_shift``), 3 seeds; lr-rescale variants alike."""
    for seed in (1, 2, 3):
        acc = BASE + 0.3 * seed
        write_run(
            root,
            f"sgd/s{seed}",
            val_acc=acc,
            method="sgd",
            seed=seed,
            initial_batch_size=64,
            max_batch_size=640,
            batch_size=[64] * 5,
            optimizer_steps=np.cumsum([100] * 5),
        )
        for rescale in (False, True):
            for estimator, shift, first in (("exact", exact_shift, 640), ("fixed_point", fixed_point_shift, 128)):
                write_run(
                    root,
                    f"dive-{estimator}-{rescale}/s{seed}",
                    val_acc=acc + shift,
                    seed=seed,
                    lr_rescale=rescale,
                    initial_batch_size=64,
                    max_batch_size=640,
                    batch_size=[64, 64, first, first, first],
                    grad_diversity=[np.nan, 0.5, np.nan, np.nan, np.nan],
                    optimizer_steps=np.cumsum([100, 100, 20, 20, 20]),
                    overrides=[f"method.diversity_estimator={estimator}"],
                )
    return root


def _claim6(root) -> pd.Series:
    rs = collect_runs(root)
    table = claims_mod.claims_table(main_table(rs.epochs), speedup_table(rs.epochs))
    return table[table["claim"] == 6].iloc[0]


@pytest.mark.parametrize("fp_shift, verdict", [(-1.0, claims_mod.HOLDS), (-8.0, claims_mod.FAILS)])
def test_claims_row_follows_the_recovered_share(tmp_path, fp_shift, verdict):
    row = _claim6(_study(tmp_path, fp_shift))
    assert row["verdict"] == verdict
    assert "recovers" in row["ours"] and row["rule"] == est.ESTIMATOR_RULE


def test_claims_row_not_measured_without_fixed_point_runs_or_without_a_loss(tmp_path):
    assert _claim6(_study(tmp_path / "noloss", 0.0, exact_shift=0.0))["verdict"] == claims_mod.NOT_MEASURED


def test_paper_claims_see_only_the_authors_estimator(tmp_path):
    """Claim 3 (generalization) with a fixed-point variant that matches SGD: still judged on the authors'
    estimator, which loses 10 pp, so it does not hold."""
    rs = collect_runs(_study(tmp_path, 0.0))
    table = claims_mod.claims_table(main_table(rs.epochs), speedup_table(rs.epochs))
    assert table[table["claim"] == 3].iloc[0]["verdict"] == claims_mod.FAILS
    assert "fixed_point" not in table[table["claim"] == 3].iloc[0]["ours"]


def test_estimator_table_and_first_decisions(tmp_path):
    rs = collect_runs(_study(tmp_path, -1.0))
    main, sp = main_table(rs.epochs), speedup_table(rs.epochs)
    t = est.estimator_table(main, sp, rs.epochs)
    dive = t[t["method"] == "DiveBatch"].set_index("estimator")
    assert list(dive.index) == ["exact", "fixed_point"]
    assert dive.loc["exact", "first_batch_size_mean"] == 640 and dive.loc["fixed_point", "first_batch_size_mean"] == 128
    assert dive.loc["fixed_point", "n_delta_at_first_mean"] == pytest.approx(0.5 * 1000)  # Delta_hat * n
    assert dive.loc["exact", "acc_change_vs_sgd_small_pp"] == pytest.approx(-10.0)
    assert np.isfinite(dive.loc["exact", "steps_speedup_vs_sgd_small"])
    assert len(est.format_estimator_table(t)) == len(t)


def test_estimator_table_shows_a_one_seed_group_without_a_made_up_interval(tmp_path):
    """A group with one seed (the transformer's DiveBatch + lr rescale) has no sd and no interval: its
    cells say so instead of printing ``± nan`` or ``[nan, nan]``; groups of 3 seeds keep theirs."""
    _study(tmp_path, -1.0)
    write_run(tmp_path, "dive-fp8/s1", val_acc=BASE + 0.3 - 2.0, seed=1, initial_batch_size=64, max_batch_size=640,
              delta=8.0, batch_size=[64, 64, 640, 640, 640], optimizer_steps=np.cumsum([100, 100, 20, 20, 20]),
              overrides=["method.diversity_estimator=fixed_point"])  # fmt: skip
    rs = collect_runs(tmp_path)
    main, sp = main_table(rs.epochs), speedup_table(rs.epochs)
    table = est.estimator_table(main, sp, rs.epochs)
    shown = est.format_estimator_table(table).set_index(table["setting"].fillna(""))
    one = shown.loc["delta=8, diversity_estimator=fixed_point"]
    assert one["final acc. (%)"] == "88.3 (n=1, no interval)", one.to_dict()
    assert one["vs SGD small (pp)"] == "-2.3 (n=1, no interval)", one.to_dict()  # vs the 3-seed SGD mean
    assert not shown.apply(lambda col: col.astype(str).str.contains("nan")).any().any(), shown.to_string()
    three = shown[shown["estimator"] == "exact"].iloc[0]
    assert "±" in three["final acc. (%)"] and "[" in three["vs SGD small (pp)"], three.to_dict()


def test_shadow_runs_are_excluded_from_the_tables_and_read_by_the_study(tmp_path):
    _study(tmp_path, -1.0)
    shadow = write_run(
        tmp_path,
        "shadow/s1",
        val_acc=BASE,
        method="sgd",
        seed=7,  # a seed no main run has: the shadow outputs name it, the main tables do not
        initial_batch_size=64,
        max_batch_size=640,
        overrides=["shadow.enabled=true"],
    )
    pd.DataFrame(
        {
            "epoch": [1, 3],
            "lr": [0.1, 0.05],
            "batch_size": [64, 64],
            "n_train": [1000, 1000],
            "n_delta_exact": [4000.0, 9000.0],
            "n_delta_microbatch": [1000.0, 2000.0],
            "n_delta_fixed_point": [110.0, 210.0],
            "fixed_point_samples": [256, 256],
            "n_delta_full": [100.0, 200.0],
            "fixed_point_s": [1.0, 1.0],
            "full_pass_s": [3.0, 3.0],
            "measured_epoch_s": [5.0, 5.0],
        }
    ).to_csv(shadow / "shadow.csv", index=False)
    pd.DataFrame(
        {
            "epoch": [1, 1],
            "subset_samples": [128, 256],
            "draws": [10, 10],
            "n_delta_full": [100.0, 100.0],
            "rel_bias": [0.1, 0.05],
            "rel_sd": [0.3, 0.15],
            "rel_p90_abs_err": [0.5, 0.25],
            "share_inf": [0.0, 0.0],
        }
    ).to_csv(shadow / "shadow_subsets.csv", index=False)
    rs = collect_runs(tmp_path)
    assert "shadow" in rs.runs.set_index("run_id").loc[f"{tmp_path.name}/shadow/s1", "reason"]
    assert not rs.epochs["run_id"].str.endswith("shadow/s1").any()
    rows, subsets = est.read_shadow([tmp_path], "test")
    st = est.shadow_table(rows)
    assert st["epoch"].tolist() == [2, 4]  # 1-based
    assert st["ratio_exact"].tolist() == [40.0, 45.0] and st["ratio_fixed_point"].tolist() == [1.1, 1.05]
    sb = est.subsets_table(subsets)
    assert sb["rel_sd_median"].tolist() == [0.3, 0.15]
    from divebatch.analysis import cli

    assert cli([str(tmp_path), "--out", str(tmp_path / "out")]) == 0
    tdir = tmp_path / "out" / "paper_tables" / "test"
    for name in ("estimators_shadow", "estimators_subsets"):
        assert "seeds=7 " in pd.read_csv(tdir / f"{name}.csv")["provenance"].iloc[0]
    assert "7" not in pd.read_csv(tdir / "main.csv")["provenance"].iloc[0].split("seeds=")[1].split(" ")[0]


@pytest.mark.slow  # a whole report; the table path runs by default (test above), the figures in test_figures.py
def test_report_writes_the_study(tmp_path, monkeypatch):
    from divebatch.analysis import cli

    monkeypatch.delenv("PYTEST_CURRENT_TEST", raising=False)
    _study(tmp_path / "runs", -1.0)
    assert cli([str(tmp_path / "runs"), "--out", str(tmp_path / "out")]) == 0
    tdir, fdir = tmp_path / "out" / "paper_tables" / "test", tmp_path / "out" / "figures" / "test"
    assert (tdir / "estimators.md").is_file() and (tdir / "estimators.csv").is_file()
    for stem in ("estimators_schedules", "estimators_tradeoff"):
        assert (fdir / f"{stem}.png").is_file()
    assert "estimators.md" in (tdir / "README.md").read_text()


# ----------------------------------------------------------------------------- BatchNorm / augmentation / iterates

# (mean per-sample squared norm P, squared mean gradient G2) per convention, seed and point: n*Delta = P / G2
_BN_PARTS = {
    "fixed_point": {1: [(2.0, 0.1), (3.0, 0.1)], 2: [(2.0, 0.08), (2.5, 0.1)], 3: [(2.2, 0.1), (3.0, 0.12)]},
    "train_bn": {1: [(20.0, 0.09), (33.0, 0.1)], 2: [(30.0, 0.1), (25.0, 0.08)], 3: [(22.0, 0.1), (36.0, 0.1)]},
    "train_bn_aug": {1: [(26.0, 0.09), (40.0, 0.1)], 2: [(33.0, 0.1), (30.0, 0.08)], 3: [(30.0, 0.1), (40.0, 0.1)]},
    "exact": {1: [(30.0, 0.001), (45.0, 0.002)], 2: [(40.0, 0.003), (35.0, 0.001)], 3: [(33.0, 0.002), (50.0, 0.001)]},
}


def _bn_shadow_rows(seed: int, decomposed: bool = True) -> pd.DataFrame:
    """shadow.csv rows of one seed at two points; without ``decomposed`` as written before the decomposition
    (no fixed_point_* parts, no train_bn* columns)."""
    prefixes = {"fixed_point": "fixed_point", "train_bn": "train_bn", "train_bn_aug": "train_bn_aug", "exact": "exact"}
    rows = []
    for j, epoch in enumerate((2, 5)):
        row = {"epoch": epoch, "lr": 0.1, "batch_size": 32, "n_train": 1000, "n_delta_full": 20.0}
        row.update(
            n_delta_microbatch=100.0, fixed_point_samples=1000, fixed_point_s=1, full_pass_s=1, measured_epoch_s=2
        )
        for conv, prefix in prefixes.items():
            p, g2 = _BN_PARTS[conv][seed][j]
            row[f"n_delta_{conv}"] = p / g2
            row[f"{prefix}_mean_sq_norm"], row[f"{prefix}_mean_grad_sq"] = p, g2
        rows.append(row)
    df = pd.DataFrame(rows)
    if not decomposed:
        df = df.drop(columns=[c for c in df if c.startswith(("fixed_point_mean", "train_bn", "n_delta_train_bn"))])
    return df


def test_bn_table_factors_multiply_to_the_epoch_estimator_over_the_fixed_point():
    shadow = pd.concat([_bn_shadow_rows(s).assign(dataset="cpu", seed=s) for s in (1, 2, 3)], ignore_index=True)
    t = est.bn_table(shadow)
    assert len(t) == 6 and t["epoch"].tolist() == [3, 6] * 3  # 1-based
    for f in est.BN_FACTORS:
        assert np.allclose(t[f"{f}_num"] * t[f"{f}_den"], t[f"{f}_ratio"], rtol=1e-12)
    product = t["mode_ratio"] * t["augmentation_ratio"] * t["iterates_ratio"]
    assert np.allclose(product, t["n_delta_epoch"] / t["n_delta_eval"], rtol=1e-12)
    assert np.allclose(product, t["total_ratio"], rtol=1e-12)
    # by hand, seed 1 at epoch 3: mode (ii)/(i) = (20 / 0.09) / (2 / 0.1); numerator 10, denominator 0.1 / 0.09
    r = t.iloc[0]
    assert r["mode_num"] == pytest.approx(10.0) and r["mode_den"] == pytest.approx(0.1 / 0.09)
    assert r["iterates_ratio"] == pytest.approx((30 / 0.001) / (26 / 0.09))


def test_bn_summary_is_the_geometric_mean_with_a_t_interval_over_seeds():
    shadow = pd.concat([_bn_shadow_rows(s).assign(dataset="cpu", seed=s) for s in (1, 2, 3)], ignore_index=True)
    t = est.bn_table(shadow)
    sm = est.bn_summary(t).set_index("factor")
    logs = np.log(t["mode_ratio"].to_numpy()).reshape(3, 2)  # seeds x points
    per_seed = logs.mean(1)
    half = 4.302653 * per_seed.std(ddof=1) / np.sqrt(3)  # t_{0.975, 2} from the table of Student's t
    row = sm.loc["mode_ratio"]
    assert row["geo_mean"] == pytest.approx(np.exp(logs.mean()))
    assert (row["low"], row["high"]) == pytest.approx((np.exp(per_seed.mean() - half), np.exp(per_seed.mean() + half)))
    assert row["n_seeds"] == 3 and row["n_points"] == 6
    one = est.bn_summary(t[t["seed"] == 1]).set_index("factor").loc["mode_ratio"]
    assert one["n_seeds"] == 1 and np.isnan(one["low"]) and np.isfinite(one["geo_mean"])  # no interval from one seed


def test_bn_table_reads_old_shadow_files_as_nan_and_the_report_writes_it(tmp_path):
    old = _bn_shadow_rows(1, decomposed=False).assign(dataset="cpu", seed=1)
    t_old = est.bn_table(old)
    assert t_old["mode_ratio"].isna().all() and t_old["n_delta_eval"].notna().all()
    assert est.bn_summary(t_old).set_index("factor").loc["mode_ratio", "n_points"] == 0
    write_run(tmp_path / "runs", "sgd/s1", val_acc=BASE, method="sgd", initial_batch_size=64, max_batch_size=640)
    for seed in (1, 2, 3):
        run = write_run(
            tmp_path / "runs",
            f"shadow/s{seed}",
            val_acc=BASE,
            method="sgd",
            seed=seed,
            initial_batch_size=64,
            max_batch_size=640,
            overrides=["shadow.enabled=true"],
        )
        _bn_shadow_rows(seed).to_csv(run / "shadow.csv", index=False)
    from divebatch.analysis import cli

    assert cli([str(tmp_path / "runs"), "--out", str(tmp_path / "out")]) == 0
    tdir = tmp_path / "out" / "paper_tables" / "test"
    csv = pd.read_csv(tdir / "estimators_bn.csv")
    assert csv["row"].tolist() == ["point"] * 6 + ["summary"]
    assert "seeds=1,2,3 " in csv["provenance"].iloc[0]
    md = (tdir / "estimators_bn.md").read_text()
    assert "95% t-interval over n=3 seeds (6 points)" in md and (tdir / "estimators_bn.tex").is_file()
