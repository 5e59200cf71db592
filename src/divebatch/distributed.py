"""Data-parallel training with ``torchrun``: process group, DDP, cross-rank sums, rank-0 reads.

``torchrun --nproc_per_node=K -m divebatch train CONFIG [KEY=VALUE ...]`` starts K processes
(ranks); :func:`setup` reads torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
MASTER_PORT) and joins the process group: NCCL with device ``cuda:LOCAL_RANK`` on GPUs, gloo on
CPUs. Without torchrun's variables everything here is the identity and a run is the ordinary
single-process one. See docs/distributed.md.

The trainer's whole data-parallel surface is one :class:`DistContext`, made once by
:func:`setup`: ``rank``/``world_size`` (for the loaders), ``is_main`` (rank 0 does the writes,
visibly, under ``if ctx.is_main:``), ``on_main`` (rank 0 reads, every rank gets the result),
``wrap`` (DDP), ``reduce_train_stats`` / ``reduce_eval`` / ``diversity`` (the epoch's sums over
ranks). Besides it: :func:`sync_gradients` (DDP's ``no_sync`` for micro-batches) and, for the
command line, :func:`rank_tag` and :func:`report_failure`. Sharding of the data is in
:mod:`divebatch.data` (:func:`divebatch.data.make_loaders` with ``rank``/``world_size``), with
the loaders it changes; this module knows nothing of loaders.

Semantics (chosen so that K ranks compute what one process computes on the same samples):

* The configured batch size B is the *global* batch size. Every rank draws the same global
  permutation (same seed, generators kept in lockstep) and the same sequence of global batches;
  each global batch is cut into K contiguous shards of ``floor(B/K)`` or ``ceil(B/K)`` samples
  (the first ``B mod K`` ranks get one more, like ``numpy.array_split``), so every sample is used
  exactly once per epoch whatever the batch size. A last global batch with fewer samples than
  ranks (``0 < n mod B < K``) is merged into the one before it, so no rank ever gets an empty
  shard (that epoch then has one optimizer step fewer than in one process).
  (:func:`divebatch.data.global_batch_spans`, :func:`divebatch.data.shard_span`.)
* Each rank scales its loss so that its backward yields ``(K/B) * sum_{i in shard} g_i``; DDP
  averages over the K ranks, so every rank's ``p.grad`` is the global mean gradient
  ``(1/B) sum_i g_i`` even when shards differ in size (:func:`divebatch.data.batch_shares`).
* Gradient diversity (:class:`divebatch.method.diversity.EpochDiversityEstimator`, sum units): each rank
  accumulates its share (its own samples' squared norms; ``B/K`` times the global mean gradient),
  and :meth:`DistContext.diversity` sums the shares over ranks once per epoch, so S and A are the
  sums over all samples of the epoch. Rank 0's value is broadcast so every rank takes the same
  batch-size decision at the same epoch boundary.
* Evaluation is sharded the same way; losses and hit counts are summed over ranks.
* Only rank 0 writes the run directory and logs to wandb (the trainer's ``if ctx.is_main:``
  blocks); rank 0 reads the run directory and the checkpoint and broadcasts them
  (:meth:`DistContext.on_main`), so all ranks resume from the same state.
* Collectives time out after ``DIVEBATCH_DIST_TIMEOUT_S`` seconds (default 600, PyTorch's NCCL
  default), so a rank that hangs stops the job with an error instead of blocking forever; a rank
  that dies is noticed by torchrun, which stops the others.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import os
import pickle
import socket
import sys
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
import torch.distributed as dist
from torch import Tensor, nn

from divebatch.config import ConfigError

TIMEOUT_ENV = "DIVEBATCH_DIST_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 600.0
_INITIALISED_HERE = False  # whether setup() created the process group (then shutdown() destroys it)
_FAILED = False  # a rank that failed exits without destroying the group (that could wait on dead peers)


def launched_by_torchrun() -> bool:
    """True when torchrun (or another launcher with its environment) started this process."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def timeout_s() -> float:
    """Collective timeout in seconds from ``DIVEBATCH_DIST_TIMEOUT_S`` (default 600).

    Raises:
        ConfigError: the variable is not a number > 0.
    """
    raw = os.environ.get(TIMEOUT_ENV)
    if raw is None:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not value > 0:
        raise ConfigError.of(TIMEOUT_ENV, raw, "a number of seconds > 0", subject="environment")
    return value


def rank_tag() -> str:
    """``" [rank r/K]"`` in a process group, else ``""`` (for messages)."""
    if dist.is_available() and dist.is_initialized():
        return f" [rank {dist.get_rank()}/{dist.get_world_size()}]"
    return ""


# ----------------------------------------------------------------------------- context


@dataclass(frozen=True)
class DistContext:
    """Where this process stands in a data-parallel run.

    Attributes:
        rank, world_size, local_rank: torchrun's RANK, WORLD_SIZE, LOCAL_RANK (0, 1, 0 alone).
        device: this rank's device (None in a single process: the trainer resolves ``device``).
        backend: ``"nccl"`` or ``"gloo"``; None in a single process.
        timeout_s: collective timeout (seconds); None in a single process.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device | None = None
    backend: str | None = None
    timeout_s: float | None = None

    @property
    def enabled(self) -> bool:
        return self.backend is not None

    @property
    def is_main(self) -> bool:
        """True on rank 0 and in a single process: the rank that writes the run directory, logs
        and prints (the trainer guards those writes with ``if ctx.is_main:``)."""
        return self.rank == 0

    def describe(self) -> dict | None:
        """Manifest entry: world size, backend, timeout; None for a single process."""
        if not self.enabled:
            return None
        return {
            "world_size": self.world_size,
            "backend": self.backend,
            "timeout_s": self.timeout_s,
            "local_world_size": int(os.environ.get("LOCAL_WORLD_SIZE", self.world_size)),
        }

    # -- model

    def wrap(self, model: nn.Module) -> nn.Module:
        """DistributedDataParallel around ``model`` (already on ``self.device``); ``model`` alone otherwise.

        Wrap after the estimator's ``prepare`` (BackPACK's converter): BackPACK's hooks sit on the
        inner modules and fire under DDP; its per-sample quantities are the rank's own samples'.
        """
        if not self.enabled:
            return model
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)

    def sync_buffers(self, model: nn.Module) -> None:
        """Copy rank 0's buffers (BatchNorm running statistics) to every rank."""
        if self.enabled:
            for buf in model.buffers():
                dist.broadcast(buf, src=0)

    # -- collectives

    def all_reduce_sum(self, tensors: Sequence[Tensor]) -> None:
        """Sum each tensor over ranks, in place (one collective per tensor; no-op alone)."""
        if self.enabled:
            for t in tensors:
                dist.all_reduce(t, op=dist.ReduceOp.SUM)

    def sum_floats(self, values: Sequence[float]) -> list[float]:
        """Sums over ranks of a few Python numbers (float64, one collective)."""
        if not self.enabled:
            return [float(v) for v in values]
        t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.tolist()

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (pickled; for small objects and checkpoints)."""
        if not self.enabled:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0, device=self.device if self.backend == "nccl" else None)
        return box[0]

    def on_main(self, fn: Callable, *args) -> Any:
        """``fn(*args)`` run on rank 0 only, its result returned on every rank (broadcast).

        For reads of the run directory that every rank needs (summary, changed keys, checkpoint):
        other ranks never touch the files, so they need no shared file system. An exception that
        ``fn`` raises on rank 0 is broadcast too and raised on every rank (instead of the others
        waiting for a collective that never comes); one that cannot be pickled arrives as a
        RuntimeError with its type and message. In a single process: ``fn(*args)``.
        """
        if not self.enabled:
            return fn(*args)
        result = error = None
        if self.is_main:
            try:
                result = fn(*args)
            except Exception as err:  # re-raised on every rank below
                error = _picklable(err)
        result, error = self.broadcast((result, error))
        if error is not None:
            raise error
        return result

    # -- epoch statistics

    def reduce_train_stats(self, stats: dict, model: nn.Module | None = None) -> dict:
        """Global train statistics from each rank's ``train_one_epoch`` result, and one model.

        ``train_loss`` and ``train_acc`` are weighted by each rank's ``samples`` (its sample share)
        and ``samples`` is summed; other keys are kept. With ``model``, rank 0's buffers are copied
        to every rank first (DDP keeps parameters equal, but each rank's last forward updated its
        BatchNorm running statistics from its own shard), so evaluation and the checkpoint see one
        model.

        Args:
            stats: dict with train_loss (mean per sample), train_acc (percent), samples.
        Returns:
            A new dict; ``samples`` is an int (samples of the epoch over all ranks).
        """
        if not self.enabled:
            return stats
        if model is not None:
            self.sync_buffers(model)
        n = stats["samples"]
        loss_sum, hits, total = self.sum_floats([stats["train_loss"] * n, stats["train_acc"] * n, n])
        return {**stats, "train_loss": loss_sum / total, "train_acc": hits / total, "samples": int(round(total))}

    def reduce_eval(self, loss: float, acc: float, loader) -> tuple[float, float]:
        """Global (mean loss per sample, accuracy in percent) from each rank's values on its shard.

        Args:
            loss, acc: :func:`divebatch.training.evaluate`'s result on this rank's shard.
            loader: the :class:`divebatch.data.ShardedLoader` that produced the shard (gives its
                sample count).
        """
        if not self.enabled:
            return loss, acc
        n = loader.local_samples
        loss_sum, hits, total = self.sum_floats([loss * n, acc * n, n])
        return loss_sum / total, hits / total

    def diversity(self, estimator) -> float:
        """The epoch's gradient-diversity estimate, identical on every rank.

        Each rank's accumulated shares are summed over ranks (``estimator.all_reduce_``), the value
        is computed, and rank 0's value is broadcast so the batch-size decision cannot differ by
        rounding. In a single process: ``estimator.value()``.
        """
        if not self.enabled:
            return estimator.value()
        estimator.all_reduce_(self.all_reduce_sum)
        return self.broadcast(estimator.value())


_SINGLE = DistContext()


def _device_for_rank(device_name: str, local_rank: int, world_size: int) -> torch.device:
    if device_name == "cpu" or (device_name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError(f"invalid config: device={device_name!r}; allowed here: auto | cpu (no CUDA device found)")
    if device_name.startswith("cuda:") and world_size > 1:
        raise ConfigError(
            f"invalid config: device={device_name!r} under torchrun with {world_size} processes; "
            f"allowed: auto | cuda | cpu (each process uses cuda:LOCAL_RANK)"
        )
    if local_rank >= torch.cuda.device_count():
        raise ConfigError(
            f"LOCAL_RANK={local_rank} but this node has {torch.cuda.device_count()} CUDA devices; "
            f"allowed: --nproc_per_node <= {torch.cuda.device_count()}"
        )
    return torch.device(device_name if device_name.startswith("cuda:") else f"cuda:{local_rank}")


def setup(device_name: str = "auto") -> DistContext:
    """Join torchrun's process group (once per process) and pick this rank's device.

    Args:
        device_name: the config's ``device`` (auto | cpu | cuda | cuda:N). Under torchrun, auto and
            cuda mean ``cuda:LOCAL_RANK`` (NCCL) when CUDA is available; cpu (or no CUDA) means gloo.
    Returns:
        The rank's :class:`DistContext`; a single-process context when not launched by torchrun.
    Raises:
        ConfigError: a device this rank cannot use, or a bad ``DIVEBATCH_DIST_TIMEOUT_S``.
    """
    global _INITIALISED_HERE
    if not launched_by_torchrun() and not (dist.is_available() and dist.is_initialized()):
        return _SINGLE
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if dist.is_initialized():  # set up by the caller (or an earlier run in this process): reuse it
        rank, world = dist.get_rank(), dist.get_world_size()
        device = _device_for_rank(device_name, local_rank, world)
        backend = dist.get_backend()
        return DistContext(rank, world, local_rank, device, backend, timeout_s())
    device = _device_for_rank(device_name, local_rank, world)
    backend = "nccl" if device.type == "cuda" else "gloo"
    seconds = timeout_s()
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(
        backend, timeout=datetime.timedelta(seconds=seconds), device_id=device if device.type == "cuda" else None
    )
    _INITIALISED_HERE = True
    atexit.register(shutdown)  # at exit, not after a run: a process may train several runs in one group
    return DistContext(dist.get_rank(), dist.get_world_size(), local_rank, device, backend, seconds)


def shutdown() -> None:
    """Destroy the process group if :func:`setup` created it and no rank failure was reported
    (registered with ``atexit`` by :func:`setup`)."""
    global _INITIALISED_HERE
    if _INITIALISED_HERE and not _FAILED and dist.is_initialized():
        dist.destroy_process_group()
    _INITIALISED_HERE = False


def report_failure(err: BaseException) -> None:
    """Print which rank failed and why, with a hint when a collective timed out (to stderr).

    torchrun then stops the other ranks and exits non-zero; this line says where to look.
    """
    global _FAILED
    if not (dist.is_available() and dist.is_initialized()):
        return
    _FAILED = True
    text = f"{type(err).__name__}: {err}"
    hint = ""
    if "timed out" in text.lower() or "timeout" in text.lower():
        hint = (
            f" A collective operation waited longer than {TIMEOUT_ENV}={timeout_s():g} s: another rank "
            f"died, hangs or is far slower; see its own messages above."
        )
    elif any(s in text.lower() for s in ("connection closed", "connection reset", "broken pipe")):
        hint = " Another rank closed its connection (it probably failed first; see its messages above)."
    print(
        f"[divebatch]{rank_tag()} on {socket.gethostname()} failed: {text.splitlines()[0] if text else ''}.{hint}",
        file=sys.stderr,
        flush=True,
    )


# ----------------------------------------------------------------------------- gradients


def sync_gradients(model: nn.Module, sync: bool) -> contextlib.AbstractContextManager:
    """Context for one micro-batch's forward and backward: DDP's ``no_sync()`` unless ``sync``.

    Accumulate the micro-batches of one optimizer step locally and all-reduce once, on the last
    one (``sync=True``). For a model that is not DDP this is a null context.
    """
    inner = getattr(model, "_orig_mod", model)  # torch.compile wraps DDP, not the other way round
    if not sync and isinstance(inner, nn.parallel.DistributedDataParallel):
        return inner.no_sync()
    return contextlib.nullcontext()


def _picklable(err: BaseException) -> BaseException:
    try:
        pickle.loads(pickle.dumps(err))
        return err
    except Exception:
        return RuntimeError(f"{type(err).__name__}: {err}")
