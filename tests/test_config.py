"""Config: defaults, YAML + dotlist merging, and clear errors before any training."""

from __future__ import annotations

import importlib
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import REPO
from omegaconf import OmegaConf

from divebatch.choices import CHOICES, REGISTRIES, UndeclaredChoiceError
from divebatch.config import ConfigError, TrainConfig, config_keys, load_config

# The keys the interface fixes; every other key has a default.
REQUIRED_KEYS = (
    "data.name",
    "data.path",
    "data.augment",
    "model.name",
    "method.name",
    "method.initial_batch_size",
    "method.max_batch_size",
    "method.resize_freq",
    "method.delta",
    "method.lr_rescale",
    "method.max_micro_batch",
    "optim.lr",
    "epochs",
    "seed",
    "device",
    "out_dir",
    "wandb.mode",
)
OWN_SCHEMA_DIRS = ("benchmarks", "sweeps", "synthetic", "profiles")  # configs/ subfolders with their own schemas


def _experiment_configs() -> list[Path]:
    root = REPO / "configs"
    return sorted(p for p in root.rglob("*.yaml") if p.relative_to(root).parts[0] not in OWN_SCHEMA_DIRS)


def test_required_keys_exist_in_the_schema():
    assert set(REQUIRED_KEYS) <= set(config_keys())


def test_defaults_alone_are_a_valid_config():
    cfg = load_config()
    assert OmegaConf.to_container(cfg) == OmegaConf.to_container(OmegaConf.structured(TrainConfig))


def test_yaml_with_only_the_required_keys_is_complete_and_trains(tmp_path):
    from divebatch.training import train

    values = {
        "data.name": "digits",
        "data.path": None,
        "data.augment": False,
        "model.name": "linear",
        "method.name": "divebatch",
        "method.initial_batch_size": 128,
        "method.max_batch_size": 512,
        "method.resize_freq": 1,
        "method.delta": 0.1,
        "method.lr_rescale": True,
        "method.max_micro_batch": 64,
        "optim.lr": 0.05,
        "epochs": 1,
        "seed": 7,
        "device": "cpu",
        "out_dir": str(tmp_path / "run"),
        "wandb.mode": "disabled",
    }
    assert set(values) == set(REQUIRED_KEYS)
    yaml_path = tmp_path / "minimal.yaml"
    OmegaConf.save(OmegaConf.from_dotlist([f"{k}={'null' if v is None else v}" for k, v in values.items()]), yaml_path)
    cfg = load_config(yaml_path)
    assert config_keys(cfg) == config_keys()  # every key present
    for key, value in values.items():
        assert OmegaConf.select(cfg, key) == value
    defaults = OmegaConf.structured(TrainConfig)
    for key in set(config_keys()) - set(values):
        assert OmegaConf.select(cfg, key) == OmegaConf.select(defaults, key), key
    summary = train(load_config(yaml_path, ["progress=false"]))
    assert summary["finished"] and summary["epochs_completed"] == 1


def test_dotlist_overrides_win_over_yaml_and_accept_the_double_dash_form(tmp_path):
    yaml_path = tmp_path / "c.yaml"
    yaml_path.write_text("method:\n  delta: 0.3\n  name: adabatch\nseed: 4\n")
    cfg = load_config(yaml_path, ["method.delta=0.05", "--seed=9", "--optim.milestones=[3,5]", "wandb.tags=[a,b]"])
    assert cfg.method.delta == 0.05 and cfg.seed == 9 and cfg.method.name == "adabatch"
    assert list(cfg.optim.milestones) == [3, 5] and list(cfg.wandb.tags) == ["a", "b"]


def test_cli_accepts_double_dash_overrides_as_wandb_agents_pass_them(tmp_path, capsys):
    from divebatch.cli import main

    yaml_path = tmp_path / "c.yaml"
    yaml_path.write_text("seed: 4\n")
    assert main(["train", str(yaml_path), "--method.delta=0.07", "seed=11", "--print-config"]) == 0
    printed = OmegaConf.create(capsys.readouterr().out)
    assert printed.method.delta == 0.07 and printed.seed == 11


def test_loaded_config_refuses_new_keys():
    from omegaconf.errors import ConfigAttributeError

    cfg = load_config()
    with pytest.raises(ConfigAttributeError):
        cfg.method.not_a_key = 1


# (overrides, key named, value shown, text from what is allowed)
INVALID = [
    (["method.delta=0"], "method.delta", "0.0", "> 0"),
    (["method.delta=-0.5"], "method.delta", "-0.5", "> 0"),
    (
        ["method.initial_batch_size=256", "method.max_batch_size=128"],
        "method.max_batch_size",
        "128",
        ">= method.initial_batch_size",
    ),
    (["method.resize_freq=0"], "method.resize_freq", "0", ">= 1"),
    (["epochs=0"], "epochs", "0", ">= 1"),
    (["data.name=mnist"], "data.name", "mnist", "cifar10 | cifar100 | tiny_imagenet | digits | npz"),
    (["model.name=vgg16"], "model.name", "vgg16", "resnet18_cifar | resnet18_imagenet | resnet_small | linear"),
    (["method.name=lars"], "method.name", "lars", "sgd | adabatch | divebatch"),
    (["data.name=npz"], "data.path", "None", "path"),
    (["data.name=npz", "data.path=no/such/file.npz"], "data.path", "no/such/file.npz", ".npz file"),
    (["data.name=tiny_imagenet", "data.path=no/such/dir"], "data.path", "no/such/dir", "tiny-imagenet-200"),
    (["optim.schedule=linear"], "optim.schedule", "linear", "cosine"),
    (["wandb.mode=cloud"], "wandb.mode", "cloud", "offline"),
    (["epochs=2.5"], "epochs", "2.5", "int"),
    (["method.delta=abc"], "method.delta", "abc", "float"),
    (["foo=1"], "foo", "1", "epochs"),  # unknown key: the allowed keys are listed
    (["method.deltaa=0.1"], "method.deltaa", "0.1", "delta"),
]


@pytest.mark.parametrize("overrides, key, value, allowed", INVALID, ids=[" ".join(c[0]) for c in INVALID])
def test_invalid_values_name_key_value_and_allowed(overrides, key, value, allowed):
    with pytest.raises(ConfigError) as err:
        load_config(None, ["data.name=digits", *overrides])
    msg = str(err.value)
    assert key in msg and value in msg and "allowed" in msg and allowed in msg, msg


@pytest.mark.parametrize("key", sorted(REGISTRIES))
def test_each_choice_list_is_its_registrys_keys(key):
    """The config validation's names of a registry-implemented choice (divebatch.choices) are the
    keys of the registry that implements it: no declared name lacks its builder (a builder without a
    declared name is refused when it registers)."""
    module, _, attribute = REGISTRIES[key].partition(":")
    registry = getattr(importlib.import_module(module), attribute)
    assert set(registry) == set(CHOICES[key])


def test_validating_a_config_imports_no_torch():
    """The choice names come from divebatch.choices, not from the (torch) registries: the orchestrator
    and the sweep driver validate configs without torch (a blocked ``torch`` import raises ImportError)."""
    code = textwrap.dedent("""
        import sys
        sys.modules["torch"] = None
        from divebatch.config import load_config
        import divebatch.datasets, divebatch.methods  # the name tables, read by the analysis too
        load_config(None, ["model.name=resnet18_cifar", "data.name=cifar10"], check_data=False)
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_a_registry_refuses_an_undeclared_name():
    from divebatch.models import register

    with pytest.raises(UndeclaredChoiceError, match="model.name='vgg16'.*divebatch.choices.CHOICES"):
        register("vgg16")(lambda num_classes: None)


def test_validation_takes_a_choice_list_from_the_registry_names():
    """A name added to a registry (and so to divebatch.choices) is a valid config value, with nothing
    else to edit: the schema's Literal types are built from CHOICES when the schema is imported."""
    with pytest.raises(ConfigError, match="model.name='vgg16'"):
        load_config(overrides=["model.name=vgg16"], check_data=False)
    code = textwrap.dedent("""
        from divebatch import choices
        choices.CHOICES["model.name"] += ("vgg16",)
        from divebatch.config import load_config
        print(load_config(overrides=["model.name=vgg16"], check_data=False).model.name)
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.stdout.strip() == "vgg16", done.stderr


def test_unknown_key_in_yaml_is_named(tmp_path):
    yaml_path = tmp_path / "c.yaml"
    yaml_path.write_text("data:\n  name: digits\n  augmnt: false\n")
    with pytest.raises(ConfigError, match=r"data\.augmnt.*allowed.*augment"):
        load_config(yaml_path)


def test_override_without_equals_sign_is_refused():
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        load_config(None, ["method.delta"])


def test_missing_config_file():
    with pytest.raises(FileNotFoundError, match="no_such.yaml"):
        load_config("no_such.yaml")


def test_invalid_config_fails_before_any_training(tmp_path, capsys):
    """The CLI exits with status 2 and the message; nothing is created in out_dir."""
    from divebatch.cli import main

    yaml_path = tmp_path / "c.yaml"
    yaml_path.write_text("data:\n  name: digits\nmodel:\n  name: linear\n")
    out = tmp_path / "run"
    assert main(["train", str(yaml_path), "method.delta=0", f"out_dir={out}", "wandb.mode=disabled"]) == 2
    assert "method.delta=0.0; allowed: a number > 0" in capsys.readouterr().err
    assert not out.exists()


EXPERIMENT_CONFIGS = _experiment_configs()


def test_experiment_configs_exist():
    assert EXPERIMENT_CONFIGS, "configs/ holds no experiment YAML"


@pytest.mark.parametrize(
    "path", EXPERIMENT_CONFIGS, ids=[str(p.relative_to(REPO / "configs")) for p in EXPERIMENT_CONFIGS]
)
def test_every_experiment_config_loads(path):
    """Every experiment YAML merges onto the schema and passes validation (data files aside: they
    may live elsewhere on this machine; ``check_data`` is tested above). A method file that marks a
    value required (``???``: the protocol gives it) is refused alone, naming the key, and loads
    with the value given."""
    from divebatch.config import load_yaml, required_keys

    required = required_keys(load_yaml(path))
    if required:
        with pytest.raises(ConfigError, match=rf"{required[0]}='\?\?\?'; allowed: a value"):
            load_config(path, check_data=False)
    cfg = load_config(path, [f"{key}=0.5" for key in required], check_data=False)
    assert config_keys(cfg) == config_keys()


# ----------------------------------------------------------------------------- file faults and the tables


@pytest.mark.parametrize(
    "text, line, what",
    [
        ("data:\n  name: digits\n  path: [a, b\nseed: 1\n", 4, "did not find expected ',' or ']'"),
        ("data:\n  name: digits\n path: x\n", 3, "did not find expected key"),
        ("seed: 1\nseed: 2\n", 2, "found duplicate key seed"),
    ],
)
def test_yaml_syntax_error_is_one_line_with_file_and_line(tmp_path, text, line, what):
    path = tmp_path / "broken.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    msg = str(err.value)
    assert f"{path}, line {line}, column" in msg and what in msg and "\n" not in msg, msg


def test_yaml_error_through_the_cli_is_one_line_without_traceback(tmp_path, capsys):
    from divebatch.cli import main

    path = tmp_path / "broken.yaml"
    path.write_text("method:\n  delta: [0.1\n")
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and f"{path}, line 3" in err, err


def test_a_config_file_that_is_a_list_is_named(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- seed: 1\n")
    with pytest.raises(ConfigError, match=r"list\.yaml: holds a list; allowed: a mapping of config keys"):
        load_config(path)


def test_a_required_value_of_a_config_file_is_named_and_an_override_sets_it(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  lr: ???\n")
    with pytest.raises(ConfigError, match=r"optim\.lr='\?\?\?'; allowed: a value.*optim\.lr=VALUE"):
        load_config(path)
    assert load_config(path, ["optim.lr=0.3"]).optim.lr == 0.3


def test_every_dataset_needing_a_path_is_refused_without_one():
    """The data.path rule reads the dataset table (divebatch.datasets), one row per name."""
    from divebatch.datasets import DATASETS

    assert tuple(DATASETS) == CHOICES["data.name"]
    for name, row in DATASETS.items():
        model = "model.name=transformer_lm" if name == "text" else "model.name=linear"
        extra = ["method.diversity_estimator=microbatch"] if name == "text" else []
        if row.needs_path:
            with pytest.raises(ConfigError, match=rf"data\.path=None; allowed: a path to the {name} data"):
                load_config(None, [f"data.name={name}", model, *extra], check_data=False)
        else:
            assert load_config(None, [f"data.name={name}", model, *extra], check_data=False).data.path is None


def test_data_kinds_and_downloads_follow_the_dataset_table():
    from divebatch.datasets import DATASETS, DOWNLOADABLE
    from divebatch.fetch import DATA_KINDS
    from divebatch.orchestration.gpu_hours import N_EVAL, N_TRAIN

    kinds = {row.fetch for row in DATASETS.values() if row.fetch}
    assert kinds == set(DATA_KINDS)
    assert DOWNLOADABLE == ("cifar10", "cifar100", "tiny_imagenet")
    assert N_TRAIN == {"cifar10": 50000, "cifar100": 50000, "tiny_imagenet": 100000}
    assert N_EVAL == {"cifar10": 10000, "cifar100": 10000, "tiny_imagenet": 10000}


def test_the_schema_is_built_once_and_a_loaded_config_is_its_own_copy():
    from divebatch.config import schema

    assert schema() is schema()
    a, b = load_config(None, ["seed=3"]), load_config()
    b.seed = 4  # a loaded config is writable; the shared schema is not
    assert (a.seed, b.seed, schema().seed) == (3, 4, 1)
    with pytest.raises(Exception, match="read-only"):
        schema().seed = 5


def test_config_error_carries_key_value_and_allowed():
    with pytest.raises(ConfigError) as err:
        load_config(None, ["method.delta=-1"])
    assert (err.value.key, err.value.value, err.value.allowed) == ("method.delta", -1.0, "a number > 0")


def test_the_library_and_the_synthetic_check_take_their_defaults_from_the_schema():
    """Defaults are stated once (divebatch.schema): the controller's, the policies' and the synthetic
    check's method defaults are the config's."""
    import inspect

    from divebatch.method.controller import BatchSizeController
    from divebatch.method.policies import BatchSizePolicy
    from divebatch.schema import FidelityConfig, MethodConfig
    from divebatch.synthetic.config import MethodsConfig

    params = inspect.signature(BatchSizeController).parameters
    for key in ("delta", "lr_rescale", "lr_scaling", "micro_batches", "fixed_point_samples", "max_micro_batch"):
        assert params[key].default == getattr(MethodConfig, key), key
    for key in ("lr_rescale_rule", "split_above", "micro_batch_loss", "mean_units", "running_grad_sum"):
        assert params[key].default == getattr(FidelityConfig, key), key
    assert params["estimator"].default == MethodConfig.diversity_estimator
    assert inspect.signature(BatchSizePolicy).parameters["delta"].default == MethodConfig.delta
    assert (MethodsConfig.delta, MethodsConfig.micro_batches) == (MethodConfig.delta, MethodConfig.micro_batches)
