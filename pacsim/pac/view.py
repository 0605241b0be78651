"""Views of one calibrated network: each setting's task, computed again exactly."""

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
def view(model: nn.Module, masks: Masks, setting: str | int) -> Iterator[nn.Module]:
    """Within this block ``model`` computes ``setting``'s task (a name or an index of
    ``masks.settings``; an unknown one is a ValueError naming those it serves).

    Entries owned by later settings are zeroed, and whatever a later setting's calibrate
    let diverge (biases, BatchNorm statistics) is put back to its value before the first
    later setting that changed it; on exit (also after an exception) every tensor is
    restored to its exact current value. The newest setting's view is the model as is.
    """
    k = masks.index(setting)
    weights = masks.check_model(model)
    visible = masks.visible_to(k) if k < masks.latest else {}
    restore: dict[str, torch.Tensor] = {}
    for j in range(masks.latest, k, -1):  # the earliest later setting's copy wins
        restore.update(masks.source_state if j == 1
                       else masks.setting_state.get(masks.settings[j], {}))
    saved: list[tuple[torch.Tensor, torch.Tensor]] = []
    try:
        with torch.no_grad():
            for name, keep in visible.items():
                w = weights[name]
                saved.append((w, w.detach().clone()))
                w.masked_fill_(~keep.to(w.device), 0.0)
            for name, value in restore.items():
                t = _tensor(model, name)
                saved.append((t, t.detach().clone()))
                t.copy_(value.to(t.device))
        yield model
    finally:
        with torch.no_grad():
            for t, value in reversed(saved):
                t.copy_(value)


def source_view(model: nn.Module, masks: Masks) -> contextlib.AbstractContextManager[nn.Module]:
    """Within this block ``model`` computes the source task (:func:`view` of setting 0).

    Redundant entries are zeroed and the saved source biases and buffers are put back;
    on exit (also after an exception) every tensor is restored to its exact target value.
    """
    return view(model, masks, 0)
