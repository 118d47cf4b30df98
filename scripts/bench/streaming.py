"""Streamed Parquet against the same rows in memory (issue 24): epochs, and whole fits read whole vs streamed.

One generated data set, written as an ``.npz`` (held in memory) and as a folder of Parquet parts
(uncompressed, row groups of 65,536, in the page cache), then in one run:

- epochs: ``linreg fit`` at the batch size on each, rows/s of the first epoch and the median of the later
  ones (the streamed first epoch decodes the Parquet; later ones read linreg's decoded copy, see
  ``linreg.data.decoded.Decoded``); the streamed epochs over the in-memory ones are the issue's figures;
- whole fits: the wall of a whole ``linreg fit`` in process (reading, checks, closed-form pass, epochs,
  summary) of the folder streamed and read whole (``--data.stream false``); streamed / whole >= 1 means
  reading it whole is not the slower path;
- reading alone: the streamed rows' first two shuffled epochs without training.

Usage: ``python -m scripts.bench.streaming [--rows N] [--tiny] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path
from typing import Any

from linreg.data.batches import Batches
from linreg.data.tables import read_table
from scripts.bench.common import clock, fit_args, make_data, run_linreg, run_main, write_npz, write_parquet_folder


def _flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--batch", type=int, default=None, help="batch size (default 65536; --tiny 1024)")
    p.add_argument("--parts", type=int, default=8, help="Parquet files in the folder (default 8)")
    p.add_argument("--epochs", type=int, default=4, help="epochs of each fit (default 4)")
    p.add_argument("--repeats", type=int, default=None, help="fits of each kind, median taken (default 2; --tiny 1)")


def measure(opts: argparse.Namespace) -> dict[str, Any]:
    batch = opts.batch or (1024 if opts.tiny else 65536)
    repeats = opts.repeats or (1 if opts.tiny else 2)
    x, y = make_data(opts.rows, opts.dim, opts.seed)
    with tempfile.TemporaryDirectory(prefix="linreg-bench-stream-") as name:
        tmp = Path(name)
        npz = write_npz(tmp / "data.npz", x, y)
        folder = write_parquet_folder(tmp / "parquet", x, y, opts.parts, 65_536 if not opts.tiny else 1000)
        del x, y
        runs: dict[str, list[dict[str, float]]] = {"in memory": [], "streamed": [], "read whole": []}
        for i in range(repeats):  # interleaved, so a burst of load hits each kind alike
            for label, path, extra in (
                ("in memory", npz, ()),
                ("streamed", folder, ("--data.stream=true",)),
                ("read whole", folder, ("--data.stream=false",)),
            ):
                args = fit_args(path, batch, opts.epochs, "--figures.enabled=false", *extra)
                cli, wall = run_linreg(args, tmp / f"{label.replace(' ', '-')}-{i}")
                t = cli.timer
                runs[label].append(
                    {
                        "first_epoch_rows_per_s": t.rows[0] / t.seconds()[0],
                        "later_epochs_rows_per_s": t.rate(skip=1),
                        "fit_s": wall,
                        "before_epochs_s": t.starts[0] - cli.fit_start + (wall - cli.fit_seconds),
                    }
                )
        med = {label: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for label, rs in runs.items()}
        mem, st, whole = med["in memory"], med["streamed"], med["read whole"]
        reads = _reading_alone(folder, batch)
    return {
        "batch": batch,
        "epochs": opts.epochs,
        "parts": opts.parts,
        "repeats": repeats,
        "median": med,
        "first_epoch_ratio": st["first_epoch_rows_per_s"] / mem["later_epochs_rows_per_s"],
        "later_epochs_ratio": st["later_epochs_rows_per_s"] / mem["later_epochs_rows_per_s"],
        "whole_over_streamed_speed": st["fit_s"] / whole["fit_s"],
        "reading_alone_ms_per_batch": reads,
    }


def _reading_alone(folder: Path, batch: int) -> dict[str, float]:
    """Three shuffled epochs of the streamed rows, read as a fit reads them (checked first), without training."""
    table = read_table(folder, stream=True)
    names = [c for c in table.columns if c != "y"]
    x = table.matrix(names, dtype=None, fit_float32=True)
    reads = Batches(x, table.matrix(["y"], dtype=None, fit_float32=True), batch, "blocks")
    ms = {}
    for epoch in (1, 2, 3):
        reads.set_epoch(epoch)
        t0 = clock()
        for _ in reads.batches():
            pass
        ms[f"epoch {epoch}"] = 1e3 * (clock() - t0) / reads.n_batches
    return ms


def report(r: dict[str, Any]) -> None:
    m = r["median"]
    print(f"streamed Parquet folder ({r['parts']} parts) vs in memory, batch {r['batch']}, {r['epochs']}-epoch fits:")
    print(f"  {'':12} {'first epoch':>12} {'later epochs':>13} {'whole fit s':>12} {'before epochs s':>16}")
    for label, v in m.items():
        print(
            f"  {label:12} {v['first_epoch_rows_per_s'] / 1e6:9.3f} M/s {v['later_epochs_rows_per_s'] / 1e6:10.3f} M/s "
            f"{v['fit_s']:12.2f} {v['before_epochs_s']:16.2f}"
        )
    print(
        f"  streamed / in-memory epoch: first {r['first_epoch_ratio']:.2f} (goal >= 0.5), later "
        f"{r['later_epochs_ratio']:.2f} (goal >= 0.9)"
    )
    print(
        f"  read whole vs streamed, whole fit (streamed s / whole s): {r['whole_over_streamed_speed']:.2f} "
        "(goal >= 1.0)"
    )
    reads = ", ".join(f"{k} {v:.2f}" for k, v in r["reading_alone_ms_per_batch"].items())
    print(f"  reading alone, ms per batch: {reads}")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return run_main(__doc__, 1_000_000, 20_000, measure, report, argv, _flags)


if __name__ == "__main__":
    main()
