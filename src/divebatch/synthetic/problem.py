"""Binary logistic regression with closed-form per-sample gradients and exact gradient diversity.

Every function here is vectorised over leading batch dimensions so that one call serves one
weight vector, a grid of learning rates, or a grid of (seed, learning rate) runs:

* ``x``: (..., n, d) float64 features, ``y``: (..., n) float64 labels in {0, 1};
* ``w``: (..., R, d) weights, R runs sharing the same data (leading dims broadcast with ``x``).

Per-sample loss (natural log, nats) with L2 regularisation ``l2``::

    f_i(w) = softplus(x_i . w) - y_i (x_i . w) + l2 / 2 ||w||^2
    g_i(w) = grad f_i(w) = (sigmoid(x_i . w) - y_i) x_i + l2 w

Gradient diversity (Yin et al., 2018, Definition 1; docs/protocol.md "Gradient diversity")::

    Delta(w) = sum_i ||g_i||^2 / ||sum_i g_i||^2,   n * Delta = 1 + tr(Sigma) / ||G||^2
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.optimize
import torch
from torch import Tensor
from torch.nn.functional import softplus

DTYPE = torch.float64


def logits(x: Tensor, w: Tensor) -> Tensor:
    """z = x . w for every run: x (..., n, d), w (..., R, d) -> (..., R, n)."""
    return w @ x.transpose(-1, -2)


def mean_loss(x: Tensor, y: Tensor, w: Tensor, l2: float) -> Tensor:
    """Mean regularised logistic loss (nats): (..., R)."""
    z = logits(x, w)
    data = (softplus(z) - y.unsqueeze(-2) * z).mean(-1)
    return data + 0.5 * l2 * w.pow(2).sum(-1)


def residuals(x: Tensor, y: Tensor, w: Tensor) -> Tensor:
    """r_i = sigmoid(x_i . w) - y_i: (..., R, n)."""
    return torch.sigmoid(logits(x, w)) - y.unsqueeze(-2)


def mean_grad(x: Tensor, y: Tensor, w: Tensor, l2: float) -> Tensor:
    """Gradient of the mean loss, (1/n) sum_i g_i: (..., R, d). With a mini-batch as ``x``, ``y``
    it is the mini-batch SGD direction."""
    r = residuals(x, y, w)
    return r @ x / x.shape[-2] + l2 * w


def per_sample_grads(x: Tensor, y: Tensor, w: Tensor, l2: float) -> Tensor:
    """Closed-form per-sample gradients g_i (materialised; for tests and small n): (..., R, n, d)."""
    r = residuals(x, y, w)
    return r.unsqueeze(-1) * x.unsqueeze(-3) + l2 * w.unsqueeze(-2)


def sq_norm_sum(x: Tensor, y: Tensor, w: Tensor, l2: float) -> Tensor:
    """sum_i ||g_i||^2 without materialising the (n, d) gradients: (..., R).

    ||r_i x_i + l2 w||^2 = r_i^2 ||x_i||^2 + 2 l2 r_i (x_i . w) + l2^2 ||w||^2.
    """
    z = logits(x, w)
    r = torch.sigmoid(z) - y.unsqueeze(-2)
    xsq = x.pow(2).sum(-1).unsqueeze(-2)
    n = x.shape[-2]
    return (r.pow(2) * xsq).sum(-1) + 2 * l2 * (r * z).sum(-1) + n * l2 * l2 * w.pow(2).sum(-1)


def n_diversity(x: Tensor, y: Tensor, w: Tensor, l2: float) -> Tensor:
    """Exact n * Delta(w) over the n samples of ``x``: (..., R). Always >= 1 (Cauchy-Schwarz);
    infinite where the full gradient vanishes (at w*)."""
    n = x.shape[-2]
    total = n * mean_grad(x, y, w, l2)
    return n * sq_norm_sum(x, y, w, l2) / total.pow(2).sum(-1)


def diversity(x: Tensor, y: Tensor, w: Tensor, l2: float) -> Tensor:
    """Exact Delta(w) (Yin et al., 2018, Def. 1): (..., R)."""
    return n_diversity(x, y, w, l2) / x.shape[-2]


def smoothness(x: Tensor, l2: float) -> float:
    """Upper bound L on the Hessian of the mean loss: 0.25 * lambda_max(x^T x / n) + l2 (1/nats-scale
    step sizes below 2/L make full-batch gradient descent stable)."""
    n = x.shape[-2]
    return 0.25 * float(torch.linalg.eigvalsh(x.transpose(-1, -2) @ x / n).max()) + l2


@dataclass
class Optimum:
    w: Tensor  # (d,) float64
    loss: float  # mean loss at w (nats)
    grad_norm: float  # ||grad|| at w, the convergence certificate


def solve(x: Tensor, y: Tensor, l2: float, gtol: float = 1e-11) -> Optimum:
    """w* of the mean regularised loss by Newton's method with an exact Hessian (scipy trust-exact).

    Args:
        x: (n, d) float64, y: (n,) float64 in {0, 1}; l2 >= 0 (must be > 0 for separable data).
        gtol: required ||grad L(w*)|| (the loss is strongly convex for l2 > 0, so suboptimality
            <= gtol^2 / (2 l2)).
    Raises:
        RuntimeError: the solver did not reach ``gtol`` (e.g. separable data with l2 = 0).
    """
    xn, yn = x.numpy(), y.numpy()
    n = xn.shape[0]

    def fun(w: np.ndarray):
        z = xn @ w
        loss = np.mean(np.logaddexp(0.0, z) - yn * z) + 0.5 * l2 * w @ w
        grad = xn.T @ (scipy.special.expit(z) - yn) / n + l2 * w
        return loss, grad

    def hess(w: np.ndarray):
        s = scipy.special.expit(xn @ w)
        return (xn.T * (s * (1 - s))) @ xn / n + l2 * np.eye(xn.shape[1])

    res = scipy.optimize.minimize(
        fun, np.zeros(xn.shape[1]), jac=True, hess=hess, method="trust-exact", options={"gtol": gtol, "maxiter": 1000}
    )
    w = torch.from_numpy(res.x).to(DTYPE)
    gnorm = float(mean_grad(x, y, w.unsqueeze(0), l2).norm())
    if not gnorm <= 10 * gtol:
        raise RuntimeError(
            f"w* solver did not converge: ||grad||={gnorm:.3g} > {10 * gtol:.1g} ({res.message}); "
            "use l2 > 0 or label noise for separable data"
        )
    return Optimum(w=w, loss=float(mean_loss(x, y, w.unsqueeze(0), l2)), grad_norm=gnorm)


def noise_scale(x: Tensor, y: Tensor, w: Tensor, l2: float) -> float:
    """McCandlish et al.'s (2018, eq. 2.8 and 2.9) curvature-weighted noise scale at one w:
    B_noise = tr(H Sigma) / (G^T H G), next to B_simple = tr(Sigma) / ||G||^2 = n*Delta - 1.

    Args:
        x: (n, d), y: (n,), w: (d,) float64.
    Returns:
        B_noise (samples); it equals B_simple when the Hessian H is a multiple of the identity.
    """
    n = x.shape[0]
    s = torch.sigmoid(x @ w)
    hess = (x.T * (s * (1 - s))) @ x / n + l2 * torch.eye(x.shape[1], dtype=x.dtype)
    g = per_sample_grads(x, y, w.unsqueeze(0), l2)[0]  # (n, d)
    mean = g.mean(0)
    tr_h_sigma = ((g @ hess) * g).sum(1).mean() - mean @ hess @ mean
    return float(tr_h_sigma / (mean @ hess @ mean))


@dataclass
class DescentPath:
    """Full-batch gradient descent (step 1/L) from w0 until a target loss: the deterministic path that
    SGD's mean follows. Arrays are per iterate (float64 numpy)."""

    suboptimality: np.ndarray  # loss - loss(w*) (nats)
    n_delta: np.ndarray  # exact n*Delta at each iterate
    n_delta_target: float  # n*Delta where the path crosses the target (log-linear interpolation)
    b_noise_target: float  # McCandlish's B_noise at the target (same interpolation)


def descent_path(
    x: Tensor, y: Tensor, l2: float, w0: Tensor, loss_star: float, target_subopt: float, max_steps: int = 200_000
) -> DescentPath:
    """Gradient descent with step 1/L (monotone for an L-smooth loss) until loss - loss* <= target.

    Args:
        x: (n, d), y: (n,), w0: (d,) float64; loss_star: loss(w*) (nats); target_subopt > 0 (nats).
    Raises:
        RuntimeError: the target is not reached in ``max_steps`` steps.
    """
    lr = 1.0 / smoothness(x, l2)
    w = w0.clone().unsqueeze(0)
    w_prev = w
    subs, nds = [], []
    for _ in range(max_steps):
        subs.append(float(mean_loss(x, y, w, l2)[0]) - loss_star)
        nds.append(float(n_diversity(x, y, w, l2)[0]))
        if subs[-1] <= target_subopt:
            break
        w_prev, w = w, w - lr * mean_grad(x, y, w, l2)
    else:
        raise RuntimeError(f"gradient descent did not reach suboptimality {target_subopt:.3g} in {max_steps} steps")
    sub, nd = np.array(subs), np.array(nds)
    b_noise = noise_scale(x, y, w[0], l2)
    if len(sub) == 1:
        nd_at, bn_at = nd[0], b_noise
    else:  # interpolate log-linearly in log suboptimality between the bracketing iterates
        t = (np.log(target_subopt) - np.log(sub[-2])) / (np.log(sub[-1]) - np.log(sub[-2]))
        nd_at = float(np.exp(np.log(nd[-2]) + t * (np.log(nd[-1]) - np.log(nd[-2]))))
        bn_prev = noise_scale(x, y, w_prev[0], l2)
        bn_at = float(np.exp(np.log(bn_prev) + t * (np.log(b_noise) - np.log(bn_prev))))
    return DescentPath(suboptimality=sub, n_delta=nd, n_delta_target=float(nd_at), b_noise_target=float(bn_at))
