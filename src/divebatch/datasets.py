"""The data sets, by name: the one table that validation, loading, fetching and the analysis read.

Each :class:`Dataset` row is one ``data.name`` (its loader is registered under that name in
:mod:`divebatch.data`, and :data:`divebatch.choices.CHOICES` takes the names from here): what
``data.path`` must hold, the full set's sizes, the dataset of the claims its runs belong to, and
how ``divebatch replicate`` gets it (a kind of :data:`divebatch.fetch.DATA_KINDS`). Imports
nothing heavy: the config validation and the analysis use it without torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional


@dataclass(frozen=True)
class Dataset:
    """One data set.

    Attributes:
        name: ``data.name``.
        title: what people call it (messages, tables).
        path: what ``data.path`` is: ``file`` | ``dir`` | None (not read: bundled with a package).
        needs_path: ``data.path`` must be set (no default location).
        holds: what ``data.path`` must hold, for messages ("an existing ...").
        layout: files and folders that must exist under ``data.path`` (relative paths), checked
            before a run starts; empty: only the path itself (or the loader checks, e.g. CIFAR,
            whose files torchvision may still download).
        folder: the folder name of the full data set (``data.path`` ends with it), or None.
        n_train, n_test: samples of the full set (None: they depend on the file).
        classes: classes of the full set (None: they depend on the file).
        family: the data set of the claims (docs/protocol.md, "The claims") that runs on it
            belong to; None: decided by the file or folder name (a ``cifar10-mini.npz`` subset
            belongs to cifar10).
        paper: one of the paper's data sets (results on the full set are paper-scale).
        fetch: the kind of ``divebatch replicate``'s data entries (a key of
            :data:`divebatch.fetch.DATA_KINDS`: what must exist and how to get it), or None.
        download: ``divebatch fetch-data NAME`` downloads it.
    """

    name: str
    title: str
    path: Optional[Literal["file", "dir"]]
    needs_path: bool
    holds: str = ""
    layout: tuple[str, ...] = ()
    folder: Optional[str] = None
    n_train: Optional[int] = None
    n_test: Optional[int] = None
    classes: Optional[int] = None
    family: Optional[str] = None
    paper: bool = False
    fetch: Optional[str] = None
    download: bool = False


# the order is the order in which messages list the names
DATASETS: dict[str, Dataset] = {
    d.name: d
    for d in (
        Dataset(
            "cifar10",
            "CIFAR-10",
            "dir",
            False,
            "a folder with torchvision's cifar-10-batches-py/",
            n_train=50_000,
            n_test=10_000,
            classes=10,
            family="cifar10",
            paper=True,
            fetch="cifar10",
            download=True,
        ),
        Dataset(
            "cifar100",
            "CIFAR-100",
            "dir",
            False,
            "a folder with torchvision's cifar-100-python/",
            n_train=50_000,
            n_test=10_000,
            classes=100,
            family="cifar100",
            paper=True,
            fetch="cifar100",
            download=True,
        ),
        Dataset(
            "tiny_imagenet",
            "Tiny-ImageNet",
            "dir",
            True,
            "an existing tiny-imagenet-200/ folder (wnids.txt, train/, val/); "
            "get it with: divebatch fetch-data tiny_imagenet --root DIR",
            layout=("wnids.txt", "train", "val/val_annotations.txt", "val/images"),
            folder="tiny-imagenet-200",
            n_train=100_000,
            n_test=10_000,
            classes=200,
            family="tiny_imagenet",
            paper=True,
            fetch="tiny_imagenet",
            download=True,
        ),
        # scikit-learn's digits: 1,797 images, split 80/20 stratified (divebatch.data.arrays.digits)
        Dataset(
            "digits",
            "digits (scikit-learn)",
            None,
            False,
            n_train=1437,
            n_test=360,
            classes=10,
            family="digits",
            fetch="bundled",
        ),
        Dataset(
            "npz",
            "image arrays (.npz)",
            "file",
            True,
            "an existing .npz file with train_x, train_y, test_x, test_y",
            fetch="npz",
        ),
        Dataset(
            "imagefolder",
            "image folder",
            "dir",
            True,
            "an existing folder with train/<class>/* and test/<class>/* (torchvision ImageFolder layout)",
            layout=("train", "test"),
        ),
        Dataset(
            "text",
            "plain-text file",
            "file",
            True,
            "an existing plain-text (UTF-8) file, e.g. ../shared/data/tinyshakespeare.txt",
            fetch="text",
        ),
    )
}
NAMES: tuple[str, ...] = tuple(DATASETS)
PAPER_DATASETS: tuple[str, ...] = tuple(d.name for d in DATASETS.values() if d.paper)
SYNTHETIC = "synthetic"  # the family of the synthetic check's results (divebatch.synthetic), not a data.name
# the claims' data set families; longest first, so that a name is matched by its own family
# (cifar100-... is CIFAR-100, not CIFAR-10)
FAMILIES: tuple[str, ...] = tuple(
    sorted({SYNTHETIC, *(d.family for d in DATASETS.values() if d.family)}, key=lambda f: (-len(f), f))
)
# data sets that `divebatch fetch-data` downloads
DOWNLOADABLE: tuple[str, ...] = tuple(d.name for d in DATASETS.values() if d.download)


def missing_layout(name: str, path: str | Path) -> list[Path]:
    """The files and folders of ``DATASETS[name].layout`` that do not exist under ``path``."""
    root = Path(path)
    return [root / rel for rel in DATASETS[name].layout if not (root / rel).exists()]


def path_problem(name: str, path: Optional[str]) -> Optional[str]:
    """Why ``data.path`` cannot hold data set ``name`` (None: it can, as far as can be seen before
    loading): unset while required, not a file, not a folder, or a required part missing."""
    d = DATASETS[name]
    if not path:
        return "unset" if d.needs_path else None
    p = Path(path)
    if d.path == "file" and not p.is_file():
        return "not a file"
    if d.path == "dir" and d.needs_path and not p.is_dir():
        return "not a folder"
    missing = missing_layout(name, p) if d.path == "dir" and p.is_dir() else []
    return f"missing {', '.join(str(m.relative_to(p)) for m in missing)}" if missing else None
