"""The reading of the results in words, generated from the numbers (used by the notebooks).

Each function returns Markdown. The sentences only restate what the tables hold (which method is
on the Pareto front, how large a speed-up is and in which unit, how Delta and the batch size
move), so the words cannot drift from the numbers when the runs change.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from divebatch.analysis.claims import SLIGHT_LOSS_PP
from divebatch.analysis.figures import tradeoff_points
from divebatch.analysis.formatting import estimate
from divebatch.analysis.stats import UNIT_LABELS, UNITS, WITHIN_PP


def _ci(r: pd.Series, value: str, low: str, high: str, fmt: str, unit: str = "") -> str:
    return estimate(r[value], low=r[low], high=r[high], spec=fmt, unit=unit, missing=format(r[value], fmt) + unit)


def describe_tradeoff(main: pd.DataFrame, speedups: pd.DataFrame, profile: str) -> str:
    """Per dataset and unit: the Pareto front and the fastest method with its accuracy cost.

    Args:
        main, speedups: :func:`divebatch.analysis.tables.main_table` / ``speedup_table``.
        profile: named in the text so a reader knows the scale.
    """
    pts = tradeoff_points(main, speedups)
    if pts.empty:
        return "No method could be compared with small-batch SGD in these runs (no small-batch SGD group)."
    matched = len(speedups) and (speedups["target"] == "matched").any()
    lines = [
        f"Reading for profile `{profile}` (speed-ups against small-batch SGD, "
        + (
            "at the matched target = the lower of the two seed-mean finals - 1 pp"
            if matched
            else "own target = final - 1 pp (the authors' definition)"
        )
        + f"; brackets: 95 % t-interval over seeds; only methods within {SLIGHT_LOSS_PP:g} pp of small-batch "
        "SGD can be named the fastest):",
        "",
    ]
    for dataset, d in pts.groupby("dataset"):
        within = main.loc[main["dataset"] == dataset, "metric_within"] if "metric_within" in main else pd.Series()
        tol = SLIGHT_LOSS_PP * (float(within.iloc[0]) if len(within) and pd.notna(within.iloc[0]) else WITHIN_PP)
        for unit in UNITS:
            g = d[d["unit"] == unit]
            if g.empty:
                continue
            front = ", ".join(
                f"{r['method']}{' (' + r['setting'] + ')' if r['setting'] else ''}"
                for _, r in g[g["pareto"]].sort_values("speedup", ascending=False).iterrows()
            )
            keep = g[(g["acc_change_pp"] >= -tol) & g["resized"]]
            if keep.empty:
                closest = g.sort_values("acc_change_pp", ascending=False).iloc[0]
                lines.append(
                    f"- **{dataset}, {UNIT_LABELS[unit]}**: no method keeps the quality within {tol:g} of "
                    f"small-batch SGD (or resized its batch); the closest, {closest['method']}, misses by "
                    f"{-closest['acc_change_pp'] - tol:.2f}. Pareto front: {front or 'empty'}."
                )
                continue
            fastest = keep.sort_values("speedup", ascending=False).iloc[0]
            faster = (
                "faster"
                if fastest["ci_low"] > 1 or (fastest["n_seeds"] == 1 and fastest["speedup"] > 1)
                else "not shown faster"
            )
            lines.append(
                f"- **{dataset}, {UNIT_LABELS[unit]}**: the fastest within the quality tolerance is {fastest['method']} at "
                f"{_ci(fastest, 'speedup', 'ci_low', 'ci_high', '.2f', 'x')} ({faster} than small-batch SGD in "
                f"{UNIT_LABELS[unit]}: interval above 1), with an accuracy change of "
                f"{_ci(fastest, 'acc_change_pp', 'acc_low', 'acc_high', '+.2f', ' pp')}. "
                f"Pareto front (no other point is both faster and more accurate): {front or 'empty'}."
            )
    steps = pts[pts["unit"] == "optimizer_steps"]["speedup"]
    wall = pts[pts["unit"] == "wall_time_s"]["speedup"]
    if len(steps) and len(wall) and np.nanmedian(wall) < np.nanmedian(steps):
        lines += [
            "",
            "Speed-ups in wall-clock seconds are smaller than in optimizer steps (medians "
            f"{np.nanmedian(wall):.2f}x and {np.nanmedian(steps):.2f}x): fewer, larger steps save less time "
            "than they save steps when the hardware does not process a larger batch in the same time "
            "(on CPU a step costs roughly in proportion to its batch).",
        ]
    return "\n".join(lines)


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
    grows = sum(
        g.sort_values("epoch")["n_delta"].iloc[-1] > g.sort_values("epoch")["n_delta"].iloc[0]
        for _, g in s.groupby(["dataset", "method", "setting"])
    )
    total = s.groupby(["dataset", "method", "setting"]).ngroups
    lines += [
        "",
        f"n * Delta_hat grows over training in {grows} of {total} group(s). McCandlish et al. (2018) "
        "observe the noise scale B_simple growing as the loss falls; DiveBatch's batch size "
        "delta * n * Delta_hat = delta * (1 + B_simple) then follows it, a fraction delta of the noise scale, "
        "until the max batch size stops it.",
    ]
    return "\n".join(lines)
