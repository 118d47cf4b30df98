"""Robust (HC0-HC3) standard errors and prediction intervals against statsmodels, and against a known truth."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from linreg.lstsq import LeastSquares, Optimum
from linreg.lstsq.robust import Sandwich, covariance, interval_columns

HC = ["HC0", "HC1", "HC2", "HC3"]


def batches(x: np.ndarray, y: np.ndarray, batch: int):
    for i in range(0, len(y), batch):
        yield torch.tensor(x[i : i + batch]), torch.tensor(y[i : i + batch])


def robust_fit(
    x: np.ndarray, y: np.ndarray, cov_type: str, batch: int = 7, fit_intercept: bool = True
) -> tuple[Optimum, dict]:
    """Both passes the way ``ExactSolution.measure`` runs them: the R factor, then the sandwich's meat."""
    y = y[:, None] if y.ndim == 1 else y
    ls = LeastSquares(x.shape[1], y.shape[1], fit_intercept)
    for xb, yb in batches(x, y, batch):
        ls.update(xb, yb)
    opt = ls.solve([f"x{i}" for i in range(x.shape[1])])
    sandwich = None
    if cov_type != "nonrobust":
        sandwich = Sandwich(ls, opt, cov_type)
        for xb, yb in batches(x, y, batch):
            sandwich.update(xb, yb)
    return covariance(ls, opt, sandwich)


def table(opt: Optimum, j: int = 0) -> dict[str, np.ndarray]:
    inf = opt.inference[j]
    rows = ([inf["intercept"]] if inf["intercept"] is not None else []) + list(inf["coef"].values())
    return {key: np.array([r[key] for r in rows]) for key in ("se", "t", "p", "ci_low", "ci_high")}


def statsmodels_fit(x: np.ndarray, y: np.ndarray, cov_type: str, fit_intercept: bool = True):
    import statsmodels.api as sm

    return sm.OLS(y, sm.add_constant(x, has_constant="add") if fit_intercept else x).fit(cov_type=cov_type)


def assert_same_as_statsmodels(opt: Optimum, state: dict, ref, j: int = 0) -> None:
    ours, close = table(opt, j), {"rtol": 1e-6, "atol": 0}
    assert opt.cov_type == state["cov_type"] == ref.cov_type and opt.inference[j]["cov_type"] == ref.cov_type
    np.testing.assert_allclose(state["cov"][j].numpy(), ref.cov_params(), **close)
    np.testing.assert_allclose(ours["se"], ref.bse, **close)
    np.testing.assert_allclose(ours["t"], ref.tvalues, **close)
    np.testing.assert_allclose(ours["p"], ref.pvalues, **close)
    np.testing.assert_allclose(np.column_stack([ours["ci_low"], ours["ci_high"]]), ref.conf_int(), **close)
    np.testing.assert_allclose(state["sigma2"][j].item(), ref.scale, **close)
    assert state["df"] == ref.df_resid


@pytest.fixture(scope="module")
def tables() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Real tables shipped with installed packages: diabetes (scikit-learn), Engel's food expenditure
    (heteroscedastic: spending varies more at higher incomes) and Longley (means of 1e5 beside
    deviations of 1e3, nearly collinear) from statsmodels."""
    import statsmodels.api as sm
    from sklearn.datasets import load_diabetes

    diabetes = load_diabetes(scaled=False)
    engel = sm.datasets.engel.load_pandas().data
    longley = sm.datasets.longley.load_pandas()
    return {
        "diabetes": (diabetes.data.astype(np.float64), diabetes.target.astype(np.float64)),
        "engel": (engel[["income"]].to_numpy(np.float64), engel["foodexp"].to_numpy(np.float64)),
        "longley": (longley.exog.to_numpy(np.float64), longley.endog.to_numpy(np.float64)),
    }


@pytest.mark.parametrize("cov_type", ["nonrobust", *HC])
@pytest.mark.parametrize("name", ["diabetes", "engel", "longley"])
def test_covariance_equals_statsmodels_on_real_tables(tables, name: str, cov_type: str) -> None:
    x, y = tables[name]
    opt, state = robust_fit(x, y, cov_type)
    assert_same_as_statsmodels(opt, state, statsmodels_fit(x, y, cov_type))


@pytest.mark.parametrize("cov_type", ["HC1", "HC3"])
def test_without_intercept(tables, cov_type: str) -> None:
    x, y = tables["diabetes"]
    opt, state = robust_fit(x, y, cov_type, fit_intercept=False)
    assert opt.intercept is None and not state["fit_intercept"]
    assert_same_as_statsmodels(opt, state, statsmodels_fit(x, y, cov_type, fit_intercept=False))


def test_batches_of_any_size_give_the_same_covariance(tables) -> None:
    x, y = tables["diabetes"]
    one = robust_fit(x, y, "HC3", batch=len(y))[1]["cov"]
    np.testing.assert_allclose(robust_fit(x, y, "HC3", batch=5)[1]["cov"], one, rtol=1e-10)


def test_several_targets_are_each_their_own_regression(tables) -> None:
    x, y = tables["diabetes"]
    ys = np.column_stack([y, -2 * y + x[:, 2] * 50, x[:, 3]])
    opt, state = robust_fit(x[:, 4:], ys, "HC2", batch=50)
    for j in range(ys.shape[1]):
        assert_same_as_statsmodels(opt, state, statsmodels_fit(x[:, 4:], ys[:, j], "HC2"), j)


def test_ranks_add_their_meat() -> None:
    """DDP without processes: each part's R factor and meat gathered as Lightning's all_gather stacks them,
    one part empty and another with its own shift (its own first batch)."""
    rng = np.random.default_rng(5)
    x = rng.normal(size=(240, 3)) * [1, 10, 100] + [5e3, -20, 1e4]
    y = x @ [1.0, -0.5, 0.02] + rng.normal(size=240) * (1 + np.abs(x[:, 0] - 5e3))
    y = y[:, None]
    whole, _ = robust_fit(x, y, "HC3", batch=240)
    cuts = [(0, 0), (100, 240), (0, 100)]
    parts = []
    for a, b in cuts:
        ls = LeastSquares(3, 1)
        for xb, yb in batches(x[a:b], y[a:b], 13):
            ls.update(xb, yb)
        parts.append(ls)
    states = torch.stack([ls.state() for ls in parts])
    for ls in parts:
        ls.all_gather(lambda t: states)
    sandwiches = []
    for (a, b), ls in zip(cuts, parts):
        sandwiches.append(Sandwich(ls, ls.solve(["x0", "x1", "x2"]), "HC3"))
        for xb, yb in batches(x[a:b], y[a:b], 13):
            sandwiches[-1].update(xb, yb)
    meats = torch.stack(
        [torch.cat([torch.tensor([s.rows, s.pinned], dtype=torch.float64), s.meat.flatten()]) for s in sandwiches]
    )
    for ls, sandwich in zip(parts, sandwiches):
        sandwich.all_gather(lambda t: meats)
        assert sandwich.rows == 240
        got, _ = covariance(ls, ls.solve(["x0", "x1", "x2"]), sandwich)
        np.testing.assert_allclose(table(got)["se"], table(whole)["se"], rtol=1e-10)


def test_heteroscedastic_errors_with_a_known_truth() -> None:
    """y = 1 + 2x + e, e's spread growing with x²: the slope's true standard error is the sandwich with the
    true variances. The robust ones find it; the non-robust one, which assumes a constant variance, does not."""
    rng = np.random.default_rng(0)
    n = 4000
    x = rng.uniform(-3, 3, size=n)
    spread = 0.2 + x**2
    y = 1 + 2 * x + spread * rng.normal(size=n)
    X = np.column_stack([np.ones(n), x])
    bread = np.linalg.inv(X.T @ X)
    truth = np.sqrt(np.diag(bread @ (X.T * spread**2) @ X @ bread))
    for cov_type in HC:
        opt, _ = robust_fit(x[:, None], y, cov_type, batch=1000)
        np.testing.assert_allclose(opt.coef[0].item(), 2.0, atol=4 * truth[1])
        np.testing.assert_allclose(table(opt)["se"], truth, rtol=0.05)
    plain, _ = robust_fit(x[:, None], y, "nonrobust", batch=1000)
    assert table(plain)["se"][1] < 0.8 * truth[1]  # what heteroscedasticity does to the usual formula


def test_a_row_of_leverage_one_has_no_hc3() -> None:
    """An indicator that is 1 on one row alone: the fit passes through that row, and HC2/HC3 divide by 0."""
    rng = np.random.default_rng(1)
    x = np.column_stack([rng.normal(size=30), np.eye(30)[0]])
    y = x @ [1.0, 3.0] + rng.normal(size=30)
    opt, state = robust_fit(x, y, "HC3")
    assert opt.inference is None and "1 training row(s) have leverage 1" in opt.inference_note
    assert state == {"note": opt.inference_note}
    opt, state = robust_fit(x, y, "HC1")
    assert_same_as_statsmodels(opt, state, statsmodels_fit(x, y, "HC1"))


def test_no_covariance_without_inference() -> None:
    x = np.array([[1.0, 0.5], [2.0, -1.0], [0.0, 3.0]])
    opt, state = robust_fit(x, np.array([1.0, 2.0, 4.0]), "HC0")
    assert opt.inference is None and state == {"note": opt.inference_note} and "no residual" in state["note"]


@pytest.mark.parametrize("cov_type", ["nonrobust", "HC1"])
def test_intervals_without_intercept(tables, cov_type: str) -> None:
    x, y = tables["diabetes"]
    opt, state = robust_fit(x, y, cov_type, fit_intercept=False)
    mean = x @ opt.coef[0].numpy()
    got = interval_columns(state, x, mean[:, None], 0.9)
    frame = statsmodels_fit(x, y, cov_type, fit_intercept=False).get_prediction(x).summary_frame(alpha=0.1)
    np.testing.assert_allclose(got["mean_lower"][:, 0], frame["mean_ci_lower"], rtol=1e-6)
    np.testing.assert_allclose(got["upper"][:, 0], frame["obs_ci_upper"], rtol=1e-6)


@pytest.mark.parametrize("cov_type", ["nonrobust", "HC1", "HC3"])
@pytest.mark.parametrize("name", ["engel", "longley"])
def test_intervals_equal_statsmodels_summary_frame(tables, name: str, cov_type: str) -> None:
    x, y = tables[name]
    opt, state = robust_fit(x, y, cov_type)
    ref = statsmodels_fit(x, y, cov_type)
    new = x[::3] * 1.1  # rows beyond the training ones too
    mean = new @ opt.coef[0].numpy() + opt.intercept[0].item()
    for level in (0.95, 0.8):
        got = interval_columns(state, new, mean[:, None], level)
        frame = ref.get_prediction(np.column_stack([np.ones(len(new)), new])).summary_frame(alpha=1 - level)
        np.testing.assert_allclose(mean, frame["mean"], rtol=1e-8)
        for ours, theirs in (
            ("mean_lower", "mean_ci_lower"),
            ("mean_upper", "mean_ci_upper"),
            ("lower", "obs_ci_lower"),
            ("upper", "obs_ci_upper"),
        ):
            np.testing.assert_allclose(got[ours][:, 0], frame[theirs], rtol=1e-6, err_msg=ours)
