"""`fit --model.cov_type` and `predict --interval` through the real CLI, against statsmodels: in memory,
streamed from a Parquet folder, and with DDP on two CPU processes."""

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

BOUNDS = {
    "mean_lower": "mean_ci_lower",
    "mean_upper": "mean_ci_upper",
    "lower": "obs_ci_lower",
    "upper": "obs_ci_upper",
}
QUIET = ("--figures.enabled", "false")


def engel(folder: Path) -> pd.DataFrame:
    """Engel's food expenditure against income (statsmodels' datasets): spending varies more at higher incomes."""
    import statsmodels.api as sm

    frame = sm.datasets.engel.load_pandas().data
    frame.to_csv(folder / "engel.csv", index=False)
    return frame


def heteroscedastic(rows: int, seed: int = 0) -> pd.DataFrame:
    """y = 2 + x0 − 3·x1 + e with e's spread growing with |x0|: a known truth for the robust errors."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 2)) * [2.0, 0.5] + [10.0, -1.0]
    e = rng.normal(size=rows) * (0.1 + np.abs(x[:, 0] - 10.0))
    return pd.DataFrame({"x0": x[:, 0], "x1": x[:, 1], "y": 2 + x[:, 0] - 3 * x[:, 1] + e})


def statsmodels_fit(frame: pd.DataFrame, features: list[str], target: str, cov_type: str):
    import statsmodels.api as sm

    return sm.OLS(frame[target], sm.add_constant(frame[features])).fit(cov_type=cov_type)


def summary(root: Path) -> dict:
    return json.loads((last_ckpt(root).parent / "summary.json").read_text())


def inference(s: dict, target: str, features: list[str]) -> dict[str, np.ndarray]:
    inf = s["targets"][target]["inference"]
    rows = [inf["intercept"]] + [inf["coef"][f] for f in features]
    return {key: np.array([r[key] for r in rows]) for key in ("se", "t", "p", "ci_low", "ci_high")}


def assert_intervals(got: pd.DataFrame, frame: pd.DataFrame, features: list[str], target: str, ref, level: float):
    import statsmodels.api as sm

    want = ref.get_prediction(sm.add_constant(frame[features], has_constant="add")).summary_frame(alpha=1 - level)
    np.testing.assert_allclose(got[target], want["mean"], rtol=1e-8)
    for ours, theirs in BOUNDS.items():
        np.testing.assert_allclose(got[f"{target}_{ours}"], want[theirs], rtol=1e-6, err_msg=ours)


@pytest.mark.slow
@pytest.mark.parametrize("cov_type", ["nonrobust", "HC3"])
def test_fit_and_predict_equal_statsmodels_on_engel(cli, workdir, capsys, cov_type: str) -> None:
    frame = engel(workdir)
    fit = ("fit", "--data.path", "engel.csv", "--data.target", "foodexp", "--model.solver", "lstsq", *QUIET)
    assert cli(*fit, "--model.cov_type", cov_type) == 0
    out = capsys.readouterr().out
    ref = statsmodels_fit(frame, ["income"], "foodexp", cov_type)
    s = summary(workdir)
    assert s["optimum"]["cov_type"] == cov_type == s["targets"]["foodexp"]["inference"]["cov_type"]
    ours = inference(s, "foodexp", ["income"])
    for key, theirs in (("se", ref.bse), ("t", ref.tvalues), ("p", ref.pvalues)):
        np.testing.assert_allclose(ours[key], theirs, rtol=1e-6, err_msg=key)
    np.testing.assert_allclose(np.column_stack([ours["ci_low"], ours["ci_high"]]), ref.conf_int(), rtol=1e-6)
    robust = cov_type != "nonrobust"
    assert f"covariance: {cov_type}" in out and ("p>|z|" in out) == robust and ("p>|t|" in out) != robust

    stored = torch.load(last_ckpt(workdir), weights_only=True)["linreg_intervals"]  # what predict reads
    np.testing.assert_allclose(stored["cov"][0].numpy(), ref.cov_params(), rtol=1e-6)
    assert stored["cov_type"] == cov_type and stored["df"] == ref.df_resid

    frame[["income"]].iloc[::2].to_parquet(workdir / "new.parquet")
    args = ("predict", "--ckpt_path", "last", "--data.path", "new.parquet", "--output", "p.parquet")
    assert cli(*args, "--interval", "0.9") == 0
    got = pd.read_parquet(workdir / "p.parquet")
    assert list(got.columns) == ["foodexp"] + [f"foodexp_{b}" for b in BOUNDS]
    assert_intervals(got, frame.iloc[::2], ["income"], "foodexp", ref, 0.9)
    assert cli(*args[:-1], "p.csv") == 0  # without --interval: the predictions alone, as before
    assert list(pd.read_csv(workdir / "p.csv").columns) == ["foodexp"]


def test_streamed_parquet_folder_equals_in_memory(cli, workdir) -> None:
    """Two passes over a streamed folder, batch by batch (HC2 needs each row's leverage), equal the table
    held whole, and statsmodels; so do the intervals, for two targets."""
    frame = heteroscedastic(1200)
    frame["z"] = frame["y"] * 0.5 + frame["x1"] ** 2
    frame.to_parquet(workdir / "whole.parquet", index=False)
    (workdir / "parts").mkdir()
    for k, chunk in enumerate(np.array_split(np.arange(len(frame)), 3)):
        pq.write_table(pa.Table.from_pandas(frame.iloc[chunk], preserve_index=False), workdir / f"parts/{k}.parquet")
    common = ("--data.target", "[y, z]", "--model.solver", "lstsq", "--model.cov_type", "HC2", *QUIET)
    runs = {}
    for name, data in (("mem", ("whole.parquet",)), ("stream", ("parts", "--data.stream", "true"))):
        (workdir / name).mkdir()
        os.chdir(workdir / name)
        path = ("--data.path", str(workdir / data[0]), *data[1:], "--data.batch_size", "256", "--data.shuffle", "none")
        assert cli("fit", *path, *common) == 0
        args = ("--ckpt_path", "last", "--data.path", str(workdir / "whole.parquet"), "--output", "p.csv")
        assert cli("predict", *args, "--interval", "0.95") == 0
        runs[name] = (summary(workdir / name), pd.read_csv(workdir / name / "p.csv"))
    (mem, p_mem), (stream, p_stream) = runs["mem"], runs["stream"]
    for target in ("y", "z"):
        np.testing.assert_allclose(
            inference(stream, target, ["x0", "x1"])["se"], inference(mem, target, ["x0", "x1"])["se"], rtol=1e-10
        )
        ref = statsmodels_fit(frame, ["x0", "x1"], target, "HC2")
        np.testing.assert_allclose(inference(mem, target, ["x0", "x1"])["se"], ref.bse, rtol=1e-6)
        assert_intervals(p_stream, frame, ["x0", "x1"], target, ref, 0.95)
    np.testing.assert_allclose(p_stream.to_numpy(), p_mem.to_numpy(), rtol=1e-10)


@pytest.mark.slow
def test_intervals_are_refused_where_they_do_not_apply(cli, workdir, capsys) -> None:
    engel(workdir)
    data = ("--data.path", "engel.csv", "--data.target", "foodexp", *QUIET)
    predict = ("predict", "--data.path", "engel.csv", "--output", "p.csv")
    assert cli("fit", *data, "--trainer.max_epochs", "3") == 0  # SGD
    sgd = str(last_ckpt(workdir))
    assert cli(*predict, "--ckpt_path", sgd, "--interval", "0.95") == 1
    line = error_line(capsys)
    assert "trained by SGD" in line and "refit with --model.solver lstsq" in line.lower()
    assert not (workdir / "p.csv").exists()
    assert cli("fit", *data, "--model.solver", "lstsq", "--model.l2", "0.1") == 0  # penalized: no standard errors
    assert cli(*predict, "--ckpt_path", "last", "--interval", "0.95") == 1
    assert "no standard errors, so no intervals: penalized fit" in error_line(capsys)
    old = torch.load(last_ckpt(workdir), weights_only=True)
    del old["linreg_intervals"]  # as a linreg before --interval wrote it
    old["hyper_parameters"] |= {"solver": "lstsq", "l2": 0.0}
    torch.save(old, workdir / "old.ckpt")
    assert cli(*predict, "--ckpt_path", "old.ckpt", "--interval", "0.95") == 1
    assert "holds no parameter covariance" in error_line(capsys)
    for level in ("1.5", "0"):
        assert cli(*predict, "--ckpt_path", sgd, "--interval", level) == 1
        assert f"--interval must be a level between 0 and 1, e.g. 0.95, got {float(level)}" in error_line(capsys)
    assert cli(*predict[:-2], "--ckpt_path", sgd, "--interval", "0.95") == 1
    assert "--interval needs --output" in error_line(capsys)
    assert cli("fit", *data, "--model.cov_type", "HC4") != 0  # jsonargparse lists the choices
    assert "HC4" in capsys.readouterr().err
    assert not (workdir / "p.csv").exists()


@pytest.mark.slow
def test_ddp_two_processes_equal_one(cli, workdir) -> None:
    """The meat summed over two ranks (one all_gather), and the intervals of a DDP predict, equal one process."""
    from tests.training.test_distributed import DDP, linreg

    frame = heteroscedastic(501, seed=3)  # odd: the ranks hold different numbers of rows
    frame.to_csv(workdir / "t.csv", index=False)
    fit = ("fit", "--data.path", str(workdir / "t.csv"), "--model.solver", "lstsq", "--model.cov_type", "HC3")
    fit += ("--data.batch_size", "64", *QUIET)
    predict = ("predict", "--ckpt_path", "last", "--data.path", str(workdir / "t.csv"), "--data.batch_size", "50")
    predict += ("--output", "p.csv", "--interval", "0.95")
    assert cli(*fit) == 0 and cli(*predict) == 0
    (workdir / "ddp").mkdir()
    linreg(workdir / "ddp", *fit, *DDP)
    linreg(workdir / "ddp", *predict, *DDP)
    one, two = summary(workdir), summary(workdir / "ddp")
    assert two["optimum"]["cov_type"] == "HC3"
    for key in ("se", "t", "p"):
        np.testing.assert_allclose(
            inference(two, "y", ["x0", "x1"])[key], inference(one, "y", ["x0", "x1"])[key], rtol=1e-9
        )
    p_one, p_two = pd.read_csv(workdir / "p.csv"), pd.read_csv(workdir / "ddp" / "p.csv")
    assert list(p_two.columns) == list(p_one.columns) and len(p_two) == len(frame)
    np.testing.assert_allclose(p_two.to_numpy(), p_one.to_numpy(), rtol=1e-9)
    assert_intervals(p_two, frame, ["x0", "x1"], "y", statsmodels_fit(frame, ["x0", "x1"], "y", "HC3"), 0.95)
