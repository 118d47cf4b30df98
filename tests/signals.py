"""A test-only callback that sends a real signal to its own process at a chosen point of a fit."""

from __future__ import annotations

import os
import signal
from typing import Any

import lightning as L


class SignalAt(L.Callback):
    """Send ``signal`` (e.g. ``SIGINT``) to this process once, at the first training step (or, with
    ``during="validation"``, the first validation batch) at or after global step ``step``. Under DDP
    only rank 0 receives it, as when a scheduler or a terminal signals the launching process.

    Through the CLI: ``--trainer.callbacks+=tests.signals.SignalAt --trainer.callbacks.step 7``.
    """

    def __init__(self, step: int, signal: str = "SIGINT", during: str = "training") -> None:
        self.step, self.signal, self.during, self.sent = step, signal, during, False

    def _send(self, trainer: L.Trainer, during: str) -> None:
        if not self.sent and during == self.during and trainer.global_step >= self.step and trainer.is_global_zero:
            self.sent = True
            os.kill(os.getpid(), getattr(signal, self.signal))

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._send(trainer, "training")

    def on_validation_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        if not trainer.sanity_checking:
            self._send(trainer, "validation")
