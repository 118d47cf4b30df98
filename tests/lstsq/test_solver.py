"""LeastSquares against references that share nothing with its method: NIST, statsmodels, scikit-learn, numpy."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from linreg.lstsq import LeastSquares, Optimum
from tests.helpers import NIST, NIST_GOAL


def fit(x: np.ndarray, y: np.ndarray, batch: int = 7, pred: np.ndarray | None = None, **kw) -> LeastSquares:
    """A solver fed ``batch`` rows at a time, the way a data loader streams them."""
    y = y[:, None] if y.ndim == 1 else y
    ls = LeastSquares(x.shape[1], y.shape[1], **kw)
    for i in range(0, len(y), batch):
        ls.update(
            torch.tensor(x[i : i + batch]),
            torch.tensor(y[i : i + batch]),
            None if pred is None else torch.tensor(pred[i : i + batch]),
        )
    return ls


def lre(estimate: float, certified: float) -> float:
    error = abs(estimate - certified) / abs(certified) if certified != 0 else abs(estimate)
    return 15.0 if error == 0 else min(15.0, -math.log10(error))


def params(opt: Optimum, j: int = 0) -> np.ndarray:
    """Model-order parameters of target j: the intercept first when there is one."""
    coef = opt.coef[j].numpy()
    return coef if opt.intercept is None else np.concatenate([opt.intercept[j : j + 1].numpy(), coef])


def inference_table(opt: Optimum, names: list[str], j: int = 0) -> dict[str, np.ndarray]:
    """One target's inference as arrays in model order, to set against statsmodels' results."""
    inf = opt.inference[j]
    rows = ([inf["intercept"]] if inf["intercept"] is not None else []) + [inf["coef"][n] for n in names]
    return {key: np.array([r[key] for r in rows]) for key in ("se", "t", "p", "ci_low", "ci_high")}


@pytest.fixture(scope="module")
def nist() -> dict[str, dict]:
    if not (NIST / "certified.json").is_file():
        pytest.skip(f"NIST StRD data not found at {NIST} (shared/data/nist beside the checkout)")
    certified = json.loads((NIST / "certified.json").read_text())
    out = {}
    for name, spec in certified.items():
        if not name.startswith("_"):
            table = pd.read_csv(NIST / spec["csv"], dtype=np.float64)
            out[name] = {**spec, "x": table[spec["features"]].to_numpy(), "y": table["y"].to_numpy()}
    return out


@pytest.fixture(scope="module")
def diabetes() -> tuple[np.ndarray, np.ndarray, list[str]]:
    from sklearn.datasets import load_diabetes

    data = load_diabetes(as_frame=True, scaled=False)
    return data.data.to_numpy(np.float64), data.target.to_numpy(np.float64), list(data.data.columns)


@pytest.mark.parametrize("batch", [7, 10_000])
@pytest.mark.parametrize("name", list(NIST_GOAL))
def test_nist_certified_values(nist: dict[str, dict], name: str, batch: int) -> None:
    spec = nist[name]
    opt = fit(spec["x"], spec["y"], batch=batch, fit_intercept=spec["intercept"]).solve(spec["features"])
    digits = min(lre(e, c) for e, c in zip(params(opt), spec["coefficients"]))
    assert digits >= NIST_GOAL[name], f"{name}: {digits:.1f} correct digits"
    inf = opt.inference[0]
    assert lre(inf["sigma"], spec["residual_sd"]) >= 6
    assert lre(inf["r2"], spec["r_squared"]) >= 6
    if spec["residual_sd"] > 0:  # Wampler1 fits exactly: its standard errors are 0
        se = [inf["intercept"]["se"]] if spec["intercept"] else []
        se += [inf["coef"][f]["se"] for f in spec["features"]]
        assert min(lre(e, c) for e, c in zip(se, spec["coefficient_sd"])) >= NIST_GOAL[name] - 2


def assert_same_as_statsmodels(opt: Optimum, x: np.ndarray, y: np.ndarray, names: list[str], j: int = 0) -> None:
    import statsmodels.api as sm

    intercept = opt.intercept is not None
    ref = sm.OLS(y, sm.add_constant(x) if intercept else x).fit()
    ours, inf = inference_table(opt, names, j), opt.inference[j]
    close = {"rtol": 1e-6, "atol": 0}
    np.testing.assert_allclose(params(opt, j), ref.params, rtol=1e-8)
    np.testing.assert_allclose(ours["se"], ref.bse, **close)
    np.testing.assert_allclose(ours["t"], ref.tvalues, **close)
    np.testing.assert_allclose(ours["p"], ref.pvalues, **close)
    np.testing.assert_allclose(np.column_stack([ours["ci_low"], ours["ci_high"]]), ref.conf_int(), **close)
    np.testing.assert_allclose([inf["r2"], inf["r2_adj"]], [ref.rsquared, ref.rsquared_adj], **close)
    np.testing.assert_allclose(inf["sigma"] ** 2, ref.scale, **close)
    assert inf["df_resid"] == ref.df_resid


def test_inference_equals_statsmodels_on_diabetes(diabetes) -> None:
    x, y, names = diabetes
    opt = fit(x, y, batch=64).solve(names)
    assert opt.inference_note is None and opt.unique and opt.collinear == [] and opt.n == len(y)
    assert_same_as_statsmodels(opt, x, y, names)


def test_inference_equals_statsmodels_on_longley(nist) -> None:
    spec = nist["Longley"]
    assert_same_as_statsmodels(
        fit(spec["x"], spec["y"]).solve(spec["features"]), spec["x"], spec["y"], spec["features"]
    )


def test_inference_without_intercept_uses_the_uncentered_r2(diabetes) -> None:
    x, y, names = diabetes
    assert_same_as_statsmodels(fit(x, y, fit_intercept=False).solve(names), x, y, names)


def test_several_targets_are_fitted_each_as_alone(diabetes) -> None:
    x, y, names = diabetes
    ys = np.column_stack([y, x[:, 2] * 3 + 0.01 * y, -y])
    both = fit(x[:, 3:], ys, batch=50).solve(names[3:])
    for j in range(ys.shape[1]):
        alone = fit(x[:, 3:], ys[:, j], batch=50).solve(names[3:])
        np.testing.assert_allclose(params(both, j), params(alone), rtol=1e-10)
        assert_same_as_statsmodels(both, x[:, 3:], ys[:, j], names[3:], j)
    assert both.mse == pytest.approx(np.mean([fit(x[:, 3:], ys[:, j]).solve().mse for j in range(3)]), rel=1e-12)


def test_too_few_rows_gives_no_inference_and_the_least_norm_solution() -> None:
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(5, 8)), rng.normal(size=5)
    opt = fit(x, y, batch=2).solve()
    assert opt.inference is None and "collinear" in opt.inference_note and not opt.unique
    assert len(opt.collinear) == 8 - 4  # 5 rows, one of them spent on the intercept
    xc = x - x.mean(0)
    np.testing.assert_allclose(opt.coef[0].numpy(), np.linalg.pinv(xc) @ (y - y.mean()), rtol=1e-9)
    assert opt.mse == pytest.approx(0.0, abs=1e-20)
    # rows = parameters, full rank: exact fit, but no residual degrees of freedom
    square = fit(x[:, :4], y, batch=2).solve()
    assert square.inference is None and "no residual degrees of freedom" in square.inference_note and square.unique


@pytest.mark.parametrize("factor", [1.0, 2.0])  # a copy; a multiple (least-norm in original units, not scaled ones)
@pytest.mark.parametrize("intercept", [True, False])
def test_a_duplicated_column_is_named_and_the_least_norm_solution_kept(
    diabetes, intercept: bool, factor: float
) -> None:
    x, y, names = diabetes
    x2 = np.column_stack([x, factor * x[:, 2]])
    opt = fit(x2, y, batch=100, fit_intercept=intercept).solve([*names, "bmi_again"])
    assert opt.collinear == ["bmi_again"] and not opt.unique
    assert opt.inference is None and "bmi_again" in opt.inference_note
    design = x2 - x2.mean(0) if intercept else x2
    target = y - y.mean() if intercept else y
    want = np.linalg.pinv(design) @ target
    np.testing.assert_allclose(opt.coef[0].numpy(), want, rtol=1e-8, atol=1e-10 * np.abs(want).max())
    full = fit(x, y, fit_intercept=intercept).solve()
    assert opt.mse == pytest.approx(full.mse, rel=1e-10)
    if intercept:
        assert opt.intercept[0].item() == pytest.approx(full.intercept[0].item(), rel=1e-9)


@pytest.mark.parametrize("intercept", [True, False])
def test_ranks_combine_exactly_whatever_their_shifts(intercept: bool) -> None:
    """DDP without processes: each part's state is gathered as Lightning's all_gather stacks it."""
    rng = np.random.default_rng(2)
    n, d, k = 300, 4, 2
    # large means with an intercept (the shifts then differ a lot); without one, large means would make
    # the design itself ill-conditioned, and 1e-12 would measure that rather than the combination
    offset = np.array([5e3, -20, 1e5, 0.0]) if intercept else np.array([1.0, -2.0, 3.0, 0.0])
    x = rng.normal(size=(n, d)) * [1, 10, 100, 0.1] + offset
    y = x @ rng.normal(size=(d, k)) + rng.normal(size=(n, k)) + [3e4, -1]
    pred = y + rng.normal(size=(n, k))
    whole = fit(x, y, batch=64, pred=pred, fit_intercept=intercept)
    # different first batches (so different shifts and scales), one rank empty, and the empty one first
    cuts = [(0, 0), (200, 300), (0, 200)]
    parts = [
        fit(x[a:b], y[a:b], batch=b - a if i == 1 else 13, pred=pred[a:b], fit_intercept=intercept)
        for i, (a, b) in enumerate(cuts)
    ]
    states = torch.stack([p.state() for p in parts])
    assert len({p.state().shape for p in parts}) == 1
    for p in parts:
        p.all_gather(lambda t: states)
    want = whole.solve()
    for p in parts:
        got = p.solve()
        assert got.n == n
        np.testing.assert_allclose(got.coef.numpy(), want.coef.numpy(), rtol=1e-12)
        if intercept:
            np.testing.assert_allclose(got.intercept.numpy(), want.intercept.numpy(), rtol=1e-12)
        for field in ("mse", "sgd_mse", "target_var", "target_ms"):
            assert getattr(got, field) == pytest.approx(getattr(want, field), rel=1e-12), field
        for j in range(k):
            a, b = (
                inference_table(got, [f"x{i}" for i in range(d)], j),
                inference_table(want, [f"x{i}" for i in range(d)], j),
            )
            np.testing.assert_allclose(a["se"], b["se"], rtol=1e-12)
    # a single process: the strategy hands the state back without a new dimension
    alone = fit(x, y, fit_intercept=intercept)
    alone.all_gather(lambda t: t)
    np.testing.assert_allclose(alone.solve().coef.numpy(), want.coef.numpy(), rtol=1e-12)


def test_all_ranks_empty_then_solve_refuses() -> None:
    ls = LeastSquares(3, 1)
    ls.all_gather(lambda t: torch.stack([t, t]))
    with pytest.raises(ValueError, match="no rows"):
        ls.solve()


def test_large_target_mean_loses_nothing() -> None:
    rng = np.random.default_rng(3)
    n = 5000
    x = rng.normal(size=(n, 3)) * [1.0, 50.0, 0.01] + [0.0, 3e5, 7.0]
    y = 1e6 + (x - [0.0, 3e5, 7.0]) @ [4.0, 0.1, 300.0] + rng.normal(scale=9.0, size=n)
    opt = fit(x, y, batch=1000).solve()
    xc, yc = x - x.mean(0), y - y.mean()
    resid = yc - xc @ np.linalg.lstsq(xc, yc, rcond=None)[0]
    mse = np.mean(resid**2)
    assert 10 < y.std() < 12.5 and abs(y.mean() - 1e6) < 1e3
    assert opt.mse == pytest.approx(mse, rel=1e-9)
    assert opt.inference[0]["r2"] == pytest.approx(1 - mse / y.var(), rel=1e-9)
    assert opt.target_var == pytest.approx(y.var(), rel=1e-9)
    assert opt.target_ms == pytest.approx(np.mean(y**2), rel=1e-12)


def test_float32_batches_match_float64_rows() -> None:
    rng = np.random.default_rng(4)
    x = rng.normal(size=(1000, 5)).astype(np.float32)
    y = (x @ rng.normal(size=5) + 0.5 * rng.normal(size=1000)).astype(np.float32)
    got = fit(x, y, batch=128).solve()
    want = fit(x.astype(np.float64), y.astype(np.float64), batch=128).solve()
    np.testing.assert_allclose(got.coef.numpy(), want.coef.numpy(), rtol=1e-13)


def test_sgd_mse_and_objective_of_other_weights(diabetes) -> None:
    x, y, _ = diabetes
    assert math.isnan(Optimum(torch.zeros(1, 10), None, 1.0, None, 1.0, 1.0).excess)  # the old positional form
    opt = fit(x, y).solve()
    assert opt.sgd_mse is None and math.isnan(opt.excess) and opt.objective == pytest.approx(opt.mse, rel=1e-12)
    w = opt.coef.numpy() * 1.01
    b = opt.intercept.numpy() - 3.0
    pred = x @ w[0] + b[0]
    ls = fit(x, y, pred=pred[:, None])
    with_pred = ls.solve()
    assert with_pred.sgd_mse == pytest.approx(np.mean((pred - y) ** 2), rel=1e-12)
    assert ls.objective(torch.tensor(w), torch.tensor(b)) == pytest.approx(with_pred.sgd_mse, rel=1e-9)
    assert with_pred.excess == pytest.approx((with_pred.sgd_mse - with_pred.mse) / with_pred.mse, rel=1e-12)
    assert ls.objective(with_pred.coef, with_pred.intercept) == pytest.approx(with_pred.mse, rel=1e-12)


@pytest.fixture(scope="module")
def standardized(diabetes):
    x, y, names = diabetes
    s_x = x.std(0)  # population std, as a standardizing model computes it
    return x, y, (x - x.mean(0)) / s_x, s_x


def penalized_objective(x, y, coef, intercept, s_x, s_y, l1, l2) -> float:
    """nn.MSELoss of the standardized target + penalties on the standardized coefficients, from scratch."""
    w = coef * s_x / s_y[:, None]
    return float(np.mean(((x @ coef.T + intercept - y) / s_y) ** 2) + l2 * np.sum(w**2) + l1 * np.sum(np.abs(w)))


@pytest.mark.parametrize("standardize_y", [False, True])
@pytest.mark.parametrize("alpha", [0.1, 10.0, 1000.0])
def test_ridge_equals_scikit_learn(standardized, alpha: float, standardize_y: bool) -> None:
    from sklearn.linear_model import Ridge

    x, y, z, s_x = standardized
    s_y = np.array([y.std() if standardize_y else 1.0])
    ref = Ridge(alpha=alpha).fit(z, y / s_y[0])
    l2 = alpha / len(y)
    ls = fit(x, y, batch=50, l2=l2)
    opt = ls.solve(x_scale=torch.tensor(s_x), y_scale=torch.tensor(s_y))
    np.testing.assert_allclose(opt.coef[0].numpy() * s_x / s_y[0], ref.coef_, rtol=1e-6)
    np.testing.assert_allclose(x @ opt.coef[0].numpy() + opt.intercept.numpy(), ref.predict(z) * s_y[0], rtol=1e-9)
    assert opt.inference is None and "penalized" in opt.inference_note and opt.unique
    assert opt.dropped == [[]]
    want = penalized_objective(x, y[:, None], opt.coef.numpy(), opt.intercept.numpy(), s_x, s_y, 0.0, l2)
    assert opt.objective == pytest.approx(want, rel=1e-10)
    assert ls.objective(opt.coef, opt.intercept, x_scale=torch.tensor(s_x), y_scale=torch.tensor(s_y)) == (
        pytest.approx(want, rel=1e-10)
    )


@pytest.mark.parametrize(
    ("alpha", "l1_ratio", "standardize_y"),
    [(0.05, 1.0, False), (1.0, 1.0, False), (8.0, 1.0, False), (0.001, 0.5, True), (0.01, 0.3, True), (0.1, 0.8, True)],
)
def test_lasso_and_elastic_net_equal_scikit_learn(standardized, alpha: float, l1_ratio: float, standardize_y) -> None:
    from sklearn.linear_model import ElasticNet, Lasso

    x, y, z, s_x = standardized
    s_y = np.array([y.std() if standardize_y else 1.0])
    kw = {"alpha": alpha, "tol": 1e-10, "max_iter": 1_000_000}
    ref = (Lasso(**kw) if l1_ratio == 1 else ElasticNet(l1_ratio=l1_ratio, **kw)).fit(z, y / s_y[0])
    l1, l2 = 2 * alpha * l1_ratio, alpha * (1 - l1_ratio)
    names = [f"f{i}" for i in range(x.shape[1])]
    opt = fit(x, y, batch=50, l1=l1, l2=l2).solve(names, x_scale=torch.tensor(s_x), y_scale=torch.tensor(s_y))
    w = opt.coef[0].numpy() * s_x / s_y[0]
    np.testing.assert_array_equal(w == 0, ref.coef_ == 0)
    np.testing.assert_allclose(w, ref.coef_, rtol=1e-5, atol=1e-7 * np.abs(ref.coef_).max())
    assert opt.dropped == [[n for n, c in zip(names, ref.coef_) if c == 0]]
    want = penalized_objective(x, y[:, None], opt.coef.numpy(), opt.intercept.numpy(), s_x, s_y, l1, l2)
    assert opt.objective == pytest.approx(want, rel=1e-10)
    sk_coef = ref.coef_ * s_y[0] / s_x  # scikit-learn's optimum in original units
    sk_intercept = s_y * (ref.intercept_ - ref.coef_ @ (x.mean(0) / s_x))
    sk = penalized_objective(x, y[:, None], sk_coef[None], sk_intercept, s_x, s_y, l1, l2)
    assert opt.objective <= sk * (1 + 1e-12)


def test_penalties_are_averaged_over_targets_like_the_mse(diabetes) -> None:
    """With k targets nn.MSELoss divides by k too: each target's fit is a one-target fit with k times the penalty."""
    x, y, _ = diabetes
    ys = np.column_stack([y, 0.5 * y + x[:, 2]])
    for kw in ({"l2": 0.3}, {"l1": 2.0, "l2": 0.1}):
        both = fit(x, ys, **kw).solve()
        for j in range(2):
            alone = fit(x, ys[:, j], **{k: 2 * v for k, v in kw.items()}).solve()
            np.testing.assert_allclose(params(both, j), params(alone), rtol=1e-9, atol=1e-12)


def test_no_intercept_penalty_in_original_units(diabetes) -> None:
    from sklearn.linear_model import Ridge

    x, y, _ = diabetes
    alpha = 5e4
    ref = Ridge(alpha=alpha, fit_intercept=False).fit(x, y)
    opt = fit(x, y, fit_intercept=False, l2=alpha / len(y)).solve()
    assert opt.intercept is None
    np.testing.assert_allclose(opt.coef[0].numpy(), ref.coef_, rtol=1e-8)


@pytest.mark.parametrize("value", [0.1, 1e6 + 0.1])
def test_a_constant_feature_is_collinear_with_the_intercept(diabetes, value: float) -> None:
    x, y, names = diabetes
    x2 = np.column_stack([x[:, :3], np.full(len(y), value), x[:, 3:]])
    opt = fit(x2, y, batch=3).solve([*names[:3], "const", *names[3:]])
    assert opt.collinear == ["const"] and not opt.unique and opt.inference is None
    assert opt.coef[0, 3].item() == pytest.approx(0.0, abs=1e-9)
    full = fit(x, y).solve()
    np.testing.assert_allclose(np.delete(opt.coef[0].numpy(), 3), full.coef[0].numpy(), rtol=1e-9)
    # without an intercept the constant column is the intercept
    alone = fit(x2, y, batch=3, fit_intercept=False).solve()
    assert alone.collinear == [] and alone.unique
    assert alone.coef[0, 3].item() * value == pytest.approx(full.intercept[0].item(), rel=1e-8)
