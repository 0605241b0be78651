"""Samples per second of every simulator, generating each pair's source dataset.

Runs ``pacsim.sims.simulate`` for the ``[source]`` part of every recipe in ``datasets/``
(default sizes) into a temporary folder and reports wall time and samples per second.
Goal: each source dataset in under 2 minutes on 2 CPU cores.
Usage: ``python benchmarks/simulators.py [--recipes datasets] [--side source]``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from pacsim.sims import recipes, simulate
from pacsim.sysinfo import one_line


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipes", default="datasets")
    ap.add_argument("--side", default="source", choices=recipes.SIDES)
    args = ap.parse_args()
    print(one_line(torch.device("cpu")))
    print(f"{'pair':<12} {'simulator':<11} {'samples':>8} {'seconds':>8} {'samples/s':>10}  goal")
    with tempfile.TemporaryDirectory() as tmp:
        for path in recipes.find(args.recipes):
            r = recipes.load(path)
            part = r.parts[args.side]
            t0 = time.perf_counter()
            simulate(r.simulator, setting=part.setting, n=part.n, seed=r.seed,
                     out=Path(tmp) / f"{r.name}.h5", split=part.split, **part.overrides)
            dt = time.perf_counter() - t0
            ok = "ok" if dt < 120 else "MISSED (> 120 s)"
            print(f"{r.name:<12} {r.simulator:<11} {part.n:>8} {dt:>8.1f} {part.n / dt:>10.1f}  "
                  f"{ok}")


if __name__ == "__main__":
    main()
