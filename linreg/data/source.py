"""Reading a streamed table's files: Parquet by row group, CSV front to back, and the one pass that checks
every value (and counts a CSV's rows).

One file over 300 lines because every ``Source`` method reads through the same state: the files as
listed and stat'ed, the few Parquet files kept open, the CSV read options, and the decoded rows kept.

Never imports Lightning; ``streams.StreamRows`` serves row ranges from a ``Source``.
"""

from __future__ import annotations

import ctypes
import itertools
from collections.abc import Iterator, Sequence
from typing import Any, Literal

import numpy as np
import torch

from linreg.data.categorical import Encoding, Level, find_levels, sorted_levels, too_many
from linreg.data.checks import check_finite, reason
from linreg.data.decoded import Decoded
from linreg.data.files import expand, file_kind, file_stamp
from linreg.data.progress import Progress
from linreg.data.streams import StreamRows
from linreg.errors import LinRegError

OPEN_FILES = 16  # Parquet files kept open at once
CSV_BLOCK = 1 << 22  # bytes of CSV text per block read: about 100,000 rows of 30 numbers


_MEMORY_BEFORE: list[Any] = []  # pyarrow's pool before _bounded_memory set its own; see restore_memory


def _bounded_memory() -> None:
    """Hand freed batch memory back to the system, so resident memory follows a batch, not the table.

    pyarrow's default pool (jemalloc or mimalloc) keeps freed row groups cached, and glibc raises its
    mmap threshold after the first large free, after which batch-sized blocks come from a heap that
    never shrinks: together they made a 300 MiB table cost 60-110 MiB more peak memory than a 15 MiB
    one (measured). The system pool and a fixed 1 MiB mmap threshold bring that to about 40 MiB.
    Both are process-wide: ``restore_memory`` undoes them when the command that streamed ends.
    """
    if _MEMORY_BEFORE:
        return
    import pyarrow as pa

    _MEMORY_BEFORE.append(pa.default_memory_pool())
    pa.set_memory_pool(pa.system_memory_pool())
    _mmap_threshold(1 << 20)


def restore_memory() -> None:
    """Give the process back the allocator settings it had before a streamed read (``linreg.cli.main``
    calls this as each command ends, so a Python caller's process is left as it was)."""
    if not _MEMORY_BEFORE:
        return
    import pyarrow as pa

    pa.set_memory_pool(_MEMORY_BEFORE.pop())
    _mmap_threshold(128 * 1024)  # glibc's default (its dynamic adjustment starts over from there)


def _mmap_threshold(size: int) -> None:
    try:
        ctypes.CDLL("libc.so.6").mallopt(-3, size)  # M_MMAP_THRESHOLD: glibc only; elsewhere a no-op
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
                self._stats[f] = file_stamp(f)
            except OSError as exc:
                raise LinRegError(f"{f}: cannot read: {exc.strerror}") from exc
        self.kind = file_kind(self.files[0])
        self._pa = pa
        self._open: dict[int, Any] = {}  # a few open Parquet files; a folder may hold more than the fd limit
        self._csv_names: dict[str, Any] = {}  # CSV read options naming the columns, where the header has gaps
        self.keep_decoded = False  # keep what ``check`` decodes for later passes (see ``check``)
        self.kept: dict[tuple[str, ...], Decoded] = {}  # what it kept, by columns
        self.encoding: Encoding | None = None  # categorical columns, read as labels and served as indicators
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
            columns = self.encoding.raw(names) if self.encoding is not None else list(names)
            return self.parquet(file).read_row_group(group, columns=columns, use_threads=threads)
        except Exception as exc:
            self.verify(self.files[file])  # a part rewritten while open: say so, not what the decoder saw
            raise LinRegError(f"{self.files[file]}: cannot read: {reason(exc)}") from exc

    def verify(self, file: str) -> None:
        """Refuse a part deleted, truncated or rewritten since it was listed: the rows checked, counted
        and trained on, and the fingerprint a checkpoint keeps, must all be of one table."""
        then = self._stats[file]
        try:
            now = file_stamp(file)
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
        return bool(pa.types.is_floating(t) or pa.types.is_integer(t) or pa.types.is_boolean(t))

    def is_label(self, name: str) -> bool:
        """Text, dictionary-encoded or bool: categorical under ``--data.categorical auto``."""
        t, pa = self.schema.field(name).type, self._pa
        text = pa.types.is_string(t) or pa.types.is_large_string(t)
        return bool(text or pa.types.is_dictionary(t) or pa.types.is_boolean(t))

    def levels(self, name: str, limit: int | None) -> list[Level]:
        """A categorical column's levels, in one pass over just that column (every DDP rank reads them all,
        so every rank finds the same levels)."""
        import pyarrow.compute as pc
        import pyarrow.csv as csv

        found: set[Level] = set()
        for i, file in enumerate(self.files):
            rows = 0
            if self.kind == "parquet":
                blocks: Any = (self.read_group(i, g, [name]).column(0) for g in range(len(self.groups[i])))
            else:
                types = {name: self.schema.field(name).type}
                convert = csv.ConvertOptions(include_columns=[name], column_types=types, strings_can_be_null=True)
                self.verify(file)
                blocks = (
                    b.column(0) for b in csv.open_csv(file, self._csv_options(CSV_BLOCK), convert_options=convert)
                )
            for block in _named(file, blocks):
                labels = _labels(block)
                if labels.null_count:  # an empty cell: named by row
                    find_levels(labels.to_numpy(zero_copy_only=False), name, file, None, rows)
                found.update(pc.unique(labels).to_pylist())
                rows += len(block)
                if limit is not None and len(found) > limit:
                    too_many(name, self.path, sorted_levels(found)[limit], limit)
        return sorted_levels(found)

    def arrays(self, table: Any, names: Sequence[str], where: str, offset: int | None = None) -> list[np.ndarray]:
        """An Arrow table's columns for ``names``: indicators of categorical columns, the others as stored."""
        if self.encoding is None or not self.encoding.touches(names):
            return [table.column(name).to_numpy(zero_copy_only=False) for name in names]
        levels = self.encoding.levels

        def column(name: str) -> Any:  # labels stay Arrow: pyarrow looks them up 25x faster than pandas (measured)
            values = table.column(name)
            return _labels(values) if name in levels else values.to_numpy(zero_copy_only=False)

        return self.encoding.arrays(names, column, where, offset)

    def _matrix(
        self,
        table: Any,
        names: Sequence[str],
        where: str,
        dtype: torch.dtype = torch.float64,
        order: Any = "F",
        offset: int | None = None,
    ) -> np.ndarray:
        """Arrow columns as one n × len(names) array (one conversion, a column at a time); nulls become NaN
        (named by ``check``). Column-major fills fastest; row-major is the layout ``Decoded`` keeps."""
        np_dtype = np.float32 if dtype == torch.float32 else np.float64
        out = np.empty((table.num_rows, len(names)), dtype=np_dtype, order=order)
        for j, column in enumerate(self.arrays(table, names, where, offset)):
            out[:, j] = column
        return out

    def is_floating(self, name: str) -> bool:
        return all(self._pa.types.is_floating(schema.field(name).type) for schema in self._schemas)

    def stored_dtype(self, names: Sequence[str]) -> torch.dtype:
        pa = self._pa
        if self.encoding is not None:  # indicators are 0 and 1, exact in any float type
            names = [n for n in self.encoding.raw(names) if n not in self.encoding.levels]
        single = all(schema.field(n).type == pa.float32() for schema in self._schemas for n in names)
        return torch.float32 if single and self.kind == "parquet" else torch.float64

    # -- one pass: value checks (and, for CSV, the row counts) ----------------------------------------

    def check(self, names: Sequence[str], to_float32: bool) -> None:
        """Read every row of ``names`` once and name the first NaN, inf, text or (for float32 training)
        out-of-range value by file, column and 1-based row of that file.

        With ``keep_decoded`` (Parquet; what ``Table.matrix`` sets), the rows this pass decodes are kept
        (``Decoded``), so every later pass over these columns (the statistics, the closed form's, each
        epoch) reads them instead of decoding again: decoding is most of what a streamed pass costs, and
        this pass has to decode anyway.
        """
        store = None
        if self.keep_decoded and self.kind == "parquet":
            store = Decoded(sum(map(sum, self.groups)), len(names), self.stored_dtype(names), eager=True)
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
            self.kept[tuple(names)] = store

    def _blocks_per_file(self, names: Sequence[str], rows: bool = False) -> Iterator[Iterator[np.ndarray]]:
        """Each file's blocks as float64 column-major matrices, or with ``rows`` (Parquet) in the stored
        dtype and row-major: the layout ``Decoded`` keeps, made in one conversion."""
        for i, file in enumerate(self.files):
            if self.kind == "parquet":
                dtype = self.stored_dtype(names) if rows else torch.float64
                order: Literal["C", "F"] = "C" if rows else "F"
                firsts = itertools.accumulate(self.groups[i], initial=0)  # each group's first row in its file
                yield (
                    self._matrix(self.read_group(i, g, names), names, file, dtype, order, first)
                    for g, first in zip(range(len(self.groups[i])), firsts)
                )
            else:
                yield self.csv_blocks(file, names)

    def csv_blocks(self, file: str, names: Sequence[str]) -> Iterator[np.ndarray]:
        import pyarrow.csv as pc

        pa = self._pa
        labels = self.encoding.levels if self.encoding is not None else {}
        raw = self.encoding.raw(names) if self.encoding is not None else list(names)
        types = {n: self.schema.field(n).type if n in labels else pa.float64() for n in raw}
        # An empty label is missing, as pandas reads it (not a level "" that sorts first)
        convert = pc.ConvertOptions(include_columns=raw, column_types=types, strings_can_be_null=True)
        rows = 0
        self.verify(file)
        try:
            with pc.open_csv(file, read_options=self._csv_options(CSV_BLOCK), convert_options=convert) as r:
                for batch in r:
                    rows += batch.num_rows
                    yield self._matrix(batch, names, file, offset=rows - batch.num_rows)
        except pa.ArrowInvalid as exc:  # text in a number column: find where, to name it
            numbers = [n for n in raw if n not in labels]
            raise LinRegError(self._csv_text(file, numbers, rows) or f"{file}: {reason(exc)}") from exc

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
                    values: Any = self.read_group(i, 0, [name]).column(0) if self.groups[i] else []
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
                first: np.ndarray = values.to_numpy(zero_copy_only=False)
                return first
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
        whole: np.ndarray = pa.chunked_array(parts).to_numpy(zero_copy_only=False)
        return whole

    # -- reading a range --------------------------------------------------------------------------

    def rows(self, names: Sequence[str], dtype: torch.dtype) -> StreamRows:
        return StreamRows(self, names, dtype)


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


def _labels(column: Any) -> Any:
    """An Arrow column of labels, a dictionary-encoded one decoded."""
    return column.cast(column.type.value_type) if hasattr(column.type, "value_type") else column


def _number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
