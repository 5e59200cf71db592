"""Schedule controls: a batch-size (and lr) schedule fixed in advance, no gradient diversity.

A run with ``method.name=schedule`` (:class:`divebatch.method.policies.ScheduledBatchSize`) trains
epoch e (0-based) at the batch size ``schedule[e]`` and, with ``method.lr_rescale``, multiplies the
lr by ``m_new / m`` at the end of the epoch before a change, exactly where DiveBatch does
(:meth:`divebatch.method.controller.BatchSizeController.end_epoch`). It asks whether DiveBatch's
results need the diversity signal or only the schedule it produced (docs/diversity.md, "Schedule
controls"). The schedule comes from the config (:func:`schedule_for`):

* ``method.schedule=replay``, ``method.schedule_from=<run directory>``: the batch size of every
  epoch as the finished run logged it (``metrics.csv``, column ``batch_size``). The keys that set
  the lr schedule (:data:`LR_KEYS`) must equal the replayed run's, so that with the same lr
  rescaling the lr of every epoch is the replayed run's as well (tested to the last bit).
* ``method.schedule=two_stage``: ``method.initial_batch_size`` for epochs ``0 .. k-1``, then
  ``method.max_batch_size``; k = ``method.switch_epoch``, else the first epoch that the run of
  ``method.schedule_from`` trained at another batch size than its first, else
  ``method.resize_freq`` (the first epoch after the first resize decision of DiveBatch and
  AdaBatch: the shape of the authors' DiveBatch, which jumps to the cap there).

The library's controller takes the schedule as a list (``BatchSizeController(..., schedule=...)``);
reading it from a config and from another run's directory is the replication's part, here: it reads
run directories with :mod:`divebatch.rundir` (no torch).
"""

from __future__ import annotations

from pathlib import Path

from divebatch import rundir
from divebatch.config import ConfigError, config_diffs

# config keys (or key prefixes) that set a run's lr in every epoch besides the batch sizes: a replay
# must share them with the run it replays
LR_KEYS = (
    "epochs",
    "optim.",
    "method.initial_batch_size",
    "method.lr_rescale",
    "method.lr_scaling",
    "fidelity.lr_rescale_rule",
    "fidelity.warmup_at_lr_zero",
)


class ScheduleError(ConfigError):
    """A schedule control cannot get its schedule; the message names the key, the value and what is allowed."""


def _bad(key: str, value, allowed: str) -> ScheduleError:
    return ScheduleError(f"invalid config: {key}={value!r}; allowed: {allowed}")


def realized_batch_sizes(run_dir: str | Path, key: str = "method.schedule_from") -> list[int]:
    """The batch size (samples) of every epoch of a finished run, from its ``metrics.csv``.

    Args:
        run_dir: a run directory written by ``divebatch train``.
        key: the config key that named it (for the error messages).
    Returns:
        One int per epoch, in epoch order (length = the run's finished epochs).
    Raises:
        ScheduleError: no run directory there, the run has not finished (or diverged), or its
            metrics.csv has no batch size per epoch.
    """
    path = Path(run_dir)
    if not rundir.is_run_dir(path):
        raise _bad(key, str(run_dir), f"a run directory (a folder with {rundir.CONFIG}); none found there")
    status = rundir.summary_status(rundir.read_summary(path))
    if status != "finished":
        raise _bad(
            key,
            str(run_dir),
            f"a finished run (its {rundir.SUMMARY} says finished, not diverged); this one is {status}: "
            f"train it first (divebatch replicate trains a control after the run it replays)",
        )
    rows = rundir.read_metrics(path)
    if not rows or any(r.get("batch_size") is None for r in rows):
        raise _bad(key, str(run_dir), f"a run whose {rundir.METRICS} has a batch_size for every epoch")
    return [int(r["batch_size"]) for r in rows]


def first_resize_epoch(batch_sizes: list[int], run_dir: str | Path = "", key: str = "method.schedule_from") -> int:
    """The first epoch (0-based) trained at another batch size than epoch 0's.

    Raises:
        ScheduleError: the batch size never changed (no switch epoch to take).
    """
    for epoch, b in enumerate(batch_sizes):
        if b != batch_sizes[0]:
            return epoch
    raise _bad(
        key,
        str(run_dir),
        f"a run whose batch size changed (this one trained every epoch at {batch_sizes[0]}; "
        f"set method.switch_epoch instead)",
    )


def two_stage(initial: int, maximum: int, switch_epoch: int, epochs: int) -> list[int]:
    """``initial`` for epochs ``0 .. switch_epoch - 1``, ``maximum`` for the rest (samples; length ``epochs``)."""
    return [initial] * switch_epoch + [maximum] * (epochs - switch_epoch)


def schedule_for(cfg) -> list[int] | None:
    """The per-epoch batch sizes (samples, length ``cfg.epochs``) of a ``method.name=schedule`` run;
    None for the other methods (they have no schedule).

    Args:
        cfg: a validated run config (:func:`divebatch.config.load_config`).
    Raises:
        ScheduleError: ``replay`` without ``method.schedule_from``; the replayed run is missing or
            unfinished, has fewer epochs, starts at
            another batch size than ``method.initial_batch_size``, exceeds ``method.max_batch_size``,
            or differs in a key of :data:`LR_KEYS`; a two-stage switch epoch outside [1, epochs).
    """
    m = cfg.method
    if m.name != "schedule":
        return None
    if m.schedule == "replay":
        if not m.schedule_from:
            raise _bad("method.schedule_from", m.schedule_from, "a run directory to replay (method.schedule=replay)")
        sizes = realized_batch_sizes(m.schedule_from)
        source = rundir.read_config(m.schedule_from)
        diffs = [d for d in config_diffs(source, cfg) if d.startswith(LR_KEYS)]
        if diffs:
            raise _bad(
                "method.schedule_from",
                m.schedule_from,
                f"a run with the same lr settings as this one ({', '.join(k.rstrip('.') for k in LR_KEYS)}); "
                f"replayed run -> this run: {'; '.join(diffs)}",
            )
        if len(sizes) < cfg.epochs:
            raise _bad("method.schedule_from", m.schedule_from, f"a run with {cfg.epochs} epochs (has {len(sizes)})")
        if max(sizes) > m.max_batch_size:
            raise _bad("method.max_batch_size", m.max_batch_size, f">= the replayed run's largest batch ({max(sizes)})")
        return sizes[: cfg.epochs]
    if m.switch_epoch is not None:
        switch = int(m.switch_epoch)
    elif m.schedule_from:
        switch = first_resize_epoch(realized_batch_sizes(m.schedule_from), m.schedule_from)
    else:
        switch = int(m.resize_freq)
    if not 1 <= switch < cfg.epochs:
        raise _bad("method.switch_epoch", switch, f"an epoch in [1, epochs={cfg.epochs}) (null: method.resize_freq)")
    return two_stage(int(m.initial_batch_size), int(m.max_batch_size), switch, int(cfg.epochs))
