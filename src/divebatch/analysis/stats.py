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

*Primary metric* (docs/analysis.md): a run is judged by the ``primary_metric`` its config declares
(``column``: ``val_acc`` or ``val_loss``; ``direction``: higher or lower is better; ``within``:
the own target's tolerance in the column's units). Everything above reads "accuracy" as that
column, "reached" as at or beyond the target in the good direction, the own target as final
-/+ ``within``, the common target as the worst mean final value -/+ ``within``. The default
(``val_acc``, higher, 1 pp) is the paper's. The *metric gain* is the metric change signed so that
> 0 is better (accuracy change for accuracy, minus the loss change for a loss).
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


def time_to_target(
    metrics: pd.DataFrame, target: float, column: str = "val_acc", higher: bool = True
) -> dict[str, float]:
    """Time for one run to first reach ``target`` in ``column``, in every unit of :data:`UNITS`.

    Args:
        metrics: one run's ``metrics.csv`` rows (``epoch`` 0-based, ``val_acc`` in percent,
            ``val_loss`` in nats, cumulative ``optimizer_steps`` and ``wall_time_s``), any order.
        target: value of ``column`` (percent for accuracy, nats for a loss).
        column: the primary metric's column.
        higher: reached means ``>= target`` (True) or ``<= target`` (a loss).
    Returns:
        ``{"epochs": float, "optimizer_steps": float, "wall_time_s": float}``; NaN when never reached.
    """
    m = metrics.sort_values("epoch")
    hit = m[m[column] >= target] if higher else m[m[column] <= target]
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


def seed_mean_curve(metrics: pd.DataFrame, column: str = "val_acc") -> pd.DataFrame:
    """Mean over seeds per epoch, as the authors' plotting notebook builds its curves
    (``pytorch-cifar@7289184 src/plot.ipynb``, ``process_directory``: ``groupby('epoch').mean``).

    Args:
        metrics: the per-epoch rows of every run of one group (``epoch`` 0-based, ``column``: the
            primary metric, ``val_acc`` in percent by default, cumulative ``optimizer_steps``,
            ``epoch_time_s`` = training seconds of that epoch), any order.
        column: the primary metric's column.
    Returns:
        One row per epoch, sorted: ``epoch``, ``column``, ``optimizer_steps``, ``epoch_time_s``
        (means over the runs that have that epoch; NaN where every run lacks the value).
    """
    cols = [column, "optimizer_steps", "epoch_time_s"]
    m = metrics[["epoch", *cols]].astype(float)
    return m.groupby("epoch", sort=True)[cols].mean().reset_index()


def authors_time_to_target(
    metrics: pd.DataFrame, within_pp: float = WITHIN_PP, column: str = "val_acc", higher: bool = True
) -> dict[str, float]:
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
        within_pp: percentage points below the final mean accuracy (for another primary metric:
            its ``within``, in its units).
        column: the primary metric's column (module docstring); ``val_acc`` is the authors'.
        higher: True when higher is better; for a loss (False) the target is the final mean +
            ``within_pp`` and reached means ``<=`` it.
    Returns:
        ``{"target": percent (the metric's units), "epochs": number of epochs trained (0-based epoch + 1),
        "optimizer_steps": seed-mean cumulative steps at that epoch, "train_time_s": training
        seconds}``; all NaN for no rows, ``train_time_s`` NaN when an epoch up to the hit lacks
        ``epoch_time_s`` (runs written before it was logged).
    """
    nan = float("nan")
    if metrics.empty:
        return {"target": nan, **{u: nan for u in AUTHORS_UNITS}}
    curve = seed_mean_curve(metrics, column)
    values = curve[column].to_numpy()
    target = float(values[-1]) - within_pp if higher else float(values[-1]) + within_pp
    hit = np.flatnonzero(values >= target if higher else values <= target)
    if not len(hit):  # only when the final mean is NaN
        return {"target": target, **{u: nan for u in AUTHORS_UNITS}}
    i = int(hit[0])
    # np.sum, not Series.sum: a missing epoch time must give NaN, not a smaller total
    return {
        "target": target,
        "epochs": float(curve["epoch"].iloc[i] + 1),
        "optimizer_steps": float(curve["optimizer_steps"].iloc[i]),
        "train_time_s": float(np.sum(curve["epoch_time_s"].to_numpy()[: i + 1])),
    }


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
        ``final_train_loss``, ``final_metric`` and ``best_metric`` (the primary metric, see the
        module docstring; equal to the accuracies by default), ``own_target`` and
        ``common_target`` (in the metric's units), then ``own_<unit>`` and ``common_<unit>`` for
        each unit.
    """
    group = group or ["dataset", "method", "setting"]
    rows, curves = [], {}
    for run_id, m in epochs.groupby("run_id", sort=False):
        m = curves[run_id] = m.sort_values("epoch")
        last = m.iloc[-1]
        row = {
            "run_id": run_id,
            **{c: last[c] for c in group},
            "family": last.get("family"),
            "method_name": last.get("method_name"),
            "seed": int(last["seed"]),
            "initial_batch_size": last.get("initial_batch_size"),
            "final_acc": float(last["val_acc"]),
            "best_acc": float(m["val_acc"].max()),
            "acc_at_25pct": _acc_at_quarter(m, last.get("epochs_planned")),
            "peak_memory_mb": float(m["peak_memory_mb"].max()) if "peak_memory_mb" in m else float("nan"),
            "final_batch_size": float(last["batch_size"]),
            "final_train_loss": float(last["train_loss"]),
        }
        col, higher, within = metric_of(last)
        row["final_metric"] = float(last[col])
        row["best_metric"] = float(m[col].max() if higher else m[col].min())
        row["own_target"] = row["final_metric"] - within if higher else row["final_metric"] + within
        row.update({f"own_{u}": v for u, v in time_to_target(m, row["own_target"], col, higher).items()})
        rows.append(row)
    runs = pd.DataFrame(rows)
    if runs.empty:
        return runs
    targets = common_targets(runs, group, epochs)
    runs["common_target"] = runs["dataset"].map(targets)
    common = [
        time_to_target(curves[r], t, *metric_of(curves[r].iloc[-1])[:2])
        for r, t in zip(runs["run_id"], runs["common_target"])
    ]
    for u in UNITS:
        runs[f"common_{u}"] = [c[u] for c in common]
    return runs


def _acc_at_quarter(m: pd.DataFrame, planned) -> float:
    """Validation accuracy (percent) at epoch :func:`quarter_epoch` of ``planned``; NaN if unknown."""
    if planned is None or not np.isfinite(float(planned)):
        return float("nan")
    row = m[m["epoch"] == quarter_epoch(int(planned))]
    return float(row["val_acc"].iloc[0]) if len(row) else float("nan")


def metric_of(row: pd.Series) -> tuple[str, bool, float]:
    """``(column, higher_is_better, within)`` of a run's primary metric from its row of the tidy
    table (columns ``metric``, ``metric_direction``, ``metric_within``); ``("val_acc", True,
    WITHIN_PP)`` where they are absent (runs from before the key existed)."""
    col = row.get("metric")
    if not isinstance(col, str) or not col:
        return "val_acc", True, WITHIN_PP
    within = row.get("metric_within")
    return col, row.get("metric_direction", "higher") != "lower", float(within) if pd.notna(within) else WITHIN_PP


def metric_sign(row: pd.Series) -> float:
    """+1 when a higher value of the run's primary metric is better, -1 when lower is (a loss)."""
    return 1.0 if metric_of(row)[1] else -1.0


def common_targets(runs: pd.DataFrame, group: list[str] | None = None, epochs: pd.DataFrame | None = None) -> pd.Series:
    """Per dataset: the worst mean final primary metric among its groups, made :data:`WITHIN_PP`
    (or the metric's ``within``) easier: lowest accuracy - 1 pp, highest loss + ``within``.

    Args:
        runs: :func:`per_run` rows (``final_metric``, or ``final_acc`` alone for old callers).
        epochs: the tidy table, for each dataset's primary metric (default: accuracy).
    """
    group = group or ["dataset", "method", "setting"]
    col = "final_metric" if "final_metric" in runs else "final_acc"
    means = runs.groupby(group)[col].mean().groupby(level="dataset")
    out = {}
    for dataset, g in means:
        first = epochs[epochs["dataset"] == dataset].iloc[0] if epochs is not None and len(epochs) else pd.Series()
        _, higher, within = metric_of(first)
        out[dataset] = g.min() - within if higher else g.max() + within
    return pd.Series(out, dtype=float).rename_axis("dataset")


@dataclass(frozen=True)
class Interval:
    """A point estimate with its bootstrap interval over ``n`` seeds (NaN bounds when n < 2)."""

    value: float
    low: float
    high: float
    n: int


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
        res = stats.bootstrap(
            (x, y),
            statistic,
            paired=True,
            vectorized=True,
            n_resamples=N_RESAMPLES,
            confidence_level=confidence,
            method="percentile",
            rng=np.random.default_rng(BOOTSTRAP_SEED),
        )
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


def paired(
    runs: pd.DataFrame, method_key: tuple, base_key: tuple, column: str, group: list[str] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Values of ``column`` for the seeds two groups share, aligned by seed: (method, base)."""
    group = group or ["dataset", "method", "setting"]

    def by_seed(key: tuple) -> pd.Series:
        mask = np.logical_and.reduce([runs[g].to_numpy() == k for g, k in zip(group, key)])
        return pd.Series(runs.loc[mask, column].to_numpy(float), index=runs.loc[mask, "seed"].to_numpy())

    m, b = by_seed(method_key), by_seed(base_key)
    seeds = sorted(set(m.index) & set(b.index))
    return m.loc[seeds].to_numpy(float), b.loc[seeds].to_numpy(float)
