"""Sample weights (``--data.weights COL``): checked where a table is read, carried as the targets' last
column, and split off again per batch.

The weights travel as one more column of the target rows (``Table.matrix(targets + [weights])``), so
every kind of rows (in memory, memory-mapped ``.npy``, streamed Parquet and CSV), the random split and
the DDP sharding carry them without knowing they exist; ``WeightedBatches`` hands them on as ``w``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from linreg.data.batches import Batches
from linreg.data.rows import CHUNK_ROWS, Rows
from linreg.errors import LinRegError


def check_weights(y: Rows, source: str, column: str) -> None:
    """Refuse a negative weight (naming its 1-based row) and weights that are 0 in every row: a weighted
    mean over them is 0/0. NaN and inf are refused by ``Table.matrix`` already, by row, as any value."""
    total = 0.0
    for start in range(0, y.shape[0], CHUNK_ROWS * 8):
        w = y[start : start + CHUNK_ROWS * 8][:, -1]
        negative = torch.nonzero(w < 0)
        if negative.numel():
            row = int(negative[0])
            raise LinRegError(
                f"{source}: weights column {column!r} row {start + row + 1} is {float(w[row]):g}; "
                "weights must be at least 0"
            )
        total += float(w.sum(dtype=torch.float64))
    if not total > 0:
        raise LinRegError(
            f"{source}: weights column {column!r} is zero in every row (rows 1 to {y.shape[0]}); "
            "at least one row needs a positive weight"
        )


class WeightedBatches(Batches):
    """``Batches`` whose target rows end with the weights column: each batch's ``y`` without it, and ``w``
    (this rank's rows' weights). Under DDP also ``w_total``, the global batch's weight sum, which each
    rank's loss is divided by (``LinRegModule._loss``), as the unweighted loss is by the global ``n``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._block_totals: dict[tuple[int, int], float] | None = None

    def batches(self, skip: int = 0) -> Iterator[dict[str, Any]]:
        perm = None
        if self.world_size > 1 and self.shuffle == "rows":  # the global batch is perm[start:stop]
            perm = torch.randperm(self.n, generator=self._generator())
        for batch in super().batches(skip):
            y = batch["y"]
            batch["y"], batch["w"] = y[:, :-1], y[:, -1]
            if self.world_size > 1:
                start, stop = batch["span"]
                batch["w_total"] = self._total(start, stop, perm)
            yield batch

    def _total(self, start: int, stop: int, perm: torch.Tensor | None) -> float:
        """The weight sum of global rows [start, stop) (of ``perm``'s order, for a per-row shuffle). Blocks
        are fixed whatever their order, so their sums are taken once, in one pass over the weights."""
        assert self.y is not None  # weighted batches are batches with targets
        if perm is not None:  # a per-row shuffle: rows held in memory (streamed tables refuse it)
            return float(self.y.index_select(0, perm[start:stop])[:, -1].sum(dtype=torch.float64))
        if self._block_totals is None:
            b = self.batch_size
            self._block_totals = {
                (lo, min(lo + b, self.n)): float(self.y[lo : min(lo + b, self.n)][:, -1].sum(dtype=torch.float64))
                for lo in range(0, self.n, b)
            }
        return self._block_totals[(start, stop)]
