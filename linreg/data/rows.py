"""Rows that stay on disk (a memory-mapped ``.npy``), the row types every pass takes, and the one
statistics pass over them."""

from __future__ import annotations

import contextlib
import mmap
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from linreg.data.progress import Progress
from linreg.data.streams import StreamRows

CHUNK_ROWS = 1 << 13  # small chunks: bigger temporaries stay cached by the allocator (measured)


class RecordRows:
    """Rows of a memory-mapped structured ``.npy`` as tensors of one dtype, read slice by slice on demand.

    Pages a slice touched are handed back to the kernel (``MADV_DONTNEED``) once copied out, so the
    process's resident memory stays at about one batch however large the file: a plain memory map
    would keep every page it ever read resident, and a pass over the file would cost its whole size.
    """

    def __init__(self, records: np.ndarray, names: Sequence[str], dtype: torch.dtype = torch.float32) -> None:
        self.records, self.names, self.dtype = records, list(names), dtype
        self._np_dtype = np.float32 if dtype == torch.float32 else np.float64
        self.shape: tuple[int, int] = (records.shape[0], len(self.names))
        fields = field_names(records)
        self._width = len(fields)
        # All-float32 packed records read as one 2-D view; anything else field by field.
        single = all(field_dtype(records, n) == np.float32 for n in fields)
        self._packed = single and records.dtype.itemsize == 4 * len(fields)
        self._cols = [fields.index(n) for n in self.names]

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows: slice | np.ndarray) -> Tensor:
        chunk = self.records[rows]
        if self._packed:
            flat = np.asarray(chunk).view(np.float32).reshape(chunk.shape[0], self._width)
            out = np.ascontiguousarray(flat[:, self._cols], dtype=self._np_dtype)
        else:
            out = np.empty((chunk.shape[0], len(self.names)), dtype=self._np_dtype)
            for j, name in enumerate(self.names):
                out[:, j] = chunk[name]
        if isinstance(rows, slice):
            self._release(*rows.indices(self.shape[0])[:2])
        return torch.from_numpy(out)

    def _release(self, start: int, stop: int) -> None:
        mapping = getattr(self.records, "_mmap", None)
        if (
            not isinstance(self.records, np.memmap)
            or mapping is None
            or not hasattr(mmap, "MADV_DONTNEED")
            or stop <= start
        ):
            return
        base = self.records.offset % mmap.ALLOCATIONGRANULARITY  # where row 0 sits in the mapping
        lo = base + start * self.records.itemsize
        hi = min(base + stop * self.records.itemsize, len(mapping))
        lo -= lo % mmap.PAGESIZE
        mapping.madvise(mmap.MADV_DONTNEED, lo, hi - lo)

    def index_select(self, dim: int, index: Tensor) -> Tensor:
        """Rows in the given order (the per-row shuffle): random reads, so slow on disk."""
        return self[index.numpy()]


Rows = Tensor | RecordRows | StreamRows


def field_names(records: np.ndarray) -> tuple[str, ...]:
    """A structured array's field names: the table's columns (``read_table`` refuses an ``.npy`` without)."""
    names = records.dtype.names
    assert names is not None, "a structured array"
    return names


def field_dtype(records: np.ndarray, name: str) -> np.dtype[Any]:
    """The type a structured array stores field ``name`` as."""
    fields = records.dtype.fields
    assert fields is not None, "a structured array"
    return fields[name][0]


def mean_scale(x: Rows) -> tuple[Tensor, Tensor]:
    """Column means and standard deviations (population) in float64, chunk by chunk; 0 becomes 1.

    Sums are taken around the first chunk's mean, so a column like a year (mean 1950, spread 5)
    or a target near 1e6 keeps its spread instead of losing it to cancellation.
    """
    shift = x[0:CHUNK_ROWS].double().mean(0)
    total = torch.zeros(x.shape[1], dtype=torch.float64)
    squares = torch.zeros(x.shape[1], dtype=torch.float64)
    progress = (
        Progress(f"statistics of {x.shape[1]} column(s) of {x.source.path}", x.shape[0])
        if isinstance(x, StreamRows)
        else None
    )
    with progress if progress is not None else contextlib.nullcontext():
        for start in range(0, x.shape[0], CHUNK_ROWS):
            chunk = x[start : start + CHUNK_ROWS].double() - shift
            total += chunk.sum(0)
            squares += (chunk * chunk).sum(0)
            if progress is not None:
                progress.update(chunk.shape[0])
    mean = total / x.shape[0]
    std = (squares / x.shape[0] - mean * mean).clamp_min(0).sqrt()
    return shift + mean, torch.where(std > 0, std, torch.ones_like(std))
