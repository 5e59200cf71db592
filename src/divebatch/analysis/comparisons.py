"""Every group against each baseline role, as one long table.

One row per dataset x method x setting (the group), baseline role
(:data:`divebatch.analysis.groups.BASELINES`), quantity and unit, with the estimate and its
95 % t-interval over seeds (:mod:`divebatch.analysis.stats`):

========================  =======================================  =====================================
quantity                  unit                                     value
========================  =======================================  =====================================
``acc_change``            ``pp``                                   mean final accuracy, group - baseline
``metric_gain``           the primary metric (``val_acc``, ...)    its change signed so that > 0 is better
``authors_speedup``       ``epochs``, ``optimizer_steps``,         the authors' time to target on the
                          ``train_time_s``                         seed-mean curves, baseline / group
========================  =======================================  =====================================

Columns :data:`COLUMNS`: ``value``, ``low``, ``high`` (the interval; NaN with one seed and for the
authors' speed-up, one curve per group), ``n`` (seeds or pairs), ``sem``, ``pairing`` (``paired`` |
``welch``). A role without a baseline group on the dataset has NaN values (the paper's two roles are
always there). The claims, the estimator study and the readable main table read it with
:class:`Comparisons`. ``main.csv`` shows it wide, one column per (quantity, role, unit, field):
:func:`column` names them, in this module only.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from divebatch.analysis.collect import GROUP
from divebatch.analysis.groups import (
    BASELINE_SLUG,
    BASELINES,
    authors_table,
    baseline_groups,
    present_roles,
    run_table,
)
from divebatch.analysis.stats import (
    AUTHORS_UNITS,
    NAN_INTERVAL,
    Interval,
    accuracy_change,
    authors_speedup,
    compare_groups,
    metric_of,
    metric_sign,
)

ACC_CHANGE, METRIC_GAIN, AUTHORS_SPEEDUP = "acc_change", "metric_gain", "authors_speedup"
COLUMNS = [*GROUP, "baseline", "quantity", "unit", "value", "low", "high", "n", "sem", "pairing"]
FIELDS = ("value", "low", "high", "sem", "n", "pairing")
# quantity -> (main.csv's column name, the fields main.csv shows): the one place those names are made
WIDE = {
    ACC_CHANGE: ("acc_change_vs_{baseline}_pp", FIELDS),
    METRIC_GAIN: ("metric_gain_vs_{baseline}", ("value", "low", "high")),
    AUTHORS_SPEEDUP: ("authors_speedup_vs_{baseline}_{unit}", ("value",)),
}


def column(quantity: str, baseline: str, unit: str = "", field: str = "value") -> str:
    """The main table's column of one field of a comparison (``acc_change_vs_sgd_small_pp_low``).

    Args:
        quantity: a key of :data:`WIDE`; baseline: a role of :data:`BASELINES`; unit: the
            authors' speed-up's unit (the others carry theirs in the name, or none);
        field: one of :data:`FIELDS` that main.csv shows for the quantity.
    Raises:
        KeyError: an unknown quantity or role.
    """
    stem = WIDE[quantity][0].format(baseline=BASELINE_SLUG[baseline], unit=unit)
    return stem if field == "value" else f"{stem}_{field}"


def _record(key: tuple, role: str, quantity: str, unit: str, iv: Interval) -> dict:
    return {
        **dict(zip(GROUP, key)),
        "baseline": role,
        "quantity": quantity,
        "unit": unit,
        "value": iv.value,
        "low": iv.low,
        "high": iv.high,
        "n": iv.n,
        "sem": iv.sem,
        "pairing": iv.pairing,
    }


def group_comparisons(runs: pd.DataFrame, key: tuple, roles, bases: dict, authors: pd.DataFrame) -> list[dict]:
    """The rows of one group (module docstring), in the order main.csv shows them.

    Args:
        runs: :func:`divebatch.analysis.groups.run_table` (every group of the profile).
        key: the group (dataset, method, setting); roles: the roles to compare with
            (:func:`divebatch.analysis.groups.present_roles`); bases: ``(dataset, role) -> group``
            (:func:`divebatch.analysis.groups.baseline_groups`); authors:
            :func:`divebatch.analysis.groups.authors_table` indexed by the group columns.
    """
    first = runs[np.logical_and.reduce([runs[c].to_numpy() == k for c, k in zip(GROUP, key)])].iloc[0]
    metric, sign = metric_of(first)[0], metric_sign(first)
    out = []
    for role in roles:
        base = bases.get((key[0], role))
        iv = accuracy_change(*compare_groups(runs, key, base, "final_acc")) if base else NAN_INTERVAL
        out.append(_record(key, role, ACC_CHANGE, "pp", iv))
    for role in roles:
        base = bases.get((key[0], role))
        iv = accuracy_change(*compare_groups(runs, key, base, "final_metric")) if base else NAN_INTERVAL
        low, high = (iv.low, iv.high) if sign > 0 else (-iv.high, -iv.low)
        gain = Interval(sign * iv.value, low, high, iv.n, iv.sem, iv.pairing)
        out.append(_record(key, role, METRIC_GAIN, metric, gain))
    for role in roles:
        base = bases.get((key[0], role))
        for u in AUTHORS_UNITS:
            value = (
                authors_speedup(authors.loc[base, f"authors_{u}"], authors.loc[key, f"authors_{u}"]) if base else np.nan
            )
            out.append(_record(key, role, AUTHORS_SPEEDUP, u, Interval(value, np.nan, np.nan, 0)))
    return out


def comparison_table(epochs: pd.DataFrame, runs: pd.DataFrame | None = None) -> pd.DataFrame:
    """The long table of the module docstring for every group of ``epochs``.

    Args:
        epochs: the tidy per-epoch table (``RunSet.epochs``, complete runs).
        runs: :func:`divebatch.analysis.groups.run_table` of it (computed when None).
    Returns:
        :data:`COLUMNS`, one row per group x role x quantity x unit; empty without runs.
    """
    runs = run_table(epochs) if runs is None else runs
    if runs.empty:
        return pd.DataFrame(columns=COLUMNS)
    bases = baseline_groups(runs)
    roles = present_roles(bases)
    authors = authors_table(epochs).set_index(GROUP)
    rows = []
    for key in runs.groupby(GROUP, sort=False).groups:
        rows += group_comparisons(runs, key, roles, bases, authors)
    return pd.DataFrame(rows, columns=COLUMNS)


def widen(rows: pd.DataFrame, quantity: str) -> dict:
    """One group's rows of ``quantity`` as main.csv's columns (:func:`column`), in row order."""
    fields = WIDE[quantity][1]
    out = {}
    for r in rows[rows["quantity"] == quantity].itertuples(index=False):
        unit = r.unit if quantity == AUTHORS_SPEEDUP else ""
        out.update({column(quantity, r.baseline, unit, f): getattr(r, f) for f in fields})
    return out


def _units(quantity: str, metric: str) -> list[tuple[str, str]]:
    """``(unit, the unit in main.csv's column name)`` of a quantity (:data:`WIDE`)."""
    if quantity == AUTHORS_SPEEDUP:
        return [(u, u) for u in AUTHORS_UNITS]
    return [(metric if quantity == METRIC_GAIN else "pp", "")]


def from_main(main: pd.DataFrame) -> pd.DataFrame:
    """The long table back from a main table (e.g. read from ``main.csv``): the fields it shows
    (:data:`WIDE`), the others NaN; groups without a complete run (``n_seeds`` 0) have none."""
    rows = []
    for _, r in main.iterrows():
        if not int(r.get("n_seeds", 1) or 0):
            continue
        key = tuple(r[c] for c in GROUP)
        for quantity, (_, fields) in WIDE.items():
            for role in BASELINES:
                for unit, name_unit in _units(quantity, metric_of(r)[0]):
                    if column(quantity, role, name_unit) not in main:
                        continue
                    got = {f: r.get(column(quantity, role, name_unit, f), np.nan) for f in fields}
                    pairing = got.get("pairing", "")
                    iv = Interval(
                        got["value"],
                        got.get("low", np.nan),
                        got.get("high", np.nan),
                        got.get("n", 0),
                        got.get("sem", np.nan),
                        pairing if isinstance(pairing, str) else "",
                    )
                    rows.append(_record(key, role, quantity, unit, iv))
    return pd.DataFrame(rows, columns=COLUMNS)


class Comparisons:
    """Look-ups into the long table by (group, baseline role, quantity, unit).

    Args:
        table: :func:`comparison_table` (or :func:`from_main`).
    """

    def __init__(self, table: pd.DataFrame):
        self.table = table
        self._at: dict[tuple, Interval] = {}
        for r in table.itertuples(index=False):
            n = int(r.n) if pd.notna(r.n) else 0
            pairing = r.pairing if isinstance(r.pairing, str) else ""
            iv = Interval(float(r.value), float(r.low), float(r.high), n, float(r.sem), pairing)
            self._at[(r.dataset, r.method, r.setting, r.baseline, r.quantity, r.unit)] = iv
            self._at.setdefault((r.dataset, r.method, r.setting, r.baseline, r.quantity, None), iv)

    @classmethod
    def of(cls, main: pd.DataFrame, table: pd.DataFrame | None = None) -> "Comparisons":
        """``table`` when given, else the long table read back from ``main`` (:func:`from_main`)."""
        return cls(table if table is not None else from_main(main))

    def get(self, group, baseline: str, quantity: str, unit: str | None = None) -> Interval | None:
        """The comparison of ``group`` (a main-table row, or ``(dataset, method, setting)``) with a
        baseline role; ``unit`` None: the quantity's only unit. None when the table has no such row."""
        key = tuple(group[c] for c in GROUP) if isinstance(group, pd.Series) else tuple(group)
        return self._at.get((*key, baseline, quantity, unit))

    def value(self, group, baseline: str, quantity: str, unit: str | None = None) -> float:
        """:meth:`get`'s value, NaN when there is none."""
        iv = self.get(group, baseline, quantity, unit)
        return iv.value if iv is not None else float("nan")
