"""Target-only selection (`pacsim.transfer.select`), typed method options, the PAC
recipes (source-matched allocate, calibration subspaces) and `fit(steps=...)`."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from conftest import check_source_view, make_data, make_model

from pacsim import pac
from pacsim.train import fit, predict
from pacsim.transfer import (
    DEFAULT_GRIDS,
    METHODS,
    Budget,
    SelectionConfig,
    SelectRequest,
    adapt,
    allocated_model,
    check_grid,
    method_options,
    select,
    select_many,
)

KW = dict(device="cpu", progress=False, batch_size=16)


def _problem(n=12):
    model = make_model("mlp")
    src = make_data("mlp", n=96, seed=1)
    fit(model, src, epochs=20, lr=1e-2, device="cpu", seed=0)
    return model, src, make_data("mlp", n=n, seed=2, shift=0.5)


@pytest.mark.parametrize("method", METHODS)
def test_select_every_method_on_a_tiny_problem(method):
    model, src, tgt = _problem()
    sel = SelectionConfig(folds=3, max_steps=12, extend=0)
    res = select(method, model, tgt, selection=sel, steps=4, source=src, seed=0, **KW)
    s = res.selection
    assert s["mode"] == "cv" and s["folds"] == 3 and 1 <= s["steps"] <= 12
    assert res.history.steps == s["steps"], "the retrain runs exactly the chosen steps"
    grid = DEFAULT_GRIDS[method]
    keys = {k for g in (grid if isinstance(grid, list) else [grid]) for k in g}
    assert set(s["chosen"]) <= keys and "lr" in s["chosen"]
    # every baseline searches 4 configurations; PAC's ladder of 4 subspaces takes 5
    assert len(s["curves"]) == (5 if method == "pac" else 4)
    best = min(min(loss for _, loss in c) for c in s["curves"].values())
    assert s["cv_loss"] == pytest.approx(best)


@pytest.mark.parametrize("method", METHODS)
def test_stacked_cv_runs_the_same_trainings(method):
    """Folds x configurations as fit_many stacks: same curves up to float rounding, so
    the same choice; n = 13 with 3 folds gives two fold sizes (two stacks)."""
    import numpy as np

    model, src, tgt = _problem(n=13)
    sel = SelectionConfig(folds=3, max_steps=12, extend=0)
    one = select(method, model, tgt, selection=sel, steps=4, source=src, seed=0, **KW)
    both = select(method, model, tgt, selection=sel, steps=4, source=src, seed=0, stack=True,
                  **KW)
    assert both.selection["stacked"] and not one.selection["stacked"]
    assert both.selection["chosen"] == one.selection["chosen"]
    assert both.selection["steps"] == one.selection["steps"]
    for key, curve in one.selection["curves"].items():
        np.testing.assert_allclose(np.array(both.selection["curves"][key])[:, 1],
                                   np.array(curve)[:, 1], rtol=1e-4, atol=1e-6)
    _same_result(both, one)


@pytest.mark.parametrize("method,batch_size", [("finetune", 16), ("pac", 16),
                                               ("finetune", 4)])
def test_a_diverging_configuration_is_never_chosen_stacked_or_not(method, batch_size):
    """A learning rate that blows a fold up (loss inf, then NaN) leaves that
    configuration's curve NaN both ways and the other one is chosen; one by one, fit's
    divergence error no longer fails the whole selection. Batches of 16 take one step
    an epoch (the loss overflows in the second), of 4 two (in the first, before any
    validation)."""
    import math

    model, src, tgt = _problem(n=12)
    sel = SelectionConfig(folds=3, max_steps=12, extend=0)
    grid = {"lr": [1e-3, 1e9]}
    kw = {**KW, "batch_size": batch_size}
    runs = [select(method, model, tgt, selection=sel, steps=4, source=src, seed=0,
                   grid=grid, stack=stack, **kw) for stack in (False, True)]
    for res in runs:
        assert res.selection["chosen"]["lr"] == 1e-3
        blown = res.selection["curves"]["lr=1000000000.0"]
        assert any(math.isnan(loss) for _, loss in blown)
        assert math.isfinite(res.selection["cv_loss"])
    assert runs[0].selection["steps"] == runs[1].selection["steps"]
    with pytest.raises(ValueError, match="no finite validation loss"):
        select(method, model, tgt, selection=sel, steps=4, source=src, seed=0,
               grid={"lr": [1e9]}, stack=False, **kw)


def test_a_fold_whose_training_loss_overflows_rules_out_its_configuration():
    """A stack keeps training a diverged model, whose validation loss may still look
    finite: a non-finite training loss alone makes the fold's curve NaN from the end of
    that epoch, as where fit stops (one by one), so the configuration is never chosen."""
    import math
    from types import SimpleNamespace

    from pacsim.train import History
    from pacsim.transfer.selection import _choose

    def fold(train, val):
        return History(train_loss=train, val_loss=val, val_steps=[4, 8, 12][: len(val)],
                       steps=4 * len(train))

    from pacsim.transfer.selection import _config_key

    configs = [{"lr": 1.0}, {"lr": 0.1}]
    s = SimpleNamespace(configs=configs, horizons=[12, 12], pruned=set(), kwargs={}, origins=[0, 0],
                        key=lambda c, base: _config_key(configs[c]))
    good = [fold([1.0, 0.5, 0.4], [0.9, 0.6, 0.5]), fold([1.0, 0.5, 0.4], [0.9, 0.6, 0.5])]
    blown_stacked = [fold([1.0, math.inf, math.nan], [0.1, 0.2, 0.3]), good[0]]
    blown_alone = [fold([1.0, math.inf], [0.1]), good[0]]  # what fit leaves behind
    for blown in (blown_stacked, blown_alone):
        c, step, loss, curves = _choose(s, [blown, good], max_steps=12)
        assert configs[c] == {"lr": 0.1} and step == 12 and loss == pytest.approx(0.5)
        early = [v for st, v in curves["lr=1.0"] if 4 <= st < 8]
        assert early and all(v == pytest.approx(0.5) for v in early), "finite before"
        assert all(math.isnan(v) for st, v in curves["lr=1.0"] if st >= 8)
    assert _choose(s, [good, good], max_steps=12)[0] == 0
    with pytest.raises(ValueError, match="no finite validation loss"):
        _choose(s, [blown_stacked, blown_alone], max_steps=12)


def _same_result(a, b):
    """Two transfers that ran the same trainings (up to float rounding)."""
    assert a.method == b.method and a.trainable == b.trainable
    assert a.extra["options"] == b.extra["options"]
    assert a.history.steps == b.history.steps
    for (name, p), q in zip(a.model.named_parameters(), b.model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5, msg=name)
    assert (a.masks is None) == (b.masks is None)
    if a.masks is not None:
        assert a.masks.stage == b.masks.stage == "calibrated"
        for name, m in a.masks.essential.items():
            assert torch.equal(m, b.masks.essential[name])
        with a.source_view() as va, b.source_view() as vb:
            for (name, p), q in zip(va.named_parameters(), vb.parameters()):
                assert torch.equal(p, q), f"source view of {name} is not bit-identical"


def test_select_many_stacks_cells_across_methods_and_seeds():
    """Many transfers in one call (every method, two seeds, two target sizes): each
    result equals its own select() up to float rounding, with the same choices; the
    PAC results' source views are bit-identical to the allocated model's."""
    model, src, _ = _problem()
    allocated = {}
    for m in ("pac", "pac-paper"):
        opts = method_options(m, {})
        am, masks, _ = allocated_model(model, src, opts, epochs=2, lr=1e-2, batch_size=16,
                                       device="cpu", seed=0)
        allocated[m] = (am, masks)
    reqs = []
    for seed in (0, 1):
        for n in (9, 12):
            tgt = make_data("mlp", n=n, seed=10 + seed, shift=0.5)
            for m in METHODS:
                extra = {"allocated": allocated[m]} if m in allocated else {}
                reqs.append(SelectRequest(m, model, tgt, seed=seed, extra=extra))
    sel = SelectionConfig(folds=3, max_steps=9, extend=0)
    kw = dict(selection=sel, steps=3, device="cpu", batch_size=16)
    many = select_many(reqs, stack=True, **kw)
    assert len(many) == len(reqs)
    for req, res in zip(reqs, many):
        ref = select(req.method, req.source_model, req.target, seed=req.seed, stack=False,
                     **req.extra, **kw)
        assert res.selection["stacked"] and not ref.selection["stacked"]
        assert res.selection["chosen"] == ref.selection["chosen"], req.method
        assert res.selection["steps"] == ref.selection["steps"], req.method
        _same_result(res, ref)
        if res.masks is not None:
            check_source_view(res.model, res.masks, allocated[req.method][0], req.target[0])
    for m in allocated.values():
        assert m[1].stage == "allocated", "the shared allocated masks are never changed"


@pytest.mark.parametrize("stack", [False, True])
def test_a_scheduled_final_retrain_follows_the_path_its_folds_validated(monkeypatch, stack):
    """With a cosine schedule the folds anneal over max_steps; the chosen step count is a
    point on that path, so the final retrain anneals over max_steps too and stops there
    (annealing over the chosen count instead would train a path nobody validated)."""
    import pacsim.many
    import pacsim.train
    import pacsim.training.single

    horizons: list[tuple[int | None, int]] = []
    real = pacsim.train.schedule_horizon

    def spy(schedule_steps, budget):
        horizons.append((schedule_steps, budget))
        return real(schedule_steps, budget)

    model, _, tgt = _problem()
    monkeypatch.setattr(pacsim.training.single, "schedule_horizon", spy)
    monkeypatch.setattr(pacsim.many, "schedule_horizon", spy)
    res = select("finetune", model, tgt, selection=SelectionConfig(folds=3, max_steps=12, extend=0),
                 steps=4, seed=0, lr_schedule="cosine", stack=stack, **KW)
    assert res.selection["steps"] < 12, "the case needs a final shorter than max_steps"
    assert horizons and all(real(s, b) == 12 for s, b in horizons), horizons
    assert (12, res.selection["steps"]) in horizons
    with pytest.raises(ValueError, match="schedule_steps must be an integer >= the budget"):
        fit(copy.deepcopy(model), tgt, steps=5, schedule_steps=4, lr_schedule="cosine",
            device="cpu")
    with pytest.raises(ValueError, match="schedule_steps is not a selection argument"):
        select("finetune", model, tgt, selection=SelectionConfig(folds=3, max_steps=12, extend=0),
               steps=4, lr_schedule="cosine", schedule_steps=20, **KW)
    fixed = select("finetune", model, tgt, selection=SelectionConfig(mode="fixed"), steps=4,
                   lr_schedule="cosine", schedule_steps=20, **KW)  # no CV: fit's argument
    assert fixed.history.steps == 4


def test_select_many_with_a_schedule_stacks_finals_together():
    """With a cosine schedule, final retrains of different chosen step counts share the
    folds' horizon and so a stack, and each result is its own select()'s."""
    model, _, _ = _problem()
    reqs = [SelectRequest("finetune", model, make_data("mlp", n=12, seed=30 + s, shift=0.5),
                          seed=s) for s in range(4)]
    kw = dict(selection=SelectionConfig(folds=3, max_steps=12, extend=0), steps=4, device="cpu",
              lr_schedule="cosine")
    many = select_many(reqs, stack=True, max_stack=5, **kw)
    assert len({r.selection["steps"] for r in many}) > 1, "the case needs two budgets"
    for req, res in zip(reqs, many):
        ref = select(req.method, model, req.target, seed=req.seed, **kw)
        assert res.selection["steps"] == ref.selection["steps"]
        _same_result(res, ref)


def test_a_stack_that_runs_out_of_device_memory_is_trained_in_halves(monkeypatch):
    """fit_many raising OutOfMemoryError for stacks of more than 5 models: the stacks
    are split in halves until they fit, and every result is the unsplit one's."""
    from pacsim.transfer import selection as sel_mod

    model, src, _ = _problem()
    reqs = [SelectRequest(m, model, make_data("mlp", n=12, seed=40 + s, shift=0.5), seed=s)
            for s in range(2) for m in ("finetune", "l2sp")]
    kw = dict(selection=SelectionConfig(folds=3, max_steps=8, extend=0), steps=3, device="cpu",
              stack=True, max_stack=None)
    whole = select_many(reqs, **kw)
    real, sizes = sel_mod.fit_many, []

    def small_memory(models, *args, **kwargs):
        sizes.append(len(models))
        if len(models) > 5:
            raise torch.OutOfMemoryError("CUDA out of memory (test)")
        return real(models, *args, **kwargs)

    monkeypatch.setattr(sel_mod, "fit_many", small_memory)
    with pytest.warns(UserWarning, match="ran out of device memory"):
        split = select_many(reqs, **kw)
    # 4 requests x 4 configurations x 3 folds of 8 samples: one stack of 48, then halves
    assert sizes[:4] == [48, 24, 12, 6]
    assert sum(k for k in sizes if k <= 5) == 48 + 4, "every model trained once"
    for a, b in zip(split, whole):
        assert a.selection["chosen"] == b.selection["chosen"]
        assert a.selection["steps"] == b.selection["steps"]
        _same_result(a, b)

    monkeypatch.setattr(sel_mod, "fit_many", lambda models, *a, **k: (_ for _ in ()).throw(
        torch.OutOfMemoryError("CUDA out of memory (test)")))
    with pytest.raises(torch.OutOfMemoryError), pytest.warns(UserWarning):
        select_many(reqs[:1], **kw)


def test_select_many_mixes_stacks_with_models_that_cannot_stack():
    """A model fit_many cannot stack (BatchNorm) trains one by one beside a stack; fixed
    selection runs each request's budget."""
    mlp, _, tgt = _problem()
    cnn = make_model("cnn1d")
    tgt_cnn = make_data("cnn1d", n=8, seed=3)
    reqs = [SelectRequest("finetune", mlp, tgt, seed=1), SelectRequest("bitfit", cnn, tgt_cnn),
            SelectRequest("head", mlp, tgt, seed=2)]
    sel = SelectionConfig(folds=2, max_steps=4, extend=0)
    out = select_many(reqs, selection=sel, steps=2, stack=True, device="cpu")
    assert [r.selection["stacked"] for r in out] == [True, False, True]
    assert [r.method for r in out] == ["finetune", "bitfit", "head"]
    fixed = select_many(reqs, selection=SelectionConfig(mode="fixed"), steps=2, stack=True,
                        device="cpu")
    assert [r.history.steps for r in fixed] == [2, 2, 2]
    assert all(r.selection == {"mode": "fixed", "chosen": {}, "steps": 2} for r in fixed)


def test_stacking_falls_back_where_models_cannot_stack():
    model = make_model("cnn1d")  # BatchNorm: trained one by one, without a warning
    tgt = make_data("cnn1d", n=6, seed=2)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = select("finetune", model, tgt,
                     selection=SelectionConfig(folds=2, max_steps=3, extend=0), steps=1,
                     seed=0, stack=True, **KW)
    assert res.selection["stacked"] is False


def test_budget_is_checked_and_spelled_either_way():
    """A Budget and its keywords are one budget: the same trainings bit for bit, in
    select and select_many; giving both, neither or a non-Budget is a TypeError."""
    with pytest.raises(ValueError, match="steps must be >= 1, got 0"):
        Budget(steps=0)
    with pytest.raises(ValueError, match="stack must be True, False or 'auto', got 'yes'"):
        Budget(steps=1, stack="yes")
    assert Budget(4) == Budget(steps=4, lr=1e-3, batch_size=32, stack=False)
    model, src, tgt = _problem(n=10)
    sel = SelectionConfig(folds=2, max_steps=6, extend=1)
    kw = {"device": "cpu", "progress": False}
    for stack in (False, True):
        a = select("l2sp", model, tgt, Budget(3, lr=1e-2, batch_size=8, stack=stack),
                   selection=sel, seed=1, groups=np.arange(10) // 2, **kw)
        b = select("l2sp", model, tgt, selection=sel, steps=3, lr=1e-2, batch_size=8,
                   stack=stack, seed=1, groups=np.arange(10) // 2, **kw)
        c = select_many([SelectRequest("l2sp", model, tgt, 1, groups=np.arange(10) // 2)],
                        Budget(3, lr=1e-2, batch_size=8, stack=stack), selection=sel, **kw)[0]
        assert a.selection == b.selection == c.selection
        for (n, p), q, r in zip(a.model.state_dict().items(), b.model.state_dict().values(),
                                c.model.state_dict().values()):
            assert torch.equal(p, q) and torch.equal(p, r), n
    with pytest.raises(TypeError, match="lr given beside budget"):
        select("finetune", model, tgt, Budget(3), lr=1e-2, **kw)
    with pytest.raises(TypeError, match="missing the training budget"):
        select("finetune", model, tgt, lr=1e-2, **kw)
    with pytest.raises(TypeError, match="budget must be a Budget, got int"):
        select("finetune", model, tgt, 3, **kw)
    with pytest.raises(TypeError, match="steps given beside budget"):
        select_many([SelectRequest("finetune", model, tgt)], Budget(3), steps=4, **kw)

def test_auto_stacks_where_measured_faster_on_the_cpu():
    from pacsim.models import CNN

    sel = SelectionConfig(folds=2, max_steps=2, extend=0)
    mlp = select("finetune", make_model("mlp"), make_data("mlp", n=6), selection=sel,
                 steps=1, seed=0, stack="auto", **KW)
    torch.manual_seed(0)
    cnn2d = CNN(2, 2, 1, width=4, depth=1, kernel_size=3)
    conv = select("finetune", cnn2d, make_data("cnn2d", n=6), selection=sel, steps=1,
                  seed=0, stack="auto", **KW)
    assert mlp.selection["stacked"] and not conv.selection["stacked"]
    with pytest.raises(ValueError, match="stack"):
        select("finetune", make_model("mlp"), make_data("mlp", n=6), selection=sel, steps=1,
               stack="yes", **KW)


def test_select_is_reproducible_by_seed_and_depends_on_it():
    model, src, tgt = _problem(n=15)
    sel = SelectionConfig(folds=5, max_steps=20, extend=0)
    runs = [select("l2sp", model, tgt, selection=sel, steps=5, seed=s, **KW) for s in (3, 3, 4)]
    a, b, c = runs
    assert a.selection == b.selection
    for p, q in zip(a.model.parameters(), b.model.parameters()):
        assert torch.equal(p, q)
    assert a.selection["curves"] != c.selection["curves"], "other folds for another seed"


def test_select_only_sees_the_target_samples_it_is_given(monkeypatch):
    """Every training and validation sample comes from the n target samples; the
    folds partition them and the final retrain uses all of them (and, to keep its
    lowest-loss epoch, watches its loss on them)."""
    model, src, tgt = _problem(n=10)
    seen = []
    import pacsim.transfer.selection as mod

    real = mod.adapt

    def spy(method, source_model, data, **kw):
        seen.append((data[0], kw.get("val")))
        return real(method, source_model, data, **kw)

    monkeypatch.setattr(mod, "adapt", spy)
    select("finetune", model, tgt, selection=SelectionConfig(folds=5, max_steps=5, extend=0),
           steps=2, grid={"lr": [1e-3]}, **KW)
    rows = {tuple(r.tolist()) for r in tgt[0]}
    assert len(seen) == 6
    for x, val in seen[:5]:
        vx = val[0]
        assert len(x) == 8 and len(vx) == 2
        assert {tuple(r.tolist()) for r in torch.cat([x, vx])} == rows
    final_x, final_val = seen[5]
    assert torch.equal(final_x, tgt[0])
    # final="best" (the default) watches the retrain's loss on its own samples
    assert torch.equal(final_val[0], tgt[0]) and torch.equal(final_val[1], tgt[1])
    held_out = torch.cat([v[0] for _, v in seen[:5]])
    assert {tuple(r.tolist()) for r in held_out} == rows, "each sample validated once"


def test_cv_keeps_groups_whole():
    """Samples of one trajectory (group) are validated together, never trained on in the
    same fold; folds shrink to the number of groups; one group cannot be cross-validated."""
    from pacsim.transfer.selection import cv_splits

    groups = np.repeat([7, 3, 9, 1, 5, 2], [4, 1, 3, 2, 2, 3])
    for seed in (0, 1):
        splits = cv_splits(len(groups), 5, seed, groups)
        assert len(splits) == 5
        val = np.concatenate([v for _, v in splits])
        assert sorted(val.tolist()) == list(range(len(groups)))
        for train, v in splits:
            assert not set(groups[train]) & set(groups[v])
    assert len(cv_splits(6, 5, 0, [0, 0, 0, 1, 1, 1])) == 2
    with pytest.raises(ValueError, match="at least 2 groups"):
        cv_splits(4, 5, 0, [3, 3, 3, 3])
    with pytest.raises(ValueError, match="one id per target sample"):
        cv_splits(4, 5, 0, [0, 1])
    model, src, tgt = _problem(n=12)
    res = select("finetune", model, tgt, selection=SelectionConfig(folds=5, max_steps=6, extend=0),
                 steps=2, seed=0, groups=np.arange(12) // 4, **KW)
    assert res.selection["folds"] == 3


def test_a_grid_may_be_a_list_of_tables():
    model, src, tgt = _problem()
    grid = [{"subspace": ["all"], "lr": [1e-3, 1e-2]}, {"subspace": ["last", "biases"]}]
    assert check_grid("pac", grid) == [{"subspace": ["all"], "lr": [1e-3, 1e-2]},
                                       {"subspace": ["last", "biases"]}]
    res = select("pac", model, tgt, selection=SelectionConfig(folds=3, max_steps=5, extend=0),
                 steps=2, source=src, grid=grid, **KW)
    assert sorted(res.selection["curves"]) == ["lr=0.001,subspace=all", "lr=0.01,subspace=all",
                                               "subspace=biases", "subspace=last"]
    with pytest.raises(ValueError, match="needs train_biases=True"):
        check_grid("pac-paper", {"subspace": ["biases"]})
    with pytest.raises(ValueError, match="grid is an empty list"):
        check_grid("pac", [])


def test_fixed_selection_runs_the_budget_with_the_given_options():
    model, src, tgt = _problem()
    res = select("l2sp", model, tgt, selection=SelectionConfig(mode="fixed"), steps=7,
                 options={"alpha": 0.5}, **KW)
    assert res.selection == {"mode": "fixed", "chosen": {}, "steps": 7}
    assert res.extra["options"]["alpha"] == 0.5 and res.history.steps == 7


def test_selection_and_option_errors_name_the_key():
    with pytest.raises(ValueError, match="has no option 'ratoi'"):
        method_options("pac", {"ratoi": 0.5})
    with pytest.raises(ValueError, match="option 'alpha' must be float"):
        method_options("l2sp", {"alpha": "big"})
    with pytest.raises(ValueError, match="has no option 'alpha'"):
        method_options("finetune", {"alpha": 5})
    with pytest.raises(ValueError, match="ratio must lie in \\(0, 1\\)"):
        method_options("pac", {"ratio": 1.5})
    with pytest.raises(ValueError, match="subspace must be one of"):
        method_options("pac", {"subspace": "first"})
    with pytest.raises(ValueError, match="cannot search 'ratio'"):
        check_grid("pac", {"ratio": [0.5, 0.8]})
    with pytest.raises(ValueError, match="grid has no key 'beta'"):
        check_grid("l2sp", {"beta": [1.0]})
    with pytest.raises(ValueError, match="'lr' values must be positive"):
        check_grid("finetune", {"lr": [0.0]})
    with pytest.raises(ValueError, match="folds must be an integer >= 2"):
        SelectionConfig(folds=1)
    with pytest.raises(ValueError, match="selection has no key 'fold'"):
        SelectionConfig.from_value({"fold": 3})
    assert SelectionConfig.from_value("fixed").mode == "fixed"
    model, _, tgt = _problem()
    with pytest.raises(ValueError, match="has no option 'lam'"):
        adapt("finetune", model, tgt, lam=0.1, epochs=1, **KW)
    with pytest.raises(ValueError, match="takes no 'allocated'"):
        adapt("head", model, tgt, allocated=None, epochs=1, **KW)


def test_pac_recipes_differ_as_documented():
    paper, ours = method_options("pac-paper"), method_options("pac")
    assert (paper.lam, paper.allocate, paper.train_biases) == (0.01, "fixed", False)
    assert (ours.lam, ours.allocate, ours.train_biases) == (0.0, "source", True)
    assert paper.prepare_config() != ours.prepare_config()
    assert "lam" not in ours.prepare_config() and "ratio" in ours.prepare_config()


def test_source_matched_allocate_stops_once_the_source_error_is_back():
    model, src, _ = _problem()
    val = make_data("mlp", n=48, seed=5)
    res = adapt("pac", model, make_data("mlp", n=12, seed=2), source=src, source_val=val,
                ratio=0.5, allocate_kwargs={"epochs": 30}, epochs=1,
                allocate_stop="reference", **KW)
    info, hist = res.extra["allocate"], res.extra["allocate_history"]
    assert info["allocate"] == "source"
    assert hist.epochs_run <= 30 * 4
    reached = [v for v in hist.val_loss if v <= info["unpruned_loss"]]
    if reached:  # stopped at the first epoch back at the unpruned loss
        assert hist.val_loss[-1] <= info["unpruned_loss"]
        assert len(reached) == 1
    else:  # or ran out of patience / budget, keeping the best epoch
        assert info["allocated_loss"] == min(hist.val_loss)
    # the default trains on past it until its patience runs out, the best epoch kept
    on = adapt("pac", model, make_data("mlp", n=12, seed=2), source=src, source_val=val,
               ratio=0.5, allocate_kwargs={"epochs": 30}, epochs=1, **KW)
    longer = on.extra["allocate_history"]
    assert longer.epochs_run >= hist.epochs_run
    assert on.extra["allocate"]["allocated_loss"] == min(longer.val_loss) \
        <= info["allocated_loss"]
    fixed = adapt("pac", model, make_data("mlp", n=12, seed=2), source=src, ratio=0.5,
                  allocate="fixed", allocate_kwargs={"epochs": 3}, epochs=1, **KW)
    assert fixed.extra["allocate_history"].epochs_run == 3
    # the yardstick is in the trainer's loss, so it compares with allocate's val losses
    from pacsim.train import mean_loss

    l1 = adapt("pac", model, make_data("mlp", n=12, seed=2), source=src, source_val=val,
               ratio=0.5, allocate_kwargs={"epochs": 2}, epochs=1, loss="l1", **KW)
    assert l1.extra["allocate"]["unpruned_loss"] == pytest.approx(
        mean_loss(model, val, loss="l1"), rel=1e-6)
    assert info["unpruned_loss"] == pytest.approx(mean_loss(model, val), rel=1e-6)


@pytest.mark.parametrize("subspace", ["all", "last", "biases"])
@pytest.mark.parametrize("train_biases", [False, True])
@pytest.mark.parametrize("optimizer,weight_decay", [("adamw", 0.1), ("sgd", 0.01)])
def test_pac_invariants_hold_for_every_calibration_subspace(kind, subspace, train_biases,
                                                            optimizer, weight_decay):
    if subspace == "biases" and not train_biases:
        with pytest.raises(ValueError, match="needs train_biases=True"):
            pac.calibrate_update(make_model(kind), pac.prune(make_model(kind), 0.5), subspace)
        return
    model = make_model(kind)
    src, tgt = make_data(kind, seed=1), make_data(kind, seed=2, shift=0.5)
    kw = dict(epochs=3, batch_size=16, lr=1e-2, optimizer=optimizer,
              weight_decay=weight_decay, device="cpu", seed=0)
    masks = pac.prune(model, ratio=0.7)
    pac.allocate(model, masks, src, **kw)
    allocated = copy.deepcopy(model)
    pac.calibrate(model, masks, tgt, lam=0.01, subspace=subspace, train_biases=train_biases,
                  **kw)
    update = pac.calibrate_update(model, masks, subspace, train_biases)
    before = dict(allocated.named_parameters())
    last = [n for n, m in masks.essential.items() if not m.all()][-1]
    for name, p in model.named_parameters():
        spec = update.get(name, False)
        if spec is False:
            assert torch.equal(p, before[name]), name
        elif isinstance(spec, torch.Tensor):
            assert torch.equal(p[~spec], before[name][~spec]), name
            if spec.any():
                assert bool((p[spec] != 0).any()), f"{name}: freed entries did train"
    if subspace == "last":
        assert set(n for n in update if n in masks.essential) == {last}
    if subspace == "biases":
        assert not set(update) & set(masks.essential) and update
    x = tgt[0]
    with pac.source_view(model, masks):
        assert torch.equal(predict(model, x), predict(allocated, x))


def test_fit_steps_runs_exactly_that_many_optimiser_steps():
    model = make_model("mlp")
    data = make_data("mlp", n=40)
    h = fit(model, data, steps=7, batch_size=16, device="cpu", seed=0,
            val=make_data("mlp", n=8, seed=3))
    assert h.steps == 7 and h.epochs_run == 3 and h.val_steps == [3, 6, 7]
    with pytest.raises(ValueError, match="exactly one of epochs= and steps="):
        fit(model, data, steps=3, epochs=1, device="cpu")
    with pytest.raises(ValueError, match="exactly one of epochs= and steps="):
        fit(model, data, device="cpu")
    a, b = make_model("mlp"), make_model("mlp")
    fit(a, data, steps=9, batch_size=16, device="cpu", seed=1)
    fit(b, data, epochs=3, batch_size=16, device="cpu", seed=1)
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q), "9 steps of 3 batches are exactly 3 epochs"


def test_serving_bytes_one_network_plus_mask_for_pac():
    model, src, tgt = _problem()
    n_bytes = 4 * sum(p.numel() for p in model.parameters())
    ft = adapt("finetune", model, tgt, epochs=1, **KW)
    assert ft.serving_bytes() == 2 * n_bytes
    res = adapt("pac", model, tgt, source=src, allocate="fixed", train_biases=True, epochs=1,
                **KW)
    biases = 4 * sum(p.numel() for n, p in model.named_parameters() if n.endswith("bias"))
    bits = -(-res.masks.n_total() // 8)
    assert res.serving_bytes() == n_bytes + bits + biases


def _linear_problem():
    """Noise-free linear regression from zero weights: a short horizon rewards large
    learning rates and more steps, so a small grid's choice sits at its top edge."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 4, generator=g)
    y = x @ torch.tensor([[3.0], [-2.0], [1.5], [2.5]])
    model = torch.nn.Linear(4, 1)
    with torch.no_grad():
        model.weight.zero_()
        model.bias.zero_()
    return model, (x, y)


def test_a_choice_at_a_grids_edge_extends_that_axis_until_it_is_interior():
    model, tgt = _linear_problem()
    kw = dict(steps=10, grid={"lr": [3e-3, 1e-2]}, device="cpu", batch_size=10)
    plain = select("finetune", model, tgt, selection=SelectionConfig(
        folds=4, max_steps=20, extend=0), **kw).selection
    assert plain["chosen"] == {"lr": 0.01} and not plain["interior"]
    assert plain["edges"][0].startswith("lr=0.01 at the top of its grid")
    s = select("finetune", model, tgt, selection=SelectionConfig(folds=4, max_steps=20),
               **kw).selection
    # the best learning rate is 10x the grid's top: found by extending the axis
    assert s["chosen"]["lr"] >= 0.1 and not any(e.startswith("lr=") for e in s["edges"])
    assert s["cv_loss"] < plain["cv_loss"] / 10
    tried = sorted(float(k.split(",")[0][3:]) for k in s["curves"])
    assert max(tried) > s["chosen"]["lr"], "one step past the choice was tried and lost"
    # more steps always help here: the horizon doubled up to 3 times, then it says so
    assert s["horizon"] == 160 and s["steps"] > 0.9 * 160
    assert s["edges"] == [f"steps={s['steps']} at the horizon 160 (the extension limit)"]
    assert s["configs"] > 4 and s["trainings"] == 4 * s["configs"]


def test_extensions_stop_at_bounds_caps_and_option_limits():
    from pacsim.transfer.selection import _next_value

    assert _next_value("lr", 0.5, 1, 3.0) == 1.0, "the bound is the last value tried"
    assert _next_value("lr", 1.0, 1, 3.0) is None, "the learning rate stays <= 1"
    assert _next_value("lr", 0.3, 1, 3.0) == 0.9
    assert _next_value("alpha", 1e-4, -1, 100.0) == 1e-6
    assert _next_value("lam", 0.0, 1, 3.0) is None, "a geometric axis cannot leave 0"
    model, tgt = _linear_problem()
    s = select("finetune", model, tgt, selection=SelectionConfig(
        folds=4, max_steps=20, max_factor=3), steps=10, grid={"lr": [3e-3, 1e-2]},
        device="cpu", batch_size=10).selection
    assert s["horizon"] == 30 and s["edges"][-1].endswith("at the horizon 30 (the step cap)")


def test_every_default_grid_searches_the_same_size_and_l2sp_reaches_finetuning():
    from sklearn.model_selection import ParameterGrid

    sizes = {m: len(ParameterGrid(g)) for m, g in DEFAULT_GRIDS.items()}
    assert sizes.pop("pac") == 5, "PAC's ladder: biases, last, head at one lr; all at two"
    assert set(sizes.values()) == {4}
    ladder = [s for t in DEFAULT_GRIDS["pac"] for s in t["subspace"]]
    assert ladder == ["biases", "last", "head", "all"]
    assert min(DEFAULT_GRIDS["l2sp"]["alpha"]) <= 1e-4
    assert max(DEFAULT_GRIDS["l2sp"]["lr"]) == max(DEFAULT_GRIDS["finetune"]["lr"])


def test_auto_runs_every_methods_cv_on_the_same_folds_and_retrains_the_lowest():
    model, src, tgt = _problem()
    sel = SelectionConfig(folds=3, max_steps=8, extend=0)
    res = select("auto", model, tgt, selection=sel, steps=4, source=src, seed=0, **KW)
    auto = res.selection["auto"]
    assert auto["method"] == "auto" and set(auto["cv_loss"]) == set(METHODS)
    assert auto["pick"] == min(auto["cv_loss"], key=auto["cv_loss"].get) == res.method
    one = select(auto["pick"], model, tgt, selection=sel, steps=4, source=src, seed=0, **KW)
    assert one.selection["cv_loss"] == auto["cv_loss"][auto["pick"]]
    assert one.selection["chosen"] == res.selection["chosen"]
    _same_result(res, one)
    # each candidate's CV loss is the one its own select reports: the same folds
    other = next(m for m in ("finetune", "head") if m != auto["pick"])
    assert select(other, model, tgt, selection=sel, steps=4, seed=0, **KW).selection[
        "cv_loss"] == auto["cv_loss"][other]


def test_auto_keep_source_only_picks_pac_methods_and_keeps_the_source_exact():
    model, src, tgt = _problem()
    sel = SelectionConfig(folds=3, max_steps=8, extend=0)
    res = select("auto-keep-source", model, tgt, selection=sel, steps=4, source=src, seed=0,
                 **KW)
    assert set(res.selection["auto"]["cv_loss"]) == {"pac", "pac-paper"}
    assert res.method in ("pac", "pac-paper") and res.masks is not None
    with pytest.raises(ValueError, match="needs the source data"):
        select("auto-keep-source", model, tgt, selection=sel, steps=4, **KW)
    without = select("auto", model, tgt, selection=sel, steps=4, seed=0, **KW)
    assert not {"pac", "pac-paper"} & set(without.selection["auto"]["cv_loss"])
    with pytest.raises(ValueError, match="needs selection mode 'cv'"):
        select("auto", model, tgt, selection=SelectionConfig(mode="fixed"), steps=4, **KW)
    with pytest.raises(ValueError, match="takes no options"):
        select("auto", model, tgt, selection=sel, steps=4, grid={"lr": [1e-3]}, **KW)


def test_successive_halving_keeps_the_clear_winner_for_less_training():
    model, tgt = _linear_problem()
    kw = dict(steps=20, grid={"lr": [1e-4, 3e-4, 1e-3, 3e-2]}, device="cpu", batch_size=10)
    full = select("finetune", model, tgt, selection=SelectionConfig(
        folds=4, extend=0, halving=0), **kw).selection
    runs = {}
    for stack in (False, True):
        runs[stack] = select("finetune", model, tgt, stack=stack, selection=SelectionConfig(
            folds=4, extend=0, halving=3), **kw)
    half, stacked = runs[False].selection, runs[True].selection
    assert full["chosen"] == half["chosen"] == stacked["chosen"] == {"lr": 0.03}
    assert full["steps"] == half["steps"] == stacked["steps"]
    assert full["halved"] == 0 and half["halved"] == stacked["halved"] == 3
    # 4 configurations x 4 folds x 60 steps exhaustively; rungs at 60/9 and 60/3 steps,
    # moved to epoch ends (3 steps an epoch): 6 and 21, keep 2, then 1, inside a stack
    assert full["cv_steps"] == 4 * 4 * 60
    assert stacked["cv_steps"] == 4 * 4 * 6 + 2 * 4 * (21 - 6) + 1 * 4 * (60 - 21)
    assert half["cv_steps"] == full["cv_steps"], "one by one, every fold trains to the end"
    assert half["curves"] == stacked["curves"], "the same rule decides in both"
    assert max(st for st, _ in half["curves"]["lr=0.0001"]) == 6
    _same_result(runs[False], runs[True])
    with pytest.raises(ValueError, match="halving must be 0"):
        SelectionConfig(halving=1)


def test_a_configuration_trained_again_for_a_longer_horizon_supersedes_the_shorter():
    from types import SimpleNamespace

    from pacsim.transfer.selection import _superseded

    s = SimpleNamespace(configs=[{"lr": 0.1}, {"lr": 0.3}, {"lr": 0.1}],
                        horizons=[20, 20, 40], origins=[0, 0, 0])
    assert [_superseded(s, c) for c in range(3)] == [True, False, False]


def test_a_longer_run_that_diverges_does_not_hide_the_shorter_and_halving_falls_back():
    import math
    from types import SimpleNamespace

    from pacsim.train import History
    from pacsim.transfer.selection import _choose, _config_key

    def fold(vals, every=2):
        return History(train_loss=[1.0] * len(vals), val_loss=vals,
                       val_steps=[every * (i + 1) for i in range(len(vals))],
                       steps=every * len(vals))

    configs = [{"lr": 0.1}, {"lr": 0.1}]
    s = SimpleNamespace(configs=configs, horizons=[10, 20], origins=[0, 0], pruned=set(),
                        kwargs={}, key=lambda c, base: f"{_config_key(configs[c])}@{c}")
    short = [fold([0.5, 0.4, 0.3, 0.2, 0.1])] * 2
    blown = [fold([0.5, 0.4, 0.3, 0.2, 0.1, 0.1, 0.1, math.nan, math.nan, math.nan])] * 2
    assert _choose(s, [short, blown], 10)[:2] == (0, 10), "the longer run diverged"
    fine = [fold([0.5, 0.4, 0.3, 0.2, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1])] * 2
    assert _choose(s, [short, fine], 10)[0] == 1, "a finite longer run supersedes"
    # halving stopped every finite configuration: choose among them rather than fail
    s2 = SimpleNamespace(configs=[{"lr": 0.1}, {"lr": 0.3}], horizons=[10, 10],
                         origins=[0, 0], pruned={0}, kwargs={},
                         key=lambda c, base: str(c))
    assert _choose(s2, [short, [fold([0.5, math.nan] + [0.1] * 3)] * 2], 10)[0] == 0


def test_auto_skips_a_candidate_whose_every_configuration_diverges(monkeypatch):
    import pacsim.transfer.selection as mod

    model, src, tgt = _problem()
    real = mod._choose

    def head_blows_up(s, histories, max_steps):
        if s.method == "head":
            raise ValueError("cross-validation produced no finite validation loss")
        return real(s, histories, max_steps)

    monkeypatch.setattr(mod, "_choose", head_blows_up)
    res = select("auto", model, tgt, selection=SelectionConfig(folds=3, max_steps=8,
                                                               extend=0),
                 steps=4, seed=0, **KW)
    assert res.selection["auto"]["cv_loss"]["head"] == float("inf")
    assert res.method != "head"
    with pytest.raises(ValueError, match="no finite validation loss"):
        select("head", model, tgt, selection=SelectionConfig(folds=3, max_steps=8),
               steps=4, seed=0, **KW)


def test_final_best_keeps_the_retrains_lowest_loss_epoch_on_the_target_samples():
    """``final="best"`` keeps the final retrain's epoch with the lowest loss on its own
    n samples: same choice and steps as ``"last"``, a lower loss where the last state sat
    on a spike (lr 0.3 here), stacked or not, and PAC's source view stays exact."""
    import dataclasses

    model, src, _ = _problem()
    tgt = make_data("mlp", n=16, seed=2, shift=0.5)
    kw = {**KW, "batch_size": 4}
    best = SelectionConfig(folds=2, max_steps=40, extend=0)
    assert best.final == "best", "the default"
    last = dataclasses.replace(best, final="last")
    assert "final" not in last.identity_dict() and best.identity_dict()["final"] == "best"
    assert SelectionConfig.from_value(last.to_dict()) == last  # a round trip keeps it
    with pytest.raises(ValueError, match="selection final must be one of"):
        SelectionConfig(final="first")

    def mse(res):
        return float(torch.mean((predict(res.model, tgt[0]) - tgt[1]) ** 2))

    losses = {}
    for stack in (False, True):
        a = select("finetune", model, tgt, selection=last, steps=20, grid={"lr": [0.3]},
                   seed=0, stack=stack, **kw)
        b = select("finetune", model, tgt, selection=best, steps=20, grid={"lr": [0.3]},
                   seed=0, stack=stack, **kw)
        assert a.selection["steps"] == b.selection["steps"]
        assert mse(b) < 0.95 * mse(a), "the last state sat on a spike: an earlier epoch is kept"
        assert mse(b) == pytest.approx(min(b.history.val_loss), rel=1e-5)
        losses[stack] = mse(b)
    assert losses[True] == pytest.approx(losses[False], rel=1e-4)
    alloc = allocated_model(model, src, method_options("pac", {}), epochs=4, seed=0,
                            device="cpu")
    for stack in (False, True):
        res = select("pac", model, tgt, selection=best, steps=20,
                     grid={"lr": [0.3], "subspace": ["all"]}, seed=0, stack=stack,
                     allocated=alloc[:2], **kw)
        check_source_view(res.model, res.masks, alloc[0], src[0])
