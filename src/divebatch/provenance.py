"""Where a result came from: git commit, package versions, device, and the label every table and
figure carries (profile, data, seeds, commit)."""

from __future__ import annotations

import datetime as _dt
import importlib.metadata as _md
import platform
import subprocess
from pathlib import Path

from divebatch.datasets import PAPER_DATASETS
from divebatch.rundir import REPO_ROOT

PACKAGES = (
    "torch",
    "torchvision",
    "backpack-for-pytorch",
    "omegaconf",
    "wandb",
    "sweeps",
    "numpy",
    "scipy",
    "pandas",
    "seaborn",
    "matplotlib",
    "scikit-learn",
)
GENERATED_DIRS = ("paper_tables", "figures", "notebooks", "runs")  # outputs and committed run data
VERDICT_FILE = "synthetic_verdict.json"  # written by `divebatch synthetic` into paper_tables/<profile>/


def git_commit(short: bool = False, repo: Path = REPO_ROOT) -> str:
    """The checkout's HEAD commit, with ``+dirty`` when tracked files other than the generated
    outputs (``GENERATED_DIRS``) have uncommitted changes; ``unknown`` outside a git checkout."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()

    try:
        commit = git("rev-parse", "--short" if short else "--verify", "HEAD")
        # regenerated outputs are not code: a replication rewriting its own tables must not mark
        # the runs that follow as made from uncommitted changes
        dirty = bool(
            git("status", "--porcelain", "--untracked-files=no", "--", ".", *(f":!{d}" for d in GENERATED_DIRS))
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = _md.version(name)
        except _md.PackageNotFoundError:
            out[name] = "not installed"
    return out


def device_description(device) -> str:
    """``cuda:<GPU name>`` or ``cpu:<processor> xN threads`` for a ``torch.device``."""
    import torch  # here, not at module level: analysis kernels import this module without needing torch

    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return f"cpu:{platform.processor() or platform.machine()} x{torch.get_num_threads()} threads"


def manifest(device, seed: int, **extra) -> dict:
    """Run manifest: commit, package versions, device, seed, start time (UTC, ISO 8601)."""
    return {
        "commit": git_commit(),
        "packages": package_versions(),
        "device": device_description(device),
        "seed": seed,
        "start_time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "host_platform": platform.platform(),
        **extra,
    }


def is_paper_scale(data: str) -> bool:
    """True when every dataset named in ``data`` (comma- or plus-separated) is a full paper dataset."""
    names = [d for d in data.replace("+", ",").split(",") if d]
    return bool(names) and all(d in PAPER_DATASETS for d in names)


def label(profile: str, data: str, seeds, commit: str | None = None) -> str:
    """One-line provenance label for a table or figure: profile, data, seeds, commit.

    Results on anything but the full CIFAR-10, CIFAR-100 or Tiny-ImageNet data are marked
    CPU-scale, so they are never read as the paper's numbers.

    Args:
        profile: replication profile or sweep name (smoke | cpu | paper | ...).
        data: dataset names, comma-separated, e.g. ``digits`` or ``cifar10-mini``.
        seeds: iterable of ints, or a count.
        commit: defaults to this checkout's short HEAD.
    """
    seeds_txt = ",".join(str(s) for s in sorted(seeds)) if not isinstance(seeds, int) else f"{seeds} seeds"
    scale = "" if is_paper_scale(data) else " (CPU-scale, not the paper's numbers)"
    return f"profile={profile}{scale} | data={data} | seeds={seeds_txt} | commit={commit or git_commit(short=True)}"
