"""``TailAverage``: Polyak-Ruppert averaging of the SGD iterates over the last epochs, owned by the module.

Mini-batch SGD with a constant step ends in a cloud around the optimum whose size is set by the batches'
noise; the average of the iterates over the second half of the epochs sits at the cloud's centre
(Bach & Moulines 2013). torch's ``AveragedModel`` keeps the running mean; this class decides when it
runs, ends the fit with it, and keeps what a resumed fit needs: the epoch averaging started, and,
once the model holds the average, the last iterate that SGD carries on from.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel


class TailAverage:
    """When averaging runs, over the module's ``AveragedModel`` (registered on the module, so its
    state-dict keys stay ``averaged.*`` as in every checkpoint linreg has written)."""

    def __init__(self, averaged: AveragedModel) -> None:
        self.averaged = averaged
        self.start_epoch: int | None = None  # None: not averaging
        self.iterate: dict[str, Tensor] | None = None  # SGD's last iterate once the model holds the average

    def start(self, epoch: int) -> None:
        self.start_epoch = epoch

    @property
    def running(self) -> bool:
        return self.start_epoch is not None and int(self.averaged.n_averaged) > 0

    def update(self, model: nn.Module, epoch: int) -> None:
        if self.start_epoch is not None and epoch >= self.start_epoch:
            self.averaged.update_parameters(model)

    @property
    def module(self) -> nn.Module:
        return self.averaged.module

    @torch.no_grad()
    def finish(self, model: nn.Module) -> None:
        """The model becomes the average of its iterates; the last iterate is kept for a continued fit."""
        if not self.running:
            return
        self.iterate = {k: v.detach().clone() for k, v in model.state_dict().items()}
        for mine, avg in zip(model.parameters(), self.module.parameters()):
            mine.copy_(avg)

    def state(self) -> dict[str, Any]:
        return {"from": self.start_epoch, "iterate": self.iterate}

    def restore(self, state: dict[str, Any] | None) -> None:
        """A checkpoint's averaging state (before its weights are loaded); ``resume`` applies the iterate."""
        if state:
            self.start_epoch, self.iterate = state.get("from"), state.get("iterate")

    def resume(self, model: nn.Module) -> None:
        """A fit continued from a checkpoint that ended with the average: SGD goes on from its last iterate."""
        if self.iterate is not None:
            model.load_state_dict(self.iterate)
            self.iterate = None
