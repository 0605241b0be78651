"""The ``pacsim-h5`` file format, version 1: constants, chunking and validation.

Root attributes: ``format="pacsim-h5"``, ``format_version=1``, ``simulator``,
``setting``, ``params`` (JSON of the simulation setting), ``seed``, ``created_with``.
Datasets: ``inputs`` and ``targets`` (float32, samples on axis 0), optional ``params``
(N, P) with attribute ``names``, optional ``coords/<name>``, ``splits/{train,val,test}``
(int64 sample indices, sorted), optional ``stats/{inputs,targets}_{mean,std}`` computed
on the train split, optional ``groups`` (int64, N): the trajectory (or other unit of
correlated samples) each sample comes from; no group spans two splits, so pairs of states
of one trajectory never sit on both sides of a train/test boundary.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..fsutil import not_a_file
from .errors import DatasetError
from .stats import Normalizer, stat_shape

FORMAT = "pacsim-h5"
FORMAT_VERSION = 1
SPLITS = ("train", "val", "test")
ROOT_ATTRS = ("format", "format_version", "simulator", "setting", "params", "seed",
              "created_with")
CHUNK_BYTES = 32 * 1024


def chunk_rows(sample_shape: tuple[int, ...], itemsize: int = 4,
               target_bytes: int = CHUNK_BYTES) -> int:
    """Samples per chunk: about ``target_bytes`` per chunk, at least one sample.

    Chunks hold whole samples along axis 0, so a shuffled mini-batch read touches at
    most one chunk per sample, and small chunks keep that read close to the batch size.
    """
    sample_bytes = itemsize * int(np.prod(sample_shape, dtype=np.int64))
    return max(1, target_bytes // max(sample_bytes, 1))


def first_non_finite(block: np.ndarray) -> int | None:
    """The position (axis 0) of the first sample of ``block`` holding NaN or inf, or None."""
    if block.shape[0] == 0:  # an empty split: nothing to check (and nothing to reshape)
        return None
    finite = np.isfinite(block.reshape(block.shape[0], -1)).all(axis=1)
    return None if finite.all() else int(np.argmin(finite))


def open_h5(path: str | Path, mode: str = "r", **kwargs: Any) -> h5py.File:
    """``h5py.File`` with one-line :class:`DatasetError` messages for unreadable files."""
    if mode == "r" and os.fspath(path) == "":
        raise DatasetError("empty file name")
    path = Path(path)
    if mode == "r" and (why := not_a_file(path)) is not None:
        raise DatasetError(f"{path}: {why}")
    try:
        return h5py.File(path, mode, **kwargs)
    except OSError as exc:
        msg = str(exc)
        if "truncated" in msg:
            why = "truncated HDF5 file (was it written completely?)"
        elif "signature" in msg or "not an HDF5" in msg.lower():
            why = "not an HDF5 file"
        else:
            why = f"cannot open as HDF5 ({msg.splitlines()[0][:160]})"
        raise DatasetError(f"{path}: {why}") from None


def unreadable(path: Path, exc: BaseException) -> DatasetError:
    """A one-line :class:`DatasetError` for a failure inside HDF5 on a damaged file."""
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if "too many links" in msg:
        return DatasetError(f"{path}: a soft link in the file points back at itself (loop)")
    return DatasetError(f"{path}: damaged or malformed HDF5 file ({msg[:160]})")


def attr_value(value: Any) -> Any:
    """An HDF5 attribute as a plain Python value (str, int, float, list); bytes, also
    opaque ones, become text (bytes that are not UTF-8 replaced by U+FFFD)."""
    if isinstance(value, np.void):
        value = value.tobytes()
    if isinstance(value, str):  # h5py keeps bytes that are not UTF-8 as surrogates
        try:
            value = value.encode("utf-8", errors="surrogateescape")
        except UnicodeEncodeError:
            return value.encode("utf-8", errors="replace").decode("utf-8")
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return [attr_value(v) for v in value.tolist()]
    return value


@dataclass
class FileInfo:
    """What :func:`validate` learned about a pacsim-h5 file."""

    path: Path
    attrs: dict[str, Any]
    n: int
    input_shape: tuple[int, ...]
    target_shape: tuple[int, ...]
    splits: dict[str, np.ndarray]
    normalizer: Normalizer | None
    sample_param_names: list[str] | None = None
    input_names: list[str] | None = None
    coords: dict[str, np.ndarray] = field(default_factory=dict)
    #: The group (trajectory) of every sample, or None when samples are independent.
    groups: np.ndarray | None = None

    @property
    def params(self) -> dict[str, Any]:
        """The simulation setting (decoded from the root ``params`` JSON)."""
        return json.loads(self.attrs["params"])


def _shared(values: dict[str, np.ndarray]) -> tuple[str, str, int] | None:
    """The first value two splits share, as (split, split, value); None if none."""
    for i, a in enumerate(SPLITS):
        for b in SPLITS[i + 1:]:
            both = np.intersect1d(values[a], values[b])
            if both.size:
                return a, b, int(both[0])
    return None


def _check_disjoint(splits: dict[str, np.ndarray], path: Path) -> None:
    """Rule: no sample is in two splits."""
    if (shared := _shared(splits)) is not None:
        a, b, sample = shared
        raise DatasetError(f"{path}: 'splits/{a}' and 'splits/{b}' share sample {sample} "
                           "(rule: the splits are disjoint)")


def _check_groups(f: h5py.File, n: int, splits: dict[str, np.ndarray],
                  path: Path) -> np.ndarray:
    """Rules: one integer group per sample; no group in two splits."""
    ds = f["groups"]
    if not isinstance(ds, h5py.Dataset) or ds.shape != (n,) \
            or not np.issubdtype(ds.dtype, np.integer):
        raise DatasetError(f"{path}: dataset 'groups' must be 1-D integers, one per sample "
                           f"(N={n})")
    groups = ds[()].astype(np.int64)
    if (shared := _shared({s: groups[idx] for s, idx in splits.items()})) is not None:
        a, b, group = shared
        raise DatasetError(f"{path}: group {group} has samples in both 'splits/{a}' and "
                           f"'splits/{b}' (rule: a group, e.g. one trajectory, lies in one "
                           "split)")
    return groups


def _check_stats(norm: Normalizer, input_shape: tuple[int, ...],
                 target_shape: tuple[int, ...], path: Path) -> None:
    """Rules: statistics are finite with positive stds, shaped per feature/channel."""
    for side, shape in (("inputs", input_shape), ("targets", target_shape)):
        short = side[:-1]
        for kind in ("mean", "std"):
            have = getattr(norm, f"{short}_{kind}").shape
            if have != stat_shape(shape):
                raise DatasetError(f"{path}: 'stats/{side}_{kind}' has shape {list(have)}, "
                                   f"expected {list(stat_shape(shape))} for samples "
                                   f"{list(shape)} (rule: one statistic per feature/channel)")
    try:
        norm.check()
    except ValueError as exc:
        raise DatasetError(f"{path}: 'stats' break a rule: {exc}") from None


def validate(f: h5py.File, path: str | Path) -> FileInfo:
    """Check an open file against the schema; one-line :class:`DatasetError` otherwise."""
    path = Path(path)
    fmt = attr_value(f.attrs.get("format"))
    if fmt != FORMAT:
        hint = ("; PDEBench files are read with pacsim.data.pdebench"
                if "tensor" in f or any(k.isdigit() for k in f) else "")
        raise DatasetError(f"{path}: not a pacsim-h5 file (format attribute is {fmt!r}){hint}")
    version = attr_value(f.attrs.get("format_version"))
    if version != FORMAT_VERSION:
        raise DatasetError(f"{path}: unsupported pacsim-h5 format_version {version!r} "
                           f"(this pacsim reads version {FORMAT_VERSION})")
    attrs = {k: attr_value(v) for k, v in f.attrs.items()}
    missing = [a for a in ROOT_ATTRS if a not in attrs]
    if missing:
        raise DatasetError(f"{path}: missing root attribute(s) {missing}")
    try:
        json.loads(attrs["params"])
    except (TypeError, ValueError):
        raise DatasetError(f"{path}: root attribute 'params' is not valid JSON") from None
    for name in ("inputs", "targets"):
        if not isinstance(f.get(name), h5py.Dataset):
            raise DatasetError(f"{path}: missing dataset '{name}'")
        if f[name].dtype != np.float32:
            raise DatasetError(f"{path}: dataset '{name}' is {f[name].dtype}, expected float32")
        if f[name].ndim < 1:
            raise DatasetError(f"{path}: dataset '{name}' has no sample axis")
    n = f["inputs"].shape[0]
    if n == 0:
        raise DatasetError(f"{path}: no samples (rule: a pacsim-h5 file holds N >= 1)")
    if f["targets"].shape[0] != n:
        raise DatasetError(f"{path}: inputs have {n} samples but targets have "
                           f"{f['targets'].shape[0]}")
    splits = {}
    for s in SPLITS:
        ds = f.get(f"splits/{s}")
        if not isinstance(ds, h5py.Dataset):
            raise DatasetError(f"{path}: missing dataset 'splits/{s}'")
        idx = ds[()]
        if idx.ndim != 1 or not np.issubdtype(idx.dtype, np.integer):
            raise DatasetError(f"{path}: 'splits/{s}' must be a 1-D integer array")
        if idx.size and (idx.min() < 0 or idx.max() >= n):
            raise DatasetError(f"{path}: 'splits/{s}' has indices outside [0, {n}) "
                               f"(min {idx.min()}, max {idx.max()})")
        if idx.size > 1 and not (np.diff(idx) > 0).all():
            what = "repeats an index" if np.unique(idx).size < idx.size else "is not sorted"
            raise DatasetError(f"{path}: 'splits/{s}' {what} (rule: split indices are "
                               "sorted and unique)")
        splits[s] = idx.astype(np.int64)
    _check_disjoint(splits, path)
    groups = _check_groups(f, n, splits, path) if "groups" in f else None
    sample_names = None
    if "params" in f:
        p = f["params"]
        if not isinstance(p, h5py.Dataset) or p.ndim != 2 or p.shape[0] != n:
            raise DatasetError(f"{path}: dataset 'params' must have shape (N={n}, P)")
        sample_names = [attr_value(x) for x in p.attrs.get("names", [])]
        if len(sample_names) != p.shape[1]:
            raise DatasetError(f"{path}: 'params' has {p.shape[1]} columns but "
                               f"{len(sample_names)} names")
    normalizer = None
    if "stats" in f:
        try:
            normalizer = Normalizer(*(f[f"stats/{a}_{b}"][()].astype(np.float32)
                                      for a in ("inputs", "targets") for b in ("mean", "std")))
        except KeyError as exc:
            raise DatasetError(f"{path}: incomplete 'stats' group ({exc})") from None
        _check_stats(normalizer, tuple(f["inputs"].shape[1:]), tuple(f["targets"].shape[1:]),
                     path)
    coords = {}
    if "coords" in f:
        if not isinstance(f["coords"], h5py.Group):
            raise DatasetError(f"{path}: 'coords' must be a group of datasets")
        for k, v in f["coords"].items():
            if not isinstance(v, h5py.Dataset):
                raise DatasetError(f"{path}: 'coords/{k}' is a group, expected a dataset")
            coords[k] = v[()]
    input_names = ([attr_value(x) for x in f["inputs"].attrs["names"]]
                   if "names" in f["inputs"].attrs else None)
    return FileInfo(path, attrs, n, tuple(f["inputs"].shape[1:]), tuple(f["targets"].shape[1:]),
                    splits, normalizer, sample_names, input_names, coords, groups)
