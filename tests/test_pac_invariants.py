"""The five PAC invariants of the design notes, for MLP and CNN (1D, 2D), both pruning
scopes, and Adam / AdamW with weight decay."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import check_calibrated, check_source_view, make_data, make_model

from pacsim import pac

OPTIMS = [("adam", 0.0), ("adamw", 0.1), ("adam", 0.05), ("sgd", 0.01)]


def _pipeline(kind, scope="global", optimizer="adam", weight_decay=0.0, train_biases=False,
              seed=0):
    model = make_model(kind)
    src, tgt = make_data(kind, seed=1), make_data(kind, seed=2, shift=0.5)
    kw = dict(epochs=3, batch_size=16, lr=1e-2, optimizer=optimizer,
              weight_decay=weight_decay, device="cpu", seed=seed)
    masks = pac.prune(model, ratio=0.7, scope=scope)
    pac.allocate(model, masks, src, **kw)
    allocated = copy.deepcopy(model)
    pac.calibrate(model, masks, tgt, lam=0.01, train_biases=train_biases, **kw)
    return model, masks, allocated, tgt


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_invariant1_prune_marks_exact_count(kind, scope):
    model = make_model(kind)
    weights = pac.prunable_weights(model)
    before = {n: w.detach().clone() for n, w in weights.items()}
    masks = pac.prune(model, ratio=0.8, scope=scope)
    assert set(masks.essential) == set(weights)
    if scope == "global":
        n = sum(w.numel() for w in weights.values())
        assert masks.n_redundant() == round(0.8 * n)
        kept = torch.cat([before[k].abs().flatten()[masks.essential[k].flatten()] for k in before])
        cut = torch.cat([before[k].abs().flatten()[~masks.essential[k].flatten()] for k in before])
        assert kept.min() >= cut.max()
    else:
        for name, m in masks.essential.items():
            assert int((~m).sum()) == round(0.8 * m.numel())
            assert before[name].abs()[m].min() >= before[name].abs()[~m].max()
    for name, w in weights.items():
        assert torch.all(w[~masks.essential[name]] == 0)
        assert torch.equal(w[masks.essential[name]], before[name][masks.essential[name]])


def test_invariant1_biases_and_norms_never_pruned():
    model = make_model("cnn1d")
    masks = pac.prune(model, ratio=0.5)
    assert all(name.endswith(".weight") for name in masks.essential)
    assert not any("norm" in name for name in masks.essential)
    assert "lift.bias" not in masks.essential


def test_prunable_rule(kind):
    """Rank >= 2 weights: on MLP/CNN exactly the Linear/Conv weights; never biases, norm
    parameters or elementwise scales; complex entries too."""
    model = make_model(kind)
    convs = (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d)
    expected = [f"{n}.weight" for n, m in model.named_modules() if isinstance(m, convs)]
    assert list(pac.prunable_weights(model)) == expected
    odd = torch.nn.Module()
    odd.table = torch.nn.Embedding(5, 3)
    odd.norm = torch.nn.LayerNorm([2, 3])
    odd.gate = torch.nn.Parameter(torch.ones(1, 4, 1))
    odd.spectral = torch.nn.Parameter(torch.randn(2, 2, 3, dtype=torch.cfloat))
    odd.head = torch.nn.Linear(3, 1)
    assert list(pac.prunable_weights(odd)) == ["spectral", "table.weight", "head.weight"]
    assert list(pac.prunable_weights(odd, include=["gate", "norm.*"], exclude=["norm.bias"])
                ) == ["gate", "norm.weight"]


def test_invariant1_ties_broken_deterministically_by_position():
    model = torch.nn.Linear(4, 3, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.5)
    masks = pac.prune(model, ratio=0.5)
    expected = torch.tensor([False] * 6 + [True] * 6).view(3, 4)
    assert torch.equal(masks.essential["weight"], expected)


@pytest.mark.parametrize("optimizer,weight_decay", OPTIMS)
@pytest.mark.parametrize("scope", ["global", "layer"])
def test_invariant2_redundant_stay_zero_after_allocate(kind, optimizer, weight_decay, scope):
    model = make_model(kind)
    masks = pac.prune(model, ratio=0.6, scope=scope)
    pruned = {n: w.detach().clone() for n, w in pac.prunable_weights(model).items()}
    pac.allocate(model, masks, make_data(kind), epochs=3, batch_size=16, lr=1e-2,
                 optimizer=optimizer, weight_decay=weight_decay, device="cpu", seed=0,
                 lam_sp=0.01)
    assert masks.stage == "allocated"
    for name, w in pac.prunable_weights(model).items():
        red = w[~masks.essential[name]]
        assert torch.equal(red, torch.zeros_like(red)), name
        ess = masks.essential[name]
        # every essential tensor trained after pruning (not just pruning's zeros)
        assert not torch.equal(w[ess], pruned[name][ess]), name


@pytest.mark.parametrize("optimizer,weight_decay", OPTIMS)
@pytest.mark.parametrize("scope", ["global", "layer"])
@pytest.mark.parametrize("train_biases", [False, True])
def test_invariant3_calibrate_touches_only_redundant(kind, optimizer, weight_decay, scope,
                                                     train_biases):
    model, masks, allocated, _ = _pipeline(kind, scope, optimizer, weight_decay, train_biases)
    moved = check_calibrated(allocated, model, masks,
                             lambda name: train_biases and name.endswith(".bias"))
    assert moved, "calibrate did not train the redundant entries"


@pytest.mark.parametrize("optimizer,weight_decay", OPTIMS[:2])
@pytest.mark.parametrize("scope", ["global", "layer"])
@pytest.mark.parametrize("train_biases", [False, True])
def test_invariant4_source_view_reproduces_allocated_model(kind, optimizer, weight_decay, scope,
                                                           train_biases):
    model, masks, allocated, tgt = _pipeline(kind, scope, optimizer, weight_decay, train_biases)
    x = torch.cat([make_data(kind, n=20, seed=9)[0], 100 * make_data(kind, n=4, seed=8)[0]])
    check_source_view(model, masks, allocated, x)


def test_source_view_restores_after_exception(kind):
    model, masks, _, _ = _pipeline(kind)
    state = copy.deepcopy(model.state_dict())
    with pytest.raises(RuntimeError, match="boom"), pac.source_view(model, masks):
        raise RuntimeError("boom")
    for name, value in model.state_dict().items():
        assert torch.equal(value, state[name]), name


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_invariant5_same_seed_same_bits(kind, scope):
    a, masks_a, _, _ = _pipeline(kind, scope, seed=3)
    b, masks_b, _, _ = _pipeline(kind, scope, seed=3)
    for (na, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(pa, pb), na
    for name in masks_a.essential:
        assert torch.equal(masks_a.essential[name], masks_b.essential[name])


def test_calibrate_lambda_shrinks_redundant_weights():
    norms = []
    for lam in (0.0, 1.0):
        model = make_model("mlp")
        masks = pac.prune(model, ratio=0.5)
        pac.allocate(model, masks, make_data("mlp"), epochs=0, device="cpu")
        pac.calibrate(model, masks, make_data("mlp", shift=2.0), lam=lam, epochs=20, lr=1e-2,
                      device="cpu", seed=0)
        norms.append(sum(float(w.detach()[~masks.essential[n]].norm())
                         for n, w in pac.prunable_weights(model).items()))
    assert norms[1] < 0.7 * norms[0]


def test_stage_order_is_enforced():
    model = make_model("mlp")
    masks = pac.prune(model, ratio=0.5)
    with pytest.raises(pac.StageError, match=r"calibrate\(\) needs masks in stage allocated"):
        pac.calibrate(model, masks, make_data("mlp"), epochs=1, device="cpu")
    pac.allocate(model, masks, make_data("mlp"), epochs=1, device="cpu")
    pac.calibrate(model, masks, make_data("mlp"), epochs=1, device="cpu")
    with pytest.raises(pac.StageError, match=r"allocate\(\) needs masks in stage"):
        pac.allocate(model, masks, make_data("mlp"), epochs=1, device="cpu")


@pytest.mark.parametrize("bad", [0, 1, 0.0, 1.0, -0.5, 2, float("nan"), float("inf"), True, "0.5"])
def test_ratio_outside_open_interval_is_refused(bad):
    model = make_model("mlp")
    w = model.net[0].weight.detach().clone()
    with pytest.raises(ValueError, match=r"pruning ratio must lie in \(0, 1\), got"):
        pac.prune(model, ratio=bad)
    assert torch.equal(model.net[0].weight, w)


def test_prune_errors_and_masks_serialisation():
    model = make_model("mlp")
    with pytest.raises(ValueError, match="unknown pruning scope"):
        pac.prune(model, scope="channel")
    with pytest.raises(ValueError, match="exclude names no prunable weight"):
        pac.prune(model, exclude=["net.0.bias"])
    masks = pac.prune(model, ratio=0.25, scope="layer", exclude=["net.4.weight"])
    assert "net.4.weight" not in masks.essential
    rows = masks.summary()
    assert [r["name"] for r in rows] == ["net.0.weight", "net.2.weight"]
    assert all(abs(r["essential_share"] - 0.75) < 0.02 for r in rows)
    copy_ = pac.Masks({}, 0.5).load_state_dict(masks.state_dict())
    assert copy_.scope == "layer" and copy_.ratio == 0.25 and copy_.stage == "pruned"
    assert all(torch.equal(copy_.essential[n], m) for n, m in masks.essential.items())
    other = pac.prune(make_model("cnn1d"), ratio=0.5)
    with pytest.raises(ValueError, match="masks do not fit this model"):
        pac.source_view(model, other).__enter__()
