"""Time per training step of PAC calibrate versus plain fine-tuning.

Both run through the same trainer on the same model, data and batch size, interleaved
in one process; the reported figure is the ratio of median step times (goal: <= 1.05
on CPU). Usage: ``python benchmarks/overhead.py [--device cpu] [--repeats 7]``.
"""

from __future__ import annotations

import argparse
import copy
import statistics

import torch

from pacsim import pac
from pacsim.device import resolve_device
from pacsim.models import CNN, MLP
from pacsim.sysinfo import one_line
from pacsim.transfer import adapt


def _cases() -> dict[str, tuple[torch.nn.Module, tuple[torch.Tensor, torch.Tensor], int]]:
    g = torch.Generator().manual_seed(0)
    x_tab = torch.rand(2048, 10, generator=g)
    y_tab = torch.rand(2048, 1, generator=g)
    x_fld = torch.randn(256, 1, 128, generator=g)
    y_fld = torch.randn(256, 1, 128, generator=g)
    torch.manual_seed(0)
    return {
        "MLP 10-128-128-128-1, batch 64": (MLP(10, 1, hidden=(128, 128, 128)), (x_tab, y_tab), 64),
        "CNN 1D w32 d4 nx128, batch 32": (CNN(1, 1, 1, width=32, depth=4), (x_fld, y_fld), 32),
    }


def measure(device: str = "auto", repeats: int = 7, epochs: int = 2) -> list[dict]:
    """Median seconds per step of fine-tuning and PAC calibrate, per model."""
    dev = resolve_device(device)
    rows = []
    for name, (model, data, batch) in _cases().items():
        allocated = copy.deepcopy(model)
        masks = pac.prune(allocated, ratio=0.8)
        pac.allocate(allocated, masks, data, epochs=0, device=dev)
        kw = {"epochs": epochs, "batch_size": batch, "device": dev, "seed": 0, "progress": False}
        times: dict[str, list[float]] = {"finetune": [], "pac": []}
        for rep in range(repeats + 1):  # first round warms up
            for method in ("finetune", "pac"):
                extra = {"allocated": (allocated, masks)} if method == "pac" else {}
                if dev.type == "cuda":
                    torch.cuda.synchronize()
                res = adapt(method, model, data, **kw, **extra)
                if dev.type == "cuda":
                    torch.cuda.synchronize()
                if rep:
                    times[method].append(res.history.seconds / res.history.steps)
        ft, pc = statistics.median(times["finetune"]), statistics.median(times["pac"])
        rows.append({"model": name, "finetune_ms": 1e3 * ft, "calibrate_ms": 1e3 * pc,
                     "ratio": pc / ft})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--epochs", type=int, default=2)
    args = ap.parse_args()
    print(one_line(resolve_device(args.device)))
    print(f"{'model':<34} {'finetune ms/step':>17} {'calibrate ms/step':>18} {'ratio':>6}")
    for r in measure(args.device, args.repeats, args.epochs):
        print(f"{r['model']:<34} {r['finetune_ms']:>17.3f} {r['calibrate_ms']:>18.3f} "
              f"{r['ratio']:>6.3f}")


if __name__ == "__main__":
    main()
