"""What ``divebatch replicate`` will do before it does it: the checks that stop it before any
training (every run's config, the data, the device), each run's state (new, resume, finished,
busy, conflict) and the tasks to start. ``--dry-run`` runs exactly these and prints what they found.
"""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from omegaconf import DictConfig

from divebatch import rundir
from divebatch.config import ConfigError, config_diffs, load_config
from divebatch.fetch import DataSource, ensure_data
from divebatch.orchestration import launch
from divebatch.orchestration.profiles import Run
from divebatch.rundir import epochs_done, read_summary


@dataclass
class Task(launch.Task):
    """A process of the replication: a training run (``run`` set), or the synthetic check
    (``needs_gpu=False``)."""

    run: Optional[Run] = None
    verb: str = "started"
    total_epochs: int = 0  # epochs this task still has to train (progress bar)
    counted: int = 0  # epochs already added to the bar


@dataclass
class Outcome:
    """What one invocation did (also the exit status: 0 only when everything succeeded)."""

    trained: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (name, log path or reason)
    steps: list[str] = field(default_factory=list)  # synthetic / report outcome lines
    outputs: list[Path] = field(default_factory=list)
    stopped: Optional[str] = None  # stopped before training: why

    @property
    def exit_code(self) -> int:
        return 2 if self.stopped else (1 if self.failed else 0)


# ----------------------------------------------------------------------------- checks before training


def load_configs(runs: list[Run]) -> dict[str, DictConfig]:
    """Each run's resolved config (sets ``run.epochs``); data presence is checked separately.

    Raises:
        ConfigError: naming the run and its config file.
    """
    configs = {}
    for run in runs:
        try:
            configs[run.name] = load_config(run.config, run.overrides, check_data=False)
        except ConfigError as err:
            raise err.where(f"run {run.name} ({run.config})") from None
        run.epochs = int(configs[run.name].epochs)
    return configs


def _no_gpu_why() -> str:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    return f"CUDA_VISIBLE_DEVICES={visible!r}" if visible is not None else "torch.cuda.device_count() = 0"


def check_device(spec: DictConfig, configs: dict[str, DictConfig], gpus: list[str]) -> Optional[str]:
    """Whether the runs can train on this machine's devices.

    Args:
        spec: the profile (its ``needs_gpu``, ``hardware``).
        configs: :func:`load_configs`.
        gpus: the visible GPUs (:func:`divebatch.orchestration.launch.gpu_ids`).
    Returns:
        None when they can; else why not and what to do (one paragraph): a run with
        ``device=cuda[:N]`` without a visible GPU, or a ``needs_gpu`` profile whose runs do not all
        set ``device=cpu`` on a machine without one.
    """
    if gpus:
        return None
    cuda = [name for name, cfg in configs.items() if str(cfg.device).startswith("cuda")]
    if cuda:
        return (
            f"{len(cuda)} run(s) set device=cuda (first: {cuda[0]}), and no CUDA GPU is visible "
            f"({_no_gpu_why()}); allowed: a machine with a CUDA GPU, or --set device=cpu"
        )
    if spec.needs_gpu and any(cfg.device != "cpu" for cfg in configs.values()):
        return (
            f"profile {spec.name} is meant for GPUs (needs_gpu: true; hardware: {spec.hardware or '-'}), and no "
            f"CUDA GPU is visible ({_no_gpu_why()}); allowed: a machine with a CUDA GPU, or --set device=cpu to "
            f"train it on this CPU anyway"
        )
    return None


def check_before_training(
    spec: DictConfig,
    sources: dict[str, DataSource],
    configs: dict[str, DictConfig],
    gpus: list[str],
    *,
    offline: bool,
    download: bool,
    dry_run: bool,
    log: Callable[[str], None] = print,
) -> list[str]:
    """Every check that stops ``divebatch replicate`` before it trains anything: the device
    (:func:`check_device`), then the data, fetched first where the profile allows it, unless the
    device is refused or it is a dry run (which says what it would fetch and downloads nothing).

    Returns:
        One block per problem (empty: training may start). A dry run also logs each finding.
    """
    device = check_device(spec, configs, gpus)
    if dry_run:
        n = f"{len(gpus)} GPU(s): {', '.join(gpus)}" if gpus else f"no GPU ({_no_gpu_why()})"
        log(f"[replicate] check device: {n}: " + ("refused" if device else "ok"))
        for src in sources.values():
            if src.experiments:
                missing = src.missing()
                state = f"missing {len(missing)} file(s)" if missing else "present"
                log(f"[replicate] check data {src.key}: {src.info.title} at {src.path or '-'} ({src.origin}): {state}")
    problems = ensure_data(sources, spec.name, offline, download, log, dry_run=dry_run or device is not None)
    return ([f"- device: {device}"] if device else []) + problems


# ----------------------------------------------------------------------------- run states and tasks


def run_state(run: Run, cfg: DictConfig) -> tuple[str, str]:
    """``(state, detail)``: ``busy`` (a live process is training the folder: its lock holder),
    ``finished`` (skip), ``conflict`` (the folder holds another config), ``resume`` (a checkpoint
    exists) or ``new``."""
    d = run.out_dir
    holder = rundir.lock_holder(d)
    if holder is not None:
        return "busy", f"being trained by another process ({holder})"
    if rundir.is_run_dir(d):
        diffs = config_diffs(rundir.read_config(d), cfg)
        if diffs:
            return "conflict", "; ".join(diffs)
    summary = read_summary(d)
    if summary and summary.get("finished"):
        return "finished", (
            f"{summary.get('epochs_completed')} epochs, final val_acc {summary.get('final_val_acc', float('nan')):.2f}%"
        )
    if (d / rundir.CHECKPOINT).is_file():
        return "resume", f"at epoch {epochs_done(d)}/{run.epochs}"
    return "new", f"{run.epochs} epochs"


def show_plan(runs: list[Run], configs: dict, log, device: Callable[[int], str] = lambda i: "") -> None:
    """A dry run's listing: each run's state, the device ``device(i)`` of the i-th run to train, and
    its ``divebatch train`` command."""
    n_to_train = 0
    for run in runs:
        state, detail = run_state(run, configs[run.name])
        where = f" on {device(n_to_train)}" if state in ("new", "resume") else ""
        n_to_train += state in ("new", "resume")
        after = f", after {run.after}" if run.after else ""
        log(
            f"[replicate] {state:<8} {run.name}{where}: {detail}{after}; "
            f"divebatch train {shlex.join([run.config, *run.overrides])}"
        )


def plan(runs: list[Run], configs: dict, outcome: Outcome, log) -> list[Task]:
    """Skip finished runs, refuse busy and conflicting ones (into ``outcome``), and make a task of
    every other run; logs one line per skipped or refused run, then the counts."""
    tasks = []
    for run in runs:
        state, detail = run_state(run, configs[run.name])
        if state == "finished":
            outcome.skipped.append(run.name)
            log(f"[replicate] skipped  {run.name} (finished already: {detail})")
        elif state == "busy":
            outcome.failed.append((run.name, f"{run.out_dir} is {detail}"))
            log(
                f"[replicate] FAILED   {run.name}: {run.out_dir} is {detail}; not started. Wait for it to end, "
                f"or stop it and rerun to resume."
            )
        elif state == "conflict":
            outcome.failed.append((run.name, f"{run.out_dir} holds a run with another config"))
            log(
                f"[replicate] FAILED   {run.name}: {run.out_dir} holds a run with another config ({detail}); "
                f"not started. Restore the profile/config, or move that folder away to train it anew."
            )
        else:
            left = run.epochs - (epochs_done(run.out_dir) if state == "resume" else 0)
            verb = "resumed" if state == "resume" else "started"
            tasks.append(Task(run.name, run.argv(), run.log, run=run, total_epochs=max(0, left), verb=verb))
    n_resumed = sum(1 for t in tasks if t.verb == "resumed")
    refused = f", {len(outcome.failed)} refused" if outcome.failed else ""
    log(
        f"[replicate] {len(tasks)} run(s) to train ({n_resumed} resumed), "
        f"{len(outcome.skipped)} finished already{refused}"
    )
    return tasks


def _source_done(run_dir: Path) -> bool:
    return rundir.summary_status(read_summary(run_dir)) == "finished"


def waves(tasks: list[Task]) -> list[list[Task]]:
    """``[first, second]``: the tasks that can start now, then the runs that replay a run
    (``run.after``) which has not finished yet (it trains in the first wave, or failed before)."""
    later = [t for t in tasks if t.run is not None and t.run.after is not None and not _source_done(t.run.after)]
    return [[t for t in tasks if t not in later], later]


def sources_finished(tasks: list[Task], outcome: Outcome, log) -> list[Task]:
    """The tasks whose replayed run has finished; the others are filed as failed, not started."""
    ready = []
    for t in tasks:
        if _source_done(t.run.after):
            ready.append(t)
            continue
        reason = f"not started: the run it replays ({t.run.after}) did not finish"
        outcome.failed.append((t.name, reason))
        log(f"[replicate] FAILED   {t.name}: {reason}")
    return ready
