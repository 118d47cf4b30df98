"""``--ckpt_path``: checkpoints loaded weights-only, checked to be linreg's, found by ``last``, and the
settings a run takes from them.

A checkpoint is a file a user hands us, so it gets the checks any input gets: a pickled payload never
runs (weights-only load), and a file that is not linreg's, or whose weights do not match its own
description, is one clear line, not a traceback.
"""

from __future__ import annotations

import inspect
import pickle
import sys
from pathlib import Path
from typing import Any

import torch
from jsonargparse import Namespace

from linreg.errors import LinRegError

# Settings that describe the data a checkpoint was trained on: (data flag, model hyperparameter).
DATA_FROM_CHECKPOINT = (
    ("features", "feature_names"),
    ("target", "target_names"),
    ("standardize", "standardize"),
    ("standardize_target", "standardize_target"),
)
MODEL_FROM_CHECKPOINT = ("lr", "momentum", "weight_decay", "fit_intercept", "solver")


def load_checkpoint(path: str | Path, consistent: bool = True) -> dict[str, Any]:
    """Load a checkpoint weights-only (a pickled payload never runs) and check it is linreg's (and,
    with ``consistent``, that its weights are those its hyperparameters describe, and finite)."""
    p = Path(path)
    if not p.is_file():
        raise LinRegError(f"--ckpt_path {p}: no such file")
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        reason = str(exc).strip().splitlines()[0]
        raise LinRegError(f"--ckpt_path {p}: refused, not a plain checkpoint ({reason})") from exc
    except Exception as exc:
        raise LinRegError(
            f"--ckpt_path {p}: not a readable checkpoint (truncated or another format: {type(exc).__name__})"
        ) from exc
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "in_features" not in ckpt.get("hyper_parameters", {}):
        raise LinRegError(f"--ckpt_path {p}: not a linreg checkpoint (no model hyperparameters or weights)")
    if consistent:
        _check_consistent(p, ckpt)
    return ckpt


def _check_consistent(path: Path, ckpt: dict[str, Any]) -> None:
    """The weights must be those of the model the hyperparameters describe, and finite: anything else
    was edited or damaged, and would fail later as a size mismatch (a traceback) or predict NaN."""
    from linreg.training.module import LinRegModule

    hp, state = ckpt["hyper_parameters"], ckpt["state_dict"]
    try:
        known = inspect.signature(LinRegModule).parameters  # LightningCLI adds its own keys (_instantiator)
        with torch.random.fork_rng(devices=[]):  # its random init must not move the run's seeded generator
            expected = LinRegModule(**{k: v for k, v in hp.items() if k in known}).state_dict()
    except (TypeError, ValueError, LinRegError) as exc:
        raise LinRegError(f"--ckpt_path {path}: its hyperparameters do not describe a linreg model ({exc})") from exc
    # Every key (Lightning loads strictly), and the shapes of the weights and what forward() applies
    # (a metric's running state takes its shape from the first update).
    model = ("model.", "averaged.module.", "x_", "y_")
    shapes = {k: tuple(v.shape) if k.startswith(model) else () for k, v in expected.items()}
    found = {k: tuple(v.shape) if k.startswith(model) else () for k, v in state.items() if isinstance(v, torch.Tensor)}
    if shapes != found:
        differ = sorted(k for k in shapes.keys() | found.keys() if shapes.get(k) != found.get(k))[0]
        raise LinRegError(
            f"--ckpt_path {path}: inconsistent checkpoint: its hyperparameters say {hp['in_features']} feature(s), "
            f"{hp.get('out_features', 1)} target(s), fit_intercept {hp.get('fit_intercept', True)}, so {differ} "
            f"should be {_shape(shapes.get(differ))}, but it is {_shape(found.get(differ))}"
        )
    for name, count in (("feature_names", hp["in_features"]), ("target_names", hp.get("out_features", 1))):
        if hp.get(name) is not None and len(hp[name]) != count:
            raise LinRegError(
                f"--ckpt_path {path}: inconsistent checkpoint: {len(hp[name])} {name} for {count} columns"
            )
    bad = [k for k, v in state.items() if k.startswith(model) and v.is_floating_point() and not v.isfinite().all()]
    if bad:
        raise LinRegError(f"--ckpt_path {path}: the checkpoint's weights are not finite (NaN or inf in {bad[0]})")


def _shape(shape: tuple[int, ...] | None) -> str:
    return "absent" if shape is None else f"of shape {shape}"


def open_checkpoint(ckpt_path: str | Path) -> tuple[Path, dict[str, Any]]:
    """``--ckpt_path``: a file, or ``last``; read once, and checked."""
    if str(ckpt_path) != "last":
        return Path(ckpt_path), load_checkpoint(ckpt_path)
    path, ckpt = _find_last_checkpoint(Path("."))  # the default logger writes ./lightning_logs
    _check_consistent(path, ckpt)
    return path, ckpt


def _find_last_checkpoint(root: Path) -> tuple[Path, dict[str, Any]]:
    """The newest readable ``last*.ckpt`` the default logger (``root/lightning_logs``) or, with
    ``--trainer.logger false``, Lightning itself (``root/checkpoints``) wrote, and its contents: what
    ``--ckpt_path last`` means.

    A newer file that cannot be read (left by an older linreg or another tool after a full disk or a
    kill) is skipped with a note, so the good one before it is still found; the one taken is named.
    One that reads but is not a sound linreg checkpoint is taken, and then refused by the caller's
    checks: falling back past it would silently use an older run's model."""
    found = [*root.glob("lightning_logs/version_*/checkpoints/last*.ckpt"), *root.glob("checkpoints/last*.ckpt")]
    if not found:
        raise LinRegError(f"--ckpt_path last: no last.ckpt under {root / 'lightning_logs'} or {root / 'checkpoints'}")
    for path in sorted(found, key=lambda p: p.stat().st_mtime, reverse=True):
        try:
            ckpt = load_checkpoint(path, consistent=False)
        except LinRegError as exc:
            why = str(exc).removeprefix(f"--ckpt_path {path}: ")
            print(f"linreg: --ckpt_path last: skipped {path} ({why})", file=sys.stderr)
            continue
        print(f"linreg: --ckpt_path last: {path}", file=sys.stderr)
        return path, ckpt
    raise LinRegError(f"--ckpt_path last: none of the {len(found)} last*.ckpt files under {root} can be used")


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
            raise LinRegError(
                f"--{key} {_show(value)} contradicts the checkpoint {ckpt_path}, which was trained "
                f"with {_show(saved)}; drop the flag or train a new model"
            )
    cfg[key] = saved


def _show(value: Any) -> str:
    """A value as the user would type it on the command line."""
    return str(value).lower() if isinstance(value, bool) else repr(value)
