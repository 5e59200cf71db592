"""Figures of a report: training curves, progress in optimizer steps, batch-size and diversity
dynamics, the noise scale, speed-up versus quality and versus target, sensitivity.

Each ``plot_*`` function returns a matplotlib Figure (nothing is written); :func:`write` adds the
report's figures through the report's writer, which saves them with
:func:`divebatch.analysis.style.save_figure` (provenance footer). Colours come from
:data:`divebatch.analysis.style.METHOD_PALETTE`, so a method has the same colour everywhere. Bands
are one standard deviation over seeds around the mean line (the title says so, or that a group has
one seed and no band); error bars on points are the 95 % t-intervals over seeds of
:mod:`divebatch.analysis.stats`. Every seed is drawn where a figure shows runs; estimators are never
averaged together; each optimizer family is judged against its own small-batch baseline; runs that
collapsed (:func:`collapsed_runs`) are drawn apart, so they do not stretch the axes.

Modules: :mod:`~divebatch.analysis.figures.common` (shared pieces), ``curves``, ``dynamics``,
``tradeoff``, ``sensitivity``.
"""

from __future__ import annotations

from divebatch.analysis.estimators_shadow import read_shadow
from divebatch.analysis.figures.common import (
    COLLAPSE_WITHINS,
    MARKERS,
    METRIC_LABELS,
    band_note,
    collapsed_groups,
    collapsed_runs,
    protocol_note,
    with_mean_wall_time,
)
from divebatch.analysis.figures.curves import plot_curves, plot_progress
from divebatch.analysis.figures.dynamics import plot_diversity, plot_dynamics, plot_noise_scale
from divebatch.analysis.figures.sensitivity import plot_sensitivity
from divebatch.analysis.figures.tradeoff import (
    pareto_front,
    plot_speedup_vs_accuracy,
    plot_speedup_vs_target,
    tradeoff_points,
    tradeoff_rows,
)
from divebatch.analysis.style import slug

__all__ = [
    "COLLAPSE_WITHINS",
    "DESCRIPTIONS",
    "MARKERS",
    "METRIC_LABELS",
    "band_note",
    "collapsed_groups",
    "collapsed_runs",
    "pareto_front",
    "plot_curves",
    "plot_diversity",
    "plot_dynamics",
    "plot_noise_scale",
    "plot_progress",
    "plot_sensitivity",
    "plot_speedup_vs_accuracy",
    "plot_speedup_vs_target",
    "protocol_note",
    "tradeoff_points",
    "tradeoff_rows",
    "with_mean_wall_time",
    "write",
]

# What each figure shows, one sentence (the report's generated README).
DESCRIPTIONS = {
    "curves": (
        "Validation accuracy (or the primary loss) and training loss against epochs, optimizer steps and "
        "wall-clock seconds, mean over seeds with a one-sd band (none for a group with one seed), for "
        "{dataset}; collapsed runs drawn apart."
    ),
    "progress": (
        "The primary metric against optimizer steps for {dataset}, one panel per method and setting with "
        "every seed drawn (line style = seed) and the mean over seeds, beside the small-batch baseline of "
        "its optimizer in grey (SGD methods: small-batch SGD; AdamW methods: small-batch AdamW); collapsed "
        "runs drawn apart, diverged ones counted."
    ),
    "dynamics": (
        "Batch size against epochs for {dataset}, one panel per method and setting with every seed drawn "
        "(line style = seed; the title says whether the seeds' schedules are identical)."
    ),
    "diversity_fig": (  # "diversity" is the table's
        "Gradient diversity Delta_hat over training for {dataset} (log axis), one panel per DiveBatch method "
        "and setting, marker = estimator, one line per seed; with shadow runs, every estimator and Delta(w) "
        "at the same weights in a panel of their own."
    ),
    "speedup_vs_accuracy": (
        "Speed-up against the small-batch baseline of each optimizer at matched quality versus the primary "
        "metric's change, one point per method and setting (own marker and number; hollow = batch never "
        "resized) with 95 % t-interval error bars, per dataset, optimizer and unit; the dashed line is the "
        "Pareto front; collapsed groups and points without a speed-up are marked at the axis edge."
    ),
    "speedup_vs_target": (
        "Speed-up against the small-batch baseline of each optimizer on the seed-mean curves over a ladder "
        "of target accuracies (or losses), per dataset, optimizer and unit; the marked point is each "
        "method's matched target."
    ),
    "sensitivity_fig": (
        "Final accuracy and speed-up against delta, resize frequency and max batch size (sweeps; speed-up "
        "panels only where the small-batch SGD reference ran)."
    ),
    "noise_scale": (
        "n * Delta_hat = 1 + B_simple against epochs, DiveBatch's proposed versus used batch size, and the "
        "batch size at measured epochs, one row per estimator (estimators never share an axis); one line "
        "per run, colour and marker = method and setting."
    ),
}


def write(res, roots, figure) -> None:
    """Add the report's figures (called by :func:`divebatch.analysis.report.write_report`).

    Args:
        res: the report's :class:`divebatch.analysis.report.Results`.
        roots: its run folders (the shadow runs' files for :func:`plot_diversity`), or None.
        figure: the report's writer ``figure(stem, fig, sentence, label=None)`` (label: the provenance line).
    """
    ep = res.runs.epochs
    shadow, _ = read_shadow(roots, res.profile) if roots else (None, None)
    for dataset in res.datasets:
        label = res.runs.provenance([dataset])
        stem = slug(dataset)
        figure(f"curves_{stem}", plot_curves(ep, dataset), DESCRIPTIONS["curves"].format(dataset=dataset), label)
        figure(
            f"progress_{stem}",
            plot_progress(ep, dataset, res.diverged),
            DESCRIPTIONS["progress"].format(dataset=dataset),
            label,
        )
        figure(
            f"dynamics_{stem}",
            plot_dynamics(ep, dataset, res.diverged),
            DESCRIPTIONS["dynamics"].format(dataset=dataset),
            label,
        )
        if ep.loc[ep["dataset"] == dataset, "grad_diversity"].notna().any():
            figure(
                f"diversity_{stem}",
                plot_diversity(ep, dataset, shadow),
                DESCRIPTIONS["diversity_fig"].format(dataset=dataset),
                label,
            )
    if len(res.speedups):
        figure(
            "speedup_vs_accuracy",
            plot_speedup_vs_accuracy(res.main, res.speedups, epochs=ep, comparisons=res.comparisons),
            DESCRIPTIONS["speedup_vs_accuracy"],
        )
        figure("speedup_vs_target", plot_speedup_vs_target(ep), DESCRIPTIONS["speedup_vs_target"])
    if len(res.diversity):
        figure("noise_scale", plot_noise_scale(res.diversity, ep), DESCRIPTIONS["noise_scale"])
    if res.sensitivity is not None:
        figure("sensitivity", plot_sensitivity(res.sensitivity, ep), DESCRIPTIONS["sensitivity_fig"])
