"""Callbacks: the checkpoint policy and the prediction file."""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import BasePredictionWriter, ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.exceptions import SIGTERMException

from linreg.errors import LinregError
from linreg.io import write_table


def _finite(module: L.LightningModule) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in module.parameters())


class Checkpoint(ModelCheckpoint):
    """Lightning's ``ModelCheckpoint`` with linreg's policy.

    - ``last.ckpt`` at the end of fit, and every ``every_n_epochs`` epochs if asked: a checkpoint
      after every tiny epoch costs more than the epoch itself.
    - Ctrl-C or SIGTERM stops the fit after the current step, at a clean point, and saves
      ``last.ckpt``; ``linreg fit --ckpt_path last`` then continues exactly where it stopped (the
      data loader resumes mid-epoch, see ``Batches``). A second Ctrl-C aborts at once, unsaved: a
      checkpoint taken in the middle of an update could not resume exactly.
    - Never a checkpoint with non-finite weights.

    Args:
        every_n_epochs: also save every N epochs (0: only at the end of fit).
    """

    def __init__(self, every_n_epochs: int = 0) -> None:
        super().__init__(save_last=True, every_n_epochs=every_n_epochs, save_top_k=-1 if every_n_epochs else 1)
        self.stopped_by: str | None = None
        self._trainer: L.Trainer | None = None
        self._previous_sigint: Any = None

    def _save_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        if not _finite(trainer.lightning_module):
            rank_zero_warn(f"not saving {filepath}: the weights are not finite")
            return
        super()._save_checkpoint(trainer, filepath)

    # -- stopping on a signal ----------------------------------------------------------------------

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Ctrl-C asks for a stop, as SIGTERM does (Lightning's handler), instead of raising mid-update."""
        self.stopped_by, self._trainer = None, trainer
        if threading.current_thread() is threading.main_thread():
            self._previous_sigint = signal.signal(signal.SIGINT, self._on_sigint)

    def _on_sigint(self, signum: int, frame: Any) -> None:
        if self.stopped_by or self._trainer is None:
            raise KeyboardInterrupt
        self.stopped_by = "Ctrl-C"
        self._trainer._signal_connector.received_sigterm = True
        print(
            "linreg: Ctrl-C: stopping after this step and saving last.ckpt (Ctrl-C again aborts without saving)",
            file=sys.stderr,
        )

    def _restore_sigint(self) -> None:
        if self._previous_sigint is not None:
            signal.signal(signal.SIGINT, self._previous_sigint)
            self._previous_sigint = None

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Stop after this step when asked. Lightning itself waits for the epoch's end in one process
        (and stops DDP at the next step); the last step of an epoch is left to it, so that epoch's
        metrics are logged."""
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if (
            trainer.received_sigterm
            and trainer.world_size == 1
            and not trainer.fit_loop.epoch_loop.batch_progress.is_last_batch
        ):
            raise SIGTERMException

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore_sigint()
        if self._last_global_step_saved != trainer.global_step or not self.last_model_path:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._restore_sigint()
        if isinstance(exception, SIGTERMException):
            self.stopped_by = self.stopped_by or "SIGTERM"
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        elif isinstance(exception, KeyboardInterrupt) and self.stopped_by:
            rank_zero_warn("linreg: aborted by a second Ctrl-C in the middle of a step; no checkpoint saved")

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._restore_sigint()
        self._trainer = None


class PredictionWriter(BasePredictionWriter):
    """Writes every prediction once, in input order, to one CSV or Parquet file, atomically.

    Lightning's CLI discards what ``predict`` returns, so the file is written here. Under DDP each
    rank holds an interleaved share of the rows; the shares are gathered on rank 0 and put back in
    order by the row index each batch carries.
    """

    def __init__(
        self,
        output: str | Path,
        target_names: list[str],
        ids: pd.Series | None = None,
        id_column: str | None = None,
        overwrite: bool = False,
    ) -> None:
        super().__init__(write_interval="epoch")
        self.output, self.target_names = Path(output), target_names
        self.ids, self.id_column, self.overwrite = ids, id_column, overwrite

    def write_on_epoch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, predictions: Any, batch_indices: Any
    ) -> None:
        index = torch.cat([p["index"].cpu() for p in predictions]).numpy()
        pred = torch.cat([p["pred"].detach().float().cpu() for p in predictions]).numpy()
        if dist.is_available() and dist.is_initialized() and trainer.world_size > 1:
            parts: list[Any] = [None] * trainer.world_size
            dist.all_gather_object(parts, (index, pred))
            index = np.concatenate([p[0] for p in parts])
            pred = np.concatenate([p[1] for p in parts])
        if not trainer.is_global_zero:
            return
        order = np.argsort(index, kind="stable")
        index, pred = index[order], pred[order]
        if not np.array_equal(index, np.arange(len(index))):
            raise LinregError("prediction rows came back incomplete or duplicated; no output written")
        if not np.isfinite(pred).all():
            raise LinregError("the model produced non-finite predictions; no output written")
        df = pd.DataFrame(pred, columns=self.target_names)
        if self.ids is not None:
            df.insert(0, self.id_column, self.ids)
        write_table(self.output, df, overwrite=self.overwrite)
        rank_zero_info(f"linreg: wrote {len(df)} prediction(s) to {self.output}")
