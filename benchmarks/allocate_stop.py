"""When PAC's allocate should stop: once the source validation loss is back at the
unpruned model's (``allocate_stop="reference"``) or when ``allocate_patience`` epochs
bring no improvement (``"patience"``, the default).

Runs ``pac`` alone on the base suite's ``--pairs`` at ``--n`` with ``final = "best"``
and ``allocate_stop = "patience"`` through the benchmark runner, and compares each cell
with the same cell of ``--reference`` runs of :mod:`final_state` (``final = "best"``,
``allocate_stop = "reference"``, every method): per pair the allocated source model's
test RMSE over the unpruned model's under each stop, the ratio kept, allocate's epochs
and seconds; per (pair, n) PAC's mean target RMSE under each stop and its ratio to the
best baseline of the reference run (the same seeds). Writes ``allocate_stop.md`` and
``summary.json`` into ``--work``; the run resumes.
Usage: ``python benchmarks/allocate_stop.py --work DIR --pairs diode --n 10 30 100
--reference benchmarks/results/final_state/diode [more runs] [--jobs 1] [--report-only]``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from final_state import BASE, _cells, bench, write_suite

from pacsim.bench.profiles import problem_means, ratios_to_best
from pacsim.bench.results import read_results
from pacsim.bench.suite import config_hash
from pacsim.io import load_checkpoint
from pacsim.method_names import is_baseline
from pacsim.plots import paired
from pacsim.sysinfo import one_line

METHOD = "pac"


def patience(raw: dict[str, Any]) -> str:
    """Only ``pac``, with ``allocate_stop = "patience"`` wherever the suite sets pac's
    options (the suite's and each pair's own table)."""
    raw["methods"] = [METHOD]
    tables = [raw.setdefault("method", {})] + [p["method"] for p in raw["pair"].values()
                                                if "method" in p]
    for table in tables:
        table.setdefault(METHOD, {})["allocate_stop"] = "patience"
        for other in [m for m in table if m != METHOD]:
            del table[other]
    return ', pac alone with allocate_stop = "patience"'


def _key(config: dict[str, Any], keys: Any = None) -> str:
    """A cached allocation's identity: the hash of its whole configuration (source data,
    model, training and allocate options). A cell's record holds the same keys in its
    configuration: ``keys`` picks them (those of the cached allocation's)."""
    return config_hash({k: config.get(k) for k in (config if keys is None else keys)})


def allocation(records: dict[tuple[str, str, int, int], dict[str, Any]],
               run: Path | None = None) -> dict[tuple[str, int], dict[str, Any]]:
    """(pair, seed) -> the allocated source's test RMSE over the unpruned model's and the
    ratio kept (from the records); allocate's epochs at that ratio and its seconds over
    every ratio tried, from ``run``'s cached models where they are still there."""
    cached, keys = {}, None
    for path in sorted((run / "cache").glob("alloc_*.pt")) if run is not None else []:
        meta = load_checkpoint(path)[2]
        history = meta["allocate"].get("history") or {}
        keys = list(meta["config"])
        cached[_key(meta["config"])] = {
            "epochs": len(history.get("val_loss", [])) or None, "seconds": meta["seconds"]}
    out = {}
    for (pair, _, _, seed), r in sorted(records.items()):
        found = cached.get(_key(r["config"], keys)) if keys is not None else None
        out[(pair, seed)] = {
            "source_ratio": r["source_after"]["rmse"] / r["source_before"]["rmse"],
            "ratio": r["pac"]["allocate"].get("ratio"),
            **(found or {"epochs": None, "seconds": None})}
    return out


def compare(new: dict[tuple[str, str, int, int], dict[str, Any]],
            ref: dict[tuple[str, str, int, int], dict[str, Any]]) -> dict[str, Any]:
    """Per (pair, n): PAC's mean target RMSE under each stop and its ratio to the best
    baseline of ``ref``, on the seeds both runs finished."""
    rows = []
    for pair, n in sorted({(k[0], k[2]) for k in new}):
        seeds = sorted(k[3] for k in new if k[:3] == (pair, METHOD, n)
                       and (pair, METHOD, n, k[3]) in ref)
        if not seeds:
            continue
        recs = [r for k, r in ref.items() if k[0] == pair and k[2] == n and k[3] in seeds]
        recs += [{**new[(pair, METHOD, n, s)], "method": "pac (patience)"} for s in seeds]
        means = problem_means(recs).get((pair, n))
        if means is None:  # no seed where every method finished
            continue
        baselines = [m for m in means if is_baseline(m) and m != "pac (patience)"]
        ratios = ratios_to_best({(pair, n): means}, reference=baselines)
        rows.append({"pair": pair, "n": n, "seeds": len({r["seed"] for r in paired(recs, pair, n)}),
                     "reference": means[METHOD], "patience": means["pac (patience)"],
                     "ratio_reference": ratios[METHOD][(pair, n)],
                     "ratio_patience": ratios["pac (patience)"][(pair, n)]})
    return {"cells": rows}


def report(result: dict[str, Any], alloc_new: dict, alloc_ref: dict) -> list[str]:
    lines = ["| pair | seeds | source RMSE / unpruned, reference | patience | ratio kept, "
             "reference | patience | allocate epochs, reference | patience | "
             "allocate seconds, reference | patience |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for pair in sorted({p for p, _ in alloc_new}):
        keys = [k for k in alloc_new if k[0] == pair and k in alloc_ref]
        if not keys:
            continue

        def col(table: dict, field: str, ks: list = keys) -> str:
            vals = [table[k][field] for k in ks if table[k][field] is not None]
            if not vals:
                return "-"
            if field == "source_ratio":
                return f"{np.exp(np.mean(np.log(vals))):.3f} ({min(vals):.2f}-{max(vals):.2f})"
            if field == "ratio":
                return ", ".join(f"{v:g}" for v in sorted(set(vals)))
            return f"{np.mean(vals):.0f}"
        lines.append(f"| {pair} | {len(keys)} | {col(alloc_ref, 'source_ratio')} | "
                     f"{col(alloc_new, 'source_ratio')} | {col(alloc_ref, 'ratio')} | "
                     f"{col(alloc_new, 'ratio')} | {col(alloc_ref, 'epochs')} | "
                     f"{col(alloc_new, 'epochs')} | {col(alloc_ref, 'seconds')} | "
                     f"{col(alloc_new, 'seconds')} |")
    lines += ["", "| pair | n | seeds | pac RMSE, reference | patience | patience / reference "
              "| ratio to the best baseline, reference | patience |",
              "|---|---|---|---|---|---|---|---|"]
    for r in result["cells"]:
        lines.append(f"| {r['pair']} | {r['n']} | {r['seeds']} | {r['reference']:.4g} | "
                     f"{r['patience']:.4g} | {r['patience'] / r['reference']:.3f} | "
                     f"{r['ratio_reference']:.3f} | {r['ratio_patience']:.3f} |")
    if result["cells"]:
        for name in ("reference", "patience"):
            v = [r[f"ratio_{name}"] for r in result["cells"]]
            lines.append(f"\n`pac` with allocate_stop = \"{name}\": ratio to the best baseline "
                         f"{np.exp(np.mean(np.log(v))):.3f} in geometric mean, "
                         f"{max(v):.2f} at worst, over {len(v)} problems.")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--base", type=Path, default=BASE)
    ap.add_argument("--reference", type=Path, nargs="+", required=True,
                    help="final_state.py --work folders (final='best', every method)")
    ap.add_argument("--pairs", nargs="+", default=["diode"])
    ap.add_argument("--n", nargs="+", type=int, default=[10, 30, 100])
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args()
    run = args.work / "run"
    seconds = None
    if not args.report_only:
        suite = write_suite(args.base, args.pairs, args.n, args.work, edit=patience,
                            script="benchmarks/allocate_stop.py")
        seconds = bench(suite, run, args.jobs)
    new = _cells(read_results(run), args.pairs, args.n)
    ref: dict = {}
    per_folder = {folder: _cells(read_results(folder / "run"), args.pairs, args.n)
                  for folder in args.reference}
    for cells in per_folder.values():
        ref |= cells
    result = compare(new, ref)
    if not result["cells"]:
        raise SystemExit(f"no cell finished in both {run} and {args.reference}")
    pac_ref = {k: r for k, r in ref.items() if k[1] == METHOD}
    alloc_new = allocation(new, run)
    alloc_ref = {}
    for folder, cells in per_folder.items():
        alloc_ref |= allocation({k: r for k, r in pac_ref.items() if k in cells}, folder / "run")
    machine = one_line(torch.device("cpu"))
    text = [f"PAC's allocate stop, {', '.join(args.pairs)} at n = "
            f"{', '.join(map(str, args.n))}, on {machine}; reference "
            f"{', '.join(map(str, args.reference))}.", ""] + report(result, alloc_new, alloc_ref)
    (args.work / "allocate_stop.md").write_text("\n".join(text) + "\n")
    summary = {"machine": machine, "seconds": seconds, **result,
               "allocation": {f"{p}|{s}": {"patience": alloc_new[(p, s)],
                                           "reference": alloc_ref.get((p, s))}
                              for p, s in alloc_new}}
    (args.work / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print("\n".join(text))


if __name__ == "__main__":
    main()
