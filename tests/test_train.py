"""The trainer: data forms, exact update masks, early stopping, determinism, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import make_data, make_model
from torch.utils.data import DataLoader, TensorDataset

from pacsim.train import History, evaluate, fit, predict


def _data(n=64):
    return make_data("mlp", n=n)


@pytest.mark.parametrize("form", ["tensors", "numpy", "dataset", "loader"])
def test_accepts_every_data_form_and_learns(form):
    x, y = _data(128)
    data = {
        "tensors": (x, y),
        "numpy": (x.numpy(), y.numpy()),
        "dataset": TensorDataset(x, y),
        "loader": DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True,
                             generator=torch.Generator().manual_seed(0)),
    }[form]
    model = make_model("mlp")
    before = evaluate(model, (x, y))["rmse"]
    hist = fit(model, data, epochs=40, lr=1e-2, batch_size=16, device="cpu", seed=0)
    assert isinstance(hist, History) and hist.epochs_run == 40 and len(hist.train_loss) == 40
    assert hist.train_loss[-1] < hist.train_loss[0]
    assert evaluate(model, (x, y))["rmse"] < 0.5 * before


@pytest.mark.parametrize("optimizer,wd,clip,compile",
                         [("adam", 0.0, None, False), ("adamw", 0.5, None, False),
                          ("sgd", 0.1, None, False), ("adam", 0.1, None, False),
                          ("adamw", 0.5, 0.01, False),
                          ("adamw", 0.5, 0.01, {"backend": "aot_eager"})])
def test_update_mask_is_exact(optimizer, wd, clip, compile):
    """Frozen entries keep their bits, also with a compiled forward (the same tensors
    are trained: torch.compile wraps the model, it does not copy it)."""
    model = make_model("mlp")
    w = model.net[0].weight
    keep = torch.rand(w.shape, generator=torch.Generator().manual_seed(0)) < 0.3
    mask = {"net.0.weight": keep, "net.2.bias": True}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    params = list(model.parameters())
    fit(model, _data(), epochs=5, lr=0.05, optimizer=optimizer, weight_decay=wd,
        update_mask=mask, device="cpu", seed=0, batch_size=8, clip_grad=clip, compile=compile)
    after = dict(model.named_parameters())
    assert all(a is b for a, b in zip(model.parameters(), params))
    assert torch.equal(after["net.0.weight"][~keep], before["net.0.weight"][~keep])
    assert not torch.equal(after["net.0.weight"][keep], before["net.0.weight"][keep])
    assert not torch.equal(after["net.2.bias"], before["net.2.bias"])
    for name in before:
        if name not in mask:
            assert torch.equal(after[name], before[name]), name
    assert all(p.requires_grad for p in model.parameters())


def test_requires_grad_false_is_respected_and_restored():
    model = make_model("mlp")
    model.net[0].bias.requires_grad_(False)
    b0 = model.net[0].bias.detach().clone()
    fit(model, _data(), epochs=2, device="cpu", seed=0)
    assert torch.equal(model.net[0].bias, b0)
    assert not model.net[0].bias.requires_grad
    assert model.net[0].weight.requires_grad


def test_update_mask_errors():
    model = make_model("mlp")
    with pytest.raises(ValueError, match="unknown parameters.*nope"):
        fit(model, _data(), epochs=1, update_mask={"nope": True}, device="cpu")
    with pytest.raises(ValueError, match=r"update_mask\['net.0.weight'\] must be a bool tensor"):
        fit(model, _data(), epochs=1, update_mask={"net.0.weight": torch.ones(2, 2, dtype=bool)},
            device="cpu")
    with pytest.raises(ValueError, match="nothing to train"):
        fit(model, _data(), epochs=1, update_mask={"net.0.weight": False}, device="cpu")


@pytest.mark.parametrize("kwargs,match", [
    ({"epochs": -1}, "epochs"), ({"epochs": 1, "lr": 0}, "lr"),
    ({"epochs": 1, "optimizer": "lbfgs"}, "unknown optimizer"),
    ({"epochs": 1, "loss": "hinge"}, "unknown loss"),
    ({"epochs": 1, "batch_size": 0}, "batch_size"),
    ({"epochs": 1, "lr_schedule": "step"}, "lr_schedule"),
    ({"epochs": 1, "weight_decay": -1}, "weight_decay"),
])
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        fit(make_model("mlp"), _data(), device="cpu", **kwargs)


def test_bad_data_raises():
    x, y = _data()
    with pytest.raises(ValueError, match="same number of samples"):
        fit(make_model("mlp"), (x, y[:-1]), epochs=1, device="cpu")
    x[3, 1] = float("nan")
    with pytest.raises(ValueError, match="train inputs contain NaN"):
        fit(make_model("mlp"), (x, y), epochs=1, device="cpu")
    with pytest.raises(ValueError, match="val targets contain NaN"):
        fit(make_model("mlp"), _data(), val=(y.new_zeros(4, 4), torch.full((4, 2), np.inf)),
            epochs=1, device="cpu")
    with pytest.raises(TypeError, match="pair"):
        fit(make_model("mlp"), [1, 2, 3], epochs=1, device="cpu")


def test_early_stopping_selects_best_epoch():
    x, y = _data(64)
    xv, yv = make_data("mlp", n=32, seed=5, shift=3.0)  # a val set the model cannot fit
    model = make_model("mlp")
    hist = fit(model, (x, y), val=(xv, yv), epochs=200, lr=3e-2, patience=3, device="cpu", seed=0)
    assert hist.stopped_early and hist.epochs_run < 200
    assert hist.best_val == min(hist.val_loss)
    assert hist.best_epoch == int(np.argmin(hist.val_loss))
    assert hist.epochs_run == hist.best_epoch + 1 + 3
    # restore_best: the model is the one from the best epoch
    assert evaluate(model, (xv, yv))["rmse"] ** 2 == pytest.approx(hist.best_val, rel=1e-5)


def test_same_seed_same_bits_and_rng_untouched():
    def run():
        model = make_model("mlp")
        fit(model, _data(), epochs=3, batch_size=8, device="cpu", seed=11)
        return model

    state = torch.random.get_rng_state()
    a, b = run(), run()
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)
    c = make_model("mlp")
    fit(c, _data(), epochs=3, batch_size=8, device="cpu", seed=12)
    assert not torch.equal(c.net[0].weight, a.net[0].weight)
    # make_model seeds the global RNG; everything after that is fit's: it must leave
    # the caller's RNG exactly where it was
    torch.manual_seed(99)
    model = make_model("mlp", seed=99)
    state = torch.random.get_rng_state()
    fit(model, _data(), epochs=2, batch_size=8, device="cpu", seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)
    fit(model, _data(), epochs=2, batch_size=8, device="cpu")  # unseeded: draws from it
    assert not torch.equal(torch.random.get_rng_state(), state)


def test_custom_loss_callable_and_amp_is_a_no_op_on_cpu():
    def run(**kw):
        model = make_model("mlp")
        fit(model, _data(), epochs=2, device="cpu", seed=0, **kw)
        return model

    ref = run()
    for p, q in zip(ref.parameters(), run(amp=True).parameters()):
        assert torch.equal(p, q), "amp only acts on CUDA"
    for p, q in zip(ref.parameters(), run(loss=torch.nn.functional.mse_loss).parameters()):
        assert torch.equal(p, q)
    l1 = run(loss="l1")
    assert not torch.equal(l1.net[0].weight, ref.net[0].weight)
    with pytest.raises(ValueError, match="unknown loss 'cross_entropy'"):
        run(loss="cross_entropy")


def test_predict_and_evaluate_restore_mode():
    model = make_model("cnn1d")
    model.train()
    x, y = make_data("cnn1d", n=10)
    out = predict(model, x, batch_size=3)
    assert out.shape == y.shape and model.training
    assert set(evaluate(model, (x, y), batch_size=4)) == {"rmse", "nrmse", "mae", "max_error",
                                                          "r2"}


def test_epochs_zero_trains_nothing():
    model = make_model("mlp")
    w = model.net[0].weight.detach().clone()
    hist = fit(model, _data(), epochs=0, device="cpu")
    assert hist.epochs_run == 0 and torch.equal(model.net[0].weight, w)


def test_freeze_bn_stats():
    model = make_model("cnn1d")
    bn = model.blocks[0].norm1
    mean = bn.running_mean.clone()
    fit(model, make_data("cnn1d"), epochs=1, device="cpu", freeze_bn_stats=True)
    assert torch.equal(bn.running_mean, mean)
    fit(model, make_data("cnn1d"), epochs=1, device="cpu")
    assert not torch.equal(bn.running_mean, mean)


def test_l2_penalty_matches_the_penalty_in_the_loss():
    from pacsim.train import L2Penalty

    anchor = make_model("mlp", seed=5).net[0].weight.detach().clone()
    models = []
    for use_penalty in (True, False):
        model = make_model("mlp")
        kw = dict(epochs=3, lr=0.05, optimizer="sgd", batch_size=16, device="cpu", seed=0)
        if use_penalty:
            fit(model, _data(), penalty=L2Penalty(0.3, {"net.0.weight": anchor,
                                                        "net.2.weight": None}), **kw)
        else:
            def loss(pred, y, m=model):
                return torch.nn.functional.mse_loss(pred, y) + 0.3 * (
                    (m.net[0].weight - anchor).square().sum() + m.net[2].weight.square().sum())

            fit(model, _data(), loss=loss, **kw)
        models.append(model)
    for (name, p), q in zip(models[0].named_parameters(), models[1].parameters()):
        assert torch.allclose(p, q, atol=1e-5), name
    with pytest.raises(ValueError, match="penalty names unknown"):
        fit(make_model("mlp"), _data(), epochs=1, device="cpu",
            penalty=L2Penalty(0.1, {"x": None}))
    with pytest.raises(ValueError, match="penalty weight"):
        L2Penalty(-1.0, {})


def test_progress_bar_only_when_asked(capsys):
    fit(make_model("mlp"), _data(), epochs=2, device="cpu", progress=True, desc="demo-fit")
    assert "demo-fit" in capsys.readouterr().err
    fit(make_model("mlp"), _data(), epochs=2, device="cpu")  # not a terminal: silent
    assert capsys.readouterr().err == ""


def test_divergence_stops_with_a_clear_error_and_keeps_the_model_sane():
    from torch.utils.data import TensorDataset

    x, y = _data(32)
    bad_y = y.clone()
    bad_y[5, 0] = float("nan")  # past the pair check: inside a Dataset
    model = make_model("mlp")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"not finite in epoch 1 \(steps 1-4\).*epoch's start"):
        fit(model, TensorDataset(x, bad_y), epochs=3, batch_size=8, device="cpu", seed=0)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    # diverging later with a validation set: left at the best epoch, which is finite
    model = make_model("mlp")
    with pytest.raises(ValueError, match="training diverged.*its best epoch"):
        fit(model, (x * 1e3, y), val=(x, y), epochs=50, lr=30, optimizer="sgd", device="cpu",
            seed=0)
    assert all(bool(torch.isfinite(p).all()) for p in model.parameters())
    with pytest.raises(ValueError, match="lr must be a finite positive number, got inf"):
        fit(make_model("mlp"), (x, y), epochs=1, lr=float("inf"), device="cpu")


def test_outputs_and_targets_of_different_shapes_are_refused():
    from pacsim.transfer import adapt

    x = torch.rand(8, 4)
    with pytest.raises(ValueError, match=r"outputs of shape \(2,\).*targets have \(3,\)"):
        adapt("finetune", make_model("mlp"), (x, torch.rand(8, 3)), epochs=1, device="cpu")
    with pytest.raises(ValueError, match="data and model do not match"):
        fit(make_model("mlp"), (x, torch.rand(8, 1)), epochs=1, device="cpu")


def test_validation_targets_of_another_shape_are_refused():
    """A (N,) validation target against (N, 1) outputs would broadcast to an (N, N) loss:
    a wrong number for early stopping and CV curves, so it is an error, as in training."""
    from pacsim.models import MLP
    from pacsim.train import fit_many

    torch.manual_seed(0)
    x, y = torch.randn(20, 3), torch.randn(20, 1)
    with pytest.raises(ValueError, match=r"outputs of shape \(1,\).*validation targets"):
        fit(MLP(3, 1, hidden=(4,)), (x, y), val=(x[:5], y[:5, 0]), epochs=1, device="cpu")
    with pytest.raises(ValueError, match=r"val\[0\] samples are \(3,\) -> \(\)"):
        fit_many([MLP(3, 1, hidden=(4,))], [(x, y)], val=[(x[:5], y[:5, 0])], epochs=1,
                 device="cpu")


def test_a_float64_model_is_refused_with_a_clear_message():
    from pacsim.models import MLP
    from pacsim.train import fit_many

    x, y = torch.randn(8, 3), torch.randn(8, 1)
    with pytest.raises(ValueError, match="float32 models; this one has float64"):
        fit(MLP(3, 1, hidden=(4,)).double(), (x, y), epochs=1, device="cpu")
    with pytest.raises(ValueError, match="float32 models; this one has float64"):
        fit_many([MLP(3, 1, hidden=(4,)).double()], [(x, y)], epochs=1, device="cpu")


def test_a_validation_loss_that_is_not_finite_stops_training():
    """The last steps of an epoch can break the weights after its training loss was
    summed: a non-finite validation loss is a divergence too, never a 'best' epoch."""
    x, y = _data(32)
    model = make_model("mlp")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="validation loss is not finite after epoch 1"):
        fit(model, (x * 1e3, y), val=(x, y), epochs=5, lr=1e4, optimizer="sgd",
            device="cpu", seed=0)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_inference_builds_no_autograd_graph():
    """predict, evaluate and mean_loss run without gradients (memory: a graph per batch)."""
    from pacsim.train import mean_loss

    model = make_model("mlp")
    seen: list[bool] = []
    model.register_forward_hook(lambda *_: seen.append(torch.is_grad_enabled()))
    x, y = make_data("mlp", n=8)
    predict(model, x)
    evaluate(model, (x, y))
    mean_loss(model, (x, y))
    assert seen == [False, False, False]


def _conv_layouts(model: torch.nn.Module) -> set[bool]:
    """Whether each 2D convolution weight is in the channels-last layout (of those where
    the two layouts differ: more than one input channel and kernel entry)."""
    return {m.weight.stride(1) == 1 for m in model.modules()
            if isinstance(m, torch.nn.Conv2d) and m.weight.shape[1] > 1
            and m.weight.shape[2] * m.weight.shape[3] > 1}


@pytest.mark.parametrize("channels_last,during", [(None, {True}), (True, {True}),
                                                  (False, {False})])
def test_2d_convolutions_train_channels_last_on_the_cpu_and_come_back(channels_last, during):
    """Auto: 2D convolutions train in the channels-last layout on the CPU; the model
    comes back in the default layout, its Parameter objects the same, frozen entries
    bit-exact, and the result close to training in the default layout."""
    from pacsim.models import CNN

    def make() -> torch.nn.Module:  # no BatchNorm: a bias before it has no gradient, and
        torch.manual_seed(0)  # Adam turns that gradient's rounding noise into steps
        return CNN(2, 2, 1, width=4, depth=1, kernel_size=3)

    model, ref = make(), make()
    params = list(model.parameters())
    name = "blocks.0.conv1.weight"
    w = model.get_parameter(name)
    keep = torch.rand(w.shape, generator=torch.Generator().manual_seed(0)) < 0.5
    mask = {n: True for n, _ in model.named_parameters()} | {name: keep}
    before = w.detach().clone()
    seen: list[set[bool]] = []
    kw = dict(epochs=3, lr=1e-2, optimizer="adamw", weight_decay=0.5, update_mask=mask,
              device="cpu", seed=0, batch_size=8)
    fit(model, make_data("cnn2d"), channels_last=channels_last,
        stop_when=lambda h: seen.append(_conv_layouts(model)) and False, **kw)
    assert seen and all(s == during for s in seen)
    assert _conv_layouts(model) == {False}
    assert all(a is b for a, b in zip(model.parameters(), params))
    assert torch.equal(w[~keep], before[~keep]) and not torch.equal(w[keep], before[keep])
    fit(ref, make_data("cnn2d"), channels_last=False, **kw)
    for (n, a), b in zip(model.state_dict().items(), ref.state_dict().values()):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4, msg=n)


@pytest.mark.parametrize("bad", ["yes", 0, 1])
def test_channels_last_takes_none_true_or_false(bad):
    with pytest.raises(ValueError, match="channels_last must be None, True or False"):
        fit(make_model("cnn2d"), make_data("cnn2d"), epochs=1, device="cpu",
            channels_last=bad)


class _Mixed(torch.nn.Module):
    """A 2D convolution beside a 3D one and a 4D parameter the user keeps channels-last."""

    def __init__(self) -> None:
        super().__init__()
        self.c2 = torch.nn.Conv2d(2, 3, 3, padding=1)
        self.c3 = torch.nn.Conv3d(1, 1, 1)
        self.scale = torch.nn.Parameter(
            torch.ones(1, 3, 8, 8).contiguous(memory_format=torch.channels_last))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.c2(x) * self.scale
        return self.c3(y.unsqueeze(1)).squeeze(1).mean(1, keepdim=True)


def test_only_2d_convolution_weights_change_layout_and_come_back_in_their_own_tensors():
    """A 3D convolution (5D weights, which channels-last refuses) and other 4D tensors
    are left alone; each converted weight ends in its original tensor (storage and
    strides), holding the trained values."""
    torch.manual_seed(0)
    model = _Mixed()
    w = model.c2.weight
    ptr, strides, scale_strides = w.data_ptr(), w.stride(), model.scale.stride()
    before = w.detach().clone()
    fit(model, make_data("cnn2d"), epochs=2, lr=1e-2, device="cpu", seed=0, batch_size=8)
    assert w.data_ptr() == ptr and w.stride() == strides and not torch.equal(w, before)
    assert model.scale.stride() == scale_strides


def test_a_channels_last_model_stays_channels_last():
    model = make_model("cnn2d").to(memory_format=torch.channels_last)
    fit(model, make_data("cnn2d"), epochs=1, device="cpu", seed=0, batch_size=8)
    assert _conv_layouts(model) == {True}
