"""Faults of a training run (docs/faults.md): each ends in one line naming the file, key or value and
what to do, with a documented exit status, and loses nothing already written. Ctrl-C, a read-only
folder, a full disk, a deleted manifest, a run that failed before its first epoch, a diverged
run rerun, a checkpoint that is not ours; epoch numbers 1-based in every message; wandb off unless
asked for, and inside the run folder and quiet on the network when on."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from conftest import TINY, cli_env, divebatch_cmd
from omegaconf import OmegaConf

from divebatch import rundir, training
from divebatch.config import load_config
from divebatch.data import DataError
from divebatch.rundir import RunDirError
from divebatch.training import train


def _rows(out) -> int:
    return rundir.epochs_done(out)


def _temporary_files(out) -> list[Path]:
    return sorted(Path(out).glob(".*.tmp"))


def _one_line_error(capsys, code_expected: int, argv: list[str]) -> str:
    from divebatch.cli import main

    assert main(argv) == code_expected
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


class _Crash(Exception):
    pass


def _cut_after_first_epoch(cfg, monkeypatch) -> None:
    """Train ``cfg`` until its first checkpoint is written, then stop as a killed process would."""
    save = rundir.RunDir.save_checkpoint

    def save_then_die(self, state):
        save(self, state)
        raise _Crash

    monkeypatch.setattr(rundir.RunDir, "save_checkpoint", save_then_die)
    with pytest.raises(_Crash):
        train(cfg)
    monkeypatch.setattr(rundir.RunDir, "save_checkpoint", save)


# ----------------------------------------------------------------------------- Ctrl-C


def test_ctrl_c_says_which_epoch_exits_130_and_the_run_resumes(tmp_path):
    """SIGINT to a `divebatch train` process in its second epoch: one line naming the epoch and the
    command to rerun, exit status 130, no temporary file; rerunning finishes the run from there."""
    yaml_path = tmp_path / "run.yaml"
    out = tmp_path / "run"
    # micro-batches of 2 samples make each epoch long enough (about a second) to be interrupted in
    OmegaConf.save(load_config(None, [*TINY, "epochs=4", "method.max_micro_batch=2", f"out_dir={out}"]), yaml_path)
    proc = subprocess.Popen(
        divebatch_cmd("train", str(yaml_path)), env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 120
        while not (out / "checkpoint.pt").exists():
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "no checkpoint within 120 s"
            time.sleep(0.01)
        proc.send_signal(signal.SIGINT)
        err = proc.communicate(timeout=60)[1].decode()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    done = torch.load(out / "checkpoint.pt", weights_only=True)["next_epoch"]
    assert 1 <= done < 4, "the run ended before the signal arrived"
    assert f"divebatch train: interrupted at epoch {done + 1}/4; rerun the same command to resume" in err
    assert not _temporary_files(out)

    summary = train(load_config(yaml_path, ["method.max_micro_batch=512"]))  # a runtime key: resumes, faster
    assert summary["finished"] and summary["epochs_completed"] == 4
    assert [r["epoch"] for r in json.loads((out / "manifest.json").read_text())["resumes"]] == [done]


# ----------------------------------------------------------------------------- read-only folder, full disk


def _deny_writes_under(monkeypatch, folder: Path, err: int = errno.EACCES):
    """``os.open``/``mkdir`` under ``folder`` fail as on a read-only folder (the tests run as root
    here, which chmod does not stop)."""
    real_open, real_mkdir = os.open, Path.mkdir

    def inside(path) -> bool:
        return Path(path).resolve().is_relative_to(folder.resolve())

    def deny_open(path, flags, *args, **kwargs):
        if inside(path) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise OSError(err, os.strerror(err), str(path))
        return real_open(path, flags, *args, **kwargs)

    def deny_mkdir(self, *args, **kwargs):
        if inside(self):
            raise OSError(err, os.strerror(err), str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(os, "open", deny_open)
    monkeypatch.setattr(Path, "mkdir", deny_mkdir)


@pytest.mark.parametrize("err", [errno.EACCES, errno.EROFS], ids=["permission", "read-only-fs"])
def test_a_read_only_output_folder_is_named_in_one_line(tmp_path, capsys, monkeypatch, err):
    locked = tmp_path / "locked"
    locked.mkdir()
    _deny_writes_under(monkeypatch, locked, err)
    out = locked / "run"
    with pytest.raises(RunDirError, match=r"locked.* is read-only .*Make the folder writable, or give another out_dir"):
        train(load_config(None, [*TINY, f"out_dir={out}"]))
    yaml_path = tmp_path / "run.yaml"
    OmegaConf.save(load_config(None, [*TINY, f"out_dir={out}"]), yaml_path)
    msg = _one_line_error(capsys, 2, ["train", str(yaml_path)])
    assert "read-only" in msg and str(locked) in msg
    assert not out.exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a folder without write permission")
def test_a_chmod_read_only_folder_is_named(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        with pytest.raises(RunDirError, match="is read-only"):
            train(load_config(None, [*TINY, f"out_dir={locked / 'run'}"]))
    finally:
        locked.chmod(0o755)


def test_a_read_only_file_during_training_is_named_and_leaves_no_temporary_file(tmp_path):
    target = tmp_path / "metrics.csv"
    target.write_text("old")

    def denied(p):
        p.write_text("half")
        raise PermissionError(errno.EACCES, "Permission denied", str(p))

    with pytest.raises(RunDirError, match="is read-only"):
        rundir.atomic_write(target, denied)
    assert target.read_text() == "old" and not _temporary_files(tmp_path)


DISK_FULL = {
    "oserror": OSError(errno.ENOSPC, "No space left on device"),
    "torch": RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 4352 vs 4240"),
}


@pytest.mark.parametrize("kind", sorted(DISK_FULL))
def test_disk_full_while_saving_the_checkpoint_keeps_the_previous_one(tiny_config, capsys, monkeypatch, kind):
    """torch.save fails half-way through the second checkpoint as on a full disk: the error says
    "disk full" in one line (exit 2), the first checkpoint and its metrics row are intact, no
    temporary file is left, and the same command resumes once there is space."""
    cfg = tiny_config("epochs=3")
    real_save, calls = torch.save, {"n": 0, "fail_at": 2}

    def save_on_full_disk(obj, path, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == calls["fail_at"]:
            Path(path).write_bytes(b"PK\x03\x04 half a zip file")
            raise DISK_FULL[kind]
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save_on_full_disk)
    with pytest.raises(RunDirError, match=r"disk full: could not write .*checkpoint\.pt .*free there"):
        train(cfg)
    out = Path(cfg.out_dir)
    assert not _temporary_files(out)
    assert torch.load(out / "checkpoint.pt", weights_only=True)["next_epoch"] == 1 and _rows(out) == 1
    calls.update(n=0, fail_at=1)
    msg = _one_line_error(capsys, 2, ["train", str(out / "config.yaml")])  # resumes, fails at its first save
    assert "disk full" in msg and "rerun the same command to resume" in msg
    assert torch.load(out / "checkpoint.pt", weights_only=True)["next_epoch"] == 1 and not _temporary_files(out)

    monkeypatch.setattr(torch, "save", real_save)
    assert train(cfg)["epochs_completed"] == 3


def test_an_unexpected_torch_error_while_saving_keeps_its_traceback(tiny_config, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("a bug in what is saved")

    monkeypatch.setattr(torch, "save", broken)
    with pytest.raises(RuntimeError, match="a bug in what is saved"):
        train(tiny_config("epochs=1"))


# ----------------------------------------------------------------------------- manifest, failed starts


def test_a_deleted_manifest_is_rebuilt_on_resume(tiny_config, monkeypatch, capsys):
    cfg = tiny_config("epochs=2")
    _cut_after_first_epoch(cfg, monkeypatch)
    out = Path(cfg.out_dir)
    first_id = json.loads((out / "manifest.json").read_text())["wandb_id"]
    (out / "manifest.json").unlink()
    capsys.readouterr()
    assert train(cfg)["epochs_completed"] == 2
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["rebuilt"]["epoch"] == 1 and [r["epoch"] for r in manifest["resumes"]] == [1]
    assert manifest["seed"] == cfg.seed and manifest["wandb_id"] != first_id
    log = capsys.readouterr().out
    assert "manifest.json was missing: rebuilt it" in log and "resumed at epoch 2/2 (1 finished)" in log


def test_an_unreadable_manifest_is_named_and_left_alone(tiny_config, monkeypatch):
    cfg = tiny_config("epochs=2")
    _cut_after_first_epoch(cfg, monkeypatch)
    manifest = Path(cfg.out_dir) / "manifest.json"
    manifest.write_text("{cut short")
    with pytest.raises(RunDirError, match=r"manifest\.json is not valid JSON .*Delete it and rerun"):
        train(cfg)
    assert manifest.read_text() == "{cut short"


def test_a_run_that_failed_before_its_first_epoch_does_not_block_its_folder(tiny_config, monkeypatch):
    """A start that fails after config.yaml was written (here: its data) leaves no result, so the
    corrected command with another config trains in the same folder; once an epoch is finished,
    another config is refused again."""

    def missing(cfg):
        raise DataError("data.path='x.npz': no such file")

    real = training.build_data
    monkeypatch.setattr(training, "build_data", missing)
    with pytest.raises(DataError):
        train(tiny_config("optim.lr=0.5"))
    assert (Path(tiny_config().out_dir) / "config.yaml").exists()
    monkeypatch.setattr(training, "build_data", real)
    assert train(tiny_config("epochs=1"))["finished"]  # another config: not refused
    assert OmegaConf.load(Path(tiny_config().out_dir) / "config.yaml").optim.lr == 0.05
    with pytest.raises(RunDirError, match="different config"):
        train(tiny_config("epochs=1", "optim.lr=0.5"))


# ----------------------------------------------------------------------------- epoch numbers


def test_messages_number_epochs_from_one(tiny_config, monkeypatch, capsys):
    cfg = tiny_config("epochs=3", "method.name=sgd")
    _cut_after_first_epoch(cfg, monkeypatch)
    capsys.readouterr()
    summary = train(cfg)
    log = capsys.readouterr().out
    assert "resumed at epoch 2/3 (1 finished)" in log  # epoch 2 is the next to train
    assert f"at epoch {summary['best_epoch'] + 1}/3" in log.splitlines()[-1]  # best_epoch: metrics.csv's 0-based row
    assert not any(line.startswith("[divebatch] epoch 1/3") for line in log.splitlines())  # not trained again


def test_rerunning_a_diverged_run_says_it_diverged(tiny_config, capsys):
    cfg = tiny_config("optim.lr=1e38", "epochs=4", "method.name=sgd")
    summary = train(cfg)
    at = summary["diverged_epoch"] + 1
    assert f"epoch {at}/4: the training loss became" in capsys.readouterr().out
    assert json.dumps(train(cfg)) == json.dumps(summary)  # (NaN losses: compared as written)
    log = capsys.readouterr().out
    assert f"diverged in epoch {at}/4" in log and "finished already" not in log


# ----------------------------------------------------------------------------- a checkpoint that is not ours


class Foreign:
    pass


@pytest.mark.parametrize("damage", ["foreign", "garbage"])
def test_an_unloadable_checkpoint_never_suggests_an_unsafe_load(tiny_config, monkeypatch, capsys, damage):
    """torch's own message advises ``weights_only=False`` (which runs code from the file): never passed on."""
    cfg = tiny_config("epochs=2")
    _cut_after_first_epoch(cfg, monkeypatch)
    ckpt = Path(cfg.out_dir) / "checkpoint.pt"
    if damage == "foreign":
        torch.save({"model": Foreign()}, ckpt)
    else:
        ckpt.write_bytes(b"\x80\x02garbage" * 300)
    before = ckpt.read_bytes()
    with pytest.raises(RunDirError, match="is unreadable") as info:
        train(cfg)
    assert "weights_only" not in str(info.value) and "trust" not in str(info.value)
    msg = _one_line_error(capsys, 2, ["train", str(Path(cfg.out_dir) / "config.yaml")])
    assert "weights_only" not in msg and ("Foreign" in msg if damage == "foreign" else True)
    assert ckpt.read_bytes() == before


# ----------------------------------------------------------------------------- wandb


def test_wandb_is_off_unless_asked_for(tmp_path):
    cfg = load_config(None, [t for t in TINY if not t.startswith("wandb.")] + [f"out_dir={tmp_path / 'run'}"])
    assert cfg.wandb.mode == "disabled"
    train(cfg)
    assert not (tmp_path / "run" / "wandb").exists()


@pytest.mark.parametrize("mode", ["offline", "online"])
def test_wandb_environment_keeps_files_in_the_run_folder_and_offline_quiet(tmp_path, monkeypatch, mode):
    """What wandb.init sees: its folders inside the run folder; offline, the process-wide offline
    mode, no error reporting (its telemetry looks up wandb's server) and no system monitor; the
    environment restored afterwards, and a folder the user chose kept."""
    import wandb

    from divebatch.wandb_logging import WandbLogger

    for var in ("WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_CONFIG_DIR", "WANDB_MODE", "WANDB_ERROR_REPORTING"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.delenv("WANDB_SWEEP_ID", raising=False)
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "mine"))
    seen = {}

    class FakeRun:
        summary: dict = {}

        def log(self, *args, **kwargs):
            pass

        def finish(self):
            pass

    def init(**kwargs):
        seen.update(kwargs, env={k: v for k, v in os.environ.items() if k.startswith("WANDB_")})
        return FakeRun()

    monkeypatch.setattr(wandb, "init", init)
    cfg = load_config(None, [f"wandb.mode={mode}", f"out_dir={tmp_path / 'run'}"])
    logger = WandbLogger(cfg, tmp_path / "run", "id0")
    inside = str((tmp_path / "run" / "wandb").resolve())
    env = seen["env"]
    assert seen["dir"] == str(tmp_path / "run") and env["WANDB_CACHE_DIR"].startswith(inside)
    assert env["WANDB_DATA_DIR"] == str(tmp_path / "mine")  # the user's choice wins
    offline = mode == "offline"
    assert seen["settings"].x_disable_stats is offline
    assert (env.get("WANDB_MODE"), env.get("WANDB_ERROR_REPORTING")) == (
        ("offline", "false") if offline else (None, None)
    )
    assert env.get("WANDB_CONFIG_DIR", "").startswith(inside) is offline  # online: the user's login and settings
    logger.finish({})
    assert "WANDB_CACHE_DIR" not in os.environ and "WANDB_MODE" not in os.environ
    assert os.environ["WANDB_DATA_DIR"] == str(tmp_path / "mine")


def test_an_offline_wandb_run_writes_nothing_outside_its_folder(tmp_path):
    """A real offline run with HOME pointed at an empty folder: wandb's files (its run, the service's
    logs) are all under the run folder, none under HOME (~/.cache/wandb before)."""
    home = tmp_path / "home"
    home.mkdir()
    out = tmp_path / "run"
    yaml_path = tmp_path / "run.yaml"
    OmegaConf.save(load_config(None, [*TINY, "epochs=1", "wandb.mode=offline", f"out_dir={out}"]), yaml_path)
    env = {k: v for k, v in cli_env().items() if not k.startswith(("WANDB_", "XDG_"))}
    env["HOME"] = str(home)
    proc = subprocess.run(divebatch_cmd("train", str(yaml_path)), env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert list((out / "wandb").glob("offline-run-*/*.wandb"))
    assert list((out / "wandb" / "cache").rglob("core-debug-*.log"))  # the service's log, inside
    assert [p for p in home.rglob("*")] == []
