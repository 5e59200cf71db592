"""divebatch: reproducible replication of DiveBatch (gradient-diversity aware batch size adaptation).

The method as a library for your own training loop (README, "DiveBatch in your own loop";
``examples/custom_loop.py``)::

    from divebatch import BatchSizeController

Public names load lazily, so that ``import divebatch.analysis`` (and the run-directory format)
does not import torch.
"""

__version__ = "0.1.0"
__all__ = ["BatchSizeController", "Decision", "DiversityEstimator", "build_estimator", "gradient_diversity"]

_PUBLIC = {name: "divebatch.method" for name in __all__}  # the library, divebatch.method


def __getattr__(name: str):
    if name in _PUBLIC:
        import importlib

        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'divebatch' has no attribute {name!r}")
