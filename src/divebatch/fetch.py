"""Where a run's data is and how to get it: what each data kind needs on disk, the official
archives and their download (``divebatch fetch-data``), and what to do when data is missing.

:func:`ensure_data` is the first step of ``divebatch replicate``: it checks every data entry of a
profile (:class:`DataSource`, resolved by :func:`divebatch.orchestration.profiles.resolve_data`), downloads
what it may when the network answers a quick check, and otherwise returns instructions naming
the files and where to put them, so that nothing trains with data missing. Loading the data is
:mod:`divebatch.data`'s job.
"""

from __future__ import annotations

import functools
import shlex
import socket
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional
from urllib.parse import urlsplit

from divebatch.datasets import DATASETS, DOWNLOADABLE

TINY_IMAGENET_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"  # the official archive
TINY_IMAGENET_MD5 = "90528d7ca1a48142e341f4ef8d21d0de"
NETWORK_TIMEOUT_S = 3.0  # seconds a host gets to accept a connection before a download is tried


@dataclass(frozen=True)
class DataKind:
    """What a dataset needs on disk and how to get it.

    Attributes:
        title: human name.
        required: path -> the files/folders that must exist (``data.path`` is ``path``).
        fetch: path -> ``divebatch fetch-data`` arguments that put the data at ``path``, or None.
        url: the official archive (its host is probed before a download).
        manual: path -> how to put the data there by hand.
        path_means: what ``--data``/the env variable must point at.
    """

    title: str
    required: Callable[[Path], list[Path]]
    fetch: Optional[Callable[[Path], Optional[list[str]]]] = None
    url: Optional[str] = None
    manual: Callable[[Path], str] = lambda path: ""
    path_means: str = ""


def _cifar_kind(name: str) -> DataKind:
    from torchvision import datasets as tvd

    cls = {"cifar10": tvd.CIFAR10, "cifar100": tvd.CIFAR100}[name]
    names = [f for f, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]
    return DataKind(
        title=DATASETS[name].title,
        required=lambda root: [root / cls.base_folder / f for f in names],
        fetch=lambda root: [name, "--root", str(root)],
        url=cls.url,
        manual=lambda root: (
            f"download {cls.url} (md5 {cls.tgz_md5}) on a machine with network, copy "
            f"{cls.filename} here and unpack it into {root}/: mkdir -p {root} && tar -xzf "
            f"{cls.filename} -C {root}  (gives {root / cls.base_folder}/)"
        ),
        path_means=f"the folder that contains {cls.base_folder}/",
    )


def _tiny_kind() -> DataKind:
    zip_name = Path(urlsplit(TINY_IMAGENET_URL).path).name
    tiny = DATASETS["tiny_imagenet"]
    return DataKind(
        title=tiny.title,
        required=lambda p: [p / rel for rel in tiny.layout],
        # fetch-data extracts into ROOT/tiny-imagenet-200: usable only when the path has that name
        fetch=lambda p: ["tiny_imagenet", "--root", str(p.parent)] if p.name == tiny.folder else None,
        url=TINY_IMAGENET_URL,
        manual=lambda p: (
            f"download {TINY_IMAGENET_URL} (md5 {TINY_IMAGENET_MD5}) on a machine with network, "
            f"copy {zip_name} here and unzip it into {p.parent}/: unzip -q {zip_name} -d {p.parent}  "
            f"(gives {p.parent / tiny.folder}/; the data path must be that folder)"
        ),
        path_means=f"the {tiny.folder}/ folder itself (wnids.txt, train/, val/)",
    )


DATA_KINDS: dict[str, Callable[[], DataKind]] = {
    "bundled": lambda: DataKind("bundled with the packages (scikit-learn digits)", required=lambda p: []),
    "npz": lambda: DataKind(
        DATASETS["npz"].title,
        required=lambda p: [p],
        manual=lambda p: (
            "an .npz file with arrays train_x (N, 32, 32, 3) uint8 RGB, train_y (N,) int, test_x, "
            "test_y, e.g. the CIFAR-10 subset cifar10-mini.npz described in ../shared/data/README.md"
        ),
        path_means="the .npz file",
    ),
    "text": lambda: DataKind(
        DATASETS["text"].title,
        required=lambda p: [p],
        manual=lambda p: (
            "a UTF-8 text file, e.g. the tiny Shakespeare corpus tinyshakespeare.txt described in "
            "../shared/data/README.md (1,115,394 characters)"
        ),
        path_means="the .txt file",
    ),
    "cifar10": lambda: _cifar_kind("cifar10"),
    "cifar100": lambda: _cifar_kind("cifar100"),
    "tiny_imagenet": _tiny_kind,
}


@dataclass
class DataSource:
    """A data entry of the profile with its path resolved (``--data`` > env variable > profile)."""

    key: str
    kind: str
    path: Optional[Path]
    origin: str  # where the path came from, for messages
    download: bool
    env: Optional[str]
    experiments: list[str]

    @property
    def info(self) -> DataKind:
        return DATA_KINDS[self.kind]()

    def missing(self) -> list[Path]:
        return [] if self.path is None else [p for p in self.info.required(self.path) if not p.exists()]


def _reachable(url: str, timeout: float = NETWORK_TIMEOUT_S) -> bool:
    """Whether the host of ``url`` accepts a TCP connection within ``timeout`` seconds."""
    parts = urlsplit(url)
    return _host_answers(parts.hostname, parts.port or (443 if parts.scheme == "https" else 80), timeout)


def reachable(url: str) -> bool:
    """Whether the host of ``url`` answers within :data:`NETWORK_TIMEOUT_S` seconds (asked before
    any download: an offline machine gets instructions, not a traceback)."""
    return _reachable(url)


@functools.lru_cache(maxsize=None)  # one check per host and invocation (CIFAR-10 and -100 share one)
def _host_answers(host: str, port: int, timeout: float) -> bool:
    ok = []

    def probe():  # in a daemon thread, so that a resolver that hangs cannot hold the command
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            ok.append(True)
        except OSError:
            pass

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout + 0.5)
    return bool(ok)


def data_instructions(src: DataSource, profile: str, why_no_download: str) -> str:
    """What is missing for one data entry and how to put it in place (several ways)."""
    info = src.info
    missing = src.missing()
    by_dir: dict[Path, list[str]] = {}
    for p in missing:
        by_dir.setdefault(p.parent, []).append(p.name)
    shown = ", ".join(
        f"{d}/{names[0]}" if len(names) == 1 else f"{d}/{{{', '.join(names)}}}" for d, names in by_dir.items()
    )
    lines = [
        f"- {src.key}: {info.title} for experiment(s) {', '.join(src.experiments) or '-'}; "
        f"path {src.path} ({src.origin}); missing: {shown}"
    ]
    args = info.fetch(src.path) if info.fetch else None
    if args:
        lines.append(
            f"    with network:    divebatch fetch-data {shlex.join(args)}   "
            f"(or rerun this command where the network answers; {why_no_download})"
        )
    manual = info.manual(src.path)
    if manual:
        lines.append(f"    by hand:         {manual}")
    where = [f"--data {src.key}=PATH"] + ([f"{src.env}=PATH"] if src.env else [])
    lines.append(
        f"    data elsewhere:  bash replicate/all.sh {profile} {where[0]}"
        + (f"  (or set {where[1]})" if len(where) > 1 else "")
        + f"; PATH is {info.path_means or 'the data'}"
    )
    return "\n".join(lines)


def ensure_data(
    sources: dict[str, DataSource], profile: str, offline: bool, allow_download: bool, log=print, dry_run: bool = False
) -> list[str]:
    """Check every data entry used by an experiment; fetch what is missing when allowed and the
    network answers. Nothing is trained before this returns an empty list.

    Args:
        dry_run: download nothing; say what would be fetched (an entry that would be fetched is
            not a problem).
    Returns:
        One instruction block per entry still missing (empty: all data present).
    """
    problems = []
    for src in sources.values():
        if not src.experiments or not src.missing():
            continue
        info = src.info
        args = info.fetch(src.path) if (info.fetch and src.download) else None
        if args is None:
            why = "this profile does not download it" if not src.download else "no download into this path"
        elif offline:
            why = "--offline given"
        elif not allow_download:
            why = "--no-download given"
        elif not _reachable(info.url):
            why = f"{urlsplit(info.url).hostname} did not answer within {NETWORK_TIMEOUT_S:.0f} s"
        elif dry_run:
            log(
                f"[replicate] would fetch {src.key} ({info.title}) into {src.path}: divebatch fetch-data {shlex.join(args)}"
            )
            continue
        else:
            log(
                f"[replicate] fetching {src.key} ({info.title}) into {src.path}: divebatch fetch-data {shlex.join(args)}"
            )
            why = "the download failed" if fetch_cli(args) != 0 else ""
            if not src.missing():
                continue
        problems.append(data_instructions(src, profile, why))
    return problems


def fetch_cli(argv: list[str]) -> int:
    """``divebatch fetch-data {cifar10,cifar100,tiny_imagenet} --root DIR``: download and verify
    (the data sets of :data:`divebatch.datasets.DOWNLOADABLE`)."""
    import argparse

    p = argparse.ArgumentParser(
        prog="divebatch fetch-data", description="Download a dataset and verify it (needs network)."
    )
    p.add_argument("dataset", choices=DOWNLOADABLE)
    p.add_argument("--root", default="data", help="folder to download into (default: data)")
    a = p.parse_args(argv)
    from torchvision import datasets as tvd  # after the arguments: --help answers without torch
    from torchvision.datasets.utils import download_and_extract_archive

    root = Path(a.root)
    try:
        if a.dataset == "tiny_imagenet":
            folder = root / DATASETS["tiny_imagenet"].folder
            if (folder / "wnids.txt").exists():
                print(f"already present: {folder}")
            else:
                download_and_extract_archive(TINY_IMAGENET_URL, str(root), md5=TINY_IMAGENET_MD5)
            print(f"use: data.name=tiny_imagenet data.path={folder}")
        else:
            cls = tvd.CIFAR10 if a.dataset == "cifar10" else tvd.CIFAR100
            cls(root, train=True, download=True), cls(root, train=False, download=True)
            print(f"use: data.name={a.dataset} data.path={root}")
    except OSError as err:  # URLError is an OSError
        print(
            f"divebatch fetch-data: download failed ({err}). On a machine without network, copy the "
            f"official archive into {root} by hand (see README, 'Data').",
            file=sys.stderr,
        )
        return 1
    return 0
