"""Benchmark linreg against the raw PyTorch loop and a plain Lightning pipeline (issue 4).

One run, one generated data set (X float32 n×d standard normal, y = X·w + 0.5 + N(0, 1)), measured
side by side at each batch size:

- (a) raw PyTorch: nn.Linear + MSE + SGD over contiguous slices, the limit of an SGD pass;
- floor: a bare LightningModule over linreg's own ``Batches`` (no metrics, no logging): what
  Lightning's loop costs by itself, so the gap a→c splits into "Lightning" and "what linreg adds";
- fused: the floor with manual optimization, each Lightning step running several SGD updates over
  consecutive slices of a 262144-row block: the scheme linreg uses (``--data.rows_per_step``),
  without linreg's metrics and logging;
- (b) plain Lightning the usual way: TensorDataset + DataLoader(shuffle=True), logger and
  checkpointing off (so (b) is as fast as it gets and c/b is conservative), bounded by
  ``limit_train_batches`` because it runs at ~0.1 M rows/s;
- (c) ``linreg fit`` through linreg's own CLI class, in process, on an ``.npz`` of the same data,
  with its defaults (TensorBoard logging, train metrics, checkpoint) and ``--data.shuffle blocks``.

Throughput is rows/s of training only: the median over epochs of rows / epoch wall, each epoch's
end-of-epoch hooks (metrics, logging) included. The Lightning runs are timed by a callback inside
the trainer and skip their first epoch (warm-up), so process start, file read and linreg's
closed-form pass after training are excluded (they appear as their own lines instead); (b) is one
partial epoch. The median keeps a neighbour's burst of load on a shared machine out of the figures.

Also measured: the seed config's time per step; linreg's closed-form solve against scikit-learn's
``LinearRegression.fit``; the ``trainer.fit`` time linreg needs to reach ≤ 1 % excess MSE (a probe
run finds the fewest epochs, a clean run is timed); the whole-process wall of ``linreg fit --config
configs/seed.yaml`` against a raw torch script doing the same 100 steps, with the import time per
package; the peak RSS of a ``linreg fit`` process on the data against the seed fit's (interpreter,
libraries, Lightning: the baseline); and a cProfile of linreg's steps at the smallest and largest
batch size, which says where a step's time goes.

Usage: ``python scripts/bench.py [--rows N] [--json PATH]``; ``--rows 100000`` is a quick run.
Timings on a shared 2-core machine move with its load; the load average is recorded.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import gc
import io
import json
import logging
import math
import os
import platform
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from linreg.cli import LinRegCLI, quiet_lightning
from linreg.data.batches import Batches
from linreg.lstsq import LeastSquares

ROOT = Path(__file__).resolve().parents[1]
SEED_CONFIG = ROOT / "configs" / "seed.yaml"
BATCH_SIZES = (1024, 4096, 65536)
CHUNK = 65536  # rows per block for the closed form and the MSE passes
FUSED_ROWS = 262144  # rows per Lightning step in the fused variant: 4 updates at batch 65536, 256 at 1024
TARGETS = {  # name: (threshold, "min": the value must be at least the threshold, "max": at most)
    "c/b at 1024": (10.0, "min"),
    "c/a at 4096": (0.5, "min"),
    "c/a at 65536": (0.8, "min"),
    "time to 1% excess / sklearn fit": (2.0, "max"),
    "lstsq trainer.fit / sklearn fit": (0.5, "max"),
    "streamed / in-memory epoch at 65536": (0.5, "min"),
    "seed whole process / raw script": (1.3, "max"),
    "peak RSS above baseline / data size": (1.5, "max"),
}
# Where a linreg step's time goes: label -> (end of the defining file's path, function name), read from cProfile.
STEP_PARTS = {
    "whole step (training_epoch_loop.advance)": ("loops/training_epoch_loop.py", "advance"),
    "linreg training_step": ("linreg/module.py", "training_step"),
    "  of which train metrics update": ("torchmetrics/collections.py", "update"),
    "backward": ("torch/_tensor.py", "backward"),
    "SGD update": ("optim/sgd.py", "sgd"),
    "next batch (Batches.__iter__)": ("linreg/batches.py", "__iter__"),
}
EPOCH_PARTS = {  # once per epoch, shown per step
    "epoch end: linreg on_train_epoch_end": ("linreg/module.py", "on_train_epoch_end"),
    "  of which self.log / log_dict": ("core/module.py", "log"),
}

# linreg's entry point, printing the process's peak RSS (VmHWM, KiB) at exit. Not getrusage(RUSAGE_CHILDREN) or
# wait4: Linux keeps the pre-exec maxrss, so a child forked from this big process would report this process's peak.
PEAK_RSS_SCRIPT = """
import atexit, sys
def _peak():
    with open("/proc/self/status") as f:
        kb = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    print(f"BENCH_PEAK_RSS_KB={kb}", file=sys.stderr)
atexit.register(_peak)
from linreg.cli import main
main()
"""

# The tutorial's stage 4 as a plain script: what `linreg fit --config configs/seed.yaml` does, minus Lightning.
RAW_SEED_SCRIPT = """
import sys, torch
from torch import nn
torch.manual_seed(0)
X = torch.tensor([[1.0], [2.0], [3.0], [4.0]]); Y = 2 * X
model = nn.Linear(1, 1); loss_fn = nn.MSELoss(); opt = torch.optim.SGD(model.parameters(), lr=0.01)
for _ in range(100):
    loss = loss_fn(model(X), Y); loss.backward(); opt.step(); opt.zero_grad()
torch.save(model.state_dict(), sys.argv[1])
print(f"f(5) = {model(torch.tensor([[5.0]])).item():.3f}")
"""

# The same job the plain Lightning way (issue 11's yardstick for linreg's start-up): a LightningModule
# around nn.Linear with MSE and SGD, a TensorDataset DataLoader, a Trainer with the TensorBoard logger
# and a checkpoint, 100 epochs, printing f(5).
PLAIN_LIGHTNING_SCRIPT = """
import torch, lightning as L
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
class Plain(L.LightningModule):
    def __init__(self):
        super().__init__(); self.lin = nn.Linear(1, 1)
    def forward(self, x):
        return self.lin(x)
    def training_step(self, batch, batch_idx):
        x, y = batch; loss = nn.functional.mse_loss(self(x), y); self.log("train/loss", loss); return loss
    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)
L.seed_everything(0)
X = torch.tensor([[1.0], [2.0], [3.0], [4.0]]); Y = 2 * X
model = Plain()
trainer = L.Trainer(max_epochs=100, logger=L.pytorch.loggers.TensorBoardLogger("."), enable_progress_bar=False,
                    enable_model_summary=False, log_every_n_steps=1)
trainer.fit(model, DataLoader(TensorDataset(X, Y), batch_size=4))
print(f"f(5) = {model(torch.tensor([[5.0]])).item():.3f}")
"""


# -- data ------------------------------------------------------------------------------------------


def make_data(n: int, d: int, seed: int) -> tuple[Tensor, Tensor]:
    """Standard-normal features, so lr 0.01 is stable without standardizing and every variant can run as is."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    w = torch.randn(d, 1, generator=g)
    y = torch.addmm(torch.randn(n, 1, generator=g).add_(0.5), x, w)
    return x, y


def write_npz(path: Path, x: Tensor, y: Tensor) -> Path:
    """The layout linreg reads: X float32 n×d, y float32 n."""
    np.savez(path, X=x.numpy(), y=y[:, 0].numpy())
    return path


# -- timing helpers --------------------------------------------------------------------------------


def _as_xy(batch: Any) -> tuple[Tensor, Tensor]:
    """(x, y) from a tuple, one linreg batch dict, or a linreg group (a list of them)."""
    if isinstance(batch, list) and batch and isinstance(batch[0], dict):
        if len(batch) == 1:  # no copy: a one-batch group is the batch itself
            return batch[0]["x"], batch[0]["y"]
        return torch.cat([b["x"] for b in batch]), torch.cat([b["y"] for b in batch])
    return (batch["x"], batch["y"]) if isinstance(batch, dict) else (batch[0], batch[1])


def _batch_rows(batch: Any) -> int:
    if isinstance(batch, list) and batch and isinstance(batch[0], dict):
        return sum(int(b["x"].shape[0]) for b in batch)
    return int(batch["x"].shape[0] if isinstance(batch, dict) else batch[0].shape[0])


class EpochTimer(L.Callback):
    """Epoch start times, rows per epoch and the end of training, taken inside the trainer.

    Callbacks' ``on_train_end`` runs before the module's, so the window closes before linreg's
    closed-form pass and its last checkpoint.
    """

    def __init__(self) -> None:
        self.starts: list[float] = []
        self.rows: list[int] = []
        self.end = math.nan

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.starts.append(time.perf_counter())
        self.rows.append(0)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, i: int
    ) -> None:
        self.rows[-1] += _batch_rows(batch)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.end = time.perf_counter()

    def seconds(self) -> list[float]:
        """Each epoch's wall, its end-of-epoch hooks (metrics, logging) included."""
        return [end - start for start, end in zip(self.starts, [*self.starts[1:], self.end])]

    def rate(self, skip: int = 1) -> float:
        """Median rows/s over epochs ``skip``.. (0-based): the first epoch warms up, and the median shrugs off
        a neighbour's burst of load on a shared machine."""
        rates = [rows / s for rows, s in zip(self.rows, self.seconds())]
        return statistics.median(rates[min(skip, len(rates) - 1) :])


class ProfileWindow(L.Callback):
    """cProfile from the start of the second epoch to the end of training: steady-state steps only."""

    def __init__(self) -> None:
        self.profile = cProfile.Profile()
        self.active = False
        self.steps = 0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch == 1:
            self.active = True
            self.profile.enable()

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, i: int
    ) -> None:
        self.steps += self.active

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.active:
            self.profile.disable()
            self.active = False


class ExcessProbe(L.Callback):
    """Stops a fit at the first epoch whose training MSE is within ``target`` of the optimum's."""

    def __init__(self, x: Tensor, y: Tensor, optimum_mse: float, target: float) -> None:
        self.x, self.y, self.optimum_mse, self.target = x, y, optimum_mse, target
        self.excess: list[float] = []

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        excess = (training_mse(pl_module, self.x, self.y) - self.optimum_mse) / self.optimum_mse
        self.excess.append(excess)
        if excess <= self.target:
            trainer.should_stop = True


@torch.no_grad()
def training_mse(model: Callable[[Tensor], Tensor], x: Tensor, y: Tensor) -> float:
    sse = 0.0
    for s in range(0, len(x), CHUNK):
        sse += float(((model(x[s : s + CHUNK]) - y[s : s + CHUNK]).double() ** 2).sum())
    return sse / len(x)


@contextlib.contextmanager
def workdir(path: Path) -> Iterator[Path]:
    """linreg writes lightning_logs/ under the working folder; keep it inside the bench's temp dir."""
    path.mkdir(parents=True, exist_ok=True)
    old = Path.cwd()
    os.chdir(path)
    try:
        yield path
    finally:
        os.chdir(old)


def quiet() -> None:
    """Lightning's banners and known warnings would bury the table."""
    quiet_lightning()
    warnings.filterwarnings("ignore", message=r".*(LeafSpec|does not have many workers|num_workers).*")
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)


def run_process(cmd: list[str], cwd: Path) -> tuple[float, str]:
    """Wall seconds and stderr of one child process."""
    cwd.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return wall, proc.stderr


def peak_rss_mb(stderr: str) -> float:
    """The VmHWM that PEAK_RSS_SCRIPT printed."""
    return int(next(ln for ln in stderr.splitlines() if ln.startswith("BENCH_PEAK_RSS_KB=")).split("=")[1]) / 1024


def linreg_command() -> list[str]:
    """The installed ``linreg`` entry point, as a user runs it."""
    script = Path(sys.executable).with_name("linreg")
    return [str(script)] if script.exists() else [sys.executable, "-m", "linreg.cli"]


# -- (a) raw loop, the Lightning floor, fused, (b) plain Lightning ---------------------------------


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
    t0 = time.perf_counter()
    while len(rates) < 3 or time.perf_counter() - t0 < min_seconds:
        start = time.perf_counter()
        rows = sum(step(s) for s in range(0, n, batch))
        rates.append(rows / (time.perf_counter() - start))
    return statistics.median(rates)


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
    """One Lightning step, several SGD updates: manual optimization over consecutive ``micro``-row slices.

    The updates are the ones a plain loop makes over the block; only Lightning's per-step machinery
    (hooks, closure, result collection) runs once per block instead of once per update.
    """

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
    """Median rows/s per epoch (after the first, if more than one) under a Trainer with logging,
    checkpointing, progress bar and model summary off."""
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


# -- (c) linreg ------------------------------------------------------------------------------------


class TimedCLI(LinRegCLI):
    """linreg's own CLI plus timer callbacks and the wall of ``trainer.fit``: the real path, timed from inside."""

    extra_callbacks: list[L.Callback] = []

    def before_fit(self) -> None:
        parent = getattr(super(), "before_fit", None)
        if callable(parent):
            parent()
        self.timer = EpochTimer()
        # First in line, so their on_train_end closes the window before linreg's own end-of-fit callbacks (figures).
        self.trainer.callbacks[:0] = [self.timer, *self.extra_callbacks]
        self.fit_start = time.perf_counter()

    def after_fit(self) -> None:
        self.fit_seconds = time.perf_counter() - self.fit_start
        super().after_fit()


def run_linreg(args: list[str], cwd: Path, callbacks: list[L.Callback] | None = None) -> tuple[TimedCLI, float]:
    """Run ``linreg <args>`` in process in ``cwd``; return the CLI object and the whole in-process wall."""
    TimedCLI.extra_callbacks = callbacks or []
    out = io.StringIO()
    try:
        with workdir(cwd), contextlib.redirect_stdout(out):
            t0 = time.perf_counter()
            cli = TimedCLI(args=args)
            wall = time.perf_counter() - t0
    except BaseException:
        sys.stderr.write(out.getvalue())
        raise
    finally:
        TimedCLI.extra_callbacks = []
        gc.collect()  # the last run's data and trainer go before the next run loads its own
    return cli, wall


def fit_args(npz: Path, batch: int, epochs: int, *extra: str) -> list[str]:
    return [
        "fit",
        f"--data.path={npz}",
        f"--data.batch_size={batch}",
        "--data.shuffle=blocks",
        f"--trainer.max_epochs={epochs}",
        "--trainer.enable_progress_bar=false",
        "--trainer.accelerator=cpu",
        "--trainer.devices=1",
        "--seed_everything=0",
        # The raw loop it is compared with: raw units, a fixed step, no averaging (not linreg's defaults).
        "--data.standardize=false",
        "--model.lr=0.01",
        "--model.momentum=0",
        *extra,
    ]


def throughput(x: Tensor, y: Tensor, npz: Path, tmp: Path, opts: argparse.Namespace) -> list[dict[str, Any]]:
    """(a), floor, fused, (b) and (c) at each batch size, in rows/s of training."""
    n, d = x.shape
    epochs = 1 + max(1, min(opts.max_timed_epochs, math.ceil(opts.c_rows / n)))  # warm-up + timed
    rows = []
    for batch in opts.batch_sizes:
        torch.manual_seed(0)
        a = raw_rate(x, y, batch, opts.min_seconds)
        floor = lightning_rate(TinyModule(d), Batches(x, y, batch, "blocks"), epochs)
        block = max(1, FUSED_ROWS // batch) * batch
        fused = lightning_rate(FusedModule(d, batch), Batches(x, y, block, "blocks"), epochs)
        plain = DataLoader(TensorDataset(x, y), batch_size=batch, shuffle=True)
        b = lightning_rate(TinyModule(d), plain, 1, max(2, min(len(plain), math.ceil(opts.b_rows / batch))))
        cli, _ = run_linreg(fit_args(npz, batch, epochs), tmp / f"c{batch}")
        c = cli.timer.rate(skip=1)
        # The same run with Polyak-Ruppert averaging from the first epoch: what averaging costs per epoch.
        averaged, _ = run_linreg(fit_args(npz, batch, epochs, "--model.average=true"), tmp / f"avg{batch}")
        c_avg = averaged.timer.rate(skip=1)
        rates = {"a": a, "floor": floor, "fused": fused, "b": b, "c": c}
        rows.append(
            {
                "batch": batch,
                "rows_per_s": rates,
                "ms_per_step": {k: 1e3 * batch / v for k, v in rates.items()},
                "c_over_a": c / a,
                "c_over_b": c / b,
                "averaging_rows_per_s": c_avg,
                "averaging_cost_per_epoch_s": n / c_avg - n / c,
                "c_epoch_seconds": cli.timer.seconds(),
            }
        )
        line = "  ".join(f"{k} {v / 1e6:.3g}" for k, v in rates.items())
        print(f"  batch {batch:>6}: {line} M rows/s; c with averaging {c_avg / 1e6:.3g}", flush=True)
    return rows


def streaming(x: Tensor, y: Tensor, npz: Path, tmp: Path, opts: argparse.Namespace) -> dict[str, Any]:
    """A streamed epoch (a folder of Parquet parts, row groups of 65,536, in the page cache) against the
    same rows in memory, at the largest batch size, in one run: rows/s of training, median over epochs
    after the first; the first epoch alone (it decodes the Parquet; later ones read linreg's decoded
    copy, see ``streams._Decoded``); and two shuffled epochs' reads alone, without training."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from linreg.data.streams import Source

    batch = max(opts.batch_sizes)
    folder = tmp / "parquet"
    folder.mkdir()
    names = [f"x{i}" for i in range(x.shape[1])]
    step = math.ceil(len(x) / 4)
    for k, start in enumerate(range(0, len(x), step)):
        part = x[start : start + step].numpy()
        columns = {c: part[:, j] for j, c in enumerate(names)} | {"y": y[start : start + step, 0].numpy()}
        pq.write_table(pa.table(columns), folder / f"part-{k}.parquet", row_group_size=65_536, compression="none")
    epochs = 1 + max(1, min(opts.max_timed_epochs, math.ceil(opts.c_rows / len(x))))
    rates = {}
    for label, path in (("in memory", npz), ("streamed", folder)):
        args = fit_args(path, batch, epochs, "--figures.enabled=false")
        cli, _ = run_linreg(args, tmp / f"stream-{label.replace(' ', '-')}")
        rates[label] = cli.timer.rate(skip=1)
        rates[f"{label}, first epoch"] = cli.timer.rows[0] / cli.timer.seconds()[0]
    source = Source(str(folder))
    reads = Batches(source.rows(names, torch.float32), source.rows(["y"], torch.float32), batch, "blocks")
    ms = {label: 1e3 * batch / rate for label, rate in rates.items()}
    for epoch in (1, 2):  # the first decodes (and keeps what it decodes twice), the second reads the copy
        reads.set_epoch(epoch)
        t0 = time.perf_counter()
        for _ in reads.batches():
            pass
        ms[f"reading alone, epoch {epoch}"] = 1e3 * (time.perf_counter() - t0) / reads.n_batches
    result = {"batch": batch, "rows_per_s": rates, "ratio": rates["streamed"] / rates["in memory"], "ms_per_batch": ms}
    print(
        f"  streamed Parquet folder at batch {batch}: {rates['streamed'] / 1e6:.3g} M rows/s (first epoch "
        f"{rates['streamed, first epoch'] / 1e6:.3g}), in memory {rates['in memory'] / 1e6:.3g} M rows/s, ratio "
        f"{result['ratio']:.2f} (goal >= 0.5; first epoch "
        f"{rates['streamed, first epoch'] / rates['in memory']:.2f}); ms per batch: streamed {ms['streamed']:.1f}, "
        f"in memory {ms['in memory']:.2f}, reading alone {ms['reading alone, epoch 1']:.1f} then "
        f"{ms['reading alone, epoch 2']:.2f}",
        flush=True,
    )
    return result


# -- seed config: time per step, whole process, import profile --------------------------------------


def seed_step(tmp: Path) -> dict[str, Any]:
    """The seed config in process (100 one-step epochs): linreg's ms per step against the same steps by hand."""
    cli, wall = run_linreg(["fit", f"--config={SEED_CONFIG}", "--trainer.enable_progress_bar=false"], tmp / "seed")
    steps = cli.trainer.global_step
    x = torch.tensor([[1.0], [2.0], [3.0], [4.0]])
    model = nn.Linear(1, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    t0 = time.perf_counter()
    for _ in range(steps):
        loss = F.mse_loss(model(x), 2 * x)
        loss.backward()
        opt.step()
        opt.zero_grad()
    raw_s = time.perf_counter() - t0
    return {
        "steps": steps,
        "linreg_ms_per_step": 1e3 * statistics.median(cli.timer.seconds()) * len(cli.timer.starts) / steps,
        "raw_ms_per_step": 1e3 * raw_s / steps,
        "linreg_fit_s": cli.fit_seconds,
        "linreg_in_process_s": wall,
    }


def import_profile(stderr: str, top: int = 12) -> list[dict[str, Any]]:
    """Self import time per top-level package, and which package first pulled it in (python -X importtime)."""
    entries: list[tuple[str, int, float]] = []  # (package, depth, self seconds), in the order printed (post-order)
    for line in stderr.splitlines():
        parts = line.split("|")
        if not line.startswith("import time:") or len(parts) != 3 or not parts[0].split(":")[1].strip().isdigit():
            continue
        depth = (len(parts[2]) - len(parts[2].lstrip(" ")) - 1) // 2
        entries.append((parts[2].strip().split(".")[0], depth, int(parts[0].split(":")[1]) / 1e6))
    parent: dict[int, int] = {}
    waiting: dict[int, list[int]] = {}
    for i, (_, depth, _) in enumerate(entries):  # a child is printed before its parent, one level deeper
        for child in waiting.pop(depth + 1, []):
            parent[child] = i
        waiting.setdefault(depth, []).append(i)
    seconds: dict[str, float] = {}
    via: dict[str, str] = {}
    for i, (package, _, self_s) in enumerate(entries):
        seconds[package] = seconds.get(package, 0.0) + self_s
        j = i
        while j in parent and entries[j][0] == package:
            j = parent[j]
        if package not in via:
            via[package] = entries[j][0] if entries[j][0] != package else "(main)"
    ranked = sorted(seconds.items(), key=lambda kv: -kv[1])[:top]
    return [{"package": p, "self_s": s, "imported_by": via[p]} for p, s in ranked] + [
        {"package": "(all)", "self_s": sum(seconds.values()), "imported_by": ""}
    ]


def seed_process(tmp: Path, repeats: int) -> dict[str, Any]:
    """Whole-process wall (median of ``repeats``) of `linreg fit --config seed.yaml` and of RAW_SEED_SCRIPT.

    One more linreg run, under ``-X importtime`` and PEAK_RSS_SCRIPT, gives the import profile and the
    baseline peak RSS (interpreter, libraries, Lightning, figures) for the memory check.
    """
    seed_fit = ["fit", f"--config={SEED_CONFIG}"]
    linreg = [run_process([*linreg_command(), *seed_fit], tmp / f"p{i}") for i in range(repeats)]
    no_figures = [run_process([*linreg_command(), *seed_fit, "--figures.enabled=false"], tmp / "nf") for _ in linreg]
    raw = [run_process([sys.executable, "-c", RAW_SEED_SCRIPT, str(tmp / "raw.pt")], tmp) for _ in range(repeats)]
    bare = [run_process([sys.executable, "-c", "pass"], tmp) for _ in range(repeats)]
    _, importtime = run_process([sys.executable, "-X", "importtime", "-c", PEAK_RSS_SCRIPT, *seed_fit], tmp / "imp")
    linreg_s, raw_s = statistics.median(r[0] for r in linreg), statistics.median(r[0] for r in raw)
    return {
        "linreg_s": linreg_s,
        "raw_s": raw_s,
        "python_s": statistics.median(r[0] for r in bare),
        "ratio": linreg_s / raw_s,
        "linreg_without_figures_s": statistics.median(r[0] for r in no_figures),
        "linreg_peak_rss_mb": peak_rss_mb(importtime),
        "import_profile": import_profile(importtime),
    }


def startup(tmp: Path, repeats: int = 5) -> dict[str, Any]:
    """Whole-process wall (median of ``repeats``, interleaved so load hits both alike) of `linreg fit
    --config seed.yaml` against PLAIN_LIGHTNING_SCRIPT: what linreg costs beyond Lightning itself."""
    seed_fit = [*linreg_command(), "fit", f"--config={SEED_CONFIG}"]
    linreg_s, plain_s = [], []
    for i in range(repeats):
        linreg_s.append(run_process(seed_fit, tmp / f"s{i}")[0])
        plain_s.append(run_process([sys.executable, "-c", PLAIN_LIGHTNING_SCRIPT], tmp / f"l{i}")[0])
    result = {"linreg_s": statistics.median(linreg_s), "plain_lightning_s": statistics.median(plain_s)}
    result["ratio"] = result["linreg_s"] / result["plain_lightning_s"]
    return result


# -- closed form, convergence, memory ---------------------------------------------------------------


def closed_form(x: Tensor, y: Tensor, npz: Path, tmp: Path) -> dict[str, Any]:
    """linreg's least-squares solver (float64 TSQR over 65536-row blocks), alone and as `linreg fit
    --model.solver lstsq` (trainer.fit: the solver's pass, the epoch that measures the solution, the
    checkpoint), against scikit-learn's LinearRegression.fit on the same array."""
    t0 = time.perf_counter()
    ls = LeastSquares(x.shape[1], 1)
    for s in range(0, len(x), CHUNK):
        ls.update(x[s : s + CHUNK], y[s : s + CHUNK])
    opt = ls.solve()
    result: dict[str, Any] = {"linreg_s": time.perf_counter() - t0, "optimum_mse": opt.mse, "sklearn_s": None}
    args = fit_args(npz, len(x), 1, "--model.solver=lstsq", "--figures.enabled=false", "--data.standardize=true")
    cli, _ = run_linreg(args, tmp / "lstsq")
    result["lstsq_fit_s"] = cli.fit_seconds
    try:
        from sklearn.linear_model import LinearRegression
    except ImportError:
        return result
    xn, yn = x.numpy(), y[:, 0].numpy()
    t0 = time.perf_counter()
    sk = LinearRegression().fit(xn, yn)
    result["sklearn_s"] = time.perf_counter() - t0
    result["max_abs_coef_diff"] = float(np.abs(sk.coef_ - opt.coef[0].numpy()).max())
    return result


def convergence(
    npz: Path, tmp: Path, x: Tensor, y: Tensor, optimum_mse: float, opts: argparse.Namespace
) -> dict[str, Any]:
    """Fewest epochs to the excess-MSE goal (a probe run stops there), then a clean timed fit of that many."""
    extra = ("--data.standardize=true", f"--model.lr={opts.converge_lr}")
    probe = ExcessProbe(x, y, optimum_mse, opts.excess)
    run_linreg(fit_args(npz, opts.converge_batch, opts.max_converge_epochs, *extra), tmp / "probe", [probe])
    reached = bool(probe.excess) and probe.excess[-1] <= opts.excess
    epochs = len(probe.excess)
    for _ in range(3):  # linreg's own excess decides; the probe's float32 arithmetic can differ in the last digits
        cli, wall = run_linreg(fit_args(npz, opts.converge_batch, epochs, *extra), tmp / f"conv{epochs}")
        excess = cli.model.optimum.excess
        if excess <= opts.excess or not reached:
            break
        epochs += 1
    bare, _ = run_linreg(fit_args(npz, opts.converge_batch, epochs, *extra, "--figures.enabled=false"), tmp / "conv")
    train_s = cli.timer.end - cli.timer.starts[0]
    return {
        "batch": opts.converge_batch,
        "lr": opts.converge_lr,
        "reached": excess <= opts.excess,
        "epochs": epochs,
        "steps": cli.trainer.global_step,
        "excess": excess,
        "train_s": train_s,
        "fit_s": cli.fit_seconds,
        "after_training_s": cli.fit_seconds - train_s,  # closed-form pass, figures, last checkpoint
        "fit_s_without_figures": bare.fit_seconds,
        "in_process_s": wall,
    }


def memory(npz: Path, tmp: Path, x: Tensor, y: Tensor, batch: int, baseline_mb: float) -> dict[str, Any]:
    """Peak RSS of a `linreg fit` process on the data (2 epochs, standardized) against the seed fit's peak.

    A copy of X at any time, once or per epoch, would lift the peak by the data size; so would a
    float64 or per-row-gather copy of a large part of it.
    """
    args = fit_args(npz, batch, 2, "--data.standardize=true")
    wall, stderr = run_process([sys.executable, "-c", PEAK_RSS_SCRIPT, *args], tmp / "rss")
    data_mb = (x.numel() + y.numel()) * 4 / 2**20
    peak_mb = peak_rss_mb(stderr)
    return {
        "data_mb": data_mb,
        "batch": batch,
        "baseline_peak_mb": baseline_mb,
        "fit_peak_mb": peak_mb,
        "fit_process_s": wall,
        "above_baseline_over_data": (peak_mb - baseline_mb) / data_mb,
    }


# -- profile ---------------------------------------------------------------------------------------


def _library(path: str, name: str) -> str:
    for lib in ("torchmetrics", "lightning", "linreg", "torch"):
        if f"/{lib}/" in path or (path == "~" and lib in name):
            return lib
    return "python/other"


def step_profile(label: str, args: list[str], cwd: Path, top: int = 8) -> dict[str, Any]:
    """cProfile of a linreg fit's steady-state steps: µs per step by part, by library, and the top functions.

    cProfile slows Python-heavy code (Lightning's loop) more than C kernels: read shares, and the
    unprofiled ms/step in the throughput table for absolute figures.
    """
    window = ProfileWindow()
    run_linreg(args, cwd, [window])
    per = 1e6 / max(1, window.steps)
    stats = pstats.Stats(window.profile).stats  # type: ignore[attr-defined]
    by_lib: dict[str, float] = {}
    parts = dict.fromkeys([*STEP_PARTS, *EPOCH_PARTS], 0.0)
    functions = []
    for (path, line, name), (_, calls, tottime, cumtime, _) in stats.items():
        lib = _library(path, name)
        by_lib[lib] = by_lib.get(lib, 0.0) + tottime * per
        for part, (suffix, func) in (STEP_PARTS | EPOCH_PARTS).items():
            if name == func and path.endswith(suffix):
                parts[part] += cumtime * per
        where = "~" if path == "~" else f"{Path(path).parent.name}/{Path(path).name}:{line}"
        functions.append(
            {"function": f"{where}({name})", "calls_per_step": calls * per / 1e6, "self_us": tottime * per}
        )
    whole, *inside = STEP_PARTS  # the whole step, then its parts; indented labels are parts of the part above
    step = parts[whole]
    ordered = {
        **{k: parts[k] for k in STEP_PARTS},
        "Lightning's own loop (whole step - the parts above)": step - sum(parts[k] for k in inside if k[0] != " "),
        "outside the steps (window - whole step)": sum(by_lib.values()) - step,
        **{k: parts[k] for k in EPOCH_PARTS},
    }
    return {
        "label": label,
        "steps": window.steps,
        "us_per_step_by_part": ordered,
        "us_per_step_by_library": dict(sorted(by_lib.items(), key=lambda kv: -kv[1])),
        "top_self_us_per_step": sorted(functions, key=lambda f: -f["self_us"])[:top],
    }


# -- report ----------------------------------------------------------------------------------------


def check_targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    by_batch = {r["batch"]: r for r in result["throughput"]}
    sk, conv = result["closed_form"]["sklearn_s"], result["convergence"]
    values = {
        "c/b at 1024": by_batch.get(1024, {}).get("c_over_b"),
        "c/a at 4096": by_batch.get(4096, {}).get("c_over_a"),
        "c/a at 65536": by_batch.get(65536, {}).get("c_over_a"),
        "time to 1% excess / sklearn fit": conv["fit_s"] / sk if sk and conv["reached"] else None,
        "lstsq trainer.fit / sklearn fit": result["closed_form"]["lstsq_fit_s"] / sk if sk else None,
        "streamed / in-memory epoch at 65536": result["streaming"]["ratio"],
        "seed whole process / raw script": result["seed_process"]["ratio"],
        "peak RSS above baseline / data size": result["memory"]["above_baseline_over_data"],
    }
    out = []
    for name, (threshold, kind) in TARGETS.items():
        v = values[name]
        met = None if v is None else bool(v >= threshold if kind == "min" else v <= threshold)
        out.append({"target": name, "value": v, "threshold": threshold, "kind": kind, "met": met})
    return out


def print_report(r: dict[str, Any]) -> None:
    m = r["meta"]
    print(
        f"\nlinreg bench: {m['rows']:,} rows x {m['dim']} float32; torch {m['torch']}, lightning {m['lightning']}, "
        f"{m['threads']} threads, {m['cpus']} cpus; load average {m['load_before']} -> {m['load_after']}; "
        f"{m['seconds']:.0f} s"
    )
    print("\nthroughput, M rows/s of training (median epoch; Lightning runs skip the first)")
    print(
        f"  {'batch':>6} {'a raw':>7} {'floor':>7} {'fused':>7} {'b plain':>8} {'c linreg':>8} {'c/a':>5} {'c/b':>6}",
        end="",
    )
    print("   ms/step: a / floor / b / c")
    for t in r["throughput"]:
        v, ms = {k: x / 1e6 for k, x in t["rows_per_s"].items()}, t["ms_per_step"]
        print(
            f"  {t['batch']:>6} {v['a']:7.2f} {v['floor']:7.2f} {v['fused']:7.2f} {v['b']:8.3f} {v['c']:8.2f} "
            f"{t['c_over_a']:5.2f} {t['c_over_b']:6.1f}   "
            f"{ms['a']:.2f} / {ms['floor']:.2f} / {ms['b']:.1f} / {ms['c']:.2f}"
        )
    s, p = r["seed_step"], r["seed_process"]
    print(
        f"\nseed config in process: {s['steps']} steps, linreg {s['linreg_ms_per_step']:.2f} ms/step, "
        f"same steps by hand {s['raw_ms_per_step']:.3f} ms/step; trainer.fit {s['linreg_fit_s']:.2f} s"
    )
    print(
        f"seed whole process: linreg fit {p['linreg_s']:.2f} s, raw torch script {p['raw_s']:.2f} s, "
        f"ratio {p['ratio']:.2f}; linreg with --figures.enabled false {p['linreg_without_figures_s']:.2f} s; "
        f"python alone {p['python_s']:.2f} s"
    )
    imports = ", ".join(f"{e['package']} {e['self_s']:.2f} ({e['imported_by']})" for e in p["import_profile"][:-1])
    print(f"  import s by package (first imported by) in {p['import_profile'][-1]['self_s']:.2f} s: {imports}")
    cf, c = r["closed_form"], r["convergence"]
    sk = "not installed" if cf["sklearn_s"] is None else f"{cf['sklearn_s']:.3f} s"
    diff = f" (max |coef diff| {cf['max_abs_coef_diff']:.1e})" if "max_abs_coef_diff" in cf else ""
    print(
        f"\nclosed form: linreg's TSQR solver {cf['linreg_s']:.3f} s, `linreg fit --model.solver lstsq` trainer.fit "
        f"{cf['lstsq_fit_s']:.3f} s; scikit-learn LinearRegression.fit {sk}{diff}"
    )
    print(
        f"to <= 1% excess MSE: {c['epochs']} epoch(s) = {c['steps']} steps at batch {c['batch']}, lr {c['lr']}, "
        f"standardized; excess {100 * c['excess']:.2f}%\n  trainer.fit {c['fit_s']:.2f} s = training "
        f"{c['train_s']:.2f} s + closed-form pass, figures, checkpoint {c['after_training_s']:.2f} s; "
        f"with --figures.enabled false {c['fit_s_without_figures']:.2f} s; in process with file read "
        f"{c['in_process_s']:.2f} s"
    )
    mem = r["memory"]
    print(
        f"\nmemory: data {mem['data_mb']:.0f} MB; peak RSS of linreg fit on it (batch {mem['batch']}) "
        f"{mem['fit_peak_mb']:.0f} MB, of the seed fit {mem['baseline_peak_mb']:.0f} MB; "
        f"(peak - baseline) / data = {mem['above_baseline_over_data']:.2f}"
        + (" (data too small against per-batch buffers for this ratio to mean much)" if mem["data_mb"] < 100 else "")
    )
    for pr in r.get("profile", []):
        print(f"\nprofile, {pr['label']}, {pr['steps']} steps under cProfile (us/step):")
        for part, us in pr["us_per_step_by_part"].items():
            print(f"  {us:9.0f}  {part}")
        print("  by library (self): " + ", ".join(f"{k} {v:.0f}" for k, v in pr["us_per_step_by_library"].items()))
        for f in pr["top_self_us_per_step"]:
            print(f"  {f['self_us']:9.0f}  {f['calls_per_step']:7.2f}/step  {f['function']}")
    print("\ntargets")
    for t in r["targets"]:
        v = "n/a" if t["value"] is None else f"{t['value']:.2f}"
        verdict = {True: "met", False: "MISSED", None: "not measured"}[t["met"]]
        print(f"  {t['target']:<38} {v:>7}  ({'>=' if t['kind'] == 'min' else '<='} {t['threshold']})  {verdict}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=2_000_000, help="rows of generated data (default 2,000,000)")
    p.add_argument("--dim", type=int, default=32, help="features (default 32)")
    p.add_argument("--json", type=Path, default=None, help="write all results here")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=list(BATCH_SIZES))
    p.add_argument("--min-seconds", type=float, default=1.0, help="least time per raw-loop measurement")
    p.add_argument("--b-rows", type=int, default=300_000, help="rows (b) trains on (it runs at ~0.1 M rows/s)")
    p.add_argument("--c-rows", type=int, default=6_000_000, help="rows timed for floor, fused and (c) after warm-up")
    p.add_argument("--max-timed-epochs", type=int, default=5, help="cap on their timed epochs for small --rows")
    p.add_argument("--converge-batch", type=int, default=65536)
    p.add_argument("--converge-lr", type=float, default=0.1, help="SGD lr of the convergence run (standardized)")
    p.add_argument("--max-converge-epochs", type=int, default=300)
    p.add_argument("--excess", type=float, default=0.01, help="excess-MSE goal of the convergence run")
    p.add_argument(
        "--repeats", type=int, default=None, help="whole-process runs per command (default 3; 1 under 1M rows)"
    )
    p.add_argument("--profile-steps", type=int, default=300, help="steps under cProfile per batch size; 0: no profile")
    p.add_argument("--threads", type=int, default=None, help="torch threads in this process (default: torch's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--startup",
        action="store_true",
        help="only the start-up comparison: `linreg fit --config configs/seed.yaml` against a plain Lightning script",
    )
    opts = p.parse_args(argv)
    opts.repeats = opts.repeats or (5 if opts.startup else 3 if opts.rows >= 1_000_000 else 1)
    return opts


def main(argv: list[str] | None = None) -> dict[str, Any]:
    opts = parse_args(argv)
    quiet()
    if opts.threads:
        torch.set_num_threads(opts.threads)  # on a busy machine, 2 threads on 2 cores can make small ops 10-50x slower
    sys.argv = sys.argv[:1]  # LightningCLI falls back on sys.argv: never let it see the bench's flags
    if opts.startup:
        with tempfile.TemporaryDirectory(prefix="linreg-startup-") as tmp_name:
            r = startup(Path(tmp_name), opts.repeats)
        print(
            f"start-up, whole process, median of {opts.repeats}: linreg fit --config seed.yaml {r['linreg_s']:.2f} s, "
            f"plain Lightning script {r['plain_lightning_s']:.2f} s, ratio {r['ratio']:.2f} (goal <= 1.1)"
        )
        return {"startup": r}
    start, load_before = time.perf_counter(), round(os.getloadavg()[0], 2)
    if load_before > 0.5 and torch.get_num_threads() > 1:
        threads = torch.get_num_threads()
        print(f"note: load average {load_before}; with {threads} torch threads on a busy machine small ops can run")
        print("      10-50x slower and the figures swing; --threads 1 gives steadier ones")
    x, y = make_data(opts.rows, opts.dim, opts.seed)
    result: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="linreg-bench-") as tmp_name:
        tmp = Path(tmp_name)
        npz = write_npz(tmp / "data.npz", x, y)
        print(f"data: {opts.rows:,} x {opts.dim} float32 in {npz}", flush=True)
        result["throughput"] = throughput(x, y, npz, tmp, opts)
        print("  streamed Parquet ...", flush=True)
        result["streaming"] = streaming(x, y, npz, tmp, opts)
        print("  seed config, whole processes ...", flush=True)
        result["seed_step"] = seed_step(tmp)
        result["seed_process"] = seed_process(tmp, opts.repeats)
        print("  closed form, convergence ...", flush=True)
        result["closed_form"] = closed_form(x, y, npz, tmp)
        result["convergence"] = convergence(npz, tmp, x, y, result["closed_form"]["optimum_mse"], opts)
        print("  memory ...", flush=True)
        baseline = result["seed_process"]["linreg_peak_rss_mb"]
        result["memory"] = memory(npz, tmp, x, y, max(opts.batch_sizes), baseline)
        if opts.profile_steps:
            print("  profile ...", flush=True)
            result["profile"] = [
                step_profile(f"linreg fit at batch {b}", fit_args(npz, b, 2, f"--trainer.limit_train_batches={n}"), tmp)
                for b, n in ((min(opts.batch_sizes), opts.profile_steps), (max(opts.batch_sizes), opts.profile_steps))
            ]
            seed = ["fit", f"--config={SEED_CONFIG}", "--trainer.enable_progress_bar=false"]
            result["profile"].append(step_profile("seed config (one step per epoch)", seed, tmp / "seedprof"))
    result["meta"] = {
        "rows": opts.rows,
        "dim": opts.dim,
        "torch": torch.__version__,
        "lightning": L.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "load_before": load_before,
        "load_after": round(os.getloadavg()[0], 2),
        "seconds": time.perf_counter() - start,
        "options": {k: str(v) if isinstance(v, Path) else v for k, v in vars(opts).items()},
    }
    result["targets"] = check_targets(result)
    print_report(result)
    if opts.json:
        opts.json.write_text(json.dumps(result, indent=2) + "\n")
        print(f"\nwrote {opts.json}")
    return result


if __name__ == "__main__":
    main()
