"""One look for every figure: seaborn theme, a fixed colour per method, a provenance footer, file names."""

from __future__ import annotations

import os
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import seaborn as sns  # noqa: E402

from divebatch.errors import ConfigError  # noqa: E402
from divebatch.methods import DISPLAY_ORDER  # noqa: E402

# Display names in a fixed order (divebatch.methods.VARIANTS); colours follow the order so every figure agrees.
METHOD_ORDER = list(DISPLAY_ORDER)


def _method_palette(order: list[str]) -> dict:
    """One colour per method, none used twice: the colourblind palette's ten colours first, then the
    "dark" and "muted" palettes' (a plain ``color_palette("colorblind", n)`` cycles after ten, which
    gave e.g. the schedule controls the colours of AdaBatch)."""
    pool = [*sns.color_palette("colorblind"), *sns.color_palette("dark"), *sns.color_palette("muted")]
    distinct = list(dict.fromkeys(tuple(c) for c in pool))
    return {m: distinct[i % len(distinct)] for i, m in enumerate(order)}


METHOD_PALETTE = _method_palette(METHOD_ORDER)


def apply_style() -> None:
    sns.set_theme(context="paper", style="whitegrid", font_scale=1.1)


def slug(text: str) -> str:
    """File-name-safe form of a dataset name (``cifar10-mini/n=2000`` -> ``cifar10-mini_n_2000``)."""
    return re.sub(r"[^A-Za-z0-9.-]+", "_", text).strip("_")


FIGURE_FORMATS_ENV = "DIVEBATCH_FIGURE_FORMATS"
FIGURE_FORMATS = ("png", "pdf")


def figure_formats() -> tuple[str, ...]:
    """The formats :func:`save_figure` writes: ``$DIVEBATCH_FIGURE_FORMATS``, a comma list of
    ``png`` and ``pdf`` (default both). ``png`` alone skips the PDF, about a third of a figure's
    drawing time (``benchmarks/figure_formats.py``); the test suite sets it.

    Raises:
        ConfigError: an empty list or a format other than png or pdf (naming the variable and value).
    """
    value = os.environ.get(FIGURE_FORMATS_ENV, ",".join(FIGURE_FORMATS))
    formats = tuple(f.strip() for f in value.split(",") if f.strip())
    if not formats or any(f not in FIGURE_FORMATS for f in formats):
        raise ConfigError.of(
            FIGURE_FORMATS_ENV, value, "a comma list of png | pdf, e.g. png,pdf", subject="environment"
        )
    return formats


def save_figure(fig: plt.Figure, stem: str | Path, provenance: str) -> list[Path]:
    """Write ``stem.png`` (150 dpi) and ``stem.pdf`` with the provenance label as a footer (only
    the formats of :func:`figure_formats`).

    Args:
        fig: the figure; it is closed afterwards.
        stem: output path without suffix; parent folders are created.
        provenance: from :func:`divebatch.provenance.label`.
    Returns:
        The paths written, PNG first.
    Raises:
        ConfigError: a bad ``$DIVEBATCH_FIGURE_FORMATS`` (:func:`figure_formats`).
    """
    formats = figure_formats()
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    fig.text(0.01, 0.005, provenance, fontsize=6, color="0.4", ha="left", va="bottom")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    paths = []
    if "png" in formats:
        # the label in the PNG's metadata too, so a test can check that a figure and its tables are of one run set
        paths.append(stem.with_suffix(".png"))
        fig.savefig(paths[-1], dpi=150, metadata={"Description": provenance})
    if "pdf" in formats:
        # fixed metadata so re-running on the same runs gives byte-identical PDFs
        paths.append(stem.with_suffix(".pdf"))
        fig.savefig(paths[-1], metadata={"CreationDate": None, "ModDate": None, "Producer": None, "Creator": None})
    plt.close(fig)
    return paths
