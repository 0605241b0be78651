"""``fit(compile=...)``: the compiled forward trains like the eager one, frozen entries and
PAC's source view stay bit-exact, the caller's model is the one trained, bad values are
refused.

The compiled runs use the ``aot_eager`` backend (AOTAutograd without code generation):
it needs no C compiler, and compiles in well under a second where inductor's first
CPU compile takes ten seconds or more.
"""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import check_calibrated, check_source_view, make_data, make_model
from torch._dynamo.utils import counters

from pacsim import pac
from pacsim.models import MLP
from pacsim.train import compile_options, fit

AOT = {"backend": "aot_eager"}
N = 50  # with batch 16: three full batches and a last one of 2


def _graphs() -> int:
    return counters["stats"]["unique_graphs"]


@pytest.mark.parametrize("kind", ["mlp", "cnn1d"])
def test_compiled_fit_follows_the_eager_run(kind):
    x, y = make_data(kind, n=N, seed=1)
    val = make_data(kind, n=20, seed=2)
    runs = {}
    for compiled in (False, True):
        model = make_model(kind)
        keys = list(model.state_dict())
        hist = fit(model, (x, y), val=val, epochs=4, batch_size=16, lr=1e-2, seed=0,
                   device="cpu", compile=AOT if compiled else False)
        assert list(model.state_dict()) == keys  # no "_orig_mod." prefixes
        runs[compiled] = model, hist
    (eager, h0), (comp, h1) = runs[False], runs[True]
    assert h1.steps == h0.steps == 16 and h1.best_epoch == h0.best_epoch
    torch.testing.assert_close(h1.train_loss, h0.train_loss, rtol=1e-5, atol=0)
    torch.testing.assert_close(h1.val_loss, h0.val_loss, rtol=1e-5, atol=0)
    for name, value in eager.state_dict().items():
        torch.testing.assert_close(comp.state_dict()[name], value, rtol=1e-5, atol=1e-6)
    assert all(p.grad is None for p in comp.parameters())


def test_pac_calibrate_through_compile_keeps_the_source_view(kind):
    model = make_model(kind)
    kw = dict(epochs=3, batch_size=16, lr=1e-2, optimizer="adamw", weight_decay=0.1,
              device="cpu", seed=0, compile=AOT)
    masks = pac.prune(model, ratio=0.7)
    pac.allocate(model, masks, make_data(kind, n=N, seed=1), **kw)
    allocated = copy.deepcopy(model)
    pac.calibrate(model, masks, make_data(kind, n=N, seed=2, shift=0.5), lam=0.01,
                  train_biases=True, **kw)
    moved = check_calibrated(allocated, model, masks, lambda name: name.endswith(".bias"))
    assert moved, "calibrate did not train the redundant entries"
    check_source_view(model, masks, allocated, make_data(kind, n=20, seed=9)[0])


def test_one_static_graph_per_batch_shape_reused_by_later_fits():
    data = make_data("mlp", n=N)
    start = _graphs()
    for _ in range(2):  # a width no other test compiles
        torch.manual_seed(0)
        fit(MLP(4, 2, hidden=(13,)), data, epochs=3, batch_size=16, device="cpu", seed=0,
            compile=AOT)
        assert _graphs() - start == 2  # batches of 16 and the last one of 2


@pytest.mark.parametrize("value,match", [
    (1, "compile must be a bool"), (None, "compile must be a bool"),
    (["aot_eager"], "compile must be a bool"), ("fast", "unknown torch.compile mode 'fast'"),
    ({"mode": "turbo"}, "unknown torch.compile mode 'turbo'"),
    ({"backend": "no-such-backend"}, "unknown torch.compile backend 'no-such-backend'"),
    ({"bakend": "aot_eager"}, r"unknown torch.compile arguments \['bakend'\]"),
    ({"mode": "default", "options": {"max_autotune": True}}, "a mode or options, not both"),
    ({"dynamic": "yes"}, r"compile\['dynamic'\] must be a bool"),
])
def test_bad_compile_values_are_refused(value, match):
    model = make_model("mlp")
    state = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match=match) as err:
        fit(model, make_data("mlp"), epochs=1, device="cpu", seed=0, compile=value)
    assert "\n" not in str(err.value)
    for name, v in model.state_dict().items():
        assert torch.equal(v, state[name]), name


def test_compile_options_per_device():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert compile_options(False, cuda) is None
    assert compile_options(True, cuda)["mode"] == "reduce-overhead"
    assert "mode" not in compile_options(True, cpu)
    assert compile_options("max-autotune", cpu)["mode"] == "max-autotune"
    assert compile_options(AOT, cpu)["dynamic"] is False
    assert compile_options({**AOT, "dynamic": True}, cpu)["dynamic"] is True


def test_frozen_batchnorm_statistics_stay_exact():
    model = make_model("cnn1d")
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    fit(model, make_data("cnn1d", n=N), epochs=2, batch_size=16, device="cpu", seed=0,
        freeze_bn_stats=True, compile=AOT)
    for name, b in model.named_buffers():
        assert torch.equal(b, buffers[name]), name
