"""The two data paths, as loaders that yield ``(x, y)`` batches on the training device.

* ``data.loader=device``: the whole uint8 dataset lives on the training device; an epoch is an
  index permutation; augmentation and normalisation run on the device in batches
  (:mod:`divebatch.augment`). Changing the batch size costs nothing.
* ``data.loader=torchvision``: a torchvision ``Dataset`` with PIL transforms behind a
  ``DataLoader`` whose batch sampler is resizable, so persistent workers survive a batch-size
  change. This is the authors' path, and the only one for Tiny-ImageNet (224 px images).

Also here: the fixed random training subsets and the evaluation-view batches that the fixed-point
estimator measures on.
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from divebatch import augment
from divebatch.config import ConfigError
from divebatch.data.bundle import DataBundle
from divebatch.data.sharding import ShardedLoader, global_batch_spans, shard_span

# ----------------------------------------------------------------------------- fixed subsets


def fixed_subset_indices(n: int, k: int | None, seed: int) -> Tensor:
    """A fixed random subset of ``range(n)``: k indices drawn without replacement (sorted), or all n.

    Args:
        n: training-set size; k: subset size (None or >= n: every sample); seed: the run's seed
            (the same subset at every decision of a run).
    Returns:
        (k,) int64 tensor on the CPU.
    """
    if k is None or k >= n:
        return torch.arange(n)
    return torch.randperm(n, generator=torch.Generator().manual_seed(int(seed) + 7919))[:k].sort().values


def eval_view(ds: Dataset, transform) -> Dataset:
    """``ds`` with its transform replaced (the training set without augmentation); Subsets kept."""
    import copy

    if isinstance(ds, torch.utils.data.Subset):
        return torch.utils.data.Subset(eval_view(ds.dataset, transform), ds.indices)
    view = copy.copy(ds)
    view.transform = transform
    return view


def reference_batches(bundle: DataBundle, indices: Tensor, batch_size: int, device: torch.device):
    """Training samples ``indices`` as the evaluation sees them (no augmentation, normalised), in batches.

    Args:
        bundle: the data set; arrays when held in memory, else its ``train_set`` with the
            ``test_set``'s (evaluation) transform.
        indices: (k,) int64 sample indices; batch_size: samples per batch (memory).
    Returns:
        a callable returning a fresh iterator of (x float32 (b, C, H, W) on ``device``, y int64 (b,)).
    """
    if bundle.arrays is not None:
        x, y = bundle.arrays[0][indices], bundle.arrays[1][indices]
        loader = DeviceLoader(x, y, batch_size, bundle.mean, bundle.std, device, None, False, None)
        return lambda: iter(loader)
    ds = torch.utils.data.Subset(eval_view(bundle.train_set, bundle.test_set.transform), indices.tolist())

    def batches():
        for xb, yb in DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=0):
            yield xb.to(device), yb.to(device)

    return batches


# ----------------------------------------------------------------------------- loaders


class DeviceLoader:
    """Device-resident loader: uint8 data on ``device``, shuffling by index permutation, batch
    augmentation and normalisation on the device.

    Args:
        x: (N, C, H, W) uint8; y: (N,) int64 (moved to ``device`` once).
        batch_size: samples per batch (the last batch of an epoch may be smaller).
        mean, std: per-channel normalisation of x / 255; None for both: x is yielded as stored
            (token ids of the ``text`` data set).
        augment_fn: batch transform on uint8 (B, C, H, W), or None.
        shuffle: permute each epoch.
        generator: torch.Generator on ``device`` (its state makes epochs reproducible).
    """

    def __init__(
        self,
        x: Tensor,
        y: Tensor,
        batch_size: int,
        mean,
        std,
        device: torch.device,
        augment_fn=None,
        shuffle: bool = True,
        generator: torch.Generator | None = None,
    ):
        self.x, self.y = x.to(device), y.to(device)
        self.batch_size, self.device = batch_size, device
        self.scale = self.shift = None
        if mean is not None:
            mean = torch.tensor(mean, device=device, dtype=torch.float64).view(1, -1, 1, 1)
            std = torch.tensor(std, device=device, dtype=torch.float64).view(1, -1, 1, 1)
            # (x / 255 - mean) / std as one multiply-add: uint8 * float32 converts on the fly
            self.scale, self.shift = (1 / (255 * std)).float(), (-mean / std).float()
        self.augment_fn, self.shuffle, self.generator = augment_fn, shuffle, generator

    def set_batch_size(self, batch_size: int) -> None:
        self.batch_size = batch_size

    def __len__(self) -> int:
        return -(-len(self.y) // self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        n = len(self.y)
        order = torch.randperm(n, device=self.device, generator=self.generator) if self.shuffle else None
        for start in range(0, n, self.batch_size):
            idx = order[start : start + self.batch_size] if order is not None else slice(start, start + self.batch_size)
            x = self.x[idx]
            if self.augment_fn is not None:
                x = self.augment_fn(x, self.generator)
            yield (x if self.scale is None else (x * self.scale).add_(self.shift)), self.y[idx]


class ResizableBatchSampler(Sampler[list[int]]):
    """Random (or sequential) batches whose size can change between epochs without rebuilding the
    DataLoader or its persistent workers (indices are drawn in the main process).

    With ``world_size > 1`` (data-parallel runs) it yields only rank ``rank``'s contiguous shard of
    each global batch of ``batch_size`` (:func:`global_batch_spans`, :func:`shard_span`).
    """

    def __init__(
        self,
        n: int,
        batch_size: int,
        shuffle: bool,
        generator: torch.Generator | None,
        rank: int = 0,
        world_size: int = 1,
    ):
        self.n, self.batch_size, self.shuffle, self.generator = n, batch_size, shuffle, generator
        self.rank, self.world_size = rank, world_size

    def __len__(self) -> int:
        return len(global_batch_spans(self.n, self.batch_size, self.world_size))

    def __iter__(self):
        order = torch.randperm(self.n, generator=self.generator) if self.shuffle else torch.arange(self.n)
        for start, stop in global_batch_spans(self.n, self.batch_size, self.world_size):
            lo, hi = shard_span(start, stop, self.rank, self.world_size)
            yield order[lo:hi].tolist()


class TorchvisionLoader:
    """DataLoader with PIL transforms (authors' path); yields batches already on ``device``.

    With ``world_size > 1`` the batch sampler yields only rank ``rank``'s indices and the workers'
    seeds are offset by the rank (:class:`RankWorkerSeed`).
    """

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int,
        device: torch.device,
        shuffle: bool,
        num_workers: int,
        generator: torch.Generator | None,
        rank: int = 0,
        world_size: int = 1,
    ):
        self.sampler = ResizableBatchSampler(len(dataset), batch_size, shuffle, generator, rank, world_size)
        self.device = device
        self.loader = DataLoader(
            dataset,
            batch_sampler=self.sampler,
            num_workers=num_workers,
            persistent_workers=num_workers > 0,
            pin_memory=device.type == "cuda",
            generator=generator,
            worker_init_fn=RankWorkerSeed(rank) if world_size > 1 and num_workers > 0 else None,
        )

    def set_batch_size(self, batch_size: int) -> None:
        self.sampler.batch_size = batch_size

    @property
    def batch_size(self) -> int:
        return self.sampler.batch_size

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self):
        for x, y in self.loader:
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)


def resolve_loader(name: str, bundle: DataBundle) -> str:
    """``data.loader`` with ``auto`` resolved: ``device`` when the data set is held in memory, else
    ``torchvision``."""
    if name == "auto":
        return "device" if bundle.arrays is not None else "torchvision"
    return name


def make_loaders(
    bundle: DataBundle,
    cfg,
    batch_size: int,
    device: torch.device,
    generator: torch.Generator,
    loader: str | None = None,
    eval_batch_size: int = 1000,
    rank: int = 0,
    world_size: int = 1,
):
    """Train and evaluation loaders for ``data.loader`` (auto | device | torchvision).

    Args:
        batch_size: the (global) training batch size in samples.
        generator: drives shuffling and augmentation; on ``device`` for the device path, on the
            CPU for the DataLoader path. In a data-parallel run every rank passes a generator with
            the same seed (it stays in lockstep over the ranks).
        loader: the resolved loader (:func:`resolve_loader`); default from ``cfg.loader``.
        rank, world_size: data-parallel runs: this rank and the number of ranks
            (:class:`divebatch.distributed.DistContext`); the loaders are then this rank's
            :class:`ShardedLoader` s. ``world_size=1``: the plain loaders.
    Raises:
        ConfigError: ``data.loader=device`` for a dataset that is not held in memory,
            ``data.loader=torchvision`` for one without a per-sample dataset (text), a batch size
            smaller than ``world_size``, or augmentation without DataLoader workers under torchrun.
    """
    loader = resolve_loader(loader or cfg.loader, bundle)
    if loader == "device":
        if bundle.arrays is None:
            raise ConfigError(
                f"invalid config: data.loader=device is not available for data.name={bundle.name} "
                f"(not held in memory); allowed: data.loader=auto | torchvision"
            )
        x, y, xt, yt = bundle.arrays
        aug = augment.AUGMENTATIONS[bundle.augment] if cfg.augment else None
        train = DeviceLoader(x, y, batch_size, bundle.mean, bundle.std, device, aug, True, generator)
        test = DeviceLoader(xt, yt, eval_batch_size, bundle.mean, bundle.std, device, None, False, None)
        if world_size == 1:
            return train, test
        # every rank draws the global batches and keeps its slice (generator in lockstep)
        return tuple(ShardedLoader(ld, len(ld.y), rank, world_size, slice_batches=True) for ld in (train, test))
    if bundle.train_set is None:
        raise ConfigError(
            f"invalid config: data.loader=torchvision for data.name={bundle.name}; allowed: data.loader=auto | device"
        )
    if world_size > 1 and cfg.num_workers == 0 and cfg.augment:  # workers draw per-rank augmentations
        raise ConfigError(
            "invalid config: data.num_workers=0 with data.augment=true under torchrun (every rank would draw the "
            "same crops and flips); allowed: data.num_workers >= 1"
        )
    train = TorchvisionLoader(bundle.train_set, batch_size, device, True, cfg.num_workers, generator, rank, world_size)
    test = TorchvisionLoader(bundle.test_set, eval_batch_size, device, False, cfg.num_workers, None, rank, world_size)
    if world_size == 1:
        return train, test
    # the batch samplers already yield only this rank's indices
    return tuple(ShardedLoader(ld, ld.sampler.n, rank, world_size, slice_batches=False) for ld in (train, test))


class RankWorkerSeed:
    """DataLoader ``worker_init_fn`` that offsets each worker's seeds by the rank.

    Every rank's DataLoader draws its base seed from the same (lockstep) generator, so without
    this the workers of all ranks would replay the same augmentation draws. The offset (a prime
    larger than any worker count) keeps seeds distinct across ranks and workers, and runs stay
    reproducible for a given number of ranks and workers.
    """

    def __init__(self, rank: int):
        self.rank = rank

    def __call__(self, worker_id: int) -> None:
        import random

        seed = (torch.initial_seed() + 1_000_003 * self.rank) % 2**63
        torch.manual_seed(seed)
        random.seed(seed)
