"""Models: shapes, configs that rebuild the same architecture, clear argument errors."""

from __future__ import annotations

import json

import pytest
import torch

from pacsim.models import CNN, MLP, build, register, registered


@pytest.mark.parametrize("model,x,out", [
    (MLP(3, 2, hidden=(8,)), torch.randn(5, 3), (5, 2)),
    (MLP(2, 6, hidden=(8, 8), activation="tanh", out_shape=(2, 3)), torch.randn(5, 2), (5, 2, 3)),
    (CNN(1, 2, 3, width=4, depth=2), torch.randn(2, 2, 17), (2, 3, 17)),
    (CNN(2, 1, 1, width=4, depth=1, padding_mode="circular", norm="group"),
     torch.randn(2, 1, 9, 12), (2, 1, 9, 12)),
    (CNN(2, 1, 2, width=4, depth=1, padding_mode="reflect", norm="batch"),
     torch.randn(2, 1, 8, 8), (2, 2, 8, 8)),
])
def test_shapes_and_config_round_trip(model, x, out):
    assert model(x).shape == out
    cfg = json.loads(json.dumps(model.config()))
    twin = build(cfg)
    assert type(twin) is type(model) and twin.config() == model.config()
    assert {k: v.shape for k, v in twin.state_dict().items()} == {
        k: v.shape for k, v in model.state_dict().items()}
    twin.load_state_dict(model.state_dict())
    model.eval()
    twin.eval()
    assert torch.equal(twin(x), model(x))


def test_circular_padding_is_translation_equivariant():
    torch.manual_seed(0)
    m = CNN(1, 1, 1, width=4, depth=2, padding_mode="circular")
    x = torch.randn(1, 1, 32)
    assert torch.allclose(m(torch.roll(x, 5, -1)), torch.roll(m(x), 5, -1), atol=1e-5)


@pytest.mark.parametrize("factory,match", [
    (lambda: CNN(3, 1, 1), "dim must be 1 or 2"),
    (lambda: CNN(1, 1, 1, padding_mode="mirror"), "padding_mode"),
    (lambda: CNN(1, 1, 1, norm="layer"), "norm"),
    (lambda: CNN(1, 1, 1, kernel_size=4), "kernel_size"),
    (lambda: MLP(3, 1, activation="swish2"), "activation"),
    (lambda: MLP(3, 4, out_shape=(3,)), "out_shape"),
    (lambda: build({"name": "transformer"}), "unknown model 'transformer'"),
    (lambda: build({"in_dim": 3}), "'name'"),
])
def test_argument_errors(factory, match):
    with pytest.raises(ValueError, match=match):
        factory()


def test_cnn_rejects_wrong_input_rank():
    with pytest.raises(ValueError, match=r"expects input \(N, C, X, Y\)"):
        CNN(2, 1, 1, width=2, depth=0)(torch.randn(2, 1, 8))


def test_user_models_can_register():
    from pacsim.models import Configurable

    @register("test_affine")
    class Affine(Configurable, torch.nn.Module):
        def __init__(self, n: int = 2) -> None:
            super().__init__()
            self._set_config(n=n)
            self.lin = torch.nn.Linear(n, n)

        def forward(self, x):
            return self.lin(x)

    assert "test_affine" in registered()
    assert isinstance(build({"name": "test_affine", "n": 3}), Affine)
    with pytest.raises(ValueError, match="already registered"):
        register("test_affine")(MLP)
