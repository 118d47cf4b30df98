"""The data side: tables in, contiguous batches out.

``LinRegData`` reads a CSV, Parquet or NPZ table (or takes tensors, or defaults to the tutorial's
four points), checks every value it will train on, splits it, and serves batches through
``Batches``: slices of contiguous tensors instead of per-row ``__getitem__`` plus collate, which is
what decides speed for a model this cheap.
"""

from __future__ import annotations

import itertools
import math
import mmap
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import lightning as L
import numpy as np
import pandas as pd
import torch
from torch import Tensor

from linreg.errors import LinregError
from linreg.reference import X_TEST_TUTORIAL, X_TUTORIAL, Y_TUTORIAL

Shuffle = Literal["blocks", "rows", "none"]
TABLE_SUFFIXES = (".csv", ".parquet", ".pq", ".npz", ".npy")


class Table:
    """A table's columns by name, whatever the file format; values are converted only when asked.

    CSV and Parquet come through pandas; NPZ arrays and memory-mapped ``.npy`` files stay numpy, so
    a large float32 table reaches training without a pandas copy (``.npy`` without reading it into
    memory at all).
    """

    def __init__(
        self,
        source: str,
        frame: pd.DataFrame | None = None,
        arrays: dict[str, tuple[np.ndarray, int]] | None = None,
        records: np.ndarray | None = None,
        implied_targets: Sequence[str] = (),
    ) -> None:
        self.source, self.frame, self.arrays, self.records = source, frame, arrays, records
        self.implied_targets = list(implied_targets)
        if frame is not None:
            self.columns = [str(c) for c in frame.columns]
            frame.columns = self.columns
            duplicated = sorted({c for c in self.columns if self.columns.count(c) > 1})
            if duplicated:
                raise LinregError(f"{source}: duplicate column names {duplicated}")
            self.n_rows = len(frame)
        elif arrays is not None:
            self.columns = list(arrays)
            self.n_rows = next(iter(arrays.values()))[0].shape[0] if arrays else 0
        else:
            assert records is not None
            self.columns = list(records.dtype.names)
            self.n_rows = records.shape[0]

    def _dtype(self, name: str) -> np.dtype:
        if self.frame is not None:
            return self.frame[name].dtype
        if self.arrays is not None:
            return self.arrays[name][0].dtype
        return self.records.dtype.fields[name][0]

    def is_numeric(self, name: str) -> bool:
        dtype = self._dtype(name)
        if getattr(dtype, "kind", "") == "c":  # complex would silently lose its imaginary part
            return False
        return pd.api.types.is_numeric_dtype(dtype) or pd.api.types.is_bool_dtype(dtype)

    def looks_numeric(self, name: str) -> bool:
        """A text column where some cells parse as numbers is a numeric column with bad cells, not a label."""
        if self.is_numeric(name):
            return True
        return self.frame is not None and bool(pd.to_numeric(self.frame[name], errors="coerce").notna().any())

    def column(self, name: str) -> np.ndarray:
        if self.frame is not None:
            return self.frame[name].to_numpy()
        if self.arrays is not None:
            array, i = self.arrays[name]
            return array[:, i]
        return np.asarray(self.records[name])

    def _check_columns(self, names: Sequence[str]) -> None:
        for name in names:
            if name not in self.columns:
                raise LinregError(f"{self.source}: no column {name!r}; columns are {self.columns}")
            if not self.is_numeric(name):
                where = ""
                if self.frame is not None:
                    series = self.frame[name]
                    bad = (pd.to_numeric(series, errors="coerce").isna() & series.notna()).to_numpy()
                    if bad.any():
                        row = int(np.flatnonzero(bad)[0])
                        where = f" (row {row + 1}: {series.iloc[row]!r})"
                raise LinregError(f"{self.source}: column {name!r} is not numeric{where}")

    def matrix(self, names: Sequence[str]) -> Tensor | RecordRows:
        """The columns as float32 rows, refusing anything that would train to NaN: text, NaN, inf."""
        names = list(names)
        self._check_columns(names)
        if self.records is not None:
            rows = RecordRows(self.records, names)
            for start in range(0, self.n_rows, CHUNK_ROWS):
                _check_finite(rows[start : start + CHUNK_ROWS].numpy(), names, self.source, start)
            return rows
        if self.arrays is not None:
            array, first = self.arrays[names[0]]
            idx = [self.arrays[n][1] for n in names]
            same = all(self.arrays[n][0] is array for n in names)
            if same and idx == list(range(first, first + len(names))):
                values = array[:, first : first + len(names)]  # a view when the columns are contiguous
            else:
                values = np.stack([self.column(n) for n in names], axis=1)
        else:
            values = self.frame[names].to_numpy(np.float64, na_value=np.nan)  # nullable <NA> → NaN, named below
        values = np.ascontiguousarray(values, dtype=np.float32) if values.dtype != np.float32 else values
        for start in range(0, values.shape[0], CHUNK_ROWS):
            _check_finite(
                values[start : start + CHUNK_ROWS],
                names,
                self.source,
                start,
                self.frame[names].iloc[start : start + CHUNK_ROWS].to_numpy(np.float64, na_value=np.nan)
                if self.frame is not None
                else None,
            )
        values = np.ascontiguousarray(values)
        return torch.from_numpy(values if values.flags.writeable else values.copy())


CHUNK_ROWS = 1 << 13  # small chunks: bigger temporaries stay cached by the allocator (measured)


def _check_finite(
    values: np.ndarray, names: Sequence[str], source: str, offset: int, original: np.ndarray | None = None
) -> None:
    """Name the first NaN, inf or float32 overflow by column and (1-based) row."""
    bad_rows, bad_cols = np.nonzero(~np.isfinite(values))
    if bad_rows.size:
        r, c = int(bad_rows[0]), int(bad_cols[0])
        shown = original[r, c] if original is not None else values[r, c]
        what = "too large for float32" if original is not None and np.isfinite(shown) else str(shown)
        raise LinregError(f"{source}: column {names[c]!r} row {offset + r + 1} is {what}")


class RecordRows:
    """Rows of a memory-mapped structured ``.npy`` as float32 tensors, read slice by slice on demand.

    Pages a slice touched are handed back to the kernel (``MADV_DONTNEED``) once copied out, so the
    process's resident memory stays at about one batch however large the file: a plain memory map
    would keep every page it ever read resident, and a pass over the file would cost its whole size.
    """

    def __init__(self, records: np.ndarray, names: Sequence[str]) -> None:
        self.records, self.names = records, list(names)
        self.shape = (records.shape[0], len(self.names))
        fields = records.dtype.fields
        # All-float32 packed records read as one 2-D view; anything else field by field.
        self._packed = all(
            fields[n][0] == np.float32 for n in records.dtype.names
        ) and records.dtype.itemsize == 4 * len(fields)
        self._cols = [records.dtype.names.index(n) for n in self.names]

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows: slice | np.ndarray) -> Tensor:
        chunk = self.records[rows]
        if self._packed:
            flat = np.asarray(chunk).view(np.float32).reshape(chunk.shape[0], len(self.records.dtype.names))
            out = np.ascontiguousarray(flat[:, self._cols])
        else:
            out = np.empty((chunk.shape[0], len(self.names)), dtype=np.float32)
            for j, name in enumerate(self.names):
                out[:, j] = chunk[name]
        if isinstance(rows, slice):
            self._release(*rows.indices(self.shape[0])[:2])
        return torch.from_numpy(out)

    def _release(self, start: int, stop: int) -> None:
        mapping = getattr(self.records, "_mmap", None)
        if mapping is None or not hasattr(mmap, "MADV_DONTNEED") or stop <= start:
            return
        base = self.records.offset % mmap.ALLOCATIONGRANULARITY  # where row 0 sits in the mapping
        lo = base + start * self.records.itemsize
        hi = min(base + stop * self.records.itemsize, len(mapping))
        lo -= lo % mmap.PAGESIZE
        mapping.madvise(mmap.MADV_DONTNEED, lo, hi - lo)

    def index_select(self, dim: int, index: Tensor) -> Tensor:
        """Rows in the given order (the per-row shuffle): random reads, so slow on disk."""
        return self[index.numpy()]


def read_table(path: str | Path) -> Table:
    """Open a table. Any failure to parse becomes a ``LinregError`` naming the file: a user's file is
    input, and input never surfaces as a raw pandas or numpy traceback."""
    p = Path(path)
    if not p.is_file():
        raise LinregError(f"{p}: no such file" if not p.exists() else f"{p}: not a file")
    suffix = p.suffix.lower()
    if suffix not in TABLE_SUFFIXES:
        raise LinregError(f"{p}: unsupported file type {suffix or '(none)'!r}; expected .csv, .parquet, .npz or .npy")
    try:
        if suffix == ".csv":
            frame = pd.read_csv(p)
        elif suffix == ".npz":
            return _read_npz(p)
        elif suffix == ".npy":
            return _read_npy(p)
        else:
            frame = pd.read_parquet(p)
    except LinregError:
        raise
    except Exception as exc:  # any parser failure on user input is a user error
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise LinregError(f"{p}: cannot read as {suffix[1:]}: {reason}") from exc
    if len(frame) == 0:
        raise LinregError(f"{p}: no data rows (columns {list(map(str, frame.columns))}, but no rows under them)")
    return Table(str(p), frame=frame, implied_targets=["y"] if "y" in frame.columns else [])


def _read_npz(p: Path) -> Table:
    with np.load(p, allow_pickle=False) as npz:
        if "X" not in npz.files:
            raise LinregError(f"{p}: an .npz needs an array named 'X' (n×d); found {sorted(npz.files)}")
        X = npz["X"]
        y = npz["y"] if "y" in npz.files else None
    X = X.reshape(-1, 1) if X.ndim == 1 else X
    if X.ndim != 2:
        raise LinregError(f"{p}: array 'X' must be 2-D (n×d), got shape {tuple(X.shape)}")
    names = ["x"] if X.shape[1] == 1 else [f"x{i}" for i in range(X.shape[1])]
    arrays = {name: (X, i) for i, name in enumerate(names)}
    targets: list[str] = []
    if y is not None:
        y = y.reshape(-1, 1) if y.ndim == 1 else y
        if y.ndim != 2 or y.shape[0] != X.shape[0]:
            raise LinregError(f"{p}: array 'y' must have {X.shape[0]} rows like 'X', got shape {tuple(y.shape)}")
        targets = ["y"] if y.shape[1] == 1 else [f"y{i}" for i in range(y.shape[1])]
        arrays.update({name: (y, i) for i, name in enumerate(targets)})
    return Table(str(p), arrays=arrays, implied_targets=targets)


def _read_npy(p: Path) -> Table:
    records = np.load(p, mmap_mode="r", allow_pickle=False)
    if records.dtype.names is None or records.ndim != 1:
        raise LinregError(
            f"{p}: an .npy table must be a 1-D structured array with one named field per column "
            f"(got dtype {records.dtype}, shape {records.shape})"
        )
    return Table(str(p), records=records, implied_targets=["y"] if "y" in records.dtype.names else [])


Rows = Tensor | RecordRows


def _mean_scale(x: Rows) -> tuple[Tensor, Tensor]:
    """Column means and standard deviations (population), chunk by chunk in float64; 0 becomes 1."""
    total = torch.zeros(x.shape[1], dtype=torch.float64)
    squares = torch.zeros(x.shape[1], dtype=torch.float64)
    for start in range(0, x.shape[0], CHUNK_ROWS):
        chunk = x[start : start + CHUNK_ROWS].double()
        total += chunk.sum(0)
        squares += (chunk * chunk).sum(0)
    mean = total / x.shape[0]
    std = (squares / x.shape[0] - mean * mean).clamp_min(0).sqrt()
    return mean.float(), torch.where(std > 0, std, torch.ones_like(std)).float()


class Batches:
    """Batches as contiguous slices, in a seeded order, sharded across distributed ranks.

    Shuffling schemes (``shuffle``):

    - ``"blocks"`` (default): each epoch visits the batch-sized contiguous blocks in a fresh order
      seeded by (seed, epoch). Every row once per epoch, every batch a free view, no copy of X ever;
      the trade-off is that a row always meets the same batch-mates, so a table sorted by something
      that matters should be shuffled once on disk, or trained with ``"rows"``.
    - ``"rows"``: an exact per-row shuffle each epoch, at the cost of a gather per batch (about ten
      epochs' worth of slicing at large batches, measured).
    - ``"none"``: rows in order, as the tutorial's loop.

    Lightning calls ``sampler.set_epoch(epoch)`` on every train loader each epoch, so the order
    depends only on (seed, epoch) and a resumed fit sees exactly the batches of a straight one.
    A fit stopped mid-epoch (Ctrl-C, SIGTERM) resumes mid-epoch: Lightning saves ``state_dict()``
    (the epoch and the groups handed out) in the checkpoint and, on resume, ``load_state_dict``
    makes that epoch skip the groups already trained on.

    Distributed: each global batch (what one process would take) is split into ``world_size``
    contiguous parts, one per rank, so every rank takes the same number of steps, no row is padded
    or repeated, and the module scales each rank's summed loss by world_size / rows-in-global-batch:
    DDP's gradient average is then exactly the gradient of the global batch mean.

    Groups: iteration yields lists of ``group`` consecutive batches, and the module runs one SGD
    update per batch inside one Lightning step. Lightning's own per-step work (about 0.4 ms here,
    more than an update at batch 4096) is then paid once per group; the updates, their order and
    the result are those of one batch per step.
    """

    batch_sampler = None  # Lightning inspects DataLoader-like objects for these two

    def __init__(
        self,
        x: Rows,
        y: Rows | None = None,
        batch_size: int | None = None,
        shuffle: Shuffle = "none",
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        with_index: bool = False,
        group: int = 1,
    ) -> None:
        self.x, self.y = x, y
        self.group = max(1, group)
        self.n = x.shape[0]
        self.batch_size = max(1, min(batch_size or self.n, self.n)) if self.n else 1
        self.shuffle, self.seed = shuffle, seed
        self.rank, self.world_size = rank, world_size
        self.with_index = with_index
        self.epoch = 0
        self.served = 0  # groups handed out in this epoch
        self._resume: dict[str, int] | None = None

    @property
    def sampler(self) -> Batches:
        """Where Lightning looks for ``set_epoch``."""
        return self

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self.served = epoch, 0

    @property
    def n_batches(self) -> int:
        return math.ceil(self.n / self.batch_size)

    def __len__(self) -> int:
        return math.ceil(self.n_batches / self.group)

    def state_dict(self) -> dict[str, Any]:
        """Where this epoch stands, and what its batch order depends on."""
        return {"epoch": self.epoch, "served": self.served, **self._order()}

    def _order(self) -> dict[str, Any]:
        keys = ("rows", "batch_size", "group", "shuffle", "seed")
        return dict(zip(keys, (self.n, self.batch_size, self.group, self.shuffle, self.seed)))

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved, now = {k: state.get(k) for k in self._order()}, self._order()
        if saved != now:
            differ = ", ".join(f"{k} {saved[k]!r} then, {now[k]!r} now" for k in now if saved[k] != now[k])
            raise LinregError(
                f"this checkpoint stopped in the middle of an epoch, and the rest of that epoch depends on the "
                f"training rows and their order ({differ}); resume it with the same --data settings "
                "(path, splits, seed, shuffle, batch_size, rows_per_step)"
            )
        self._resume = dict(state)

    def __iter__(self) -> Iterator[list[dict[str, Any]]]:
        skip, self._resume = self._resume, None
        self.served = skip["served"] if skip is not None and skip["epoch"] == self.epoch else 0
        views = self.batches(skip=self.served * self.group)
        while group := list(itertools.islice(views, self.group)):
            self.served += 1
            yield group

    def _generator(self) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)

    def batches(self, skip: int = 0) -> Iterator[dict[str, Any]]:
        """This rank's share of each batch of the epoch, in order, one dict per SGD update.

        ``skip`` leaves out the epoch's first batches (already trained on before a resume).
        """
        n_batches, b = self.n_batches, self.batch_size
        order = range(n_batches)
        if self.shuffle == "blocks" and n_batches > 1:
            order = torch.randperm(n_batches, generator=self._generator()).tolist()
        perm = torch.randperm(self.n, generator=self._generator()) if self.shuffle == "rows" else None
        for block in order[skip:]:
            start, stop = block * b, min((block + 1) * b, self.n)
            per_rank = math.ceil((stop - start) / self.world_size)
            lo = min(start + self.rank * per_rank, stop)
            hi = min(lo + per_rank, stop)
            if perm is not None:
                idx = perm[lo:hi]
                batch = {"x": self.x.index_select(0, idx), "n": stop - start}
                if self.y is not None:
                    batch["y"] = self.y.index_select(0, idx)
            else:
                idx = None
                batch = {"x": self.x[lo:hi], "n": stop - start}
                if self.y is not None:
                    batch["y"] = self.y[lo:hi]
            if self.with_index:
                batch["index"] = idx if idx is not None else torch.arange(lo, hi)
            yield batch


def _counts_steps(trainer: L.Trainer) -> bool:
    """Whether a trainer limit counts training steps (which are groups of updates, see ``Batches``)."""
    limit, interval = trainer.limit_train_batches, trainer.val_check_interval
    return trainer.max_steps != -1 or limit not in (None, 1.0) or (isinstance(interval, int) and interval != 1)


class LinRegData(L.LightningDataModule):
    """Serves X/Y for fit, validate, test and predict.

    With no ``path`` it serves the tutorial's X=[[1],[2],[3],[4]], Y=2X and predicts X_test=[[5]].
    The table is read when the CLI first asks for the feature names (to size the model), so a bad
    file fails before any trainer, log folder or checkpoint exists.

    Args:
        path: CSV (with a header), Parquet, or NPZ with arrays ``X`` (n×d) and ``y`` (n or n×k).
        target: target column, or a list of them for multi-output regression (default: ``y``).
        features: feature columns (default: every other numeric column).
        id_column: a column passed through to prediction files, never used as a feature.
        val_path: a separate validation table (instead of ``val_fraction``).
        test_path: a separate test table (instead of ``test_fraction``).
        val_fraction: share of rows held out for validation; 0 means none.
        test_fraction: share of rows held out for testing; 0 means none.
        seed: seeds the split and the shuffling, so a run is reproducible and resumable.
        batch_size: rows per optimizer step; default: all training rows (the tutorial's full batch).
        shuffle: ``blocks`` (default), ``rows`` or ``none``; see ``Batches``.
        standardize: standardize features with training-split statistics kept in the checkpoint.
        standardize_target: standardize targets too (only with ``standardize``).
        rows_per_step: consecutive batches are grouped into one Lightning step until they hold about
            this many rows (see ``Batches``); 0 means one batch per step. Results do not change.
    """

    def __init__(
        self,
        path: str | None = None,
        target: str | list[str] | None = None,
        features: list[str] | None = None,
        id_column: str | None = None,
        val_path: str | None = None,
        test_path: str | None = None,
        val_fraction: float = 0.0,
        test_fraction: float = 0.0,
        seed: int = 0,
        batch_size: int | None = None,
        shuffle: Shuffle = "blocks",
        standardize: bool = False,
        standardize_target: bool = False,
        rows_per_step: int = 262_144,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        for name, frac in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
            if not 0.0 <= frac < 1.0:
                raise LinregError(f"--data.{name} must be in [0, 1), got {frac}")
        if val_fraction + test_fraction >= 1.0:
            raise LinregError("--data.val_fraction + --data.test_fraction must leave training rows (sum < 1)")
        if val_path and val_fraction:
            raise LinregError("give --data.val_path or --data.val_fraction, not both")
        if test_path and test_fraction:
            raise LinregError("give --data.test_path or --data.test_fraction, not both")
        if batch_size is not None and batch_size < 1:
            raise LinregError(f"--data.batch_size must be at least 1, got {batch_size}")
        if standardize_target and not standardize:
            raise LinregError("--data.standardize_target needs --data.standardize true")
        self.path, self.id_column = path, id_column
        self.standardize, self.standardize_target = standardize, standardize_target
        self._target = [target] if isinstance(target, str) else (list(target) if target else None)
        self._features = list(features) if features else None
        self._table: Table | None = None
        self._tensors: tuple[Tensor, Tensor | None] | None = None
        self._splits: dict[str, tuple[Rows, Rows | None]] = {}
        self.scaling: tuple[Tensor, Tensor, Tensor, Tensor] | None = None

    @classmethod
    def from_tensors(cls, x: Tensor, y: Tensor | None = None, **kwargs: Any) -> LinRegData:
        """Data from Python: ``x`` (n×d), ``y`` (n or n×k); columns are named x0.. and y0.. (or x, y)."""
        dm = cls(**kwargs)
        x = x.reshape(-1, 1) if x.ndim == 1 else x
        if y is not None:
            y = y.reshape(-1, 1) if y.ndim == 1 else y
        for name, t in (("x", x), ("y", y)):
            if t is not None and not torch.isfinite(t).all():
                raise LinregError(f"from_tensors: {name} holds NaN or inf")
        dm._tensors = (x.float().contiguous(), None if y is None else y.float().contiguous())
        dm._features = ["x"] if x.shape[1] == 1 else [f"x{i}" for i in range(x.shape[1])]
        k = 1 if y is None else y.shape[1]
        dm._target = ["y"] if k == 1 else [f"y{i}" for i in range(k)]
        return dm

    # -- names, resolved from the table header (what the CLI links into the model) --------------

    def _load(self) -> Table | None:
        if self.path is not None and self._table is None:
            self._table = read_table(self.path)
            self._target = self._target or self._table.implied_targets or None
            if self._target is None:
                raise LinregError(
                    f"{self.path}: no column named 'y'; name the target with --data.target "
                    f"(columns are {self._table.columns})"
                )
        return self._table

    @property
    def target_names(self) -> list[str]:
        self._load()
        return self._target or ["y"]

    @property
    def feature_names(self) -> list[str]:
        table = self._load()
        if self._features is None:
            if table is None:
                return ["x"]
            skip = set(self.target_names) | {self.id_column}
            self._features = [c for c in table.columns if c not in skip and table.looks_numeric(c)]
            if not self._features:
                raise LinregError(f"{self.path}: no numeric feature columns besides the target {self.target_names}")
        overlap = sorted(set(self._features) & set(self.target_names))
        if overlap:
            raise LinregError(f"columns {overlap} are both features and targets")
        return self._features

    @property
    def in_features(self) -> int:
        return len(self.feature_names)

    @property
    def out_features(self) -> int:
        return len(self.target_names)

    # -- tensors ---------------------------------------------------------------------------------

    def _xy(self, table: Table, need_target: bool) -> tuple[Rows, Rows | None]:
        x = table.matrix(self.feature_names)
        if not need_target:
            return x, None
        missing = [t for t in self.target_names if t not in table.columns]
        if missing:
            raise LinregError(f"{table.source}: no target column(s) {missing}; columns are {table.columns}")
        return x, table.matrix(self.target_names)

    def _all(self, need_target: bool) -> tuple[Rows, Rows | None]:
        if self._tensors is not None:
            x, y = self._tensors
            if need_target and y is None:
                raise LinregError("from_tensors: this stage needs targets; pass y")
            return x, y
        table = self._load()
        if table is None:
            return X_TUTORIAL.clone(), Y_TUTORIAL.clone()
        return self._xy(table, need_target)

    def _split(self) -> None:
        """Fractions take a seeded random subset; training rows keep their file order."""
        x, y = self._all(need_target=True)
        n = x.shape[0]
        hp = self.hparams
        n_test = round(hp.test_fraction * n)
        n_val = round(hp.val_fraction * n)
        for name, frac, count in (
            ("test_fraction", hp.test_fraction, n_test),
            ("val_fraction", hp.val_fraction, n_val),
        ):
            if frac > 0 and count == 0:
                raise LinregError(f"--data.{name} {frac} of {n} rows is no row at all: too few rows for this split")
        if n - n_test - n_val < 1:
            raise LinregError(f"{self.path}: {n} rows leave no training rows after the requested splits")
        if (n_test or n_val) and isinstance(x, RecordRows):
            raise LinregError(
                f"{self.path}: a random split would read the whole .npy into memory; "
                "give --data.val_path / --data.test_path instead of fractions"
            )
        if n_test or n_val:
            perm = torch.randperm(n, generator=torch.Generator().manual_seed(hp.seed))
            test_idx, val_idx = perm[:n_test].sort().values, perm[n_test : n_test + n_val].sort().values
            train_idx = perm[n_test + n_val :].sort().values
            self._splits["test"] = (x[test_idx], y[test_idx])
            self._splits["val"] = (x[val_idx], y[val_idx])
            x, y = x[train_idx], y[train_idx]
        for key, path in (("val", hp.val_path), ("test", hp.test_path)):
            if path:
                self._splits[key] = self._xy(read_table(path), need_target=True)
        self._splits["train"] = (x, y)
        if hp.standardize:
            x_mean, x_scale = _mean_scale(x)
            y_mean, y_scale = (
                _mean_scale(y) if hp.standardize_target else (torch.zeros(y.shape[1]), torch.ones(y.shape[1]))
            )
            self.scaling = (x_mean, x_scale, y_mean, y_scale)

    def check(self, stage: str) -> None:
        """Read and validate everything ``stage`` needs, so bad input fails before any run starts."""
        if stage == "predict":
            self._predict_x()
            return
        if "train" not in self._splits:
            self._split()
        if stage in ("validate", "test"):
            key = "val" if stage == "validate" else "test"
            if key not in self._splits:
                # Without a held-out split, validate/test evaluate on the whole table.
                self._splits[key] = self._all(need_target=True)

    def _predict_x(self) -> Rows:
        if "predict" not in self._splits:
            if self._tensors is not None:
                x = self._tensors[0]
            elif self.path is None:
                x = X_TEST_TUTORIAL.clone()
            else:
                table = self._load()
                allowed = set(self.feature_names) | set(self.target_names) | {self.id_column}
                missing = [c for c in self.feature_names if c not in table.columns]
                extra = [c for c in table.columns if c not in allowed]
                if missing or extra:
                    parts = [
                        f"missing feature column(s) {missing}" if missing else "",
                        f"unexpected column(s) {extra} (pass an id column with --data.id_column)" if extra else "",
                    ]
                    raise LinregError(
                        f"{self.path}: "
                        + "; ".join(p for p in parts if p)
                        + f"; the model expects features {self.feature_names}"
                    )
                x = table.matrix(self.feature_names)
            self._splits["predict"] = (x, None)
        return self._splits["predict"][0]

    @property
    def predict_ids(self) -> np.ndarray | None:
        table = self._load()
        if table is None or self.id_column is None:
            return None
        if self.id_column not in table.columns:
            raise LinregError(f"{self.path}: no id column {self.id_column!r}; columns are {table.columns}")
        return table.column(self.id_column)

    # -- Lightning hooks -------------------------------------------------------------------------

    def setup(self, stage: str) -> None:
        self.check(stage)

    def _rank(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def _batches(self, key: str, shuffle: Shuffle = "none", with_index: bool = False) -> Batches | list:
        if key not in self._splits:
            return []
        x, y = self._splits[key]
        rank, world = self._rank()
        hp = self.hparams
        group = max(1, hp.rows_per_step // (hp.batch_size or x.shape[0] or 1)) if key == "train" else 1
        if isinstance(x, RecordRows):
            group = 1  # a group would hold its rows in memory at once; out of core, one batch at a time
        if self.trainer is not None and _counts_steps(self.trainer):
            group = 1  # the user counts SGD updates: one per Lightning step, so Lightning counts them too
        return Batches(x, y, hp.batch_size, shuffle, hp.seed, rank, world, with_index, group)

    def train_dataloader(self) -> Batches | list:
        return self._batches("train", shuffle=self.hparams.shuffle)

    def val_dataloader(self) -> Batches | list:
        return self._batches("val")

    def test_dataloader(self) -> Batches | list:
        return self._batches("test")

    def predict_dataloader(self) -> Batches | list:
        return self._batches("predict", with_index=True)
