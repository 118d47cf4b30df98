"""``main``: the ``linreg`` command's entry point, where a user's mistake becomes one line and an exit status."""

from __future__ import annotations

import logging
import os
import sys
import threading
import warnings
from typing import Any

from lightning.pytorch.utilities.exceptions import MisconfigurationException

from linreg.cli.app import LinRegCLI
from linreg.errors import LinRegError
from linreg.io import WRITE_ERRORS

NOISE = (
    r".*Total length of `list` across ranks is zero.*",  # no validation split: intended
    r".*The dirpath has changed from.*",  # restoring a checkpoint to predict: irrelevant
    r".*LeafSpec.*",  # a torch deprecation inside Lightning
    r".*does not have many workers.*",  # batches are tensor slices, no workers needed
    r".*infer the batch indices.*",  # rows carry their own index (see PredictionWriter)
    r".*sync_dist=True.*",  # epoch values are already reduced over ranks (torchmetrics) before self.log
    r".*overridden `transfer_batch_to_device`.*",  # linreg's own, on the module: intended
)


class _DropTip(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "Tip:" not in record.getMessage()


def quiet_lightning() -> None:
    """Silence Lightning messages that are noise for linreg's users (each one named in NOISE)."""
    for pattern in NOISE:
        warnings.filterwarnings("ignore", message=pattern)
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_DropTip())


def _thread_excepthook(args: Any) -> None:
    """TensorBoard writes its event file in a thread; a full disk there is raised again in the main
    thread at its next write, and reported once, as one line, by ``main``: no second traceback."""
    if isinstance(args.exc_value, OSError) and args.exc_value.errno in WRITE_ERRORS:
        return
    threading.__excepthook__(args)


def main(args: list[str] | None = None) -> None:
    """Entry point of the ``linreg`` command; tests call ``main([...])`` in process."""
    quiet_lightning()
    threading.excepthook = _thread_excepthook  # for the process: the writer thread may report at exit
    argv = sys.argv[1:] if args is None else list(args)
    try:
        if argv[:1] == ["export"]:  # not a Trainer method, so not a LightningCLI subcommand
            from linreg.cli.export import export_main

            export_main(argv[1:])
        else:
            LinRegCLI(args=args)
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

