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
experiment with ``sweep: X.yaml`` (:mod:`divebatch.orchestration.profiles`) has one cell per point,
trained per seed with resume and reported like any other cell of the matrix. ``divebatch sweep
X.yaml --local`` is that with a one-experiment profile made from the sweep, and ``divebatch sweep
--seeds`` writes the seed grid of a profile cell (both :mod:`divebatch.orchestration.sweep_cli`).
A bayes search needs the results of the runs before it, which a fixed matrix does not have:
offline it draws its points at random from the same ranges (said on the command line); the
Bayesian search is the online one.

Bad input fails before any run starts: :func:`load_sweep` checks the YAML against the ``sweeps``
JSON schema, every parameter name against :func:`divebatch.config.config_keys`, and every grid point
(or every parameter's range) through :func:`divebatch.config.load_config`. The ``sweeps`` package
(which imports scipy, about a second) is imported on first use, not with this module.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import random
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from divebatch.config import ConfigError, config_keys, load_config
from divebatch.errors import NOT_SET

# a sweep metric is a summary.json key or a metrics.csv column (divebatch.rundir owns both lists)
from divebatch.rundir import METRIC_COLUMNS, SUMMARY_KEYS


@functools.lru_cache(maxsize=None)
def wandb_sweeps():
    """wandb's ``sweeps`` package (its schema validator, parameter distributions and grid/random
    search), imported on first use without its pydantic warning (sweeps 0.3.0 uses pydantic v1
    config names; harmless under v2)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        import sweeps
        import sweeps.config.schema
        import sweeps.params
    return sweeps


ARGS_MACRO = "${args_no_hyphens}"  # wandb agent: one "name=value" per parameter (an omegaconf dotlist)
RUN_ID_ENV = "WANDB_RUN_ID"  # exported by `wandb agent` before it starts each run's command
# Keys each run of the matrix gets from its profile (divebatch.orchestration.profiles.expand); a sweep must not
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


class SweepError(ConfigError):
    """A sweep YAML or a sweep root cannot be used; the message names the parameter or key at fault,
    its value and what is allowed (:meth:`~divebatch.errors.ConfigError.of`: ``invalid sweep PATH:
    key=value; allowed: ...``)."""

    subject = "sweep"


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
    for err in wandb_sweeps().config.schema.validator.iter_errors(cfg):
        path = list(err.absolute_path)
        if len(path) >= 2 and path[0] == "parameters":
            where = f"parameter {path[1]!r}" + (f" ({'.'.join(map(str, path[2:]))})" if path[2:] else "")
        else:
            where = ".".join(map(str, path)) or "top level"
        out.append(f"{where}: {err.message}")
        located.add(err.message)
    try:
        rest = wandb_sweeps().schema_violations_from_proposed_config(cfg)
    except ValueError as err:  # raised for a parameter that is not a mapping
        rest = [str(err)]
    out += [m for m in rest if m not in located]
    return out


def _command_structure(cfg: dict, where: str) -> tuple[str, list[str], int]:
    command = cfg.get("command")
    usage = (
        f"[divebatch, train, CONFIG.yaml, wandb.mode=online, profile=NAME, "
        f'"out_dir=runs/sweeps/NAME/${{oc.env:{RUN_ID_ENV}}}", "{ARGS_MACRO}"]'
    )
    subject = f"sweep {where}"
    if not isinstance(command, list) or not all(isinstance(c, (str, int, float)) for c in command):
        raise SweepError.of("command", command, f"a list of strings such as {usage}", subject=subject)
    command = [str(c) for c in command]
    idx = [i for i, c in enumerate(command) if c == "train" and i > 0 and command[i - 1].endswith("divebatch")]
    if not idx or idx[0] + 1 >= len(command):
        allowed = f"a command that runs `divebatch train CONFIG.yaml`, such as {usage}"
        raise SweepError.of("command", command, allowed, subject=subject)
    i = idx[0]
    train_config = command[i + 1]
    if train_config.startswith("${") or "=" in train_config:
        allowed = f"the training CONFIG.yaml path after 'train', as in {usage}"
        raise SweepError.of(f"command[{i + 1}]", train_config, allowed, subject=subject)
    if ARGS_MACRO not in command:
        other = [c for c in command if c in ("${args}", "${args_no_boolean_flags}", "${args_json}")]
        allowed = (
            f"a command with the item {ARGS_MACRO!r} (divebatch train takes KEY=VALUE overrides without "
            f"hyphens{', not ' + ' | '.join(other) if other else ''})"
        )
        raise SweepError.of("command", command, allowed, subject=subject)
    fixed = []
    for j, item in enumerate(command[i + 2 :], i + 2):
        if item.startswith("${") and item.endswith("}"):
            continue
        if "=" not in item:
            raise SweepError.of(f"command[{j}]", item, "a KEY=VALUE override after the config file", subject=subject)
        fixed.append(item)
    return train_config, fixed, i


def _suggest(name: str, keys: list[str]) -> str:
    """`` (did you mean a | b?)`` for the keys close to ``name``; empty when none is."""
    close = difflib.get_close_matches(name, keys, n=3)
    return f" (did you mean {' | '.join(close)}?)" if close else ""


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
        allowed = (
            "any file, e.g. program: src/divebatch/cli.py (`wandb agent` requires it; the command decides what runs)"
        )
        raise SweepError.of("program", cfg.get("program", NOT_SET), allowed, subject=f"sweep {path}")
    train_config, fixed, train_index = _command_structure(cfg, str(path))
    _check_fixed(path, fixed)
    _check_parameters(path, cfg["parameters"], {item.split("=", 1)[0] for item in fixed})
    metric = (cfg.get("metric") or {}).get("name")
    if metric is not None:
        allowed = (*SUMMARY_KEYS, *METRIC_COLUMNS)
        if metric not in allowed:
            names = f"a summary.json key or metrics.csv column{_suggest(metric, list(allowed))}: {' | '.join(allowed)}"
            raise SweepError.of("metric.name", metric, names, subject=f"sweep {path}")
    return Sweep(path, cfg, str(cfg.get("name") or path.stem), train_config, fixed, train_index)


def _check_fixed(path: Path, fixed: list[str]) -> None:
    """The command's fixed ``KEY=VALUE`` items: training config keys, ``wandb.mode=online`` and an
    ``out_dir`` per agent run.

    Raises:
        SweepError: naming the item and what is allowed.
    """
    keys, subject = config_keys(), f"sweep {path}"
    for item in fixed:
        key, _, value = item.partition("=")
        if key not in keys:
            allowed = f"a training config key{_suggest(key, keys)}: divebatch.config.config_keys()"
            raise SweepError.of(key, value, allowed, what="command sets unknown key", subject=subject)
    mode = _fixed_value(fixed, "wandb.mode")
    if mode != "online":
        raise SweepError.of(
            "wandb.mode",
            NOT_SET if mode is None else mode,
            "wandb.mode=online (a wandb agent only sees runs that log online; `--local` switches its runs to "
            "offline itself)",
            what="command sets",
            subject=subject,
        )
    out_dir = _fixed_value(fixed, "out_dir")
    if f"oc.env:{RUN_ID_ENV}" not in (out_dir or ""):
        raise SweepError.of(
            "out_dir",
            NOT_SET if out_dir is None else out_dir,
            f"a path holding ${{oc.env:{RUN_ID_ENV}}} (e.g. runs/sweeps/NAME/${{oc.env:{RUN_ID_ENV}}}), so "
            f"every agent run writes its own run directory",
            what="command sets",
            subject=subject,
        )


def _check_parameters(path: Path, parameters: dict, fixed_keys: set[str]) -> None:
    """Every swept parameter: a flat training config key, not set by the matrix, not fixed too.

    Raises:
        SweepError: naming the parameter and what is allowed.
    """
    keys, subject = config_keys(), f"sweep {path}"
    for name, spec in parameters.items():
        if isinstance(spec, dict) and "parameters" in spec:
            allowed = (
                "a flat parameter, named by a dotted config key such as 'method.delta' (the agent passes it "
                "as KEY=VALUE)"
            )
        elif name not in keys:
            allowed = (
                f"a parameter named by a training config key{_suggest(name, keys)}: divebatch.config.config_keys() "
                f"(e.g. method.delta, optim.lr, seed)"
            )
        elif name in MATRIX_KEYS:
            allowed = (
                f"a parameter named by any config key but {' | '.join(MATRIX_KEYS)} (the matrix and the "
                f"agent's command set them per run)"
            )
        elif name in fixed_keys:
            allowed = "a parameter that the command does not also fix (one or the other)"
        else:
            continue
        raise SweepError.of(f"parameters[{name!r}]", spec, allowed, subject=subject)


def _param_candidates(name: str, spec: dict) -> list[Any]:
    """Values to validate for one parameter: all categorical values, or the range's ends and middle."""
    HyperParameter = wandb_sweeps().params.HyperParameter
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
        raise SweepError.of(
            "method", sweep.method, "grid (the method with a fixed list of runs)", subject=f"sweep {sweep.path}"
        )
    size = int(np.prod([len(_param_candidates(n, s)) for n, s in sweep.config["parameters"].items()]))
    runs = wandb_sweeps().next_runs(sweep.config, [], validate=False, n=size)
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
            raise err.where(f"{sweep.path}: training config {sweep.train_config} with {values}", SweepError) from None
    return len(points)


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
            raise SweepError.of(
                "--count" if count is not None else "run_cap",
                sweep.config.get("run_cap", NOT_SET) if count is None else count,
                f"an integer N >= 1 (method={sweep.method!r} has no fixed number of runs: run_cap N in the "
                f"YAML or --count N)",
                subject=f"sweep {sweep.path}",
            )
        with _seeded(sweep.name), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            configs = [r.config for r in wandb_sweeps().next_runs({**sweep.config, "method": "random"}, [], n=n)]
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
