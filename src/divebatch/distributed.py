"""Data-parallel training with ``torchrun``: process group, data sharding, cross-rank sums.

``torchrun --nproc_per_node=K -m divebatch train CONFIG [KEY=VALUE ...]`` starts K processes
(ranks); :func:`setup` reads torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
MASTER_PORT) and joins the process group: NCCL with device ``cuda:LOCAL_RANK`` on GPUs, gloo on
CPUs. Without torchrun's variables everything here is the identity and a run is the ordinary
single-process one. See docs/distributed.md.

Semantics (chosen so that K ranks compute what one process computes on the same samples):

* The configured batch size B is the *global* batch size. Every rank draws the same global
  permutation (same seed, generators kept in lockstep) and the same sequence of global batches;
  each global batch is cut into K contiguous shards of ``floor(B/K)`` or ``ceil(B/K)`` samples
  (the first ``B mod K`` ranks get one more, like ``numpy.array_split``), so every sample is used
  exactly once per epoch whatever the batch size. A last global batch with fewer samples than
  ranks (``0 < n mod B < K``) is merged into the one before it, so no rank ever gets an empty
  shard (that epoch then has one optimizer step fewer than in one process).
* Each rank scales its loss so that its backward yields ``(K/B) * sum_{i in shard} g_i``; DDP
  averages over the K ranks, so every rank's ``p.grad`` is the global mean gradient
  ``(1/B) sum_i g_i`` even when shards differ in size.
* Gradient diversity (:class:`divebatch.diversity.EpochDiversityEstimator`, sum units): each rank
  accumulates its share (its own samples' squared norms; ``B/K`` times the global mean gradient),
  and :func:`diversity_value` sums the shares over ranks once per epoch, so S and A are the sums
  over all samples of the epoch. Rank 0's value is broadcast so every rank takes the same
  batch-size decision at the same epoch boundary.
* Evaluation is sharded the same way; losses and hit counts are summed over ranks.
* Only rank 0 writes the run directory and logs to wandb; rank 0 reads the checkpoint and
  broadcasts it, so all ranks resume from the same state.
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
from typing import Any, Callable, Iterator, Sequence

import torch
import torch.distributed as dist
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn
from torch.utils.data import DataLoader

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
        raise ConfigError(f"invalid environment: {TIMEOUT_ENV}={raw!r}; allowed: a number of seconds > 0")
    return value


def is_main() -> bool:
    """True in a single process and on rank 0 of a process group (the rank that writes outputs)."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


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
            loader: the :class:`ShardedLoader` that produced the shard (gives its sample count).
        """
        if not self.enabled:
            return loss, acc
        n = loader.local_samples
        loss_sum, hits, total = self.sum_floats([loss * n, acc * n, n])
        return loss_sum / total, hits / total


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


def wandb_config(cfg: DictConfig, ctx: DistContext) -> DictConfig:
    """``cfg`` for the wandb logger: unchanged on rank 0, ``wandb.mode=disabled`` on other ranks."""
    if ctx.is_main:
        return cfg
    return OmegaConf.merge(cfg, {"wandb": {"mode": "disabled"}})


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


def batch_shares(loader) -> list[float] | None:
    """Per-step ``B_t / K`` for a :class:`ShardedLoader` (None for any other loader).

    The trainer scales a micro-batch's mean loss by ``len(micro) / share`` (instead of
    ``len(micro) / len(batch)``), so that DDP's average over K ranks is the global mean gradient
    ``(1/B_t) sum_i g_i`` also when shards differ in size; the estimator's sum-unit factors use
    the same share. With one process the share is ``len(batch)``.
    """
    return loader.shares() if isinstance(loader, ShardedLoader) else None


def diversity_value(estimator, ctx: DistContext) -> float:
    """The epoch's gradient-diversity estimate, identical on every rank.

    Each rank's accumulated shares are summed over ranks (``estimator.all_reduce_``), the value is
    computed, and rank 0's value is broadcast so the batch-size decision cannot differ by rounding.
    """
    if not ctx.enabled:
        return estimator.value()
    estimator.all_reduce_(ctx.all_reduce_sum)
    return ctx.broadcast(estimator.value())


# ----------------------------------------------------------------------------- data sharding


def global_batch_spans(n: int, batch_size: int, world_size: int = 1) -> list[tuple[int, int]]:
    """Positions ``[start, stop)`` in the epoch's permutation of each global batch.

    Batches of ``batch_size`` in order, the last one smaller; with several ranks a last batch of
    fewer than ``world_size`` samples is merged into the previous batch (no empty shards).

    Raises:
        ValueError: ``batch_size < world_size`` or ``n < world_size`` (a rank would get nothing).
    """
    if world_size > 1 and (batch_size < world_size or n < world_size):
        raise ValueError(
            f"batch size {batch_size} and dataset size {n} must be >= the number of "
            f"data-parallel processes ({world_size})"
        )
    spans = [(a, min(a + batch_size, n)) for a in range(0, n, batch_size)]
    if len(spans) > 1 and spans[-1][1] - spans[-1][0] < world_size:
        tail = spans.pop()
        spans[-1] = (spans[-1][0], tail[1])
    return spans


def shard_span(start: int, stop: int, rank: int, world_size: int) -> tuple[int, int]:
    """Rank ``rank``'s contiguous part of ``[start, stop)``: ``floor`` or ``ceil`` of size/K samples,
    the first ``size mod K`` ranks one more (``numpy.array_split`` convention)."""
    q, r = divmod(stop - start, world_size)
    lo = start + rank * q + min(rank, r)
    return lo, lo + q + (rank < r)


class ShardedLoader:
    """This rank's shards of a loader's global batches (see the module docstring).

    Two modes:

    * ``slice_batches=True`` (device loader): the wrapped loader yields the *global* batches (same
      permutation and augmentation draws on every rank, so its generator stays in lockstep and
      the samples equal a single process's); this wrapper keeps the rank's contiguous shard, and
      merges a too-small last batch into the previous one.
    * ``slice_batches=False`` (DataLoader path): the wrapped loader's batch sampler already
      yields only this rank's indices (``ResizableBatchSampler.rank/world_size``), so only this
      rank's images are decoded; the wrapper just knows the global batch sizes.

    Args:
        loader: has ``set_batch_size(m)``, ``batch_size`` and yields ``(x, y)``.
        n: samples per epoch of the wrapped loader.
        rank, world_size: this rank and the number of ranks.
    """

    def __init__(self, loader, n: int, rank: int, world_size: int, slice_batches: bool = True):
        self.loader, self.n, self.rank, self.world_size = loader, n, rank, world_size
        self.slice_batches = slice_batches
        self._check(loader.batch_size)

    def __getattr__(self, name):  # anything else (e.g. tuning knobs) is the wrapped loader's
        return getattr(self.__dict__["loader"], name)

    def _check(self, batch_size: int) -> None:
        if batch_size < self.world_size:
            raise ConfigError(
                f"invalid config: batch size {batch_size} with {self.world_size} data-parallel "
                f"processes; allowed: method.initial_batch_size >= {self.world_size}"
            )
        if self.n < self.world_size:
            raise ValueError(f"{self.n} samples cannot be split over {self.world_size} processes")

    @property
    def batch_size(self) -> int:
        return self.loader.batch_size

    def set_batch_size(self, batch_size: int) -> None:
        self._check(batch_size)
        self.loader.set_batch_size(batch_size)

    def spans(self) -> list[tuple[int, int]]:
        return global_batch_spans(self.n, self.loader.batch_size, self.world_size)

    def shares(self) -> list[float]:
        """``B_t / K`` for every step t of an epoch (see :func:`batch_shares`)."""
        return [(b - a) / self.world_size for a, b in self.spans()]

    @property
    def local_samples(self) -> int:
        """Samples this rank sees per epoch."""
        return sum(hi - lo for lo, hi in (shard_span(a, b, self.rank, self.world_size) for a, b in self.spans()))

    def __len__(self) -> int:
        return len(self.spans())

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        if not self.slice_batches:
            yield from self.loader
            return
        spans, bs = self.spans(), self.loader.batch_size
        sizes = [min(bs, self.n - a) for a in range(0, self.n, bs)]  # what the wrapped loader yields
        merged = len(spans) < len(sizes)
        held = None  # this rank's part of the batch that the too-small last batch is merged into
        for t, (x, y) in enumerate(self.loader):
            if t >= len(sizes) or len(y) != sizes[t]:
                raise RuntimeError(
                    f"sharding expects global batches of sizes {sizes}; the wrapped loader "
                    f"yielded {len(y)} samples at step {t}"
                )
            # this rank's positions [lo, hi) of the step, intersected with this batch's [a, a + len(y))
            a = t * bs
            lo, hi = shard_span(*spans[min(t, len(spans) - 1)], self.rank, self.world_size)
            i, j = max(lo - a, 0), max(min(hi - a, len(y)), 0)
            part = (x[i:j], y[i:j])
            if merged and t == len(sizes) - 2:
                held = (part[0].clone(), part[1].clone())  # the wrapped loader may reuse its buffers
                continue
            if held is not None:
                part = (torch.cat((held[0], part[0])), torch.cat((held[1], part[1])))
                held = None
            yield part


def dataset_sizes(bundle) -> tuple[int, int]:
    """(training samples, evaluation samples) of a :class:`divebatch.data.DataBundle`."""
    n_test = len(bundle.test_set) if bundle.test_set is not None else len(bundle.arrays[3])
    return bundle.n_train, n_test


class RankWorkerSeed:
    """DataLoader ``worker_init_fn`` that offsets each worker's seeds by the rank.

    Every rank's DataLoader draws its base seed from the same (lockstep) generator, so without
    this the workers of all ranks would replay the same augmentation draws. The offset (a prime
    larger than any worker count) keeps seeds distinct across ranks and workers, and runs stay
    reproducible for a given number of ranks and workers.
    """

    def __init__(self, rank: int, then: Callable | None = None):
        self.rank, self.then = rank, then

    def __call__(self, worker_id: int) -> None:
        import random

        seed = (torch.initial_seed() + 1_000_003 * self.rank) % 2**63
        torch.manual_seed(seed)
        random.seed(seed)
        if self.then is not None:
            self.then(worker_id)


def shard_loaders(train_loader, test_loader, bundle, ctx: DistContext):
    """Wrap the trainer's loaders so that each rank sees its shards (identity in one process).

    A loader with a shardable batch sampler (``sampler.world_size``, the DataLoader path) draws
    only this rank's indices and its workers get rank-specific seeds (:class:`RankWorkerSeed`);
    any other loader's global batches are sliced.
    """
    if not ctx.enabled:
        return train_loader, test_loader
    out = []
    for loader, n in zip((train_loader, test_loader), dataset_sizes(bundle)):
        sampler = getattr(loader, "sampler", None)
        by_sampler = sampler is not None and hasattr(sampler, "world_size")
        if by_sampler:
            sampler.rank, sampler.world_size = ctx.rank, ctx.world_size
            data_loader = getattr(loader, "loader", None)
            if isinstance(data_loader, DataLoader) and data_loader.num_workers > 0:
                data_loader.worker_init_fn = RankWorkerSeed(ctx.rank, data_loader.worker_init_fn)
        out.append(ShardedLoader(loader, n, ctx.rank, ctx.world_size, slice_batches=not by_sampler))
    return tuple(out)


# ----------------------------------------------------------------------------- run directory


def _picklable(err: BaseException) -> BaseException:
    try:
        pickle.loads(pickle.dumps(err))
        return err
    except Exception:
        return RuntimeError(f"{type(err).__name__}: {err}")


class RankZeroRunDir:
    """A :class:`divebatch.rundir.RunDir` seen from one rank: rank 0 reads and writes; reads are
    broadcast to every rank (so they need no shared file system) and so are rank 0's errors
    (every rank then raises the same error instead of waiting for a collective that never comes).
    Writes on other ranks do nothing. Other attributes are the wrapped run directory's.
    """

    def __init__(self, run, ctx: DistContext):
        self._run, self._ctx = run, ctx

    def __getattr__(self, name):
        return getattr(self._run, name)

    def _on_main(self, fn: Callable, *args):
        result = error = None
        if self._ctx.is_main:
            try:
                result = fn(*args)
            except Exception as err:  # re-raised on every rank below
                error = _picklable(err)
        result, error = self._ctx.broadcast((result, error))
        if error is not None:
            raise error
        return result

    def prepare(self, cfg) -> list[str]:
        """The changed runtime keys rank 0 found (recorded in the manifest's resume entry)."""
        return self._on_main(self._run.prepare, cfg)

    def read_summary(self):
        return self._on_main(self._run.read_summary)

    def load_checkpoint(self):
        return self._on_main(self._run.load_checkpoint)

    def _write(self, fn: Callable, *args):
        if self._ctx.is_main:
            return fn(*args)

    def save_checkpoint(self, state: dict) -> None:
        self._write(self._run.save_checkpoint, state)

    def write_metrics(self, rows) -> None:
        self._write(self._run.write_metrics, rows)

    def write_json(self, path, obj) -> None:
        self._write(self._run.write_json, path, obj)


def run_dir(run, ctx: DistContext):
    """``run`` itself in a single process, a :class:`RankZeroRunDir` in a process group."""
    return RankZeroRunDir(run, ctx) if ctx.enabled else run
