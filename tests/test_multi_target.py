"""Several settings in one network (`pac.extend`, `pac.view`): every earlier setting's
outputs stay bit-identical while later ones are added, under every optimiser."""

from __future__ import annotations

import pytest
import torch
from conftest import make_data, make_model

from pacsim import pac
from pacsim.io import load_checkpoint, save_checkpoint

OPTIMIZERS = {"adam": {}, "adamw": {"weight_decay": 0.1}, "sgd": {}}


def _kw(opt: str) -> dict:
    return {"epochs": 2, "batch_size": 16, "lr": 1e-2, "device": "cpu", "seed": 0,
            "optimizer": opt, **OPTIMIZERS[opt]}


def _outputs(model, masks, x) -> dict[str, torch.Tensor]:
    model.eval()
    out = {}
    for s in masks.settings:
        with torch.no_grad(), pac.view(model, masks, s) as m:
            out[s] = m(x).clone()
    model.train()
    return out


def _chain_start(kind: str, opt: str):
    model = make_model(kind)
    masks = pac.prune(model, ratio=0.6)
    pac.allocate(model, masks, make_data(kind, seed=1), **_kw(opt))
    pac.calibrate(model, masks, make_data(kind, seed=2, shift=0.5), lam=0.0,
                  train_biases=True, **_kw(opt))
    return model, masks


@pytest.mark.parametrize("opt", sorted(OPTIMIZERS))
def test_earlier_settings_stay_bit_identical(kind, opt):
    model, masks = _chain_start(kind, opt)
    x = make_data(kind, n=8, seed=9)[0]
    for step, name in enumerate(("t2", "t3")):
        retrain = make_data(kind, seed=2 + step, shift=0.5 * (step + 1)) if step else None
        pac.extend(model, masks, name, ratio=0.5, data=retrain,
                   **(_kw(opt) if retrain is not None else {}))
        before = _outputs(model, masks, x)
        pac.calibrate(model, masks, make_data(kind, seed=5 + step, shift=1.0 + step),
                      lam=0.01, train_biases=True, setting=name, **_kw(opt))
        after = _outputs(model, masks, x)
        for s in masks.settings[:-1]:
            assert torch.equal(before[s], after[s]), (kind, opt, name, s)
        assert not torch.equal(before[name], after[name])  # the new setting did train
        with torch.no_grad():
            model.eval()
            assert torch.equal(after[name], model(x))  # the newest view is the model
            model.train()
    assert masks.settings == ["source", "target", "t2", "t3"]


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_extend_frees_exactly_the_ratio_of_the_newest_settings_entries(scope):
    model, masks = _chain_start("mlp", "adam")
    owned = {n: o == 1 for n, o in masks.owners().items()}
    pac.extend(model, masks, "t2", ratio=0.3, scope=scope)
    owners = masks.owners()
    if scope == "global":
        n1 = sum(int(m.sum()) for m in owned.values())
        assert sum(int((o == 2).sum()) for o in owners.values()) == round(0.3 * n1)
    else:
        for n, m in owned.items():
            assert int((owners[n] == 2).sum()) == round(0.3 * int(m.sum()))
    weights = dict(model.named_parameters())
    for n, o in owners.items():
        assert torch.all(weights[n][o == 2] == 0)  # freed entries start at zero
        assert torch.equal(o == 0, masks.essential[n])  # the source keeps its own
        assert not torch.any((o == 2) & ~owned[n])  # only the newest setting's entries


def test_freed_entries_are_the_smallest_of_the_newest_setting():
    model, masks = _chain_start("mlp", "adam")
    weights = {n: w.detach().clone() for n, w in model.named_parameters()}
    pac.extend(model, masks, "t2", ratio=0.5, scope="global")
    freed = torch.cat([weights[n][o == 2].abs() for n, o in masks.owners().items()])
    kept = torch.cat([weights[n][o == 1].abs() for n, o in masks.owners().items()])
    assert freed.max() <= kept.min()


def test_views_and_errors_name_the_settings(tmp_path):
    model, masks = _chain_start("mlp", "adam")
    with pytest.raises(ValueError, match="source, target"):
        with pac.view(model, masks, "nope"):
            pass
    with pytest.raises(ValueError, match="newest setting"):
        pac.calibrate(model, masks, make_data("mlp"), setting="source", epochs=1)
    with pytest.raises(ValueError, match="exists already"):
        pac.extend(model, masks, "target")
    pac.extend(model, masks, "t2")
    with pytest.raises(pac.StageError):
        pac.extend(model, masks, "t3")  # t2 is not calibrated yet
    pac.calibrate(model, masks, make_data("mlp", seed=4, shift=1.0), epochs=1, seed=0,
                  train_biases=True, setting="t2")
    x = make_data("mlp", n=5, seed=7)[0]
    want = _outputs(model, masks, x)
    save_checkpoint(tmp_path / "m.pt", model, masks)
    model2, masks2, _ = load_checkpoint(tmp_path / "m.pt")
    assert masks2.settings == masks.settings
    got = _outputs(model2, masks2, x)
    for s in masks.settings:
        assert torch.equal(want[s], got[s]), s


def test_single_target_checkpoints_read_as_two_settings(tmp_path):
    model, masks = _chain_start("mlp", "adam")
    state = masks.state_dict()
    for key in ("settings", "owner", "setting_state"):  # a file of an earlier pacsim
        state.pop(key)
    old = pac.Masks.from_state_dict(state)
    assert old.settings == ["source", "target"] and old.owner is None
    x = make_data("mlp", n=5, seed=7)[0]
    with torch.no_grad(), pac.source_view(model, old) as m:
        a = m(x).clone()
    with torch.no_grad(), pac.view(model, masks, "source") as m:
        assert torch.equal(a, m(x))
