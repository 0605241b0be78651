"""PAC variants under the fair protocol: each variant is chosen by the same target-only
cross-validation as the suite (same folds, step grid and grid size), on the suite's
cached source and allocated models and target subsets.

Prints target test RMSE (physical units) per variant, mean over the seeds, beside the
best CV-selected baseline of ``results.jsonl`` on the same cells when present. Usage:
``python benchmarks/pac_variants.py [--pairs friedman pendulum] [--n 10 100] [--seeds 0 1 2]``
(missing cached models are trained first).
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from typing import Any

import numpy as np
import torch

from pacsim.bench import load_suite
from pacsim.bench.protocol import Context, prepare
from pacsim.bench.results import latest, read_results
from pacsim.sysinfo import one_line
from pacsim.transfer import select

BASELINES = ("scratch", "finetune", "head", "l2sp", "bitfit")

#: name -> (grid, fixed options); every grid has the suite's size (4 configurations).
VARIANTS: dict[str, tuple[Any, dict[str, Any]]] = {
    "subspace all/last x lr": ({"subspace": ["all", "last"], "lr": [1e-3, 1e-2]}, {}),
    "subspace ladder": ([{"subspace": ["all"], "lr": [1e-3, 1e-2]},
                         {"subspace": ["last", "biases"], "lr": [1e-2]}], {}),
    "lr fixed, grid lam x subspace": ({"lam": [0.0, 0.01], "subspace": ["all", "last"]}, {}),
    "subspace all, grid lam x lr": ({"lam": [0.0, 0.01], "lr": [1e-3, 1e-2]}, {}),
    "no target biases, all/last x lr": ({"subspace": ["all", "last"], "lr": [1e-3, 1e-2]},
                                        {"train_biases": False}),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--suite", default="benchmarks/suites/full-v2.toml")
    ap.add_argument("--results", default="benchmarks/results/full")
    ap.add_argument("--pairs", nargs="+", default=["friedman", "pendulum"])
    ap.add_argument("--n", nargs="+", type=int, default=[10, 100])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    args = ap.parse_args()
    torch.set_num_threads(1)
    suite = load_suite(args.suite)
    ctx = Context(suite, args.results, "cpu")
    done = [r for r in latest(read_results(args.results)) if r.get("status") == "ok"]
    print(one_line(torch.device("cpu")))
    print("| pair | n | " + " | ".join(VARIANTS) + " | best CV baseline |")
    print("|---|---|" + "---|" * (len(VARIANTS) + 1))
    for pair in args.pairs:
        spec = suite.pairs[pair]
        data = ctx.data(pair)
        for n in args.n:
            errs: dict[str, list[float]] = defaultdict(list)
            for seed in args.seeds:
                failed = prepare(ctx, pair, seed, ["pac"])
                if failed:
                    raise SystemExit(f"{pair} seed {seed}: {failed['pac']}")
                source = ctx.load(ctx.source_cache(pair, seed))[0]
                alloc_path = ctx.allocate_cache(pair, seed, "pac")
                assert alloc_path is not None
                allocated = ctx.load(alloc_path)[:2]
                target = data.subset(seed, n)
                for name, (grid, options) in VARIANTS.items():
                    res = select("pac", source, target, selection=suite.selection,
                                 steps=spec.train.target_steps, grid=grid,
                                 options={**suite.methods["pac"].options.to_dict(), **options},
                                 batch_size=spec.train.batch_size, allocated=allocated,
                                 **ctx.fit_kwargs(pair, seed))
                    errs[name].append(data.physical(res.model, data.target_test,
                                                    data.target_test_y)[0]["rmse"])
            base = defaultdict(list)
            for r in done:
                if (r["pair"], r["n_target"]) == (pair, n) and r["seed"] in args.seeds \
                        and r["method"] in BASELINES:
                    base[r["method"]].append(r["target"]["rmse"])
            full = {m: float(np.mean(v)) for m, v in base.items() if len(v) == len(args.seeds)}
            best = min(full, key=full.get) if full else None
            cells = [f"{np.mean(errs[k]):.4g}" for k in VARIANTS]
            cells.append(f"{full[best]:.4g} ({best})" if best else "-")
            print(f"| {pair} | {n} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
