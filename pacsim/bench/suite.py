"""Benchmark suites (TOML): transfer pairs, methods and their options, target sizes,
seeds, a model per pair and one training budget shared by every method."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from ..sims import recipes
from ..transfer import METHODS

TRAIN_KEYS = {"lr": 1e-3, "batch_size": 32, "target_steps": 300, "source_epochs": 30,
              "source_batch_size": 64, "allocate_epochs": 10, "weight_decay": 0.0,
              "optimizer": "adam"}


class SuiteError(ValueError):
    """A suite file is missing or malformed (message names the file and the problem)."""


@dataclass
class PairSpec:
    """One transfer pair of a suite: its recipe, sizes, model and training overrides."""

    name: str
    recipe: recipes.Recipe
    model: dict[str, Any]
    train: dict[str, Any]
    n_target: list[int]


@dataclass
class Suite:
    """A parsed, validated suite."""

    name: str
    path: Path
    seeds: list[int]
    n_target: list[int]
    methods: dict[str, dict[str, Any]]
    pairs: dict[str, PairSpec]
    data_dir: Path

    def cells(self) -> list[tuple[str, str, int, int]]:
        """Every (pair, method, n_target, seed), in run order."""
        return [(p, m, n, s) for p, spec in self.pairs.items() for s in self.seeds
                for n in spec.n_target for m in self.methods]


def cell_key(pair: str, method: str, n_target: int, seed: int) -> str:
    """The identity of a result cell."""
    return f"{pair}|{method}|{n_target}|{seed}"


def _int_list(raw: Any, what: str, path: Path) -> list[int]:
    if (not isinstance(raw, list) or not raw
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in raw)):
        raise SuiteError(f"{path}: '{what}' must be a non-empty list of integers")
    return list(raw)


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
    unknown = set(raw) - {"name", "seeds", "n_target", "methods", "method", "train", "pair",
                          "data_dir"}
    if unknown:
        raise SuiteError(f"{path}: unknown top-level keys {sorted(unknown)}")
    seeds = _int_list(raw.get("seeds"), "seeds", path)
    n_target = _int_list(raw.get("n_target"), "n_target", path)
    if min(n_target) < 1:
        raise SuiteError(f"{path}: n_target values must be positive")
    names = raw.get("methods", list(METHODS))
    bad = [m for m in names if m not in METHODS]
    if bad or not names:
        raise SuiteError(f"{path}: unknown methods {bad}; choose from {list(METHODS)}")
    options = raw.get("method", {})
    if set(options) - set(names):
        raise SuiteError(f"{path}: options for methods not in the suite: "
                         f"{sorted(set(options) - set(names))}")
    methods = {m: dict(options.get(m, {})) for m in names}
    train = dict(TRAIN_KEYS)
    bad_train = set(raw.get("train", {})) - set(TRAIN_KEYS)
    if bad_train:
        raise SuiteError(f"{path}: unknown [train] keys {sorted(bad_train)}")
    train.update(raw.get("train", {}))
    if not raw.get("pair"):
        raise SuiteError(f"{path}: no [pair.NAME] sections")
    pairs = {}
    for name, spec in raw["pair"].items():
        pairs[name] = _pair(path, name, spec, train, n_target)
    name = str(raw.get("name", path.stem))
    ddir = Path(data_dir or raw.get("data_dir", f"datasets/built/{name}"))
    return Suite(name, path, seeds, n_target, methods, pairs, ddir)


def _pair(path: Path, name: str, spec: dict[str, Any], train: dict[str, Any],
          n_target: list[int]) -> PairSpec:
    if "recipe" not in spec or "model" not in spec:
        raise SuiteError(f"{path}: [pair.{name}] needs 'recipe' and 'model'")
    rpath = Path(spec["recipe"])
    for cand in (path.parent / rpath, rpath):
        if cand.is_file():
            rpath = cand
            break
    else:
        raise SuiteError(f"{path}: [pair.{name}] recipe {spec['recipe']!r} not found")
    try:
        recipe = recipes.load(rpath)
    except ValueError as exc:
        raise SuiteError(str(exc)) from None
    recipe.name = name
    for side, key in (("source", "n_source"), ("target", "n_target_pool")):
        if key in spec:
            recipe.parts[side].n = int(spec[key])
    model = dict(spec["model"])
    if model.get("name") not in ("mlp", "cnn"):
        raise SuiteError(f"{path}: [pair.{name}] model name must be 'mlp' or 'cnn'")
    sizes = _int_list(spec["n_target"], f"pair.{name}.n_target", path) \
        if "n_target" in spec else n_target
    pool = recipe.parts["target"].n * recipe.parts["target"].split[0]
    if max(sizes) > int(round(pool)):
        raise SuiteError(f"{path}: [pair.{name}] n_target {max(sizes)} exceeds the target "
                         f"pool of about {int(round(pool))} samples")
    overrides = {k: v for k, v in spec.items()
                 if k not in ("recipe", "model", "n_source", "n_target_pool", "n_target")}
    bad = set(overrides) - set(TRAIN_KEYS)
    if bad:
        raise SuiteError(f"{path}: [pair.{name}] unknown keys {sorted(bad)}")
    return PairSpec(name, recipe, model, {**train, **overrides}, sizes)
