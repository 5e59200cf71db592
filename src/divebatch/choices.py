"""The names of every registry-implemented config choice: the one list per choice.

A choice such as ``model.name`` is implemented by a registry in a module that imports torch
(``divebatch.models.MODELS``); the config validation (:mod:`divebatch.config`) must not import
torch, because the orchestrator, the sweep driver and the GPU-hours estimate validate configs
without training anything (importing the registries costs seconds per process). So the names
live here, torch-free, and the registries are keyed by them:

* each registry's ``register`` refuses a name that is not declared here (:func:`declared`), so a
  builder cannot be added without its name reaching the config validation;
* ``tests/test_config.py`` keeps every registry's keys equal to its names here, so a declared
  name cannot lack its implementation.

Adding a model (dataset, estimator, ...) is one name here and its registered builder. Choices
implemented by branches of one function rather than by a registry (``optim.schedule``,
``data.loader``, the fidelity switches, ...) keep their names in :mod:`divebatch.config`.
"""

from __future__ import annotations

from divebatch.datasets import NAMES as DATASET_NAMES

# config key -> the names its registry implements (the config's error messages list them in this order)
CHOICES: dict[str, tuple[str, ...]] = {
    "data.name": DATASET_NAMES,  # the data set table: divebatch.datasets
    "model.name": ("resnet18_cifar", "resnet18_imagenet", "resnet_small", "linear", "transformer_lm"),
    "method.name": ("sgd", "adabatch", "divebatch", "schedule"),
    "method.diversity_estimator": ("exact", "microbatch", "fixed_point", "exact_func", "fixed_point_train"),
    "optim.name": ("sgd", "adamw"),
    "method.lr_scaling": ("linear", "sqrt"),
}
# the registry that implements each choice: "module:attribute" (a dict keyed by the names above)
REGISTRIES: dict[str, str] = {
    "data.name": "divebatch.data:DATASETS",
    "model.name": "divebatch.models:MODELS",
    "method.name": "divebatch.method.policies:POLICIES",
    "method.diversity_estimator": "divebatch.method.estimators:ESTIMATORS",
    "optim.name": "divebatch.optimizers:OPTIMIZERS",
    "method.lr_scaling": "divebatch.optimizers:LR_SCALINGS",
}


class UndeclaredChoiceError(KeyError):
    """A registry was given a name that :data:`CHOICES` does not declare for its config key."""


def declared(key: str, name: str) -> str:
    """``name``, after checking that :data:`CHOICES` declares it for ``key`` (each registry's
    ``register`` calls this).

    Raises:
        UndeclaredChoiceError: naming the key, the name and where to declare it.
    """
    if name not in CHOICES[key]:
        raise UndeclaredChoiceError(
            f"{key}={name!r} is registered but not declared; add it to divebatch.choices.CHOICES[{key!r}] "
            f"(declared: {' | '.join(CHOICES[key])})"
        )
    return name
