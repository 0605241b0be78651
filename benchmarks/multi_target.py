"""One network, a chain of settings: multi-target PAC against fine-tuning.

Per pair and seed: a source model and, one after the other, three target settings of
the same simulator, ``n`` samples each. Every method chooses its options and step count
by 3-fold cross-validation on each setting's samples only (``pacsim.transfer.select``):

- ``pac-chain``: one network; setting 1 is PAC's calibrate after allocate, each later
  setting :func:`pacsim.pac.extend` frees half of the newest setting's entries (that
  setting's remaining entries retrained on its own samples, 200 steps), then calibrate;
- ``pac-single``: single-target PAC on each setting from the same allocated model (the
  yardstick of the issue's goal: one network per setting);
- ``finetune-copies``: one fine-tuned copy of the source per setting (K+1 networks);
- ``finetune-sequential``: one network fine-tuned on each setting in turn (it forgets).

After every step the test RMSE (normalised units) of every setting seen so far and of
the source is recorded; the last step's table, memory, and a figure of error per setting
after each step are written. Usage:
``python benchmarks/multi_target.py [--pairs friedman pendulum] [--seeds 0 1 2] [--n 50]``.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pacsim import pac
from pacsim.data import H5Dataset
from pacsim.models import MLP
from pacsim.sims import simulate
from pacsim.sysinfo import one_line
from pacsim.train import evaluate, fit
from pacsim.transfer import SelectionConfig, allocated_model, method_options, select

CHAINS: dict[str, list[dict[str, Any]]] = {
    "friedman": [{"q": 1.0, "task_seed": s} for s in (1, 2, 3)],
    "pendulum": [{"gamma": g, "omega": w} for g, w in ((0.2, 1.2), (0.4, 1.5), (0.8, 1.8))],
}
SOURCE = {"friedman": {"epochs": 40, "n": 4000}, "pendulum": {"epochs": 60, "n": 4000}}
STEPS = 500
SEL = SelectionConfig(folds=3)


def _files(pair: str, folder: Path, seed: int, n: int) -> list[Path]:
    paths = [simulate(pair, setting="source", n=SOURCE[pair]["n"], seed=seed,
                      out=folder / f"{pair}_s{seed}_source.h5", progress=False)]
    for k, overrides in enumerate(CHAINS[pair]):
        paths.append(simulate(pair, setting="target", n=n + 2000, seed=seed,
                              out=folder / f"{pair}_s{seed}_t{k + 1}.h5", progress=False,
                              split=(n / (n + 2000), 0.0, 2000 / (n + 2000)), **overrides))
    return paths


def _rmse(model: torch.nn.Module, data: Any, masks: pac.Masks | None = None,
          setting: int | None = None) -> float:
    if masks is None:
        return evaluate(model, data)["rmse"]
    with pac.view(model, masks, setting) as m:
        return evaluate(m, data)["rmse"]


def run(pair: str, seed: int, n: int, folder: Path) -> dict[str, Any]:
    paths = _files(pair, folder, seed, n)
    norm = H5Dataset(paths[0], "train").normalizer
    src_train = H5Dataset(paths[0], "train", normalize=norm).tensors()
    src_test = H5Dataset(paths[0], "test", normalize=norm).tensors()
    targets = [H5Dataset(p, "train", normalize=norm).tensors() for p in paths[1:]]
    tests = [src_test] + [H5Dataset(p, "test", normalize=norm).tensors() for p in paths[1:]]
    torch.manual_seed(seed)
    x0, y0 = src_train
    source = MLP(x0[0].numel(), y0[0].numel(),
                 out_shape=list(y0.shape[1:]) if y0.dim() > 2 else None)
    kw = {"device": "cpu", "seed": seed, "progress": False}
    fit(source, src_train, epochs=SOURCE[pair]["epochs"], lr=1e-3, batch_size=64, **kw)
    alloc = allocated_model(source, src_train, method_options("pac", {}),
                            epochs=SOURCE[pair]["epochs"] // 3, lr=1e-3, batch_size=64, **kw)
    common = {"selection": SEL, "steps": STEPS, "seed": seed, "stack": True, **kw}
    steps: dict[str, list[list[float]]] = {m: [] for m in
                                           ("pac-chain", "pac-single", "finetune-copies",
                                            "finetune-sequential")}
    chain_model, chain_masks = alloc[0], alloc[1]
    copies: list[torch.nn.Module] = []
    singles: list[tuple[torch.nn.Module, pac.Masks]] = []
    seq = source
    t0 = time.perf_counter()
    for k, tgt in enumerate(targets, start=1):
        if k > 1:
            pac.extend(chain_model, chain_masks, f"t{k}", ratio=0.5, data=targets[k - 2],
                       steps=200, lr=1e-3, batch_size=min(32, n), **kw)
        res = select("pac", source, tgt, allocated=(chain_model, chain_masks), **common)
        chain_model, chain_masks = res.model, res.masks
        if k == 1:
            chain_masks.settings[1] = "t1"
        single = select("pac", source, tgt, allocated=alloc[:2], **common)
        singles.append((single.model, single.masks))
        copies.append(select("finetune", source, tgt, **common).model)
        seq = select("finetune", seq, tgt, **common).model
        steps["pac-chain"].append([_rmse(chain_model, tests[j], chain_masks, j)
                                   for j in range(k + 1)])
        steps["pac-single"].append([_rmse(alloc[0], src_test, alloc[1], 0)]
                                   + [_rmse(m, tests[j + 1]) for j, (m, _) in
                                      enumerate(singles)])
        steps["finetune-copies"].append([_rmse(source, src_test)]
                                        + [_rmse(m, tests[j + 1]) for j, m in enumerate(copies)])
        steps["finetune-sequential"].append([_rmse(seq, tests[j]) for j in range(k + 1)])
    params = sum(p.numel() for p in source.parameters())
    prunable = sum(m.numel() for m in chain_masks.essential.values())
    k_all = len(targets)
    bits = math.ceil(math.log2(k_all + 1))
    memory = {"pac-chain": params * 4 + math.ceil(prunable * bits / 8),
              "pac-single": k_all * (params * 4 + math.ceil(prunable / 8)),
              "finetune-copies": (k_all + 1) * params * 4,
              "finetune-sequential": params * 4}
    return {"pair": pair, "seed": seed, "n": n, "steps": steps, "memory_bytes": memory,
            "settings": chain_masks.settings, "seconds": time.perf_counter() - t0}


def _figure(results: list[dict[str, Any]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pairs = sorted({r["pair"] for r in results})
    methods = list(results[0]["steps"])
    fig, axes = plt.subplots(len(pairs), len(methods), figsize=(3.2 * len(methods),
                                                                2.6 * len(pairs)),
                             squeeze=False, sharey="row")
    for i, pair in enumerate(pairs):
        rs = [r for r in results if r["pair"] == pair]
        k_all = len(rs[0]["steps"][methods[0]])
        for j, m in enumerate(methods):
            ax = axes[i][j]
            for s in range(k_all + 1):  # setting s, after each step it exists at
                ys = [np.mean([r["steps"][m][step][s] for r in rs])
                      for step in range(max(s, 1) - 1, k_all)]
                xs = list(range(max(s, 1), k_all + 1))
                ax.plot(xs, ys, marker="o", label="source" if s == 0 else f"t{s}")
            ax.set_title(f"{pair}: {m}", fontsize=9)
            ax.set_xlabel("settings added")
            ax.set_xticks(range(1, k_all + 1))
            if j == 0:
                ax.set_ylabel("test RMSE (normalised)")
        axes[i][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", nargs="+", default=list(CHAINS), choices=list(CHAINS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--n", type=int, default=50, help="samples per target setting")
    ap.add_argument("--out", default="benchmarks/results/multi_target")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for pair in args.pairs:
            for seed in args.seeds:
                r = run(pair, seed, args.n, Path(tmp))
                results.append(r)
                print(f"{pair} seed {seed}: {r['seconds']:.0f} s", flush=True)
    machine = one_line(torch.device("cpu"))
    (out / "results.json").write_text(json.dumps({"machine": machine, "results": results},
                                                 indent=1))
    _figure(results, out / "multi_target.png")
    print(machine, f"n = {args.n} per setting, "
          f"seeds {args.seeds}")
    print("| pair | method | source | " + " | ".join(f"t{k}" for k in
                                                      range(1, len(CHAINS['friedman']) + 1))
          + " | chain/single (t1..) | memory |")
    print("|---|---|---|---|---|---|---|---|")
    for pair in args.pairs:
        rs = [r for r in results if r["pair"] == pair]
        final = {m: np.mean([r["steps"][m][-1] for r in rs], axis=0) for m in rs[0]["steps"]}
        for m, errs in final.items():
            ratio = " / ".join(f"{a / b:.2f}" for a, b in zip(errs[1:], final["pac-single"][1:]))
            print(f"| {pair} | {m} | " + " | ".join(f"{e:.3f}" for e in errs)
                  + f" | {ratio} | {rs[0]['memory_bytes'][m] / 1024:.0f} KiB |")


if __name__ == "__main__":
    main()
