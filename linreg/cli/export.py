"""`linreg export`: a checkpoint as a standalone ONNX or torch.export program.

The program is built from the checkpoint's tensors alone, not through ``LinRegModule``: a deployed
model should not depend on how the training module is laid out, only on the arithmetic of its
forward (standardize, linear layer, unstandardize), replayed here in the same order so that the
exported program and ``linreg predict`` agree to the last bits float32 allows.
"""

from __future__ import annotations

import importlib
import io
import json
import logging
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from jsonargparse import ArgumentParser
from torch import Tensor, nn

import linreg
from linreg.cli.checkpoints import open_checkpoint
from linreg.data.tables import default_names
from linreg.errors import LinRegError
from linreg.io import atomic_write, check_output

FORMATS = {".onnx": "onnx", ".pt2": "pt2"}
INPUT, OUTPUT = "features", "predictions"
METADATA_FILE = "linreg.json"  # the metadata inside a .pt2 (torch.export.load(..., extra_files=...))


class Predictor(nn.Module):
    """Raw features in, predictions in the target's units out: LinRegModule's forward, nothing else.
    Predictions of a model that standardizes come out in float64, as ``linreg predict`` computes them."""

    def __init__(self, state: dict[str, Tensor], standardize: bool) -> None:
        super().__init__()
        weight = state["model.lin.weight"]
        bias = state.get("model.lin.bias")  # absent for a model fitted without an intercept
        self.weight = nn.Parameter(weight.clone(), requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias.to(weight.dtype).clone(), requires_grad=False)
        for name in ("x_mean", "x_scale"):
            self.register_buffer(name, state[name].to(weight.dtype).clone())
        for name in ("y_mean", "y_scale"):  # float64, as the module holds them: the target's mean goes back on
            self.register_buffer(name, state[name].to(torch.float64).clone())  # in float64 (1e9 + signal)
        self.standardize = standardize  # the target is centred (and scaled) whenever the features are

    x_mean: Tensor  # buffers, registered above (declared for type checkers)
    x_scale: Tensor
    y_mean: Tensor
    y_scale: Tensor

    def forward(self, features: Tensor) -> Tensor:
        x = (features - self.x_mean) / self.x_scale if self.standardize else features
        out = nn.functional.linear(x, self.weight, self.bias)
        return out.to(torch.float64) * self.y_scale + self.y_mean if self.standardize else out


def export_main(args: list[str] | None = None) -> Path:
    """Parse ``linreg export`` flags with jsonargparse, as LightningCLI parses the other subcommands."""
    parser = ArgumentParser(
        prog="linreg export",
        description="Export a linreg checkpoint as a standalone ONNX (.onnx) or torch.export (.pt2) program.",
    )
    parser.add_argument("--ckpt_path", type=str, required=True, help="a checkpoint from `linreg fit`, or `last`")
    parser.add_argument("--output", type=str, required=True, help="model.onnx or model.pt2 (the format)")
    parser.add_argument("--overwrite", type=bool, default=False, help="replace an existing --output")
    cfg = parser.parse_args(args)
    existed = Path(cfg.output).exists()
    main_thread = threading.current_thread() is threading.main_thread()  # where signal handlers can be set
    previous = signal.signal(signal.SIGTERM, _terminate) if main_thread else None
    try:
        return export(cfg.ckpt_path, cfg.output, cfg.overwrite)
    except (KeyboardInterrupt, _Terminated) as exc:
        # atomic_write has removed its temporary file on the way out: the output is as it was.
        by, code = ("SIGTERM", 143) if isinstance(exc, _Terminated) else ("Ctrl-C", 130)
        left = "left as it was" if existed else "not written"
        print(f"linreg: export stopped by {by}; {cfg.output} {left}", file=sys.stderr)
        raise SystemExit(code) from None
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)


class _Terminated(BaseException):
    """SIGTERM during an export, raised as Ctrl-C is, so that the temporary file is removed on the way out."""


def _terminate(signum: int, frame: Any) -> None:
    raise _Terminated


def export(ckpt_path: str | Path, output: str | Path, overwrite: bool = False) -> Path:
    """Check the output first (no work is wasted on a file we would refuse to write), then export."""
    out = Path(output)
    fmt = check_export_output(out, overwrite)
    if fmt == "onnx":
        require_onnx_stack(out)
    ckpt_file, ckpt = open_checkpoint(ckpt_path)
    hp = ckpt["hyper_parameters"]
    state = ckpt["state_dict"]
    levels = (ckpt.get("LinRegData") or {}).get("categories") or {}
    if levels:  # the program takes numbers: fed raw codes, it would be a different model, silently
        raise LinRegError(
            f"--ckpt_path {ckpt_file}: the model encodes categorical column(s) {list(levels)} as indicators, one "
            "per level, which an exported program cannot make from the raw labels; predict with `linreg predict`, "
            "or fit on numeric columns only to export"
        )
    missing = [k for k in ("model.lin.weight", "x_mean", "x_scale", "y_mean", "y_scale") if k not in state]
    if missing:
        raise LinRegError(f"--ckpt_path {ckpt_file}: no {', '.join(missing)} in its weights; not a linreg model")
    predictor = Predictor(state, bool(hp.get("standardize"))).eval()
    k, d = predictor.weight.shape
    meta = metadata(hp, d, k, ckpt_file)
    data = onnx_bytes(predictor, meta) if fmt == "onnx" else pt2_bytes(predictor, meta)
    atomic_write(out, lambda tmp: tmp.write_bytes(data), overwrite)
    print(f"linreg: exported {ckpt_file} to {out} ({fmt}, {_count(d, 'feature')} → {_count(k, 'target')})")
    return out


def check_export_output(out: Path, overwrite: bool) -> str:
    """The format from the extension; refuse what we could not or should not write, one line each."""
    return FORMATS[check_output(out, overwrite, tuple(FORMATS)).suffix.lower()]


def require_onnx_stack(out: Path) -> None:
    """ONNX export is an optional extra: say how to get it instead of an ImportError traceback."""
    missing = []
    for name in ("onnx", "onnxscript", "onnxruntime"):
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise LinRegError(
            f"--output {out} needs {', '.join(missing)}, not installed here: "
            'pip install "linreg[export]" (or export to .pt2, which needs only torch)'
        )


def metadata(hp: dict[str, Any], d: int, k: int, ckpt_file: Path) -> dict[str, Any]:
    """What a user of the file needs and the graph cannot say: the column order, and where it came from."""
    meta: dict[str, Any] = {
        "feature_names": list(hp.get("feature_names") or default_names("x", d)),
        "target_names": list(hp.get("target_names") or default_names("y", k)),
        "linreg_version": linreg.__version__,
    }
    summary_file = ckpt_file.parent / "summary.json"
    if summary_file.is_file():
        try:
            summary = json.loads(summary_file.read_text())
        except (OSError, ValueError):
            summary = {}  # a damaged summary loses the provenance, not the export
        if not isinstance(summary, dict):
            summary = {}
        r2 = (summary.get("metrics") or {}).get("train/r2")
        if r2 is not None:
            meta["train_r2"] = r2
        if summary.get("rows") is not None:  # older summaries have no row count
            meta["train_rows"] = summary["rows"]
    return meta


def _example(predictor: Predictor) -> tuple[Tensor]:
    # Two rows: with one, the exporters may specialize the batch dimension to 1.
    return (torch.zeros(2, predictor.weight.shape[1], dtype=predictor.weight.dtype),)


def _dynamic_batch() -> dict[str, dict[int, Any]]:
    return {INPUT: {0: torch.export.Dim("batch")}}


def onnx_bytes(predictor: Predictor, meta: dict[str, Any]) -> bytes:
    """The ONNX program with the metadata in ``metadata_props``, checked before anything is written."""
    import onnx

    with _quiet_onnx_exporter():
        program = torch.onnx.export(
            predictor,
            _example(predictor),
            dynamo=True,
            input_names=[INPUT],
            output_names=[OUTPUT],
            dynamic_shapes=_dynamic_batch(),
            verbose=False,
        )
    assert program is not None  # torch.onnx.export returns the program under dynamo=True
    proto = program.model_proto
    # ONNX metadata values are strings: lists and numbers as JSON, the version as it is.
    onnx.helper.set_model_props(proto, {k: v if isinstance(v, str) else json.dumps(v) for k, v in meta.items()})
    onnx.checker.check_model(proto, full_check=True)
    data: bytes = proto.SerializeToString()
    return data


def pt2_bytes(predictor: Predictor, meta: dict[str, Any]) -> bytes:
    """The torch.export program with the metadata as ``linreg.json``; to memory, as torch.export.save
    warns about any file name not ending in .pt2 (the temporary file beside the output)."""
    program = torch.export.export(predictor, _example(predictor), dynamic_shapes=_dynamic_batch())
    buffer = io.BytesIO()
    torch.export.save(program, buffer, extra_files={METADATA_FILE: json.dumps(meta)})
    return buffer.getvalue()


@contextmanager
def _quiet_onnx_exporter() -> Iterator[None]:
    """The exporter logs a warning per torchvision op it cannot register: noise for a linear model."""
    log = logging.getLogger("torch.onnx")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"
