"""Fourier neural operator for fields on regular 1D or 2D grids, from ``neuraloperator``.

A thin, registered wrapper around ``neuralop.models.FNO`` (the optional extra
``pacsim[operators]``; imported when a model is built, not when pacsim is): JSON-able
arguments, the CNN's layout (N, C, *grid) in and out, and a plain ``state_dict`` so
pacsim checkpoints hold only tensors. Its spectral weights are complex tensors
(``net.fno_blocks.convs.K.weight.tensor``), which PAC prunes by modulus.

The Fourier layers are neuraloperator's ``SpectralConv`` with one change: the kept
modes are zero-padded back to the spectrum's size instead of being written in place into
a zero tensor (same values, bit for bit), so that ``torch.func.vmap`` can run a stack of
FNOs (:func:`pacsim.train.fit_many`).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from .cnn import field_args
from .mlp import ACTIVATIONS
from .registry import Configurable, register

NORMS = ("none", "group_norm", "instance_norm")
SKIPS = ("linear", "identity", "soft-gating")
EXTRA = "pip install 'pacsim[operators]'"


def _neuralop_fno() -> type[nn.Module]:
    try:
        from neuralop.models import FNO as NeuralopFNO
    except ImportError as exc:
        raise ImportError(f"model 'fno' needs neuraloperator ({exc}); {EXTRA}") from None
    return NeuralopFNO


@functools.cache
def _spectral_conv() -> type[nn.Module]:
    """neuraloperator's ``SpectralConv`` with an out-of-place forward (built once)."""
    from neuralop.layers.spectral_convolution import SpectralConv

    class StackableSpectralConv(SpectralConv):
        """``SpectralConv`` whose forward builds its output spectrum by padding the
        contracted modes with zeros, not by an in-place write into a fresh zero tensor
        (which ``vmap`` refuses). Outputs are identical; configurations pacsim does not
        build (complex data, separable or half-precision weights, resolution scaling, an
        explicit output shape) use the original forward."""

        def forward(self, x: torch.Tensor,
                    output_shape: tuple[int, ...] | None = None) -> torch.Tensor:
            if (output_shape is not None or self.complex_data or self.separable
                    or self.fno_block_precision != "full"
                    or self.resolution_scaling_factor is not None):
                return super().forward(x, output_shape)
            order = self.order
            dims = list(range(-order, 0))
            grid = tuple(x.shape[-order:])
            spec = torch.fft.rfftn(x, norm=self.fft_norm, dim=dims)
            if order > 1:  # centre the zero frequency on every axis but the halved last
                spec = torch.fft.fftshift(spec, dim=dims[:-1])
            sizes = spec.shape[-order:]
            # The weight's modes, cut (about its centre; the last axis from its start)
            # where the spectrum is shorter than the modes it was built for.
            w_cut: list[slice] = [slice(None), slice(None)]
            for axis, (size, modes, most) in enumerate(zip(sizes, self.n_modes,
                                                           self.max_n_modes)):
                cut = most - min(size, modes)
                if axis == order - 1:
                    w_cut.append(slice(None, -cut) if cut else slice(None))
                else:
                    w_cut.append(slice(cut // 2, -cut // 2) if cut else slice(None))
            weight = self.weight[tuple(w_cut)]
            # The spectrum's matching modes: centred, the last axis from frequency 0.
            x_cut: list[slice] = [slice(None), slice(None)]
            pads: list[int] = []
            for axis, (size, kept) in enumerate(zip(sizes, weight.shape[2:])):
                if axis == order - 1:
                    lo, hi = 0, min(kept, size)
                else:
                    lo = size // 2 - kept // 2
                    hi = size // 2 + kept // 2 + kept % 2
                x_cut.append(slice(lo, hi))
                pads = [lo, size - hi, *pads]  # F.pad lists the last axis first
            out = F.pad(self._contract(spec[tuple(x_cut)], weight, separable=False),
                        pads).contiguous()  # the FFT of a strided spectrum rounds otherwise
            if order > 1:
                out = torch.fft.fftshift(out, dim=dims[:-1])
            y = torch.fft.irfftn(out, s=grid, dim=dims, norm=self.fft_norm)
            return y if self.bias is None else y + self.bias

    return StackableSpectralConv


def _modes(n_modes: int | Sequence[int], dim: int) -> tuple[int, ...]:
    modes = (n_modes,) * dim if isinstance(n_modes, int) else tuple(n_modes)
    if len(modes) != dim or not all(isinstance(m, int) and m >= 1 for m in modes):
        raise ValueError(f"n_modes must be a positive integer or {dim} of them, got {n_modes!r}")
    return modes


@register("fno")
class FNO(Configurable, nn.Module):
    """Field-to-field operator: (N, in_channels, *grid) -> (N, out_channels, *grid).

    ``dim`` spatial axes (1 or 2); ``n_layers`` Fourier layers of ``hidden_channels``
    channels keeping ``n_modes`` Fourier modes per axis (one integer for every axis, or
    one per axis), between neuraloperator's lifting and projection (pointwise MLPs).
    ``positional_embedding`` appends the grid coordinates to the input;
    ``domain_padding`` (a share of the grid) pads non-periodic domains. The head, what
    transfer method ``head`` trains, is the projection (``net.projection``).
    """

    DATA_ARGS = ("dim", "in_channels", "out_channels")
    HEAD_MODULE = "net.projection"

    def __init__(
        self,
        dim: int,
        in_channels: int,
        out_channels: int,
        n_modes: int | Sequence[int] = 16,
        hidden_channels: int = 32,
        n_layers: int = 4,
        lifting_channel_ratio: float = 2.0,
        projection_channel_ratio: float = 2.0,
        positional_embedding: bool = True,
        domain_padding: float = 0.0,
        norm: str = "none",
        fno_skip: str = "linear",
        channel_mlp_skip: str = "soft-gating",
        use_channel_mlp: bool = True,
        channel_mlp_expansion: float = 0.5,
        activation: str = "gelu",
    ) -> None:
        super().__init__()
        if dim not in (1, 2):
            raise ValueError(f"FNO dim must be 1 or 2, got {dim}")
        modes = _modes(n_modes, dim)
        if min(in_channels, out_channels, hidden_channels, n_layers) < 1:
            raise ValueError("in_channels, out_channels, hidden_channels and n_layers must "
                             "be positive")
        if not 0.0 <= domain_padding < 1.0:
            raise ValueError(f"domain_padding must lie in [0, 1), got {domain_padding}")
        for key, value, choices in (("norm", norm, NORMS), ("fno_skip", fno_skip, SKIPS),
                                    ("channel_mlp_skip", channel_mlp_skip, SKIPS),
                                    ("activation", activation, tuple(ACTIVATIONS))):
            if value not in choices:
                raise ValueError(f"unknown {key} {value!r}; choose one of {list(choices)}")
        self._set_config(
            dim=dim, in_channels=in_channels, out_channels=out_channels, n_modes=n_modes,
            hidden_channels=hidden_channels, n_layers=n_layers,
            lifting_channel_ratio=lifting_channel_ratio,
            projection_channel_ratio=projection_channel_ratio,
            positional_embedding=positional_embedding, domain_padding=domain_padding,
            norm=norm, fno_skip=fno_skip, channel_mlp_skip=channel_mlp_skip,
            use_channel_mlp=use_channel_mlp, channel_mlp_expansion=channel_mlp_expansion,
            activation=activation,
        )
        self.dim = dim
        self.net = _neuralop_fno()(
            n_modes=modes, in_channels=in_channels, out_channels=out_channels,
            hidden_channels=hidden_channels, n_layers=n_layers,
            lifting_channel_ratio=lifting_channel_ratio,
            projection_channel_ratio=projection_channel_ratio,
            positional_embedding="grid" if positional_embedding else None,
            domain_padding=domain_padding or None, norm=None if norm == "none" else norm,
            fno_skip=fno_skip, channel_mlp_skip=channel_mlp_skip,
            use_channel_mlp=use_channel_mlp, channel_mlp_expansion=channel_mlp_expansion,
            conv_module=_spectral_conv(),
            non_linearity=torch.tanh if activation == "tanh" else getattr(nn.functional,
                                                                             activation),
        )

    @classmethod
    def for_data(cls, input_shape: Sequence[int], target_shape: Sequence[int],
                 **kwargs: Any) -> FNO:
        """Sized from field samples (C, X[, Y]): ``dim``, in and out channels."""
        dim, c_in, c_out = field_args("an FNO", input_shape, target_shape)
        return cls(dim, c_in, c_out, **kwargs)

    @property
    def grid_convolution(self) -> bool:
        """Spectral convolutions over a 2D grid (``dim >= 2``)."""
        return self.dim > 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != self.dim + 2:
            raise ValueError(
                f"FNO(dim={self.dim}) expects input (N, C, {', '.join('XY'[: self.dim])}), "
                f"got shape {tuple(x.shape)}"
            )
        return self.net(x)

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """Tensors only: neuraloperator adds its constructor arguments under the key
        ``_metadata`` (functions included); they are dropped, ``config()`` holds ours."""
        state = super().state_dict(*args, **kwargs)
        state.pop("_metadata", None)
        return state
