"""Paper tables: the main table per group, gradient diversity per epoch, hyperparameter sensitivity.

Every builder takes the tidy per-epoch table of :class:`divebatch.analysis.collect.RunSet`
(``RunSet.epochs``, complete runs only) and returns a numeric DataFrame;
:func:`divebatch.analysis.display.write_table` writes it as CSV (numeric, with a ``provenance``
column) and as Markdown and LaTeX. Definitions of time to target, the matched target, speed-up and
the t-intervals over seeds: :mod:`divebatch.analysis.stats`; the comparisons with the baselines:
:mod:`divebatch.analysis.comparisons`; the speed-up tables: :mod:`divebatch.analysis.speedups`.

The readable forms (``format_main``, ``format_speedups``, ``format_sensitivity``), ``write_table``,
``MATCHED`` and ``target_ladder`` stay importable from here (notebooks and figures import them).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from divebatch.analysis.collect import GROUP
from divebatch.analysis.comparisons import ACC_CHANGE, AUTHORS_SPEEDUP, COLUMNS, METRIC_GAIN, comparison_table, widen
from divebatch.analysis.display import format_main, format_matched, format_sensitivity, format_speedups, write_table
from divebatch.analysis.groups import (
    authors_table,
    baseline_groups,
    diverged_seeds,
    group_protocol,
    order_rows,
    run_table,
    seeds_text,
)
from divebatch.analysis.speedups import MATCHED, TARGETS, speedup_table, target_ladder
from divebatch.analysis.stats import (
    NAN_INTERVAL,
    UNITS,
    accuracy_change,
    compare_groups,
    metric_of,
    metric_sign,
    speedup,
)
from divebatch.methods import SGD_SMALL

__all__ = [
    "MATCHED",
    "SENSITIVITY_HPARAMS",
    "diversity_table",
    "format_main",
    "format_matched",
    "format_sensitivity",
    "format_speedups",
    "has_sweep",
    "main_table",
    "sensitivity_table",
    "speedup_table",
    "target_ladder",
    "write_table",
]
SENSITIVITY_HPARAMS = ("delta", "resize_freq", "max_batch_size")


def main_table(
    epochs: pd.DataFrame, runs: pd.DataFrame | None = None, comparisons: pd.DataFrame | None = None
) -> pd.DataFrame:
    """One row per dataset x method (x setting): accuracy, accuracy change, time to target.

    Args:
        epochs: tidy per-epoch table (``RunSet.epochs``, complete runs).
        runs: ``RunSet.runs``, to count diverged runs per group (a group whose every run diverged
            gets a row with ``n_seeds`` 0 and NaN numbers); None: no ``diverged`` count (0).
        comparisons: :func:`divebatch.analysis.comparisons.comparison_table` of ``epochs``
            (computed when None).
    Returns:
        Numeric columns: ``protocol`` (``authors_code`` | ``clean`` | None, from config.yaml);
        ``n_seeds``, ``seeds`` (complete runs used); ``diverged`` (seeds whose run diverged,
        left out of every number) and ``diverged_seeds``; ``final_acc_mean/std``,
        ``best_acc_mean/std`` (percent, std over seeds with ddof=1); ``acc_at_25pct_mean/std``
        (percent, validation accuracy after the first quarter of the planned epochs E, i.e. at
        0-based epoch ceil(0.25 E) - 1); ``peak_memory_mb_mean`` (MB: max over epochs per run, mean
        over seeds; CUDA allocator peak on GPU, peak RSS of the process on CPU);
        ``final_acc_sem`` (SEM over seeds, the authors' statistic); ``resized_seeds`` (seeds whose
        batch size changed at least once); ``final_batch_size_mean`` (samples); the comparisons
        with each baseline role, wide (:func:`divebatch.analysis.comparisons.column` names them):
        the accuracy change (pp, 95 % t-interval over seeds, paired by seed when the groups share
        seeds, Welch otherwise, with its SEM, n and pairing); the primary metric (``metric``,
        ``metric_within``, ``metric_direction``, ``final_metric_mean/std``, ``best_metric_mean/std``)
        and its gain with interval; the authors' definition on the seed-mean curve
        (:func:`~divebatch.analysis.groups.authors_table`): ``authors_target`` (percent),
        ``authors_epochs``, ``authors_optimizer_steps``, ``authors_train_time_s`` (training seconds)
        and the authors' speed-up per role and unit (baseline's value / this group's, no interval);
        ``common_target`` (percent); for target in (own, common) and unit in (epochs,
        optimizer_steps, wall_time_s): ``<target>_<unit>_mean/std`` and ``common_reached``
        (runs that reached the common target).
    """
    runs_found = runs
    runs = run_table(epochs)
    diverged = diverged_seeds(runs_found)
    if runs.empty and not diverged:
        return pd.DataFrame(columns=GROUP)
    if comparisons is None:
        comparisons = comparison_table(epochs, runs)
    authors = authors_table(epochs).set_index(GROUP)
    groups = dict(list(runs.groupby(GROUP, sort=False))) if len(runs) else {}
    # every run of this group diverged: a row that says so
    rows = [_diverged_row(runs_found, key, seeds) for key, seeds in diverged.items() if key not in groups]
    compared = dict(list(comparisons.groupby(GROUP, sort=False))) if len(comparisons) else {}
    none = pd.DataFrame(columns=COLUMNS)
    for key, g in groups.items():
        rows.append(_group_row(key, g, diverged.get(key, []), compared.get(key, none), authors.loc[key]))
    return order_rows(pd.DataFrame(rows))


def _diverged_row(runs: pd.DataFrame, key: tuple, seeds: list[int]) -> dict:
    return {
        **dict(zip(GROUP, key)),
        "protocol": group_protocol(runs, key),
        "n_seeds": 0,
        "seeds": "",
        "diverged": len(seeds),
        "diverged_seeds": seeds_text(seeds),
    }


def _group_row(key: tuple, g: pd.DataFrame, diverged: list[int], compared: pd.DataFrame, authors: pd.Series) -> dict:
    """One main-table row: the group's runs ``g`` (run table), its diverged seeds, its rows of the
    comparisons' long table and its authors' time to target."""
    row = dict(
        zip(GROUP, key),
        protocol=g["protocol"].iloc[0] if "protocol" in g else None,
        n_seeds=len(g),
        seeds=seeds_text(g["seed"]),
        diverged=len(diverged),
        diverged_seeds=seeds_text(diverged),
    )
    for col in ("final_acc", "best_acc", "acc_at_25pct"):
        row[f"{col}_mean"], row[f"{col}_std"] = g[col].mean(), g[col].std(ddof=1)
    row["peak_memory_mb_mean"] = g["peak_memory_mb"].mean()
    row["final_batch_size_mean"] = g["final_batch_size"].mean()
    row["final_acc_sem"] = row["final_acc_std"] / np.sqrt(len(g)) if len(g) > 1 else np.nan
    row["resized_seeds"] = int(g["resized"].sum()) if "resized" in g else len(g)
    row.update(widen(compared, ACC_CHANGE))
    # the primary metric (stats module docstring): its mean, and its gain (> 0 better) per baseline
    first = g.iloc[0]
    row["model"], row["optimizer"] = first.get("model"), first.get("optimizer")
    row["metric"], _, row["metric_within"] = metric_of(first)
    row["metric_direction"] = "higher" if metric_sign(first) > 0 else "lower"
    for col in ("final_metric", "best_metric"):
        row[f"{col}_mean"], row[f"{col}_std"] = g[col].mean(), g[col].std(ddof=1)
    row.update(widen(compared, METRIC_GAIN))
    row.update(authors.to_dict())
    row.update(widen(compared, AUTHORS_SPEEDUP))
    row["common_target"] = g["common_target"].iloc[0]
    for target in TARGETS:
        for u in UNITS:
            row[f"{target}_{u}_mean"] = g[f"{target}_{u}"].mean()
            row[f"{target}_{u}_std"] = g[f"{target}_{u}"].std(ddof=1)
    row["common_reached"] = int(g["common_epochs"].notna().sum())
    return row


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
