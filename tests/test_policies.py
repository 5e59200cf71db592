"""Batch-size policies (docs/protocol.md "Batch size policies"): worked numbers, resize epochs, lr rescaling."""

from __future__ import annotations

import math

import pytest
import torch
from omegaconf import OmegaConf

from divebatch.config import MethodConfig
from divebatch.method.policies import (
    POLICIES,
    AdaBatch,
    DiveBatch,
    FixedBatchSize,
    adabatch_batch_size,
    build_policy,
    divebatch_batch_size,
    rescale_lr,
)

# ----------------------------------------------------------------------------- DiveBatch rule


@pytest.mark.parametrize(
    "m, diversity, n, delta, max_bs, expected",
    [
        (128, 0.05, 50_000, 0.1, 2048, 250),  # 0.1 * 0.05 * 50000 = 250: the rule itself
        (32, 0.125, 1001, 0.5, 2048, 62),  # 0.5 * 0.125 * 1001 = 62.5625: int() truncates, not rounds
        (32, 0.125, 1012, 0.5, 2048, 63),  # 63.25 -> 63
        (128, 0.01, 50_000, 0.1, 2048, 128),  # 50 < m: never shrinks
        (128, 1.0, 50_000, 0.1, 2048, 2048),  # 5000 > max: clamped
        (300, 0.5, 1000, 1.0, 512, 500),  # in (m, max): taken as is
    ],
)
def test_divebatch_rule_worked_numbers(m, diversity, n, delta, max_bs, expected):
    got = divebatch_batch_size(m, diversity, n, delta, max_bs)
    assert got == expected and isinstance(got, int)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_divebatch_nonfinite_diversity_jumps_to_max(bad):
    assert divebatch_batch_size(128, bad, 50_000, 0.1, 2048) == 2048


def test_divebatch_never_shrinks_and_never_exceeds_max_on_a_grid():
    for m in (1, 16, 100, 512):
        for diversity in (0.0, 1e-6, 1e-3, 0.02, 1.0, 50.0):
            got = divebatch_batch_size(m, diversity, 10_000, 0.1, 512)
            assert m <= got <= 512


# ----------------------------------------------------------------------------- AdaBatch rule


@pytest.mark.parametrize(
    "m, max_bs, expected", [(128, 2048, 256), (1536, 2048, 2048), (2048, 2048, 2048), (100, 150, 150)]
)
def test_adabatch_doubles_up_to_the_cap(m, max_bs, expected):
    assert adabatch_batch_size(m, max_bs) == expected


# ----------------------------------------------------------------------------- policy objects


def test_registry_maps_each_method_name_to_its_policy():
    # the names equal the config's choices: tests/test_config.py::test_each_choice_list_is_its_registrys_keys
    assert POLICIES["sgd"] is FixedBatchSize and POLICIES["adabatch"] is AdaBatch and POLICIES["divebatch"] is DiveBatch


def test_resize_epochs_are_those_with_e_plus_1_divisible_by_resize_freq_and_below_max():
    p = AdaBatch(16, 64, resize_freq=3, n_train=1000)
    decisions = {}
    for epoch in range(12):
        was = p.batch_size
        resize = p.is_resize_epoch(epoch)
        p.step(epoch)
        decisions[epoch] = (resize, was, p.batch_size)
    resized = [e for e, (r, _, _) in decisions.items() if r]
    assert resized == [2, 5]  # (e+1) % 3 == 0; at e=8 the batch size is already at the max
    assert decisions[2][1:] == (16, 32) and decisions[5][1:] == (32, 64)
    assert all(was == now for e, (_, was, now) in decisions.items() if e not in (2, 5))
    assert not p.is_resize_epoch(8)


def test_sgd_keeps_its_batch_size_and_lr():
    p = FixedBatchSize(128, 2048, resize_freq=1, n_train=1000, lr_rescale=True)
    for epoch in range(5):
        assert not p.is_resize_epoch(epoch) and not p.measures_diversity(epoch)
        assert p.step(epoch, 123.0) == 1.0
    assert p.batch_size == 128


def test_adabatch_lr_factor_is_m_new_over_m_only_with_rescaling():
    on = AdaBatch(16, 48, resize_freq=1, n_train=1000, lr_rescale=True)
    off = AdaBatch(16, 48, resize_freq=1, n_train=1000, lr_rescale=False)
    assert [on.step(e) for e in range(4)] == [2.0, 1.5, 1.0, 1.0]  # 16 -> 32 -> 48 (cap) -> 48
    assert [off.step(e) for e in range(4)] == [1.0, 1.0, 1.0, 1.0]
    assert on.batch_size == off.batch_size == 48
    assert not on.measures_diversity(0)  # AdaBatch never needs gradient diversity


def test_divebatch_measures_only_in_resize_epochs_and_follows_the_rule():
    n, delta = 1000, 0.5
    p = DiveBatch(16, 400, resize_freq=2, n_train=n, delta=delta, lr_rescale=True)
    assert [p.measures_diversity(e) for e in range(4)] == [False, True, False, True]
    assert p.step(0, 10.0) == 1.0 and p.batch_size == 16  # not a resize epoch: the value is ignored
    factor = p.step(1, 0.1)  # 0.5 * 0.1 * 1000 = 50
    assert p.batch_size == 50 and factor == pytest.approx(50 / 16)
    assert p.step(3, 0.01) == 1.0 and p.batch_size == 50  # 5 < 50: never shrinks
    assert p.step(5, math.nan) == pytest.approx(400 / 50) and p.batch_size == 400
    assert not p.measures_diversity(7) and not p.is_resize_epoch(7)  # at the max: no more measurements


def test_divebatch_needs_a_diversity_in_a_resize_epoch():
    p = DiveBatch(16, 400, resize_freq=1, n_train=100)
    with pytest.raises(ValueError, match="diversity"):
        p.step(0, None)


def test_policy_state_round_trip():
    p = AdaBatch(16, 256, resize_freq=1, n_train=10)
    p.step(0)
    q = AdaBatch(16, 256, resize_freq=1, n_train=10)
    q.load_state_dict(p.state_dict())
    assert q.batch_size == p.batch_size == 32


def test_build_policy_from_method_config():
    cfg = OmegaConf.structured(
        MethodConfig(
            name="divebatch", initial_batch_size=64, max_batch_size=1024, resize_freq=5, delta=0.02, lr_rescale=True
        )
    )
    p = build_policy(cfg, n_train=5000)
    assert isinstance(p, DiveBatch)
    assert (p.batch_size, p.max_batch_size, p.resize_freq, p.n_train, p.delta, p.lr_rescale) == (
        64,
        1024,
        5,
        5000,
        0.02,
        True,
    )
    cfg = OmegaConf.create({**OmegaConf.to_container(cfg), "name": "lars"})  # the schema itself refuses it
    with pytest.raises(KeyError, match="lars.*allowed.*divebatch"):
        build_policy(cfg, 10)


# ----------------------------------------------------------------------------- lr rescaling


def _two_group_optimizer(lrs=(0.1, 0.02)):
    params = [torch.nn.Parameter(torch.zeros(2)) for _ in lrs]
    return torch.optim.SGD([{"params": [p], "lr": lr} for p, lr in zip(params, lrs)], lr=lrs[0], momentum=0.9)


def test_rescale_lr_multiplies_every_param_group():
    opt = _two_group_optimizer()
    rescale_lr(opt, 2.5)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.25, 0.05])


@pytest.mark.parametrize("schedule", ["cosine", "multistep"])
def test_rescale_persists_through_torch_schedulers(schedule):
    """lr(t) = schedule(t) * m(t) / m(0) (docs/protocol.md): the trainer's order is scheduler.step(), then
    policy.step() and rescale_lr(); torch's schedulers update ``group['lr']`` multiplicatively."""
    epochs, base = (10, (0.1, 0.02))
    opt = _two_group_optimizer(base)
    if schedule == "cosine":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
        closed = lambda t, b: b * (1 + math.cos(math.pi * t / epochs)) / 2  # noqa: E731
    else:
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[3, 7], gamma=0.2)
        closed = lambda t, b: b * 0.2 ** sum(t >= ms for ms in (3, 7))  # noqa: E731
    policy = AdaBatch(8, 64, resize_freq=2, n_train=1000, lr_rescale=True)
    m0, checked = policy.batch_size, 0
    for epoch in range(epochs):
        m = policy.batch_size
        for group, b in zip(opt.param_groups, base):
            assert group["lr"] == pytest.approx(closed(epoch, b) * m / m0, rel=1e-12, abs=1e-15)
            checked += 1
        opt.step()  # no gradients: a no-op that keeps torch's call-order check quiet
        sched.step()
        rescale_lr(opt, policy.step(epoch))
    assert policy.batch_size == 64 and checked == 2 * epochs  # 8 -> 16 -> 32 -> 64 happened on the way
