"""Test-only callbacks the CLI loads by name in a subprocess (``--trainer.callbacks+=tests.cli.callbacks.X``)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import lightning as L


class Barrier(L.Callback):
    """Hold each of ``parties`` processes at ``setup`` until all have reached it: every run has picked
    its log folder by then, and none has written into it yet (the worst moment of a race)."""

    def __init__(self, folder: str, parties: int = 2) -> None:
        self.folder, self.parties = Path(folder), parties

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        (self.folder / f"{os.getpid()}.ready").touch()
        deadline = time.monotonic() + 120
        while len(list(self.folder.glob("*.ready"))) < self.parties and time.monotonic() < deadline:
            time.sleep(0.05)


class SignalAtPredictBatch(L.Callback):
    """Send ``signal`` to this process once, at the start of predict batch ``batch``."""

    def __init__(self, batch: int, signal: str = "SIGTERM") -> None:
        self.batch, self.signal = batch, signal

    def on_predict_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        if batch_idx == self.batch:
            os.kill(os.getpid(), getattr(signal, self.signal))
