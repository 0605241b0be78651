"""PDEBench files of both layouts, built here with h5py, read and converted correctly."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from pacsim.data import DatasetError, H5Dataset, describe
from pacsim.data.pdebench import PDEBenchFile, convert


@pytest.fixture
def single(tmp_path):
    """1D layout: tensor (N, Nt, Nx), t-coordinate one entry longer than the trajectory."""
    rng = np.random.default_rng(0)
    tensor = rng.normal(size=(6, 5, 8)).astype(np.float32)
    path = tmp_path / "1D_Burgers_Sols_Nu0.01.hdf5"
    with h5py.File(path, "w") as f:
        f["tensor"] = tensor
        f["x-coordinate"] = np.linspace(0, 1, 8, endpoint=False)
        f["t-coordinate"] = np.linspace(0, 0.5, 6)  # Nt + 1 entries
        f.attrs["Nu"] = 0.01
    return path, tensor


@pytest.fixture
def seeds(tmp_path):
    """2D per-seed layout: groups 0000.. with data (Nt, Nx, Ny, V) and grid/{x,y,t}."""
    rng = np.random.default_rng(1)
    data = rng.normal(size=(3, 4, 6, 5, 2)).astype(np.float32)
    path = tmp_path / "2D_diff-react.h5"
    with h5py.File(path, "w") as f:
        for i, d in enumerate(data):
            g = f.create_group(f"{i:04d}")
            g["data"] = d
            g["grid/x"] = np.linspace(-1, 1, 6)
            g["grid/y"] = np.linspace(-1, 1, 5)
            g["grid/t"] = np.linspace(0, 3, 4)
    return path, data


def test_single_file_layout(single):
    path, tensor = single
    with PDEBenchFile(path) as pb:
        assert pb.layout == "single" and pb.n == 6 and pb.n_times == 5
        assert pb.state_shape == (1, 8) and pb.attrs == {"Nu": 0.01}
        assert np.allclose(pb.coords["t"], np.linspace(0, 0.5, 6)[:5])
        (x, y), = list(pb.pairs("final"))
        assert np.array_equal(x, tensor[:, 0, None]) and np.array_equal(y, tensor[:, -1, None])
        (x, y), = list(pb.pairs("final", time=0.2))
        assert np.array_equal(y, tensor[:, 2, None])
        blocks = list(pb.pairs("step", stride=2, block=4))
        x = np.concatenate([b[0] for b in blocks])
        y = np.concatenate([b[1] for b in blocks])
        assert x.shape == (6 * 3, 1, 8)
        assert np.array_equal(x[4], tensor[1, 1, None]) and np.array_equal(y[4], tensor[1, 3, None])


def test_per_seed_layout(seeds):
    path, data = seeds
    with PDEBenchFile(path) as pb:
        assert pb.layout == "seeds" and pb.n == 3 and pb.n_times == 4
        assert pb.state_shape == (2, 6, 5)
        assert set(pb.coords) == {"x", "y", "t"}
        (x, y), = list(pb.pairs("final", t_index=2))
        assert np.array_equal(x, np.moveaxis(data[:, 0], -1, 1))
        assert np.array_equal(y, np.moveaxis(data[:, 2], -1, 1))
        (x, y), = list(pb.pairs("step"))
        assert x.shape == (9, 2, 6, 5)
        assert np.array_equal(y[3], np.moveaxis(data[1, 1], -1, 0))


@pytest.mark.parametrize("mode", ["final", "step"])
def test_convert_to_pacsim(single, tmp_path, mode):
    path, tensor = single
    out = convert(path, tmp_path / "burgers.h5", mode=mode, seed=0, split=(0.5, 0.25, 0.25))
    ds = H5Dataset(out, "train", normalize=False)
    assert ds.info.attrs["simulator"] == "pdebench"
    assert ds.info.params["Nu"] == 0.01 and ds.info.params["mode"] == mode
    assert np.allclose(ds.info.coords["x"], np.linspace(0, 1, 8, endpoint=False))
    n = 6 if mode == "final" else 24
    assert ds.info.n == n
    x, y = ds.arrays()
    if mode == "final":
        assert np.array_equal(x, tensor[ds.indices, 0, None])
        assert np.array_equal(y, tensor[ds.indices, -1, None])
    # every pair knows its trajectory, and no trajectory spans two splits
    per = 1 if mode == "final" else 4
    groups = ds.info.groups
    assert np.array_equal(groups, np.arange(n) // per)
    owner = {int(groups[i]): s for s, idx in ds.info.splits.items() for i in idx}
    assert len(owner) == 6 and all(owner[int(g)] == s for s, idx in ds.info.splits.items()
                                   for g in groups[idx])
    assert [list(owner.values()).count(s) for s in ("train", "val", "test")] == [3, 2, 1]


def test_darcy_style_input_field(tmp_path):
    path = tmp_path / "2D_DarcyFlow.hdf5"
    nu = np.random.default_rng(2).random((4, 6, 6)).astype(np.float32)
    with h5py.File(path, "w") as f:
        f["nu"] = nu
        f["tensor"] = nu[:, None] * 2
        f["x-coordinate"] = np.linspace(0, 1, 6)
    with PDEBenchFile(path, input_field="nu") as pb:
        (x, y), = list(pb.pairs("final"))
    assert np.array_equal(x, nu[:, None]) and np.array_equal(y, 2 * nu[:, None])


def test_inspect_and_errors(single, seeds, tmp_path):
    d = describe(single[0])
    assert d["format"] == "pdebench (single layout)" and d["n_trajectories"] == 6
    assert describe(seeds[0])["state_shape"] == [2, 6, 5]
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["u"] = np.zeros(3)
    with pytest.raises(DatasetError, match="other.h5: neither a pacsim-h5 nor a PDEBench"):
        describe(other)
    with pytest.raises(DatasetError, match="not a PDEBench file"):
        PDEBenchFile(other)
    with h5py.File(single[0], "a") as f:
        del f["t-coordinate"]
        f["t-coordinate"] = np.zeros(9)
    with pytest.raises(DatasetError, match="t-coordinate has 9 entries for 5"):
        PDEBenchFile(single[0])
    with PDEBenchFile(seeds[0]) as pb, pytest.raises(ValueError, match="stride"):
        list(pb.pairs("step", stride=4))


def test_single_file_with_named_fields_and_no_tensor(tmp_path):
    """A single-file layout of several variables (CFD: density, pressure, Vx) reads all
    of them as channels, sorted by name, when no 'tensor' dataset is there."""
    rng = np.random.default_rng(2)
    path = tmp_path / "1D_CFD.hdf5"
    with h5py.File(path, "w", track_order=True) as f:  # listed in creation order
        for name in ("pressure", "density", "Vx"):
            f[name] = rng.normal(size=(4, 3, 8)).astype(np.float32)
        f["x-coordinate"] = np.linspace(0, 1, 8)
        f["t-coordinate"] = np.linspace(0, 1, 4)
    info = describe(path)
    assert info["fields"] == ["Vx", "density", "pressure"] and info["state_shape"] == [3, 8]
    with PDEBenchFile(path) as pb:
        (x, y), = list(pb.pairs("final"))
        assert x.shape == (4, 3, 8)
