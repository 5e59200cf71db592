"""Datasets and the two data paths.

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

Data-parallel sharding lives here, in one place (section "data-parallel sharding"):
:func:`make_loaders` with ``rank``/``world_size`` returns this rank's loaders
(:class:`ShardedLoader`). It belongs with the loaders rather than with the process group
(:mod:`divebatch.distributed`) because each data path must shard at its own point: the DataLoader
path in its batch sampler (each rank decodes only its own images), the device path after the
global batch is gathered and augmented (so the shared generator stays in lockstep and the samples
equal one process's). Both follow one rule (:func:`global_batch_spans`, :func:`shard_span`).
Sharding needs only the two integers ``rank`` and ``world_size``, never a collective; the
process group, DDP and the cross-rank sums stay in :mod:`divebatch.distributed`, which knows
nothing of loaders. With ``world_size=1`` (a single process) nothing is wrapped.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision import datasets as tvd
from torchvision import transforms as T

from divebatch import augment
from divebatch.choices import declared
from divebatch.config import ConfigError
from divebatch.fetch import TINY_IMAGENET_MD5, TINY_IMAGENET_URL

CIFAR10_STATS = ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))  # authors' values
# the authors' CIFAR-100 values at full precision (docs/protocol.md, "Protocol table: cifar100")
CIFAR100_STATS = (
    (0.5070751592371323, 0.48654887331495095, 0.4409178433670343),
    (0.2673342858792401, 0.2564384629170883, 0.27615047132568404),
)
IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


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


def _hwc_to_chw(x: np.ndarray) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2).contiguous()


def _pil_transforms(mean, std, augment_name: str, augment_on: bool):
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


def _cifar(cls, name: str, stats, augment_name: str, cfg) -> DataBundle:
    root = Path(cfg.path or "data")
    try:
        train = cls(root, train=True, download=cfg.download)
        test = cls(root, train=False, download=cfg.download)
    except RuntimeError as err:
        raise DataNotFoundError(
            f"data.name={name}: dataset files not found under data.path={str(root)!r} ({err}). "
            f"Either set data.download=true (needs network; torchvision fetches and verifies the "
            f"official archive), or put the extracted 'cifar-10-batches-py'/'cifar-100-python' "
            f"folder inside data.path."
        ) from None
    t_train, t_eval = _pil_transforms(*stats, augment_name, cfg.augment)
    train.transform, test.transform = t_train, t_eval
    arrays = (_hwc_to_chw(train.data), torch.tensor(train.targets), _hwc_to_chw(test.data), torch.tensor(test.targets))
    return DataBundle(name, len(train.classes), 3, 32, *stats, augment_name, arrays, train, test)


@register("cifar10")
def cifar10(cfg) -> DataBundle:
    """CIFAR-10 via torchvision (50,000 train / 10,000 test, 32x32 RGB)."""
    return _cifar(tvd.CIFAR10, "cifar10", CIFAR10_STATS, "crop_flip", cfg)


@register("cifar100")
def cifar100(cfg) -> DataBundle:
    """CIFAR-100 via torchvision; train augmentation adds a random rotation of up to 15 degrees."""
    return _cifar(tvd.CIFAR100, "cifar100", CIFAR100_STATS, "crop_flip_rotate", cfg)


class _ArrayDataset(Dataset):
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


def _array_bundle(name, x_tr, y_tr, x_te, y_te, num_classes, augment_name, cfg, stats=None) -> DataBundle:
    x_tr, x_te = nchw(x_tr), nchw(x_te)
    if stats is None:  # per-channel statistics of the training images
        stats = channel_stats(x_tr)
    t_train, t_eval = _pil_transforms(*stats, augment_name, cfg.augment)
    return DataBundle(
        name,
        num_classes,
        x_tr.shape[1],
        x_tr.shape[2],
        *stats,
        augment_name,
        (x_tr, y_tr, x_te, y_te),
        _ArrayDataset(x_tr, y_tr, t_train),
        _ArrayDataset(x_te, y_te, t_eval),
    )


@register("npz")
def npz(cfg) -> DataBundle:
    """Arrays ``train_x, train_y, test_x, test_y`` (x uint8 (N, H, W, C), y int) in a .npz file.

    32x32 RGB arrays get CIFAR augmentation and CIFAR-10 normalisation (they are CIFAR images,
    e.g. ``../shared/data/cifar10-mini.npz``); other shapes get none and their own statistics.

    Raises:
        DataError: the file is not a NumPy .npz archive, lacks a required array, or holds arrays
            of the wrong shape (the message names the path and what was expected).
    """
    expected = "a NumPy .npz archive with arrays train_x, train_y, test_x, test_y (x uint8 (N, H, W[, C]), y int (N,))"
    try:
        f = np.load(cfg.path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise DataError(
            f"data.path={cfg.path!r} is not a valid array file ({type(err).__name__}: {err}); expected {expected}"
        ) from None
    if not isinstance(f, np.lib.npyio.NpzFile):
        raise DataError(f"data.path={cfg.path!r} holds a single array, not an archive; expected {expected}")
    with f:
        missing = [k for k in ("train_x", "train_y", "test_x", "test_y") if k not in f.files]
        if missing:
            raise DataError(f"data.path={cfg.path!r} lacks arrays {missing} (has {f.files}); expected {expected}")
        x_tr, y_tr, x_te, y_te = (f[k] for k in ("train_x", "train_y", "test_x", "test_y"))
    for name, x, y in (("train", x_tr, y_tr), ("test", x_te, y_te)):
        if x.ndim not in (3, 4) or y.ndim != 1 or len(x) != len(y) or len(y) == 0:
            raise DataError(
                f"data.path={cfg.path!r}: {name}_x has shape {x.shape} and {name}_y {y.shape}; "
                f"expected {expected}, with as many labels as images"
            )
    if x_tr.ndim == 3:
        x_tr, x_te = x_tr[..., None], x_te[..., None]
    cifar_like = x_tr.shape[1:] == (32, 32, 3)
    num_classes = int(max(y_tr.max(), y_te.max())) + 1
    return _array_bundle(
        "npz",
        _hwc_to_chw(x_tr.astype(np.uint8)),
        torch.from_numpy(y_tr.astype(np.int64)),
        _hwc_to_chw(x_te.astype(np.uint8)),
        torch.from_numpy(y_te.astype(np.int64)),
        num_classes,
        "crop_flip" if cifar_like else "none",
        cfg,
        CIFAR10_STATS if cifar_like else None,
    )


@register("digits")
def digits(cfg) -> DataBundle:
    """scikit-learn's bundled handwritten digits (1,797 real 8x8 grey images, 10 classes), offline.

    A fixed stratified split (random_state 0, 20 % test) independent of the run's seed; pixel
    values 0..16 are scaled to 0..255. No augmentation (flips would change digits).
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = np.round(d.images * (255 / 16)).astype(np.uint8)[:, None]
    x_tr, x_te, y_tr, y_te = train_test_split(x, d.target, test_size=0.2, random_state=0, stratify=d.target)
    return _array_bundle(
        "digits",
        torch.from_numpy(x_tr),
        torch.from_numpy(y_tr.astype(np.int64)),
        torch.from_numpy(x_te),
        torch.from_numpy(y_te.astype(np.int64)),
        10,
        "none",
        cfg,
    )


@register("text")
def text(cfg) -> DataBundle:
    """Character-level language modelling on any plain-text file (``data.path``, read as UTF-8).

    Delegates to :func:`divebatch.text.text_bundle` (vocabulary, 90/10 split, non-overlapping
    sequences of ``data.seq_len`` characters as the samples).
    """
    from divebatch.text import text_bundle

    return text_bundle(cfg)


IMAGEFOLDER_CACHE_VERSION = 1  # bump when the cached arrays' format changes


def cache_dir() -> Path:
    """Where decoded data sets are cached: ``$DIVEBATCH_CACHE``, else ``$XDG_CACHE_HOME/divebatch``,
    else ``~/.cache/divebatch``. Never inside a data folder (:func:`imagefolder` checks)."""
    import os

    if os.environ.get("DIVEBATCH_CACHE"):
        return Path(os.environ["DIVEBATCH_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "divebatch"


def _folder_samples(split: Path, class_to_idx: dict[str, int] | None = None):
    """torchvision ``ImageFolder``'s classes and (path, class index) samples of one split folder.

    Raises:
        DataError: no class folder or no image (the message names the folder).
    """
    try:
        classes, found = tvd.folder.find_classes(str(split))
    except FileNotFoundError as err:
        raise DataError(f"{split}: {err}; expected class folders <class>/<image> (torchvision ImageFolder)") from None
    if class_to_idx is not None:
        extra = sorted(set(classes) - set(class_to_idx))
        if extra:
            raise DataError(
                f"{split} has classes {extra} that train/ lacks; allowed: the train/ classes {sorted(class_to_idx)}"
            )
    else:
        class_to_idx = found
    samples = tvd.folder.make_dataset(str(split), class_to_idx, extensions=tvd.folder.IMG_EXTENSIONS, allow_empty=True)
    if not samples:
        raise DataError(f"{split} holds no images with extensions {tvd.folder.IMG_EXTENSIONS}")
    return class_to_idx, samples


def content_key(root: Path, splits: dict[str, list]) -> str:
    """sha256 over the cache format version and, per split and image in order, its relative path,
    class index and file bytes: any change of a file, a label or the order gives a new key."""
    import hashlib

    h = hashlib.sha256(f"divebatch-imagefolder-v{IMAGEFOLDER_CACHE_VERSION}".encode())
    for name, samples in splits.items():
        for path, target in samples:
            rel = Path(path).relative_to(root).as_posix()
            h.update(f"\0{name}\0{rel}\0{target}\0".encode())
            h.update(Path(path).read_bytes())
    return h.hexdigest()


def _decode(samples, where: Path) -> tuple[np.ndarray, np.ndarray]:
    """Decode every image as RGB (``ImageFolder``'s default loader) into uint8 (N, H, W, 3), labels int64.

    Raises:
        DataError: the images do not all have one size (the device path stacks them).
    """
    images = [np.asarray(tvd.folder.default_loader(path)) for path, _ in samples]
    shapes = sorted({im.shape for im in images})
    if len(shapes) != 1:
        raise DataError(
            f"data.path={str(where)!r}: images of {len(shapes)} sizes ({shapes[:4]}...); allowed: "
            f"images of one size (resize them first)"
        )
    return np.stack(images), np.array([t for _, t in samples], dtype=np.int64)


def decode_imagefolder(root: Path, use_cache: bool = True):
    """Decode ``ROOT/train`` and ``ROOT/test`` once; reuse a content-keyed cache when it exists.

    Returns:
        (classes, (train_x, train_y, test_x, test_y) with x uint8 (N, H, W, 3), y int64, cache path or None).
    Raises:
        DataError: layout problems (see :func:`_folder_samples`), mixed image sizes, a cache folder inside
        ``root``.
    """
    class_to_idx, train = _folder_samples(root / "train")
    _, test = _folder_samples(root / "test", class_to_idx)
    classes = sorted(class_to_idx, key=class_to_idx.get)
    if not use_cache:
        return classes, (*_decode(train, root), *_decode(test, root)), None
    where = cache_dir().resolve()
    if where == root.resolve() or root.resolve() in where.parents:
        raise DataError(
            f"the cache folder {where} is inside data.path={str(root)!r}; allowed: a folder outside "
            f"the data (set DIVEBATCH_CACHE)"
        )
    path = where / f"imagefolder-{content_key(root, {'train': train, 'test': test})}.npz"
    if path.is_file():
        with np.load(path, allow_pickle=False) as f:
            return classes, tuple(f[k] for k in ("train_x", "train_y", "test_x", "test_y")), path
    arrays = (*_decode(train, root), *_decode(test, root))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{uuid.uuid4().hex[:12]}.npz")
    np.savez(tmp, train_x=arrays[0], train_y=arrays[1], test_x=arrays[2], test_y=arrays[3])
    tmp.replace(path)  # atomic: a reader sees the whole file or none
    return classes, arrays, path


@register("imagefolder")
def imagefolder(cfg) -> DataBundle:
    """Images in the class-folder layout ``ROOT/train/<class>/*`` and ``ROOT/test/<class>/*``.

    torchvision ``ImageFolder`` conventions: classes are the sorted folder names of ``train/``
    (``test/`` may lack some, never add any), images with torchvision's image extensions, converted
    to RGB. The images are decoded once into uint8 arrays (device path), cached in
    :func:`cache_dir` under a key of their content (:func:`content_key`): a changed file gives a new
    key, so the cache never serves stale data. The DataLoader path reads the files themselves.
    32x32 images (CIFAR-sized) get the CIFAR augmentation; other sizes none. Normalisation: the
    per-channel statistics of the training images.

    Raises:
        DataError: a split missing or empty, test classes unknown to train/, images of several sizes.
    """
    root = Path(cfg.path)
    classes, (x_tr, y_tr, x_te, y_te), _ = decode_imagefolder(root)
    cifar_like = x_tr.shape[1:] == (32, 32, 3)
    bundle = _array_bundle(
        "imagefolder",
        _hwc_to_chw(x_tr),
        torch.from_numpy(y_tr),
        _hwc_to_chw(x_te),
        torch.from_numpy(y_te),
        len(classes),
        "crop_flip" if cifar_like else "none",
        cfg,
    )
    bundle.train_set = _ClassFolder(root / "train", classes, bundle.train_set.transform)
    bundle.test_set = _ClassFolder(root / "test", classes, bundle.test_set.transform)
    return bundle


class _ClassFolder(tvd.ImageFolder):
    """``ImageFolder`` whose classes are given (those of train/), so test/ keeps train/'s indices."""

    def __init__(self, root: Path, classes: list[str], transform):
        self._given = list(classes)
        super().__init__(str(root), transform=transform, allow_empty=True)

    def find_classes(self, directory):
        return self._given, {c: i for i, c in enumerate(self._given)}


class TinyImageNetVal(Dataset):
    """Official Tiny-ImageNet validation split: ``val/images/*.JPEG`` labelled by ``val/val_annotations.txt``."""

    def __init__(self, root: Path, class_to_idx: dict[str, int], transform):
        self.transform = transform
        self.samples = []
        for line in (root / "val" / "val_annotations.txt").read_text().splitlines():
            parts = line.split("\t")
            if len(parts) >= 2 and parts[1] in class_to_idx:
                self.samples.append((root / "val" / "images" / parts[0], class_to_idx[parts[1]]))

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i):
        path, target = self.samples[i]
        return self.transform(tvd.folder.default_loader(str(path))), target  # converts grey to RGB


class TinyImageNetTrain(tvd.ImageFolder):
    """``train/<wnid>/images/*.JPEG``; classes and their order come from ``wnids.txt`` (any number)."""

    def find_classes(self, directory):
        wnids = (Path(directory).parent / "wnids.txt").read_text().split()
        return wnids, {w: i for i, w in enumerate(wnids)}


@register("tiny_imagenet")
def tiny_imagenet(cfg) -> DataBundle:
    """Tiny-ImageNet from the official ``tiny-imagenet-200/`` layout (DataLoader path only).

    Raises:
        DataNotFoundError: the layout is incomplete; the message says how to get the archive.
    """
    root = Path(cfg.path)
    need = [root / "wnids.txt", root / "train", root / "val" / "val_annotations.txt"]
    missing = [str(p) for p in need if not p.exists()]
    if missing:
        raise DataNotFoundError(
            f"data.path={str(root)!r} is not a tiny-imagenet-200 folder: missing {missing}. Download and "
            f"verify the official archive with 'divebatch fetch-data tiny_imagenet --root DIR' "
            f"({TINY_IMAGENET_URL}, md5 {TINY_IMAGENET_MD5}) and set data.path=DIR/tiny-imagenet-200."
        )
    t_train, t_eval = _pil_transforms(*IMAGENET_STATS, "resized_crop_flip", cfg.augment)
    train = TinyImageNetTrain(str(root / "train"), transform=t_train)
    test = TinyImageNetVal(root, train.class_to_idx, t_eval)
    return DataBundle(
        "tiny_imagenet", len(train.classes), 3, 224, *IMAGENET_STATS, "resized_crop_flip", None, train, test
    )


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


def _eval_view(ds: Dataset, transform) -> Dataset:
    """``ds`` with its transform replaced (the training set without augmentation); Subsets kept."""
    import copy

    if isinstance(ds, torch.utils.data.Subset):
        return torch.utils.data.Subset(_eval_view(ds.dataset, transform), ds.indices)
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
    ds = torch.utils.data.Subset(_eval_view(bundle.train_set, bundle.test_set.transform), indices.tolist())

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
            raise ValueError(f"{self.n} samples cannot be split over {self.world_size} processes")

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
