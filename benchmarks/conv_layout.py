"""Training steps per second of 2D CNNs in the default and the channels-last layout.

``pacsim.train.fit`` trains 2D convolution weights in the channels-last layout on the
CPU by default (``channels_last=None``); this measures that choice: ``fit`` with
``channels_last=False`` against ``True`` for the suites' darcy2d CNN and larger ones,
with Adam, on random fields, interleaved round by round (best of ``--repeats``, after a
warm-up). Usage: ``python benchmarks/conv_layout.py [--device cpu] [--threads 1 2]
[--steps 20] [--repeats 3]``.
"""

from __future__ import annotations

import argparse
import time

import torch

from pacsim.device import resolve_device
from pacsim.models import CNN
from pacsim.sysinfo import one_line
from pacsim.train import fit

# (width, depth, kernel, grid, batch); the first is the suites' darcy2d CNN
CASES = [(12, 2, 3, 32, 8), (12, 2, 3, 32, 32), (12, 2, 3, 32, 64), (16, 2, 5, 32, 16),
         (32, 3, 3, 64, 16)]


def _rate(cfg: tuple[int, ...], layout: bool, steps: int, dev: torch.device) -> float:
    width, depth, kernel, grid, batch = cfg
    torch.manual_seed(0)
    model = CNN(2, 1, 1, width=width, depth=depth, kernel_size=kernel)
    g = torch.Generator().manual_seed(1)
    data = (torch.randn(4 * batch, 1, grid, grid, generator=g),
            torch.randn(4 * batch, 1, grid, grid, generator=g))
    kw = {"batch_size": batch, "device": dev, "progress": False, "seed": 0,
          "channels_last": layout}
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    t = time.perf_counter()
    fit(model, data, steps=steps, **kw)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    return steps / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    dev = resolve_device(args.device)
    print(one_line(dev))
    print("| threads | CNN2D width, depth, kernel | grid | batch | default [steps/s] | "
          "channels last [steps/s] | speedup |")
    print("|---|---|---|---|---|---|---|")
    for threads in args.threads:
        torch.set_num_threads(threads)
        for cfg in CASES:
            best = {False: 0.0, True: 0.0}
            for rep in range(args.repeats + 1):
                for layout in (False, True):
                    r = _rate(cfg, layout, args.steps, dev)
                    if rep:  # the first round warms up
                        best[layout] = max(best[layout], r)
            w, d, k, grid, batch = cfg
            print(f"| {threads} | {w}, {d}, {k} | {grid}x{grid} | {batch} | "
                  f"{best[False]:.1f} | {best[True]:.1f} | {best[True] / best[False]:.2f}x |",
                  flush=True)


if __name__ == "__main__":
    main()
