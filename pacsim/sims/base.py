"""The simulator interface: parameters with units and ranges, settings, and
:func:`simulate`, which streams a simulator's samples into a pacsim-h5 file."""

from __future__ import annotations

import importlib
import itertools
import json
import math
import os
import shutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import procutil
from ..data.writer import DatasetWriter
from ..fsutil import check_target
from ..procutil import format_bytes
from ..progress import progress_bar

Block = tuple[np.ndarray, np.ndarray]


class SimulationError(ValueError):
    """Unknown simulator, parameter or setting, or a value out of range."""


@dataclass(frozen=True)
class Param:
    """One physical or sampling parameter of a simulator."""

    name: str
    unit: str
    help: str
    default: Any
    low: float | None = None
    high: float | None = None
    kind: str = "float"  # "float", "int" or "floats" (a list; None = derived)
    length: int | None = None  # for "floats"

    def coerce(self, value: Any, simulator: str) -> Any:
        """Validate and convert a value; :class:`SimulationError` naming it otherwise."""
        where = f"{simulator}: parameter {self.name!r}"
        if value is None and self.kind == "floats":
            return None  # derived by the simulator's finalize step
        if any(isinstance(v, bool) for v in (value if isinstance(value, (list, tuple))
                                             else [value])):
            raise SimulationError(f"{where}: cannot use {value!r} ({self.kind}, not a "
                                  "true/false value)")
        try:
            if self.kind == "floats":
                vals = [float(v) for v in (value if isinstance(value, (list, tuple)) else [value])]
                if self.length is not None and len(vals) != self.length:
                    raise SimulationError(f"{where} needs {self.length} values, got {len(vals)}")
                for v in vals:
                    self._check_range(v, where)
                return vals
            if self.kind == "int":
                if isinstance(value, float) and not value.is_integer():
                    raise SimulationError(f"{where} must be an integer, got {value!r}")
                v = int(value)
            else:
                v = float(value)
        except (TypeError, ValueError) as exc:
            if isinstance(exc, SimulationError):
                raise
            raise SimulationError(f"{where}: cannot use {value!r} ({self.kind})") from None
        self._check_range(v, where)
        return v

    def _check_range(self, v: float, where: str) -> None:
        if not math.isfinite(v):
            raise SimulationError(f"{where} must be finite, got {v!r}")
        if (self.low is not None and v < self.low) or (self.high is not None and v > self.high):
            raise SimulationError(f"{where} = {v!r} is outside [{self.low}, {self.high}]")


@dataclass
class Simulator:
    """A family of simulations with a source and a target setting.

    ``generate(n, params, rng)`` yields blocks ``(inputs, targets)`` (or with a third
    entry, per-sample parameters); ``coords(params)`` returns the grids; ``describe``
    is what changes between settings and why it is hard; ``shapes(params)`` gives one
    sample's input and target shapes (without it, the first block tells).
    """

    name: str
    summary: str
    params: tuple[Param, ...]
    settings: dict[str, dict[str, Any]]
    generate: Callable[[int, dict[str, Any], np.random.Generator], Iterator[tuple[Any, ...]]]
    coords: Callable[[dict[str, Any]], dict[str, np.ndarray]] = lambda p: {}
    input_names: Callable[[dict[str, Any]], Sequence[str] | None] = lambda p: None
    sample_param_names: Sequence[str] | None = None
    finalize: Callable[[dict[str, Any], str], dict[str, Any]] = lambda p, s: p
    describe: str = ""
    shapes: Callable[[dict[str, Any]], tuple[Sequence[int], Sequence[int]]] | None = None
    """(input shape, target shape) of one sample, so sizes are checked before any run."""

    def param(self, name: str) -> Param:
        for p in self.params:
            if p.name == name:
                return p
        raise SimulationError(f"{self.name}: unknown parameter {name!r}; known: "
                              f"{[p.name for p in self.params]}")

    def resolve(self, setting: str, overrides: Mapping[str, Any]) -> dict[str, Any]:
        """Every parameter's value for ``setting`` with ``overrides`` applied, validated."""
        if setting not in self.settings:
            raise SimulationError(f"{self.name}: unknown setting {setting!r}; choose one of "
                                  f"{sorted(self.settings)}")
        values = {p.name: p.default for p in self.params}
        values.update(self.settings[setting])
        for k, v in overrides.items():
            self.param(k)
            values[k] = v
        values = {k: self.param(k).coerce(v, self.name) for k, v in values.items()}
        return self.finalize(values, setting)


_REGISTRY: dict[str, Simulator] = {}


#: The built-in simulator modules; each registers itself when imported.
MODULES = ("friedman", "pendulum", "burgers", "darcy", "diode")


def load_all() -> None:
    """Import every simulator module so that it registers itself."""
    for m in MODULES:
        importlib.import_module(f"{__package__}.{m}")


def register(sim: Simulator) -> Simulator:
    """Add a simulator to the registry used by :func:`simulate` and the CLI."""
    _REGISTRY[sim.name] = sim
    return sim


def get(name: str) -> Simulator:
    """The registered simulator ``name``."""
    load_all()
    if name not in _REGISTRY:
        raise SimulationError(f"unknown simulator {name!r}; choose one of {names()}")
    return _REGISTRY[name]


def names() -> list[str]:
    """Names of all registered simulators."""
    load_all()
    return sorted(_REGISTRY)


def _number(text: str) -> int | float:
    try:
        value = json.loads(text)  # "32" stays an int
    except ValueError:
        return float(text)  # ".5", "inf"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(text)
    return value


def parse_value(text: str) -> Any:
    """A ``--set`` value: JSON (numbers, lists) or comma-separated numbers."""
    try:
        return json.loads(text)
    except ValueError:
        pass
    parts = [t.strip() for t in text.split(",")]
    try:
        vals = [_number(t) for t in parts]
    except ValueError:
        raise SimulationError(f"cannot parse value {text!r}; use a number or a comma-separated "
                              "list of numbers") from None
    return vals[0] if len(vals) == 1 else vals


def simulate(name: str, *, setting: str, n: int, seed: int, out: str | os.PathLike[str],
             overwrite: bool = False, progress: bool | None = None,
             split: Sequence[float] = (0.8, 0.1, 0.1), **overrides: Any) -> Path:
    """Run simulator ``name`` for ``n`` samples of ``setting`` and write ``out``.

    Parameters are validated before anything runs; the file appears only when every
    sample is written. ``seed`` draws the samples (and the file's splits); the physics
    is fixed by ``setting`` and ``overrides``.
    """
    sim = get(name)
    check_target(out, overwrite, "pass overwrite=True (--overwrite) to replace it")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) \
            or not 0 <= seed < 2**63:
        raise SimulationError(f"{name}: seed must be an integer in [0, 2**63), got {seed!r}")
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise SimulationError(f"{name}: n must be a positive integer, got {n!r}")
    params = sim.resolve(setting, overrides)
    n_params = len(sim.sample_param_names or ())
    if sim.shapes is not None:
        check_size(name, n, sample_bytes(*sim.shapes(params), n_params), out)
    rng = np.random.default_rng(seed)
    blocks = sim.generate(n, params, rng)
    first = next(blocks)
    if sim.shapes is None:
        shapes = (np.shape(first[0])[1:], np.shape(first[1])[1:])
        check_size(name, n, sample_bytes(*shapes, n_params), out)
    bar = progress_bar(progress, n, f"{name} ({setting})", unit="sample")
    try:
        with DatasetWriter(out, input_shape=np.shape(first[0])[1:],
                           target_shape=np.shape(first[1])[1:], simulator=name,
                           setting=setting, params=params, seed=seed,
                           coords=sim.coords(params), input_names=sim.input_names(params),
                           sample_param_names=sim.sample_param_names, split=split,
                           overwrite=overwrite) as w:
            for block in itertools.chain([first], blocks):
                w.append(*block)
                if bar is not None:
                    bar.update(len(block[0]))
            if w.n != n:
                raise SimulationError(f"{name}: produced {w.n} samples, expected {n}")
    finally:
        if bar is not None:
            bar.close()
        close = getattr(blocks, "close", None)
        if close is not None:
            close()  # a simulator's worker processes end now, not when collected
    return Path(out)



#: The largest file ``simulate`` writes (1 TB); write several files for more.
MAX_OUTPUT_BYTES = 10**12
#: Memory per sample when the file is finished (the split's permutation and indices).
_CLOSE_BYTES = 24


def sample_bytes(input_shape: Sequence[int], target_shape: Sequence[int],
                 n_params: int = 0) -> int:
    """Bytes one sample takes in a pacsim-h5 file (float32 data, float64 params, int64
    split index)."""
    return 4 * (math.prod(input_shape) + math.prod(target_shape)) + 8 * n_params + 8


def _available_memory() -> int | None:
    return procutil.available_memory()


def check_size(name: str, n: int, per_sample: int, out: str | os.PathLike[str]) -> None:
    """Refuse ``n`` samples of ``per_sample`` bytes that cannot be written to ``out``:
    beyond :data:`MAX_OUTPUT_BYTES`, the free space of its folder, or the memory that
    finishing the file needs. :class:`SimulationError` (one line) before anything runs."""
    total = n * per_sample
    folder = Path(os.path.abspath(out)).parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    what = f"{name}: {n} samples need about {format_bytes(total)}"
    if total > MAX_OUTPUT_BYTES:
        raise SimulationError(f"{what}, above the largest file simulate writes "
                              f"({format_bytes(MAX_OUTPUT_BYTES)}); write several smaller files")
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        free = None
    if free is not None and total > free:
        raise SimulationError(f"{what} but {folder} has {format_bytes(free)} free")
    memory = _available_memory()
    if memory is not None and n * _CLOSE_BYTES > memory:
        raise SimulationError(f"{name}: {n} samples need about {format_bytes(n * _CLOSE_BYTES)} of "
                              f"memory to finish the file, more than the {format_bytes(memory)} "
                              "available")


def blocks_of(n: int, size: int) -> Iterator[tuple[int, int]]:
    """``(lo, hi)`` ranges covering ``range(n)`` in steps of ``size``."""
    for lo in range(0, n, size):
        yield lo, min(n, lo + size)


def listing() -> str:
    """Text for ``pacsim simulate --list``: every simulator, parameter and setting."""
    lines = []
    for name in names():
        sim = get(name)
        lines.append(f"{name}: {sim.summary}")
        for p in sim.params:
            rng = f"[{p.low}, {p.high}]" if p.low is not None else ""
            default = "derived" if p.default is None else p.default
            lines.append(f"    {p.name:<15} {p.unit:<12} default {default!s:<22} {rng:<18} "
                         f"{p.help}")
        for setting, values in sim.settings.items():
            shown = {k: ("derived" if v is None else v) for k, v in values.items()}
            lines.append(f"    setting {setting}: {shown or 'the defaults'}")
        if sim.describe:
            lines.append(f"    source -> target: {sim.describe}")
        lines.append("")
    return "\n".join(lines).rstrip()
