"""Tables larger than memory: Parquet files, folders and globs, and CSV (also .csv.gz), read by row range.

pyarrow reads only the columns asked for, and Parquet footers give every file's and row group's row
count without reading data, so a range of rows maps to a few row groups: each DDP rank reads exactly
its part of each batch, no row padded or repeated. CSV has no such index: it is read front to back,
so a streamed CSV serves rows in file order only (shuffled epochs need Parquet).

This file serves the row ranges (``StreamRows``); ``source.Source`` reads the files. Never imports
Lightning; ``tables.read_table`` decides what streams.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from linreg.data.decoded import Decoded
from linreg.data.progress import Progress
from linreg.errors import LinRegError

if TYPE_CHECKING:
    from linreg.data.source import Source


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
        self._starts = list(itertools.accumulate(source.counts or [], initial=0))  # first row of each file
        self._cache: list[tuple[Any, int, list[np.ndarray]]] = []  # (key, first row, columns) of the last blocks
        self._csv: tuple[int, Iterator[np.ndarray], int] | None = None  # (file, blocks, next row) of the CSV scan
        self._decoded: Decoded | None = None
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
            kept = source.kept.get(tuple(self.names))
            self._decoded = kept or Decoded(self.shape[0], len(self.names), self._np)

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
            columns = self.source.arrays(table, self.names, self.source.files[self._group_keys[k][0]])
            self._keep((self._group_keys[k], self._group_starts[k], columns))
            if self._decoded is not None:  # always, for Parquet
                self._decoded.put(k, self._group_starts[k], columns)
        else:
            file = bisect.bisect_right(self._starts, row) - 1
            if self._csv is None or self._csv[0] != file or self._csv[2] > row:
                self._csv = (file, self.source.csv_blocks(self.source.files[file], self.names), self._starts[file])
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
