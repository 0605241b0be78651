"""Writing pacsim-h5 files: streamed in blocks, validated first, renamed into place."""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from .. import __version__, procutil
from ..fsutil import AtomicFile, disk_error
from .errors import DatasetError
from .format import FORMAT, FORMAT_VERSION, SPLITS, chunk_rows, first_non_finite
from .stats import RunningMoments

STATS_BLOCK_BYTES = 16 * 2**20
_OVERWRITE_HINT = "pass overwrite=True (--overwrite) to replace it"


def _check_finite(block: np.ndarray, what: str, path: Path, offset: int) -> None:
    bad = first_non_finite(block)
    if bad is not None:
        raise DatasetError(f"{path}: {what} contain NaN or inf (sample {offset + bad}); "
                           "nothing was written")


def split_indices(n: int, fractions: Sequence[float], seed: int,
                  groups: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Sorted train/val/test indices of ``n`` samples, fixed by ``seed``. With ``groups``
    (one id per sample, e.g. its trajectory) whole groups are split, the fractions
    counting groups: samples of one group never land in two splits."""
    if groups is None:
        return _cut(n, _sizes(n, fractions), seed)
    ids, inverse = np.unique(groups, return_inverse=True)
    by_group = _cut(ids.size, _group_sizes(ids.size, fractions), seed)
    return {k: np.flatnonzero(np.isin(inverse, v)).astype(np.int64)
            for k, v in by_group.items()}


def _sizes(n: int, fractions: Sequence[float]) -> list[int]:
    """How many of ``n`` items each split takes (train, val, test)."""
    n_train = int(round(fractions[0] * n))
    n_val = min(int(round(fractions[1] * n)), n - n_train)
    return [n_train, n_val, n - n_train - n_val]


def _group_sizes(k: int, fractions: Sequence[float]) -> list[int]:
    """:func:`_sizes` of ``k`` groups, except that every split with a positive fraction
    gets a group while there are enough (3 trajectories at 80/10/10 would otherwise round
    to 2/0/1); a split left without one is warned about."""
    sizes = _sizes(k, fractions)
    for i, frac in enumerate(fractions):
        donor = int(np.argmax(sizes))
        if frac > 0 and sizes[i] == 0 and sizes[donor] > 1:
            sizes[donor] -= 1
            sizes[i] += 1
    empty = [s for s, f, size in zip(SPLITS, fractions, sizes) if f > 0 and size == 0]
    if empty:
        warnings.warn(f"only {k} group(s) (trajectories): split(s) {', '.join(empty)} get "
                      "none", stacklevel=4)
    return sizes


def _cut(n: int, sizes: Sequence[int], seed: int) -> dict[str, np.ndarray]:
    """A permutation of ``n`` items fixed by ``seed``, cut into splits of ``sizes``."""
    perm = np.random.default_rng(seed).permutation(n)
    cuts = np.cumsum([0, *sizes])
    return {s: np.sort(perm[cuts[i]:cuts[i + 1]]).astype(np.int64)
            for i, s in enumerate(SPLITS)}


class DatasetWriter:
    """Stream samples into a new pacsim-h5 file.

    ``append`` blocks of samples as they are produced (with ``groups``, the trajectory of
    each sample: then every block must give them, and the splits keep groups whole);
    ``close`` (or leaving the ``with`` block normally) writes the splits and the
    train-split statistics and renames the temporary file onto ``path``. Leaving the
    block by an exception, or ``abort``, removes the temporary file, so ``path`` never
    holds a partial dataset.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        input_shape: Sequence[int],
        target_shape: Sequence[int],
        simulator: str,
        setting: str,
        params: Mapping[str, Any],
        seed: int,
        coords: Mapping[str, Any] | None = None,
        sample_param_names: Sequence[str] | None = None,
        input_names: Sequence[str] | None = None,
        split: Sequence[float] = (0.8, 0.1, 0.1),
        overwrite: bool = False,
        compression: str | None = None,
        attrs: Mapping[str, Any] | None = None,
    ) -> None:
        self.path = Path(path)
        if len(split) != 3 or any(not (0 <= s <= 1) for s in split) or abs(sum(split) - 1) > 1e-9:
            raise DatasetError(f"{self.path}: split must be three fractions in [0, 1] summing "
                               f"to 1, got {tuple(split)}")
        try:
            self._params_json = json.dumps(dict(params), sort_keys=True)
        except TypeError as exc:
            raise DatasetError(f"{self.path}: params must be JSON-serialisable ({exc})") from None
        if compression not in (None, "gzip", "lzf"):
            raise DatasetError(f"{self.path}: compression must be None, 'gzip' or 'lzf'")
        self.input_shape = tuple(int(s) for s in input_shape)
        self.target_shape = tuple(int(s) for s in target_shape)
        coords_np = {k: np.asarray(v) for k, v in (coords or {}).items()}
        for k, v in coords_np.items():
            if not isinstance(k, str) or not k or "/" in k or k in (".", ".."):
                raise DatasetError(f"{self.path}: coordinate name {k!r} must be a non-empty "
                                   "string without '/'")
            if not np.issubdtype(v.dtype, np.number) or not np.isfinite(v).all():
                raise DatasetError(f"{self.path}: coordinate '{k}' must be finite numbers")
        self.split = tuple(float(s) for s in split)
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) \
                or not 0 <= seed < 2**63:
            raise DatasetError(f"{self.path}: seed must be an integer in [0, 2**63), "
                               f"got {seed!r}")
        self.seed = int(seed)
        self.n = 0
        self._groups: list[np.ndarray] | None = None  # set by the first append
        self._n_params = None if sample_param_names is None else len(sample_param_names)
        self._target = AtomicFile(self.path, overwrite=overwrite, hint=_OVERWRITE_HINT)
        self._f: h5py.File | None = None
        # the datasets stay open while the file is: closing one flushes its chunk cache,
        # and a flush that fails in a finaliser (a full disk) cannot be reported
        self._ds: dict[str, h5py.Dataset] = {}
        try:
            self._f = h5py.File(self._target.tmp, "w")
            f = self._f
            f.attrs.update({"format": FORMAT, "format_version": FORMAT_VERSION,
                            "simulator": simulator, "setting": setting,
                            "params": self._params_json, "seed": self.seed,
                            "created_with": __version__})
            for k, v in (attrs or {}).items():
                f.attrs[k] = v
            for name, shape in (("inputs", self.input_shape), ("targets", self.target_shape)):
                f.create_dataset(name, shape=(0, *shape), maxshape=(None, *shape),
                                 dtype=np.float32, chunks=(chunk_rows(shape), *shape),
                                 compression=compression)
            if input_names is not None:
                if len(self.input_shape) != 1 or len(input_names) != self.input_shape[0]:
                    raise DatasetError(f"{self.path}: {len(input_names)} input names for "
                                       f"inputs of shape {self.input_shape}")
                f["inputs"].attrs["names"] = [str(s) for s in input_names]
            if sample_param_names is not None:
                p = f.create_dataset("params", shape=(0, self._n_params),
                                     maxshape=(None, self._n_params), dtype=np.float64,
                                     chunks=(chunk_rows((self._n_params,), 8), self._n_params))
                p.attrs["names"] = [str(s) for s in sample_param_names]
            self._ds = {k: f[k] for k in ("inputs", "targets", "params") if k in f}
            for k, v in coords_np.items():
                f.create_dataset(f"coords/{k}", data=v)
        except BaseException as exc:
            self.abort()
            self._raise_disk_error(exc)
            raise

    def __enter__(self) -> DatasetWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def append(self, inputs: Any, targets: Any, sample_params: Any = None,
               groups: Any = None) -> None:
        """Add a block of samples (axis 0), checked before anything is written;
        ``groups``: each sample's group (trajectory) id."""
        if self._f is None:
            raise DatasetError(f"{self.path}: writer is closed")
        self._check_interrupt()
        x = np.asarray(inputs, dtype=np.float32)
        y = np.asarray(targets, dtype=np.float32)
        if x.shape[1:] != self.input_shape or y.shape[1:] != self.target_shape:
            raise DatasetError(
                f"{self.path}: block shapes {x.shape} / {y.shape} do not match samples of "
                f"{self.input_shape} / {self.target_shape}"
            )
        if x.shape[0] != y.shape[0]:
            raise DatasetError(f"{self.path}: block has {x.shape[0]} inputs but "
                               f"{y.shape[0]} targets")
        _check_finite(x, "inputs", self.path, self.n)
        _check_finite(y, "targets", self.path, self.n)
        p = None
        if self._n_params is not None:
            if sample_params is None:
                raise DatasetError(f"{self.path}: this file records per-sample params; "
                                   "pass sample_params")
            p = np.asarray(sample_params, dtype=np.float64)
            if p.shape != (x.shape[0], self._n_params):
                raise DatasetError(f"{self.path}: sample_params shape {p.shape}, expected "
                                   f"({x.shape[0]}, {self._n_params})")
        elif sample_params is not None:
            raise DatasetError(f"{self.path}: sample_params given but no sample_param_names")
        g = self._check_groups(groups, x.shape[0])
        lo, hi = self.n, self.n + x.shape[0]
        try:
            for name, block in (("inputs", x), ("targets", y), ("params", p)):
                if block is None:
                    continue
                ds = self._ds[name]
                ds.resize(hi, axis=0)
                ds[lo:hi] = block
        except BaseException as exc:  # a full disk: one line naming the file, no temp left
            self.abort()
            self._raise_disk_error(exc)
            raise
        if g is not None:
            assert self._groups is not None
            self._groups.append(g)
        self.n = hi

    def _check_groups(self, groups: Any, rows: int) -> np.ndarray | None:
        if self.n == 0 and self._groups is None:
            self._groups = None if groups is None else []
        if (groups is None) != (self._groups is None):
            raise DatasetError(f"{self.path}: give groups with every block or with none")
        if groups is None:
            return None
        g = np.asarray(groups)
        if g.shape != (rows,) or not (np.issubdtype(g.dtype, np.integer) or g.size == 0):
            raise DatasetError(f"{self.path}: groups must be {rows} integers, one per "
                               f"sample, got shape {g.shape} of {g.dtype}")
        return g.astype(np.int64)

    def close(self) -> Path:
        """Write splits and statistics, then rename into place; returns the path."""
        if self._f is None:
            raise DatasetError(f"{self.path}: writer is closed")
        try:
            if self.n == 0:
                raise DatasetError(f"{self.path}: no samples were written")
            self._target.check()
            f = self._f
            groups = None if self._groups is None else np.concatenate(self._groups)
            if groups is not None:
                f.create_dataset("groups", data=groups)
            splits = split_indices(self.n, self.split, self.seed, groups)
            for name in SPLITS:
                f.create_dataset(f"splits/{name}", data=splits[name])
            if splits["train"].size:
                self._write_stats(f, splits["train"])
            f.flush()  # a full disk fails here, where it can be reported
            self._ds = {}
            f.close()
            self._f = None
            self._target.commit()  # refuses after a stop signal, even a swallowed one
        except BaseException as exc:
            self.abort()
            self._raise_disk_error(exc)
            raise
        return self.path

    def _raise_disk_error(self, exc: BaseException) -> None:
        """Raise a write that ran out of room as one OSError line naming ``path``."""
        if isinstance(exc, Exception) and (err := disk_error(exc, self.path)) is not None:
            raise err from None

    def _write_stats(self, f: h5py.File, train: np.ndarray) -> None:
        is_train = np.zeros(self.n, dtype=bool)
        is_train[train] = True
        for name in ("inputs", "targets"):
            ds = self._ds[name]
            moments = RunningMoments(ds.shape[1:])
            step = max(1, STATS_BLOCK_BYTES // (4 * max(1, int(np.prod(ds.shape[1:])))))
            for lo in range(0, self.n, step):
                self._target.check()
                sel = is_train[lo:lo + step]
                if sel.any():
                    moments.update(ds[lo:lo + step][sel])
            f.create_dataset(f"stats/{name}_mean", data=moments.mean.astype(np.float32))
            f.create_dataset(f"stats/{name}_std", data=moments.std().astype(np.float32))

    def _check_interrupt(self) -> None:
        try:
            self._target.check()
        except procutil.Interrupted:
            self.abort()
            raise

    def abort(self) -> None:
        """Discard everything written so far."""
        with procutil.deferred():
            if self._f is not None:
                _abandon(self._f, self._ds)
                self._f = None
            self._target.discard()


def _abandon(f: h5py.File, handles: dict[str, h5py.Dataset]) -> None:
    """Close ``f``, whose contents are being thrown away, without writing to its file.

    HDF5 flushes its caches on close, and after a failed write (a full disk) every flush
    fails again, in dataset finalisers too, and can end the process. The file's
    descriptor is pointed at /dev/null first, so whatever HDF5 still writes succeeds and
    goes nowhere; the temporary file is removed by the caller."""
    with contextlib.suppress(Exception):
        fd = f.id.get_vfd_handle()
        if isinstance(fd, int) and fd >= 0:
            null = os.open(os.devnull, os.O_RDWR)
            try:
                os.dup2(null, fd)
            finally:
                os.close(null)
    handles.clear()  # their finalisers now write to /dev/null
    with contextlib.suppress(Exception):
        f.close()


def write_dataset(path: str | os.PathLike[str], inputs: Any, targets: Any, *, simulator: str,
                  setting: str, params: Mapping[str, Any], seed: int,
                  coords: Mapping[str, Any] | None = None, sample_params: Any = None,
                  sample_param_names: Sequence[str] | None = None,
                  split: Sequence[float] = (0.8, 0.1, 0.1), overwrite: bool = False,
                  compression: str | None = None) -> Path:
    """Write a whole dataset at once (see :class:`DatasetWriter` for streaming)."""
    x = np.asarray(inputs, dtype=np.float32)
    y = np.asarray(targets, dtype=np.float32)
    if x.ndim < 1 or y.ndim < 1:
        raise DatasetError(f"{path}: inputs and targets need a sample axis")
    if sample_params is not None and sample_param_names is None:
        sample_param_names = [f"p{i}" for i in range(np.asarray(sample_params).shape[-1])]
    with DatasetWriter(path, input_shape=x.shape[1:], target_shape=y.shape[1:],
                       simulator=simulator, setting=setting, params=params, seed=seed,
                       coords=coords, sample_param_names=sample_param_names, split=split,
                       overwrite=overwrite, compression=compression) as w:
        w.append(x, y, sample_params)
    return Path(path)
