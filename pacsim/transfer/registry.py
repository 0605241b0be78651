"""The transfer-method registry: each method declares itself once, as a :class:`Method`.

A method is its name, its options dataclass, its default selection grid, the function
that builds its :class:`~pacsim.transfer.TrainingPlan` and two flags the rest of pacsim
asks instead of testing names: ``keeps_source`` (one network serves the source and the
target settings, through a source view) and ``allocates`` (it plans from a prepared,
allocated model: it needs the source data or ``allocated=``). Every list of methods
(``METHODS``, ``OPTIONS``, ``DEFAULT_GRIDS``, ``auto``'s candidates) is a view of it.

Registering a method::

    register(Method("mine", MyOptions, {"lr": [1e-3, 1e-2]}, my_plan))

where ``my_plan(source_model, opts, ctx)`` returns a ``TrainingPlan`` (a copy of the
source model, the entries that may change, an optional L2 pull). A module of
``pacsim.transfer`` that registers a method is found by the package on import.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import nn

    from ..pac import Masks
    from .methods import TrainingPlan
    from .options import Options


@dataclass(frozen=True)
class PlanContext:
    """What a plan builder may need besides the model and the options: the method's name,
    the training seed, PAC's ``allocated`` (model, masks), whether the plan is the final
    training (not a cross-validation fold) and the device of a final plan's bookkeeping."""

    method: str
    seed: int | None = None
    allocated: tuple[nn.Module, Masks] | None = None
    final: bool = False
    device: str | torch.device = "auto"


PlanBuilder = Callable[["nn.Module", "Options", PlanContext], "TrainingPlan"]


@dataclass(frozen=True)
class Method:
    """One transfer method, declared in one place (see the module docstring)."""

    name: str
    options: type[Options]
    #: Default selection grid: a table option -> values, or a list of such tables.
    grid: Any
    plan: PlanBuilder
    #: One network serves both settings (a source view): PAC.
    keeps_source: bool = False
    #: Plans from an allocated (model, masks): needs ``source=`` or ``allocated=``.
    allocates: bool = False
    #: In :data:`METHODS` (what ``auto`` compares, the demo runs, suites default to);
    #: False: opt-in, run only where named.
    default: bool = True


_METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
    """Add ``method`` (a name registered twice is refused); returns it."""
    if method.name in _METHODS and _METHODS[method.name] != method:
        raise ValueError(f"transfer method {method.name!r} is already registered")
    _METHODS[method.name] = method
    return method


def get(name: str) -> Method:
    """The method registered as ``name``; ValueError listing the registered ones."""
    if name not in _METHODS:
        raise ValueError(f"unknown transfer method {name!r}; choose one of {list(_METHODS)}")
    return _METHODS[name]


def names(*, default: bool | None = None, keeps_source: bool | None = None
          ) -> tuple[str, ...]:
    """Registered names in registration order, filtered by the flags given."""
    return tuple(m.name for m in _METHODS.values()
                 if (default is None or m.default == default)
                 and (keeps_source is None or m.keeps_source == keeps_source))


class View(Mapping[str, Any]):
    """A live, read-only mapping name -> one attribute of every registered method."""

    def __init__(self, attribute: str) -> None:
        self._attribute = attribute

    def __getitem__(self, name: str) -> Any:
        if name not in _METHODS:
            raise KeyError(name)
        return getattr(_METHODS[name], self._attribute)

    def __iter__(self) -> Iterator[str]:
        return iter(list(_METHODS))

    def __len__(self) -> int:
        return len(_METHODS)

    def __repr__(self) -> str:
        return f"{{{', '.join(f'{k!r}: {v!r}' for k, v in self.items())}}}"



def discover(package: str, path: Any) -> None:
    """Import every module of ``package`` (its ``__path__``): a module that declares a
    method registers it on import, so a new method is one new module."""
    import importlib
    import pkgutil

    for info in pkgutil.iter_modules(path):
        importlib.import_module(f"{package}.{info.name}")
