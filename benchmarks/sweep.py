"""Cells per second of one small suite under each executor on this machine.

A suite is generated in a temporary folder (the quick suite's Friedman and pendulum
pairs, models and budgets, ``selection = "fixed"`` so a cell is one training), its data
built once, then run from scratch into a fresh results folder by: the local executor
with ``--jobs 1`` and ``--jobs 2``, and Ray (an embedded instance of ``--ray-cpus`` CPUs,
1 CPU per cell). Wall time covers everything ``pacsim bench`` does for the run: source
and allocated models, every cell, and for Ray starting and stopping the instance.
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
    from pacsim.bench.runner import run_suite

    rows = []
    for name, kwargs in runs:
        out = folder / name.replace(" ", "_").replace("-", "")
        marks: dict[str, float] = {}

        def log(line: str, marks: dict[str, float] = marks) -> None:
            if line.startswith("ray:"):
                marks["ray_up"] = time.perf_counter()

        t0 = time.perf_counter()
        run_suite(suite, out, log=log, **kwargs)
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
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--source-epochs", type=int, default=15)
    p.add_argument("--methods", nargs="+", default=["finetune", "head", "l2sp", "bitfit",
                                                     "pac"])
    p.add_argument("--ray-cpus", type=int, default=2)
    args = p.parse_args()

    import torch

    from pacsim.bench.suite import load_suite
    from pacsim.sims import recipes
    from pacsim.sysinfo import one_line

    with tempfile.TemporaryDirectory(prefix="pacsim-sweep-") as tmp:
        folder = Path(tmp)
        suite = write_suite(folder, args.seeds, args.methods, args.steps, args.source_epochs)
        s = load_suite(suite)
        for spec in s.pairs.values():  # data once, outside the timings
            recipes.build(spec.recipe, s.data_dir, log=lambda m: None)
        runs = [("local --jobs 1", {"jobs": 1, "devices": "cpu"}),
                ("local --jobs 2", {"jobs": 2, "devices": "cpu"}),
                (f"ray, {args.ray_cpus} CPUs", {"executor": "ray", "jobs": args.ray_cpus})]
        rows = measure(suite, folder, runs)
    print(f"machine: {one_line(torch.device('cpu'))}")
    print(f"suite: {len(s.pairs)} pairs, {len(s.methods)} methods, {args.seeds} seeds, "
          f"n_target [20, 100], {args.steps} target steps, fixed budget: "
          f"{len(s.cells())} cells, {len(s.pairs) * args.seeds} source models")
    base = rows[0]["wall_s"]
    print("\n| executor | cells ok | wall s | cells/s | speed-up vs --jobs 1 | of which "
          "Ray start s |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        start = f"{r['ray_start_s']:.1f}" if r["ray_start_s"] is not None else "-"
        print(f"| {r['run']} | {r['ok']}/{r['cells']} | {r['wall_s']:.1f} | "
              f"{r['cells_per_s']:.2f} | {base / r['wall_s']:.2f}x | {start} |")
    print(f"\nRay / local --jobs 2 wall time: {rows[2]['wall_s'] / rows[1]['wall_s']:.2f}x "
          "(goal <= 1.15)")
    same = rows[2]["records"] == rows[1]["records"]
    print(f"Ray records equal to local --jobs 2 (metrics, choices, fingerprints): "
          f"{'yes' if same else 'NO'}")


if __name__ == "__main__":
    main()
