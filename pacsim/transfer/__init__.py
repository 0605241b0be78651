"""Transfer methods behind one interface (:func:`adapt`), their typed options, and
target-only hyper-parameter selection."""

from .methods import METHODS, TransferResult, adapt, head_names, last_layer
from .options import DEFAULT_GRIDS, OPTIONS, Options, check_grid, method_options
from .selection import SelectionConfig, select

__all__ = ["DEFAULT_GRIDS", "METHODS", "OPTIONS", "Options", "SelectionConfig",
           "TransferResult", "adapt", "check_grid", "head_names", "last_layer",
           "method_options", "select"]
