"""Execution of a suite: records in completion order, no prepare barrier, clean errors
when a source model fails, one run per results folder, devices."""

from __future__ import annotations

import concurrent.futures as cf
import concurrent.futures.process  # noqa: F401
import dataclasses
import fcntl
import re
import subprocess
import sys
import threading

import pytest
from test_bench import _suite

from pacsim.bench import execute, ray_executor
from pacsim.bench.results import read_results
from pacsim.bench.runner import RunOptions, run_suite

CELLS = [("a", "m", 5, 0), ("a", "m", 9, 0), ("b", "m", 5, 0), ("b", "m", 9, 0)]


def _schedule(work, slots: int = 2) -> list[tuple]:
    """Run ``execute.schedule`` on threads with fake tasks; returns cells in record order."""
    order: list[tuple] = []
    recorded = threading.Condition()

    def record(cell, rec):
        with recorded:
            order.append(cell)
            recorded.notify_all()

    def wait_for(cell, timeout=5.0):
        with recorded:
            return recorded.wait_for(lambda: cell in order, timeout)

    with cf.ThreadPoolExecutor(slots) as pool:
        execute.schedule(CELLS, lambda kind, args: pool.submit(work, kind, args, wait_for),
                         slots=slots, record=record)
    return order


def test_records_follow_completion_not_submission():
    def work(kind, args, wait_for):
        if kind == "prepare":
            return {}
        if args == CELLS[0]:  # the first cell finishes only after the second is recorded
            assert wait_for(CELLS[1]), "the second cell was not recorded while the first ran"
        return {"status": "ok"}

    order = _schedule(work)
    assert set(order) == set(CELLS) and order.index(CELLS[1]) < order.index(CELLS[0])


def test_cells_start_without_waiting_for_other_prepares():
    def work(kind, args, wait_for):
        if kind == "prepare" and args[0] == "b":  # a slow source model of pair b
            assert wait_for(CELLS[0]) and wait_for(CELLS[1]), "pair a waited for pair b"
        return {} if kind == "prepare" else {"status": "ok"}

    assert set(_schedule(work)) == set(CELLS)


def test_failed_prepare_is_recorded_on_its_cells_only():
    def work(kind, args, wait_for):
        if kind == "prepare":
            return {"m": "source model: ValueError: bad"} if args[0] == "b" else {}
        return {"status": "ok"}

    recs: dict[tuple, dict] = {}
    execute.schedule(CELLS, lambda kind, args: _done(work(kind, args, None)), slots=1,
                     record=recs.__setitem__)
    assert [recs[c]["status"] for c in CELLS] == ["ok", "ok", "error", "error"]
    assert recs[CELLS[2]]["error"] == "source model: ValueError: bad"


def _done(value) -> cf.Future:
    fut: cf.Future = cf.Future()
    fut.set_result(value)
    return fut


@pytest.mark.slow
def test_source_model_failure_one_line_per_cell(tmp_path):
    # a CNN on tabular data passes the schema but fails when the source model is built
    path = _suite(tmp_path, seeds=(0,), methods=("finetune", "pac"), n_target=(5,),
                  model='{ name = "cnn", width = 4 }')
    run = subprocess.run([sys.executable, "-m", "pacsim.cli", "bench", str(path), "--out",
                          str(tmp_path / "out"), "--devices", "cpu"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 1 and "Traceback" not in run.stderr + run.stdout, run.stderr
    assert "2 cell(s) of the suite failed" in run.stderr
    failed = [line for line in run.stdout.splitlines() if "FAILED" in line]
    assert len(failed) == 2 and all("source model: ValueError" in f for f in failed)
    recs = read_results(tmp_path / "out")
    assert len(recs) == 2 and all(r["error"].startswith("source model: ValueError: pair fried: "
                                                        "a CNN needs field inputs") for r in recs)


@pytest.mark.slow
def test_second_run_on_the_same_folder_is_refused(tmp_path):
    path = _suite(tmp_path, seeds=(0,), methods=("finetune",), n_target=(5,))
    out = tmp_path / "out"
    out.mkdir()
    with open(out / ".lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        run = subprocess.run([sys.executable, "-m", "pacsim.cli", "bench", str(path), "--out",
                              str(out)], capture_output=True, text=True, timeout=120)
        assert run.returncode == 2 and run.stderr.count("\n") == 1, run.stderr
        assert "another pacsim bench" in run.stderr and str(out) in run.stderr
        with pytest.raises(ValueError, match="another pacsim bench"):
            run_suite(path, out, RunOptions(devices="cpu"), log=lambda m: None)
    assert not (out / "results.jsonl").exists()
    run_suite(path, out, RunOptions(devices="cpu"), log=lambda m: None)  # free again once released
    assert len(read_results(out)) == 1


def test_devices():
    assert execute.resolve_devices("cpu") == ["cpu"]
    assert execute.resolve_devices(["cpu", "cpu"]) == ["cpu", "cpu"]
    auto = execute.resolve_devices(None)
    assert auto == (["cpu"] if not execute.cuda_count() else
                    [f"cuda:{i}" for i in range(execute.cuda_count())])
    assert execute.worker_devices(["cuda:0", "cuda:1"], 4) == ["cuda:0", "cuda:1"] * 2
    assert execute.worker_devices(["cuda:0", "cuda:1"], 1) == ["cuda:0"]
    with pytest.raises(ValueError, match="gpu0"):
        execute.resolve_devices("gpu0")
    if not execute.cuda_count():
        with pytest.raises(ValueError, match="cuda:1"):
            execute.resolve_devices("cpu,cuda:1")



@pytest.mark.parametrize("kwargs, match", [
    ({"jobs": 0}, "--jobs must be >= 1, got 0"),
    ({"executor": "dask"}, "--executor must be local or ray, got 'dask'"),
    ({"batch_cells": 0}, "--batch-cells must be auto or an integer >= 1"),
    ({"batch_cells": True}, "--batch-cells must be auto or an integer >= 1"),
    ({"stack": "on"}, "stack must be True, False or 'auto', got 'on'"),
    ({"address": "auto"}, "need --executor ray"),
    ({"cpus_per_cell": 2}, "need --executor ray"),
    ({"gpus_per_cell": 0.5}, "need --executor ray"),
    ({"executor": "ray", "devices": "cpu"}, "--devices is for --executor local"),
    ({"executor": "ray", "cpus_per_cell": 0}, "--cpus-per-cell must be > 0"),
    ({"executor": "ray", "gpus_per_cell": -1}, "--gpus-per-cell must be >= 0"),
    ({"executor": "ray", "gpus_per_cell": 1.5}, "above 1 must be a whole number"),
    ({"executor": "ray", "address": "nowhere"}, "not auto or HOST:PORT"),
])
def test_run_options_are_checked_when_made(kwargs, match):
    with pytest.raises(ValueError, match=re.escape(match)):
        RunOptions(**kwargs)


def test_run_options_give_the_ray_executor_its_options():
    """An embedded Ray holds ``jobs`` cells' CPUs; without ``jobs``, every core."""
    opts = RunOptions(executor="ray", jobs=3, cpus_per_cell=1.5, gpus_per_cell=0.5,
                      address="10.0.0.1:6379", batch_cells=4)
    assert opts.ray_options() == ray_executor.RayOptions("10.0.0.1:6379", 5, 1.5, 0.5)
    assert RunOptions(executor="ray").ray_options().num_cpus is None
    assert RunOptions() == RunOptions(jobs=None, devices=None, executor="local",
                                      stack="auto", batch_cells="auto")
    with pytest.raises(dataclasses.FrozenInstanceError):
        opts.jobs = 1  # type: ignore[misc]

@pytest.mark.slow
def test_cells_spread_over_devices(tmp_path):
    out = tmp_path / "out"
    run_suite(_suite(tmp_path, seeds=(0, 1), methods=("finetune",), n_target=(5,)), out,
              RunOptions(jobs=2, devices="cpu,cpu"), log=lambda m: None)
    recs = read_results(out)
    assert len(recs) == 2 and all(r["status"] == "ok" and r["device"] == "cpu" for r in recs)


def test_a_broken_pool_ends_the_run():
    def submit(kind, args):
        fut: cf.Future = cf.Future()
        fut.set_exception(cf.process.BrokenProcessPool("a worker died"))
        return fut

    with pytest.raises(cf.process.BrokenProcessPool):
        execute.schedule(CELLS, submit, slots=2, record=lambda cell, rec: None)
