"""``divebatch replicate [PROFILE] [--jobs N] ...``: train every run of a profile, then report.

A profile (``configs/profiles/<name>.yaml``, schema :class:`ProfileSpec`) is the experiment matrix
as data: experiments, each a list of cells (a dataset protocol with its methods, composed as
``configs/<dataset>/<method>.yaml`` by :func:`divebatch.config.load_yaml`; training config files;
the points of a wandb sweep YAML, :func:`divebatch.orchestration.sweeps.points`), seeds, overrides, the data each
needs and where to look for it, the synthetic check's config. :func:`expand` turns it into runs,
one run directory each, ``<runs-dir>/<experiment>/<cell>/seed<k>/`` (default runs-dir:
``runs/<profile>``), with the run's stdout/stderr in ``train.log`` inside. The same mechanism runs
a sweep offline (``divebatch sweep X.yaml --local``: a one-experiment profile) and its seed
matrix. :func:`replicate` then

1. checks the data of every experiment and stops before any training when something is missing
   (fetching it first when the profile allows downloads and the network answers a quick check),
   with instructions naming the files and where to put them;
2. trains every run that is not finished, N at once (``--jobs``; with GPUs each run is pinned to
   one with ``CUDA_VISIBLE_DEVICES``, up to ``--runs-per-gpu K`` runs per GPU, default 1); a cut
   run resumes from its checkpoint, because
   ``divebatch train`` does; a finished run is skipped without starting a process; a failing run
   is reported with its log and the others go on; a run that replays another (an experiment's
   ``schedule_from``: a schedule control) trains after it, in a second wave, and is not started
   when that run did not finish;
3. runs the synthetic theory check (``divebatch synthetic``) beside the trainings, unless it is
   done for this config and commit;
4. regenerates ``paper_tables/<tag>/``, ``figures/<tag>/`` and ``notebooks/<profile>/`` with
   ``divebatch report``, for the profile's name and every experiment's ``report_as`` tag.

``bash replicate/all.sh [PROFILE] [ARGS]`` is this command after bootstrapping the pinned
environment. Paths in a profile are relative to the working directory (the repository root).
User documentation: ``docs/replicate.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import resource
import shlex
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from tqdm.auto import tqdm

from divebatch import rundir
from divebatch.config import ConfigError, config_diffs, config_exists, load_config, method_names
from divebatch.fetch import DATA_KINDS, DataSource, ensure_data
from divebatch.orchestration import launch, sweeps
from divebatch.provenance import VERDICT_FILE
from divebatch.rundir import epochs_done, read_summary

PROFILE_DIR = Path("configs") / "profiles"
METHODS_DIR = Path("configs") / "methods"
DEFAULT_PROFILE = "smoke"
LOG_NAME = rundir.LOG  # inside each run directory
SYNTHETIC_STAMP = "synthetic_done.json"  # in the runs dir: which config/commit the synthetic outputs are from


class ProfileError(ValueError):
    """A profile cannot be used as given; the message names the key, the value and what is allowed."""


# ----------------------------------------------------------------------------- profile schema


@dataclass
class DataSpec:
    """Where an experiment's data is. ``path`` goes to the runs as ``data.path``.

    kind: a key of :data:`DATA_KINDS` (what must exist at ``path``); env: environment variable
    that overrides ``path``; download: fetch with ``divebatch fetch-data`` when missing.
    """

    kind: str = "bundled"
    path: Optional[str] = None
    env: Optional[str] = None
    download: bool = False


@dataclass
class ExperimentSpec:
    """One block of the matrix: every cell (method, config file, sweep point) x every seed."""

    name: str = MISSING  # run directories: <runs-dir>/<name>/<cell>/seed<k>
    dataset: Optional[str] = None  # a protocol configs/<dataset>/base.yaml, composed with each of ``methods``
    methods: List[str] = field(default_factory=list)  # configs/methods/<method>.yaml, with ``dataset``
    configs: List[str] = field(default_factory=list)  # divebatch train YAML files, after the methods' cells
    sweep: Optional[str] = None  # a wandb sweep YAML: one cell per point (divebatch.orchestration.sweeps.points), last
    count: Optional[int] = None  # random/bayes sweeps: number of points (default: the sweep's run_cap)
    data: Optional[str] = None  # a key of the profile's ``data``; its path is passed as data.path
    seeds: Optional[List[int]] = None  # default: the profile's seeds
    overrides: List[str] = field(default_factory=list)  # KEY=VALUE for this experiment's runs
    report_as: Optional[str] = None  # the runs' ``profile`` tag, i.e. paper_tables/<report_as>/ (default: the profile)
    # cell -> "<experiment>/<cell>" of this profile: that cell's runs get method.schedule_from = the run
    # directory of that cell with the same seed (a schedule control replays it) and train after it
    schedule_from: Dict[str, str] = field(default_factory=dict)


@dataclass
class ProfileSpec:
    name: str = MISSING  # the runs' ``profile`` key and the output subfolder name
    description: str = ""
    hardware: str = ""  # what it is meant for, e.g. "2 CPU cores"
    expected_minutes: Optional[float] = None  # measured on ``hardware`` (docs/replicate.md)
    seeds: List[int] = field(default_factory=lambda: [1, 2, 3])
    overrides: List[str] = field(default_factory=list)  # KEY=VALUE for every run
    data: Dict[str, DataSpec] = field(default_factory=dict)
    experiments: List[ExperimentSpec] = field(default_factory=list)
    synthetic: Optional[str] = None  # configs/synthetic/<x>.yaml; null: no synthetic check
    report: bool = True
    notebooks: bool = True


# ----------------------------------------------------------------------------- loading and expansion


def profile_path(profile: str | Path) -> Path:
    """A profile name (``configs/profiles/<name>.yaml``) or a path to a profile YAML.

    Raises:
        ProfileError: neither exists (names the profiles that do).
    """
    path = Path(profile)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return path
    candidate = PROFILE_DIR / f"{profile}.yaml"
    if candidate.is_file():
        return candidate
    have = sorted(p.stem for p in PROFILE_DIR.glob("*.yaml"))
    names = " | ".join(have) or f"(none found in {PROFILE_DIR})"
    raise ProfileError(
        f"invalid profile {str(profile)!r}; allowed: {names} or a path to a profile YAML (run from the repository root)"
    )


def _bad(key: str, value, allowed: str) -> ProfileError:
    return ProfileError(f"invalid profile: {key}={value!r}; allowed: {allowed}")


def load_profile(profile: str | Path | dict) -> DictConfig:
    """Load and validate a profile (schema :class:`ProfileSpec`): a name, a YAML path, or the
    profile itself as a dict (e.g. :func:`divebatch.orchestration.sweeps.local_profile`).

    Raises:
        ProfileError: unknown key, wrong type, missing file, unknown data kind or reference, a bad
            sweep, duplicate experiment names or run names (names key, value and allowed).
    """
    path = profile if isinstance(profile, dict) else profile_path(profile)
    try:
        spec = OmegaConf.merge(
            OmegaConf.structured(ProfileSpec),
            OmegaConf.create(path) if isinstance(path, dict) else OmegaConf.load(path),
        )
        OmegaConf.to_container(spec, throw_on_missing=True)
    except OmegaConfBaseException as err:
        raise ProfileError(
            f"invalid profile {path}: {getattr(err, 'full_key', '?')}: "
            f"{str(err).splitlines()[0]}; allowed: the keys of divebatch.orchestration.replicate.ProfileSpec"
        ) from None
    for key, d in spec.data.items():
        if d.kind not in DATA_KINDS:
            raise _bad(f"data.{key}.kind", d.kind, " | ".join(DATA_KINDS))
        if d.kind != "bundled" and not (d.path or d.env):
            raise _bad(f"data.{key}.path", d.path, f"a path for kind {d.kind} (or an env variable)")
    if not spec.experiments and not spec.synthetic:
        raise _bad("experiments", [], "at least one experiment or a synthetic config")
    names = [e.name for e in spec.experiments]
    if len(set(names)) != len(names):
        raise _bad("experiments[].name", names, "unique names")
    for i, e in enumerate(spec.experiments):
        if e.data is not None and e.data not in spec.data:
            raise _bad(f"experiments[{i}].data", e.data, " | ".join(spec.data) or "(no data declared)")
        if e.methods and not e.dataset:
            raise _bad(
                f"experiments[{i}].dataset",
                e.dataset,
                "a folder of configs/ with a base.yaml protocol (required with methods)",
            )
        try:
            cells = experiment_cells(e)
        except sweeps.SweepError as err:
            raise _bad(f"experiments[{i}].sweep", e.sweep, f"a valid wandb sweep YAML ({err})") from None
        names = [name for name, _, _ in cells]
        if not names or len(set(names)) != len(names):
            raise _bad(
                f"experiments[{i}]", names, "a non-empty list of methods, files and sweep points with distinct names"
            )
        for c in dict.fromkeys(config for _, config, _ in cells):
            if not config_exists(c):
                allowed = (
                    "existing divebatch train YAML files"
                    if c in e.configs
                    else f"methods of {METHODS_DIR.as_posix()}/ for dataset {e.dataset}: {' | '.join(method_names())}"
                    if (Path(c).parent / "base.yaml").is_file()
                    else f"a dataset folder of configs/ with a base.yaml for methods (configs/{e.dataset}/base.yaml)"
                )
                raise _bad(f"experiments[{i}].{'configs' if c in e.configs else 'methods'}", c, allowed)
        seeds = list(e.seeds if e.seeds is not None else spec.seeds)
        if not seeds or len(set(seeds)) != len(seeds):
            raise _bad(f"experiments[{i}].seeds", seeds, "a non-empty list of distinct integers")
        _check_schedule_from(spec, i, names, seeds)
    if spec.synthetic is not None and not Path(spec.synthetic).is_file():
        raise _bad("synthetic", spec.synthetic, "an existing YAML file")
    return spec


def _check_schedule_from(spec: DictConfig, i: int, cells: list[str], seeds: list[int]) -> None:
    """An experiment's ``schedule_from``: each key a cell of it, each value ``<experiment>/<cell>`` of
    another experiment of the profile that runs every one of its seeds and replays no run itself.

    Raises:
        ProfileError: naming the key, the value and what is allowed.
    """
    e = spec.experiments[i]
    for cell, source in e.schedule_from.items():
        key = f"experiments[{i}].schedule_from.{cell}"
        if cell not in cells:
            raise _bad(key, source, f"a key that is a cell of experiment {e.name}: {' | '.join(cells)}")
        exp_name, _, source_cell = str(source).partition("/")
        others = {x.name: x for x in spec.experiments if x.name != e.name}
        if exp_name not in others:
            raise _bad(key, source, f"<experiment>/<cell> with <experiment> another experiment: {' | '.join(others)}")
        src = others[exp_name]
        src_cells = [name for name, _, _ in experiment_cells(src)]
        if source_cell not in src_cells or source_cell in src.schedule_from:
            allowed = [c for c in src_cells if c not in src.schedule_from]
            raise _bad(key, source, f"{exp_name}/<cell> with <cell> a cell that replays no run: {' | '.join(allowed)}")
        src_seeds = list(src.seeds if src.seeds is not None else spec.seeds)
        if set(seeds) - set(src_seeds):
            raise _bad(key, source, f"an experiment that runs seeds {seeds} (it runs {src_seeds})")


def experiment_cells(e: DictConfig) -> list[tuple[str, str, list[str]]]:
    """The cells of an experiment as ``(name, training config, overrides)``: per method
    ``configs/<dataset>/<method>.yaml`` (composed by :func:`divebatch.config.load_yaml`), then the
    ``configs`` files as written (both named by the file stem), then one cell per point of the
    ``sweep`` (named by :func:`~divebatch.orchestration.sweeps.point_name`; its command's fixed
    overrides, then the point's values).

    Raises:
        ~divebatch.orchestration.sweeps.SweepError: a bad sweep YAML, or one that sweeps ``seed``
            (the matrix's).
    """
    cells = [(Path(c).stem, c, []) for c in experiment_configs(e)]
    if e.sweep is not None:
        sweep = sweeps.load_sweep(e.sweep)
        if "seed" in sweep.params:
            raise sweeps.SweepError(f"{e.sweep}: parameter 'seed'; allowed: seeds from the experiment's `seeds`")
        for point in sweeps.points(sweep, e.count):
            cells.append((sweeps.point_name(point), sweep.train_config, [*sweep.matrix_overrides(), *point]))
    return cells


def experiment_configs(e: DictConfig) -> list[str]:
    """The training config files of an experiment's method and file cells (no sweep points)."""
    return [(Path("configs") / e.dataset / f"{m}.yaml").as_posix() for m in e.methods] + list(e.configs)


def resolve_data(spec: DictConfig, given: dict[str, str], env: dict | None = None) -> dict[str, DataSource]:
    """The profile's data entries with their paths: ``given`` (``--data``) > env variable > profile.

    Raises:
        ProfileError: ``given`` names a data entry the profile does not have.
    """
    env = os.environ if env is None else env
    unknown = sorted(set(given) - set(spec.data))
    if unknown:
        raise ProfileError(f"invalid --data {unknown[0]}=...; allowed names: {' | '.join(spec.data) or '(none)'}")
    out = {}
    for key, d in spec.data.items():
        if key in given:
            path, origin = given[key], f"--data {key}=..."
        elif d.env and env.get(d.env):
            path, origin = env[d.env], f"${d.env}"
        else:
            path, origin = d.path, "the profile's default"
        users = [e.name for e in spec.experiments if e.data == key]
        out[key] = DataSource(key, d.kind, Path(path) if path else None, origin, d.download, d.env, users)
    return out


def parse_data_args(items: list[str], spec: DictConfig) -> dict[str, str]:
    """``--data NAME=PATH`` items; a bare ``PATH`` is allowed when the profile has one non-bundled entry.

    Raises:
        ProfileError: a bare path with several (or no) data entries to choose from.
    """
    out = {}
    files = [k for k, d in spec.data.items() if d.kind != "bundled"]
    for item in items:
        name, sep, path = item.partition("=")
        if sep and name in spec.data:
            out[name] = path
        elif len(files) == 1:
            out[files[0]] = item
        else:
            raise ProfileError(
                f"invalid --data {item!r}; allowed: NAME=PATH with NAME one of "
                f"{' | '.join(files) or '(none: profile ' + spec.name + ' needs no data files)'}"
            )
    return out


@dataclass
class Run:
    """One training run of the matrix."""

    experiment: str
    cell: str  # the method, config stem or sweep point
    config: str  # divebatch train YAML, as written in the profile
    seed: int
    out_dir: Path
    overrides: list[str]  # everything passed after the config (out_dir, seed, profile included)
    tag: str  # its ``profile`` key: the report it belongs to (the experiment's report_as, else the profile)
    epochs: int = 0
    after: Optional[Path] = None  # a run directory this run replays (method.schedule_from): trained first

    @property
    def name(self) -> str:
        return f"{self.experiment}/{self.cell}/seed{self.seed}"

    @property
    def log(self) -> Path:
        return self.out_dir / LOG_NAME

    def argv(self) -> list[str]:
        return [sys.executable, "-m", "divebatch", "train", self.config, *self.overrides]


def expand(
    spec: DictConfig,
    runs_dir: str | Path,
    data: dict[str, DataSource] | None = None,
    extra: list[str] | tuple[str, ...] = (),
) -> list[Run]:
    """Every run of a profile, seeds outermost within an experiment (seed 1 of every method first,
    so an interrupted replication has whole comparisons early).

    Args:
        spec: :func:`load_profile`.
        runs_dir: parent of the experiments' run directories.
        data: :func:`resolve_data`; None: the profile's own paths.
        extra: KEY=VALUE overrides for every run (``--set``), after the profile's.
    Overrides, later wins: profile, experiment, the cell's (a sweep point's), ``data.path``,
    ``extra``, then ``method.schedule_from`` (a cell of the experiment's ``schedule_from``: the run
    directory of its source with the same seed, also the run's ``after``), ``seed``, ``profile`` (the
    experiment's ``report_as``, else the profile's name), ``out_dir`` and ``progress=false`` (one log
    line per epoch, no bar, in the log).
    """
    data = resolve_data(spec, {}) if data is None else data
    runs = []
    for e in spec.experiments:
        data_path = [f"data.path={data[e.data].path}"] if e.data and data[e.data].path is not None else []
        cells, tag = experiment_cells(e), e.report_as or spec.name
        for seed in e.seeds if e.seeds is not None else spec.seeds:
            for cell, config, cell_overrides in cells:
                out_dir = Path(runs_dir) / e.name / cell / f"seed{seed}"
                source = e.schedule_from.get(cell)
                after = Path(runs_dir) / source / f"seed{seed}" if source else None
                overrides = [
                    *spec.overrides,
                    *e.overrides,
                    *cell_overrides,
                    *data_path,
                    *extra,
                    *([f"method.schedule_from={after}"] if after else []),
                    f"seed={seed}",
                    f"profile={tag}",
                    f"out_dir={out_dir}",
                    "progress=false",
                ]
                runs.append(Run(e.name, cell, str(config), int(seed), out_dir, overrides, tag, after=after))
    return runs


# ----------------------------------------------------------------------------- run states


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


# ----------------------------------------------------------------------------- execution


@dataclass
class Task(launch.Task):
    """A process of the replication: a training run (``run`` set), or the synthetic check
    (``needs_gpu=False``)."""

    run: Optional[Run] = None
    verb: str = "started"
    total_epochs: int = 0  # epochs this task still has to train (progress bar)
    counted: int = 0  # epochs already added to the bar


def _fmt_s(seconds: float) -> str:
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

    def count_epochs(active: list[Task]) -> None:
        for t in active:
            if t.run is not None and t.total_epochs:
                now = min(t.total_epochs, epochs_done(t.run.out_dir) - (t.run.epochs - t.total_epochs))
                if now > t.counted:
                    bar.update(now - t.counted)
                    t.counted = now

    def on_poll(active: list[Task]) -> None:
        count_epochs(active)
        bar.set_postfix_str(f"runs {len(done)}/{n_runs} done, {len(active)} running", refresh=False)

    def on_start(t: Task) -> None:
        log(f"[replicate] {t.verb:<8} {t.name}{f' on GPU {t.gpu}' if t.gpu is not None else ''} (log: {t.log})")

    def on_finish(t: Task) -> None:
        count_epochs([t])
        if t.total_epochs > t.counted:  # a failed run's remaining epochs leave the ETA
            bar.total -= t.total_epochs - t.counted
            bar.refresh()
        exit_code, summary = t.returncode, read_summary(t.run.out_dir) if t.run else None
        ok = exit_code == 0 and (t.run is None or bool(summary and summary.get("finished")))
        t.returncode = 0 if ok else (exit_code or 1)
        done.extend([t] if t.run else [])
        if ok:
            detail = (
                (
                    f": final val_acc {summary['final_val_acc']:.2f}% (best {summary['best_val_acc']:.2f}%), "
                    f"{summary['epochs_completed']} epochs"
                )
                if summary
                else ""
            )
            if summary and summary.get("diverged"):  # recorded, reported as diverged; the matrix goes on
                detail = f": DIVERGED (training loss non-finite in epoch {summary['diverged_epoch'] + 1}); log: {t.log}"
            progress = f"; {len(done)}/{n_runs} runs done, {bar.n}/{bar.total} epochs"
            if 0 < bar.n < bar.total:
                progress += f", ETA {_fmt_s((time.perf_counter() - t0) * (bar.total - bar.n) / bar.n)}"
            log(f"[replicate] finished {t.name} in {_fmt_s(t.seconds)}{detail}{progress}")
        else:
            log(
                f"[replicate] FAILED   {t.name} (exit {exit_code}) after {_fmt_s(t.seconds)}; "
                f"log: {t.log}\n    last lines:\n{launch.tail(t.log)}"
            )
        record(t)

    try:
        launch.Pool(jobs, gpus, log, "[replicate]", runs_per_gpu).run(tasks, on_start, on_finish, on_poll)
    finally:
        bar.close()


# ----------------------------------------------------------------------------- synthetic check


def _sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def synthetic_stamp(config: str, profile: str) -> dict:
    """What the synthetic outputs must come from to be reused: config content, profile, commit."""
    from divebatch.provenance import git_commit

    return {"config": str(config), "config_sha256": _sha256(config), "profile": profile, "commit": git_commit()}


def synthetic_done(runs_dir: Path, out: Path, stamp: dict) -> bool:
    """The synthetic outputs exist and their stamp matches ``stamp`` (same config, profile, commit)."""
    verdict = out / "paper_tables" / stamp["profile"] / VERDICT_FILE
    try:
        old = json.loads((runs_dir / SYNTHETIC_STAMP).read_text())
    except (OSError, ValueError):
        return False
    return verdict.is_file() and all(old.get(k) == v for k, v in stamp.items())


# ----------------------------------------------------------------------------- the command


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


def _stream(argv: list[str], log=print) -> int:
    """Run a step in the foreground, its output on our stdout/stderr."""
    log(f"[replicate] $ {shlex.join(argv[2:] if argv[1:2] == ['-m'] else argv)}")
    sys.stdout.flush()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("PYTEST_CURRENT_TEST", None)
    return subprocess.call(argv, env=env)


def _list_outputs(out: Path, profile: str) -> list[Path]:
    dirs = [out / "paper_tables" / profile, out / "figures" / profile, out / "notebooks" / profile]
    return [d for d in dirs if d.is_dir()]


def replicate(
    profile: str | Path = DEFAULT_PROFILE,
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
        dry_run: print the matrix, each run's state and the device it would get; train nothing.
    Returns:
        :class:`Outcome`; ``outcome.exit_code`` is the command's exit status.
    Raises:
        ProfileError, ConfigError: bad profile or run config, or the runs directory is in use
            (before anything runs).
        KeyboardInterrupt: after stopping the running processes.
    """
    t_start = time.perf_counter()
    spec = load_profile(profile)
    runs_dir = Path(runs_dir) if runs_dir is not None else rundir.runs_path(spec.name)
    out = Path(out)
    sources = resolve_data(spec, parse_data_args(list(data_args), spec))
    runs = expand(spec, runs_dir, sources, list(extra))
    configs = _load_configs(runs)  # every config must load before anything runs
    gpus = launch.gpu_ids()
    try:
        jobs, per_gpu = launch.resolve_jobs(jobs, runs_per_gpu, gpus, os.cpu_count() or 1)
    except ValueError as err:
        raise ProfileError(str(err)) from None
    hw = (
        f"{len(gpus)} GPU(s) ({', '.join(gpus)}), up to {per_gpu} run(s) per GPU"
        if gpus
        else f"{os.cpu_count()} CPU core(s)" + (" (--runs-per-gpu ignored: no GPU)" if runs_per_gpu else "")
    )
    expected = f"; expected about {spec.expected_minutes:g} min on {spec.hardware}" if spec.expected_minutes else ""
    log(
        f"[replicate] profile {spec.name}: {len(runs)} runs ({len(spec.experiments)} experiment(s)), "
        f"runs in {runs_dir}, outputs in {out / 'paper_tables' / spec.name} and {out / 'figures' / spec.name}; "
        f"{jobs} job(s) on {hw}{expected}"
    )
    outcome = Outcome()
    if not dry_run:  # data first: nothing trains unless every dataset of the profile is there
        problems = ensure_data(sources, spec.name, offline, download, log)
        if problems:
            outcome.stopped = "data missing"
            log(
                f"[replicate] profile {spec.name} stopped before training: data missing. Put the files in place "
                f"and rerun the same command.\n" + "\n".join(problems)
            )
            return outcome
    # under the lock of the runs directory: two invocations never train the same run at once
    with contextlib.nullcontext() if dry_run else runs_lock(runs_dir):
        tasks = _plan(runs, configs, outcome, dry_run, log, lambda i: launch.planned_device(i, gpus, jobs, per_gpu))
        stamp = synthetic_stamp(spec.synthetic, spec.name) if (synthetic and spec.synthetic) else None
        if stamp is not None:
            argv = [
                sys.executable,
                "-m",
                "divebatch",
                "synthetic",
                "--profile",
                spec.name,
                "--config",
                str(spec.synthetic),
                "--out-root",
                str(out),
            ]
            done_already = synthetic_done(runs_dir, out, stamp)
            if dry_run:
                log(
                    f"[replicate] synthetic: {'done' if done_already else 'to run'} (on the CPU, beside the "
                    f"trainings): {shlex.join(argv[2:])}"
                )
            elif done_already and not redo_synthetic:
                outcome.steps.append(
                    "synthetic check: skipped (done for this config and commit; --redo-synthetic reruns it)"
                )
                log(
                    f"[replicate] skipped  synthetic check (outputs in {out / 'paper_tables' / spec.name} are from "
                    f"this config and commit)"
                )
            else:  # first, so that it runs beside the trainings rather than after them
                tasks.insert(0, Task("synthetic check", argv, runs_dir / "logs" / "synthetic.log", needs_gpu=False))
        if dry_run:
            return outcome
        n_resumed = sum(1 for t in tasks if t.verb == "resumed")
        log(
            f"[replicate] {sum(1 for t in tasks if t.run)} run(s) to train ({n_resumed} resumed), "
            f"{len(outcome.skipped)} finished already" + (f", {len(outcome.failed)} refused" if outcome.failed else "")
        )
        cpu0 = _children_cpu_s()
        for wave, waiting in enumerate(_waves(tasks)):
            if wave:  # runs that replay a run of the first wave start once it has finished
                waiting = _sources_finished(waiting, outcome, log)
            if waiting:
                train_tasks(
                    waiting, jobs, gpus, spec.name, lambda t: _record(t, outcome, runs_dir, stamp), runs_per_gpu=per_gpu
                )
        tags = list(dict.fromkeys(e.report_as or spec.name for e in spec.experiments))
        for tag in tags if report and spec.report else []:
            if not any(read_summary(r.out_dir) for r in runs if r.tag == tag):
                outcome.steps.append(f"report {tag}: not run (no run has finished)")
                continue
            nb = ["--notebooks"] if notebooks and spec.notebooks and tag == spec.name else []
            argv = [sys.executable, "-m", "divebatch", "report", str(runs_dir), "--out", str(out), "--profile", tag]
            _step(outcome, f"report {tag}", _stream(argv + nb, log))
        outcome.outputs = [d for tag in tags for d in _list_outputs(out, tag)]
        _summary(spec.name, outcome, runs_dir, time.perf_counter() - t_start, _children_cpu_s() - cpu0, log)
        return outcome


def _load_configs(runs: list[Run]) -> dict[str, DictConfig]:
    """Each run's resolved config (sets ``run.epochs``); data presence is checked separately.

    Raises:
        ConfigError: naming the run and its config file.
    """
    configs = {}
    for run in runs:
        try:
            configs[run.name] = load_config(run.config, run.overrides, check_data=False)
        except ConfigError as err:
            raise ConfigError(f"run {run.name} ({run.config}): {err}") from None
        run.epochs = int(configs[run.name].epochs)
    return configs


def _plan(
    runs: list[Run], configs: dict, outcome: Outcome, dry_run: bool, log, device: Callable[[int], str] = lambda i: ""
) -> list[Task]:
    """Skip finished runs, refuse conflicting ones, and make a task of every other run. A dry run
    prints each run's state, the device ``device(i)`` of the i-th run to train, and its command."""
    tasks, n_to_train = [], 0
    for run in runs:
        state, detail = run_state(run, configs[run.name])
        if dry_run:
            where = f" on {device(n_to_train)}" if state in ("new", "resume") else ""
            n_to_train += state in ("new", "resume")
            after = f", after {run.after}" if run.after else ""
            log(
                f"[replicate] {state:<8} {run.name}{where}: {detail}{after}; "
                f"divebatch train {shlex.join([run.config, *run.overrides])}"
            )
        elif state == "finished":
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
            tasks.append(
                Task(
                    run.name,
                    run.argv(),
                    run.log,
                    run=run,
                    total_epochs=max(0, left),
                    verb="resumed" if state == "resume" else "started",
                )
            )
    return tasks


def _source_done(run_dir: Path) -> bool:
    return rundir.summary_status(read_summary(run_dir)) == "finished"


def _waves(tasks: list[Task]) -> list[list[Task]]:
    """``[first, second]``: the tasks that can start now, then the runs that replay a run
    (``run.after``) which has not finished yet (it trains in the first wave, or failed before)."""
    later = [t for t in tasks if t.run is not None and t.run.after is not None and not _source_done(t.run.after)]
    return [[t for t in tasks if t not in later], later]


def _sources_finished(tasks: list[Task], outcome: Outcome, log) -> list[Task]:
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


def _record(task: Task, outcome: Outcome, runs_dir: Path, stamp: dict | None) -> None:
    """File a finished task under trained/failed; a successful synthetic check leaves its stamp."""
    if task.run is None:  # the synthetic check
        if task.returncode == 0:
            (runs_dir / SYNTHETIC_STAMP).write_text(json.dumps({**stamp, "seconds": round(task.seconds, 1)}, indent=2))
            outcome.steps.append(f"synthetic check: ran in {_fmt_s(task.seconds)}")
        else:
            outcome.failed.append((task.name, str(task.log)))
            outcome.steps.append(f"synthetic check: FAILED (log: {task.log})")
    elif task.returncode == 0:
        outcome.trained.append(task.name)
    else:
        outcome.failed.append((task.name, str(task.log)))


def _step(outcome: Outcome, name: str, rc: int) -> None:
    outcome.steps.append(f"{name}: {'ok' if rc == 0 else f'FAILED (exit {rc})'}")
    if rc != 0:
        outcome.failed.append((name, "its output above"))


def _children_cpu_s() -> float:
    """CPU seconds (user + system) of the finished child processes so far."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _summary(profile: str, o: Outcome, runs_dir: Path, wall: float, cpu: float, log) -> None:
    lines = [
        f"[replicate] profile {profile} done in {_fmt_s(wall)} (processes used {_fmt_s(cpu)} of CPU time): "
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


def cli(argv: list[str] | None = None) -> int:
    """``divebatch replicate [PROFILE] [options]``; returns the exit status (0 all succeeded,
    1 some run or step failed, 2 stopped before training: bad profile or missing data, 130 interrupted)."""
    p = argparse.ArgumentParser(
        prog="divebatch replicate",
        description="Train every run of a replication profile that is not finished (cut runs resume), run the "
        "synthetic check, then regenerate paper_tables/<profile>/, figures/<profile>/ and "
        "notebooks/<profile>/. Rerunning trains nothing new. See docs/replicate.md.",
    )
    p.add_argument(
        "profile",
        nargs="?",
        default=DEFAULT_PROFILE,
        help=f"smoke | cpu | paper (configs/profiles/<name>.yaml) or a profile YAML (default: {DEFAULT_PROFILE})",
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
        help="override for every run, e.g. --set wandb.mode=offline (repeatable)",
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
        help="list the runs, their states and the device each would get; train nothing",
    )
    args = p.parse_args(argv)

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
            signal.signal(signal.SIGTERM, previous)
    return outcome.exit_code
