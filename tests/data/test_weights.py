"""The weights column as the data module carries it: through a random split, a memory-mapped ``.npy``
table and DDP shards, split off again per batch, with the global batch's weight sum."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from linreg.data.datamodule import LinRegData
from linreg.data.weights import WeightedBatches
from linreg.errors import LinRegError


def test_a_random_split_keeps_each_row_with_its_weight() -> None:
    x = torch.arange(40, dtype=torch.float64).reshape(-1, 1)
    data = LinRegData.from_tensors(x, 2 * x, sample_weight=x[:, 0] + 1, val_fraction=0.25, batch_size=7)
    data.check("fit")
    for key in ("train", "val"):
        batches = data._batches(key)
        assert isinstance(batches, WeightedBatches)
        for batch in batches.batches():
            assert batch["y"].shape[1] == 1  # the weights split off
            torch.testing.assert_close(batch["w"], batch["x"][:, 0].double() + 1)
    assert data.scaling is not None and data.scaling[2].shape == (1,)  # the target's statistics alone


def test_ddp_shards_carry_the_global_batch_weight_sum() -> None:
    y = torch.cat([torch.zeros(11, 1), torch.arange(11.0).reshape(-1, 1)], 1)  # target, then weights
    for shuffle in ("none", "blocks", "rows"):
        seen = []
        for rank in (0, 1):
            batches = WeightedBatches(torch.zeros(11, 1), y, 4, shuffle, 3, rank, 2)
            seen.append([(float(b["w"].sum()), b["w_total"]) for b in batches.batches()])
        for (w0, total), (w1, total1) in zip(*seen):
            assert total == total1 == w0 + w1  # the two ranks' rows make up the global batch
        assert sum(total for _, total in seen[0]) == float(y[:, 1].sum())


def test_a_memory_mapped_table_refuses_a_negative_weight_by_row(tmp_path) -> None:
    records = np.zeros(5, dtype=[("x", "f4"), ("y", "f4"), ("w", "f4")])
    records["w"] = [1, 1, 1, -0.5, 1]
    np.save(tmp_path / "t.npy", records)
    data = LinRegData(path=str(tmp_path / "t.npy"), weights="w", batch_size=2)
    assert data.feature_names == ["x"]
    with pytest.raises(LinRegError, match=r"t\.npy: weights column 'w' row 4 is -0\.5"):
        data.check("fit")
