"""Composed configs: a cell is a dataset protocol plus a method, each written once.

The fixtures ``fixtures/profile_configs.json`` and ``fixtures/method_file_configs.json`` hold the
resolved configs (keys that differ from the schema defaults) of every profile run and of every
per-dataset method file as the code before the composition resolved them (commit 88f8297, where
each cell was its own file ``configs/<dataset>/<method>.yaml``). The composition must give the
same runs, so that run directories written before are finished runs, not new ones. One change since
then, by design: ``fidelity.mean_units: true`` in every ``protocol: authors_code`` run (the authors'
estimator units, docs/protocol.md); a DiveBatch run written before it measured in sum units, so it
is not the same run.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import REPO
from omegaconf import OmegaConf

from divebatch.config import (
    ConfigError,
    ConfigFileNotFoundError,
    TrainConfig,
    _flatten,
    config_diffs,
    load_config,
    method_names,
)
from divebatch.methods import BY_KEY, DISPLAY_ORDER, VARIANTS
from divebatch.orchestration import plan, profiles

FIXTURES = Path(__file__).parent / "fixtures"
PROFILE_CONFIGS = json.loads((FIXTURES / "profile_configs.json").read_text())
FILE_CONFIGS = json.loads((FIXTURES / "method_file_configs.json").read_text())
DEFAULTS = _flatten(OmegaConf.to_container(OmegaConf.structured(TrainConfig), resolve=True))
LABELS = ("display_name",)  # new key: a label, not part of what a run computes
# experiments added to the profiles after the fixtures were written (their runs are new runs)
ADDED_EXPERIMENTS = (
    "cifar10-mini-delta0.5",
    "cifar10-mini-delta2",
    "cifar10-mini-delta8",
    "cifar10-mini-schedule",
    "tinyshakespeare-shadow",
    "tinyshakespeare-fixed_point",
)


@pytest.fixture
def in_repo(monkeypatch):
    monkeypatch.chdir(REPO)
    for var in (
        "DIVEBATCH_CIFAR10_NPZ",
        "DIVEBATCH_CIFAR10_ROOT",
        "DIVEBATCH_CIFAR100_ROOT",
        "DIVEBATCH_TINY_IMAGENET_DIR",
        "DIVEBATCH_TEXT",
    ):
        monkeypatch.delenv(var, raising=False)


def _non_default(cfg) -> dict:
    flat = _flatten(OmegaConf.to_container(cfg, resolve=True))
    return {k: v for k, v in flat.items() if DEFAULTS.get(k, object()) != v and k not in LABELS}


def _old_config(values: dict):
    """A config.yaml as the code before wrote it: the schema without the new keys, plus ``values``."""
    cfg = OmegaConf.to_container(OmegaConf.structured(TrainConfig))
    for key in LABELS:
        cfg.pop(key)
    return OmegaConf.merge(cfg, OmegaConf.from_dotlist([f"{k}={json.dumps(v)}" for k, v in values.items()]))


# paper (9 s: every one of its runs composed) runs with the slow tests; the other three cover the path
@pytest.mark.parametrize("profile", ["smoke", "cpu", pytest.param("paper", marks=pytest.mark.slow), "transformer"])
def test_every_profile_run_resolves_as_before_and_its_old_run_directory_is_finished(in_repo, profile, tmp_path):
    spec = profiles.load_profile(profile)
    runs = profiles.expand(spec, Path("runs") / profile, profiles.resolve_data(spec, {}, env={}))
    swept = {e.name for e in spec.experiments if e.sweep}  # formerly `divebatch sweep --local`: tests/test_sweeps.py
    runs = [r for r in runs if r.experiment not in swept and r.experiment not in ADDED_EXPERIMENTS]
    want = {k.partition("/")[2]: v for k, v in PROFILE_CONFIGS.items() if k.startswith(f"{profile}/")}
    # same run directories; the paper profile has grown since (seeds 4-5 and the authors' other rows:
    # test_replicate.py) and so has cpu's main experiment (seeds 4-5), their former runs stay as they were
    names = {r.name for r in runs}
    assert names == set(want) if profile not in ("paper", "cpu") else set(want) < names
    runs = [r for r in runs if r.name in want]
    for run in runs:
        cfg = load_config(run.config, run.overrides, check_data=False)
        assert _non_default(cfg) == want[run.name], run.name
        # a run directory written by the old code, finished: skipped, not new or a conflict
        run.out_dir = tmp_path / profile / run.name
        run.out_dir.mkdir(parents=True)
        (run.out_dir / "config.yaml").write_text(OmegaConf.to_yaml(_old_config(want[run.name])))
        (run.out_dir / "summary.json").write_text(
            json.dumps({"finished": True, "epochs_completed": cfg.epochs, "final_val_acc": 50.0})
        )
        assert plan.run_state(run, cfg)[0] == "finished", (run.name, plan.run_state(run, cfg))


@pytest.mark.parametrize("path", sorted(FILE_CONFIGS))
def test_every_former_method_file_path_composes_to_the_same_config(in_repo, path):
    """``divebatch train configs/<dataset>/<method>.yaml`` (README, docs, sweeps) keeps its meaning."""
    assert _non_default(load_config(path, check_data=False)) == FILE_CONFIGS[path]


def test_method_files_and_the_registry_agree(in_repo):
    """configs/methods/<key>.yaml records the registry's display name and is the registry's method."""
    assert method_names() == sorted(v.key for v in VARIANTS)
    assert DISPLAY_ORDER == [v.display_name for v in VARIANTS] and len(set(DISPLAY_ORDER)) == len(VARIANTS)
    for dataset, keys in (
        ("smoke", ["sgd_small", "sgd_large", "adabatch", "adabatch_rescale", "divebatch", "divebatch_rescale"]),
        ("transformer", [v.key for v in VARIANTS]),
    ):
        for key in keys:
            replay = ["method.schedule_from=runs/a_run"] if key.startswith("schedule_replay") else []  # required
            cfg, v = load_config(f"configs/{dataset}/{key}.yaml", replay, check_data=False), BY_KEY[key]
            assert cfg.display_name == v.display_name
            assert (cfg.method.name, cfg.method.lr_rescale, cfg.optim.name) == (v.policy, v.lr_rescale, v.optimizer)
            start = (
                cfg.method.max_batch_size
                if v.large_batch
                else load_config(f"configs/{dataset}/base.yaml", check_data=False).method.initial_batch_size
            )
            assert cfg.method.initial_batch_size == start, key


def test_methods_are_read_from_their_files_in_the_tables_order(tmp_path):
    """divebatch.methods reads configs/methods/: a new file is a new method in its place by the
    order rule, with nothing else to edit; the order of the shipped methods is the tables' order."""
    import shutil

    from divebatch.methods import read_variants

    assert [v.key for v in VARIANTS] == [
        "sgd_small",
        "sgd_large",
        "adabatch",
        "adabatch_rescale",
        "divebatch",
        "divebatch_rescale",
        "adamw_small",
        "adamw_large",
        "adamw_divebatch",
        "adamw_divebatch_rescale",
        "schedule_replay",
        "schedule_replay_rescale",
        "two_stage",
        "two_stage_rescale",
    ]
    methods = tmp_path / "methods"
    shutil.copytree(REPO / "configs" / "methods", methods)
    (methods / "adamw_adabatch.yaml").write_text("base: [adabatch.yaml, adamw.yaml]\ndisplay_name: AdamW AdaBatch\n")
    found = {v.key: v for v in read_variants(methods)}
    keys = list(found)
    assert keys.index("adamw_adabatch") == keys.index("adamw_large") + 1
    assert (found["adamw_adabatch"].policy, found["adamw_adabatch"].optimizer) == ("adabatch", "adamw")
    (methods / "copy.yaml").write_text("display_name: DiveBatch\nmethod: {name: divebatch}\n")
    with pytest.raises(ValueError, match=r"display_name \['DiveBatch'\] set by several files"):
        read_variants(methods)


def test_display_name_is_recorded_in_the_run_config(tmp_path):
    from conftest import TINY

    from divebatch.training import train

    run = tmp_path / "run"
    train(load_config(REPO / "configs/smoke/adabatch_rescale.yaml", [*TINY, "epochs=1", f"out_dir={run}"]))
    assert OmegaConf.load(run / "config.yaml").display_name == "AdaBatch + lr rescale"


def test_large_batch_follows_the_protocol_cap_and_needs_its_lr(in_repo, tmp_path):
    cfg = load_config("configs/cpu/sgd_large.yaml", ["method.max_batch_size=256"], check_data=False)
    assert cfg.method.initial_batch_size == 256 and cfg.optim.lr == 0.4
    # a protocol that states no large-batch lr: the cell cannot be composed
    toy = tmp_path / "configs" / "toy"
    toy.mkdir(parents=True)
    (tmp_path / "configs" / "methods").mkdir()
    (toy / "base.yaml").write_text("epochs: 2\nmethod: {initial_batch_size: 16, max_batch_size: 64}\n")
    (tmp_path / "configs" / "methods" / "sgd_large.yaml").write_text(
        (REPO / "configs/methods/sgd_large.yaml").read_text()
    )
    with pytest.raises(ConfigError, match=r"methods\.sgd_large\.optim\.lr is not set"):
        load_config(toy / "sgd_large.yaml", check_data=False)
    # the paper datasets state it: the authors' 1.6 at 2048 (0.16 on Tiny-ImageNet)
    for dataset, lr in (("cifar10", 1.6), ("cifar100", 1.6), ("tiny_imagenet", 0.16)):
        cfg = load_config(f"configs/{dataset}/sgd_large.yaml", check_data=False)
        assert (cfg.method.initial_batch_size, cfg.optim.lr) == (2048, lr)


def test_unknown_method_names_the_methods(in_repo, tmp_path):
    with pytest.raises(
        ConfigFileNotFoundError,
        match=r"configs/cifar10/<method>\.yaml with <method> one of "
        r"adabatch \| adabatch_rescale \| adamw_divebatch",
    ):
        load_config("configs/cifar10/divebatsh.yaml", check_data=False)
    with pytest.raises(
        profiles.ProfileError,
        match=r"experiments\[0\]\.methods.*divebatsh.*allowed: methods of "
        r"configs/methods/ for dataset smoke: adabatch \|",
    ):
        profiles.load_profile(_profile(tmp_path, dataset="smoke", methods=["divebatsh"]))
    with pytest.raises(profiles.ProfileError, match=r"experiments\[0\]\.dataset=None"):
        profiles.load_profile(_profile(tmp_path, methods=["sgd_small"]))


def _profile(tmp_path: Path, **experiment) -> Path:
    import yaml

    path = tmp_path / "profile.yaml"
    path.write_text(yaml.safe_dump({"name": "x", "experiments": [{"name": "e", **experiment}]}))
    return path


def test_a_file_at_a_cell_path_wins_and_bases_merge_in_order(tmp_path):
    (tmp_path / "methods").mkdir()
    (tmp_path / "ds").mkdir()
    (tmp_path / "methods" / "m.yaml").write_text("display_name: M\nmethod: {name: adabatch}\n")
    (tmp_path / "methods" / "piece.yaml").write_text("optim: {lr: 0.5}\nmethod: {name: sgd}\n")
    (tmp_path / "methods" / "both.yaml").write_text("base: [m.yaml, piece.yaml]\ndisplay_name: B\n")
    (tmp_path / "ds" / "base.yaml").write_text("epochs: 3\nmethods: {m: {optim: {lr: 0.2}}}\n")
    cfg = load_config(tmp_path / "ds" / "m.yaml")
    assert (cfg.epochs, cfg.method.name, cfg.optim.lr, cfg.display_name) == (3, "adabatch", 0.2, "M")
    both = load_config(tmp_path / "ds" / "both.yaml")  # later base wins; the protocol's entry is for m only
    assert (both.method.name, both.optim.lr, both.display_name) == ("sgd", 0.5, "B")
    (tmp_path / "ds" / "m.yaml").write_text("base: base.yaml\nseed: 9\n")
    assert load_config(tmp_path / "ds" / "m.yaml").method.name == "divebatch"  # the file, not the composition


def test_a_new_key_at_its_default_or_a_label_does_not_change_a_finished_run():
    old = _old_config({"method.name": "sgd"})
    new = load_config(None, ["method.name=sgd", "display_name=SGD (small batch)"])
    assert config_diffs(old, new) == []
    del old.method["fixed_point_samples"]  # a key the old config lacks counts as its default
    assert config_diffs(old, new) == []
    assert config_diffs(old, load_config(None, ["method.name=sgd", "method.fixed_point_samples=16"])) == [
        "method.fixed_point_samples: 8192 -> 16"
    ]
