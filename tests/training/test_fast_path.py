"""The fast data path is correct: the batches and the result of the usual DataLoader path, every row once."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from linreg.data.batches import Batches
from linreg.training.module import LinRegModule
from linreg.tutorial.stages import fit_manual
from tests.helpers import SEED, last_ckpt, weights

N, D = 37, 3


@pytest.fixture
def xy() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, D, generator=g)
    return x, x @ torch.tensor([[1.0], [-2.0], [0.5]]) + 0.1 * torch.randn(N, 1, generator=g)


def views(batches: Batches) -> list[dict]:
    return [view for group in batches for view in group]


def test_in_order_batches_equal_the_dataloader_batches(xy) -> None:
    x, y = xy
    ours = views(Batches(x, y, batch_size=8, shuffle="none", group=3))
    usual = list(DataLoader(TensorDataset(x, y), batch_size=8, shuffle=False))
    assert len(ours) == len(usual) == 5
    for view, (bx, by) in zip(ours, usual, strict=True):
        assert torch.equal(view["x"], bx) and torch.equal(view["y"], by) and view["n"] == len(bx)


def test_groups_hold_consecutive_batches(xy) -> None:
    x, y = xy
    grouped, single = Batches(x, y, 4, "blocks", group=3), Batches(x, y, 4, "blocks", group=1)
    assert len(grouped) == 4 and len(single) == 10  # 10 batches of ≤ 4 rows, in groups of 3
    assert all(len(g) <= 3 for g in grouped)
    for a, b in zip(views(grouped), views(single), strict=True):
        assert torch.equal(a["x"], b["x"])


@pytest.mark.parametrize("shuffle", ["blocks", "rows"])
def test_shuffled_epochs_cover_every_row_once_in_a_new_seeded_order(shuffle) -> None:
    x = torch.arange(N, dtype=torch.float32)[:, None]
    batches = Batches(x, x, batch_size=5, shuffle=shuffle, seed=7, group=2)
    orders = []
    for epoch in range(3):
        batches.set_epoch(epoch)
        rows = torch.cat([v["x"] for v in views(batches)])[:, 0]
        assert sorted(rows.tolist()) == list(range(N))
        orders.append(rows.tolist())
        batches.set_epoch(epoch)
        assert torch.cat([v["x"] for v in views(batches)])[:, 0].tolist() == orders[-1]  # reproducible
    assert len({tuple(order) for order in orders}) == 3  # each epoch its own order


def test_ranks_split_each_global_batch_without_overlap(xy) -> None:
    x, y = xy
    ranks = [views(Batches(x, y, 8, "blocks", seed=3, rank=r, world_size=2)) for r in range(2)]
    whole = views(Batches(x, y, 8, "blocks", seed=3))
    assert len(ranks[0]) == len(ranks[1]) == len(whole)  # every rank takes the same number of steps
    for a, b, w in zip(*ranks, whole, strict=True):
        assert torch.equal(torch.cat([a["x"], b["x"]]), w["x"]) and a["n"] == b["n"] == len(w["x"])


@pytest.mark.parametrize("rows_per_step", ["0", "9", "1000"])
def test_grouped_fit_equals_the_manual_dataloader_loop(cli, workdir, xy, rows_per_step) -> None:
    """Same result as the slow path for a fixed order, whatever the grouping, bit for bit: 37 rows in
    batches of 3 make 13 updates an epoch, one per step (0), in steps of 3 with a short last one (9),
    or all in one step (1000)."""
    x, y = xy
    pd.DataFrame({"a": x[:, 0], "b": x[:, 1], "c": x[:, 2], "y": y[:, 0]}).to_csv(workdir / "t.csv", index=False)
    common = ("--data.path", "t.csv", "--data.batch_size", "3", "--data.shuffle", "none", "--model.momentum", "0.5")
    common += ("--model.lr", "0.01", "--data.standardize", "false")  # the tutorial's SGD, not the defaults
    assert cli("fit", *common, "--data.rows_per_step", rows_per_step, "--trainer.max_epochs", "4") == 0
    ckpt = torch.load(last_ckpt(workdir), weights_only=True)
    assert ckpt["global_step"] == 4 * 13
    torch.manual_seed(0)
    model = LinRegModule(D, 1).model
    table = torch.tensor(pd.read_csv(workdir / "t.csv").to_numpy(), dtype=torch.float32)
    x, y = table[:, :D].contiguous(), table[:, D:].contiguous()  # contiguous, as linreg holds them
    loader = DataLoader(TensorDataset(x, y), batch_size=3, shuffle=False)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.5)
    for _ in range(4):
        for bx, by in loader:
            loss = torch.nn.functional.mse_loss(model(bx), by)
            loss.backward()
            opt.step()
            opt.zero_grad()
    w, b = weights(last_ckpt(workdir))
    assert torch.equal(w, model.lin.weight.detach()) and torch.equal(b, model.lin.bias.detach())
    # and the reference loop agrees
    torch.manual_seed(0)
    ref = LinRegModule(D, 1).model
    fit_manual(ref, x, y, lr=0.01, epochs=4, batch_size=3, momentum=0.5)
    assert torch.equal(w, ref.lin.weight.detach())


def test_gradient_accumulation_flag_is_refused(cli, capsys) -> None:
    assert cli("fit", "--config", SEED, "--trainer.accumulate_grad_batches", "2") == 1
    assert "accumulate_grad_batches is not supported" in capsys.readouterr().err
