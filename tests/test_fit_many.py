"""fit_many: K models at once agree with K fit runs, keep every frozen entry exact per
model (PAC invariants inside a stack), and refuse what it cannot do with clear errors."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import check_calibrated, check_source_view, make_data, make_model

from pacsim import pac
from pacsim.exact import L2Penalty
from pacsim.models import CNN, MLP
from pacsim.train import fit, fit_many

CPU = {"device": "cpu"}


def _net(kind: str, seed: int) -> torch.nn.Module:
    """conftest's models without BatchNorm (a stack trains those one by one)."""
    torch.manual_seed(seed)
    if kind == "mlp":
        return MLP(4, 2, hidden=(16, 16))
    return CNN(1, 1, 1, width=6, depth=1, kernel_size=3, padding_mode="circular")


def _data(kind: str, seed: int, n: int = 48, shift: float = 0.0):
    return make_data("mlp" if kind == "mlp" else "cnn1d", n=n, seed=seed, shift=shift)


def _close(a: torch.nn.Module, b: torch.nn.Module, atol: float = 1e-5) -> None:
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, atol=atol, rtol=1e-4, msg=name)


@pytest.mark.parametrize("kind", ["mlp", "cnn1d"])
@pytest.mark.parametrize("optimizer,wd,budget", [("adam", 0.0, {"epochs": 3}),
                                                 ("adamw", 0.1, {"steps": 7}),
                                                 ("adam", 0.05, {"epochs": 2}),
                                                 ("sgd", 0.01, {"steps": 5})])
def test_k3_reproduces_three_fit_runs(kind, optimizer, wd, budget):
    models = [_net(kind, s) for s in range(3)]
    refs = [copy.deepcopy(m) for m in models]
    data = [_data(kind, s) for s in range(3)]
    kw = dict(batch_size=16, optimizer=optimizer, weight_decay=wd, **budget, **CPU)
    hist = fit_many(models, data, seeds=[0, 1, 2], lr=1e-2, **kw)
    for m, r, d, s, h in zip(models, refs, data, range(3), hist):
        ref = fit(r, d, seed=s, lr=1e-2, **kw)
        _close(m, r)
        assert h.steps == ref.steps and h.epochs_run == ref.epochs_run
        assert h.train_loss == pytest.approx(ref.train_loss, rel=1e-5)
        assert h.best_epoch == ref.best_epoch and h.val_loss == []


def test_cosine_schedule_and_val_with_best_epoch_match_fit():
    models = [_net("mlp", s) for s in range(3)]
    refs = [copy.deepcopy(m) for m in models]
    data = [_data("mlp", s) for s in range(3)]
    vals = [_data("mlp", 10, n=20), None, _data("mlp", 11, n=30)]  # sizes may differ
    kw = dict(epochs=6, batch_size=16, lr=3e-2, lr_schedule="cosine", **CPU)
    hist = fit_many(models, data, seeds=[5, 6, 7], val=vals, **kw)
    for m, r, d, v, s, h in zip(models, refs, data, vals, (5, 6, 7), hist):
        ref = fit(r, d, val=v, seed=s, **kw)
        _close(m, r)
        assert h.val_loss == pytest.approx(ref.val_loss, rel=1e-5)
        assert h.val_steps == ref.val_steps and h.best_epoch == ref.best_epoch
    assert len(hist[0].val_loss) == 6 and hist[0].val_steps == [3, 6, 9, 12, 15, 18]
    assert hist[1].val_loss == [] and hist[1].best_epoch == 5
    assert hist[0].best_val == min(hist[0].val_loss)


@pytest.mark.parametrize("kind", ["mlp", "cnn1d"])
def test_per_model_step_budgets_match_fit_with_each_budget(kind):
    """Each model stops after its own budget (mid-epoch, at an epoch end, or at 0) and
    ends where fit(steps=budget) ends; its later updates are discarded, and with a
    validation set its best epoch is chosen among the epochs it trained."""
    budgets = [2, 7, 3, 0, 6]  # 3 batches an epoch: mid-epoch, last, boundary, none
    models = [_net(kind, s) for s in range(5)]
    refs = [copy.deepcopy(m) for m in models]
    data = [_data(kind, s) for s in range(5)]
    vals = [_data(kind, 20 + s, n=10) if s % 2 else None for s in range(5)]
    kw = dict(batch_size=16, lr=2e-2, optimizer="adamw", weight_decay=0.01, **CPU)
    hist = fit_many(models, data, seeds=list(range(5)), val=vals, steps=budgets, **kw)
    for m, r, d, v, s, h, b in zip(models, refs, data, vals, range(5), hist, budgets):
        ref = fit(r, d, val=v, seed=s, steps=b, **kw)
        _close(m, r)
        assert h.steps == ref.steps == b and h.epochs_run == ref.epochs_run
        assert h.train_loss == pytest.approx(ref.train_loss, rel=1e-5)
        assert h.val_loss == pytest.approx(ref.val_loss, rel=1e-5)
        assert h.val_steps == ref.val_steps and h.best_epoch == ref.best_epoch
    untouched = refs[3]
    assert all(torch.equal(p, q) for p, q in zip(models[3].parameters(),
                                                untouched.parameters()))


def test_a_stopped_model_is_held_still_while_the_others_train():
    """A model ends with its row as saved after its budget, and only those steps' losses
    are recorded, so a learning rate that diverges later cannot spoil either; a model
    with budget 0 may freeze everything, as fit(steps=0) allows."""
    models = [_net("mlp", s) for s in range(3)]
    refs = [copy.deepcopy(m) for m in models]
    data = [_data("mlp", s) for s in range(3)]
    kw = dict(batch_size=16, lr=1e6, optimizer="sgd", **CPU)
    hist = fit_many(models, data, seeds=[0, 1, 2], steps=[1, 3, 0],
                    update_masks=[None, None, {}], on_divergence="keep", **kw)
    ref = fit(refs[0], data[0], seed=0, steps=1, **kw)
    assert hist[0].train_loss == pytest.approx(ref.train_loss, rel=1e-5)
    _close(models[0], refs[0])
    assert hist[2].steps == 0 and hist[2].train_loss == []


def test_per_model_budgets_are_checked():
    models = [_net("mlp", s) for s in range(2)]
    data = [_data("mlp", s) for s in range(2)]
    with pytest.raises(ValueError, match="steps has 3 entries for 2 models"):
        fit_many(models, data, steps=[1, 2, 3], **CPU)
    with pytest.raises(ValueError, match=r"steps\[1\] must be an integer >= 0"):
        fit_many(models, data, steps=[1, -2], **CPU)
    with pytest.raises(ValueError, match="need a constant learning rate"):
        fit_many(models, data, steps=[1, 2], lr_schedule="cosine", **CPU)


def _random_masks(model, seed):
    g = torch.Generator().manual_seed(seed)
    return {n: torch.rand(p.shape, generator=g) > 0.5 for n, p in model.named_parameters()}


@pytest.mark.parametrize("kind", ["mlp", "cnn1d"])
def test_frozen_entries_bit_exact_per_model_under_adamw(kind):
    models = [_net(kind, s) for s in range(4)]
    before = [{n: p.detach().clone() for n, p in m.named_parameters()} for m in models]
    names = list(before[0])
    specs = [
        _random_masks(models[0], 0),
        {names[0]: True, names[-1]: _random_masks(models[1], 1)[names[-1]]},  # rest frozen
        None,  # everything trains
        {n: _random_masks(models[3], 3)[n] for n in names[::2]},
    ]
    fit_many(models, [_data(kind, s) for s in range(4)], update_masks=specs,
             seeds=[0, 1, 2, 3], optimizer="adamw", weight_decay=0.5, lr=5e-2, epochs=3,
             batch_size=16, **CPU)
    for m, b, spec in zip(models, before, specs):
        for name, p in m.named_parameters():
            keep = True if spec is None else spec.get(name, False)
            keep = torch.full(p.shape, keep) if isinstance(keep, bool) else keep
            assert torch.equal(p[~keep], b[name][~keep]), name
            if keep.any():
                assert not torch.equal(p[keep], b[name][keep]), name


def _vec(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def _allocate_spec(model, masks):
    spec = {n: True for n, _ in model.named_parameters()}
    spec.update(masks.essential)
    return spec


@pytest.mark.parametrize("kind", ["mlp", "cnn1d"])
def test_pac_invariants_hold_per_model_inside_a_stack(kind):
    models = [_net(kind, s) for s in range(3)]
    masks = [pac.prune(m, ratio=0.7, scope=scope)
             for m, scope in zip(models, ("global", "layer", "global"))]
    src = [_data(kind, 1 + s) for s in range(3)]
    tgt = [_data(kind, 20 + s, shift=0.5) for s in range(3)]
    kw = dict(epochs=3, batch_size=16, lr=1e-2, optimizer="adamw", weight_decay=0.1, **CPU)
    pruned = [{n: p.detach().clone() for n, p in m.named_parameters()} for m in models]

    # allocate: essential entries (and everything unpruned) train, redundant stay 0.0
    fit_many(models, src, update_masks=[_allocate_spec(m, mk) for m, mk in zip(models, masks)],
             penalties=[L2Penalty(0.01, p) for p in pruned], seeds=[0, 1, 2], **kw)
    for m, mk, pr in zip(models, masks, pruned):
        for name, w in pac.prunable_weights(m).items():
            red = w[~mk.essential[name]]
            assert torch.equal(red, torch.zeros_like(red)), name
            assert not torch.equal(w[mk.essential[name]], pr[name][mk.essential[name]]), name
        mk.stage = "allocated"
    allocated = [copy.deepcopy(m) for m in models]

    # calibrate: three different subspaces in one stack, as pac.calibrate sets them up
    options = [("all", False), ("last", False), ("all", True)]
    updates, penalties = [], []
    for m, mk, (subspace, biases) in zip(models, masks, options):
        update = pac.calibrate_update(m, mk, subspace, biases)
        params = dict(m.named_parameters())
        for name, spec in update.items():
            if spec is True:
                mk.source_state[name] = params[name].detach().clone()
        updates.append(update)
        penalties.append(L2Penalty(0.01, {n: None for n in update if n in mk.essential}))
    fit_many(models, tgt, update_masks=updates, penalties=penalties, seeds=[3, 4, 5], **kw)

    x = torch.cat([_data(kind, 9, n=20)[0], 100 * _data(kind, 8, n=4)[0]])
    for m, a, mk, update in zip(models, allocated, masks, updates):
        moved = check_calibrated(a, m, mk, lambda name, u=update: u.get(name) is True)
        assert moved, "calibrate did not train the redundant entries"
        check_source_view(m, mk, a, x)


def test_per_model_lr_and_penalty_take_effect():
    torch.manual_seed(0)
    base = _net("mlp", 0)
    data = _data("mlp", 0)
    anchor = {n: torch.randn_like(p) for n, p in base.named_parameters()}
    settings = [(1e-3, None), (3e-2, None), (1e-2, L2Penalty(1.0, {n: None for n in anchor})),
                (1e-2, L2Penalty(0.5, anchor))]
    models = [copy.deepcopy(base) for _ in settings]
    kw = dict(epochs=4, batch_size=16, **CPU)
    fit_many(models, [data] * 4, seeds=[0] * 4, lr=[s[0] for s in settings],
             penalties=[s[1] for s in settings], **kw)
    for m, (lr, pen) in zip(models, settings):
        ref = copy.deepcopy(base)
        fit(ref, data, seed=0, lr=lr, penalty=pen, **kw)
        _close(m, ref)
    unpulled = copy.deepcopy(base)
    fit(unpulled, data, seed=0, lr=1e-2, **kw)
    w0, w, free = _vec(base), [_vec(m) for m in models], _vec(unpulled)
    assert (w[1] - w0).norm() > 5 * (w[0] - w0).norm()  # the larger learning rate moves further
    assert w[2].norm() < 0.9 * free.norm()  # pulled to zero
    a = torch.cat([t.flatten() for t in anchor.values()])
    assert (w[3] - a).norm() < 0.95 * (free - a).norm()  # pulled to the anchor


def test_batchnorm_falls_back_to_fit_with_a_warning_and_still_trains():
    models = [make_model("cnn1d", s) for s in range(2)]
    refs = [copy.deepcopy(m) for m in models]
    data = [_data("cnn1d", s) for s in range(2)]
    kw = dict(epochs=2, batch_size=16, lr=1e-2, **CPU)
    with pytest.warns(UserWarning, match=r"one by one with fit\(\).*BatchNorm1d.*running"):
        hist = fit_many(models, data, seeds=[0, 1], **kw)
    for m, r, d, s, h in zip(models, refs, data, (0, 1), hist):
        ref = fit(r, d, seed=s, **kw)
        assert h.train_loss == ref.train_loss
        for (name, a), b in zip(m.state_dict().items(), r.state_dict().values()):
            assert torch.equal(a, b), name
        assert not torch.equal(m.state_dict()["blocks.0.norm1.running_mean"],
                               make_model("cnn1d", s).state_dict()["blocks.0.norm1.running_mean"])


class _ReadsAValue(torch.nn.Module):
    """A model vmap cannot run: its forward reads a tensor's value on the host."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = 2.0 if x.abs().max().item() > 100 else 1.0
        return self.lin(x) * scale


def test_a_model_vmap_refuses_falls_back_to_fit_at_its_first_step():
    torch.manual_seed(0)
    models = [_ReadsAValue() for _ in range(2)]
    refs = [copy.deepcopy(m) for m in models]
    data = [_data("mlp", s) for s in range(2)]
    kw = dict(epochs=2, batch_size=16, lr=1e-2, **CPU)
    with pytest.warns(UserWarning, match=r"one by one with fit\(\): torch.func.vmap cannot "
                                         r"run its training step \(RuntimeError: .*item"):
        hist = fit_many(models, data, seeds=[0, 1], **kw)
    for m, r, d, s, h in zip(models, refs, data, (0, 1), hist):
        assert h.train_loss == fit(r, d, seed=s, **kw).train_loss
        for a, b in zip(m.parameters(), r.parameters()):
            assert torch.equal(a, b)


def test_a_failure_while_training_one_by_one_leaves_every_model_as_it_was(monkeypatch):
    """Out of memory on the second model of a one-by-one fallback: the first model's
    training is undone too, so a caller that retries the stack (select_many halves it)
    trains every model once from its starting weights."""
    from pacsim import many

    real_fit = many.fit

    def fit_or_run_out(model, *args, **kwargs):
        if model is models[1]:
            raise many.OUT_OF_MEMORY("out of memory")
        return real_fit(model, *args, **kwargs)

    monkeypatch.setattr(many, "fit", fit_or_run_out)
    torch.manual_seed(0)
    models = [_ReadsAValue() for _ in range(3)]
    before = [copy.deepcopy(m.state_dict()) for m in models]
    with pytest.warns(UserWarning, match="one by one"), pytest.raises(many.OUT_OF_MEMORY):
        fit_many(models, [_data("mlp", s) for s in range(3)], epochs=1, **CPU)
    for m, b in zip(models, before):
        assert all(torch.equal(v, b[n]) for n, v in m.state_dict().items())


def test_running_out_of_memory_in_a_stack_is_not_a_fallback(monkeypatch):
    from pacsim import many

    def no_memory(self, x, y):
        raise many.OUT_OF_MEMORY("out of memory")

    monkeypatch.setattr(many._Stack, "grads_and_losses", no_memory)
    models = [_net("mlp", s) for s in range(2)]
    before = [copy.deepcopy(m.state_dict()) for m in models]
    with pytest.raises(many.OUT_OF_MEMORY):  # select_many halves such a stack
        fit_many(models, [_data("mlp", s) for s in range(2)], epochs=1, **CPU)
    for m, b in zip(models, before):
        assert all(torch.equal(v, b[n]) for n, v in m.state_dict().items())


def test_weights_written_back_and_budget_zero_is_a_no_op():
    models = [_net("mlp", s) for s in range(2)]
    before = [copy.deepcopy(m) for m in models]
    hist = fit_many(models, [_data("mlp", s) for s in range(2)], steps=0, **CPU)
    assert all(h.steps == 0 and h.train_loss == [] for h in hist)
    for m, b in zip(models, before):
        assert all(torch.equal(p, q) for p, q in zip(m.parameters(), b.parameters()))
    rng = torch.get_rng_state()
    fit_many(models, [_data("mlp", s) for s in range(2)], steps=2, seeds=[0, 1], **CPU)
    assert torch.equal(torch.get_rng_state(), rng)  # seeded runs leave the global RNG alone
    for m, b in zip(models, before):
        assert not torch.equal(m.net[0].weight, b.net[0].weight)


class _WithSpare(torch.nn.Module):
    """An MLP plus a parameter the forward pass never uses."""

    def __init__(self) -> None:
        super().__init__()
        self.net = MLP(4, 2, hidden=(16,))
        self.spare = torch.nn.Parameter(torch.ones(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@pytest.mark.parametrize("optimizer,wd", [("adamw", 0.1), ("adam", 0.05), ("sgd", 0.01)])
def test_an_unused_parameter_is_left_alone_as_fit_leaves_it(optimizer, wd):
    """fit's optimiser skips a parameter that gets no gradient (no weight decay either);
    in a stack it would get a zero gradient and decay: fit_many leaves it alone too."""
    torch.manual_seed(0)
    models = [_WithSpare() for _ in range(2)]
    refs = [copy.deepcopy(m) for m in models]
    data = [_data("mlp", 0), _data("mlp", 1)]
    kw = dict(epochs=3, lr=1e-2, batch_size=16, optimizer=optimizer, weight_decay=wd, **CPU)
    fit_many(models, data, seeds=[1, 2], **kw)
    for ref, m, d, seed in zip(refs, models, data, (1, 2)):
        fit(ref, d, seed=seed, **kw)
        assert torch.equal(m.spare, torch.ones(3)) and torch.equal(ref.spare, torch.ones(3))
        _close(m, ref)
    pen = L2Penalty(0.1, {"spare": None})
    with pytest.raises(RuntimeError, match="penalised parameter received no gradient"):
        fit(copy.deepcopy(refs[0]), data[0], penalty=pen, **kw)
    with pytest.raises(RuntimeError, match="penalised parameter received no gradient"):
        fit_many([copy.deepcopy(m) for m in refs], data, penalties=[None, pen], **kw)
    kw.pop("epochs")  # a model with no steps trains nothing, so it refuses nothing
    fit_many([copy.deepcopy(m) for m in refs], data, penalties=[None, pen], steps=[3, 0],
             **kw)


class _Constant(_WithSpare):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros(x.shape[0], 2)


def test_a_model_whose_output_uses_no_trainable_parameter_is_refused():
    data = [_data("mlp", 0), _data("mlp", 1)]
    with pytest.raises(ValueError, match=r"nothing to train in models\[0\]: the forward "
                       "pass uses none"):
        fit_many([_Constant(), _Constant()], data, epochs=1, **CPU)


def test_bad_inputs_give_clear_errors():
    two = [_net("mlp", 0), _net("mlp", 1)]
    data = [_data("mlp", 0), _data("mlp", 1)]
    with pytest.raises(ValueError, match="at least one model"):
        fit_many([], [], epochs=1, **CPU)
    with pytest.raises(ValueError, match=r"same number of samples .* got \[48, 40\]"):
        fit_many(two, [data[0], _data("mlp", 1, n=40)], epochs=1, **CPU)
    with pytest.raises(ValueError, match=r"one architecture: models\[1\]\.config\(\)"):
        fit_many([two[0], MLP(4, 2, hidden=(16, 8))], data, epochs=1, **CPU)
    with pytest.raises(ValueError, match=r"one architecture: models\[1\] is a CNN"):
        fit_many([two[0], _net("cnn1d", 0)], data, epochs=1, **CPU)
    with pytest.raises(ValueError, match=r"one architecture: models\[1\] has"):
        fit_many([torch.nn.Linear(4, 2), torch.nn.Linear(4, 3)], data, epochs=1, **CPU)
    with pytest.raises(ValueError, match="datasets has 1 entries for 2 models"):
        fit_many(two, data[:1], epochs=1, **CPU)
    with pytest.raises(ValueError, match="lr has 3 entries for 2 models"):
        fit_many(two, data, epochs=1, lr=[1e-3] * 3, **CPU)
    with pytest.raises(ValueError, match="lr must be a finite positive number"):
        fit_many(two, data, epochs=1, lr=[1e-3, 0.0], **CPU)
    with pytest.raises(ValueError, match="same model object more than once"):
        fit_many([two[0], two[0]], data, epochs=1, **CPU)
    with pytest.raises(ValueError, match="exactly one of epochs= and steps="):
        fit_many(two, data, **CPU)
    with pytest.raises(ValueError, match=r"datasets\[1\] inputs are"):
        fit_many(two, [data[0], (torch.rand(48, 5), data[1][1])], epochs=1, **CPU)
    with pytest.raises(TypeError, match=r"datasets\[0\] must be an in-memory pair"):
        fit_many(two, [torch.utils.data.TensorDataset(*data[0]), data[1]], epochs=1, **CPU)
    with pytest.raises(ValueError, match=r"update_mask names unknown parameters"):
        fit_many(two, data, update_masks=[{"nope": True}, None], epochs=1, **CPU)
    with pytest.raises(ValueError, match=r"nothing to train in models\[0\]"):
        fit_many(two, data, update_masks=[{}, None], epochs=1, **CPU)
    with pytest.raises(ValueError, match="unknown optimizer"):
        fit_many(two, data, epochs=1, optimizer="lbfgs", **CPU)
    flat_y = [(x, y[:, 0]) for x, y in data]  # (N,) targets, (N, 2) outputs
    with pytest.raises(ValueError, match=r"outputs of shape \(2,\) per sample, the "
                       r"targets have \(\)"):
        fit_many(two, flat_y, epochs=1, **CPU)
    with pytest.raises(ValueError, match=r"outputs of shape \(2,\) per sample"):
        fit(two[0], flat_y[0], epochs=1, **CPU)


@pytest.mark.parametrize("kind", ["mlp", "batchnorm"])
def test_a_diverging_model_raises_as_fit_does_or_trains_on_when_kept(kind):
    """on_divergence="raise" (default): TrainingDiverged names the model and no model is
    changed, stacked or one by one; "keep": the others train as if alone."""
    from pacsim.train import TrainingDiverged

    def nets():
        if kind == "mlp":
            return [_net("mlp", s) for s in range(3)]
        return [make_model("cnn1d", s) for s in range(3)]  # BatchNorm: one by one

    data = [_data("mlp" if kind == "mlp" else "cnn1d", s) for s in range(3)]
    data[1] = (data[1][0], data[1][1] * 1e20)  # its squared error overflows float32
    models = nets()
    before = [copy.deepcopy(m.state_dict()) for m in models]
    with pytest.warns(UserWarning) if kind == "batchnorm" else _no_warning(), \
            pytest.raises(TrainingDiverged, match=r"models\[1\].*no model was changed"):
        fit_many(models, data, epochs=2, lr=1e-2, seeds=[0, 1, 2], **CPU)
    for m, state in zip(models, before):
        assert all(torch.equal(v, m.state_dict()[k]) for k, v in state.items())

    models = nets()
    with pytest.warns(UserWarning) if kind == "batchnorm" else _no_warning():
        hs = fit_many(models, data, epochs=2, lr=1e-2, seeds=[0, 1, 2],
                      on_divergence="keep", **CPU)
    assert not torch.isfinite(torch.tensor(hs[1].train_loss)).all()
    alone = nets()[2]
    fit(alone, data[2], epochs=2, lr=1e-2, seed=2, **CPU)
    _close(models[2], alone)
    with pytest.raises(ValueError, match="on_divergence"):
        fit_many(nets(), data, epochs=1, on_divergence="ignore", **CPU)


def _no_warning():
    import contextlib

    return contextlib.nullcontext()


def test_a_validation_loss_that_is_not_finite_is_never_the_best_epoch():
    """Kept on (as cross-validation keeps it), a model whose validation loss is inf or NaN
    from the first epoch has no best epoch, and restore_best leaves it at its start."""
    models = [_net("mlp", s) for s in range(2)]
    start = copy.deepcopy(models[1].state_dict())
    data = [_data("mlp", s) for s in range(2)]
    bad_val = (data[1][0] * 1e30, data[1][1] * 1e30)  # squared error overflows
    hs = fit_many(models, data, val=[data[0], bad_val], epochs=3, lr=1e-2, seeds=[0, 1],
                  on_divergence="keep", **CPU)
    assert all(not torch.isfinite(torch.tensor(v)) for v in hs[1].val_loss)
    assert hs[1].best_epoch is None and hs[1].best_val is None
    assert all(torch.equal(v, models[1].state_dict()[k]) for k, v in start.items())
    assert hs[0].best_epoch is not None



@pytest.mark.parametrize("optimizer,wd", [("adam", 0.0), ("adamw", 0.1), ("sgd", 0.01)])
def test_prune_stops_models_and_the_others_train_on_exactly_as_without_it(optimizer, wd):
    """Successive halving inside a stack: models stopped at an epoch's end keep the
    weights they have there (as fit with that budget), the rest train on bit for bit as
    in the unpruned stack, with masks, pulls, validation and per-model budgets."""
    models = [_net("mlp", s) for s in range(5)]
    g = torch.Generator().manual_seed(0)
    names = [n for n, _ in models[0].named_parameters()]
    masks = [None, {**dict.fromkeys(names, True), "net.0.weight": False}, None,
             {**dict.fromkeys(names, True),
              "net.2.weight": torch.rand(16, 16, generator=g) > 0.5}, None]
    pens = [None, L2Penalty(0.1, {n: p.detach().clone()
                                  for n, p in models[1].named_parameters()}),
            None, None, L2Penalty(0.05, {"net.4.weight": None})]
    data = [_data("mlp", s) for s in range(5)]
    vals = [_data("mlp", 20 + s, n=12) for s in range(5)]
    kw = dict(batch_size=16, optimizer=optimizer, weight_decay=wd, update_masks=masks,
              penalties=pens, val=vals, restore_best=False, seeds=list(range(5)),
              lr=[1e-2, 3e-3, 1e-2, 5e-3, 2e-2], steps=[12, 12, 12, 7, 12], **CPU)
    ref = [copy.deepcopy(m) for m in models]
    ref_h = fit_many(ref, data, **kw)
    calls = []

    def prune(steps, alive, histories):
        calls.append((steps, list(alive)))
        return {0, 2} if steps == 3 else {4} if steps == 6 else set()

    got_h = fit_many(models, data, prune=prune, **kw)
    assert calls[0] == (3, [0, 1, 2, 3, 4]) and calls[1] == (6, [1, 3, 4])
    assert calls[2] == (9, [1]), "model 3's budget (7) ended: it is no longer alive"
    for k in (1, 3):  # trained on: exactly the unpruned stack's
        for a, b in zip(models[k].parameters(), ref[k].parameters()):
            assert torch.equal(a, b)
        assert got_h[k].train_loss == ref_h[k].train_loss
        assert got_h[k].val_loss == ref_h[k].val_loss and got_h[k].steps == ref_h[k].steps
    for k, at in ((0, 3), (2, 3), (4, 6)):  # stopped: fit with that budget
        alone = copy.deepcopy(_net("mlp", k))
        h = fit(alone, data[k], val=vals[k], steps=at, seed=k, lr=kw["lr"][k], batch_size=16,
                optimizer=optimizer, weight_decay=wd, update_mask=masks[k], penalty=pens[k],
                restore_best=False, **CPU)
        _close(models[k], alone)
        assert got_h[k].steps == at == h.steps and len(got_h[k].val_loss) == at // 3
        assert got_h[k].val_loss == pytest.approx(ref_h[k].val_loss[: at // 3])
    assert torch.equal(models[1].get_parameter("net.0.weight"),
                       _net("mlp", 1).get_parameter("net.0.weight")), "frozen stays exact"
    with pytest.raises(ValueError, match="prune needs restore_best=False"):
        fit_many([_net("mlp", 0)], [data[0]], val=[vals[0]], steps=2, prune=prune, **CPU)


def test_prune_may_name_models_that_already_stopped():
    models = [_net("mlp", s) for s in range(3)]
    data = [_data("mlp", s) for s in range(3)]
    hist = fit_many(models, data, steps=9, batch_size=16, seeds=[0, 1, 2],
                    prune=lambda steps, alive, h: {0}, val=[None] * 3, **CPU)
    assert [h.steps for h in hist] == [3, 9, 9]
