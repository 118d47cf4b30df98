"""Checkpoints as input: loaded weights-only, checked to be linreg's, found by ``--ckpt_path last``.

A checkpoint is a file a user hands us, so it gets the checks any input gets: a pickled payload never
runs (weights-only load), and a file that is not linreg's is one clear line, not a traceback.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch

from linreg.errors import LinregError


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint weights-only (a pickled payload never runs) and check it is linreg's."""
    p = Path(path)
    if not p.is_file():
        raise LinregError(f"--ckpt_path {p}: no such file")
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        reason = str(exc).strip().splitlines()[0]
        raise LinregError(f"--ckpt_path {p}: refused, not a plain checkpoint ({reason})") from exc
    except Exception as exc:
        raise LinregError(
            f"--ckpt_path {p}: not a readable checkpoint (truncated or another format: {type(exc).__name__})"
        ) from exc
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "in_features" not in ckpt.get("hyper_parameters", {}):
        raise LinregError(f"--ckpt_path {p}: not a linreg checkpoint (no model hyperparameters or weights)")
    return ckpt


def find_last_checkpoint(root: str | Path) -> Path:
    """The newest ``last*.ckpt`` the default logger (``root/lightning_logs``) or, with
    ``--trainer.logger false``, Lightning itself (``root/checkpoints``) wrote: what ``--ckpt_path last`` means."""
    root = Path(root)
    found = [*root.glob("lightning_logs/version_*/checkpoints/last*.ckpt"), *root.glob("checkpoints/last*.ckpt")]
    if not found:
        raise LinregError(f"--ckpt_path last: no last.ckpt under {root / 'lightning_logs'} or {root / 'checkpoints'}")
    return max(found, key=lambda p: p.stat().st_mtime)
