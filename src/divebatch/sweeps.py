"""wandb sweeps: one sweep YAML, run online by wandb agents or offline by a local driver.

A sweep YAML in ``configs/sweeps/`` is plain wandb sweep configuration. Its ``command`` runs
``divebatch train CONFIG.yaml KEY=VALUE ... ${args_no_hyphens}``: the wandb agent replaces
``${args_no_hyphens}`` by one ``name=value`` item per swept parameter, which is exactly an omegaconf
dotlist override, so training has no sweep-specific code path. Each run's directory comes from the
fixed override ``out_dir=runs/sweeps/<name>/${oc.env:WANDB_RUN_ID}``: omegaconf resolves it from the
run id the agent exports before it starts the command, so every agent run gets its own directory.

Online (``wandb sweep`` + ``wandb agent``) needs nothing from this module. Offline,
``divebatch sweep SWEEP.yaml --local`` is the controller: wandb's own search engine, the ``sweeps``
package (grid, random, bayes), proposes runs from the finished ones; each proposal runs as a
subprocess of the same command with ``wandb.mode=offline`` and ``out_dir=<root>/<run name>``; its
metric is read back from the run directory (``summary.json`` / ``metrics.csv``). The state lives in
``<root>/sweep_state.json``, so an interrupted sweep resumes without repeating a finished run (an
unfinished one resumes from its checkpoint through the trainer's own resume).

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
import datetime as _dt
import difflib
import itertools
import json
import os
import random
import shlex
import sys
import warnings
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from divebatch import launch, rundir
from divebatch.config import ConfigError, config_keys, load_config

# a sweep metric is a summary.json key or a metrics.csv column (divebatch.rundir owns both lists)
from divebatch.rundir import METRIC_COLUMNS, SUMMARY_KEYS

with warnings.catch_warnings():  # sweeps 0.3.0 uses pydantic v1 config names; harmless under v2
    warnings.simplefilter("ignore", UserWarning)
    import sweeps
    from sweeps.config.schema import validator as _schema_validator
    from sweeps.params import HyperParameter

STATE_FILE = "sweep_state.json"
RESULTS_FILE = "sweep_results.csv"
ARGS_MACRO = "${args_no_hyphens}"  # wandb agent: one "name=value" per parameter (an omegaconf dotlist)
RUN_ID_ENV = "WANDB_RUN_ID"  # exported by `wandb agent` before it starts each run's command
# Keys the local driver sets per run; a sweep must not search over them.
DRIVER_KEYS = ("out_dir", "wandb.mode", "wandb.group", "progress")
# Swept keys that make a sweep a sensitivity sweep (analysis.tables.SENSITIVITY_HPARAMS by config key).
SENSITIVITY_KEYS = ("method.delta", "method.resize_freq", "method.max_batch_size")
# Keys the small-batch SGD reference ignores, so it takes none of their values.
ADAPTIVE_KEYS = SENSITIVITY_KEYS + ("method.lr_rescale", "method.diversity_estimator", "method.name")
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

    @property
    def is_sensitivity(self) -> bool:
        return any(p in SENSITIVITY_KEYS for p in self.params)


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
    (:func:`divebatch.config.config_keys`), not one the local driver sets (:data:`DRIVER_KEYS`) and not
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
        if name in DRIVER_KEYS:
            raise SweepError(
                f"{path}: parameter {name!r} is set per run by the sweep itself; allowed: any other config key"
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
        divebatch.replicate.ProfileError: a bad profile.
    """
    from divebatch import replicate

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


# ----------------------------------------------------------------------------- the agent's command


def _args_no_hyphens(run_config: dict) -> list[str]:
    from wandb.sdk.launch.sweeps.utils import create_sweep_command_args

    return create_sweep_command_args({"args": run_config})["args_no_hyphens"]


def agent_command(sweep_config: dict, run_config: dict) -> list[str]:
    """The argv ``wandb agent`` runs for one proposed run.

    Mirrors ``wandb/wandb_agent.py`` (``Agent._command_run``) of wandb 0.31: ``${envvar:NAME}``
    pieces are replaced from the environment, then every list item of the form ``${macro}`` is
    replaced by wandb's ``create_sweep_command_args`` lists (``${args_no_hyphens}``: ``name=value``
    per parameter, the value formatted by Python's ``str``), ``${env}`` by ``/usr/bin/env``,
    ``${interpreter}`` by ``python``, ``${program}`` by the sweep's program.

    Args:
        sweep_config: the sweep YAML as a dict.
        run_config: ``{parameter: {"value": v}}`` (a ``sweeps.SweepRun.config``).
    """
    from wandb.sdk.launch.sweeps.utils import create_sweep_command, create_sweep_command_args

    command = create_sweep_command([str(c) for c in sweep_config["command"]])
    macros = create_sweep_command_args({"args": run_config})
    macros.update(interpreter=["python"], program=[sweep_config.get("program")], env=["/usr/bin/env"])
    argv: list[str] = []
    for item in command:
        if item.startswith("${") and item.endswith("}"):
            argv += macros.get(item[2:-1]) or []
        else:
            argv.append(item)
    return argv


# ----------------------------------------------------------------------------- local (offline) driver


@dataclass
class RunRecord:
    """One run of a local sweep, as kept in ``sweep_state.json``.

    Attributes:
        name: run directory name under the sweep root (``run-000``, ``baseline-sgd-seed1``).
        params: swept values, ``{config key: value}``.
        role: ``sweep`` (proposed by the search) or ``baseline`` (small-batch SGD reference).
        state: ``pending`` | ``running`` | ``finished`` | ``failed`` (``sweeps.RunState`` names).
        metric: the sweep metric read back from the run directory (None until finished).
        returncode: exit status of the last training process.
        seconds: wall-clock seconds of the last training process (start-up included).
    """

    name: str
    params: dict
    role: str = "sweep"
    state: str = "pending"
    metric: float | None = None
    returncode: int | None = None
    seconds: float | None = None


@dataclass
class SweepState:
    """``<root>/sweep_state.json``: the sweep config it was started with and every run so far."""

    name: str
    sweep_config: dict
    created: str
    runs: list[RunRecord] = field(default_factory=list)

    @classmethod
    def load_or_create(cls, root: Path, sweep: Sweep) -> "SweepState":
        """The state of ``root``, or a new one.

        Raises:
            SweepError: ``root`` holds a sweep started from a different YAML (method, metric,
                parameters or command differ), or an unreadable state file.
        """
        path = root / STATE_FILE
        if not path.exists():
            if root.exists() and any(root.iterdir()):
                raise SweepError(
                    f"--root {root} exists and holds files but no {STATE_FILE}; refusing to mix a "
                    f"sweep into it. Use another --root."
                )
            return cls(sweep.name, sweep.config, _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
        try:
            raw = json.loads(path.read_text())
            state = cls(raw["name"], raw["sweep_config"], raw["created"], [RunRecord(**r) for r in raw["runs"]])
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise SweepError(f"{path} is unreadable ({err}); it is left untouched. Use another --root.") from None
        diffs = [
            k for k in ("method", "metric", "parameters", "command") if state.sweep_config.get(k) != sweep.config.get(k)
        ]
        if diffs:
            raise SweepError(
                f"{root} holds sweep {state.name!r} started from a different YAML ({', '.join(diffs)} "
                f"differ from {sweep.path}); use another --root, or restore the YAML to resume"
            )
        return state

    def save(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        tmp = root / f".{STATE_FILE}.tmp"
        tmp.write_text(
            json.dumps({**asdict(self), "runs": [asdict(r) for r in self.runs]}, indent=2, default=_json_default) + "\n"
        )
        os.replace(tmp, root / STATE_FILE)

    def sweep_runs(self) -> list[RunRecord]:
        return [r for r in self.runs if r.role == "sweep"]


def _say(msg: str, file=None) -> None:
    print(msg, file=file or sys.stdout, flush=True)  # progress lines must show even when piped to a log


def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def _plain(value):
    return value.item() if isinstance(value, np.generic) else value


@contextlib.contextmanager
def _seeded(key: str):
    """Seed Python's and numpy's global RNGs (the sweeps package samples from them) from ``key``,
    so a local random or bayes sweep proposes the same runs when repeated; restore them afterwards."""
    py_state, np_state = random.getstate(), np.random.get_state()
    seed = zlib.crc32(key.encode())
    random.seed(seed)
    np.random.seed(seed)
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)


def _read_run(run_dir: Path) -> tuple[dict | None, list[dict]]:
    """(summary.json or None, metrics.csv rows as dicts with float values, empty cells left out;
    no rows when metrics.csv is missing or malformed)."""
    rows = []
    with contextlib.suppress(ValueError):
        rows = [{k: v for k, v in r.items() if v is not None} for r in rundir.read_metrics(run_dir)]
    return rundir.read_summary(run_dir), rows


def _metric(sweep: Sweep, summary: dict | None, rows: list[dict]) -> float | None:
    """The sweep metric of a run: its summary value, else the best (goal) value of that column."""
    metric = sweep.config.get("metric") or {}
    name = metric.get("name")
    if not name:
        return None
    if summary and isinstance(summary.get(name), (int, float)):
        return float(summary[name])
    values = [r[name] for r in rows if name in r and np.isfinite(r[name])]
    if not values:
        return None
    return max(values) if metric.get("goal", "minimize") == "maximize" else min(values)


def _sweep_run(root: Path, rec: RunRecord) -> "sweeps.SweepRun":
    summary, rows = _read_run(root / rec.name)
    return sweeps.SweepRun(
        name=rec.name,
        state=rec.state,
        config={k: {"value": v} for k, v in rec.params.items()},
        summary_metrics=summary or {},
        history=rows,
    )


def baseline_params(sweep: Sweep) -> list[dict]:
    """The small-batch SGD reference runs of a sensitivity sweep: ``method.name=sgd`` on the sweep's
    training config, once per value of a swept ``seed``; other non-adaptive parameters take their
    first value (adaptive ones, :data:`ADAPTIVE_KEYS`, are ignored by SGD)."""
    seeds: list[Any] = [None]
    common: dict = {}
    for name, spec in sweep.config["parameters"].items():
        if name in ADAPTIVE_KEYS:
            continue
        values = _param_candidates(name, spec)
        if name == "seed":
            seeds = values
        else:
            common[name] = values[0]
            if len(values) > 1:
                _say(f"[sweep] note: the SGD reference uses {name}={values[0]} (first of {len(values)} values)")
    return [{**common, "method.name": "sgd", **({"seed": s} if s is not None else {})} for s in seeds]


def _baseline_name(params: dict) -> str:
    return f"baseline-sgd-seed{params['seed']}" if "seed" in params else "baseline-sgd"


def local_command(sweep: Sweep, params: dict, out_dir: Path, wandb_mode: str = "offline") -> list[str]:
    """The argv of one local run: the agent's command (:func:`agent_command`) from ``train`` on,
    started as ``python -m divebatch`` of this interpreter, with the driver's overrides appended
    (``wandb.mode``, ``wandb.group=<sweep name>``, ``out_dir``, ``progress=false``; the last value of a
    key wins in an omegaconf dotlist)."""
    argv = agent_command(sweep.config, {k: {"value": v} for k, v in params.items()})
    return [
        sys.executable,
        "-m",
        "divebatch",
        *argv[sweep.train_index :],
        f"wandb.mode={wandb_mode}",
        f"wandb.group={sweep.name}",
        f"out_dir={out_dir}",
        "progress=false",
    ]


def run_local(
    sweep: Sweep,
    root: str | Path | None = None,
    count: int | None = None,
    jobs: int = 1,
    wandb_mode: str = "offline",
    baseline: bool = True,
    check_data: bool = True,
) -> SweepState:
    """Run a sweep on this machine (see module docstring) and return its final state.

    Unfinished runs of an earlier invocation go first (the trainer resumes them from their
    checkpoint), then new proposals until the grid is exhausted or the sweep holds ``count`` runs
    (``--count``, else the YAML's ``run_cap``). Random and bayes sweeps need one of the two.

    Args:
        root: sweep root (default ``runs/sweeps/<name>``); one run directory per run inside.
        count: total number of sweep runs in the root (earlier invocations included).
        jobs: trainings at once (:class:`divebatch.launch.Pool`): with GPUs each is pinned to the
            least busy one with ``CUDA_VISIBLE_DEVICES``; every one gets ``cores / jobs`` threads.
        wandb_mode: ``offline`` (syncable later with ``wandb sync``) or ``disabled``.
        baseline: for a sensitivity sweep, also train the small-batch SGD reference
            (:func:`baseline_params`) that speed-ups are measured against.
        check_data: check before any run that the data files of every config exist.
    Returns:
        The :class:`SweepState` (also in ``<root>/sweep_state.json``).
    Raises:
        SweepError: bad sweep or root; a random/bayes sweep without a count. Nothing has run then.
    """
    if wandb_mode not in ("offline", "disabled"):
        raise SweepError(f"invalid wandb mode {wandb_mode!r} for a local sweep; allowed: offline | disabled")
    if jobs < 1:
        raise SweepError(f"invalid --jobs {jobs}; allowed: an integer >= 1")
    cap = count if count is not None else sweep.config.get("run_cap")
    if sweep.method != "grid" and cap is None:
        raise SweepError(
            f"{sweep.path}: method={sweep.method!r} never runs out of proposals; allowed: give "
            f"--count N (or run_cap in the YAML)"
        )
    root = Path(root) if root is not None else rundir.runs_path("sweeps", sweep.name)
    driver_extra = [f"wandb.mode={wandb_mode}", f"out_dir={root / 'check'}", "progress=false"]
    n_checked = check_values(sweep, driver_extra, check_data=check_data)
    state = SweepState.load_or_create(root, sweep)
    grid_size = len(grid_points(sweep)) if sweep.method == "grid" else None
    total = min(x for x in (grid_size, cap) if x is not None)
    _say(
        f"[sweep] {sweep.name}: {sweep.method} search, {len(state.sweep_runs())}/{total} run(s) so far in {root} "
        f"({n_checked} config(s) validated)"
    )

    if baseline and sweep.is_sensitivity and (sweep.config.get("parameters", {}).get("method.name") is None):
        for params in baseline_params(sweep):
            name = _baseline_name(params)
            if not any(r.name == name for r in state.runs):
                state.runs.append(RunRecord(name, params, role="baseline"))
    # a run the driver lost track of may have finished anyway
    for rec in state.runs:
        if rec.state != "finished":
            summary, rows = _read_run(root / rec.name)
            if summary and summary.get("finished"):
                rec.state, rec.metric = "finished", _metric(sweep, summary, rows)
    state.save(root)

    records: dict[str, RunRecord] = {}
    failed = 0

    def propose() -> RunRecord | None:
        if len(state.sweep_runs()) >= total:
            return None
        history = [_sweep_run(root, r) for r in state.sweep_runs()]
        with _seeded(f"{sweep.name}/{len(history)}"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            proposal = sweeps.next_run(sweep.config, history, validate=True)
        if proposal is None:
            return None
        params = {k: _plain(v["value"]) for k, v in proposal.config.items()}
        rec = RunRecord(f"run-{len(state.sweep_runs()):03d}", params)
        state.runs.append(rec)
        return rec

    def tasks():  # unfinished runs first, then proposals, each made only when a slot frees
        for rec in itertools.chain([r for r in state.runs if r.state != "finished"], iter(propose, None)):
            records[rec.name] = rec
            yield launch.Task(
                rec.name,
                local_command(sweep, rec.params, root / rec.name, wandb_mode),
                root / "logs" / f"{rec.name}.log",
            )

    def start(t: launch.Task) -> None:
        records[t.name].state = "running"
        state.save(root)
        values = " ".join(f"{k}={v}" for k, v in records[t.name].params.items())
        _say(f"[sweep] {t.name} started{f' on GPU {t.gpu}' if t.gpu is not None else ''}: {values}")

    def finish(t: launch.Task) -> None:
        nonlocal failed
        rec = records[t.name]
        rec.returncode, rec.seconds = t.returncode, round(t.seconds, 1)
        summary, rows = _read_run(root / rec.name)
        if t.returncode == 0 and summary and summary.get("finished"):
            rec.state, rec.metric = "finished", _metric(sweep, summary, rows)
            metric = sweep.config.get("metric", {}).get("name")
            shown = f", {metric}={rec.metric:.4g}" if rec.metric is not None else ""
            _say(f"[sweep] {rec.name} finished in {rec.seconds:.0f} s{shown}")
        else:
            rec.state = "failed"
            failed += 1
            _say(
                f"[sweep] {rec.name} failed (exit {t.returncode}); last lines of {t.log}:\n"
                f"{launch.tail(t.log, 8, '    ')}",
                file=sys.stderr,
            )
        state.save(root)

    try:
        launch.Pool(jobs, log=lambda msg: _say(msg, file=sys.stderr), prefix="[sweep]").run(tasks(), start, finish)
    except KeyboardInterrupt:
        state.save(root)
        raise
    write_results(state, root, sweep)
    done = sum(r.state == "finished" for r in state.runs)
    _say(
        f"[sweep] {sweep.name}: {done}/{len(state.runs)} run(s) finished, {failed} failed in this invocation; "
        f"state in {root / STATE_FILE}"
    )
    return state


def write_results(state: SweepState, root: Path, sweep: Sweep) -> Path:
    """``<root>/sweep_results.csv``: one row per run (name, role, state, metric, parameters), best
    first when the sweep has a metric."""
    import pandas as pd

    metric = sweep.config.get("metric") or {}
    params = list(dict.fromkeys([*sweep.params, *(k for r in state.runs for k in r.params)]))
    df = pd.DataFrame(
        [
            {
                "run": r.name,
                "role": r.role,
                "state": r.state,
                metric.get("name", "metric"): r.metric,
                **{k: r.params.get(k) for k in params},
                "seconds": r.seconds,
            }
            for r in state.runs
        ]
    )
    df[params] = df[params].convert_dtypes()  # an int parameter stays int next to runs without it
    if metric.get("name") and len(df):
        df = df.sort_values(metric["name"], ascending=metric.get("goal") != "maximize", na_position="last")
    path = root / RESULTS_FILE
    df.to_csv(path, index=False)
    return path


def report(root: str | Path, out: str | Path = ".") -> list[Path]:
    """Tables and figures of the runs under a sweep root, via ``divebatch.analysis`` (as
    ``divebatch report ROOT --out OUT``): for each profile found, ``OUT/paper_tables/<profile>/`` and
    ``OUT/figures/<profile>/``, with the sensitivity table and figure when the runs vary delta,
    resize_freq or max batch size.

    Returns:
        The paths written.
    """
    from divebatch.analysis.collect import collect_runs
    from divebatch.analysis.report import VERDICT_FILE, analyse, write_report

    runs = collect_runs(root)
    written = []
    for profile in runs.profiles:
        res = analyse(runs.select(profile), profile, Path(out) / "paper_tables" / profile / VERDICT_FILE)
        written += write_report(res, out, roots=[str(root)])
        if res.sensitivity is not None:
            _say(
                f"[sweep] sensitivity table: {Path(out) / 'paper_tables' / profile / 'sensitivity.md'}; "
                f"figure: {Path(out) / 'figures' / profile / 'sensitivity.png'}"
            )
    return written


# ----------------------------------------------------------------------------- CLI


def _online_help(sweep: Sweep) -> str:
    lines = [
        "online (logged-in wandb user; run from the repository root, on every machine):",
        f"  uv run wandb sweep {sweep.path}            # prints SWEEP_ID",
        "  CUDA_VISIBLE_DEVICES=0 uv run wandb agent ENTITY/PROJECT/SWEEP_ID   # one agent per GPU",
    ]
    if sweep.is_sensitivity:
        root = Path(_fixed_value(sweep.fixed, "out_dir")).parent
        for params in baseline_params(sweep):
            argv = [
                "divebatch",
                "train",
                sweep.train_config,
                *[f for f in sweep.fixed if not f.startswith("out_dir=")],
                *[f"{k}={v}" for k, v in params.items()],
                f"out_dir={root / _baseline_name(params)}",
            ]
            lines.append(f"  SGD reference, once: uv run {shlex.join(argv)}")
    lines += [
        "offline (no network; wandb logs offline, `wandb sync` later):",
        f"  uv run divebatch sweep {sweep.path} --local [--jobs N] [--count N]",
    ]
    return "\n".join(lines)


def cli(argv: list[str]) -> int:
    """``divebatch sweep SWEEP.yaml [--local [--count N] [--jobs N] [--root DIR]] [--report]``, or
    ``divebatch sweep --seeds PROFILE/EXPERIMENT/METHOD [--write PATH] [--local ...]`` (:func:`seed_sweep`)."""
    p = argparse.ArgumentParser(
        prog="divebatch sweep",
        description="Validate a wandb sweep YAML; with --local, run it on this machine without network "
        "(wandb's sweeps engine proposes, runs log to wandb offline); then report.",
    )
    p.add_argument("sweep", nargs="?", help="wandb sweep YAML, e.g. configs/sweeps/smoke_sensitivity.yaml")
    p.add_argument(
        "--seeds",
        metavar="PROFILE/EXPERIMENT/METHOD",
        help="instead of a YAML: the grid over the profile's seeds of one of its cells (e.g. "
        "paper/cifar10/divebatch), written to --write (then as a sweep YAML)",
    )
    p.add_argument(
        "--write",
        default=None,
        metavar="PATH",
        help="with --seeds: where to write it (default: runs/sweeps/seeds_<experiment>_<method>.yaml)",
    )
    p.add_argument("--local", action="store_true", help="run the sweep here (offline); rerun to resume")
    p.add_argument(
        "--count", type=int, default=None, help="total sweep runs in the root (default: the whole grid, or run_cap)"
    )
    p.add_argument("--jobs", type=int, default=1, help="trainings at once (GPUs: one each, round-robin)")
    p.add_argument("--root", default=None, help="sweep root (default: runs/sweeps/<sweep name>)")
    p.add_argument(
        "--wandb-mode",
        default="offline",
        choices=("offline", "disabled"),
        help="wandb mode of the local runs (default: offline)",
    )
    p.add_argument(
        "--no-baseline", action="store_true", help="sensitivity sweeps: skip the small-batch SGD reference runs"
    )
    p.add_argument(
        "--report",
        action="store_true",
        help="only write the tables and figures of the runs in the root (done after --local anyway)",
    )
    p.add_argument("--no-report", action="store_true", help="--local without the report at the end")
    p.add_argument("--out", default=".", help="root of paper_tables/<profile>/ and figures/<profile>/ (default: .)")
    args = p.parse_args(argv)
    if (args.sweep is None) == (args.seeds is None):
        p.error("give a sweep YAML or --seeds PROFILE/EXPERIMENT/METHOD (one of the two)")
    try:
        if args.seeds:
            from divebatch.replicate import ProfileError

            try:
                args.sweep = str(write_seed_sweep(args.seeds, args.write))
            except ProfileError as err:
                raise SweepError(str(err)) from None
            print(f"[sweep] wrote {args.sweep}")
        sweep = load_sweep(args.sweep)
        root = Path(args.root) if args.root else rundir.runs_path("sweeps", sweep.name)
        if args.report:
            report(root, args.out)
            return 0
        if not args.local:
            n = check_values(sweep, check_data=False)
            size = (
                f"{len(grid_points(sweep))} runs"
                if sweep.method == "grid"
                else f"run_cap {sweep.config.get('run_cap', 'none')}"
            )
            print(
                f"{sweep.path}: valid wandb sweep '{sweep.name}' ({sweep.method}, {size}; {n} training config(s) "
                f"checked against {sweep.train_config}; profile {sweep.profile})"
            )
            print(_online_help(sweep))
            return 0
        if sweep.config.get("early_terminate"):
            print("[sweep] note: early_terminate applies to online agents only; local runs train to the end")
        state = run_local(sweep, root, args.count, args.jobs, args.wandb_mode, baseline=not args.no_baseline)
    except (SweepError, FileNotFoundError, ConfigError) as err:
        print(f"divebatch sweep: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    status = 0 if all(r.state == "finished" for r in state.runs) else 1
    if not args.no_report and any(r.state == "finished" for r in state.runs):
        try:
            report(root, args.out)
        except Exception as err:  # the runs are safe on disk; the report can be redone alone
            print(
                f"divebatch sweep: report failed ({type(err).__name__}: {err}); rerun it with "
                f"`divebatch sweep {args.sweep} --report` or `divebatch report {root}`",
                file=sys.stderr,
            )
            status = 1
    return status
