"""Speed-up tables: every group against each baseline role, per target and unit (long format).

Targets (definitions in :mod:`divebatch.analysis.stats`): the *own* target (final - 1 pp, the
authors' definition, never a verdict alone), the *common* target of a dataset, and the *matched*
target of a group and a baseline (the lower of their two seed-mean finals - 1 pp), the one every
"faster" verdict uses (:func:`matched_table`). :func:`target_ladder` moves the target over a ladder.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from divebatch.analysis.collect import GROUP
from divebatch.analysis.groups import BASELINES, baseline_groups, baseline_name, order_rows, run_table
from divebatch.analysis.stats import (
    MATCHED_UNITS,
    UNITS,
    WITHIN_PP,
    authors_speedup,
    compare_groups,
    matched_target,
    mean_curve,
    metric_of,
    speedup,
    times_to,
)
from divebatch.methods import SGD_SMALL

TARGETS = {"own": f"own final - {WITHIN_PP:g} pp", "common": f"common (lowest final - {WITHIN_PP:g} pp)"}
MATCHED = "matched"  # speedup_table's target of the matched rows (matched_table)
AUTHORS_LABEL = f"authors' definition (own target: final - {WITHIN_PP:g} pp)"
MATCHED_COLUMNS = [
    *GROUP,
    "baseline",
    "baseline_group",
    "target",
    "unit",
    "speedup",
    "ci_low",
    "ci_high",
    "n_seeds",
    "pairing",
    "ratio_of_means",
    "ratio_sem",
    "target_rule",
    "target_value",
    "metric",
    "within",
    "method_final",
    "base_final",
    "metric_gain",
    "curve_method",
    "curve_base",
    "curve_speedup",
    "method_reached",
    "method_seeds",
    "base_reached",
    "base_seeds",
    "method_resized",
]
# the own- and common-target rows' columns: the matched rows' less those of their target
OWN_COMMON_COLUMNS = MATCHED_COLUMNS[: MATCHED_COLUMNS.index("target_rule") + 1]


def target_rule(target: str, metric: str = "val_acc", higher: bool = True, within: float = WITHIN_PP) -> str:
    """Readable definition of the own/common target for a primary metric (:data:`TARGETS` for accuracy)."""
    if metric == "val_acc" and higher and within == WITHIN_PP:
        return TARGETS[target]
    op = "-" if higher else "+"
    worst = "lowest" if higher else "highest"
    return (
        f"own final {metric} {op} {within:g}" if target == "own" else f"common ({worst} final {metric} {op} {within:g})"
    )


def matched_rule(metric: str = "val_acc", higher: bool = True, within: float = WITHIN_PP) -> str:
    """Readable definition of the matched target for a primary metric."""
    if metric == "val_acc" and higher:
        return f"matched (lower of the two mean finals - {within:g} pp)"
    op, worse = ("-", "lower") if higher else ("+", "higher")
    return f"matched ({worse} of the two mean final {metric} {op} {within:g})"


def speedup_table(epochs: pd.DataFrame) -> pd.DataFrame:
    """Speed-ups of every group against each baseline role, per target and unit (long format).

    Returns:
        Columns ``dataset, method, setting, baseline`` (role: ``SGD (small batch)`` or
        ``AdaBatch``), ``baseline_group`` (the method and setting used), ``target`` (own | common),
        ``unit`` (epochs | optimizer_steps | wall_time_s), ``speedup`` (exp of the mean log-ratio
        baseline / method, > 1 = faster than the baseline), ``ci_low``, ``ci_high`` (95 % t-interval
        over seeds on the log-ratio), ``n_seeds`` (pairs, or the smaller group under Welch),
        ``pairing`` (``paired`` | ``welch``), ``ratio_of_means`` and ``ratio_sem`` (the authors'
        statistic: seed-mean baseline time / seed-mean method time, delta-method SEM), ``target_rule``.
        Then the rows of :func:`matched_table` (``target`` = ``matched``, their own extra columns).
        Empty when no baseline exists.
    """
    runs = run_table(epochs)
    own_common = _own_common_speedups(epochs, runs)
    matched = matched_table(epochs, runs)
    if matched.empty:
        return own_common
    if own_common.empty:
        return matched
    return pd.concat([own_common, matched], ignore_index=True)


def _speedup_row(key: tuple, role: str, base: tuple, target: str, unit: str, iv, rule: str) -> dict:
    """The leading columns of one speed-up row: the group, its baseline, the target and unit, then the
    speed-up :class:`~divebatch.analysis.stats.Interval` (:func:`_speedup_fields`) and the target's rule."""
    return dict(
        zip(GROUP, key),
        baseline=role,
        baseline_group=baseline_name(base),
        target=target,
        unit=unit,
        **_speedup_fields(iv),
        target_rule=rule,
    )


def _speedup_fields(iv) -> dict:
    """The columns of a speed-up :class:`~divebatch.analysis.stats.Interval` in the speed-up tables."""
    return dict(
        speedup=iv.value,
        ci_low=iv.low,
        ci_high=iv.high,
        n_seeds=iv.n,
        pairing=iv.pairing,
        ratio_of_means=iv.mean,
        ratio_sem=iv.mean_sem,
    )


def _own_common_speedups(epochs: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    cols = OWN_COMMON_COLUMNS
    if runs.empty:
        return pd.DataFrame(columns=cols)
    bases = baseline_groups(runs)
    rows = []
    rule_of = {d: metric_of(epochs[epochs["dataset"] == d].iloc[0]) for d in runs["dataset"].unique()}
    for key in runs.groupby(GROUP, sort=False).groups:
        for role in BASELINES:
            base = bases.get((key[0], role))
            if base is None:
                continue
            for target in TARGETS:
                for u in UNITS:
                    m, b, pair = compare_groups(runs, key, base, f"{target}_{u}")
                    rule = target_rule(target, *rule_of[key[0]])
                    rows.append(_speedup_row(key, role, base, target, u, speedup(b, m, pair), rule))
    return order_rows(pd.DataFrame(rows, columns=cols)) if rows else pd.DataFrame(columns=cols)


def matched_table(epochs: pd.DataFrame, runs: pd.DataFrame | None = None) -> pd.DataFrame:
    """Speed at matched quality: every group against each baseline role, at their common target.

    For a group G and a baseline B of its dataset (:func:`~divebatch.analysis.groups.baseline_groups`;
    B itself is skipped): target = :func:`divebatch.analysis.stats.matched_target` of their seed-mean
    final primary metric (accuracy: the lower final - 1 pp); the time each run needs to reach it
    (:func:`divebatch.analysis.stats.times_to`) in epochs, optimizer steps, training seconds and
    wall-clock seconds, and the same on each group's seed-mean curve.

    Args:
        epochs: tidy per-epoch table (``RunSet.epochs``, complete runs).
        runs: :func:`~divebatch.analysis.groups.run_table` of it (computed when None).
    Returns:
        Long format, one row per group x baseline role x unit (:data:`MATCHED_COLUMNS`):
        ``target`` = ``matched``; ``speedup``, ``ci_low``, ``ci_high`` (per seed: exp of the mean
        log-ratio baseline / group, 95 % t-interval, paired by seed or Welch: ``pairing``,
        ``n_seeds``); ``ratio_of_means``/``ratio_sem`` (the authors' statistic); ``target_value``
        (the metric's units); ``method_final``/``base_final`` (seed-mean finals), ``metric_gain``
        (group - baseline, > 0 better), ``within``; ``curve_method``, ``curve_base`` (time on the
        seed-mean curves) and ``curve_speedup`` (their ratio, one number); ``method_reached`` of
        ``method_seeds`` and ``base_reached`` of ``base_seeds`` (runs that reach the target; a run
        that never does has no time and leaves the pairs); ``method_resized`` (runs whose batch
        size changed at least once).
    """
    runs = run_table(epochs) if runs is None else runs
    if runs.empty:
        return pd.DataFrame(columns=MATCHED_COLUMNS)
    bases = baseline_groups(runs)
    by_run = dict(list(epochs.groupby("run_id", sort=False)))
    members = {key: g for key, g in runs.groupby(GROUP, sort=False)}
    finals = {key: float(g["final_metric"].mean()) for key, g in members.items()}
    curves = {
        key: mean_curve(epochs[epochs["run_id"].isin(g["run_id"])], metric_of(g.iloc[0])[0])
        for key, g in members.items()
    }
    rows = []
    for key, g in members.items():
        metric = metric_of(by_run[g["run_id"].iloc[0]].iloc[0])
        for role in BASELINES:
            base = bases.get((key[0], role))
            if base is None or base == key:
                continue
            pair = (g, members[base])
            rows += _matched_rows(key, base, role, pair, (finals[key], finals[base]), curves, by_run, metric)
    return order_rows(pd.DataFrame(rows, columns=MATCHED_COLUMNS)) if rows else pd.DataFrame(columns=MATCHED_COLUMNS)


def _matched_rows(key, base, role, pair, finals, curves, by_run, metric) -> list[dict]:
    """The rows of :func:`matched_table` for group ``key`` against baseline group ``base`` (one per unit).

    Args:
        pair: the two groups' rows of the run table (group, baseline); finals: their seed-mean
            final primary metric; curves: group -> seed-mean curve; by_run: run_id -> metrics rows;
        metric: ``(column, higher, within)`` of the primary metric.
    """
    column, higher, within = metric
    g, b_runs = pair
    target = matched_target(finals[0], finals[1], within, higher)
    both = pd.concat([g, b_runs], ignore_index=True)
    times = [times_to(by_run[r], target, column, higher) for r in both["run_id"]]
    for u in MATCHED_UNITS:
        both[f"matched_{u}"] = [t[u] for t in times]
    curve_m = times_to(curves[key], target, column, higher)
    curve_b = times_to(curves[base], target, column, higher)
    reached_m = int(both.loc[: len(g) - 1, "matched_epochs"].notna().sum())
    reached_b = int(both.loc[len(g) :, "matched_epochs"].notna().sum())
    rows = []
    for u in MATCHED_UNITS:
        m, b, paired_by_seed = compare_groups(both, key, base, f"matched_{u}")
        rows.append(
            dict(
                **_speedup_row(
                    key, role, base, MATCHED, u, speedup(b, m, paired_by_seed), matched_rule(column, higher, within)
                ),
                target_value=target,
                metric=column,
                within=within,
                method_final=finals[0],
                base_final=finals[1],
                metric_gain=(1.0 if higher else -1.0) * (finals[0] - finals[1]),
                curve_method=curve_m[u],
                curve_base=curve_b[u],
                curve_speedup=authors_speedup(curve_b[u], curve_m[u]),
                method_reached=reached_m,
                method_seeds=len(g),
                base_reached=reached_b,
                base_seeds=len(b_runs),
                method_resized=int(g["resized"].sum()),
            )
        )
    return rows


def target_ladder(epochs: pd.DataFrame, dataset: str, steps: int = 12, role: str = SGD_SMALL) -> pd.DataFrame:
    """Speed-up against small-batch SGD (or another baseline ``role`` of :data:`BASELINES`) over a
    ladder of targets, on the seed-mean curves.

    Targets: ``steps`` values evenly spaced from the worst first-epoch seed-mean value of the
    dataset's groups to the best matched target any group has against the baseline (the
    lower final - 1 pp; a loss: the higher + ``within``). At each target, each group's time on its
    seed-mean curve (:func:`divebatch.analysis.stats.times_to`) and the baseline's / the group's.

    Returns:
        Columns ``dataset, method, setting, target_value, unit`` (:data:`MATCHED_UNITS`),
        ``speedup`` (NaN where either curve never reaches the target), ``matched`` (True on the
        ladder's point that is this group's matched target). Empty without the baseline's runs.
    """
    cols = [*GROUP, "target_value", "unit", "speedup", "matched"]
    d = epochs[epochs["dataset"] == dataset]
    runs = run_table(d)
    if runs.empty:
        return pd.DataFrame(columns=cols)
    base = baseline_groups(runs).get((dataset, role))
    if base is None:
        return pd.DataFrame(columns=cols)
    column, higher, within = metric_of(d.iloc[0])
    groups = {key: g for key, g in runs.groupby(GROUP, sort=False)}
    curves = {key: mean_curve(d[d["run_id"].isin(g["run_id"])], column) for key, g in groups.items()}
    finals = {key: float(g["final_metric"].mean()) for key, g in groups.items()}
    matched = {k: matched_target(finals[k], finals[base], within, higher) for k in groups if k != base}
    if not matched:
        return pd.DataFrame(columns=cols)
    first = [float(c[column].iloc[0]) for c in curves.values()]
    lo = min(first) if higher else max(first)
    hi = max(matched.values()) if higher else min(matched.values())
    ladder = sorted(set(np.linspace(lo, hi, steps).tolist()) | set(matched.values()))
    rows = []
    for key, target_of in matched.items():
        for t in ladder:
            tm, tb = times_to(curves[key], t, column, higher), times_to(curves[base], t, column, higher)
            for u in MATCHED_UNITS:
                rows.append(
                    dict(
                        zip(GROUP, key),
                        target_value=t,
                        unit=u,
                        speedup=authors_speedup(tb[u], tm[u]),
                        matched=t == target_of,
                    )
                )
    return pd.DataFrame(rows, columns=cols)
