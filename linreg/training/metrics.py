"""``RegressionSums``: every sum an epoch's metrics need, updated once per SGD update.

One torchmetrics ``Metric`` instead of a ``MetricCollection`` of MSE, RMSE, MAE and R² (and a
``MeanMetric`` for the loss): each of those recomputed the residuals of the whole batch and converted
it to float64 on its own, which cost more than the SGD update itself at large batches (issue 24's
profile). Here one residual in the model's dtype feeds five float64 sums (``sum(dtype=float64)``
accumulates without a float64 copy of the batch), every sum is reduced over DDP ranks with
``dist_reduce_fx="sum"``, and MSE, MAE and R² come from the reduced sums at the epoch's end:
every rank computes the same values, so a rank that saw one row or none still agrees with the others.

Values are in the target's own units. R²'s total sum of squares uses targets shifted by the training mean
(``center``): in float64, Σy² − (Σy)²/n of a target with mean 1e9 and spread 1 would keep no digit.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric

SUMS = ("sse", "sae", "sum_t", "sum_t2")


class RegressionSums(Metric):
    """Row count, loss, and per-target sums of squared and absolute residuals and of centred targets."""

    full_state_update = False
    higher_is_better = None
    # States, registered by add_state (declared for type checkers: nn.Module's __getattr__ says Tensor | Module).
    rows: Tensor
    loss: Tensor
    sse: Tensor
    sae: Tensor
    sum_t: Tensor
    sum_t2: Tensor

    def __init__(self, out_features: int) -> None:
        super().__init__()
        f64 = torch.float64
        self.add_state("rows", torch.zeros((), dtype=f64), dist_reduce_fx="sum", persistent=True)
        self.add_state("loss", torch.zeros((), dtype=f64), dist_reduce_fx="sum", persistent=True)
        for name in SUMS:
            self.add_state(name, torch.zeros(out_features, dtype=f64), dist_reduce_fx="sum", persistent=True)

    def update(self, pred: Tensor, y: Tensor, center: Tensor, loss: Tensor | None = None) -> None:
        """pred: predictions (rows × k, the model's dtype), y: targets as the file holds them (float64 for
        text tables: the metrics compare with the true values, not their float32 rounding); center: the
        training target's mean; loss: the batch's loss as the optimizer saw it (weighted by its rows)."""
        rows = pred.shape[0]
        if rows == 0:
            return
        e = pred.detach().to(y.dtype) - y
        tc = y - center.to(y.dtype)
        f64 = torch.float64
        self.sse += e.square().sum(0, dtype=f64)
        self.sae += e.abs().sum(0, dtype=f64)
        self.sum_t += tc.sum(0, dtype=f64)
        self.sum_t2 += tc.square().sum(0, dtype=f64)
        self.rows += rows
        if loss is not None:
            self.loss += loss.detach().to(f64) * rows

    def compute(self) -> dict[str, Tensor]:
        """Per target: MSE and MAE; R² (NaN where undefined: fewer than two rows, or
        a constant target); and the epoch's loss, the row-weighted mean of the batch losses. ``rows``: 0
        when no rank saw a row (then nothing here means anything)."""
        n = self.rows.clamp(min=1)
        sst = self.sum_t2 - self.sum_t.square() / n
        defined = (self.rows >= 2) & (sst > 0)
        r2 = torch.where(defined, 1.0 - self.sse / torch.where(defined, sst, torch.ones_like(sst)), torch.nan)
        return {"rows": self.rows.clone(), "loss": self.loss / n, "mse": self.sse / n, "mae": self.sae / n, "r2": r2}


STAGES = ("train", "val", "test")
# Running epoch state in a checkpoint: these sums, and an older linreg's MetricCollection and MeanMetric.
STATE_PREFIXES = tuple(f"{stage}_{kind}." for stage in STAGES for kind in ("sums", "metrics", "loss"))


def epoch_values(got: dict[str, Tensor], stage: str, targets: list[str]) -> dict[str, Tensor | float]:
    """``RegressionSums.compute()`` as logged values: ``stage/loss``, the MSE, RMSE, MAE and R² over the
    targets (the mean of the per-target values, RMSE the root of the mean MSE, as torchmetrics has them),
    and each per target (``stage/mse/<target>``) when there are several. Nothing without rows; no R²
    where it is undefined."""
    if got["rows"] == 0:
        return {}
    mse, mae, r2 = got["mse"], got["mae"], got["r2"]
    values: dict[str, Tensor | float] = {}
    if torch.isfinite(got["loss"]):
        values[f"{stage}/loss"] = got["loss"]
    values |= {f"{stage}/mse": mse.mean(), f"{stage}/rmse": mse.mean().sqrt(), f"{stage}/mae": mae.mean()}
    if not r2.isnan().any():
        values[f"{stage}/r2"] = r2.mean()
    if len(targets) > 1:
        for j, name in enumerate(targets):
            values |= {f"{stage}/mse/{name}": mse[j], f"{stage}/rmse/{name}": mse[j].sqrt()}
            values[f"{stage}/mae/{name}"] = mae[j]
            if not r2[j].isnan():
                values[f"{stage}/r2/{name}"] = r2[j]
    return values


def monitorable(val_rows: int, sgd: bool) -> list[str]:
    """The values a callback can monitor: the epoch values (R² needs two validation rows), the gap to the
    optimum for SGD, and Lightning's own ``epoch`` and ``step``."""
    keys = ["train/loss", "train/mse", "train/rmse", "train/mae", "train/r2"]
    if val_rows:
        keys += ["val/loss", "val/mse", "val/rmse", "val/mae"] + (["val/r2"] if val_rows > 1 else [])
    return [*keys, *(["optimum/excess"] if sgd else []), "epoch", "step"]


def adopt_metric_states(state: dict[str, Tensor], mine: dict[str, Tensor]) -> None:
    """A checkpoint's running epoch state made to fit this module: an older linreg's keys dropped, missing
    sums taken fresh. They only matter for a fit resumed mid-epoch, which the weights never depend on."""
    for key in [k for k in state if k.startswith(STATE_PREFIXES) and k not in mine]:
        del state[key]
    for key in (k for k in mine if k.startswith(STATE_PREFIXES) and k not in state):
        state[key] = mine[key]
