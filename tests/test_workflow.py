"""pacsim train / transfer / predict / evaluate on files, and the README walk-through."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from pacsim.data import H5Dataset, write_dataset
from pacsim.demo import DemoSettings
from pacsim.io import load_checkpoint, load_predictor
from pacsim.transfer import SelectionConfig
from pacsim.workflow import TrainSettings, TransferSettings

README = Path(__file__).resolve().parents[1] / "README.md"


def _flat(path: Path, n: int, shift: float, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, size=(n, 3))
    y = np.stack([np.sin(2 * x[:, 0]) + x[:, 1] * x[:, 2] + shift, x[:, 0] - shift], 1)
    return write_dataset(path, x * 10 + 5, y * 3, simulator="toy", setting=f"s{shift}",
                         params={"shift": shift}, seed=seed)


def _field(path: Path, n: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 2, 16))
    y = np.concatenate([np.roll(x[:, :1], 1, -1), x[:, 1:] * 2 + 1], 1)
    return write_dataset(path, x, y, simulator="toyfield", setting="s", params={}, seed=seed)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A source file, a target file and a trained source checkpoint."""
    from pacsim.cli import main

    d = tmp_path_factory.mktemp("wf")
    _flat(d / "src.h5", 400, 0.0, 0)
    _flat(d / "tgt.h5", 120, 0.7, 1)
    assert main(["train", str(d / "src.h5"), "--out", str(d / "src.pt"), "--epochs", "30",
                 "--set", "hidden=32,32"]) == 0
    return d


def _transfer(cli, d: Path, out: str, *extra: str) -> tuple[int, str, str]:
    return cli("transfer", d / "src.pt", d / "tgt.h5", "--n", "16", "--steps", "20",
               "--out", d / out, *extra)


def test_train_writes_a_checkpoint_that_records_its_data(files):
    model, masks, meta = load_checkpoint(files / "src.pt")
    assert masks is None and meta["kind"] == "source" and meta["model"] == "mlp"
    assert model.config()["hidden"] == [32, 32]
    rec = meta["data"]
    assert rec["file"] == str((files / "src.h5").resolve())
    assert rec["simulator"] == "toy" and rec["setting"] == "s0.0"
    assert rec["params"] == {"shift": 0.0} and len(rec["fingerprint"]) == 16
    assert rec["input_shape"] == [3] and rec["target_shape"] == [2]
    assert meta["train"]["epochs"] == 30 and meta["metrics"]["val"]["rmse"] > 0
    # physical units in, physical units out
    x, y = H5Dataset(files / "src.h5", "val", normalize=False).tensors()
    pred = load_predictor(files / "src.pt")(x).detach()
    assert torch.sqrt(((pred - y) ** 2).mean()) == pytest.approx(
        meta["metrics"]["val"]["rmse"], rel=1e-4)


def test_train_can_compile_its_forward(files, tmp_path):
    """``pacsim train --compile`` is fit(compile=...): the same training up to float
    rounding (torch.compile's portable backend here: CI machines may lack a C compiler)."""
    from pacsim.workflow import train_surrogate

    metas = [train_surrogate(files / "src.h5", tmp_path / f"{c}.pt",
                             TrainSettings(epochs=3, compile=c, options={"hidden": [16]}),
                             progress=False, log=lambda m: None)
             for c in (False, {"backend": "aot_eager"})]
    assert metas[1]["train"]["compile"] == "{'backend': 'aot_eager'}"
    assert metas[1]["metrics"]["val"]["rmse"] == pytest.approx(
        metas[0]["metrics"]["val"]["rmse"], rel=1e-4)


def test_pac_transfer_keeps_the_source_and_is_reproducible(cli, files):
    for out in ("pac_a.pt", "pac_b.pt"):
        code, text, err = _transfer(cli, files, out, "--select", "fixed")
        assert code == 0, err
    assert "target val RMSE" in text and "source view" in text
    _, masks, meta = load_checkpoint(files / "pac_a.pt")
    assert masks is not None and meta["method"] == "pac" and meta["n"] == 16
    assert meta["source_data"]["file"] == str((files / "src.h5").resolve())
    results = []
    for out in ("pac_a.pt", "pac_b.pt"):
        code, text, err = cli("evaluate", files / out, files / "src.h5", "--source-view",
                              "--json")
        assert code == 0, err
        results.append(json.loads(text))
    assert results[0]["rmse"] == results[1]["rmse"]  # bit-identical across runs
    code, text, _ = cli("evaluate", files / "src.pt", files / "src.h5", "--json")
    src = json.loads(text)
    assert results[0]["rmse"] <= 1.25 * src["rmse"]  # the allocated model, close to the source


def test_cv_transfer_records_its_choice(cli, files):
    code, text, err = _transfer(cli, files, "ft.pt", "--method", "finetune", "--folds", "2")
    assert code == 0, err
    _, masks, meta = load_checkpoint(files / "ft.pt")
    assert masks is None and meta["selection"]["mode"] == "cv"
    assert "lr" in meta["selection"]["chosen"] and meta["selection"]["steps"] >= 1
    assert meta["selection"]["final"] == SelectionConfig.final
    assert "chosen by CV" in text
    code, _, err = _transfer(cli, files, "ft_best.pt", "--method", "finetune", "--folds", "2",
                             "--final", "best")
    assert code == 0, err
    best = load_checkpoint(files / "ft_best.pt")[2]["selection"]
    assert best["final"] == "best"
    assert (best["chosen"], best["steps"]) == (meta["selection"]["chosen"],
                                               meta["selection"]["steps"]), \
        "the final state kept does not change what CV chose"


def test_set_options_are_fixed_not_searched(cli, files):
    code, _, err = _transfer(cli, files, "pac_all.pt", "--folds", "2", "--set", "subspace=all")
    assert code == 0, err
    meta = load_checkpoint(files / "pac_all.pt")[2]
    assert meta["options"]["subspace"] == "all"
    assert "subspace" not in meta["selection"]["chosen"]


def test_predict_streams_physical_predictions(cli, files, tmp_path):
    code, _, err = cli("predict", files / "src.pt", files / "tgt.h5", "--split", "all",
                       "--batch-size", "7", "--out", tmp_path / "p.h5")
    assert code == 0, err
    with h5py.File(files / "tgt.h5") as f:
        x = f["inputs"][:]
    with h5py.File(tmp_path / "p.h5") as f:
        assert np.array_equal(f["inputs"][:], x)
        got = f["targets"][:]
        assert f.attrs["predicted_by"] == str((files / "src.pt").resolve())
        assert f.attrs["predicted_split"] == "all" and f["splits/test"].size == len(x)
    want = load_predictor(files / "src.pt")(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # a source-view prediction of a PAC checkpoint is the source view's output
    _transfer(cli, files, "pac_p.pt", "--select", "fixed")
    code, _, err = cli("predict", files / "pac_p.pt", files / "src.h5", "--source-view",
                       "--out", tmp_path / "sv.h5")
    assert code == 0, err
    with h5py.File(tmp_path / "sv.h5") as f:
        assert f.attrs["source_view"]


def test_evaluate_reports_every_channel_of_a_field(cli, tmp_path):
    _field(tmp_path / "f.h5", 60, 0)
    code, _, err = cli("train", tmp_path / "f.h5", "--out", tmp_path / "f.pt", "--epochs", "2",
                       "--set", "width=4", "--set", "depth=1")
    assert code == 0, err
    assert load_checkpoint(tmp_path / "f.pt")[2]["model"] == "cnn"
    code, text, err = cli("evaluate", tmp_path / "f.pt", tmp_path / "f.h5", "--json")
    res = json.loads(text)
    assert len(res["channels"]) == 2
    for key in ("rmse", "nrmse", "mae", "max_error", "r2"):
        assert np.isfinite(res[key]) and all(np.isfinite(c[key]) for c in res["channels"])
    code, text, _ = cli("evaluate", tmp_path / "f.pt", tmp_path / "f.h5")
    assert "channel 1" in text


def _refused(cli, args, *needles, out: Path | None = None) -> None:
    code, text, err = cli(*args)
    assert code == 2, (text, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    for needle in needles:
        assert str(needle) in lines[0], lines[0]
    if out is not None:
        assert not out.exists()


def test_bad_input_is_one_line_and_nothing_written(cli, files, tmp_path):
    other = _field(tmp_path / "field.h5", 30, 0)
    out = tmp_path / "x.pt"
    # checkpoint and data of different shapes: both named
    _refused(cli, ["transfer", files / "src.pt", other, "--out", out], "src.pt", "field.h5",
             out=out)
    _refused(cli, ["evaluate", files / "src.pt", other], "src.pt", "field.h5")
    _refused(cli, ["predict", files / "src.pt", other, "--out", tmp_path / "p.h5"],
             "field.h5", out=tmp_path / "p.h5")
    # an unknown model or method option
    _refused(cli, ["train", files / "src.h5", "--set", "widht=3", "--out", out], "widht",
             "hidden", out=out)
    _refused(cli, ["transfer", files / "src.pt", files / "tgt.h5", "--set", "lamda=1",
                   "--out", out], "lamda", out=out)
    # --n beyond the train split
    _refused(cli, ["transfer", files / "src.pt", files / "tgt.h5", "--n", "5000", "--out", out],
             "5000", "96", out=out)
    # --source-view on a non-PAC checkpoint
    _refused(cli, ["evaluate", files / "src.pt", files / "src.h5", "--source-view"],
             "not a PAC checkpoint")
    # unknown layout, missing files
    with h5py.File(tmp_path / "foreign.h5", "w") as f:
        f["data"] = np.zeros(3)
    _refused(cli, ["train", tmp_path / "foreign.h5", "--out", out], "foreign.h5", out=out)
    _refused(cli, ["evaluate", tmp_path / "nope.pt", files / "src.h5"], "nope.pt")
    _refused(cli, ["train", tmp_path / "nope.h5", "--out", out], "nope.h5", out=out)
    # an existing --out is kept unless --overwrite
    out.write_bytes(b"precious")
    _refused(cli, ["train", files / "src.h5", "--out", out], "exists")
    _refused(cli, ["transfer", files / "src.pt", files / "tgt.h5", "--out", out], "exists")
    assert out.read_bytes() == b"precious"


def test_pac_needs_its_source_data(cli, files, tmp_path):
    import shutil

    moved = tmp_path / "src.pt"
    shutil.copy(files / "src.pt", moved)
    ckpt = torch.load(moved, weights_only=True)
    meta = json.loads(ckpt["meta"])
    meta["data"]["file"] = str(tmp_path / "gone.h5")
    ckpt["meta"] = json.dumps(meta)
    torch.save(ckpt, moved)
    args = ["transfer", moved, files / "tgt.h5", "--n", "8", "--steps", "5", "--select",
            "fixed", "--out", tmp_path / "t.pt"]
    _refused(cli, args, "gone.h5", "--source")
    code, _, err = cli(*args, "--source", files / "src.h5")
    assert code == 0, err


def test_a_pac_network_takes_more_settings(cli, files, tmp_path):
    code, _, err = _transfer(cli, files, "t1.pt", "--select", "fixed", "--setting", "warm")
    assert code == 0, err
    _refused(cli, ["transfer", files / "t1.pt", files / "tgt.h5", "--out", tmp_path / "t.pt"],
             "source, warm", "--setting")
    _refused(cli, ["transfer", files / "t1.pt", files / "tgt.h5", "--method", "finetune",
                   "--setting", "x", "--out", tmp_path / "t.pt"], "--setting")
    _flat(tmp_path / "hot.h5", 80, -0.8, 3)
    code, text, err = cli("transfer", files / "t1.pt", tmp_path / "hot.h5", "--n", "16",
                          "--select", "fixed", "--steps", "20", "--setting", "hot",
                          "--out", tmp_path / "t2.pt")
    assert code == 0, err
    assert "added setting 'hot'" in text and "note:" not in text  # warm was retrained
    model, masks, meta = load_checkpoint(tmp_path / "t2.pt")
    assert masks.settings == ["source", "warm", "hot"] and meta["settings"] == masks.settings
    assert set(meta["setting_data"]) == {"warm", "hot"}
    # the source is the same to the bit in both networks; each setting is served
    results = {}
    for ckpt in ("t1.pt", "t2.pt"):
        code, text, err = cli("evaluate", (files if ckpt == "t1.pt" else tmp_path) / ckpt,
                              files / "src.h5", "--setting", "source", "--json")
        assert code == 0, err
        results[ckpt] = json.loads(text)["rmse"]
    assert results["t1.pt"] == results["t2.pt"]
    for s in ("warm", "hot"):
        code, text, err = cli("evaluate", tmp_path / "t2.pt", files / "tgt.h5", "--setting", s)
        assert code == 0 and f"setting {s}" in text, err
    _refused(cli, ["evaluate", tmp_path / "t2.pt", files / "tgt.h5", "--setting", "cold"],
             "source, warm, hot")
    x = torch.from_numpy(H5Dataset(files / "src.h5", "test", normalize=False).arrays()[0])
    warm = load_predictor(tmp_path / "t2.pt", setting="warm")(x)
    assert not torch.equal(warm, load_predictor(tmp_path / "t2.pt")(x))


def walkthrough() -> list[list[str]]:
    text = README.read_text()
    block = re.search(r"<!-- walkthrough[^>]*-->\n```bash\n(.*?)```", text, re.S).group(1)
    return [shlex.split(line) for line in block.splitlines() if line.strip()]


@pytest.mark.slow
def test_readme_walkthrough_runs_as_written(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for args in walkthrough():
        assert args[0] == "pacsim"
        code, text, err = cli(*args[1:])
        assert code == 0, (args, err)
    assert {"source.pt", "pac.pt", "finetune.pt", "predictions.h5"} <= {
        p.name for p in tmp_path.iterdir()}
    code, text, _ = cli("evaluate", "pac.pt", "source.h5", "--source-view", "--json")
    view = json.loads(text)["rmse"]
    code, text, _ = cli("evaluate", "source.pt", "source.h5", "--json")
    assert view <= 1.1 * json.loads(text)["rmse"]


def test_fno_from_the_terminal(cli, tmp_path):
    pytest.importorskip("neuralop")
    _field(tmp_path / "f.h5", 40, 0)
    _field(tmp_path / "g.h5", 40, 1)
    code, _, err = cli("train", tmp_path / "f.h5", "--model", "fno", "--out", tmp_path / "f.pt",
                       "--epochs", "2", "--set", "n_modes=4", "--set", "hidden_channels=4",
                       "--set", "n_layers=1")
    assert code == 0, err
    code, _, err = cli("transfer", tmp_path / "f.pt", tmp_path / "g.h5", "--n", "8",
                       "--select", "fixed", "--steps", "5", "--set", "scope=layer",
                       "--set", "ratio=0.5", "--out", tmp_path / "g.pt")
    assert code == 0, err
    model, masks, meta = load_checkpoint(tmp_path / "g.pt")
    assert meta["model"] == "fno" and any(m.dtype == torch.bool for m in masks.essential.values())
    assert any(p.is_complex() for p in model.parameters())
    views = [json.loads(cli("evaluate", tmp_path / "g.pt", tmp_path / "f.h5", "--source-view",
                            "--json")[1])["rmse"] for _ in range(2)]
    assert views[0] == views[1]


def test_a_file_that_crashes_hdf5_is_one_line(cli, files, tmp_path, monkeypatch):
    import os
    import signal

    from pacsim.data import inspect as inspect_module

    def crash(path, check=False):  # what a damaged file can make HDF5 do
        import faulthandler

        faulthandler.disable()
        os.kill(os.getpid(), signal.SIGSEGV)

    monkeypatch.setattr(inspect_module, "describe", crash)
    _refused(cli, ["evaluate", files / "src.pt", files / "tgt.h5"], "tgt.h5", "HDF5 crashed")
    _refused(cli, ["train", files / "src.h5", "--out", tmp_path / "x.pt"], "src.h5",
             "HDF5 crashed", out=tmp_path / "x.pt")


def test_adding_a_setting_without_the_previous_data_says_so(cli, files, tmp_path):
    code, _, err = _transfer(cli, files, "t1n.pt", "--select", "fixed")
    assert code == 0, err
    ckpt = torch.load(files / "t1n.pt", weights_only=True)
    meta = json.loads(ckpt["meta"])
    meta["data"]["file"] = str(tmp_path / "gone.h5")
    ckpt["meta"] = json.dumps(meta)
    torch.save(ckpt, tmp_path / "t1n.pt")
    code, text, err = cli("transfer", tmp_path / "t1n.pt", files / "tgt.h5", "--n", "8",
                          "--select", "fixed", "--steps", "5", "--setting", "again",
                          "--out", tmp_path / "t2n.pt")
    assert code == 0, err
    assert "note: the data" in text and "without retraining" in text


def test_transfer_method_auto_picks_by_cv_and_keep_source_keeps_a_pac_network(cli, files):
    code, text, err = _transfer(cli, files, "auto.pt", "--method", "auto", "--folds", "2")
    assert code == 0, err
    _, masks, meta = load_checkpoint(files / "auto.pt")
    auto = meta["selection"]["auto"]
    assert auto["method"] == "auto" and len(auto["cv_loss"]) == 7
    assert meta["method"] == auto["pick"] == min(auto["cv_loss"], key=auto["cv_loss"].get)
    assert f"auto picked {auto['pick']}" in text
    code, text, err = _transfer(cli, files, "auto_keep.pt", "--method", "auto",
                                "--keep-source", "--folds", "2")
    assert code == 0, err
    _, masks, meta = load_checkpoint(files / "auto_keep.pt")
    assert set(meta["selection"]["auto"]["cv_loss"]) == {"pac", "pac-paper"}
    assert meta["method"] in ("pac", "pac-paper") and masks is not None
    assert "source val (source view)" in text
    for bad, why in ((("--method", "finetune", "--keep-source"), "--keep-source chooses"),
                     (("--method", "auto", "--set", "lr=0.1"), "takes no --set"),
                     (("--method", "auto", "--select", "fixed"), "needs --select cv")):
        code, _, err = _transfer(cli, files, "bad.pt", *bad)
        assert code == 2 and why in err and not (files / "bad.pt").exists()


@pytest.mark.parametrize("make, needle", [
    (lambda: TrainSettings(epochs=0),
     "--epochs must be >= 1, got 0"),
    (lambda: TransferSettings(method="pac", keep_source=True),
     "--keep-source chooses among PAC methods with --method auto; 'pac' is one method"),
    (lambda: TransferSettings(method="nope"), "unknown method 'nope'; choose one of"),
    (lambda: TransferSettings(method="auto", options={"ratio": 0.5}),
     "--method auto takes no --set"),
    (lambda: TransferSettings(method="auto", keep_source=True, options={"ratio": 0.5}),
     "--method auto-keep-source takes no --set"),
    (lambda: TransferSettings(method="auto", selection="fixed"),
     "--method auto chooses by cross-validation: it needs --select cv"),
    (lambda: TransferSettings(method="l2sp", options={"alpha": -1}),
     "alpha must be a finite number >= 0, got -1.0"),
    (lambda: TransferSettings(options={"lamda": 1}), "has no option 'lamda'"),
    (lambda: TransferSettings(allocate_epochs=0), "--allocate-epochs must be >= 1, got 0"),
    (lambda: TransferSettings(folds=1), "selection folds must be an integer >= 2, got 1"),
    (lambda: TransferSettings(selection="grid"), "selection mode must be one of"),
    (lambda: TransferSettings(final="first"), "selection final must be one of"),
    (lambda: DemoSettings(target_steps=0),
     "--target-steps must be positive"),
])
def test_settings_refuse_bad_values_when_made(make, needle):
    """A bad setting fails when the settings are made, before any file is read, with
    the message the command line prints."""
    with pytest.raises(ValueError, match=re.escape(needle)):
        make()


def test_settings_are_frozen_and_keep_their_own_options():
    import dataclasses

    options = {"ratio": 0.5}
    s = TransferSettings(options=options)
    options["ratio"] = 0.9
    assert s.options == {"ratio": 0.5}
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.steps = 3  # type: ignore[misc]
    auto = TransferSettings(method="auto", keep_source=True)
    assert auto.resolved_method == "auto-keep-source" and auto.auto and auto.keeps_source
    assert not TransferSettings(method="finetune").keeps_source
    assert dataclasses.replace(TrainSettings(), epochs=5).epochs == 5
    with pytest.raises(ValueError, match="--epochs"):
        dataclasses.replace(TrainSettings(), epochs=0)


def _same_checkpoints(a: Path, b: Path) -> None:
    """Two checkpoints equal to the bit: weights, masks and metadata (but the seconds)."""
    def timeless(d):
        if isinstance(d, dict):
            return {k: timeless(v) for k, v in d.items() if k != "seconds"}
        return [timeless(v) for v in d] if isinstance(d, list) else d

    (ma, ka, ea), (mb, kb, eb) = load_checkpoint(a), load_checkpoint(b)
    sa, sb = ma.state_dict(), mb.state_dict()
    assert list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert (ka is None) == (kb is None)
    if ka is not None:
        assert ka.settings == kb.settings
        assert all(torch.equal(ka.essential[k], kb.essential[k]) for k in ka.essential)
    assert timeless(ea) == timeless(eb)


def test_the_python_api_writes_what_the_command_line_writes(cli, files, tmp_path):
    """train_surrogate / transfer_surrogate / predict_file with settings: the same
    checkpoints, predictions and log lines as the commands with the same flags."""
    from pacsim.workflow import predict_file, train_surrogate, transfer_surrogate

    src, tgt = files / "src.h5", files / "tgt.h5"
    code, text, err = cli("train", src, "--out", tmp_path / "cli.pt", "--epochs", "3",
                          "--set", "hidden=8,8", "--batch-size", "32", "--seed", "2")
    assert code == 0, err
    lines: list[str] = []
    meta = train_surrogate(src, tmp_path / "api.pt", TrainSettings(
        options={"hidden": [8, 8]}, epochs=3, batch_size=32, seed=2), progress=False,
        log=lines.append)
    _same_checkpoints(tmp_path / "cli.pt", tmp_path / "api.pt")
    written = load_checkpoint(tmp_path / "api.pt")[2]
    assert meta == {k: v for k, v in written.items() if k != "normalizer"}
    assert text.splitlines()[:-1] == lines[:-1]

    code, text, err = cli("transfer", files / "src.pt", tgt, "--n", "16", "--steps", "10",
                          "--select", "fixed", "--setting", "warm", "--set", "ratio=0.4",
                          "--out", tmp_path / "cli_t.pt")
    assert code == 0, err
    lines = []
    settings = TransferSettings(n=16, steps=10, selection="fixed", setting="warm",
                                options={"ratio": 0.4})
    transfer_surrogate(files / "src.pt", tgt, tmp_path / "api_t.pt", settings,
                       progress=False, log=lines.append)
    _same_checkpoints(tmp_path / "cli_t.pt", tmp_path / "api_t.pt")
    assert text.splitlines()[:-1] == lines[:-1] and "source view" in text

    code, _, err = cli("predict", tmp_path / "cli_t.pt", src, "--source-view", "--out",
                       tmp_path / "cli.h5")
    assert code == 0, err
    predict_file(tmp_path / "cli_t.pt", src, tmp_path / "api.h5", setting="source")
    with h5py.File(tmp_path / "cli.h5") as a, h5py.File(tmp_path / "api.h5") as b:
        assert np.array_equal(a["targets"][:], b["targets"][:])
        assert dict(a.attrs) == dict(b.attrs) and b.attrs["source_view"]
