"""Transfer methods behind one interface (:func:`adapt`), their typed options, and
target-only hyper-parameter selection."""

from ..models.registry import head_names, last_layer
from .methods import (
    METHODS,
    TrainingPlan,
    TransferResult,
    adapt,
    allocated_model,
    training_plan,
)
from .options import DEFAULT_GRIDS, OPTIONS, Options, check_grid, method_options
from .selection import SelectionConfig, SelectRequest, select, select_many

__all__ = ["DEFAULT_GRIDS", "METHODS", "OPTIONS", "Options", "SelectRequest",
           "SelectionConfig", "TrainingPlan", "TransferResult", "adapt", "allocated_model",
           "check_grid", "head_names", "last_layer", "method_options", "select",
           "select_many", "training_plan"]
