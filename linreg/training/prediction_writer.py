"""``PredictionWriter``: every prediction once, in input order, to one CSV or Parquet file, atomically.

Just over 300 lines because the writer, its temporary file and the DDP merge share one file's lifecycle
(open, batches, commit or discard), which a signal or a full disk can end at any point.
"""

from __future__ import annotations

import csv
import signal
import threading
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_info
from typing_extensions import override

from linreg.errors import LinRegError
from linreg.io import publish, temporary, writing
from linreg.lstsq.robust import interval_columns
from linreg.training.exact import stored_covariance


class PredictionStopped(Exception):
    """Ctrl-C or SIGTERM stopped a predict: raised at the next batch, so that no partial file is left."""

    def __init__(self, by: str, rows: int, total: int, output: Path, existed: bool) -> None:
        left = f"{output} left as it was" if existed else f"{output} not written"
        super().__init__(f"stopped by {by} after {rows} of {total} rows; no predictions written, {left}")
        self.exit_code = 130 if by == "Ctrl-C" else 143


class PredictionWriter(BasePredictionWriter):
    """Writes every prediction once, in input order, to one CSV or Parquet file, atomically, batch by batch.

    Memory stays at about a batch: each batch goes to a temporary file beside the output as it comes
    (pyarrow's CSV or Parquet writer), renamed over the output once every row is in; a failure leaves
    no file. Under DDP each rank writes its share to a temporary Parquet part, and rank 0 merges the
    parts in input order by the row index each batch carries, then removes them.

    Values are written as float64, which holds every float32 exactly: float32's shortest text
    ("3.355513e+07") reads back as another number (33555130, not 33555128) in a float64 CSV reader.

    With ``interval`` (a level, e.g. 0.95) each target's column is followed by ``<target>_mean_lower``,
    ``_mean_upper`` (the mean's confidence interval) and ``_lower``, ``_upper`` (a new observation's
    prediction interval), statsmodels' ``get_prediction(x).summary_frame(alpha=1 − level)``, from the
    covariance the exact solver stored in the checkpoint (``linreg.lstsq.robust``).
    """

    def __init__(
        self,
        output: str | Path,
        target_names: list[str],
        ids: np.ndarray | None = None,
        id_column: str | None = None,
        overwrite: bool = False,
        interval: float | None = None,
    ) -> None:
        super().__init__(write_interval="batch")
        self.output, self.target_names = Path(output), target_names
        self.level = interval
        self._covariance: dict[str, Any] | None = None
        parts = ("", "_mean_lower", "_mean_upper", "_lower", "_upper") if interval is not None else ("",)
        self.columns = [f"{t}{part}" for t in target_names for part in parts]  # the values' columns, in order
        self.ids, self.id_column, self.overwrite = ids, id_column, overwrite
        self._out: _TableFile | None = None
        self._part: _TableFile | None = None
        self._id_type: Any = None
        self._stopped_by: str | None = None
        self._running: L.Trainer | None = None
        self._previous: dict[int, Any] = {}

    def _part_path(self, rank: int) -> Path:
        return self.output.parent / f".{self.output.name}.part{rank}.parquet.tmp"

    @override
    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.output.exists() and not self.overwrite:
            raise LinRegError(f"{self.output} already exists; pass --overwrite true to replace it")
        if self.level is not None:
            self._covariance = stored_covariance(pl_module)
        if trainer.world_size > 1:
            self._part = _TableFile(self._part_path(trainer.global_rank), ".parquet")
        else:
            self._out = _TableFile(self.output, self.output.suffix.lower())
        self._next, self._rows, self._existed = 0, 0, self.output.exists()
        self._stopped_by, self._running = None, trainer
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}

    def _on_signal(self, signum: int, frame: Any) -> None:
        """Only a flag: the next batch stops (a second Ctrl-C at once); the output is never half written."""
        if self._stopped_by is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self._stopped_by = "Ctrl-C" if signum == signal.SIGINT else "SIGTERM"
        launcher = self._running.strategy.launcher if self._running is not None else None
        if launcher is not None and hasattr(launcher, "kill"):
            launcher.kill(signum)  # the DDP processes Lightning started, if any

    def _restore_signals(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    @override
    def on_predict_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        if self._stopped_by is not None:
            raise PredictionStopped(self._stopped_by, self._rows, _expected_rows(trainer), self.output, self._existed)

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
            raise LinRegError("the model produced non-finite predictions; no output written")
        self._rows += len(index)
        if self._covariance is not None and self.level is not None:
            x = np.concatenate([view["x"].detach().double().cpu().numpy() for view in batch])
            bounds = interval_columns(self._covariance, x, pred, self.level)
            pred = np.stack([pred] + [bounds[key] for key in ("mean_lower", "mean_upper", "lower", "upper")], axis=2)
            pred = pred.reshape(len(index), len(self.columns))  # per target: its prediction, then its four bounds
        if self._part is not None:
            self._part.write(self._columns(index, pred, with_index=True))
            return
        self._check_order(index)
        assert self._out is not None  # on_predict_start opened it
        self._out.write(self._columns(index, pred))

    def _check_order(self, index: np.ndarray) -> None:
        if not np.array_equal(index, np.arange(self._next, self._next + len(index))):
            raise LinRegError("prediction rows came back out of order or duplicated; no output written")
        self._next += len(index)

    def _columns(self, index: np.ndarray, pred: np.ndarray, with_index: bool = False) -> dict[str, Any]:
        columns: dict[str, Any] = {"__index__": index} if with_index else {}
        if self.ids is not None and not with_index:
            import pyarrow as pa

            if self._id_type is None:  # from the whole column: a first batch of missing ids would say "null"
                self._id_type = pa.array(self.ids, from_pandas=True).type
            columns[str(self.id_column)] = pa.array(self.ids[index], type=self._id_type, from_pandas=True)
        columns |= {name: pred[:, j] for j, name in enumerate(self.columns)}
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
        self._restore_signals()
        if self._stopped_by is not None:  # a signal during the last batch: the run was still stopped
            raise PredictionStopped(self._stopped_by, self._rows, _expected_rows(trainer), self.output, self._existed)
        rows = self._next
        if rows != _expected_rows(trainer):
            raise LinRegError(f"predictions for {rows} of {_expected_rows(trainer)} rows; no output written")
        assert self._out is not None  # on_predict_start opened it
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
                        raise LinRegError("prediction rows came back incomplete or duplicated; no output written")
                    break
                index, table = heads[owner]
                run = int(np.argmax(index != np.arange(self._next, self._next + len(index)))) or len(index)
                pred = np.column_stack([table.column(t).to_numpy() for t in self.columns])[:run]
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
        self._restore_signals()
        for file in (self._out, self._part):
            if file is not None:
                file.discard()
        self._out = self._part = None

    @override
    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._restore_signals()
        self._running = None


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
                    csv.writer(header, lineterminator="\n").writerow(table.column_names)  # LF, as pyarrow
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
            raise LinRegError("no predictions were made; no output written")
        with writing(self.path):
            publish(self.tmp, self.path)

    def discard(self) -> None:
        """Remove the temporary file, whatever state a failure left its writer in."""
        try:
            self.close()
        except LinRegError:
            pass  # the failure that brought us here has been reported already
        finally:
            self.tmp.unlink(missing_ok=True)
