"""TrainConfig: one set of training options for fit and fit_many, keyword overrides of
its fields, and fit's callbacks."""

from __future__ import annotations

import dataclasses
import inspect

import pytest
import torch
from conftest import make_data, make_model

from pacsim.exact import L2Penalty
from pacsim.train import StopWhen, TrainConfig, TrainingDiverged, fit, fit_many

CPU = dict(device="cpu", batch_size=16)


def _same(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def _named(fn) -> int:
    return sum(p.kind is not p.VAR_KEYWORD for p in inspect.signature(fn).parameters.values())


def test_trainers_take_at_most_eight_named_parameters():
    assert _named(fit) <= 8 and _named(fit_many) <= 8


@pytest.mark.parametrize("kwargs,match", [
    ({"epochs": -1}, "epochs must be >= 0"),
    ({"epochs": 2.5}, "epochs must be a whole number"),
    ({"steps": True}, "steps must be a whole number"),
    ({"steps": [1, -2]}, r"steps\[1\] must be an integer >= 0"),
    ({"lr": 0.0}, "lr must be a finite positive number, got 0.0"),
    ({"lr": [1e-3, float("nan")]}, "lr must be a finite positive number"),
    ({"lr": "fast"}, "lr must be a number"),
    ({"batch_size": 0}, "batch_size must be positive"),
    ({"weight_decay": -1.0}, "weight_decay must be >= 0"),
    ({"optimizer": "lbfgs"}, "unknown optimizer 'lbfgs'"),
    ({"loss": "hinge"}, "unknown loss 'hinge'"),
    ({"lr_schedule": "step"}, "unknown lr_schedule 'step'"),
    ({"schedule_steps": 2.0}, "schedule_steps must be an integer"),
    ({"patience": 0}, "patience must be >= 1"),
    ({"clip_grad": -1.0}, "clip_grad must be None or a finite positive"),
    ({"channels_last": "yes"}, "channels_last must be None, True or False"),
    ({"compile": "fastest"}, "unknown torch.compile mode"),
    ({"on_divergence": "ignore"}, "on_divergence must be 'raise' or 'keep'"),
])
def test_config_values_are_checked_where_the_config_is_made(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**kwargs)
    with pytest.raises(ValueError, match=match):  # the same check through fit
        fit(make_model("mlp"), make_data("mlp"), **{"epochs": 1, "device": "cpu", **kwargs})


def test_config_is_frozen_and_needs_one_budget_only_to_train():
    cfg = TrainConfig(lr=1e-2)  # no budget yet: fine for a config
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.lr = 1.0  # type: ignore[misc]
    with pytest.raises(ValueError, match="exactly one of epochs= and steps="):
        fit(make_model("mlp"), make_data("mlp"), cfg, device="cpu")
    with pytest.raises(ValueError, match="exactly one of epochs= and steps="):
        TrainConfig(epochs=1, steps=2).check_budget()
    assert TrainConfig(steps=[1, 2]).steps == (1, 2)  # per-model values are kept as tuples


def test_an_unknown_override_is_a_type_error_naming_it_and_the_valid_names():
    with pytest.raises(TypeError, match=r"fit\(\) got an unexpected keyword argument "
                                        r"'learning_rate'.*epochs, steps, lr.*stop_when"):
        fit(make_model("mlp"), make_data("mlp"), epochs=1, learning_rate=0.1)
    with pytest.raises(TypeError, match=r"fit_many\(\) got an unexpected keyword argument "
                                        r"'progress'.*on_divergence$"):
        fit_many([make_model("mlp")], [make_data("mlp")], epochs=1, progress=False)
    with pytest.raises(TypeError, match="takes a TrainConfig as config, got dict"):
        fit(make_model("mlp"), make_data("mlp"), {"epochs": 1})  # type: ignore[arg-type]


def test_overrides_take_precedence_over_the_config():
    cfg = TrainConfig(epochs=3, lr=1e-2, batch_size=8, optimizer="sgd")
    assert cfg.updated({"lr": 0.5}) == dataclasses.replace(cfg, lr=0.5)
    # a budget given alone replaces the config's
    assert cfg.updated({"steps": 5}).epochs is None and cfg.updated({"steps": 5}).steps == 5
    assert cfg.epochs == 3 and cfg.lr == 1e-2  # the config itself is unchanged
    data = make_data("mlp")
    a, b = make_model("mlp"), make_model("mlp")
    ha = fit(a, data, cfg, lr=0.05, steps=7, device="cpu", seed=0)
    hb = fit(b, data, steps=7, lr=0.05, batch_size=8, optimizer="sgd", device="cpu", seed=0)
    assert ha.steps == hb.steps == 7 and ha.train_loss == hb.train_loss
    _same(a, b)


def test_fit_with_a_config_is_bit_identical_to_fit_with_its_fields():
    x, y = make_data("mlp", n=64)
    val = make_data("mlp", n=24, seed=1)
    keep = torch.rand(16, 4, generator=torch.Generator().manual_seed(0)) < 0.5
    fields = dict(steps=11, lr=0.02, batch_size=16, weight_decay=0.1, optimizer="adamw",
                  loss="huber", lr_schedule="cosine", schedule_steps=20, clip_grad=0.5,
                  patience=3, restore_best=True, device="cpu")
    a, b = make_model("mlp"), make_model("mlp")
    run = dict(val=val, update_mask={"net.0.weight": keep, "net.2.bias": True},
               penalty=L2Penalty(0.1, {"net.2.bias": None}), seed=3)
    ha = fit(a, (x, y), TrainConfig(**fields), **run)
    hb = fit(b, (x, y), **fields, **run)
    _same(a, b)
    assert (ha.train_loss, ha.val_loss, ha.best_epoch) == (hb.train_loss, hb.val_loss,
                                                            hb.best_epoch)


def test_fit_many_with_a_config_is_bit_identical_to_fit_many_with_its_fields():
    data = [make_data("mlp", seed=s) for s in range(3)]
    fields = dict(steps=[3, 6, 5], lr=[1e-3, 1e-2, 3e-2], lr_schedule=None, **CPU)
    a = [make_model("mlp", s) for s in range(3)]
    b = [make_model("mlp", s) for s in range(3)]
    fit_many(a, data, TrainConfig(**fields), seeds=[0, 1, 2])
    fit_many(b, data, seeds=[0, 1, 2], **fields)
    for m, n in zip(a, b):
        _same(m, n)


def test_fit_many_refuses_the_options_of_fit_alone():
    with pytest.raises(ValueError, match="fit_many takes no patience=2"):
        fit_many([make_model("mlp")], [make_data("mlp")], TrainConfig(epochs=1, patience=2),
                 **CPU)
    with pytest.raises(ValueError, match="one per model is fit_many's"):
        fit(make_model("mlp"), make_data("mlp"), steps=2, lr=[1e-3, 1e-2], **CPU)


class _Recorder:
    """Stops after ``stop_at`` epochs and records what fit told it."""

    def __init__(self, stop_at: int) -> None:
        self.stop_at, self.calls = stop_at, []

    def on_train_begin(self, epochs: int) -> None:
        self.calls.append(("begin", epochs))

    def on_epoch_end(self, history) -> bool:
        self.calls.append(("epoch", history.epochs_run))
        return history.epochs_run >= self.stop_at

    def on_train_end(self, history) -> None:
        self.calls.append(("end", history.epochs_run))


def test_a_callback_stops_training():
    rec = _Recorder(stop_at=2)
    hist = fit(make_model("mlp"), make_data("mlp"), epochs=10, callbacks=[rec], seed=0, **CPU)
    assert hist.epochs_run == 2 and hist.stopped_early
    assert rec.calls == [("begin", 10), ("epoch", 1), ("epoch", 2), ("end", 2)]
    # stop_when= is the same callback
    a, b = make_model("mlp"), make_model("mlp")
    ha = fit(a, make_data("mlp"), epochs=10, stop_when=lambda h: h.epochs_run >= 3, seed=0,
             progress=False, **CPU)
    hb = fit(b, make_data("mlp"), epochs=10, callbacks=[StopWhen(lambda h: h.epochs_run >= 3)],
             seed=0, **CPU)
    assert ha.epochs_run == hb.epochs_run == 3 and ha.train_loss == hb.train_loss
    _same(a, b)


def test_callbacks_are_told_when_training_fails():
    rec = _Recorder(stop_at=99)
    x, y = make_data("mlp")
    with pytest.raises(TrainingDiverged):
        fit(make_model("mlp"), (x * 1e3, y), epochs=5, lr=1e6, optimizer="sgd",
            callbacks=[rec], seed=0, **CPU)
    assert rec.calls[0] == ("begin", 5) and rec.calls[-1][0] == "end"


def test_on_divergence_keep_returns_the_history_where_fit_would_raise():
    x, y = make_data("mlp")
    kw = dict(epochs=5, lr=1e6, optimizer="sgd", seed=0, **CPU)
    a, b = make_model("mlp"), make_model("mlp")
    with pytest.raises(TrainingDiverged) as info:
        fit(a, (x * 1e3, y), **kw)
    hist = fit(b, (x * 1e3, y), on_divergence="keep", **kw)
    assert hist.train_loss == pytest.approx(info.value.history.train_loss, nan_ok=True)
    assert hist.epochs_run == info.value.history.epochs_run
    _same(a, b)  # left where the error leaves it
