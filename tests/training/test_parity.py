"""The tutorial's lesson checked by machine: Lightning trains exactly like the hand-written loop."""

from __future__ import annotations

import copy

import torch

from linreg.training.module import LinRegModule
from linreg.tutorial.stages import X_TUTORIAL, Y_TUTORIAL, fit_manual
from tests.helpers import SEED, last_ckpt, scalars, weights

TOL = 1e-7


def _reference(batch_size: int | None) -> tuple[torch.nn.Module, object]:
    """The manual loop from the module's own initial weights (seed 0, as configs/seed.yaml)."""
    torch.manual_seed(0)
    model = copy.deepcopy(LinRegModule(1, 1).model)
    return model, fit_manual(model, X_TUTORIAL, Y_TUTORIAL, lr=0.01, epochs=100, batch_size=batch_size)


def _check(workdir, batch_size: int | None) -> float:
    model, ref = _reference(batch_size)
    ckpt = last_ckpt(workdir)
    w, b = weights(ckpt)
    logged = scalars(ckpt.parents[1])
    losses = [v for _, v in logged["train/loss"]]
    ws = [v for _, v in logged["w"]]
    assert len(losses) == 100 and len(ws) == 100
    diffs = [
        (w - model.lin.weight).abs().max().item(),
        (b - model.lin.bias).abs().max().item(),
        max(abs(a - r) for a, r in zip(losses, ref.losses)),
        max(abs(a - r) for a, r in zip(ws, ref.weights)),
    ]
    assert max(diffs) <= TOL, diffs
    return max(diffs)


def test_seed_config_full_batch_equals_manual_loop(cli, workdir) -> None:
    assert cli("fit", "--config", SEED) == 0
    print("max |Δ| full batch:", _check(workdir, None))


def test_minibatch_no_shuffle_equals_manual_loop(cli, workdir) -> None:
    assert cli("fit", "--config", SEED, "--data.batch_size", "2", "--data.shuffle", "none") == 0
    print("max |Δ| batch 2:", _check(workdir, 2))


def test_momentum_and_weight_decay_equal_manual_loop(cli, workdir) -> None:
    assert cli("fit", "--config", SEED, "--model.momentum", "0.9", "--model.weight_decay", "0.01") == 0
    torch.manual_seed(0)
    model = copy.deepcopy(LinRegModule(1, 1).model)
    fit_manual(model, X_TUTORIAL, Y_TUTORIAL, lr=0.01, epochs=100, momentum=0.9, weight_decay=0.01)
    w, b = weights(last_ckpt(workdir))
    assert torch.equal(w, model.lin.weight.detach()) and torch.equal(b, model.lin.bias.detach())
