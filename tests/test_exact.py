"""The named home of the exactness guarantee: UpdateMask and L2Pull, ordered by
MaskedStep, without a trainer around them."""

from __future__ import annotations

import pytest
import torch

from pacsim.exact import L2Penalty, L2Pull, UpdateMask
from pacsim.training.core import MaskedStep


def _loop(model, mask, pull=None, steps=5, clip=None):
    step = MaskedStep(mask, pull, torch.optim.AdamW(mask.trainable, lr=0.1, weight_decay=0.5),
                      clip)
    x = torch.randn(8, 3)
    with mask.frozen_tensors():
        for _ in range(steps):
            step.zero_grad()
            model(x).square().mean().backward()
            step()


@pytest.mark.parametrize("clip", [None, 0.1])
def test_update_mask_keeps_frozen_entries_bit_exact_under_adamw(clip):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 1))
    keep = torch.rand(4, 3) > 0.5
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    mask = UpdateMask(model, {"0.weight": keep, "1.weight": True}, torch.device("cpu"))
    assert [p.shape for p in mask.frozen] == [(4,), (1,)]  # biases not named: frozen
    _loop(model, mask, clip=clip)
    w = model[0].weight
    assert torch.equal(w[~keep], before["0.weight"][~keep])
    assert not torch.equal(w[keep], before["0.weight"][keep])
    assert torch.equal(model[0].bias, before["0.bias"]) and model[0].bias.requires_grad


def test_update_mask_refuses_bad_specs():
    model = torch.nn.Linear(3, 2)
    cpu = torch.device("cpu")
    with pytest.raises(ValueError, match="unknown parameters: \\['nope'\\]"):
        UpdateMask(model, {"nope": True}, cpu)
    with pytest.raises(ValueError, match="must be a bool tensor of shape \\(2, 3\\)"):
        UpdateMask(model, {"weight": torch.ones(3, 2, dtype=torch.bool)}, cpu)
    full = UpdateMask(model, {"weight": torch.ones(2, 3, dtype=torch.bool)}, cpu)
    assert full.full == [model.weight] and not full.partial


def test_l2_pull_is_the_exact_gradient_of_the_penalty():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    anchor = torch.randn(2, 3)
    pen = L2Penalty(0.3, {"weight": anchor, "bias": None})
    pull = L2Pull.build(model, pen, [model.weight, model.bias], torch.device("cpu"))
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    pull.apply()
    ref = torch.autograd.grad(0.3 * ((model.weight - anchor).square().sum()
                                     + model.bias.square().sum()), [model.weight, model.bias])
    torch.testing.assert_close(model.weight.grad, ref[0])
    torch.testing.assert_close(model.bias.grad, ref[1])
    assert L2Pull.build(model, L2Penalty(0.0, {"bias": None}), [model.bias],
                        torch.device("cpu")) is None
    assert L2Pull.build(model, pen, [], torch.device("cpu")) is None, "frozen: no pull"
