"""``RegressionSums``: every sum an epoch's metrics need, added once per Lightning step.

One torchmetrics ``Metric`` instead of a ``MetricCollection`` of MSE, RMSE, MAE and R² (and a
``MeanMetric`` for the loss): each of those recomputed the residuals of the whole batch and converted
it to float64 on its own, which cost more than the SGD update itself at large batches (issue 24's
profile). Here one residual feeds four float64 sums per target, kept in one state vector reduced over
DDP ranks with ``dist_reduce_fx="sum"``, and MSE, MAE and R² come from the reduced sums at the epoch's end:
every rank computes the same values, so a rank that saw one row or none still agrees with the others.

With sample weights (``--data.weights``) every sum is weighted and the means are over the weight sum,
as scikit-learn's ``sample_weight`` defines MSE, MAE and R²; without, each row weighs 1.

Values are in the target's own units. R²'s total sum of squares uses targets shifted by the training mean
(``center``): in float64, Σy² − (Σy)²/n of a target with mean 1e9 and spread 1 would keep no digit.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric


class RegressionSums(Metric):
    """One float64 vector of sums, reduced over DDP ranks: [rows, Σ loss·w, Σwe², Σw|e|, Σw(y−c),
    Σw(y−c)², Σw] (the middle four per target; w the rows' sample weights, 1 without: the weight sum last,
    so the unweighted layout keeps its places). ``batch_sums`` makes a
    batch's; ``update`` adds them, once per Lightning step for a group of SGD updates (the Metric's own
    bookkeeping costs more than the sums at small batches)."""

    full_state_update = False
    higher_is_better = None
    sums: Tensor  # registered by add_state (declared for type checkers)

    def __init__(self, out_features: int, sync_on_compute: bool = True) -> None:
        super().__init__(sync_on_compute=sync_on_compute)
        self.k = out_features
        self.add_state("sums", torch.zeros(3 + 4 * out_features, dtype=torch.float64), "sum", persistent=True)

    def update(self, sums: Tensor) -> None:
        self.sums += sums

    def compute(self) -> dict[str, Tensor]:
        """Per target: MSE and MAE; R² (NaN where undefined: fewer than two rows, or a constant target);
        and the epoch's loss, the weighted mean of the batch losses. ``rows``: 0 when no rank saw a
        row (then nothing here means anything)."""
        rows, loss, weight = self.sums[0], self.sums[1], self.sums[-1]
        sse, sae, sum_t, sum_t2 = self.sums[2:-1].reshape(4, self.k)
        n = torch.where(weight > 0, weight, torch.ones_like(weight))  # the row count without sample weights
        sst = sum_t2 - sum_t.square() / n
        defined = (rows >= 2) & (sst > 0)
        r2 = torch.where(defined, 1.0 - sse / torch.where(defined, sst, torch.ones_like(sst)), torch.nan)
        return {"rows": rows.clone(), "loss": loss / n, "mse": sse / n, "mae": sae / n, "r2": r2}


def batch_sums(
    pred: Tensor, y: Tensor, center: Tensor, loss: Tensor | None = None, w: Tensor | None = None
) -> Tensor:
    """A batch's ``RegressionSums`` vector. pred: predictions (rows × k, the model's dtype); y: targets as
    the file holds them (float64 for text tables: the metrics compare with the true values, not their
    float32 rounding); center: the training target's mean; loss: the batch's loss as the optimizer saw
    it (weighted by its rows' weight); w: the rows' sample weights (None: 1 each). ``sum(dtype=float64)``
    accumulates without a float64 copy of the batch."""
    f64, rows = torch.float64, pred.shape[0]
    e = pred.detach().to(y.dtype) - y
    tc = y - center.to(y.dtype)
    count = torch.full((), float(rows), dtype=f64, device=y.device)
    if w is None:
        weight = count
        parts = (
            e.square().sum(0, dtype=f64),
            e.abs().sum(0, dtype=f64),
            tc.sum(0, dtype=f64),
            tc.square().sum(0, dtype=f64),
        )
    else:
        wc = w.reshape(rows, 1).to(y.dtype)
        weight = w.sum(dtype=f64)
        parts = (
            (wc * e.square()).sum(0, dtype=f64),
            (wc * e.abs()).sum(0, dtype=f64),
            (wc * tc).sum(0, dtype=f64),
            (wc * tc.square()).sum(0, dtype=f64),
        )
    loss_sum = _weighted(loss, rows, y.device) if w is None else _weighted(loss, 1, y.device) * weight
    return torch.cat([torch.stack([count, loss_sum]), *parts, weight[None]])


def group_sums(
    pred: Tensor, y: Tensor, center: Tensor, losses: list[Tensor], rows: list[int], w: list[Tensor] | None = None
) -> Tensor:
    """``batch_sums`` of a Lightning step's group of updates at once: ``pred`` and ``y`` are their batches
    one after the other; ``losses``, ``rows`` and ``w`` each update's loss, rows and sample weights. One
    set of kernels for the group instead of one per update: at batch 1024 those small ops cost a fifth of
    an update (issue 24). Each loss counts with its own update's weight, as ``batch_sums`` weighs it."""
    if len(losses) == 1:
        return batch_sums(pred, y, center, losses[0], w[0] if w else None)
    sums = batch_sums(pred, y, center, None, torch.cat(w) if w else None)
    f64 = torch.float64
    weight = torch.stack([wi.sum(dtype=f64) for wi in w]) if w else torch.tensor(rows, dtype=f64, device=y.device)
    sums[1] = (torch.stack(losses).to(f64) * weight).sum()
    return sums


def _weighted(loss: Tensor | None, rows: int, device: torch.device) -> Tensor:
    if loss is None:
        return torch.zeros((), dtype=torch.float64, device=device)
    return loss.detach().to(torch.float64) * rows


def weighted_mse(z: Tensor, t: Tensor, w: Tensor, world: int, total: float | None) -> tuple[Tensor, Tensor]:
    """The weighted MSE Σw·r² / (Σw · targets) to differentiate, and its value on these rows to log.
    Under DDP (``world`` > 1) the loss is this rank's share of the global batch's, whose weight sum is
    ``total``: DDP's gradient average is then exactly the gradient of the global batch's weighted mean.
    A batch whose weights are all 0 has no loss to follow: 0, not 0/0."""
    wc = w.reshape(-1, 1).to(z.dtype)
    sse = (wc * (z - t).square()).sum()
    k = z.shape[1]
    local = w.sum(dtype=torch.float64)
    mean = (torch.where(local > 0, local, 1.0) * k).to(sse.dtype)  # all weights 0: Σw·r² is 0 too
    logged = sse.detach() / mean
    if world == 1:
        return sse / mean, logged
    assert total is not None  # WeightedBatches gives every DDP batch its global weight sum
    return sse * (world / ((total if total > 0 else 1.0) * k)), logged


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
    sums (or sums of an older layout, without the weight sum) taken fresh. They only matter for a fit
    resumed mid-epoch, which the weights never depend on."""
    for key in [k for k in state if k.startswith(STATE_PREFIXES) and k not in mine]:
        del state[key]
    for key in (k for k in mine if k.startswith(STATE_PREFIXES)):
        if key not in state or state[key].shape != mine[key].shape:
            state[key] = mine[key]
