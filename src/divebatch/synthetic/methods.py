"""Experiments c and d: SGD, AdaBatch and DiveBatch on one synthetic problem, and the authors' epoch
estimator of Delta against exact Delta on the same trajectories.

The batch-size decisions are the training core's own code: the policies come from
:func:`divebatch.method.policies.build_policy` (the DiveBatch rule is :func:`divebatch.method.policies.divebatch_batch_size`),
the learning-rate rescaling is :func:`divebatch.method.policies.rescale_lr` applied to a ``torch.optim.SGD``,
and Delta_hat is :class:`divebatch.method.diversity.EpochDiversityEstimator` fed in sum units. Only the
gradient is the closed form of :mod:`divebatch.synthetic.problem` instead of autograd.

Every method runs ``epochs`` epochs from w0 = 0 with a constant base lr (no schedule). The
estimator is accumulated in every epoch for experiment d, but a policy only receives it in the
epochs where it measures diversity (as in training), and only those epochs count its cost in the
wall time. Wall time covers the optimizer steps only (not the evaluation, the target checks, or
the exact-Delta diagnostics), and is the one non-deterministic output.
"""

from __future__ import annotations

import math
import time

import numpy as np
import pandas as pd
import torch

from divebatch.config import MethodConfig
from divebatch.method.diversity import (
    EpochDiversityEstimator,
    MicroBatchDiversity,
    subset_n_diversity,
    two_scale_sq_norm_sum,
)
from divebatch.method.policies import build_policy, rescale_lr
from divebatch.methods import PAPER_METHODS
from divebatch.synthetic import problem as P
from divebatch.synthetic.knee import Problems, prepare
from divebatch.synthetic.sgd import run_to_target

# display name -> (policy name, which configured batch size it starts from, lr rescaling): the
# paper's six methods of divebatch.methods (the synthetic problem has SGD only, no AdamW)
METHODS = {
    v.display_name: (v.policy, "max_batch_size" if v.large_batch else "initial_batch_size", v.lr_rescale)
    for v in PAPER_METHODS
}


def accuracy(x: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> float:
    """Classification accuracy (percent) of sign(x . w) against labels y in {0, 1}."""
    return float(((x @ w.reshape(-1) > 0).to(y.dtype) == y).to(torch.float64).mean() * 100)


def tune_lr(probs: Problems, batch_size: int, kcfg, epochs: int) -> float:
    """Base lr for a method starting at a fixed batch size: the lr of the knee's grid (2^k / L) with
    the lowest final training loss after ``epochs`` epochs of constant-lr SGD at that batch size,
    per seed, then the lower median over seeds (a grid value).

    Not the knee's fewest-samples-to-target rule: that one picks the largest lr whose noise floor
    just touches the target, and such an lr keeps bouncing around it; a method comparison over a
    fixed epoch budget needs an lr that converges.
    """
    ks = torch.arange(kcfg.lr_log2_min, kcfg.lr_log2_max + kcfg.lr_log2_step / 2, kcfg.lr_log2_step, dtype=P.DTYPE)
    never = torch.full_like(probs.loss_star, -float("inf"))
    res = run_to_target(
        probs.x,
        probs.y,
        probs.spec.l2,
        torch.zeros(probs.x.shape[-1], dtype=P.DTYPE),
        never,
        batch_size,
        2.0**ks / probs.smoothness,
        probs.seeds,
        epochs * probs.n,
        kcfg.resolution,
    )
    best = torch.nan_to_num(res.final_loss, nan=float("inf")).argmin(1)
    k = np.sort(ks[best].numpy())[(len(probs.seeds) - 1) // 2]
    return float(2.0**k / probs.smoothness)


def run_method(probs: Problems, i: int, name: str, mcfg, lr: float) -> tuple[list[dict], dict]:
    """One method on seed index ``i`` of ``probs``.

    Args:
        probs: prepared problems (one dataset per seed).
        i: seed index into ``probs.seeds``.
        name: a key of :data:`METHODS`.
        mcfg: the ``methods`` config section.
        lr: base learning rate.
    Returns:
        (per-epoch rows, run summary). Units: samples, optimizer steps, seconds, nats, percent.
    """
    policy_name, start_key, rescale = METHODS[name]
    seed = probs.seeds[i]
    x, y, xv, yv = probs.x[i], probs.y[i], probs.x_val[i], probs.y_val[i]
    l2, n = probs.spec.l2, probs.n
    loss_star, target = float(probs.loss_star[i]), float(probs.target_loss[i])
    method_cfg = MethodConfig(
        name=policy_name,
        initial_batch_size=getattr(mcfg, start_key),
        max_batch_size=mcfg.max_batch_size,
        resize_freq=mcfg.resize_freq,
        delta=mcfg.delta,
        lr_rescale=rescale,
    )
    policy = build_policy(method_cfg, n)
    w = torch.nn.Parameter(torch.zeros(1, x.shape[1], dtype=P.DTYPE))
    opt = torch.optim.SGD([w], lr=lr, momentum=mcfg.momentum)
    gen = torch.Generator().manual_seed(1_000_003 * seed + 17)  # same sample order for every method
    est = EpochDiversityEstimator()
    micro = EpochDiversityEstimator()  # the two-scale estimator, fed from the same steps' micro-batches
    planner = MicroBatchDiversity(mcfg.micro_batches)
    k_fp = mcfg.fixed_point_samples
    fp_idx = (
        torch.randperm(n, generator=torch.Generator().manual_seed(7919 + seed))[:k_fp]
        if k_fp is not None and k_fp < n
        else torch.arange(n)
    )
    steps = samples = 0
    wall = 0.0
    hit: dict = {}
    next_check = 1.0
    diverged = False
    rows = []
    with torch.no_grad():
        for epoch in range(mcfg.epochs):
            measuring = policy.measures_diversity(epoch)
            batch_size, lr_now = policy.batch_size, opt.param_groups[0]["lr"]
            nd_start = float(P.n_diversity(x, y, w, l2)[0])
            est.reset()
            micro.reset()
            perm = torch.randperm(n, generator=gen)
            t_step = t_est = 0.0
            for start in range(0, n, batch_size):
                t0 = time.perf_counter()
                idx = perm[start : start + batch_size]
                xb, yb = x[idx], y[idx]
                g = P.mean_grad(xb, yb, w, l2)
                t1 = time.perf_counter()
                # per-sample norms at the iterate the gradient is taken at, as BackPACK gives them
                est.add(P.sq_norm_sum(xb, yb, w, l2)[0], [g[0] * len(idx)], len(idx))
                t2 = time.perf_counter()
                sizes = planner.micro_batch_sizes(len(idx), len(idx))  # not timed: a diagnostic
                parts = [P.mean_grad(xm, ym, w, l2)[0] * len(ym) for xm, ym in zip(xb.split(sizes), yb.split(sizes))]
                u = torch.stack(parts).sum(0)
                micro.add(
                    torch.as_tensor(
                        two_scale_sq_norm_sum(sum(float(p.pow(2).sum()) for p in parts), float(u.pow(2).sum()), sizes)
                    ),
                    [u],
                    len(idx),
                )
                w.grad = g
                opt.step()
                t_step += time.perf_counter() - t2 + t1 - t0
                t_est += t2 - t1
                steps += 1
                samples += len(idx)
                if not hit and samples >= next_check:
                    sub = float(P.mean_loss(x, y, w, l2)[0]) - loss_star
                    if sub <= target - loss_star:
                        hit = {
                            "steps_to_target": steps,
                            "samples_to_target": samples,
                            "wall_to_target_s": wall + t_step + (t_est if measuring else 0.0),
                        }
                    next_check = samples * (1 + mcfg.resolution)
            wall += t_step + (t_est if measuring else 0.0)
            loss = float(P.mean_loss(x, y, w, l2)[0])
            if not math.isfinite(loss):
                diverged = True
            nd_hat = est.value() * n
            xk, yk = x[fp_idx], y[fp_idx]  # fixed-point estimator: Delta at the epoch's final w, fixed subset
            nd_fp = subset_n_diversity(
                float(P.sq_norm_sum(xk, yk, w, l2)[0]),
                float((P.mean_grad(xk, yk, w, l2)[0] * len(fp_idx)).pow(2).sum()),
                len(fp_idx),
                n,
            )
            rows.append(
                {
                    "method": name,
                    "seed": seed,
                    "epoch": epoch,
                    "batch_size": batch_size,
                    "lr": lr_now,
                    "train_loss": loss,
                    "suboptimality": loss - loss_star,
                    "train_acc": accuracy(x, y, w),
                    "val_loss": float(P.mean_loss(xv, yv, w, l2)[0]),
                    "val_acc": accuracy(xv, yv, w),
                    "optimizer_steps": steps,
                    "samples_seen": samples,
                    "n_delta_hat": nd_hat,
                    "measured": measuring,
                    "n_delta_microbatch": micro.value() * n,
                    "n_delta_fixed_point": nd_fp,
                    "n_delta_exact_start": nd_start,
                    "n_delta_exact_end": float(P.n_diversity(x, y, w, l2)[0]),
                    "epoch_time_s": t_step + (t_est if measuring else 0.0),
                }
            )
            if diverged:
                break
            rescale_lr(opt, policy.step(epoch, nd_hat / n if measuring else None))
    last = rows[-1]
    summary = {
        "method": name,
        "seed": seed,
        "lr0": lr,
        "reached": bool(hit),
        "diverged": diverged,
        "steps_to_target": hit.get("steps_to_target", float("nan")),
        "samples_to_target": hit.get("samples_to_target", float("nan")),
        "epochs_to_target": hit.get("samples_to_target", float("nan")) / n,
        "wall_to_target_s": hit.get("wall_to_target_s", float("nan")),
        "wall_total_s": wall,
        "final_loss": last["train_loss"],
        "final_suboptimality": last["suboptimality"],
        "final_train_acc": last["train_acc"],
        "final_val_acc": last["val_acc"],
        "final_batch_size": policy.batch_size,
        "optimizer_steps": steps,
        "samples_seen": samples,
    }
    return rows, summary


# experiment d's estimators: trajectory column -> name (docs/diversity.md, "Estimator study")
ESTIMATOR_COLUMNS = {
    "n_delta_hat": "exact (authors' epoch estimator)",
    "n_delta_microbatch": "microbatch",
    "n_delta_fixed_point": "fixed_point",
}


def estimator_table(traj: pd.DataFrame) -> pd.DataFrame:
    """Experiment d: each estimator's n*Delta_hat against exact n*Delta at the epoch's start and end
    iterates, per method (all epochs and seeds; epochs with non-finite values are dropped).

    Estimators (:data:`ESTIMATOR_COLUMNS`): the authors' epoch estimator (per-sample norms and the
    summed gradient at the epoch's iterates), the two-scale micro-batch estimator on the same steps,
    and the fixed-point estimator (Delta at the epoch's final iterate over a fixed subset).
    Columns: ``method``, ``estimator``, ``epochs``; median and [10th, 90th] percentile of
    ``estimate / n_delta_exact_start`` and of ``/ n_delta_exact_end``; ``share_between``: share of
    epochs whose estimate lies between the two exact values (inclusive), ``share_below``: share below both;
    ``share_inf``: share of all epochs whose estimate is infinite (the fixed-point estimator when the
    mean gradient is not resolved above its subset's noise, near the optimum), left out of the ratios.
    """
    rows = []
    for col, est_name in ESTIMATOR_COLUMNS.items():
        if col not in traj:
            continue
        unresolved = traj.groupby("method", sort=False)[col].agg(lambda v: float(np.isinf(v).mean()))
        t = traj.replace([np.inf, -np.inf], np.nan).dropna(subset=[col, "n_delta_exact_start", "n_delta_exact_end"])
        for name, g in t.groupby("method", sort=False):
            rows.append(
                {
                    "method": name,
                    "estimator": est_name,
                    **_ratio_summary(g, col),
                    "share_inf": unresolved.get(name, np.nan),
                }
            )
    return pd.DataFrame(rows)


def _ratio_summary(g: pd.DataFrame, col: str) -> dict:
    """Ratios of ``g[col]`` to the exact n*Delta at the epochs' start and end iterates (see :func:`estimator_table`)."""
    rs, re = g[col] / g["n_delta_exact_start"], g[col] / g["n_delta_exact_end"]
    lo = np.minimum(g["n_delta_exact_start"], g["n_delta_exact_end"])
    hi = np.maximum(g["n_delta_exact_start"], g["n_delta_exact_end"])
    return {
        "epochs": len(g),
        "ratio_start_median": rs.median(),
        "ratio_start_p10": rs.quantile(0.1),
        "ratio_start_p90": rs.quantile(0.9),
        "ratio_end_median": re.median(),
        "ratio_end_p10": re.quantile(0.1),
        "ratio_end_p90": re.quantile(0.9),
        "share_between": float(((g[col] >= lo) & (g[col] <= hi)).mean()),
        "share_below": float((g[col] < lo).mean()),
    }


def run(cfg, log=print) -> dict:
    """Experiments c and d.

    Returns:
        dict with ``problems``, ``lrs`` ({batch size: tuned lr}), ``trajectories`` (one row per
        method, seed and epoch), ``runs`` (one row per method and seed) and ``estimator``.
    """
    mcfg = cfg.methods
    probs = prepare(mcfg.data, list(cfg.seeds), mcfg.target_relative, with_paths=False)
    b0, b1 = mcfg.initial_batch_size, mcfg.max_batch_size
    if mcfg.lr is not None:
        lrs = {b0: float(mcfg.lr)}
    else:
        log(f"[synthetic] methods: tuning lr for batch size {b0} ...")
        lrs = {b0: tune_lr(probs, b0, cfg.knee, mcfg.epochs)}
    if b1 not in lrs:
        if mcfg.large_batch_lr == "linear":
            lrs[b1] = lrs[b0] * b1 / b0
        else:
            log(f"[synthetic] methods: tuning lr for batch size {b1} ...")
            lrs[b1] = tune_lr(probs, b1, cfg.knee, mcfg.epochs)
    rows, runs = [], []
    for name in mcfg.names:
        log(f"[synthetic] methods: {name} ...")
        b0 = getattr(mcfg, METHODS[name][1])
        for i in range(len(probs.seeds)):
            r, s = run_method(probs, i, name, mcfg, lrs[b0])
            rows += r
            runs.append(s)
    traj = pd.DataFrame(rows)
    return {
        "problems": probs,
        "lrs": lrs,
        "trajectories": traj,
        "runs": pd.DataFrame(runs),
        "estimator": estimator_table(traj),
    }
