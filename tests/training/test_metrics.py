"""The fused epoch sums against numpy in float64, and the metrics the Lightning way: ``trainer.validate()``
returns them and ``ModelCheckpoint(monitor="val/mse")`` keeps the best epoch."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from linreg.data.datamodule import LinRegData
from linreg.training.metrics import RegressionSums, batch_sums
from linreg.training.module import LinRegModule


def _reference(z: np.ndarray, t: np.ndarray) -> dict[str, np.ndarray]:
    e = z - t
    sst = ((t - t.mean(0)) ** 2).sum(0)
    return {"mse": (e**2).mean(0), "mae": np.abs(e).mean(0), "r2": 1 - (e**2).sum(0) / sst}


@pytest.mark.parametrize("mean", [0.0, 1e6])
def test_sums_in_batches_equal_numpy_in_float64(mean: float) -> None:
    rng = np.random.default_rng(0)
    t = (mean + rng.normal(size=(1000, 3)) * [1.0, 10.0, 0.1]).astype(np.float32)
    z = (t + rng.normal(size=t.shape) * 0.5).astype(np.float32)
    sums = RegressionSums(3)
    center = torch.tensor(t.astype(np.float64).mean(0))
    for lo in range(0, 1000, 300):  # uneven batches, as the last batch of an epoch is
        sums.update(batch_sums(torch.from_numpy(z[lo : lo + 300]), torch.from_numpy(t[lo : lo + 300]), center))
    got = sums.compute()
    want = _reference(z.astype(np.float64), t.astype(np.float64))
    for key in want:
        np.testing.assert_allclose(got[key].numpy(), want[key], rtol=1e-6)
    assert int(got["rows"]) == 1000


def test_loss_is_the_row_weighted_mean_of_batch_losses() -> None:
    sums = RegressionSums(1)
    zero = torch.zeros(1)
    sums.update(batch_sums(torch.zeros(5, 1), torch.zeros(5, 1), zero, torch.tensor(2.0)))
    sums.update(batch_sums(torch.zeros(1, 1), torch.zeros(1, 1), zero, torch.tensor(4.0)))
    assert float(sums.compute()["loss"]) == (2.0 * 5 + 4.0) / 6


def test_r2_is_undefined_for_one_row_or_a_constant_target() -> None:
    sums = RegressionSums(1)
    sums.update(batch_sums(torch.ones(1, 1), torch.zeros(1, 1), torch.zeros(1)))
    assert torch.isnan(sums.compute()["r2"]).all()


def _data(rows: int = 64) -> LinRegData:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(rows, 2, generator=g)
    y = x @ torch.tensor([[2.0], [-1.0]]) + 0.3 * torch.randn(rows, 1, generator=g)
    return LinRegData.from_tensors(x, y, val_fraction=0.25, batch_size=8)


class _Seen(L.Callback):
    def __init__(self) -> None:
        self.val_mse: list[float] = []

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.val_mse.append(float(trainer.callback_metrics["val/mse"]))


def test_validate_returns_the_metrics_and_a_monitor_keeps_the_best_epoch(tmp_path: Path) -> None:
    best = ModelCheckpoint(dirpath=tmp_path, monitor="val/mse", mode="min", save_top_k=1, filename="best")
    seen = _Seen()
    trainer = L.Trainer(
        max_epochs=4, default_root_dir=tmp_path, logger=False, callbacks=[seen, best],
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
    )
    data = _data()
    module = LinRegModule(in_features=2, out_features=1, lr=0.01, standardize=True)
    trainer.fit(module, datamodule=data)
    scores = best.best_k_models
    assert len(scores) == 1 and Path(best.best_model_path).name == "best.ckpt"
    assert len(seen.val_mse) == 4 and len(set(seen.val_mse)) == 4  # four different epochs to choose from
    assert float(best.best_model_score) == pytest.approx(min(seen.val_mse), rel=1e-6)
    (result,) = trainer.validate(module, datamodule=data, verbose=False)
    assert {"val/loss", "val/mse", "val/rmse", "val/mae", "val/r2"} <= result.keys()
    x, y = data._exact["val"]
    pred = module(x).detach().double()
    mse = float(((pred - y.double()) ** 2).mean())
    assert result["val/mse"] == pytest.approx(mse, rel=1e-5)
