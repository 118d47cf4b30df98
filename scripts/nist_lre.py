"""Accuracy of linreg's least-squares solver on NIST's StRD linear regression problems, next to numpy and statsmodels.

The figure is NIST's LRE, -log10(|estimate − certified| / |certified|) (−log10|estimate| when the
certified value is 0), the number of correct significant digits, capped at 15; a row shows the worst
coefficient. "linreg fit" is what users see: the closed-form coefficients in the summary.json of
`linreg fit --data.path NAME.csv --data.target y` (plus `--model.fit_intercept false` for NoInt1/2;
`--model.solver lstsq`, which skips SGD and leaves the closed form as it is, to be quick); "solver"
feeds LeastSquares the rows in batches of 7, as a stream would; numpy.linalg.lstsq and statsmodels
OLS (method "qr") take the raw design with a ones column.

Usage: ``python scripts/nist_lre.py [--json PATH]`` (the data: ``shared/data/nist`` beside the checkout).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from linreg.lstsq import LeastSquares

NIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "nist"


def lre(estimate: float, certified: float) -> float:
    """Correct significant digits, NIST's way (capped at 15)."""
    error = abs(estimate - certified) / abs(certified) if certified != 0 else abs(estimate)
    return 15.0 if error == 0 else float(min(15.0, max(0.0, -math.log10(error))))


def problems(root: Path = NIST) -> dict[str, dict]:
    """The certified values per problem, with the table read as float64."""
    certified = json.loads((root / "certified.json").read_text())
    out = {}
    for name, spec in certified.items():
        if name.startswith("_"):
            continue
        table = pd.read_csv(root / spec["csv"], dtype=np.float64)
        out[name] = {**spec, "x": table[spec["features"]].to_numpy(copy=True), "y": table["y"].to_numpy(copy=True)}
    return out


def linreg_params(x: np.ndarray, y: np.ndarray, intercept: bool, batch: int = 7) -> np.ndarray:
    """Model-order parameters (intercept first) from LeastSquares fed ``batch`` rows at a time."""
    ls = LeastSquares(x.shape[1], 1, fit_intercept=intercept)
    for i in range(0, len(y), batch):
        ls.update(torch.from_numpy(x[i : i + batch]), torch.from_numpy(y[i : i + batch, None]))
    opt = ls.solve()
    coef = opt.coef[0].numpy()
    return np.concatenate([opt.intercept.numpy(), coef]) if intercept else coef


def cli_params(name: str, intercept: bool) -> np.ndarray:
    """The closed form that `linreg fit` writes to summary.json, in NIST's order (intercept first)."""
    from linreg.cli import main as linreg

    spec = json.loads((NIST / "certified.json").read_text())[name]
    flags = ["--model.solver", "lstsq", "--figures.enabled", "false"]
    flags += [] if intercept else ["--model.fit_intercept", "false"]
    here = os.getcwd()
    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(io.StringIO()):
        os.chdir(tmp)
        try:
            linreg(["fit", "--data.path", str(NIST / spec["csv"]), "--data.target", "y", *flags])
            summary = json.loads(next(Path(tmp).glob("lightning_logs/*/checkpoints/summary.json")).read_text())
        finally:
            os.chdir(here)
    closed = summary["targets"]["y"]["closed_form"]
    coef = [closed["coef"][f] for f in spec["features"]]
    return np.array(([closed["intercept"]] if intercept else []) + coef)


def design(x: np.ndarray, intercept: bool) -> np.ndarray:
    return np.column_stack([np.ones(len(x)), x]) if intercept else x


def numpy_params(x: np.ndarray, y: np.ndarray, intercept: bool) -> np.ndarray:
    return np.linalg.lstsq(design(x, intercept), y, rcond=None)[0]


def statsmodels_params(x: np.ndarray, y: np.ndarray, intercept: bool) -> np.ndarray | None:
    try:
        import statsmodels.api as sm
    except ImportError:
        return None
    return np.asarray(sm.OLS(y, design(x, intercept)).fit(method="qr").params)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="also write the table here")
    args = parser.parse_args()
    solvers = {
        "linreg fit": lambda x, y, intercept, name: cli_params(name, intercept),
        "solver": lambda x, y, intercept, name: linreg_params(x, y, intercept),
        "numpy lstsq": lambda x, y, intercept, name: numpy_params(x, y, intercept),
        "statsmodels qr": lambda x, y, intercept, name: statsmodels_params(x, y, intercept),
    }
    table: dict[str, dict[str, float | None]] = {}
    for name, spec in problems().items():
        cert = spec["coefficients"]
        row: dict[str, float | None] = {}
        for solver, fit in solvers.items():
            est = fit(spec["x"], spec["y"], spec["intercept"], name)
            row[solver] = None if est is None else min(lre(e, c) for e, c in zip(est, cert))
        table[name] = row
    print(f"{'problem':<10} {'difficulty':<10}" + "".join(f"{s:>16}" for s in solvers))
    certified = json.loads((NIST / "certified.json").read_text())
    for name, row in table.items():
        cells = "".join(f"{'n/a' if v is None else f'{v:.1f}':>16}" for v in row.values())
        print(f"{name:<10} {certified[name]['difficulty']:<10}{cells}")
    if args.json:
        args.json.write_text(json.dumps(table, indent=1) + "\n")


if __name__ == "__main__":
    main()
