"""Callbacks: the checkpoint policy and the prediction file."""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import BasePredictionWriter, ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.exceptions import SIGTERMException
from typing_extensions import override

from linreg.errors import LinregError
from linreg.io import write_table


def _finite(module: L.LightningModule) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in module.parameters())


class Checkpoint(ModelCheckpoint):
    """Lightning's ``ModelCheckpoint`` with linreg's policy.

    - ``last.ckpt`` at the end of fit, and every ``every_n_epochs`` epochs if asked: a checkpoint
      after every tiny epoch costs more than the epoch itself.
    - Ctrl-C or SIGTERM stops the fit at a clean point and saves ``last.ckpt``, so that
      ``linreg fit --ckpt_path last`` continues exactly (the data loader resumes mid-epoch, see
      ``Batches``). A second Ctrl-C aborts at once, unsaved: a checkpoint taken in the middle of an
      update could not resume exactly.
    - Never a checkpoint with non-finite weights.

    Why not Lightning's own SIGTERM handling: in one process it waits for the end of the epoch (an
    out-of-core epoch can outlast a scheduler's grace period), it stops in the middle of a
    validation (whose metrics a resume then never logs), and under DDP its per-rank checks at the
    end of an epoch can leave one rank waiting for the others forever (measured). Here, during
    training, both signals only set a flag; the ranks agree on it (one all-reduce) at the end of
    each step and stop together: after that step, or, on an epoch's last step, once the epoch's
    validation and logging are done.

    Args:
        every_n_epochs: also save every N epochs (0: only at the end of fit).
    """

    def __init__(self, every_n_epochs: int = 0) -> None:
        super().__init__(save_last=True, every_n_epochs=every_n_epochs, save_top_k=-1 if every_n_epochs else 1)
        self.stopped_by: str | None = None
        self._trainer: L.Trainer | None = None
        self._previous: dict[int, Any] = {}

    @override
    def _save_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        if not _finite(trainer.lightning_module):
            rank_zero_warn(f"not saving {filepath}: the weights are not finite")
            return
        super()._save_checkpoint(trainer, filepath)

    # -- stopping on a signal ----------------------------------------------------------------------

    @override
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self.stopped_by, self._trainer = None, trainer
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self.stopped_by is not None or self._trainer is None:
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            return
        self.stopped_by = "Ctrl-C" if signum == signal.SIGINT else "SIGTERM"
        launcher = self._trainer.strategy.launcher
        if launcher is not None and hasattr(launcher, "kill"):
            launcher.kill(signum)  # the DDP processes Lightning started, if any
        if self._trainer.is_global_zero:
            again = " (Ctrl-C again aborts without saving)" if signum == signal.SIGINT else ""
            print(
                f"linreg: {self.stopped_by}: stopping at the next clean point and saving last.ckpt{again}",
                file=sys.stderr,
            )

    def _restore_signals(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def _stop_agreed(self, trainer: L.Trainer, pl_module: L.LightningModule) -> bool:
        stop = self.stopped_by is not None
        if trainer.world_size > 1:  # every rank decides the same, at the same step
            flag = torch.tensor([float(stop)], device=pl_module.device)
            stop = bool(trainer.strategy.reduce(flag, reduce_op="max").item())
            self.stopped_by = self.stopped_by or ("SIGTERM" if stop else None)
        return stop

    @override
    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        last = trainer.fit_loop.epoch_loop.batch_progress.is_last_batch
        if not last and self._stop_agreed(trainer, pl_module):
            raise SIGTERMException  # Lightning's "stopped by a signal": on_exception saves last.ckpt

    @override
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """On an epoch's last step: stop once the epoch is complete (Lightning raises right after it)."""
        super().on_train_epoch_end(trainer, pl_module)
        final = trainer.max_epochs not in (None, -1) and trainer.current_epoch + 1 >= trainer.max_epochs
        if self._stop_agreed(trainer, pl_module) and not final:
            trainer._signal_connector.received_sigterm = True

    @override
    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore_signals()
        if self._last_global_step_saved != trainer.global_step or not self.last_model_path:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    @override
    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._restore_signals()
        if isinstance(exception, SIGTERMException):
            self.stopped_by = self.stopped_by or "SIGTERM"
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        elif isinstance(exception, KeyboardInterrupt) and self.stopped_by:
            rank_zero_warn("linreg: aborted by a second Ctrl-C in the middle of a step; no checkpoint saved")

    @override
    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._restore_signals()
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
        ids: np.ndarray | None = None,
        id_column: str | None = None,
        overwrite: bool = False,
    ) -> None:
        super().__init__(write_interval="epoch")
        self.output, self.target_names = Path(output), target_names
        self.ids, self.id_column, self.overwrite = ids, id_column, overwrite

    @override
    def write_on_epoch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, predictions: Any, batch_indices: Any
    ) -> None:
        index = torch.cat([p["index"].cpu() for p in predictions]).numpy()
        # Written as float64, which holds every float32 exactly: float32's shortest text ("3.355513e+07")
        # reads back as another number (33555130, not the model's 33555128) in every float64 CSV reader.
        pred = torch.cat([p["pred"].detach().cpu() for p in predictions]).double().numpy()
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
        import pandas as pd

        df = pd.DataFrame(pred, columns=self.target_names)
        if self.ids is not None:
            df.insert(0, self.id_column, self.ids)
        write_table(self.output, df, overwrite=self.overwrite)
        rank_zero_info(f"linreg: wrote {len(df)} prediction(s) to {self.output}")
