"""A test-only callback that sends a real signal to its own process at a chosen training step."""

from __future__ import annotations

import os
import signal
from typing import Any

import lightning as L


class SignalAt(L.Callback):
    """Send ``signal`` (e.g. ``SIGINT``) to this process once, just before training step ``step``.

    Through the CLI: ``--trainer.callbacks+=tests.signals.SignalAt --trainer.callbacks.step 7``.
    """

    def __init__(self, step: int, signal: str = "SIGINT") -> None:
        self.step, self.signal, self.sent = step, signal, False

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if not self.sent and trainer.global_step >= self.step:
            self.sent = True
            os.kill(os.getpid(), getattr(signal, self.signal))
