"""The estimator and categorical columns: a DataFrame's text or category column is refused by name, with
how to encode it; a bool column stays 0 and 1, as scikit-learn takes it."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from linreg import LinearRegressor


def test_text_and_category_columns_are_named_and_bool_ones_are_numbers() -> None:
    rng = np.random.default_rng(0)
    X = pd.DataFrame(
        {
            "x": rng.normal(size=40),
            "firm": rng.choice(["A", "B"], 40),
            "grade": pd.Categorical(rng.choice(["lo", "hi"], 40)),
            "on": rng.random(40) > 0.5,
        }
    )
    y = 2 * X["x"] + X["on"]
    with pytest.raises(ValueError, match=r"column\(s\) \['firm', 'grade'\] hold labels .*pandas.get_dummies"):
        LinearRegressor(solver="lstsq").fit(X, y)
    est = LinearRegressor(solver="lstsq").fit(X[["x", "on"]], y)
    np.testing.assert_allclose(est.coef_, [2.0, 1.0], atol=1e-9)
