"""Gradient diversity: its definition, the authors' epoch estimator, and BackPACK plumbing.

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
with micro-batching; :class:`ExactDiversity` with ``mean_units`` (``fidelity.mean_units``, the
authors' protocols) keeps their units instead, bit for bit. Everything stays on the training
device; the only host sync is :meth:`EpochDiversityEstimator.value`, once per epoch.
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from typing import Callable, ClassVar, Iterator, Protocol, Sequence, runtime_checkable

import torch
import torch.nn.functional as F
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


@runtime_checkable
class DiversityEstimator(Protocol):
    """What the trainer and :class:`divebatch.method.controller.BatchSizeController` rely on, every
    estimator alike (``method.diversity_estimator``; :data:`ESTIMATORS`).

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


def extend_model(model: nn.Module) -> nn.Module:
    """Prepare a model for BackPACK's ``BatchL2Grad``.

    ``use_converter=True`` rewrites in-place additions (torchvision's ResNet ``out += identity``)
    into modules BackPACK can hook; our own models have no in-place operations, so the converter
    is only used when a model contains one (torchvision models).
    """
    from backpack import extend

    return extend(model, use_converter=_needs_converter(model))


def _needs_converter(model: nn.Module) -> bool:
    return any(type(m).__module__.startswith("torchvision") for m in model.modules())


def convert_for_backpack(model: nn.Module) -> nn.Module:
    """:func:`extend_model` without hooks: torchvision models go through BackPACK's converter
    (in-place additions become modules), others are returned unchanged. Hooks come later, only
    for measured epochs (:func:`backpack_hooks`)."""
    if not _needs_converter(model):
        return model
    from backpack.custom_module.graph_utils import convert_module_to_backpack

    return convert_module_to_backpack(model, False)


def _float32(t):
    return t.float() if isinstance(t, Tensor) and t.dtype in (torch.bfloat16, torch.float16) else t


@contextlib.contextmanager
def backpack_hooks(model: nn.Module) -> Iterator[nn.Module]:
    """BackPACK's forward (store input/output) and backward (run extensions) hooks on ``model``'s
    modules that own parameters, for the duration of the block only.

    Why not ``backpack.extend`` for the whole run: its hooks stay on every module (containers
    included) and make every later step slower, and ``backpack.disable()`` removes only part of
    it (measured cost: docs/performance.md, "The exact estimator, made cheap", item 1).
    First-order extensions such as ``BatchL2Grad`` read only ``module.input0`` and the output
    gradient of the module that owns the parameter, so those modules are all that need hooks.
    Modules already extended with :func:`extend_model` are left as they are.

    Under bf16/fp16 autocast the stored activations and output gradients are handed to BackPACK
    in float32: its einsums reject mixed precisions (BatchNorm: bf16 input, float32 running
    statistics), and per-sample norms keep float32 accuracy. Nothing is copied in float32 runs.
    """
    from backpack import hook_run_extensions, hook_store_io, memory_cleanup

    def store_io(module, inputs, output):
        out = tuple(map(_float32, output)) if isinstance(output, tuple) else _float32(output)
        hook_store_io(module, tuple(map(_float32, inputs)), out)

    def run_extensions(module, g_inp, g_out):
        hook_run_extensions(module, tuple(map(_float32, g_inp)), tuple(map(_float32, g_out)))

    handles = []
    for m in model.modules():
        if getattr(m, "_backpack_extend", False) or next(m.parameters(recurse=False), None) is None:
            continue
        handles.append(m.register_forward_hook(store_io))
        handles.append(m.register_full_backward_hook(run_extensions))
    try:
        yield model
    finally:
        for h in handles:
            h.remove()
        for m in model.modules():  # an interrupted step leaves stored activations behind
            if not getattr(m, "_backpack_extend", False):
                memory_cleanup(m)


@functools.lru_cache(maxsize=None)
def _conv2d_batch_l2_class():
    from backpack.extensions.firstorder.batch_l2_grad.convnd import BatchL2Conv2d

    class CheapestBatchL2Conv2d(BatchL2Conv2d):
        """BackPACK's Conv2d ``batch_l2`` for the weight, by the cheaper of two exact routes per layer.

        Per sample i, with X_i the unfolded input (k x s: k = C_in/groups * kernel area, s output
        positions) and D_i the output gradient (m x s), the weight gradient is D_i X_i^T and

            ||D_i X_i^T||^2 = sum_{a,b} (X_i^T X_i)_{ab} (D_i^T D_i)_{ab}      (Gram route).

        BackPACK 1.7.1 unfolds the input (im2col, slow on CPUs) and evaluates
        ``einsum("nmi,nki,nmj,nkj->n")``: left to right without opt_einsum; with opt_einsum
        (a pinned dependency) torch.einsum picks per layer between these same two orders, but
        the im2col and the batched matrix products on it stay. Here, per layer:

        * per-sample gradient route when m k <= s (k + m) (early layers: many positions, few
          channels): all n weight gradients from one grouped convolution with n groups
          (``torch.nn.grad.conv2d_weight``; Rochette et al., 2019, "Efficient per-example
          gradient computations in convolutional neural networks"), about the cost of the
          ordinary weight gradient and no im2col; n m k extra floats;
        * Gram route otherwise (late layers: few positions): n s^2 extra floats.

        Why kept over the library: a measured step with stock BackPACK + opt_einsum is slower
        than with this route on the ResNets by more than the project's bar for home-made code
        (the measured ratios: docs/performance.md, "The exact estimator, made cheap", item 2,
        benchmark (a)). Same values: tested against per-sample loops and against stock
        ``BatchL2Grad``.

        Padding modes other than zeros and string paddings ('same') are applied to the input
        first, as ``nn.Conv2d`` does (BackPACK's own route assumes zero padding).
        ``weight`` returns an (n,) tensor: ||dL_i/dW||^2 per sample, as BackPACK's does.
        """

        def weight(self, ext, module, g_inp, g_out, backproped):
            x, d = module.input0, g_out[0]
            if module.padding_mode != "zeros" or isinstance(module.padding, str):
                mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
                x, padding = F.pad(x, module._reversed_padding_repeated_twice, mode=mode), (0, 0)
            else:
                padding = module.padding
            n, c_in, m = x.shape[0], module.in_channels, module.out_channels
            k = c_in // module.groups * module.kernel_size[0] * module.kernel_size[1]
            s = d.shape[2] * d.shape[3]
            if m * k <= s * (k + m) or module.groups != 1:
                grads = torch.nn.grad.conv2d_weight(
                    x.reshape(1, n * c_in, *x.shape[2:]),
                    (n * m, c_in // module.groups, *module.kernel_size),
                    d.reshape(1, n * m, *d.shape[2:]),
                    module.stride,
                    padding,
                    module.dilation,
                    groups=n * module.groups,
                )
                return grads.view(n, -1).pow(2).sum(1)
            xu = F.unfold(x, module.kernel_size, module.dilation, padding, module.stride)  # (n, k, s)
            du = d.flatten(2)  # (n, m, s)
            return (torch.bmm(xu.transpose(1, 2), xu) * torch.bmm(du.transpose(1, 2), du)).sum((1, 2))

    return CheapestBatchL2Conv2d


@functools.lru_cache(maxsize=None)  # one instance: extensions hold no per-call state
def batch_l2_extension():
    """BackPACK's ``BatchL2Grad`` with Conv2d weights by the cheaper route (``CheapestBatchL2Conv2d``,
    installed with BackPACK's documented ``set_module_extension``); every other layer is BackPACK's.

    The same values as stock ``BatchL2Grad()``, whose measured step costs more on the ResNets
    even with opt_einsum ordering its einsum (the ratios: docs/performance.md, "The exact
    estimator, made cheap", item 2; benchmark (a) prints both side by side).

    Returns:
        a ``backpack.extensions.BatchL2Grad`` instance (cached: the same object every call).
    """
    from backpack.extensions import BatchL2Grad

    ext = BatchL2Grad()
    ext.set_module_extension(nn.Conv2d, _conv2d_batch_l2_class()(), overwrite=True)
    return ext


@contextlib.contextmanager
def batchnorm_eval(model: nn.Module) -> Iterator[None]:
    """Switch BatchNorm layers to eval mode for the duration (authors' trick around the backward).

    The forward already ran in train mode, so activations, the output gradients autograd hands to
    BackPACK's (first-order) hooks and the parameter gradient are the ordinary train-mode ones.
    Eval mode only passes BackPACK's train-mode check and makes the BatchNorm *weight*'s
    per-sample terms use x_hat from the running statistics; see docs/diversity.md.
    """
    flipped = [m for m in model.modules() if isinstance(m, _BN_TYPES) and m.training]
    for m in flipped:
        m.eval()
    try:
        yield
    finally:
        for m in flipped:
            m.train()


def backward_with_sq_norms(model: nn.Module, loss: Tensor, scale: float, extension=None) -> Tensor:
    """Backward pass that also returns the sum of per-sample squared gradient norms.

    Args:
        model: a model prepared with :func:`extend_model` (or inside :func:`backpack_hooks`).
        loss: the micro-batch loss as used for the update, i.e. ``mean_loss * b / B`` so that
            sample i's gradient contribution is g_i / B.
        scale: B, the optimizer step's batch size (samples), to undo the 1/B^2 of BackPACK's
            ``batch_l2`` so the result is in sum units.
        extension: the BackPACK extension that writes ``p.batch_l2``; default
            :func:`batch_l2_extension` (stock ``BatchL2Grad()`` gives the same values, slower).
    Returns:
        0-d tensor on the loss's device: sum_i ||g_i||^2 over the micro-batch's samples.
    """
    return batch_l2_sums(model, loss, extension).sum() * (scale * scale)


def batch_l2_sums(model: nn.Module, loss: Tensor, extension=None) -> Tensor:
    """The backward pass of :func:`backward_with_sq_norms`, returning BackPACK's per-sample squared
    norms summed per parameter, in the loss's own units.

    Args:
        model: as for :func:`backward_with_sq_norms`.
        loss: the micro-batch loss as used for the update; if sample i's gradient in it is
            ``w * g_i``, parameter j's entry is ``w^2 * sum_i ||dg_i/dtheta_j||^2``.
        extension: as for :func:`backward_with_sq_norms`.
    Returns:
        (P,) tensor on the loss's device, one entry per parameter with a gradient, in
        ``model.named_parameters()`` order: ``p.batch_l2.sum()`` (the authors' per-parameter term,
        ``src/train_utils.py:181`` at pytorch-cifar@7289184).
    Raises:
        RuntimeError: BackPACK gave no per-sample norms for a parameter that has a gradient.
    """
    from backpack import backpack

    with batchnorm_eval(model), backpack(extension if extension is not None else batch_l2_extension()):
        loss.backward()
    sq, missing = [], []
    for name, p in model.named_parameters():  # attribute checks only: no device sync
        l2 = getattr(p, "batch_l2", None)
        if l2 is not None:
            sq.append(l2.sum())
            del p.batch_l2
        elif p.grad is not None:
            missing.append(name)
    if missing or not sq:
        raise RuntimeError(
            f"BackPACK gave no per-sample norms for parameters {missing or 'any'}: run the "
            f"forward and backward inside backpack_hooks(model) (or on an extend_model model) "
            f"and use layers BackPACK's BatchL2Grad supports"
        )
    return torch.stack(sq)


class ExactDiversity(EpochDiversityEstimator):
    """The authors' estimator with BackPACK per-sample squared norms (``method.diversity_estimator=exact``).

    Trainer protocol: :meth:`prepare` once on the model; a measured epoch runs inside
    :meth:`measuring` (``train_one_epoch`` opens it), where :meth:`backward` replaces
    ``loss.backward()`` for every micro-batch and :meth:`step_end` runs after the last
    micro-batch of each optimizer step (before ``optimizer.step()``, so ``p.grad`` holds the
    step's mean gradient without weight decay); :meth:`value` at the epoch's end, then :meth:`reset`.
    An estimator may also plan the micro-batch sizes (``micro_batch_sizes``, see
    :class:`MicroBatchDiversity`) and declares ``uses_module_hooks`` (measured epochs then run
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
    route, :func:`batch_l2_extension`, agrees with BackPACK's to rounding only). Data-parallel runs:
    w also carries DDP's 1/K, so the ranks' summed S and A are the single process's.

    Args:
        extension: BackPACK extension writing ``p.batch_l2`` (default :func:`batch_l2_extension`;
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
        unmeasured epochs cost what plain SGD costs (:func:`backpack_hooks`)."""
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
                self.add_grads(_grads(model), 1.0 / ranks)
            return
        sq = backward_with_sq_norms(model, loss, sample_scale or batch_size, self.extension)
        if self.running_grad_sum:
            self.add(sq, _grads(model), 0, grad_scale=batch_size)
        else:
            self._step_sq = sq if self._step_sq is None else self._step_sq + sq

    def step_end(self, model: nn.Module, batch_size: int) -> None:
        if self.mean_units:
            if not self.running_grad_sum:
                self.add_grads(_grads(model), 1.0 / _data_parallel_ranks(model))
            self.samples += batch_size
            return
        if self.running_grad_sum:
            self.samples += batch_size
            return
        self.add(self._step_sq, _grads(model), batch_size, grad_scale=batch_size)
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
        """Data-parallel runs: as :meth:`EpochDiversityEstimator.all_reduce_`; in mean units each rank's
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


def _grads(model: nn.Module) -> list[Tensor]:
    return [p.grad for p in model.parameters() if p.grad is not None]


def _sq_norm(tensors: Sequence[Tensor]) -> Tensor:
    """sum_t ||t||^2 as a 0-d float64 tensor on the tensors' device (one fused norm kernel, no sync)."""
    return torch.stack(torch._foreach_norm(list(tensors))).double().pow(2).sum()


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
        sq = _sq_norm(_grads(model)) * float(batch_size) ** 2
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
        grads = _grads(model)
        full_sq = None if len(sizes) == 1 else _sq_norm(grads) * float(batch_size) ** 2
        self.add(two_scale_sq_norm_sum(self._micro_sq, full_sq, sizes), grads, batch_size, grad_scale=batch_size)
        self._micro_sq, self._plan, self._done = None, [], 0


def subset_n_diversity(sq_norm_sum: float, grad_sum_sq: float, k: int, n: int) -> float:
    """n * Delta of n samples, estimated from k of them drawn uniformly without replacement.

    With P = (1/k) sum_{i in K} ||g_i||^2 and Q = ||(1/k) sum_{i in K} g_i||^2, over the draw of K
    (finite-population sampling, Cochran 1977, Thm. 2.2, applied to each gradient coordinate):

        E[P] = tr(Sigma) + ||G||^2,      E[Q] = ||G||^2 + c tr(Sigma),   c = (n - k) / (k (n - 1)),

    with G and Sigma the mean and population (1/n) covariance of all n per-sample gradients. Hence
    ||G||^2_hat = (Q - c P) / (1 - c) is unbiased for ||G||^2, and by docs/protocol.md's
    n * Delta = 1 + tr(Sigma) / ||G||^2 = (tr(Sigma) + ||G||^2) / ||G||^2 the estimate is
    P / ||G||^2_hat (a ratio of unbiased parts; consistent, not unbiased). With k = n, c = 0 and it
    is exactly n * S / ||A||^2 = n * Delta (Yin et al., 2018, Def. 1).

    Args:
        sq_norm_sum: S_K = sum_{i in K} ||g_i||^2 (sum units, float).
        grad_sum_sq: ||A_K||^2 = ||sum_{i in K} g_i||^2 (sum units, float).
        k: subset size (samples), 2 <= k <= n (k = n = 1 is allowed: the whole set).
        n: training-set size (samples).
    Returns:
        n * Delta_hat (dimensionless float); ``inf`` when ||G||^2_hat <= 0, i.e. the mean gradient is
        not resolved above the sampling noise of k samples (the diversity is then at least of order k).
    Raises:
        ValueError: k outside [2, n] (unless k = n).
    """
    p = sq_norm_sum / k
    g2 = subset_mean_grad_sq(p, grad_sum_sq / (k * k), k, n)
    return p / g2 if g2 > 0 else float("inf")


def subset_mean_grad_sq(p, q, k: int, n: int):
    """Unbiased estimate of ||G||^2 from a subset: (Q - c P) / (1 - c), c = (n - k) / (k (n - 1))
    (see :func:`subset_n_diversity`; elementwise on tensors too).

    Args:
        p: P = (1/k) sum_{i in K} ||g_i||^2; q: Q = ||(1/k) sum_{i in K} g_i||^2 (floats or tensors).
        k, n: subset and training-set sizes (samples).
    Raises:
        ValueError: k outside [2, n] (unless k = n).
    """
    if k > n or (k < 2 and k != n):
        raise ValueError(f"subset size k={k!r}; allowed: an integer in [2, n={n}] or k = n")
    c = (n - k) / (k * (n - 1)) if n > 1 else 0.0
    return (q - c * p) / (1 - c)


BN_MODES = ("eval", "train")  # BatchNorm conventions of fixed_point_sums (method.fixed_point_bn)


def sample_loss_sum(out: Tensor, y: Tensor) -> Tensor:
    """Sum over the samples of each sample's mean loss: cross-entropy summed over a batch of class labels
    (``y`` (b,)), or each sequence's mean token cross-entropy summed over sequences (``y`` (b, T), ``out``
    (b, V, T)): the per-sample loss of the trainer's criterion, so that S and A of :func:`fixed_point_sums`
    are in the units of the epoch estimators' sums (their factors can be compared)."""
    if y.dim() == 1:
        return F.cross_entropy(out, y, reduction="sum")
    return F.cross_entropy(out, y, reduction="none").flatten(1).mean(1).sum()


def couples_samples(model: nn.Module) -> str | None:
    """Name of the first layer whose train-mode output mixes or randomises samples (BatchNorm, dropout
    with p > 0), or None: train and eval mode are then the same function of w."""
    for name, m in model.named_modules():
        if isinstance(m, _BN_TYPES) or (isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0):
            return f"{name} ({type(m).__name__})"
    return None


def fixed_point_sums(
    model: nn.Module, batches, extension=None, per_sample: str = "backpack", bn_mode: str = "eval"
) -> tuple[Tensor, list[Tensor], int]:
    """S = sum_i ||g_i||^2 and A = sum_i g_i over ``batches`` at the model's current weights.

    ``bn_mode="eval"`` (the fixed-point convention): per-sample gradients of each sample's own loss,
    every BatchNorm in eval mode (the running statistics), so that g_i depends on sample i alone;
    BackPACK's ``BatchL2Grad`` (:func:`batch_l2_extension`) on a sum-reduced loss gives ||g_i||^2 and
    ``p.grad`` the sum.

    ``bn_mode="train"`` (the authors' per-sample convention at frozen weights): each batch of
    ``batches`` is one BatchNorm batch. The forward runs in train mode (batch statistics of that
    batch), the backward with every BatchNorm switched to eval mode around it (:func:`batchnorm_eval`),
    as the authors' trainers do for BackPACK (pytorch-cifar@7289184 ``src/train_utils.py:175-178,
    205-208, 368-378``; docs/protocol.md). Per-sample gradients of a train-mode BatchNorm network are
    not defined (a sample's output depends on the batch), so "g_i" is what BackPACK's first-order
    ``BatchL2Grad`` returns there: sample i's piece of the batch's train-mode gradient, J_i^T g_out_i
    per layer with g_out from autograd through the batch statistics (it carries the other samples'
    losses through the statistics), and for BatchNorm's own weight the running-statistics x_hat
    (docs/diversity.md, "BatchNorm: what the per-sample norms mean"). The pieces of conv and linear
    layers and of BatchNorm's bias add up to the ordinary train-mode gradient, so A is the sum of the
    batches' train-mode gradients. The running statistics and ``num_batches_tracked`` are restored
    after every batch, so each batch sees the model's statistics at the call (as a training step
    there would, whose forward updates them once before BackPACK reads them) and nothing changes.
    Without BatchNorm and dropout the two modes are the same function of w (tested).

    No augmentation of its own: ``batches`` yields the samples as given. The model's mode, ``p.grad``,
    parameters and buffers are restored (bit-identical ``state_dict``; tested).

    For models BackPACK does not cover (attention: the transformer), ``per_sample="func"`` takes
    ||g_i||^2 from :func:`divebatch.method.persample.per_sample_sq_norms` (``torch.func`` vmap of grad)
    with the same per-sample loss (:func:`sample_loss_sum`), so S and A stay in the same units.

    Args:
        model: the network (torchvision models converted by :func:`convert_for_backpack`).
        batches: iterable of (x (b, ...) float on the model's device, y (b, ...) int64).
        extension: BackPACK extension writing ``p.batch_l2`` (default :func:`batch_l2_extension`).
        per_sample: ``backpack`` | ``func``.
        bn_mode: ``eval`` | ``train`` (:data:`BN_MODES`).
    Returns:
        (S as a 0-d float64 tensor, A as per-parameter tensors, number of samples); units: the
        per-sample loss of :func:`sample_loss_sum`.
    Raises:
        ValueError: unknown ``bn_mode``; ``bn_mode="train"`` with ``per_sample="func"`` on a model
            with BatchNorm or dropout (vmap sees one sample at a time); an empty set of samples.
    """
    if bn_mode not in BN_MODES:
        raise ValueError(f"fixed-point bn_mode={bn_mode!r}; allowed: {' | '.join(BN_MODES)}")
    if bn_mode == "train" and per_sample == "func" and couples_samples(model):
        raise ValueError(
            f"fixed-point bn_mode='train' with per_sample='func' on a model with layer {couples_samples(model)}; "
            f"allowed: per_sample='backpack' (torch.func sees one sample at a time)"
        )
    params = [p for p in model.parameters() if p.requires_grad]
    saved, was_training = [p.grad for p in params], model.training
    buffers = [b.detach().clone() for b in model.buffers()] if bn_mode == "train" else []

    def restore_buffers():
        with torch.no_grad():
            for b, v in zip(model.buffers(), buffers):
                b.copy_(v)

    for p in params:
        p.grad = None
    model.train(bn_mode == "train")
    sq, count = None, 0
    try:
        if per_sample == "func":
            from divebatch.method.persample import per_sample_sq_norms

            for x, y in batches:
                sample_loss_sum(model(x), y).backward()
                s = per_sample_sq_norms(model, x, y, F.cross_entropy).double().sum()
                sq = s if sq is None else sq + s
                count += len(y)
        else:
            with backpack_hooks(model):
                for x, y in batches:
                    loss = sample_loss_sum(model(x), y)
                    # scale 1: with a sum loss BackPACK's batch_l2 is ||g_i||^2 itself
                    s = backward_with_sq_norms(model, loss, 1.0, extension).double()
                    restore_buffers()  # train mode: this batch's forward moved the running statistics
                    sq = s if sq is None else sq + s
                    count += len(y)
        grads = [p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p) for p in params]
    finally:
        restore_buffers()
        for p, g in zip(params, saved):
            p.grad = g
        model.train(was_training)
    if sq is None:
        raise ValueError("fixed-point diversity over an empty set of samples; allowed: at least 2 samples")
    return sq, grads, count


class FixedPointDiversity(EstimatorDefaults):
    """Delta(w) at one point: the weights at the end of the measured epoch
    (``method.diversity_estimator=fixed_point``).

    The measured epoch trains exactly as an unmeasured one (no hooks, any batch split); after it,
    before the evaluation and the resize decision, :meth:`measure` takes every per-sample gradient
    at the final weights over a fixed subset of k training samples (``method.fixed_point_samples``;
    null: all n), with BatchNorm in eval mode and without augmentation (:func:`fixed_point_sums`),
    and :meth:`value` returns Delta_hat = (n * Delta_hat) / n from :func:`subset_n_diversity`
    (exactly Delta(w) of the training set when k = n).

    Why eval-mode BatchNorm: in train mode a sample's gradient depends on the other samples of its
    batch (the batch statistics), so "the gradient of sample i at w" is not defined; with the
    running statistics the network is one fixed function of w for every sample, Delta(w) is the
    diversity of its per-sample loss gradients (Yin et al., 2018, Def. 1), and it is the network
    that is evaluated. It is not the authors' mixed-mode quantity (docs/diversity.md).

    ``bn_mode="train"`` (:class:`FixedPointTrainDiversity`, ``method.diversity_estimator=fixed_point_train``)
    takes the authors' train-mode BatchNorm convention instead, at the same frozen weights
    (:func:`fixed_point_sums`): the subset (attached in a fixed random order) is cut into BatchNorm
    batches of the largest micro-batch the measured epoch trained with (:meth:`observe`), as the
    training steps' batch statistics are; nothing is updated. Why offered: in the shadow runs this
    convention alone multiplies n * Delta by a factor measured in ``estimators_bn``
    (docs/diversity.md, "BatchNorm mode, augmentation and moving iterates"), enough to change
    DiveBatch's decisions.

    Args:
        samples: k, the subset size (None: the whole training set); the subset is drawn once per
            run (:func:`divebatch.data.fixed_subset_indices`) and reused at every decision.
        extension: BackPACK extension (default :func:`batch_l2_extension`).
        per_sample: ``backpack`` (default) or ``func`` (``torch.func``, for models BackPACK does not
            cover: the transformer; :func:`fixed_point_sums`).
        bn_mode: ``eval`` (default) | ``train`` (:data:`BN_MODES`).
    Raises:
        ValueError: an unknown ``per_sample`` or ``bn_mode``, or ``samples`` < 2.
    """

    uses_module_hooks: ClassVar[bool] = False  # the measured epoch itself is a plain one (torch.compile stays on)

    def __init__(self, samples: int | None = None, extension=None, per_sample: str = "backpack", bn_mode: str = "eval"):
        if per_sample not in ("backpack", "func"):
            raise ValueError(f"fixed_point per_sample={per_sample!r}; allowed: backpack | func")
        if bn_mode not in BN_MODES:
            raise ValueError(f"fixed_point bn_mode={bn_mode!r}; allowed: {' | '.join(BN_MODES)}")
        self.per_sample, self.bn_mode = per_sample, bn_mode
        if samples is not None and int(samples) < 2:
            raise ValueError(f"method.fixed_point_samples={samples!r}; allowed: null (all) or an integer >= 2")
        self.samples = None if samples is None else int(samples)
        self.extension = extension
        self.reference = None  # callable -> iterable of (x, y) batches of the fixed subset
        self.n_train: int | None = None
        self.reset()

    def prepare(self, model: nn.Module) -> nn.Module:
        return convert_for_backpack(model) if self.per_sample == "backpack" else model

    def attach(self, reference, n_train: int) -> None:
        """Give the estimator its samples.

        Args:
            reference: callable returning an iterable of (x, y) batches on the training device:
                the fixed subset, normalised, without augmentation (:func:`divebatch.data.reference_batches`).
            n_train: n, the training-set size (samples).
        """
        self.reference, self.n_train = reference, int(n_train)

    def measuring(self, model: nn.Module):
        return contextlib.nullcontext(model)

    def reset(self) -> None:
        self._value = float("nan")
        self.subset_samples = 0
        self.mean_sq_norm = self.mean_grad_sq = float("nan")
        self.bn_batch: int | None = None  # the largest micro-batch of the measured epoch (train mode)

    def observe(self, x: Tensor, y: Tensor) -> None:
        """Record the micro-batch size: the BatchNorm batch of ``bn_mode="train"`` (samples)."""
        self.bn_batch = max(self.bn_batch or 0, len(y))

    def backward(self, model: nn.Module, loss: Tensor, batch_size: int, sample_scale: float | None = None) -> None:
        loss.backward()  # the epoch itself is not measured

    def step_end(self, model: nn.Module, batch_size: int) -> None:
        pass

    def measure(self, model: nn.Module) -> None:
        """Compute Delta_hat at ``model``'s current weights (one host sync).

        Also sets ``mean_sq_norm`` (P = S / k, the numerator of n * Delta_hat) and ``mean_grad_sq``
        (||G||^2_hat of :func:`subset_mean_grad_sq`, the denominator), floats in squared loss-gradient
        units; ``bn_mode="train"`` without any :meth:`observe` since :meth:`reset` takes the reference's
        own batches as the BatchNorm batches.

        Raises:
            RuntimeError: :meth:`attach` was not called.
        """
        if self.reference is None:
            raise RuntimeError("fixed_point estimator: call attach(reference, n_train) before measure()")
        batches = self.reference()
        if self.bn_mode == "train" and self.bn_batch:  # BatchNorm batches of the training steps' size
            batches = rebatch(batches, self.bn_batch)
        sq, grads, k = fixed_point_sums(model, batches, self.extension, self.per_sample, self.bn_mode)
        self.subset_samples = k
        self._value = subset_n_diversity(float(sq), float(_sq_norm(grads)), k, self.n_train) / self.n_train
        # the two factors of n * Delta_hat = P / ||G||^2_hat (subset_n_diversity): numerator and denominator
        self.mean_sq_norm = float(sq) / k
        self.mean_grad_sq = float(
            subset_mean_grad_sq(self.mean_sq_norm, float(_sq_norm(grads)) / k**2, k, self.n_train)
        )

    def value(self) -> float:
        """Delta_hat of the last :meth:`measure` (NaN before any)."""
        return self._value

    def all_reduce_(self, all_reduce_sum) -> None:
        """Data-parallel runs: every rank measured the same subset at the same weights; nothing to sum."""


class FixedPointTrainDiversity(FixedPointDiversity):
    """:class:`FixedPointDiversity` with the authors' train-mode BatchNorm convention at the epoch's final
    weights (``method.diversity_estimator=fixed_point_train``; ``bn_mode="train"``, see there). For a
    model without BatchNorm and dropout it is ``fixed_point`` itself."""

    def __init__(self, samples: int | None = None, extension=None, per_sample: str = "backpack"):
        super().__init__(samples, extension, per_sample, bn_mode="train")


def rebatch(batches, size: int) -> Iterator[tuple[Tensor, Tensor]]:
    """(x, y) batches regrouped, in the same sample order, into batches of ``size`` samples (the last one
    smaller); at most one input batch plus ``size`` samples are held at a time.

    Raises:
        ValueError: ``size`` < 1.
    """
    if size < 1:
        raise ValueError(f"rebatch size={size!r}; allowed: an integer >= 1")
    xs, ys, have = [], [], 0
    for x, y in batches:
        xs.append(x)
        ys.append(y)
        have += len(y)
        while have >= size:
            x_all, y_all = torch.cat(xs), torch.cat(ys)
            yield x_all[:size], y_all[:size]
            xs, ys, have = [x_all[size:]], [y_all[size:]], have - size
    if have:
        yield torch.cat(xs), torch.cat(ys)


ESTIMATORS: dict[str, type] = {
    "exact": ExactDiversity,
    "microbatch": MicroBatchDiversity,
    "fixed_point": FixedPointDiversity,
    "fixed_point_train": FixedPointTrainDiversity,
}


def build_estimator(
    name: str,
    micro_batches: int = 2,
    running_grad_sum: bool = False,
    fixed_point_samples: int | None = None,
    backpack: bool = True,
    mean_units: bool = False,
):
    """Estimator named by ``method.diversity_estimator``.

    Args:
        micro_batches: ``method.micro_batches``, micro-batches per step of the ``microbatch``
            estimator (ignored by ``exact``).
        running_grad_sum: ``fidelity.running_grad_sum``, the authors' Tiny-ImageNet accumulation
            (``exact`` only; see :meth:`ExactDiversity.backward`).
        fixed_point_samples: ``method.fixed_point_samples``, the ``fixed_point`` and ``fixed_point_train``
            estimators' subset size (None: the whole training set).
        backpack: False for models BackPACK does not cover (``config.NO_BACKPACK_MODELS``): the
            ``fixed_point`` estimator then takes its per-sample norms from ``torch.func``.
        mean_units: ``fidelity.mean_units``, the authors' per-backward mean units for S and A
            (``exact`` only; see :class:`ExactDiversity`).
    Raises:
        KeyError: unknown name (lists the allowed ones).
    """
    if name not in ESTIMATORS:
        raise KeyError(f"method.diversity_estimator={name!r}; allowed: {' | '.join(ESTIMATORS)}")
    if name == "microbatch":
        return MicroBatchDiversity(micro_batches)
    if name in ("fixed_point", "fixed_point_train"):
        return ESTIMATORS[name](fixed_point_samples, per_sample="backpack" if backpack else "func")
    if name == "exact":
        return ExactDiversity(running_grad_sum=running_grad_sum, mean_units=mean_units)
    return ESTIMATORS[name]()


# exact_func (torch.func per-sample norms, for models BackPACK does not cover) registers itself here
from divebatch.method import persample  # noqa: E402,F401
