"""What the exact solver found, and how another fit compares with it."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor


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

    @property
    def excess(self) -> float:
        """SGD's MSE above the optimum, relative to the optimum; when the fit is exact, relative to the
        target's variance, or to its mean square when the target is constant."""
        if self.sgd_mse is None or math.isnan(self.sgd_mse):
            return math.nan
        for scale in (self.mse, self.target_var, self.target_ms):
            if scale > 1e-9 * max(self.target_var, self.target_ms, 1e-30):
                return max(self.sgd_mse - self.mse, 0.0) / scale
        # A target that is exactly 0: an SGD error at rounding level is no gap.
        return 0.0 if self.sgd_mse <= max(self.mse, 1e-12) else float("inf")
