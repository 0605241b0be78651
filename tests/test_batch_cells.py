"""``pacsim bench --batch-cells``: cells of one pair and target size train together
(shared fit_many stacks), and every cell's record is what the one-cell path gives, up to
float rounding; the scheduler fills batches, and a failing batch fails no other cell."""

from __future__ import annotations

import concurrent.futures as cf

import pytest
from conftest import fail_method
from test_bench import _suite

from pacsim.bench.execute import schedule
from pacsim.bench.results import read_results
from pacsim.bench.runner import RunOptions, auto_batch_cells, run_suite
from pacsim.bench.suite import Cell

METHODS = ("scratch", "finetune", "head", "l2sp", "bitfit", "pac", "pac-paper")
CV = 'selection = { mode = "cv", folds = 3 }'


def _records(tmp_path, name, batch_cells, **kw):
    out = tmp_path / name
    run_suite(_suite(tmp_path, methods=METHODS, top=CV, **kw), out,
              RunOptions(devices="cpu", batch_cells=batch_cells, stack=True),
              log=lambda m: None)
    return {(r["pair"], r["method"], r["n_target"], r["seed"]): r for r in read_results(out)}


def test_batched_cells_record_what_single_cells_record(tmp_path):
    one = _records(tmp_path, "one", 1)
    many = _records(tmp_path, "many", 100)
    assert set(one) == set(many) and len(one) == len(METHODS) * 2 * 2
    same_choice = 0
    for key, a in one.items():
        b = many[key]
        assert a["status"] == b["status"] == "ok", key
        assert set(a) == set(b), "records identical in form"
        assert a["cell_id"] == b["cell_id"] and a["config"] == b["config"]
        assert a["target_fingerprint"] == b["target_fingerprint"]
        assert a["source_fingerprint"] == b["source_fingerprint"]
        assert a["selection"]["batch"] == 1 and b["selection"]["batch"] == 14
        assert a["selection"]["stacked"] and b["selection"]["stacked"]
        assert a["trainable"] == b["trainable"] and a["memory_bytes"] == b["memory_bytes"]
        if a["selection"]["chosen"] == b["selection"]["chosen"] and \
                a["selection"]["steps"] == b["selection"]["steps"]:
            same_choice += 1
            assert b["target"]["rmse"] == pytest.approx(a["target"]["rmse"], rel=1e-3), key
        if key[1].startswith("pac"):  # the source view is the allocated model, exactly
            assert b["source_after"] == a["source_after"]
            assert b["source_after"]["rmse"] == b["pac"]["allocated_source_rmse"]
    assert same_choice >= 0.9 * len(one), "float rounding may move a flat curve's minimum"


def test_a_failing_cell_fails_only_its_own_record(tmp_path, monkeypatch):
    fail_method(monkeypatch, "l2sp", FloatingPointError("l2sp diverged"))
    out = tmp_path / "out"
    run_suite(_suite(tmp_path, methods=("finetune", "l2sp", "pac"), top=CV), out,
              RunOptions(devices="cpu", batch_cells=6), log=lambda m: None)
    recs = read_results(out)
    assert len(recs) == 12
    assert {r["method"] for r in recs if r["status"] != "ok"} == {"l2sp"}
    assert all(r["error"] == "FloatingPointError: l2sp diverged" for r in recs
               if r["status"] != "ok")
    ok = [r for r in recs if r["status"] == "ok"]
    assert len(ok) == 8 and all(r["selection"]["batch"] == 1 for r in ok), \
        "after a failed batch each cell ran alone"


@pytest.mark.parametrize("stack,jobs,expect", [
    ("auto", 1, 4), pytest.param("auto", 2, 2, marks=pytest.mark.slow), (False, 1, 1)])
def test_auto_batches_only_pairs_whose_cells_stack(tmp_path, stack, jobs, expect):
    """Under --batch-cells auto a pair's cells share tasks only where they stack (an MLP
    on the CPU under --stack auto does; nothing does under --stack off), in batches
    small enough to keep every job busy (4 cells of one pair and size, 2 jobs: 2 a
    batch), and a pair whose model cannot be built is left to fail in prepare."""
    import json

    bad = '[pair.bad]\nrecipe = "tiny.toml"\nmodel = { name = "cnn", width = 4 }'
    out = tmp_path / "out"
    path = _suite(tmp_path, seeds=(0, 1), methods=("finetune", "head"), n_target=(5,),
                  extra=bad)
    run_suite(path, out, RunOptions(devices="cpu", stack=stack, jobs=jobs), log=lambda m: None)
    machine = json.loads((out / "machine.json").read_text())
    assert machine["batch_cells"] == {"fried": expect, "bad": 1}
    recs = read_results(out)
    assert {r["selection"]["batch"] for r in recs if r["pair"] == "fried"} == {expect}
    assert all(r["status"] == "error" for r in recs if r["pair"] == "bad")


def test_batch_sizes_with_no_free_slot_yet(tmp_path):
    """A Ray cluster waiting for its autoscaler reports 0 slots: batches are sized as
    for one slot instead of dividing by zero."""
    import dataclasses

    from pacsim.bench.runner import _batch_sizes
    from pacsim.bench.suite import load_suite

    suite = dataclasses.replace(load_suite(_suite(
        tmp_path, seeds=(0, 1), methods=("finetune", "head"), n_target=(5,), top=CV)),
        stack="auto")
    from pacsim.sims import recipes

    recipes.build(suite.pairs["fried"].recipe, suite.data_dir, log=lambda m: None)
    cells = suite.cells()
    assert _batch_sizes(suite, "auto", 64, "cpu", cells, 0) == {"fried": 4}
    assert _batch_sizes(suite, "auto", 64, "cpu", cells, 2) == {"fried": 2}


def test_auto_batch_cells():
    assert auto_batch_cells("auto", cuda=True) == 64
    assert auto_batch_cells("auto", cuda=False) >= 1
    assert auto_batch_cells(5, cuda=False) == 5
    for bad in (0, -1, "many", 2.5, True):
        with pytest.raises(ValueError, match="--batch-cells"):
            auto_batch_cells(bad, cuda=False)


def _fake_run(tasks):
    """A submit() that finishes every task at once and logs it."""
    def submit(kind, args):
        tasks.append((kind, args))
        fut = cf.Future()
        if kind == "prepare":
            fut.set_result({"pac": "allocated model: boom"} if args[1] == 2 else {})
        elif kind == "batch":
            fut.set_result([{"status": "ok", "cells": len(args)} for _ in args])
        else:
            fut.set_result({"status": "ok"})
        return fut
    return submit


def test_schedule_prepares_first_and_fills_batches_per_pair_and_size():
    todo = [Cell(p, m, n, s) for p in ("a", "b") for s in (0, 1, 2) for n in (5, 10)
            for m in ("finetune", "pac")]
    tasks, records = [], {}
    schedule(todo, _fake_run(tasks), slots=1, batch=4,
             record=lambda c, r: records.__setitem__(tuple(c), r))
    kinds = [k for k, _ in tasks]
    assert kinds[:6] == ["prepare"] * 6, "every prepare before the first batch"
    assert set(records) == {tuple(c) for c in todo}
    batches = [[Cell(*c) for c in args] for k, args in tasks if k == "batch"]
    for b in batches:
        assert len(b) <= 4 and len({(c.pair, c.n_target) for c in b}) == 1
    # seed 2's pac cells failed in prepare: recorded as such, never run
    failed = [c for c in todo if c.seed == 2 and c.method == "pac"]
    assert all(records[tuple(c)]["error"] == "allocated model: boom" for c in failed)
    assert sum(len(b) for b in batches) == len(todo) - len(failed)
    assert sorted(len(b) for b in batches) == [1, 1, 1, 1, 4, 4, 4, 4]


def test_schedule_one_cell_a_task_without_batching():
    todo = [Cell("a", "finetune", 5, s) for s in (0, 1)]
    tasks = []
    schedule(todo, _fake_run(tasks), slots=1, record=lambda c, r: None)
    assert [k for k, _ in tasks] == ["prepare", "cell", "prepare", "cell"]
