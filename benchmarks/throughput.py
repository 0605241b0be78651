"""Model-steps per second: ``fit`` one model at a time against ``fit_many`` for K models.

Models of the suites: the MLP 10-128-128-128-1 (batch 32), the quick suite's 1D CNN
(width 12, depth 2, kernel 5, circular padding) on Burgers' 128-point grid (batch 32),
and, with neuraloperator installed, the full suite's FNOs (16 channels, 2 layers; 16
modes on Burgers' grid, 8x8 on Darcy's 32x32 grid) at the batch of their 10-sample
target sets (8, a cross-validation fold's training share). Every model trains all its
parameters with Adam for a fixed number of steps on its own random data; times are
wall clock around the whole call (setup included); ``fit`` and every K run interleaved,
round after round. On a shared machine the best round is
the least disturbed wall-clock figure; the median speedup, and the speedup in process
CPU time (robust to preemption with one thread), are printed beside it. ``--compile``
also times ``fit(compile=True)`` (CUDA graphs on CUDA, inductor on the CPU; the first
round, which compiles, is the warm-up) against ``fit``. Usage:
``python benchmarks/throughput.py [--device cpu] [--threads 1 2] [--ks 1 8 32 64]
[--models mlp cnn fno1d fno2d] [--compile]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import torch

from pacsim.device import resolve_device
from pacsim.models import CNN, FNO, MLP
from pacsim.sysinfo import one_line
from pacsim.train import fit, fit_many

Case = tuple[str, Callable[[], torch.nn.Module], tuple[int, ...], tuple[int, ...], int, int]
CASES: dict[str, Case] = {
    # key: (name, model factory, input shape, target shape, samples per model, batch)
    "mlp": ("MLP 10-128x3-1, batch 32", lambda: MLP(10, 1, hidden=(128, 128, 128)), (10,),
            (1,), 512, 32),
    "cnn": ("CNN1D w12 d2 k5, nx 128, batch 32",
            lambda: CNN(1, 1, 1, width=12, depth=2, kernel_size=5, padding_mode="circular"),
            (1, 128), (1, 128), 256, 32),
    "fno1d": ("FNO1D h16 L2 m16, nx 128, batch 8",
              lambda: FNO(1, 1, 1, n_modes=16, hidden_channels=16, n_layers=2),
              (1, 128), (1, 128), 64, 8),
    "fno2d": ("FNO2D h16 L2 m8x8, 32x32, batch 8",
              lambda: FNO(2, 1, 1, n_modes=(8, 8), hidden_channels=16, n_layers=2),
              (1, 32, 32), (1, 32, 32), 64, 8),
}


def _available(keys: list[str]) -> list[str]:
    """``keys`` less the FNOs when neuraloperator is missing (said once)."""
    try:
        import neuralop  # noqa: F401
    except ImportError:
        dropped = [k for k in keys if k.startswith("fno")]
        if dropped:
            print(f"skipping {', '.join(dropped)}: neuraloperator is not installed")
        return [k for k in keys if not k.startswith("fno")]
    return keys


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _problem(case: str, k: int) -> tuple[list[torch.nn.Module], list[tuple[torch.Tensor, ...]]]:
    _, factory, xs, ys, n, _ = CASES[case]
    torch.manual_seed(0)
    models = [factory() for _ in range(k)]
    g = torch.Generator().manual_seed(1)
    data = [(torch.randn(n, *xs, generator=g), torch.randn(n, *ys, generator=g))
            for _ in range(k)]
    return models, data


def _rate(run: Callable[[], int], dev: torch.device) -> tuple[float, float]:
    """Model-steps per second of wall time and per second of this process's CPU time,
    of one call of ``run`` (which returns the model-steps it did)."""
    _sync(dev)
    w0, c0 = time.perf_counter(), time.process_time()
    done = run()
    _sync(dev)
    return done / (time.perf_counter() - w0), done / (time.process_time() - c0)


def measure(case: str, ks: list[int], steps: int, dev: torch.device, repeats: int,
            compiled: bool = False) -> list[dict]:
    """One row per K: ``fit`` one model at a time (4 models; its rate does not depend on
    K) against ``fit_many`` of K models, interleaved round by round so that both see the
    same load, ``repeats`` rounds after a warm-up round."""
    kw = {"steps": steps, "batch_size": CASES[case][5], "lr": 1e-3, "device": dev}
    models, data = _problem(case, 4)

    def one_at_a_time() -> int:
        for i, (m, d) in enumerate(zip(models, data)):
            fit(m, d, seed=i, progress=False, **kw)
        return len(models) * steps

    runs: dict[str, Callable[[], int]] = {"fit": one_at_a_time}
    if compiled:
        models_c, data_c = _problem(case, 4)

        def one_compiled() -> int:
            for i, (m, d) in enumerate(zip(models_c, data_c)):
                fit(m, d, seed=i, progress=False, compile=True, **kw)
            return len(models_c) * steps

        runs["compiled"] = one_compiled
    for k in ks:
        models_k, data_k = _problem(case, k)

        def stacked(models_k=models_k, data_k=data_k, k=k) -> int:
            fit_many(models_k, data_k, seeds=list(range(k)), **kw)
            return k * steps

        runs[f"K={k}"] = stacked
    wall: dict[str, list[float]] = {name: [] for name in runs}
    cpu: dict[str, list[float]] = {name: [] for name in runs}
    for rep in range(repeats + 1):
        for name, run in runs.items():
            w, c = _rate(run, dev)
            if rep:  # the first round warms up
                wall[name].append(w)
                cpu[name].append(c)
    med = statistics.median
    rows = []
    for k in ks:
        key = f"K={k}"
        rows.append({"model": CASES[case][0], "threads": torch.get_num_threads(), "K": k,
                     "fit": max(wall["fit"]), "fit_many": max(wall[key]),
                     "speedup": max(wall[key]) / max(wall["fit"]),
                     "speedup_median": med(wall[key]) / med(wall["fit"]),
                     "speedup_cpu": med(cpu[key]) / med(cpu["fit"])})
    if compiled:
        rows.append({"model": CASES[case][0], "threads": torch.get_num_threads(), "K": "compile",
                     "fit": max(wall["fit"]), "fit_many": max(wall["compiled"]),
                     "speedup": max(wall["compiled"]) / max(wall["fit"]),
                     "speedup_median": med(wall["compiled"]) / med(wall["fit"]),
                     "speedup_cpu": med(cpu["compiled"]) / med(cpu["fit"])})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--ks", type=int, nargs="+", default=[1, 8, 32, 64])
    ap.add_argument("--mlp-steps", type=int, default=200)
    ap.add_argument("--cnn-steps", type=int, default=20)
    ap.add_argument("--fno-steps", type=int, default=20)
    ap.add_argument("--models", nargs="+", choices=list(CASES), default=list(CASES))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--compile", action="store_true",
                    help="also time fit(compile=True) (row K=compile: its rate in the "
                         "fit_many column)")
    args = ap.parse_args()
    dev = resolve_device(args.device)
    print(one_line(dev))
    print("load average (1, 5, 15 min) at start: "
          + ", ".join(f"{v:.1f}" for v in os.getloadavg()))
    print(f"model-steps/s, wall clock, best of {args.repeats} rounds; speedup of fit_many "
          "over fit: best, median, median in process CPU time")
    print(f"{'model':<34} {'threads':>7} {'K':>4} {'fit':>9} {'fit_many':>9} {'best':>7} "
          f"{'median':>7} {'cpu':>7}")
    cases = _available(args.models)
    for threads in args.threads:
        torch.set_num_threads(threads)
        for case in cases:
            steps = {"mlp": args.mlp_steps, "cnn": args.cnn_steps}.get(case, args.fno_steps)
            for r in measure(case, args.ks, steps, dev, args.repeats, args.compile):
                print(f"{r['model']:<34} {r['threads']:>7} {r['K']!s:>4} {r['fit']:>9.0f} "
                      f"{r['fit_many']:>9.0f} {r['speedup']:>6.2f}x "
                      f"{r['speedup_median']:>6.2f}x {r['speedup_cpu']:>6.2f}x", flush=True)


if __name__ == "__main__":
    main()
