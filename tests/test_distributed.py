"""Data-parallel training: two gloo processes follow the one-process run with the same
global batch, and PAC's frozen entries stay bit-exact on every rank.

Tolerance: the ranks' gradients are summed by gloo in another order than one process
sums a batch, so weights agree to float32 rounding amplified over the steps (atol 1e-5).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import make_data, make_model

from pacsim import pac
from pacsim.data import H5Dataset, write_dataset
from pacsim.train import fit

WORLD = 2
N = 50  # 50 samples at batch 16: the last batch of 2 splits 1 + 1, shares stay exact


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _runs(data_path: str | None) -> dict[str, dict[str, torch.Tensor]]:
    """Plain training, and PAC allocate + calibrate under AdamW with weight decay."""
    torch.set_num_threads(1)
    out = {}
    model = make_model("mlp")
    train = (H5Dataset(data_path, "train", normalize=False, in_memory=False)
             if data_path else make_data("mlp", n=N, seed=1))
    val = make_data("mlp", n=20, seed=2)
    fit(model, train, val=val, epochs=3, batch_size=16, lr=1e-2, seed=0)
    out["fit"] = {k: v.clone() for k, v in model.state_dict().items()}
    masks = pac.prune(model, ratio=0.5)
    pac.allocate(model, masks, make_data("mlp", n=N, seed=1), epochs=2, batch_size=16,
                 lr=1e-2, seed=0)
    out["allocated"] = {k: v.clone() for k, v in model.state_dict().items()}
    pac.calibrate(model, masks, make_data("mlp", n=N, seed=3, shift=1.0), epochs=3,
                  batch_size=16, lr=1e-2, optimizer="adamw", weight_decay=0.1, seed=0)
    out["calibrated"] = {k: v.clone() for k, v in model.state_dict().items()}
    out["essential"] = {k: m.clone() for k, m in masks.essential.items()}
    return out


def _worker(rank: int, folder: str, data_path: str | None) -> None:
    # a file rendezvous: no port to race for
    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank,
                            world_size=WORLD)
    with pytest.raises(ValueError, match="seed"):  # ranks must draw the same batches
        fit(make_model("mlp"), make_data("mlp", n=8), epochs=1)
    torch.save(_runs(data_path), Path(folder) / f"rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()
    # gloo's threads can abort the interpreter's teardown of a spawned worker now and then
    # ("terminate called without an active exception"), after all the work is done
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _spawned(tmp_path: Path, data_path: str | None) -> list[dict]:
    mp.start_processes(_worker, args=(str(tmp_path), data_path), nprocs=WORLD,
                       start_method="spawn")
    return [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]


@pytest.mark.slow
@pytest.mark.parametrize("source", ["tensors", "lazy h5"])
def test_two_ranks_follow_one_process(tmp_path, source):
    data_path = None
    if source == "lazy h5":
        x, y = make_data("mlp", n=N, seed=1)
        data_path = str(write_dataset(tmp_path / "d.h5", x.numpy(), y.numpy(), simulator="t",
                                      setting="s", params={}, seed=0, split=(1.0, 0.0, 0.0)))
    ranks = _spawned(tmp_path, data_path)
    single = _runs(data_path)
    for stage in ("fit", "allocated", "calibrated"):
        for k, v in single[stage].items():
            # every rank holds the same weights, bit for bit
            assert torch.equal(ranks[0][stage][k], ranks[1][stage][k]), (stage, k)
            np.testing.assert_allclose(ranks[0][stage][k].numpy(), v.numpy(), atol=1e-5,
                                       err_msg=f"{stage} {k}")
    for r in ranks:
        for name, keep in r["essential"].items():
            # PAC: essential entries untouched by calibrate on every rank; redundant are 0
            assert torch.equal(r["calibrated"][name][keep], r["allocated"][name][keep])
            assert torch.all(r["allocated"][name][~keep] == 0)


def test_ranks_take_their_share_of_each_global_batch():
    from pacsim.data.batches import batches

    x = torch.arange(10.0).reshape(10, 1)
    full = [xb for xb, _ in batches((x, x), 4, torch.device("cpu")).epoch(
        torch.Generator().manual_seed(0))]
    parts = []
    for rank in range(3):
        b = batches((x, x), 4, torch.device("cpu"), shard=(rank, 3))
        got = []
        for xb, _ in b.epoch(torch.Generator().manual_seed(0)):
            got.append((xb, b.share))
        parts.append(got)
    for i, whole in enumerate(full):
        pieces = [parts[r][i][0] for r in range(3)]
        assert torch.equal(torch.cat(pieces), whole)
        # each rank's mean weighed by its share: their average is the global batch's mean
        weighed = sum(parts[r][i][1] * pieces[r].mean() for r in range(3) if len(pieces[r]))
        assert float(weighed) / 3 == pytest.approx(float(whole.mean()))


@pytest.mark.slow
def test_torchrun_train_matches_one_process(tmp_path):
    x, y = make_data("mlp", n=80, seed=1)
    data = write_dataset(tmp_path / "d.h5", x.numpy(), y.numpy(), simulator="t", setting="s",
                         params={}, seed=0)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    common = [str(data), "--epochs", "3", "--set", "hidden=16,16", "--batch-size", "16"]
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                    "--nproc_per_node", "2", "-m", "pacsim", "train", *common, "--out",
                    str(tmp_path / "ddp.pt")], check=True, env=env, capture_output=True,
                   timeout=300)
    subprocess.run([sys.executable, "-m", "pacsim", "train", *common, "--out",
                    str(tmp_path / "one.pt")], check=True, env=env, capture_output=True,
                   timeout=300)
    from pacsim.io import load_checkpoint

    ddp, _, meta = load_checkpoint(tmp_path / "ddp.pt")
    one = load_checkpoint(tmp_path / "one.pt")[0]
    for (k, a), b in zip(ddp.state_dict().items(), one.state_dict().values()):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-5, err_msg=k)
    assert meta["kind"] == "source"
