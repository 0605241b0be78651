"""Files in The Well's layout, built here with h5py, read as pairs and converted to pacsim-h5."""

from __future__ import annotations

import re

import h5py
import numpy as np
import pytest
from test_pdebench import single  # noqa: F401 - the PDEBench file fixture

from pacsim.data import DatasetError, H5Dataset, WellFile, convert, describe, render

GRIDS = {"1d": (8,), "2d": (6, 5)}


def write_well(path, grid=(8,), n_traj=3, n_steps=5, seed=0):
    """A file of The Well: t0 ``u`` (varying), t0 ``density`` (constant), t1 ``velocity``."""
    rng = np.random.default_rng(seed)
    d = len(grid)
    names = ["x", "y", "z"][:d]
    u = rng.normal(size=(n_traj, n_steps, *grid)).astype(np.float32)
    vel = rng.normal(size=(n_traj, n_steps, *grid, d)).astype(np.float32)
    density = rng.random(grid).astype(np.float32) + 1
    with h5py.File(path, "w") as f:
        f.attrs.update({"dataset_name": "toy_flow", "grid_type": "cartesian",
                        "n_spatial_dims": d, "n_trajectories": n_traj,
                        "simulation_parameters": ["Re", "Ma"], "Re": 100.0, "Ma": 0.3})
        dims = f.create_group("dimensions")
        dims.attrs["spatial_dims"] = names
        dims["time"] = np.linspace(0, 1, n_steps, dtype=np.float32)
        dims["time"].attrs["sample_varying"] = False
        for name, n in zip(names, grid):
            dims[name] = np.linspace(0, 1, n, dtype=np.float32)
            dims[name].attrs.update({"sample_varying": False, "time_varying": False})
        bc = f.create_group("boundary_conditions/x_periodic")
        bc.attrs.update({"bc_type": "periodic", "associated_dims": ["x"]})
        bc["mask"] = np.zeros(grid[0], dtype=bool)
        t0 = f.create_group("t0_fields")
        t0.attrs["field_names"] = ["u", "density"]
        t0["u"] = u
        t0["u"].attrs.update({"time_varying": True, "sample_varying": True,
                              "dim_varying": [True] * d})
        t0["density"] = density
        t0["density"].attrs.update({"time_varying": False, "sample_varying": False,
                                    "dim_varying": [True] * d})
        t1 = f.create_group("t1_fields")
        t1.attrs["field_names"] = ["velocity"]
        t1["velocity"] = vel
        t1["velocity"].attrs.update({"time_varying": True, "sample_varying": True,
                                     "dim_varying": [True] * d})
        f.create_group("t2_fields").attrs["field_names"] = []
    state = np.concatenate([u[:, :, None], np.moveaxis(vel, -1, 2)], axis=2)  # (N, T, C, *grid)
    return state, density


def expected(state, density, pairs, t_index=None, stride=1):
    """Inputs and targets by numpy slicing, trajectory-major."""
    n, t, c = state.shape[:3]
    if pairs == "next":
        x = state[:, :-stride].reshape(-1, c, *state.shape[3:])
        y = state[:, stride:].reshape(-1, c, *state.shape[3:])
    else:
        x, y = state[:, 0], state[:, t - 1 if t_index is None else t_index]
    const = np.broadcast_to(density, (len(x), 1, *density.shape))
    return np.concatenate([x, const], axis=1), y


def collect(blocks):
    xs, ys = zip(*blocks)
    return np.concatenate(xs), np.concatenate(ys)


@pytest.fixture(params=sorted(GRIDS))
def well(request, tmp_path):
    path = tmp_path / f"toy_flow_{request.param}_Re_100.hdf5"
    return (path, *write_well(path, GRIDS[request.param]))


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("block_bytes", [1, 2**26])
def test_next_pairs(well, stride, block_bytes):
    path, state, density = well
    with WellFile(path) as wf:
        assert wf.n == 3 and wf.n_steps == 5 and wf.params == {"Re": 100.0, "Ma": 0.3}
        x, y = collect(wf.pairs("next", stride=stride, block_bytes=block_bytes))
    ex, ey = expected(state, density, "next", stride=stride)
    assert x.shape == (3 * (5 - stride), *ex.shape[1:]) and x.dtype == np.float32
    assert np.array_equal(x, ex) and np.array_equal(y, ey)


@pytest.mark.parametrize("t_index", [None, 2, -2, 0])
def test_ic_to_t_pairs(well, t_index):
    path, state, density = well
    with WellFile(path) as wf:
        x, y = collect(wf.pairs("ic-to-T", t_index=t_index))
    ti = None if t_index is None else t_index % 5
    ex, ey = expected(state, density, "ic-to-T", t_index=ti)
    assert np.array_equal(x, ex) and np.array_equal(y, ey)


def test_channel_order_and_field_selection(well):
    path, state, _ = well
    d = state.ndim - 3
    comps = ["velocity_x", "velocity_y"][:d]
    with WellFile(path) as wf:
        assert wf.target_channels == ["u", *comps]
        assert wf.input_channels == ["u", *comps, "density"]
        assert wf.input_shape == (2 + d, *state.shape[3:])
    with WellFile(path, fields=["velocity"]) as wf:
        assert wf.input_channels == wf.target_channels == comps
        (x, y), *_ = wf.pairs("ic-to-T")
        assert np.array_equal(y[0], state[0, -1, 1:])
    with WellFile(path, fields="u") as wf:
        assert wf.input_channels == ["u"]


def test_broadcast_of_fields_constant_along_an_axis(tmp_path):
    """Not sample-varying, not time-varying, constant along y (size-1 axis or left out)."""
    path = tmp_path / "bcast.hdf5"
    write_well(path, (6, 5))
    rng = np.random.default_rng(3)
    forcing = rng.normal(size=(5, 6, 1)).astype(np.float32)   # (T, X, 1): same in every sample
    coeff = rng.normal(size=(3, 6)).astype(np.float32)        # (N, X): y left out
    with h5py.File(path, "a") as f:
        t0 = f["t0_fields"]
        t0["forcing"], t0["coeff"] = forcing, coeff
        t0["forcing"].attrs.update({"time_varying": True, "sample_varying": False,
                                    "dim_varying": [True, False]})
        t0["coeff"].attrs.update({"time_varying": False, "sample_varying": True,
                                  "dim_varying": [True, False]})
        t0.attrs["field_names"] = ["u", "density", "forcing", "coeff"]
    with WellFile(path, fields=["coeff", "forcing"]) as wf:
        assert wf.input_channels == ["forcing", "coeff"] and wf.target_channels == ["forcing"]
        x, y = collect(wf.pairs("next"))
    assert x.shape == (3 * 4, 2, 6, 5)
    assert np.array_equal(y[5, 0], np.broadcast_to(forcing[2], (6, 5)))  # trajectory 1, step 2
    assert np.array_equal(x[5, 1], np.broadcast_to(coeff[1][:, None], (6, 5)))


@pytest.mark.parametrize("pairs", ["next", "ic-to-T"])
def test_convert_reads_back(well, tmp_path, pairs):
    path, state, density = well
    out = convert(path, tmp_path / "out" / "flow.h5", pairs=pairs, seed=1)
    ex, ey = expected(state, density, pairs)
    ds = H5Dataset(out, "train", normalize=False)
    assert ds.info.n == len(ex) and ds.info.attrs["simulator"] == "the_well"
    x, y = ds.arrays()
    assert np.array_equal(x, ex[ds.indices]) and np.array_equal(y, ey[ds.indices])
    attrs = ds.info.attrs
    assert attrs["source_file"] == path.name and attrs["source_format"] == "the_well"
    assert attrs["dataset_name"] == "toy_flow" and attrs["pairs"] == pairs
    assert list(attrs["input_channels"])[-1] == "density"
    assert ds.info.params == {"Re": 100.0, "Ma": 0.3}
    assert ("t_index" in attrs) == (pairs == "ic-to-T")
    assert np.allclose(ds.info.coords["t"], np.linspace(0, 1, 5))
    assert sum(int(v.size) for v in ds.info.splits.values()) == len(ex)
    traj = np.repeat(np.arange(len(state)), len(ex) // len(state))  # trajectory-major pairs
    assert np.array_equal(ds.info.groups, traj)
    split_of = {s: set(traj[idx].tolist()) for s, idx in ds.info.splits.items()}
    assert not (split_of["train"] & split_of["val"] or split_of["train"] & split_of["test"]
                or split_of["val"] & split_of["test"])  # no trajectory on two sides
    with pytest.raises(FileExistsError):
        convert(path, out, pairs=pairs)
    assert convert(path, out, pairs=pairs, fields=["u"], overwrite=True) == out
    assert describe(out)["source"]["input_channels"] == ["u"]


def test_inspect_describes_the_well(well):
    path, state, _ = well
    d = describe(path)
    assert d["format"] == "the_well" and d["dataset_name"] == "toy_flow"
    assert d["n_trajectories"] == 3 and d["n_steps"] == 5 and d["grid"] == list(state.shape[3:])
    assert d["params"] == {"Re": 100.0, "Ma": 0.3}
    assert d["fields"]["velocity"]["shape"] == [3, 5, *state.shape[3:], state.ndim - 3]
    assert d["fields"]["density"]["time_varying"] is False
    assert d["boundary_conditions"] == {"x_periodic": "periodic"}
    text = render(d)
    assert "toy_flow" in text and "velocity" in text and "3 x 5 time steps" in text


def _foreign(p):
    with h5py.File(p, "w") as f:
        f["u"] = np.zeros(3)


def _edit(change):
    def make(p):
        write_well(p, (6, 5))
        with h5py.File(p, "a") as f:
            change(f)
    return make


def _nan(f):
    f["t1_fields/velocity"][1, 3, 2, 2, 0] = np.nan


def _bad_shape(f):
    del f["t0_fields/u"]
    f["t0_fields/u"] = np.zeros((3, 5, 6, 4), dtype=np.float32)


BAD = {
    "missing file": (lambda p: None, {}, "no such file"),
    "not HDF5": (lambda p: p.write_text("hello"), {}, "not an HDF5 file"),
    "foreign HDF5": (_foreign, {}, "neither a file of The Well nor a PDEBench"),
    "missing group": (_edit(lambda f: f.__delitem__("dimensions")), {},
                      "missing group 'dimensions'"),
    "missing field": (_edit(lambda f: f.__delitem__("t1_fields/velocity")), {},
                      "field 'velocity' listed"),
    "inconsistent shape": (_edit(_bad_shape), {}, r"field 'u' has shape \(3, 5, 6, 4\)"),
    "wrong n_trajectories": (_edit(lambda f: f.attrs.__setitem__("n_trajectories", 4)), {},
                             "field 'u' has shape"),
    "t_index out of range": (_edit(lambda f: None), {"pairs": "ic-to-T", "t_index": 5},
                             "t_index 5 outside the 5 stored time steps"),
    "stride too large": (_edit(lambda f: None), {"stride": 5}, "stride must lie in"),
    "unknown field": (_edit(lambda f: None), {"fields": ["u", "pressure"]},
                      r"unknown field\(s\) \['pressure'\]"),
    "only constant fields": (_edit(lambda f: None), {"fields": "density"},
                             "no time-varying field"),
    "NaN": (_edit(_nan), {}, r"field 'velocity' contains NaN or inf \(trajectory 1\)"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_inputs_raise_dataset_error_and_write_nothing(tmp_path, case):
    make, kwargs, message = BAD[case]
    src = tmp_path / "src.hdf5"
    make(src)
    out = tmp_path / "out" / "converted.h5"
    with pytest.raises(DatasetError, match=rf"^{re.escape(str(src))}: {message}") as info:
        convert(src, out, **kwargs)
    assert "\n" not in str(info.value)
    assert not out.exists()
    assert not out.parent.exists() or not any(out.parent.iterdir())


def test_mode_errors_are_plain_value_errors(well, tmp_path):
    path = well[0]
    with pytest.raises(ValueError, match="pairs must be one of"):
        convert(path, tmp_path / "o.h5", pairs="final")
    with pytest.raises(ValueError, match="t_index applies to pairs='ic-to-T'"):
        convert(path, tmp_path / "o.h5", t_index=2)
    assert not (tmp_path / "o.h5").exists()


def test_convert_pdebench(tmp_path, single):  # noqa: F811 - the imported fixture
    path, tensor = single
    out = convert(path, tmp_path / "burgers.h5", pairs="ic-to-T", t_index=3)
    ds = H5Dataset(out, "train", normalize=False)
    x, y = ds.arrays()
    assert np.array_equal(x, tensor[ds.indices, 0, None])
    assert np.array_equal(y, tensor[ds.indices, 3, None])
    assert ds.info.attrs["source_format"] == "pdebench" and ds.info.attrs["t_index"] == 3
    assert ds.info.params["Nu"] == 0.01
    out = convert(path, tmp_path / "burgers_next.h5", pairs="next", stride=2)
    assert describe(out)["n_samples"] == 6 * 3 and describe(out)["source"]["stride"] == 2
    for kwargs, message in (({"pairs": "ic-to-T", "t_index": -6}, "t_index -6 outside"),
                            ({"fields": ["pressure"]}, "missing dataset 'pressure'")):
        with pytest.raises(DatasetError, match=rf"^{re.escape(str(path))}: {message}"):
            convert(path, tmp_path / "bad.h5", **kwargs)
    assert not (tmp_path / "bad.h5").exists()
    with h5py.File(path, "a") as f:
        f["tensor"][2, 1, 3] = np.inf
    message = rf"^{re.escape(str(path))}: trajectory 2 contains NaN or inf"
    with pytest.raises(DatasetError, match=message):
        convert(path, tmp_path / "bad.h5")
    assert not (tmp_path / "bad.h5").exists()
