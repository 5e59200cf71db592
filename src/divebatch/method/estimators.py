"""The registry of gradient-diversity estimators: ``method.diversity_estimator`` name -> factory.

Every estimator is built by its factory from one :class:`EstimatorOptions` (each factory reads the
options it needs), so :func:`build_estimator` has no branch per name and a new estimator is one
class in a module of its own, one name in :data:`divebatch.choices.CHOICES` and one factory here
(:func:`register` refuses an undeclared name).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from divebatch.choices import declared
from divebatch.method.diversity import DiversityEstimator
from divebatch.method.exact import ExactDiversity
from divebatch.method.fixed_point import FixedPointDiversity, FixedPointTrainDiversity
from divebatch.method.microbatch import MicroBatchDiversity
from divebatch.method.persample import FuncDiversity


@dataclass(frozen=True)
class EstimatorOptions:
    """The estimators' options, each a config key (:func:`build_estimator` documents them)."""

    micro_batches: int = 2
    running_grad_sum: bool = False
    fixed_point_samples: int | None = None
    backpack: bool = True
    mean_units: bool = False

    @property
    def per_sample(self) -> str:
        """Where the fixed-point estimators take per-sample norms: ``backpack`` or ``func`` (torch.func)."""
        return "backpack" if self.backpack else "func"


Factory = Callable[[EstimatorOptions], DiversityEstimator]
ESTIMATORS: dict[str, Factory] = {}


def register(name: str) -> Callable[[Factory], Factory]:
    """Decorator: ``factory`` builds the estimator ``method.diversity_estimator=name``.

    Raises:
        divebatch.choices.UndeclaredChoiceError: ``name`` is not declared in :data:`divebatch.choices.CHOICES`.
    """

    def deco(factory: Factory) -> Factory:
        ESTIMATORS[declared("method.diversity_estimator", name)] = factory
        return factory

    return deco


@register("exact")
def _exact(o: EstimatorOptions) -> ExactDiversity:
    return ExactDiversity(running_grad_sum=o.running_grad_sum, mean_units=o.mean_units)


@register("microbatch")
def _microbatch(o: EstimatorOptions) -> MicroBatchDiversity:
    return MicroBatchDiversity(o.micro_batches)


@register("fixed_point")
def _fixed_point(o: EstimatorOptions) -> FixedPointDiversity:
    return FixedPointDiversity(o.fixed_point_samples, per_sample=o.per_sample)


@register("exact_func")
def _exact_func(o: EstimatorOptions) -> FuncDiversity:
    return FuncDiversity()


@register("fixed_point_train")
def _fixed_point_train(o: EstimatorOptions) -> FixedPointTrainDiversity:
    return FixedPointTrainDiversity(o.fixed_point_samples, per_sample=o.per_sample)


def build_estimator(
    name: str,
    micro_batches: int = 2,
    running_grad_sum: bool = False,
    fixed_point_samples: int | None = None,
    backpack: bool = True,
    mean_units: bool = False,
) -> DiversityEstimator:
    """Estimator named by ``method.diversity_estimator``.

    Args:
        micro_batches: ``method.micro_batches``, micro-batches per step of the ``microbatch``
            estimator (>= 2).
        running_grad_sum: ``fidelity.running_grad_sum``, the authors' Tiny-ImageNet accumulation
            (``exact`` only; see :meth:`divebatch.method.exact.ExactDiversity.backward`).
        fixed_point_samples: ``method.fixed_point_samples``, the ``fixed_point`` and ``fixed_point_train``
            estimators' subset size (None: the whole training set).
        backpack: False for models BackPACK does not cover (``config.NO_BACKPACK_MODELS``): the
            fixed-point estimators then take their per-sample norms from ``torch.func``.
        mean_units: ``fidelity.mean_units``, the authors' per-backward mean units for S and A
            (``exact`` only; see :class:`divebatch.method.exact.ExactDiversity`).
    Raises:
        KeyError: unknown name (lists the allowed ones).
        ValueError: an option out of range (the estimator's own message).
    """
    if name not in ESTIMATORS:
        raise KeyError(f"method.diversity_estimator={name!r}; allowed: {' | '.join(ESTIMATORS)}")
    return ESTIMATORS[name](
        EstimatorOptions(micro_batches, running_grad_sum, fixed_point_samples, backpack, mean_units)
    )
