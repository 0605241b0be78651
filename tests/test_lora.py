"""Method ``lora``: only the low-rank adapters train, the result is a plain model of the
registered class, the source never changes, and selection runs it like any method."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import make_data, make_model

pytest.importorskip("peft")

from pacsim.io import load_checkpoint, save_checkpoint  # noqa: E402
from pacsim.models import MLP  # noqa: E402
from pacsim.transfer import (  # noqa: E402
    DEFAULT_GRIDS,
    METHODS,
    SelectionConfig,
    adapt,
    method_options,
    names,
    select,
    training_plan,
)
from pacsim.transfer.lora import LoRAOptions, lora_targets, merge  # noqa: E402

KW = dict(epochs=3, batch_size=16, lr=1e-2, device="cpu", seed=0)


def test_registered_opt_in_with_its_grid():
    assert "lora" in names() and "lora" not in METHODS
    assert DEFAULT_GRIDS["lora"] == {"lr": [3e-4, 1e-3, 3e-3, 1e-2]}
    opts = method_options("lora", {})
    assert isinstance(opts, LoRAOptions) and (opts.r, opts.alpha, opts.dropout) == (4, None, 0)


@pytest.mark.parametrize("bad", [{"r": 0}, {"alpha": -1.0}, {"dropout": 1.0}, {"rank": 2}])
def test_bad_options_are_refused_by_name(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        method_options("lora", bad)


def test_only_adapted_weights_change_and_the_source_is_untouched(kind):
    model = make_model(kind)
    state = copy.deepcopy(model.state_dict())
    res = adapt("lora", model, make_data(kind, shift=1.0), **KW)
    for name, value in model.state_dict().items():
        assert torch.equal(value, state[name]), name
    assert type(res.model) is type(model) and res.masks is None
    after = res.model.state_dict()
    assert list(after) == list(state)  # a plain state dict of the registered class
    weights = {f"{t}.weight" for t in lora_targets(model)}
    params = dict(model.named_parameters())
    changed = {n for n in params if not torch.equal(after[n], state[n])}
    assert changed == weights, "LoRA changes the adapted weights and nothing else"
    assert res.trainable == sum(4 * (params[w].shape[0] + params[w][0].numel())
                                for w in weights)
    assert res.extra["options"] == {"r": 4, "alpha": None, "dropout": 0.0}


def test_merged_model_computes_what_the_adapted_one_did():
    model = make_model("mlp")
    plan = training_plan("lora", model, method_options("lora", {"r": 2, "alpha": 8.0}),
                         seed=0, final=True)
    with torch.no_grad():
        for n, p in plan.model.named_parameters():
            if ".lora_B" in n:
                p.normal_()
    x = torch.randn(5, 4)
    before = plan.model(x)
    merged = merge(plan.model)
    assert all(".lora_" not in n for n, _ in merged.named_parameters())
    torch.testing.assert_close(merged(x), before, rtol=1e-5, atol=1e-5)


def test_adapters_start_at_zero_and_from_the_seed():
    model = make_model("mlp")
    opts = method_options("lora", {})
    a, b = (training_plan("lora", model, opts, seed=s).model for s in (0, 0))
    c = training_plan("lora", model, opts, seed=1).model
    x = torch.randn(3, 4)
    torch.testing.assert_close(a(x), model(x))  # B = 0: the source's function
    sa, sb, sc = (m.state_dict() for m in (a, b, c))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa if ".lora_A" in k)


def test_checkpoint_round_trip(tmp_path):
    model = make_model("mlp")
    res = adapt("lora", model, make_data("mlp", shift=1.0), **KW)
    save_checkpoint(tmp_path / "lora.pt", res.model)
    loaded, masks, _ = load_checkpoint(tmp_path / "lora.pt")
    assert isinstance(loaded, MLP) and masks is None
    x = torch.randn(3, 4)
    torch.testing.assert_close(loaded(x), res.model(x))


def test_selection_runs_it_stacked_and_one_by_one_alike():
    model = make_model("mlp")
    tgt = make_data("mlp", shift=1.0)
    sel = SelectionConfig(folds=2, max_steps=8, extend=0)
    one, many = (select("lora", model, tgt, selection=sel, steps=4, batch_size=16, seed=0,
                        device="cpu", stack=s) for s in (False, True))
    assert many.selection["stacked"] and not one.selection["stacked"]
    assert one.selection["chosen"] == many.selection["chosen"]
    assert one.selection["steps"] == many.selection["steps"]
    for (n, p), q in zip(one.model.named_parameters(), many.model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5, msg=n)


def test_fno_adapts_its_pointwise_convolutions_not_the_spectral_or_skip_ones():
    pytest.importorskip("neuralop")
    from pacsim.models import FNO

    torch.manual_seed(0)
    model = FNO.for_data((1, 16), (1, 16), hidden_channels=4, n_modes=4, n_layers=1)
    targets = lora_targets(model)
    assert any("lifting" in t for t in targets) and any("projection" in t for t in targets)
    assert not any("skip" in t for t in targets)
    x, y = torch.randn(8, 1, 16), torch.randn(8, 1, 16)
    res = adapt("lora", model, (x, y), epochs=2, batch_size=4, lr=1e-2, device="cpu", seed=0)
    before, after = model.state_dict(), res.model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {f"{t}.weight" for t in targets}
