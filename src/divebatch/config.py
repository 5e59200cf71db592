"""Structured experiment configuration.

A run is fully described by one :class:`TrainConfig` (:mod:`divebatch.schema`): the YAML file
given on the command line is merged onto the schema's defaults, then omegaconf dotlist overrides (``KEY=VALUE``, the
form wandb sweep agents pass) are merged on top. A path ``configs/<dataset>/<method>.yaml`` that
is not a file names a composed cell (:func:`cell_parts`): the dataset's protocol
``configs/<dataset>/base.yaml``, the method ``configs/methods/<method>.yaml`` and the protocol's
own values for that method (its ``methods.<method>`` entry), each written once; a value that a
method requires of the protocol is ``???`` in the method file (omegaconf's missing value).

The schema says what is allowed: a choice is a ``Literal`` field (its names come from
:mod:`divebatch.choices` where a registry implements it, else they are written in the field), and
omegaconf refuses any other value or an unknown key when the layers are merged. Ranges and rules
between keys are the tables and small functions of the "validation" section. Every refusal is one
:class:`ConfigError` naming the key, the value and what is allowed, raised before any data is read
or any model is built. This module imports no torch, and neither does validating a config.
"""

from __future__ import annotations

import functools
import typing
from dataclasses import is_dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Optional

import yaml
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from divebatch.choices import CHOICES
from divebatch.datasets import DATASETS, path_problem

# the schema (divebatch.schema); its names stay importable from here
from divebatch.schema import (  # noqa: F401
    NO_BACKPACK_MODELS,
    DataConfig,
    FidelityConfig,
    MethodConfig,
    ModelConfig,
    OptimConfig,
    PrimaryMetricConfig,
    ScheduleKind,
    ShadowConfig,
    SpeedConfig,
    TrainConfig,
    WandbConfig,
)

UNKNOWN = object()  # a value that cannot be shown (ConfigError.of shows "?")


class ConfigError(ValueError):
    """A configuration is not allowed; the message says which key, which value and what is allowed.

    Built by :meth:`of` for one key's value (then ``key``, ``value`` and ``allowed`` are set);
    constructed from a sentence for a fault of a whole file or setting (a YAML syntax error, a
    ``base`` cycle), where they are None.
    """

    key: Optional[str] = None
    value: Any = None
    allowed: Optional[str] = None

    @classmethod
    def of(cls, key: str, value: Any, allowed: str, what: str = "") -> "ConfigError":
        """``invalid config: [what ]key=value; allowed: allowed`` (the value as ``repr``; ``?`` for
        :data:`UNKNOWN`)."""
        shown = "?" if value is UNKNOWN else repr(value)
        err = cls(f"invalid config: {what + ' ' if what else ''}{key}={shown}; allowed: {allowed}")
        err.key, err.value, err.allowed = key, value, allowed
        return err


class ConfigFileNotFoundError(ConfigError, FileNotFoundError):
    """A config file (or a file of its ``base:`` chain) does not exist."""


@functools.cache
def schema() -> DictConfig:
    """The :class:`TrainConfig` schema with its defaults, built once (omegaconf's dataclass
    introspection is the slow part of a merge). Read-only: :func:`OmegaConf.merge` copies it."""
    schema = OmegaConf.structured(TrainConfig)
    OmegaConf.set_readonly(schema, True)
    return schema


# ----------------------------------------------------------------------------- validation


def _at_least(low: int) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: v >= low), f"an integer >= {low}"


def _null_or_at_least(low: int, null: str = "null") -> tuple[Callable[[Any], bool], str]:
    return (lambda v: v is None or v >= low), f"{null} or an integer >= {low}"


def _betas_ok(betas) -> bool:
    return len(betas) == 2 and all(0 <= b < 1 for b in betas)


# one key's range: key -> (holds(value), what is allowed); checked in this order
RANGES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "epochs": _at_least(1),
    "method.initial_batch_size": _at_least(1),
    "method.resize_freq": _at_least(1),
    "method.max_micro_batch": _at_least(1),
    "model.width": _at_least(1),
    "model.depth": _at_least(1),
    "model.heads": _at_least(1),
    "data.seq_len": _at_least(1),
    "method.fixed_point_samples": _null_or_at_least(2, "null (the whole training set)"),
    "shadow.chunk": _at_least(2),
    "shadow.draws": _at_least(2),
    "method.micro_batches": _at_least(2),
    "method.delta": ((lambda v: v > 0), "a number > 0"),
    "optim.lr": ((lambda v: v >= 0), "a number >= 0"),
    "optim.momentum": ((lambda v: 0 <= v < 1), "a number in [0, 1)"),
    "optim.weight_decay": ((lambda v: v >= 0), "a number >= 0"),
    "optim.betas": ((lambda v: _betas_ok(list(v))), "two numbers in [0, 1), e.g. [0.9, 0.999]"),
    "fidelity.head_classes": _null_or_at_least(1),
    "data.train_subset": _null_or_at_least(1),
    "primary_metric.within": ((lambda v: v >= 0), "a number >= 0"),
    "device": ((lambda v: v in ("auto", "cpu", "cuda") or str(v).startswith("cuda:")), "auto | cpu | cuda | cuda:N"),
}


def _check_sizes(cfg: DictConfig) -> None:
    """Batch sizes, warm-up and splitting against each other."""
    m, fid, warmup = cfg.method, cfg.fidelity, cfg.optim.warmup_epochs
    if m.max_batch_size < m.initial_batch_size:
        raise ConfigError.of(
            "method.max_batch_size",
            m.max_batch_size,
            f"an integer >= method.initial_batch_size ({m.initial_batch_size})",
        )
    if not 0 <= warmup < cfg.epochs:
        raise ConfigError.of("optim.warmup_epochs", warmup, f"an integer in [0, epochs={cfg.epochs})")
    if fid.split_above is not None and fid.split_above < m.max_micro_batch:
        raise ConfigError.of(
            "fidelity.split_above",
            fid.split_above,
            f"null or an integer >= method.max_micro_batch ({m.max_micro_batch})",
        )
    if fid.warmup_at_lr_zero and warmup == 0:
        raise ConfigError.of("fidelity.warmup_at_lr_zero", True, "false when optim.warmup_epochs=0 (no warm-up epoch)")


def _check_shadow_and_path(cfg: DictConfig) -> None:
    """The shadow measurement beside a method that does not use the estimators; a data set that
    needs ``data.path`` (:data:`divebatch.datasets.DATASETS`)."""
    if cfg.shadow.enabled and cfg.method.name == "divebatch":
        raise ConfigError.of(
            "shadow.enabled",
            True,
            "false with method.name=divebatch (the shadow measures the estimators beside a run that does not "
            "use them: sgd | adabatch)",
        )
    name = cfg.data.name
    if DATASETS[name].needs_path and not cfg.data.path:
        raise ConfigError.of("data.path", cfg.data.path, f"a path to the {name} data (required for data.name={name})")


def _check_schedule(cfg: DictConfig) -> None:
    """Keys of a schedule control (``method.name=schedule``, :mod:`divebatch.schedule`).

    Raises:
        ConfigError: ``method.schedule`` unset for a schedule control or set for another method;
            ``method.switch_epoch`` outside [1, epochs - 1], with ``replay``, or together with
            ``method.schedule_from``. (``replay`` without ``method.schedule_from`` is refused when
            the run starts, :func:`divebatch.schedule.schedule_for`: a method file alone is a
            valid config.)
    """
    m = cfg.method
    if m.name != "schedule":
        for key in ("schedule", "schedule_from", "switch_epoch"):
            if m[key] is not None:
                raise ConfigError.of(
                    f"method.{key}", m[key], f"null with method.name={m.name} (a key of method.name=schedule)"
                )
        return
    if m.schedule is None:
        raise ConfigError.of("method.schedule", None, " | ".join(typing.get_args(ScheduleKind)))
    if m.switch_epoch is None:
        return
    if m.schedule == "replay" or m.schedule_from:
        why = "method.schedule=replay" if m.schedule == "replay" else "method.schedule_from (it gives the switch epoch)"
        raise ConfigError.of("method.switch_epoch", m.switch_epoch, f"null with {why}")
    if not 1 <= m.switch_epoch < cfg.epochs:
        raise ConfigError.of("method.switch_epoch", m.switch_epoch, f"null or an integer in [1, epochs={cfg.epochs})")


def _check_text_model(cfg: DictConfig) -> None:
    """Cross-key rules of the language-model experiments (docs/transformer.md): text data with a
    text model and the reverse; no BackPACK estimator on attention; heads dividing the width."""
    text_data, text_model = cfg.data.name == "text", cfg.model.name in NO_BACKPACK_MODELS
    if text_data != text_model:
        images = " | ".join(m for m in CHOICES["model.name"] if m not in NO_BACKPACK_MODELS)
        allowed = " | ".join(NO_BACKPACK_MODELS) if text_data else images
        raise ConfigError.of("model.name", cfg.model.name, f"{allowed} for data.name={cfg.data.name}")
    if text_model and cfg.method.name == "divebatch" and cfg.method.diversity_estimator == "exact":
        raise ConfigError.of(
            "method.diversity_estimator",
            "exact",
            f"exact_func | microbatch for model.name={cfg.model.name} (BackPACK has no attention layers)",
        )
    if text_model and cfg.model.width % cfg.model.heads:
        raise ConfigError.of("model.heads", cfg.model.heads, f"a divisor of model.width={cfg.model.width}")


# rules between keys, checked in this order after the ranges
RULES: tuple[Callable[[DictConfig], None], ...] = (
    _check_text_model,
    _check_sizes,
    _check_shadow_and_path,
    _check_schedule,
)


def validate(cfg: DictConfig) -> DictConfig:
    """Check value ranges (:data:`RANGES`) and rules between keys (:data:`RULES`) of a merged config.

    The choices are checked by the schema's ``Literal`` types when the config is merged.

    Args:
        cfg: a config with the :class:`TrainConfig` schema.
    Returns:
        ``cfg`` unchanged.
    Raises:
        ConfigError: naming the key, the offending value and what is allowed.
    """
    for key, (holds, allowed) in RANGES.items():
        value = OmegaConf.select(cfg, key)
        if not holds(value):
            raise ConfigError.of(key, OmegaConf.to_object(value) if OmegaConf.is_config(value) else value, allowed)
    for rule in RULES:
        rule(cfg)
    return cfg


def check_paths(cfg: DictConfig) -> DictConfig:
    """Check that the data a run needs is where ``data.path`` says (not needed to inspect a config):
    the path's kind and layout of :data:`divebatch.datasets.DATASETS`.

    Raises:
        ConfigError: naming ``data.path``, its value and what must be there.
    """
    problem = path_problem(cfg.data.name, cfg.data.path)
    if problem is not None:
        raise ConfigError.of("data.path", cfg.data.path, f"{DATASETS[cfg.data.name].holds} ({problem})")
    return cfg


# ----------------------------------------------------------------------------- files and composition

METHODS_DIR = "methods"  # configs/methods/<method>.yaml, beside the dataset folders
# a dataset protocol's values per method: read by the composition, not part of a run's config
COMPOSE_KEYS = ("methods",)


def cell_parts(path: str | Path) -> tuple[Path, Path] | None:
    """The dataset protocol and the method file that a cell path ``<dir>/<method>.yaml`` names.

    Args:
        path: e.g. ``configs/cifar10/divebatch.yaml``.
    Returns:
        ``(<dir>/base.yaml, <dir>/../methods/<method>.yaml)`` when both exist, else None. A file at
        ``path`` itself wins over the composition (:func:`load_yaml` looks at it first).
    """
    path = Path(path)
    base, method = path.parent / "base.yaml", path.parent.parent / METHODS_DIR / path.name
    if path.parent.name == METHODS_DIR or path.name == "base.yaml" or not (base.is_file() and method.is_file()):
        return None
    return base, method


def config_exists(path: str | Path) -> bool:
    """Whether ``path`` is a config file or a cell path (:func:`cell_parts`) that can be composed."""
    return Path(path).is_file() or cell_parts(path) is not None


def method_names(methods_dir: str | Path = Path("configs") / METHODS_DIR) -> list[str]:
    """The methods a cell path may name: the stems of ``configs/methods/*.yaml`` that set a
    ``display_name`` (the others, e.g. ``adamw.yaml``, are pieces that methods build on)."""
    return sorted(p.stem for p in Path(methods_dir).glob("*.yaml") if "display_name" in _read_yaml(p))


def _read_yaml(path: Path) -> DictConfig:
    """One YAML file as a DictConfig.

    Raises:
        ConfigError: a syntax error (one line: the file, line and column, and what is wrong), or a
            file that is not a mapping of keys.
    """
    try:
        node = OmegaConf.load(path)
    except yaml.YAMLError as err:
        raise ConfigError(f"invalid config file {path}{_yaml_fault(err)}; allowed: YAML syntax (key: value)") from None
    if isinstance(node, ListConfig):
        raise ConfigError(f"invalid config file {path}: holds a list; allowed: a mapping of config keys (key: value)")
    return node


def _yaml_fault(err: yaml.YAMLError) -> str:
    """Where and what a YAML error is: ``, line L, column C: problem (context from line K)``."""
    mark, problem = getattr(err, "problem_mark", None), getattr(err, "problem", None)
    context, context_mark = getattr(err, "context", None), getattr(err, "context_mark", None)
    if mark is None or not problem:
        return f": {str(err).splitlines()[0] if str(err) else type(err).__name__}"
    since = f" from line {context_mark.line + 1}" if context_mark is not None and context_mark.line != mark.line else ""
    return f", line {mark.line + 1}, column {mark.column + 1}: {problem}" + (f" ({context}{since})" if context else "")


def required_keys(node: DictConfig, prefix: str = "") -> list[str]:
    """Dotted keys of ``node`` whose value is ``???`` (required: a later layer must set it), found
    without resolving interpolations (a method file's refer to keys of the protocol)."""
    keys = []
    for key in node:
        if OmegaConf.is_interpolation(node, key):
            continue
        if OmegaConf.is_missing(node, key):
            keys.append(f"{prefix}{key}")
        elif isinstance(node[key], DictConfig):
            keys.extend(required_keys(node[key], f"{prefix}{key}."))
    return keys


def _compose(base: Path, method: Path, chain: tuple) -> DictConfig:
    """Protocol, then method, then the protocol's ``methods.<method>`` entry (see :func:`cell_parts`).

    A key that the method file leaves missing (``???``) must be set by the protocol's entry for it:
    merging keeps the protocol's general value under a missing one, so the entry is checked here.

    Raises:
        ConfigError: the method requires a key that the protocol's entry for it does not set.
    """
    protocol, variant = load_yaml(base, chain), load_yaml(method, chain)
    entries = protocol.pop("methods", None) or {}
    entry = entries.get(method.stem) or OmegaConf.create({})
    for key in required_keys(variant):
        if OmegaConf.select(entry, key, default=None) is None:
            raise ConfigError(
                f"invalid config: {base} methods.{method.stem}.{key} is not set; allowed: the "
                f"value of {key} for method {method.stem} on this dataset (configs/{METHODS_DIR}/"
                f'{method.name} requires it of the protocol: {key}: ???; see docs/replicate.md, "Configs")'
            )
    return OmegaConf.merge(protocol, variant, entry)


def load_yaml(path: str | Path, _chain: tuple = ()) -> DictConfig:
    """A YAML config with its ``base:`` chain merged in, or a composed cell.

    ``base`` is a path relative to the file, or a list of them merged in order (a method built on
    another method and a piece: ``base: [divebatch.yaml, adamw.yaml]``). A ``path`` that is not a
    file but a cell path (:func:`cell_parts`) is composed. The result may hold
    :data:`COMPOSE_KEYS`; :func:`load_config` drops them.

    Raises:
        ConfigError: a ``base`` cycle; a YAML syntax error; a method's required key not set.
            ConfigFileNotFoundError: a missing file in the chain (naming the methods a cell path
            may name).
    """
    path = Path(path).resolve()
    if path in _chain:
        raise ConfigError(f"invalid config: base={path.name!r} forms a cycle; allowed: a chain of distinct files")
    if not path.is_file():
        parts = cell_parts(path)
        if parts is not None:
            return _compose(*parts, _chain + (path,))
        methods_dir = path.parent.parent / METHODS_DIR
        hint = (
            f"; allowed: an existing file, or {path.parent}/<method>.yaml with <method> one of "
            f"{' | '.join(method_names(methods_dir))}"
            if (path.parent / "base.yaml").is_file() and methods_dir.is_dir()
            else ""
        )
        raise ConfigFileNotFoundError(f"config file not found: {path}{hint}")
    node = _read_yaml(path)
    base = node.pop("base", None)
    bases = [base] if isinstance(base, str) else list(base or [])
    return OmegaConf.merge(*(load_yaml(path.parent / b, _chain + (path,)) for b in bases), node)


# ----------------------------------------------------------------------------- loading


def _merge_error(err: OmegaConfBaseException, user_layers: list) -> ConfigError:
    """omegaconf's merge error as a ConfigError naming the key, the value given and what is allowed."""
    key = getattr(err, "full_key", None) or "?"
    value = UNKNOWN
    for layer in reversed(user_layers):  # the last layer that sets the key is the one that failed
        value = (
            OmegaConf.select(layer, key, default=UNKNOWN, throw_on_resolution_failure=False) if key != "?" else UNKNOWN
        )
        if value is not UNKNOWN:
            break
    parent, _, leaf = key.rpartition(".")
    node = OmegaConf.select(schema(), parent) if parent else schema()
    if isinstance(err, ConfigKeyError) and isinstance(node, DictConfig) and leaf not in node:
        allowed = f"the keys of {parent or 'the top level'}: {', '.join(str(k) for k in node)}"
        return ConfigError.of(key, value, allowed, what="unknown key")
    choices = _field_choices(key)
    if choices is not None:
        return ConfigError.of(key, value, " | ".join("null" if c is None else str(c) for c in choices))
    detail = (getattr(err, "msg", None) or str(err)).splitlines()[0]
    return ConfigError.of(key, value, f"{_field_type(key)} ({detail})")


def _field_hint(key: str) -> Any:
    """The schema's type annotation of a dotted key (None: not a schema key)."""
    cls: Any = TrainConfig
    for part in key.split("."):
        hints = typing.get_type_hints(cls) if is_dataclass(cls) else {}
        if part not in hints:
            return None
        cls = hints[part]
    return cls


def _field_choices(key: str) -> Optional[tuple]:
    """The names a ``Literal`` (or ``Optional[Literal]``) field allows, None first when null is
    allowed; None when the field is not a choice."""
    hint = _field_hint(key)
    args = typing.get_args(hint)
    if typing.get_origin(hint) is Literal:
        return args
    literal = [a for a in args if typing.get_origin(a) is Literal]
    return (None, *typing.get_args(literal[0])) if literal and type(None) in args else None


def _field_type(key: str) -> str:
    """The schema's type of a dotted key, e.g. ``float`` or ``Optional[int]``, for error messages."""
    hint = _field_hint(key)
    if hint is None:
        return "a value of the schema's type"
    name = hint.__name__ if isinstance(hint, type) else str(hint).replace("typing.", "")
    return f"a value of type {name}"


def _required_error(key: str) -> ConfigError:
    return ConfigError.of(
        key,
        MISSING,
        f"a value: the config file marks {key} as required (???); set it in the file or as the override {key}=VALUE",
    )


def load_config(
    path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (), check_data: bool = True
) -> DictConfig:
    """Merge defaults, a YAML file and ``KEY=VALUE`` dotlist overrides, then validate.

    Args:
        path: YAML file with any subset of the :class:`TrainConfig` keys, or None for defaults.
            A top-level ``base: other.yaml`` key merges that file first (experiment variants
            state only what differs from their dataset's protocol).
        overrides: omegaconf dotlist items such as ``method.delta=0.05`` (wandb's
            ``${args_no_hyphens}`` form). A leading ``--`` is tolerated.
        check_data: also check that ``data.path`` holds the data (:func:`check_paths`).
    Returns:
        A struct-mode DictConfig (a new key is refused) with every key of :class:`TrainConfig`.
    Raises:
        ConfigError: unknown key, wrong type, a value outside its allowed range, a required value
            (``???``) not set, a YAML syntax error.
        ConfigFileNotFoundError (a FileNotFoundError): ``path`` does not exist.
    """
    layers = []
    if path is not None:
        node = load_yaml(path)
        for key in COMPOSE_KEYS:  # read by the composition (a protocol or method file given alone)
            node.pop(key, None)
        layers.append(node)
    dotlist = [o[2:] if o.startswith("--") else o for o in overrides]
    for item in dotlist:
        if "=" not in item:
            raise ConfigError(f"invalid override {item!r}; allowed: KEY=VALUE, e.g. method.delta=0.05")
    try:
        layers.append(OmegaConf.from_dotlist(dotlist))
        # a ??? of the file that no override sets (merging keeps the schema's default under it)
        for key in required_keys(layers[0]) if path is not None else ():
            if OmegaConf.select(layers[-1], key, default=None) is None:
                raise _required_error(key)
        cfg = OmegaConf.merge(schema(), *layers)
        if cfg.protocol == "clean":  # the config files' fidelity switches back to the clean method
            clean = OmegaConf.create({"fidelity": OmegaConf.to_container(schema().fidelity)})
            cfg = OmegaConf.merge(schema(), *layers[:-1], clean, layers[-1])
    except OmegaConfBaseException as err:
        raise _merge_error(err, layers) from None
    OmegaConf.set_readonly(cfg, False)  # the merge copied the schema's read-only flag
    OmegaConf.set_struct(cfg, True)
    validate(cfg)
    return check_paths(cfg) if check_data else cfg


def config_keys(cfg: DictConfig | None = None, prefix: str = "") -> list[str]:
    """All leaf keys of the schema in dotted form (e.g. ``method.delta``), for sweep validation."""
    cfg = schema() if cfg is None else cfg
    keys = []
    for k, v in cfg.items():
        full = f"{prefix}{k}"
        if isinstance(v, DictConfig):
            keys.extend(config_keys(v, full + "."))
        else:
            keys.append(full)
    return keys


# keys that may differ when a run is resumed: they change where/how it runs, not what it computes
# (a top-level name covers its whole group). method.max_micro_batch is a memory setting: the
# micro-batch gradients are accumulated into the same optimizer step (only BatchNorm's batch
# statistics follow the micro-batch), so lowering it after a CUDA out-of-memory error resumes the run.
# display_name is a label: runs written before the key existed are the same runs.
RUNTIME_KEYS = ("device", "progress", "wandb", "out_dir", "method.max_micro_batch", "display_name")


def _flatten(tree: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in tree.items():
        out.update(_flatten(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def _is_runtime(key: str) -> bool:
    return key in RUNTIME_KEYS or key.split(".")[0] in RUNTIME_KEYS


def config_diffs(old: DictConfig, new: DictConfig, runtime: bool = False) -> list[str]:
    """Dotted keys on which two configs differ, as ``key: old -> new``, so a refused resume names
    the exact key. ``runtime=False``: the keys that make a resume refused (``RUNTIME_KEYS``
    ignored); ``runtime=True``: only the ``RUNTIME_KEYS`` that changed (recorded at a resume).
    A key that one config lacks counts as its schema default: a run written before the key existed
    computed what its default computes, so it stays resumable (and skippable when finished)."""
    a, b = (_flatten(OmegaConf.to_container(c, resolve=True)) for c in (old, new))
    default = _flatten(OmegaConf.to_container(schema(), resolve=True))
    va, vb = ({k: d.get(k, default.get(k)) for k in set(a) | set(b)} for d in (a, b))
    return [f"{k}: {va[k]!r} -> {vb[k]!r}" for k in sorted(va) if _is_runtime(k) == runtime and va[k] != vb[k]]


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)
