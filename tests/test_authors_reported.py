"""The authors' reported numbers (``src/divebatch/analysis/authors_reported.csv``) and the checks computed
from them (``divebatch.analysis.authors``, docs/authors_results.md): schema, self-consistency of the
reference, the generated page and README column, and that breaking one reference number changes them."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import REPO

from divebatch.analysis import authors as A

C07 = "07edbcc1f4436717db6ee8948a344e19998cdd70"
C54 = "54627890a07a880622160d13aaeaa821cd8a5487"


@pytest.fixture(scope="module")
def df() -> pd.DataFrame:
    return A.load_reported()


def edited(tmp_path: Path, change) -> Path:
    """A copy of the reference CSV with ``change(raw DataFrame of str)`` applied."""
    raw = pd.read_csv(A.CSV_PATH, dtype=str, keep_default_na=False)
    change(raw)
    out = tmp_path / "authors_reported.csv"
    raw.to_csv(out, index=False)
    return out


def row_mask(raw: pd.DataFrame, dataset: str, method: str, rescale: str, quantity: str) -> pd.Series:
    m = (raw["dataset"] == dataset) & (raw["method"] == method) & (raw["rescale"] == rescale)
    m &= raw["quantity"] == quantity
    assert m.sum() == 1
    return m


# ----------------------------------------------------------------------------- the reference itself


def test_schema_and_sources(df):
    raw = pd.read_csv(A.CSV_PATH, dtype=str, keep_default_na=False)
    assert list(raw.columns[: len(A.REQUIRED_COLUMNS)]) == list(A.REQUIRED_COLUMNS)
    assert set(df["repo"]) == {"chenyuen0103/pytorch-cifar"} and set(df["file"]) == {"src/plot.ipynb"}
    assert set(df["commit"]) == {C07, C54} and set(df["check_commit"]) - {""} <= {C07, C54}
    assert all(re.fullmatch(r"[0-9a-f]{40}", c) for c in df["commit"])
    # the cells the docs name, per commit (0-based)
    assert set(df.loc[df["commit"] == C07, "cell"]) == {8, 10, 11, 13, 14, 15, 16, 17, 18}
    assert set(df.loc[df["commit"] == C54, "cell"]) == {7}
    assert (df["unit"] == df["quantity"].map(A.QUANTITY_UNITS)).all()
    assert df["rescale"].dtype == bool and df["batch_size"].dtype == np.int64
    assert (df["sem"].dropna() >= 0).all() and (df["check_sem"].dropna() >= 0).all()
    epochs = df.loc[df["unit"] == "epochs", "value"]
    assert (epochs == np.round(epochs)).all() and (epochs > 0).all()
    # a SEM is printed exactly for the accuracies
    has_sem = df["sem"].notna()
    assert (has_sem == (df["unit"] == "percent")).all()


def test_every_table_has_all_its_rows(df):
    wide = A.paper_rows(df)
    assert len(wide) == 3 * 2 * 4  # 3 datasets x 2 lr-rescaling groups x 4 rows
    for (dataset, rescale), g in wide.groupby(["dataset", "rescale"]):
        expected = {"sgd_small", "sgd_large", A.ADABATCH[rescale], A.DIVEBATCH[rescale]}
        assert set(g["method"]) == expected, (dataset, rescale)
        assert g[list(A.TABLE_QUANTITIES)].notna().all().all()
        assert (g["epochs_to_1pct"] <= g["total_epochs"]).all()
        # large-batch SGD: the base lr without lr rescaling, 16 x the base lr with it (2048 / 128; on
        # Tiny-ImageNet, whose initial batch is 256, linear scaling would give 8 x: docs/authors_results.md)
        small = g.loc[g["method"] == "sgd_small", "lr"].iloc[0]
        large = g.loc[g["method"] == "sgd_large", "lr"].iloc[0]
        assert large == pytest.approx(16 * small if rescale else small)
    checkpoints = df[df["quantity"].isin(A.CHECKPOINT_QUANTITIES)]
    assert len(checkpoints) == len(wide) * 4
    # small-batch SGD is one run, printed in both groups: the same numbers
    for q in A.TABLE_QUANTITIES + A.CHECKPOINT_QUANTITIES:
        s = df[(df["method"] == "sgd_small") & (df["quantity"] == q)].pivot(
            index="dataset", columns="rescale", values="value"
        )
        assert (s[False] == s[True]).all(), q


def test_accuracy_at_100_percent_is_the_final_accuracy(df):
    idx = ["dataset", "rescale", "method", "lr"]
    fin = df[df["quantity"] == "final_acc"].set_index(idx)
    last = df[df["quantity"] == "acc_at_100pct"].set_index(idx)
    assert set(fin.index) == set(last.index)
    last = last.loc[fin.index]
    assert (last["value"].values == fin["value"].values).all()
    # the SEM is printed from the same numbers at another commit: equal up to one unit of the last digit
    assert np.abs(last["sem"].values - fin["sem"].values).max() <= 0.01 + 1e-9


def test_rows_the_abstract_range_uses_are_present(df):
    """The abstract's "1.06x to 5.0x": its two ratios exist, and are the extremes of one named subset."""
    ratios = A.ratio_table(df)
    low, high = ratios[ratios["rounds_to_low"]], ratios[ratios["rounds_to_high"]]
    assert len(low) >= 1 and len(high) >= 1
    for r in (*low.itertuples(), *high.itertuples()):
        for method in (r.baseline, A.DIVEBATCH[r.rescale]):
            q = A.UNIT_QUANTITY[r.unit]
            hit = df[(df["dataset"] == r.dataset) & (df["method"] == method) & (df["quantity"] == q)]
            assert len(hit[hit["rescale"] == r.rescale]) == 1
    ranges = A.range_table(ratios).set_index("slice")
    assert ranges.loc[A.ABSTRACT_SLICE, "is_abstract_range"]
    assert ranges.loc["all ratios", "n"] == len(ratios) == 3 * 2 * 3 * 2  # tables x baselines x units


def test_second_prints_agree_except_the_documented_ones(df):
    """Where a number is printed twice, the two prints agree, except the rows that section 4 of
    docs/authors_results.md lists (found here by hand from the two notebooks)."""
    disc = A.discrepancy_table(df)
    found = {(r.dataset, r.method, r.quantity) for r in disc.itertuples()}
    assert found == {
        ("cifar10", "sgd_large", "epochs_to_95pct"),
        ("cifar10", "adabatch_rescale", "epochs_to_95pct"),
        ("tiny_imagenet", "divebatch", "seconds_per_epoch"),
        ("tiny_imagenet", "divebatch", "acc_at_100pct"),
    }
    assert (df["check_commit"] != "").sum() >= 40  # the tables printed at both commits are cross-checked


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("broken", ["method", "negative SEM", "not an integer", "unit", "missing column"])
def test_bad_reference_is_refused_with_the_key(tmp_path, broken):
    def apply(raw):
        if broken == "missing column":
            raw.drop(columns=["cell"], inplace=True)
        elif broken == "method":
            raw.loc[0, "method"] = "sgd_tiny"
        elif broken == "negative SEM":
            raw.loc[0, "sem"] = "-0.1"
        elif broken == "not an integer":
            raw.loc[row_mask(raw, "cifar10", "divebatch", "false", "epochs_to_1pct"), "value"] = "98.5"
        else:
            raw.loc[0, "unit"] = "seconds"

    with pytest.raises(A.ReferenceError, match=broken):
        A.load_reported(edited(tmp_path, apply))


def test_duplicate_rows_are_refused(tmp_path):
    path = edited(tmp_path, lambda raw: None)
    text = path.read_text().splitlines()
    path.write_text("\n".join([*text, text[1]]) + "\n")
    with pytest.raises(A.ReferenceError, match="same key"):
        A.load_reported(path)


# ----------------------------------------------------------------------------- the checks


def test_per_epoch_verdict_comes_out_both_ways(df):
    pe = A.per_epoch_table(df)
    timed = pe[pe["has_timing"]]
    assert timed["agree"].any() and not timed["agree"].all()
    # implied s/epoch is time / epochs, and the recomputed time is epochs x measured
    r = pe[(pe["dataset"] == "cifar10") & (pe["method"] == "divebatch")].iloc[0]
    assert r["implied"] == pytest.approx(r["seconds"] / r["epochs"])
    assert r["seconds_at_measured"] == pytest.approx(r["epochs"] * r["measured"])
    # a looser tolerance turns every row with a timing run into agreement
    assert A.per_epoch_table(df, tolerance=2.0).loc[lambda t: t["has_timing"], "agree"].all()


def test_breaking_one_reference_number_changes_the_generated_check(tmp_path, df):
    """DiveBatch's CIFAR-10 time without lr rescaling set to epochs x its measured s/epoch: the ratio
    printed as 5.0 disappears, the abstract's range is no longer reproduced, the row's per-epoch
    verdict flips to "agree", and the generated page and README column change."""
    measured = df[
        (df["dataset"] == "cifar10") & (df["method"] == "divebatch") & (df["quantity"] == "seconds_per_epoch")
    ]
    new_seconds = 98 * measured["value"].iloc[0]

    def change(raw):
        raw.loc[row_mask(raw, "cifar10", "divebatch", "false", "seconds_to_1pct"), "value"] = f"{new_seconds:.2f}"

    path = edited(tmp_path, change)
    broken = A.load_reported(path)
    before, after = A.ratio_table(df), A.ratio_table(broken)
    assert before["rounds_to_high"].any() and not after["rounds_to_high"].any()
    assert not A.range_table(after).set_index("slice").loc[A.ABSTRACT_SLICE, "is_abstract_range"]
    pe_b = A.per_epoch_table(broken).set_index(["dataset", "rescale", "method"])
    pe_a = A.per_epoch_table(df).set_index(["dataset", "rescale", "method"])
    key = ("cifar10", False, "divebatch")
    assert not pe_a.loc[key, "agree"] and pe_b.loc[key, "agree"]
    assert A.render_block(broken, A.csv_digest(path)) != A.render_block(df, A.csv_digest())
    assert A.readme_cells(broken)["1"] != A.readme_cells(df)["1"]
    assert A.csv_digest(path) != A.csv_digest()


def test_definitions_table_pairs_each_row_with_its_95_percent_epoch(df):
    defs = A.definitions_table(df)
    assert set(defs["dataset"]) == {"cifar10"} and len(defs) == 8
    d = defs[(defs["rescale"] == False) & (defs["method"] == "sgd_small")].iloc[0]  # noqa: E712
    dive = defs[(defs["rescale"] == False) & (defs["method"] == "divebatch")].iloc[0]  # noqa: E712
    assert d["ratio_95pct"] == pytest.approx(d["epochs_95pct"] / dive["epochs_95pct"])
    assert d["ratio_1pct"] == pytest.approx(d["epochs_1pct"] / dive["epochs_1pct"])


# ----------------------------------------------------------------------------- the generated page and README


def test_docs_page_block_is_the_generated_block(df):
    doc = (REPO / "docs" / "authors_results.md").read_text()
    assert A.doc_block(doc) == A.render_block(df, A.csv_digest()), "run `divebatch authors` to regenerate"
    # outside the generated block the page quotes no result of the reference (hyperparameters such as
    # delta 0.01 are not results)
    outside = A.replace_block(doc, "")
    raw = pd.read_csv(A.CSV_PATH, dtype=str, keep_default_na=False)
    results = {v for v in raw["value"] if "." in v and len(v) >= 5}
    assert results and not [v for v in results if v in outside]


def test_readme_column_equals_the_generated_cells(df):
    readme = (REPO / "README.md").read_text()
    head = "| claim | command | output that checks it | authors' reported value (source) |"
    assert head in readme
    table = readme.split(head, 1)[1].split("\n\n", 1)[0].strip().splitlines()[1:]
    cells = A.readme_cells(df)
    assert len(table) >= 4
    for line in table:
        parts = [p.strip() for p in line.strip().strip("|").split(" | ")]
        assert len(parts) == 4, line
        claim = parts[0].split(".", 1)[0]
        if claim.startswith("the authors' own tables"):  # the layouts row points at the whole reference data
            assert "authors_reported.csv" in parts[3]
            continue
        assert parts[3] == cells.get(claim, A.README_NOT_REPORTED), claim


def test_cli_writes_tables_and_checks_the_page(tmp_path):
    doc = tmp_path / "page.md"
    doc.write_text(f"intro\n\n{A.BEGIN}\nstale\n{A.END}\n")
    assert A.cli(["--out", str(tmp_path / "t"), "--doc", str(doc), "--check"]) == 1
    assert A.cli(["--out", str(tmp_path / "t"), "--doc", str(doc)]) == 0
    assert A.cli(["--out", str(tmp_path / "t"), "--doc", str(doc), "--check"]) == 0
    assert doc.read_text().startswith("intro\n\n")
    for stem in ("reported", "ratios", "ranges", "per_epoch", "definitions", "discrepancies"):
        for suffix in (".csv", ".md", ".tex"):
            assert (tmp_path / "t" / f"{stem}{suffix}").exists()
    assert A.doc_block((tmp_path / "t" / "checks.md").read_text()) == A.doc_block(doc.read_text())


def test_the_reference_ships_in_the_package():
    from importlib.resources import files

    assert (files("divebatch.analysis") / "authors_reported.csv").is_file()
    assert A.CSV_PATH.parent == Path(A.__file__).parent
