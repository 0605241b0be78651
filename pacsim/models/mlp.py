"""Fully connected surrogate for tabular inputs (parameters -> quantities of interest)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .registry import Configurable, register

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
    "silu": nn.SiLU,
    "elu": nn.ELU,
    "softplus": nn.Softplus,
}


def make_activation(name: str) -> nn.Module:
    """Instantiate an activation by name (one of :data:`ACTIVATIONS`)."""
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


@register("mlp")
class MLP(Configurable, nn.Module):
    """``in_dim -> hidden... -> out_dim`` multilayer perceptron.

    Inputs of shape (N, in_dim); outputs (N, out_dim). Extra trailing input axes are
    flattened, and ``out_shape`` (optional) reshapes the output, so an MLP can map
    parameters to a trajectory of shape (N, C, T).
    """

    DATA_ARGS = ("in_dim", "out_dim", "out_shape")

    @classmethod
    def for_data(cls, input_shape: Sequence[int], target_shape: Sequence[int],
                 **kwargs: Any) -> MLP:
        """Flattened inputs to flattened targets, reshaped to ``target_shape``."""
        return cls(_prod(input_shape), _prod(target_shape),
                   out_shape=list(target_shape) if len(target_shape) > 1 else None, **kwargs)

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        hidden: Sequence[int] = (128, 128, 128),
        activation: str = "relu",
        dropout: float = 0.0,
        out_shape: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        if in_dim < 1 or out_dim < 1:
            raise ValueError(f"in_dim and out_dim must be positive, got {in_dim}, {out_dim}")
        if isinstance(hidden, (str, bytes)) or not isinstance(hidden, Sequence) or not all(
                isinstance(h, int) and not isinstance(h, bool) and h >= 1 for h in hidden):
            raise ValueError(f"hidden must be a list of layer widths >= 1, got {hidden!r}")
        if out_shape is not None and _prod(out_shape) != out_dim:
            raise ValueError(f"out_shape {tuple(out_shape)} does not hold out_dim={out_dim} values")
        self._set_config(
            in_dim=in_dim,
            out_dim=out_dim,
            hidden=list(hidden),
            activation=activation,
            dropout=dropout,
            out_shape=None if out_shape is None else list(out_shape),
        )
        layers: list[nn.Module] = []
        width = in_dim
        for h in hidden:
            layers.append(nn.Linear(width, h))
            layers.append(make_activation(activation))
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = h
        layers.append(nn.Linear(width, out_dim))
        self.net = nn.Sequential(*layers)
        self.out_shape = None if out_shape is None else tuple(out_shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.net(x.flatten(1))
        if self.out_shape is not None:
            y = y.view(y.shape[0], *self.out_shape)
        return y


def _prod(shape: Sequence[int]) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n
