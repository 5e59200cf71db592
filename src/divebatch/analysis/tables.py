"""Paper tables: accuracy and time to target, speed-ups, hyperparameter sensitivity.

Every builder takes the tidy per-epoch table of :class:`divebatch.analysis.collect.RunSet`
(``RunSet.epochs``, complete runs only) and returns a numeric DataFrame; :func:`write_table`
writes it as CSV (numeric, with a ``provenance`` column) and as Markdown and LaTeX (formatted,
provenance below the table / in the caption). Definitions of time to target, the matched target,
speed-up and the t-intervals over seeds: :mod:`divebatch.analysis.stats`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from divebatch.analysis.collect import ALL_HPARAMS, GROUP, protocol_name
from divebatch.analysis.stats import (
    AUTHORS_UNITS,
    INTERVAL_NAME,
    MATCHED_UNITS,
    NAN_INTERVAL,
    UNIT_LABELS,
    UNITS,
    WITHIN_PP,
    accuracy_change,
    authors_speedup,
    authors_time_to_target,
    compare_groups,
    matched_target,
    mean_curve,
    metric_of,
    metric_sign,
    per_run,
    speedup,
    times_to,
)
from divebatch.analysis.style import METHOD_ORDER
from divebatch.methods import ADABATCH, ADABATCH_RESCALE, ADAMW_SMALL, SGD_SMALL

# Baseline role -> methods that can play it, in order of preference. "AdaBatch" prefers the plain
# variant (claim 2 of docs/protocol.md compares against AdaBatch); with only the rescaled one, that one is used.
# "AdamW (small batch)" is the baseline of the AdamW runs (transformer profile); roles absent from
# the runs add no column.
BASELINES = {SGD_SMALL: (SGD_SMALL,), ADABATCH: (ADABATCH, ADABATCH_RESCALE), ADAMW_SMALL: (ADAMW_SMALL,)}
BASELINE_SLUG = {SGD_SMALL: "sgd_small", ADABATCH: "adabatch", ADAMW_SMALL: "adamw_small"}
TARGETS = {"own": f"own final - {WITHIN_PP:g} pp", "common": f"common (lowest final - {WITHIN_PP:g} pp)"}
MATCHED = "matched"  # speedup_table's target of the matched rows (matched_table)
AUTHORS_LABEL = f"authors' definition (own target: final - {WITHIN_PP:g} pp)"
SENSITIVITY_HPARAMS = ("delta", "resize_freq", "max_batch_size")


def _order(df: pd.DataFrame) -> pd.DataFrame:
    rank = {m: i for i, m in enumerate(METHOD_ORDER)}
    return (
        df.assign(_r=df["method"].map(lambda m: rank.get(m, len(rank))))
        .sort_values(["dataset", "_r", "method", "setting"])
        .drop(columns="_r")
        .reset_index(drop=True)
    )


def run_table(epochs: pd.DataFrame) -> pd.DataFrame:
    """:func:`divebatch.analysis.stats.per_run` plus the hyperparameter columns of each run."""
    runs = per_run(epochs, GROUP)
    if runs.empty:
        return runs
    hp = [c for c in ALL_HPARAMS.values() if c in epochs.columns and c not in runs.columns]
    extra = epochs.drop_duplicates("run_id").set_index("run_id")[hp + ["n_train", "commit"]]
    return runs.join(extra, on="run_id")


def baseline_groups(runs: pd.DataFrame) -> dict[tuple[str, str], tuple]:
    """``(dataset, role) -> (dataset, method, setting)`` of the baseline group for each role of
    :data:`BASELINES`; among several settings of the baseline method, the one with most seeds
    (then the first in sort order)."""
    out = {}
    sizes = runs.groupby(GROUP)["seed"].nunique()
    for dataset in runs["dataset"].unique():
        for role, candidates in BASELINES.items():
            for cand in candidates:
                s = sizes[
                    (sizes.index.get_level_values("dataset") == dataset)
                    & (sizes.index.get_level_values("method") == cand)
                ]
                if len(s):
                    out[(dataset, role)] = s.sort_index().sort_values(ascending=False, kind="stable").index[0]
                    break
    return out


def authors_table(epochs: pd.DataFrame) -> pd.DataFrame:
    """The authors' time to target per dataset x method x setting
    (:func:`divebatch.analysis.stats.authors_time_to_target`, on the seed-mean curve of the group).

    Returns:
        Columns ``dataset, method, setting``, ``authors_target`` (the primary metric's units,
        percent for accuracy; module docstring of :mod:`divebatch.analysis.stats`), ``authors_epochs``,
        ``authors_optimizer_steps``, ``authors_train_time_s`` (training seconds only).
    """
    cols = [*GROUP, "authors_target", *(f"authors_{u}" for u in AUTHORS_UNITS)]
    if epochs.empty:
        return pd.DataFrame(columns=cols)
    rows = []
    for key, g in epochs.groupby(GROUP, sort=False):
        column, higher, within = metric_of(g.iloc[0])
        got = authors_time_to_target(g, within, column, higher)
        rows.append({**dict(zip(GROUP, key)), **{f"authors_{k}": v for k, v in got.items()}})
    return pd.DataFrame(rows, columns=cols)


def diverged_seeds(runs: pd.DataFrame) -> dict[tuple, list[int]]:
    """``(dataset, method, setting) -> sorted seeds`` whose run diverged and that have no complete
    run in that group (a diverged attempt that was re-run to completion is not counted).

    Args:
        runs: ``RunSet.runs`` (needs ``status``, ``complete``, ``seed`` and the group columns).
    """
    if runs is None or runs.empty or "status" not in runs:
        return {}
    out = {}
    for key, g in runs[runs["method"].notna()].groupby(GROUP):
        done = set(g.loc[g["complete"].astype(bool), "seed"].astype(int))
        div = sorted(set(g.loc[g["status"] == "diverged", "seed"].astype(int)) - done)
        if div:
            out[key] = div
    return out


def present_roles(bases: dict) -> list[str]:
    """The roles of :data:`BASELINES` that some dataset has; SGD small and AdaBatch always (the
    paper's baselines keep their columns, NaN when absent)."""
    have = {role for _, role in bases}
    return [r for r in BASELINES if r in have or r in (SGD_SMALL, ADABATCH)]


def target_rule(target: str, metric: str = "val_acc", higher: bool = True, within: float = WITHIN_PP) -> str:
    """Readable definition of the own/common target for a primary metric (:data:`TARGETS` for accuracy)."""
    if metric == "val_acc" and higher and within == WITHIN_PP:
        return TARGETS[target]
    op = "-" if higher else "+"
    worst = "lowest" if higher else "highest"
    return (
        f"own final {metric} {op} {within:g}" if target == "own" else f"common ({worst} final {metric} {op} {within:g})"
    )


def main_table(epochs: pd.DataFrame, runs: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per dataset x method (x setting): accuracy, accuracy change, time to target.

    Args:
        epochs: tidy per-epoch table (``RunSet.epochs``, complete runs).
        runs: ``RunSet.runs``, to count diverged runs per group (a group whose every run diverged
            gets a row with ``n_seeds`` 0 and NaN numbers); None: no ``diverged`` count (0).
    Returns:
        Numeric columns: ``protocol`` (``authors_code`` | ``clean`` | None, from config.yaml);
        ``n_seeds``, ``seeds`` (complete runs used); ``diverged`` (seeds whose run diverged,
        left out of every number) and ``diverged_seeds``; ``final_acc_mean/std``,
        ``best_acc_mean/std`` (percent, std over seeds with ddof=1); ``acc_at_25pct_mean/std``
        (percent, validation accuracy after the first quarter of the planned epochs E, i.e. at
        0-based epoch ceil(0.25 E) - 1); ``peak_memory_mb_mean`` (MB: max over epochs per run, mean
        over seeds; CUDA allocator peak on GPU, peak RSS of the process on CPU);
        ``final_acc_sem`` (SEM over seeds, the authors' statistic); ``resized_seeds`` (seeds whose
        batch size changed at least once); ``final_batch_size_mean`` (samples);
        ``acc_change_vs_<role>_pp`` with ``_low``/``_high`` (percentage points, 95 % t-interval over
        seeds, paired by seed when the groups share seeds, Welch otherwise), ``_sem``, ``_n`` (seeds
        or pairs) and ``_pairing`` (``paired`` | ``welch``); the authors' definition on the seed-mean curve
        (:func:`authors_table`): ``authors_target`` (percent), ``authors_epochs``,
        ``authors_optimizer_steps``, ``authors_train_time_s`` (training seconds), and
        ``authors_speedup_vs_<role>_<unit>`` (baseline's value / this group's, no interval);
        ``common_target`` (percent); for target in (own, common) and unit in (epochs,
        optimizer_steps, wall_time_s): ``<target>_<unit>_mean/std`` and ``common_reached``
        (runs that reached the common target).
    """
    runs_found = runs
    runs = run_table(epochs)
    diverged = diverged_seeds(runs_found)
    if runs.empty and not diverged:
        return pd.DataFrame(columns=GROUP)
    bases = baseline_groups(runs) if len(runs) else {}
    authors = authors_table(epochs).set_index(GROUP)
    rows = []
    groups = dict(list(runs.groupby(GROUP, sort=False))) if len(runs) else {}
    for key in diverged:
        if key not in groups:  # every run of this group diverged: a row that says so
            rows.append(
                {
                    **dict(zip(GROUP, key)),
                    "protocol": _group_protocol(runs_found, key),
                    "n_seeds": 0,
                    "seeds": "",
                    "diverged": len(diverged[key]),
                    "diverged_seeds": _seeds(diverged[key]),
                }
            )
    for key, g in groups.items():
        row = dict(
            zip(GROUP, key),
            protocol=g["protocol"].iloc[0] if "protocol" in g else None,
            n_seeds=len(g),
            seeds=_seeds(g["seed"]),
            diverged=len(diverged.get(key, [])),
            diverged_seeds=_seeds(diverged.get(key, [])),
        )
        for col in ("final_acc", "best_acc", "acc_at_25pct"):
            row[f"{col}_mean"], row[f"{col}_std"] = g[col].mean(), g[col].std(ddof=1)
        row["peak_memory_mb_mean"] = g["peak_memory_mb"].mean()
        row["final_batch_size_mean"] = g["final_batch_size"].mean()
        row["final_acc_sem"] = row["final_acc_std"] / np.sqrt(len(g)) if len(g) > 1 else np.nan
        row["resized_seeds"] = int(g["resized"].sum()) if "resized" in g else len(g)
        for role in present_roles(bases):
            slug = BASELINE_SLUG[role]
            base = bases.get((key[0], role))
            iv = accuracy_change(*compare_groups(runs, key, base, "final_acc")) if base else NAN_INTERVAL
            row[f"acc_change_vs_{slug}_pp"], row[f"acc_change_vs_{slug}_pp_low"] = iv.value, iv.low
            row[f"acc_change_vs_{slug}_pp_high"] = iv.high
            row[f"acc_change_vs_{slug}_pp_sem"], row[f"acc_change_vs_{slug}_pp_n"] = iv.sem, iv.n
            row[f"acc_change_vs_{slug}_pp_pairing"] = iv.pairing
        # the primary metric (stats module docstring): its mean, and its gain (> 0 better) per baseline
        first = g.iloc[0]
        row["model"], row["optimizer"] = first.get("model"), first.get("optimizer")
        row["metric"], _, row["metric_within"] = metric_of(first)
        sign = metric_sign(first)
        row["metric_direction"] = "higher" if sign > 0 else "lower"
        for col in ("final_metric", "best_metric"):
            row[f"{col}_mean"], row[f"{col}_std"] = g[col].mean(), g[col].std(ddof=1)
        for role in present_roles(bases):
            base = bases.get((key[0], role))
            iv = accuracy_change(*compare_groups(runs, key, base, "final_metric")) if base else NAN_INTERVAL
            low, high = (iv.low, iv.high) if sign > 0 else (-iv.high, -iv.low)
            slug = f"metric_gain_vs_{BASELINE_SLUG[role]}"
            row[slug], row[f"{slug}_low"], row[f"{slug}_high"] = sign * iv.value, low, high
        row.update(authors.loc[key].to_dict())
        for role in present_roles(bases):
            slug, base = BASELINE_SLUG[role], bases.get((key[0], role))
            for u in AUTHORS_UNITS:
                row[f"authors_speedup_vs_{slug}_{u}"] = (
                    authors_speedup(authors.loc[base, f"authors_{u}"], row[f"authors_{u}"]) if base else np.nan
                )
        row["common_target"] = g["common_target"].iloc[0]
        for target in TARGETS:
            for u in UNITS:
                row[f"{target}_{u}_mean"] = g[f"{target}_{u}"].mean()
                row[f"{target}_{u}_std"] = g[f"{target}_{u}"].std(ddof=1)
        row["common_reached"] = int(g["common_epochs"].notna().sum())
        rows.append(row)
    return _order(pd.DataFrame(rows))


def _seeds(seeds) -> str:
    return ",".join(map(str, sorted(int(s) for s in seeds)))


def _group_protocol(runs: pd.DataFrame, key: tuple):
    g = runs[(runs["dataset"] == key[0]) & (runs["method"] == key[1]) & (runs["setting"] == key[2])]
    return g["protocol"].iloc[0] if "protocol" in g and len(g) else None


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


def _own_common_speedups(epochs: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    cols = MATCHED_COLUMNS[: MATCHED_COLUMNS.index("target_rule") + 1]  # the matched rows' columns, less their target's
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
            base_name = base[1] + (f" ({base[2]})" if base[2] else "")
            for target in TARGETS:
                for u in UNITS:
                    m, b, pair = compare_groups(runs, key, base, f"{target}_{u}")
                    iv = speedup(b, m, pair)
                    rows.append(
                        dict(
                            zip(GROUP, key),
                            baseline=role,
                            baseline_group=base_name,
                            target=target,
                            unit=u,
                            speedup=iv.value,
                            ci_low=iv.low,
                            ci_high=iv.high,
                            n_seeds=iv.n,
                            pairing=iv.pairing,
                            ratio_of_means=iv.mean,
                            ratio_sem=iv.mean_sem,
                            target_rule=target_rule(target, *rule_of[key[0]]),
                        )
                    )
    return _order(pd.DataFrame(rows, columns=cols)) if rows else pd.DataFrame(columns=cols)


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


def matched_rule(metric: str = "val_acc", higher: bool = True, within: float = WITHIN_PP) -> str:
    """Readable definition of the matched target for a primary metric."""
    if metric == "val_acc" and higher:
        return f"matched (lower of the two mean finals - {within:g} pp)"
    op, worse = ("-", "lower") if higher else ("+", "higher")
    return f"matched ({worse} of the two mean final {metric} {op} {within:g})"


def matched_table(epochs: pd.DataFrame, runs: pd.DataFrame | None = None) -> pd.DataFrame:
    """Speed at matched quality: every group against each baseline role, at their common target.

    For a group G and a baseline B of its dataset (:func:`baseline_groups`; B itself is skipped):
    target = :func:`divebatch.analysis.stats.matched_target` of their seed-mean final primary
    metric (accuracy: the lower final - 1 pp); the time each run needs to reach it
    (:func:`divebatch.analysis.stats.times_to`) in epochs, optimizer steps, training seconds and
    wall-clock seconds, and the same on each group's seed-mean curve.

    Args:
        epochs: tidy per-epoch table (``RunSet.epochs``, complete runs).
        runs: :func:`run_table` of it (computed when None).
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
        column, higher, within = metric_of(by_run[g["run_id"].iloc[0]].iloc[0])
        sign = 1.0 if higher else -1.0
        for role in BASELINES:
            base = bases.get((key[0], role))
            if base is None or base == key:
                continue
            target = matched_target(finals[key], finals[base], within, higher)
            pair = pd.concat([g, members[base]], ignore_index=True)
            times = [times_to(by_run[r], target, column, higher) for r in pair["run_id"]]
            for u in MATCHED_UNITS:
                pair[f"matched_{u}"] = [t[u] for t in times]
            curve_m, curve_b = (
                times_to(curves[key], target, column, higher),
                times_to(curves[base], target, column, higher),
            )
            reached_m = int(pair.loc[: len(g) - 1, "matched_epochs"].notna().sum())
            reached_b = int(pair.loc[len(g) :, "matched_epochs"].notna().sum())
            for u in MATCHED_UNITS:
                m, b, paired_by_seed = compare_groups(pair, key, base, f"matched_{u}")
                iv = speedup(b, m, paired_by_seed)
                cm, cb = curve_m[u], curve_b[u]
                rows.append(
                    dict(
                        zip(GROUP, key),
                        baseline=role,
                        baseline_group=base[1] + (f" ({base[2]})" if base[2] else ""),
                        target=MATCHED,
                        unit=u,
                        speedup=iv.value,
                        ci_low=iv.low,
                        ci_high=iv.high,
                        n_seeds=iv.n,
                        pairing=iv.pairing,
                        ratio_of_means=iv.mean,
                        ratio_sem=iv.mean_sem,
                        target_rule=matched_rule(column, higher, within),
                        target_value=target,
                        metric=column,
                        within=within,
                        method_final=finals[key],
                        base_final=finals[base],
                        metric_gain=sign * (finals[key] - finals[base]),
                        curve_method=cm,
                        curve_base=cb,
                        curve_speedup=authors_speedup(cb, cm),
                        method_reached=reached_m,
                        method_seeds=len(g),
                        base_reached=reached_b,
                        base_seeds=len(members[base]),
                        method_resized=int(g["resized"].sum()),
                    )
                )
    return _order(pd.DataFrame(rows, columns=MATCHED_COLUMNS)) if rows else pd.DataFrame(columns=MATCHED_COLUMNS)


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


def sensitivity_table(df: pd.DataFrame) -> pd.DataFrame:
    """Final accuracy and speed-up against delta, resize frequency and max batch size (sweeps).

    One row per dataset x adaptive method x (delta, resize_freq, max_batch_size) setting, over the
    seeds of that setting; speed-ups are against the dataset's small-batch SGD group with the
    own target (final - 1 pp), in the three units (NaN when the runs hold no small-batch SGD).

    Args:
        df: tidy per-epoch table (``RunSet.epochs``) of the sweep's runs, SGD baseline included.
    Returns:
        Columns ``dataset, method, delta, resize_freq, max_batch_size, initial_batch_size, n_seeds,
        final_acc_mean, final_acc_std`` (percent), ``acc_change_pp`` with ``_low/_high``
        (percentage points vs small-batch SGD), ``speedup_<unit>`` with ``_low/_high``.
    """
    runs = run_table(df)
    if runs.empty:
        return pd.DataFrame(columns=["dataset", "method", *SENSITIVITY_HPARAMS])
    bases = baseline_groups(runs)
    rows = []
    for key, g in runs[runs["method_name"] != "sgd"].groupby(GROUP, sort=False):
        first = g.iloc[0]
        row = {
            "dataset": key[0],
            "method": key[1],
            **{
                h: (first[h] if not (h == "delta" and first["method_name"] != "divebatch") else np.nan)
                for h in SENSITIVITY_HPARAMS
            },
            "initial_batch_size": first["initial_batch_size"],
            "n_seeds": len(g),
            "final_acc_mean": g["final_acc"].mean(),
            "final_acc_std": g["final_acc"].std(ddof=1),
        }
        base = bases.get((key[0], SGD_SMALL))
        iv = accuracy_change(*compare_groups(runs, key, base, "final_acc")) if base else NAN_INTERVAL
        row.update(acc_change_pp=iv.value, acc_change_pp_low=iv.low, acc_change_pp_high=iv.high)
        for u in UNITS:
            if base:
                m, b, pair = compare_groups(runs, key, base, f"own_{u}")
                iv = speedup(b, m, pair)
            else:
                iv = NAN_INTERVAL
            row.update({f"speedup_{u}": iv.value, f"speedup_{u}_low": iv.low, f"speedup_{u}_high": iv.high})
        rows.append(row)
    out = pd.DataFrame(rows)
    return out.sort_values(["dataset", "method", *SENSITIVITY_HPARAMS]).reset_index(drop=True) if rows else out


def has_sweep(epochs: pd.DataFrame) -> bool:
    """True when some dataset and adaptive method was run with more than one setting of
    :data:`SENSITIVITY_HPARAMS` (what a sensitivity table needs)."""
    if epochs.empty:
        return False
    adaptive = epochs[epochs["method_name"] != "sgd"].drop_duplicates("run_id")
    return any(
        g[list(SENSITIVITY_HPARAMS)].astype(str).drop_duplicates().shape[0] > 1
        for _, g in adaptive.groupby(["dataset", "method"])
    )


# ---------------------------------------------------------------- formatting


def mean_std(mean: float, std: float, digits: int = 2) -> str:
    """``mean ± std``; only the mean with one seed (std NaN), ``n/a`` when the mean is NaN."""
    if not np.isfinite(mean):
        return "n/a"
    return f"{mean:.{digits}f}" if not np.isfinite(std) else f"{mean:.{digits}f} ± {std:.{digits}f}"


def _iv(row: pd.Series, col: str, digits: int = 2, suffix: str = "", n: int | None = None, pairing: str = "") -> str:
    """``value [low, high]`` (the 95 % t-interval), ``(n=k, paired|welch)`` when ``n`` is given;
    ``value (n=1, no interval)`` with one seed; ``n/a`` when the value is NaN."""
    low, high = row.get(f"{col}_low", np.nan), row.get(f"{col}_high", np.nan)
    value = row[col]
    if not np.isfinite(value):
        return "n/a"
    core = f"{value:+.{digits}f}" if suffix == " pp" else f"{value:.{digits}f}{suffix}"
    if n is not None and np.isfinite(n) and int(n) < 2:
        return f"{core} (n={int(n)}, no interval)"
    core = core if not np.isfinite(low) else f"{core} [{low:.{digits}f}, {high:.{digits}f}]"
    if n is not None and np.isfinite(n):
        core += f" (n={int(n)}{', ' + pairing if isinstance(pairing, str) and pairing else ''})"
    return core


def _pm(value: float, sem: float, digits: int = 2, suffix: str = "", signed: bool = False) -> str:
    """``mean ± SEM`` (the authors' statistic); the mean alone when the SEM is NaN (one seed)."""
    if not np.isfinite(value):
        return "n/a"
    core = f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"
    return f"{core}{suffix}" if not np.isfinite(sem) else f"{core} ± {sem:.{digits}f}{suffix}"


AUTHORS_DIGITS = {"epochs": 0, "optimizer_steps": 0, "train_time_s": 1}
_AUTHORS_HEAD = " / ".join(AUTHORS_UNITS.values())  # "epochs / optimizer steps / training s"


def _num(value: float, digits: int, suffix: str = "") -> str:
    return f"{value:.{digits}f}{suffix}" if np.isfinite(value) else "n/a"


def _metric_change(row: pd.Series, gain: str, digits: int = 3) -> str:
    """The change of the primary metric (method - baseline, in its own units and sign) from its gain
    columns, ``+0.012 [low, high]``; ``n/a`` when missing."""
    value, low, high = row.get(gain, np.nan), row.get(f"{gain}_low", np.nan), row.get(f"{gain}_high", np.nan)
    if metric_sign(row) < 0:  # a gain is minus the change of a loss
        value, low, high = -value, -high, -low
    if not np.isfinite(value):
        return "n/a"
    core = f"{value:+.{digits}f}"
    return core if not np.isfinite(low) else f"{core} [{low:.{digits}f}, {high:.{digits}f}]"


def format_main(table: pd.DataFrame) -> pd.DataFrame:
    """Readable version of :func:`main_table` (strings: mean ± std, intervals in brackets).

    The authors' definition comes first after the accuracies, one cell per quantity with the three
    units in the order of the header (``epochs / optimizer steps / training s``). ``Diverged`` is
    ``k/n``: k seeds diverged out of the n seeds found for the group (shown for every row, also 0).
    """
    rows = []
    # a primary metric other than accuracy (e.g. val_loss) gets its own columns first
    other = "metric" in table and (table["metric"].fillna("val_acc") != "val_acc").any()
    metric_name = table["metric"].dropna().iloc[0] if other else "val_acc"  # rows whose every seed diverged
    roles = [role for role in BASELINES if f"acc_change_vs_{BASELINE_SLUG[role]}_pp" in table]
    short = {SGD_SMALL: "SGD small", ADABATCH: "AdaBatch", ADAMW_SMALL: "AdamW small"}  # column headers
    for _, r in table.iterrows():
        n = int(r["n_seeds"])
        ttt = " / ".join(_num(r[f"authors_{u}"], AUTHORS_DIGITS[u]) for u in AUTHORS_UNITS)
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
                row[f"{m} change vs {short[role]}"] = _metric_change(r, f"metric_gain_vs_{BASELINE_SLUG[role]}")
        row.update(
            {
                "Final acc. (%)": mean_std(r["final_acc_mean"], r["final_acc_std"]),
                "Best acc. (%)": mean_std(r["best_acc_mean"], r["best_acc_std"]),
                "Acc. at 25% of epochs (%)": mean_std(r["acc_at_25pct_mean"], r["acc_at_25pct_std"]),
                "Peak memory (MB)": _num(r["peak_memory_mb_mean"], 0),
                "Final batch size": _num(r["final_batch_size_mean"], 0),
            }
        )
        row["Final acc. (%), mean ± SEM"] = _pm(r["final_acc_mean"], r.get("final_acc_sem", np.nan))
        for role in roles:
            col = f"acc_change_vs_{BASELINE_SLUG[role]}_pp"
            row[f"Acc. change vs {short[role]} (pp, {INTERVAL_NAME})"] = _iv(
                r, col, suffix=" pp", n=r.get(f"{col}_n", np.nan), pairing=r.get(f"{col}_pairing", "")
            )
            row[f"Acc. change vs {short[role]} (pp), mean ± SEM"] = _pm(
                r[col], r.get(f"{col}_sem", np.nan), signed=True
            )
        row[f"Authors' time to target ({_AUTHORS_HEAD})"] = ttt
        for role in roles:
            row[f"Authors' speed-up vs {short[role]} ({_AUTHORS_HEAD})"] = " / ".join(
                _num(r.get(f"authors_speedup_vs_{BASELINE_SLUG[role]}_{u}", np.nan), 2, "x") for u in AUTHORS_UNITS
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
        rows.append(row)
    return pd.DataFrame(rows)


def format_speedups(table: pd.DataFrame) -> pd.DataFrame:
    """Readable version of the own- and common-target rows of :func:`speedup_table`: one row per
    dataset x method x target, one column per baseline and unit, ``ratio [low, high] (n=k,
    paired)`` (x = times faster than the baseline; 95 % t-interval over n seeds). Own-target rows
    are the authors' definition (:data:`AUTHORS_LABEL`) and never decide "faster" alone: the
    verdicts use :func:`format_matched`'s matched target."""
    if not table.empty and "target" in table:
        table = table[table["target"].isin(list(TARGETS))]
    if table.empty:
        return pd.DataFrame(columns=["Dataset", "Method", "Setting", "Target", "Definition"])
    t = table.assign(
        cell=[
            _iv(
                r.rename({"ci_low": "speedup_low", "ci_high": "speedup_high"}),
                "speedup",
                suffix="x",
                n=r["n_seeds"],
                pairing=r.get("pairing", ""),
            )
            for _, r in table.iterrows()
        ],
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
    return _order(wide).rename(
        columns={"dataset": "Dataset", "method": "Method", "setting": "Setting", "target": "Target"}
    )


def format_matched(table: pd.DataFrame) -> pd.DataFrame:
    """Readable version of the matched rows of :func:`speedup_table` (:func:`matched_table`): one
    row per dataset x method x setting x baseline x unit: the matched target, the quality gap, the
    per-seed speed-up with its 95 % t-interval over n seeds (and pairing), the ratio of the seed
    means ± SEM (the authors' statistic), the seed-mean curves' times and ratio, and how many runs
    reached the target."""
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
                f"Speed-up per seed ({INTERVAL_NAME})": _iv(
                    r.rename({"ci_low": "speedup_low", "ci_high": "speedup_high"}),
                    "speedup",
                    suffix="x",
                    n=r["n_seeds"],
                    pairing=r["pairing"],
                ),
                "Ratio of seed means ± SEM": _pm(r["ratio_of_means"], r["ratio_sem"], suffix="x"),
                "Seed-mean curves (baseline / method)": (
                    f"{_num(r['curve_speedup'], 2, 'x')} ({_num(r['curve_base'], digits)} / "
                    f"{_num(r['curve_method'], digits)})"
                ),
                "Reached (method, baseline)": (
                    f"{int(r['method_reached'])}/{int(r['method_seeds'])}, {int(r['base_reached'])}/{int(r['base_seeds'])}"
                ),
                "Resized seeds": f"{int(r['method_resized'])}/{int(r['method_seeds'])}",
            }
        )
    return pd.DataFrame(rows)


def format_sensitivity(table: pd.DataFrame) -> pd.DataFrame:
    """Readable version of :func:`sensitivity_table`."""
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
            f"Acc. change vs SGD small (pp, {INTERVAL_NAME})": _iv(r, "acc_change_pp", suffix=" pp"),
        }
        for u in UNITS:
            row[f"Speed-up vs SGD small ({UNIT_LABELS[u]}; own target, {INTERVAL_NAME})"] = _iv(
                r, f"speedup_{u}", suffix="x"
            )
        rows.append(row)
    return pd.DataFrame(rows)


def _tex_escape(text: str) -> str:
    table = {
        "\\": r"\textbackslash{}",
        "&": r"\&",
        "%": r"\%",
        "$": r"\$",
        "#": r"\#",
        "_": r"\_",
        "{": r"\{",
        "}": r"\}",
        "~": r"\textasciitilde{}",
        "^": r"\textasciicircum{}",
        "|": r"\textbar{}",
    }
    return "".join(table.get(ch, ch) for ch in text)


def write_table(
    numeric: pd.DataFrame, display: pd.DataFrame, stem: str | Path, provenance: str, title: str
) -> list[Path]:
    """Write ``stem.csv`` (numeric, plus a ``provenance`` column), ``stem.md`` and ``stem.tex``
    (formatted; title and provenance as heading/caption and footer).

    Returns:
        The three paths.
    """
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_suffix(s) for s in (".csv", ".md", ".tex")]
    numeric.assign(provenance=provenance).to_csv(paths[0], index=False, float_format="%.6g")
    md = display.to_markdown(index=False) if len(display) else "(no rows)"
    paths[1].write_text(f"# {title}\n\n{md}\n\nProvenance: `{provenance}`\n")
    styler = display.style.format(escape="latex").format_index(escape="latex", axis=1).hide(axis="index")
    tex = styler.to_latex(caption=_tex_escape(f"{title}. {provenance}"), hrules=True, position_float="centering")
    tex = tex.replace("±", r"$\pm$")
    paths[2].write_text(f"% generated by divebatch report; {provenance}\n{tex}")
    return paths


def diversity_table(epochs: pd.DataFrame) -> pd.DataFrame:
    """Every epoch that measured gradient diversity, with the quantities DiveBatch derives from it.

    ``n_delta = n * Delta_hat`` equals ``1 + B_simple``, one plus the simple gradient noise scale of
    McCandlish et al. (2018) (identity in docs/protocol.md, "Gradient diversity");
    ``proposed_batch = delta * n * Delta_hat`` is DiveBatch's unclipped rule and ``rule_batch`` the clipped one
    (:func:`divebatch.method.policies.divebatch_batch_size`), which ``next_batch_size`` should equal.
    n is ``n_train`` (samples seen in the first epoch).

    Returns:
        Columns ``run_id, dataset, method, setting, seed, epoch, grad_diversity, n_train, n_delta,
        b_simple, delta, proposed_batch, rule_batch, batch_size, next_batch_size, max_batch_size``
        (batch sizes in samples; ``next_batch_size`` NaN at a run's last epoch).
    """
    from divebatch.method.policies import divebatch_batch_size  # imports torch; only needed here

    cols = [
        "run_id",
        *GROUP,
        "seed",
        "epoch",
        "grad_diversity",
        "n_train",
        "n_delta",
        "b_simple",
        "delta",
        "proposed_batch",
        "rule_batch",
        "batch_size",
        "next_batch_size",
        "max_batch_size",
    ]
    if epochs.empty:
        return pd.DataFrame(columns=cols)
    ep = epochs.sort_values(["run_id", "epoch"])
    ep = ep.assign(next_batch_size=ep.groupby("run_id")["batch_size"].shift(-1))
    d = ep.dropna(subset=["grad_diversity"]).copy()
    d["n_delta"] = d["n_train"].astype(float) * d["grad_diversity"].astype(float)
    d["b_simple"] = d["n_delta"] - 1
    d["proposed_batch"] = d["delta"].astype(float) * d["n_delta"]
    d["rule_batch"] = [
        divebatch_batch_size(int(b), float(g), int(n), float(dl), int(mx)) if m == "divebatch" else np.nan
        for b, g, n, dl, mx, m in zip(
            d["batch_size"], d["grad_diversity"], d["n_train"], d["delta"], d["max_batch_size"], d["method_name"]
        )
    ]
    return d[cols].reset_index(drop=True)
