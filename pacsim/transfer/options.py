"""Typed options of every transfer method: one frozen dataclass per method, defaults in
one place, validated when built (unknown keys and wrong types name the key).

:func:`method_options` turns a plain mapping (a suite's ``[method.X]`` table, the
keyword arguments of :func:`pacsim.transfer.adapt`) into the method's options object.
:func:`check_grid` validates a selection grid against the same schema.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, ClassVar

from ..pac import DEFAULT_RATIO, PAPER_LAM, SCOPES, SUBSPACES
from .registry import View

ALLOCATE_MODES = ("fixed", "source")
#: When allocate="source" stops: at the unpruned loss, or when ``allocate_patience`` epochs
#: bring no improvement.
ALLOCATE_STOPS = ("patience", "reference")


def _check_nonneg(name: str, value: float) -> None:
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")


@dataclass(frozen=True)
class Options:
    """Base of every method's options; a method without options uses it as is."""

    #: Option names that shape a shared, cached preparation step (PAC's allocate).
    PREPARE_FIELDS: ClassVar[tuple[str, ...]] = ()

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able values, in field order."""
        return dataclasses.asdict(self)

    def prepare_config(self) -> dict[str, Any]:
        """The options that shape the cached preparation step (empty if none)."""
        return {k: getattr(self, k) for k in self.PREPARE_FIELDS}

    def identity_dict(self) -> dict[str, Any]:
        """The options a benchmark cell's identity is built from: :meth:`to_dict`, less
        a setting that cannot change the result or that names what pacsim did before
        the setting existed (so earlier records keep their identities)."""
        return self.to_dict()


@dataclass(frozen=True)
class ScratchOptions(Options):
    """``init_seed``: seed of the fresh initialisation (default: the training seed)."""

    init_seed: int | None = None


@dataclass(frozen=True)
class L2SPOptions(Options):
    """``alpha``: L2-SP strength, penalty ``alpha/2 * ||w - w_source||^2``."""

    alpha: float = 0.01

    def __post_init__(self) -> None:
        _check_nonneg("l2sp alpha", self.alpha)


@dataclass(frozen=True)
class PACBaseOptions(Options):
    """What every PAC recipe shares.

    - ``ratio``, ``scope``: pruning share and ranking (``"global"`` or per ``"layer"``).
    - ``lam_sp``: optional pull of allocate towards the pruned source weights.
    - ``allocate``: ``"source"`` retrains the essential weights on the source, bounded by
      ``allocate_max_factor`` times the allocate budget, stopping after
      ``allocate_patience`` epochs without improvement of the source error (on a source
      validation split when given) and keeping the best epoch; recipes other than ``pac``
      stop as soon as that error is back at the unpruned model's
      (:meth:`stops_at_reference`; ``pac`` chooses with ``allocate_stop``). ``"fixed"``
      runs the budget.
    - ``lam``: ``lam * ||w_freed||^2`` during calibrate (the paper's 0.01 hurts far
      targets; selection chooses it per target).
    - ``subspace``: what calibrate trains: every freed entry (``"all"``), the freed
      entries of the head (``"last"``), the target's own copy of the whole head
      (``"head"``), or no weight entry (``"biases"``: only the target's own biases).
    - ``train_biases``: the target gets its own biases (the source keeps its own).
    """

    PREPARE_FIELDS: ClassVar[tuple[str, ...]] = (
        "ratio", "scope", "lam_sp", "allocate", "allocate_max_factor", "allocate_patience")

    ratio: float = DEFAULT_RATIO
    scope: str = SCOPES[0]
    lam_sp: float = 0.0
    allocate: str = "source"
    allocate_max_factor: float = 4.0
    allocate_patience: int = 10
    lam: float = 0.0
    subspace: str = "all"
    train_biases: bool = True

    def __post_init__(self) -> None:
        if not (math.isfinite(self.ratio) and 0.0 < self.ratio < 1.0):
            raise ValueError(f"pruning ratio must lie in (0, 1), got {self.ratio!r}")
        _check_choice("pac scope", self.scope, SCOPES)
        _check_choice("pac allocate", self.allocate, ALLOCATE_MODES)
        _check_choice("pac subspace", self.subspace, SUBSPACES)
        if self.subspace == "biases" and not self.train_biases:
            raise ValueError("pac subspace 'biases' needs train_biases=True")
        _check_nonneg("pac lam", self.lam)
        _check_nonneg("pac lam_sp", self.lam_sp)
        if not (math.isfinite(self.allocate_max_factor) and self.allocate_max_factor >= 1):
            raise ValueError(f"pac allocate_max_factor must be >= 1, got "
                             f"{self.allocate_max_factor!r}")
        if self.allocate_patience < 1:
            raise ValueError(f"pac allocate_patience must be >= 1, got "
                             f"{self.allocate_patience!r}")

    def ratios(self) -> tuple[float, ...]:
        """The pruning ratios allocate tries, in order: here only ``ratio``."""
        return (self.ratio,)

    def recovery(self) -> float | None:
        """The source loss allocate must reach, as a multiple of the unpruned model's,
        before it keeps a ratio (None: the first ratio is kept whatever the loss)."""
        return None

    def stops_at_reference(self) -> bool:
        """Whether allocate="source" stops as soon as the source validation loss is back
        at the unpruned model's (else it goes on until ``allocate_patience``)."""
        return True


#: How far each back-off lowers the pruning ratio (0.8 -> 0.65 -> 0.5).
RATIO_STEP = 0.15


@dataclass(frozen=True)
class PACOptions(PACBaseOptions):
    """pacsim's PAC recipe (method ``pac``): the shared PAC options (see
    :class:`PACBaseOptions`) and a source that is always recovered.

    - ``source_tolerance``: with ``allocate="source"``, a pruning ratio is kept once
      allocate brings the source validation loss within this factor of the unpruned
      model's; otherwise the ratio backs off by :data:`RATIO_STEP`, down to
      ``min_ratio``, and allocate runs again from the unpruned model. When no ratio
      recovers the source, the one with the lowest source loss is kept. The record says
      which ratio was used and why.
    - ``min_ratio``: the lowest ratio tried (``min_ratio >= ratio``: no back-off).
    - ``allocate_stop``: ``"patience"`` (default) trains allocate on until
      ``allocate_patience`` epochs bring no improvement and keeps its best epoch: the
      essential weights then fit the source better than the unpruned model did (source
      test RMSE 0.82-0.92x the unpruned model's on the diode, against 0.97-1.07x).
      ``"reference"`` stops as soon as the validation loss is back at the unpruned
      model's: a threshold one noisy epoch can cross, which recovers the validation
      loss but not always the test error; what pacsim did before.
    """

    PREPARE_FIELDS: ClassVar[tuple[str, ...]] = (
        *PACBaseOptions.PREPARE_FIELDS, "source_tolerance", "min_ratio", "allocate_stop")

    source_tolerance: float = 1.01
    min_ratio: float = 0.5
    allocate_stop: str = "patience"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (math.isfinite(self.source_tolerance) and self.source_tolerance >= 1):
            raise ValueError(f"pac source_tolerance must be >= 1, got "
                             f"{self.source_tolerance!r}")
        if not (math.isfinite(self.min_ratio) and 0.0 < self.min_ratio < 1.0):
            raise ValueError(f"pac min_ratio must lie in (0, 1), got {self.min_ratio!r}")
        _check_choice("pac allocate_stop", self.allocate_stop, ALLOCATE_STOPS)

    def identity_dict(self) -> dict[str, Any]:
        """As :meth:`Options.identity_dict`, without ``allocate_stop`` where it is
        "reference" (the behaviour of records from before the option) or where allocate
        runs a fixed budget (it has no effect there)."""
        return self._without_stop(super().identity_dict())

    def prepare_config(self) -> dict[str, Any]:
        return self._without_stop(super().prepare_config())

    def _without_stop(self, config: dict[str, Any]) -> dict[str, Any]:
        if self.allocate_stop == "reference" or self.allocate != "source":
            config.pop("allocate_stop", None)
        return config

    def stops_at_reference(self) -> bool:
        return self.allocate_stop == "reference"

    def ratios(self) -> tuple[float, ...]:
        """``ratio``, then lower by :data:`RATIO_STEP` while not below ``min_ratio``
        (only with ``allocate="source"``, which measures the source loss)."""
        if self.allocate != "source":
            return (self.ratio,)
        out = [self.ratio]
        while round(out[-1] - RATIO_STEP, 6) >= self.min_ratio:
            out.append(round(out[-1] - RATIO_STEP, 6))
        return tuple(out)

    def recovery(self) -> float | None:
        return self.source_tolerance if self.allocate == "source" else None


@dataclass(frozen=True)
class PACPaperOptions(PACBaseOptions):
    """The paper's recipe (method ``pac-paper``): a fixed allocate budget, every freed
    entry calibrated with ``lam = 0.01``, source biases shared, one pruning ratio."""

    allocate: str = "fixed"
    lam: float = PAPER_LAM
    train_biases: bool = False


#: Every registered method's options class (a live view of
#: :mod:`pacsim.transfer.registry`, where each method declares it).
OPTIONS: Mapping[str, type[Options]] = View("options")

#: Every registered method's default selection grid (a view of the registry; the
#: built-ins' grids and why they are what they are: :mod:`pacsim.transfer.methods`).
DEFAULT_GRIDS: Mapping[str, Any] = View("grid")

#: Grid keys that are not method options: training settings every method shares.
TRAIN_GRID_KEYS = ("lr",)


def _field_types(cls: type[Options]) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in fields(cls)}


def _coerce(method: str, key: str, value: Any, hint: Any) -> Any:
    """``value`` checked against the annotation ``hint`` (int accepted for float)."""
    allowed = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    if value is None and type(None) in allowed:
        return None
    for t in allowed:
        if t is bool and isinstance(value, bool):
            return value
        if t is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if t is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if t is str and isinstance(value, str):
            return value
    names = " or ".join("None" if t is type(None) else t.__name__ for t in allowed)
    raise ValueError(f"method {method!r} option {key!r} must be {names}, "
                     f"got {type(value).__name__} {value!r}")


def method_options(method: str, raw: Mapping[str, Any] | Options | None = None) -> Options:
    """The options object of ``method`` from ``raw``; ValueError names a bad key."""
    if method not in OPTIONS:
        raise ValueError(f"unknown transfer method {method!r}; choose one of {list(OPTIONS)}")
    cls = OPTIONS[method]
    if isinstance(raw, Options):
        if type(raw) is not cls:
            raise ValueError(f"method {method!r} takes {cls.__name__}, got {type(raw).__name__}")
        return raw
    raw = dict(raw or {})
    types_ = _field_types(cls)
    unknown = sorted(set(raw) - set(types_))
    if unknown:
        known = ", ".join(types_) or "none"
        raise ValueError(f"method {method!r} has no option {unknown[0]!r} (its options: {known})")
    values = {k: _coerce(method, k, v, types_[k]) for k, v in raw.items()}
    try:
        return cls(**values)
    except ValueError as exc:
        raise ValueError(f"method {method!r}: {exc}") from None


Grid = Mapping[str, list[Any]] | Sequence[Mapping[str, list[Any]]]


def check_grid(method: str, grid: Grid) -> dict[str, list[Any]] | list[dict[str, list[Any]]]:
    """A selection grid for ``method``: each key an option (or ``lr``), each value a
    non-empty list of valid values; options that shape a cached preparation step
    (PAC's pruning and allocate) cannot be searched per cell. A list of such tables is
    the union of their products (as scikit-learn's ``ParameterGrid`` reads it)."""
    if isinstance(grid, (list, tuple)):
        if not grid:
            raise ValueError(f"method {method!r} grid is an empty list")
        return [_check_table(method, g) for g in grid]
    return _check_table(method, grid)


def _check_table(method: str, grid: Mapping[str, Any]) -> dict[str, list[Any]]:
    if not isinstance(grid, Mapping):
        raise ValueError(f"method {method!r} grid must be a table or a list of tables, "
                         f"got {grid!r}")
    cls = OPTIONS[method] if method in OPTIONS else None
    if cls is None:
        raise ValueError(f"unknown transfer method {method!r}; choose one of {list(OPTIONS)}")
    out: dict[str, list[Any]] = {}
    types_ = _field_types(cls)
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ValueError(f"method {method!r} grid {key!r} must be a non-empty list")
        if key in TRAIN_GRID_KEYS:
            vals = [_coerce(method, key, v, float) for v in values]
            if any(not (math.isfinite(v) and v > 0) for v in vals):
                raise ValueError(f"method {method!r} grid {key!r} values must be positive")
            out[key] = vals
            continue
        if key not in types_:
            known = ", ".join(list(TRAIN_GRID_KEYS) + list(types_))
            raise ValueError(f"method {method!r} grid has no key {key!r} (allowed: {known})")
        if key in cls.PREPARE_FIELDS:
            raise ValueError(f"method {method!r} grid cannot search {key!r}: it shapes the "
                             "cached allocate step shared by every cell; set it in the options")
        vals = [_coerce(method, key, v, types_[key]) for v in values]
        for v in vals:  # validate each value through the dataclass itself
            method_options(method, {key: v})
        out[key] = vals
    return out
