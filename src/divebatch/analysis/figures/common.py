"""What every report figure shares: colours and markers, seed line styles, title notes, legends,
log axes with plain numbers, the optimizer families and the collapsed runs drawn apart.

A *family* is the runs of one optimizer (``optim.name``), each judged against its own small-batch
baseline (:data:`FAMILY_BASELINE`: SGD methods against small-batch SGD, AdamW methods against
small-batch AdamW), so a figure never credits DiveBatch with what the optimizer does.
"""

from __future__ import annotations

import textwrap

import matplotlib.colors
import matplotlib.pyplot as plt
import matplotlib.ticker as ticker
import numpy as np
import pandas as pd
import seaborn as sns

from divebatch.analysis.collect import protocol_name
from divebatch.analysis.stats import metric_of
from divebatch.analysis.style import METHOD_ORDER, METHOD_PALETTE
from divebatch.methods import ADAMW_SMALL, SGD_SMALL

METRIC_LABELS = {"val_acc": "validation accuracy (%)", "val_loss": "validation loss (nats)"}
COLLAPSE_WITHINS = 10.0  # a run is collapsed when its final metric is this many `within` worse than the median run
# optim.name -> the small-batch baseline its methods are judged against (divebatch.analysis.groups.BASELINES)
FAMILY_BASELINE = {"sgd": SGD_SMALL, "adamw": ADAMW_SMALL}
# marker per gradient-diversity estimator (method.diversity_estimator) and per shadow-run quantity
ESTIMATOR_MARKERS = {
    "exact": "o",
    "exact_func": "o",
    "microbatch": "s",
    "fixed_point": "^",
    "fixed_point_train": "v",
    "full": "*",
    "train_bn": "D",
    "train_bn_aug": "P",
}
ESTIMATOR_LABELS = {
    "exact": "exact (authors' epoch estimator)",
    "exact_func": "exact_func (authors' epoch estimator, torch.func)",
    "microbatch": "microbatch",
    "fixed_point": "fixed_point (Δ(w), eval mode, subset)",
    "fixed_point_train": "fixed_point_train (Δ(w), train-mode BatchNorm)",
    "full": "Δ(w) over all n (same weights)",
    "train_bn": "train-mode BatchNorm, frozen weights",
    "train_bn_aug": "train-mode BatchNorm + augmentation",
}
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*", "<", ">", "h", "p"]
# one line style per seed (by its rank among the figure's seeds), widths decreasing so that seeds
# drawn on top of each other stay visible as a thick line with a thinner one inside
SEED_STYLES = [("-", 3.0), ("--", 2.2), (":", 1.8), ("-.", 1.4), ((0, (1, 1)), 1.0)]


def methods_of(df: pd.DataFrame) -> list[str]:
    """The display names in ``df["method"]``: :data:`METHOD_ORDER` first, then the others sorted."""
    present = set(df["method"]) if len(df) else set()
    return [m for m in METHOD_ORDER if m in present] + sorted(present - set(METHOD_ORDER))


def palette(methods: list[str]) -> dict:
    """Colour per method, the same in every figure (:data:`divebatch.analysis.style.METHOD_PALETTE`,
    no colour used twice); a "bright" seaborn colour for names outside it."""
    extra = sns.color_palette("bright", len(methods))
    return {m: METHOD_PALETTE.get(m, extra[i]) for i, m in enumerate(methods)}


def group_label(method: str, setting: str) -> str:
    """``method`` or ``method (setting)``."""
    return method + (f" ({setting})" if setting else "")


def wrap(text: str, width: int = 44) -> str:
    """``text`` broken into lines of at most ``width`` characters (at spaces), for panel titles."""
    return "\n".join(textwrap.wrap(text, width, break_on_hyphens=False)) or text


def family_of(df: pd.DataFrame) -> pd.Series:
    """The optimizer family (``optim.name``) of each row; ``sgd`` where the column is absent or empty."""
    if "optimizer" not in df:
        return pd.Series("sgd", index=df.index)
    return df["optimizer"].fillna("sgd").astype(str)


def families(df: pd.DataFrame) -> list[str]:
    """The families present in ``df``, SGD first."""
    present = set(family_of(df)) if len(df) else set()
    return [f for f in FAMILY_BASELINE if f in present] + sorted(present - set(FAMILY_BASELINE))


def join_note(*parts: str) -> str:
    """The non-empty parts joined by ``; ``."""
    return "; ".join(p for p in parts if p)


def protocol_note(df: pd.DataFrame) -> str:
    """Which protocol the drawn runs ran, for a title: ``protocol: authors' code``; with several,
    ``protocols: authors' code, clean (line style = setting)``; empty when no run sets one (a title
    then says nothing about it rather than ``protocol: -``)."""
    if "protocol" not in df or df.empty:
        return ""
    names = sorted({protocol_name(v) for v in df["protocol"]})
    if names == ["-"]:
        return ""
    names = [n if n != "-" else "not set" for n in names]
    return f"protocol: {names[0]}" if len(names) == 1 else f"protocols: {', '.join(names)} (line style = setting)"


def seeds_range(counts: pd.Series) -> str:
    """``3`` or ``2-3``: the number of seeds per group."""
    lo, hi = int(counts.min()), int(counts.max())
    return f"{lo}" if lo == hi else f"{lo}-{hi}"


def band_note(df: pd.DataFrame, keys=("method", "setting"), what: str = "1 sd") -> str:
    """What the band around a mean line is, for a title: ``band = 1 sd over 3 seeds`` (``what``: the
    band's half-width, e.g. ``± 1 SEM``); with one seed in every group ``one seed: no band``; with one
    seed in some ``band = 1 sd over 1-3 seeds (none with one seed)``."""
    if df.empty:
        return ""
    counts = df.groupby(list(keys))["seed"].nunique()
    if counts.max() <= 1:
        return "one seed: no band"
    note = f"band = {what} over {seeds_range(counts)} seeds"
    return note + (" (none with one seed)" if counts.min() <= 1 else "")


def seed_styles(seeds) -> dict:
    """``seed -> (linestyle, linewidth)`` by the seed's rank among ``seeds`` (cycled past five)."""
    return {s: SEED_STYLES[i % len(SEED_STYLES)] for i, s in enumerate(sorted({int(s) for s in seeds}))}


def shade(color, rank: int):
    """``color`` darkened by 30 % per ``rank`` (capped at 75 %): the later seeds' lines, drawn inside
    the earlier, wider ones, stay visible where schedules coincide."""
    r, g, b = matplotlib.colors.to_rgb(color)
    k = 1.0 - min(0.3 * rank, 0.75)
    return (r * k, g * k, b * k)


def seed_legend(ax, seeds, color: str = "0.3") -> None:
    """Add one legend entry per seed (its line style) to ``ax``'s handles."""
    for seed, (ls, lw) in seed_styles(seeds).items():
        ax.plot([], [], ls=ls, lw=lw, color=color, label=f"seed {seed}")


def legend_right(axes, fontsize: str = "small") -> None:
    """One legend for all panels, right of the top-right panel (save_figure's tight_layout makes room)."""
    axes = np.atleast_2d(axes)
    handles = {}
    for ax in axes.ravel():
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if not lab.startswith("_"):
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
            fontsize=fontsize,
        )


def plain_log(ax, axis: str = "y", base: float = 10, subs: tuple = (1.0, 2.0, 5.0)) -> None:
    """Log axis labelled with plain numbers (``0.05``, ``128``), never ``8.4 x 10^0``; base 2 for
    batch sizes (powers of two in the protocol); ``subs``: the ticks within a decade (base 10).
    Minor labels are dropped, so a short range shows a few readable ticks instead of crowded ones."""
    getattr(ax, f"set_{axis}scale")("log", base=base)
    target = ax.yaxis if axis == "y" else ax.xaxis
    if base == 10:
        target.set_major_locator(ticker.LogLocator(base=10, subs=subs, numticks=8))
    target.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    target.set_minor_formatter(ticker.NullFormatter())


def integer_epochs(ax, axis: str = "x") -> None:
    """Whole-number ticks on an epoch axis."""
    (ax.xaxis if axis == "x" else ax.yaxis).set_major_locator(ticker.MaxNLocator(integer=True))


def with_mean_wall_time(epochs: pd.DataFrame) -> pd.DataFrame:
    """Add ``wall_time_mean`` and ``steps_mean``: the mean over seeds of the cumulative wall-clock
    seconds and optimizer steps at each epoch of each dataset/method/setting, so curves against time
    or steps can be averaged over seeds at a common x."""
    key = ["dataset", "method", "setting", "epoch"]
    g = epochs.groupby(key)
    return epochs.assign(
        wall_time_mean=g["wall_time_s"].transform("mean"), steps_mean=g["optimizer_steps"].transform("mean")
    )


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


def collapsed_groups(epochs: pd.DataFrame) -> set[tuple[str, str, str]]:
    """``(dataset, method, setting)`` of the groups every one of whose runs collapsed
    (:func:`collapsed_runs`, per dataset): drawn apart in the figures of group summaries."""
    out = set()
    if epochs.empty:
        return out
    for dataset, d in epochs.groupby("dataset"):
        gone = set(collapsed_runs(d))
        for (method, setting), g in d.groupby(["method", "setting"]):
            if set(g["run_id"]) <= gone:
                out.add((dataset, method, setting))
    return out


def empty_panel(ax, text: str) -> None:
    """A panel that says why it has nothing to draw."""
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize="small")
    ax.set_xticks([])
    ax.set_yticks([])


def grid(n: int, ncols: int = 4, width: float = 3.6, height: float = 3.0, **kw):
    """``(fig, axes)``: ``n`` panels in rows of at most ``ncols``, the unused ones switched off."""
    ncols = max(1, min(ncols, n))
    nrows = -(-n // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False, **kw)
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    return fig, axes
