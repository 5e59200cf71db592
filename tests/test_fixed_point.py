"""The fixed-point estimator (``method.diversity_estimator=fixed_point``): Delta(w) at one set of weights,
over the training set or a fixed random subset, BatchNorm in eval mode, no augmentation.

Sources: Yin et al. (2018) Def. 1 for Delta; docs/protocol.md for n * Delta = 1 + tr(Sigma)/||G||^2;
finite-population sampling (Cochran 1977, Thm. 2.2) for the subset correction; docs/diversity.md,
"The fixed-point estimator".
"""

from __future__ import annotations

import copy
import math

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from conftest import per_sample_gradients
from torch import nn

from divebatch.config import ConfigError
from divebatch.data import build_data, fixed_subset_indices, reference_batches
from divebatch.method import FixedPointDiversity, build_estimator, gradient_diversity
from divebatch.method.fixed_point import subset_mean_grad_sq, subset_n_diversity

N_CLASSES = 5


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


def _bn():
    """Conv + BatchNorm; the running statistics are moved off their defaults by a train-mode forward."""
    m = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, N_CLASSES)
    )
    with torch.no_grad():
        m.train()(torch.randn(64, 3, 4, 4) * 2 + 1)
    return m


def _data(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 4, 4, generator=g), torch.randint(0, N_CLASSES, (n,), generator=g)


def _brute_grads(model, x, y):
    """Per-sample gradients by a loop of single-sample backward passes, float64, eval mode."""
    ref = copy.deepcopy(model).double().eval()
    return per_sample_gradients(ref, F.cross_entropy, x.double(), y)


def _measure(model, x, y, n, chunk):
    est = FixedPointDiversity(None)
    est.attach(lambda: list(zip(x.split(chunk), y.split(chunk))), n)
    est.measure(model)
    return est


@pytest.mark.parametrize("make_model", [_linear, _conv, _bn], ids=["linear", "conv", "batchnorm"])
@pytest.mark.parametrize("chunk", [47, 10])
def test_whole_set_equals_brute_force_delta_at_the_same_weights(make_model, chunk):
    """k = n: Delta_hat = sum_i ||g_i||^2 / ||sum_i g_i||^2 of the eval-mode network (rel. 1e-5)."""
    torch.manual_seed(0)
    model = make_model()
    x, y = _data(47)
    expected = gradient_diversity(_brute_grads(model, x, y)).item()
    est = _measure(model.train(), x, y, 47, chunk)
    assert est.value() == pytest.approx(expected, rel=1e-5)
    assert est.subset_samples == 47
    assert model.training  # mode restored


def test_measure_changes_neither_weights_nor_batchnorm_statistics_nor_grads():
    torch.manual_seed(1)
    model = _bn()
    x, y = _data(20)
    for p in model.parameters():
        p.grad = torch.full_like(p, 3.0)
    before = copy.deepcopy(model.state_dict())
    _measure(model, x, y, 20, 8)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(torch.equal(p.grad, torch.full_like(p, 3.0)) for p in model.parameters())


def test_subset_estimate_is_the_stated_formula_on_brute_force_gradients():
    """k < n: the estimator returns subset_n_diversity(S_K, ||A_K||^2, k, n) / n on the subset's own
    brute-force gradients (no other approximation)."""
    torch.manual_seed(2)
    model = _conv()
    x, y = _data(60)
    idx = fixed_subset_indices(60, 25, seed=3)
    g = _brute_grads(model, x[idx], y[idx])
    expected = subset_n_diversity(g.pow(2).sum().item(), g.sum(0).pow(2).sum().item(), 25, 60) / 60
    est = _measure(model, x[idx], y[idx], 60, 9)
    assert est.value() == pytest.approx(expected, rel=1e-5)


def test_subset_formula_with_k_equal_n_is_the_definition():
    g = torch.randn(30, 7, generator=torch.Generator().manual_seed(4), dtype=torch.float64) + 0.3
    got = subset_n_diversity(g.pow(2).sum().item(), g.sum(0).pow(2).sum().item(), 30, 30)
    assert got == pytest.approx(30 * gradient_diversity(g).item(), rel=1e-12)


@pytest.mark.parametrize("k", [2, 5, 20])
def test_subset_mean_gradient_norm_is_unbiased_over_draws(k):
    """E[(Q - c P) / (1 - c)] = ||G||^2 and E[P] = tr(Sigma) + ||G||^2 over draws without replacement
    (Monte Carlo, 40,000 draws; tolerance 4 standard errors)."""
    n, draws = 40, 40_000
    gen = torch.Generator().manual_seed(5)
    g = torch.randn(n, 6, generator=gen, dtype=torch.float64) * 2 + torch.randn(6, generator=gen, dtype=torch.float64)
    G2 = g.mean(0).pow(2).sum().item()
    idx = torch.argsort(torch.rand(draws, n, generator=gen), dim=1)[:, :k]
    sub = g[idx]  # (draws, k, p)
    p = sub.pow(2).sum((1, 2)) / k
    q = sub.mean(1).pow(2).sum(1)
    g2_hat = subset_mean_grad_sq(p, q, k, n)
    assert abs(g2_hat.mean().item() - G2) < 4 * g2_hat.std().item() / math.sqrt(draws)
    mean_sq = g.pow(2).sum(1).mean().item()
    assert abs(p.mean().item() - mean_sq) < 4 * p.std().item() / math.sqrt(draws)


def test_subset_formula_gives_inf_when_the_mean_gradient_is_not_resolved():
    # two opposite gradients: ||A_K||^2 = 0 < c * P
    assert subset_n_diversity(2.0, 0.0, 2, 10) == math.inf


@pytest.mark.parametrize("k, n", [(1, 10), (11, 10)])
def test_subset_formula_refuses_impossible_sizes(k, n):
    with pytest.raises(ValueError, match="allowed"):
        subset_n_diversity(1.0, 1.0, k, n)


def test_fixed_subset_is_fixed_sorted_and_of_size_k():
    a, b = fixed_subset_indices(100, 30, 7), fixed_subset_indices(100, 30, 7)
    assert torch.equal(a, b) and len(a.unique()) == 30 and torch.equal(a, a.sort().values)
    assert not torch.equal(a, fixed_subset_indices(100, 30, 8))
    assert torch.equal(fixed_subset_indices(100, None, 7), torch.arange(100))
    assert torch.equal(fixed_subset_indices(100, 500, 7), torch.arange(100))


def test_reference_batches_are_the_stored_samples_without_augmentation():
    """The device path and the DataLoader path give the same normalised, unaugmented samples."""
    from omegaconf import OmegaConf

    from divebatch.config import DataConfig

    bundle = build_data(OmegaConf.structured(DataConfig(name="digits", augment=True)))
    idx = fixed_subset_indices(bundle.n_train, 50, 1)
    dev = torch.cat([x for x, _ in reference_batches(bundle, idx, 16, torch.device("cpu"))()])
    arrays = bundle.arrays
    bundle.arrays = None  # force the DataLoader path
    tv = torch.cat([x for x, _ in reference_batches(bundle, idx, 16, torch.device("cpu"))()])
    bundle.arrays = arrays
    expected = (arrays[0][idx].float() / 255 - bundle.mean[0]) / bundle.std[0]
    assert torch.allclose(dev, expected, atol=1e-5) and torch.allclose(tv, expected, atol=1e-5)


def test_registry_builds_by_name():
    # the names equal the config's choices: tests/test_config.py::test_each_choice_list_is_its_registrys_keys
    est = build_estimator("fixed_point", fixed_point_samples=64)
    assert type(est) is FixedPointDiversity and est.samples == 64 and est.per_sample == "backpack"
    assert build_estimator("fixed_point", backpack=False).per_sample == "func"
    assert math.isnan(est.value())


def test_bad_subset_size_is_named(tiny_config):
    with pytest.raises(ConfigError, match=r"method\.fixed_point_samples=1; allowed: null"):
        tiny_config("method.diversity_estimator=fixed_point", "method.fixed_point_samples=1")


def test_trainer_logs_delta_at_the_epoch_end_weights(tiny_config):
    """A DiveBatch run on digits (linear model, no augmentation) with the whole training set: the
    logged diversity equals brute-force Delta(w) at the weights the checkpoint holds after the
    measured (last) epoch; the batch size follows the rule from it."""
    from divebatch.models import build_model
    from divebatch.training import train

    cfg = tiny_config(
        "method.diversity_estimator=fixed_point",
        "method.fixed_point_samples=null",
        "method.resize_freq=2",
        "epochs=2",
        "data.augment=false",
        "method.delta=0.01",
    )
    train(cfg)
    df = pd.read_csv(f"{cfg.out_dir}/metrics.csv")
    assert math.isnan(df.grad_diversity[0]) and not math.isnan(df.grad_diversity[1])
    bundle = build_data(cfg.data)
    model = build_model("linear", bundle.num_classes, bundle.in_channels, bundle.image_size, 16)
    model.load_state_dict(torch.load(f"{cfg.out_dir}/checkpoint.pt", weights_only=True)["model"])
    x, y = next(iter(reference_batches(bundle, torch.arange(bundle.n_train), bundle.n_train, torch.device("cpu"))()))
    expected = gradient_diversity(_brute_grads(model, x, y)).item()
    assert df.grad_diversity[1] == pytest.approx(expected, rel=1e-5)


# ----------------------------------------------------------------------------- shadow measurement


def test_shadow_at_lr_zero_all_whole_set_estimates_agree(tiny_config):
    """lr 0, linear model, no augmentation: the epoch estimator, the fixed-point estimator over all n
    and the whole-set pass are the same Delta; the micro-batch estimate is within its noise."""
    from divebatch.training import train

    cfg = tiny_config(
        "method.name=sgd",
        "optim.lr=0.0",
        "shadow.enabled=true",
        "method.resize_freq=1",
        "epochs=1",
        "method.fixed_point_samples=null",
        "shadow.chunk=64",
        "shadow.subset_sizes=[128,512]",
        "shadow.draws=50",
    )
    train(cfg)
    row = pd.read_csv(f"{cfg.out_dir}/shadow.csv").iloc[0]
    assert row.n_delta_exact == pytest.approx(row.n_delta_full, rel=1e-5)
    assert row.n_delta_fixed_point == pytest.approx(row.n_delta_full, rel=1e-5)
    assert row.n_delta_microbatch == pytest.approx(row.n_delta_full, rel=0.5)
    # the two factors of n * Delta agree too (numerator: mean squared norm; denominator: squared mean gradient)
    assert row.exact_mean_sq_norm == pytest.approx(row.full_mean_sq_norm, rel=1e-5)
    assert row.exact_mean_grad_sq == pytest.approx(row.full_mean_grad_sq, rel=1e-5)
    assert row.full_mean_sq_norm / row.full_mean_grad_sq == pytest.approx(row.n_delta_full, rel=1e-9)
    subsets = pd.read_csv(f"{cfg.out_dir}/shadow_subsets.csv")
    assert subsets.subset_samples.tolist() == [128, 512] and (subsets.n_delta_full == row.n_delta_full).all()
    assert subsets.rel_sd.iloc[1] < subsets.rel_sd.iloc[0]  # more samples, smaller sampling error


def test_shadow_leaves_the_training_unchanged(tiny_config):
    """A BatchNorm network: the shadow run's metrics equal the plain run's (the extra micro-batch
    passes restore the gradient and the BatchNorm statistics)."""
    from divebatch.training import train

    common = (
        "method.name=sgd",
        "model.name=resnet_small",
        "model.width=2",
        "method.resize_freq=1",
        "epochs=2",
        "data.train_subset=200",
        "shadow.chunk=50",
        "shadow.subset_sizes=[50]",
        "shadow.draws=5",
        "method.fixed_point_samples=100",
    )
    plain = tiny_config(*common, out="plain")
    shadow = tiny_config(*common, "shadow.enabled=true", out="shadow")
    train(plain)
    train(shadow)
    a, b = (pd.read_csv(f"{c.out_dir}/metrics.csv") for c in (plain, shadow))
    cols = ["train_loss", "train_acc", "val_loss", "val_acc", "batch_size"]
    pd.testing.assert_frame_equal(a[cols], b[cols], rtol=1e-5)
    assert len(pd.read_csv(f"{shadow.out_dir}/shadow.csv")) == 2


def test_shadow_is_refused_on_a_divebatch_run(tiny_config):
    with pytest.raises(ConfigError, match=r"shadow\.enabled=True; allowed: false with method\.name=divebatch"):
        tiny_config("shadow.enabled=true")


# ----------------------------------------------------------------------------- synthetic problem (experiment d)


def test_synthetic_estimators_at_lr_zero_equal_exact_delta():
    """lr 0 on the synthetic problem: the epoch estimator and the fixed-point estimator over all n are
    exact n*Delta; the micro-batch estimate is near it; every method row carries all three."""
    from divebatch.synthetic import problem as P
    from divebatch.synthetic.config import load
    from divebatch.synthetic.data import DataSpec
    from divebatch.synthetic.knee import prepare
    from divebatch.synthetic.methods import estimator_table, run_method

    spec = DataSpec(n_train=512, n_val=64, n_features=8, label_noise=0.1, spectrum_decay=0.0, l2=1e-3)
    probs = prepare(spec, [3], target_relative=0.01, with_paths=False)
    mcfg = load(
        overrides=[
            "methods.epochs=2",
            "methods.initial_batch_size=16",
            "methods.max_batch_size=256",
            "methods.fixed_point_samples=null",
        ]
    ).methods
    rows, _ = run_method(probs, 0, "SGD (small batch)", mcfg, lr=1e-300)
    exact = float(P.n_diversity(probs.x[0], probs.y[0], torch.zeros(1, 8, dtype=P.DTYPE), 1e-3)[0])
    for r in rows:
        assert r["n_delta_hat"] == pytest.approx(exact, rel=1e-8)
        assert r["n_delta_fixed_point"] == pytest.approx(exact, rel=1e-8)
        assert r["n_delta_microbatch"] == pytest.approx(exact, rel=0.5)
    table = estimator_table(pd.DataFrame(rows))
    assert set(table.estimator) == {"exact (authors' epoch estimator)", "microbatch", "fixed_point"}


def test_synthetic_fixed_point_subset_is_the_subset_formula():
    from divebatch.synthetic import problem as P
    from divebatch.synthetic.config import load
    from divebatch.synthetic.data import DataSpec
    from divebatch.synthetic.knee import prepare
    from divebatch.synthetic.methods import run_method

    spec = DataSpec(n_train=512, n_val=64, n_features=8, label_noise=0.1, spectrum_decay=0.0, l2=1e-3)
    probs = prepare(spec, [3], target_relative=0.01, with_paths=False)
    mcfg = load(
        overrides=[
            "methods.epochs=1",
            "methods.initial_batch_size=16",
            "methods.max_batch_size=256",
            "methods.fixed_point_samples=100",
        ]
    ).methods
    rows, _ = run_method(probs, 0, "SGD (small batch)", mcfg, lr=1e-300)
    x, y, w = probs.x[0], probs.y[0], torch.zeros(1, 8, dtype=P.DTYPE)
    idx = torch.randperm(512, generator=torch.Generator().manual_seed(7919 + 3))[:100]
    g = P.per_sample_grads(x[idx], y[idx], w, 1e-3)[0]
    expected = subset_n_diversity(g.pow(2).sum().item(), g.sum(0).pow(2).sum().item(), 100, 512)
    assert rows[0]["n_delta_fixed_point"] == pytest.approx(expected, rel=1e-8)


def test_runs_written_before_the_new_keys_existed_stay_resumable():
    """A config.yaml without method.fixed_point_samples / shadow.* / data.subset_seed (older runs) differs
    from today's config only where today's value is not the schema default."""
    from omegaconf import OmegaConf

    from divebatch.config import config_diffs, load_config

    new = load_config(None, ["method.name=sgd"])
    old = OmegaConf.to_container(new)
    del old["shadow"], old["method"]["fixed_point_samples"], old["data"]["subset_seed"]
    assert config_diffs(OmegaConf.create(old), new) == []
    changed = load_config(None, ["method.name=sgd", "shadow.enabled=true"])
    assert config_diffs(OmegaConf.create(old), changed) == ["shadow.enabled: False -> True"]
