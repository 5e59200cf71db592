"""Seeded synthetic binary-classification data for logistic regression, with diversity controls.

Features x ~ N(0, diag(s_j^2)) with s_j = (j + 1)^(-spectrum_decay) (isotropic by default); a
ground-truth direction u (unit norm): uniform on the sphere (``direction: isotropic``), or with
u_j proportional to g_j / s_j, g ~ N(0, I) (``direction: balanced``), so that every feature
contributes equally, in distribution, to the margin x . u = sum_j s_j u_j z_j (z ~ N(0, I)); with
ill-conditioned features this puts the loss in the low-variance (low-curvature) directions too, where
full-batch gradient descent is slow. Both draw the same random numbers and coincide when
spectrum_decay = 0. Clean labels y = 1[x . u > 0] when ``signal`` is null, else
y ~ Bernoulli(sigmoid(signal * x . u)); then each label is flipped with probability
``label_noise``. The flips are nested across noise levels (one uniform draw per sample), and the
features do not depend on the noise level or the duplication, so variants of one seed differ only
in the control that is varied.

Diversity controls (docs/protocol.md "Gradient diversity"):
* ``duplicate`` = k repeats every training sample k times: n grows k-fold, the mean loss, w* and
  n * Delta(w) at every w are unchanged;
* ``label_noise`` flips labels: at a fixed w the mean gradient shrinks and the per-sample spread
  grows, so n * Delta rises.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Optional

import torch
from torch import Tensor

from divebatch.synthetic.problem import DTYPE

DIRECTIONS = ("isotropic", "balanced")


@dataclass
class DataSpec:
    n_train: int = 2048  # training samples before duplication
    n_val: int = 1024
    n_features: int = 20
    signal: Optional[float] = None  # null: noiseless sign labels; else Bernoulli(sigmoid(signal * x.u))
    label_noise: float = 0.05  # probability of flipping each label (train and validation)
    duplicate: int = 1  # repeat every training sample this many times
    spectrum_decay: float = 0.0  # feature std s_j = (j + 1) ** -spectrum_decay
    direction: str = "isotropic"  # ground truth u: isotropic (uniform) | balanced (u_j ~ g_j / s_j)
    l2: float = 1e-3  # L2 regularisation of the loss (part of every f_i)


@dataclass
class SyntheticData:
    x_train: Tensor  # (n_train * duplicate, d) float64
    y_train: Tensor  # (n_train * duplicate,) float64 in {0, 1}
    x_val: Tensor  # (n_val, d)
    y_val: Tensor  # (n_val,)
    w_true: Tensor  # (d,) unit-norm ground-truth direction
    l2: float

    @property
    def n(self) -> int:
        return self.x_train.shape[0]


def check_spec(spec: DataSpec, where: str = "data") -> None:
    """Raise ValueError naming the key, value and allowed range of the first bad field."""
    rules = [
        ("n_train", spec.n_train >= 2, "an integer >= 2"),
        ("n_val", spec.n_val >= 1, "an integer >= 1"),
        ("n_features", spec.n_features >= 1, "an integer >= 1"),
        ("signal", spec.signal is None or spec.signal > 0, "null or a number > 0"),
        ("label_noise", 0 <= spec.label_noise < 0.5, "a number in [0, 0.5)"),
        ("duplicate", spec.duplicate >= 1, "an integer >= 1"),
        ("spectrum_decay", spec.spectrum_decay >= 0, "a number >= 0"),
        ("direction", spec.direction in DIRECTIONS, " | ".join(DIRECTIONS)),
        ("l2", spec.l2 >= 0, "a number >= 0"),
    ]
    for key, ok, allowed in rules:
        if not ok:
            raise ValueError(f"invalid config: {where}.{key}={getattr(spec, key)!r}; allowed: {allowed}")


# the fields a variant of the knee experiment may replace (divebatch.synthetic.config.VariantConfig)
VARIANT_FIELDS = ("label_noise", "duplicate", "spectrum_decay", "direction", "n_train")


def variant_spec(data, variant) -> DataSpec:
    """The DataSpec of a knee-experiment variant: ``data`` (a DataSpec or its config section) with the
    variant's non-null fields of :data:`VARIANT_FIELDS` replaced."""
    base = DataSpec(**{f.name: getattr(data, f.name) for f in fields(DataSpec)})
    return replace(base, **{k: getattr(variant, k) for k in VARIANT_FIELDS if getattr(variant, k) is not None})


def generate(spec: DataSpec, seed: int) -> SyntheticData:
    """Draw one dataset. Deterministic in (spec, seed); independent of torch's global RNG.

    Raises:
        ValueError: a field of ``spec`` is out of range (names key, value, allowed).
    """
    check_spec(spec)
    g = torch.Generator().manual_seed(int(seed))
    d, n_all = spec.n_features, spec.n_train + spec.n_val
    scales = torch.arange(1, d + 1, dtype=DTYPE).pow(-spec.spectrum_decay)
    x = torch.randn(n_all, d, generator=g, dtype=DTYPE) * scales
    u = torch.randn(d, generator=g, dtype=DTYPE)
    if spec.direction == "balanced":
        u = u / scales
    u = u / u.norm()
    margin = x @ u
    if spec.signal is None:
        y = (margin > 0).to(DTYPE)
    else:
        y = (torch.rand(n_all, generator=g, dtype=DTYPE) < torch.sigmoid(spec.signal * margin)).to(DTYPE)
    flip = torch.rand(n_all, generator=g, dtype=DTYPE) < spec.label_noise
    y = torch.where(flip, 1 - y, y)
    xt, yt = x[: spec.n_train], y[: spec.n_train]
    if spec.duplicate > 1:
        xt, yt = xt.repeat(spec.duplicate, 1), yt.repeat(spec.duplicate)
    return SyntheticData(x_train=xt, y_train=yt, x_val=x[spec.n_train :], y_val=y[spec.n_train :], w_true=u, l2=spec.l2)
