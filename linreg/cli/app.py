"""The ``linreg`` command: LightningCLI with fit, validate, test and predict, and linreg's guard rails.

What LightningCLI does not do for us, and this file adds:
- the model's sizes and column names come from the data (``link_arguments``), never typed twice;
- a checkpoint is checked (weights-only load) before anything runs, its settings are taken over,
  and a flag that contradicts it is an error rather than a silent override;
- validate/test/predict refuse to run untrained weights;
- ``--trainer.accelerator gpu`` without a GPU is one clear line;
- user mistakes (``LinRegError``) print as one line, exit 1; ``LINREG_DEBUG=1`` shows the traceback.

One file over 300 lines because it is one LightningCLI subclass: each method is a hook LightningCLI calls
in its own order, and splitting them would scatter one run's sequence over several files.
"""

from __future__ import annotations

import sys
from typing import Any

import torch
from jsonargparse import Namespace
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.accelerators import CUDAAccelerator, MPSAccelerator, XLAAccelerator
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.utilities.exceptions import SIGTERMException

from linreg.cli.checkpoints import (
    check_resumable,
    check_resumed_data,
    last_checkpoint_globs,
    open_checkpoint,
    take_checkpoint_settings,
)
from linreg.cli.packages import missing_package
from linreg.cli.run_folder import (
    checkpoint_run_logger,
    drop_run_folder,
    new_run_folder,
    remove_stale_checkpoint_files,
)
from linreg.cli.summary import print_fit_summary, print_metrics
from linreg.data.datamodule import LinRegData
from linreg.errors import LinRegError
from linreg.io import WRITE_ERRORS, check_output, check_writable
from linreg.training.checkpoint_io import AtomicCheckpointIO
from linreg.training.checkpointing import CheckpointPolicy
from linreg.training.figures import FitFigures
from linreg.training.module import LinRegModule
from linreg.training.prediction_writer import PredictionStopped, PredictionWriter

LINKED = ("in_features", "out_features", "feature_names", "target_names", "standardize", "standardize_target")
ABOUT = (
    "linreg: linear regression on your own tables (CSV, Parquet, NPZ, NPY) as a PyTorch Lightning pipeline: "
    "SGD or the exact least-squares solution, checked against each other, with checkpoints, TensorBoard logs, "
    "DDP and out-of-core streaming."
)
# One line each: `linreg --help` (``top_help``) and the top of each subcommand's own --help.
SUBCOMMANDS = {
    "fit": "train a model on a table; prints the fit summary and saves last.ckpt",
    "validate": "a checkpoint's metrics on the validation rows (--ckpt_path)",
    "test": "a checkpoint's metrics on the test rows (--ckpt_path)",
    "predict": "a checkpoint's predictions for a table, written to --output (.csv or .parquet)",
    "export": "a checkpoint as a standalone ONNX (.onnx) or torch.export (.pt2) program",
}


def top_help() -> str:
    """`linreg --help`: what linreg is and every subcommand in one line. linreg's own text, as LightningCLI's
    would list the Trainer methods' docstrings ("Runs the full optimization routine.") and omit export."""
    lines = ["usage: linreg {fit,validate,test,predict,export} [--config CONFIG] [flags]", "", ABOUT, ""]
    lines += ["subcommands:"]
    lines += [f"  {name:<10} {line}" for name, line in SUBCOMMANDS.items()]
    lines += [
        "",
        "`linreg SUBCOMMAND --help` lists a subcommand's flags (linreg's --data.* and --model.* first);",
        "`linreg --version` prints the versions of linreg, torch and lightning.",
    ]
    return "\n".join(lines)


class _SaveFitConfig(SaveConfigCallback):
    """Save config.yaml beside the logs of a fit: not for predict (no log folder), nor without a logger."""

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if stage == "fit" and trainer.logger is not None:
            # Without ckpt_path: `fit --ckpt_path last --config <this file>` must not clear the flag.
            self.config = self.config.clone()
            self.config.pop("ckpt_path", None)
            self.config.pop("data.fit_intercept", None)  # the model's, copied: a config edits that one
            super().setup(trainer, pl_module, stage)


class LinRegCLI(LightningCLI):
    def __init__(self, args: list[str] | None = None, run: bool = True) -> None:
        argv = sys.argv[1:] if args is None else args
        first = argv[0] if isinstance(argv, list) and argv else None
        self._wanted = first if first in LightningCLI.subcommands() else None
        about = {k: {"description": SUBCOMMANDS[k]} for k in LightningCLI.subcommands() if self._wanted in (None, k)}
        super().__init__(
            LinRegModule,
            LinRegData,
            args=args,
            run=run,
            parser_kwargs={"prog": "linreg", "description": ABOUT, **about},
            auto_configure_optimizers=False,  # SGD lives in configure_optimizers; no --optimizer override
            save_config_callback=_SaveFitConfig,
            seed_everything_default=0,  # reproducible unless asked otherwise
            trainer_defaults={
                "logger": {
                    "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                    "init_args": {"save_dir": ".", "default_hp_metric": False},
                },
                "enable_model_summary": False,
                "enable_progress_bar": sys.stderr.isatty(),
                "num_sanity_val_steps": 0,
                "log_every_n_steps": 1,
            },
        )

    def subcommands(self) -> dict[str, set[str]]:  # type: ignore[override]
        """Only the subcommand asked for gets a parser: building all four cost 0.3 s of every start."""
        every = LightningCLI.subcommands()
        return {self._wanted: every[self._wanted]} if self._wanted else every

    def add_core_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """linreg's own groups (data, model, checkpoint, figures) before the Trainer's, so `fit --help`
        shows them first."""
        parser.add_lightning_class_args(LinRegData, "data")
        parser.add_lightning_class_args(LinRegModule, "model")
        parser.add_lightning_class_args(CheckpointPolicy, "checkpoint")
        parser.add_lightning_class_args(FitFigures, "figures")
        parser.add_lightning_class_args(self.trainer_class, "trainer")
        parser.set_defaults({"trainer." + k: v for k, v in self.trainer_defaults.items() if k != "callbacks"})

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        for name in LINKED:
            parser.link_arguments(f"data.{name}", f"model.{name}", apply_on="instantiate")

    def _prepare_subcommand_parser(self, klass: type, subcommand: str, **kwargs: Any) -> LightningArgumentParser:
        parser = super()._prepare_subcommand_parser(klass, subcommand, **kwargs)
        if subcommand == "predict":
            parser.add_argument(
                "--output",
                type=str | None,
                default=None,
                help="write predictions here (.csv or .parquet), one row per input row",
            )
            parser.add_argument("--overwrite", type=bool, default=False, help="replace an existing --output")
            parser.add_argument(
                "--interval",
                type=float | None,
                default=None,
                help="also write each target's confidence interval of the mean (<target>_mean_lower, "
                "_mean_upper) and prediction interval (<target>_lower, _upper) at this level, e.g. 0.95, as "
                "statsmodels' get_prediction; for fits by --model.solver lstsq (--model.cov_type honoured)",
            )
        return parser

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        """Also keep what was given (flags and config files, no defaults), to tell a flag from a default.
        One feature name is a one-element list (``--data.features sqft``)."""
        argv = sys.argv[1:] if args is None else args
        if _one_name_lists(argv) != argv:
            args = _one_name_lists(argv)
        super().parse_arguments(parser, args)
        self._given = parser.parse_args(args, defaults=False) if not isinstance(args, (dict, Namespace)) else None

    def _parse_ckpt_path(self) -> None:
        """Check the checkpoint and take its settings, instead of Lightning's silent merge."""
        sub = self.config.get("subcommand")
        if not sub:
            return
        cfg = self.config[sub]
        if sub != "fit" and not cfg.get("ckpt_path"):
            raise LinRegError(
                f"linreg {sub} needs --ckpt_path CKPT (a checkpoint written by `linreg fit`); "
                "without one it would use untrained weights"
            )
        if not cfg.get("ckpt_path"):
            return
        path, ckpt = open_checkpoint(cfg.ckpt_path, last_checkpoint_globs(cfg.get("trainer")))
        if sub == "fit":
            check_resumable(path, ckpt)
        if sub == "fit" and cfg.ckpt_path == "last":
            check_resumed_data(path, ckpt, cfg.data.get("path"))
        cfg.ckpt_path = str(path)
        given = self._given[sub] if self._given is not None else None
        take_checkpoint_settings(cfg, given, ckpt)

    def before_instantiate_classes(self) -> None:
        cfg = self.config[self.subcommand]
        check_accelerator(cfg.trainer.get("accelerator"))
        given = self._given[str(self.subcommand)] if self._given is not None else None
        # The data drops each categorical column's reference level only when the model has an intercept
        # (the checkpoint's, for validate, test and predict: taken into cfg.model with its other settings).
        told = given.get("data.fit_intercept") if given is not None else None
        if told is not None and told != cfg.model.fit_intercept:
            raise LinRegError("--data.fit_intercept follows the model's; set --model.fit_intercept instead")
        cfg.data.fit_intercept = cfg.model.fit_intercept
        chosen = given is not None and given.get("trainer.precision")
        if self.subcommand == "fit" and cfg.model.get("solver") == "lstsq" and not chosen:
            # The exact solution is float64; a float32 model would keep 7 of its digits (NIST Filip: 4).
            cfg.trainer.precision = "64-true"
        precision = str(cfg.trainer.get("precision"))
        if precision.startswith(("16-true", "bf16-true", "transformer-engine")):
            raise LinRegError(
                f"--trainer.precision {precision} is not supported: 16-bit weights hold 3 significant digits, "
                "fewer than the summary reports; use 32-true (default), 64-true, 16-mixed or bf16-mixed"
            )
        strategy = cfg.trainer.get("strategy")
        if isinstance(strategy, str) and strategy.startswith(("ddp_spawn", "ddp_fork", "ddp_notebook")):
            raise LinRegError(
                f"--trainer.strategy {strategy} is not supported: it trains in child processes whose results "
                "(the closed form, the summary) never come back; use --trainer.strategy ddp, or torchrun"
            )
        if self.subcommand == "fit":
            for flag in ("max_epochs", "max_steps", "limit_train_batches"):
                if cfg.trainer.get(flag) == 0:
                    raise LinRegError(f"--trainer.{flag} 0 trains nothing; give a positive value")
        for flag, off in (("accumulate_grad_batches", 1), ("gradient_clip_val", None)):
            if cfg.trainer.get(flag) not in (off, 0):
                raise LinRegError(
                    f"--trainer.{flag} is not supported: linreg runs its SGD updates itself "
                    "(several per Lightning step); use a larger --data.batch_size instead"
                )
        if self.subcommand in ("validate", "test") and (given is None or given.get("trainer.logger") is None):
            cfg.trainer.logger = checkpoint_run_logger(cfg.trainer.logger, cfg.ckpt_path, self.subcommand)
        if self.subcommand == "predict":
            cfg.trainer.logger = False  # a predict run writes its file, not a log folder
            cfg.return_predictions = False  # the writer streams them to the file; holding them costs memory
            level = cfg.get("interval")
            if level is not None and not 0 < level < 1:
                raise LinRegError(f"--interval must be a level between 0 and 1, e.g. 0.95, got {level}")
            if level is not None and not cfg.get("output"):
                raise LinRegError("--interval needs --output FILE (.csv or .parquet) to write the intervals to")
            if cfg.get("output"):
                inputs = [cfg.data.get("path")] if cfg.data.get("path") else []
                check_output(cfg.output, cfg.overwrite, inputs=inputs)
                if cfg.data.get("id_column") and cfg.data.id_column in _as_list(cfg.data.get("target") or "y"):
                    raise LinRegError(
                        f"--data.id_column {cfg.data.id_column!r} is the target's name, which the predictions "
                        "are written under; pass another column"
                    )

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[Any]) -> Any:
        if config.get("enable_checkpointing") is False:  # the user's choice: no checkpoint at all
            callbacks = [c for c in callbacks if not isinstance(c, CheckpointPolicy)]
        try:
            trainer = super()._instantiate_trainer(config, callbacks)
        except ValueError as exc:  # Lightning's word on a Trainer setting (accelerator, strategy, ...)
            raise LinRegError(f"--trainer settings refused by Lightning: {exc}") from exc
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:  # the default, not a user's plugin
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        return trainer

    def after_instantiate_classes(self) -> None:
        """Check what this subcommand will write and read, before the trainer creates anything."""
        if self.subcommand:
            logger, fit = self.trainer.logger, self.subcommand == "fit"
            if logger is not None or fit:
                # A fit that trained for an hour and then cannot save its checkpoint has lost the hour.
                if logger is not None and logger.save_dir:
                    folder, flag = logger.save_dir, "--trainer.logger.init_args.save_dir"
                else:
                    folder, flag = self.trainer.default_root_dir, "--trainer.default_root_dir"
                what = "logs and checkpoints" if fit else "logs"
                hint = f"; run from a writable folder, or give a writable {flag}"
                hint += "" if fit else ", or --trainer.logger false"
                check_writable(folder, f"linreg {self.subcommand} writes its {what} under {folder}", hint)
            self.datamodule.set_precision(self.trainer.precision)
            self.datamodule.check(self.subcommand)

    def before_fit(self) -> None:
        """Refuse a callback that monitors a value linreg will never log, before training, listing what it can."""
        val_rows = self.datamodule.val_rows
        allowed = self.model.monitorable(val_rows)
        for callback in _callbacks(self.trainer):
            monitor = getattr(callback, "monitor", None)
            if monitor is not None and monitor not in allowed:
                why = ""
                if monitor.startswith("val/"):
                    why = " (there is no validation data)" if not val_rows else " (R² needs two validation rows)"
                raise LinRegError(
                    f"{type(callback).__name__} monitors {monitor!r}, which is never logged{why}; "
                    f"it can monitor {', '.join(allowed)}"
                )

    def before_predict(self) -> None:
        cfg = self.config["predict"]
        if cfg.get("output"):
            _callbacks(self.trainer).append(
                PredictionWriter(
                    cfg.output,
                    self.datamodule.target_names,
                    self.datamodule.predict_ids,
                    self.datamodule.id_column,
                    overwrite=cfg.overwrite,
                    interval=cfg.get("interval"),
                )
            )

    def after_predict(self) -> None:
        if not self.config["predict"].get("output"):
            print("linreg: no --output given; predictions were computed but not written")

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except (ValueError, ImportError) as exc:
            missing = missing_package(exc, self.config[self.subcommand].trainer)
            if missing is None:
                raise
            raise LinRegError(missing) from exc

    def _run_subcommand(self, subcommand: str) -> None:
        made = new_run_folder(self.trainer)
        if subcommand == "fit":
            remove_stale_checkpoint_files(self.trainer, self.config[subcommand].get("ckpt_path"))
        try:
            try:
                super()._run_subcommand(subcommand)
            except OSError as exc:  # TensorBoard's writer thread: no file name; name the folder
                if exc.errno not in WRITE_ERRORS or exc.filename:
                    raise
                raise LinRegError(f"cannot write the run's logs in {self.trainer.log_dir} ({exc.strerror})") from exc
        except BaseException as exc:
            refused = not isinstance(exc, SIGTERMException) and not self.model.trained
            drop_run_folder(self.trainer, made, refused)
            if isinstance(exc, SIGTERMException):
                self._report_stop()
            if isinstance(exc, PredictionStopped):
                print(f"linreg: {exc}", file=sys.stderr)
                raise SystemExit(exc.exit_code) from None
            raise
        drop_run_folder(self.trainer, made, refused=False)

    def _report_stop(self) -> None:
        """A fit stopped by Ctrl-C or SIGTERM: say where, and what was saved; exit as the signal asks."""
        ckpt = self.trainer.checkpoint_callback
        by = getattr(ckpt, "stopped_by", None) or "SIGTERM"
        if self.trainer.is_global_zero:
            where = f"linreg: stopped by {by} at epoch {self.trainer.current_epoch}, step {self.trainer.global_step}"
            saved = getattr(ckpt, "last_model_path", "")  # a ModelCheckpoint's
            if saved:
                then = f"saved {saved}; resume with `linreg fit ... --ckpt_path last`"
            else:
                then = "nothing saved (checkpointing is off)"
            print(f"{where}; {then}", file=sys.stderr)
        raise SystemExit(130 if by == "Ctrl-C" else 143) from None

    summary: dict[str, Any] | None = None  # what the fit summary printed (summary.json), for main()'s caller

    def after_fit(self) -> None:
        if self.trainer.is_global_zero and not self.trainer.interrupted:
            self.summary = print_fit_summary(self.model, self.trainer)

    def after_validate(self) -> None:
        print_metrics(self.model.latest, "val/")

    def after_test(self) -> None:
        print_metrics(self.model.latest, "test/")


LIST_FLAGS = ("--data.features",)


def _one_name_lists(args: Any) -> Any:
    """``--data.features sqft``: one name is a one-element list (jsonargparse wants ``[sqft]``)."""
    if not isinstance(args, list):
        return args
    out = list(args)
    for i, arg in enumerate(out):
        flag, eq, value = arg.partition("=")
        if flag not in LIST_FLAGS:
            continue
        if not eq and i + 1 < len(out):
            i, value = i + 1, out[i + 1]
        elif not eq:
            continue
        if value and not value.lstrip().startswith("[") and value not in ("null", "None"):
            out[i] = f"{flag}=[{value}]" if eq else f"[{value}]"
    return out


def _as_list(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def check_accelerator(accelerator: Any) -> None:
    """Refuse an accelerator this machine lacks in one line, before Lightning's traceback would."""
    if not isinstance(accelerator, str) or accelerator in ("cpu", "auto"):
        return
    present = {"cuda": CUDAAccelerator.is_available(), "mps": MPSAccelerator.is_available()}
    present |= {"gpu": present["cuda"] or present["mps"], "tpu": XLAAccelerator.is_available()}
    if present.get(accelerator, True):  # an unknown name is Lightning's to reject
        return
    available = ", ".join(["cpu"] + [name for name in ("cuda", "mps", "tpu") if present[name]])
    if accelerator in ("gpu", "cuda"):
        build = "a CPU-only build" if torch.version.cuda is None else f"CUDA {torch.version.cuda}"
        why = f"no CUDA GPU is visible to torch {torch.__version__} ({build})"
    else:
        why = {"mps": "no Apple MPS device here", "tpu": "no TPU here (torch_xla)"}[accelerator]
    raise LinRegError(f"--trainer.accelerator {accelerator}: {why}; available here: {available}")


def _callbacks(trainer: Any) -> list[Any]:
    """The trainer's callbacks (a list Lightning sets on it at run time, invisible to type checkers)."""
    found: list[Any] = trainer.callbacks
    return found
