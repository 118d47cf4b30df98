"""``ExactSolution``: the least-squares optimum of a fit's training rows, owned by the LightningModule.

Measured once, before the optimizer exists (the module's ``setup``): one float64 pass over the training
rows as the file holds them (``LinRegData.exact_batches``), the ranks' R factors combined, and the
solution (``linreg.lstsq``). From it the module takes the automatic step and momentum, the weights
themselves for ``--model.solver lstsq``, the gap to the optimum after every epoch and the stopping rule.
The R factor gives any coefficients' training objective exactly, so none of that needs another pass.
Robust standard errors (``--model.cov_type HC0..HC3``) do: each row's residual and leverage, so a
second pass with the solution sums the covariance's meat (``linreg.lstsq.robust``), the ranks' added.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

from linreg.errors import LinRegError
from linreg.lstsq import LeastSquares, Optimum
from linreg.lstsq.robust import Sandwich, covariance
from linreg.lstsq.step import curvature


@dataclasses.dataclass
class Scaling:
    """The model's coordinates (None: raw units): what the penalties and the curvature are measured in."""

    x_mean: Tensor | None
    x_scale: Tensor | None
    y_scale: Tensor | None


class ExactSolution:
    """The optimum, the R factor it came from, and the loss's curvature (largest, smallest eigenvalue,
    mean squared row norm) in the model's coordinates."""

    def __init__(
        self,
        least_squares: LeastSquares,
        optimum: Optimum,
        curvature: tuple[float, float, float],
        intervals: dict[str, Any] | None = None,
    ) -> None:
        self.least_squares, self.optimum, self.curvature = least_squares, optimum, curvature
        self.intervals = intervals  # the parameters' covariance and what else ``predict --interval`` needs

    @classmethod
    def measure(
        cls,
        rows: Callable[[str], Iterable[dict[str, Any]]],
        hp: Any,
        scaling: Scaling,
        device: torch.device,
        gather: Callable[[Tensor], Tensor] | None,
    ) -> ExactSolution:
        """One pass over this rank's training rows (``rows(purpose)``: a fresh pass, its batches), a second
        one for a robust covariance; ``gather``: the strategy's all_gather under DDP."""
        ls = LeastSquares(hp.in_features, hp.out_features, hp.fit_intercept, hp.l2, hp.l1, device=device)
        for view in rows("least squares"):
            ls.update(view["x"].to(device), view["y"].to(device), w=_weights(view, device))
        if gather is not None:
            ls.all_gather(gather)
        optimum = ls.solve(hp.feature_names, scaling.x_scale, scaling.y_scale)
        sandwich = None
        cov_type = getattr(hp, "cov_type", "nonrobust")
        if cov_type != "nonrobust" and optimum.inference is not None:
            sandwich = Sandwich(ls, optimum, cov_type)
            for view in rows(f"{cov_type} standard errors"):
                sandwich.update(view["x"].to(device), view["y"].to(device), _weights(view, device))
            if gather is not None:
                sandwich.all_gather(gather)
        optimum, intervals = covariance(ls, optimum, sandwich)
        d = hp.in_features
        x_mean = scaling.x_mean if scaling.x_mean is not None else torch.zeros(d, dtype=torch.float64)
        x_scale = scaling.x_scale if scaling.x_scale is not None else torch.ones(d, dtype=torch.float64)
        # the loss is a mean over the weight sum (the row count without sample weights)
        shape = curvature(ls.gram(x_mean, x_scale), ls.weight, hp.out_features, hp.l2, d)
        return cls(ls, optimum, shape, intervals)

    @property
    def condition_number(self) -> float | None:
        big, small, _ = self.curvature
        return big / small if small > 0 else None

    def compared(
        self, coef: Tensor, intercept: Tensor | None, penalized: bool, scaling: Scaling, mse: float | None = None
    ) -> Optimum:
        """The optimum, with these coefficients' training MSE as the compared model's: ``mse`` when
        given (measured from the model's own predictions), else exactly from the R factor. With
        penalties, both ``mse`` fields hold the penalized objective instead (in the model's units):
        that is what the fit minimizes, and what its gap to the optimum means."""
        ls, optimum = self.least_squares, self.optimum
        if penalized:
            objective = ls.objective(coef, intercept, scaling.x_scale, scaling.y_scale)
            best = optimum.objective if optimum.objective is not None else optimum.mse
            return dataclasses.replace(optimum, mse=best, sgd_mse=objective, penalized=True)
        measured = ls.objective(coef, intercept) if mse is None else mse
        return dataclasses.replace(optimum, sgd_mse=measured)


def stored_covariance(
    module: Any,
    *,
    asked: str = "--interval",
    model: str = "this checkpoint's model",
    solver: str = "--model.solver lstsq",
    cov_type: str = "--model.cov_type HC0..HC3",
) -> dict[str, Any]:
    """What the fit stored for prediction intervals (``linreg.lstsq.robust.covariance``, the module's
    ``intervals``), or why there is none: one refusal for ``predict --interval`` and the estimator's
    ``predict_interval``, each naming what was asked and the way to refit in its own words."""
    hp = module.hparams
    if hp.get("solver") != "lstsq":
        raise LinRegError(
            f"{asked}: {model} was trained by SGD; the intervals are those of the exact "
            "least-squares solution (statsmodels' get_prediction), whose weights SGD only approaches. Refit "
            f"with {solver} (and {cov_type} for robust ones)"
        )
    state: dict[str, Any] | None = getattr(module, "intervals", None)
    if state is None:
        raise LinRegError(
            f"{asked}: this checkpoint holds no parameter covariance (written by a linreg that did not "
            f"store it); refit it with {solver}"
        )
    if "cov" not in state:
        raise LinRegError(f"{asked}: the fit has no standard errors, so no intervals: {state['note']}")
    return state


def _weights(view: dict[str, Any], device: torch.device) -> Tensor | None:
    """A batch's sample weights (``linreg.data.weights``), on the solver's device; None without."""
    w = view.get("w")
    return None if w is None else w.to(device)
