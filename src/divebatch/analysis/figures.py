"""Figures: training curves, batch-size and diversity dynamics, speed-up versus accuracy, sensitivity.

Each ``plot_*`` function returns a matplotlib Figure (nothing is written); the report saves it with
:func:`divebatch.analysis.style.save_figure`, which adds the provenance footer. Colours come from
:data:`divebatch.analysis.style.METHOD_PALETTE`, so a method has the same colour everywhere.
Bands are one standard deviation over seeds around the mean line (seaborn ``errorbar="sd"``);
error bars on points are the bootstrap intervals of :mod:`divebatch.analysis.stats`.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import matplotlib.ticker as ticker
import numpy as np
import pandas as pd
import seaborn as sns

from divebatch.analysis.collect import protocol_name
from divebatch.analysis.stats import UNIT_LABELS, UNITS, metric_of
from divebatch.analysis.style import METHOD_ORDER, METHOD_PALETTE, apply_style
from divebatch.analysis.tables import SENSITIVITY_HPARAMS
from divebatch.methods import SGD_SMALL


def _methods(df: pd.DataFrame) -> list[str]:
    present = set(df["method"])
    return [m for m in METHOD_ORDER if m in present] + sorted(present - set(METHOD_ORDER))


def _palette(methods: list[str]) -> dict:
    extra = sns.color_palette("dark", len(methods))
    return {m: METHOD_PALETTE.get(m, extra[i]) for i, m in enumerate(methods)}


def _line_kwargs(df: pd.DataFrame) -> dict:
    methods = _methods(df)
    kw = dict(hue="method", hue_order=methods, palette=_palette(methods), errorbar="sd")
    if df["setting"].nunique() > 1:
        kw["style"] = "setting"
    return kw


def _legend_right(axes) -> None:
    """One legend for all panels, right of the top-right panel (save_figure's tight_layout makes room)."""
    axes = np.atleast_2d(axes)
    handles = {}
    for ax in axes.ravel():
        for h, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, h)
        if ax.get_legend() is not None:
            ax.get_legend().remove()
    if handles:
        axes[0, -1].legend(
            list(handles.values()),
            list(handles),
            loc="upper left",
            bbox_to_anchor=(1.02, 1),
            frameon=False,
            fontsize="small",
        )


def protocol_note(df: pd.DataFrame) -> str:
    """Which protocol the drawn runs ran, for a title: ``protocol: authors' code``; with several,
    ``protocols: authors' code, clean (line style = setting)``; ``protocol: -`` when not set."""
    if "protocol" not in df or df.empty:
        return "protocol: -"
    names = sorted({protocol_name(v) for v in df["protocol"]})
    return f"protocol: {names[0]}" if len(names) == 1 else f"protocols: {', '.join(names)} (line style = setting)"


def _log2(ax, axis: str = "y") -> None:
    """Log base-2 axis with plain numbers (batch sizes are powers of two in the protocol)."""
    getattr(ax, f"set_{axis}scale")("log", base=2)
    target = ax.yaxis if axis == "y" else ax.xaxis
    target.set_major_formatter(ticker.ScalarFormatter())
    target.set_minor_formatter(ticker.NullFormatter())


def with_mean_wall_time(epochs: pd.DataFrame) -> pd.DataFrame:
    """Add ``wall_time_mean``: the mean over seeds of the cumulative wall-clock seconds at each epoch of
    each dataset/method/setting, so curves against time can be averaged over seeds at a common x."""
    key = ["dataset", "method", "setting", "epoch"]
    return epochs.assign(wall_time_mean=epochs.groupby(key)["wall_time_s"].transform("mean"))


METRIC_LABELS = {"val_acc": "validation accuracy (%)", "val_loss": "validation loss (nats)"}


def plot_curves(epochs: pd.DataFrame, dataset: str) -> plt.Figure:
    """The dataset's primary metric (validation accuracy by default; validation loss where the
    runs declare it) and training loss against epochs and against wall-clock seconds.

    Args:
        epochs: tidy per-epoch table (``RunSet.epochs``).
        dataset: which dataset to draw.
    Returns:
        A 2 x 2 figure: rows accuracy / loss, columns epochs / wall-clock s (mean over seeds at each epoch).
    """
    apply_style()
    df = with_mean_wall_time(epochs[epochs["dataset"] == dataset])
    df = df.assign(epoch1=df["epoch"] + 1)
    kw = _line_kwargs(df)
    fig, axes = plt.subplots(2, 2, figsize=(10, 7), sharey="row")
    metric = metric_of(df.iloc[0])[0] if len(df) else "val_acc"
    for row, (y, ylabel) in enumerate(((metric, METRIC_LABELS.get(metric, metric)), ("train_loss", "training loss"))):
        for col, (x, xlabel) in enumerate(
            (("epoch1", "epoch"), ("wall_time_mean", "wall-clock time (s, mean over seeds)"))
        ):
            ax = axes[row, col]
            sns.lineplot(data=df, x=x, y=y, ax=ax, **kw)
            ax.set(xlabel=xlabel, ylabel=ylabel)
    axes[1, 0].set_yscale("log")
    fig.suptitle(f"{dataset}: curves (mean, band = 1 sd over seeds; {protocol_note(df)})")
    _legend_right(axes)
    return fig


def plot_dynamics(epochs: pd.DataFrame, dataset: str) -> plt.Figure:
    """Batch size (samples) and measured gradient diversity Delta_hat (log scale) against epochs.

    Diversity is only measured by DiveBatch at resize epochs (docs/protocol.md, "How the authors
    estimate it: the epoch estimator"), so it appears as points.
    """
    apply_style()
    df = epochs[epochs["dataset"] == dataset].assign(epoch1=lambda d: d["epoch"] + 1)
    kw = _line_kwargs(df)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    # one step line per run: a band would cut the corners of the steps
    sns.lineplot(
        data=df,
        x="epoch1",
        y="batch_size",
        ax=axes[0],
        drawstyle="steps-post",
        units="run_id",
        estimator=None,
        **{**kw, "errorbar": None},
    )
    axes[0].set(xlabel="epoch", ylabel="batch size (samples)")
    _log2(axes[0])
    div = df.dropna(subset=["grad_diversity"])
    if len(div):
        sns.lineplot(data=div, x="epoch1", y="grad_diversity", ax=axes[1], marker="o", **kw)
        axes[1].set(yscale="log")
    else:
        axes[1].text(0.5, 0.5, "no gradient diversity measured", ha="center", va="center", transform=axes[1].transAxes)
    axes[1].set(xlabel="epoch", ylabel="gradient diversity Delta_hat")
    fig.suptitle(
        f"{dataset}: batch size (one line per run) and gradient diversity (mean, band = 1 sd over seeds)\n"
        f"{protocol_note(df)}"
    )
    _legend_right(axes)
    return fig


def pareto_front(points: pd.DataFrame, x: str, y: str) -> pd.Series:
    """Boolean mask of the points no other point beats in both ``x`` and ``y`` (larger is better
    in both; ties do not dominate). NaN points are never on the front."""
    xs, ys = points[x].to_numpy(float), points[y].to_numpy(float)
    ok = np.isfinite(xs) & np.isfinite(ys)
    front = []
    for i in range(len(points)):
        if not ok[i]:
            front.append(False)
            continue
        dominated = ok & (xs >= xs[i]) & (ys >= ys[i]) & ((xs > xs[i]) | (ys > ys[i]))
        front.append(not dominated.any())
    return pd.Series(front, index=points.index)


def tradeoff_points(main: pd.DataFrame, speedups: pd.DataFrame, target: str = "own") -> pd.DataFrame:
    """One row per dataset x method x setting x unit: accuracy change and speed-up against
    small-batch SGD with their intervals, and ``pareto`` (on the dataset-and-unit Pareto front).

    Returns:
        Columns ``dataset, method, setting, unit, acc_change_pp, acc_low, acc_high, speedup,
        ci_low, ci_high, n_seeds, pareto``; the small-batch SGD group itself is left out.
        ``acc_change_pp`` is the primary metric's gain over small-batch SGD (> 0 better): the
        accuracy change in pp, or minus the loss change where the runs judge by a loss.
    """
    sp = speedups[(speedups["baseline"] == SGD_SMALL) & (speedups["target"] == target)]
    # the primary metric's gain (> 0 better; the accuracy change in pp by default)
    gain = "metric_gain_vs_sgd_small" if "metric_gain_vs_sgd_small" in main else "acc_change_vs_sgd_small_pp"
    acc = main[["dataset", "method", "setting", gain, f"{gain}_low", f"{gain}_high"]].set_axis(
        ["dataset", "method", "setting", "acc_change_pp", "acc_low", "acc_high"], axis=1
    )
    pts = sp.merge(acc, on=["dataset", "method", "setting"])
    pts = pts[pts["method"] != SGD_SMALL].drop(columns=["baseline", "baseline_group", "target"])
    pts["pareto"] = False
    for _, g in pts.groupby(["dataset", "unit"]):
        pts.loc[g.index, "pareto"] = pareto_front(g, "acc_change_pp", "speedup")
    return pts.reset_index(drop=True)


def plot_speedup_vs_accuracy(main: pd.DataFrame, speedups: pd.DataFrame, target: str = "own") -> plt.Figure:
    """Speed-up against small-batch SGD (y, log) versus accuracy change (x, percentage points).

    One panel per dataset (rows) and unit (columns: epochs, optimizer steps, wall-clock s); one
    point per method and setting, error bars = bootstrap 95% intervals over seeds; the dashed line
    joins the Pareto front (faster and more accurate is up and to the right).
    """
    apply_style()
    pts = tradeoff_points(main, speedups, target)
    datasets = sorted(pts["dataset"].unique()) or ["(none)"]
    units = list(UNITS)
    fig, axes = plt.subplots(len(datasets), len(units), figsize=(4.2 * len(units), 3.6 * len(datasets)), squeeze=False)
    palette = _palette(_methods(pts)) if len(pts) else {}
    for i, dataset in enumerate(datasets):
        for j, unit in enumerate(units):
            ax = axes[i, j]
            g = pts[(pts["dataset"] == dataset) & (pts["unit"] == unit)]
            for _, r in g.iterrows():
                xerr = (
                    [[r["acc_change_pp"] - r["acc_low"]], [r["acc_high"] - r["acc_change_pp"]]]
                    if np.isfinite(r["acc_low"])
                    else None
                )
                yerr = (
                    [[r["speedup"] - r["ci_low"]], [r["ci_high"] - r["speedup"]]] if np.isfinite(r["ci_low"]) else None
                )
                ax.errorbar(
                    r["acc_change_pp"],
                    r["speedup"],
                    xerr=xerr,
                    yerr=yerr,
                    fmt="o",
                    capsize=3,
                    color=palette[r["method"]],
                    mec="black" if r["pareto"] else None,
                    label=r["method"] + (f" ({r['setting']})" if r["setting"] else ""),
                )
            front = g[g["pareto"]].sort_values("acc_change_pp")
            if len(front) > 1:
                ax.plot(front["acc_change_pp"], front["speedup"], "--", color="0.5", lw=1, zorder=0)
            ax.axhline(1, color="0.6", lw=0.8)
            ax.axvline(0, color="0.6", lw=0.8)
            d = main[main["dataset"] == dataset]
            metric = d["metric"].iloc[0] if "metric" in d and len(d) else "val_acc"
            xlabel = (
                "accuracy change vs SGD small (pp)"
                if metric == "val_acc"
                else f"{metric} gain vs SGD small (> 0: lower {metric})"
            )
            ax.set(
                title=f"{dataset}: {UNIT_LABELS[unit]}",
                xlabel=xlabel,
                ylabel=f"speed-up vs SGD small ({UNIT_LABELS[unit]})",
            )
    _legend_right(axes)
    fig.suptitle(
        f"Speed-up vs accuracy change against small-batch SGD ({'own' if target == 'own' else 'common'} target)"
    )
    return fig


def plot_sensitivity(table: pd.DataFrame) -> plt.Figure:
    """Final accuracy and speed-up (vs small-batch SGD, three units) against delta, resize_freq
    and max batch size, from :func:`divebatch.analysis.tables.sensitivity_table`.

    Columns: hyperparameters with more than one value (log x for delta, log2 for max batch size);
    rows: final accuracy (%, mean and sd over seeds), speed-up in epochs, optimizer steps and
    wall-clock s (bootstrap 95% CI). In a grid sweep each combination of the other varied
    hyperparameters is its own line (colour = method, line style = that combination).
    """
    apply_style()
    hps = [h for h in SENSITIVITY_HPARAMS if table[h].dropna().nunique() > 1] or [SENSITIVITY_HPARAMS[0]]
    rows = [("final_acc_mean", "final accuracy (%)")]
    rows += [(f"speedup_{u}", f"speed-up ({UNIT_LABELS[u]})") for u in UNITS]
    fig, axes = plt.subplots(len(rows), len(hps), figsize=(4.6 * len(hps), 2.8 * len(rows)), squeeze=False)
    palette = _palette(_methods(table)) if len(table) else {}
    styles = ["-", "--", ":", "-."]
    for j, h in enumerate(hps):
        d = table.dropna(subset=[h])
        others = [o for o in hps if o != h]
        for k, (key, g) in enumerate(d.groupby(["method", *others], sort=False, dropna=False)):
            key = key if isinstance(key, tuple) else (key,)
            method = key[0]
            extra = ", ".join(f"{o}={v:g}" for o, v in zip(others, key[1:]) if np.isfinite(v))
            label = f"{method} ({extra})" if extra else method
            g = g.sort_values(h)
            for i, (col, _ylabel) in enumerate(rows):
                if col == "final_acc_mean":
                    err = g["final_acc_std"].fillna(0).to_numpy()
                else:
                    err = np.nan_to_num(np.vstack([g[col] - g[f"{col}_low"], g[f"{col}_high"] - g[col]]))
                axes[i, j].errorbar(
                    g[h],
                    g[col],
                    yerr=err,
                    fmt="o",
                    ls=styles[k % len(styles)],
                    capsize=3,
                    color=palette[method],
                    label=label,
                )
        for i, (col, ylabel) in enumerate(rows):
            ax = axes[i, j]
            if h == "delta":
                ax.set_xscale("log")
            elif h == "max_batch_size":
                _log2(ax, "x")
            else:
                ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
            if col != "final_acc_mean":
                ax.axhline(1, color="0.6", lw=0.8)
            ax.set(xlabel=h, ylabel=ylabel)
    _legend_right(axes)
    fig.suptitle("Sensitivity vs small-batch SGD (own target)\nbars: sd of accuracy, bootstrap 95% CI of speed-up")
    return fig


def plot_noise_scale(div: pd.DataFrame) -> plt.Figure:
    """Diversity dynamics from :func:`divebatch.analysis.tables.diversity_table`, three panels:
    n * Delta_hat = 1 + B_simple against epochs (log y, mean and sd band over seeds); the batch size
    DiveBatch's rule proposes (delta * n * Delta_hat) against the batch size used next (on the dotted
    diagonal unless clipped by m or the max batch size); and the batch size used next divided by
    n * Delta_hat against epochs, which equals delta while the batch follows the noise scale.
    Colour = method, marker/line style = dataset.
    """
    apply_style()
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    if div.empty:
        for ax in axes:
            ax.text(0.5, 0.5, "no gradient diversity measured", ha="center", va="center", transform=ax.transAxes)
        return fig
    d = div.assign(epoch1=div["epoch"] + 1, follow=div["next_batch_size"] / div["n_delta"])
    methods = _methods(d)
    kw = dict(hue="method", hue_order=methods, palette=_palette(methods), style="dataset")
    sns.lineplot(data=d, x="epoch1", y="n_delta", marker="o", errorbar="sd", ax=axes[0], **kw)
    axes[0].set(yscale="log", xlabel="epoch", ylabel="n * Delta_hat = 1 + B_simple")
    sns.scatterplot(data=d, x="proposed_batch", y="next_batch_size", ax=axes[1], **kw)
    both = d[["proposed_batch", "next_batch_size"]].to_numpy(float)
    lo, hi = max(1.0, float(np.nanmin(both))), float(np.nanmax(both))
    axes[1].plot([lo, hi], [lo, hi], ":", color="0.5", lw=1)
    axes[1].set(xlabel="proposed batch delta * n * Delta_hat (samples)", ylabel="batch size used next (samples)")
    _log2(axes[1], "x")
    _log2(axes[1], "y")
    sns.lineplot(data=d, x="epoch1", y="follow", marker="o", errorbar="sd", ax=axes[2], **kw)
    for delta in d["delta"].dropna().unique():
        axes[2].axhline(delta, color="0.6", lw=0.8, ls="--")
    axes[2].set(xlabel="epoch", ylabel="batch used next / (n * Delta_hat)")
    fig.suptitle("Gradient diversity and the noise scale (dashed: delta)")
    _legend_right(axes[None, :])
    return fig
