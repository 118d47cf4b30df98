"""The fit summary: what a fit found, as a printed table and as ``summary.json`` beside the checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from linreg.data.tables import default_names
from linreg.io import write_json
from linreg.training.module import LinRegModule


def print_metrics(metrics: dict[str, Any], prefix: str) -> None:
    for name, value in sorted(metrics.items()):
        if name.startswith(prefix):
            print(f"{name:<24} {float(value):.6g}")


def _solution(coef: Any, intercept: Any, features: list[str], j: int) -> dict[str, Any]:
    return {
        "coef": dict(zip(features, coef[j].tolist())),
        "intercept": None if intercept is None else float(intercept[j]),
    }


def fit_summary(model: LinRegModule, trainer: Any) -> dict[str, Any]:
    """What the fit found, in original units: the trained model's coefficients (``fitted``; also under
    ``sgd`` for SGD fits), the least-squares solution with its inference (``closed_form``), the final
    metrics and how far the trained model is from the optimum."""
    hp = model.hparams
    features = hp.feature_names or default_names("x", hp.in_features)
    targets = hp.target_names or default_names("y", hp.out_features)
    w, b = model.coefficients()
    opt = model.optimum
    inference = getattr(opt, "inference", None)
    inference_note = getattr(opt, "inference_note", None)
    if inference and any(entry["sigma"] == 0 for entry in inference):
        # statsmodels would print zero standard errors and infinite t: say what it means instead
        inference, inference_note = None, "the fit is exact (zero residuals), so standard errors are 0 and t undefined"
    per_target = {}
    for j, t in enumerate(targets):
        fitted = _solution(w, b, features, j)
        if hp.l1:
            fitted["dropped"] = [f for f, v in fitted["coef"].items() if v == 0.0]
        entry: dict[str, Any] = {"fitted": fitted}
        if hp.solver == "sgd":
            entry["sgd"] = fitted
        entry["closed_form"] = None if opt is None else _solution(opt.coef, opt.intercept, features, j)
        if opt is not None and hp.l1 and opt.dropped:
            entry["closed_form"]["dropped"] = list(opt.dropped[j])
        entry["inference"] = inference[j] if inference else None
        per_target[t] = entry
    groups = trainer.optimizers[0].param_groups if hp.solver == "sgd" and trainer.optimizers else []
    group = groups[0] if groups else {}
    summary = {
        "epochs": trainer.current_epoch,
        "steps": trainer.global_step,
        "rows": getattr(opt, "n", None),
        # --data.weights: the fit is weighted least squares and every mse / mae / r2 here is weighted
        "weights": getattr(getattr(trainer, "datamodule", None), "weights", None),
        "solver": hp.solver,
        "features": features,
        "targets": per_target,
        # The saved model's metrics (one pass after the last update); the epochs' running means apart.
        "metrics": dict(model.final_metrics or model.latest),
        "epoch_means": dict(model.latest),
        "optimum": None
        if opt is None
        else {
            # With penalties, these two are the penalized objective in the model's units (ExactSolution.compared).
            "penalized": bool(hp.l1 or hp.l2),
            "mse": opt.mse,
            "sgd_mse": opt.sgd_mse,
            "excess": opt.excess,
            "exact_fit": opt.exact_fit,
            "unique": getattr(opt, "unique", True),
            "collinear": list(getattr(opt, "collinear", [])),
            "inference_note": inference_note,
            "cov_type": getattr(opt, "cov_type", "nonrobust"),
        },
        "sgd": None
        if hp.solver != "sgd"
        else {
            "lr": group.get("lr"),
            "momentum": group.get("momentum"),
            "averaged_from_epoch": model.averaging.start_epoch if model.averaging is not None else None,
            "condition_number": _condition(model),
        },
        "checkpoint": trainer.checkpoint_callback.last_model_path if trainer.checkpoint_callback else None,
    }
    if opt is not None and hp.solver == "sgd" and opt.exact_fit and not opt.excess == 0.0:
        summary["exact_fit"] = _exact_fit_report(summary, model.final_metrics)
    if opt is not None and hp.solver == "sgd" and opt.excess > 0.01:
        summary["advice"] = diagnose(
            model.loss_history, _condition(model), bool(hp.standardize), _minibatch(trainer), lasso=bool(hp.l1)
        )
    if hp.in_features == 1:
        with torch.no_grad():
            x5 = torch.full((1, 1), 5.0, device=model.device, dtype=model.model.lin.weight.dtype)
            summary["prediction_at_5"] = {t: float(v) for t, v in zip(targets, model(x5)[0])}
    return summary


def _exact_fit_report(summary: dict[str, Any], metrics: dict[str, float]) -> dict[str, Any]:
    """An SGD fit of rows a linear model fits exactly: its MSE, R², and its coefficient furthest from the
    exact one (in original units), where a relative excess over an MSE of 0 would mean nothing."""
    worst: tuple[float, str] = (0.0, "")
    for target, entry in summary["targets"].items():
        fitted, exact = entry["fitted"], entry["closed_form"] or {"coef": {}, "intercept": None}
        pairs = [(fitted["coef"][f], exact["coef"].get(f), f) for f in fitted["coef"]]
        pairs.append((fitted["intercept"], exact["intercept"], "(intercept)"))
        for got, want, name in pairs:
            if got is not None and want is not None and abs(got - want) > worst[0]:
                worst = (abs(got - want), name if len(summary["targets"]) == 1 else f"{target}: {name}")
    return {
        "sgd_mse": metrics.get("train/mse"),
        "r2": metrics.get("train/r2"),
        "largest_coef_error": worst[0],
        "term": worst[1],
        "try": "--model.solver lstsq",
    }


def _condition(model: LinRegModule) -> float | None:
    return model.exact.condition_number if model.exact is not None else None


def _minibatch(trainer: Any) -> bool:
    loader = trainer.train_dataloader
    return bool(loader is not None and getattr(loader, "n_batches", 1) > 1)


ILL_CONDITIONED = 1e3  # above this condition number a fixed step needs many epochs (error ~ 1 - 2/sqrt(kappa))


def diagnose(
    history: list[float], condition: float | None, standardized: bool, minibatch: bool, lasso: bool = False
) -> dict[str, str]:
    """Why SGD stopped above the optimum, read from the loss curve and the loss's condition number.

    - ``ill-conditioned``: nearly collinear features; a fixed step crawls along the valley.
    - ``descending``: the loss still falls measurably epoch after epoch; it was stopped too early.
    - ``stalled``: the loss no longer falls with full batches, or with an L1 penalty, whose proximal
      steps stop short of the lasso's kinks: more epochs do not help, the exact solver does.
    - ``noise floor``: the loss no longer falls but wanders: the step is too large for the noise of
      its mini-batches; more epochs or a larger step would not help.
    """
    steps: list[str] = [] if standardized else ["--data.standardize true"]
    tail = history[-max(len(history) // 5, 4) :]
    half = len(tail) // 2
    early, late = (sum(tail[:half]) / max(half, 1), sum(tail[half:]) / max(len(tail) - half, 1)) if half else (0, 0)
    falls = sum(b < a for a, b in zip(tail, tail[1:]))
    descending = half > 0 and late < early * (1 - 1e-4) and falls >= 0.8 * (len(tail) - 1)
    if condition is not None and condition > ILL_CONDITIONED and (descending or not minibatch):
        kind = "ill-conditioned"
        why = f"the features are nearly collinear (condition number {condition:.3g}), so SGD crawls along a valley"
        steps += ["--model.solver lstsq for the exact solution", "or many more --trainer.max_epochs"]
    elif descending:
        kind = "descending"
        why = "the loss was still falling when training stopped"
        steps += ["more --trainer.max_epochs", "or a larger --model.lr (or --model.lr auto)"]
    elif lasso or not minibatch:
        kind = "stalled"
        why = "the loss stopped falling" + (": proximal SGD stops short of the lasso's exact zeros" if lasso else "")
        steps += ["--model.solver lstsq for the exact optimum" + (" (coordinate descent)" if lasso else "")]
    else:
        kind = "noise floor"
        why = "the loss stopped falling and wanders: the step is too large for the noise of its mini-batches"
        steps += ["a smaller --model.lr", "a larger --data.batch_size", "or --model.average true"]
    return {"kind": kind, "why": why, "try": ", ".join(steps)}


def far_from_optimum_advice(excess: float, advice: dict[str, str]) -> str:
    """Say plainly that SGD stopped short, why, and what closes the gap."""
    return (
        f"warning: SGD ended {100 * excess:.3g}% above the least-squares optimum: {advice['why']} "
        f"({advice['kind']}); try {advice['try']}; the closed-form coefficients are in the table above"
    )


def print_fit_summary(model: LinRegModule, trainer: Any) -> dict[str, Any]:
    """Print the fit as a short table and save it as summary.json beside the checkpoint."""
    s = fit_summary(model, trainer)
    lines = [f"linreg: fit done, {s['epochs']} epoch(s), {s['steps']} step(s)"]
    if s["weights"]:
        lines.append(f"  weights         column {s['weights']!r}: weighted least squares; losses and metrics weighted")
    if "train/loss" in s["metrics"]:
        lines.append(f"  final loss      {s['metrics']['train/loss']:.8f}")
    if "train/loss" in s["epoch_means"] and s["epoch_means"] != s["metrics"]:
        mean = s["epoch_means"]["train/loss"]
        lines.append(f"  epoch loss      {mean:.8f} (the last epoch's mean, before its updates)")
    for name in ("train/r2", "val/mse", "val/r2"):
        if name in s["metrics"]:
            lines.append(f"  {name:<15} {s['metrics'][name]:.6g}")
    fitted = "sgd" if s["solver"] == "sgd" else "lstsq"
    wide = max([16, *map(len, s["features"])])  # an indicator's name (firm[T.General Electric]) is long
    header = f"  {'target':<10} {'term':<{wide}} {fitted:>14} {'closed form':>14}"
    robust = s["optimum"] is not None and s["optimum"]["cov_type"] != "nonrobust"
    stat = "z" if robust else "t"  # statsmodels' robust covariances go with the normal distribution
    if any(d["inference"] for d in s["targets"].values()):  # a column only when it has values
        header += f" {'std err':>11} {stat:>9} {f'p>|{stat}|':>9}  {'95% interval':>25}"
    lines.append(header)
    nan = float("nan")
    for t, d in s["targets"].items():
        cf = d["closed_form"] or {"coef": {}, "intercept": None}
        inf = d["inference"] or {}
        terms = [
            (f, d["fitted"]["coef"][f], cf["coef"].get(f, nan), (inf.get("coef") or {}).get(f)) for f in s["features"]
        ]
        if d["fitted"]["intercept"] is not None:
            terms.append(("(intercept)", d["fitted"]["intercept"], cf["intercept"], inf.get("intercept")))
        for name, value, closed, stats in terms:
            row = f"  {t:<10} {name:<{wide}} {value:>14.6g} {closed if closed is not None else nan:>14.6g}"
            if stats:
                ci = f"[{stats['ci_low']:.5g}, {stats['ci_high']:.5g}]"
                row += f" {stats['se']:>11.4g} {stats['t']:>9.4g} {stats['p']:>9.3g}  {ci:>25}"
            lines.append(row)
        if inf:
            lines.append(
                f"  {t:<10} residual std err {inf['sigma']:.6g} on {inf['df_resid']} df; "
                f"R² {inf['r2']:.6g}, adjusted R² {inf['r2_adj']:.6g}"
            )
    if any(d["inference"] for d in s["targets"].values()):
        cov = s["optimum"]["cov_type"]
        lines.append(
            f"  covariance: {cov}, heteroscedasticity-robust; z and p from the normal distribution (as statsmodels)"
            if robust
            else "  covariance: nonrobust (constant error variance); t and p from Student's t"
        )
    if len(s["features"]) == 1 and len(s["targets"]) == 1:
        t = next(iter(s["targets"]))
        w, b = s["targets"][t]["fitted"]["coef"][s["features"][0]], s["targets"][t]["fitted"]["intercept"]
        lines.append(f"  w = {w:.3f}, b = {b or 0.0:.3f}, prediction f(5) = {s['prediction_at_5'][t]:.3f}")
    opt = s["optimum"]
    if opt is not None:
        if opt["collinear"]:
            lines.append(
                f"  collinear: {', '.join(opt['collinear'])}; the optimum is not unique, the closed form "
                "shown is the minimum-norm solution"
            )
        if opt["inference_note"]:
            lines.append(f"  no standard errors: {opt['inference_note']}")
        for t, d in s["targets"].items():
            for name, part in (("lasso", d["closed_form"] or {}), (fitted, d["fitted"])):
                if part.get("dropped"):
                    lines.append(f"  {t}: the {name} solution dropped {', '.join(part['dropped'])} (coefficient 0)")
        what = "objective (MSE + penalties, model units)" if opt["penalized"] else "mse"
        what = f"weighted {what}" if s["weights"] else what
        if "exact_fit" in s:
            e = s["exact_fit"]
            r2 = f", R² {e['r2']:.9g}" if e["r2"] is not None else ""
            lines.append(
                f"  the rows are fit exactly by a linear model (optimum mse {opt['mse']:.3g}); SGD's mse "
                f"{e['sgd_mse']:.6g}{r2}, largest coefficient error {e['largest_coef_error']:.6g} ({e['term']}); "
                f"for the exact fit use {e['try']}"
            )
        elif opt["exact_fit"]:
            lines.append(f"  the rows are fit exactly by a linear model (optimum mse {opt['mse']:.3g}) and by this one")
        else:
            lines.append(
                f"  optimum {what} {opt['mse']:.6g}; {fitted} {opt['sgd_mse']:.6g} (excess {100 * opt['excess']:.3g}%)"
            )
        if "advice" in s:
            lines.append("  " + far_from_optimum_advice(opt["excess"], s["advice"]))
    if s["checkpoint"]:
        path = write_json(Path(s["checkpoint"]).parent / "summary.json", s)
        lines.append(f"  checkpoint: {s['checkpoint']}")
        lines.append(f"  summary:    {path}")
    elif trainer.fast_dev_run:
        lines.append("  checkpoint: none (--trainer.fast_dev_run is a debug run; it saves nothing)")
    print("\n".join(lines))
    return s
