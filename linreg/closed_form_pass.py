"""(temporary home of the ClosedForm callback; it moves into closed_form.py)"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor
from typing_extensions import override

from linreg.closed_form import NormalEquations


class ClosedForm(L.Callback):
    """The least-squares side of a fit: the exact optimum, measured before training and compared after.

    Before the first update, one pass over the training rows (as the file holds them, in float64)
    gives the least-squares solution and the curvature of the training loss. From them: the automatic
    step and momentum (``--model.lr auto``), the gap to the optimum after every epoch and the stopping
    rule (``--model.tol``), and, with ``--model.solver lstsq``, the model's weights themselves. After
    training, a second pass measures the trained model against the optimum.

    A callback rather than module code: the module holds the steps, the metrics and the optimizer;
    this is a measurement of the fit, like the figures.
    """

    @override
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        hp = pl_module.hparams
        eq = NormalEquations(hp.in_features, hp.out_features, device=pl_module.device)
        d = hp.in_features + int(hp.fit_intercept)
        gram = torch.zeros(d, d, dtype=torch.float64, device=pl_module.device)
        x_mean, x_scale = pl_module.x_mean.double(), pl_module.x_scale.double()
        rows = 0
        for view in _exact_views(trainer):
            x, y = view["x"].to(pl_module.device), view["y"].to(pl_module.device)
            eq.update(x, y)
            z = (x.double() - x_mean) / x_scale if hp.standardize else x.double()
            if hp.fit_intercept:
                z = torch.cat([z, torch.ones(len(z), 1, dtype=torch.float64, device=z.device)], dim=1)
            gram += z.T @ z
            rows += len(z)
        rows_t = torch.tensor(float(rows), dtype=torch.float64, device=pl_module.device)
        if trainer.world_size > 1:
            for t in [*eq.tensors(), gram, rows_t]:
                t.copy_(trainer.strategy.reduce(t, reduce_op="sum"))
        pl_module.optimum = optimum = eq.solve()
        if hp.solver == "lstsq":
            pl_module.set_coefficients(optimum.coef, optimum.intercept)
        _set_optimum_loss(pl_module, optimum)
        n = float(rows_t)
        if n == 0:
            return
        # The Hessian of nn.MSELoss (a mean over rows and targets) in the model's own coordinates.
        eig = torch.linalg.eigvalsh(gram * (2.0 / (n * hp.out_features)))
        big = float(eig[-1])
        small = float(eig[eig > big * 1e-12][0]) if big > 0 else 0.0  # exactly collinear directions don't count
        pl_module.curvature = (big, small)
        r2 = float(torch.diagonal(gram).sum()) * 2.0 / (n * hp.out_features)  # mean squared row norm of the Hessian
        batch = trainer.datamodule.hparams.get("batch_size") if trainer.datamodule is not None else None
        minibatch = batch is not None and batch < n
        optimizer = pl_module.optimizers()
        lr, momentum = auto_step(big, small, hp.lr, hp.momentum, batch if minibatch else None, r2)
        for group in optimizer.param_groups:
            group["lr"], group["momentum"] = lr, momentum
        average = hp.average if hp.average != "auto" else minibatch and hp.lr == "auto"
        if average and hp.solver == "sgd" and pl_module.averaged is not None:
            pl_module.average_from = (trainer.max_epochs or 0) // 2 if (trainer.max_epochs or -1) > 0 else 0

    @override
    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        averaged = pl_module.averaged
        if pl_module.average_from is not None and averaged is not None and int(averaged.n_averaged) > 0:
            with torch.no_grad():  # end with the average of the iterates, not the last one
                for mine, avg in zip(pl_module.model.parameters(), averaged.module.parameters()):
                    mine.copy_(avg)
        sse = torch.zeros(pl_module.hparams.out_features, dtype=torch.float64, device=pl_module.device)
        count = torch.zeros((), dtype=torch.float64, device=pl_module.device)
        dtype = pl_module.model.lin.weight.dtype
        with torch.no_grad():
            for view in _exact_views(trainer):
                x, y = view["x"].to(pl_module.device), view["y"].to(pl_module.device)
                sse += ((pl_module(x.to(dtype)).double() - y.double()) ** 2).sum(0)
                count += len(x)
        if trainer.world_size > 1:
            sse, count = (trainer.strategy.reduce(t, reduce_op="sum") for t in (sse, count))
        optimum = pl_module.optimum
        if optimum is None:
            return
        sgd_mse = float((sse / count.clamp_min(1)).mean())
        pl_module.optimum = optimum = dataclasses.replace(optimum, sgd_mse=sgd_mse)
        if trainer.logger is not None:
            trainer.logger.log_metrics(
                {"optimum/mse": optimum.mse, "optimum/excess_mse": optimum.excess}, step=trainer.global_step
            )
            _log_hparams_metric(trainer, pl_module)


def auto_step(
    big: float, small: float, lr: float | str, momentum: float | str, batch: int | None, r2: float
) -> tuple[float, float]:
    """The SGD step and momentum for a quadratic loss whose Hessian has eigenvalues in [small, big].

    Full batch, both ``auto``: the heavy-ball optimum (Polyak), step 4/(√L+√μ)² and momentum
    ((√κ−1)/(√κ+1))², whose error shrinks by about 1 − 2/√κ per epoch. A given momentum β gets the
    largest step of that optimal range that is safely stable, min((1−√β)²/μ, (1+β)/L). Mini-batches
    add noise: the effective step lr/(1−β) is also held below 1/L and batch/R² (R² the mean squared
    row norm of the Hessian), where constant-step SGD with averaging converges (Bach & Moulines 2013).
    A given lr always wins, with momentum 0 when that is ``auto``.
    """
    if lr != "auto":
        return float(lr), 0.0 if momentum == "auto" else float(momentum)
    if big <= 0:
        return 1.0, 0.0 if momentum == "auto" else float(momentum)
    small = small if small > 0 else big
    if momentum == "auto":
        root = math.sqrt(big / small)
        beta = ((root - 1) / (root + 1)) ** 2
        step = 4.0 / (math.sqrt(big) + math.sqrt(small)) ** 2
    else:
        beta = float(momentum)
        step = min((1 - math.sqrt(beta)) ** 2 / small, (1 + beta) / big)
    if batch is not None:
        step = min(step / (1 - beta), 1.0 / big, batch / r2) * (1 - beta)
    return step, beta


def _exact_views(trainer: L.Trainer) -> Any:
    """The training rows as the file holds them (float64 for text tables), this rank's share, in order."""
    data = trainer.datamodule
    if hasattr(data, "exact_batches"):
        batches = data.exact_batches()
        return batches.batches() if batches else []
    loader = trainer.train_dataloader
    return loader.batches() if loader is not None else []


def _set_optimum_loss(pl_module: L.LightningModule, optimum: Any) -> None:
    """The optimum's value of the training loss, in the loss's units (standardized targets or not)."""
    hp = pl_module.hparams
    k = hp.out_features
    factor: Tensor = torch.ones(k, dtype=torch.float64)
    if hp.standardize_target:
        factor = 1.0 / pl_module.y_scale.double().cpu() ** 2
    per_target = getattr(optimum, "mse_per_target", None)
    mse = per_target.double().cpu() if per_target is not None else torch.full((k,), optimum.mse, dtype=torch.float64)
    loss = float((factor * mse).mean())
    spread = float(factor.mean()) * max(optimum.target_var, 0.0)
    scale = loss if loss > 1e-9 * spread else (spread or float(factor.mean()) * optimum.target_ms or 1.0)
    pl_module.set_optimum_loss(loss, scale)


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
