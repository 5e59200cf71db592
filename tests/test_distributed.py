"""Data-parallel training (torchrun + DDP, gloo on the CPU): sharding, sum-unit bookkeeping,
equality with one process, rank-0-only outputs, kill and resume, failing ranks.

Tolerances. Two ranks compute the same sums as one process in another order (DDP sums the
ranks' partial gradients; S, A and the metrics are summed per rank first). In float32 (unit
roundoff u = 2**-24 = 6e-8) a sum of N terms carries a relative rounding error of about
sqrt(N) * u typically and (N - 1) * u at worst (Higham, "Accuracy and Stability of Numerical
Algorithms", 2002, sec. 4.2); with N ~ 1.4e3 samples per epoch that is 2e-6 typically and 9e-5 at
worst. RTOL = 1e-4 is that worst case for one sum, and 50x the typical error, while the
bookkeeping mistakes these tests guard against (a shard weighted by its own size instead of the
global batch, a missing all-reduce, a factor K) change the numbers by 1e-2 or more.
Accuracies are counts of samples: ACC_TOL (TRAIN_ACC_TOL) allows one test (training) sample
whose top logit is a near-tie that rounding breaks the other way.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import cli_env, per_sample_gradients
from omegaconf import OmegaConf
from torch import nn

from divebatch import distributed
from divebatch.config import ConfigError, DataConfig, load_config
from divebatch.data import (
    DataBundle,
    RankWorkerSeed,
    ResizableBatchSampler,
    ShardedLoader,
    batch_shares,
    build_data,
    global_batch_spans,
    make_loaders,
    shard_span,
)
from divebatch.distributed import DistContext
from divebatch.method import ExactDiversity, gradient_diversity
from divebatch.models import build_model

RTOL = 1e-4
N_TEST_DIGITS = 360  # digits: 20 % of 1,797 samples held out
ACC_TOL = 100.0 / N_TEST_DIGITS + 1e-9  # one test sample, in percentage points
TRAIN_ACC_TOL = 100.0 / 1437 + 1e-9  # one training sample (digits: 1,437 training samples)
TIMING = ["epoch_time_s", "eval_time_s", "wall_time_s", "peak_memory_mb"]
TORCHRUN_LIMIT_S = 240  # a hung job fails the test instead of hanging CI

# DiveBatch on digits with softmax regression (no BatchNorm, so two ranks equal one process).
# n = 1,437: the last batch of 50 has 37 samples (shards 19/18); max_micro_batch 16 splits every
# shard (25 -> 16 + 9), so no_sync() and the micro-batch sums are exercised; resize_freq 1 makes
# every epoch measure diversity and change the batch size.
MAIN = {
    "data": {"name": "digits"},
    "model": {"name": "linear"},
    "method": {
        "name": "divebatch",
        "initial_batch_size": 50,
        "max_batch_size": 600,
        "resize_freq": 1,
        "delta": 0.5,
        "max_micro_batch": 16,
    },
    "optim": {"lr": 0.05, "schedule": "constant"},
    "epochs": 4,
    "seed": 3,
    "wandb": {"mode": "disabled"},
    "device": "cpu",
    "progress": False,
}
# lr 0: the estimate is the exact Delta at the initial weights. 451 samples in batches of 50 leave
# a last batch of 1 < 2 ranks, merged into the previous one (51 samples, shards 26/25).
EXACT = {
    **MAIN,
    "optim": {"lr": 0.0, "momentum": 0.0, "weight_decay": 0.0, "schedule": "constant"},
    "data": {"name": "digits", "train_subset": 451},
    "epochs": 1,
}

# Runs `divebatch train` once per '--'-separated argument group under torchrun; optionally injects
# a failure on rank 1 (raise or hang in its second evaluation) or stalls rank 0 right after the
# checkpoint of epoch STALL_AFTER (so the test can kill the job at a known point). On every rank but
# 0, any file access through the run directory, the shadow files' writer, wandb and the progress
# log raise: the trainer's rank-0 I/O must be guarded explicitly (`if ctx.is_main:` / `ctx.on_main`).
DRIVER = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    from divebatch import training

    rank, mode = int(os.environ["RANK"]), os.environ.get("DIST_TEST_MODE", "")
    Path(os.environ["DIST_TEST_PIDS"], f"rank{rank}").write_text(str(os.getpid()))
    if mode in ("raise", "hang"):
        evaluate, calls = training.evaluate, []
        def failing_evaluate(*args, **kwargs):
            calls.append(1)
            if rank == 1 and len(calls) == 2:
                if mode == "raise":
                    raise RuntimeError("injected failure on rank 1")
                time.sleep(3600)
            return evaluate(*args, **kwargs)
        training.evaluate = failing_evaluate
    if mode == "stall":
        save = training.RunDir.save_checkpoint
        def stalling_save(self, state):
            save(self, state)
            if state["next_epoch"] == int(os.environ["STALL_AFTER"]):
                (self.path / "STALLED").write_text("")
                time.sleep(3600)
        training.RunDir.save_checkpoint = stalling_save
    if rank != 0:
        def rank_0_only(name):
            def refuse(*args, **kwargs):
                raise AssertionError(f"rank {rank} called {name}: run-directory I/O is rank 0's")
            return refuse
        for name in ("prepare", "read_summary", "load_checkpoint", "save_checkpoint", "write_metrics", "write_json"):
            setattr(training.RunDir, name, rank_0_only(f"RunDir.{name}"))
        for name in ("_atomic_write", "_log", "WandbLogger"):
            setattr(training, name, rank_0_only(name))
        import numpy
        numpy.savez = rank_0_only("numpy.savez")  # the decoded image-folder cache is rank 0's to write
    groups, cur = [], []
    for a in sys.argv[1:] + ["--"]:
        if a == "--":
            groups.append(cur); cur = []
        else:
            cur.append(a)
    for argv in groups:
        code = training.cli(argv)
        if code:
            sys.exit(code)
""")


def write_config(path: Path, cfg: dict) -> Path:
    path.write_text(OmegaConf.to_yaml(OmegaConf.create(cfg)))
    return path


def torchrun(
    tmp: Path,
    *args: str,
    nproc: int = 2,
    mode: str = "",
    env: dict | None = None,
    wait: bool = True,
    timeout: float = TORCHRUN_LIMIT_S,
):
    """``torchrun --standalone --nproc_per_node=nproc DRIVER args`` as a subprocess in its own session."""
    driver = tmp / "driver.py"
    driver.write_text(DRIVER)
    pids = tmp / "pids"
    pids.mkdir(exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        str(driver),
        *args,
    ]
    full_env = {**cli_env(), "DIST_TEST_MODE": mode, "DIST_TEST_PIDS": str(pids), **(env or {})}
    proc = subprocess.Popen(
        cmd, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    if not wait:
        return proc
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        kill_job(proc, pids)
    return proc.returncode, out, err


def kill_job(proc: subprocess.Popen, pids: Path) -> None:
    """SIGKILL torchrun and its workers (torchrun starts each worker in a session of its own)."""
    for f in pids.glob("rank*"):
        try:
            os.kill(int(f.read_text()), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def metrics(run: Path) -> pd.DataFrame:
    return pd.read_csv(run / "metrics.csv")


# ----------------------------------------------------------------------------- sharding (in-process)


@pytest.mark.parametrize("world", [2, 3, 8])
def test_spans_and_shards_cover_every_sample_once(world):
    for n in range(world, 60):
        for bs in range(world, 25):
            spans = global_batch_spans(n, bs, world)
            assert spans[0][0] == 0 and spans[-1][1] == n
            assert all(a1 == b0 for (_, b0), (a1, _) in zip(spans, spans[1:]))
            tail = n % bs
            assert len(spans) == -(-n // bs) - (1 if 0 < tail < world and n > bs else 0)
            for a, b in spans:
                shards = [shard_span(a, b, r, world) for r in range(world)]
                assert [lo for lo, _ in shards[1:]] == [hi for _, hi in shards[:-1]]
                assert shards[0][0] == a and shards[-1][1] == b
                sizes = [hi - lo for lo, hi in shards]
                assert min(sizes) >= 1 and max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)


def test_batch_smaller_than_world_is_rejected():
    with pytest.raises(ValueError, match="number of data-parallel processes"):
        global_batch_spans(100, 3, 4)
    assert global_batch_spans(0, 5, 1) == []  # one process: unchanged behaviour


def _bundle(n: int) -> DataBundle:
    """Random CIFAR-shaped uint8 images with the crop/flip augmentation (random draws per batch)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    return DataBundle("rand", 10, 3, 32, (0.5,) * 3, (0.25,) * 3, "crop_flip", (x, y, x[:23], y[:23]))


@pytest.mark.parametrize("world", [2, 3])
def test_device_loader_shards_reassemble_the_single_process_batches(world):
    """K sharded device loaders (same seed) yield, step by step, the contiguous parts of exactly the
    global batches (same permutation, same augmentation draws) one loader yields, also when the
    batch size changes and when a too-small last batch is merged."""
    n, cpu = 103, torch.device("cpu")
    bundle, data_cfg = _bundle(n), OmegaConf.structured(DataConfig(loader="device", augment=True))

    def loaders(rank):
        if rank is None:
            return make_loaders(bundle, data_cfg, 17, cpu, torch.Generator().manual_seed(5))
        return make_loaders(bundle, data_cfg, 17, cpu, torch.Generator().manual_seed(5), rank=rank, world_size=world)

    ref, ranks = loaders(None), [loaders(r) for r in range(world)]
    for bs in (17, 20):  # 103 = 6 * 17 + 1 (tail 1 < K: merged), then 5 * 20 + 3
        ref[0].set_batch_size(bs)
        for tr, _ in ranks:
            tr.set_batch_size(bs)
        glob = [(x.clone(), y.clone()) for x, y in ref[0]]
        if 0 < n % bs < world:
            glob[-2:] = [(torch.cat([glob[-2][0], glob[-1][0]]), torch.cat([glob[-2][1], glob[-1][1]]))]
        parts = [list(tr) for tr, _ in ranks]
        assert all(len(p) == len(glob) == len(tr) for p, (tr, _) in zip(parts, ranks))
        for t, (x, y) in enumerate(glob):
            assert torch.equal(torch.cat([p[t][0] for p in parts]), x)
            assert torch.equal(torch.cat([p[t][1] for p in parts]), y)
            assert ranks[0][0].shares()[t] == pytest.approx(len(y) / world)
        assert sum(tr.local_samples for tr, _ in ranks) == n
    # evaluation: the unshuffled test set, split the same way
    test_parts = [torch.cat([y for _, y in te]) for _, te in ranks]
    assert torch.equal(torch.cat(test_parts), bundle.arrays[3])
    assert [len(p) for p in test_parts] == [te.local_samples for _, te in ranks]


def test_batch_sampler_shards_reassemble_the_global_batches():
    world, n = 3, 52
    ref = ResizableBatchSampler(n, 10, True, torch.Generator().manual_seed(1))
    samplers = [ResizableBatchSampler(n, 10, True, torch.Generator().manual_seed(1), r, world) for r in range(world)]
    glob = list(ref)  # 5 batches of 10, then 2 (< 3 ranks): merged
    glob[-2:] = [glob[-2] + glob[-1]]
    parts = [list(s) for s in samplers]
    assert [len(s) for s in samplers] == [len(glob)] * world
    for t, batch in enumerate(glob):
        assert sum((p[t] for p in parts), []) == batch


def test_dataloader_path_shards_by_sampler_with_rank_seeded_workers(tiny_npz):
    """data.loader=torchvision: each rank's sampler yields its contiguous part of every global
    batch (only its own images are decoded), and its workers get rank-specific seeds."""
    world, cpu = 2, torch.device("cpu")
    cfg = OmegaConf.structured(
        DataConfig(
            name="npz", path=str(tiny_npz(n_train=41, n_test=9)), loader="torchvision", augment=False, num_workers=0
        )
    )
    bundle = build_data(cfg)
    ref = make_loaders(bundle, cfg, 8, cpu, torch.Generator().manual_seed(2))[0]
    ranks = [
        make_loaders(bundle, cfg, 8, cpu, torch.Generator().manual_seed(2), rank=r, world_size=world)
        for r in range(world)
    ]
    assert all(isinstance(ld, ShardedLoader) and not ld.slice_batches for pair in ranks for ld in pair)
    glob, parts = list(ref), [list(tr) for tr, _ in ranks]
    glob[-2:] = [(torch.cat([glob[-2][0], glob[-1][0]]), torch.cat([glob[-2][1], glob[-1][1]]))]  # 41 = 5 * 8 + 1
    assert len(glob) == len(parts[0]) == len(parts[1]) == len(ranks[0][0])
    for t, (x, y) in enumerate(glob):
        assert torch.equal(torch.cat([p[t][1] for p in parts]), y)
        assert torch.allclose(torch.cat([p[t][0] for p in parts]), x)
    assert [tr.local_samples for tr, _ in ranks] == [sum(len(b[1]) for b in p) for p in parts]
    workers = OmegaConf.merge(cfg, {"num_workers": 1})
    tr, _ = make_loaders(bundle, workers, 8, cpu, torch.Generator(), rank=1, world_size=world)
    assert isinstance(tr.loader.loader.worker_init_fn, RankWorkerSeed) and tr.loader.loader.worker_init_fn.rank == 1
    one, _ = make_loaders(bundle, workers, 8, cpu, torch.Generator())  # one process: plain loader, no rank seeds
    assert not isinstance(one, ShardedLoader) and one.loader.worker_init_fn is None


def test_dataloader_path_refuses_augmentation_without_workers_under_ddp(tiny_npz):
    """With num_workers=0 the main process draws the augmentations from the same RNG on every rank."""
    cfg = OmegaConf.structured(
        DataConfig(name="npz", path=str(tiny_npz(n_train=41, n_test=9)), loader="torchvision", num_workers=0)
    )
    bundle, cpu = build_data(cfg), torch.device("cpu")
    make_loaders(bundle, cfg, 8, cpu, torch.Generator())  # one process: allowed
    with pytest.raises(ConfigError, match="data.num_workers=0 with data.augment=true under torchrun"):
        make_loaders(bundle, cfg, 8, cpu, torch.Generator(), rank=0, world_size=2)


def test_single_process_context_is_the_identity(tmp_path):
    ctx = distributed.setup("cpu")  # pytest is not started by torchrun
    assert not ctx.enabled and ctx.is_main and ctx.describe() is None
    model = nn.Linear(2, 2)
    assert ctx.wrap(model) is model
    assert ctx.on_main(lambda a, b: a + b, 1, 2) == 3  # no broadcast: the call itself
    with pytest.raises(FileNotFoundError):
        ctx.on_main(lambda: open(tmp_path / "missing"))
    assert ctx.reduce_train_stats({"train_loss": 1.5, "train_acc": 50.0, "samples": 4}) == {
        "train_loss": 1.5,
        "train_acc": 50.0,
        "samples": 4,
    }
    assert batch_shares([1, 2]) is None


def test_timeout_env_is_validated(monkeypatch):
    monkeypatch.setenv(distributed.TIMEOUT_ENV, "7.5")
    assert distributed.timeout_s() == 7.5
    for bad in ("0", "-3", "soon"):
        monkeypatch.setenv(distributed.TIMEOUT_ENV, bad)
        with pytest.raises(ValueError, match=distributed.TIMEOUT_ENV):
            distributed.timeout_s()


def _rank(rank: int, sent=None) -> DistContext:
    """A 2-rank DistContext whose ``broadcast`` returns what rank 0 would have sent (no process
    group); what each call was given is kept in ``received``."""
    received = []

    class _Ctx(DistContext):
        def broadcast(self, obj):
            received.append(obj)
            return obj if self.is_main else sent

    ctx = _Ctx(rank=rank, world_size=2, backend="gloo")
    object.__setattr__(ctx, "received", received)
    return ctx


def test_on_main_runs_only_on_rank_0_and_broadcasts_results_and_errors():
    calls = []

    def read():
        calls.append(1)
        raise FileNotFoundError("summary unreadable on rank 0")

    main = _rank(0)
    with pytest.raises(FileNotFoundError, match="rank 0"):
        main.on_main(read)
    assert calls == [1] and isinstance(main.received[0][1], FileNotFoundError)  # rank 0 sent its error
    # another rank never calls fn: it raises the error rank 0 broadcast, or returns its result
    other = _rank(1, sent=(None, FileNotFoundError("summary unreadable on rank 0")))
    with pytest.raises(FileNotFoundError, match="rank 0"):
        other.on_main(read)
    assert calls == [1] and other.received == [(None, None)]
    changed = ["method.max_micro_batch: 512 -> 256"]  # e.g. the changed runtime keys of a resume
    assert _rank(0).on_main(lambda cfg: changed, None) == changed
    assert _rank(1, sent=(changed, None)).on_main(read) == changed


def test_on_main_sends_an_error_that_cannot_be_pickled_as_a_runtime_error():
    class Local(Exception):  # a local class cannot be pickled
        pass

    def fail():
        raise Local("bad checkpoint")

    main = _rank(0)
    with pytest.raises(RuntimeError, match="Local: bad checkpoint"):
        main.on_main(fail)


# ----------------------------------------------------------------------------- estimator (in-process)


def test_estimator_shares_summed_over_ranks_give_the_exact_diversity():
    """Emulates DDP by hand on one process: each "rank" backpropagates its contiguous shard with
    the trainer's scaling (len(micro) / (B/K)), p.grad is set to the ranks' average (what DDP's
    all-reduce leaves on every rank), then the estimators' shares are summed. Unequal shards
    (B = 29 over K = 3: 10/10/9) and micro-batches of 4."""
    torch.manual_seed(0)
    world, batches, micro = 3, [29, 29, 13], 4
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 5))
    x, y = torch.randn(sum(batches), 3, 4), torch.randint(0, 5, (sum(batches),))
    exact = gradient_diversity(per_sample_gradients(model, nn.CrossEntropyLoss(), x, y)).item()
    ests = [ExactDiversity() for _ in range(world)]
    model = ests[0].prepare(model)
    start = 0
    with ests[0].measuring(model):  # the trainer's protocol for a measured epoch
        for bs in batches:
            share, rank_grads = bs / world, []
            for rank, est in enumerate(ests):
                lo, hi = shard_span(start, start + bs, rank, world)
                model.zero_grad()
                for xm, ym in zip(x[lo:hi].split(micro), y[lo:hi].split(micro)):
                    est.backward(model, nn.functional.cross_entropy(model(xm), ym) * (len(ym) / share), share)
                rank_grads.append([p.grad.clone() for p in model.parameters()])
            for _rank, est in enumerate(ests):
                for p, *gs in zip(model.parameters(), *rank_grads):
                    p.grad = torch.stack(gs).mean(0)
                est.step_end(model, share)
            start += bs
    others = [
        [e.sq_norm_sum.clone(), *[g.clone() for g in e.grad_sum], torch.tensor(float(e.samples), dtype=torch.float64)]
        for e in ests[1:]
    ]

    def fake_all_reduce(tensors):
        for i, t in enumerate(tensors):
            t.add_(sum(o[i] for o in others).to(t.dtype))

    ests[0].all_reduce_(fake_all_reduce)
    assert ests[0].samples == sum(batches)
    assert ests[0].value() == pytest.approx(exact, rel=RTOL)


# ----------------------------------------------------------------------------- torchrun (gloo, 2 ranks)


@pytest.fixture(scope="module")
def two_rank_runs(tmp_path_factory):
    """One torchrun job with two ranks: the lr-0 run, then the main DiveBatch run."""
    tmp = tmp_path_factory.mktemp("ddp")
    exact_cfg, main_cfg = write_config(tmp / "exact.yaml", EXACT), write_config(tmp / "main.yaml", MAIN)
    code, out, err = torchrun(
        tmp, str(exact_cfg), f"out_dir={tmp / 'exact'}", "--", str(main_cfg), f"out_dir={tmp / 'main'}"
    )
    assert code == 0, f"torchrun failed ({code}):\n{out[-3000:]}\n{err[-3000:]}"
    return {"tmp": tmp, "out": out, "exact": tmp / "exact", "main": tmp / "main", "main_cfg": main_cfg}


def test_two_ranks_estimate_the_exact_diversity_with_unequal_and_merged_shards(two_rank_runs):
    """lr 0: the 2-rank estimate (shards 25/25 and, in the merged last step, 26/25; micro-batches
    16 + 9) equals Delta of the 451 samples at the initial weights, computed sample by sample."""
    run = two_rank_runs["exact"]
    cfg = load_config(run / "config.yaml")
    row = metrics(run).iloc[0]
    bundle = build_data(cfg.data)
    model = build_model(cfg.model.name, bundle.num_classes, bundle.in_channels, bundle.image_size)
    state = torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=True)["model"]
    model.load_state_dict(state)  # lr 0: the checkpoint holds the initial weights
    x, y, _, _ = bundle.arrays
    mean, std = (torch.tensor(v).view(1, -1, 1, 1) * 255 for v in (bundle.mean, bundle.std))
    xn = (x.float() - mean) / std
    grads = per_sample_gradients(model, nn.CrossEntropyLoss(), xn, y)
    assert row["grad_diversity"] == pytest.approx(gradient_diversity(grads).item(), rel=RTOL)
    with torch.no_grad():
        assert row["train_loss"] == pytest.approx(nn.functional.cross_entropy(model(xn), y).item(), rel=RTOL)
    assert row["samples_seen"] == 451
    assert row["optimizer_steps"] == 9  # 451 = 8 * 50 + 51: the batch of 1 joined the last one


def test_two_ranks_match_one_process(two_rank_runs, tmp_path):
    """Same batch-size trajectory, step counts, diversity and metrics as a single process."""
    one = load_config(two_rank_runs["main_cfg"], [f"out_dir={tmp_path / 'one'}"])
    from divebatch.training import train

    train(one)
    single, ddp = metrics(tmp_path / "one"), metrics(two_rank_runs["main"])
    assert len(single) == len(ddp) == MAIN["epochs"]
    assert single["batch_size"].tolist() == ddp["batch_size"].tolist()
    assert single["batch_size"].nunique() >= 3  # the policy did change the batch size (twice)
    for col in ("optimizer_steps", "samples_seen", "epoch"):
        assert single[col].tolist() == ddp[col].tolist(), col
    for col in ("grad_diversity", "train_loss", "val_loss", "lr"):
        np.testing.assert_allclose(ddp[col], single[col], rtol=RTOL, err_msg=col)
    for col in ("train_acc", "val_acc"):
        np.testing.assert_allclose(
            ddp[col], single[col], atol=ACC_TOL if col == "val_acc" else TRAIN_ACC_TOL, err_msg=col
        )


def test_only_rank_0_writes_and_logs(two_rank_runs):
    run, out = two_rank_runs["main"], two_rank_runs["out"]
    assert sorted(p.name for p in run.iterdir()) == [
        ".lock",  # rank 0's writer lock (released when it ended)
        "checkpoint.pt",
        "config.yaml",
        "manifest.json",
        "metrics.csv",
        "summary.json",
    ]
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["distributed"]["world_size"] == 2 and manifest["distributed"]["backend"] == "gloo"
    assert json.loads((run / "summary.json").read_text())["finished"] is True
    lines = out.splitlines()
    for epoch in range(1, MAIN["epochs"] + 1):  # one log line per epoch, not one per rank
        assert sum(f"] epoch {epoch}/{MAIN['epochs']} " in line for line in lines) == 1
    assert sum("] epoch 1/1 " in line for line in lines) == 1  # the lr-0 run


@pytest.mark.slow  # 12 s; the single-process kill-and-resume test (test_training.py) runs by default
def test_kill_and_resume_with_two_ranks(two_rank_runs, tmp_path):
    """SIGKILL the whole job (torchrun and both ranks) right after the checkpoint of epoch 2, rerun
    the same command: it resumes and ends with the uninterrupted 2-rank run's numbers."""
    cfg, run = two_rank_runs["main_cfg"], tmp_path / "cut"
    proc = torchrun(tmp_path, str(cfg), f"out_dir={run}", mode="stall", env={"STALL_AFTER": "2"}, wait=False)
    try:
        deadline = time.monotonic() + TORCHRUN_LIMIT_S
        while not (run / "STALLED").exists():
            assert proc.poll() is None, f"job ended before the kill:\n{proc.communicate()[1][-3000:]}"
            assert time.monotonic() < deadline, "no checkpoint within the time limit"
            time.sleep(0.2)
    finally:
        kill_job(proc, tmp_path / "pids")
    state = torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert state["next_epoch"] == 2 and not (run / "summary.json").exists()
    (run / "STALLED").unlink()
    code, out, err = torchrun(tmp_path, str(cfg), f"out_dir={run}")
    assert code == 0, err[-3000:]
    assert "resumed at epoch 3/4 (2 finished)" in out  # the next epoch, 1-based
    cut, full = metrics(run).drop(columns=TIMING), metrics(two_rank_runs["main"]).drop(columns=TIMING)
    pd.testing.assert_frame_equal(cut, full)  # same computation: bit-identical
    assert json.loads((run / "manifest.json").read_text())["resumes"][0]["epoch"] == 2


@pytest.mark.parametrize(
    "overrides, key",
    [
        pytest.param(  # 6-8 s of torchrun; test_two_ranks_* keeps torchrun in the default suite
            ["method.name=sgd", "shadow.enabled=true"], "shadow.enabled=True", marks=pytest.mark.slow
        ),
        pytest.param(  # the same refusal path as the shadow case (6 s of torchrun each)
            ["method.diversity_estimator=microbatch"], "method.diversity_estimator=microbatch", marks=pytest.mark.slow
        ),
    ],
)
def test_per_rank_estimators_are_refused_before_training(tmp_path, overrides, key):
    """Shadow runs and the micro-batch estimator keep per-rank sums: refused at start, not at the
    first measured epoch."""
    cfg = write_config(tmp_path / "c.yaml", MAIN)
    code, out, err = torchrun(tmp_path, str(cfg), f"out_dir={tmp_path / 'r'}", *overrides)
    assert code != 0 and f"invalid config: {key} under torchrun" in err
    assert not (tmp_path / "r" / "metrics.csv").exists()


@pytest.mark.slow  # 6 s of torchrun; test_imagefolder.py checks the cache on one process by default
def test_rank_0_alone_fills_the_image_folder_cache(tmp_path):
    """A fresh cache: rank 0 decodes the folder and writes the cache, rank 1 reads it (the driver
    makes numpy.savez raise on rank 1)."""
    from test_imagefolder import write_layout

    write_layout(tmp_path / "data", size=(8, 8), per_class=(6, 2))
    cfg = write_config(tmp_path / "c.yaml", {**MAIN, "data": {"name": "imagefolder", "path": str(tmp_path / "data")}})
    env = {"DIVEBATCH_CACHE": str(tmp_path / "cache")}
    code, out, err = torchrun(tmp_path, str(cfg), f"out_dir={tmp_path / 'r'}", "epochs=1", env=env)
    assert code == 0, f"torchrun failed ({code}):\n{out[-3000:]}\n{err[-3000:]}"
    assert len(list((tmp_path / "cache").rglob("*.npz"))) == 1


@pytest.mark.slow  # 7 s of torchrun; the refusal test keeps a failing torchrun job in the default suite
def test_failing_rank_stops_the_job(tmp_path):
    """Rank 1 raises in its second evaluation: the job exits non-zero at once (torchrun stops the
    other rank, which would otherwise wait in the next all-reduce) and names the error."""
    cfg = write_config(tmp_path / "c.yaml", MAIN)
    t0 = time.monotonic()
    code, out, err = torchrun(
        tmp_path, str(cfg), f"out_dir={tmp_path / 'r'}", mode="raise", env={distributed.TIMEOUT_ENV: "300"}
    )
    assert code != 0
    assert "[rank 1/2]" in err and "failed: RuntimeError: injected failure on rank 1" in err
    assert time.monotonic() - t0 < 240  # before rank 0's collective timeout (300 s): nobody hung


@pytest.mark.slow
def test_hanging_rank_times_out(tmp_path):
    """Rank 1 hangs (alive, never reaches the next collective): rank 0's all-reduce times out after
    DIVEBATCH_DIST_TIMEOUT_S, it reports that and exits, and torchrun stops the job non-zero."""
    cfg = write_config(tmp_path / "c.yaml", MAIN)
    t0 = time.monotonic()
    code, out, err = torchrun(
        tmp_path, str(cfg), f"out_dir={tmp_path / 'h'}", mode="hang", env={distributed.TIMEOUT_ENV: "5"}
    )
    assert code != 0
    assert distributed.TIMEOUT_ENV in err and "[rank 0/2]" in err
    assert time.monotonic() - t0 < 180  # start-up (slow on a busy machine) + 5 s, not TORCHRUN_LIMIT_S


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (1-GPU DDP smoke test)")
def test_one_gpu_ddp_smoke(tmp_path):
    """torchrun with one process on one GPU (NCCL): the run finishes and equals a plain 1-GPU run."""
    cfg = write_config(tmp_path / "g.yaml", {**MAIN, "device": "cuda"})
    code, out, err = torchrun(tmp_path, str(cfg), f"out_dir={tmp_path / 'ddp'}", nproc=1)
    assert code == 0, err[-3000:]
    manifest = json.loads((tmp_path / "ddp" / "manifest.json").read_text())
    assert manifest["distributed"]["backend"] == "nccl" and manifest["device"].startswith("cuda")
    from divebatch.training import train

    train(load_config(cfg, [f"out_dir={tmp_path / 'plain'}"]))
    ddp, plain = metrics(tmp_path / "ddp"), metrics(tmp_path / "plain")
    assert ddp["batch_size"].tolist() == plain["batch_size"].tolist()
    np.testing.assert_allclose(ddp["train_loss"], plain["train_loss"], rtol=RTOL)
