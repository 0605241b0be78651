"""Checkpoints: bit-exact round trip, safe loading, clear errors, atomic writes."""

from __future__ import annotations

import pickle

import pytest
import torch
from conftest import make_data, make_model

from pacsim import pac
from pacsim.fsutil import atomic_write
from pacsim.io import CheckpointError, load_checkpoint, save_checkpoint
from pacsim.train import predict


def test_round_trip_is_bit_exact(tmp_path, kind):
    model = make_model(kind)
    masks = pac.prune(model, ratio=0.5)
    kw = dict(epochs=1, batch_size=16, device="cpu", seed=0)
    pac.allocate(model, masks, make_data(kind), **kw)
    pac.calibrate(model, masks, make_data(kind, shift=1.0), train_biases=True, **kw)
    path = save_checkpoint(tmp_path / "m.pt", model, masks, meta={"task": "demo", "n": 3})
    loaded, lmasks, meta = load_checkpoint(path)
    x = make_data(kind, n=8, seed=4)[0]
    assert torch.equal(predict(loaded, x), predict(model, x))
    assert meta == {"task": "demo", "n": 3}
    assert lmasks.stage == "calibrated" and lmasks.ratio == 0.5
    for name in masks.essential:
        assert torch.equal(lmasks.essential[name], masks.essential[name])
    with pac.source_view(model, masks) as a, pac.source_view(loaded, lmasks) as b:
        assert torch.equal(predict(a, x), predict(b, x))
    assert list(tmp_path.iterdir()) == [path], "no temporary files left behind"


class _Payload:
    def __reduce__(self):
        return (exec, ("open(__import__('os').environ['PACSIM_PWNED'], 'w').write('x')",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_malicious_pickle_is_refused_without_running(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    monkeypatch.setenv("PACSIM_PWNED", str(marker))
    path = tmp_path / "evil.pt"
    torch.save({"format": "pacsim-checkpoint", "state_dict": _Payload()}, path)
    with pytest.raises(CheckpointError, match=r"evil\.pt: not a pacsim checkpoint"):
        load_checkpoint(path)
    raw = tmp_path / "raw.pt"
    raw.write_bytes(pickle.dumps(_Payload()))
    with pytest.raises(CheckpointError, match="raw.pt"):
        load_checkpoint(raw)
    assert not marker.exists()
    pickle.loads(raw.read_bytes())  # the payload is live: plain unpickling runs it
    assert marker.exists()


@pytest.mark.parametrize(
    "content", [b"", b"not a checkpoint at all", b"\x89HDF\r\n\x1a\n" + b"0" * 64]
)
def test_foreign_files_get_one_line_error(tmp_path, content):
    path = tmp_path / "foreign.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    assert "foreign.pt" in str(err.value) and "\n" not in str(err.value)


def test_other_torch_files_and_missing_files(tmp_path):
    path = tmp_path / "plain.pt"
    torch.save({"weight": torch.zeros(2)}, path)
    with pytest.raises(CheckpointError, match="no 'pacsim-checkpoint' marker"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        load_checkpoint(tmp_path / "missing.pt")


def test_unregistered_model_is_refused(tmp_path):
    with pytest.raises(ValueError, match="register"):
        save_checkpoint(tmp_path / "x.pt", torch.nn.Linear(2, 2))
    assert not (tmp_path / "x.pt").exists()


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.bin"

    def fail(tmp):
        with open(tmp, "wb") as f:
            f.write(b"partial")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, fail)
    assert list(tmp_path.iterdir()) == []
    target.write_bytes(b"old")
    with pytest.raises(FileExistsError, match="out.bin"):
        atomic_write(target, lambda tmp: None, overwrite=False)
    assert target.read_bytes() == b"old"
