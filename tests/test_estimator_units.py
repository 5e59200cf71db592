"""The estimator's units: the authors' per-backward mean units (``fidelity.mean_units``) and our sum units.

* Switch on: a measured epoch through the trainer gives, bit for bit, what a transcription of the
  authors' trainer gives on the same inputs (lr 0; a smaller last batch; chunks 512 + 512 + 256),
  and the authors' formula written out on brute-force per-sample gradients.
* Switch off: brute-force Delta (per_sample chunk weights), and the exact sum of per-sample squared
  norms also under the authors' per_chunk weights with an unequal last chunk (where
  ``ExactDiversity.backward`` must use ``sample_scale``).
* Data-parallel emulation in mean units; which configs set the switch.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from backpack.extensions import BatchL2Grad
from conftest import REPO, per_sample_gradients
from torch import nn

from divebatch.config import load_config
from divebatch.data import shard_span
from divebatch.method import ExactDiversity, exact, gradient_diversity
from divebatch.training import train_one_epoch

SMALL_LAST = ([128, 128, 44], 2048)  # n = 300 at m = 128: the CIFAR trainers never split
UNEQUAL_CHUNKS = ([1280, 700], 512)  # chunks 512 + 512 + 256, then a smaller last batch as 512 + 188


def _conv_bn():
    """conv -> BatchNorm2d -> ReLU -> linear: the authors' BatchNorm trick switches BatchNorm2d only."""
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 5)
    )


def _mlp():
    """No BatchNorm: every sample's gradient is its own, so brute-force Delta is defined."""
    return nn.Sequential(nn.Flatten(), nn.Linear(48, 8), nn.Tanh(), nn.Linear(8, 5))


def _batches(sizes, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    n = sum(sizes)
    x = torch.randn(n, 3, 4, 4, generator=g, dtype=dtype)
    y = torch.randint(0, 5, (n,), generator=g)
    x += 0.5 * F.one_hot(y, 5).to(dtype).repeat_interleave(10, 1)[:, :48].view(-1, 3, 4, 4)  # some signal
    return list(zip(x.split(sizes), y.split(sizes)))


def authors_epoch(model, batches, optimizer, chunk: int) -> float:
    """The authors' measured DiveBatch epoch, transcribed line by line.

    Tiny-ImageNet trainer that produced the results, pytorch-cifar@5462789 ``src/train_utils.py``
    (its DiveBatchTrainer, unchanged there since e1e4e6d); the unsplit branch is also the CIFAR-10
    trainer at pytorch-cifar@7289184 (``src/train_utils.py:200-211``) and, without the split, the
    CIFAR-100 one at pytorch-cifar100@43c2ab1 (``train_utils.py:90-129``). ``chunk``: their
    sub-batch size, 512 for Tiny-ImageNet (``:150-153``); 2048 on CIFAR-10 (never reached).
    """
    from backpack import backpack, extend

    def set_bn_eval(m):  # :362-366, BatchNorm2d only
        for module in m.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.eval()

    def set_bn_train(m):  # :368-372
        for module in m.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.train()

    for module in model.modules():  # src/main_imgnet.py:148-155 (extend_all_modules)
        extend(module)
    criterion = extend(nn.CrossEntropyLoss())  # :135-136; mean loss (src/main_imgnet.py:164)
    model.train()
    accumulated_grads = [torch.zeros_like(param.detach().cpu()) for param in model.parameters()]  # :143
    individual_grad_norm_sum = 0  # :144
    for inputs, targets in batches:  # :146
        current_batch_size = inputs.size(0)  # :148
        optimizer.zero_grad()  # :149
        if current_batch_size > chunk:  # :150-157
            sub_batches = torch.split(inputs, chunk)  # :159
            target_sub_batches = torch.split(targets, chunk)  # :160
            num_sub_batches = len(sub_batches)  # :161
            for sub_inputs, sub_targets in zip(sub_batches, target_sub_batches):  # :164
                outputs = model(sub_inputs)  # :166
                loss = criterion(outputs, sub_targets)  # :167
                loss = loss / num_sub_batches  # :170
                set_bn_eval(model)  # :173
                with backpack(BatchL2Grad()):  # :174-175
                    loss.backward()
                set_bn_train(model)  # :176
                for j, param in enumerate(model.parameters()):  # :177-179, after EVERY chunk
                    accumulated_grads[j] += param.grad.detach().cpu().clone()
                    individual_grad_norm_sum += (param.batch_l2).sum().item()
            optimizer.step()  # :195
        else:
            outputs = model(inputs)  # :197
            loss = criterion(outputs, targets)  # :198
            set_bn_eval(model)  # :201
            with backpack(BatchL2Grad()):  # :202-203
                loss.backward()
            set_bn_train(model)  # :204
            for j, param in enumerate(model.parameters()):  # :205-207
                accumulated_grads[j] += param.grad.detach().cpu().clone()
                individual_grad_norm_sum += (param.batch_l2).sum().item()
            optimizer.step()  # :212
    flattened_grads = [grad.flatten() for grad in accumulated_grads]  # compute_grad_sum_norm, :21-25
    grad_sum_norm = torch.norm(torch.cat(flattened_grads)).item() ** 2
    return individual_grad_norm_sum / (grad_sum_norm + 1e-10)  # :225-226, compute_gradient_diversity :240-241


def authors_formula(grads, sizes, chunk: int, running: bool) -> float:
    """The authors' Delta_hat written out on per-sample gradients at one point (lr 0).

    Step t of m samples, split into k chunks of b_s samples when m > chunk (else k = 1, b = m); chunk
    s's samples carry w = 1/(b_s k) (their loss / k of a chunk mean). S += w^2 ||g_i||^2 per sample;
    the step's gradient so far, sum_{s' <= s} w_s' U_s', is added to A after every chunk
    (``running``, their trainer) or once per step. Delta_hat = S / (||A||^2 + 1e-10).

    Args:
        grads: (n, p) float64 per-sample gradients, in the order the batches visit the samples.
        sizes: the steps' batch sizes (samples).
    """
    s = torch.zeros((), dtype=grads.dtype)
    a = torch.zeros(grads.shape[1], dtype=grads.dtype)
    for g in grads.split(sizes):
        parts = g.split(chunk) if len(g) > chunk else [g]
        step = torch.zeros_like(a)
        for part in parts:
            w = 1.0 / (len(part) * len(parts))
            s += w**2 * part.pow(2).sum()
            step += w * part.sum(0)
            if running:
                a += step
        if not running:
            a += step
    return (s / (a.pow(2).sum() + 1e-10)).item()


def _sgd(model, lr: float):
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)


def ours_epoch(model, batches, chunk: int, rule: str, lr: float = 0.0, **switches) -> ExactDiversity:
    """One measured epoch of ``model`` (trained in place) through the trainer's ``train_one_epoch``."""
    est = ExactDiversity(**switches)
    model = est.prepare(model)
    train_one_epoch(
        model, batches, _sgd(model, lr), nn.CrossEntropyLoss(), chunk, est, progress=False, micro_batch_loss=rule
    )
    return est


# ----------------------------------------------------------------------------- switch on: the authors' numbers


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("sizes, chunk", [SMALL_LAST, UNEQUAL_CHUNKS], ids=["small_last_batch", "chunks_512_512_256"])
def test_mean_units_are_the_authors_trainer_bit_for_bit(sizes, chunk, dtype):
    """lr 0, BatchNorm2d, the authors' protocol switches (per_chunk, running sum, mean units) and
    BackPACK's stock extension on both sides: the same Delta_hat to the last bit."""
    torch.manual_seed(0)
    model = _conv_bn().to(dtype)
    batches = _batches(sizes, dtype)
    theirs_model = copy.deepcopy(model)
    theirs = authors_epoch(theirs_model, batches, _sgd(theirs_model, 0.0), chunk)
    switches = {"running_grad_sum": True, "mean_units": True}
    est = ours_epoch(copy.deepcopy(model), batches, chunk, "per_chunk", extension=BatchL2Grad(), **switches)
    assert est.value() == theirs
    assert est.samples == sum(sizes)
    # our Conv2d route (the default extension) is the same mathematics: equal to rounding
    default = ours_epoch(copy.deepcopy(model), batches, chunk, "per_chunk", **switches)
    assert default.value() == pytest.approx(theirs, rel=1e-12 if dtype == torch.float64 else 1e-5)
    # sum units differ from theirs by far more than rounding with these batches
    sum_units = ours_epoch(copy.deepcopy(model), batches, chunk, "per_chunk", running_grad_sum=True)
    assert abs(sum_units.value() / theirs - 1) > 1e-3


def test_mean_units_follow_the_authors_trainer_along_a_trajectory():
    """lr > 0 with momentum and weight decay: the same iterates and Delta_hat (float64, to rounding)."""
    torch.manual_seed(1)
    model = _conv_bn().double()
    batches = _batches(UNEQUAL_CHUNKS[0])
    theirs_model = copy.deepcopy(model)
    theirs = authors_epoch(theirs_model, batches, _sgd(theirs_model, 0.05), 512)
    switches = {"extension": BatchL2Grad(), "running_grad_sum": True, "mean_units": True}
    est = ours_epoch(model, batches, 512, "per_chunk", 0.05, **switches)
    assert est.value() == pytest.approx(theirs, rel=1e-12)
    for a, b in zip(model.parameters(), theirs_model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("running", [True, False])
@pytest.mark.parametrize("sizes, chunk", [SMALL_LAST, UNEQUAL_CHUNKS], ids=["small_last_batch", "chunks_512_512_256"])
def test_mean_units_equal_the_authors_formula_on_brute_force_gradients(sizes, chunk, running):
    """lr 0, no BatchNorm: the switch's S / (||A||^2 + 1e-10) is the formula of :func:`authors_formula`
    on per-sample gradients from single-sample backward passes (with and without the running sum)."""
    torch.manual_seed(0)
    model = _mlp().double()
    batches = _batches(sizes)
    x, y = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
    grads = per_sample_gradients(copy.deepcopy(model), F.cross_entropy, x, y)
    est = ours_epoch(model, batches, chunk, "per_chunk", running_grad_sum=running, mean_units=True)
    want = authors_formula(grads, sizes, chunk, running)
    assert est.value() == pytest.approx(want, rel=1e-10)
    assert abs(want / gradient_diversity(grads).item() - 1) > 1e-3  # not the exact Delta here
    # one unsplit step: the units cancel, exact Delta up to their + 1e-10 (here ||A||^2 = ||mean g_i||^2)
    equal = ours_epoch(copy.deepcopy(model), batches[:1], 2048, "per_chunk", mean_units=True)
    g2 = grads[: sizes[0]].mean(0).pow(2).sum().item()
    exact = gradient_diversity(grads[: sizes[0]]).item()
    assert equal.value() == pytest.approx(exact * g2 / (g2 + 1e-10), rel=1e-12)


# ----------------------------------------------------------------------------- switch off: sum units, exact


@pytest.mark.parametrize("sizes, chunk", [SMALL_LAST, UNEQUAL_CHUNKS], ids=["small_last_batch", "chunks_512_512_256"])
def test_sum_units_are_brute_force_delta_with_the_switch_off(sizes, chunk):
    """lr 0, no BatchNorm, the clean chunk weights: Delta_hat is brute-force Delta of the epoch's
    samples, and S is sum_i ||g_i||^2, whatever the batches and chunks."""
    torch.manual_seed(0)
    model = _mlp().double()
    batches = _batches(sizes)
    x, y = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
    grads = per_sample_gradients(copy.deepcopy(model), F.cross_entropy, x, y)
    est = ours_epoch(model, batches, chunk, "per_sample")
    assert est.value() == pytest.approx(gradient_diversity(grads).item(), rel=1e-10)
    assert float(est.sq_norm_sum) == pytest.approx(grads.pow(2).sum().item(), rel=1e-10)


def test_sum_units_keep_exact_squared_norms_under_per_chunk_weights():
    """The authors' per_chunk weights with chunks 512 + 512 + 256 (and 512 + 188): sample i's
    gradient in the chunk loss is g_i / (b k), which only ``sample_scale`` tells ``backward``; S
    must still be sum_i ||g_i||^2 (a backward that used the step's B instead is off by the unequal
    chunks' weights). A, the running sum of the authors' gradients, is what the switch documents."""
    torch.manual_seed(0)
    model = _mlp().double()
    sizes, chunk = UNEQUAL_CHUNKS
    batches = _batches(sizes)
    x, y = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
    grads = per_sample_gradients(copy.deepcopy(model), F.cross_entropy, x, y)
    for running in (False, True):
        est = ours_epoch(copy.deepcopy(model), batches, chunk, "per_chunk", running_grad_sum=running)
        assert float(est.sq_norm_sum) == pytest.approx(grads.pow(2).sum().item(), rel=1e-10)
        assert est.samples == sum(sizes)


# ----------------------------------------------------------------------------- data-parallel, configs


def test_mean_units_summed_over_emulated_ranks_equal_one_process(monkeypatch):
    """DDP by hand (as tests/test_distributed.py): 3 ranks, unequal shards, micro-batches of 4,
    p.grad set to the ranks' average; each rank's w carries 1/K, so the summed mean-unit S and A
    give the single process's value."""
    world, sizes, micro = 3, [30, 30, 13], 4
    torch.manual_seed(0)
    model = _mlp().double()
    batches = _batches(sizes)
    single = ours_epoch(copy.deepcopy(model), batches, 2048, "per_sample", mean_units=True)
    monkeypatch.setattr(exact, "_data_parallel_ranks", lambda model: world)
    ests = [ExactDiversity(mean_units=True) for _ in range(world)]
    with ests[0].measuring(model):
        for x, y in batches:
            share, rank_grads = len(y) / world, []
            for rank, est in enumerate(ests):
                lo, hi = shard_span(0, len(y), rank, world)
                model.zero_grad()
                for xm, ym in zip(x[lo:hi].split(micro), y[lo:hi].split(micro)):
                    est.backward(model, F.cross_entropy(model(xm), ym) * (len(ym) / share), share)
                rank_grads.append([p.grad.clone() for p in model.parameters()])
            for est in ests:
                for p, *gs in zip(model.parameters(), *rank_grads):
                    p.grad = torch.stack(gs).mean(0)
                est.step_end(model, share)
    others = [  # what the other ranks contribute: S folded on their host, A, the sample count
        [torch.tensor(e._fold_terms(), dtype=torch.float64), *e.grad_sum, torch.tensor(float(e.samples))]
        for e in ests[1:]
    ]

    def fake_all_reduce(tensors):
        for i, t in enumerate(tensors):
            t.add_(sum(o[i] for o in others).to(t.dtype))

    ests[0].all_reduce_(fake_all_reduce)
    assert ests[0].samples == sum(sizes)
    assert ests[0].value() == pytest.approx(single.value(), rel=1e-12)


def test_mean_units_are_on_in_the_authors_protocols_only():
    """On in the three paper protocols (also tests/test_protocol.py's tables), off under
    protocol=clean and in the CPU, smoke and transformer protocols, whose numbers do not change."""
    for dataset in ("cifar10", "cifar100", "tiny_imagenet"):
        for method in ("sgd_small", "divebatch", "divebatch_rescale"):
            path = REPO / "configs" / dataset / f"{method}.yaml"
            assert load_config(path, check_data=False).fidelity.mean_units is True
            assert load_config(path, ["protocol=clean"], check_data=False).fidelity.mean_units is False
    for profile in ("cpu", "smoke", "transformer"):
        cfg = load_config(REPO / "configs" / profile / "divebatch.yaml", check_data=False)
        assert cfg.fidelity.mean_units is False
    assert load_config(None, check_data=False).fidelity.mean_units is False
