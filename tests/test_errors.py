"""One error of bad input (divebatch.errors.ConfigError): every module's "invalid <what>: key=value;
allowed: ..." refusal is a ConfigError (or a subclass, importable under its own name) that carries
the key, the value and what is allowed, and whose message is written by ConfigError.of."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml

from divebatch.analysis import authors_reference as reference
from divebatch.config import ConfigError
from divebatch.errors import NOT_SET, UNKNOWN
from divebatch.fetch import DATA_KINDS
from divebatch.orchestration import gpu_results, profiles, sweeps
from divebatch.schedule import ScheduleError, realized_batch_sizes
from divebatch.synthetic import config as synthetic_config


def _sweep(tmp_path: Path, mode: str | None) -> Path:
    """A sweep YAML whose command sets ``wandb.mode=<mode>`` (None: sets none); all else valid."""
    command = ["divebatch", "train", "tiny.yaml", "profile=p", "out_dir=runs/s/${oc.env:WANDB_RUN_ID}"]
    command += [f"wandb.mode={mode}"] if mode is not None else []
    sweep = {
        "name": "s",
        "program": "src/divebatch/cli.py",
        "method": "grid",
        "parameters": {"method.delta": {"values": [0.1]}},
        "command": [*command, "${args_no_hyphens}"],
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    return path


def _reference_with_method(tmp_path: Path, method: str) -> Path:
    raw = pd.read_csv(reference.CSV_PATH, dtype=str, keep_default_na=False)
    raw.loc[0, "method"] = method
    path = tmp_path / "authors_reported.csv"
    raw.to_csv(path, index=False)
    return path


# name -> (the error class, a call with one bad input, key, value, the start of what is allowed, message)
CASES = {
    "profile": (
        profiles.ProfileError,
        lambda tmp: profiles.load_profile({"name": "p", "data": {"d": {"kind": "floppy"}}}),
        "data.d.kind",
        "floppy",
        " | ".join(DATA_KINDS),
        "invalid profile: data.d.kind='floppy'; allowed: bundled | ",
    ),
    "sweep": (
        sweeps.SweepError,
        lambda tmp: sweeps.load_sweep(_sweep(tmp, "offline")),
        "wandb.mode",
        "offline",
        "wandb.mode=online (",
        "sweep.yaml: command sets wandb.mode='offline'; allowed: wandb.mode=online (",
    ),
    "sweep, key not set": (
        sweeps.SweepError,
        lambda tmp: sweeps.load_sweep(_sweep(tmp, None)),
        "wandb.mode",
        NOT_SET,
        "wandb.mode=online (",
        "sweep.yaml: command sets no wandb.mode; allowed: wandb.mode=online (",
    ),
    "schedule": (
        ScheduleError,
        lambda tmp: realized_batch_sizes(tmp / "nowhere"),
        "method.schedule_from",
        "<tmp>/nowhere",
        "a run directory (a folder with config.yaml); none found there",
        "invalid config: method.schedule_from='<tmp>/nowhere'; allowed: a run directory",
    ),
    "synthetic": (
        ConfigError,
        lambda tmp: synthetic_config.load(None, ["knee.tolerance=-1.0"]),
        "knee.tolerance",
        -1.0,
        "a number > 0",
        "invalid config: knee.tolerance=-1.0; allowed: a number > 0",
    ),
    "synthetic data": (
        ConfigError,
        lambda tmp: synthetic_config.load(None, ["data.direction=diagonal"]),
        "data.direction",
        "diagonal",
        "isotropic | ",
        "invalid config: data.direction='diagonal'; allowed: isotropic | ",
    ),
    "gpu results": (
        gpu_results.GpuCheckError,
        lambda tmp: gpu_results.validate_results({"schema": gpu_results.SCHEMA, "mode": "tpu"}),
        "mode",
        "tpu",
        "gpu | cpu-check",
        "invalid results file: mode='tpu'; allowed: gpu | cpu-check",
    ),
    "authors reference": (
        reference.ReferenceError,
        lambda tmp: reference.load_reported(_reference_with_method(tmp, "sgd_tiny")),
        "method",
        ["sgd_tiny"],
        "sgd_small | ",
        "authors_reported.csv: column method=['sgd_tiny']; allowed: sgd_small | ",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_each_refusal_is_a_config_error_with_key_value_allowed(tmp_path, case):
    cls, call, key, value, allowed, message = CASES[case]
    assert issubclass(cls, ConfigError) and issubclass(cls, ValueError)
    with pytest.raises(cls) as caught:
        call(tmp_path)
    err = caught.value
    value = str(tmp_path / "nowhere") if value == "<tmp>/nowhere" else value
    assert (err.key, err.value) == (key, value)
    assert err.allowed.startswith(allowed), err.allowed
    assert message.replace("<tmp>", str(tmp_path)) in str(err)


def test_of_writes_key_value_allowed_and_the_subject():
    err = ConfigError.of("method.delta", -1.0, "a number > 0")
    assert str(err) == "invalid config: method.delta=-1.0; allowed: a number > 0"
    assert (
        str(ConfigError.of("a.b", UNKNOWN, "x", what="unknown key")) == "invalid config: unknown key a.b=?; allowed: x"
    )
    assert (
        str(ConfigError.of("mode", NOT_SET, "on", subject="sweep s.yaml"))
        == "invalid sweep s.yaml: no mode; allowed: on"
    )
    err = profiles.ProfileError.of("seeds", [], "a non-empty list")
    assert type(err) is profiles.ProfileError and str(err) == "invalid profile: seeds=[]; allowed: a non-empty list"


def test_a_run_config_error_names_the_run_and_keeps_key_value_allowed(monkeypatch):
    """`divebatch replicate` says which run's config is refused, and the error still carries the
    key, the value and what is allowed (ConfigError.where)."""
    from conftest import REPO

    from divebatch.orchestration import plan

    monkeypatch.chdir(REPO)
    spec = profiles.load_profile(
        {
            "name": "p",
            "overrides": ["method.delta=-1"],
            "experiments": [{"name": "e", "dataset": "smoke", "methods": ["divebatch"]}],
        }
    )
    runs = profiles.expand(spec, Path("runs/p"), profiles.resolve_data(spec, {}, env={}))
    with pytest.raises(ConfigError) as caught:
        plan.load_configs(runs[:1])
    err = caught.value
    assert str(err).startswith(f"run {runs[0].name} (") and "method.delta=-1" in str(err)
    assert err.key == "method.delta" and err.value == -1 and err.allowed


def test_where_keeps_the_fields_and_can_change_the_class():
    err = ConfigError.of("method.delta", -1.0, "a number > 0").where("sweep s.yaml point 3", sweeps.SweepError)
    assert type(err) is sweeps.SweepError
    assert str(err) == "sweep s.yaml point 3: invalid config: method.delta=-1.0; allowed: a number > 0"
    assert (err.key, err.value, err.allowed) == ("method.delta", -1.0, "a number > 0")
