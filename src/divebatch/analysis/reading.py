"""The reading of the results in words, generated from the numbers (used by the notebooks).

Each function returns Markdown. The sentences only restate what the tables hold (which method is
on the Pareto front, how large a speed-up is and in which unit, how Delta and the batch size
move), so the words cannot drift from the numbers when the runs change.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from divebatch.analysis.claims import SLIGHT_LOSS_PP
from divebatch.analysis.comparisons import from_main
from divebatch.analysis.figures import tradeoff_points, tradeoff_rows
from divebatch.analysis.figures.tradeoff import FAMILY_NAMES
from divebatch.analysis.formatting import estimate
from divebatch.analysis.stats import UNIT_LABELS, UNITS, WITHIN_PP


def _ci(r: pd.Series, value: str, low: str, high: str, fmt: str, unit: str = "") -> str:
    return estimate(r[value], low=r[low], high=r[high], spec=fmt, unit=unit, missing=format(r[value], fmt) + unit)


def _metric_words(main: pd.DataFrame, dataset: str) -> tuple[str, str, float, str]:
    """``(quantity, unit, within, matched)`` of a dataset's primary metric, for sentences: accuracy
    in pp with the target "the lower of the two seed-mean finals - 1 pp", or a loss in nats with
    "the higher of the two seed-mean finals + 0.02 nats" (``within`` from the main table)."""
    d = main[main["dataset"] == dataset]
    metric = d["metric"].iloc[0] if "metric" in d and len(d) and isinstance(d["metric"].iloc[0], str) else "val_acc"
    w = d["metric_within"].iloc[0] if "metric_within" in d and len(d) else np.nan
    within = float(w) if pd.notna(w) else WITHIN_PP
    if metric == "val_acc":
        return "accuracy change", "pp", within, f"the lower of the two seed-mean finals - {within:g} pp"
    name = metric.replace("val_", "validation ")
    return f"{name} gain (> 0: lower)", "nats", within, f"the higher of the two seed-mean finals + {within:g} nats"


def _tradeoff_line(g: pd.DataFrame, head: str, role: str, unit_label: str, words: tuple) -> str:
    """One bullet of :func:`describe_tradeoff`: the fastest group within the quality tolerance, or by
    how much the closest misses it, and the Pareto front."""
    quantity, unit, within, _ = words
    tol = SLIGHT_LOSS_PP * within
    base = role.replace(" (small batch)", "").lower() if role else "the baseline"
    base = f"small-batch {base.replace('sgd', 'SGD').replace('adamw', 'AdamW')}"
    front = ", ".join(
        f"{r['method']}{' (' + r['setting'] + ')' if r['setting'] else ''}"
        for _, r in g[g["pareto"]].sort_values("speedup", ascending=False).iterrows()
    )
    keep = g[(g["acc_change_pp"] >= -tol) & g["resized"]]
    if keep.empty:
        closest = g.sort_values("acc_change_pp", ascending=False).iloc[0]
        return (
            f"- **{head}**: no method keeps the quality within {tol:g} {unit} of {base} (or resized its batch); "
            f"the closest, {closest['method']}, misses by {-closest['acc_change_pp'] - tol:.3g} {unit}. "
            f"Pareto front: {front or 'empty'}."
        )
    fastest = keep.sort_values("speedup", ascending=False).iloc[0]
    shown = fastest["ci_low"] > 1 or (fastest["n_seeds"] == 1 and fastest["speedup"] > 1)
    faster, why = ("faster", "its interval lies above 1") if shown else ("not shown faster", "its interval reaches 1")
    digits = "+.2f" if unit == "pp" else "+.3f"
    return (
        f"- **{head}**: the fastest within the quality tolerance is {fastest['method']} at "
        f"{_ci(fastest, 'speedup', 'ci_low', 'ci_high', '.2f', 'x')} ({faster} than {base} in {unit_label}: "
        f"{why}), with a {quantity} of {_ci(fastest, 'acc_change_pp', 'acc_low', 'acc_high', digits, ' ' + unit)}. "
        f"Pareto front (no other point is both faster and better): {front or 'empty'}."
    )


def describe_tradeoff(
    main: pd.DataFrame,
    speedups: pd.DataFrame,
    profile: str,
    comparisons: pd.DataFrame | None = None,
    epochs: pd.DataFrame | None = None,
) -> str:
    """Per dataset, optimizer family and unit: the Pareto front and the fastest method with its quality
    cost, each family against its own small-batch baseline (SGD methods against small-batch SGD, AdamW
    methods against small-batch AdamW: :func:`divebatch.analysis.figures.tradeoff_rows`), in the
    primary metric's units (percentage points of accuracy, or nats of a loss).

    Args:
        main, speedups: :func:`divebatch.analysis.tables.main_table` / ``speedup_table``.
        profile: named in the text so a reader knows the scale.
        comparisons: the long table (:func:`divebatch.analysis.comparisons.comparison_table`) the
            quality changes come from; None: read back from ``main``.
        epochs: the tidy per-epoch table, so collapsed groups stay off the Pareto front
            (:func:`divebatch.analysis.figures.tradeoff_points`); None: none is known collapsed.
    """
    rows = tradeoff_rows(main, speedups)
    if not rows:
        return "No method could be compared with a small-batch baseline in these runs (no small-batch run)."
    matched = len(speedups) and (speedups["target"] == "matched").any()
    comparisons = comparisons if comparisons is not None else from_main(main)
    lines = [
        f"Reading for profile `{profile}` (speed-ups against the small-batch baseline of each optimizer, "
        + ("at the matched target" if matched else "at the own target (the authors' definition)")
        + f"; brackets: 95 % t-interval over seeds; only methods within {SLIGHT_LOSS_PP:g} x the metric's "
        "tolerance of their baseline can be named the fastest):",
        "",
    ]
    steps, wall = [], []
    for dataset, fam, role in rows:
        words = _metric_words(main, dataset)
        target = words[3] if matched else f"own final {'-' if words[1] == 'pp' else '+'} {words[2]:g} {words[1]}"
        family = FAMILY_NAMES.get(fam, fam)
        lines.append(f"{dataset}, {family} methods against {role}; target = {target}:")
        pts = tradeoff_points(main, speedups, role=role, family=fam, comparisons=comparisons, epochs=epochs)
        pts = pts[pts["dataset"] == dataset]
        for unit in UNITS:
            g = pts[pts["unit"] == unit]
            if len(g):
                head = f"{dataset}, {family}, {UNIT_LABELS[unit]}"
                lines.append(_tradeoff_line(g, head, role, UNIT_LABELS[unit], words))
        steps += pts.loc[pts["unit"] == "optimizer_steps", "speedup"].tolist()
        wall += pts.loc[pts["unit"] == "wall_time_s", "speedup"].tolist()
        lines.append("")
    if len(steps) and len(wall) and np.nanmedian(wall) < np.nanmedian(steps):
        lines += [
            "Speed-ups in wall-clock seconds are smaller than in optimizer steps (medians "
            f"{np.nanmedian(wall):.2f}x and {np.nanmedian(steps):.2f}x): fewer, larger steps save less time "
            "than they save steps when the hardware does not process a larger batch in the same time "
            "(on CPU a step costs roughly in proportion to its batch).",
        ]
    return "\n".join(lines).rstrip() + "\n"


def noise_scale_summary(div: pd.DataFrame) -> pd.DataFrame:
    """Mean over seeds of Delta_hat, n * Delta_hat (= 1 + B_simple), DiveBatch's proposed batch and the
    batch used next, per dataset, method, setting and measured epoch (epoch 1-based)."""
    if div.empty:
        return pd.DataFrame()
    cols = ["grad_diversity", "n_delta", "b_simple", "proposed_batch", "batch_size", "next_batch_size"]
    out = div.groupby(["dataset", "method", "setting", "epoch"])[cols].mean().reset_index()
    return out.assign(epoch=out["epoch"] + 1)


def rule_agreement(div: pd.DataFrame) -> pd.DataFrame:
    """Per dataset and method: measured epochs, and how many of them were followed by the batch size
    DiveBatch's rule gives (:func:`divebatch.method.policies.divebatch_batch_size`) — a check that the runs
    applied the rule to the Delta_hat they logged."""
    d = div.dropna(subset=["rule_batch", "next_batch_size"])
    if d.empty:
        return pd.DataFrame(columns=["dataset", "method", "measured_epochs", "rule_followed"])
    return (
        d.assign(ok=d["rule_batch"] == d["next_batch_size"])
        .groupby(["dataset", "method"])
        .agg(measured_epochs=("ok", "size"), rule_followed=("ok", "sum"))
        .reset_index()
    )


def describe_dynamics(div: pd.DataFrame, profile: str) -> str:
    """How Delta_hat and the batch size move, per dataset and DiveBatch variant, in words."""
    if div.empty:
        return f"No run of profile `{profile}` measured gradient diversity (only DiveBatch does, at resize epochs)."
    s = noise_scale_summary(div)
    lines = [f"Reading for profile `{profile}`:", ""]
    for (dataset, method, setting), g in s.groupby(["dataset", "method", "setting"]):
        g = g.sort_values("epoch")
        first, last = g.iloc[0], g.iloc[-1]
        trend = "grows" if last["n_delta"] > first["n_delta"] else "shrinks or stays"
        name = f"{method}{' (' + setting + ')' if setting else ''}"
        followed = g.dropna(subset=["next_batch_size"])  # a run's last epoch has no next batch
        raw = div[(div["dataset"] == dataset) & (div["method"] == method) & (div["setting"] == setting)]
        clipped = (
            (raw["proposed_batch"] > raw["max_batch_size"]) & (raw["next_batch_size"] == raw["max_batch_size"])
        ).any()
        if len(g) == 1:  # one measurement: a value, not a trend
            text = (
                f"- **{dataset}, {name}**: n * Delta_hat (= 1 + B_simple) measured once, {first['n_delta']:.3g} "
                f"(epoch {int(first['epoch'])}, mean over seeds); the proposed batch delta * n * Delta_hat is "
                f"{first['proposed_batch']:.0f}"
            )
        else:
            text = (
                f"- **{dataset}, {name}**: n * Delta_hat (= 1 + B_simple) {trend} from {first['n_delta']:.3g} "
                f"(epoch {int(first['epoch'])}) to {last['n_delta']:.3g} (epoch {int(last['epoch'])}); the proposed "
                f"batch delta * n * Delta_hat goes from {first['proposed_batch']:.0f} to {last['proposed_batch']:.0f}"
            )
        if len(followed) == 1:
            text += (
                f", and the batch size used next is {followed['next_batch_size'].iloc[0]:.0f} (after epoch "
                f"{int(followed['epoch'].iloc[0])})"
            )
        elif len(followed) > 1:
            text += (
                f", and the batch size used next goes from {followed['next_batch_size'].iloc[0]:.0f} (after "
                f"epoch {int(followed['epoch'].iloc[0])}) to {followed['next_batch_size'].iloc[-1]:.0f} (after "
                f"epoch {int(followed['epoch'].iloc[-1])})"
            )
        lines.append(text + ("; the max batch size clipped it at least once." if clipped else "."))
    several = [g.sort_values("epoch") for _, g in s.groupby(["dataset", "method", "setting"]) if len(g) > 1]
    grows = sum(g["n_delta"].iloc[-1] > g["n_delta"].iloc[0] for g in several)
    total = len(several)
    lines += [
        "",
        f"n * Delta_hat grows over training in {grows} of {total} group(s) measured more than once. McCandlish et al. (2018) "
        "observe the noise scale B_simple growing as the loss falls; DiveBatch's batch size "
        "delta * n * Delta_hat = delta * (1 + B_simple) then follows it, a fraction delta of the noise scale, "
        "until the max batch size stops it.",
    ]
    return "\n".join(lines)
