"""The import graph of `lmmops`, read from the sources with `ast` (nothing is imported).

Every `import` statement counts, at module level or inside a function: a lazy import is still an edge of
the design. `from pkg import name` is an edge to `pkg.name` when that is a module, else to `pkg`.
Used by tests/test_imports.py (cycles, layers) and tests/test_dvc_deps.py (what each stage runs).
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "lmmops"


@cache
def module_files() -> dict[str, Path]:
    """Dotted module name -> source file, for every module of the package (packages by their __init__)."""
    files = {}
    for path in sorted((SRC / PACKAGE).rglob("*.py")):
        parts = path.relative_to(SRC).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        files[".".join(parts)] = path
    return files


def _absolute(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imported(tree: ast.Module, module: str, is_package: bool) -> set[str]:
    """Every module named by an import statement of `tree` (project modules and third-party ones)."""
    names: set[str] = set()
    files = module_files()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node, module, is_package)
            for alias in node.names:
                full = f"{base}.{alias.name}"
                names.add(full if full in files else base)
    return names


@cache
def imports_of(module: str) -> frozenset[str]:
    """All modules `module` imports (project and third party), by dotted name."""
    path = module_files()[module]
    return frozenset(_imported(ast.parse(path.read_text()), module, path.name == "__init__.py"))


@cache
def graph() -> dict[str, frozenset[str]]:
    """module -> the project modules it imports (explicit edges only)."""
    files = module_files()
    return {m: frozenset(i for i in imports_of(m) if i in files) for m in files}


def parents(module: str) -> list[str]:
    """The packages whose __init__ runs before `module` (lmmops, lmmops.x, ...)."""
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def closure(*roots: str) -> set[str]:
    """Every project module that runs when `roots` are imported: imports, transitively, and parent packages."""
    edges = graph()
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        todo.extend(edges[m])
        todo.extend(p for p in parents(m) if p in edges)
    return seen


def cycles() -> list[list[str]]:
    """The strongly connected components with more than one module (or a module importing itself)."""
    edges = graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's algorithm; the graph is ~150 modules, recursion is fine
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in edges[v]:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found
