"""``CheckpointPolicy``: when linreg writes last.ckpt, and how a signal stops a fit cleanly."""

from __future__ import annotations

import signal
import sys
import threading
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.exceptions import SIGTERMException
from typing_extensions import override

from linreg.errors import LinRegError
from linreg.lightning_private import due_every_n_epochs, save_last_checkpoint, stop_after_this_epoch


def _finite(module: L.LightningModule) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in module.parameters())


class CheckpointPolicy(ModelCheckpoint):
    """Lightning's ``ModelCheckpoint`` with linreg's policy.

    - ``last.ckpt`` at the end of fit, and every ``every_n_epochs`` epochs if asked: a checkpoint
      after every tiny epoch costs more than the epoch itself.
    - Ctrl-C or SIGTERM stops the fit at a clean point and saves ``last.ckpt``, so that
      ``linreg fit --ckpt_path last`` continues exactly (the data loader resumes mid-epoch, see
      ``Batches``). A second Ctrl-C aborts at once, unsaved: a checkpoint taken in the middle of an
      update could not resume exactly.
    - Never a checkpoint with non-finite weights.

    Why not Lightning's own SIGTERM handling: in one process it waits for the end of the epoch (an
    out-of-core epoch can outlast a scheduler's grace period), it stops in the middle of a
    validation (whose metrics a resume then never logs), and under DDP its per-rank checks at the
    end of an epoch can leave one rank waiting for the others forever (measured). Here, during
    training, both signals only set a flag; the ranks agree on it (one all-reduce) at the end of
    each step and stop together: after that step, or, on an epoch's last step, once the epoch's
    validation and logging are done.

    - A debug run (``--trainer.fast_dev_run``) saves nothing: its one step would otherwise become
      the newest ``last.ckpt``, the one ``--ckpt_path last`` takes.

    Args:
        every_n_epochs: also update ``last.ckpt`` every N epochs (0: only at the end of fit).
        keep: also keep the N most recent per-epoch checkpoints (``epoch=E-step=S.ckpt``) beside
            ``last.ckpt`` (0: ``last.ckpt`` only; a file per epoch would fill the disk on a long fit).
    """

    def __init__(self, every_n_epochs: int = 0, keep: int = 0) -> None:
        if every_n_epochs < 0 or keep < 0:
            raise LinRegError(
                f"--checkpoint.every_n_epochs and --checkpoint.keep must be at least 0, got {every_n_epochs} and {keep}"
            )
        if keep and not every_n_epochs:
            raise LinRegError(
                "--checkpoint.keep needs --checkpoint.every_n_epochs N: without it there is one checkpoint, at the end"
            )
        # The most recent: "step" rises through a fit, so the top `keep` by step are the latest.
        monitor, mode = ("step", "max") if keep else (None, "min")
        super().__init__(monitor=monitor, mode=mode, save_last=True, every_n_epochs=every_n_epochs, save_top_k=keep)
        self.stopped_by: str | None = None
        self._running: L.Trainer | None = None
        self._previous: dict[int, Any] = {}

    @override
    def _save_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:  # private: see lightning_private
        if not _finite(trainer.lightning_module):
            rank_zero_warn(f"not saving {filepath}: the weights are not finite")
            return
        super()._save_checkpoint(trainer, filepath)

    # -- stopping on a signal ----------------------------------------------------------------------

    @override
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self.stopped_by, self._running = None, trainer
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self.stopped_by is not None or self._running is None:
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            return
        self.stopped_by = "Ctrl-C" if signum == signal.SIGINT else "SIGTERM"
        launcher = self._running.strategy.launcher
        if launcher is not None and hasattr(launcher, "kill"):
            launcher.kill(signum)  # the DDP processes Lightning started, if any
        if self._running.is_global_zero:
            again = " (Ctrl-C again aborts without saving)" if signum == signal.SIGINT else ""
            print(
                f"linreg: {self.stopped_by}: stopping at the next clean point and saving last.ckpt{again}",
                file=sys.stderr,
            )

    def _restore_signals(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def _stop_agreed(self, trainer: L.Trainer, pl_module: L.LightningModule) -> bool:
        stop = self.stopped_by is not None
        if trainer.world_size > 1:  # every rank decides the same, at the same step
            flag = torch.tensor([float(stop)], device=pl_module.device)
            stop = bool(trainer.strategy.reduce(flag, reduce_op="max").item())
            self.stopped_by = self.stopped_by or ("SIGTERM" if stop else None)
        return stop

    @override
    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        last = trainer.fit_loop.epoch_loop.batch_progress.is_last_batch
        if not last and self._stop_agreed(trainer, pl_module):
            raise SIGTERMException  # Lightning's "stopped by a signal": on_exception saves last.ckpt

    @override
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Update last.ckpt every N epochs; on an epoch's last step, stop once the epoch is complete
        (Lightning raises right after it)."""
        super().on_train_epoch_end(trainer, pl_module)
        if not self.save_top_k and due_every_n_epochs(self, trainer):
            save_last_checkpoint(self, trainer)  # Lightning updates last.ckpt only beside a kept epoch file
        final = trainer.max_epochs not in (None, -1) and trainer.current_epoch + 1 >= trainer.max_epochs
        if self._stop_agreed(trainer, pl_module) and not final:
            stop_after_this_epoch(trainer)

    @override
    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore_signals()
        # Always: an epoch's checkpoint may already hold this step, but the model the fit ends with can
        # differ from it (FinalModel puts the average of the iterates in after the last epoch).
        if not fast_dev_run(trainer):
            save_last_checkpoint(self, trainer, again=True)

    @override
    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._restore_signals()
        if isinstance(exception, SIGTERMException):
            self.stopped_by = self.stopped_by or "SIGTERM"
            if not fast_dev_run(trainer):
                save_last_checkpoint(self, trainer)
        elif isinstance(exception, KeyboardInterrupt) and self.stopped_by:
            rank_zero_warn("linreg: aborted by a second Ctrl-C in the middle of a step; no checkpoint saved")
        elif (
            trainer.state.fn == "fit"
            and trainer.fit_loop.done
            and _write_failure(exception)
            and not fast_dev_run(trainer)
        ):
            # Training had finished when a log or figure could not be written (a full disk): the model
            # matters more than they do, and may still fit (a checkpoint is smaller than the logs).
            try:
                save_last_checkpoint(self, trainer)
            except LinRegError:
                return  # the disk is full indeed; the previous checkpoint, if any, is whole
            if trainer.is_global_zero:
                print(f"linreg: the fit finished and was saved to {self.last_model_path}", file=sys.stderr)

    @override
    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._restore_signals()
        self._running = None


def fast_dev_run(trainer: L.Trainer) -> bool:
    """A debug run (``--trainer.fast_dev_run``), which saves and logs nothing (Lightning's rule). An
    attribute Lightning sets on the trainer at run time, invisible to type checkers."""
    return bool(getattr(trainer, "fast_dev_run", False))


def _write_failure(exc: BaseException) -> bool:
    """A file the machine would not let us write (a full disk, a lost permission): ours or the logger's."""
    cause: BaseException | None = exc
    while cause is not None and not isinstance(cause, OSError):
        cause = cause.__cause__
    return cause is not None
