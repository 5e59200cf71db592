"""Claims rows 6-8 on hand-written run directories (divebatch.analysis.estimators.estimator_claim,
divebatch.analysis.controls): each verdict comes out both ways, and a fixed-point arm that never grew
its batch is not evidence for row 6."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from fixtures.fake_runs import write_run

from divebatch.analysis import claims as claims_mod
from divebatch.analysis import collect_runs, main_table, speedup_table
from divebatch.methods import BY_KEY

BASE = np.array([40.0, 70.0, 85.0, 89.0, 90.0])
SEEDS = (1, 2, 3)
TWO_STAGE, TWO_STAGE_RESCALE = BY_KEY["two_stage"].display_name, BY_KEY["two_stage_rescale"].display_name
REPLAY = BY_KEY["schedule_replay"].display_name


def _acc(seed: int) -> np.ndarray:
    return BASE + 0.3 * seed


def _sgd(root):
    for seed in SEEDS:
        write_run(
            root,
            f"sgd/s{seed}",
            val_acc=_acc(seed),
            method="sgd",
            seed=seed,
            initial_batch_size=64,
            max_batch_size=640,
            optimizer_steps=np.cumsum([100] * 5),
            wall_time_s=np.cumsum([10.0] * 5),
        )


def _dive(root, name, seed, shift, estimator="exact", delta=0.1, batch=640, rescale=False, wall=(10, 10, 4, 4, 4)):
    """A DiveBatch run: 64 for two epochs, then ``batch``; accuracy = SGD's + ``shift`` (per epoch or scalar)."""
    grew = batch != 64
    write_run(
        root,
        f"{name}/s{seed}",
        val_acc=_acc(seed) + shift,
        seed=seed,
        delta=delta,
        lr_rescale=rescale,
        initial_batch_size=64,
        max_batch_size=640,
        batch_size=[64, 64, batch, batch, batch],
        grad_diversity=[np.nan, 0.5, np.nan, np.nan, np.nan],
        optimizer_steps=np.cumsum([100, 100, *([20] * 3 if grew else [100] * 3)]),
        wall_time_s=np.cumsum(wall if grew else [10.0] * 5),
        overrides=[f"method.diversity_estimator={estimator}"],
    )


def _control(root, name, display, seed, shift, rescale=False):
    write_run(
        root,
        f"{name}/s{seed}",
        val_acc=_acc(seed) + shift,
        method="schedule",
        seed=seed,
        lr_rescale=rescale,
        initial_batch_size=64,
        max_batch_size=640,
        batch_size=[64, 64, 640, 640, 640],
        optimizer_steps=np.cumsum([100, 100, 20, 20, 20]),
        overrides=[f"display_name={display}", "method.schedule=two_stage"],
    )


def _claims(root) -> pd.DataFrame:
    rs = collect_runs(root)
    return claims_mod.claims_table(main_table(rs.epochs), speedup_table(rs.epochs), epochs=rs.epochs)


def _row(table: pd.DataFrame, claim: int, unit: str | None = None) -> pd.Series:
    rows = table[(table["claim"] == claim) & ((table["unit"] == unit) if unit else True)]
    assert len(rows) == 1, rows
    return rows.iloc[0]


# ----------------------------------------------------------------------------- row 6


@pytest.mark.parametrize(
    "arms, verdict",
    [
        # the only fixed-point arm never grew: it is small-batch SGD and "recovers" everything: not evidence
        ([("fp01", 0.1, 64, 0.0)], claims_mod.NOT_MEASURED),
        # an arm that grew (to 4 x 64) and kept the accuracy: the loss came from the estimator
        ([("fp01", 0.1, 64, 0.0), ("fp8", 8.0, 256, -1.0)], claims_mod.HOLDS),
        # the arm that grew loses as much as the authors' estimator: the estimator does not explain the loss
        ([("fp01", 0.1, 64, 0.0), ("fp8", 8.0, 256, -9.0)], claims_mod.FAILS),
    ],
)
def test_row6_needs_a_fixed_point_arm_that_grew(tmp_path, arms, verdict):
    _sgd(tmp_path)
    for seed in SEEDS:
        _dive(tmp_path, "exact", seed, -10.0)
        for name, delta, batch, shift in arms:
            _dive(tmp_path, name, seed, shift, "fixed_point", delta, batch)
    row = _row(_claims(tmp_path), 6)
    assert row["verdict"] == verdict, row["ours"]
    assert "not evidence: the batch never resized" in row["ours"]


def test_row6_needs_a_significant_loss(tmp_path):
    """The authors' estimator loses 1 pp on average but the seeds disagree (-3, +1, -1 pp: the 95 %
    t-interval over the 3 seeds contains 0): no significant loss, so the row is not measured even
    though a fixed-point arm grew and kept the accuracy."""
    _sgd(tmp_path)
    for seed, shift in zip(SEEDS, (-3.0, 1.0, -1.0)):
        _dive(tmp_path, "exact", seed, shift)
        _dive(tmp_path, "fp8", seed, 0.0, "fixed_point", 8.0, 256)
    row = _row(_claims(tmp_path), 6)
    assert row["verdict"] == claims_mod.NOT_MEASURED and "(no significant loss)" in row["ours"], row["ours"]


LOSS = ["primary_metric.column=val_loss", "primary_metric.direction=lower", "primary_metric.within=0.02"]


@pytest.mark.parametrize(
    "authors, fp_extra, verdict",
    [
        ("exact_func", 0.02, claims_mod.HOLDS),  # the transformer's authors' estimator (torch.func norms)
        ("exact_func", 0.2, claims_mod.FAILS),  # the fixed-point arm loses as much: the estimator explains nothing
        ("exact", 0.02, claims_mod.HOLDS),
    ],
)
def test_row6_judges_a_loss_when_the_loss_is_the_primary_metric(tmp_path, authors, fp_extra, verdict):
    """A loss-judged data set (the transformer): every arm has SGD's accuracy; the authors' estimator
    ends 0.2 (x 1.1 in val_loss) higher in loss in every seed, a fixed-point arm that grew (64 -> 640)
    ends ``fp_extra`` higher: it recovers 90 % of the loss, or none of it."""
    loss = 2.0 * np.exp(-np.arange(5) / 2) + 0.5
    for seed in SEEDS:
        common = dict(val_acc=_acc(seed), seed=seed, initial_batch_size=64, max_batch_size=640)
        grown = dict(batch_size=[64, 64, 640, 640, 640], optimizer_steps=np.cumsum([100, 100, 20, 20, 20]))
        write_run(tmp_path, f"sgd/s{seed}", method="sgd", train_loss=loss + 0.01 * seed,
                  optimizer_steps=np.cumsum([100] * 5), overrides=LOSS, **common)  # fmt: skip
        write_run(tmp_path, f"authors/s{seed}", train_loss=loss + 0.01 * seed + 0.2,
                  overrides=[*LOSS, f"method.diversity_estimator={authors}"], **grown, **common)  # fmt: skip
        write_run(tmp_path, f"fp2/s{seed}", delta=2.0, train_loss=loss + 0.01 * seed + fp_extra,
                  overrides=[*LOSS, "method.diversity_estimator=fixed_point"], **grown, **common)  # fmt: skip
    row = _row(_claims(tmp_path), 6)
    assert row["verdict"] == verdict, row["ours"]
    assert "delta=2, diversity_estimator=fixed_point" in row["ours"], row["ours"]
    assert "val_loss" in row["ours"] and " pp" not in row["ours"], row["ours"]
    assert "val_loss" in row["unit"], row["unit"]


# ----------------------------------------------------------------------------- row 7


@pytest.mark.parametrize(
    "shift, wall, steps_verdict, wall_verdict",
    [
        (0.0, (10, 10, 4, 4, 4), claims_mod.HOLDS, claims_mod.HOLDS),  # faster in both units, same accuracy
        (0.0, (10, 10, 14, 14, 14), claims_mod.HOLDS, claims_mod.FAILS),  # fewer steps, slower epochs (estimator)
        (-3.0, (10, 10, 4, 4, 4), claims_mod.FAILS, claims_mod.FAILS),  # faster, but quality not matched
    ],
)
def test_row7_is_speed_at_matched_quality_per_unit(tmp_path, shift, wall, steps_verdict, wall_verdict):
    _sgd(tmp_path)
    for seed in SEEDS:
        _dive(tmp_path, "exact", seed, -10.0)
        _dive(tmp_path, "fp01", seed, 0.0, "fixed_point", 0.1, 64)  # never grew: never faster
        _dive(tmp_path, "fp2", seed, shift, "fixed_point", 2.0, 640, wall=wall)
    table = _claims(tmp_path)
    steps, seconds = _row(table, 7, "optimizer steps"), _row(table, 7, "wall-clock s")
    assert (steps["verdict"], seconds["verdict"]) == (steps_verdict, wall_verdict), (steps["ours"], seconds["ours"])
    assert "delta=2, diversity_estimator=fixed_point" in steps["ours"] and "exact" not in steps["ours"]


@pytest.mark.parametrize("extra_loss, verdict", [(0.005, claims_mod.HOLDS), (0.1, claims_mod.FAILS)])
def test_row7_judges_quality_on_a_loss_when_the_loss_is_the_primary_metric(tmp_path, extra_loss, verdict):
    """A loss-judged data set (the transformer): the fixed-point arm has SGD's accuracy in both cases
    and is faster in steps; it keeps the quality only when its final loss is within the tolerance."""
    loss = 2.0 * np.exp(-np.arange(5) / 2) + 0.5
    for seed in SEEDS:
        common = dict(val_acc=_acc(seed), seed=seed, initial_batch_size=64, max_batch_size=640)
        write_run(tmp_path, f"sgd/s{seed}", method="sgd", train_loss=loss + 0.01 * seed,
                  optimizer_steps=np.cumsum([100] * 5), overrides=LOSS, **common)  # fmt: skip
        write_run(tmp_path, f"exact/s{seed}", batch_size=[64, 64, 640, 640, 640], train_loss=loss + 0.2,
                  optimizer_steps=np.cumsum([100, 100, 20, 20, 20]), overrides=LOSS, **common)  # fmt: skip
        write_run(tmp_path, f"fp2/s{seed}", delta=2.0, batch_size=[64, 64, 640, 640, 640],
                  train_loss=loss + 0.01 * seed + np.array([0, 0, 0, 0.5, 1]) * extra_loss,
                  optimizer_steps=np.cumsum([100, 100, 20, 20, 20]),
                  overrides=[*LOSS, "method.diversity_estimator=fixed_point"], **common)  # fmt: skip
    row = _row(_claims(tmp_path), 7, "optimizer steps")
    assert row["verdict"] == verdict, row["ours"]
    assert "val_loss gain" in row["ours"] and "pp" not in row["ours"].split("matched quality")[1]


def test_row7_only_where_fixed_point_runs_exist(tmp_path):
    _sgd(tmp_path)
    for seed in SEEDS:
        _dive(tmp_path, "exact", seed, -10.0)
    assert 7 not in set(_claims(tmp_path)["claim"])


# ----------------------------------------------------------------------------- row 8


def test_row8_holds_when_the_controls_equal_divebatch_and_compares_like_with_like(tmp_path):
    _sgd(tmp_path)
    for seed in SEEDS:
        _dive(tmp_path, "exact", seed, -10.0)
        _control(tmp_path, "two_stage", TWO_STAGE, seed, -10.0)
        _control(tmp_path, "replay", REPLAY, seed, -10.0)
        # a control of the lr-rescaling variant, which has no DiveBatch run here: not compared
        _control(tmp_path, "two_stage_rescale", TWO_STAGE_RESCALE, seed, +5.0, rescale=True)
    row = _row(_claims(tmp_path), 8)
    assert row["verdict"] == claims_mod.HOLDS, row["ours"]
    assert f"DiveBatch - {TWO_STAGE}, 3 seeds" in row["ours"]
    assert REPLAY in row["ours"] and TWO_STAGE_RESCALE not in row["ours"]


def test_row8_fails_when_a_control_differs(tmp_path):
    _sgd(tmp_path)
    for seed in SEEDS:
        _dive(tmp_path, "exact", seed, -10.0)
        _control(tmp_path, "replay", REPLAY, seed, -10.0)
        _control(tmp_path, "two_stage", TWO_STAGE, seed, -6.0 - 0.2 * seed)  # 4 pp better, seeds vary
    row = _row(_claims(tmp_path), 8)
    assert row["verdict"] == claims_mod.FAILS and "(differs)" in row["ours"], row["ours"]


def test_row8_not_measured_with_one_seed_or_no_controls(tmp_path):
    _sgd(tmp_path)
    _dive(tmp_path, "exact", 1, -10.0)
    assert _row(_claims(tmp_path), 8)["verdict"] == claims_mod.NOT_MEASURED
    _control(tmp_path, "two_stage", TWO_STAGE, 1, -10.0)
    assert _row(_claims(tmp_path), 8)["verdict"] == claims_mod.NOT_MEASURED
