"""Checks of the authors' published numbers, computed from the reference CSV alone
(:mod:`divebatch.analysis.authors_reference`; docs/authors_results.md):

1. :func:`ratio_table` and :func:`range_table`: every DiveBatch-against-baseline ratio of the authors'
   epochs/seconds tables, and which subset of them gives the abstract's "1.06x to 5.0x";
2. :func:`per_epoch_table`: seconds per epoch implied by the tables against the timing runs;
3. :func:`definitions_table`: epochs to final - 1 point against epochs to 95 % of final;
4. :func:`discrepancy_table`: numbers the notebook prints twice that differ.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from divebatch.analysis.authors_reference import (
    ABSTRACT_HIGH,
    ABSTRACT_LOW,
    AGREE_TOLERANCE,
    DATASET_NAMES,
    DIVEBATCH,
    UNIT_QUANTITY,
    UNIT_WORDS,
    ReferenceError,
    group_text,
    lookup_quantity,
    method_name,
    paper_rows,
)

# ----------------------------------------------------------------------------- check 1: the abstract's range


def ratio_table(df: pd.DataFrame) -> pd.DataFrame:
    """Every DiveBatch-against-baseline ratio in the authors' epochs/seconds tables.

    Within each table (dataset x lr-rescaling group), ratio = baseline / DiveBatch of epochs to
    ±1 % and of training seconds to ±1 % (> 1: DiveBatch reaches its target sooner). For the seconds,
    ``ratio_measured`` recomputes both times as epochs to ±1 % x the method's mean training seconds
    per epoch of the timing runs (:func:`per_epoch_table`); NaN where a method has no timing run.

    Returns:
        One row per (dataset, rescale, baseline, baseline_lr, unit): ``baseline_value``,
        ``divebatch_value`` (epochs or seconds), ``ratio``, ``ratio_measured``, ``below_1``,
        ``rounds_to_low`` / ``rounds_to_high`` (the ratio printed with the abstract's decimals equals
        its bound 1.06 / 5.0).
    """
    wide = paper_rows(df)
    per_epoch = per_epoch_table(df).set_index(["dataset", "rescale", "method", "lr"])["seconds_at_measured"]
    rows = []
    for (dataset, rescale), g in wide.groupby(["dataset", "rescale"], sort=False):
        dive = g[g["method"] == DIVEBATCH[rescale]]
        if len(dive) != 1:
            raise ReferenceError(f"{dataset}, {group_text(rescale)}: {len(dive)} DiveBatch rows; expected 1")
        d = dive.iloc[0]
        d_meas = per_epoch.get((dataset, rescale, d["method"], d["lr"]), np.nan)
        for _, b in g[g["method"] != d["method"]].iterrows():
            b_meas = per_epoch.get((dataset, rescale, b["method"], b["lr"]), np.nan)
            for unit, q in UNIT_QUANTITY.items():
                ratio = b[q] / d[q]
                rows.append(
                    {
                        "dataset": dataset,
                        "rescale": rescale,
                        "baseline": b["method"],
                        "baseline_lr": b["lr"],
                        "unit": unit,
                        "baseline_value": b[q],
                        "divebatch_value": d[q],
                        "ratio": ratio,
                        "ratio_measured": b_meas / d_meas if unit == "seconds" else np.nan,
                        "below_1": ratio < 1,
                        "rounds_to_low": round(ratio, ABSTRACT_LOW[1]) == ABSTRACT_LOW[0],
                        "rounds_to_high": round(ratio, ABSTRACT_HIGH[1]) == ABSTRACT_HIGH[0],
                    }
                )
    return pd.DataFrame(rows)


# Subsets of the ratios over which the smallest and largest are compared with the abstract's range:
# name -> (units, lr-rescaling groups, baseline roles); a role "adabatch" is the group's AdaBatch.
SLICES = {
    "all ratios": (("epochs", "seconds"), (False, True), ("sgd_small", "sgd_large", "adabatch")),
    "epochs, all": (("epochs",), (False, True), ("sgd_small", "sgd_large", "adabatch")),
    "seconds, all": (("seconds",), (False, True), ("sgd_small", "sgd_large", "adabatch")),
    "seconds, without lr rescaling": (("seconds",), (False,), ("sgd_small", "sgd_large", "adabatch")),
    "seconds, with lr rescaling": (("seconds",), (True,), ("sgd_small", "sgd_large", "adabatch")),
    "seconds, without lr rescaling, vs small-batch SGD and AdaBatch": (
        ("seconds",),
        (False,),
        ("sgd_small", "adabatch"),
    ),
    "seconds, with lr rescaling, vs small-batch SGD and AdaBatch": (("seconds",), (True,), ("sgd_small", "adabatch")),
    "epochs, without lr rescaling, vs small-batch SGD and AdaBatch": (("epochs",), (False,), ("sgd_small", "adabatch")),
}
ABSTRACT_SLICE = "seconds, without lr rescaling, vs small-batch SGD and AdaBatch"


def _role(method: str) -> str:
    return "adabatch" if method.startswith("adabatch") else method


def slice_of(ratios: pd.DataFrame, name: str) -> pd.DataFrame:
    """The ratios of :data:`SLICES` ``name``."""
    if name not in SLICES:
        raise KeyError(f"slice {name!r}; allowed: {' | '.join(SLICES)}")
    units, groups, roles = SLICES[name]
    keep = ratios["unit"].isin(units) & ratios["rescale"].isin(groups) & ratios["baseline"].map(_role).isin(roles)
    return ratios[keep]


def describe_ratio(r: pd.Series) -> str:
    return (
        f"{DATASET_NAMES[r['dataset']]} {group_text(r['rescale'])}, vs {method_name(r['baseline'], r['baseline_lr'])}, "
        f"{UNIT_WORDS[r['unit']]}"
    )


def range_table(ratios: pd.DataFrame, column: str = "ratio") -> pd.DataFrame:
    """Smallest and largest ratio of every :data:`SLICES` subset, and whether they are the abstract's range.

    Args:
        ratios: :func:`ratio_table`.
        column: ``ratio`` (as reported) or ``ratio_measured`` (seconds from the timing runs).

    Returns:
        One row per slice: ``slice``, ``n``, ``min``, ``max``, ``min_row``, ``max_row``,
        ``n_below_1``, ``is_abstract_range`` (min printed with 2 decimals is 1.06 and max with 1
        decimal is 5.0).
    """
    rows = []
    for name in SLICES:
        s = slice_of(ratios, name).dropna(subset=[column])
        if s.empty:
            continue
        lo, hi = s.loc[s[column].idxmin()], s.loc[s[column].idxmax()]
        rows.append(
            {
                "slice": name,
                "n": len(s),
                "min": lo[column],
                "max": hi[column],
                "min_row": describe_ratio(lo),
                "max_row": describe_ratio(hi),
                "n_below_1": int((s[column] < 1).sum()),
                "is_abstract_range": bool(
                    round(lo[column], ABSTRACT_LOW[1]) == ABSTRACT_LOW[0]
                    and round(hi[column], ABSTRACT_HIGH[1]) == ABSTRACT_HIGH[0]
                ),
            }
        )
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- check 2: seconds per epoch


def per_epoch_table(df: pd.DataFrame, tolerance: float = AGREE_TOLERANCE) -> pd.DataFrame:
    """Seconds per epoch implied by each table row against the same method's timing runs.

    implied = time to ±1 % / epochs to ±1 % (seconds per epoch, the mean over epochs 1..E of the
    seed-mean training time); measured = the ``seconds_per_epoch`` row of the same dataset and method
    (the same lr where there is one; the timing run's own label is kept in ``timing_label``, since
    its lr or delta may differ from the table row's). The timing figure is a mean over all epochs of
    the timing runs, not over epochs 1..E.

    Args:
        df: :func:`load_reported`.
        tolerance: ``agree`` when abs(implied / measured - 1) <= tolerance.

    Returns:
        One row per table row: ``dataset``, ``rescale``, ``method``, ``lr``, ``epochs``, ``seconds``,
        ``implied`` (s/epoch), ``timing_label``, ``timing_cell``, ``measured`` (s/epoch; NaN without a
        timing run), ``implied_over_measured``, ``agree`` (bool; False without a timing run),
        ``has_timing``, ``seconds_at_measured`` = epochs x measured (seconds).
    """
    rows = []
    for _, r in paper_rows(df).iterrows():
        t = lookup_quantity(df, "seconds_per_epoch", r["dataset"], r["method"], r["lr"])
        implied = r["seconds_to_1pct"] / r["epochs_to_1pct"]
        measured = t["value"] if t is not None else np.nan
        ratio = implied / measured
        rows.append(
            {
                "dataset": r["dataset"],
                "rescale": r["rescale"],
                "method": r["method"],
                "lr": r["lr"],
                "epochs": int(r["epochs_to_1pct"]),
                "seconds": r["seconds_to_1pct"],
                "implied": implied,
                "timing_label": t["authors_label"] if t is not None else "",
                "timing_cell": int(t["cell"]) if t is not None else pd.NA,
                "measured": measured,
                "implied_over_measured": ratio,
                "has_timing": t is not None,
                "agree": bool(t is not None and abs(ratio - 1) <= tolerance),
                "seconds_at_measured": r["epochs_to_1pct"] * measured,
            }
        )
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- check 3: two definitions


def definitions_table(df: pd.DataFrame) -> pd.DataFrame:
    """Epochs to within 1 point of final against epochs to 95 % of final, where both are printed.

    Returns:
        One row per table row that has an ``epochs_to_95pct`` (CIFAR-10 only): ``dataset``,
        ``rescale``, ``method``, ``lr``, ``epochs_1pct``, ``epochs_95pct``, and for the baselines the
        ratio baseline / DiveBatch of the same group under each definition (``ratio_1pct``,
        ``ratio_95pct``; NaN on the DiveBatch row).
    """
    rows = []
    wide = paper_rows(df)
    for (dataset, rescale), g in wide.groupby(["dataset", "rescale"], sort=False):
        found = {}
        for _, r in g.iterrows():
            e95 = lookup_quantity(df, "epochs_to_95pct", dataset, r["method"], r["lr"])
            if e95 is not None:
                found[(r["method"], r["lr"])] = (r["epochs_to_1pct"], e95["value"])
        dkey = next((k for k in found if k[0] == DIVEBATCH[rescale]), None)
        for (method, lr), (e1, e95) in found.items():
            d1, d95 = found[dkey] if dkey else (np.nan, np.nan)
            is_dive = (method, lr) == dkey
            rows.append(
                {
                    "dataset": dataset,
                    "rescale": rescale,
                    "method": method,
                    "lr": lr,
                    "epochs_1pct": int(e1),
                    "epochs_95pct": int(e95),
                    "ratio_1pct": np.nan if is_dive else e1 / d1,
                    "ratio_95pct": np.nan if is_dive else e95 / d95,
                }
            )
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- check 4: the sources agree


def discrepancy_table(df: pd.DataFrame) -> pd.DataFrame:
    """Numbers printed twice that differ: a row's value or SEM against its check columns, and the
    accuracy at 100 % of training against the final accuracy of the same row (both are the last
    epoch's seed-mean and SEM).

    Returns:
        One row per difference: ``dataset``, ``rescale``, ``method``, ``lr``, ``quantity``, ``value``,
        ``sem``, ``source``, ``other_value``, ``other_sem``, ``other_source``.
    """

    def src(commit, cell) -> str:
        return f"@{commit[:7]} cell {int(cell)}"

    def same(a, b) -> bool:
        return (np.isnan(a) and np.isnan(b)) or a == b

    keys = ["dataset", "rescale", "method", "lr", "quantity"]

    def row(r, other_value, other_sem, other_source) -> dict:
        return {k: r[k] for k in keys} | {
            "value": r["value"],
            "sem": r["sem"],
            "source": src(r["commit"], r["cell"]),
            "other_value": other_value,
            "other_sem": other_sem,
            "other_source": other_source,
        }

    rows = []
    for _, r in df[df["check_commit"] != ""].iterrows():
        if not (same(r["value"], r["check_value"]) and same(r["sem"], r["check_sem"])):
            rows.append(row(r, r["check_value"], r["check_sem"], src(r["check_commit"], r["check_cell"])))
    idx = ["dataset", "rescale", "method", "lr"]
    fin = df[df["quantity"] == "final_acc"].set_index(idx)
    for _, r in df[df["quantity"] == "acc_at_100pct"].iterrows():
        k = tuple(r[c] for c in idx)
        if k not in fin.index:
            continue
        f = fin.loc[k]
        if not (same(r["value"], f["value"]) and same(r["sem"], f["sem"])):
            rows.append(row(r, f["value"], f["sem"], f"final_acc {src(f['commit'], f['cell'])}"))
    return pd.DataFrame(rows, columns=[*keys, "value", "sem", "source", "other_value", "other_sem", "other_source"])
