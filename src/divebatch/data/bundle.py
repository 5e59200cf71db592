"""What every data set becomes: a :class:`DataBundle`, the registry of data sets, and the pieces
that the in-memory data sets share (uint8 arrays, PIL transforms, normalisation statistics).

A loader of a data set is registered under its ``data.name`` (:func:`register`; the names and
what each needs: :mod:`divebatch.datasets`). Errors about the data itself are :class:`DataError`
(the message names the path, the array or file and what is expected), raised before training.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset
from torchvision import transforms as T

from divebatch.choices import declared

CIFAR10_STATS = ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))  # authors' values
# the authors' CIFAR-100 values at full precision (docs/protocol.md, "Protocol table: cifar100")
CIFAR100_STATS = (
    (0.5070751592371323, 0.48654887331495095, 0.4409178433670343),
    (0.2673342858792401, 0.2564384629170883, 0.27615047132568404),
)
IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def count(n: int, noun: str, plural: str | None = None) -> str:
    """``n`` and the noun in the number that ``n`` asks for: ``1 character``, ``3 characters``,
    ``2 entries`` (``plural``: the plural when it is not ``noun + "s"``)."""
    return f"{n} {noun if n == 1 else plural or noun + 's'}"


class DataError(ValueError):
    """A data file or folder is not what ``data.path`` must hold; the message names the path and
    what is expected. Raised before any training."""


class DataNotFoundError(DataError, FileNotFoundError):
    """The data set's files are missing; the message says how to get them."""


@dataclass
class DataBundle:
    """A dataset ready for both data paths.

    Attributes:
        name: ``data.name``.
        num_classes, in_channels, image_size: model input facts (image_size in pixels, after
            the eval transform).
        mean, std: per-channel normalisation (of x / 255).
        augment: the protocol's train augmentation, a key of ``augment.AUGMENTATIONS``.
        arrays: (train_x, train_y, test_x, test_y), x uint8 (N, C, H, W), y int64 (N,) on the
            CPU, for datasets that fit in memory; None otherwise.
        train_set, test_set: torchvision datasets with PIL transforms (DataLoader path).
    """

    name: str
    num_classes: int
    in_channels: int
    image_size: int
    mean: tuple
    std: tuple
    augment: str
    arrays: Optional[tuple[Tensor, Tensor, Tensor, Tensor]] = None
    train_set: Optional[Dataset] = None
    test_set: Optional[Dataset] = None

    @property
    def n_train(self) -> int:
        return len(self.arrays[0]) if self.arrays is not None else len(self.train_set)


DATASETS: dict[str, Callable[..., DataBundle]] = {}


def register(name: str):
    def deco(fn):
        DATASETS[declared("data.name", name)] = fn
        return fn

    return deco


def hwc_to_chw(x: np.ndarray) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2).contiguous()


def pil_transforms(mean, std, augment_name: str, augment_on: bool):
    """torchvision train/eval transforms of the protocol (docs/protocol.md, 'Protocol per dataset')."""
    norm = [T.ToTensor(), T.Normalize(mean, std)]
    train_aug = {
        "none": [],
        "crop_flip": [T.RandomCrop(32, padding=4), T.RandomHorizontalFlip()],
        "crop_flip_rotate": [T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.RandomRotation(15)],
        "resized_crop_flip": [T.RandomResizedCrop(224), T.RandomHorizontalFlip()],
    }[augment_name]
    eval_pre = [T.Resize(256), T.CenterCrop(224)] if augment_name == "resized_crop_flip" else []
    train = T.Compose((train_aug if augment_on else eval_pre) + norm)
    return train, T.Compose(eval_pre + norm)


class ArrayDataset(Dataset):
    """uint8 (N, C, H, W) arrays as a PIL-transform dataset, for the DataLoader path."""

    def __init__(self, x: Tensor, y: Tensor, transform):
        self.x, self.y, self.transform = x, y, transform

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i):
        img = T.functional.to_pil_image(self.x[i])
        return self.transform(img), int(self.y[i])


def channel_stats(x: Tensor, chunk: int = 4096) -> tuple[tuple, tuple]:
    """Per-channel mean and standard deviation (n - 1) of x / 255 for uint8 x (N, C, H, W), in chunks
    of ``chunk`` images (float64 sums, so a 50,000-image set needs no float copy of itself)."""
    c = x.shape[1]
    s1, s2 = torch.zeros(c, dtype=torch.float64), torch.zeros(c, dtype=torch.float64)
    for part in x.split(chunk):
        p = part.double().div_(255)
        s1 += p.sum((0, 2, 3))
        s2 += p.pow_(2).sum((0, 2, 3))
    m = x.shape[0] * x.shape[2] * x.shape[3]
    mean = s1 / m
    var = (s2 - m * mean * mean) / (m - 1)
    return tuple(mean.tolist()), tuple(var.clamp_min(0).sqrt().tolist())


def nchw(x: Tensor) -> Tensor:
    """``x`` with the row-major (N, C, H, W) strides, copied only when its strides differ.

    ``Tensor.contiguous()`` is not enough: it ignores the strides of size-1 dimensions, so a
    one-channel batch made by NumPy fancy indexing (strides (HW, 1, W, 1)) stays ambiguous and
    convolutions read it as channels_last (NHWC). An NHWC input sends a stride-2 1x1 convolution
    with few input channels to oneDNN's faulty kernel (docs/performance.md, "The oneDNN CPU bug").
    """
    return (
        x
        if x.stride() == torch.empty(x.shape, device="meta").stride()
        else x.clone(memory_format=torch.contiguous_format)
    )


def array_bundle(name, x_tr, y_tr, x_te, y_te, num_classes, augment_name, cfg, stats=None) -> DataBundle:
    x_tr, x_te = nchw(x_tr), nchw(x_te)
    if stats is None:  # per-channel statistics of the training images
        stats = channel_stats(x_tr)
    t_train, t_eval = pil_transforms(*stats, augment_name, cfg.augment)
    return DataBundle(
        name,
        num_classes,
        x_tr.shape[1],
        x_tr.shape[2],
        *stats,
        augment_name,
        (x_tr, y_tr, x_te, y_te),
        ArrayDataset(x_tr, y_tr, t_train),
        ArrayDataset(x_te, y_te, t_eval),
    )
