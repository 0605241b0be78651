"""The benchmark runner and report: fair protocol, resume after a kill, failures recorded,
report from results, clear errors for bad suites."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import pytest
from conftest import fail_method

from pacsim.bench import SuiteError, cell_key, load_suite
from pacsim.bench.report import write_report
from pacsim.bench.results import read_results
from pacsim.bench.runner import RunOptions, run_suite

RECIPE = """
name = "tiny"
simulator = "friedman"
seed = 0
[source]
setting = "source"
n = 300
[target]
setting = "target"
n = 120
split = [0.5, 0.0, 0.5]
"""


def _suite(tmp_path: Path, *, seeds=(0, 1), methods=("finetune", "head", "pac"),
           extra: str = "", steps: int = 4, top: str = "", train: str = "", pair: str = "",
           model: str = '{ name = "mlp", hidden = [8] }', n_target=(5, 12)) -> Path:
    """A tiny suite (and its recipe) in ``tmp_path``: ``top`` adds top-level keys,
    ``train`` lines of [train], ``extra`` whole sections, ``pair`` lines of [pair.fried]."""
    if not (tmp_path / "tiny.toml").exists():
        (tmp_path / "tiny.toml").write_text(RECIPE)
    pac = "[method.pac]\nratio = 0.5" if "pac" in methods and "[method.pac]" not in extra else ""
    text = f"""
name = "t"
seeds = {list(seeds)}
n_target = {list(n_target)}
methods = {json.dumps(list(methods))}
data_dir = "{(tmp_path / 'data').as_posix()}"
{top}
[train]
target_steps = {steps}
source_epochs = 2
allocate_epochs = 1
{train}
{pac}
{extra}
[pair.fried]
recipe = "tiny.toml"
model = {model}
{pair}
"""
    path = tmp_path / "suite.toml"
    path.write_text(text)
    return path


def test_fair_protocol_and_records(tmp_path):
    out = tmp_path / "out"
    run_suite(_suite(tmp_path, methods=("scratch", "finetune", "head", "l2sp", "bitfit", "pac")),
              out, RunOptions(devices="cpu"), log=lambda m: None)
    recs = read_results(out)
    assert len(recs) == 6 * 2 * 2 and all(r["status"] == "ok" for r in recs)
    src, tgt = defaultdict(set), defaultdict(set)
    for r in recs:
        src[(r["pair"], r["seed"])].add(r["source_fingerprint"])
        tgt[(r["pair"], r["n_target"], r["seed"])].add(r["target_fingerprint"])
        assert {"rmse", "nrmse", "max_error"} <= set(r["target"])
        assert r["steps"] == 4 and r["trainable"] > 0 and r["seconds"] > 0
        assert r["versions"]["pacsim"] and r["device"] == "cpu"
        assert r["n_params"] >= r["trainable"] and len(r["cell_id"]) >= 12
        assert r["config"]["method"] == r["method"] and r["config"]["n_target"] == r["n_target"]
    assert all(len(v) == 1 for v in src.values()) and all(len(v) == 1 for v in tgt.values())
    assert len({next(iter(v)) for v in tgt.values()}) == 4  # subsets differ by n and seed
    assert len({r["cell_id"] for r in recs}) == len(recs)
    pac = [r for r in recs if r["method"] == "pac"]
    assert all(r["source_after"]["rmse"] == r["pac"]["allocated_source_rmse"] for r in pac)
    assert all(r["pac"]["allocate"]["allocate"] == "source" for r in pac)
    assert len(list((out / "cache").glob("source_*.pt"))) == 2
    assert len(list((out / "cache").glob("alloc_*.pt"))) == 2


def test_failed_cell_is_recorded_and_run_goes_on(tmp_path, monkeypatch):
    fail_method(monkeypatch, "l2sp", FloatingPointError("l2sp diverged"))
    out = tmp_path / "out"
    path = _suite(tmp_path, seeds=(0,), methods=("finetune", "l2sp"))
    run_suite(path, out, RunOptions(devices="cpu"), log=lambda m: None)
    recs = read_results(out)
    bad = [r for r in recs if r["status"] == "error"]
    assert len(recs) == 4 and len(bad) == 2 and all(r["method"] == "l2sp" for r in bad)
    assert bad[0]["error"] == "FloatingPointError: l2sp diverged" and bad[0]["cell_id"]
    report = write_report(out).read_text()
    assert "## Failed cells" in report and "l2sp diverged" in report
    # from the terminal: the report is written, and the exit status says cells failed
    from pacsim.cli import main

    assert main(["bench", str(path), "--out", str(out), "--report"]) == 1
    assert main(["bench", str(path), "--out", str(out), "--dry-run"]) == 0


def test_each_run_logs_its_wall_time_and_the_report_says_where_time_went(
        tmp_path, monkeypatch):
    """machine.json keeps one entry per run (a resumed suite sums them, an interrupted
    run says so); the report's Compute section has per-pair cell seconds and the sum."""
    from pacsim.bench import execute

    out = tmp_path / "out"
    run_suite(_suite(tmp_path, seeds=(0,), methods=("finetune", "head")), out,
              RunOptions(devices="cpu"), log=lambda m: None)
    real = execute.run_cells

    def stop_after_one(suite, out_, todo, *, record, **kw):
        def once(cell, rec):
            record(cell, rec)
            raise KeyboardInterrupt
        real(suite, out_, todo, record=once, **kw)

    monkeypatch.setattr(execute, "run_cells", stop_after_one)
    with pytest.raises(KeyboardInterrupt):
        run_suite(_suite(tmp_path, seeds=(0, 1), methods=("finetune", "head")), out,
                  RunOptions(devices="cpu", batch_cells=1), log=lambda m: None)
    monkeypatch.setattr(execute, "run_cells", real)
    run_suite(_suite(tmp_path, seeds=(0, 1), methods=("finetune", "head")), out,
              RunOptions(devices="cpu"), log=lambda m: None)
    runs = json.loads((out / "machine.json").read_text())["runs"]
    assert [(r["cells"], r["ok"], r["failed"], r["ended"]) for r in runs] == [
        (4, 4, 0, "done"), (4, 1, 0, "interrupted"), (3, 3, 0, "done")]
    assert all(r["seconds"] > 0 for r in runs)
    report = write_report(out).read_text()
    compute = report.split("## Compute")[1]
    recs = read_results(out)
    assert len(recs) == 8
    row = next(line for line in compute.splitlines() if line.startswith("| fried |"))
    cells = row.split("|")
    assert cells[2].strip() == "8" and cells[3].strip() == "0", "fixed budgets: no CV stacks"
    assert int(cells[5]) == round(sum(r["seconds"] for r in recs))
    wall = sum(r["seconds"] for r in runs)
    assert f"Wall time: {wall:.0f} s for 8 cells in 3 run(s), 1 of them interrupted" in compute


def test_a_run_log_that_cannot_be_written_only_warns(tmp_path, monkeypatch):
    from pacsim.bench import runner

    def full_disk(out, run):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(runner, "_log_run", full_disk)
    logged = []
    run_suite(_suite(tmp_path, seeds=(0,), methods=("finetune",), n_target=(5,)),
              tmp_path / "out", RunOptions(devices="cpu"), log=logged.append)
    assert len(read_results(tmp_path / "out")) == 1
    assert any("could not log the run" in m and "No space left" in m for m in logged)
    assert logged[-1].startswith("done: 1 ok")


def _children(pid: int) -> list[int]:
    """Live child processes of ``pid`` (Linux /proc)."""
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            kids.append(int(stat.parent.name))
    return kids


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _wait_gone(pids: list[int], timeout: float = 15.0) -> list[int]:
    deadline = time.time() + timeout
    while time.time() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.1)
    return [p for p in pids if _alive(p)]


@pytest.mark.slow
@pytest.mark.parametrize("jobs", [1, 2])
def test_resume_after_kill_loses_and_duplicates_nothing(tmp_path, jobs):
    out = tmp_path / "out"
    # enough work per cell (~0.1 s) that the kill reliably lands midway
    path = _suite(tmp_path, seeds=tuple(range(8)), methods=("finetune", "head"), steps=300)
    total = len(load_suite(path).cells())
    cmd = [sys.executable, "-m", "pacsim.cli", "bench", str(path), "--out", str(out),
           "--devices", "cpu"]
    log = tmp_path / "killed.log"
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd + ["--jobs", str(jobs)], stdout=f,
                                stderr=subprocess.DEVNULL, env={**os.environ,
                                                                "PYTHONUNBUFFERED": "1"})
    deadline = time.time() + 120
    results = out / "results.jsonl"
    while time.time() < deadline:
        if results.exists() and results.read_text().count("\n") >= 3:
            break
        time.sleep(0.01)
    kids = _children(proc.pid)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert len(kids) >= (jobs if jobs > 1 else 0)
    assert not _wait_gone(kids), "worker processes outlived the killed runner"
    done = {cell_key(r["pair"], r["method"], r["n_target"], r["seed"]) for r in read_results(out)}
    logged = {line.split()[1] for line in log.read_text().splitlines()
              if line.startswith("[") and " ok;" in line}
    assert logged <= done, "a cell reported finished is missing from the results"
    done_before = len(done)
    print(f"killed after {done_before} of {total} cells")
    assert 3 <= done_before < total, "the run must be killed midway for this test to mean much"
    with open(results, "a") as f:
        f.write('{"pair": "fried", "method": "hea')  # a line torn by the kill
    run = subprocess.run(cmd + ["--jobs", str(3 - jobs)], capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr
    assert f"{done_before} already done" in run.stdout
    lines = results.read_text().splitlines()
    assert all(json.loads(line) for line in lines), "a torn line was left in the results"
    keys = [cell_key(r["pair"], r["method"], r["n_target"], r["seed"]) for r in read_results(out)]
    assert len(keys) == len(set(keys)) == total == len(lines)
    assert set(keys) == {cell_key(*c) for c in load_suite(path).cells()}


@pytest.mark.slow
def test_workers_die_with_a_runner_killed_while_they_start(tmp_path):
    path = _suite(tmp_path, seeds=(0, 1), methods=("finetune",))
    proc = subprocess.Popen([sys.executable, "-m", "pacsim.cli", "bench", str(path), "--out",
                             str(tmp_path / "out"), "--jobs", "2", "--devices", "cpu"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    kids: list[int] = []
    while time.time() < deadline and len(kids) < 2:  # the pool's processes appear
        kids = _children(proc.pid)
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert kids and not _wait_gone(kids), "worker processes outlived the killed runner"


def _synthetic(tmp_path: Path) -> Path:
    out = tmp_path / "res"
    out.mkdir()
    lines = []
    for pair in ("alpha", "beta"):
        for seed in (0, 1):
            for n in (10, 100):
                for m, base in (("finetune", 1.0), ("l2sp", 0.95), ("pac", 0.9)):
                    err = base * (1 + 10 / n) * (1 + 0.01 * seed)
                    rec = {"pair": pair, "method": m, "n_target": n, "seed": seed,
                           "status": "ok", "target": {"rmse": err, "nrmse": err / 10,
                                                      "max_error": 3 * err, "r2": 0.5},
                           "source_before": {"rmse": 1.0, "nrmse": 0.1},
                           "source_after": {"rmse": 1.0 if m == "pac" else 2.0, "nrmse": 0.1},
                           "zero_shot": {"rmse": 5.0, "nrmse": 0.5}, "trainable": 10,
                           "seconds": 0.1, "device": "cpu", "versions": {"pacsim": "x"}}
                    if m == "pac":
                        rec["pac"] = {"summary": [{"name": "net.0.weight", "shape": [4, 4],
                                                   "numel": 16, "essential": 4,
                                                   "essential_share": 0.25}]}
                    lines.append(json.dumps(rec))
    (out / "results.jsonl").write_text("\n".join(lines) + "\n")
    return out


def test_report_from_synthetic_results(tmp_path):
    out = _synthetic(tmp_path)
    text = write_report(out).read_text()
    assert "## Summary" in text and "**alpha**: n=10: PAC wins (0.95x the best baseline, l2sp)" \
        in text
    assert "| pac | **1.81 +- 0.009** | **0.995 +- 0.00495** |" in text
    assert "| l2sp | 100% | 100% |" in text
    assert "| alpha | 1 | 2 (2.00x) | 2 (2.00x) | 1 (1.00x) |" in text
    for name in ("alpha_error_vs_n.png", "forgetting.png", "alpha_pac_layers.png"):
        assert (out / "figures" / name).stat().st_size > 1000
    assert not list(out.glob(".*.tmp"))


@pytest.mark.parametrize("content,match", [
    (None, "no such suite file"),
    ("seeds = [0]\nn_target = [5]\n[pair.x]\nrecipe='r'\nmodel={name='mlp'}", "not found"),
    ("seeds = 'zero'", "'seeds' must be a non-empty list"),
    ("seeds = [0]\nn_target = [5]\nmethods = ['nope']", "unknown methods"),
    ("seeds = [0]\nn_target = [5]\nflavour = 1", "unknown top-level keys"),
    ("seeds = [0\n", "not valid TOML"),
    ("seeds = [0]\nn_target = [5]", "no [pair.NAME] sections"),
])
def test_bad_suites_one_line_exit_2(tmp_path, cli, content, match):
    path = tmp_path / "s.toml"
    if content is not None:
        path.write_text(content)
    with pytest.raises(SuiteError, match=match.replace("[", r"\[").replace("]", r"\]")):
        load_suite(path)
    code, _, err = cli("bench", path, "--out", tmp_path / "o")
    assert code == 2 and err.count("\n") == 1 and "s.toml" in err
    assert not (tmp_path / "o").exists()


def test_report_of_empty_folder_is_an_error(tmp_path, cli):
    code, _, err = cli("report", tmp_path)
    assert code == 2 and "no results" in err


def test_cv_selection_in_the_runner_never_reads_test_data(tmp_path, monkeypatch):
    """Poisoned target test targets change the reported error, never what is chosen."""
    from pacsim.bench import protocol

    top = 'selection = { mode = "cv", folds = 3, max_steps = 6 }'
    path = _suite(tmp_path, seeds=(0,), methods=("head", "l2sp", "pac"), top=top,
                  n_target=(6,))
    clean = tmp_path / "clean"
    run_suite(path, clean, RunOptions(devices="cpu"), log=lambda m: None)
    real_load = protocol.PairData.load

    def poisoned(files):
        data = real_load(files)
        data.target_test = (data.target_test[0], data.target_test[1] * 0 + 1e3)
        data.target_test_y = data.target_test_y * 0 + 1e3
        return data

    monkeypatch.setattr(protocol.PairData, "load", staticmethod(poisoned))
    dirty = tmp_path / "dirty"
    run_suite(path, dirty, RunOptions(devices="cpu"), log=lambda m: None)
    a = {r["method"]: r for r in read_results(clean)}
    b = {r["method"]: r for r in read_results(dirty)}
    assert set(a) == {"head", "l2sp", "pac"}
    for m in a:
        assert a[m]["status"] == b[m]["status"] == "ok"
        assert a[m]["selection"] == b[m]["selection"], m
        assert a[m]["selection"]["mode"] == "cv" and a[m]["selection"]["folds"] == 3
        assert a[m]["steps"] == a[m]["selection"]["steps"] <= a[m]["selection"]["horizon"]
        assert a[m]["target"]["rmse"] != b[m]["target"]["rmse"]
    assert set(a["l2sp"]["selection"]["chosen"]) == {"alpha", "lr"}
    assert set(a["pac"]["selection"]["chosen"]) == {"subspace", "lr"}
    assert a["pac"]["memory_bytes"] < a["head"]["memory_bytes"]
    assert a["head"]["memory_bytes"] == 2 * a["head"]["network_bytes"]
    assert a["pac"]["network_bytes"] == a["head"]["network_bytes"] < a["pac"]["memory_bytes"]


def test_report_survives_a_torn_prediction_file_and_mistyped_records(tmp_path):
    """A prediction file cut short (written atomically now, but a folder may come from
    elsewhere) only loses its figure; a record with a mistyped metric is skipped with a
    warning, as a torn line is."""
    out = tmp_path / "out"
    run_suite(_suite(tmp_path, seeds=(0,), methods=("finetune", "pac"), n_target=(5,)), out,
              RunOptions(devices="cpu"), log=lambda m: None)
    preds = sorted((out / "predictions").glob("*.npz"))
    assert [p.name for p in preds] == ["fried_finetune_n5_s0.npz", "fried_pac_n5_s0.npz"]
    assert not [p for p in (out / "predictions").iterdir() if p.suffix != ".npz"]
    pac = out / "predictions" / "fried_pac_n5_s0.npz"
    pac.write_bytes(pac.read_bytes()[:100])
    lines = (out / "results.jsonl").read_text().splitlines()
    bad = json.loads(lines[0])
    bad["target"]["rmse"] = "abc"
    (out / "results.jsonl").write_text("\n".join([*lines, json.dumps(bad)]) + "\n")
    warnings: list[str] = []
    write_report(out, warn=warnings.append)
    assert any("line 3 skipped" in w and "target.rmse" in w for w in warnings), warnings
    assert any("fried_pac_n5_s0.npz: unreadable predictions" in w for w in warnings), warnings
    assert (out / "report.md").exists() and not (out / "figures" / "fried_scatter.png").exists()


def test_a_damaged_cache_is_trained_again(tmp_path):
    """Caches are written atomically; one damaged on disk is rebuilt (the same model: it
    is deterministic), not a reason for every cell that needs it to fail."""
    out = tmp_path / "out"
    run_suite(_suite(tmp_path, seeds=(0,), methods=("finetune", "pac"), n_target=(5,)), out,
              RunOptions(devices="cpu"), log=lambda m: None)
    caches = sorted((out / "cache").glob("*.pt"))
    assert [p.name.split("_")[0] for p in caches] == ["alloc", "source"]
    first = {p: p.read_bytes() for p in caches}
    for p in caches:
        p.write_bytes(first[p][:50])
    with pytest.warns(UserWarning, match="training it again"):
        run_suite(_suite(tmp_path, seeds=(0,), methods=("finetune", "pac"), n_target=(5,),
                         steps=5),
                  out, RunOptions(devices="cpu"), log=lambda m: None)
    recs = read_results(out)
    assert len(recs) == 4 and all(r["status"] == "ok" for r in recs)
    first_run, second_run = recs[:2], recs[2:]
    assert [r["source_before"] for r in first_run] == [r["source_before"] for r in second_run]
    for p in caches:
        assert p.stat().st_size == len(first[p])


def test_max_seeds_adds_seeds_where_pacs_verdict_is_within_the_seeds_noise(tmp_path,
                                                                          monkeypatch):
    from pacsim.bench import report

    path = _suite(tmp_path, seeds=(0, 1, 2), n_target=(5, 8), top="max_seeds = 5")
    real = report.comparisons
    asked = []

    def noisy_at_5(records):
        rows = real(records)
        asked.append(sorted({r["seed"] for r in records}))
        for row in rows:  # n=5 within the noise, n=8 clear of it
            row["pac ci"] = (0.9, 1.1) if row["n"] == 5 else (1.2, 1.4)
        return rows

    monkeypatch.setattr(report, "comparisons", noisy_at_5)
    out = tmp_path / "out"
    logs = []
    run_suite(path, out, RunOptions(devices="cpu"), log=logs.append)
    recs = [r for r in read_results(out) if r["status"] == "ok"]
    seeds = {n: sorted({r["seed"] for r in recs if r["n_target"] == n}) for n in (5, 8)}
    assert seeds == {5: [0, 1, 2, 3, 4], 8: [0, 1, 2]}
    assert any("fried n=5" in m and "2 more seeds" in m for m in logs)
    assert asked and all(s == [0, 1, 2] for s in asked), "decided on the suite's seeds"
    assert json.loads((out / "machine.json").read_text())["planned"] == {"fried": 18 + 6}
    logs.clear()
    run_suite(path, out, RunOptions(devices="cpu"), log=logs.append)  # resumed: nothing more to run
    assert len(read_results(out)) == len(recs)
    # a dry run on the suite's seeds alone shows the seeds max_seeds will add
    extra = [r for r in recs if r["seed"] > 2]
    lines = (out / "results.jsonl").read_text().splitlines()
    (out / "results.jsonl").write_text("".join(
        line + "\n" for line in lines if json.loads(line)["seed"] <= 2))
    logs.clear()
    run_suite(path, out, RunOptions(devices="cpu"), dry_run=True, log=logs.append)
    assert any("fried n=5" in m and "2 more seeds" in m for m in logs)
    assert any(f"{len(extra)} to run ({len(extra)} new" in m for m in logs), logs
    with pytest.raises(SuiteError, match="max_seeds"):
        load_suite(_suite(tmp_path, seeds=(0, 1, 2), top="max_seeds = 2"))
