"""Optimizer registry (``optim.name``): SGD with momentum (the paper's) and AdamW.

Learning-rate rescaling at a batch-size change multiplies every param group's lr by a factor
(:func:`divebatch.method.policies.rescale_lr`); the factor follows ``method.lr_scaling``:

* ``linear``: lr proportional to the batch size (Goyal et al., 2017, "Accurate, Large Minibatch
  SGD"; the authors' rule) — the rule for SGD;
* ``sqrt``: lr proportional to its square root (Malladi, Lyu, Panigrahi & Arora, 2022, "On the
  SDEs and Scaling Rules for Adaptive Gradient Algorithms", NeurIPS; also Hoffer et al., 2017, and
  Granziol et al., 2022) — the usual rule for Adam/AdamW. Malladi et al.'s rule also scales
  1 - beta_1, 1 - beta_2 and eps with the batch size; only the lr is rescaled here (betas and
  eps stay as configured).
"""

from __future__ import annotations

import math
from typing import Callable, Iterable

import torch

OPTIMIZERS: dict[str, Callable] = {
    "sgd": lambda params, o: torch.optim.SGD(
        params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay, nesterov=o.nesterov
    ),
    # weight decay decoupled from the gradient (Loshchilov & Hutter, 2019), on every parameter
    "adamw": lambda params, o: torch.optim.AdamW(
        params, lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay
    ),
}

LR_SCALINGS: dict[str, Callable[[float], float]] = {"linear": lambda ratio: ratio, "sqrt": math.sqrt}


def build_optimizer(optim_cfg, params: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
    """Optimizer named by ``optim.name`` over ``params``.

    Args:
        optim_cfg: the ``optim`` config (``lr``, ``weight_decay``; ``momentum``/``nesterov`` for
            sgd; ``betas``/``eps`` for adamw).
    Raises:
        KeyError: unknown ``optim.name`` (lists the allowed ones).
    """
    name = getattr(optim_cfg, "name", "sgd")
    if name not in OPTIMIZERS:
        raise KeyError(f"optim.name={name!r}; allowed: {' | '.join(OPTIMIZERS)}")
    return OPTIMIZERS[name](params, optim_cfg)


def lr_factor(batch_ratio: float, scaling: str = "linear") -> float:
    """Learning-rate factor for a batch-size change by ``batch_ratio`` = m_new / m.

    Args:
        batch_ratio: m_new / m (> 0, dimensionless; 1.0 when nothing changed).
        scaling: ``method.lr_scaling``: ``linear`` (returns the ratio) or ``sqrt`` (its square root).
    Raises:
        KeyError: unknown scaling (lists the allowed ones).
    """
    if scaling not in LR_SCALINGS:
        raise KeyError(f"method.lr_scaling={scaling!r}; allowed: {' | '.join(LR_SCALINGS)}")
    return LR_SCALINGS[scaling](batch_ratio)
