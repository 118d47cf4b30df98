"""Every private Lightning part linreg uses, in one place, each with the reason no public part does the job.

Lightning is pinned below 2.7 for these (pyproject.toml). ``tests/test_private_api.py`` checks that each
still exists in the installed Lightning, and that no other file of linreg reaches into Lightning's
private attributes except the overrides listed in ``OVERRIDDEN``.
"""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.core.optimizer import LightningOptimizer

# Private methods linreg's subclasses override: (class, method, where, why).
OVERRIDDEN: list[tuple[type, str, str, str]] = [
    (LightningCLI, "_prepare_subcommand_parser", "cli/app.py", "predict's --output and --overwrite flags"),
    (LightningCLI, "_parse_ckpt_path", "cli/app.py", "check a checkpoint instead of Lightning's silent merge"),
    (LightningCLI, "_instantiate_trainer", "cli/app.py", "atomic checkpoint writes; one-line errors"),
    (LightningCLI, "_run_subcommand", "cli/app.py", "exit status after a signal; no empty run folders"),
    (ModelCheckpoint, "_save_checkpoint", "training/checkpointing.py", "never a checkpoint of non-finite weights"),
]

# Private attributes the functions below read or write: (object, attribute) for the test.
USED: list[tuple[str, str]] = [
    ("LightningModule", "_trainer"),
    ("Trainer", "_signal_connector"),
    ("ModelCheckpoint", "_save_last_checkpoint"),
    ("ModelCheckpoint", "_monitor_candidates"),
    ("ModelCheckpoint", "_last_global_step_saved"),
    ("ModelCheckpoint", "_should_skip_saving_checkpoint"),
    ("ModelCheckpoint", "_every_n_epochs"),
    ("TensorBoardLogger", "_version"),
    ("LightningOptimizer", "_on_before_step"),
    ("LightningOptimizer", "_on_after_step"),
]


def attached(module: L.LightningModule) -> bool:
    """Whether a trainer runs the module: ``module.trainer`` raises when none does, and tests and the
    estimator call the module on its own."""
    return module._trainer is not None


def plain_steps(trainer: L.Trainer) -> bool:
    """Whether ``manual_backward(loss)`` would do nothing but ``loss.backward()`` in this fit, and
    ``LightningOptimizer.step()`` nothing but ``plain_step``'s: then the training step calls those
    directly. At batch 1024, Lightning's path (strategy, precision plugin, a dispatch of each hook to every
    callback) cost a third of an update (issue 24's profile).

    That holds on one device without a distributed strategy (``SingleDeviceStrategy``'s pre- and
    post-backward do nothing), in full 32- or 64-bit precision (``Precision``/``DoublePrecision``: no loss
    scaling; gradient clipping, which manual optimization refuses anyway, is all its step adds), without a
    profiler (it would time the hooks), and while no callback or module overrides ``on_before_backward``,
    ``on_after_backward``, ``on_before_optimizer_step`` or the module's ``backward``. Anything else (DDP,
    mixed precision, a user's gradient callback) keeps Lightning's path. It lives here because it restates
    what ``Strategy.backward``/``optimizer_step`` and ``Precision``'s hooks do inside.
    """
    from lightning.pytorch.plugins.precision import DoublePrecision, Precision
    from lightning.pytorch.profilers import PassThroughProfiler
    from lightning.pytorch.strategies import SingleDeviceStrategy
    from lightning.pytorch.utilities.model_helpers import is_overridden

    module = trainer.lightning_module
    hooks = ("on_before_backward", "on_after_backward", "on_before_optimizer_step")
    callbacks: list[L.Callback] = getattr(trainer, "callbacks", [])  # set in Trainer.__init__, untyped
    return (
        type(trainer.strategy) is SingleDeviceStrategy
        and type(trainer.precision_plugin) in (Precision, DoublePrecision)
        and isinstance(getattr(trainer, "profiler", None), PassThroughProfiler)
        and not any(is_overridden(hook, module, L.LightningModule) for hook in (*hooks, "backward"))
        and not any(is_overridden(hook, cb, L.Callback) for cb in callbacks for hook in hooks)
    )


def plain_step(optimizer: LightningOptimizer) -> None:
    """``optimizer.step()`` without the strategy and precision plugin in between, for a fit where
    ``plain_steps`` holds (their work is then hook dispatches that reach no override). The manual loop's
    own callbacks around a step still run: ``_on_after_step`` counts it, and that count is
    ``trainer.global_step``."""
    optimizer._on_before_step()
    optimizer.optimizer.step()
    optimizer._on_after_step()


def stop_after_this_epoch(trainer: L.Trainer) -> None:
    """Ask the fit loop to stop at the end of this epoch as after a SIGTERM, so that Lightning raises
    ``SIGTERMException`` once the epoch's validation and logging are done (``should_stop`` would end the
    fit quietly, as finished, and ``CheckpointPolicy`` could not tell a stop from an end)."""
    trainer._signal_connector.received_sigterm = True


def save_last_checkpoint(callback: ModelCheckpoint, trainer: L.Trainer, again: bool = False) -> None:
    """Write ``last.ckpt`` now: at the end of fit, on a signal, or every N epochs without a kept epoch
    file (Lightning updates ``last`` only beside one). ``again``: even when a checkpoint already holds
    this step, since the model a fit ends with (the average of the iterates) can differ from it."""
    if again:
        callback._last_global_step_saved = -1
    callback._save_last_checkpoint(trainer, callback._monitor_candidates(trainer))


def due_every_n_epochs(callback: ModelCheckpoint, trainer: L.Trainer) -> bool:
    """Whether ``every_n_epochs`` asks for a checkpoint at this epoch's end, as Lightning decides it."""
    every: Any = callback._every_n_epochs
    due = bool(every) and (trainer.current_epoch + 1) % every == 0
    return due and not callback._should_skip_saving_checkpoint(trainer)


def picks_its_version(logger: Any) -> bool:
    """Whether a logger (TensorBoard's, CSV's) picks the next free ``version_N`` itself: no version was
    given. Its ``version`` property would fix one as a side effect, so the unset value is read."""
    return getattr(logger, "_version", "given") is None


def pick_version_again(logger: Any) -> None:
    """Forget the version a logger picked, so that its next ``version`` lists the run folders again: the
    one it picked was taken by another run in between, and there is no public way to ask again."""
    logger._version = None
