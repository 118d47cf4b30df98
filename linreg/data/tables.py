"""Tables as input: reading CSV, Parquet, NPZ and structured ``.npy`` files, and checking every value.

One file over 300 lines because ``Table`` and its readers change together: each reader fills one of
Table's four stores (frame, arrays, records, stream), and every Table method switches on them.

Nothing here knows about Lightning: this is the layer a user's file meets first, and the only one
that turns a parser's complaint into a ``LinRegError`` naming the file, the column and the row.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from linreg.data.categorical import MAX_LEVELS, THOUSANDS, Encoding, Level, find_levels
from linreg.data.checks import check_finite, reason
from linreg.data.files import CSV, expand
from linreg.data.rows import CHUNK_ROWS, RecordRows, Rows, field_dtype, field_names
from linreg.data.source import Source
from linreg.errors import LinRegError

if TYPE_CHECKING:
    import pandas as pd  # imported where a table is read: it costs a third of a second at start-up

TABLE_SUFFIXES = (".csv", ".parquet", ".pq", ".npz", ".npy")  # and .csv.gz; folders and globs of Parquet or CSV


def default_names(prefix: str, count: int) -> list[str]:
    """Column names for unnamed data: ``x`` for a single column, ``x0, x1, ...`` otherwise.

    One rule for every place that needs a name (tables without a header, tensors from Python, the
    summary and figures of a model without stored names), so a column is never ``x`` in one and ``x0``
    in another.
    """
    return [prefix] if count == 1 else [f"{prefix}{i}" for i in range(count)]


UNNAMED = re.compile(r"Unnamed: \d+")  # pandas' name for an empty header cell: to_csv's index


def unnamed(name: str) -> bool:
    """Whether a column had no name in its file's header (both modes call it ``Unnamed: <position>``)."""
    return UNNAMED.fullmatch(name) is not None


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
        stream: Source | None = None,
        implied_targets: Sequence[str] = (),
    ) -> None:
        self.source, self.frame, self.arrays, self.records = source, frame, arrays, records
        self.stream = stream
        self.implied_targets = list(implied_targets)
        self.encoding: Encoding | None = None  # the model's categorical columns (the data module sets it)
        if stream is not None:
            self.columns = stream.columns
        elif frame is not None:
            self.columns = [str(c) for c in frame.columns]
            frame.columns = self.columns
            duplicated = sorted({c for c in self.columns if self.columns.count(c) > 1})
            if duplicated:
                raise LinRegError(f"{source}: duplicate column names {duplicated}")
            self.n_rows = len(frame)
        elif arrays is not None:
            self.columns = list(arrays)
            self.n_rows = next(iter(arrays.values()))[0].shape[0] if arrays else 0
        else:
            assert records is not None
            self.columns = list(field_names(records))
            self.n_rows = records.shape[0]
        if stream is None and self.n_rows == 0:
            raise LinRegError(f"{source}: no data rows (columns {self.columns}, but no rows under them)")

    def _dtype(self, name: str) -> Any:
        """A numpy dtype, or for a frame's column possibly a pandas extension dtype (nullable Int64)."""
        if self.frame is not None:
            return self.frame[name].dtype
        if self.arrays is not None:
            return self.arrays[name][0].dtype
        assert self.records is not None
        return field_dtype(self.records, name)

    def is_numeric(self, name: str) -> bool:
        if self.stream is not None:
            return self.stream.is_numeric(name)
        dtype = self._dtype(name)
        if getattr(dtype, "kind", "") == "c":  # complex would silently lose its imaginary part
            return False
        if self.frame is None:  # numpy arrays: no need to import pandas (and hold its memory) for this
            return dtype.kind in "biuf"
        import pandas as pd

        return bool(pd.api.types.is_numeric_dtype(dtype) or pd.api.types.is_bool_dtype(dtype))

    def looks_numeric(self, name: str) -> bool:
        """A text column where some cells parse as numbers (or are numbers with thousands separators,
        "1,234") is a numeric column with bad cells, to refuse, not a label. A streamed table looks at
        its first rows (``Source.sample``), a table in memory at every row."""
        if self.is_numeric(name):
            return True
        if self.frame is None and self.stream is None:  # numpy arrays hold no text
            return False
        import pandas as pd

        cells = pd.Series(self.sample(name))
        if pd.to_numeric(cells, errors="coerce").notna().any():
            return True
        text = pd.api.types.is_object_dtype(cells) or pd.api.types.is_string_dtype(cells)
        return text and bool(cells.str.fullmatch(THOUSANDS.pattern).fillna(False).astype(bool).any())

    def is_label(self, name: str) -> bool:
        """Whether a column holds labels, categorical under ``--data.categorical auto``: text, pandas
        ``category`` (dictionary-encoded Parquet reads as one), bool."""
        if self.stream is not None:
            return self.stream.is_label(name)
        dtype = self._dtype(name)
        if self.frame is None:
            return bool(dtype.kind == "b")
        import pandas as pd

        types = pd.api.types  # not datetimes: they stay refused as not numeric, streamed or not
        text = types.is_object_dtype(dtype) or types.is_string_dtype(dtype)
        return bool(text or types.is_bool_dtype(dtype) or isinstance(dtype, pd.CategoricalDtype))

    def levels(self, name: str, limit: int | None = MAX_LEVELS) -> list[Level]:
        """A categorical column's levels over every row (a streamed table reads just this column)."""
        if name not in self.columns:
            raise LinRegError(f"{self.source}: no column {name!r}; columns are {self.columns}")
        if self.stream is not None:
            return self.stream.levels(name, limit)
        if self.records is not None:
            raise LinRegError(f"{self.source}: categorical column {name!r}: an .npy table holds numbers only")
        return find_levels(self.column(name), name, self.source, limit)

    def sample(self, name: str) -> np.ndarray:
        """The column's values: all of them, or a streamed table's first rows."""
        return self.stream.sample(name) if self.stream is not None else self.column(name)

    def counts_rows(self, name: str) -> bool:
        """Whether an integer column holds unique consecutive integers (0, 1, 2, ... or 1, 2, 3, ...):
        a row number, rarely a feature. A streamed table is judged by its first rows."""
        values = self.sample(name)
        if values.dtype.kind not in "iu" or len(values) < 2:
            return False
        return bool(values[0] in (0, 1) and np.array_equal(values, np.arange(values[0], values[0] + len(values))))

    def _float_or_label(self, name: str) -> np.ndarray:
        """A categorical column's labels as they are, any other column as float64 (nullable <NA> → NaN)."""
        if self.encoding is not None and name in self.encoding.levels or self.frame is None:
            return self.column(name)
        values: np.ndarray = self.frame[name].to_numpy(np.float64, na_value=np.nan)
        return values

    def column(self, name: str) -> np.ndarray:
        if self.stream is not None:  # one column of a streamed table (an id column): small enough to hold
            return self.stream.column(name)
        if self.frame is not None:
            values: np.ndarray = self.frame[name].to_numpy()
            return values
        if self.arrays is not None:
            array, i = self.arrays[name]
            return array[:, i]
        assert self.records is not None
        return np.asarray(self.records[name])

    def _check_columns(self, names: Sequence[str]) -> None:
        for name in names:
            if name not in self.columns:
                raise LinRegError(f"{self.source}: no column {name!r}; columns are {self.columns}")
            if not self.is_numeric(name):
                where = ""
                found = self.stream.first_text(name) if self.stream is not None else None
                if found:
                    raise LinRegError(found + _hint(found))
                if self.frame is not None:
                    series = self.frame[name]
                    import pandas as pd

                    bad = (pd.to_numeric(series, errors="coerce").isna() & series.notna()).to_numpy()
                    if bad.any():
                        row = int(np.flatnonzero(bad)[0])
                        where = f" (row {row + 1}: {series.iloc[row]!r})"
                message = f"{self.source}: column {name!r} is not numeric{where}"
                raise LinRegError(message + _hint(message))

    def matrix(
        self, names: Sequence[str], dtype: torch.dtype | None = torch.float32, fit_float32: bool = False
    ) -> Rows:
        """The columns as rows of ``dtype``, refusing anything that would train to NaN: text, NaN, inf.

        ``dtype=None`` gives the values as the file holds them: float64 for CSV, Parquet and integer
        columns, the stored float type for NPZ and NPY. That is what the least-squares solution is
        computed from; SGD trains on a float32 copy unless the precision is 64-bit, so ``fit_float32``
        also refuses values beyond float32's range.
        """
        names = list(names)
        encoding = self.encoding if self.encoding is not None and self.encoding.touches(names) else None
        self._check_columns([n for n in encoding.raw(names) if n not in encoding.levels] if encoding else names)
        if self.stream is not None:
            self.stream.encoding = self.encoding  # every pass over these rows expands the same columns
            self.stream.keep_decoded = True  # the check's decoded rows serve every later pass (decoded.Decoded)
            self.stream.check(names, fit_float32 or dtype == torch.float32)
            self.n_rows = self.stream.n_rows
            return self.stream.rows(names, dtype or self.stream.stored_dtype(names))
        if self.records is not None and encoding is not None:
            raise LinRegError(f"{self.source}: categorical columns need a CSV or Parquet table, not .npy")
        if encoding is not None:  # indicators among the columns: assembled one column at a time
            values = np.stack(encoding.arrays(names, self._float_or_label, self.source), axis=1)
        elif self.records is not None:
            single = all(field_dtype(self.records, n) == np.float32 for n in names)
            stored = torch.float32 if single else torch.float64
            exact_rows = RecordRows(self.records, names, stored)
            for start in range(0, self.n_rows, CHUNK_ROWS):
                chunk = exact_rows[start : start + CHUNK_ROWS].numpy()
                check_finite(chunk, names, self.source, start, fit_float32 or dtype == torch.float32)
            return RecordRows(self.records, names, dtype or stored)
        elif self.arrays is not None:
            array, first = self.arrays[names[0]]
            idx = [self.arrays[n][1] for n in names]
            same = all(self.arrays[n][0] is array for n in names)
            if same and idx == list(range(first, first + len(names))):
                values = array[:, first : first + len(names)]  # a view when the columns are contiguous
            else:
                values = np.stack([self.column(n) for n in names], axis=1)
        else:
            assert self.frame is not None
            values = self.frame[names].to_numpy(np.float64, na_value=np.nan)  # nullable <NA> → NaN, named below
        exact = values if values.dtype in (np.float32, np.float64) else values.astype(np.float64)
        want = {None: exact.dtype, torch.float32: np.dtype(np.float32), torch.float64: np.dtype(np.float64)}[dtype]
        for start in range(0, exact.shape[0], CHUNK_ROWS):
            to_float32 = fit_float32 or want == np.float32
            check_finite(exact[start : start + CHUNK_ROWS], names, self.source, start, to_float32)
        values = np.ascontiguousarray(exact, dtype=want)
        return torch.from_numpy(values if values.flags.writeable else values.copy())


def _hint(message: str) -> str:
    """How to fix a cell like "1,234", which a person reads as a number and a parser does not."""
    cell = re.search(r": '(.*)'\)$", message)
    return "; write numbers without thousands separators" if cell and THOUSANDS.fullmatch(cell[1]) else ""


STREAM_BYTES = 1 << 30  # auto streams a file larger than this (or than an eighth of physical memory)


def _large(p: Path) -> bool:
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        memory = 8 * STREAM_BYTES
    return p.stat().st_size > min(STREAM_BYTES, memory // 8)


def read_table(path: str | Path, stream: bool | str = "auto") -> Table:
    """Open a table. Any failure to parse becomes a ``LinRegError`` naming the file: a user's file is
    input, and input never surfaces as a raw pandas or numpy traceback.

    ``stream``: read Parquet and CSV by row range as training goes (``streams``) instead of whole.
    ``auto`` streams folders, globs and files too large to hold comfortably (``STREAM_BYTES``).
    """
    text = str(path)
    # A path that exists is that file, glob characters in its name or not (data[2020].csv); only one
    # that does not is a pattern.
    many = os.path.isdir(text) or (not os.path.exists(text) and any(ch in text for ch in "*?["))
    p = Path(path)
    if not many and not p.is_file():
        raise LinRegError(f"{p}: no such file" if not p.exists() else f"{p}: not a file")
    name = p.name.lower()
    suffix = ".csv" if name.endswith(CSV) else p.suffix.lower()
    if not many and suffix not in TABLE_SUFFIXES:
        raise LinRegError(
            f"{p}: unsupported file type {suffix or '(none)'!r}; expected .csv, .csv.gz, .parquet, .npz or .npy"
        )
    try:
        if suffix == ".npz" and not many:
            return _read_npz(p)
        if suffix == ".npy" and not many:
            return _read_npy(p)
        if many or stream is True or (stream == "auto" and _large(p)):
            source = Source(text)
            if many and stream is False:
                return _whole(text, source)
            return Table(text, stream=source, implied_targets=["y"] if "y" in source.columns else [])
        import pandas as pd  # only for the text and Parquet formats: numpy tables start without it

        frame = pd.read_csv(p) if suffix == ".csv" else pd.read_parquet(p)
        if suffix == ".csv":
            _check_csv_header(p)
    except LinRegError:
        raise
    except Exception as exc:  # any parser failure on user input is a user error
        raise LinRegError(f"{p}: cannot read as {suffix[1:] or 'a table'}: {reason(exc)}") from exc
    return Table(str(p), frame=frame, implied_targets=["y"] if "y" in frame.columns else [])


FINGERPRINT_BLOCK = 1 << 20  # bytes hashed at each end of a file


def fingerprint(path: str, source: Source | None = None) -> list[list[str | int]]:
    """What a checkpoint remembers of its training table, to tell a resumed fit that the table changed:
    each file's name (within the folder or glob), size, and a hash of its first and last MiB.

    Cheap for any size; an edit that keeps the size and touches neither end of a file larger than
    2 MiB goes unseen. The names are relative, so a table moved or copied elsewhere is the same table.
    A streamed table (``source``) is fingerprinted as it was read: its files as listed, refused if one
    vanished or changed since.
    """
    if source is not None:
        source.verify_all()
    files = source.files if source is not None else expand(path)
    base = path if os.path.isdir(path) else os.path.dirname(files[0]) if len(files) > 1 else None
    prints: list[list[str | int]] = []
    for file in files:
        digest = hashlib.blake2b(digest_size=16)
        try:
            with open(file, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                digest.update(f.read(FINGERPRINT_BLOCK))
                if size > FINGERPRINT_BLOCK:
                    f.seek(max(FINGERPRINT_BLOCK, size - FINGERPRINT_BLOCK))
                    digest.update(f.read())
        except OSError as exc:
            raise LinRegError(f"{file}: vanished or unreadable since linreg read it ({exc.strerror})") from exc
        name = os.path.relpath(file, base) if base else os.path.basename(file)
        prints.append([name, size, digest.hexdigest()])
    return prints


def fingerprint_change(saved: list[list[str | int]], now: list[list[str | int]]) -> str | None:
    """What changed between two fingerprints, in words, or None."""
    before, after = {p[0]: p[1:] for p in saved}, {p[0]: p[1:] for p in now}
    if len(before) == 1 and len(after) == 1:  # one file, perhaps renamed: compare it
        before, after = {"": next(iter(before.values()))}, {"": next(iter(after.values()))}
    changes = [f"{name} added" for name in after if name not in before]
    changes += [f"{name} removed" for name in before if name not in after]
    for name in before.keys() & after.keys():
        (size0, hash0), (size1, hash1) = before[name], after[name]
        what = f"size {size0} then, {size1} now" if size0 != size1 else "contents differ" if hash0 != hash1 else ""
        if what:
            changes.append(f"{f'{name}: ' if name else ''}{what}")
    return "; ".join(sorted(changes)) or None


def _check_csv_header(p: Path) -> None:
    """Refuse repeated column names: pandas renames a second "x" to "x.1", and linreg would then train
    on a column the file never named."""
    import csv
    import gzip

    with (gzip.open if p.name.lower().endswith(".gz") else open)(p, "rt", newline="", encoding="utf-8-sig") as f:
        header = [name for name in next(csv.reader(f), []) if name]
    duplicated = sorted({c for c in header if header.count(c) > 1})
    if duplicated:
        raise LinRegError(f"{p}: duplicate column names {duplicated}")


def _whole(path: str, source: Source) -> Table:
    """A folder or glob of parts read into memory (``--data.stream false``), in file order.

    Parquet parts whose columns are all floating point are read by pyarrow straight into arrays
    (float32 when every column is, as streaming and ``.npz`` keep them): through pandas the rows were
    copied three times (frames, their concatenation, a float64 matrix), and reading a folder whole took
    1.38x as long as streaming it. Other columns (text, an integer id passed through to predictions as
    it is), and CSV, still come through pandas, which keeps their types and names bad cells.
    """
    if source.kind == "parquet" and all(source.is_floating(c) for c in source.columns):
        return _whole_parquet(path, source)
    import pandas as pd

    frames = []
    for f in source.files:
        source.verify(f)
        try:
            frames.append(pd.read_parquet(f) if source.kind == "parquet" else pd.read_csv(f))
        except Exception as exc:
            raise LinRegError(f"{f}: cannot read: {reason(exc)}") from exc
    frame = pd.concat(frames, ignore_index=True)
    if len(frame) == 0:
        raise LinRegError(f"{path}: no data rows")
    return Table(path, frame=frame, implied_targets=["y"] if "y" in frame.columns else [])


def _whole_parquet(path: str, source: Source) -> Table:
    names = source.columns
    n = sum(map(sum, source.groups))
    if not n:
        raise LinRegError(f"{path}: no data rows")
    dtype = np.float32 if source.stored_dtype(names) == torch.float32 else np.float64
    # Row-major, the features in one array and the target 'y' in another, as an .npz holds them: the
    # usual columns then reach training as views, with no second copy of the table (measured: the copy
    # from one array of every column cost as much as reading the Parquet).
    blocks = [block for block in ([c for c in names if c != "y"], [c for c in names if c == "y"]) if block]
    where = {}
    for block in blocks:
        values = np.empty((n, len(block)), dtype=dtype)
        where.update({name: (values, j) for j, name in enumerate(block)})
    first = 0
    for i, groups in enumerate(source.groups):
        for g in range(len(groups)):
            table = source.read_group(i, g, names, threads=True)  # the whole table is held anyway
            for name in names:
                values, j = where[name]
                values[first : first + table.num_rows, j] = table.column(name).to_numpy(zero_copy_only=False)
            first += table.num_rows
    return Table(path, arrays={name: where[name] for name in names}, implied_targets=["y"] if "y" in names else [])


def _read_npz(p: Path) -> Table:
    with np.load(p, allow_pickle=False) as npz:
        if "X" not in npz.files:
            raise LinRegError(f"{p}: an .npz needs an array named 'X' (n×d); found {sorted(npz.files)}")
        X = npz["X"]
        y = npz["y"] if "y" in npz.files else None
    X = X.reshape(-1, 1) if X.ndim == 1 else X
    if X.ndim != 2:
        raise LinRegError(f"{p}: array 'X' must be 2-D (n×d), got shape {tuple(X.shape)}")
    names = default_names("x", X.shape[1])
    arrays = {name: (X, i) for i, name in enumerate(names)}
    targets: list[str] = []
    if y is not None:
        y = y.reshape(-1, 1) if y.ndim == 1 else y
        if y.ndim != 2 or y.shape[0] != X.shape[0]:
            raise LinRegError(f"{p}: array 'y' must have {X.shape[0]} rows like 'X', got shape {tuple(y.shape)}")
        targets = default_names("y", y.shape[1])
        arrays.update({name: (y, i) for i, name in enumerate(targets)})
    return Table(str(p), arrays=arrays, implied_targets=targets)


def _read_npy(p: Path) -> Table:
    records = np.load(p, mmap_mode="r", allow_pickle=False)
    if records.dtype.names is None or records.ndim != 1:
        raise LinRegError(
            f"{p}: an .npy table must be a 1-D structured array with one named field per column "
            f"(got dtype {records.dtype}, shape {records.shape})"
        )
    return Table(str(p), records=records, implied_targets=["y"] if "y" in records.dtype.names else [])
