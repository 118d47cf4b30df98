"""The ``linreg`` command: LightningCLI wiring, ``--ckpt_path`` handling, the fit summary, ``linreg export``."""

from linreg.cli.main import main

__all__ = ["main"]
