"""Ridge, lasso and elastic net (issue 14): exactly by --model.solver lstsq, equal to scikit-learn;
by SGD within 1% of the penalized optimum; the hand-written loop gives the same numbers as Lightning."""

from __future__ import annotations

import copy
import json

import numpy as np
import pandas as pd
import pytest
import torch

from linreg.training.module import LinRegModule
from linreg.tutorial.stages import X_TUTORIAL, Y_TUTORIAL, fit_manual
from tests.helpers import SEED, last_ckpt, scalars, weights

sklearn_linear = pytest.importorskip("sklearn.linear_model")


@pytest.fixture(scope="module")
def diabetes() -> pd.DataFrame:
    from sklearn.datasets import load_diabetes

    return load_diabetes(as_frame=True, scaled=False).frame.rename(columns={"target": "y"})


def standardized(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The features as linreg standardizes them (population standard deviation), the target, the scales."""
    x = frame.drop(columns=["y"]).to_numpy(np.float64)
    scale = x.std(axis=0)
    return (x - x.mean(axis=0)) / scale, frame["y"].to_numpy(np.float64), scale


def fit(cli, workdir, frame: pd.DataFrame, *flags: str) -> dict:
    frame.to_csv(workdir / "d.csv", index=False)
    assert cli("fit", "--data.path", "d.csv", "--data.target", "y", "--figures.enabled", "false", *flags) == 0
    return json.loads((last_ckpt(workdir).parent / "summary.json").read_text())


def standardized_coef(summary: dict, frame: pd.DataFrame, part: str, scale: np.ndarray) -> np.ndarray:
    """Coefficients of the standardized features (what the penalty is on), from the original-unit ones."""
    coef = summary["targets"]["y"][part]["coef"]
    return np.array([coef[c] for c in frame.columns if c != "y"]) * scale


# (flags, scikit-learn estimator) pairs: the mapping the README documents, for n rows and one target.
def cases(n: int) -> list[tuple[str, tuple[str, ...], object]]:
    out = []
    for alpha in (1.0, 30.0, 300.0):
        out.append((f"ridge {alpha}", ("--model.l2", str(alpha / n)), sklearn_linear.Ridge(alpha=alpha)))
    for alpha in (0.05, 0.5, 3.0):
        lasso = sklearn_linear.Lasso(alpha=alpha, tol=1e-10, max_iter=1_000_000)
        out.append((f"lasso {alpha}", ("--model.l1", str(2 * alpha)), lasso))
    for alpha, ratio in ((0.05, 0.5), (0.5, 0.3), (2.0, 0.8)):
        net = sklearn_linear.ElasticNet(alpha=alpha, l1_ratio=ratio, tol=1e-10, max_iter=1_000_000)
        flags = ("--model.l1", str(2 * alpha * ratio), "--model.l2", str(alpha * (1 - ratio)))
        out.append((f"elastic net {alpha} {ratio}", flags, net))
    return out


@pytest.mark.parametrize("index", range(9), ids=[c[0] for c in cases(442)])
def test_lstsq_penalized_equals_scikit_learn(index, cli, workdir, diabetes) -> None:
    name, flags, estimator = cases(len(diabetes))[index]
    z, y, scale = standardized(diabetes)
    expected = estimator.fit(z, y).coef_
    s = fit(cli, workdir, diabetes, "--model.solver", "lstsq", "--trainer.precision", "64-true", *flags)
    got = standardized_coef(s, diabetes, "closed_form", scale)
    fitted = standardized_coef(s, diabetes, "fitted", scale)
    tol = 1e-8
    print(f"{name}: max rel diff {np.max(np.abs(got - expected)) / np.max(np.abs(expected)):.2e}")
    assert got == pytest.approx(expected, rel=tol, abs=tol * np.abs(expected).max())
    assert fitted == pytest.approx(got, rel=1e-9, abs=1e-9 * np.abs(got).max())
    assert list(got == 0) == list(expected == 0)  # the same features dropped
    if "--model.l1" in flags:
        names = [c for c, zero in zip(diabetes.columns, expected == 0) if zero]
        assert s["targets"]["y"]["closed_form"].get("dropped", []) == names


@pytest.mark.parametrize(
    "flags", [("--model.l2", "0.05"), ("--model.l1", "1.0"), ("--model.l1", "0.5", "--model.l2", "0.02")]
)
@pytest.mark.slow
def test_sgd_reaches_the_penalized_optimum(flags, cli, workdir, diabetes) -> None:
    s = fit(cli, workdir, diabetes, *flags)
    assert s["optimum"]["penalized"] is True
    print(f"{flags}: SGD {s['optimum']['excess']:.2e} above the penalized optimum after {s['epochs']} epochs")
    assert s["optimum"]["excess"] <= 0.01


def test_penalized_lightning_fit_equals_the_manual_loop(cli, workdir) -> None:
    """The tutorial's fit with both penalties: the same weights and per-epoch losses as the hand-written loop."""
    flags = ("--model.l2", "0.1", "--model.l1", "0.05")
    assert cli("fit", "--config", SEED, *flags) == 0
    torch.manual_seed(0)
    model = copy.deepcopy(LinRegModule(1, 1).model)
    ref = fit_manual(model, X_TUTORIAL, Y_TUTORIAL, lr=0.01, epochs=100, l2=0.1, l1=0.05)
    w, b = weights(last_ckpt(workdir))
    losses = [v for _, v in scalars(last_ckpt(workdir).parents[1])["train/loss"]]
    diff = max((w - model.lin.weight).abs().max().item(), (b - model.lin.bias).abs().max().item())
    diff = max(diff, max(abs(a - r) for a, r in zip(losses, ref.losses, strict=True)))
    print(f"max |Δ| penalized: {diff}")
    assert diff == 0.0


def test_bad_penalties_are_one_line(cli, workdir, capsys) -> None:
    assert cli("fit", "--config", SEED, "--model.l1", "-1") == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == "linreg: error: --model.l1 must be at least 0, got -1.0"


def _statsmodels_table(name: str) -> pd.DataFrame:
    datasets = pytest.importorskip("statsmodels.api").datasets
    if name == "longley":
        return datasets.longley.load_pandas().data.rename(columns={"TOTEMP": "y"})
    data = datasets.macrodata.load_pandas().data  # quarterly US series that move together
    return data[["realgdp", "realcons", "realinv", "realgovt", "realdpi", "cpi", "m1", "pop"]].rename(
        columns={"realgdp": "y"}
    )


@pytest.mark.parametrize("table", ["longley", "macrodata"])
@pytest.mark.parametrize("alpha", [1e-3, 1.0])
def test_ridge_on_ill_conditioned_real_tables_to_1e_8(table, alpha, cli, workdir) -> None:
    """Collinear economic series (Longley; US quarterly macro data): ridge by the exact
    solver equals scikit-learn's Ridge and an independent float64 solve (the augmented least squares of
    [Z; √alpha·I]) to 1e-8 relative, at the default precision too."""
    frame = _statsmodels_table(table)
    z, y, scale = standardized(frame)
    zc = z - z.mean(axis=0)
    augmented = np.vstack([zc, np.sqrt(alpha) * np.eye(z.shape[1])])
    truth = np.linalg.lstsq(augmented, np.concatenate([y - y.mean(), np.zeros(z.shape[1])]), rcond=None)[0]
    expected = sklearn_linear.Ridge(alpha=alpha).fit(z, y).coef_
    assert expected == pytest.approx(truth, rel=1e-8)  # scikit-learn is itself accurate here
    s = fit(cli, workdir, frame, "--model.solver", "lstsq", "--model.l2", str(alpha / len(y)))
    got = standardized_coef(s, frame, "closed_form", scale)
    print(f"{table} ridge {alpha}: max rel diff {np.max(np.abs(got - truth) / np.abs(truth)):.2e}")
    assert got == pytest.approx(truth, rel=1e-8) and got == pytest.approx(expected, rel=1e-8)
