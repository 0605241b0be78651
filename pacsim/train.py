"""The trainers' public surface: :func:`fit` (one model), :func:`fit_many` (a vectorised
stack of models), :func:`predict`, :func:`mean_loss` and :func:`evaluate`.

Every training loop in pacsim goes through :func:`fit` (:mod:`pacsim.training.single`)
or :func:`fit_many` (:mod:`pacsim.many`); both take their options as one
:class:`TrainConfig` (and keyword overrides of its fields), and both take each optimiser
step through :class:`pacsim.training.core.MaskedStep`, the one place where
``update_mask`` is enforced to the bit (:class:`pacsim.exact.UpdateMask`) and L2
penalties are added as gradients (:class:`pacsim.exact.L2Pull`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .data.batches import Data, as_tensor, batches
from .device import resolve_device
from .exact import L2Penalty, L2Pull, MaskSpec, UpdateMask
from .many import fit_many
from .metrics import Accumulator
from .training.callbacks import Callback, ProgressBar, StopWhen
from .training.config import TrainConfig
from .training.core import (
    LOSSES,
    OPTIMIZERS,
    History,
    TrainingDiverged,
    check_fit_options,
    check_float32,
    check_output_shape,
    make_loss,
    schedule_horizon,
)
from .training.single import RECOMPILE_LIMIT, batched_mean_loss, compile_options, fit

__all__ = ["LOSSES", "OPTIMIZERS", "RECOMPILE_LIMIT", "Callback", "Data", "History", "L2Penalty",
           "L2Pull", "MaskSpec", "ProgressBar", "StopWhen", "TrainConfig", "TrainingDiverged",
           "UpdateMask", "check_fit_options", "check_float32", "check_output_shape",
           "compile_options", "evaluate", "fit", "fit_many", "mean_loss", "predict",
           "schedule_horizon"]


# ----------------------------------------------------------------------------- inference


def _model_device(model: nn.Module) -> torch.device:
    for t in model.parameters():
        return t.device
    return torch.device("cpu")


@torch.no_grad()
def predict(model: nn.Module, inputs: Any, *, batch_size: int = 1024,
            device: str | torch.device | None = None) -> torch.Tensor:
    """Model outputs for ``inputs`` (tensor or array, samples on axis 0), on the CPU."""
    dev = _model_device(model) if device is None else resolve_device(device)
    model.to(dev)
    x = as_tensor(inputs, "inputs")
    was_training = model.training
    model.eval()
    try:
        outs = [model(x[i : i + batch_size].to(dev, non_blocking=True))
                for i in range(0, x.shape[0], batch_size)]
    finally:
        model.train(was_training)
    return torch.cat(outs).cpu()


def mean_loss(model: nn.Module, data: Data, *, loss: str | Callable[..., torch.Tensor] = "mse",
              batch_size: int = 1024, device: str | torch.device | None = None) -> float:
    """The mean of ``loss`` over ``data`` (eval mode), as :func:`fit` measures its
    validation loss: a yardstick for ``fit``'s validation losses."""
    dev = _model_device(model) if device is None else resolve_device(device)
    model.to(dev)
    was_training = model.training
    try:
        return batched_mean_loss(model, batches(data, batch_size, dev, shuffle=False, name="data"),
                          make_loss(loss), contextlib.nullcontext(), isinstance(loss, str))
    finally:
        model.train(was_training)


@torch.no_grad()
def evaluate(model: nn.Module, data: Data, *, batch_size: int = 1024,
             device: str | torch.device | None = None, per_channel: bool = False
             ) -> dict[str, Any]:
    """All metrics of :mod:`pacsim.metrics` for ``model`` on ``data`` (any accepted form).

    ``per_channel``: for fields (samples ``(C, *grid)``) also ``"channels"``, one metrics
    dict per output channel."""
    dev = _model_device(model) if device is None else resolve_device(device)
    model.to(dev)
    acc = Accumulator()
    channels: list[Accumulator] = []
    was_training = model.training
    model.eval()
    try:
        for x, y in batches(data, batch_size, dev, shuffle=False, name="eval").epoch(None):
            pred = model(x)
            acc.update(pred, y)
            if per_channel and y.dim() >= 3:
                channels = channels or [Accumulator() for _ in range(y.shape[1])]
                for c, a in enumerate(channels):
                    a.update(pred[:, c], y[:, c])
    finally:
        model.train(was_training)
    out: dict[str, Any] = acc.compute()
    if channels:
        out["channels"] = [a.compute() for a in channels]
    return out
