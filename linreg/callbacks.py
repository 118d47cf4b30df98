"""Callbacks: the checkpoint policy and the prediction file."""

from __future__ import annotations

import csv
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter, ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.exceptions import SIGTERMException
from typing_extensions import override

from linreg.errors import LinregError
from linreg.io import publish, temporary, writing


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

    - A debug run (``--trainer.fast_dev_run``) saves nothing: its one step would otherwise become
      the newest ``last.ckpt``, the one ``--ckpt_path last`` takes.

    Args:
        every_n_epochs: also update ``last.ckpt`` every N epochs (0: only at the end of fit).
        keep: also keep the N most recent per-epoch checkpoints (``epoch=E-step=S.ckpt``) beside
            ``last.ckpt`` (0: ``last.ckpt`` only; a file per epoch would fill the disk on a long fit).
    """

    def __init__(self, every_n_epochs: int = 0, keep: int = 0) -> None:
        if every_n_epochs < 0 or keep < 0:
            raise LinregError(
                f"--checkpoint.every_n_epochs and --checkpoint.keep must be at least 0, got {every_n_epochs} and {keep}"
            )
        if keep and not every_n_epochs:
            raise LinregError(
                "--checkpoint.keep needs --checkpoint.every_n_epochs N: without it there is one checkpoint, at the end"
            )
        # The most recent: "step" rises through a fit, so the top `keep` by step are the latest.
        latest = {"monitor": "step", "mode": "max"} if keep else {}
        super().__init__(save_last=True, every_n_epochs=every_n_epochs, save_top_k=keep, **latest)
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
        """Update last.ckpt every N epochs; on an epoch's last step, stop once the epoch is complete
        (Lightning raises right after it)."""
        super().on_train_epoch_end(trainer, pl_module)
        due = self._every_n_epochs and (trainer.current_epoch + 1) % self._every_n_epochs == 0
        if due and not self.save_top_k and not self._should_skip_saving_checkpoint(trainer):
            # Lightning updates last.ckpt only beside a kept epoch file; with keep 0 there is none.
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        final = trainer.max_epochs not in (None, -1) and trainer.current_epoch + 1 >= trainer.max_epochs
        if self._stop_agreed(trainer, pl_module) and not final:
            trainer._signal_connector.received_sigterm = True

    @override
    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore_signals()
        # Always: an epoch's checkpoint may already hold this step, but the model the fit ends with can
        # differ from it (ClosedForm puts the average of the iterates in after the last epoch).
        self._last_global_step_saved = -1
        if not trainer.fast_dev_run:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    @override
    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._restore_signals()
        if isinstance(exception, SIGTERMException):
            self.stopped_by = self.stopped_by or "SIGTERM"
            if not trainer.fast_dev_run:
                self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        elif isinstance(exception, KeyboardInterrupt) and self.stopped_by:
            rank_zero_warn("linreg: aborted by a second Ctrl-C in the middle of a step; no checkpoint saved")
        elif (
            trainer.state.fn == "fit"
            and trainer.fit_loop.done
            and _write_failure(exception)
            and not trainer.fast_dev_run
        ):
            # Training had finished when a log or figure could not be written (a full disk): the model
            # matters more than they do, and may still fit (a checkpoint is smaller than the logs).
            try:
                self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
            except LinregError:
                return  # the disk is full indeed; the previous checkpoint, if any, is whole
            if trainer.is_global_zero:
                print(f"linreg: the fit finished and was saved to {self.last_model_path}", file=sys.stderr)

    @override
    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._restore_signals()
        self._trainer = None


def _write_failure(exc: BaseException) -> bool:
    """A file the machine would not let us write (a full disk, a lost permission): ours or the logger's."""
    while exc is not None and not isinstance(exc, OSError):
        exc = exc.__cause__
    return exc is not None


class PredictionWriter(BasePredictionWriter):
    """Writes every prediction once, in input order, to one CSV or Parquet file, atomically, batch by batch.

    Memory stays at about a batch: each batch goes to a temporary file beside the output as it comes
    (pyarrow's CSV or Parquet writer), renamed over the output once every row is in; a failure leaves
    no file. Under DDP each rank writes its share to a temporary Parquet part, and rank 0 merges the
    parts in input order by the row index each batch carries, then removes them.

    Values are written as float64, which holds every float32 exactly: float32's shortest text
    ("3.355513e+07") reads back as another number (33555130, not 33555128) in a float64 CSV reader.
    """

    def __init__(
        self,
        output: str | Path,
        target_names: list[str],
        ids: np.ndarray | None = None,
        id_column: str | None = None,
        overwrite: bool = False,
    ) -> None:
        super().__init__(write_interval="batch")
        self.output, self.target_names = Path(output), target_names
        self.ids, self.id_column, self.overwrite = ids, id_column, overwrite
        self._out: _TableFile | None = None
        self._part: _TableFile | None = None
        self._id_type: Any = None

    def _part_path(self, rank: int) -> Path:
        return self.output.parent / f".{self.output.name}.part{rank}.parquet.tmp"

    @override
    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.output.exists() and not self.overwrite:
            raise LinregError(f"{self.output} already exists; pass --overwrite true to replace it")
        if trainer.world_size > 1:
            self._part = _TableFile(self._part_path(trainer.global_rank), ".parquet")
        else:
            self._out = _TableFile(self.output, self.output.suffix.lower())
        self._next = 0

    @override
    def write_on_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        prediction: Any,
        batch_indices: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        index = prediction["index"].cpu().numpy().astype(np.int64)
        pred = prediction["pred"].detach().double().cpu().numpy()
        if not np.isfinite(pred).all():
            raise LinregError("the model produced non-finite predictions; no output written")
        if self._part is not None:
            self._part.write(self._columns(index, pred, with_index=True))
            return
        self._check_order(index)
        self._out.write(self._columns(index, pred))

    def _check_order(self, index: np.ndarray) -> None:
        if not np.array_equal(index, np.arange(self._next, self._next + len(index))):
            raise LinregError("prediction rows came back out of order or duplicated; no output written")
        self._next += len(index)

    def _columns(self, index: np.ndarray, pred: np.ndarray, with_index: bool = False) -> dict[str, Any]:
        columns: dict[str, Any] = {"__index__": index} if with_index else {}
        if self.ids is not None and not with_index:
            import pyarrow as pa

            if self._id_type is None:  # from the whole column: a first batch of missing ids would say "null"
                self._id_type = pa.array(self.ids, from_pandas=True).type
            columns[self.id_column] = pa.array(self.ids[index], type=self._id_type, from_pandas=True)
        columns |= {name: pred[:, j] for j, name in enumerate(self.target_names)}
        return columns

    @override
    def on_predict_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._part is not None:
            if self._part.empty:  # this rank had no rows to predict
                self._part.discard()
            else:
                self._part.commit()
            trainer.strategy.barrier()
            if trainer.is_global_zero:
                try:
                    self._merge(trainer.world_size)
                finally:
                    for rank in range(trainer.world_size):
                        self._part_path(rank).unlink(missing_ok=True)
            trainer.strategy.barrier()
            self._part = None
            return
        rows = self._next
        if rows != _expected_rows(trainer):
            raise LinregError(f"predictions for {rows} of {_expected_rows(trainer)} rows; no output written")
        self._out.commit()
        self._out = None
        rank_zero_info(f"linreg: wrote {rows} prediction(s) to {self.output}")

    def _merge(self, world: int) -> None:
        """Rank 0: the ranks' parts in input order. Each part is in order; the next row is at the head of one."""
        import pyarrow.parquet as pq

        parts = [pq.ParquetFile(self._part_path(r)) for r in range(world) if self._part_path(r).exists()]
        world = len(parts)
        groups = [iter(range(p.num_row_groups)) for p in parts]
        heads: list[Any] = [None] * world
        self._out = _TableFile(self.output, self.output.suffix.lower())
        try:
            while True:
                for r in range(world):
                    while heads[r] is None or heads[r][0].size == 0:
                        g = next(groups[r], None)
                        if g is None:
                            heads[r] = (np.empty(0, np.int64), None)
                            break
                        table = parts[r].read_row_group(g)
                        heads[r] = (table.column("__index__").to_numpy(), table)
                    if heads[r][1] is None:
                        continue
                owner = next((r for r in range(world) if heads[r][0].size and heads[r][0][0] == self._next), None)
                if owner is None:
                    if any(h[0].size for h in heads):
                        raise LinregError("prediction rows came back incomplete or duplicated; no output written")
                    break
                index, table = heads[owner]
                run = int(np.argmax(index != np.arange(self._next, self._next + len(index)))) or len(index)
                pred = np.column_stack([table.column(t).to_numpy() for t in self.target_names])[:run]
                self._check_order(index[:run])
                self._out.write(self._columns(index[:run], pred))
                heads[owner] = (index[run:], table.slice(run))
            self._out.commit()
            rank_zero_info(f"linreg: wrote {self._next} prediction(s) to {self.output}")
        finally:
            if self._out is not None:
                self._out.discard()
            self._out = None

    @override
    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        for file in (self._out, self._part):
            if file is not None:
                file.discard()
        self._out = self._part = None


def _expected_rows(trainer: L.Trainer) -> int:
    loader = trainer.predict_dataloaders
    return getattr(loader, "n", -1)


class _TableFile:
    """A CSV or Parquet file written batch by batch into a temporary file, renamed over ``path`` by ``commit``."""

    def __init__(self, path: Path, kind: str) -> None:
        self.path, self.kind = path, kind
        self.tmp = temporary(path)
        self._writer: Any = None
        self._file: Any = None

    def write(self, columns: dict[str, Any]) -> None:
        with writing(self.path):
            self._write(columns)

    def _write(self, columns: dict[str, Any]) -> None:
        import pyarrow as pa

        table = pa.table(columns)
        if self._writer is None:
            self._schema = table.schema
            if self.kind == ".parquet":
                import pyarrow.parquet as pq

                self._writer = pq.ParquetWriter(self.tmp, table.schema)
            else:
                import pyarrow.csv as pc

                with open(self.tmp, "w", newline="") as header:  # quoted only where needed, as pandas does
                    csv.writer(header).writerow(table.column_names)
                self._file = open(self.tmp, "ab")  # noqa: SIM115 (closed in close())
                options = pc.WriteOptions(include_header=False)
                self._writer = pc.CSVWriter(self._file, table.schema, write_options=options)
        self._writer.write_table(table.cast(self._schema))

    def close(self) -> None:
        writer, file, self._writer, self._file = self._writer, self._file, None, None
        with writing(self.path):
            try:
                if writer is not None:
                    writer.close()
            finally:
                if file is not None:
                    file.close()

    @property
    def empty(self) -> bool:
        return not hasattr(self, "_schema")

    def commit(self) -> None:
        self.close()
        if self.empty:
            self.tmp.unlink(missing_ok=True)
            raise LinregError("no predictions were made; no output written")
        with writing(self.path):
            publish(self.tmp, self.path)

    def discard(self) -> None:
        """Remove the temporary file, whatever state a failure left its writer in."""
        try:
            self.close()
        except LinregError:
            pass  # the failure that brought us here has been reported already
        finally:
            self.tmp.unlink(missing_ok=True)
