"""Image data sets read from files: CIFAR-10/100 through torchvision, an image folder of the
user's (``ROOT/train/<class>/*``, decoded once and cached), and Tiny-ImageNet's official layout."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import datasets as tvd

from divebatch import fetch
from divebatch.data.arrays import ARRAYS, check_arrays
from divebatch.data.bundle import (
    CIFAR10_STATS,
    CIFAR100_STATS,
    IMAGENET_STATS,
    DataBundle,
    DataError,
    DataNotFoundError,
    array_bundle,
    hwc_to_chw,
    pil_transforms,
    register,
)
from divebatch.datasets import missing_layout
from divebatch.fetch import TINY_IMAGENET_MD5, TINY_IMAGENET_URL


def _missing_cifar(name: str, root: Path, why: str) -> DataNotFoundError:
    """One line: which files are missing where, why they were not downloaded, and how to get them."""
    kind = fetch.DATA_KINDS[name]()
    return DataNotFoundError(
        f"data.name={name}: the {kind.title} files are not under data.path={str(root)!r} "
        f"(it must be {kind.path_means}) and {why}; get them with 'divebatch fetch-data {name} --root {root}' "
        f"where the network answers, or by hand: {kind.manual(root)}"
    )


def _download_cifar(cls, name: str, root: Path) -> None:
    """torchvision's download of the official archive into ``root``, asked only when the host
    answers; a failed download leaves no folder behind that was not there before.

    Raises:
        DataNotFoundError: the host does not answer, or the download fails (one line, with what to do).
    """
    url = fetch.DATA_KINDS[name]().url
    if not fetch.reachable(url):
        raise _missing_cifar(name, root, f"{urlsplit(url).hostname} did not answer (no network?)")
    new = None if root.exists() else root.absolute()  # the first folder that the download creates
    while new is not None and not new.parent.exists():
        new = new.parent
    try:
        cls(root, train=True, download=True)
    except (OSError, RuntimeError) as err:  # URLError is an OSError; a corrupt archive a RuntimeError
        if new is not None:  # it did not exist before: what is in it is this download's
            shutil.rmtree(new, ignore_errors=True)
        raise _missing_cifar(name, root, f"the download failed ({err})") from None


def _cifar(cls, name: str, stats, augment_name: str, cfg) -> DataBundle:
    """CIFAR-10/100 through torchvision, from the official files under ``data.path``; with
    ``data.download=true`` torchvision fetches and verifies the archive when they are missing.

    Raises:
        DataNotFoundError: files missing (not downloaded: why and how to get them) or corrupt.
    """
    root = Path(cfg.path or "data")
    if any(not p.exists() for p in fetch.DATA_KINDS[name]().required(root)):
        if not cfg.download:
            raise _missing_cifar(
                name, root, "data.download=false (set data.download=true to let torchvision fetch them)"
            )
        _download_cifar(cls, name, root)
    try:
        train = cls(root, train=True, download=False)
        test = cls(root, train=False, download=False)
    except RuntimeError as err:  # torchvision's integrity check
        raise _missing_cifar(name, root, f"torchvision refused them ({err})") from None
    t_train, t_eval = pil_transforms(*stats, augment_name, cfg.augment)
    train.transform, test.transform = t_train, t_eval
    arrays = (hwc_to_chw(train.data), torch.tensor(train.targets), hwc_to_chw(test.data), torch.tensor(test.targets))
    return DataBundle(name, len(train.classes), 3, 32, *stats, augment_name, arrays, train, test)


@register("cifar10")
def cifar10(cfg) -> DataBundle:
    """CIFAR-10 via torchvision (50,000 train / 10,000 test, 32x32 RGB)."""
    return _cifar(tvd.CIFAR10, "cifar10", CIFAR10_STATS, "crop_flip", cfg)


@register("cifar100")
def cifar100(cfg) -> DataBundle:
    """CIFAR-100 via torchvision; train augmentation adds a random rotation of up to 15 degrees."""
    return _cifar(tvd.CIFAR100, "cifar100", CIFAR100_STATS, "crop_flip_rotate", cfg)


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
            arrays = {k: f[k] for k in ARRAYS}
        check_arrays(f"the decoded-image cache {path}", arrays, len(classes))  # written by us: a guard
        return classes, tuple(arrays.values()), path
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
    bundle = array_bundle(
        "imagefolder",
        hwc_to_chw(x_tr),
        torch.from_numpy(y_tr),
        hwc_to_chw(x_te),
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
    missing = [str(p) for p in missing_layout("tiny_imagenet", root)]  # the layout: divebatch.datasets
    if missing:
        raise DataNotFoundError(
            f"data.path={str(root)!r} is not a tiny-imagenet-200 folder: missing {missing}. Download and "
            f"verify the official archive with 'divebatch fetch-data tiny_imagenet --root DIR' "
            f"({TINY_IMAGENET_URL}, md5 {TINY_IMAGENET_MD5}) and set data.path=DIR/tiny-imagenet-200."
        )
    t_train, t_eval = pil_transforms(*IMAGENET_STATS, "resized_crop_flip", cfg.augment)
    train = TinyImageNetTrain(str(root / "train"), transform=t_train)
    test = TinyImageNetVal(root, train.class_to_idx, t_eval)
    return DataBundle(
        "tiny_imagenet", len(train.classes), 3, 224, *IMAGENET_STATS, "resized_crop_flip", None, train, test
    )
