"""Experiments a and b: the knee of samples-to-target against the batch size, per data variant.

For every variant and batch size B of a log-spaced grid, constant-lr mini-batch SGD from w0 = 0 is
run with every learning rate of a grid (2^k / L, L the smoothness bound of the loss) and the
best one is kept (fewest samples to the target suboptimality; see :mod:`divebatch.synthetic.sgd`).

Theory (Yin et al., 2018; docs/protocol.md claim 4): up to B ~ n*Delta(w), mini-batch SGD needs about as
many samples as serial SGD to reach a given accuracy; past it, samples-to-target grow with B.
McCandlish et al. (2018, eq. 2.11) give the curve this predicts,

    E(B) = E_min (1 + B / B_crit),      S(B) = E(B) / B = S_min (1 + B_crit / B),

with B_crit ~ B_simple = n*Delta - 1 (docs/protocol.md identity). The knee is B_crit, fitted per seed
by least squares on log E; a variant's knee is the median of its seeds' knees (so it lies in their
range). n*Delta grows as the iterate approaches w*, so the value that matters for a target is
n*Delta at the target; it is measured on the full-batch gradient-descent path from w0 (the path
SGD's mean follows), where it crosses the target suboptimality.

Regime. The knee is where optimizer steps to target stop falling like 1/B; that says something
about SGD noise only if full-batch gradient descent itself needs many steps (S_min >> 1). Where
it reaches the target in one to three steps, steps cannot fall far and "samples flat, then growing
linearly" is little more than the arithmetic of E = B x S. So every variant reports the steps that
full-batch gradient descent needs at the best learning rate of the grid (:func:`full_batch_steps`),
and a variant below ``knee.min_gd_steps`` is flagged as a degenerate regime and cannot agree.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd
import scipy.optimize
import torch

from divebatch.synthetic import problem as P
from divebatch.synthetic.data import DataSpec, generate, variant_spec
from divebatch.synthetic.sgd import run_to_target


@dataclass
class Problems:
    """S seeds of one data variant, stacked, with their exact reference quantities."""

    spec: DataSpec
    seeds: list[int]
    x: torch.Tensor  # (S, n, d)
    y: torch.Tensor  # (S, n)
    x_val: torch.Tensor  # (S, n_val, d)
    y_val: torch.Tensor  # (S, n_val)
    w_star: torch.Tensor  # (S, d)
    loss_star: torch.Tensor  # (S,) nats
    loss0: torch.Tensor  # (S,) loss at w0 = 0
    target_subopt: torch.Tensor  # (S,) nats
    smoothness: float  # max over seeds of the bound L
    paths: list[P.DescentPath] = field(default_factory=list)

    @property
    def n(self) -> int:
        return self.x.shape[1]

    @property
    def target_loss(self) -> torch.Tensor:
        return self.loss_star + self.target_subopt


def prepare(spec: DataSpec, seeds: list[int], target_relative: float, with_paths: bool = True) -> Problems:
    """Generate one dataset per seed, solve for w*, and set the target suboptimality
    ``target_relative * (loss(0) - loss(w*))`` per seed (the same share of the achievable decrease
    in every variant)."""
    data = [generate(spec, s) for s in seeds]
    x = torch.stack([d.x_train for d in data])
    y = torch.stack([d.y_train for d in data])
    opts = [P.solve(d.x_train, d.y_train, spec.l2, gtol=1e-9) for d in data]
    w0 = torch.zeros(1, spec.n_features, dtype=P.DTYPE)
    loss0 = torch.stack([P.mean_loss(d.x_train, d.y_train, w0, spec.l2)[0] for d in data])
    loss_star = torch.tensor([o.loss for o in opts], dtype=P.DTYPE)
    target = target_relative * (loss0 - loss_star)
    probs = Problems(
        spec=spec,
        seeds=list(seeds),
        x=x,
        y=y,
        x_val=torch.stack([d.x_val for d in data]),
        y_val=torch.stack([d.y_val for d in data]),
        w_star=torch.stack([o.w for o in opts]),
        loss_star=loss_star,
        loss0=loss0,
        target_subopt=target,
        smoothness=max(P.smoothness(d.x_train, spec.l2) for d in data),
    )
    if with_paths:
        probs.paths = [
            P.descent_path(d.x_train, d.y_train, spec.l2, w0[0], float(ls), float(t))
            for d, ls, t in zip(data, loss_star, target)
        ]
    return probs


def batch_grid(n: int, batch_sizes=None) -> list[int]:
    """Powers of two from 1 up to n, plus n itself (or the configured list, capped at n)."""
    if batch_sizes is not None:
        return sorted({min(int(b), n) for b in batch_sizes})
    grid = [2**k for k in range(int(np.log2(n)) + 1)]
    return grid if grid[-1] == n else grid + [n]


def tuned_runs(probs: Problems, batch_size: int, kcfg, max_samples: int, lo: float, hi: float):
    """Best-of-grid SGD at one batch size over lr = 2^k / L, k = lo, lo + step, ..., hi, extending
    the grid by 4 steps past an edge where a seed's best lr sits (at most ``kcfg.lr_grid_extensions``
    times).

    Returns:
        (FirstHit, ks, edge): ks (L,) the exponents k of the final grid, edge (S,) bool flags for
        seeds whose best lr is still at an edge of it.
    """
    step = kcfg.lr_log2_step
    w0 = torch.zeros(probs.spec.n_features, dtype=P.DTYPE)
    for attempt in range(kcfg.lr_grid_extensions + 1):
        ks = torch.arange(lo, hi + step / 2, step, dtype=P.DTYPE)
        res = run_to_target(
            probs.x,
            probs.y,
            probs.spec.l2,
            w0,
            probs.target_loss,
            batch_size,
            2.0**ks / probs.smoothness,
            probs.seeds,
            max_samples,
            kcfg.resolution,
        )
        at_low = res.hit & (res.best_lr_index == 0)
        at_high = res.hit & (res.best_lr_index == len(ks) - 1)
        if attempt == kcfg.lr_grid_extensions or not (at_low.any() or at_high.any()):
            return res, ks, at_low | at_high
        lo -= 4 * step if at_low.any() else 0
        hi += 4 * step if at_high.any() else 0


@dataclass
class FullBatchSteps:
    """Per-seed result of :func:`full_batch_steps` (arrays of length S)."""

    steps: np.ndarray  # int64, full-batch gradient-descent steps to the target at the best lr
    lr_log2_over_L: np.ndarray  # float64, k of the best lr 2^k / L
    at_grid_edge: np.ndarray  # bool, best lr still at the top of the (extended) grid


def full_batch_steps(probs: Problems, kcfg, max_steps: int = 100_000) -> FullBatchSteps:
    """Fewest full-batch gradient-descent steps from w0 = 0 to each seed's target loss, over the lr
    grid 2^k / L of the knee (k from ``kcfg.lr_log2_min`` to ``kcfg.lr_log2_max`` in steps of
    ``kcfg.lr_log2_step``; L the smoothness bound), extended upward by 4 steps (at most
    ``kcfg.lr_grid_extensions`` times) while a seed's best lr sits at the top.

    This is S_min, the large-batch limit of steps to target (McCandlish et al., 2018, eq. 2.11): the
    knee says something about gradient noise only when it is well above one. Every seed and lr run
    in lock-step (one (S, L, d) weight tensor); lrs whose loss becomes non-finite are dropped. Ties
    (several lrs reaching the target at the same step): the lowest loss.

    Args:
        probs: prepared problems (S seeds of one variant).
        kcfg: the ``knee`` config section.
        max_steps: cap on the steps.
    Returns:
        :class:`FullBatchSteps`.
    Raises:
        RuntimeError: some seed has no lr reaching the target within ``max_steps`` steps.
    """
    x, y, l2, n = probs.x, probs.y, probs.spec.l2, probs.n
    step = kcfg.lr_log2_step
    hi = kcfg.lr_log2_max
    target = probs.target_loss.unsqueeze(1)  # (S, 1)
    S = x.shape[0]
    for attempt in range(kcfg.lr_grid_extensions + 1):
        ks = torch.arange(kcfg.lr_log2_min, hi + step / 2, step, dtype=P.DTYPE)
        lr = (2.0**ks / probs.smoothness).view(1, -1, 1)
        w = torch.zeros(S, len(ks), x.shape[-1], dtype=P.DTYPE)
        steps = np.full(S, -1, dtype=np.int64)
        best = np.zeros(S, dtype=np.int64)
        for t in range(1, max_steps + 1):
            w = w - lr * P.mean_grad(x, y, w, l2)
            loss = P.mean_loss(x, y, w, l2)  # (S, L)
            below = (loss <= target) & torch.isfinite(loss)
            for s in (below.any(1) & torch.from_numpy(steps < 0)).nonzero().flatten().tolist():
                steps[s], best[s] = t, int(torch.where(below[s], loss[s], torch.inf).argmin())
            if (steps > 0).all():
                break
        else:
            raise RuntimeError(
                f"full-batch gradient descent did not reach the target in {max_steps} steps for seeds "
                f"{[probs.seeds[s] for s in np.flatnonzero(steps < 0)]} (variant with n={n}); "
                "raise knee.lr_log2_max or target_relative"
            )
        edge = best == len(ks) - 1
        if attempt == kcfg.lr_grid_extensions or not edge.any():
            return FullBatchSteps(steps=steps, lr_log2_over_L=ks.numpy()[best], at_grid_edge=edge)
        hi += 4 * step


def fit_knee(batch_sizes: np.ndarray, samples: np.ndarray) -> tuple[float, float]:
    """Least-squares fit of log E(B) = log E_min + log(1 + B / B_crit) (McCandlish et al., 2018).

    Args:
        batch_sizes, samples: 1-d arrays (samples to target, finite points only are used).
    Returns:
        (E_min in samples, B_crit in samples); NaNs with fewer than 3 finite points.
    """
    ok = np.isfinite(samples) & (samples > 0)
    b, e = batch_sizes[ok].astype(float), samples[ok].astype(float)
    if len(b) < 3:
        return float("nan"), float("nan")

    def resid(p):
        return p[0] + np.log1p(b / np.exp(p[1])) - np.log(e)

    x0 = np.array([np.log(e.min()), np.log(np.median(b))])
    upper = np.log(1e3 * b.max())
    fit = scipy.optimize.least_squares(resid, x0, bounds=([-np.inf, np.log(1e-3)], [np.inf, upper]))
    return float(np.exp(fit.x[0])), float(np.exp(fit.x[1]))


def run_variant(cfg, variant) -> dict:
    """All batch sizes of one variant.

    Returns:
        dict with ``variant`` (the VariantConfig as a dict), ``spec``, ``problems`` (:class:`Problems`),
        ``runs`` (DataFrame, one row per seed and batch size) and ``seeds`` (one row per seed).
    """
    spec = variant_spec(cfg.data, variant)
    probs = prepare(spec, list(cfg.seeds), cfg.target_relative)
    gd = full_batch_steps(probs, cfg.knee)
    budget = int(cfg.knee.max_epochs * spec.n_train)
    rows = []
    lo, hi = cfg.knee.lr_log2_min, cfg.knee.lr_log2_max
    for b in batch_grid(probs.n, cfg.knee.batch_sizes):
        res, ks, edge = tuned_runs(probs, b, cfg.knee, budget, lo, hi)
        if cfg.knee.lr_window is not None:
            # the best lr does not decrease with B (linear scaling, then a curvature cap), so the
            # next batch size searches a window above the smallest best lr of this one
            k_best = float(ks[res.best_lr_index].min())
            lo, hi = k_best + cfg.knee.lr_window[0], k_best + cfg.knee.lr_window[1]
        for i, seed in enumerate(probs.seeds):
            rows.append(
                {
                    "variant": variant.name,
                    "seed": seed,
                    "batch_size": b,
                    "hit": bool(res.hit[i]),
                    "samples": int(res.samples[i]),
                    "steps": int(res.steps[i]),
                    "epochs": int(res.samples[i]) / spec.n_train,
                    "lr": float(res.best_lr[i]),
                    "lr_log2_over_L": float(ks[res.best_lr_index[i]]),
                    "lr_at_grid_edge": bool(edge[i]),
                    "n_delta_at_hit": float(res.n_delta_hit[i]),
                }
            )
    seeds = pd.DataFrame(
        [
            {
                "variant": variant.name,
                "seed": s,
                "loss_star": float(probs.loss_star[i]),
                "loss0": float(probs.loss0[i]),
                "target_subopt": float(probs.target_subopt[i]),
                "n_delta_start": float(probs.paths[i].n_delta[0]),
                "n_delta_target": probs.paths[i].n_delta_target,
                "b_noise_target": probs.paths[i].b_noise_target,
                "gd_steps_best_lr": int(gd.steps[i]),
                "gd_best_lr_log2_over_L": float(gd.lr_log2_over_L[i]),
                "gd_lr_at_grid_edge": bool(gd.at_grid_edge[i]),
                "gd_steps_lr_1_over_L": len(probs.paths[i].n_delta) - 1,
            }
            for i, s in enumerate(probs.seeds)
        ]
    )
    return {
        "variant": dict(variant),
        "spec": asdict(spec),
        "problems": probs,
        "runs": pd.DataFrame(rows),
        "seeds": seeds,
    }


def _pick(curve: pd.Series, mask) -> tuple[float, float]:
    sel = curve[mask(curve.index.to_numpy())]
    return (float("nan"), float("nan")) if sel.empty else (float(sel.index[0]), float(sel.iloc[0]))


def summarize_variant(result: dict, kcfg) -> dict:
    """Knee, n*Delta band and the theory's checks for one variant (medians over seeds).

    n*Delta at the target is measured two ways: on the gradient-descent path where it crosses the
    target (``n_delta_target``, deterministic), and at the SGD iterates that first reach the target
    in the runs with B <= n*Delta(w0) (``n_delta_sgd``; SGD noise leaves the error in more
    directions, so the gradient is larger there and n*Delta smaller). The band spans both.
    The small-batch reference ``samples_small`` is the median samples-to-target over those same
    runs (seeds x batch sizes), steadier than B = 1 alone.

    The knee is the median of the per-seed knees (each a :func:`fit_knee` of that seed's curve), so
    it lies within the seed range printed next to it; ``e_min_fit`` is the median of the per-seed
    E_min. (A fit to the seeds' median curve is a different estimator and can fall outside that
    range.)

    Checks: full-batch gradient descent needs at least ``min_gd_steps`` steps to the target at the
    best lr of the grid (median over seeds; otherwise the variant is in a degenerate regime and
    cannot agree); the knee lies within a factor ``tolerance`` of the band; at the largest grid B
    <= band_low / small_factor, samples are at most ``small_ratio_max`` x the reference; at the
    smallest grid B >= large_factor x band_high (when the grid reaches it), at least
    ``large_ratio_min`` x. The samples curve is the per-B median over seeds, censored (NaN) where a
    seed missed the budget.
    """
    runs, seeds, v = result["runs"], result["seeds"], result["variant"]
    runs = runs.assign(samples_or_nan=runs["samples"].where(runs["hit"]))
    curve = runs.groupby("batch_size")["samples_or_nan"].agg(lambda s: s.median() if s.notna().all() else np.nan)
    fit = seed_knees(runs)
    gd_steps = float(seeds["gd_steps_best_lr"].median())
    nd_start = float(seeds["n_delta_start"].median())
    small_runs = runs[runs["batch_size"] <= max(1.0, nd_start)]
    nd_gd, nd_sgd = float(seeds["n_delta_target"].median()), float(small_runs["n_delta_at_hit"].median())
    lo, hi = min(nd_gd, nd_sgd), max(nd_gd, nd_sgd)
    e_ref = float(small_runs["samples_or_nan"].median())
    small_b, small_e = _pick(curve.iloc[::-1], lambda b: b <= lo / kcfg.small_factor)
    large_b, large_e = _pick(curve, lambda b: b >= kcfg.large_factor * hi)
    small_ratio, large_ratio = small_e / e_ref, large_e / e_ref
    knee, tol = fit["knee"], kcfg.tolerance
    checks = {
        "regime_ok": bool(gd_steps >= kcfg.min_gd_steps),
        "knee_within_tolerance": bool(np.isfinite(knee) and lo / tol <= knee <= hi * tol),
        "small_batch_ok": bool(np.isfinite(small_ratio) and small_ratio <= kcfg.small_ratio_max),
        # untestable (no grid B that far above the band) counts as passing; the summary says so
        "large_batch_ok": bool(not np.isfinite(large_b) or large_ratio >= kcfg.large_ratio_min),
    }
    return {
        **_variant_columns(v, result["spec"], seeds, gd_steps, kcfg),
        "n_delta_start": nd_start,
        "n_delta_target": nd_gd,
        "n_delta_target_min": float(seeds["n_delta_target"].min()),
        "n_delta_target_max": float(seeds["n_delta_target"].max()),
        "n_delta_sgd": nd_sgd,
        "band_low": lo,
        "band_high": hi,
        "b_noise_target": float(seeds["b_noise_target"].median()),
        **fit,
        "knee_over_n_delta_start": knee / nd_start,
        "knee_over_n_delta_target": knee / nd_gd,
        "knee_over_n_delta_sgd": knee / nd_sgd,
        "samples_b1": float(curve.loc[1]) if 1 in curve.index else float("nan"),
        "samples_small": e_ref,
        "steps_bmax": float(runs.groupby("batch_size")["steps"].median().iloc[-1]),
        "small_b": small_b,
        "small_ratio": small_ratio,
        "large_b": large_b,
        "large_ratio": large_ratio,
        "runs_missed": int((~runs["hit"]).sum()),
        "lr_at_grid_edge": int(runs["lr_at_grid_edge"].sum()),
        **checks,
        "agrees": all(checks.values()),
    }


def seed_knees(runs: pd.DataFrame) -> dict:
    """The knee of a variant from its seeds' curves (``runs`` with ``samples_or_nan``: samples to target,
    NaN where missed): one :func:`fit_knee` per seed, the median knee and E_min over the seeds fitted.

    Returns:
        ``knee``, ``knee_seed_min``, ``knee_seed_max``, ``knee_seeds_fitted``, ``e_min_fit`` (samples;
        NaN when no seed could be fitted).
    """
    fits = np.array(
        [fit_knee(g["batch_size"].to_numpy(), g["samples_or_nan"].to_numpy()) for _, g in runs.groupby("seed")]
    )  # (S, 2): E_min, B_crit per seed
    fitted = np.isfinite(fits[:, 1])
    e_min, knee = (
        (float(np.median(fits[fitted, 0])), float(np.median(fits[fitted, 1]))) if fitted.any() else (np.nan,) * 2
    )
    knee_min, knee_max = (float(fits[fitted, 1].min()), float(fits[fitted, 1].max())) if fitted.any() else (np.nan,) * 2
    return {
        "knee": knee,
        "knee_seed_min": knee_min,
        "knee_seed_max": knee_max,
        "knee_seeds_fitted": int(fitted.sum()),
        "e_min_fit": e_min,
    }


def _variant_columns(v: dict, spec: dict, seeds: pd.DataFrame, gd_steps: float, kcfg) -> dict:
    """The first columns of a variant's summary row: what the variant is, its target, its regime."""
    return {
        "variant": v["name"],
        "kind": v["kind"],
        "of": v["of"],
        "n": spec["n_train"] * spec["duplicate"],
        "n_train": spec["n_train"],
        "duplicate": spec["duplicate"],
        "label_noise": spec["label_noise"],
        "spectrum_decay": spec["spectrum_decay"],
        "direction": spec["direction"],
        "l2": spec["l2"],
        "target_subopt": float(seeds["target_subopt"].median()),
        "gd_steps": gd_steps,
        "gd_steps_min": int(seeds["gd_steps_best_lr"].min()),
        "gd_steps_max": int(seeds["gd_steps_best_lr"].max()),
        "gd_steps_lr_1_over_L": float(seeds["gd_steps_lr_1_over_L"].median()),
        "gd_lr_at_grid_edge": int(seeds["gd_lr_at_grid_edge"].sum()),
        "min_gd_steps": int(kcfg.min_gd_steps),
        "tolerance": kcfg.tolerance,
    }


def controlled(summary: pd.DataFrame, dup_tolerance: float = 2.0, slope_range=(0.5, 2.0)) -> dict:
    """Experiment b: does the knee follow n*Delta across the label-noise series, and stay put under
    duplication?

    Returns:
        dict with the log-log slope of knee against n*Delta over ``kind == noise`` variants (1 means
        proportional), and per duplicate variant the knee and n*Delta ratios to the variant it
        duplicates; ``ok`` flags against ``slope_range`` and ``dup_tolerance``.
    """
    noise = summary[(summary["kind"] == "noise") & np.isfinite(summary["knee"])]
    out: dict = {"noise_variants": noise["variant"].tolist()}
    if len(noise) >= 2 and noise["n_delta_target"].nunique() > 1:
        slope = float(np.polyfit(np.log(noise["n_delta_target"]), np.log(noise["knee"]), 1)[0])
        out.update(slope=slope, slope_range=list(slope_range), slope_ok=bool(slope_range[0] <= slope <= slope_range[1]))
    else:
        out.update(slope=None, slope_range=list(slope_range), slope_ok=None)
    dups = []
    by_name = summary.set_index("variant")
    for _, r in summary[summary["kind"] == "duplicate"].iterrows():
        base = by_name.loc[r["of"]]
        kr, nr = r["knee"] / base["knee"], r["n_delta_target"] / base["n_delta_target"]
        dups.append(
            {
                "variant": r["variant"],
                "of": r["of"],
                "duplicate": int(r["duplicate"]),
                "knee_ratio": float(kr),
                "n_delta_ratio": float(nr),
                "tolerance": dup_tolerance,
                "ok": bool(np.isfinite(kr) and abs(np.log(kr)) <= np.log(dup_tolerance)),
            }
        )
    out["duplicates"] = dups
    return out


def run(cfg, log=print) -> dict:
    """Experiment a and b for every variant of ``cfg``.

    Returns:
        dict with ``results`` (per-variant dicts from :func:`run_variant`), ``runs`` and ``seeds``
        (concatenated DataFrames), ``summary`` (one row per variant) and ``controlled``.
    """
    results = []
    for v in cfg.variants:
        log(f"[synthetic] knee: variant {v.name} ...")
        results.append(run_variant(cfg, v))
    summary = pd.DataFrame([summarize_variant(r, cfg.knee) for r in results])
    return {
        "results": results,
        "runs": pd.concat([r["runs"] for r in results], ignore_index=True),
        "seeds": pd.concat([r["seeds"] for r in results], ignore_index=True),
        "summary": summary,
        "controlled": controlled(summary),
    }
