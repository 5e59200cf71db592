"""Structured experiment configuration.

A run is fully described by one :class:`TrainConfig`: the YAML file given on the command line
is merged onto these dataclass defaults, then omegaconf dotlist overrides (``KEY=VALUE``, the
form wandb sweep agents pass) are merged on top. A path ``configs/<dataset>/<method>.yaml`` that
is not a file names a composed cell (:func:`cell_parts`): the dataset's protocol
``configs/<dataset>/base.yaml``, the method ``configs/methods/<method>.yaml`` and the protocol's
own values for that method (its ``methods.<method>`` entry), each written once. Unknown keys
and invalid values fail here, before any data is read or any model is built, with a message
naming the key, the value and what is allowed. The names of the choices that a registry implements
(``model.name``, ``data.name``, ...) come from :mod:`divebatch.choices`, the torch-free list the
registries are keyed by: this module imports no torch, and neither does validating a config.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass, field, is_dataclass
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from divebatch.choices import CHOICES

# Choices implemented by a registry (model.name, data.name, method.name, method.diversity_estimator,
# optim.name, method.lr_scaling) take their names from divebatch.choices.CHOICES, which the registries
# are keyed by. The choices below are branches of one function each and are named here.
SCHEDULES = ("constant", "cosine", "multistep", "step")
LOADERS = ("auto", "device", "torchvision")
SCHEDULE_KINDS = ("replay", "two_stage")  # method.schedule (method.name=schedule)
PROTOCOLS = ("authors_code", "clean")
LR_RESCALE_RULES = ("linear", "schedule_squared")
MICRO_BATCH_LOSSES = ("per_sample", "per_chunk")
METRIC_COLUMNS = ("val_acc", "val_loss")  # metrics.csv columns a report may judge by
METRIC_DIRECTIONS = ("higher", "lower")
# models whose per-sample gradients BackPACK cannot compute (attention): exact_func or microbatch
NO_BACKPACK_MODELS = ("transformer_lm",)
WANDB_MODES = ("online", "offline", "disabled")


class ConfigError(ValueError):
    """A configuration key holds a value that is not allowed. The message names key, value, allowed."""


class ConfigFileNotFoundError(ConfigError, FileNotFoundError):
    """A config file (or a file of its ``base:`` chain) does not exist."""


@dataclass
class DataConfig:
    name: str = "digits"
    path: Optional[str] = None  # dataset root (cifar*, tiny_imagenet, imagefolder: ROOT/train, ROOT/test) or file (npz)
    augment: bool = True  # the protocol's train augmentation for this dataset
    download: bool = False  # let torchvision download CIFAR when the files are missing
    loader: str = "auto"  # auto: device when the dataset is held in memory, else torchvision; device; torchvision
    num_workers: int = 1  # DataLoader workers (torchvision loader only)
    train_subset: Optional[int] = None  # keep the first N training samples (CPU-scale runs)
    seq_len: int = 64  # text: characters per training sample (non-overlapping sequences)
    subset_seed: Optional[int] = (
        None  # with train_subset: a fixed random N instead of the first N (class-ordered folders)
    )


@dataclass
class ModelConfig:
    name: str = "resnet_small"
    width: int = 16  # resnet_small: channels of the first stage (ResNet-18 uses 64); transformer_lm: C
    depth: int = 2  # transformer_lm: blocks
    heads: int = 4  # transformer_lm: attention heads (divide width)


@dataclass
class MethodConfig:
    name: str = "divebatch"
    initial_batch_size: int = 128
    max_batch_size: int = 2048
    resize_freq: int = 20  # epochs between batch-size decisions
    delta: float = 0.1  # DiveBatch: m_new = delta * n * Delta_hat
    lr_rescale: bool = False  # multiply lr by m_new / m at each resize
    lr_scaling: str = "linear"  # with lr_rescale: linear (lr ~ m; SGD) | sqrt (lr ~ sqrt(m); Adam, Malladi et al. 2022)
    max_micro_batch: int = 2048  # larger batches are split and their gradients accumulated
    # exact: authors' epoch estimator; microbatch: two-scale; fixed_point: Delta(w) (eval-mode BatchNorm);
    # fixed_point_train: Delta(w) with the authors' train-mode BatchNorm convention (docs/diversity.md)
    diversity_estimator: str = "exact"
    micro_batches: int = 2  # microbatch estimator: micro-batches per measured step (>= 2)
    fixed_point_samples: Optional[int] = (
        8192  # fixed_point: fixed random subset size (null or >= n: all n); docs/diversity.md
    )
    # method.name=schedule only (a schedule control, divebatch.schedule; docs/diversity.md):
    schedule: Optional[str] = None  # replay: a run's realized schedule | two_stage: m0, then max_batch_size
    schedule_from: Optional[str] = None  # run directory: replayed (replay) or its first resize epoch (two_stage)
    switch_epoch: Optional[int] = None  # two_stage: first epoch (0-based) at max_batch_size; null: see docs


@dataclass
class OptimConfig:
    name: str = "sgd"  # sgd (momentum, weight_decay, nesterov) | adamw (betas, eps, decoupled weight_decay)
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False
    schedule: str = "cosine"
    t_max: Optional[int] = None  # cosine period in epochs; default: epochs
    milestones: list[int] = field(default_factory=list)  # multistep
    step_size: int = 30  # step
    gamma: float = 0.1  # multistep and step
    warmup_epochs: int = 0  # linear warm-up, per optimizer step
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # adamw
    eps: float = 1.0e-8  # adamw


@dataclass
class FidelityConfig:
    """Where the authors' code differs from the method as described: one switch per difference.

    The defaults are the clean method; the dataset configs under ``configs/`` set the authors'
    values, and ``protocol=clean`` resets every switch to these defaults. Each switch, with the
    authors' file and line and its effect: docs/protocol.md ("Differences between the authors'
    code and the method, as config switches").
    """

    lr_rescale_rule: str = "linear"  # linear: lr = schedule(t) m/m0 | schedule_squared: lr0 s(t)^2 m/m0 (CIFAR-100)
    warmup_at_lr_zero: bool = False  # warm-up epochs run at lr 0 (CIFAR-100: warm-up scheduler never stepped)
    micro_batch_loss: str = "per_sample"  # per_sample: chunk loss * b/B | per_chunk: chunk loss / chunks
    split_above: Optional[int] = None  # split a batch only when larger than this (null: method.max_micro_batch)
    running_grad_sum: bool = False  # estimator adds the running p.grad after every chunk (Tiny-ImageNet bug)
    mean_units: bool = False  # estimator sums S and A in the authors' per-backward mean units (1/(b k)^2, 1/(b k))
    head_classes: Optional[int] = None  # model outputs; null: the dataset's classes (Tiny-ImageNet code: 1000)


@dataclass
class PrimaryMetricConfig:
    """What a report judges a run by (docs/analysis.md, "Primary metric"), declared per data set."""

    column: str = "val_acc"  # metrics.csv column: val_acc (percent) | val_loss (nats per token/sample)
    direction: str = "higher"  # higher | lower is better
    within: float = 1.0  # own target = final -/+ within (units of column): 1 pp for accuracy


@dataclass
class ShadowConfig:
    """Shadow measurement of every diversity estimator at the resize points of an sgd/adabatch run
    (:mod:`divebatch.shadow`; docs/diversity.md, "Estimator study")."""

    enabled: bool = False
    chunk: int = 128  # samples per chunk of the whole-set pass (the unit of the subset draws)
    subset_sizes: list[int] = field(default_factory=lambda: [128, 256, 512, 1024, 2048, 4096])
    draws: int = 400  # random subsets per size for the fixed-point sampling error


@dataclass
class WandbConfig:
    mode: str = "disabled"  # wandb only when asked for: online | offline (divebatch.wandb_logging)
    project: str = "divebatch"
    entity: Optional[str] = None
    group: Optional[str] = None
    name: Optional[str] = None
    tags: list[str] = field(default_factory=list)


@dataclass
class SpeedConfig:
    bf16: bool = False  # autocast to bfloat16 on CUDA
    channels_last: bool = False
    compile: bool = False  # torch.compile the model


@dataclass
class TrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)
    speed: SpeedConfig = field(default_factory=SpeedConfig)
    # label of the fidelity switches' setting: authors_code (the dataset configs) | clean: resets every
    # fidelity switch that a config file set to the clean method (dotlist overrides still apply) | null
    protocol: Optional[str] = None
    fidelity: FidelityConfig = field(default_factory=FidelityConfig)
    primary_metric: PrimaryMetricConfig = field(default_factory=PrimaryMetricConfig)
    shadow: ShadowConfig = field(default_factory=ShadowConfig)
    epochs: int = 10
    seed: int = 1
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    out_dir: str = "runs/default"  # the run directory itself
    profile: str = "adhoc"  # replication profile that made the run (smoke | cpu | paper | sweep | adhoc)
    deterministic: bool = True
    progress: bool = True  # tqdm bar per epoch
    # what tables and figures call the run's method, e.g. "DiveBatch + lr rescale"; set by the method
    # file (configs/methods/, names in divebatch.methods.VARIANTS); null: guessed (runs written before)
    display_name: Optional[str] = None


def _allowed(key: str, value: Any, allowed: str) -> ConfigError:
    return ConfigError(f"invalid config: {key}={value!r}; allowed: {allowed}")


def _check_choice(cfg: DictConfig, key: str, choices: tuple[str, ...]) -> None:
    value = OmegaConf.select(cfg, key)
    if value not in choices:
        raise _allowed(key, value, " | ".join(choices))


def validate(cfg: DictConfig) -> DictConfig:
    """Check value ranges and cross-key rules of a merged config.

    Args:
        cfg: a config with the :class:`TrainConfig` schema.
    Returns:
        ``cfg`` unchanged.
    Raises:
        ConfigError: naming the key, the offending value and what is allowed.
    """
    for key, names in CHOICES.items():  # the registry-implemented choices (divebatch.choices)
        _check_choice(cfg, key, names)
    _check_choice(cfg, "optim.schedule", SCHEDULES)
    _check_choice(cfg, "data.loader", LOADERS)
    _check_choice(cfg, "wandb.mode", WANDB_MODES)
    if cfg.protocol is not None:
        _check_choice(cfg, "protocol", PROTOCOLS)
    _check_choice(cfg, "fidelity.lr_rescale_rule", LR_RESCALE_RULES)
    _check_choice(cfg, "fidelity.micro_batch_loss", MICRO_BATCH_LOSSES)
    _check_choice(cfg, "primary_metric.column", METRIC_COLUMNS)
    _check_choice(cfg, "primary_metric.direction", METRIC_DIRECTIONS)
    _check_text_model(cfg)
    m = cfg.method
    positive_ints = {
        "epochs": cfg.epochs,
        "method.initial_batch_size": m.initial_batch_size,
        "method.resize_freq": m.resize_freq,
        "method.max_micro_batch": m.max_micro_batch,
        "model.width": cfg.model.width,
        "model.depth": cfg.model.depth,
        "model.heads": cfg.model.heads,
        "data.seq_len": cfg.data.seq_len,
    }
    for key, value in positive_ints.items():
        if value < 1:
            raise _allowed(key, value, "an integer >= 1")
    if m.fixed_point_samples is not None and m.fixed_point_samples < 2:
        raise _allowed(
            "method.fixed_point_samples", m.fixed_point_samples, "null (the whole training set) or an integer >= 2"
        )
    if cfg.shadow.enabled and m.name == "divebatch":
        raise _allowed(
            "shadow.enabled",
            True,
            "false with method.name=divebatch (the shadow measures the estimators "
            "beside a run that does not use them: sgd | adabatch)",
        )
    for key in ("shadow.chunk", "shadow.draws"):
        if OmegaConf.select(cfg, key) < 2:
            raise _allowed(key, OmegaConf.select(cfg, key), "an integer >= 2")
    if m.micro_batches < 2:
        raise _allowed("method.micro_batches", m.micro_batches, "an integer >= 2")
    _check_schedule(cfg)
    if m.max_batch_size < m.initial_batch_size:
        raise _allowed(
            "method.max_batch_size",
            m.max_batch_size,
            f"an integer >= method.initial_batch_size ({m.initial_batch_size})",
        )
    if not m.delta > 0:
        raise _allowed("method.delta", m.delta, "a number > 0")
    if cfg.optim.lr < 0:
        raise _allowed("optim.lr", cfg.optim.lr, "a number >= 0")
    if not 0 <= cfg.optim.momentum < 1:
        raise _allowed("optim.momentum", cfg.optim.momentum, "a number in [0, 1)")
    if cfg.optim.weight_decay < 0:
        raise _allowed("optim.weight_decay", cfg.optim.weight_decay, "a number >= 0")
    if cfg.optim.warmup_epochs < 0 or cfg.optim.warmup_epochs >= cfg.epochs:
        raise _allowed("optim.warmup_epochs", cfg.optim.warmup_epochs, f"an integer in [0, epochs={cfg.epochs})")
    fid = cfg.fidelity
    if fid.split_above is not None and fid.split_above < m.max_micro_batch:
        raise _allowed(
            "fidelity.split_above",
            fid.split_above,
            f"null or an integer >= method.max_micro_batch ({m.max_micro_batch})",
        )
    if fid.head_classes is not None and fid.head_classes < 1:
        raise _allowed("fidelity.head_classes", fid.head_classes, "null or an integer >= 1")
    if fid.warmup_at_lr_zero and cfg.optim.warmup_epochs == 0:
        raise _allowed("fidelity.warmup_at_lr_zero", True, "false when optim.warmup_epochs=0 (no warm-up epoch)")
    if cfg.data.train_subset is not None and cfg.data.train_subset < 1:
        raise _allowed("data.train_subset", cfg.data.train_subset, "null or an integer >= 1")
    if cfg.data.name in ("npz", "tiny_imagenet", "text", "imagefolder") and not cfg.data.path:
        raise _allowed(
            "data.path", cfg.data.path, f"a path to the {cfg.data.name} data (required for data.name={cfg.data.name})"
        )
    device = str(cfg.device)
    if not (device in ("auto", "cpu", "cuda") or device.startswith("cuda:")):
        raise _allowed("device", device, "auto | cpu | cuda | cuda:N")
    return cfg


def _check_schedule(cfg: DictConfig) -> None:
    """Keys of a schedule control (``method.name=schedule``, :mod:`divebatch.schedule`).

    Raises:
        ConfigError: ``method.schedule`` unknown or set for another method; ``method.switch_epoch``
            outside [1, epochs - 1], with ``replay``, or together with ``method.schedule_from``.
            (``replay`` without ``method.schedule_from`` is refused when the run starts,
            :func:`divebatch.schedule.schedule_for`: a method file alone is a valid config.)
    """
    m = cfg.method
    keys = {
        "method.schedule": m.schedule,
        "method.schedule_from": m.schedule_from,
        "method.switch_epoch": m.switch_epoch,
    }
    if m.name != "schedule":
        for key, value in keys.items():
            if value is not None:
                raise _allowed(key, value, f"null with method.name={m.name} (the key of method.name=schedule)")
        return
    _check_choice(cfg, "method.schedule", SCHEDULE_KINDS)  # replay's method.schedule_from: checked at training
    if m.switch_epoch is None:
        return
    if m.schedule == "replay" or m.schedule_from:
        why = "method.schedule=replay" if m.schedule == "replay" else "method.schedule_from (it gives the switch epoch)"
        raise _allowed("method.switch_epoch", m.switch_epoch, f"null with {why}")
    if not 1 <= m.switch_epoch < cfg.epochs:
        raise _allowed("method.switch_epoch", m.switch_epoch, f"null or an integer in [1, epochs={cfg.epochs})")


def _check_text_model(cfg: DictConfig) -> None:
    """Cross-key rules of the language-model experiments (docs/transformer.md).

    Raises:
        ConfigError: text data with a non-text model or the reverse; the exact (BackPACK) estimator
            on a model with attention; primary_metric.within < 0; optim.betas not two numbers in [0, 1).
    """
    text_data, text_model = cfg.data.name == "text", cfg.model.name in NO_BACKPACK_MODELS
    if text_data != text_model:
        allowed = (
            "transformer_lm"
            if text_data
            else " | ".join(m for m in CHOICES["model.name"] if m not in NO_BACKPACK_MODELS)
        )
        raise _allowed("model.name", cfg.model.name, f"{allowed} for data.name={cfg.data.name}")
    if text_model and cfg.method.name == "divebatch" and cfg.method.diversity_estimator == "exact":
        raise _allowed(
            "method.diversity_estimator",
            "exact",
            f"exact_func | microbatch for model.name={cfg.model.name} (BackPACK has no attention layers)",
        )
    if text_model and cfg.model.width % cfg.model.heads:
        raise _allowed("model.heads", cfg.model.heads, f"a divisor of model.width={cfg.model.width}")
    if cfg.primary_metric.within < 0:
        raise _allowed("primary_metric.within", cfg.primary_metric.within, "a number >= 0")
    betas = list(cfg.optim.betas)
    if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
        raise _allowed("optim.betas", betas, "two numbers in [0, 1), e.g. [0.9, 0.999]")


def check_paths(cfg: DictConfig) -> DictConfig:
    """Check that the data a run needs is where ``data.path`` says (not needed to inspect a config).

    Raises:
        ConfigError: naming ``data.path``, its value and what must be there.
    """
    if cfg.data.name == "npz" and not Path(cfg.data.path).is_file():
        raise _allowed("data.path", cfg.data.path, "an existing .npz file with train_x, train_y, test_x, test_y")
    if cfg.data.name == "text" and not Path(cfg.data.path).is_file():
        raise _allowed(
            "data.path", cfg.data.path, "an existing plain-text (UTF-8) file, e.g. ../shared/data/tinyshakespeare.txt"
        )
    if cfg.data.name == "imagefolder" and not all((Path(cfg.data.path) / s).is_dir() for s in ("train", "test")):
        raise _allowed(
            "data.path",
            cfg.data.path,
            "an existing folder with train/<class>/* and test/<class>/* (torchvision ImageFolder layout)",
        )
    if cfg.data.name == "tiny_imagenet" and not Path(cfg.data.path).is_dir():
        raise _allowed(
            "data.path",
            cfg.data.path,
            "an existing tiny-imagenet-200/ folder (wnids.txt, train/, val/); "
            "get it with: divebatch fetch-data tiny_imagenet --root DIR",
        )
    return cfg


METHODS_DIR = "methods"  # configs/methods/<method>.yaml, beside the dataset folders
# keys of a config file that the composition reads and that are not part of a run's config:
# ``methods`` (a dataset protocol's values per method) and ``needs`` (what a method requires of it)
COMPOSE_KEYS = ("methods", "needs")


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
    return sorted(p.stem for p in Path(methods_dir).glob("*.yaml") if "display_name" in OmegaConf.load(p))


def _compose(base: Path, method: Path, chain: tuple) -> DictConfig:
    """Protocol, then method, then the protocol's ``methods.<method>`` entry (see :func:`cell_parts`).

    Raises:
        ConfigError: the method ``needs`` a key that the protocol's entry for it does not set.
    """
    protocol, variant = load_yaml(base, chain), load_yaml(method, chain)
    entries = protocol.pop("methods", None) or {}
    entry = entries.get(method.stem) or OmegaConf.create({})
    for key in variant.pop("needs", None) or []:
        if OmegaConf.select(entry, key, default=None) is None:
            raise ConfigError(
                f"invalid config: {base} methods.{method.stem}.{key} is not set; allowed: the "
                f"value of {key} for method {method.stem} on this dataset (configs/{METHODS_DIR}/"
                f'{method.name} needs it from the protocol; see docs/replicate.md, "Configs")'
            )
    return OmegaConf.merge(protocol, variant, entry)


def load_yaml(path: str | Path, _chain: tuple = ()) -> DictConfig:
    """A YAML config with its ``base:`` chain merged in, or a composed cell.

    ``base`` is a path relative to the file, or a list of them merged in order (a method built on
    another method and a piece: ``base: [divebatch.yaml, adamw.yaml]``). A ``path`` that is not a
    file but a cell path (:func:`cell_parts`) is composed. The result may hold
    :data:`COMPOSE_KEYS`; :func:`load_config` drops them.

    Raises:
        ConfigError: a ``base`` cycle; a method's ``needs`` not met. ConfigFileNotFoundError: a
            missing file in the chain (naming the methods a cell path may name).
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
    node = OmegaConf.load(path)
    base = node.pop("base", None)
    bases = [base] if isinstance(base, str) else list(base or [])
    return OmegaConf.merge(*(load_yaml(path.parent / b, _chain + (path,)) for b in bases), node)


def _merge_error(err: OmegaConfBaseException, schema: DictConfig, user_layers: list) -> ConfigError:
    """omegaconf's merge error as a ConfigError naming the key, the value given and what is allowed."""
    key = getattr(err, "full_key", None) or "?"
    missing = object()
    value = missing
    for layer in reversed(user_layers):  # the last layer that sets the key is the one that failed
        value = OmegaConf.select(layer, key, default=missing) if key != "?" else missing
        if value is not missing:
            break
    shown = "?" if value is missing else repr(value)
    parent, _, leaf = key.rpartition(".")
    node = OmegaConf.select(schema, parent) if parent else schema
    if isinstance(err, ConfigKeyError) and isinstance(node, DictConfig) and leaf not in node:
        allowed = f"the keys of {parent or 'the top level'}: {', '.join(str(k) for k in node)}"
        return ConfigError(f"invalid config: unknown key {key}={shown}; allowed: {allowed}")
    detail = (getattr(err, "msg", None) or str(err)).splitlines()[0]
    return ConfigError(f"invalid config: {key}={shown}; allowed: {_field_type(key)} ({detail})")


def _field_type(key: str) -> str:
    """The schema's type of a dotted key, e.g. ``float`` or ``Optional[int]``, for error messages."""
    cls: Any = TrainConfig
    for part in key.split("."):
        hints = typing.get_type_hints(cls) if is_dataclass(cls) else {}
        if part not in hints:
            return "a value of the schema's type"
        cls = hints[part]
    name = cls.__name__ if isinstance(cls, type) else str(cls).replace("typing.", "")
    return f"a value of type {name}"


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
    Returns:
        A read-only (struct mode) DictConfig with every key of :class:`TrainConfig`.
    Raises:
        ConfigError: unknown key, wrong type, or a value outside its allowed range.
        FileNotFoundError: ``path`` does not exist.
    """
    schema = OmegaConf.structured(TrainConfig)
    layers = [schema]
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
        cfg = OmegaConf.merge(*layers)
        if cfg.protocol == "clean":  # the config files' fidelity switches back to the clean method
            clean = OmegaConf.create({"fidelity": OmegaConf.to_container(OmegaConf.structured(FidelityConfig))})
            cfg = OmegaConf.merge(*layers[:-1], clean, layers[-1])
    except OmegaConfBaseException as err:
        raise _merge_error(err, schema, layers[1:]) from None
    OmegaConf.set_struct(cfg, True)
    validate(cfg)
    return check_paths(cfg) if check_data else cfg


def config_keys(cfg: DictConfig | None = None, prefix: str = "") -> list[str]:
    """All leaf keys of the schema in dotted form (e.g. ``method.delta``), for sweep validation."""
    cfg = OmegaConf.structured(TrainConfig) if cfg is None else cfg
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
    default = _flatten(OmegaConf.to_container(OmegaConf.structured(TrainConfig), resolve=True))
    va, vb = ({k: d.get(k, default.get(k)) for k in set(a) | set(b)} for d in (a, b))
    return [f"{k}: {va[k]!r} -> {vb[k]!r}" for k in sorted(va) if _is_runtime(k) == runtime and va[k] != vb[k]]


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)
