"""How far a pass over a streamed table has come: one line on stderr."""

from __future__ import annotations

import os
import sys
import time
from typing import Any


class Progress:
    """How far a pass over a streamed table has come, on stderr.

    On a terminal, one line redrawn at most every ``EVERY`` seconds (rows, rows/s, and the time left
    where the rows to read are known); otherwise, for a log, one line when the pass ends. Only the
    first process of a distributed run reports: the others make the same pass over their share.
    """

    EVERY = 0.25  # seconds between redraws: a pass is never slowed by its report

    def __init__(self, what: str, total: int | None = None) -> None:
        self.what, self.total, self.rows = what, total, 0
        self.start = self.shown = time.monotonic()
        self.tty = sys.stderr.isatty()
        self.on = all(os.environ.get(v, "0") in ("", "0") for v in ("RANK", "LOCAL_RANK", "NODE_RANK"))
        self.done = False

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, kind: Any, *_: Any) -> None:
        if kind is None:
            self.close()
        elif self.tty and self.on and not self.done and self.shown > self.start:
            print(file=sys.stderr)  # the error goes on a line of its own, below where the pass stopped
        self.done = True

    def update(self, rows: int) -> None:
        if self.done:
            return
        self.rows += rows
        if self.total is not None and self.rows >= self.total:
            self.close()
        elif self.tty and self.on and time.monotonic() - self.shown >= self.EVERY:
            self.shown = time.monotonic()
            print(f"\r{self.line()}\x1b[K", end="", file=sys.stderr, flush=True)

    def close(self) -> None:
        if not self.done and self.on:
            print(f"\r{self.line(done=True)}\x1b[K" if self.tty else self.line(done=True), file=sys.stderr, flush=True)
        self.done = True

    def line(self, done: bool = False) -> str:
        seconds = time.monotonic() - self.start
        rate = self.rows / max(seconds, 1e-6)
        text = f"linreg: {self.what}: {self.rows:,}" + (f" of {self.total:,}" if self.total else "") + " rows"
        if done:
            return f"{text} in {_duration(seconds)} ({rate:,.0f} rows/s)"
        left = f", {_duration((self.total - self.rows) / rate)} left" if self.total and self.rows else ""
        return f"{text}, {rate:,.0f} rows/s{left}"


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, seconds = divmod(round(seconds), 60)
    return f"{minutes} min {seconds:02d} s" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"
