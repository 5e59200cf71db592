"""``divebatch gpu-check``: the GPU acceptance check. One GPU, at most 8 minutes, one results file.

``bash replicate/gpu_check.sh [--out FILE] [--wheels DIR] [--cpu-check]`` runs, in this order,
each as a separate process on one GPU (``--gpu ID``, default the first visible one):

1. ``gpu_tests``: the tests marked ``gpu`` (pytest, only the test files that have such tests);
2. ``cifar10_faithful``: short real-data CIFAR-10 ResNet-18 runs on the whole training set
   (50,000 images; the official ``cifar-10-batches-py/`` when present, else the JPEG copy
   ``../shared/data/cifar10-jpeg.tar.gz`` decoded once with torchvision's ``ImageFolder`` into a
   cached array file) with the protocol's configs (``configs/cifar10/divebatch.yaml``: 3 epochs,
   the third measures gradient diversity; ``adabatch.yaml``: 6 epochs doubling 128 -> 2048), giving
   the epoch time at every batch size and per method;
3. ``runs_per_gpu``: the aggregate training throughput of K runs at once on the GPU against one
   (``--runs-per-gpu 2,4``), through the launcher ``divebatch replicate --runs-per-gpu`` uses;
4. ``bench_imagenet_step``: the plain step of Tiny-ImageNet's ResNet-18 at 224 px (for the GPU-hours);
5. ``cifar10_fast``: the runs of 2 with the speed options (bf16, channels_last, torch.compile);
6. ``bench_*``: the benchmarks of ``benchmarks/`` at their GPU sizes (docs/performance.md).

Every check has a time cap and the whole command a budget (``--budget-minutes``, default 8): a
check that would not fit is skipped, and the results file says so. A check whose packages are
not importable is skipped too, naming them: the command runs with the machine's own python and
packages (a GPU image's torch and torchvision, maybe older than the pins), plus wheels carried
along for the rest (``--wheels DIR``: installed with ``pip install --no-index --no-deps --target``
into the cache, never into the system; docs/replicate.md, "GPU acceptance check").

``--cpu-check`` runs the same checks on the CPU at tiny sizes (a generated 32x32 JPEG tarball in
the CIFAR-10 layout, a narrow ResNet, one repetition, no torch.compile): what the test suite runs.

The results file (JSON, schema ``divebatch-gpu-check/1``, :func:`validate_results`) is written
after every check, so a cut session keeps what finished. ``divebatch gpu-hours RESULTS.json``
(:mod:`divebatch.orchestration.gpu_hours`) turns it into the GPU-hours table of ``docs/replicate.md``.

This module imports only the standard library at the top, so that it can report missing
packages instead of failing on them.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import importlib
import io
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import tarfile
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

# divebatch.rundir imports only the standard library at the top, as this module must
from divebatch.rundir import REPO_ROOT as REPO
from divebatch.rundir import read_metrics, runs_path

SCHEMA = "divebatch-gpu-check/1"
SHARED_DATA = REPO.parent / "shared" / "data"
DEFAULT_OUT = runs_path("gpu_check", "results.json")
DEFAULT_BUDGET_MIN = 8.0
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
STATUSES = ("ok", "failed", "skipped")

# import name -> distribution name (pip); the pinned versions come from uv.lock
PACKAGES = {
    "torch": "torch",
    "torchvision": "torchvision",
    "numpy": "numpy",
    "PIL": "pillow",
    "omegaconf": "omegaconf",
    "yaml": "pyyaml",
    "tqdm": "tqdm",
    "backpack": "backpack-for-pytorch",
    "einops": "einops",
    "unfoldNd": "unfoldnd",
    "opt_einsum": "opt-einsum",
    "pandas": "pandas",
    "tabulate": "tabulate",
    "pytest": "pytest",
}
TRAIN = ("torch", "torchvision", "numpy", "PIL", "omegaconf", "yaml", "tqdm")  # divebatch train (SGD, AdaBatch)
DIVE = TRAIN + ("backpack", "einops", "unfoldNd")  # + DiveBatch's exact estimator
BENCH = DIVE + ("pandas", "tabulate")  # benchmarks/ (tables through pandas' to_markdown)
TESTS = DIVE + ("pandas", "pytest")


class GpuCheckError(ValueError):
    """Bad input to the acceptance check; the message names the option or key, the value and what is allowed."""


# ----------------------------------------------------------------------------- packages


def pinned_versions(lock: Path = REPO / "uv.lock") -> dict[str, str]:
    """``{distribution: version}`` of every package in ``uv.lock`` (empty when it is absent)."""
    try:
        text = lock.read_text()
    except OSError:
        return {}
    return {
        m.group(1).lower(): m.group(2)
        for m in re.finditer(r'^\[\[package\]\]\nname = "([^"]+)"\nversion = "([^"]+)"', text, re.M)
    }


def check_packages(names=tuple(PACKAGES), importer: Callable[[str], object] = importlib.import_module) -> dict:
    """Which packages import here.

    Returns:
        ``{import name: {"distribution", "version" (None when not importable), "pinned", "error"}}``;
        ``error`` is the import error's first line, or None.
    """
    pins = pinned_versions()
    out = {}
    for name in names:
        dist = PACKAGES.get(name, name)
        try:
            module = importer(name)
            version, error = str(getattr(module, "__version__", "unknown")), None
        except Exception as err:  # ImportError, or a broken install raising anything at import
            version, error = None, f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        out[name] = {"distribution": dist, "version": version, "pinned": pins.get(dist.lower()), "error": error}
    return out


def missing(packages: dict, needs: tuple[str, ...]) -> list[str]:
    """The distributions among ``needs`` that did not import (``pip`` names, with the pinned version)."""
    out = []
    for name in needs:
        info = packages.get(name) or {"distribution": PACKAGES.get(name, name), "version": None, "pinned": None}
        if info["version"] is None:
            out.append(info["distribution"] + (f"=={info['pinned']}" if info.get("pinned") else ""))
    return out


def install_wheels(wheels: Path, site: Path, log=print) -> list[str]:
    """Install every ``*.whl`` of ``wheels`` into ``site`` without any registry and without
    resolving dependencies (``pip install --no-index --no-deps --target``); the caller puts
    ``site`` on ``sys.path`` and on the children's ``PYTHONPATH``. Nothing is installed into
    the system's site-packages.

    Returns:
        The wheel file names installed.
    Raises:
        GpuCheckError: ``wheels`` holds no wheel, or pip fails (its output's last lines in the message).
    """
    files = sorted(str(p) for p in Path(wheels).glob("*.whl"))
    if not files:
        raise GpuCheckError(
            f"invalid --wheels {str(wheels)!r}; allowed: a folder holding .whl files "
            f"(made with pip download, docs/replicate.md)"
        )
    site.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--quiet",
        "--no-index",
        "--no-deps",
        "--upgrade",
        "--target",
        str(site),
        *files,
    ]
    log(f"[gpu-check] installing {len(files)} carried wheel(s) into {site}")
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        tail = "\n".join((res.stdout + res.stderr).splitlines()[-10:])
        raise GpuCheckError(f"--wheels {wheels}: pip install failed (exit {res.returncode}):\n{tail}")
    return [Path(f).name for f in files]


# ----------------------------------------------------------------------------- CIFAR-10 data


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


# ----------------------------------------------------------------------------- the checks


@dataclass
class Context:
    """What every check gets: mode, places, budget, and the shared data preparation."""

    cpu_check: bool
    work: Path  # logs, run directories, CSVs of this invocation
    cache: Path  # decoded data and carried wheels, kept between invocations
    gpu: Optional[str]  # CUDA_VISIBLE_DEVICES of every child; None on CPU
    env: dict  # children's environment
    deadline: float  # time.monotonic() by which everything must be done
    cifar10_source: Optional[Path]  # None: default_cifar10_source, decided when a check first needs it
    runs_per_gpu: list[int]
    log: Callable = print
    data: Optional[dict] = None  # prepare_cifar10's result, once prepared
    results: dict = field(default_factory=dict)  # name -> finished check record (later checks may read earlier ones)

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def run(self, name: str, argv: list[str], limit: float) -> tuple[int, float, Path]:
        """Run one child process, output to ``work/logs/<name>.log``, killed after ``limit`` seconds
        (or at the deadline). Returns (exit code, seconds, log path); exit code 124 on time-out."""
        log_path = self.work / "logs" / f"{name}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        limit = max(1.0, min(limit, self.remaining()))
        t0 = time.perf_counter()
        with open(log_path, "a") as f:
            f.write(f"=== $ {shlex.join(argv)}\n")
            f.flush()
            try:
                code = subprocess.run(
                    argv, stdout=f, stderr=subprocess.STDOUT, env=self.env, cwd=REPO, timeout=limit
                ).returncode
            except subprocess.TimeoutExpired:
                f.write(f"\n=== killed after {limit:.0f} s (time cap)\n")
                code = 124
        return code, time.perf_counter() - t0, log_path


class Skip(Exception):
    """A check that cannot run here; the message says why."""


def _tail(path: Path, n: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


def _require_data(ctx: Context) -> dict:
    if ctx.data is None:
        if ctx.cifar10_source is None:
            ctx.cifar10_source = default_cifar10_source(ctx.cpu_check, ctx.work)
        if not Path(ctx.cifar10_source).exists():
            raise Skip(
                f"CIFAR-10 not found at {ctx.cifar10_source} (give --cifar10 PATH: a folder holding "
                f"cifar-10-batches-py/, or cifar10-jpeg.tar.gz)"
            )
        ctx.data = prepare_cifar10(Path(ctx.cifar10_source), ctx.cache, ctx.log)
    return ctx.data


# --- 1. the tests marked gpu


def gpu_test_files(tests: Path = REPO / "tests") -> list[Path]:
    """The test files that contain a test marked ``gpu``."""
    return sorted(p for p in tests.glob("test_*.py") if "pytest.mark.gpu" in p.read_text())


def parse_junit(path: Path) -> dict:
    """pytest's JUnit XML as ``{"passed", "failed", "skipped", "tests": [{"name", "outcome", "message"}]}``."""
    tests = []
    for case in ET.parse(path).getroot().iter("testcase"):
        outcome, message = "passed", None
        for tag in ("failure", "error", "skipped"):
            node = case.find(tag)
            if node is not None:
                outcome = "failed" if tag in ("failure", "error") else "skipped"
                text = (node.get("message") or node.text or "").strip()
                message = text.splitlines()[0][:300] if text else ""
                break
        tests.append({"name": f"{case.get('classname')}::{case.get('name')}", "outcome": outcome, "message": message})
    counts = {k: sum(t["outcome"] == k for t in tests) for k in ("passed", "failed", "skipped")}
    return {**counts, "tests": tests}


def check_gpu_tests(ctx: Context) -> dict:
    files = gpu_test_files()
    if not files:
        raise Skip("no test file has a test marked gpu")
    xml = ctx.work / "gpu_tests.xml"
    code, seconds, log = ctx.run(
        "gpu_tests",
        [
            sys.executable,
            "-m",
            "pytest",
            "-m",
            "gpu",
            "-p",
            "no:cacheprovider",
            "-q",
            f"--junitxml={xml}",
            *map(str, files),
        ],
        limit=150,
    )
    if not xml.is_file():
        raise RuntimeError(f"pytest wrote no results (exit {code}); log {log}:\n{_tail(log)}")
    result = parse_junit(xml)
    result["files"] = [str(f.relative_to(REPO)) for f in files]
    if result["failed"] or code not in (0, 5):
        raise CheckFailed(f"{result['failed']} gpu test(s) failed (exit {code}); log {log}", result)
    if not ctx.cpu_check and result["passed"] == 0:
        raise CheckFailed("every test marked gpu was skipped on the GPU machine", result)
    return result


class CheckFailed(RuntimeError):
    """A check ran and found a problem; ``result`` keeps what it measured."""

    def __init__(self, message: str, result: dict):
        super().__init__(message)
        self.result = result


# --- 2. and 5. real-data CIFAR-10 runs


def realdata_runs(fast: bool, cpu_check: bool) -> dict[str, tuple[str, list[str]]]:
    """The short runs of the real-data check: name -> (config, overrides).

    ``divebatch``: 3 epochs at batch 128, the third measures gradient diversity (resize_freq 3);
    ``adabatch``: 6 epochs, the batch size doubling every epoch from 128 to 2048 (resize_freq 1).
    ``fast`` adds ``configs/cifar10/divebatch_fast.yaml``'s speed options to both.
    """
    common = ["wandb.mode=disabled", "progress=false"]
    if fast:
        common += ["speed.bf16=true", "speed.channels_last=true", f"speed.compile={str(not cpu_check).lower()}"]
    if cpu_check:
        common += ["device=cpu", "model.name=resnet_small", "model.width=4"]
    return {
        "divebatch": ("configs/cifar10/divebatch.yaml", [*common, "epochs=3", "method.resize_freq=3"]),
        "adabatch": ("configs/cifar10/adabatch.yaml", [*common, "epochs=6", "method.resize_freq=1"]),
    }


def epoch_times(runs: dict[str, list[dict]]) -> dict:
    """Steady epoch times from the runs' metrics.

    An epoch counts as steady when it is not its process's first (start-up, allocator, cuDNN and
    compilation warm-up) and did not measure diversity. Returns ``{"epoch_time_s": {batch size:
    min seconds}, "eval_time_s": mean seconds, "measured_epoch_ratio": measured / plain epoch
    at the same batch size (divebatch run), "methods": {...}}``; times in seconds.
    """
    steady: dict[int, list[float]] = {}
    evals = []
    for rows in runs.values():
        for r in rows[1:]:
            evals.append(r["eval_time_s"])
            if r.get("grad_diversity") is None:
                steady.setdefault(int(r["batch_size"]), []).append(r["epoch_time_s"])
    times = {b: min(v) for b, v in sorted(steady.items())}
    out = {
        "epoch_time_s": {str(b): t for b, t in times.items()},
        "eval_time_s": sum(evals) / len(evals) if evals else None,
        "measured_epoch_ratio": None,
        "methods": {},
    }
    div = runs.get("divebatch", [])
    measured = [r for r in div if r.get("grad_diversity") is not None]
    plain = [r for r in div[1:] if r.get("grad_diversity") is None]
    if measured and plain:
        out["measured_epoch_ratio"] = measured[-1]["epoch_time_s"] / plain[-1]["epoch_time_s"]
    sizes = sorted(times)
    if sizes:
        out["methods"] = {
            "sgd_small": {"batch_size": sizes[0], "epoch_time_s": times[sizes[0]]},
            "sgd_large": {"batch_size": sizes[-1], "epoch_time_s": times[sizes[-1]]},
            "adabatch": {"epoch_time_s_by_batch_size": {str(b): times[b] for b in sizes}},
            "divebatch": {
                "batch_size": sizes[0],
                "plain_epoch_time_s": plain[-1]["epoch_time_s"] if plain else None,
                "measured_epoch_time_s": measured[-1]["epoch_time_s"] if measured else None,
            },
        }
    return out


def check_realdata(ctx: Context, fast: bool) -> dict:
    data = _require_data(ctx)
    mode = "fast" if fast else "faithful"
    runs, out = (
        {},
        {
            "data": data["description"],
            "n_train": data["n_train"],
            "n_test": data["n_test"],
            "data_seconds": data["seconds"],
            "settings": mode,
            "runs": {},
        },
    )
    if fast and ctx.cpu_check:
        out["note"] = "speed.compile=false in --cpu-check (compiling takes minutes on a CPU)"
    failures = []
    for name, (config, overrides) in realdata_runs(fast, ctx.cpu_check).items():
        run_dir = ctx.work / "cifar10" / mode / name
        argv = [
            sys.executable,
            "-m",
            "divebatch",
            "train",
            config,
            *data["overrides"],
            *overrides,
            f"out_dir={run_dir}",
        ]
        code, seconds, log = ctx.run(f"cifar10_{mode}_{name}", argv, limit=240)
        rows = read_metrics(run_dir)
        runs[name] = rows
        out["runs"][name] = {
            "command": shlex.join(argv[2:]),
            "returncode": code,
            "seconds": round(seconds, 1),
            "epochs": [
                {
                    k: r[k]
                    for k in (
                        "epoch",
                        "batch_size",
                        "epoch_time_s",
                        "eval_time_s",
                        "val_acc",
                        "train_loss",
                        "grad_diversity",
                        "peak_memory_mb",
                    )
                }
                for r in rows
            ],
        }
        if code != 0:
            failures.append(f"{name} exited {code} (log {log}):\n{_tail(log)}")
    out.update(epoch_times(runs))
    if failures:
        raise CheckFailed("; ".join(failures), out)
    return out


# --- 3. K runs per GPU


def check_runs_per_gpu(ctx: Context) -> dict:
    """Aggregate throughput of K identical runs at once on the GPU against one run: the sum over
    the runs of training samples per second in their second and third epochs (the first is warm-up;
    the K processes start together, so these epochs overlap), divided by one run's."""
    from divebatch.orchestration import launch

    data = _require_data(ctx)
    subset = 256 if ctx.cpu_check else 20000
    extra = ["device=cpu", "model.name=resnet_small", "model.width=4"] if ctx.cpu_check else []
    out = {
        "config": "configs/cifar10/sgd_small.yaml",
        "train_subset": min(subset, data["n_train"]),
        "epochs": 3,
        "by_k": {},
    }
    for k in [1, *[k for k in ctx.runs_per_gpu if k != 1]]:
        if ctx.remaining() < 20:
            out["by_k"][str(k)] = {"skipped": "time budget"}
            continue
        tasks, dirs = [], []
        for i in range(k):
            run_dir = ctx.work / "runs_per_gpu" / f"k{k}" / f"run{i}"
            dirs.append(run_dir)
            argv = [
                sys.executable,
                "-m",
                "divebatch",
                "train",
                "configs/cifar10/sgd_small.yaml",
                *data["overrides"],
                f"data.train_subset={subset}",
                "epochs=3",
                "wandb.mode=disabled",
                "progress=false",
                *extra,
                f"seed={i + 1}",
                f"out_dir={run_dir}",
            ]
            tasks.append(launch.Task(f"k{k}-run{i}", argv, ctx.work / "logs" / f"runs_per_gpu_k{k}_run{i}.log"))
        pool = launch.Pool(
            jobs=k, gpus=[ctx.gpu] if ctx.gpu is not None else [], log=ctx.log, prefix="[gpu-check]", runs_per_gpu=k
        )
        pool.env.update(
            {
                key: v
                for key, v in ctx.env.items()
                if key not in ("CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
            }
        )
        t0 = time.perf_counter()
        pool.run(tasks)
        wall = time.perf_counter() - t0
        rows = [read_metrics(d) for d in dirs]
        codes = [t.returncode for t in tasks]
        per_run = [r[2]["samples_seen"] - r[0]["samples_seen"] for r in rows if len(r) >= 3]
        secs = [r[1]["epoch_time_s"] + r[2]["epoch_time_s"] for r in rows if len(r) >= 3]
        record = {
            "returncodes": codes,
            "wall_s": round(wall, 1),
            "epochs_2_3_time_s": secs,
            "gpu": ctx.gpu if ctx.gpu is not None else "cpu",
        }
        if len(secs) == k and all(c == 0 for c in codes):
            record["samples_per_s"] = sum(n / s for n, s in zip(per_run, secs))
        else:
            record["failed"] = [f"{t.name}: exit {t.returncode}, log {t.log}" for t in tasks if t.returncode != 0]
        out["by_k"][str(k)] = record
    base = out["by_k"].get("1", {}).get("samples_per_s")
    out["speedup"] = {key: r["samples_per_s"] / base for key, r in out["by_k"].items() if base and "samples_per_s" in r}
    bad = [key for key, r in out["by_k"].items() if "failed" in r]
    if bad:
        raise CheckFailed(
            f"K = {', '.join(bad)}: a run failed: " + "; ".join(sum((out["by_k"][b]["failed"] for b in bad), [])), out
        )
    return out


# --- 4. and 6. the benchmarks


def benchmark_args(cpu_check: bool) -> dict[str, tuple[str, list[str], float]]:
    """name -> (script in benchmarks/, arguments, time cap in seconds): the GPU sizes of
    docs/performance.md (trimmed to fit the budget), or tiny CPU sizes with ``cpu_check``."""
    if cpu_check:
        dev = ["--device", "cpu", "--threads", "1", "--reps", "1"]
        return {
            "bench_imagenet_step": (
                "diversity_cost.py",
                [*dev, "--models", "resnet_small", "--image-size", "32", "--batch-sizes", "4", "--cases", "exact"],
                60,
            ),
            "bench_throughput": (
                "throughput.py",
                [*dev, "--model", "resnet_small", "--width", "4", "--batch-sizes", "8,16"],
                60,
            ),
            "bench_divebatch_overhead": (
                "divebatch_overhead.py",
                [
                    *dev,
                    "--n",
                    "64",
                    "--width",
                    "4",
                    "--epochs",
                    "2",
                    "--resize-freq",
                    "2",
                    "--initial-batch-size",
                    "16",
                    "--max-batch-size",
                    "64",
                ],
                90,
            ),
            "bench_diversity_cost": (
                "diversity_cost.py",
                [*dev, "--models", "linear", "--batch-sizes", "8", "--cases", "exact"],
                60,
            ),
            "bench_microbatch_cost": (
                "microbatch_cost.py",
                [*dev, "--models", "linear", "--batch-sizes", "8", "--ks", "2"],
                60,
            ),
            "bench_data_path": ("data_path.py", [*dev, "--n", "64", "--width", "4", "--batch-size", "16"], 60),
        }
    dev = ["--device", "cuda", "--threads", "0"]
    return {
        "bench_imagenet_step": (
            "diversity_cost.py",
            [
                *dev,
                "--models",
                "resnet18_imagenet",
                "--image-size",
                "224",
                "--batch-sizes",
                "256",
                "--reps",
                "3",
                "--cases",
                "exact",
            ],
            60,
        ),
        "bench_throughput": (
            "throughput.py",
            [
                *dev,
                "--model",
                "resnet18_cifar",
                "--width",
                "64",
                "--batch-sizes",
                "128,256,512,1024,2048",
                "--reps",
                "3",
            ],
            60,
        ),
        "bench_divebatch_overhead": (
            "divebatch_overhead.py",
            [
                *dev,
                "--n",
                "5085",
                "--model",
                "resnet18_cifar",
                "--width",
                "64",
                "--initial-batch-size",
                "128",
                "--max-batch-size",
                "2048",
                "--epochs",
                "20",
            ],
            90,
        ),
        "bench_diversity_cost": (
            "diversity_cost.py",
            [
                *dev,
                "--models",
                "resnet18_cifar",
                "--batch-sizes",
                "128,512,2048",
                "--reps",
                "5",
                "--cases",
                "exact,exact_stock_conv,authors_style",
            ],
            60,
        ),
        "bench_microbatch_cost": (
            "microbatch_cost.py",
            [*dev, "--models", "resnet18_cifar", "--batch-sizes", "128,512,2048", "--reps", "5"],
            60,
        ),
        "bench_data_path": (
            "data_path.py",
            [*dev, "--n", "5085", "--width", "64", "--model", "resnet18_cifar", "--reps", "3"],
            45,
        ),
    }


def check_benchmark(ctx: Context, name: str) -> dict:
    script, args, cap = benchmark_args(ctx.cpu_check)[name]
    out_csv = ctx.work / f"{name}.csv"
    out_csv.unlink(missing_ok=True)
    argv = [sys.executable, str(REPO / "benchmarks" / script), *args, "--csv", str(out_csv)]
    code, seconds, log = ctx.run(name, argv, limit=cap)
    result = {"command": shlex.join([f"benchmarks/{script}", *args]), "returncode": code, "seconds": round(seconds, 1)}
    if code != 0 or not out_csv.is_file():
        why = "timed out" if code == 124 else f"exit {code}"
        raise CheckFailed(f"{why}; log {log}:\n{_tail(log)}", result)
    with open(out_csv) as f:
        result["rows"] = [{k: _number(v) for k, v in r.items()} for r in csv.DictReader(f)]
    return result


def _number(v: str):
    try:
        return int(v)
    except ValueError:
        try:
            return float(v)
        except ValueError:
            return v


# ----------------------------------------------------------------------------- the driver


@dataclass
class Check:
    name: str
    needs: tuple[str, ...]
    run: Callable[[Context], dict]
    min_s: float  # skipped when less than this is left of the budget (GPU sizes)
    what: str


def checks() -> list[Check]:
    """The checks in the order they run (the GPU-hours inputs first)."""
    bench = lambda n: lambda ctx: check_benchmark(ctx, n)  # noqa: E731
    return [
        Check("gpu_tests", TESTS, check_gpu_tests, 30, "the tests marked gpu"),
        Check(
            "cifar10_faithful",
            DIVE,
            lambda ctx: check_realdata(ctx, False),
            60,
            "CIFAR-10 ResNet-18 on the whole training set, the protocol's settings: epoch time per method",
        ),
        Check("runs_per_gpu", TRAIN, check_runs_per_gpu, 45, "throughput of K runs per GPU against one"),
        Check(
            "bench_imagenet_step",
            BENCH,
            bench("bench_imagenet_step"),
            20,
            "Tiny-ImageNet's ResNet-18 step at 224 px (plain and exact estimator)",
        ),
        Check(
            "cifar10_fast",
            DIVE,
            lambda ctx: check_realdata(ctx, True),
            90,
            "the same runs with the speed options (bf16, channels_last, torch.compile)",
        ),
        Check("bench_throughput", BENCH, bench("bench_throughput"), 20, "(d) throughput against batch size"),
        Check(
            "bench_divebatch_overhead", BENCH, bench("bench_divebatch_overhead"), 30, "(e) whole-run DiveBatch overhead"
        ),
        Check(
            "bench_diversity_cost", BENCH, bench("bench_diversity_cost"), 20, "(a) cost of the diversity measurement"
        ),
        Check("bench_microbatch_cost", BENCH, bench("bench_microbatch_cost"), 20, "(b) micro-batch estimator cost"),
        Check("bench_data_path", BENCH, bench("bench_data_path"), 15, "(c) data path"),
    ]


def machine_info(gpu: Optional[str]) -> dict:
    """Python, torch, CUDA and the device this check measures on (torch imported here, after the package check)."""
    info = {"python": platform.python_version(), "platform": platform.platform(), "cpu_count": os.cpu_count()}
    try:
        import torch

        info.update(torch=torch.__version__, cuda=torch.version.cuda, cuda_available=torch.cuda.is_available())
        if gpu is not None and torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            info.update(device=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1))
        else:
            info["device"] = "cpu"
    except Exception as err:
        info["torch_error"] = str(err).splitlines()[0] if str(err) else type(err).__name__
        info["device"] = "unknown (torch not importable)"
    try:
        from divebatch.provenance import git_commit

        info["commit"] = git_commit()
    except Exception:
        info["commit"] = "unknown"
    return info


def validate_results(obj: dict) -> dict:
    """Check a results file's structure (schema ``divebatch-gpu-check/1``).

    Required: ``schema``, ``mode`` (``gpu`` | ``cpu-check``), ``started`` (ISO 8601), ``seconds``
    (float), ``budget_s``, ``machine`` (dict with ``python``, ``device``), ``packages`` (import
    name -> {distribution, version, pinned, error}), ``checks`` (name -> {status in ok | failed |
    skipped, reason (str, required unless ok), seconds, what, result (dict or None)}),
    ``skipped`` (list of {item, reason}).

    Returns:
        ``obj``.
    Raises:
        GpuCheckError: naming the key, the value and what is allowed.
    """

    def bad(key, value, allowed):
        return GpuCheckError(f"invalid results file: {key}={value!r}; allowed: {allowed}")

    if obj.get("schema") != SCHEMA:
        raise bad("schema", obj.get("schema"), SCHEMA)
    if obj.get("mode") not in ("gpu", "cpu-check"):
        raise bad("mode", obj.get("mode"), "gpu | cpu-check")
    for key, typ in (
        ("started", str),
        ("seconds", (int, float)),
        ("budget_s", (int, float)),
        ("machine", dict),
        ("packages", dict),
        ("checks", dict),
        ("skipped", list),
    ):
        if not isinstance(obj.get(key), typ):
            raise bad(key, obj.get(key), f"a value of type {getattr(typ, '__name__', 'number')}")
    for key in ("python", "device"):
        if key not in obj["machine"]:
            raise bad(f"machine.{key}", None, "present")
    for name, info in obj["packages"].items():
        if not isinstance(info, dict) or set(info) != {"distribution", "version", "pinned", "error"}:
            raise bad(f"packages.{name}", info, "{distribution, version, pinned, error}")
    for name, c in obj["checks"].items():
        if c.get("status") not in STATUSES:
            raise bad(f"checks.{name}.status", c.get("status"), " | ".join(STATUSES))
        if c["status"] != "ok" and not c.get("reason"):
            raise bad(f"checks.{name}.reason", c.get("reason"), "a reason when the status is not ok")
        if not isinstance(c.get("seconds"), (int, float)) or not (
            c.get("result") is None or isinstance(c["result"], dict)
        ):
            raise bad(f"checks.{name}", c, "seconds (number) and result (dict or null)")
    for i, s in enumerate(obj["skipped"]):
        if not (isinstance(s, dict) and s.get("item") and s.get("reason")):
            raise bad(f"skipped[{i}]", s, "{item, reason}")
    return obj


def _write(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


def run_checks(
    cpu_check: bool = False,
    out: Path = DEFAULT_OUT,
    budget_s: float = DEFAULT_BUDGET_MIN * 60,
    only: Optional[list[str]] = None,
    cifar10: Optional[Path] = None,
    cache: Optional[Path] = None,
    work: Optional[Path] = None,
    wheels: Optional[Path] = None,
    gpu: Optional[str] = None,
    runs_per_gpu: tuple[int, ...] = (2, 4),
    log=print,
    importer: Callable[[str], object] = importlib.import_module,
) -> dict:
    """Run the acceptance checks and write the results file (after every check).

    Args:
        cpu_check: tiny sizes on the CPU (what the tests run); else one GPU, GPU sizes.
        out: results file (JSON; overwritten).
        budget_s: the whole command's time budget in seconds; checks that would not fit are skipped.
        only: names of the checks to run (default: all); the others are reported as skipped.
        cifar10: data source (:func:`prepare_cifar10`); default :func:`default_cifar10_source`.
        cache: decoded data and installed wheels (default ``$XDG_CACHE_HOME/divebatch`` or
            ``~/.cache/divebatch``); work: logs and run directories (default: a new temporary folder).
        wheels: a folder of carried ``.whl`` files to install first (:func:`install_wheels`).
        gpu: the GPU to use (a ``CUDA_VISIBLE_DEVICES`` id; default the first visible).
        runs_per_gpu: the K values compared with one run per GPU.
        importer: how packages are imported (tests replace it to simulate a missing package).
    Returns:
        The results (also written to ``out``); see :func:`validate_results`.
    Raises:
        GpuCheckError: an unknown check name in ``only``, a bad K, or unusable ``wheels``.
    """
    t_start, started = time.monotonic(), dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    all_checks = checks()
    names = [c.name for c in all_checks]
    unknown = sorted(set(only or ()) - set(names))
    if unknown:
        raise GpuCheckError(f"invalid --only {','.join(unknown)}; allowed: {', '.join(names)}")
    if any(k < 1 for k in runs_per_gpu):
        raise GpuCheckError(f"invalid --runs-per-gpu {','.join(map(str, runs_per_gpu))}; allowed: integers >= 1")
    cache = Path(cache or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "divebatch")
    work = Path(work) if work else Path(tempfile.mkdtemp(prefix="divebatch-gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST"}
    paths = [str(REPO / "src")]
    carried = []
    if wheels is not None:
        site = cache / "site-packages"
        carried = install_wheels(Path(wheels), site, log)
        paths.insert(0, str(site))
        sys.path[:0] = [str(site)]
        importlib.invalidate_caches()
    env["PYTHONPATH"] = os.pathsep.join(paths + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.update(PYTHONUNBUFFERED="1", WANDB_MODE="disabled")
    packages = check_packages(importer=importer)
    torch_ok = packages["torch"]["version"] is not None
    cuda = False
    if torch_ok and not cpu_check:
        import torch

        cuda = torch.cuda.is_available()
    if not cpu_check:
        visible = [g for g in os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",") if g.strip()]
        gpu = gpu if gpu is not None else (visible[0] if visible else None)
        if gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = gpu
    else:
        gpu = None
        env.update(CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS=env.get("OMP_NUM_THREADS", "1"))
    results = {
        "schema": SCHEMA,
        "mode": "cpu-check" if cpu_check else "gpu",
        "started": started,
        "seconds": 0.0,
        "budget_s": budget_s,
        "machine": machine_info(gpu if cuda else None),
        "packages": packages,
        "carried_wheels": carried,
        "work_dir": str(work),
        "checks": {},
        "skipped": [],
    }
    for _name, info in packages.items():
        if info["version"] is None:
            results["skipped"].append(
                {"item": f"package {info['distribution']}", "reason": f"not importable ({info['error']})"}
            )
    ctx = Context(
        cpu_check,
        work,
        cache,
        gpu,
        env,
        t_start + budget_s,
        Path(cifar10) if cifar10 else None,
        list(runs_per_gpu),
        log,
    )
    for check in all_checks:
        reason = None
        lacking = missing(packages, check.needs)
        if only and check.name not in only:
            reason = "not selected (--only)"
        elif lacking:
            reason = f"needs {', '.join(lacking)} (not importable here; carry the wheels: --wheels DIR)"
        elif not cpu_check and not cuda:
            reason = "no CUDA device (torch.cuda.is_available() is False); --cpu-check runs the CPU version"
        elif ctx.remaining() < (check.min_s if not cpu_check else 1):
            reason = (
                f"time budget: {max(0, ctx.remaining()):.0f} s of {budget_s:.0f} s left, the check needs at "
                f"least {check.min_s:.0f} s (rerun it alone: --only {check.name})"
            )
        t0 = time.perf_counter()
        record = {"status": "skipped", "reason": reason, "seconds": 0.0, "what": check.what, "result": None}
        if reason is None:
            log(f"[gpu-check] {check.name}: {check.what}")
            try:
                record.update(status="ok", result=check.run(ctx))
            except Skip as err:
                record.update(status="skipped", reason=str(err))
            except CheckFailed as err:
                record.update(status="failed", reason=str(err), result=err.result)
            except Exception as err:  # one check's failure never stops the others
                record.update(status="failed", reason=f"{type(err).__name__}: {err}")
            record["seconds"] = round(time.perf_counter() - t0, 1)
        ctx.results[check.name] = record
        results["checks"][check.name] = record
        if record["status"] == "skipped":
            results["skipped"].append({"item": f"check {check.name}", "reason": record["reason"]})
        if check.name == "gpu_tests" and record["result"]:
            for t in record["result"]["tests"]:
                if t["outcome"] == "skipped":
                    results["skipped"].append({"item": f"test {t['name']}", "reason": t["message"] or "skipped"})
        results["seconds"] = round(time.monotonic() - t_start, 1)
        if ctx.data is not None:
            results["data"] = {k: v for k, v in ctx.data.items() if k != "overrides"}
        _write(Path(out), validate_results(results))
        log(
            f"[gpu-check] {check.name}: {record['status']}"
            + (f" ({record['seconds']:.0f} s)" if record["status"] != "skipped" else "")
            + (f": {record['reason'].splitlines()[0]}" if record["reason"] else "")
        )
    return results


def summary(results: dict) -> str:
    """The lines printed at the end: each check's status, what was skipped and why, the file."""
    lines = [
        f"[gpu-check] {results['mode']} on {results['machine'].get('device')} "
        f"(torch {results['machine'].get('torch')}), {results['seconds']:.0f} s of {results['budget_s']:.0f} s"
    ]
    for name, c in results["checks"].items():
        lines.append(f"  {c['status']:<7} {name}" + (f" ({c['seconds']:.0f} s)" if c["status"] != "skipped" else ""))
    if results["skipped"]:
        lines.append("  skipped, and why:")
        lines += [f"    {s['item']}: {s['reason'].splitlines()[0]}" for s in results["skipped"]]
    return "\n".join(lines)


def cli(argv: list[str] | None = None) -> int:
    """``divebatch gpu-check [--cpu-check] [--out FILE] [...]``; exit status 0 when no check failed
    (skipped ones are reported, not failures), 1 when one failed, 2 on bad arguments."""
    p = argparse.ArgumentParser(
        prog="divebatch gpu-check",
        description="GPU acceptance check: the gpu tests, real-data CIFAR-10 epoch times per method, the throughput "
        "of K runs per GPU and the benchmarks' GPU sizes, on one GPU within --budget-minutes, into one "
        "results file. Then: divebatch gpu-hours RESULTS.json --write. See docs/replicate.md.",
    )
    p.add_argument("--cpu-check", action="store_true", help="the same checks at tiny sizes on the CPU (tests)")
    p.add_argument("--out", default=str(DEFAULT_OUT), help=f"results file (default: {DEFAULT_OUT})")
    p.add_argument("--budget-minutes", type=float, default=DEFAULT_BUDGET_MIN, help="time budget (default: 8)")
    p.add_argument(
        "--only",
        default=None,
        help="comma list of checks to run (default: all): " + ", ".join(c.name for c in checks()),
    )
    p.add_argument(
        "--cifar10",
        default=None,
        help="CIFAR-10: a folder holding cifar-10-batches-py/, or "
        "cifar10-jpeg.tar.gz (default: data/ when it holds the official files, else "
        "../shared/data/cifar10-jpeg.tar.gz)",
    )
    p.add_argument("--cache", default=None, help="decoded data and carried wheels (default: ~/.cache/divebatch)")
    p.add_argument("--work", default=None, help="logs and run directories (default: a new temporary folder)")
    p.add_argument("--wheels", default=None, help="folder of carried .whl files for what the machine lacks")
    p.add_argument("--gpu", default=None, help="GPU id to use (default: the first visible)")
    p.add_argument("--runs-per-gpu", default="2,4", help="K values compared with one run per GPU (default: 2,4)")
    a = p.parse_args(argv)
    try:
        ks = tuple(int(k) for k in a.runs_per_gpu.split(","))
    except ValueError:
        print(
            f"divebatch gpu-check: error: invalid --runs-per-gpu {a.runs_per_gpu!r}; allowed: a comma list of "
            f"integers >= 1",
            file=sys.stderr,
        )
        return 2
    try:
        results = run_checks(
            a.cpu_check,
            Path(a.out),
            a.budget_minutes * 60,
            a.only.split(",") if a.only else None,
            a.cifar10,
            a.cache,
            a.work,
            a.wheels,
            a.gpu,
            ks,
        )
    except GpuCheckError as err:
        print(f"divebatch gpu-check: error: {err}", file=sys.stderr)
        return 2
    print(summary(results))
    print(
        f"[gpu-check] results: {a.out}  (logs: {results['work_dir']}/logs)\n"
        f"[gpu-check] next: divebatch gpu-hours {a.out} --write   (fills the table in docs/replicate.md)"
    )
    return 1 if any(c["status"] == "failed" for c in results["checks"].values()) else 0
