"""The method as a library: DiveBatch's resize rule, the gradient-diversity estimators, and the
controller that applies them to any training loop (``divebatch.BatchSizeController``).

- :mod:`~divebatch.method.policies`: batch-size policies (SGD, AdaBatch, DiveBatch, a given
  schedule) and the learning-rate rescaling rule; their registry :data:`POLICIES`;
- :mod:`~divebatch.method.diversity`: gradient diversity, the ``DiversityEstimator`` protocol and
  the authors' epoch accumulator;
- the estimators, one module each: :mod:`~divebatch.method.exact` (the authors' epoch estimator),
  :mod:`~divebatch.method.persample` (the same with ``torch.func`` per-sample norms),
  :mod:`~divebatch.method.microbatch` (two-scale), :mod:`~divebatch.method.fixed_point` (Delta(w)
  at one point); their registry :data:`ESTIMATORS` (:mod:`~divebatch.method.estimators`);
- :mod:`~divebatch.method.backpack_norms`: the BackPACK plumbing (per-sample squared norms);
- :mod:`~divebatch.method.controller`: ``BatchSizeController``, what the trainer and a user's own
  loop call each epoch.

The library reads no data sets, configs or run directories: the replication's trainer
(:mod:`divebatch.training`), its schedule controls (:mod:`divebatch.schedule`) and its shadow
measurements (:mod:`divebatch.shadow`) build on it (tests/test_controller.py checks the imports).
"""

from divebatch.method.controller import BatchSizeController, Decision, StepStats, accumulate_step
from divebatch.method.diversity import DiversityEstimator, EpochDiversityEstimator, gradient_diversity
from divebatch.method.estimators import ESTIMATORS, build_estimator
from divebatch.method.exact import ExactDiversity
from divebatch.method.fixed_point import FixedPointDiversity, FixedPointTrainDiversity
from divebatch.method.microbatch import MicroBatchDiversity
from divebatch.method.persample import FuncDiversity
from divebatch.method.policies import (
    POLICIES,
    BatchSizePolicy,
    adabatch_batch_size,
    build_policy,
    divebatch_batch_size,
)

__all__ = [
    "ESTIMATORS",
    "POLICIES",
    "BatchSizeController",
    "BatchSizePolicy",
    "Decision",
    "DiversityEstimator",
    "EpochDiversityEstimator",
    "ExactDiversity",
    "FixedPointDiversity",
    "FixedPointTrainDiversity",
    "FuncDiversity",
    "MicroBatchDiversity",
    "StepStats",
    "accumulate_step",
    "adabatch_batch_size",
    "build_estimator",
    "build_policy",
    "divebatch_batch_size",
    "gradient_diversity",
]
