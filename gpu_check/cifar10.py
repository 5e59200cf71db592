"""CIFAR-10 for the real-data checks: the official files, or the JPEG copy decoded once into the
array format of ``data.name=npz``; and a tiny generated tarball in the JPEG copy's layout (tests,
``--cpu-check``). numpy, Pillow, torch and torchvision are imported by the functions that need them.
"""

from __future__ import annotations

import io
import os
import tarfile
import tempfile
import time
from pathlib import Path

from divebatch.orchestration.gpu_results import GpuCheckError

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def make_jpeg_tarball(
    path: Path, train_per_class: int = 4, test_per_class: int = 2, size: int = 32, seed: int = 0
) -> Path:
    """A small tarball in the layout of ``cifar10-jpeg.tar.gz``: ``cifar10-jpeg/{train,test}/<class>/NNNN.jpg``,
    RGB ``size`` x ``size`` JPEGs, the ten CIFAR-10 class folders; each class has its own mean
    colour, so a model can learn it. For tests and ``--cpu-check``.

    Returns:
        ``path``.
    """
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    with tarfile.open(path, "w:gz") as tar:
        for split, per_class in (("train", train_per_class), ("test", test_per_class)):
            for c, name in enumerate(CIFAR10_CLASSES):
                for k in range(per_class):
                    pixels = rng.integers(0, 48, (size, size, 3)) + np.array([20 * c, 200 - 20 * c, 10 * c])
                    buf = io.BytesIO()
                    Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=95)
                    info = tarfile.TarInfo(f"cifar10-jpeg/{split}/{name}/{k:04d}.jpg")
                    info.size = buf.tell()
                    buf.seek(0)
                    tar.addfile(info, buf)
    return path


def _find_split_root(folder: Path) -> Path:
    """The folder under ``folder`` (itself or below) that holds ``train/`` and ``test/``."""
    for cand in [folder, *sorted(p for p in folder.rglob("*") if p.is_dir())]:
        if (cand / "train").is_dir() and (cand / "test").is_dir():
            return cand
    raise GpuCheckError(
        f"invalid CIFAR-10 JPEG data {str(folder)!r}: no folder with train/ and test/ below it; "
        f"allowed: the layout cifar10-jpeg/{{train,test}}/<class>/*.jpg (../shared/data/README.md)"
    )


def _decode_split(root: Path, workers: int):
    """One split folder (``<class>/*.jpg``) through torchvision's ``ImageFolder`` into uint8 arrays.

    Returns:
        (x uint8 (N, 32, 32, 3) RGB, y int64 (N,)), classes in CIFAR-10 order.
    Raises:
        GpuCheckError: the class folders are not the ten CIFAR-10 classes, or an image is not 32x32.
    """
    import numpy as np
    import torch
    from torchvision import datasets, transforms

    ds = datasets.ImageFolder(str(root), transform=transforms.PILToTensor())  # PIL decode, converted to RGB
    if tuple(ds.classes) != CIFAR10_CLASSES:
        raise GpuCheckError(
            f"invalid CIFAR-10 JPEG data {str(root)!r}: class folders {ds.classes}; "
            f"allowed: exactly {list(CIFAR10_CLASSES)}"
        )
    xs, ys = [], []
    loader = torch.utils.data.DataLoader(ds, batch_size=500, num_workers=workers)
    try:
        for x, y in loader:
            xs.append(x.permute(0, 2, 3, 1).numpy())
            ys.append(y.numpy())
    except RuntimeError as err:  # default_collate: images of different sizes
        raise GpuCheckError(
            f"invalid CIFAR-10 JPEG data {str(root)!r}: {str(err).splitlines()[0]}; allowed: 32x32 RGB images"
        ) from None
    x, y = np.concatenate(xs), np.concatenate(ys).astype(np.int64)
    if x.shape[1:] != (32, 32, 3):
        raise GpuCheckError(
            f"invalid CIFAR-10 JPEG data {str(root)!r}: images of shape {x.shape[1:]}; allowed: 32x32 RGB"
        )
    return x.astype(np.uint8), y


def prepare_cifar10(source: Path, cache: Path, log=print, workers: int | None = None) -> dict:
    """The whole CIFAR-10 for ``divebatch train``, from the official files or the JPEG copy.

    Args:
        source: a folder holding the official ``cifar-10-batches-py/``; or the JPEG tarball
            (``cifar10-jpeg.tar.gz``, layout ``cifar10-jpeg/{train,test}/<class>/*.jpg``); or such
            an extracted folder.
        cache: where a decoded JPEG copy is kept (``<name>-<bytes>.npz``: train_x (N, 32, 32, 3)
            uint8, train_y (N,) int64, test_x, test_y; the format of ``data.name=npz``); the
            tarball is extracted into a temporary folder inside ``cache`` and removed after decoding.
        workers: decoding processes (default: the CPU count, at most 16).
    Returns:
        ``{"overrides": [...data.* KEY=VALUE...], "description": str, "n_train": int, "n_test": int,
        "seconds": float, "cached": bool}``.
    Raises:
        GpuCheckError: ``source`` is none of the above, or its content is not CIFAR-10-shaped.
    """
    t0 = time.perf_counter()
    source = Path(source)
    if (source / "cifar-10-batches-py").is_dir():
        return {
            "overrides": ["data.name=cifar10", f"data.path={source}", "data.download=false"],
            "description": f"CIFAR-10, official files ({source / 'cifar-10-batches-py'})",
            "n_train": 50000,
            "n_test": 10000,
            "seconds": 0.0,
            "cached": True,
        }
    is_tar = source.is_file() and tarfile.is_tarfile(source)
    if not (is_tar or source.is_dir()):
        raise GpuCheckError(
            f"invalid --cifar10 {str(source)!r}; allowed: a folder holding cifar-10-batches-py/, "
            f"the JPEG tarball cifar10-jpeg.tar.gz, or its extracted folder"
        )
    import numpy as np

    workers = workers if workers is not None else min(16, os.cpu_count() or 1)
    name = source.name.split(".")[0]
    npz = Path(cache) / f"{name}-{source.stat().st_size if is_tar else 'dir'}.npz"
    cached = npz.is_file() and is_tar
    if not cached:
        Path(cache).mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache, prefix="extract-") as tmp:
            if is_tar:
                log(f"[gpu-check] extracting {source} into a temporary folder of {cache}")
                with tarfile.open(source) as tar:
                    kwargs = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
                    tar.extractall(tmp, **kwargs)
                root = _find_split_root(Path(tmp))
            else:
                root = _find_split_root(source)
            log(f"[gpu-check] decoding {root} with torchvision ImageFolder ({workers} worker(s))")
            (trx, tr_y), (tex, tey) = _decode_split(root / "train", workers), _decode_split(root / "test", workers)
            part = npz.with_name(npz.name + ".part")
            with open(part, "wb") as f:
                np.savez(f, train_x=trx, train_y=tr_y, test_x=tex, test_y=tey, classes=np.array(CIFAR10_CLASSES))
            os.replace(part, npz)
    with np.load(npz) as f:
        n_train, n_test = len(f["train_y"]), len(f["test_y"])
    return {
        "overrides": ["data.name=npz", f"data.path={npz}"],
        "description": f"CIFAR-10 as JPEG-recompressed images ({source.name}, decoded to {npz.name})",
        "n_train": int(n_train),
        "n_test": int(n_test),
        "seconds": round(time.perf_counter() - t0, 1),
        "cached": cached,
    }


def default_cifar10_source(cpu_check: bool, work: Path) -> Path:
    """``$DIVEBATCH_CIFAR10_ROOT`` or ``data/`` when it holds the official files, else
    ``../shared/data/cifar10-jpeg.tar.gz``; with ``cpu_check`` a generated tiny tarball."""
    if cpu_check:
        return make_jpeg_tarball(work / "tiny-cifar10-jpeg.tar.gz")
    for root in (os.environ.get("DIVEBATCH_CIFAR10_ROOT"), "data"):
        if root and (Path(root) / "cifar-10-batches-py").is_dir():
            return Path(root)
    return SHARED_DATA / "cifar10-jpeg.tar.gz"
