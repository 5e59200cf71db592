"""What a run's config holds: the :class:`TrainConfig` schema, its fields, types and defaults.

Every default of a run is stated here once (the library's and the synthetic check's defaults are
these fields). A choice is a ``Literal`` field: omegaconf refuses any other value when a config is
merged (:func:`divebatch.config.load_config`). The names of a choice that a registry implements
(``model.name``, ``data.name``, ...) come from :mod:`divebatch.choices`, the torch-free list the
registries are keyed by; the others are written in their field's type here. Loading, composing
and validating configs: :mod:`divebatch.config`. Imports no torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

from divebatch.choices import CHOICES

# choices that are branches of one function (the registry-implemented ones: divebatch.choices)
ScheduleName = Literal["constant", "cosine", "multistep", "step"]
LoaderName = Literal["auto", "device", "torchvision"]  # auto: device when held in memory, else torchvision
ScheduleKind = Literal["replay", "two_stage"]  # method.schedule (method.name=schedule)
Protocol = Literal["authors_code", "clean"]
LrRescaleRule = Literal["linear", "schedule_squared"]
MicroBatchLoss = Literal["per_sample", "per_chunk"]
MetricColumn = Literal["val_acc", "val_loss"]  # metrics.csv columns a report may judge by
MetricDirection = Literal["higher", "lower"]
WandbMode = Literal["online", "offline", "disabled"]
# models whose per-sample gradients BackPACK cannot compute (attention): exact_func or microbatch
NO_BACKPACK_MODELS = ("transformer_lm",)


@dataclass
class DataConfig:
    name: Literal[CHOICES["data.name"]] = "digits"  # the table: divebatch.datasets
    path: Optional[str] = None  # dataset root (cifar*, tiny_imagenet, imagefolder: ROOT/train, ROOT/test) or file (npz)
    augment: bool = True  # the protocol's train augmentation for this dataset
    download: bool = False  # let torchvision download CIFAR when the files are missing
    loader: LoaderName = "auto"  # auto: device when the dataset is held in memory, else torchvision
    num_workers: int = 1  # DataLoader workers (torchvision loader only)
    train_subset: Optional[int] = None  # keep the first N training samples (CPU-scale runs)
    seq_len: int = 64  # text: characters per training sample (non-overlapping sequences)
    # with train_subset: a fixed random N instead of the first N (class-ordered folders)
    subset_seed: Optional[int] = None


@dataclass
class ModelConfig:
    name: Literal[CHOICES["model.name"]] = "resnet_small"
    width: int = 16  # resnet_small: channels of the first stage (ResNet-18 uses 64); transformer_lm: C
    depth: int = 2  # transformer_lm: blocks
    heads: int = 4  # transformer_lm: attention heads (divide width)


@dataclass
class MethodConfig:
    name: Literal[CHOICES["method.name"]] = "divebatch"
    initial_batch_size: int = 128
    max_batch_size: int = 2048
    resize_freq: int = 20  # epochs between batch-size decisions
    delta: float = 0.1  # DiveBatch: m_new = delta * n * Delta_hat
    lr_rescale: bool = False  # multiply lr by m_new / m at each resize
    # with lr_rescale: linear (lr ~ m; SGD) | sqrt (lr ~ sqrt(m); Adam, Malladi et al. 2022)
    lr_scaling: Literal[CHOICES["method.lr_scaling"]] = "linear"
    max_micro_batch: int = 2048  # larger batches are split and their gradients accumulated
    # exact: authors' epoch estimator; microbatch: two-scale; fixed_point: Delta(w) (eval-mode BatchNorm);
    # fixed_point_train: Delta(w) with the authors' train-mode BatchNorm convention (docs/diversity.md)
    diversity_estimator: Literal[CHOICES["method.diversity_estimator"]] = "exact"
    micro_batches: int = 2  # microbatch estimator: micro-batches per measured step (>= 2)
    # fixed_point: fixed random subset size (null or >= n: all n); docs/diversity.md
    fixed_point_samples: Optional[int] = 8192
    # method.name=schedule only (a schedule control, divebatch.schedule; docs/diversity.md):
    schedule: Optional[ScheduleKind] = None  # replay: a run's realized schedule | two_stage: m0, then max_batch_size
    schedule_from: Optional[str] = None  # run directory: replayed (replay) or its first resize epoch (two_stage)
    switch_epoch: Optional[int] = None  # two_stage: first epoch (0-based) at max_batch_size; null: see docs


@dataclass
class OptimConfig:
    # sgd (momentum, weight_decay, nesterov) | adamw (betas, eps, decoupled weight_decay)
    name: Literal[CHOICES["optim.name"]] = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False
    schedule: ScheduleName = "cosine"
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

    lr_rescale_rule: LrRescaleRule = (
        "linear"  # linear: lr = schedule(t) m/m0 | schedule_squared: lr0 s(t)^2 m/m0 (CIFAR-100)
    )
    warmup_at_lr_zero: bool = False  # warm-up epochs run at lr 0 (CIFAR-100: warm-up scheduler never stepped)
    micro_batch_loss: MicroBatchLoss = "per_sample"  # per_sample: chunk loss * b/B | per_chunk: chunk loss / chunks
    split_above: Optional[int] = None  # split a batch only when larger than this (null: method.max_micro_batch)
    running_grad_sum: bool = False  # estimator adds the running p.grad after every chunk (Tiny-ImageNet bug)
    mean_units: bool = False  # estimator sums S and A in the authors' per-backward mean units (1/(b k)^2, 1/(b k))
    head_classes: Optional[int] = None  # model outputs; null: the dataset's classes (Tiny-ImageNet code: 1000)


@dataclass
class PrimaryMetricConfig:
    """What a report judges a run by (docs/analysis.md, "Primary metric"), declared per data set."""

    column: MetricColumn = "val_acc"  # metrics.csv column: val_acc (percent) | val_loss (nats per token/sample)
    direction: MetricDirection = "higher"  # higher | lower is better
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
    mode: WandbMode = "disabled"  # wandb only when asked for: online | offline (divebatch.wandb_logging)
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
    protocol: Optional[Protocol] = None
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
    # file (configs/methods/, read by divebatch.methods); null: guessed (runs written before)
    display_name: Optional[str] = None
