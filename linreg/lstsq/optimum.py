"""What the exact solver found, and how another fit compares with it."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

EXACT = 1e-12  # an MSE below this share of the target's variance is an exact fit


@dataclass
class Optimum:
    """The closed-form fit and how the SGD solution compares with it, on the training rows."""

    coef: Tensor  # k × d, original units
    intercept: Tensor | None  # k; None without an intercept
    mse: float  # training MSE at the optimum, averaged over targets, original units
    sgd_mse: float | None  # the SGD model's training MSE, averaged over targets; None without its predictions
    target_var: float  # mean over targets of the training-target variance
    target_ms: float  # mean over targets of the training-target mean square
    n: int = 0  # training rows
    unique: bool = True  # False when collinear columns leave a family of optima (then coef is the min-norm one)
    collinear: list[str] = field(default_factory=list)  # features that are combinations of the others
    objective: float | None = None  # MSE + penalties in the model's units (= mse when unpenalized and unscaled)
    dropped: list[list[str]] = field(default_factory=list)  # per target: features the lasso set to exactly 0
    inference: list[dict[str, Any]] | None = None  # per target, OLS inference; None when it does not apply
    inference_note: str | None = None  # why inference is None
    cov_type: str = "nonrobust"  # the inference's covariance: nonrobust, or HC0-HC3 (linreg.lstsq.robust)
    penalized: bool = False  # mse and sgd_mse hold the penalized objective (see ExactSolution.compared)

    @property
    def exact_fit(self) -> bool:
        """A linear model fits the rows exactly: the unpenalized optimum's MSE is below 1e-12 of the
        target's variance (of its mean square, for a constant target). No relative gap describes a model
        measured against zero: the summary says so in words instead."""
        scale = self.target_var if self.target_var > 0 else self.target_ms
        return not self.penalized and self.mse <= EXACT * scale

    @property
    def excess(self) -> float:
        """The compared model's MSE (or objective) above the optimum, relative to the optimum's. NaN without
        a compared model, and for an exact fit (see ``exact_fit``), unless the model is exact too."""
        if self.sgd_mse is None or math.isnan(self.sgd_mse):
            return math.nan
        if self.exact_fit:
            scale = self.target_var if self.target_var > 0 else self.target_ms
            return 0.0 if self.sgd_mse <= max(EXACT * scale, 1e-24) else math.nan  # 1e-24: a target of zeros
        return max(self.sgd_mse - self.mse, 0.0) / self.mse
