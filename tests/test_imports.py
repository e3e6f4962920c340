"""The package's import graph: no cycle, and every import points down the layers of docs/design.md."""

from __future__ import annotations

import pytest
from importgraph import cycles, graph, imports_of, module_files

# Layers, bottom up: a module imports only from its own layer or below (docs/design.md, "Module map").
LAYERS: dict[str, int] = {
    "lmmops": 0, "lmmops.config": 0, "lmmops.env": 0,
    "lmmops.data": 1, "lmmops.eval": 1, "lmmops.storage": 1,
    "lmmops.models": 2,
    "lmmops.icl": 3, "lmmops.evaluation": 3,
    "lmmops.vectors": 4, "lmmops.rl": 4,
    "lmmops.tracking": 5,
    "lmmops.stages": 6,
    "lmmops.cli": 7, "lmmops.report": 7,
}
# Imports that the layers allow but the design does not: the shared scorers sit in eval, not in rl.
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "lmmops.data": ("lmmops.rl",),
    "lmmops.eval": ("lmmops.rl", "lmmops.data"),
}


def unit(module: str) -> str:
    """The layer unit of a module: its top-level sub-package or module (lmmops.vectors.live -> lmmops.vectors)."""
    return ".".join(module.split(".")[:2])


def test_every_module_has_a_layer():
    missing = sorted({unit(m) for m in module_files()} - set(LAYERS))
    assert not missing, f"give these a layer in tests/test_imports.py LAYERS (and docs/design.md): {missing}"


def test_no_import_cycle():
    found = cycles()
    assert not found, "import cycles inside lmmops:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_imports_point_down_the_layers():
    upward = [
        f"{m} ({unit(m)}, layer {LAYERS[unit(m)]}) imports {t} ({unit(t)}, layer {LAYERS[unit(t)]})"
        for m, targets in graph().items()
        for t in sorted(targets)
        if LAYERS.get(unit(t), 0) > LAYERS.get(unit(m), 0)
    ]
    assert not upward, "imports against the layers:\n" + "\n".join(upward)


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_forbidden_imports(package):
    bad = [
        f"{m} imports {t}"
        for m, targets in graph().items()
        if unit(m) == package
        for t in sorted(targets)
        if unit(t) in FORBIDDEN[package]
    ]
    assert not bad, "\n".join(bad)


def test_only_tracking_imports_mlflow():
    bad = [m for m in module_files() if unit(m) != "lmmops.tracking"
           and any(i == "mlflow" or i.startswith("mlflow.") for i in imports_of(m))]
    assert not bad, f"only lmmops.tracking may import mlflow: {bad}"


def test_no_hidden_imports_through_importlib():
    """importlib.import_module with a literal project module name hides an edge from this graph."""
    hits = []
    for path in module_files().values():
        for lineno, line in enumerate(path.read_text().splitlines(), 1):
            if "import_module(\"lmmops" in line or "import_module('lmmops" in line:
                hits.append(f"{path.name}:{lineno}: {line.strip()}")
    assert not hits, "\n".join(hits)


def test_long_modules_say_why():
    """A module over ~500 lines is split by concern, or says in its first line why it is one file."""
    long = [str(path) for path in module_files().values()
            if len(path.read_text().splitlines()) > 520 and not path.read_text().startswith("# Over 500 lines: ")]
    assert not long, f"split these by concern, or start them with '# Over 500 lines: <why>': {long}"
