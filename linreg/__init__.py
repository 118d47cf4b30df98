"""linreg: linear regression as a real PyTorch Lightning pipeline, checked against the hand-written loop.

The folders are the layers; imports run downward only::

    estimator/  ``LinearRegressor`` (scikit-learn's interface over the Lightning fit) and ``load``
    cli/        the ``linreg`` command: LightningCLI wiring, --ckpt_path, the fit summary, export
    training/   the LightningModule, its metrics and callbacks (closed form, checkpoints, predictions, figures)
    data/       tables read whole or streamed, batches, the LightningDataModule
    tutorial/   the seed tutorial's data and its four hand-written loops
    lstsq/      the float64 least-squares solver, penalties, inference, the SGD step (no Lightning)
    model.py, errors.py, io.py   the tutorial's nn.Module, LinRegError, atomic file writes
"""

from importlib.metadata import PackageNotFoundError, version

from linreg.errors import LinRegError
from linreg.model import LinearRegression

try:
    __version__ = version("linreg")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"

__all__ = ["LinRegError", "LinearRegression", "LinearRegressor", "__version__", "load"]


def __getattr__(name: str) -> object:
    """``LinearRegressor`` and ``load`` on first use: ``import linreg`` (and every CLI start) need not
    pay for scikit-learn and Lightning."""
    if name in ("LinearRegressor", "load"):
        import linreg.estimator

        return getattr(linreg.estimator, name)
    raise AttributeError(f"module 'linreg' has no attribute {name!r}")
