"""Figures of the synthetic check: the knee of samples-to-target against the batch size (experiment a),
the knee against controlled diversity (experiment b), n·Δ along the gradient-descent path, and the
methods and the estimator on one problem (experiments c and d).

Each ``plot_*`` returns a matplotlib Figure; :func:`divebatch.synthetic.outputs.write_all` saves them
with the provenance footer. Suptitles name the experiment ("Experiment a"); panels are lettered
(a), (b), ... within each figure, in reading order.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from divebatch.analysis.style import METHOD_ORDER, METHOD_PALETTE
from divebatch.methods import SGD_SMALL

KIND_COLORS = {"noise": "tab:blue", "duplicate": "tab:green", "conditioning": "tab:red"}
BAND_COLOR = "tab:orange"


def _log_y(ax) -> None:
    """Log y axis with plain-number labels at 1, 2, 5 x 10^k (a short range otherwise shows none)."""
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())


def variant_title(row) -> str:
    """Two lines: the variant's name, then its data (label noise, duplication, spectrum, direction)."""
    dup = f", x{int(row['duplicate'])} dup." if row["duplicate"] > 1 else ""
    cond = f", decay {row['spectrum_decay']:g}" if row["spectrum_decay"] > 0 else ""
    cond += ", balanced u" if row.get("direction") == "balanced" and row["spectrum_decay"] > 0 else ""
    return f"{row['variant']}\n(label noise {row['label_noise']:g}{dup}{cond})"


def plot_knee(knee: dict, kcfg) -> plt.Figure:
    """Samples (top) and optimizer steps (bottom) to target against B, one column per variant."""
    s = knee["summary"].set_index("variant")
    runs = knee["runs"]
    names = list(s.index)
    # the last, narrow column holds the legend, so nothing is drawn outside the saved canvas
    fig, grid = plt.subplots(
        2,
        len(names) + 1,
        figsize=(3.8 * len(names) + 2.2, 6.8),
        squeeze=False,
        gridspec_kw={"width_ratios": [1] * len(names) + [0.6]},
    )
    axes = grid[:, :-1]
    for ax in grid[:, -1]:
        ax.axis("off")
    for j, name in enumerate(names):
        r, row = runs[runs["variant"] == name], s.loc[name]
        hit = r[r["hit"]]
        med = hit.groupby("batch_size")[["samples", "steps"]].median()
        bgrid = np.geomspace(1, row["n"], 200)
        for i, (col, ylabel) in enumerate((("samples", "samples to target"), ("steps", "optimizer steps to target"))):
            ax = axes[i, j]
            ax.axvspan(
                row["band_low"], row["band_high"], color=BAND_COLOR, alpha=0.25, lw=0, label="n·Δ at the target (band)"
            )
            ax.axvline(row["n_delta_start"], color=BAND_COLOR, ls=":", lw=1.2, label="n·Δ(w0) (start)")
            ax.scatter(hit["batch_size"], hit[col], s=10, color="0.55", alpha=0.6, label="one seed", zorder=2)
            ax.plot(med.index, med[col], "o-", color="tab:blue", ms=4, label="median over seeds", zorder=3)
            if np.isfinite(row["knee"]):
                fit = row["e_min_fit"] * (1 + bgrid / row["knee"])
                ax.plot(
                    bgrid,
                    fit if col == "samples" else fit / bgrid,
                    "--",
                    color="k",
                    lw=1,
                    label="E_min (1 + B/B_crit), medians of the seeds' fits",
                )
                ax.axvline(row["knee"], color="k", lw=1, label="knee B_crit (median of the seeds' fits)")
            if col == "steps":
                ax.axhline(row["gd_steps"], color="0.3", ls="-.", lw=1, label="full-batch GD steps to target (best lr)")
            ax.set_xscale("log", base=2)
            _log_y(ax)
            if j == 0:
                ax.set_ylabel(ylabel)
            if i == 1:
                ax.set_xlabel("batch size B (samples)")
            if i == 0:
                ax.set_title(
                    f"{variant_title(row.to_dict() | {'variant': name})}\n"
                    f"knee {row['knee']:.3g} vs n·Δ {row['n_delta_target']:.3g}",
                    fontsize=8,
                )
    handles, labels = [], []
    for ax in axes[:, 0]:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    grid[0, -1].legend(handles, labels, loc="center left", fontsize=8, frameon=False)
    fig.suptitle(
        "Experiment a, synthetic logistic regression: samples and optimizer steps to the target against the batch "
        f"size (lr: best of a grid per B; target: {knee['target_relative']:g} of the initial suboptimality)",
        fontsize=10,
    )
    return fig


def plot_knee_vs_diversity(knee: dict, kcfg) -> plt.Figure:
    """Left: fitted knee against n·Δ at the target per variant. Right: curves rescaled by n·Δ."""
    s = knee["summary"]
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4.8))
    fig.suptitle(
        "Experiment b, controlled diversity: the knee against n·Δ at the target under label noise, duplication and "
        "conditioning",
        fontsize=10,
    )
    lo = min(s["band_low"].min(), s["knee_seed_min"].min()) / 2
    hi = max(s["band_high"].max(), s["knee_seed_max"].max()) * 2
    xs = np.geomspace(lo, hi, 50)
    ax.plot(xs, xs, "k-", lw=1, label="knee = n·Δ")
    ax.fill_between(xs, xs / kcfg.tolerance, xs * kcfg.tolerance, color="0.85", label=f"within x{kcfg.tolerance:g}")
    for k, (_, r) in enumerate(s.iterrows()):
        ax.errorbar(
            r["n_delta_target"],
            r["knee"],
            xerr=[[max(r["n_delta_target"] - r["band_low"], 0)], [max(r["band_high"] - r["n_delta_target"], 0)]],
            yerr=[[max(r["knee"] - r["knee_seed_min"], 0)], [max(r["knee_seed_max"] - r["knee"], 0)]],
            fmt="o",
            color=KIND_COLORS[r["kind"]],
            capsize=3,
        )
        ax.annotate(
            r["variant"],
            (r["n_delta_target"], r["knee"]),
            textcoords="offset points",
            xytext=(6, 6 if k % 2 == 0 else -12),
            fontsize=8,
        )
    for kind, color in KIND_COLORS.items():
        if (s["kind"] == kind).any():
            ax.plot([], [], "o", color=color, label=f"{kind} variant")
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="n·Δ at the target (samples; bar: GD path to SGD iterates)",
        ylabel="knee B_crit, median of seeds (samples; bar: seed range)",
        title="(a) Knee against n·Δ at the target",
    )
    ax.legend(fontsize=8)
    runs = knee["runs"]
    palette = sns.color_palette("colorblind", len(s))
    for color, (_, r) in zip(palette, s.iterrows()):
        med = runs[(runs["variant"] == r["variant"]) & runs["hit"]].groupby("batch_size")["samples"].median()
        bx.plot(
            med.index / r["n_delta_target"],
            med / r["samples_small"],
            marker="o",
            ms=3,
            color=color,
            label=r["variant"],
            ls="--" if r["kind"] == "conditioning" else "-",
        )
    ratios = [b / r["n_delta_target"] for _, r in s.iterrows() for b in (1, r["n"])]
    u = np.geomspace(min(ratios), max(ratios), 100)
    bx.plot(u, 1 + u, "k:", lw=1.2, label="theory: 1 + B / n·Δ")
    bx.axvline(1, color=BAND_COLOR, lw=1)
    bx.set(
        xscale="log",
        yscale="log",
        xlabel="B / n·Δ at the target (GD path)",
        ylabel="samples to target / small-batch samples",
        title="(b) Every variant rescaled by its n·Δ",
    )
    bx.legend(fontsize=8)
    return fig


def plot_diversity_path(knee: dict) -> plt.Figure:
    """Exact n·Δ along the gradient-descent path from w0 against the suboptimality, per variant."""
    s = knee["summary"]
    fig, ax = plt.subplots(figsize=(9, 4.8))
    palette = sns.color_palette("colorblind", len(s))
    styles = {"noise": ("-", 1.2), "duplicate": (":", 2.5), "conditioning": ("--", 1.2)}
    for color, res in zip(palette, knee["results"]):
        v = res["variant"]
        label = v["name"] + (f" (duplicates {v['of']}: same curve)" if v["kind"] == "duplicate" else "")
        ls, lw = styles[v["kind"]]
        for k, path in enumerate(res["problems"].paths):
            ax.plot(
                path.suboptimality, path.n_delta, color=color, lw=lw, alpha=0.8, label=label if k == 0 else None, ls=ls
            )
            ax.plot(float(res["problems"].target_subopt[k]), path.n_delta_target, "o", color=color, ms=4)
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="suboptimality loss(w) - loss(w*) (nats)",
        ylabel="exact n·Δ(w) (samples)",
        title="n·Δ along the full-batch gradient-descent path (dot: at the target)",
    )
    ax.invert_xaxis()
    ax.legend(fontsize=8)
    return fig


def plot_methods(res: dict) -> plt.Figure:
    """Experiments c and d: (a) training suboptimality against epochs and (b) against optimizer steps,
    (c) the batch size used in each epoch, (d) the epoch estimator's n·Δ_hat per epoch beside exact
    n·Δ at the epoch's end (SGD small); median over seeds, one line per method."""
    traj = res["trajectories"]
    target = float(np.median(np.asarray(res["problems"].target_subopt)))
    n = res["problems"].n
    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    med = traj.groupby(["method", "epoch"], sort=False).median(numeric_only=True).reset_index()
    for name in [m for m in METHOD_ORDER if m in set(traj["method"])]:
        g, color = med[med["method"] == name], METHOD_PALETTE[name]
        ls = "--" if name.endswith("lr rescale") else "-"
        axes[0, 0].plot(g["samples_seen"] / n, g["suboptimality"], ls, color=color, label=name)
        axes[0, 1].plot(g["optimizer_steps"], g["suboptimality"], ls, color=color, label=name)
        axes[1, 0].plot(g["epoch"] + 1, g["batch_size"], ls, color=color, label=name, drawstyle="steps-post")
        axes[1, 1].plot(g["epoch"] + 1, g["n_delta_hat"], ls, color=color, label=f"{name}: estimator")
    g = med[med["method"] == SGD_SMALL]
    if len(g):
        axes[1, 1].plot(
            g["epoch"] + 1, g["n_delta_exact_end"], "k:", lw=1.2, label="exact n·Δ at epoch end (SGD small)"
        )
    for ax in axes[0]:
        ax.axhline(target, color="0.3", lw=0.8, ls=":", label="target")
        ax.set_yscale("log")
        ax.set_ylabel("training suboptimality (nats)")
    axes[0, 0].set(xlabel="epochs (samples / n)", title="(a) Suboptimality against samples")
    axes[0, 1].set(xscale="log", xlabel="optimizer steps", title="(b) Suboptimality against optimizer steps")
    axes[1, 0].set_yscale("log", base=2)
    axes[1, 0].yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axes[1, 0].set(xlabel="epoch", ylabel="batch size (samples)", title="(c) Batch size used in each epoch")
    axes[1, 1].set(
        yscale="log", xlabel="epoch", ylabel="n·Δ (samples)", title="(d) Gradient diversity: epoch estimator"
    )
    axes[0, 0].legend(fontsize=7)
    axes[1, 1].legend(fontsize=6.5)
    fig.suptitle(
        "Experiments c (panels a-c: the methods) and d (panel d: the estimator), synthetic logistic regression "
        "(median over seeds)",
        fontsize=10,
    )
    return fig


def plot_estimator(res: dict) -> plt.Figure:
    """Experiment d: the epoch estimator against exact n·Δ at the epoch's (a) start and (b) end iterate,
    one point per method, seed and epoch, with the line estimate = exact."""
    traj = (
        res["trajectories"]
        .replace([np.inf, -np.inf], np.nan)
        .dropna(subset=["n_delta_hat", "n_delta_exact_start", "n_delta_exact_end"])
    )
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.8), sharey=True)
    for ax, col, what in ((axes[0], "n_delta_exact_start", "start"), (axes[1], "n_delta_exact_end", "end")):
        for name in [m for m in METHOD_ORDER if m in set(traj["method"])]:
            g = traj[traj["method"] == name]
            ax.scatter(
                g[col],
                g["n_delta_hat"],
                s=12,
                alpha=0.7,
                color=METHOD_PALETTE[name],
                label=name,
                marker="^" if name.endswith("lr rescale") else "o",
            )
        lo = float(min(traj[col].min(), traj["n_delta_hat"].min())) / 1.5
        hi = float(max(traj[col].max(), traj["n_delta_hat"].max())) * 1.5
        ax.plot([lo, hi], [lo, hi], "k-", lw=1, label="estimate = exact")
        ax.set(
            xscale="log",
            yscale="log",
            xlabel=f"exact n·Δ at the epoch's {what} iterate (samples)",
            title=f"({'ab'[what == 'end']}) Epoch estimator against exact n·Δ at the epoch's {what}",
        )
    axes[0].set_ylabel("epoch estimator n·Δ_hat (samples)")
    axes[0].legend(fontsize=7)
    fig.suptitle("Experiment d: the authors' epoch estimator against exact n·Δ (one point per method, seed and epoch)")
    return fig


def plot_estimators(res: dict) -> plt.Figure:
    """Experiment d, every estimator: estimate / exact n·Δ at the epoch's final iterate against the
    epoch (median over seeds), one panel per method that ran."""
    from divebatch.synthetic.methods import ESTIMATOR_COLUMNS

    traj = res["trajectories"].replace([np.inf, -np.inf], np.nan)
    names = [m for m in METHOD_ORDER if m in set(traj["method"])]
    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 3.8), sharey=True, squeeze=False)
    styles = dict(zip(ESTIMATOR_COLUMNS, ("-", "--", ":")))
    for i, (ax, name) in enumerate(zip(axes[0], names)):
        g = traj[traj["method"] == name]
        for col, est in ESTIMATOR_COLUMNS.items():
            if col in g:
                ratio = (g[col] / g["n_delta_exact_end"]).groupby(g["epoch"]).median()
                ax.plot(ratio.index + 1, ratio.values, styles[col], color=METHOD_PALETTE[name], label=est)
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set(yscale="log", xlabel="epoch", title=f"({chr(ord('a') + i)}) {name}")
        ax.title.set_fontsize(8)
    axes[0, 0].set_ylabel("estimate / exact n·Δ at the epoch's end")
    axes[0, 0].legend(fontsize=6.5)
    fig.suptitle(
        "Experiment d: each diversity estimator against exact n·Δ along the methods' trajectories (median over seeds)",
        fontsize=9,
    )
    return fig
