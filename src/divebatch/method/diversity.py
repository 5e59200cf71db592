"""Gradient diversity: its definition, the estimator protocol, and the authors' epoch accumulator.

Definition (Yin et al., 2018, Def. 1; docs/protocol.md "Gradient diversity"), for per-sample gradients
g_i = grad f_i(w) over n samples::

    Delta(w) = sum_i ||g_i||^2 / ||sum_i g_i||^2,       n * Delta = 1 + tr(Sigma) / ||G||^2

with G the mean gradient and Sigma the per-sample gradient covariance (population form, 1/n).

The authors' *epoch estimator* accumulates, over every optimizer step of an epoch, the
per-sample squared norms (BackPACK ``BatchL2Grad``) and the mini-batch gradients, and returns
their ratio at the epoch's end. Their sums carry 1/m^2 and 1/m factors (mean loss) that cancel
only when every batch has the same size m. :class:`EpochDiversityEstimator` accumulates in
*sum units* instead (S = sum_i ||g_i||^2, A = sum_i g_i over the epoch's samples), which is the
authors' ratio whenever batch sizes are equal and stays exact with a smaller last batch and
with micro-batching; :class:`divebatch.method.exact.ExactDiversity` with ``mean_units``
(``fidelity.mean_units``, the authors' protocols) keeps their units instead, bit for bit. Everything
stays on the training device; the only host sync is :meth:`EpochDiversityEstimator.value`, once per epoch.

The estimators, one module each: :mod:`~divebatch.method.exact` (the authors' epoch estimator with
BackPACK per-sample norms, :mod:`~divebatch.method.backpack_norms`), :mod:`~divebatch.method.persample`
(the same with ``torch.func`` norms), :mod:`~divebatch.method.microbatch` (two-scale),
:mod:`~divebatch.method.fixed_point` (Delta(w) at one point); their registry:
:mod:`~divebatch.method.estimators`.
"""

from __future__ import annotations

import contextlib
from typing import Callable, ClassVar, Protocol, Sequence, runtime_checkable

import torch
from torch import Tensor, nn

BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def gradient_diversity(per_sample_grads: Tensor) -> Tensor:
    """Exact Delta from a matrix of per-sample gradients.

    Args:
        per_sample_grads: (n, p) float tensor, row i = g_i.
    Returns:
        0-d tensor Delta = sum_i ||g_i||^2 / ||sum_i g_i||^2 (inf when the sum is zero).
    Source: Yin et al. (2018), Definition 1.
    """
    num = per_sample_grads.pow(2).sum()
    den = per_sample_grads.sum(0).pow(2).sum()
    return num / den


@runtime_checkable
class DiversityEstimator(Protocol):
    """What the trainer and :class:`divebatch.method.controller.BatchSizeController` rely on, every
    estimator alike (``method.diversity_estimator``; :data:`divebatch.method.estimators.ESTIMATORS`).

    Lifecycle of one measured epoch: :meth:`reset`; the epoch's steps run inside
    :meth:`measuring`; per micro-batch, :meth:`observe` (inputs, for estimators that recompute
    per-sample gradients) then :meth:`backward` in place of ``loss.backward()``; per optimizer
    step, :meth:`step_end` before ``optimizer.step()``; after the epoch, :meth:`measure` at the
    final weights (fixed_point; a no-op for the epoch estimators); data-parallel runs
    :meth:`all_reduce_`; then :meth:`value`.

    Attributes:
        uses_module_hooks: measured epochs must run the eager (uncompiled) model.
        plans_micro_batches: the estimator chooses how a measured step is split
            (:meth:`micro_batch_sizes`; each part weighted b / B).
    """

    uses_module_hooks: ClassVar[bool]
    plans_micro_batches: ClassVar[bool]

    def prepare(self, model: nn.Module) -> nn.Module: ...

    def measuring(self, model: nn.Module) -> contextlib.AbstractContextManager: ...

    def reset(self) -> None: ...

    def micro_batch_sizes(self, batch_size: int, max_micro_batch: int) -> list[int]: ...

    def observe(self, x: Tensor, y: Tensor) -> None: ...

    def backward(self, model: nn.Module, loss: Tensor, batch_size: int, sample_scale: float | None = None) -> None: ...

    def step_end(self, model: nn.Module, batch_size: int) -> None: ...

    def measure(self, model: nn.Module) -> None: ...

    def value(self) -> float: ...

    def all_reduce_(self, all_reduce_sum: Callable[[Sequence[Tensor]], None]) -> None: ...


class EstimatorDefaults:
    """No-op defaults of the optional members of :class:`DiversityEstimator`: no module hooks, the
    trainer's own micro-batch plan, inputs not needed, nothing to do at the epoch's end."""

    uses_module_hooks: ClassVar[bool] = False
    plans_micro_batches: ClassVar[bool] = False

    def prepare(self, model: nn.Module) -> nn.Module:
        return model

    def measuring(self, model: nn.Module) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext(model)

    def micro_batch_sizes(self, batch_size: int, max_micro_batch: int) -> list[int]:
        raise NotImplementedError(f"{type(self).__name__} does not plan micro-batches (plans_micro_batches=False)")

    def observe(self, x: Tensor, y: Tensor) -> None:
        """Inputs of the next :meth:`backward`'s micro-batch (ignored unless an estimator needs them)."""

    def measure(self, model: nn.Module) -> None:
        """End-of-epoch measurement at the final weights (none for the epoch estimators)."""

    def attach(self, reference, n_train: int) -> None:
        """Samples to measure at one point (fixed_point only; the epoch estimators use the epoch's own)."""


class EpochDiversityEstimator(EstimatorDefaults):
    """The authors' epoch estimator of Delta, accumulated on the device in sum units.

    Feed it once per optimizer step with :meth:`add`; read :meth:`value` at the epoch's end.
    Per-sample gradients are those at the iterates visited during the epoch, not at one point
    (as in the authors' code); with lr 0 it is the exact Delta of the epoch's samples.
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.sq_norm_sum: Tensor | None = None  # S = sum_i ||g_i||^2, 0-d
        self.grad_sum: list[Tensor] | None = None  # A = sum_i g_i, one tensor per parameter
        self.samples = 0

    def add(self, sq_norm_sum: Tensor, grads: Sequence[Tensor], samples: int, grad_scale: float = 1.0) -> None:
        """Accumulate one step, in place on the device.

        Args:
            sq_norm_sum: 0-d tensor, sum over the step's samples of ||g_i||^2.
            grads: per-parameter tensors; ``grad_scale * grads`` is the sum over the step's samples
                of g_i (pass ``p.grad`` of a mean loss with ``grad_scale=batch_size``: no temporary).
            samples: number of samples in the step.
        """
        if self.grad_sum is None:
            self.sq_norm_sum = sq_norm_sum.detach().clone()
        else:
            self.sq_norm_sum += sq_norm_sum.detach()
        self.add_grads(grads, grad_scale)
        self.samples += samples

    def add_grads(self, grads: Sequence[Tensor], grad_scale: float = 1.0) -> None:
        """A += ``grad_scale * grads``, in place on the device (the first call copies).

        Args:
            grads: per-parameter tensors (``p.grad``), in ``model.parameters()`` order.
            grad_scale: factor on ``grads`` (1.0: an exact copy / exact elementwise addition).
        """
        grads = [g.detach() for g in grads]
        if self.grad_sum is None:
            self.grad_sum = torch._foreach_mul(grads, float(grad_scale))
        else:
            torch._foreach_add_(self.grad_sum, grads, alpha=float(grad_scale))

    def value(self) -> float:
        """Delta_hat = S / ||A||^2 (one host sync). NaN when nothing was accumulated."""
        if self.grad_sum is None:
            return float("nan")
        den = torch.stack([g.double().pow(2).sum() for g in self.grad_sum]).sum()
        return float(self.sq_norm_sum.double() / den)

    def all_reduce_(self, all_reduce_sum: Callable[[Sequence[Tensor]], None]) -> None:
        """Data-parallel runs: sum every rank's share of S, A and the sample count, in place.

        Each rank holds its own samples' squared norms in S, and ``B/K`` times the DDP-averaged
        (global mean) gradient in A, so the sums over ranks are S and A of all the epoch's samples
        (docs/distributed.md). Call once, on every rank, before :meth:`value`; subclasses that
        accumulate more must sum it too.

        Args:
            all_reduce_sum: sums a list of tensors over ranks in place
                (:meth:`divebatch.distributed.DistContext.all_reduce_sum`).
        """
        if self.grad_sum is None:
            raise RuntimeError("all_reduce_ before any add(): every rank must accumulate the same steps")
        count = torch.tensor(float(self.samples), dtype=torch.float64, device=self.sq_norm_sum.device)
        all_reduce_sum([self.sq_norm_sum, *self.grad_sum, count])
        self.samples = int(round(count.item()))


def param_grads(model: nn.Module) -> list[Tensor]:
    """``p.grad`` of every parameter that has one, in ``model.parameters()`` order."""
    return [p.grad for p in model.parameters() if p.grad is not None]


def sq_norm(tensors: Sequence[Tensor]) -> Tensor:
    """sum_t ||t||^2 as a 0-d float64 tensor on the tensors' device (one fused norm kernel, no sync)."""
    return torch.stack(torch._foreach_norm(list(tensors))).double().pow(2).sum()


def couples_samples(model: nn.Module) -> str | None:
    """Name of the first layer whose train-mode output mixes or randomises samples (BatchNorm, dropout
    with p > 0), or None: train and eval mode are then the same function of w."""
    for name, m in model.named_modules():
        if isinstance(m, BN_TYPES) or (isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0):
            return f"{name} ({type(m).__name__})"
    return None
