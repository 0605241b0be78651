"""Bad inputs end in one clear line: checkpoints, files, command-line values."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import RECIPE, make_model, overflowing_checkpoint

from pacsim.data.stats import Normalizer
from pacsim.io import CheckpointError, load_checkpoint, save_checkpoint


def _normalizer(**change: np.ndarray) -> Normalizer:
    stats = {"input_mean": np.zeros(4), "input_std": np.ones(4),
             "target_mean": np.zeros(2), "target_std": np.ones(2)}
    return Normalizer(**{**stats, **change})


@pytest.mark.parametrize("change, match", [
    ({"input_std": np.array([1.0, 0.0, 1.0, 1.0])}, "input_std must be finite and positive"),
    ({"target_mean": np.array([np.nan, 0.0])}, "target_mean holds NaN"),
    ({"target_std": np.array([1.0, np.inf])}, "target_std must be finite and positive"),
    ({"input_mean": np.zeros(3), "input_std": np.ones(3)}, "input statistics have 3 features"),
    ({"input_std": np.ones(5)}, "input_mean has shape"),
])
def test_checkpoint_with_a_bad_normalizer_is_refused(tmp_path, change, match):
    with pytest.raises(ValueError, match=match):  # never written ...
        save_checkpoint(tmp_path / "m.pt", make_model("mlp"), normalizer=_normalizer(**change))
    path = _edited(save_checkpoint(tmp_path / "m.pt", make_model("mlp"),
                                   normalizer=_normalizer()),
                   normalizer=json.dumps(_normalizer(**change).to_dict()))
    with pytest.raises(CheckpointError, match=match):  # ... and refused when edited in
        load_checkpoint(path)


def _edited(path, **entries):
    """Rewrite a saved checkpoint with some of its payload's entries replaced."""
    payload = torch.load(path, weights_only=True)
    payload.update(entries)
    torch.save(payload, path)
    return path


def test_checkpoint_normalizer_must_fit_the_recorded_data(tmp_path):
    meta = {"data": {"input_shape": [4], "target_shape": [2, 8]}}
    path = _edited(save_checkpoint(tmp_path / "m.pt", make_model("mlp"),
                                   normalizer=_normalizer()), meta=json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"target statistics have shape \[2\].*\[2, 1\]"):
        load_checkpoint(path)
    good = save_checkpoint(tmp_path / "ok.pt", make_model("mlp"), normalizer=_normalizer())
    assert "normalizer" in load_checkpoint(good)[2]


def test_checkpoint_with_nan_weights_is_refused(tmp_path):
    path = save_checkpoint(tmp_path / "m.pt", make_model("mlp"))
    state = torch.load(path, weights_only=True)["state_dict"]
    state["net.0.weight"][0, 0] = float("nan")
    _edited(path, state_dict=state)
    with pytest.raises(CheckpointError, match="weights hold NaN or inf"):
        load_checkpoint(path)


# --- one line naming the right problem, exit 2 ---------------------------------------

def _small_file(path, n=10):
    from pacsim.data import write_dataset

    g = np.random.default_rng(0)
    return write_dataset(path, g.random((n, 3), dtype=np.float32),
                         g.random((n, 2), dtype=np.float32), simulator="t", setting="s",
                         params={}, seed=0)


def _one_line(code: int, err: str, *needles: str) -> None:
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err


def test_inspect_of_damaged_structures_is_one_line(tmp_path, cli):
    import shutil

    import h5py

    ok = _small_file(tmp_path / "ok.h5")
    sub, loop = tmp_path / "sub.h5", tmp_path / "loop.h5"
    shutil.copy(ok, sub)
    shutil.copy(ok, loop)
    with h5py.File(sub, "a") as f:
        f.create_group("coords/a").create_dataset("b", data=[1.0])
    with h5py.File(loop, "a") as f:
        f["coords/l"] = h5py.SoftLink("/coords/l")
    pdb = tmp_path / "pdb.h5"
    with h5py.File(pdb, "w") as f:
        f.create_group("0000/data")
    _one_line(*cli("inspect", sub)[::2], "'coords/a' is a group")
    _one_line(*cli("inspect", loop)[::2], "loop")
    _one_line(*cli("inspect", pdb)[::2], "'0000/data' is a group")


def test_coordinate_names_with_a_slash_are_refused(tmp_path):
    from pacsim.data import DatasetError, write_dataset

    with pytest.raises(DatasetError, match="without '/'"):
        write_dataset(tmp_path / "c.h5", np.zeros((4, 1), np.float32),
                      np.zeros((4, 1), np.float32), simulator="t", setting="s", params={},
                      seed=0, coords={"a/b": [1.0]})
    assert not list(tmp_path.iterdir())


def test_inspect_names_what_the_path_really_is(tmp_path, cli):
    import os

    folder, fifo, loop = tmp_path / "d.h5", tmp_path / "fifo", tmp_path / "l1"
    folder.mkdir()
    os.mkfifo(fifo)
    loop.symlink_to(tmp_path / "l2")
    (tmp_path / "l2").symlink_to(loop)
    for target, needle in ((folder, "is a folder"), (fifo, "is a FIFO"),
                           ("/dev/null", "is a device"), (loop, "symbolic link loop"),
                           ("", "empty file name"), (tmp_path / "nope.h5", "no such file")):
        _one_line(*cli("inspect", target)[::2], needle)


def test_simulate_bad_seed_and_outputs_are_one_line(tmp_path, cli):
    afile = tmp_path / "afile"
    afile.write_text("x")
    sim = ("simulate", "friedman", "--n", "4")
    _one_line(*cli(*sim, "--seed", "9" * 23, "--out", tmp_path / "s.h5")[::2], "seed")
    _one_line(*cli(*sim, "--out", "")[::2], "output path is empty")
    _one_line(*cli(*sim, "--out", afile / "x.h5")[::2], "afile: is not a folder")
    _one_line(*cli(*sim, "--out", tmp_path, "--overwrite")[::2], "not a regular file")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def test_bogus_device_is_a_value_error():
    from pacsim.device import resolve_device

    with pytest.raises(ValueError, match="unknown device 'bogus'"):
        resolve_device("bogus")


def test_bench_and_report_on_wrong_paths_are_one_line(tmp_path, cli):
    afile = tmp_path / "afile"
    afile.write_text("x")
    suite = tmp_path / "s.toml"
    suite.write_text("")
    _one_line(*cli("bench", suite, "--out", afile)[::2], "afile")
    for name, content in (("arr", "[1, 2]\n"), ("notarget", '{"status": "ok"}\n')):
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.jsonl").write_text(content)
        code, _, err = cli("report", tmp_path / name)
        assert code == 2 and "line 1 skipped" in err and "Traceback" not in err, err
    (tmp_path / "rdir" / "results.jsonl").mkdir(parents=True)
    _one_line(*cli("report", tmp_path / "rdir")[::2], "is a folder")
    _one_line(*cli("report", afile)[::2], "not a results folder")


def test_checkpoint_errors_name_the_problem(tmp_path):
    from pacsim.models import MLP

    class Evil:
        def __reduce__(self):
            return (print, ("ran",))

    torch.save({"format": "pacsim-checkpoint", "x": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match=r"contains pickled code or objects; refused\)$"):
        load_checkpoint(tmp_path / "evil.pt")
    path = save_checkpoint(tmp_path / "m.pt", MLP(4, 2, hidden=(16, 16)))
    payload = torch.load(path, weights_only=True)
    state = payload["state_dict"]
    state["extra.weight"] = state.pop("net.0.weight")
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match=r"missing .*weight.*unexpected extra\.weight"):
        load_checkpoint(path)
    (tmp_path / "dir.pt").mkdir()
    with pytest.raises(CheckpointError, match="is a folder"):
        load_checkpoint(tmp_path / "dir.pt")


def test_report_warns_of_corrupt_lines_and_needs_a_successful_cell(tmp_path, cli):
    import json

    failed = {"pair": "p", "method": "pac", "n_target": 10, "seed": 0, "status": "error",
              "error": "ValueError: boom"}
    lines = [json.dumps(failed), "{torn", json.dumps(dict(failed, seed=1))]
    (tmp_path / "results.jsonl").write_text("\n".join(lines) + "\n")
    code, _, err = cli("report", tmp_path)
    assert code == 2 and "line 2 skipped: not valid JSON" in err
    assert "no successful cells (2 failed; first: ValueError: boom)" in err
    assert not (tmp_path / "figures").exists() and not (tmp_path / "report.md").exists()


# --- inspect output is safe for terminals and strict JSON ----------------------------

def test_inspect_escapes_control_characters_and_prints_strict_json(tmp_path, cli):
    import json

    import h5py

    path = _small_file(tmp_path / "esc.h5")
    with h5py.File(path, "a") as f:
        f.attrs["simulator"] = "evil\x1b[2J"
        f.attrs["dataset_name"] = "a\x07b"
        f["coords/x"] = np.array([np.nan, 1.0])
    code, out, _ = cli("inspect", path)
    assert code == 0 and "\x1b" not in out and "\x07" not in out and "evil\\x1b[2J" in out
    code, out, _ = cli("inspect", "--json", path)
    assert code == 0 and "NaN" not in out
    d = json.loads(out, parse_constant=lambda c: pytest.fail(f"bare {c}"))
    assert d["coords"]["x"][0] is None and d["simulator"] == "evil\x1b[2J"


# --- the format's rules are checked, and named ---------------------------------------

def _edit(path, name, data):
    import h5py

    with h5py.File(path, "a") as f:
        del f[name]
        f.create_dataset(name, data=data)


@pytest.mark.parametrize("name, data, rule", [
    ("stats/inputs_mean", np.array([np.nan, 0, 0], np.float32), "holds NaN"),
    ("stats/targets_std", np.ones(3, np.float32), "one statistic per feature"),
    ("stats/inputs_std", np.array([1, 0, 1], np.float32), "finite and positive"),
    ("splits/val", None, "the splits are disjoint"),
    ("splits/test", None, "is not sorted"),
    ("splits/test", None, "repeats an index"),
    ("inputs", np.zeros((0, 3), np.float32), "N >= 1"),
])
def test_inspect_check_names_the_broken_rule(tmp_path, cli, name, data, rule):
    import h5py

    path = _small_file(tmp_path / "f.h5", n=20)
    with h5py.File(path, "r") as f:
        train, test = f["splits/train"][()], f["splits/test"][()]
    if name == "splits/val":
        data = train[:1]
    elif name == "splits/test":
        data = test[::-1] if "sorted" in rule else test[[0, 0]]
    if name == "inputs":
        for other in ("targets", "splits/train", "splits/val", "splits/test"):
            _edit(path, other, np.zeros((0,) + ((2,) if other == "targets" else ()),
                                        np.float32 if other == "targets" else np.int64))
    _edit(path, name, data)
    code, _, err = cli("inspect", "--check", path)
    _one_line(code, err, rule)


# --- recipes are checked whole before anything is simulated --------------------------

@pytest.mark.parametrize("edit, needle", [
    (lambda t: t.replace("seed = 0", "seeed = 5"), "unknown key(s) ['seeed']"),
    (lambda t: t + "sett = {noise = 0}\n", "[target] unknown key(s) ['sett']"),
    (lambda t: t + "set = {nosuch = 1}\n", "nosuch"),
    (lambda t: t.replace("n = 20", "n = 50.7"), "[source] n must be a whole number"),
    (lambda t: t + "split = [0.4, 0.1, 0.6]\n", "[target] split needs three fractions in "
                                                "[0, 1] summing to 1, got [0.4, 0.1, 0.6]"),
])
def test_datasets_checks_every_recipe_before_simulating(tmp_path, cli, edit, needle):
    good, bad = tmp_path / "a.toml", tmp_path / "b.toml"
    good.write_text(RECIPE.format(name="a", n=10))
    bad.write_text(edit(RECIPE.format(name="b", n=10)))
    code, _, err = cli("datasets", good, bad, "--out", tmp_path / "built")
    _one_line(code, err, "b.toml", needle)
    assert not (tmp_path / "built").exists()


# --- loose values are refused, naming the value --------------------------------------

def test_simulate_refuses_true_for_a_number(tmp_path, cli):
    code, _, err = cli("simulate", "friedman", "--n", "4", "--set", "noise=true",
                       "--out", tmp_path / "f.h5")
    _one_line(code, err, "'noise'", "True")
    assert not (tmp_path / "f.h5").exists()


@pytest.mark.parametrize("kw, needle", [
    ({"epochs": 2.5}, "epochs must be a whole number"),
    ({"epochs": 1, "clip_grad": -1.0}, "clip_grad must be None or a finite positive"),
    ({"steps": True}, "steps must be a whole number"),
])
def test_fit_names_loose_arguments(kw, needle):
    from pacsim.train import fit

    x, y = torch.rand(8, 4), torch.rand(8, 2)
    with pytest.raises(ValueError, match=needle):
        fit(make_model("mlp"), (x, y), device="cpu", **kw)


def test_fit_on_an_empty_loader_is_a_clear_error():
    from torch.utils.data import DataLoader, TensorDataset

    from pacsim.train import fit

    empty = DataLoader(TensorDataset(torch.zeros(0, 4), torch.zeros(0, 2)), batch_size=4)
    with pytest.raises(ValueError, match="no batches"):
        fit(make_model("mlp"), empty, epochs=1, device="cpu")


def test_outputs_respect_the_umask(tmp_path):
    import os
    import stat

    old = os.umask(0o027)
    try:
        path = _small_file(tmp_path / "a.h5")
        assert stat.S_IMODE(path.stat().st_mode) == 0o640
        os.umask(0o002)
        save_checkpoint(tmp_path / "m.pt", make_model("mlp"))
        save_checkpoint(tmp_path / "m.pt", make_model("mlp"), overwrite=True)
        assert stat.S_IMODE((tmp_path / "m.pt").stat().st_mode) == 0o664
    finally:
        os.umask(old)


def test_prune_takes_numpy_and_tensor_ratios():
    import numpy as np
    import torch
    from conftest import make_model

    from pacsim import pac

    for ratio in (np.float32(0.5), np.float64(0.5), torch.tensor(0.5), torch.tensor([0.5])):
        masks = pac.prune(make_model("mlp"), ratio=ratio)
        assert sum(int((~m).sum()) for m in masks.essential.values()) > 0
    for bad in (np.bool_(True), torch.tensor(True), torch.tensor([0.2, 0.3]), "0.5",
                np.float32(1.5)):
        with pytest.raises(ValueError, match="ratio"):
            pac.prune(make_model("mlp"), ratio=bad)


def test_terminal_workflow_refuses_bad_values_and_its_own_inputs(tmp_path, cli):
    """An output that is an input, negative or zero sizes and budgets, a setting named
    like the source, a negative --set number: one line each, and no input is harmed."""
    data = _small_file(tmp_path / "d.h5", n=40)
    before = data.read_bytes()
    ckpt = tmp_path / "m.pt"
    assert cli("train", data, "--out", ckpt, "--epochs", "1", "--set", "hidden=4")[0] == 2
    _one_line(*cli("train", data, "--out", ckpt, "--epochs", "1", "--set",
                   "hidden=4,-1")[::2], "hidden must be a list of layer widths >= 1")
    _one_line(*cli("train", data, "--out", ckpt, "--epochs", "0")[::2], "--epochs must be >= 1")
    _one_line(*cli("train", data, "--out", data, "--overwrite", "--epochs", "1")[::2],
              "is also an input of this command")
    assert cli("train", data, "--out", ckpt, "--epochs", "1", "--set", "hidden=4,4")[0] == 0
    _one_line(*cli("predict", ckpt, data, "--out", data, "--overwrite")[::2],
              "is also an input")
    tr = ("transfer", ckpt, data, "--n", "8", "--select", "fixed", "--steps", "2")
    _one_line(*cli(*tr, "--setting", "source", "--out", tmp_path / "t.pt")[::2],
              "other than 'source'")
    _one_line(*cli(*tr, "--allocate-epochs", "0", "--out", tmp_path / "t.pt")[::2],
              "--allocate-epochs must be >= 1")
    _one_line(*cli(*tr, "--method", "l2sp", "--set", "alpha=-1", "--out",
                   tmp_path / "t.pt")[::2], "alpha must be a finite number >= 0, got -1.0")
    _one_line(*cli(*tr, "--out", ckpt, "--overwrite")[::2], "is also an input")
    # the source data the checkpoint recorded (PAC reads it back) is an input too
    other = _small_file(tmp_path / "other.h5", n=40)
    _one_line(*cli("transfer", ckpt, other, "--n", "8", "--select", "fixed", "--steps", "2",
                   "--out", data, "--overwrite")[::2], "d.h5: is also an input")
    other.unlink()
    _one_line(*cli("evaluate", data, data)[::2], "an HDF5 data file, not a pacsim checkpoint")
    _one_line(*cli("train", tmp_path, "--out", tmp_path / "x.pt")[::2],
              "is a folder, not a file")
    assert data.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.h5", "m.pt"]


def test_a_checkpoint_with_mistyped_metadata_is_one_line(tmp_path, cli):
    """Metadata is the checkpoint's free-form JSON: a hand-edited one is refused with one
    line, not a TypeError."""
    from pacsim.io import load_checkpoint, save_checkpoint

    data = _small_file(tmp_path / "d.h5", n=40)
    from pacsim.data.stats import Normalizer

    good = tmp_path / "m.pt"
    assert cli("train", data, "--out", good, "--epochs", "1", "--set", "hidden=4,4")[0] == 0
    model, _, meta = load_checkpoint(good)

    norm = Normalizer.from_dict(meta.pop("normalizer"))
    tr = ("transfer", "--n", "8", "--select", "fixed", "--steps", "2", "--out",
          tmp_path / "t.pt")
    for edit, needle in ((lambda m: m["data"].update(file=5), "records no source data file"),
                         (lambda m: m["train"].update(epochs="abc"), "damaged metadata")):
        bad = {**meta, "data": dict(meta["data"]), "train": dict(meta["train"])}
        edit(bad)
        path = save_checkpoint(tmp_path / "bad.pt", model, meta=bad, normalizer=norm,
                               overwrite=True)
        _one_line(*cli(tr[0], path, data, *tr[1:])[::2], needle)


def test_overflow_and_non_finite_predictions_name_the_real_cause(tmp_path, cli):
    """Finite data that overflows float32 once normalised says so; a model whose
    predictions are not finite is named, not the output file; a one-step PDEBench file
    cannot make next-state pairs."""
    import h5py

    from pacsim.data import DatasetError, H5Dataset, write_dataset
    from pacsim.data.pdebench import PDEBenchFile
    from pacsim.data.writer import split_indices

    x = np.random.default_rng(0).random((40, 3), dtype=np.float32)
    x[split_indices(40, (0.8, 0.1, 0.1), 0)["test"][0], 0] = 3e38  # train stats are ~1
    path = write_dataset(tmp_path / "huge.h5", x, x[:, :2], simulator="t", setting="s",
                         params={}, seed=0)
    with pytest.raises(DatasetError, match="inputs overflow float32 once normalised"):
        H5Dataset(path, "test").arrays()

    data = _small_file(tmp_path / "d.h5", n=40)
    ckpt = tmp_path / "m.pt"
    assert cli("train", data, "--out", ckpt, "--epochs", "1", "--set", "hidden=4,4")[0] == 0
    huge = overflowing_checkpoint(ckpt, tmp_path / "huge.pt")
    _one_line(*cli("predict", huge, data, "--out", tmp_path / "p.h5")[::2],
              "huge.pt: its prediction for sample", "nothing was written")
    nan_in = _small_file(tmp_path / "nan.h5", n=40)
    import h5py as _h5

    with _h5.File(nan_in, "a") as f:
        f["inputs"][29, 1] = np.nan
    _one_line(*cli("predict", ckpt, nan_in, "--out", tmp_path / "p.h5", "--split", "all")[::2],
              "nan.h5: inputs contain NaN or inf (sample 29)")
    assert not (tmp_path / "p.h5").exists()
    test = split_indices(40, (0.8, 0.1, 0.1), 0)["test"]
    with _h5.File(path, "a") as f:  # both faults in one batch: each sample's own cause
        f["inputs"][test[1], 1] = np.nan
    with pytest.raises(DatasetError, match=rf"overflow float32 once normalised.*\(sample "
                                           rf"{test[0]}\)"):
        H5Dataset(path, "test").arrays()

    one = tmp_path / "one.hdf5"
    with h5py.File(one, "w") as f:
        f["tensor"] = np.zeros((3, 1, 8), np.float32)
    with PDEBenchFile(one) as pb, pytest.raises(DatasetError, match="at least 2 stored"):
        list(pb.pairs("step"))
