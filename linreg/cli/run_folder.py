"""The run's log folder: made by this run or not, taken atomically, and dropped when a refused run
leaves nothing worth keeping; the temporary files a killed run left in its family's checkpoints."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from jsonargparse import Namespace
from lightning.fabric.utilities.rank_zero import rank_zero_only

from linreg.errors import LinRegError
from linreg.io import remove_stale
from linreg.lightning_private import pick_version_again, picks_its_version


def new_run_folder(trainer: Any) -> list[Path]:
    """The log folder this run makes, and the folders above it it makes too (``lightning_logs``),
    innermost first: empty if the log folder exists already (a logger given a version, a name, a
    sub_dir, or no version at all), or is not a local folder. Only these, made by this run, may be
    removed after it (``drop_run_folder``).

    A version the logger picks itself (the next free ``version_N``) is taken with ``os.mkdir``, which
    only one process can win: two fits started together in one folder both saw ``version_0`` free,
    wrote into it, and both were lost. The loser takes the next number."""
    logger = trainer.logger
    auto = picks_its_version(logger)  # before log_dir, which fixes the version
    log_dir = getattr(logger, "log_dir", None)
    if not log_dir or "://" in str(log_dir):
        return []
    folder = Path(log_dir).absolute()
    made = [p for p in (folder, *folder.parents) if not p.exists()]
    # Rank 0 only: under DDP the other ranks use rank 0's folder (Lightning broadcasts it).
    if not auto or _rank() != 0 or folder.name != f"version_{logger.version}":
        return made
    while True:
        made = [p for p in (folder, *folder.parents) if not p.exists()]
        folder.parent.mkdir(parents=True, exist_ok=True)
        try:
            folder.mkdir()
            return made
        except FileExistsError:  # another run took it between the listing and now
            if not folder.is_dir():  # a file of that name: the logger's listing would pick it again
                raise LinRegError(f"{folder} is a file, where the run's log folder would go; move it") from None
            pick_version_again(logger)
            folder = Path(logger.log_dir).absolute()


def drop_run_folder(trainer: Any, made: list[Path], refused: bool) -> None:
    """Remove the log folder this run made if it holds nothing, or if the run was refused before training
    a step and holds no checkpoint: a refused run leaves no ``version_N`` nor half-written files. A fit
    that trained keeps its logs even when it fails (a diverged fit's loss curve, say). The folders
    above it that the run made (``lightning_logs``) go too, once empty."""
    if not made or not trainer.is_global_zero or Path(trainer.logger.log_dir).absolute() != made[0]:
        return
    if not made[0].is_dir():
        return
    files = [p for p in made[0].rglob("*") if p.is_file()]
    if files and not (refused and not any(p.suffix == ".ckpt" for p in files)):
        return
    shutil.rmtree(made[0], ignore_errors=True)
    for parent in made[1:]:
        try:
            parent.rmdir()  # only when empty: another run may have started in it meanwhile
        except OSError:
            return


def remove_stale_checkpoint_files(trainer: Any, ckpt_path: str | None) -> None:
    """The temporary files a ``kill -9`` left in the middle of a checkpoint save, anywhere in this run
    family's checkpoint folders (``save_dir/name/*/checkpoints``, or ``default_root_dir/checkpoints``
    without a logger) and beside the checkpoint resumed from: a later fit is the first chance to
    remove them. A file another live fit is still writing is locked, and stays."""
    logger = trainer.logger
    if logger is not None and logger.save_dir and "://" not in str(logger.save_dir):
        family = Path(logger.save_dir) / (logger.name or "")
        folders = list(family.glob("*/checkpoints"))
    else:
        folders = [Path(trainer.default_root_dir) / "checkpoints"]
    if ckpt_path and "://" not in str(ckpt_path):
        folders.append(Path(ckpt_path).parent)
    for folder in folders:
        if folder.is_dir() and os.access(folder, os.W_OK):
            remove_stale(folder)


def checkpoint_run_logger(logger: Any, ckpt_path: str, subcommand: str) -> Any:
    """Where a plain validate or test logs: beside the training logs of the checkpoint's own run
    (``<run>/validate``), when the checkpoint is in a run folder (``<run>/checkpoints/*.ckpt``) and the
    logger is the default one; else nowhere. A new ``version_N`` holding metrics and no checkpoint
    is a run nobody can find again."""
    ckpt = Path(ckpt_path).absolute()
    args = logger.get("init_args") if isinstance(logger, Namespace) else None
    if ckpt.parent.name != "checkpoints" or args is None or "sub_dir" not in args:
        return False
    run = ckpt.parent.parent
    args.save_dir, args.name, args.version, args.sub_dir = str(run.parent), "", run.name, subcommand
    return logger


def _rank() -> int:
    """This process's global rank, as Lightning records it on ``rank_zero_only`` (an attribute it sets)."""
    return int(getattr(rank_zero_only, "rank", 0))
