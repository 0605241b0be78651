"""Dataset recipes: one TOML file per source -> target transfer pair.

A recipe names a simulator and a seed, and for ``[source]`` and ``[target]`` the
setting, sample count, optional ``split`` and optional ``set`` overrides. :func:`build`
writes ``<name>_source.h5`` and ``<name>_target.h5``; a file that exists is kept only when
it matches the recipe (:func:`check_file`), otherwise it is rebuilt.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from ..fsutil import plain_name
from .base import SimulationError, get, simulate

SIDES = ("source", "target")


@dataclass
class Part:
    """One side of a pair: which setting, how many samples, how they split."""

    setting: str
    n: int
    split: tuple[float, float, float] = (0.8, 0.1, 0.1)
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class Recipe:
    """A transfer pair: a simulator with a source and a target part."""

    name: str
    simulator: str
    seed: int
    parts: dict[str, Part]
    path: Path | None = None

    def file(self, out_dir: str | os.PathLike[str], side: str) -> Path:
        """Where ``side`` of this pair is built."""
        return Path(out_dir) / f"{self.name}_{side}.h5"

    def seed_of(self, side: str) -> int:
        """The sample seed of ``side``: the two sides must not draw the same samples."""
        return self.seed + (0 if side == "source" else 1)

    def physics(self) -> dict[str, Any]:
        """Everything of the recipe that shapes its data (JSON-able)."""
        return {"simulator": self.simulator, "seed": self.seed,
                **{side: {"setting": p.setting, "n": p.n, "split": list(p.split),
                          "set": dict(p.overrides)} for side, p in self.parts.items()}}


TOP_KEYS = ("name", "simulator", "seed", *SIDES)
PART_KEYS = ("setting", "n", "split", "set")


def _known(table: dict[str, Any], keys: Sequence[str], path: Path, where: str) -> None:
    unknown = sorted(set(table) - set(keys))
    if unknown:
        raise SimulationError(f"{path}: {where}unknown key(s) {unknown}; known: "
                              f"{', '.join(keys)}")


def _integer(value: Any, what: str, path: Path) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**63:
        raise SimulationError(f"{path}: bad recipe value: {what} must be a whole number in "
                              f"[0, 2**63), got {value!r}")
    return value


def load(path: str | os.PathLike[str]) -> Recipe:
    """Read and check one recipe file; :class:`SimulationError` naming the file otherwise."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise SimulationError(f"{path}: no such recipe file") from None
    except tomllib.TOMLDecodeError as exc:
        raise SimulationError(f"{path}: not valid TOML ({exc})") from None
    try:
        _known(raw, TOP_KEYS, path, "")
        parts = {}
        for side in SIDES:
            sec = raw[side]
            if not isinstance(sec, dict):
                raise SimulationError(f"{path}: [{side}] must be a table")
            _known(sec, PART_KEYS, path, f"[{side}] ")
            split = tuple(float(v) for v in sec.get("split", (0.8, 0.1, 0.1)))
            if len(split) != 3 or not all(0 <= v <= 1 for v in split) \
                    or abs(sum(split) - 1) > 1e-9:
                raise SimulationError(f"{path}: [{side}] split needs three fractions in "
                                      f"[0, 1] summing to 1, got {list(split)}")
            n = _integer(sec["n"], f"[{side}] n", path)
            if n < 1:
                raise SimulationError(f"{path}: [{side}] n must be positive, got {n}")
            parts[side] = Part(str(sec["setting"]), n, split,  # type: ignore[arg-type]
                               dict(sec.get("set", {})))
        name = str(raw.get("name", path.stem))
        if (why := plain_name(name)) is not None:
            raise SimulationError(f"{path}: name {name!r} {why}; it names the files "
                                  "NAME_source.h5 and NAME_target.h5 inside --out, so it must "
                                  "be a plain file name")
        recipe = Recipe(name, str(raw["simulator"]),
                        _integer(raw.get("seed", 0), "seed", path), parts, path)
        sim = get(recipe.simulator)
        for side, part in parts.items():  # unknown settings and parameters, before any run
            try:
                sim.resolve(part.setting, part.overrides)
            except SimulationError as exc:
                raise SimulationError(f"{path}: [{side}] {exc}") from None
        return recipe
    except KeyError as exc:
        raise SimulationError(f"{path}: recipe lacks {exc.args[0]!r}") from None
    except (TypeError, ValueError) as exc:
        if isinstance(exc, SimulationError):
            raise
        raise SimulationError(f"{path}: bad recipe value ({exc})") from None


def find(folder: str | os.PathLike[str]) -> list[Path]:
    """Recipe files in ``folder``, sorted by name."""
    return sorted(Path(folder).glob("*.toml"))


def _short(value: Any, width: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= width else text[:width - 3] + "..."


def _mismatch(recipe: Recipe, side: str, info: Any) -> str | None:
    """Why the file described by ``info`` is not ``side`` of ``recipe`` (None if it is)."""
    from ..data.writer import split_indices
    from .base import get

    part = recipe.parts[side]
    attrs = info.attrs
    if attrs["simulator"] != recipe.simulator:
        return f"simulator is {attrs['simulator']!r}, the recipe says {recipe.simulator!r}"
    if attrs["setting"] != part.setting:
        return f"setting is {attrs['setting']!r}, the recipe says {part.setting!r}"
    if info.n != part.n:
        return f"it has {info.n} samples, the recipe says {part.n}"
    if int(attrs["seed"]) != recipe.seed_of(side):
        return f"seed is {attrs['seed']}, the recipe says {recipe.seed_of(side)}"
    want = json.loads(json.dumps(get(recipe.simulator).resolve(part.setting, part.overrides),
                                 sort_keys=True))
    have = info.params
    if have != want:
        diff = sorted((k not in part.overrides, k) for k in set(have) | set(want)
                      if have.get(k) != want.get(k))  # the recipe's own overrides first
        shown = ", ".join(f"{k}: {_short(have.get(k))} in the file, {_short(want.get(k))} "
                          "in the recipe" for _, k in diff[:2])
        return f"params differ ({shown})"
    expected = split_indices(part.n, part.split, recipe.seed_of(side))
    for name, idx in expected.items():
        if not (info.splits[name].shape == idx.shape and (info.splits[name] == idx).all()):
            return f"splits differ from the recipe's split {list(part.split)}"
    return None


def check_file(recipe: Recipe, side: str, out_dir: str | os.PathLike[str]) -> str | None:
    """Why the file of ``side`` in ``out_dir`` does not hold what ``recipe`` asks for:
    ``"missing"``, ``"unreadable (...)"``, a differing simulator, setting, sample count,
    seed, physical parameter or split; None when it matches. A file that holds the other
    side of the pair is called swapped."""
    from ..data.errors import DatasetError
    from ..data.format import open_h5, validate

    path = recipe.file(out_dir, side)
    if not path.exists():
        return "missing"
    try:
        with open_h5(path) as f:
            info = validate(f, path)
    except (OSError, DatasetError) as exc:
        return f"unreadable ({exc})"
    reason = _mismatch(recipe, side, info)
    if reason is not None:
        other = "target" if side == "source" else "source"
        if _mismatch(recipe, other, info) is None:
            return f"{reason}: it holds the {other} side (source and target swapped?)"
    return reason


def build(recipe: Recipe, out_dir: str | os.PathLike[str], *, overwrite: bool = False,
          log: Callable[[str], Any] = print) -> dict[str, Path]:
    """Simulate both sides of ``recipe`` into ``out_dir``. A file that exists and matches
    the recipe (:func:`check_file`) is kept; one that does not is rebuilt, saying why."""
    paths = {}
    for side, part in recipe.parts.items():
        out = recipe.file(out_dir, side)
        paths[side] = out
        reason = "missing" if overwrite else check_file(recipe, side, out_dir)
        if reason is None:
            log(f"{out}: exists and matches the recipe, skipped")
            continue
        simulate(recipe.simulator, setting=part.setting, n=part.n, seed=recipe.seed_of(side),
                 out=out, split=part.split, overwrite=True, **part.overrides)
        again = "" if reason == "missing" else f" (rebuilt: {reason})"
        log(f"{out}: {part.n} samples of {recipe.simulator} ({part.setting}){again}")
    return paths


def build_all(recipes: Sequence[str | os.PathLike[str]], out_dir: str | os.PathLike[str], *,
              overwrite: bool = False, log: Callable[[str], Any] = print
              ) -> dict[str, dict[str, Path]]:
    """Build several recipe files (checked first, so a typo fails before any simulation)."""
    loaded = [load(p) for p in recipes]
    return {r.name: build(r, out_dir, overwrite=overwrite, log=log) for r in loaded}
