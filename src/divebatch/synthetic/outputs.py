"""The verdict file of the synthetic check, and where every output is written (the tables
themselves: :mod:`divebatch.synthetic.tables`; the figures: :mod:`divebatch.synthetic.figures`).

Everything goes to ``<out_root>/paper_tables/<profile>/synthetic_*`` (CSV with a ``provenance``
column, Markdown, LaTeX, via :func:`divebatch.analysis.tables.write_table`) and
``<out_root>/figures/<profile>/synthetic_*`` (PNG and PDF, via
:func:`divebatch.analysis.style.save_figure`). Every output is a deterministic function of the
config and the seeds except the wall-clock columns, which live only in
``synthetic_methods_walltime.*`` so that a rerun reproduces every other file byte for byte.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from divebatch.analysis.style import apply_style, save_figure
from divebatch.analysis.tables import write_table
from divebatch.provenance import VERDICT_FILE
from divebatch.synthetic.figures import (
    plot_diversity_path,
    plot_estimator,
    plot_estimators,
    plot_knee,
    plot_knee_vs_diversity,
    plot_methods,
)
from divebatch.synthetic.tables import failed_checks, knee_tables, methods_tables

# ---------------------------------------------------------------------------------------------
# verdict and writing
# ---------------------------------------------------------------------------------------------


def verdict(knee: dict, cfg, provenance: str, commit: str) -> dict:
    """Claim 4's machine-readable verdict (read by :func:`divebatch.analysis.claims.claim4`).

    ``holds`` is true when every variant, whatever its kind, agrees with the theory (full-batch
    gradient descent needs at least ``knee.min_gd_steps`` steps to the target, the knee lies within
    ``knee.tolerance`` of the n·Δ band at the target, samples are flat well below it and grow far
    above it), the knee's log-log slope against n·Δ over the noise variants is in the allowed range,
    and duplication moves the knee by less than the duplicate tolerance. The summary names every
    variant's full-batch steps, knee and n·Δ, and why it disagrees where it does.
    """
    s, ctrl = knee["summary"], knee["controlled"]
    holds = bool(s["agrees"].all() and ctrl["slope_ok"] is not False and all(d["ok"] for d in ctrl["duplicates"]))
    parts = [
        f"{r['variant']}: full-batch GD {r['gd_steps']:.0f} steps, knee {r['knee']:.3g} vs n*Delta "
        f"{r['n_delta_target']:.3g} at the target (x{r['knee_over_n_delta_target']:.2g})"
        + ("" if r["agrees"] else " - disagrees (" + "; ".join(failed_checks(r)) + ")")
        for _, r in s.iterrows()
    ]
    if ctrl["slope"] is not None:
        parts.append(
            f"log-log slope of knee on n*Delta over label noise {ctrl['slope']:.2f}"
            + ("" if ctrl["slope_ok"] else f" (outside {ctrl['slope_range']})")
        )
    parts += [
        f"x{d['duplicate']} duplication moves the knee x{d['knee_ratio']:.2f}" + ("" if d["ok"] else " (too far)")
        for d in ctrl["duplicates"]
    ]
    scope = (
        f"every variant (label noise, duplication, conditioning), where full-batch gradient descent needs "
        f">= {cfg.knee.min_gd_steps} steps to the target"
    )
    summary = (
        f"{int(s['agrees'].sum())} of {len(s)} variants agree with the theory (knee of samples-to-target "
        f"within x{cfg.knee.tolerance:g} of n*Delta at the target, full-batch GD needing >= "
        f"{cfg.knee.min_gd_steps} steps): " + "; ".join(parts)
    )
    clean = s.replace({np.nan: None}).to_dict(orient="records")
    return {
        "claim": 4,
        "holds": holds,
        "summary": summary,
        "scope": scope,
        "profile": cfg.profile,
        "seeds": list(cfg.seeds),
        "commit": commit,
        "provenance": provenance,
        "target_relative": cfg.target_relative,
        "rules": {
            "min_gd_steps": cfg.knee.min_gd_steps,
            "tolerance": cfg.knee.tolerance,
            "small_factor": cfg.knee.small_factor,
            "small_ratio_max": cfg.knee.small_ratio_max,
            "large_factor": cfg.knee.large_factor,
            "large_ratio_min": cfg.knee.large_ratio_min,
        },
        "variants": clean,
        "controlled": ctrl,
    }


def write_all(
    cfg, knee: dict | None, methods: dict | None, out_root: str | Path, provenance: str, commit: str
) -> list[Path]:
    """Write every output of the experiments that ran. Returns the paths written."""
    apply_style()
    out_root = Path(out_root)
    tdir, fdir = out_root / "paper_tables" / cfg.profile, out_root / "figures" / cfg.profile
    written: list[Path] = []
    tables: dict = {}
    if knee is not None:
        knee = {**knee, "target_relative": cfg.target_relative}
        tables.update(knee_tables(knee))
        written += save_figure(plot_knee(knee, cfg.knee), fdir / "synthetic_knee", provenance)
        written += save_figure(plot_knee_vs_diversity(knee, cfg.knee), fdir / "synthetic_knee_vs_diversity", provenance)
        written += save_figure(plot_diversity_path(knee), fdir / "synthetic_diversity_path", provenance)
        tdir.mkdir(parents=True, exist_ok=True)
        path = tdir / VERDICT_FILE
        path.write_text(json.dumps(verdict(knee, cfg, provenance, commit), indent=2, default=float) + "\n")
        written.append(path)
    if methods is not None:
        tables.update(methods_tables(methods))
        written += save_figure(plot_methods(methods), fdir / "synthetic_methods", provenance)
        written += save_figure(plot_estimator(methods), fdir / "synthetic_estimator", provenance)
        written += save_figure(plot_estimators(methods), fdir / "synthetic_estimators", provenance)
    for name, (numeric, display, title) in tables.items():
        if display is None:  # raw per-run data: CSV only (a Markdown/LaTeX rendering would not be read)
            tdir.mkdir(parents=True, exist_ok=True)
            path = tdir / f"{name}.csv"
            numeric.assign(provenance=provenance).to_csv(path, index=False, float_format="%.6g")
            written.append(path)
        else:
            written += write_table(numeric, display, tdir / name, provenance, title)
    return written
