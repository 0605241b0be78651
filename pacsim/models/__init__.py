"""Surrogate models and the registry that rebuilds them from configs."""

from .cnn import CNN
from .mlp import MLP
from .physical import PhysicalModel
from .registry import Configurable, build, register, registered

__all__ = ["CNN", "MLP", "Configurable", "PhysicalModel", "build", "register", "registered"]
