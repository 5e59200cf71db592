"""BackPACK plumbing: per-sample squared gradient norms (``BatchL2Grad``) for the estimators that use them.

:func:`backpack_hooks` puts BackPACK's hooks on a model for one measured epoch only,
:func:`batch_l2_extension` computes Conv2d weights by the cheaper of two exact routes,
:func:`backward_with_sq_norms` / :func:`batch_l2_sums` run a backward that also returns the
per-sample squared norms, :func:`batchnorm_eval` is the authors' BatchNorm trick around it.
BackPACK itself is imported by the functions that need it.
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from divebatch.method.diversity import BN_TYPES

# BackPACK warns about every container module with parameters (the leaves carry the extension) and
# torch about full backward hooks on inputs that need no gradient (the images): both expected here.
warnings.filterwarnings("ignore", message="Extension saving to batch_l2 does not have an extension")
warnings.filterwarnings("ignore", message="Full backward hook is firing when gradients are computed")


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
    flipped = [m for m in model.modules() if isinstance(m, BN_TYPES) and m.training]
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
