"""Model registry: the ResNet-18 variants of the protocol, a narrow ResNet for CPU-scale runs, a
linear (softmax-regression) model and a small decoder-only transformer (:mod:`divebatch.transformer`).

Our own models use no in-place operations: BackPACK's module hooks reject them (torchvision's
ResNet-18 does ``out += identity``; :func:`divebatch.method.backpack_norms.extend_model` converts it).
"""

from __future__ import annotations

import inspect
from typing import Callable

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

from divebatch.choices import declared

MODELS: dict[str, Callable[..., nn.Module]] = {}


def register(name: str):
    def deco(fn):
        MODELS[declared("model.name", name)] = fn
        return fn

    return deco


# oneDNN 3.12's jit_1x1 backward-weights kernel (torch 2.13-2.14, x86 CPUs with AVX2 and no AVX-512,
# or any x86 CPU under ONEDNN_MAX_CPU_ISA=AVX2) writes past its scratchpad for a stride-2 1x1
# convolution whose operands are channels_last (NHWC) and whose input has fewer than 8 input
# channels (16 reported on AVX-512): heap corruption with 1 thread, a wrong weight gradient with 2.
# Upstream: uxlfoundation/oneDNN issue 6035. docs/performance.md, "The oneDNN CPU bug", gives the
# reproduction, the CPUs and versions and the measured cost of this guard (none at width 16).
ONEDNN_1X1_GUARD_BELOW = 16  # input channels under which the guard applies


def _contiguous_strides(t: Tensor) -> tuple[int, ...]:
    return torch.empty(t.shape, device="meta").stride()


def nchw_operands(conv: nn.Conv2d, args: tuple[Tensor, ...]):
    """Forward pre-hook: on CPU, give the convolution row-major (N, C, H, W) input and weight.

    A channels_last model (``speed.channels_last``) or an ambiguous one-channel batch would
    otherwise send the stride-2 1x1 shortcut convolution to the faulty oneDNN kernel (see
    ``ONEDNN_1X1_GUARD_BELOW``). The weight's storage is re-laid out in place (the same Parameter,
    so optimizer state and BackPACK's hooks are untouched); the input is copied only when its strides
    differ. No effect on CUDA or with row-major operands.
    """
    (x,) = args
    if x.device.type != "cpu":
        return None
    w = conv.weight
    if w.stride() != _contiguous_strides(w):
        w.data = w.data.clone(memory_format=torch.contiguous_format)
    return None if x.stride() == _contiguous_strides(x) else (x.clone(memory_format=torch.contiguous_format),)


class BasicBlock(nn.Module):
    """ResNet basic block (He et al., 2016), as in kuangliu/pytorch-cifar, without in-place ops."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))
            if stride != 1 and in_planes < ONEDNN_1X1_GUARD_BELOW:
                self.shortcut[0].register_forward_pre_hook(nchw_operands)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """CIFAR-variant ResNet: 3x3 stride-1 stem, no max-pool, four stages of widths w, 2w, 4w, 8w.

    Args:
        num_classes: output logits.
        in_channels: input image channels.
        width: first-stage channels (64 for ResNet-18).
        blocks: basic blocks per stage ((2, 2, 2, 2) for ResNet-18).
    Input (B, in_channels, H, W) float; output (B, num_classes) logits.
    """

    def __init__(self, num_classes: int, in_channels: int = 3, width: int = 64, blocks=(2, 2, 2, 2)):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        layers, in_planes = [], width
        for i, n in enumerate(blocks):
            planes = width * 2**i
            for j in range(n):
                layers.append(BasicBlock(in_planes, planes, stride=2 if (i > 0 and j == 0) else 1))
                in_planes = planes
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.linear = nn.Linear(in_planes, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return self.linear(self.flatten(self.pool(self.layers(out))))


@register("resnet18_cifar")
def resnet18_cifar(num_classes: int, in_channels: int = 3, image_size: int = 32, width: int = 64) -> nn.Module:
    """ResNet-18, CIFAR variant (widths 64-512), as in the authors' CIFAR scripts. ``width`` is ignored."""
    return CifarResNet(num_classes, in_channels, width=64)


@register("resnet_small")
def resnet_small(num_classes: int, in_channels: int = 3, image_size: int = 32, width: int = 16) -> nn.Module:
    """Narrow ResNet-18 (same topology, first-stage width ``model.width``, default 16) for CPU-scale runs."""
    return CifarResNet(num_classes, in_channels, width=width)


@register("resnet18_imagenet")
def resnet18_imagenet(num_classes: int, in_channels: int = 3, image_size: int = 224, width: int = 64) -> nn.Module:
    """torchvision's ResNet-18 (ImageNet variant), randomly initialised, as for Tiny-ImageNet."""
    if in_channels != 3:
        raise ValueError(f"model.name=resnet18_imagenet needs 3 input channels; data has {in_channels}")
    return torchvision.models.resnet18(weights=None, num_classes=num_classes)


@register("linear")
def linear(num_classes: int, in_channels: int = 3, image_size: int = 32, width: int = 0) -> nn.Module:
    """Softmax (multinomial logistic) regression on flattened pixels."""
    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size * image_size, num_classes))


@register("transformer_lm")
def transformer_lm(
    num_classes: int, in_channels: int = 1, image_size: int = 64, width: int = 64, depth: int = 2, heads: int = 4
) -> nn.Module:
    """Decoder-only transformer LM (:class:`divebatch.transformer.TransformerLM`): vocabulary
    ``num_classes``, context ``image_size`` (the text data's ``data.seq_len``), width C, ``depth``
    pre-LayerNorm blocks of ``heads`` heads. Input (B, T) int64 ids, output (B, V, T) logits."""
    from divebatch.transformer import TransformerLM

    return TransformerLM(num_classes, image_size, width, depth, heads)


def build_model(
    name: str, num_classes: int, in_channels: int, image_size: int, width: int = 16, **sizes: int
) -> nn.Module:
    """Model from the registry.

    Args:
        sizes: further size keys of ``model`` (``depth``, ``heads``), passed to the models whose
            builder takes them (the transformer) and ignored by the others.
    Raises:
        KeyError: unknown ``model.name`` (the message lists the allowed names).
    """
    if name not in MODELS:
        raise KeyError(f"model.name={name!r}; allowed: {' | '.join(MODELS)}")
    params = inspect.signature(MODELS[name]).parameters
    extra = {k: v for k, v in sizes.items() if k in params}
    return MODELS[name](num_classes=num_classes, in_channels=in_channels, image_size=image_size, width=width, **extra)
