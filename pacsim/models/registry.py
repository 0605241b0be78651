"""A registry of model classes so that a model can be rebuilt from a JSON-able config.

Checkpoints store ``model.config()`` instead of pickling the model object, and
:func:`build` turns that config back into a fresh module.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

from torch import nn

_REGISTRY: dict[str, type[nn.Module]] = {}


def register(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator: make ``cls`` buildable from ``{"name": name, **kwargs}``.

    The class must accept its config entries as keyword arguments and provide a
    ``config()`` method (inherit :class:`Configurable` to get one).
    """

    def deco(cls: type[nn.Module]) -> type[nn.Module]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"model name {name!r} is already registered to {_REGISTRY[name]}")
        _REGISTRY[name] = cls
        cls.registry_name = name
        return cls

    return deco


def registered() -> list[str]:
    """Names of all registered model classes."""
    return sorted(_REGISTRY)


def model_class(name: str) -> type[nn.Module]:
    """The class registered as ``name``."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; registered models: {registered()}")
    return _REGISTRY[name]


def build(config: dict[str, Any]) -> nn.Module:
    """Build a fresh model from a config as returned by ``model.config()``."""
    if not isinstance(config, dict) or "name" not in config:
        raise ValueError(f"model config must be a dict with a 'name' entry, got {config!r}")
    kwargs = dict(config)
    return model_class(kwargs.pop("name"))(**kwargs)


class Configurable:
    """Mixin for registered models: ``config()`` from the arguments stored by ``_set_config``."""

    registry_name: str
    _config: dict[str, Any]
    #: Constructor arguments that :meth:`for_data` takes from the data's shapes.
    DATA_ARGS: ClassVar[tuple[str, ...]] = ()
    #: Name of the submodule that is the model's head (see :func:`declared_head`).
    HEAD_MODULE: ClassVar[str | None] = None

    @classmethod
    def for_data(cls, input_shape: Sequence[int], target_shape: Sequence[int],
                 **kwargs: Any) -> nn.Module:
        """The model sized for samples of ``input_shape`` -> ``target_shape`` (one
        sample, no batch axis); ``kwargs`` are the other constructor arguments."""
        raise ValueError(f"model {cls.registry_name!r} cannot be sized from data (it "
                         "defines no for_data)")

    def _set_config(self, **kwargs: Any) -> None:
        self._config = {k: _jsonable(v) for k, v in kwargs.items()}

    def config(self) -> dict[str, Any]:
        """JSON-able config; ``build(model.config())`` makes a freshly initialised twin."""
        return {"name": type(self).registry_name, **self._config}


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        value = list(value)
    try:
        json.dumps(value)
    except TypeError as exc:
        raise ValueError(f"model argument {value!r} is not JSON-serialisable") from exc
    return value


def declared_head(model: nn.Module) -> str | None:
    """The submodule a model names as its head (class attribute ``HEAD_MODULE``, e.g.
    the FNO's projection), checked to exist; None when it names none."""
    name = getattr(model, "HEAD_MODULE", None)
    if name is None:
        return None
    try:
        model.get_submodule(name)
    except AttributeError:
        raise ValueError(f"{type(model).__name__}.HEAD_MODULE names no submodule: "
                         f"{name!r}") from None
    return name
