"""A tiny transfer problem end to end: every method helps, PAC forgets nothing."""

from __future__ import annotations

import pytest
import torch

from pacsim.demo import DemoSettings, make_problem, run_demo
from pacsim.models import MLP
from pacsim.train import evaluate, fit
from pacsim.transfer import METHODS, adapt


@pytest.fixture(scope="module")
def setup():
    prob = make_problem(n_source=1500, n_target=200, n_test=500, q=3.0, seed=0)
    torch.manual_seed(0)
    model = MLP(10, 1, hidden=(64, 64))
    fit(model, prob.source_train, epochs=40, lr=2e-3, device="cpu", seed=0)
    return prob, model


@pytest.mark.parametrize("method", METHODS)
def test_every_method_beats_zero_shot(setup, method):
    prob, model = setup
    zero_shot = evaluate(model, prob.target_test)["rmse"]
    extra = {"allocate_kwargs": {"epochs": 10, "batch_size": 64}} if method == "pac" else {}
    res = adapt(method, model, prob.target_train, source=prob.source_train, epochs=100,
                batch_size=32, lr=3e-3, device="cpu", seed=0, **extra)
    assert evaluate(res.model, prob.target_test)["rmse"] < 0.9 * zero_shot


def test_pac_source_view_equals_post_allocate_exactly(setup):
    prob, model = setup
    import copy

    from pacsim import pac

    pruned = copy.deepcopy(model)
    masks = pac.prune(pruned, ratio=0.8)
    pac.allocate(pruned, masks, prob.source_train, epochs=10, device="cpu", seed=0)
    allocated_err = evaluate(pruned, prob.source_test)
    res = adapt("pac", model, prob.target_train, allocated=(pruned, masks), epochs=50,
                device="cpu", seed=0)
    with res.source_view() as m:
        assert evaluate(m, prob.source_test) == allocated_err
    assert evaluate(res.model, prob.source_test) != allocated_err


def test_demo_runs_every_method():
    lines: list[str] = []
    rows = run_demo(DemoSettings(n_source=300, n_target=20, source_epochs=2, target_steps=4),
                    device="cpu", log=lines.append)
    assert [r["method"] for r in rows] == list(METHODS)
    assert any("target RMSE" in line for line in lines)
