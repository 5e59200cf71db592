"""Gradient diversity: the definition, its identities, and the authors' epoch estimator as the trainer
runs it (``ExactDiversity`` inside ``train_one_epoch``), against brute-force per-sample loops.

Sources: Yin et al. (2018) Def. 1; docs/protocol.md "Gradient diversity" and "How the authors estimate it";
docs/diversity.md explains the BatchNorm mixed mode tested at the end.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import noise_scale_form, per_sample_gradients
from torch import nn

from divebatch.method import EpochDiversityEstimator, ExactDiversity, gradient_diversity
from divebatch.method.backpack_norms import batchnorm_eval, extend_model
from divebatch.training import train_one_epoch

N_CLASSES = 5


# ----------------------------------------------------------------------------- definition and identities


def test_gradient_diversity_hand_examples():
    eye = torch.eye(2, dtype=torch.float64)
    assert gradient_diversity(eye).item() == pytest.approx(1.0)  # (1 + 1) / ||(1, 1)||^2
    same = torch.tensor([[1.0, 0.0], [1.0, 0.0]], dtype=torch.float64)
    assert gradient_diversity(same).item() == pytest.approx(0.5)  # 2 / 4: n * Delta = 1
    opposite = torch.tensor([[1.0, 0.0], [-1.0, 0.0]], dtype=torch.float64)
    assert torch.isinf(gradient_diversity(opposite))  # the gradients cancel


@pytest.mark.parametrize("seed", range(4))
def test_n_delta_is_one_plus_simple_noise_scale(seed):
    """n * Delta = 1 + tr(Sigma) / ||G||^2 (docs/protocol.md; McCandlish et al. 2018), Sigma from torch.cov."""
    g = torch.Generator().manual_seed(seed)
    n = 7 + seed
    grads = torch.randn(n, 11, generator=g, dtype=torch.float64) + torch.randn(11, generator=g, dtype=torch.float64)
    n_delta = n * gradient_diversity(grads)
    trace_sigma = torch.cov(grads.T, correction=0).trace()  # population covariance (1/n)
    assert n_delta.item() == pytest.approx((1 + trace_sigma / grads.mean(0).pow(2).sum()).item(), rel=1e-12)
    assert noise_scale_form(grads).item() == pytest.approx(n_delta.item(), rel=1e-12)


@pytest.mark.parametrize("copies", [2, 3])
def test_n_delta_unchanged_when_every_sample_is_duplicated(copies):
    grads = torch.randn(9, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    dup = grads.repeat(copies, 1)
    assert (len(dup) * gradient_diversity(dup)).item() == pytest.approx(
        (9 * gradient_diversity(grads)).item(), rel=1e-12
    )


@pytest.mark.parametrize("spread", [0.0, 1e-3, 1.0, 100.0])
def test_n_delta_is_at_least_one(spread):
    g = torch.Generator().manual_seed(2)
    grads = torch.randn(6, dtype=torch.float64, generator=g) + spread * torch.randn(
        20, 6, dtype=torch.float64, generator=g
    )
    assert (20 * gradient_diversity(grads)).item() >= 1 - 1e-12  # Cauchy-Schwarz


def test_per_sample_gradients_match_softmax_regression_closed_form():
    """g_i = (softmax(W x_i + b) - e_{y_i}) x_i^T for W and (softmax - e_{y_i}) for b."""
    torch.manual_seed(0)
    model = nn.Linear(6, 4).double()
    x, y = torch.randn(5, 6, dtype=torch.float64), torch.tensor([0, 3, 1, 1, 2])
    residual = torch.softmax(model(x), 1) - F.one_hot(y, 4)
    expected = torch.cat([torch.einsum("nk,nd->nkd", residual, x).reshape(5, -1), residual], 1)
    assert torch.allclose(per_sample_gradients(model, F.cross_entropy, x, y), expected, atol=1e-12)


def test_empty_estimator_is_nan():
    assert math.isnan(EpochDiversityEstimator().value())


# ----------------------------------------------------------------------------- epoch estimator, no BatchNorm


def _linear():
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, N_CLASSES))


def _conv():
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 2 * 2, N_CLASSES),
    )


def _data(n, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 4, 4, generator=g, dtype=dtype), torch.randint(0, N_CLASSES, (n,), generator=g)


def _batches(x, y, batch_size, seed=0):
    """One epoch of shuffled batches; the last one is smaller when batch_size does not divide n."""
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    return [(x[idx], y[idx]) for idx in order.split(batch_size)]


def _measured_epoch(model, batches, max_micro_batch):
    """Run the trainer's epoch with lr 0 (the iterate never moves) and return Delta_hat."""
    estimator = ExactDiversity()
    model = estimator.prepare(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9, weight_decay=5e-4)
    stats = train_one_epoch(
        model, batches, optimizer, nn.CrossEntropyLoss(), max_micro_batch, estimator, progress=False
    )
    assert stats["samples"] == sum(len(b[1]) for b in batches) == estimator.samples
    return estimator.value()


def _brute_force_delta(model, x, y):
    ref = copy.deepcopy(model).double()
    return gradient_diversity(per_sample_gradients(ref, F.cross_entropy, x.double(), y)).item()


@pytest.mark.parametrize("make_model", [_linear, _conv], ids=["linear", "conv"])
@pytest.mark.parametrize("batch_size, max_micro_batch", [(10, 10), (10, 4), (16, 5), (47, 47), (47, 8)])
def test_epoch_estimator_equals_brute_force_delta_at_lr_zero(make_model, batch_size, max_micro_batch):
    """n = 47: with batch 10 the last batch has 7 samples; micro-batches of 4 split 10 into 4+4+2."""
    torch.manual_seed(0)
    model = make_model()
    x, y = _data(47)
    expected = _brute_force_delta(model, x, y)
    got = _measured_epoch(model, _batches(x, y, batch_size), max_micro_batch)
    assert got == pytest.approx(expected, rel=1e-5)
    assert 47 * got >= 1


def test_authors_mean_unit_form_agrees_only_with_equal_batch_sizes():
    """The authors sum batch_l2 (1/m^2 per sample) and mean gradients (1/m); with equal m the factors
    cancel (docs/diversity.md), with a smaller last batch they do not, and our sum-unit form stays exact."""
    torch.manual_seed(0)
    model = _linear()
    x, y = _data(48)
    grads = per_sample_gradients(copy.deepcopy(model).double(), F.cross_entropy, x.double(), y)

    def authors(sizes):
        chunks = grads[: sum(sizes)].split(sizes)
        s = sum(c.pow(2).sum() / len(c) ** 2 for c in chunks)
        a = sum(c.mean(0) for c in chunks)
        return (s / a.pow(2).sum()).item()

    assert authors([12] * 4) == pytest.approx(gradient_diversity(grads).item(), rel=1e-12)
    exact_47 = gradient_diversity(grads[:47]).item()
    assert abs(authors([10] * 4 + [7]) / exact_47 - 1) > 1e-3
    assert _measured_epoch(model, _batches(x[:47], y[:47], 10), 10) == pytest.approx(exact_47, rel=1e-5)


def test_estimator_n_delta_unchanged_when_the_dataset_is_duplicated():
    torch.manual_seed(0)
    model = _conv()
    x, y = _data(30)
    single = _measured_epoch(copy.deepcopy(model), _batches(x, y, 8), 8)
    double = _measured_epoch(copy.deepcopy(model), _batches(x.repeat(2, 1, 1, 1), y.repeat(2), 8, seed=1), 3)
    assert 60 * double == pytest.approx(30 * single, rel=1e-5)


# ----------------------------------------------------------------------------- BatchNorm


class _BNNet(nn.Module):
    """conv -> BN -> relu -> conv -> BN -> relu -> linear, no in-place ops (BackPACK hooks)."""

    def __init__(self, frozen_bn: bool = False):
        super().__init__()
        self.frozen_bn = frozen_bn
        self.conv1, self.bn1 = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.conv2, self.bn2 = nn.Conv2d(4, 4, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(4)
        self.flatten, self.fc = nn.Flatten(), nn.Linear(4 * 2 * 2, N_CLASSES)
        g = torch.Generator().manual_seed(3)
        for bn in (self.bn1, self.bn2):  # away from the identity map, so running stats matter
            bn.running_mean.copy_(torch.randn(4, generator=g) * 0.3)
            bn.running_var.copy_(torch.rand(4, generator=g) + 0.5)
            bn.weight.data.copy_(torch.rand(4, generator=g) + 0.5)
            bn.bias.data.copy_(torch.randn(4, generator=g) * 0.2)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.frozen_bn:  # an eval-mode forward inside the trainer's model.train()
            self.bn1.eval(), self.bn2.eval()
        return self

    def forward(self, x):
        h = F.relu(self.bn1(self.conv1(x)))
        return self.fc(self.flatten(F.relu(self.bn2(self.conv2(h)))))


def test_eval_mode_batchnorm_estimate_equals_per_sample_loop():
    torch.manual_seed(0)
    model = _BNNet(frozen_bn=True)
    x, y = _data(37)
    expected = _brute_force_delta(model.eval(), x, y)
    stats_before = model.bn1.running_mean.clone()
    got = _measured_epoch(model, _batches(x, y, 8), 3)
    assert got == pytest.approx(expected, rel=1e-5)
    assert torch.equal(model.bn1.running_mean, stats_before)  # the forward really was eval-mode


def _mixed_mode_pieces(model: nn.Module, x, y, scale: float = 1.0):
    """Independent per-sample gradient pieces in the authors' mixed mode, without BackPACK.

    Train-mode forward (batch statistics; running stats updated), ordinary autograd backward of the
    mean loss, giving each layer's output gradient ``gout`` (with BatchNorm's coupling between
    samples). Sample i's piece of a layer's parameter is d/dtheta <f(inp_i; theta), gout_i>, with f
    the layer itself for conv/linear and, for BatchNorm, the eval-mode affine map
    ``(inp - running_mean) / sqrt(running_var + eps) * weight + bias``: what BackPACK's first-order
    ``BatchL2Grad`` computes from ``module.input0``, ``g_out`` and ``_get_normalized_input_and_var``
    in eval mode (docs/diversity.md).

    Returns:
        {param name: (n, *param.shape) pieces} in units of the (scaled) mean loss, and the
        ordinary parameter gradients {name: grad}.
    """
    layers = {name: m for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear, nn.BatchNorm2d))}
    seen = {}

    def hook(name):
        def fn(module, inputs, output):
            output.retain_grad()
            seen[name] = (inputs[0].detach(), output)

        return fn

    handles = [m.register_forward_hook(hook(name)) for name, m in layers.items()]
    model.train()
    loss = F.cross_entropy(model(x), y) * scale
    for h in handles:
        h.remove()
    params = [p for p in model.parameters()]
    grads = dict(zip([n for n, _ in model.named_parameters()], torch.autograd.grad(loss, params, retain_graph=True)))
    outs = [seen[name][1] for name in layers]
    gouts = dict(zip(layers, torch.autograd.grad(loss, outs)))
    pieces = {}
    for name, m in layers.items():
        inp = seen[name][0]
        for pname, p in m.named_parameters():
            rows = []
            for i in range(len(y)):
                if isinstance(m, nn.BatchNorm2d):
                    view = (1, -1, 1, 1)
                    out_i = (inp[i : i + 1] - m.running_mean.view(view)) / torch.sqrt(
                        m.running_var.view(view) + m.eps
                    ) * m.weight.view(view) + m.bias.view(view)
                else:
                    out_i = m(inp[i : i + 1])
                rows.append(torch.autograd.grad((out_i * gouts[name][i : i + 1]).sum(), p)[0])
            pieces[f"{name}.{pname}"] = torch.stack(rows)
    return pieces, grads


def test_mixed_mode_backpack_norms_equal_an_independent_computation():
    """BackPACK's per-sample, per-parameter batch_l2 with the authors' BatchNorm switch (train-mode
    forward, ``batchnorm_eval`` around the backward) equals the independent pieces above."""
    from backpack import backpack
    from backpack.extensions import BatchL2Grad

    torch.manual_seed(0)
    reference = _BNNet().double()
    model = extend_model(copy.deepcopy(reference))
    x, y = _data(9, dtype=torch.float64)
    pieces, grads = _mixed_mode_pieces(reference, x, y)

    model.train()
    loss = F.cross_entropy(model(x), y)
    with batchnorm_eval(model), backpack(BatchL2Grad()):
        loss.backward()
    assert all(m.training for m in model.modules())  # switched back after the backward
    for name, p in model.named_parameters():
        assert torch.allclose(p.batch_l2, pieces[name].flatten(1).pow(2).sum(1), rtol=1e-10, atol=1e-16), name
        assert torch.allclose(p.grad, grads[name], rtol=1e-10, atol=1e-14), name  # the update is the ordinary one

    # What the norms mean (docs/diversity.md): conv/linear pieces add up to the train-mode gradient,
    # BatchNorm weight pieces do not (x_hat from running, not batch, statistics) ...
    for name in ("conv1.weight", "conv2.weight", "fc.weight", "bn1.bias", "bn2.bias"):
        assert torch.allclose(pieces[name].sum(0), grads[name], rtol=1e-8, atol=1e-14), name
    for name in ("bn1.weight", "bn2.weight"):
        assert not torch.allclose(pieces[name].sum(0), grads[name], rtol=1e-3), name
    # ... and the conv bias in front of a BatchNorm has zero gradient but nonzero per-sample pieces.
    assert grads["conv1.bias"].abs().max() < 1e-12 < pieces["conv1.bias"].abs().max()


def test_mixed_mode_epoch_estimate_reproduces_the_independent_computation():
    """The trainer's epoch (train-mode BatchNorm, micro-batches, smaller last batch, lr 0) gives
    S / ||A||^2 with S from the independent pieces and A the sum of the ordinary gradients."""
    torch.manual_seed(0)
    reference = _BNNet().double()
    model = copy.deepcopy(reference)
    x, y = _data(23, dtype=torch.float64)
    batches, max_micro = _batches(x, y, 8), 3  # 8 + 8 + 7 samples; micro-batches 3 + 3 + 2 and 3 + 3 + 1
    s, a = 0.0, None
    for xb, yb in batches:
        step_grad = None
        for xm, ym in zip(xb.split(max_micro), yb.split(max_micro)):  # same forwards, same running stats
            pieces, grads = _mixed_mode_pieces(reference, xm, ym, scale=len(ym) / len(yb))
            s += sum(v.flatten(1).pow(2).sum() for v in pieces.values()) * len(yb) ** 2
            g = torch.cat([v.reshape(-1) for v in grads.values()]) * len(yb)
            step_grad = g if step_grad is None else step_grad + g
        a = step_grad if a is None else a + step_grad
    expected = (s / a.pow(2).sum()).item()
    got = _measured_epoch(model, batches, max_micro)
    assert got == pytest.approx(expected, rel=1e-8)
    for b_ref, b in zip(reference.buffers(), model.buffers()):  # both saw the same train-mode forwards
        assert torch.allclose(b_ref.double(), b.double())
