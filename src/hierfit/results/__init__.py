"""FitResult, effects tables, persistence, and the linear parameter layout."""

from hierfit.results.fit_result import DEFAULT_LEVEL, FitResult
from hierfit.results.persistence import load_fit, save_fit

__all__ = ["DEFAULT_LEVEL", "FitResult", "load_fit", "save_fit"]
