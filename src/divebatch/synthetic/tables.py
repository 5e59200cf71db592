"""Tables of the synthetic check: the knee experiment (a, b) and the methods experiment (c, d).

Each table is (numeric frame, printed frame or None, caption); :func:`divebatch.synthetic.outputs.write_all`
writes them (CSV with provenance, Markdown, LaTeX). Every table is a deterministic function of the config
and the seeds except ``synthetic_methods_walltime`` (wall-clock seconds).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from divebatch.analysis.style import METHOD_ORDER
from divebatch.methods import ADABATCH, ADABATCH_RESCALE, SGD_SMALL


def _pm(mean: float, sd: float, fmt: str = "{:.0f}") -> str:
    if not np.isfinite(mean):
        return "not reached"
    return fmt.format(mean) + ("" if not np.isfinite(sd) else " ± " + fmt.format(sd))


def _g(x: float, digits: int = 3) -> str:
    return "n/a" if x is None or not np.isfinite(x) else f"{x:.{digits}g}"


def failed_checks(row) -> list[str]:
    """Why a variant of the knee summary does not agree (empty when it does), in words."""
    out = []
    if not row["regime_ok"]:
        out.append(
            f"degenerate regime: full-batch GD reaches the target in {row['gd_steps']:.0f} steps "
            f"(< {row['min_gd_steps']})"
        )
    if not row["knee_within_tolerance"]:
        out.append(
            f"knee {_g(row['knee'])} outside x{row['tolerance']:g} of the n*Delta band "
            f"[{_g(row['band_low'])}, {_g(row['band_high'])}]"
        )
    if not row["small_batch_ok"]:
        out.append(f"samples at B={_g(row['small_b'])} are {_g(row['small_ratio'], 2)}x the small-batch reference")
    if not row["large_batch_ok"]:
        out.append(f"samples at B={_g(row['large_b'])} only {_g(row['large_ratio'], 2)}x the small-batch reference")
    return out


# ---------------------------------------------------------------------------------------------
# knee (experiments a and b)
# ---------------------------------------------------------------------------------------------


def knee_tables(knee: dict) -> dict[str, tuple[pd.DataFrame, pd.DataFrame | None, str]]:
    """name -> (numeric, display, title) for the knee experiment's tables (display None: CSV only)."""
    s = knee["summary"]
    display = pd.DataFrame(
        {
            "variant": s["variant"],
            "kind": s["kind"],
            "n": s["n"],
            "label noise": s["label_noise"],
            "dup.": s["duplicate"],
            "spectrum decay": s["spectrum_decay"],
            "direction u": s["direction"],
            "target (nats)": s["target_subopt"].map(lambda v: f"{v:.3g}"),
            "full-batch GD steps to target: best lr [seed range] / lr 1/L": [
                f"{g:.0f} [{lo}, {hi}] / {g1:.0f}"
                for g, lo, hi, g1 in zip(s["gd_steps"], s["gd_steps_min"], s["gd_steps_max"], s["gd_steps_lr_1_over_L"])
            ],
            "n·Δ(w0)": s["n_delta_start"].map(_g),
            "n·Δ at target: GD path / SGD": [
                f"{_g(a)} / {_g(b)}" for a, b in zip(s["n_delta_target"], s["n_delta_sgd"])
            ],
            "knee B_crit: median of seeds [seed range]": [
                f"{_g(k)} [{_g(lo)}, {_g(hi)}]" for k, lo, hi in zip(s["knee"], s["knee_seed_min"], s["knee_seed_max"])
            ],
            "knee / n·Δ at target (GD)": s["knee_over_n_delta_target"].map(lambda v: _g(v, 2)),
            "knee / n·Δ(w0)": s["knee_over_n_delta_start"].map(lambda v: _g(v, 2)),
            "samples, small B": s["samples_small"].map(_g),
            "ratio at B well below": [f"{_g(r, 2)} (B={_g(b)})" for r, b in zip(s["small_ratio"], s["small_b"])],
            "ratio at B far above": [
                f"{_g(r, 2)} (B={_g(b)})" if np.isfinite(b) else "no such B"
                for r, b in zip(s["large_ratio"], s["large_b"])
            ],
            "agrees": ["yes" if r["agrees"] else "no: " + "; ".join(failed_checks(r)) for _, r in s.iterrows()],
        }
    )
    runs = knee["runs"]
    curve = (
        runs.assign(samples_hit=runs["samples"].where(runs["hit"]))
        .groupby(["variant", "batch_size"], sort=False)
        .agg(
            seeds=("seed", "nunique"),
            hits=("hit", "sum"),
            samples_median=("samples_hit", "median"),
            samples_min=("samples_hit", "min"),
            samples_max=("samples_hit", "max"),
            steps_median=("steps", "median"),
            lr_log2_over_L_median=("lr_log2_over_L", "median"),
            n_delta_at_hit_median=("n_delta_at_hit", "median"),
            lr_at_grid_edge=("lr_at_grid_edge", "sum"),
        )
        .reset_index()
    )
    curve_display = curve.assign(
        **{
            c: curve[c].map(_g)
            for c in ("samples_median", "samples_min", "samples_max", "steps_median", "n_delta_at_hit_median")
        }
    )
    return {
        "synthetic_knee": (
            s,
            display,
            "Knee of samples-to-target against batch size, per data variant, "
            "against n·Δ at the target (Yin et al., 2018)",
        ),
        "synthetic_knee_curve": (
            curve,
            curve_display,
            "Samples and optimizer steps to the target per batch size "
            "(median and range over seeds; lr = 2^k / L, best of the grid)",
        ),
        "synthetic_knee_runs": (runs, None, "Every knee run: seed, batch size, best lr, samples and steps to target"),
        "synthetic_knee_seeds": (
            knee["seeds"],
            knee["seeds"],
            "Per-seed references: loss(w*), target, n·Δ at w0 and at the target on the gradient-descent path, "
            "B_noise, full-batch gradient-descent steps to the target (best lr of the grid, and lr 1/L)",
        ),
    }


# ---------------------------------------------------------------------------------------------
# methods (experiments c and d)
# ---------------------------------------------------------------------------------------------


def _order(df: pd.DataFrame) -> pd.DataFrame:
    rank = {m: i for i, m in enumerate(METHOD_ORDER)}
    return (
        df.assign(_r=df["method"].map(rank))
        .sort_values(["_r"], kind="stable")
        .drop(columns="_r")
        .reset_index(drop=True)
    )


def methods_summary(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per method from the runs of experiment c (one row per method and seed): counts, means
    and sd over seeds, and the speed-ups in steps and wall time against small-batch SGD and AdaBatch
    (the rescaled methods against AdaBatch + lr rescale); a mean to target only when every seed reached it."""
    agg = (
        runs.groupby("method", sort=False)
        .agg(
            seeds=("seed", "nunique"),
            reached=("reached", "sum"),
            lr0=("lr0", "first"),
            steps_to_target_mean=("steps_to_target", "mean"),
            steps_to_target_sd=("steps_to_target", "std"),
            epochs_to_target_mean=("epochs_to_target", "mean"),
            epochs_to_target_sd=("epochs_to_target", "std"),
            final_suboptimality_mean=("final_suboptimality", "mean"),
            final_suboptimality_sd=("final_suboptimality", "std"),
            final_val_acc_mean=("final_val_acc", "mean"),
            final_val_acc_sd=("final_val_acc", "std"),
            final_batch_size_mean=("final_batch_size", "mean"),
            optimizer_steps=("optimizer_steps", "mean"),
            wall_to_target_mean=("wall_to_target_s", "mean"),
            wall_to_target_sd=("wall_to_target_s", "std"),
            wall_total_mean=("wall_total_s", "mean"),
        )
        .reset_index()
    )
    # a mean over seeds is defined only when every seed reached the target
    for c in ("steps_to_target", "epochs_to_target", "wall_to_target"):
        agg.loc[agg["reached"] < agg["seeds"], [f"{c}_mean", f"{c}_sd"]] = np.nan
    agg = _order(agg)
    by = agg.set_index("method")

    def speedup(col: str, base: str, rescaled_base: str | None = None):
        out = []
        for m in agg["method"]:
            b = rescaled_base if (rescaled_base and m.endswith("lr rescale")) else base
            out.append(by.loc[b, col] / by.loc[m, col] if b in by.index else np.nan)
        return out

    agg["speedup_steps_vs_sgd_small"] = speedup("steps_to_target_mean", SGD_SMALL)
    agg["speedup_steps_vs_adabatch"] = speedup("steps_to_target_mean", ADABATCH, ADABATCH_RESCALE)
    agg["speedup_wall_vs_sgd_small"] = speedup("wall_to_target_mean", SGD_SMALL)
    agg["speedup_wall_vs_adabatch"] = speedup("wall_to_target_mean", ADABATCH, ADABATCH_RESCALE)
    return agg


def _methods_display(det: pd.DataFrame) -> pd.DataFrame:
    """The printed form of the deterministic columns of :func:`methods_summary`."""
    return pd.DataFrame(
        {
            "method": det["method"],
            "lr0": det["lr0"].map(lambda v: f"{v:.3g}"),
            "reached": [f"{int(r)}/{int(s)}" for r, s in zip(det["reached"], det["seeds"])],
            "steps to target": [_pm(m, s) for m, s in zip(det["steps_to_target_mean"], det["steps_to_target_sd"])],
            "epochs to target": [
                _pm(m, s, "{:.2f}") for m, s in zip(det["epochs_to_target_mean"], det["epochs_to_target_sd"])
            ],
            "speed-up in steps vs SGD small / AdaBatch": [
                f"{_g(a, 3)} / {_g(b, 3)}"
                for a, b in zip(det["speedup_steps_vs_sgd_small"], det["speedup_steps_vs_adabatch"])
            ],
            "final suboptimality (nats)": [
                f"{m:.2e} ± {s:.1e}" for m, s in zip(det["final_suboptimality_mean"], det["final_suboptimality_sd"])
            ],
            "final val. acc. (%)": [
                _pm(m, s, "{:.2f}") for m, s in zip(det["final_val_acc_mean"], det["final_val_acc_sd"])
            ],
            "final batch size": det["final_batch_size_mean"].map(lambda v: f"{v:.0f}"),
            "total steps": det["optimizer_steps"].map(lambda v: f"{v:.0f}"),
        }
    )


def _walltime_display(wall: pd.DataFrame) -> pd.DataFrame:
    """The printed form of the wall-time columns of :func:`methods_summary`."""
    return pd.DataFrame(
        {
            "method": wall["method"],
            "wall time to target (s)": [
                _pm(m, s, "{:.3f}") for m, s in zip(wall["wall_to_target_mean"], wall["wall_to_target_sd"])
            ],
            "speed-up vs SGD small / AdaBatch": [
                f"{_g(a)} / {_g(b)}"
                for a, b in zip(wall["speedup_wall_vs_sgd_small"], wall["speedup_wall_vs_adabatch"])
            ],
            "total wall time (s)": wall["wall_total_mean"].map(lambda v: f"{v:.3f}"),
        }
    )


def methods_tables(res: dict) -> dict[str, tuple[pd.DataFrame, pd.DataFrame, str]]:
    """Experiments c and d's tables: name -> (data, printed form or None, caption)."""
    agg = methods_summary(res["runs"])
    wall_cols = [c for c in agg.columns if "wall" in c]
    det = agg.drop(columns=wall_cols)
    wall = agg[["method", "seeds", "reached", *wall_cols]]
    traj = res["trajectories"].drop(columns=["epoch_time_s"])
    est = _order(res["estimator"])
    est_display = est.assign(
        **{c: est[c].map(lambda v: f"{v:.3g}") for c in est.columns if c.startswith(("ratio", "share"))}
    )
    return {
        "synthetic_methods": (
            det,
            _methods_display(det),
            "SGD, AdaBatch and DiveBatch on the synthetic problem: optimizer steps "
            "and epochs to the target suboptimality, final loss and accuracy (mean ± sd over seeds)",
        ),
        "synthetic_methods_walltime": (
            wall,
            _walltime_display(wall),
            "Wall-clock seconds to the target (optimizer steps only; the one non-deterministic table)",
        ),
        "synthetic_methods_trajectories": (traj, None, "Per-epoch trajectories of every method and seed"),
        "synthetic_estimator": (
            est,
            est_display,
            "Each diversity estimator (the authors' epoch estimator, micro-batch, "
            "fixed point) against exact n·Δ at the epoch's start and end iterates (ratios: median "
            "[10th, 90th percentile] over epochs and seeds)",
        ),
    }
