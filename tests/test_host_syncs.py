"""No per-step host synchronisation in pacsim's training loops.

On CUDA, reading a device tensor's value on the host (``.item()``, ``bool(t)``,
``.tolist()``, ``.cpu()``, ...) stalls the launch queue until the GPU catches up; one
such read per step makes small models GPU-bound on latency. This runs on the CPU: every
value read whose caller is pacsim's own code is counted, and the count must not grow
with the number of steps per epoch (reads once an epoch, for the history and the
divergence check, are fine). torch.optim's reads of its CPU step counter are not
pacsim's and are not counted.
"""

from __future__ import annotations

import collections
import copy
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from conftest import make_data

from pacsim import pac
from pacsim.exact import L2Penalty
from pacsim.models import MLP
from pacsim.train import fit, fit_many

PACKAGE = str(Path(pac.__file__).resolve().parents[1]) + "/"
READS = ("item", "tolist", "__bool__", "__float__", "__int__", "__index__", "cpu", "numpy")


@contextmanager
def counted_reads() -> Iterator[collections.Counter]:
    """Count tensor value reads made directly by code under ``pacsim/``."""
    counts: collections.Counter = collections.Counter()
    originals = {name: getattr(torch.Tensor, name) for name in READS}

    def wrap(name: str, original: Callable) -> Callable:
        def read(self, *args, **kwargs):
            caller = sys._getframe(1).f_code.co_filename
            if caller.startswith(PACKAGE):
                counts[f"{name} at {Path(caller).name}:{sys._getframe(1).f_lineno}"] += 1
            return original(self, *args, **kwargs)
        return read

    for name, original in originals.items():
        setattr(torch.Tensor, name, wrap(name, original))
    try:
        yield counts
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)


def _mlp(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return MLP(4, 2, hidden=(16, 16))


def _reads(train: Callable[[int], None]) -> tuple[dict, dict]:
    """Reads of ``train(n)`` with 4 and with 16 batches an epoch."""
    out = []
    for n in (32, 128):
        with counted_reads() as counts:
            train(n)
        out.append(dict(counts))
    return out[0], out[1]


def _masks(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {n: torch.rand(p.shape, generator=g) > 0.5 for n, p in model.named_parameters()}


CASES: dict[str, Callable[[int], object]] = {
    "fit": lambda n: fit(_mlp(), make_data("mlp", n), epochs=2, batch_size=8, seed=0,
                         device="cpu", progress=False),
    "fit with val, cosine schedule, mask and pull": lambda n: fit(
        (m := _mlp()), make_data("mlp", n), val=make_data("mlp", 16, seed=1), epochs=2,
        batch_size=8, seed=0, device="cpu", progress=False, lr_schedule="cosine",
        optimizer="adamw", weight_decay=0.1, update_mask=_masks(m),
        penalty=L2Penalty(0.1, {name: None for name, _ in m.named_parameters()})),
    "fit with a step budget": lambda n: fit(_mlp(), make_data("mlp", n), steps=n // 4,
                                            batch_size=8, seed=0, device="cpu",
                                            progress=False),
    "fit_many": lambda n: fit_many([_mlp(s) for s in range(3)],
                                   [make_data("mlp", n, seed=s) for s in range(3)],
                                   epochs=2, batch_size=8, seeds=[0, 1, 2], device="cpu"),
    "fit_many with val, budgets, masks and pulls": lambda n: fit_many(
        (ms := [_mlp(s) for s in range(3)]), [make_data("mlp", n, seed=s) for s in range(3)],
        val=[make_data("mlp", 16, seed=5), None, make_data("mlp", 24, seed=6)],
        steps=[n // 4, n // 8, n // 4], batch_size=8, seeds=[0, 1, 2], device="cpu",
        update_masks=[_masks(m) for m in ms], optimizer="adamw", weight_decay=0.1,
        penalties=[L2Penalty(0.1, {name: None for name, _ in m.named_parameters()})
                   for m in ms]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_value_reads_do_not_grow_with_the_steps_of_an_epoch(case):
    few, many = _reads(CASES[case])
    assert many == few, f"reads that grow with the steps: {few} -> {many}"


def test_pac_calibrate_reads_no_value_per_step():
    def calibrate(n: int) -> None:
        model = _mlp()
        fit(model, make_data("mlp", 64, seed=3), epochs=1, batch_size=16, seed=0,
            device="cpu", progress=False)
        masks = pac.prune(model, ratio=0.5)
        pac.allocate(model, masks, make_data("mlp", 64, seed=3), epochs=1, batch_size=16,
                     device="cpu", seed=0)
        pac.calibrate(copy.deepcopy(model), masks, make_data("mlp", n, seed=4, shift=0.5),
                      epochs=2, batch_size=8, lam=0.01, device="cpu", seed=0)

    few, many = _reads(calibrate)
    assert many == few, f"reads that grow with the steps: {few} -> {many}"


def test_the_counter_sees_a_read_per_step():
    """The check can fail: a loop under pacsim/ that reads its loss every step is caught."""
    source = ("def loop(n):\n"
              "    total = 0.0\n"
              "    for i in range(0, n, 8):\n"
              "        total += torch.ones(()).item()\n")
    scope = {"torch": torch}
    exec(compile(source, str(Path(PACKAGE) / "a_loop.py"), "exec"), scope)
    few, many = _reads(scope["loop"])
    assert sum(few.values()) == 4 and sum(many.values()) == 16
