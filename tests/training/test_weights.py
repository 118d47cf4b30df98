"""Sample weights in training: the weighted metrics against scikit-learn's ``sample_weight``, the weighted
loss's DDP share against the whole batch's gradient, and SGD against the WLS optimum."""

from __future__ import annotations

import lightning as L
import numpy as np
import pytest
import torch

from linreg.data.datamodule import LinRegData
from linreg.training.metrics import RegressionSums, batch_sums, weighted_mse
from linreg.training.module import LinRegModule


def test_weighted_sums_equal_scikit_learn_sample_weight() -> None:
    """MSE, MAE and R² of two targets, summed in uneven batches, as scikit-learn's metrics with
    sample_weight; rows of weight 0 count for nothing."""
    from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

    rng = np.random.default_rng(1)
    t = 1e3 + rng.normal(size=(500, 2)) * [1.0, 20.0]
    z = t + rng.normal(size=t.shape) * [0.3, 4.0]
    w = rng.uniform(0, 3, size=500)
    w[::7] = 0.0
    sums = RegressionSums(2)
    center = torch.tensor(t.mean(0))
    for lo in range(0, 500, 130):
        part = slice(lo, lo + 130)
        sums.update(batch_sums(torch.tensor(z[part]), torch.tensor(t[part]), center, w=torch.tensor(w[part])))
    got = sums.compute()
    multi = {"multioutput": "raw_values", "sample_weight": w}
    np.testing.assert_allclose(got["mse"].numpy(), mean_squared_error(t, z, **multi), rtol=1e-10)
    np.testing.assert_allclose(got["mae"].numpy(), mean_absolute_error(t, z, **multi), rtol=1e-10)
    np.testing.assert_allclose(got["r2"].numpy(), r2_score(t, z, **multi), rtol=1e-10)
    assert int(got["rows"]) == 500


def test_weights_summing_below_one_keep_r2() -> None:
    """Weights normalized to sum to 1 (a common convention): R² is still defined, and equal to scikit-learn's."""
    from sklearn.metrics import r2_score

    t = np.array([[1.0], [2.0], [4.0], [3.0]])
    z = np.array([[1.2], [1.9], [3.5], [3.3]])
    w = np.array([0.1, 0.2, 0.3, 0.4])
    sums = RegressionSums(1)
    sums.update(batch_sums(torch.tensor(z), torch.tensor(t), torch.zeros(1), w=torch.tensor(w)))
    np.testing.assert_allclose(sums.compute()["r2"].item(), r2_score(t, z, sample_weight=w), rtol=1e-12)


def test_ddp_shares_of_the_weighted_loss_add_up_to_the_global_gradient() -> None:
    """Each rank's loss (its rows, scaled by world / global weight sum), averaged as DDP averages
    gradients, has exactly the gradient of the whole batch's weighted MSE; an all-zero batch gives 0."""
    g = torch.Generator().manual_seed(0)
    x, t, w = torch.randn(9, 3, generator=g), torch.randn(9, 2, generator=g), torch.rand(9, generator=g)
    lin = torch.nn.Linear(3, 2)

    def grad(loss: torch.Tensor) -> torch.Tensor:
        lin.zero_grad()
        loss.backward()
        return torch.cat([lin.weight.grad.flatten(), lin.bias.grad])

    whole = grad(weighted_mse(lin(x), t, w, 1, None)[0])
    want = grad((w[:, None] * (lin(x) - t) ** 2).sum() / (w.sum() * 2))
    torch.testing.assert_close(whole, want)
    total = float(w.sum())
    ranks = [grad(weighted_mse(lin(x[part]), t[part], w[part], 2, total)[0]) for part in (slice(0, 5), slice(5, 9))]
    torch.testing.assert_close((ranks[0] + ranks[1]) / 2, whole)
    loss, logged = weighted_mse(lin(x[:2]), t[:2], torch.zeros(2), 1, None)
    assert float(loss.detach()) == 0.0 and float(logged) == 0.0


def _heteroscedastic(rows: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(rows, 2, generator=g) * torch.tensor([4.0, 1.0]) + torch.tensor([10.0, -1.0])
    sd = 0.2 + (x[:, :1] - 10.0)
    y = 1.0 + x @ torch.tensor([[2.0], [-1.0]]) + torch.randn(rows, 1, generator=g) * sd
    return x.double(), y.double(), (1.0 / sd.square()).flatten().double()


@pytest.mark.parametrize("batch_size", [None, 64])
def test_sgd_reaches_the_wls_optimum(batch_size: int | None) -> None:
    """SGD on the weighted MSE (full batch, and mini-batches with averaging) ends within --model.tol of
    the weighted least-squares optimum, whose coefficients are statsmodels' WLS."""
    import statsmodels.api as sm

    torch.manual_seed(0)  # the initial weights
    x, y, w = _heteroscedastic(400)
    data = LinRegData.from_tensors(x, y, sample_weight=w, batch_size=batch_size, seed=0)
    module = LinRegModule(2, 1, feature_names=["x0", "x1"], standardize=True, tol=1e-6 if batch_size is None else 1e-3)
    trainer = L.Trainer(
        max_epochs=300, logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False
    )
    trainer.fit(module, datamodule=data)
    ref = sm.WLS(y.numpy()[:, 0], sm.add_constant(x.numpy()), weights=w.numpy()).fit()
    opt = module.optimum
    np.testing.assert_allclose(np.r_[opt.intercept.numpy(), opt.coef[0].numpy()], ref.params, rtol=1e-8)
    assert opt.excess <= (1e-6 if batch_size is None else 1e-3)
    np.testing.assert_allclose(opt.mse, np.average(ref.resid**2, weights=w.numpy()), rtol=1e-9)
    # the final model's training metrics are the weighted ones, of its own predictions
    pred = module(x.float()).double().detach().numpy()[:, 0]
    mse = np.average((pred - y.numpy()[:, 0]) ** 2, weights=w.numpy())
    np.testing.assert_allclose(module.final_metrics["train/mse"], mse, rtol=1e-5)
    if batch_size is None:  # within 1e-6 of the optimum's MSE: the coefficients too (1e-3 leaves a weak direction free)
        w_coef, _ = module.coefficients()
        np.testing.assert_allclose(w_coef[0].double().numpy(), ref.params[1:], rtol=0.02)


def test_a_mid_epoch_checkpoint_of_the_older_sums_layout_is_taken_fresh() -> None:
    """Before sample weights the sums had no weight sum (2 + 4k values): a resumed fit starts them afresh."""
    from linreg.training.metrics import adopt_metric_states

    module = LinRegModule(2, 1)
    mine = module.state_dict()
    state = dict(mine) | {"train_sums.sums": torch.ones(2 + 4)}
    adopt_metric_states(state, mine)
    assert state["train_sums.sums"].shape == (3 + 4,)
    module.load_state_dict(state)
