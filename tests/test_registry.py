"""The transfer-method registry: one declaration per method, every list a view of it."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import pytest
import torch
from conftest import make_data, make_model

from pacsim import method_names
from pacsim.transfer import (
    DEFAULT_GRIDS,
    METHODS,
    OPTIONS,
    Method,
    Options,
    SelectionConfig,
    TrainingPlan,
    adapt,
    names,
    registry,
    select,
)
from pacsim.transfer.selection import AUTO_METHODS


@dataclass(frozen=True)
class _FirstOptions(Options):
    scale: float = 1.0


def _first_layer(source_model, opts, ctx):
    model = copy.deepcopy(source_model)
    first = next(n for n, _ in model.named_parameters()).rsplit(".", 1)[0]
    return TrainingPlan(model, {n: n.startswith(first + ".") for n, _ in
                                model.named_parameters()})


@pytest.fixture
def first(monkeypatch):
    """A method registered for one test only."""
    monkeypatch.setattr(registry, "_METHODS", dict(registry._METHODS))
    return registry.register(Method("first", _FirstOptions, {"lr": [1e-3, 1e-2]},
                                    _first_layer, default=False))


def test_builtin_lists_are_views_of_the_registry():
    assert METHODS == method_names.METHODS == names(default=True)
    assert names(keeps_source=True) == method_names.PAC_METHODS
    assert set(OPTIONS) == set(DEFAULT_GRIDS) == set(names())
    assert AUTO_METHODS["auto"] == METHODS
    assert AUTO_METHODS["auto-keep-source"] == method_names.PAC_METHODS
    for m in method_names.PAC_METHODS:
        assert registry.get(m).allocates and registry.get(m).keeps_source


def test_a_registered_method_runs_through_adapt_and_select(first):
    assert "first" in OPTIONS and DEFAULT_GRIDS["first"] == {"lr": [1e-3, 1e-2]}
    assert "first" not in AUTO_METHODS["auto"]
    model = make_model("mlp")
    tgt = make_data("mlp", shift=1.0)
    res = adapt("first", model, tgt, scale=2.0, epochs=2, batch_size=16, lr=1e-2,
                device="cpu", seed=0)
    assert res.extra["options"] == {"scale": 2.0}
    changed = {n for (n, p), q in zip(res.model.named_parameters(), model.parameters())
               if not torch.equal(p, q)}
    assert changed == {"net.0.weight", "net.0.bias"}
    sel = select("first", model, tgt, selection=SelectionConfig(folds=2, max_steps=4,
                                                                extend=0),
                 steps=2, batch_size=16, seed=0, device="cpu")
    assert sel.selection["chosen"]["lr"] in (1e-3, 1e-2)


def test_unknown_and_duplicate_names_are_refused(first):
    with pytest.raises(ValueError, match="unknown transfer method 'nope'"):
        adapt("nope", make_model("mlp"), make_data("mlp"), epochs=1)
    with pytest.raises(ValueError, match="already registered"):
        registry.register(Method("first", Options, {"lr": [1e-3]}, _first_layer))
    with pytest.raises(ValueError, match="takes no 'allocated'"):
        adapt("first", make_model("mlp"), make_data("mlp"), epochs=1, allocated=None)
