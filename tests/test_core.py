"""The training core: one masked step for every trainer, imports that go one way."""

from __future__ import annotations

import ast
from pathlib import Path

import torch

from pacsim.exact import L2Penalty, L2Pull, UpdateMask
from pacsim.training.core import MaskedStep

PACSIM = Path(__file__).resolve().parents[1] / "pacsim"


def _imports(path: Path) -> set[str]:
    """The pacsim modules ``path`` imports (relative imports resolved), lazy ones too."""
    package = path.relative_to(PACSIM.parent).with_suffix("").parts[:-1]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = list(package[: len(package) - node.level + 1]) if node.level else []
            out.add(".".join(base + ([node.module] if node.module else [])))
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return {m for m in out if m.startswith("pacsim")}


def test_trainers_do_not_import_each_other():
    assert not {m for m in _imports(PACSIM / "many.py") if m == "pacsim.train"}
    for path in (PACSIM / "training").glob("*.py"):
        assert not _imports(path) & {"pacsim.train", "pacsim.many"}, path.name


def test_the_masked_step_pulls_clips_steps_and_restores_in_that_order():
    calls = []

    class Part:
        def __init__(self, name):
            self.name = name

        def __getattr__(self, method):
            return lambda *a: calls.append(f"{self.name}.{method}")

    MaskedStep(Part("mask"), Part("pull"), Part("opt"), 0.5)()
    assert calls == ["pull.apply", "mask.before_step", "opt.step", "mask.after_step"]


def test_a_masked_sgd_step_with_momentum_keeps_frozen_entries_and_pulls_the_rest():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    keep = torch.tensor([[True, False, True], [False, True, False]])
    before = model.weight.detach().clone()
    mask = UpdateMask(model, {"weight": keep}, torch.device("cpu"))
    pull = L2Pull.build(model, L2Penalty(0.1, {"weight": None}), mask.trainable,
                        torch.device("cpu"))
    step = MaskedStep(mask, pull, torch.optim.SGD(mask.trainable, lr=0.1, momentum=0.9,
                                                  weight_decay=0.1))
    with mask.frozen_tensors():
        for _ in range(4):
            step.zero_grad()
            model(torch.randn(5, 3)).square().mean().backward()
            step()
    assert torch.equal(model.weight[~keep], before[~keep])
    assert not torch.equal(model.weight[keep], before[keep])
    assert model.bias.grad is None and model.bias.requires_grad  # frozen: never stepped
