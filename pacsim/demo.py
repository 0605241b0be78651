"""The built-in end-to-end transfer: Friedman #1 source -> a related target, every method.

It trains one source MLP, transfers it with every method in :data:`pacsim.transfer.METHODS`
on a small target sample, and reports each method's target error and the source error
after transfer (through the source view for PAC).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .device import resolve_device
from .models import MLP
from .sims import friedman
from .train import evaluate, fit
from .transfer import METHODS, adapt
from .transfer.registry import get


@dataclass
class Problem:
    """Standardised source and target splits of one Friedman transfer task."""

    source_train: tuple[torch.Tensor, torch.Tensor]
    source_test: tuple[torch.Tensor, torch.Tensor]
    target_train: tuple[torch.Tensor, torch.Tensor]
    target_test: tuple[torch.Tensor, torch.Tensor]
    y_scale: float


def make_problem(n_source: int = 4000, n_target: int = 100, n_test: int = 2000, q: float = 1.0,
                 seed: int = 0, noise: float = 1.0) -> Problem:
    """Sample the splits; targets are standardised with the source training statistics."""
    rng = np.random.default_rng(seed)
    src = friedman.task_params("source")
    tgt = friedman.task_params("target", q=q, task_seed=1000 + seed)
    xs, ys = friedman.sample(n_source + n_test, src, rng, noise)
    xt, yt = friedman.sample(n_target + n_test, tgt, rng, noise)
    mean, std = float(ys[:n_source].mean()), float(ys[:n_source].std())

    def pair(x: np.ndarray, y: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.from_numpy(x), torch.from_numpy((y - mean) / std)

    return Problem(pair(xs[:n_source], ys[:n_source]), pair(xs[n_source:], ys[n_source:]),
                   pair(xt[:n_target], yt[:n_target]), pair(xt[n_target:], yt[n_target:]), std)


@dataclass(frozen=True)
class DemoSettings:
    """The demo's problem and budgets: ``n_source`` and ``n_target`` samples, the
    target's distance ``q`` from the source, the ``seed`` of data and training, the
    source model's epochs and every method's target steps (all counts positive)."""

    n_source: int = 4000
    n_target: int = 100
    q: float = 1.0
    seed: int = 0
    source_epochs: int = 60
    target_steps: int = 600

    def __post_init__(self) -> None:
        for name in ("n_source", "n_target", "source_epochs", "target_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be positive")


def run_demo(settings: DemoSettings | None = None, *, methods: Sequence[str] = METHODS,
             device: str = "auto", log: Callable[[str], Any] = print) -> list[dict[str, Any]]:
    """Run the demo (default :class:`DemoSettings`'s defaults) and return one row per
    method (errors in physical units)."""
    cfg = DemoSettings() if settings is None else settings
    n_source, n_target, q, seed = cfg.n_source, cfg.n_target, cfg.q, cfg.seed
    source_epochs, target_steps = cfg.source_epochs, cfg.target_steps
    dev = resolve_device(device)
    prob = make_problem(n_source=n_source, n_target=n_target, q=q, seed=seed)
    log(f"pacsim demo: Friedman #1 transfer (q={q}), {n_source} source samples, "
        f"{n_target} target samples, device {dev}")
    common = {"lr": 1e-3, "batch_size": 64, "device": dev, "seed": seed, "lr_schedule": "cosine"}
    torch.manual_seed(seed)
    source_model = MLP(10, 1, hidden=(128, 128, 128))
    t0 = time.perf_counter()
    fit(source_model, prob.source_train, epochs=source_epochs, **common)
    s = prob.y_scale
    src_rmse = evaluate(source_model, prob.source_test)["rmse"] * s
    zero_shot = evaluate(source_model, prob.target_test)["rmse"] * s
    log(f"source model: source RMSE {src_rmse:.3f}, zero-shot target RMSE {zero_shot:.3f} "
        f"({time.perf_counter() - t0:.1f} s)")

    target_kw = {**common, "batch_size": min(32, n_target), "steps": target_steps}
    rows = []
    for method in methods:
        t0 = time.perf_counter()
        kw: dict[str, Any] = dict(target_kw)
        if get(method).allocates:
            kw["allocate_kwargs"] = {"epochs": max(1, source_epochs // 3), "batch_size": 64}
        res = adapt(method, source_model, prob.target_train, source=prob.source_train, **kw)
        with res.source_view() as m:
            src_after = evaluate(m, prob.source_test)["rmse"] * s
        rows.append({
            "method": method,
            "target_rmse": evaluate(res.model, prob.target_test)["rmse"] * s,
            "source_rmse_after": src_after,
            "trainable": res.trainable,
            "seconds": time.perf_counter() - t0,
        })
    log("")
    log(f"{'method':<10} {'target RMSE':>12} {'source RMSE after':>18} {'trainable':>10} "
        f"{'time [s]':>9}")
    for r in rows:
        log(f"{r['method']:<10} {r['target_rmse']:>12.3f} {r['source_rmse_after']:>18.3f} "
            f"{r['trainable']:>10d} {r['seconds']:>9.1f}")
    log(f"(zero-shot target RMSE {zero_shot:.3f}; source RMSE before transfer {src_rmse:.3f}; "
        f"noise floor 1.0; one fixed budget of {target_steps} steps for every method, nothing "
        f"selected: see pacsim.transfer.select for target-only cross-validation)")
    return rows
