"""Speed against quality: speed-up versus the primary metric's change against the small-batch
baseline (:func:`plot_speedup_vs_accuracy`, with :func:`tradeoff_points` and :func:`pareto_front`),
and speed-up over a ladder of targets (:func:`plot_speedup_vs_target`).

Each optimizer family is judged against its own small-batch baseline (SGD methods against
small-batch SGD, AdamW methods against small-batch AdamW), one row of panels each. Every method and
setting is visible: its own marker and number (the legend maps numbers to names; points that
overlap share one label, e.g. ``3,5``), no jitter. Collapsed groups, and points whose speed-up is
undefined because a curve never reached the target, are marked at the axis edge with their value
and left out of the axis limits.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from divebatch.analysis.comparisons import ACC_CHANGE, METRIC_GAIN, from_main
from divebatch.analysis.figures.common import (
    FAMILY_BASELINE,
    MARKERS,
    METRIC_LABELS,
    collapsed_groups,
    collapsed_runs,
    empty_panel,
    families,
    family_of,
    group_label,
    legend_right,
    methods_of,
    palette,
    plain_log,
)
from divebatch.analysis.speedups import MATCHED, target_ladder
from divebatch.analysis.stats import MATCHED_UNITS, UNIT_LABELS, UNITS, metric_of
from divebatch.analysis.style import apply_style
from divebatch.methods import SGD_SMALL

SHORT = {"SGD (small batch)": "SGD small", "AdamW (small batch)": "AdamW small"}
FAMILY_NAMES = {"sgd": "SGD", "adamw": "AdamW"}
TARGET_NAMES = {MATCHED: "matched target", "own": "own target, authors' definition", "common": "common target"}
CI_CLIP = 8.0  # error bars beyond this factor of the drawn points' range are cut at the axis (and said so)


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


def _default_target(speedups: pd.DataFrame) -> str:
    return MATCHED if len(speedups) and (speedups["target"] == MATCHED).any() else "own"


def _gains(main: pd.DataFrame, comparisons: pd.DataFrame | None, role: str) -> pd.DataFrame:
    """``dataset, method, setting, acc_change_pp, acc_low, acc_high`` against ``role``: the long table's
    ``metric_gain`` rows (:mod:`divebatch.analysis.comparisons`; read back from ``main`` when
    ``comparisons`` is None), its ``acc_change`` rows where it has no ``metric_gain``."""
    long = comparisons if comparisons is not None else from_main(main)
    long = long[long["baseline"] == role]
    quantity = METRIC_GAIN if (long["quantity"] == METRIC_GAIN).any() else ACC_CHANGE
    rows = long[long["quantity"] == quantity]
    names = ["dataset", "method", "setting", "acc_change_pp", "acc_low", "acc_high"]
    return rows[["dataset", "method", "setting", "value", "low", "high"]].set_axis(names, axis=1)


def tradeoff_points(
    main: pd.DataFrame,
    speedups: pd.DataFrame,
    target: str | None = None,
    role: str = SGD_SMALL,
    family: str | None = None,
    comparisons: pd.DataFrame | None = None,
    epochs: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """One row per dataset x method x setting x unit: the primary metric's change and the speed-up
    against the baseline ``role`` with their intervals, and ``pareto`` (on the dataset-and-unit front
    of the groups that did not collapse).

    Args:
        target: ``matched`` (the verdicts' target, default when the speed-up table has those rows),
            ``own`` (the authors' definition) or ``common``.
        role: the baseline (:data:`divebatch.analysis.groups.BASELINES`): small-batch SGD by default,
            ``AdamW (small batch)`` for the AdamW methods.
        family: keep only the groups of this optimizer (``optim.name``); None: every group.
        comparisons: the long table (:func:`divebatch.analysis.comparisons.comparison_table`); None:
            read back from ``main`` (:func:`divebatch.analysis.comparisons.from_main`).
        epochs: the tidy per-epoch table (``RunSet.epochs``) to find the collapsed groups
            (:func:`divebatch.analysis.figures.common.collapsed_groups`); None: none is known collapsed.
    Returns:
        Columns ``dataset, method, setting, unit, acc_change_pp, acc_low, acc_high, speedup,
        ci_low, ci_high, n_seeds, resized`` (False when the group's batch never changed in any
        seed), ``collapsed`` (every run of the group collapsed: never on the front, however fast its
        speed-up to an own target it barely left), ``pareto``; the baseline group itself is left out. ``acc_change_pp`` is the
        primary metric's gain over the baseline (> 0 better, the long table's ``metric_gain``): the
        accuracy change in pp, or minus the loss change where the runs judge by a loss.
    """
    target = target or _default_target(speedups)
    sp = speedups[(speedups["baseline"] == role) & (speedups["target"] == target)] if len(speedups) else speedups
    sp = sp[[c for c in ("dataset", "method", "setting", "unit", "speedup", "ci_low", "ci_high", "n_seeds") if c in sp]]
    m = main if family is None else main[family_of(main) == family]
    resized = m["resized_seeds"].fillna(1).to_numpy() > 0 if "resized_seeds" in m else True
    groups = m[["dataset", "method", "setting"]].assign(resized=resized)
    acc = _gains(main, comparisons, role).merge(groups, on=["dataset", "method", "setting"])
    pts = sp.merge(acc, on=["dataset", "method", "setting"])
    pts = pts[pts["method"] != role].copy()
    gone = _collapsed_keys(epochs)
    pts["collapsed"] = [k in gone for k in zip(pts["dataset"], pts["method"], pts["setting"].fillna(""))]
    pts["pareto"] = False
    for _, g in pts[~pts["collapsed"]].groupby(["dataset", "unit"]):
        pts.loc[g.index, "pareto"] = pareto_front(g, "acc_change_pp", "speedup")
    return pts.reset_index(drop=True)


def tradeoff_rows(main: pd.DataFrame, speedups: pd.DataFrame) -> list[tuple[str, str, str]]:
    """``(dataset, family, baseline role)`` per row of panels: each family against its own small-batch
    baseline where that baseline ran, else against small-batch SGD."""
    rows = []
    for dataset in sorted(main["dataset"].unique()) if len(main) else []:
        d = main[main["dataset"] == dataset]
        bases = set(speedups.loc[speedups["dataset"] == dataset, "baseline"]) if len(speedups) else set()
        for fam in families(d):
            role = FAMILY_BASELINE.get(fam, SGD_SMALL)
            role = role if role in bases else SGD_SMALL
            if (d.loc[family_of(d) == fam, "method"] != role).any():
                rows.append((dataset, fam, role))
    return rows


def _clusters(xs: np.ndarray, ys: np.ndarray, xspan: float, yspan: float) -> list[list[int]]:
    """Indices of points that (nearly) coincide on the drawn axes (within 4 % of each axis' span; y in log)."""
    left = list(range(len(xs)))
    out = []
    while left:
        i = left.pop(0)
        same = [j for j in left if abs(xs[j] - xs[i]) <= 0.04 * xspan and abs(ys[j] - ys[i]) <= 0.04 * yspan]
        left = [j for j in left if j not in same]
        out.append([i, *same])
    return out


def _limits(values: np.ndarray, lows: np.ndarray, highs: np.ndarray, log: bool) -> tuple[float, float]:
    """Axis limits around the drawn points and their intervals, intervals cut at :data:`CI_CLIP` x the
    points' range (log axes: a factor; linear: a span)."""
    v = values[np.isfinite(values)]
    if not len(v):
        return (0.5, 2.0) if log else (-1.0, 1.0)
    lo, hi = float(v.min()), float(v.max())
    if log:
        lo_b, hi_b = lo / CI_CLIP, hi * CI_CLIP
    else:
        span = max(hi - lo, 1e-9, 0.5 * max(abs(lo), abs(hi)))
        lo_b, hi_b = lo - span, hi + span
    ends = np.concatenate([v, lows[np.isfinite(lows)], highs[np.isfinite(highs)]])
    lo, hi = max(float(ends.min()), lo_b), min(float(ends.max()), hi_b)
    if log:
        lo, hi = min(lo, 1.0), max(hi, 1.0)  # the reference line speed-up 1 stays on the axis
        return lo / 1.25, hi * 1.25
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    pad = 0.06 * (hi - lo or 1.0)
    return lo - pad, hi + pad


def _bar(value: float, low: float, high: float, lim: tuple[float, float]) -> tuple[list | None, list[float]]:
    """Error-bar extents of one point cut at the axis limits, and the limits where a bar was cut."""
    if not (np.isfinite(low) and np.isfinite(high)):
        return None, []
    lo, hi = max(low, lim[0]), min(high, lim[1])
    cut = [lim[0]] * (low < lim[0]) + [lim[1]] * (high > lim[1])
    return [[max(value - lo, 0.0)], [max(hi - value, 0.0)]], cut


def _draw_point(ax, r: pd.Series, x: float, y: float, style: tuple, lims: tuple | None) -> None:
    """One group's point; with ``lims`` (``(xlim, ylim)``) its error bars, cut at the axis with an
    arrowhead where the interval goes on (None: a point at the axis edge, without bars)."""
    marker, color = style
    xerr = yerr = None
    if lims is not None:
        xerr, xcut = _bar(x, r["acc_low"], r["acc_high"], lims[0])
        yerr, ycut = _bar(y, r["ci_low"], r["ci_high"], lims[1])
        for end in xcut:
            ax.plot(end, y, "<" if end == lims[0][0] else ">", color=color, ms=6, clip_on=False, zorder=2)
        for end in ycut:
            ax.plot(x, end, "v" if end == lims[1][0] else "^", color=color, ms=6, clip_on=False, zorder=2)
    ax.errorbar(
        x,
        y,
        xerr=xerr,
        yerr=yerr,
        fmt=marker,
        ms=8,
        capsize=3,
        color=color,
        mfc=color if r["resized"] else "white",
        mec="black" if r["pareto"] else color,
        mew=1.5,
        alpha=0.9,
        clip_on=False,
        zorder=3,
    )


def _panel(ax, g: pd.DataFrame, number: dict, marker: dict, colors: dict, gone: set) -> str:
    """One dataset x unit panel of :func:`plot_speedup_vs_accuracy`; returns a note of what sits at
    the axis edge ('' when nothing)."""
    ok = g[~g["key"].isin(gone) & np.isfinite(g["speedup"]) & np.isfinite(g["acc_change_pp"])]
    xlim = _limits(
        ok["acc_change_pp"].to_numpy(float), ok["acc_low"].to_numpy(float), ok["acc_high"].to_numpy(float), False
    )
    ylim = _limits(ok["speedup"].to_numpy(float), ok["ci_low"].to_numpy(float), ok["ci_high"].to_numpy(float), True)
    edge, xs, ys, ids = [], [], [], []
    for _, r in g.iterrows():
        k = number[r["key"]]
        x, y, lims = r["acc_change_pp"], r["speedup"], (xlim, ylim)
        if r["key"] in gone or not np.isfinite(x):
            edge.append(f"{k}: {x:+.3g} (collapsed)" if r["key"] in gone else f"{k}: no metric change")
            x, lims = xlim[0], None
        if not np.isfinite(y):
            edge.append(f"{k}: no speed-up (never reached the target)")
            y, lims = ylim[0], None
        _draw_point(ax, r, x, y, (marker[r["key"]], colors[r["method"]]), lims)
        xs.append(x)
        ys.append(np.log(y))
        ids.append(k)
    front = ok[ok["pareto"]].sort_values("acc_change_pp")
    if len(front) > 1:
        ax.plot(front["acc_change_pp"], front["speedup"], "--", color="0.5", lw=1, zorder=1)
    ax.axhline(1, color="0.6", lw=0.8, zorder=0)
    ax.axvline(0, color="0.6", lw=0.8, zorder=0)
    plain_log(ax, "y")
    ax.set_xlim(*xlim)
    ax.set_ylim(*ylim)
    xs, ys = np.array(xs, float), np.array(ys, float)
    for c in _clusters(xs, ys, xlim[1] - xlim[0], np.log(ylim[1] / ylim[0])):
        ax.annotate(
            ",".join(str(ids[i]) for i in sorted(c, key=lambda i: ids[i])),
            (xs[c[0]], np.exp(ys[c[0]])),
            textcoords="offset points",
            xytext=(6, 5),
            fontsize="x-small",
            annotation_clip=False,
        )
    return "; ".join(edge)


def plot_speedup_vs_accuracy(
    main: pd.DataFrame,
    speedups: pd.DataFrame,
    target: str | None = None,
    epochs: pd.DataFrame | None = None,
    comparisons: pd.DataFrame | None = None,
) -> plt.Figure:
    """Speed-up against the small-batch baseline (y, log) versus the primary metric's change (x: the
    accuracy change in percentage points, or the loss gain in nats).

    One row of panels per dataset and optimizer family (SGD methods against small-batch SGD, AdamW
    methods against small-batch AdamW), one column per unit (epochs, optimizer steps, wall-clock s).
    One point per method and setting: colour = method, its own marker and number (legend: number ->
    name; overlapping points share one label such as ``3,5``), hollow when the group's batch never
    resized (not evidence), black edge on the Pareto front (dashed line; up and right is better).
    Error bars = 95 % t-intervals over seeds, cut at the axis beyond :data:`CI_CLIP` x the points'
    range. Collapsed groups (every run collapsed; needs ``epochs``) and points without a speed-up
    (a curve never reached the target) sit at the left / bottom edge, hollow of error bars, and the
    panel says so. The speed-up is at the matched target by default, the quality change from the long
    table ``comparisons`` (None: read back from ``main``; :func:`tradeoff_points`).
    """
    apply_style()
    target = target or _default_target(speedups)
    rows = tradeoff_rows(main, speedups)
    units = list(UNITS)
    fig, axes = plt.subplots(
        max(1, len(rows)), len(units), figsize=(5.2 * len(units), 4.2 * max(1, len(rows))), squeeze=False
    )
    gone = _collapsed_keys(epochs)
    comparisons = comparisons if comparisons is not None else from_main(main)
    per_row = [_row_points(main, speedups, target, row, comparisons, epochs) for row in rows]
    keys = list(dict.fromkeys(k for pts in per_row for k in pts["key"]))  # one number per group in the figure
    number = {k: n + 1 for n, k in enumerate(keys)}
    marker = {k: MARKERS[n % len(MARKERS)] for n, k in enumerate(keys)}
    colors = palette(methods_of(pd.DataFrame({"method": [k[1] for k in keys]})))
    for i, ((dataset, fam, role), pts) in enumerate(zip(rows, per_row)):
        for k in dict.fromkeys(pts["key"]):
            r = pts[pts["key"] == k].iloc[0]
            tag = ("" if r["resized"] else ", never resized") + (", collapsed" if k in gone else "")
            face = colors[k[1]] if r["resized"] else "white"
            label = f"{number[k]}: {group_label(k[1], k[2])}{tag}"
            axes[i, 0].plot([], [], marker[k], color=colors[k[1]], mfc=face, label=label)
        xlabel = _xlabel(main[main["dataset"] == dataset], role)
        for j, unit in enumerate(units):
            ax = axes[i, j]
            edge = _panel(ax, pts[pts["unit"] == unit], number, marker, colors, gone)
            ax.set(xlabel=xlabel, ylabel=f"speed-up vs {SHORT.get(role, role)} (log)")
            title = f"{dataset}\n{FAMILY_NAMES.get(fam, fam)} methods, {UNIT_LABELS[unit]}"
            ax.set_title(title + (f"\nat the edge: {edge}" if edge else ""), fontsize="small")
    if not rows:
        empty_panel(axes[0, 0], "no method to compare with a small-batch baseline")
    legend_right(axes, fontsize="x-small")
    fig.suptitle(
        f"Speed-up vs quality change against the small-batch baseline of each optimizer ({TARGET_NAMES.get(target, target)})\n"
        "x > 0: better than the baseline (a loss: lower); bars: 95 % t-intervals over seeds (arrowhead: cut at the "
        "axis)\nhollow: batch never resized; black edge: Pareto front; numbers: legend (2,5: points that overlap)"
    )
    return fig


def _row_points(
    main: pd.DataFrame,
    speedups: pd.DataFrame,
    target: str,
    row: tuple,
    comparisons: pd.DataFrame,
    epochs: pd.DataFrame | None,
) -> pd.DataFrame:
    """:func:`tradeoff_points` of one row of panels, in method order, with a ``key`` column
    ``(dataset, method, setting)``."""
    dataset, fam, role = row
    pts = tradeoff_points(main, speedups, target, role, fam, comparisons, epochs)
    pts = pts[pts["dataset"] == dataset]
    pts = pts.assign(key=list(zip(pts["dataset"], pts["method"], pts["setting"])))
    return pts.sort_values(["method", "setting"], key=_method_rank, kind="stable")


def _method_rank(col: pd.Series) -> pd.Series:
    if col.name != "method":
        return col
    order = {m: i for i, m in enumerate(methods_of(pd.DataFrame({"method": col})))}
    return col.map(order)


def _collapsed_keys(epochs: pd.DataFrame | None) -> set:
    return collapsed_groups(epochs) if epochs is not None else set()


def _xlabel(d: pd.DataFrame, role: str) -> str:
    metric = d["metric"].iloc[0] if "metric" in d and len(d) else "val_acc"
    base = SHORT.get(role, role)
    if metric == "val_acc":
        return f"accuracy change vs {base} (pp)"
    name, _, unit = METRIC_LABELS.get(metric, metric).partition(" (")
    return f"{name.replace('validation', 'val.')} gain vs {base}" + (f" ({unit.rstrip(')')})" if unit else "")


def _ladder_limits(d: pd.DataFrame, column: str, higher: bool) -> float:
    """The first-epoch seed-mean value of the worst group, over the runs that did not collapse: the
    far end of the target axis (easier targets than that are off the axis)."""
    gone = collapsed_runs(d)
    first = d[~d["run_id"].isin(gone)].sort_values("epoch").groupby("run_id").first()
    by_group = first.groupby(["method", "setting"])[column].mean()
    return float(by_group.min() if higher else by_group.max())


def plot_speedup_vs_target(epochs: pd.DataFrame) -> plt.Figure:
    """Speed-up against the small-batch baseline over a ladder of targets, on the seed-mean curves
    (:func:`divebatch.analysis.speedups.target_ladder`): one row per dataset and optimizer family (each
    against its own small-batch baseline), one column per unit (epochs, optimizer steps, training s);
    one line per method and setting, the big point at its matched target, log y. Read along a line:
    a speed-up that holds only at easy targets comes from the early epochs, not from reaching the final
    quality sooner. The target axis ends at the worst first-epoch seed-mean value of the runs that did
    not collapse, so a collapsed run does not stretch it."""
    apply_style()
    d_all = epochs.assign(optimizer=family_of(epochs)) if len(epochs) else epochs
    rows = []
    for dataset in sorted(d_all["dataset"].unique()) if len(d_all) else []:
        d = d_all[d_all["dataset"] == dataset]
        for fam in families(d):
            role = FAMILY_BASELINE.get(fam, SGD_SMALL)
            sub = d[d["optimizer"] == fam]
            lad = target_ladder(sub, dataset, role=role)
            if lad.empty and role != SGD_SMALL:  # no small-batch run of this optimizer: against small-batch SGD
                role, sub = SGD_SMALL, d
                lad = target_ladder(d, dataset, role=role)
                lad = lad[lad["method"].isin(set(d.loc[d["optimizer"] == fam, "method"]))]
            if len(lad):
                rows.append((dataset, fam, role, sub, lad))
    units = list(MATCHED_UNITS)[:3]
    fig, axes = plt.subplots(
        max(1, len(rows)), len(units), figsize=(4.8 * len(units), 3.8 * max(1, len(rows))), squeeze=False
    )
    for i, (dataset, fam, role, sub, lad) in enumerate(rows):
        column, higher, _ = metric_of(sub.iloc[0])
        far = _ladder_limits(sub, column, higher)
        colors = palette(methods_of(lad))
        for j, unit in enumerate(units):
            ax = axes[i, j]
            for (method, setting), g in lad[lad["unit"] == unit].groupby(["method", "setting"], sort=False):
                g = g.sort_values("target_value")
                ax.plot(
                    g["target_value"],
                    g["speedup"],
                    "-",
                    marker=".",
                    color=colors[method],
                    label=group_label(method, setting),
                )
                at = g[g["matched"]]
                ax.plot(at["target_value"], at["speedup"], "o", ms=8, color=colors[method], mec="black")
            ax.axhline(1, color="0.6", lw=0.8)
            plain_log(ax, "y")
            near = float(lad["target_value"].max() if higher else lad["target_value"].min())
            span = abs(near - far) or 1.0
            lo, hi = sorted((far, near))
            ax.set_xlim(lo - 0.04 * span, hi + 0.04 * span)
            if not higher:
                ax.invert_xaxis()  # a loss: harder targets to the right
            ax.set(
                title=f"{dataset}\n{FAMILY_NAMES.get(fam, fam)} methods, {MATCHED_UNITS[unit]}",
                xlabel=f"target {METRIC_LABELS.get(column, column)}",
                ylabel=f"speed-up vs {SHORT.get(role, role)} ({MATCHED_UNITS[unit]})",
            )
            ax.title.set_fontsize("small")
    if not rows:
        empty_panel(axes[0, 0], "no small-batch baseline runs")
    legend_right(axes)
    fig.suptitle(
        "Speed-up against the small-batch baseline of each optimizer over target quality (seed-mean curves)\n"
        "big point: matched target; the target axis starts at the worst first epoch of the runs that did not collapse"
    )
    return fig
