"""wandb sweeps: shipped sweep YAMLs, the agent's command, bad input, and sweeps as matrix experiments (offline)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from omegaconf import OmegaConf

from divebatch.config import config_exists, config_keys, load_yaml
from divebatch.orchestration import launch, profiles
from divebatch.orchestration import sweep_cli as sc
from divebatch.orchestration import sweeps as sw

wandb_sweeps = sw.wandb_sweeps()  # wandb's `sweeps` package, imported without its pydantic warning

REPO = Path(__file__).resolve().parents[1]
SHIPPED = sorted((REPO / "configs" / "sweeps").glob("*.yaml"))


@pytest.fixture(autouse=True)
def _repo_cwd(monkeypatch):
    # sweep commands name configs relative to the repository root, where agents run
    monkeypatch.chdir(REPO)
    for var in ("WANDB_SWEEP_ID", "WANDB_RUN_ID", "WANDB_SWEEP_PARAM_PATH"):
        monkeypatch.delenv(var, raising=False)


def test_sweeps_are_shipped():
    names = {p.stem for p in SHIPPED}
    assert {"cifar10_sensitivity", "smoke_sensitivity"} <= names


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_shipped_sweep_validates(path):
    raw = yaml.safe_load(path.read_text())
    assert wandb_sweeps.schema_violations_from_proposed_config(raw) == []
    sweep = sw.load_sweep(path)
    keys = set(config_keys())
    assert set(sweep.params) <= keys
    assert config_exists(REPO / sweep.train_config)
    # every grid point / range end builds a valid training config (data files need not be here)
    assert sw.check_values(sweep, check_data=False) >= 1


# the paper cell (13 s: 208 runs resolved) runs with the slow tests; smoke keeps the path in the default suite
@pytest.mark.parametrize("profile", [pytest.param("paper", marks=pytest.mark.slow), "smoke"])
def test_seed_sweep_of_every_profile_cell_trains_the_profiles_runs(profile, tmp_path, monkeypatch):
    """`divebatch sweep --seeds PROFILE/EXPERIMENT/METHOD`: a valid wandb grid over the profile's seeds
    whose agent runs resolve to the configs `divebatch replicate PROFILE` trains (up to where they run)."""
    from divebatch.config import config_diffs, load_config

    spec = profiles.load_profile(profile)
    runs = profiles.expand(spec, Path("runs") / profile)
    cells = sorted({r.name.rpartition("/seed")[0] for r in runs})
    assert len(cells) == sum(len(profiles.experiment_cells(e)) for e in spec.experiments)
    monkeypatch.setenv("WANDB_RUN_ID", "abc123")
    for cell in cells:
        sweep = sw.load_sweep(sc.write_seed_sweep(f"{profile}/{cell}", tmp_path / f"{cell.replace('/', '_')}.yaml"))
        tag = next(r for r in runs if r.name.startswith(f"{cell}/")).tag
        assert sweep.params == ["seed"] and sweep.profile == tag and sweep.method == "grid"
        seeds = sweep.config["parameters"]["seed"]["values"]
        assert seeds == sorted(r.seed for r in runs if r.name.startswith(f"{cell}/"))
        for seed in seeds:
            argv = _agent_command(sweep.config, {"seed": {"value": seed}})
            got = load_config(argv[2], argv[3:], check_data=False)
            run = next(r for r in runs if r.name == f"{cell}/seed{seed}")
            assert config_diffs(load_config(run.config, run.overrides, check_data=False), got) == [], cell
            assert got.wandb.mode == "online" and got.out_dir == f"runs/sweeps/{sweep.name}/abc123"


def test_seed_sweep_of_an_unknown_cell_names_the_cells(capsys):
    assert sc.cli(["--seeds", "paper/cifar10/divebatsh"]) == 2
    err = capsys.readouterr().err
    assert "invalid --seeds paper/cifar10/divebatsh; allowed:" in err and "cifar10/divebatch_rescale |" in err
    assert sc.cli(["--seeds", "paper"]) == 2
    assert "allowed: PROFILE/EXPERIMENT/METHOD" in capsys.readouterr().err


def _agent_command(sweep_config: dict, run_config: dict) -> list[str]:
    """The argv `wandb agent` (wandb/wandb_agent.py, Agent._command_run) runs for one proposal, built
    with wandb's own functions: whole-item ${macro}s replaced, ${args_no_hyphens} by name=value items."""
    from wandb.sdk.launch.sweeps.utils import create_sweep_command, create_sweep_command_args

    macros = create_sweep_command_args({"args": run_config})
    argv = []
    for item in create_sweep_command([str(c) for c in sweep_config["command"]]):
        argv += macros[item[2:-1]] if item.startswith("${") and item.endswith("}") else [item]
    return argv


def test_sensitivity_and_lr_sweeps():
    for name in ("cifar10_sensitivity", "smoke_sensitivity", "cpu_sensitivity"):
        sweep = sw.load_sweep(REPO / "configs" / "sweeps" / f"{name}.yaml")
        assert sweep.method == "grid"
        assert {"method.delta", "method.resize_freq", "method.max_batch_size"} <= set(sweep.params)
        # run locally by a profile whose experiment also trains the SGD reference of the speed-ups
        profiles = [
            p for p in (REPO / "configs" / "profiles").glob("*.yaml") if f"configs/sweeps/{name}.yaml" in p.read_text()
        ]
        assert profiles, name
        for e in yaml.safe_load(profiles[0].read_text())["experiments"]:
            if e.get("sweep") == f"configs/sweeps/{name}.yaml":
                assert "sgd_small" in e["methods"]
        assert all(len(sweep.config["parameters"][k]["values"]) >= 2 for k in ("method.delta", "method.resize_freq"))
    lr = [sw.load_sweep(p) for p in SHIPPED if "lr" in p.stem]
    assert lr and all(s.method in ("bayes", "random") and "optim.lr" in s.params for s in lr)
    assert all(s.config["metric"]["name"] == "best_val_acc" and s.config["metric"]["goal"] == "maximize" for s in lr)


def _print_config(argv, capsys):
    from divebatch.training import cli as train_cli

    assert argv[:2] == ["divebatch", "train"]
    assert train_cli([*argv[2:], "--print-config"]) == 0
    return OmegaConf.create(capsys.readouterr().out)


@pytest.mark.parametrize("name", ["cifar10_sensitivity", "cifar10_sgd_small_lr"])
def test_agent_command_parses_into_expected_config(name, monkeypatch, capsys):
    sweep = sw.load_sweep(REPO / "configs" / "sweeps" / f"{name}.yaml")
    proposal = wandb_sweeps.next_run(sweep.config, [], validate=True)
    # what `wandb agent` exports before it starts the run's command
    monkeypatch.setenv("WANDB_SWEEP_ID", "sweep42")
    monkeypatch.setenv("WANDB_RUN_ID", "abc123")
    argv = _agent_command(sweep.config, proposal.config)
    values = {k: v["value"] for k, v in proposal.config.items()}
    # ${args_no_hyphens}: one "name=value" item per parameter, value as Python's str()
    assert [a for a in argv if a.split("=")[0] in values] == [f"{k}={v}" for k, v in values.items()]
    cfg = _print_config(argv, capsys)
    for key, value in values.items():
        assert OmegaConf.select(cfg, key) == pytest.approx(value)
    assert cfg.out_dir == f"runs/sweeps/{name}/abc123"
    assert cfg.wandb.mode == "online"
    assert cfg.profile == sweep.profile
    base = load_yaml(REPO / sweep.train_config)
    assert cfg.method.name == OmegaConf.select(base, "method.name")


def _write(path: Path, obj) -> Path:
    path.write_text(yaml.safe_dump(obj, sort_keys=False))
    return path


TINY_CONFIG = {
    "data": {"name": "digits", "augment": False},
    "model": {"name": "linear"},
    "method": {"name": "divebatch", "initial_batch_size": 32, "max_batch_size": 512, "resize_freq": 1, "delta": 0.1},
    "optim": {"lr": 0.05, "schedule": "constant", "weight_decay": 0.0},
    "epochs": 2,
    "progress": False,
}


def _sweep_yaml(tmp_path, parameters, method="grid", **extra) -> Path:
    train = _write(tmp_path / "tiny.yaml", TINY_CONFIG)
    return _write(
        tmp_path / "tiny_sweep.yaml",
        {
            "name": "tiny_sweep",
            "program": "src/divebatch/cli.py",
            "method": method,
            "metric": {"name": "best_val_acc", "goal": "maximize"},
            "parameters": parameters,
            **extra,
            "command": [
                "divebatch",
                "train",
                str(train),
                "wandb.mode=online",
                "profile=sweep_test",
                "out_dir=runs/sweeps/tiny_sweep/${oc.env:WANDB_RUN_ID}",
                "${args_no_hyphens}",
            ],
        },
    )


@pytest.mark.parametrize(
    "params, method, needle",
    [
        ({"method.detla": {"values": [0.1, 0.2]}}, "grid", "'method.detla'"),  # not a config key
        ({"method.delta": {"values": 0.1}}, "grid", "'method.delta'"),  # schema: values not a list
        ({"method.delta": {"values": [0.1, 0.0]}}, "grid", "method.delta"),  # value out of range
        ({"method.resize_freq": {"min": 0.5, "max": 2.5}}, "random", "method.resize_freq"),  # float for an int key
        ({"method.delta": {"values": [0.1]}}, "gridd", "method"),  # schema: unknown method
        ({"out_dir": {"values": ["a", "b"]}}, "grid", "'out_dir'"),  # set by the driver
    ],
)
def test_bad_sweep_fails_before_any_run(tmp_path, params, method, needle, capsys):
    path = _sweep_yaml(tmp_path, params, method)
    root = tmp_path / "root"
    assert sc.cli([str(path), "--local", "--count", "2", "--root", str(root)]) == 2
    err = capsys.readouterr().err
    assert needle in err
    assert not root.exists()


def test_command_must_give_each_agent_run_its_own_dir(tmp_path):
    path = _sweep_yaml(tmp_path, {"method.delta": {"values": [0.1]}})
    raw = yaml.safe_load(path.read_text())
    raw["command"] = [c.replace("/${oc.env:WANDB_RUN_ID}", "") for c in raw["command"]]
    with pytest.raises(sw.SweepError, match="WANDB_RUN_ID"):
        sw.load_sweep(_write(path, raw))
    raw["command"] = [c for c in raw["command"] if c != "${args_no_hyphens}"] + ["${args}"]
    with pytest.raises(sw.SweepError, match="args_no_hyphens"):
        sw.load_sweep(_write(path, raw))


class NoTraining:
    def __init__(self, *args, **kwargs):
        raise AssertionError("a finished sweep started a training")


@pytest.mark.parametrize("method", ["random", "bayes"])
def test_random_and_bayes_points_are_fixed_draws(tmp_path, method):
    """Offline a random or bayes sweep is run_cap (or --count) seeded draws from its ranges: the same
    list every time, a longer list starts with the shorter one, every value inside the range."""
    lr = {"optim.lr": {"distribution": "log_uniform_values", "min": 0.01, "max": 1.0}}
    sweep = sw.load_sweep(_sweep_yaml(tmp_path, lr, method, run_cap=4))
    first = sw.points(sweep)
    assert len(first) == 4 and sw.points(sweep) == first and sw.points(sweep, 2) == first[:2]
    values = [float(p[0].split("=")[1]) for p in first]
    assert len(set(values)) == 4 and all(0.01 <= v <= 1.0 for v in values)
    assert [sw.point_name(p) for p in first] == [f"lr{v:.4g}" for v in values]
    other = sw.load_sweep(_sweep_yaml(tmp_path, lr, method, run_cap=4, name="other"))
    assert sw.points(other) != first  # seeded by the sweep's name


def test_random_and_bayes_need_a_count(tmp_path):
    sweep = sw.load_sweep(_sweep_yaml(tmp_path, {"optim.lr": {"min": 0.01, "max": 0.1}}, "random"))
    with pytest.raises(sw.SweepError, match="--count"):
        sw.points(sweep)
    assert len(sw.points(sweep, 3)) == 3


def test_sweep_experiment_expands_to_its_points_and_refuses_a_seed_parameter(tmp_path):
    grid = {"method.delta": {"values": [0.05, 0.5]}, "method.resize_freq": {"values": [1, 2]}}
    path = _sweep_yaml(tmp_path, grid)
    profile = {"name": "p", "seeds": [3], "experiments": [{"name": "e", "sweep": str(path)}]}
    runs = profiles.expand(profiles.load_profile(profile), tmp_path / "runs")
    assert [r.cell for r in runs] == [
        "delta0.05-resize_freq1",
        "delta0.05-resize_freq2",
        "delta0.5-resize_freq1",
        "delta0.5-resize_freq2",
    ]
    r = runs[1]
    assert r.config == str(tmp_path / "tiny.yaml") and r.seed == 3
    # the command's agent-only items (wandb.mode=online, out_dir, profile) give way to the matrix's
    assert r.overrides == [
        "method.delta=0.05",
        "method.resize_freq=2",
        "seed=3",
        "profile=p",
        f"out_dir={tmp_path / 'runs' / 'e' / 'delta0.05-resize_freq2' / 'seed3'}",
        "progress=false",
    ]
    seeded = _sweep_yaml(tmp_path, {"seed": {"values": [1, 2]}})
    with pytest.raises(profiles.ProfileError, match=r"experiments\[0\]\.sweep.*'seed'"):
        profiles.load_profile({"name": "p", "experiments": [{"name": "e", "sweep": str(seeded)}]})


@pytest.mark.slow  # three trainings and a report (25 s); test_analysis.py checks the sensitivity table
def test_local_grid_sweep_trains_resumes_and_feeds_sensitivity_table(tmp_path, monkeypatch, capsys):
    """Real trainings (subprocesses): a profile experiment of a 2-point grid plus its SGD reference
    (written in the profile), then the report; the --local shortcut finds it all finished."""
    from divebatch.orchestration import replicate as rep

    grid = {"method.delta": {"values": [0.02, 0.5]}, "method.resize_freq": {"value": 1}}
    path = _sweep_yaml(tmp_path, {**grid, "method.max_batch_size": {"value": 512}})
    (tmp_path / "configs" / "tiny").mkdir(parents=True)  # a dataset protocol beside the shipped methods
    (tmp_path / "configs" / "methods").symlink_to(REPO / "configs" / "methods")
    _write(tmp_path / "configs" / "tiny" / "base.yaml", TINY_CONFIG)
    root, out = tmp_path / "root", tmp_path / "out"
    profile = {  # reported under the experiment's tag, not the profile's name
        "name": "profile_name",
        "seeds": [1],
        "overrides": ["wandb.mode=disabled"],
        "experiments": [
            {
                "name": "tiny_sweep",
                "dataset": str(tmp_path / "configs" / "tiny"),
                "methods": ["sgd_small"],
                "sweep": str(path),
                "report_as": "sweep_test",
            }
        ],
        "notebooks": False,
    }
    assert rep.replicate(profile, jobs=2, runs_dir=root, out=out).exit_code == 0, capsys.readouterr().err
    summaries = {d.parent.name: json.loads((d / "summary.json").read_text()) for d in root.glob("tiny_sweep/*/seed1")}
    assert sorted(summaries) == [
        "delta0.02-max_batch_size512-resize_freq1",
        "delta0.5-max_batch_size512-resize_freq1",
        "sgd_small",
    ]
    assert all(s["finished"] and s["epochs_completed"] == 2 for s in summaries.values())

    table = pd.read_csv(out / "paper_tables" / "sweep_test" / "sensitivity.csv")
    assert sorted(table["delta"]) == [0.02, 0.5]
    for _, row in table.iterrows():
        run = next(k for k in summaries if k.startswith(f"delta{row['delta']:g}-"))
        assert row["final_acc_mean"] == pytest.approx(summaries[run]["final_val_acc"])
        assert np.isfinite(row["speedup_epochs"])  # measured against the SGD reference
    assert "sweep_test" in table["provenance"].iloc[0]
    assert (out / "figures" / "sweep_test" / "sensitivity.png").stat().st_size > 0
    assert not (out / "paper_tables" / "profile_name").exists()

    # the --local shortcut trains the same points (without the reference): all finished, nothing runs
    monkeypatch.setattr(launch.subprocess, "Popen", NoTraining)
    mtimes = {p: p.stat().st_mtime for p in root.rglob("metrics.csv")}
    assert sc.cli([str(path), "--local", "--root", str(root), "--no-report", "--wandb-mode", "disabled"]) == 0
    assert {p: p.stat().st_mtime for p in root.rglob("metrics.csv")} == mtimes


@pytest.mark.parametrize("in_agent", [True, False])
def test_trainer_joins_the_agents_wandb_run(in_agent, tmp_path, monkeypatch):
    """Under `wandb agent` (WANDB_SWEEP_ID set) wandb.init gets no id/project/entity of ours."""
    import wandb

    from divebatch.config import load_config
    from divebatch.training import WandbLogger

    calls = []
    monkeypatch.setattr(wandb, "init", lambda **kw: calls.append(kw))
    if in_agent:
        monkeypatch.setenv("WANDB_SWEEP_ID", "sweep42")
        monkeypatch.setenv("WANDB_RUN_ID", "abc123")
    cfg = load_config(None, ["wandb.mode=online", f"out_dir={tmp_path}"])
    WandbLogger(cfg, tmp_path, "ourid00000")
    (kw,) = calls
    if in_agent:
        assert not {"id", "project", "entity"} & set(kw)
    else:
        assert kw["id"] == "ourid00000" and kw["project"] == cfg.wandb.project


def test_command_without_wandb_mode_is_named_as_such(tmp_path):
    path = _sweep_yaml(tmp_path, {"method.delta": {"values": [0.1]}})
    raw = yaml.safe_load(path.read_text())
    raw["command"] = [c for c in raw["command"] if not c.startswith("wandb.mode=")]
    with pytest.raises(sw.SweepError, match="command sets no wandb.mode; allowed: wandb.mode=online") as err:
        sw.load_sweep(_write(path, raw))
    assert "None" not in str(err.value)
    raw["command"].insert(3, "wandb.mode=offline")
    with pytest.raises(sw.SweepError, match="command sets wandb.mode='offline'; allowed"):
        sw.load_sweep(_write(path, raw))


def test_local_runs_go_to_runs_sweeps_name_point_seed(tmp_path, monkeypatch, capsys):
    """`divebatch sweep X.yaml --local --dry-run` from a folder: every run directory is
    runs/sweeps/<sweep name>/<point>/seed<k> (the sweep's name once), and nothing is written."""
    path = _sweep_yaml(tmp_path, {"method.delta": {"values": [0.05, 0.5]}})
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(launch.subprocess, "Popen", NoTraining)
    assert sc.cli([str(path), "--local", "--dry-run", "--wandb-mode", "disabled"]) == 0
    out = capsys.readouterr().out
    dirs = sorted(line.split("out_dir=")[1].split()[0] for line in out.splitlines() if "out_dir=" in line)
    assert dirs == [f"runs/sweeps/tiny_sweep/delta{d}/seed1" for d in ("0.05", "0.5")]
    assert not (tmp_path / "runs").exists()
