"""Exact per-sample gradient norms with ``torch.func`` (``method.diversity_estimator=exact_func``).

BackPACK's ``BatchL2Grad`` covers Linear, Conv and BatchNorm layers but not attention,
LayerNorm or embeddings, so for the transformer the per-sample squared norms come from
``torch.func.vmap(torch.func.grad(f))``: f is one sample's loss as a function of the parameters
(``torch.func.functional_call``), vmapped over the micro-batch in chunks of ``chunk_size``
samples. This is exact for any model whose samples do not interact in the forward pass (no
BatchNorm in train mode, no dropout); it recomputes a forward and backward per chunk, so a
measured step costs about two plain steps plus the per-sample gradients' memory (n p floats per
chunk); measured in docs/performance.md (benchmark ``benchmarks/transformer_cost.py``).

Estimator protocol: as :class:`divebatch.method.exact.ExactDiversity`, plus :meth:`FuncDiversity.observe`,
which the trainer calls with every micro-batch's inputs and targets before its backward.
"""

from __future__ import annotations

import contextlib
from typing import Callable, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from divebatch.method.diversity import EpochDiversityEstimator, couples_samples, param_grads


def per_sample_sq_norms(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    loss_fn: Callable[[Tensor, Tensor], Tensor] = F.cross_entropy,
    chunk_size: int | None = 64,
) -> Tensor:
    """Squared norms of the per-sample gradients ||grad_w f_i(w)||^2, exactly, by ``torch.func``.

    Args:
        model: the network (not modified; its parameters with ``requires_grad`` form w, its
            buffers are used as they are). Must not couple samples (BatchNorm in train mode,
            dropout): vmap would see one sample at a time.
        x: (n, ...) inputs; y: (n, ...) targets.
        loss_fn: a sample's loss from (1, ...) outputs and (1, ...) targets, mean-reduced (the
            default ``F.cross_entropy``: for the language model the mean token cross-entropy of
            one sequence).
        chunk_size: samples per vmapped chunk (bounds memory to chunk_size x parameters floats);
            None: all at once.
    Returns:
        (n,) float32 tensor on the model's device, in the units of ``loss_fn`` squared per
        parameter (the sum over all parameters of the squared per-sample gradient entries).
    """
    from torch.func import functional_call, grad, vmap
    from torch.nn.attention import SDPBackend, sdpa_kernel

    params = {k: p.detach() for k, p in model.named_parameters() if p.requires_grad}
    buffers = dict(model.named_buffers())

    def sample_loss(p, xi, yi):
        out = functional_call(model, (p, buffers), (xi.unsqueeze(0),))
        return loss_fn(out, yi.unsqueeze(0))

    # torch's math attention is composite, so vmap batches it natively (the fused CPU kernels have no
    # batching rule and would fall back to a per-sample loop, with the same values)
    with sdpa_kernel([SDPBackend.MATH]):
        grads = vmap(grad(sample_loss), in_dims=(None, 0, 0), chunk_size=chunk_size)(params, x, y)
    return torch.stack([g.flatten(1).pow(2).sum(1) for g in grads.values()]).sum(0)


class FuncDiversity(EpochDiversityEstimator):
    """The authors' epoch estimator with exact per-sample norms from :func:`per_sample_sq_norms`.

    Same accumulation as :class:`divebatch.method.exact.ExactDiversity` (sum units; S = sum of the
    per-sample squared norms, A = sum of the step's mean gradients times B), for models BackPACK
    does not cover. Per-sample norms are those of the parameters at the step's start, as the
    update's own gradient; weight decay is not part of them (it is not in ``p.grad``).

    Args:
        chunk_size: samples per vmapped chunk (memory: chunk_size x parameters floats).
        loss_fn: one sample's loss (default the trainer's criterion, mean cross-entropy).
    """

    uses_module_hooks: ClassVar[bool] = True  # functional_call on the eager module: measured epochs run uncompiled

    def __init__(self, chunk_size: int = 64, loss_fn: Callable[[Tensor, Tensor], Tensor] = F.cross_entropy):
        self.chunk_size, self.loss_fn = int(chunk_size), loss_fn
        super().__init__()

    def prepare(self, model: nn.Module) -> nn.Module:
        """Check that the model's samples are independent in train mode.

        Raises:
            ValueError: the model has BatchNorm or dropout layers (names the first).
        """
        layer = couples_samples(model)
        if layer is not None:
            raise ValueError(
                f"invalid config: method.diversity_estimator='exact_func' with layer {layer} "
                f"whose train-mode output mixes or randomises samples; "
                f"allowed: exact | microbatch for this model"
            )
        return model

    def measuring(self, model: nn.Module):
        return contextlib.nullcontext(model)

    def reset(self) -> None:
        super().reset()
        self._step_sq: Tensor | None = None
        self._chunk: tuple[Tensor, Tensor] | None = None

    def observe(self, x: Tensor, y: Tensor) -> None:
        """The micro-batch the next :meth:`backward` belongs to (the trainer calls this first)."""
        self._chunk = (x, y)

    def backward(self, model: nn.Module, loss: Tensor, batch_size: int, sample_scale: float | None = None) -> None:
        """``loss.backward()``, then the per-sample squared norms of the observed micro-batch.

        Args:
            loss: the micro-batch's loss as used for the update.
            batch_size: B, the step's samples; ``sample_scale`` is not needed (the norms are
                computed from each sample's own loss, already in sum units).
        Raises:
            RuntimeError: no :meth:`observe` call since the last backward.
        """
        if self._chunk is None:
            raise RuntimeError(
                "exact_func estimator: backward() without observe(x, y); the trainer must pass "
                "every micro-batch's inputs and targets first"
            )
        x, y = self._chunk
        self._chunk = None
        loss.backward()
        module = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
        sq = per_sample_sq_norms(module, x, y, self.loss_fn, self.chunk_size).sum()
        self._step_sq = sq if self._step_sq is None else self._step_sq + sq

    def step_end(self, model: nn.Module, batch_size: int) -> None:
        self.add(self._step_sq, param_grads(model), batch_size, grad_scale=batch_size)
        self._step_sq = None
