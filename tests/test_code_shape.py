"""The house's code-shape check (.ci/code_shape.py, run by CI) finds what it is meant to find."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _checker():
    spec = importlib.util.spec_from_file_location("code_shape", ROOT / ".ci" / "code_shape.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_finds_long_functions_long_modules_and_cycles(tmp_path):
    shape = _checker()
    pkg = tmp_path / "src" / "pkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    body = "\n".join(f"    x{i} = {i}" for i in range(shape.MAX_FUNCTION_LINES))
    (pkg / "a.py").write_text(
        f"def short():\n    from pkg import b  # deferred: still an arrow\n\n\ndef long():\n{body}\n"
    )
    (pkg / "b.py").write_text("from . import a\n" + "\n" * shape.MAX_MODULE_LINES)
    (pkg / "c.py").write_text("import pkg.a\n")  # an arrow into the cycle, not part of it
    found = shape.problems(pkg / "a.py") + shape.problems(pkg / "b.py")
    assert any("long has" in p for p in found) and not any("short has" in p for p in found)
    assert any("b.py: module has" in p for p in found)
    assert shape.import_cycles(tmp_path / "src") == ["import cycle: pkg.a <-> pkg.b"]


def test_the_package_meets_the_limits():
    shape = _checker()
    src = ROOT / "src"
    found = [p for f in sorted(src.rglob("*.py")) for p in shape.problems(f)] + shape.import_cycles(src)
    assert not found, "\n".join(found)
