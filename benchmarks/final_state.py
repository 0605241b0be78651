"""Which state of the final retrain to keep: the chosen step's (``final="last"``) or the
epoch with the lowest loss on the n target samples (``final="best"``).

At a constant high learning rate the target loss of a small network spikes now and then;
cross-validation picks a step count from the folds' mean curve, and the final retrain on
all n samples can stop on a spike of its own. This script runs the base suite's
``--pairs`` at ``--n`` with ``selection.final = "best"`` through the benchmark runner and
compares every cell with the same cell of a ``--reference`` run of the base suite (same
seeds, data, grids and folds; ``final="last"``): per (pair, n, method) the mean target
RMSE under each and the worst seed over the median seed (a spike's signature), and per
method the ratio to the per-problem best baseline (geometric mean, worst), ``auto``
included. Writes ``final_state.md`` and ``summary.json`` into ``--work``; the run resumes.
Usage: ``python benchmarks/final_state.py --work benchmarks/results/final_state
[--pairs diode] [--n 30 100] [--reference benchmarks/results/full-v3] [--jobs 2]
[--report-only]``; ``--combine WORK...`` writes the ratio summary over every problem
of the reference with those runs' problems under "best" (``combined.md``).
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import tomllib
import torch
from pac_width import _toml, pair_lines, pair_spec

from pacsim.bench.profiles import auto_records, problem_means, ratio_summary, ratios_to_best
from pacsim.bench.results import latest, read_results
from pacsim.plots import ok_records
from pacsim.sysinfo import one_line

BASE = Path(__file__).parent / "suites" / "full-v3.toml"  # the reference run's suite


def write_suite(base: Path, pairs: list[str], ns: list[int], out: Path,
                edit: Callable[[dict[str, Any]], str] | None = None,
                script: str = "benchmarks/final_state.py") -> Path:
    """``base`` with only ``pairs`` at sizes ``ns`` and ``selection.final = "best"``;
    everything else (seeds, methods, grids, training) as in ``base``, so each cell
    differs from the base suite's only in the final state kept. ``max_seeds`` is
    dropped: the comparison is on the base seeds, which the reference has. ``edit``
    changes the parsed base in place and returns what it changed, for the header, which
    names the ``script`` that wrote the suite."""
    raw = tomllib.loads(base.read_text())
    what = edit(raw) if edit is not None else ""
    selection = raw.get("selection", {"mode": "cv"})
    selection = {"mode": selection} if isinstance(selection, str) else dict(selection)
    selection["final"] = "best"
    ddir = raw.get("data_dir", f"datasets/built/{raw['name']}")  # the base's datasets
    lines = [f"# {base.name}'s {', '.join(pairs)} with final = \"best\"{what} ({script})"]
    lines += [f"{k} = {_toml(v)}" for k, v in raw.items()
              if k not in ("pair", "train", "selection", "data_dir", "n_target", "max_seeds")]
    lines += [f"n_target = {_toml(ns)}", f"selection = {_toml(selection)}",
              f"data_dir = {_toml(ddir)}", "", "[train]"]
    lines += [f"{k} = {_toml(v)}" for k, v in raw["train"].items()]
    for pair in pairs:
        spec = pair_spec(base, raw, pair, out)
        if "n_target" in spec:
            spec["n_target"] = [n for n in spec["n_target"] if n in ns]
        lines += pair_lines(pair, spec)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "suite.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def bench(suite: Path, run: Path, jobs: int) -> float:
    """``pacsim bench suite --out run --jobs jobs`` (it resumes); its wall seconds."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "pacsim", "bench", str(suite), "--out", str(run),
                    "--jobs", str(jobs)], check=True)
    return time.perf_counter() - t0


def _cells(records: list[dict[str, Any]], pairs: list[str] | None = None,
           ns: list[int] | None = None) -> dict[tuple[str, str, int, int], dict[str, Any]]:
    """Finished cells by (pair, method, n, seed); ``None`` keeps every pair or size."""
    return {(r["pair"], r["method"], r["n_target"], r["seed"]): r
            for r in ok_records(latest(records))
            if (pairs is None or r["pair"] in pairs) and (ns is None or r["n_target"] in ns)}


def compare(best: list[dict[str, Any]], last: list[dict[str, Any]]) -> dict[str, Any]:
    """Per (pair, n, method) and per method, "last" against "best" on the cells both
    finished (and, per problem, the seeds where every method finished under both)."""
    a = {k: r for k, r in last.items() if k in best}
    b = {k: r for k, r in best.items() if k in a}
    rows = []
    for pair, method, n in sorted({k[:3] for k in a}):
        ks = sorted(k for k in a if k[:3] == (pair, method, n))
        ra = np.array([a[k]["target"]["rmse"] for k in ks])
        rb = np.array([b[k]["target"]["rmse"] for k in ks])
        rows.append({"pair": pair, "method": method, "n": n, "seeds": len(ks),
                     "last": float(ra.mean()), "best": float(rb.mean()),
                     "spread_last": float(ra.max() / np.median(ra)),
                     "spread_best": float(rb.max() / np.median(rb)),
                     "same_steps": sum(a[k]["selection"]["steps"] == b[k]["selection"]["steps"]
                                       for k in ks)})
    ratios = {}
    for name, recs in (("last", list(a.values())), ("best", list(b.values()))):
        recs = recs + auto_records(recs)
        ratios[name] = {r["method"]: r for r in ratio_summary(ratios_to_best(
            problem_means(recs)))}
    return {"cells": rows, "ratios": ratios}


def combine(reference: Path, works: list[Path]) -> dict[str, Any]:
    """Every problem of ``reference``, with the problems a ``works`` run covers replaced
    by its "best" cells (the reference's cells of those problems kept only for the
    same seeds, as "last"): the ratio summary the whole reference suite would have with
    "best" where it was measured, and "last" elsewhere."""
    last = _cells(read_results(reference))
    best = dict(last)
    for work in works:
        runs = _cells(read_results(work / "run"))
        problems = {(k[0], k[2]) for k in runs}
        best = {k: r for k, r in best.items() if (k[0], k[2]) not in problems} | runs
    result = compare(best, {k: r for k, r in last.items() if k in best})
    result["rerun"] = sorted({(k[0], k[2]) for w in works
                              for k in _cells(read_results(w / "run"))})
    return result


def table(result: dict[str, Any]) -> list[str]:
    lines = ["| pair | n | method | seeds | mean RMSE, last | mean RMSE, best | best / last | "
             "worst / median seed, last | ..., best |", "|---|---|---|---|---|---|---|---|---|"]
    for r in result["cells"]:
        lines.append(f"| {r['pair']} | {r['n']} | {r['method']} | {r['seeds']} | "
                     f"{r['last']:.4g} | {r['best']:.4g} | {r['best'] / r['last']:.3f} | "
                     f"{r['spread_last']:.2f} | {r['spread_best']:.2f} |")
    return lines + [""] + ratio_table(result)


def ratio_table(result: dict[str, Any]) -> list[str]:
    """Per method, the ratio to the per-problem best baseline under "last" and "best"."""
    lines = ["| method | last: geometric mean | last: worst | best: geometric mean | "
             "best: worst |", "|---|---|---|---|---|"]
    last, best = result["ratios"]["last"], result["ratios"]["best"]
    for m in sorted(last, key=lambda m: last[m]["geomean"]):
        if m in best:
            lines.append(f"| {m} | {last[m]['geomean']:.3f} | {last[m]['worst']:.2f} | "
                         f"{best[m]['geomean']:.3f} | {best[m]['worst']:.2f} |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--base", type=Path, default=BASE)
    ap.add_argument("--reference", type=Path, default=Path("benchmarks/results/full-v3"),
                    help="a run of --base (final='last') to compare with")
    ap.add_argument("--pairs", nargs="+", default=["diode"])
    ap.add_argument("--n", nargs="+", type=int, default=[30, 100])
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--combine", type=Path, nargs="+", metavar="WORK",
                    help="no run: the ratio summary over every problem of --reference, "
                    "with these earlier --work folders' problems under 'best'; writes "
                    "combined.md into --work")
    args = ap.parse_args()
    if args.combine:
        result = combine(args.reference, args.combine)
        problems = len({(r["pair"], r["n"]) for r in result["cells"]})
        rerun = ", ".join(f"{p} n={n}" for p, n in result["rerun"])
        text = [f"All {problems} problems of {args.reference}: \"best\" measured on "
                f"{rerun} ({', '.join(map(str, args.combine))}), \"last\" elsewhere.",
                ""] + ratio_table(result)
        args.work.mkdir(parents=True, exist_ok=True)
        (args.work / "combined.md").write_text("\n".join(text) + "\n")
        print("\n".join(text))
        return
    run = args.work / "run"
    machine = one_line(torch.device("cpu"))
    seconds = None
    if not args.report_only:
        suite = write_suite(args.base, args.pairs, args.n, args.work)
        seconds = bench(suite, run, args.jobs)
    result = compare(_cells(read_results(run), args.pairs, args.n),
                     _cells(read_results(args.reference), args.pairs, args.n))
    if not result["cells"]:
        raise SystemExit(f"no cell finished in both {run} and {args.reference}")
    text = [f"Final retrain state, {', '.join(args.pairs)} at n = "
            f"{', '.join(map(str, args.n))}, on {machine}; reference {args.reference}.",
            ""] + table(result)
    (args.work / "final_state.md").write_text("\n".join(text) + "\n")
    summary = {"machine": machine, "seconds": seconds, "reference": str(args.reference),
               **result}
    (args.work / "summary.json").write_text(json.dumps(
        summary, indent=1, default=lambda v: None if isinstance(v, float) and
        not math.isfinite(v) else str(v)) + "\n")
    print("\n".join(text))


if __name__ == "__main__":
    main()
