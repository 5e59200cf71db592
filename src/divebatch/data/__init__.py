"""Datasets and the two data paths; this package's names are its public API.

Modules, one concept each: :mod:`~divebatch.data.bundle` (what a data set becomes, the registry of
loaders keyed by ``data.name``), :mod:`~divebatch.data.arrays` (``.npz`` arrays, checked before
training, and scikit-learn's digits), :mod:`~divebatch.data.images` (CIFAR through torchvision,
image folders, Tiny-ImageNet), :mod:`~divebatch.data.text` (character-level text),
:mod:`~divebatch.data.loaders` (the two data paths) and :mod:`~divebatch.data.sharding`
(data-parallel shards of the loaders' batches). What each data set needs: :mod:`divebatch.datasets`.

* ``data.loader=auto`` (default): ``device`` for data sets held in memory (CIFAR, digits, npz),
  ``torchvision`` otherwise (Tiny-ImageNet).
* ``data.loader=device``: the whole uint8 dataset lives on the training device; an
  epoch is an index permutation; augmentation and normalisation run on the device in batches
  (:mod:`divebatch.augment`). Changing the batch size costs nothing.
* ``data.loader=torchvision``: a torchvision ``Dataset`` with PIL transforms behind a
  ``DataLoader`` whose batch sampler is resizable, so persistent workers survive a batch-size
  change. This is the authors' path, and the only one for Tiny-ImageNet (224 px images).

Every loader yields ``(x, y)`` on the training device: x (B, C, H, W) float32 normalised, y (B,)
int64, and has ``set_batch_size(m)`` and ``len()`` (batches per epoch, last one smaller).
:func:`make_loaders` with ``rank``/``world_size`` returns this rank's loaders
(:class:`ShardedLoader`); the process group, DDP and the cross-rank sums stay in
:mod:`divebatch.distributed`, which knows nothing of loaders. With ``world_size=1`` (a single
process) nothing is wrapped.
"""

from __future__ import annotations

import torch

from divebatch.config import ConfigError

# importing a data set's module registers its loader in DATASETS
from divebatch.data import arrays, images, text  # noqa: F401
from divebatch.data.bundle import (  # noqa: F401
    CIFAR10_STATS,
    CIFAR100_STATS,
    DATASETS,
    IMAGENET_STATS,
    DataBundle,
    DataError,
    DataNotFoundError,
    channel_stats,
    nchw,
)
from divebatch.data.images import cache_dir, content_key, decode_imagefolder  # noqa: F401
from divebatch.data.loaders import (  # noqa: F401
    DeviceLoader,
    RankWorkerSeed,
    ResizableBatchSampler,
    TorchvisionLoader,
    eval_view,
    fixed_subset_indices,
    make_loaders,
    reference_batches,
    resolve_loader,
)
from divebatch.data.sharding import ShardedLoader, batch_shares, global_batch_spans, shard_span  # noqa: F401

_eval_view = eval_view  # the former name (divebatch.shadow imports it)


def build_data(cfg) -> DataBundle:
    """Dataset named by ``data.name``, cut to ``data.train_subset`` training samples if set: the first
    N, or with ``data.subset_seed`` a fixed random N (:func:`fixed_subset_indices`; an image folder
    is ordered by class, so its first N samples are a few classes).

    Raises:
        ConfigError: unknown ``data.name``. DataNotFoundError: data missing (with instructions).
    """
    if cfg.name not in DATASETS:
        raise ConfigError(f"invalid config: data.name={cfg.name!r}; allowed: {' | '.join(DATASETS)}")
    bundle = DATASETS[cfg.name](cfg)
    if cfg.train_subset is not None:
        k = cfg.train_subset
        seed = getattr(cfg, "subset_seed", None)
        keep = torch.arange(min(k, bundle.n_train)) if seed is None else fixed_subset_indices(bundle.n_train, k, seed)
        if bundle.arrays is not None:
            x, y, xt, yt = bundle.arrays
            bundle.arrays = (x[keep], y[keep], xt, yt)
        if bundle.train_set is not None:
            bundle.train_set = torch.utils.data.Subset(bundle.train_set, keep.tolist())
    return bundle
