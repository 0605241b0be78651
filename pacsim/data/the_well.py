"""Reader for files of The Well (PolymathicAI), turning trajectories into (input, target) pairs.

The Well's schema: root attributes ``dataset_name``, ``grid_type``, ``n_spatial_dims``,
``n_trajectories`` and ``simulation_parameters`` (names; each one also a root attribute);
group ``dimensions`` (attribute ``spatial_dims``, datasets ``time`` and one coordinate
per spatial dimension); optional ``boundary_conditions`` and ``scalars``; and the field
groups ``t0_fields`` (scalars), ``t1_fields`` (vectors, trailing axis ``D``) and
``t2_fields`` (rank-2 tensors, trailing axes ``D, D``), each listing its datasets in the
attribute ``field_names``. A field is stored as ``([n_traj,] [n_steps,] *grid[, D[, D]])``:
the trajectory axis only if ``sample_varying``, the time axis only if ``time_varying``;
a spatial axis along which the field is constant (``dim_varying`` false) has size 1 or
is left out. Such fields are broadcast to the full grid.

States are channel-first, ``(C, *grid)``. Channel order: the t0 fields, then the
components of the t1 fields, then those of the t2 fields (row-major, ``u_xx, u_xy, ...``),
each group in the order of its ``field_names``. Time-varying fields make the state, which
is both input and target; fields that do not vary in time (e.g. a material coefficient)
are appended to the inputs only, in the same order.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from .errors import DatasetError
from .format import attr_value, open_h5
from .writer import DatasetWriter

PAIRS = ("next", "ic-to-T")
FIELD_GROUPS = ("t0_fields", "t1_fields", "t2_fields")
BLOCK_BYTES = 64 * 2**20


def is_the_well(f: h5py.File) -> bool:
    """Whether an open file claims The Well's layout (its root attributes or field groups)."""
    return ("dataset_name" in f.attrs and "n_spatial_dims" in f.attrs) or any(
        isinstance(f.get(g), h5py.Group) for g in FIELD_GROUPS)


@dataclass(frozen=True)
class WellField:
    """One field: tensor ``order`` (0, 1, 2), stored ``shape``, how it varies, its channels."""

    name: str
    order: int
    shape: tuple[int, ...]
    time_varying: bool
    sample_varying: bool
    dim_varying: tuple[bool, ...]
    view: tuple[int, ...]
    channels: tuple[str, ...]


def _flag(obj: h5py.HLObject, name: str) -> Any:
    return attr_value(obj.attrs[name]) if name in obj.attrs else True


class WellFile:
    """A file of The Well opened for reading trajectories.

    ``fields`` selects fields by name (default: all); the channel order stays the file's.
    """

    def __init__(self, path: str | os.PathLike[str], fields: Sequence[str] | None = None) -> None:
        self.path = Path(path)
        self._f = open_h5(self.path)
        self._cache: dict[str, np.ndarray] = {}
        try:
            self._setup(fields)
        except BaseException:
            self._f.close()
            raise

    def _fail(self, why: str) -> DatasetError:
        return DatasetError(f"{self.path}: {why}")

    def _setup(self, fields: Sequence[str] | None) -> None:
        f = self._f
        if not is_the_well(f):
            raise self._fail("not a file of The Well (no 'dataset_name' root attribute and no "
                             "t0_fields/t1_fields/t2_fields groups)")
        for g in ("dimensions", *FIELD_GROUPS):
            if not isinstance(f.get(g), h5py.Group):
                raise self._fail(f"missing group '{g}'")
        self.attrs = {k: attr_value(v) for k, v in f.attrs.items()}
        self.dataset_name = str(self.attrs.get("dataset_name", self.path.stem))
        self.grid_type = str(self.attrs.get("grid_type", "cartesian"))
        dims = f["dimensions"]
        if "spatial_dims" not in dims.attrs:
            raise self._fail("group 'dimensions' has no attribute 'spatial_dims'")
        sd = attr_value(dims.attrs["spatial_dims"])
        self.spatial_dims = tuple(str(d) for d in ([sd] if isinstance(sd, str) else sd))
        for name in ("time", *self.spatial_dims):
            if not isinstance(dims.get(name), h5py.Dataset):
                raise self._fail(f"missing dataset 'dimensions/{name}'")
        nd = self.attrs.get("n_spatial_dims", len(self.spatial_dims))
        if nd != len(self.spatial_dims):
            raise self._fail(f"n_spatial_dims is {nd} but dimensions/spatial_dims names "
                             f"{list(self.spatial_dims)}")
        self.grid = tuple(int(dims[d].shape[-1]) for d in self.spatial_dims)
        self.n_steps = int(dims["time"].shape[-1])
        self.coords = {("t" if k == "time" else k): np.asarray(dims[k][()], dtype=np.float64)
                       for k in ("time", *self.spatial_dims) if dims[k].ndim == 1}
        names = self.attrs.get("simulation_parameters", [])
        names = [names] if isinstance(names, str) else list(names)
        missing = [p for p in names if p not in self.attrs]
        if missing:
            raise self._fail(f"simulation parameter(s) {missing} listed but not stored as "
                             "root attributes")
        self.params = {str(p): self.attrs[p] for p in names}
        bcs = f.get("boundary_conditions")
        self.boundary_conditions = ({k: attr_value(v.attrs.get("bc_type", "?"))
                                     for k, v in bcs.items()} if isinstance(bcs, h5py.Group)
                                    else {})
        n = self.attrs.get("n_trajectories")
        self.n = int(n) if n is not None else self._infer_n()
        if self.n < 1:
            raise self._fail(f"n_trajectories is {self.n}, no trajectory to read")
        self.all_fields = [self._field(g, order, name) for order, g in enumerate(FIELD_GROUPS)
                           for name in self._names(f[g])]
        known = [fl.name for fl in self.all_fields]
        if isinstance(fields, str):
            fields = [fields]
        if fields is not None:
            unknown = [x for x in fields if x not in known]
            if unknown or not fields:
                raise self._fail(f"unknown field(s) {unknown} (fields: {known})" if unknown
                                 else f"no field selected (fields: {known})")
        self.fields = [fl for fl in self.all_fields if fields is None or fl.name in fields]
        self.state_fields = [fl for fl in self.fields if fl.time_varying]
        self.constant_fields = [fl for fl in self.fields if not fl.time_varying]
        if not self.state_fields:
            raise self._fail("no time-varying field selected, nothing to predict "
                             f"(fields: {[fl.name for fl in self.fields]})")
        self.target_channels = [c for fl in self.state_fields for c in fl.channels]
        self.input_channels = self.target_channels + [c for fl in self.constant_fields
                                                      for c in fl.channels]

    def _infer_n(self) -> int:
        for g in FIELD_GROUPS:
            for ds in self._f[g].values():
                if isinstance(ds, h5py.Dataset) and _flag(ds, "sample_varying") and ds.ndim:
                    return int(ds.shape[0])
        return 1

    def _names(self, group: h5py.Group) -> list[str]:
        if "field_names" not in group.attrs:
            return sorted(k for k, v in group.items() if isinstance(v, h5py.Dataset))
        names = attr_value(group.attrs["field_names"])
        names = [names] if isinstance(names, str) else list(names)
        for name in names:
            if not isinstance(group.get(name), h5py.Dataset):
                raise self._fail(f"field '{name}' listed in '{group.name}' but missing")
        return [str(x) for x in names]

    def _field(self, group: str, order: int, name: str) -> WellField:
        ds = self._f[f"{group}/{name}"]
        if not np.issubdtype(ds.dtype, np.number):
            raise self._fail(f"field '{group}/{name}' has dtype {ds.dtype}, expected numbers")
        dv = np.atleast_1d(_flag(ds, "dim_varying"))
        if dv.size == 1:
            dv = np.repeat(dv, len(self.spatial_dims))
        if dv.size != len(self.spatial_dims):
            raise self._fail(f"field '{group}/{name}' has dim_varying {dv.tolist()} for "
                             f"{len(self.spatial_dims)} spatial dimensions")
        channels = tuple(f"{name}_{''.join(c)}" if c else name
                         for c in itertools.product(self.spatial_dims, repeat=order))
        tv, sv = bool(_flag(ds, "time_varying")), bool(_flag(ds, "sample_varying"))
        view = self._view(name, tuple(ds.shape), order, tv, sv, tuple(bool(x) for x in dv))
        return WellField(name, order, tuple(ds.shape), tv, sv, tuple(bool(x) for x in dv),
                         view, channels)

    def _view(self, name: str, shape: tuple[int, ...], order: int, tv: bool, sv: bool,
              dv: tuple[bool, ...]) -> tuple[int, ...]:
        """The stored spatial sizes of a field, 1 on the axes it is constant along."""
        lead = ((self.n,) if sv else ()) + ((self.n_steps,) if tv else ())
        comp = (len(self.spatial_dims),) * order
        rest = shape[len(lead):len(shape) - order]
        view: tuple[int, ...] = ()
        if shape[:len(lead)] == lead and shape[len(shape) - order:] == comp:
            if len(rest) != len(dv) and len(rest) == sum(dv):  # constant axes left out
                it = iter(rest)
                rest = tuple(next(it) if v else 1 for v in dv)
            if len(rest) == len(dv) and all(r == g or (r == 1 and not v)
                                            for r, g, v in zip(rest, self.grid, dv)):
                view = rest
        if not view and self.grid:
            raise self._fail(f"field '{name}' has shape {shape}, expected "
                             f"{lead + self.grid + comp} (sample_varying={sv}, "
                             f"time_varying={tv}, dim_varying={list(dv)})")
        return view

    # ------------------------------------------------------------------ access
    def close(self) -> None:
        """Close the file."""
        self._f.close()

    def __enter__(self) -> WellFile:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input: ``(C_in, *grid)``, the state and then the constant fields."""
        return (len(self.input_channels), *self.grid)

    @property
    def state_shape(self) -> tuple[int, ...]:
        """Shape of one state (and target): ``(C, *grid)``."""
        return (len(self.target_channels), *self.grid)

    def _read(self, fl: WellField, i: int, times: Any) -> np.ndarray:
        """Field ``fl`` of trajectory ``i``, channel-first: ``([T,] C, *grid)``, float32."""
        key = f"t{fl.order}_fields/{fl.name}"
        if key in self._cache:
            return self._cache[key]
        idx = ((i,) if fl.sample_varying else ()) + ((times,) if fl.time_varying else ())
        a = np.asarray(self._f[key][idx], dtype=np.float32)
        if not np.isfinite(a).all():
            raise self._fail(f"field '{fl.name}' contains NaN or inf (trajectory {i})")
        lead = a.shape[:1] if fl.time_varying else ()
        c = len(fl.channels)
        a = np.broadcast_to(a.reshape(*lead, *fl.view, c), (*lead, *self.grid, c))
        a = np.ascontiguousarray(np.moveaxis(a, -1, len(lead)))
        if not fl.sample_varying and not fl.time_varying:
            self._cache[key] = a
        return a

    def state(self, i: int, times: Any = slice(None)) -> np.ndarray:
        """The time-varying fields of trajectory ``i`` at ``times``: ``(T, C, *grid)``."""
        return np.concatenate([self._read(fl, i, times) for fl in self.state_fields], axis=1)

    def constants(self, i: int) -> np.ndarray | None:
        """The fields constant in time of trajectory ``i``: ``(C, *grid)``, or None."""
        if not self.constant_fields:
            return None
        return np.concatenate([self._read(fl, i, None) for fl in self.constant_fields])

    def time_index(self, t_index: int | None) -> int:
        """``t_index`` (default: the last step) as an index in ``[0, n_steps)``."""
        ti = self.n_steps - 1 if t_index is None else t_index
        if not isinstance(ti, (int, np.integer)) or not -self.n_steps <= ti < self.n_steps:
            raise self._fail(f"t_index {t_index!r} outside the {self.n_steps} stored time steps")
        return int(ti) % self.n_steps

    def pairs(self, mode: str = "next", *, t_index: int | None = None, stride: int = 1,
              block_bytes: int = BLOCK_BYTES) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield blocks of (input, target), reading one trajectory (or part of one) at a time.

        ``mode="next"``: state at step t -> state at t + ``stride``, every t.
        ``mode="ic-to-T"``: initial state -> state at ``t_index`` (default: the last).
        Trajectory-major order; inputs carry the constant fields after the state.
        """
        if mode not in PAIRS:
            raise ValueError(f"pairs must be one of {PAIRS}, got {mode!r}")
        if mode == "ic-to-T":
            ti = self.time_index(t_index)
            for i in range(self.n):
                s = self.state(i, [0, ti] if ti else [0])
                yield self._inputs(s[:1], self.constants(i)), s[-1:]
            return
        if not isinstance(stride, (int, np.integer)) or not 0 < stride < self.n_steps:
            raise self._fail(f"stride must lie in [1, {self.n_steps - 1}] for "
                             f"{self.n_steps} stored time steps, got {stride!r}")
        span = max(stride + 1, block_bytes // (4 * int(np.prod(self.state_shape))))
        for i in range(self.n):
            const = self.constants(i)
            lo = 0
            while lo + stride < self.n_steps:
                hi = min(lo + span, self.n_steps)
                s = self.state(i, slice(lo, hi))
                yield self._inputs(s[:-stride], const), s[stride:]
                lo = hi - stride

    @staticmethod
    def _inputs(x: np.ndarray, const: np.ndarray | None) -> np.ndarray:
        if const is None:
            return x
        return np.concatenate([x, np.broadcast_to(const, (len(x), *const.shape))], axis=1)

    def provenance(self, mode: str, t_index: int | None, stride: int) -> dict[str, Any]:
        """Root attributes recording where a converted file came from."""
        out: dict[str, Any] = {"source_file": self.path.name, "source_format": "the_well",
                               "dataset_name": self.dataset_name, "grid_type": self.grid_type,
                               "pairs": mode, "input_channels": self.input_channels,
                               "target_channels": self.target_channels}
        if mode == "ic-to-T":
            out["t_index"] = self.time_index(t_index)
        else:
            out["stride"] = int(stride)
        if self.params:
            out["simulation_parameters"] = list(self.params)
        return out

    def to_pacsim(self, out: str | os.PathLike[str], *, pairs: str = "next",
                  t_index: int | None = None, stride: int = 1, seed: int = 0,
                  split: Sequence[float] = (0.8, 0.1, 0.1), overwrite: bool = False,
                  attrs: Mapping[str, Any] | None = None) -> Path:
        """Convert into a pacsim-h5 file, streaming; ``params`` holds the simulation parameters.

        Coordinates are copied as ``coords/t`` and ``coords/<dim>`` where they are the same
        for every trajectory; the ``scalars`` group is not converted.
        """
        if pairs == "next" and t_index is not None:
            raise ValueError("t_index applies to pairs='ic-to-T' only")
        blocks = self.pairs(pairs, t_index=t_index, stride=stride)
        first = next(blocks)  # checks the mode, t_index and stride before anything is created
        with DatasetWriter(out, input_shape=self.input_shape, target_shape=self.state_shape,
                           simulator="the_well", setting=self.path.stem, params=self.params,
                           seed=seed, coords=self.coords, split=split, overwrite=overwrite,
                           attrs={**self.provenance(pairs, t_index, stride), **(attrs or {})}
                           ) as w:
            per = 1 if pairs == "ic-to-T" else self.n_steps - stride  # pairs per trajectory
            for x, y in itertools.chain([first], blocks):
                # each pair's trajectory: the splits keep trajectories whole
                w.append(x, y, groups=(w.n + np.arange(len(x))) // per)
        return Path(out)

    def describe(self) -> dict[str, Any]:
        """A JSON-able summary (used by ``pacsim inspect``)."""
        return {"dataset_name": self.dataset_name, "grid_type": self.grid_type,
                "spatial_dims": list(self.spatial_dims), "grid": list(self.grid),
                "n_trajectories": self.n, "n_steps": self.n_steps, "params": self.params,
                "fields": {fl.name: {"order": fl.order, "shape": list(fl.shape),
                                     "time_varying": fl.time_varying,
                                     "sample_varying": fl.sample_varying,
                                     "channels": list(fl.channels)} for fl in self.all_fields},
                "boundary_conditions": self.boundary_conditions,
                "input_channels": self.input_channels, "target_channels": self.target_channels}
