"""``--ckpt_path``: checkpoints loaded weights-only, checked to be linreg's, found by ``last``, and the
settings a run takes from them. About 300 lines: loading, checking and finding a checkpoint are one
file's job, since ``last`` must check what it finds exactly as a named path is checked.

A checkpoint is a file a user hands us, so it gets the checks any input gets: a pickled payload never
runs (weights-only load), and a file that is not linreg's, or whose weights do not match its own
description, is one clear line, not a traceback.
"""

from __future__ import annotations

import glob
import inspect
import os
import pickle
import sys
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from jsonargparse import Namespace
from lightning.fabric.utilities.rank_zero import rank_zero_only

import linreg
from linreg.errors import LinRegError

# Settings that describe the data a checkpoint was trained on: (data flag, model hyperparameter).
DATA_FROM_CHECKPOINT = (
    ("features", "feature_names"),
    ("target", "target_names"),
    ("standardize", "standardize"),
    ("standardize_target", "standardize_target"),
)
MODEL_FROM_CHECKPOINT = ("lr", "momentum", "weight_decay", "fit_intercept", "solver")
# What a checkpoint must hold for linreg, whichever Lightning wrote it.
NEEDED = (("state_dict", "state_dict (the weights)"), ("hyper_parameters", "hyper_parameters (the model's settings)"))


def load_checkpoint(path: str | Path, consistent: bool = True) -> dict[str, Any]:
    """Load a checkpoint weights-only (a pickled payload never runs) and check it is linreg's (and,
    with ``consistent``, that its weights are those its hyperparameters describe, and finite)."""
    p = Path(path)
    if p.is_dir():
        found = sorted(p.rglob("*.ckpt"), key=lambda f: f.stat().st_mtime, reverse=True)
        shown = ", ".join(str(f) for f in found[:5]) + (f" and {len(found) - 5} more" if len(found) > 5 else "")
        raise LinRegError(f"--ckpt_path {p} is a folder: name a .ckpt file inside it (found: {shown or 'none'})")
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
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict) and "hyper_parameters" not in ckpt:
        raise LinRegError(f"--ckpt_path {p}: not a linreg checkpoint (no model hyperparameters or weights)")
    # An older Lightning wrote other keys around these two; what linreg needs is these two.
    missing = [why for key, why in NEEDED if not isinstance(ckpt.get(key), dict)]
    if not missing and "in_features" not in ckpt["hyper_parameters"]:
        missing = ["in_features in its hyper_parameters (the model's size)"]
    if missing:
        raise LinRegError(f"--ckpt_path {p}: not a linreg checkpoint: no {' and no '.join(missing)}")
    if consistent:
        _check_consistent(p, ckpt)
    return ckpt


def _check_known_values(path: Path, ckpt: dict[str, Any]) -> None:
    """A hyperparameter this version cannot take (``solver: qr``, from a newer linreg or an edit) is
    named with what this version accepts and the version that wrote it, not a parser's traceback."""
    from linreg.training.module import LinRegModule

    hints = typing.get_type_hints(LinRegModule.__init__)
    for key, value in ckpt["hyper_parameters"].items():
        hint = hints.get(key)
        if hint is not None and not _accepts(hint, value):
            wrote = ckpt.get("linreg_version")
            by = f"linreg {wrote}" if wrote else "a linreg that did not record its version"
            raise LinRegError(
                f"--ckpt_path {path}: its hyperparameter {key} is {value!r}, which this linreg "
                f"({linreg.__version__}) does not know; it accepts {_accepted(hint)}; the checkpoint was "
                f"written by {by}"
            )


def _accepts(hint: Any, value: Any) -> bool:
    """Whether ``value`` fits a hyperparameter's type hint (a Literal, a number, a bool, a list, a union)."""
    origin = typing.get_origin(hint)
    if origin is typing.Literal:
        return value in typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_accepts(h, value) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint in (int, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is bool:
        return isinstance(value, bool)
    if origin is list:
        return isinstance(value, list)
    return True  # a type linreg does not use: the parser judges it


def _accepted(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin is typing.Literal:
        return ", ".join(repr(v) for v in typing.get_args(hint))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_accepted(h) for h in typing.get_args(hint))
    names = {int: "an integer", float: "a number", bool: "true or false", type(None): "null"}
    return names.get(hint, "a list" if origin is list else str(hint))


def _check_consistent(path: Path, ckpt: dict[str, Any]) -> None:
    """The weights must be those of the model the hyperparameters describe, and finite: anything else
    was edited or damaged, and would fail later as a size mismatch (a traceback) or predict NaN."""
    from linreg.training.module import LinRegModule

    _check_known_values(path, ckpt)
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


def open_checkpoint(ckpt_path: str | Path, searched: Sequence[str] = ()) -> tuple[Path, dict[str, Any]]:
    """``--ckpt_path``: a file, or ``last``: the newest ``last*.ckpt`` matching the globs ``searched``
    (``last_checkpoint_globs``); read once, and checked."""
    if str(ckpt_path) != "last":
        return Path(ckpt_path), load_checkpoint(ckpt_path)
    path, ckpt = _find_last_checkpoint(searched or last_checkpoint_globs(None))
    _check_consistent(path, ckpt)
    return path, ckpt


def last_checkpoint_globs(trainer: Namespace | None) -> list[str]:
    """Where ``--ckpt_path last`` looks: the run family of the active logger (the first one), the
    folder its runs share (``save_dir/name``), where Lightning puts their checkpoints
    (``save_dir/name/<version>/checkpoints``). Without a logger: ``default_root_dir/checkpoints``,
    and the default logger's family (``default_root_dir/lightning_logs``)."""
    settings: Any = trainer or {}
    root = str(settings.get("default_root_dir") or ".")
    logger = settings.get("logger", True)
    if isinstance(logger, list):
        logger = logger[0] if logger else False
    if logger is False:
        return [f"{root}/checkpoints/last*.ckpt", f"{root}/lightning_logs/*/checkpoints/last*.ckpt"]
    if logger is None or logger is True:
        return [f"{root}/lightning_logs/*/checkpoints/last*.ckpt"]
    args = logger.get("init_args") or {}
    save_dir = glob.escape(str(args.get("save_dir") or root))
    if "name" not in args:  # a logger whose runs are named otherwise (MLFlow: experiment/run): any depth
        return [f"{save_dir}/**/checkpoints/last*.ckpt"]
    name = glob.escape(str(args["name"])) if args["name"] else ""
    return [os.path.join(save_dir, name, "*", "checkpoints", "last*.ckpt")]


def _find_last_checkpoint(searched: Sequence[str]) -> tuple[Path, dict[str, Any]]:
    """The newest readable ``last*.ckpt`` of the run family, and its contents: what ``--ckpt_path
    last`` means.

    A newer file that cannot be read (left by an older linreg or another tool after a full disk or a
    kill) is skipped with a note, so the good one before it is still found; the one taken is named.
    One that reads but is not a sound linreg checkpoint is taken, and then refused by the caller's
    checks: falling back past it would silently use an older run's model."""
    found = sorted({Path(f) for pattern in searched for f in glob.glob(pattern, recursive=True)})
    where = " or ".join(str(Path(pattern).parent) for pattern in searched)
    if not found:
        raise LinRegError(f"--ckpt_path last: no last.ckpt in {where}")
    for path in sorted(found, key=lambda p: p.stat().st_mtime, reverse=True):
        try:
            ckpt = load_checkpoint(path, consistent=False)
        except LinRegError as exc:
            why = str(exc).removeprefix(f"--ckpt_path {path}: ")
            print(f"linreg: --ckpt_path last: skipped {path} ({why})", file=sys.stderr)
            continue
        print(f"linreg: --ckpt_path last: {path}", file=sys.stderr)
        return path, ckpt
    raise LinRegError(f"--ckpt_path last: none of the {len(found)} last*.ckpt files in {where} can be used")


def check_resumable(path: Path, ckpt: dict[str, Any]) -> None:
    """A fit resumes the optimizer and the loops as well as the weights: a checkpoint without them (an
    older Lightning's, or one saved weights-only) serves validate, test and predict, not a resume."""
    missing = [key for key in ("optimizer_states", "loops", "epoch", "global_step") if key not in ckpt]
    if missing:
        raise LinRegError(
            f"--ckpt_path {path} holds the weights but not what a fit resumes from (no {', '.join(missing)}: "
            "an older Lightning's checkpoint, or a weights-only one); validate, test and predict can use it"
        )


def check_resumed_data(ckpt_file: Path, ckpt: dict[str, Any], data_path: str | None) -> None:
    """``fit --ckpt_path last`` takes the newest checkpoint of the run family, whatever it was trained
    on: one trained on another table (another path, and other contents by its fingerprint) is an
    unrelated run, refused with both named. The same table edited since is the data module's to judge
    (a note, or a refusal in the middle of an epoch)."""
    from linreg.data.tables import fingerprint, fingerprint_change

    saved = (ckpt.get("LinRegData") or {}).get("train_table")
    saved_path = (ckpt.get("datamodule_hyper_parameters") or {}).get("path")
    if not saved or not saved_path or not data_path or os.path.abspath(saved_path) == os.path.abspath(data_path):
        return
    try:
        now = fingerprint(data_path)
    except (LinRegError, OSError):
        return  # the data module names what is wrong with this table
    change = fingerprint_change(saved, now)
    if change:
        raise LinRegError(
            f"--ckpt_path last took {ckpt_file}, trained on {saved_path}, not on this fit's --data.path {data_path} "
            f"(other data: {change}); resume it with --data.path {saved_path}, name a checkpoint with "
            "--ckpt_path FILE, or start a new fit without --ckpt_path"
        )


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
    # the sample weights' column: never a feature, so a predict table may hold it (and validate weighs by it)
    _take(cfg, given, "data.weights", (ckpt.get("datamodule_hyper_parameters") or {}).get("weights"), path)
    for key in MODEL_FROM_CHECKPOINT:
        _take(cfg, given, f"model.{key}", hp.get(key), path)
    # The levels behind the model's indicator features ({} when it has none: a bool column stays a number);
    # absent from a checkpoint written before categorical columns, whose features were all numbers.
    levels = (ckpt.get("LinRegData") or {}).get("categories", {})
    _take(cfg, given, "data.categorical", levels, path)
    # The other model settings (penalties, averaging, tolerance): an omitted one is the checkpoint's,
    # not the default; a given one that differs is used, and named.
    differ = []
    for key, saved in hp.items():
        if key in MODEL_FROM_CHECKPOINT or key.startswith("_") or key not in cfg.model:
            continue
        value = given.get(f"model.{key}") if given is not None else None
        if value is None:
            cfg[f"model.{key}"] = saved
        elif value != saved:
            differ.append(f"--model.{key} {_show(value)} (the checkpoint: {_show(saved)})")
    if differ and _rank() == 0:
        print(
            f"linreg: note: {', '.join(differ)} differ from the checkpoint {path}; this run uses the values given",
            file=sys.stderr,
        )


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


def _rank() -> int:
    """This process's global rank, as Lightning records it on ``rank_zero_only`` (an attribute it sets)."""
    return int(getattr(rank_zero_only, "rank", 0))
