"""The run-directory module: its format round trip, resume truncation, old-format directories and
its torch-free import (the orchestrator, the sweep driver and the reports read run directories
without loading torch)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap

import pytest
import torch

from divebatch import rundir
from divebatch.rundir import METRIC_COLUMNS, RunDir, RunDirError


def _row(epoch: int, **over) -> dict:
    """One metrics row as the trainer writes it (every column; floats and ints as it holds them)."""
    row = {
        "epoch": epoch,
        "train_loss": 2.0 / (epoch + 1),
        "train_acc": 10.0 * (epoch + 1) + 1 / 3,
        "val_loss": 1.5 / (epoch + 1),
        "val_acc": 12.5 * (epoch + 1),
        "lr": 0.1,
        "batch_size": 64 * 2**epoch,
        "grad_diversity": None if epoch % 2 == 0 else 0.123456789,
        "optimizer_steps": 23 * (epoch + 1),
        "samples_seen": 1437 * (epoch + 1),
        "epoch_time_s": 0.1 + epoch,
        "eval_time_s": 0.01,
        "wall_time_s": 0.11 * (epoch + 1),
        "peak_memory_mb": 512.25,
    }
    return {**row, **over}


def test_import_needs_no_torch_pandas_or_omegaconf():
    """rundir imports only the standard library; the orchestrator, the sweep driver and the reports
    import without torch (a blocked ``torch`` import raises ImportError)."""
    code = textwrap.dedent("""
        import sys
        sys.modules["torch"] = None  # any `import torch` now raises ImportError
        import divebatch.rundir
        heavy = sorted(m for m in ("torch", "pandas", "omegaconf", "numpy") if sys.modules.get(m) is not None)
        assert not heavy, f"divebatch.rundir imported {heavy}"
        import divebatch.orchestration.replicate, divebatch.orchestration.sweeps, divebatch.orchestration.gpu_hours, divebatch.analysis.collect
        sw = divebatch.orchestration.sweeps
        assert "val_acc" in sw.METRIC_COLUMNS and "best_val_acc" in sw.SUMMARY_KEYS
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_metric_columns_defined_once():
    from divebatch import training
    from divebatch.analysis import collect
    from divebatch.orchestration import sweeps

    assert training.METRIC_COLUMNS is collect.METRIC_COLUMNS is sweeps.METRIC_COLUMNS is METRIC_COLUMNS
    assert training.RunDir is RunDir and training.RunDirError is RunDirError


def test_round_trip(tiny_config, tmp_path):
    cfg = tiny_config(out="run")
    run = RunDir(cfg.out_dir)
    assert run.prepare(cfg) == [] and rundir.is_run_dir(run.path)
    rows = [_row(0), _row(1, train_loss=float("nan")), _row(2)]
    run.write_metrics(rows)
    text = (run.path / rundir.METRICS).read_text()
    # the exact bytes: a header of METRIC_COLUMNS, floats as repr, None as an empty cell
    assert text.splitlines()[0] == ",".join(METRIC_COLUMNS)
    assert text.splitlines()[2] == (
        "1,nan,20.333333333333332,0.75,25.0,0.1,128,0.123456789,46,2874,1.1,0.01,0.22,512.25"
    )
    assert text.endswith("\n") and text.count("\n") == 4
    back = rundir.read_metrics(run.path)
    assert len(back) == rundir.epochs_done(run.path) == 3
    for want, got in zip(rows, back):
        assert list(got) == list(METRIC_COLUMNS)
        for c in METRIC_COLUMNS:
            if want[c] is None:
                assert got[c] is None
            elif isinstance(want[c], float) and math.isnan(want[c]):
                assert math.isnan(got[c])
            else:
                assert got[c] == want[c] and isinstance(got[c], float)  # exact: repr round-trips
    frame = rundir.read_metrics_frame(run.path)
    assert list(frame.columns) == list(METRIC_COLUMNS) and frame["val_acc"].tolist() == [12.5, 25.0, 37.5]

    summary = {"finished": True, "epochs_completed": 3, "diverged": False}
    run.write_json(run.summary, summary)
    run.write_json(run.manifest, {"commit": "abc", "resumes": []})
    assert (run.path / rundir.SUMMARY).read_text() == json.dumps(summary, indent=2) + "\n"
    assert rundir.read_summary(run.path) == run.read_summary() == summary
    assert rundir.read_manifest(run.path) == {"commit": "abc", "resumes": []}
    assert rundir.summary_status(rundir.read_summary(run.path)) == "finished"
    assert rundir.read_config(run.path).method.name == cfg.method.name
    assert not list(run.path.glob(".*.tmp"))  # atomic writes leave no temporary file
    assert rundir.find_run_dirs([tmp_path]) == [(tmp_path, run.path)]


def test_checkpoint_round_trip_and_resume_truncation(tiny_config):
    """A resumed run rewrites metrics.csv from the checkpoint's history: rows written after the
    checkpoint (a run cut between the two writes) are dropped."""
    cfg = tiny_config()
    run = RunDir(cfg.out_dir)
    run.prepare(cfg)
    assert run.load_checkpoint() is None  # fresh run
    rows = [_row(e) for e in range(3)]
    run.save_checkpoint({"next_epoch": 2, "history": rows[:2], "w": torch.arange(3.0)})
    run.write_metrics(rows)  # epoch 2's row reached the file, its checkpoint did not
    state = run.load_checkpoint()
    assert state["next_epoch"] == 2 and torch.equal(state["w"], torch.arange(3.0))
    run.write_metrics(state["history"])
    assert rundir.epochs_done(run.path) == 2 and [r["epoch"] for r in rundir.read_metrics(run.path)] == [0.0, 1.0]

    (run.path / rundir.CHECKPOINT).unlink()
    with pytest.raises(RunDirError, match="checkpoint.pt is missing"):
        run.load_checkpoint()
    (run.path / rundir.CHECKPOINT).write_bytes(b"truncated")
    with pytest.raises(RunDirError, match="unreadable"):
        run.load_checkpoint()


def test_prepare_refuses_another_run(tiny_config):
    run = RunDir(tiny_config().out_dir)
    run.prepare(tiny_config())
    assert run.prepare(tiny_config("method.delta=0.5")) == []  # no finished epoch yet: nothing to protect
    run.prepare(tiny_config())
    run.write_metrics([_row(0)])  # one finished epoch: now the config is the run's
    with pytest.raises(RunDirError, match=r"method\.delta: .* -> 0\.5"):
        run.prepare(tiny_config("method.delta=0.5"))
    assert run.prepare(tiny_config("method.max_micro_batch=256")) == ["method.max_micro_batch: 512 -> 256"]
    other = RunDir(run.path.parent / "bare")
    other.path.mkdir()
    (other.path / rundir.METRICS).write_text("epoch\n0\n")
    with pytest.raises(RunDirError, match="no config.yaml"):
        other.prepare(tiny_config())


def test_old_format_directory(tmp_path):
    """A run written by an earlier version: metrics.csv without the later columns, summary.json
    without ``diverged``, no manifest.json. Readers take what is there; the report keeps the run
    with the missing columns empty."""
    import yaml
    from fixtures.fake_runs import write_run

    run = write_run(tmp_path / "runs", "old", val_acc=[40.0, 55.0])
    (run / rundir.MANIFEST).unlink()
    old = yaml.safe_load((run / rundir.CONFIG).read_text())
    for key in ("shadow", "primary_metric", "fidelity", "protocol"):  # keys added since
        del old[key]
    (run / rundir.CONFIG).write_text(yaml.safe_dump(old))
    (run / rundir.METRICS).write_text(
        "epoch,train_loss,train_acc,val_loss,val_acc,lr,batch_size,grad_diversity,"
        "optimizer_steps,samples_seen,wall_time_s\n"
        "0,2.0,30.0,1.9,40.0,0.1,128,,8,1000,1.5\n"
        "1,1.5,50.0,1.4,55.0,0.1,256,0.25,12,2000,2.5\n"
    )
    (run / rundir.SUMMARY).write_text(json.dumps({"finished": True, "epochs_completed": 2, "final_val_acc": 55.0}))
    rows = rundir.read_metrics(run)
    assert rows[0]["grad_diversity"] is None and "peak_memory_mb" not in rows[0] and rows[1]["batch_size"] == 256.0
    assert rundir.epochs_done(run) == 2 and rundir.read_manifest(run) is None
    assert rundir.summary_status(rundir.read_summary(run)) == "finished"

    from divebatch.analysis import collect_runs

    found = collect_runs([tmp_path / "runs"])
    assert found.runs["status"].tolist() == ["complete"] and found.runs["commit"].isna().all()
    assert found.epochs["peak_memory_mb"].isna().all() and found.epochs["val_acc"].tolist() == [40.0, 55.0]


def test_lenient_readers(tmp_path):
    assert rundir.read_summary(tmp_path) is None and rundir.read_metrics(tmp_path) == []
    assert rundir.epochs_done(tmp_path) == 0 and rundir.summary_status(None) == "missing"
    (tmp_path / rundir.SUMMARY).write_text("{not json")
    assert rundir.read_summary(tmp_path) is None
    with pytest.raises(ValueError):  # the trainer does not train over an unreadable summary
        RunDir(tmp_path).read_summary()
    assert rundir.summary_status({"finished": False}) == "unfinished"
    assert rundir.summary_status({"finished": True, "diverged": True}) == "diverged"
    (tmp_path / rundir.METRICS).write_text("epoch,val_acc\n0,fifty\n")
    with pytest.raises(ValueError):
        rundir.read_metrics(tmp_path)
    (tmp_path / rundir.METRICS).write_text("epoch,val_acc\n0,50.0,7\n")
    with pytest.raises(ValueError, match="more cells than the header"):
        rundir.read_metrics(tmp_path)


def test_atomic_write_keeps_old_content_on_failure(tmp_path):
    target = tmp_path / "summary.json"
    target.write_text("old")

    def fail(p):
        p.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError):
        rundir.atomic_write(target, fail)
    assert target.read_text() == "old"


def test_find_run_dirs_skips_nested_and_wandb(tmp_path):
    for d in ("a/seed1", "a/seed1/inner", "b/wandb/files", "c/seed2"):
        (tmp_path / d).mkdir(parents=True)
        (tmp_path / d / rundir.CONFIG).write_text("seed: 1\n")
    assert [d.relative_to(tmp_path).as_posix() for _, d in rundir.find_run_dirs([tmp_path])] == ["a/seed1", "c/seed2"]
    with pytest.raises(FileNotFoundError, match="runs directory not found"):
        rundir.find_run_dirs([tmp_path / "nope"])


def test_paths():
    assert rundir.runs_path("sweeps", "x").as_posix() == "runs/sweeps/x"  # relative to the working directory
    assert (rundir.REPO_ROOT / "pyproject.toml").is_file() and (rundir.REPO_ROOT / "src" / "divebatch").is_dir()


# ----------------------------------------------------------------------------- one writer per run folder

HOLDER = """
import sys, time
from divebatch.rundir import RunDir
RunDir(sys.argv[1]).lock()
print("locked", flush=True)
time.sleep(600)
"""


def _hold(path):
    """A live process holding ``path``'s writer lock (returned once it holds it)."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(path)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_second_writer_is_refused_and_a_killed_holder_leaves_no_stale_lock(tmp_path, tiny_config):
    import signal

    from divebatch.rundir import RunDirError
    from divebatch.training import train

    cfg = tiny_config("epochs=1")
    train(cfg)  # a finished run whose files must survive a refused second writer
    from pathlib import Path

    before = {p.name: p.read_bytes() for p in Path(cfg.out_dir).iterdir() if p.name != ".lock"}
    holder = _hold(cfg.out_dir)
    try:
        with pytest.raises(RunDirError) as err:
            train(cfg)
        msg = str(err.value)
        assert "\n" not in msg and str(cfg.out_dir) in msg and f"pid {holder.pid}" in msg
        after = {p.name: p.read_bytes() for p in Path(cfg.out_dir).iterdir() if p.name != ".lock"}
        assert after == before
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    summary = train(cfg)  # the kernel released the killed holder's lock: the trainer gets the folder
    assert summary["finished"] and summary["epochs_completed"] == 1


def test_the_lock_is_released_when_training_ends_or_fails(tmp_path, tiny_config):
    from divebatch.rundir import RunDir, RunDirError
    from divebatch.training import train

    cfg = tiny_config("epochs=1")
    train(cfg)
    free = RunDir(cfg.out_dir)
    free.lock()  # free again after a finished run (released in this process too)
    free.unlock()
    with pytest.raises(RunDirError, match="different config"):
        train(tiny_config("epochs=1", "optim.lr=0.5"))
    other = RunDir(cfg.out_dir)
    other.lock()
    other.unlock()
