"""Cells per second of one small suite under each executor on this machine.

A suite is generated in a temporary folder (the quick suite's Friedman and pendulum
pairs, models and budgets, ``selection = "fixed"`` so a cell is one training), its data
built once, then run from scratch into a fresh results folder by: the local executor
with ``--jobs 1`` and ``--jobs 2``, and Ray (an embedded instance of ``--ray-cpus`` CPUs,
1 CPU per cell). ``--jobs 1`` runs in this process with ``--threads`` torch threads
(default 1, as each worker of ``--jobs 2`` and each 1-CPU Ray task has). Wall time
covers everything ``pacsim bench`` does for the run: source and allocated models, every
cell, and for Ray starting and stopping the instance.
Goal: Ray within 1.15x of the local executor's wall time at the same parallelism, and
both scaling with workers.

Usage: ``python benchmarks/sweep.py [--seeds 2] [--methods finetune head ...]``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SUITE = """
name = "sweep"
seeds = {seeds}
n_target = [20, 100]
methods = {methods}
selection = "fixed"
data_dir = "{data}"

[train]
lr = 1e-3
batch_size = 32
target_steps = {steps}
source_epochs = {source_epochs}
source_batch_size = 64
allocate_epochs = 5

[pair.friedman]
recipe = "{root}/datasets/friedman.toml"
model = {{ name = "mlp", hidden = [64, 64] }}
n_source = 3000
n_target_pool = 600

[pair.pendulum]
recipe = "{root}/datasets/pendulum.toml"
model = {{ name = "mlp", hidden = [64, 64] }}
n_source = 1500
n_target_pool = 600
"""

SAME = ("target", "source_after", "selection", "steps", "source_fingerprint",
        "target_fingerprint")


def write_suite(folder: Path, seeds: int, methods: list[str], steps: int,
                source_epochs: int = 15) -> Path:
    path = folder / "sweep.toml"
    path.write_text(SUITE.format(seeds=list(range(seeds)), methods=json.dumps(methods),
                                 steps=steps, source_epochs=source_epochs,
                                 data=(folder / "data").as_posix(),
                                 root=ROOT.as_posix()))
    return path


def measure(suite: Path, folder: Path, runs: list[tuple[str, dict]]) -> list[dict]:
    """Wall seconds of each run of ``suite`` into a fresh folder."""
    from pacsim.bench.results import read_results
    from pacsim.bench.runner import RunOptions, run_suite

    rows = []
    for name, kwargs in runs:
        out = folder / name.replace(" ", "_").replace("-", "")
        marks: dict[str, float] = {}

        def log(line: str, marks: dict[str, float] = marks) -> None:
            if line.startswith("ray:"):
                marks["ray_up"] = time.perf_counter()

        t0 = time.perf_counter()
        run_suite(suite, out, RunOptions(**kwargs), log=log)
        wall = time.perf_counter() - t0
        recs = read_results(out)
        ok = [r for r in recs if r["status"] == "ok"]
        rows.append({"run": name, "cells": len(recs), "ok": len(ok), "wall_s": wall,
                     "cells_per_s": len(recs) / wall,
                     "ray_start_s": marks["ray_up"] - t0 if "ray_up" in marks else None,
                     "records": {(r["pair"], r["method"], r["n_target"], r["seed"]):
                                 [r.get(k) for k in SAME] for r in recs}})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--steps", type=int, default=600,
                   help="target steps per cell (default 600: long enough that starting "
                        "workers is not the whole story)")
    p.add_argument("--source-epochs", type=int, default=15)
    p.add_argument("--methods", nargs="+", default=["finetune", "head", "l2sp", "bitfit",
                                                     "pac"])
    p.add_argument("--jobs", type=int, nargs="+", default=[1, 2],
                   help="local runs: --jobs of each (default 1 2)")
    p.add_argument("--ray-jobs", type=int, nargs="+", default=[2],
                   help="Ray runs: cells at a time of each (default 2)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads of the in-process --jobs 1 run (default 1)")
    args = p.parse_args()

    import os

    import torch

    from pacsim.bench.suite import load_suite
    from pacsim.sims import recipes
    from pacsim.sysinfo import one_line

    ncpu = os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="pacsim-sweep-") as tmp:
        folder = Path(tmp)
        suite = write_suite(folder, args.seeds, args.methods, args.steps, args.source_epochs)
        s = load_suite(suite)
        for spec in s.pairs.values():  # data once, outside the timings
            recipes.build(spec.recipe, s.data_dir, log=lambda m: None)
        # the local executor gives each of N workers cpu_count // N torch threads; Ray
        # gets the same (N cells at a time, cpu_count // N CPUs each) for a fair race
        def threads(j: int) -> int:
            return args.threads if j == 1 else max(1, ncpu // j)

        runs = [(f"local --jobs {j}", j, threads(j), {"jobs": j, "devices": "cpu"})
                for j in args.jobs]
        runs += [(f"ray, {j} at a time", j, threads(j),
                  {"executor": "ray", "jobs": j, "cpus_per_cell": threads(j)})
                 for j in args.ray_jobs]
        machine = one_line(torch.device("cpu"))
        torch.set_num_threads(args.threads)  # the in-process run; workers set their own
        rows = measure(suite, folder, [(name, kw) for name, _, _, kw in runs])
    print(f"machine: {machine}")
    print(f"suite: {len(s.pairs)} pairs, {len(s.methods)} methods, {args.seeds} seeds, "
          f"n_target [20, 100], {args.steps} target steps, fixed budget: "
          f"{len(s.cells())} cells, {len(s.pairs) * args.seeds} source models")
    base = rows[0]["wall_s"]
    print(f"\n| executor | threads per cell | cells ok | wall s | cells/s | "
          f"speed-up vs {rows[0]['run']} | of which Ray start s |")
    print("|---|---|---|---|---|---|---|")
    for (_, _, threads, _), r in zip(runs, rows):
        start = f"{r['ray_start_s']:.1f}" if r["ray_start_s"] is not None else "-"
        print(f"| {r['run']} | {threads} | {r['ok']}/{r['cells']} | {r['wall_s']:.1f} | "
              f"{r['cells_per_s']:.2f} | {base / r['wall_s']:.2f}x | {start} |")
    local = {j: r for (_, j, _, kw), r in zip(runs, rows) if "executor" not in kw}
    print()
    for (_, j, _, kw), r in zip(runs, rows):
        if "executor" in kw and j in local:
            same = r["records"] == local[j]["records"]
            print(f"Ray / local --jobs {j} wall time: {r['wall_s'] / local[j]['wall_s']:.2f}x "
                  f"(goal <= 1.15); records equal (metrics, choices, fingerprints): "
                  f"{'yes' if same else 'NO'}")


if __name__ == "__main__":
    main()
