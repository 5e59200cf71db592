"""Time to target, speed-ups and bootstrap confidence intervals over seeds.

Definitions (docs/protocol.md, claim 2: "time to reach within 1 % of the final accuracy"):

- *authors' time to target* of a group of seeds (docs/protocol.md, "Time to target, the authors'
  definition"; :func:`authors_time_to_target`): on the **seed-mean** validation curve, target =
  final mean accuracy - :data:`WITHIN_PP` points; the first epoch whose mean reaches it; time =
  cumulative sum of the seed-mean *training* seconds per epoch (evaluation excluded). One number
  per group, so its speed-ups (:func:`authors_speedups`) have no interval.
- *time to target* of a run, in a unit U: the value of U at the end of the first epoch whose
  validation accuracy is >= the target. Units: ``epochs`` (number of epochs trained, i.e.
  0-based epoch + 1), ``optimizer_steps`` (cumulative optimizer steps, one per (micro-batched)
  batch), ``wall_time_s`` (cumulative training + evaluation seconds). Never reached: NaN.
- *own target*: the run's final validation accuracy minus :data:`WITHIN_PP` percentage points.
- *common target* of a dataset: the lowest mean final accuracy among its methods (and settings)
  minus :data:`WITHIN_PP` points, the same for every run of that dataset.
- *speed-up* of a method against a baseline in unit U: mean over seeds of the baseline's time
  to target divided by mean over seeds of the method's (> 1: the method is faster), over the
  seeds both have. Its 95% interval is a paired percentile bootstrap over those seeds
  (:func:`scipy.stats.bootstrap`), seeds resampled jointly so seed-to-seed variation shared by
  both runs of a seed cancels.
- *accuracy change*: mean final accuracy of the method minus the baseline's, in percentage
  points, with the same paired bootstrap interval.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

WITHIN_PP = 1.0  # percentage points below the final accuracy that count as "reached"
# unit -> metrics.csv column (None: derived from the epoch index)
UNITS = {"epochs": None, "optimizer_steps": "optimizer_steps", "wall_time_s": "wall_time_s"}
UNIT_LABELS = {"epochs": "epochs", "optimizer_steps": "optimizer steps", "wall_time_s": "wall-clock s"}
# authors' definition: unit -> label (training seconds only, unlike wall_time_s)
AUTHORS_UNITS = {"epochs": "epochs", "optimizer_steps": "optimizer steps", "train_time_s": "training s"}
QUARTER = 0.25  # "accuracy at 25 % of the planned epochs"
CONFIDENCE = 0.95
N_RESAMPLES = 9999
BOOTSTRAP_SEED = 0  # fixed so a report is reproducible byte for byte


def time_to_target(metrics: pd.DataFrame, target: float) -> dict[str, float]:
    """Time for one run to first reach ``target`` validation accuracy, in every unit of :data:`UNITS`.

    Args:
        metrics: one run's ``metrics.csv`` rows (``epoch`` 0-based, ``val_acc`` in percent,
            cumulative ``optimizer_steps`` and ``wall_time_s``), any order.
        target: accuracy in percent.
    Returns:
        ``{"epochs": float, "optimizer_steps": float, "wall_time_s": float}``; NaN when never reached.
    """
    m = metrics.sort_values("epoch")
    hit = m[m["val_acc"] >= target]
    if hit.empty:
        return {u: float("nan") for u in UNITS}
    first = hit.iloc[0]
    return {u: float(first["epoch"] + 1 if col is None else first[col]) for u, col in UNITS.items()}


def quarter_epoch(planned_epochs: int) -> int:
    """0-based index of the epoch that ends the first quarter of training: ``ceil(0.25 * E) - 1``.

    E = 200 -> 49 (accuracy after 50 epochs), E = 90 -> 22 (after 23), E = 4 -> 0, E = 1 -> 0.

    Raises:
        ValueError: ``planned_epochs`` < 1.
    """
    if planned_epochs < 1:
        raise ValueError(f"planned_epochs={planned_epochs}; allowed: an integer >= 1")
    return math.ceil(QUARTER * planned_epochs) - 1


def seed_mean_curve(metrics: pd.DataFrame) -> pd.DataFrame:
    """Mean over seeds per epoch, as the authors' plotting notebook builds its curves
    (``pytorch-cifar@7289184 src/plot.ipynb``, ``process_directory``: ``groupby('epoch').mean``).

    Args:
        metrics: the per-epoch rows of every run of one group (``epoch`` 0-based, ``val_acc`` in
            percent, cumulative ``optimizer_steps``, ``epoch_time_s`` = training seconds of that
            epoch), any order.
    Returns:
        One row per epoch, sorted: ``epoch``, ``val_acc``, ``optimizer_steps``, ``epoch_time_s``
        (means over the runs that have that epoch; NaN where every run lacks the value).
    """
    cols = ["val_acc", "optimizer_steps", "epoch_time_s"]
    m = metrics[["epoch", *cols]].astype(float)
    return m.groupby("epoch", sort=True)[cols].mean().reset_index()


def authors_time_to_target(metrics: pd.DataFrame, within_pp: float = WITHIN_PP) -> dict[str, float]:
    """Time to target as the authors compute it, on the seed-mean curve of one group.

    Source: ``pytorch-cifar@7289184 src/plot.ipynb``, function
    ``calculate_epochs_and_times_to_reach_final_accuracy`` (raw lines 719-750); docs/protocol.md,
    "Time to target, the authors' definition". Steps: (1) mean validation accuracy over seeds
    per epoch (:func:`seed_mean_curve`); (2) target = the curve's last value - ``within_pp``
    percentage points (absolute); (3) the first epoch whose mean accuracy is >= the target;
    (4) time = sum of the seed-mean ``epoch_time_s`` (training only, evaluation excluded) over
    epochs up to and including it. Differs from :func:`time_to_target` per run, then averaged:
    the mean curve can cross its target at another epoch than the runs do on average.

    Args:
        metrics: per-epoch rows of every run of one group (see :func:`seed_mean_curve`).
        within_pp: percentage points below the final mean accuracy.
    Returns:
        ``{"target": percent, "epochs": number of epochs trained (0-based epoch + 1),
        "optimizer_steps": seed-mean cumulative steps at that epoch, "train_time_s": training
        seconds}``; all NaN for no rows, ``train_time_s`` NaN when an epoch up to the hit lacks
        ``epoch_time_s`` (runs written before it was logged).
    """
    nan = float("nan")
    if metrics.empty:
        return {"target": nan, **{u: nan for u in AUTHORS_UNITS}}
    curve = seed_mean_curve(metrics)
    target = float(curve["val_acc"].iloc[-1]) - within_pp
    hit = np.flatnonzero(curve["val_acc"].to_numpy() >= target)
    if not len(hit):  # only when the final mean is NaN
        return {"target": target, **{u: nan for u in AUTHORS_UNITS}}
    i = int(hit[0])
    # np.sum, not Series.sum: a missing epoch time must give NaN, not a smaller total
    return {"target": target, "epochs": float(curve["epoch"].iloc[i] + 1),
            "optimizer_steps": float(curve["optimizer_steps"].iloc[i]),
            "train_time_s": float(np.sum(curve["epoch_time_s"].to_numpy()[: i + 1]))}


def per_run(epochs: pd.DataFrame, group: list[str] | None = None) -> pd.DataFrame:
    """One row per run: final/best accuracy, final batch size, time to own and common target.

    Args:
        epochs: the tidy table of :class:`divebatch.analysis.collect.RunSet` (complete runs).
        group: columns identifying a method setting (default ``dataset, method, setting``).
    Returns:
        Columns ``run_id``, group columns, ``family``, ``method_name``, ``seed``, ``final_acc``,
        ``best_acc`` (percent), ``acc_at_25pct`` (percent, at epoch :func:`quarter_epoch` of the
        planned epochs ``epochs_planned``; NaN when that column is absent), ``peak_memory_mb`` (max
        over epochs; MB, CUDA allocator peak or peak RSS on CPU), ``final_batch_size``,
        ``final_train_loss``, ``own_target`` and ``common_target`` (percent), then ``own_<unit>``
        and ``common_<unit>`` for each unit.
    """
    group = group or ["dataset", "method", "setting"]
    rows, curves = [], {}
    for run_id, m in epochs.groupby("run_id", sort=False):
        m = curves[run_id] = m.sort_values("epoch")
        last = m.iloc[-1]
        row = {"run_id": run_id, **{c: last[c] for c in group}, "family": last.get("family"),
               "method_name": last.get("method_name"), "seed": int(last["seed"]),
               "initial_batch_size": last.get("initial_batch_size"),
               "final_acc": float(last["val_acc"]), "best_acc": float(m["val_acc"].max()),
               "acc_at_25pct": _acc_at_quarter(m, last.get("epochs_planned")),
               "peak_memory_mb": float(m["peak_memory_mb"].max()) if "peak_memory_mb" in m else float("nan"),
               "final_batch_size": float(last["batch_size"]), "final_train_loss": float(last["train_loss"])}
        row["own_target"] = row["final_acc"] - WITHIN_PP
        row.update({f"own_{u}": v for u, v in time_to_target(m, row["own_target"]).items()})
        rows.append(row)
    runs = pd.DataFrame(rows)
    if runs.empty:
        return runs
    targets = common_targets(runs, group)
    runs["common_target"] = runs["dataset"].map(targets)
    common = [time_to_target(curves[r], t) for r, t in zip(runs["run_id"], runs["common_target"])]
    for u in UNITS:
        runs[f"common_{u}"] = [c[u] for c in common]
    return runs


def _acc_at_quarter(m: pd.DataFrame, planned) -> float:
    """Validation accuracy (percent) at epoch :func:`quarter_epoch` of ``planned``; NaN if unknown."""
    if planned is None or not np.isfinite(float(planned)):
        return float("nan")
    row = m[m["epoch"] == quarter_epoch(int(planned))]
    return float(row["val_acc"].iloc[0]) if len(row) else float("nan")


def common_targets(runs: pd.DataFrame, group: list[str] | None = None) -> pd.Series:
    """Per dataset: lowest mean final accuracy among its groups minus :data:`WITHIN_PP` (percent)."""
    group = group or ["dataset", "method", "setting"]
    return runs.groupby(group)["final_acc"].mean().groupby(level="dataset").min() - WITHIN_PP


@dataclass(frozen=True)
class Interval:
    """A point estimate with its bootstrap interval over ``n`` seeds (NaN bounds when n < 2)."""

    value: float
    low: float
    high: float
    n: int

    def fmt(self, digits: int = 2, suffix: str = "") -> str:
        if not np.isfinite(self.value):
            return "n/a"
        core = f"{self.value:.{digits}f}{suffix}"
        if not np.isfinite(self.low):
            return f"{core} (n={self.n})"
        return f"{core} [{self.low:.{digits}f}, {self.high:.{digits}f}] (n={self.n})"


def _ratio_of_means(base, method, axis=-1):
    return np.mean(base, axis=axis) / np.mean(method, axis=axis)


def _difference_of_means(method, base, axis=-1):
    return np.mean(method, axis=axis) - np.mean(base, axis=axis)


def paired_bootstrap(x: np.ndarray, y: np.ndarray, statistic, confidence: float = CONFIDENCE) -> Interval:
    """Statistic of two seed-paired samples with a percentile bootstrap interval.

    Args:
        x, y: shape (n,) float arrays, element i of each from the same seed; NaN pairs are dropped.
        statistic: ``f(x, y, axis) -> float``, vectorised along ``axis``.
        confidence: two-sided level of the interval.
    Returns:
        :class:`Interval`; bounds are NaN with fewer than 2 pairs, equal to the value when all
        resamples agree (every seed gives the same numbers).
    """
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    n = len(x)
    if n == 0:
        return Interval(float("nan"), float("nan"), float("nan"), 0)
    value = float(statistic(x, y, axis=-1))
    if n < 2:
        return Interval(value, float("nan"), float("nan"), n)
    if np.ptp(x) == 0 and np.ptp(y) == 0:
        return Interval(value, value, value, n)
    with warnings.catch_warnings():
        # few seeds give few distinct resamples; scipy warns, the interval is still what we report
        warnings.simplefilter("ignore")
        res = stats.bootstrap((x, y), statistic, paired=True, vectorized=True, n_resamples=N_RESAMPLES,
                              confidence_level=confidence, method="percentile",
                              rng=np.random.default_rng(BOOTSTRAP_SEED))
    ci = res.confidence_interval
    return Interval(value, float(ci.low), float(ci.high), n)


def speedup(base_times: np.ndarray, method_times: np.ndarray) -> Interval:
    """Speed-up = mean(base_times) / mean(method_times), seed-paired bootstrap interval.

    Args:
        base_times, method_times: shape (n,) times to target of the baseline and the method for
            the same n seeds, in one unit (epochs, optimizer steps or seconds).
    """
    return paired_bootstrap(base_times, method_times, _ratio_of_means)


def authors_speedup(base_value: float, method_value: float) -> float:
    """Speed-up on the authors' definition: the baseline's :func:`authors_time_to_target` value
    divided by the method's, in one unit (> 1: the method is faster). One seed-mean curve each,
    so no interval. NaN when either is NaN or the method's value is 0."""
    base_value, method_value = float(base_value), float(method_value)
    if not (np.isfinite(base_value) and np.isfinite(method_value)) or method_value == 0:
        return float("nan")
    return base_value / method_value


def accuracy_change(method_acc: np.ndarray, base_acc: np.ndarray) -> Interval:
    """mean(method_acc) - mean(base_acc) in percentage points, seed-paired bootstrap interval."""
    return paired_bootstrap(method_acc, base_acc, _difference_of_means)


def paired(runs: pd.DataFrame, method_key: tuple, base_key: tuple, column: str,
           group: list[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Values of ``column`` for the seeds two groups share, aligned by seed: (method, base)."""
    group = group or ["dataset", "method", "setting"]

    def by_seed(key: tuple) -> pd.Series:
        mask = np.logical_and.reduce([runs[g].to_numpy() == k for g, k in zip(group, key)])
        return pd.Series(runs.loc[mask, column].to_numpy(float), index=runs.loc[mask, "seed"].to_numpy())

    m, b = by_seed(method_key), by_seed(base_key)
    seeds = sorted(set(m.index) & set(b.index))
    return m.loc[seeds].to_numpy(float), b.loc[seeds].to_numpy(float)
