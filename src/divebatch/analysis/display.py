"""Readable versions of the numeric tables, and writing a table as CSV, Markdown and LaTeX.

Each ``format_*`` takes a numeric table (:mod:`divebatch.analysis.tables`,
:mod:`divebatch.analysis.speedups`) and returns strings: mean ± sd, mean ± SEM and values with
their 95 % t-interval over n seeds, all through :func:`divebatch.analysis.formatting.estimate`.
:func:`~divebatch.analysis.formatting.write_table` (importable from here) writes the numeric table as
CSV (with a ``provenance`` column) and the readable one as Markdown and LaTeX.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from divebatch.analysis.collect import GROUP, protocol_name
from divebatch.analysis.comparisons import ACC_CHANGE, AUTHORS_SPEEDUP, METRIC_GAIN, Comparisons
from divebatch.analysis.formatting import estimate, number, write_table
from divebatch.analysis.groups import BASELINES, order_rows
from divebatch.analysis.speedups import AUTHORS_LABEL, MATCHED, TARGETS
from divebatch.analysis.stats import (
    AUTHORS_UNITS,
    INTERVAL_NAME,
    MATCHED_UNITS,
    NAN_INTERVAL,
    UNIT_LABELS,
    UNITS,
    metric_sign,
)
from divebatch.methods import ADABATCH, ADAMW_SMALL, SGD_SMALL

__all__ = ["format_main", "format_matched", "format_sensitivity", "format_speedups", "mean_std", "write_table"]

AUTHORS_DIGITS = {"epochs": 0, "optimizer_steps": 0, "train_time_s": 1}
_AUTHORS_HEAD = " / ".join(AUTHORS_UNITS.values())  # "epochs / optimizer steps / training s"
SHORT = {SGD_SMALL: "SGD small", ADABATCH: "AdaBatch", ADAMW_SMALL: "AdamW small"}  # column headers


def mean_std(mean: float, std: float, digits: int = 2) -> str:
    """``mean ± std``; only the mean with one seed (std NaN), ``n/a`` when the mean is NaN."""
    return estimate(mean, std, spec=f".{digits}f")


def _speedup_cell(r: pd.Series) -> str:
    """A speed-up row's ``ratio [low, high] (n=k, pairing)`` (x = times faster than the baseline)."""
    return estimate(
        r["speedup"], low=r["ci_low"], high=r["ci_high"], unit="x", n=r["n_seeds"], pairing=r.get("pairing", "")
    )


def format_main(table: pd.DataFrame, comparisons: pd.DataFrame | None = None) -> pd.DataFrame:
    """Readable version of :func:`~divebatch.analysis.tables.main_table` (strings: mean ± std,
    intervals in brackets).

    The authors' definition comes first after the accuracies, one cell per quantity with the three
    units in the order of the header (``epochs / optimizer steps / training s``). ``Diverged`` is
    ``k/n``: k seeds diverged out of the n seeds found for the group (shown for every row, also 0).

    Args:
        table: the main table; comparisons: its long table
            (:func:`divebatch.analysis.comparisons.comparison_table`; None: read back from ``table``).
    """
    comp = Comparisons.of(table, comparisons)
    # a primary metric other than accuracy (e.g. val_loss) gets its own columns first
    other = "metric" in table and (table["metric"].fillna("val_acc") != "val_acc").any()
    metric_name = table["metric"].dropna().iloc[0] if other else "val_acc"  # rows whose every seed diverged
    have = set(comp.table["baseline"])
    roles = [role for role in BASELINES if role in have]
    return pd.DataFrame([_main_row(r, roles, comp, other, metric_name) for _, r in table.iterrows()])


def _main_row(r: pd.Series, roles: list[str], comp: Comparisons, other: bool, metric_name: str) -> dict:
    n = int(r["n_seeds"])
    row = {
        "Dataset": r["dataset"],
        "Method": r["method"],
        "Setting": r["setting"] or "-",
        "Protocol": protocol_name(r.get("protocol")),
        "Seeds": f"{n} ({r['seeds']})" if n else "0",
        "Diverged": f"{int(r['diverged'])}/{n + int(r['diverged'])}",
    }
    if other:
        m = r["metric"] if isinstance(r.get("metric"), str) else metric_name
        row[f"Final {m}"] = mean_std(r.get("final_metric_mean", np.nan), r.get("final_metric_std", np.nan), 3)
        row[f"Best {m}"] = mean_std(r.get("best_metric_mean", np.nan), r.get("best_metric_std", np.nan), 3)
        for role in roles:
            gain = comp.get(r, role, METRIC_GAIN) or NAN_INTERVAL
            value, low, high = gain.value, gain.low, gain.high
            if metric_sign(r) < 0:  # a gain is minus the change of a loss
                value, low, high = -value, -high, -low
            row[f"{m} change vs {SHORT[role]}"] = estimate(value, low=low, high=high, spec="+.3f", bound_spec=".3f")
    row.update(
        {
            "Final acc. (%)": mean_std(r["final_acc_mean"], r["final_acc_std"]),
            "Best acc. (%)": mean_std(r["best_acc_mean"], r["best_acc_std"]),
            "Acc. at 25% of epochs (%)": mean_std(r["acc_at_25pct_mean"], r["acc_at_25pct_std"]),
            "Peak memory (MB)": number(r["peak_memory_mb_mean"], 0),
            "Final batch size": number(r["final_batch_size_mean"], 0),
        }
    )
    row["Final acc. (%), mean ± SEM"] = estimate(r["final_acc_mean"], r.get("final_acc_sem", np.nan))
    for role in roles:
        iv = comp.get(r, role, ACC_CHANGE) or NAN_INTERVAL
        row[f"Acc. change vs {SHORT[role]} (pp, {INTERVAL_NAME})"] = estimate(
            iv.value, low=iv.low, high=iv.high, spec="+.2f", bound_spec=".2f", n=iv.n, pairing=iv.pairing
        )
        row[f"Acc. change vs {SHORT[role]} (pp), mean ± SEM"] = estimate(iv.value, iv.sem, spec="+.2f")
    ttt = " / ".join(number(r[f"authors_{u}"], AUTHORS_DIGITS[u]) for u in AUTHORS_UNITS)
    row[f"Authors' time to target ({_AUTHORS_HEAD})"] = ttt
    for role in roles:
        row[f"Authors' speed-up vs {SHORT[role]} ({_AUTHORS_HEAD})"] = " / ".join(
            number(comp.value(r, role, AUTHORS_SPEEDUP, u), 2, "x") for u in AUTHORS_UNITS
        )
    for target in TARGETS:
        for u, digits in (("epochs", 1), ("optimizer_steps", 0), ("wall_time_s", 1)):
            head = f"own target, {AUTHORS_LABEL}" if target == "own" else "common target"
            row[f"{UNIT_LABELS[u].capitalize()} to {head}"] = mean_std(
                r[f"{target}_{u}_mean"], r[f"{target}_{u}_std"], digits
            )
    metric = r["metric"] if isinstance(r.get("metric"), str) else metric_name
    target = f"{r['common_target']:.3f} {metric}" if other and metric != "val_acc" else f"{r['common_target']:.1f}%"
    row["Resized seeds"] = f"{int(r.get('resized_seeds', n))}/{n}" if n else "n/a"
    row["Reached common target"] = f"{int(r['common_reached'])}/{n} (target {target})" if n else "n/a"
    return row


def format_speedups(table: pd.DataFrame) -> pd.DataFrame:
    """Readable version of the own- and common-target rows of
    :func:`~divebatch.analysis.speedups.speedup_table`: one row per dataset x method x target, one
    column per baseline and unit, ``ratio [low, high] (n=k, paired)`` (x = times faster than the
    baseline; 95 % t-interval over n seeds). Own-target rows are the authors' definition
    (:data:`~divebatch.analysis.speedups.AUTHORS_LABEL`) and never decide "faster" alone: the
    verdicts use :func:`format_matched`'s matched target."""
    if not table.empty and "target" in table:
        table = table[table["target"].isin(list(TARGETS))]
    if table.empty:
        return pd.DataFrame(columns=["Dataset", "Method", "Setting", "Target", "Definition"])
    t = table.assign(
        cell=[_speedup_cell(r) for _, r in table.iterrows()],
        column=[f"vs {b}: {UNIT_LABELS[u]}" for b, u in zip(table["baseline"], table["unit"])],
    )
    wide = t.pivot_table(index=[*GROUP, "target"], columns="column", values="cell", aggfunc="first", sort=False)
    order = [f"vs {b}: {UNIT_LABELS[u]}" for b in BASELINES for u in UNITS]
    wide = wide[[c for c in order if c in wide.columns]].reset_index()
    wide.insert(
        len(GROUP) + 1,
        "Definition",
        wide["target"].map(
            {"own": AUTHORS_LABEL, "common": "common target (lowest final of the dataset; not a verdict)"}
        ),
    )
    if "target_rule" in table:
        rules = table.drop_duplicates(["dataset", "target"]).set_index(["dataset", "target"])["target_rule"]
        wide["target"] = [rules.get((d, tg), TARGETS[tg]) for d, tg in zip(wide["dataset"], wide["target"])]
    else:
        wide["target"] = wide["target"].map(TARGETS)
    wide["setting"] = wide["setting"].replace("", "-")
    return order_rows(wide).rename(
        columns={"dataset": "Dataset", "method": "Method", "setting": "Setting", "target": "Target"}
    )


def format_matched(table: pd.DataFrame) -> pd.DataFrame:
    """Readable version of the matched rows of :func:`~divebatch.analysis.speedups.speedup_table`
    (:func:`~divebatch.analysis.speedups.matched_table`): one row per dataset x method x setting x
    baseline x unit: the matched target, the quality gap, the per-seed speed-up with its 95 %
    t-interval over n seeds (and pairing), the ratio of the seed means ± SEM (the authors'
    statistic), the seed-mean curves' times and ratio, and how many runs reached the target."""
    if not table.empty and "target" in table:
        table = table[table["target"] == MATCHED]
    cols = ["Dataset", "Method", "Setting", "vs", "Unit", "Matched target"]
    if table.empty:
        return pd.DataFrame(columns=cols)
    rows = []
    for _, r in table.iterrows():
        acc = r["metric"] == "val_acc"
        digits = AUTHORS_DIGITS.get(r["unit"], 1)
        target = f"{r['target_value']:.2f} %" if acc else f"{r['target_value']:.3f} {r['metric']}"
        gap = f"{r['metric_gain']:+.2f} pp" if acc else f"{-r['metric_gain']:+.3f} {r['metric']}"
        rows.append(
            {
                "Dataset": r["dataset"],
                "Method": r["method"],
                "Setting": r["setting"] or "-",
                "vs": r["baseline_group"],
                "Unit": MATCHED_UNITS[r["unit"]],
                "Matched target": target,
                "Final vs baseline": gap,
                f"Speed-up per seed ({INTERVAL_NAME})": _speedup_cell(r),
                "Ratio of seed means ± SEM": estimate(r["ratio_of_means"], r["ratio_sem"], unit="x"),
                "Seed-mean curves (baseline / method)": (
                    f"{number(r['curve_speedup'], 2, 'x')} ({number(r['curve_base'], digits)} / "
                    f"{number(r['curve_method'], digits)})"
                ),
                "Reached (method, baseline)": (
                    f"{int(r['method_reached'])}/{int(r['method_seeds'])}, {int(r['base_reached'])}/{int(r['base_seeds'])}"
                ),
                "Resized seeds": f"{int(r['method_resized'])}/{int(r['method_seeds'])}",
            }
        )
    return pd.DataFrame(rows)


def format_sensitivity(table: pd.DataFrame) -> pd.DataFrame:
    """Readable version of :func:`~divebatch.analysis.tables.sensitivity_table`."""
    rows = []
    for _, r in table.iterrows():
        row = {
            "Dataset": r["dataset"],
            "Method": r["method"],
            "delta": "-" if not np.isfinite(r["delta"]) else f"{r['delta']:g}",
            "resize_freq": int(r["resize_freq"]),
            "max batch size": int(r["max_batch_size"]),
            "Seeds": int(r["n_seeds"]),
            "Final acc. (%)": mean_std(r["final_acc_mean"], r["final_acc_std"]),
            f"Acc. change vs SGD small (pp, {INTERVAL_NAME})": estimate(
                r["acc_change_pp"],
                low=r["acc_change_pp_low"],
                high=r["acc_change_pp_high"],
                spec="+.2f",
                bound_spec=".2f",
            ),
        }
        for u in UNITS:
            col = f"speedup_{u}"
            row[f"Speed-up vs SGD small ({UNIT_LABELS[u]}; own target, {INTERVAL_NAME})"] = estimate(
                r[col], low=r[f"{col}_low"], high=r[f"{col}_high"], unit="x"
            )
        rows.append(row)
    return pd.DataFrame(rows)
