"""The run directory: one folder per training run, its file names, its writer and its readers.

``divebatch train`` writes one run directory (``out_dir``), format fixed in the project README:

* ``config.yaml``: the resolved config (:data:`CONFIG`); a folder holding one *is* a run directory;
* ``manifest.json``: commit, seed, device, wandb id, resumes (:data:`MANIFEST`);
* ``metrics.csv``: one row per finished epoch, columns :data:`METRIC_COLUMNS` (:data:`METRICS`);
* ``summary.json``: written when the run ends (``finished``, ``diverged``, :data:`SUMMARY_KEYS`);
* ``checkpoint.pt``: the state to resume from (:data:`CHECKPOINT`);
* ``train.log``: the run's stdout/stderr under ``divebatch replicate`` (:data:`LOG`);
* ``.lock``: the writer lock, held by the one process training the run (:meth:`RunDir.lock`);
* ``shadow.csv`` / ``shadow_subsets.csv``: shadow-measurement runs only (:mod:`divebatch.shadow`).

Every file is written whole through a temporary file and a rename (:func:`atomic_write`), so a
reader (the orchestrator polling progress, a report during a replication) never sees half a file;
a write that fails (Ctrl-C, a full disk, a read-only folder) removes its temporary file and keeps
the old content, and the last two are named in one :class:`RunDirError` (docs/faults.md). The
manifest's bookkeeping (a new run, each resume, a deleted manifest rebuilt) is :class:`RunDir`'s.
The readers here are lenient where a report or an orchestrator must survive a crashed or older run
(a missing or unreadable file reads as None / empty) and strict where the trainer must not
overwrite results (:class:`RunDir`).

Paths: run and output paths given by the user (``out_dir``, ``--runs-dir``, ``--out``) and their
defaults (:func:`runs_path`) are relative to the working directory, which ``replicate/all.sh``
makes the repository root; files shipped with the repository (``uv.lock``, ``notebooks/``,
``docs/``) resolve from :data:`REPO_ROOT`, wherever the command runs.

This module imports only the standard library at import time: the orchestrator and the sweep
driver read run directories without loading torch, and ``bash replicate/gpu_check.sh`` (which reports
missing packages instead of failing on them) uses it too. ``omegaconf``, ``pandas`` and ``torch``
are imported by the functions that need them (config, metrics frame, checkpoint).
"""

from __future__ import annotations

import contextlib
import csv
import datetime
import errno
import fcntl
import json
import math
import os
import shutil
import socket
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable

if TYPE_CHECKING:
    from omegaconf import DictConfig

CONFIG = "config.yaml"
MANIFEST = "manifest.json"
METRICS = "metrics.csv"
SUMMARY = "summary.json"
CHECKPOINT = "checkpoint.pt"
LOG = "train.log"  # under divebatch replicate
LOCK = ".lock"  # the writer lock (RunDir.lock); its text names the last holder
SHADOW = "shadow.csv"
SHADOW_SUBSETS = "shadow_subsets.csv"

# metrics.csv columns, in file order (accuracies in percent, losses in nats per sample or token,
# times in seconds, optimizer_steps / samples_seen / wall_time_s cumulative, peak memory in MB)
METRIC_COLUMNS = (
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
)
# summary.json's numeric keys (besides finished, diverged and, for a diverged run, diverged_epoch)
SUMMARY_KEYS = (
    "epochs_completed",
    "final_val_acc",
    "best_val_acc",
    "best_epoch",
    "final_train_loss",
    "final_val_loss",
    "final_batch_size",
    "optimizer_steps",
    "wall_time_s",
)

REPO_ROOT = Path(__file__).resolve().parents[2]  # the checkout (src/divebatch/rundir.py -> .)
RUNS_ROOT = Path("runs")  # default parent of run directories, relative to the working directory


class RunDirError(RuntimeError):
    """The run directory holds something that the requested run must not overwrite or cannot use."""


# ----------------------------------------------------------------------------- paths


def runs_path(*parts: str | Path) -> Path:
    """A default output location under ``runs/`` (relative to the working directory, as every path
    the user gives), e.g. ``runs_path("sweeps", name)`` -> ``runs/sweeps/<name>``."""
    return RUNS_ROOT.joinpath(*parts)


def is_run_dir(path: str | Path) -> bool:
    """Whether ``path`` holds a ``config.yaml`` (a run directory, finished or not)."""
    return (Path(path) / CONFIG).is_file()


def find_run_dirs(roots: Iterable[str | Path]) -> list[tuple[Path, Path]]:
    """``(root, run_dir)`` for every folder holding ``config.yaml`` under ``roots`` (recursively),
    depth first in name order.

    A run directory's own subfolders are not searched, nor any ``wandb`` folder (wandb keeps a
    copy of ``config.yaml`` in its run files).

    Raises:
        FileNotFoundError: a root does not exist.
    """
    found = []
    for root in map(Path, roots):
        if not root.exists():
            raise FileNotFoundError(f"runs directory not found: {root}")
        stack = [root]
        while stack:
            d = stack.pop()
            if is_run_dir(d):
                found.append((root, d))
                continue
            stack.extend(sorted((p for p in d.iterdir() if p.is_dir() and p.name != "wandb"), reverse=True))
    return found


# ----------------------------------------------------------------------------- writing


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """Write through a temporary file in the same folder, then rename: readers never see half a file.

    On any failure (an error, Ctrl-C) the temporary file is removed and ``path`` keeps its old content.

    Args:
        path: the file to (re)place.
        write: called with the temporary path; writes the whole content there.
    Raises:
        RunDirError: the disk is full or the folder is read-only (:func:`write_failure`).
        OSError: any other failure to write, as raised.
    """
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(OSError):
            tmp.unlink()
        failure = write_failure(path, err) if isinstance(err, OSError) else None
        if failure is not None:
            raise failure from None
        raise


READ_ONLY_ERRNOS = (errno.EACCES, errno.EPERM, errno.EROFS)
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


def free_space(path: Path) -> str:
    """Free space of the file system holding ``path`` (or its nearest existing parent), e.g. ``"12.3 MB"``."""
    for p in (path, *path.parents):
        try:
            return f"{shutil.disk_usage(p).free / 1e6:.1f} MB"
        except OSError:
            continue
    return "unknown"


def disk_full_error(path: Path, detail: str) -> RunDirError:
    """The error of a write to ``path`` that failed for want of space (``detail``: the system's words)."""
    return RunDirError(
        f"disk full: could not write {path} ({detail}; {free_space(path.parent)} free there); "
        f"{path.name} keeps its previous content. Free some space and rerun the same command to resume."
    )


def write_failure(path: Path, err: OSError) -> RunDirError | None:
    """A :class:`RunDirError` naming a full disk or a read-only folder for ``err``, raised while
    writing ``path``; None for other errors (they keep their traceback)."""
    if err.errno in DISK_FULL_ERRNOS:
        return disk_full_error(path, err.strerror or "no space left")
    if err.errno in READ_ONLY_ERRNOS:
        return RunDirError(
            f"{path.parent} is read-only ({err.strerror}: {err.filename or path}): the run cannot write "
            f"{path.name} there. Make the folder writable, or give another out_dir."
        )
    return None


def utc_now() -> str:
    """The time now, UTC, ISO 8601 to the second (the manifest's times)."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def format_metrics(rows: list[dict]) -> str:
    """``metrics.csv``'s text: a header of :data:`METRIC_COLUMNS`, one line per row; floats as
    ``repr`` (round-trips exactly, ``nan``/``inf`` for non-finite), None as an empty cell.

    Raises:
        KeyError: a row lacks one of :data:`METRIC_COLUMNS`.
    """

    def fmt(v):
        return "" if v is None else (repr(v) if isinstance(v, float) else str(v))

    lines = [",".join(METRIC_COLUMNS)] + [",".join(fmt(r[c]) for c in METRIC_COLUMNS) for r in rows]
    return "\n".join(lines) + "\n"


def format_json(obj: dict) -> str:
    """``summary.json`` / ``manifest.json`` text: indented by 2, with a final newline."""
    return json.dumps(obj, indent=2) + "\n"


class RunDir:
    """The files of one run as the trainer sees them: config.yaml, manifest.json, metrics.csv,
    summary.json, checkpoint.pt (attributes ``config``, ``manifest``, ``metrics``, ``summary``,
    ``checkpoint``: their paths). Refuses, with :class:`RunDirError`, to overwrite another run."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.config, self.manifest = self.path / CONFIG, self.path / MANIFEST
        self.metrics, self.summary = self.path / METRICS, self.path / SUMMARY
        self.checkpoint = self.path / CHECKPOINT
        self._lock_fd: int | None = None

    def lock(self) -> None:
        """Become the folder's one writer: take an exclusive ``flock`` on ``.lock`` and keep it until
        :meth:`unlock` or the end of the process (the kernel releases it on any exit, SIGKILL
        included, so a killed run leaves no stale lock). Creates the folder; writes nothing else.
        Under torchrun, rank 0 alone holds it (it alone writes the run directory).

        Raises:
            RunDirError: another live process holds the lock (the message names the folder and that
                process); nothing in the folder was changed. Or the folder cannot be created or
                written (read-only, full disk: :func:`write_failure`).
        """
        if self._lock_fd is not None:
            return
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            failure = write_failure(self.path / LOCK, err)
            if failure is None:
                raise
            raise failure from None
        try:
            for attempt in range(5):  # a reader's probe (lock_holder) holds it for microseconds
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if attempt == 4:
                        raise
                    time.sleep(0.2)
        except BlockingIOError:
            holder = (
                os.pread(fd, 200, 0).decode(errors="replace").strip() or "a process that has not written its name yet"
            )
            os.close(fd)
            raise RunDirError(
                f"out_dir={str(self.path)!r} is being trained by another process ({holder}); nothing was "
                f"changed. Wait for it to end, or stop it and rerun this command to resume."
            ) from None
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {stamp}\n".encode(), 0)
        self._lock_fd = fd

    def unlock(self) -> None:
        """Release the writer lock (no-op when not held). The ``.lock`` file stays, naming the last holder."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def prepare(self, cfg: DictConfig) -> list[str]:
        """Take the writer lock (:meth:`lock`), then create the folder and write config.yaml, or check
        that an existing run has the same config (keys in ``config.RUNTIME_KEYS``, e.g.
        ``method.max_micro_batch``, may change; config.yaml then holds the new values). The
        config.yaml of a run that never finished an epoch (:meth:`started` is False: it failed
        before its first checkpoint) binds nothing: it is replaced, so the corrected command runs.

        Returns:
            The runtime keys that changed, as ``key: old -> new`` (empty for a new run).
        Raises:
            RunDirError: another process is training in the folder, the folder holds a run with
                another config, or results without a config.
        """
        from omegaconf import OmegaConf

        from divebatch.config import config_diffs, to_yaml

        self.lock()
        changed = []
        if self.config.exists() and self.started():
            old = OmegaConf.load(self.config)
            changed = [d for d in config_diffs(old, cfg, runtime=True) if d.startswith("method.")]
            diffs = config_diffs(old, cfg)
            if diffs:
                raise RunDirError(
                    f"out_dir={str(self.path)!r} holds a run with a different config ({'; '.join(diffs)}). "
                    f"Use another out_dir, or delete that folder to start over."
                )
        elif not self.config.exists() and (self.metrics.exists() or self.checkpoint.exists()):
            raise RunDirError(
                f"out_dir={str(self.path)!r} holds results but no config.yaml; refusing to overwrite them."
            )
        atomic_write(self.config, lambda p: p.write_text(to_yaml(cfg)))
        return changed

    def started(self) -> bool:
        """Whether the folder holds results: a checkpoint, a finished epoch in metrics.csv, or a summary."""
        return self.checkpoint.exists() or self.summary.exists() or epochs_done(self.path) > 0

    def load_checkpoint(self) -> dict | None:
        """The latest checkpoint (loaded to the CPU), or None for a fresh run.

        Raises:
            RunDirError: metrics exist without a checkpoint, or the checkpoint is truncated/corrupt.
        """
        if not self.checkpoint.exists():
            if self.metrics.exists() and len(self.metrics.read_text().splitlines()) > 1:
                raise RunDirError(
                    f"{self.metrics} has finished epochs but {self.checkpoint.name} is missing; "
                    f"refusing to restart over existing metrics. Delete the folder to start over."
                )
            return None
        import torch  # only the trainer reads checkpoints; readers of results need no torch

        try:
            return torch.load(self.checkpoint, map_location="cpu", weights_only=True)
        except Exception as err:  # torch raises several types for truncated/corrupt zip files
            raise RunDirError(
                f"checkpoint {self.checkpoint} is unreadable ({_unreadable(err)}). It is left untouched; "
                f"delete the run folder to start over."
            ) from None

    def save_checkpoint(self, state: dict) -> None:
        """Write ``state`` (tensors and plain values, ``torch.save``) to checkpoint.pt.

        Raises:
            RunDirError: the disk is full (torch's writer reports it as a RuntimeError, e.g.
                "unexpected pos") or the folder is read-only; the previous checkpoint is intact and
                no temporary file is left.
        """
        import torch

        def save(tmp: Path) -> None:
            try:
                torch.save(state, tmp)
            except RuntimeError as err:  # torch's zip writer does not raise OSError
                text = str(err)
                if not any(s in text for s in TORCH_WRITE_FAILURES):
                    raise
                raise disk_full_error(self.checkpoint, f"torch: {_first_line(text)}") from None

        atomic_write(self.checkpoint, save)

    def write_metrics(self, rows: list[dict]) -> None:
        """Rewrite metrics.csv from ``rows`` (:func:`format_metrics`). On resume the trainer passes
        the checkpoint's history, which drops any row written after the checkpoint."""
        text = format_metrics(rows)
        atomic_write(self.metrics, lambda p: p.write_text(text))

    def write_json(self, path: Path, obj: dict) -> None:
        """Write ``obj`` to ``path`` (the run's manifest or summary) as :func:`format_json`."""
        atomic_write(path, lambda p: p.write_text(format_json(obj)))

    def start(self, manifest: dict) -> None:
        """Write manifest.json of a new run: ``manifest``, with an empty list of ``resumes`` if it has none."""
        self.write_json(self.manifest, {**manifest, "resumes": manifest.get("resumes", [])})

    def resume(self, epoch: int, rebuild: Callable[[], dict], **facts) -> tuple[dict, bool]:
        """Record in manifest.json that training resumes after ``epoch`` finished epochs (also the
        0-based index of the next one), at :func:`utc_now`, with ``facts`` (commit, device, changed keys).

        Args:
            rebuild: returns a new run's manifest; used when manifest.json is missing (deleted by
                hand), and then marked ``rebuilt`` with this epoch (its commit, packages and device
                are this resume's, not the first start's).
        Returns:
            (the manifest as written, whether it was rebuilt).
        Raises:
            RunDirError: manifest.json exists but is not valid JSON (it is left untouched).
        """
        rebuilt = not self.manifest.exists()
        if rebuilt:
            manifest = {**rebuild(), "rebuilt": {"epoch": epoch, "time": utc_now()}}
        else:
            try:
                manifest = json.loads(self.manifest.read_text())
            except ValueError as err:
                raise RunDirError(
                    f"{self.manifest} is not valid JSON ({err}); it is left untouched. Delete it and rerun "
                    f"the same command: the run resumes and rebuilds it."
                ) from None
        manifest.setdefault("resumes", []).append({"epoch": epoch, "time": utc_now(), **facts})
        self.write_json(self.manifest, manifest)
        return manifest, rebuilt

    def read_summary(self) -> dict | None:
        """summary.json, or None before the run ends.

        Raises:
            ValueError: summary.json is not valid JSON (the trainer does not train over it).
        """
        return json.loads(self.summary.read_text()) if self.summary.exists() else None


# what torch's zip writer says when a write fails (disk full): "unexpected pos", "file write failed"
TORCH_WRITE_FAILURES = ("unexpected pos", "file write failed", "PytorchStreamWriter failed")


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else ""


def _unreadable(err: BaseException) -> str:
    """Why ``torch.load`` failed, in words that never advise loading the file unsafely (torch's own
    message suggests ``weights_only=False``, which can run code from the file)."""
    text = str(err)
    if "Weights only load failed" in text or "weights_only" in text:
        found = [
            line.split("WeightsUnpickler error:", 1)[1]
            for line in text.splitlines()
            if "WeightsUnpickler error:" in line
        ]
        what = found[0].split(". Please")[0].strip() if found else "not a checkpoint written by divebatch"
        return f"{type(err).__name__}: it holds data a safe load refuses: {what}"
    if isinstance(err, EOFError) or not text.strip():
        return f"{type(err).__name__}: the file is empty or cut short"
    return f"{type(err).__name__}: {_first_line(text).split('. ')[0]}"


def summarize(history: list[dict]) -> dict:
    """summary.json of a run from its metrics rows: final and best (of the finite) validation
    accuracy, ``best_epoch`` and, for a run whose training loss became non-finite, ``diverged_epoch``
    (both 0-based, the ``epoch`` column of metrics.csv; messages show them 1-based)."""
    finite = [r for r in history if math.isfinite(r["val_acc"])] or history
    best, last = max(finite, key=lambda r: r["val_acc"]), history[-1]
    diverged = [r["epoch"] for r in history if not math.isfinite(r["train_loss"])]
    return {
        "finished": True,
        "epochs_completed": len(history),
        "final_val_acc": last["val_acc"],
        "best_val_acc": best["val_acc"],
        "best_epoch": best["epoch"],
        "final_train_loss": last["train_loss"],
        "final_val_loss": last["val_loss"],
        "final_batch_size": last["batch_size"],
        "optimizer_steps": last["optimizer_steps"],
        "wall_time_s": last["wall_time_s"],
        "diverged": bool(diverged),
        **({"diverged_epoch": diverged[0]} if diverged else {}),
    }


# ----------------------------------------------------------------------------- reading


def lock_holder(run_dir: str | Path) -> str | None:
    """Who is training ``run_dir`` now: the text of its ``.lock`` (pid, host, start) while a live
    process holds the writer lock (:meth:`RunDir.lock`), None when none does (or no lock file exists).
    Probes with a shared ``flock`` that it releases at once."""
    path = Path(run_dir) / LOCK
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return os.pread(fd, 200, 0).decode(errors="replace").strip() or "a process that has not written its name yet"
    finally:
        os.close(fd)  # closing releases a shared lock taken above
    return None


def read_json(path: str | Path) -> dict | None:
    """A JSON file's content, None when it is missing or unreadable (a report survives a crashed run)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def read_summary(run_dir: str | Path) -> dict | None:
    """``summary.json`` of ``run_dir``; None when the run has not ended (missing) or it is unreadable."""
    return read_json(Path(run_dir) / SUMMARY)


def read_manifest(run_dir: str | Path) -> dict | None:
    """``manifest.json`` of ``run_dir``; None when missing or unreadable."""
    return read_json(Path(run_dir) / MANIFEST)


def read_config(run_dir: str | Path) -> DictConfig:
    """``config.yaml`` of ``run_dir`` as written (no schema merge, no validation).

    Raises:
        OSError: missing or unreadable; yaml/omegaconf errors when it is not a config mapping.
    """
    from omegaconf import OmegaConf

    return OmegaConf.load(Path(run_dir) / CONFIG)


def epochs_done(run_dir: str | Path) -> int:
    """Finished epochs written so far: the non-empty rows of ``metrics.csv`` after its header,
    0 when the file is absent or unreadable."""
    try:
        with open(Path(run_dir) / METRICS) as f:
            return max(0, sum(1 for line in f if line.strip()) - 1)
    except OSError:
        return 0


def read_metrics(run_dir: str | Path) -> list[dict]:
    """``metrics.csv`` rows as dicts ``column -> float`` (empty cells: None), in file order; the
    columns are the file's own (a run written by an older version may lack some of
    :data:`METRIC_COLUMNS`). Empty list when the file is absent or unreadable.

    Raises:
        ValueError: a cell is not a number, or a row has more cells than the header.
    """
    try:
        with open(Path(run_dir) / METRICS, newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError:
        return []
    out = []
    for i, r in enumerate(rows):
        if None in r:
            raise ValueError(
                f"{Path(run_dir) / METRICS}: row {i + 1} has more cells than the header "
                f"({len(r) - 1} columns); allowed: one cell per column"
            )
        out.append({k: (float(v) if v not in ("", None) else None) for k, v in r.items()})
    return out


def read_metrics_frame(run_dir: str | Path):
    """``metrics.csv`` as a pandas DataFrame, columns as in the file (pandas imported on call).

    Raises:
        OSError: missing or unreadable; ValueError / ``pandas.errors.EmptyDataError``: malformed.
    """
    import pandas as pd

    return pd.read_csv(Path(run_dir) / METRICS)


def summary_status(summary: dict | None) -> str:
    """What ``summary.json`` says of a run: ``missing`` (None: unfinished or crashed),
    ``unfinished`` (``finished: false``), ``diverged`` (finished with a non-finite training loss)
    or ``finished``."""
    if summary is None:
        return "missing"
    if not summary.get("finished"):
        return "unfinished"
    return "diverged" if summary.get("diverged") else "finished"
