"""The numbers linreg reports are right (issue 12): NIST's certified digits through the CLI, statsmodels'
inference, float64 end to end, fits without an intercept, collinear columns, metrics for any target."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from tests.helpers import NIST, NIST_GOAL, ROOT, last_ckpt

needs_nist = pytest.mark.skipif(not (NIST / "certified.json").exists(), reason=f"NIST StRD data not found at {NIST}")


def certified(name: str) -> dict:
    return json.loads((NIST / "certified.json").read_text())[name]


def lre(estimate: np.ndarray, truth: np.ndarray) -> float:
    """NIST's log relative error, the number of correct significant digits (capped at 15)."""
    with np.errstate(divide="ignore"):
        err = np.abs(estimate - truth) / np.abs(truth)
    return float(np.min(np.clip(-np.log10(np.maximum(err, 1e-15)), 0, 15)))


def solution(part: dict, cert: dict) -> np.ndarray:
    """Coefficients in NIST's order: the intercept B0 first when the model has one."""
    coef = [part["coef"][f] for f in cert["features"]]
    return np.array(([part["intercept"]] if cert["intercept"] else []) + coef)


def summary(workdir: Path) -> dict:
    return json.loads((last_ckpt(workdir).parent / "summary.json").read_text())


def no_intercept(name: str) -> tuple[str, ...]:
    return () if certified(name)["intercept"] else ("--model.fit_intercept", "false")


@pytest.mark.slow
@needs_nist
@pytest.mark.parametrize("name", list(NIST_GOAL))
def test_nist_closed_form_with_default_flags(name, cli, workdir) -> None:
    cert = certified(name)
    assert cli("fit", "--data.path", str(NIST / cert["csv"]), "--data.target", "y", *no_intercept(name)) == 0
    s = summary(workdir)["targets"]["y"]
    got = lre(solution(s["closed_form"], cert), np.array(cert["coefficients"]))
    print(f"{name}: LRE {got:.1f} (goal {NIST_GOAL[name]})")
    assert got >= NIST_GOAL[name]
    if not cert["intercept"]:
        assert s["closed_form"]["intercept"] is None and s["fitted"]["intercept"] is None


@needs_nist
@pytest.mark.parametrize("name", list(NIST_GOAL))
def test_nist_lstsq_in_float64_fits_and_predicts_the_certified_model(name, cli, workdir) -> None:
    cert = certified(name)
    table = NIST / cert["csv"]
    flags = ("--trainer.precision", "64-true", "--model.solver", "lstsq", "--figures.enabled", "false")
    assert cli("fit", "--data.path", str(table), "--data.target", "y", *flags, *no_intercept(name)) == 0
    s = summary(workdir)["targets"]["y"]
    truth = np.array(cert["coefficients"])
    assert lre(solution(s["fitted"], cert), truth) >= NIST_GOAL[name]
    ckpt = last_ckpt(workdir)
    state = torch.load(ckpt, weights_only=True)["state_dict"]
    assert state["model.lin.weight"].dtype == torch.float64
    frame = pd.read_csv(table)
    assert cli("predict", "--ckpt_path", str(ckpt), "--data.path", str(table), "--output", "p.csv") == 0
    x = frame[cert["features"]].to_numpy(np.float64)
    beta = solution(s["fitted"], cert)
    expected = x @ beta[-x.shape[1] :] + (beta[0] if cert["intercept"] else 0.0)
    written = pd.read_csv(workdir / "p.csv")["y"].to_numpy(np.float64)
    # Relative to the size of the terms summed: on Filip they reach 1e7 and cancel to about 1, so two
    # float64 evaluations in different orders differ in the 9th digit of the result, as they must.
    scale = (np.abs(x * beta[-x.shape[1] :]).sum(axis=1) + abs(beta[0]) * cert["intercept"]).max()
    assert np.abs(written - expected).max() <= 1e-12 * scale


def _statsmodels_fit(frame: pd.DataFrame) -> object:
    sm = pytest.importorskip("statsmodels.api")
    x = sm.add_constant(frame.drop(columns=["y"]).to_numpy(np.float64), prepend=False)
    return sm.OLS(frame["y"].to_numpy(np.float64), x).fit()


def _tables() -> dict[str, pd.DataFrame]:
    from sklearn.datasets import load_diabetes

    diabetes = load_diabetes(as_frame=True, scaled=False).frame.rename(columns={"target": "y"})
    longley = pd.read_csv(NIST / "Longley.csv") if (NIST / "Longley.csv").exists() else None
    return {"diabetes": diabetes, **({"longley": longley} if longley is not None else {})}


@pytest.mark.parametrize("name", ["diabetes", "longley"])
def test_inference_equals_statsmodels(name, cli, workdir, capsys) -> None:
    tables = _tables()
    if name not in tables:
        pytest.skip(f"{name} table not available")
    frame = tables[name]
    frame.to_csv(workdir / "t.csv", index=False)
    assert cli("fit", "--data.path", "t.csv", "--data.target", "y", "--trainer.max_epochs", "3") == 0
    assert "std err" in capsys.readouterr().out
    inf = summary(workdir)["targets"]["y"]["inference"]
    ols = _statsmodels_fit(frame)
    features = [c for c in frame.columns if c != "y"]
    terms = [inf["coef"][f] for f in features] + [inf["intercept"]]
    ci = ols.conf_int()
    for i, term in enumerate(terms):
        assert term["se"] == pytest.approx(ols.bse[i], rel=1e-6)
        assert term["t"] == pytest.approx(ols.tvalues[i], rel=1e-6)
        assert term["p"] == pytest.approx(ols.pvalues[i], rel=1e-6, abs=1e-300)
        assert (term["ci_low"], term["ci_high"]) == pytest.approx(tuple(ci[i]), rel=1e-6)
    assert inf["r2"] == pytest.approx(ols.rsquared, rel=1e-6)
    assert inf["r2_adj"] == pytest.approx(ols.rsquared_adj, rel=1e-6)
    assert inf["sigma"] == pytest.approx(np.sqrt(ols.scale), rel=1e-6) and inf["df_resid"] == ols.df_resid


def test_collinear_columns_are_named_and_inference_withheld(cli, workdir, capsys) -> None:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"a": rng.normal(size=50), "b": rng.normal(size=50)})
    frame["a_again"] = frame["a"]
    frame["y"] = 2 * frame["a"] - frame["b"] + 0.1 * rng.normal(size=50)
    frame.to_csv(workdir / "t.csv", index=False)
    assert cli("fit", "--data.path", "t.csv", "--trainer.max_epochs", "5") == 0
    out = capsys.readouterr().out
    s = summary(workdir)
    assert s["optimum"]["collinear"] == ["a_again"] and s["optimum"]["unique"] is False
    assert s["targets"]["y"]["inference"] is None and s["optimum"]["inference_note"]
    assert "collinear: a_again" in out and "minimum-norm" in out
    cf = s["targets"]["y"]["closed_form"]["coef"]
    assert cf["a"] == pytest.approx(cf["a_again"], rel=1e-9)  # the minimum-norm solution splits the weight


def test_more_parameters_than_rows_has_no_standard_errors(cli, workdir) -> None:
    rng = np.random.default_rng(1)
    frame = pd.DataFrame(rng.normal(size=(4, 6)), columns=[f"f{i}" for i in range(5)] + ["y"])
    frame.to_csv(workdir / "t.csv", index=False)
    assert cli("fit", "--data.path", "t.csv", "--trainer.max_epochs", "2") == 0
    s = summary(workdir)
    assert s["targets"]["y"]["inference"] is None and s["optimum"]["inference_note"]
    assert s["optimum"]["unique"] is False


@pytest.mark.parametrize(
    ("name", "make"),
    [
        ("mean 1e6, spread 11", lambda x, rng: 1e6 + 11 * (0.8 * x + 0.6 * rng.normal(size=len(x)))),
        ("integers above 2^24", lambda x, rng: np.round(2**25 + 1000 * x + 500 * rng.normal(size=len(x)))),
    ],
)
def test_metrics_are_right_for_any_target(name, make, cli, workdir, capsys) -> None:
    """Metrics after training (validation, test) equal a float64 computation from the written predictions;
    the optimum gap equals one from the fitted coefficients; no R² above 1 (float32 sums gave 1.00015)."""
    rng = np.random.default_rng(2)
    x = rng.normal(size=400)
    pd.DataFrame({"x": x, "y": make(x, rng)}).to_csv(workdir / "t.csv", index=False)
    assert cli("fit", "--data.path", "t.csv", "--data.val_fraction", "0.25", "--trainer.max_epochs", "30") == 0
    s = summary(workdir)
    ckpt = str(last_ckpt(workdir))
    y = pd.read_csv(workdir / "t.csv")["y"].to_numpy(np.float64)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0)).numpy()  # LinRegData's split
    val = np.sort(perm[: round(0.25 * len(y))])
    train = np.setdiff1d(np.arange(len(y)), val)
    # Predictions in the batch shapes the metrics saw (a float32 matmul may round a last bit differently
    # for another number of rows): the validation rows alone, and the whole table for `linreg test`.
    pd.read_csv(workdir / "t.csv").iloc[val].to_csv(workdir / "v.csv", index=False)
    assert cli("predict", "--ckpt_path", ckpt, "--data.path", "v.csv", "--output", "pv.csv") == 0
    assert cli("predict", "--ckpt_path", ckpt, "--data.path", "t.csv", "--output", "p.csv") == 0
    capsys.readouterr()
    assert cli("test", "--ckpt_path", ckpt, "--data.path", "t.csv") == 0
    tested = dict(line.split() for line in capsys.readouterr().out.splitlines() if line.startswith("test/"))
    pred = pd.read_csv(workdir / "p.csv")["y"].to_numpy(np.float64)
    pred_val = pd.read_csv(workdir / "pv.csv")["y"].to_numpy(np.float64)

    def r2(rows: np.ndarray, p: np.ndarray) -> float:
        return float(1 - np.sum((y[rows] - p) ** 2) / np.sum((y[rows] - y[rows].mean()) ** 2))

    everything = np.arange(len(y))
    print(f"{name}: val/r2 {s['metrics']['val/r2']:.9f} from predictions {r2(val, pred_val):.9f}")
    assert s["metrics"]["val/r2"] == pytest.approx(r2(val, pred_val), rel=1e-6)
    assert s["metrics"]["val/mse"] == pytest.approx(np.mean((y[val] - pred_val) ** 2), rel=1e-6)
    assert float(tested["test/r2"]) == pytest.approx(r2(everything, pred), rel=1e-5)  # printed with 6 digits
    assert s["metrics"]["train/r2"] <= 1.0
    fitted = s["targets"]["y"]["fitted"]
    model = fitted["coef"]["x"] * x + fitted["intercept"]
    assert s["optimum"]["sgd_mse"] == pytest.approx(np.mean((y[train] - model[train]) ** 2), rel=1e-6)
    xa = np.column_stack([x[train], np.ones(len(train))])
    best = np.mean((xa @ np.linalg.lstsq(xa, y[train], rcond=None)[0] - y[train]) ** 2)
    assert s["optimum"]["mse"] == pytest.approx(best, rel=1e-9)


def test_64_true_runs_end_to_end_and_predictions_round_trip(cli, workdir) -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(200, 3))
    frame = pd.DataFrame(x, columns=["a", "b", "c"]).assign(y=x @ [1.0, 2.0, -1.0] + 0.5 + rng.normal(size=200))
    frame.to_csv(workdir / "t.csv", index=False)
    assert cli("fit", "--data.path", "t.csv", "--trainer.precision", "64-true", "--trainer.max_epochs", "20") == 0
    ckpt = last_ckpt(workdir)
    assert cli("predict", "--ckpt_path", str(ckpt), "--data.path", "t.csv", "--output", "p.csv") == 0
    from linreg.training.module import LinRegModule

    saved = torch.load(ckpt, weights_only=True)
    hparams = {k: v for k, v in saved["hyper_parameters"].items() if not k.startswith("_")}
    model = LinRegModule(**hparams).double()  # float64 before the weights go in: nothing is rounded
    model.load_state_dict(saved["state_dict"])
    expected = model(torch.tensor(x)).detach().numpy()[:, 0]
    written = pd.read_csv(workdir / "p.csv")["y"].to_numpy(np.float64)
    assert np.array_equal(written, expected)  # float64 all the way, and the CSV round-trips every bit


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["bf16-mixed", "16-true", "bf16-true"])
def test_other_precisions_work_or_are_refused_in_one_line(precision, cli, workdir, capsys) -> None:
    status = cli("fit", "--config", str(ROOT / "configs" / "seed.yaml"), "--trainer.precision", precision)
    err = capsys.readouterr().err.strip().splitlines()
    if precision.endswith("-true"):
        assert status == 1 and err[-1].startswith("linreg: error: --trainer.precision") and "64-true" in err[-1]
    else:
        assert status == 0


def test_an_all_zero_target_is_an_exact_fit_in_strict_json(cli, workdir) -> None:
    rng = np.random.default_rng(4)
    pd.DataFrame({"x": rng.normal(size=50), "y": np.zeros(50)}).to_csv(workdir / "t.csv", index=False)
    assert cli("fit", "--data.path", "t.csv", "--trainer.max_epochs", "20") == 0
    text = (last_ckpt(workdir).parent / "summary.json").read_text()
    s = json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in summary.json"))
    assert s["optimum"]["excess"] == 0.0 and "advice" not in s
