"""``divebatch authors``: the authors' reported results as data, and the published numbers checked
against them by code.

The reference CSV and its schema: :mod:`divebatch.analysis.authors_reference` (``load_reported``); the
checks: :mod:`divebatch.analysis.authors_checks`. This module formats them, writes the tables to
``paper_tables/authors/`` and the generated block of ``docs/authors_results.md`` (:func:`render_block`),
and computes the README's column of the authors' values (:func:`readme_cells`). Every name of the two
modules above stays importable from here.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from divebatch.analysis.authors_checks import (
    ABSTRACT_SLICE,
    SLICES,
    definitions_table,
    describe_ratio,
    discrepancy_table,
    per_epoch_table,
    range_table,
    ratio_table,
    slice_of,
)
from divebatch.analysis.authors_reference import (
    ADABATCH,
    AGREE_TOLERANCE,
    BEGIN,
    CHECKPOINT_PERCENTS,
    CHECKPOINT_QUANTITIES,
    CSV_PATH,
    DATASET_NAMES,
    DATASETS,
    DIVEBATCH,
    DOC_PATH,
    END,
    EXTRA_COLUMNS,
    METHODS,
    OUT_DIR,
    QUANTITY_UNITS,
    README_NOT_REPORTED,
    REPO,
    REQUIRED_COLUMNS,
    TABLE_QUANTITIES,
    UNIT_QUANTITY,
    UNIT_WORDS,
    ReferenceError,
    csv_digest,
    group_text,
    load_reported,
    method_name,
    paper_rows,
    provenance,
)
from divebatch.analysis.formatting import estimate, write_table

__all__ = [
    "ABSTRACT_SLICE",
    "ADABATCH",
    "BEGIN",
    "CHECKPOINT_QUANTITIES",
    "CSV_PATH",
    "DIVEBATCH",
    "END",
    "EXTRA_COLUMNS",
    "QUANTITY_UNITS",
    "README_NOT_REPORTED",
    "REQUIRED_COLUMNS",
    "SLICES",
    "TABLE_QUANTITIES",
    "UNIT_QUANTITY",
    "ReferenceError",
    "cli",
    "csv_digest",
    "definitions_table",
    "discrepancy_table",
    "doc_block",
    "load_reported",
    "paper_rows",
    "per_epoch_table",
    "range_table",
    "ratio_table",
    "readme_cells",
    "render_block",
    "replace_block",
    "write_tables",
]

# ----------------------------------------------------------------------------- formatting


def _x(v: float, digits: int = 2) -> str:
    return estimate(v, spec=f".{digits}f", unit="x", missing="")


def _num(v: float, digits: int = 2) -> str:
    return estimate(v, spec=f".{digits}f", missing="")


def _sec(v: float, digits: int = 2) -> str:
    """Seconds (or any count) with a thousands separator, so that no table reader re-rounds it."""
    return estimate(v, spec=f",.{digits}f", missing="")


def format_ratios(ratios: pd.DataFrame) -> pd.DataFrame:
    """:func:`ratio_table` for reading."""
    return pd.DataFrame(
        {
            "dataset": ratios["dataset"].map(DATASET_NAMES),
            "table": ratios["rescale"].map(group_text),
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
            "table": pe["rescale"].map(group_text),
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
            "table": defs["rescale"].map(group_text),
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
        return estimate(v, s, spec="g", spread_spec=".2f", missing="nan")

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
        (estimate(v, s) if not pd.isna(s) else (f"{v:.0f}" if u == "epochs" else _sec(v)))
        for v, s, u in zip(t["value"], t["sem"], t["unit"])
    ]
    wide = t.pivot_table(index=keys, columns="quantity", values="cell_text", aggfunc="first").reset_index()
    wide["_d"] = wide["dataset"].map(DATASETS.index)
    wide["_m"] = wide["method"].map(METHODS.index)
    wide = wide.sort_values(["rescale", "_d", "_m", "lr"])
    out = pd.DataFrame(
        {
            "dataset": wide["dataset"].map(DATASET_NAMES),
            "table": wide["rescale"].map(group_text),
            "method": [method_name(m, lr) for m, lr in zip(wide["method"], wide["lr"])],
            "final acc. (%)": wide["final_acc"],
            "epochs to ±1 %": wide["epochs_to_1pct"],
            "total epochs": wide["total_epochs"],
            "s to ±1 %": wide["seconds_to_1pct"],
        }
    )
    for p, q in zip(CHECKPOINT_PERCENTS, CHECKPOINT_QUANTITIES):
        out[f"acc. at {p} %"] = wide[q].values
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
    return f"{describe_ratio(r)}: {_sec(r['baseline_value'], digits)} / {_sec(r['divebatch_value'], digits)} = {r['ratio']:.4f}"


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
    L += _summary(ratios, ranges, pe, defs, disc)
    L += _range_section(ratios, ranges)
    L += _per_epoch_section(ratios, ranges, pe)
    L += _definitions_section(defs)
    L += [
        "",
        "### 4. Numbers printed twice that differ",
        "",
        _md(format_discrepancies(disc)) if len(disc) else "none",
        "",
        END,
    ]
    return "\n".join(L)


def _summary(ratios, ranges, pe, defs, disc) -> list[str]:
    """The block's summary: the abstract's range, the ratios below 1, seconds per epoch, definitions."""
    exact = ranges[ranges["is_abstract_range"]]
    allr = ranges.set_index("slice").loc["all ratios"]
    L = ["### Summary", ""]
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
    listed = "; ".join(
        f"{DATASET_NAMES[r['dataset']]} {group_text(r['rescale'])}, {method_name(r['method'], r['lr'])} "
        f"({r['implied']:.2f} s against {r['measured']:.2f} s per epoch)"
        for _, r in off.iterrows()
    )
    L.append(
        f"- Seconds per epoch implied by time / epochs to ±1 % differ by more than {AGREE_TOLERANCE:.0%} from the "
        f"same method's timing runs in {len(off)} of {len(timed)} rows" + (f": {listed}" if len(off) else "") + "."
    )
    for flag in ("rounds_to_high", "rounds_to_low"):
        for _, r in ratios[ratios[flag]].iterrows():
            meas = _num(r["ratio_measured"], 4) or "not computable (no timing run)"
            L.append(
                f"- {describe_ratio(r)}: {r['ratio']:.4f} as reported; {meas} with the measured seconds per epoch."
            )
    for (dataset, rescale), g in defs.groupby(["dataset", "rescale"], sort=False):
        for _, r in g[g["method"] == "sgd_small"].iterrows():
            L.append(
                f"- {DATASET_NAMES[dataset]} {group_text(rescale)}, DiveBatch against small-batch SGD in epochs: "
                f"{r['ratio_1pct']:.2f}x to final - 1 point, {r['ratio_95pct']:.2f}x to 95 % of final."
            )
    return L + [f"- Numbers printed twice with different values: {len(disc)} (section 4).", ""]


def _range_section(ratios, ranges) -> list[str]:
    """Section 1: the abstract's "1.06x to 5.0x" against every ratio of the tables."""
    n_tables = ratios.groupby(["dataset", "rescale"]).ngroups
    low = [_arithmetic(r) for _, r in ratios[ratios["rounds_to_low"]].iterrows()]
    high = [_arithmetic(r) for _, r in ratios[ratios["rounds_to_high"]].iterrows()]
    below = [f"{describe_ratio(r)} ({r['ratio']:.4f})" for _, r in ratios[ratios["below_1"]].iterrows()]
    exact = ranges[ranges["is_abstract_range"]]["slice"].tolist()
    allr = ranges.set_index("slice").loc["all ratios"]
    return [
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


def _per_epoch_section(ratios, ranges, pe) -> list[str]:
    """Section 2: seconds per epoch implied by the tables against the timing runs."""
    n_agree, n_timing = int(pe["agree"].sum()), int(pe["has_timing"].sum())
    dis = pe[pe["has_timing"] & ~pe["agree"]]
    L = [
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
            f"- {DATASET_NAMES[r['dataset']]} {group_text(r['rescale'])}, {method_name(r['method'], r['lr'])}: "
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
    return L + [""]


def _definitions_section(defs) -> list[str]:
    """Section 3: epochs to final - 1 point against epochs to 95 % of final."""
    L = [
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
            f"- {DATASET_NAMES[dataset]} {group_text(rescale)}, DiveBatch in epochs, final - 1 point / 95 % of final: {'; '.join(parts)}."
        )
    return L


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
    ``discrepancies`` as CSV / Markdown / LaTeX into ``out`` (:func:`divebatch.analysis.formatting.write_table`),
    and ``checks.md``: the block of ``docs/authors_results.md`` (:func:`render_block`).

    Returns:
        The paths written.
    """
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
    p = argparse.ArgumentParser(
        prog="divebatch authors",
        description="The authors' reported results as data, and the published numbers checked against them by code.",
    )
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
