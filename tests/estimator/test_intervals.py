"""``LinearRegressor(cov_type=...)``'s summary and ``predict_interval`` against statsmodels' OLS and WLS
(``fit(cov_type=...)``, ``get_prediction(X).summary_frame(alpha)``) on scikit-learn's diabetes table in its
original units, and the refusals, in memory, after ``save``/``load`` and from a CLI checkpoint."""

from __future__ import annotations

import pickle

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.datasets import load_diabetes

from linreg import LinearRegressor, load
from tests.helpers import last_ckpt

COV_TYPES = ["nonrobust", "HC0", "HC1", "HC2", "HC3"]
INTERVALS = ["mean", "mean_ci_lower", "mean_ci_upper", "obs_ci_lower", "obs_ci_upper"]


@pytest.fixture(scope="module")
def diabetes() -> tuple[pd.DataFrame, pd.Series, np.ndarray]:
    X, y = load_diabetes(return_X_y=True, as_frame=True, scaled=False)  # age 19..79, bp 62..133: real means
    w = 1.0 + (np.arange(len(y)) % 5) / 2.0  # deterministic weights 1..3
    w[::37] = 0.0
    return X, y, w


def statsmodels_fit(X: pd.DataFrame, y: pd.Series, w: np.ndarray | None, cov_type: str):
    import statsmodels.api as sm

    model = sm.OLS(y, sm.add_constant(X)) if w is None else sm.WLS(y, sm.add_constant(X), weights=w)
    return model.fit(cov_type=cov_type)


def statsmodels_frame(ref, X: pd.DataFrame, alpha: float) -> pd.DataFrame:
    import statsmodels.api as sm

    return ref.get_prediction(sm.add_constant(X, has_constant="add")).summary_frame(alpha=alpha)[INTERVALS]


@pytest.mark.parametrize("weighted", [False, True], ids=["ols", "wls"])
@pytest.mark.parametrize("cov_type", COV_TYPES)
def test_summary_equals_statsmodels(diabetes, cov_type: str, weighted: bool) -> None:
    X, y, w = diabetes
    w = w if weighted else None
    est = LinearRegressor(solver="lstsq", cov_type=cov_type).fit(X, y, sample_weight=w)
    ref = statsmodels_fit(X, y, w, cov_type)
    table = est.summary()
    stat = "t" if cov_type == "nonrobust" else "z"  # statsmodels: z and normal p-values for robust covariances
    assert list(table.columns) == ["coef", "std err", stat, f"P>|{stat}|", "[0.025", "0.975]"]
    assert list(table.index) == ["const", *X.columns]
    assert table.attrs["cov_type"] == cov_type
    np.testing.assert_allclose(table["coef"], ref.params, rtol=1e-8)
    np.testing.assert_allclose(table["std err"], ref.bse, rtol=1e-6)
    np.testing.assert_allclose(table[stat], ref.tvalues, rtol=1e-6)
    np.testing.assert_allclose(table[f"P>|{stat}|"], ref.pvalues, rtol=1e-6, atol=1e-300)
    ci = ref.conf_int()
    np.testing.assert_allclose(table["[0.025"], ci[0], rtol=1e-6)
    np.testing.assert_allclose(table["0.975]"], ci[1], rtol=1e-6)


@pytest.mark.parametrize("weighted", [False, True], ids=["ols", "wls"])
@pytest.mark.parametrize("cov_type", COV_TYPES)
def test_predict_interval_equals_statsmodels(diabetes, cov_type: str, weighted: bool) -> None:
    X, y, w = diabetes
    w = w if weighted else None
    est = LinearRegressor(solver="lstsq", cov_type=cov_type).fit(X, y, sample_weight=w)
    ref = statsmodels_fit(X, y, w, cov_type)
    new = X.iloc[::40].set_axis([f"patient {i}" for i in range(0, len(X), 40)])  # the index is kept
    for alpha in (0.05, 0.2):
        frame = est.predict_interval(new, alpha=alpha)
        expected = statsmodels_frame(ref, new, alpha)
        assert list(frame.columns) == INTERVALS and list(frame.index) == list(new.index)
        assert frame.attrs == {"cov_type": cov_type, "alpha": alpha}
        np.testing.assert_allclose(frame.to_numpy(), expected.to_numpy(), rtol=1e-6)
    np.testing.assert_array_equal(frame["mean"], est.predict(new))


def test_several_targets_give_one_column_group_per_target(diabetes) -> None:
    X, y, _ = diabetes
    Y = pd.DataFrame({"progression": y, "log_progression": np.log(y)})
    est = LinearRegressor(solver="lstsq", cov_type="HC1").fit(X, Y)
    frame = est.predict_interval(X.iloc[:7], alpha=0.1)
    assert list(frame.columns.get_level_values(0).unique()) == list(Y.columns)
    for target in Y.columns:
        assert list(frame[target].columns) == INTERVALS
        expected = statsmodels_frame(statsmodels_fit(X, Y[target], None, "HC1"), X.iloc[:7], 0.1)
        np.testing.assert_allclose(frame[target].to_numpy(), expected.to_numpy(), rtol=1e-6)


def test_intervals_survive_pickle_save_and_load(diabetes, workdir) -> None:
    X, y, w = diabetes
    est = LinearRegressor(solver="lstsq", cov_type="HC3").fit(X, y, sample_weight=w)
    expected = est.predict_interval(X.iloc[:9])
    pd.testing.assert_frame_equal(pickle.loads(pickle.dumps(est)).predict_interval(X.iloc[:9]), expected)
    loaded = load(est.save(workdir / "est.ckpt"))
    assert loaded.get_params()["cov_type"] == "HC3"
    pd.testing.assert_frame_equal(loaded.predict_interval(X.iloc[:9]), expected)


def test_load_of_a_cli_checkpoint_gives_what_linreg_predict_interval_wrote(cli, workdir, diabetes) -> None:
    X, y, _ = diabetes
    X.assign(progression=y).to_csv(workdir / "train.csv", index=False)
    X.iloc[:12].to_csv(workdir / "new.csv", index=False)
    fit = ["fit", "--data.path", "train.csv", "--data.target", "progression", "--model.solver", "lstsq"]
    assert cli(*fit, "--model.cov_type", "HC2", "--figures.enabled", "false") == 0
    ckpt = last_ckpt(workdir)
    out = ["--data.path", "new.csv", "--output", "p.csv", "--interval", "0.9"]
    assert cli("predict", "--ckpt_path", str(ckpt), *out) == 0
    written = pd.read_csv(workdir / "p.csv")
    frame = load(ckpt).predict_interval(X.iloc[:12], alpha=0.1)
    columns = ["progression" + part for part in ("", "_mean_lower", "_mean_upper", "_lower", "_upper")]
    np.testing.assert_allclose(frame.to_numpy(), written[columns].to_numpy(), rtol=1e-12)
    expected = statsmodels_frame(statsmodels_fit(X, y, None, "HC2"), X.iloc[:12], 0.1)
    np.testing.assert_allclose(frame.to_numpy(), expected.to_numpy(), rtol=1e-6)
    assert frame.attrs["cov_type"] == "HC2"


def test_an_sgd_fit_is_refused_as_the_cli_refuses_it(diabetes) -> None:
    X, y, _ = diabetes
    est = LinearRegressor(max_epochs=3, cov_type="HC3").fit(X, y)
    with pytest.raises(ValueError, match=r"predict_interval: this model was trained by SGD; .* solver='lstsq'"):
        est.predict_interval(X)
    assert est.summary().attrs["cov_type"] == "HC3"  # the optimum's inference is still there, robust


def test_a_fit_without_standard_errors_is_refused_with_the_reason(diabetes) -> None:
    X, y, _ = diabetes
    est = LinearRegressor(solver="lstsq", l2=0.1).fit(X, y)
    with pytest.raises(ValueError, match="predict_interval: the fit has no standard errors, so no intervals: pen"):
        est.predict_interval(X)


def test_a_checkpoint_without_a_covariance_is_refused(diabetes, workdir) -> None:
    X, y, _ = diabetes
    path = LinearRegressor(solver="lstsq").fit(X, y).save(workdir / "est.ckpt")
    ckpt = torch.load(path, weights_only=False)
    del ckpt["linreg_intervals"]  # as a linreg from before intervals wrote it
    torch.save(ckpt, path)
    with pytest.raises(ValueError, match="this checkpoint holds no parameter covariance.*solver='lstsq'"):
        load(path).predict_interval(X)


@pytest.mark.parametrize("alpha", [0, 1, 1.5, -0.1, "0.05", True, float("nan")])
def test_a_bad_alpha_is_a_value_error(diabetes, alpha) -> None:
    X, y, _ = diabetes
    est = LinearRegressor(solver="lstsq").fit(X.iloc[:50], y.iloc[:50])
    with pytest.raises(ValueError, match=r"predict_interval: alpha must be a number in \(0, 1\)"):
        est.predict_interval(X.iloc[:5], alpha=alpha)


@pytest.mark.parametrize("cov_type", ["hc3", "HC4", None, "robust"])
def test_a_bad_cov_type_is_one_value_error_naming_it(diabetes, cov_type) -> None:
    X, y, _ = diabetes
    with pytest.raises(ValueError, match=r"cov_type must be 'nonrobust', 'HC0', 'HC1', 'HC2' or 'HC3', got"):
        LinearRegressor(solver="lstsq", cov_type=cov_type).fit(X, y)
