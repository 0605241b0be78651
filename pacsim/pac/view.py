"""The source view: one calibrated network computing the source task again."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from .masks import Masks


def _tensor(model: nn.Module, name: str) -> torch.Tensor:
    try:
        return model.get_parameter(name)
    except AttributeError:
        return model.get_buffer(name)


@contextlib.contextmanager
def source_view(model: nn.Module, masks: Masks) -> Iterator[nn.Module]:
    """Within this block ``model`` computes the source task.

    Redundant entries are zeroed and the saved source biases and buffers are put back;
    on exit (also after an exception) every tensor is restored to its exact target value.
    """
    weights = masks.check_model(model)
    saved: list[tuple[torch.Tensor, torch.Tensor]] = []
    try:
        with torch.no_grad():
            for name, w in weights.items():
                saved.append((w, w.detach().clone()))
                w.masked_fill_(~masks.essential[name].to(w.device), 0.0)
            for name, value in masks.source_state.items():
                t = _tensor(model, name)
                saved.append((t, t.detach().clone()))
                t.copy_(value.to(t.device))
        yield model
    finally:
        with torch.no_grad():
            for t, value in reversed(saved):
                t.copy_(value)
