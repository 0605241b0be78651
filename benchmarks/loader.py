"""Shuffled mini-batches per second from a pacsim-h5 file of a few hundred MB.

Compares pacsim's lazy batched reads and in-memory dataset with raw numpy fancy indexing
on an in-memory array, a per-sample read that reopens the file each time (the style of
PDEBench's multi-file loader), and a per-sample read on an open handle.
Usage: ``python benchmarks/loader.py [--samples 10000] [--grid 64] [--dir DIR]``.
Goals: lazy batched >= 20x reopen-per-sample; in-memory within 1.2x of raw numpy.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import torch

from pacsim.data import DatasetWriter, H5Dataset
from pacsim.sysinfo import one_line


def make_file(path: Path, n: int, grid: int) -> Path:
    """A field dataset (N, 1, grid, grid) -> (N, 1, grid, grid), written in blocks."""
    rng = np.random.default_rng(0)
    shape = (1, grid, grid)
    with DatasetWriter(path, input_shape=shape, target_shape=shape, simulator="bench",
                       setting="loader", params={"grid": grid}, seed=0, split=(1.0, 0.0, 0.0),
                       overwrite=True) as w:
        for lo in range(0, n, 500):
            b = min(500, n - lo)
            x = rng.standard_normal((b, *shape), dtype=np.float32)
            w.append(x, np.tanh(x))
    return path


def rate(fetch: Callable[[np.ndarray], object], n: int, batch: int, budget_s: float,
         max_batches: int = 10_000) -> float:
    """Batches per second over shuffled epochs, for at least ``budget_s`` seconds."""
    rng = np.random.default_rng(1)
    fetch(rng.permutation(n)[:batch])  # warm-up
    done, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < budget_s and done < max_batches:
        perm = rng.permutation(n)
        for lo in range(0, n - batch + 1, batch):
            fetch(perm[lo:lo + batch])
            done += 1
            if time.perf_counter() - t0 >= budget_s:
                break
    return done / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=10_000)
    ap.add_argument("--grid", type=int, default=64)
    ap.add_argument("--budget", type=float, default=3.0, help="seconds per measurement")
    ap.add_argument("--dir", default=None, help="folder for the generated file")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        path = Path(tmp) / "loader_bench.h5"
        t0 = time.perf_counter()
        make_file(path, args.samples, args.grid)
        size = path.stat().st_size / 1e6
        print(one_line(torch.device("cpu")))
        print(f"file: {args.samples} samples of 2 x (1, {args.grid}, {args.grid}) float32, "
              f"{size:.0f} MB, written in {time.perf_counter() - t0:.1f} s")
        lazy = H5Dataset(path, in_memory=False)
        mem = H5Dataset(path, in_memory=True)
        with h5py.File(path) as f:
            raw_x, raw_y = f["inputs"][()], f["targets"][()]
        handle = h5py.File(path)

        def raw(idx: np.ndarray) -> object:
            return torch.from_numpy(raw_x[idx]), torch.from_numpy(raw_y[idx])

        def reopen(idx: np.ndarray) -> object:
            xs, ys = [], []
            for i in idx:
                with h5py.File(path) as f:
                    xs.append(f["inputs"][i])
                    ys.append(f["targets"][i])
            return torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys))

        def per_sample(idx: np.ndarray) -> object:
            xs = [handle["inputs"][i] for i in idx]
            ys = [handle["targets"][i] for i in idx]
            return torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys))

        methods = {"pacsim lazy, batched read": lazy.__getitem__,
                   "pacsim in memory": mem.__getitem__,
                   "numpy fancy indexing (in memory)": raw,
                   "per-sample, reopen file each time": reopen,
                   "per-sample, open handle": per_sample}
        results: dict[int, dict[str, float]] = {}
        for batch in (64, 512):
            results[batch] = {}
            for name, fn in methods.items():
                slow = name.startswith("per-sample")
                results[batch][name] = rate(fn, args.samples, batch,
                                            args.budget if not slow else args.budget / 2)
        handle.close()
        print(f"\n{'method':<36} {'batch 64 [1/s]':>15} {'batch 512 [1/s]':>16}")
        for name in methods:
            print(f"{name:<36} {results[64][name]:>15.1f} {results[512][name]:>16.2f}")
        for batch in (64, 512):
            r = results[batch]
            print(f"batch {batch}: lazy / reopen = "
                  f"{r['pacsim lazy, batched read'] / r['per-sample, reopen file each time']:.1f}x,"
                  f" numpy / in-memory = "
                  f"{r['numpy fancy indexing (in memory)'] / r['pacsim in memory']:.2f}x")


if __name__ == "__main__":
    main()
