"""The authors' reported results as data, and the published numbers checked against them by code.

The paper's text is not available to us; the authors' plotting notebook is. Its stored outputs hold
the result tables the paper reports. ``authors_reported.csv`` (next to this module, package data)
holds every number of those outputs that the tables use, one row per (dataset, method,
hyperparameters, quantity), transcribed from:

- ``chenyuen0103/pytorch-cifar`` ``src/plot.ipynb`` at commit ``07edbcc`` (byte-identical at the last
  commit ``7289184``, the one docs/protocol.md cites): cell 8 (final accuracy, epochs and training
  seconds to within 1 point of the final accuracy, with lr rescaling), cells 10 and 11 (accuracy at
  25/50/75/100 % of training, with / without lr rescaling), cell 13 (epochs to 95 % of the final
  accuracy, CIFAR-10), cells 14-16 (mean training seconds per epoch per method), cell 17 (wall-clock
  seconds per epoch, seed 1, CIFAR-10), cell 18 (mean GPU memory allocated, seed 1, CIFAR-10);
- the same file at commit ``5462789``: cell 7 (both epochs/seconds tables printed as LaTeX, the only
  place the table without lr rescaling is printed), and cells 12, 13, 15, 16, 17, which print some of
  the same numbers again (used as the cross-check columns).

Cell numbers are **0-based** indices into the notebook's ``cells`` list (nbformat JSON), the way the
numbers above are counted; verified: at ``07edbcc`` cell 8 is the one-line cell ``results_true_df``
and cells 10 and 11 are ``manual_selection_true`` / ``manual_selection_false``.

Columns of the CSV (the first thirteen are a contract with the table layouts of the paper;
:data:`REQUIRED_COLUMNS`):

- ``dataset``: cifar10 | cifar100 | tiny_imagenet (the authors' ``IMAGENET`` is Tiny-ImageNet);
- ``method``: the project's method key (:mod:`divebatch.methods`): SGD at the initial batch size is
  ``sgd_small``, SGD at 2048 ``sgd_large`` (two learning rates, told apart by ``lr``), the adaptive
  methods with lr rescaling ``*_rescale``;
- ``authors_label``: the row label as the notebook prints it (untruncated);
- ``lr``, ``batch_size``: the initial learning rate and batch size in the label;
- ``rescale``: the lr-rescaling group of the table the row is printed in (small-batch SGD is
  printed in both); for rows outside those tables, whether the run rescaled the lr (the notebook
  counts SGD at lr 1.6 / 0.16 and batch 2048 as the rescaled large batch);
- ``quantity``, ``value``, ``sem``, ``unit``: :data:`QUANTITY_UNITS`; ``sem`` is the printed standard
  error of the mean over seeds (empty where none is printed);
- ``repo``, ``commit`` (40 hex), ``file``, ``cell``: where the value is printed;
- ``delta``, ``resize_freq``, ``max_batch_size``: the other hyperparameters of the label (empty for SGD);
- ``check_commit``, ``check_cell``, ``check_value``, ``check_sem``: the same number where another
  commit (or, for small-batch SGD, the other table) prints it too; empty otherwise.

The authors' statistic (``process_directory`` and ``calculate_epochs_and_times_to_reach_final_accuracy``
in the notebook): per epoch, mean and SEM (pandas, ddof 1) of the validation accuracy over the seeds
found (the code expects seeds 1-5); "epochs to ±1 %" is the first epoch (1-based) whose seed-mean
accuracy is at least the final seed-mean minus 1 point; "time to ±1 %" sums the seed-mean training
seconds per epoch (evaluation excluded) of epochs 1 to that epoch. Their other definition (cell 13)
is the first epoch whose seed-mean accuracy is at least 95 % of the final seed-mean.

The checks (:func:`ratio_table`, :func:`range_table`, :func:`per_epoch_table`,
:func:`definitions_table`, :func:`discrepancy_table`) read only this CSV; ``divebatch authors``
writes them to ``paper_tables/authors/`` and into ``docs/authors_results.md``.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from divebatch.methods import BY_KEY, PAPER_METHODS

CSV_PATH = Path(__file__).with_name("authors_reported.csv")
REPO = "chenyuen0103/pytorch-cifar"
REQUIRED_COLUMNS = (
    "dataset",
    "method",
    "authors_label",
    "lr",
    "batch_size",
    "rescale",
    "quantity",
    "value",
    "sem",
    "unit",
    "repo",
    "commit",
    "file",
    "cell",
)
EXTRA_COLUMNS = (
    "delta",
    "resize_freq",
    "max_batch_size",
    "check_commit",
    "check_cell",
    "check_value",
    "check_sem",
)
DATASETS = ("cifar10", "cifar100", "tiny_imagenet")
DATASET_NAMES = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "tiny_imagenet": "Tiny-ImageNet"}
METHODS = tuple(v.key for v in PAPER_METHODS)
QUANTITY_UNITS = {
    "final_acc": "percent",  # seed-mean validation accuracy at the last epoch
    "epochs_to_1pct": "epochs",  # first epoch with seed-mean accuracy >= final - 1 point
    "total_epochs": "epochs",  # epochs in the seed-mean curve
    "seconds_to_1pct": "seconds",  # seed-mean training seconds summed over epochs 1..epochs_to_1pct
    "acc_at_25pct": "percent",  # seed-mean accuracy at epoch int(total_epochs * 0.25) (1-based)
    "acc_at_50pct": "percent",
    "acc_at_75pct": "percent",
    "acc_at_100pct": "percent",  # at the last epoch
    "epochs_to_95pct": "epochs",  # first epoch with seed-mean accuracy >= 0.95 * final
    "seconds_per_epoch": "seconds_per_epoch",  # mean training seconds per epoch of the timing runs
    "wall_seconds_per_epoch": "seconds_per_epoch",  # wall-clock (training + evaluation), seed 1
    "gpu_memory_mb": "MB",  # mean over epochs of the epoch's peak allocated memory, bytes / 2**20, seed 1
}
TABLE_QUANTITIES = ("final_acc", "epochs_to_1pct", "total_epochs", "seconds_to_1pct")
CHECKPOINT_QUANTITIES = ("acc_at_25pct", "acc_at_50pct", "acc_at_75pct", "acc_at_100pct")
DIVEBATCH = {False: "divebatch", True: "divebatch_rescale"}  # the DiveBatch row of each lr-rescaling group
ADABATCH = {False: "adabatch", True: "adabatch_rescale"}
# The abstract's range "1.06x to 5.0x" (docs/protocol.md, claim 1): bounds and the decimals they are printed with.
ABSTRACT_LOW, ABSTRACT_HIGH = (1.06, 2), (5.0, 1)
# Implied and measured seconds per epoch "agree" when their ratio is within this fraction of 1.
AGREE_TOLERANCE = 0.10
UNIT_QUANTITY = {"epochs": "epochs_to_1pct", "seconds": "seconds_to_1pct"}
UNIT_WORDS = {"epochs": "epochs", "seconds": "training seconds"}
BEGIN, END = "<!-- authors-check:begin -->", "<!-- authors-check:end -->"
DOC_PATH = Path("docs") / "authors_results.md"
OUT_DIR = Path("paper_tables") / "authors"
README_NOT_REPORTED = "not reported"


class ReferenceError(ValueError):
    """The reference CSV breaks its schema (a column, value or row named in the message)."""


# ----------------------------------------------------------------------------- reading


def _allowed(col: str, values: pd.Series, allowed) -> None:
    bad = sorted(set(values) - set(allowed))
    if bad:
        raise ReferenceError(f"column {col!r} has value(s) {bad}; allowed: {' | '.join(map(str, allowed))}")


def load_reported(path: str | Path | None = None) -> pd.DataFrame:
    """The authors' reported numbers, one row per (dataset, method, hyperparameters, quantity).

    Args:
        path: the CSV (default: the package's ``authors_reported.csv``).

    Returns:
        DataFrame with the columns of :data:`REQUIRED_COLUMNS` and :data:`EXTRA_COLUMNS`: ``lr``,
        ``value``, ``sem``, ``check_value``, ``check_sem``, ``delta`` float64 (NaN where empty);
        ``batch_size``, ``cell`` int64; ``rescale`` bool; ``resize_freq``, ``max_batch_size``,
        ``check_cell`` Int64 (nullable); the rest str ("" where empty). Units: :data:`QUANTITY_UNITS`.

    Raises:
        ReferenceError: a column missing, a value outside its allowed set, a unit that is not its
            quantity's, a negative SEM, a non-integer epoch count, or two rows with the same key.
    """
    path = Path(path) if path is not None else CSV_PATH
    raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in (*REQUIRED_COLUMNS, *EXTRA_COLUMNS) if c not in raw.columns]
    if missing:
        raise ReferenceError(f"{path}: missing column(s) {missing}; required: {list(REQUIRED_COLUMNS + EXTRA_COLUMNS)}")
    _allowed("dataset", raw["dataset"], DATASETS)
    _allowed("method", raw["method"], METHODS)
    _allowed("quantity", raw["quantity"], QUANTITY_UNITS)
    _allowed("rescale", raw["rescale"], ("true", "false"))
    wrong_unit = raw[raw["unit"] != raw["quantity"].map(QUANTITY_UNITS)]
    if len(wrong_unit):
        r = wrong_unit.iloc[0]
        raise ReferenceError(
            f"row {r['dataset']}/{r['method']}/{r['quantity']}: unit {r['unit']!r}; allowed for "
            f"{r['quantity']}: {QUANTITY_UNITS[r['quantity']]!r}"
        )
    df = raw.copy()

    def num(col: str) -> pd.Series:
        out = pd.to_numeric(df[col].replace("", np.nan), errors="coerce")
        bad = df[col][out.isna() & (df[col] != "")]
        if len(bad):
            raise ReferenceError(f"column {col!r} has non-numeric value {bad.iloc[0]!r}")
        return out

    for col in ("lr", "value", "sem", "check_value", "check_sem", "delta"):
        df[col] = num(col).astype(float)
    for col in ("batch_size", "cell"):
        v = num(col)
        if v.isna().any():
            raise ReferenceError(f"column {col!r} is empty in a row; it is required")
        df[col] = v.astype(np.int64)
    for col in ("resize_freq", "max_batch_size", "check_cell"):
        df[col] = num(col).astype("Int64")
    if df["value"].isna().any():
        raise ReferenceError("column 'value' is empty in a row; it is required")
    df["rescale"] = df["rescale"] == "true"
    neg = df[(df["sem"] < 0) | (df["check_sem"] < 0)]
    if len(neg):
        raise ReferenceError(f"negative SEM in row {neg.iloc[0][['dataset', 'method', 'quantity']].tolist()}")
    epochs = df[df["unit"] == "epochs"]
    frac = epochs[epochs["value"] != np.round(epochs["value"])]
    if len(frac):
        raise ReferenceError(
            f"epoch count not an integer: {frac.iloc[0][['dataset', 'method', 'quantity', 'value']].tolist()}"
        )
    key = ["dataset", "method", "lr", "batch_size", "rescale", "delta", "resize_freq", "quantity"]
    dup = df[df.duplicated(key, keep=False)]
    if len(dup):
        raise ReferenceError(f"two rows with the same key {key}: {dup.iloc[0][key].tolist()}")
    return df


def csv_digest(path: str | Path | None = None) -> str:
    """First 12 hex digits of the SHA-256 of the CSV file (names the data in the tables' provenance)."""
    return hashlib.sha256(Path(path or CSV_PATH).read_bytes()).hexdigest()[:12]


def provenance(df: pd.DataFrame, digest: str) -> str:
    """One line naming the source commits and cells (checks included) and the CSV's digest."""
    cells: dict[str, set[int]] = {}
    for commit, cell in zip(df["commit"], df["cell"]):
        cells.setdefault(commit, set()).add(int(cell))
    for commit, cell in zip(df["check_commit"], df["check_cell"]):
        if commit:
            cells.setdefault(commit, set()).add(int(cell))
    parts = [f"@{c[:7]} cells {','.join(map(str, sorted(v)))}" for c, v in sorted(cells.items(), key=lambda kv: kv[0])]
    return f"authors' notebook {REPO} src/plot.ipynb, stored outputs {'; '.join(parts)}; authors_reported.csv sha256 {digest}"


# ----------------------------------------------------------------------------- the tables as printed


def paper_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The rows of the authors' epochs/seconds tables, wide: one row per (dataset, lr-rescaling group,
    method, lr) with columns ``label``, the :data:`TABLE_QUANTITIES` and ``final_sem``.

    Returns:
        DataFrame sorted by dataset, group (without lr rescaling first) and method order.
    """
    t = df[df["quantity"].isin(TABLE_QUANTITIES)]
    keys = ["dataset", "rescale", "method", "lr"]
    wide = t.pivot_table(index=keys, columns="quantity", values="value", aggfunc="first").reset_index()
    sem = t[t["quantity"] == "final_acc"].set_index(keys)["sem"].rename("final_sem")
    label = t.groupby(keys)["authors_label"].first().rename("label")
    wide = wide.join(sem, on=keys).join(label, on=keys)
    wide["_d"] = wide["dataset"].map(DATASETS.index)
    wide["_m"] = wide["method"].map(METHODS.index)
    wide = wide.sort_values(["_d", "rescale", "_m", "lr"]).drop(columns=["_d", "_m"]).reset_index(drop=True)
    wide.columns.name = None
    return wide


def _lookup(df: pd.DataFrame, quantity: str, dataset: str, method: str, lr: float) -> pd.Series | None:
    """The row of ``quantity`` for (dataset, method): same lr if there is one, else the only row, else None."""
    rows = df[(df["quantity"] == quantity) & (df["dataset"] == dataset) & (df["method"] == method)]
    same = rows[np.isclose(rows["lr"], lr)]
    if len(same) == 1:
        return same.iloc[0]
    return rows.iloc[0] if len(rows) == 1 else None


def method_name(method: str, lr: float | None = None) -> str:
    """Display name (:mod:`divebatch.methods`), with the lr for large-batch SGD (it has two)."""
    name = BY_KEY[method].display_name
    return f"{name}, lr {lr:g}" if method == "sgd_large" and lr is not None else name


def _group(rescale: bool) -> str:
    return "with lr rescaling" if rescale else "without lr rescaling"


# ----------------------------------------------------------------------------- check 1: the abstract's range


def ratio_table(df: pd.DataFrame) -> pd.DataFrame:
    """Every DiveBatch-against-baseline ratio in the authors' epochs/seconds tables.

    Within each table (dataset x lr-rescaling group), ratio = baseline / DiveBatch of epochs to
    ±1 % and of training seconds to ±1 % (> 1: DiveBatch reaches its target sooner). For the seconds,
    ``ratio_measured`` recomputes both times as epochs to ±1 % x the method's mean training seconds
    per epoch of the timing runs (:func:`per_epoch_table`); NaN where a method has no timing run.

    Returns:
        One row per (dataset, rescale, baseline, baseline_lr, unit): ``baseline_value``,
        ``divebatch_value`` (epochs or seconds), ``ratio``, ``ratio_measured``, ``below_1``,
        ``rounds_to_low`` / ``rounds_to_high`` (the ratio printed with the abstract's decimals equals
        its bound 1.06 / 5.0).
    """
    wide = paper_rows(df)
    per_epoch = per_epoch_table(df).set_index(["dataset", "rescale", "method", "lr"])["seconds_at_measured"]
    rows = []
    for (dataset, rescale), g in wide.groupby(["dataset", "rescale"], sort=False):
        dive = g[g["method"] == DIVEBATCH[rescale]]
        if len(dive) != 1:
            raise ReferenceError(f"{dataset}, {_group(rescale)}: {len(dive)} DiveBatch rows; expected 1")
        d = dive.iloc[0]
        d_meas = per_epoch.get((dataset, rescale, d["method"], d["lr"]), np.nan)
        for _, b in g[g["method"] != d["method"]].iterrows():
            b_meas = per_epoch.get((dataset, rescale, b["method"], b["lr"]), np.nan)
            for unit, q in UNIT_QUANTITY.items():
                ratio = b[q] / d[q]
                rows.append(
                    {
                        "dataset": dataset,
                        "rescale": rescale,
                        "baseline": b["method"],
                        "baseline_lr": b["lr"],
                        "unit": unit,
                        "baseline_value": b[q],
                        "divebatch_value": d[q],
                        "ratio": ratio,
                        "ratio_measured": b_meas / d_meas if unit == "seconds" else np.nan,
                        "below_1": ratio < 1,
                        "rounds_to_low": round(ratio, ABSTRACT_LOW[1]) == ABSTRACT_LOW[0],
                        "rounds_to_high": round(ratio, ABSTRACT_HIGH[1]) == ABSTRACT_HIGH[0],
                    }
                )
    return pd.DataFrame(rows)


# Subsets of the ratios over which the smallest and largest are compared with the abstract's range:
# name -> (units, lr-rescaling groups, baseline roles); a role "adabatch" is the group's AdaBatch.
SLICES = {
    "all ratios": (("epochs", "seconds"), (False, True), ("sgd_small", "sgd_large", "adabatch")),
    "epochs, all": (("epochs",), (False, True), ("sgd_small", "sgd_large", "adabatch")),
    "seconds, all": (("seconds",), (False, True), ("sgd_small", "sgd_large", "adabatch")),
    "seconds, without lr rescaling": (("seconds",), (False,), ("sgd_small", "sgd_large", "adabatch")),
    "seconds, with lr rescaling": (("seconds",), (True,), ("sgd_small", "sgd_large", "adabatch")),
    "seconds, without lr rescaling, vs small-batch SGD and AdaBatch": (
        ("seconds",),
        (False,),
        ("sgd_small", "adabatch"),
    ),
    "seconds, with lr rescaling, vs small-batch SGD and AdaBatch": (("seconds",), (True,), ("sgd_small", "adabatch")),
    "epochs, without lr rescaling, vs small-batch SGD and AdaBatch": (("epochs",), (False,), ("sgd_small", "adabatch")),
}
ABSTRACT_SLICE = "seconds, without lr rescaling, vs small-batch SGD and AdaBatch"


def _role(method: str) -> str:
    return "adabatch" if method.startswith("adabatch") else method


def slice_of(ratios: pd.DataFrame, name: str) -> pd.DataFrame:
    """The ratios of :data:`SLICES` ``name``."""
    if name not in SLICES:
        raise KeyError(f"slice {name!r}; allowed: {' | '.join(SLICES)}")
    units, groups, roles = SLICES[name]
    keep = ratios["unit"].isin(units) & ratios["rescale"].isin(groups) & ratios["baseline"].map(_role).isin(roles)
    return ratios[keep]


def _describe(r: pd.Series) -> str:
    return (
        f"{DATASET_NAMES[r['dataset']]} {_group(r['rescale'])}, vs {method_name(r['baseline'], r['baseline_lr'])}, "
        f"{UNIT_WORDS[r['unit']]}"
    )


def range_table(ratios: pd.DataFrame, column: str = "ratio") -> pd.DataFrame:
    """Smallest and largest ratio of every :data:`SLICES` subset, and whether they are the abstract's range.

    Args:
        ratios: :func:`ratio_table`.
        column: ``ratio`` (as reported) or ``ratio_measured`` (seconds from the timing runs).

    Returns:
        One row per slice: ``slice``, ``n``, ``min``, ``max``, ``min_row``, ``max_row``,
        ``n_below_1``, ``is_abstract_range`` (min printed with 2 decimals is 1.06 and max with 1
        decimal is 5.0).
    """
    rows = []
    for name in SLICES:
        s = slice_of(ratios, name).dropna(subset=[column])
        if s.empty:
            continue
        lo, hi = s.loc[s[column].idxmin()], s.loc[s[column].idxmax()]
        rows.append(
            {
                "slice": name,
                "n": len(s),
                "min": lo[column],
                "max": hi[column],
                "min_row": _describe(lo),
                "max_row": _describe(hi),
                "n_below_1": int((s[column] < 1).sum()),
                "is_abstract_range": bool(
                    round(lo[column], ABSTRACT_LOW[1]) == ABSTRACT_LOW[0]
                    and round(hi[column], ABSTRACT_HIGH[1]) == ABSTRACT_HIGH[0]
                ),
            }
        )
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- check 2: seconds per epoch


def per_epoch_table(df: pd.DataFrame, tolerance: float = AGREE_TOLERANCE) -> pd.DataFrame:
    """Seconds per epoch implied by each table row against the same method's timing runs.

    implied = time to ±1 % / epochs to ±1 % (seconds per epoch, the mean over epochs 1..E of the
    seed-mean training time); measured = the ``seconds_per_epoch`` row of the same dataset and method
    (the same lr where there is one; the timing run's own label is kept in ``timing_label``, since
    its lr or delta may differ from the table row's). The timing figure is a mean over all epochs of
    the timing runs, not over epochs 1..E.

    Args:
        df: :func:`load_reported`.
        tolerance: ``agree`` when abs(implied / measured - 1) <= tolerance.

    Returns:
        One row per table row: ``dataset``, ``rescale``, ``method``, ``lr``, ``epochs``, ``seconds``,
        ``implied`` (s/epoch), ``timing_label``, ``timing_cell``, ``measured`` (s/epoch; NaN without a
        timing run), ``implied_over_measured``, ``agree`` (bool; False without a timing run),
        ``has_timing``, ``seconds_at_measured`` = epochs x measured (seconds).
    """
    rows = []
    for _, r in paper_rows(df).iterrows():
        t = _lookup(df, "seconds_per_epoch", r["dataset"], r["method"], r["lr"])
        implied = r["seconds_to_1pct"] / r["epochs_to_1pct"]
        measured = t["value"] if t is not None else np.nan
        ratio = implied / measured
        rows.append(
            {
                "dataset": r["dataset"],
                "rescale": r["rescale"],
                "method": r["method"],
                "lr": r["lr"],
                "epochs": int(r["epochs_to_1pct"]),
                "seconds": r["seconds_to_1pct"],
                "implied": implied,
                "timing_label": t["authors_label"] if t is not None else "",
                "timing_cell": int(t["cell"]) if t is not None else pd.NA,
                "measured": measured,
                "implied_over_measured": ratio,
                "has_timing": t is not None,
                "agree": bool(t is not None and abs(ratio - 1) <= tolerance),
                "seconds_at_measured": r["epochs_to_1pct"] * measured,
            }
        )
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- check 3: two definitions


def definitions_table(df: pd.DataFrame) -> pd.DataFrame:
    """Epochs to within 1 point of final against epochs to 95 % of final, where both are printed.

    Returns:
        One row per table row that has an ``epochs_to_95pct`` (CIFAR-10 only): ``dataset``,
        ``rescale``, ``method``, ``lr``, ``epochs_1pct``, ``epochs_95pct``, and for the baselines the
        ratio baseline / DiveBatch of the same group under each definition (``ratio_1pct``,
        ``ratio_95pct``; NaN on the DiveBatch row).
    """
    rows = []
    wide = paper_rows(df)
    for (dataset, rescale), g in wide.groupby(["dataset", "rescale"], sort=False):
        found = {}
        for _, r in g.iterrows():
            e95 = _lookup(df, "epochs_to_95pct", dataset, r["method"], r["lr"])
            if e95 is not None:
                found[(r["method"], r["lr"])] = (r["epochs_to_1pct"], e95["value"])
        dkey = next((k for k in found if k[0] == DIVEBATCH[rescale]), None)
        for (method, lr), (e1, e95) in found.items():
            d1, d95 = found[dkey] if dkey else (np.nan, np.nan)
            is_dive = (method, lr) == dkey
            rows.append(
                {
                    "dataset": dataset,
                    "rescale": rescale,
                    "method": method,
                    "lr": lr,
                    "epochs_1pct": int(e1),
                    "epochs_95pct": int(e95),
                    "ratio_1pct": np.nan if is_dive else e1 / d1,
                    "ratio_95pct": np.nan if is_dive else e95 / d95,
                }
            )
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- check 4: the sources agree


def discrepancy_table(df: pd.DataFrame) -> pd.DataFrame:
    """Numbers printed twice that differ: a row's value or SEM against its check columns, and the
    accuracy at 100 % of training against the final accuracy of the same row (both are the last
    epoch's seed-mean and SEM).

    Returns:
        One row per difference: ``dataset``, ``rescale``, ``method``, ``lr``, ``quantity``, ``value``,
        ``sem``, ``source``, ``other_value``, ``other_sem``, ``other_source``.
    """

    def src(commit, cell) -> str:
        return f"@{commit[:7]} cell {int(cell)}"

    def same(a, b) -> bool:
        return (np.isnan(a) and np.isnan(b)) or a == b

    rows = []
    keys = ["dataset", "rescale", "method", "lr", "quantity"]
    for _, r in df[df["check_commit"] != ""].iterrows():
        if not (same(r["value"], r["check_value"]) and same(r["sem"], r["check_sem"])):
            rows.append(
                {k: r[k] for k in keys}
                | {
                    "value": r["value"],
                    "sem": r["sem"],
                    "source": src(r["commit"], r["cell"]),
                    "other_value": r["check_value"],
                    "other_sem": r["check_sem"],
                    "other_source": src(r["check_commit"], r["check_cell"]),
                }
            )
    idx = ["dataset", "rescale", "method", "lr"]
    fin = df[df["quantity"] == "final_acc"].set_index(idx)
    for _, r in df[df["quantity"] == "acc_at_100pct"].iterrows():
        k = tuple(r[c] for c in idx)
        if k not in fin.index:
            continue
        f = fin.loc[k]
        if not (same(r["value"], f["value"]) and same(r["sem"], f["sem"])):
            rows.append(
                {k2: r[k2] for k2 in keys}
                | {
                    "value": r["value"],
                    "sem": r["sem"],
                    "source": src(r["commit"], r["cell"]),
                    "other_value": f["value"],
                    "other_sem": f["sem"],
                    "other_source": f"final_acc {src(f['commit'], f['cell'])}",
                }
            )
    return pd.DataFrame(rows, columns=[*keys, "value", "sem", "source", "other_value", "other_sem", "other_source"])


# ----------------------------------------------------------------------------- formatting


def _x(v: float, digits: int = 2) -> str:
    return "" if pd.isna(v) else f"{v:.{digits}f}x"


def _num(v: float, digits: int = 2) -> str:
    return "" if pd.isna(v) else f"{v:.{digits}f}"


def _sec(v: float, digits: int = 2) -> str:
    """Seconds (or any count) with a thousands separator, so that no table reader re-rounds it."""
    return "" if pd.isna(v) else f"{v:,.{digits}f}"


def format_ratios(ratios: pd.DataFrame) -> pd.DataFrame:
    """:func:`ratio_table` for reading."""
    return pd.DataFrame(
        {
            "dataset": ratios["dataset"].map(DATASET_NAMES),
            "table": ratios["rescale"].map(_group),
            "baseline": [method_name(m, lr) for m, lr in zip(ratios["baseline"], ratios["baseline_lr"])],
            "unit (to ±1 %)": ratios["unit"].map(UNIT_WORDS),
            "baseline value": [
                _sec(v, 0 if u == "epochs" else 2) for v, u in zip(ratios["baseline_value"], ratios["unit"])
            ],
            "DiveBatch value": [
                _sec(v, 0 if u == "epochs" else 2) for v, u in zip(ratios["divebatch_value"], ratios["unit"])
            ],
            "ratio (baseline / DiveBatch)": ratios["ratio"].map(lambda v: _x(v, 4)),
            "below 1": ratios["below_1"].map({True: "yes", False: ""}),
            "printed as 1.06 / 5.0": [
                "1.06" if lo else ("5.0" if hi else "")
                for lo, hi in zip(ratios["rounds_to_low"], ratios["rounds_to_high"])
            ],
            "ratio with measured s/epoch": ratios["ratio_measured"].map(lambda v: _x(v, 4)),
        }
    )


def format_ranges(ranges: pd.DataFrame) -> pd.DataFrame:
    """:func:`range_table` for reading."""
    return pd.DataFrame(
        {
            "ratios": ranges["slice"],
            "n": ranges["n"],
            "smallest": ranges["min"].map(lambda v: _x(v, 4)),
            "largest": ranges["max"].map(lambda v: _x(v, 4)),
            "below 1": ranges["n_below_1"],
            "range is 1.06x to 5.0x": ranges["is_abstract_range"].map({True: "yes", False: "no"}),
            "smallest at": ranges["min_row"],
            "largest at": ranges["max_row"],
        }
    )


def format_per_epoch(pe: pd.DataFrame) -> pd.DataFrame:
    """:func:`per_epoch_table` for reading."""
    verdict = [("agree" if a else "disagree") if h else "no timing run" for a, h in zip(pe["agree"], pe["has_timing"])]
    return pd.DataFrame(
        {
            "dataset": pe["dataset"].map(DATASET_NAMES),
            "table": pe["rescale"].map(_group),
            "method": [method_name(m, lr) for m, lr in zip(pe["method"], pe["lr"])],
            "epochs to ±1 %": pe["epochs"],
            "s to ±1 %": pe["seconds"].map(_sec),
            "implied s/epoch": pe["implied"].map(lambda v: f"{v:.2f}"),
            "timing run (cell)": [
                f"{lab} ({c})" if lab else "" for lab, c in zip(pe["timing_label"], pe["timing_cell"])
            ],
            "measured s/epoch": pe["measured"].map(lambda v: _num(v)),
            "implied / measured": pe["implied_over_measured"].map(lambda v: _num(v, 3)),
            "verdict": verdict,
            "epochs x measured (s)": pe["seconds_at_measured"].map(lambda v: _sec(v, 1)),
        }
    )


def format_definitions(defs: pd.DataFrame) -> pd.DataFrame:
    """:func:`definitions_table` for reading."""
    return pd.DataFrame(
        {
            "dataset": defs["dataset"].map(DATASET_NAMES),
            "table": defs["rescale"].map(_group),
            "method": [method_name(m, lr) for m, lr in zip(defs["method"], defs["lr"])],
            "epochs to final - 1 point": defs["epochs_1pct"],
            "epochs to 95 % of final": defs["epochs_95pct"],
            "ratio vs DiveBatch (- 1 point)": defs["ratio_1pct"].map(_x),
            "ratio vs DiveBatch (95 %)": defs["ratio_95pct"].map(_x),
        }
    )


def format_discrepancies(disc: pd.DataFrame) -> pd.DataFrame:
    """:func:`discrepancy_table` for reading."""

    def vs(v, s):
        return f"{v:g}" + ("" if pd.isna(s) else f" ± {s:.2f}")

    return pd.DataFrame(
        {
            "dataset": disc["dataset"].map(DATASET_NAMES),
            "rescale": disc["rescale"].map({True: "true", False: "false"}),
            "method": [method_name(m, lr) for m, lr in zip(disc["method"], disc["lr"])],
            "quantity": disc["quantity"],
            "value (source)": [f"{vs(v, s)} ({src})" for v, s, src in zip(disc["value"], disc["sem"], disc["source"])],
            "other print (source)": [
                f"{vs(v, s)} ({src})" for v, s, src in zip(disc["other_value"], disc["other_sem"], disc["other_source"])
            ],
        }
    )


def format_reported(df: pd.DataFrame) -> pd.DataFrame:
    """The epochs/seconds and checkpoint tables as the authors print them, one row per table row."""
    keys = ["dataset", "rescale", "method", "lr"]
    t = df[df["quantity"].isin(TABLE_QUANTITIES + CHECKPOINT_QUANTITIES)].copy()
    t["cell_text"] = [
        (f"{v:.2f} ± {s:.2f}" if not pd.isna(s) else (f"{v:.0f}" if u == "epochs" else _sec(v)))
        for v, s, u in zip(t["value"], t["sem"], t["unit"])
    ]
    wide = t.pivot_table(index=keys, columns="quantity", values="cell_text", aggfunc="first").reset_index()
    wide["_d"] = wide["dataset"].map(DATASETS.index)
    wide["_m"] = wide["method"].map(METHODS.index)
    wide = wide.sort_values(["rescale", "_d", "_m", "lr"])
    out = pd.DataFrame(
        {
            "dataset": wide["dataset"].map(DATASET_NAMES),
            "table": wide["rescale"].map(_group),
            "method": [method_name(m, lr) for m, lr in zip(wide["method"], wide["lr"])],
            "final acc. (%)": wide["final_acc"],
            "epochs to ±1 %": wide["epochs_to_1pct"],
            "total epochs": wide["total_epochs"],
            "s to ±1 %": wide["seconds_to_1pct"],
        }
    )
    for q in CHECKPOINT_QUANTITIES:
        out[f"acc. at {q.split('_')[2][:-3]} %"] = wide[q].values
    return out.reset_index(drop=True)


# ----------------------------------------------------------------------------- the generated text


def _list(items: list[str]) -> str:
    return "; ".join(items) if items else "none"


def _md(display: pd.DataFrame) -> str:
    """Markdown of a display table, every cell exactly as formatted (no re-parsing of numbers)."""
    return display.to_markdown(index=False, disable_numparse=True)


def _arithmetic(r: pd.Series) -> str:
    """ "<row>: baseline / DiveBatch = ratio" for a :func:`ratio_table` row."""
    digits = 0 if r["unit"] == "epochs" else 2
    return (
        f"{_describe(r)}: {_sec(r['baseline_value'], digits)} / {_sec(r['divebatch_value'], digits)} = {r['ratio']:.4f}"
    )


def render_block(df: pd.DataFrame, digest: str | None = None) -> str:
    """The generated block of ``docs/authors_results.md`` (between :data:`BEGIN` and :data:`END`):
    every number in it is computed here from ``df``.

    Args:
        df: :func:`load_reported`.
        digest: :func:`csv_digest` of the file ``df`` was read from (named in the block).
    """
    ratios = ratio_table(df)
    ranges = range_table(ratios)
    pe = per_epoch_table(df)
    defs = definitions_table(df)
    disc = discrepancy_table(df)
    L = [
        BEGIN,
        f"<!-- generated by `divebatch authors` from authors_reported.csv (sha256 {digest}); do not edit -->",
        "",
    ]

    # summary
    exact = ranges[ranges["is_abstract_range"]]
    allr = ranges.set_index("slice").loc["all ratios"]
    L += ["### Summary", ""]
    for _, x in exact.iterrows():
        L.append(
            f'- The abstract\'s range is the smallest and largest ratio of the subset "{x["slice"]}" '
            f"({x['n']} ratios): {x['min']:.4f} ({x['min_row']}) and {x['max']:.4f} ({x['max_row']})."
        )
    if exact.empty:
        L.append("- No subset of the ratios below has its smallest and largest ratio printing as 1.06 and 5.0.")
    L.append(
        f"- All {int(allr['n'])} DiveBatch-against-baseline ratios of the tables run from {allr['min']:.4f} to "
        f"{allr['max']:.4f}; {int(allr['n_below_1'])} are below 1."
    )
    timed = pe[pe["has_timing"]]
    off = timed[~timed["agree"]]
    L.append(
        f"- Seconds per epoch implied by time / epochs to ±1 % differ by more than {AGREE_TOLERANCE:.0%} from the "
        f"same method's timing runs in {len(off)} of {len(timed)} rows"
        + (
            ": "
            + "; ".join(
                f"{DATASET_NAMES[r['dataset']]} {_group(r['rescale'])}, {method_name(r['method'], r['lr'])} "
                f"({r['implied']:.2f} s against {r['measured']:.2f} s per epoch)"
                for _, r in off.iterrows()
            )
            if len(off)
            else ""
        )
        + "."
    )
    for flag in ("rounds_to_high", "rounds_to_low"):
        for _, r in ratios[ratios[flag]].iterrows():
            meas = _num(r["ratio_measured"], 4) or "not computable (no timing run)"
            L.append(f"- {_describe(r)}: {r['ratio']:.4f} as reported; {meas} with the measured seconds per epoch.")
    for (dataset, rescale), g in defs.groupby(["dataset", "rescale"], sort=False):
        for _, r in g[g["method"] == "sgd_small"].iterrows():
            L.append(
                f"- {DATASET_NAMES[dataset]} {_group(rescale)}, DiveBatch against small-batch SGD in epochs: "
                f"{r['ratio_1pct']:.2f}x to final - 1 point, {r['ratio_95pct']:.2f}x to 95 % of final."
            )
    L += [f"- Numbers printed twice with different values: {len(disc)} (section 4).", ""]

    # 1. the abstract's range
    n_tables = ratios.groupby(["dataset", "rescale"]).ngroups
    low = [_arithmetic(r) for _, r in ratios[ratios["rounds_to_low"]].iterrows()]
    high = [_arithmetic(r) for _, r in ratios[ratios["rounds_to_high"]].iterrows()]
    below = [f"{_describe(r)} ({r['ratio']:.4f})" for _, r in ratios[ratios["below_1"]].iterrows()]
    exact = ranges[ranges["is_abstract_range"]]["slice"].tolist()
    allr = ranges.set_index("slice").loc["all ratios"]
    L += [
        '### 1. The abstract\'s "1.06x to 5.0x"',
        "",
        f"{len(ratios)} ratios: {n_tables} tables (dataset x with / without lr rescaling), each DiveBatch row "
        f"against every other row of its table, in epochs and in training seconds to ±1 %. "
        f"Ratio = baseline / DiveBatch; above 1, DiveBatch reaches its target sooner. Over all of them the "
        f"ratio runs from {allr['min']:.4f} ({allr['min_row']}) to {allr['max']:.4f} ({allr['max_row']}).",
        "",
        f"- Printed with two decimals as 1.06: {_list(low)}.",
        f"- Printed with one decimal as 5.0: {_list(high)}.",
        f"- Below 1 ({len(below)} of {len(ratios)}): {_list(below)}.",
        f"- Subsets whose smallest and largest ratio print as 1.06 and 5.0: {_list(exact)}.",
        "",
        _md(format_ranges(ranges)),
        "",
        _md(format_ratios(ratios)),
        "",
    ]

    # 2. seconds per epoch
    n_agree, n_timing = int(pe["agree"].sum()), int(pe["has_timing"].sum())
    dis = pe[pe["has_timing"] & ~pe["agree"]]
    L += [
        "### 2. Seconds per epoch: implied by the tables against the timing runs",
        "",
        f"Of {len(pe)} table rows, {n_timing} have a timing run of the same method; {n_agree} of those agree "
        f"(implied within {AGREE_TOLERANCE:.0%} of measured), {len(dis)} disagree; {len(pe) - n_timing} have no "
        "timing run.",
        "",
        _md(format_per_epoch(pe)),
        "",
        "The rows that disagree, with the arithmetic:",
        "",
    ]
    for _, r in dis.iterrows():
        L.append(
            f"- {DATASET_NAMES[r['dataset']]} {_group(r['rescale'])}, {method_name(r['method'], r['lr'])}: "
            f"{_sec(r['seconds'])} s / {r['epochs']} epochs = {r['implied']:.2f} s per epoch; timing runs "
            f"(`{r['timing_label']}`, cell {r['timing_cell']}): {r['measured']:.2f} s per epoch "
            f"(implied / measured = {r['implied_over_measured']:.3f}); {r['epochs']} epochs x {r['measured']:.2f} s = "
            f"{_sec(r['seconds_at_measured'], 1)} s instead of {_sec(r['seconds'])} s."
        )
    if dis.empty:
        L.append("- none")
    rep, meas = ranges.set_index("slice"), range_table(ratios, "ratio_measured").set_index("slice")
    L += [
        "",
        "Ratios with the measured seconds per epoch (time = epochs to ±1 % x the method's measured seconds per "
        'epoch; column "ratio with measured s/epoch" of section 1):',
        "",
    ]
    for name in (ABSTRACT_SLICE, "seconds, all"):
        if name in meas.index:
            m, r0 = meas.loc[name], rep.loc[name]
            L.append(
                f"- {name}: {m['n']} of {r0['n']} ratios computable; smallest {m['min']:.4f} ({m['min_row']}), "
                f"largest {m['max']:.4f} ({m['max_row']}), {m['n_below_1']} below 1 "
                f"(as reported: {r0['min']:.4f} to {r0['max']:.4f}, {r0['n_below_1']} below 1)."
            )
    L.append("")

    # 3. definitions
    L += [
        "### 3. Two definitions: final - 1 point against 95 % of final",
        "",
        _md(format_definitions(defs)),
        "",
    ]
    for (dataset, rescale), g in defs.groupby(["dataset", "rescale"], sort=False):
        b = g.dropna(subset=["ratio_1pct"])
        parts = [
            f"vs {method_name(r['method'], r['lr'])} {r['ratio_1pct']:.2f}x / {r['ratio_95pct']:.2f}x"
            for _, r in b.iterrows()
        ]
        L.append(
            f"- {DATASET_NAMES[dataset]} {_group(rescale)}, DiveBatch in epochs, final - 1 point / 95 % of final: {'; '.join(parts)}."
        )
    L += [
        "",
        "### 4. Numbers printed twice that differ",
        "",
        _md(format_discrepancies(disc)) if len(disc) else "none",
        "",
        END,
    ]
    return "\n".join(L)


def readme_cells(df: pd.DataFrame) -> dict[str, str]:
    """The README claims table's column "authors' reported value (source)", per claim row.

    Returns:
        claim number ("1" ... "4") -> cell text, computed from ``df``.
    """
    ratios = ratio_table(df)
    rng = range_table(ratios).set_index("slice")
    allr = rng.loc["all ratios"]
    src_doc = "[docs/authors_results.md](docs/authors_results.md)"

    def r(dataset, rescale, base, unit, col="ratio"):
        s = ratios[
            (ratios["dataset"] == dataset)
            & (ratios["rescale"] == rescale)
            & (ratios["baseline"] == base)
            & (ratios["unit"] == unit)
        ]
        return s.iloc[0][col]

    def where(quantity, dataset, rescale) -> str:
        rows = df[(df["quantity"] == quantity) & (df["dataset"] == dataset) & (df["rescale"] == rescale)]
        cells = sorted({f"@{c[:7]} cell {n}" for c, n in zip(rows["commit"], rows["cell"])})
        return ", ".join(cells)

    sl = slice_of(ratios, ABSTRACT_SLICE)
    lo, hi = sl.loc[sl["ratio"].idxmin()], sl.loc[sl["ratio"].idxmax()]

    def short(x: pd.Series) -> str:
        return f"{DATASET_NAMES[x['dataset']]} vs {method_name(x['baseline'], x['baseline_lr'])}"

    c1 = (
        f"{lo['ratio']:.2f}x ({short(lo)}) to {hi['ratio']:.2f}x ({short(hi)}): smallest and largest DiveBatch "
        f"speed-up in training seconds to ±1 %, without lr rescaling, vs small-batch SGD and AdaBatch; all "
        f"{int(allr['n'])} ratios of the tables (epochs and seconds, both lr groups, every baseline): "
        f"{allr['min']:.2f}x to {allr['max']:.2f}x, {int(allr['n_below_1'])} below 1 "
        f"(`{REPO}` `src/plot.ipynb` {where('seconds_to_1pct', 'cifar100', False)}; {src_doc})"
    )
    c2 = (
        f"{r('cifar10', False, 'adabatch', 'seconds'):.2f}x vs AdaBatch, {r('cifar10', False, 'sgd_small', 'seconds'):.2f}x "
        f"vs small-batch SGD (training seconds to ±1 %, without lr rescaling); in epochs "
        f"{r('cifar10', False, 'adabatch', 'epochs'):.2f}x and {r('cifar10', False, 'sgd_small', 'epochs'):.2f}x; with the "
        f"timing runs' seconds per epoch {r('cifar10', False, 'adabatch', 'seconds', 'ratio_measured'):.2f}x and "
        f"{r('cifar10', False, 'sgd_small', 'seconds', 'ratio_measured'):.2f}x "
        f"(`{REPO}` `src/plot.ipynb` {where('seconds_to_1pct', 'cifar10', False)}; {src_doc})"
    )
    fin = paper_rows(df)
    parts = []
    for dataset in DATASETS:
        g = fin[fin["dataset"] == dataset]
        sgd = g[g["method"] == "sgd_small"]["final_acc"].iloc[0]
        dive = [g[g["method"] == DIVEBATCH[rs]]["final_acc"].iloc[0] for rs in (False, True)]
        parts.append(f"{DATASET_NAMES[dataset]} {dive[0]:.2f} / {dive[1]:.2f} vs {sgd:.2f}")
    c3 = (
        f"final accuracy (%), DiveBatch without / with lr rescaling vs small-batch SGD: {'; '.join(parts)} "
        f"(`{REPO}` `src/plot.ipynb` {where('final_acc', 'cifar10', False)}, {where('final_acc', 'cifar10', True)}; "
        f"{src_doc})"
    )
    return {"1": c1, "2": c2, "3": c3, "4": README_NOT_REPORTED}


# ----------------------------------------------------------------------------- writing


def write_tables(df: pd.DataFrame, out: str | Path, digest: str) -> list[Path]:
    """Write ``reported``, ``ratios``, ``ranges``, ``per_epoch``, ``definitions`` and
    ``discrepancies`` as CSV / Markdown / LaTeX into ``out`` (:func:`divebatch.analysis.tables.write_table`),
    and ``checks.md``: the block of ``docs/authors_results.md`` (:func:`render_block`).

    Returns:
        The paths written.
    """
    from divebatch.analysis.tables import write_table

    prov = provenance(df, digest)
    out = Path(out)
    ratios = ratio_table(df)
    pe = per_epoch_table(df)
    defs = definitions_table(df)
    disc = discrepancy_table(df)
    ranges = range_table(ratios)
    reported = df[df["quantity"].isin(TABLE_QUANTITIES + CHECKPOINT_QUANTITIES)]
    items = [
        (reported, format_reported(df), "reported", "The authors' epochs/seconds and checkpoint tables, as printed"),
        (ratios, format_ratios(ratios), "ratios", "Every DiveBatch-against-baseline ratio in the authors' tables"),
        (
            ranges,
            format_ranges(ranges),
            "ranges",
            "Smallest and largest ratio per subset, against the abstract's 1.06x to 5.0x",
        ),
        (pe, format_per_epoch(pe), "per_epoch", "Seconds per epoch implied by the tables against the timing runs"),
        (defs, format_definitions(defs), "definitions", "Epochs to final - 1 point against epochs to 95 % of final"),
        (disc, format_discrepancies(disc), "discrepancies", "Numbers the notebook prints twice that differ"),
    ]
    paths: list[Path] = []
    for numeric, display, stem, title in items:
        paths += write_table(numeric, display, out / stem, prov, title)
    paths.append(out / "checks.md")
    paths[-1].write_text(
        f"# The authors' published numbers, checked\n\nProvenance: `{prov}`\n\n{render_block(df, digest)}\n"
    )
    return paths


def replace_block(text: str, block: str, where: str = "document") -> str:
    """``text`` with its one :data:`BEGIN` ... :data:`END` block replaced by ``block``.

    Raises:
        ValueError: ``text`` does not hold exactly one such block.
    """
    if text.count(BEGIN) != 1 or text.count(END) != 1:
        raise ValueError(f"invalid {where}: needs exactly one {BEGIN} ... {END} block")
    start, stop = text.index(BEGIN), text.index(END) + len(END)
    return text[:start] + block + text[stop:]


def doc_block(text: str) -> str:
    """The generated block of a document (markers included)."""
    if text.count(BEGIN) != 1 or text.count(END) != 1:
        raise ValueError(f"needs exactly one {BEGIN} ... {END} block")
    return text[text.index(BEGIN) : text.index(END) + len(END)]


def cli(argv: list[str] | None = None) -> int:
    """``divebatch authors [--csv PATH] [--out DIR] [--doc PATH] [--check]``; returns an exit code."""
    p = argparse.ArgumentParser(prog="divebatch authors", description=__doc__.splitlines()[0])
    p.add_argument("--csv", default=None, help="reference CSV (default: the package's authors_reported.csv)")
    p.add_argument("--out", default=str(OUT_DIR), help=f"folder of the generated tables (default: {OUT_DIR})")
    p.add_argument(
        "--doc", default=str(DOC_PATH), help=f"page whose generated block is rewritten (default: {DOC_PATH})"
    )
    p.add_argument("--check", action="store_true", help="write nothing; exit 1 when the page's block is out of date")
    args = p.parse_args(argv)
    try:
        df = load_reported(args.csv)
    except ReferenceError as err:
        print(f"divebatch authors: {err}", file=sys.stderr)
        return 2
    digest = csv_digest(args.csv)
    block = render_block(df, digest)
    doc = Path(args.doc)
    text = doc.read_text() if doc.exists() else f"{BEGIN}\n{END}\n"
    if args.check:
        current = doc_block(text)
        if current != block:
            print(f"divebatch authors: {doc} is out of date; run `divebatch authors`", file=sys.stderr)
            return 1
        print(f"{doc}: up to date")
        return 0
    paths = write_tables(df, args.out, digest)
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(replace_block(text, block, str(doc)))
    print(f"wrote {len(paths)} tables to {args.out} and the generated block of {doc}")
    return 0
