"""Dataset recipes: one TOML file per source -> target transfer pair.

A recipe names a simulator and a seed, and for ``[source]`` and ``[target]`` the
setting, sample count, optional ``split`` and optional ``set`` overrides. :func:`build`
writes ``<name>_source.h5`` and ``<name>_target.h5``, skipping files that exist.
"""

from __future__ import annotations

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

from .base import SimulationError, simulate

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
        parts = {}
        for side in SIDES:
            sec = raw[side]
            split = tuple(float(v) for v in sec.get("split", (0.8, 0.1, 0.1)))
            if len(split) != 3:
                raise SimulationError(f"{path}: [{side}] split needs three fractions")
            parts[side] = Part(str(sec["setting"]), int(sec["n"]), split,  # type: ignore[arg-type]
                               dict(sec.get("set", {})))
        return Recipe(str(raw.get("name", path.stem)), str(raw["simulator"]),
                      int(raw.get("seed", 0)), parts, path)
    except KeyError as exc:
        raise SimulationError(f"{path}: recipe lacks {exc.args[0]!r}") from None
    except (TypeError, ValueError) as exc:
        if isinstance(exc, SimulationError):
            raise
        raise SimulationError(f"{path}: bad recipe value ({exc})") from None


def find(folder: str | os.PathLike[str]) -> list[Path]:
    """Recipe files in ``folder``, sorted by name."""
    return sorted(Path(folder).glob("*.toml"))


def build(recipe: Recipe, out_dir: str | os.PathLike[str], *, overwrite: bool = False,
          log: Callable[[str], Any] = print) -> dict[str, Path]:
    """Simulate both sides of ``recipe`` into ``out_dir``; existing files are kept."""
    paths = {}
    for side, part in recipe.parts.items():
        out = recipe.file(out_dir, side)
        paths[side] = out
        if out.exists() and not overwrite:
            log(f"{out}: exists, skipped")
            continue
        # Different seeds for the two sides: their samples must not coincide.
        seed = recipe.seed + (0 if side == "source" else 1)
        simulate(recipe.simulator, setting=part.setting, n=part.n, seed=seed, out=out,
                 split=part.split, overwrite=overwrite, **part.overrides)
        log(f"{out}: {part.n} samples of {recipe.simulator} ({part.setting})")
    return paths


def build_all(recipes: Sequence[str | os.PathLike[str]], out_dir: str | os.PathLike[str], *,
              overwrite: bool = False, log: Callable[[str], Any] = print
              ) -> dict[str, dict[str, Path]]:
    """Build several recipe files (checked first, so a typo fails before any simulation)."""
    loaded = [load(p) for p in recipes]
    return {r.name: build(r, out_dir, overwrite=overwrite, log=log) for r in loaded}
