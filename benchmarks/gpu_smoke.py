"""Correctness of the GPU path in one short run (the tests run on the CPU).

On ``--device`` (default cuda): ``fit(compile=True)`` (CUDA graphs) against eager
``fit`` (losses close, frozen entries bit-exact, the PAC source view bit-exact),
``fit_many`` with per-model step budgets against ``fit`` with each budget, ``fit_many``
on 1D and 2D FNOs against ``fit`` (with neuraloperator installed), and
``select_many`` stacked against one ``select`` per request (same choices). Prints one
line per check and exits 1 if any fails. Usage:
``python benchmarks/gpu_smoke.py [--device cuda] [--compile '{"backend": "aot_eager"}']``.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys

import torch

from pacsim import pac
from pacsim.models import FNO, MLP
from pacsim.sysinfo import one_line
from pacsim.train import fit, fit_many, predict
from pacsim.transfer import (
    SelectionConfig,
    SelectRequest,
    allocated_model,
    method_options,
    select,
    select_many,
)

FAILED: list[str] = []


def check(name: str, ok: bool, detail: str = "") -> None:
    print(f"{'ok  ' if ok else 'FAIL'} {name}" + (f": {detail}" if detail else ""), flush=True)
    if not ok:
        FAILED.append(name)


def _data(n: int, seed: int, shift: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 10, generator=g)
    return x, torch.tanh(x[:, :3].sum(1, keepdim=True) + shift)


def _fno_stack(dev: torch.device) -> None:
    """fit_many on 1D and 2D FNOs (complex spectral weights in the stack) against fit."""
    try:
        import neuralop  # noqa: F401
    except ImportError:
        print("skip fit_many on FNOs: neuraloperator is not installed")
        return
    worst = 0.0
    for dim, grid in ((1, (64,)), (2, (16, 16))):
        torch.manual_seed(0)
        models = [FNO(dim, 1, 1, n_modes=8, hidden_channels=8, n_layers=2) for _ in range(3)]
        refs = [copy.deepcopy(m) for m in models]
        g = torch.Generator().manual_seed(dim)
        data = [(x, torch.sin(x)) for x in (torch.randn(16, 1, *grid, generator=g)
                                             for _ in models)]
        fkw = {"batch_size": 8, "lr": 1e-2, "device": dev, "steps": 10}
        fit_many(models, data, seeds=[0, 1, 2], **fkw)
        for i, (r, d) in enumerate(zip(refs, data)):
            fit(r, d, seed=i, progress=False, **fkw)
            worst = max(worst, max((p - q).abs().max().item() for p, q in
                                   zip(models[i].parameters(), r.parameters())))
    check("fit_many on 1D and 2D FNOs matches fit", worst < 1e-4, f"max abs diff {worst:.2e}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--compile", default="true",
                    help="fit's compile value as JSON (default true)")
    args = ap.parse_args()
    dev = torch.device(args.device)
    comp = json.loads(args.compile)
    print(one_line(dev))
    src, tgt = _data(512, 0), _data(40, 1, 0.7)
    kw = {"device": dev, "batch_size": 32, "lr": 1e-3, "seed": 0, "progress": False}

    # fit(compile=...) against eager fit, frozen entries exact
    torch.manual_seed(0)
    base = MLP(10, 1, hidden=(128, 128, 128))
    eager, compiled = copy.deepcopy(base), copy.deepcopy(base)
    mask = {n: (torch.rand(p.shape) > 0.5) for n, p in base.named_parameters()}
    h0 = fit(eager, src, epochs=3, update_mask=mask, optimizer="adamw", weight_decay=0.1, **kw)
    h1 = fit(compiled, src, epochs=3, update_mask=mask, optimizer="adamw", weight_decay=0.1,
             compile=comp, **kw)
    rel = max(abs(a - b) / abs(a) for a, b in zip(h0.train_loss, h1.train_loss))
    check("fit(compile) losses agree with eager fit", rel < 1e-3, f"max rel diff {rel:.2e}")
    exact = all(torch.equal(p.detach().cpu()[~mask[n]], q.detach()[~mask[n]])
                for (n, p), q in zip(compiled.named_parameters(), base.parameters()))
    check("fit(compile) keeps frozen entries bit-exact", exact)

    # PAC calibrate through compile: the source view is the allocated model, exactly
    model = copy.deepcopy(base)
    fit(model, src, epochs=2, **kw)
    masks = pac.prune(model, ratio=0.5)
    pac.allocate(model, masks, src, epochs=1, **kw)
    allocated = copy.deepcopy(model)
    pac.calibrate(model, masks, tgt, epochs=3, train_biases=True, compile=comp, **kw)
    with pac.source_view(model, masks) as m:
        same = torch.equal(predict(m, src[0].to(dev)), predict(allocated, src[0].to(dev)))
    check("PAC source view bit-exact after a compiled calibrate", same)

    # fit_many with per-model budgets against fit with each budget
    budgets = [3, 17, 16, 0]
    models = [MLP(10, 1, hidden=(64, 64)) for _ in budgets]
    refs = [copy.deepcopy(m) for m in models]
    data = [_data(64, 10 + i) for i in range(len(budgets))]
    fkw = {"batch_size": 16, "lr": 1e-2, "device": dev}
    fit_many(models, data, seeds=list(range(len(budgets))), steps=budgets, **fkw)
    worst = 0.0
    for i, (r, d, b) in enumerate(zip(refs, data, budgets)):
        fit(r, d, seed=i, steps=b, progress=False, **fkw)
        worst = max(worst, max((p - q).abs().max().item() for p, q in
                               zip(models[i].parameters(), r.parameters())))
    check("fit_many per-model budgets match fit", worst < 1e-4, f"max abs diff {worst:.2e}")
    _fno_stack(dev)

    # select_many stacked against select one by one
    source = MLP(10, 1, hidden=(64, 64)).to(dev)
    fit(source, src, epochs=5, **kw)
    opts = method_options("pac", {})
    alloc = allocated_model(source, src, opts, epochs=2, lr=1e-3, batch_size=32, device=dev,
                            seed=0)[:2]
    reqs = [SelectRequest(m, source, _data(n, 20 + s, 0.7), seed=s,
                          extra={"allocated": alloc} if m == "pac" else {})
            for m in ("finetune", "l2sp", "pac") for s in (0, 1) for n in (10, 20)]
    sel = {"selection": SelectionConfig(folds=5, max_steps=60), "steps": 20, "device": dev,
           "batch_size": 32}
    many = select_many(reqs, stack=True, **sel)
    same = sum(r.selection["chosen"] == one.selection["chosen"]
               and r.selection["steps"] == one.selection["steps"]
               for r, one in zip(many, (select(q.method, q.source_model, q.target,
                                               seed=q.seed, stack=False, **q.extra, **sel)
                                        for q in reqs)))
    check("select_many stacked chooses as select", same >= len(reqs) - 1,
          f"{same}/{len(reqs)} same choices")
    sys.exit(1 if FAILED else 0)


if __name__ == "__main__":
    main()
