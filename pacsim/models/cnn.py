"""Convolutional surrogate for fields on regular 1D or 2D grids.

A residual stack of 'same'-padded convolutions: the output has the spatial size of the
input, any grid size works, and the padding mode matches the domain (``circular`` for
periodic, ``zeros``/``reflect``/``replicate`` for bounded domains).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .mlp import make_activation
from .registry import Configurable, register

PADDING_MODES = ("zeros", "circular", "reflect", "replicate")
NORMS = ("none", "batch", "group")


def _conv(dim: int) -> type[nn.Module]:
    return {1: nn.Conv1d, 2: nn.Conv2d}[dim]


def _norm(kind: str, dim: int, channels: int) -> nn.Module:
    if kind == "batch":
        return {1: nn.BatchNorm1d, 2: nn.BatchNorm2d}[dim](channels)
    if kind == "group":
        return nn.GroupNorm(min(8, channels), channels)
    return nn.Identity()


class _ResidualBlock(nn.Module):
    def __init__(self, dim: int, width: int, kernel_size: int, padding_mode: str, norm: str,
                 activation: str) -> None:
        super().__init__()
        conv = _conv(dim)
        pad = kernel_size // 2
        self.conv1 = conv(width, width, kernel_size, padding=pad, padding_mode=padding_mode)
        self.norm1 = _norm(norm, dim, width)
        self.act = make_activation(activation)
        self.conv2 = conv(width, width, kernel_size, padding=pad, padding_mode=padding_mode)
        self.norm2 = _norm(norm, dim, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.norm1(self.conv1(x)))
        return self.act(x + self.norm2(self.conv2(h)))


@register("cnn")
class CNN(Configurable, nn.Module):
    """Field-to-field network: (N, in_channels, *grid) -> (N, out_channels, *grid).

    ``dim`` is the number of spatial axes (1 or 2); ``depth`` residual blocks of
    ``width`` channels sit between a lifting and a 1x1 projection convolution.
    """

    DATA_ARGS = ("dim", "in_channels", "out_channels")

    @classmethod
    def for_data(cls, input_shape: Sequence[int], target_shape: Sequence[int],
                 **kwargs: Any) -> CNN:
        """Sized from field samples (C, X[, Y]): ``dim``, in and out channels."""
        dim, c_in, c_out = field_args("a CNN", input_shape, target_shape)
        return cls(dim, c_in, c_out, **kwargs)

    @classmethod
    def stat_shapes(cls, config: dict[str, Any]
                    ) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
        """Per-channel statistics: (channels, 1, ...) on each side."""
        tail = (1,) * int(config.get("dim", 1))
        return (int(config["in_channels"]), *tail), (int(config["out_channels"]), *tail)

    def __init__(
        self,
        dim: int,
        in_channels: int,
        out_channels: int,
        width: int = 32,
        depth: int = 4,
        kernel_size: int = 5,
        padding_mode: str = "zeros",
        norm: str = "none",
        activation: str = "gelu",
    ) -> None:
        super().__init__()
        if dim not in (1, 2):
            raise ValueError(f"CNN dim must be 1 or 2, got {dim}")
        if padding_mode not in PADDING_MODES:
            raise ValueError(
                f"unknown padding_mode {padding_mode!r}; choose one of {PADDING_MODES}"
            )
        if norm not in NORMS:
            raise ValueError(f"unknown norm {norm!r}; choose one of {NORMS}")
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd and positive, got {kernel_size}")
        if width < 1 or depth < 0 or in_channels < 1 or out_channels < 1:
            raise ValueError("width, in_channels and out_channels must be positive, depth >= 0")
        self._set_config(
            dim=dim, in_channels=in_channels, out_channels=out_channels, width=width, depth=depth,
            kernel_size=kernel_size, padding_mode=padding_mode, norm=norm, activation=activation,
        )
        conv = _conv(dim)
        self.dim = dim
        self.lift = conv(in_channels, width, kernel_size, padding=kernel_size // 2,
                         padding_mode=padding_mode)
        self.act = make_activation(activation)
        self.blocks = nn.Sequential(
            *(_ResidualBlock(dim, width, kernel_size, padding_mode, norm, activation)
              for _ in range(depth))
        )
        self.project = conv(width, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != self.dim + 2:
            raise ValueError(
                f"CNN(dim={self.dim}) expects input (N, C, {', '.join('XY'[: self.dim])}), "
                f"got shape {tuple(x.shape)}"
            )
        return self.project(self.blocks(self.act(self.lift(x))))


def field_args(what: str, input_shape: Sequence[int], target_shape: Sequence[int]
               ) -> tuple[int, int, int]:
    """``(dim, in_channels, out_channels)`` of field samples (C, X[, Y])."""
    if len(input_shape) < 2 or len(target_shape) != len(input_shape):
        raise ValueError(f"{what} needs field inputs and targets (C, X[, Y]), got "
                         f"{tuple(input_shape)} -> {tuple(target_shape)}")
    return len(input_shape) - 1, int(input_shape[0]), int(target_shape[0])
