"""Data sets held as arrays: a ``.npz`` file of the user's (checked before training: shapes,
dtypes, label range) and scikit-learn's bundled digits."""

from __future__ import annotations

import numpy as np
import torch

from divebatch.data.bundle import CIFAR10_STATS, DataBundle, DataError, array_bundle, count, hwc_to_chw, register

ARRAYS = ("train_x", "train_y", "test_x", "test_y")
SHOWN = 5  # offending label values a message lists


def check_labels(where: str, name: str, y: np.ndarray, num_classes: int | None, of: str = "") -> None:
    """Refuse labels of ``name`` that are not integers in ``0 .. num_classes - 1``.

    Args:
        where: the file, for the message (e.g. ``data.path='d.npz'``).
        name: the array's name (e.g. ``test_y``); y: its values (N,).
        num_classes: C (None: any C, only negative labels are refused); of: what C comes from.
    Raises:
        DataError: a non-integer dtype, or values outside the range, e.g. ``labels in train_y outside
            0..9: -15, 12 (3 entries)`` (the distinct offending values, at most :data:`SHOWN`).
    """
    span = "0, 1, 2, ..." if num_classes is None else f"0..{num_classes - 1}"
    if not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{where}: {name} has dtype {y.dtype}; allowed: integer class indices {span}")
    bad = (y < 0) if num_classes is None else (y < 0) | (y >= num_classes)
    if bad.any():
        values = np.unique(y[bad])
        shown = ", ".join(str(v) for v in values[:SHOWN]) + (", ..." if len(values) > SHOWN else "")
        what = f"negative labels in {name}" if num_classes is None else f"labels in {name} outside {span}{of}"
        raise DataError(
            f"{where}: {what}: {shown} ({count(int(bad.sum()), 'entry', 'entries')}); allowed: class indices {span}"
        )


def check_images(where: str, name: str, x: np.ndarray) -> None:
    """Refuse images that are not uint8 (0..255): float images would be cast, not scaled.

    Raises:
        DataError: naming the array, its dtype and value range, and the conversion to use.
    """
    if x.dtype != np.uint8:
        span = f", values {x.min()}..{x.max()}" if x.size and np.issubdtype(x.dtype, np.number) else ""
        raise DataError(
            f"{where}: {name} has dtype {x.dtype}{span}; allowed: uint8 pixels 0..255 "
            f"(convert with np.round(x * 255).astype(np.uint8) for floats in [0, 1])"
        )


def check_arrays(where: str, arrays: dict[str, np.ndarray], num_classes: int | None = None) -> int:
    """Check an array source's images and labels before training; the number of classes.

    Args:
        where: the source, for messages; arrays: ``train_x, train_y, test_x, test_y``.
        num_classes: C when the source states it (e.g. a ``classes`` array), else None: C is
            ``max(train_y) + 1``, and test labels must be among the training classes.
    Returns:
        C.
    Raises:
        DataError: from :func:`check_images` and :func:`check_labels`.
    """
    for name in ("train_x", "test_x"):
        check_images(where, name, arrays[name])
    of = ""
    if num_classes is None:
        check_labels(where, "train_y", arrays["train_y"], None)
        num_classes, of = int(arrays["train_y"].max()) + 1, " (the classes of train_y)"
    for name in ("train_y", "test_y"):
        check_labels(where, name, arrays[name], num_classes, of)
    return num_classes


@register("npz")
def npz(cfg) -> DataBundle:
    """Arrays ``train_x, train_y, test_x, test_y`` (x uint8 (N, H, W, C), y int) in a .npz file.

    32x32 RGB arrays get CIFAR augmentation and CIFAR-10 normalisation (they are CIFAR images,
    e.g. ``../shared/data/cifar10-mini.npz``); other shapes get none and their own statistics.

    The number of classes is the length of an optional ``classes`` array (class names), else
    ``max(train_y) + 1``.

    Raises:
        DataError: the file is not a NumPy .npz archive, lacks a required array, holds arrays
            of the wrong shape, images that are not uint8, or labels that are not class indices
            (:func:`check_arrays`; the message names the path, the array and what was expected).
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
        missing = [k for k in ARRAYS if k not in f.files]
        if missing:
            raise DataError(f"data.path={cfg.path!r} lacks arrays {missing} (has {f.files}); expected {expected}")
        x_tr, y_tr, x_te, y_te = (f[k] for k in ARRAYS)
        stated = len(f["classes"]) if "classes" in f.files else None
    for name, x, y in (("train", x_tr, y_tr), ("test", x_te, y_te)):
        if x.ndim not in (3, 4) or y.ndim != 1 or len(x) != len(y) or len(y) == 0:
            raise DataError(
                f"data.path={cfg.path!r}: {name}_x has shape {x.shape} and {name}_y {y.shape}; "
                f"expected {expected}, with as many labels as images"
            )
    num_classes = check_arrays(f"data.path={cfg.path!r}", dict(zip(ARRAYS, (x_tr, y_tr, x_te, y_te))), stated)
    if x_tr.ndim == 3:
        x_tr, x_te = x_tr[..., None], x_te[..., None]
    cifar_like = x_tr.shape[1:] == (32, 32, 3)
    return array_bundle(
        "npz",
        hwc_to_chw(x_tr),
        torch.from_numpy(y_tr.astype(np.int64)),
        hwc_to_chw(x_te),
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
    return array_bundle(
        "digits",
        torch.from_numpy(x_tr),
        torch.from_numpy(y_tr.astype(np.int64)),
        torch.from_numpy(x_te),
        torch.from_numpy(y_te.astype(np.int64)),
        10,
        "none",
        cfg,
    )
