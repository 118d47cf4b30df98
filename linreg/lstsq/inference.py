"""Ordinary-least-squares inference from the R factor, as statsmodels reports it."""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def ols_inference(
    design: np.ndarray,
    coef: np.ndarray,
    intercept: np.ndarray | None,
    rss: np.ndarray,
    tss: np.ndarray,
    n: int,
    s_x: np.ndarray,
    c_x: np.ndarray,
    names: list[str],
) -> list[dict[str, Any]]:
    """OLS inference per target, as statsmodels reports it.

    Cov(β) = σ²·(AᵀA)⁻¹ = σ²·R⁻¹R⁻ᵀ in R's coordinates; T maps those coordinates to the original
    units (feature i: 1/c_i; the intercept: 1 and −s_i/c_i, undoing the shift), so a coefficient's
    standard error is σ times the norm of its row of T·R⁻¹. Target scales factor out of σ.
    """
    from scipy.linalg import solve_triangular
    from scipy.stats import t as student

    p, o = design.shape[0], int(intercept is not None)
    T = np.diag(np.concatenate([np.ones(o), 1.0 / c_x]))
    if o:
        T[0, 1:] = -s_x / c_x
    unit_se = np.linalg.norm(T @ solve_triangular(design, np.eye(p)), axis=1)
    df = n - p
    quantile = float(student.ppf(0.975, df))
    out = []
    for j in range(coef.shape[0]):
        sigma = math.sqrt(rss[j] / df)
        params = np.concatenate([intercept[j : j + 1], coef[j]]) if intercept is not None else coef[j]
        se = sigma * unit_se
        with np.errstate(divide="ignore", invalid="ignore"):
            t = params / se
            r2 = 1.0 - rss[j] / tss[j]
        pvalues = 2.0 * student.sf(np.abs(t), df)
        rows = [
            {
                "se": float(se_i),
                "t": float(t_i),
                "p": float(p_i),
                "ci_low": float(v - quantile * se_i),
                "ci_high": float(v + quantile * se_i),
            }
            for v, se_i, t_i, p_i in zip(params, se, t, pvalues)
        ]
        out.append(
            {
                "coef": dict(zip(names, rows[o:])),
                "intercept": rows[0] if o else None,
                "sigma": sigma,
                "r2": float(r2),
                "r2_adj": float(1.0 - (n - o) / df * (1.0 - r2)),
                "df_resid": df,
            }
        )
    return out
