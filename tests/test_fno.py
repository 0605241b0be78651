"""The FNO model (neuraloperator) and PAC on complex spectral weights: every PAC
invariant on a tiny FNO in 1D and 2D, checkpoints, every transfer method, the prune
rule and its include/exclude override."""

from __future__ import annotations

import copy
import functools
import sys
import warnings

import numpy as np
import pytest
import torch

pytest.importorskip("neuralop")

from conftest import check_calibrated, check_source_view  # noqa: E402

from pacsim import pac  # noqa: E402
from pacsim.bench.suite import SuiteError, _model  # noqa: E402
from pacsim.data.stats import Normalizer  # noqa: E402
from pacsim.exact import L2Penalty, L2Pull, UpdateMask  # noqa: E402
from pacsim.io import load_checkpoint, load_predictor, save_checkpoint  # noqa: E402
from pacsim.models import FNO, PhysicalModel, build  # noqa: E402
from pacsim.train import fit, fit_many, predict  # noqa: E402
from pacsim.training.core import MaskedStep  # noqa: E402
from pacsim.transfer import METHODS, adapt, head_names  # noqa: E402

SPECTRAL = "net.fno_blocks.convs.*.weight.tensor"
OPTIMS = [("adamw", 0.1), ("sgd", 0.01)]


def make_fno(dim: int, seed: int = 0) -> FNO:
    torch.manual_seed(seed)
    return FNO(dim, 2 if dim == 2 else 1, 1, n_modes=4, hidden_channels=4, n_layers=2)


def make_fields(dim: int, n: int = 32, seed: int = 0, shift: float = 0.0
                ) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    if dim == 1:
        x = torch.randn(n, 1, 16, generator=g)
        return x, torch.roll(x, 1, dims=-1) * (1 + shift) + 0.1
    x = torch.randn(n, 2, 8, 8, generator=g)
    return x, (x[:, :1] * x[:, 1:] + shift).tanh()


@functools.cache
def pipeline(dim: int, optimizer: str = "adamw", weight_decay: float = 0.1,
             train_biases: bool = False, scope: str = "layer", seed: int = 0):
    """Prune, allocate and calibrate a tiny FNO; the allocated copy beside it."""
    model = make_fno(dim)
    kw = dict(epochs=2, batch_size=16, lr=1e-2, optimizer=optimizer,
              weight_decay=weight_decay, device="cpu", seed=seed)
    masks = pac.prune(model, ratio=0.7, scope=scope)
    pac.allocate(model, masks, make_fields(dim, seed=1), **kw)
    allocated = copy.deepcopy(model)
    pac.calibrate(model, masks, make_fields(dim, seed=2, shift=0.5), lam=0.01,
                  train_biases=train_biases, **kw)
    return model, masks, allocated


@pytest.fixture(params=[1, 2], ids=["1d", "2d"])
def dim(request: pytest.FixtureRequest) -> int:
    return request.param


# ----------------------------------------------------------------------------- model


def test_layout_config_and_checkpoint_round_trip(tmp_path, dim):
    model, masks, _ = pipeline(dim, train_biases=True)
    x = make_fields(dim, n=4, seed=5)[0]
    assert model(x).shape == (4, 1, *x.shape[2:])
    twin = build(model.config())
    assert isinstance(twin, FNO) and twin.config() == model.config()
    assert all(isinstance(v, torch.Tensor) for v in model.state_dict().values())
    path = save_checkpoint(tmp_path / "fno.pt", model, masks)
    loaded, lmasks, _ = load_checkpoint(path)
    assert torch.equal(predict(loaded, x), predict(model, x))
    with pac.source_view(model, masks) as a, pac.source_view(loaded, lmasks) as b:
        assert torch.equal(predict(a, x), predict(b, x))
    stats = [np.full((x.shape[1],) + (1,) * dim, v, np.float32) for v in (0.5, 2.0)]
    norm = Normalizer(*stats, *(s[:1] for s in stats))
    path = save_checkpoint(tmp_path / "phys.pt", model, normalizer=norm)
    assert torch.equal(load_predictor(path)(x), PhysicalModel(model, norm).eval()(x))
    with pytest.raises(ValueError, match=r"expects input \(N, C"):
        model(x[0])


def test_argument_errors_and_missing_extra(monkeypatch):
    with pytest.raises(ValueError, match="n_modes must be"):
        FNO(2, 1, 1, n_modes=[4])
    with pytest.raises(ValueError, match="unknown norm"):
        FNO(1, 1, 1, norm="batch")
    monkeypatch.setitem(sys.modules, "neuralop.models", None)
    with pytest.raises(ImportError, match=r"needs neuraloperator .*pacsim\[operators\]"):
        FNO(1, 1, 1)


def test_suites_can_name_it():
    table = {"name": "fno", "n_modes": 16, "hidden_channels": 32}
    assert _model("[pair.b]", table) == table
    assert _model("[pair.d]", {"name": "fno", "n_modes": [8, 8]})["n_modes"] == [8, 8]
    with pytest.raises(SuiteError, match="model has no key 'width'"):
        _model("[pair.b]", {"name": "fno", "width": 3})
    with pytest.raises(SuiteError, match="model has no key 'in_channels'"):
        _model("[pair.b]", {"name": "fno", "in_channels": 3})
    assert isinstance(FNO.for_data((2, 8, 8), (1, 8, 8), n_modes=4), FNO)
    with pytest.raises(ValueError, match="an FNO needs field inputs"):
        FNO.for_data((5,), (1,))


# ----------------------------------------------------------------------------- prune rule


def test_prunable_rule_on_an_fno(dim):
    model = make_fno(dim)
    names = list(pac.prunable_weights(model))
    spectral = [n for n in names if n.endswith(".weight.tensor")]
    assert len(spectral) == 2
    assert all(dict(model.named_parameters())[n].is_complex() for n in spectral)
    assert "net.projection.fcs.1.weight" in names and "net.lifting.fcs.0.weight" in names
    assert not any(n.endswith("bias") for n in names)  # spectral biases are (C, 1, ...)
    assert not any("channel_mlp_skips" in n for n in names)  # soft gates: scales
    params = dict(model.named_parameters())
    assert all(params[n].dim() >= 2 for n in names)


def test_include_and_exclude_override_the_rule():
    model = make_fno(1)
    only = pac.prune(copy.deepcopy(model), ratio=0.5, include=[SPECTRAL])
    assert sorted(only.essential) == ["net.fno_blocks.convs.0.weight.tensor",
                                      "net.fno_blocks.convs.1.weight.tensor"]
    rest = pac.prune(copy.deepcopy(model), ratio=0.5, exclude=[SPECTRAL, "net.lifting.*"])
    assert set(rest.essential) == set(pac.prunable_weights(model)) - set(only.essential) - {
        "net.lifting.fcs.0.weight", "net.lifting.fcs.1.weight"}
    gates = pac.prune(copy.deepcopy(model), ratio=0.5, scope="layer",
                      include=["*channel_mlp_skips*"])
    assert len(gates.essential) == 2
    with pytest.raises(ValueError, match=r"include matches no parameter: \['nope\*'\]"):
        pac.prune(model, include=["nope*"])
    with pytest.raises(ValueError, match="exclude names no prunable weight"):
        pac.prune(model, exclude=["net.projection.fcs.1.bias"])


# ----------------------------------------------------------------------------- invariants


@pytest.mark.filterwarnings("ignore:pruning freed every entry")
@pytest.mark.parametrize("scope", ["global", "layer"])
def test_invariant1_exact_count_ranked_by_modulus(dim, scope):
    model = make_fno(dim)
    weights = pac.prunable_weights(model)
    before = {n: w.detach().clone() for n, w in weights.items()}
    masks = pac.prune(model, ratio=0.8, scope=scope)
    groups = [list(before)] if scope == "global" else [[n] for n in before]
    for group in groups:
        n = sum(before[k].numel() for k in group)
        assert sum(int((~masks.essential[k]).sum()) for k in group) == round(0.8 * n)
        kept = torch.cat([before[k].abs().flatten()[masks.essential[k].flatten()]
                          for k in group])
        cut = torch.cat([before[k].abs().flatten()[~masks.essential[k].flatten()]
                         for k in group])
        assert kept.min() >= cut.max()
    for name, w in weights.items():
        ess = masks.essential[name]
        assert torch.equal(w[~ess], torch.zeros_like(w[~ess]))
        assert torch.equal(w[ess], before[name][ess])


@pytest.mark.parametrize("optimizer,weight_decay", OPTIMS + [("adam", 0.0)])
def test_invariant2_redundant_exactly_zero_after_allocate(dim, optimizer, weight_decay):
    model = make_fno(dim)
    masks = pac.prune(model, ratio=0.6, scope="layer")
    pruned = {n: w.detach().clone() for n, w in pac.prunable_weights(model).items()}
    pac.allocate(model, masks, make_fields(dim), epochs=2, batch_size=16, lr=1e-2,
                 optimizer=optimizer, weight_decay=weight_decay, device="cpu", seed=0,
                 lam_sp=0.01)
    for name, w in pac.prunable_weights(model).items():
        red = w[~masks.essential[name]]
        assert torch.equal(red, torch.zeros_like(red)), name
        ess = masks.essential[name]
        if w.is_complex():  # the essential spectral entries did train
            assert not torch.equal(w[ess], pruned[name][ess]), name


def test_global_pruning_warns_when_it_frees_whole_tensors():
    with pytest.warns(UserWarning, match="freed every entry of .*scope='layer'"):
        masks = pac.prune(make_fno(1), ratio=0.8)
    assert any(not m.any() for m in masks.essential.values())


@pytest.mark.parametrize("train_biases", [False, True])
@pytest.mark.parametrize("optimizer,weight_decay", OPTIMS)
def test_invariant3_calibrate_touches_only_redundant(dim, optimizer, weight_decay,
                                                     train_biases):
    model, masks, allocated = pipeline(dim, optimizer, weight_decay, train_biases)
    moved = check_calibrated(allocated, model, masks,
                             lambda name: train_biases and name.endswith("bias"))
    params = dict(allocated.named_parameters())
    assert any(params[n].is_complex() for n in moved), \
        "calibrate did not train the freed spectral entries"


@pytest.mark.parametrize("train_biases", [False, True])
@pytest.mark.parametrize("optimizer,weight_decay", OPTIMS)
def test_invariant4_source_view_is_bit_exact(dim, optimizer, weight_decay, train_biases):
    model, masks, allocated = pipeline(dim, optimizer, weight_decay, train_biases)
    x = torch.cat([make_fields(dim, n=8, seed=9)[0], 100 * make_fields(dim, n=2, seed=8)[0]])
    check_source_view(model, masks, allocated, x)


def test_invariant5_same_seed_same_bits():
    a, masks_a, _ = pipeline(1, seed=3)
    b, masks_b, _ = pipeline.__wrapped__(1, seed=3)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(pa, pb), name
    assert all(torch.equal(masks_a.essential[n], masks_b.essential[n])
               for n in masks_a.essential)


# ----------------------------------------------------------------------------- exactness


def test_l2_pull_on_complex_is_the_gradient_of_the_squared_modulus():
    torch.manual_seed(0)
    model = make_fno(1)
    name = "net.fno_blocks.convs.0.weight.tensor"
    w = model.get_parameter(name)
    anchor = torch.randn_like(w)
    pull = L2Pull.build(model, L2Penalty(0.3, {name: anchor}), [w], torch.device("cpu"))
    w.grad = torch.zeros_like(w)
    pull.apply()
    (ref,) = torch.autograd.grad(0.3 * (w - anchor).abs().square().sum(), [w])
    assert torch.allclose(w.grad, ref, atol=1e-6)


def test_update_mask_with_clipping_keeps_complex_entries():
    model = make_fno(1)
    name = "net.fno_blocks.convs.0.weight.tensor"
    w = model.get_parameter(name)
    keep = torch.rand(w.shape, generator=torch.Generator().manual_seed(0)) > 0.5
    before = w.detach().clone()
    mask = UpdateMask(model, {name: keep}, torch.device("cpu"))
    step = MaskedStep(mask, None, torch.optim.AdamW(mask.trainable, lr=0.1, weight_decay=0.5),
                      0.1)
    x = make_fields(1, n=4)[0]
    with mask.frozen_tensors():
        for _ in range(3):
            step.zero_grad()
            model(x).square().mean().backward()
            step()
    assert torch.equal(w[~keep], before[~keep]) and not torch.equal(w[keep], before[keep])


# ----------------------------------------------------------------------------- stacks


@pytest.mark.parametrize("dim,modes,grid", [
    (1, 4, 16), (1, 5, 9), (1, 16, 8), (1, 17, 3), (1, 8, 1),
    (2, 4, (8, 8)), (2, (5, 7), (9, 7)), (2, (16, 4), (17, 33)), (2, 8, (3, 5))])
def test_spectral_conv_forward_and_gradients_match_neuraloperator(dim, modes, grid):
    """The out-of-place forward (zero padding instead of an in-place write) gives
    neuraloperator's outputs and gradients bit for bit, modes cut to short grids included."""
    from neuralop.layers.spectral_convolution import SpectralConv

    torch.manual_seed(0)
    conv = FNO(dim, 1, 1, n_modes=modes, hidden_channels=3,
               n_layers=1).net.fno_blocks.convs[0]
    assert type(conv) is not SpectralConv and isinstance(conv, SpectralConv)
    x = torch.randn(2, 3, *((grid,) if dim == 1 else grid))
    outs, grads = [], []
    for forward in (SpectralConv.forward, type(conv).forward):
        conv.zero_grad()
        out = forward(conv, x)
        out.square().sum().backward()
        outs.append(out.detach())
        grads.append([p.grad.clone() for p in conv.parameters()])
    assert torch.equal(outs[0], outs[1])
    assert all(torch.equal(a, b) for a, b in zip(*grads))


@pytest.mark.parametrize("optimizer,wd", [("adamw", 0.1), ("adam", 0.05), ("sgd", 0.01)])
def test_fit_many_stacks_fnos_and_reproduces_fit(dim, optimizer, wd):
    models = [make_fno(dim, seed=s) for s in range(3)]
    refs = [copy.deepcopy(m) for m in models]
    data = [make_fields(dim, n=24, seed=s) for s in range(3)]
    kw = dict(epochs=2, batch_size=8, lr=1e-2, optimizer=optimizer, weight_decay=wd,
              device="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # stacked, not one by one with a warning
        hist = fit_many(models, data, seeds=[0, 1, 2], **kw)
    for m, r, d, s, h in zip(models, refs, data, range(3), hist):
        ref = fit(r, d, seed=s, progress=False, **kw)
        assert h.train_loss == pytest.approx(ref.train_loss, rel=1e-5)
        for (name, a), b in zip(m.named_parameters(), r.parameters()):
            assert a.dtype == b.dtype
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4, msg=name)


def test_complex_entries_frozen_bit_exact_and_pulled_inside_a_stack(dim):
    """Per model: a random mask over the spectral weights (one real/imaginary pair per
    entry) keeps every frozen entry's bits under AdamW decay; an L2 pull towards a complex
    anchor trains as fit's does."""
    models = [make_fno(dim, seed=s) for s in range(3)]
    refs = [copy.deepcopy(m) for m in models]
    spectral = "net.fno_blocks.convs.0.weight.tensor"
    specs, pens = [], []
    for k, m in enumerate(models):
        w = m.get_parameter(spectral)
        keep = torch.rand(w.shape, generator=torch.Generator().manual_seed(k)) > 0.5
        specs.append({n: True for n, _ in m.named_parameters()} | {spectral: keep})
        pens.append(L2Penalty(0.5, {spectral: w.detach() * (1 + 1j * k)}))
    before = [m.get_parameter(spectral).detach().clone() for m in models]
    data = [make_fields(dim, n=16, seed=5 + s) for s in range(3)]
    kw = dict(epochs=2, batch_size=8, lr=5e-2, optimizer="adamw", weight_decay=0.5,
              device="cpu")
    fit_many(models, data, update_masks=specs, penalties=pens, seeds=[0, 1, 2], **kw)
    for k, (m, r, b, spec) in enumerate(zip(models, refs, before, specs)):
        keep, w = spec[spectral], m.get_parameter(spectral)
        assert torch.equal(w[~keep], b[~keep]) and not torch.equal(w[keep], b[keep])
        fit(r, data[k], update_mask=spec, penalty=pens[k], seed=k, progress=False, **kw)
        torch.testing.assert_close(w, r.get_parameter(spectral), atol=1e-5, rtol=1e-4)


def test_pac_invariants_hold_for_fnos_inside_a_stack(dim):
    """Allocate and calibrate three pruned FNOs as stacks, each with its own masks: the
    redundant spectral entries stay 0 through allocate, the essential ones keep their
    bits through calibrate, and each source view gives its allocated model to the bit."""
    models = [make_fno(dim, seed=s) for s in range(3)]
    masks = [pac.prune(m, ratio=0.7, scope=scope)
             for m, scope in zip(models, ("layer", "global", "layer"))]
    kw = dict(epochs=2, batch_size=8, lr=1e-2, optimizer="adamw", weight_decay=0.1,
              device="cpu")
    allocate = [{n: True for n, _ in m.named_parameters()} | mk.essential
                for m, mk in zip(models, masks)]
    fit_many(models, [make_fields(dim, n=16, seed=1 + s) for s in range(3)],
             update_masks=allocate, seeds=[0, 1, 2], **kw)
    for m, mk in zip(models, masks):
        for name, w in pac.prunable_weights(m).items():
            assert torch.equal(w[~mk.essential[name]], torch.zeros_like(w[~mk.essential[name]]))
        mk.stage = "allocated"
    allocated = [copy.deepcopy(m) for m in models]
    updates = []
    for m, mk, subspace in zip(models, masks, ("all", "last", "all")):
        update = pac.calibrate_update(m, mk, subspace, False)
        params = dict(m.named_parameters())
        mk.source_state.update({n: params[n].detach().clone()
                                for n, spec in update.items() if spec is True})
        updates.append(update)
    fit_many(models, [make_fields(dim, n=16, seed=20 + s, shift=0.5) for s in range(3)],
             update_masks=updates, seeds=[3, 4, 5],
             penalties=[L2Penalty(0.01, {n: None for n in u if n in mk.essential})
                        for u, mk in zip(updates, masks)], **kw)
    x = make_fields(dim, n=6, seed=9)[0]
    for m, a, mk, update in zip(models, allocated, masks, updates):
        assert check_calibrated(a, m, mk, lambda name, u=update: u.get(name) is True)
        check_source_view(m, mk, a, x)


def test_stack_auto_on_the_cpu_stacks_1d_fnos_only():
    from pacsim.transfer.selection import will_stack

    cpu = {"device": "cpu"}
    assert will_stack(make_fno(1), "auto", cpu) and not will_stack(make_fno(2), "auto", cpu)
    assert will_stack(make_fno(2), True, cpu)


# ----------------------------------------------------------------------------- transfer


KW = dict(epochs=2, batch_size=16, lr=1e-2, device="cpu", seed=0)


@pytest.mark.parametrize("method", METHODS)
def test_every_method_runs_and_leaves_the_source(method):
    model = make_fno(1)
    state = copy.deepcopy(model.state_dict())
    extra = ({"source": make_fields(1, seed=1), "allocate": "fixed", "scope": "layer"}
             if "pac" in method else {})
    res = adapt(method, model, make_fields(1, seed=2, shift=1.0), **extra, **KW)
    for name, value in model.state_dict().items():
        assert torch.equal(value, state[name]), name
    before, after = dict(model.named_parameters()), dict(res.model.named_parameters())
    changed = {n for n, p in after.items() if not torch.equal(p, before[n])}
    if method == "head":
        assert changed == set(head_names(model)) == {
            n for n in before if n.startswith("net.projection.")}
    elif method == "bitfit":
        assert changed == {n for n in before if n.endswith("bias")}
    elif method in ("finetune", "l2sp", "scratch"):
        assert changed == set(before)
    else:
        assert res.masks is not None and res.masks.stage == "calibrated"
        with res.source_view() as src:
            x = make_fields(1, n=4, seed=6)[0]
            assert torch.isfinite(predict(src, x)).all()


def test_pac_last_subspace_is_the_projection():
    model, masks, _ = pipeline(1)
    update = pac.calibrate_update(model, masks, "last", train_biases=True)
    assert update and all(n.startswith("net.projection.") for n in update)
    assert {n for n, v in update.items() if v is True} == {
        "net.projection.fcs.0.bias", "net.projection.fcs.1.bias"}
