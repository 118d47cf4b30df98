"""The fit summary: what a fit found, as a printed table and as ``summary.json`` beside the checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from linreg.io import write_json
from linreg.module import LinRegModule
from linreg.tables import default_names


def print_metrics(metrics: dict[str, Any], prefix: str) -> None:
    for name, value in sorted(metrics.items()):
        if name.startswith(prefix):
            print(f"{name:<24} {float(value):.6g}")


def fit_summary(model: LinRegModule, trainer: Any) -> dict[str, Any]:
    """Coefficients (SGD beside the closed form, in original units) and the fit's final metrics."""
    hp = model.hparams
    features = hp.feature_names or default_names("x", hp.in_features)
    targets = hp.target_names or default_names("y", hp.out_features)
    w, b = model.coefficients()
    opt = model.optimum
    per_target = {}
    for j, t in enumerate(targets):
        per_target[t] = {
            "sgd": {"coef": dict(zip(features, w[j].tolist())), "intercept": float(b[j])},
            "closed_form": None
            if opt is None
            else {"coef": dict(zip(features, opt.coef[j].tolist())), "intercept": float(opt.intercept[j])},
        }
    metrics = dict(model.latest)
    summary = {
        "epochs": trainer.current_epoch,
        "steps": trainer.global_step,
        "features": features,
        "targets": per_target,
        "metrics": metrics,
        "optimum": None if opt is None else {"mse": opt.mse, "sgd_mse": opt.sgd_mse, "excess": opt.excess},
        "checkpoint": trainer.checkpoint_callback.last_model_path if trainer.checkpoint_callback else None,
    }
    if hp.in_features == 1:
        with torch.no_grad():
            x5 = torch.full((1, 1), 5.0, device=model.device, dtype=model.model.lin.weight.dtype)
            summary["prediction_at_5"] = {t: float(v) for t, v in zip(targets, model(x5)[0])}
    return summary


def far_from_optimum_advice(excess: float, standardized: bool) -> str:
    """Say plainly that SGD stopped short, and what usually closes the gap."""
    steps = ["--data.standardize true"] if not standardized else []
    steps += ["a larger --model.lr (or --model.momentum 0.9)", "more --trainer.max_epochs"]
    why = "" if not standardized else " (standardized already: collinear features converge slowly)"
    return (
        f"warning: SGD ended {100 * excess:.3g}% above the least-squares optimum{why}; try "
        + ", ".join(steps)
        + "; the closed-form coefficients are in the table above"
    )


def print_fit_summary(model: LinRegModule, trainer: Any) -> dict[str, Any]:
    """Print the fit as a short table and save it as summary.json beside the checkpoint."""
    s = fit_summary(model, trainer)
    lines = [f"linreg: fit done, {s['epochs']} epoch(s), {s['steps']} step(s)"]
    if "train/loss" in s["metrics"]:
        lines.append(f"  final loss      {s['metrics']['train/loss']:.8f}")
    for name in ("train/r2", "val/mse", "val/r2"):
        if name in s["metrics"]:
            lines.append(f"  {name:<15} {s['metrics'][name]:.6g}")
    lines.append(f"  {'target':<10} {'term':<16} {'sgd':>14} {'closed form':>14}")
    for t, d in s["targets"].items():
        cf = d["closed_form"] or {"coef": {}, "intercept": float("nan")}
        for f, v in d["sgd"]["coef"].items():
            lines.append(f"  {t:<10} {f:<16} {v:>14.6g} {cf['coef'].get(f, float('nan')):>14.6g}")
        lines.append(f"  {t:<10} {'(intercept)':<16} {d['sgd']['intercept']:>14.6g} {cf['intercept']:>14.6g}")
    if len(s["features"]) == 1 and len(s["targets"]) == 1:
        t = next(iter(s["targets"]))
        w, b = s["targets"][t]["sgd"]["coef"][s["features"][0]], s["targets"][t]["sgd"]["intercept"]
        lines.append(f"  w = {w:.3f}, b = {b:.3f}, prediction f(5) = {s['prediction_at_5'][t]:.3f}")
    opt = s["optimum"]
    if opt is not None:
        lines.append(
            f"  optimum mse {opt['mse']:.6g}; SGD mse {opt['sgd_mse']:.6g} (excess {100 * opt['excess']:.3g}%)"
        )
        if opt["excess"] > 0.01:
            lines.append("  " + far_from_optimum_advice(opt["excess"], model.hparams.standardize))
    if s["checkpoint"]:
        path = write_json(Path(s["checkpoint"]).parent / "summary.json", s)
        lines.append(f"  checkpoint: {s['checkpoint']}")
        lines.append(f"  summary:    {path}")
    print("\n".join(lines))
    return s
