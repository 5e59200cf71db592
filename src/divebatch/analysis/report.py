"""``divebatch report``: run directories -> paper tables, figures, claims and (optionally) notebooks.

For each profile found in the runs (or the one given with ``--profile``) it writes
``<out>/paper_tables/<profile>/`` (tables as CSV, Markdown and LaTeX, a generated README.md
listing every output with one sentence) and ``<out>/figures/<profile>/`` (PNG and PDF).
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from divebatch.analysis import claims as claims_mod
from divebatch.analysis import display, estimators, figures, paper_report, speedups, tables
from divebatch.analysis.collect import RunSet, collect_runs, protocol_name
from divebatch.analysis.comparisons import comparison_table
from divebatch.analysis.groups import run_table
from divebatch.analysis.style import save_figure, slug
from divebatch.analysis.verdicts import NOT_MEASURED
from divebatch.provenance import VERDICT_FILE

__all__ = ["DESCRIPTIONS", "Results", "analyse", "claim_lines", "cli", "load_results", "slug", "write_report"]


@dataclass
class Results:
    """Everything a report or notebook shows for one profile (tables are numeric DataFrames).

    Attributes:
        runs: the collected :class:`RunSet`, this profile only.
        profile: its name.
        main, speedups, claims, diversity: :func:`tables.main_table`, :func:`speedups.speedup_table`,
            :func:`claims.claims_table`, :func:`tables.diversity_table`.
        sensitivity: :func:`tables.sensitivity_table`, or None when the runs hold no sweep.
        comparisons: every group against each baseline role, long
            (:func:`divebatch.analysis.comparisons.comparison_table`; the main table shows it wide).
    """

    runs: RunSet
    profile: str
    main: pd.DataFrame
    speedups: pd.DataFrame
    claims: pd.DataFrame
    diversity: pd.DataFrame
    sensitivity: pd.DataFrame | None = None
    notes: list[str] = field(default_factory=list)
    comparisons: pd.DataFrame | None = None

    @property
    def provenance(self) -> str:
        return self.runs.provenance()

    @property
    def datasets(self) -> list[str]:
        return sorted(self.runs.epochs["dataset"].unique()) if len(self.runs.epochs) else []

    @property
    def excluded(self) -> pd.DataFrame:
        """Runs left out of every aggregate for a problem (unreadable, unfinished, short, duplicate),
        with the reason; diverged runs are in :attr:`diverged`."""
        r = self.runs.runs
        keep = ~r["complete"].astype(bool) & (r["status"] != "diverged")
        return r.loc[keep, ["run_id", "dataset", "method", "seed", "reason"]].reset_index(drop=True)

    @property
    def diverged(self) -> pd.DataFrame:
        """Runs whose training loss became non-finite: listed and counted, left out of every
        aggregate. Columns ``run_id, dataset, method, setting, seed, diverged_epoch`` (0-based), ``reason``."""
        r = self.runs.runs
        cols = ["run_id", "dataset", "method", "setting", "seed", "diverged_epoch", "reason"]
        if "status" not in r:
            return pd.DataFrame(columns=cols)
        return r.loc[r["status"] == "diverged", cols].reset_index(drop=True)


def analyse(runs: RunSet, profile: str, verdict_path: str | Path | None = None) -> Results:
    """Build every table for the runs of one profile (see :class:`Results`)."""
    ep = runs.epochs
    comparisons = comparison_table(ep)
    main = tables.main_table(ep, runs.runs, comparisons)
    speeds = speedups.speedup_table(ep)
    return Results(
        runs=runs,
        profile=profile,
        main=main,
        speedups=speeds,
        claims=claims_mod.claims_table(main, speeds, verdict_path, ep, comparisons),
        diversity=tables.diversity_table(ep),
        sensitivity=tables.sensitivity_table(ep) if tables.has_sweep(ep) else None,
        comparisons=comparisons,
    )


def load_results(
    roots: list[str | Path] | str | Path, profile: str | None = None, report_root: str | Path = "."
) -> Results:
    """Collect the runs under ``roots`` and analyse one profile (the only one present if None).

    Args:
        roots: run folders; a string may hold several separated by ``os.pathsep``.
        profile: which profile; None when the runs hold exactly one.
        report_root: the ``--out`` of ``divebatch report``; claim 4 reads
            ``<report_root>/paper_tables/<profile>/synthetic_verdict.json`` when it exists.
    Raises:
        ValueError: ``profile`` is None and the runs hold several profiles, or the profile has no run.
        FileNotFoundError: a root does not exist.
    """
    if isinstance(roots, str) and os.pathsep in roots:
        roots = roots.split(os.pathsep)
    rs = collect_runs(roots)
    profiles = rs.profiles
    if profile is None:
        if len(profiles) != 1:
            raise ValueError(f"profile=None but the runs hold profiles {profiles}; allowed: one of them")
        profile = profiles[0]
    if profile not in profiles:
        raise ValueError(f"profile={profile!r} has no run under {roots}; allowed: {profiles}")
    return analyse(rs.select(profile), profile, Path(report_root) / "paper_tables" / profile / VERDICT_FILE)


# What each output shows, one sentence (used in the generated README).
DESCRIPTIONS = {
    "main": (
        "Main table, one row per dataset, method and setting (with its protocol: authors' code, clean or -): "
        "seeds used and seeds diverged, final and best validation accuracy and accuracy at 25% of the "
        "epochs (mean ± sd over seeds), peak memory (MB; peak RSS on CPU), accuracy change against "
        "small-batch SGD and AdaBatch (percentage points, 95 % t-interval over n seeds, and mean ± SEM), "
        "seeds whose batch size changed, the authors' time to target "
        "(seed-mean curve, final - 1 pp; epochs, optimizer steps, training seconds) and its speed-ups, then "
        "per-run time to the own target (final - 1 pp) and the common target in epochs, optimizer steps and "
        "wall-clock seconds."
    ),
    "speedups": (
        "Speed-up of every method against small-batch SGD and against AdaBatch (exp of the mean per-seed "
        "log-ratio baseline time / method time, > 1 is faster, 95 % t-interval over n seeds, paired by seed "
        "or Welch), separately in epochs, optimizer steps and wall-clock seconds, for the own target (the "
        "authors' definition: final - 1 pp, never a verdict alone) and the common target."
    ),
    "speedups_matched": (
        "Speed at matched quality, the one the verdicts use: every method against each baseline at the "
        "lower of their two seed-mean finals - 1 pp (a loss: the higher + its tolerance), per seed (95 % "
        "t-interval over n seeds, paired or Welch; ratio of seed means ± SEM beside it) and on the seed-mean "
        "curves, in epochs, optimizer steps, training seconds and wall-clock seconds, with how many runs "
        "reach the target and how many resized their batch."
    ),
    "claims": (
        "Each claim of docs/protocol.md with the paper's figure, ours, the definition of time to target "
        "(the authors' first, then per run) and unit it is judged in, and a verdict (holds / does not "
        "hold / not measured at this scale) computed by the stated rule."
    ),
    "runs": (
        "Every run directory found with its protocol and status (complete, diverged at epoch N, "
        "excluded), final accuracy, time to target and, for diverged or excluded runs, why they were "
        "left out of every aggregate."
    ),
    "diversity": (
        "Every epoch that measured gradient diversity: Delta_hat, n * Delta_hat = 1 + B_simple "
        "(gradient noise scale), DiveBatch's proposed batch and the batch size used next."
    ),
    "sensitivity": (
        "Final accuracy and speed-up against small-batch SGD (three units) for each delta, "
        "resize frequency and max batch size of the sweep."
    ),
}


DESCRIPTIONS.update(figures.DESCRIPTIONS)
DESCRIPTIONS.update(estimators.DESCRIPTIONS)
DESCRIPTIONS.update(paper_report.DESCRIPTIONS)


def _existing(dirs: list[Path]) -> list[Path]:
    return [p for d in dirs if d.is_dir() for p in d.rglob("*") if p.is_file()]


def _rel(path: Path, start: Path) -> str:
    return Path(os.path.relpath(path, start)).as_posix()


class _Writer:
    """Writes a report's tables and figures and remembers each with its README sentence."""

    def __init__(self, res: Results, out: Path):
        self.tdir, self.fdir = out / "paper_tables" / res.profile, out / "figures" / res.profile
        self.prov = res.provenance
        self.written: list[Path] = []
        self.entries: list[tuple[str, list[Path], str]] = []  # (section, paths, sentence)

    def table(self, name, numeric, shown, title, label=None) -> None:
        paths = display.write_table(numeric, shown, self.tdir / name, label or self.prov, title)
        self.written.extend(paths)
        self.entries.append(("Tables", paths, DESCRIPTIONS[name]))

    def figure(self, stem, fig, sentence, label=None) -> None:
        paths = save_figure(fig, self.fdir / stem, label or self.prov)
        self.written.extend(paths)
        self.entries.append(("Figures", paths, sentence))


def write_report(
    res: Results, out: str | Path = ".", run_notebooks: bool = False, roots: list[str] | None = None
) -> list[Path]:
    """Write every table and figure of one profile under ``out`` (see module docstring).

    Existing outputs of the same profile are replaced, with a message on stderr naming how many.

    Returns:
        The paths written (tables, figures, README.md, executed notebooks).
    """
    out = Path(out)
    w = _Writer(res, out)
    before = set(_existing([w.tdir, w.fdir]))
    have_runs = not res.runs.epochs.empty
    _write_tables(res, w, have_runs)
    if have_runs:
        figures.write(res, roots, w.figure)  # curves, progress, dynamics, diversity, trade-off, noise, sweep
        estimators.write(res, roots, w.table, w.figure)  # the estimator study, when its runs are there
        paper_report.write(res, w.table, w.figure)  # the authors' own tables and figures
    if run_notebooks and have_runs:
        from divebatch.analysis import notebooks  # nbclient and nbconvert: only for --notebooks

        ndir = out / "notebooks" / res.profile
        for name in notebooks.NOTEBOOKS:
            paths = list(notebooks.execute(name, roots or [], res.profile, ndir, report_root=out))
            w.written.extend(paths)
            w.entries.append(("Notebooks", paths, notebooks.NOTEBOOKS[name]))
    readme = w.tdir / "README.md"
    others = sorted(before - set(w.written) - {readme})
    replaced = [p for p in [*w.written, readme] if p in before]
    readme.write_text(_readme(res, w.entries, w.tdir, others))
    w.written.append(readme)
    if replaced:
        print(
            f"report: replaced {len(replaced)} existing file(s) in {_rel(w.tdir, out)} and {_rel(w.fdir, out)}",
            file=sys.stderr,
        )
    return w.written


def _write_tables(res: Results, w: _Writer, have_runs: bool) -> None:
    """The main, speed-up, claims, runs, diversity and sensitivity tables."""
    if have_runs or len(res.diverged):  # a profile whose every run diverged still says so in its main table
        w.table(
            "main",
            res.main,
            display.format_main(res.main, res.comparisons),
            "Accuracy and time to target per dataset, method and setting (peak memory: CUDA allocator peak on "
            "GPU, peak RSS of the process on CPU)",
        )
    if have_runs:
        sp = res.speedups
        own_common = sp[sp["target"].isin(list(speedups.TARGETS))] if len(sp) else sp
        w.table(
            "speedups",
            own_common,
            display.format_speedups(own_common),
            "Speed-ups against small-batch SGD and AdaBatch (ratio, 95 % t-interval over n seeds; own target = "
            "the authors' definition, never a verdict alone)",
        )
        matched = sp[sp["target"] == speedups.MATCHED] if len(sp) else sp
        if len(matched):
            w.table(
                "speedups_matched",
                matched.dropna(axis=1, how="all"),
                display.format_matched(matched),
                "Speed at matched quality (the lower of the two seed-mean finals - 1 pp): 95 % t-interval over n "
                "seeds, ratio of seed means ± SEM, seed-mean curves",
            )
    w.table(
        "claims",
        res.claims,
        res.claims.rename(columns=str.capitalize),
        "Claims of docs/protocol.md and our verdicts (speed: the authors' definition first, then per run)",
    )
    runs_tab = _runs_table(res)
    w.table(
        "runs",
        runs_tab,
        runs_tab.assign(protocol=runs_tab["protocol"].map(protocol_name)).fillna(""),
        "Every run directory found",
    )
    if have_runs and len(res.diversity):
        w.table("diversity", res.diversity, res.diversity.round(4), "Gradient diversity measurements")
    if have_runs and res.sensitivity is not None:
        w.table(
            "sensitivity",
            res.sensitivity,
            display.format_sensitivity(res.sensitivity),
            "Sensitivity to delta, resize frequency and max batch size",
        )


def _runs_table(res: Results) -> pd.DataFrame:
    """Every run found: ``run_id, dataset, method, setting, protocol`` (config value), ``seed``,
    ``complete``, ``status`` (complete | diverged | excluded), ``reason`` (e.g. ``diverged at epoch
    3 ...``, 1-based), ``epochs_completed``, then for complete runs the per-run numbers of
    :func:`divebatch.analysis.groups.run_table`."""
    r = res.runs.runs
    cols = [
        "run_id",
        "dataset",
        "method",
        "setting",
        "protocol",
        "seed",
        "complete",
        "status",
        "reason",
        "epochs_completed",
    ]
    base = r.reindex(columns=cols).copy()
    if res.runs.epochs.empty:
        return base
    per = run_table(res.runs.epochs)
    keep = [
        "run_id",
        "final_acc",
        "best_acc",
        "acc_at_25pct",
        "peak_memory_mb",
        "final_batch_size",
        *[c for c in per.columns if c.startswith(("own_", "common_"))],
    ]
    return base.merge(per[keep], on="run_id", how="left")


def _readme(res: Results, entries, tdir: Path, others: list[Path]) -> str:
    lines = [
        f"# Results of profile `{res.profile}`",
        "",
        "Generated by `divebatch report`; do not edit by hand. How to read every table and figure, and how "
        "speed-ups, time to target and verdicts are defined: `docs/analysis.md`.",
        "",
        f"Provenance: `{res.provenance}`",
        "",
    ]
    if "CPU-scale" in res.provenance:
        lines += [
            "These are CPU-scale results (small subsets, few epochs), not the paper's numbers. "
            "On CPU larger batches do not give wall-clock speed-ups; every speed-up says its unit.",
            "",
        ]
    lines += [
        "## Claims",
        "",
        "Speed claims are judged at matched quality (the lower of the two seed-mean finals - 1 pp): first on "
        "the seed-mean curves beside the authors' own-target time (final - 1 pp, training seconds; "
        "docs/protocol.md), then per seed (95 % t-intervals over n seeds). A variant outside the quality "
        "tolerance is never named the fastest; a variant whose batch never resized is not evidence.",
        "",
    ]
    for _, c in res.claims.iterrows():
        lines.append(f"- Claim {c['claim']} ({_claim_unit(c)}): **{c['verdict']}**. {c['ours']}")
    lines.append("")
    diverged = res.diverged
    lines += ["## Diverged runs", ""]
    if diverged.empty:
        lines.append("None: no run's training loss became non-finite.")
    for _, r in diverged.iterrows():
        setting = f" ({r['setting']})" if r["setting"] else ""
        lines.append(
            f"- `{r['run_id']}` ({r['dataset']}, {r['method']}{setting}, seed {r['seed']}): {r['reason']}; "
            "left out of every aggregate, counted in the main table's Diverged column"
        )
    lines.append("")
    excluded = res.excluded
    missing = res.runs.missing_seeds
    lines += ["## Excluded runs and missing seeds", ""]
    if excluded.empty and not missing:
        lines.append("None: every run found is complete and every group has every seed.")
    for _, r in excluded.iterrows():
        lines.append(f"- excluded `{r['run_id']}`: {r['reason']}")
    for (_, dataset, method, setting), seeds in sorted(missing.items()):
        lines.append(
            f"- {dataset}, {method}{' (' + setting + ')' if setting else ''}: no complete run for seed(s) {seeds}"
        )
    lines.append("")
    section = None
    for sec, paths, sentence in entries:
        if sec != section:
            lines += ([""] if section else []) + [f"## {sec}", ""]
            section = sec
        links = ", ".join(f"[{p.name}]({_rel(p, tdir)})" for p in paths)
        lines.append(f"- {links}: {sentence}")
    if others:
        lines += [
            "",
            "## Other files in these folders",
            "",
            "Not written by this report (e.g. by `divebatch synthetic`); see the command that wrote them.",
            "",
        ]
        lines += [f"- [{p.name}]({_rel(p, tdir)})" for p in others]
    return "\n".join(lines) + "\n"


def _claim_unit(c: pd.Series) -> str:
    """``epochs, authors' definition`` for a speed claim, the unit alone for claims 3 and 4."""
    d = c.get("definition")
    return f"{c['unit']}, {d}" if isinstance(d, str) and d != "-" else c["unit"]


def cli(argv: list[str] | None = None) -> int:
    """``divebatch report RUNS_DIR... [--out DIR] [--profile NAME] [--notebooks]``; returns an exit code."""
    p = argparse.ArgumentParser(
        prog="divebatch report",
        description="Run directories -> paper tables, figures, claims and (optionally) notebooks.",
    )
    p.add_argument("runs", nargs="+", metavar="RUNS_DIR", help="folders searched recursively for run directories")
    p.add_argument("--out", default=".", help="root of paper_tables/<profile>/ and figures/<profile>/ (default: .)")
    p.add_argument(
        "--profile", default=None, help="report only this profile (default: one report per profile found in the runs)"
    )
    p.add_argument(
        "--notebooks",
        action="store_true",
        help="also execute the notebooks into <out>/notebooks/<profile>/ (.ipynb and .html)",
    )
    args = p.parse_args(argv)
    try:
        rs = collect_runs(args.runs)
    except FileNotFoundError as err:
        print(f"divebatch report: {err}", file=sys.stderr)
        return 2
    if rs.runs.empty:
        print(f"divebatch report: no run directory (a folder with config.yaml) under {args.runs}", file=sys.stderr)
        return 1
    profiles = rs.profiles
    if args.profile is not None and args.profile not in profiles:
        print(
            f"divebatch report: --profile {args.profile!r} has no run; allowed: {' | '.join(profiles)}", file=sys.stderr
        )
        return 2
    for profile in [args.profile] if args.profile else profiles:
        verdict = Path(args.out) / "paper_tables" / profile / VERDICT_FILE
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            res = analyse(rs.select(profile), profile, verdict)
            paths = write_report(res, args.out, args.notebooks, args.runs)
        n_ok = int(res.runs.runs["complete"].sum())
        print(
            f"report {profile}: {n_ok} complete run(s), {len(res.diverged)} diverged, {len(res.excluded)} excluded; "
            f"wrote {len(paths)} files; see {Path(args.out) / 'paper_tables' / profile / 'README.md'}"
        )
        for _, r in res.diverged.iterrows():
            print(f"  DIVERGED {r['run_id']}: {r['reason']}")
        for line in claim_lines(res.claims):
            print(line)
    return 0


def claim_lines(claims: pd.DataFrame) -> list[str]:
    """The report's verdict lines: one per measured claim row (claim, unit, verdict), and one line
    for all the rows of a claim that were not measured (not one per unit and definition)."""
    lines, unmeasured = [], {}
    for _, c in claims.iterrows():
        if c["verdict"] == NOT_MEASURED:
            unmeasured[c["claim"]] = unmeasured.get(c["claim"], 0) + 1
        else:
            lines.append(f"  claim {c['claim']} ({_claim_unit(c)}): {c['verdict']}")
    if unmeasured:
        rows = sum(unmeasured.values())
        lines.append(f"  claims {', '.join(str(k) for k in unmeasured)}: {NOT_MEASURED} ({rows} row(s) of claims.md)")
    return lines
