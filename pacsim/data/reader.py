"""Reading pacsim-h5 files as torch Datasets, lazily or in memory, safely in workers."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, SequentialSampler

from .errors import DatasetError
from .format import SPLITS, FileInfo, first_non_finite, open_h5, validate
from .stats import Normalizer

IN_MEMORY_AUTO_BYTES = 512 * 2**20
CHUNK_CACHE_BYTES = 64 * 2**20


def read_rows(ds: h5py.Dataset, rows: np.ndarray) -> np.ndarray:
    """``ds[rows]`` for sorted, unique ``rows`` through h5py.

    Dense selections are read as one slice and picked in memory; sparse ones use a
    single h5py point-list read. Used where :class:`SampleMap` cannot map the file.
    """
    if rows.size == 0:
        return np.empty((0, *ds.shape[1:]), dtype=ds.dtype)
    lo, hi = int(rows[0]), int(rows[-1]) + 1
    if hi - lo <= 4 * rows.size:
        return ds[lo:hi][rows - lo]
    return ds[rows]


class SampleMap:
    """File byte offset of every sample of an uncompressed float32 dataset.

    pacsim-h5 chunks hold whole samples, so once the chunk addresses are known a
    sample is a fixed-size run of bytes in the file, and a shuffled batch is gathered
    from a read-only memory map at memory speed instead of through one HDF5 selection
    per batch. Returns None from :meth:`build` for layouts it cannot map (compression,
    filters, other dtypes, chunks that split samples); readers then fall back to h5py.
    """

    def __init__(self, offsets: np.ndarray, sample_shape: tuple[int, ...]) -> None:
        self.offsets = offsets
        self.sample_shape = sample_shape
        self.nbytes = 4 * int(np.prod(sample_shape, dtype=np.int64))

    @classmethod
    def build(cls, ds: h5py.Dataset) -> SampleMap | None:
        if ds.dtype != np.dtype("<f4") or ds.shape[0] == 0:
            return None
        n, sample_shape = ds.shape[0], tuple(ds.shape[1:])
        nbytes = 4 * int(np.prod(sample_shape, dtype=np.int64))
        if ds.chunks is None:
            start = ds.id.get_offset()
            return None if start is None else cls(start + nbytes * np.arange(n), sample_shape)
        if ds.id.get_create_plist().get_nfilters() or tuple(ds.chunks[1:]) != sample_shape:
            return None
        rows = ds.chunks[0]
        starts = np.full(-(-n // rows), -1, dtype=np.int64)

        def note(info: Any) -> None:
            starts[info.chunk_offset[0] // rows] = info.byte_offset

        try:
            ds.id.chunk_iter(note)
        except (AttributeError, RuntimeError):
            for i in range(ds.id.get_num_chunks()):
                note(ds.id.get_chunk_info(i))
        if (starts < 0).any():
            return None
        i = np.arange(n, dtype=np.int64)
        return cls(starts[i // rows] + (i % rows) * nbytes, sample_shape)

    def gather(self, mm: np.memmap, rows: np.ndarray) -> np.ndarray:
        """Samples ``rows`` (any order) as a new float32 array."""
        offs = self.offsets[rows]
        if self.nbytes <= 256:
            raw = mm[offs[:, None] + np.arange(self.nbytes)]
        else:
            raw = np.empty((offs.size, self.nbytes), dtype=np.uint8)
            for j, o in enumerate(offs.tolist()):
                raw[j] = mm[o:o + self.nbytes]
        return raw.view(np.float32).reshape(offs.size, *self.sample_shape)


class H5Dataset(Dataset):
    """Samples ``(x, y)`` of one split of a pacsim-h5 file, as float32 tensors.

    ``normalize=True`` applies the file's train-split statistics (see
    :attr:`normalizer`); a :class:`Normalizer` applies those instead (e.g. a source
    model's statistics to target data). ``in_memory="auto"`` loads the split when it is smaller than
    512 MiB and reads lazily otherwise. The HDF5 handle is opened on first use in each
    process, so the dataset pickles into DataLoader workers under any start method.
    Indexing with a list/array of positions returns a whole batch from one sorted read.
    """

    batch_read = True

    def __init__(self, path: str | os.PathLike[str], split: str = "train",
                 normalize: bool | Normalizer = True, in_memory: bool | str = "auto") -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if in_memory not in (True, False, "auto"):
            raise ValueError(f"in_memory must be True, False or 'auto', got {in_memory!r}")
        self.path = Path(path)
        self.split = split
        with open_h5(self.path) as f:
            self.info: FileInfo = validate(f, self.path)
            maps = {k: SampleMap.build(f[k]) for k in ("inputs", "targets")}
        if normalize is True and self.info.normalizer is None:
            raise DatasetError(f"{self.path}: no 'stats' group (empty train split?); "
                               "open with normalize=False")
        self.normalizer: Normalizer | None = (
            normalize if isinstance(normalize, Normalizer)
            else self.info.normalizer if normalize else None)
        self.indices = self.info.splits[split]
        #: Each sample's group (trajectory) where the file records them, else None.
        self.groups = None if self.info.groups is None else self.info.groups[self.indices]
        sample_bytes = 4 * (int(np.prod(self.info.input_shape))
                            + int(np.prod(self.info.target_shape)))
        if in_memory == "auto":
            in_memory = self.indices.size * sample_bytes <= IN_MEMORY_AUTO_BYTES
        self.in_memory = bool(in_memory)
        self._file: h5py.File | None = None
        self._pid: int | None = None
        self._mm: np.memmap | None = None
        self._maps: dict[str, SampleMap] | None = None
        self._x: np.ndarray | None = None
        self._y: np.ndarray | None = None
        if self.in_memory:
            self._x, self._y = self._read(self.indices)
            self.close()
        else:
            self._maps = maps if all(maps.values()) else None  # type: ignore[assignment]

    # ------------------------------------------------------------------ plumbing
    def _h5(self) -> h5py.File:
        if self._file is None or self._pid != os.getpid():
            self._file = open_h5(self.path, rdcc_nbytes=CHUNK_CACHE_BYTES)
            self._pid = os.getpid()
        return self._file

    def _memmap(self) -> np.memmap:
        if self._mm is None or self._pid != os.getpid():
            self._mm = np.memmap(self.path, dtype=np.uint8, mode="r")
            self._pid = os.getpid()
        return self._mm

    def close(self) -> None:
        """Close this process's file handle and memory map (they reopen on next use)."""
        if self._file is not None and self._pid == os.getpid():
            self._file.close()
        self._file = None
        self._mm = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.update(_file=None, _pid=None, _mm=None)
        return state

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

    def _read(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """File rows (any order) of inputs and targets, normalised and checked."""
        if self._maps is not None:
            mm = self._memmap()
            x = self._maps["inputs"].gather(mm, rows)
            y = self._maps["targets"].gather(mm, rows)
        else:
            uniq, inverse = np.unique(rows, return_inverse=True)
            f = self._h5()
            x = read_rows(f["inputs"], uniq)[inverse]
            y = read_rows(f["targets"], uniq)[inverse]
        raw = {"inputs": x, "targets": y}
        if self.normalizer is not None:
            with np.errstate(over="ignore", invalid="ignore"):  # said below, in one line
                x = self.normalizer.inputs(x)
                y = self.normalizer.targets(y)
        for arr, what in ((x, "inputs"), (y, "targets")):
            bad = first_non_finite(arr)
            if bad is not None:
                why = ("contain NaN or inf" if not np.isfinite(raw[what][bad]).all() else
                       "overflow float32 once normalised (values too large for the stats)")
                raise DatasetError(f"{self.path}: {what} {why} (sample {int(rows[bad])})")
        return np.ascontiguousarray(x, np.float32), np.ascontiguousarray(y, np.float32)

    # ------------------------------------------------------------------ Dataset API
    def __len__(self) -> int:
        return int(self.indices.size)

    def _positions(self, index: Any) -> np.ndarray:
        pos = np.asarray(index.cpu() if isinstance(index, torch.Tensor) else index, dtype=np.int64)
        n = len(self)
        if pos.size and (pos.min() < -n or pos.max() >= n):
            raise IndexError(f"index out of range for {n} samples in split {self.split!r}")
        return pos % n if n else pos

    def __getitem__(self, index: Any) -> tuple[torch.Tensor, torch.Tensor]:
        pos = self._positions(index)
        if self.in_memory:
            x, y = self._x[pos], self._y[pos]  # type: ignore[index]
        else:
            x, y = self._read(self.indices[pos.reshape(-1)])
            if pos.ndim == 0:
                x, y = x[0], y[0]
        # np.asarray: one sample of scalar data, shape (N,), is a NumPy scalar
        return torch.from_numpy(np.asarray(x)), torch.from_numpy(np.asarray(y))

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """The whole split as arrays (normalised if asked)."""
        return (self._x, self._y) if self.in_memory else self._read(self.indices)

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole split as a ``(X, Y)`` tensor pair, the trainer's fastest input."""
        x, y = self.arrays()
        return torch.from_numpy(x), torch.from_numpy(y)

    def draw(self, n: int, seed: int = 0) -> np.ndarray:
        """Sorted positions of ``n`` samples drawn without replacement (fixed by ``seed``)."""
        if not 0 < n <= len(self):
            raise ValueError(f"{self.path}: cannot draw {n} samples from the {len(self)} of "
                             f"split {self.split!r}")
        return np.sort(np.random.default_rng(seed).choice(len(self), size=n, replace=False))

    def subset(self, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` samples drawn without replacement (fixed by ``seed``) as tensors."""
        return self[self.draw(n, seed)]


def loader(dataset: Dataset, batch_size: int = 64, *, shuffle: bool = True,
           seed: int | None = None, num_workers: int = 0, drop_last: bool = False,
           multiprocessing_context: str | None = None, pin_memory: bool = False,
           generator: torch.Generator | None = None) -> DataLoader:
    """A DataLoader that fetches whole batches with one read per batch.

    For datasets with ``batch_read`` (like :class:`H5Dataset`) the sampler hands each
    worker a list of indices; other datasets get a standard per-sample DataLoader.
    ``seed`` fixes the shuffling order (identical for any ``num_workers``).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if generator is None and seed is not None:
        generator = torch.Generator().manual_seed(seed)
    kwargs: dict[str, Any] = {"num_workers": num_workers, "pin_memory": pin_memory}
    if num_workers > 0:
        kwargs["multiprocessing_context"] = multiprocessing_context
        kwargs["persistent_workers"] = False
    if getattr(dataset, "batch_read", False):
        base = RandomSampler(dataset, generator=generator) if shuffle \
            else SequentialSampler(dataset)
        return DataLoader(dataset, batch_size=None,
                          sampler=BatchSampler(base, batch_size, drop_last), **kwargs)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator,
                      drop_last=drop_last, **kwargs)


def open_splits(path: str | os.PathLike[str], normalize: bool | Normalizer = True,
                in_memory: bool | str = "auto", splits: Sequence[str] = SPLITS
                ) -> dict[str, H5Dataset]:
    """Every split of a file, keyed by name, e.g. for ``evaluate`` on each."""
    return {s: H5Dataset(path, s, normalize=normalize, in_memory=in_memory) for s in splits}
