"""The least-squares optimum, from sums that add up across batches and across DDP ranks.

Every quantity is a sum over rows, so a stream of batches (or ranks holding disjoint shards) can
add its own part and one all-reduce makes the totals of the whole training set. float64 keeps the
normal equations usable for the table sizes linreg targets.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class Optimum:
    """The closed-form fit and how the SGD solution compares with it, on the training rows."""

    coef: Tensor  # k × d, original units
    intercept: Tensor  # k
    mse: float  # optimum training MSE, averaged over targets
    sgd_mse: float  # the SGD model's training MSE, averaged over targets
    target_var: float  # mean over targets of the training-target variance
    target_ms: float  # mean over targets of the training-target mean square

    @property
    def excess(self) -> float:
        """SGD's MSE above the optimum, relative to the optimum; when the fit is exact, relative to the
        target's variance, or to its mean square when the target is constant."""
        for scale in (self.mse, self.target_var, self.target_ms):
            if scale > 1e-9 * max(self.target_var, self.target_ms, 1e-30):
                return max(self.sgd_mse - self.mse, 0.0) / scale
        return 0.0 if self.sgd_mse <= self.mse else float("inf")


class NormalEquations:
    """Accumulates [X 1]ᵀ[X 1], [X 1]ᵀy, yᵀy, Σy, n and the SGD model's squared error."""

    def __init__(self, in_features: int, out_features: int, device: torch.device | str = "cpu") -> None:
        d, k = in_features, out_features
        kw = {"dtype": torch.float64, "device": device}
        self.xtx = torch.zeros(d + 1, d + 1, **kw)
        self.xty = torch.zeros(d + 1, k, **kw)
        self.yty = torch.zeros(k, **kw)
        self.ysum = torch.zeros(k, **kw)
        self.sgd_sse = torch.zeros(k, **kw)
        self.n = torch.zeros((), **kw)

    def update(self, x: Tensor, y: Tensor, pred: Tensor | None = None) -> None:
        xa = torch.cat([x.double(), torch.ones(x.shape[0], 1, dtype=torch.float64, device=x.device)], dim=1)
        y = y.double()
        self.xtx += xa.T @ xa
        self.xty += xa.T @ y
        self.yty += (y * y).sum(0)
        self.ysum += y.sum(0)
        self.n += x.shape[0]
        if pred is not None:
            self.sgd_sse += ((pred.double() - y) ** 2).sum(0)

    def tensors(self) -> list[Tensor]:
        return [self.xtx, self.xty, self.yty, self.ysum, self.sgd_sse, self.n]

    def solve(self) -> Optimum:
        n = self.n.clamp_min(1)
        beta = torch.linalg.lstsq(self.xtx.cpu(), self.xty.cpu(), driver="gelsd").solution
        xty, yty = self.xty.cpu(), self.yty.cpu()
        # For the exact least-squares β, SSE = yᵀy − βᵀXᵀy.
        sse = (yty - (beta * xty).sum(0)).clamp_min(0.0)
        var = (yty / n.cpu() - (self.ysum.cpu() / n.cpu()) ** 2).clamp_min(0.0)
        return Optimum(
            coef=beta[:-1].T.contiguous(),
            intercept=beta[-1].contiguous(),
            mse=float((sse / n.cpu()).mean()),
            sgd_mse=float((self.sgd_sse.cpu() / n.cpu()).mean()),
            target_var=float(var.mean()),
            target_ms=float((yty / n.cpu()).mean()),
        )
