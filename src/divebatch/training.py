"""Training: one config in, one complete and resumable run directory out.

:class:`Run` owns what trains (data, model, the DiveBatch controller, optimizer, schedulers) and
their ``state_dict``; :func:`train` is the loop around it: set up, resume from the checkpoint,
then per epoch :meth:`Run.run_epoch`, a checkpoint, metrics.csv and a log line. An epoch follows
the authors' order: train (measuring gradient diversity only in epochs that end with a resize
decision), evaluate, step the lr scheduler, then let the batch-size policy decide and rescale the
lr if configured. The controller is driven exactly as in ``examples/custom_loop.py``
(``ctl.epoch`` / ``ctl.forward_backward`` / ``ctl.end_epoch``). The run directory's files and
its resume bookkeeping are :class:`divebatch.rundir.RunDir`'s.

Data-parallel runs (torchrun; docs/distributed.md) change the loop at a few marked points, all
through one :class:`divebatch.distributed.DistContext` (``ctx``): the loaders are this rank's
shards (:func:`divebatch.data.make_loaders` with ``ctx.rank``/``ctx.world_size``), the model is
wrapped in DDP (``ctx.wrap``), the epoch's statistics and gradient diversity are summed over ranks
(``ctx.reduce_train_stats``, ``ctx.reduce_eval``, ``ctx.diversity``), rank 0 reads the run
directory for every rank (``ctx.on_main``) and does all writes and logging (``if ctx.is_main:``).
In a single process each of these is the identity.

Faults end in one line and an exit status (docs/faults.md): 2 the user's to fix (config, data, run
folder, full disk, read-only folder), 3 CUDA out of memory, 130 Ctrl-C; anything else is a bug
and keeps its traceback.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import resource
import shlex
import sys
import time
import uuid
from pathlib import Path

import torch
from omegaconf import DictConfig
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
from divebatch.method.controller import BatchSizeController, accumulate_step, micro_batch_plan
from divebatch.models import build_model
from divebatch.optimizers import build_optimizer

# the run-directory format lives in divebatch.rundir; its names stay importable from here
from divebatch.rundir import METRIC_COLUMNS, RunDir, RunDirError, summarize  # noqa: F401
from divebatch.rundir import atomic_write as _atomic_write
from divebatch.schedule import schedule_for
from divebatch.schedules import Warmup, build_schedulers
from divebatch.wandb_logging import WandbLogger


class TrainingOutOfMemory(RuntimeError):
    """CUDA ran out of memory in a training or evaluation step; the message names the batch size,
    the micro-batch size and the setting to lower (``method.max_micro_batch``)."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) stopped :func:`train`; the message names the epoch and how to resume."""


# the most runs that share this process's GPU (set by divebatch.orchestration.launch.Pool), for the message above
RUNS_PER_GPU_ENV = "DIVEBATCH_RUNS_PER_GPU"


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"invalid config: device={name!r}; allowed here: auto | cpu (no CUDA device found)")
    return torch.device(name)


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory in MB: CUDA allocator peak since the last reset, or the process's peak RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def train_steps(model, loader, optimizer, forward_backward, warmup=None, desc: str = "", progress: bool = True) -> dict:
    """One pass over ``loader``: per batch ``zero_grad``, ``forward_backward`` (the step's
    gradients, e.g. :meth:`divebatch.method.controller.BatchSizeController.forward_backward` with
    the criterion bound), ``optimizer.step()`` and the per-step ``warmup`` scheduler, if any.
    Statistics stay on the device until the end.

    Args:
        forward_backward: ``forward_backward(model, x, y, global_batch=B)`` -> :class:`~divebatch.method.controller.StepStats`.
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
    for x, y in tqdm(loader, desc=desc, leave=False, dynamic_ncols=True) if progress else loader:
        batch = len(y) if shares is None else shares[steps]
        optimizer.zero_grad(set_to_none=True)
        step = forward_backward(model, x, y, global_batch=batch)
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


def train_one_epoch(
    model,
    loader,
    optimizer,
    criterion,
    max_micro_batch: int = 2048,
    estimator=None,
    warmup=None,
    autocast=contextlib.nullcontext,
    desc: str = "",
    progress: bool = True,
    split_above: int | None = None,
    micro_batch_loss: str = "per_sample",
) -> dict:
    """One epoch with a bare estimator and no controller (the estimator-level API that the tests and
    benchmarks measure estimators with; the trainer uses the controller): :func:`train_steps` with
    :func:`divebatch.method.controller.accumulate_step` (batches above ``split_above``, default
    ``max_micro_batch``, split into chunks of ``max_micro_batch``), inside
    ``estimator.measuring(model)`` when an ``estimator`` is given. Returns :func:`train_steps`'s dict.
    """
    step = functools.partial(
        accumulate_step,
        criterion=criterion,
        estimator=estimator,
        max_micro_batch=max_micro_batch,
        split_above=split_above,
        micro_batch_loss=micro_batch_loss,
        autocast=autocast,
        sync=distributed.sync_gradients,
    )
    with estimator.measuring(model) if estimator is not None else contextlib.nullcontext():
        return train_steps(model, loader, optimizer, step, warmup, desc, progress)


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
    err: BaseException, cfg: DictConfig, epoch: int, batch_size: int, micro_batch: int, phase: str
) -> str:
    """The error shown for a CUDA out-of-memory error in ``phase`` (``training`` or ``evaluation``)
    of ``epoch`` (0-based; shown 1-based): batch size and micro-batch size in samples, the setting
    to lower with a value to try, and that rerunning resumes after the ``epoch`` finished epochs."""
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
        f"resumes from its last finished epoch ({epoch}/{cfg.epochs}); a changed method.max_micro_batch "
        f"does not refuse the resume (the micro-batch gradients add up to the same optimizer step).",
    ]
    if shared and shared != "1":
        lines.append(
            f"Up to {shared} runs share this GPU: fewer (divebatch replicate --runs-per-gpu) leave each more memory."
        )
    return "\n".join(lines)


@contextlib.contextmanager
def out_of_memory(cfg: DictConfig, epoch: int, phase: str, batch_size: int, micro_batch: int):
    """Turns a CUDA out-of-memory error inside the block into :class:`TrainingOutOfMemory`
    (:func:`out_of_memory_message`)."""
    try:
        yield
    except torch.cuda.OutOfMemoryError as err:
        raise TrainingOutOfMemory(out_of_memory_message(err, cfg, epoch, batch_size, micro_batch, phase)) from None


def _log(msg: str) -> None:
    """A progress line on stdout (the trainer calls it on rank 0 only)."""
    tqdm.write(f"[divebatch] {msg}", file=sys.stdout)


class Run:
    """What one run trains, built from ``cfg`` in a fixed order (the seed makes it reproducible):
    data, model, the DiveBatch controller (:class:`~divebatch.method.controller.BatchSizeController`),
    the optional shadow measurement, loaders, optimizer and schedulers; plus what the run has done
    (``history``: metrics rows, ``counters``, ``next_epoch``). :meth:`state_dict` is the checkpoint.

    Raises:
        DataError: dataset files are missing or malformed.
        ConfigError: a setting this process cannot run (device, distributed, schedule replay).
    """

    def __init__(self, cfg: DictConfig, ctx: distributed.DistContext):
        self.cfg, self.ctx = cfg, ctx
        self.device = device = ctx.device if ctx.enabled else resolve_device(cfg.device)
        torch.manual_seed(cfg.seed)
        torch.use_deterministic_algorithms(cfg.deterministic, warn_only=True)
        if ctx.enabled and cfg.data.name == "imagefolder":  # rank 0 fills the decoded-image cache, the others read it
            ctx.on_main(lambda: decode_imagefolder(Path(cfg.data.path)) and None)  # None: nothing to broadcast
        self.bundle = bundle = build_data(cfg.data)
        self.ctl, self.shadow, model = self._method(bundle)
        self.model = model.to(
            device, memory_format=torch.channels_last if cfg.speed.channels_last else torch.preserve_format
        )
        self.eager_model = ctx.wrap(self.model)  # DDP in a process group
        self.forward_model = torch.compile(self.eager_model) if cfg.speed.compile else self.eager_model
        loader = resolve_loader(cfg.data.loader, bundle)
        self.generator = torch.Generator(device=device if loader == "device" else "cpu").manual_seed(cfg.seed)
        self.train_loader, self.test_loader = make_loaders(  # data-parallel: this rank's shards of the global batches
            bundle,
            cfg.data,
            self.ctl.batch_size,
            device,
            self.generator,
            loader,
            rank=ctx.rank,
            world_size=ctx.world_size,
        )
        self.optimizer = build_optimizer(cfg.optim, self.model.parameters())  # optim.name: sgd | adamw
        lr_zero = cfg.fidelity.warmup_at_lr_zero
        self.scheduler, linear = build_schedulers(
            cfg.optim, self.optimizer, cfg.epochs, len(self.train_loader), linear_warmup=not lr_zero
        )
        self.warmup = Warmup(self.optimizer, cfg.optim.warmup_epochs, linear, at_lr_zero=lr_zero)
        self.criterion = nn.CrossEntropyLoss()
        bf16 = cfg.speed.bf16 and device.type == "cuda"
        self.autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext
        self.history: list[dict] = []
        self.counters = {"optimizer_steps": 0, "samples_seen": 0, "wall_time_s": 0.0}
        self.next_epoch = 0

    def _method(self, bundle):
        """The model, the controller that prepares it (and its fixed subset for ``fixed_point``) and
        the shadow recorder (``shadow.enabled``), in the order that fixes the random draws."""
        cfg, device = self.cfg, self.device
        backpack = cfg.model.name not in NO_BACKPACK_MODELS
        model = build_model(
            cfg.model.name,
            cfg.fidelity.head_classes or bundle.num_classes,
            bundle.in_channels,
            bundle.image_size,
            cfg.model.width,
            depth=cfg.model.depth,
            heads=cfg.model.heads,
        )
        # the method itself (batch size, diversity, resize, lr rescaling): the library API of divebatch.method.controller
        ctl = BatchSizeController.from_config(cfg, bundle.n_train, backpack=backpack, schedule=schedule_for(cfg))
        model = ctl.prepare(model)
        estimator = cfg.method.diversity_estimator
        if cfg.method.name == "divebatch" and estimator in ("fixed_point", "fixed_point_train"):
            subset = fixed_subset_indices(bundle.n_train, cfg.method.fixed_point_samples, cfg.seed)  # no augmentation
            if estimator == "fixed_point_train":  # BatchNorm batches of random samples, not sorted
                subset = subset[
                    torch.randperm(len(subset), generator=torch.Generator().manual_seed(cfg.seed + 104_729))
                ]
            ctl.attach_reference(reference_batches(bundle, subset, ctl.max_micro_batch, device))
        shadow = None
        # every estimator at the resize points, beside an sgd/adabatch run (divebatch.shadow)
        if cfg.shadow.enabled:
            from divebatch.shadow import ShadowRecorder

            m = cfg.method
            shadow = ShadowRecorder(
                cfg.shadow,
                m.fixed_point_samples,
                bundle,
                device,
                cfg.seed,
                m.resize_freq,
                m.max_micro_batch,
                augmented=cfg.data.augment,
                backpack=backpack,
            )
            model = shadow.prepare(model)
        return ctl, shadow, model

    def state_dict(self) -> dict:
        """The checkpoint: every state the next epoch depends on, tensors and plain values only."""
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "warmup": self.warmup.state_dict(),
            "policy": self.ctl.state_dict(),
            "rng": {"torch": torch.get_rng_state(), "loader": self.generator.get_state()},
            "next_epoch": self.next_epoch,
            "history": self.history,
            "counters": dict(self.counters),
            **({"shadow": self.shadow.state_dict()} if self.shadow is not None else {}),
        }

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.warmup.load_state_dict(state["warmup"])
        self.ctl.load_state_dict(state["policy"])
        if self.shadow is not None:
            self.shadow.load_state_dict(state.get("shadow"))
        torch.set_rng_state(state["rng"]["torch"])
        self.generator.set_state(state["rng"]["loader"])
        self.next_epoch, self.history, self.counters = state["next_epoch"], state["history"], state["counters"]

    def run_epoch(self, epoch: int) -> dict:
        """Train, evaluate and decide epoch ``epoch`` (0-based), driving the controller as
        ``examples/custom_loop.py`` does; returns the epoch's metrics.csv row (also kept in ``history``)."""
        cfg, ctl, ctx = self.cfg, self.ctl, self.ctx
        batch_size = ctl.batch_size
        self.train_loader.set_batch_size(batch_size)
        shadow_est = self.shadow.epoch_estimator(epoch) if self.shadow is not None else None
        criterion = self.criterion if shadow_est is None else shadow_est.criterion(self.criterion)
        step = functools.partial(
            ctl.forward_backward, criterion=criterion, autocast=self.autocast, sync=distributed.sync_gradients
        )
        # the largest micro-batch (the out-of-memory message, the shadow's BatchNorm batch), planned without an estimator
        micro = max(micro_batch_plan(batch_size, ctl.max_micro_batch, split_above=ctl.split_above))
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        t0 = time.perf_counter()
        with out_of_memory(cfg, epoch, "training", batch_size, micro), self.warmup.epoch(epoch) as warmup:
            with ctl.epoch(epoch, self.model, shadow_est):  # measures only when this epoch decides (or the shadow's)
                # BackPACK's module hooks (exact estimator) and torch.compile do not mix: measured epochs run eagerly
                hooks = ctl.active is not None and ctl.active.uses_module_hooks
                model = self.eager_model if hooks else self.forward_model
                desc = f"epoch {epoch + 1}/{cfg.epochs} m={batch_size}"
                stats = train_steps(
                    model, self.train_loader, self.optimizer, step, warmup, desc, cfg.progress and ctx.is_main
                )
        stats = ctx.reduce_train_stats(stats, self.model)  # sums over ranks; rank 0's BatchNorm buffers
        t1 = time.perf_counter()
        with out_of_memory(cfg, epoch, "evaluation", batch_size, getattr(self.test_loader, "batch_size", 0)):
            val_loss, val_acc = evaluate(self.forward_model, self.test_loader, self.criterion, self.autocast)
        val_loss, val_acc = ctx.reduce_eval(val_loss, val_acc, self.test_loader)
        t2 = time.perf_counter()
        diversity = ctl.diversity(ctx.diversity)  # None: not measured; data-parallel: summed over ranks
        if shadow_est is not None:  # at the weights the resize decision would see; not counted in wall time
            self.shadow.record(self.model, epoch, stats["lr"], batch_size, t1 - t0, bn_batch=micro)
        ctl.end_epoch(epoch, self.optimizer, self.scheduler, diversity)  # scheduler step, resize, lr rescaling
        self.counters["optimizer_steps"] += stats["steps"]
        self.counters["samples_seen"] += stats["samples"]
        self.counters["wall_time_s"] += t2 - t0
        row = {
            "epoch": epoch,
            "train_loss": stats["train_loss"],
            "train_acc": stats["train_acc"],
            "val_loss": val_loss,
            "val_acc": val_acc,
            "lr": stats["lr"],
            "batch_size": batch_size,
            "grad_diversity": diversity,
            **self.counters,
            "epoch_time_s": t1 - t0,
            "eval_time_s": t2 - t1,
            "peak_memory_mb": peak_memory_mb(self.device),
        }
        self.history.append(row)
        self.next_epoch = epoch + 1
        return row


def train(cfg: DictConfig) -> dict:
    """Train one run described by ``cfg`` into ``cfg.out_dir``; resume it if it was cut.

    Returns:
        The run's summary (also written to summary.json; :func:`divebatch.rundir.summarize`). A run
        whose training loss becomes non-finite stops after that epoch; its summary says
        ``diverged: true`` and it counts as finished.
    Raises:
        RunDirError: out_dir holds another run or an unreadable checkpoint, another process is
            training in it (one writer per run folder: :meth:`divebatch.rundir.RunDir.lock`), or
            it cannot be written (full disk, read-only folder).
        DataError: dataset files are missing or malformed (the message says what is expected).
        TrainingOutOfMemory: CUDA ran out of memory.
        TrainingInterrupted: Ctrl-C; the run folder holds the last finished epoch, ready to resume.
    """
    rd = RunDir(cfg.out_dir)  # rank 0 alone reads and writes it; what it reads is broadcast (ctx.on_main)
    where = {"at": "while setting up"}  # what the run was doing, for the Ctrl-C message
    try:
        return _train(cfg, rd, where)
    except KeyboardInterrupt:
        raise TrainingInterrupted(
            f"interrupted {where['at']}; rerun the same command to resume ({rd.path} keeps every finished epoch)"
        ) from None
    finally:
        rd.unlock()  # prepare() took the writer lock on rank 0


def _train(cfg: DictConfig, rd: RunDir, where: dict) -> dict:
    ctx = distributed.setup(cfg.device)  # under torchrun: join the process group (docs/distributed.md)
    _refuse_unreduced(cfg, ctx)
    changed, summary = ctx.on_main(lambda: (rd.prepare(cfg), rd.read_summary()))
    if summary and summary.get("finished"):
        if ctx.is_main:
            _log(f"{rd.path}: {_finished_already(summary, cfg.epochs)}")
        return summary
    run = Run(cfg, ctx)
    state = ctx.on_main(rd.load_checkpoint)  # rank 0 reads it, every rank resumes from it
    if state is not None:
        run.load_state_dict(state)
    logger = _begin(cfg, ctx, rd, run, changed, state is not None) if ctx.is_main else None  # rank 0 alone: wandb

    for epoch in range(run.next_epoch, cfg.epochs):
        where["at"] = f"at epoch {epoch + 1}/{cfg.epochs}"
        row = run.run_epoch(epoch)
        if ctx.is_main:  # rank 0 writes the run directory and logs; the other ranks hold the same state
            rd.save_checkpoint(run.state_dict())
            where["at"] = f"at epoch {epoch + 2}/{cfg.epochs}" if epoch + 1 < cfg.epochs else "while finishing"
            rd.write_metrics(run.history)
            if run.shadow is not None:
                run.shadow.write(rd.path, _atomic_write)
            logger.log(row)
        if not math.isfinite(row["train_loss"]):  # at paper scale, training on NaN costs GPU-hours
            if ctx.is_main:
                _log(_diverged_line(row, cfg.epochs))
            break
        if ctx.is_main:
            _log(_epoch_line(row, cfg.epochs, run.ctl.batch_size, run.bundle.n_train))
    where["at"] = "while finishing"

    summary = summarize(run.history)
    if ctx.is_main:
        rd.write_json(rd.summary, summary)
        logger.finish(summary)
        _log(
            f"{rd.path}: finished, final val_acc={summary['final_val_acc']:.2f}%, best "
            f"{summary['best_val_acc']:.2f}% at epoch {summary['best_epoch'] + 1}/{cfg.epochs}"
        )
    return summary


def _refuse_unreduced(cfg: DictConfig, ctx: distributed.DistContext) -> None:
    """Refuse now, not at the first measured epoch, what sums per rank without reducing across ranks."""
    microbatch = cfg.method.name == "divebatch" and cfg.method.diversity_estimator == "microbatch"
    if ctx.enabled and (cfg.shadow.enabled or microbatch):
        key, value = ("shadow.enabled", True) if cfg.shadow.enabled else ("method.diversity_estimator", "microbatch")
        raise ConfigError(
            f"invalid config: {key}={value} under torchrun ({ctx.world_size} processes); allowed: a single "
            f"process (its per-rank sums are not reduced across ranks)"
        )


def _begin(
    cfg: DictConfig, ctx: distributed.DistContext, rd: RunDir, run: Run, changed: list[str], resumed: bool
) -> WandbLogger:
    """Rank 0: the manifest of a new run, or the resume recorded in it (rebuilt if deleted);
    metrics.csv cut back to the checkpoint's rows; the start line; the wandb logger."""

    def new_manifest() -> dict:
        return provenance.manifest(
            run.device,
            cfg.seed,
            wandb_id=uuid.uuid4().hex[:12],
            n_train=run.bundle.n_train,
            # argv[0] is where the entry point is installed on this machine: not part of the command
            command=shlex.join(["divebatch", *sys.argv[1:]]),
            resumes=[],
            distributed=ctx.describe(),
        )

    if not resumed:
        manifest = new_manifest()
        rd.start(manifest)
        what = f"{cfg.method.name}, {cfg.data.name}, {cfg.model.name}, seed {cfg.seed}, {run.device}"
        _log(f"{rd.path}: started ({what})")
    else:
        facts = {"commit": provenance.git_commit(), "device": provenance.device_description(run.device)}
        manifest, rebuilt = rd.resume(
            run.next_epoch, new_manifest, **facts, **({"changed": changed} if changed else {})
        )
        if rebuilt:
            _log(f"{rd.manifest} was missing: rebuilt it (commit, packages and device of this resume)")
        if run.shadow is not None:
            run.shadow.write(rd.path, _atomic_write)
        rd.write_metrics(run.history)  # drops any row written after the checkpoint
        _log(f"{rd.path}: resumed at epoch {run.next_epoch + 1}/{cfg.epochs} ({run.next_epoch} finished)")
    return WandbLogger(cfg, rd.path, manifest["wandb_id"])


def _finished_already(summary: dict, epochs: int) -> str:
    if summary.get("diverged"):
        at = summary.get("diverged_epoch", summary["epochs_completed"] - 1) + 1
        return (
            f"diverged in epoch {at}/{epochs} (training loss non-finite; summary.json says so); nothing to train. "
            f"To train again, lower optim.lr and use a new out_dir"
        )
    return f"finished already ({summary['epochs_completed']}/{epochs} epochs); nothing to train"


def _diverged_line(row: dict, epochs: int) -> str:
    return (
        f"epoch {row['epoch'] + 1}/{epochs}: the training loss became {row['train_loss']} (lr {row['lr']:.4g}, "
        f"batch size {row['batch_size']}); the run stops here and summary.json records it as diverged. Lower "
        f"optim.lr (or set method.lr_rescale=false, or a smaller method.max_batch_size), then train into "
        f"a new out_dir."
    )


def _epoch_line(row: dict, epochs: int, next_batch_size: int, n_train: int) -> str:
    diversity = row["grad_diversity"]
    div_txt = f" diversity={diversity:.4g} (n*Delta={diversity * n_train:.4g})" if diversity is not None else ""
    resized = f" -> m={next_batch_size}" if next_batch_size != row["batch_size"] else ""
    return (
        f"epoch {row['epoch'] + 1}/{epochs} m={row['batch_size']} lr={row['lr']:.4g} "
        f"train_loss={row['train_loss']:.4f} val_acc={row['val_acc']:.2f}% "
        f"time={row['epoch_time_s'] + row['eval_time_s']:.1f}s{div_txt}{resized}"
    )


def cli(argv: list[str]) -> int:
    """``divebatch train CONFIG.yaml [KEY=VALUE ...]`` (the arguments: :mod:`divebatch.train_args`);
    exit status 0, 2 (the user's to fix), 3 (CUDA out of memory), 130 (Ctrl-C); any other error
    keeps its traceback (docs/faults.md)."""
    args, overrides = train_args.parse(argv)
    try:
        cfg = load_config(args.config, overrides, check_data=not args.print_config)
        if args.print_config:
            print(to_yaml(cfg), end="")
            return 0
        train(cfg)
    except KeyboardInterrupt as err:  # TrainingInterrupted names the epoch
        text = str(err) if isinstance(err, TrainingInterrupted) else "interrupted; rerun the same command to resume"
        print(f"divebatch train{distributed.rank_tag()}: {text}", file=sys.stderr)
        return 130
    except (ConfigError, RunDirError, DataError, TrainingOutOfMemory) as err:  # the user's to fix; else a bug
        print(f"divebatch train: error{distributed.rank_tag()}: {err}", file=sys.stderr)
        return 3 if isinstance(err, TrainingOutOfMemory) else 2
    except Exception as err:
        distributed.report_failure(err)  # which rank failed; explains collective timeouts
        raise
    return 0
