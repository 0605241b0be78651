"""Source-model accuracy of Fourier neural operators against the suites' CNN on burgers1d,
at equal or smaller training time.

The data is the full suite's burgers1d pair (``benchmarks/suites/full-v2.toml``: 500 source
samples, 400/50/50 train/val/test, nx = 128), built if missing and normalised as the
benchmark does. Every model trains as the suite trains its source model (Adam, batch 64,
cosine schedule) for each epoch budget and learning rate of the grid, on each seed, with
one thread (as the benchmark's workers do on 2 cores). Per model and budget the learning
rate is chosen on the source validation split; test errors in physical units:

- ``nRMSE`` as PDEBench defines it: per sample and channel, the RMSE over the grid
  divided by the RMS of the target, averaged (``metric_func`` of PDEBench);
- relative L2: per sample ``||pred - y||_2 / ||y||_2`` over every channel and grid
  point, averaged (neuraloperator's relative ``LpLoss``); equal to nRMSE for one
  channel, and to ``pacsim.metrics.nrmse``;
- RMSE over every entry (``pacsim.metrics.rmse``).

``--pac`` also prunes each model's best configuration of the first seed (ratio 0.8
and 0.5, global and per layer), allocates it at its learning rate for the suite's 5
epochs and for 20, and reports the source view's error against the unpruned model's.
Usage: ``python benchmarks/fno_vs_cnn.py [--seeds 0 1 2] [--epochs 5 10 20 40] [--pac]``.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch

from pacsim import pac
from pacsim.bench.protocol import PairData
from pacsim.bench.suite import load_suite
from pacsim.models import CNN, FNO
from pacsim.sims import recipes
from pacsim.sysinfo import cpu_model
from pacsim.train import fit, predict

MODELS: dict[str, Callable[[], torch.nn.Module]] = {
    "CNN w12 d2 k5 (suites)": lambda: CNN(1, 1, 1, width=12, depth=2, kernel_size=5,
                                          padding_mode="circular"),
    "FNO h16 L2 m16": lambda: FNO(1, 1, 1, n_modes=16, hidden_channels=16, n_layers=2),
    "FNO h32 L4 m16": lambda: FNO(1, 1, 1, n_modes=16, hidden_channels=32, n_layers=4),
}
#: The largest FNO is ~10x slower per epoch than the CNN: its grid stops earlier.
MAX_EPOCHS = {"FNO h32 L4 m16": 20}
SUITE_BUDGET = ("CNN w12 d2 k5 (suites)", 10, 1e-3)  # today's source CNN


def errors(pred: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """PDEBench nRMSE, relative L2 and RMSE of physical predictions (N, C, *grid)."""
    p, t = pred.double().flatten(2), y.double().flatten(2)
    per_channel = (p - t).square().mean(-1).sqrt() / t.square().mean(-1).sqrt()
    rel = (p - t).flatten(1).norm(dim=1) / t.flatten(1).norm(dim=1)
    return {"nrmse": float(per_channel.mean()), "rel_l2": float(rel.mean()),
            "rmse": float((p - t).square().mean().sqrt())}


def physical(data: PairData, model: torch.nn.Module, split: str) -> dict[str, float]:
    x, _ = getattr(data, f"source_{split}")
    y = data.source_test_y if split == "test" else data.normalizer.inverse_targets(
        data.source_val[1])
    return errors(data.normalizer.inverse_targets(predict(model, x)), y)


def train(data: PairData, name: str, epochs: int, lr: float, seed: int
          ) -> tuple[torch.nn.Module, dict[str, Any]]:
    torch.manual_seed(seed)
    model = MODELS[name]()
    w0, c0 = time.perf_counter(), time.process_time()
    fit(model, data.source_train, epochs=epochs, batch_size=64, lr=lr, lr_schedule="cosine",
        device="cpu", seed=seed)
    row = {"model": name, "epochs": epochs, "lr": lr, "seed": seed,
           "wall": time.perf_counter() - w0, "cpu": time.process_time() - c0,
           "val": physical(data, model, "val")["nrmse"], **physical(data, model, "test")}
    return model, row


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per model and budget: the learning rate with the lowest mean validation nRMSE,
    its mean test errors and median times over seeds."""
    out = []
    for name in MODELS:
        for epochs in sorted({r["epochs"] for r in rows if r["model"] == name}):
            cell = [r for r in rows if r["model"] == name and r["epochs"] == epochs]
            by_lr = {lr: [r for r in cell if r["lr"] == lr] for lr in {r["lr"] for r in cell}}
            lr = min(by_lr, key=lambda v: statistics.mean(r["val"] for r in by_lr[v]))
            chosen = by_lr[lr]
            s = {"model": name, "epochs": epochs, "lr": lr,
                 "val": statistics.mean(r["val"] for r in chosen),
                 "wall": statistics.median(r["wall"] for r in chosen),
                 "cpu": statistics.median(r["cpu"] for r in chosen)}
            for key in ("nrmse", "rel_l2", "rmse"):
                vals = [r[key] for r in chosen]
                s[key] = statistics.mean(vals)
                s[f"{key}_sd"] = statistics.stdev(vals) if len(vals) > 1 else 0.0
            out.append(s)
    return out


def pac_check(data: PairData, model: torch.nn.Module, label: str, lr: float) -> list[str]:
    """Source-view error after pruning and allocating (at the model's learning rate) for
    the suite's 5 epochs and for 20, relative to the unpruned model's."""
    lines = []
    base = physical(data, model, "test")["nrmse"]
    for ratio in (0.8, 0.5):
        for scope in ("global", "layer"):
            for epochs in (5, 20):
                m = copy.deepcopy(model)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    masks = pac.prune(m, ratio=ratio, scope=scope)
                dead = sum(not bool(e.any()) for e in masks.essential.values())
                pac.allocate(m, masks, data.source_train, epochs=epochs, batch_size=64, lr=lr,
                             lr_schedule="cosine", device="cpu", seed=0)
                after = physical(data, m, "test")["nrmse"]
                lines.append(f"| {label} | {ratio} | {scope} | {dead} | {epochs} | "
                             f"{after:.4f} | {after / base:.2f}x |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--suite", default="benchmarks/suites/full-v2.toml")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, nargs="+", default=[5, 10, 20, 40])
    ap.add_argument("--lrs", type=float, nargs="+", default=[1e-3, 3e-3, 1e-2])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--pac", action="store_true", help="also prune and allocate (seed 0)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    suite = load_suite(args.suite)
    files = recipes.build(suite.pairs["burgers1d"].recipe, suite.data_dir, log=print)
    data = PairData.load(files)
    print(f"# {cpu_model()}, {torch.get_num_threads()} thread(s), torch {torch.__version__}")
    for name in MODELS:  # warm-up: first calls pay one-off costs (allocations, FFT plans)
        train(data, name, 1, 1e-3, 0)
    rows, best_models = [], {}
    for epochs in args.epochs:
        for name in MODELS:
            if epochs > MAX_EPOCHS.get(name, epochs):
                continue
            for lr in args.lrs:
                for seed in args.seeds:
                    model, row = train(data, name, epochs, lr, seed)
                    rows.append(row)
                    best_models[(name, epochs, lr, seed)] = model
                    print(f"{name:24s} {epochs:3d} ep lr {lr:.0e} seed {seed}: "
                          f"{row['wall']:6.2f} s, val {row['val']:.4f}, "
                          f"test nRMSE {row['nrmse']:.4f}", flush=True)
    table = summarise(rows)
    print("\n| model | epochs | lr (val) | train s (wall) | CPU s | nRMSE | rel. L2 | RMSE |")
    print("|---|---|---|---|---|---|---|---|")
    for s in table:
        print(f"| {s['model']} | {s['epochs']} | {s['lr']:.0e} | {s['wall']:.2f} | "
              f"{s['cpu']:.2f} | {s['nrmse']:.4f} ± {s['nrmse_sd']:.4f} | {s['rel_l2']:.4f} | "
              f"{s['rmse']:.4f} |")
    ref = [r for r in rows if (r["model"], r["epochs"], r["lr"]) == SUITE_BUDGET]
    cnn = [t for t in table if t["model"] == SUITE_BUDGET[0]]
    if ref:
        ref_nrmse = statistics.mean(r["nrmse"] for r in ref)
        ref_wall = statistics.median(r["wall"] for r in ref)
        print(f"\ntoday's CNN (10 epochs, lr 1e-3): nRMSE {ref_nrmse:.4f} in {ref_wall:.2f} s")
        for s in table:
            if s["model"] == SUITE_BUDGET[0]:
                continue
            rival = [c for c in cnn if c["wall"] <= s["wall"]]
            same = min(rival, key=lambda c: c["val"]) if rival else None
            vs = (f"; {same['nrmse'] / s['nrmse']:.1f}x the CNN at {same['epochs']} epochs "
                  f"({same['wall']:.2f} s)" if same else "")
            print(f"  {s['model']} {s['epochs']} ep ({s['wall']:.2f} s): "
                  f"{ref_nrmse / s['nrmse']:.1f}x more accurate than today's CNN{vs}")
    if args.pac:
        print("\n| model | ratio | scope | tensors freed whole | allocate epochs | "
              "source nRMSE after | / unpruned |")
        print("|---|---|---|---|---|---|---|")
        for name in MODELS:
            best = min((s for s in table if s["model"] == name), key=lambda s: s["val"])
            model = best_models[(name, best["epochs"], best["lr"], args.seeds[0])]
            label = f"{name}, {best['epochs']} ep, lr {best['lr']:.0e}"
            for line in pac_check(data, model, label, best["lr"]):
                print(line, flush=True)


if __name__ == "__main__":
    main()
