"""The SGD step and momentum for a least-squares loss, from the extremes of its Hessian's spectrum."""

from __future__ import annotations

import math

import torch
from torch import Tensor

SAFETY = 1.2  # the automatic step is tuned for a largest eigenvalue this much larger than measured


def auto_step(
    big: float, small: float, lr: float | str, momentum: float | str, batch: int | None, r2: float
) -> tuple[float, float]:
    """The SGD step and momentum for a quadratic loss whose Hessian has eigenvalues in [small, big].

    Full batch, both ``auto``: the heavy-ball optimum (Polyak), step 4/(√L+√μ)² and momentum
    ((√κ−1)/(√κ+1))², whose error shrinks by about 1 − 2/√κ per epoch. A given momentum β gets the
    largest step of that optimal range that is safely stable, min((1−√β)²/μ, (1+β)/L). Mini-batches
    add noise: the effective step lr/(1−β) is also held below 1/L and batch/R² (R² the mean squared
    row norm of the Hessian), where constant-step SGD with averaging converges (Bach & Moulines 2013).
    A given lr always wins, with momentum 0 when that is ``auto``.
    """
    if lr != "auto":
        return float(lr), 0.0 if momentum == "auto" else float(momentum)
    if big <= 0:
        return 1.0, 0.0 if momentum == "auto" else float(momentum)
    # Polyak's pair sits within a factor 1 + 1/κ of instability at the top of the spectrum: float32
    # rounding alone tips an ill-conditioned problem over. Tuning for a spectrum 20% wider keeps a margin.
    big *= SAFETY
    small = min(small if small > 0 else big, big)
    if momentum == "auto":
        root = math.sqrt(big / small)
        beta = ((root - 1) / (root + 1)) ** 2
        step = 4.0 / (math.sqrt(big) + math.sqrt(small)) ** 2
    else:
        beta = float(momentum)
        step = min((1 - math.sqrt(beta)) ** 2 / small, (1 + beta) / big)
    if batch is not None:
        step = min(step / (1 - beta), 1.0 / big, batch / r2) * (1 - beta)
    return step, beta


def curvature(gram: Tensor, rows: float, targets: int, l2: float, features: int) -> tuple[float, float, float]:
    """The largest and smallest eigenvalue of the Hessian of nn.MSELoss (a mean over rows and targets)
    + l2·‖W‖², and its mean squared row norm R², from the design's Gram matrix AᵀA (``LeastSquares.gram``).
    With sample weights AᵀWA, and ``rows`` their sum: the weighted mean's Hessian.

    Exactly collinear directions (eigenvalues below 1e-12 of the largest) do not count as the smallest.
    """
    hessian = gram * (2.0 / (rows * targets))
    hessian.diagonal()[:features] += 2.0 * l2  # the ridge penalty's curvature (not the intercept's)
    eig = torch.linalg.eigvalsh(hessian)
    big = float(eig[-1])
    small = float(eig[eig > big * 1e-12][0]) if big > 0 else 0.0
    r2 = float(torch.diagonal(gram).sum()) * 2.0 / (rows * targets)
    return big, small, r2
