"""linreg from Python: ``LinearRegressor`` (a scikit-learn estimator over linreg's Lightning fit) and ``load``."""

from linreg.estimator.estimator import LinearRegressor
from linreg.estimator.loading import load
from linreg.estimator.params import ParameterError

__all__ = ["LinearRegressor", "ParameterError", "load"]
