"""The run's row in TensorBoard's hparams view: the user's flags, and the final model's metrics."""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.loggers import TensorBoardLogger

FLAGS = ("solver", "lr", "momentum", "l1", "l2", "fit_intercept", "standardize")
DATA_FLAGS = ("batch_size",)
METRICS = ("train/mse", "train/r2", "val/mse", "val/r2")


def log_hparams(trainer: L.Trainer, module: Any) -> None:
    """One call at the end of a fit: the same keys for every run (so runs of either solver line up),
    plain values only (no ``_instantiator``), and the saved model's metrics, which every run has."""
    if not isinstance(trainer.logger, TensorBoardLogger):  # others take no hparams metrics
        return
    hp = module.hparams
    params: dict[str, Any] = {key: hp.get(key) for key in FLAGS}
    data = getattr(getattr(trainer, "datamodule", None), "hparams", {})
    params |= {key: data.get(key) for key in DATA_FLAGS}
    params["precision"] = str(trainer.precision)
    params = {k: v if isinstance(v, (int, float, str, bool)) else str(v).lower() for k, v in params.items()}
    final = module.final_metrics
    metrics = {f"hp/{key.replace('/', '_')}": final[key] for key in METRICS if key in final}
    trainer.logger.log_hyperparams(params, metrics, step=trainer.global_step)
