"""Tables larger than memory: Parquet files, folders and globs, and CSV (also .csv.gz), read by row range.

pyarrow reads only the columns asked for, and Parquet footers give every file's and row group's row
count without reading data, so a range of rows maps to a few row groups: each DDP rank reads exactly
its part of each batch, no row padded or repeated. CSV has no such index: it is read front to back,
so a streamed CSV serves rows in file order only (shuffled epochs need Parquet).

Never imports Lightning; ``tables.read_table`` decides what streams.
"""

from __future__ import annotations

import bisect
import fnmatch
import glob
import os
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

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


def _wildcard(path: str) -> bool:
    return any(ch in path for ch in "*?[")


def expand(path: str) -> list[str]:
    """The files of a table: a file, every Parquet/CSV file under a folder, or a glob's matches, sorted.

    A path that exists is that file or folder, glob characters in its name or not (``data[2020].csv``):
    only a path that does not exist is a pattern. Links are followed, but every real folder is walked
    once and every real file counted once, so a link back to a parent (a loop) adds no rows.
    """
    if os.path.isdir(path):
        # Like pyarrow: no part of the path under the folder may start with "." or "_" (.ipynb_checkpoints,
        # _temporary, _SUCCESS), or a stray copy would be read as more rows.
        files = [f for f, parts in _walk(path) if not any(part.startswith((".", "_")) for part in parts)]
        where = f"the folder {path}"
    elif os.path.exists(path) or not _wildcard(path):
        return [path]
    else:
        files = _glob(path)
        where = f"the pattern {path!r}"
    files = _once(f for f in files if _kind(f) and os.path.isfile(f))
    if not files:
        raise LinRegError(f"{where} holds no .parquet or .csv files")
    kinds = {_kind(f) for f in files}
    if len(kinds) > 1:
        raise LinRegError(f"{where} mixes Parquet and CSV files; give one kind")
    return files


def _walk(root: str) -> Iterator[tuple[str, tuple[str, ...]]]:
    """Every file under ``root`` with its path components below it, following links, each real folder
    once (its real path first, where it is reached both ways at one level)."""
    seen: set[str] = set()
    for folder, dirs, names in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs.sort(key=lambda d: (os.path.islink(os.path.join(folder, d)), d))
        rel = os.path.relpath(folder, root)
        parts = () if rel == os.curdir else tuple(Path(rel).parts)
        for name in names:
            yield os.path.join(folder, name), (*parts, name)


def _glob(pattern: str) -> list[str]:
    """``glob.glob(pattern, recursive=True)``, except that ``**`` walks each real folder once: glob's own
    follows a link to a parent round and round, one more copy of every file each time."""
    parts = Path(pattern).parts
    if "**" not in parts:
        return glob.glob(pattern)  # a fixed depth: a loop cannot repeat a file without end
    first = parts.index("**")
    above = os.path.join(*parts[:first]) if first else ""
    roots = glob.glob(above) if _wildcard(above) else [above]  # the folders above ``**``: a fixed depth too
    return [
        os.path.join(root, *names)
        for root in roots
        for _, names in _walk(root or os.curdir)
        if _matches(parts[first:], names)
    ]


def _matches(pattern: Sequence[str], names: Sequence[str]) -> bool:
    """Path components against glob components, as ``glob`` matches them: ``**`` any number of
    folders, and a name starting with "." only where the pattern's component does too."""
    if not pattern:
        return not names
    head, rest = pattern[0], pattern[1:]
    if head == "**":
        return any(_matches(rest, names[i:]) for i in range(len(names) + 1) if not _hidden(names[:i]))
    if not names or (names[0].startswith(".") and not head.startswith(".")):
        return False
    return fnmatch.fnmatchcase(names[0], head) and _matches(rest, names[1:])


def _hidden(names: Sequence[str]) -> bool:
    return any(name.startswith(".") for name in names)


def _once(files: Iterator[str] | list[str]) -> list[str]:
    """Each real file once, under its shortest name (a loop's longer names are the same file), sorted."""
    kept: dict[str, str] = {}
    for file in sorted(files, key=lambda f: (f.count(os.sep), f)):
        kept.setdefault(os.path.realpath(file), file)
    return sorted(kept.values())


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
        self._stats = {}  # each file as listed: see ``verify``
        for f in self.files:
            try:
                self._stats[f] = _stat(f)
            except OSError as exc:
                raise LinRegError(f"{f}: cannot read: {exc.strerror}") from exc
        self.kind = _kind(self.files[0])
        self._pa = pa
        self._open: dict[int, Any] = {}  # a few open Parquet files; a folder may hold more than the fd limit
        self._csv_names: dict[str, Any] = {}  # CSV read options naming the columns, where the header has gaps
        self.keep_decoded = False  # keep what ``check`` decodes for later passes (see ``check``)
        self._kept: dict[tuple[str, ...], _Decoded] = {}  # what it kept, by columns
        index: list[str] = []
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
            # A pandas index (to_parquet of a filtered frame) is the frame's index in memory, not a column.
            index = [c for c in (self.schema.pandas_metadata or {}).get("index_columns", []) if isinstance(c, str)]
            for f, schema in zip(self.files, schemas):
                if schema.names != self.schema.names:
                    raise LinRegError(f"{f}: columns {schema.names} differ from {self.files[0]}'s {self.schema.names}")
            self._schemas = schemas
            self.groups = [[m.row_group(i).num_rows for i in range(m.num_row_groups)] for m in metas]
            self.counts: list[int] | None = [sum(g) for g in self.groups]
        else:
            header = self._csv_schema(self.files[0]).names
            named = [name or f"Unnamed: {i}" for i, name in enumerate(header)]
            if named != header:  # an empty header cell (to_csv's index) gets pandas' name, as in memory
                self._csv_names = {"column_names": named, "skip_rows": 1}
            # Types from the first part with rows: a header-only part types every column null.
            self.schema = next((s for s in map(self._csv_schema, self.files) if _typed(s)), None)
            self.schema = self.schema or self._csv_schema(self.files[0])
            self._schemas = [self.schema]
            self.counts = None  # known after the first pass (``check``)
        self.columns = [c for c in self.schema.names if c not in index]
        duplicated = sorted({c for c in self.columns if self.columns.count(c) > 1})
        if duplicated:
            raise LinRegError(f"{self.files[0]}: duplicate column names {duplicated}")

    def parquet(self, i: int) -> Any:
        """File ``i`` opened for reading; at most ``OPEN_FILES`` stay open."""
        import pyarrow.parquet as pq

        if i not in self._open:
            self.verify(self.files[i])
            if len(self._open) >= OPEN_FILES:
                self._open.pop(next(iter(self._open))).close()
            self._open[i] = pq.ParquetFile(self.files[i])
        return self._open[i]

    def read_group(self, file: int, group: int, names: Sequence[str], threads: bool = False) -> Any:
        """Row group ``group`` of file ``file`` as an Arrow table; a failure (a part changed or damaged since
        it was checked) is one line naming the file, in training as in the check.

        One thread unless asked (a table read whole): pyarrow's own threads decoded a streamed epoch 10-15%
        faster on two cores, but a 300 MiB table's fit then peaked 20-40 MiB higher, near the 96 MiB bound
        (measured)."""
        self.verify(self.files[file])
        try:
            return self.parquet(file).read_row_group(group, columns=list(names), use_threads=threads)
        except Exception as exc:
            self.verify(self.files[file])  # a part rewritten while open: say so, not what the decoder saw
            raise LinRegError(f"{self.files[file]}: cannot read: {reason(exc)}") from exc

    def verify(self, file: str) -> None:
        """Refuse a part deleted, truncated or rewritten since it was listed: the rows checked, counted
        and trained on, and the fingerprint a checkpoint keeps, must all be of one table."""
        then = self._stats[file]
        try:
            now = _stat(file)
        except OSError as exc:
            raise LinRegError(
                f"{file}: cannot read: it vanished since linreg listed it ({exc.strerror}); leave the table as it is "
                "until linreg has read it"
            ) from exc
        if now != then:
            what = f"size {then[0]} then, {now[0]} now" if now[0] != then[0] else "rewritten, same size"
            raise LinRegError(
                f"{file}: cannot read: it changed since linreg checked it ({what}); leave the table as it is "
                "until linreg has read it"
            )

    def verify_all(self) -> None:
        for file in self.files:
            self.verify(file)

    def _csv_options(self, block_size: int) -> Any:
        import pyarrow.csv as pc

        return pc.ReadOptions(block_size=block_size, **self._csv_names)

    def _csv_schema(self, file: str) -> Any:
        import pyarrow.csv as pc

        try:
            with pc.open_csv(file, read_options=self._csv_options(1 << 16)) as reader:
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

    def is_floating(self, name: str) -> bool:
        return all(self._pa.types.is_floating(schema.field(name).type) for schema in self._schemas)

    def stored_dtype(self, names: Sequence[str]) -> torch.dtype:
        pa = self._pa
        single = all(schema.field(n).type == pa.float32() for schema in self._schemas for n in names)
        return torch.float32 if single and self.kind == "parquet" else torch.float64

    # -- one pass: value checks (and, for CSV, the row counts) ----------------------------------------

    def check(self, names: Sequence[str], to_float32: bool) -> None:
        """Read every row of ``names`` once and name the first NaN, inf, text or (for float32 training)
        out-of-range value by file, column and 1-based row of that file.

        With ``keep_decoded`` (Parquet; what ``Table.matrix`` sets), the rows this pass decodes are kept
        (``_Decoded``), so every later pass over these columns (the statistics, the closed form's, each
        epoch) reads them instead of decoding again: decoding is most of what a streamed pass costs, and
        this pass has to decode anyway.
        """
        store = None
        if self.keep_decoded and self.kind == "parquet":
            store = _Decoded(sum(map(sum, self.groups)), len(names), self.stored_dtype(names), eager=True)
        counts: list[int] = []
        k = 0
        total = sum(self.counts) if self.counts is not None else None
        with Progress(f"checking {len(names)} column(s) of {self.path}", total) as progress:
            for file, blocks in zip(self.files, self._blocks_per_file(names, rows=store is not None)):
                rows = 0
                for block in _named(file, blocks):
                    check_finite(block, names, file, rows, to_float32)
                    if store is not None:
                        store.write(k, sum(counts) + rows, block)
                        k += 1
                    rows += len(block)
                    progress.update(len(block))
                counts.append(rows)
        if not sum(counts):
            raise LinRegError(f"{self.path}: no data rows (columns {self.columns}, but no rows under them)")
        self.counts = counts
        if store is not None and store.file is not None:
            self._kept[tuple(names)] = store

    def _blocks_per_file(self, names: Sequence[str], rows: bool = False) -> Iterator[Iterator[np.ndarray]]:
        """Each file's blocks as float64 column-major matrices, or with ``rows`` (Parquet) in the stored
        dtype and row-major: the layout ``_Decoded`` keeps, made in one conversion."""
        for i, file in enumerate(self.files):
            if self.kind == "parquet":
                dtype = self.stored_dtype(names) if rows else torch.float64
                order: Literal["C", "F"] = "C" if rows else "F"
                yield (_matrix(self.read_group(i, g, names), names, dtype, order) for g in range(len(self.groups[i])))
            else:
                yield self._csv_blocks(file, names)

    def _csv_blocks(self, file: str, names: Sequence[str]) -> Iterator[np.ndarray]:
        import pyarrow.csv as pc

        pa = self._pa
        convert = pc.ConvertOptions(include_columns=list(names), column_types={n: pa.float64() for n in names})
        rows = 0
        self.verify(file)
        try:
            with pc.open_csv(file, read_options=self._csv_options(CSV_BLOCK), convert_options=convert) as r:
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
            with pc.open_csv(file, read_options=self._csv_options(CSV_BLOCK), convert_options=convert) as r:
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

    def sample(self, name: str) -> np.ndarray:
        """The column's first rows (a row group, or about ``CSV_BLOCK`` bytes of text) as the table types
        them: enough to tell a label from a number column with bad cells, or an id that counts rows,
        without a pass over the table."""
        import pyarrow.csv as pc

        for i, file in enumerate(self.files):
            try:
                if self.kind == "parquet":
                    values = self.read_group(i, 0, [name]).column(0) if self.groups[i] else []
                else:
                    convert = pc.ConvertOptions(include_columns=[name])
                    with pc.open_csv(file, read_options=self._csv_options(CSV_BLOCK), convert_options=convert) as r:
                        values = next(iter(r), None)
                    values = values.column(0) if values is not None else []
            except LinRegError:
                raise
            except Exception as exc:
                raise LinRegError(f"{file}: cannot read column {name!r}: {reason(exc)}") from exc
            if len(values):
                return values.to_numpy(zero_copy_only=False)
        return np.array([])

    def first_text(self, name: str) -> str | None:
        """The first cell of column ``name`` that is not a number, as a refusal naming file, column and row."""
        for i, file in enumerate(self.files):
            if self.kind == "csv":
                found = self._csv_text(file, [name], 0)
            else:
                try:
                    cells = self.parquet(i).read(columns=[name]).column(0).cast(self._pa.string()).to_pylist()
                except self._pa.ArrowException:  # a type with no text form: the caller's message stands
                    return None
                k = next((k for k, cell in enumerate(cells) if cell is not None and not _number(cell)), None)
                found = None if k is None else f"{file}: column {name!r} is not numeric (row {k + 1}: {cells[k]!r})"
            if found:
                return found
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
                    parts.append(pc.read_csv(file, self._csv_options(CSV_BLOCK), convert_options=convert).column(0))
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
        self.progress: Progress | None = None  # a pass to report (predict, the closed form's), set by its caller
        if source.kind == "parquet":
            self._group_starts = []  # global first row of each (file, row group), in order
            self._group_keys = []
            for i, (start, sizes) in enumerate(zip(self._starts, source.groups)):
                offset = start
                for g, size in enumerate(sizes):
                    self._group_starts.append(offset)
                    self._group_keys.append((i, g))
                    offset += size
            kept = source._kept.get(tuple(self.names))
            self._decoded = kept or _Decoded(self.shape[0], len(self.names), self._np)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows: slice) -> Tensor:
        if not isinstance(rows, slice):
            raise LinRegError("streamed tables are read in row ranges; use --data.shuffle blocks or none")
        start, stop, _ = rows.indices(self.shape[0])
        if self.progress is not None:
            self.progress.update(max(stop - start, 0))
        if self._decoded is not None and stop > start:
            groups = range(self._group(start), self._group(stop - 1) + 1)
            if self._decoded.has(groups):
                for i in sorted({self._group_keys[k][0] for k in groups}):  # as a read would: a part changed
                    self.source.verify(self.source.files[i])  # since its check is refused by name (a stat)
                view = self._decoded.view(start, stop)
                # Rows kept as float64 (the exact rows of float64 columns) serve float32 training by a cast.
                return torch.from_numpy(view if view.dtype == self._np else view.astype(self._np))
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
    here, against 1.5 ms for the training step on the same rows (measured). Rows checked by
    ``Source.check(keep=True)`` (what a fit or predict does before it starts) are written as that
    pass decodes them (``eager``), so no later pass decodes at all; otherwise a group decoded a second
    time (a second epoch, or a batch straddling it) is written here. From then on its rows come back
    as a view of the page cache: no decode, no copy, resident only while a batch uses them (the
    mapping goes with the view). The file is unlinked as it is made, so nothing is left behind, even
    after ``kill -9``. Not used when the temporary folder lacks twice the room it needs, and dropped if
    a write fails (a full disk): reads then decode as before.
    """

    def __init__(self, rows: int, width: int, dtype: Any, eager: bool = False) -> None:
        import shutil

        self.width = width
        self.dtype = np.dtype(np.float32 if dtype == torch.float32 else np.float64 if dtype == torch.float64 else dtype)
        self.row_bytes = width * self.dtype.itemsize
        self.seen: set[int] = set()  # groups decoded once
        self.done: set[int] = set()  # groups in the file
        self.eager = eager
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
        """Group ``k`` was decoded (its rows start at ``first``): write it the second time (or the first, if eager)."""
        if self.file is None or k in self.done:
            return
        if k not in self.seen and not self.eager:
            self.seen.add(k)
            return
        block = np.empty((len(columns[0]), self.width), dtype=self.dtype)
        for j, column in enumerate(columns):
            block[:, j] = column
        self.write(k, first, block)

    def write(self, k: int, first: int, block: np.ndarray) -> None:
        """Group ``k``'s rows (row-major, this store's dtype), starting at row ``first``."""
        if self.file is None:
            return
        data, offset = memoryview(np.ascontiguousarray(block, dtype=self.dtype)).cast("B"), first * self.row_bytes
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
    if not bad.any():  # the usual case; np.nonzero over every chunk was most of a table's check (measured)
        return
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


def _matrix(
    table: Any, names: Sequence[str], dtype: torch.dtype = torch.float64, order: Literal["C", "F"] = "F"
) -> np.ndarray:
    """Arrow columns as one n × len(names) array (one conversion, a column at a time); nulls become NaN
    (named by ``check``). Column-major fills fastest; row-major is the layout ``_Decoded`` keeps."""
    np_dtype = np.float32 if dtype == torch.float32 else np.float64
    out = np.empty((table.num_rows, len(names)), dtype=np_dtype, order=order)
    for j, name in enumerate(names):
        out[:, j] = table.column(name).to_numpy(zero_copy_only=False)
    return out


def _number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _stat(file: str) -> tuple[int, int]:
    """What tells a file changed without reading it: its size and modification time."""
    st = os.stat(file)
    return st.st_size, st.st_mtime_ns


class Progress:
    """How far a pass over a streamed table has come, on stderr.

    On a terminal, one line redrawn at most every ``EVERY`` seconds (rows, rows/s, and the time left
    where the rows to read are known); otherwise, for a log, one line when the pass ends. Only the
    first process of a distributed run reports: the others make the same pass over their share.
    """

    EVERY = 0.25  # seconds between redraws: a pass is never slowed by its report

    def __init__(self, what: str, total: int | None = None) -> None:
        self.what, self.total, self.rows = what, total, 0
        self.start = self.shown = time.monotonic()
        self.tty = sys.stderr.isatty()
        self.on = all(os.environ.get(v, "0") in ("", "0") for v in ("RANK", "LOCAL_RANK", "NODE_RANK"))
        self.done = False

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, kind: Any, *_: Any) -> None:
        if kind is None:
            self.close()
        elif self.tty and self.on and not self.done and self.shown > self.start:
            print(file=sys.stderr)  # the error goes on a line of its own, below where the pass stopped
        self.done = True

    def update(self, rows: int) -> None:
        if self.done:
            return
        self.rows += rows
        if self.total is not None and self.rows >= self.total:
            self.close()
        elif self.tty and self.on and time.monotonic() - self.shown >= self.EVERY:
            self.shown = time.monotonic()
            print(f"\r{self.line()}\x1b[K", end="", file=sys.stderr, flush=True)

    def close(self) -> None:
        if not self.done and self.on:
            print(f"\r{self.line(done=True)}\x1b[K" if self.tty else self.line(done=True), file=sys.stderr, flush=True)
        self.done = True

    def line(self, done: bool = False) -> str:
        seconds = time.monotonic() - self.start
        rate = self.rows / max(seconds, 1e-6)
        text = f"linreg: {self.what}: {self.rows:,}" + (f" of {self.total:,}" if self.total else "") + " rows"
        if done:
            return f"{text} in {_duration(seconds)} ({rate:,.0f} rows/s)"
        left = f", {_duration((self.total - self.rows) / rate)} left" if self.total and self.rows else ""
        return f"{text}, {rate:,.0f} rows/s{left}"


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, seconds = divmod(round(seconds), 60)
    return f"{minutes} min {seconds:02d} s" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"


def reason(exc: BaseException) -> str:
    """An exception's first line, for a one-line error."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
