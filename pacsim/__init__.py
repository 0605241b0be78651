"""pacsim: transfer scientific surrogate models with PAC-Net (prune, allocate, calibrate).

The public surface lives in submodules: :mod:`pacsim.models`, :mod:`pacsim.train`,
:mod:`pacsim.pac`, :mod:`pacsim.transfer`, :mod:`pacsim.metrics` and :mod:`pacsim.io`.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
