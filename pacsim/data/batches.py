"""Mini-batches for the trainer from any accepted data form: an in-memory pair ``(X, Y)``
(moved to the device once), a Dataset of ``(x, y)`` or a DataLoader.

With ``shard=(rank, world)`` (data-parallel training) every process draws the same
global batches (same generator) and keeps only its share of each; ``share`` then says
how much this rank's mean loss weighs, so that averaging the ranks' gradients gives the
global batch's mean gradient even when a batch does not split evenly.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, default_collate

Data = tuple[Any, Any] | Dataset | DataLoader


def as_tensor(a: Any, what: str) -> torch.Tensor:
    if isinstance(a, np.ndarray):
        a = torch.from_numpy(np.ascontiguousarray(a))
    if not isinstance(a, torch.Tensor):
        raise TypeError(f"{what} must be a tensor or numpy array, got {type(a).__name__}")
    if a.is_floating_point() and a.dtype != torch.float32:
        a = a.float()
    return a


class _Sharded:
    """The part of every global batch that belongs to this rank."""

    shard: tuple[int, int] | None = None
    share: float = 1.0

    def _mine(self, idx: torch.Tensor) -> torch.Tensor:
        if self.shard is None:
            return idx
        rank, size = self.shard
        mine = idx.tensor_split(size)[rank]
        self.share = mine.numel() * size / max(idx.numel(), 1)
        return mine


class _TensorBatches(_Sharded):
    """Mini-batches from an in-memory pair; the pair moves to the device once."""

    def __init__(self, pair: tuple[Any, Any], batch_size: int, device: torch.device, name: str,
                 shard: tuple[int, int] | None = None):
        x, y = (as_tensor(a, f"{name} {w}") for a, w in zip(pair, ("inputs", "targets")))
        if x.dim() == 0 or y.dim() == 0 or x.shape[0] != y.shape[0]:
            raise ValueError(
                f"{name} inputs and targets must have the same number of samples on axis 0, "
                f"got shapes {tuple(x.shape)} and {tuple(y.shape)}"
            )
        if x.shape[0] == 0:
            raise ValueError(f"{name} data has no samples")
        for t, w in ((x, "inputs"), (y, "targets")):
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                raise ValueError(f"{name} {w} contain NaN or inf values")
        self.x = x.to(device, non_blocking=True)
        self.y = y.to(device, non_blocking=True)
        self.n = x.shape[0]
        self.batch_size = batch_size
        self.device = device
        self.shard = shard

    def __len__(self) -> int:
        return -(-self.n // self.batch_size)

    def epoch(self, generator: torch.Generator | None
              ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if generator is None and self.shard is None:
            for i in range(0, self.n, self.batch_size):
                yield self.x[i : i + self.batch_size], self.y[i : i + self.batch_size]
            return
        perm = (torch.arange(self.n) if generator is None
                else torch.randperm(self.n, generator=generator))
        perm = perm.to(self.device, non_blocking=True)
        for i in range(0, self.n, self.batch_size):
            idx = self._mine(perm[i : i + self.batch_size])
            yield self.x[idx], self.y[idx]


class _LoaderBatches(_Sharded):
    """Mini-batches from a Dataset or a user's DataLoader.

    A Dataset is indexed with the positions of each batch (one read per batch for
    datasets with ``batch_read``, like :class:`~pacsim.data.H5Dataset`), in the order an
    in-memory pair would be drawn: same seed, same batches, in memory or on disk.
    Sharded, each rank fetches only its share. A user's DataLoader is used as given
    (shard it yourself, e.g. with a DistributedSampler)."""

    def __init__(self, data: Dataset | DataLoader, batch_size: int, device: torch.device,
                 shuffle: bool, shard: tuple[int, int] | None = None):
        self.device = device
        if isinstance(data, DataLoader):
            self._loader: DataLoader | None = data
            self._dataset = None
        else:
            if len(data) == 0:  # type: ignore[arg-type]
                raise ValueError("dataset has no samples")
            self._loader = None
            self._dataset = data
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.shard = shard if self._loader is None else None

    def __len__(self) -> int:
        if self._loader is not None:
            return len(self._loader)
        return -(-len(self._dataset) // self.batch_size)  # type: ignore[arg-type]

    def epoch(self, generator: torch.Generator | None
              ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self._loader is not None:
            for batch in self._loader:
                x, y = batch[0], batch[1]
                yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            return
        n = len(self._dataset)  # type: ignore[arg-type]
        perm = (torch.randperm(n, generator=generator)
                if self.shuffle and generator is not None else torch.arange(n))
        for i in range(0, n, self.batch_size):
            x, y = self._fetch(self._mine(perm[i : i + self.batch_size]))
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    def _fetch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        data: Any = self._dataset
        if not idx.numel():  # a batch smaller than the world: this rank idles
            x0, y0 = (torch.as_tensor(v) for v in data[0][:2])
            return x0.new_empty((0, *x0.shape)), y0.new_empty((0, *y0.shape))
        if getattr(data, "batch_read", False):
            x, y = data[idx.numpy()][:2]
            return torch.as_tensor(x), torch.as_tensor(y)
        batch = default_collate([data[int(j)] for j in idx])
        return batch[0], batch[1]


def batches(data: Data, batch_size: int, device: torch.device, *, shuffle: bool = True,
            name: str = "train", shard: tuple[int, int] | None = None
            ) -> _TensorBatches | _LoaderBatches:
    """Wrap any accepted data form: ``(X, Y)``, a Dataset of ``(x, y)``, or a DataLoader.

    ``shard=(rank, world)``: keep only this rank's share of every batch."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if isinstance(data, (tuple, list)) and len(data) == 2:
        return _TensorBatches(tuple(data), batch_size, device, name, shard)
    if isinstance(data, (Dataset, DataLoader)):
        return _LoaderBatches(data, batch_size, device, shuffle, shard)
    raise TypeError(
        f"{name} data must be a pair (X, Y), a torch Dataset or a DataLoader, "
        f"got {type(data).__name__}"
    )


Batches = _TensorBatches | _LoaderBatches
