"""Steps 2 and 3 of PAC: allocate (retrain essential entries on the source) and
calibrate (train only redundant entries on the target). Both run on :func:`pacsim.train.fit`
with an update mask, so the untouched entries keep their exact values."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..device import resolve_device
from ..exact import L2Penalty
from ..models.registry import declared_head, head_names
from ..train import Data, History, fit
from .masks import Masks, bias_names


def _prepare(model: nn.Module, masks: Masks, fit_kwargs: dict[str, Any]) -> dict[str, nn.Parameter]:
    dev = resolve_device(fit_kwargs.get("device", "auto"))
    fit_kwargs["device"] = dev
    model.to(dev)
    masks.to(dev)
    return masks.check_model(model)


def allocate(model: nn.Module, masks: Masks, source: Data, *, lam_sp: float = 0.0,
             **fit_kwargs: Any) -> History:
    """Retrain on ``source`` updating only essential entries (and every other parameter).

    Redundant entries are held at exactly 0.0. ``lam_sp > 0`` adds
    ``lam_sp * ||w - w_pruned||^2`` pulling the trainable parameters towards their values
    at the start of this step (the pre-pruning values on essential entries).
    ``fit_kwargs`` go to :func:`pacsim.train.fit` (``epochs`` is required).
    """
    masks.require("pruned", "allocated", action="allocate()")
    if lam_sp < 0:
        raise ValueError(f"lam_sp must be >= 0, got {lam_sp}")
    weights = _prepare(model, masks, fit_kwargs)
    with torch.no_grad():
        for name, w in weights.items():
            w.masked_fill_(~masks.essential[name], 0.0)
    update: dict[str, bool | torch.Tensor] = {
        n: p.requires_grad for n, p in model.named_parameters()
    }
    update.update(masks.essential)
    anchors = {n: p.detach().clone() for n, p in model.named_parameters()
               if update[n] is not False}
    history = fit(model, source, update_mask=update, penalty=L2Penalty(lam_sp, anchors),
                  **fit_kwargs)
    masks.stage = "allocated"
    return history


SUBSPACES = ("all", "last", "head", "biases")
#: The paper's calibrate penalty on the freed weights.
PAPER_LAM = 0.01


def _under(name: str, prefix: str) -> bool:
    return not prefix or name.startswith(f"{prefix}.")


def calibrate_update(model: nn.Module, masks: Masks, subspace: str = "all",
                     train_biases: bool = False) -> dict[str, bool | torch.Tensor]:
    """The update mask of calibrate: the redundant entries of every pruned tensor
    (``subspace="all"``) or of the head (``"last"``, PAC's analogue of training the
    head: the pruned tensors under the submodule a model names as its head, see
    :func:`pacsim.models.declared_head`, else the last pruned tensor that has any
    redundant entry), plus with ``train_biases`` the biases of those layers (every
    bias, or the head's). ``"biases"`` trains no weight entry, only the target's own
    biases (PAC's analogue of BitFit; needs ``train_biases``): the smallest subspace.
    ``"head"`` trains the whole head, every entry of its weights and its bias (the
    parameters :func:`pacsim.models.head_names` names), from their source values: the
    target gets its own copy of the head, as the head baseline trains it, while the
    source view puts the source's copy back (``train_biases`` adds nothing to it)."""
    if subspace not in SUBSPACES:
        raise ValueError(f"unknown calibration subspace {subspace!r}; choose one of {SUBSPACES}")
    if subspace == "biases" and not train_biases:
        raise ValueError("calibration subspace 'biases' trains only the target's biases: "
                         "it needs train_biases=True")
    if subspace == "head":
        return {n: True for n in head_names(model)}
    own = masks.owned_by(masks.latest)  # the newest setting's entries
    head = declared_head(model)
    names = [n for n in own if bool(own[n].any())]
    if subspace == "biases":
        names = []
    elif subspace == "last":
        names = [n for n in names if _under(n, head)] if head is not None else names[-1:]
    update: dict[str, bool | torch.Tensor] = {n: own[n] for n in names}
    if train_biases:
        biases = bias_names(model, exclude=masks.essential)
        if subspace == "last" and head is not None:
            biases = [b for b in biases if _under(b, head)]
        elif subspace == "last" and names:
            owner = names[0].rsplit(".", 1)[0] + "." if "." in names[0] else ""
            biases = [b for b in biases if b == f"{owner}bias"]
        update.update({n: True for n in biases})
    return update


def calibrate_penalty(masks: Masks, update: dict[str, bool | torch.Tensor], lam: float
                      ) -> L2Penalty:
    """Calibrate's ``lam * ||w||^2`` pull to zero on the freed entries it trains.

    Penalising whole tensors is exact: essential entries are frozen, so only the
    redundant entries' share of the gradient is used. A pruned tensor trained in full
    (the ``"head"`` subspace's own copy of the head) is not pulled: its essential
    entries train too, and zero is not their prior."""
    return L2Penalty(lam, {n: None for n, spec in update.items()
                           if n in masks.essential and spec is not True})


def begin_calibrate(model: nn.Module, masks: Masks, lam: float = PAPER_LAM,
                    train_biases: bool = False, subspace: str = "all",
                    setting: str | None = None, fit_kwargs: dict[str, Any] | None = None
                    ) -> tuple[dict[str, bool | torch.Tensor], L2Penalty]:
    """Everything :func:`calibrate` does before training: checks, the model and masks on
    the trainer's device (``fit_kwargs["device"]`` resolved in place), and the source
    values of what calibrate lets diverge saved for the earlier settings' views.
    Returns calibrate's update mask and pull; after training on them, set
    ``masks.stage = "calibrated"`` (a stack of models calibrates this way)."""
    masks.require("allocated", "calibrated", "extended", action="calibrate()")
    if setting is not None and masks.index(setting) != masks.latest:
        raise ValueError(f"calibrate trains the newest setting, "
                         f"{masks.settings[masks.latest]!r}, not {setting!r}; "
                         "extend() adds a new one")
    if lam < 0:
        raise ValueError(f"lam must be >= 0, got {lam}")
    update = calibrate_update(model, masks, subspace, train_biases)
    _prepare(model, masks, {} if fit_kwargs is None else fit_kwargs)
    # Anything not yet saved still has the value every earlier setting sees.
    before = masks.state_before(masks.latest)
    params = dict(model.named_parameters())
    for name, buf in model.named_buffers():
        before.setdefault(name, buf.detach().clone())
    for name, spec in update.items():
        if spec is True:
            before.setdefault(name, params[name].detach().clone())
    return update, calibrate_penalty(masks, update, lam)


def calibrate(model: nn.Module, masks: Masks, target: Data, lam: float = PAPER_LAM,
              train_biases: bool = False, subspace: str = "all", setting: str | None = None,
              **fit_kwargs: Any) -> History:
    """Train only the redundant entries on ``target`` with ``lam * ||w_redundant||^2``
    (``|w|^2`` per complex entry).

    Essential entries and every other parameter stay bit-identical. ``subspace="last"``
    trains only the redundant entries of the head (see :func:`calibrate_update`; with
    ``train_biases`` only the head's biases): a small target subspace for few samples.
    With ``train_biases=True`` the biases are trained too, after their source values are
    saved in ``masks.source_state``; the model's buffers (BatchNorm running statistics)
    are saved there as well, so :func:`source_view` reproduces the allocated source model.

    With several targets (:func:`pacsim.pac.extend`) calibrate trains the newest
    setting's entries (``setting``, if given, must name it) and saves what it lets
    diverge in ``masks.state_before(setting)``, so every earlier setting's
    :func:`~pacsim.pac.view` stays bit-identical.
    """
    update, penalty = begin_calibrate(model, masks, lam, train_biases, subspace, setting,
                                      fit_kwargs)
    history = fit(model, target, update_mask=update, penalty=penalty, **fit_kwargs)
    masks.stage = "calibrated"
    return history
