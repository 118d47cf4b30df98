"""`--data.weights COL` through the real CLI: weighted least squares against statsmodels' WLS, weighted
metrics against scikit-learn's sample_weight, streamed == in memory, DDP == one process, predict passing
the column over, and the refusals."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from tests.helpers import error_line, last_ckpt

QUIET = ("--figures.enabled", "false")
FEATURES = ["age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6"]


def diabetes(folder: Path, name: str = "diabetes.csv") -> pd.DataFrame:
    """scikit-learn's diabetes table in original units with a weights column derived from it: a smooth
    function of age, every 37th row 0 (statsmodels counts those rows in nobs; so does linreg)."""
    from sklearn.datasets import load_diabetes

    frame = load_diabetes(scaled=False, as_frame=True).frame
    age = frame["age"].to_numpy()
    w = 0.5 + (age - age.min()) / np.ptp(age) * 2.0
    w[::37] = 0.0
    frame.insert(3, "w", w)  # between features: never one
    frame.to_csv(folder / name, index=False)
    return frame


def wls(frame: pd.DataFrame, cov_type: str = "nonrobust"):
    import statsmodels.api as sm

    return sm.WLS(frame["target"], sm.add_constant(frame[FEATURES]), weights=frame["w"]).fit(cov_type=cov_type)


def summary(root: Path) -> dict:
    return json.loads((last_ckpt(root).parent / "summary.json").read_text())


def params(s: dict, key: str = "closed_form") -> np.ndarray:
    fit = s["targets"]["target"][key]
    return np.array([fit["intercept"], *(fit["coef"][f] for f in FEATURES)])


def stats(s: dict, key: str) -> np.ndarray:
    inf = s["targets"]["target"]["inference"]
    return np.array([inf["intercept"][key], *(inf["coef"][f][key] for f in FEATURES)])


FIT = ("fit", "--data.target", "target", "--data.weights", "w", "--model.solver", "lstsq", *QUIET)


@pytest.mark.parametrize("cov_type", ["nonrobust", "HC1"])
def test_fit_equals_statsmodels_wls_and_predict_passes_the_column_over(cli, workdir, capsys, cov_type) -> None:
    frame = diabetes(workdir)
    assert cli(*FIT, "--data.path", "diabetes.csv", "--model.cov_type", cov_type) == 0
    out = capsys.readouterr().out
    assert "weights         column 'w': weighted least squares" in out and "optimum weighted mse" in out
    s, ref = summary(workdir), wls(frame, cov_type)
    assert s["features"] == FEATURES and s["weights"] == "w" and s["rows"] == len(frame)
    np.testing.assert_allclose(params(s), ref.params, rtol=1e-8)
    for key, theirs in (("se", ref.bse), ("t", ref.tvalues), ("p", ref.pvalues)):
        np.testing.assert_allclose(stats(s, key), theirs, rtol=1e-6, err_msg=key)
    from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

    fitted, w = ref.fittedvalues, frame["w"]
    metrics = s["metrics"]
    truth = frame["target"]
    np.testing.assert_allclose(metrics["train/mse"], mean_squared_error(truth, fitted, sample_weight=w), 1e-9)
    np.testing.assert_allclose(metrics["train/mae"], mean_absolute_error(truth, fitted, sample_weight=w), 1e-9)
    np.testing.assert_allclose(metrics["train/r2"], r2_score(truth, fitted, sample_weight=w), 1e-9)
    ckpt = torch.load(last_ckpt(workdir), weights_only=True)
    assert ckpt["datamodule_hyper_parameters"]["weights"] == "w"

    # predict: the table holds the weights column (and the target); the checkpoint says it is no feature
    args = ("predict", "--ckpt_path", "last", "--data.path", "diabetes.csv", "--output", "p.csv")
    assert cli(*args, "--interval", "0.95") == 0
    got = pd.read_csv(workdir / "p.csv")
    import statsmodels.api as sm

    want = ref.get_prediction(sm.add_constant(frame[FEATURES])).summary_frame(alpha=0.05)
    np.testing.assert_allclose(got["target"], want["mean"], rtol=1e-8)
    np.testing.assert_allclose(got["target_lower"], want["obs_ci_lower"], rtol=1e-6)  # a new row weighs 1
    np.testing.assert_allclose(got["target_mean_upper"], want["mean_ci_upper"], rtol=1e-6)


def test_validation_tables_use_their_weights_when_present(cli, workdir) -> None:
    """A validation table with the column is weighted by it (scikit-learn's sample_weight); one without
    weighs each row 1. `validate --ckpt_path` takes the column's name from the checkpoint."""
    from sklearn.metrics import mean_squared_error, r2_score

    frame = diabetes(workdir)
    frame.iloc[:300].to_csv(workdir / "train.csv", index=False)
    frame.iloc[300:].to_csv(workdir / "val.csv", index=False)
    frame.iloc[300:].drop(columns="w").to_csv(workdir / "val_plain.csv", index=False)
    runs = {}
    for name in ("val", "val_plain"):
        (workdir / name).mkdir()
        os.chdir(workdir / name)
        assert cli(*FIT, "--data.path", "../train.csv", "--data.val_path", f"../{name}.csv") == 0
        runs[name] = summary(workdir / name)
    ref = wls(frame.iloc[:300])
    held = frame.iloc[300:]
    pred = ref.predict(sm_const(held))
    weighted, plain = runs["val"]["metrics"], runs["val_plain"]["metrics"]
    truth, w = held["target"], held["w"]
    np.testing.assert_allclose(weighted["val/mse"], mean_squared_error(truth, pred, sample_weight=w), rtol=1e-9)
    np.testing.assert_allclose(weighted["val/r2"], r2_score(truth, pred, sample_weight=w), rtol=1e-9)
    np.testing.assert_allclose(plain["val/mse"], mean_squared_error(held["target"], pred), rtol=1e-9)
    os.chdir(workdir / "val")
    assert cli("validate", "--ckpt_path", "last", "--data.path", "../val.csv", "--trainer.logger", "false") == 0


def sm_const(frame: pd.DataFrame) -> pd.DataFrame:
    import statsmodels.api as sm

    return sm.add_constant(frame[FEATURES], has_constant="add")


def test_streamed_parquet_folder_equals_in_memory(cli, workdir) -> None:
    """The weights streamed from a Parquet folder batch by batch (with HC3's second pass) give the fit
    and the weighted metrics of the table held whole."""
    frame = diabetes(workdir)
    (workdir / "parts").mkdir()
    for k, chunk in enumerate(np.array_split(np.arange(len(frame)), 3)):
        pq.write_table(pa.Table.from_pandas(frame.iloc[chunk], preserve_index=False), workdir / f"parts/{k}.parquet")
    runs = {}
    for name, data in (("mem", ("diabetes.csv",)), ("stream", ("parts", "--data.stream", "true"))):
        (workdir / name).mkdir()
        os.chdir(workdir / name)
        path = ("--data.path", str(workdir / data[0]), *data[1:], "--data.batch_size", "100", "--data.shuffle", "none")
        assert cli(*FIT, *path, "--model.cov_type", "HC3") == 0
        runs[name] = summary(workdir / name)
        sgd = ("fit", "--data.target", "target", "--data.weights", "w", "--trainer.max_epochs", "2", *QUIET)
        assert cli(*sgd, *path, "--data.shuffle", "blocks") == 0  # Parquet blocks in a seeded order, both alike
        runs[name + "_sgd"] = summary(workdir / name)
    np.testing.assert_allclose(params(runs["stream_sgd"], "sgd"), params(runs["mem_sgd"], "sgd"), rtol=1e-5)
    mse = [runs[name]["metrics"]["train/mse"] for name in ("stream_sgd", "mem_sgd")]
    np.testing.assert_allclose(mse[0], mse[1], rtol=1e-5)
    mem, stream = runs["mem"], runs["stream"]
    np.testing.assert_allclose(params(stream), params(mem), rtol=1e-10)
    np.testing.assert_allclose(stats(stream, "se"), stats(mem, "se"), rtol=1e-10)
    np.testing.assert_allclose(stats(mem, "se"), wls(frame, "HC3").bse, rtol=1e-6)
    for key in ("train/mse", "train/mae", "train/r2"):
        np.testing.assert_allclose(stream["metrics"][key], mem["metrics"][key], rtol=1e-10, err_msg=key)


def test_sgd_minimises_the_weighted_mse(cli, workdir) -> None:
    """SGD with mini-batches stops within --model.tol of the WLS optimum; its coefficients are near WLS's,
    not OLS's, on heteroscedastic rows where the two differ."""
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 4, size=(2000, 2))
    sd = 0.3 + x[:, 0]
    frame = pd.DataFrame({"a": x[:, 0], "b": x[:, 1], "y": 1 + x @ [2.0, -1.0] + rng.normal(size=2000) * sd})
    frame["w"] = 1.0 / sd**2
    frame.to_csv(workdir / "h.csv", index=False)
    args = ("fit", "--data.path", "h.csv", "--data.weights", "w", "--data.batch_size", "256", *QUIET)
    assert cli(*args, "--model.tol", "1e-3", "--trainer.max_epochs", "200") == 0
    s = summary(workdir)
    assert s["optimum"]["excess"] <= 1e-3
    import statsmodels.api as sm

    design = sm.add_constant(frame[["a", "b"]])
    ref, ols = sm.WLS(frame["y"], design, weights=frame["w"]).fit(), sm.OLS(frame["y"], design).fit()
    fitted = s["targets"]["y"]["sgd"]
    sgd = np.array([fitted["intercept"], fitted["coef"]["a"], fitted["coef"]["b"]])
    assert np.abs(sgd - ref.params).max() < 0.3 * np.abs(ols.params - ref.params).max()


def test_refusals_name_the_file_column_and_row(cli, workdir, capsys) -> None:
    frame = diabetes(workdir)
    base = ("fit", "--data.target", "target", "--data.weights", "w", *QUIET)
    cases = {
        "negative.csv": (frame.assign(w=np.where(np.arange(len(frame)) == 4, -2.0, frame["w"])), "row 5 is -2"),
        "nan.csv": (frame.assign(w=np.where(np.arange(len(frame)) == 9, np.nan, frame["w"])), "'w' row 10 is nan"),
        "zero.csv": (frame.assign(w=0.0), "is zero in every row"),
        "none.csv": (frame.drop(columns="w"), "no weights column 'w'"),
    }
    for name, (table, message) in cases.items():
        table.to_csv(workdir / name, index=False)
        assert cli(*base, "--data.path", name) == 1
        line = error_line(capsys)
        assert name in line and message in line, line
        assert "'w'" in line
    assert cli(*base, "--data.path", "diabetes.csv", "--data.features", "[age, w]") == 1
    assert "--data.weights 'w' is also named in --data.features" in error_line(capsys)
    assert cli(*base[:2], "target", "--data.weights", "target", *QUIET, "--data.path", "diabetes.csv") == 1
    assert "--data.weights 'target' is also named in --data.target" in error_line(capsys)
    assert not (workdir / "lightning_logs").exists() or not list(workdir.glob("lightning_logs/*/checkpoints/*.ckpt"))


@pytest.mark.slow
def test_ddp_two_processes_equal_one(cli, workdir) -> None:
    """Two ranks, odd rows, mini-batches: each rank's loss divided by the global batch's weight sum, the
    R factors and weight sums merged: the same closed form, SGD weights and weighted metrics as one process."""
    from tests.training.test_distributed import DDP, linreg

    diabetes(workdir)
    path = str(workdir / "diabetes.csv")
    fit = ("fit", "--data.path", path, "--data.target", "target", "--data.weights", "w", "--data.batch_size", "61")
    fit += ("--trainer.max_epochs", "3", "--model.lr", "0.05", "--model.tol", "0", "--seed_everything", "0", *QUIET)
    assert cli(*fit) == 0
    (workdir / "ddp").mkdir()
    linreg(workdir / "ddp", *fit, *DDP)
    one, two = summary(workdir), summary(workdir / "ddp")
    np.testing.assert_allclose(params(two), params(one), rtol=1e-9)
    np.testing.assert_allclose(params(two, "sgd"), params(one, "sgd"), rtol=1e-4, atol=1e-3)
    for key in ("train/mse", "train/r2"):
        np.testing.assert_allclose(two["metrics"][key], one["metrics"][key], rtol=1e-5, err_msg=key)
