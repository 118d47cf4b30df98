"""SGD with no tuning flags reaches the least-squares optimum on real tables (issue 13).

The tables ship inside scikit-learn and statsmodels (test dependencies). Each fit is `linreg fit
--data.path T --data.target y` and nothing else; the optimum comes from numpy's float64 least squares
on the same rows, not from linreg.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.helpers import last_ckpt, scalars


def _sklearn(name: str) -> pd.DataFrame:
    from sklearn import datasets

    if name == "diabetes":  # raw units: ages in years, blood pressure in mm Hg, ...
        return datasets.load_diabetes(as_frame=True, scaled=False).frame.rename(columns={"target": "y"})
    data = datasets.load_linnerud(as_frame=True)
    return pd.concat([data.data, data.target[["Weight"]].rename(columns={"Weight": "y"})], axis=1)


def _statsmodels(name: str, target: str) -> pd.DataFrame:
    sm = pytest.importorskip("statsmodels.api")
    frame = getattr(sm.datasets, name).load_pandas().data
    return frame.select_dtypes("number").rename(columns={target: "y"})


TABLES: dict[str, Callable[[], pd.DataFrame]] = {
    "diabetes": lambda: _sklearn("diabetes"),  # 442 x 10, raw units, serum columns correlated
    "linnerud": lambda: _sklearn("linnerud"),  # 20 x 3
    "longley": lambda: _statsmodels("longley", "TOTEMP"),  # 16 x 6, collinear (condition number ~1e4)
    "stackloss": lambda: _statsmodels("stackloss", "STACKLOSS"),  # 21 x 3
    "engel": lambda: _statsmodels("engel", "foodexp"),  # 235 x 1
    "fair": lambda: _statsmodels("fair", "affairs"),  # 6366 x 8
    "ccard": lambda: _statsmodels("ccard", "AVGEXP"),  # 72 x 4
}


def optimum_mse(frame: pd.DataFrame) -> float:
    x = frame.drop(columns=["y"]).to_numpy(np.float64)
    a = np.column_stack([x, np.ones(len(x))])
    y = frame["y"].to_numpy(np.float64)
    beta = np.linalg.lstsq(a, y, rcond=None)[0]
    return float(np.mean((a @ beta - y) ** 2))


def fitted_mse(summary: dict, frame: pd.DataFrame) -> float:
    fitted = summary["targets"]["y"]["fitted"]
    x = frame[list(fitted["coef"])].to_numpy(np.float64)
    pred = x @ np.array(list(fitted["coef"].values())) + fitted["intercept"]
    return float(np.mean((pred - frame["y"].to_numpy(np.float64)) ** 2))


def _excess(workdir: Path, frame: pd.DataFrame) -> tuple[float, dict]:
    summary = json.loads((last_ckpt(workdir).parent / "summary.json").read_text())
    best = optimum_mse(frame)
    return (fitted_mse(summary, frame) - best) / best, summary


@pytest.mark.slow
@pytest.mark.parametrize("name", list(TABLES))
def test_table_and_target_alone_reach_the_optimum(name, cli, workdir) -> None:
    frame = TABLES[name]()
    frame.to_csv(workdir / f"{name}.csv", index=False)
    t0 = time.perf_counter()
    assert cli("fit", "--data.path", f"{name}.csv", "--data.target", "y") == 0
    seconds = time.perf_counter() - t0
    excess, summary = _excess(workdir, frame)
    print(f"{name}: excess {100 * excess:.4f}% after {summary['epochs']} epochs, {seconds:.2f} s")  # -s shows it
    assert excess <= 0.01
    assert summary["sgd"]["lr"] > 0 and summary["epochs"] < 1000  # the automatic step, stopped by --model.tol


@pytest.mark.slow
def test_minibatches_with_momentum_and_the_automatic_step(cli, workdir) -> None:
    frame = TABLES["diabetes"]()
    frame.to_csv(workdir / "d.csv", index=False)
    flags = ("--data.batch_size", "32", "--model.momentum", "0.9", "--trainer.max_epochs", "100")
    assert cli("fit", "--data.path", "d.csv", "--data.target", "y", *flags) == 0
    excess, summary = _excess(workdir, frame)
    print(f"diabetes, batches of 32, momentum 0.9: excess {100 * excess:.4f}%, lr {summary['sgd']['lr']:.4g}")
    assert excess <= 0.01
    assert summary["sgd"]["momentum"] == 0.9 and summary["sgd"]["averaged_from_epoch"] == 50


def test_the_gap_to_the_optimum_is_logged_every_epoch(cli, workdir) -> None:
    TABLES["stackloss"]().to_csv(workdir / "s.csv", index=False)
    assert cli("fit", "--data.path", "s.csv", "--data.target", "y") == 0
    logged = scalars(last_ckpt(workdir).parents[1])
    excess = [v for _, v in logged["optimum/excess"]]
    assert len(excess) == len(logged["train/loss"]) > 1
    assert excess[0] > 1e-3 >= excess[-1]  # it stopped once within --model.tol (auto: 1e-3)


@pytest.mark.parametrize(
    ("kind", "flags"),
    [
        # A hand-set step far too small for 20 epochs: the loss still falls at the end.
        ("descending", ("--model.lr", "0.001", "--trainer.max_epochs", "20")),
        # The run: batches of 32 with a large fixed step and momentum sit at SGD's noise floor.
        (
            "noise floor",
            ("--data.batch_size", "32", "--model.lr", "0.05", "--model.momentum", "0.9", "--trainer.max_epochs", "60"),
        ),
    ],
)
@pytest.mark.slow
def test_advice_names_what_stopped_sgd(kind, flags, cli, workdir, capsys) -> None:
    TABLES["diabetes"]().to_csv(workdir / "d.csv", index=False)
    assert cli("fit", "--data.path", "d.csv", "--data.target", "y", *flags) == 0
    summary = json.loads((last_ckpt(workdir).parent / "summary.json").read_text())
    assert summary["optimum"]["excess"] > 0.01
    assert summary["advice"]["kind"] == kind
    out = capsys.readouterr().out
    assert f"({kind})" in out
    if kind == "noise floor":
        assert "smaller --model.lr" in out and "larger --model.lr" not in out


@pytest.mark.slow
def test_advice_for_an_ill_conditioned_table(cli, workdir) -> None:
    TABLES["longley"]().to_csv(workdir / "l.csv", index=False)
    assert cli("fit", "--data.path", "l.csv", "--data.target", "y", "--trainer.max_epochs", "30") == 0
    summary = json.loads((last_ckpt(workdir).parent / "summary.json").read_text())
    assert summary["sgd"]["condition_number"] > 1e3
    assert summary["advice"]["kind"] == "ill-conditioned" and "--model.solver lstsq" in summary["advice"]["try"]
