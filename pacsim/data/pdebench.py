"""Reader for PDEBench HDF5 files, turning trajectories into (input, target) pairs.

Two layouts are understood:

* single file: one dataset per variable, ``tensor`` by default, of shape
  ``(N, Nt, Nx[, Ny])``, with ``x-coordinate`` (``y-coordinate``) and ``t-coordinate``,
  and the simulation parameters as root attributes (e.g. ``Nu``). ``t-coordinate`` may
  be one entry longer than the stored trajectory; the extra last entry is ignored.
* per seed: groups ``0000``, ``0001``, ... each with ``data`` of shape
  ``(Nt, Nx[, Ny], V)`` and ``grid/x`` (``grid/y``), ``grid/t``.

States are returned channel-first, ``(C, Nx[, Ny])``, the layout of pacsim's CNN.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from .errors import DatasetError
from .format import attr_value, first_non_finite, open_h5
from .writer import DatasetWriter

MODES = ("final", "step")
#: Conversion reads trajectories in blocks of about this many bytes (at least one).
BLOCK_BYTES = 1 << 20


def _seed_groups(f: h5py.File) -> list[str]:
    return sorted(k for k, v in f.items()
                  if k.isdigit() and isinstance(v, h5py.Group) and "data" in v)


def detect(f: h5py.File) -> str | None:
    """``"single"``, ``"seeds"`` or None for a file in neither PDEBench layout."""
    if isinstance(f.get("tensor"), h5py.Dataset) or isinstance(f.get("x-coordinate"), h5py.Dataset):
        return "single"
    if _seed_groups(f):
        return "seeds"
    return None


class PDEBenchFile:
    """A PDEBench file opened for reading trajectories.

    ``fields`` names the variables of a single-file layout (default ``("tensor",)``);
    ``input_field`` (single-file layout) takes the inputs from another dataset of shape
    ``(N, Nx[, Ny])``, e.g. the coefficient ``nu`` of PDEBench's Darcy files.
    """

    def __init__(self, path: str | os.PathLike[str], fields: Sequence[str] | None = None,
                 input_field: str | None = None) -> None:
        self.path = Path(path)
        self._f = open_h5(self.path)
        try:
            self._setup(fields, input_field)
        except BaseException:
            self._f.close()
            raise

    def _setup(self, fields: Sequence[str] | None, input_field: str | None) -> None:
        f = self._f
        self.layout = detect(f)
        if self.layout is None:
            raise DatasetError(f"{self.path}: not a PDEBench file (no 'tensor' dataset and no "
                               "'0000/data' seed groups)")
        self.attrs = {k: attr_value(v) for k, v in f.attrs.items()}
        self.input_field = input_field
        if self.layout == "single":
            if not fields and "tensor" not in f:  # e.g. CFD: every field, sorted by name
                fields = sorted(k for k, v in f.items() if isinstance(v, h5py.Dataset)
                                and v.ndim in (3, 4) and not k.endswith("-coordinate"))
                if not fields:
                    raise DatasetError(f"{self.path}: no 'tensor' dataset and no field of "
                                       "shape (N, Nt, Nx[, Ny])")
            self.fields = tuple(fields or ("tensor",))
            for name in self.fields + ((input_field,) if input_field else ()):
                if not isinstance(f.get(name), h5py.Dataset):
                    raise DatasetError(f"{self.path}: missing dataset '{name}'")
            first = f[self.fields[0]]
            if first.ndim not in (3, 4):
                raise DatasetError(f"{self.path}: '{self.fields[0]}' has shape {first.shape}, "
                                   "expected (N, Nt, Nx[, Ny])")
            for name in self.fields[1:]:
                if f[name].shape != first.shape:
                    raise DatasetError(f"{self.path}: '{name}' has shape {f[name].shape}, "
                                       f"'{self.fields[0]}' has {first.shape}")
            self.n = first.shape[0]
            self.n_times = first.shape[1]
            self.spatial = tuple(first.shape[2:])
            self.channels = len(self.fields)
            coords = {"x": "x-coordinate", "y": "y-coordinate", "t": "t-coordinate"}
        else:
            for name, value in (("input_field", input_field), ("fields", fields)):
                if value is not None:
                    raise DatasetError(f"{self.path}: {name} applies to the single-file layout")
            self.groups = _seed_groups(f)
            for g in self.groups:
                if not isinstance(f[g].get("data"), h5py.Dataset):
                    raise DatasetError(f"{self.path}: '{g}/data' is a group, expected a "
                                       "dataset (Nt, Nx[, Ny], V)")
            data = f[f"{self.groups[0]}/data"]
            if data.ndim not in (3, 4):
                raise DatasetError(f"{self.path}: '{self.groups[0]}/data' has shape "
                                   f"{data.shape}, expected (Nt, Nx[, Ny], V)")
            for g in self.groups[1:]:
                if f[f"{g}/data"].shape != data.shape:
                    raise DatasetError(f"{self.path}: '{g}/data' has shape "
                                       f"{f[f'{g}/data'].shape}, '{self.groups[0]}/data' has "
                                       f"{data.shape}")
            self.n = len(self.groups)
            self.n_times = data.shape[0]
            self.spatial = tuple(data.shape[1:-1])
            self.channels = data.shape[-1]
            self.fields = tuple(f"v{i}" for i in range(self.channels))
            g0 = self.groups[0]
            coords = {"x": f"{g0}/grid/x", "y": f"{g0}/grid/y", "t": f"{g0}/grid/t"}
        if self.n == 0 or self.n_times == 0:
            what = "trajectories" if self.n == 0 else "time steps"
            raise DatasetError(f"{self.path}: holds no {what} (shape "
                               f"{(self.n, self.n_times, *self.spatial)}); nothing to read")
        self.coords: dict[str, np.ndarray] = {}
        for key, name in coords.items():
            if isinstance(f.get(name), h5py.Dataset):
                self.coords[key] = np.asarray(f[name][()], dtype=np.float64).reshape(-1)
        t = self.coords.get("t")
        if t is not None:
            if t.size == self.n_times + 1:
                self.coords["t"] = t[: self.n_times]
            elif t.size != self.n_times:
                raise DatasetError(f"{self.path}: t-coordinate has {t.size} entries for "
                                   f"{self.n_times} stored time steps")

    # ------------------------------------------------------------------ access
    def close(self) -> None:
        """Close the file."""
        self._f.close()

    def __enter__(self) -> PDEBenchFile:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @property
    def state_shape(self) -> tuple[int, ...]:
        """Shape of one state, channel-first: ``(C, Nx[, Ny])``."""
        return (self.channels, *self.spatial)

    def trajectories(self, lo: int, hi: int, times: Any = slice(None)) -> np.ndarray:
        """Trajectories ``lo:hi`` at ``times`` as float32 ``(B, T, C, Nx[, Ny])``.

        :class:`DatasetError` if they hold a NaN or inf.
        """
        if self.layout == "single":
            parts = [np.asarray(self._f[name][lo:hi, times], dtype=np.float32)
                     for name in self.fields]
            out = np.stack(parts, axis=2)
        else:
            out = np.stack([np.moveaxis(np.asarray(self._f[f"{g}/data"][times],
                                                   dtype=np.float32), -1, 1)
                            for g in self.groups[lo:hi]])
        bad = first_non_finite(out)
        if bad is not None:
            raise DatasetError(f"{self.path}: trajectory {lo + bad} contains NaN or inf")
        return out

    def time_index(self, time: float) -> int:
        """Index of the stored time step nearest to ``time``."""
        if "t" not in self.coords:
            raise DatasetError(f"{self.path}: no time coordinate to choose a time from")
        return int(np.argmin(np.abs(self.coords["t"] - time)))

    def pairs(self, mode: str = "final", *, t_index: int = -1, time: float | None = None,
              stride: int = 1, block: int = 64) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield blocks of (input, target) states.

        ``mode="final"``: initial state -> state at ``t_index`` (or nearest ``time``);
        with ``input_field`` the input is that field instead of the initial state.
        ``mode="step"``: state at step k -> state at step k + ``stride``, every k.
        """
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if mode == "final":
            ti = self.time_index(time) if time is not None else t_index
            if not -self.n_times <= ti < self.n_times:
                raise DatasetError(f"{self.path}: t_index {ti} outside the {self.n_times} "
                                   "stored time steps")
            ti %= self.n_times
        elif self.n_times < 2:
            raise DatasetError(f"{self.path}: state -> next state pairs need at least 2 "
                               f"stored time steps, the file has {self.n_times}")
        elif not 0 < stride < self.n_times:
            raise DatasetError(f"{self.path}: stride must lie in [1, {self.n_times - 1}], "
                               f"got {stride}")
        for lo in range(0, self.n, block):
            hi = min(lo + block, self.n)
            if mode == "final":
                traj = self.trajectories(lo, hi, [0, ti] if ti else [0])
                y = traj[:, -1]
                if self.input_field:
                    x = np.asarray(self._f[self.input_field][lo:hi], dtype=np.float32)[:, None]
                else:
                    x = traj[:, 0]
                yield x, y
            else:
                traj = self.trajectories(lo, hi)
                x = traj[:, :-stride].reshape(-1, *self.state_shape)
                y = traj[:, stride:].reshape(-1, *self.state_shape)
                yield x, y

    def to_pacsim(self, out: str | os.PathLike[str], *, mode: str = "final", t_index: int = -1,
                  time: float | None = None, stride: int = 1, seed: int = 0,
                  split: Sequence[float] = (0.8, 0.1, 0.1), overwrite: bool = False,
                  attrs: Mapping[str, Any] | None = None) -> Path:
        """Convert into a pacsim-h5 file, streaming block by block; ``attrs`` are extra
        root attributes (provenance)."""
        first_x, first_y = next(self.pairs(mode, t_index=t_index, time=time, stride=stride,
                                           block=1))
        params = {**self.attrs, "source_file": self.path.name, "mode": mode,
                  "layout": self.layout, "fields": list(self.fields)}
        if mode == "final":
            params["t_index"] = (self.time_index(time) if time is not None else t_index)
        else:
            params["stride"] = stride
        coords = {k: v for k, v in self.coords.items()}
        with DatasetWriter(out, input_shape=first_x.shape[1:], target_shape=first_y.shape[1:],
                           simulator="pdebench", setting=self.path.stem, params=params,
                           seed=seed, coords=coords, split=split, overwrite=overwrite,
                           attrs=attrs) as w:
            per = 1 if mode == "final" else self.n_times - stride  # pairs per trajectory
            traj_bytes = 4 * self.n_times * math.prod(self.state_shape)
            block = max(1, min(64, BLOCK_BYTES // max(1, traj_bytes)))
            for x, y in self.pairs(mode, t_index=t_index, time=time, stride=stride,
                                   block=block):
                # each pair's trajectory: the splits keep trajectories whole
                w.append(x, y, groups=(w.n + np.arange(len(x))) // per)
        return Path(out)


def convert(path: str | os.PathLike[str], out: str | os.PathLike[str], **kwargs: Any) -> Path:
    """Convert a PDEBench file into a pacsim-h5 file (see :meth:`PDEBenchFile.to_pacsim`)."""
    fields = kwargs.pop("fields", None)
    input_field = kwargs.pop("input_field", None)
    with PDEBenchFile(path, fields=fields, input_field=input_field) as pb:
        return pb.to_pacsim(out, **kwargs)
