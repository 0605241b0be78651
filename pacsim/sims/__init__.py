"""Simulators of source/target settings, written as pacsim-h5 files.

``simulate(name, setting=..., n=..., seed=..., out=...)`` runs one; ``names()`` lists them.
"""

from __future__ import annotations

from .base import (
    MODULES,
    Param,
    SimulationError,
    Simulator,
    get,
    listing,
    load_all,
    names,
    parse_value,
    simulate,
)

__all__ = ["MODULES", "Param", "SimulationError", "Simulator", "get", "listing", "load_all",
           "names", "parse_value", "simulate"]
