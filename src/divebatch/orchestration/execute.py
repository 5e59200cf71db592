"""How ``divebatch replicate`` carries out its plan: the trainings N at once with progress in
epochs, one invocation per runs directory (a lock), the synthetic check's reuse stamp, the steps
run in the foreground (the report), and the final summary.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from tqdm.auto import tqdm

from divebatch.orchestration import launch
from divebatch.orchestration.plan import Outcome, Task, sources_finished, waves
from divebatch.orchestration.profiles import ProfileError
from divebatch.provenance import VERDICT_FILE
from divebatch.rundir import epochs_done, read_summary

SYNTHETIC_STAMP = "synthetic_done.json"  # in the runs dir: which config/commit the synthetic outputs are from


def fmt_s(seconds: float) -> str:
    """``"2 min 07 s"`` or ``"42 s"`` (rounded to whole seconds)."""
    seconds = int(round(seconds))
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"


class _Counter:
    """The part of tqdm's interface :func:`train_tasks` uses, without drawing (output that is not a terminal)."""

    def __init__(self, total: int):
        self.n, self.total = 0, total

    def update(self, k: int) -> None:
        self.n += k

    def refresh(self) -> None:
        pass

    set_postfix_str = close = lambda self, *a, **k: None


def _count_epochs(bar, tasks: list[Task], ended: bool) -> None:
    """Add the epochs each task's run has trained since the last count to ``bar``. A run that has
    not ended counts at most all but its last epoch: a run is done, and its epochs with it, when its
    process has ended (so "12/12 runs done" and "E/E epochs" come together)."""
    for t in tasks:
        if t.run is not None and t.total_epochs:
            cap = t.total_epochs if ended else t.total_epochs - 1
            now = min(cap, epochs_done(t.run.out_dir) - (t.run.epochs - t.total_epochs))
            if now > t.counted:
                bar.update(now - t.counted)
                t.counted = now


def _finished_line(t: Task, summary: dict | None, progress: str) -> str:
    detail = ""
    if summary:
        detail = (
            f": final val_acc {summary['final_val_acc']:.2f}% (best {summary['best_val_acc']:.2f}%), "
            f"{summary['epochs_completed']} epochs"
        )
        if summary.get("diverged"):  # recorded, reported as diverged; the matrix goes on
            detail = f": DIVERGED (training loss non-finite in epoch {summary['diverged_epoch'] + 1}); log: {t.log}"
    return f"[replicate] finished {t.name} in {fmt_s(t.seconds)}{detail}{progress}"


def train_tasks(
    tasks: list[Task],
    jobs: int,
    gpus: list[str],
    desc: str,
    record: Callable[[Task], None],
    log=tqdm.write,
    runs_per_gpu: int | None = None,
) -> None:
    """Run the tasks with :class:`divebatch.orchestration.launch.Pool` (GPU pinning, threads, logs), with progress
    in epochs: a bar on a terminal; in a log file the finished-run lines carry the progress and an
    ETA from the epochs trained so far in this invocation. A run counts as successful only when its
    ``summary.json`` says finished; ``record(task)`` gets every task when it ends (``returncode``
    0: success). ``runs_per_gpu``: the most trainings per GPU at once (:class:`divebatch.orchestration.launch.Pool`).

    Raises:
        KeyboardInterrupt: after stopping the running processes (their runs resume next time).
    """
    n_runs, t0, done = sum(1 for t in tasks if t.run), time.perf_counter(), []
    bar = _Counter(sum(t.total_epochs for t in tasks))
    if sys.stderr.isatty():
        bar = tqdm(total=bar.total, unit="epoch", desc=desc, file=sys.stderr, dynamic_ncols=True)

    def on_poll(active: list[Task]) -> None:
        _count_epochs(bar, active, ended=False)
        bar.set_postfix_str(f"runs {len(done)}/{n_runs} done, {len(active)} running", refresh=False)

    def on_start(t: Task) -> None:
        log(f"[replicate] {t.verb:<8} {t.name}{f' on GPU {t.gpu}' if t.gpu is not None else ''} (log: {t.log})")

    def on_finish(t: Task) -> None:
        _count_epochs(bar, [t], ended=True)
        if t.total_epochs > t.counted:  # a failed run's remaining epochs leave the ETA
            bar.total -= t.total_epochs - t.counted
            bar.refresh()
        exit_code, summary = t.returncode, read_summary(t.run.out_dir) if t.run else None
        ok = exit_code == 0 and (t.run is None or bool(summary and summary.get("finished")))
        t.returncode = 0 if ok else (exit_code or 1)
        done.extend([t] if t.run else [])
        if ok:
            progress = f"; {len(done)}/{n_runs} runs done, {bar.n}/{bar.total} epochs" if n_runs else ""
            if n_runs and 0 < bar.n < bar.total:
                progress += f", ETA {fmt_s((time.perf_counter() - t0) * (bar.total - bar.n) / bar.n)}"
            log(_finished_line(t, summary, progress))
        else:
            log(
                f"[replicate] FAILED   {t.name} (exit {exit_code}) after {fmt_s(t.seconds)}; "
                f"log: {t.log}\n    last lines:\n{launch.tail(t.log)}"
            )
        record(t)

    try:
        launch.Pool(jobs, gpus, log, "[replicate]", runs_per_gpu).run(tasks, on_start, on_finish, on_poll)
    finally:
        bar.close()


def train_waves(
    tasks: list[Task],
    jobs: int,
    gpus: list[str],
    runs_per_gpu: int | None,
    desc: str,
    outcome: Outcome,
    runs_dir: Path,
    stamp: dict | None,
    log=print,
) -> None:
    """:func:`train_tasks` in the two waves of :func:`divebatch.orchestration.plan.waves`: the runs
    that replay another run start once it has finished (those whose source failed are filed as
    failed, not started); every ended task is filed into ``outcome`` by :func:`record`.

    Raises:
        KeyboardInterrupt: after stopping the running processes (their runs resume next time).
    """
    for wave, waiting in enumerate(waves(tasks)):
        if wave:
            waiting = sources_finished(waiting, outcome, log)
        if waiting:
            train_tasks(
                waiting, jobs, gpus, desc, lambda t: record(t, outcome, runs_dir, stamp), runs_per_gpu=runs_per_gpu
            )


@contextlib.contextmanager
def runs_lock(runs_dir: Path):
    """Hold ``<runs_dir>/.replicate.lock`` (flock) while training, so that two invocations never
    train the same run directory at once; the lock is released when the process ends, however.

    Raises:
        ProfileError: another process holds it (names its pid).
    """
    runs_dir.mkdir(parents=True, exist_ok=True)
    f = open(runs_dir / ".replicate.lock", "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "another process"
        f.close()
        raise ProfileError(
            f"runs directory {runs_dir} is in use by another divebatch replicate ({holder}); "
            f"allowed: one invocation per runs directory at a time (wait for it, or stop it)"
        ) from None
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()}\n")
    f.flush()
    try:
        yield
    finally:
        fcntl.flock(f, fcntl.LOCK_UN)
        f.close()


def stream(argv: list[str], log=print) -> int:
    """Run a step in the foreground, its output on our stdout/stderr; returns its exit status."""
    log(f"[replicate] $ {shlex.join(argv[2:] if argv[1:2] == ['-m'] else argv)}")
    sys.stdout.flush()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("PYTEST_CURRENT_TEST", None)
    return subprocess.call(argv, env=env)


# ----------------------------------------------------------------------------- synthetic check


def synthetic_stamp(config: str, profile: str) -> dict:
    """What the synthetic outputs must come from to be reused: config content, profile, commit."""
    from divebatch.provenance import git_commit

    digest = hashlib.sha256(Path(config).read_bytes()).hexdigest()
    return {"config": str(config), "config_sha256": digest, "profile": profile, "commit": git_commit()}


def synthetic_done(runs_dir: Path, out: Path, stamp: dict) -> bool:
    """The synthetic outputs exist and their stamp matches ``stamp`` (same config, profile, commit)."""
    verdict = out / "paper_tables" / stamp["profile"] / VERDICT_FILE
    try:
        old = json.loads((runs_dir / SYNTHETIC_STAMP).read_text())
    except (OSError, ValueError):
        return False
    return verdict.is_file() and all(old.get(k) == v for k, v in stamp.items())


def synthetic_committed(out: Path, stamp: dict) -> str | None:
    """The commit that made the synthetic outputs under ``out``, when they are what the working
    tree's code computes: the commit their verdict names (``commit``) has the same ``src/``,
    ``uv.lock`` and check config as the working tree (``git diff``, no untracked file under
    ``src/``). Such outputs are reused like committed runs (same CPU and library stack: the same
    numbers), so a fresh clone does not rerun the check and rewrite them with another commit.

    Returns:
        That commit, or None (no verdict, another profile, a dirty or unknown commit, a change
        since, or no git).
    """
    try:
        verdict = json.loads((out / "paper_tables" / stamp["profile"] / VERDICT_FILE).read_text())
    except (OSError, ValueError):
        return None
    commit = str(verdict.get("commit") or "")
    if verdict.get("profile") != stamp["profile"] or not commit or "dirty" in commit or commit == "unknown":
        return None
    git = lambda *a: subprocess.run(["git", *a], capture_output=True, text=True, timeout=30)
    try:
        same = git("diff", "--quiet", commit, "--", "src", "uv.lock", stamp["config"]).returncode == 0
        untracked = git("ls-files", "--others", "--exclude-standard", "--", "src").stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit if same and not untracked else None


# ----------------------------------------------------------------------------- outcome


def record(task: Task, outcome: Outcome, runs_dir: Path, stamp: dict | None) -> None:
    """File a finished task under trained/failed; a successful synthetic check leaves its stamp."""
    if task.run is None:  # the synthetic check
        if task.returncode == 0:
            (runs_dir / SYNTHETIC_STAMP).write_text(json.dumps({**stamp, "seconds": round(task.seconds, 1)}, indent=2))
            outcome.steps.append(f"synthetic check: ran in {fmt_s(task.seconds)}")
        else:
            outcome.failed.append((task.name, str(task.log)))
            outcome.steps.append(f"synthetic check: FAILED (log: {task.log})")
    elif task.returncode == 0:
        outcome.trained.append(task.name)
    else:
        outcome.failed.append((task.name, str(task.log)))


def step(outcome: Outcome, name: str, rc: int) -> None:
    """File a foreground step's exit status ``rc`` (0: ok) under ``outcome``."""
    outcome.steps.append(f"{name}: {'ok' if rc == 0 else f'FAILED (exit {rc})'}")
    if rc != 0:
        outcome.failed.append((name, "its output above"))


def children_cpu_s() -> float:
    """CPU seconds (user + system) of the finished child processes so far."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def summary(profile: str, o: Outcome, runs_dir: Path, wall: float, cpu: float, log) -> None:
    """The final lines: time (wall and the processes' CPU seconds), counts, steps, failures, outputs."""
    lines = [
        f"[replicate] profile {profile} done in {fmt_s(wall)} (processes used {fmt_s(cpu)} of CPU time): "
        f"{len(o.trained)} run(s) trained, {len(o.skipped)} skipped (finished already), {len(o.failed)} failed"
    ]
    lines += [f"  {s}" for s in o.steps]
    for name, where in o.failed:
        lines.append(f"  FAILED {name}: {where}")
    lines.append(f"  runs: {runs_dir}/")
    for d in o.outputs:
        files = sorted(p.relative_to(d).as_posix() for p in d.rglob("*") if p.is_file())
        lines.append(f"  {d}/ ({len(files)} files): {', '.join(files)}")
    readme = next((d / "README.md" for d in o.outputs if (d / "README.md").is_file()), None)
    if readme:
        lines.append(f"  start reading at {readme}")
    log("\n".join(lines))
