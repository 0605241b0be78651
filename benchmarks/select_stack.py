"""One benchmark cell's cross-validation, one training at a time against stacked.

``pacsim.transfer.select`` trains folds x configurations (5 x 4 = 20 trainings of up to
3x the step budget) before its final retrain; ``stack=True`` trains them as
``fit_many`` stacks. This times both on the full suite's cell shapes: the MLP pairs at
n = 10 and 100 (500 steps, so CV runs 1500) and the CNN pairs at n = 10 (100 steps),
methods finetune, l2sp and pac, on synthetic data of the suites' shapes, and checks that
both choose the same configuration and step count. Usage:
``python benchmarks/select_stack.py [--threads 2] [--repeats 2]``.
"""

from __future__ import annotations

import argparse
import time

import torch

from pacsim.models import CNN, MLP
from pacsim.sysinfo import one_line
from pacsim.train import fit
from pacsim.transfer import SelectionConfig, allocated_model, method_options, select

CASES = {
    # name: (model factory, input shape, target shape, n, steps)
    "MLP 10-128x3-1, n=10": (lambda: MLP(10, 1, hidden=(128, 128, 128)), (10,), (1,), 10, 500),
    "MLP 10-128x3-1, n=100": (lambda: MLP(10, 1, hidden=(128, 128, 128)), (10,), (1,), 100,
                              500),
    "CNN1D w12 d2, nx 128, n=10": (
        lambda: CNN(1, 1, 1, width=12, depth=2, kernel_size=5, padding_mode="circular"),
        (1, 128), (1, 128), 10, 100),
}
METHODS = ("finetune", "l2sp", "pac")


def _data(shape_x: tuple[int, ...], shape_y: tuple[int, ...], n: int, shift: float,
          seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *shape_x, generator=g)
    w = torch.randn(x[0].numel(), generator=torch.Generator().manual_seed(7))
    y = torch.tanh((x.reshape(n, -1) * w).sum(1) / 3 + shift)
    return x, y.reshape(n, *([1] * len(shape_y))).expand(n, *shape_y).contiguous()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2, help="best of N rounds")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    machine = one_line(torch.device("cpu"))
    print(machine, f"{args.threads} thread(s)")
    print("| cell | method | one by one [s] | stacked [s] | speedup | same choice |")
    print("|---|---|---|---|---|---|")
    for name, (make, sx, sy, n, steps) in CASES.items():
        torch.manual_seed(0)
        model = make()
        src = _data(sx, sy, 512, 0.0, 1)
        fit(model, src, epochs=5, lr=1e-3, seed=0, device="cpu", progress=False)
        tgt = _data(sx, sy, n, 0.7, 2)
        alloc = allocated_model(model, src, method_options("pac", {}), epochs=2, lr=1e-3,
                                seed=0, device="cpu", progress=False)[:2]
        for method in METHODS:
            extra = {"allocated": alloc} if method == "pac" else {}
            times: dict[bool, float] = {}
            chosen = {}
            for _ in range(args.repeats):
                for stack in (False, True):
                    t0 = time.perf_counter()
                    res = select(method, model, tgt, selection=SelectionConfig(folds=5),
                                 steps=steps, seed=0, device="cpu", stack=stack, **extra)
                    dt = time.perf_counter() - t0
                    times[stack] = min(times.get(stack, float("inf")), dt)
                    chosen[stack] = (res.selection["chosen"], res.selection["steps"])
            same = "yes" if chosen[False] == chosen[True] else f"no: {chosen}"
            print(f"| {name} | {method} | {times[False]:.1f} | {times[True]:.1f} | "
                  f"{times[False] / times[True]:.2f}x | {same} |", flush=True)


if __name__ == "__main__":
    main()
