"""A streamed table's batches are grouped into Lightning steps as in memory (issue 24): the same updates."""

from __future__ import annotations

from pathlib import Path

import torch

from linreg.data.batches import Batches
from linreg.data.datamodule import LinRegData
from linreg.training.module import LinRegModule
from tests.data.test_streams import D, make, write_parts
from tests.helpers import bare_trainer

BATCH = 100


def _fit(folder: Path, rows_per_step: int) -> tuple[LinRegModule, Batches]:
    torch.manual_seed(0)
    data = LinRegData(str(folder), batch_size=BATCH, rows_per_step=rows_per_step, stream=True, shuffle="blocks")
    module = LinRegModule(D, 1, lr=0.01, momentum=0.0, standardize=True, feature_names=data.feature_names)
    trainer = bare_trainer(max_epochs=3)
    trainer.fit(module, datamodule=data)
    assert trainer.global_step == 3 * 30  # every SGD update counted, grouped or not
    batches = data.train_dataloader()
    assert isinstance(batches, Batches)
    return module, batches


def test_streamed_groups_train_as_one_batch_per_step(tmp_path: Path) -> None:
    folder = write_parts(make(3000), tmp_path / "parts", parts=3, row_group=700)
    grouped, batches = _fit(folder, rows_per_step=4 * BATCH)
    assert batches.group == 4 and len(batches) == 8  # 30 batches in groups of 4
    single, batches = _fit(folder, rows_per_step=0)
    assert batches.group == 1
    assert torch.equal(grouped.model.lin.weight, single.model.lin.weight)
    assert torch.equal(grouped.model.lin.bias, single.model.lin.bias)
    assert grouped.loss_history == single.loss_history
