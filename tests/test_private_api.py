"""Every private Lightning attribute linreg relies on still exists.

linreg overrides or reads a few private parts of Lightning (listed at the version pin in
pyproject.toml). A Lightning upgrade that renames one should fail here, by name, instead of
breaking a fit, a resume or the CLI quietly.
"""

from __future__ import annotations

import inspect

import lightning as L
import pytest
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback

# (owner, attribute, where linreg uses it)
PRIVATE = [
    (LightningCLI, "_prepare_subcommand_parser", "cli.py: adds predict's --output and --overwrite"),
    (LightningCLI, "_parse_ckpt_path", "cli.py: checks the checkpoint instead of Lightning's silent merge"),
    (LightningCLI, "_instantiate_trainer", "cli.py: --trainer.enable_checkpointing false, one-line errors"),
    (LightningCLI, "_run_subcommand", "cli.py: the exit status after a signal"),
    (SaveConfigCallback, "setup", "cli.py: config.yaml only for fit"),
    (ModelCheckpoint, "_save_checkpoint", "callbacks.py: never a checkpoint with non-finite weights"),
    (ModelCheckpoint, "_save_last_checkpoint", "callbacks.py: last.ckpt at the end of fit and on a signal"),
    (ModelCheckpoint, "_monitor_candidates", "callbacks.py: same"),
    (L.LightningModule, "_trainer", "module.py, callbacks: is the module attached to a trainer"),
]


@pytest.mark.parametrize(("owner", "name", "use"), PRIVATE, ids=[f"{o.__name__}.{n}" for o, n, _ in PRIVATE])
def test_private_attribute_exists(owner: type, name: str, use: str) -> None:
    assert hasattr(owner, name) or name in inspect.getsource(owner), f"{owner.__name__}.{name} is gone ({use})"


def test_private_trainer_and_checkpoint_state_exist(tmp_path) -> None:
    """Attributes set in __init__: they exist only on instances."""
    trainer = L.Trainer(default_root_dir=tmp_path, logger=False, enable_progress_bar=False)
    assert hasattr(trainer, "_signal_connector") and hasattr(trainer._signal_connector, "received_sigterm")
    assert hasattr(trainer.fit_loop.epoch_loop.batch_progress, "is_last_batch")
    assert hasattr(ModelCheckpoint(), "_last_global_step_saved")
