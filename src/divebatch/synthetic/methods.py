"""Experiments c and d: SGD, AdaBatch and DiveBatch on one synthetic problem, and the authors' epoch
estimator of Delta against exact Delta on the same trajectories.

The batch-size decisions are the library's own: each method runs under a
:class:`divebatch.method.controller.BatchSizeController` (the policy, the DiveBatch rule
:func:`divebatch.method.policies.divebatch_batch_size`, the learning-rate rescaling of a
``torch.optim.SGD``), which reads Delta_hat from a :class:`divebatch.method.diversity.EpochDiversityEstimator`
fed in sum units, as the trainer's estimators are. Only the gradient is the closed form of
:mod:`divebatch.synthetic.problem` instead of autograd.

Every method runs ``epochs`` epochs from w0 = 0 with a constant base lr (no schedule). The
estimator is accumulated in every epoch for experiment d, but the controller only reads it in the
epochs where it measures diversity (as in training), and only those epochs count its cost in the
wall time. Wall time covers the optimizer steps only (not the evaluation, the target checks, or
the exact-Delta diagnostics), and is the one non-deterministic output.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from divebatch.method.controller import BatchSizeController
from divebatch.method.diversity import EpochDiversityEstimator
from divebatch.method.fixed_point import subset_n_diversity
from divebatch.method.microbatch import MicroBatchDiversity, two_scale_sq_norm_sum
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


@dataclass
class Trace:
    """One method's run on one seed so far: counters, wall time, the first hit of the target."""

    steps: int = 0  # optimizer steps
    samples: int = 0  # samples processed
    wall: float = 0.0  # seconds of optimizer steps (and estimator work in measured epochs)
    next_check: float = 1.0  # samples at which the training loss is next compared with the target
    hit: dict = field(default_factory=dict)  # steps, samples, wall time at the first check below target


@dataclass
class Estimators:
    """Experiment d's estimators, fed from the steps of every epoch: the authors' epoch estimator
    (``exact``, which the controller reads in measured epochs), the two-scale micro-batch estimator on
    the same steps, and the fixed subset of the fixed-point estimator."""

    exact: EpochDiversityEstimator
    micro: EpochDiversityEstimator
    planner: MicroBatchDiversity
    fixed_subset: torch.Tensor  # (k,) int64 sample indices


def _estimators(mcfg, n: int, seed: int) -> Estimators:
    k = mcfg.fixed_point_samples
    subset = (
        torch.randperm(n, generator=torch.Generator().manual_seed(7919 + seed))[:k]
        if k is not None and k < n
        else torch.arange(n)
    )
    return Estimators(
        EpochDiversityEstimator(), EpochDiversityEstimator(), MicroBatchDiversity(mcfg.micro_batches), subset
    )


def _feed_micro(est: Estimators, xb, yb, w, l2: float) -> None:
    """The two-scale estimator's share of one step (a diagnostic: its split is not the update's)."""
    sizes = est.planner.micro_batch_sizes(len(yb), len(yb))
    parts = [P.mean_grad(xm, ym, w, l2)[0] * len(ym) for xm, ym in zip(xb.split(sizes), yb.split(sizes))]
    u = torch.stack(parts).sum(0)
    sq = two_scale_sq_norm_sum(sum(float(p.pow(2).sum()) for p in parts), float(u.pow(2).sum()), sizes)
    est.micro.add(torch.as_tensor(sq), [u], len(yb))


def train_epoch(
    probs: Problems,
    i: int,
    w,
    opt,
    batch_size: int,
    perm,
    est: Estimators,
    trace: Trace,
    measuring: bool,
    resolution: float,
) -> float:
    """One epoch of constant-batch SGD steps on seed index ``i``, in the order ``perm``.

    Every step feeds the epoch estimators at the iterate its gradient is taken at (as BackPACK gives
    the per-sample norms), then steps ``opt``; the training loss is checked against the target on a
    geometric grid of sample counts (spacing ``resolution``), and the first hit goes into ``trace``.

    Returns:
        the epoch's wall time (seconds): the steps, plus the estimator's work when ``measuring``.
    """
    x, y, l2 = probs.x[i], probs.y[i], probs.spec.l2
    loss_star, target = float(probs.loss_star[i]), float(probs.target_loss[i])
    t_step = t_est = 0.0
    for start in range(0, probs.n, batch_size):
        t0 = time.perf_counter()
        idx = perm[start : start + batch_size]
        xb, yb = x[idx], y[idx]
        g = P.mean_grad(xb, yb, w, l2)
        t1 = time.perf_counter()
        est.exact.add(P.sq_norm_sum(xb, yb, w, l2)[0], [g[0] * len(idx)], len(idx))
        t2 = time.perf_counter()
        _feed_micro(est, xb, yb, w, l2)  # not timed: a diagnostic
        w.grad = g
        opt.step()
        t_step += time.perf_counter() - t2 + t1 - t0
        t_est += t2 - t1
        trace.steps += 1
        trace.samples += len(idx)
        if not trace.hit and trace.samples >= trace.next_check:
            sub = float(P.mean_loss(x, y, w, l2)[0]) - loss_star
            if sub <= target - loss_star:
                trace.hit = {
                    "steps_to_target": trace.steps,
                    "samples_to_target": trace.samples,
                    "wall_to_target_s": trace.wall + t_step + (t_est if measuring else 0.0),
                }
            trace.next_check = trace.samples * (1 + resolution)
    return t_step + (t_est if measuring else 0.0)


def epoch_row(
    probs: Problems, i: int, w, est: Estimators, trace: Trace, measured: bool, nd_start: float, seconds: float
) -> dict:
    """The trajectory columns of one epoch after its batch size and lr: losses and accuracies at the
    epoch's final iterate, the run's counters, every estimate of n*Delta, and exact n*Delta at the
    epoch's first (``nd_start``) and final iterates (nats, percent, steps, samples, seconds)."""
    x, y, xv, yv, l2, n = probs.x[i], probs.y[i], probs.x_val[i], probs.y_val[i], probs.spec.l2, probs.n
    loss = float(P.mean_loss(x, y, w, l2)[0])
    xk, yk, k = x[est.fixed_subset], y[est.fixed_subset], len(est.fixed_subset)
    # fixed-point estimator: Delta at the epoch's final w, over its fixed subset
    nd_fp = subset_n_diversity(
        float(P.sq_norm_sum(xk, yk, w, l2)[0]), float((P.mean_grad(xk, yk, w, l2)[0] * k).pow(2).sum()), k, n
    )
    return {
        "train_loss": loss,
        "suboptimality": loss - float(probs.loss_star[i]),
        "train_acc": accuracy(x, y, w),
        "val_loss": float(P.mean_loss(xv, yv, w, l2)[0]),
        "val_acc": accuracy(xv, yv, w),
        "optimizer_steps": trace.steps,
        "samples_seen": trace.samples,
        "n_delta_hat": est.exact.value() * n,
        "measured": measured,
        "n_delta_microbatch": est.micro.value() * n,
        "n_delta_fixed_point": nd_fp,
        "n_delta_exact_start": nd_start,
        "n_delta_exact_end": float(P.n_diversity(x, y, w, l2)[0]),
        "epoch_time_s": seconds,
    }


def run_method(probs: Problems, i: int, name: str, mcfg, lr: float) -> tuple[list[dict], dict]:
    """One method on seed index ``i`` of ``probs``, under the library's controller.

    Args:
        probs: prepared problems (one dataset per seed).
        i: seed index into ``probs.seeds``.
        name: a key of :data:`METHODS`.
        mcfg: the ``methods`` config section.
        lr: base learning rate.
    Returns:
        (per-epoch rows, run summary). Units: samples, optimizer steps, seconds, nats, percent.
    """
    policy, start_key, rescale = METHODS[name]
    seed, n = probs.seeds[i], probs.n
    est = _estimators(mcfg, n, seed)
    ctl = BatchSizeController(
        policy,
        n_train=n,
        initial_batch_size=getattr(mcfg, start_key),
        max_batch_size=mcfg.max_batch_size,
        resize_freq=mcfg.resize_freq,
        delta=mcfg.delta,
        lr_rescale=rescale,
        estimator=est.exact,  # read by the DiveBatch policy only
    )
    w = torch.nn.Parameter(torch.zeros(1, probs.x.shape[-1], dtype=P.DTYPE))
    opt = torch.optim.SGD([w], lr=lr, momentum=mcfg.momentum)
    gen = torch.Generator().manual_seed(1_000_003 * seed + 17)  # same sample order for every method
    trace, rows = Trace(), []
    with torch.no_grad():
        for epoch in range(mcfg.epochs):
            batch_size, lr_now = ctl.batch_size, opt.param_groups[0]["lr"]
            nd_start = float(P.n_diversity(probs.x[i], probs.y[i], w, probs.spec.l2)[0])
            with ctl.epoch(epoch, None) as measuring:  # no module: the estimator is fed by hand
                est.exact.reset()
                est.micro.reset()
                seconds = train_epoch(
                    probs,
                    i,
                    w,
                    opt,
                    batch_size,
                    torch.randperm(n, generator=gen),
                    est,
                    trace,
                    measuring,
                    mcfg.resolution,
                )
            trace.wall += seconds
            row = {"method": name, "seed": seed, "epoch": epoch, "batch_size": batch_size, "lr": lr_now}
            rows.append({**row, **epoch_row(probs, i, w, est, trace, measuring, nd_start, seconds)})
            if not math.isfinite(rows[-1]["train_loss"]):
                break  # diverged
            ctl.end_epoch(epoch, opt)  # the decision and the lr rescaling, from Delta_hat of a measured epoch
    return rows, _summary(rows, trace, name, seed, lr, n, ctl.batch_size)


def _summary(rows: list[dict], trace: Trace, name: str, seed: int, lr: float, n: int, batch_size: int) -> dict:
    """The run's summary row (see :func:`run_method`)."""
    last = rows[-1]
    return {
        "method": name,
        "seed": seed,
        "lr0": lr,
        "reached": bool(trace.hit),
        "diverged": not math.isfinite(last["train_loss"]),
        "steps_to_target": trace.hit.get("steps_to_target", float("nan")),
        "samples_to_target": trace.hit.get("samples_to_target", float("nan")),
        "epochs_to_target": trace.hit.get("samples_to_target", float("nan")) / n,
        "wall_to_target_s": trace.hit.get("wall_to_target_s", float("nan")),
        "wall_total_s": trace.wall,
        "final_loss": last["train_loss"],
        "final_suboptimality": last["suboptimality"],
        "final_train_acc": last["train_acc"],
        "final_val_acc": last["val_acc"],
        "final_batch_size": batch_size,
        "optimizer_steps": trace.steps,
        "samples_seen": trace.samples,
    }


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
