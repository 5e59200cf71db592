"""The estimator study: how much of DiveBatch's behaviour comes from the gradient-diversity estimator
(docs/diversity.md, "Estimator study").

Inputs: the DiveBatch runs of a profile with ``method.diversity_estimator`` = ``exact`` (the authors'
epoch estimator, the default), ``microbatch`` or ``fixed_point`` (Delta(w) at the epoch's final
weights), which the main table keeps apart as settings; and the shadow runs (``shadow.enabled``,
:mod:`divebatch.shadow`), whose ``shadow.csv`` / ``shadow_subsets.csv`` hold every estimator and
Delta(w) at the same weights at each resize point. Outputs (written by :func:`write`):

* ``estimators`` table: per dataset, DiveBatch variant and estimator: final accuracy, its change
  against small-batch SGD, the speed-up in optimizer steps, the first decision's batch size;
* ``estimators_shadow`` table: per resize point (median over seeds): lr, each estimator's n*Delta
  and its ratio to Delta(w); ``estimators_subsets``: the fixed-point sampling error per subset size;
* ``estimators_bn`` table (:func:`bn_table`, :func:`bn_summary`): per seed and resize point, n*Delta under
  the four conventions of the decomposition (eval-mode BatchNorm; train-mode convention at frozen weights;
  the same with augmentation; the authors' epoch estimator) and the factors of BatchNorm mode,
  augmentation and moving iterates in numerator, denominator and ratio, with a summary per dataset;
* figures ``estimators_ratio`` (estimate / Delta(w) against epoch and lr), ``estimators_schedules``
  (batch size per epoch per estimator) and ``estimators_tradeoff`` (speed-up against accuracy change);
* the claims row of :func:`estimator_claim`.

Shadow runs are kept out of every other table (:func:`divebatch.analysis.collect` excludes them).
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
from divebatch.analysis.collect import agreed_commit, dataset_name
from divebatch.analysis.style import METHOD_PALETTE
from divebatch.choices import CHOICES
from divebatch.methods import ADABATCH, ADABATCH_RESCALE, DIVEBATCH_VARIANTS, SGD_SMALL
from divebatch.provenance import label

AUTHORS_ESTIMATOR = "exact"  # method.diversity_estimator of the paper (the default everywhere it is replicated)
ESTIMATORS = CHOICES["method.diversity_estimator"]  # display order: the registry's names (divebatch.choices)
SHADOW_ESTIMATES = {"exact": "n_delta_exact", "microbatch": "n_delta_microbatch", "fixed_point": "n_delta_fixed_point"}
RECOVERED_SHARE = 0.5  # the claim row: a fixed-point arm recovers at least this share of the loss
# a fixed-point arm is evidence only when its batch grew: mean final batch size >= this x small-batch SGD's.
# An arm that never resized trains as small-batch SGD (same seed, same batches: the same run), so it
# "recovers" the whole loss whatever the estimator is worth.
GROWN_FACTOR = 2.0
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
ESTIMATOR_RULE = (
    f"per DiveBatch variant whose authors'-estimator runs lose accuracy against small-batch SGD (95 % t-interval "
    f"over n seeds below 0), the evidence is the fixed-point arms (any delta) whose batch grew (resized in some seed "
    f"and mean final batch >= {GROWN_FACTOR:g} x small-batch SGD's; an arm that never resized is small-batch SGD, "
    f"not evidence); holds when some evidence arm recovers at least {RECOVERED_SHARE:.0%} of the loss (mean final "
    f"accuracies) in every such variant; does not hold when every evidence arm of a variant recovers less; not "
    f"measured without a significant loss or without an arm that grew"
)
STYLES = {"exact": "-", "microbatch": "--", "fixed_point": ":", "fixed_point_train": "-."}
MARKERS = {"exact": "o", "microbatch": "s", "fixed_point": "^", "fixed_point_train": "v"}


def estimator_of(setting: str) -> str:
    """The ``diversity_estimator`` a main-table setting label names (:data:`AUTHORS_ESTIMATOR` when it
    names none: a dataset with one estimator has no such key in its labels)."""
    for part in str(setting or "").split(", "):
        key, _, value = part.partition("=")
        if key == "diversity_estimator":
            return value
    return AUTHORS_ESTIMATOR


def authors_rows(table: pd.DataFrame) -> pd.DataFrame:
    """Rows of a main or speed-up table that use the authors' estimator (or no estimator): what the
    paper's claims are judged on; the other estimators are the study's."""
    if table.empty or "setting" not in table:
        return table
    # exact_func is the authors' epoch estimator with torch.func norms (models BackPACK does not cover)
    return table[table["setting"].map(estimator_of).isin((AUTHORS_ESTIMATOR, "exact_func"))].reset_index(drop=True)


def _divebatch(main: pd.DataFrame) -> pd.DataFrame:
    d = main[main["method"].isin(DIVEBATCH_VARIANTS)].copy()
    d["estimator"] = d["setting"].map(estimator_of)
    return d


def has_study(main: pd.DataFrame) -> bool:
    """Whether the main table holds DiveBatch runs under more than one estimator."""
    d = _divebatch(main) if len(main) else pd.DataFrame()
    return bool(len(d)) and d["estimator"].nunique() > 1


def estimator_claim(main: pd.DataFrame) -> tuple[str, str]:
    """Verdict and numbers of the claims row (:data:`ESTIMATOR_RULE`).

    Args:
        main: :func:`divebatch.analysis.tables.main_table` with DiveBatch settings per estimator
            (any number of fixed-point settings, e.g. a delta sweep) and small-batch SGD.
    Returns:
        (``holds`` | ``does not hold`` | ``not measured at this scale``, the numbers in words).
    """
    from divebatch.analysis.claims import FAILS, HOLDS, NOT_MEASURED

    d = _divebatch(main)
    parts, verdicts = [], []
    for dataset in sorted(d["dataset"].unique()):
        sgd = main[(main["dataset"] == dataset) & (main["method"] == SGD_SMALL)]
        if sgd.empty:
            continue
        small = float(sgd["final_batch_size_mean"].min())
        for method in DIVEBATCH_VARIANTS:
            g = d[(d["dataset"] == dataset) & (d["method"] == method)]
            ex, fps = g[g["estimator"] == AUTHORS_ESTIMATOR], g[g["estimator"] == "fixed_point"]
            if ex.empty or fps.empty:
                continue
            ex = ex.iloc[0]
            loss = -float(ex["acc_change_vs_sgd_small_pp"])
            significant = float(ex["acc_change_vs_sgd_small_pp_high"]) < 0
            arms, shares = [], []
            for _, fp in fps.iterrows():
                resized = fp.get("resized_seeds", np.nan)
                never_resized = pd.notna(resized) and int(resized) == 0
                grew = not never_resized and float(fp["final_batch_size_mean"]) >= GROWN_FACTOR * small
                share = (float(fp["final_acc_mean"]) - float(ex["final_acc_mean"])) / loss if loss > 0 else np.nan
                if grew:
                    shares.append(share)
                recovered = f", recovers {share:.0%}" if np.isfinite(share) else ""
                arms.append(
                    f"{fp['setting'] or 'fixed point'}: final batch {fp['final_batch_size_mean']:.0f}, "
                    f"{fp['acc_change_vs_sgd_small_pp']:+.1f} pp{recovered}"
                    + (
                        " - not evidence: the batch never resized"
                        if never_resized
                        else ("" if grew else " (never grew: not evidence)")
                    )
                )
            parts.append(
                f"{dataset}, {method}: authors' estimator {ex['acc_change_vs_sgd_small_pp']:+.1f} pp vs small-batch "
                f"SGD [{ex['acc_change_vs_sgd_small_pp_low']:+.1f}, {ex['acc_change_vs_sgd_small_pp_high']:+.1f}]"
                + ("" if significant else " (no significant loss)")
                + "; "
                + "; ".join(arms)
            )
            if significant and shares:
                verdicts.append(max(shares) >= RECOVERED_SHARE)
    if not verdicts:
        return NOT_MEASURED, "; ".join(parts) or "no DiveBatch run with the fixed-point estimator"
    return (HOLDS if all(verdicts) else FAILS), "; ".join(parts)


def first_decisions(epochs: pd.DataFrame) -> pd.DataFrame:
    """Per DiveBatch run: the batch size after its first resize decision and n*Delta_hat there.

    Returns:
        columns ``dataset, method, setting, estimator, seed, first_decision_epoch`` (1-based),
        ``n_delta_at_first``, ``first_batch_size`` (samples), ``final_batch_size``.
    """
    rows = []
    for _run_id, m in epochs[epochs["method"].isin(DIVEBATCH_VARIANTS)].groupby("run_id", sort=False):
        m = m.sort_values("epoch")
        measured = m[m["grad_diversity"].notna()]
        last = m.iloc[-1]
        row = {
            "dataset": last["dataset"],
            "method": last["method"],
            "setting": last["setting"],
            "estimator": estimator_of(last["setting"]),
            "seed": int(last["seed"]),
            "first_decision_epoch": np.nan,
            "n_delta_at_first": np.nan,
            "first_batch_size": np.nan,
            "final_batch_size": float(last["batch_size"]),
        }
        if len(measured):
            first = measured.iloc[0]
            after = m[m["epoch"] > first["epoch"]]
            row.update(
                first_decision_epoch=int(first["epoch"]) + 1,
                n_delta_at_first=float(first["grad_diversity"]) * float(last["n_train"]),
                first_batch_size=float(after["batch_size"].iloc[0]) if len(after) else np.nan,
            )
        rows.append(row)
    return pd.DataFrame(rows)


def estimator_table(main: pd.DataFrame, speedups: pd.DataFrame, epochs: pd.DataFrame) -> pd.DataFrame:
    """Per dataset, DiveBatch variant and estimator (plus small-batch SGD and AdaBatch for reference):
    final accuracy (mean, sd), change against small-batch SGD (pp, 95 % t-interval over n seeds), speed-up in
    optimizer steps against small-batch SGD at the matched target (own target when the speed-up table has
    no matched rows; 95 % t-interval), seeds that resized, first decision's batch size and
    n*Delta_hat there (mean over seeds), final batch size."""
    cols = [
        "dataset",
        "method",
        "setting",
        "n_seeds",
        "final_acc_mean",
        "final_acc_std",
        "acc_change_vs_sgd_small_pp",
        "acc_change_vs_sgd_small_pp_low",
        "acc_change_vs_sgd_small_pp_high",
        "final_batch_size_mean",
        "resized_seeds",
    ]
    keep = main["method"].isin((*DIVEBATCH_VARIANTS, SGD_SMALL, ADABATCH, ADABATCH_RESCALE))
    t = main.loc[keep, [c for c in cols if c in main]].copy()
    t.insert(
        2, "estimator", [estimator_of(s) if m in DIVEBATCH_VARIANTS else "-" for m, s in zip(t["method"], t["setting"])]
    )
    # at the matched target (the verdicts' target) where the speed-up table has it, else the own target
    target = "matched" if len(speedups) and (speedups["target"] == "matched").any() else "own"
    sp = (
        speedups[
            (speedups["baseline"] == SGD_SMALL)
            & (speedups["unit"] == "optimizer_steps")
            & (speedups["target"] == target)
        ]
        if len(speedups)
        else speedups
    )
    if len(sp):
        sp = sp[["dataset", "method", "setting", "speedup", "ci_low", "ci_high"]].rename(
            columns={
                "speedup": "steps_speedup_vs_sgd_small",
                "ci_low": "steps_speedup_vs_sgd_small_low",
                "ci_high": "steps_speedup_vs_sgd_small_high",
            }
        )
        t = t.merge(sp, on=["dataset", "method", "setting"], how="left")
    first = first_decisions(epochs)
    if len(first):
        agg = (
            first.groupby(["dataset", "method", "setting"])
            .agg(first_batch_size_mean=("first_batch_size", "mean"), n_delta_at_first_mean=("n_delta_at_first", "mean"))
            .reset_index()
        )
        t = t.merge(agg, on=["dataset", "method", "setting"], how="left")
    order = {e: i for i, e in enumerate(("-", *ESTIMATORS))}
    return (
        t.assign(_e=t["estimator"].map(order))
        .sort_values(["dataset", "method", "_e"], kind="stable")
        .drop(columns="_e")
        .reset_index(drop=True)
    )


def format_estimator_table(t: pd.DataFrame) -> pd.DataFrame:
    def iv(r, col, fmt):
        if col not in r or pd.isna(r[col]):
            return ""
        return f"{fmt.format(r[col])} [{fmt.format(r[col + '_low'])}, {fmt.format(r[col + '_high'])}]"

    return pd.DataFrame(
        {
            "dataset": t["dataset"],
            "method": t["method"],
            "estimator": t["estimator"],
            "final acc. (%)": [f"{m:.1f} ± {s:.1f}" for m, s in zip(t["final_acc_mean"], t["final_acc_std"])],
            "vs SGD small (pp)": [iv(r, "acc_change_vs_sgd_small_pp", "{:+.1f}") for _, r in t.iterrows()],
            "speed-up, optimizer steps vs SGD small (matched target, 95 % t-interval)": [
                iv(r, "steps_speedup_vs_sgd_small", "{:.2f}") for _, r in t.iterrows()
            ],
            "n·Δ_hat at 1st decision": t.get("n_delta_at_first_mean", pd.Series(np.nan, index=t.index)).map(
                lambda v: "" if pd.isna(v) else f"{v:.4g}"
            ),
            "batch after 1st decision": t.get("first_batch_size_mean", pd.Series(np.nan, index=t.index)).map(
                lambda v: "" if pd.isna(v) else f"{v:.0f}"
            ),
            "final batch": t["final_batch_size_mean"].map(lambda v: f"{v:.0f}"),
            "resized seeds": [
                f"{int(r['resized_seeds'])}/{int(r['n_seeds'])}" if pd.notna(r.get("resized_seeds")) else ""
                for _, r in t.iterrows()
            ],
        }
    )


# ----------------------------------------------------------------------------- shadow runs


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


def bn_factor_columns() -> list[str]:
    """The factor columns of :func:`bn_table` in display order."""
    return [f"{f}_{part}" for f in BN_FACTORS for part in BN_PARTS] + ["total_ratio"]


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
    factors = bn_factor_columns()
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
    names = {"mode": "mode", "augmentation": "aug.", "iterates": "iterates", "total": "total"}
    for col in factors:
        f, _, part = col.rpartition("_")
        label = f"{names[f]} {part}" if f != "total" else "total (iv)/(i)"

        def cell(r, col=col):
            v = r[col]
            if r["row"] != "summary" or pd.isna(r.get(f"{col}_low", np.nan)):
                return g3(v)
            return f"{g3(v)} [{g3(r[col + '_low'])}, {g3(r[col + '_high'])}]"

        disp[label] = [cell(r) for _, r in num.iterrows()]
    return num, pd.DataFrame(disp)


# ----------------------------------------------------------------------------- figures


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


def plot_schedules(epochs: pd.DataFrame) -> plt.Figure:
    """DiveBatch's batch size per epoch (median over seeds), one line per estimator and variant."""
    d = epochs[epochs["method"].isin(DIVEBATCH_VARIANTS)].copy()
    d["estimator"] = d["setting"].map(estimator_of)
    datasets = sorted(d["dataset"].unique()) or [""]
    fig, axes = plt.subplots(1, len(datasets), figsize=(5.5 * len(datasets), 4), squeeze=False)
    for ax, dataset in zip(axes[0], datasets):
        g = d[d["dataset"] == dataset]
        for (method, est), h in g.groupby(["method", "estimator"]):
            med = h.groupby("epoch")["batch_size"].median()
            ax.plot(
                med.index + 1,
                med.values,
                STYLES.get(est, "-"),
                color=METHOD_PALETTE.get(method),
                marker=MARKERS.get(est, "o"),
                ms=3,
                drawstyle="steps-post",
                label=f"{method}, {est}",
            )
        ax.set_yscale("log", base=2)
        ax.yaxis.set_major_formatter(plt.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.set(xlabel="epoch", ylabel="batch size (samples)", title=f"DiveBatch batch size per estimator: {dataset}")
        ax.legend(fontsize=7)
    return fig


def plot_tradeoff(table: pd.DataFrame) -> plt.Figure:
    """Speed-up in optimizer steps against small-batch SGD versus accuracy change, per estimator."""
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for _, r in table[table["method"].isin(DIVEBATCH_VARIANTS)].iterrows():
        if "steps_speedup_vs_sgd_small" not in r or pd.isna(r["steps_speedup_vs_sgd_small"]):
            continue
        x, y = r["steps_speedup_vs_sgd_small"], r["acc_change_vs_sgd_small_pp"]
        ax.errorbar(
            x,
            y,
            xerr=[[x - r["steps_speedup_vs_sgd_small_low"]], [r["steps_speedup_vs_sgd_small_high"] - x]],
            yerr=[[y - r["acc_change_vs_sgd_small_pp_low"]], [r["acc_change_vs_sgd_small_pp_high"] - y]],
            fmt=MARKERS.get(r["estimator"], "o"),
            color=METHOD_PALETTE.get(r["method"]),
            capsize=2,
            label=f"{r['method']}, {r['estimator']} ({r['dataset']})",
        )
    ax.axhline(0, color="k", lw=0.8)
    ax.axvline(1, color="k", lw=0.8)
    ax.set(
        xscale="log",
        xlabel="speed-up at the matched target vs small-batch SGD (optimizer steps)",
        ylabel="final accuracy change vs small-batch SGD (pp)",
        title="Speed-up against accuracy, per estimator",
    )
    ax.legend(fontsize=7)
    return fig


DESCRIPTIONS = {
    "estimators": (
        "Estimator study: DiveBatch with and without lr rescaling under each gradient-diversity estimator "
        "(exact = the authors' epoch estimator, microbatch, fixed_point = Δ(w) at the epoch's final "
        "weights), beside small-batch SGD and AdaBatch: final accuracy, change against small-batch SGD "
        "(95 % t-interval over n seeds), speed-up in optimizer steps at the matched target, seeds that resized, "
        "n·Δ_hat and batch size at the first decision."
    ),
    "estimators_shadow": (
        "Shadow SGD runs: at each resize point, every estimator's n·Δ and its ratio to n·Δ(w) over "
        "the whole training set at the same weights (median over seeds), with the lr and the "
        "fixed-point estimate's cost in seconds."
    ),
    "estimators_bn": (
        "Shadow SGD runs, at each resize point and the same weights: n·Δ with (i) eval-mode BatchNorm, no "
        "augmentation (fixed point), (ii) the authors' train-mode BatchNorm convention at frozen weights, no "
        "augmentation, (iii) the same with augmentation, (iv) the authors' epoch estimator (moving iterates); "
        "factors mode = (ii)/(i), aug. = (iii)/(ii), iterates = (iv)/(iii) of the numerator (mean per-sample "
        "squared norm), the denominator (squared mean gradient, as its contribution to n·Δ) and the ratio; "
        "summary: geometric mean over seeds and points with a 95% t-interval over seeds on log-factors."
    ),
    "estimators_subsets": (
        "Fixed-point estimator: sampling error of the subset estimate against Δ(w) over all n, per "
        "subset size (relative sd and 90th-percentile relative error over random subsets)."
    ),
    "estimators_ratio": "Each estimator / Δ(w) at the same weights against the epoch and the learning rate (shadow runs).",
    "estimators_schedules": "DiveBatch's batch-size schedule per estimator (median over seeds).",
    "estimators_tradeoff": (
        "Speed-up in optimizer steps at the matched target against accuracy change vs small-batch SGD, per estimator."
    ),
}


def write(res, roots, table, figure) -> None:
    """Add the study's tables and figures to a report (called by :func:`divebatch.analysis.report.write_report`).

    Args:
        res: the report's :class:`divebatch.analysis.report.Results`; roots: its run folders (for the
            shadow files); table, figure: the report's writers ``table(name, numeric, display, title,
            label)`` and ``figure(stem, fig, sentence, label)`` (label: the provenance line).
    """
    ep = res.runs.epochs
    if has_study(res.main):
        t = estimator_table(res.main, res.speedups, ep)
        table("estimators", t, format_estimator_table(t), "Estimator study: DiveBatch under each diversity estimator")
        figure("estimators_schedules", plot_schedules(ep), DESCRIPTIONS["estimators_schedules"])
        figure("estimators_tradeoff", plot_tradeoff(t), DESCRIPTIONS["estimators_tradeoff"])
    shadow, subsets = read_shadow(roots, res.profile)
    if len(shadow):  # labelled by the shadow runs themselves: the report's label covers its complete runs only
        prov = label(
            res.profile,
            ",".join(sorted(shadow["dataset"].unique())),
            sorted(int(s) for s in shadow["seed"].unique()),
            commit=agreed_commit(shadow["commit"]),
        )
        st = shadow_table(shadow)
        title = "Every estimator against Δ(w) at the same weights (shadow runs)"
        table("estimators_shadow", st, st.round(4), title, prov)
        figure("estimators_ratio", plot_ratio(shadow), DESCRIPTIONS["estimators_ratio"], prov)
        bt = bn_table(shadow)
        if bt["n_delta_train"].notna().any():  # runs written before the decomposition have none
            num, disp = bn_report_table(bt, bn_summary(bt))
            title = "BatchNorm mode, augmentation and moving iterates: the epoch estimator's excess, decomposed"
            table("estimators_bn", num, disp, title, prov)
    if len(subsets):
        sb = subsets_table(subsets)
        table("estimators_subsets", sb, sb.round(4), "Fixed-point estimator: sampling error per subset size", prov)
