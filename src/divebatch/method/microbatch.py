"""The two-scale micro-batch estimator of the authors' epoch Delta (``method.diversity_estimator=microbatch``)."""

from __future__ import annotations

import contextlib
from typing import ClassVar, Sequence

import torch
from torch import Tensor, nn

from divebatch.method.diversity import EpochDiversityEstimator, param_grads, sq_norm


def two_scale_sq_norm_sum(micro_sq, full_sq, sizes: Sequence[int]):
    """P_hat, the unbiased estimate of P = sum_i ||g_i||^2 of one step from its micro-batch gradients
    (:class:`MicroBatchDiversity`; McCandlish et al., 2018, App. A, in sum units).

    Args:
        micro_sq: sum_j ||U_j||^2 (U_j = sum of g_i over micro-batch j), float or 0-d tensor.
        full_sq: ||U||^2 (U = sum_j U_j); ignored (may be None) for a one-part step.
        sizes: b_j, the micro-batch sizes (samples); B = sum_j b_j.
    Returns:
        (micro_sq - r full_sq) / (1 - r) with r = sum_j b_j (b_j - 1) / (B (B - 1)); ``micro_sq``
        itself for a one-part step (a single sample's norm is exact).
    """
    if len(sizes) == 1:
        return micro_sq
    batch = sum(sizes)
    r = sum(b * (b - 1) for b in sizes) / (batch * (batch - 1))
    return (micro_sq - r * full_sq) / (1 - r)


class MicroBatchDiversity(EpochDiversityEstimator):
    """Two-scale estimator of the authors' epoch Delta (``method.diversity_estimator=microbatch``).

    No per-sample gradients: a measured step of B samples is split into k >= 2 micro-batches
    (sizes b_j, :meth:`micro_batch_sizes`) whose gradients the trainer accumulates anyway. With
    U_j = sum_{i in j} g_i and U = sum_j U_j (sum units), over the random assignment of the
    step's samples to micro-batches (the loader shuffles every epoch),

        E[sum_j ||U_j||^2] = P + r (||U||^2 - P),   r = sum_j b_j (b_j - 1) / (B (B - 1)),

    where P = sum_i ||g_i||^2 is the step's exact numerator term; hence

        P_hat = (sum_j ||U_j||^2 - r ||U||^2) / (1 - r)

    is unbiased for P given the step's samples. This is McCandlish et al. (2018, App. A)'s
    two-batch-size estimate of ||G||^2 and tr(Sigma) (E||g_b||^2 = ||G||^2 + tr(Sigma)/b, with
    the finite-batch correction), read back into sum units: docs/protocol.md's n Delta =
    1 + tr(Sigma)/||G||^2. The denominator ||A||^2 = ||sum over the epoch of U||^2 is the
    exact estimator's, accumulated identically. Extra work per step: one squared-norm pass
    over the gradients per micro-batch and one for U; no host sync before :meth:`value`.

    Variance (docs/performance.md): the mean gradient cancels from the estimate's noise; for
    k = 2 the relative standard deviation of one step's P_hat is about
    sqrt(2 tr(Sigma^2)) / (tr(Sigma) + ||G||^2), and over an epoch of T steps it shrinks
    as 1/sqrt(T).

    Caveats: with BatchNorm in train mode the micro-batch gradients use micro-batch statistics
    (also for the update, in measured epochs only), so the estimate is of the train-mode
    gradients rather than the authors' eval-mode BatchNorm per-sample norms. Not for
    DistributedDataParallel models (the all-reduce mixes the micro-batch gradients); there
    the per-rank and all-reduced gradients are the natural two scales.

    Args:
        micro_batches: k, the minimum number of micro-batches of a measured step (>= 2);
            more when the batch exceeds ``method.max_micro_batch``.
    Raises:
        ValueError: ``micro_batches`` < 2.
    """

    uses_module_hooks = False  # torch.compile stays on in measured epochs

    plans_micro_batches: ClassVar[bool] = True  # two batch scales: every measured step is split

    def __init__(self, micro_batches: int = 2):
        if int(micro_batches) < 2:
            raise ValueError(f"micro_batches={micro_batches!r}; allowed: an integer >= 2 (two batch scales)")
        self.micro_batches = int(micro_batches)
        super().__init__()

    def prepare(self, model: nn.Module) -> nn.Module:
        return model

    def measuring(self, model: nn.Module):
        return contextlib.nullcontext(model)

    def reset(self) -> None:
        super().reset()
        self._micro_sq: Tensor | None = None
        self._plan: list[int] = []
        self._done = 0

    def micro_batch_sizes(self, batch_size: int, max_micro_batch: int) -> list[int]:
        """Sizes (samples) into which the trainer must split a measured step of ``batch_size``:
        k = max(micro_batches, ceil(batch_size / max_micro_batch)) near-equal parts (at most
        ``batch_size`` parts of one sample)."""
        k = min(batch_size, max(self.micro_batches, -(-batch_size // max_micro_batch)))
        q, r = divmod(batch_size, k)
        self._plan, self._done = [q + 1] * r + [q] * (k - r), 0
        return list(self._plan)

    def backward(self, model: nn.Module, loss: Tensor, batch_size: int, sample_scale: float | None = None) -> None:
        """``loss.backward()`` that also records ||U_j||^2 of this micro-batch.

        The accumulated gradient is set aside, the backward writes this micro-batch's gradient
        alone into ``p.grad`` (its norm is read there), and the two are added back: the same
        sum that ``loss.backward()`` would leave, with no extra copy.

        Args:
            loss: ``mean_loss * b_j / B`` (the trainer's scaled micro-batch loss).
            batch_size: B, the step's batch size (samples).
            sample_scale: ignored: this estimator plans its own chunks, always weighted ``b / B``.
        Raises:
            NotImplementedError: ``model`` is DistributedDataParallel.
        """
        if isinstance(model, nn.parallel.DistributedDataParallel):
            raise NotImplementedError(
                "method.diversity_estimator=microbatch does not support data-parallel "
                "runs; allowed there: exact (docs/performance.md)"
            )
        params = [p for p in model.parameters() if p.requires_grad]
        saved = [p.grad for p in params]
        for p in params:
            p.grad = None
        loss.backward()
        sq = sq_norm(param_grads(model)) * float(batch_size) ** 2
        self._micro_sq = sq if self._micro_sq is None else self._micro_sq + sq
        both_p, both_s = [], []
        for p, s in zip(params, saved):
            if s is None:
                continue
            if p.grad is None:
                p.grad = s
            else:
                both_p.append(p.grad)
                both_s.append(s)
        if both_p:
            torch._foreach_add_(both_p, both_s)
        self._done += 1

    def step_end(self, model: nn.Module, batch_size: int) -> None:
        """Turn the step's micro-batch norms into P_hat and accumulate it and B * p.grad.

        Raises:
            RuntimeError: the step was not split by :meth:`micro_batch_sizes`.
        """
        sizes = self._plan
        if self._done != len(sizes) or sum(sizes) != batch_size:
            raise RuntimeError(
                f"microbatch estimator: the step of {batch_size} samples ran {self._done} "
                f"micro-batches, planned {sizes}; split steps by estimator.micro_batch_sizes()"
            )
        grads = param_grads(model)
        full_sq = None if len(sizes) == 1 else sq_norm(grads) * float(batch_size) ** 2
        self.add(two_scale_sq_norm_sum(self._micro_sq, full_sq, sizes), grads, batch_size, grad_scale=batch_size)
        self._micro_sq, self._plan, self._done = None, [], 0
