"""Peak memory: a ``linreg fit`` process on the data against the seed fit's (the interpreter, libraries, Lightning).

A copy of X at any time, once or per epoch, lifts the peak by the data size; so would a float64 or
per-row-gather copy of a large part of it. The figure is (peak - seed peak) / data size (goal <= 1.5).

Usage: ``python -m scripts.bench.memory [--rows N] [--tiny] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

from scripts.bench.common import (
    PEAK_RSS_SCRIPT,
    SEED_CONFIG,
    fit_args,
    make_data,
    peak_rss_mb,
    run_main,
    run_process,
    write_npz,
)


def _flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--batch", type=int, default=None, help="batch size (default 65536; --tiny 1024)")


def measure(opts: argparse.Namespace) -> dict[str, Any]:
    batch = opts.batch or (1024 if opts.tiny else 65536)
    x, y = make_data(opts.rows, opts.dim, opts.seed)
    data_mb = (x.numel() + y.numel()) * 4 / 2**20
    with tempfile.TemporaryDirectory(prefix="linreg-bench-memory-") as name:
        tmp = Path(name)
        npz = write_npz(tmp / "data.npz", x, y)
        del x, y
        _, seed = run_process([sys.executable, "-c", PEAK_RSS_SCRIPT, "fit", f"--config={SEED_CONFIG}"], tmp / "seed")
        args = fit_args(npz, batch, 2, "--data.standardize=true")
        wall, fit = run_process([sys.executable, "-c", PEAK_RSS_SCRIPT, *args], tmp / "fit")
    baseline, peak = peak_rss_mb(seed), peak_rss_mb(fit)
    return {
        "data_mb": data_mb,
        "batch": batch,
        "baseline_peak_mb": baseline,
        "fit_peak_mb": peak,
        "fit_process_s": wall,
        "above_baseline_over_data": (peak - baseline) / data_mb,
    }


def report(r: dict[str, Any]) -> None:
    print(
        f"memory: data {r['data_mb']:.0f} MB; peak RSS of linreg fit on it (batch {r['batch']}) "
        f"{r['fit_peak_mb']:.0f} MB, of the seed fit {r['baseline_peak_mb']:.0f} MB; "
        f"(peak - seed peak) / data = {r['above_baseline_over_data']:.2f} (goal <= 1.5)"
        + (" (data too small against per-batch buffers for this ratio to mean much)" if r["data_mb"] < 100 else "")
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return run_main(__doc__, 2_000_000, 8_192, measure, report, argv, _flags)


if __name__ == "__main__":
    main()
