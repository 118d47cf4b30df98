"""The exact solver against scikit-learn, and SGD's time to the optimum (issue 24's "keep" row).

- linreg's least-squares solver (float64 TSQR over 65,536-row blocks) alone, and as ``linreg fit
  --model.solver lstsq`` (trainer.fit: the solver's pass, the epoch that measures it, the checkpoint),
  against scikit-learn's ``LinearRegression.fit`` on the same array (skipped when scikit-learn is not
  installed); the issue's figure is the solver alone over scikit-learn (goal <= 0.3);
- the ``trainer.fit`` time SGD needs to reach <= 1 % excess MSE (a probe run finds the fewest epochs,
  a clean run is timed), standardized, at ``--converge-batch`` and ``--converge-lr``.

Usage: ``python -m scripts.bench.exact [--rows N] [--tiny] [--json PATH]``; the issue's size is 2,000,000.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
from torch import Tensor

from linreg.lstsq import LeastSquares
from scripts.bench.common import CHUNK, clock, fit_args, make_data, run_linreg, run_main, training_mse, write_npz


def _flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--converge-batch", type=int, default=None, help="default 65536; --tiny 1024")
    p.add_argument("--converge-lr", type=float, default=0.1, help="SGD lr of the convergence run (standardized)")
    p.add_argument("--max-converge-epochs", type=int, default=None, help="default 300; --tiny 5")
    p.add_argument("--excess", type=float, default=0.01, help="excess-MSE goal of the convergence run")


class ExcessProbe(L.Callback):
    """Stops a fit at the first epoch whose training MSE is within ``target`` of the optimum's."""

    def __init__(self, x: Tensor, y: Tensor, optimum_mse: float, target: float) -> None:
        self.x, self.y, self.optimum_mse, self.target = x, y, optimum_mse, target
        self.excess: list[float] = []

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        excess = (training_mse(pl_module, self.x, self.y) - self.optimum_mse) / self.optimum_mse
        self.excess.append(excess)
        if excess <= self.target:
            trainer.should_stop = True


def closed_form(x: Tensor, y: Tensor, npz: Path, tmp: Path) -> dict[str, Any]:
    t0 = clock()
    ls = LeastSquares(x.shape[1], 1)
    for s in range(0, len(x), CHUNK):
        ls.update(x[s : s + CHUNK], y[s : s + CHUNK])
    opt = ls.solve()
    result: dict[str, Any] = {"linreg_s": clock() - t0, "optimum_mse": opt.mse, "sklearn_s": None}
    args = fit_args(npz, len(x), 1, "--model.solver=lstsq", "--figures.enabled=false", "--data.standardize=true")
    cli, _ = run_linreg(args, tmp / "lstsq")
    result["lstsq_fit_s"] = cli.fit_seconds
    try:
        from sklearn.linear_model import LinearRegression
    except ImportError:
        return result
    xn, yn = x.numpy(), y[:, 0].numpy()
    t0 = clock()
    sk = LinearRegression().fit(xn, yn)
    result["sklearn_s"] = clock() - t0
    result["max_abs_coef_diff"] = float(np.abs(sk.coef_ - opt.coef[0].numpy()).max())
    return result


def convergence(npz: Path, tmp: Path, x: Tensor, y: Tensor, optimum_mse: float, opts: argparse.Namespace) -> dict:
    """Fewest epochs to the excess-MSE goal (a probe run stops there), then a clean timed fit of that many."""
    batch = opts.converge_batch or (1024 if opts.tiny else 65536)
    max_epochs = opts.max_converge_epochs or (5 if opts.tiny else 300)
    extra = ("--data.standardize=true", f"--model.lr={opts.converge_lr}")
    probe = ExcessProbe(x, y, optimum_mse, opts.excess)
    run_linreg(fit_args(npz, batch, max_epochs, *extra), tmp / "probe", [probe])
    reached = bool(probe.excess) and probe.excess[-1] <= opts.excess
    epochs = len(probe.excess)
    for _ in range(3):  # linreg's own excess decides; the probe's float32 arithmetic can differ in the last digits
        cli, wall = run_linreg(fit_args(npz, batch, epochs, *extra), tmp / f"conv{epochs}")
        excess = cli.model.optimum.excess
        if excess <= opts.excess or not reached or epochs >= max_epochs:
            break
        epochs += 1
    train_s = cli.timer.end - cli.timer.starts[0]
    return {
        "batch": batch,
        "lr": opts.converge_lr,
        "reached": excess <= opts.excess,
        "epochs": epochs,
        "steps": cli.trainer.global_step,
        "excess": excess,
        "train_s": train_s,
        "fit_s": cli.fit_seconds,
        "after_training_s": cli.fit_seconds - train_s,
        "in_process_s": wall,
    }


def measure(opts: argparse.Namespace) -> dict[str, Any]:
    x, y = make_data(opts.rows, opts.dim, opts.seed)
    with tempfile.TemporaryDirectory(prefix="linreg-bench-exact-") as name:
        tmp = Path(name)
        npz = write_npz(tmp / "data.npz", x, y)
        cf = closed_form(x, y, npz, tmp)
        conv = convergence(npz, tmp, x, y, cf["optimum_mse"], opts)
    sk = cf["sklearn_s"]
    return {
        "closed_form": cf,
        "convergence": conv,
        "solver_over_sklearn": cf["linreg_s"] / sk if sk else None,
        "lstsq_fit_over_sklearn": cf["lstsq_fit_s"] / sk if sk else None,
        "to_1pct_over_sklearn": conv["fit_s"] / sk if sk and conv["reached"] else None,
    }


def report(r: dict[str, Any]) -> None:
    cf, c = r["closed_form"], r["convergence"]
    sk = "not installed" if cf["sklearn_s"] is None else f"{cf['sklearn_s']:.3f} s"
    diff = f" (max |coef diff| {cf['max_abs_coef_diff']:.1e})" if "max_abs_coef_diff" in cf else ""
    print(
        f"exact solver: linreg's TSQR {cf['linreg_s']:.3f} s, `linreg fit --model.solver lstsq` trainer.fit "
        f"{cf['lstsq_fit_s']:.3f} s; scikit-learn LinearRegression.fit {sk}{diff}"
    )
    if r["solver_over_sklearn"] is not None:
        print(
            f"  solver / scikit-learn {r['solver_over_sklearn']:.2f} (goal <= 0.3); "
            f"lstsq trainer.fit / scikit-learn {r['lstsq_fit_over_sklearn']:.2f}"
        )
    print(
        f"to <= 1% excess MSE: {c['epochs']} epoch(s) = {c['steps']} steps at batch {c['batch']}, lr {c['lr']}, "
        f"standardized; excess {100 * c['excess']:.2f}%; trainer.fit {c['fit_s']:.2f} s = training "
        f"{c['train_s']:.2f} s + closed-form summary and checkpoint {c['after_training_s']:.2f} s"
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return run_main(__doc__, 2_000_000, 8_192, measure, report, argv, _flags)


if __name__ == "__main__":
    main()
