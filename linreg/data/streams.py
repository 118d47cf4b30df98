"""Tables larger than memory: Parquet files, folders and globs, and CSV (also .csv.gz), read by row range.

pyarrow reads only the columns asked for, and Parquet footers give every file's and row group's row
count without reading data, so a range of rows maps to a few row groups: each DDP rank reads exactly
its part of each batch, no row padded or repeated. CSV has no such index: it is read front to back,
so a streamed CSV serves rows in file order only (shuffled epochs need Parquet).

Never imports Lightning; ``tables.read_table`` decides what streams.
"""

from __future__ import annotations

import bisect
import glob
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from linreg.errors import LinRegError

PARQUET = (".parquet", ".pq")
CSV = (".csv", ".csv.gz")
OPEN_FILES = 16  # Parquet files kept open at once
CSV_BLOCK = 1 << 22  # bytes of CSV text per block read: about 100,000 rows of 30 numbers


def _kind(path: str) -> str | None:
    name = path.lower()
    if name.endswith(PARQUET):
        return "parquet"
    if name.endswith(CSV):
        return "csv"
    return None


def expand(path: str) -> list[str]:
    """The files of a table: a file, every Parquet/CSV file under a folder, or a glob's matches, sorted."""
    if any(ch in path for ch in "*?["):
        files = sorted(glob.glob(path, recursive=True))
        where = f"the pattern {path!r}"
    elif os.path.isdir(path):
        # Like pyarrow: no part of the path under the folder may start with "." or "_" (.ipynb_checkpoints,
        # _temporary, _SUCCESS), or a stray copy would be read as more rows.
        files = sorted(
            str(p)
            for p in Path(path).rglob("*")
            if p.is_file() and not any(part.startswith((".", "_")) for part in p.relative_to(path).parts)
        )
        where = f"the folder {path}"
    else:
        return [path]
    files = [f for f in files if _kind(f)]
    if not files:
        raise LinRegError(f"{where} holds no .parquet or .csv files")
    kinds = {_kind(f) for f in files}
    if len(kinds) > 1:
        raise LinRegError(f"{where} mixes Parquet and CSV files; give one kind")
    return files


def _bounded_memory() -> None:
    """Hand freed batch memory back to the system, so resident memory follows a batch, not the table.

    pyarrow's default pool (jemalloc or mimalloc) keeps freed row groups cached, and glibc raises its
    mmap threshold after the first large free, after which batch-sized blocks come from a heap that
    never shrinks: together they made a 300 MiB table cost 60-110 MiB more peak memory than a 15 MiB
    one (measured). The system pool and a fixed 1 MiB mmap threshold bring that to about 40 MiB.
    """
    import ctypes

    import pyarrow as pa

    pa.set_memory_pool(pa.system_memory_pool())
    try:
        ctypes.CDLL("libc.so.6").mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD: glibc only; elsewhere a no-op
    except (OSError, AttributeError):
        pass


class Source:
    """One streamed table: its files in order, their columns, and (once counted) their rows."""

    def __init__(self, path: str) -> None:
        import pyarrow as pa

        _bounded_memory()

        self.path, self.files = path, expand(path)
        self.kind = _kind(self.files[0])
        self._pa = pa
        self._open: dict[int, Any] = {}  # a few open Parquet files; a folder may hold more than the fd limit
        if self.kind == "parquet":
            import pyarrow.parquet as pq

            metas = []
            for f in self.files:  # footers only: row counts and schemas, without reading data
                try:
                    metas.append(pq.read_metadata(f))
                except Exception as exc:
                    raise LinRegError(f"{f}: cannot read as Parquet: {reason(exc)}") from exc
            schemas = [m.schema.to_arrow_schema() for m in metas]
            self.schema = schemas[0]
            for f, schema in zip(self.files, schemas):
                if schema.names != self.schema.names:
                    raise LinRegError(f"{f}: columns {schema.names} differ from {self.files[0]}'s {self.schema.names}")
            self._schemas = schemas
            self.groups = [[m.row_group(i).num_rows for i in range(m.num_row_groups)] for m in metas]
            self.counts: list[int] | None = [sum(g) for g in self.groups]
        else:
            # Types from the first part with rows: a header-only part types every column null.
            self.schema = next((s for s in map(self._csv_schema, self.files) if _typed(s)), None)
            self.schema = self.schema or self._csv_schema(self.files[0])
            self._schemas = [self.schema]
            self.counts = None  # known after the first pass (``check``)
        self.columns = list(self.schema.names)
        duplicated = sorted({c for c in self.columns if self.columns.count(c) > 1})
        if duplicated:
            raise LinRegError(f"{self.files[0]}: duplicate column names {duplicated}")

    def parquet(self, i: int) -> Any:
        """File ``i`` opened for reading; at most ``OPEN_FILES`` stay open."""
        import pyarrow.parquet as pq

        if i not in self._open:
            if len(self._open) >= OPEN_FILES:
                self._open.pop(next(iter(self._open))).close()
            self._open[i] = pq.ParquetFile(self.files[i])
        return self._open[i]

    def read_group(self, file: int, group: int, names: Sequence[str]) -> Any:
        """Row group ``group`` of file ``file`` as an Arrow table; a failure (a part changed or damaged since
        it was checked) is one line naming the file, in training as in the check."""
        try:
            # One thread: pyarrow's own threads decoded a streamed epoch 10-15% faster on two cores, but a
            # 300 MiB table's fit then peaked 20-40 MiB higher, near the 96 MiB bound (measured).
            return self.parquet(file).read_row_group(group, columns=list(names), use_threads=False)
        except Exception as exc:
            raise LinRegError(f"{self.files[file]}: cannot read: {reason(exc)}") from exc

    def _csv_schema(self, file: str) -> Any:
        import pyarrow.csv as pc

        try:
            with pc.open_csv(file, read_options=pc.ReadOptions(block_size=1 << 16)) as reader:
                return reader.schema
        except Exception as exc:
            raise LinRegError(f"{file}: cannot read as CSV: {reason(exc)}") from exc

    @property
    def n_rows(self) -> int:
        assert self.counts is not None, "count the rows first (check)"
        return sum(self.counts)

    def is_numeric(self, name: str) -> bool:
        t = self.schema.field(name).type
        pa = self._pa
        return pa.types.is_floating(t) or pa.types.is_integer(t) or pa.types.is_boolean(t)

    def stored_dtype(self, names: Sequence[str]) -> torch.dtype:
        pa = self._pa
        single = all(schema.field(n).type == pa.float32() for schema in self._schemas for n in names)
        return torch.float32 if single and self.kind == "parquet" else torch.float64

    # -- one pass: value checks (and, for CSV, the row counts) ----------------------------------------

    def check(self, names: Sequence[str], to_float32: bool) -> None:
        """Read every row of ``names`` once and name the first NaN, inf, text or (for float32 training)
        out-of-range value by file, column and 1-based row of that file."""
        counts = []
        for file, blocks in zip(self.files, self._blocks_per_file(names)):
            rows = 0
            for block in _named(file, blocks):
                check_finite(block, names, file, rows, to_float32)
                rows += len(block)
            counts.append(rows)
        if not sum(counts):
            raise LinRegError(f"{self.path}: no data rows (columns {self.columns}, but no rows under them)")
        self.counts = counts

    def _blocks_per_file(self, names: Sequence[str]) -> Iterator[Iterator[np.ndarray]]:
        for i, file in enumerate(self.files):
            if self.kind == "parquet":
                yield (_matrix(self.read_group(i, g, names), names) for g in range(len(self.groups[i])))
            else:
                yield self._csv_blocks(file, names)

    def _csv_blocks(self, file: str, names: Sequence[str]) -> Iterator[np.ndarray]:
        import pyarrow.csv as pc

        pa = self._pa
        convert = pc.ConvertOptions(include_columns=list(names), column_types={n: pa.float64() for n in names})
        rows = 0
        try:
            with pc.open_csv(file, read_options=pc.ReadOptions(block_size=CSV_BLOCK), convert_options=convert) as r:
                for batch in r:
                    rows += batch.num_rows
                    yield _matrix(batch, names)
        except pa.ArrowInvalid as exc:  # text in a number column: find where, to name it
            raise LinRegError(self._csv_text(file, names, rows) or f"{file}: {reason(exc)}") from exc

    def _csv_text(self, file: str, names: Sequence[str], skip: int) -> str | None:
        """The first cell after ``skip`` rows that is not a number, as a message naming file, column and row."""
        import pyarrow.csv as pc

        pa = self._pa
        convert = pc.ConvertOptions(include_columns=list(names), column_types={n: pa.string() for n in names})
        try:
            with pc.open_csv(file, read_options=pc.ReadOptions(block_size=CSV_BLOCK), convert_options=convert) as r:
                rows = 0
                for batch in r:
                    if rows + batch.num_rows > skip:
                        for j, name in enumerate(names):
                            for k, cell in enumerate(batch.column(j).to_pylist()):
                                if cell is not None and not _number(cell):
                                    return f"{file}: column {name!r} is not numeric (row {rows + k + 1}: {cell!r})"
                    rows += batch.num_rows
        except pa.ArrowException:  # not a text cell but a malformed file: the caller names the file
            return None
        return None

    def column(self, name: str) -> np.ndarray:
        """One whole column (an id column passed through to predictions), as the files hold it, as text
        when the parts disagree on its type."""
        import pyarrow.csv as pc

        pa = self._pa
        parts = []
        for i, file in enumerate(self.files):
            try:
                if self.kind == "parquet":
                    parts.append(self.parquet(i).read(columns=[name]).column(0))
                else:
                    convert = pc.ConvertOptions(include_columns=[name], column_types={name: pa.string()})
                    parts.append(pc.read_csv(file, convert_options=convert).column(0))
            except Exception as exc:
                raise LinRegError(f"{file}: cannot read column {name!r}: {reason(exc)}") from exc
        types = {p.type for p in parts}
        if len(types) > 1:
            parts = [p.cast(pa.string()) for p in parts]
        return pa.chunked_array(parts).to_numpy(zero_copy_only=False)

    # -- reading a range --------------------------------------------------------------------------

    def rows(self, names: Sequence[str], dtype: torch.dtype) -> StreamRows:
        return StreamRows(self, names, dtype)


class StreamRows:
    """Rows ``[start:stop]`` of a streamed table's columns as a tensor, read on demand.

    Parquet: the row groups that hold the range, the last one kept for the next range (consecutive
    batches usually share it), so memory stays at about a row group and a batch. CSV: read front to
    back, restarting only when asked for rows before the current position.
    """

    def __init__(self, source: Source, names: Sequence[str], dtype: torch.dtype) -> None:
        self.source, self.names, self.dtype = source, list(names), dtype
        self.shape = (source.n_rows, len(self.names))
        self._np = np.float32 if dtype == torch.float32 else np.float64
        self._starts = np.concatenate([[0], np.cumsum(source.counts)]).tolist()  # first row of each file
        self._cache: list[tuple[Any, int, list[np.ndarray]]] = []  # (key, first row, columns) of the last blocks
        self._csv: tuple[int, Iterator[np.ndarray], int] | None = None  # (file, blocks, next row) of the CSV scan
        self._decoded: _Decoded | None = None
        if source.kind == "parquet":
            self._group_starts = []  # global first row of each (file, row group), in order
            self._group_keys = []
            for i, (start, sizes) in enumerate(zip(self._starts, source.groups)):
                offset = start
                for g, size in enumerate(sizes):
                    self._group_starts.append(offset)
                    self._group_keys.append((i, g))
                    offset += size
            self._decoded = _Decoded(self.shape[0], len(self.names), self._np)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows: slice) -> Tensor:
        if not isinstance(rows, slice):
            raise LinRegError("streamed tables are read in row ranges; use --data.shuffle blocks or none")
        start, stop, _ = rows.indices(self.shape[0])
        if self._decoded is not None and stop > start:
            groups = range(self._group(start), self._group(stop - 1) + 1)
            if self._decoded.has(groups):
                return torch.from_numpy(self._decoded.view(start, stop))
        # Column-major (filled a column at a time, 100x faster than row-major from Arrow's columns);
        # torch's matmul takes the layout as it is. Copied straight from the blocks kept: converting
        # each row group to one array first cost a second copy and fresh pages (measured).
        out = np.empty((max(stop - start, 0), len(self.names)), dtype=self._np, order="F")
        row = start
        while row < stop:
            first, columns = self._block(row)
            take = min(stop, first + len(columns[0])) - row
            for j, column in enumerate(columns):
                out[row - start : row - start + take, j] = column[row - first : row - first + take]
            row += take
        return torch.from_numpy(out)

    def _block(self, row: int) -> tuple[int, list[np.ndarray]]:
        """A block of rows holding ``row``: (its first row, its columns)."""
        for cached in self._cache:
            if cached[1] <= row < cached[1] + len(cached[2][0]):
                return cached[1], cached[2]
        if self.source.kind == "parquet":
            k = self._group(row)
            table = self.source.read_group(*self._group_keys[k], self.names)
            # Arrow's own memory where it can (float columns without nulls): no copy until the batch.
            columns = [table.column(name).to_numpy(zero_copy_only=False) for name in self.names]
            self._keep((self._group_keys[k], self._group_starts[k], columns))
            self._decoded.put(k, self._group_starts[k], columns)
        else:
            file = bisect.bisect_right(self._starts, row) - 1
            if self._csv is None or self._csv[0] != file or self._csv[2] > row:
                self._csv = (file, self.source._csv_blocks(self.source.files[file], self.names), self._starts[file])
            _, blocks, first = self._csv
            while True:
                block = next(blocks)
                self._csv = (file, blocks, first + len(block))
                if row < first + len(block):
                    self._keep((None, first, list(block.T)))
                    break
                first += len(block)
        return self._cache[-1][1], self._cache[-1][2]

    def _group(self, row: int) -> int:
        """The index of the (file, row group) that holds ``row``."""
        return bisect.bisect_right(self._group_starts, row) - 1

    def _keep(self, block: tuple[Any, int, list[np.ndarray]]) -> None:
        """The last two blocks read: a batch that straddles two row groups reads each once."""
        self._cache = [*self._cache[-1:], block]

    def index_select(self, dim: int, index: Tensor) -> Tensor:
        raise LinRegError(
            f"{self.source.path}: a streamed table is read in row ranges; --data.shuffle rows would read it "
            "row by row: use --data.shuffle blocks (Parquet) or none"
        )


class _Decoded:
    """Parquet row groups decoded once, kept as plain rows in a temporary file, read back as
    memory-mapped views.

    Decoding is what a streamed epoch costs: 4.4-5 ms per 65,536-row group of 33 float32 columns
    here, against 1.5 ms for the training step on the same rows (measured). A group decoded a second
    time (a second epoch, or a batch straddling it) is written here, and from then on its rows come
    back as a view of the page cache: no decode, no copy, resident only while a batch uses them (the
    mapping goes with the view). A single pass (predict) never writes. The file is unlinked as it is
    made, so nothing is left behind, even after ``kill -9``. Not used when the temporary folder lacks
    twice the room it needs, and dropped if a write fails (a full disk): reads then decode as before.
    """

    def __init__(self, rows: int, width: int, dtype: Any) -> None:
        import shutil

        self.width, self.dtype = width, np.dtype(dtype)
        self.row_bytes = width * self.dtype.itemsize
        self.seen: set[int] = set()  # groups decoded once
        self.done: set[int] = set()  # groups in the file
        self.file: Any = None
        size = rows * self.row_bytes
        try:
            if hasattr(os, "pwrite") and shutil.disk_usage(tempfile.gettempdir()).free > 2 * size:
                self.file = tempfile.TemporaryFile(prefix="linreg-decoded-")
                os.ftruncate(self.file.fileno(), size)  # sparse: disk is used only as groups are written
        except OSError:
            self.file = None

    def has(self, groups: range) -> bool:
        return self.file is not None and all(k in self.done for k in groups)

    def put(self, k: int, first: int, columns: list[np.ndarray]) -> None:
        """Group ``k`` was decoded (its rows start at ``first``): write it the second time."""
        if self.file is None or k in self.done:
            return
        if k not in self.seen:
            self.seen.add(k)
            return
        block = np.empty((len(columns[0]), self.width), dtype=self.dtype)
        for j, column in enumerate(columns):
            block[:, j] = column
        data, offset = memoryview(block).cast("B"), first * self.row_bytes
        try:
            while data:
                written = os.pwrite(self.file.fileno(), data, offset)
                data, offset = data[written:], offset + written
        except OSError:
            self.file.close()
            self.file = None
            return
        self.done.add(k)

    def view(self, start: int, stop: int) -> np.ndarray:
        # "c": a private mapping, writable as torch wants, never written back to the file
        return np.memmap(
            self.file, self.dtype, mode="c", offset=start * self.row_bytes, shape=(stop - start, self.width)
        )


def check_finite(exact: np.ndarray, names: Sequence[str], source: str, offset: int, to_float32: bool) -> None:
    """Name the first NaN, inf (or, when the rows become float32, value beyond float32) by column and 1-based row.

    Shared by tables held whole (``tables``) and streamed ones: one rule, one message."""
    bad = ~np.isfinite(exact)
    if to_float32 and exact.dtype != np.float32:
        bad |= np.abs(np.where(bad, 0, exact)) > np.finfo(np.float32).max
    bad_rows, bad_cols = np.nonzero(bad)
    if bad_rows.size:
        r, c = int(bad_rows[0]), int(bad_cols[0])
        shown = exact[r, c]
        what = "too large for float32" if np.isfinite(shown) else str(shown)
        raise LinRegError(f"{source}: column {names[c]!r} row {offset + r + 1} is {what}")


def _named(file: str, blocks: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
    """Blocks of one file, with any failure to read or convert them (a missing column, text in a
    Parquet column, a ragged CSV row) as one line naming the file."""
    try:
        yield from blocks
    except LinRegError:
        raise
    except Exception as exc:
        raise LinRegError(f"{file}: cannot read: {reason(exc)}") from exc


def _typed(schema: Any) -> bool:
    import pyarrow as pa

    return not any(pa.types.is_null(t) for t in schema.types)


def _matrix(table: Any, names: Sequence[str]) -> np.ndarray:
    """Arrow columns as one n × len(names) float64 array, column-major (one conversion, a column at a
    time); nulls become NaN (named by ``check``)."""
    out = np.empty((table.num_rows, len(names)), dtype=np.float64, order="F")
    for j, name in enumerate(names):
        out[:, j] = table.column(name).to_numpy(zero_copy_only=False)
    return out


def _number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def reason(exc: BaseException) -> str:
    """An exception's first line, for a one-line error."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
