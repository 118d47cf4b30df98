"""The float64 least-squares layer: TSQR accumulation, solve, penalties, inference, the SGD step.

Pure torch and numpy (scipy for the t distribution): nothing here imports Lightning.
"""

from linreg.lstsq.optimum import Optimum
from linreg.lstsq.solver import LeastSquares
from linreg.lstsq.step import auto_step

__all__ = ["LeastSquares", "Optimum", "auto_step"]
