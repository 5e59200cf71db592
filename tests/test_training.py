"""Training loop and run directory: micro-batching, schedules, the files of a run,
the DiveBatch rule in the logs, resume after SIGKILL, refusals, reproducibility, wandb modes."""

from __future__ import annotations

import copy
import json
import math
import os
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from conftest import TINY, cli_env, divebatch_cmd, per_sample_gradients, write_npz
from omegaconf import OmegaConf
from torch import nn

from divebatch.config import load_config
from divebatch.method import gradient_diversity
from divebatch.method.policies import divebatch_batch_size
from divebatch.models import build_model
from divebatch.training import METRIC_COLUMNS, RunDirError, build_schedulers, train, train_one_epoch

TIME_COLUMNS = ["epoch_time_s", "eval_time_s", "wall_time_s", "peak_memory_mb"]
RUN_FILES = {"config.yaml", "manifest.json", "metrics.csv", "summary.json", "checkpoint.pt", ".lock"}


def metrics(run_dir) -> pd.DataFrame:
    return pd.read_csv(os.path.join(run_dir, "metrics.csv"), float_precision="round_trip")


def same_metrics(a: pd.DataFrame, b: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(a.drop(columns=TIME_COLUMNS), b.drop(columns=TIME_COLUMNS), check_exact=True)


# ----------------------------------------------------------------------------- micro-batching


def _conv_no_bn():
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 5))


def _linear():
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 5))


@pytest.mark.parametrize("make_model", [_linear, _conv_no_bn], ids=["linear", "conv"])
@pytest.mark.parametrize("dtype, rtol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_one_step_over_micro_batches_equals_one_big_batch_step(make_model, dtype, rtol):
    """Micro-batch losses are scaled by len(micro)/B, so their accumulated gradient is the batch's mean
    gradient: the same math, only the summation order of the 10 per-sample terms differs. float64
    shows equality to 1e-12; in float32 that reordering costs a few ulps of each gradient entry,
    well inside 1e-5 of the update (lr * gradient, checked relative to its size)."""
    torch.manual_seed(0)
    model = make_model().to(dtype)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(10, 3, 4, 4, generator=g, dtype=dtype), torch.randint(0, 5, (10,), generator=g)
    updates, stats = [], []
    for max_micro_batch in (10, 3, 1):  # one pass; 3 + 3 + 3 + 1; ten single samples
        m = copy.deepcopy(model)
        forwards = []
        m.register_forward_hook(lambda mod, inp, out, forwards=forwards: forwards.append(len(inp[0])))
        opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True)
        stats.append(train_one_epoch(m, [(x, y)], opt, nn.CrossEntropyLoss(), max_micro_batch, progress=False))
        assert forwards == [len(c) for c in y.split(max_micro_batch)]  # really split into micro-batches
        updates.append(torch.cat([(p1 - p0).reshape(-1) for p1, p0 in zip(m.parameters(), model.parameters())]))
    scale = updates[0].abs().max()
    assert scale > 1e-4  # a real step happened
    for u in updates[1:]:
        assert (u - updates[0]).abs().max() <= rtol * scale
    assert all(s["steps"] == 1 and s["samples"] == 10 for s in stats)
    assert stats[1]["train_loss"] == pytest.approx(stats[0]["train_loss"], rel=1e-6)  # accumulated in float32


# ----------------------------------------------------------------------------- schedules


def _lr_per_step(optim_overrides, epochs, steps_per_epoch, base=0.1):
    """The lr of every optimizer step, calling the schedulers as ``train`` does."""
    cfg = load_config(None, [*TINY, f"optim.lr={base}", f"epochs={epochs}", *optim_overrides])
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=base, momentum=0.9)
    scheduler, warmup = build_schedulers(cfg.optim, opt, epochs, steps_per_epoch)
    lrs = []
    for epoch in range(epochs):
        row = []
        for _ in range(steps_per_epoch):
            row.append(opt.param_groups[0]["lr"])
            opt.step()
            if warmup is not None and epoch < cfg.optim.warmup_epochs:
                warmup.step()
        lrs.append(row)
        scheduler.step()
    return lrs


def test_cosine_schedule_per_epoch():
    lrs = _lr_per_step(["optim.schedule=cosine"], epochs=6, steps_per_epoch=3)
    for e, row in enumerate(lrs):
        assert row == pytest.approx([0.1 * (1 + math.cos(math.pi * e / 6)) / 2] * 3, rel=1e-12)
    lrs = _lr_per_step(["optim.schedule=cosine", "optim.t_max=4"], epochs=6, steps_per_epoch=1)
    assert [r[0] for r in lrs[:5]] == pytest.approx(
        [0.1 * (1 + math.cos(math.pi * e / 4)) / 2 for e in range(5)], abs=1e-15
    )


def test_step_schedule():
    lrs = _lr_per_step(["optim.schedule=step", "optim.step_size=2", "optim.gamma=0.1"], epochs=6, steps_per_epoch=2)
    assert [r[0] for r in lrs] == pytest.approx([0.1 * 0.1 ** (e // 2) for e in range(6)], rel=1e-12)
    assert all(r[0] == r[1] for r in lrs)


def test_multistep_with_linear_warmup_per_step():
    """Warm-up over the first epoch, per optimizer step, from base/T to base (T = warm-up steps),
    then multi-step decay at epochs 2 and 4 (docs/protocol.md CIFAR-100 protocol, scaled down)."""
    steps = 5
    lrs = _lr_per_step(
        ["optim.schedule=multistep", "optim.milestones=[2,4]", "optim.gamma=0.2", "optim.warmup_epochs=1"],
        epochs=6,
        steps_per_epoch=steps,
    )
    assert lrs[0] == pytest.approx([0.1 * (1 / steps + (1 - 1 / steps) * k / steps) for k in range(steps)], rel=1e-12)
    for e in range(1, 6):
        assert lrs[e] == pytest.approx([0.1 * 0.2 ** sum(e >= m for m in (2, 4))] * steps, rel=1e-12)


# ----------------------------------------------------------------------------- one DiveBatch run and its files


DIVEBATCH_RUN = (
    "method.name=divebatch",
    "method.resize_freq=1",
    "method.delta=2",
    "method.initial_batch_size=32",
    "method.max_batch_size=512",
    "method.max_micro_batch=100",
    "optim.schedule=cosine",
    "epochs=3",
)


@pytest.fixture(scope="module")
def divebatch_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("divebatch") / "run"
    cfg = load_config(None, [*TINY, *DIVEBATCH_RUN, f"out_dir={out}"])
    summary = train(cfg)
    return cfg, out, summary


def test_run_directory_holds_exactly_the_fixed_files(divebatch_run):
    cfg, out, _ = divebatch_run
    assert {p.name for p in out.iterdir()} == RUN_FILES  # wandb.mode=disabled: nothing else
    assert OmegaConf.to_container(OmegaConf.load(out / "config.yaml")) == OmegaConf.to_container(cfg)
    manifest = json.loads((out / "manifest.json").read_text())
    assert {"commit", "packages", "device", "seed", "start_time"} <= set(manifest)
    assert manifest["seed"] == cfg.seed and manifest["device"].startswith("cpu")
    assert manifest["packages"]["torch"] == torch.__version__.split("+")[0]
    assert manifest["commit"] and "T" in manifest["start_time"]
    assert manifest["command"].split()[0] == "divebatch"  # never where the entry point lives on this machine


def test_metrics_columns_and_counters(divebatch_run):
    cfg, out, summary = divebatch_run
    df = metrics(out)
    assert (
        list(df.columns)
        == list(METRIC_COLUMNS)
        == [
            "epoch",
            "train_loss",
            "train_acc",
            "val_loss",
            "val_acc",
            "lr",
            "batch_size",
            "grad_diversity",
            "optimizer_steps",
            "samples_seen",
            "epoch_time_s",
            "eval_time_s",
            "wall_time_s",
            "peak_memory_mb",
        ]
    )
    n = 1437  # digits training split, checked in test_data
    assert df.epoch.tolist() == list(range(cfg.epochs))
    assert df.samples_seen.tolist() == [n * (e + 1) for e in range(cfg.epochs)]
    assert df.optimizer_steps.tolist() == list(pd.Series([-(-n // m) for m in df.batch_size]).cumsum())
    assert df.wall_time_s.tolist() == pytest.approx((df.epoch_time_s + df.eval_time_s).cumsum().tolist(), rel=1e-9)
    assert df.train_acc.between(0, 100).all() and df.val_acc.between(0, 100).all()
    assert df.val_acc.max() > 50  # percent, not a fraction
    assert df.lr.tolist() == pytest.approx([0.05 * (1 + math.cos(math.pi * e / 3)) / 2 for e in range(3)])
    assert summary == json.loads((out / "summary.json").read_text())
    best = df.val_acc.idxmax()
    assert summary["finished"] and summary["epochs_completed"] == cfg.epochs
    assert (summary["final_val_acc"], summary["best_val_acc"], summary["best_epoch"]) == (
        df.val_acc.iloc[-1],
        df.val_acc[best],
        df.epoch[best],
    )
    assert summary["optimizer_steps"] == df.optimizer_steps.iloc[-1]


def test_logged_batch_size_follows_the_divebatch_rule(divebatch_run):
    cfg, out, summary = divebatch_run
    df = metrics(out)
    m = cfg.method
    sizes = df.batch_size.tolist()
    measured = 0
    for e, row in df.iloc[:-1].iterrows():  # each epoch's decision shows as the next epoch's batch size
        if row.batch_size < m.max_batch_size:  # resize_freq = 1: every epoch below the max measures
            assert not math.isnan(row.grad_diversity)
            assert sizes[e + 1] == divebatch_batch_size(
                int(row.batch_size), row.grad_diversity, 1437, m.delta, m.max_batch_size
            )
            measured += 1
        else:
            assert math.isnan(row.grad_diversity) and sizes[e + 1] == row.batch_size
    assert measured >= 2 and len(set(sizes)) >= 2  # the rule was exercised, and changed the batch size


def test_checkpoint_loads_with_weights_only_and_holds_the_model(divebatch_run):
    cfg, out, _ = divebatch_run
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert {"model", "optimizer", "scheduler", "policy", "rng", "next_epoch"} <= set(state)
    assert state["next_epoch"] == cfg.epochs
    model = build_model(cfg.model.name, 10, 1, 8, cfg.model.width)
    model.load_state_dict(state["model"])  # strict: the model's own state dict
    assert all(torch.equal(v, state["model"][k]) for k, v in model.state_dict().items())


def test_second_run_of_the_same_command_trains_nothing(divebatch_run):
    cfg, out, summary = divebatch_run
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.iterdir() if p.name != ".lock"}
    assert train(cfg) == summary
    after = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.iterdir() if p.name != ".lock"}
    assert {k: v[1] for k, v in after.items()} == {k: v[1] for k, v in before.items()}
    for name in ("metrics.csv", "checkpoint.pt", "summary.json", "manifest.json"):
        assert after[name][0] == before[name][0], name


def test_changed_config_on_an_existing_run_is_refused_naming_the_key(divebatch_run, capsys):
    cfg, out, _ = divebatch_run
    # results untouched (the .lock names its last holder, which the refused attempt was)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.name != ".lock"}
    with pytest.raises(RunDirError, match=r"method\.delta: 2\.0 -> 0\.5"):
        train(load_config(None, [*TINY, *DIVEBATCH_RUN, f"out_dir={out}", "method.delta=0.5"]))
    from divebatch.cli import main

    yaml_path = out.parent / "same.yaml"
    OmegaConf.save(OmegaConf.load(out / "config.yaml"), yaml_path)
    assert main(["train", str(yaml_path), "seed=2"]) == 2
    assert "seed: 1 -> 2" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.name != ".lock"} == before


def test_same_seed_and_config_give_identical_metrics(divebatch_run, tmp_path):
    cfg, out, _ = divebatch_run
    again = train(load_config(None, [*TINY, *DIVEBATCH_RUN, f"out_dir={tmp_path / 'again'}"]))
    same_metrics(metrics(out), metrics(tmp_path / "again"))
    assert again["final_val_acc"] == metrics(out).val_acc.iloc[-1]
    train(load_config(None, [*TINY, *DIVEBATCH_RUN, f"out_dir={tmp_path / 'seed2'}", "seed=2"]))
    assert not metrics(out).train_loss.equals(metrics(tmp_path / "seed2").train_loss)  # the seed matters


# ----------------------------------------------------------------------------- lr rescaling and warm-up in a run


def test_adabatch_lr_rescale_persists_through_cosine_in_a_run(tiny_config):
    cfg = tiny_config(
        "method.name=adabatch",
        "method.lr_rescale=true",
        "method.resize_freq=1",
        "method.initial_batch_size=32",
        "method.max_batch_size=128",
        "optim.schedule=cosine",
        "epochs=4",
    )
    train(cfg)
    df = metrics(cfg.out_dir)
    assert df.batch_size.tolist() == [32, 64, 128, 128]
    expected = [0.05 * (1 + math.cos(math.pi * e / 4)) / 2 * m / 32 for e, m in zip(df.epoch, df.batch_size)]
    assert df.lr.tolist() == pytest.approx(expected, rel=1e-12)
    assert df.grad_diversity.isna().all()  # AdaBatch measures nothing


def test_multistep_warmup_run_logs_the_decayed_lr(tiny_config):
    cfg = tiny_config(
        "method.name=sgd",
        "optim.schedule=multistep",
        "optim.milestones=[2]",
        "optim.gamma=0.2",
        "optim.warmup_epochs=1",
        "epochs=3",
    )
    train(cfg)
    df = metrics(cfg.out_dir)
    assert df.lr.tolist()[1:] == pytest.approx([0.05, 0.05 * 0.2], rel=1e-12)  # after the warm-up epoch


def test_warmup_at_lr_zero_runs_the_warmup_epochs_at_lr_zero_then_the_schedule(tiny_config):
    """fidelity.warmup_at_lr_zero (the authors' CIFAR-100 code): the warm-up epoch trains at lr 0, so the
    weights do not move in it (its validation loss is the initial model's), and the next epoch has
    the scheduled lr again."""
    from divebatch.schedules import Warmup

    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1, momentum=0.9)
    warmup = Warmup(opt, 1, at_lr_zero=True)
    with warmup.epoch(0) as per_step:
        assert per_step is None and opt.param_groups[0]["lr"] == 0.0
    assert opt.param_groups[0]["lr"] == 0.1
    with warmup.epoch(1):
        assert opt.param_groups[0]["lr"] == 0.1

    cfg = tiny_config("method.name=sgd", "fidelity.warmup_at_lr_zero=true", "optim.warmup_epochs=1", "epochs=3")
    train(cfg)
    df = metrics(cfg.out_dir)
    assert df.lr.tolist() == [0.0, 0.05, 0.05]
    still = tiny_config("method.name=sgd", "optim.lr=0", "epochs=1", out="still")  # same initial weights, never moved
    train(still)
    assert df.val_loss[0] == metrics(still.out_dir).val_loss[0] and df.val_loss[1] < df.val_loss[0]


# ----------------------------------------------------------------------------- diversity at lr 0 in real runs


def test_lr0_diversity_is_the_same_in_every_measured_epoch_whatever_batch_and_micro_batch(tiny_config):
    """With lr 0 and no augmentation every measured epoch sees every sample once at the same weights,
    so Delta_hat is the exact Delta of the training set (brute force), whatever m and the micro-batch."""
    common = (
        "method.name=divebatch",
        "method.resize_freq=1",
        "method.delta=3",
        "optim.lr=0",
        "data.augment=false",
        "method.max_batch_size=1437",
        "epochs=3",
    )
    runs = [
        tiny_config(*common, "method.initial_batch_size=32", "method.max_micro_batch=1000", out="a"),
        tiny_config(*common, "method.initial_batch_size=100", "method.max_micro_batch=7", out="b"),
    ]
    values, sizes = [], set()
    for cfg in runs:
        train(cfg)
        df = metrics(cfg.out_dir)
        assert df.grad_diversity.notna().all()  # every epoch measured (batch size < max)
        values += df.grad_diversity.tolist()
        sizes |= set(df.batch_size)
    assert len(sizes) >= 3  # several batch sizes, including a resize inside a run

    from divebatch.data import build_data

    bundle = build_data(runs[0].data)
    x_u8, y = bundle.arrays[0], bundle.arrays[1]
    mean, std = (torch.tensor(v, dtype=torch.float64).view(1, -1, 1, 1) * 255 for v in (bundle.mean, bundle.std))
    x = (x_u8.double() - mean) / std
    model = build_model("linear", 10, 1, 8).double()
    model.load_state_dict(torch.load(os.path.join(runs[0].out_dir, "checkpoint.pt"), weights_only=True)["model"])
    expected = gradient_diversity(per_sample_gradients(model, F.cross_entropy, x, y)).item()
    assert values == pytest.approx([expected] * len(values), rel=1e-5)


# ----------------------------------------------------------------------------- resume


def test_sigkill_mid_epoch_then_resume_equals_an_uninterrupted_run(tmp_path):
    """A `divebatch train` process is killed with SIGKILL while epoch 1 (a measured DiveBatch epoch) is
    running; rerunning the command resumes from the epoch-0 checkpoint. Model with BatchNorm,
    crop/flip augmentation on the device, momentum, cosine schedule, a batch-size change at epoch 2."""
    data = write_npz(tmp_path / "data.npz", n_train=128, n_test=32)
    args = [
        *TINY,
        "data.name=npz",
        f"data.path={data}",
        "model.name=resnet_small",
        "model.width=4",
        "method.name=divebatch",
        "method.resize_freq=2",
        "method.delta=0.5",
        "method.initial_batch_size=8",
        "method.max_batch_size=64",
        "method.max_micro_batch=4",
        "optim.schedule=cosine",
        "epochs=4",
    ]
    reference = train(load_config(None, [*args, f"out_dir={tmp_path / 'reference'}"]))

    cut = tmp_path / "cut"
    yaml_path = tmp_path / "cut.yaml"
    OmegaConf.save(load_config(None, [*args, f"out_dir={cut}"]), yaml_path)
    proc = subprocess.Popen(
        divebatch_cmd("train", str(yaml_path)), env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 120
        while not (cut / "checkpoint.pt").exists():
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "no checkpoint within 120 s"
            time.sleep(0.01)
        first = torch.load(cut / "checkpoint.pt", weights_only=True)["history"][0]
        # into epoch 1: it runs as long as epoch 0 (same batch size) plus BackPACK's per-sample norms
        time.sleep(0.3 * first["epoch_time_s"])
        assert proc.poll() is None, "the run ended before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    state = torch.load(cut / "checkpoint.pt", weights_only=True)
    assert state["next_epoch"] == 1 and not (cut / "summary.json").exists()  # killed inside epoch 1
    assert len(metrics(cut)) <= 1

    resumed = train(load_config(yaml_path))
    manifest = json.loads((cut / "manifest.json").read_text())
    assert [r["epoch"] for r in manifest["resumes"]] == [1]
    same_metrics(metrics(tmp_path / "reference"), metrics(cut))
    assert metrics(cut).batch_size.nunique() == 2  # the resize after the killed epoch happened the same way
    assert {k: v for k, v in resumed.items() if k != "wall_time_s"} == {
        k: v for k, v in reference.items() if k != "wall_time_s"
    }


def _cut_run(tiny_config):
    """A finished 2-epoch run turned into a cut one (summary.json removed), with its config."""
    cfg = tiny_config("epochs=2")
    train(cfg)
    os.remove(os.path.join(cfg.out_dir, "summary.json"))
    return cfg


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_corrupt_checkpoint_is_a_clear_error_and_metrics_stay(tiny_config, damage, capsys):
    cfg = _cut_run(tiny_config)
    ckpt = os.path.join(cfg.out_dir, "checkpoint.pt")
    data = open(ckpt, "rb").read()
    damaged = {"truncate": data[: len(data) // 2], "garbage": os.urandom(4096), "empty": b""}[damage]
    with open(ckpt, "wb") as f:
        f.write(damaged)
    before = metrics(cfg.out_dir)
    with pytest.raises(RunDirError, match="checkpoint.*unreadable"):
        train(cfg)
    same_metrics(before, metrics(cfg.out_dir))
    assert open(ckpt, "rb").read() == damaged  # left for the user to inspect
    from divebatch.cli import main

    yaml_path = os.path.join(cfg.out_dir, "config.yaml")
    assert main(["train", yaml_path]) == 2 and "unreadable" in capsys.readouterr().err
    same_metrics(before, metrics(cfg.out_dir))


def test_missing_checkpoint_with_metrics_is_refused(tiny_config):
    cfg = _cut_run(tiny_config)
    os.remove(os.path.join(cfg.out_dir, "checkpoint.pt"))
    before = metrics(cfg.out_dir)
    with pytest.raises(RunDirError, match="checkpoint.pt is missing"):
        train(cfg)
    same_metrics(before, metrics(cfg.out_dir))


def test_results_without_config_are_not_overwritten(tiny_config):
    cfg = _cut_run(tiny_config)
    os.remove(os.path.join(cfg.out_dir, "config.yaml"))
    with pytest.raises(RunDirError, match="no config.yaml"):
        train(cfg)


# ----------------------------------------------------------------------------- wandb


def test_wandb_offline_writes_an_offline_run_under_out_dir(tiny_config, monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = tiny_config("wandb.mode=offline", "epochs=1")
    train(cfg)
    runs = list((Path(cfg.out_dir) / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb")), runs


# ----------------------------------------------------------------------------- CUDA out of memory


def test_cuda_out_of_memory_names_the_setting_and_the_run_resumes_after_lowering_it(tiny_config, monkeypatch, capsys):
    """An out-of-memory error in epoch 2 (raised as torch raises it on a GPU) stops the run with a
    message naming batch size, micro-batch size and method.max_micro_batch; rerunning with a lower
    method.max_micro_batch resumes from the finished epoch instead of refusing the changed config,
    and any other changed key is still refused."""
    from divebatch import training
    from divebatch.cli import main

    real = training.train_steps
    calls = []

    def oom_in_second_epoch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(*args, **kwargs)

    monkeypatch.setattr(training, "train_steps", oom_in_second_epoch)
    monkeypatch.setenv("DIVEBATCH_RUNS_PER_GPU", "3")
    cfg = tiny_config("epochs=3", "method.name=sgd", "method.max_micro_batch=48")
    with pytest.raises(training.TrainingOutOfMemory) as info:
        train(cfg)
    msg = str(info.value)
    for needed in (
        "epoch 2/3",
        "batch size 64",
        "micro-batch size 48",
        "method.max_micro_batch=48",
        "method.max_micro_batch=24",
        "--set method.max_micro_batch=24",
        "resumes from its last finished epoch (1/3)",
        "Up to 3 runs share this GPU",
        "Tried to allocate 2.00 GiB",
    ):
        assert needed in msg, needed
    assert len(metrics(cfg.out_dir)) == 1  # epoch 1 was kept

    # the command line: a clear error and exit status 3, no traceback
    calls.clear()
    yaml_path = os.path.join(cfg.out_dir, "config.yaml")
    assert main(["train", yaml_path, "method.max_micro_batch=32"]) == 3  # resumes, trains epoch 2, fails in 3
    err = capsys.readouterr().err
    assert "divebatch train: error: CUDA out of memory in epoch 3/3" in err and "Traceback" not in err
    assert "micro-batch size 32" in err

    monkeypatch.setattr(training, "train_steps", real)
    other = tiny_config("epochs=3", "method.name=sgd", "method.max_micro_batch=16", "optim.lr=0.01")
    with pytest.raises(RunDirError, match=r"optim\.lr: 0\.05 -> 0\.01"):
        train(other)
    summary = train(tiny_config("epochs=3", "method.name=sgd", "method.max_micro_batch=16"))
    assert summary["finished"] and summary["epochs_completed"] == 3
    manifest = json.loads((Path(cfg.out_dir) / "manifest.json").read_text())
    assert [r["epoch"] for r in manifest["resumes"]] == [1, 2]
    assert [r["changed"] for r in manifest["resumes"]] == [
        ["method.max_micro_batch: 48 -> 32"],
        ["method.max_micro_batch: 32 -> 16"],
    ]
    assert OmegaConf.load(yaml_path).method.max_micro_batch == 16
