"""What linreg prints, saves and exports is the answer it computed (issue 23), against independent float64
references: NIST's certified values, numpy's least squares, scikit-learn's Lasso."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.helpers import NIST, last_ckpt
from tests.lstsq.test_nist import certified, needs_nist, no_intercept

FAST = ("--figures.enabled", "false")


def _summary(workdir: Path) -> dict:
    return json.loads((last_ckpt(workdir).parent / "summary.json").read_text())


def lre(estimate: np.ndarray, truth: np.ndarray) -> float:
    """Correct significant digits of a vector, NIST's way, relative to the vector's size (fitted values
    cross zero, where a per-element relative error means nothing)."""
    err = np.max(np.abs(estimate - truth)) / np.max(np.abs(truth))
    return float(np.clip(-np.log10(max(err, 1e-15)), 0, 15))


def _fitted(part: dict, x: pd.DataFrame) -> np.ndarray:
    coef = np.array([part["coef"][c] for c in x.columns])
    return x.to_numpy(np.float64) @ coef + (part["intercept"] or 0.0)


@pytest.mark.slow
@needs_nist
@pytest.mark.parametrize("name", ["Filip", "Wampler1", "Wampler2", "Wampler3", "Wampler4", "Wampler5"])
def test_an_exact_fit_keeps_its_digits_in_predict_and_onnx(name, cli, workdir) -> None:
    """--model.solver lstsq: the values `linreg predict` writes and the exported ONNX program computes have
    the digits the summary's solution has (LRE within 1), not a float32 model's (Filip: 4.1 and R² −8.5)."""
    ort = pytest.importorskip("onnxruntime")
    cert = certified(name)
    table = NIST / cert["csv"]
    assert (
        cli(
            "fit",
            "--data.path",
            str(table),
            "--data.target",
            "y",
            "--model.solver",
            "lstsq",
            *FAST,
            *no_intercept(name),
        )
        == 0
    )
    x = pd.read_csv(table)[cert["features"]]
    truth = x.to_numpy(np.float64) @ np.array(cert["coefficients"][-len(cert["features"]) :])
    truth += cert["coefficients"][0] if cert["intercept"] else 0.0
    summary_lre = lre(_fitted(_summary(workdir)["targets"]["y"]["closed_form"], x), truth)
    assert cli("predict", "--ckpt_path", "last", "--data.path", str(table), "--output", "p.csv") == 0
    predicted = pd.read_csv(workdir / "p.csv")["y"].to_numpy(np.float64)
    assert cli("export", "--ckpt_path", "last", "--output", "m.onnx") == 0
    session = ort.InferenceSession(str(workdir / "m.onnx"), providers=["CPUExecutionProvider"])
    exported = session.run(["predictions"], {"features": x.to_numpy(np.float64)})[0][:, 0]
    got = {"summary": summary_lre, "predict": lre(predicted, truth), "onnx": lre(exported, truth)}
    print(f"{name}: fitted-value LRE {got}")
    assert got["predict"] >= summary_lre - 1 and got["onnx"] >= summary_lre - 1


def _large_mean(kind: str, rows: int = 3000) -> pd.DataFrame:
    rng = np.random.default_rng(7)
    x = rng.normal(size=(rows, 3))
    signal = x @ np.array([1.0, -2.0, 0.5]) + 0.3 * rng.normal(size=rows)
    y = 1e9 + 0.02 * signal if kind == "1e9" else 101_325.0 + 40.0 * signal  # air pressure in Pa
    return pd.DataFrame({"a": x[:, 0], "b": x[:, 1], "c": x[:, 2], "y": y})


def _optimum_mse(frame: pd.DataFrame) -> float:
    a = np.column_stack([frame[["a", "b", "c"]].to_numpy(np.float64), np.ones(len(frame))])
    y = frame["y"].to_numpy(np.float64)
    y0 = y.mean()  # an independent solve of the centred problem: no 1e9 to cancel in the residuals
    beta = np.linalg.lstsq(a, y - y0, rcond=None)[0]
    return float(np.mean((y - y0 - a @ beta) ** 2))


@pytest.mark.parametrize("solver", ["lstsq", "sgd"])
@pytest.mark.parametrize("kind", ["1e9", "pressure"])
def test_a_target_with_a_large_mean_is_predicted_as_summarised(kind, solver, cli, workdir) -> None:
    """1e9 + 0.02·signal, and 101,325 Pa + signal: the predictions' R² is the summary's (6 digits), and
    untuned SGD ends within 1% of the optimum, by the summary and by an independent measurement."""
    frame = _large_mean(kind)
    frame.to_csv(workdir / "t.csv", index=False)
    assert cli("fit", "--data.path", "t.csv", "--model.solver", solver, *FAST) == 0
    s = _summary(workdir)
    assert cli("predict", "--ckpt_path", "last", "--data.path", "t.csv", "--output", "p.csv") == 0
    y = frame["y"].to_numpy(np.float64)
    pred = pd.read_csv(workdir / "p.csv")["y"].to_numpy(np.float64)
    mse = float(np.mean((y - pred) ** 2))
    r2 = 1.0 - mse / float(np.mean((y - y.mean()) ** 2))
    assert s["metrics"]["train/r2"] == pytest.approx(r2, rel=1e-6)
    assert s["metrics"]["train/mse"] == pytest.approx(mse, rel=1e-6)
    true_excess = mse / _optimum_mse(frame) - 1.0
    print(f"{kind} {solver}: R² {r2:.9f}, excess reported {s['optimum']['excess']:.3e}, true {true_excess:.3e}")
    assert true_excess <= 0.01 and s["optimum"]["excess"] <= 0.01
    assert s["optimum"]["excess"] == pytest.approx(true_excess, abs=1e-4)


def _minibatch_table(rows: int = 600) -> pd.DataFrame:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(rows, 4))
    y = x @ np.array([3.0, -1.0, 0.5, 2.0]) + 10.0 + rng.normal(size=rows)
    return pd.DataFrame({**{f"x{i}": x[:, i] for i in range(4)}, "y": y})


def _check_saved_metrics(workdir: Path, cli, data: str, frame: pd.DataFrame) -> None:
    s = _summary(workdir)
    assert cli("predict", "--ckpt_path", "last", "--data.path", data, "--output", "p.csv") == 0
    y = frame["y"].to_numpy(np.float64)
    pred = pd.read_csv(workdir / "p.csv")["y"].to_numpy(np.float64)
    mse = float(np.mean((y - pred) ** 2))
    assert s["metrics"]["train/mse"] == pytest.approx(mse, rel=1e-6)
    assert s["metrics"]["train/mae"] == pytest.approx(float(np.mean(np.abs(y - pred))), rel=1e-6)
    assert s["metrics"]["train/r2"] == pytest.approx(1 - mse / float(np.var(y)), rel=1e-6)
    assert s["metrics"]["train/mse"] != pytest.approx(s["epoch_means"]["train/mse"], rel=1e-6)  # not the means


@pytest.mark.parametrize("stream", ["false", "true"])
def test_saved_train_metrics_are_the_saved_models(stream, cli, workdir) -> None:
    """Mini-batches of 8: the epoch's running mean (before each update) is not the saved model's error;
    the summary's train metrics are the latter, to 1e-6, in memory and streamed."""
    frame = _minibatch_table()
    data = "t.parquet" if stream == "true" else "t.csv"
    frame.to_parquet(workdir / data) if stream == "true" else frame.to_csv(workdir / data, index=False)
    flags = ("--data.batch_size", "8", "--data.stream", stream, "--data.shuffle", "none", "--trainer.max_epochs", "6")
    assert cli("fit", "--data.path", data, *flags, *FAST) == 0
    _check_saved_metrics(workdir, cli, data, frame)


@pytest.mark.slow
def test_saved_train_metrics_under_ddp_are_the_saved_models(cli, workdir) -> None:
    """The fit runs as two real processes; the saved model's predictions are then read in this one."""
    from tests.training.test_distributed import DDP, linreg

    frame = _minibatch_table()
    frame.to_csv(workdir / "t.csv", index=False)
    flags = ("--data.batch_size", "8", "--data.shuffle", "none", "--trainer.max_epochs", "6", *FAST)
    linreg(workdir, "fit", "--data.path", "t.csv", *flags, *DDP)
    _check_saved_metrics(workdir, cli, "t.csv", frame)


@needs_nist
def test_an_exact_fit_by_sgd_is_said_in_words(cli, workdir, capsys) -> None:
    """Wampler1 is a polynomial fit exactly: SGD's excess over an MSE of 3e-20 means nothing (it read 0.0195%
    with an intercept of −18,430 instead of 1); the summary says the rows are fit exactly, gives SGD's MSE and
    its worst coefficient, and advises the exact solver."""
    assert (
        cli("fit", "--data.path", str(NIST / "Wampler1.csv"), "--data.target", "y", "--trainer.max_epochs", "50", *FAST)
        == 0
    )
    s = _summary(workdir)
    out = capsys.readouterr().out
    assert s["optimum"]["exact_fit"] and s["optimum"]["excess"] is None
    report = s["exact_fit"]
    assert report["try"] == "--model.solver lstsq" and report["sgd_mse"] == s["metrics"]["train/mse"]
    fitted = s["targets"]["y"]["fitted"]
    errors = [abs(fitted["intercept"] - 1.0), *(abs(v - 1.0) for v in fitted["coef"].values())]
    assert report["largest_coef_error"] == pytest.approx(max(errors), rel=1e-9)
    assert "fit exactly by a linear model" in out and "--model.solver lstsq" in out


def _lasso_tables() -> dict[str, pd.DataFrame]:
    from sklearn.datasets import load_diabetes

    sm = pytest.importorskip("statsmodels.api")
    longley = sm.datasets.longley.load_pandas().data.rename(columns={"TOTEMP": "y"})
    macro = sm.datasets.macrodata.load_pandas().data[["realgdp", "realcons", "realinv", "realgovt", "unemp", "infl"]]
    diabetes = load_diabetes(as_frame=True, scaled=False).frame.rename(columns={"target": "y"})
    return {"diabetes": diabetes, "longley": longley, "macrodata": macro.rename(columns={"realgdp": "y"})}


@pytest.mark.slow
@pytest.mark.parametrize("table", ["diabetes", "longley", "macrodata"])
def test_sgd_lasso_reaches_the_exact_lasso_untuned(table, cli, workdir) -> None:
    """An l1 that zeroes some coefficients: untuned SGD ends within 1% of the exact penalized optimum, with
    the exact lasso's zeros (scikit-learn's Lasso on the same standardized features agrees)."""
    frame = _lasso_tables()[table]
    x = frame.drop(columns="y").to_numpy(np.float64)
    z = (x - x.mean(0)) / x.std(0)
    from sklearn.linear_model import Lasso

    y = frame["y"].to_numpy(np.float64)
    alpha = 0.2 * float(np.max(np.abs(z.T @ (y - y.mean())))) / len(y)  # a fifth of the all-zero alpha
    lasso = Lasso(alpha=alpha, tol=1e-12, max_iter=1_000_000).fit(z, y)
    assert 0 < np.count_nonzero(lasso.coef_) < z.shape[1]  # some, not all, coefficients zeroed
    frame.to_csv(workdir / "t.csv", index=False)
    assert cli("fit", "--data.path", "t.csv", "--model.l1", str(2 * alpha), *FAST) == 0
    s = _summary(workdir)
    print(f"{table}: SGD lasso {100 * s['optimum']['excess']:.4f}% above the exact optimum after {s['epochs']} epochs")
    assert s["optimum"]["excess"] <= 0.01
    fitted = s["targets"]["y"]["fitted"]
    names = [c for c in frame.columns if c != "y"]
    assert sorted(fitted.get("dropped", [])) == sorted(n for n, v in zip(names, lasso.coef_) if v == 0)
