"""Fidelity table: does what linreg prints, saves and exports carry the answer it computed? (issue 23)

For each problem: the fitted values' correct digits (LRE, against the certified model for NIST's problems)
from the summary's solution, from the checkpoint through `linreg predict`, and from the exported ONNX
program; and the excess over the optimum as the summary reports it against an independent float64
measurement (numpy's least squares on the centred problem, and the written predictions).

    python scripts/fidelity.py                # NIST problems from ../shared/data/nist, if present
    python scripts/fidelity.py --nist PATH
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from linreg.cli import main

ROOT = Path(__file__).resolve().parents[1]


def lre(estimate: np.ndarray, truth: np.ndarray) -> float:
    err = np.max(np.abs(estimate - truth)) / np.max(np.abs(truth))
    return float(np.clip(-np.log10(max(err, 1e-15)), 0, 15))


def linreg(*args: str) -> None:
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        try:
            main(list(args))
        except SystemExit as exc:
            if exc.code:
                raise RuntimeError(f"linreg {' '.join(args)} exited {exc.code}") from None


def run(
    table: Path, features: list[str], truth: np.ndarray | None, optimum: float | None, *flags: str
) -> dict[str, object]:
    """Fit, predict and export one table in a fresh folder; the row of the table. ``truth``: certified
    fitted values (else the summary's solution is the reference, with the target's mean taken off, so
    that 1e9 + signal is judged on the signal); ``optimum``: the certified optimum MSE (else numpy's)."""
    frame = pd.read_csv(table)
    y = frame["y"].to_numpy(np.float64)
    x = frame[features].to_numpy(np.float64)
    with tempfile.TemporaryDirectory() as tmp:
        cwd = os.getcwd()
        os.chdir(tmp)
        try:
            linreg("fit", "--data.path", str(table), "--data.target", "y", "--figures.enabled", "false", *flags)
            ckpt = next(Path("lightning_logs").glob("version_*/checkpoints/last.ckpt"))
            summary = json.loads((ckpt.parent / "summary.json").read_text())
            linreg("predict", "--ckpt_path", str(ckpt), "--data.path", str(table), "--output", "p.csv")
            predicted = pd.read_csv("p.csv")["y"].to_numpy(np.float64)
            exported = None
            try:
                import onnxruntime as ort

                linreg("export", "--ckpt_path", str(ckpt), "--output", "m.onnx")
                session = ort.InferenceSession("m.onnx", providers=["CPUExecutionProvider"])
                kind = session.get_inputs()[0].type
                exported = session.run(
                    ["predictions"], {"features": x.astype(np.float32 if "float)" in kind else np.float64)}
                )[0][:, 0]
            except ImportError:
                pass
        finally:
            os.chdir(cwd)
    part = summary["targets"]["y"]["closed_form"]
    solved = x @ np.array([part["coef"][f] for f in features]) + (part["intercept"] or 0.0)
    shift = 0.0 if truth is not None else y.mean()
    reference = (truth if truth is not None else solved) - shift
    if optimum is None:
        a = np.column_stack([x, np.ones(len(y))])
        beta = np.linalg.lstsq(a, y - y.mean(), rcond=None)[0]
        optimum = float(np.mean((y - y.mean() - a @ beta) ** 2))
    mse = float(np.mean((y - predicted) ** 2))
    return {
        "summary": lre(solved, reference) if truth is not None else None,
        "predict": lre(predicted - shift, reference),
        "export": lre(exported - shift, reference) if exported is not None else None,
        "excess": summary["optimum"]["excess"],
        "true": mse / optimum - 1.0 if optimum > 1e-12 * float(np.var(y)) else None,
        "exact_fit": summary["optimum"]["exact_fit"],
    }


def large_mean(kind: str, folder: Path) -> Path:
    rng = np.random.default_rng(7)
    x = rng.normal(size=(3000, 3))
    signal = x @ np.array([1.0, -2.0, 0.5]) + 0.3 * rng.normal(size=3000)
    y = 1e9 + 0.02 * signal if kind == "1e9" else 101_325.0 + 40.0 * signal
    path = folder / f"{kind}.csv"
    pd.DataFrame({"a": x[:, 0], "b": x[:, 1], "c": x[:, 2], "y": y}).to_csv(path, index=False)
    return path


def show(value: object, percent: bool = False) -> str:
    if value is None:
        return "-"
    return f"{100 * float(value):.3g}%" if percent else f"{float(value):.1f}"


def main_(nist: Path) -> None:
    rows = []
    if (nist / "certified.json").exists():
        certified = json.loads((nist / "certified.json").read_text())
        for name in ("Filip", "Wampler1", "Wampler2", "Wampler3", "Wampler4", "Wampler5"):
            cert = certified[name]
            x = pd.read_csv(nist / cert["csv"])[cert["features"]].to_numpy(np.float64)
            coef = np.array(cert["coefficients"])
            truth = x @ coef[1:] + coef[0] if cert["intercept"] else x @ coef
            n, p = len(x), len(coef)
            optimum = cert["residual_sd"] ** 2 * (n - p) / n  # NIST certifies the residual standard deviation
            row = run(nist / cert["csv"], cert["features"], truth, optimum, "--model.solver", "lstsq")
            rows.append((f"NIST {name}, lstsq", row))
            if name == "Wampler1":
                rows.append(("NIST Wampler1, sgd", run(nist / cert["csv"], cert["features"], truth, optimum)))
    with tempfile.TemporaryDirectory() as tmp:
        for kind in ("1e9", "pressure"):
            table = large_mean(kind, Path(tmp))
            for solver in ("lstsq", "sgd"):
                row = run(table, ["a", "b", "c"], None, None, "--model.solver", solver)
                rows.append((f"{kind} target, {solver}", row))
    print("| problem | fitted-value LRE: summary / predict / export | excess reported | excess true |")
    print("|---|---|---|---|")
    for name, r in rows:
        digits = " / ".join(show(r[k]) for k in ("summary", "predict", "export"))
        reported = "exact fit (in words)" if r["exact_fit"] and r["excess"] is None else show(r["excess"], True)
        print(f"| {name} | {digits} | {reported} | {show(r['true'], True)} |")
    print(
        "\nNIST: LRE against the certified fitted values, true excess against the certified residual SD. "
        "1e9 and pressure: LRE of the predictions minus the target's mean against the summary's own solution "
        "(the signal's digits), true excess against numpy's float64 least squares on the centred problem."
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nist", type=Path, default=ROOT.parent / "shared" / "data" / "nist")
    main_(parser.parse_args().nist)
