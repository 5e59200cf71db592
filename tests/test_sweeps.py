"""wandb sweeps: shipped sweep YAMLs, the agent's command, bad input, and local (offline) sweeps."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
import yaml
from omegaconf import OmegaConf

from divebatch import launch
from divebatch import sweeps as sw
from divebatch.config import config_exists, config_keys, load_yaml

wandb_sweeps = sw.sweeps  # wandb's `sweeps` package, imported by divebatch.sweeps without its pydantic warning

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


@pytest.mark.parametrize("profile", ["paper", "smoke"])
def test_seed_sweep_of_every_profile_cell_trains_the_profiles_runs(profile, tmp_path, monkeypatch):
    """`divebatch sweep --seeds PROFILE/EXPERIMENT/METHOD`: a valid wandb grid over the profile's seeds
    whose agent runs resolve to the configs `divebatch replicate PROFILE` trains (up to where they run)."""
    from divebatch import replicate as rep
    from divebatch.config import config_diffs, load_config

    spec = rep.load_profile(profile)
    runs = rep.expand(spec, Path("runs") / profile)
    cells = sorted({r.name.rpartition("/seed")[0] for r in runs})
    assert len(cells) == sum(len(rep.experiment_configs(e)) for e in spec.experiments)
    monkeypatch.setenv("WANDB_RUN_ID", "abc123")
    for cell in cells:
        sweep = sw.load_sweep(sw.write_seed_sweep(f"{profile}/{cell}", tmp_path / f"{cell.replace('/', '_')}.yaml"))
        assert sweep.params == ["seed"] and sweep.profile == profile and sweep.method == "grid"
        seeds = sweep.config["parameters"]["seed"]["values"]
        assert seeds == list(spec.seeds)
        for seed in seeds:
            argv = sw.agent_command(sweep.config, {"seed": {"value": seed}})
            got = load_config(argv[2], argv[3:], check_data=False)
            run = next(r for r in runs if r.name == f"{cell}/seed{seed}")
            assert config_diffs(load_config(run.config, run.overrides, check_data=False), got) == [], cell
            assert got.wandb.mode == "online" and got.out_dir == f"runs/sweeps/{sweep.name}/abc123"


def test_seed_sweep_of_an_unknown_cell_names_the_cells(capsys):
    assert sw.cli(["--seeds", "paper/cifar10/divebatsh"]) == 2
    err = capsys.readouterr().err
    assert "invalid --seeds paper/cifar10/divebatsh; allowed:" in err and "cifar10/divebatch_rescale |" in err
    assert sw.cli(["--seeds", "paper"]) == 2
    assert "allowed: PROFILE/EXPERIMENT/METHOD" in capsys.readouterr().err


def test_sensitivity_and_lr_sweeps():
    for name in ("cifar10_sensitivity", "smoke_sensitivity"):
        sweep = sw.load_sweep(REPO / "configs" / "sweeps" / f"{name}.yaml")
        assert sweep.method == "grid"
        assert set(sw.SENSITIVITY_KEYS) <= set(sweep.params)
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
    argv = sw.agent_command(sweep.config, proposal.config)
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
    assert sw.cli([str(path), "--local", "--count", "2", "--root", str(root)]) == 2
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


class FakeTraining:
    """Stands in for a training subprocess: writes the run directory's result files at once.

    best_val_acc peaks at lr = 0.1, so a search that reads the metric back can be checked.
    """

    started: list[dict] = []

    def __init__(self, argv, stdout=None, stderr=None, env=None):
        over = dict(a.split("=", 1) for a in argv if "=" in a and not a.startswith("-"))
        FakeTraining.started.append(over)
        out = Path(over["out_dir"])
        out.mkdir(parents=True, exist_ok=True)
        lr = float(over.get("optim.lr", 0.05))
        acc = 90.0 - 10.0 * abs(math.log10(lr) + 1.0)
        (out / "metrics.csv").write_text("epoch,val_acc\n0,50.0\n1,%r\n" % acc)
        (out / "summary.json").write_text(json.dumps({"finished": True, "best_val_acc": acc, "final_val_acc": acc}))
        self.returncode = 0

    def poll(self):
        return 0

    def wait(self, timeout=None):
        return 0

    def send_signal(self, sig):
        pass


class NoTraining:
    def __init__(self, *args, **kwargs):
        raise AssertionError("a finished sweep started a training")


@pytest.mark.parametrize("method", ["random", "bayes"])
def test_local_search_feeds_metric_back_and_resumes(tmp_path, monkeypatch, method):
    path = _sweep_yaml(tmp_path, {"optim.lr": {"distribution": "log_uniform_values", "min": 0.01, "max": 1.0}}, method)
    sweep = sw.load_sweep(path)
    root = tmp_path / "root"
    FakeTraining.started = []
    monkeypatch.setattr(launch.subprocess, "Popen", FakeTraining)
    state = sw.run_local(sweep, root, count=3, jobs=2, wandb_mode="disabled")
    assert [r.state for r in state.runs] == ["finished"] * 3
    for rec, over in zip(state.runs, FakeTraining.started):
        assert float(over["optim.lr"]) == pytest.approx(rec.params["optim.lr"])
        assert over["wandb.mode"] == "disabled" and over["out_dir"] == str(root / rec.name)
        assert rec.metric == pytest.approx(json.loads((root / rec.name / "summary.json").read_text())["best_val_acc"])
    assert len({r.params["optim.lr"] for r in state.runs}) == 3
    results = pd.read_csv(root / sw.RESULTS_FILE)
    assert results["best_val_acc"].is_monotonic_decreasing  # best first
    # a larger count adds runs; the finished ones are not repeated
    state = sw.run_local(sweep, root, count=4, jobs=1, wandb_mode="disabled")
    assert len(FakeTraining.started) == 4 and len(state.runs) == 4
    monkeypatch.setattr(launch.subprocess, "Popen", NoTraining)
    assert len(sw.run_local(sweep, root, count=4, wandb_mode="disabled").runs) == 4


def test_random_and_bayes_need_a_count(tmp_path):
    sweep = sw.load_sweep(_sweep_yaml(tmp_path, {"optim.lr": {"min": 0.01, "max": 0.1}}, "random"))
    with pytest.raises(sw.SweepError, match="--count"):
        sw.run_local(sweep, tmp_path / "root")
    assert not (tmp_path / "root").exists()


def test_interrupted_sweep_resumes_unfinished_runs_only(tmp_path, monkeypatch):
    sweep = sw.load_sweep(_sweep_yaml(tmp_path, {"method.delta": {"values": [0.05, 0.5]}}))
    root = tmp_path / "root"
    monkeypatch.setattr(launch.subprocess, "Popen", FakeTraining)
    sw.run_local(sweep, root, wandb_mode="disabled", baseline=False)
    # as if the driver had been killed: one run marked running with no result yet, one finished
    # on disk although the state never heard of it
    state = json.loads((root / sw.STATE_FILE).read_text())
    state["runs"][0]["state"] = "running"
    (root / state["runs"][0]["name"] / "summary.json").unlink()
    state["runs"][1]["state"] = "running"
    (root / sw.STATE_FILE).write_text(json.dumps(state))
    FakeTraining.started = []
    state = sw.run_local(sweep, root, wandb_mode="disabled", baseline=False)
    assert [o["out_dir"] for o in FakeTraining.started] == [str(root / "run-000")]
    assert [r.state for r in state.runs] == ["finished", "finished"]
    # the same root with another search space is refused
    other = sw.load_sweep(_sweep_yaml(tmp_path, {"method.delta": {"values": [0.05, 0.7]}}))
    with pytest.raises(sw.SweepError, match="different YAML"):
        sw.run_local(other, root, wandb_mode="disabled")


def test_local_grid_sweep_trains_and_feeds_sensitivity_table(tmp_path, monkeypatch, capsys):
    """Real trainings (subprocesses): a 2-point grid plus the SGD reference, then the report."""
    path = _sweep_yaml(
        tmp_path,
        {
            "method.delta": {"values": [0.02, 0.5]},
            "method.resize_freq": {"value": 1},
            "method.max_batch_size": {"value": 512},
        },
    )
    root, out = tmp_path / "root", tmp_path / "out"
    argv = [str(path), "--local", "--jobs", "2", "--root", str(root), "--out", str(out), "--wandb-mode", "disabled"]
    assert sw.cli(argv) == 0, capsys.readouterr().err
    state = json.loads((root / sw.STATE_FILE).read_text())
    assert sorted((r["name"], r["state"]) for r in state["runs"]) == [
        ("baseline-sgd", "finished"),
        ("run-000", "finished"),
        ("run-001", "finished"),
    ]
    summaries = {r["name"]: json.loads((root / r["name"] / "summary.json").read_text()) for r in state["runs"]}
    assert all(s["finished"] and s["epochs_completed"] == 2 for s in summaries.values())

    table = pd.read_csv(out / "paper_tables" / "sweep_test" / "sensitivity.csv")
    assert sorted(table["delta"]) == [0.02, 0.5]
    for _, row in table.iterrows():
        run = next(r["name"] for r in state["runs"] if r["params"].get("method.delta") == row["delta"])
        assert row["final_acc_mean"] == pytest.approx(summaries[run]["final_val_acc"])
    assert "sweep_test" in table["provenance"].iloc[0]
    assert (out / "figures" / "sweep_test" / "sensitivity.png").stat().st_size > 0

    # a second invocation trains nothing
    monkeypatch.setattr(launch.subprocess, "Popen", NoTraining)
    mtimes = {p: p.stat().st_mtime for p in root.rglob("metrics.csv")}
    assert sw.cli([*argv, "--no-report"]) == 0
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
