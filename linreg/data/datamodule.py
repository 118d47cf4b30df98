"""The LightningDataModule: which rows are training, validation, test and prediction rows.

One file over 300 lines because it is one LightningDataModule whose hooks (setup, the loaders,
state_dict) share the splits, statistics and fingerprint it owns; the pure work is in tables, rows, batches.

It reads the table (``tables``), splits it, keeps the standardization statistics of the training
rows, and hands each stage a ``Batches`` (``batches``). With no ``path`` it serves the tutorial's
four points.
"""

from __future__ import annotations

import math
import sys
from typing import Any, Literal, cast

import lightning as L
import numpy as np
import torch
from lightning.fabric.utilities.data import AttributeDict
from lightning.fabric.utilities.rank_zero import rank_zero_only
from torch import Tensor
from typing_extensions import override

from linreg.data.batches import Batches, Shuffle
from linreg.data.categorical import Categorical, Encoding, categorical_columns, refuse_text
from linreg.data.progress import Progress
from linreg.data.rows import CHUNK_ROWS, RecordRows, Rows, mean_scale
from linreg.data.streams import StreamRows
from linreg.data.tables import Table, default_names, fingerprint, fingerprint_change, read_table, unnamed
from linreg.data.weights import WeightedBatches, check_weights
from linreg.errors import LinRegError
from linreg.tutorial.data import X_TEST_TUTORIAL, X_TUTORIAL, Y_TUTORIAL

OUT_OF_CORE_BATCH = 65_536  # rows per batch when evaluating or predicting a table read from disk


def _note(message: str) -> None:
    """One line on stderr, from the first process only (each DDP process reads the table)."""
    if getattr(rank_zero_only, "rank", 0) == 0:  # an attribute Lightning sets on the function
        print(f"linreg: note: {message}", file=sys.stderr)


def _counts_steps(trainer: L.Trainer) -> bool:
    """Whether a trainer limit counts training steps (which are groups of updates, see ``Batches``)."""
    limit, interval = trainer.limit_train_batches, trainer.val_check_interval
    return trainer.max_steps != -1 or limit not in (None, 1.0) or (isinstance(interval, int) and interval != 1)


class LinRegData(L.LightningDataModule):
    """Serves X/Y for fit, validate, test and predict.

    With no ``path`` it serves the tutorial's X=[[1],[2],[3],[4]], Y=2X and predicts X_test=[[5]].
    The table is read when the CLI first asks for the feature names (to size the model), so a bad
    file fails before any trainer, log folder or checkpoint exists.

    Args:
        path: CSV (with a header), Parquet, or NPZ with arrays ``X`` (n×d) and ``y`` (n or n×k).
        target: target column, or a list of them for multi-output regression (default: ``y``).
        features: feature columns (default: every other numeric column).
        id_column: a column passed through to prediction files, never used as a feature.
        weights: a column of sample weights (at least 0, not all 0), never a feature: the fit minimizes
            the weighted MSE (weighted least squares, as statsmodels' ``WLS``) and the metrics are
            weighted as scikit-learn's ``sample_weight``. Validation and test tables use the column
            where they have it (else every row weighs 1); prediction tables may hold it (ignored).
        val_path: a separate validation table (instead of ``val_fraction``).
        test_path: a separate test table (instead of ``test_fraction``).
        val_fraction: share of rows held out for validation; 0 means none.
        test_fraction: share of rows held out for testing; 0 means none.
        seed: seeds the split and the shuffling, so a run is reproducible and resumable.
        batch_size: rows per optimizer step; default: all training rows (the tutorial's full batch).
        shuffle: ``blocks`` (default), ``rows`` or ``none``; see ``Batches``.
        standardize: standardize features with training-split statistics kept in the checkpoint.
            ``auto`` (default): on for a table (``path``) or tensors, off for the tutorial's built-in data.
        standardize_target: standardize targets too (only with ``standardize``).
        rows_per_step: consecutive batches are grouped into one Lightning step until they hold about
            this many rows (see ``Batches``); 0 means one batch per step. Results do not change. A streamed
            table holds a group's rows in memory at once; a memory-mapped ``.npy`` runs one batch per step.
        stream: read Parquet and CSV tables by row range as training goes instead of whole (see
            ``streams``). ``auto``: folders, globs and files larger than memory comfortably holds.
        categorical: feature columns encoded as indicators, one per level as statsmodels' formulas do
            (``firm[T.GM]``; see ``categorical``). ``auto`` (default): text, pandas ``category``,
            dictionary-encoded Parquet and bool columns of at most 50 levels; ``none``: numbers only; a
            list: these columns (integer codes too); a mapping column: levels fixes the levels (what a
            checkpoint holds).
        fit_intercept: whether the model has an intercept: the CLI sets it from ``--model.fit_intercept``.
            With one, each categorical column's first level is the reference and gets no indicator.
    """

    def __init__(
        self,
        path: str | None = None,
        target: str | list[str] | None = None,
        features: list[str] | None = None,
        id_column: str | None = None,
        val_path: str | None = None,
        test_path: str | None = None,
        val_fraction: float = 0.0,
        test_fraction: float = 0.0,
        seed: int = 0,
        batch_size: int | None = None,
        shuffle: Shuffle = "blocks",
        standardize: bool | Literal["auto"] = "auto",
        standardize_target: bool = False,
        rows_per_step: int = 262_144,
        stream: bool | Literal["auto"] = "auto",
        categorical: Categorical = "auto",
        fit_intercept: bool = True,
        weights: str | None = None,
    ) -> None:
        super().__init__()
        # The model's hyperparameters hold the decided value (linked from ``self.standardize``); here it
        # may still be "auto", which Lightning would report as a conflict with the model's.
        self.save_hyperparameters(ignore=["standardize"])
        if standardize == "auto":  # raw units need a step tuned to each column's scale; standardized ones don't
            standardize = path is not None
        for name, frac in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
            if not 0.0 <= frac < 1.0:
                raise LinRegError(f"--data.{name} must be in [0, 1), got {frac}")
        if val_fraction + test_fraction >= 1.0:
            raise LinRegError("--data.val_fraction + --data.test_fraction must leave training rows (sum < 1)")
        if val_path and val_fraction:
            raise LinRegError("give --data.val_path or --data.val_fraction, not both")
        if test_path and test_fraction:
            raise LinRegError("give --data.test_path or --data.test_fraction, not both")
        if batch_size is not None and batch_size < 1:
            raise LinRegError(f"--data.batch_size must be at least 1, got {batch_size}")
        if standardize_target and not standardize:
            raise LinRegError("--data.standardize_target needs --data.standardize true")
        self.path, self.id_column = path, id_column
        self.standardize, self.standardize_target = standardize, standardize_target
        self._target = [target] if isinstance(target, str) else (list(target) if target else None)
        self._features = list(features) if features else None
        self._encoding: Encoding | None = None  # the categorical columns' indicators, once the table is read
        self._judged = False  # whether the features' categorical columns were found (once: a streamed pass)
        self._table: Table | None = None
        self._tensors: tuple[Tensor, Tensor | None] | None = None
        # Each split as the file holds it (``_exact``: what the least-squares solver reads) and as
        # SGD trains on it (``_splits``: float32, or float64 under --trainer.precision 64-true).
        self._exact: dict[str, tuple[Rows, Rows | None]] = {}
        self._splits: dict[str, tuple[Rows, Rows | None]] = {}
        self.weights = weights
        self._weights_tensor: Tensor | None = None  # from_tensors' sample weights
        self._fitting = False  # the training table must hold the weights column; others may not
        self.dtype = torch.float32
        self.scaling: tuple[Tensor, Tensor, Tensor, Tensor] | None = None
        self.target_mean: Tensor | None = None
        self._fingerprint: list[list[str | int]] | None = None
        self._train_batches: Batches | list[Batches] = []
        self._served: dict[str, tuple[Tensor, Tensor]] = {}  # the scaling a split's SGD rows were served with

    @property
    def hparams(self) -> AttributeDict:
        """``save_hyperparameters``' values, typed as what they are here: an ``AttributeDict``."""
        return cast(AttributeDict, super().hparams)

    @classmethod
    def from_tensors(
        cls, x: Tensor, y: Tensor | None = None, sample_weight: Tensor | None = None, **kwargs: Any
    ) -> LinRegData:
        """Data from Python: ``x`` (n×d), ``y`` (n or n×k), ``sample_weight`` (n); columns are named x0..
        and y0.. (or x, y)."""
        weights = "sample_weight" if sample_weight is not None else None
        dm = cls(**{"standardize": kwargs.pop("standardize", True), "weights": weights, **kwargs})
        x = x.reshape(-1, 1) if x.ndim == 1 else x
        if y is not None:
            y = y.reshape(-1, 1) if y.ndim == 1 else y
        for name, t in (("x", x), ("y", y)):
            if t is not None and not torch.isfinite(t).all():
                raise LinRegError(f"from_tensors: {name} holds NaN or inf")
        dm._tensors = (x.contiguous(), None if y is None else y.contiguous())
        if sample_weight is not None:
            w = sample_weight.reshape(-1, 1).to(torch.float64)
            if w.shape[0] != x.shape[0]:
                raise LinRegError(f"from_tensors: sample_weight has {w.shape[0]} rows, x has {x.shape[0]}")
            if not torch.isfinite(w).all():
                raise LinRegError("from_tensors: sample_weight holds NaN or inf")
            check_weights(w, "from_tensors", "sample_weight")
            dm._weights_tensor = w
        dm._features = default_names("x", x.shape[1])
        k = 1 if y is None else y.shape[1]
        dm._target = default_names("y", k)
        return dm

    # -- names, resolved from the table header (what the CLI links into the model) --------------

    def _load(self) -> Table | None:
        if self.path is not None and self._table is None:
            self._table = read_table(self.path, self.hparams.stream)
            self._target = self._target or self._table.implied_targets or None
            if self._target is None:
                raise LinRegError(
                    f"{self.path}: no column named 'y'; name the target with --data.target "
                    f"(columns are {self._table.columns})"
                )
        return self._table

    @property
    def target_names(self) -> list[str]:
        self._load()
        return self._target or ["y"]

    @property
    def feature_names(self) -> list[str]:
        table = self._load()
        if self._features is None:
            if table is None:
                return ["x"]
            skip = set(self.target_names) | {self.id_column, self.weights}
            candidates = [c for c in table.columns if c not in skip]
            nameless = [c for c in candidates if unnamed(c)]
            mode = self.hparams.categorical
            listed = mode if isinstance(mode, (list, dict)) else []
            text = [c for c in candidates if not unnamed(c) and c not in listed and not table.looks_numeric(c)]
            if mode == "none" and text:
                refuse_text(table.source, text[0], table.sample(text[0])[0])
            text = [] if mode == "auto" else text  # auto: text columns are categories (or refused, by name)
            self._features = [c for c in candidates if c not in nameless and c not in text]
            if not self._features:
                raise LinRegError(f"{self.path}: no numeric feature columns besides the target {self.target_names}")
            self._say_skipped(nameless, text)
            ids = [c for c in self._features if c.lower() == "id" and table.counts_rows(c)]
            if ids:
                _note(
                    f"{self.path}: column {ids[0]!r} counts the rows (unique integers from {table.sample(ids[0])[0]}), "
                    f"rarely a feature, and is one; keep it and silence this with --data.features "
                    f"[{','.join(self._features)}], or pass it through to predictions with --data.id_column {ids[0]}"
                )
        for role, names in (("--data.features", self._features), ("--data.target", self.target_names)):
            if self.weights is not None and self.weights in names:
                raise LinRegError(
                    f"--data.weights {self.weights!r} is also named in {role}; a weights column is never a "
                    "feature or a target"
                )
        overlap = sorted(set(self._features) & set(self.target_names))
        if overlap:
            raise LinRegError(f"columns {overlap} are both features and targets")
        if table is not None and not self._judged:
            mode = self.hparams.categorical
            if isinstance(mode, dict) and mode:  # a checkpoint's features: indicator names, back to their columns
                self._features = Encoding(mode, self.hparams.fit_intercept).raw(self._features)
            levels = categorical_columns(table, self._features, mode)
            if levels:
                self._encoding = table.encoding = Encoding(levels, self.hparams.fit_intercept)
                self._features = self._encoding.raw(self._features)
            self._judged = True
        return self._encoding.names(self._features) if self._encoding is not None else self._features

    def _say_skipped(self, nameless: list[str], text: list[str]) -> None:
        """Columns left out of the default features, in one line each: nothing silently dropped."""
        if nameless:
            _note(
                f"{self.path}: column(s) {nameless} have no name in the header (an index written by pandas' "
                "to_csv): not features; name one in --data.features to use it"
            )
        if text:
            _note(f"{self.path}: text column(s) {text} are not features (linreg needs numbers)")

    @property
    def in_features(self) -> int:
        return len(self.feature_names)

    @property
    def out_features(self) -> int:
        return len(self.target_names)

    # -- tensors ---------------------------------------------------------------------------------

    def _xy(self, table: Table, need_target: bool) -> tuple[Rows, Rows | None]:
        """Features and targets as the file holds them (see ``Table.matrix``)."""
        fit32 = self.dtype == torch.float32
        features = self.feature_names
        table.encoding = self._encoding  # a validation, test or prediction table: the training rows' levels
        x = table.matrix(features, dtype=None, fit_float32=fit32)
        if not need_target:
            return x, None
        missing = [t for t in self.target_names if t not in table.columns]
        if missing:
            raise LinRegError(f"{table.source}: no target column(s) {missing}; columns are {table.columns}")
        weights = self.weights
        if weights is not None and weights not in table.columns:
            if self._fitting and table is self._table:
                raise LinRegError(
                    f"{table.source}: no weights column {weights!r} (--data.weights); columns are {table.columns}"
                )
            weights = None  # validation, test, or another table to evaluate: each row weighs 1
        if weights is None:
            return x, table.matrix(self.target_names, dtype=None, fit_float32=fit32)
        y = table.matrix([*self.target_names, weights], dtype=None, fit_float32=fit32)  # weights last: see weights.py
        check_weights(y, table.source, weights)
        return x, y

    def _all(self, need_target: bool) -> tuple[Rows, Rows | None]:
        if self._tensors is not None:
            x, y = self._tensors
            if need_target and y is None:
                raise LinRegError("from_tensors: this stage needs targets; pass y")
            if y is not None and self._weights_tensor is not None:
                y = torch.cat([y.to(torch.float64), self._weights_tensor], 1)  # weights last: see weights.py
            return x, y
        table = self._load()
        if table is None:
            return X_TUTORIAL.clone(), Y_TUTORIAL.clone()
        return self._xy(table, need_target)

    def _split(self) -> None:
        """Fractions take a seeded random subset; training rows keep their file order."""
        x, y = self._all(need_target=True)
        assert y is not None  # _all refuses rows without targets when they are needed
        n = x.shape[0]
        hp = self.hparams
        n_test = round(hp.test_fraction * n)
        n_val = round(hp.val_fraction * n)
        for name, frac, count in (
            ("test_fraction", hp.test_fraction, n_test),
            ("val_fraction", hp.val_fraction, n_val),
        ):
            if frac > 0 and count == 0:
                raise LinRegError(f"--data.{name} {frac} of {n} rows is no row at all: too few rows for this split")
        if n - n_test - n_val < 1:
            raise LinRegError(f"{self.path}: {n} rows leave no training rows after the requested splits")
        if n_test or n_val:
            if not isinstance(x, Tensor) or not isinstance(y, Tensor):  # RecordRows, StreamRows: read from disk
                raise LinRegError(
                    f"{self.path}: a random split would read the whole table into memory; "
                    "give --data.val_path / --data.test_path instead of fractions"
                )
            perm = torch.randperm(n, generator=torch.Generator().manual_seed(hp.seed))
            test_idx, val_idx = perm[:n_test].sort().values, perm[n_test : n_test + n_val].sort().values
            train_idx = perm[n_test + n_val :].sort().values
            self._exact["test"] = (x[test_idx], y[test_idx])
            self._exact["val"] = (x[val_idx], y[val_idx])
            x, y = x[train_idx], y[train_idx]
            if self._weighted(y):
                check_weights(y, f"{self.path or 'from_tensors'} (the training rows of the split)", str(self.weights))
        for key, path in (("val", hp.val_path), ("test", hp.test_path)):
            if path:
                self._exact[key] = self._xy(read_table(path, hp.stream), need_target=True)
        self._exact["train"] = (x, y)
        y_mean, y_scale = mean_scale(y)
        k = self.out_features  # the statistics of the targets, without the weights column
        y_mean, y_scale = y_mean[:k], y_scale[:k]
        self.target_mean = y_mean
        if self.standardize:
            x_mean, x_scale = mean_scale(x)
            if self._encoding is not None:  # indicators stay 0 and 1: their coefficients are level effects
                kept = torch.from_numpy(self._encoding.indicators(self.feature_names))
                x_mean, x_scale = x_mean.masked_fill(kept, 0.0), x_scale.masked_fill(kept, 1.0)
            if not hp.standardize_target:  # centred only: SGD learns the signal, float64 adds the mean back
                y_scale = torch.ones(k, dtype=y_scale.dtype)
            self.scaling = (x_mean, x_scale, y_mean, y_scale)

    def check(self, stage: str) -> None:
        """Read and validate everything ``stage`` needs, so bad input fails before any run starts."""
        if stage == "predict":
            self._predict_x()
            return
        if "train" not in self._exact:
            self._fitting = stage == "fit"
            self._split()
        if stage == "fit":
            self._check_out_of_core(self._exact["train"][0])
            if self.path is not None:
                self._fingerprint = self._table_fingerprint()  # the table as this fit reads it
        if stage in ("validate", "test"):
            key = "val" if stage == "validate" else "test"
            if key not in self._exact:
                # Without a held-out split, validate/test evaluate on the whole table.
                self._exact[key] = self._all(need_target=True)
        for key, (x, y) in self._exact.items():
            if key not in self._splits or self._splits[key][0].dtype != self.dtype:
                # Targets stay as the file holds them: the loss casts them to the model's dtype, and the
                # metrics compare predictions with the true values, not with their float32 rounding.
                self._splits[key] = (self._as_dtype(x), y)
                self._served.pop(key, None)  # a fresh copy holds the file's values

    def _table_fingerprint(self) -> list[list[str | int]]:
        """A streamed table's files as it listed and checked them (refused if one vanished or changed since)."""
        table = self._load()
        assert self.path is not None and table is not None  # only a table from a file has one
        return fingerprint(self.path, table.stream)

    def _check_out_of_core(self, x: Rows) -> None:
        """Training on rows read from disk as it goes: batches bounded, and an order the format can serve."""
        hp = self.hparams
        if not isinstance(x, (RecordRows, StreamRows)):
            return
        if hp.batch_size is None:
            raise LinRegError(
                f"{self.path}: a table read from disk as training goes needs --data.batch_size "
                "(a full batch would hold the whole table in memory at once), e.g. 65536"
            )
        if isinstance(x, StreamRows) and (hp.shuffle == "rows" or (hp.shuffle == "blocks" and x.source.kind == "csv")):
            raise LinRegError(
                f"{self.path}: a streamed {str(x.source.kind).upper()} table is read in row ranges, "
                + (
                    "in file order; use --data.shuffle none, or Parquet for shuffled epochs"
                    if x.source.kind == "csv"
                    else "so --data.shuffle rows would read it row by row; use blocks or none"
                )
            )

    def set_precision(self, precision: str) -> None:
        """Serve SGD float64 rows under a 64-bit precision (``--trainer.precision 64-true``), float32 otherwise."""
        self.dtype = torch.float64 if str(precision).startswith("64") else torch.float32

    def _as_dtype(self, rows: Rows) -> Rows:
        if isinstance(rows, RecordRows):
            return rows if rows.dtype == self.dtype else RecordRows(rows.records, rows.names, self.dtype)
        if isinstance(rows, StreamRows):
            return rows if rows.dtype == self.dtype else StreamRows(rows.source, rows.names, self.dtype)
        return rows if rows.dtype == self.dtype else rows.to(self.dtype)

    def serve_scaled(self, scaling: tuple[Tensor, Tensor] | None) -> bool:
        """Serve the training rows standardized with ``scaling`` (mean, scale), or with the file's values
        (None); whether they now come standardized.

        Only where SGD trains on a copy of its own (the file holds float64 and training is float32: CSV,
        Parquet read whole): standardizing that copy once spares the training step two passes over each
        batch, and costs no memory. A float32 file is trained on as read, and a standardized copy of it
        would cost the data's size again (issue 4's memory goal): the step standardizes those batches. The
        module owns the scaling (its buffers travel in the checkpoint) and asks in ``on_train_start``, once
        they are final (a resumed fit's come from its checkpoint). The same ops as ``LinRegModule._scaled``,
        so the rows are bit for bit what it would compute.
        """
        if "train" not in self._splits:
            return False
        x, raw = self._splits["train"][0], self._exact["train"][0]
        if not isinstance(x, Tensor) or not isinstance(raw, Tensor) or x.dtype == raw.dtype:
            return False
        served = self._served.get("train")
        wanted = None if scaling is None else (scaling[0].to("cpu", x.dtype), scaling[1].to("cpu", x.dtype))
        same = (served is None) == (wanted is None)
        if same and served is not None and wanted is not None:
            same = torch.equal(served[0], wanted[0]) and torch.equal(served[1], wanted[1])
        if not same:
            for start in range(0, x.shape[0], CHUNK_ROWS):
                rows = raw[start : start + CHUNK_ROWS].to(x.dtype)
                if wanted is None:
                    x[start : start + CHUNK_ROWS] = rows
                else:
                    torch.sub(rows, wanted[0], out=x[start : start + CHUNK_ROWS]).div_(wanted[1])
            self._served.pop("train", None)
            if wanted is not None:
                self._served["train"] = wanted
        return wanted is not None

    def _predict_x(self) -> Rows:
        if "predict" not in self._exact:
            x: Rows
            if self._tensors is not None:
                x = self._tensors[0]
            elif self.path is None:
                x = X_TEST_TUTORIAL.clone()
            else:
                table = self._load()
                assert table is not None  # a path was given
                columns = self._encoding.raw(self.feature_names) if self._encoding else self.feature_names
                allowed = set(columns) | set(self.target_names) | {self.id_column}
                missing = [c for c in columns if c not in table.columns]
                nameless = [c for c in table.columns if c not in allowed and unnamed(c)]
                extra = [c for c in table.columns if c not in allowed and c not in nameless and c != self.weights]
                if missing or extra:
                    parts = [
                        f"missing feature column(s) {missing}" if missing else "",
                        f"unexpected column(s) {extra} (pass an id column with --data.id_column)" if extra else "",
                    ]
                    raise LinRegError(
                        f"{self.path}: " + "; ".join(p for p in parts if p) + f"; the model expects features {columns}"
                    )
                self._say_skipped(nameless, [])
                x = self._xy(table, need_target=False)[0]
            self._exact["predict"] = (x, None)
        x = self._exact["predict"][0]
        self._splits["predict"] = (self._as_dtype(x), None)
        return self._splits["predict"][0]

    @property
    def predict_ids(self) -> np.ndarray | None:
        table = self._load()
        if table is None or self.id_column is None:
            return None
        if self.id_column not in table.columns:
            raise LinRegError(f"{self.path}: no id column {self.id_column!r}; columns are {table.columns}")
        return table.column(self.id_column)

    @property
    def val_rows(self) -> int:
        """Rows a fit validates on (a validation table or fraction), all ranks together."""
        return self._exact["val"][0].shape[0] if "val" in self._exact else 0

    # -- Lightning hooks -------------------------------------------------------------------------

    @override
    def state_dict(self) -> dict[str, Any]:
        """The training table's fingerprint, kept in every checkpoint (Lightning calls this on save)."""
        if self.path is None:
            return {}
        if self._fingerprint is None:  # once per run: a checkpoint every epoch would rehash the files
            self._fingerprint = self._table_fingerprint()
        batches = self._train_batches
        mid_epoch = isinstance(batches, Batches) and 0 < batches.served < len(batches)
        # The levels the model's indicators stand for: predict, validate and test encode their tables with them.
        levels = self._encoding.levels if self._encoding is not None else {}
        return {"train_table": self._fingerprint, "mid_epoch": mid_epoch, "categories": levels}

    @override
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """A fit resumed on a table that changed since its checkpoint: refused when the checkpoint
        stopped mid-epoch (the rest of that epoch, its running loss and metrics belong to the rows it
        started on); said in one line otherwise (training on from the saved weights, a warm start,
        is a use). Validate, test and predict take any table."""
        saved = state.get("train_table")
        if saved is None or self.path is None or self.trainer is None or self.trainer.state.fn != "fit":
            return
        change = fingerprint_change(saved, self.state_dict()["train_table"])
        if change and state.get("mid_epoch"):
            raise LinRegError(
                f"{self.path} changed since the checkpoint was written ({change}), which stopped in the middle "
                "of an epoch; resume on the same table, or start a new fit (without --ckpt_path)"
            )
        if change and self.trainer.is_global_zero:
            print(
                f"linreg: note: {self.path} changed since the checkpoint ({change}); training goes on from the "
                "checkpoint's weights on the table as it is now",
                file=sys.stderr,
            )

    @override
    def setup(self, stage: str) -> None:
        if self.trainer is not None:
            self.set_precision(self.trainer.precision)
        self.check(stage)

    def _rank(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def exact_batches(
        self, batch_size: int = 65_536, split: str = "train", purpose: str = "least squares"
    ) -> Batches | list[Batches]:
        """This rank's share of a split's rows as the file holds them, in order: the solver's pass over the
        training rows, and the final model's measurement (``LinRegModule.finish_training``); ``purpose``
        names the pass in its progress line."""
        if split not in self._exact:
            return []
        x, y = self._exact[split]
        if isinstance(x, (RecordRows, StreamRows)):  # out of core: resident memory stays at about one training batch
            batch_size = min(batch_size, self.hparams.batch_size or CHUNK_ROWS, CHUNK_ROWS)
        rank, world = self._rank()
        if isinstance(x, StreamRows):  # a pass of its own, reported: a fresh reader, so training's are not
            x = StreamRows(x.source, x.names, x.dtype)
        batches = self._kind(y)(x, y, batch_size, "none", 0, rank, world)
        self._report(batches, f"{purpose} over {x.shape[1]} column(s) of {self.path}")
        return batches

    def _report(self, batches: Batches, what: str) -> None:
        """Report the pass ``batches`` make over a streamed table: this rank's share of each batch."""
        if not isinstance(batches.x, StreamRows):
            return
        n, b, rank, world = batches.n, batches.batch_size, batches.rank, batches.world_size

        def share(size: int) -> int:  # this rank's part of a batch of ``size`` rows, as ``Batches`` cuts it
            per_rank = math.ceil(size / world)
            return max(0, min(size - rank * per_rank, per_rank))

        what += f" (this process's share, of {world})" if world > 1 else ""
        batches.x.progress = Progress(what, n // b * share(b) + share(n % b))

    def _batches(self, key: str, shuffle: Shuffle = "none", with_index: bool = False) -> Batches | list[Batches]:
        if key not in self._splits:
            return []
        x, y = self._splits[key]
        rank, world = self._rank()
        hp = self.hparams
        group = max(1, hp.rows_per_step // (hp.batch_size or x.shape[0] or 1)) if key == "train" else 1
        batch_size = hp.batch_size
        if isinstance(x, RecordRows):
            group = 1  # each batch a copy out of the map, released as it goes: one batch at a time (measured)
        if isinstance(x, (RecordRows, StreamRows)):
            # Streamed, a group's rows are in memory at once: rows_per_step bounds them (34 MB at its default and
            # 33 float32 columns). One batch per step cost a sixth of a streamed epoch in Lightning's step.
            batch_size = batch_size or OUT_OF_CORE_BATCH  # evaluating and predicting: any batch gives the same
        if self.trainer is not None and _counts_steps(self.trainer):
            group = 1  # the user counts SGD updates: one per Lightning step, so Lightning counts them too
        return self._kind(y)(x, y, batch_size, shuffle, hp.seed, rank, world, with_index, group)

    def _weighted(self, y: Rows | None) -> bool:
        """Whether these target rows end with the weights column (see ``_xy``)."""
        return self.weights is not None and y is not None and y.shape[1] > self.out_features

    def _kind(self, y: Rows | None) -> type[Batches]:
        return WeightedBatches if self._weighted(y) else Batches

    @override
    def train_dataloader(self) -> Batches | list[Batches]:
        self._train_batches = self._batches("train", shuffle=self.hparams.shuffle)  # where the epoch stands
        return self._train_batches

    @override
    def val_dataloader(self) -> Batches | list[Batches]:
        return self._batches("val")

    @override
    def test_dataloader(self) -> Batches | list[Batches]:
        return self._batches("test")

    @override
    def predict_dataloader(self) -> Batches | list[Batches]:
        batches = self._batches("predict", with_index=True)
        # Lightning's bar, where it is on, reports this pass already
        bar = self.trainer is not None and self.trainer.progress_bar_callback is not None
        if isinstance(batches, Batches) and batches and not bar:
            self._report(batches, f"predicting {self.path}")
        return batches
