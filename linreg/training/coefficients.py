"""Coefficients between the model's coordinates and original units.

The model trains on standardized features and a centred target (scaled too with ``standardize_target``):
z = (x − x_mean)/x_scale and t = (y − y_mean)/y_scale. Users, the summary and the exact solver speak
original units. Both directions go through float64, so a float64 solution loses nothing before the
model's own dtype.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn


@torch.no_grad()
def to_original(module: Any, lin: nn.Linear) -> tuple[Tensor, Tensor | None]:
    """``lin``'s weights (k × d) and intercepts (k; None without an intercept) in original units, float64."""
    hp = module.hparams
    w = lin.weight.detach().double().cpu()
    b = lin.bias.detach().double().cpu() if lin.bias is not None else torch.zeros(w.shape[0], dtype=torch.float64)
    if hp.standardize:
        w = w / module.x_scale.double().cpu()
        b = b - w @ module.x_mean.double().cpu()
    if hp.standardize:
        ys, ym = module.y_scale.double().cpu(), module.y_mean.double().cpu()
        w, b = w * ys[:, None], b * ys + ym
    return w, (b if hp.fit_intercept else None)


@torch.no_grad()
def from_original(module: Any, lin: nn.Linear, coef: Tensor, intercept: Tensor | None) -> None:
    """Put a solution given in original units (k × d, k) into ``lin``, through the module's standardization."""
    hp, device = module.hparams, lin.weight.device
    w = coef.double().to(device)
    b = intercept.double().to(device) if intercept is not None else torch.zeros(w.shape[0], device=device)
    if hp.standardize:
        ys, ym = module.y_scale.double().to(device), module.y_mean.double().to(device)
        w, b = w / ys[:, None], (b - ym) / ys
    if hp.standardize:
        b = b + w @ module.x_mean.double().to(device)
        w = w * module.x_scale.double().to(device)
    lin.weight.copy_(w.to(lin.weight.dtype))
    if lin.bias is not None:
        lin.bias.copy_(b.to(lin.bias.dtype))
