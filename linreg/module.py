"""The LightningModule: the tutorial's stage 4 (custom module, MSE, SGD) with the loop handed to Lightning."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor
from torchmetrics import Metric, MetricCollection
from torchmetrics.regression import MeanAbsoluteError, MeanSquaredError, R2Score

from linreg.closed_form import NormalEquations, Optimum
from linreg.errors import LinregError
from linreg.model import LinearRegression


def _metrics(out_features: int) -> MetricCollection:
    """MSE, RMSE, MAE, R² averaged over targets, plus one of each per target when there are several."""
    metrics: dict[str, Metric] = {
        "mse": MeanSquaredError(),
        "rmse": MeanSquaredError(squared=False),
        "mae": MeanAbsoluteError(),
        "r2": R2Score(multioutput="uniform_average"),
    }
    if out_features > 1:
        metrics |= {
            "per_target_mse": MeanSquaredError(num_outputs=out_features),
            "per_target_rmse": MeanSquaredError(squared=False, num_outputs=out_features),
            "per_target_mae": MeanAbsoluteError(num_outputs=out_features),
            "per_target_r2": R2Score(multioutput="raw_values"),
        }
    return MetricCollection(metrics)


class LinRegModule(L.LightningModule):
    """Linear regression trained by SGD on the MSE, with what a checkpoint needs to stand alone.

    All arguments are plain values saved by ``save_hyperparameters``, so ``load_from_checkpoint(path)``
    alone rebuilds the module, feature names and standardization included. The standardization
    statistics are buffers: they travel in the state dict and are applied inside ``forward``, so a
    restored model takes raw features and returns predictions in the target's own units.

    Args:
        in_features: number of features (the CLI fills it in from the data).
        out_features: number of targets (the CLI fills it in from the data).
        lr: SGD learning rate.
        momentum: SGD momentum.
        weight_decay: SGD weight decay (L2 penalty on w and b, as torch.optim.SGD applies it).
        feature_names: feature column names, in model input order (from the data).
        target_names: target column names, in model output order (from the data).
        standardize: features are standardized with training statistics (from the data).
        standardize_target: targets too (from the data).
        log_step_loss: also log the loss at every step (off by default: one point per epoch is cheap).
    """

    def __init__(
        self,
        in_features: int = 1,
        out_features: int = 1,
        lr: float = 0.01,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        feature_names: list[str] | None = None,
        target_names: list[str] | None = None,
        standardize: bool = False,
        standardize_target: bool = False,
        log_step_loss: bool = False,
    ) -> None:
        super().__init__()
        if lr <= 0:
            raise LinregError(f"--model.lr must be positive, got {lr}")
        self.save_hyperparameters()
        self.automatic_optimization = False  # several updates per Lightning step: see training_step
        self.model = LinearRegression(in_features, out_features)
        self.register_buffer("x_mean", torch.zeros(in_features))
        self.register_buffer("x_scale", torch.ones(in_features))
        self.register_buffer("y_mean", torch.zeros(out_features))
        self.register_buffer("y_scale", torch.ones(out_features))
        metrics = _metrics(out_features)
        self.train_metrics = metrics.clone(prefix="train/")
        self.val_metrics = metrics.clone(prefix="val/")
        self.test_metrics = metrics.clone(prefix="test/")
        self.optimum: Optimum | None = None
        self.latest: dict[str, float] = {}  # the last value of every epoch metric, for the fit summary
        # Per stage: Σ (row-mean loss) in float64 on the device, and rows; validation runs inside the
        # training epoch, so the two must not share one accumulator.
        self._loss_acc: dict[str, tuple[Tensor | float, int]] = {}
        self._epoch_in_progress: dict[str, Any] | None = None  # from a checkpoint saved mid-epoch

    # -- the model ---------------------------------------------------------------------------------

    def _scaled(self, x: Tensor) -> Tensor:
        """The linear layer's output, in standardized target units when targets are standardized."""
        if self.hparams.standardize:
            x = (x - self.x_mean) / self.x_scale
        return self.model(x)

    def _unscale(self, z: Tensor) -> Tensor:
        return z * self.y_scale + self.y_mean if self.hparams.standardize_target else z

    def forward(self, x: Tensor) -> Tensor:
        """Raw features in, predictions in the target's units out."""
        return self._unscale(self._scaled(x))

    def set_scaling(self, x_mean: Tensor, x_scale: Tensor, y_mean: Tensor, y_scale: Tensor) -> None:
        for name, value in zip(("x_mean", "x_scale", "y_mean", "y_scale"), (x_mean, x_scale, y_mean, y_scale)):
            getattr(self, name).copy_(value)

    @torch.no_grad()
    def coefficients(self) -> tuple[Tensor, Tensor]:
        """Weights (k × d) and intercepts (k) in original units, undoing the standardization."""
        w = self.model.lin.weight.double().cpu()
        b = self.model.lin.bias.double().cpu()
        if self.hparams.standardize:
            xs, xm = self.x_scale.double().cpu(), self.x_mean.double().cpu()
            w = w / xs
            b = b - w @ xm
        if self.hparams.standardize_target:
            ys, ym = self.y_scale.double().cpu(), self.y_mean.double().cpu()
            w, b = w * ys[:, None], b * ys + ym
        return w, b

    # -- training ----------------------------------------------------------------------------------

    def setup(self, stage: str) -> None:
        scaling = getattr(self.trainer.datamodule, "scaling", None) if self._trainer is not None else None
        if stage == "fit" and self.hparams.standardize and scaling is not None:
            self.set_scaling(*scaling)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        hp = self.hparams
        return torch.optim.SGD(self.parameters(), lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay)

    def _loss(self, batch: dict[str, Any], stage: str) -> tuple[Tensor, Tensor]:
        """The batch's share of the global-batch mean loss, and the predictions in original units.

        One process: exactly ``nn.MSELoss()`` on the batch, as in the tutorial. Under DDP each rank
        holds a slice of the global batch; its summed loss scaled by world_size / (rows · targets)
        makes DDP's gradient average equal the gradient of the global-batch mean.
        """
        x, y = batch["x"], batch["y"]
        z = self._scaled(x)
        target = (y - self.y_mean) / self.y_scale if self.hparams.standardize_target else y
        world = self.trainer.world_size if self._trainer is not None else 1
        if world == 1:
            loss = F.mse_loss(z, target)
            row_sum = loss.detach().double() * x.shape[0]
        else:
            sse = F.mse_loss(z, target, reduction="sum")
            loss = sse * (world / (batch["n"] * z.shape[1]))
            row_sum = sse.detach().double() / z.shape[1]
        total, rows = self._loss_acc.get(stage, (0.0, 0))
        self._loss_acc[stage] = (total + row_sum, rows + x.shape[0])
        return loss, self._unscale(z.detach())

    def _log_epoch_loss(self, stage: str) -> None:
        """Log the epoch's row-weighted mean loss: one point per epoch, reduced over ranks."""
        total, rows = self._loss_acc.pop(stage, (0.0, 0))
        total = torch.as_tensor(total, dtype=torch.float64, device=self.device)
        count = torch.tensor(float(rows), dtype=torch.float64, device=self.device)
        if self.trainer.world_size > 1:
            total = self.trainer.strategy.reduce(total, reduce_op="sum")
            count = self.trainer.strategy.reduce(count, reduce_op="sum")
        if count > 0:
            self._publish({f"{stage}/loss": (total / count).float()})

    def training_step(self, batch: list[dict[str, Any]], batch_idx: int) -> None:
        """One SGD update per batch of the group, in the tutorial's order: forward, loss, backward, step.

        Manual optimization lets one Lightning step run several updates (see ``Batches``); torch's
        SGD does each update exactly as Lightning's automatic loop would.
        """
        optimizer = self.optimizers()
        preds, targets = [], []
        for view in batch:
            loss, pred = self._loss(view, "train")
            if not torch.isfinite(loss):
                raise LinregError(
                    f"training diverged: the loss became {loss.item()} at epoch {self.current_epoch}, step "
                    f"{self.global_step}; no checkpoint was written. Try --data.standardize true or a lower "
                    f"--model.lr (now {self.hparams.lr})"
                )
            self.manual_backward(loss)
            optimizer.step()
            optimizer.zero_grad()
            preds.append(pred)
            targets.append(view["y"])
        # One metric update per group: the same rows and predictions, a fraction of the calls.
        self.train_metrics.update(torch.cat(preds), torch.cat(targets))
        if self.hparams.log_step_loss and self.logger is not None:
            self.logger.log_metrics({"train/loss_step": float(loss)}, step=self.global_step)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """A fit stopped mid-epoch keeps that epoch's running loss and metrics, so the epoch logs the
        values of an uninterrupted run. One process only: under DDP each rank holds its own share,
        and the resumed epoch's train values cover the rows trained after the resume."""
        if "train" in self._loss_acc and self.trainer.world_size == 1:
            total, rows = self._loss_acc["train"]
            checkpoint["linreg_epoch_in_progress"] = {
                "epoch": self.current_epoch,
                "loss": (float(total), rows),
                "metrics": {
                    name: {k: v.detach().cpu().clone() for k, v in metric.metric_state.items()}
                    for name, metric in self.train_metrics.items(keep_base=True, copy_state=False)
                },
            }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._epoch_in_progress = checkpoint.get("linreg_epoch_in_progress")

    def on_train_start(self) -> None:
        saved, self._epoch_in_progress = self._epoch_in_progress, None
        if saved is None or saved["epoch"] != self.current_epoch:
            return
        total, rows = saved["loss"]
        self._loss_acc["train"] = (torch.tensor(total, dtype=torch.float64, device=self.device), rows)
        for name, metric in self.train_metrics.items(keep_base=True, copy_state=False):
            for key, value in saved["metrics"][name].items():
                setattr(metric, key, value.to(self.device))
            metric._update_count = 1  # it has seen rows: compute() may run without a warning

    def on_train_epoch_end(self) -> None:
        self._log_epoch_loss("train")
        self._log_metrics(self.train_metrics)
        w, b = self.coefficients()
        coefs = {"w": w[0, 0], "b": b[0]} if w.shape == (1, 1) else {"coef_norm": w.norm()}
        lr = self.optimizers().param_groups[0]["lr"]
        self._publish(coefs | {"lr-SGD": lr}, also_log={"epoch": self.current_epoch})

    def _publish(self, values: dict[str, Tensor | float], also_log: dict[str, float] | None = None) -> None:
        """Record epoch values in ``latest`` and write them to the logger in one call, at the step
        that counts SGD updates (``global_step``).

        Lightning's own logging (``self.log``, ``LearningRateMonitor``) would put them at its step
        count, which counts groups of updates (see ``Batches``), and it costs about 0.8 ms a key.
        So every value goes to the logger directly, and only those a callback may monitor (the train
        loss and the validation values, e.g. for ``EarlyStopping``) also go through ``self.log``,
        with ``logger=False``.
        """
        direct: dict[str, float] = dict(also_log or {})
        for key, value in values.items():
            self.latest[key] = direct[key] = float(value)
            if key == "train/loss" or key.startswith("val/"):
                self.log(key, torch.as_tensor(value, dtype=torch.float32), on_epoch=True, logger=False)
        if self.logger is not None and not self.trainer.sanity_checking:
            self.logger.log_metrics(direct, step=self.global_step)

    def _log_metrics(self, collection: MetricCollection) -> None:
        """Log each metric once per epoch; R² needs two rows, so a one-row split skips it."""
        values: dict[str, Tensor] = {}
        names = self.hparams.target_names or [f"y{i}" for i in range(self.hparams.out_features)]
        for name, metric in collection.items():
            if isinstance(metric, R2Score) and int(metric.total) < 2:
                continue
            value = metric.compute()
            if name.split("/")[-1].startswith("per_target_"):
                stage, metric_name = name.split("/")[0], name.split("/")[-1].removeprefix("per_target_")
                values |= {f"{stage}/{metric_name}/{t}": v for t, v in zip(names, value)}
            else:
                values[name] = value
        collection.reset()
        self._publish(values)

    # -- the closed form, once per fit --------------------------------------------------------------

    def on_train_end(self) -> None:
        """One pass over the training rows: the normal equations and the SGD model's error, all-reduced."""
        hp = self.hparams
        eq = NormalEquations(hp.in_features, hp.out_features, device=self.device)
        loader = self.trainer.train_dataloader
        with torch.no_grad():
            for view in loader.batches() if loader is not None else []:
                x, y = view["x"].to(self.device), view["y"].to(self.device)
                eq.update(x, y, self(x))
        if self.trainer.world_size > 1:
            for t in eq.tensors():
                t.copy_(self.trainer.strategy.reduce(t, reduce_op="sum"))
        self.optimum = eq.solve()
        if self.logger is not None:
            self.logger.log_metrics(
                {"optimum/mse": self.optimum.mse, "optimum/excess_mse": self.optimum.excess},
                step=self.global_step,
            )
            self._log_hparams_metric()

    def _log_hparams_metric(self) -> None:
        """Give TensorBoard's hparams view the real result: val MSE, or train MSE without validation data."""
        metrics = self.latest
        name = "val/mse" if "val/mse" in metrics else "train/mse"
        if name not in metrics:
            return
        datamodule = self.trainer.datamodule
        params = {**(datamodule.hparams if datamodule is not None else {}), **self.hparams}
        params = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in params.items()}
        if isinstance(self.logger, TensorBoardLogger):  # other loggers take no metrics with hparams
            metric = {f"hp/{name.split('/')[0]}_mse": float(metrics[name])}
            self.logger.log_hyperparams(params, metric, step=self.global_step)

    # -- evaluation and prediction ------------------------------------------------------------------

    def _evaluate(self, batch: list[dict[str, Any]], stage: str, metrics: MetricCollection) -> None:
        for view in batch:
            _, pred = self._loss(view, stage)
            metrics.update(pred, view["y"])

    def validation_step(self, batch: list[dict[str, Any]], batch_idx: int) -> None:
        self._evaluate(batch, "val", self.val_metrics)

    def on_validation_epoch_end(self) -> None:
        self._log_epoch_loss("val")
        self._log_metrics(self.val_metrics)

    def test_step(self, batch: list[dict[str, Any]], batch_idx: int) -> None:
        self._evaluate(batch, "test", self.test_metrics)

    def on_test_epoch_end(self) -> None:
        self._log_epoch_loss("test")
        self._log_metrics(self.test_metrics)

    def predict_step(self, batch: list[dict[str, Any]], batch_idx: int) -> dict[str, Tensor]:
        x = torch.cat([view["x"] for view in batch])
        if x.shape[1] != self.hparams.in_features:
            raise LinregError(
                f"predict data has {x.shape[1]} feature column(s); the model expects {self.hparams.in_features}"
            )
        return {"index": torch.cat([view["index"] for view in batch]), "pred": self(x)}
