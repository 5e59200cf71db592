"""The paper's layouts in a report: readable tables, the authors' figures, and writing them.

The tables themselves (and the definitions of every number in them) are
:mod:`divebatch.analysis.paper_layouts`; this module formats them (mean ± SEM [95 % t-interval] through
:func:`divebatch.analysis.formatting.estimate`), draws the authors' figures
(``plot_val_acc_and_loss_with_baseline`` and ``plot_cumulative_time_vs_accuracy`` of their plotting
notebook) and adds both to a report (:func:`write`).
"""

from __future__ import annotations

import colorsys
import importlib

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from divebatch.analysis.figures import METRIC_LABELS, band_note
from divebatch.analysis.formatting import estimate, number
from divebatch.analysis.paper_layouts import (
    CHECKPOINTS,
    MEMORY_LABELS,
    PAPER_PROFILE,
    RESCALE_SLUG,
    RESCALE_TITLE,
    check_reported,
    checkpoint_table,
    epoch_time_table,
    group_epochs,
    layout_groups,
    memory_table,
    time_to_target_table,
)
from divebatch.analysis.style import METHOD_PALETTE, apply_style, slug
from divebatch.provenance import is_paper_scale

DESCRIPTIONS = {
    "paper_time_to_target_rescale_false": (
        "The authors' time-to-target table without lr rescaling (small-batch SGD, large-batch SGD at the base "
        "lr, AdaBatch, DiveBatch): final accuracy (mean ± SEM over seeds [95% t-interval]), the first epoch "
        "whose seed-mean accuracy is within 1 point of the final seed-mean, total epochs, the seed-mean "
        "training seconds summed up to that epoch and over all epochs; the authors' values and the ratio "
        "ours / authors' for the paper profile only."
    ),
    "paper_time_to_target_rescale_true": (
        "The same table with lr rescaling (small-batch SGD, large-batch SGD at the scaled lr, AdaBatch + lr "
        "rescale, DiveBatch + lr rescale)."
    ),
    "paper_checkpoints": (
        "Validation accuracy (the primary metric) at 25, 50, 75 and 100% of training, on the seed-mean curve "
        "at the authors' epoch index int(E p / 100) - 1 (mean ± SEM [95% t-interval]); the authors' values "
        "and ratios for the paper profile only."
    ),
    "paper_epoch_time": (
        "Average training seconds per epoch per method (each run's mean over its epochs, then mean ± SEM over "
        "seeds [95% t-interval]); the authors' values and ratios for the paper profile only."
    ),
    "paper_memory": (
        "Peak memory per method in MB (each run's largest peak_memory_mb, and the authors' statistic, its mean "
        "over epochs; then mean ± SEM over seeds): CUDA allocator peak on a GPU, peak resident memory of the "
        "process on a CPU (labelled per row); the authors' GPU values and ratios for the paper profile only."
    ),
    "paper_curves": (
        "The authors' figure for {dataset}, {group}: validation accuracy and validation loss against epoch "
        "(seed mean, band ± SEM), SGD dotted as the baseline."
    ),
    "paper_time": (
        "The authors' figure for {dataset}: {metric} against cumulative training seconds (seed-mean training "
        "seconds per epoch summed), without and with lr rescaling."
    ),
}


# ----------------------------------------------------------------------------- formatting


def _stat(r: pd.Series, prefix: str, digits: int = 2) -> str:
    """``mean ± SEM [low, high]``; the mean alone with one seed; ``not run`` / ``n/a``."""
    if int(r.get("n_seeds", 0) or 0) == 0:
        return "not run"
    mean, sem = r.get(f"{prefix}_mean", np.nan), r.get(f"{prefix}_sem", np.nan)
    bounds = (r[f"{prefix}_t_low"], r[f"{prefix}_t_high"]) if np.isfinite(sem) else (np.nan, np.nan)
    return estimate(mean, sem, *bounds, spec=f".{digits}f")


def _num(value, digits: int = 2) -> str:
    return number(value if value is not None else np.nan, digits)


def _authors(r: pd.Series, quantity: str, digits: int = 2) -> str:
    value, sem = r.get(f"authors_{quantity}", np.nan), r.get(f"authors_{quantity}_sem", np.nan)
    return estimate(value, sem, spec=f".{digits}f", missing="not reported")


def _ratio(r: pd.Series, quantity: str) -> str:
    return number(r.get(f"ratio_{quantity}", np.nan), 2)


def metric_words(metric: str, higher: bool, within: float) -> tuple[str, str]:
    """``(value label, target rule)`` for column headers: ``("acc. (%)", "±1 pp")`` for accuracy,
    ``("val_loss", "+0.02")`` for a loss."""
    if metric == "val_acc":
        return "acc. (%)", f"±{within:g} pp"
    return metric, f"{'-' if higher else '+'}{within:g}"


def _metric_of_table(epochs: pd.DataFrame) -> tuple[str, str]:
    shown, _ = layout_groups(epochs)
    if shown.empty:
        return metric_words("val_acc", True, 1.0)
    first = shown.iloc[0]
    if shown["metric"].nunique() > 1:
        return "primary metric", "within its tolerance"
    return metric_words(first["metric"], first["higher"], first["within"])


def _head(r: pd.Series) -> dict:
    return {
        "Dataset": r["dataset"],
        "Method": r["method"],
        "Setting": r["setting"] or "-",
        "lr": f"{r['lr']:g}",
        "Batch size": int(r["batch_size"]),
        "Seeds": f"{int(r['n_seeds'])} ({r['seeds']})" if int(r["n_seeds"]) else "0",
    }


def format_time_to_target(table: pd.DataFrame, epochs: pd.DataFrame, authors: bool) -> pd.DataFrame:
    """Readable rows of one rescale group of :func:`time_to_target_table`."""
    value, rule = _metric_of_table(epochs)
    rows = []
    for _, r in table.iterrows():
        row = _head(r)
        ran = int(r["n_seeds"]) > 0
        row[f"Final {value}: mean ± SEM [95% t]"] = _stat(r, "final")
        if authors:
            row[f"Authors' final {value}"] = _authors(r, "final_acc")
            row["Final: ours / authors'"] = _ratio(r, "final_acc")
        row[f"Epoch to {rule}"] = _num(r.get("epochs_to_target"), 0) if ran else "not run"
        if authors:
            row["Authors' epoch"] = _authors(r, "epochs_to_1pct", 0)
            row["Epoch: ours / authors'"] = _ratio(r, "epochs_to_1pct")
        row["Total epochs"] = _num(r.get("total_epochs"), 0) if ran else "not run"
        row[f"Training s to {rule}"] = _num(r.get("seconds_to_target"), 1) if ran else "not run"
        if authors:
            row["Authors' training s"] = _authors(r, "seconds_to_1pct", 1)
            row["Training s: ours / authors'"] = _ratio(r, "seconds_to_1pct")
        row["Total training s"] = _num(r.get("total_seconds"), 1) if ran else "not run"
        rows.append(row)
    return pd.DataFrame(rows)


def format_checkpoints(table: pd.DataFrame, epochs: pd.DataFrame, authors: bool) -> pd.DataFrame:
    """Readable :func:`checkpoint_table`: per checkpoint ours (mean ± SEM [t], the epoch used) and,
    with ``authors``, theirs and the ratio."""
    value, _ = _metric_of_table(epochs)
    rows = []
    for _, r in table.iterrows():
        row = {**_head(r), "lr rescaling": r["rescale"]}
        for p in CHECKPOINTS:
            cell = _stat(r, f"at_{p}pct")
            if int(r["n_seeds"]):
                cell += f" (epoch {int(r[f'epoch_{p}'])})"
            row[f"{value} at {p}%"] = cell
            if authors:
                row[f"Authors' at {p}%"] = _authors(r, f"acc_at_{p}pct")
                row[f"{p}%: ours / authors'"] = _ratio(r, f"acc_at_{p}pct")
        rows.append(row)
    return pd.DataFrame(rows)


def format_per_run(
    table: pd.DataFrame, quantity: str, label: str, authors: bool, digits: int, authors_label: str | None = None
) -> pd.DataFrame:
    """Readable :func:`epoch_time_table` / :func:`memory_table` (``label``: the value's header,
    ``authors_label`` the authors' column's, default ``Authors' <label>``)."""
    rows = []
    for _, r in table.iterrows():
        row = {**_head(r), "lr rescaling": r["rescale"]}
        if "measured_as" in r:
            row["Measured as"] = r["measured_as"] if isinstance(r["measured_as"], str) else "not run"
        row[f"{label}: mean ± SEM [95% t]"] = _stat(r, "value", digits)
        if "epoch_mean_mean" in r:
            row["Mean over epochs of the per-epoch peak (MB; the authors' statistic)"] = _stat(r, "epoch_mean", digits)
        if authors:
            row[authors_label or f"Authors' {label}"] = _authors(r, quantity, digits)
            row["Ours / authors'"] = _ratio(r, quantity)
        rows.append(row)
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- figures


def _curve_stats(g: pd.DataFrame, column: str) -> pd.DataFrame:
    """Per epoch: mean and SEM over seeds of ``column``, and the cumulative seed-mean training seconds."""
    s = g.groupby("epoch").agg(mean=(column, "mean"), sem=(column, "sem"), train_s=("epoch_time_s", "mean"))
    return s.assign(cum_train_s=s["train_s"].cumsum()).reset_index()


def _styles(groups: pd.DataFrame) -> list[dict]:
    """Line style per group: SGD (the baseline) dotted, the others solid; a method's colour from
    :data:`~divebatch.analysis.style.METHOD_PALETTE`, darker for its second, third ... setting."""
    seen: dict[str, int] = {}
    extra = sns.color_palette("dark", len(groups) or 1)
    out = []
    for i, (_, r) in enumerate(groups.iterrows()):
        k = seen.get(r["method"], 0)
        seen[r["method"]] = k + 1
        color = METHOD_PALETTE.get(r["method"], extra[i])
        if k:
            lum = colorsys.rgb_to_hls(*color[:3])[1]
            color = sns.set_hls_values(color, l=max(0.15, lum - 0.2 * k))
        label = f"{r['method']} (lr {r['lr']:g}, batch {int(r['batch_size'])})"
        sgd = str(r.get("method_key") or "").startswith(("sgd", "adamw_small", "adamw_large"))
        out.append({"color": color, "ls": ":" if sgd else "-", "label": label, "lw": 1.6 if sgd else 1.3})
    return out


def _draw(ax, x, s: pd.DataFrame, style: dict) -> None:
    ax.plot(x, s["mean"], **style)
    if s["sem"].notna().any():
        ax.fill_between(x, s["mean"] - s["sem"], s["mean"] + s["sem"], color=style["color"], alpha=0.2, lw=0)


def plot_paper_curves(epochs: pd.DataFrame, dataset: str, rescale: bool) -> plt.Figure:
    """The authors' validation-accuracy and validation-loss figures for one dataset and rescale group.

    Args:
        epochs: tidy per-epoch table; dataset: which dataset; rescale: the group (see :func:`layout_groups`).
    Returns:
        A 1 x 2 figure: validation accuracy (%) and validation loss against epoch (1-based), seed mean
        with a band of ± 1 SEM over seeds; SGD dotted (the baseline, as the authors draw it).
    """
    apply_style()
    shown, _ = layout_groups(epochs)
    groups = shown[(shown["dataset"] == dataset) & shown["tables"].map(lambda t: rescale in t)]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for (_, grp), style in zip(groups.iterrows(), _styles(groups)):
        g = group_epochs(epochs, grp)
        for ax, column in zip(axes, ("val_acc", "val_loss")):
            s = _curve_stats(g, column)
            _draw(ax, s["epoch"] + 1, s, style)
    axes[0].set(xlabel="epoch", ylabel="validation accuracy (%)")
    axes[1].set(xlabel="epoch", ylabel="validation loss")
    for ax in axes:
        ax.grid(True, linestyle=":")
    if len(groups):
        axes[1].legend(loc="upper left", bbox_to_anchor=(1.02, 1), frameon=False, fontsize="small")
    band = band_note(epochs[epochs["dataset"] == dataset], what="± 1 SEM")
    fig.suptitle(f"{dataset}, {RESCALE_TITLE[rescale]}: seed mean, {band} (SGD dotted)")
    return fig


def plot_paper_time(epochs: pd.DataFrame, dataset: str) -> plt.Figure:
    """The authors' figure of the primary metric (validation accuracy by default) against cumulative
    training seconds (seed-mean training seconds per epoch, summed), one panel per rescale group,
    seed mean with a band of ± 1 SEM; SGD dotted."""
    apply_style()
    shown, _ = layout_groups(epochs)
    mine = shown[shown["dataset"] == dataset]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    metric = mine["metric"].iloc[0] if len(mine) else "val_acc"
    for ax, rescale in zip(axes, (False, True)):
        groups = mine[mine["tables"].map(lambda t, flag=rescale: flag in t)]
        for (_, grp), style in zip(groups.iterrows(), _styles(groups)):
            s = _curve_stats(group_epochs(epochs, grp), grp["metric"])
            _draw(ax, s["cum_train_s"], s, style)
        ax.set(title=RESCALE_TITLE[rescale], xlabel="cumulative training seconds (seed mean)")
        ax.grid(True, linestyle=":")
        if len(groups):
            ax.legend(fontsize="x-small", frameon=False)
    axes[0].set_ylabel(METRIC_LABELS.get(metric, metric))
    fig.suptitle(
        f"{dataset}: {METRIC_LABELS.get(metric, metric)} against training time "
        f"({band_note(epochs[epochs['dataset'] == dataset], what='± 1 SEM')}; SGD dotted)"
    )
    return fig


# ----------------------------------------------------------------------------- the report


def reported_for(profile: str, datasets: list[str]) -> tuple[pd.DataFrame | None, str]:
    """The authors' values for a report, or None with the reason they are left out.

    The ``paper`` profile on the paper's datasets loads them from :mod:`divebatch.analysis.authors`
    (imported here, lazily: the other profiles do not need it); every other report leaves them out.

    Returns:
        ``(reported or None, note)``: the note goes into every title.
    Raises:
        ModuleNotFoundError: the paper profile's report, and ``divebatch.analysis.authors`` cannot be imported.
        ValueError: its frame lacks a column (:func:`check_reported`).
    """
    paper_scale = is_paper_scale(",".join(datasets))
    if not paper_scale:
        return None, "authors' values left out: CPU-scale runs are not comparable with the paper's"
    if profile != PAPER_PROFILE:
        return None, f"authors' values left out: profile {profile} is not the paper protocol"
    try:
        authors = importlib.import_module("divebatch.analysis.authors")
    except ImportError as err:
        raise ModuleNotFoundError(
            "the paper profile's layouts show the authors' values beside ours and read them with "
            f"divebatch.analysis.authors.load_reported(), which cannot be imported ({err}); allowed: a checkout "
            "that has that module, or a report of another profile"
        ) from err
    return check_reported(authors.load_reported()), "with the authors' values and ours / authors'"


def write(res, table, figure) -> None:
    """Add the paper's layouts to a report (called by :func:`divebatch.analysis.report.write_report`).

    Written for every report; a sweep's grid points are rows like any other group (a report whose
    runs vary delta, e.g. the transformer's fixed-point study beside its main runs, keeps its layouts).

    Args:
        res: the report's :class:`divebatch.analysis.report.Results`; table, figure: the report's
            writers ``table(name, numeric, display, title, label)`` and ``figure(stem, fig, sentence, label)``.
    Raises:
        ModuleNotFoundError, ValueError: see :func:`reported_for`.
    """
    ep = res.runs.epochs
    if ep.empty:
        return
    shown, left_out = layout_groups(ep)
    if shown.empty:
        return
    reported, note = reported_for(res.profile, sorted(shown["dataset"].unique()))
    with_authors = reported is not None
    value, rule = _metric_of_table(ep)
    skipped = f"; left out: {len(left_out)} group(s) of the project's studies (main table)" if len(left_out) else ""
    tt = time_to_target_table(ep, reported)
    for flag in (False, True):
        part = tt[tt["rescale"] == flag].reset_index(drop=True) if len(tt) else tt
        table(
            f"paper_time_to_target_{RESCALE_SLUG[flag]}",
            part,
            format_time_to_target(part, ep, with_authors),
            f"Epochs and training seconds to within {rule} of the final seed-mean {value}, {RESCALE_TITLE[flag]} "
            f"(the authors' layout; {note}{skipped})",
        )
    cp = checkpoint_table(ep, reported)
    table(
        "paper_checkpoints",
        cp,
        format_checkpoints(cp, ep, with_authors),
        f"The primary metric ({value}) at 25, 50, 75 and 100% of training (the authors' layout; {note})",
    )
    et = epoch_time_table(ep, reported)
    table(
        "paper_epoch_time",
        et,
        format_per_run(et, "seconds_per_epoch", "training s per epoch", with_authors, 2),
        f"Average training seconds per epoch (the authors' layout; {note})",
    )
    mem = memory_table(ep, reported)
    devices = set(shown["device"])
    kind = "; ".join(MEMORY_LABELS[d] for d in sorted(devices))
    table(
        "paper_memory",
        mem,
        format_per_run(
            mem,
            "gpu_memory_mb",
            "peak memory (MB, max over epochs)",
            with_authors,
            0,
            "Authors' GPU memory (MB, mean over epochs of the per-epoch peak, seed 1)",
        ),
        f"Peak memory per method ({kind}; {note})",
    )
    for dataset in sorted(shown["dataset"].unique()):
        label = res.runs.provenance([dataset])
        for flag in (False, True):
            figure(
                f"paper_curves_{slug(dataset)}_{RESCALE_SLUG[flag]}",
                plot_paper_curves(ep, dataset, flag),
                DESCRIPTIONS["paper_curves"].format(dataset=dataset, group=RESCALE_TITLE[flag]),
                label,
            )
        metric = shown.loc[shown["dataset"] == dataset, "metric"].iloc[0]
        figure(
            f"paper_time_{slug(dataset)}",
            plot_paper_time(ep, dataset),
            DESCRIPTIONS["paper_time"].format(dataset=dataset, metric=METRIC_LABELS.get(metric, metric)),
            label,
        )
