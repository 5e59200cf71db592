"""A replication profile: the experiment matrix as data, and the runs it expands to.

A profile (``configs/profiles/<name>.yaml``, schema :class:`ProfileSpec`) lists experiments, each a
list of cells (a dataset protocol with its methods, composed as ``configs/<dataset>/<method>.yaml``
by :func:`divebatch.config.load_yaml`; training config files; the points of a wandb sweep YAML,
:func:`divebatch.orchestration.sweeps.points`), seeds, overrides, the data each needs and where to
look for it, and the synthetic check's config. :func:`load_profile` validates it, :func:`expand`
turns it into :class:`Run` s, one run directory each, ``<runs-dir>/<experiment>/<cell>/seed<k>/``.
Paths in a profile are relative to the working directory (the repository root).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from divebatch import rundir
from divebatch.config import config_exists, method_names
from divebatch.fetch import DATA_KINDS, DataSource
from divebatch.orchestration import sweeps

PROFILE_DIR = Path("configs") / "profiles"
METHODS_DIR = Path("configs") / "methods"
DEFAULT_PROFILE = "smoke"


class ProfileError(ValueError):
    """A profile cannot be used as given; the message names the key, the value and what is allowed."""


@dataclass
class DataSpec:
    """Where an experiment's data is. ``path`` goes to the runs as ``data.path``.

    kind: a key of :data:`divebatch.fetch.DATA_KINDS` (what must exist at ``path``); env: environment
    variable that overrides ``path``; download: fetch with ``divebatch fetch-data`` when missing.
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
    # the runs are meant for CUDA GPUs: without one visible, replicate refuses to train them (and
    # --dry-run says so) unless every run sets device=cpu (e.g. --set device=cpu)
    needs_gpu: bool = False
    seeds: List[int] = field(default_factory=lambda: [1, 2, 3])
    overrides: List[str] = field(default_factory=list)  # KEY=VALUE for every run
    data: Dict[str, DataSpec] = field(default_factory=dict)
    experiments: List[ExperimentSpec] = field(default_factory=list)
    synthetic: Optional[str] = None  # configs/synthetic/<x>.yaml; null: no synthetic check
    report: bool = True
    notebooks: bool = True


# ----------------------------------------------------------------------------- loading and validation


def profile_names() -> list[str]:
    """The shipped profiles: the stems of ``configs/profiles/*.yaml``, sorted (empty outside the repository)."""
    return sorted(p.stem for p in PROFILE_DIR.glob("*.yaml"))


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
    names = " | ".join(profile_names()) or f"(none found in {PROFILE_DIR})"
    raise ProfileError(
        f"invalid profile {str(profile)!r}; allowed: {names} or a path to a profile YAML (run from the repository root)"
    )


def _bad(key: str, value, allowed: str) -> ProfileError:
    return ProfileError(f"invalid profile: {key}={value!r}; allowed: {allowed}")


def load_profile(profile: str | Path | dict) -> DictConfig:
    """Load and validate a profile (schema :class:`ProfileSpec`): a name, a YAML path, or the
    profile itself as a dict (e.g. :func:`divebatch.orchestration.sweep_cli.local_profile`).

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
            f"{str(err).splitlines()[0]}; allowed: the keys of divebatch.orchestration.profiles.ProfileSpec"
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
    for i in range(len(spec.experiments)):
        _check_experiment(spec, i)
    if spec.synthetic is not None and not Path(spec.synthetic).is_file():
        raise _bad("synthetic", spec.synthetic, "an existing YAML file")
    return spec


def _check_experiment(spec: DictConfig, i: int) -> None:
    """Experiment ``i`` of a merged profile: its data reference, dataset, cells, config files,
    seeds and ``schedule_from``.

    Raises:
        ProfileError: naming the key, the value and what is allowed.
    """
    e = spec.experiments[i]
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


# ----------------------------------------------------------------------------- data


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


# ----------------------------------------------------------------------------- the runs


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
        return self.out_dir / rundir.LOG

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
