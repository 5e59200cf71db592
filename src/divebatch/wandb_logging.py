"""Logging a run to Weights & Biases: off unless the config asks (``wandb.mode``, default
``disabled``); when on, everything wandb writes stays inside the run folder and an offline run
makes no network lookups.

What the installed wandb (0.31) honours, checked by tracing a run's system calls
(``strace -f -e trace=connect``; docs/faults.md): without these settings an offline run resolves
wandb's server name from its telemetry thread and writes its service logs under ``~/.cache/wandb``.

* ``dir=<run folder>``: the run's own files (``<run folder>/wandb/offline-run-*``);
* ``WANDB_CACHE_DIR`` / ``WANDB_DATA_DIR`` (and, offline, ``WANDB_CONFIG_DIR``) inside
  ``<run folder>/wandb/``: the service's logs (``core-debug-*.log``, ``symon-debug-*.log``), the
  artifact cache and staging, the settings file; a value the user set is kept;
* offline: ``WANDB_MODE=offline`` (the process-wide settings, which decide whether the telemetry
  exporter starts), ``WANDB_ERROR_REPORTING=false`` and ``x_disable_stats`` (no system monitor).

The variables are set for the logger's life (``wandb.init`` to ``finish``) and restored after.
Online, the user's own wandb settings (``~/.config/wandb``, login) apply.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf


def wandb_environment(mode: str, run_dir: Path, environ=os.environ) -> dict[str, str]:
    """The environment variables to set for a wandb run of ``mode`` in ``run_dir`` (those the user
    set in ``environ`` are left out, so theirs win)."""
    where = Path(run_dir).resolve() / "wandb"
    env = {"WANDB_CACHE_DIR": str(where / "cache"), "WANDB_DATA_DIR": str(where / "data")}
    if mode == "offline":
        env.update(WANDB_CONFIG_DIR=str(where / "config"), WANDB_MODE="offline", WANDB_ERROR_REPORTING="false")
    return {k: v for k, v in env.items() if k not in environ}


class WandbLogger:
    """Logs each metrics row and the config to wandb (``wandb.mode``: ``disabled``, the default,
    logs nothing and imports no wandb; ``offline``; ``online``)."""

    def __init__(self, cfg: DictConfig, run_dir: Path, run_id: str):
        self.run = None
        self._restore: dict[str, str | None] = {}
        if cfg.wandb.mode == "disabled":
            return
        os.environ.setdefault("WANDB_SILENT", "true")
        # Under `wandb agent` the sweep's run already exists and wandb.init joins it through
        # WANDB_SWEEP_ID / WANDB_RUN_ID: pass no id, project or entity of ours (divebatch.orchestration.sweeps).
        sweep = bool(os.environ.get("WANDB_SWEEP_ID"))
        where = {} if sweep else dict(project=cfg.wandb.project, entity=cfg.wandb.entity, id=run_id)
        if sweep and cfg.wandb.mode != "online":
            print(
                f"[divebatch] warning: running under a wandb sweep agent with wandb.mode={cfg.wandb.mode}; "
                f"the sweep will not see this run's metrics (allowed for sweeps: wandb.mode=online)",
                file=sys.stderr,
            )
        env = wandb_environment(cfg.wandb.mode, run_dir)
        self._restore = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            import wandb

            self.run = wandb.init(
                group=cfg.wandb.group,
                name=cfg.wandb.name or Path(run_dir).name,
                tags=list(cfg.wandb.tags),
                config=OmegaConf.to_container(cfg, resolve=True),
                dir=str(run_dir),
                mode=cfg.wandb.mode,
                resume="allow",
                reinit="finish_previous",
                settings=wandb.Settings(x_disable_stats=cfg.wandb.mode == "offline"),
                **where,
            )
        except Exception as err:  # logging must never cost a training run
            print(f"[divebatch] warning: wandb.init failed ({err}); continuing without wandb", file=sys.stderr)
            self._restore_environment()

    def log(self, row: dict) -> None:
        if self.run is not None:
            self.run.log({k: v for k, v in row.items() if v is not None}, step=row["epoch"])

    def finish(self, summary: dict) -> None:
        if self.run is not None:
            self.run.summary.update(summary)
            self.run.finish()
        self._restore_environment()

    def _restore_environment(self) -> None:
        for key, value in self._restore.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        self._restore = {}
