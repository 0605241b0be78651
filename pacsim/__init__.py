"""pacsim: transfer scientific surrogate models with PAC-Net (prune, allocate, calibrate).

The public surface lives in submodules: :mod:`pacsim.models`, :mod:`pacsim.train`,
:mod:`pacsim.pac`, :mod:`pacsim.transfer`, :mod:`pacsim.metrics`, :mod:`pacsim.io`,
:mod:`pacsim.data`, :mod:`pacsim.sims` and :mod:`pacsim.bench`. Each loads on first
attribute access (``import pacsim; pacsim.models.MLP(...)``), so the command line starts
fast.
"""

import importlib
from typing import Any

__version__ = "0.1.0"

_SUBMODULES = ("bench", "data", "device", "exact", "io", "metrics", "models", "pac", "plots",
               "sims", "train", "transfer")


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["__version__", *_SUBMODULES]
