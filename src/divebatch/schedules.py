"""The learning-rate schedule of a run: torch's chainable per-epoch scheduler (``optim.schedule``)
and the warm-up of the first ``optim.warmup_epochs`` epochs, a per-step linear ramp or, as in the
authors' CIFAR-100 code (``fidelity.warmup_at_lr_zero``), those epochs at lr 0. The lr rescaling
at a resize is the controller's (:meth:`divebatch.method.controller.BatchSizeController.end_epoch`).
"""

from __future__ import annotations

import contextlib

import torch


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


class Warmup:
    """The warm-up of the first ``epochs`` epochs (``optim.warmup_epochs``), in one of two forms:
    the per-step linear ramp ``linear`` of :func:`build_schedulers`, or, with ``at_lr_zero``
    (``fidelity.warmup_at_lr_zero``), those epochs at lr 0: the authors' CIFAR-100 code builds
    its warm-up scheduler and never steps it (docs/protocol.md). Its state is the ramp's."""

    def __init__(self, optimizer: torch.optim.Optimizer, epochs: int, linear=None, at_lr_zero: bool = False):
        self.optimizer, self.epochs, self.linear, self.at_lr_zero = optimizer, epochs, linear, at_lr_zero

    @contextlib.contextmanager
    def epoch(self, epoch: int):
        """Context of training epoch ``epoch`` (0-based). Yields the scheduler to step after every
        optimizer step (None: none); in an lr-0 epoch every param group's lr is 0 inside the block
        (the optimizer still steps: momentum and weight decay act) and the scheduled lr after it."""
        if epoch >= self.epochs or not self.at_lr_zero:
            yield self.linear if epoch < self.epochs else None
            return
        scheduled = [g["lr"] for g in self.optimizer.param_groups]
        for group in self.optimizer.param_groups:
            group["lr"] = 0.0
        try:
            yield None
        finally:
            for group, lr in zip(self.optimizer.param_groups, scheduled):
                group["lr"] = lr

    def state_dict(self) -> dict | None:
        return self.linear.state_dict() if self.linear is not None else None

    def load_state_dict(self, state: dict | None) -> None:
        if self.linear is not None:
            self.linear.load_state_dict(state)
