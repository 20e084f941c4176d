"""Layers point one way: serve_app -> deployments -> pipeline -> triposr (checked on the imports)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LAYERS = ["serve_app", "deployments", "pipeline", "triposr"]


def _imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("layer", LAYERS[1:])
def test_a_layer_imports_nothing_above_it(layer):
    above = set(LAYERS[: LAYERS.index(layer)])
    for path in sorted((ROOT / layer).rglob("*.py")):
        bad = _imported_packages(path) & above
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"
