"""``LinearRegressor.fit(X, y, sample_weight)`` and ``score(..., sample_weight)`` against scikit-learn's
LinearRegression and statsmodels' WLS, on scikit-learn's diabetes table with derived weights."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import load_diabetes
from sklearn.linear_model import LinearRegression

from linreg import LinearRegressor


@pytest.fixture(scope="module")
def diabetes() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    X, y = load_diabetes(return_X_y=True, scaled=False)
    w = 1.0 + (np.arange(len(y)) % 5)  # deterministic, integer: 1..5
    w[::41] = 0.0
    return X, y, w


def test_lstsq_equals_scikit_learn_and_statsmodels(diabetes) -> None:
    import statsmodels.api as sm

    X, y, w = diabetes
    ours = LinearRegressor(solver="lstsq").fit(X, y, sample_weight=w)
    ref = LinearRegression().fit(X, y, sample_weight=w)
    np.testing.assert_allclose(ours.coef_, ref.coef_, rtol=1e-8)
    np.testing.assert_allclose(ours.intercept_, ref.intercept_, rtol=1e-8)
    np.testing.assert_allclose(ours.score(X, y, sample_weight=w), ref.score(X, y, sample_weight=w), rtol=1e-10)
    wls = sm.WLS(y, sm.add_constant(X), weights=w).fit()
    inf = ours.optimum_.inference[0]
    se = [inf["intercept"]["se"], *(row["se"] for row in inf["coef"].values())]
    np.testing.assert_allclose(se, wls.bse, rtol=1e-6)


def test_sgd_approaches_the_weighted_optimum_and_integer_weights_are_copies(diabetes) -> None:
    X, y, w = diabetes
    ours = LinearRegressor(max_epochs=300).fit(X, y, sample_weight=w)
    assert ours.optimum_.excess <= 1e-3
    copies = LinearRegressor(solver="lstsq").fit(np.repeat(X, w.astype(int), 0), np.repeat(y, w.astype(int)))
    weighted = LinearRegressor(solver="lstsq").fit(X, y, sample_weight=w)
    np.testing.assert_allclose(weighted.coef_, copies.coef_, rtol=1e-9)


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        (lambda w: np.where(np.arange(len(w)) == 2, -1.0, w), "row 3 is -1"),
        (lambda w: np.zeros_like(w), "is zero in every row"),
        (lambda w: np.where(np.arange(len(w)) == 2, np.nan, w), "NaN"),
        (lambda w: w[:-1], "sample_weight has 441 values for 442 rows"),
    ],
)
def test_bad_weights_are_a_value_error(diabetes, weights, message: str) -> None:
    X, y, w = diabetes
    with pytest.raises(ValueError, match=message):
        LinearRegressor(solver="lstsq").fit(X, y, sample_weight=weights(w))
