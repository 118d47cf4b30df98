"""Callbacks: the checkpoint policy and the prediction file."""

from __future__ import annotations

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
    - On Ctrl-C or SIGTERM, ``last.ckpt`` is saved so ``linreg fit --ckpt_path last`` resumes.
    - Never a checkpoint with non-finite weights.

    Args:
        every_n_epochs: also save every N epochs (0: only at the end of fit).
    """

    def __init__(self, every_n_epochs: int = 0) -> None:
        super().__init__(save_last=True, every_n_epochs=every_n_epochs, save_top_k=-1 if every_n_epochs else 1)

    def _save_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        if not _finite(trainer.lightning_module):
            rank_zero_warn(f"not saving {filepath}: the weights are not finite")
            return
        super()._save_checkpoint(trainer, filepath)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._last_global_step_saved != trainer.global_step or not self.last_model_path:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if isinstance(exception, (KeyboardInterrupt, SIGTERMException)) and not trainer.sanity_checking:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
            rank_zero_info(
                f"linreg: interrupted at epoch {trainer.current_epoch}; saved {self.last_model_path}; "
                "resume with `linreg fit ... --ckpt_path last`"
            )


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
