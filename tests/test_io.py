"""Checkpoints: bit-exact round trip, safe loading, clear errors, atomic writes."""

from __future__ import annotations

import os
import pickle
import stat

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


def test_a_model_of_another_precision_is_refused_at_save(tmp_path):
    """Checkpoints rebuild float32 models (as pacsim trains them): a float64 model would
    come back rounded, so saving one is refused, and nothing is written."""
    from pacsim.models import MLP

    with pytest.raises(ValueError, match="float32 models; this one has float64"):
        save_checkpoint(tmp_path / "m.pt", MLP(3, 1, hidden=(4,)).double())
    assert list(tmp_path.iterdir()) == []


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


def test_nothing_but_a_regular_file_is_ever_replaced(tmp_path, cli):
    from pacsim.fsutil import AtomicFile

    fifo, folder = tmp_path / "pipe", tmp_path / "dir.h5"
    os.mkfifo(fifo)
    folder.mkdir()
    for target in (fifo, folder):
        for overwrite in (False, True):
            with pytest.raises(FileExistsError, match="not a regular file"):
                AtomicFile(target, overwrite=overwrite)
        code, _, err = cli("simulate", "friedman", "--n", "4", "--out", target, "--overwrite")
        assert code == 2 and "not a regular file" in err and err.count("\n") == 1
    assert stat.S_ISFIFO(os.stat(fifo).st_mode) and folder.is_dir()
    dangling = tmp_path / "link.pt"
    dangling.symlink_to(tmp_path / "nowhere")
    with pytest.raises(FileExistsError, match="dangling symbolic link"):
        save_checkpoint(dangling, make_model("mlp"))
    save_checkpoint(dangling, make_model("mlp"), overwrite=True)
    assert dangling.is_file() and not dangling.is_symlink()


def test_publishing_never_clobbers_a_file_that_appeared_meanwhile(tmp_path):
    from pacsim.fsutil import AtomicFile

    target = tmp_path / "same.h5"
    first = AtomicFile(target)
    first.tmp.write_bytes(b"mine")
    target.write_bytes(b"the other writer's")  # finished first
    with pytest.raises(FileExistsError, match="appeared while this was being written"):
        first.commit()
    assert target.read_bytes() == b"the other writer's"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["same.h5"]


def test_save_checkpoint_keeps_an_existing_file_unless_asked(tmp_path):
    precious = tmp_path / "precious.pt"
    precious.write_bytes(b"not ours")
    with pytest.raises(FileExistsError, match="precious.pt: exists"):
        save_checkpoint(precious, make_model("mlp"))
    assert precious.read_bytes() == b"not ours"
    save_checkpoint(precious, make_model("mlp"), overwrite=True)
    assert load_checkpoint(precious)[0].config() == make_model("mlp").config()
