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

The checks (:mod:`divebatch.analysis.authors_checks`) read only this CSV; ``divebatch authors``
(:mod:`divebatch.analysis.authors`) writes them to ``paper_tables/authors/`` and into
``docs/authors_results.md``.
"""

from __future__ import annotations

import hashlib
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
CHECKPOINT_PERCENTS = (25, 50, 75, 100)  # percent of training
CHECKPOINT_QUANTITIES = tuple(f"acc_at_{p}pct" for p in CHECKPOINT_PERCENTS)
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


def lookup_quantity(df: pd.DataFrame, quantity: str, dataset: str, method: str, lr: float) -> pd.Series | None:
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


def group_text(rescale: bool) -> str:
    return "with lr rescaling" if rescale else "without lr rescaling"
