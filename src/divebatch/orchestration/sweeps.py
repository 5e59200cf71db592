"""wandb sweeps: one sweep YAML, run online by wandb agents or offline as a matrix of runs.

A sweep YAML in ``configs/sweeps/`` is plain wandb sweep configuration. Its ``command`` runs
``divebatch train CONFIG.yaml KEY=VALUE ... ${args_no_hyphens}``: the wandb agent replaces
``${args_no_hyphens}`` by one ``name=value`` item per swept parameter, which is exactly an omegaconf
dotlist override, so training has no sweep-specific code path. Each run's directory comes from the
fixed override ``out_dir=runs/sweeps/<name>/${oc.env:WANDB_RUN_ID}``: omegaconf resolves it from the
run id the agent exports before it starts the command, so every agent run gets its own directory.

Online (``wandb sweep`` + ``wandb agent``) needs nothing from this module. Offline there is no
second driver: :func:`points` turns the sweep into a fixed list of parameter sets (the grid, or
``run_cap`` draws of wandb's ``sweeps`` engine seeded by the sweep's name), and a profile
experiment with ``sweep: X.yaml`` (:mod:`divebatch.orchestration.replicate`) trains one run per point and seed,
with resume, then reports, like any other cell of the matrix. ``divebatch sweep X.yaml --local``
is that with a one-experiment profile made from the sweep. A bayes search needs the results of
the runs before it, which a fixed matrix does not have: offline it draws its points at random from
the same ranges (said on the command line); the Bayesian search is the online one.

Seed sweeps are not files: ``divebatch sweep --seeds PROFILE/EXPERIMENT/METHOD`` writes the grid
over the profile's seeds of one profile cell (:func:`seed_sweep`), the same runs as
``divebatch replicate PROFILE`` trains, for wandb agents.

Bad input fails before any run starts: :func:`load_sweep` checks the YAML against the ``sweeps``
JSON schema, every parameter name against :func:`divebatch.config.config_keys`, and every grid point
(or every parameter's range) through :func:`divebatch.config.load_config`.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import random
import sys
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from divebatch import rundir
from divebatch.config import ConfigError, config_keys, load_config

# a sweep metric is a summary.json key or a metrics.csv column (divebatch.rundir owns both lists)
from divebatch.rundir import METRIC_COLUMNS, SUMMARY_KEYS

with warnings.catch_warnings():  # sweeps 0.3.0 uses pydantic v1 config names; harmless under v2
    warnings.simplefilter("ignore", UserWarning)
    import sweeps
    from sweeps.config.schema import validator as _schema_validator
    from sweeps.params import HyperParameter

ARGS_MACRO = "${args_no_hyphens}"  # wandb agent: one "name=value" per parameter (an omegaconf dotlist)
RUN_ID_ENV = "WANDB_RUN_ID"  # exported by `wandb agent` before it starts each run's command
# Keys each run of the matrix gets from its profile (divebatch.orchestration.replicate.expand); a sweep must not
# search over them, and its fixed values of them are for agents only.
MATRIX_KEYS = ("out_dir", "wandb.mode", "profile", "progress")
GRID_CHECK_LIMIT = 2000  # grid points validated one by one before any run starts
# sweeps.params distributions whose min/max are parameter values (log_uniform's are exponents)
VALUE_BOUNDED = (
    "int_uniform",
    "uniform",
    "q_uniform",
    "log_uniform_values",
    "q_log_uniform_values",
    "inv_log_uniform_values",
)


class SweepError(ValueError):
    """A sweep YAML or a sweep root cannot be used; the message names the parameter or key at fault."""


# ----------------------------------------------------------------------------- sweep YAML


@dataclass
class Sweep:
    """A validated sweep YAML.

    Attributes:
        path: the YAML file.
        config: its content (a wandb sweep configuration dict).
        name: ``config["name"]``, else the file stem; names the default root ``runs/sweeps/<name>``.
        train_config: the ``CONFIG.yaml`` of ``divebatch train`` in the command.
        fixed: the command's ``KEY=VALUE`` items around ``${args_no_hyphens}`` (same for every run).
        train_index: index of ``train`` in the expanded command.
    """

    path: Path
    config: dict
    name: str
    train_config: str
    fixed: list[str]
    train_index: int

    @property
    def params(self) -> list[str]:
        return list(self.config["parameters"])

    @property
    def method(self) -> str:
        return self.config["method"]

    @property
    def profile(self) -> str | None:
        return _fixed_value(self.fixed, "profile")

    def matrix_overrides(self) -> list[str]:
        """The command's fixed overrides that a matrix run keeps (all but :data:`MATRIX_KEYS`)."""
        return [item for item in self.fixed if item.split("=", 1)[0] not in MATRIX_KEYS]


def _fixed_value(fixed: list[str], key: str) -> str | None:
    values = [item.split("=", 1)[1] for item in fixed if item.split("=", 1)[0] == key]
    return values[-1] if values else None


def _schema_errors(cfg: dict) -> list[str]:
    """wandb's schema violations, each prefixed with where it is (``parameter 'method.delta'``)."""
    out = []
    located = set()
    for err in _schema_validator.iter_errors(cfg):
        path = list(err.absolute_path)
        if len(path) >= 2 and path[0] == "parameters":
            where = f"parameter {path[1]!r}" + (f" ({'.'.join(map(str, path[2:]))})" if path[2:] else "")
        else:
            where = ".".join(map(str, path)) or "top level"
        out.append(f"{where}: {err.message}")
        located.add(err.message)
    try:
        rest = sweeps.schema_violations_from_proposed_config(cfg)
    except ValueError as err:  # raised for a parameter that is not a mapping
        rest = [str(err)]
    out += [m for m in rest if m not in located]
    return out


def _command_structure(cfg: dict, where: str) -> tuple[str, list[str], int]:
    command = cfg.get("command")
    usage = (
        f"command: [divebatch, train, CONFIG.yaml, wandb.mode=online, profile=NAME, "
        f'"out_dir=runs/sweeps/NAME/${{oc.env:{RUN_ID_ENV}}}", "{ARGS_MACRO}"]'
    )
    if not isinstance(command, list) or not all(isinstance(c, (str, int, float)) for c in command):
        raise SweepError(f"{where}: key 'command' must be a list of strings; allowed: {usage}")
    command = [str(c) for c in command]
    idx = [i for i, c in enumerate(command) if c == "train" and i > 0 and command[i - 1].endswith("divebatch")]
    if not idx or idx[0] + 1 >= len(command):
        raise SweepError(f"{where}: command {command} does not run `divebatch train CONFIG.yaml`; allowed: {usage}")
    i = idx[0]
    train_config = command[i + 1]
    if train_config.startswith("${") or "=" in train_config:
        raise SweepError(
            f"{where}: command item after 'train' is {train_config!r}; allowed: the training CONFIG.yaml path. {usage}"
        )
    if ARGS_MACRO not in command:
        other = [c for c in command if c in ("${args}", "${args_no_boolean_flags}", "${args_json}")]
        raise SweepError(
            f"{where}: command has {other or 'no parameter macro'}; allowed: {ARGS_MACRO!r} "
            f"(divebatch train takes KEY=VALUE overrides without hyphens)"
        )
    fixed = []
    for item in command[i + 2 :]:
        if item.startswith("${") and item.endswith("}"):
            continue
        if "=" not in item:
            raise SweepError(f"{where}: command item {item!r} after the config file; allowed: KEY=VALUE overrides")
        fixed.append(item)
    return train_config, fixed, i


def _suggest(name: str, keys: list[str]) -> str:
    close = difflib.get_close_matches(name, keys, n=3)
    return f"did you mean {' | '.join(close)}? " if close else ""


def load_sweep(path: str | Path) -> Sweep:
    """Read a sweep YAML and check everything that can be checked without training.

    Checks: wandb's sweep schema (``sweeps`` package); ``program`` present (``wandb agent`` needs it);
    the command runs ``divebatch train CONFIG.yaml`` with ``${args_no_hyphens}``, sets
    ``wandb.mode=online`` (else an agent's runs never report) and an ``out_dir`` holding
    ``${oc.env:WANDB_RUN_ID}`` (one directory per run); every parameter is a training config key
    (:func:`divebatch.config.config_keys`), not one the matrix sets per run (:data:`MATRIX_KEYS`) and not
    also fixed in the command; the metric is a ``summary.json`` key or a ``metrics.csv`` column.
    Values are checked by :func:`check_values`.

    Raises:
        SweepError: naming the parameter or key at fault and what is allowed.
        FileNotFoundError: ``path`` does not exist.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"sweep file not found: {path}")
    try:
        cfg = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise SweepError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(cfg, dict):
        raise SweepError(f"{path}: a sweep YAML must be a mapping with method, parameters, command, ...")
    problems = _schema_errors(cfg)
    if problems:
        raise SweepError(f"{path} is rejected by wandb's sweep schema:\n  - " + "\n  - ".join(problems))
    if not cfg.get("program"):
        raise SweepError(
            f"{path}: key 'program' is missing; `wandb agent` requires it (allowed: any file, e.g. "
            f"program: src/divebatch/cli.py; the command decides what runs)"
        )
    train_config, fixed, train_index = _command_structure(cfg, str(path))
    keys = config_keys()
    for item in fixed:
        key = item.split("=", 1)[0]
        if key not in keys:
            raise SweepError(
                f"{path}: command override {item!r}: {key!r} is not a training config key; "
                f"{_suggest(key, keys)}allowed: divebatch.config.config_keys()"
            )
    mode = _fixed_value(fixed, "wandb.mode")
    if mode != "online":
        raise SweepError(
            f"{path}: command sets wandb.mode={mode}; allowed: wandb.mode=online (a wandb agent only "
            f"sees runs that log online; `--local` switches its runs to offline itself)"
        )
    out_dir = _fixed_value(fixed, "out_dir") or ""
    if f"oc.env:{RUN_ID_ENV}" not in out_dir:
        raise SweepError(
            f"{path}: command sets out_dir={out_dir or None!r}; allowed: a path holding "
            f"${{oc.env:{RUN_ID_ENV}}} (e.g. runs/sweeps/NAME/${{oc.env:{RUN_ID_ENV}}}), so every "
            f"agent run writes its own run directory"
        )
    fixed_keys = {item.split("=", 1)[0] for item in fixed}
    for name, spec in cfg["parameters"].items():
        if isinstance(spec, dict) and "parameters" in spec:
            raise SweepError(
                f"{path}: parameter {name!r} is nested; allowed: flat dotted names such as "
                f"'method.delta' (the agent passes them as KEY=VALUE overrides)"
            )
        if name not in keys:
            raise SweepError(
                f"{path}: parameter {name!r} is not a training config key; {_suggest(name, keys)}"
                f"allowed: divebatch.config.config_keys() (e.g. method.delta, optim.lr, seed)"
            )
        if name in MATRIX_KEYS:
            raise SweepError(
                f"{path}: parameter {name!r} is set per run by the matrix and the agent's command; "
                f"allowed: any other config key"
            )
        if name in fixed_keys:
            raise SweepError(f"{path}: parameter {name!r} is also fixed in the command; allowed: one or the other")
    metric = (cfg.get("metric") or {}).get("name")
    if metric is not None:
        allowed = (*SUMMARY_KEYS, *METRIC_COLUMNS)
        if metric not in allowed:
            raise SweepError(
                f"{path}: metric.name={metric!r}; {_suggest(metric, list(allowed))}allowed: a summary.json "
                f"key or metrics.csv column: {' | '.join(allowed)}"
            )
    return Sweep(path, cfg, str(cfg.get("name") or path.stem), train_config, fixed, train_index)


def _param_candidates(name: str, spec: dict) -> list[Any]:
    """Values to validate for one parameter: all categorical values, or the range's ends and middle."""
    hp = HyperParameter(name, dict(spec))
    if hp.type == HyperParameter.CONSTANT:
        return [hp.config["value"]]
    if hp.type == HyperParameter.CATEGORICAL:
        return list(hp.config["values"])
    if hp.config.get("distribution") in VALUE_BOUNDED:
        return [hp.config["min"], hp.ppf(0.5), hp.config["max"]]
    return [v for v in (hp.ppf(0.001), hp.ppf(0.5), hp.ppf(0.999)) if np.isfinite(v)]


def grid_points(sweep: Sweep) -> list[dict]:
    """Every run config of a grid sweep, in wandb's order (``{name: {"value": v}}`` each).

    Raises:
        SweepError: the sweep is not a grid.
    """
    if sweep.method != "grid":
        raise SweepError(f"{sweep.path}: method={sweep.method!r} has no fixed list of runs; allowed here: grid")
    size = int(np.prod([len(_param_candidates(n, s)) for n, s in sweep.config["parameters"].items()]))
    runs = sweeps.next_runs(sweep.config, [], validate=False, n=size)
    return [r.config for r in runs if r is not None]


def check_values(sweep: Sweep, extra: list[str] | tuple[str, ...] = (), check_data: bool = True) -> int:
    """Build the training config of every grid point (grid) or of each parameter's candidate values
    (random, bayes: range ends and middle, one parameter at a time) through ``load_config``.

    Args:
        extra: overrides appended after the parameters (the local driver's, or a test's ``data.path``).
        check_data: also check that the data files exist (``load_config(check_data=...)``).
    Returns:
        The number of configs checked.
    Raises:
        SweepError: naming the config file, the parameter values and the key at fault.
    """
    if sweep.method == "grid":
        points = grid_points(sweep)[:GRID_CHECK_LIMIT]
    else:
        points = [
            {name: {"value": v}}
            for name, spec in sweep.config["parameters"].items()
            for v in _param_candidates(name, spec)
        ]
    for point in points:
        overrides = [*sweep.fixed, *_args_no_hyphens(point), *extra]
        try:
            load_config(sweep.train_config, overrides, check_data=check_data)
        except FileNotFoundError as err:
            raise SweepError(
                f"{sweep.path}: {err} (paths in a sweep command are relative to the folder the agent "
                f"runs in: the repository root)"
            ) from None
        except ConfigError as err:
            values = " ".join(_args_no_hyphens(point))
            raise SweepError(f"{sweep.path}: training config {sweep.train_config} with {values}: {err}") from None
    return len(points)


# ----------------------------------------------------------------------------- seed sweeps of a profile


def seed_sweep(profile: str | Path, cell: str) -> dict:
    """The wandb grid sweep over the seeds of one cell of a profile (``configs/profiles/``).

    Every run trains what ``divebatch replicate PROFILE`` trains for that cell and seed (its
    config, the profile's and experiment's overrides, ``data.path``, ``profile``), logging online,
    in ``runs/sweeps/seeds_<experiment>_<method>/<wandb run id>``.

    Args:
        profile: a profile name or YAML path.
        cell: ``EXPERIMENT/METHOD`` as in the profile's run directories, e.g. ``cifar10/divebatch``.
    Returns:
        The sweep configuration (a dict, as a sweep YAML holds it).
    Raises:
        SweepError: ``cell`` is not a cell of the profile (names the cells that are).
        divebatch.orchestration.replicate.ProfileError: a bad profile.
    """
    from divebatch.orchestration import replicate

    spec = replicate.load_profile(profile)
    runs = replicate.expand(spec, Path("runs") / spec.name)
    cells = list(dict.fromkeys(run.name.rpartition("/seed")[0] for run in runs))
    mine = [run for run in runs if run.name.rpartition("/seed")[0] == cell]
    if not mine:
        raise SweepError(
            f"invalid --seeds {spec.name}/{cell}; allowed: {spec.name}/EXPERIMENT/METHOD with "
            f"EXPERIMENT/METHOD one of {' | '.join(cells)}"
        )
    # the profile's command line without what differs per run, and with what an agent needs
    per_run = ("seed", "out_dir", "progress", "wandb.mode")
    fixed = [o for o in mine[0].overrides if o.split("=", 1)[0] not in per_run]
    name = f"seeds_{cell.replace('/', '_')}"
    seeds = [run.seed for run in mine]
    return {
        "name": name,
        "description": f"{cell} of profile {spec.name}, seeds {seeds} (divebatch sweep --seeds {spec.name}/{cell})",
        "project": "divebatch",
        "program": "src/divebatch/cli.py",
        "method": "grid",
        "metric": {"name": "best_val_acc", "goal": "maximize"},
        "parameters": {"seed": {"values": seeds}},
        "command": [
            "divebatch",
            "train",
            mine[0].config,
            *fixed,
            "wandb.mode=online",
            f"out_dir=runs/sweeps/{name}/${{oc.env:{RUN_ID_ENV}}}",
            ARGS_MACRO,
        ],
    }


def write_seed_sweep(spec: str, path: str | Path | None = None) -> Path:
    """Write :func:`seed_sweep` of ``spec`` = ``PROFILE/EXPERIMENT/METHOD`` as a sweep YAML.

    Args:
        path: default ``runs/sweeps/seeds_<experiment>_<method>.yaml``.
    Returns:
        The path written.
    Raises:
        SweepError: ``spec`` has no ``/`` or names no cell of the profile.
    """
    profile, sep, cell = spec.partition("/")
    if not sep or not cell:
        raise SweepError(f"invalid --seeds {spec!r}; allowed: PROFILE/EXPERIMENT/METHOD, e.g. paper/cifar10/divebatch")
    config = seed_sweep(profile, cell)
    path = Path(path) if path is not None else Path("runs") / "sweeps" / f"{config['name']}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        f"# Generated by divebatch sweep --seeds {spec} (configs/profiles/; docs/sweeps.md)\n"
        + yaml.safe_dump(config, sort_keys=False)
    )
    return path


# ----------------------------------------------------------------------------- points of the matrix


def _args_no_hyphens(run_config: dict) -> list[str]:
    """wandb agent's ``${args_no_hyphens}`` items (``name=value``, value by ``str``) of one proposal."""
    from wandb.sdk.launch.sweeps.utils import create_sweep_command_args

    return create_sweep_command_args({"args": run_config})["args_no_hyphens"]


@contextlib.contextmanager
def _seeded(key: str):
    """Seed Python's and numpy's global RNGs (the sweeps package samples from them) from ``key``,
    so the draws of a random sweep are the same every time; restore them afterwards."""
    py_state, np_state = random.getstate(), np.random.get_state()
    seed = zlib.crc32(key.encode())
    random.seed(seed)
    np.random.seed(seed)
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)


def points(sweep: Sweep, count: int | None = None) -> list[list[str]]:
    """The sweep as a fixed list of runs, each the ``KEY=VALUE`` overrides the agent would pass.

    Grid: every point, in wandb's order. Random and bayes: ``count`` (else the YAML's ``run_cap``)
    draws of wandb's random search over the same parameter specs, seeded by the sweep's name, so a
    longer list starts with the shorter one and a rerun resumes the same runs (bayes: see the
    module docstring).

    Raises:
        SweepError: a random or bayes sweep with neither ``count`` nor ``run_cap``, or ``count`` < 1.
    """
    if sweep.method == "grid":
        configs = grid_points(sweep)
    else:
        n = count if count is not None else sweep.config.get("run_cap")
        if n is None or n < 1:
            raise SweepError(
                f"{sweep.path}: method={sweep.method!r} has no fixed number of runs; allowed: run_cap N in the "
                f"YAML or --count N (N >= 1)"
            )
        with _seeded(sweep.name), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            configs = [r.config for r in sweeps.next_runs({**sweep.config, "method": "random"}, [], n=n)]
    return [_args_no_hyphens(c) for c in configs]


def point_name(overrides: list[str]) -> str:
    """A run-directory name for a point, e.g. ``delta0.02-resize_freq1-max_batch_size128`` (the last
    part of each key; floats to 4 significant digits)."""

    def short(value: str) -> str:
        with contextlib.suppress(ValueError):
            if not value.lstrip("-").isdigit():
                return f"{float(value):.4g}"
        return value

    return "-".join(f"{k.rpartition('.')[2]}{short(v)}" for k, _, v in (o.partition("=") for o in overrides))


# ----------------------------------------------------------------------------- CLI


def local_profile(sweep: Sweep, count: int | None = None, wandb_mode: str = "offline") -> dict:
    """The one-experiment profile (:class:`divebatch.orchestration.replicate.ProfileSpec`) that trains the sweep's
    :func:`points` here, with the training config's own seed; runs tagged with the sweep's profile."""
    seed = int(load_config(sweep.train_config, sweep.matrix_overrides(), check_data=False).seed)
    experiment = {"name": sweep.name, "sweep": str(sweep.path), "seeds": [seed]}
    return {
        "name": sweep.profile or sweep.name,
        "description": f"sweep {sweep.path}, run with divebatch sweep --local",
        "overrides": [f"wandb.mode={wandb_mode}"],
        "experiments": [{**experiment, **({"count": count} if count is not None else {})}],
        "notebooks": False,
    }


def _experiments(profile: Path) -> list[dict]:
    return (yaml.safe_load(profile.read_text()) or {}).get("experiments") or []


def cli(argv: list[str]) -> int:
    """``divebatch sweep SWEEP.yaml [--local [--count N] [--jobs N] [--root DIR]]``, or
    ``divebatch sweep --seeds PROFILE/EXPERIMENT/METHOD [--write PATH]`` (:func:`seed_sweep`)."""
    p = argparse.ArgumentParser(
        prog="divebatch sweep",
        description="Validate a wandb sweep YAML and print how to run it with wandb agents; with --local, "
        "train its points here without network (divebatch replicate with a one-experiment profile), then report.",
    )
    p.add_argument("sweep", nargs="?", help="wandb sweep YAML, e.g. configs/sweeps/smoke_sensitivity.yaml")
    p.add_argument(
        "--seeds",
        metavar="PROFILE/EXPERIMENT/METHOD",
        help="instead of a YAML: write the grid over the profile's seeds of one of its cells (e.g. "
        "paper/cifar10/divebatch) to --write, for wandb agents",
    )
    p.add_argument(
        "--write",
        default=None,
        metavar="PATH",
        help="with --seeds: where to write it (default: runs/sweeps/seeds_<experiment>_<method>.yaml)",
    )
    p.add_argument("--local", action="store_true", help="train the sweep's points here (offline); rerun to resume")
    p.add_argument("--count", type=int, default=None, help="random and bayes: number of runs (default: run_cap)")
    p.add_argument("--jobs", type=int, default=None, help="trainings at once (as divebatch replicate --jobs)")
    p.add_argument("--root", default=None, help="runs directory (default: runs/sweeps/<sweep name>)")
    p.add_argument(
        "--wandb-mode",
        default="offline",
        choices=("offline", "disabled"),
        help="wandb mode of the local runs (default: offline)",
    )
    p.add_argument("--no-report", action="store_true", help="--local without the report at the end")
    p.add_argument("--out", default=".", help="root of paper_tables/<profile>/ and figures/<profile>/ (default: .)")
    args = p.parse_args(argv)
    if (args.sweep is None) == (args.seeds is None):
        p.error("give a sweep YAML or --seeds PROFILE/EXPERIMENT/METHOD (one of the two)")
    from divebatch.orchestration import replicate

    try:
        if args.seeds:
            path = write_seed_sweep(args.seeds, args.write)
            print(f"[sweep] wrote {path}")
            args.sweep = str(path)
        sweep = load_sweep(args.sweep)
        if args.local:
            if sweep.config.get("early_terminate") or sweep.method == "bayes":
                print(
                    "[sweep] note: offline, a bayes sweep is a random search over the same ranges and "
                    "early_terminate does not apply (both need wandb's server: run agents online for them)"
                )
            root = Path(args.root) if args.root else rundir.runs_path("sweeps", sweep.name)
            outcome = replicate.replicate(
                local_profile(sweep, args.count, args.wandb_mode),
                args.jobs,
                runs_dir=root,
                out=args.out,
                report=not args.no_report,
            )
            return outcome.exit_code
        n = check_values(sweep, check_data=False)
        size = f"{len(grid_points(sweep))} runs" if sweep.method == "grid" else f"run_cap {sweep.config.get('run_cap')}"
        print(
            f"{sweep.path}: valid wandb sweep '{sweep.name}' ({sweep.method}, {size}; {n} training config(s) "
            f"checked against {sweep.train_config}; profile {sweep.profile})\n"
            f"online (logged-in wandb user; from the repository root, on every machine):\n"
            f"  uv run wandb sweep {sweep.path}            # prints SWEEP_ID\n"
            f"  CUDA_VISIBLE_DEVICES=0 uv run wandb agent ENTITY/PROJECT/SWEEP_ID   # one agent per GPU\n"
            f"offline (no network; wandb logs offline, `wandb sync` later):\n"
            f"  uv run divebatch sweep {sweep.path} --local [--jobs N] [--count N]   # its points alone"
        )
        for profile in sorted(replicate.PROFILE_DIR.glob("*.yaml")):  # profiles that train it, with references
            if any(e.get("sweep") == Path(args.sweep).as_posix() for e in _experiments(profile)):
                print(f"  bash replicate/all.sh {profile.stem}   # with the profile's other cells ({profile})")
        return 0
    except (SweepError, replicate.ProfileError, FileNotFoundError, ConfigError) as err:
        print(f"divebatch sweep: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
