"""linreg: linear regression as a real PyTorch Lightning pipeline, checked against the hand-written loop."""

from linreg.errors import LinregError
from linreg.model import LinearRegression

__all__ = ["LinearRegression", "LinregError"]
__version__ = "0.1.0"
