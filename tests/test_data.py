"""The pacsim-h5 data layer: format round trip, atomic writes, readers, bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch

from pacsim.data import (
    DatasetError,
    DatasetWriter,
    H5Dataset,
    Normalizer,
    chunk_rows,
    describe,
    loader,
    open_splits,
    write_dataset,
)

META = dict(simulator="unit", setting="source", params={"nu": 0.01, "k": [1, 2]}, seed=3)


def _arrays(n=50, in_shape=(3,), out_shape=(2,), seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(2.0, 3.0, size=(n, *in_shape)).astype(np.float32)
    y = rng.normal(-1.0, 0.5, size=(n, *out_shape)).astype(np.float32)
    return x, y


@pytest.fixture
def tab(tmp_path):
    x, y = _arrays()
    p = rng_params = np.arange(100, dtype=np.float64).reshape(50, 2)
    path = write_dataset(tmp_path / "tab.h5", x, y, coords={"t": np.linspace(0, 1, 5)},
                         sample_params=rng_params, sample_param_names=["a", "b"], **META)
    return path, x, y, p


def test_round_trip_of_every_field(tab):
    path, x, y, p = tab
    with h5py.File(path) as f:
        assert f.attrs["format"] == "pacsim-h5" and f.attrs["format_version"] == 1
        assert f.attrs["simulator"] == "unit" and f.attrs["setting"] == "source"
        assert json.loads(f.attrs["params"]) == META["params"] and f.attrs["seed"] == 3
        assert f.attrs["created_with"]
        assert np.array_equal(f["params"][()], p) and list(f["params"].attrs["names"]) == ["a", "b"]
        assert np.array_equal(f["coords/t"][()], np.linspace(0, 1, 5))
        splits = {s: f[f"splits/{s}"][()] for s in ("train", "val", "test")}
    assert sorted(np.concatenate(list(splits.values())).tolist()) == list(range(50))
    assert [v.size for v in splits.values()] == [40, 5, 5]
    assert all(np.array_equal(v, np.sort(v)) for v in splits.values())
    every = open_splits(path, normalize=False)
    for split, idx in splits.items():
        xs, ys = every[split].arrays()
        assert np.array_equal(xs, x[idx]) and np.array_equal(ys, y[idx])
    norm = H5Dataset(path).normalizer
    assert np.allclose(norm.input_mean, x[splits["train"]].mean(0), atol=1e-5)
    assert np.allclose(norm.input_std, x[splits["train"]].std(0), atol=1e-5)
    xn, yn = H5Dataset(path).arrays()
    assert np.allclose(xn.mean(0), 0, atol=1e-5) and np.allclose(yn.std(0), 1, atol=1e-5)
    assert np.allclose(norm.inverse_targets(yn), y[splits["train"]], atol=1e-5)


def test_splits_are_fixed_by_the_seed(tmp_path):
    x, y = _arrays()
    a = write_dataset(tmp_path / "a.h5", x, y, **META)
    b = write_dataset(tmp_path / "b.h5", x, y, **META)
    c = write_dataset(tmp_path / "c.h5", x, y, **{**META, "seed": 4})
    idx = [H5Dataset(p, "test", normalize=False).indices for p in (a, b, c)]
    assert np.array_equal(idx[0], idx[1]) and not np.array_equal(idx[0], idx[2])


def test_groups_stay_in_one_split(tmp_path):
    """Samples of one group (trajectory) never sit in two splits; the fractions count
    groups; the groups are stored, read back per split, and checked on reading."""
    x, y = _arrays(n=60)
    groups = np.repeat(np.arange(12), 5)
    with DatasetWriter(tmp_path / "g.h5", input_shape=(3,), target_shape=(2,),
                       split=(0.5, 0.25, 0.25), **META) as w:
        for lo in range(0, 60, 7):  # blocks that cut groups apart
            w.append(x[lo:lo + 7], y[lo:lo + 7], groups=groups[lo:lo + 7])
    ds = H5Dataset(tmp_path / "g.h5", "val", normalize=False)
    assert np.array_equal(ds.info.groups, groups)
    split_groups = {s: set(groups[i].tolist()) for s, i in ds.info.splits.items()}
    assert [len(split_groups[s]) for s in ("train", "val", "test")] == [6, 3, 3]
    assert set.union(*split_groups.values()) == set(range(12))
    assert sum(len(v) for v in split_groups.values()) == 12  # disjoint
    assert np.array_equal(ds.groups, groups[ds.indices])
    train = ds.info.splits["train"]
    assert np.allclose(ds.info.normalizer.input_mean, x[train].mean(0), atol=1e-5)
    assert describe(tmp_path / "g.h5")["groups"] == {"train": 6, "val": 3, "test": 3}
    # few trajectories: every split gets one while there are enough, else a warning
    from pacsim.data.writer import split_indices

    three = split_indices(30, (0.8, 0.1, 0.1), 0, np.repeat(np.arange(3), 10))
    assert [three[k].size for k in ("train", "val", "test")] == [10, 10, 10]
    with pytest.warns(UserWarning, match=r"only 1 group\(s\).*val, test get none"):
        one = split_indices(10, (0.8, 0.1, 0.1), 0, np.zeros(10, dtype=int))
    assert one["train"].size == 10

    with h5py.File(tmp_path / "g.h5", "a") as f:  # a group moved across a boundary
        g = f["groups"][()]
        g[ds.info.splits["test"][0]] = g[train[0]]
        f["groups"][...] = g
    with pytest.raises(DatasetError, match=r"g.h5: group \d+ has samples in both"):
        H5Dataset(tmp_path / "g.h5", normalize=False)
    with pytest.raises(DatasetError, match="groups with every block or with none"):
        with DatasetWriter(tmp_path / "h.h5", input_shape=(3,), target_shape=(2,),
                           **META) as w:
            w.append(x[:5], y[:5], groups=groups[:5])
            w.append(x[5:], y[5:])
    with pytest.raises(DatasetError, match="groups must be 3 integers"):
        write_dataset(tmp_path / "h.h5", x, y, **META)  # (no groups: fine)
        with DatasetWriter(tmp_path / "i.h5", input_shape=(3,), target_shape=(2,),
                           **META) as w:
            w.append(x[:3], y[:3], groups=np.zeros(3) + 0.5)
    assert not (tmp_path / "i.h5").exists() and H5Dataset(tmp_path / "h.h5").groups is None


def test_streaming_equals_one_shot(tmp_path):
    x, y = _arrays(n=101, in_shape=(1, 16), out_shape=(1, 16))
    one = write_dataset(tmp_path / "one.h5", x, y, **META)
    with DatasetWriter(tmp_path / "many.h5", input_shape=(1, 16), target_shape=(1, 16),
                       **META) as w:
        for lo in range(0, 101, 7):
            w.append(x[lo:lo + 7], y[lo:lo + 7])
    a, b = H5Dataset(one).normalizer, H5Dataset(tmp_path / "many.h5").normalizer
    for k in a.__dict__:
        assert np.allclose(getattr(a, k), getattr(b, k), rtol=1e-6), k
    assert a.input_mean.shape == (1, 1)  # per channel, broadcast over the grid


@pytest.mark.parametrize("shape,rows", [((10,), 819), ((1, 64, 64), 2), ((1, 128, 128), 1),
                                        ((2, 256), 16), ((), 8192)])
def test_chunking_suits_shuffled_reads(tmp_path, shape, rows):
    assert chunk_rows(shape) == rows
    x = np.zeros((3, *shape), np.float32)
    path = write_dataset(tmp_path / "c.h5", x, x, **META, split=(1, 0, 0))
    with h5py.File(path) as f:
        assert f["inputs"].chunks == (rows, *shape)


def test_overwrite_is_refused_unless_asked(tab):
    path, x, y, _ = tab
    before = path.read_bytes()
    with pytest.raises(FileExistsError, match="tab.h5: exists"):
        write_dataset(path, x[:5], y[:5], **META)
    assert path.read_bytes() == before
    write_dataset(path, x[:5], y[:5], **META, overwrite=True)
    assert H5Dataset(path, "train", normalize=False).info.n == 5


@pytest.mark.slow
def test_failed_or_killed_write_leaves_nothing(tmp_path):
    x, y = _arrays()
    with pytest.raises(RuntimeError), DatasetWriter(tmp_path / "d.h5", input_shape=(3,),
                                                    target_shape=(2,), **META) as w:
        w.append(x, y)
        raise RuntimeError("simulator crashed")
    assert list(tmp_path.iterdir()) == []
    code = f"""
import os, numpy as np
from pacsim.data import DatasetWriter
w = DatasetWriter({str(tmp_path / 'k.h5')!r}, input_shape=(3,), target_shape=(2,),
                  simulator='s', setting='x', params={{}}, seed=0)
w.append(np.zeros((10, 3)), np.zeros((10, 2)))
os.kill(os.getpid(), 9)
"""
    subprocess.run([sys.executable, "-c", code], timeout=60)
    assert not (tmp_path / "k.h5").exists()


def test_writer_validates_before_writing(tmp_path):
    x, y = _arrays()
    x[7, 1] = np.nan
    with pytest.raises(DatasetError, match=r"bad.h5: inputs contain NaN or inf \(sample 7\)"):
        write_dataset(tmp_path / "bad.h5", x, y, **META)
    with pytest.raises(DatasetError, match="block has 50 inputs but 49 targets"):
        write_dataset(tmp_path / "bad.h5", _arrays()[0], y[:-1], **META)
    with pytest.raises(DatasetError, match="split must be three fractions"):
        write_dataset(tmp_path / "bad.h5", *_arrays(), **META, split=(0.5, 0.6, 0.1))
    with pytest.raises(DatasetError, match="do not match"):
        with DatasetWriter(tmp_path / "bad.h5", input_shape=(3,), target_shape=(2,),
                           **META) as w:
            w.append(np.zeros((2, 4)), np.zeros((2, 2)))
    assert list(tmp_path.iterdir()) == []


def _corrupt(path, how):
    if how == "not_hdf5":
        path.write_text("x,y\n1,2\n")
    elif how == "truncated":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    else:
        with h5py.File(path, "a") as f:
            if how == "missing":
                del f["targets"]
            elif how == "nan":
                f["inputs"][4, 0] = np.nan
            elif how == "n_mismatch":
                del f["targets"]
                f["targets"] = np.zeros((49, 2), np.float32)
            elif how == "split_range":
                del f["splits/val"]
                f["splits/val"] = np.array([1, 50], dtype=np.int64)
            elif how == "version":
                f.attrs["format_version"] = 2
            elif how == "foreign":
                del f.attrs["format"]


@pytest.mark.parametrize("how,match", [
    ("not_hdf5", "not an HDF5 file"),
    ("truncated", "truncated HDF5 file"),
    ("missing", "missing dataset 'targets'"),
    ("n_mismatch", "inputs have 50 samples but targets have 49"),
    ("split_range", r"'splits/val' has indices outside \[0, 50\)"),
    ("version", "unsupported pacsim-h5 format_version 2"),
    ("foreign", "not a pacsim-h5 file"),
    ("nan", r"inputs contain NaN or inf \(sample 4\)"),
])
@pytest.mark.slow
def test_bad_files_give_one_line_error_and_cli_exit_2(tab, how, match):
    path = tab[0]
    _corrupt(path, how)
    with pytest.raises(DatasetError, match=match) as err:
        ds = H5Dataset(path, "train", in_memory=False)
        ds[list(range(len(ds)))]
    msg = str(err.value)
    assert msg.startswith(str(path)) and "\n" not in msg
    out = subprocess.run([sys.executable, "-m", "pacsim.cli", "inspect", "--check", str(path)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.count("\n") == 1 and str(path) in out.stderr
    assert "Traceback" not in out.stderr


def test_missing_file_errors(tmp_path):
    with pytest.raises(DatasetError, match="nope.h5: no such file"):
        H5Dataset(tmp_path / "nope.h5")


@pytest.mark.parametrize("in_memory", [True, False])
def test_batch_indexing_keeps_order_and_duplicates(tab, in_memory):
    path, x, y, _ = tab
    ds = H5Dataset(path, normalize=False, in_memory=in_memory)
    order = [5, 1, 1, 30, 0, -1]
    xb, yb = ds[order]
    want = ds.indices[np.array(order) % len(ds)]
    assert torch.equal(xb, torch.from_numpy(x[want])) and torch.equal(yb, torch.from_numpy(y[want]))
    x0, _ = ds[3]
    assert torch.equal(x0, torch.from_numpy(x[ds.indices[3]]))
    with pytest.raises(IndexError):
        ds[[len(ds)]]


@pytest.mark.slow
@pytest.mark.parametrize("context", ["spawn", "forkserver", "fork"])
def test_workers_give_the_same_batches(tab, context):
    ds = H5Dataset(tab[0], in_memory=False)
    ref = list(loader(ds, batch_size=8, seed=1))
    got = list(loader(ds, batch_size=8, seed=1, num_workers=2, multiprocessing_context=context))
    assert len(ref) == len(got) == 5
    for (xa, ya), (xb, yb) in zip(ref, got):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_trainer_reads_h5_datasets_and_checkpoints_keep_units(tab, tmp_path):
    from pacsim.io import load_predictor, save_checkpoint
    from pacsim.models import MLP
    from pacsim.train import fit, predict

    path, x, y, _ = tab
    ds = H5Dataset(path, in_memory=False)
    torch.manual_seed(0)
    model = MLP(3, 2, hidden=(8,))
    hist = fit(model, ds, epochs=3, batch_size=16, device="cpu", seed=0)
    assert hist.steps == 9
    save_checkpoint(tmp_path / "m.pt", model, normalizer=ds.normalizer)
    phys = load_predictor(tmp_path / "m.pt")
    xt = torch.from_numpy(x[:7])
    expected = ds.normalizer.inverse_targets(predict(model, ds.normalizer.inputs(xt)))
    assert torch.allclose(phys(xt), expected, atol=1e-6)
    d = Normalizer.from_dict(ds.normalizer.to_dict())
    assert np.array_equal(d.target_std, ds.normalizer.target_std)


@pytest.mark.slow
def test_inspect_reports_everything(tab):
    d = describe(tab[0], check=True)
    assert d["format"] == "pacsim-h5" and d["format_version"] == 1
    assert d["simulator"] == "unit" and d["params"] == META["params"]
    assert d["splits"] == {"train": 40, "val": 5, "test": 5}
    assert d["datasets"]["inputs"] == {"shape": [50, 3], "dtype": "float32",
                                       "chunks": [2730, 3], "compression": None}
    assert d["sample_param_names"] == ["a", "b"] and "stats" in d and d["file_size"] > 0
    out = subprocess.run([sys.executable, "-m", "pacsim.cli", "inspect", str(tab[0])],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "splits: train 40, val 5, test 5" in out.stdout
    out = subprocess.run([sys.executable, "-m", "pacsim.cli", "inspect", "--json", str(tab[0])],
                         capture_output=True, text=True, timeout=120)
    assert json.loads(out.stdout)["n_samples"] == 50


@pytest.mark.parametrize("compression", [None, "gzip"])
@pytest.mark.parametrize("shape", [(3,), (2, 40)])
def test_lazy_reads_match_h5py_for_every_layout(tmp_path, compression, shape):
    x, y = _arrays(n=37, in_shape=shape, out_shape=(1,))
    path = write_dataset(tmp_path / "l.h5", x, y, **META, compression=compression)
    ds = H5Dataset(path, normalize=False, in_memory=False)
    assert (ds._maps is None) == (compression is not None)
    order = np.random.default_rng(0).permutation(len(ds))[:11]
    xb, yb = ds[order]
    assert np.array_equal(xb.numpy(), x[ds.indices[order]])
    assert np.array_equal(yb.numpy(), y[ds.indices[order]])


def test_small_unit_features_are_normalised_and_constant_ones_are_not(tmp_path):
    """A feature around 1e-13 (SI units) with a 10 % spread is scaled to unit spread; a
    constant feature, at any scale, keeps std 1 so nothing divides by zero."""
    rng = np.random.default_rng(0)
    x = np.stack([1e-13 * (1 + 0.1 * rng.normal(size=200)), np.full(200, 3e-13),
                  np.full(200, 7.0), rng.normal(size=200)], axis=1)
    y = x[:, :1] * 1e13
    path = write_dataset(tmp_path / "si.h5", x, y, **META)
    ds = H5Dataset(path, "train")
    std = ds.normalizer.input_std
    assert 0.5e-14 < std[0] < 2e-14 and std[1] == 1.0 and std[2] == 1.0
    xn = ds.arrays()[0]
    assert 0.8 < xn[:, 0].std() < 1.2 and np.allclose(xn[:, 1:3], 0.0, atol=1e-6)


@pytest.mark.parametrize("in_memory", [True, False])
def test_scalar_samples_index_one_at_a_time(tmp_path, in_memory):
    """Data of shape (N,) (one number per sample) reads per sample, per batch and through
    a plain DataLoader."""
    x = np.arange(40, dtype=np.float32)
    path = write_dataset(tmp_path / "s.h5", x, 2 * x, **META)
    ds = H5Dataset(path, "train", normalize=False, in_memory=in_memory)
    xi, yi = ds[0]
    assert xi.shape == () and float(yi) == 2 * float(xi)
    assert ds[[0, 1]][0].shape == (2,)
    xb, yb = next(iter(torch.utils.data.DataLoader(ds, batch_size=4)))
    assert xb.shape == (4,) and torch.equal(yb, 2 * xb)
