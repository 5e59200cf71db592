"""The micro-batch (two-scale) estimator of gradient diversity against the definition and against the
exact (BackPACK) estimator.

Formula (docs/performance.md; McCandlish et al. 2018, App. A): for a step of B samples split into
micro-batches of sizes b_j with sum-unit gradients U_j and U = sum_j U_j,
P_hat = (sum_j ||U_j||^2 - r ||U||^2) / (1 - r), r = sum_j b_j (b_j - 1) / (B (B - 1)),
is unbiased for P = sum_i ||g_i||^2 over random assignments of the samples to micro-batches.
Every comparison runs with lr 0 (the iterate never moves), so the exact estimator gives the exact
Delta of the epoch's samples and the only difference left is the estimator's own sampling noise.
"""

from __future__ import annotations

import contextlib
import copy
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import per_sample_gradients
from torch import nn

from divebatch.method import ExactDiversity, MicroBatchDiversity, build_estimator, gradient_diversity
from divebatch.training import micro_batch_plan, train_one_epoch

N_CLASSES = 4


def _logistic(features: int = 12) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(features, N_CLASSES))


def _cnn() -> nn.Module:
    """A small CNN without BatchNorm: per-sample gradients are well defined in train mode."""
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(6, 6, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(6 * 4 * 4, N_CLASSES),
    )


def _data(kind: str, n: int, seed: int = 0, dtype=torch.float32):
    """Inputs with a class signal, so the mean gradient does not vanish and Delta is moderate."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, N_CLASSES, (n,), generator=g)
    shape = (n, 12) if kind == "logistic" else (n, 3, 8, 8)
    x = torch.randn(shape, generator=g, dtype=dtype)
    x += 0.5 * y.to(dtype).view(-1, *[1] * (x.dim() - 1))
    return x, y


def _batches(x, y, batch_size: int, seed: int):
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    return [(x[idx], y[idx]) for idx in order.split(batch_size)]


def _epoch(estimator, model, batches, max_micro_batch: int = 2048):
    model = estimator.prepare(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    stats = train_one_epoch(
        model, batches, optimizer, nn.CrossEntropyLoss(), max_micro_batch, estimator, progress=False
    )
    assert stats["samples"] == estimator.samples
    return estimator


def _p_hat(rows: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """The formula above from per-sample gradient rows (B, p) taken in micro-batch order."""
    b = rows.shape[0]
    u_j = torch.stack([c.sum(0) for c in rows.split(sizes)])
    r = sum(s * (s - 1) for s in sizes) / (b * (b - 1))
    return (u_j.pow(2).sum() - r * rows.sum(0).pow(2).sum()) / (1 - r)


# ----------------------------------------------------------------------------- plan and protocol


def test_registered_and_built_by_name():
    est = build_estimator("microbatch", micro_batches=3)
    assert type(est) is MicroBatchDiversity and est.micro_batches == 3


@pytest.mark.parametrize(
    "k, batch, max_micro, expected",
    [
        (2, 128, 2048, [64, 64]),  # split although the batch fits in one micro-batch
        (2, 7, 2048, [4, 3]),
        (4, 10, 2048, [3, 3, 2, 2]),
        (2, 3000, 1024, [1000, 1000, 1000]),  # the memory cap asks for more parts
        (4, 3, 2048, [1, 1, 1]),  # never an empty micro-batch
        (2, 1, 2048, [1]),
    ],
)
def test_micro_batch_sizes(k, batch, max_micro, expected):
    assert MicroBatchDiversity(k).micro_batch_sizes(batch, max_micro) == expected
    assert micro_batch_plan(batch, max_micro, MicroBatchDiversity(k)) == expected
    assert micro_batch_plan(batch, max_micro) == [min(max_micro, batch - s) for s in range(0, batch, max_micro)]


def test_rejects_a_single_micro_batch():
    with pytest.raises(ValueError, match="micro_batches=1"):
        MicroBatchDiversity(1)


def test_step_not_split_by_the_plan_is_refused():
    torch.manual_seed(0)
    model, est = _logistic(), MicroBatchDiversity(2)
    x, y = _data("logistic", 8)
    est.micro_batch_sizes(8, 2048)
    est.backward(model, F.cross_entropy(model(x), y), 8)  # one part only, two planned
    with pytest.raises(RuntimeError, match="planned"):
        est.step_end(model, 8)


@pytest.mark.parametrize("kind", ["logistic", "cnn"])
def test_trainer_epoch_reproduces_the_formula_and_the_exact_gradient(kind):
    """Through train_one_epoch (shuffled batches, a smaller last batch, k = 3): S equals the formula
    applied to brute-force per-sample gradients in the same order, A equals their sum, and the
    update gradient equals plain accumulation (the estimator changes no step)."""
    torch.manual_seed(0)
    model = (_logistic() if kind == "logistic" else _cnn()).double()
    x, y = _data(kind, 23, dtype=torch.float64)
    batches = _batches(x, y, 8, seed=1)  # 8 + 8 + 7 samples
    est = _epoch(MicroBatchDiversity(3), copy.deepcopy(model), batches)
    s_expected, a_expected = 0.0, 0.0
    for xb, yb in batches:
        rows = per_sample_gradients(model, F.cross_entropy, xb, yb)
        s_expected += _p_hat(rows, MicroBatchDiversity(3).micro_batch_sizes(len(yb), 2048))
        a_expected += rows.sum(0)
    a = torch.cat([g.reshape(-1) for g in est.grad_sum])
    assert torch.allclose(a, a_expected, rtol=1e-9, atol=1e-12)
    assert est.sq_norm_sum.item() == pytest.approx(s_expected.item(), rel=1e-8)
    assert est.value() == pytest.approx((s_expected / a_expected.pow(2).sum()).item(), rel=1e-8)


def test_gradient_of_a_measured_step_equals_plain_accumulation():
    torch.manual_seed(0)
    model = _cnn().double()
    x, y = _data("cnn", 12, dtype=torch.float64)
    est = MicroBatchDiversity(4)
    plain = copy.deepcopy(model)
    F.cross_entropy(plain(x), y).backward()
    sizes = est.micro_batch_sizes(12, 2048)
    for xm, ym in zip(x.split(sizes), y.split(sizes)):
        est.backward(model, F.cross_entropy(model(xm), ym) * (len(ym) / 12), 12)
    for p, q in zip(model.parameters(), plain.parameters()):
        assert torch.allclose(p.grad, q.grad, rtol=1e-10, atol=1e-13)


# ----------------------------------------------------------------------------- statistics


@pytest.mark.parametrize("k", [2, 4])
def test_step_estimate_is_unbiased_over_random_splits(k):
    """The real estimator, run on 400 random orders of the same 32 samples (logistic regression, one
    class, so the per-sample gradients are aligned and n * Delta is about 2): the mean of P_hat is
    within 4 standard errors of the exact P. The test has power: the with-replacement formula
    (r = 1/k instead of the finite-batch r) would be off by more than 30 standard errors here
    (asserted). With k = B every micro-batch is one sample and the estimate is exact."""
    torch.manual_seed(0)
    model = _logistic()
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(32, 12, generator=g) + 1.0, torch.zeros(32, dtype=torch.long)
    rows = per_sample_gradients(model, F.cross_entropy, x, y).double()
    exact = rows.pow(2).sum().item()
    cross = rows.sum(0).pow(2).sum().item() - exact
    draws = []
    for seed in range(400):
        est = _epoch(MicroBatchDiversity(k), model, _batches(x, y, 32, seed))
        draws.append(est.sq_norm_sum.item())
    draws = torch.tensor(draws, dtype=torch.float64)
    se = draws.std().item() / math.sqrt(len(draws))
    assert abs(draws.mean().item() - exact) < 4 * se
    assert draws.std().item() > 0  # it is an estimate, not the exact value by accident
    r, r_replacement = sum(b * (b - 1) for b in [32 // k] * k) / (32 * 31), 1 / k
    assert abs(cross * (r - r_replacement) / (1 - r_replacement)) > 30 * se
    singles = _epoch(MicroBatchDiversity(32), model, _batches(x, y, 32, 0))
    assert singles.sq_norm_sum.item() == pytest.approx(exact, rel=1e-5)


def _softmax_regression_rows(model: nn.Module, x, y) -> torch.Tensor:
    """Closed-form per-sample gradients of nn.Sequential(Flatten, Linear) under cross-entropy:
    dW = (softmax - onehot) x^T, db = softmax - onehot, flattened in parameter order (float64)."""
    lin = model[1]
    x = x.double().flatten(1)
    err = torch.softmax(x @ lin.weight.double().T + lin.bias.double(), 1) - F.one_hot(y, N_CLASSES).double()
    return torch.cat([(err[:, :, None] * x[:, None, :]).flatten(1), err], 1)


def _simulated_sd(rows_in_epoch_order: torch.Tensor, batch_size: int, k: int, draws: int, seed: int) -> float:
    """Standard deviation of the epoch's S_hat over the random assignment of samples to steps and
    micro-batches, by Monte Carlo on the formula with the exact per-sample gradients."""
    g = torch.Generator().manual_seed(seed)
    n = rows_in_epoch_order.shape[0]
    out = []
    for _ in range(draws):
        rows = rows_in_epoch_order[torch.randperm(n, generator=g)]
        out.append(
            sum(
                _p_hat(c, MicroBatchDiversity(k).micro_batch_sizes(len(c), 2048)) for c in rows.split(batch_size)
            ).item()
        )
    return torch.tensor(out, dtype=torch.float64).std().item()


@pytest.mark.parametrize("kind, n, batch_size", [("logistic", 2048, 64), ("cnn", 256, 32)])
def test_agrees_with_the_exact_estimator_over_seeds(kind, n, batch_size):
    """Delta_hat from both estimators on the same epochs (5 seeds of the shuffle), lr 0.

    Tolerance: the micro-batch estimate's error is its sampling noise only (the denominator is
    shared), so each seed must fall within 4 standard deviations of the exact value, the
    standard deviation computed from the exact per-sample gradients by Monte Carlo over random
    splits (not from the estimates being tested), and the mean over seeds within 4 / sqrt(5) of
    it. The Monte-Carlo sd itself is printed in docs/performance.md's variance table.
    """
    torch.manual_seed(0)
    model = _logistic() if kind == "logistic" else _cnn()
    x, y = _data(kind, n)
    rows = (
        _softmax_regression_rows(model, x, y)
        if kind == "logistic"
        else per_sample_gradients(copy.deepcopy(model).double(), F.cross_entropy, x.double(), y)
    )
    exact_delta = gradient_diversity(rows).item()
    rel_sd = _simulated_sd(rows, batch_size, 2, 100, seed=7) / rows.pow(2).sum().item()
    assert 0 < rel_sd < 0.5  # a meaningful comparison: the estimator is not pure noise here
    errors = []
    for seed in range(5):
        batches = _batches(x, y, batch_size, seed)
        exact = _epoch(ExactDiversity(), copy.deepcopy(model), batches).value()
        micro = _epoch(MicroBatchDiversity(2), copy.deepcopy(model), batches).value()
        assert exact == pytest.approx(exact_delta, rel=1e-4)
        errors.append(micro / exact - 1)
        assert abs(errors[-1]) < 4 * rel_sd, (seed, errors[-1], rel_sd)
    assert abs(sum(errors) / len(errors)) < 4 * rel_sd / math.sqrt(len(errors))


# ----------------------------------------------------------------------------- exact estimator's conv route


@pytest.mark.parametrize(
    "conv",
    [
        dict(in_channels=3, out_channels=4, kernel_size=3, padding=1),  # grouped-convolution route
        dict(in_channels=8, out_channels=16, kernel_size=3, padding=1, stride=2),  # Gram route (few positions)
        dict(in_channels=4, out_channels=6, kernel_size=3, padding=2, dilation=2, groups=2, bias=False),
        dict(in_channels=3, out_channels=4, kernel_size=3, padding=1, padding_mode="reflect"),
        dict(in_channels=8, out_channels=16, kernel_size=4, padding="same", stride=1, bias=False),
    ],
    ids=["grouped", "gram", "groups_dilation", "reflect", "same"],
)
def test_exact_conv_routes_equal_a_per_sample_loop(conv):
    """``batch_l2_extension`` (inside ``backpack_hooks``) against brute-force per-sample gradients,
    for each route of ``CheapestBatchL2Conv2d`` (the route follows m k <= s (k + m)) and for the
    padding BackPACK's own route would get wrong (reflect) or cannot take ('same', asymmetric here)."""
    from backpack import backpack

    from divebatch.method.backpack_norms import backpack_hooks, batch_l2_extension

    torch.manual_seed(0)
    size = 4 if conv.get("stride") == 2 else 6
    model = nn.Sequential(nn.Conv2d(**conv), nn.ReLU(), nn.Flatten(), nn.LazyLinear(N_CLASSES)).double()
    x = torch.randn(5, conv["in_channels"], size, size, dtype=torch.float64)
    y = torch.arange(5) % N_CLASSES
    model(x)  # materialise the lazy layer
    expected = per_sample_gradients(model, F.cross_entropy, x, y).pow(2).sum(1)
    with backpack_hooks(model):
        loss = F.cross_entropy(model(x), y, reduction="sum")
        with backpack(batch_l2_extension()):
            loss.backward()
    got = torch.stack([p.batch_l2 for p in model.parameters()]).sum(0)
    assert torch.allclose(got, expected, rtol=1e-10, atol=1e-12)
    assert not model[0]._forward_hooks and not model[0]._backward_hooks  # removed on exit


@pytest.mark.parametrize("opt_einsum", [True, False], ids=["opt_einsum", "left_to_right"])
def test_exact_estimator_equals_stock_backpack_batch_l2(opt_einsum, monkeypatch):
    """The epoch estimate with our Conv2d route equals the one with BackPACK's stock ``BatchL2Grad()``
    (float64, rel 1e-10) on a BatchNorm ResNet, with torch.einsum's opt_einsum ordering on and off;
    the default route is really ours (its ``weight`` is called), so the comparison is not stock
    against stock. Benchmark (a) compares their speed (docs/performance.md)."""
    from backpack.extensions import BatchL2Grad

    from divebatch.method.backpack_norms import _conv2d_batch_l2_class
    from divebatch.models import build_model

    route = _conv2d_batch_l2_class()
    calls = []
    original = route.weight
    monkeypatch.setattr(route, "weight", lambda self, *a: calls.append(1) or original(self, *a))
    torch.manual_seed(0)
    model = build_model("resnet_small", N_CLASSES, 3, 8, 4).double()
    x, y = _data("cnn", 24, dtype=torch.float64)
    batches = _batches(x, y, 8, seed=0)
    with torch.backends.opt_einsum.flags(enabled=opt_einsum):
        ours = _epoch(ExactDiversity(), copy.deepcopy(model), batches).value()
        n_ours = len(calls)
        stock = _epoch(ExactDiversity(BatchL2Grad()), copy.deepcopy(model), batches).value()
    assert n_ours > 0 and len(calls) == n_ours  # ours used the route, stock did not
    assert math.isfinite(ours) and ours > 0
    assert ours == pytest.approx(stock, rel=1e-10)


def test_exact_estimator_under_bf16_autocast_and_channels_last():
    """speed.bf16 / speed.channels_last with the exact estimator: BackPACK gets float32 copies of the
    bf16 activations and gradients (``backpack_hooks``), so it runs, and Delta_hat stays within
    bf16's forward rounding (2 %) of the float32 value; the micro-batch estimator as well."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1, bias=False),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.Conv2d(6, 8, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 4 * 4, N_CLASSES),
    )
    x, y = _data("cnn", 48)
    batches = _batches(x, y, 16, seed=0)

    def run(cls, bf16: bool, channels_last: bool):
        m = copy.deepcopy(model)
        b = batches
        if channels_last:
            m = m.to(memory_format=torch.channels_last)
            b = [(xb.contiguous(memory_format=torch.channels_last), yb) for xb, yb in batches]
        est = cls()
        m = est.prepare(m)
        autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext
        train_one_epoch(
            m,
            b,
            torch.optim.SGD(m.parameters(), lr=0.0),
            nn.CrossEntropyLoss(),
            2048,
            est,
            autocast=autocast,
            progress=False,
        )
        return est.value()

    for cls in (ExactDiversity, MicroBatchDiversity):
        ref = run(cls, False, False)
        assert run(cls, False, True) == pytest.approx(ref, rel=1e-4)
        assert run(cls, True, True) == pytest.approx(ref, rel=0.02)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (host-sync detection)")
@pytest.mark.parametrize("cls", [ExactDiversity, MicroBatchDiversity], ids=["exact", "microbatch"])
def test_measured_steps_do_not_sync_the_device(cls):
    """No ``.item()``, host copy or other device sync inside a measured step (CUDA's sync debug mode
    turns one into an error); the single sync is ``value()`` at the epoch's end."""
    device = torch.device("cuda")
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1, bias=False),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.Conv2d(6, 8, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 4 * 4, N_CLASSES),
    ).to(device)
    x, y = (t.to(device) for t in _data("cnn", 64))
    est = cls()
    model = est.prepare(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    with est.measuring(model):
        for xb, yb in zip(x.split(32), y.split(32)):  # a first step allocates; the second must not sync either
            torch.cuda.set_sync_debug_mode("error")
            try:
                opt.zero_grad(set_to_none=True)
                plan = micro_batch_plan(32, 2048, est)
                for xm, ym in zip(xb.split(plan), yb.split(plan)):
                    est.backward(model, F.cross_entropy(model(xm), ym) * (len(ym) / 32), 32)
                est.step_end(model, 32)
                opt.step()
            finally:
                torch.cuda.set_sync_debug_mode("default")
    assert math.isfinite(est.value())
