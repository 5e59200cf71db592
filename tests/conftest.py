"""Shared test helpers: tiny configs, tiny datasets, the path to ``../shared/data`` and its skip.

Import helpers with ``from conftest import ...`` (pytest puts ``tests/`` on ``sys.path``).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from torch import Tensor, nn

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"  # ../shared/data relative to the repository root

# One intra-op thread: on a busy 2-core machine torch's OpenMP threads spin against the other
# pytest workers/processes and small tensor ops get 10-50x slower. Results do not depend on it.
torch.set_num_threads(1)
# Figures as PNG alone: the PDF is about a third of a figure's drawing time (benchmarks/figure_formats.py);
# test_analysis.py's report test sets png,pdf, the default, and checks both.
os.environ.setdefault("DIVEBATCH_FIGURE_FORMATS", "png")

# Every tiny run: CPU, no wandb, no progress bar, softmax regression on the bundled digits.
TINY = (
    "data.name=digits",
    "model.name=linear",
    "device=cpu",
    "wandb.mode=disabled",
    "progress=false",
    "epochs=2",
    "method.initial_batch_size=64",
    "method.max_batch_size=512",
    "method.max_micro_batch=512",
    "optim.lr=0.05",
    "optim.schedule=constant",
)


def pytest_xdist_auto_num_workers(config) -> int:
    """``-n auto`` (replicate/test.sh): one worker per core, at most 4, because each worker imports
    torch and holds about 1 GiB resident."""
    return max(1, min(os.cpu_count() or 1, 4))


def needs_shared(*names: str):
    """Mark a test as needing ``../shared/data/<name>`` for each name; skip with the reason when absent."""
    missing = [n for n in names if not (SHARED_DATA / n).exists()]

    def deco(obj):
        obj = pytest.mark.needs_shared(obj)
        return pytest.mark.skipif(
            bool(missing), reason=f"real data subset(s) absent: {', '.join('../shared/data/' + n for n in missing)}"
        )(obj)

    return deco


@pytest.fixture
def tiny_config(tmp_path):
    """Factory: ``tiny_config("method.delta=0.5", ..., out="name")`` -> a validated TrainConfig
    (see ``TINY``) whose ``out_dir`` is ``tmp_path/name``; later overrides win."""
    from divebatch.config import load_config

    def make(*overrides: str, out: str = "run", path=None):
        return load_config(path, [*TINY, f"out_dir={tmp_path / out}", *overrides])

    return make


def write_npz(
    path: Path, n_train: int = 96, n_test: int = 32, shape=(32, 32, 3), classes: int = 4, seed: int = 0
) -> Path:
    """A small learnable image dataset in the ``npz`` format (uint8 x (N, *shape), int64 y).

    Each class shifts the pixel values, so a linear model can learn it.
    """
    rng = np.random.default_rng(seed)

    def part(n):
        y = np.arange(n) % classes
        x = rng.integers(0, 128, (n, *shape)) + (y * (127 // max(classes - 1, 1))).reshape(-1, *[1] * len(shape))
        return x.astype(np.uint8), y.astype(np.int64)

    (trx, tr_y), (tex, tey) = part(n_train), part(n_test)
    np.savez(path, train_x=trx, train_y=tr_y, test_x=tex, test_y=tey)
    return path


@pytest.fixture
def tiny_npz(tmp_path):
    """Factory: ``tiny_npz(name="d.npz", **write_npz kwargs)`` -> path of a small npz dataset."""

    def make(name: str = "tiny.npz", **kw) -> Path:
        return write_npz(tmp_path / name, **kw)

    return make


def cli_env() -> dict:
    """Environment for ``divebatch`` subprocesses: one intra-op thread each (see above)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env.pop("PYTEST_CURRENT_TEST", None)
    return env


def divebatch_cmd(*args: str) -> list[str]:
    """``python -m divebatch ARGS`` with this interpreter (the installed console script's code path)."""
    return [sys.executable, "-m", "divebatch", *args]


# ----------------------------------------------------------------------------- reference computations
# Test-only references that the library does not use: brute-force per-sample gradients and the
# noise-scale form of n * Delta (docs/diversity.md).


def noise_scale_form(per_sample_grads: Tensor) -> Tensor:
    """``n * Delta`` computed as ``1 + tr(Sigma) / ||G||^2`` (docs/protocol.md identity; McCandlish et al., 2018).

    Args:
        per_sample_grads: (n, p) tensor.
    Returns:
        0-d tensor, equal to ``n * gradient_diversity(per_sample_grads)`` up to rounding.
    """
    mean = per_sample_grads.mean(0)
    trace_cov = (per_sample_grads - mean).pow(2).sum(1).mean()  # population covariance (1/n)
    return 1 + trace_cov / mean.pow(2).sum()


def per_sample_gradients(model: nn.Module, loss_fn: Callable[[Tensor, Tensor], Tensor], x: Tensor, y: Tensor) -> Tensor:
    """Brute-force per-sample gradients by a loop of single-sample backward passes (reference).

    The model is used in whatever mode it is in; BatchNorm in train mode on a single sample is
    ill-defined, so call this with BatchNorm in eval mode.

    Args:
        model: the network; its parameters with ``requires_grad`` form the gradient vector.
        loss_fn: per-batch loss with ``reduction='sum'`` or ``'mean'`` (identical on one sample).
        x: (n, ...) inputs; y: (n,) targets.
    Returns:
        (n, p) tensor of flattened per-sample gradients, parameters in ``model.parameters()`` order.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    rows = []
    for i in range(x.shape[0]):
        loss = loss_fn(model(x[i : i + 1]), y[i : i + 1])
        grads = torch.autograd.grad(loss, params)
        rows.append(torch.cat([g.reshape(-1) for g in grads]))
    return torch.stack(rows)
