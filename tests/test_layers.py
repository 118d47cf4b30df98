"""The package's folders are its layers, and imports run one way: downward.

A module may import from its own layer and the layers below it, never above; the pure layers never
import Lightning (reading a table or solving least squares must not pay for it, nor depend on it).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "linreg"
# Higher numbers sit above lower ones. The top-level files are the base every layer may use.
LAYERS = {"errors": 0, "io": 0, "model": 0, "lightning_private": 0}
LAYERS |= {"lstsq": 1, "tutorial": 1, "data": 2, "training": 3, "cli": 4}
LAYERS["estimator"] = 5  # linreg from Python: a scikit-learn estimator over the CLI's pieces
PURE = ["linreg.lstsq", "linreg.tutorial.stages", "linreg.data.tables", "linreg.data.streams", "linreg.data.batches"]
PURE += [f"linreg.data.{m}" for m in ("checks", "decoded", "files", "progress", "rows", "source")]


def _layer(module: str) -> int | None:
    parts = module.split(".")
    return LAYERS.get(parts[1]) if len(parts) > 1 and parts[0] == "linreg" else None


def _imports(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.append(node.module)
        elif isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
    return found


SOURCES = sorted(p for p in PACKAGE.rglob("*.py") if p.parent != PACKAGE or p.stem in LAYERS)


@pytest.mark.parametrize("path", SOURCES, ids=[str(p.relative_to(PACKAGE)) for p in SOURCES])
def test_imports_run_downward(path: Path) -> None:
    module = ".".join(("linreg", *path.relative_to(PACKAGE).with_suffix("").parts))
    mine = _layer(module)
    assert mine is not None, f"{module} is in no layer: add its folder to LAYERS"
    upward = [m for m in _imports(path) if (_layer(m) or 0) > mine]
    assert not upward, f"{module} (layer {mine}) imports from a layer above it: {upward}"


def test_pure_layers_never_import_lightning() -> None:
    code = f"import sys, importlib; [importlib.import_module(m) for m in {PURE!r}]; print('lightning' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
