"""DiveBatch (or AdaBatch, or a fixed batch size) for any PyTorch training loop.

:class:`BatchSizeController` is the method as a library: it says the batch size of the next
epoch, measures gradient diversity in the epochs that end with a decision (with any estimator of
:data:`divebatch.method.estimators.ESTIMATORS`), applies the resize rule and the learning-rate rescaling
to the optimizer, and saves and restores its state with a checkpoint. The project's trainer
(:func:`divebatch.training.train`) runs on it; ``examples/custom_loop.py`` uses it in a loop
of its own::

    ctl = BatchSizeController("divebatch", n_train=len(train_set), initial_batch_size=128,
                              max_batch_size=2048, resize_freq=20, delta=0.1, lr_rescale=True)
    model = ctl.prepare(model)                      # before building the optimizer
    for epoch in range(epochs):
        loader = DataLoader(train_set, batch_size=ctl.batch_size, shuffle=True)
        with ctl.epoch(epoch, model):               # measures only when this epoch decides
            for x, y in loader:
                optimizer.zero_grad()
                ctl.forward_backward(model, x, y, F.cross_entropy)  # = loss.backward()
                optimizer.step()
        ctl.end_epoch(epoch, optimizer, scheduler)  # scheduler step, resize, lr rescaling

Order of an epoch's end, as in the authors' code (docs/protocol.md, "The algorithm"): the
scheduler's epoch step, then the batch-size decision with the lr rescaling (``m_new / m``,
linear; or its square root, ``lr_scaling="sqrt"``, for Adam).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from torch import Tensor, nn

from divebatch.method.diversity import DiversityEstimator
from divebatch.method.estimators import build_estimator
from divebatch.method.policies import POLICIES, BatchSizePolicy, rescale_lr, schedule_kwargs, step_lr
from divebatch.schema import FidelityConfig, MethodConfig  # the defaults, stated once (torch-free)

LR_RESCALE_RULES = ("linear", "schedule_squared")  # fidelity.lr_rescale_rule (docs/protocol.md)
MICRO_BATCH_LOSSES = ("per_sample", "per_chunk")  # fidelity.micro_batch_loss


def micro_batch_plan(
    batch: int, max_micro_batch: int, estimator: DiversityEstimator | None = None, split_above: int | None = None
) -> list[int]:
    """Micro-batch sizes (samples) of one optimizer step of ``batch`` samples.

    A batch larger than ``split_above`` (default ``max_micro_batch``) is cut into chunks of
    ``max_micro_batch``, the last one smaller, as the authors split (their Tiny-ImageNet SGD and
    AdaBatch trainer splits only above 1024, into chunks of 512: ``fidelity.split_above``,
    docs/protocol.md); an estimator that plans micro-batches (``plans_micro_batches``: the
    micro-batch estimator needs >= 2 parts) decides instead.
    """
    if estimator is not None and estimator.plans_micro_batches:
        return estimator.micro_batch_sizes(batch, max_micro_batch)
    if batch <= (split_above or max_micro_batch):
        return [batch]
    return [min(max_micro_batch, batch - start) for start in range(0, batch, max_micro_batch)]


def micro_batch_weight(rule: str, micro: int, batch: int, chunks: int) -> float:
    """Factor on a micro-batch's mean loss so that the step's gradients add up to one update.

    ``per_sample`` (clean): ``b / B``, so the step's gradient is the batch's mean gradient for any
    chunk sizes. ``per_chunk`` (authors' code, ``fidelity.micro_batch_loss``): ``1 / k`` for k
    chunks, which weights the samples of a smaller last chunk more (docs/protocol.md).

    Args:
        micro: b, the chunk's samples; batch: B, the step's samples; chunks: k.
    Returns:
        the factor (dimensionless); each sample's weight in the step's loss is ``factor / b``.
    """
    return micro / batch if rule == "per_sample" else 1.0 / chunks


@dataclass
class StepStats:
    """One optimizer step's statistics, on the device (no host sync).

    Attributes:
        loss_sum: 0-d float tensor, sum over the step's samples of their mean loss (unweighted).
        correct: 0-d int64 tensor, correct predictions (per position for (B, T) targets).
        positions: predictions per sample (1 for a class label, T for a sequence target).
    """

    loss_sum: Tensor
    correct: Tensor
    positions: int


def accumulate_step(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    criterion: Callable[[Tensor, Tensor], Tensor],
    estimator: DiversityEstimator | None = None,
    max_micro_batch: int = MethodConfig.max_micro_batch,
    *,
    split_above: int | None = None,
    micro_batch_loss: str = "per_sample",
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    sync: Callable[[nn.Module, bool], contextlib.AbstractContextManager] | None = None,
    global_batch: int | None = None,
) -> StepStats:
    """The gradients of one optimizer step into ``p.grad`` (no ``zero_grad``, no ``optimizer.step``).

    The step's ``len(y)`` samples are split by :func:`micro_batch_plan`; each micro-batch's mean
    loss is weighted by :func:`micro_batch_weight` (``per_sample`` whenever the estimator plans
    the split), so ``p.grad`` holds the step's mean gradient. With an ``estimator`` (a measured
    epoch) every backward goes through it (:class:`divebatch.method.diversity.DiversityEstimator`) and
    :meth:`~divebatch.method.diversity.DiversityEstimator.step_end` runs after the last micro-batch.

    Args:
        x: (B, ...) inputs; y: (B,) class labels or (B, T) sequence targets, on the model's device.
        criterion: mean loss of (outputs, targets).
        sync: data-parallel: ``sync(model, last)`` context (one all-reduce per step on the last
            micro-batch, :func:`divebatch.distributed.sync_gradients`); None: none.
        global_batch: data-parallel: the global batch of this step (``len(y)`` is this rank's share).
    Returns:
        :class:`StepStats`.
    """
    batch = global_batch or len(y)
    plan = micro_batch_plan(len(y), max_micro_batch, estimator, split_above)
    rule = "per_sample" if estimator is not None and estimator.plans_micro_batches else micro_batch_loss
    loss_sum = correct = None
    for j, (xm, ym) in enumerate(zip(x.split(plan), y.split(plan))):
        with sync(model, j == len(plan) - 1) if sync is not None else contextlib.nullcontext():
            with autocast():
                out = model(xm)
                loss = criterion(out, ym)
            weight = micro_batch_weight(rule, len(ym), len(y), len(plan)) * len(y) / batch
            scaled = loss * weight
            if estimator is not None:  # sample i's gradient in `scaled` is g_i / (len(ym) / weight)
                estimator.observe(xm, ym)
                estimator.backward(model, scaled, batch, len(ym) / weight)
            else:
                scaled.backward()
        part = loss.detach().float() * len(ym)
        hits = (out.argmax(1) == ym).sum()
        loss_sum = part if loss_sum is None else loss_sum + part
        correct = hits if correct is None else correct + hits
    if estimator is not None:
        estimator.step_end(model, batch)
    return StepStats(loss_sum, correct, y[0].numel())


@dataclass(frozen=True)
class Decision:
    """What :meth:`BatchSizeController.end_epoch` did.

    Attributes:
        epoch: the epoch that ended (0-based).
        diversity: the gradient-diversity estimate Delta_hat measured in it (dimensionless), or
            None (an unmeasured epoch).
        batch_size: the batch size the epoch trained with (samples).
        next_batch_size: the next epoch's (samples).
        lr_factor: the factor applied to the lr on top of the schedule (1.0: none).
    """

    epoch: int
    diversity: float | None
    batch_size: int
    next_batch_size: int
    lr_factor: float

    @property
    def resized(self) -> bool:
        return self.next_batch_size != self.batch_size


class BatchSizeController:
    """Adaptive batch size by gradient diversity (DiveBatch), doubling (AdaBatch) or fixed (SGD).

    Args:
        method: ``divebatch`` | ``adabatch`` | ``sgd`` | ``schedule`` (a schedule control, which
            needs ``schedule``; :data:`divebatch.method.policies.POLICIES`).
        n_train: n, the training-set size (samples).
        initial_batch_size: m0 (samples); max_batch_size: the cap (samples).
        resize_freq: epochs between decisions; a decision ends epoch e (0-based) when
            ``(e + 1) % resize_freq == 0`` and the batch is below the cap.
        delta: DiveBatch's delta, ``m_new = delta * n * Delta_hat`` (paper, Algorithm 1).
        lr_rescale: multiply the lr by the batch-size ratio at a resize; ``lr_scaling``
            ``linear`` (SGD; Goyal et al., 2017) or ``sqrt`` (Adam; Malladi et al., 2022);
            ``lr_rescale_rule`` ``linear`` or ``schedule_squared`` (the authors' CIFAR-100 code,
            docs/protocol.md; :func:`divebatch.method.policies.step_lr`).
        estimator: ``exact`` (the authors' epoch estimator, BackPACK per-sample norms),
            ``exact_func`` (the same with ``torch.func`` norms: models BackPACK does not cover),
            ``microbatch`` (two-scale), ``fixed_point`` (Delta(w) at the epoch's final weights;
            needs :meth:`attach_reference`) or ``fixed_point_train`` (the same with the authors'
            train-mode BatchNorm convention, docs/diversity.md); or a :class:`~divebatch.method.diversity.DiversityEstimator`
            instance. Ignored unless ``method="divebatch"``.
        micro_batches, fixed_point_samples, running_grad_sum, mean_units: the estimators' options
            (:func:`divebatch.method.estimators.build_estimator`); backpack: False for models BackPACK
            does not cover (fixed_point then uses ``torch.func``).
        max_micro_batch: larger steps are split into micro-batches (samples; memory only);
            split_above: split only above this (default ``max_micro_batch``); micro_batch_loss:
            ``per_sample`` | ``per_chunk`` weighting of the parts (docs/protocol.md).
        schedule: ``method="schedule"`` only: the batch size of every epoch (samples;
            :func:`divebatch.schedule.schedule_for`).
    Raises:
        ValueError: an unknown ``method``, ``estimator``, ``lr_rescale_rule`` or
            ``micro_batch_loss`` (naming the value and what is allowed); a ``schedule`` given to
            another method or missing for ``schedule``.
    """

    def __init__(
        self,
        method: str = MethodConfig.name,
        *,
        n_train: int,
        initial_batch_size: int,
        max_batch_size: int,
        resize_freq: int,
        delta: float = MethodConfig.delta,
        lr_rescale: bool = MethodConfig.lr_rescale,
        lr_scaling: str = MethodConfig.lr_scaling,
        lr_rescale_rule: str = FidelityConfig.lr_rescale_rule,
        estimator: str | DiversityEstimator = MethodConfig.diversity_estimator,
        micro_batches: int = MethodConfig.micro_batches,
        fixed_point_samples: int | None = MethodConfig.fixed_point_samples,
        running_grad_sum: bool = FidelityConfig.running_grad_sum,
        backpack: bool = True,
        max_micro_batch: int = MethodConfig.max_micro_batch,
        split_above: int | None = FidelityConfig.split_above,
        micro_batch_loss: str = FidelityConfig.micro_batch_loss,
        mean_units: bool = FidelityConfig.mean_units,
        schedule: list[int] | None = None,
    ):
        if method not in POLICIES:
            raise ValueError(f"method={method!r}; allowed: {' | '.join(POLICIES)}")
        if lr_rescale_rule not in LR_RESCALE_RULES:
            raise ValueError(f"lr_rescale_rule={lr_rescale_rule!r}; allowed: {' | '.join(LR_RESCALE_RULES)}")
        if micro_batch_loss not in MICRO_BATCH_LOSSES:
            raise ValueError(f"micro_batch_loss={micro_batch_loss!r}; allowed: {' | '.join(MICRO_BATCH_LOSSES)}")
        self.policy: BatchSizePolicy = POLICIES[method](
            initial_batch_size,
            max_batch_size,
            resize_freq,
            n_train,
            delta=delta,
            lr_rescale=lr_rescale,
            lr_scaling=lr_scaling,
            **schedule_kwargs(method, schedule),
        )
        self.estimator: DiversityEstimator | None = None
        if method == "divebatch":
            if isinstance(estimator, str):
                try:
                    estimator = build_estimator(
                        estimator, micro_batches, running_grad_sum, fixed_point_samples, backpack, mean_units
                    )
                except KeyError as err:
                    raise ValueError(err.args[0]) from None
            self.estimator = estimator
        self.n_train = int(n_train)
        self.squared = lr_rescale_rule == "schedule_squared"
        self.max_micro_batch, self.split_above, self.micro_batch_loss = max_micro_batch, split_above, micro_batch_loss
        self.active: DiversityEstimator | None = None  # the estimator of the running epoch, if any
        self._measured: int | None = None  # the epoch whose estimate end_epoch reads

    @classmethod
    def from_config(
        cls, cfg, n_train: int, backpack: bool = True, schedule: list[int] | None = None
    ) -> "BatchSizeController":
        """From a run config (``method.*`` and ``fidelity.*`` keys of :class:`divebatch.config.TrainConfig`).

        Args:
            schedule: ``method.name=schedule`` only: the batch size of every epoch, which the caller
                reads from the config (:func:`divebatch.schedule.schedule_for`: it may read another
                run's directory, which the library does not).
        Raises:
            ValueError: a ``schedule`` for another method, or none for ``method.name=schedule``.
        """
        m, fid = cfg.method, cfg.fidelity
        return cls(
            m.name,
            n_train=n_train,
            initial_batch_size=m.initial_batch_size,
            max_batch_size=m.max_batch_size,
            resize_freq=m.resize_freq,
            delta=m.delta,
            lr_rescale=m.lr_rescale,
            lr_scaling=m.lr_scaling,
            lr_rescale_rule=fid.lr_rescale_rule,
            estimator=m.diversity_estimator,
            micro_batches=m.micro_batches,
            fixed_point_samples=m.fixed_point_samples,
            running_grad_sum=fid.running_grad_sum,
            backpack=backpack,
            max_micro_batch=m.max_micro_batch,
            split_above=fid.split_above,
            micro_batch_loss=fid.micro_batch_loss,
            mean_units=fid.mean_units,
            schedule=schedule,
        )

    @property
    def batch_size(self) -> int:
        """The batch size (samples) of the next epoch to train."""
        return self.policy.batch_size

    def prepare(self, model: nn.Module) -> nn.Module:
        """The model the estimator can measure (BackPACK conversion for ``exact``; else ``model``).
        Call once, before building the optimizer."""
        return self.estimator.prepare(model) if self.estimator is not None else model

    def attach_reference(self, reference: Callable[[], Iterator[tuple[Tensor, Tensor]]]) -> None:
        """``fixed_point`` only: the fixed subset it measures Delta(w) on, as a callable returning
        (x, y) batches on the model's device without augmentation
        (:func:`divebatch.data.reference_batches`). No-op for the other estimators."""
        if self.estimator is not None:
            self.estimator.attach(reference, self.n_train)

    def measures(self, epoch: int) -> bool:
        """Whether epoch ``epoch`` (0-based) ends with a decision that needs gradient diversity."""
        return self.estimator is not None and self.policy.measures_diversity(epoch)

    def begin_epoch(self, epoch: int, estimator: DiversityEstimator | None = None) -> DiversityEstimator | None:
        """Start epoch ``epoch`` (0-based): in a measured epoch, reset the estimator and return it
        (the caller runs the epoch inside its ``measuring(model)`` context); else return
        ``estimator`` (the shadow measurement's, :mod:`divebatch.shadow`), usually None.
        :meth:`epoch` wraps this and :meth:`finish_epoch`."""
        measured = self.measures(epoch)
        self.active = self.estimator if measured else estimator
        self._measured = epoch if measured else None
        if measured:
            self.estimator.reset()
        return self.active

    def finish_epoch(self, model: nn.Module | None) -> None:
        """After the epoch's last step: a measured epoch's end-of-epoch measurement at the final
        weights (:meth:`~divebatch.method.diversity.DiversityEstimator.measure`: fixed_point)."""
        if self._measured is not None:
            self.estimator.measure(model)
        self.active = None

    @contextlib.contextmanager
    def epoch(self, epoch: int, model: nn.Module | None, estimator: DiversityEstimator | None = None):
        """Context of one training epoch: in a measured epoch the estimator is reset, its hooks are
        on and :meth:`forward_backward` / :meth:`backward` feed it; at a clean exit,
        :meth:`finish_epoch` runs.

        Args:
            model: the network; None for a loop that feeds its own estimator by hand
                (:meth:`divebatch.method.diversity.EpochDiversityEstimator.add`, as the synthetic
                check does), whose ``measuring`` and ``measure`` do not need one.
            estimator: an estimator to run in an unmeasured epoch instead of none (the shadow
                measurement, :mod:`divebatch.shadow`).
        Yields:
            True when the epoch is measured.
        """
        active = self.begin_epoch(epoch, estimator)
        try:
            with active.measuring(model) if active is not None else contextlib.nullcontext():
                yield self._measured is not None
            self.finish_epoch(model)
        finally:
            self.active = None

    def forward_backward(self, model: nn.Module, x: Tensor, y: Tensor, criterion, **options) -> StepStats:
        """One optimizer step's gradients (:func:`accumulate_step` with this controller's split and
        its epoch's estimator); ``options``: autocast, sync, global_batch."""
        return accumulate_step(
            model,
            x,
            y,
            criterion,
            self.active,
            self.max_micro_batch,
            split_above=self.split_above,
            micro_batch_loss=self.micro_batch_loss,
            **options,
        )

    def backward(self, loss: Tensor, model: nn.Module, x: Tensor | None = None, y: Tensor | None = None) -> None:
        """``loss.backward()`` for a loop that computes its own mean loss over the whole step.

        Args:
            loss: the step's mean loss; x, y: its inputs and targets (needed by ``exact_func``).
        Raises:
            ValueError: the epoch's estimator plans its own micro-batches (``microbatch``): use
                :meth:`forward_backward`.
        """
        est = self.active
        if est is None:
            loss.backward()
            return
        if est.plans_micro_batches:
            raise ValueError(
                f"estimator {type(est).__name__} splits each measured step itself; allowed with it: "
                f"BatchSizeController.forward_backward(model, x, y, criterion)"
            )
        batch = len(y) if y is not None else None
        if batch is None:
            raise ValueError("backward(loss, model, x, y): y is needed to count the step's samples")
        est.observe(x, y)
        est.backward(model, loss, batch)
        est.step_end(model, batch)

    def diversity(self, reduce: Callable[[DiversityEstimator], float] | None = None) -> float | None:
        """Delta_hat of the last measured epoch (None if the last epoch was not measured).

        Args:
            reduce: data-parallel: ``reduce(estimator)`` sums the ranks' shares and returns the
                value (:meth:`divebatch.distributed.DistContext.diversity`).
        """
        if self._measured is None:
            return None
        return reduce(self.estimator) if reduce is not None else self.estimator.value()

    def end_epoch(
        self, epoch: int, optimizer: torch.optim.Optimizer, scheduler=None, diversity: float | None = None, reduce=None
    ) -> Decision:
        """The epoch's end: the scheduler's epoch step, the batch-size decision, the lr rescaling.

        Args:
            epoch: the epoch that ended (0-based).
            scheduler: a chainable torch lr scheduler stepped once per epoch, or None.
            diversity: the estimate if already read (:meth:`diversity`); default: read it now.
        Returns:
            :class:`Decision`.
        """
        if diversity is None:
            diversity = self.diversity(reduce)
        before = self.policy.batch_size
        factor = self.policy.step(epoch, diversity)
        if scheduler is not None:
            step_lr(scheduler, optimizer, factor, squared=self.squared and self.policy.lr_rescale)
        else:
            rescale_lr(optimizer, factor)
        self._measured = None
        return Decision(epoch, diversity, before, self.policy.batch_size, factor)

    def state_dict(self) -> dict:
        """The state to checkpoint at an epoch's end: ``{"batch_size": int}``."""
        return self.policy.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.policy.load_state_dict(state)
