"""Structured configuration of the synthetic check (``configs/synthetic/<profile>.yaml``).

The YAML file is merged onto these dataclass defaults, then ``KEY=VALUE`` dotlist overrides;
unknown keys and out-of-range values fail before anything runs, naming key, value and allowed.
Each experiment has its own section: ``knee`` (issue parts a and b: the knee of samples-to-target
against the batch size, per data variant) and ``methods`` (parts c and d: SGD, AdaBatch and
DiveBatch on one problem, with the epoch estimator against exact Delta on the same trajectories).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from divebatch.schema import MethodConfig
from divebatch.synthetic.data import DataSpec, check_spec, variant_spec
from divebatch.synthetic.methods import METHODS

EXPERIMENTS = ("knee", "methods")
VARIANT_KINDS = ("noise", "duplicate", "conditioning")
LARGE_BATCH_LR = ("linear", "tuned")


def runnable_methods() -> list[str]:
    """Display names of the methods the synthetic check can run, in registry order: the keys of
    :data:`divebatch.synthetic.methods.METHODS` (the six SGD methods of the paper's comparison; the
    AdamW variants of :mod:`divebatch.methods` have no synthetic counterpart). The default of
    ``methods.names`` and the list it is validated against."""
    return list(METHODS)


@dataclass
class VariantConfig:
    """One dataset of the knee experiment: the base ``data`` with some fields replaced.

    ``kind``: ``noise`` variants form the label-noise series (the knee should follow n*Delta);
    ``duplicate`` variants repeat the samples of variant ``of`` (the knee should not move);
    ``conditioning`` variants change the feature spectrum. Every variant is judged by the same
    rule (:func:`divebatch.synthetic.knee.summarize_variant`); the kind only adds the series checks.
    """

    name: str = "base"
    kind: str = "noise"
    of: Optional[str] = None
    label_noise: Optional[float] = None
    duplicate: Optional[int] = None
    spectrum_decay: Optional[float] = None
    direction: Optional[str] = None
    n_train: Optional[int] = None


@dataclass
class KneeConfig:
    batch_sizes: Optional[List[int]] = None  # null: powers of two from 1 up to n (n included)
    lr_log2_min: float = -12.0  # lr grid: 2^k / L for k from min to max in steps (L: smoothness bound)
    lr_log2_max: float = 4.0
    lr_log2_step: float = 0.5
    # after the first batch size, search k in [k_prev + window[0], k_prev + window[1]] (k_prev: the
    # previous batch size's smallest best k), still extended at edges; null: the full grid every time
    lr_window: Optional[List[float]] = field(default_factory=lambda: [-1.0, 3.0])
    lr_grid_extensions: int = 3  # times the grid is extended by 4 steps when the best lr is at an edge
    max_epochs: float = 100.0  # budget per run, in epochs of the non-duplicated training set
    resolution: float = 0.05  # relative spacing of the loss checks (samples)
    tolerance: float = 4.0  # knee within this factor of n*Delta at the target counts as agreement
    small_factor: float = 8.0  # "well below": B <= n*Delta / small_factor ...
    small_ratio_max: float = 2.0  # ... needs at most this many times the samples of B = 1
    large_factor: float = 4.0  # "far above": B >= large_factor * n*Delta ...
    large_ratio_min: float = 2.5  # ... needs at least this many times the plateau's samples
    # full-batch gradient descent (best lr of the grid) must need at least this many steps to the
    # target (median over seeds); fewer: a degenerate regime, where the variant cannot agree
    min_gd_steps: int = 20


@dataclass
class MethodsConfig:
    data: DataSpec = field(default_factory=DataSpec)
    target_relative: float = 0.01
    names: List[str] = field(default_factory=runnable_methods)
    epochs: int = 30
    initial_batch_size: int = 8
    max_batch_size: int = 1024
    resize_freq: int = 2
    delta: float = MethodConfig.delta  # the method's default (divebatch.schema)
    momentum: float = 0.0
    lr: Optional[float] = None  # base lr at initial_batch_size; null: tuned (methods.tune_lr)
    # large-batch SGD's lr: "linear" = lr * max_batch_size / initial_batch_size (the paper's CIFAR-10
    # protocol, 0.1 -> 1.6 for 128 -> 2048, and where "+ lr rescale" ends); "tuned": its own tune_lr
    large_batch_lr: str = "linear"
    resolution: float = 0.05  # relative spacing (samples) of the target checks
    micro_batches: int = MethodConfig.micro_batches  # micro-batch estimator (experiment d): parts per step
    fixed_point_samples: Optional[int] = (
        1024  # experiment d: a quarter of n, to show the subset's sampling error; null: all n
    )


@dataclass
class SyntheticConfig:
    profile: str = "smoke"
    seeds: List[int] = field(default_factory=lambda: [1, 2, 3])
    experiments: List[str] = field(default_factory=lambda: list(EXPERIMENTS))
    threads: int = 1  # torch intra-op threads; tiny ops are fastest (and reproducible) on one
    data: DataSpec = field(default_factory=DataSpec)
    target_relative: float = 0.1  # target suboptimality = target_relative * (loss(w0) - loss(w*))
    variants: List[VariantConfig] = field(default_factory=lambda: [VariantConfig()])
    knee: KneeConfig = field(default_factory=KneeConfig)
    methods: MethodsConfig = field(default_factory=MethodsConfig)


def _bad(key: str, value, allowed: str) -> ValueError:
    return ValueError(f"invalid config: {key}={value!r}; allowed: {allowed}")


def validate(cfg: DictConfig) -> DictConfig:
    """Range and cross-key checks, section by section.

    Raises:
        ValueError: naming the key, the value and what is allowed.
    """
    if not cfg.seeds:
        raise _bad("seeds", list(cfg.seeds), "a non-empty list of integers")
    for e in cfg.experiments:
        if e not in EXPERIMENTS:
            raise _bad("experiments", list(cfg.experiments), f"a list drawn from {' | '.join(EXPERIMENTS)}")
    if cfg.threads < 1:
        raise _bad("threads", cfg.threads, "an integer >= 1")
    if not 0 < cfg.target_relative < 1:
        raise _bad("target_relative", cfg.target_relative, "a number in (0, 1)")
    check_spec(cfg.data, "data")
    _check_variants(cfg)
    _check_knee(cfg.knee)
    _check_methods(cfg.methods)
    return cfg


def _check_variants(cfg: DictConfig) -> None:
    names = [v.name for v in cfg.variants]
    if not names or len(set(names)) != len(names):
        raise _bad("variants", names, "a non-empty list with unique names")
    for i, v in enumerate(cfg.variants):
        if v.kind not in VARIANT_KINDS:
            raise _bad(f"variants[{i}].kind", v.kind, " | ".join(VARIANT_KINDS))
        if v.kind == "duplicate" and v.of not in names:
            raise _bad(f"variants[{i}].of", v.of, f"the name of another variant ({' | '.join(names)})")
        check_spec(variant_spec(cfg.data, v), f"variants[{i}]")


# knee keys that must be positive numbers
KNEE_POSITIVE = (
    "max_epochs",
    "resolution",
    "tolerance",
    "small_factor",
    "small_ratio_max",
    "large_factor",
    "large_ratio_min",
)


def _check_knee(k) -> None:
    if not k.lr_log2_min < k.lr_log2_max or k.lr_log2_step <= 0:
        raise _bad(
            "knee.lr_log2_min/max/step", (k.lr_log2_min, k.lr_log2_max, k.lr_log2_step), "min < max and step > 0"
        )
    if k.lr_window is not None and (len(k.lr_window) != 2 or not k.lr_window[0] < k.lr_window[1]):
        raise _bad("knee.lr_window", list(k.lr_window), "null or [low, high] with low < high (log2 units)")
    if k.batch_sizes is not None and (not k.batch_sizes or min(k.batch_sizes) < 1):
        raise _bad("knee.batch_sizes", list(k.batch_sizes), "null or a list of integers >= 1")
    for key in KNEE_POSITIVE:
        if not getattr(k, key) > 0:
            raise _bad(f"knee.{key}", getattr(k, key), "a number > 0")
    if k.min_gd_steps < 1:
        raise _bad("knee.min_gd_steps", k.min_gd_steps, "an integer >= 1")


def _check_methods(m) -> None:
    check_spec(m.data, "methods.data")
    runnable = runnable_methods()
    for i, name in enumerate(m.names):
        if name not in runnable:
            raise _bad(
                f"methods.names[{i}]",
                name,
                f"{' | '.join(runnable)} (the methods the synthetic check can run, divebatch.synthetic.methods.METHODS)",
            )
    if not 0 < m.target_relative < 1:
        raise _bad("methods.target_relative", m.target_relative, "a number in (0, 1)")
    for key in ("epochs", "initial_batch_size", "resize_freq"):
        if getattr(m, key) < 1:
            raise _bad(f"methods.{key}", getattr(m, key), "an integer >= 1")
    n = m.data.n_train * m.data.duplicate
    if not m.initial_batch_size <= m.max_batch_size <= n:
        raise _bad(
            "methods.max_batch_size",
            m.max_batch_size,
            f"an integer in [methods.initial_batch_size={m.initial_batch_size}, n={n}]",
        )
    _check_method_numbers(m)


def _check_method_numbers(m) -> None:
    if not m.delta > 0:
        raise _bad("methods.delta", m.delta, "a number > 0")
    if not 0 <= m.momentum < 1:
        raise _bad("methods.momentum", m.momentum, "a number in [0, 1)")
    if m.large_batch_lr not in LARGE_BATCH_LR:
        raise _bad("methods.large_batch_lr", m.large_batch_lr, " | ".join(LARGE_BATCH_LR))
    if m.lr is not None and not m.lr > 0:
        raise _bad("methods.lr", m.lr, "null or a number > 0")
    if m.micro_batches < 2:
        raise _bad("methods.micro_batches", m.micro_batches, "an integer >= 2")
    if m.fixed_point_samples is not None and not 2 <= m.fixed_point_samples:
        raise _bad("methods.fixed_point_samples", m.fixed_point_samples, "null (all n) or an integer >= 2")


def load(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """Merge defaults, a YAML file and ``KEY=VALUE`` overrides, then validate.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: unknown key, wrong type, or value out of range (names key, value, allowed).
    """
    layers = [OmegaConf.structured(SyntheticConfig)]
    if path is not None:
        if not Path(path).is_file():
            raise FileNotFoundError(f"synthetic config not found: {path}")
        layers.append(OmegaConf.load(path))
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"invalid override {item!r}; allowed: KEY=VALUE, e.g. seeds=[1,2]")
    try:
        layers.append(OmegaConf.from_dotlist([o.removeprefix("--") for o in overrides]))
        cfg = OmegaConf.merge(*layers)
    except OmegaConfBaseException as err:
        raise ValueError(
            f"invalid synthetic config at {getattr(err, 'full_key', None) or '?'}: {str(err).splitlines()[0]}"
        ) from None
    OmegaConf.set_struct(cfg, True)
    return validate(cfg)
