"""The claims table: each claim of docs/protocol.md ("The claims"), the paper's figure, ours, a verdict.

Verdicts are computed from the main and speed-up tables by the rules below (one sentence each
in the table's ``rule`` column, explained in ``docs/analysis.md``):

- ``holds``: every dataset on which the claim was measured satisfies the rule;
- ``does not hold``: some measured dataset does not;
- ``not measured at this scale``: no run measures it (e.g. claim 2 without CIFAR-10 runs, a
  baseline missing, the batch size never grew, claim 4 without the synthetic check's verdict).

Claims 1, 2 and 5 (speed) are judged twice, each time separately per unit, and **always at matched
quality**: the *matched target* of DiveBatch and a baseline is the lower of their two seed-mean final
accuracies minus 1 pp (a loss: the higher final + its tolerance; :func:`divebatch.analysis.stats.matched_target`),
so a variant that ends low does not get an easier target:

1. first with **the authors' definition** (docs/protocol.md, "Time to target, the authors'
   definition"): on the seed-mean curves, in epochs, optimizer steps and training seconds
   (evaluation excluded). Their own-target ratio (final - 1 pp) is shown but never decides alone:
   *faster* when both the own-target ratio and the matched-target ratio on the seed-mean curves are
   > 1 (one curve each, no interval);
2. then **per run**: each seed's time to the matched target, in epochs, optimizer steps and
   wall-clock seconds (training + evaluation); *faster* when the 95 % t-interval over seeds of the
   speed-up (on the log-ratio, paired by seed where the runs share seeds, Welch otherwise) lies
   above 1 (with one seed: "n=1, no interval", its point estimate > 1) and every seed of DiveBatch
   reached the target. The per-run own-target speed-up is shown beside it as the authors' definition.

DiveBatch on a dataset means its best variant there (with or without learning-rate rescaling, any
setting, protocol included), chosen per definition and unit: the one with the highest smaller
speed-up of the baselines **among the variants that keep the quality** within claim 1's tolerance
(2 pp of small-batch SGD; a loss: 2 x its tolerance). A variant outside it is never named the
fastest: when none keeps the quality the claim says so and by how much the closest misses (the
claim does not hold there). A variant whose batch size never changed in any seed is plain SGD at
its initial batch and is **not evidence** for a speed-up or for "keeps the quality with larger
batches" (claims 1, 2, 3, 5 and the estimator study's row 6): the claim says "not evidence: the
batch never resized", and a dataset with only such variants is not measured.

Quality is the dataset's *primary metric* (``primary_metric`` of the runs' configs; accuracy by
default, validation loss for the transformer): "accuracy change" reads as its gain over the
baseline (> 0 better), the targets above as final -/+ its ``within`` (1 pp for accuracy; for a
loss, final + ``within``), and the tolerances scale with ``within`` (2 pp and 1 pp below for
accuracy; for a loss 2 x and 1 x ``within`` above). Datasets outside the paper's (a transformer
language model) get their own rows, claim 5: claim 1's rule on that model, per optimizer family
(SGD with momentum against small-batch SGD and AdaBatch; AdamW against small-batch AdamW), under
both definitions.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from divebatch.analysis import controls, estimators
from divebatch.analysis.collect import RunWarning, dataset_family
from divebatch.analysis.comparisons import ACC_CHANGE, AUTHORS_SPEEDUP, METRIC_GAIN, Comparisons
from divebatch.analysis.formatting import estimate
from divebatch.analysis.speedups import MATCHED
from divebatch.analysis.stats import AUTHORS_UNITS, UNIT_LABELS, WITHIN_PP, metric_of, metric_sign
from divebatch.analysis.verdicts import AUTHORS, FAILS, HOLDS, NOT_EVIDENCE, NOT_MEASURED, PER_RUN, overall
from divebatch.datasets import PAPER_DATASETS, SYNTHETIC
from divebatch.methods import ADABATCH, ADAMW_SMALL, BY_KEY, DIVEBATCH_VARIANTS, SGD_SMALL

__all__ = ["AUTHORS", "FAILS", "HOLDS", "NOT_EVIDENCE", "NOT_MEASURED", "PER_RUN", "claims_table", "quality"]
# the AdamW DiveBatch variants (divebatch.methods), and the name that collect's guess gives an AdamW
# DiveBatch run with the linear lr rule written before display_name was recorded
ADAMW_DIVEBATCH = (
    BY_KEY["adamw_divebatch"].display_name,
    "AdamW DiveBatch + lr rescale",
    BY_KEY["adamw_divebatch_rescale"].display_name,
)
TRANSFORMER_MODELS = ("transformer_lm",)  # claim 5: DiveBatch beyond ResNets
CLAIM1_FAMILIES = (SYNTHETIC, *PAPER_DATASETS)  # the datasets claim 1 names
SLIGHT_LOSS_PP = 2.0  # claim 1: "slight loss of final accuracy" = at most this many points below SGD
GENERALIZATION_TOL_PP = 1.0  # claim 3: "keeps the generalization" = at most this many points below SGD
CLAIM_TOLERANCE = 1.5  # claim 2: "about k x" holds when the measured speed-up is >= k / this
CLAIM2_FACTORS = {ADABATCH: 2.0, SGD_SMALL: 5.0}  # claim 2 of docs/protocol.md
INTERVAL = "95 % t-interval"  # the name of a speed-up's interval in the verdict texts

PAPER = {
    1: (
        "DiveBatch converges faster than SGD and AdaBatch with a slight loss of final accuracy",
        "1.06x to 5.0x faster (abstract; synthetic, CIFAR-10, CIFAR-100, Tiny-ImageNet)",
    ),
    2: (
        "On CIFAR-10, time to within 1% of final accuracy",
        "about 2x faster than AdaBatch, about 5x faster than small-batch SGD (unit: 'time'; not stated further)",
    ),
    3: (
        "Keeps the generalization of small-batch training while using larger batches",
        "final accuracy close to small-batch SGD (qualitative)",
    ),
    4: (
        "B <= delta * n * Delta(w) gives per-sample convergence like serial SGD (Yin et al., 2018)",
        "synthetic logistic regression agrees with the theory",
    ),
    5: (
        "DiveBatch's trade-off on a transformer: faster than small-batch training with a slight quality loss",
        "not tested in the paper (ResNet-18 image classifiers only)",
    ),
    6: (
        "(estimator study) The accuracy loss at this scale comes from the authors' epoch estimator",
        "not a claim of the paper: a question of this replication (docs/diversity.md, 'Estimator study')",
    ),
    # rows 7 and 8: divebatch.analysis.controls (docs/diversity.md, "Delta for the true diversity", "Schedule controls")
    7: (
        "(delta sweep) With the true diversity, some delta makes DiveBatch faster than small-batch SGD at matched quality",
        "not a claim of the paper: the authors' delta was tuned for their estimator (docs/diversity.md)",
    ),
    8: (
        "(schedule controls) The authors' DiveBatch equals its schedule control",
        "not a claim of the paper: a question of this replication (docs/diversity.md, 'Schedule controls')",
    ),
}


def _faster(row: pd.Series | None) -> bool:
    """The verdict a lookup gave (``faster``), or for a bare row: interval above 1 (point > 1 with one seed)."""
    if row is None or not np.isfinite(row["speedup"]):
        return False
    if "faster" in row:
        return bool(row["faster"])
    return row["ci_low"] > 1 if np.isfinite(row["ci_low"]) else row["speedup"] > 1


def _fmt(row: pd.Series | None) -> str:
    if row is None or not np.isfinite(row["speedup"]):
        return "n/a"
    if "text" in row:
        return row["text"]
    n = None if np.isfinite(row["ci_low"]) else 1  # a bare row: no interval means one seed
    return estimate(row["speedup"], low=row["ci_low"], high=row["ci_high"], unit="x", n=n)


def _target_text(m) -> str:
    return f"{m.target_value:.2f} %" if m.metric == "val_acc" else f"{m.target_value:.3f} {m.metric}"


class _Lookup:
    """Per-run speed-ups by (dataset, method, setting, baseline, unit): the matched target decides
    (``speedup``, ``ci_low``, ``ci_high``, ``faster``), the own target (authors' definition) is
    shown in ``text``."""

    def __init__(self, speedups: pd.DataFrame):
        def rows(target):
            sub = speedups[speedups["target"] == target] if len(speedups) else speedups
            return {(r.dataset, r.method, r.setting, r.baseline, r.unit): r for r in sub.itertuples(index=False)}

        self.own, self.matched = rows("own"), rows(MATCHED)

    def get(self, dataset, method, setting, baseline, unit) -> pd.Series | None:
        key = (dataset, method, setting, baseline, unit)
        m, o = self.matched.get(key), self.own.get(key)
        if m is None:
            return None
        n = int(m.n_seeds)
        missed = int(m.method_seeds) - int(m.method_reached)
        faster = m.ci_low > 1 if np.isfinite(m.ci_low) else n == 1 and m.speedup > 1
        faster = bool(np.isfinite(m.speedup) and faster and missed == 0)
        speed = estimate(m.speedup, low=m.ci_low, high=m.ci_high, unit="x", n=n, pairing=m.pairing, label=INTERVAL)
        text = f"{speed} at matched {_target_text(m)}" if np.isfinite(m.speedup) else "n/a"
        if missed:
            text += f", {missed} of {int(m.method_seeds)} seeds never reach it"
        if o is not None and np.isfinite(o.speedup):
            text += f"; own target (authors' definition) {o.speedup:.2f}x"
        return pd.Series(
            {"speedup": m.speedup, "ci_low": m.ci_low, "ci_high": m.ci_high, "n": n, "faster": faster, "text": text}
        )


class _AuthorsLookup:
    """Speed-ups on the seed-mean curves: the authors' definition (own target), from the
    comparisons' ``authors_speedup`` and the main table's ``authors_<unit>`` columns, and the
    matched target on the same curves (``curve_speedup`` of the matched rows). ``speedup`` is the
    matched one; ``faster`` needs both > 1 (the own target never decides alone); no interval (one
    curve). ``comparisons``: the long table (None: read back from ``main``)."""

    def __init__(self, main: pd.DataFrame, speedups: pd.DataFrame | None = None, comparisons=None):
        self.rows = {(r["dataset"], r["method"], r["setting"]): r for _, r in main.iterrows() if r["n_seeds"] > 0}
        self.comp = comparisons if isinstance(comparisons, Comparisons) else Comparisons.of(main, comparisons)
        sub = speedups[speedups["target"] == MATCHED] if speedups is not None and len(speedups) else None
        self.matched = (
            {}
            if sub is None
            else {(r.dataset, r.method, r.setting, r.baseline, r.unit): r for r in sub.itertuples(index=False)}
        )

    def get(self, dataset, method, setting, baseline, unit) -> pd.Series | None:
        r = self.rows.get((dataset, method, setting))
        sp = self.comp.value((dataset, method, setting), baseline, AUTHORS_SPEEDUP, unit)
        m = self.matched.get((dataset, method, setting, baseline, unit))
        if r is None or not np.isfinite(sp) or m is None:
            return None
        value = float(r[f"authors_{unit}"])
        digits = 1 if unit == "train_time_s" else 0
        label = AUTHORS_UNITS[unit]
        own = f"{sp:.2f}x ({sp * value:.{digits}f} / {value:.{digits}f} {label})"
        if np.isfinite(m.curve_speedup):
            matched = (
                f"at matched {_target_text(m)}: {m.curve_speedup:.2f}x "
                f"({m.curve_base:.{digits}f} / {m.curve_method:.{digits}f} {label})"
            )
        else:
            matched = f"the seed-mean curve never reaches the matched {_target_text(m)}"
        faster = bool(sp > 1 and np.isfinite(m.curve_speedup) and m.curve_speedup > 1)
        return pd.Series(
            {
                "speedup": m.curve_speedup,
                "ci_low": np.nan,
                "ci_high": np.nan,
                "faster": faster,
                "text": f"own target {own}, {matched}",
                "unit": unit,
            }
        )


def _resized(r: pd.Series) -> bool:
    """False when the group's batch size never changed in any seed (``resized_seeds`` 0): not evidence."""
    v = r.get("resized_seeds", np.nan)
    return not (pd.notna(v) and int(v) == 0)


class _Pick:
    """The DiveBatch variant a claim is judged on (``row``, its speed-ups ``sp``), or None with the
    reason in ``note`` and whether that reason fails the claim (``fails``: no variant keeps the
    quality) or leaves it unmeasured (every variant never resized)."""

    def __init__(self, row=None, sp=None, note: str = "", fails: bool = False):
        self.row, self.sp, self.note, self.fails = row, sp, note, fails

    def __iter__(self):  # ``r, sp = pick`` as before
        return iter((self.row, self.sp))


def _best_divebatch(
    main: pd.DataFrame,
    look: _Lookup,
    comp: Comparisons,
    dataset: str,
    unit: str,
    methods=DIVEBATCH_VARIANTS,
    baselines=(SGD_SMALL, ADABATCH),
    quality_of: str | None = SGD_SMALL,
) -> _Pick | None:
    """The variant of ``dataset`` among ``methods`` (DiveBatch variants) with the largest smallest
    speed-up against ``baselines``, among the variants that keep the quality.

    A variant whose batch never resized (:func:`_resized`) is not evidence and is skipped. With
    ``quality_of`` (a baseline role, e.g. small-batch SGD) only variants whose quality against that
    baseline is within claim 1's tolerance (:data:`SLIGHT_LOSS_PP` x the metric's ``within``) can be
    picked: a variant outside it is never named the fastest; when none keeps it, the pick has no
    row, ``fails`` True and a note naming the closest variant and by how much it misses.
    Returns None when no variant has speed-ups against every baseline.
    """
    cands = main[(main["dataset"] == dataset) & main["method"].isin(methods)]
    best, best_speed, static, far = None, -np.inf, [], []
    for _, r in cands.iterrows():
        sp = {b: look.get(dataset, r["method"], r["setting"], b, unit) for b in baselines}
        if any(v is None for v in sp.values()):
            continue
        if not _resized(r):
            static.append(r)
            continue
        speed = min(v["speedup"] for v in sp.values())
        speed = speed if np.isfinite(speed) else -np.inf
        if quality_of is not None:
            gain, within, _ = quality(r, comp, quality_of)
            tol = SLIGHT_LOSS_PP * within / WITHIN_PP
            if not (np.isfinite(gain) and gain >= -tol):
                far.append((gain + tol if np.isfinite(gain) else -np.inf, r))
                continue
        if best is None or speed > best_speed:
            best, best_speed = (r, sp), speed
    if best is not None:
        return _Pick(*best)
    if far:
        miss, r = max(far, key=lambda t: t[0])
        _, within, text = quality(r, comp, quality_of)
        unit_text = "pp" if within == WITHIN_PP and text.startswith("accuracy") else metric_of(r)[0]
        tol = SLIGHT_LOSS_PP * within / WITHIN_PP
        digits = 2 if unit_text == "pp" else 3  # a loss misses by thousandths of a nat
        return _Pick(
            note=(
                f"no DiveBatch variant keeps the quality (within {tol:g} {unit_text} of {quality_of}); the "
                f"closest, {_name(r)} ({text}), misses by {-miss:.{digits}f} {unit_text}"
            ),
            fails=True,
        )
    if static:
        return _Pick(note=f"{', '.join(_name(r) for r in static)}: {NOT_EVIDENCE}")
    return None


def _name(r: pd.Series) -> str:
    return r["method"] + (f" ({r['setting']})" if r["setting"] else "")


def quality(r: pd.Series, comp: Comparisons, baseline: str = SGD_SMALL) -> tuple[float, float, str]:
    """A main-table row's quality against a baseline role in its primary metric (from the
    comparisons' long table ``comp``).

    Returns:
        ``(gain, within, text)``: gain > 0 is better (accuracy change in pp for accuracy, minus
        the loss change for a loss), ``within`` the metric's tolerance, and e.g. ``accuracy
        -1.20 pp`` or ``val_loss +0.041`` (the change in the metric's own sign) for the verdict text.
    """
    metric, _, within = metric_of(r)
    gain = comp.get(r, baseline, METRIC_GAIN)
    if metric == "val_acc" or gain is None:
        change = comp.value(r, baseline, ACC_CHANGE)
        return change, WITHIN_PP, f"accuracy {change:+.2f} pp"
    return gain.value, within, f"{metric} {gain.value * metric_sign(r):+.3f}"


def _verdict(per_dataset: dict[str, bool]) -> str:
    return overall(per_dataset.values())


def _judge_dataset(pick: _Pick | None, ok: dict, parts: list, dataset: str) -> bool:
    """Record a pick without a variant (no variant keeps the quality: fails; never resized: not
    measured). Returns True when the pick has a variant to judge."""
    if pick is None:
        return False
    if pick.row is None:
        if pick.fails:
            ok[dataset] = False
        parts.append(f"{dataset}: {pick.note}")
        return False
    return True


def claim1(main: pd.DataFrame, look: _Lookup, unit: str, comp: Comparisons | None = None) -> tuple[str, str]:
    """Claim 1 in one unit (:data:`RULES`); ``comp``: the comparisons (None: read back from ``main``)."""
    comp = comp or Comparisons.of(main)
    ok, parts = {}, []
    datasets = sorted(main["dataset"].unique()) if len(main) else []
    for dataset in datasets:
        if dataset_family(dataset) not in CLAIM1_FAMILIES:
            continue
        pick = _best_divebatch(main, look, comp, dataset, unit)
        if not _judge_dataset(pick, ok, parts, dataset):
            continue
        r, sp = pick
        gain, within, text = quality(r, comp)
        ok[dataset] = all(_faster(v) for v in sp.values()) and gain >= -SLIGHT_LOSS_PP * within / WITHIN_PP
        parts.append(
            f"{dataset}: {_name(r)} {_fmt(sp[SGD_SMALL])} vs SGD small, {_fmt(sp[ADABATCH])} vs AdaBatch, {text}"
        )
    if not ok:
        have = ", ".join(datasets) or "none"
        return (
            NOT_MEASURED,
            "; ".join(parts)
            or f"no run with DiveBatch, small-batch SGD and AdaBatch on the claim's datasets (have: {have})",
        )
    return _verdict(ok), "; ".join(parts)


def claim2(main: pd.DataFrame, look: _Lookup, unit: str, comp: Comparisons | None = None) -> tuple[str, str]:
    """Claim 2 in one unit (:data:`RULES`); ``comp`` as in :func:`claim1`."""
    comp = comp or Comparisons.of(main)
    ok, parts = {}, []
    cifar = sorted(d for d in main["dataset"].unique() if dataset_family(d) == "cifar10") if len(main) else []
    for dataset in cifar:
        pick = _best_divebatch(main, look, comp, dataset, unit)
        if not _judge_dataset(pick, ok, parts, dataset):
            continue
        r, sp = pick
        ok[dataset] = all(_faster(sp[b]) and sp[b]["speedup"] >= k / CLAIM_TOLERANCE for b, k in CLAIM2_FACTORS.items())
        parts.append(f"{dataset}: {_name(r)} {_fmt(sp[ADABATCH])} vs AdaBatch, {_fmt(sp[SGD_SMALL])} vs SGD small")
    if not ok:
        return NOT_MEASURED, "; ".join(parts) or "no CIFAR-10 run with DiveBatch, small-batch SGD and AdaBatch"
    return _verdict(ok), "; ".join(parts)


def claim3(main: pd.DataFrame, comp: Comparisons | None = None) -> tuple[str, str]:
    """Claim 3 (:data:`RULES`); ``comp`` as in :func:`claim1`."""
    comp = comp or Comparisons.of(main)
    ok, parts = {}, []
    datasets = sorted(main["dataset"].unique()) if len(main) else []
    for dataset in datasets:
        d = main[main["dataset"] == dataset]
        sgd = d[d["method"] == SGD_SMALL]
        compared = [np.isfinite(comp.value(r, SGD_SMALL, ACC_CHANGE)) for _, r in d.iterrows()]
        dive = d[d["method"].isin(DIVEBATCH_VARIANTS) & np.array(compared, dtype=bool)]
        if sgd.empty or dive.empty:
            continue
        small_bs = sgd["final_batch_size_mean"].min()
        static = dive[~dive.apply(_resized, axis=1)]
        if len(static):
            parts.append(f"{dataset}: {', '.join(_name(r) for _, r in static.iterrows())}: {NOT_EVIDENCE}")
        grew = dive[(dive["final_batch_size_mean"] > small_bs) & dive.apply(_resized, axis=1)]
        if grew.empty:
            parts.append(f"{dataset}: DiveBatch's batch size never grew above {small_bs:.0f}")
            continue
        r = max((row for _, row in grew.iterrows()), key=lambda row: quality(row, comp)[0])
        gain, within, text = quality(r, comp)
        ok[dataset] = gain >= -GENERALIZATION_TOL_PP * within / WITHIN_PP
        if text.startswith("accuracy"):
            iv = comp.get(r, SGD_SMALL, ACC_CHANGE)
            n = iv.n or r["n_seeds"]
            text = "accuracy " + estimate(
                iv.value, low=iv.low, high=iv.high, spec="+.2f", unit=" pp", n=n, label=INTERVAL
            )
        parts.append(
            f"{dataset}: {_name(r)} final batch {r['final_batch_size_mean']:.0f} vs {small_bs:.0f}, {text} vs SGD small"
        )
    if not ok:
        return NOT_MEASURED, "; ".join(parts) or "no dataset with DiveBatch and small-batch SGD runs"
    return _verdict(ok), "; ".join(parts)


def claim4(verdict_path: Path | None) -> tuple[str, str]:
    """Read the synthetic check's ``synthetic_verdict.json`` (needs ``holds: bool`` and ``summary: str``)."""
    if verdict_path is None or not Path(verdict_path).is_file():
        return NOT_MEASURED, "no synthetic_verdict.json (run `divebatch synthetic` for this profile)"
    try:
        data = json.loads(Path(verdict_path).read_text())
        holds, summary = data["holds"], str(data["summary"])
        if not isinstance(holds, bool):
            raise TypeError(f"'holds' is {holds!r}, allowed: true | false")
    except (OSError, ValueError, KeyError, TypeError) as err:
        warnings.warn(
            f"{Path(verdict_path).name} unusable ({err!r}); claim 4 reported as not measured", RunWarning, stacklevel=2
        )
        return NOT_MEASURED, f"synthetic_verdict.json unusable: {err}"
    return (HOLDS if holds else FAILS), summary


_AUTHORS_RULE = (
    "seed-mean curves (authors' definition, docs/protocol.md), time in training seconds (evaluation excluded); "
    "faster = baseline / DiveBatch > 1 both at the own target (final mean - 1 pp; a loss: + its tolerance) "
    "and at the matched target (the lower of the two mean finals - 1 pp; a loss: the higher + its tolerance); "
    "one curve, no interval; the own target never decides alone. "
)
_PER_RUN_RULE = (
    "per seed, time to the matched target (the lower of the two mean finals - 1 pp; a loss: the higher + its "
    "tolerance), wall-clock seconds = training + evaluation; faster = the 95 % t-interval over n seeds of the "
    "speed-up (log-ratio; paired by seed where the runs share seeds, else Welch) above 1 and every DiveBatch "
    "seed reaches the target (n=1: no interval, point estimate above 1); the own-target speed-up (authors' "
    "definition) is shown, never decides. "
)
_QUALITY = (
    f" DiveBatch = its fastest variant within {SLIGHT_LOSS_PP:g} pp of small-batch SGD (never one outside it); "
    f"a variant whose batch never resized is not evidence"
)
_CLAIM1 = (
    f"per dataset of the claim, DiveBatch is faster than both small-batch SGD and AdaBatch and its accuracy is "
    f"at most {SLIGHT_LOSS_PP:g} pp below small-batch SGD; holds if on every such dataset.{_QUALITY}"
)
_CLAIM2 = (
    f"on CIFAR-10 (any subset), DiveBatch is faster than both baselines and its speed-up is >= "
    f"1/{CLAIM_TOLERANCE:g} of the claimed factor (2x AdaBatch, 5x SGD), at matched quality.{_QUALITY}"
)


def claim5(main: pd.DataFrame, look: _Lookup, unit: str, comp: Comparisons | None = None) -> tuple[str, str]:
    """Claim 1's rule on the transformer runs, per dataset and optimizer family: the best DiveBatch
    variant must be faster than each baseline at matched quality and at most 2 x ``within`` worse
    in the primary metric than the family's small-batch run; a variant outside that tolerance is
    never named the fastest (:func:`_best_divebatch`); ``comp`` as in :func:`claim1`."""
    comp = comp or Comparisons.of(main)
    ok, parts = {}, []
    families = (
        ("SGD", DIVEBATCH_VARIANTS, (SGD_SMALL, ADABATCH)),
        ("AdamW", ADAMW_DIVEBATCH, (ADAMW_SMALL,)),
    )
    models = main["model"] if "model" in main else pd.Series(dtype=object)
    for dataset in sorted(main.loc[models.isin(TRANSFORMER_MODELS), "dataset"].unique()):
        for family, methods, baselines in families:
            pick = _best_divebatch(main, look, comp, dataset, unit, methods, baselines, quality_of=baselines[0])
            if not _judge_dataset(pick, ok, parts, f"{dataset} ({family})"):
                continue
            r, sp = pick
            gain, within, text = quality(r, comp, baselines[0])
            fast = all(_faster(v) for v in sp.values())
            ok[f"{dataset}/{family}"] = fast and gain >= -SLIGHT_LOSS_PP * within / WITHIN_PP
            speed = ", ".join(f"{_fmt(v)} vs {b}" for b, v in sp.items())
            parts.append(f"{dataset} ({family}): {_name(r)} {speed}, {text} vs {baselines[0]}")
    if not ok:
        return NOT_MEASURED, "; ".join(parts) or "no transformer runs with DiveBatch and its small-batch baseline"
    return _verdict(ok), "; ".join(parts)


_CLAIM5 = (
    f"claim 1's rule on each transformer dataset and optimizer family (SGD: vs small-batch SGD and "
    f"AdaBatch; AdamW: vs small-batch AdamW), quality in the primary metric (at most {SLIGHT_LOSS_PP:g} x its "
    f"tolerance worse); holds if in every family.{_QUALITY}"
)
RULES = {
    (1, AUTHORS): _AUTHORS_RULE + _CLAIM1,
    (1, PER_RUN): _PER_RUN_RULE + _CLAIM1,
    (2, AUTHORS): _AUTHORS_RULE + _CLAIM2,
    (2, PER_RUN): _PER_RUN_RULE + _CLAIM2,
    (5, AUTHORS): _AUTHORS_RULE + _CLAIM5,
    (5, PER_RUN): _PER_RUN_RULE + _CLAIM5,
    3: (
        f"per dataset, a DiveBatch run whose final batch exceeds small-batch SGD's ends at most "
        f"{GENERALIZATION_TOL_PP:g} pp below small-batch SGD (mean over seeds); holds if on every dataset; "
        f"a variant whose batch never resized in any seed is not evidence"
    ),
    4: "the synthetic check's own verdict (synthetic_verdict.json: holds)",
}


def claims_table(
    main: pd.DataFrame,
    speedups: pd.DataFrame,
    verdict_path: str | Path | None = None,
    epochs: pd.DataFrame | None = None,
    comparisons: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """One row per claim, definition and unit: ``claim, statement, definition, unit, paper, ours,
    verdict, rule``.

    Args:
        main: :func:`divebatch.analysis.tables.main_table` (its ``authors_<unit>`` columns: the
            authors' time to target).
        speedups: :func:`divebatch.analysis.speedups.speedup_table` (its ``matched`` rows decide
            "faster" under both definitions; its ``own`` rows are shown).
        verdict_path: the synthetic check's ``synthetic_verdict.json`` (may be absent).
        epochs: the tidy per-epoch table (``RunSet.epochs``) for row 8 (None: row 8 not measured).
        comparisons: :func:`divebatch.analysis.comparisons.comparison_table` (accuracy changes,
            metric gains and the authors' speed-ups); None: read back from ``main``.
    Returns:
        15 rows: for claims 1 and 2, first the authors' definition (:data:`AUTHORS`) in epochs,
        optimizer steps and training s, then the per-run definition (:data:`PER_RUN`) in epochs,
        optimizer steps and wall-clock s; then claims 3 and 4 once (definition ``-``), the
        estimator study's row 6 once; 6 more (claim 5, both definitions) where the runs hold a
        transformer model; rows 7 (per unit, where fixed-point DiveBatch runs exist) and 8
        (:func:`divebatch.analysis.controls.claim_rows`).
    """
    comp = Comparisons.of(main, comparisons)
    study = estimators.estimator_claim(main, comp)  # the estimator study's row, from every estimator's runs
    full_main, full_speedups = main, speedups
    main, speedups = estimators.authors_rows(main), estimators.authors_rows(speedups)  # claims 1-3: the paper's
    judges = (
        (AUTHORS, _AuthorsLookup(main, speedups, comp), AUTHORS_UNITS),
        (PER_RUN, _Lookup(speedups), UNIT_LABELS),
    )
    rows = []
    for claim, judge in ((1, claim1), (2, claim2)):
        for definition, look, labels in judges:
            for unit in labels:
                verdict, ours = judge(main, look, unit, comp)
                rows.append((claim, definition, labels[unit], verdict, ours, RULES[(claim, definition)]))
    losses = sorted(set(main["metric"].dropna()) - {"val_acc"}) if "metric" in main else []
    unit3 = "final validation accuracy (pp)" + "".join(f"; {m} where it is the primary metric" for m in losses)
    rows.append((3, "-", unit3, *claim3(main, comp), RULES[3]))
    rows.append(
        (4, "-", "per-sample convergence (synthetic)", *claim4(Path(verdict_path) if verdict_path else None), RULES[4])
    )
    if "model" in main and main["model"].isin(TRANSFORMER_MODELS).any():  # only where such runs exist
        for definition, look, labels in judges:
            for unit in labels:
                rows.append((5, definition, labels[unit], *claim5(main, look, unit, comp), RULES[(5, definition)]))
    rows.append((6, "-", unit3, *study, estimators.ESTIMATOR_RULE))
    rows.extend(controls.claim_rows(full_main, full_speedups, epochs, comp))  # rows 7-8: every estimator's runs
    return pd.DataFrame(
        [
            {
                "claim": c,
                "statement": PAPER[c][0],
                "definition": d,
                "unit": unit,
                "paper": PAPER[c][1],
                "ours": ours,
                "verdict": verdict,
                "rule": rule,
            }
            for c, d, unit, verdict, ours, rule in rows
        ]
    )
