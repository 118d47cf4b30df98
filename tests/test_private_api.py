"""Every private Lightning part linreg relies on still exists, and none is used outside one module.

``linreg/lightning_private.py`` lists them with the reason for each. A Lightning upgrade that renames one
should fail here, by name, instead of breaking a fit, a resume or the CLI quietly.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.core.optimizer import LightningOptimizer
from lightning.pytorch.loggers import TensorBoardLogger

from linreg.lightning_private import OVERRIDDEN, USED

PACKAGE = Path(__file__).resolve().parents[1] / "linreg"


IDS = [f"{owner.__name__}.{name}" for owner, name, *_ in OVERRIDDEN]


@pytest.mark.parametrize(("owner", "name", "where", "why"), OVERRIDDEN, ids=IDS)
def test_overridden_private_methods_exist(owner: type, name: str, where: str, why: str) -> None:
    assert callable(getattr(owner, name, None)), f"{owner.__name__}.{name} is gone ({why})"
    assert re.search(rf"def {name}\(", (PACKAGE / where).read_text()), f"{where} no longer overrides {name}"


def test_used_private_attributes_exist(tmp_path: Path) -> None:
    """Some are set in __init__, so they are looked up on instances."""
    objects = {
        "LightningModule": L.LightningModule(),
        "Trainer": L.Trainer(default_root_dir=tmp_path, logger=False, enable_progress_bar=False),
        "ModelCheckpoint": ModelCheckpoint(),
        "TensorBoardLogger": TensorBoardLogger(tmp_path),
        "LightningOptimizer": LightningOptimizer(torch.optim.SGD([torch.zeros(1, requires_grad=True)])),
    }
    missing = [f"{owner}.{name}" for owner, name in USED if not hasattr(objects[owner], name)]
    assert not missing, f"private Lightning attributes gone: {missing}"
    assert hasattr(objects["Trainer"]._signal_connector, "received_sigterm")


def test_no_other_file_reaches_into_lightning_privates() -> None:
    """Outside lightning_private.py, a private Lightning name may appear only as a listed override."""
    names = {name for _, name in USED} | {name for _, name, *_ in OVERRIDDEN}
    allowed = {(where, name) for _, name, where, _ in OVERRIDDEN}
    found = []
    for path in PACKAGE.rglob("*.py"):
        rel = str(path.relative_to(PACKAGE))
        if rel == "lightning_private.py":
            continue
        for name in names:
            for line in path.read_text().splitlines():
                override = (rel, name) in allowed and ("def " in line or "super()." in line)
                if re.search(rf"\b{name}\b", line) and not override:
                    found.append(f"{rel}: {line.strip()}")
    assert not found, "private Lightning names used outside linreg/lightning_private.py:\n" + "\n".join(found)


def test_lightning_private_documents_each_use() -> None:
    source = inspect.getsource(__import__("linreg.lightning_private", fromlist=["x"]))
    for _, name in USED:
        assert name in source.split("USED")[-1], f"{name} is listed but no function in lightning_private uses it"
