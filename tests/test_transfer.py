"""Every transfer method changes exactly what it claims, and never the source model."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import make_data, make_model

from pacsim import pac
from pacsim.transfer import METHODS, adapt, last_layer

KW = dict(epochs=3, batch_size=16, lr=1e-2, device="cpu", seed=0)


def _changed(before: torch.nn.Module, after: torch.nn.Module) -> set[str]:
    b = dict(before.named_parameters())
    return {n for n, p in after.named_parameters() if not torch.equal(p, b[n])}


def _names(model, pred):
    return {n for n, _ in model.named_parameters() if pred(n)}


@pytest.mark.parametrize("method", METHODS)
def test_source_model_is_never_modified(kind, method):
    model = make_model(kind)
    state = copy.deepcopy(model.state_dict())
    res = adapt(method, model, make_data(kind, shift=1.0), source=make_data(kind), **KW)
    assert res.method == method and res.model is not model
    for name, value in model.state_dict().items():
        assert torch.equal(value, state[name]), name
    assert (res.masks is not None) == method.startswith("pac")


def test_finetune_and_l2sp_change_everything(kind):
    model = make_model(kind)
    for method in ("finetune", "l2sp"):
        res = adapt(method, model, make_data(kind, shift=1.0), **KW)
        assert _changed(model, res.model) == _names(model, lambda n: True)
        assert res.trainable == sum(p.numel() for p in model.parameters())


def test_l2sp_pulls_towards_source(kind):
    model = make_model(kind)
    tgt = make_data(kind, shift=1.0)
    dist = []
    for alpha in (0.0, 50.0):
        res = adapt("l2sp", model, tgt, alpha=alpha, **KW)
        dist.append(sum(float((p - q).detach().square().sum()) for p, q in
                        zip(res.model.parameters(), model.parameters())))
    assert dist[1] < 0.5 * dist[0]


def test_head_changes_only_last_layer(kind):
    model = make_model(kind)
    res = adapt("head", model, make_data(kind, shift=1.0), **KW)
    prefix = last_layer(model) + "."
    expected = _names(model, lambda n: n.startswith(prefix))
    assert expected and _changed(model, res.model) == expected
    assert res.trainable == sum(p.numel() for n, p in model.named_parameters() if n in expected)


def test_bitfit_changes_only_biases(kind):
    model = make_model(kind)
    res = adapt("bitfit", model, make_data(kind, shift=1.0), **KW)
    assert _changed(model, res.model) == _names(model, lambda n: n.endswith(".bias"))


def test_scratch_reinitialises_every_parameter(kind):
    model = make_model(kind)
    res = adapt("scratch", model, make_data(kind, shift=1.0), epochs=0, device="cpu", seed=7)
    assert _changed(model, res.model) == _names(
        model, lambda n: not (n.endswith("norm1.weight") or n.endswith("norm2.weight")
                              or n.endswith("norm1.bias") or n.endswith("norm2.bias")))
    again = adapt("scratch", model, make_data(kind), epochs=0, device="cpu", seed=7)
    for p, q in zip(res.model.parameters(), again.model.parameters()):
        assert torch.equal(p, q)


def test_pac_changes_only_redundant_entries(kind):
    model = make_model(kind)
    pruned = copy.deepcopy(model)
    masks = pac.prune(pruned, ratio=0.7)
    pac.allocate(pruned, masks, make_data(kind), **KW)
    res = adapt("pac", model, make_data(kind, shift=1.0), allocated=(pruned, masks),
                train_biases=False, **KW)
    assert masks.stage == "allocated", "the cached allocated masks must not be consumed"
    after = dict(res.model.named_parameters())
    trained = 0
    for name, p0 in pruned.named_parameters():
        if name in masks.essential:
            ess = masks.essential[name]
            assert torch.equal(after[name][ess], p0[ess])
            trained += int((after[name][~ess] != p0[~ess]).sum())
        else:
            assert torch.equal(after[name], p0), name
    assert trained > 0.5 * masks.n_redundant()
    assert res.trainable == masks.n_redundant()


def test_pac_full_pipeline_and_errors():
    model = make_model("mlp")
    with pytest.raises(ValueError, match="needs the source data"):
        adapt("pac", model, make_data("mlp"), **KW)
    for bad in (0, 1, 1.5, -0.2, float("nan")):
        with pytest.raises(ValueError, match=f"ratio must lie in \\(0, 1\\), got {bad}"):
            adapt("pac", model, make_data("mlp"), source=make_data("mlp"), ratio=bad, **KW)
    with pytest.raises(ValueError, match="unknown transfer method 'nope'"):
        adapt("nope", model, make_data("mlp"), **KW)
    res = adapt("pac", model, make_data("mlp", shift=1.0), source=make_data("mlp"), ratio=0.5,
                allocate="fixed", allocate_kwargs={"epochs": 2}, **KW)
    assert res.masks.stage == "calibrated"
    assert res.extra["allocate_history"].epochs_run == 2 and res.history.epochs_run == 3
