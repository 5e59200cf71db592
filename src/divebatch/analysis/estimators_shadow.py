"""The shadow runs of the estimator study: every estimator against Delta(w) at the same weights.

The shadow runs (``shadow.enabled``, :mod:`divebatch.shadow`) write ``shadow.csv`` and
``shadow_subsets.csv``: at each resize point, every estimator's n*Delta and Delta(w) over all n at the
same weights, and the fixed-point estimate's sampling error per subset size. This module reads them
(:func:`read_shadow`) and builds:

* ``estimators_shadow`` (:func:`shadow_table`): per resize point (median over seeds): lr, each
  estimator's n*Delta and its ratio to Delta(w); ``estimators_subsets`` (:func:`subsets_table`);
* ``estimators_bn`` (:func:`bn_table`, :func:`bn_summary`, :func:`bn_report_table`): per seed and
  resize point, n*Delta under the four conventions of the decomposition (eval-mode BatchNorm;
  train-mode convention at frozen weights; the same with augmentation; the authors' epoch estimator)
  and the factors of BatchNorm mode, augmentation and moving iterates in numerator, denominator and
  ratio, with a summary per dataset (docs/diversity.md, "BatchNorm mode, augmentation and moving iterates");
* the figure ``estimators_ratio`` (:func:`plot_ratio`).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import yaml
from omegaconf.errors import OmegaConfBaseException
from scipy import stats

from divebatch import rundir
from divebatch.analysis.collect import dataset_name
from divebatch.analysis.formatting import estimate

SHADOW_ESTIMATES = {"exact": "n_delta_exact", "microbatch": "n_delta_microbatch", "fixed_point": "n_delta_fixed_point"}
# the decomposition (divebatch.shadow, ShadowRecorder.bn_decomposition): convention -> shadow.csv columns
# (n*Delta, numerator = mean per-sample squared norm P, denominator = squared mean gradient ||G||^2)
BN_CONVENTIONS = {
    "eval": ("n_delta_fixed_point", "fixed_point_mean_sq_norm", "fixed_point_mean_grad_sq"),  # (i)
    "train": ("n_delta_train_bn", "train_bn_mean_sq_norm", "train_bn_mean_grad_sq"),  # (ii)
    "train_aug": ("n_delta_train_bn_aug", "train_bn_aug_mean_sq_norm", "train_bn_aug_mean_grad_sq"),  # (iii)
    "epoch": ("n_delta_exact", "exact_mean_sq_norm", "exact_mean_grad_sq"),  # (iv) the authors' epoch estimator
}
# factor -> (from, to): mode = (ii)/(i), augmentation = (iii)/(ii), moving iterates = (iv)/(iii)
BN_FACTORS = {"mode": ("eval", "train"), "augmentation": ("train", "train_aug"), "iterates": ("train_aug", "epoch")}
BN_PARTS = ("num", "den", "ratio")
BN_LEVEL = 0.95  # the summary's t-interval over seeds
BN_SHORT = {"mode": "mode", "augmentation": "aug.", "iterates": "iterates"}  # factor -> its header in the table
STYLES = {"exact": "-", "microbatch": "--", "fixed_point": ":", "fixed_point_train": "-."}
MARKERS = {"exact": "o", "microbatch": "s", "fixed_point": "^", "fixed_point_train": "v"}


def read_shadow(roots, profile: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``shadow.csv`` and ``shadow_subsets.csv`` of every finished shadow run of ``profile`` under
    ``roots``, with ``dataset``, ``seed`` and ``commit`` columns (empty frames when there is none).
    A run whose config cannot be read is left out here (the report's runs table lists it)."""
    rows, subs = [], []
    for _, run_dir in rundir.find_run_dirs([Path(r) for r in roots or []]):
        if not (run_dir / rundir.SHADOW).is_file() or rundir.summary_status(rundir.read_summary(run_dir)) != "finished":
            continue
        try:
            cfg = rundir.read_config(run_dir)
        except (OSError, ValueError, yaml.YAMLError, OmegaConfBaseException):
            continue
        if str(cfg.get("profile")) != profile:
            continue
        manifest = rundir.read_manifest(run_dir) or {}
        keys = {"dataset": dataset_name(cfg), "seed": int(cfg.seed), "commit": manifest.get("commit")}
        rows.append(pd.read_csv(run_dir / rundir.SHADOW).assign(**keys))
        if (run_dir / rundir.SHADOW_SUBSETS).is_file():
            subs.append(pd.read_csv(run_dir / rundir.SHADOW_SUBSETS).assign(**keys))
    return (
        pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(),
        pd.concat(subs, ignore_index=True) if subs else pd.DataFrame(),
    )


def shadow_table(shadow: pd.DataFrame) -> pd.DataFrame:
    """Per dataset and resize point (1-based epoch): median over seeds of lr, Delta(w)'s n*Delta over
    all n, each estimator's n*Delta and its ratio to Delta(w), the split of the exact ratio into
    ``exact_numerator_ratio`` (mean per-sample squared norm, epoch estimator / Delta(w)) times
    ``exact_denominator_ratio`` (squared mean gradient, Delta(w) / epoch estimator) when logged, and
    the fixed-point estimate's cost."""
    s = shadow.copy()
    for est, col in SHADOW_ESTIMATES.items():
        s[f"ratio_{est}"] = s[col] / s["n_delta_full"]
    s["epoch"] = s["epoch"] + 1
    if {"exact_mean_sq_norm", "full_mean_sq_norm"} <= set(s.columns):  # exact / Delta(w) = numerator x denominator part
        s["exact_numerator_ratio"] = s["exact_mean_sq_norm"] / s["full_mean_sq_norm"]
        s["exact_denominator_ratio"] = s["full_mean_grad_sq"] / s["exact_mean_grad_sq"]
    cols = [
        "lr",
        "n_delta_full",
        *SHADOW_ESTIMATES.values(),
        *(f"ratio_{e}" for e in SHADOW_ESTIMATES),
        *[c for c in ("exact_numerator_ratio", "exact_denominator_ratio") if c in s],
        "fixed_point_samples",
        "fixed_point_s",
        "full_pass_s",
        "measured_epoch_s",
    ]
    out = s.groupby(["dataset", "epoch"])[cols].median().reset_index()
    out.insert(2, "seeds", s.groupby(["dataset", "epoch"])["seed"].nunique().to_numpy())
    return out


def subsets_table(subsets: pd.DataFrame) -> pd.DataFrame:
    """Fixed-point sampling error per dataset and subset size: median and maximum over resize points and
    seeds of the relative sd and of the 90th-percentile relative error, share of unresolved draws."""
    g = subsets.groupby(["dataset", "subset_samples"])
    return g.agg(
        points=("rel_sd", "size"),
        rel_bias_median=("rel_bias", "median"),
        rel_sd_median=("rel_sd", "median"),
        rel_sd_max=("rel_sd", "max"),
        rel_p90_abs_err_median=("rel_p90_abs_err", "median"),
        rel_p90_abs_err_max=("rel_p90_abs_err", "max"),
        share_inf_max=("share_inf", "max"),
    ).reset_index()


def bn_table(shadow: pd.DataFrame) -> pd.DataFrame:
    """The decomposition of the epoch estimator's excess over the fixed-point estimate, per seed and point.

    Per dataset, seed and resize point (1-based ``epoch``): ``n_delta_<c>`` for the conventions c of
    :data:`BN_CONVENTIONS` ((i) ``eval``, (ii) ``train``, (iii) ``train_aug``, (iv) ``epoch``), and for each
    factor f of :data:`BN_FACTORS` (``mode`` = (ii)/(i), ``augmentation`` = (iii)/(ii), ``iterates`` =
    (iv)/(iii)) from convention a to b:

    * ``f_num`` = P_b / P_a (numerator: mean per-sample squared norm);
    * ``f_den`` = ||G||^2_a / ||G||^2_b (denominator: squared mean gradient, inverted so that it is the
      factor the denominator's change contributes to n*Delta; > 1 when the mean gradient shrank);
    * ``f_ratio`` = n*Delta_b / n*Delta_a = ``f_num * f_den``,

    and ``total_ratio`` = (iv)/(i) = the product of the three ratios (n*Delta = P / ||G||^2 for every
    convention: docs/protocol.md, "Gradient diversity"). Files written before the decomposition lack its
    columns: they read as NaN and so do their factors.

    Args:
        shadow: rows of ``shadow.csv`` with ``dataset`` and ``seed`` (:func:`read_shadow`).
    Returns:
        one row per (dataset, seed, epoch), sorted; dimensionless ratios, n*Delta in samples.
    """
    cols = {c for trio in BN_CONVENTIONS.values() for c in trio}
    s = shadow.reindex(columns=[*shadow.columns, *sorted(cols - set(shadow.columns))])
    out = s[["dataset", "seed", "epoch", "lr"]].copy()
    out["epoch"] = out["epoch"] + 1
    for conv, (nd, _, _) in BN_CONVENTIONS.items():
        out[f"n_delta_{conv}"] = s[nd].astype(float)
    for f, (a, b) in BN_FACTORS.items():
        (nd_a, num_a, den_a), (nd_b, num_b, den_b) = BN_CONVENTIONS[a], BN_CONVENTIONS[b]
        out[f"{f}_num"] = s[num_b] / s[num_a]
        out[f"{f}_den"] = s[den_a] / s[den_b]
        out[f"{f}_ratio"] = s[nd_b] / s[nd_a]
    out["total_ratio"] = out["n_delta_epoch"] / out["n_delta_eval"]
    return out.sort_values(["dataset", "seed", "epoch"], kind="stable").reset_index(drop=True)


def bn_factor_labels() -> dict[str, str]:
    """The factor columns of :func:`bn_table` in display order -> their headers in the display table."""
    out = {f"{f}_{part}": f"{BN_SHORT[f]} {part}" for f in BN_FACTORS for part in BN_PARTS}
    return {**out, "total_ratio": "total (iv)/(i)"}


def bn_factor_columns() -> list[str]:
    """The factor columns of :func:`bn_table` in display order."""
    return list(bn_factor_labels())


def bn_summary(t: pd.DataFrame, level: float = BN_LEVEL) -> pd.DataFrame:
    """Per dataset and factor column of :func:`bn_table`: the geometric mean over every seed and point,
    and a ``level`` t-interval over seeds on the log-factors.

    Each seed contributes the mean of its log-factors over its points; the interval is
    mean +- t_{(1+level)/2, n-1} sd / sqrt(n) over the n seeds (``scipy.stats.t``), exponentiated. Points
    whose factor is not finite and positive (unmeasured; an unresolved mean gradient) are left out.

    Returns:
        columns ``dataset, factor, geo_mean, low, high, n_seeds, n_points``; ``low``/``high`` NaN when
        n_seeds < 2 (no interval from one seed).
    """
    rows = []
    for dataset, g in t.groupby("dataset", sort=True):
        for col in bn_factor_columns():
            v = g[col].astype(float)
            ok = np.isfinite(v) & (v > 0)
            logs = np.log(v[ok])
            per_seed = logs.groupby(g.loc[ok, "seed"]).mean()
            n = len(per_seed)
            low = high = np.nan
            if n >= 2:
                half = stats.t.ppf((1 + level) / 2, n - 1) * per_seed.std(ddof=1) / np.sqrt(n)
                low, high = np.exp(per_seed.mean() - half), np.exp(per_seed.mean() + half)
            rows.append(
                {
                    "dataset": dataset,
                    "factor": col,
                    "geo_mean": float(np.exp(logs.mean())) if len(logs) else np.nan,
                    "low": low,
                    "high": high,
                    "n_seeds": n,
                    "n_points": int(ok.sum()),
                }
            )
    return pd.DataFrame(rows, columns=["dataset", "factor", "geo_mean", "low", "high", "n_seeds", "n_points"])


def bn_report_table(
    t: pd.DataFrame, summary: pd.DataFrame, level: float = BN_LEVEL
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Numeric and display forms of the ``estimators_bn`` table: the points of :func:`bn_table`, then per
    dataset one summary line (``row`` = ``summary``: geometric mean over seeds and points, the factor
    columns' ``<col>_low`` / ``<col>_high`` the t-interval over seeds of :func:`bn_summary`)."""
    numeric = [t.assign(row="point")]
    for dataset, sm in summary.groupby("dataset", sort=True):
        line = {"dataset": dataset, "row": "summary", "seed": np.nan, "epoch": np.nan}
        for _, r in sm.iterrows():
            line.update({r["factor"]: r["geo_mean"], f"{r['factor']}_low": r["low"], f"{r['factor']}_high": r["high"]})
        line.update(n_seeds=int(sm["n_seeds"].max()), n_points=int(sm["n_points"].max()))
        numeric.append(pd.DataFrame([line]))
    num = pd.concat(numeric, ignore_index=True)

    def g3(v):
        return "" if pd.isna(v) else f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.3g}"

    def seed_cell(r):
        if r["row"] != "summary":
            return f"{int(r['seed'])}"
        n, points = int(r["n_seeds"]), int(r["n_points"])
        if n < 2:
            return f"geo. mean over n={n} seed ({points} points; no interval from one seed)"
        return f"geo. mean, {level:.0%} t-interval over n={n} seeds ({points} points)"

    disp = {
        "dataset": num["dataset"],
        "seed": [seed_cell(r) for _, r in num.iterrows()],
        "epoch": num["epoch"].map(lambda v: "" if pd.isna(v) else f"{int(v)}"),
        "n·Δ (i) eval BN": num["n_delta_eval"].map(g3),
        "(ii) train BN": num["n_delta_train"].map(g3),
        "(iii) + aug.": num["n_delta_train_aug"].map(g3),
        "(iv) epoch est.": num["n_delta_epoch"].map(g3),
    }
    for col, label in bn_factor_labels().items():

        def cell(r, col=col):
            if r["row"] != "summary":
                return g3(r[col])
            return estimate(
                r[col], low=r.get(f"{col}_low", np.nan), high=r.get(f"{col}_high", np.nan), spec=g3, missing=""
            )

        disp[label] = [cell(r) for _, r in num.iterrows()]
    return num, pd.DataFrame(disp)


# ----------------------------------------------------------------------------- figure


def plot_ratio(shadow: pd.DataFrame) -> plt.Figure:
    """Estimate / Delta(w) at the same weights, against the epoch and against the lr (every seed a point,
    the median a line)."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for est, col in SHADOW_ESTIMATES.items():
        r = shadow[col] / shadow["n_delta_full"]
        med = r.groupby(shadow["epoch"]).median()
        axes[0].plot(med.index + 1, med.values, STYLES[est], marker=MARKERS[est], label=est)
        axes[0].scatter(shadow["epoch"] + 1, r, s=10, alpha=0.4, marker=MARKERS[est])
        axes[1].scatter(shadow["lr"], r, s=14, marker=MARKERS[est], label=est)
    for ax in axes:
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_yscale("log")
    axes[0].set(
        xlabel="epoch (resize point)",
        ylabel="estimate / n·Δ(w) over all n (same weights)",
        title="Each estimator against Δ(w), shadow SGD run",
    )
    axes[1].set(xlabel="learning rate in the measured epoch", title="... against the learning rate")
    axes[0].legend(fontsize=8)
    return fig
