"""The library API (divebatch.BatchSizeController) in loops of a user's own, against brute-force
per-sample gradients and the resize rule; the trainer runs on the same API; the example runs."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import per_sample_gradients
from torch import nn

import divebatch
from divebatch import BatchSizeController
from divebatch.method import ESTIMATORS, DiversityEstimator, build_estimator, gradient_diversity

ROOT = Path(__file__).resolve().parents[1]


def _data(n=48, d=6, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g), torch.randint(0, classes, (n,), generator=g)


def _model(d=6, classes=3):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(d, 8), nn.ReLU(), nn.Linear(8, classes))


def _ctl(estimator="exact", **kw):
    opts = dict(n_train=48, initial_batch_size=8, max_batch_size=32, resize_freq=1, delta=0.5, estimator=estimator)
    return BatchSizeController("divebatch", **{**opts, **kw})


@pytest.mark.parametrize(
    "estimator, use_backward", [("exact", True), ("exact", False), ("exact_func", True), ("microbatch", False)]
)
def test_own_loop_at_lr_zero_measures_the_exact_diversity(estimator, use_backward):
    """At lr 0 every step sees the same weights, so the epoch estimate is Delta of the epoch's samples
    (the microbatch estimator is exact for the split it plans when the step's samples are its parts)."""
    x, y = _data()
    ctl = _ctl(estimator)
    model = ctl.prepare(_model())
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    with ctl.epoch(0, model) as measured:
        assert measured
        for xb, yb in zip(x.split(ctl.batch_size), y.split(ctl.batch_size)):
            opt.zero_grad()
            if use_backward:
                ctl.backward(F.cross_entropy(model(xb), yb), model, xb, yb)
            else:
                ctl.forward_backward(model, xb, yb, F.cross_entropy)
            opt.step()
    decision = ctl.end_epoch(0, opt)
    exact = float(gradient_diversity(per_sample_gradients(model, F.cross_entropy, x, y)))
    if estimator == "microbatch":  # an unbiased two-scale estimate, not the exact value: same order
        assert 0.2 * exact < decision.diversity < 5 * exact
    else:
        assert decision.diversity == pytest.approx(exact, rel=1e-5)
    want = int(min(max(0.5 * decision.diversity * 48, 8), 32))  # the resize rule on this estimate
    assert decision.next_batch_size == want == ctl.batch_size and decision.batch_size == 8


def test_resize_rescales_the_lr_and_state_round_trips():
    x, y = _data()
    ctl = _ctl(lr_rescale=True, delta=10.0)  # n * Delta_hat >= 1, so delta 10 jumps to the cap
    model = ctl.prepare(_model())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with ctl.epoch(0, model):
        for xb, yb in zip(x.split(8), y.split(8)):
            opt.zero_grad()
            ctl.forward_backward(model, xb, yb, F.cross_entropy)
            opt.step()
    d = ctl.end_epoch(0, opt)
    assert (d.batch_size, d.next_batch_size, d.lr_factor) == (8, 32, 4.0) and d.resized
    assert opt.param_groups[0]["lr"] == pytest.approx(0.4)
    other = _ctl()
    other.load_state_dict(ctl.state_dict())
    assert other.batch_size == 32 and not other.measures(1)  # at the cap: no more decisions


def test_unmeasured_epochs_and_other_methods():
    ada = BatchSizeController(
        "adabatch",
        n_train=48,
        initial_batch_size=8,
        max_batch_size=32,
        resize_freq=2,
        lr_rescale=True,
        lr_scaling="sqrt",
    )
    assert ada.estimator is None and not ada.measures(1)
    opt = torch.optim.SGD(_model().parameters(), lr=0.1)
    assert ada.end_epoch(0, opt).next_batch_size == 8
    d = ada.end_epoch(1, opt)
    assert d.next_batch_size == 16 and d.diversity is None and opt.param_groups[0]["lr"] == pytest.approx(0.1 * 2**0.5)
    ctl = _ctl(resize_freq=3)
    model = ctl.prepare(_model())
    with ctl.epoch(0, model) as measured:
        assert not measured and ctl.active is None


def test_errors_name_the_value_and_what_is_allowed():
    with pytest.raises(ValueError, match=r"method='dive'; allowed: sgd \| adabatch \| divebatch"):
        BatchSizeController("dive", n_train=4, initial_batch_size=1, max_batch_size=2, resize_freq=1)
    with pytest.raises(ValueError, match=r"method.diversity_estimator='nope'; allowed: exact"):
        _ctl("nope")
    ctl = _ctl("microbatch")
    model = ctl.prepare(_model())
    x, y = _data()
    with ctl.epoch(0, model), pytest.raises(ValueError, match="forward_backward"):
        ctl.backward(F.cross_entropy(model(x[:8]), y[:8]), model, x[:8], y[:8])


def test_every_estimator_meets_the_protocol():
    for name in ESTIMATORS:
        est = build_estimator(name)
        assert isinstance(est, DiversityEstimator), name
        assert isinstance(est.plans_micro_batches, bool) and isinstance(est.uses_module_hooks, bool)


def test_the_trainer_runs_on_the_controller(tmp_path, monkeypatch):
    """One implementation: every epoch's end of divebatch.training.train is BatchSizeController.end_epoch."""
    from divebatch.config import load_config
    from divebatch.training import train

    calls = []
    real = BatchSizeController.end_epoch

    def spy(self, epoch, *args, **kwargs):
        d = real(self, epoch, *args, **kwargs)
        calls.append(d)
        return d

    monkeypatch.setattr(BatchSizeController, "end_epoch", spy)
    cfg = load_config(
        None,
        [
            "data.name=digits",
            "model.name=linear",
            "method.name=divebatch",
            "method.resize_freq=1",
            "method.initial_batch_size=16",
            "method.max_batch_size=64",
            "epochs=2",
            "device=cpu",
            "wandb.mode=disabled",
            "progress=false",
            f"out_dir={tmp_path / 'run'}",
        ],
    )
    train(cfg)
    assert [d.epoch for d in calls] == [0, 1] and calls[0].diversity is not None


def test_public_names_load_lazily():
    assert divebatch.BatchSizeController is BatchSizeController
    with pytest.raises(AttributeError):
        divebatch.nothing_here  # noqa: B018


# what the library must not load: torchvision's datasets and the replication's own modules (data,
# run-directory format, configs, trainer, reports, shadow measurements, schedule controls)
REPLICATION = (
    "torchvision.datasets",
    "divebatch.rundir",
    "divebatch.data",
    "divebatch.config",
    "divebatch.training",
    "divebatch.analysis",
    "divebatch.shadow",
    "divebatch.schedule",
)


def test_the_library_imports_without_the_replication():
    """``divebatch.method`` (policies, estimators, controller) and every module in it import without
    torchvision's datasets or any module of the replication (checked in a fresh interpreter)."""
    code = (
        "import importlib, pkgutil, sys\n"
        "import divebatch.method as m\n"
        "for info in pkgutil.walk_packages(m.__path__, 'divebatch.method.'):\n"
        "    importlib.import_module(info.name)\n"
        f"print(' '.join(sorted(k for k in sys.modules if k in {REPLICATION!r})))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [], f"divebatch.method imported {done.stdout.split()}"
    # the library's names in one place
    import divebatch.method as method

    assert method.BatchSizeController is BatchSizeController and method.build_estimator is build_estimator


def test_example_custom_loop_trains_and_grows_the_batch():
    spec = importlib.util.spec_from_file_location("custom_loop", ROOT / "examples" / "custom_loop.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    history = example.main(["--epochs", "6"])
    sizes = [h["batch_size"] for h in history]
    assert sizes[0] == 16 and sizes[-1] > 16  # resized at least once
    assert history[-1]["val_acc"] > 50  # 10 classes: chance is 10 %
