"""The committed outputs are of one run set: every notebook and figure of a profile carries the
provenance (profile, data, seeds, commit) of that profile's tables, and the notebook templates in
``notebooks/`` carry no outputs at all (their executed copies live in ``notebooks/<profile>/``)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
LABEL = re.compile(r"profile=[^|\n\"\\]+\| data=[^|\n\"\\]+\| seeds=[^|\n\"\\]+\| commit=[0-9a-z+]+")
PROFILES = sorted(p.name for p in (REPO / "paper_tables").iterdir() if (p / "main.md").is_file())


def _labels(text: str) -> set[str]:
    return {m.group(0).strip() for m in LABEL.finditer(text)}


def _commit(label: str) -> str:
    return label.rsplit("commit=", 1)[1]


def table_labels(profile: str) -> set[str]:
    return set().union(*(_labels(p.read_text()) for p in (REPO / "paper_tables" / profile).glob("*.md")))


def check_profile(profile: str, root: Path = REPO) -> list[str]:
    """Every disagreement between ``profile``'s notebooks / figures and its tables, in words."""
    tables = set().union(*(_labels(p.read_text()) for p in (root / "paper_tables" / profile).glob("*.md")))
    main = _labels((root / "paper_tables" / profile / "main.md").read_text())
    commits = {_commit(label) for label in tables}
    problems = []
    for nb in sorted((root / "notebooks" / profile).glob("*.ipynb")):
        found = _labels(nb.read_text())
        if not found & main:
            problems.append(f"{nb.name}: no label of main.md ({sorted(main)}) in {sorted(found)}")
        problems += [f"{nb.name}: {label} is of no table" for label in sorted(found) if _commit(label) not in commits]
    for png in sorted((root / "figures" / profile).glob("*.png")):
        label = Image.open(png).info.get("Description")
        if label is None:
            problems.append(f"{png.name}: no provenance label in its metadata")
        elif _commit(label) not in commits:
            problems.append(f"{png.name}: {label} is of no table (tables: {sorted(commits)})")
    return problems


@pytest.mark.parametrize("profile", PROFILES)
def test_notebooks_and_figures_carry_their_tables_provenance(profile):
    assert check_profile(profile) == []


def test_a_stale_notebook_or_figure_is_found(tmp_path):
    """The check fails on a notebook or figure of another commit than the tables (and passes on a
    consistent set)."""
    label = "profile=p (CPU-scale, not the paper's numbers) | data=digits | seeds=1,2 | commit=abc1234"
    (tmp_path / "paper_tables" / "p").mkdir(parents=True)
    (tmp_path / "paper_tables" / "p" / "main.md").write_text(f"# Main\n\n{label}\n")
    (tmp_path / "notebooks" / "p").mkdir(parents=True)
    (tmp_path / "figures" / "p").mkdir(parents=True)
    nb = tmp_path / "notebooks" / "p" / "n.ipynb"
    nb.write_text(json.dumps({"cells": [{"outputs": [{"text": label}]}]}))
    Image.new("RGB", (2, 2)).save(tmp_path / "figures" / "p" / "f.png", pnginfo=_info(label))
    assert check_profile("p", tmp_path) == []
    stale = label.replace("abc1234", "bc8dfb7+dirty")
    nb.write_text(json.dumps({"cells": [{"outputs": [{"text": stale}]}]}))
    assert len(check_profile("p", tmp_path)) == 2  # not main.md's label, and of no table
    nb.write_text(json.dumps({"cells": [{"outputs": [{"text": label}]}]}))
    Image.new("RGB", (2, 2)).save(tmp_path / "figures" / "p" / "f.png", pnginfo=_info(stale))
    assert check_profile("p", tmp_path) == [f"f.png: {stale} is of no table (tables: ['abc1234'])"]


def _info(label: str):
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("Description", label)
    return info


def test_notebook_templates_carry_no_outputs():
    for nb in sorted((REPO / "notebooks").glob("*.ipynb")):
        cells = json.loads(nb.read_text())["cells"]
        assert all(not c.get("outputs") for c in cells if c["cell_type"] == "code"), nb.name
