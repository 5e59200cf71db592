"""Time to target, speed-ups and t-intervals over seeds.

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
- *matched target* of a method against a baseline (:func:`matched_target`): the lower of the two
  seed-mean final accuracies minus :data:`WITHIN_PP` (a loss: the higher final + ``within``), the
  same accuracy for both, so a method that ends low does not get an easier target. Speed
  verdicts use it; the own target stays as the authors' definition.
- *speed-up* of a method against a baseline in unit U (:func:`speedup`): ``exp`` of the mean over
  seeds of ``log(baseline time / method time)`` (> 1: the method is faster), with the 95 %
  t-interval over seeds on that log-ratio (Student's t, ``scipy.stats.t``), *paired* by seed when
  the runs of the two groups share seeds (the seeds both have), Welch's two-sample t otherwise.
  Beside it, the authors' statistic: the ratio of the seed-mean times with its SEM.
- *accuracy change* (:func:`accuracy_change`): mean final accuracy of the method minus the
  baseline's, in percentage points, with the 95 % t-interval on the per-seed differences (paired)
  or Welch's, and the SEM. With one seed there is no interval ("n=1, no interval").

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
CONFIDENCE = 0.95  # two-sided level of every t-interval
# matched target: the units of the time to it (per seed and on the seed-mean curve); train_time_s is
# the cumulative training seconds (sum of epoch_time_s, evaluation excluded)
MATCHED_UNITS = {
    "epochs": "epochs",
    "optimizer_steps": "optimizer steps",
    "train_time_s": "training s",
    "wall_time_s": "wall-clock s",
}
INTERVAL_NAME = "95 % t-interval over n seeds"


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
        ``final_train_loss``, ``resized`` (False when ``batch_size`` never changed,
        :func:`never_resized`), ``final_metric`` and ``best_metric`` (the primary metric, see the
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
            "resized": not never_resized(m["batch_size"]),
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
    """A point estimate over ``n`` seeds with its 95 % t-interval and its standard error.

    Attributes:
        value: the point estimate (a difference of means, or a ratio: exp of the mean log-ratio).
        low, high: the 95 % t-interval (NaN when ``n`` < 2: "n=1, no interval").
        n: seeds used (pairs when ``pairing`` is ``paired``, the smaller sample under Welch).
        sem: standard error of the mean of the quantity the interval is built on (for a ratio: of
            the mean log-ratio, i.e. about the relative SEM of the ratio); NaN when n < 2.
        pairing: ``paired`` (per-seed differences of runs that share a seed), ``welch`` (two
            independent samples, Welch's t) or ``""`` (no comparison possible).
        mean, mean_sem: the authors' statistic beside it: the mean difference (or the ratio of the
            seed means) and its SEM (for a ratio: by the delta method, first order).
    """

    value: float
    low: float
    high: float
    n: int
    sem: float = float("nan")
    pairing: str = ""
    mean: float = float("nan")
    mean_sem: float = float("nan")


NAN_INTERVAL = Interval(float("nan"), float("nan"), float("nan"), 0)


def _sem(x: np.ndarray) -> float:
    return float(np.std(x, ddof=1) / np.sqrt(len(x))) if len(x) > 1 else float("nan")


def t_interval(x: np.ndarray, y: np.ndarray | None = None, confidence: float = CONFIDENCE) -> Interval:
    """Mean (of ``x``, or of ``x - y`` for two samples) with its two-sided t-interval.

    One sample (``y`` None) or two *paired* samples of equal length: Student's t on the per-seed
    values (``x - y``), ``n - 1`` degrees of freedom, ``mean +/- t_{(1+c)/2, n-1} * sd / sqrt(n)``.
    Two samples of unequal length (``paired`` False by the caller's choice, see
    :func:`welch_interval`) are not handled here.

    Args:
        x, y: shape (n,) float arrays; NaN entries (NaN pairs) are dropped.
        confidence: two-sided level.
    Returns:
        :class:`Interval` with ``pairing`` ``paired`` for two samples; bounds NaN with n < 2; equal
        to the value when every seed gives the same number (sd 0).
    """
    x = np.asarray(x, dtype=float)
    if y is not None:
        y = np.asarray(y, dtype=float)
        ok = np.isfinite(x) & np.isfinite(y)
        d = x[ok] - y[ok]
    else:
        d = x[np.isfinite(x)]
    n = len(d)
    pairing = "paired" if y is not None else ""
    if n == 0:
        return Interval(float("nan"), float("nan"), float("nan"), 0, pairing=pairing)
    value = float(np.mean(d))
    if n < 2:
        return Interval(value, float("nan"), float("nan"), n, pairing=pairing, mean=value)
    sem = _sem(d)
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * sem
    return Interval(value, value - half, value + half, n, sem, pairing, value, sem)


def welch_interval(x: np.ndarray, y: np.ndarray, confidence: float = CONFIDENCE) -> Interval:
    """``mean(x) - mean(y)`` of two independent samples with Welch's t-interval.

    Degrees of freedom by Welch-Satterthwaite:
    ``(s_x^2/n_x + s_y^2/n_y)^2 / ((s_x^2/n_x)^2/(n_x-1) + (s_y^2/n_y)^2/(n_y-1))``.

    Args:
        x, y: float arrays (any lengths); NaN entries are dropped.
    Returns:
        :class:`Interval` with ``pairing`` ``welch`` and ``n`` = the smaller sample size; bounds NaN
        when either sample has fewer than 2 values; equal to the value when both sds are 0.
    """
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    x, y = x[np.isfinite(x)], y[np.isfinite(y)]
    n = min(len(x), len(y))
    if n == 0:
        return Interval(float("nan"), float("nan"), float("nan"), 0, pairing="welch")
    value = float(np.mean(x) - np.mean(y))
    if n < 2:
        return Interval(value, float("nan"), float("nan"), n, pairing="welch", mean=value)
    vx, vy = np.var(x, ddof=1) / len(x), np.var(y, ddof=1) / len(y)
    sem = float(np.sqrt(vx + vy))
    if sem == 0:
        return Interval(value, value, value, n, 0.0, "welch", value, 0.0)
    df = (vx + vy) ** 2 / (vx**2 / (len(x) - 1) + vy**2 / (len(y) - 1))
    half = float(stats.t.ppf(0.5 + confidence / 2, df)) * sem
    return Interval(value, value - half, value + half, n, sem, "welch", value, sem)


def _compare(x, y, paired_by_seed: bool) -> Interval:
    return t_interval(x, y) if paired_by_seed else welch_interval(x, y)


def speedup(base_times: np.ndarray, method_times: np.ndarray, paired_by_seed: bool = True) -> Interval:
    """Speed-up of a method over a baseline from times to target, with a 95 % t-interval on the log-ratio.

    ``log(base / method)`` per seed (paired) or ``mean log base - mean log method`` (Welch), the
    t-interval on that, exponentiated: value = ``exp(mean log-ratio)`` (the geometric mean of the
    per-seed speed-ups when paired), bounds ``exp(low)``, ``exp(high)``; > 1 means faster. Beside it
    (``mean``, ``mean_sem``): the ratio of the seed means ``mean(base) / mean(method)`` with its
    delta-method SEM ``r * sqrt((sem_b / mean_b)^2 + (sem_m / mean_m)^2)``.

    Args:
        base_times, method_times: times to target in one unit (epochs, optimizer steps or seconds),
            > 0; paired: shape (n,) each, element i from seed i; NaN (target not reached) drops the
            seed (pair).
        paired_by_seed: the two runs of each index share a seed (see :func:`compare_groups`).
    Returns:
        :class:`Interval` (bounds NaN with fewer than 2 seeds).
    """
    b, m = np.asarray(base_times, dtype=float), np.asarray(method_times, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        lb, lm = np.log(np.where(b > 0, b, np.nan)), np.log(np.where(m > 0, m, np.nan))
    iv = _compare(lb, lm, paired_by_seed)
    if paired_by_seed:
        ok = np.isfinite(lb) & np.isfinite(lm)
        b, m = b[ok], m[ok]
    else:
        b, m = b[np.isfinite(lb)], m[np.isfinite(lm)]
    ratio, ratio_sem = float("nan"), float("nan")
    if len(b) and len(m):
        ratio = float(np.mean(b) / np.mean(m))
        ratio_sem = ratio * float(np.hypot(_sem(b) / np.mean(b), _sem(m) / np.mean(m)))
    return Interval(
        float(np.exp(iv.value)),
        float(np.exp(iv.low)),
        float(np.exp(iv.high)),
        iv.n,
        iv.sem,
        iv.pairing,
        ratio,
        ratio_sem,
    )


def authors_speedup(base_value: float, method_value: float) -> float:
    """Speed-up on the authors' definition: the baseline's :func:`authors_time_to_target` value
    divided by the method's, in one unit (> 1: the method is faster). One seed-mean curve each,
    so no interval. NaN when either is NaN or the method's value is 0."""
    base_value, method_value = float(base_value), float(method_value)
    if not (np.isfinite(base_value) and np.isfinite(method_value)) or method_value == 0:
        return float("nan")
    return base_value / method_value


def accuracy_change(method_acc: np.ndarray, base_acc: np.ndarray, paired_by_seed: bool = True) -> Interval:
    """``mean(method_acc) - mean(base_acc)`` (percentage points, or the metric's units) with a 95 %
    t-interval: on the per-seed differences when the runs share seeds (``paired_by_seed``, arrays
    aligned by seed), Welch's otherwise. ``mean`` +/- ``mean_sem`` is the same difference with its SEM."""
    return _compare(method_acc, base_acc, paired_by_seed)


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


def compare_groups(
    runs: pd.DataFrame, method_key: tuple, base_key: tuple, column: str, group: list[str] | None = None
) -> tuple[np.ndarray, np.ndarray, bool]:
    """The values of ``column`` for two groups and whether to pair them by seed.

    Paired (the third item True) when the groups share at least 2 seeds: the arrays hold the shared
    seeds in the same order (seeds one group lacks are left out). Otherwise every seed of each
    group, unpaired (Welch). Returns ``(method_values, base_values, paired_by_seed)``.
    """
    group = group or ["dataset", "method", "setting"]

    def by_seed(key: tuple) -> pd.Series:
        mask = np.logical_and.reduce([runs[g].to_numpy() == k for g, k in zip(group, key)])
        return pd.Series(runs.loc[mask, column].to_numpy(float), index=runs.loc[mask, "seed"].to_numpy())

    m, b = by_seed(method_key), by_seed(base_key)
    shared = sorted(set(m.index) & set(b.index))
    if len(shared) >= 2 or (len(shared) == 1 and len(m) == 1 and len(b) == 1):
        return m.loc[shared].to_numpy(float), b.loc[shared].to_numpy(float), True
    return m.to_numpy(float), b.to_numpy(float), False


def matched_target(method_final: float, base_final: float, within: float = WITHIN_PP, higher: bool = True) -> float:
    """Common target of a method and a baseline: the worse of their two seed-mean finals made
    ``within`` easier (accuracy: ``min(finals) - within``; a loss: ``max(finals) + within``).

    Both must reach the same quality, so a method that ends 15 pp lower does not get its own lower
    target (the authors' definition rewards ending low). NaN when either final is NaN."""
    if not (np.isfinite(method_final) and np.isfinite(base_final)):
        return float("nan")
    return min(method_final, base_final) - within if higher else max(method_final, base_final) + within


def times_to(metrics: pd.DataFrame, target: float, column: str = "val_acc", higher: bool = True) -> dict[str, float]:
    """Time for one run (or one seed-mean curve) to first reach ``target``, in :data:`MATCHED_UNITS`.

    Args:
        metrics: rows with ``epoch`` (0-based), ``column``, cumulative ``optimizer_steps`` and
            ``wall_time_s``, per-epoch ``epoch_time_s`` (training seconds), any order.
    Returns:
        ``epochs`` (0-based epoch + 1), ``optimizer_steps``, ``train_time_s`` (sum of
        ``epoch_time_s`` up to and including the hit; NaN when one is missing), ``wall_time_s``;
        all NaN when never reached.
    """
    m = metrics.sort_values("epoch")
    values = m[column].to_numpy(float)
    hit = np.flatnonzero(values >= target if higher else values <= target) if np.isfinite(target) else []
    if not len(hit):
        return {u: float("nan") for u in MATCHED_UNITS}
    i = int(hit[0])
    train = m["epoch_time_s"].to_numpy(float)[: i + 1] if "epoch_time_s" in m else np.array([np.nan])
    return {
        "epochs": float(m["epoch"].iloc[i] + 1),
        "optimizer_steps": float(m["optimizer_steps"].iloc[i]),
        "train_time_s": float(np.sum(train)),
        "wall_time_s": float(m["wall_time_s"].iloc[i]) if "wall_time_s" in m else float("nan"),
    }


def mean_curve(metrics: pd.DataFrame, column: str = "val_acc") -> pd.DataFrame:
    """:func:`seed_mean_curve` plus the seed-mean cumulative ``wall_time_s`` (when present)."""
    curve = seed_mean_curve(metrics, column)
    if "wall_time_s" in metrics:
        wall = metrics[["epoch", "wall_time_s"]].astype(float).groupby("epoch", sort=True)["wall_time_s"].mean()
        curve["wall_time_s"] = wall.to_numpy()
    return curve


def never_resized(batch_sizes: pd.Series) -> bool:
    """True when a run's ``batch_size`` column (metrics.csv, one value per epoch) never changed: an
    adaptive-batch run that never resized is plain SGD at its initial batch and cannot be evidence
    for a claim about adaptive batch sizes."""
    b = pd.to_numeric(batch_sizes, errors="coerce").dropna()
    return bool(len(b) == 0 or b.nunique() == 1)
