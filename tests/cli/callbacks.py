"""Test-only callbacks the CLI loads by name in a subprocess (``--trainer.callbacks+=tests.cli.callbacks.X``)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.loggers import TensorBoardLogger


class BarrierLogger(TensorBoardLogger):
    """linreg's default logger, holding each of ``parties`` processes at the creation of its event
    file until all have come that far: every run has picked its version folder by then, and none has
    written into it yet (the worst moment of a race between runs started together)."""

    def __init__(self, save_dir: str, folder: str, parties: int = 2, **kwargs: Any) -> None:
        super().__init__(save_dir, **kwargs)
        self.folder, self.parties = Path(folder), parties

    @property
    def experiment(self) -> Any:
        if self._experiment is None:
            (self.folder / f"{os.getpid()}.ready").touch()
            deadline = time.monotonic() + 120
            while len(list(self.folder.glob("*.ready"))) < self.parties and time.monotonic() < deadline:
                time.sleep(0.05)
        return super().experiment


class SignalAtPredictBatch(L.Callback):
    """Send ``signal`` to this process once, at the start of predict batch ``batch``."""

    def __init__(self, batch: int, signal: str = "SIGTERM") -> None:
        self.batch, self.signal = batch, signal

    def on_predict_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        if batch_idx == self.batch:
            os.kill(os.getpid(), getattr(signal, self.signal))
