"""``LinearRegressor``: linreg's fit as a scikit-learn estimator, over the same Lightning objects as the CLI.

``fit`` builds a ``LinRegData`` from the arrays, a ``LinRegModule`` and a ``lightning.Trainer`` and runs
``trainer.fit``: the same closed-form pass, stopping rule, automatic step and standardization as
``linreg fit``. What scikit-learn asks of an estimator (parameters stored untouched by ``__init__``,
fitted attributes ending in ``_``, clone, pickle, ``check_estimator``) is kept here, not in the module.

One file over 300 lines because it is one scikit-learn class: fit, predict, summary, predict_interval and
the files (save, export) all read the same fitted attributes; the checks and conversions are in params.py.
"""

from __future__ import annotations

import contextlib
import io
import tempfile
from numbers import Real
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.utils.validation import check_is_fitted, validate_data

from linreg.cli.export import export as export_checkpoint
from linreg.data.datamodule import LinRegData
from linreg.data.tables import default_names
from linreg.errors import LinRegError
from linreg.estimator.params import ParameterError, as_numpy, check_params, quiet, refuse_labels, target_names
from linreg.lstsq.robust import interval_columns
from linreg.training.checkpoint_io import AtomicCheckpointIO
from linreg.training.exact import stored_covariance
from linreg.training.module import LinRegModule

# The parameters that are LinRegModule's hyperparameters, under the same names (``--model.*``).
MODEL_PARAMS = ("lr", "momentum", "weight_decay", "l2", "l1", "average", "tol", "fit_intercept", "solver", "cov_type")
# summary()'s inference columns, as statsmodels names them, and the keys of linreg's OLS inference. A robust
# covariance's statistics are z, with normal p-values and intervals: statsmodels then says "z" and "P>|z|".
COLUMNS = (("std err", "se"), ("t", "t"), ("P>|t|", "p"), ("[0.025", "ci_low"), ("0.975]", "ci_high"))
ROBUST_COLUMNS = {"t": "z", "P>|t|": "P>|z|"}
# predict_interval()'s columns, as statsmodels' summary_frame names them, and interval_columns' keys.
INTERVALS = (
    ("mean_ci_lower", "mean_lower"),
    ("mean_ci_upper", "mean_upper"),
    ("obs_ci_lower", "lower"),
    ("obs_ci_upper", "upper"),
)


class LinearRegressor(RegressorMixin, BaseEstimator):  # type: ignore[misc]  # scikit-learn ships no types
    """Linear regression fitted by linreg (SGD or the exact least-squares solver) through Lightning.

    The parameters are the CLI's flags with the CLI's defaults: ``--model.*`` (``solver`` .. ``cov_type``),
    ``--data.*`` (``batch_size`` .. ``rows_per_step``) and the common ``--trainer.*`` ones; anything else
    the Trainer takes goes in ``trainer_kwargs``, ``callbacks`` and ``logger``. Two defaults differ, for
    a library called many times in one process: no logger (the CLI writes ``lightning_logs``; pass
    ``logger=TensorBoardLogger(...)`` for the curves) and no progress bar unless ``verbose``.

    Fitted attributes: ``coef_`` and ``intercept_`` (in the data's units, as scikit-learn's
    ``LinearRegression`` shapes them), ``n_features_in_``, ``feature_names_in_`` (for a DataFrame),
    ``module_`` (the trained ``LinRegModule``), ``optimum_`` (the least-squares optimum and the fit's
    excess over it, as the CLI summary reports them; ``None`` after ``load``), ``n_iter_`` (epochs).
    """

    def __init__(
        self,
        solver: str = "sgd",
        lr: float | str = "auto",
        momentum: float | str = "auto",
        weight_decay: float = 0.0,
        l2: float = 0.0,
        l1: float = 0.0,
        average: bool | str = "auto",
        tol: float | str = "auto",
        fit_intercept: bool = True,
        cov_type: str = "nonrobust",
        batch_size: int | None = None,
        shuffle: str = "blocks",
        standardize: bool | str = "auto",
        standardize_target: bool = False,
        val_fraction: float = 0.0,
        seed: int = 0,
        rows_per_step: int = 262_144,
        max_epochs: int | None = None,
        max_steps: int = -1,
        accelerator: str = "auto",
        devices: int | str | list[int] = "auto",
        strategy: str = "auto",
        precision: str = "auto",
        trainer_kwargs: dict[str, Any] | None = None,
        callbacks: list[L.Callback] | None = None,
        logger: Any = False,
        verbose: bool = False,
    ) -> None:
        self.solver = solver
        self.lr = lr
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.l2 = l2
        self.l1 = l1
        self.average = average
        self.tol = tol
        self.fit_intercept = fit_intercept
        self.cov_type = cov_type
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.standardize = standardize
        self.standardize_target = standardize_target
        self.val_fraction = val_fraction
        self.seed = seed
        self.rows_per_step = rows_per_step
        self.max_epochs = max_epochs
        self.max_steps = max_steps
        self.accelerator = accelerator
        self.devices = devices
        self.strategy = strategy
        self.precision = precision
        self.trainer_kwargs = trainer_kwargs
        self.callbacks = callbacks
        self.logger = logger
        self.verbose = verbose

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True  # y may be n × k, as with scikit-learn's LinearRegression
        return tags

    # -- fit -----------------------------------------------------------------------------------------

    def fit(self, X: Any, y: Any, sample_weight: Any = None) -> LinearRegressor:
        """Fit on X (n × d: numpy, pandas, torch) and y (n or n × k) with ``trainer.fit``; ``sample_weight``
        (n, at least 0, not all 0) makes it weighted least squares, as scikit-learn's and statsmodels' WLS."""
        check_params(self)
        refuse_labels(X)
        targets = target_names(y)
        X, y = validate_data(self, as_numpy(X), as_numpy(y), dtype=np.float64, multi_output=True, y_numeric=True)
        weights = None
        if sample_weight is not None:
            w = np.asarray(as_numpy(sample_weight), dtype=np.float64).reshape(-1)
            if w.shape[0] != X.shape[0]:
                raise ParameterError(f"sample_weight has {w.shape[0]} values for {X.shape[0]} rows of X")
            weights = torch.tensor(w)
        Y = y.reshape(-1, 1) if y.ndim == 1 else y
        features = list(getattr(self, "feature_names_in_", default_names("x", X.shape[1])))
        targets = targets if targets and len(targets) == Y.shape[1] else default_names("y", Y.shape[1])
        standardize = True if self.standardize == "auto" else bool(self.standardize)
        with quiet(self.verbose), torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)  # the initial weights, as the CLI's seed_everything gives them
            try:  # a NaN, negative or all-zero weight: the CLI's one line, as a ValueError
                data = LinRegData.from_tensors(
                    torch.tensor(X),
                    torch.tensor(Y),
                    sample_weight=weights,
                    standardize=standardize,
                    standardize_target=self.standardize_target,
                    batch_size=self.batch_size,
                    shuffle=self.shuffle,
                    seed=self.seed,
                    val_fraction=self.val_fraction,
                    rows_per_step=self.rows_per_step,
                )
            except LinRegError as exc:
                raise ParameterError(str(exc)) from exc
            module = LinRegModule(
                in_features=X.shape[1],
                out_features=Y.shape[1],
                feature_names=[str(f) for f in features],
                target_names=[str(t) for t in targets],
                standardize=standardize,
                standardize_target=self.standardize_target,
                **{name: getattr(self, name) for name in MODEL_PARAMS},
            )
            trainer = self._new_trainer()
            try:
                trainer.fit(module, datamodule=data)
            except LinRegError as exc:  # a fit that diverged, say: the CLI's one line, as a ValueError
                raise ParameterError(str(exc)) from exc
        module.trainer = None  # the trainer stays behind: the fitted module pickles and predicts alone
        # What a checkpoint of it would hold for intervals (its on_save_checkpoint), there before any save.
        module.intervals = module.exact.intervals if module.exact is not None else None
        self._set_fitted(module, y.ndim)
        self.optimum_ = module.optimum
        self.n_iter_ = trainer.current_epoch
        return self

    def _new_trainer(self) -> L.Trainer:
        settings: dict[str, Any] = {
            "max_epochs": self.max_epochs,
            "max_steps": self.max_steps,
            "accelerator": self.accelerator,
            "devices": self.devices,
            "strategy": self.strategy,
            "precision": self._precision(),
            "logger": self.logger,
            "callbacks": list(self.callbacks or []),
            "enable_checkpointing": False,
            "enable_progress_bar": self.verbose,
            "enable_model_summary": False,
            "num_sanity_val_steps": 0,
            "log_every_n_steps": 1,
        }
        settings |= self.trainer_kwargs or {}
        try:
            return L.Trainer(**settings)
        except (MisconfigurationException, ValueError, TypeError) as exc:
            raise ParameterError(f"trainer settings refused by Lightning: {' '.join(str(exc).split())}") from exc

    def _precision(self) -> str:
        """As the CLI: the exact solution is float64 and stays so, unless a precision is given."""
        if self.precision != "auto":
            return str(self.precision)
        return "64-true" if self.solver == "lstsq" else "32-true"

    def _set_fitted(self, module: LinRegModule, y_ndim: int) -> None:
        module.eval()
        self.module_ = module
        w, b = module.coefficients()
        if y_ndim == 1:
            self.coef_ = w[0].numpy()
            self.intercept_: float | np.ndarray = float(b[0]) if b is not None else 0.0
        else:
            self.coef_ = w.numpy()
            self.intercept_ = b.numpy() if b is not None else np.zeros(w.shape[0])
        self._y_ndim = y_ndim

    # -- use -----------------------------------------------------------------------------------------

    def predict(self, X: Any) -> np.ndarray:
        """The trained module's forward on X, in the module's precision (as ``linreg predict``)."""
        check_is_fitted(self)
        pred = self._forward(validate_data(self, as_numpy(X), dtype=np.float64, reset=False))
        return pred[:, 0] if self._y_ndim == 1 else pred

    def _forward(self, X: np.ndarray) -> np.ndarray:
        """Rows × targets, from a validated X."""
        module = self.module_
        with torch.no_grad():
            # Row-major, as linreg's tables serve rows: a column-major X (a DataFrame's values) takes another
            # matmul path in torch, whose float32 sums can differ from `linreg predict`'s in the last bit.
            x = torch.tensor(X, dtype=module.model.lin.weight.dtype).contiguous()
            pred: np.ndarray = module(x).double().numpy()
        return pred

    def predict_interval(self, X: Any, alpha: float = 0.05) -> Any:
        """The prediction with its confidence interval (of the mean) and prediction interval (of a new
        observation) at level 1 − alpha: statsmodels' ``get_prediction(X).summary_frame(alpha)``, as a
        DataFrame with its columns ``mean``, ``mean_ci_lower``, ``mean_ci_upper``, ``obs_ci_lower`` and
        ``obs_ci_upper`` (no ``mean_se``: ``linreg predict --interval`` writes none either), indexed as X.
        With several targets (y fit as n × k) the columns are a MultiIndex (target, column), so
        ``frame[target]`` is that target's statsmodels frame. ``attrs`` holds ``cov_type`` and ``alpha``.

        The name and ``alpha``: ``predict`` keeps scikit-learn's contract (an array, which Pipeline,
        GridSearchCV and ``score`` rely on), so the intervals take a method of their own, named as
        sktime's and skpro's ``predict_interval``; ``alpha`` is the miscoverage, as statsmodels'
        ``summary_frame(alpha)`` and MAPIE's ``predict(X, alpha=)`` take it.

        The numbers are ``linreg predict --interval``'s: the covariance the exact solver stored at fit
        time (in a checkpoint too: this works after ``load``), ``cov_type`` honoured as statsmodels does
        (robust ones with the normal distribution), sample weights as WLS (a new row weighs 1). An SGD
        fit, a penalized one or one without standard errors is refused, as the CLI refuses it.
        """
        import pandas as pd

        check_is_fitted(self)
        if isinstance(alpha, bool) or not isinstance(alpha, Real) or not 0 < alpha < 1:
            raise ParameterError(f"predict_interval: alpha must be a number in (0, 1) (0.05: 95%), got {alpha!r}")
        try:
            state = stored_covariance(
                self.module_,
                asked="predict_interval",
                model="this model",
                solver="solver='lstsq'",
                cov_type="cov_type='HC0'..'HC3'",
            )
        except LinRegError as exc:
            raise ParameterError(str(exc)) from exc
        index = X.index if isinstance(X, pd.DataFrame) else None
        X = validate_data(self, as_numpy(X), dtype=np.float64, reset=False)
        mean = self._forward(X)
        bounds = interval_columns(state, X, mean, 1.0 - float(alpha))
        frames = [
            pd.DataFrame({"mean": mean[:, j]} | {name: bounds[key][:, j] for name, key in INTERVALS}, index=index)
            for j in range(mean.shape[1])
        ]
        targets = [str(t) for t in self.module_.hparams.target_names or default_names("y", mean.shape[1])]
        table = frames[0] if self._y_ndim == 1 else pd.concat(frames, axis=1, keys=targets, names=["target", None])
        table.attrs = {"cov_type": state["cov_type"], "alpha": float(alpha)}
        return table

    def summary(self) -> Any:
        """The least-squares fit as statsmodels prints it: coef, std err, t, P>|t|, [0.025, 0.975].

        With a robust ``cov_type`` (HC0..HC3) the standard errors are that covariance's and, as statsmodels'
        ``fit(cov_type=...)``, the statistics are z with normal p-values and intervals: the columns are then
        named ``z`` and ``P>|z|``. ``attrs["cov_type"]`` says which covariance the table used.

        ``coef`` is the optimum's (what the inference is about; ``coef_`` is what the model predicts
        with, SGD's after an SGD fit). A column appears only when it has values: with penalties, or an
        exact fit, there is no inference, and ``attrs["note"]`` says why. One row per term, the
        intercept first (``const``, as statsmodels names it); with several targets, indexed by
        (target, term). ``attrs`` holds the R², adjusted R², residual std err and residual df.
        """
        import pandas as pd

        check_is_fitted(self)
        opt = self.optimum_
        if opt is None:
            raise ParameterError(
                "summary(): this model was loaded from a checkpoint, which holds no least-squares optimum; "
                "fit it to get the summary (the CLI's summary.json beside the checkpoint has it too)"
            )
        hp = self.module_.hparams
        features, targets = list(hp.feature_names), list(hp.target_names)
        inference, note = opt.inference, opt.inference_note
        if inference and any(entry["sigma"] == 0 for entry in inference):
            inference, note = None, "the fit is exact (zero residuals): standard errors are 0 and t undefined"
        frames = []
        for j in range(len(targets)):
            values = ([float(opt.intercept[j])] if opt.intercept is not None else []) + opt.coef[j].tolist()
            frame = pd.DataFrame({"coef": values}, index=(["const"] if opt.intercept is not None else []) + features)
            if inference:
                stats = ([inference[j]["intercept"]] if opt.intercept is not None else []) + [
                    inference[j]["coef"][f] for f in features
                ]
                robust = opt.cov_type != "nonrobust"
                for column, key in COLUMNS:
                    frame[ROBUST_COLUMNS.get(column, column) if robust else column] = [s[key] for s in stats]
            frames.append(frame)
        table = frames[0] if len(frames) == 1 else pd.concat(frames, keys=targets, names=["target", "term"])
        if inference:
            table.attrs = {
                key: [entry[key] for entry in inference] if len(targets) > 1 else inference[0][key]
                for key in ("r2", "r2_adj", "sigma", "df_resid")
            }
        table.attrs["note"] = note
        table.attrs["cov_type"] = opt.cov_type
        return table

    # -- files ---------------------------------------------------------------------------------------

    def save(self, path: str | Path) -> Path:
        """Write a Lightning checkpoint of the fitted module, as ``linreg fit`` writes them: ``linreg predict
        --ckpt_path path`` and ``load(path)`` take it. Written atomically (a temporary file renamed over)."""
        check_is_fitted(self)
        with quiet(verbose=False):
            trainer = L.Trainer(
                logger=False,
                enable_checkpointing=False,
                enable_progress_bar=False,
                enable_model_summary=False,
                accelerator="cpu",
                devices=1,
            )
        trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        trainer.strategy.connect(self.module_)
        try:
            trainer.save_checkpoint(path, weights_only=False)
        finally:
            self.module_.trainer = None
        return Path(path)

    def export(self, path: str | Path, overwrite: bool = False) -> Path:
        """A standalone ONNX (``.onnx``) or torch.export (``.pt2``) program, as ``linreg export`` writes it."""
        check_is_fitted(self)
        with tempfile.TemporaryDirectory() as folder:
            ckpt = self.save(Path(folder) / "model.ckpt")
            with contextlib.redirect_stdout(io.StringIO()):  # the CLI's line names the temporary checkpoint
                return export_checkpoint(ckpt, path, overwrite)
