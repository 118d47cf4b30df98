"""``FinalModel``: the module's end-of-fit work, run before any checkpoint callback saves the fit.

Lightning runs callbacks' ``on_train_end`` before the module's own, and a checkpoint callback saves
``last.ckpt`` there; the model a fit ends with (the average of the iterates, when averaging) must be in
place by then. ``configure_callbacks`` puts this callback ahead of every checkpoint callback.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

import lightning as L
from typing_extensions import override


class FinalModel(L.Callback):
    @override
    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        finish = cast(Callable[[], None], pl_module.finish_training)  # LinRegModule's (no upward import)
        finish()
