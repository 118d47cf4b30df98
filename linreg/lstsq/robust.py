"""Robust (HC0-HC3) standard errors and prediction intervals, as statsmodels computes them.

The sandwich (AᵀA)⁻¹·Σ wᵢeᵢ²aᵢaᵢᵀ·(AᵀA)⁻¹ needs each row's residual eᵢ and, for HC2 and HC3, its
leverage hᵢ = aᵢᵀ(AᵀA)⁻¹aᵢ: a second pass over the training rows once the solution is known. With
AᵀA = RᵀR both come from uᵢ = R⁻ᵀaᵢ (one triangular solve per batch): hᵢ = ‖uᵢ‖², and with the meat
kept in these coordinates, Σ wᵢeᵢ²uᵢuᵢᵀ, the covariance is R⁻¹·meat·R⁻ᵀ, no inverse of AᵀA formed.
The rows aᵢ are the solver's own (shifted and scaled, see ``LeastSquares``), so large column means
cost no digits; the same holds for a prediction's variance, which is why the intervals are computed
from the covariance in those coordinates and not from the one in original units.

statsmodels reports robust covariances with the normal distribution (z, not t) unless asked
otherwise (``use_t``), for the coefficients' p-values and intervals and for ``get_prediction``'s
intervals, whose observation interval adds the (non-robust) residual variance σ². So does linreg.

With sample weights every row is the weighted one, √w·aᵢ and √w·eᵢ (statsmodels' ``wexog``, ``wresid``),
and a new row predicted weighs 1 (``get_prediction``'s default): its observation variance is σ².
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch
from torch import Tensor

from linreg.lstsq.optimum import Optimum
from linreg.lstsq.solver import CHUNK, LeastSquares

COV_TYPES = ("nonrobust", "HC0", "HC1", "HC2", "HC3")
PINNED = 1e-10  # a leverage within this of 1: the fit passes through the row, and HC2/HC3 divide by 1 − h = 0


class Sandwich:
    """The meat of an HC covariance (per target, p × p, float64), summed batch by batch over the
    training rows with the final R factor and solution. Fixed-shape state: DDP ranks add theirs with
    one all_gather, as ``LeastSquares`` does."""

    def __init__(self, ls: LeastSquares, optimum: Optimum, cov_type: str) -> None:
        if cov_type not in COV_TYPES[1:]:
            raise ValueError(f"cov_type must be one of {', '.join(COV_TYPES[1:])}, got {cov_type!r}")
        self.ls, self.cov_type = ls, cov_type
        device = ls.R.device
        self.design = ls.R[: ls.p, : ls.p]
        self.full = torch.from_numpy(ls.design_coefficients(optimum.coef, optimum.intercept)).to(device)
        self.meat = torch.zeros(ls.k, ls.p, ls.p, dtype=torch.float64, device=device)
        self.rows = 0
        self.pinned = 0  # rows of leverage 1 (HC2, HC3 only)

    @torch.no_grad()
    def update(self, x: Tensor, y: Tensor, w: Tensor | None = None) -> None:
        """Add a batch's rows (w: their sample weights; none: 1 each)."""
        ls, rows = self.ls, x.shape[0]
        device = self.meat.device
        x = x.reshape(rows, ls.d).to(device, torch.float64)
        y = y.reshape(rows, ls.k).to(device, torch.float64)
        root = None if w is None else w.reshape(rows, 1).to(device, torch.float64).sqrt()
        for i in range(0, rows, CHUNK):
            self._absorb(x[i : i + CHUNK], y[i : i + CHUNK], None if root is None else root[i : i + CHUNK])
        self.rows += rows

    def _absorb(self, x: Tensor, y: Tensor, root: Tensor | None = None) -> None:
        ls = self.ls
        a = (x - ls.shift[: ls.d]) / ls.scale[: ls.d]
        if ls.fit_intercept:
            a = torch.cat([torch.ones_like(a[:, :1]), a], 1)
        e = (y - ls.shift[ls.d :]) / ls.scale[ls.d :] - a @ self.full  # residuals in R's target units
        if root is not None:  # the weighted rows and residuals, as R factors them
            a, e = a * root, e * root
        u = torch.linalg.solve_triangular(self.design.T, a.T, upper=False)  # p × rows: R⁻ᵀaᵢ
        weight = torch.ones_like(e[:, 0])
        if self.cov_type in ("HC2", "HC3"):
            free = 1.0 - u.square().sum(0)  # 1 − hᵢ
            self.pinned += int((free < PINNED).sum())
            weight = 1.0 / free if self.cov_type == "HC2" else 1.0 / free.square()
        for j in range(ls.k):
            self.meat[j] += (u * (weight * e[:, j].square())) @ u.T

    def all_gather(self, gather: Any) -> None:
        """Every rank's meat added up, on every rank (gather: Lightning's ``trainer.strategy.all_gather``)."""
        head = torch.tensor([self.rows, self.pinned], dtype=torch.float64, device=self.meat.device)
        gathered = gather(torch.cat([head, self.meat.flatten()]))
        total = gathered.sum(0) if gathered.ndim == 2 else gathered
        self.rows, self.pinned = int(total[0]), int(total[1])
        self.meat = total[2:].reshape(self.meat.shape).to(self.meat)


def covariance(ls: LeastSquares, optimum: Optimum, sandwich: Sandwich | None = None) -> tuple[Optimum, dict[str, Any]]:
    """The parameters' covariance (non-robust, or the sandwich's), the optimum with its inference
    from it, and what ``interval_columns`` needs (plain tensors and values: it travels in the checkpoint).

    Without inference (penalties, collinear columns, too few rows) there is no covariance: the dict
    then holds only the reason, ``note``."""
    cov_type = sandwich.cov_type if sandwich is not None else "nonrobust"
    if optimum.inference is None:
        return dataclasses.replace(optimum, cov_type=cov_type), {"note": optimum.inference_note}
    if sandwich is not None and sandwich.pinned:
        note = (
            f"{sandwich.pinned} training row(s) have leverage 1 (the fit passes through them exactly), "
            f"where {cov_type} divides by 1 − leverage = 0; use --model.cov_type HC0 or HC1"
        )
        return dataclasses.replace(optimum, inference=None, inference_note=note, cov_type=cov_type), {"note": note}
    from scipy.linalg import solve_triangular

    R, s_x, _, c_x, c_y = ls._numpy()
    p, o, d, n = ls.p, int(ls.fit_intercept), ls.d, optimum.n
    df = optimum.inference[0]["df_resid"]
    r_inv = solve_triangular(R[:p, :p], np.eye(p))
    sigma2 = np.array([entry["sigma"] ** 2 for entry in optimum.inference])
    if sandwich is None:
        scaled = sigma2[:, None, None] * (r_inv @ r_inv.T)[None]
    else:
        meat = sandwich.meat.cpu().numpy() * (n / df if cov_type == "HC1" else 1.0)
        scaled = c_y[:, None, None] ** 2 * (r_inv[None] @ meat @ r_inv.T[None])
    T = np.diag(np.concatenate([np.ones(o), 1.0 / c_x]))  # R's coordinates to original units (ols_inference)
    if o:
        T[0, o:] = -s_x / c_x
    cov = T[None] @ scaled @ T.T[None]
    inference = optimum.inference
    if sandwich is not None:
        inference = [_robust(entry, c, _params(optimum, j)) for j, (entry, c) in enumerate(zip(inference, cov))]
    inference = [entry | {"cov_type": cov_type} for entry in inference]
    state = {
        "cov_type": cov_type,
        "df": int(df),
        "n": int(n),
        "fit_intercept": bool(o),
        "sigma2": torch.from_numpy(sigma2),
        "cov": torch.from_numpy(cov),  # k × p × p, original units, the intercept first (statsmodels' cov_params)
        "shift": torch.from_numpy(s_x[:d].copy()),
        "scale": torch.from_numpy(c_x[:d].copy()),
        "cov_scaled": torch.from_numpy(scaled),  # the same in R's coordinates, for accurate intervals
    }
    return dataclasses.replace(optimum, inference=inference, cov_type=cov_type), state


def _params(optimum: Optimum, j: int) -> np.ndarray:
    coef = optimum.coef[j].double().cpu().numpy()
    if optimum.intercept is None:
        return coef
    return np.concatenate([optimum.intercept[j : j + 1].double().cpu().numpy(), coef])


def _robust(entry: dict[str, Any], cov: np.ndarray, params: np.ndarray) -> dict[str, Any]:
    """One target's table with a robust covariance: z statistics, normal p-values and intervals (statsmodels)."""
    from scipy.stats import norm

    se = np.sqrt(np.diag(cov))
    with np.errstate(divide="ignore", invalid="ignore"):
        z = params / se
    pvalues, q = 2.0 * norm.sf(np.abs(z)), float(norm.ppf(0.975))
    rows = [
        {"se": float(s), "t": float(t), "p": float(pv), "ci_low": float(v - q * s), "ci_high": float(v + q * s)}
        for v, s, t, pv in zip(params, se, z, pvalues)
    ]
    o = int(entry["intercept"] is not None)
    return entry | {"coef": dict(zip(entry["coef"], rows[o:])), "intercept": rows[0] if o else None}


def interval_columns(state: dict[str, Any], x: np.ndarray, mean: np.ndarray, level: float) -> dict[str, np.ndarray]:
    """statsmodels' ``get_prediction(x).summary_frame(alpha=1 − level)`` intervals around ``mean`` (rows × k,
    the model's predictions): ``mean_lower``, ``mean_upper`` (the mean's), ``lower``, ``upper`` (a new
    observation's), each rows × k. ``state``: what ``covariance`` stored at fit time."""
    from scipy.stats import norm
    from scipy.stats import t as student

    x = np.asarray(x, dtype=np.float64)
    shift, scale = (np.asarray(state[key], dtype=np.float64) for key in ("shift", "scale"))
    a = (x - shift) / scale
    if state["fit_intercept"]:
        a = np.hstack([np.ones((a.shape[0], 1)), a])
    scaled = np.asarray(state["cov_scaled"], dtype=np.float64)
    var_mean = np.stack([np.einsum("ip,pq,iq->i", a, v, a) for v in scaled], axis=1)
    var_obs = var_mean + np.asarray(state["sigma2"], dtype=np.float64)
    upper = (1.0 + level) / 2.0
    q = float(student.ppf(upper, state["df"]) if state["cov_type"] == "nonrobust" else norm.ppf(upper))
    se_mean, se_obs = np.sqrt(np.maximum(var_mean, 0.0)), np.sqrt(var_obs)
    return {
        "mean_lower": mean - q * se_mean,
        "mean_upper": mean + q * se_mean,
        "lower": mean - q * se_obs,
        "upper": mean + q * se_obs,
    }
