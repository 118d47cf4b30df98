"""``load``: a checkpoint written by ``linreg fit`` (or ``LinearRegressor.save``) as a fitted estimator."""

from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import torch

from linreg.cli.checkpoints import load_checkpoint
from linreg.data.tables import default_names
from linreg.estimator.estimator import MODEL_PARAMS, LinearRegressor
from linreg.training.module import LinRegModule


def load(path: str | Path) -> LinearRegressor:
    """A fitted ``LinearRegressor`` from a linreg checkpoint, read weights-only and checked as
    ``--ckpt_path`` reads it; its ``predict`` is ``linreg predict``'s arithmetic (same weights, same
    precision, same standardization), so the two give the same numbers.

    Its parameters are the checkpoint's; ``optimum_`` is None (a checkpoint holds the weights, not
    the least-squares pass). Feature names stored by a fit on a table become ``feature_names_in_``,
    so a DataFrame's columns are checked against them.
    """
    ckpt = load_checkpoint(path)
    hp = ckpt["hyper_parameters"]
    known = inspect.signature(LinRegModule).parameters  # LightningCLI adds its own keys (_instantiator)
    with torch.random.fork_rng(devices=[]):  # the module's random init must not move the caller's generator
        module = LinRegModule(**{k: v for k, v in hp.items() if k in known})
    float64 = ckpt["state_dict"]["model.lin.weight"].dtype == torch.float64
    if float64:  # a 64-true fit predicts in float64, as `linreg predict` does with it
        module.double()
    module.load_state_dict(ckpt["state_dict"])
    module.intervals = ckpt.get("linreg_intervals")  # what on_load_checkpoint takes, for predict_interval
    est = LinearRegressor(
        **{name: hp[name] for name in MODEL_PARAMS if name in hp},
        standardize=bool(hp.get("standardize", False)),
        standardize_target=bool(hp.get("standardize_target", False)),
        precision="64-true" if float64 else "32-true",
    )
    d, k = module.hparams.in_features, module.hparams.out_features
    names = hp.get("feature_names")
    if names and list(names) != default_names("x", d):
        est.feature_names_in_ = np.asarray([str(n) for n in names], dtype=object)  # as scikit-learn stores them
    est.n_features_in_ = d
    est._set_fitted(module, 1 if k == 1 else 2)
    est.optimum_ = None
    est.n_iter_ = int(ckpt.get("epoch", 0))
    return est
