"""What every measurement shares: the data, timers inside the trainer, linreg's CLI run in process, child processes.

Each measurement module (``epochs``, ``streaming``, ``startup``, ``exact``, ``memory``) has a ``measure(opts)``
returning a dict and a ``main(argv)`` that parses the common flags (``parser``), measures, prints and writes
``--json``. ``--tiny`` runs every measurement at a size that finishes in seconds, so CI keeps each one alive.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import json
import logging
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import Tensor

from linreg.cli.app import LinRegCLI
from linreg.cli.main import quiet_lightning

ROOT = Path(__file__).resolve().parents[2]
SEED_CONFIG = ROOT / "configs" / "seed.yaml"
CHUNK = 65536  # rows per block for the closed form and the MSE passes
# What every timing reads: wall seconds, or with --clock cpu this process's CPU seconds (user + system) and,
# for child processes, theirs. On a machine shared past its cores, CPU seconds with --threads 1 keep a
# neighbour's load out of the ratios, which wall seconds cannot (a process gets a share of a core).
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
_clock = CLOCKS["wall"]


def clock() -> float:
    return _clock()


def set_clock(name: str) -> None:
    global _clock
    _clock = CLOCKS[name]


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


# -- flags -------------------------------------------------------------------------------------------


def parser(doc: str | None, rows: int, tiny_rows: int) -> argparse.ArgumentParser:
    """The flags every measurement takes; a module adds its own and reads ``opts.tiny`` for its small size."""
    p = argparse.ArgumentParser(description=(doc or "").split("\n\n")[0])
    p.add_argument(
        "--rows", type=int, default=None, help=f"rows of generated data (default {rows:,}; --tiny {tiny_rows:,})"
    )
    p.add_argument("--dim", type=int, default=32, help="features (default 32)")
    p.add_argument("--tiny", action="store_true", help="a size that runs in seconds (CI), figures meaningless")
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    p.add_argument("--threads", type=int, default=None, help="torch threads in this process (default: torch's)")
    p.add_argument(
        "--clock", choices=list(CLOCKS), default="wall", help="wall seconds, or CPU seconds (a busy machine)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(full_rows=rows, tiny_rows=tiny_rows)
    return p


def parse(p: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    opts = p.parse_args(argv)
    if opts.rows is None:
        opts.rows = opts.tiny_rows if opts.tiny else opts.full_rows
    return opts


def prepare(opts: argparse.Namespace) -> None:
    """Quiet Lightning, set threads, and keep the bench's own flags away from LightningCLI (it reads sys.argv)."""
    quiet_lightning()
    warnings.filterwarnings("ignore", message=r".*(LeafSpec|does not have many workers|num_workers).*")
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)
    set_clock(opts.clock)
    if opts.threads:
        torch.set_num_threads(opts.threads)  # on a busy machine, 2 threads on 2 cores can make small ops 10-50x slower
    sys.argv = sys.argv[:1]


def meta(opts: argparse.Namespace, start: float, load_before: float) -> dict[str, Any]:
    return {
        "rows": opts.rows,
        "dim": opts.dim,
        "tiny": opts.tiny,
        "torch": torch.__version__,
        "lightning": L.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "clock": opts.clock,
        "cpus": os.cpu_count(),
        "load_before": load_before,
        "load_after": round(os.getloadavg()[0], 2),
        "seconds": time.perf_counter() - start,
    }


def run_main(
    doc: str | None,
    rows: int,
    tiny_rows: int,
    measure: Callable[[argparse.Namespace], dict[str, Any]],
    report: Callable[[dict[str, Any]], None],
    argv: list[str] | None,
    extra: Callable[[argparse.ArgumentParser], None] | None = None,
) -> dict[str, Any]:
    """One measurement as a command: parse, measure, print, write ``--json``."""
    p = parser(doc, rows, tiny_rows)
    if extra:
        extra(p)
    opts = parse(p, argv)
    prepare(opts)
    start, load = time.perf_counter(), round(os.getloadavg()[0], 2)
    result = measure(opts)
    result["meta"] = meta(opts, start, load)
    report(result)
    print(
        f"\n({opts.rows:,} rows x {opts.dim}; torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{os.cpu_count()} cpus; {opts.clock} clock; load average {load} -> {result['meta']['load_after']}; "
        f"{result['meta']['seconds']:.0f} s)"
    )
    write_json(opts.json, result)
    return result


def write_json(path: Path | None, result: dict[str, Any]) -> None:
    if path:
        path.write_text(json.dumps(result, indent=2, default=str) + "\n")
        print(f"wrote {path}")


# -- data --------------------------------------------------------------------------------------------


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


def write_parquet_folder(folder: Path, x: Tensor, y: Tensor, parts: int, row_group: int = 65_536) -> Path:
    """The same rows as a folder of ``parts`` uncompressed Parquet files (columns x0.., y), float32."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    names = [f"x{i}" for i in range(x.shape[1])]
    step = math.ceil(len(x) / parts)
    for k, start in enumerate(range(0, len(x), step)):
        part = x[start : start + step].numpy()
        columns = {c: part[:, j] for j, c in enumerate(names)} | {"y": y[start : start + step, 0].numpy()}
        pq.write_table(pa.table(columns), folder / f"part-{k}.parquet", row_group_size=row_group, compression="none")
    return folder


# -- timing inside the trainer -------------------------------------------------------------------------


def batch_rows(batch: Any) -> int:
    """Rows of a tuple batch, one linreg batch dict, or a linreg group (a list of them)."""
    if isinstance(batch, list) and batch and isinstance(batch[0], dict):
        return sum(int(b["x"].shape[0]) for b in batch)
    return int(batch["x"].shape[0] if isinstance(batch, dict) else batch[0].shape[0])


class EpochTimer(L.Callback):
    """Epoch start times, rows per epoch and the end of training, taken inside the trainer.

    Callbacks' ``on_train_end`` runs before the module's, so the window closes before linreg's
    end-of-fit work (closed-form summary, last checkpoint). ``train_start`` is taken at the trainer's
    ``on_train_start`` hooks, so whatever runs there (linreg's closed-form pass) shows up apart.
    """

    def __init__(self) -> None:
        self.starts: list[float] = []
        self.rows: list[int] = []
        self.train_start = math.nan
        self.end = math.nan

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.train_start = clock()

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.starts.append(clock())
        self.rows.append(0)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, i: int
    ) -> None:
        self.rows[-1] += batch_rows(batch)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.end = clock()

    def seconds(self) -> list[float]:
        """Each epoch's wall, its end-of-epoch hooks (metrics, logging) included."""
        return [end - start for start, end in zip(self.starts, [*self.starts[1:], self.end])]

    def rate(self, skip: int = 1) -> float:
        """Median rows/s over epochs ``skip``.. (0-based): the first epoch warms up, and the median shrugs off
        a neighbour's burst of load on a shared machine."""
        rates = [rows / s for rows, s in zip(self.rows, self.seconds())]
        return statistics.median(rates[min(skip, len(rates) - 1) :])


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
        self.fit_start = clock()

    def after_fit(self) -> None:
        self.fit_seconds = clock() - self.fit_start
        super().after_fit()


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


def run_linreg(args: list[str], cwd: Path, callbacks: list[L.Callback] | None = None) -> tuple[TimedCLI, float]:
    """Run ``linreg <args>`` in process in ``cwd``; return the CLI object and the whole in-process wall
    (reading the table, its checks, the fit, the summary)."""
    TimedCLI.extra_callbacks = callbacks or []
    out = io.StringIO()
    try:
        with workdir(cwd), contextlib.redirect_stdout(out):
            t0 = clock()
            cli = TimedCLI(args=args)
            wall = clock() - t0
    except BaseException:
        sys.stderr.write(out.getvalue())
        raise
    finally:
        TimedCLI.extra_callbacks = []
        gc.collect()  # the last run's data and trainer go before the next run loads its own
    return cli, wall


def fit_args(path: Path, batch: int, epochs: int, *extra: str) -> list[str]:
    """A ``linreg fit`` comparable with the raw loop: raw units, a fixed step, no averaging (not linreg's defaults)."""
    return [
        "fit",
        f"--data.path={path}",
        f"--data.batch_size={batch}",
        "--data.shuffle=blocks",
        f"--trainer.max_epochs={epochs}",
        "--trainer.enable_progress_bar=false",
        "--trainer.accelerator=cpu",
        "--trainer.devices=1",
        "--seed_everything=0",
        "--data.standardize=false",
        "--model.lr=0.01",
        "--model.momentum=0",
        *extra,
    ]


# -- child processes ---------------------------------------------------------------------------------


def run_process(cmd: list[str], cwd: Path) -> tuple[float, str]:
    """Seconds (wall, or the child's CPU seconds under --clock cpu) and stderr of one child process."""
    cwd.mkdir(parents=True, exist_ok=True)
    # This checkout's linreg, unless PYTHONPATH names another first (a baseline measured with this bench).
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH"), str(ROOT)]))}
    t0, cpu0 = time.perf_counter(), _children_cpu()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0 if _clock is CLOCKS["wall"] else _children_cpu() - cpu0
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return wall, proc.stderr


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def peak_rss_mb(stderr: str) -> float:
    """The VmHWM that PEAK_RSS_SCRIPT printed."""
    return int(next(ln for ln in stderr.splitlines() if ln.startswith("BENCH_PEAK_RSS_KB=")).split("=")[1]) / 1024


def linreg_command() -> list[str]:
    """linreg's entry point as a user runs it, importing this checkout (``-m``, with ROOT on PYTHONPATH)."""
    return [sys.executable, "-m", "linreg.cli"]


@torch.no_grad()
def training_mse(model: Callable[[Tensor], Tensor], x: Tensor, y: Tensor) -> float:
    sse = 0.0
    for s in range(0, len(x), CHUNK):
        sse += float(((model(x[s : s + CHUNK]) - y[s : s + CHUNK]).double() ** 2).sum())
    return sse / len(x)
