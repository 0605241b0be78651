"""Benchmark suites (TOML), typed: transfer pairs, methods with their options and
selection grids, target sizes, seeds, a model per pair and one training budget.

Everything is checked when the suite loads; a bad key or value is a one-line
:class:`SuiteError` naming the file, the section and the key. A cell's identity and
every cache name is a hash of the resolved configuration that shaped it
(:meth:`Suite.cell_config`, :meth:`Suite.source_config`, :meth:`Suite.allocate_config`).

Top-level keys: ``name``, ``seeds`` (``max_seeds``: more seeds, up to that count, for a
pair and n where PAC's verdict is within the seeds' noise), ``n_target``, ``methods``,
``selection`` (``"cv"``,
``"fixed"`` or a table; default ``"fixed"``), ``data_dir``, and the tables ``[train]``
(:class:`SuiteTraining`), ``[method.NAME]`` (the method's options plus an optional
``grid = {key = [values]}``) and ``[pair.NAME]`` (``recipe``, ``model``, optional
``n_source``, ``n_target_pool``, ``n_target`` and ``[train]`` keys for this pair).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from ..fsutil import plain_name
from ..sims import recipes
from ..train import OPTIMIZERS
from ..transfer import DEFAULT_GRIDS, METHODS, Options, SelectionConfig, check_grid, method_options
from ..transfer.registry import get
from ..transfer.registry import names as registered_methods

#: Bump when the measurement of a cell changes meaning: every cell then re-runs.
PROTOCOL = 2
TOP_KEYS = ("name", "seeds", "n_target", "methods", "method", "train", "pair", "data_dir",
            "selection", "max_seeds")
PAIR_KEYS = ("recipe", "model", "n_source", "n_target_pool", "n_target", "method")
#: Models a suite can name; each is sized from the data by its ``for_data`` (its
#: ``DATA_ARGS`` come from the data, every other constructor argument from the suite).


class SuiteError(ValueError):
    """A suite file is missing or malformed (message names the file and the problem)."""


class Cell(NamedTuple):
    """One result cell: a method on a pair at a target size and a seed."""

    pair: str
    method: str
    n_target: int
    seed: int


def cell_key(pair: str, method: str, n_target: int, seed: int) -> str:
    """The readable name of a result cell (its identity is :meth:`Suite.cell_id`)."""
    return f"{pair}|{method}|{n_target}|{seed}"


def config_hash(config: Any, length: int = 16) -> str:
    """Hex digest of a JSON-able configuration (key order does not matter)."""
    text = json.dumps(config, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def _canonical(obj: Any) -> Any:
    """``obj`` as it reads back from JSON (tuples become lists)."""
    return json.loads(json.dumps(obj, sort_keys=True))


@dataclass(frozen=True)
class SuiteTraining:
    """The training budget shared by every method (``[train]``, per pair overridable).

    Source model: ``source_epochs`` at ``source_batch_size``; PAC allocate:
    ``allocate_epochs``; target: exactly ``target_steps`` optimiser steps at
    ``batch_size`` (capped at the number of target samples). ``lr``, ``weight_decay``
    and ``optimizer`` apply to all of them."""

    lr: float = 1e-3
    batch_size: int = 32
    target_steps: int = 300
    source_epochs: int = 30
    source_batch_size: int = 64
    allocate_epochs: int = 10
    weight_decay: float = 0.0
    optimizer: str = "adam"

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            if f.type == "int" and getattr(self, f.name) < 1:
                raise ValueError(f"{f.name} must be an integer >= 1, "
                                 f"got {getattr(self, f.name)!r}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a finite number > 0, got {self.lr!r}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"weight_decay must be a finite number >= 0, "
                             f"got {self.weight_decay!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {list(OPTIMIZERS)}, "
                             f"got {self.optimizer!r}")

    @classmethod
    def keys(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    def updated(self, raw: Mapping[str, Any]) -> SuiteTraining:
        """A copy with the keys of ``raw`` replaced, type- and range-checked."""
        kinds = {f.name: f.type for f in dataclasses.fields(self)}
        values = {}
        for key, value in raw.items():
            if key not in kinds:
                raise ValueError(f"unknown key {key!r} (keys: {', '.join(kinds)})")
            values[key] = _typed(key, value, kinds[key])
        return dataclasses.replace(self, **values)

    def source(self) -> dict[str, Any]:
        """What shapes the source model's training."""
        return {"epochs": self.source_epochs, "batch_size": self.source_batch_size,
                "lr": self.lr, "weight_decay": self.weight_decay, "optimizer": self.optimizer}

    def target(self) -> dict[str, Any]:
        """What shapes a method's training on the target samples."""
        return {"steps": self.target_steps, "batch_size": self.batch_size, "lr": self.lr,
                "weight_decay": self.weight_decay, "optimizer": self.optimizer}


def _typed(key: str, value: Any, kind: str) -> Any:
    if kind == "int" and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind == "float" and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if kind == "str" and isinstance(value, str):
        return value
    word = {"int": "an integer", "float": "a number", "str": "a string"}[kind]
    raise ValueError(f"{key} must be {word}, got {type(value).__name__} {value!r}")


@dataclass(frozen=True)
class MethodSpec:
    """A method of the suite: its typed options and its selection grid (None: default)."""

    name: str
    options: Options
    grid: dict[str, list[Any]] | None = None

    @property
    def needs_allocate(self) -> bool:
        """Whether the method starts from a cached PAC-allocated model."""
        return get(self.name).allocates


@dataclass
class PairSpec:
    """One transfer pair of a suite: its recipe, sizes, model and training budget."""

    name: str
    recipe: recipes.Recipe
    model: dict[str, Any]
    train: SuiteTraining
    n_target: list[int]
    #: Methods whose options this pair sets (``[pair.NAME.method.pac]``), resolved.
    methods: dict[str, MethodSpec] = field(default_factory=dict)


@dataclass
class Suite:
    """A parsed, validated suite."""

    name: str
    path: Path
    seeds: list[int]
    n_target: list[int]
    methods: dict[str, MethodSpec]
    pairs: dict[str, PairSpec]
    data_dir: Path
    selection: SelectionConfig = SelectionConfig(mode="fixed")
    #: How cross-validation trains, not what: folds x configurations as ``fit_many``
    #: stacks (``pacsim bench --stack``: True, False or "auto", see
    #: :func:`pacsim.transfer.select`). Same trainings up to float rounding, so not part
    #: of any cell's identity; each record says so in ``selection["stacked"]``.
    stack: bool | str = False
    #: Seeds up to which a (pair, n) runs on where PAC's ratio to the best baseline is
    #: within the seeds' noise (its interval holds 1); None: ``seeds`` only.
    max_seeds: int | None = None
    #: Seeds added to a (pair, n) beyond ``seeds`` (by the runner, from ``max_seeds``).
    extra_seeds: dict[tuple[str, int], list[int]] = field(default_factory=dict)

    def data_recipes(self) -> list[recipes.Recipe]:
        """The datasets the suite reads, each once (pairs may share one)."""
        return list({spec.recipe.name: spec.recipe for spec in self.pairs.values()}.values())

    def cells(self) -> list[Cell]:
        """Every (pair, method, n_target, seed), in run order."""
        cells = [Cell(p, m, n, s) for p, spec in self.pairs.items() for s in self.seeds
                 for n in spec.n_target for m in self.methods]
        return cells + [Cell(p, m, n, s) for (p, n), seeds in self.extra_seeds.items()
                        for s in seeds for m in self.methods]

    def method(self, pair: str, method: str) -> MethodSpec:
        """``method`` as ``pair`` runs it: the suite's options, with the pair's own."""
        return self.pairs[pair].methods.get(method) or self.methods[method]

    def source_config(self, pair: str, seed: int) -> dict[str, Any]:
        """Everything that shapes the source model of ``pair`` and ``seed`` (and its
        measurements, which read both sides of the pair)."""
        spec = self.pairs[pair]
        return _canonical({"protocol": PROTOCOL, "pair": pair, "seed": seed,
                           "data": spec.recipe.physics(), "model": spec.model,
                           "source_train": spec.train.source()})

    def allocate_config(self, pair: str, seed: int, method: str) -> dict[str, Any] | None:
        """Everything that shapes the PAC-allocated model ``method`` starts from (None for
        methods without one): the source model, the allocate options and budget."""
        m = self.method(pair, method)
        if not m.needs_allocate:
            return None
        return _canonical({**self.source_config(pair, seed),
                           "allocate": {**m.options.prepare_config(),
                                        "epochs": self.pairs[pair].train.allocate_epochs}})

    def cell_config(self, cell: tuple[str, str, int, int]) -> dict[str, Any]:
        """The fully resolved configuration of a cell, as recorded with its result."""
        pair, method, n, seed = cell
        m = self.method(pair, method)
        start = self.allocate_config(pair, seed, method) or self.source_config(pair, seed)
        if self.selection.mode == "fixed":
            selection: dict[str, Any] = {"mode": "fixed"}
        else:
            grid = m.grid if m.grid is not None else DEFAULT_GRIDS[method]
            selection = {**self.selection.identity_dict(), "grid": grid}
        return _canonical({**start, "method": method, "n_target": n,
                           "train": self.pairs[pair].train.target(),
                           "options": m.options.identity_dict(), "selection": selection})

    def cell_id(self, cell: tuple[str, str, int, int]) -> str:
        """Hash of :meth:`cell_config`: equal ids, equal configurations."""
        return config_hash(self.cell_config(cell))

    def identity(self, cell: tuple[str, str, int, int]) -> dict[str, Any]:
        """The fields every record of ``cell`` starts with."""
        config = self.cell_config(cell)
        return {"pair": cell[0], "method": cell[1], "n_target": cell[2], "seed": cell[3],
                "cell_id": config_hash(config), "config": config}


def _int_list(raw: Any, what: str, path: Path, minimum: int) -> list[int]:
    if (not isinstance(raw, list) or not raw
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in raw)):
        raise SuiteError(f"{path}: '{what}' must be a non-empty list of integers")
    if min(raw) < minimum:
        raise SuiteError(f"{path}: '{what}' values must be >= {minimum}, got {min(raw)}")
    dup = sorted({v for v in raw if raw.count(v) > 1})
    if dup:
        raise SuiteError(f"{path}: '{what}' has duplicate values {dup}")
    return list(raw)


def _table(raw: Any, where: str, path: Path) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise SuiteError(f"{path}: {where} must be a table")
    return raw


def load_suite(path: str | os.PathLike[str], data_dir: str | os.PathLike[str] | None = None
               ) -> Suite:
    """Read and check a suite; relative recipe paths resolve against the suite's folder
    and then the working directory."""
    path = Path(path)
    if not path.is_file():
        raise SuiteError(f"{path}: no such suite file")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise SuiteError(f"{path}: not valid TOML ({exc})") from None
    unknown = set(raw) - set(TOP_KEYS)
    if unknown:
        raise SuiteError(f"{path}: unknown top-level keys {sorted(unknown)}")
    seeds = _int_list(raw.get("seeds"), "seeds", path, 0)
    n_target = _int_list(raw.get("n_target"), "n_target", path, 1)
    methods = _methods(path, raw)
    try:
        selection = SelectionConfig.from_value(raw.get("selection", "fixed"))
    except (TypeError, ValueError) as exc:
        raise SuiteError(f"{path}: {exc}") from None  # the message names 'selection'
    try:
        train = SuiteTraining().updated(_table(raw.get("train", {}), "[train]", path))
    except ValueError as exc:
        raise SuiteError(f"{path}: [train] {exc}") from None
    if not raw.get("pair"):
        raise SuiteError(f"{path}: no [pair.NAME] sections")
    pairs = {name: _pair(path, name, _table(spec, f"[pair.{name}]", path), train, n_target,
                         methods)
             for name, spec in _table(raw["pair"], "[pair]", path).items()}
    _share_data(pairs)
    name = str(raw.get("name", path.stem))
    if (why := plain_name(name)) is not None and not (data_dir or "data_dir" in raw):
        raise SuiteError(f"{path}: name {name!r} {why}; it names the data folder "
                         "datasets/built/NAME, so it must be a plain file name (or give "
                         "data_dir)")
    ddir = Path(data_dir or raw.get("data_dir", f"datasets/built/{name}"))
    max_seeds = raw.get("max_seeds")
    if max_seeds is not None and (isinstance(max_seeds, bool) or not isinstance(max_seeds, int)
                                  or max_seeds < len(seeds)):
        raise SuiteError(f"{path}: 'max_seeds' must be an integer >= the number of seeds "
                         f"({len(seeds)}), got {max_seeds!r}")
    return Suite(name, path, seeds, n_target, methods, pairs, ddir, selection,
                 max_seeds=max_seeds)


def _share_data(pairs: dict[str, PairSpec]) -> None:
    """Pairs whose recipes ask for the same data (simulator, seed, settings, sizes,
    splits) read the same files, named after the first of them: a suite simulates and
    stores each dataset once (the FNO and CNN pairs of one PDE, say)."""
    first: dict[str, str] = {}
    for spec in pairs.values():
        spec.recipe.name = first.setdefault(config_hash(spec.recipe.physics()), spec.name)


def _methods(path: Path, raw: dict[str, Any]) -> dict[str, MethodSpec]:
    names = raw.get("methods", list(METHODS))
    if not isinstance(names, list) or not all(isinstance(m, str) for m in names):
        raise SuiteError(f"{path}: 'methods' must be a list of method names")
    bad = [m for m in names if m not in registered_methods()]
    if bad or not names:
        raise SuiteError(f"{path}: unknown methods {bad}; choose from "
                         f"{list(registered_methods())}")
    dup = sorted({m for m in names if names.count(m) > 1})
    if dup:
        raise SuiteError(f"{path}: 'methods' has duplicate values {dup}")
    return _method_specs(path, "[method]", _table(raw.get("method", {}), "[method]", path),
                         {m: MethodSpec(m, method_options(m, {})) for m in names})


def _method_specs(path: Path, where: str, tables: dict[str, Any],
                  base: dict[str, MethodSpec]) -> dict[str, MethodSpec]:
    """``base`` with the options and grids of ``tables`` (method -> table) on top."""
    if set(tables) - set(base):
        raise SuiteError(f"{path}: {where} options for methods not in the suite: "
                         f"{sorted(set(tables) - set(base))}")
    out = dict(base)
    for m, raw in tables.items():
        opts = dict(_table(raw, f"{where[:-1]}.{m}]", path))
        grid = opts.pop("grid", None)
        try:
            options = method_options(m, {**base[m].options.to_dict(), **opts})
            if grid is not None:
                grid = check_grid(m, _table(grid, "grid", path))
        except ValueError as exc:
            raise SuiteError(f"{path}: {where[:-1]}.{m}] {exc}") from None
        out[m] = MethodSpec(m, options, base[m].grid if grid is None else grid)
    return out


def _pair(path: Path, name: str, spec: dict[str, Any], train: SuiteTraining,
          n_target: list[int], methods: dict[str, MethodSpec]) -> PairSpec:
    where = f"{path}: [pair.{name}]"
    if (why := plain_name(name)) is not None:
        raise SuiteError(f"{path}: pair name {name!r} {why}; it names the pair's data and "
                         "cache files, so it must be a plain file name")
    if "recipe" not in spec or "model" not in spec:
        raise SuiteError(f"{where} needs 'recipe' and 'model'")
    rpath = Path(str(spec["recipe"]))
    for cand in (path.parent / rpath, rpath):
        if cand.is_file():
            rpath = cand
            break
    else:
        raise SuiteError(f"{where} recipe {spec['recipe']!r} not found")
    try:
        recipe = recipes.load(rpath)
    except ValueError as exc:
        raise SuiteError(str(exc)) from None
    recipe.name = name
    for side, key in (("source", "n_source"), ("target", "n_target_pool")):
        if key in spec:
            value = spec[key]
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise SuiteError(f"{where} {key} must be an integer >= 1, got {value!r}")
            recipe.parts[side].n = value
    model = _model(where, spec["model"])
    sizes = (_int_list(spec["n_target"], f"pair.{name}.n_target", path, 1)
             if "n_target" in spec else n_target)
    pool = recipe.parts["target"].n * recipe.parts["target"].split[0]
    if max(sizes) > int(round(pool)):
        raise SuiteError(f"{where} n_target {max(sizes)} exceeds the target "
                         f"pool of about {int(round(pool))} samples")
    unknown = [k for k in spec if k not in PAIR_KEYS + SuiteTraining.keys()]
    if unknown:
        raise SuiteError(f"{where} unknown key {unknown[0]!r} "
                         f"(keys: {', '.join(PAIR_KEYS + SuiteTraining.keys())})")
    try:
        train = train.updated({k: v for k, v in spec.items() if k not in PAIR_KEYS})
    except ValueError as exc:
        raise SuiteError(f"{where} {exc}") from None
    own = _table(spec.get("method", {}), f"[pair.{name}.method]", path)
    overrides = _method_specs(path, f"[pair.{name}.method]", own, methods)
    return PairSpec(name, recipe, model, train, sizes,
                    {m: overrides[m] for m in own})


def _example_shapes(cls: type, kwargs: dict[str, Any]
                    ) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Sample shapes that fit the model's table, to build it once when checking it."""
    if "dim" not in getattr(cls, "DATA_ARGS", ()):
        return (2,), (1,)
    modes = kwargs.get("n_modes")
    grid = (8,) * (len(modes) if isinstance(modes, list) and modes else 1)
    return (1, *grid), (1, *grid)


def _model(where: str, raw: Any) -> dict[str, Any]:
    """The pair's model table, its keys checked against the model's constructor and its
    values by building it once without memory (on the meta device)."""
    import torch

    from ..models import model_class, registered
    from ..models.sizing import model_options

    if not isinstance(raw, dict) or raw.get("name") not in registered():
        raise SuiteError(f"{where} model must be a table with name one of "
                         f"{', '.join(repr(m) for m in registered())}")
    cls = model_class(raw["name"])
    kwargs = {k: v for k, v in raw.items() if k != "name"}
    allowed = model_options(raw["name"])
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise SuiteError(f"{where} model has no key {unknown[0]!r} "
                         f"({raw['name']} keys: {', '.join(allowed)})")
    try:
        with torch.device("meta"):
            cls.for_data(*_example_shapes(cls, kwargs), **kwargs)
    except (TypeError, ValueError, ImportError) as exc:
        raise SuiteError(f"{where} model: {exc}") from None
    return dict(raw)
