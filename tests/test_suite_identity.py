"""Cell identity and cache names are hashes of the resolved configuration: a changed
option, recipe or budget re-runs exactly the cells it shapes; ``--dry-run`` says which."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import fail_method
from test_bench import RECIPE, _suite

from pacsim.bench import load_suite
from pacsim.bench.results import read_results
from pacsim.bench.runner import RunOptions, run_suite
from pacsim.data import H5Dataset
from pacsim.io import load_checkpoint


def _run(path: Path, out: Path, **kw) -> list[str]:
    logs: list[str] = []
    run_suite(path, out, RunOptions(devices="cpu"), log=logs.append, **kw)
    return logs


def _caches(out: Path) -> set[str]:
    return {p.name for p in (out / "cache").glob("*.pt")}


def test_changed_options_rerun_exactly_the_affected_cells(tmp_path):
    out = tmp_path / "out"
    methods = ("finetune", "pac")
    _run(_suite(tmp_path, seeds=(0,), methods=methods), out)
    first = read_results(out)
    assert len(first) == 4 and len(_caches(out)) == 2
    ids = {r["cell_id"] for r in first}

    # a calibrate option: only the pac cells re-run, on the cached allocated model
    path = _suite(tmp_path, seeds=(0,), methods=methods,
                  extra="[method.pac]\nratio = 0.5\nlam = 0.1")
    plan = [m for m in _run(path, out, dry_run=True)[1:] if "changed" in m]
    assert len(plan) == 2 and all("|pac|" in m and "options.lam: 0.0 -> 0.1" in m for m in plan)
    assert len(read_results(out)) == 4  # a dry run runs nothing
    _run(path, out)
    recs = read_results(out)
    assert len(recs) == 6 and {r["method"] for r in recs[4:]} == {"pac"}
    assert all(r["config"]["options"]["lam"] == 0.1 for r in recs[4:])
    assert len(_caches(out)) == 2 and not ids & {r["cell_id"] for r in recs[4:]}

    # an allocate option: a new allocated model, the source model is kept
    path = _suite(tmp_path, seeds=(0,), methods=methods,
                  extra="[method.pac]\nratio = 0.6\nlam = 0.1")
    _run(path, out)
    recs = read_results(out)
    assert len(recs) == 8 and {r["method"] for r in recs[6:]} == {"pac"}
    caches = _caches(out)
    assert len(caches) == 3 and sum(c.startswith("source_") for c in caches) == 1

    # the target budget: every cell re-runs, no model is retrained
    path = _suite(tmp_path, seeds=(0,), methods=methods, steps=5,
                  extra="[method.pac]\nratio = 0.6\nlam = 0.1")
    _run(path, out)
    assert len(read_results(out)) == 12 and _caches(out) == caches
    _run(path, out)
    assert len(read_results(out)) == 12


def test_recipe_physics_change_rebuilds_data_and_models(tmp_path):
    out = tmp_path / "out"
    path = _suite(tmp_path, seeds=(0,), methods=("finetune",), n_target=(5,))
    _run(path, out)
    assert len(read_results(out)) == 1
    # a physics override and a new source size
    (tmp_path / "tiny.toml").write_text(RECIPE.replace("n = 300", "n = 320")
                                        + "[target.set]\nq = 2.0\n")
    plan = _run(path, out, dry_run=True)
    assert any("|finetune|5|0" in m and "changed" in m for m in plan)
    logs = _run(path, out)
    assert any("fried_source.h5" in m and "rebuilt" in m and "320" in m for m in logs), logs
    assert any("fried_target.h5" in m and "rebuilt" in m and "q" in m for m in logs), logs
    recs = read_results(out)
    assert len(recs) == 2 and recs[1]["config"]["data"]["source"]["n"] == 320
    assert recs[1]["config"]["data"]["target"]["set"] == {"q": 2.0}
    assert H5Dataset(tmp_path / "data" / "fried_source.h5", "train").info.n == 320
    assert H5Dataset(tmp_path / "data" / "fried_target.h5", "test").info.params["q"] == 2.0
    assert len([c for c in _caches(out) if c.startswith("source_")]) == 2
    # n_source in the suite overrides the recipe, and is part of the identity too
    path = _suite(tmp_path, seeds=(0,), methods=("finetune",), n_target=(5,),
                  pair="n_source = 200")
    _run(path, out)
    assert len(read_results(out)) == 3
    assert H5Dataset(tmp_path / "data" / "fried_source.h5", "train").info.n == 200


def test_records_carry_identity_and_parameter_count(tmp_path):
    out = tmp_path / "out"
    path = _suite(tmp_path, seeds=(0,), methods=("head", "pac"), n_target=(5,))
    _run(path, out)
    suite = load_suite(path)
    recs = read_results(out)
    for r in recs:
        cell = (r["pair"], r["method"], r["n_target"], r["seed"])
        assert r["cell_id"] == suite.cell_id(cell) and r["config"] == suite.cell_config(cell)
    src = next((out / "cache").glob("source_*.pt"))
    model, _, _ = load_checkpoint(src)
    assert all(r["n_params"] == sum(p.numel() for p in model.parameters()) for r in recs)
    alloc = next((out / "cache").glob("alloc_*.pt"))
    _, masks, meta = load_checkpoint(alloc)
    assert masks is not None and meta["allocate"]["allocate"] == "source"
    assert "history" in meta["allocate"] and "unpruned_loss" in meta["allocate"]


@pytest.mark.slow
def test_dry_run_lists_what_would_run_and_why(tmp_path, monkeypatch):
    out = tmp_path / "out"
    path = _suite(tmp_path, seeds=(0,), methods=("finetune", "l2sp"), n_target=(5,))
    run = subprocess.run([sys.executable, "-m", "pacsim.cli", "bench", str(path), "--out",
                          str(out), "--dry-run"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "fried|finetune|5|0 new" in run.stdout and "fried|l2sp|5|0 new" in run.stdout
    assert "2 to run" in run.stdout
    assert not out.exists() and not (tmp_path / "data").exists()

    fail_method(monkeypatch, "l2sp", FloatingPointError("diverged"))
    _run(path, out)
    plan = _run(path, out, dry_run=True)
    assert "0 to run" in plan[0] and "1 failed" in plan[0]
    plan = _run(path, out, dry_run=True, retry_failed=True)
    assert "1 to run" in plan[0] and any("fried|l2sp|5|0 failed" in m for m in plan)


def test_an_option_changed_back_runs_the_cell_again(tmp_path):
    """The report shows each cell's newest record; the runner counts a cell done only when
    that record is of the current configuration, so the two never disagree."""
    from pacsim.bench.results import latest

    out = tmp_path / "out"
    for steps in (4, 6, 4):
        path = _suite(tmp_path, seeds=(0,), methods=("finetune",), n_target=(5,),
                      steps=steps)
        logs = _run(path, out)
        assert any("1 cells, 0 already done, 1 to run" in m for m in logs), logs
        shown, = latest(read_results(out))
        assert shown["steps"] == steps
        assert shown["cell_id"] == load_suite(path).cell_id(("fried", "finetune", 5, 0))
    assert any("1 already done" in m for m in _run(path, out))
    assert len(read_results(out)) == 3



#: The simulators' resolved settings (every parameter of every setting) per protocol.
PHYSICS_BY_PROTOCOL = {2: "a8aae5da631d8612"}


def test_changed_simulator_physics_come_with_a_new_protocol():
    """A cell's identity holds its recipe's overrides, not every parameter they leave at
    the simulator's defaults: a changed default must bump PROTOCOL (every cell and cache
    then re-runs) rather than let finished cells stand for other physics."""
    import hashlib
    import json

    from pacsim.bench.suite import PROTOCOL
    from pacsim.sims.base import get, names

    physics = {n: {s: get(n).resolve(s, {}) for s in sorted(get(n).settings)}
               for n in names()}
    digest = hashlib.sha256(json.dumps(physics, sort_keys=True, default=str).encode())
    assert PHYSICS_BY_PROTOCOL.get(PROTOCOL) == digest.hexdigest()[:16], (
        "a simulator's settings changed: bump PROTOCOL in pacsim/bench/suite.py and "
        f"record {digest.hexdigest()[:16]} for it here")


ROOT = Path(__file__).resolve().parents[1]
#: Committed runs and the suite each ran: every record must still be that suite's cell,
#: so a resumed run adds to them instead of running them again.
COMMITTED = [(ROOT / "benchmarks/suites/full-v3.toml", ROOT / "benchmarks/results/full-v3")] + [
    (suite, suite.parent / "run" if (suite.parent / "run").is_dir() else suite.parent)
    for suite in sorted((ROOT / "benchmarks/results").glob("*/*/suite.toml"))]


@pytest.mark.parametrize("suite_path,run", COMMITTED,
                         ids=[str(r.relative_to(ROOT / "benchmarks/results"))
                              for _, r in COMMITTED])
def test_committed_runs_are_still_their_suites_cells(suite_path, run, monkeypatch):
    from pacsim.bench.runner import plan_suite

    monkeypatch.chdir(ROOT)  # a suite's data_dir is relative to the repository
    suite = load_suite(suite_path)
    records = read_results(run)
    assert records, f"{run}: no records"
    changed = [f"{c} ({why})" for c, reason, why in plan_suite(suite, records).todo
               if reason == "changed"]
    assert not changed, changed[:3]
