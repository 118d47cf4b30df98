"""SGD epochs: ``linreg fit`` against a raw PyTorch loop over contiguous slices, and where an update's time goes.

One generated data set (X float32 n×d standard normal, y = X·w + 0.5 + N(0, 1)), measured side by
side at each batch size:

- (a) raw PyTorch: nn.Linear + MSE + SGD over contiguous slices, the limit of an SGD pass;
- floor: a bare LightningModule over linreg's own ``Batches`` (no metrics, no logging): what
  Lightning's loop costs by itself, so the gap a→c splits into "Lightning" and "what linreg adds";
- fused: the floor with manual optimization, each Lightning step running several SGD updates over
  consecutive slices of a 262144-row block (linreg's ``--data.rows_per_step`` scheme) without linreg's
  metrics and logging;
- (b) plain Lightning the usual way: TensorDataset + DataLoader(shuffle=True), bounded by
  ``--b-rows`` because it runs at ~0.1 M rows/s;
- (c) ``linreg fit`` through linreg's own CLI class, in process, on an ``.npz`` of the same data, with
  its defaults (TensorBoard logging, train metrics, checkpoint) and ``--data.shuffle blocks``; and
  the same with ``--model.average true``;
- (c std) ``linreg fit`` standardizing (``--data.standardize true``, a table's default) on the float32
  ``.npz``, whose rows are trained on as read and standardized each update, and (c std64) on the same
  values stored as float64, whose float32 training copy is standardized once
  (``LinRegData.serve_scaled``).

Throughput is rows/s of training: the median over epochs of rows / epoch wall (end-of-epoch hooks
included), the first epoch skipped (warm-up). c/a is the issue's figure (goal >= 0.9).

Then, per batch size, a profile of linreg's steady-state epochs (cProfile, second epoch on): ms per
SGD update in forward (model and loss), backward, optimizer (step and zero_grad), metrics (time
inside torchmetrics), Lightning (its own Python) and other (linreg's step code, batching, logging),
beside the same parts of the raw loop timed directly. cProfile slows Python more than kernels, so
the parts are also shown scaled to the unprofiled ms per update.

Usage: ``python -m scripts.bench.epochs [--rows N] [--tiny] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import cProfile
import math
import pstats
import statistics
import tempfile
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from linreg.data.batches import Batches
from scripts.bench.common import EpochTimer, clock, fit_args, make_data, run_linreg, run_main, write_npz

BATCH_SIZES = (1024, 4096, 65536)
TINY_BATCH_SIZES = (64, 256, 2048)
FUSED_ROWS = 262144  # rows per Lightning step in the fused variant: 4 updates at batch 65536, 256 at 1024
PARTS = ("forward", "backward", "optimizer", "metrics", "Lightning", "other")


def _flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--batch-sizes", type=int, nargs="+", default=None, help="default 1024 4096 65536")
    p.add_argument("--min-seconds", type=float, default=None, help="least time per raw-loop measurement (default 1)")
    p.add_argument("--b-rows", type=int, default=None, help="rows (b) trains on (default 300,000)")
    p.add_argument("--c-rows", type=int, default=None, help="rows timed for floor, fused, (c) (default 6,000,000)")
    p.add_argument("--max-timed-epochs", type=int, default=5, help="cap on their timed epochs for small --rows")
    p.add_argument("--profile-updates", type=int, default=None, help="updates profiled per batch size; 0: none")


def _as_xy(batch: Any) -> tuple[Tensor, Tensor]:
    """(x, y) from a tuple, one linreg batch dict, or a linreg group (a list of them)."""
    if isinstance(batch, list) and batch and isinstance(batch[0], dict):
        if len(batch) == 1:  # no copy: a one-batch group is the batch itself
            return batch[0]["x"], batch[0]["y"]
        return torch.cat([b["x"] for b in batch]), torch.cat([b["y"] for b in batch])
    return (batch["x"], batch["y"]) if isinstance(batch, dict) else (batch[0], batch[1])


# -- (a) the raw loop ----------------------------------------------------------------------------------


def raw_rate(x: Tensor, y: Tensor, batch: int, min_seconds: float) -> float:
    """Median rows/s per epoch of the hand-written loop over contiguous slices, for 3+ epochs and ``min_seconds``."""
    torch.manual_seed(0)
    model = nn.Linear(x.shape[1], 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    n = len(x)

    def step(s: int) -> int:
        xb, yb = x[s : s + batch], y[s : s + batch]
        loss = F.mse_loss(model(xb), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return len(xb)

    for s in range(0, min(n, 3 * batch), batch):  # warm-up
        step(s)
    rates: list[float] = []
    t0 = clock()
    while len(rates) < 3 or clock() - t0 < min_seconds:
        start = clock()
        rows = sum(step(s) for s in range(0, n, batch))
        rates.append(rows / (clock() - start))
    return statistics.median(rates)


def raw_parts(x: Tensor, y: Tensor, batch: int) -> dict[str, float]:
    """The raw loop's ms per update by part, timed directly over one epoch (on the CPU every op is synchronous)."""
    torch.manual_seed(0)
    model = nn.Linear(x.shape[1], 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    spent = dict.fromkeys(("forward", "backward", "optimizer"), 0.0)
    updates = 0
    for s in range(0, len(x), batch):
        t0 = clock()
        loss = F.mse_loss(model(x[s : s + batch]), y[s : s + batch])
        t1 = clock()
        loss.backward()
        t2 = clock()
        opt.step()
        opt.zero_grad()
        t3 = clock()
        spent["forward"] += t1 - t0
        spent["backward"] += t2 - t1
        spent["optimizer"] += t3 - t2
        updates += 1
    return {k: 1e3 * v / updates for k, v in spent.items()}


# -- floor, fused, (b) ---------------------------------------------------------------------------------


class TinyModule(L.LightningModule):
    """The usual minimal LightningModule: nn.Linear, MSE, SGD; takes (x, y) tuples or linreg's dict batches."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.lin = nn.Linear(d, 1)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, y = _as_xy(batch)
        return F.mse_loss(self.lin(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


class FusedModule(TinyModule):
    """One Lightning step, several SGD updates: manual optimization over consecutive ``micro``-row slices."""

    def __init__(self, d: int, micro: int) -> None:
        super().__init__(d)
        self.micro = micro
        self.automatic_optimization = False

    def training_step(self, batch: Any, batch_idx: int) -> None:
        x, y = _as_xy(batch)
        opt = self.optimizers()
        for s in range(0, len(x), self.micro):
            loss = F.mse_loss(self.lin(x[s : s + self.micro]), y[s : s + self.micro])
            opt.zero_grad()
            self.manual_backward(loss)
            opt.step()


def lightning_rate(module: L.LightningModule, loader: Any, epochs: int, max_batches: int | None = None) -> float:
    """Median rows/s per epoch (after the first, if more than one) under a bare Trainer."""
    timer = EpochTimer()
    trainer = L.Trainer(
        max_epochs=epochs,
        limit_train_batches=max_batches,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        devices=1,
        callbacks=[timer],
    )
    trainer.fit(module, train_dataloaders=loader)
    return timer.rate(skip=1)


# -- profile ---------------------------------------------------------------------------------------------


class ProfileWindow(L.Callback):
    """cProfile from the start of the second epoch to the end of training: steady-state steps only."""

    def __init__(self) -> None:
        self.profile = cProfile.Profile()
        self.active = False
        self.seconds = 0.0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch == 1:
            self.active = True
            self.t0 = clock()
            self.profile.enable()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.active:
            self.profile.disable()
            self.seconds = clock() - self.t0
            self.active = False


def _is(path: str, *libs: str) -> bool:
    return any(f"/{lib}/" in path for lib in libs)


def breakdown(stats: dict[Any, Any]) -> tuple[dict[str, float], int]:
    """Seconds per part over the profiled window, and the number of SGD updates in it.

    Parts are cumulative times at the points where work enters them (so nothing counts twice):
    forward = nn.Linear.forward + F.mse_loss; backward = torch.autograd.backward; optimizer = SGD's
    update function + Optimizer.zero_grad; metrics = torchmetrics entered from outside torchmetrics;
    Lightning = its own functions' self time; other = the rest of the window.
    """
    parts = dict.fromkeys(PARTS, 0.0)
    total, updates = 0.0, 0
    for (path, _line, name), (_cc, calls, tottime, cumtime, callers) in stats.items():
        total += tottime
        if path.endswith("torch/nn/modules/linear.py") and name == "forward":
            parts["forward"] += cumtime
        elif path.endswith("torch/nn/functional.py") and name == "mse_loss":
            parts["forward"] += cumtime
        elif path.endswith("torch/autograd/__init__.py") and name == "backward":
            parts["backward"] += cumtime
        elif path.endswith("torch/optim/sgd.py") and name == "sgd":
            parts["optimizer"] += cumtime
            updates += calls
        elif path.endswith("torch/optim/optimizer.py") and name == "zero_grad":
            parts["optimizer"] += cumtime
        if _is(path, "torchmetrics"):
            parts["metrics"] += sum(c[3] for caller, c in callers.items() if not _is(caller[0], "torchmetrics"))
        elif _is(path, "lightning", "lightning_utilities"):
            parts["Lightning"] += tottime
    parts["other"] = total - sum(parts.values())
    return parts, updates


def profile(npz: Path, batch: int, updates: int, tmp: Path) -> dict[str, Any]:
    """linreg fit's steady-state epochs under cProfile: ms per SGD update by part."""
    window = ProfileWindow()
    steps = max(1, math.ceil(updates / 1))
    run_linreg(fit_args(npz, batch, 2, f"--trainer.limit_train_batches={steps}"), tmp / f"prof{batch}", [window])
    parts, n = breakdown(pstats.Stats(window.profile).stats)  # type: ignore[attr-defined]
    n = max(1, n)
    return {"updates": n, "ms_per_update": {k: 1e3 * v / n for k, v in parts.items()}}


# -- the measurement ---------------------------------------------------------------------------------------


def measure(opts: argparse.Namespace) -> dict[str, Any]:
    tiny = opts.tiny
    batch_sizes = opts.batch_sizes or list(TINY_BATCH_SIZES if tiny else BATCH_SIZES)
    min_seconds = opts.min_seconds if opts.min_seconds is not None else (0.05 if tiny else 1.0)
    b_rows = opts.b_rows or (2_000 if tiny else 300_000)
    c_rows = opts.c_rows or (opts.rows if tiny else 6_000_000)
    profile_updates = opts.profile_updates if opts.profile_updates is not None else (20 if tiny else 300)
    x, y = make_data(opts.rows, opts.dim, opts.seed)
    n, d = x.shape
    epochs = 1 + max(1, min(opts.max_timed_epochs, math.ceil(c_rows / n)))  # warm-up + timed
    rows = []
    with tempfile.TemporaryDirectory(prefix="linreg-bench-epochs-") as name:
        tmp = Path(name)
        npz = write_npz(tmp / "data.npz", x, y)
        npz64 = write_npz(tmp / "data64.npz", x.double(), y)
        for batch in batch_sizes:
            torch.manual_seed(0)
            a = raw_rate(x, y, batch, min_seconds)
            floor = lightning_rate(TinyModule(d), Batches(x, y, batch, "blocks"), epochs)
            block = max(1, FUSED_ROWS // batch) * batch
            fused = lightning_rate(FusedModule(d, batch), Batches(x, y, block, "blocks"), epochs)
            plain = DataLoader(TensorDataset(x, y), batch_size=batch, shuffle=True)
            b = lightning_rate(TinyModule(d), plain, 1, max(2, min(len(plain), math.ceil(b_rows / batch))))
            cli, _ = run_linreg(fit_args(npz, batch, epochs), tmp / f"c{batch}")
            c = cli.timer.rate(skip=1)
            averaged, _ = run_linreg(fit_args(npz, batch, epochs, "--model.average=true"), tmp / f"avg{batch}")
            c_avg = averaged.timer.rate(skip=1)
            standardized = {}
            for label, path in (("c std", npz), ("c std64", npz64)):
                run, _ = run_linreg(fit_args(path, batch, epochs, "--data.standardize=true"), tmp / f"std{batch}")
                standardized[label] = run.timer.rate(skip=1)
            rates = {"a": a, "floor": floor, "fused": fused, "b": b, "c": c}
            entry: dict[str, Any] = {
                "batch": batch,
                "rows_per_s": rates,
                "ms_per_update": {k: 1e3 * batch / v for k, v in rates.items()},
                "c_over_a": c / a,
                "c_over_b": c / b,
                "averaging_rows_per_s": c_avg,
                "standardized_rows_per_s": standardized,
                "c_epoch_seconds": cli.timer.seconds(),
                "raw_parts_ms": raw_parts(x, y, batch),
            }
            if profile_updates:
                entry["profile"] = profile(npz, batch, profile_updates, tmp)
            rows.append(entry)
            line = "  ".join(f"{k} {v / 1e6:.3g}" for k, v in rates.items())
            std = ", ".join(f"{k} {v / 1e6:.3g}" for k, v in standardized.items())
            print(f"  batch {batch:>6}: {line} M rows/s; c with averaging {c_avg / 1e6:.3g}; {std}", flush=True)
    return {"epochs": epochs, "throughput": rows}


def report(r: dict[str, Any]) -> None:
    print("\nSGD epochs, M rows/s of training (median epoch after the first)")
    print(
        f"  {'batch':>6} {'a raw':>7} {'floor':>7} {'fused':>7} {'b plain':>8} {'c linreg':>8} {'c avg':>7} "
        f"{'c std':>7} {'c std64':>7} {'c/a':>5}"
    )
    for t in r["throughput"]:
        v = {k: x / 1e6 for k, x in t["rows_per_s"].items()}
        std = t.get("standardized_rows_per_s", {})
        print(
            f"  {t['batch']:>6} {v['a']:7.2f} {v['floor']:7.2f} {v['fused']:7.2f} {v['b']:8.3f} {v['c']:8.2f} "
            f"{t['averaging_rows_per_s'] / 1e6:7.2f} {std.get('c std', math.nan) / 1e6:7.2f} "
            f"{std.get('c std64', math.nan) / 1e6:7.2f} {t['c_over_a']:5.2f}"
        )
    print("\nms per SGD update by part: raw loop (timed) | linreg under cProfile | linreg scaled to its unprofiled ms")
    for t in r["throughput"]:
        if "profile" not in t:
            continue
        prof = t["profile"]["ms_per_update"]
        total = sum(prof.values())
        real = t["ms_per_update"]["c"]
        raw = t["raw_parts_ms"]
        print(
            f"  batch {t['batch']} ({t['profile']['updates']} updates profiled; unprofiled: linreg {real:.3f} ms, "
            f"raw {t['ms_per_update']['a']:.3f} ms)"
        )
        for part in PARTS:
            raw_ms = f"{raw[part]:8.3f}" if part in raw else f"{'-':>8}"
            print(f"    {part:<10} {raw_ms} | {prof[part]:8.3f} | {prof[part] * real / total:8.3f}")
        print(f"    {'total':<10} {sum(raw.values()):8.3f} | {total:8.3f} | {real:8.3f}")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return run_main(__doc__, 1_000_000, 8_192, measure, report, argv, _flags)


if __name__ == "__main__":
    main()
