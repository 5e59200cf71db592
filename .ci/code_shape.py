"""Code-shape limits of the house: every function in src/ at most 80 lines, every module at most
600 lines. (ruff's C901 <= 15 is set in pyproject.toml.) Usage: python .ci/code_shape.py [PATH ...]"""

import ast
import sys
from pathlib import Path

MAX_FUNCTION_LINES = 80
MAX_MODULE_LINES = 600


def problems(path: Path) -> list[str]:
    text = path.read_text()
    out = []
    n = len(text.splitlines())
    if n > MAX_MODULE_LINES:
        out.append(f"{path}: module has {n} lines (at most {MAX_MODULE_LINES})")
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            length = node.end_lineno - first + 1
            if length > MAX_FUNCTION_LINES:
                out.append(f"{path}:{node.lineno}: {node.name} has {length} lines (at most {MAX_FUNCTION_LINES})")
    return out


def _module_name(path: Path, src: Path) -> str:
    parts = list(path.relative_to(src).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported(node: ast.AST, package: str) -> list[str]:
    """The module names an import statement names (relative imports resolved against ``package``)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if not isinstance(node, ast.ImportFrom):
        return []
    base = node.module or ""
    if node.level:
        up = package.split(".")
        up = up[: len(up) - node.level + 1]
        base = ".".join([*up, base] if base else up)
    return [base] + [f"{base}.{a.name}" for a in node.names]


def import_graph(src: Path = Path("src")) -> dict[str, set[str]]:
    """module -> the package's modules it imports, counting imports made inside functions too (an
    import deferred to run time is still an arrow); a name imported from a module counts as the module."""
    files = {_module_name(f, src): f for f in src.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in files}
    for mod, f in files.items():
        package = mod if f.name == "__init__.py" else mod.rpartition(".")[0]
        for node in ast.walk(ast.parse(f.read_text())):
            for t in _imported(node, package):
                while t and t not in files:  # the deepest module of the package that the import names
                    t = t.rpartition(".")[0]
                if t and t != mod and not mod.startswith(t + "."):  # a module's own parents are not arrows
                    graph[mod].add(t)
    return graph


def import_cycles(src: Path = Path("src")) -> list[str]:
    """The strongly connected components of :func:`import_graph` with more than one module (Tarjan)."""
    graph = import_graph(src)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    comps: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = [stack.pop()]
            while comp[-1] != v:
                comp.append(stack.pop())
            if len(comp) > 1:
                comps.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [f"import cycle: {' <-> '.join(c)}" for c in comps]


def main(argv: list[str]) -> int:
    roots = [Path(a) for a in argv] or [Path("src")]
    files = sorted(f for r in roots for f in ([r] if r.is_file() else r.rglob("*.py")))
    found = [p for f in files for p in problems(f)] + (import_cycles() if not argv else [])
    print("\n".join(found) or f"code shape ok: {len(files)} module(s)")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
