"""DiveBatch on a transformer language model: text data, the model, exact per-sample norms by
torch.func, AdamW with the square-root lr rule, and the config rules tying them together.

Exactness of the per-sample norms is checked against a loop of single-sample backward passes
(``per_sample_gradients`` of tests/conftest.py), and the estimator inside the trainer's epoch
loop against the definition of Delta with lr 0 (the iterate never moves).
"""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from conftest import SHARED_DATA, needs_shared, per_sample_gradients
from torch import nn

from divebatch.config import ConfigError, load_config
from divebatch.data import DataError, build_data, make_loaders
from divebatch.data.text import TRAIN_FRACTION, encode, sequences, split_point
from divebatch.method import build_estimator, gradient_diversity
from divebatch.method.persample import FuncDiversity, per_sample_sq_norms
from divebatch.method.policies import build_policy
from divebatch.optimizers import build_optimizer, lr_factor
from divebatch.training import train, train_one_epoch
from divebatch.transformer import TransformerLM

TEXT = "To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n" * 8


def _text_overrides(path, *extra):
    return [
        f"data.path={path}",
        "data.name=text",
        "data.seq_len=16",
        "model.name=transformer_lm",
        "model.width=16",
        "model.depth=1",
        "model.heads=2",
        "method.diversity_estimator=exact_func",
        "device=cpu",
        "wandb.mode=disabled",
        "progress=false",
        *extra,
    ]


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "play.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


# ----------------------------------------------------------------------------- data


def test_encode_round_trips_and_sequences_are_next_character_pairs():
    ids, vocab = encode("abcabcd")
    assert vocab == ["a", "b", "c", "d"] and "".join(vocab[i] for i in ids) == "abcabcd"
    x, y = sequences(ids, 3)  # (7 - 1) // 3 = 2 samples
    assert x.tolist() == [[0, 1, 2], [0, 1, 2]] and y.tolist() == [[1, 2, 0], [1, 2, 3]]
    assert x.dtype == y.dtype == torch.int64


def test_text_bundle_splits_90_10_into_non_overlapping_sequences(text_file):
    cfg = load_config(None, _text_overrides(text_file))
    bundle = build_data(cfg.data)
    x, y, xt, yt = bundle.arrays
    n_chars, cut = len(TEXT), split_point(len(TEXT))
    assert cut == int(n_chars * TRAIN_FRACTION)
    assert len(x) == (cut - 1) // 16 and len(xt) == (n_chars - cut - 1) // 16
    ids, vocab = encode(TEXT)
    assert bundle.num_classes == len(vocab) and bundle.image_size == 16 and bundle.n_train == len(x)
    assert torch.equal(x.flatten(), torch.from_numpy(ids[: len(x) * 16]))  # consecutive, no overlap
    assert torch.equal(y[:, :-1], x[:, 1:]) and torch.equal(xt[0], torch.from_numpy(ids[cut : cut + 16]))
    loader, test = make_loaders(bundle, cfg.data, 8, torch.device("cpu"), torch.Generator().manual_seed(0))
    xb, yb = next(iter(loader))
    assert xb.dtype == torch.int64 and xb.shape == (8, 16)  # token ids, not normalised
    with pytest.raises(ConfigError, match="data.loader=torchvision for data.name=text"):  # no per-sample dataset
        make_loaders(bundle, cfg.data, 8, torch.device("cpu"), torch.Generator(), "torchvision")


def test_text_errors_name_key_and_value(tmp_path, text_file):
    short = tmp_path / "short.txt"
    short.write_text("tiny text", encoding="utf-8")
    with pytest.raises(DataError, match="data.seq_len=16"):
        build_data(load_config(None, _text_overrides(short)).data)
    latin = tmp_path / "latin1.txt"
    latin.write_bytes("caf\xe9 ".encode("latin-1") * 100)
    with pytest.raises(DataError, match="not UTF-8"):
        build_data(load_config(None, _text_overrides(latin)).data)
    with pytest.raises(ConfigError, match="data.path"):
        load_config(None, _text_overrides(tmp_path / "absent.txt"))
    with pytest.raises(ConfigError, match=r"model.name='resnet_small'.*transformer_lm"):
        load_config(None, _text_overrides(text_file, "model.name=resnet_small"))
    with pytest.raises(ConfigError, match="method.diversity_estimator='exact'.*exact_func"):
        load_config(None, _text_overrides(text_file, "method.diversity_estimator=exact"))
    with pytest.raises(ConfigError, match="model.heads=3.*divisor of model.width=16"):
        load_config(None, _text_overrides(text_file, "model.heads=3"))
    with pytest.raises(ConfigError, match="optim.name='adam'.*sgd | adamw"):
        load_config(None, _text_overrides(text_file, "optim.name=adam"))
    with pytest.raises(ConfigError, match="primary_metric.direction='down'"):
        load_config(None, _text_overrides(text_file, "primary_metric.direction=down"))


def test_a_too_short_text_counts_its_characters_in_words(tmp_path):
    one = tmp_path / "one.txt"
    one.write_text("a", encoding="utf-8")
    with pytest.raises(DataError, match=r"has 1 character: 0 for training .* more than data\.seq_len=16 characters"):
        build_data(load_config(None, _text_overrides(one)).data)


@needs_shared("tinyshakespeare.txt")
def test_shared_tinyshakespeare_sizes():
    cfg = load_config(None, _text_overrides(SHARED_DATA / "tinyshakespeare.txt", "data.seq_len=64"))
    x, y, xt, yt = build_data(cfg.data).arrays
    assert len(x) == 15685 and len(xt) == 1742  # 1,003,854 and 111,540 characters, T = 64
    assert int(max(x.max(), xt.max())) == 64  # 65 distinct characters


# ----------------------------------------------------------------------------- model


def test_transformer_is_causal_and_shaped_for_cross_entropy():
    torch.manual_seed(0)
    model = TransformerLM(vocab_size=11, context=8, width=16, depth=2, heads=4)
    idx = torch.randint(0, 11, (3, 8))
    out = model(idx)
    assert out.shape == (3, 11, 8)
    changed = idx.clone()
    changed[:, 5] = (changed[:, 5] + 1) % 11
    out2 = model(changed)
    assert torch.allclose(out[..., :5], out2[..., :5], atol=1e-6)  # positions before 5 do not see it
    assert not torch.allclose(out[..., 5:], out2[..., 5:])
    with pytest.raises(ValueError, match="exceeds the model's context"):
        model(torch.zeros(1, 9, dtype=torch.long))
    with pytest.raises(ValueError, match="model.heads=3"):
        TransformerLM(11, 8, width=16, heads=3)


# ----------------------------------------------------------------------------- per-sample norms


def test_func_norms_equal_a_per_sample_loop():
    torch.manual_seed(1)
    model = TransformerLM(vocab_size=13, context=10, width=16, depth=2, heads=2)
    x, y = torch.randint(0, 13, (7, 10)), torch.randint(0, 13, (7, 10))
    loop = per_sample_gradients(model, F.cross_entropy, x, y).pow(2).sum(1)
    for chunk in (None, 3):
        fast = per_sample_sq_norms(model, x, y, chunk_size=chunk)
        assert fast.shape == (7,)
        torch.testing.assert_close(fast, loop, rtol=1e-4, atol=1e-8)


def test_func_estimator_in_the_epoch_loop_is_the_exact_delta_at_lr_zero():
    """Two steps of 6 samples, the second split into micro-batches of 4 + 2: with lr 0 the epoch
    estimate is the exact Delta of the 12 samples (definition, per-sample loop)."""
    torch.manual_seed(2)
    model = TransformerLM(vocab_size=9, context=6, width=8, depth=1, heads=2)
    x, y = torch.randint(0, 9, (12, 6)), torch.randint(0, 9, (12, 6))
    loader = [(x[:6], y[:6]), (x[6:], y[6:])]
    est = build_estimator("exact_func")
    assert isinstance(est, FuncDiversity)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    train_one_epoch(model, loader, opt, nn.CrossEntropyLoss(), max_micro_batch=4, estimator=est, progress=False)
    exact = gradient_diversity(per_sample_gradients(model, F.cross_entropy, x, y).double())
    assert est.samples == 12
    assert est.value() == pytest.approx(float(exact), rel=1e-4)


def test_func_estimator_refuses_batchnorm_and_needs_observe():
    est = FuncDiversity()
    with pytest.raises(ValueError, match="exact_func.*BatchNorm1d"):
        est.prepare(nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3)))
    model = nn.Linear(3, 2)
    with pytest.raises(RuntimeError, match="observe"):
        est.backward(model, model(torch.ones(1, 3)).sum(), 1)


# ----------------------------------------------------------------------------- optimizer and lr rule


def test_adamw_and_square_root_rescaling():
    cfg = load_config(
        None,
        [
            "optim.name=adamw",
            "optim.lr=0.004",
            "optim.weight_decay=0.01",
            "method.name=adabatch",
            "method.lr_rescale=true",
            "method.lr_scaling=sqrt",
            "method.resize_freq=1",
            "method.initial_batch_size=16",
            "method.max_batch_size=64",
        ],
    )
    opt = build_optimizer(cfg.optim, nn.Linear(2, 2).parameters())
    assert isinstance(opt, torch.optim.AdamW) and opt.defaults["betas"] == (0.9, 0.999)
    policy = build_policy(cfg.method, n_train=100)
    assert policy.step(0) == pytest.approx(math.sqrt(2))  # 16 -> 32: lr x sqrt(2)
    assert lr_factor(4.0, "linear") == 4.0 and lr_factor(4.0, "sqrt") == 2.0
    with pytest.raises(KeyError, match="method.lr_scaling='cube'"):
        lr_factor(2.0, "cube")


# ----------------------------------------------------------------------------- end to end


def test_train_transformer_divebatch_end_to_end(text_file, tmp_path):
    cfg = load_config(
        None,
        _text_overrides(
            text_file,
            "method.name=divebatch",
            "method.resize_freq=1",
            "method.initial_batch_size=4",
            "method.max_batch_size=16",
            "method.delta=0.5",
            "epochs=2",
            "optim.name=adamw",
            "optim.lr=0.003",
            "primary_metric.column=val_loss",
            "primary_metric.direction=lower",
            "primary_metric.within=0.02",
            f"out_dir={tmp_path / 'run'}",
        ),
    )
    summary = train(cfg)
    m = pd.read_csv(tmp_path / "run" / "metrics.csv")
    assert summary["finished"] and len(m) == 2
    assert m["grad_diversity"].notna().all() and (m["grad_diversity"] * m["samples_seen"].iloc[0] >= 1).all()
    assert ((m["val_acc"] >= 0) & (m["val_acc"] <= 100) & (m["train_acc"] <= 100)).all()  # per character
    assert m["val_loss"].iloc[-1] < math.log(len(set(TEXT)))  # better than uniform over the vocabulary


def test_fixed_point_on_the_transformer_is_the_brute_force_delta(text_file, tmp_path):
    """fixed_point on a model BackPACK does not cover takes torch.func norms: equal to Delta(w) from a
    per-sample loop at the same weights (all n samples), and it drives a training run."""
    from divebatch.data import fixed_subset_indices, reference_batches

    cfg = load_config(
        None, _text_overrides(text_file, "method.diversity_estimator=fixed_point", "method.fixed_point_samples=null")
    )
    bundle = build_data(cfg.data)
    torch.manual_seed(0)
    model = TransformerLM(bundle.num_classes, 16, width=16, depth=1, heads=2)
    est = build_estimator("fixed_point", fixed_point_samples=None, backpack=False)
    model = est.prepare(model)
    reference = reference_batches(bundle, fixed_subset_indices(bundle.n_train, None, 1), 5, torch.device("cpu"))
    est.attach(reference, bundle.n_train)
    est.measure(model)
    x, y = map(torch.cat, zip(*reference()))
    grads = []
    for i in range(len(x)):
        model.zero_grad()
        F.cross_entropy(model(x[i : i + 1]), y[i : i + 1], reduction="sum").backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]).double())
    g = torch.stack(grads)
    assert len(g) == bundle.n_train
    assert est.value() == pytest.approx(float(g.pow(2).sum() / g.sum(0).pow(2).sum()), rel=1e-5)
    run = tmp_path / "fp"
    summary = train(
        load_config(
            None,
            _text_overrides(
                text_file,
                "method.name=divebatch",
                "method.diversity_estimator=fixed_point",
                "method.resize_freq=1",
                "method.initial_batch_size=4",
                "method.max_batch_size=16",
                "epochs=2",
                f"out_dir={run}",
            ),
        )
    )
    assert summary["finished"] and pd.read_csv(run / "metrics.csv")["grad_diversity"].notna().all()
