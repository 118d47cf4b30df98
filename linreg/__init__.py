"""linreg: linear regression as a real PyTorch Lightning pipeline, checked against the hand-written loop.

Where things live (one concept per file), and which way the imports run::

    model.py          LinearRegression, the tutorial's custom nn.Module
      ^
    module.py         LinRegModule: the steps, the metrics, the optimizer
    closed_form.py    the float64 least-squares solver, and ClosedForm, the callback that runs it
    figures.py        FitFigures, the callback that draws the fit

    streams.py        Parquet and CSV tables larger than memory, read by row range (pyarrow)
      ^
    tables.py         reading and checking CSV / Parquet / NPZ / NPY tables (never imports Lightning)
      ^
    batches.py        Batches: order, shuffling, DDP sharding, grouping, resume state
      ^
    data.py           LinRegData, the LightningDataModule

    checkpoints.py    atomic checkpoint writes, weights-only loading, --ckpt_path last, flags against the checkpoint
    summary.py        the fit summary (printed table, summary.json)
    callbacks.py      the checkpoint policy (signals) and the prediction writer
    export.py         `linreg export`: ONNX and torch.export programs
    io.py, errors.py  atomic writes; LinregError, the one error type for user mistakes
      ^
    cli.py            `linreg`: LightningCLI wiring; everything above is imported from here

    reference.py      the tutorial's four loops, the yardstick (with tutorial_data.py, the tutorial's tensors)
"""

from linreg.errors import LinregError
from linreg.model import LinearRegression

__all__ = ["LinearRegression", "LinregError"]
__version__ = "0.1.0"
