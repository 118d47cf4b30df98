"""The LightningModule owns its state: no callback in linreg assigns an attribute of the module it is
handed (``pl_module.x = ...``, ``setattr(pl_module, ...)``, ``trainer.lightning_module.x = ...``); a
callback calls the module's public methods instead."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "linreg"


def _root(node: ast.expr) -> str:
    """The name an attribute chain starts from: ``pl_module.model.lin`` -> ``pl_module``; and
    ``trainer.lightning_module...`` -> ``lightning_module``."""
    while isinstance(node, ast.Attribute):
        if node.attr == "lightning_module":
            return "lightning_module"
        node = node.value
    return node.id if isinstance(node, ast.Name) else ""


def _writes_to_module(tree: ast.AST) -> list[int]:
    lines = []
    for node in ast.walk(tree):
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
            targets = [node.target]
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "setattr":
            targets = [node.args[0]] if node.args else []
            if targets and _root(targets[0]) in ("pl_module", "lightning_module"):
                lines.append(node.lineno)
            continue
        for target in targets:
            if isinstance(target, ast.Attribute) and _root(target) in ("pl_module", "lightning_module"):
                lines.append(node.lineno)
    return lines


def test_no_callback_assigns_a_module_attribute() -> None:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for line in _writes_to_module(ast.parse(path.read_text())):
            found.append(f"{path.relative_to(PACKAGE)}:{line}")
    assert not found, f"callbacks write into the LightningModule (call a method of it instead): {found}"


def test_the_scan_finds_such_a_write() -> None:
    """The scan itself can fail: each form it looks for, in a made-up callback."""
    source = (
        "def on_train_start(self, trainer, pl_module):\n"
        "    pl_module.optimum = 1\n"
        "    pl_module.model.lin.bias += 1\n"
        "    setattr(pl_module, 'lr', 0.1)\n"
        "    trainer.lightning_module.curvature = (1, 2)\n"
        "    pl_module.finish_training()\n"
    )
    assert sorted(_writes_to_module(ast.parse(source))) == [2, 3, 4, 5]
