"""Read run directories into one tidy table.

A run directory is any folder holding ``config.yaml`` (written by ``divebatch train``, format
fixed in the project README): ``metrics.csv`` has one row per finished epoch, ``summary.json``
says whether the run finished, ``manifest.json`` records the commit. :func:`collect_runs` walks
the given roots, keeps complete runs in :attr:`RunSet.epochs` (one row per run x epoch) and lists
every run, complete or not, in :attr:`RunSet.runs` with its ``status`` (``complete``, ``diverged``
or ``excluded``) and the reason it is left out of the aggregates. A *diverged* run (``summary.json``
says ``diverged: true``: its training loss became non-finite and it stopped) is a result, not a
crash: it is kept out of every accuracy and time aggregate, but listed and counted per group.
Problems are warned about (:class:`RunWarning`) and recorded, never raised: a report must survive
a crashed run.
"""

from __future__ import annotations

import functools
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from divebatch import rundir
from divebatch.config import TrainConfig
from divebatch.datasets import DATASETS, FAMILIES
from divebatch.methods import PAPER_METHODS, SGD_LARGE, SGD_SMALL
from divebatch.provenance import label

# the run-directory format (file names, metrics.csv columns, readers) is divebatch.rundir's;
# METRIC_COLUMNS and find_run_dirs stay importable from here
from divebatch.rundir import METRIC_COLUMNS, find_run_dirs

# Columns without which no table can be made; the others may be absent in older runs.
REQUIRED_METRICS = ("epoch", "train_loss", "val_acc", "batch_size", "optimizer_steps", "wall_time_s")

# Hyperparameters that define a setting, per method (config key -> column). Keys a method ignores
# (delta for AdaBatch, everything adaptive for SGD) must not split its runs into groups.
COMMON_HPARAMS = {
    "model.name": "model",
    "model.width": "width",
    "epochs": "epochs_planned",
    "optim.lr": "lr0",
    "optim.momentum": "momentum",
    "optim.weight_decay": "weight_decay",
    "optim.schedule": "schedule",
    "optim.warmup_epochs": "warmup_epochs",
    "data.augment": "augment",
    "method.initial_batch_size": "initial_batch_size",
    # authors_code and clean runs of one config are different settings (docs/protocol.md)
    "protocol": "protocol",
}
ADAPTIVE_HPARAMS = {
    "method.max_batch_size": "max_batch_size",
    "method.resize_freq": "resize_freq",
    "method.lr_rescale": "lr_rescale",
}
METHOD_HPARAMS = {
    "sgd": COMMON_HPARAMS,
    "adabatch": {**COMMON_HPARAMS, **ADAPTIVE_HPARAMS},
    "divebatch": {
        **COMMON_HPARAMS,
        **ADAPTIVE_HPARAMS,
        "method.delta": "delta",
        "method.diversity_estimator": "diversity_estimator",
    },
    "schedule": {**COMMON_HPARAMS, **ADAPTIVE_HPARAMS},  # schedule controls (divebatch.schedule)
}
# The fidelity switches are recorded (run table) but do not split groups: `protocol` labels them, and
# runs of one group whose switches differ are warned about (collect_runs).
FIDELITY_HPARAMS = {
    f"fidelity.{k}": f"fidelity_{k}"
    for k in (
        "lr_rescale_rule",
        "warmup_at_lr_zero",
        "micro_batch_loss",
        "split_above",
        "running_grad_sum",
        "mean_units",
        "head_classes",
    )
}
# The primary metric a run is judged by (``primary_metric`` of its config: column, direction, the
# tolerance of the own target) and the optimizer, whose runs are named apart (AdamW ...).
METRIC_KEYS = {
    "primary_metric.column": "metric",
    "primary_metric.direction": "metric_direction",
    "primary_metric.within": "metric_within",
}
ALL_HPARAMS = {
    **METHOD_HPARAMS["divebatch"],
    "method.max_micro_batch": "max_micro_batch",
    "data.train_subset": "train_subset",
    "optim.name": "optimizer",
    "method.lr_scaling": "lr_scaling",
    **METRIC_KEYS,
    **FIDELITY_HPARAMS,
}
# protocol value -> what tables show (docs/protocol.md); null (not set) shows as "-"
PROTOCOL_NAMES = {"authors_code": "authors' code", "clean": "clean"}
STATUSES = ("complete", "diverged", "excluded")
# Short names for the setting label ("delta=0.1, resize_freq=20").
_SHORT = {"initial_batch_size": "m0", "max_batch_size": "max_bs", "epochs_planned": "epochs", "lr0": "lr"}

# Dataset families of the claims (docs/protocol.md, "The claims"; divebatch.datasets); the name of a
# subset (cifar10-mini.npz) starts with its family.
# A run's method is its config's display_name (divebatch.methods.VARIANTS). Runs written before that
# key existed are named from (method.name, lr_rescale); SGD is split into small/large batch later.
DISPLAY_NAMES = {(v.policy, v.lr_rescale): v.display_name for v in PAPER_METHODS if v.policy != "sgd"}
OPTIMIZER_NAMES = {"adamw": "AdamW"}  # optim.name -> prefix of the display name (SGD runs have none)
GROUP = ["dataset", "method", "setting"]
# columns of RunSet.runs that describe the run's status, not copied into RunSet.epochs
_RUN_ONLY = ("complete", "status", "reason", "diverged", "diverged_epoch")


class RunWarning(UserWarning):
    """A run directory is incomplete, unreadable, duplicated, or a seed is missing."""


@dataclass
class RunSet:
    """Runs found under some roots.

    Attributes:
        epochs: tidy table, one row per complete run x epoch: run-level columns (``run_id``,
            ``profile``, ``dataset``, ``family``, ``method``, ``method_name``, ``setting``, ``seed``,
            hyperparameter columns of :data:`ALL_HPARAMS`, ``n_train``, ``commit``, ``device`` (manifest.json:
            ``cuda:<GPU>`` or ``cpu:<processor> xN threads``)) plus
            :data:`METRIC_COLUMNS` (accuracies in percent, times in seconds, cumulative steps).
        runs: one row per run directory found, with ``complete`` (bool: used in the aggregates),
            ``status`` (``complete`` | ``diverged`` | ``excluded``), ``reason`` (why it is left
            out, e.g. ``diverged at epoch 3 (training loss non-finite)`` with a 1-based epoch;
            empty when complete), ``diverged_epoch`` (0-based, NaN unless diverged) and
            ``epochs_completed`` (rows in metrics.csv).
        warnings: every problem found, one sentence each (also emitted as :class:`RunWarning`).
        missing_seeds: ``(profile, dataset, method, setting) -> sorted seeds`` present elsewhere in
            the profile's dataset but without a complete or diverged run in this group (a diverged
            seed is counted as diverged, not as missing).
    """

    epochs: pd.DataFrame
    runs: pd.DataFrame
    warnings: list[str] = field(default_factory=list)
    missing_seeds: dict[tuple[str, str, str, str], list[int]] = field(default_factory=dict)

    @property
    def profiles(self) -> list[str]:
        return sorted(self.runs["profile"].dropna().unique()) if len(self.runs) else []

    def select(self, profile: str) -> "RunSet":
        """The runs of one profile (a report never mixes profiles)."""
        # a run whose config could not be read has no profile: list it in every profile's report
        keep = (self.runs["profile"] == profile) | self.runs["profile"].isna()
        ep = self.epochs[self.epochs["profile"] == profile] if len(self.epochs) else self.epochs
        missing = {k: v for k, v in self.missing_seeds.items() if k[0] == profile}
        return RunSet(ep.reset_index(drop=True), self.runs[keep].reset_index(drop=True), list(self.warnings), missing)

    def provenance(self, datasets: list[str] | None = None) -> str:
        """:func:`divebatch.provenance.label` for the complete runs (of ``datasets`` if given).

        The commit is the one all runs' ``manifest.json`` agree on, ``mixed`` when they differ,
        ``unknown`` when none records one.
        """
        runs = self.runs[self.runs["complete"]]
        if datasets is not None:
            runs = runs[runs["dataset"].isin(datasets)]
        profiles = sorted(runs["profile"].unique()) or self.profiles or ["none"]
        data = ",".join(sorted(runs["dataset"].unique())) or "none"
        seeds = sorted(int(s) for s in runs["seed"].unique())
        return label("+".join(profiles), data, seeds, commit=agreed_commit(runs["commit"]))


def agreed_commit(commits: pd.Series) -> str:
    """The single commit in ``commits`` (shortened to 7 hex digits), with ``+dirty`` when any run
    had uncommitted changes; ``mixed`` when the runs come from different commits, ``unknown`` when
    none is recorded."""
    known = {c for c in commits.dropna() if c and c != "unknown"}
    if not known:
        return "unknown"
    heads = {c.partition("+")[0] for c in known}
    if len(heads) > 1:
        return "mixed"
    return heads.pop()[:7] + ("+dirty" if any(c.endswith("+dirty") for c in known) else "")


def dataset_name(cfg: DictConfig) -> str:
    """Readable dataset name: ``data.name``, the file stem for ``npz`` and ``text``, the folder name for a
    Tiny-ImageNet sample, with ``/n=N`` when ``data.train_subset`` keeps N training samples."""
    name = str(cfg.data.name)
    path, info = OmegaConf.select(cfg, "data.path"), DATASETS.get(name)
    # a data set read from a path of the user's (not its full set's folder) is named by the path
    if path and info is not None and info.needs_path and Path(str(path)).name not in ("", info.folder):
        name = Path(str(path)).stem if info.path == "file" else Path(str(path)).name
    subset = OmegaConf.select(cfg, "data.train_subset")
    return f"{name}/n={subset}" if subset else name


def dataset_family(dataset: str) -> str:
    """The dataset of the claims (docs/protocol.md) a (sub)set belongs to (``cifar10-mini/n=2000`` -> ``cifar10``), else
    the name itself."""
    norm = re.sub(r"[-\s]", "_", dataset.lower())
    for fam in FAMILIES:
        # "tiny" alone is not enough: tinyshakespeare is no Tiny-ImageNet
        if norm.startswith(fam) or (fam == "tiny_imagenet" and norm.startswith(("tinyimagenet", "tiny_in"))):
            return fam
    return dataset.split("/")[0]


def _load_config(path: Path) -> DictConfig:
    # Merge onto the schema so older run configs get today's defaults; fall back to the raw file
    # when it holds keys the schema no longer knows. No validation: data paths of the machine that
    # trained need not exist on the machine that reports.
    raw = OmegaConf.load(path)
    try:
        return OmegaConf.merge(_schema(), raw)
    except OmegaConfBaseException:
        return OmegaConf.merge(OmegaConf.create(OmegaConf.to_container(_schema())), raw)


@functools.lru_cache(maxsize=1)
def _schema() -> DictConfig:
    return OmegaConf.structured(TrainConfig)


def _display_path(root: Path, run_dir: Path) -> str:
    # Relative to the root's parent: no absolute path of this machine lands in a table.
    rel = run_dir.relative_to(root)
    return root.name if str(rel) == "." else f"{root.name}/{rel.as_posix()}"


def _read_run(root: Path, run_dir: Path) -> tuple[dict, pd.DataFrame | None]:
    """One run's row for :attr:`RunSet.runs` and its metrics (None when unusable)."""
    row: dict = {
        "run_id": _display_path(root, run_dir),
        "complete": False,
        "reason": "",
        "diverged": False,
        "diverged_epoch": np.nan,
    }
    try:
        cfg = _load_config(run_dir / rundir.CONFIG)
    except (OSError, OmegaConfBaseException, ValueError, yaml.YAMLError) as err:
        first = (str(err).splitlines() or [""])[0].replace(str(run_dir), row["run_id"])
        row.update(
            profile=None,
            dataset=None,
            status="excluded",
            reason=f"config.yaml unreadable ({type(err).__name__}: {first})",
        )
        return row, None
    _config_columns(row, cfg, run_dir)
    if OmegaConf.select(cfg, "shadow.enabled", default=False):  # read by divebatch.analysis.estimators only
        row.update(
            status="excluded",
            reason="shadow measurement run (estimator study: estimators_shadow table)",
            epochs_completed=np.nan,
        )
        return row, None
    metrics = _read_metrics(row, run_dir)
    if metrics is not None:
        summary = rundir.read_summary(run_dir)
        row["reason"] = _incomplete(row, metrics, summary, int(cfg.epochs))
        # samples per epoch = training-set size n used by DiveBatch's rule (up to a dropped last batch)
        row["n_train"] = metrics["samples_seen"].iloc[0] if len(metrics) else np.nan
    row["complete"] = not row["reason"]
    row["status"] = "complete" if row["complete"] else "diverged" if row["diverged"] else "excluded"
    return row, metrics if row["complete"] else None


def _config_columns(row: dict, cfg: DictConfig, run_dir: Path) -> None:
    """Fill a run's row from its config, manifest and summary: profile, dataset, method, seed, the
    hyperparameter columns of :data:`ALL_HPARAMS`, commit, device, finished."""
    method_name = str(cfg.method.name)
    row.update(
        profile=str(cfg.profile),
        dataset=dataset_name(cfg),
        method_name=method_name,
        seed=int(cfg.seed),
        display_name=OmegaConf.select(cfg, "display_name", default=None),
        **{col: OmegaConf.select(cfg, key) for key, col in ALL_HPARAMS.items()},
    )
    row["family"] = dataset_family(row["dataset"])
    row["lr_rescale"] = bool(row["lr_rescale"]) and method_name != "sgd"
    manifest = rundir.read_manifest(run_dir) or {}
    row["commit"] = manifest.get("commit")
    row["device"] = manifest.get("device")  # cuda:<GPU> or cpu:<processor>: what peak_memory_mb measured
    row["finished"] = rundir.summary_status(rundir.read_summary(run_dir)) in ("finished", "diverged")


def _read_metrics(row: dict, run_dir: Path) -> pd.DataFrame | None:
    """A run's ``metrics.csv`` with every column of :data:`METRIC_COLUMNS` (NaN where absent),
    sorted by epoch; None with the reason in ``row`` when it is missing, unreadable or lacks a
    column of :data:`REQUIRED_METRICS`."""
    if not (run_dir / rundir.METRICS).is_file():
        row["reason"] = "metrics.csv missing"
        return None
    try:
        metrics = rundir.read_metrics_frame(run_dir)
    except (OSError, ValueError, pd.errors.EmptyDataError) as err:
        row["reason"] = f"metrics.csv unreadable: {err}"
        return None
    missing_cols = [c for c in REQUIRED_METRICS if c not in metrics.columns]
    if missing_cols:
        row["reason"] = f"metrics.csv lacks columns {missing_cols}"
        return None
    for col in METRIC_COLUMNS:
        if col not in metrics.columns:
            metrics[col] = np.nan
    return metrics[list(METRIC_COLUMNS)].sort_values("epoch").reset_index(drop=True)


def _incomplete(row: dict, metrics: pd.DataFrame, summary: dict, planned: int) -> str:
    """Why a run with readable metrics is left out of the aggregates ("" when it is complete); sets
    ``epochs_completed`` and, for a diverged run, ``diverged`` and ``diverged_epoch`` in ``row``."""
    row["epochs_completed"] = len(metrics)
    status = rundir.summary_status(summary)
    if status == "missing":
        return "summary.json missing (run unfinished or crashed)"
    if status == "unfinished":
        return "summary.json says finished=false"
    if status == "diverged":
        row["diverged"] = True
        row["diverged_epoch"] = _diverged_epoch(summary, metrics)
        at = "" if np.isnan(row["diverged_epoch"]) else f" at epoch {int(row['diverged_epoch']) + 1}"
        return f"diverged{at} (training loss non-finite)"
    if len(metrics) < planned:
        return f"{len(metrics)} of {planned} epochs in metrics.csv"
    if list(metrics["epoch"]) != list(range(len(metrics))):
        return "epoch column is not 0, 1, ..., E-1"
    if metrics["val_acc"].isna().any():
        return "val_acc has empty values"
    return ""


def _diverged_epoch(summary: dict, metrics: pd.DataFrame) -> float:
    """0-based epoch at which a diverged run's training loss became non-finite: ``diverged_epoch``
    of summary.json, else the first non-finite ``train_loss`` in metrics.csv, else NaN."""
    value = summary.get("diverged_epoch")
    if isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value):
        return float(value)
    bad = np.flatnonzero(~np.isfinite(pd.to_numeric(metrics["train_loss"], errors="coerce").to_numpy(float)))
    return float(metrics["epoch"].iloc[bad[0]]) if len(bad) else float("nan")


def _name_methods(runs: pd.DataFrame) -> pd.Series:
    """Display names: each run's ``display_name`` (set by its method file, configs/methods/).

    A run written before that key existed is named by a guess: an SGD run is 'large batch' when its
    batch exceeds the smallest SGD batch of its profile, dataset and optimizer (docs/protocol.md,
    "Protocol per dataset": 128 small, 2048 large on CIFAR-10); runs with another optimizer than SGD
    are named after it (``optim.name=adamw``: ``AdamW (small batch)``, ``AdamW DiveBatch + sqrt lr
    rescale``, ...); ``sqrt`` marks the square-root lr rule.
    """
    names = pd.Series(
        [DISPLAY_NAMES.get((m, bool(r))) for m, r in zip(runs["method_name"], runs["lr_rescale"])],
        index=runs.index,
        dtype=object,
    )
    optimizer = runs["optimizer"].fillna("sgd") if "optimizer" in runs else pd.Series("sgd", index=runs.index)
    sgd = runs["method_name"] == "sgd"
    smallest = (
        runs[sgd].assign(_o=optimizer[sgd]).groupby(["profile", "dataset", "_o"])["initial_batch_size"].transform("min")
    )
    names[sgd] = np.where(runs.loc[sgd, "initial_batch_size"] > smallest, SGD_LARGE, SGD_SMALL)
    if "lr_scaling" in runs:
        sqrt = runs["lr_rescale"].astype(bool) & (runs["lr_scaling"] == "sqrt") & names.notna()
        names[sqrt] = names[sqrt].str.replace("lr rescale", "sqrt lr rescale")
    for opt, shown in OPTIMIZER_NAMES.items():
        mine = (optimizer == opt) & names.notna()
        names[mine & sgd] = names[mine & sgd].str.replace("SGD", shown)
        names[mine & ~sgd] = shown + " " + names[mine & ~sgd]
    if "display_name" in runs:  # recorded by the run: no guess
        given = runs["display_name"].notna()
        names[given] = runs.loc[given, "display_name"]
    return names.fillna(runs["method_name"])


def protocol_name(value) -> str:
    """What tables show for a run's ``protocol``: ``authors' code``, ``clean``, ``-`` when null."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "-"
    return PROTOCOL_NAMES.get(str(value), str(value))


def _plain(value) -> str:
    if value is None:
        return "null"  # as config.yaml writes it (protocol: null)
    # a column holding NaN for unreadable runs turns ints into floats: print 20, not 20.0
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _settings(runs: pd.DataFrame) -> pd.Series:
    """Setting label per run: the method's hyperparameters that vary within its dataset and method.

    Empty when the dataset has one setting of that method. Short names from :data:`_SHORT`;
    ``protocol`` appears as in config.yaml (``protocol=clean``, ``protocol=authors_code``,
    ``protocol=null``).
    """
    out = pd.Series("", index=runs.index, dtype=object)
    for (_, method_name, _), g in runs.groupby(["dataset", "method_name", "method"]):
        cols = [
            c
            for c in METHOD_HPARAMS.get(method_name, COMMON_HPARAMS).values()
            if c != "lr_rescale" and g[c].map(_plain).nunique() > 1
        ]
        if not cols:
            continue
        values = {c: [_plain(v) for v in g[c]] for c in cols}
        out[g.index] = [", ".join(f"{_SHORT.get(c, c)}={values[c][i]}" for c in cols) for i in range(len(g))]
    return out


def collect_runs(roots: list[str | Path] | str | Path) -> RunSet:
    """Read every run directory under ``roots`` (see module docstring).

    A run is excluded from :attr:`RunSet.epochs` (and so from every aggregate) when its config or
    metrics are unreadable, ``summary.json`` is missing or says ``finished: false``, ``metrics.csv``
    has fewer rows than the config's ``epochs``, or it duplicates the (group, seed) of another run.
    A run whose ``summary.json`` says ``diverged: true`` is left out the same way but with status
    ``diverged`` (counted per group by the main table). Seeds present for some group of a dataset
    but with neither a complete nor a diverged run in another are recorded in
    :attr:`RunSet.missing_seeds`. Runs of one group whose ``fidelity.*`` switches differ are
    aggregated together (``protocol`` is what splits groups) and warned about. Each problem is
    warned about with :class:`RunWarning`.

    Args:
        roots: one or more folders (a run directory itself is fine).
    Returns:
        The :class:`RunSet`.
    Raises:
        FileNotFoundError: a root does not exist.
    """
    roots = [roots] if isinstance(roots, (str, Path)) else list(roots)
    rows, metrics, problems = [], {}, []
    for root, run_dir in find_run_dirs(roots):
        row, m = _read_run(root, run_dir)
        rows.append(row)
        if m is not None:
            metrics[row["run_id"]] = m
        elif row["status"] == "diverged":
            problems.append(
                f"diverged run {row['run_id']}: {row['reason']}; left out of the aggregates, "
                "counted in the main table's diverged column"
            )
        else:
            problems.append(f"excluded run {row['run_id']}: {row['reason']}")
    runs = pd.DataFrame(rows)
    if runs.empty:
        return RunSet(
            pd.DataFrame(columns=["run_id", "profile", *GROUP, "seed", *METRIC_COLUMNS]),
            pd.DataFrame(columns=["run_id", "profile", *GROUP, "seed", "complete", "status", "reason"]),
            [],
            {},
        )
    runs = _name_groups(runs)
    problems += _mark_duplicates(runs)
    missing = _missing_seeds(runs, problems)
    problems += _fidelity_problems(runs)
    for msg in problems:
        warnings.warn(msg, RunWarning, stacklevel=2)
    return RunSet(_epochs_table(runs, metrics), runs, problems, missing)


def _name_groups(runs: pd.DataFrame) -> pd.DataFrame:
    """``method`` (display name) and ``setting`` of every readable run, sorted by ``run_id``."""
    readable = runs["method_name"].notna() if "method_name" in runs else pd.Series(False, index=runs.index)
    runs["method"], runs["setting"] = None, ""
    if readable.any():
        ok = runs[readable]
        runs.loc[readable, "method"] = _name_methods(ok)
        # settings are decided per profile so a sweep never renames the main runs' groups
        for _, g in runs[readable].groupby("profile"):
            runs.loc[g.index, "setting"] = _settings(g)
    return runs.sort_values("run_id").reset_index(drop=True)


def _mark_duplicates(runs: pd.DataFrame) -> list[str]:
    """Exclude (in place) every complete run that repeats the profile, group and seed of another;
    the first by path is kept. Returns one problem per run excluded."""
    problems = []
    for _, g in runs[runs["complete"]].groupby(["profile", *GROUP, "seed"]):
        for i in g.index[1:]:
            runs.loc[i, ["complete", "status", "reason"]] = [False, "excluded", f"duplicate of {g['run_id'].iloc[0]}"]
            problems.append(f"excluded run {runs.loc[i, 'run_id']}: {runs.loc[i, 'reason']}")
    return problems


def _missing_seeds(runs: pd.DataFrame, problems: list[str]) -> dict[tuple[str, str, str, str], list[int]]:
    """:attr:`RunSet.missing_seeds`; one problem per group that lacks seeds is appended to ``problems``."""
    missing: dict[tuple[str, str, str, str], list[int]] = {}
    for (profile, _dataset), d in runs[runs["method"].notna()].groupby(["profile", "dataset"]):
        expected = set(d["seed"].astype(int))
        for key, g in d.groupby(GROUP):
            lack = sorted(expected - set(g.loc[g["complete"] | g["diverged"], "seed"].astype(int)))
            if lack:
                missing[(profile, *key)] = lack
                problems.append(
                    f"profile {profile}, {key[0]}, {key[1]}{' (' + key[2] + ')' if key[2] else ''}: "
                    f"no complete run for seed(s) {lack}; aggregates use {len(expected) - len(lack)} seed(s)"
                )
    return missing


def _fidelity_problems(runs: pd.DataFrame) -> list[str]:
    """One problem per group whose complete runs differ in a ``fidelity.*`` switch (aggregated anyway)."""
    problems = []
    for (profile, *key), g in runs[runs["complete"]].groupby(["profile", *GROUP]):
        differ = [c for c in FIDELITY_HPARAMS.values() if c in g and g[c].map(_plain).nunique() > 1]
        if differ:
            problems.append(
                f"profile {profile}, {', '.join(k for k in key if k)}: runs differ in {differ} but share "
                f"protocol={_plain(g['protocol'].iloc[0])}; they are aggregated together"
            )
    return problems


def _epochs_table(runs: pd.DataFrame, metrics: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """:attr:`RunSet.epochs`: every complete run's metrics with its run-level columns."""
    keep = runs[runs["complete"]]
    frames = []
    for _, r in keep.iterrows():
        m = metrics[r["run_id"]].copy()
        for col in keep.columns:
            if col not in _RUN_ONLY:
                m[col] = r[col]
        frames.append(m)
    run_cols = [c for c in keep.columns if c not in _RUN_ONLY]
    epochs = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=[*run_cols, *METRIC_COLUMNS])
    epochs = epochs[[*run_cols, *METRIC_COLUMNS]]
    if len(epochs):
        epochs["seed"] = epochs["seed"].astype(int)
    return epochs
