"""Shared fixtures: run the real CLI in a temporary working folder, read real TensorBoard files."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from linreg.cli import main

ROOT = Path(__file__).resolve().parents[1]
SEED = str(ROOT / "configs" / "seed.yaml")


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every CLI run writes lightning_logs/ under the working folder: give each test its own."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def cli(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., int]:
    """Run ``linreg`` in process; return its exit status (0 when it returns normally)."""
    monkeypatch.setattr("sys.argv", ["linreg"])  # LightningCLI warns when pytest's own argv is present

    def run(*args: str) -> int:
        try:
            main(list(args))
        except SystemExit as exc:
            return int(exc.code or 0)
        return 0

    return run


def last_ckpt(root: Path) -> Path:
    ckpts = sorted(root.glob("lightning_logs/version_*/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime)
    assert ckpts, f"no checkpoint under {root}"
    return ckpts[-1]


def scalars(version_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of a run's event file(s), read back with TensorBoard's own reader."""
    acc = EventAccumulator(str(version_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def weights(ckpt: Path) -> tuple[torch.Tensor, torch.Tensor]:
    state = torch.load(ckpt, weights_only=True)["state_dict"]
    return state["model.lin.weight"], state["model.lin.bias"]
