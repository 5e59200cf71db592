"""``divebatch replicate [PROFILE] [--jobs N] ...``: train every run of a profile, then report.

The profile (:mod:`~divebatch.orchestration.profiles`) expands to runs, one run directory each,
``<runs-dir>/<experiment>/<cell>/seed<k>/`` (default runs-dir: ``runs/<profile>``), with the run's
stdout/stderr in ``train.log`` inside. The same mechanism runs a sweep offline (``divebatch sweep
X.yaml --local``: a one-experiment profile). :func:`replicate`

1. loads every run's config, checks the device (a ``needs_gpu`` profile, or ``device=cuda``
   runs, on a machine without a visible GPU) and the data of every experiment, and stops before
   any training when something is wrong (fetching missing data first when the profile allows
   downloads and the network answers a quick check), naming the files and where to put them
   (:mod:`~divebatch.orchestration.plan`; ``--dry-run`` runs the same checks and says what it found);
2. trains every run that is not finished, N at once (``--jobs``; with GPUs each run is pinned to
   one with ``CUDA_VISIBLE_DEVICES``, up to ``--runs-per-gpu K`` runs per GPU, default 1); a cut
   run resumes from its checkpoint, because ``divebatch train`` does; a finished run is skipped
   without starting a process; a failing run is reported with its log and the others go on; a run
   that replays another (an experiment's ``schedule_from``: a schedule control) trains after it, in
   a second wave, and is not started when that run did not finish
   (:mod:`~divebatch.orchestration.execute`);
3. runs the synthetic theory check (``divebatch synthetic``) beside the trainings, unless it is
   done for this config and commit;
4. regenerates ``paper_tables/<tag>/``, ``figures/<tag>/`` and ``notebooks/<profile>/`` with
   ``divebatch report``, for the profile's name and every experiment's ``report_as`` tag.

``bash replicate/all.sh [PROFILE] [ARGS]`` is this command after bootstrapping the pinned
environment. User documentation: ``docs/replicate.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import signal
import sys
import threading
import time
from pathlib import Path

from omegaconf import DictConfig

from divebatch import rundir
from divebatch.config import ConfigError
from divebatch.orchestration import execute, launch
from divebatch.orchestration.execute import runs_lock, synthetic_committed, synthetic_done, synthetic_stamp
from divebatch.orchestration.plan import (
    Outcome,
    Task,
    check_before_training,
    load_configs,
    plan,
    show_plan,
)
from divebatch.orchestration.profiles import (
    DEFAULT_PROFILE,
    ProfileError,
    Run,
    expand,
    load_profile,
    parse_data_args,
    profile_names,
    resolve_data,
)
from divebatch.rundir import read_summary


def _hardware(gpus: list[str], per_gpu: int | None, runs_per_gpu: int | None) -> str:
    if gpus:
        return f"{len(gpus)} GPU(s) ({', '.join(gpus)}), up to {per_gpu} run(s) per GPU"
    return f"{os.cpu_count()} CPU core(s)" + (" (--runs-per-gpu ignored: no GPU)" if runs_per_gpu else "")


def _header(spec: DictConfig, n_runs: int, runs_dir: Path, out: Path, where: str) -> str:
    expected = (
        f"; every run from scratch: about {spec.expected_minutes:g} min on {spec.hardware} (measured)"
        if spec.expected_minutes
        else ""
    )
    return (
        f"[replicate] profile {spec.name}: {n_runs} runs ({len(spec.experiments)} experiment(s)), "
        f"runs in {runs_dir}, outputs in {out / 'paper_tables' / spec.name} and {out / 'figures' / spec.name}; "
        f"{where}{expected}"
    )


def _synthetic_task(spec: DictConfig, runs_dir: Path, out: Path, redo: bool, dry_run: bool, outcome: Outcome, log):
    """``(task, stamp)`` of the synthetic check: task None when it is skipped (its outputs are
    current: :func:`~divebatch.orchestration.execute.synthetic_done` for this config and commit, or
    committed ones, :func:`~divebatch.orchestration.execute.synthetic_committed`; ``redo`` reruns it)
    and in a dry run, which says which; ``(None, None)`` when the profile has none."""
    if not spec.synthetic:
        return None, None
    stamp = synthetic_stamp(spec.synthetic, spec.name)
    argv = [sys.executable, "-m", "divebatch", "synthetic", "--profile", spec.name]
    argv += ["--config", str(spec.synthetic), "--out-root", str(out)]
    done = None  # where current outputs come from
    if redo:
        pass
    elif synthetic_done(runs_dir, out, stamp):
        done = "this config and commit"
    elif committed := synthetic_committed(out, stamp):
        done = f"commit {committed}, same src/, uv.lock and config"
    if dry_run:
        state = f"done ({done})" if done else "to run"
        log(f"[replicate] synthetic: {state} (on the CPU, beside the trainings): {shlex.join(argv[2:])}")
        return None, stamp
    if done:
        outcome.steps.append(f"synthetic check: skipped (outputs from {done}; --redo-synthetic reruns it)")
        log(f"[replicate] skipped  synthetic check (outputs in {out / 'paper_tables' / spec.name} are from {done})")
        return None, stamp
    return Task("synthetic check", argv, runs_dir / "logs" / "synthetic.log", needs_gpu=False), stamp


def _report(spec: DictConfig, runs: list[Run], runs_dir: Path, out: Path, notebooks: bool, outcome: Outcome, log):
    """``divebatch report`` for the profile's name and every ``report_as`` tag with a finished run."""
    tags = list(dict.fromkeys(e.report_as or spec.name for e in spec.experiments))
    for tag in tags if spec.report else []:
        if not any(read_summary(r.out_dir) for r in runs if r.tag == tag):
            outcome.steps.append(f"report {tag}: not run (no run has finished)")
            continue
        nb = ["--notebooks"] if notebooks and spec.notebooks and tag == spec.name else []
        argv = [sys.executable, "-m", "divebatch", "report", str(runs_dir), "--out", str(out), "--profile", tag]
        execute.step(outcome, f"report {tag}", execute.stream(argv + nb, log))
    outcome.outputs = [d for tag in tags for d in _list_outputs(out, tag)]


def _list_outputs(out: Path, profile: str) -> list[Path]:
    dirs = [out / "paper_tables" / profile, out / "figures" / profile, out / "notebooks" / profile]
    return [d for d in dirs if d.is_dir()]


def _stopped(spec: DictConfig, problems: list[str], dry_run: bool, outcome: Outcome, log) -> Outcome:
    """File and print the problems that stop the command before training (exit status 2)."""
    kinds = ["device refused" if p.startswith("- device:") else "data missing" for p in problems]
    outcome.stopped = " and ".join(dict.fromkeys(kinds))
    head = "dry run: the real command would stop" if dry_run else f"profile {spec.name} stopped"
    log(
        f"[replicate] {head} before training ({outcome.stopped}). Fix what is listed below and rerun the "
        f"same command.\n" + "\n".join(problems)
    )
    return outcome


def replicate(
    profile: str | Path | dict = DEFAULT_PROFILE,
    jobs: int | None = None,
    data_args: list[str] = (),
    runs_dir: str | Path | None = None,
    out: str | Path = ".",
    extra: list[str] = (),
    offline: bool = False,
    download: bool = True,
    synthetic: bool = True,
    redo_synthetic: bool = False,
    report: bool = True,
    notebooks: bool = True,
    dry_run: bool = False,
    log=print,
    runs_per_gpu: int | None = None,
) -> Outcome:
    """Train every unfinished run of ``profile``, run its synthetic check, then report.

    Args:
        profile: a name in ``configs/profiles/``, a YAML path, or the profile as a dict.
        jobs: processes at once (default: GPUs x ``runs_per_gpu``; on CPU one per core, at most 8).
        runs_per_gpu: trainings at once on each visible GPU, each process pinned to its GPU
            (default 1, or ``ceil(jobs / GPUs)`` when ``jobs`` is given); ignored without GPUs.
        data_args: ``--data`` items (``NAME=PATH``, or ``PATH`` for a one-dataset profile).
        runs_dir: default ``runs/<profile>``.
        out: root of ``paper_tables/<profile>/``, ``figures/<profile>/``, ``notebooks/<profile>/``.
        extra: KEY=VALUE overrides for every run.
        offline: never touch the network (missing data stops the command).
        synthetic, report, notebooks: False skips that step; redo_synthetic: rerun it even
            when its outputs are current.
        dry_run: every check before training (configs, device, data; no download), each run's
            state, the device it would get and its command; train nothing.
    Returns:
        :class:`~divebatch.orchestration.plan.Outcome`; ``outcome.exit_code`` is the command's exit
        status (2: stopped, or a dry run that found what would stop the real command).
    Raises:
        ProfileError, ConfigError: bad profile or run config, or the runs directory is in use
            (before anything runs).
        KeyboardInterrupt: after stopping the running processes.
    """
    t_start, outcome = time.perf_counter(), Outcome()
    spec = load_profile(profile)
    runs_dir = Path(runs_dir) if runs_dir is not None else rundir.runs_path(spec.name)
    out = Path(out)
    sources = resolve_data(spec, parse_data_args(list(data_args), spec))
    runs = expand(spec, runs_dir, sources, list(extra))
    configs = load_configs(runs)  # every config must load before anything runs
    gpus = launch.gpu_ids()
    try:
        jobs, per_gpu = launch.resolve_jobs(jobs, runs_per_gpu, gpus, os.cpu_count() or 1)
    except ValueError as err:
        raise ProfileError(str(err)) from None
    log(_header(spec, len(runs), runs_dir, out, f"{jobs} job(s) on {_hardware(gpus, per_gpu, runs_per_gpu)}"))
    if dry_run:
        show_plan(runs, configs, log, lambda i: launch.planned_device(i, gpus, jobs, per_gpu))
        if synthetic:
            _synthetic_task(spec, runs_dir, out, redo_synthetic, True, outcome, log)
    checks = dict(offline=offline, download=download, dry_run=dry_run, log=log)
    problems = check_before_training(spec, sources, configs, gpus, **checks)
    if problems:  # nothing trains unless every check passes
        return _stopped(spec, problems, dry_run, outcome, log)
    if dry_run:
        log("[replicate] dry run: every check passed; nothing was trained")
        return outcome
    check, stamp = (
        _synthetic_task(spec, runs_dir, out, redo_synthetic, False, outcome, log) if synthetic else (None, None)
    )
    with runs_lock(runs_dir):  # two invocations never train the same run at once
        tasks = ([check] if check else []) + plan(runs, configs, outcome, log)  # the check runs beside the trainings
        cpu0 = execute.children_cpu_s()
        execute.train_waves(tasks, jobs, gpus, per_gpu, spec.name, outcome, runs_dir, stamp, log)
        if report:
            _report(spec, runs, runs_dir, out, notebooks, outcome, log)
        execute.summary(
            spec.name, outcome, runs_dir, time.perf_counter() - t_start, execute.children_cpu_s() - cpu0, log
        )
        return outcome


# ----------------------------------------------------------------------------- the command


def parser() -> argparse.ArgumentParser:
    """``divebatch replicate``'s arguments (the profile list read from ``configs/profiles/``)."""
    p = argparse.ArgumentParser(
        prog="divebatch replicate",
        description="Train every run of a replication profile that is not finished (cut runs resume), run the "
        "synthetic check, then regenerate paper_tables/<profile>/, figures/<profile>/ and "
        "notebooks/<profile>/. Rerunning trains nothing new. See docs/replicate.md.",
    )
    names = " | ".join(profile_names()) or "a name in configs/profiles/"
    p.add_argument(
        "profile",
        nargs="?",
        default=DEFAULT_PROFILE,
        help=f"{names} (configs/profiles/<name>.yaml) or a profile YAML (default: {DEFAULT_PROFILE})",
    )
    p.add_argument(
        "--jobs",
        type=int,
        default=None,
        help="trainings at once (default: GPUs x --runs-per-gpu; on CPU one per core, at most 8)",
    )
    p.add_argument(
        "--runs-per-gpu",
        type=int,
        default=None,
        metavar="K",
        help="trainings at once on each visible GPU, each pinned to its GPU (default 1; a large GPU "
        "runs several ResNet-18 CIFAR runs faster than one after another: docs/replicate.md)",
    )
    p.add_argument(
        "--data",
        action="append",
        default=[],
        metavar="[NAME=]PATH",
        help="where a dataset of the profile is (repeatable), e.g. --data ../shared/data/cifar10-mini.npz "
        "for the cpu profile, --data tiny_imagenet=DIR/tiny-imagenet-200 for paper",
    )
    p.add_argument("--runs-dir", default=None, help="run directories (default: runs/<profile>)")
    p.add_argument("--out", default=".", help="root of paper_tables/, figures/ and notebooks/ (default: .)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        dest="extra",
        help="override for every run, e.g. --set wandb.mode=offline or --set device=cpu (repeatable)",
    )
    p.add_argument("--offline", action="store_true", help="never use the network (missing data stops the command)")
    p.add_argument("--no-download", action="store_true", help="do not download missing datasets")
    p.add_argument("--no-synthetic", action="store_true", help="skip the synthetic theory check")
    p.add_argument("--redo-synthetic", action="store_true", help="rerun the synthetic check even when it is done")
    p.add_argument("--no-report", action="store_true", help="train only; no tables, figures or notebooks")
    p.add_argument("--no-notebooks", action="store_true", help="report without executing the notebooks")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="run every check the real command runs before training (configs, device, data; no download), "
        "list the runs, their states and the device each would get; train nothing. Exit 2 when the real "
        "command would stop before training",
    )
    return p


def cli(argv: list[str] | None = None) -> int:
    """``divebatch replicate [PROFILE] [options]``; returns the exit status (0 all succeeded,
    1 some run or step failed, 2 stopped before training: bad profile, missing data, no GPU for a
    GPU profile (also a dry run that finds so), 130 interrupted)."""
    args = parser().parse_args(argv)

    def stop(signum, frame):  # `kill PID` stops the trainings too, as Ctrl-C does, so they can resume
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop) if threading.current_thread() is threading.main_thread() else None
    try:
        outcome = replicate(
            args.profile,
            args.jobs,
            args.data,
            args.runs_dir,
            args.out,
            args.extra,
            offline=args.offline or os.environ.get("DIVEBATCH_OFFLINE") == "1",
            download=not args.no_download,
            synthetic=not args.no_synthetic,
            redo_synthetic=args.redo_synthetic,
            report=not args.no_report,
            notebooks=not args.no_notebooks,
            dry_run=args.dry_run,
            runs_per_gpu=args.runs_per_gpu,
        )
    except (ProfileError, ConfigError, FileNotFoundError) as err:
        print(f"divebatch replicate: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    finally:
        if previous is not None:
            with contextlib.suppress(ValueError):
                signal.signal(signal.SIGTERM, previous)
    return outcome.exit_code
