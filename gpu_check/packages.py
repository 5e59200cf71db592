"""Which packages import on this machine, and carried wheels for the ones it lacks.

The check runs with the machine's own python and packages (a GPU image's torch and torchvision, maybe
older than the pins in ``uv.lock``); what it lacks comes as wheels (``--wheels DIR``), installed into
the cache without any registry and without resolving dependencies, never into the system.
"""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
from pathlib import Path
from typing import Callable

from divebatch.orchestration.gpu_results import GpuCheckError

REPO = Path(__file__).resolve().parents[1]

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
