"""Batch augmentation on the training device, equal in distribution to the protocol's torchvision
transforms (``RandomCrop(32, padding=4)``, ``RandomHorizontalFlip()``, ``RandomRotation(15)``).

All functions take and return uint8 (B, C, H, W) tensors and draw from the given generator,
which must live on the tensors' device.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def crop(x: Tensor, top: Tensor, left: Tensor, padding: int) -> Tensor:
    """Per-sample crops of the zero-padded batch.

    Args:
        x: (B, C, H, W). top, left: (B,) int64 offsets in [0, 2 * padding] into the padded image.
    Returns:
        (B, C, H, W): sample b is ``pad(x[b])[:, top[b]:top[b]+H, left[b]:left[b]+W]``, which is
        torchvision's ``F.crop(F.pad(img, padding), top, left, H, W)``.
    """
    b, _, h, w = x.shape
    padded = F.pad(x, (padding,) * 4)
    rows = (top[:, None] + torch.arange(h, device=x.device))[:, :, None]  # (B, H, 1)
    cols = (left[:, None] + torch.arange(w, device=x.device))[:, None, :]  # (B, 1, W)
    batch = torch.arange(b, device=x.device)[:, None, None]
    return padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)


def random_crop_flip(x: Tensor, generator: torch.Generator | None, padding: int = 4) -> Tensor:
    """RandomCrop(H, padding) then RandomHorizontalFlip(0.5), independently per sample.

    torchvision draws the crop offset uniformly from ``0 .. 2 * padding`` (inclusive) on each
    axis and flips with probability 1/2; so does this.
    """
    b = x.shape[0]
    offsets = torch.randint(0, 2 * padding + 1, (2, b), device=x.device, generator=generator)
    out = crop(x, offsets[0], offsets[1], padding)
    flip = torch.rand(b, device=x.device, generator=generator) < 0.5
    return torch.where(flip[:, None, None, None], out.flip(3), out)


def rotate(x: Tensor, degrees: Tensor) -> Tensor:
    """Rotate each image about its centre by ``degrees`` (counter-clockwise), nearest neighbour,
    zero fill: torchvision's ``RandomRotation`` defaults (``InterpolationMode.NEAREST``, fill 0).

    Args:
        x: (B, C, H, W) uint8. degrees: (B,) float angles.
    """
    theta = degrees.float() * (math.pi / 180)
    cos, sin = torch.cos(theta), torch.sin(theta)
    zeros = torch.zeros_like(cos)
    # affine_grid maps output to input coordinates; counter-clockwise image rotation in pixel
    # space (y down) is a clockwise rotation of sampling coordinates.
    mat = torch.stack([torch.stack([cos, -sin, zeros], 1), torch.stack([sin, cos, zeros], 1)], 1)
    grid = F.affine_grid(mat, list(x.shape), align_corners=False)
    return F.grid_sample(x.float(), grid, mode="nearest", padding_mode="zeros", align_corners=False).round().to(x.dtype)


def random_crop_flip_rotate(x: Tensor, generator: torch.Generator | None, max_degrees: float = 15.0) -> Tensor:
    """CIFAR-100 protocol: crop and flip, then a rotation drawn uniformly from [-15, 15] degrees."""
    out = random_crop_flip(x, generator)
    angles = (torch.rand(x.shape[0], device=x.device, generator=generator) * 2 - 1) * max_degrees
    return rotate(out, angles)


AUGMENTATIONS = {
    "none": None,
    "crop_flip": random_crop_flip,
    "crop_flip_rotate": random_crop_flip_rotate,
}
