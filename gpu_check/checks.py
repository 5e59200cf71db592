"""How each kind of check (:data:`gpu_check.table.KINDS`) runs its commands and what it reads back.

Every command runs as a child process from the repository root with the check's environment, its
output in ``<work>/logs/<name>.log``, killed at its time cap or at the budget's end
(:meth:`Context.run`). A check returns its result (a dict for the results file), raises
:class:`Skip` when it cannot run here, or :class:`CheckFailed` with what it measured.
"""

from __future__ import annotations

import csv
import shlex
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from gpu_check.cifar10 import default_cifar10_source, prepare_cifar10
from gpu_check.table import Check

REPO = Path(__file__).resolve().parents[1]
# the columns of a training run's metrics.csv that the results file keeps per epoch
EPOCH_COLUMNS = (
    "epoch",
    "batch_size",
    "epoch_time_s",
    "eval_time_s",
    "val_acc",
    "train_loss",
    "grad_diversity",
    "peak_memory_mb",
)


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


class CheckFailed(RuntimeError):
    """A check ran and found a problem; ``result`` keeps what it measured."""

    def __init__(self, message: str, result: dict):
        super().__init__(message)
        self.result = result


def expand(command: str, data: list[str] = (), **values) -> list[str]:
    """A command of :data:`gpu_check.table.CHECKS` as an argv after ``python``: ``{data}`` becomes the
    data overrides, ``{out}``, ``{seed}`` (...) their values."""
    argv = []
    for token in shlex.split(command):
        argv += list(data) if token == "{data}" else [token.format(**values)]
    return argv


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


# ----------------------------------------------------------------------------- pytest: the tests marked gpu


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


def run_pytest(ctx: Context, check: Check) -> dict:
    files = gpu_test_files()
    if not files:
        raise Skip("no test file has a test marked gpu")
    xml = ctx.work / f"{check.name}.xml"
    (command,) = check.commands(ctx.cpu_check)
    argv = [sys.executable, *expand(command), f"--junitxml={xml}", *map(str, files)]
    code, seconds, log = ctx.run(check.name, argv, limit=check.cap(ctx.cpu_check))
    if not xml.is_file():
        raise RuntimeError(f"pytest wrote no results (exit {code}); log {log}:\n{_tail(log)}")
    result = parse_junit(xml)
    result["files"] = [str(f.relative_to(REPO)) for f in files]
    if result["failed"] or code not in (0, 5):
        raise CheckFailed(f"{result['failed']} gpu test(s) failed (exit {code}); log {log}", result)
    if not ctx.cpu_check and result["passed"] == 0:
        raise CheckFailed("every test marked gpu was skipped on the GPU machine", result)
    return result


# ----------------------------------------------------------------------------- train: real-data CIFAR-10 runs


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
    div = runs.get("divebatch", [])
    measured = [r for r in div if r.get("grad_diversity") is not None]
    plain = [r for r in div[1:] if r.get("grad_diversity") is None]
    return {
        "epoch_time_s": {str(b): t for b, t in times.items()},
        "eval_time_s": sum(evals) / len(evals) if evals else None,
        "measured_epoch_ratio": measured[-1]["epoch_time_s"] / plain[-1]["epoch_time_s"]
        if measured and plain
        else None,
        "methods": _per_method(times, measured, plain),
    }


def _per_method(times: dict[int, float], measured: list[dict], plain: list[dict]) -> dict:
    """Epoch times per method of the comparison, from the steady times by batch size (seconds)."""
    sizes = sorted(times)
    if not sizes:
        return {}
    return {
        "sgd_small": {"batch_size": sizes[0], "epoch_time_s": times[sizes[0]]},
        "sgd_large": {"batch_size": sizes[-1], "epoch_time_s": times[sizes[-1]]},
        "adabatch": {"epoch_time_s_by_batch_size": {str(b): times[b] for b in sizes}},
        "divebatch": {
            "batch_size": sizes[0],
            "plain_epoch_time_s": plain[-1]["epoch_time_s"] if plain else None,
            "measured_epoch_time_s": measured[-1]["epoch_time_s"] if measured else None,
        },
    }


def run_train(ctx: Context, check: Check) -> dict:
    """Each command is one short training run (named by its config file's stem); their epoch times."""
    from divebatch.rundir import read_metrics  # the runs need divebatch anyway

    data = _require_data(ctx)
    mode = check.name.split("_", 1)[1]  # cifar10_faithful -> faithful
    out = {
        "data": data["description"],
        "n_train": data["n_train"],
        "n_test": data["n_test"],
        "data_seconds": data["seconds"],
        "settings": mode,
        "runs": {},
    }
    if ctx.cpu_check and check.cpu_note:
        out["note"] = check.cpu_note
    runs, failures = {}, []
    for command in check.commands(ctx.cpu_check):
        name = Path(shlex.split(command)[3]).stem  # -m divebatch train <config> ...
        run_dir = ctx.work / "cifar10" / mode / name
        argv = [sys.executable, *expand(command, data["overrides"], out=run_dir)]
        code, seconds, log = ctx.run(f"{check.name}_{name}", argv, limit=check.cap(ctx.cpu_check))
        runs[name] = rows = read_metrics(run_dir)
        out["runs"][name] = {
            "command": shlex.join(argv[2:]),
            "returncode": code,
            "seconds": round(seconds, 1),
            "epochs": [{k: r[k] for k in EPOCH_COLUMNS} for r in rows],
        }
        if code != 0:
            failures.append(f"{name} exited {code} (log {log}):\n{_tail(log)}")
    out.update(epoch_times(runs))
    if failures:
        raise CheckFailed("; ".join(failures), out)
    return out


# ----------------------------------------------------------------------------- runs_per_gpu: K runs at once


def _override(argv: list[str], key: str) -> str:
    return next(a.split("=", 1)[1] for a in argv if a.startswith(key + "="))


def run_k_per_gpu(ctx: Context, check: Check) -> dict:
    """Aggregate throughput of K identical runs at once on the GPU against one run: the sum over
    the runs of training samples per second in their second and third epochs (the first is warm-up;
    the K processes start together, so these epochs overlap), divided by one run's."""
    data = _require_data(ctx)
    (command,) = check.commands(ctx.cpu_check)
    argv = expand(command, data["overrides"], seed=1, out="")
    out = {
        "config": argv[3],
        "train_subset": min(int(_override(argv, "data.train_subset")), data["n_train"]),
        "epochs": int(_override(argv, "epochs")),
        "by_k": {},
    }
    for k in [1, *[k for k in ctx.runs_per_gpu if k != 1]]:
        if ctx.remaining() < 20:
            out["by_k"][str(k)] = {"skipped": "time budget"}
            continue
        out["by_k"][str(k)] = _k_runs(ctx, command, data, k)
    base = out["by_k"].get("1", {}).get("samples_per_s")
    out["speedup"] = {key: r["samples_per_s"] / base for key, r in out["by_k"].items() if base and "samples_per_s" in r}
    bad = [key for key, r in out["by_k"].items() if "failed" in r]
    if bad:
        raise CheckFailed(
            f"K = {', '.join(bad)}: a run failed: " + "; ".join(sum((out["by_k"][b]["failed"] for b in bad), [])), out
        )
    return out


def _k_runs(ctx: Context, command: str, data: dict, k: int) -> dict:
    """K runs of ``command`` at once through the launcher of ``divebatch replicate --runs-per-gpu``."""
    from divebatch.orchestration import launch
    from divebatch.rundir import read_metrics

    tasks, dirs = [], []
    for i in range(k):
        run_dir = ctx.work / "runs_per_gpu" / f"k{k}" / f"run{i}"
        dirs.append(run_dir)
        argv = [sys.executable, *expand(command, data["overrides"], seed=i + 1, out=run_dir)]
        tasks.append(launch.Task(f"k{k}-run{i}", argv, ctx.work / "logs" / f"runs_per_gpu_k{k}_run{i}.log"))
    pool = launch.Pool(
        jobs=k, gpus=[ctx.gpu] if ctx.gpu is not None else [], log=ctx.log, prefix="[gpu-check]", runs_per_gpu=k
    )
    skip = ("CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
    pool.env.update({key: v for key, v in ctx.env.items() if key not in skip})
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
    return record


# ----------------------------------------------------------------------------- bench: the benchmarks


def run_bench(ctx: Context, check: Check) -> dict:
    """The benchmark script of the check with ``--csv``; its rows (numbers parsed) into the result."""
    (command,) = check.commands(ctx.cpu_check)
    script, *args = expand(command)
    out_csv = ctx.work / f"{check.name}.csv"
    out_csv.unlink(missing_ok=True)
    argv = [sys.executable, str(REPO / script), *args, "--csv", str(out_csv)]
    code, seconds, log = ctx.run(check.name, argv, limit=check.cap(ctx.cpu_check))
    result = {"command": shlex.join([script, *args]), "returncode": code, "seconds": round(seconds, 1)}
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


# kind -> how a check of that kind runs (gpu_check.table.KINDS)
RUNNERS: dict[str, Callable[[Context, Check], dict]] = {
    "pytest": run_pytest,
    "train": run_train,
    "runs_per_gpu": run_k_per_gpu,
    "bench": run_bench,
}
