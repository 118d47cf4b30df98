"""The training step's short cuts (issue 24) change nothing: torch's backward and step where Lightning's
path would add nothing, and training rows served standardized where they are a copy anyway."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import torch

from linreg.data.datamodule import LinRegData
from linreg.lightning_private import plain_steps
from linreg.training.metrics import batch_sums, group_sums
from linreg.training.module import LinRegModule
from tests.helpers import bare_trainer

N, D, BATCH, EPOCHS = 200, 3, 16, 3  # 13 updates an epoch, in groups of 4 (rows_per_step 64)


def _tables(tmp_path: Path) -> tuple[Path, Path]:
    """The same float32 values as a CSV (read as float64, trained on a float32 copy) and an NPZ (float32,
    trained on as read); features with a large mean, where standardizing matters."""
    g = np.random.default_rng(0)
    x = (g.normal(size=(N, D)) * [1.0, 10.0, 0.1] + [1950.0, -3.0, 0.5]).astype(np.float32)
    y = (x @ np.array([0.5, -0.2, 3.0]) + g.normal(size=N)).astype(np.float32)
    csv, npz = tmp_path / "t.csv", tmp_path / "t.npz"
    frame = pd.DataFrame({f"x{j}": x[:, j].astype(np.float64) for j in range(D)} | {"y": y.astype(np.float64)})
    frame.to_csv(csv, index=False, float_format="%.17g")  # the float32 values exactly, as float64
    np.savez(npz, X=x, y=y)
    return csv, npz


def _fit(path: Path, *callbacks: L.Callback) -> tuple[LinRegModule, L.Trainer]:
    torch.manual_seed(0)
    data = LinRegData(str(path), batch_size=BATCH, rows_per_step=4 * BATCH, standardize=True)
    module = LinRegModule(D, 1, lr=0.05, momentum=0.0, standardize=True, feature_names=data.feature_names)
    trainer = bare_trainer(
        max_epochs=EPOCHS,
        callbacks=list(callbacks),
    )
    trainer.fit(module, datamodule=data)
    return module, trainer


def test_rows_served_standardized_train_bit_for_bit_as_rows_standardized_each_step(tmp_path: Path) -> None:
    csv, npz = _tables(tmp_path)
    served, _ = _fit(csv)
    per_step, _ = _fit(npz)
    assert served._served_scaled and not per_step._served_scaled  # the CSV's float32 copy is standardized once
    assert torch.equal(served.x_mean, per_step.x_mean) and torch.equal(served.x_scale, per_step.x_scale)
    assert torch.equal(served.model.lin.weight, per_step.model.lin.weight)
    assert torch.equal(served.model.lin.bias, per_step.model.lin.bias)
    assert served.loss_history == per_step.loss_history


def test_served_rows_are_the_steps_standardization_and_go_back_to_the_files_values(tmp_path: Path) -> None:
    csv, _ = _tables(tmp_path)
    data = LinRegData(str(csv), batch_size=BATCH, standardize=True)
    data.check("fit")
    raw = data._exact["train"][0]
    assert isinstance(raw, torch.Tensor) and raw.dtype == torch.float64
    mean, scale = raw.mean(0), raw.std(0)
    assert data.serve_scaled((mean, scale))
    rows = data._splits["train"][0]
    assert torch.equal(rows, (raw.float() - mean.float()) / scale.float())  # as LinRegModule._scaled computes
    assert data.serve_scaled((mean, scale))  # asked again: nothing to do
    assert not data.serve_scaled(None)
    assert torch.equal(data._splits["train"][0], raw.float())
    assert data._splits["train"][0] is rows  # in place: a loader made before on_train_start sees them


def test_a_float32_table_is_not_copied_to_serve_it_standardized(tmp_path: Path) -> None:
    _, npz = _tables(tmp_path)
    data = LinRegData(str(npz), batch_size=BATCH, standardize=True)
    data.check("fit")
    x = data._splits["train"][0]
    assert not data.serve_scaled((torch.zeros(D), torch.ones(D)))
    assert data._splits["train"][0] is x and x.data_ptr() == data._exact["train"][0].data_ptr()


class Hooks(L.Callback):
    """A callback that watches every gradient: Lightning's own path must run for it."""

    def __init__(self) -> None:
        self.backward = self.step = 0

    def on_after_backward(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.backward += 1

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: object) -> None:
        self.step += 1


def test_global_step_counts_every_update_on_either_path(tmp_path: Path) -> None:
    _, npz = _tables(tmp_path)
    updates = EPOCHS * -(-N // BATCH)
    _, plain = _fit(npz)
    hooks = Hooks()
    _, lightning = _fit(npz, hooks)
    assert plain_steps(plain) and not plain_steps(lightning)
    assert plain.global_step == lightning.global_step == updates
    assert hooks.backward == hooks.step == updates


def test_plain_and_lightning_paths_train_alike(tmp_path: Path) -> None:
    _, npz = _tables(tmp_path)
    plain, _ = _fit(npz)
    hooked, _ = _fit(npz, Hooks())
    assert torch.equal(plain.model.lin.weight, hooked.model.lin.weight)
    assert plain.loss_history == hooked.loss_history


def test_a_groups_sums_at_once_equal_each_updates_sums_added() -> None:
    """``group_sums`` (one set of kernels per Lightning step) against ``batch_sums`` per update, with and
    without sample weights: each update's loss weighted by its own rows or weights."""
    g = torch.Generator().manual_seed(0)
    sizes = [5, 7, 3]
    preds = [torch.randn(n, 2, generator=g) for n in sizes]
    ys = [torch.randn(n, 2, generator=g) for n in sizes]
    losses = [torch.rand((), generator=g) for _ in sizes]
    ws = [torch.rand(n, generator=g) for n in sizes]
    center = torch.tensor([0.1, -0.2], dtype=torch.float64)
    for w in (None, ws):
        each = sum(
            batch_sums(p, y, center, loss, w[i] if w else None) for i, (p, y, loss) in enumerate(zip(preds, ys, losses))
        )
        once = group_sums(torch.cat(preds), torch.cat(ys), center, losses, sizes, w)
        assert isinstance(each, torch.Tensor) and torch.allclose(once, each, rtol=1e-12, atol=0)
