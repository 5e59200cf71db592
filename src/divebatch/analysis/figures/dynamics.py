"""Batch-size and gradient-diversity dynamics: the batch size every run used (:func:`plot_dynamics`),
the measured gradient diversity per method and estimator with the shadow runs' estimators at the
same weights (:func:`plot_diversity`), and the noise-scale view of DiveBatch's rule per estimator
(:func:`plot_noise_scale`).

Estimators are never averaged together: the authors' epoch estimator and the fixed-point estimate
Delta(w) differ by orders of magnitude (about 700x in the cpu runs), so every figure here draws one
line per run and keeps estimators apart by marker (and, in :func:`plot_noise_scale`, by row). A run
with a single measurement is drawn as a marker, and the titles say how many measurements runs have.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from divebatch.analysis.estimators import estimator_of
from divebatch.analysis.figures.common import (
    ESTIMATOR_LABELS,
    ESTIMATOR_MARKERS,
    MARKERS,
    empty_panel,
    grid,
    group_label,
    integer_epochs,
    join_note,
    legend_right,
    methods_of,
    palette,
    plain_log,
    protocol_note,
    seed_legend,
    seed_styles,
    shade,
    wrap,
)
from divebatch.analysis.stats import never_resized
from divebatch.analysis.style import apply_style

# shadow.csv's n*Delta column per quantity (divebatch.shadow): the run's estimators and Delta(w)
SHADOW_COLUMNS = {
    "exact": "n_delta_exact",
    "microbatch": "n_delta_microbatch",
    "fixed_point": "n_delta_fixed_point",
    "train_bn": "n_delta_train_bn",
    "train_bn_aug": "n_delta_train_bn_aug",
    "full": "n_delta_full",
}
SHADOW_COLORS = dict(zip(SHADOW_COLUMNS, sns.color_palette("tab10", len(SHADOW_COLUMNS))))


def _groups(df: pd.DataFrame) -> list[tuple[str, str]]:
    return [(m, st) for m in methods_of(df) for st in sorted(df.loc[df["method"] == m, "setting"].unique())]


def _schedule_note(g: pd.DataFrame) -> str:
    """``3 seed(s), never resized`` / ``identical schedules`` / ``2 distinct schedules``."""
    runs = [tuple(r.sort_values("epoch")["batch_size"]) for _, r in g.groupby("run_id")]
    note = f"{len(runs)} seed(s)"
    if all(never_resized(pd.Series(r)) for r in runs):
        return note + ", never resized"
    distinct = len(set(runs))
    if len(runs) > 1:
        note += ", identical schedules" if distinct == 1 else f", {distinct} distinct schedules"
    return note


def plot_dynamics(epochs: pd.DataFrame, dataset: str, diverged: pd.DataFrame | None = None) -> plt.Figure:
    """Batch size (samples, log2) against epochs as small multiples: one panel per method and setting,
    every seed its own step line (line style, width and shade = seed, widest and lightest first, so
    seeds that share a schedule stay visible one inside the other; the title says whether their
    schedules are identical).

    A panel whose batch never changed in any seed says so; a run with one epoch is a marker; a panel
    title counts the group's diverged seeds (no complete run: not drawn). The measured gradient
    diversity is :func:`plot_diversity`'s figure.
    """
    apply_style()
    df = epochs[epochs["dataset"] == dataset].assign(epoch1=lambda d: d["epoch"] + 1)
    groups = _groups(df) if len(df) else []
    colors = palette(methods_of(df))
    styles = seed_styles(df["seed"]) if len(df) else {}
    fig, axes = grid(max(1, len(groups)), ncols=4, width=3.6, height=3.0, sharex=True)
    flat = axes.ravel()
    top = float(df["batch_size"].max()) if len(df) else 2.0
    low = float(df["batch_size"].min()) if len(df) else 1.0
    for ax, (method, setting) in zip(flat, groups):
        g = df[(df["method"] == method) & (df["setting"] == setting)]
        for seed, r in g.groupby("seed"):
            r = r.sort_values("epoch1")
            ls, lw = styles[int(seed)]
            marker = "o" if len(r) == 1 else None
            color = shade(colors[method], list(styles).index(int(seed)))
            ax.step(r["epoch1"], r["batch_size"], where="post", color=color, ls=ls, lw=lw, marker=marker)
        note = _schedule_note(g)
        if diverged is not None and len(diverged):
            mine = (diverged["dataset"] == dataset) & (diverged["method"] == method) & (diverged["setting"] == setting)
            n_div = int(mine.sum())
            note += f", {n_div} diverged (not drawn)" if n_div else ""
        ax.set_title(f"{wrap(group_label(method, setting))}\n{note}", fontsize="small")
        plain_log(ax, "y", base=2)
        ax.set_ylim(low / 1.3, top * 1.3)
        ax.set(xlabel="epoch", ylabel="batch size (samples)")
    if not groups:
        empty_panel(flat[0], f"no complete run of {dataset}")
    if styles:
        seed_legend(flat[0], styles)
    legend_right(axes)
    fig.suptitle(
        f"{dataset}: "
        + join_note("batch size per method, every seed (line style = seed)", protocol_note(df))
        + (
            "\n(the measured gradient diversity: the report's diversity figure)"
            if df["grad_diversity"].notna().any()
            else ""
        )
    )
    return fig


def run_estimators(epochs: pd.DataFrame) -> pd.Series:
    """``run_id -> method.diversity_estimator`` of each run (from the setting label when the tidy
    table lacks the column)."""
    first = epochs.drop_duplicates("run_id").set_index("run_id")
    if "diversity_estimator" in first:
        return first["diversity_estimator"].fillna("exact").astype(str)
    return first["setting"].map(estimator_of)


def _measurement_note(counts: pd.Series) -> str:
    if counts.empty:
        return ""
    lo, hi = int(counts.min()), int(counts.max())
    if hi == 1:
        return "one measurement per run: points, no curve"
    return f"{lo}-{hi} measurements per run" if lo != hi else f"{lo} measurements per run"


def _shadow_panel(ax, shadow: pd.DataFrame, styles: dict) -> None:
    """Every quantity of the shadow runs as Delta = n*Delta / n, one line per seed, marker = estimator."""
    s = shadow.assign(epoch1=shadow["epoch"] + 1)
    for rank, (q, col) in enumerate(SHADOW_COLUMNS.items()):
        if col not in s or s[col].isna().all():
            continue
        size = 11.0 - 1.5 * rank  # drawn largest first: quantities that coincide stay visible, one inside the other
        for i, (seed, r) in enumerate(s.dropna(subset=[col]).groupby("seed")):
            r = r.sort_values("epoch1")
            ls, _ = styles.get(int(seed), ("-", 1.0))
            ax.plot(
                r["epoch1"],
                r[col] / r["n_train"],
                ls=ls,
                lw=1.0,
                marker=ESTIMATOR_MARKERS[q],
                ms=size,
                color=SHADOW_COLORS[q],
                label=f"shadow: {ESTIMATOR_LABELS[q]}" if i == 0 else None,
            )
    counts = s.groupby("seed").size()
    ax.set_title(
        "shadow runs (small-batch SGD): every\nestimator at the same weights (largest\nmarker drawn first)\n"
        + join_note(f"{s['seed'].nunique()} seed(s)", _measurement_note(counts)),
        fontsize="small",
    )


def plot_diversity(epochs: pd.DataFrame, dataset: str, shadow: pd.DataFrame | None = None) -> plt.Figure:
    """Gradient diversity over training (Delta_hat, log y), per method and estimator.

    One panel per DiveBatch method and setting with the Delta_hat its runs measured (metrics.csv's
    ``grad_diversity``), one line per run (line style = seed), marker = the run's estimator
    (``method.diversity_estimator``); and, with shadow runs (``shadow.csv``,
    :func:`divebatch.analysis.estimators.read_shadow`), one panel of every estimator and of Delta(w)
    over all n at the same weights (Delta = n*Delta / n), marker = estimator. The panels share the
    log y axis, so their magnitudes compare directly. Titles say how many measurements each run has
    (one measurement: a point, not a curve).

    Args:
        epochs: tidy per-epoch table (``RunSet.epochs``).
        dataset: which dataset.
        shadow: rows of ``shadow.csv`` with ``dataset`` and ``seed`` columns, or None.
    """
    apply_style()
    df = epochs[(epochs["dataset"] == dataset)].dropna(subset=["grad_diversity"])
    df = df.assign(epoch1=df["epoch"] + 1, estimator=df["run_id"].map(run_estimators(df)) if len(df) else "")
    sh = shadow[shadow["dataset"] == dataset] if shadow is not None and len(shadow) else pd.DataFrame()
    groups = _groups(df) if len(df) else []
    seeds = pd.concat([df["seed"], sh["seed"]]) if len(sh) else df["seed"]
    styles = seed_styles(seeds) if len(seeds) else {}
    colors = palette(methods_of(df))
    n = len(groups) + bool(len(sh))
    fig, axes = grid(max(n, 1), ncols=3, width=4.4, height=3.6, sharey=True, sharex=True)
    flat = axes.ravel()
    every = epochs.loc[epochs["dataset"] == dataset, "epoch"] + 1  # the whole training, not only measured epochs
    last = max([*every, *(sh["epoch"] + 1 if len(sh) else [])], default=1)
    for ax, (method, setting) in zip(flat, groups):
        g = df[(df["method"] == method) & (df["setting"] == setting)]
        for est, e in g.groupby("estimator"):
            for seed, r in e.groupby("seed"):
                r = r.sort_values("epoch1")
                ls, _ = styles[int(seed)]
                ax.plot(
                    r["epoch1"],
                    r["grad_diversity"],
                    ls=ls,
                    lw=1.0,
                    marker=ESTIMATOR_MARKERS.get(est, "o"),
                    ms=6,
                    color=colors[method],
                )
        note = join_note(f"{g['seed'].nunique()} seed(s)", _measurement_note(g.groupby("run_id").size()))
        ax.set_title(f"{wrap(group_label(method, setting), 38)}\n{wrap(note, 38)}", fontsize="small")
    for est in df["estimator"].unique() if len(df) else []:  # legend: the marker's meaning, in grey
        label = f"DiveBatch run: {ESTIMATOR_LABELS.get(est, est)}"
        flat[0].plot([], [], ls="none", marker=ESTIMATOR_MARKERS.get(est, "o"), color="0.4", label=label)
    if len(sh):
        _shadow_panel(flat[len(groups)], sh, styles)
    for ax in flat[:n]:
        ax.set_xlim(0.5, last + 0.5)
        integer_epochs(ax)
        plain_log(ax, "y")
        ax.set(xlabel="epoch (measured at its end)", ylabel="gradient diversity Δ_hat (log)")
    if n == 0:
        empty_panel(flat[0], "no gradient diversity measured")
    if styles:
        seed_legend(flat[0], styles)
    legend_right(axes, fontsize="x-small")
    fig.suptitle(
        f"{dataset}: gradient diversity per method and estimator\n(marker = estimator, line style = seed; "
        "estimators never averaged)"
    )
    return fig


def _noise_rows(div: pd.DataFrame, epochs: pd.DataFrame | None) -> pd.DataFrame:
    est = run_estimators(epochs) if epochs is not None and len(epochs) else pd.Series(dtype=str)
    d = div.assign(
        epoch1=div["epoch"] + 1,
        follow=div["next_batch_size"] / div["n_delta"],
        group=[group_label(m, st) for m, st in zip(div["method"], div["setting"])],
    )
    by_setting = d["setting"].map(estimator_of)
    return d.assign(estimator=d["run_id"].map(est).fillna(by_setting) if len(est) else by_setting)


def plot_noise_scale(div: pd.DataFrame, epochs: pd.DataFrame | None = None) -> plt.Figure:
    """Diversity dynamics from :func:`divebatch.analysis.tables.diversity_table`, one row of three
    panels per estimator: n * Delta_hat = 1 + B_simple against epochs (log y); the batch size
    DiveBatch's rule proposes (delta * n * Delta_hat) against the batch size used next (on the
    dotted diagonal unless clipped by m or the max batch size); and the batch size used next divided
    by n * Delta_hat against epochs, which equals delta (dashed) while the batch follows the noise scale.

    One line per run, colour and marker = method and setting (dataset by line style), so nothing is
    averaged, and estimators whose estimates differ by orders of magnitude (the authors' epoch
    estimator and the fixed-point estimator) never share an axis. A run with one measurement is a
    marker.

    Args:
        div: :func:`divebatch.analysis.tables.diversity_table`.
        epochs: the tidy table the runs come from, for each run's ``method.diversity_estimator``; None:
            the estimator is read from the setting label (the authors' when it names none).
    """
    apply_style()
    if div.empty:
        fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
        for ax in axes:
            empty_panel(ax, "no gradient diversity measured")
        return fig
    d = _noise_rows(div, epochs)
    ests = sorted(
        d["estimator"].unique(), key=lambda e: (list(ESTIMATOR_MARKERS).index(e) if e in ESTIMATOR_MARKERS else 99, e)
    )
    groups = list(dict.fromkeys(d.sort_values(["method", "setting"])["group"]))
    colors = dict(zip(groups, sns.color_palette("colorblind", len(groups))))
    markers = {g: MARKERS[i % len(MARKERS)] for i, g in enumerate(groups)}
    # drawn in group order, largest first, so that runs whose estimates coincide stay visible one inside the other
    sizes = {g: max(3.5, 9.0 - 1.2 * i) for i, g in enumerate(groups)}
    d = d.assign(_rank=d["group"].map({g: i for i, g in enumerate(groups)})).sort_values(["_rank", "run_id"])
    last = float(max(d["epoch1"].max(), epochs["epoch"].max() + 1 if epochs is not None and len(epochs) else 0))
    dstyles = dict(zip(sorted(d["dataset"].unique()), ["-", "--", ":", "-."] * 4))
    fig, axes = plt.subplots(len(ests), 3, figsize=(14, 4.0 * len(ests)), squeeze=False)
    for row, est in zip(axes, ests):
        e = d[d["estimator"] == est]
        for _, r in e.groupby("run_id", sort=False):
            r = r.sort_values("epoch1")
            group = r["group"].iloc[0]
            kw = dict(color=colors[group], marker=markers[group], ms=sizes[group])
            ls = dstyles[r["dataset"].iloc[0]]
            row[0].plot(r["epoch1"], r["n_delta"], ls=ls, lw=1.0, label=r["group"].iloc[0], **kw)
            row[1].plot(r["proposed_batch"], r["next_batch_size"], ls="none", **kw)
            row[2].plot(r["epoch1"], r["follow"], ls=ls, lw=1.0, **kw)
        _noise_axes(row, e, est)
        for ax in row[[0, 2]]:
            ax.set_xlim(0.5, last + 0.5)
            integer_epochs(ax)
    if len(dstyles) > 1:
        for ds, ls in dstyles.items():
            axes[0, 0].plot([], [], ls=ls, color="0.3", label=f"dataset {ds}")
    legend_right(axes)
    fig.suptitle(
        "Gradient diversity and the noise scale, one row per estimator, one line per run (dashed: delta)\n"
        "larger markers drawn first, so runs whose values coincide stay visible one inside the other"
    )
    return fig


def _noise_axes(row, e: pd.DataFrame, est: str) -> None:
    """Scales, the diagonal, the delta lines and labels of one row of :func:`plot_noise_scale`."""
    counts = e.groupby("run_id").size()
    row[0].set_title(wrap(join_note(ESTIMATOR_LABELS.get(est, est), _measurement_note(counts)), 50), fontsize="small")
    plain_log(row[0], "y")
    row[0].set(xlabel="epoch", ylabel="n * Delta_hat = 1 + B_simple")
    both = e[["proposed_batch", "next_batch_size"]].to_numpy(float)
    if np.isfinite(both).any():
        lo, hi = max(1.0, float(np.nanmin(both))), float(np.nanmax(both))
        row[1].plot([lo, hi], [lo, hi], ":", color="0.5", lw=1)
    row[1].set(xlabel="proposed batch delta * n * Delta_hat (samples)", ylabel="batch size used next (samples)")
    row[1].set_title(f"{est}: proposed against used", fontsize="small")
    plain_log(row[1], "x", base=2)
    plain_log(row[1], "y", base=2)
    for delta in e["delta"].dropna().unique():
        row[2].axhline(delta, color="0.6", lw=0.8, ls="--")
    plain_log(row[2], "y")
    row[2].set(xlabel="epoch", ylabel="batch used next / (n * Delta_hat)")
    row[2].set_title(f"{est}: the batch follows delta x the noise scale", fontsize="small")
