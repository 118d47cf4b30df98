"""``ClosedForm``: the exact least-squares solution measured beside a fit (see ``linreg.lstsq``)."""

from __future__ import annotations

import dataclasses
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor
from typing_extensions import override

from linreg.lstsq import LeastSquares, Optimum, auto_step


class ClosedForm(L.Callback):
    """The least-squares side of a fit: the exact optimum, measured before training and compared after.

    Before the first update, one pass over the training rows (as the file holds them, in float64)
    gives the least-squares solution and the curvature of the training loss. From them: the automatic
    step and momentum (``--model.lr auto``), the gap to the optimum after every epoch and the stopping
    rule (``--model.tol``), and, with ``--model.solver lstsq``, the model's weights themselves. After
    training the same R factor measures the trained model against the optimum, with no second pass.

    A callback rather than module code: the module holds the steps, the metrics and the optimizer;
    this is a measurement of the fit, like the figures.
    """

    @override
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        hp = pl_module.hparams
        device = pl_module.device
        ls = LeastSquares(hp.in_features, hp.out_features, hp.fit_intercept, hp.l2, hp.l1, device=device)
        for view in _exact_views(trainer):
            ls.update(view["x"].to(device), view["y"].to(device))
        if trainer.world_size > 1:
            ls.all_gather(trainer.strategy.all_gather)
        self.least_squares = ls
        optimum = ls.solve(hp.feature_names, *self._scales(pl_module))
        pl_module.optimum = optimum
        if hp.solver == "lstsq":
            pl_module.set_coefficients(optimum.coef, optimum.intercept)
        n = optimum.n
        # The Hessian of nn.MSELoss (a mean over rows and targets) in the model's own coordinates.
        standardized = hp.standardize
        x_mean = pl_module.x_mean.double() if standardized else torch.zeros(hp.in_features, dtype=torch.float64)
        x_scale = pl_module.x_scale.double() if standardized else torch.ones(hp.in_features, dtype=torch.float64)
        gram = ls.gram(x_mean, x_scale)
        hessian = gram * (2.0 / (n * hp.out_features))
        hessian.diagonal()[: hp.in_features] += 2.0 * hp.l2  # the ridge penalty's curvature (not the intercept's)
        eig = torch.linalg.eigvalsh(hessian)
        big = float(eig[-1])
        small = float(eig[eig > big * 1e-12][0]) if big > 0 else 0.0  # exactly collinear directions don't count
        pl_module.curvature = (big, small)
        r2 = float(torch.diagonal(gram).sum()) * 2.0 / (n * hp.out_features)  # mean squared row norm of the Hessian
        batch = trainer.datamodule.hparams.get("batch_size") if trainer.datamodule is not None else None
        minibatch = batch is not None and batch < n
        lr, momentum = auto_step(big, small, hp.lr, hp.momentum, batch if minibatch else None, r2)
        for group in pl_module.optimizers().param_groups:
            group["lr"], group["momentum"] = lr, momentum
        bias = pl_module.model.lin.bias
        if hp.solver == "sgd" and hp.lr == "auto" and hp.standardize and bias is not None and not trainer.ckpt_path:
            # Standardized features are centred, so the optimal intercept is the target's mean (0 for a
            # standardized target): starting there skips part of the descent (Longley: 466 epochs to a
            # 1e-4 gap from the random start, 388 from here).
            with torch.no_grad():
                bias.copy_(torch.zeros_like(bias) if hp.standardize_target else pl_module.y_center.to(bias))
        average = hp.average if hp.average != "auto" else minibatch and hp.lr == "auto"
        if average and hp.solver == "sgd" and pl_module.averaged is not None:
            pl_module.average_from = (trainer.max_epochs or 0) // 2 if (trainer.max_epochs or -1) > 0 else 0
        saved, pl_module.resumed_averaging = pl_module.resumed_averaging, None
        if saved and hp.solver == "sgd":  # a resumed fit: averaging as it was, SGD from its last iterate
            pl_module.average_from = saved["from"]
            if saved["iterate"] is not None:
                pl_module.model.load_state_dict(saved["iterate"])

    @override
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """The gap to the optimum of the weights the fit would end with now, exactly (from the R factor,
        no pass over the rows), and the stopping rule: within ``--model.tol``, more epochs change nothing."""
        if pl_module.hparams.solver != "sgd" or pl_module.optimum is None:
            return
        excess = self._measure(pl_module, *pl_module.current_coefficients()).excess
        pl_module.publish({"optimum/excess": excess})
        if excess <= pl_module.tolerance and trainer.current_epoch + 1 >= (trainer.min_epochs or 0):
            trainer.should_stop = True

    def _measure(self, pl_module: L.LightningModule, coef: Tensor, intercept: Tensor | None) -> Optimum:
        """The optimum, with these coefficients' training MSE as the compared model's. With penalties,
        both ``mse`` fields hold the penalized objective instead (in the model's units): that is what
        the fit minimizes, and what its gap to the optimum means."""
        ls, optimum, hp = self.least_squares, pl_module.optimum, pl_module.hparams
        intercept = intercept if hp.fit_intercept else None
        if hp.l1 or hp.l2:
            sgd = ls.objective(coef, intercept, *self._scales(pl_module))
            return dataclasses.replace(optimum, mse=optimum.objective, sgd_mse=sgd)
        return dataclasses.replace(optimum, sgd_mse=ls.objective(coef, intercept))

    @staticmethod
    def _scales(pl_module: L.LightningModule) -> tuple[Tensor | None, Tensor | None]:
        """The model's coordinates, for the objective: standardized features and targets, or raw units."""
        hp = pl_module.hparams
        x_scale = pl_module.x_scale.double().cpu() if hp.standardize else None
        y_scale = pl_module.y_scale.double().cpu() if hp.standardize_target else None
        return x_scale, y_scale

    @override
    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """End with the averaged iterate if averaging, then measure the model against the optimum.

        The R factor of the start's pass gives any coefficients' training MSE exactly (‖R·v‖²/n), so
        this needs no second pass over the rows."""
        pl_module.end_with_average()
        if getattr(self, "least_squares", None) is None or pl_module.optimum is None:
            return
        pl_module.optimum = optimum = self._measure(pl_module, *pl_module.coefficients())
        if trainer.logger is not None:
            trainer.logger.log_metrics(
                {"optimum/mse": optimum.mse, "optimum/excess_mse": optimum.excess}, step=trainer.global_step
            )
            _log_hparams_metric(trainer, pl_module)



def _exact_views(trainer: L.Trainer) -> Any:
    """The training rows as the file holds them (float64 for text tables), this rank's share, in order."""
    data = trainer.datamodule
    if hasattr(data, "exact_batches"):
        batches = data.exact_batches()
        return batches.batches() if batches else []
    loader = trainer.train_dataloader
    return loader.batches() if loader is not None else []


def _log_hparams_metric(trainer: L.Trainer, pl_module: L.LightningModule) -> None:
    """Give TensorBoard's hparams view the real result: val MSE, or train MSE without validation data."""
    metrics = pl_module.latest
    name = "val/mse" if "val/mse" in metrics else "train/mse"
    if name not in metrics or not isinstance(trainer.logger, TensorBoardLogger):  # others take no metrics
        return
    datamodule = trainer.datamodule
    params: dict[str, Any] = {**(datamodule.hparams if datamodule is not None else {}), **pl_module.hparams}
    params = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in params.items()}
    metric = {f"hp/{name.split('/')[0]}_mse": float(metrics[name])}
    trainer.logger.log_hyperparams(params, metric, step=trainer.global_step)
