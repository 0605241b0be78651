"""Build a registered model sized for a dataset's sample shapes, options checked by name.

Each model class says which constructor arguments the data fixes (``DATA_ARGS``) and
how (``for_data``); everything else is the model's own options, checked here so that a
typo is an error that lists what the model does take.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from .registry import built, model_class

Shape = Sequence[int]


def default_model(input_shape: Shape) -> str:
    """``mlp`` for flat samples, ``cnn`` for fields."""
    return "mlp" if len(input_shape) == 1 else "cnn"


def model_options(name: str) -> list[str]:
    """The constructor options of model ``name`` that the data does not fix."""
    cls = model_class(name)
    fixed = set(getattr(cls, "DATA_ARGS", ()))
    return [p for p in inspect.signature(cls.__init__).parameters
            if p not in fixed and p not in ("self", "args", "kwargs")]


def for_data(name: str, input_shape: Shape, target_shape: Shape,
             options: Mapping[str, Any] | None = None) -> nn.Module:
    """Model ``name`` (``"auto"``: see :func:`default_model`) for samples of
    ``input_shape`` mapping to ``target_shape``, with its other ``options``."""
    if name == "auto":
        name = default_model(input_shape)
    cls = model_class(name)
    known = model_options(name)
    opts = dict(options or {})
    for key in opts:
        if key in getattr(cls, "DATA_ARGS", ()):
            raise ValueError(f"model {name!r}: {key!r} is set from the data's shapes")
        if key not in known:
            raise ValueError(f"model {name!r} has no option {key!r}; its options: "
                             f"{', '.join(known)}")
    try:
        return built(lambda: cls.for_data(tuple(input_shape), tuple(target_shape),  # type: ignore[attr-defined]
                                          **opts), name)
    except TypeError as exc:
        raise ValueError(f"model {name!r}: {exc}") from None
