"""Batches: which rows each SGD update sees, on which rank, in which order, and where a resumed epoch picks up."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence
from typing import Any, Literal

import torch

from linreg.data.rows import Rows
from linreg.errors import LinRegError

Shuffle = Literal["blocks", "rows", "none"]


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
            raise LinRegError(
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
        order: Sequence[int] = range(n_batches)
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
            batch["span"] = (start, stop)  # the global batch's rows (weighted batches sum its weights)
            if self.with_index:
                batch["index"] = idx if idx is not None else torch.arange(lo, hi)
            yield batch
