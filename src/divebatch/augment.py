"""Batch augmentation on the training device, equal in distribution to the protocol's torchvision
transforms (``RandomCrop(32, padding=4)``, ``RandomHorizontalFlip()``, ``RandomRotation(15)``).

All functions take and return uint8 (B, C, H, W) tensors and draw from the given generator,
which must live on the tensors' device. ``tests/test_augment.py`` checks them against
torchvision: exact equality for fixed offsets, flips and angles, and the distribution of the
random draws (docs/performance.md).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def crop_flip(x: Tensor, top: Tensor, left: Tensor, flip: Tensor, padding: int) -> Tensor:
    """Per-sample crops of the zero-padded batch, each optionally mirrored left-right.

    Args:
        x: (B, C, H, W) any dtype.
        top, left: (B,) int64 offsets in [0, 2 * padding] into the padded image (pixels).
        flip: (B,) bool, mirror sample b after cropping.
    Returns:
        (B, C, H, W) contiguous: sample b is ``pad(x[b])[:, top[b]:top[b]+H, left[b]:left[b]+W]``,
        mirrored when ``flip[b]``; torchvision's ``hflip(crop(pad(img, padding), top, left, H, W))``.
    """
    b, c, h, w = x.shape
    ar_h = torch.arange(h, device=x.device)
    ar_w = torch.arange(w, device=x.device)
    rows = top[:, None] + ar_h  # (B, H)
    # mirroring reads the crop's columns in reverse order, so it costs no extra pass
    cols = left[:, None] + torch.where(flip[:, None], w - 1 - ar_w, ar_w)  # (B, W)
    padded = F.pad(x, (padding,) * 4)
    # two gathers (rows, then columns) beat one advanced-indexing pass on a CPU (the measured
    # times are in docs/performance.md, section 1, where a rerun of the benchmark updates them)
    out = padded.gather(2, rows[:, None, :, None].expand(b, c, h, w + 2 * padding))
    return out.gather(3, cols[:, None, None, :].expand(b, c, h, w))


def crop(x: Tensor, top: Tensor, left: Tensor, padding: int) -> Tensor:
    """:func:`crop_flip` without mirroring: torchvision's ``F.crop(F.pad(img, padding), top, left, H, W)``."""
    return crop_flip(x, top, left, torch.zeros_like(top, dtype=torch.bool), padding)


def random_crop_flip(x: Tensor, generator: torch.Generator | None, padding: int = 4) -> Tensor:
    """RandomCrop(H, padding) then RandomHorizontalFlip(0.5), independently per sample.

    torchvision draws the crop offset uniformly from ``0 .. 2 * padding`` (inclusive) on each
    axis and flips with probability 1/2; so does this.

    Args:
        x: (B, C, H, W) uint8. generator: on ``x.device`` (None: the global generator).
        padding: zero padding on each side (pixels).
    Returns:
        (B, C, H, W) uint8, contiguous.
    """
    b = x.shape[0]
    offsets = torch.randint(0, 2 * padding + 1, (2, b), device=x.device, generator=generator)
    flip = torch.rand(b, device=x.device, generator=generator) < 0.5
    return crop_flip(x, offsets[0], offsets[1], flip, padding)


def rotate(x: Tensor, degrees: Tensor) -> Tensor:
    """Rotate each image about its centre by ``degrees`` (positive: counter-clockwise on screen),
    nearest neighbour, zero fill: torchvision's ``rotate(img, angle, InterpolationMode.NEAREST,
    fill=0)``, which ``RandomRotation`` uses by default.

    Args:
        x: (B, C, H, W) uint8. degrees: (B,) float angles in degrees.
    Returns:
        (B, C, H, W) uint8.
    """
    _, _, h, w = x.shape
    theta = degrees.float() * (math.pi / 180)
    cos, sin = torch.cos(theta), torch.sin(theta)
    zeros = torch.zeros_like(cos)
    # affine_grid maps output to input coordinates, normalised to [-1, 1] per axis. A
    # counter-clockwise image rotation (y pointing down) samples from the clockwise-rotated
    # position; the h/w factors keep the rotation rigid in pixels when H != W.
    mat = torch.stack([torch.stack([cos, -sin * (h / w), zeros], 1), torch.stack([sin * (w / h), cos, zeros], 1)], 1)
    grid = F.affine_grid(mat, list(x.shape), align_corners=False)
    return F.grid_sample(x.float(), grid, mode="nearest", padding_mode="zeros", align_corners=False).round().to(x.dtype)


def random_crop_flip_rotate(x: Tensor, generator: torch.Generator | None, max_degrees: float = 15.0) -> Tensor:
    """CIFAR-100 protocol: crop and flip, then a rotation drawn uniformly from [-15, 15] degrees
    (``RandomRotation(15)`` draws ``uniform(-15, 15)``)."""
    out = random_crop_flip(x, generator)
    angles = (torch.rand(x.shape[0], device=x.device, generator=generator) * 2 - 1) * max_degrees
    return rotate(out, angles)


AUGMENTATIONS = {
    "none": None,
    "crop_flip": random_crop_flip,
    "crop_flip_rotate": random_crop_flip_rotate,
}
