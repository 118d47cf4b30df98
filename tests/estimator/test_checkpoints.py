"""The estimator and the CLI share checkpoints both ways, and ``export`` writes what ``linreg export`` writes."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_diabetes

from linreg import LinearRegressor, LinRegError, load
from tests.helpers import last_ckpt


@pytest.fixture
def tables(workdir):
    """The diabetes table as the CLI reads it: a training CSV and a CSV of features to predict."""
    X, y = load_diabetes(return_X_y=True, as_frame=True)
    X.assign(progression=y).iloc[:400].to_csv(workdir / "train.csv", index=False)
    X.iloc[400:].to_csv(workdir / "new.csv", index=False)
    return X, y


@pytest.mark.parametrize("precision", ["32-true", "64-true"])
def test_load_of_a_cli_checkpoint_predicts_what_linreg_predict_wrote(cli, workdir, tables, precision) -> None:
    X, _ = tables
    fit = ["fit", "--data.path", "train.csv", "--data.target", "progression", "--trainer.max_epochs", "20"]
    assert cli(*fit, "--trainer.precision", precision) == 0
    ckpt = last_ckpt(workdir)
    assert cli("predict", "--ckpt_path", str(ckpt), "--data.path", "new.csv", "--output", "pred.parquet") == 0
    written = pd.read_parquet(workdir / "pred.parquet")["progression"].to_numpy()
    est = load(ckpt)
    assert list(est.feature_names_in_) == list(X.columns) and est.optimum_ is None
    new = pd.read_csv(workdir / "new.csv")  # as a user reads it: a column-major block of values
    np.testing.assert_array_equal(est.predict(new), written)
    np.testing.assert_array_equal(est.predict(X.iloc[400:]), written)
    assert est.precision == precision and est.get_params()["solver"] == "sgd"


def test_a_saved_estimator_works_with_linreg_predict(cli, workdir, tables) -> None:
    X, y = tables
    est = LinearRegressor(max_epochs=20).fit(X.iloc[:400], y.iloc[:400])
    path = est.save(workdir / "est.ckpt")
    assert cli("predict", "--ckpt_path", str(path), "--data.path", "new.csv", "--output", "pred.parquet") == 0
    written = pd.read_parquet(workdir / "pred.parquet")["target"].to_numpy()  # named after y's Series name
    np.testing.assert_array_equal(est.predict(pd.read_csv(workdir / "new.csv")), written)
    np.testing.assert_array_equal(load(path).predict(X.iloc[400:]), written)
    assert not list(workdir.glob("*.tmp")) and not list(workdir.glob(".*.tmp"))


def test_load_refuses_what_is_not_a_checkpoint(workdir) -> None:
    (workdir / "bad.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(LinRegError, match="bad.ckpt"):
        load(workdir / "bad.ckpt")


@pytest.mark.slow
def test_export_onnx_predicts_as_the_estimator(workdir, tables) -> None:
    ort = pytest.importorskip("onnxruntime")
    X, y = tables
    est = LinearRegressor(max_epochs=20).fit(X, y)
    path = est.export(workdir / "m.onnx")
    session = ort.InferenceSession(str(path))
    [out] = session.run(None, {"features": X.to_numpy(np.float32)})
    np.testing.assert_allclose(out[:, 0], est.predict(X), rtol=1e-6)
    with pytest.raises(LinRegError, match="already exists"):
        est.export(path)
