"""The comparisons' long table (divebatch.analysis.comparisons) and the one formatter of an estimate
(divebatch.analysis.formatting.estimate): main.csv's wide columns are the long table's numbers, a main
table reads back into the same long table, the claims judge what the long table says, and every layout
of "mean ± sd" and "value [low, high] (n=k, pairing)" the tables print."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from fixtures.fake_runs import write_run

from divebatch.analysis import claims as claims_mod
from divebatch.analysis import collect_runs, comparison_table, main_table, speedup_table
from divebatch.analysis.comparisons import (
    ACC_CHANGE,
    AUTHORS_SPEEDUP,
    METRIC_GAIN,
    WIDE,
    Comparisons,
    column,
    from_main,
)
from divebatch.analysis.formatting import estimate
from divebatch.analysis.stats import accuracy_change
from divebatch.methods import ADABATCH, SGD_SMALL

# final accuracies (%) per method and seed; DiveBatch's batch grows, the baselines' stay
FINALS = {"sgd": (90.0, 91.0, 90.5), "divebatch": (89.0, 89.5, 90.2), "adabatch": (88.0, 88.4, 88.1)}


def _study(root) -> pd.DataFrame:
    for method, finals in FINALS.items():
        for seed, final in enumerate(finals, start=1):
            acc = [50.0, 70.0, 80.0, final - 0.5, final]
            batch = [128, 128, 256, 256, 512] if method != "sgd" else None
            write_run(root, f"{method}/s{seed}", val_acc=acc, method=method, seed=seed, batch_size=batch)
    return collect_runs(root).epochs


def test_main_csv_columns_are_the_long_table_and_read_back(tmp_path):
    ep = _study(tmp_path)
    long = comparison_table(ep)
    dive = ("cifar10", "DiveBatch", "")
    row = long[
        (long["method"] == "DiveBatch") & (long["baseline"] == SGD_SMALL) & (long["quantity"] == ACC_CHANGE)
    ].iloc[0]
    want = accuracy_change(np.array(FINALS["divebatch"]), np.array(FINALS["sgd"]))
    assert row["unit"] == "pp" and row["value"] == pytest.approx(want.value)
    assert (row["low"], row["high"], row["n"], row["pairing"]) == pytest.approx((want.low, want.high, 3, "paired"))
    # one row per group x role x quantity x unit: acc_change, metric_gain once per role, authors' speed-up per unit
    per_group = long.groupby(["method", "baseline"]).size()
    assert set(per_group) == {1 + 1 + 3}
    main = main_table(ep, comparisons=long)
    shown = main.set_index(["dataset", "method", "setting"])
    for r in long.itertuples(index=False):
        unit = r.unit if r.quantity == AUTHORS_SPEEDUP else ""
        for field in WIDE[r.quantity][1]:
            got = shown.loc[(r.dataset, r.method, r.setting), column(r.quantity, r.baseline, unit, field)]
            want = getattr(r, field)
            assert got == want or (pd.isna(got) and pd.isna(want)), (r, field)
    back = Comparisons(from_main(main))
    comp = Comparisons(long)
    for r in long.itertuples(index=False):
        key = (r.dataset, r.method, r.setting)
        a, b = comp.get(key, r.baseline, r.quantity, r.unit), back.get(key, r.baseline, r.quantity, r.unit)
        assert b is not None, r
        for f in set(WIDE[r.quantity][1]) & {"value", "low", "high"}:
            assert getattr(a, f) == pytest.approx(getattr(b, f), nan_ok=True), (r, f)
    # the gain of an accuracy is its change; a group is not compared with a role its dataset lacks
    assert comp.value(dive, SGD_SMALL, METRIC_GAIN) == pytest.approx(comp.value(dive, SGD_SMALL, ACC_CHANGE))
    assert comp.get(dive, ADABATCH, ACC_CHANGE).value == pytest.approx(
        accuracy_change(np.array(FINALS["divebatch"]), np.array(FINALS["adabatch"])).value
    )
    assert comp.get(dive, "no such role", ACC_CHANGE) is None


LOSS = (
    "model.name=transformer_lm",
    "data.path=/data/tinyshakespeare.txt",
    "primary_metric.column=val_loss",
    "primary_metric.direction=lower",
    "primary_metric.within=0.05",
)


def test_a_loss_gain_is_minus_its_change_with_the_bounds_swapped(tmp_path):
    """Validation loss as the primary metric: DiveBatch ends 0.05 nats above small-batch SGD on average
    (worse), so its gain is -0.05 with the interval of minus the change: low = -(change's high)."""
    finals = {"sgd": (2.00, 2.02, 2.01), "divebatch": (2.04, 2.08, 2.06)}
    for method, losses in finals.items():
        for seed, final in enumerate(losses, start=1):
            loss = np.array([3.0, 2.5, 2.2, final + 0.01, final])
            write_run(
                tmp_path,
                f"{method}/s{seed}",
                val_acc=[30.0, 35, 40, 42, 43],
                dataset="text",
                method=method,
                seed=seed,
                train_loss=loss / 1.1,
                overrides=LOSS,
            )  # fake_runs: val_loss = 1.1 train_loss
    long = comparison_table(collect_runs(tmp_path).epochs)
    gain = long[(long["method"] == "DiveBatch") & (long["quantity"] == METRIC_GAIN)].set_index("baseline")
    change = accuracy_change(np.array(finals["divebatch"]), np.array(finals["sgd"]))
    g = gain.loc[SGD_SMALL]
    assert g["unit"] == "val_loss" and g["value"] == pytest.approx(-change.value) and g["value"] < 0
    assert (g["low"], g["high"]) == pytest.approx((-change.high, -change.low))
    assert g["low"] < g["value"] < g["high"]


def test_claims_judge_what_the_long_table_says(tmp_path):
    """Claim 3 (keeps the generalization) on the runs: DiveBatch ends 0.93 pp below small-batch SGD,
    within the 1 pp tolerance; the same runs with the long table's accuracy change set to -5 pp do
    not hold. The main table is the same both times: the verdict comes from the long table."""
    ep = _study(tmp_path)
    long = comparison_table(ep)
    main, sp = main_table(ep, comparisons=long), speedup_table(ep)

    def claim3(comparisons):
        claims = claims_mod.claims_table(main, sp, comparisons=comparisons)
        return claims.loc[claims["claim"] == 3].iloc[0]

    assert claim3(long)["verdict"] == claims_mod.HOLDS
    assert claim3(None)["verdict"] == claims_mod.HOLDS  # read back from the main table: the same
    worse = long.copy()
    hit = (worse["method"] == "DiveBatch") & (worse["baseline"] == SGD_SMALL) & worse["quantity"].isin([ACC_CHANGE])
    worse.loc[hit, ["value", "low", "high"]] = [-5.0, -6.0, -4.0]
    c = claim3(worse)
    assert c["verdict"] == claims_mod.FAILS and "-5.00 pp [-6.00, -4.00]" in c["ours"]


def test_column_names_come_from_one_place():
    assert column(ACC_CHANGE, SGD_SMALL, field="low") == "acc_change_vs_sgd_small_pp_low"
    assert column(METRIC_GAIN, ADABATCH) == "metric_gain_vs_adabatch"
    assert column(AUTHORS_SPEEDUP, SGD_SMALL, "train_time_s") == "authors_speedup_vs_sgd_small_train_time_s"
    with pytest.raises(KeyError):
        column("speedup", SGD_SMALL)


@pytest.mark.parametrize(
    ("kwargs", "text"),
    [
        ({"value": 61.234, "spread": 0.851}, "61.23 ± 0.85"),  # mean ± sd
        ({"value": 61.234, "spread": float("nan")}, "61.23"),  # one seed: the mean alone
        ({"value": float("nan"), "spread": 1.0}, "n/a"),
        ({"value": 1.2345, "spread": 0.05, "unit": "x"}, "1.23 ± 0.05x"),  # the unit after the spread
        ({"value": -1.2, "spread": 0.3, "spec": "+.2f"}, "-1.20 ± 0.30"),  # the spread is never signed
        (
            {"value": 1.05, "low": 0.2, "high": 1.9, "spec": "+.2f", "bound_spec": ".2f", "n": 3, "pairing": "paired"},
            "+1.05 [0.20, 1.90] (n=3, paired)",
        ),
        ({"value": 1.12, "low": float("nan"), "high": float("nan"), "unit": "x", "n": 1}, "1.12x (n=1, no interval)"),
        ({"value": 1.12, "low": 1.01, "high": 1.3, "unit": "x", "n": 1}, "1.12x (n=1, no interval)"),
        (
            {
                "value": 2.0,
                "low": 1.5,
                "high": 2.5,
                "unit": "x",
                "n": 4,
                "pairing": "welch",
                "label": "95 % t-interval",
            },
            "2.00x [1.50, 2.50] (95 % t-interval, n=4, welch)",
        ),
        ({"value": 2.0, "low": 1.5, "high": 2.5, "n": float("nan")}, "2.00 [1.50, 2.50]"),
        ({"value": 3.0, "spread": 1.0, "low": 1.0, "high": 5.0, "spec": ".1f"}, "3.0 ± 1.0 [1.0, 5.0]"),
        # one seed: no spread and no interval, never "± nan" or "[nan, nan]"
        (
            {"value": -25.7, "low": float("nan"), "high": float("nan"), "spec": "+.1f", "n": 1},
            "-25.7 (n=1, no interval)",
        ),
        ({"value": 3.0, "spread": float("nan"), "spec": ".1f", "n": 1}, "3.0 (n=1, no interval)"),
        ({"value": 3.0, "spread": float("nan"), "low": float("nan"), "high": float("nan"), "spec": ".1f"}, "3.0"),
        ({"value": 3.0, "spec": ".1f"}, "3.0"),  # nothing given, nothing printed
        ({"value": 1234.5, "spec": lambda v: f"{v:,.0f}"}, "1,234"),
        ({"value": float("inf"), "missing": ""}, ""),
    ],
)
def test_estimate_layouts(kwargs, text):
    value = kwargs.pop("value")
    assert estimate(value, **kwargs) == text
