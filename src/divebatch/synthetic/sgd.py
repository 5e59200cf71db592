"""Vectorised constant-learning-rate mini-batch SGD on the synthetic problem, run until a target.

One call runs every (seed, learning rate) pair of a fixed batch size at once: weights are a
(S, L, d) float64 tensor, S seeds (each with its own dataset and its own sample order) by L
learning rates (sharing the seed's sample order, i.e. common random numbers). Samples are drawn
without replacement in epochs of a fresh permutation, the last batch of an epoch being smaller
when B does not divide n (PyTorch's DataLoader default). The full training loss is checked on a
geometric grid of sample counts (each check at least ``1 + resolution`` times the previous one, and
at least one step later), so the samples to target are known to a relative error below
``resolution`` (or one step for large B) at a cost logarithmic in the run length.

"Best of the grid" is the tuning rule: because all learning rates advance in lock-step (same
samples processed), the first learning rate to reach the target is the one with the fewest samples
(and steps) to target; a seed stops as soon as one of its learning rates hits.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from divebatch.synthetic import problem as P


@dataclass
class FirstHit:
    """Per-seed result of :func:`run_to_target` (arrays of length S unless stated).

    ``hit`` False means no learning rate reached the target within the budget; then steps and
    samples are the budget (a lower bound) and the other fields describe the last checkpoint.
    """

    batch_size: int
    hit: Tensor  # (S,) bool
    steps: Tensor  # (S,) int64, optimizer steps to target
    samples: Tensor  # (S,) int64, samples processed to target
    best_lr: Tensor  # (S,) float64, the grid lr that hit first (ties: lowest loss)
    best_lr_index: Tensor  # (S,) int64 index into the lr grid
    n_delta_hit: Tensor  # (S,) exact n*Delta at the hitting iterate of the best lr
    diverged: Tensor  # (S, L) bool, learning rates whose loss became non-finite
    final_loss: Tensor  # (S, L) loss of every lr when the run stopped (NaN where diverged)


def run_to_target(
    x: Tensor,
    y: Tensor,
    l2: float,
    w0: Tensor,
    target_loss: Tensor,
    batch_size: int,
    lrs: Tensor,
    seeds: list[int],
    max_samples: int,
    resolution: float = 0.02,
) -> FirstHit:
    """Run mini-batch SGD with every lr of a grid until each seed has one lr below its target loss.

    Args:
        x: (S, n, d) float64 training features of S seeds; y: (S, n) labels in {0, 1}.
        l2: L2 coefficient of the loss.
        w0: (d,) or (S, d) initial weights.
        target_loss: (S,) loss value (nats) that counts as reached: loss(w*) + target suboptimality.
        batch_size: B (samples per step), 1 <= B <= n.
        lrs: (L,) learning rates.
        seeds: S ints; seed s draws its sample order from its own generator (seeded by s and B).
        max_samples: budget per seed (samples); unreached seeds report hit False.
        resolution: relative spacing of the loss checks (samples).
    Returns:
        :class:`FirstHit`.
    Raises:
        ValueError: batch_size outside [1, n].
    """
    S, n, d = x.shape
    if not 1 <= batch_size <= n:
        raise ValueError(f"batch_size={batch_size}; allowed: an integer in [1, n={n}]")
    L = lrs.numel()
    w = (w0.expand(S, d) if w0.dim() == 1 else w0).unsqueeze(1).repeat(1, L, 1).clone()
    lr = lrs.to(P.DTYPE).view(1, L, 1)
    gens = [torch.Generator().manual_seed(1_000_003 * int(s) + batch_size) for s in seeds]
    next_check = 1
    rows = torch.arange(S).unsqueeze(1)
    hits = _Hits.empty(S, L)
    step = samples = 0
    hits.check(x, y, w, l2, target_loss, 0, 0)
    while not bool(hits.hit.all()) and samples < max_samples:
        perm = torch.stack([torch.randperm(n, generator=g) for g in gens])  # (S, n)
        for start in range(0, n, batch_size):
            idx = perm[:, start : start + batch_size]
            xb, yb = x[rows, idx], y[rows, idx]
            # Finished seeds keep stepping (cheaper than compacting); their results are frozen.
            w.sub_(lr * P.mean_grad(xb, yb, w, l2))
            step += 1
            samples += idx.shape[1]
            if samples >= next_check or samples >= max_samples:
                hits.check(x, y, w, l2, target_loss, step, samples)
                next_check = samples * (1 + resolution)
                if bool(hits.hit.all()) or samples >= max_samples:
                    break
    loss = P.mean_loss(x, y, w, l2)
    hits.settle_missing(x, y, w, l2, loss, step, samples)
    return FirstHit(
        batch_size=batch_size,
        hit=hits.hit,
        steps=hits.steps,
        samples=hits.samples,
        best_lr=lrs.to(P.DTYPE)[hits.best],
        best_lr_index=hits.best,
        n_delta_hit=hits.n_delta,
        diverged=hits.diverged,
        final_loss=torch.where(torch.isfinite(loss), loss, torch.nan),
    )


@dataclass
class _Hits:
    """The first hit of each seed's target while :func:`run_to_target` runs (the fields of :class:`FirstHit`)."""

    hit: Tensor  # (S,) bool
    steps: Tensor  # (S,) int64, -1 until hit
    samples: Tensor  # (S,) int64, -1 until hit
    best: Tensor  # (S,) int64 lr index
    n_delta: Tensor  # (S,) float64
    diverged: Tensor  # (S, L) bool

    @classmethod
    def empty(cls, S: int, L: int) -> "_Hits":
        return cls(
            hit=torch.zeros(S, dtype=torch.bool),
            steps=torch.full((S,), -1, dtype=torch.int64),
            samples=torch.full((S,), -1, dtype=torch.int64),
            best=torch.zeros(S, dtype=torch.int64),
            n_delta=torch.full((S,), float("nan"), dtype=P.DTYPE),
            diverged=torch.zeros(S, L, dtype=torch.bool),
        )

    def check(self, x: Tensor, y: Tensor, w: Tensor, l2: float, target_loss: Tensor, step: int, samples: int) -> None:
        """Compare every (seed, lr) loss at ``w`` (S, L, d) with the target; record new hits (ties: lowest loss)."""
        loss = P.mean_loss(x, y, w, l2)  # (S, L)
        bad = ~torch.isfinite(loss)
        self.diverged.logical_or_(bad)
        below = (loss <= target_loss.unsqueeze(1)) & ~bad
        new = below.any(1) & ~self.hit
        if new.any():
            masked = torch.where(below, loss, torch.inf)
            idx = masked.argmin(1)
            for s in new.nonzero().flatten().tolist():
                self.hit[s] = True
                self.steps[s], self.samples[s], self.best[s] = step, samples, idx[s]
                self.n_delta[s] = P.n_diversity(x[s], y[s], w[s, idx[s]].unsqueeze(0), l2)[0]

    def settle_missing(self, x: Tensor, y: Tensor, w: Tensor, l2: float, loss: Tensor, step: int, samples: int) -> None:
        """Seeds that never hit: the budget as steps and samples, the lowest-loss lr that did not diverge."""
        missing = ~self.hit
        if missing.any():
            idx = torch.where(self.diverged, torch.inf, loss).argmin(1)
            nd = P.n_diversity(x, y, w, l2)
            for s in missing.nonzero().flatten().tolist():
                self.steps[s], self.samples[s], self.best[s] = step, samples, idx[s]
                self.n_delta[s] = nd[s, idx[s]]
