"""More settings in one network: :func:`extend` frees part of the newest setting's
entries for a new one (PackNet's idea, for regression surrogates).

Each setting owns a disjoint set of entries and its network uses its own entries and
those of every setting before it (:func:`pacsim.pac.view`). A chain:
``prune -> allocate -> calibrate(target 1) -> extend("t2") -> calibrate(t2) -> ...``.
Calibrate only ever trains the newest setting's entries, so every earlier setting's
outputs stay bit-identical.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..train import Data, History, fit
from .masks import Masks
from .prune import SCOPES, _keep_mask, _redundant_count, check_ratio

#: At most this many settings share one network (owners are stored as uint8).
MAX_SETTINGS = 255


@torch.no_grad()
def _free(weights: dict[str, nn.Parameter], own: dict[str, torch.Tensor], ratio: float,
          scope: str) -> dict[str, torch.Tensor]:
    """Bool masks of the ``ratio`` share of smallest-magnitude owned entries."""
    mags = {n: w.detach().abs().flatten().float()[own[n].flatten()] for n, w in weights.items()}
    if scope == "global":
        flat = torch.cat(list(mags.values()))
        keep_flat = _keep_mask(flat, _redundant_count(ratio, flat.numel()))
        keeps = dict(zip(mags, torch.split(keep_flat, [m.numel() for m in mags.values()])))
    else:
        keeps = {n: _keep_mask(m, _redundant_count(ratio, m.numel())) for n, m in mags.items()}
    freed = {}
    for n, w in weights.items():
        f = torch.zeros(w.numel(), dtype=torch.bool, device=own[n].device)
        f[own[n].flatten().nonzero().flatten()] = ~keeps[n].to(f.device)
        freed[n] = f.view(w.shape)
    return freed


def extend(model: nn.Module, masks: Masks, name: str, ratio: float = 0.5,
           scope: str | None = None, *, data: Data | None = None,
           **fit_kwargs: Any) -> History | None:
    """Free the ``ratio`` share of the newest setting's entries (smallest magnitude
    first, ``scope`` ``"global"`` or per ``"layer"``, default as pruned) for a new
    setting ``name``: they are zeroed and owned by ``name``, which
    :func:`pacsim.pac.calibrate` trains next.

    The newest setting loses those entries; with ``data`` (that setting's own training
    data) its remaining entries and whatever it owns alone (its biases, if it trained
    them) are retrained on it first, as allocate does for the source
    (``fit_kwargs`` go to :func:`pacsim.train.fit`). Returns that history, or None.
    Needs masks in stage ``"calibrated"``; exactly ``round(ratio * N)`` of the newest
    setting's ``N`` entries change owner (per tensor with ``scope="layer"``).
    """
    masks.require("calibrated", action="extend()")
    ratio = check_ratio(ratio)
    scope = masks.scope if scope is None else scope
    if scope not in SCOPES:
        raise ValueError(f"unknown scope {scope!r}; choose one of {SCOPES}")
    if not isinstance(name, str) or not name:
        raise ValueError(f"a setting needs a non-empty name, got {name!r}")
    if name in masks.settings:
        raise ValueError(f"setting {name!r} exists already ({', '.join(masks.settings)})")
    if len(masks.settings) >= MAX_SETTINGS:
        raise ValueError(f"one network serves at most {MAX_SETTINGS} settings")
    weights = masks.check_model(model)
    k = masks.latest
    owners = {n: o.clone() for n, o in masks.owners().items()}
    own = {n: o == k for n, o in owners.items()}
    if sum(int(m.sum()) for m in own.values()) == 0:
        raise ValueError(f"setting {masks.settings[k]!r} owns no entry to free")
    freed = _free(weights, own, ratio, scope)
    with torch.no_grad():
        for n, w in weights.items():
            owners[n][freed[n]] = k + 1
            w.masked_fill_(freed[n].to(w.device), 0.0)
    history = None
    if data is not None:
        history = _retrain(model, masks, k, owners, data, fit_kwargs)
    masks.owner = owners
    masks.settings.append(name)
    masks.stage = "extended"
    return history


def _retrain(model: nn.Module, masks: Masks, k: int, owners: dict[str, torch.Tensor],
             data: Data, fit_kwargs: dict[str, Any]) -> History:
    """Setting ``k``'s remaining entries and its own tensors, trained on its data."""
    mine = set(masks.state_before(k))
    update: dict[str, bool | torch.Tensor] = {n: o == k for n, o in owners.items()}
    update.update({n: True for n, _ in model.named_parameters()
                   if n in mine and n not in update})
    return fit(model, data, update_mask=update, **fit_kwargs)
