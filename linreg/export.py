"""`linreg export`: a checkpoint as a standalone ONNX or torch.export program (being written)."""

from __future__ import annotations


def export_main(args: list[str] | None = None) -> None:
    raise NotImplementedError
