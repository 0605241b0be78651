"""A suite's wall time with one cell a task against ``--batch-cells K``.

Runs the suite once to train its cached source and allocated models, then, from copies
of that cache (so prepare costs nothing in either timing), runs every cell again with
each batch size and reports per pair the wall time of its cells, how many cells chose
the same configuration and step count as one cell a task, and the median ratio of the
target RMSEs. ``--reuse RESULTS_DIR`` takes the cache of an earlier run of the suite
instead of warming one, and that run's records as the baseline (its cells are not run
again). Usage:
``python benchmarks/batch_cells.py SUITE --work DIR [--ks 1 7 64] [--jobs 1]
[--pairs friedman pendulum] [--reuse DIR] [--device cuda] [--json OUT.json]``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
from pathlib import Path

import torch

from pacsim.bench.results import read_results
from pacsim.bench.runner import RunOptions, run_suite
from pacsim.bench.suite import load_suite
from pacsim.sysinfo import one_line


def _subset(suite: Path, pairs: list[str] | None, work: Path) -> Path:
    """The suite, or a copy with only ``pairs`` (resolving its relative recipe paths)."""
    if not pairs:
        return suite
    import tomllib

    raw = tomllib.loads(suite.read_text())
    text = suite.read_text()
    keep = set(pairs)
    unknown = keep - set(raw["pair"])
    if unknown:
        raise SystemExit(f"{suite}: no pair {sorted(unknown)[0]!r}")
    lines, skip = [], False
    for line in text.splitlines():
        if line.startswith("[pair."):
            skip = line[len("[pair."):].split("]")[0].split(".")[0] not in keep
        elif line.startswith("[") and not line.startswith("[pair."):
            skip = False
        if not skip:
            if line.startswith("recipe = "):
                rel = line.split("=", 1)[1].strip().strip('"')
                line = f'recipe = "{(suite.parent / rel).resolve().as_posix()}"'
            lines.append(line)
    out = work / suite.name
    out.write_text("\n".join(lines) + "\n")
    return out


def _k(value: str) -> int | str:
    return value if value == "auto" else int(value)


def _run(suite: Path, out: Path, k: int | str, jobs: int, device: str) -> float:
    t0 = time.perf_counter()
    run_suite(suite, out, RunOptions(jobs=jobs, devices=device, batch_cells=k),
              log=lambda m: None)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("suite", type=Path)
    ap.add_argument("--work", type=Path, required=True, help="a folder for the runs")
    ap.add_argument("--ks", type=_k, nargs="+", default=[1, 7, 64],
                    help="batch sizes: integers or auto")
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]")
    ap.add_argument("--pairs", nargs="*", default=None)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--reuse", type=Path, default=None,
                    help="an earlier run's folder: its cache and records (the baseline)")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    suite = _subset(args.suite, args.pairs, args.work)
    pairs = list(load_suite(suite).pairs)
    rows: dict[int | str, dict] = {}  # by K, and "earlier" for --reuse
    if args.reuse is not None:
        warm = args.reuse
        rows["earlier"] = {"wall_s": None, "records": {
            (r["pair"], r["method"], r["n_target"], r["seed"]): r
            for r in read_results(warm) if r.get("status") == "ok" and r["pair"] in pairs}}
    else:
        warm = args.work / "warm"
        print(f"warming the cache in {warm} ...", flush=True)
        _run(suite, warm, args.ks[0], args.jobs, args.device)
    for k in args.ks:
        out = args.work / f"k{k}"
        shutil.rmtree(out, ignore_errors=True)
        shutil.copytree(warm / "cache", out / "cache")
        wall = _run(suite, out, k, args.jobs, args.device)
        recs = {(r["pair"], r["method"], r["n_target"], r["seed"]): r
                for r in read_results(out)}
        rows[k] = {"wall_s": wall, "records": recs}
        print(f"K={k}: {wall:.1f} s", flush=True)
    ks: list[int | str] = (["earlier"] if args.reuse is not None else []) + list(args.ks)
    base = rows[ks[0]]["records"]
    result = {"machine": one_line(torch.device(args.device)), "jobs": args.jobs,
              "suite": str(args.suite), "pairs": {}}
    print(result["machine"], f"jobs={args.jobs}")
    print("| pair | K | cells | cell seconds (sum) | speedup | same choice | "
          "median RMSE ratio |")
    print("|---|---|---|---|---|---|---|")
    for pair in pairs:
        keys = [c for c in base if c[0] == pair
                and all(c in rows[k]["records"] for k in ks)]
        ref = sum(base[c]["seconds"] for c in keys)
        for k in ks:
            recs = rows[k]["records"]
            secs = sum(recs[c]["seconds"] for c in keys)
            same = sum(recs[c]["selection"]["chosen"] == base[c]["selection"]["chosen"]
                       and recs[c]["steps"] == base[c]["steps"] for c in keys)
            ratio = statistics.median(recs[c]["target"]["rmse"] / base[c]["target"]["rmse"]
                                      for c in keys)
            result["pairs"].setdefault(pair, {})[k] = {
                "cells": len(keys), "seconds": secs, "speedup": ref / secs,
                "same_choice": same, "median_rmse_ratio": ratio}
            print(f"| {pair} | {k} | {len(keys)} | {secs:.1f} | {ref / secs:.2f}x | "
                  f"{same}/{len(keys)} | {ratio:.4f} |")
    result["wall_s"] = {k: rows[k]["wall_s"] for k in args.ks}
    print("wall time:", ", ".join(f"K={k}: {rows[k]['wall_s']:.1f} s" for k in args.ks))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
