"""``pacsim bench --executor ray``: the same records as the local executor, resume after
a killed driver, a clean error for an unreachable cluster, a dying worker recorded."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

pytestmark = pytest.mark.slow

from test_bench import _alive, _suite  # noqa: E402

from pacsim.bench import cell_key, load_suite  # noqa: E402
from pacsim.bench.results import read_results  # noqa: E402
from pacsim.bench.runner import RunOptions, run_suite  # noqa: E402

# what a cell measured and chose; seconds, device and versions may differ
SAME = ("cell_id", "config", "status", "target", "source_after", "source_before",
        "zero_shot", "selection", "steps", "trainable", "n_params", "memory_bytes",
        "source_fingerprint", "target_fingerprint", "pac")


@pytest.fixture(autouse=True)
def _no_ray_left():
    yield
    ray.shutdown()


def _by_cell(out: Path) -> dict[str, dict]:
    recs = read_results(out)
    by = {cell_key(r["pair"], r["method"], r["n_target"], r["seed"]): r for r in recs}
    assert len(by) == len(recs), "a cell was recorded twice"
    return by


def test_ray_records_equal_the_local_executor_bit_for_bit(tmp_path):
    path = _suite(tmp_path, seeds=(0, 1), methods=("finetune", "head", "pac"))
    # two jobs each: --batch-cells auto splits a pair's cells into one batch per job
    run_suite(path, tmp_path / "local", RunOptions(jobs=2, devices="cpu"),
              log=lambda m: None)
    lines: list[str] = []
    run_suite(path, tmp_path / "ray", RunOptions(executor="ray", jobs=2), log=lines.append)
    assert not ray.is_initialized(), "the embedded Ray outlived the run"
    local, remote = _by_cell(tmp_path / "local"), _by_cell(tmp_path / "ray")
    assert set(local) == set(remote) == {cell_key(*c) for c in load_suite(path).cells()}
    for key, a in local.items():
        b = remote[key]
        assert a["status"] == "ok", a.get("error")
        for field in SAME:
            assert a.get(field) == b.get(field), f"{key}: {field} differs"
        assert b["device"] == "cpu"
    machine = json.loads((tmp_path / "ray" / "machine.json").read_text())
    assert machine["executor"] == "ray" and machine["jobs"] == 2
    assert any("embedded Ray, 1 CPU per cell" in line for line in lines)
    assert any(line.startswith("[12/12]") for line in lines)
    # both executors share the cache layout and the cell identity: nothing left to run
    again: list[str] = []
    run_suite(path, tmp_path / "ray", RunOptions(jobs=1, devices="cpu"), log=again.append)
    assert "12 already done, 0 to run" in again[0]


def test_ray_batches_cells_as_the_local_executor_does(tmp_path):
    """--batch-cells on Ray: the same batches as the local runner, so the same records
    bit for bit; a pair whose source model fails fails its cells with the same error."""
    bad = '[pair.bad]\nrecipe = "tiny.toml"\nmodel = { name = "cnn", width = 4 }'
    path = _suite(tmp_path, seeds=(0, 1), methods=("finetune", "pac"), extra=bad,
                  top='selection = { mode = "cv", folds = 2 }')
    run_suite(path, tmp_path / "local", RunOptions(devices="cpu", batch_cells=3),
              log=lambda m: None)
    lines: list[str] = []
    run_suite(path, tmp_path / "ray", RunOptions(executor="ray", jobs=2, batch_cells=3),
              log=lines.append)
    local, remote = _by_cell(tmp_path / "local"), _by_cell(tmp_path / "ray")
    assert set(local) == set(remote) and len(local) == 16
    for key, a in local.items():
        b = remote[key]
        for field in SAME:
            assert a.get(field) == b.get(field), f"{key}: {field} differs"
        if key.startswith("bad"):
            assert a["error"].startswith("source model: ValueError: pair bad: a CNN")
        else:
            assert a["status"] == "ok" and a["selection"]["batch"] in (1, 3)
    assert any("up to 3 cells a task" in line for line in lines)


def test_failures_are_recorded_and_the_run_goes_on(tmp_path, monkeypatch):
    """A worker that dies mid-cell is retried once, then the cell is recorded as failed
    (the cells run batched: a batch whose worker dies reruns as one task a cell, so only
    the crashing cell fails); a source model that fails to train fails its cells with
    the local runner's error."""
    bad = '[pair.bad]\nrecipe = "tiny.toml"\nmodel = { name = "cnn", width = 4 }'
    path = _suite(tmp_path, seeds=(0,), methods=("finetune", "head"), n_target=(5,),
                  extra=bad)
    monkeypatch.setenv("PACSIM_TEST_CRASH", "fried|finetune|5|0")  # every try
    monkeypatch.setenv("PACSIM_TEST_CRASH_ONCE", "fried|head|5|0")  # the first try only
    out = tmp_path / "out"
    run_suite(path, out, RunOptions(executor="ray", jobs=2), log=lambda m: None)
    recs = _by_cell(out)
    assert len(recs) == 4
    dead = recs["fried|finetune|5|0"]
    assert dead["status"] == "error" and dead["cell_id"]
    assert dead["error"].startswith("WorkerCrashedError: the Ray worker died during the cell")
    assert recs["fried|head|5|0"]["status"] == "ok"  # retried on a fresh worker
    assert (out / ".crashed-fried_head_5_0").exists()
    monkeypatch.delenv("PACSIM_TEST_CRASH")
    run_suite(path, tmp_path / "local", RunOptions(devices="cpu"), log=lambda m: None)
    local = _by_cell(tmp_path / "local")
    for key in ("bad|finetune|5|0", "bad|head|5|0"):
        assert recs[key]["error"] == local[key]["error"]
        assert recs[key]["error"].startswith("source model: ValueError: pair bad: a CNN")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_address_is_one_line_exit_2(tmp_path, cli):
    path = _suite(tmp_path, seeds=(0,), methods=("finetune",), n_target=(5,))
    port = _free_port()  # nobody listens there
    t0 = time.perf_counter()
    code, out, err = cli("bench", path, "--out", tmp_path / "o", "--executor", "ray",
                         "--address", f"127.0.0.1:{port}")
    assert time.perf_counter() - t0 < 30
    assert code == 2 and err.count("\n") == 1, err
    assert f"no Ray cluster reachable at 127.0.0.1:{port}" in err
    assert not (tmp_path / "o" / "results.jsonl").exists()
    for bad, match in ((["--address", "nowhere"], "not auto or HOST:PORT"),
                       (["--gpus-per-cell", "-1"], "--gpus-per-cell must be >= 0"),
                       (["--devices", "cpu"], "--devices is for --executor local")):
        code, _, err = cli("bench", path, "--out", tmp_path / "o", "--executor", "ray", *bad)
        assert code == 2 and match in err and err.count("\n") == 1, err
    code, _, err = cli("bench", path, "--out", tmp_path / "o", "--cpus-per-cell", "2")
    assert code == 2 and "need --executor ray" in err


def _descendants(pid: int) -> list[tuple[int, str]]:
    """Every live process below ``pid``, with its command name (Linux /proc)."""
    parent: dict[int, tuple[int, str]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        name = text[text.index("(") + 1:text.rindex(")")]
        fields = text.rsplit(")", 1)[1].split()
        if fields[0] != "Z":
            parent[int(stat.parent.name)] = (int(fields[1]), name)
    found, frontier = [], [pid]
    while frontier:
        p = frontier.pop()
        kids = [(c, n) for c, (pp, n) in parent.items() if pp == p]
        found += kids
        frontier += [c for c, _ in kids]
    return found


def test_killed_driver_resumes_without_losing_or_duplicating(tmp_path):
    out = tmp_path / "out"
    path = _suite(tmp_path, seeds=tuple(range(3)), methods=("finetune", "head"), steps=200)
    total = len(load_suite(path).cells())
    cmd = [sys.executable, "-m", "pacsim.cli", "bench", str(path), "--out", str(out),
           "--executor", "ray", "--jobs", "2"]
    log = tmp_path / "killed.log"
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.DEVNULL,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
    results = out / "results.jsonl"
    deadline = time.time() + 300  # Ray's start and the first cells, on a loaded machine
    while time.time() < deadline:
        if results.exists() and results.read_text().count("\n") >= 3:
            break
        time.sleep(0.01)
    # Ray's dashboard and runtime-env agents end on their own, a minute later
    workers = [p for p, name in _descendants(proc.pid)
               if not name.startswith(("ray::Dashboard", "ray::RuntimeEnv"))]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert workers, "no Ray process was running"
    deadline = time.time() + 20
    while time.time() < deadline and any(_alive(p) for p in workers):
        time.sleep(0.1)
    assert not [p for p in workers if _alive(p)], "Ray workers outlived the killed driver"
    done = set(_by_cell(out))
    logged = {line.split()[1] for line in log.read_text().splitlines()
              if line.startswith("[") and " ok;" in line}
    assert logged <= done, "a cell reported finished is missing from the results"
    assert 3 <= len(done) < total, "the driver must be killed midway for this test to mean much"
    again: list[str] = []
    run_suite(path, out, RunOptions(executor="ray", jobs=2), log=again.append)
    assert f"{len(done)} already done" in again[0]
    lines = results.read_text().splitlines()
    assert all(json.loads(line) for line in lines)
    assert set(_by_cell(out)) == {cell_key(*c) for c in load_suite(path).cells()}
    assert len(lines) == total


def test_each_gpu_task_picks_its_own_device(monkeypatch):
    from pacsim.bench import ray_executor

    assert ray_executor._device(False) == "cpu"
    monkeypatch.setattr(ray, "get_gpu_ids", lambda: [2])
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert ray_executor._device(True) == "cuda:2"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,2")  # the node's own restriction
    assert ray_executor._device(True) == "cuda:1"
    opts = ray_executor.RayOptions(cpus_per_cell=2, gpus_per_cell=0.25)
    assert opts.slots({"CPU": 16, "GPU": 1}) == 4 and opts.slots({"CPU": 6, "GPU": 2}) == 3


def test_a_cell_no_node_can_hold_is_refused_on_an_embedded_ray():
    from types import SimpleNamespace

    from pacsim.bench import ray_executor

    one_node = SimpleNamespace(nodes=lambda: [{"Alive": True, "Resources": {"CPU": 2.0}}])
    ray_executor._check_feasible(one_node, ray_executor.RayOptions(cpus_per_cell=2))
    with pytest.raises(ValueError, match="no Ray node has 1 CPU.s. and 0.5 GPU"):
        ray_executor._check_feasible(one_node, ray_executor.RayOptions(gpus_per_cell=0.5))
    # on a cluster an autoscaler may still add such a node: a warning only
    ray_executor._check_feasible(one_node, ray_executor.RayOptions("auto", gpus_per_cell=0.5))
