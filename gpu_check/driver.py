"""The acceptance check's driver: the environment of the children, the budget, the skip reasons, the
results file (written after every check) and the command line (``python -m gpu_check``)."""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional

from divebatch.orchestration.gpu_results import SCHEMA, GpuCheckError, validate_results
from gpu_check.checks import RUNNERS, CheckFailed, Context, Skip
from gpu_check.packages import check_packages, install_wheels, missing
from gpu_check.table import CHECKS, NAMES, Check

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = Path("runs") / "gpu_check" / "results.json"  # relative to the working directory, as every runs/ path
DEFAULT_BUDGET_MIN = 8.0
PROG = "bash replicate/gpu_check.sh"


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


def _write(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


def _environment(cache: Path, wheels: Optional[Path], log) -> tuple[dict, list[str]]:
    """The children's environment (``src`` and carried wheels on ``PYTHONPATH``, no wandb) and the
    wheels installed (also put on this process's ``sys.path``)."""
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
    return env, carried


def _device(cpu_check: bool, gpu: Optional[str], env: dict, torch_ok: bool) -> tuple[Optional[str], bool]:
    """The GPU the children see (``CUDA_VISIBLE_DEVICES`` in ``env``; None on the CPU) and whether CUDA works."""
    if cpu_check:
        env.update(CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS=env.get("OMP_NUM_THREADS", "1"))
        return None, False
    cuda = False
    if torch_ok:
        import torch

        cuda = torch.cuda.is_available()
    visible = [g for g in os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",") if g.strip()]
    gpu = gpu if gpu is not None else (visible[0] if visible else None)
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpu
    return gpu, cuda


def _skip_reason(check: Check, ctx: Context, packages: dict, only, cuda: bool, budget_s: float) -> Optional[str]:
    """Why ``check`` does not run (None: it runs)."""
    lacking = missing(packages, check.needs)
    if only and check.name not in only:
        return "not selected (--only)"
    if lacking:
        return f"needs {', '.join(lacking)} (not importable here; carry the wheels: --wheels DIR)"
    if not ctx.cpu_check and not cuda:
        return "no CUDA device (torch.cuda.is_available() is False); --cpu-check runs the CPU version"
    if ctx.remaining() < (check.min_s if not ctx.cpu_check else 1):
        return (
            f"time budget: {max(0, ctx.remaining()):.0f} s of {budget_s:.0f} s left, the check needs at "
            f"least {check.min_s:.0f} s (rerun it alone: --only {check.name})"
        )
    return None


def _run_one(check: Check, ctx: Context, reason: Optional[str], log) -> dict:
    """The check's record for the results file: run it unless ``reason`` says why not."""
    record = {"status": "skipped", "reason": reason, "seconds": 0.0, "what": check.what, "result": None}
    if reason is not None:
        return record
    log(f"[gpu-check] {check.name}: {check.what}")
    t0 = time.perf_counter()
    try:
        record.update(status="ok", result=RUNNERS[check.kind](ctx, check))
    except Skip as err:
        record.update(status="skipped", reason=str(err))
    except CheckFailed as err:
        record.update(status="failed", reason=str(err), result=err.result)
    except Exception as err:  # one check's failure never stops the others
        record.update(status="failed", reason=f"{type(err).__name__}: {err}")
    record["seconds"] = round(time.perf_counter() - t0, 1)
    return record


def _add(results: dict, check: Check, record: dict) -> None:
    """``record`` into the results, with what it skipped (the check, or its skipped gpu tests)."""
    results["checks"][check.name] = record
    if record["status"] == "skipped":
        results["skipped"].append({"item": f"check {check.name}", "reason": record["reason"]})
    if check.kind == "pytest" and record["result"]:
        for t in record["result"]["tests"]:
            if t["outcome"] == "skipped":
                results["skipped"].append({"item": f"test {t['name']}", "reason": t["message"] or "skipped"})


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
    """Run the acceptance checks of :data:`gpu_check.table.CHECKS` and write the results file (after every check).

    Args:
        cpu_check: tiny sizes on the CPU (what the tests run); else one GPU, GPU sizes.
        out: results file (JSON; overwritten).
        budget_s: the whole command's time budget in seconds; checks that would not fit are skipped.
        only: names of the checks to run (default: all); the others are reported as skipped.
        cifar10: data source (:func:`gpu_check.cifar10.prepare_cifar10`); default
            :func:`gpu_check.cifar10.default_cifar10_source`.
        cache: decoded data and installed wheels (default ``$XDG_CACHE_HOME/divebatch`` or
            ``~/.cache/divebatch``); work: logs and run directories (default: a new temporary folder).
        wheels: a folder of carried ``.whl`` files to install first (:func:`gpu_check.packages.install_wheels`).
        gpu: the GPU to use (a ``CUDA_VISIBLE_DEVICES`` id; default the first visible).
        runs_per_gpu: the K values compared with one run per GPU.
        importer: how packages are imported (tests replace it to simulate a missing package).
    Returns:
        The results (also written to ``out``); see :func:`divebatch.orchestration.gpu_results.validate_results`.
    Raises:
        GpuCheckError: an unknown check name in ``only``, a bad K, or unusable ``wheels``.
    """
    t_start, started = time.monotonic(), dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    unknown = sorted(set(only or ()) - set(NAMES))
    if unknown:
        raise GpuCheckError(f"invalid --only {','.join(unknown)}; allowed: {', '.join(NAMES)}")
    if any(k < 1 for k in runs_per_gpu):
        raise GpuCheckError(f"invalid --runs-per-gpu {','.join(map(str, runs_per_gpu))}; allowed: integers >= 1")
    cache = Path(cache or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "divebatch")
    work = Path(work) if work else Path(tempfile.mkdtemp(prefix="divebatch-gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    env, carried = _environment(cache, wheels, log)
    packages = check_packages(importer=importer)
    gpu, cuda = _device(cpu_check, gpu, env, packages["torch"]["version"] is not None)
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
        "skipped": [
            {"item": f"package {info['distribution']}", "reason": f"not importable ({info['error']})"}
            for info in packages.values()
            if info["version"] is None
        ],
    }
    cifar10 = Path(cifar10) if cifar10 else None
    ctx = Context(cpu_check, work, cache, gpu, env, t_start + budget_s, cifar10, list(runs_per_gpu), log)
    for check in CHECKS:
        record = _run_one(check, ctx, _skip_reason(check, ctx, packages, only, cuda, budget_s), log)
        ctx.results[check.name] = record
        _add(results, check, record)
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


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="GPU acceptance check: the gpu tests, real-data CIFAR-10 epoch times per method, the throughput "
        "of K runs per GPU and the benchmarks' GPU sizes, on one GPU within --budget-minutes, into one "
        "results file. Then: divebatch gpu-hours RESULTS.json --write. See docs/replicate.md.",
    )
    p.add_argument("--cpu-check", action="store_true", help="the same checks at tiny sizes on the CPU (tests)")
    p.add_argument("--out", default=str(DEFAULT_OUT), help=f"results file (default: {DEFAULT_OUT})")
    p.add_argument("--budget-minutes", type=float, default=DEFAULT_BUDGET_MIN, help="time budget (default: 8)")
    p.add_argument("--only", default=None, help="comma list of checks to run (default: all): " + ", ".join(NAMES))
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
    return p


def cli(argv: list[str] | None = None) -> int:
    """``bash replicate/gpu_check.sh [--cpu-check] [--out FILE] [...]``; exit status 0 when no check failed
    (skipped ones are reported, not failures), 1 when one failed, 2 on bad arguments."""
    a = parser().parse_args(argv)
    try:
        ks = tuple(int(k) for k in a.runs_per_gpu.split(","))
    except ValueError:
        print(
            f"{PROG}: error: invalid --runs-per-gpu {a.runs_per_gpu!r}; allowed: a comma list of integers >= 1",
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
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    print(summary(results))
    print(
        f"[gpu-check] results: {a.out}  (logs: {results['work_dir']}/logs)\n"
        f"[gpu-check] next: divebatch gpu-hours {a.out} --write   (fills the table in docs/replicate.md)"
    )
    return 1 if any(c["status"] == "failed" for c in results["checks"].values()) else 0
