"""A registry of model classes so that a model can be rebuilt from a JSON-able config.

Checkpoints store ``model.config()`` instead of pickling the model object, and
:func:`build` turns that config back into a fresh module.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

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


def build(config: dict[str, Any]) -> nn.Module:
    """Build a fresh model from a config as returned by ``model.config()``."""
    if not isinstance(config, dict) or "name" not in config:
        raise ValueError(f"model config must be a dict with a 'name' entry, got {config!r}")
    kwargs = dict(config)
    name = kwargs.pop("name")
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; registered models: {registered()}")
    return _REGISTRY[name](**kwargs)


class Configurable:
    """Mixin for registered models: ``config()`` from the arguments stored by ``_set_config``."""

    registry_name: str
    _config: dict[str, Any]

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
