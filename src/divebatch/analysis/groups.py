"""Runs and groups: the per-run table, the baseline groups, the authors' time per group.

A *group* is one dataset x method x setting (:data:`divebatch.analysis.collect.GROUP`); its runs
are its seeds. A *baseline role* (:data:`BASELINES`) is what a group is compared with: small-batch
SGD, AdaBatch, small-batch AdamW. Every table of :mod:`divebatch.analysis` starts from these.
"""

from __future__ import annotations

import pandas as pd

from divebatch.analysis.collect import ALL_HPARAMS, GROUP
from divebatch.analysis.stats import AUTHORS_UNITS, authors_time_to_target, metric_of, per_run
from divebatch.analysis.style import METHOD_ORDER
from divebatch.methods import ADABATCH, ADABATCH_RESCALE, ADAMW_SMALL, SGD_SMALL

# Baseline role -> methods that can play it, in order of preference. "AdaBatch" prefers the plain
# variant (claim 2 of docs/protocol.md compares against AdaBatch); with only the rescaled one, that one is used.
# "AdamW (small batch)" is the baseline of the AdamW runs (transformer profile); roles absent from
# the runs add no column.
BASELINES = {SGD_SMALL: (SGD_SMALL,), ADABATCH: (ADABATCH, ADABATCH_RESCALE), ADAMW_SMALL: (ADAMW_SMALL,)}
# role -> its short name in the main table's CSV columns (divebatch.analysis.comparisons.column)
BASELINE_SLUG = {SGD_SMALL: "sgd_small", ADABATCH: "adabatch", ADAMW_SMALL: "adamw_small"}
SLUG_ROLE = {slug: role for role, slug in BASELINE_SLUG.items()}


def order_rows(df: pd.DataFrame) -> pd.DataFrame:
    """Rows sorted by dataset, then methods in :data:`~divebatch.analysis.style.METHOD_ORDER`, then setting."""
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


def baseline_name(base: tuple) -> str:
    """A baseline group as the speed-up tables name it: ``method (setting)``, or the method alone."""
    return base[1] + (f" ({base[2]})" if base[2] else "")


def present_roles(bases: dict) -> list[str]:
    """The roles of :data:`BASELINES` that some dataset has; SGD small and AdaBatch always (the
    paper's baselines keep their columns, NaN when absent)."""
    have = {role for _, role in bases}
    return [r for r in BASELINES if r in have or r in (SGD_SMALL, ADABATCH)]


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


def diverged_seeds(runs: pd.DataFrame | None) -> dict[tuple, list[int]]:
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


def seeds_text(seeds) -> str:
    """Seeds as the tables list them: ``1,2,3`` (sorted)."""
    return ",".join(map(str, sorted(int(s) for s in seeds)))


def group_protocol(runs: pd.DataFrame, key: tuple):
    """The ``protocol`` of a group's runs in ``RunSet.runs`` (None when it has none)."""
    g = runs[(runs["dataset"] == key[0]) & (runs["method"] == key[1]) & (runs["setting"] == key[2])]
    return g["protocol"].iloc[0] if "protocol" in g and len(g) else None
