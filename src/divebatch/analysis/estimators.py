"""The estimator study: how much of DiveBatch's behaviour comes from the gradient-diversity estimator
(docs/diversity.md, "Estimator study").

Inputs: the DiveBatch runs of a profile with ``method.diversity_estimator`` = ``exact`` (the authors'
epoch estimator, the default), ``microbatch`` or ``fixed_point`` (Delta(w) at the epoch's final
weights), which the main table keeps apart as settings; and the shadow runs (``shadow.enabled``,
:mod:`divebatch.shadow`), whose ``shadow.csv`` / ``shadow_subsets.csv`` hold every estimator and
Delta(w) at the same weights at each resize point. Outputs (written by :func:`write`):

* ``estimators`` table: per dataset, DiveBatch variant and estimator: final accuracy, its change
  against small-batch SGD, the speed-up in optimizer steps, the first decision's batch size;
* the shadow runs' tables ``estimators_shadow``, ``estimators_subsets``, ``estimators_bn`` and the figure
  ``estimators_ratio`` (:mod:`divebatch.analysis.estimators_shadow`; its functions are importable from here);
* figures ``estimators_schedules`` (batch size per epoch per estimator) and ``estimators_tradeoff``
  (speed-up against accuracy change);
* the claims row of :func:`estimator_claim`.

Shadow runs are kept out of every other table (:func:`divebatch.analysis.collect` excludes them).
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from divebatch.analysis.collect import agreed_commit
from divebatch.analysis.comparisons import ACC_CHANGE, METRIC_GAIN, Comparisons, column
from divebatch.analysis.estimators_shadow import (
    BN_FACTORS,
    MARKERS,
    STYLES,
    bn_report_table,
    bn_summary,
    bn_table,
    plot_ratio,
    read_shadow,
    shadow_table,
    subsets_table,
)
from divebatch.analysis.formatting import estimate, interval
from divebatch.analysis.stats import metric_of, metric_sign
from divebatch.analysis.style import METHOD_PALETTE
from divebatch.analysis.verdicts import NOT_MEASURED, overall
from divebatch.choices import CHOICES
from divebatch.methods import ADABATCH, ADABATCH_RESCALE, DIVEBATCH_VARIANTS, SGD_SMALL
from divebatch.provenance import label

__all__ = [  # the shadow runs' functions stay importable from here (the notebooks use them)
    "BN_FACTORS",
    "bn_summary",
    "bn_table",
    "plot_ratio",
    "read_shadow",
    "shadow_table",
    "subsets_table",
]

AUTHORS_ESTIMATOR = "exact"  # method.diversity_estimator of the paper (the default everywhere it is replicated)
# the authors' epoch estimator under either name: exact_func computes it with torch.func norms (models
# BackPACK does not cover: the transformer)
AUTHORS_ESTIMATORS = (AUTHORS_ESTIMATOR, "exact_func")
ESTIMATORS = CHOICES["method.diversity_estimator"]  # display order: the registry's names (divebatch.choices)
RECOVERED_SHARE = 0.5  # the claim row: a fixed-point arm recovers at least this share of the loss
# a fixed-point arm is evidence only when its batch grew: mean final batch size >= this x small-batch SGD's.
# An arm that never resized trains as small-batch SGD (same seed, same batches: the same run), so it
# "recovers" the whole loss whatever the estimator is worth.
GROWN_FACTOR = 2.0
ESTIMATOR_RULE = (
    f"per DiveBatch variant whose authors'-estimator runs (exact or exact_func) lose on the primary metric against "
    f"small-batch SGD (accuracy in pp; a loss: its gain, signed so that > 0 is better; 95 % t-interval "
    f"over n seeds below 0), the evidence is the fixed-point arms (any delta) whose batch grew (resized in some seed "
    f"and mean final batch >= {GROWN_FACTOR:g} x small-batch SGD's; an arm that never resized is small-batch SGD, "
    f"not evidence); holds when some evidence arm recovers at least {RECOVERED_SHARE:.0%} of the loss (mean final "
    f"primary metrics) in every such variant; does not hold when every evidence arm of a variant recovers less; not "
    f"measured without a significant loss or without an arm that grew"
)
# the estimator table's columns: the accuracy change against small-batch SGD (as main.csv names it) and
# the speed-up in optimizer steps against it at the matched target
ACC = {f: column(ACC_CHANGE, SGD_SMALL, field=f) for f in ("value", "low", "high")}
STEPS = {
    "value": "steps_speedup_vs_sgd_small",
    "low": "steps_speedup_vs_sgd_small_low",
    "high": "steps_speedup_vs_sgd_small_high",
}


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
    return table[table["setting"].map(estimator_of).isin(AUTHORS_ESTIMATORS)].reset_index(drop=True)


def _divebatch(main: pd.DataFrame) -> pd.DataFrame:
    d = main[main["method"].isin(DIVEBATCH_VARIANTS)].copy()
    d["estimator"] = d["setting"].map(estimator_of)
    return d


def has_study(main: pd.DataFrame) -> bool:
    """Whether the main table holds DiveBatch runs under more than one estimator."""
    d = _divebatch(main) if len(main) else pd.DataFrame()
    return bool(len(d)) and d["estimator"].nunique() > 1


def estimator_claim(main: pd.DataFrame, comp: Comparisons | None = None) -> tuple[str, str]:
    """Verdict and numbers of the claims row (:data:`ESTIMATOR_RULE`).

    Args:
        main: :func:`divebatch.analysis.tables.main_table` with DiveBatch settings per estimator
            (any number of fixed-point settings, e.g. a delta sweep) and small-batch SGD; judged on
            each dataset's primary metric (``metric``: accuracy in pp, or a loss such as ``val_loss``).
        comp: the comparisons (accuracy change or metric gain against small-batch SGD); None: read
            back from ``main``.
    Returns:
        (``holds`` | ``does not hold`` | ``not measured at this scale``, the numbers in words).
    """
    comp = comp or Comparisons.of(main)
    d = _divebatch(main)
    parts, verdicts = [], []
    for dataset in sorted(d["dataset"].unique()):
        sgd = main[(main["dataset"] == dataset) & (main["method"] == SGD_SMALL)]
        if sgd.empty:
            continue
        small = float(sgd["final_batch_size_mean"].min())
        for method in DIVEBATCH_VARIANTS:
            g = d[(d["dataset"] == dataset) & (d["method"] == method)]
            ex, fps = g[g["estimator"].isin(AUTHORS_ESTIMATORS)], g[g["estimator"] == "fixed_point"]
            if ex.empty or fps.empty:
                continue
            ex = ex.iloc[0]
            quantity, unit, spec = _quality(ex)
            change = comp.get(ex, SGD_SMALL, quantity)
            loss, significant = -float(change.value), float(change.high) < 0
            arms = [_arm(fp, ex, loss, small, comp) for _, fp in fps.iterrows()]
            shares = [share for _, share in arms if share is not None]
            parts.append(
                f"{dataset}, {method}: authors' estimator {change.value:{spec}} {unit} vs small-batch "
                f"SGD {interval(change.low, change.high, spec)}"
                + ("" if significant else " (no significant loss)")
                + "; "
                + "; ".join(text for text, _ in arms)
            )
            if significant and shares:
                verdicts.append(max(shares) >= RECOVERED_SHARE)
    if not verdicts:
        return NOT_MEASURED, "; ".join(parts) or "no DiveBatch run with the fixed-point estimator"
    return overall(verdicts), "; ".join(parts)


def _quality(row: pd.Series) -> tuple[str, str, str]:
    """How the claims row judges a group's quality against small-batch SGD: ``(quantity of
    :mod:`divebatch.analysis.comparisons`, its unit in words, its format spec)``: the accuracy change
    in pp where accuracy is the primary metric, else the metric's gain (> 0 better; a loss)."""
    metric = metric_of(row)[0]
    return (ACC_CHANGE, "pp", "+.1f") if metric == "val_acc" else (METRIC_GAIN, metric, "+.3f")


def _arm(fp: pd.Series, ex: pd.Series, loss: float, small: float, comp: Comparisons) -> tuple[str, float | None]:
    """A fixed-point arm of the claims row in words, and the share of the authors'-estimator ``loss``
    (pp, or the loss metric's units; :func:`_quality`) it recovers when its batch grew (None: not
    evidence): (mean final metric of the arm - of the authors' arm) / ``loss``, signed so that > 0 is
    better. ``small``: small-batch SGD's batch."""
    quantity, unit, spec = _quality(fp)
    col = "final_acc_mean" if quantity == ACC_CHANGE else "final_metric_mean"
    resized = fp.get("resized_seeds", np.nan)
    never_resized = pd.notna(resized) and int(resized) == 0
    grew = not never_resized and float(fp["final_batch_size_mean"]) >= GROWN_FACTOR * small
    share = metric_sign(fp) * (float(fp[col]) - float(ex[col])) / loss if loss > 0 else np.nan
    recovered = f", recovers {share:.0%}" if np.isfinite(share) else ""
    why = (
        " - not evidence: the batch never resized" if never_resized else ("" if grew else " (never grew: not evidence)")
    )
    text = (
        f"{fp['setting'] or 'fixed point'}: final batch {fp['final_batch_size_mean']:.0f}, "
        f"{comp.value(fp, SGD_SMALL, quantity):{spec}} {unit}{recovered}{why}"
    )
    return text, share if grew else None


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


def estimator_table(
    main: pd.DataFrame, speedups: pd.DataFrame, epochs: pd.DataFrame, comparisons: pd.DataFrame | None = None
) -> pd.DataFrame:
    """Per dataset, DiveBatch variant and estimator (plus small-batch SGD and AdaBatch for reference):
    final accuracy (mean, sd), change against small-batch SGD (pp, 95 % t-interval over n seeds: columns
    :data:`ACC`), speed-up in optimizer steps against small-batch SGD at the matched target (own target
    when the speed-up table has no matched rows; 95 % t-interval: :data:`STEPS`), seeds that resized,
    first decision's batch size and n*Delta_hat there (mean over seeds), final batch size.
    ``comparisons``: the long table (None: read back from ``main``)."""
    cols = ["dataset", "method", "setting", "n_seeds", "final_acc_mean", "final_acc_std"]
    keep = main["method"].isin((*DIVEBATCH_VARIANTS, SGD_SMALL, ADABATCH, ADABATCH_RESCALE))
    t = main.loc[keep, [c for c in cols if c in main]].copy()
    comp = Comparisons.of(main, comparisons)
    change = [comp.get(r, SGD_SMALL, ACC_CHANGE) for _, r in t.iterrows()]
    for field, name in ACC.items():
        t[name] = [getattr(iv, field) if iv is not None else np.nan for iv in change]
    t = t.join(main.loc[keep, [c for c in ("final_batch_size_mean", "resized_seeds") if c in main]])
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
        names = {"speedup": STEPS["value"], "ci_low": STEPS["low"], "ci_high": STEPS["high"]}
        sp = sp[["dataset", "method", "setting", *names]].rename(columns=names)
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
    """Readable :func:`estimator_table`: a group of one seed shows its value with ``(n=1, no
    interval)`` (:func:`divebatch.analysis.formatting.estimate`), the others mean ± sd and 95 %
    t-intervals (their n is the ``resized seeds`` column's denominator)."""

    def one_seed(r) -> int | None:  # n shown only where it replaces the spread and the interval
        n = r.get("n_seeds", np.nan)
        return int(n) if pd.notna(n) and int(n) < 2 else None

    def iv(r, cols: dict, spec: str) -> str:
        if cols["value"] not in r:
            return ""
        return estimate(
            r[cols["value"]], low=r[cols["low"]], high=r[cols["high"]], spec=spec, missing="", n=one_seed(r)
        )

    return pd.DataFrame(
        {
            "dataset": t["dataset"],
            "method": t["method"],
            "estimator": t["estimator"],
            "final acc. (%)": [
                estimate(r["final_acc_mean"], r["final_acc_std"], spec=".1f", n=one_seed(r)) for _, r in t.iterrows()
            ],
            "vs SGD small (pp)": [iv(r, ACC, "+.1f") for _, r in t.iterrows()],
            "speed-up, optimizer steps vs SGD small (matched target, 95 % t-interval)": [
                iv(r, STEPS, ".2f") for _, r in t.iterrows()
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


# ----------------------------------------------------------------------------- figures


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
        if STEPS["value"] not in r or pd.isna(r[STEPS["value"]]):
            continue
        x, y = r[STEPS["value"]], r[ACC["value"]]
        ax.errorbar(
            x,
            y,
            xerr=[[x - r[STEPS["low"]]], [r[STEPS["high"]] - x]],
            yerr=[[y - r[ACC["low"]]], [r[ACC["high"]] - y]],
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
        t = estimator_table(res.main, res.speedups, ep, res.comparisons)
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
