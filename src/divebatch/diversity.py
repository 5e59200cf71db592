"""Gradient diversity: its definition, the authors' epoch estimator, and BackPACK plumbing.

Definition (Yin et al., 2018, Def. 1; PAPER.md "Gradient diversity"), for per-sample gradients
g_i = grad f_i(w) over n samples::

    Delta(w) = sum_i ||g_i||^2 / ||sum_i g_i||^2,       n * Delta = 1 + tr(Sigma) / ||G||^2

with G the mean gradient and Sigma the per-sample gradient covariance (population form, 1/n).

The authors' *epoch estimator* accumulates, over every optimizer step of an epoch, the
per-sample squared norms (BackPACK ``BatchL2Grad``) and the mini-batch gradients, and returns
their ratio at the epoch's end. Their sums carry 1/m^2 and 1/m factors (mean loss) that cancel
only when every batch has the same size m. :class:`EpochDiversityEstimator` accumulates in
*sum units* instead (S = sum_i ||g_i||^2, A = sum_i g_i over the epoch's samples), which is the
authors' ratio whenever batch sizes are equal and stays exact with a smaller last batch and
with micro-batching. Everything stays on the training device; the only host sync is
:meth:`EpochDiversityEstimator.value`, once per epoch.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Callable, Iterable, Iterator, Sequence

import torch
from torch import Tensor, nn

_BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
# BackPACK warns about every container module with parameters (the leaves carry the extension) and
# torch about full backward hooks on inputs that need no gradient (the images): both expected here.
warnings.filterwarnings("ignore", message="Extension saving to batch_l2 does not have an extension")
warnings.filterwarnings("ignore", message="Full backward hook is firing when gradients are computed")


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


def noise_scale_form(per_sample_grads: Tensor) -> Tensor:
    """``n * Delta`` computed as ``1 + tr(Sigma) / ||G||^2`` (PAPER.md identity; McCandlish et al., 2018).

    Args:
        per_sample_grads: (n, p) tensor.
    Returns:
        0-d tensor, equal to ``n * gradient_diversity(per_sample_grads)`` up to rounding.
    """
    mean = per_sample_grads.mean(0)
    trace_cov = (per_sample_grads - mean).pow(2).sum(1).mean()  # population covariance (1/n)
    return 1 + trace_cov / mean.pow(2).sum()


def per_sample_gradients(model: nn.Module, loss_fn: Callable[[Tensor, Tensor], Tensor],
                         x: Tensor, y: Tensor) -> Tensor:
    """Brute-force per-sample gradients by a loop of single-sample backward passes (reference).

    The model is used in whatever mode it is in; BatchNorm in train mode on a single sample is
    ill-defined, so call this with BatchNorm in eval mode.

    Args:
        model: the network; its parameters with ``requires_grad`` form the gradient vector.
        loss_fn: per-batch loss with ``reduction='sum'`` or ``'mean'`` (identical on one sample).
        x: (n, ...) inputs; y: (n,) targets.
    Returns:
        (n, p) tensor of flattened per-sample gradients, parameters in ``model.parameters()`` order.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    rows = []
    for i in range(x.shape[0]):
        loss = loss_fn(model(x[i:i + 1]), y[i:i + 1])
        grads = torch.autograd.grad(loss, params)
        rows.append(torch.cat([g.reshape(-1) for g in grads]))
    return torch.stack(rows)


class EpochDiversityEstimator:
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

    def add(self, sq_norm_sum: Tensor, grad_sum: Sequence[Tensor], samples: int) -> None:
        """Accumulate one step.

        Args:
            sq_norm_sum: 0-d tensor, sum over the step's samples of ||g_i||^2.
            grad_sum: per-parameter tensors, sum over the step's samples of g_i.
            samples: number of samples in the step.
        """
        if self.grad_sum is None:
            self.sq_norm_sum = sq_norm_sum.detach().clone()
            self.grad_sum = [g.detach().clone() for g in grad_sum]
        else:
            self.sq_norm_sum += sq_norm_sum.detach()
            torch._foreach_add_(self.grad_sum, [g.detach() for g in grad_sum])
        self.samples += samples

    def value(self) -> float:
        """Delta_hat = S / ||A||^2 (one host sync). NaN when nothing was accumulated."""
        if self.grad_sum is None:
            return float("nan")
        den = torch.stack([g.double().pow(2).sum() for g in self.grad_sum]).sum()
        return float(self.sq_norm_sum.double() / den)

    def state_dict(self) -> dict:
        return {"sq_norm_sum": self.sq_norm_sum, "grad_sum": self.grad_sum, "samples": self.samples}


def extend_model(model: nn.Module) -> nn.Module:
    """Prepare a model for BackPACK's ``BatchL2Grad``.

    ``use_converter=True`` rewrites in-place additions (torchvision's ResNet ``out += identity``)
    into modules BackPACK can hook; our own models have no in-place operations, so the converter
    is only used when a model contains one (torchvision models).
    """
    from backpack import extend

    needs_converter = any(type(m).__module__.startswith("torchvision") for m in model.modules())
    return extend(model, use_converter=needs_converter)


@contextlib.contextmanager
def batchnorm_eval(model: nn.Module) -> Iterator[None]:
    """Switch BatchNorm layers to eval mode for the duration (authors' trick around the backward).

    The forward already ran in train mode, so activations and the parameter gradient are the
    ordinary train-mode ones; only BackPACK's per-sample quantities see eval-mode BatchNorm
    (a fixed per-channel affine map using the running statistics), see docs/diversity.md.
    """
    flipped = [m for m in model.modules() if isinstance(m, _BN_TYPES) and m.training]
    for m in flipped:
        m.eval()
    try:
        yield
    finally:
        for m in flipped:
            m.train()


def backward_with_sq_norms(model: nn.Module, loss: Tensor, scale: float) -> Tensor:
    """Backward pass that also returns the sum of per-sample squared gradient norms.

    Args:
        model: a model prepared with :func:`extend_model`.
        loss: the micro-batch loss as used for the update, i.e. ``mean_loss * b / B`` so that
            sample i's gradient contribution is g_i / B.
        scale: B, the optimizer step's batch size (samples), to undo the 1/B^2 of BackPACK's
            ``batch_l2`` so the result is in sum units.
    Returns:
        0-d tensor on the loss's device: sum_i ||g_i||^2 over the micro-batch's samples.
    """
    from backpack import backpack
    from backpack.extensions import BatchL2Grad

    with batchnorm_eval(model), backpack(BatchL2Grad()):
        loss.backward()
    sq = [p.batch_l2.sum() for p in model.parameters() if getattr(p, "batch_l2", None) is not None]
    for p in model.parameters():
        if hasattr(p, "batch_l2"):
            del p.batch_l2
    return torch.stack(sq).sum() * (scale * scale)


def grad_sum(params: Iterable[nn.Parameter], batch_size: int) -> list[Tensor]:
    """Sum-unit gradient ``B * p.grad`` of a mean-loss step over B samples (no copy of p.grad is kept)."""
    return [p.grad * batch_size for p in params if p.grad is not None]


class ExactDiversity(EpochDiversityEstimator):
    """The authors' estimator with BackPACK per-sample squared norms (``method.diversity_estimator=exact``).

    Trainer protocol: :meth:`prepare` once on the model; in a measured epoch, :meth:`backward`
    replaces ``loss.backward()`` for every micro-batch and :meth:`step_end` runs after the last
    micro-batch of each optimizer step (before ``optimizer.step()``, so ``p.grad`` holds the
    step's mean gradient without weight decay); :meth:`value` at the epoch's end, then :meth:`reset`.
    """

    def prepare(self, model: nn.Module) -> nn.Module:
        return extend_model(model)

    def reset(self) -> None:
        super().reset()
        self._step_sq: Tensor | None = None

    def backward(self, model: nn.Module, loss: Tensor, batch_size: int) -> None:
        sq = backward_with_sq_norms(model, loss, batch_size)
        self._step_sq = sq if self._step_sq is None else self._step_sq + sq

    def step_end(self, model: nn.Module, batch_size: int) -> None:
        self.add(self._step_sq, grad_sum(model.parameters(), batch_size), batch_size)
        self._step_sq = None


ESTIMATORS: dict[str, type] = {"exact": ExactDiversity}


def build_estimator(name: str):
    """Estimator named by ``method.diversity_estimator``.

    Raises:
        KeyError: unknown name (lists the allowed ones).
    """
    if name not in ESTIMATORS:
        raise KeyError(f"method.diversity_estimator={name!r}; allowed: {' | '.join(ESTIMATORS)}")
    return ESTIMATORS[name]()
