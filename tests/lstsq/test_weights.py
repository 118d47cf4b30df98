"""Weighted least squares (``--data.weights``) in the exact solver against statsmodels' WLS, on real tables
that ship with installed packages and on heteroscedastic data with a known truth."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from linreg.lstsq import LeastSquares, Optimum
from linreg.lstsq.robust import Sandwich, covariance, interval_columns

COV_TYPES = ["nonrobust", "HC0", "HC1", "HC2", "HC3"]


def batches(x: np.ndarray, y: np.ndarray, w: np.ndarray | None, batch: int):
    for i in range(0, len(y), batch):
        yield (
            torch.tensor(x[i : i + batch]),
            torch.tensor(y[i : i + batch]),
            None if w is None else torch.tensor(w[i : i + batch]),
        )


def wls_fit(
    x: np.ndarray, y: np.ndarray, w: np.ndarray | None, cov_type: str = "nonrobust", batch: int = 7
) -> tuple[LeastSquares, Optimum, dict]:
    """Both passes as ``ExactSolution.measure`` runs them, batch by batch, with the rows' weights."""
    y = y[:, None] if y.ndim == 1 else y
    ls = LeastSquares(x.shape[1], y.shape[1])
    for xb, yb, wb in batches(x, y, w, batch):
        ls.update(xb, yb, w=wb)
    opt = ls.solve([f"x{i}" for i in range(x.shape[1])])
    sandwich = None
    if cov_type != "nonrobust":
        sandwich = Sandwich(ls, opt, cov_type)
        for xb, yb, wb in batches(x, y, w, batch):
            sandwich.update(xb, yb, wb)
    opt, state = covariance(ls, opt, sandwich)
    return ls, opt, state


def params(opt: Optimum, j: int = 0) -> np.ndarray:
    return np.concatenate([opt.intercept[j : j + 1].numpy(), opt.coef[j].numpy()])


def table(opt: Optimum, j: int = 0) -> dict[str, np.ndarray]:
    inf = opt.inference[j]
    rows = [inf["intercept"], *inf["coef"].values()]
    return {key: np.array([r[key] for r in rows]) for key in ("se", "t", "p")}


def statsmodels_wls(x: np.ndarray, y: np.ndarray, w: np.ndarray, cov_type: str = "nonrobust"):
    import statsmodels.api as sm

    return sm.WLS(y, sm.add_constant(x, has_constant="add"), weights=w).fit(cov_type=cov_type)


@pytest.fixture(scope="module")
def diabetes() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """scikit-learn's diabetes table in original units, with weights derived from it deterministically:
    a smooth function of age (older patients' records weigh more), and every 37th row weighing 0."""
    from sklearn.datasets import load_diabetes

    data = load_diabetes(scaled=False)
    x, y = data.data.astype(np.float64), data.target.astype(np.float64)
    w = 0.5 + (x[:, 0] - x[:, 0].min()) / np.ptp(x[:, 0]) * 2.0
    w[::37] = 0.0
    return x, y, w


@pytest.mark.parametrize("cov_type", COV_TYPES)
def test_diabetes_equals_statsmodels_wls(diabetes, cov_type: str) -> None:
    """Coefficients to 1e-8, standard errors, t and p to 1e-6 (statsmodels counts rows of weight 0 in
    nobs and the degrees of freedom, and so does linreg), R² and the residual variance as WLS has them."""
    x, y, w = diabetes
    ls, opt, state = wls_fit(x, y, w, cov_type)
    ref = statsmodels_wls(x, y, w, cov_type)
    np.testing.assert_allclose(params(opt), ref.params, rtol=1e-8)
    ours = table(opt)
    for key, theirs in (("se", ref.bse), ("t", ref.tvalues), ("p", ref.pvalues)):
        np.testing.assert_allclose(ours[key], theirs, rtol=1e-6, err_msg=key)
    np.testing.assert_allclose(state["cov"][0].numpy(), ref.cov_params(), rtol=1e-6)
    assert opt.n == ref.nobs == len(y) and state["df"] == ref.df_resid
    np.testing.assert_allclose(state["sigma2"][0].item(), ref.scale, rtol=1e-9)
    np.testing.assert_allclose(opt.inference[0]["r2"], ref.rsquared, rtol=1e-9)
    np.testing.assert_allclose(opt.inference[0]["r2_adj"], ref.rsquared_adj, rtol=1e-9)
    # the optimum's MSE is the weighted mean of the squared residuals (scikit-learn's sample_weight)
    np.testing.assert_allclose(opt.mse, np.average(ref.resid**2, weights=w), rtol=1e-9)
    assert ls.weight == pytest.approx(w.sum(), rel=1e-12)


@pytest.mark.parametrize("cov_type", ["nonrobust", "HC3"])
def test_intervals_equal_statsmodels_wls_get_prediction(diabetes, cov_type: str) -> None:
    """A new row weighs 1, as ``get_prediction``'s default: its observation interval adds σ² once."""
    x, y, w = diabetes
    _, opt, state = wls_fit(x, y, w, cov_type)
    ref = statsmodels_wls(x, y, w, cov_type)
    new = x[::5] * 1.01
    mean = (new @ opt.coef[0].numpy() + opt.intercept[0].item())[:, None]
    got = interval_columns(state, new, mean, 0.9)
    import statsmodels.api as sm

    want = ref.get_prediction(sm.add_constant(new, has_constant="add")).summary_frame(alpha=0.1)
    np.testing.assert_allclose(mean[:, 0], want["mean"], rtol=1e-8)
    names = ("mean_ci_lower", "mean_ci_upper", "obs_ci_lower", "obs_ci_upper")
    for ours, theirs in zip(("mean_lower", "mean_upper", "lower", "upper"), names):
        np.testing.assert_allclose(got[ours][:, 0], want[theirs], rtol=1e-6, err_msg=ours)


def test_integer_weights_equal_duplicated_rows(diabetes) -> None:
    """Weight 3 is the row three times: the same coefficients and weighted MSE (the row count, and so
    the degrees of freedom, differ by design: statsmodels' convention)."""
    x, y, _ = diabetes
    counts = np.arange(len(y)) % 4  # 0..3 copies, some rows left out entirely
    _, weighted, _ = wls_fit(x, y, counts.astype(np.float64))
    _, copied, _ = wls_fit(np.repeat(x, counts, axis=0), np.repeat(y, counts), None)
    np.testing.assert_allclose(params(weighted), params(copied), rtol=1e-9)
    np.testing.assert_allclose(weighted.mse, copied.mse, rtol=1e-9)
    np.testing.assert_allclose(weighted.inference[0]["r2"], copied.inference[0]["r2"], rtol=1e-9)


def test_weights_one_are_ordinary_least_squares(diabetes) -> None:
    x, y, _ = diabetes
    _, ones, _ = wls_fit(x, y, np.ones(len(y)))
    _, plain, _ = wls_fit(x, y, None)
    np.testing.assert_allclose(params(ones), params(plain), rtol=1e-10)
    np.testing.assert_allclose(table(ones)["se"], table(plain)["se"], rtol=1e-10)


def test_ranks_combine_exactly(diabetes) -> None:
    """Two ranks' weighted R factors and weight sums, merged by ``all_gather``, equal one pass; a rank
    whose rows all weigh 0 adds nothing."""
    x, y, w = diabetes
    ls_one, one, _ = wls_fit(x, y, w)
    cut = 150
    w_parts = (w[:cut], w[cut:], np.zeros(20))
    x_parts, y_parts = (x[:cut], x[cut:], x[:20] * 3.0), (y[:cut], y[cut:], y[:20] + 1e3)
    ranks = []
    for xp, yp, wp in zip(x_parts, y_parts, w_parts):
        ls = LeastSquares(x.shape[1], 1)
        for xb, yb, wb in batches(xp, yp[:, None], wp, 11):
            ls.update(xb, yb, w=wb)
        ranks.append(ls)
    states = torch.stack([r.state() for r in ranks])
    ranks[1].all_gather(lambda _: states)
    two = ranks[1].solve([f"x{i}" for i in range(x.shape[1])])
    np.testing.assert_allclose(params(two), params(one), rtol=1e-9)
    np.testing.assert_allclose(two.inference[0]["r2"], one.inference[0]["r2"], rtol=1e-9)
    assert ranks[1].weight == pytest.approx(ls_one.weight) and ranks[1].rows == len(y) + 20


def test_weights_one_over_variance_recover_a_known_truth_better_than_ols() -> None:
    """y = 1 + 2·x0 − x1 + e, e's spread growing tenfold across x0: WLS with w = 1/variance (the efficient
    estimator) lands closer to the truth than OLS, over many draws, and its standard errors are honest."""
    truth = np.array([1.0, 2.0, -1.0])
    ols_err, wls_err, z = [], [], []
    for seed in range(40):
        rng = np.random.default_rng(seed)
        x = rng.uniform(0, 1, size=(300, 2))
        sd = 0.2 + 3.0 * x[:, 0]
        y = truth[0] + x @ truth[1:] + rng.normal(size=300) * sd
        _, wls, _ = wls_fit(x, y, 1.0 / sd**2, batch=64)
        _, ols, _ = wls_fit(x, y, None, batch=64)
        wls_err.append(np.square(params(wls) - truth).sum())
        ols_err.append(np.square(params(ols) - truth).sum())
        z.append((params(wls) - truth) / table(wls)["se"])
    assert np.mean(wls_err) < 0.6 * np.mean(ols_err)
    assert 0.7 < np.std(np.array(z)) < 1.3  # standard errors that match the spread of the estimates


def test_penalized_objective_is_the_weighted_mean(diabetes) -> None:
    """Ridge with weights: the objective is the weighted MSE + l2·‖W‖², scikit-learn's Ridge with
    sample_weight (Σw·r² + alpha·‖W‖²) divided by Σw: alpha = l2 · Σw."""
    from sklearn.linear_model import Ridge

    x, y, w = diabetes
    ls = LeastSquares(x.shape[1], 1, l2=0.01)
    for xb, yb, wb in batches(x, y[:, None], w, 50):
        ls.update(xb, yb, w=wb)
    opt = ls.solve()
    ref = Ridge(alpha=0.01 * w.sum()).fit(x, y, sample_weight=w)
    np.testing.assert_allclose(opt.coef[0].numpy(), ref.coef_, rtol=1e-7)
    np.testing.assert_allclose(opt.intercept[0].item(), ref.intercept_, rtol=1e-7)
