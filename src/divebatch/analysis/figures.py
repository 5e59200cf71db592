"""Figures: training curves, batch-size and diversity dynamics, speed-up versus accuracy, sensitivity.

Each ``plot_*`` function returns a matplotlib Figure (nothing is written); the report saves it with
:func:`divebatch.analysis.style.save_figure`, which adds the provenance footer. Colours come from
:data:`divebatch.analysis.style.METHOD_PALETTE`, so a method has the same colour everywhere.
Bands are one standard deviation over seeds around the mean line (seaborn ``errorbar="sd"``);
error bars on points are the 95 % t-intervals over seeds of :mod:`divebatch.analysis.stats`. Runs
that collapsed (:func:`collapsed_runs`) are drawn apart, so they do not stretch the axes.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import matplotlib.ticker as ticker
import numpy as np
import pandas as pd
import seaborn as sns

from divebatch.analysis.collect import protocol_name
from divebatch.analysis.stats import MATCHED_UNITS, UNIT_LABELS, UNITS, metric_of, never_resized
from divebatch.analysis.style import METHOD_ORDER, METHOD_PALETTE, apply_style
from divebatch.analysis.tables import MATCHED, SENSITIVITY_HPARAMS, target_ladder
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
    """Add ``wall_time_mean`` and ``steps_mean``: the mean over seeds of the cumulative wall-clock
    seconds and optimizer steps at each epoch of each dataset/method/setting, so curves against time
    or steps can be averaged over seeds at a common x."""
    key = ["dataset", "method", "setting", "epoch"]
    g = epochs.groupby(key)
    return epochs.assign(
        wall_time_mean=g["wall_time_s"].transform("mean"), steps_mean=g["optimizer_steps"].transform("mean")
    )


METRIC_LABELS = {"val_acc": "validation accuracy (%)", "val_loss": "validation loss (nats)"}
COLLAPSE_WITHINS = 10.0  # a run is collapsed when its final metric is this many `within` worse than the median run


def collapsed_runs(epochs: pd.DataFrame) -> list[str]:
    """Run ids of ``epochs`` (one dataset) that collapsed: the final primary metric is worse than the
    median run's final by more than :data:`COLLAPSE_WITHINS` x the metric's ``within`` (10 pp for
    accuracy, 0.2 nats for a loss with ``within`` 0.02) *and* worse than the median run's value after
    its first epoch (it ends where the others were after one epoch, or below). A slow method that
    still learns is not collapsed. Drawn apart in the figures so they do not stretch the axes; they
    stay in every table."""
    if epochs.empty:
        return []
    column, higher, within = metric_of(epochs.iloc[0])
    ordered = epochs.sort_values("epoch").groupby("run_id")[column]
    finals, firsts = ordered.last(), ordered.first()
    sign = 1.0 if higher else -1.0
    gap = sign * (finals.median() - finals)
    below_start = sign * (firsts.median() - finals) > 0
    return sorted(finals.index[(gap > COLLAPSE_WITHINS * within) & below_start])


def plot_curves(epochs: pd.DataFrame, dataset: str) -> plt.Figure:
    """The dataset's primary metric (validation accuracy by default; validation loss where the
    runs declare it) and training loss against epochs, optimizer steps and wall-clock seconds.

    Args:
        epochs: tidy per-epoch table (``RunSet.epochs``).
        dataset: which dataset to draw.
    Returns:
        A 2 x 3 figure: rows metric / training loss, columns epochs / optimizer steps / wall-clock s
        (mean over seeds at each epoch); a third row draws the collapsed runs
        (:func:`collapsed_runs`), one line each, when there are any.
    """
    apply_style()
    every = with_mean_wall_time(epochs[epochs["dataset"] == dataset])
    every = every.assign(epoch1=every["epoch"] + 1)
    gone = collapsed_runs(every)
    df = every[~every["run_id"].isin(gone)]
    kw = _line_kwargs(df if len(df) else every)
    fig, axes = plt.subplots(3 if gone else 2, 3, figsize=(14, 10.5 if gone else 7), squeeze=False)
    metric = metric_of(every.iloc[0])[0] if len(every) else "val_acc"
    rows = ((metric, METRIC_LABELS.get(metric, metric)), ("train_loss", "training loss"))
    columns = (
        ("epoch1", "epoch"),
        ("steps_mean", "optimizer steps (mean over seeds)"),
        ("wall_time_mean", "wall-clock time (s, mean over seeds)"),
    )
    for row, (y, ylabel) in enumerate(rows):
        for col, (x, xlabel) in enumerate(columns):
            ax = axes[row, col]
            if len(df):
                sns.lineplot(data=df, x=x, y=y, ax=ax, **kw)
            ax.set(xlabel=xlabel, ylabel=ylabel)
            if row == 1:
                ax.set_yscale("log")
        axes[row, 1].sharey(axes[row, 0])
        axes[row, 2].sharey(axes[row, 0])
    if gone:
        c = every[every["run_id"].isin(gone)]
        ckw = {**_line_kwargs(c), "units": "run_id", "estimator": None, "errorbar": None}
        for col, (y, ylabel) in enumerate(rows):
            sns.lineplot(data=c, x="epoch1", y=y, ax=axes[2, col], **ckw)
            axes[2, col].set(xlabel="epoch", ylabel=ylabel, title="collapsed runs (drawn apart)")
        axes[2, 1].set_yscale("log")
        axes[2, 2].axis("off")
        axes[2, 2].text(
            0,
            1,
            "collapsed (final worse than the median run's first epoch\nand > 10 x tolerance below its final):\n"
            + "\n".join(gone),
            va="top",
            fontsize="small",
            transform=axes[2, 2].transAxes,
        )
    fig.suptitle(f"{dataset}: curves (mean, band = 1 sd over seeds; {protocol_note(every)})")
    _legend_right(axes)
    return fig


def _group_label(method: str, setting: str) -> str:
    return method + (f" ({setting})" if setting else "")


def plot_dynamics(epochs: pd.DataFrame, dataset: str) -> plt.Figure:
    """Batch size (samples, log2) against epochs as small multiples, one panel per method and
    setting with every seed drawn (one step line per run), and the measured gradient diversity
    Delta_hat (log scale), every measurement a point, the runs joined by thin lines.

    Diversity is only measured by DiveBatch at resize epochs (docs/protocol.md, "How the authors
    estimate it: the epoch estimator"); a panel says how many measurements each run has, so a run
    with one measurement reads as one point, not as a curve. A panel whose batch never changed in
    any seed says so.
    """
    apply_style()
    df = epochs[epochs["dataset"] == dataset].assign(epoch1=lambda d: d["epoch"] + 1)
    methods = _methods(df) if len(df) else []
    palette = _palette(methods)
    groups = [(m, st) for m in methods for st in sorted(df.loc[df["method"] == m, "setting"].unique())]
    n = len(groups) + 1
    ncols = min(4, n)
    nrows = -(-n // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.6 * ncols, 3.0 * nrows), squeeze=False, sharex=True)
    flat = axes.ravel()
    top = float(df["batch_size"].max()) if len(df) else 2.0
    low = float(df["batch_size"].min()) if len(df) else 1.0
    for ax, (method, setting) in zip(flat, groups):
        g = df[(df["method"] == method) & (df["setting"] == setting)]
        for _, r in g.groupby("run_id"):
            r = r.sort_values("epoch1")
            ax.step(r["epoch1"], r["batch_size"], where="post", color=palette[method], alpha=0.8, lw=1.2)
        static = all(never_resized(r["batch_size"]) for _, r in g.groupby("run_id"))
        ax.set_title(
            f"{_group_label(method, setting)}\n{g['run_id'].nunique()} seed(s)" + (", never resized" if static else ""),
            fontsize="small",
        )
        _log2(ax)
        ax.set_ylim(low / 1.3, top * 1.3)
        ax.set(xlabel="epoch", ylabel="batch size (samples)")
    ax = flat[len(groups)]
    div = df.dropna(subset=["grad_diversity"])
    if len(div):
        for (method, setting), g in div.groupby(["method", "setting"], sort=False):
            for i, (_, r) in enumerate(g.groupby("run_id")):
                ax.plot(
                    r["epoch1"],
                    r["grad_diversity"],
                    "-o",
                    ms=4,
                    lw=0.8,
                    color=palette[method],
                    label=_group_label(method, setting) if i == 0 else None,
                )
        per_run = div.groupby("run_id").size()
        ax.set(yscale="log")
        ax.set_title(
            f"gradient diversity: {per_run.min()}-{per_run.max()} measurement(s) per run"
            if per_run.min() != per_run.max()
            else f"gradient diversity: {per_run.min()} measurement(s) per run",
            fontsize="small",
        )
        ax.legend(fontsize="x-small", frameon=False)
    else:
        ax.text(0.5, 0.5, "no gradient diversity measured", ha="center", va="center", transform=ax.transAxes)
    ax.set(xlabel="epoch", ylabel="gradient diversity Delta_hat")
    for extra in flat[n:]:
        extra.axis("off")
    fig.suptitle(f"{dataset}: batch size per method, every seed (one line per run); {protocol_note(df)}")
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


def tradeoff_points(main: pd.DataFrame, speedups: pd.DataFrame, target: str | None = None) -> pd.DataFrame:
    """One row per dataset x method x setting x unit: accuracy change and speed-up against
    small-batch SGD with their intervals, and ``pareto`` (on the dataset-and-unit Pareto front).

    Args:
        target: ``matched`` (the verdicts' target, default when the speed-up table has those rows),
            ``own`` (the authors' definition) or ``common``.
    Returns:
        Columns ``dataset, method, setting, unit, acc_change_pp, acc_low, acc_high, speedup,
        ci_low, ci_high, n_seeds, resized`` (False when the group's batch never changed in any
        seed), ``pareto``; the small-batch SGD group itself is left out. ``acc_change_pp`` is the
        primary metric's gain over small-batch SGD (> 0 better): the accuracy change in pp, or minus
        the loss change where the runs judge by a loss.
    """
    if target is None:
        target = MATCHED if len(speedups) and (speedups["target"] == MATCHED).any() else "own"
    sp = speedups[(speedups["baseline"] == SGD_SMALL) & (speedups["target"] == target)]
    sp = sp[[c for c in ("dataset", "method", "setting", "unit", "speedup", "ci_low", "ci_high", "n_seeds") if c in sp]]
    # the primary metric's gain (> 0 better; the accuracy change in pp by default)
    gain = "metric_gain_vs_sgd_small" if "metric_gain_vs_sgd_small" in main else "acc_change_vs_sgd_small_pp"
    acc = main[["dataset", "method", "setting", gain, f"{gain}_low", f"{gain}_high"]].set_axis(
        ["dataset", "method", "setting", "acc_change_pp", "acc_low", "acc_high"], axis=1
    )
    acc = acc.assign(resized=main["resized_seeds"].fillna(1).to_numpy() > 0 if "resized_seeds" in main else True)
    pts = sp.merge(acc, on=["dataset", "method", "setting"])
    pts = pts[pts["method"] != SGD_SMALL].copy()
    pts["pareto"] = False
    for _, g in pts.groupby(["dataset", "unit"]):
        pts.loc[g.index, "pareto"] = pareto_front(g, "acc_change_pp", "speedup")
    return pts.reset_index(drop=True)


MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]


def plot_speedup_vs_accuracy(main: pd.DataFrame, speedups: pd.DataFrame, target: str | None = None) -> plt.Figure:
    """Speed-up against small-batch SGD (y) versus accuracy change (x, percentage points).

    One panel per dataset (rows) and unit (columns: epochs, optimizer steps, wall-clock s); one
    point per method and setting, the marker naming the setting within a method (so settings such as
    the fixed-point estimator are never hidden under another point of the same colour), hollow when
    the group's batch never resized (not evidence); error bars = 95 % t-intervals over seeds; the
    dashed line joins the Pareto front (faster and more accurate is up and to the right). The speed-up
    is at the matched target by default (:func:`tradeoff_points`).
    """
    apply_style()
    pts = tradeoff_points(main, speedups, target)
    target = target or (MATCHED if len(speedups) and (speedups["target"] == MATCHED).any() else "own")
    datasets = sorted(pts["dataset"].unique()) or ["(none)"]
    units = list(UNITS)
    fig, axes = plt.subplots(len(datasets), len(units), figsize=(4.2 * len(units), 3.6 * len(datasets)), squeeze=False)
    palette = _palette(_methods(pts)) if len(pts) else {}
    marker = {}
    for method, g in pts.groupby("method"):
        for i, setting in enumerate(sorted(g["setting"].unique())):
            marker[(method, setting)] = MARKERS[i % len(MARKERS)]
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
                color = palette[r["method"]]
                ax.errorbar(
                    r["acc_change_pp"],
                    r["speedup"],
                    xerr=xerr,
                    yerr=yerr,
                    fmt=marker[(r["method"], r["setting"])],
                    capsize=3,
                    color=color,
                    mfc=color if r["resized"] else "none",
                    mec="black" if r["pareto"] else color,
                    alpha=0.85,
                    label=_group_label(r["method"], r["setting"]) + ("" if r["resized"] else " (never resized)"),
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
    name = {MATCHED: "matched target", "own": "own target, authors' definition", "common": "common target"}
    fig.suptitle(
        f"Speed-up vs accuracy change against small-batch SGD ({name.get(target, target)}; "
        "bars: 95 % t-intervals over seeds; hollow: batch never resized)"
    )
    return fig


def plot_speedup_vs_target(epochs: pd.DataFrame) -> plt.Figure:
    """Speed-up against small-batch SGD over a ladder of targets, on the seed-mean curves
    (:func:`divebatch.analysis.tables.target_ladder`): one row per dataset, one column per unit
    (epochs, optimizer steps, training s); one line per method and setting, the big point at its
    matched target. Read along a line: a speed-up that holds only at low targets comes from the
    early epochs, not from reaching the final quality sooner."""
    apply_style()
    datasets = sorted(epochs["dataset"].unique()) if len(epochs) else []
    ladders = {d: target_ladder(epochs, d) for d in datasets}
    datasets = [d for d in datasets if len(ladders[d])] or ["(none)"]
    units = ["epochs", "optimizer_steps", "train_time_s"]
    fig, axes = plt.subplots(len(datasets), len(units), figsize=(4.4 * len(units), 3.4 * len(datasets)), squeeze=False)
    for i, dataset in enumerate(datasets):
        lad = ladders.get(dataset, pd.DataFrame())
        palette = _palette(_methods(lad)) if len(lad) else {}
        metric = metric_of(epochs[epochs["dataset"] == dataset].iloc[0])[0] if dataset in ladders else "val_acc"
        for j, unit in enumerate(units):
            ax = axes[i, j]
            if lad.empty:
                ax.text(0.5, 0.5, "no small-batch SGD runs", ha="center", va="center", transform=ax.transAxes)
                continue
            for (method, setting), g in lad[lad["unit"] == unit].groupby(["method", "setting"], sort=False):
                g = g.sort_values("target_value")
                ax.plot(
                    g["target_value"],
                    g["speedup"],
                    "-",
                    marker=".",
                    color=palette[method],
                    label=_group_label(method, setting),
                )
                at = g[g["matched"]]
                ax.plot(at["target_value"], at["speedup"], "o", ms=8, color=palette[method], mec="black")
            ax.axhline(1, color="0.6", lw=0.8)
            if metric != "val_acc":
                ax.invert_xaxis()  # a loss: harder targets to the right
            ax.set(
                title=f"{dataset}: {MATCHED_UNITS[unit]}",
                xlabel=f"target {METRIC_LABELS.get(metric, metric)}",
                ylabel=f"speed-up vs SGD small ({MATCHED_UNITS[unit]})",
            )
    _legend_right(axes)
    fig.suptitle("Speed-up against small-batch SGD over target quality (seed-mean curves; big point: matched target)")
    return fig


def plot_sensitivity(table: pd.DataFrame) -> plt.Figure:
    """Final accuracy and speed-up (vs small-batch SGD, three units) against delta, resize_freq
    and max batch size, from :func:`divebatch.analysis.tables.sensitivity_table`.

    Columns: hyperparameters with more than one value (log x for delta, log2 for max batch size);
    rows: final accuracy (%, mean and sd over seeds), speed-up in epochs, optimizer steps and
    wall-clock s (95 % t-interval over seeds). In a grid sweep each combination of the other varied
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
    fig.suptitle("Sensitivity vs small-batch SGD (own target)\nbars: sd of accuracy, 95 % t-interval of speed-up")
    return fig


def plot_noise_scale(div: pd.DataFrame) -> plt.Figure:
    """Diversity dynamics from :func:`divebatch.analysis.tables.diversity_table`, three panels:
    n * Delta_hat = 1 + B_simple against epochs (log y); the batch size DiveBatch's rule proposes
    (delta * n * Delta_hat) against the batch size used next (on the dotted diagonal unless clipped
    by m or the max batch size); and the batch size used next divided by n * Delta_hat against
    epochs, which equals delta while the batch follows the noise scale.

    One line per run, colour = method and setting (dataset by line style): nothing is averaged, so
    groups whose estimates differ by orders of magnitude (e.g. the authors' estimator and the
    fixed-point estimator) are never averaged into one line.
    """
    apply_style()
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    if div.empty:
        for ax in axes:
            ax.text(0.5, 0.5, "no gradient diversity measured", ha="center", va="center", transform=ax.transAxes)
        return fig
    d = div.assign(
        epoch1=div["epoch"] + 1,
        follow=div["next_batch_size"] / div["n_delta"],
        group=[_group_label(m, st) for m, st in zip(div["method"], div["setting"])],
    )
    groups = list(dict.fromkeys(d.sort_values(["method", "setting"])["group"]))
    colors = dict(zip(groups, sns.color_palette("colorblind", len(groups))))
    kw = dict(hue="group", hue_order=groups, palette=colors, style="dataset", units="run_id", estimator=None)
    sns.lineplot(data=d, x="epoch1", y="n_delta", marker="o", ax=axes[0], **kw)
    axes[0].set(yscale="log", xlabel="epoch", ylabel="n * Delta_hat = 1 + B_simple")
    sns.scatterplot(
        data=d,
        x="proposed_batch",
        y="next_batch_size",
        hue="group",
        hue_order=groups,
        palette=colors,
        style="dataset",
        ax=axes[1],
    )
    both = d[["proposed_batch", "next_batch_size"]].to_numpy(float)
    lo, hi = max(1.0, float(np.nanmin(both))), float(np.nanmax(both))
    axes[1].plot([lo, hi], [lo, hi], ":", color="0.5", lw=1)
    axes[1].set(xlabel="proposed batch delta * n * Delta_hat (samples)", ylabel="batch size used next (samples)")
    _log2(axes[1], "x")
    _log2(axes[1], "y")
    sns.lineplot(data=d, x="epoch1", y="follow", marker="o", ax=axes[2], **kw)
    for delta in d["delta"].dropna().unique():
        axes[2].axhline(delta, color="0.6", lw=0.8, ls="--")
    axes[2].set(yscale="log", xlabel="epoch", ylabel="batch used next / (n * Delta_hat)")
    fig.suptitle("Gradient diversity and the noise scale, one line per run (dashed: delta)")
    _legend_right(axes[None, :])
    return fig
