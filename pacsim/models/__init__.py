"""Surrogate models and the registry that rebuilds them from configs."""

from .cnn import CNN
from .fno import FNO
from .mlp import MLP
from .physical import PhysicalModel
from .registry import (
    Configurable,
    build,
    declared_head,
    head_names,
    last_layer,
    model_class,
    register,
    registered,
)

__all__ = ["CNN", "FNO", "MLP", "Configurable", "PhysicalModel", "build", "declared_head",
           "head_names", "last_layer", "model_class", "register", "registered"]
