"""Successive halving against exhaustive cross-validation, cell by cell.

Runs a suite's cells twice from one warm cache (so the source and allocated models cost
nothing in either timing): selection with ``halving = 0`` (every configuration trains its
whole horizon) and with ``halving = FACTOR``; both extend choices at an edge. Reports per
pair and overall how many cells chose the same configuration and step count, the
optimiser steps the cross-validation trained (``selection.cv_steps``), the cells' wall
time and the target RMSE ratio. Usage:
``python benchmarks/halving.py SUITE --work DIR [--factor 3] [--pairs friedman diode]
[--jobs 1] [--device cuda] [--json OUT.json]``.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import time
from pathlib import Path

import torch
from batch_cells import _subset

from pacsim.bench.results import read_results
from pacsim.bench.runner import RunOptions, run_suite
from pacsim.sysinfo import one_line


def _variant(suite: Path, halving: int, work: Path) -> Path:
    """A copy of ``suite`` whose selection table sets ``halving``."""
    text = suite.read_text()
    line = re.search(r"^selection\s*=\s*\{(.*)\}\s*$", text, flags=re.M)
    if line is None:
        raise SystemExit(f"{suite}: needs a one-line selection table, e.g. "
                         "selection = { mode = \"cv\", folds = 5 }")
    keys = [k for k in line.group(1).split(",") if k.strip() and "halving" not in k]
    new = "selection = {" + ", ".join([*map(str.strip, keys), f"halving = {halving}"]) + " }"
    out = work / f"{suite.stem}-halving{halving}.toml"
    out.write_text(text[: line.start()] + new + text[line.end():])
    return out


def _run(suite: Path, out: Path, jobs: int, device: str) -> float:
    t0 = time.perf_counter()
    run_suite(suite, out, RunOptions(jobs=jobs, devices=device), log=lambda m: None)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("suite", type=Path)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--factor", type=int, default=3)
    ap.add_argument("--pairs", nargs="*", default=None)
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    import tomllib

    pairs = args.pairs or list(tomllib.loads(args.suite.read_text())["pair"])
    base = _subset(args.suite.resolve(), pairs, args.work)  # recipe paths made absolute
    runs = {}
    for h in (0, args.factor):
        suite = _variant(base, h, args.work)
        out = args.work / f"halving{h}"
        if h and not (out / "cache").exists() and (args.work / "halving0" / "cache").exists():
            shutil.copytree(args.work / "halving0" / "cache", out / "cache")
        wall = _run(suite, out, args.jobs, args.device)
        runs[h] = ({(r["pair"], r["method"], r["n_target"], r["seed"]): r
                    for r in read_results(out) if r.get("status") == "ok"}, wall)
    (off, wall_off), (on, wall_on) = runs[0], runs[args.factor]
    cells = sorted(set(off) & set(on))
    rows = []
    for pair in sorted({c[0] for c in cells}) + ["all"]:
        mine = [c for c in cells if pair in ("all", c[0])]
        same = sum(off[c]["selection"]["chosen"] == on[c]["selection"]["chosen"]
                   and off[c]["selection"]["steps"] == on[c]["selection"]["steps"]
                   for c in mine)
        same_config = sum(off[c]["selection"]["chosen"] == on[c]["selection"]["chosen"]
                          for c in mine)
        steps = [sum(r[c]["selection"]["cv_steps"] for c in mine) for r in (off, on)]
        secs = [sum(float(r[c].get("seconds") or 0.0) for c in mine) for r in (off, on)]
        rmse = [on[c]["target"]["rmse"] / off[c]["target"]["rmse"] for c in mine]
        rows.append({"pair": pair, "cells": len(mine), "same_choice": same,
                     "same_config": same_config, "cv_steps_off": steps[0],
                     "cv_steps_on": steps[1], "cell_seconds_off": secs[0],
                     "cell_seconds_on": secs[1], "rmse_ratio_median": statistics.median(rmse),
                     "rmse_ratio_max": max(rmse), "rmse_ratio_min": min(rmse)})
    machine = one_line(torch.device(args.device))
    print(f"{machine}; suite {args.suite}; halving factor {args.factor}; "
          f"wall {wall_off:.0f} s -> {wall_on:.0f} s")
    print("| pair | cells | same choice (config and steps) | same configuration | CV steps "
          "off -> on | cell seconds off -> on | target RMSE on/off median (min-max) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['pair']} | {r['cells']} | {r['same_choice']} | {r['same_config']} | "
              f"{r['cv_steps_off']} -> {r['cv_steps_on']} "
              f"({r['cv_steps_off'] / max(r['cv_steps_on'], 1):.2f}x) | "
              f"{r['cell_seconds_off']:.0f} -> {r['cell_seconds_on']:.0f} "
              f"({r['cell_seconds_off'] / max(r['cell_seconds_on'], 1e-9):.2f}x) | "
              f"{r['rmse_ratio_median']:.3f} ({r['rmse_ratio_min']:.3f}-"
              f"{r['rmse_ratio_max']:.3f}) |")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine, "suite": str(args.suite),
                                         "factor": args.factor, "wall_off": wall_off,
                                         "wall_on": wall_on, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
