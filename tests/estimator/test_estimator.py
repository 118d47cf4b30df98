"""``LinearRegressor`` against scikit-learn and statsmodels on a real table (scikit-learn's diabetes data:
442 patients, 10 measurements, one year's disease progression), and as a scikit-learn estimator."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.base import clone
from sklearn.datasets import load_diabetes
from sklearn.linear_model import LinearRegression, Ridge
from sklearn.model_selection import GridSearchCV, KFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import check_estimator

from linreg import LinearRegressor, LinRegError
from linreg.training.module import LinRegModule
from tests.helpers import ROOT


@pytest.fixture(scope="module")
def diabetes() -> tuple[pd.DataFrame, pd.Series]:
    return load_diabetes(return_X_y=True, as_frame=True)


def test_lstsq_equals_sklearn_linear_regression(diabetes) -> None:
    X, y = diabetes
    sk = LinearRegression().fit(X, y)
    exact = LinearRegressor(solver="lstsq", precision="64-true").fit(X, y)
    np.testing.assert_allclose(exact.coef_, sk.coef_, rtol=0, atol=1e-10 * np.abs(sk.coef_).max())
    assert exact.intercept_ == pytest.approx(sk.intercept_, abs=1e-10)
    assert exact.score(X, y) == pytest.approx(sk.score(X, y), abs=1e-12)
    # In the default float32 the optimum is still found in float64; the model's weights are its float32 rounding.
    est = LinearRegressor(solver="lstsq").fit(X, y)
    np.testing.assert_allclose(est.optimum_.coef[0].numpy(), sk.coef_, rtol=1e-10)
    np.testing.assert_allclose(est.coef_, sk.coef_, rtol=1e-5)
    assert list(est.feature_names_in_) == list(X.columns) and est.n_features_in_ == 10
    assert est.module_.hparams.target_names == ["target"]  # the Series' name


def test_sgd_reaches_the_optimum(diabetes) -> None:
    X, y = diabetes
    sk = LinearRegression().fit(X, y)
    est = LinearRegressor().fit(X, y)  # the defaults: SGD, lr auto, stopping within tol 1e-3 of the optimum
    assert est.optimum_.excess <= 1e-3
    assert 1 < est.n_iter_ < 1000
    assert est.score(X, y) == pytest.approx(sk.score(X, y), rel=1e-3)


def test_l2_equals_ridge(diabetes) -> None:
    """linreg's l2 multiplies the *mean* squared error's penalty: Ridge's alpha is n·l2 on raw features."""
    X, y = diabetes
    l2 = 1e-3
    ridge = Ridge(alpha=len(X) * l2).fit(X, y)
    est = LinearRegressor(solver="lstsq", l2=l2, standardize=False, precision="64-true").fit(X, y)
    np.testing.assert_allclose(est.coef_, ridge.coef_, rtol=1e-9)
    assert est.intercept_ == pytest.approx(ridge.intercept_, rel=1e-12)


def test_several_targets_and_torch_inputs(diabetes) -> None:
    X, y = diabetes
    Y = np.column_stack([y, 2 * y + X["bmi"]])
    sk = LinearRegression().fit(X.to_numpy(), Y)
    est = LinearRegressor(solver="lstsq", precision="64-true").fit(torch.tensor(X.to_numpy()), torch.tensor(Y))
    assert est.coef_.shape == (2, 10) and est.intercept_.shape == (2,)
    np.testing.assert_allclose(est.coef_, sk.coef_, atol=1e-9)
    assert est.predict(X.to_numpy()).shape == (len(X), 2)
    assert not hasattr(est, "feature_names_in_")
    table = est.summary()  # one block per target, each with its own inference
    assert list(table.index.names) == ["target", "term"] and len(table) == 2 * 11
    np.testing.assert_allclose(table.loc["y1", "coef"].to_numpy()[1:], sk.coef_[1], rtol=1e-9)
    assert len(table.attrs["r2"]) == 2


def test_grid_search_over_l2_scores_each_fold_as_ridge(diabetes) -> None:
    X, y = diabetes
    grid = [0.0, 1e-3, 1e-1]
    folds = KFold(3, shuffle=True, random_state=0)
    base = LinearRegressor(solver="lstsq", standardize=False, precision="64-true")
    search = GridSearchCV(base, {"l2": grid}, cv=folds).fit(X, y)
    for i, l2 in enumerate(grid):
        expected = [
            Ridge(alpha=len(train) * l2).fit(X.iloc[train], y.iloc[train]).score(X.iloc[test], y.iloc[test])
            for train, test in folds.split(X)
        ]
        assert search.cv_results_["mean_test_score"][i] == pytest.approx(np.mean(expected), abs=1e-10)
    assert search.best_params_["l2"] == grid[int(np.argmax(search.cv_results_["mean_test_score"]))]
    # cross_val_score and a Pipeline, as with any scikit-learn regressor
    scores = cross_val_score(make_pipeline(StandardScaler(), LinearRegressor(solver="lstsq")), X, y, cv=folds)
    assert scores.mean() == pytest.approx(search.cv_results_["mean_test_score"][0], abs=1e-5)


def test_pickle_and_clone_round_trips(diabetes) -> None:
    X, y = diabetes
    est = LinearRegressor(max_epochs=5, lr=0.1, batch_size=64).fit(X, y)
    back = pickle.loads(pickle.dumps(est))
    np.testing.assert_array_equal(back.predict(X), est.predict(X))
    assert isinstance(back.module_, LinRegModule) and back.get_params() == est.get_params()
    twin = clone(est)
    assert twin.get_params() == est.get_params() and not hasattr(twin, "coef_")
    np.testing.assert_array_equal(twin.fit(X, y).predict(X), est.predict(X))  # seeded: the same fit again


def test_summary_equals_statsmodels_ols(diabetes) -> None:
    sm = pytest.importorskip("statsmodels.api")
    X, y = diabetes
    ols = sm.OLS(y, sm.add_constant(X)).fit()
    table = LinearRegressor(solver="lstsq").fit(X, y).summary()
    assert list(table.columns) == ["coef", "std err", "t", "P>|t|", "[0.025", "0.975]"]
    assert list(table.index) == list(ols.params.index)  # const first, then the columns
    for column, theirs in (("coef", ols.params), ("std err", ols.bse), ("t", ols.tvalues), ("P>|t|", ols.pvalues)):
        np.testing.assert_allclose(table[column], theirs, rtol=1e-8, err_msg=column)
    np.testing.assert_allclose(table[["[0.025", "0.975]"]], ols.conf_int(), rtol=1e-8)
    assert table.attrs["r2"] == pytest.approx(ols.rsquared, rel=1e-10)
    assert table.attrs["df_resid"] == ols.df_resid


def test_summary_shows_only_columns_with_values(diabetes) -> None:
    X, y = diabetes
    table = LinearRegressor(solver="lstsq", l2=0.01).fit(X, y).summary()
    assert list(table.columns) == ["coef"]  # no OLS inference for a penalized fit: no empty columns
    assert table.attrs["note"]


@pytest.mark.parametrize(
    ("params", "name"),
    [
        ({"lr": -1.0}, "lr"),
        ({"solver": "qr"}, "solver"),
        ({"momentum": 1.0}, "momentum"),
        ({"l2": -0.1}, "l2"),
        ({"val_fraction": 1.0}, "val_fraction"),
        ({"max_epochs": 0}, "max_epochs"),
        ({"precision": "16-true"}, "precision"),
        ({"batch_size": 0}, "batch_size"),
        ({"standardize": False, "standardize_target": True}, "standardize_target"),
        ({"trainer_kwargs": {"accumulate_grad_batches": 4}}, "accumulate_grad_batches"),
        ({"trainer_kwargs": {"max_epoch": 4}}, "trainer settings refused by Lightning.*max_epoch"),
    ],
)
def test_bad_parameter_is_one_value_error_naming_it(params, name) -> None:
    est = LinearRegressor(**params)  # __init__ only stores: the check is fit's
    with pytest.raises(ValueError, match=name) as info:
        est.fit(np.arange(8.0).reshape(4, 2), np.arange(4.0))
    assert isinstance(info.value, LinRegError)
    assert "\n" not in str(info.value)


def test_quiet_by_default_and_a_progress_bar_when_verbose(capfd) -> None:
    X, y = np.arange(20.0).reshape(10, 2), np.arange(10.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no Lightning warning either
        LinearRegressor(max_epochs=3).fit(X, y)
        LinearRegressor(solver="lstsq").fit(X, y)
    out, err = capfd.readouterr()
    assert out == "" and err == ""
    LinearRegressor(max_epochs=3, verbose=True).fit(X, y)
    out, err = capfd.readouterr()
    assert "Epoch 0: 100%" in out + err  # the progress bar


@pytest.mark.slow
def test_check_estimator() -> None:
    """scikit-learn's own conformance checks, all of them (53 in scikit-learn 1.9, about 10 s), for both
    solvers."""
    # The checks allowed not to pass, and why. check_array_api_input: scikit-learn skips it itself unless
    # SCIPY_ARRAY_API=1 is set before scipy is imported, and linreg takes numpy, pandas and torch, not other
    # array APIs. check_sample_weight_equivalence_on_dense_data, for SGD only: weights equal repeated rows
    # at the optimum, and SGD stops near it, not at it, to 1e-7 (scikit-learn's SGDRegressor is excused
    # the same check); the exact solver must pass it.
    skipped = {"check_array_api_input": "SCIPY_ARRAY_API is not set"}
    sgd_excused = {"check_sample_weight_equivalence_on_dense_data": "not equivalent"}
    for solver, excused in (("lstsq", {}), ("sgd", sgd_excused)):
        results = check_estimator(LinearRegressor(solver=solver), on_fail=None)
        assert len(results) > 40
        failed = {r["check_name"]: repr(r["exception"]) for r in results if r["status"] != "passed"}
        allowed = {**skipped, **excused}
        assert set(failed) <= set(allowed), (solver, failed)
        for name, reason in allowed.items():
            assert name not in failed or reason in failed[name]


DDP_SCRIPT = """
import numpy as np
from sklearn.datasets import load_diabetes
from linreg import LinearRegressor
X, y = load_diabetes(return_X_y=True)
two = LinearRegressor(solver="lstsq", precision="64-true", strategy="ddp", devices=2, accelerator="cpu").fit(X, y)
one = LinearRegressor(solver="lstsq", precision="64-true").fit(X, y)
gap = np.abs(two.coef_ - one.coef_).max() / np.abs(one.coef_).max()
print("gap", gap, two.score(X, y) - one.score(X, y), flush=True)
# Lightning ends the other rank when this one exits: wait until both have printed.
import torch.distributed
if torch.distributed.is_initialized():
    torch.distributed.barrier()
"""


@pytest.mark.slow
def test_two_process_ddp_fit_equals_one_process(tmp_path) -> None:
    """DDP from a script: Lightning starts the second process by running the script again."""
    script = tmp_path / "fit_ddp.py"
    script.write_text(DDP_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr[-3000:]
    gaps = [line.split()[1:] for line in run.stdout.splitlines() if line.startswith("gap")]
    # Rank 0's line at least: Lightning may end the second rank once the first exits, before it prints.
    assert 1 <= len(gaps) <= 2
    for coef_gap, score_gap in gaps:
        assert float(coef_gap) < 1e-10 and abs(float(score_gap)) < 1e-12
    assert "Initializing distributed" not in run.stderr and "all_gather" not in run.stderr  # quiet
