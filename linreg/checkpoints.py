"""Checkpoints as input: loaded weights-only, checked to be linreg's, found by ``--ckpt_path last``.

A checkpoint is a file a user hands us, so it gets the checks any input gets: a pickled payload never
runs (weights-only load), and a file that is not linreg's is one clear line, not a traceback.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch
from jsonargparse import Namespace

from linreg.errors import LinregError

# Settings that describe the data a checkpoint was trained on: (data flag, model hyperparameter).
DATA_FROM_CHECKPOINT = (
    ("features", "feature_names"),
    ("target", "target_names"),
    ("standardize", "standardize"),
    ("standardize_target", "standardize_target"),
)
MODEL_FROM_CHECKPOINT = ("lr", "momentum", "weight_decay", "fit_intercept", "solver")


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


def take_checkpoint_settings(cfg: Namespace, given: Namespace | None, ckpt: dict[str, Any]) -> None:
    """Set the model and data settings a checkpoint was trained with into the run's config.

    A value the user gave (a flag or a config file, even one equal to the default) must agree with
    the checkpoint: Lightning would silently let the checkpoint win, and the user would never know.
    A float64 model predicts in float64 unless a precision is given.
    """
    path, hp = cfg.ckpt_path, ckpt["hyper_parameters"]
    weight = ckpt["state_dict"].get("model.lin.weight")
    user_precision = given is not None and given.get("trainer.precision")
    if weight is not None and weight.dtype == torch.float64 and not user_precision:
        cfg.trainer.precision = "64-true"
    for data_key, model_key in DATA_FROM_CHECKPOINT:
        _take(cfg, given, f"data.{data_key}", hp.get(model_key), path)
    for key in MODEL_FROM_CHECKPOINT:
        _take(cfg, given, f"model.{key}", hp.get(key), path)


def _take(cfg: Namespace, given: Namespace | None, key: str, saved: Any, ckpt_path: str) -> None:
    if saved is None:
        return
    # None: "from the data", as in a saved config; "auto": whatever the checkpoint settled on.
    if given is not None and given.get(key) not in (None, "auto"):
        value = given[key]
        same = value == saved or (isinstance(saved, list) and isinstance(value, str) and [value] == saved)
        if not same:
            raise LinregError(
                f"--{key} {_show(value)} contradicts the checkpoint {ckpt_path}, which was trained "
                f"with {_show(saved)}; drop the flag or train a new model"
            )
    cfg[key] = saved


def _show(value: Any) -> str:
    """A value as the user would type it on the command line."""
    return str(value).lower() if isinstance(value, bool) else repr(value)
