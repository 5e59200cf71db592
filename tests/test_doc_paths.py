"""Every file, module, figure and command that README.md and docs/*.md name exists.

The pages are read as text (prose, inline code and code blocks alike) for:

- repository paths: ``src/divebatch/...``, ``docs/...``, ``configs/...``, ``benchmarks/...``,
  ``examples/...``, ``tests/...``, ``replicate/...``, ``gpu_check/...``, ``.ci/...``; a placeholder
  (``<dataset>``, ``*``, ``{false,true}``) must match at least one file; a config path
  ``configs/<dataset>/<method>.yaml`` may name a composition (:func:`divebatch.config.config_exists`);
- package paths without ``src/``: ``divebatch/x.py``, ``method/x.py``, ``analysis/...``, ``data/...``,
  ``orchestration/...``, ``synthetic/...`` under ``src/divebatch/``, and a bare ``name.py`` somewhere in
  the repository unless it is a file of the authors' code or of BackPACK (:data:`FOREIGN`);
- dotted modules ``divebatch.x.y`` (the last part may be a name the module defines);
- figures ``NAME.png``: the name up to its first placeholder is a string the code saves figures under;
- commands ``divebatch SUBCOMMAND``: a subcommand of :data:`divebatch.cli.COMMANDS`.
"""

from __future__ import annotations

import functools
import itertools
import re
from pathlib import Path

import pytest
from conftest import REPO

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
# Python files whose docstrings and comments name files and modules (code strings are read too: a path
# the code builds from parts is not seen, one it spells out must exist as well).
SOURCES = sorted(p for d in ("src", "gpu_check", "benchmarks", "examples") for p in (REPO / d).rglob("*.py"))
SRC = REPO / "src" / "divebatch"
ROOTS = ("src/divebatch", "docs", "configs", "benchmarks", "examples", "tests", "replicate", "gpu_check", ".ci")
SUBPACKAGES = ("divebatch", "method", "analysis", "data", "orchestration", "synthetic")
# Files of the authors' code (chenyuen0103/pytorch-cifar, pytorch-cifar100) and of BackPACK the docs cite.
FOREIGN = {
    "train.py",
    "train_utils.py",
    "utils.py",
    "launcher.py",
    "main_cifar10.py",
    "main_cifar100.py",
    "main_imgnet.py",
    "dataset_loader.py",
    "global_settings.py",
    "resnet.py",
    "module_extension.py",
    "batchnorm_nd.py",
}
PATH_CHARS = r"[\w./<>{}*,-]"
PLACEHOLDER = re.compile(r"<[^>]*>|\*|\{[^}]*\}")
UPPER = re.compile(r"(?<=/)[A-Z][A-Z_]*(?=\.\w+$)")  # configs/sweeps/X.yaml: a name the reader chooses
# Named as examples of what the command refuses.
ABSENT = {"configs/smoke/no_such_method.yaml", "configs/sweeps/x.yaml"}
EXTENSIONS = (".py", ".md", ".yaml", ".csv", ".json", ".png", ".sh", ".ipynb")


def _expand(path: str) -> list[str]:
    """``a_{x,y}.md`` -> ``a_x.md``, ``a_y.md``."""
    parts = re.split(r"\{([^}]*)\}", path)  # {name} without a comma: a format field of the code, any name
    options = [[p] if i % 2 == 0 else p.split(",") if "," in p else ["*"] for i, p in enumerate(parts)]
    return ["".join(c) for c in itertools.product(*options)]


def _exists(path: str) -> bool:
    """A repository path exists, placeholders matching at least one file, or names a composed config."""
    for one in _expand(path.rstrip(".,")):
        pattern = UPPER.sub("*", re.sub(r"<[^>]*>", "*", one))
        if "*" in pattern:
            if not any(REPO.glob(pattern)):
                return False
        elif not (REPO / one).exists():
            from divebatch.config import config_exists

            if not (one.startswith("configs/") and config_exists(REPO / one)):
                return False
    return True


def _mentions(regex: str, pages: list[Path] = PAGES) -> list[tuple[str, str]]:
    """(page, match) for every match of ``regex`` (group 1) in the pages, each once per page."""
    found = []
    for page in pages:
        for m in dict.fromkeys(re.findall(regex, page.read_text())):
            found.append((page.relative_to(REPO).as_posix(), m))
    return found


def repo_paths() -> list[tuple[str, str]]:
    roots = "|".join(re.escape(r) for r in ROOTS)
    found = _mentions(rf"(?<![\w./-])((?:{roots})/{PATH_CHARS}*[\w}}/])", PAGES + SOURCES)
    return [(page, p) for page, p in found if p not in ABSENT]


def package_paths() -> list[tuple[str, str]]:
    subs = "|".join(SUBPACKAGES)
    return _mentions(rf"(?<![\w./-])((?:{subs})/{PATH_CHARS}*\.py)\b", PAGES + SOURCES)


def bare_modules() -> list[tuple[str, str]]:
    return _mentions(r"(?<![\w./<>*-])(\w+\.py)\b")


def dotted_modules() -> list[tuple[str, str]]:
    found = _mentions(r"(?<![\w./-])(divebatch(?:\.\w+)+)", PAGES + SOURCES)
    return [(page, d) for page, d in found if not d.endswith(EXTENSIONS)]


def figure_names() -> list[tuple[str, str]]:
    return _mentions(r"(?<![\w<>{}*,-])([\w<>{}*,-]+)\.png\b")


def subcommands() -> list[tuple[str, str]]:
    return _mentions(r"(?<![\w./-])(?<!from )divebatch ([a-z][a-z-]*)\b")


def _module_defines(path: Path, name: str) -> bool:
    text = path.read_text()
    defines = rf"^\s*(?:def|class) {name}\b|^{name}\b[^=\n]*=|^\s+{name},?$|__all__ = \[[^\]]*[\"']{name}[\"']|import .*\b{name}\b"
    return bool(re.search(defines, text, re.M))


def _dotted_ok(dotted: str) -> bool:
    """A module, a name it defines, or a method of a class it defines (``divebatch.rundir.RunDir.lock``)."""
    parts = dotted.split(".")[1:]
    for cut in range(len(parts), max(len(parts) - 3, -1), -1):
        base = SRC.joinpath(*parts[:cut])
        for module in (base.with_suffix(".py"), base / "__init__.py"):
            if module.is_file():
                return all(_module_defines(module, name) for name in parts[cut:])
    return False


@functools.cache
def _code_names() -> tuple[set[str], set[str]]:
    """String literals of the package that can name a figure: whole names (``"noise_scale"``) and the
    literal start of formatted ones (``f"curves_{stem}"`` -> ``curves_``)."""
    text = "\n".join(p.read_text() for p in SRC.rglob("*.py"))
    whole = set(re.findall(r"[\"'/]([a-z][\w-]*)[\"']", text))
    prefixes = set(re.findall(r"f[\"']([a-z][\w-]*)\{", text))
    return whole, prefixes


def _figure_ok(name: str) -> bool:
    whole, prefixes = _code_names()
    literal = PLACEHOLDER.split(name)[0]
    if literal == name and name in whole:
        return True
    return any(literal.startswith(p) for p in prefixes)


@pytest.mark.parametrize("page,path", repo_paths())
def test_repository_paths_exist(page, path):
    assert _exists(path), f"{page} names {path}, which does not exist"


@pytest.mark.parametrize("page,path", package_paths())
def test_package_paths_exist(page, path):
    rel = path.removeprefix("divebatch/")
    assert _exists(f"src/divebatch/{rel}"), f"{page} names {path}, not a module under src/divebatch/"


@pytest.mark.parametrize("page,name", bare_modules())
def test_bare_module_names_exist(page, name):
    ours = [p for p in REPO.rglob(name) if ".venv" not in p.parts and "runs" not in p.parts]
    assert ours or name in FOREIGN, f"{page} names {name}: no such file here, nor one of the authors' (FOREIGN)"


@pytest.mark.parametrize("page,dotted", dotted_modules())
def test_dotted_modules_exist(page, dotted):
    assert _dotted_ok(dotted), f"{page} names {dotted}: no such module (or name in its module)"


@pytest.mark.parametrize("page,name", figure_names())
def test_figures_are_written_by_the_code(page, name):
    assert _figure_ok(name), f"{page} names {name}.png, which no code saves"


@pytest.mark.parametrize("page,command", subcommands())
def test_subcommands_exist(page, command):
    from divebatch.cli import COMMANDS

    assert command in COMMANDS, f"{page} names `divebatch {command}`; commands: {sorted(COMMANDS)}"


def test_the_checks_find_what_they_check():
    """The extraction sees the pages' references (a regex that matched nothing would pass vacuously)."""
    assert len(repo_paths()) > 100 and len(package_paths()) > 5 and len(dotted_modules()) > 10
    assert len(figure_names()) > 10 and len(subcommands()) > 10 and len(bare_modules()) > 8
    assert not _exists("src/divebatch/method/shadow.py") and not _dotted_ok("divebatch.method.shadow")
    assert _dotted_ok("divebatch.DiversityEstimator") and not _dotted_ok("divebatch.cli.train")  # a dict key
    assert _dotted_ok("divebatch.rundir.RunDir.lock") and not _dotted_ok("divebatch.rundir.RunDir.no_such_method")
    assert _exists("configs/cifar10/divebatch.yaml") and not _exists("configs/cifar10/no_such_method.yaml")
    assert _exists("paper_tables/<profile>/claims.md") and _dotted_ok("divebatch.config.load_config")
    assert _figure_ok("progress_<dataset>") and _figure_ok("noise_scale") and not _figure_ok("no_such_figure")
