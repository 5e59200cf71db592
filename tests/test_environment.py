"""The three descriptions of the environment agree: pyproject pins, uv.lock, environment.yml."""

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _pyproject_pins() -> dict[str, str]:
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    pins = {}
    for spec in meta["project"]["dependencies"] + meta["dependency-groups"]["dev"]:
        name, sep, version = spec.partition("==")
        assert sep, f"pyproject.toml dependency {spec!r} is not an exact pin (name==version)"
        pins[name.lower()] = version
    return pins


def test_environment_yml_has_the_same_pins():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    conda_pins = {s.split("==")[0].lower(): s.split("==")[1] for s in pip}
    assert conda_pins == _pyproject_pins()
    assert "python=3.11" in env["dependencies"]


def test_lock_file_resolves_the_pins():
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    locked = {p["name"].lower(): p["version"] for p in lock["package"]}
    for name, version in _pyproject_pins().items():
        key = re.sub(r"[-_.]+", "-", name)
        assert locked.get(key) == version, f"uv.lock has {key}=={locked.get(key)}, pyproject pins {version}"


def test_torch_and_torchvision_are_a_matching_pair():
    import torch
    import torchvision

    pins = _pyproject_pins()
    assert torch.__version__.split("+")[0] == pins["torch"]
    assert torchvision.__version__.split("+")[0] == pins["torchvision"]
