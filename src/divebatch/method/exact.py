"""The authors' epoch estimator with BackPACK per-sample norms (``method.diversity_estimator=exact``)."""

from __future__ import annotations

from typing import Callable, ClassVar, Sequence

import torch
from torch import Tensor, nn

from divebatch.method.backpack_norms import backpack_hooks, backward_with_sq_norms, batch_l2_sums, convert_for_backpack
from divebatch.method.diversity import EpochDiversityEstimator, param_grads


class ExactDiversity(EpochDiversityEstimator):
    """The authors' estimator with BackPACK per-sample squared norms (``method.diversity_estimator=exact``).

    Trainer protocol: :meth:`prepare` once on the model; a measured epoch runs inside
    :meth:`measuring` (``train_one_epoch`` opens it), where :meth:`backward` replaces
    ``loss.backward()`` for every micro-batch and :meth:`step_end` runs after the last
    micro-batch of each optimizer step (before ``optimizer.step()``, so ``p.grad`` holds the
    step's mean gradient without weight decay); :meth:`value` at the epoch's end, then :meth:`reset`.
    An estimator may also plan the micro-batch sizes (``micro_batch_sizes``, see
    :class:`~divebatch.method.microbatch.MicroBatchDiversity`) and declares ``uses_module_hooks`` (measured epochs then run
    the uncompiled model). Costs: docs/performance.md.

    Units. By default S and A are in sum units (S = sum_i ||g_i||^2, A = sum_i g_i; exact with a
    smaller last batch and with chunks). With ``mean_units`` (``fidelity.mean_units``, the authors'
    protocols; docs/protocol.md) they are in the authors' per-backward units: each backward adds
    BackPACK's ``batch_l2`` of the loss as used for the update, w^2 ||g_i||^2 per sample, to S, and
    ``p.grad`` (weight w per sample) to A, where w = 1/(b k) for a chunk of b samples of a step
    split into k chunks under ``fidelity.micro_batch_loss=per_chunk`` (1/m for an unsplit step of m),
    and the value is S / (||A||^2 + 1e-10) with ||A||^2 = ``torch.norm`` of the concatenated A on
    the host, squared. Sources: pytorch-cifar@7289184 ``src/train_utils.py:202-211`` (unsplit step,
    CIFAR-10), ``:21-25`` (||A||^2), ``:231-232, 246-247`` (the ratio); the Tiny-ImageNet trainer
    that produced the results, pytorch-cifar@5462789 ``src/train_utils.py:164-179`` (chunks: loss / k,
    A and S after every chunk); pytorch-cifar100@43c2ab1 ``train_utils.py:99-112, 127-129, 142-143``.
    S is summed on the host in float64, one term per parameter per backward in parameter order, as
    their ``individual_grad_norm_sum += (param.batch_l2).sum().item()``; A is summed elementwise in
    the parameters' dtype, as their ``accumulated_grads[j] += param.grad``. The same arithmetic, so
    the same bits given the same per-parameter ``batch_l2`` sums (BackPACK's extensions; our Conv2d
    route, :func:`~divebatch.method.backpack_norms.batch_l2_extension`, agrees with BackPACK's to rounding only). Data-parallel runs:
    w also carries DDP's 1/K, so the ranks' summed S and A are the single process's.

    Args:
        extension: BackPACK extension writing ``p.batch_l2`` (default :func:`~divebatch.method.backpack_norms.batch_l2_extension`;
            benchmark (a) passes stock ``BatchL2Grad()`` to compare the Conv2d routes).
        running_grad_sum: ``fidelity.running_grad_sum`` (:meth:`backward`).
        mean_units: ``fidelity.mean_units``: the authors' per-backward mean units (above).
    """

    uses_module_hooks: ClassVar[bool] = True  # the trainer runs measured epochs on the eager (uncompiled) model

    def __init__(self, extension=None, running_grad_sum: bool = False, mean_units: bool = False):
        self.extension = extension
        self.running_grad_sum = bool(running_grad_sum)
        self.mean_units = bool(mean_units)
        super().__init__()

    def prepare(self, model: nn.Module) -> nn.Module:
        """Convert torchvision models for BackPACK; hooks are attached only by :meth:`measuring`."""
        return convert_for_backpack(model)

    def measuring(self, model: nn.Module):
        """Context for one measured epoch: BackPACK's hooks on, off again afterwards, so that
        unmeasured epochs cost what plain SGD costs (:func:`~divebatch.method.backpack_norms.backpack_hooks`)."""
        return backpack_hooks(model)

    def reset(self) -> None:
        super().reset()
        self._step_sq: Tensor | None = None
        self._terms: list[Tensor] = []  # mean units: each backward's per-parameter batch_l2 sums

    def backward(self, model: nn.Module, loss: Tensor, batch_size: int, sample_scale: float | None = None) -> None:
        """``loss.backward()`` that also records the chunk's per-sample squared norms.

        Args:
            loss: the chunk's loss as used for the update; sample i's gradient in it is
                ``g_i / sample_scale``.
            batch_size: B, the step's samples.
            sample_scale: default B (the chunk loss is ``mean_loss * b / B``); ``b * k`` under the
                authors' ``loss / k`` chunk weighting (``fidelity.micro_batch_loss=per_chunk``).
                Sum units only: it turns BackPACK's ``batch_l2`` back into ||g_i||^2; mean units
                keep ``batch_l2`` as it is.

        With ``running_grad_sum`` (the authors' Tiny-ImageNet loop, ``fidelity.running_grad_sum``;
        their ``src/train_utils.py:179-181`` at pytorch-cifar@7289184, ``:177-179`` at 5462789,
        docs/protocol.md) the *running* accumulated gradient is added to A after every chunk, so a
        step of k chunks adds sum_s (k - s + 1) U_s instead of sum_s U_s: about ((k + 1) / 2)^-2 of
        the estimate for k equal chunks.
        """
        if self.mean_units:
            ranks = _data_parallel_ranks(model)
            terms = batch_l2_sums(model, loss, self.extension)
            self._terms.append(terms if ranks == 1 else terms / ranks**2)
            if self.running_grad_sum:
                self.add_grads(param_grads(model), 1.0 / ranks)
            return
        sq = backward_with_sq_norms(model, loss, sample_scale or batch_size, self.extension)
        if self.running_grad_sum:
            self.add(sq, param_grads(model), 0, grad_scale=batch_size)
        else:
            self._step_sq = sq if self._step_sq is None else self._step_sq + sq

    def step_end(self, model: nn.Module, batch_size: int) -> None:
        if self.mean_units:
            if not self.running_grad_sum:
                self.add_grads(param_grads(model), 1.0 / _data_parallel_ranks(model))
            self.samples += batch_size
            return
        if self.running_grad_sum:
            self.samples += batch_size
            return
        self.add(self._step_sq, param_grads(model), batch_size, grad_scale=batch_size)
        self._step_sq = None

    def _fold_terms(self) -> float:
        """Mean units: S on the host, the authors' way (a float64 sum over backwards and parameters,
        in order; their ``src/train_utils.py:181`` at pytorch-cifar@7289184). One host sync."""
        s = 0.0 if self.sq_norm_sum is None else float(self.sq_norm_sum)
        if self._terms:
            for term in torch.cat(self._terms).double().cpu().tolist():
                s += term
        return s

    def value(self) -> float:
        """Delta_hat (one host sync): S / ||A||^2 in sum units; with ``mean_units`` the authors'
        S / (||A||^2 + 1e-10) (class docstring). NaN when nothing was accumulated."""
        if not self.mean_units:
            return super().value()
        if self.grad_sum is None:
            return float("nan")
        grad_sum_norm = torch.norm(torch.cat([g.flatten() for g in self.grad_sum]).cpu()).item() ** 2
        return self._fold_terms() / (grad_sum_norm + 1e-10)

    def all_reduce_(self, all_reduce_sum: Callable[[Sequence[Tensor]], None]) -> None:
        """Data-parallel runs: as :meth:`~divebatch.method.diversity.EpochDiversityEstimator.all_reduce_`; in mean units each rank's
        S is first summed on the host (:meth:`_fold_terms`)."""
        if self.mean_units and self.grad_sum is not None:
            device = self.grad_sum[0].device
            self.sq_norm_sum = torch.tensor(self._fold_terms(), dtype=torch.float64, device=device)
            self._terms = []
        super().all_reduce_(all_reduce_sum)


def _data_parallel_ranks(model: nn.Module) -> int:
    """K, the number of processes DDP averages ``p.grad`` over (1 for a model without DDP)."""
    if isinstance(model, nn.parallel.DistributedDataParallel):
        return torch.distributed.get_world_size(model.process_group)
    return 1
