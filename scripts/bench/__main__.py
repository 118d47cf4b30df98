"""Every measurement in one run, then issue 24's goals table: figure | today | now | goal.

"today" is the issue's figure for main before this round (48b57b1); "now" is measured in this run,
each ratio from one run of its measurement (both sides side by side). Each measurement also runs
alone: ``python -m scripts.bench.<epochs|streaming|startup|exact|memory> --help``.

Usage: ``python -m scripts.bench [--tiny] [--threads N] [--clock cpu] [--json PATH] [--only NAME ...]``.
Timings on a shared machine move with its load; each section records the load average.
"""

from __future__ import annotations

import argparse
import importlib
import json
from pathlib import Path
from typing import Any

MEASUREMENTS = ("epochs", "streaming", "startup", "exact", "memory")


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.2f}"


def goals(r: dict[str, Any]) -> list[tuple[str, str, str, str, bool | None]]:
    """(figure, today, now, goal, met) for each row the measurements taken give."""
    rows: list[tuple[str, str, str, str, bool | None]] = []
    if "epochs" in r:
        t = r["epochs"]["throughput"]
        ratios = [e["c_over_a"] for e in t]
        sizes = " / ".join(str(e["batch"]) for e in t)
        rows.append(
            (
                f"SGD epoch vs raw contiguous loop, B={sizes}",
                "0.78 / 0.38 / 0.37",
                " / ".join(_fmt(v) for v in ratios),
                " / ".join(">= 0.9" for _ in ratios),
                all(v >= 0.9 for v in ratios),
            )
        )
    if "streaming" in r:
        s = r["streaming"]
        rows.append(
            (
                "Parquet folder read whole vs streamed, whole 4-epoch fit",
                "0.72",
                _fmt(s["whole_over_streamed_speed"]),
                ">= 1.0",
                s["whole_over_streamed_speed"] >= 1.0,
            )
        )
        rows.append(
            (
                "streamed Parquet folder, first epoch / later epochs vs in-memory",
                "0.04-0.10 / 0.69-0.83",
                f"{_fmt(s['first_epoch_ratio'])} / {_fmt(s['later_epochs_ratio'])}",
                ">= 0.5 / >= 0.9",
                s["first_epoch_ratio"] >= 0.5 and s["later_epochs_ratio"] >= 0.9,
            )
        )
    if "startup" in r:
        s = r["startup"]
        rows.append(
            (
                "seed fit whole process vs a raw-torch script",
                "1.66-1.77",
                _fmt(s["over_raw_script"]),
                "<= 1.3",
                s["over_raw_script"] <= 1.3,
            )
        )
        rows.append(
            (
                "seed fit whole process vs a plain Lightning script",
                "1.00",
                _fmt(s["over_plain_lightning"]),
                "<= 1.0",
                s["over_plain_lightning"] <= 1.0,
            )
        )
    if "exact" in r:
        v = r["exact"]["solver_over_sklearn"]
        rows.append(
            (
                f"exact solver {r['exact']['meta']['rows']:,} x {r['exact']['meta']['dim']} vs scikit-learn",
                "0.32",
                _fmt(v),
                "<= 0.3 (keep)",
                None if v is None else v <= 0.3,
            )
        )
    if "memory" in r:
        v = r["memory"]["above_baseline_over_data"]
        rows.append(("peak RSS above the seed fit's / data size (issue 4)", "-", _fmt(v), "<= 1.5", v <= 1.5))
    return rows


def print_goals(r: dict[str, Any]) -> None:
    rows = goals(r)
    head = ("figure", "today", "now", "goal", "met")
    cells = [(f, t, n, g, {True: "yes", False: "no", None: "n/a"}[m]) for f, t, n, g, m in rows]
    widths = [max(len(row[i]) for row in [head, *cells]) for i in range(len(head))]
    clock = next((v["meta"]["clock"] for v in r.values() if "meta" in v), "wall")
    print(f"\ngoals (issue 24): today = the issue's figures for main 48b57b1; now = this run ({clock} clock)")
    for row in [head, tuple("-" * w for w in widths), *cells]:
        print("| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths)) + " |")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tiny", action="store_true", help="every measurement at a size that runs in seconds (CI)")
    p.add_argument("--threads", type=int, default=None, help="torch threads in this process")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall", help="wall or CPU seconds (a busy machine)")
    p.add_argument("--json", type=Path, default=None, help="write all results here")
    p.add_argument("--only", nargs="+", choices=MEASUREMENTS, default=list(MEASUREMENTS))
    opts = p.parse_args(argv)
    common = [*(["--tiny"] if opts.tiny else []), *(["--threads", str(opts.threads)] if opts.threads else [])]
    common += ["--clock", opts.clock]
    result: dict[str, Any] = {}
    for name in opts.only:
        print(f"\n== {name}", flush=True)
        result[name] = importlib.import_module(f"scripts.bench.{name}").main(common)
    print_goals(result)
    if opts.json:
        opts.json.write_text(json.dumps(result, indent=2, default=str) + "\n")
        print(f"\nwrote {opts.json}")
    return result


if __name__ == "__main__":
    main()
