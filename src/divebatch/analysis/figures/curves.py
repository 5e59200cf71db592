"""Training curves: the primary metric and the training loss against epochs, optimizer steps and
wall-clock seconds (:func:`plot_curves`), and the primary metric against optimizer steps per
method, every seed visible, against the small-batch baseline of its optimizer (:func:`plot_progress`).
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from divebatch.analysis.figures.common import (
    FAMILY_BASELINE,
    METRIC_LABELS,
    band_note,
    collapsed_runs,
    families,
    family_of,
    grid,
    group_label,
    integer_epochs,
    join_note,
    legend_right,
    methods_of,
    palette,
    plain_log,
    protocol_note,
    seed_styles,
    with_mean_wall_time,
    wrap,
)
from divebatch.analysis.stats import metric_of
from divebatch.analysis.style import apply_style


def _line_kwargs(df: pd.DataFrame) -> dict:
    methods = methods_of(df)
    kw = dict(hue="method", hue_order=methods, palette=palette(methods), errorbar="sd")
    if df["setting"].nunique() > 1:
        kw["style"] = "setting"
    return kw


def _metric(every: pd.DataFrame) -> str:
    return metric_of(every.iloc[0])[0] if len(every) else "val_acc"


def plot_curves(epochs: pd.DataFrame, dataset: str) -> plt.Figure:
    """The dataset's primary metric (validation accuracy by default; validation loss where the
    runs declare it) and training loss against epochs, optimizer steps and wall-clock seconds.

    Args:
        epochs: tidy per-epoch table (``RunSet.epochs``).
        dataset: which dataset to draw.
    Returns:
        A 2 x 3 figure: rows metric / training loss, columns epochs / optimizer steps / wall-clock s
        (mean over seeds at each epoch; the band is one sd over seeds, none for a group with one
        seed, and the title says which); a third row draws the collapsed runs
        (:func:`~divebatch.analysis.figures.common.collapsed_runs`), one line each, when there are any.
    """
    apply_style()
    every = with_mean_wall_time(epochs[epochs["dataset"] == dataset])
    every = every.assign(epoch1=every["epoch"] + 1)
    gone = collapsed_runs(every)
    df = every[~every["run_id"].isin(gone)]
    kw = _line_kwargs(df if len(df) else every)
    fig, axes = plt.subplots(3 if gone else 2, 3, figsize=(14, 10.5 if gone else 7), squeeze=False)
    metric = _metric(every)
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
                plain_log(ax, "y", subs=(1.0, 1.5, 2.0, 3.0, 5.0, 7.0))
            if col == 0:
                integer_epochs(ax)
        axes[row, 1].sharey(axes[row, 0])
        axes[row, 2].sharey(axes[row, 0])
    if gone:
        _draw_collapsed(axes[2], every[every["run_id"].isin(gone)], rows, gone)
    fig.suptitle(f"{dataset}: curves ({join_note('mean', band_note(df), protocol_note(every))})")
    legend_right(axes)
    return fig


def _draw_collapsed(axes, c: pd.DataFrame, rows, gone: list[str]) -> None:
    """The collapsed runs of :func:`plot_curves`, one line each, on their own axes."""
    ckw = {**_line_kwargs(c), "units": "run_id", "estimator": None, "errorbar": None}
    for col, (y, ylabel) in enumerate(rows):
        sns.lineplot(data=c, x="epoch1", y=y, ax=axes[col], marker="o", **ckw)
        axes[col].set(xlabel="epoch", ylabel=ylabel, title="collapsed runs (drawn apart)")
    axes[1].set_yscale("log")
    if rows[0][0] != "val_acc":  # a loss that blew up: a log axis keeps the other runs readable
        axes[0].set_yscale("log")
    axes[2].axis("off")
    axes[2].text(
        0,
        1,
        "collapsed (final worse than the median run's first epoch\nand > 10 x tolerance below its final):\n"
        + "\n".join(gone),
        va="top",
        fontsize="small",
        transform=axes[2].transAxes,
    )


def _panels(d: pd.DataFrame) -> list[tuple[str, str, str, str | None]]:
    """``(family, method, setting, baseline)`` per panel of :func:`plot_progress`: every group but
    the families' baselines (each drawn in grey in its family's panels); the baselines themselves
    when nothing else ran."""
    out = []
    fam = family_of(d)
    for f in families(d):
        g = d[fam == f]
        base = FAMILY_BASELINE.get(f)
        base = base if base in set(g["method"]) else None
        for m in methods_of(g):
            if m == base:
                continue
            out += [(f, m, st, base) for st in sorted(g.loc[g["method"] == m, "setting"].unique())]
    if not out:
        out = [
            (f, m, st, None) for f, m, st in d[["optimizer", "method", "setting"]].drop_duplicates().itertuples(False)
        ]
    return out


def _seed_lines(ax, g: pd.DataFrame, y: str, color, styles: dict, mean_lw: float, alpha: float) -> None:
    """One thin line per seed (its line style), and the mean over seeds (x: mean steps) when there are several."""
    for seed, r in g.groupby("seed"):
        r = r.sort_values("epoch")
        ls, _ = styles[int(seed)]
        ax.plot(r["optimizer_steps"], r[y], ls=ls, lw=1.0, color=color, alpha=alpha)
    if g["seed"].nunique() > 1:
        m = g.groupby("epoch")[[y, "optimizer_steps"]].mean()
        ax.plot(m["optimizer_steps"], m[y], "-", lw=mean_lw, color=color)
    elif g["epoch"].nunique() == 1:  # one seed, one epoch: a point, not an invisible segment
        ax.plot(g["optimizer_steps"], g[y], "o", color=color)


def plot_progress(epochs: pd.DataFrame, dataset: str, diverged: pd.DataFrame | None = None) -> plt.Figure:
    """The primary metric against optimizer steps, one panel per method and setting, every seed visible.

    Each panel draws the group's seeds (one thin line each, line style = seed, legend at the right)
    and their mean (thick; x = mean steps over seeds at each epoch), beside the small-batch baseline
    of its optimizer family in grey (small-batch SGD for SGD methods, small-batch AdamW for AdamW
    methods: :data:`~divebatch.analysis.figures.common.FAMILY_BASELINE`). The y axis is shared and set
    by the runs that did not collapse; collapsed runs
    (:func:`~divebatch.analysis.figures.common.collapsed_runs`) are drawn apart in a last panel with
    their own axis, and a panel title counts its collapsed and diverged seeds (diverged runs have no
    complete curve and are not drawn).

    Args:
        epochs: tidy per-epoch table (``RunSet.epochs``).
        dataset: which dataset to draw.
        diverged: ``Results.diverged`` (``run_id, dataset, method, setting, seed``), or None.
    Returns:
        The figure (no panel when the dataset has no run: a figure that says so).
    """
    apply_style()
    d = epochs[epochs["dataset"] == dataset]
    d = d.assign(optimizer=family_of(d))
    if d.empty:
        fig, ax = plt.subplots(figsize=(5, 3))
        ax.axis("off")
        ax.text(0.5, 0.5, f"no complete run of {dataset}", ha="center", va="center")
        return fig
    metric = _metric(d)
    gone = collapsed_runs(d)
    keep = d[~d["run_id"].isin(gone)]
    panels = _panels(d)
    colors = palette(methods_of(d))
    styles = seed_styles(d["seed"])
    div = diverged[diverged["dataset"] == dataset] if diverged is not None and len(diverged) else None
    fig, axes = grid(len(panels) + bool(gone), ncols=4, width=3.9, height=3.2)
    flat = axes.ravel()
    for ax, (fam, method, setting, base) in zip(flat, panels):
        if base is not None:
            b = keep[(keep["method"] == base) & (keep["optimizer"] == fam)]
            _seed_lines(ax, b, metric, "0.55", styles, 1.8, 0.5)
            ax.plot([], [], "-", lw=1.8, color="0.55", label=f"{base} (baseline, mean)")
        g = keep[(keep["method"] == method) & (keep["setting"] == setting)]
        _seed_lines(ax, g, metric, colors[method], styles, 2.4, 0.7)
        notes = [f"{g['seed'].nunique()} seed(s)"]
        n_gone = d[(d["method"] == method) & (d["setting"] == setting) & d["run_id"].isin(gone)]["seed"].nunique()
        if n_gone:
            notes.append(f"{n_gone} collapsed (last panel)")
        if div is not None:
            n_div = len(div[(div["method"] == method) & (div["setting"] == setting)])
            notes.append(f"{n_div} diverged (not drawn)" if n_div else "")
        ax.set_title(
            f"{wrap(group_label(method, setting))}\n{wrap(', '.join(n for n in notes if n))}", fontsize="small"
        )
        ax.set(xlabel="optimizer steps (log)", ylabel=METRIC_LABELS.get(metric, metric))
    main_axes = flat[: len(panels)]
    for ax in main_axes[1:]:
        ax.sharey(main_axes[0])
        ax.sharex(main_axes[0])
    for ax in flat[: len(panels) + bool(gone)]:
        plain_log(ax, "x", subs=(1.0, 3.0))  # batch sizes 16x apart give steps 16x apart: a log axis shows both
    if gone:
        ax = flat[len(panels)]
        for run_id, r in d[d["run_id"].isin(gone)].groupby("run_id"):
            r = r.sort_values("epoch")
            ax.plot(r["optimizer_steps"], r[metric], "-o", ms=3, color=colors[r["method"].iloc[0]], label=run_id)
        ax.set(xlabel="optimizer steps (log)", ylabel=METRIC_LABELS.get(metric, metric))
        ax.set_yscale("log")
        ax.set_title("collapsed runs (drawn apart, own log axis)", fontsize="small")
    seed_ax = flat[0]
    for seed, (ls, _) in styles.items():
        seed_ax.plot([], [], ls=ls, lw=1.0, color="0.3", label=f"seed {seed} (thin)")
    seed_ax.plot([], [], "-", lw=2.4, color="0.3", label="mean over seeds (thick)")
    legend_right(axes)
    fig.suptitle(
        f"{dataset}: {METRIC_LABELS.get(metric, metric)} against optimizer steps, each method against the "
        f"small-batch baseline of its optimizer (grey); {join_note('every seed drawn', protocol_note(d))}"
    )
    return fig
