"""Transfer methods behind one interface (:func:`adapt`), their typed options, and
target-only hyper-parameter selection. Every method is declared once in the registry
(:mod:`pacsim.transfer.registry`); a module of this package that registers one is
imported here, so a new method is one new module."""

from ..models.registry import head_names, last_layer
from .methods import (
    TrainingPlan,
    TransferResult,
    adapt,
    allocated_model,
    training_plan,
)
from .options import DEFAULT_GRIDS, OPTIONS, Options, check_grid, method_options
from .registry import Method, PlanContext, discover, names, register
from .selection import Budget, SelectionConfig, SelectRequest, select, select_many

discover(__name__, __path__)

#: The default methods, in report order: what ``auto`` compares, the demo runs and a
#: suite without a ``methods`` list runs. Opt-in methods (``lora``) are registered but
#: not listed: see :func:`pacsim.transfer.registry.names`.
METHODS: tuple[str, ...] = names(default=True)

__all__ = ["DEFAULT_GRIDS", "METHODS", "OPTIONS", "Budget", "Method", "Options", "PlanContext",
           "SelectRequest", "SelectionConfig", "TrainingPlan", "TransferResult", "adapt",
           "allocated_model", "check_grid", "head_names", "last_layer", "method_options",
           "names", "register", "select", "select_many", "training_plan"]
