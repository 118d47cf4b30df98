"""``AtomicCheckpointIO``: checkpoints written through a temporary file in their own folder."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import lightning
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from typing_extensions import override

import linreg
from linreg.io import atomic_write


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, with the temporary file in the checkpoint's own folder.

    Lightning's goes through fsspec's transaction, whose temporary file is in ``TMPDIR``: when that is
    another filesystem (a tmpfs), the final move is a copy, and a ``kill -9`` during it left a 0-byte
    ``last.ckpt`` where a good one had been (2 of 12 kills, measured). A full disk then fails as one
    line naming the file, and the previous checkpoint stays whole.
    """

    @override
    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        checkpoint.setdefault("linreg_version", linreg.__version__)  # named when a later linreg cannot read it
        if "://" in str(path):  # remote storage: fsspec's own transaction is the right tool there
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda tmp: tmp.write_bytes(buffer.getbuffer()))

    @override
    def load_checkpoint(
        self, path: Any, map_location: Any | None = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        """A checkpoint an older Lightning wrote, without ``pytorch-lightning_version``: Lightning's
        upgrade step reads that key first (a KeyError). linreg needs only the weights and the
        hyperparameters, checked before (``load_checkpoint`` in linreg.cli): the file is taken as it is."""
        checkpoint = super().load_checkpoint(path, map_location=map_location, weights_only=weights_only)
        checkpoint.setdefault("pytorch-lightning_version", lightning.__version__)
        return checkpoint
