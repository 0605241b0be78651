"""PAC variants on the full suite's cached models: the paper's setting, trainable biases,
and no penalty on the freed weights (lam = 0).

Same source/allocated models, target subsets and step budget as ``pacsim bench``
(missing cached models are trained first). Prints target RMSE (physical units), mean
over seeds. Usage: ``python benchmarks/pac_ablation.py [--pairs friedman pendulum]``.
"""

from __future__ import annotations

import argparse
import math

import numpy as np
import torch

from pacsim.bench.runner import Context, prepare
from pacsim.sysinfo import one_line
from pacsim.transfer import adapt

VARIANTS = {"pac (lam 0.01)": {}, "pac + train_biases": {"train_biases": True},
            "pac, lam 0": {"lam": 0.0}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--suite", default="benchmarks/suites/full.toml")
    ap.add_argument("--results", default="benchmarks/results/full")
    ap.add_argument("--data", default="datasets/built/full")
    ap.add_argument("--pairs", nargs="+", default=["friedman", "pendulum"])
    ap.add_argument("--n", nargs="+", type=int, default=[10, 100, 1000])
    args = ap.parse_args()
    ctx = Context(args.suite, args.results, args.data, "cpu")
    print(one_line(torch.device("cpu")))
    for pair in args.pairs:
        data = ctx.data(pair)
        t = ctx.suite.pairs[pair].train
        for n in args.n:
            errs: dict[str, list[float]] = {k: [] for k in VARIANTS}
            for seed in ctx.suite.seeds:
                prepare(ctx, pair, seed)
                source, _, _ = ctx.load_cached("source", pair, seed)
                allocated = ctx.load_cached("pac", pair, seed)[:2]
                target = data.subset(seed, n)
                batch = min(t["batch_size"], n)
                epochs = max(1, math.ceil(t["target_steps"] / math.ceil(n / batch)))
                for name, kw in VARIANTS.items():
                    res = adapt("pac", source, target, allocated=allocated, epochs=epochs,
                                batch_size=batch, **ctx.fit_kwargs(pair, seed), **kw)
                    errs[name].append(data.physical(res.model, data.target_test,
                                                    data.target_test_y)[0]["rmse"])
            print(f"{pair:<10} n={n:<5} " + "  ".join(
                f"{k}: {np.mean(v):.4g}" for k, v in errs.items()), flush=True)


if __name__ == "__main__":
    main()
