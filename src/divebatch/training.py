"""Training: one config in, one complete and resumable run directory out.

The epoch loop (:func:`train`) follows the authors' order: train the epoch (measuring gradient
diversity only in epochs that end with a resize decision), evaluate, step the lr scheduler, then
let the batch-size policy decide and rescale the lr if configured.

Data-parallel runs (torchrun; docs/distributed.md) change the loop at a few marked points, all
through one :class:`divebatch.distributed.DistContext` (``ctx``): the loaders are this rank's
shards (:func:`divebatch.data.make_loaders` with ``ctx.rank``/``ctx.world_size``), the model is
wrapped in DDP (``ctx.wrap``), the epoch's statistics and gradient diversity are summed over ranks
(``ctx.reduce_train_stats``, ``ctx.reduce_eval``, ``ctx.diversity``), rank 0 reads the run
directory for every rank (``ctx.on_main``) and does all writes and logging (``if ctx.is_main:``).
In a single process each of these is the identity.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import resource
import shlex
import sys
import time
import uuid
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from tqdm.auto import tqdm

from divebatch import distributed, provenance, train_args
from divebatch.config import NO_BACKPACK_MODELS, ConfigError, load_config, to_yaml
from divebatch.data import (
    DataError,
    batch_shares,
    build_data,
    decode_imagefolder,
    fixed_subset_indices,
    make_loaders,
    reference_batches,
    resolve_loader,
)
from divebatch.method.controller import BatchSizeController, accumulate_step, micro_batch_plan  # noqa: F401
from divebatch.models import build_model
from divebatch.optimizers import build_optimizer

# the run-directory format lives in divebatch.rundir; its names stay importable from here
from divebatch.rundir import METRIC_COLUMNS, RunDir, RunDirError  # noqa: F401
from divebatch.rundir import atomic_write as _atomic_write


class TrainingOutOfMemory(RuntimeError):
    """CUDA ran out of memory in a training or evaluation step; the message names the batch size,
    the micro-batch size and the setting to lower (``method.max_micro_batch``)."""


# the most runs that share this process's GPU (set by divebatch.orchestration.launch.Pool), for the message above
RUNS_PER_GPU_ENV = "DIVEBATCH_RUNS_PER_GPU"


class WandbLogger:
    """Logs each metrics row and the config to wandb (offline by default; off with wandb.mode=disabled)."""

    def __init__(self, cfg: DictConfig, run_dir: Path, run_id: str):
        self.run = None
        if cfg.wandb.mode == "disabled":
            return
        os.environ.setdefault("WANDB_SILENT", "true")
        import wandb

        # Under `wandb agent` the sweep's run already exists and wandb.init joins it through
        # WANDB_SWEEP_ID / WANDB_RUN_ID: pass no id, project or entity of ours (divebatch.orchestration.sweeps).
        where = (
            {}
            if os.environ.get("WANDB_SWEEP_ID")
            else dict(project=cfg.wandb.project, entity=cfg.wandb.entity, id=run_id)
        )
        if os.environ.get("WANDB_SWEEP_ID") and cfg.wandb.mode != "online":
            print(
                f"[divebatch] warning: running under a wandb sweep agent with wandb.mode={cfg.wandb.mode}; "
                f"the sweep will not see this run's metrics (allowed for sweeps: wandb.mode=online)",
                file=sys.stderr,
            )
        try:
            self.run = wandb.init(
                group=cfg.wandb.group,
                name=cfg.wandb.name or run_dir.name,
                tags=list(cfg.wandb.tags),
                config=OmegaConf.to_container(cfg, resolve=True),
                dir=str(run_dir),
                mode=cfg.wandb.mode,
                resume="allow",
                reinit="finish_previous",
                **where,
            )
        except Exception as err:  # logging must never cost a training run
            print(f"[divebatch] warning: wandb.init failed ({err}); continuing without wandb", file=sys.stderr)

    def log(self, row: dict) -> None:
        if self.run is not None:
            self.run.log({k: v for k, v in row.items() if v is not None}, step=row["epoch"])

    def finish(self, summary: dict) -> None:
        if self.run is not None:
            self.run.summary.update(summary)
            self.run.finish()


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"invalid config: device={name!r}; allowed here: auto | cpu (no CUDA device found)")
    return torch.device(name)


def build_schedulers(optim_cfg, optimizer, epochs: int, steps_per_epoch: int, linear_warmup: bool = True):
    """Per-epoch lr scheduler (torch's chainable schedulers) and an optional per-step linear warm-up.

    Args:
        linear_warmup: build the warm-up of ``optim.warmup_epochs`` (False where the warm-up epochs
            run at lr 0 instead, ``fidelity.warmup_at_lr_zero``).
    Returns:
        (scheduler stepped once per epoch, warm-up scheduler stepped once per optimizer step or None).
    """
    sched = torch.optim.lr_scheduler
    per_epoch = {
        "constant": lambda: sched.ConstantLR(optimizer, factor=1.0, total_iters=0),
        "cosine": lambda: sched.CosineAnnealingLR(optimizer, T_max=optim_cfg.t_max or epochs),
        "multistep": lambda: sched.MultiStepLR(optimizer, list(optim_cfg.milestones), optim_cfg.gamma),
        "step": lambda: sched.StepLR(optimizer, optim_cfg.step_size, optim_cfg.gamma),
    }[optim_cfg.schedule]()
    warmup = None
    if optim_cfg.warmup_epochs > 0 and linear_warmup:
        total = optim_cfg.warmup_epochs * steps_per_epoch
        warmup = sched.LinearLR(optimizer, start_factor=1.0 / total, end_factor=1.0, total_iters=total)
    return per_epoch, warmup


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory in MB: CUDA allocator peak since the last reset, or the process's peak RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def train_one_epoch(
    model,
    loader,
    optimizer,
    criterion,
    max_micro_batch: int,
    estimator=None,
    warmup=None,
    autocast=contextlib.nullcontext,
    desc: str = "",
    progress: bool = True,
    split_above: int | None = None,
    micro_batch_loss: str = "per_sample",
) -> dict:
    """One pass over the training data, each step's gradients by
    :func:`divebatch.method.controller.accumulate_step` (batches above ``split_above``, default
    ``max_micro_batch``, split into chunks of ``max_micro_batch``, each chunk's loss weighted by
    :func:`~divebatch.method.controller.micro_batch_weight`). Statistics stay on the device until the end.
    With an ``estimator`` (a measured epoch) the loop runs inside ``estimator.measuring(model)``
    and the estimator may choose the micro-batch sizes (its own plans always use ``per_sample``
    weights).

    Returns:
        dict with train_loss (mean per sample), train_acc (percent; of the predicted positions for
        sequence targets), steps, samples, lr (of the last step).
    """
    model.train()
    device = next(model.parameters()).device
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    samples = steps = 0
    positions = 1  # predictions per sample: 1 for a class label, T for a (B, T) sequence target
    shares = batch_shares(loader)  # data-parallel: global batch / ranks per step (None in one process)
    measuring = estimator.measuring(model) if estimator is not None else contextlib.nullcontext()
    with measuring:  # e.g. BackPACK's hooks: on for this measured epoch only
        for x, y in tqdm(loader, desc=desc, leave=False, disable=not progress, dynamic_ncols=True):
            batch = len(y) if shares is None else shares[steps]
            optimizer.zero_grad(set_to_none=True)
            step = accumulate_step(
                model,
                x,
                y,
                criterion,
                estimator,
                max_micro_batch,
                split_above=split_above,
                micro_batch_loss=micro_batch_loss,
                autocast=autocast,
                sync=distributed.sync_gradients,  # data-parallel: DDP's all-reduce on the last micro-batch only
                global_batch=batch,
            )
            loss_sum += step.loss_sum
            correct += step.correct
            positions = step.positions
            lr = optimizer.param_groups[0]["lr"]  # the lr this step uses (changes within warm-up epochs)
            optimizer.step()
            if warmup is not None:
                warmup.step()
            samples += batch
            steps += 1
    return {
        "train_loss": loss_sum.item() / samples,
        "train_acc": 100.0 * correct.item() / (samples * positions),
        "steps": steps,
        "samples": samples,
        "lr": lr,
    }


@torch.no_grad()
def evaluate(model, loader, criterion, autocast=contextlib.nullcontext) -> tuple[float, float]:
    """Mean loss per sample and accuracy (percent; of all predicted positions for (B, T) sequence targets)."""
    model.eval()
    device = next(model.parameters()).device
    loss_sum, correct, n = torch.zeros((), device=device), torch.zeros((), device=device, dtype=torch.long), 0
    predicted = 0
    for x, y in loader:
        with autocast():
            out = model(x)
        loss_sum += criterion(out.float(), y) * len(y)
        correct += (out.argmax(1) == y).sum()
        n += len(y)
        predicted += y.numel()
    return loss_sum.item() / n, 100.0 * correct.item() / predicted


def out_of_memory_message(
    err: BaseException, cfg: DictConfig, epoch: int, batch_size: int, micro_batch: int, phase: str, epochs_done: int
) -> str:
    """The error shown for a CUDA out-of-memory error in ``phase`` (``training`` or ``evaluation``)
    of ``epoch`` (0-based): batch size and micro-batch size in samples, the setting to lower with a
    value to try, and that rerunning resumes from the last finished epoch."""
    cap = cfg.method.max_micro_batch
    lower = max(1, min(cap, micro_batch) // 2)
    shared = os.environ.get(RUNS_PER_GPU_ENV)
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    where = (
        f"batch size {batch_size}, micro-batch size {micro_batch} (method.max_micro_batch={cap})"
        if phase == "training"
        else f"evaluation batch size {micro_batch}; training batch size {batch_size}, method.max_micro_batch={cap}"
    )
    lines = [
        f"CUDA out of memory in epoch {epoch + 1}/{cfg.epochs} ({phase}; {where}): {first}",
        f"Lower method.max_micro_batch (now {cap}), e.g. method.max_micro_batch={lower} "
        f"(divebatch replicate: --set method.max_micro_batch={lower}), and rerun the same command: the run "
        f"resumes from its last finished epoch ({epochs_done}/{cfg.epochs}); a changed method.max_micro_batch "
        f"does not refuse the resume (the micro-batch gradients add up to the same optimizer step).",
    ]
    if shared and shared != "1":
        lines.append(
            f"Up to {shared} runs share this GPU: fewer (divebatch replicate --runs-per-gpu) leave each more memory."
        )
    return "\n".join(lines)


def _log(msg: str) -> None:
    """A progress line on stdout (the trainer calls it on rank 0 only)."""
    tqdm.write(f"[divebatch] {msg}", file=sys.stdout)


def train(cfg: DictConfig) -> dict:
    """Train one run described by ``cfg`` into ``cfg.out_dir``; resume it if it was cut.

    Returns:
        The run's summary (also written to summary.json).
    A run whose training loss becomes non-finite stops after that epoch; its summary says
    ``diverged: true`` (and ``diverged_epoch``, 0-based) and it counts as finished.

    Raises:
        RunDirError: out_dir holds another run or an unreadable checkpoint, or another process is
            training in it (one writer per run folder: :meth:`divebatch.rundir.RunDir.lock`).
        DataError: dataset files are missing or malformed (the message says what is expected).
    """
    run = RunDir(cfg.out_dir)  # rank 0 alone reads and writes it; what it reads is broadcast (ctx.on_main)
    try:
        return _train(cfg, run)
    finally:
        run.unlock()  # prepare() took the writer lock on rank 0


def _train(cfg: DictConfig, run: RunDir) -> dict:
    ctx = distributed.setup(cfg.device)  # under torchrun: join the process group (docs/distributed.md)
    microbatch = cfg.method.name == "divebatch" and cfg.method.diversity_estimator == "microbatch"
    if ctx.enabled and (cfg.shadow.enabled or microbatch):  # refused now, not at the first measured epoch
        key, value = ("shadow.enabled", True) if cfg.shadow.enabled else ("method.diversity_estimator", "microbatch")
        raise ConfigError(
            f"invalid config: {key}={value} under torchrun ({ctx.world_size} processes); allowed: a single "
            f"process (its per-rank sums are not reduced across ranks)"
        )
    changed, summary = ctx.on_main(lambda: (run.prepare(cfg), run.read_summary()))
    if summary and summary.get("finished"):
        if ctx.is_main:
            _log(f"{run.path}: finished already ({summary['epochs_completed']} epochs); nothing to train")
        return summary
    device = ctx.device if ctx.enabled else resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    torch.use_deterministic_algorithms(cfg.deterministic, warn_only=True)

    if ctx.enabled and cfg.data.name == "imagefolder":  # rank 0 fills the decoded-image cache, the others read it
        ctx.on_main(lambda: decode_imagefolder(Path(cfg.data.path)) and None)  # None: nothing to broadcast
    bundle = build_data(cfg.data)
    fid = cfg.fidelity  # where the authors' code differs from the method (docs/protocol.md)
    model = build_model(
        cfg.model.name,
        fid.head_classes or bundle.num_classes,
        bundle.in_channels,
        bundle.image_size,
        cfg.model.width,
        depth=cfg.model.depth,
        heads=cfg.model.heads,
    )
    # the method itself (batch size, diversity, resize, lr rescaling): the library API of divebatch.method.controller
    ctl = BatchSizeController.from_config(cfg, bundle.n_train, backpack=cfg.model.name not in NO_BACKPACK_MODELS)
    model = ctl.prepare(model)
    if cfg.method.name == "divebatch" and cfg.method.diversity_estimator in ("fixed_point", "fixed_point_train"):
        subset = fixed_subset_indices(bundle.n_train, cfg.method.fixed_point_samples, cfg.seed)  # no augmentation
        if cfg.method.diversity_estimator == "fixed_point_train":  # BatchNorm batches of random samples, not sorted
            subset = subset[torch.randperm(len(subset), generator=torch.Generator().manual_seed(cfg.seed + 104_729))]
        ctl.attach_reference(reference_batches(bundle, subset, cfg.method.max_micro_batch, device))
    shadow = None
    if cfg.shadow.enabled:  # every estimator at the resize points, beside an sgd/adabatch run (divebatch.method.shadow)
        from divebatch.method.shadow import ShadowRecorder

        shadow = ShadowRecorder(
            cfg.shadow,
            cfg.method.fixed_point_samples,
            bundle,
            device,
            cfg.seed,
            cfg.method.resize_freq,
            cfg.method.max_micro_batch,
            augmented=cfg.data.augment,
            backpack=cfg.model.name not in NO_BACKPACK_MODELS,
        )
        model = shadow.prepare(model)
    model = model.to(device, memory_format=torch.channels_last if cfg.speed.channels_last else torch.preserve_format)
    eager_model = ctx.wrap(model)  # DDP in a process group
    forward_model = torch.compile(eager_model) if cfg.speed.compile else eager_model
    loader = resolve_loader(cfg.data.loader, bundle)
    generator = torch.Generator(device=device if loader == "device" else "cpu").manual_seed(cfg.seed)
    train_loader, test_loader = make_loaders(  # data-parallel: this rank's shards of the global batches
        bundle, cfg.data, ctl.batch_size, device, generator, loader, rank=ctx.rank, world_size=ctx.world_size
    )
    optimizer = build_optimizer(cfg.optim, model.parameters())  # optim.name: sgd | adamw
    # authors' CIFAR-100 code: the warm-up scheduler is built but never stepped (warm-up epochs at lr 0)
    scheduler, warmup = build_schedulers(
        cfg.optim, optimizer, cfg.epochs, len(train_loader), linear_warmup=not fid.warmup_at_lr_zero
    )
    criterion = nn.CrossEntropyLoss()
    use_bf16 = cfg.speed.bf16 and device.type == "cuda"
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if use_bf16 else contextlib.nullcontext

    state = ctx.on_main(run.load_checkpoint)  # rank 0 reads it, every rank resumes from it
    history, counters = [], {"optimizer_steps": 0, "samples_seen": 0, "wall_time_s": 0.0}
    if state is None:
        start_epoch, run_id = 0, uuid.uuid4().hex[:12]
        if ctx.is_main:
            run.write_json(
                run.manifest,
                provenance.manifest(
                    device,
                    cfg.seed,
                    wandb_id=run_id,
                    n_train=bundle.n_train,
                    # argv[0] is where the entry point is installed on this machine: not part of the command
                    command=shlex.join(["divebatch", *sys.argv[1:]]),
                    resumes=[],
                    distributed=ctx.describe(),
                ),
            )
            _log(
                f"{run.path}: started ({cfg.method.name}, {cfg.data.name}, {cfg.model.name}, seed {cfg.seed}, {device})"
            )
    else:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if warmup is not None:
            warmup.load_state_dict(state["warmup"])
        ctl.load_state_dict(state["policy"])
        if shadow is not None:
            shadow.load_state_dict(state.get("shadow"))
        torch.set_rng_state(state["rng"]["torch"])
        generator.set_state(state["rng"]["loader"])
        start_epoch, history, counters = state["next_epoch"], state["history"], state["counters"]
        if ctx.is_main:  # the manifest is rank 0's to read and rewrite
            if shadow is not None:
                shadow.write(run.path, _atomic_write)
            manifest = json.loads(run.manifest.read_text())
            run_id = manifest["wandb_id"]
            manifest["resumes"].append(
                {
                    "epoch": start_epoch,
                    "time": provenance.manifest(device, cfg.seed)["start_time"],
                    "commit": provenance.git_commit(),
                    "device": provenance.device_description(device),
                    **({"changed": changed} if changed else {}),
                }
            )
            run.write_json(run.manifest, manifest)
            run.write_metrics(history)  # drops any row written after the checkpoint
            _log(f"{run.path}: resumed at epoch {start_epoch}/{cfg.epochs}")
    logger = WandbLogger(cfg, run.path, run_id) if ctx.is_main else None  # rank 0 alone logs to wandb

    for epoch in range(start_epoch, cfg.epochs):
        batch_size = ctl.batch_size
        train_loader.set_batch_size(batch_size)
        shadow_est = shadow.epoch_estimator(epoch) if shadow is not None else None
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        lr_zero = fid.warmup_at_lr_zero and epoch < cfg.optim.warmup_epochs
        scheduled_lrs = [g["lr"] for g in optimizer.param_groups]
        if lr_zero:
            for group in optimizer.param_groups:
                group["lr"] = 0.0
        t0 = time.perf_counter()
        epoch_est = ctl.begin_epoch(epoch, shadow_est)  # the estimator when this epoch measures, else the shadow's
        # BackPACK's module hooks (exact estimator) and torch.compile do not mix: measured epochs run eagerly
        train_model = eager_model if epoch_est is not None and epoch_est.uses_module_hooks else forward_model
        # the largest micro-batch (the out-of-memory message, the shadow's BatchNorm batch): planned without the
        # estimator, whose planning has state (the shadow's does not plan: the same plan)
        micro = max(micro_batch_plan(batch_size, cfg.method.max_micro_batch, None, fid.split_above))
        try:
            stats = train_one_epoch(
                train_model,
                train_loader,
                optimizer,
                criterion if shadow_est is None else shadow_est.criterion(criterion),
                cfg.method.max_micro_batch,
                epoch_est,
                warmup if epoch < cfg.optim.warmup_epochs else None,
                autocast,
                f"epoch {epoch + 1}/{cfg.epochs} m={batch_size}",
                cfg.progress and ctx.is_main,
                fid.split_above,
                fid.micro_batch_loss,
            )
        except torch.cuda.OutOfMemoryError as err:
            raise TrainingOutOfMemory(
                out_of_memory_message(err, cfg, epoch, batch_size, micro, "training", epoch)
            ) from None
        if lr_zero:
            for group, lr0 in zip(optimizer.param_groups, scheduled_lrs):
                group["lr"] = lr0
        ctl.finish_epoch(model)  # fixed_point: Delta(w) at the epoch's final weights
        stats = ctx.reduce_train_stats(stats, model)  # sums over ranks; rank 0's BatchNorm buffers
        t1 = time.perf_counter()
        try:
            val_loss, val_acc = evaluate(forward_model, test_loader, criterion, autocast)
        except torch.cuda.OutOfMemoryError as err:
            raise TrainingOutOfMemory(
                out_of_memory_message(
                    err, cfg, epoch, batch_size, getattr(test_loader, "batch_size", 0), "evaluation", epoch
                )
            ) from None
        val_loss, val_acc = ctx.reduce_eval(val_loss, val_acc, test_loader)
        t2 = time.perf_counter()
        diversity = ctl.diversity(ctx.diversity)  # None: not measured; data-parallel: summed over ranks
        if shadow_est is not None:  # at the weights the resize decision would see; not counted in wall time
            shadow.record(model, epoch, stats["lr"], batch_size, t1 - t0, bn_batch=micro)
        lr = stats["lr"]
        decision = ctl.end_epoch(epoch, optimizer, scheduler, diversity)  # scheduler step, resize, lr rescaling
        counters["optimizer_steps"] += stats["steps"]
        counters["samples_seen"] += stats["samples"]
        counters["wall_time_s"] += t2 - t0
        row = {
            "epoch": epoch,
            "train_loss": stats["train_loss"],
            "train_acc": stats["train_acc"],
            "val_loss": val_loss,
            "val_acc": val_acc,
            "lr": lr,
            "batch_size": batch_size,
            "grad_diversity": diversity,
            **counters,
            "epoch_time_s": t1 - t0,
            "eval_time_s": t2 - t1,
            "peak_memory_mb": peak_memory_mb(device),
        }
        history.append(row)
        if ctx.is_main:  # rank 0 writes the run directory and logs; the other ranks hold the same state
            run.save_checkpoint(
                {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "warmup": warmup.state_dict() if warmup is not None else None,
                    "policy": ctl.state_dict(),
                    "rng": {"torch": torch.get_rng_state(), "loader": generator.get_state()},
                    "next_epoch": epoch + 1,
                    "history": history,
                    "counters": dict(counters),
                    **({"shadow": shadow.state_dict()} if shadow is not None else {}),
                }
            )
            run.write_metrics(history)
            if shadow is not None:
                shadow.write(run.path, _atomic_write)
            logger.log(row)
        if not math.isfinite(stats["train_loss"]):  # at paper scale, training on NaN costs GPU-hours
            if ctx.is_main:
                _log(
                    f"epoch {epoch + 1}/{cfg.epochs}: the training loss became {stats['train_loss']} (lr {lr:.4g}, "
                    f"batch size {batch_size}); the run stops here and summary.json records it as diverged. Lower "
                    f"optim.lr (or set method.lr_rescale=false, or a smaller method.max_batch_size), then train into "
                    f"a new out_dir."
                )
            break
        if ctx.is_main:
            div_txt = (
                f" diversity={diversity:.4g} (n*Delta={diversity * bundle.n_train:.4g})"
                if diversity is not None
                else ""
            )
            _log(
                f"epoch {epoch + 1}/{cfg.epochs} m={batch_size} lr={lr:.4g} train_loss={stats['train_loss']:.4f} "
                f"val_acc={val_acc:.2f}% time={t2 - t0:.1f}s{div_txt}"
                + (f" -> m={decision.next_batch_size}" if decision.resized else "")
            )

    finite = [r for r in history if math.isfinite(r["val_acc"])] or history
    best = max(finite, key=lambda r: r["val_acc"])
    last = history[-1]
    summary = {
        "finished": True,
        "epochs_completed": len(history),
        "final_val_acc": last["val_acc"],
        "best_val_acc": best["val_acc"],
        "best_epoch": best["epoch"],
        "final_train_loss": last["train_loss"],
        "final_val_loss": last["val_loss"],
        "final_batch_size": last["batch_size"],
        "optimizer_steps": last["optimizer_steps"],
        "wall_time_s": last["wall_time_s"],
    }
    diverged = [r["epoch"] for r in history if not math.isfinite(r["train_loss"])]
    summary["diverged"] = bool(diverged)
    if diverged:
        summary["diverged_epoch"] = diverged[0]  # 0-based, as in metrics.csv
    if ctx.is_main:
        run.write_json(run.summary, summary)
        logger.finish(summary)
        _log(
            f"{run.path}: finished, final val_acc={last['val_acc']:.2f}%, best {best['val_acc']:.2f}% "
            f"at epoch {best['epoch']}"
        )
    return summary


def cli(argv: list[str]) -> int:
    """``divebatch train CONFIG.yaml [KEY=VALUE ...]`` (the arguments: :mod:`divebatch.train_args`)."""
    args, overrides = train_args.parse(argv)
    try:
        cfg = load_config(args.config, overrides, check_data=not args.print_config)
        if args.print_config:
            print(to_yaml(cfg), end="")
            return 0
        train(cfg)
    except (ConfigError, RunDirError, DataError, TrainingOutOfMemory) as err:  # the user's to fix; else a bug
        print(f"divebatch train: error{distributed.rank_tag()}: {err}", file=sys.stderr)
        return 3 if isinstance(err, TrainingOutOfMemory) else 2
    except Exception as err:
        distributed.report_failure(err)  # which rank failed; explains collective timeouts
        raise
    return 0
