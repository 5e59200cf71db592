"""The paper's own table layouts and figures, regenerated from our run directories.

The layouts are the ones the authors' plotting notebook prints and draws (``pytorch-cifar@07edbcc``
and ``@5462789 src/plot.ipynb``, stored outputs; docs/protocol.md):

- **time to target**, two tables, *without* and *with* lr rescaling (the notebook's
  ``time_to_1_rescaleFalse.tex`` / ``time_to_1_rescaleTrue.tex``): final accuracy, the epoch to
  within 1 point of it, total epochs, the training seconds to that epoch and in all. Small-batch SGD
  is the baseline row of both tables; large-batch SGD is in the table *with* rescaling when its lr
  is above the base lr (the authors' 1.6 at 2048 on CIFAR, 0.16 on Tiny-ImageNet; their
  ``parse_filename`` marks exactly those runs ``rescale=True``) and in the other table at the base
  lr; AdaBatch and DiveBatch go by their ``lr_rescale``;
- **accuracy at 25, 50, 75 and 100 % of training** (``calculate_accuracy_at_checkpoints``): the
  seed-mean curve at index ``int(E * p / 100) - 1`` of its E epochs (clipped to [0, E - 1]);
- **training seconds per epoch** per method (``compute_avg_time_per_epoch``): each run's mean
  training seconds per epoch, then the mean over seeds;
- **peak memory** per method: each run's largest ``peak_memory_mb`` (CUDA allocator peak per epoch
  on a GPU; on a CPU the process's peak resident set size, which includes data and interpreter),
  then the mean over seeds. The authors log the CUDA allocator peak of every epoch
  (``memory_allocated``, reset each epoch: ``src/train_utils.py:35, 110-116``) and print its mean over
  epochs for seed 1 (``compute_avg_memory_allocated``): that statistic is shown too, and the ratio uses it;
- figures: validation accuracy and loss against epoch per dataset and rescale group, SGD dotted as
  the baseline (``plot_val_acc_and_loss_with_baseline``), and the primary metric against
  cumulative training seconds (``plot_cumulative_time_vs_accuracy``).

Statistics (the authors'): every number is a mean over seeds with its standard error (SEM = sd with
ddof 1 over sqrt(n), pandas' ``sem`` as in their ``process_directory``); ours add a 95 % t-interval
over the n seeds (mean +- t_{0.975, n-1} SEM). "Epoch to +-1 %" is the first epoch (1-based) whose
seed-mean accuracy is at least the final seed-mean minus 1 percentage point, and its "time" the sum
of the seed-mean training seconds per epoch up to and including it
(:func:`divebatch.analysis.stats.authors_time_to_target`). A profile judged by another primary
metric (the transformer: validation loss, lower is better) gets the same layouts on that metric:
target = final seed-mean + ``within``, values at the checkpoints in its units.

Rows: the main matrix of a profile. Groups run with ``protocol=clean`` or with a diversity
estimator other than the authors' (``exact``, or ``exact_func``, the same quantity through
torch.func) are left out (they are the project's own studies: main and estimator tables).

The authors' values: for the ``paper`` profile every table shows the authors' reported value
beside ours and the ratio ours / authors' (:mod:`divebatch.analysis.authors`, ``load_reported``:
long format, one row per dataset, method, lr, batch size and quantity); authors' rows we did not run
appear with ours ``not run``. At CPU scale (and for any other profile) the authors' values are not
comparable and are left out, which each title says.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from divebatch.analysis.collect import GROUP
from divebatch.analysis.stats import authors_time_to_target, metric_of, seed_mean_curve, t_interval
from divebatch.analysis.style import METHOD_ORDER
from divebatch.methods import BY_KEY, VARIANTS

PAPER_PROFILE = "paper"  # the profile whose tables show the authors' values
CHECKPOINTS = (25, 50, 75, 100)  # percent of training
CONFIDENCE = 0.95  # of our t-intervals over seeds
AUTHORS_ESTIMATORS = ("exact", "exact_func")  # the authors' epoch estimator (exact_func: through torch.func)
KEY_OF = {v.display_name: v.key for v in VARIANTS}  # display name -> configs/methods/<key>.yaml
SMALL_BATCH = ("sgd_small", "adamw_small")  # baselines: rows of both tables
LARGE_BATCH = ("sgd_large", "adamw_large")
RESCALE_SLUG = {False: "rescale_false", True: "rescale_true"}
RESCALE_TITLE = {False: "without lr rescaling", True: "with lr rescaling"}
# the columns of divebatch.analysis.authors.load_reported()
REPORTED_COLUMNS = ("dataset", "method", "lr", "batch_size", "rescale", "quantity", "value", "sem")
QUANTITIES = (
    "final_acc",
    "epochs_to_1pct",
    "seconds_to_1pct",
    *(f"acc_at_{p}pct" for p in CHECKPOINTS),
    "seconds_per_epoch",
    "gpu_memory_mb",
)
MEMORY_LABELS = {
    "cuda": "GPU: CUDA allocator peak",
    "cpu": "CPU: peak resident memory of the process",
    "mixed": "mixed devices",
    "unknown": "device not recorded",
}

# ----------------------------------------------------------------------------- statistics


def mean_sem_t(values, confidence: float = CONFIDENCE) -> dict[str, float]:
    """Mean over seeds with its standard error and t-interval (:func:`divebatch.analysis.stats.t_interval`).

    Args:
        values: shape (n,) numbers, one per seed; NaN values are dropped.
    Returns:
        ``{"mean", "sem", "t_low", "t_high", "n"}``: sem = sd (ddof 1) / sqrt(n) (pandas' ``sem``, the
        authors' statistic); the interval is mean +- t_{(1+confidence)/2, n-1} sem. With n = 1 the sem and
        the interval are NaN; with n = 0 everything is NaN.
    """
    iv = t_interval(np.asarray(values, dtype=float), confidence=confidence)
    return {"mean": iv.value, "sem": iv.sem, "t_low": iv.low, "t_high": iv.high, "n": iv.n}


def checkpoint_index(n_epochs: int, percent: float) -> int:
    """The authors' index into a curve of ``n_epochs`` epochs at ``percent`` of training:
    ``int(n_epochs * percent / 100) - 1``, clipped to ``[0, n_epochs - 1]``
    (``pytorch-cifar@07edbcc src/plot.ipynb``, ``calculate_accuracy_at_checkpoints``).

    E = 200: 49, 99, 149, 199; E = 90: 21, 44, 66, 89 (the main table's ``acc_at_25pct`` uses
    ``ceil(E / 4) - 1`` = 22 there). Raises ValueError for ``n_epochs`` < 1.
    """
    if n_epochs < 1:
        raise ValueError(f"n_epochs={n_epochs}; allowed: an integer >= 1")
    return max(0, min(int(n_epochs * percent / 100) - 1, n_epochs - 1))


# ----------------------------------------------------------------------------- rows


def _device_kind(devices: pd.Series) -> str:
    kinds = {str(d).split(":")[0] for d in devices.dropna()} & {"cuda", "cpu"}
    if devices.isna().all() or not kinds:
        return "unknown"
    return kinds.pop() if len(kinds) == 1 and devices.notna().all() else "mixed"


def layout_groups(epochs: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The groups (dataset x method x setting) of the paper layouts, and those left out.

    Args:
        epochs: tidy per-epoch table (``RunSet.epochs``, complete runs).
    Returns:
        ``(shown, left_out)``. ``shown``: one row per group with ``dataset, method, setting, family,
        method_key`` (``configs/methods/<key>.yaml``; None for a method outside the registry), ``lr``
        (initial lr), ``batch_size`` (initial batch size, samples), ``tables`` (tuple of the rescale
        flags of the time-to-target tables the row belongs to: ``(False, True)`` for small-batch SGD),
        ``n_seeds``, ``seeds``, ``metric``, ``higher``, ``within``, ``device`` (cuda | cpu | mixed |
        unknown). ``left_out``: ``dataset, method, setting, reason``.
    """
    cols = [*GROUP, "family", "method_key", "lr", "batch_size", "optimizer", "tables", "n_seeds", "seeds"]
    cols += ["metric", "higher", "within", "device"]
    if epochs.empty:
        return pd.DataFrame(columns=cols), pd.DataFrame(columns=[*GROUP, "reason"])
    rows, out = [], []
    for key, g in epochs.groupby(GROUP, sort=False):
        first = g.iloc[0]
        estimator = first.get("diversity_estimator")
        if first.get("protocol") == "clean":
            out.append({**dict(zip(GROUP, key)), "reason": "protocol=clean (the project's study, not the authors')"})
            continue
        if (
            first.get("method_name") == "divebatch"
            and isinstance(estimator, str)
            and estimator not in AUTHORS_ESTIMATORS
        ):
            out.append({**dict(zip(GROUP, key)), "reason": f"diversity estimator {estimator} (estimator study)"})
            continue
        metric, higher, within = metric_of(first)
        optimizer = first.get("optimizer")
        rows.append(
            {
                **dict(zip(GROUP, key)),
                "family": first.get("family", key[0]),
                "method_key": KEY_OF.get(key[1]),
                "lr": float(first["lr0"]),
                "batch_size": int(first["initial_batch_size"]),
                "optimizer": optimizer if isinstance(optimizer, str) else "sgd",
                "n_seeds": int(g["seed"].nunique()),
                "seeds": ",".join(map(str, sorted(g["seed"].unique()))),
                "metric": metric,
                "higher": higher,
                "within": within,
                "device": _device_kind(g.drop_duplicates("run_id")["device"]) if "device" in g else "unknown",
            }
        )
    shown = pd.DataFrame(rows, columns=[c for c in cols if c != "tables"])
    shown["tables"] = [_tables(r, shown) for _, r in shown.iterrows()]
    rank = {m: i for i, m in enumerate(METHOD_ORDER)}
    shown = (
        shown.assign(_r=shown["method"].map(lambda m: rank.get(m, len(rank))))
        .sort_values(["dataset", "_r", "lr", "batch_size", "setting"], kind="stable")
        .drop(columns="_r")
        .reset_index(drop=True)
    )
    return shown[cols], pd.DataFrame(out, columns=[*GROUP, "reason"])


def _tables(row: pd.Series, groups: pd.DataFrame) -> tuple[bool, ...]:
    """Which time-to-target tables a group belongs to (module docstring): small batch both; large
    batch the rescaled one when its lr is above the base lr (the lowest lr of the dataset's
    small-batch groups with the same optimizer, else of every group); the others by ``lr_rescale``."""
    key = row["method_key"]
    if key in SMALL_BATCH:
        return (False, True)
    if key in LARGE_BATCH:
        same = groups[(groups["dataset"] == row["dataset"]) & (groups["optimizer"] == row["optimizer"])]
        small = same[same["method_key"].isin(SMALL_BATCH)]
        base = (small if len(small) else same)["lr"].min()
        return (bool(row["lr"] > base * (1 + 1e-9)),)
    variant = BY_KEY.get(key)
    return (bool(variant.lr_rescale) if variant else False,)


def group_epochs(epochs: pd.DataFrame, row: pd.Series) -> pd.DataFrame:
    """The per-epoch rows of one group of :func:`layout_groups`."""
    mask = np.logical_and.reduce([epochs[c].to_numpy() == row[c] for c in GROUP])
    return epochs[mask]


# ----------------------------------------------------------------------------- the authors' values


def check_reported(reported: pd.DataFrame) -> pd.DataFrame:
    """The authors' values in the schema of ``divebatch.analysis.authors.load_reported``.

    Raises:
        ValueError: a column of :data:`REPORTED_COLUMNS` is missing (names them).
    Returns:
        the rows of the quantities the layouts show (:data:`QUANTITIES`).
    """
    missing = [c for c in REPORTED_COLUMNS if c not in reported.columns]
    if missing:
        raise ValueError(
            f"reported values lack columns {missing}; allowed: a frame with columns {', '.join(REPORTED_COLUMNS)} "
            "(divebatch.analysis.authors.load_reported)"
        )
    return reported[reported["quantity"].isin(QUANTITIES)]  # the reference's other quantities: its own checks


def _same_row(reported: pd.DataFrame, dataset: str, method: str, lr: float, batch_size: int) -> pd.Series:
    return (
        (reported["dataset"] == dataset)
        & (reported["method"] == method)
        & np.isclose(reported["lr"].astype(float), lr, rtol=1e-6, atol=0)
        & (reported["batch_size"].astype(int) == int(batch_size))
    )


def authors_value(reported: pd.DataFrame | None, row: pd.Series, quantity: str):
    """``(value, sem)`` the authors report for the row's dataset (family), method, lr and batch size;
    ``(NaN, NaN)`` without a match. Among several matching rows (small-batch SGD is a row of both of
    their tables, with the same numbers) the first."""
    nan = (float("nan"), float("nan"))
    if reported is None or row.get("method_key") is None:
        return nan
    r = reported[
        _same_row(reported, row["family"], row["method_key"], row["lr"], row["batch_size"])
        & (reported["quantity"] == quantity)
    ]
    if r.empty:
        return nan
    return float(r["value"].iloc[0]), float(r["sem"].iloc[0]) if pd.notna(r["sem"].iloc[0]) else float("nan")


def unmatched_reported(reported: pd.DataFrame | None, shown: pd.DataFrame) -> pd.DataFrame:
    """The authors' rows (dataset, method, lr, batch size, rescale) that no group of ours matches.

    Returns:
        One row each, with the columns of :func:`layout_groups` that identify a row (``method`` is the
        registry's display name, ``family`` and ``dataset`` the authors' dataset).
    """
    cols = ["dataset", "family", "method", "method_key", "lr", "batch_size", "rescale"]
    if reported is None or reported.empty:
        return pd.DataFrame(columns=cols)
    rows = []
    keys = reported.drop_duplicates(["dataset", "method", "lr", "batch_size", "rescale"])
    for _, r in keys.iterrows():
        mine = shown[
            (shown["family"] == r["dataset"])
            & (shown["method_key"] == r["method"])
            & np.isclose(shown["lr"].astype(float), float(r["lr"]), rtol=1e-6, atol=0)
            & (shown["batch_size"].astype(int) == int(r["batch_size"]))
        ]
        if mine.empty:
            variant = BY_KEY.get(r["method"])
            rows.append(
                {
                    "dataset": r["dataset"],
                    "family": r["dataset"],
                    "method": variant.display_name if variant else r["method"],
                    "method_key": r["method"],
                    "lr": float(r["lr"]),
                    "batch_size": int(r["batch_size"]),
                    "rescale": bool(r["rescale"]),
                }
            )
    return pd.DataFrame(rows, columns=cols)


def _with_authors(row: dict, reported, ident: pd.Series, pairs, accuracy: bool = False) -> None:
    """Add ``authors_<q>``, ``authors_<q>_sem`` and ``ratio_<q>`` (ours / authors') for each
    ``(quantity, our column)`` of ``pairs``. ``accuracy``: the quantities are accuracies (or depend on the
    accuracy target), so the ratio is only taken for a group judged by ``val_acc``."""
    comparable = not accuracy or ident.get("metric", "val_acc") == "val_acc"
    for quantity, ours in pairs:
        value, sem = authors_value(reported, ident, quantity)
        row[f"authors_{quantity}"], row[f"authors_{quantity}_sem"] = value, sem
        mine = row.get(ours, float("nan"))
        ok = comparable and np.isfinite(value) and value != 0 and np.isfinite(mine)
        row[f"ratio_{quantity}"] = mine / value if ok else float("nan")


def _ident(row: pd.Series) -> dict:
    return {c: row[c] for c in ("dataset", "method", "setting", "lr", "batch_size", "n_seeds", "seeds") if c in row}


def _not_run(u: pd.Series) -> dict:
    return {
        "dataset": u["dataset"],
        "method": u["method"],
        "setting": "",
        "lr": u["lr"],
        "batch_size": u["batch_size"],
        "n_seeds": 0,
        "seeds": "",
    }


# ----------------------------------------------------------------------------- tables


def time_to_target_table(epochs: pd.DataFrame, reported: pd.DataFrame | None = None) -> pd.DataFrame:
    """The authors' time-to-target tables (both rescale groups, long: column ``rescale``).

    Args:
        epochs: tidy per-epoch table (``RunSet.epochs``).
        reported: the authors' values (:func:`check_reported` schema) or None (no authors' columns).
    Returns:
        One row per (rescale table, group): ``rescale`` (bool), ``dataset, method, setting, lr,
        batch_size, n_seeds, seeds, metric``, ``final_mean, final_sem, final_t_low, final_t_high`` (the
        primary metric's final value over seeds: percent for accuracy), ``target`` (final seed-mean -
        within; + within for a loss), ``epochs_to_target`` (1-based epoch on the seed-mean curve),
        ``total_epochs``, ``seconds_to_target`` and ``total_seconds`` (seed-mean training seconds per
        epoch, summed up to that epoch / over all). With ``reported``: ``authors_<q>``, ``authors_<q>_sem``
        and ``ratio_<q>`` (ours / authors') for q in final_acc, epochs_to_1pct, seconds_to_1pct, and a
        row with ``n_seeds`` 0 for each authors' row we did not run.
    """
    shown, _ = layout_groups(epochs)
    rows = []
    pairs = (
        ("final_acc", "final_mean"),
        ("epochs_to_1pct", "epochs_to_target"),
        ("seconds_to_1pct", "seconds_to_target"),
    )
    for _, grp in shown.iterrows():
        g = group_epochs(epochs, grp)
        metric, higher, within = grp["metric"], grp["higher"], grp["within"]
        curve = seed_mean_curve(g, metric)
        finals = g.sort_values("epoch").groupby("run_id")[metric].last()
        got = authors_time_to_target(g, within, metric, higher)
        base = {
            **_ident(grp),
            "metric": metric,
            **{f"final_{k}": v for k, v in mean_sem_t(finals).items() if k != "n"},
            "target": got["target"],
            "epochs_to_target": got["epochs"],
            "total_epochs": len(curve),
            "seconds_to_target": got["train_time_s"],
            "total_seconds": float(np.sum(curve["epoch_time_s"].to_numpy())),
        }
        for flag in grp["tables"]:
            row = {"rescale": flag, **base}
            if reported is not None:
                _with_authors(row, reported, grp, pairs, accuracy=True)
            rows.append(row)
    for _, u in unmatched_reported(reported, shown).iterrows():
        row = {"rescale": u["rescale"], **_not_run(u), "metric": "val_acc"}
        _with_authors(row, reported, u, pairs, accuracy=True)
        rows.append(row)
    out = pd.DataFrame(rows)
    if out.empty:
        return out
    return out.sort_values(["rescale", "dataset"], kind="stable").reset_index(drop=True)


def checkpoint_table(epochs: pd.DataFrame, reported: pd.DataFrame | None = None) -> pd.DataFrame:
    """The primary metric at :data:`CHECKPOINTS` percent of training, one row per group.

    Returns:
        ``dataset, method, setting, lr, batch_size, n_seeds, seeds, metric, rescale`` (``no`` | ``yes`` |
        ``both``: the time-to-target tables the group is in), ``total_epochs``, then per checkpoint p:
        ``epoch_<p>`` (1-based epoch used: :func:`checkpoint_index` + 1), ``at_<p>pct_mean``, ``_sem``,
        ``_t_low``, ``_t_high`` (over the seeds' values at that epoch). With ``reported``:
        ``authors_acc_at_<p>pct`` (+ ``_sem``) and ``ratio_acc_at_<p>pct``; a row per authors' row not run.
    """
    shown, _ = layout_groups(epochs)
    rows = []
    pairs = tuple((f"acc_at_{p}pct", f"at_{p}pct_mean") for p in CHECKPOINTS)
    for _, grp in shown.iterrows():
        g = group_epochs(epochs, grp)
        metric = grp["metric"]
        curve = seed_mean_curve(g, metric)
        row = {**_ident(grp), "metric": metric, "rescale": _rescale_word(grp["tables"]), "total_epochs": len(curve)}
        for p in CHECKPOINTS:
            epoch = int(curve["epoch"].iloc[checkpoint_index(len(curve), p)])
            row[f"epoch_{p}"] = epoch + 1
            s = mean_sem_t(g.loc[g["epoch"] == epoch, metric])
            row.update({f"at_{p}pct_{k}": v for k, v in s.items() if k != "n"})
        if reported is not None:
            _with_authors(row, reported, grp, pairs, accuracy=True)
        rows.append(row)
    for _, u in (
        unmatched_reported(reported, shown).drop_duplicates(["dataset", "method_key", "lr", "batch_size"]).iterrows()
    ):
        row = {**_not_run(u), "metric": "val_acc", "rescale": _rescale_word((bool(u["rescale"]),))}
        _with_authors(row, reported, u, pairs, accuracy=True)
        rows.append(row)
    return pd.DataFrame(rows)


def _rescale_word(tables: tuple) -> str:
    return "both" if len(tables) > 1 else "yes" if tables[0] else "no"


def _per_run_table(epochs, reported, quantity: str, per_run: dict, compare: str = "value", extra=None) -> pd.DataFrame:
    """One row per group: for each ``name: f`` of ``per_run`` (``f(one run's rows) -> number``) the mean
    ± SEM [t] over seeds as ``<name>_mean, <name>_sem, <name>_t_low, <name>_t_high``; the authors'
    ``quantity`` and the ratio ``<compare>_mean`` / theirs; ``extra(group row) -> dict`` of more columns."""
    shown, _ = layout_groups(epochs)
    rows = []
    for _, grp in shown.iterrows():
        g = group_epochs(epochs, grp)
        row = {**_ident(grp), "rescale": _rescale_word(grp["tables"])}
        for name, f in per_run.items():
            values = [f(m) for _, m in g.groupby("run_id")]
            row.update({f"{name}_{k}": v for k, v in mean_sem_t(values).items() if k != "n"})
        if extra:
            row.update(extra(grp))
        if reported is not None:
            _with_authors(row, reported, grp, ((quantity, f"{compare}_mean"),))
        rows.append(row)
    for _, u in (
        unmatched_reported(reported, shown).drop_duplicates(["dataset", "method_key", "lr", "batch_size"]).iterrows()
    ):
        row = {**_not_run(u), "rescale": _rescale_word((bool(u["rescale"]),))}
        _with_authors(row, reported, u, ((quantity, f"{compare}_mean"),))
        rows.append(row)
    return pd.DataFrame(rows)


def epoch_time_table(epochs: pd.DataFrame, reported: pd.DataFrame | None = None) -> pd.DataFrame:
    """Average training seconds per epoch per group: each run's mean ``epoch_time_s`` over its
    epochs, then mean ± SEM [t-interval] over seeds (``value_*`` columns, seconds); the authors'
    ``seconds_per_epoch`` and the ratio with ``reported``."""
    return _per_run_table(epochs, reported, "seconds_per_epoch", {"value": lambda m: float(np.mean(m["epoch_time_s"]))})


def memory_table(epochs: pd.DataFrame, reported: pd.DataFrame | None = None) -> pd.DataFrame:
    """Peak memory per group in MB: each run's largest ``peak_memory_mb`` (``value_*``) and, the
    authors' statistic, each run's mean over epochs of it (``epoch_mean_*``: on a GPU the allocator peak
    is reset every epoch, by them as by us, ``pytorch-cifar@7289184 src/train_utils.py:35, 110-116``, and
    their notebook prints the mean over epochs, ``compute_avg_memory_allocated``), each then mean ± SEM
    [t] over seeds; ``measured_as``: CUDA allocator peak on a GPU, peak resident memory of the process on
    a CPU (:data:`MEMORY_LABELS`). With ``reported``: the authors' ``gpu_memory_mb`` and the ratio of
    ``epoch_mean_mean`` to it, for rows measured on a GPU only."""
    out = _per_run_table(
        epochs,
        reported,
        "gpu_memory_mb",
        {
            "value": lambda m: float(np.max(m["peak_memory_mb"])),
            "epoch_mean": lambda m: float(np.mean(m["peak_memory_mb"])),
        },
        compare="epoch_mean",
        extra=lambda grp: {"measured_as": MEMORY_LABELS[grp["device"]]},
    )
    if "ratio_gpu_memory_mb" in out:
        out.loc[out["measured_as"] != MEMORY_LABELS["cuda"], "ratio_gpu_memory_mb"] = np.nan
    return out
