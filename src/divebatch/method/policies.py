"""Batch-size policies: small/large-batch SGD (fixed), AdaBatch, DiveBatch, and schedule controls.

Each policy is consulted once per epoch, after that epoch's evaluation and learning-rate
scheduler step (the authors' order). A decision is taken only at epochs ``e`` (0-based) with
``(e + 1) % resize_freq == 0`` while the batch size is below ``max_batch_size``; only those
epochs measure gradient diversity (:meth:`BatchSizePolicy.measures_diversity`).

Sources: the authors' code (``src/train_utils.py`` and ``src/main_cifar10.py`` at
pytorch-cifar@7289184; docs/protocol.md, "The algorithm"); AdaBatch is Devarakonda, Naumov &
Garland (2017).
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch

from divebatch.choices import declared
from divebatch.optimizers import lr_factor
from divebatch.schema import MethodConfig  # the defaults, stated once (torch-free)

POLICIES: dict[str, type["BatchSizePolicy"]] = {}


def register(name: str) -> Callable[[type], type]:
    def deco(cls: type) -> type:
        POLICIES[declared("method.name", name)] = cls
        cls.name = name
        return cls

    return deco


def divebatch_batch_size(batch_size: int, diversity: float, n: int, delta: float, max_batch_size: int) -> int:
    """DiveBatch's resize rule.

    ``m_new = int(min(max(delta * Delta_hat * n, m), max_batch_size))``; a NaN or infinite
    ``Delta_hat`` jumps to ``max_batch_size`` (authors' code). The batch size never shrinks.

    Args:
        batch_size: current batch size m (samples).
        diversity: gradient-diversity estimate Delta_hat (dimensionless; n * Delta_hat >= 1).
        n: training-set size (samples).
        delta: DiveBatch's delta (> 0).
        max_batch_size: cap (samples).
    Returns:
        The next batch size (samples), in ``[batch_size, max_batch_size]``.
    """
    if not math.isfinite(diversity):
        return max_batch_size
    return int(min(max(delta * diversity * n, batch_size), max_batch_size))


def adabatch_batch_size(batch_size: int, max_batch_size: int) -> int:
    """AdaBatch's resize rule, ``m_new = min(2 m, max_batch_size)`` (Devarakonda et al., 2017)."""
    return min(2 * batch_size, max_batch_size)


class BatchSizePolicy:
    """Holds the current batch size and decides the next one at resize epochs.

    Args:
        initial_batch_size: m0 (samples).
        max_batch_size: cap (samples).
        resize_freq: epochs between decisions (>= 1).
        n_train: training-set size n (samples).
        delta: DiveBatch's delta (ignored by the other policies).
        lr_rescale: whether the trainer rescales the lr on a change.
        lr_scaling: how: ``linear`` (by ``m_new / m``) or ``sqrt`` (by its square root; Adam),
            :func:`divebatch.optimizers.lr_factor`.
    """

    name = "base"
    adaptive = True

    def __init__(
        self,
        initial_batch_size: int,
        max_batch_size: int,
        resize_freq: int,
        n_train: int,
        delta: float = MethodConfig.delta,
        lr_rescale: bool = MethodConfig.lr_rescale,
        lr_scaling: str = MethodConfig.lr_scaling,
    ):
        self.batch_size = int(initial_batch_size)
        self.initial_batch_size = int(initial_batch_size)
        self.max_batch_size = int(max_batch_size)
        self.resize_freq = int(resize_freq)
        self.n_train = int(n_train)
        self.delta = float(delta)
        self.lr_rescale = bool(lr_rescale)
        self.lr_scaling = str(lr_scaling)

    def is_resize_epoch(self, epoch: int) -> bool:
        """True when epoch ``epoch`` (0-based) ends with a batch-size decision."""
        return self.adaptive and (epoch + 1) % self.resize_freq == 0 and self.batch_size < self.max_batch_size

    def measures_diversity(self, epoch: int) -> bool:
        """True when this policy needs the gradient-diversity estimate of epoch ``epoch``."""
        return False

    def propose(self, diversity: float | None) -> int:
        raise NotImplementedError

    def step(self, epoch: int, diversity: float | None = None) -> float:
        """Apply the end-of-epoch decision.

        Args:
            epoch: the epoch that just finished (0-based).
            diversity: Delta_hat measured in that epoch, or None.
        Returns:
            The learning-rate factor the trainer must apply: ``m_new / m`` (or its square root
            with ``lr_scaling="sqrt"``) when lr rescaling is on, else 1.0.
        """
        if not self.is_resize_epoch(epoch):
            return 1.0
        old = self.batch_size
        self.batch_size = self.propose(diversity)
        return lr_factor(self.batch_size / old, self.lr_scaling) if self.lr_rescale else 1.0

    def state_dict(self) -> dict:
        return {"batch_size": self.batch_size}

    def load_state_dict(self, state: dict) -> None:
        self.batch_size = int(state["batch_size"])


@register("sgd")
class FixedBatchSize(BatchSizePolicy):
    """Standard (small- or large-batch) SGD: the batch size stays at ``initial_batch_size``."""

    adaptive = False

    def propose(self, diversity: float | None) -> int:
        return self.batch_size


@register("adabatch")
class AdaBatch(BatchSizePolicy):
    """Doubles the batch size every ``resize_freq`` epochs up to the cap."""

    def propose(self, diversity: float | None) -> int:
        return adabatch_batch_size(self.batch_size, self.max_batch_size)


@register("divebatch")
class DiveBatch(BatchSizePolicy):
    """Sets the batch size to ``delta * n * Delta_hat`` (clamped, never shrinking)."""

    def measures_diversity(self, epoch: int) -> bool:
        return self.is_resize_epoch(epoch)

    def propose(self, diversity: float | None) -> int:
        if diversity is None:
            raise ValueError("DiveBatch needs the gradient diversity of a resize epoch; got None")
        return divebatch_batch_size(self.batch_size, diversity, self.n_train, self.delta, self.max_batch_size)


@register("schedule")
class ScheduledBatchSize(BatchSizePolicy):
    """A schedule control: epoch e (0-based) trains at ``schedule[e]``, given in advance; no
    gradient diversity is measured (:mod:`divebatch.schedule` builds the schedule from a config).

    A change between epochs e and e + 1 is applied at the end of epoch e, with the lr factor
    ``m_new / m`` (or its square root) when lr rescaling is on: the same place and factor as a
    DiveBatch or AdaBatch resize, so replaying a run's realized batch sizes replays its lr too.

    Args:
        schedule: batch size per epoch (samples, >= 1 each; at least one epoch); the other
            arguments as :class:`BatchSizePolicy` (``initial_batch_size`` is replaced by ``schedule[0]``).
    Raises:
        ValueError: an empty schedule or a batch size < 1.
    """

    def __init__(self, *args, schedule: Sequence[int] = (), **kwargs):
        super().__init__(*args, **kwargs)
        self.schedule = [int(b) for b in schedule]
        if not self.schedule or min(self.schedule) < 1:
            raise ValueError(f"schedule={self.schedule!r}; allowed: one batch size >= 1 per epoch, at least one")
        self.batch_size = self.initial_batch_size = self.schedule[0]

    def is_resize_epoch(self, epoch: int) -> bool:
        """True when the schedule changes the batch size after epoch ``epoch`` (0-based)."""
        return epoch + 1 < len(self.schedule) and self.schedule[epoch + 1] != self.schedule[epoch]

    def step(self, epoch: int, diversity: float | None = None) -> float:
        """Move to epoch ``epoch + 1``'s batch size; the lr factor as :meth:`BatchSizePolicy.step`."""
        if not self.is_resize_epoch(epoch):
            return 1.0
        old, self.batch_size = self.batch_size, self.schedule[epoch + 1]
        return lr_factor(self.batch_size / old, self.lr_scaling) if self.lr_rescale else 1.0


def build_policy(method_cfg, n_train: int, schedule: Sequence[int] | None = None) -> BatchSizePolicy:
    """Policy named by ``method.name`` from a ``MethodConfig``-like object.

    Args:
        schedule: ``method.name=schedule`` only: the batch size per epoch
            (:func:`divebatch.schedule.schedule_for`).
    Raises:
        KeyError: unknown ``method.name`` (names the allowed values).
        ValueError: ``method.name=schedule`` without a schedule, or a schedule for another method.
    """
    try:
        cls = POLICIES[method_cfg.name]
    except KeyError:
        raise KeyError(f"method.name={method_cfg.name!r}; allowed: {' | '.join(POLICIES)}") from None
    return cls(
        method_cfg.initial_batch_size,
        method_cfg.max_batch_size,
        method_cfg.resize_freq,
        n_train,
        delta=method_cfg.delta,
        lr_rescale=method_cfg.lr_rescale,
        lr_scaling=getattr(method_cfg, "lr_scaling", "linear"),
        **schedule_kwargs(method_cfg.name, schedule),
    )


def schedule_kwargs(method: str, schedule: Sequence[int] | None) -> dict:
    """``{"schedule": schedule}`` for the ``schedule`` policy, ``{}`` for the others.

    Raises:
        ValueError: a schedule given to another policy, or none to the ``schedule`` policy.
    """
    if (method == "schedule") != (schedule is not None):
        need = "a batch size per epoch" if method == "schedule" else "None (only method.name=schedule takes one)"
        raise ValueError(f"schedule={schedule!r} with method={method!r}; allowed: {need}")
    return {"schedule": schedule} if schedule is not None else {}


def rescale_lr(optimizer: torch.optim.Optimizer, factor: float) -> None:
    """Multiply every param group's lr in place (authors' "adaptive_lr").

    PyTorch's cosine, multi-step and step schedulers are chainable (they update ``group['lr']``
    multiplicatively), so after this call lr(t) = schedule(t) * m(t) / m(0), the authors' CIFAR-10
    and Tiny-ImageNet rule (``src/main_cifar10.py:383-386`` at pytorch-cifar@7289184;
    docs/protocol.md).
    """
    if factor != 1.0:
        for group in optimizer.param_groups:
            group["lr"] *= factor


def step_lr(scheduler, optimizer: torch.optim.Optimizer, factor: float, squared: bool = False) -> None:
    """End-of-epoch lr update in the authors' order: the scheduler's epoch step, then the rescaling.

    ``squared=False`` (``fidelity.lr_rescale_rule=linear``, the clean rule): lr(t) = schedule(t) *
    m(t) / m0. ``squared=True`` (``schedule_squared``, the authors' CIFAR-100 code with lr rescaling,
    ``train.py:415-419, 446-450`` at pytorch-cifar100@43c2ab1): the scheduler's own ratio of this
    step is applied a second time, so lr(t) = lr0 * s(t)^2 * m(t) / m0 with s(t) = schedule(t) / lr0
    (their code resets the lr to the schedule's closed form, then multiplies by m / m0 and by
    s(t) every epoch; docs/protocol.md has the worked numbers).

    Args:
        scheduler: a chainable torch lr scheduler, stepped once per epoch.
        factor: ``m_new / m`` from :meth:`BatchSizePolicy.step` (1.0 without rescaling).
        squared: apply the scheduler's ratio twice.
    """
    before = [group["lr"] for group in optimizer.param_groups]
    scheduler.step()
    if squared:
        for group, lr in zip(optimizer.param_groups, before):
            if lr > 0:
                group["lr"] *= group["lr"] / lr
    rescale_lr(optimizer, factor)
