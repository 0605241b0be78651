"""Fault injection: damaged checkpoints, escaping names, full disks, empty splits and
hostile files end in one line naming the cause (exit 2), never half-written files."""

from __future__ import annotations

import contextlib
import errno
import json
import resource
import signal
import struct
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from conftest import RECIPE, make_model, overflowing_checkpoint

from pacsim.data import write_dataset
from pacsim.io import CheckpointError, load_checkpoint, save_checkpoint


def _data(path: Path, n: int = 40, **kw) -> Path:
    g = np.random.default_rng(0)
    return write_dataset(path, g.random((n, 3), dtype=np.float32),
                         g.random((n, 2), dtype=np.float32), simulator="t", setting="s",
                         params={}, seed=0, **kw)


def _one_line(code: int, err: str, *needles: str) -> None:
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err


def _no_temps(folder: Path) -> None:
    assert not [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]


@pytest.fixture
def trained(tmp_path, cli) -> tuple[Path, Path]:
    """A small data file and a checkpoint trained on it (one epoch)."""
    data = _data(tmp_path / "d.h5")
    ckpt = tmp_path / "m.pt"
    assert cli("train", data, "--out", ckpt, "--epochs", "1", "--set", "hidden=4,4")[0] == 0
    return data, ckpt


# --- 1. a flipped bit in a checkpoint -------------------------------------------------

def _flip_a_weight_bit(src: Path, dst: Path) -> None:
    """Copy ``src`` to ``dst`` with one bit flipped inside the first tensor's bytes."""
    raw = bytearray(src.read_bytes())
    with zipfile.ZipFile(src) as zf:
        info = next(i for i in zf.infolist() if "/data/" in i.filename)
    name_len, extra_len = struct.unpack("<HH", raw[info.header_offset + 26:
                                                   info.header_offset + 30])
    raw[info.header_offset + 30 + name_len + extra_len + 5] ^= 0x10
    dst.write_bytes(bytes(raw))


def test_a_flipped_bit_in_a_weight_is_refused(tmp_path, trained, cli):
    data, ckpt = trained
    bad = tmp_path / "bad.pt"
    _flip_a_weight_bit(ckpt, bad)
    with pytest.raises(CheckpointError, match=r"bad\.pt: damaged checkpoint \(member "
                                              r"'data/\d+' fails its CRC check"):
        load_checkpoint(bad)
    _one_line(*cli("evaluate", bad, data)[::2], "bad.pt: damaged checkpoint")
    torn = tmp_path / "torn.pt"
    torn.write_bytes(ckpt.read_bytes()[:-100])
    _one_line(*cli("evaluate", torn, data)[::2], "torn.pt")
    assert load_checkpoint(ckpt)[0] is not None


# --- 3. a full disk --------------------------------------------------------------------

@contextlib.contextmanager
def _file_size_limit(nbytes: int):
    """Writes beyond ``nbytes`` fail with EFBIG (as on a full disk), in this process."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    old = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old)


def test_predict_convert_and_train_on_a_full_disk(tmp_path, trained, cli):
    data, ckpt = trained
    big = _data(tmp_path / "big.h5", n=20000)
    pdb = tmp_path / "pdb.hdf5"
    with h5py.File(pdb, "w") as f:
        f["tensor"] = np.random.default_rng(0).random((8, 20, 256), dtype=np.float32)
    out = tmp_path / "out"
    out.mkdir()
    for name in ("p.h5", "c.h5", "m.pt"):
        (out / name).write_text("keep me")
    with _file_size_limit(150_000):
        runs = {"p.h5": cli("predict", ckpt, big, "--split", "all", "--out", out / "p.h5",
                            "--overwrite"),
                "c.h5": cli("convert", pdb, "--out", out / "c.h5", "--overwrite"),
                "m.pt": cli("train", big, "--out", out / "m.pt", "--epochs", "1",
                            "--set", "hidden=256,256", "--overwrite")}
    for name, (code, _, err) in runs.items():
        _one_line(code, err, f"{name}: File too large")
        assert (out / name).read_text() == "keep me"
    _no_temps(out)


def test_a_disk_error_is_found_in_what_hdf5_and_torch_raise(tmp_path):
    from pacsim.fsutil import disk_error

    h5 = RuntimeError("Can't close dataset (file write failed: time = x, errno = 28, "
                      "error message = 'No space left on device')")
    err = disk_error(h5, tmp_path / "o.h5")
    assert err is not None and err.errno == errno.ENOSPC and err.filename.endswith("o.h5")
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc] unexpected pos")  # noqa: B904
    except RuntimeError as exc:
        assert disk_error(exc, "m.pt").strerror == "No space left on device"
    assert disk_error(RuntimeError("errno = 2"), "x") is None


def test_save_checkpoint_on_a_full_disk_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "m.pt"
    path.write_text("old")

    def full(obj, f, *args, **kwargs):
        f.write(b"x" * 10)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(OSError, match="No space left on device") as info:
        save_checkpoint(path, make_model("mlp"), overwrite=True)
    assert info.value.filename == str(path)
    assert path.read_text() == "old"
    _no_temps(tmp_path)


# --- 5. PDEBench files with nothing in them, attributes stored as bytes -----------------

@pytest.mark.parametrize("shape, needle", [((0, 5, 8), "holds no trajectories"),
                                           ((3, 0, 8), "holds no time steps")])
@pytest.mark.parametrize("pairs", ["next", "ic-to-T"])
def test_empty_pdebench_files_are_one_line(tmp_path, cli, shape, needle, pairs):
    src = tmp_path / "e.hdf5"
    with h5py.File(src, "w") as f:
        f["tensor"] = np.zeros(shape, np.float32)
    _one_line(*cli("convert", src, "--out", tmp_path / "o.h5", "--pairs", pairs)[::2],
              "e.hdf5: ", needle)
    _one_line(*cli("inspect", src)[::2], needle)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.hdf5"]


def test_root_attributes_stored_as_bytes_are_read_as_text(tmp_path, cli):
    src = tmp_path / "b.hdf5"
    with h5py.File(src, "w") as f:
        f["tensor"] = np.random.default_rng(0).random((3, 5, 8), dtype=np.float32)
        f.attrs["Nu"] = np.void(b"0.1")  # opaque bytes
        f.attrs["bad"] = b"\xff1"  # bytes that are not UTF-8
    code, out, _ = cli("inspect", "--json", src)
    assert code == 0 and json.loads(out)["params"] == {"Nu": "0.1", "bad": "\ufffd1"}
    assert cli("convert", src, "--out", tmp_path / "o.h5")[0] == 0
    with h5py.File(tmp_path / "o.h5") as f:
        assert json.loads(f.attrs["params"])["Nu"] == "0.1"


# --- 6. evaluate and predict agree on a model that is not finite ------------------------

def test_evaluate_refuses_non_finite_predictions_like_predict(tmp_path, trained, cli):

    data, ckpt = trained
    huge = overflowing_checkpoint(ckpt, tmp_path / "huge.pt")
    for cmd in (("evaluate", "--json", huge, data), ("evaluate", huge, data),
                ("predict", huge, data, "--out", tmp_path / "p.h5")):
        code, out, err = cli(*cmd)
        _one_line(code, err, "huge.pt: its prediction for sample", "is not finite")
        assert "NaN" not in out
    code, out, _ = cli("evaluate", "--json", ckpt, data)
    assert code == 0 and json.loads(out)["n"] == 4


# --- 7. an empty val split -------------------------------------------------------------

def test_a_file_without_val_samples_trains_and_says_so(tmp_path, cli):
    small = tmp_path / "f5.h5"
    assert cli("simulate", "friedman", "--n", "5", "--out", small)[0] == 0
    with h5py.File(small) as f:
        assert f["splits/val"].size == 0
    code, out, err = cli("train", small, "--out", tmp_path / "m.pt", "--epochs", "2",
                         "--set", "hidden=4,4")
    assert code == 0 and "has no val split" in out, err
    _one_line(*cli("evaluate", tmp_path / "m.pt", small, "--split", "val")[::2],
              "f5.h5: split 'val' has no samples")
    _one_line(*cli("predict", tmp_path / "m.pt", small, "--split", "val", "--out",
                   tmp_path / "p.h5")[::2], "split 'val' has no samples")
    assert cli("evaluate", tmp_path / "m.pt", small)[0] == 0


def test_first_non_finite_of_an_empty_block():
    from pacsim.data.format import first_non_finite

    assert first_non_finite(np.zeros((0, 3, 0), np.float32)) is None
    assert first_non_finite(np.array([[1.0], [np.nan]])) == 1


# --- 10. save_checkpoint writes only what load_checkpoint accepts ------------------------

def test_save_refuses_what_load_would_refuse(tmp_path):
    from pacsim.data.stats import Normalizer

    model = make_model("mlp")
    with torch.no_grad():
        next(model.parameters())[0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"m\.pt: not saved: weights hold NaN or inf: "
                                         r"net\.0\.weight"):
        save_checkpoint(tmp_path / "m.pt", model)
    zero = Normalizer(input_mean=np.zeros(4), input_std=np.array([1.0, 0.0, 1.0, 1.0]),
                      target_mean=np.zeros(2), target_std=np.ones(2))
    with pytest.raises(ValueError, match="not saved: normalizer input_std must be finite"):
        save_checkpoint(tmp_path / "m.pt", make_model("mlp"), normalizer=zero)
    assert not list(tmp_path.iterdir())


# --- 2. names that would escape --out ---------------------------------------------------

@pytest.mark.parametrize("name, why", [("../../x", "holds a path separator"),
                                       ("..", "is '..'"), ("", "is empty"),
                                       (".hidden", "starts with a dot"),
                                       ("a\\u001bb", "holds a control character")])
def test_recipe_names_are_plain_file_names(tmp_path, cli, name, why):
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    victim = tmp_path / "x_source.h5"
    victim.write_text("unrelated")
    recipe = work / "r.toml"
    recipe.write_text(RECIPE.format(name=name, n=10))
    _one_line(*cli("datasets", recipe, "--out", work / "built")[::2], "r.toml: name", why)
    assert victim.read_text() == "unrelated" and not (work / "built").exists()


def test_suite_pair_names_are_plain_file_names(tmp_path, cli):
    from test_bench import _suite

    from pacsim.bench import SuiteError, load_suite

    path = _suite(tmp_path)
    path.write_text(path.read_text().replace("[pair.fried]", '[pair."../../evil"]'))
    with pytest.raises(SuiteError, match=r"pair name '\.\./\.\./evil' holds a path separator"):
        load_suite(path)
    _one_line(*cli("bench", path, "--out", tmp_path / "out")[::2], "pair name")
    assert not (tmp_path / "out").exists() and not (tmp_path / "data").exists()
    path.write_text(path.read_text().replace('[pair."../../evil"]', "[pair.fried]")
                    .replace('name = "t"', 'name = "../t"').replace("data_dir", "#"))
    with pytest.raises(SuiteError, match=r"name '\.\./t' holds a path separator"):
        load_suite(path)


# --- 11. adding a setting says what happened to the previous one -------------------------

def test_adding_a_setting_says_the_previous_one_was_pruned_and_retrained(tmp_path, trained,
                                                                          cli):
    data, ckpt = trained
    other = _data(tmp_path / "o.h5")
    fixed = ("--n", "8", "--select", "fixed", "--steps", "2")
    assert cli("transfer", ckpt, other, *fixed, "--out", tmp_path / "t1.pt")[0] == 0
    code, out, err = cli("transfer", tmp_path / "t1.pt", data, *fixed, "--setting", "hot",
                         "--out", tmp_path / "t2.pt")
    assert code == 0, err
    assert "untouched" not in out, out
    assert ("added setting 'hot': 'target' gave up 50% of its entries to it and was "
            "retrained on its own data, so its error changes; 'source' keeps its exact "
            "weights") in out
    meta = load_checkpoint(tmp_path / "t2.pt")[2]
    assert meta["extended"] == {"setting": "target", "ratio": 0.5, "retrained": True}
    # predict keeps the data's own setting attribute; the network's setting has its own
    code, _, err = cli("predict", tmp_path / "t2.pt", data, "--setting", "target", "--out",
                       tmp_path / "p.h5")
    assert code == 0, err
    with h5py.File(tmp_path / "p.h5") as f:
        assert f.attrs["setting"] == "s" and f.attrs["predicted_setting"] == "target"


# --- 12. conversion streams trajectories -------------------------------------------------

def test_pdebench_conversion_reads_a_few_trajectories_at_a_time(tmp_path, monkeypatch):
    import tracemalloc

    from pacsim.data import convert
    from pacsim.data import writer as writer_mod

    src = tmp_path / "p.hdf5"
    with h5py.File(src, "w") as f:  # 16 trajectories of 640 KiB: 10 MiB
        f["tensor"] = np.random.default_rng(0).random((16, 20, 8192), dtype=np.float32)
    monkeypatch.setattr(writer_mod, "STATS_BLOCK_BYTES", 1 << 20)
    tracemalloc.start()
    try:
        convert(src, tmp_path / "o.h5")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20, f"peak {peak / 2**20:.1f} MiB for a 10 MiB file"
    with h5py.File(tmp_path / "o.h5") as f:
        assert f["inputs"].shape == (16 * 19, 1, 8192)


# --- 13. the report never counts a NaN error as a tie ------------------------------------

def test_a_nan_record_is_not_a_tie():
    from pacsim.bench.report import comparisons, summary_lines, verdict, verdict_table

    def rec(method, seed, rmse):
        return {"pair": "p", "method": method, "n_target": 10, "seed": seed,
                "status": "ok", "target": {"rmse": rmse},
                "source_before": {"rmse": 1.0}, "source_after": {"rmse": 1.0}}

    assert verdict(float("nan")) == "undefined" and verdict(1.0) == "ties"
    records = [rec("pac", 0, float("nan")), rec("finetune", 0, 1.0),
               rec("head", 0, float("nan"))]
    row, = comparisons(records)
    assert row["best"] == "finetune"  # a NaN baseline is never the best one
    text = "\n".join(summary_lines(records))
    assert "ties at 0, has an error that is not a number (NaN) at 1 and loses at 0" in text
    assert "PAC undefined (NaN error, finetune)" in text
    assert "NaN error" in "\n".join(verdict_table(records))


# --- 4. a model too large for memory ------------------------------------------------------

def test_a_model_too_large_for_memory_is_refused_before_it_is_built(tmp_path, cli,
                                                                     monkeypatch):
    from pacsim.models import registry

    data = _data(tmp_path / "d.h5")
    code, _, err = cli("train", data, "--out", tmp_path / "m.pt", "--set",
                       "hidden=400000,400000")
    _one_line(code, err, "not enough memory to build the model mlp: 160,002,800,002 "
                         "parameters (640 GB)")
    monkeypatch.setattr(registry, "available_memory", lambda: 5 * 10**5)  # 500 kB left
    _one_line(*cli("train", data, "--out", tmp_path / "m.pt", "--set", "hidden=400,400")[::2],
              "not enough memory to build the model mlp: 162,802 parameters (651 kB), "
              "500 kB available")
    assert not (tmp_path / "m.pt").exists()


def test_training_state_and_allocator_failures_are_one_line(tmp_path, cli, monkeypatch):
    from pacsim import procutil
    from pacsim.models import registry

    data = _data(tmp_path / "d.h5")
    monkeypatch.setattr(procutil, "available_memory", lambda: 2 * 10**6)
    _one_line(*cli("train", data, "--out", tmp_path / "m.pt", "--set", "hidden=400,400")[::2],
              "not enough memory to train the model mlp: 162,802 parameters need about "
              "0.00326 GB on cpu")

    def alloc_fails():
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: "
                           "can't allocate memory: you tried to allocate 640000000000 bytes")

    monkeypatch.setattr(registry, "available_memory", lambda: None)
    with pytest.raises(ValueError, match=r"^not enough memory to build the model x$"):
        registry.built(alloc_fails, "x")
    path = save_checkpoint(tmp_path / "c.pt", make_model("mlp"))
    payload = torch.load(path, weights_only=True)
    payload["config"] = json.dumps({**json.loads(payload["config"]),
                                    "hidden": [400000, 400000]})
    torch.save(payload, path)
    monkeypatch.setattr(registry, "available_memory", lambda: 10**9)
    with pytest.raises(CheckpointError, match="not enough memory to build the model mlp"):
        load_checkpoint(path)


# --- 9. an output folder that cannot be written is found before any work ----------------

def test_an_unwritable_output_folder_is_refused_before_training(tmp_path, trained, cli,
                                                                 monkeypatch):
    import os

    from pacsim import fsutil

    data, ckpt = trained
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    if os.geteuid() == 0:  # root may write anywhere: judge by the permission bits
        monkeypatch.setattr(fsutil, "_writable", lambda p: bool(p.stat().st_mode & 0o200))
    started = []
    monkeypatch.setattr("pacsim.workflow.surrogate.fit", lambda *a, **k: started.append(1))
    try:
        for cmd in (("train", data, "--out", ro / "m.pt"),
                    ("train", data, "--out", ro / "sub" / "m.pt"),
                    ("transfer", ckpt, data, "--out", ro / "t.pt"),
                    ("predict", ckpt, data, "--out", ro / "p.h5")):
            _one_line(*cli(*cmd)[::2], f"{ro}: folder not writable, so {ro}")
        assert not started and not list(ro.iterdir())
    finally:
        ro.chmod(0o755)


# --- 8. SIGTERM stops a Ray benchmark like Ctrl-C -----------------------------------------

@pytest.mark.slow
def test_sigterm_during_a_ray_bench_exits_143_without_a_stack_dump(tmp_path):
    import os
    import subprocess
    import sys
    import time

    pytest.importorskip("ray")
    from test_bench import _suite

    path = _suite(tmp_path, seeds=(0, 1, 2), methods=("finetune", "head"), steps=300)
    cmd = [sys.executable, "-m", "pacsim.cli", "bench", str(path), "--out",
           str(tmp_path / "out"), "--executor", "ray", "--jobs", "2"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.stdout is not None
    for line in proc.stdout:  # Ray is up once it says so
        if line.startswith("ray:"):
            break
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert err.strip().splitlines()[-1] == "pacsim: interrupted (SIGTERM)", err
    assert "SIGTERM received" not in err and "Traceback" not in err, err


def test_evaluate_escapes_control_characters_in_names(tmp_path, trained, cli):
    import shutil

    data, ckpt = trained
    odd = tmp_path / "d\x1b[2J.h5"
    shutil.copy(data, odd)
    code, out, err = cli("evaluate", ckpt, odd)
    assert code == 0 and "\x1b" not in out and "d\\x1b[2J.h5" in out, err
