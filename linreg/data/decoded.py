"""Parquet row groups decoded once and kept in a temporary file: what makes a streamed epoch cheap."""

from __future__ import annotations

import os
import tempfile
from typing import Any

import numpy as np
import torch


class Decoded:
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
        data, offset = np.ascontiguousarray(block, dtype=self.dtype).data.cast("B"), first * self.row_bytes
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
