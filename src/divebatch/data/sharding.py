"""Data-parallel sharding of the loaders' global batches (one rule for both data paths).

It belongs with the loaders rather than with the process group (:mod:`divebatch.distributed`)
because each data path must shard at its own point: the DataLoader path in its batch sampler
(each rank decodes only its own images), the device path after the global batch is gathered and
augmented (so the shared generator stays in lockstep and the samples equal one process's). Both
follow one rule (:func:`global_batch_spans`, :func:`shard_span`). Sharding needs only the two
integers ``rank`` and ``world_size``, never a collective.
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch import Tensor

from divebatch.config import ConfigError
from divebatch.data.bundle import count

# ----------------------------------------------------------------------------- data-parallel sharding


def global_batch_spans(n: int, batch_size: int, world_size: int = 1) -> list[tuple[int, int]]:
    """Positions ``[start, stop)`` in the epoch's permutation of each global batch.

    Batches of ``batch_size`` in order, the last one smaller; with several ranks a last batch of
    fewer than ``world_size`` samples is merged into the previous batch (no empty shards).

    Raises:
        ValueError: ``batch_size < world_size`` or ``n < world_size`` (a rank would get nothing).
    """
    if world_size > 1 and (batch_size < world_size or n < world_size):
        raise ValueError(
            f"batch size {batch_size} and dataset size {n} must be >= the number of "
            f"data-parallel processes ({world_size})"
        )
    spans = [(a, min(a + batch_size, n)) for a in range(0, n, batch_size)]
    if len(spans) > 1 and spans[-1][1] - spans[-1][0] < world_size:
        tail = spans.pop()
        spans[-1] = (spans[-1][0], tail[1])
    return spans


def shard_span(start: int, stop: int, rank: int, world_size: int) -> tuple[int, int]:
    """Rank ``rank``'s contiguous part of ``[start, stop)``: ``floor`` or ``ceil`` of size/K samples,
    the first ``size mod K`` ranks one more (``numpy.array_split`` convention)."""
    q, r = divmod(stop - start, world_size)
    lo = start + rank * q + min(rank, r)
    return lo, lo + q + (rank < r)


class ShardedLoader:
    """This rank's shards of a loader's global batches (built by :func:`make_loaders`).

    Global batch t of ``B_t`` samples is cut into K contiguous shards of ``floor(B_t/K)`` or
    ``ceil(B_t/K)`` samples (:func:`shard_span`); a last global batch of fewer than K samples is
    merged into the one before it (:func:`global_batch_spans`), so no rank gets an empty shard.
    Two modes:

    * ``slice_batches=True`` (device loader): the wrapped loader yields the *global* batches (same
      permutation and augmentation draws on every rank, so its generator stays in lockstep and
      the samples equal a single process's); this wrapper keeps the rank's contiguous shard, and
      merges a too-small last batch into the previous one.
    * ``slice_batches=False`` (DataLoader path): the wrapped loader's batch sampler already
      yields only this rank's indices (``ResizableBatchSampler`` with ``rank``/``world_size``), so
      only this rank's images are decoded; the wrapper just knows the global batch sizes.

    Args:
        loader: has ``set_batch_size(m)``, ``batch_size`` and yields ``(x, y)``.
        n: samples per epoch of the wrapped loader.
        rank, world_size: this rank and the number of ranks.
    Raises:
        ConfigError: a batch size smaller than ``world_size`` (at construction and on
            ``set_batch_size``).
        ValueError: fewer than ``world_size`` samples.
    """

    def __init__(self, loader, n: int, rank: int, world_size: int, slice_batches: bool = True):
        self.loader, self.n, self.rank, self.world_size = loader, n, rank, world_size
        self.slice_batches = slice_batches
        self._check(loader.batch_size)

    def __getattr__(self, name):  # anything else (e.g. tuning knobs) is the wrapped loader's
        return getattr(self.__dict__["loader"], name)

    def _check(self, batch_size: int) -> None:
        if batch_size < self.world_size:
            raise ConfigError(
                f"invalid config: batch size {batch_size} with {self.world_size} data-parallel "
                f"processes; allowed: method.initial_batch_size >= {self.world_size}"
            )
        if self.n < self.world_size:
            raise ValueError(f"{count(self.n, 'sample')} cannot be split over {self.world_size} processes")

    @property
    def batch_size(self) -> int:
        return self.loader.batch_size

    def set_batch_size(self, batch_size: int) -> None:
        self._check(batch_size)
        self.loader.set_batch_size(batch_size)

    def spans(self) -> list[tuple[int, int]]:
        return global_batch_spans(self.n, self.loader.batch_size, self.world_size)

    def shares(self) -> list[float]:
        """``B_t / K`` for every step t of an epoch (see :func:`batch_shares`)."""
        return [(b - a) / self.world_size for a, b in self.spans()]

    @property
    def local_samples(self) -> int:
        """Samples this rank sees per epoch."""
        return sum(hi - lo for lo, hi in (shard_span(a, b, self.rank, self.world_size) for a, b in self.spans()))

    def __len__(self) -> int:
        return len(self.spans())

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        if not self.slice_batches:
            yield from self.loader
            return
        spans, bs = self.spans(), self.loader.batch_size
        sizes = [min(bs, self.n - a) for a in range(0, self.n, bs)]  # what the wrapped loader yields
        merged = len(spans) < len(sizes)
        held = None  # this rank's part of the batch that the too-small last batch is merged into
        for t, (x, y) in enumerate(self.loader):
            if t >= len(sizes) or len(y) != sizes[t]:
                raise RuntimeError(
                    f"sharding expects global batches of sizes {sizes}; the wrapped loader "
                    f"yielded {len(y)} samples at step {t}"
                )
            # this rank's positions [lo, hi) of the step, intersected with this batch's [a, a + len(y))
            a = t * bs
            lo, hi = shard_span(*spans[min(t, len(spans) - 1)], self.rank, self.world_size)
            i, j = max(lo - a, 0), max(min(hi - a, len(y)), 0)
            part = (x[i:j], y[i:j])
            if merged and t == len(sizes) - 2:
                held = (part[0].clone(), part[1].clone())  # the wrapped loader may reuse its buffers
                continue
            if held is not None:
                part = (torch.cat((held[0], part[0])), torch.cat((held[1], part[1])))
                held = None
            yield part


def batch_shares(loader) -> list[float] | None:
    """Per-step ``B_t / K`` for a :class:`ShardedLoader` (None for any other loader).

    The trainer scales a micro-batch's mean loss by ``len(micro) / share`` (instead of
    ``len(micro) / len(batch)``), so that DDP's average over K ranks is the global mean gradient
    ``(1/B_t) sum_i g_i`` also when shards differ in size; the estimator's sum-unit factors use
    the same share. With one process the share is ``len(batch)``.
    """
    return loader.shares() if isinstance(loader, ShardedLoader) else None
