"""Run training subprocesses N at a time: pinned to a GPU (up to K per GPU), or ``cores / N``
threads each on CPU.

:class:`Pool` is the one launcher behind ``divebatch replicate`` (and so behind ``divebatch sweep
--local``, which is replicate with a one-experiment profile): it starts the next :class:`Task` of a
list only when a slot frees, writes each process's stdout/stderr to the task's log file, polls,
and on Ctrl-C (or SIGTERM turned into KeyboardInterrupt) stops the running processes, which
resume from their checkpoints next time. What a caller reports about a run (progress lines,
state files, metrics) lives in its callbacks.
"""

from __future__ import annotations

import math
import os
import shlex
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional

POLL_S = 0.2  # seconds between polls of the running processes
STOP_TIMEOUT_S = 30  # seconds a process gets to exit after SIGTERM before it is killed
# A launched run is never a wandb agent's run, and never part of a pytest test of ours.
DROP_ENV = ("PYTEST_CURRENT_TEST", "WANDB_SWEEP_ID", "WANDB_RUN_ID", "WANDB_SWEEP_PARAM_PATH")
RUNS_PER_GPU_ENV = "DIVEBATCH_RUNS_PER_GPU"  # told to each training: how many runs share its GPU at most


def gpu_ids() -> list[str]:
    """Visible GPUs: ``CUDA_VISIBLE_DEVICES`` when set (empty means none), else torch's count."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [g.strip() for g in visible.split(",") if g.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def default_jobs(gpus: list[str], cores: int, runs_per_gpu: int = 1) -> int:
    """``runs_per_gpu`` jobs per GPU; on CPU one single-threaded job per core, at most 8 (small
    CPU-scale models use several processes better than several threads)."""
    return len(gpus) * runs_per_gpu if gpus else max(1, min(cores, 8))


def resolve_jobs(jobs: int | None, runs_per_gpu: int | None, gpus: list[str], cores: int) -> tuple[int, int | None]:
    """Processes at once and the cap of trainings per GPU, from ``--jobs`` and ``--runs-per-gpu``.

    With GPUs: the cap is ``runs_per_gpu`` when given, else ``ceil(jobs / GPUs)`` when ``jobs`` is
    given (round-robin sharing), else 1; ``jobs`` defaults to GPUs x cap and never exceeds it.
    Without GPUs: ``jobs`` defaults to :func:`default_jobs` and there is no cap (None).

    Returns:
        ``(jobs, cap)``: jobs >= 1; cap >= 1, or None on CPU.
    Raises:
        ValueError: ``jobs`` or ``runs_per_gpu`` below 1 (names the option and the value).
    """
    for name, value in (("--jobs", jobs), ("--runs-per-gpu", runs_per_gpu)):
        if value is not None and value < 1:
            raise ValueError(f"invalid {name} {value}; allowed: an integer >= 1")
    if not gpus:
        return jobs or default_jobs(gpus, cores), None
    cap = runs_per_gpu or (math.ceil(jobs / len(gpus)) if jobs else 1)
    return min(jobs or len(gpus) * cap, len(gpus) * cap), cap


def planned_device(i: int, gpus: list[str], jobs: int, cap: int | None = None) -> str:
    """Where the ``i``-th task (0-based, in start order) of a :class:`Pool` runs, for a dry run.

    The first ``jobs`` tasks start at once and take the GPUs round-robin (the least busy GPU, the
    first on ties, which is what :class:`Pool` does); a later task takes the first GPU slot that
    frees, which depends on run times, so it is shown as queued.

    Returns:
        e.g. ``GPU 1 (run 2 of 2 on it)``, ``GPU 0 or 1 (queued: first free slot)``,
        ``CPU (2 threads)``, ``CPU (queued)``.
    """
    if not gpus:
        threads = os.environ.get("OMP_NUM_THREADS") or str(max(1, (os.cpu_count() or 1) // jobs))
        return f"CPU ({threads} thread(s))" if i < jobs else "CPU (queued)"
    if i < jobs:
        per = cap or math.ceil(jobs / len(gpus))
        return f"GPU {gpus[i % len(gpus)]} (run {i // len(gpus) + 1} of {per} on it)"
    return f"GPU {' or '.join(gpus)} (queued: first free slot)"


def tail(path: Path, n: int = 10, indent: str = "      ") -> str:
    """The last ``n`` lines of a log file, indented, for a failure message."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return indent + "(no log)"
    return "\n".join(indent + line for line in lines[-n:])


@dataclass
class Task:
    """One subprocess. ``needs_gpu=False`` (e.g. the synthetic check): on a GPU machine it runs on
    no GPU beside the trainings without taking a slot. The fields after it are set by :class:`Pool`."""

    name: str
    argv: list[str]
    log: Path  # stdout and stderr, appended
    needs_gpu: bool = True
    proc: Optional[subprocess.Popen] = None
    log_file: object = None
    started: float = 0.0  # time.perf_counter() at start
    seconds: float = 0.0  # wall-clock seconds from start to exit
    gpu: Optional[str] = None  # its CUDA_VISIBLE_DEVICES, None on CPU
    returncode: Optional[int] = None


class Pool:
    """Runs tasks as subprocesses, ``jobs`` at once.

    With GPUs each task that needs one is pinned to the least busy GPU (``CUDA_VISIBLE_DEVICES``),
    at most ``runs_per_gpu`` tasks per GPU (default ``ceil(jobs / GPUs)``: ``jobs`` above the GPU
    count shares them round-robin); ``jobs`` is lowered to GPUs x ``runs_per_gpu`` when above it.
    Each task is told the cap in ``DIVEBATCH_RUNS_PER_GPU`` (the trainer's out-of-memory message
    names it). Every process gets ``OMP_NUM_THREADS = MKL_NUM_THREADS = max(1, cores // jobs)``
    unless ``OMP_NUM_THREADS`` is set. A task that fails (any exit code, CUDA out of memory
    included) only ends itself: the others go on and the next task takes its slot.

    Args:
        jobs: processes at once (>= 1).
        gpus: GPU ids (default :func:`gpu_ids`); empty: CPU only.
        log: where the interrupt message goes; prefix: its prefix, e.g. ``[sweep]``.
        runs_per_gpu: the most tasks on one GPU at once (>= 1); None: ``ceil(jobs / GPUs)``.
    """

    def __init__(
        self,
        jobs: int,
        gpus: list[str] | None = None,
        log: Callable = print,
        prefix: str = "",
        runs_per_gpu: int | None = None,
    ):
        self.log, self.prefix = log, prefix
        self.gpus = gpu_ids() if gpus is None else gpus
        self.jobs, self.per_gpu = resolve_jobs(jobs, runs_per_gpu, self.gpus, os.cpu_count() or 1)
        jobs = self.jobs
        threads = os.environ.get("OMP_NUM_THREADS") or str(max(1, (os.cpu_count() or 1) // jobs))
        self.env = {k: v for k, v in os.environ.items() if k not in DROP_ENV}
        self.env.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads, PYTHONUNBUFFERED="1")
        if self.gpus:
            self.env[RUNS_PER_GPU_ENV] = str(self.per_gpu)
        self.active: list[Task] = []

    def _slots_used(self) -> int:
        return sum(1 for t in self.active if t.needs_gpu or not self.gpus)

    def _start(self, task: Task) -> None:
        env = dict(self.env)
        if self.gpus:
            if task.needs_gpu:
                load = {g: sum(t.gpu == g for t in self.active) for g in self.gpus}
                task.gpu = min(self.gpus, key=lambda g: load[g])  # the least busy GPU, first on ties
                assert load[task.gpu] < self.per_gpu  # jobs <= GPUs x cap: a started task always has a slot
            env["CUDA_VISIBLE_DEVICES"] = task.gpu or ""
        task.log.parent.mkdir(parents=True, exist_ok=True)
        task.log_file = open(task.log, "a")
        task.log_file.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} $ {shlex.join(task.argv)}\n")
        task.log_file.flush()
        task.proc = subprocess.Popen(task.argv, stdout=task.log_file, stderr=subprocess.STDOUT, env=env)
        task.started = time.perf_counter()
        self.active.append(task)

    def run(
        self,
        tasks: Iterable[Task],
        on_start: Callable[[Task], None] = lambda t: None,
        on_finish: Callable[[Task], None] = lambda t: None,
        on_poll: Callable[[list[Task]], None] = lambda active: None,
    ) -> None:
        """Run every task of ``tasks``, starting the next one only when a slot is free.
        ``on_start(task)`` follows each start, ``on_finish(task)`` each exit (``returncode`` and
        ``seconds`` set), ``on_poll(active)`` each poll.

        Raises:
            KeyboardInterrupt: after stopping the running processes.
        """
        source = iter(tasks)
        try:
            while True:
                while self._slots_used() < self.jobs and (task := next(source, None)) is not None:
                    self._start(task)
                    on_start(task)
                if not self.active:
                    return
                time.sleep(POLL_S)
                on_poll(self.active)
                for t in [t for t in self.active if t.proc.poll() is not None]:
                    t.log_file.close()
                    t.returncode, t.seconds = t.proc.returncode, time.perf_counter() - t.started
                    self.active.remove(t)
                    on_finish(t)
        except KeyboardInterrupt:
            self.log(
                f"{self.prefix} interrupted: stopping {len(self.active)} process(es); rerun the same command "
                f"to resume (runs restart from their last finished epoch)"
            )
            for t in self.active:
                if t.proc.poll() is None:
                    t.proc.terminate()  # SIGINT may be ignored (background jobs); checkpoints are atomic
            for t in self.active:
                try:
                    t.proc.wait(timeout=STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    t.proc.kill()
                t.log_file.close()
            raise
