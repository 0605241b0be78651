"""Simulators of source/target settings, written as pacsim-h5 files.

``simulate(name, setting=..., n=..., seed=..., out=...)`` runs one; ``names()`` lists them.
"""

from __future__ import annotations

import importlib

from .base import Param, SimulationError, Simulator, get, listing, names, parse_value, simulate

MODULES = ("friedman", "pendulum", "burgers", "darcy", "diode")


def load_all() -> None:
    """Import every simulator module so that it registers itself."""
    for m in MODULES:
        importlib.import_module(f"{__name__}.{m}")


__all__ = ["MODULES", "Param", "SimulationError", "Simulator", "get", "listing", "load_all",
           "names", "parse_value", "simulate"]
