"""(temporary home of the ClosedForm callback; it moves into closed_form.py)"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from typing_extensions import override

from linreg.closed_form import NormalEquations


class ClosedForm(L.Callback):
    """At the end of fit, one pass over the training rows: the least-squares optimum and how far SGD is from it.

    A callback rather than module code: the module holds the steps, the metrics and the optimizer;
    this is a measurement of the fit, like the figures.
    """

    @override
    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        hp = pl_module.hparams
        eq = NormalEquations(hp.in_features, hp.out_features, device=pl_module.device)
        data = trainer.datamodule
        if hasattr(data, "exact_batches"):
            views = data.exact_batches().batches()
        else:
            views = trainer.train_dataloader.batches() if trainer.train_dataloader is not None else []
        dtype = pl_module.model.lin.weight.dtype
        with torch.no_grad():
            for view in views:
                x, y = view["x"].to(pl_module.device), view["y"].to(pl_module.device)
                eq.update(x, y, pl_module(x.to(dtype)))
        if trainer.world_size > 1:
            for t in eq.tensors():
                t.copy_(trainer.strategy.reduce(t, reduce_op="sum"))
        pl_module.optimum = optimum = eq.solve()
        if trainer.logger is not None:
            trainer.logger.log_metrics(
                {"optimum/mse": optimum.mse, "optimum/excess_mse": optimum.excess}, step=trainer.global_step
            )
            _log_hparams_metric(trainer, pl_module)


def _log_hparams_metric(trainer: L.Trainer, pl_module: L.LightningModule) -> None:
    """Give TensorBoard's hparams view the real result: val MSE, or train MSE without validation data."""
    metrics = pl_module.latest
    name = "val/mse" if "val/mse" in metrics else "train/mse"
    if name not in metrics or not isinstance(trainer.logger, TensorBoardLogger):  # others take no metrics
        return
    datamodule = trainer.datamodule
    params: dict[str, Any] = {**(datamodule.hparams if datamodule is not None else {}), **pl_module.hparams}
    params = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in params.items()}
    trainer.logger.log_hyperparams(
        params, {f"hp/{name.split('/')[0]}_mse": float(metrics[name])}, step=trainer.global_step
    )
