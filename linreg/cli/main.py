"""``main``: the ``linreg`` command's entry point, where a user's mistake becomes one line and an exit status."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
from lightning.fabric.utilities.exceptions import MisconfigurationException

from linreg.cli.app import LinRegCLI
from linreg.data.datamodule import LinRegData
from linreg.data.source import restore_memory
from linreg.errors import LinRegError
from linreg.io import WRITE_ERRORS
from linreg.training.module import LinRegModule

NOISE = (
    r".*Total length of `list` across ranks is zero.*",  # no validation split: intended
    r".*The dirpath has changed from.*",  # restoring a checkpoint to predict: irrelevant
    r".*LeafSpec.*",  # a torch deprecation inside Lightning
    r".*does not have many workers.*",  # batches are tensor slices, no workers needed
    r".*infer the batch indices.*",  # rows carry their own index (see PredictionWriter)
    r".*sync_dist=True.*",  # epoch values are already reduced over ranks (torchmetrics) before self.log
    r".*overridden `transfer_batch_to_device`.*",  # linreg's own, on the module: intended
    r".*LightningCLI's args parameter is intended.*",  # argv rewritten by LinRegCLI (--data.features one name)
    r".*`max_epochs` was not set.*",  # the cap of 1000 is Lightning's; linreg's stopping rule (--model.tol) ends a fit
    r".*this fit will run with no optimizer.*",  # --model.solver lstsq has no SGD, by design
)


class _DropTip(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "Tip:" not in record.getMessage()


@contextlib.contextmanager
def quiet_lightning() -> Iterator[None]:
    """For one command: silence Lightning messages that are noise for linreg's users (each one named in
    NOISE), and TensorBoard's thread's second traceback. A Python caller's warning filters, loggers and
    thread hook are theirs again afterwards: nothing process-wide outlives the command."""
    log, tip, hook = logging.getLogger("lightning.pytorch.utilities.rank_zero"), _DropTip(), threading.excepthook
    with warnings.catch_warnings():
        for pattern in NOISE:
            warnings.filterwarnings("ignore", message=pattern)
        log.addFilter(tip)
        threading.excepthook = _thread_excepthook
        try:
            yield
        finally:
            log.removeFilter(tip)
            threading.excepthook = hook


def _thread_excepthook(args: Any) -> None:
    """TensorBoard writes its event file in a thread; a full disk there is raised again in the main
    thread at its next write, and reported once, as one line, by ``main``: no second traceback."""
    if isinstance(args.exc_value, OSError) and args.exc_value.errno in WRITE_ERRORS:
        return
    threading.__excepthook__(args)


@dataclass
class Result:
    """What a run leaves a Python caller of ``main([...])``: the objects it ran, and what it reported."""

    subcommand: str | None
    model: LinRegModule | None = None  # the fitted (or restored) LightningModule
    datamodule: LinRegData | None = None
    trainer: L.Trainer | None = None
    summary: dict[str, Any] | None = None  # fit: what the summary printed, as summary.json holds it
    metrics: dict[str, float] = field(default_factory=dict)  # the last value of every logged metric
    output: Path | None = None  # export: the file written


def versions() -> str:
    """`linreg --version`: the versions a bug report needs."""
    import lightning
    import torch

    import linreg

    py = ".".join(map(str, sys.version_info[:3]))
    return f"linreg {linreg.__version__} (torch {torch.__version__}, lightning {lightning.__version__}, python {py})"


def main(args: list[str] | None = None) -> Result | None:
    """Entry point of the ``linreg`` command. Called from Python with a list of arguments, it returns
    a ``Result`` (the fitted module, the summary, ...); as the console script (``args`` None) it returns
    None, since the script hands the return value to ``sys.exit``."""
    with quiet_lightning():
        try:
            return _run(args)
        finally:
            restore_memory()  # a streamed read's allocator settings end with the command


def _run(args: list[str] | None) -> Result | None:
    argv = sys.argv[1:] if args is None else list(args)
    result: Result | None = None
    try:
        if argv[:1] == ["--version"]:
            print(versions())
            result = Result(None)
        elif argv[:1] in (["-h"], ["--help"]):
            from linreg.cli.app import top_help

            print(top_help())
            result = Result(None)
        elif argv[:1] == ["export"]:  # not a Trainer method, so not a LightningCLI subcommand
            from linreg.cli.export import export_main

            result = Result("export", output=export_main(argv[1:]))
        else:
            cli = LinRegCLI(args=args)
            metrics = {**cli.model.latest, **cli.model.final_metrics}  # a fit: the saved model's, not the means
            result = Result(cli.subcommand, cli.model, cli.datamodule, cli.trainer, cli.summary, metrics)
    except (LinRegError, MisconfigurationException, OSError) as exc:
        # MisconfigurationException: a Trainer setting Lightning rejects; its message says which.
        # OSError: only a file the machine would not let us write (a full disk, a read-only folder).
        if os.environ.get("LINREG_DEBUG") or (isinstance(exc, OSError) and exc.errno not in WRITE_ERRORS):
            raise
        message = " ".join(str(exc).split())
        if isinstance(exc, OSError):
            message = f"{exc.filename}: {exc.strerror}" if exc.filename else f"{exc.strerror} (writing the run's files)"
        print(f"linreg: error: {message}", file=sys.stderr)
        raise SystemExit(1) from None
    return result if args is not None else None

