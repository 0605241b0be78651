"""PAC's calibration ladder (biases, last, head, all) keeps the invariants on MLP, CNN
and FNO under every optimiser; the head rung is the head baseline on one network that
keeps the source; allocate backs the pruning ratio off until the source is recovered."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from conftest import check_source_view, make_data, make_model

from pacsim import pac
from pacsim.models import FNO, head_names
from pacsim.train import fit, mean_loss
from pacsim.transfer import adapt, allocated_model, method_options
from pacsim.transfer.methods import options_record
from pacsim.transfer.options import RATIO_STEP, PACPaperOptions

pytest.importorskip("torch")

OPTIMS = [("adam", 0.0), ("adamw", 0.1), ("sgd", 0.01)]  # sgd runs with momentum 0.9
KINDS = ("mlp", "cnn1d", "cnn2d", "fno")


def _model(kind: str) -> torch.nn.Module:
    if kind == "fno":
        torch.manual_seed(0)
        return FNO(1, 1, 1, n_modes=4, hidden_channels=4, n_layers=2)
    return make_model(kind)


def _data(kind: str, n: int = 48, seed: int = 0, shift: float = 0.0):
    return make_data("cnn1d" if kind == "fno" else kind, n=n, seed=seed, shift=shift)


def _allocated(kind: str, optimizer: str, weight_decay: float):
    model = _model(kind)
    kw = dict(epochs=2, batch_size=16, lr=1e-2, optimizer=optimizer,
              weight_decay=weight_decay, device="cpu", seed=0)
    masks = pac.prune(model, ratio=0.6, scope="layer")
    pac.allocate(model, masks, _data(kind, seed=1), **kw)
    return model, masks, kw


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("optimizer,weight_decay", OPTIMS)
@pytest.mark.parametrize("subspace", pac.SUBSPACES)
def test_every_rung_keeps_the_source_exact(kind, optimizer, weight_decay, subspace):
    model, masks, kw = _allocated(kind, optimizer, weight_decay)
    allocated = copy.deepcopy(model)
    update = pac.calibrate_update(model, masks, subspace, train_biases=True)
    pac.calibrate(model, masks, _data(kind, seed=2, shift=0.5), lam=0.01, train_biases=True,
                  subspace=subspace, **kw)
    before, after = dict(allocated.named_parameters()), dict(model.named_parameters())
    moved = set()
    for name, p0 in before.items():
        spec = update.get(name, False)
        if spec is False:  # frozen: the exact bits
            assert torch.equal(after[name], p0), (subspace, name)
        elif isinstance(spec, torch.Tensor):  # freed entries only: the essential ones stay
            assert torch.equal(after[name][~spec], p0[~spec]), (subspace, name)
        if not torch.equal(after[name], p0):
            moved.add(name)
    assert moved, f"calibrate on {subspace!r} trained nothing"
    # what calibrate let diverge outside the freed entries is saved as the source had it
    for name, spec in update.items():
        if spec is True:
            assert torch.equal(masks.source_state[name], before[name]), name
    x = torch.cat([_data(kind, n=12, seed=9)[0], 50 * _data(kind, n=3, seed=8)[0]])
    check_source_view(model, masks, allocated, x)


@pytest.mark.parametrize("kind", KINDS)
def test_head_rung_trains_exactly_the_head_baselines_parameters(kind):
    model, masks, kw = _allocated(kind, "adamw", 0.1)
    update = pac.calibrate_update(model, masks, "head", train_biases=True)
    assert update == {n: True for n in head_names(model)}
    assert update == pac.calibrate_update(model, masks, "head", train_biases=False)
    # the head baseline on the same source trains the same tensors, every entry of them
    src_model = _model(kind)
    tgt = _data(kind, n=16, seed=2, shift=0.5)
    base = adapt("head", src_model, tgt, steps=1, batch_size=16, lr=1e-2, device="cpu")
    res = adapt("pac", src_model, tgt, allocated=(model, masks), subspace="head", steps=1,
                batch_size=16, lr=1e-2, device="cpu")
    assert res.trainable == base.trainable
    # calibrate's zero pull never reaches a tensor trained in full (zero is not its prior)
    penalty = pac.calibrate_penalty(masks, update, lam=1.0)
    assert not set(penalty.anchors) & set(update)


def test_head_rung_memory_is_one_network_plus_the_head_copy():
    model, masks, _ = _allocated("mlp", "adam", 0.0)
    tgt = _data("mlp", n=16, seed=2, shift=0.5)
    res = adapt("pac", model, tgt, allocated=(model, masks), subspace="head",
                train_biases=True, steps=2, batch_size=16, lr=1e-2, device="cpu")
    net = sum(p.numel() * p.element_size() for p in res.model.parameters())
    head = sum(p.numel() * p.element_size() for n, p in res.model.named_parameters()
               if n in head_names(res.model))
    assert set(res.masks.source_state) == set(head_names(res.model))
    assert res.serving_bytes() == net + math.ceil(masks.n_total() / 8) + head
    assert res.network_bytes() == net


@pytest.mark.parametrize("opt", ["adam", "sgd"])
def test_head_rung_on_later_settings_keeps_every_earlier_view(opt):
    model, masks, kw = _allocated("mlp", opt, 0.0)
    x = _data("mlp", n=8, seed=9)[0]
    pac.calibrate(model, masks, _data("mlp", seed=2, shift=0.5), subspace="head", **kw)

    def outputs():
        model.eval()
        with torch.no_grad():
            out = {}
            for s in masks.settings:
                with pac.view(model, masks, s) as m:
                    out[s] = m(x).clone()
        model.train()
        return out

    pac.extend(model, masks, "t2", ratio=0.5)
    before = outputs()
    pac.calibrate(model, masks, _data("mlp", seed=5, shift=1.0), subspace="head",
                  setting="t2", **kw)
    after = outputs()
    assert torch.equal(before["source"], after["source"])
    assert torch.equal(before["target"], after["target"])
    assert not torch.equal(before["t2"], after["t2"])


# ---------------------------------------------------------------- source recovery
def _source_problem():
    model = make_model("mlp")
    src = make_data("mlp", n=96, seed=1)
    fit(model, src, epochs=30, lr=1e-2, device="cpu", seed=0)
    return model, src, make_data("mlp", n=32, seed=3)


def _alloc(model, src, val, **opts):
    # one short epoch at a small lr: allocate cannot recover the source at any ratio
    return allocated_model(model, src, method_options("pac", opts), source_val=val,
                           epochs=1, batch_size=32, lr=1e-4, device="cpu", seed=0)


def test_ratios_back_off_down_to_min_ratio():
    assert method_options("pac", {}).ratios() == (0.8, 0.65, 0.5)
    assert method_options("pac", {"ratio": 0.9, "min_ratio": 0.6}).ratios() == (0.9, 0.75, 0.6)
    assert method_options("pac", {"ratio": 0.5}).ratios() == (0.5,)
    assert method_options("pac", {"allocate": "fixed"}).ratios() == (0.8,)
    assert RATIO_STEP == 0.15
    # the paper's recipe keeps its one ratio and has no back-off options at all
    assert method_options("pac-paper", {}).ratios() == (0.8,)
    assert "min_ratio" not in PACPaperOptions.__dataclass_fields__
    for bad in ({"source_tolerance": 0.99}, {"min_ratio": 0.0}, {"min_ratio": 1.0},
                {"source_tolerance": float("nan")}):
        with pytest.raises(ValueError, match="pac"):
            method_options("pac", bad)


def test_unrecovered_source_keeps_the_ratio_with_the_lowest_loss():
    model, src, val = _source_problem()
    alloc, masks, info = _alloc(model, src, val, source_tolerance=1.0)
    tries = info["tries"]
    assert [t["ratio"] for t in tries] == [0.8, 0.65, 0.5]
    assert not any(t["recovered"] for t in tries)
    best = min(tries, key=lambda t: t["loss"])
    assert masks.ratio == info["ratio"] == best["ratio"]
    assert "no ratio down to 0.5 recovered" in info["reason"]
    assert info["allocated_loss"] == best["loss"]
    # the kept network is that ratio's allocation, to the bit
    again, again_masks, _ = _alloc(model, src, val, source_tolerance=1.0,
                                   min_ratio=best["ratio"], ratio=best["ratio"])
    for (n, a), b in zip(alloc.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), n
    assert mean_loss(alloc, val) == pytest.approx(best["loss"])
    for name, m in masks.essential.items():
        assert torch.equal(m, again_masks.essential[name])


def test_recovered_source_stops_backing_off():
    model, src, val = _source_problem()
    first = _alloc(model, src, val, source_tolerance=1.0)[2]["tries"]
    a, b = first[0]["loss_ratio"], first[1]["loss_ratio"]
    assert b < a, "a lower ratio prunes less and loses less source accuracy"
    # a tolerance between the two: 0.8 fails, 0.65 is kept
    _, masks, info = _alloc(model, src, val, source_tolerance=math.sqrt(a * b))
    assert [t["ratio"] for t in info["tries"]] == [0.8, 0.65]
    assert masks.ratio == 0.65 and info["tries"][1]["recovered"]
    assert "after backing off from 0.8" in info["reason"]
    # a loose tolerance keeps the first ratio after one allocate
    _, masks, info = _alloc(model, src, val, source_tolerance=1e9)
    assert masks.ratio == 0.8 and len(info["tries"]) == 1
    assert "recovered within" in info["reason"] and "backing off" not in info["reason"]


def test_backed_off_ratio_is_recorded_and_honoured_with_allocated():
    model, src, val = _source_problem()
    alloc, masks, _ = _alloc(model, src, val, source_tolerance=1.0)
    tgt = make_data("mlp", n=16, seed=2, shift=0.5)
    kw = dict(steps=2, batch_size=16, lr=1e-2, device="cpu")
    res = adapt("pac", model, tgt, allocated=(alloc, masks), **kw)
    assert res.extra["options"]["ratio"] == masks.ratio
    # the recipe's own ratio is consistent with a backed-off allocation
    adapt("pac", model, tgt, allocated=(alloc, masks), ratio=0.8, **kw)
    with pytest.raises(ValueError, match="ratio 0.3 disagrees with the allocated masks"):
        adapt("pac", model, tgt, allocated=(alloc, masks), ratio=0.3, **kw)
    with pytest.raises(ValueError, match="scope 'layer' disagrees"):
        adapt("pac", model, tgt, allocated=(alloc, masks), scope="layer", **kw)


def test_adapt_records_why_a_ratio_was_used():
    model, src, val = _source_problem()
    tgt = make_data("mlp", n=16, seed=2, shift=0.5)
    res = adapt("pac", model, tgt, source=src, source_val=val, steps=2, batch_size=16,
                lr=1e-2, device="cpu", allocate_kwargs={"epochs": 1, "lr": 1e-4},
                source_tolerance=1.0)
    alloc = res.extra["allocate"]
    assert [t["ratio"] for t in alloc["tries"]] == [0.8, 0.65, 0.5]
    assert res.masks.ratio == alloc["ratio"] == res.extra["options"]["ratio"]


def test_allocate_stop_reference_stops_at_the_unpruned_loss_patience_trains_on():
    model, src, val = _source_problem()
    kw = dict(source_val=val, epochs=10, batch_size=32, lr=3e-3, device="cpu", seed=0)
    one = {"ratio": 0.5, "min_ratio": 0.5}
    assert method_options("pac", {}).allocate_stop == "patience"
    with pytest.raises(ValueError, match="allocate_stop"):
        method_options("pac", {"allocate_stop": "never"})
    _, _, ref = allocated_model(model, src, method_options(
        "pac", {**one, "allocate_stop": "reference"}), **kw)
    _, _, pat = allocated_model(model, src, method_options("pac", one), **kw)
    unpruned, first, rest = ref["unpruned_loss"], ref["history"].val_loss, pat["history"]
    # "reference": the first epoch back at the unpruned loss ends allocate
    assert first[-1] <= unpruned and all(v > unpruned for v in first[:-1])
    # "patience": the same epochs, then on until patience runs out, the best epoch kept
    assert rest.val_loss[:len(first)] == pytest.approx(first)
    assert len(rest.val_loss) > len(first)
    assert pat["allocated_loss"] == min(rest.val_loss) <= ref["allocated_loss"]
    # the old behaviour keeps its identity: records from before the option still match
    old = method_options("pac", {"allocate_stop": "reference"})
    assert "allocate_stop" not in old.identity_dict()
    assert "allocate_stop" not in old.prepare_config()
    assert method_options("pac", {}).prepare_config()["allocate_stop"] == "patience"
    assert method_options("pac", {}).identity_dict()["allocate_stop"] == "patience"
    # ... and is kept wherever the options travel as a dict (records, adapt, suites)
    assert method_options("pac", old.to_dict()).allocate_stop == "reference"
    assert options_record(old, None)["allocate_stop"] == "reference"
    # with a fixed allocate budget it changes nothing and names nothing
    fixed = method_options("pac", {"allocate": "fixed"})
    assert "allocate_stop" not in fixed.identity_dict()
    assert "allocate_stop" not in fixed.prepare_config()
