"""The run's log folder: made by this run or not, and dropped when a refused run leaves nothing worth keeping."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any


def new_run_folder(trainer: Any) -> Path | None:
    """The log folder this run is about to make: None if it exists already (a logger given a version,
    a name, a sub_dir, or no version at all), or is not a local folder. Only such a folder, made by
    this run, may be removed after it (``drop_run_folder``)."""
    log_dir = getattr(trainer.logger, "log_dir", None)  # fixes the logger's version now, as its first use would
    if not log_dir or "://" in str(log_dir):
        return None
    folder = Path(log_dir).absolute()
    return None if folder.exists() else folder


def drop_run_folder(trainer: Any, made: Path | None, refused: bool) -> None:
    """Remove the log folder this run made if it holds nothing, or if the run was refused before training
    a step and holds no checkpoint: a refused run leaves no ``version_N`` nor half-written files. A fit
    that trained keeps its logs even when it fails (a diverged fit's loss curve, say)."""
    if made is None or not trainer.is_global_zero or Path(trainer.logger.log_dir).absolute() != made:
        return
    if not made.is_dir():
        return
    files = [p for p in made.rglob("*") if p.is_file()]
    if not files or (refused and not any(p.suffix == ".ckpt" for p in files)):
        shutil.rmtree(made, ignore_errors=True)
