"""Claims rows 7 and 8: what drives DiveBatch (docs/diversity.md, "Delta for the true diversity" and
"Schedule controls").

* Row 7, "with the true diversity, some delta makes DiveBatch faster than small-batch SGD at matched
  quality": the DiveBatch runs with the fixed-point estimator (Delta(w) at the epoch's weights) at
  every delta of the profile (the ``cpu`` profile's ``cifar10-mini-delta*`` experiments), judged from
  the main and speed-up tables per unit (:func:`delta_claim`).
* Row 8, "the authors' DiveBatch equals its schedule control": each DiveBatch variant with the
  authors' estimator against the schedule controls of the same lr rescaling
  (:data:`divebatch.methods.SCHEDULE_CONTROLS`: its realized schedule replayed, and the two-stage
  schedule), paired by seed (:func:`schedule_claim`).

Verdict words: :mod:`divebatch.analysis.verdicts`; the quality of an arm: the comparisons' long table
(:mod:`divebatch.analysis.comparisons`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from divebatch.analysis.comparisons import ACC_CHANGE, METRIC_GAIN, Comparisons
from divebatch.analysis.estimators import AUTHORS_ESTIMATORS, estimator_of
from divebatch.analysis.formatting import estimate
from divebatch.analysis.stats import UNIT_LABELS, per_run, t_interval
from divebatch.analysis.verdicts import NOT_MEASURED, PER_RUN, overall
from divebatch.methods import DIVEBATCH_VARIANTS, SCHEDULE_CONTROLS, SGD_SMALL

MATCHED_PP = 1.0  # row 7: quality matched = mean final accuracy at most this many points below small-batch SGD
ROW7_UNITS = ("optimizer_steps", "wall_time_s")  # per-run speed-up units of row 7 (stats.UNIT_LABELS)
DELTA_RULE = (
    f"per dataset, some DiveBatch arm with the fixed-point estimator (any delta, with or without lr rescaling) "
    f"is faster than small-batch SGD at matched quality (time to the common target: the lower of the two "
    f"seed-mean finals - 1 pp; the speed-up table's 95 % t-interval over n seeds above 1; n = 1 decides "
    f"nothing) while its mean final primary metric is at most {MATCHED_PP:g} pp (a loss: its tolerance) worse than small-batch SGD's; holds if so "
    f"on every dataset with such arms; does not hold when no arm of a dataset is both"
)
SCHEDULE_RULE = (
    "per DiveBatch variant with the authors' estimator and each schedule control of the same lr rescaling (its "
    "realized schedule replayed; the two-stage schedule), paired by seed: the difference DiveBatch - control in "
    "final accuracy (pp) and in optimizer steps to the own target, each with its paired t-interval (95%, n-1 "
    "degrees of freedom over the n shared seeds); holds when every interval contains 0 (no control differs: the "
    "diversity signal adds nothing beyond the schedule it produced); does not hold when some interval excludes "
    "0; not measured without a control sharing >= 2 seeds"
)


def _fixed_point_arms(main: pd.DataFrame, dataset: str) -> pd.DataFrame:
    d = main[(main["dataset"] == dataset) & main["method"].isin(DIVEBATCH_VARIANTS)]
    return d[d["setting"].map(estimator_of) == "fixed_point"]


def delta_claim(
    main: pd.DataFrame, speedups: pd.DataFrame, unit: str, comp: Comparisons | None = None
) -> tuple[str, str]:
    """Row 7's verdict and numbers in one unit (:data:`DELTA_RULE`).

    Args:
        main: :func:`divebatch.analysis.tables.main_table`.
        speedups: :func:`divebatch.analysis.speedups.speedup_table` (its matched-target rows, vs
            small-batch SGD).
        unit: ``optimizer_steps`` | ``wall_time_s``.
        comp: the comparisons (the arms' quality against small-batch SGD); None: read back from ``main``.
    Returns:
        (verdict, the numbers of every fixed-point arm in words).
    """
    comp = comp or Comparisons.of(main)
    own = speedups[(speedups["target"] == "matched") & (speedups["unit"] == unit) & (speedups["baseline"] == SGD_SMALL)]
    ok, parts = {}, []
    for dataset in sorted(main["dataset"].unique()) if len(main) else []:
        found = []
        for _, arm in _fixed_point_arms(main, dataset).iterrows():
            sp = own[
                (own["dataset"] == dataset) & (own["method"] == arm["method"]) & (own["setting"] == arm["setting"])
            ]
            # quality on the primary metric (gain > 0 better): accuracy in pp, or a loss (the transformer)
            gain = comp.get(arm, SGD_SMALL, METRIC_GAIN)
            change = gain.value if gain is not None else comp.value(arm, SGD_SMALL, ACC_CHANGE)
            metric = arm.get("metric", "val_acc")
            tol = MATCHED_PP if metric == "val_acc" else float(arm.get("metric_within", MATCHED_PP))
            metric_unit = "pp" if metric == "val_acc" else metric
            if sp.empty or not np.isfinite(change):
                continue
            sp = sp.iloc[0]
            fast, matched = bool(np.isfinite(sp["ci_low"]) and sp["ci_low"] > 1), change >= -tol
            found.append(fast and matched)
            n = None if np.isfinite(sp["ci_low"]) else 1
            speed = estimate(sp["speedup"], low=sp["ci_low"], high=sp["ci_high"], unit="x", n=n)
            parts.append(
                f"{dataset}, {arm['method']} ({arm['setting']}): {speed} vs SGD small at matched quality, "
                f"{'accuracy' if metric_unit == 'pp' else metric} gain {change:+.3g} {metric_unit}, "
                f"final batch {arm['final_batch_size_mean']:.0f}" + ("" if matched else " (quality not matched)")
            )
        if found:
            ok[dataset] = any(found)
    if not ok:
        return NOT_MEASURED, "no DiveBatch run with the fixed-point estimator beside small-batch SGD"
    return overall(ok.values()), "; ".join(parts)


def schedule_claim(epochs: pd.DataFrame | None) -> tuple[str, str]:
    """Row 8's verdict and numbers (:data:`SCHEDULE_RULE`).

    Args:
        epochs: the tidy per-epoch table of the complete runs (``RunSet.epochs``); None: not measured.
    Returns:
        (verdict, per variant and control: the shared seeds and both differences with their intervals).
    """
    controls = {c for pair in SCHEDULE_CONTROLS.values() for c in pair}
    if epochs is None or epochs.empty or not epochs["method"].isin(controls).any():
        return NOT_MEASURED, "no schedule-control runs"
    runs = per_run(epochs)
    verdicts, parts = [], []
    for dataset in sorted(runs["dataset"].unique()):
        r = runs[runs["dataset"] == dataset]
        for variant, its_controls in SCHEDULE_CONTROLS.items():
            dive = r[(r["method"] == variant) & r["setting"].map(estimator_of).isin(AUTHORS_ESTIMATORS)]
            for setting, g in dive.groupby("setting", sort=True):
                for (control, c_setting), c in r[r["method"].isin(its_controls)].groupby(["method", "setting"]):
                    c = c.set_index("seed")
                    seeds = sorted(set(g["seed"]) & set(c.index))
                    if len(seeds) < 2:
                        continue
                    d = g.set_index("seed").loc[seeds]
                    intervals = {  # paired by seed (stats.t_interval)
                        "accuracy (pp)": t_interval(d["final_acc"].to_numpy(), c.loc[seeds, "final_acc"].to_numpy()),
                        "optimizer steps": t_interval(
                            d["own_optimizer_steps"].to_numpy(), c.loc[seeds, "own_optimizer_steps"].to_numpy()
                        ),
                    }
                    same = all(iv.low <= 0 <= iv.high for iv in intervals.values())
                    verdicts.append(same)
                    name = variant + (f" ({setting})" if setting else "")
                    control += f" ({c_setting})" if c_setting else ""
                    shown = ", ".join(
                        f"{k} {estimate(iv.value, low=iv.low, high=iv.high, spec='+.2f')}"
                        for k, iv in intervals.items()
                    )
                    parts.append(
                        f"{dataset}: {name} - {control}, {len(seeds)} seeds: {shown}" + ("" if same else " (differs)")
                    )
    if not verdicts:
        return NOT_MEASURED, "no authors'-estimator DiveBatch run sharing >= 2 seeds with its schedule control"
    return overall(verdicts), "; ".join(parts)


def claim_rows(
    main: pd.DataFrame, speedups: pd.DataFrame, epochs: pd.DataFrame | None, comp: Comparisons | None = None
) -> list[tuple]:
    """Rows 7 (one per unit of :data:`ROW7_UNITS`) and 8 of the claims table as
    ``(claim, definition, unit, verdict, ours, rule)``; row 7 only where a fixed-point arm exists,
    row 8 always (``not measured`` without controls). ``comp``: as in :func:`delta_claim`."""
    rows = []
    has_arms = len(main) and any(len(_fixed_point_arms(main, d)) for d in main["dataset"].unique())
    for unit in ROW7_UNITS if has_arms else ():
        rows.append((7, PER_RUN, UNIT_LABELS[unit], *delta_claim(main, speedups, unit, comp), DELTA_RULE))
    unit8 = "final validation accuracy (pp); optimizer steps to own target"
    rows.append((8, "-", unit8, *schedule_claim(epochs), SCHEDULE_RULE))
    return rows
