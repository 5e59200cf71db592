"""The shadow runs' decomposition of the epoch estimator's excess into BatchNorm mode, augmentation and
moving iterates (divebatch.shadow, ShadowRecorder.bn_decomposition; docs/diversity.md).

Conventions: (i) eval-mode BatchNorm, no augmentation (fixed_point); (ii) the authors' train-mode
convention at frozen weights (``fixed_point_sums(..., bn_mode="train")``: train-mode forward per
BatchNorm batch, BackPACK's first-order pieces with BatchNorm switched to eval around the backward,
pytorch-cifar@7289184 src/train_utils.py:175-178), no augmentation; (iii) (ii) with the training
augmentation; (iv) the authors' epoch estimator. (ii) is checked against an independent computation
of the authors' pieces (test_diversity's ``_mixed_mode_pieces``, no BackPACK) and against the
authors' estimator itself on a fresh copy of the model per batch.
"""

from __future__ import annotations

import copy

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from conftest import write_npz
from test_diversity import _BNNet, _data, _mixed_mode_pieces
from torch import nn

from divebatch.config import load_config
from divebatch.data import build_data
from divebatch.method import ExactDiversity
from divebatch.method.controller import accumulate_step
from divebatch.method.diversity import sq_norm
from divebatch.method.fixed_point import fixed_point_sums
from divebatch.shadow import ShadowRecorder, train_mode_batches


def _sums(model, x, y, chunk, bn_mode):
    sq, grads, k = fixed_point_sums(model, list(zip(x.split(chunk), y.split(chunk))), bn_mode=bn_mode)
    return float(sq), float(sq_norm(grads)), k


def test_train_mode_leaves_weights_batchnorm_statistics_grads_and_mode_bit_identical():
    """(ii) moves nothing: parameters, running statistics and num_batches_tracked (the state_dict, bit for
    bit), p.grad and the training flag are as before."""
    torch.manual_seed(0)
    model = _BNNet()
    x, y = _data(20)
    for p in model.parameters():
        p.grad = torch.full_like(p, 3.0)
    for mode in (True, False):
        model.train(mode)
        before = copy.deepcopy(model.state_dict())
        _sums(model, x, y, 8, "train")
        after = model.state_dict()
        assert all(torch.equal(before[k], after[k]) for k in before), [
            k for k in before if not torch.equal(before[k], after[k])
        ]
        assert all(torch.equal(p.grad, torch.full_like(p, 3.0)) for p in model.parameters())
        assert model.training is mode


def test_train_mode_is_the_authors_pieces_per_batchnorm_batch():
    """(ii) over batches of 8 = the sum over batches of the authors' mixed-mode pieces, computed without
    BackPACK on a fresh copy of the model per batch (every batch sees the statistics at the call), and of
    the authors' own estimator (ExactDiversity, one step at lr 0) on a fresh copy; it is not eval mode."""
    torch.manual_seed(0)
    model = _BNNet().double()
    x, y = _data(23, dtype=torch.float64)  # batches 8 + 8 + 7
    s_ref, a_ref, s_authors, a_authors = 0.0, None, 0.0, None
    for xb, yb in zip(x.split(8), y.split(8)):
        pieces, grads = _mixed_mode_pieces(copy.deepcopy(model), xb, yb)  # mean loss: piece_i * b is sum units
        s_ref += float(sum(v.flatten(1).pow(2).sum() for v in pieces.values())) * len(yb) ** 2
        g = torch.cat([v.reshape(-1) for v in grads.values()]) * len(yb)
        a_ref = g if a_ref is None else a_ref + g
        est, fresh = ExactDiversity(), copy.deepcopy(model).train()
        with est.measuring(fresh):
            accumulate_step(fresh, xb, yb, F.cross_entropy, est, max_micro_batch=64)
        s_authors += float(est.sq_norm_sum)
        ga = torch.cat([t.reshape(-1) for t in est.grad_sum])
        a_authors = ga if a_authors is None else a_authors + ga
    s, a2, k = _sums(model, x, y, 8, "train")
    assert k == 23
    assert s == pytest.approx(s_ref, rel=1e-8) and a2 == pytest.approx(float(a_ref.pow(2).sum()), rel=1e-8)
    assert s == pytest.approx(s_authors, rel=1e-8) and a2 == pytest.approx(float(a_authors.pow(2).sum()), rel=1e-8)
    s_eval, a2_eval, _ = _sums(model, x, y, 8, "eval")
    assert abs(s / a2 - s_eval / a2_eval) > 0.01 * (s_eval / a2_eval)  # the BatchNorm mode matters here


@pytest.mark.parametrize("chunks", [(47, 10), (5, 47)])
def test_without_batchnorm_train_mode_equals_eval_mode(chunks):
    """A linear model and a conv net without BatchNorm: (ii) = (i) whatever the batches."""
    torch.manual_seed(1)
    for model in (
        nn.Sequential(nn.Flatten(), nn.Linear(48, 5)),
        nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(64, 5)),
    ):
        x, y = _data(47)
        s_tr, a_tr, _ = _sums(model, x, y, chunks[0], "train")
        s_ev, a_ev, _ = _sums(model, x, y, chunks[1], "eval")
        assert s_tr == pytest.approx(s_ev, rel=1e-5) and a_tr == pytest.approx(a_ev, rel=1e-5)


def test_train_mode_is_refused_for_func_norms_on_a_batchnorm_model():
    with pytest.raises(ValueError, match="bn_mode='train' with per_sample='func'.*BatchNorm2d"):
        fixed_point_sums(_BNNet(), [_data(4)], per_sample="func", bn_mode="train")
    with pytest.raises(ValueError, match="bn_mode='batch'; allowed: eval | train"):
        fixed_point_sums(_BNNet(), [_data(4)], bn_mode="batch")


# ----------------------------------------------------------------------------- the recorder


class _SmallBN(nn.Module):
    """Conv + BatchNorm on 32x32 RGB (the npz fixture's images)."""

    def __init__(self, classes: int = 4):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 4, 3, stride=4, padding=1), nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 8 * 8, classes)

    def forward(self, x):
        return self.fc(F.relu(self.bn(self.conv(x))).flatten(1))


def _recorder(tmp_path, augment: bool):
    cfg = load_config(
        None, [f"data.path={write_npz(tmp_path / 'd.npz', n_train=48)}", "data.name=npz", f"data.augment={augment}"]
    )
    bundle = build_data(cfg.data)
    return ShadowRecorder(cfg.shadow, None, bundle, torch.device("cpu"), 3, 1, 512, augmented=augment)


@pytest.mark.parametrize("augment", [False, True])
def test_augmentation_off_gives_iii_equal_to_ii_and_on_changes_it(tmp_path, augment):
    """(iii) = (ii) exactly with the run's augmentation off; with it on, (iii) differs, its draws repeat
    on every call, and the global RNG is untouched. The model's state_dict stays bit-identical."""
    torch.manual_seed(0)
    rec = _recorder(tmp_path, augment)
    model = _SmallBN()
    before, rng = copy.deepcopy(model.state_dict()), torch.get_rng_state()
    row = rec.bn_decomposition(model, epoch=2, bn_batch=16)
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(before[k], model.state_dict()[k]) for k in before)
    assert row["bn_batch"] == 16
    same = [row[f"train_bn_aug{c}"] == row[f"train_bn{c}"] for c in ("_mean_sq_norm", "_mean_grad_sq")]
    assert all(same) is (not augment)
    assert (row["n_delta_train_bn_aug"] == row["n_delta_train_bn"]) is (not augment)
    assert rec.bn_decomposition(model, epoch=2, bn_batch=16)["n_delta_train_bn_aug"] == row["n_delta_train_bn_aug"]


def test_train_mode_batches_apply_the_training_augmentation_only_when_asked(tmp_path):
    rec = _recorder(tmp_path, True)
    order = torch.arange(48)
    plain = torch.cat([x for x, _ in train_mode_batches(rec.bundle, order, 16, torch.device("cpu"), False, 5)()])
    aug = train_mode_batches(rec.bundle, order, 16, torch.device("cpu"), True, 5)
    a1, a2 = (torch.cat([x for x, _ in aug()]) for _ in range(2))
    assert torch.equal(a1, a2) and not torch.equal(a1, plain)
    assert [
        len(y) for _, y in train_mode_batches(rec.bundle, torch.arange(40), 16, torch.device("cpu"), True, 5)()
    ] == [16, 16, 8]


# ----------------------------------------------------------------------------- through the trainer


def test_shadow_at_lr_zero_without_batchnorm_all_four_conventions_agree(tiny_config):
    """Linear model, lr 0, no augmentation (digits): (i) = (ii) = (iii) = (iv), factor by factor, so the
    decomposition's factors are all 1 when nothing they measure is present."""
    from divebatch.training import train

    cfg = tiny_config(
        "method.name=sgd",
        "optim.lr=0.0",
        "shadow.enabled=true",
        "method.resize_freq=1",
        "epochs=1",
        "method.fixed_point_samples=null",
        "shadow.chunk=64",
        "shadow.subset_sizes=[128]",
        "shadow.draws=5",
    )
    train(cfg)
    row = pd.read_csv(f"{cfg.out_dir}/shadow.csv").iloc[0]
    assert row.bn_batch == 64
    for conv in ("fixed_point", "train_bn", "train_bn_aug"):
        assert row[f"{conv}_mean_sq_norm"] == pytest.approx(row.exact_mean_sq_norm, rel=1e-5), conv
        assert row[f"{conv}_mean_grad_sq"] == pytest.approx(row.exact_mean_grad_sq, rel=1e-5), conv
    assert row.n_delta_train_bn == pytest.approx(row.n_delta_exact, rel=1e-5)
    assert row.n_delta_train_bn_aug == pytest.approx(row.n_delta_exact, rel=1e-5)


def test_shadow_with_batchnorm_and_augmentation_leaves_the_training_unchanged(tiny_config, tmp_path):
    """resnet_small on 32x32 images with augmentation: the shadow run (its train-mode passes, its own
    augmentation draws) trains and evaluates exactly as the plain run; (ii) differs from (i)."""
    from divebatch.training import train

    common = (
        "method.name=sgd",
        f"data.path={write_npz(tmp_path / 'd.npz', n_train=64, n_test=16)}",
        "data.name=npz",
        "data.augment=true",
        "model.name=resnet_small",
        "model.width=2",
        "method.resize_freq=1",
        "epochs=2",
        "method.initial_batch_size=16",
        "shadow.chunk=32",
        "shadow.subset_sizes=[32]",
        "shadow.draws=5",
        "method.fixed_point_samples=48",
    )
    plain = tiny_config(*common, out="plain")
    shadow = tiny_config(*common, "shadow.enabled=true", out="shadow")
    train(plain)
    train(shadow)
    a, b = (pd.read_csv(f"{c.out_dir}/metrics.csv") for c in (plain, shadow))
    cols = ["train_loss", "train_acc", "val_loss", "val_acc", "batch_size"]
    pd.testing.assert_frame_equal(a[cols], b[cols], rtol=1e-5)
    rows = pd.read_csv(f"{shadow.out_dir}/shadow.csv")
    assert len(rows) == 2 and (rows.bn_batch == 16).all()
    # numerators (k = 48 < n: n*Delta itself may be inf when the subset does not resolve the mean gradient)
    assert (rows.train_bn_mean_sq_norm != rows.fixed_point_mean_sq_norm).all()
    assert (rows.train_bn_aug_mean_sq_norm != rows.train_bn_mean_sq_norm).all()


# ----------------------------------------------------------------------------- the transformer (no BatchNorm)

TEXT = "To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n" * 8


@pytest.mark.parametrize("lr", [0.0, 0.1])
def test_shadow_runs_on_the_transformer(tmp_path, lr):
    """The shadow on a model BackPACK does not cover (torch.func norms for the epoch estimator, the fixed
    point and the whole-set pass). At lr 0 every estimate is Delta(w), factor by factor (the numerator and
    denominator of every convention are in the same units: per-sequence mean loss); at lr 0.1 the
    conventions (i)-(iii) still coincide (no BatchNorm, dropout or augmentation) and only (iv) moves."""
    from divebatch.training import train

    (tmp_path / "play.txt").write_text(TEXT, encoding="utf-8")
    cfg = load_config(
        None,
        [
            f"data.path={tmp_path / 'play.txt'}",
            "data.name=text",
            "data.seq_len=16",
            "model.name=transformer_lm",
            "model.width=16",
            "model.depth=1",
            "model.heads=2",
            "method.name=sgd",
            "device=cpu",
            "wandb.mode=disabled",
            "progress=false",
            "shadow.enabled=true",
            "method.resize_freq=1",
            "epochs=1",
            "method.initial_batch_size=4",
            "shadow.chunk=4",
            "shadow.subset_sizes=[8]",
            "shadow.draws=5",
            f"optim.lr={lr}",
            f"out_dir={tmp_path / 'run'}",
        ],
    )
    train(cfg)
    row = pd.read_csv(tmp_path / "run" / "shadow.csv").iloc[0]
    for conv in ("train_bn", "train_bn_aug"):
        assert row[f"{conv}_mean_sq_norm"] == pytest.approx(row.fixed_point_mean_sq_norm, rel=1e-5), conv
        assert row[f"{conv}_mean_grad_sq"] == pytest.approx(row.fixed_point_mean_grad_sq, rel=1e-5), conv
    assert row.fixed_point_mean_sq_norm == pytest.approx(row.full_mean_sq_norm, rel=1e-5)
    if lr == 0:
        assert row.exact_mean_sq_norm == pytest.approx(row.full_mean_sq_norm, rel=1e-5)
        assert row.exact_mean_grad_sq == pytest.approx(row.full_mean_grad_sq, rel=1e-5)
        assert row.n_delta_exact == pytest.approx(row.n_delta_full, rel=1e-5)
    else:
        assert row.n_delta_exact > 1.5 * row.n_delta_full  # moving iterates (a nonzero lr) change the epoch estimate


# ----------------------------------------------------------------------------- fixed_point_train


def test_rebatch_keeps_the_order_and_cuts_batches_of_the_size():
    from divebatch.method.fixed_point import rebatch

    x = torch.arange(23.0).view(23, 1)
    y = torch.arange(23)
    out = list(rebatch(zip(x.split(10), y.split(10)), 8))
    assert [len(b) for _, b in out] == [8, 8, 7]
    assert torch.equal(torch.cat([b for _, b in out]), y) and torch.equal(torch.cat([a for a, _ in out]), x)
    with pytest.raises(ValueError, match="rebatch size=0; allowed: an integer >= 1"):
        list(rebatch([], 0))


def test_fixed_point_train_measures_in_batchnorm_batches_of_the_observed_micro_batch():
    """fixed_point_train: the estimate is subset_n_diversity of fixed_point_sums(bn_mode="train") over the
    reference regrouped into batches of the largest observed micro-batch; the model is unchanged; without
    BatchNorm it equals fixed_point."""
    from divebatch.method import FixedPointDiversity, build_estimator
    from divebatch.method.fixed_point import subset_n_diversity

    torch.manual_seed(0)
    x, y = _data(23)
    for make, differs in ((_BNNet, True), (lambda: nn.Sequential(nn.Flatten(), nn.Linear(48, 5)), False)):
        model = make()
        est = build_estimator("fixed_point_train", fixed_point_samples=None)
        est.attach(lambda: list(zip(x.split(10), y.split(10))), 23)
        est.reset()
        for b in (8, 8, 7):  # the measured epoch's micro-batches
            est.observe(x[:b], y[:b])
        before = copy.deepcopy(model.state_dict())
        est.measure(model)
        assert all(torch.equal(before[k], model.state_dict()[k]) for k in before)
        s, a2, k = _sums(model, x, y, 8, "train")
        assert est.value() == pytest.approx(subset_n_diversity(s, a2, k, 23) / 23, rel=1e-6)
        plain = FixedPointDiversity(None)
        plain.attach(lambda: list(zip(x.split(10), y.split(10))), 23)
        plain.measure(model)
        assert (abs(est.value() / plain.value() - 1) > 1e-3) is differs


def test_divebatch_runs_with_fixed_point_train(tiny_config):
    """Through the trainer (resnet_small, BatchNorm): the logged diversity differs from fixed_point's at
    the same first decision (same weights: the epochs before it train identically)."""
    from divebatch.training import train

    common = (
        "model.name=resnet_small",
        "model.width=2",
        "method.resize_freq=1",
        "epochs=1",
        "data.train_subset=200",
        "method.initial_batch_size=50",
        "method.fixed_point_samples=null",
    )
    runs = {}
    for name in ("fixed_point", "fixed_point_train"):
        cfg = tiny_config(*common, f"method.diversity_estimator={name}", out=name)
        train(cfg)
        runs[name] = pd.read_csv(f"{cfg.out_dir}/metrics.csv").iloc[0]
    assert runs["fixed_point"].train_loss == runs["fixed_point_train"].train_loss
    a, b = runs["fixed_point"].grad_diversity, runs["fixed_point_train"].grad_diversity
    assert a > 0 and b > 0 and abs(b / a - 1) > 1e-3
