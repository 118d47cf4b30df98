"""Helpers the tests share: the repository's paths, the newest checkpoint, a run's TensorBoard scalars."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

ROOT = Path(__file__).resolve().parents[1]
SEED = str(ROOT / "configs" / "seed.yaml")
NIST = ROOT.parent / "shared" / "data" / "nist"  # NIST's StRD linear regression problems, beside the checkout
# Correct digits (LRE) linreg must reach per NIST problem: the best float64 peer's minus 2, at most 9.
NIST_GOAL = {
    "Norris": 9,
    "Pontius": 9,
    "NoInt1": 9,
    "NoInt2": 9,
    "Filip": 6,
    "Longley": 8,
    "Wampler1": 7,
    "Wampler2": 9,
    "Wampler3": 7,
    "Wampler4": 5,
    "Wampler5": 3,
}


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


def assert_clean(root: Path) -> None:
    """Nothing half-done under ``root``: no temporary file, no empty file, no empty folder."""
    left = [p for p in root.rglob("*") if p.name.endswith(".tmp")]
    left += [p for p in root.rglob("*") if p.is_file() and p.stat().st_size == 0]
    left += [p for p in root.rglob("*") if p.is_dir() and not any(p.iterdir())]
    assert not left, left


def error_line(capsys: Any) -> str:
    """The one ``linreg: error:`` line a refused command printed, and no traceback."""
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [line for line in err.strip().splitlines() if line.startswith("linreg: error:")]
    assert len(lines) == 1, err
    return lines[0]


def bare_trainer(**kwargs: Any) -> L.Trainer:
    """A Trainer with the loop only (no logger, checkpoint, bar or model summary), on one CPU device."""
    return L.Trainer(
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        devices=1,
        **kwargs,
    )
