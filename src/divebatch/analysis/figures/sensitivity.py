"""Sensitivity of a sweep: final accuracy and speed-up against delta, resize frequency and max batch size."""

from __future__ import annotations

import matplotlib.pyplot as plt
import matplotlib.ticker as ticker
import numpy as np
import pandas as pd

from divebatch.analysis.figures.common import collapsed_runs, legend_right, methods_of, palette, wrap
from divebatch.analysis.stats import UNIT_LABELS, UNITS
from divebatch.analysis.style import apply_style
from divebatch.analysis.tables import SENSITIVITY_HPARAMS

STYLES = ["-", "--", ":", "-."]


def _rows(table: pd.DataFrame) -> tuple[list[tuple[str, str]], list[str]]:
    """The rows with data (final accuracy always; a speed-up unit only when some value is finite),
    and the units left out for want of a small-batch SGD reference."""
    rows = [("final_acc_mean", "final validation accuracy (%)")]
    missing = []
    for u in UNITS:
        col = f"speedup_{u}"
        if col in table and np.isfinite(table[col].to_numpy(float)).any():
            rows.append((col, f"speed-up vs SGD small ({UNIT_LABELS[u]})"))
        else:
            missing.append(UNIT_LABELS[u])
    return rows, missing


def _x_axis(ax, h: str, values) -> None:
    """Ticks exactly at the swept values, plain numbers (log x for delta, log2 for the max batch
    size), slanted when there are many, so labels never overlap."""
    values = sorted({float(v) for v in values if np.isfinite(v)})
    if h == "delta":
        ax.set_xscale("log")
    elif h == "max_batch_size":
        ax.set_xscale("log", base=2)
    ax.xaxis.set_major_locator(ticker.FixedLocator(values))
    ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_locator(ticker.NullLocator())
    if len(values) > 5:
        ax.tick_params(axis="x", labelrotation=45)
    if len(values) == 1:
        v = values[0]
        ax.set_xlim(v / 2, v * 2) if h in ("delta", "max_batch_size") else ax.set_xlim(v - 1, v + 1)


def collapsed_settings(table: pd.DataFrame, epochs: pd.DataFrame | None) -> pd.Series:
    """Boolean mask of ``table``'s rows whose every run collapsed
    (:func:`~divebatch.analysis.figures.common.collapsed_runs`), matched on dataset, method and the
    hyperparameters of :data:`~divebatch.analysis.tables.SENSITIVITY_HPARAMS`; all False without ``epochs``."""
    mask = pd.Series(False, index=table.index)
    if epochs is None or epochs.empty or table.empty:
        return mask
    keys = ["dataset", "method", *SENSITIVITY_HPARAMS]
    runs = epochs.drop_duplicates("run_id")
    gone = {r for _, d in epochs.groupby("dataset") for r in collapsed_runs(d)}
    runs = runs.assign(gone=runs["run_id"].isin(gone))
    every = runs.groupby(keys, dropna=False)["gone"].all()
    for i, row in table.iterrows():
        key = tuple(row.get(k) for k in keys)
        hit = [v for k, v in every.items() if all(_same(a, b) for a, b in zip(k, key))]
        mask[i] = bool(hit) and all(hit)
    return mask


def _same(a, b) -> bool:
    try:
        return bool(a == b) or (pd.isna(a) and pd.isna(b))
    except (TypeError, ValueError):
        return False


def _edge(ax, x, y, color) -> None:
    """A collapsed setting's point, held at the axis edge (its value stays in the table)."""
    lo, hi = ax.get_ylim()
    ax.plot(x, min(max(y, lo), hi), "X", ms=9, color=color, mec="black", clip_on=False, zorder=4)


def plot_sensitivity(table: pd.DataFrame, epochs: pd.DataFrame | None = None) -> plt.Figure:
    """Final accuracy and speed-up (vs small-batch SGD, three units) against delta, resize_freq
    and max batch size, from :func:`divebatch.analysis.tables.sensitivity_table`.

    Columns: hyperparameters with more than one value (log x for delta, log2 for max batch size;
    ticks at the swept values); rows: final accuracy (%, mean and sd over seeds), then speed-up in
    epochs, optimizer steps and wall-clock s (95 % t-interval over seeds), each only where it has a
    value: a sweep run without the small-batch SGD reference (``divebatch sweep --local``) has no
    speed-up, and the title says so instead of drawing empty panels. In a grid sweep each
    combination of the other varied hyperparameters is its own line (colour = method, line style =
    that combination). With ``epochs``, settings whose every run collapsed are drawn apart: a cross at
    the axis edge, left out of the axis limits and named in the title.
    """
    apply_style()
    hps = [h for h in SENSITIVITY_HPARAMS if h in table and table[h].dropna().nunique() > 1] or [SENSITIVITY_HPARAMS[0]]
    rows, missing = _rows(table)
    fig, axes = plt.subplots(len(rows), len(hps), figsize=(4.6 * len(hps), 3.0 * len(rows) + 0.6), squeeze=False)
    colors = palette(methods_of(table)) if len(table) else {}
    gone = collapsed_settings(table, epochs)
    for j, h in enumerate(hps):
        d = table[~gone].dropna(subset=[h]) if h in table else table.iloc[0:0]
        others = [o for o in hps if o != h]
        for k, (key, g) in enumerate(d.groupby(["method", *others], sort=False, dropna=False)):
            key = key if isinstance(key, tuple) else (key,)
            extra = ", ".join(f"{o}={v:g}" for o, v in zip(others, key[1:]) if np.isfinite(v))
            g = g.sort_values(h)
            for i, (col, _) in enumerate(rows):
                if col == "final_acc_mean":
                    err = g["final_acc_std"].fillna(0).to_numpy()
                else:
                    err = np.nan_to_num(np.vstack([g[col] - g[f"{col}_low"], g[f"{col}_high"] - g[col]]))
                axes[i, j].errorbar(
                    g[h],
                    g[col],
                    yerr=err,
                    fmt="o",
                    ls=STYLES[k % len(STYLES)],
                    capsize=3,
                    color=colors[key[0]],
                    label=f"{key[0]} ({extra})" if extra else key[0],
                )
        for i, (col, ylabel) in enumerate(rows):
            ax = axes[i, j]
            for _, r in table[gone].dropna(subset=[h, col]).iterrows():
                _edge(ax, r[h], r[col], colors[r["method"]])
            _x_axis(ax, h, table[h].dropna() if h in table else [])
            if col != "final_acc_mean":
                ax.axhline(1, color="0.6", lw=0.8)
            ax.set(xlabel=h, ylabel=ylabel)
    legend_right(axes)
    if len(rows) > 1:
        title = wrap("Sensitivity: final accuracy and speed-up vs small-batch SGD (own target)", 36 * len(hps) + 8)
        title += "\n" + wrap("bars: sd of accuracy, 95 % t-interval of speed-up", 36 * len(hps) + 8)
    else:
        title = "Sensitivity: final accuracy (bars: sd over seeds)"
    if gone.any():
        names = ", ".join(
            f"{r['method']} ({', '.join(f'{h}={r[h]:g}' for h in hps if pd.notna(r[h]))})"
            for _, r in table[gone].iterrows()
        )
        title += "\n" + wrap(f"collapsed, drawn at the axis edge (X): {names}", 36 * len(hps) + 8)
    if missing:
        title += "\n" + wrap(
            f"speed-up in {', '.join(missing)} not drawn: no value (it needs the small-batch SGD reference runs, "
            "which `divebatch sweep --local` does not train)",
            36 * len(hps) + 8,
        )
    fig.suptitle(title, fontsize="medium")
    return fig
