"""A registry of model classes so that a model can be rebuilt from a JSON-able config.

Checkpoints store ``model.config()`` instead of pickling the model object, and
:func:`build` turns that config back into a fresh module.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from ..procutil import available_memory, format_bytes

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
    """Build a fresh model from a config as returned by ``model.config()`` (refused in one
    line when it cannot fit in memory, see :func:`built`)."""
    if not isinstance(config, dict) or "name" not in config:
        raise ValueError(f"model config must be a dict with a 'name' entry, got {config!r}")
    kwargs = dict(config)
    name = kwargs.pop("name")
    cls = model_class(name)
    return built(lambda: cls(**kwargs), name)


def built(factory: Callable[[], nn.Module], name: str) -> nn.Module:
    """``factory()``, refused with one ValueError line when the model cannot fit in
    memory: its parameters and buffers are counted first on the meta device (nothing
    allocated) against the memory available; an allocator failure while building says
    the same."""
    count: tuple[int, int] | None = None
    try:
        with torch.device("meta"):
            probe = factory()
        tensors = [*probe.parameters(), *probe.buffers()]
        count = (sum(p.numel() for p in probe.parameters()),
                 sum(t.numel() * t.element_size() for t in tensors))
    except Exception:  # noqa: BLE001 - a model that cannot be counted: build it and see
        pass
    avail = available_memory()
    if count is not None and avail is not None and count[1] > avail:
        raise ValueError(f"not enough memory to build the model {name}: {count[0]:,} "
                         f"parameters ({format_bytes(count[1])}), {format_bytes(avail)} "
                         "available")
    try:
        return factory()
    except (MemoryError, RuntimeError) as exc:
        if not isinstance(exc, MemoryError) and "alloc" not in str(exc).lower():
            raise
        size = ("" if count is None
                else f": {count[0]:,} parameters ({format_bytes(count[1])})")
        raise ValueError(f"not enough memory to build the model {name}{size}") from None


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

    @classmethod
    def stat_shapes(cls, config: dict[str, Any]
                    ) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
        """Shapes of the input and target normalisation statistics that a config fixes
        (checked when a checkpoint loads without recorded data shapes); None: unknown."""
        return None

    @property
    def grid_convolution(self) -> bool:
        """Whether the model convolves over 2D/3D grids in a way its ``nn.Conv2d`` /
        ``nn.Conv3d`` layers do not show (an FNO's spectral convolutions): selection
        trains such models one by one on the CPU, where stacks of them ran slower."""
        return False

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


def last_layer(model: nn.Module) -> str:
    """Module name of the last module (in registration order) that owns parameters."""
    owners = [n for n, m in model.named_modules() if any(True for _ in m.parameters(recurse=False))]
    if not owners:
        raise ValueError("model has no parameters")
    return owners[-1]


def head_names(model: nn.Module) -> list[str]:
    """Parameters that method ``head`` trains: every parameter under the submodule the
    model names as its head (:func:`pacsim.models.declared_head`, e.g. the FNO's
    projection), else the own parameters of :func:`last_layer`."""
    declared = declared_head(model)
    prefix = declared if declared is not None else last_layer(model)
    prefix = f"{prefix}." if prefix else ""
    return [n for n, _ in model.named_parameters()
            if n.startswith(prefix) and (declared is not None or "." not in n[len(prefix):])]
