"""The LightningModule: the tutorial's stage 4 (custom module, MSE, SGD) with the loop handed to Lightning.

It holds the steps, the metrics and the optimizer. The closed-form pass (``closed_form.ClosedForm``)
and the fit figures (``figures.FitFigures``) are callbacks beside it.
"""

from __future__ import annotations

from typing import Any, Literal

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.optim.swa_utils import AveragedModel
from torchmetrics import MeanMetric, Metric, MetricCollection
from torchmetrics.regression import MeanAbsoluteError, MeanSquaredError, R2Score
from typing_extensions import override

from linreg.data.tables import default_names
from linreg.errors import LinRegError
from linreg.model import LinearRegression

Solver = Literal["sgd", "lstsq"]
Auto = Literal["auto"]


def _metrics(out_features: int) -> MetricCollection:
    """MSE, RMSE, MAE, R² averaged over targets, plus one of each per target when there are several.

    In float64, fed with values shifted by the training target's mean (see ``_update_metrics``):
    torchmetrics sums squares, and in float32 a target with mean 1e6 and spread 10 gives R² > 1.
    """
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
    collection = MetricCollection(metrics).set_dtype(torch.float64)
    collection.persistent(True)  # a checkpoint saved mid-epoch keeps the epoch's running values
    return collection


def _epoch_loss() -> MeanMetric:
    """The epoch's loss: the row-weighted mean of the batch losses, summed in float64, reduced over ranks."""
    # nan_strategy "ignore", not "disable": in torchmetrics 1.9 "disable" also drops the weights. A NaN
    # loss never counts anyway: training_step stops the fit at the first one.
    loss = MeanMetric(nan_strategy="ignore").set_dtype(torch.float64)
    loss.persistent(True)
    return loss


class LinRegModule(L.LightningModule):
    """Linear regression trained by SGD on the MSE, with what a checkpoint needs to stand alone.

    All arguments are plain values saved by ``save_hyperparameters``, so ``load_from_checkpoint(path)``
    alone rebuilds the module, feature names and standardization included. The standardization
    statistics are buffers: they travel in the state dict and are applied inside ``forward``, so a
    restored model takes raw features and returns predictions in the target's own units.

    Args:
        in_features: number of features (the CLI fills it in from the data).
        out_features: number of targets (the CLI fills it in from the data).
        lr: SGD learning rate, or ``auto``: the step from the curvature of the training loss (its
            Hessian's extreme eigenvalues, from one pass over the training rows before training).
        momentum: SGD momentum, or ``auto``: with ``lr auto``, the heavy-ball momentum that goes with
            the step (optimal for the loss's condition number); with a given lr, 0 (plain SGD).
        weight_decay: torch's SGD weight decay: it shrinks the intercept too, and the exact solution
            knows nothing of it; ``l2`` is the regression penalty.
        l2: ridge penalty: the loss is the MSE + l2·‖W‖² (W the coefficients in the model's
            coordinates: standardized features when standardizing; never the intercept).
        l1: lasso penalty: + l1·‖W‖₁, by a proximal (soft-threshold) step after each SGD update.
        average: average the iterates over the second half of the epochs (Polyak-Ruppert tail
            averaging) and end with the average: what takes mini-batch SGD past its noise floor.
            ``auto``: on with mini-batches and ``lr auto``; off with full batches (which have no noise
            to average) and with a hand-set step (plain SGD, as the tutorial's loop).
        tol: stop when the epoch's training loss is within this relative distance of the least-squares
            optimum's (known before training starts); 0 never stops early. ``auto``: 1e-3 with
            ``lr auto``, 0 with a hand-set step (which then runs its epochs, as the tutorial's loop).
        fit_intercept: fit y = Xw + b (true) or y = Xw (false: no bias parameter at all).
        solver: ``sgd`` (the tutorial's gradient descent) or ``lstsq`` (the exact least-squares
            solution in float64, in one pass over the training rows; the optimizer flags are unused).
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
        lr: float | Auto = "auto",
        momentum: float | Auto = "auto",
        weight_decay: float = 0.0,
        l2: float = 0.0,
        l1: float = 0.0,
        average: bool | Auto = "auto",
        tol: float | Auto = "auto",
        fit_intercept: bool = True,
        solver: Solver = "sgd",
        feature_names: list[str] | None = None,
        target_names: list[str] | None = None,
        standardize: bool = False,
        standardize_target: bool = False,
        log_step_loss: bool = False,
    ) -> None:
        super().__init__()
        if lr != "auto" and lr <= 0:
            raise LinRegError(f"--model.lr must be positive or auto, got {lr}")
        if momentum != "auto" and not 0 <= momentum < 1:
            raise LinRegError(f"--model.momentum must be in [0, 1) or auto, got {momentum}")
        for name, value in (("l2", l2), ("l1", l1), ("weight_decay", weight_decay)):
            if value < 0:
                raise LinRegError(f"--model.{name} must be at least 0, got {value}")
        if tol != "auto" and tol < 0:
            raise LinRegError(f"--model.tol must be at least 0 or auto, got {tol}")
        self.save_hyperparameters()
        self.automatic_optimization = False  # several updates per Lightning step: see training_step
        self.model = LinearRegression(in_features, out_features, bias=fit_intercept)
        self.register_buffer("x_mean", torch.zeros(in_features))
        self.register_buffer("x_scale", torch.ones(in_features))
        self.register_buffer("y_mean", torch.zeros(out_features))
        self.register_buffer("y_scale", torch.ones(out_features))
        # The training target's mean, subtracted from predictions and targets before the metrics.
        self.register_buffer("y_center", torch.zeros(out_features, dtype=torch.float64))
        metrics = _metrics(out_features)
        self.train_metrics = metrics.clone(prefix="train/")
        self.val_metrics = metrics.clone(prefix="val/")
        self.test_metrics = metrics.clone(prefix="test/")
        self.train_loss, self.val_loss, self.test_loss = _epoch_loss(), _epoch_loss(), _epoch_loss()
        # Polyak-Ruppert averaging of the iterates; its copy of the weights is not trained (no grad).
        self.averaged = AveragedModel(self.model).requires_grad_(False) if average is not False else None
        self.average_from: int | None = None  # the first epoch averaged; None: not averaging (see ClosedForm)
        self.iterate: dict[str, Tensor] | None = None  # the last SGD iterate, once the model holds the average
        self.resumed_averaging: dict[str, Any] | None = None
        self.optimum: Any = None  # set by the ClosedForm callback
        self.curvature: tuple[float, float] | None = None  # the loss Hessian's largest, smallest eigenvalue
        self.loss_history: list[float] = []  # each epoch's training loss, for the advice in the summary
        self.latest: dict[str, float] = {}  # the last value of every epoch metric, for the fit summary
        self.trained = False  # whether this run took a training step (a failed fit's logs are kept only then)

    # -- the model ---------------------------------------------------------------------------------

    @override
    def forward(self, x: Tensor) -> Tensor:
        """Raw features in, predictions in the target's units out."""
        return self._unscale(self._scaled(x))

    def _scaled(self, x: Tensor) -> Tensor:
        """The linear layer's output, in standardized target units when targets are standardized."""
        if self.hparams.standardize:
            x = (x - self.x_mean) / self.x_scale
        return self.model(x)

    def _unscale(self, z: Tensor) -> Tensor:
        return z * self.y_scale + self.y_mean if self.hparams.standardize_target else z

    def set_scaling(self, x_mean: Tensor, x_scale: Tensor, y_mean: Tensor, y_scale: Tensor) -> None:
        for name, value in zip(("x_mean", "x_scale", "y_mean", "y_scale"), (x_mean, x_scale, y_mean, y_scale)):
            getattr(self, name).copy_(value)

    @torch.no_grad()
    def coefficients(self, lin: torch.nn.Linear | None = None) -> tuple[Tensor, Tensor | None]:
        """Weights (k × d) and intercepts (k; None without an intercept) in original units, in float64,
        of the model's linear layer (or of ``lin``, e.g. the averaged copy's)."""
        lin = lin if lin is not None else self.model.lin
        w = lin.weight.detach().double().cpu()
        bias = lin.bias
        b = bias.detach().double().cpu() if bias is not None else torch.zeros(w.shape[0], dtype=torch.float64)
        if self.hparams.standardize:
            xs, xm = self.x_scale.double().cpu(), self.x_mean.double().cpu()
            w = w / xs
            b = b - w @ xm
        if self.hparams.standardize_target:
            ys, ym = self.y_scale.double().cpu(), self.y_mean.double().cpu()
            w, b = w * ys[:, None], b * ys + ym
        return w, (b if self.hparams.fit_intercept else None)

    @torch.no_grad()
    def set_coefficients(self, coef: Tensor, intercept: Tensor | None) -> None:
        """Put a solution given in original units (k × d, k) into the model, through its standardization."""
        w = coef.double().to(self.device)
        b = intercept.double().to(self.device) if intercept is not None else torch.zeros(w.shape[0], device=self.device)
        if self.hparams.standardize_target:
            ys, ym = self.y_scale.double(), self.y_mean.double()
            w, b = w / ys[:, None], (b - ym) / ys
        if self.hparams.standardize:
            b = b + w @ self.x_mean.double()
            w = w * self.x_scale.double()
        lin = self.model.lin
        lin.weight.copy_(w.to(lin.weight.dtype))
        if lin.bias is not None:
            lin.bias.copy_(b.to(lin.bias.dtype))

    # -- Lightning hooks: set-up -------------------------------------------------------------------

    @override
    def setup(self, stage: str) -> None:
        data = self.trainer.datamodule if self._trainer is not None else None
        if stage == "fit" and data is not None:
            if self.hparams.standardize and getattr(data, "scaling", None) is not None:
                x_mean, x_scale, y_mean, y_scale = data.scaling
                if not self.hparams.fit_intercept:  # centring is an intercept in disguise: scale only
                    x_mean, y_mean = torch.zeros_like(x_mean), torch.zeros_like(y_mean)
                self.set_scaling(x_mean, x_scale, y_mean, y_scale)
            if getattr(data, "target_mean", None) is not None:
                self.y_center.copy_(data.target_mean)

    @override
    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        """Batches are lists of dicts of CPU tensors (see ``Batches``): on the CPU there is nothing to move,
        and Lightning's generic walk over the collection cost 0.6 ms a step on small tables (measured)."""
        if device.type == "cpu":
            return batch
        return [
            {k: v.to(device, non_blocking=True) if isinstance(v, Tensor) else v for k, v in b.items()} for b in batch
        ]

    @override
    def configure_optimizers(self) -> torch.optim.Optimizer:
        """torch's SGD on the linear layer. ``auto`` values start at 0 and are set by ``ClosedForm`` once
        the training rows have been measured, before the first update."""
        hp = self.hparams
        lr = 0.0 if hp.lr == "auto" else hp.lr
        momentum = 0.0 if hp.momentum == "auto" else hp.momentum
        return torch.optim.SGD(self.model.parameters(), lr=lr, momentum=momentum, weight_decay=hp.weight_decay)

    @override
    def configure_callbacks(self) -> list[L.Callback]:
        from linreg.training.closed_form import ClosedForm

        return [ClosedForm()]

    @override
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """A float64 checkpoint under a 64-bit precision: become float64 before the weights are copied in.
        Lightning loads the state dict before its precision plugin converts the module, so a float32
        module would round the weights on the way."""
        weight = checkpoint.get("state_dict", {}).get("model.lin.weight")
        precision = str(self.trainer.precision) if self._trainer is not None else ""
        if weight is not None and weight.dtype == torch.float64 and precision.startswith("64"):
            self.double()
        self.resumed_averaging = checkpoint.get("linreg_averaging")  # for ClosedForm, if this is a resumed fit

    @override
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Averaging's state beyond the averaged weights: where it started, and, once the fit has ended
        with the average, the last iterate, which a continued fit carries on from."""
        checkpoint["linreg_averaging"] = {"from": self.average_from, "iterate": self.iterate}

    @override
    def on_train_start(self) -> None:
        """Under DDP a mid-epoch checkpoint holds rank 0's running sums only: start the epoch's afresh."""
        if self.trainer.world_size > 1:
            self.train_loss.reset()
            self.train_metrics.reset()

    # -- Lightning hooks: steps --------------------------------------------------------------------

    @override
    def training_step(self, batch: list[dict[str, Any]], batch_idx: int) -> None:
        """One SGD update per batch of the group, in the tutorial's order: forward, loss, backward, step.

        Manual optimization lets one Lightning step run several updates (see ``Batches``); torch's
        SGD does each update exactly as Lightning's automatic loop would. With ``solver=lstsq`` the
        weights are already the solution (``ClosedForm``): the epoch only measures them.
        """
        self.trained = True
        optimizer = self.optimizers()
        sgd = self.hparams.solver == "sgd"
        preds, targets, means = [], [], []
        for view in batch:
            loss, pred, mean = self._loss(view, "train")
            if not torch.isfinite(loss):
                raise LinRegError(
                    f"training diverged: the loss became {loss.item()} at epoch {self.current_epoch}, step "
                    f"{self.global_step}; no checkpoint was written. Try "
                    + ("" if self.hparams.standardize else "--data.standardize true, ")
                    + f"a lower --model.lr (now {optimizer.param_groups[0]['lr']:.4g}) or --model.lr auto"
                )
            if sgd:
                self.manual_backward(loss)
                optimizer.step()
                optimizer.zero_grad()
                if self.hparams.l1:  # proximal step: soft-thresholding reaches exact zeros, a gradient never does
                    with torch.no_grad():
                        w = self.model.lin.weight
                        w.copy_(F.softshrink(w, optimizer.param_groups[0]["lr"] * self.hparams.l1))
                if self.average_from is not None and self.current_epoch >= self.average_from:
                    self.averaged.update_parameters(self.model)
            preds.append(pred)
            targets.append(view["y"])
            means.append(mean)
        # One metric update per group: the same rows and predictions, a fraction of the calls.
        rows = torch.tensor([len(view["x"]) for view in batch], dtype=torch.float64, device=means[0].device)
        self.train_loss.update(torch.stack(means), rows)
        self._update_metrics("train", torch.cat(preds), torch.cat(targets))
        if self.hparams.log_step_loss and self.logger is not None:
            self.logger.log_metrics({"train/loss_step": float(loss)}, step=self.global_step)

    @override
    def validation_step(self, batch: list[dict[str, Any]], batch_idx: int) -> None:
        self._evaluate(batch, "val")

    @override
    def test_step(self, batch: list[dict[str, Any]], batch_idx: int) -> None:
        self._evaluate(batch, "test")

    @override
    def predict_step(self, batch: list[dict[str, Any]], batch_idx: int) -> dict[str, Tensor]:
        x = torch.cat([view["x"] for view in batch])
        if x.shape[1] != self.hparams.in_features:
            raise LinRegError(
                f"predict data has {x.shape[1]} feature column(s); the model expects {self.hparams.in_features}"
            )
        return {"index": torch.cat([view["index"] for view in batch]), "pred": self(x)}

    # -- Lightning hooks: epoch ends ---------------------------------------------------------------

    @override
    def on_train_epoch_end(self) -> None:
        self._log_epoch("train")
        if "train/loss" in self.latest:
            self.loss_history.append(self.latest["train/loss"])
        w, b = self.coefficients()
        coefs = {"w": w[0, 0]} if w.shape == (1, 1) else {"coef_norm": w.norm()}
        if w.shape == (1, 1) and b is not None:
            coefs["b"] = b[0]
        lr = self.optimizers().param_groups[0]["lr"]
        self.publish(coefs | {"lr-SGD": lr}, also_log={"epoch": self.current_epoch})
        if self.hparams.solver == "lstsq":
            self.trainer.should_stop = True  # one epoch measures the solution; more would repeat it

    @override
    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val")

    @override
    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")

    # -- helpers -------------------------------------------------------------------------------------

    @property
    def tolerance(self) -> float:
        """``--model.tol`` as a number (``auto``: 1e-3 with ``lr auto``, else 0)."""
        tol = self.hparams.tol
        return (1e-3 if self.hparams.lr == "auto" else 0.0) if tol == "auto" else tol

    def current_coefficients(self) -> tuple[Tensor, Tensor | None]:
        """The coefficients the fit would end with now: the running average when averaging, else the iterate."""
        if self.average_from is not None and self.averaged is not None and int(self.averaged.n_averaged) > 0:
            return self.coefficients(self.averaged.module.lin)
        return self.coefficients()

    @torch.no_grad()
    def end_with_average(self) -> None:
        """Polyak-Ruppert: the model becomes the average of its iterates (kept running in ``averaged``)."""
        if self.average_from is None or self.averaged is None or int(self.averaged.n_averaged) == 0:
            return
        self.iterate = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        for mine, avg in zip(self.model.parameters(), self.averaged.module.parameters()):
            mine.copy_(avg)

    def _loss(self, batch: dict[str, Any], stage: str) -> tuple[Tensor, Tensor, Tensor]:
        """The batch's share of the global-batch mean loss, and the predictions in original units.

        One process: exactly ``nn.MSELoss()`` on the batch, as in the tutorial. Under DDP each rank
        holds a slice of the global batch; its summed loss scaled by world_size / (rows · targets)
        makes DDP's gradient average equal the gradient of the global-batch mean. In training, the
        penalties join it: ``l2·‖W‖²`` through the gradient (every rank adds it whole, and DDP averages),
        ``l1·‖W‖₁`` only in the logged value (its step is the proximal one, see ``training_step``).
        """
        x, y = batch["x"], batch["y"].to(batch["x"].dtype)
        z = self._scaled(x)
        target = (y - self.y_mean) / self.y_scale if self.hparams.standardize_target else y
        world = self.trainer.world_size if self._trainer is not None else 1
        rows = x.shape[0]
        if world == 1:
            loss = F.mse_loss(z, target)
            row_mean = loss.detach()
        else:
            sse = F.mse_loss(z, target, reduction="sum")
            loss = sse * (world / (batch["n"] * z.shape[1]))
            row_mean = sse.detach() / max(rows * z.shape[1], 1)
        hp = self.hparams
        if stage == "train" and (hp.l2 or hp.l1):
            w = self.model.lin.weight
            if hp.l2:
                penalty = hp.l2 * w.pow(2).sum()
                loss, row_mean = loss + penalty, row_mean + penalty.detach()
            if hp.l1:
                row_mean = row_mean + hp.l1 * w.detach().abs().sum()
        return loss, self._unscale(z.detach()), row_mean.double()

    def _update_metrics(self, stage: str, pred: Tensor, y: Tensor) -> None:
        center = self.y_center.to(pred.device)
        # contiguous: streamed rows come column-major, and torchmetrics reshapes with view()
        getattr(self, f"{stage}_metrics").update(
            (pred.double() - center).contiguous(), (y.double() - center).contiguous()
        )

    def _evaluate(self, batch: list[dict[str, Any]], stage: str) -> None:
        alone = self._trainer is not None and self.trainer.state.fn in ("validate", "test")
        for view in batch:
            _, pred, mean = self._loss(view, stage)
            if alone and not bool(torch.isfinite(pred).all()):
                # As predict refuses them; during fit, divergence is training_step's own check.
                raise LinRegError(
                    f"the model's predictions on the {stage} rows are not finite (inf or NaN): a feature value "
                    f"far beyond the training data's overflows; no {stage} metrics reported"
                )
            getattr(self, f"{stage}_loss").update(mean, len(view["x"]))
            self._update_metrics(stage, pred, view["y"])

    def _log_epoch(self, stage: str) -> None:
        """The epoch's loss and metrics, one point each; R² needs two rows, so a one-row split skips it."""
        values: dict[str, Tensor | float] = {}
        loss = getattr(self, f"{stage}_loss")
        if loss.update_called:
            mean = loss.compute()  # 0/0 when no rank had rows
            if torch.isfinite(mean):
                values[f"{stage}/loss"] = mean.float()
        loss.reset()
        collection = getattr(self, f"{stage}_metrics")
        for name, metric in collection.items():
            if isinstance(metric, R2Score) and int(metric.total) < 2:
                continue
            value = metric.compute()
            keys = self._keys(name)
            values |= dict(zip(keys, value)) if len(keys) > 1 else {keys[0]: value}
        collection.reset()
        self.publish(values)

    def _keys(self, name: str) -> list[str]:
        """The logged name(s) of a metric: ``val/mse``, or ``val/mse/<target>`` for each target of a per-target one."""
        stage, metric = name.split("/", 1)
        if not metric.startswith("per_target_"):
            return [name]
        names = self.hparams.target_names or default_names("y", self.hparams.out_features)
        return [f"{stage}/{metric.removeprefix('per_target_')}/{t}" for t in names]

    def monitorable(self, val_rows: int) -> list[str]:
        """What a callback (``EarlyStopping``, a ``ModelCheckpoint`` with ``monitor``) can watch: the
        values ``publish`` passes to ``self.log`` (R² needs two validation rows, see ``_log_epoch``),
        and Lightning's own ``epoch`` and ``step``."""
        keys = ["train/loss"]
        if val_rows:
            names = [n for n, m in self.val_metrics.items() if val_rows > 1 or not isinstance(m, R2Score)]
            keys += ["val/loss", *(key for name in names for key in self._keys(name))]
        return [*keys, "epoch", "step"]

    def publish(self, values: dict[str, Tensor | float], also_log: dict[str, float] | None = None) -> None:
        """Record epoch values in ``latest`` and write them to the logger in one call, at the step
        that counts SGD updates (``global_step``).

        Lightning's own logging (``self.log``, ``LearningRateMonitor``) would put them at its step
        count, which counts groups of updates (see ``Batches``), and it costs about 0.8 ms a key.
        So every value goes to the logger directly, and only the train loss and the validation values
        that a callback monitors (``EarlyStopping``, a ``ModelCheckpoint`` with ``monitor``) also go
        through ``self.log``, with ``logger=False``.
        """
        direct: dict[str, float] = dict(also_log or {})
        monitored = (
            {getattr(c, "monitor", None) for c in self.trainer.callbacks} if self._trainer is not None else set()
        )
        for key, value in values.items():
            self.latest[key] = direct[key] = float(value)
            if key in monitored and (key == "train/loss" or key.startswith("val/")):
                self.log(key, torch.as_tensor(float(value), dtype=torch.float32), on_epoch=True, logger=False)
        if self.logger is not None and not self.trainer.sanity_checking:
            self.logger.log_metrics(direct, step=self.global_step)
