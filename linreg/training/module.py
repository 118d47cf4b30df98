"""The LightningModule: the tutorial's stage 4 (custom module, MSE, SGD) with the loop handed to Lightning.

The module owns every piece of a fit's state: the weights and standardization (``model``, buffers), the
exact solution and what SGD takes from it (``exact``), the tail average (``averaging``), the epoch sums
(``train_sums``...). Callbacks call its public methods (``finish_training``) and never write into it.
Converting coefficients between the model's coordinates and original units is ``coefficients.py``.

Over 300 lines for a reason: it is one class, the LightningModule, whose hooks are Lightning's API, and a
fifth of it is the docstring the CLI prints as ``--model.*`` help.
"""

from __future__ import annotations

import math
from typing import Any, Literal, cast

import lightning as L
import torch
import torch.nn.functional as F
from lightning.fabric.utilities.data import AttributeDict
from lightning.pytorch.core.optimizer import LightningOptimizer
from torch import Tensor
from torch.optim.swa_utils import AveragedModel
from typing_extensions import override

from linreg.data.tables import default_names
from linreg.errors import LinRegError
from linreg.lightning_private import attached, plain_step, plain_steps
from linreg.lstsq import Optimum, auto_step
from linreg.lstsq.robust import COV_TYPES
from linreg.model import LinearRegression
from linreg.training import coefficients as coef_units
from linreg.training.averaging import TailAverage
from linreg.training.exact import ExactSolution, Scaling
from linreg.training.hparams import log_hparams
from linreg.training.metrics import (
    STAGES,
    RegressionSums,
    adopt_metric_states,
    batch_sums,
    epoch_values,
    group_sums,
    monitorable,
    weighted_mse,
)

Solver = Literal["sgd", "lstsq"]
CovType = Literal["nonrobust", "HC0", "HC1", "HC2", "HC3"]
Auto = Literal["auto"]


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
            solution in float64, in one pass over the training rows; no optimizer at all).
        feature_names: feature column names, in model input order (from the data).
        target_names: target column names, in model output order (from the data).
        standardize: features are standardized with training statistics (from the data).
        standardize_target: targets too (from the data).
        log_step_loss: also log the loss at every step (off by default: one point per epoch is cheap).
        cov_type: the closed form's standard errors: ``nonrobust`` (constant error variance, Student's t)
            or heteroscedasticity-robust ``HC0``, ``HC1``, ``HC2``, ``HC3`` (White's sandwich and its
            corrections, with the normal distribution, as statsmodels' ``fit(cov_type=...)``; one more
            pass over the training rows). ``predict --interval`` honours it.
    """

    # Buffers, registered in __init__ (nn.Module's __getattr__ would type them Tensor | Module).
    x_mean: Tensor
    x_scale: Tensor
    y_mean: Tensor
    y_scale: Tensor
    y_center: Tensor

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
        cov_type: CovType = "nonrobust",
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
        if cov_type not in COV_TYPES:
            raise LinRegError(f"--model.cov_type must be one of {', '.join(COV_TYPES)}, got {cov_type!r}")
        self.save_hyperparameters()
        self.automatic_optimization = False  # several updates per Lightning step: see training_step
        self.model = LinearRegression(in_features, out_features, bias=fit_intercept)
        # The standardization in float64 whatever the model's dtype: the exact solver's penalties are
        # defined in these coordinates (float32 statistics cost ridge 2.5e-8 against scikit-learn on
        # Longley), and a target of 1e9 + 0.02·signal keeps its signal only if the mean is taken off and
        # put back in float64 (see _target, _unscale). Features use them cast to the batch's dtype.
        self.register_buffer("x_mean", torch.zeros(in_features, dtype=torch.float64))
        self.register_buffer("x_scale", torch.ones(in_features, dtype=torch.float64))
        self.register_buffer("y_mean", torch.zeros(out_features, dtype=torch.float64))
        self.register_buffer("y_scale", torch.ones(out_features, dtype=torch.float64))
        # The training target's mean: the metrics' R² sums targets shifted by it (see RegressionSums).
        self.register_buffer("y_center", torch.zeros(out_features, dtype=torch.float64))
        self.train_sums, self.val_sums, self.test_sums = (RegressionSums(out_features) for _ in STAGES)
        # Polyak-Ruppert averaging of the iterates; its copy of the weights is not trained (no grad).
        self.averaged = AveragedModel(self.model).requires_grad_(False) if average is not False else None
        self.averaging = TailAverage(self.averaged) if self.averaged is not None else None
        self.exact: ExactSolution | None = None  # measured in setup("fit"), before the optimizer exists
        self.intervals: dict[str, Any] | None = None  # predict --interval's covariance, from the checkpoint
        self._final: Any = None  # the optimum compared with the model the fit ended with
        self.final_metrics: dict[str, float] = {}  # the saved model's train/val metrics (finish_training)
        self.loss_history: list[float] = []  # each epoch's training loss, for the advice in the summary
        self.latest: dict[str, float] = {}  # the last value of every epoch metric, for the fit summary
        self.trained = False  # whether this run took a training step (a failed fit's logs are kept only then)
        self._plain_steps = False  # torch's backward and step are all Lightning's would do (on_train_start)
        self._served_scaled = False  # the DataModule serves the training rows standardized (on_train_start)

    @property
    def hparams(self) -> AttributeDict:
        """``save_hyperparameters``' values, typed as what they are here: an ``AttributeDict``."""
        return cast(AttributeDict, super().hparams)

    # -- the model ---------------------------------------------------------------------------------

    @override
    def forward(self, x: Tensor) -> Tensor:
        """Raw features in, predictions in the target's units out."""
        return self._unscale(self._scaled(x))

    def _scaled(self, x: Tensor, served_scaled: bool = False) -> Tensor:
        """The linear layer's output, in standardized target units when targets are standardized.

        ``served_scaled``: the rows come standardized already (``LinRegData.serve_scaled``, asked for in
        ``on_train_start``). Otherwise one temporary, divided in place: a second B×d temporary made the
        standardization cost several times the update itself at batch 65536 (fresh pages each time, issue 24).
        """
        if self.hparams.standardize and not served_scaled:
            x = (x - self.x_mean.to(x.dtype)).div_(self.x_scale.to(x.dtype))
        out: Tensor = self.model(x)
        return out

    def _target(self, y: Tensor, dtype: torch.dtype) -> Tensor:
        """The training target in the model's coordinates and dtype: centred (and scaled, with
        ``standardize_target``) in float64 first when standardizing."""
        if not self.hparams.standardize:
            return y.to(dtype)
        return ((y.to(self.y_mean.dtype) - self.y_mean) / self.y_scale).to(dtype)

    def _unscale(self, z: Tensor) -> Tensor:
        """Predictions in the target's units: in float64 when standardizing (the target's mean goes back
        on in float64, so a float32 model of 1e9 + 0.02·signal keeps the signal)."""
        if not self.hparams.standardize:
            return z
        return z.to(self.y_mean.dtype) * self.y_scale + self.y_mean

    def set_scaling(self, x_mean: Tensor, x_scale: Tensor, y_mean: Tensor, y_scale: Tensor) -> None:
        for name, value in zip(("x_mean", "x_scale", "y_mean", "y_scale"), (x_mean, x_scale, y_mean, y_scale)):
            getattr(self, name).copy_(value)

    def coefficients(self, lin: torch.nn.Linear | None = None) -> tuple[Tensor, Tensor | None]:
        """Weights (k × d) and intercepts (k; None without an intercept) in original units, in float64,
        of the model's linear layer (or of ``lin``, e.g. the averaged copy's)."""
        return coef_units.to_original(self, lin if lin is not None else self.model.lin)

    def set_coefficients(self, coef: Tensor, intercept: Tensor | None) -> None:
        """Put a solution given in original units (k × d, k) into the model, through its standardization."""
        coef_units.from_original(self, self.model.lin, coef, intercept)

    @property
    def optimum(self) -> Any:
        """The exact solution, compared with the model the fit ended with (during training: the optimum alone)."""
        if self._final is not None:
            return self._final
        return self.exact.optimum if self.exact is not None else None

    @property
    def scaling(self) -> Scaling:
        """The model's coordinates, for the objective: standardized features and targets, or raw units."""
        hp = self.hparams
        return Scaling(
            self.x_mean.double().cpu() if hp.standardize else None,
            self.x_scale.double().cpu() if hp.standardize else None,
            self.y_scale.double().cpu() if hp.standardize_target else None,  # what the penalties' units follow
        )

    @property
    def tolerance(self) -> float:
        """``--model.tol`` as a number (``auto``: 1e-3 with ``lr auto``, else 0)."""
        tol = self.hparams.tol
        return (1e-3 if self.hparams.lr == "auto" else 0.0) if tol == "auto" else tol

    # -- set-up: the data's statistics, the exact solution, the optimizer ----------------------------

    @override
    def setup(self, stage: str) -> None:
        data = _datamodule(self.trainer) if attached(self) else None
        for sums in (self.train_sums, self.val_sums, self.test_sums):
            # Reduced over this trainer's ranks only: a process group left from an earlier DDP fit in the
            # same process (a script that fits twice) must not merge another fit's rows.
            sums.sync_on_compute = attached(self) and self.trainer.world_size > 1
        if stage != "fit" or data is None:
            return
        hp = self.hparams
        if hp.standardize and getattr(data, "scaling", None) is not None:
            x_mean, x_scale, y_mean, y_scale = data.scaling
            if not hp.fit_intercept:  # centring is an intercept in disguise: scale only
                x_mean, y_mean = torch.zeros_like(x_mean), torch.zeros_like(y_mean)
            self.set_scaling(x_mean, x_scale, y_mean, y_scale)
        if getattr(data, "target_mean", None) is not None:
            self.y_center.copy_(data.target_mean)
        if hasattr(data, "exact_batches"):
            self._measure_optimum(data)
        elif hp.lr == "auto" or hp.solver == "lstsq":
            raise LinRegError("--model.lr auto and --model.solver lstsq need linreg's LinRegData to measure the rows")

    def _measure_optimum(self, data: Any) -> None:
        """The exact solution, before the optimizer exists (its step comes from it), and averaging's start."""
        trainer, hp = self.trainer, self.hparams

        def rows(purpose: str) -> Any:  # one pass over the training rows; a robust covariance takes two
            batches = data.exact_batches(purpose=purpose)
            return batches.batches() if batches else []

        gather = trainer.strategy.all_gather if trainer.world_size > 1 else None
        self.exact = ExactSolution.measure(rows, hp, self.scaling, trainer.strategy.root_device, gather)
        average = hp.average if hp.average != "auto" else self._minibatch and hp.lr == "auto"
        if hp.solver == "sgd" and average and self.averaging is not None:
            epochs = trainer.max_epochs if trainer.max_epochs is not None else -1
            self.averaging.start(epochs // 2 if epochs > 0 else 0)

    def _start_weights(self) -> None:
        """Once the weights have their final dtype and device: the solution itself for ``solver lstsq``;
        for SGD from scratch, the intercept at the target's mean."""
        assert self.exact is not None  # on_train_start calls this only once measured
        hp, optimum = self.hparams, self.exact.optimum
        if hp.solver == "lstsq":
            self.set_coefficients(optimum.coef, optimum.intercept)
            return
        bias = self.model.lin.bias
        if hp.lr == "auto" and hp.standardize and bias is not None and not self.trainer.ckpt_path:
            # Standardized features and the centred target: the optimal intercept is 0, and starting there
            # skips part of the descent (Longley: 466 epochs to a 1e-4 gap from the random start, 388 from here).
            with torch.no_grad():
                bias.zero_()

    @property
    def _minibatch(self) -> bool:
        data = _datamodule(self.trainer) if attached(self) else None
        batch = data.hparams.get("batch_size") if data is not None else None
        return batch is not None and self.exact is not None and batch < self.exact.optimum.n

    def sgd_settings(self) -> tuple[float, float]:
        """The step and momentum SGD runs with: as given, or ``auto`` from the loss's curvature."""
        hp = self.hparams
        if self.exact is None:
            return auto_step(0.0, 0.0, hp.lr, hp.momentum, None, 0.0)
        big, small, r2 = self.exact.curvature
        batch = _datamodule(self.trainer).hparams.get("batch_size") if self._minibatch else None
        return auto_step(big, small, hp.lr, hp.momentum, batch, r2)

    @override
    def configure_optimizers(self) -> torch.optim.Optimizer | None:
        """torch's SGD on the linear layer, with the step and momentum of ``sgd_settings``; none for lstsq."""
        if self.hparams.solver == "lstsq":
            return None
        lr, momentum = self.sgd_settings()
        decay = self.hparams.weight_decay
        return torch.optim.SGD(self.model.parameters(), lr=lr, momentum=momentum, weight_decay=decay)

    @override
    def configure_callbacks(self) -> list[L.Callback]:
        from linreg.training.final_model import FinalModel

        return [FinalModel()]

    @override
    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        """Batches are lists of dicts of CPU tensors (see ``Batches``): on the CPU there is nothing to move,
        and Lightning's generic walk over the collection cost 0.6 ms a step on small tables (measured)."""
        if device.type == "cpu":
            return batch
        return [
            {k: v.to(device, non_blocking=True) if isinstance(v, Tensor) else v for k, v in b.items()} for b in batch
        ]

    # -- checkpoints -------------------------------------------------------------------------------

    @override
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """A float64 checkpoint under a 64-bit precision: become float64 before the weights are copied in
        (Lightning loads the state dict before its precision plugin converts the module, so a float32
        module would round them)."""
        state = checkpoint.get("state_dict", {})
        weight = state.get("model.lin.weight")
        precision = str(self.trainer.precision) if attached(self) else ""
        if weight is not None and weight.dtype == torch.float64 and precision.startswith("64"):
            self.double()
        adopt_metric_states(state, self.state_dict())
        if self.averaging is not None:
            self.averaging.restore(checkpoint.get("linreg_averaging"))
        self.intervals = checkpoint.get("linreg_intervals")

    @override
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Averaging's state beyond the averaged weights (see ``TailAverage``); the closed form's covariance
        (``linreg.lstsq.robust``), which ``predict --interval`` needs and no pass over other rows could give."""
        checkpoint["linreg_averaging"] = self.averaging.state() if self.averaging is not None else {}
        if self.exact is not None:
            self.intervals = self.exact.intervals
        checkpoint["linreg_intervals"] = self.intervals
        checkpoint["linreg_final_metrics"] = dict(self.final_metrics)

    @override
    def on_train_start(self) -> None:
        """The start weights (see ``_start_weights``); a resumed fit that had ended with the average goes on
        from its last SGD iterate. Under DDP a mid-epoch checkpoint holds rank 0's running sums only:
        start the epoch's afresh."""
        if self.exact is not None:
            self._start_weights()
        if self.averaging is not None and self.hparams.solver == "sgd":
            self.averaging.resume(self.model)
        if self.trainer.world_size > 1:
            self.train_sums.reset()
        self._plain_steps = plain_steps(self.trainer)
        serve = getattr(_datamodule(self.trainer), "serve_scaled", None)  # rows standardized once, where they can be
        scaling = (self.x_mean, self.x_scale) if self.hparams.standardize else None
        self._served_scaled = bool(serve(scaling)) if serve is not None else False

    # -- steps -------------------------------------------------------------------------------------

    @override
    def training_step(self, batch: list[dict[str, Any]], batch_idx: int) -> None:
        """One SGD update per batch of the group, in the tutorial's order: forward, loss, backward, step.

        Manual optimization lets one Lightning step run several updates (see ``Batches``); torch's
        SGD does each update exactly as Lightning's automatic loop would. With ``solver=lstsq`` the
        weights are already the solution: the epoch only measures them.
        """
        self.trained = True
        sgd = self.hparams.solver == "sgd"
        optimizer = self._sgd() if sgd else None
        plain = self._plain_steps  # Lightning's path adds nothing here: torch's directly (see plain_steps)
        backward, step = (Tensor.backward, plain_step) if plain else (self.manual_backward, LightningOptimizer.step)
        preds: list[Tensor] = []
        targets: list[Tensor] = []
        losses: list[Tensor] = []
        weights: list[Tensor] = []  # each update's sample weights, when the rows have them
        for view in batch:
            z, t = self._scaled(view["x"], self._served_scaled), self._target(view["y"], view["x"].dtype)
            loss, logged = self._loss(z, t, view, train=True)
            if optimizer is not None:
                backward(loss)
                step(optimizer)
                optimizer.zero_grad()
                if self.hparams.l1:  # proximal step: soft-thresholding reaches exact zeros, a gradient never does
                    with torch.no_grad():
                        w = self.model.lin.weight
                        w.copy_(F.softshrink(w, optimizer.param_groups[0]["lr"] * self.hparams.l1))
                if self.averaging is not None:
                    self.averaging.update(self.model, self.current_epoch)
            preds.append(z.detach())
            targets.append(view["y"])
            losses.append(logged)
            if "w" in view:
                weights.append(view["w"])
        if preds:  # one Metric update per step, for the group's updates together, in one set of kernels
            pred, y = (preds[0], targets[0]) if len(preds) == 1 else (torch.cat(preds), torch.cat(targets))
            rows = [z.shape[0] for z in preds]
            sums = group_sums(self._unscale(pred), y, self.y_center, losses, rows, weights or None)
            self.train_sums.update(sums)
        if not torch.isfinite(logged):  # once per step: NaN and inf carry on through later updates
            lr = optimizer.param_groups[0]["lr"] if optimizer is not None else 0.0
            raise LinRegError(
                f"training diverged: the loss became {logged.item()} at epoch {self.current_epoch}, step "
                f"{self.global_step}; no checkpoint was written. Try "
                + ("" if self.hparams.standardize else "--data.standardize true, ")
                + f"a lower --model.lr (now {lr:.4g}) or --model.lr auto"
            )
        if self.hparams.log_step_loss:
            self.log("train/loss_step", logged.float(), on_step=True, on_epoch=False)

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

    def _loss(self, z: Tensor, t: Tensor, batch: dict[str, Any], train: bool) -> tuple[Tensor, Tensor]:
        """The batch's share of the global-batch mean loss (to differentiate), and the value to log.

        One process: exactly ``nn.MSELoss()`` on the batch, as in the tutorial. Under DDP each rank
        holds a slice of the global batch; its summed loss scaled by world_size / (rows · targets)
        makes DDP's gradient average equal the gradient of the global-batch mean. In training, the
        penalties join it: ``l2·‖W‖²`` through the gradient (every rank adds it whole, and DDP averages),
        ``l1·‖W‖₁`` only in the logged value (its step is the proximal one, see ``training_step``).
        With sample weights (``w``) the mean is the weighted one, Σw·r² / (Σw · targets), over the global
        batch's weight sum under DDP (``w_total``, see ``WeightedBatches``).
        """
        world = self.trainer.world_size if attached(self) else 1
        if "w" in batch:
            loss, logged = weighted_mse(z, t, batch["w"], world, batch.get("w_total"))
        elif world == 1:
            loss = F.mse_loss(z, t)
            logged = loss.detach()
        else:
            sse = F.mse_loss(z, t, reduction="sum")
            loss = sse * (world / (batch["n"] * z.shape[1]))
            logged = sse.detach() / max(z.shape[0] * z.shape[1], 1)
        hp = self.hparams
        if train and (hp.l2 or hp.l1):
            w = self.model.lin.weight
            if hp.l2:
                penalty = hp.l2 * w.pow(2).sum()
                loss, logged = loss + penalty, logged + penalty.detach()
            if hp.l1:
                logged = logged + hp.l1 * w.detach().abs().sum()
        return loss, logged

    def _evaluate(self, batch: list[dict[str, Any]], stage: str) -> None:
        alone = attached(self) and self.trainer.state.fn in ("validate", "test")
        for view in batch:
            z, t = self._scaled(view["x"]), self._target(view["y"], view["x"].dtype)
            if alone and not bool(torch.isfinite(z).all()):
                # As predict refuses them; during fit, divergence is training_step's own check.
                raise LinRegError(
                    f"the model's predictions on the {stage} rows are not finite (inf or NaN): a feature value "
                    f"far beyond the training data's overflows; no {stage} metrics reported"
                )
            _, logged = self._loss(z, t, view, train=False)
            getattr(self, f"{stage}_sums").update(
                batch_sums(self._unscale(z.detach()), view["y"], self.y_center, logged, view.get("w"))
            )

    # -- epoch ends --------------------------------------------------------------------------------

    @override
    def on_train_epoch_end(self) -> None:
        values = self._epoch_values("train")
        if "train/loss" in values:
            self.loss_history.append(float(values["train/loss"]))
        w, b = self.coefficients()
        state: dict[str, Tensor | float] = {"w": w[0, 0]} if w.shape == (1, 1) else {"coef_norm": w.norm()}
        if w.shape == (1, 1) and b is not None:
            state["b"] = b[0]
        if self.hparams.solver == "sgd":
            state["lr-SGD"] = self._sgd().param_groups[0]["lr"]
            excess = self.gap_to_optimum() if self.exact is not None else math.nan
            if math.isfinite(excess):  # NaN for an exact fit: no relative gap to log (Optimum.exact_fit)
                values["optimum/excess"] = excess
        self.log_values(values)
        self._log_state(state | {"epoch": self.current_epoch})
        excess = float(values.get("optimum/excess", math.inf))
        done = excess <= self.tolerance and self.current_epoch + 1 >= (self.trainer.min_epochs or 0)
        # lstsq: one epoch measures the solution; SGD within --model.tol of the optimum: more change nothing
        if self.hparams.solver == "lstsq" or done:
            self.trainer.should_stop = True

    @override
    def on_validation_epoch_end(self) -> None:
        self.log_values(self._epoch_values("val"))

    @override
    def on_test_epoch_end(self) -> None:
        self.log_values(self._epoch_values("test"))

    def gap_to_optimum(self) -> float:
        """How far the weights the fit would end with now (the running average when averaging) are above
        the optimum, exactly, from the R factor (no pass over the rows)."""
        running = self.averaging is not None and self.averaging.running
        lin = cast(LinearRegression, self.averaging.module).lin if self.averaging is not None and running else None
        return float(self._compared(*self.coefficients(lin)).excess)

    def _compared(self, coef: Tensor, intercept: Tensor | None, mse: float | None = None) -> Optimum:
        assert self.exact is not None  # measured in setup("fit")
        hp = self.hparams
        intercept = intercept if hp.fit_intercept else None
        return self.exact.compared(coef, intercept, bool(hp.l1 or hp.l2), self.scaling, mse)

    def _sgd(self) -> LightningOptimizer:
        """The one SGD optimizer (``configure_optimizers`` returns one)."""
        optimizer = self.optimizers()
        assert not isinstance(optimizer, list)
        return optimizer

    def finish_training(self) -> None:
        """The end of a fit, before its last checkpoint: the model it ends with (the average of the
        iterates when averaging; a lasso polished on its support), measured once more on the training
        and validation rows, and compared with the optimum from its own predictions' residuals."""
        hp = self.hparams
        if self.averaging is not None:
            self.averaging.finish(self.model)
        if hp.solver == "sgd" and hp.l1 and hp.lr == "auto" and self.exact is not None:  # a given lr: plain SGD
            scaling = self.scaling
            polished = self.exact.least_squares.polish(self.coefficients()[0], scaling.x_scale, scaling.y_scale)
            if polished is not None:
                self.set_coefficients(*polished)
        self.final_metrics = self._measure_final()
        if self.exact is not None:
            self._final = self._compared(*self.coefficients(), mse=self.final_metrics.get("train/mse"))

    @torch.no_grad()
    def _measure_final(self) -> dict[str, float]:
        """Metrics of the model as saved, one pass over each split's rows (streamed and DDP-merged like
        the epochs): the epoch values are running means over a moving model, taken before each update."""
        data = _datamodule(self.trainer)
        if not hasattr(data, "exact_batches"):
            return {}
        dtype = self.model.lin.weight.dtype
        names = self.hparams.target_names or default_names("y", self.hparams.out_features)
        values: dict[str, Any] = {}
        for split in ("train", "val"):
            batches = data.exact_batches(split=split, purpose=f"the saved model's {split} metrics")
            if not batches:
                continue
            sums = RegressionSums(self.hparams.out_features, self.trainer.world_size > 1).to(self.device)
            for view in batches.batches():
                x, y = view["x"].to(self.device, dtype), view["y"].to(self.device)
                z = self._scaled(x)
                _, logged = self._loss(z, self._target(y, dtype), view, train=split == "train")
                sums.update(batch_sums(self._unscale(z), y, self.y_center, logged, view.get("w")))
            values |= epoch_values(sums.compute(), split, names)
        return {key: float(value) for key, value in values.items()}

    @override
    def on_train_end(self) -> None:
        """The optimum and the gap to it, once, at the fit's last step; then the run's hparams row."""
        opt = self.optimum
        if opt is not None and self.logger is not None:
            values = {"optimum/mse": opt.mse, "optimum/excess_mse": opt.excess}
            finite = {key: value for key, value in values.items() if math.isfinite(value)}  # none for an exact fit
            self.logger.log_metrics(finite, step=self.global_step)
        log_hparams(self.trainer, self)

    def _epoch_values(self, stage: str) -> dict[str, Tensor | float]:
        """The epoch's loss and metrics over every rank's rows; then the sums restart."""
        sums = getattr(self, f"{stage}_sums")
        if not sums.update_called:
            return {}
        values = epoch_values(sums.compute(), stage, self.hparams.target_names or default_names("y", sums.k))
        sums.reset()
        return values

    def monitorable(self, val_rows: int) -> list[str]:
        """What a callback (``EarlyStopping``, a ``ModelCheckpoint`` with ``monitor``) can watch."""
        return monitorable(val_rows, sgd=self.hparams.solver == "sgd")

    def _log_state(self, values: dict[str, Tensor | float]) -> None:
        """The model's state after an epoch (w and b, or the coefficients' norm; the step size; the epoch):
        curves to watch, not metrics to monitor, so straight to the logger at the same step as the
        metrics. ``self.log`` costs about 0.5 ms a key, which on a small table is most of an epoch."""
        self.latest |= {key: float(value) for key, value in values.items()}
        if self.logger is not None and not self.trainer.sanity_checking:
            self.logger.log_metrics({key: float(value) for key, value in values.items()}, step=self.global_step)

    def log_values(self, values: dict[str, Tensor | float]) -> None:
        """Epoch values: kept in ``latest`` (float64, for the summary) and logged through ``self.log``,
        so callbacks can monitor them and ``trainer.validate()`` returns them. Their TensorBoard step is
        the count of SGD updates (``global_step``), which a ``step`` value sets: Lightning's own step
        counts groups of updates (see ``Batches``)."""
        if not values or (attached(self) and self.trainer.sanity_checking):
            return
        self.latest |= {key: float(value) for key, value in values.items()}
        shown = {"train/loss", "val/loss"}
        logged = {k: torch.as_tensor(float(v), dtype=torch.float32) for k, v in values.items()}
        for key in shown & logged.keys():
            self.log(key, logged.pop(key), prog_bar=True, batch_size=1)
        if attached(self) and self.trainer.state.fn == "fit":
            logged["step"] = torch.as_tensor(float(self.global_step))
        self.log_dict(logged, batch_size=1)


def _datamodule(trainer: L.Trainer) -> Any:
    """The trainer's datamodule (an attribute Lightning sets at run time, invisible to type checkers)."""
    return getattr(trainer, "datamodule", None)
