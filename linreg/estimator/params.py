"""The estimator's parameter checks (the CLI's, as scikit-learn wants them: one ``ValueError`` naming the
parameter, raised by ``fit``), the conversion of its inputs, and its quiet mode."""

from __future__ import annotations

import contextlib
import logging
import math
import warnings
from collections.abc import Iterator
from numbers import Integral, Real
from typing import Any

import torch

from linreg.cli.app import check_accelerator
from linreg.cli.main import NOISE
from linreg.errors import LinRegError
from linreg.lstsq.robust import COV_TYPES


class ParameterError(LinRegError, ValueError):
    """A bad parameter or input: linreg's one error type, and the ``ValueError`` scikit-learn expects."""


def check_params(est: Any) -> None:
    """The CLI's checks of the same flags, each one ``ValueError`` naming the parameter."""

    def bad(name: str, expected: str) -> ParameterError:
        return ParameterError(f"{type(est).__name__}: {name} must be {expected}, got {getattr(est, name)!r}")

    def number(value: Any) -> bool:
        return isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(float(value))

    def integer(value: Any) -> bool:
        return isinstance(value, Integral) and not isinstance(value, bool)

    if est.solver not in ("sgd", "lstsq"):
        raise bad("solver", "'sgd' or 'lstsq'")
    if est.lr != "auto" and not (number(est.lr) and est.lr > 0):
        raise bad("lr", "a positive number or 'auto'")
    if est.momentum != "auto" and not (number(est.momentum) and 0 <= est.momentum < 1):
        raise bad("momentum", "in [0, 1) or 'auto'")
    for name in ("weight_decay", "l2", "l1"):
        if not (number(getattr(est, name)) and getattr(est, name) >= 0):
            raise bad(name, "a number at least 0")
    if est.cov_type not in COV_TYPES:
        raise bad("cov_type", " or ".join(", ".join(repr(c) for c in COV_TYPES).rsplit(", ", 1)))
    if est.tol != "auto" and not (number(est.tol) and est.tol >= 0):
        raise bad("tol", "a number at least 0 or 'auto'")
    for name, allowed in (("average", "auto"), ("standardize", "auto"), ("fit_intercept", None)):
        value = getattr(est, name)
        if not isinstance(value, bool) and value != allowed:
            raise bad(name, "True or False" + (f" or {allowed!r}" if allowed else ""))
    for name in ("standardize_target", "verbose"):
        if not isinstance(getattr(est, name), bool):
            raise bad(name, "True or False")
    if est.standardize_target and est.standardize is False:
        raise bad("standardize_target", "False when standardize is False (it needs standardize)")
    if est.batch_size is not None and not (integer(est.batch_size) and est.batch_size >= 1):
        raise bad("batch_size", "None (all rows) or an integer at least 1")
    if est.shuffle not in ("blocks", "rows", "none"):
        raise bad("shuffle", "'blocks', 'rows' or 'none'")
    if not (number(est.val_fraction) and 0 <= est.val_fraction < 1):
        raise bad("val_fraction", "in [0, 1)")
    if not integer(est.seed):
        raise bad("seed", "an integer")
    if not (integer(est.rows_per_step) and est.rows_per_step >= 0):
        raise bad("rows_per_step", "an integer at least 0")

    def limit(value: Any) -> bool:
        return integer(value) and (value >= 1 or value == -1)

    if est.max_epochs is not None and not limit(est.max_epochs):
        raise bad("max_epochs", "None (linreg's stopping rule), -1 (no limit) or an integer at least 1")
    if not limit(est.max_steps):
        raise bad("max_steps", "-1 (no limit) or an integer at least 1")
    if str(est.precision).startswith(("16-true", "bf16-true", "transformer-engine")):
        raise bad("precision", "'32-true', '64-true', '16-mixed' or 'bf16-mixed' (16-bit weights hold 3 digits)")
    if isinstance(est.strategy, str) and est.strategy.startswith(("ddp_spawn", "ddp_fork", "ddp_notebook")):
        raise bad("strategy", "'auto' or 'ddp' (spawned processes keep their results)")
    if est.trainer_kwargs is not None and not isinstance(est.trainer_kwargs, dict):
        raise bad("trainer_kwargs", "None or a dict of lightning.Trainer arguments")
    for flag, off in (("accumulate_grad_batches", 1), ("gradient_clip_val", None)):
        if (est.trainer_kwargs or {}).get(flag, off) not in (off, 0):
            raise ParameterError(
                f"{type(est).__name__}: trainer_kwargs {flag} is not supported: linreg runs its SGD updates itself "
                "(several per Lightning step); use a larger batch_size instead"
            )
    try:
        check_accelerator(est.accelerator)
    except LinRegError as exc:
        raise ParameterError(f"{type(est).__name__}: accelerator: {str(exc).split(': ', 1)[-1]}") from exc


def as_numpy(a: Any) -> Any:
    """A torch tensor as numpy (scikit-learn's validation reads numpy and pandas)."""
    return a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else a


def refuse_labels(X: Any) -> None:
    """A DataFrame's text and ``category`` columns, named: scikit-learn's own refusal ("could not convert
    string to float") names neither the column nor the way to encode it. Bool columns are 0 and 1, as before."""
    dtypes = getattr(X, "dtypes", None)
    if dtypes is None:
        return
    import pandas as pd

    labels = [
        str(c)
        for c, t in dtypes.items()
        if not (pd.api.types.is_numeric_dtype(t) or pd.api.types.is_bool_dtype(t)) or isinstance(t, pd.CategoricalDtype)
    ]
    if labels:
        raise ParameterError(
            f"LinearRegressor takes numbers; column(s) {labels} hold labels (text or category): encode "
            "them first (pandas.get_dummies(X, columns=..., drop_first=True), or scikit-learn's OneHotEncoder), "
            "or fit from a table with `linreg fit`, which encodes them (--data.categorical)"
        )


def target_names(y: Any) -> list[str] | None:
    """A pandas target's name(s), kept as the model's target names."""
    name = getattr(y, "name", None)
    if isinstance(name, str):
        return [name]
    columns = getattr(y, "columns", None)
    return [str(c) for c in columns] if columns is not None else None


# Beyond the CLI's NOISE: a torch deprecation inside Lightning's DDP all_gather (the closed form's R factors).
QUIET_TOO = (r".*all_gather is deprecated.*",)


@contextlib.contextmanager
def quiet(verbose: bool) -> Iterator[None]:
    """No Lightning banners (devices, tips, DDP's start) or warnings linreg's CLI silences, unless ``verbose``."""
    logs = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric")]
    levels = [log.level for log in logs]
    with warnings.catch_warnings():
        for pattern in (*NOISE, *QUIET_TOO):
            warnings.filterwarnings("ignore", message=pattern)
        if not verbose:
            for log in logs:
                log.setLevel(logging.WARNING)
        try:
            yield
        finally:
            for log, level in zip(logs, levels):
                log.setLevel(level)
