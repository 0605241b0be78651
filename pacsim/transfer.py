"""One interface for every transfer method: :func:`adapt`.

Each method copies the source model and trains a precisely defined subset of it on the
target data with :func:`pacsim.train.fit`; the source model itself is never modified.

=========  ===================================================================
scratch    fresh initialisation of the same architecture, target data only
finetune   every parameter
head       the last layer that has parameters
l2sp       every parameter, with ``alpha/2 * ||w - w_source||^2`` (Li et al., 2018)
bitfit     biases only
pac        prune + allocate on ``source`` + calibrate the freed entries on the target
=========  ===================================================================
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from . import pac
from .models.registry import build
from .train import Data, History, L2Penalty, MaskSpec, fit

METHODS = ("scratch", "finetune", "head", "l2sp", "bitfit", "pac")


@dataclass
class TransferResult:
    """The adapted model, PAC's masks (else None) and the target training history."""

    method: str
    model: nn.Module
    history: History
    masks: pac.Masks | None = None
    trainable: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def source_view(self) -> contextlib.AbstractContextManager[nn.Module]:
        """Context in which ``model`` computes the source task: PAC's source view, or the
        adapted model itself for methods that keep one set of weights."""
        if self.masks is not None:
            return pac.source_view(self.model, self.masks)
        return contextlib.nullcontext(self.model)


def _count(model: nn.Module, mask: MaskSpec) -> int:
    total = 0
    for name, p in model.named_parameters():
        spec = mask.get(name, False)
        total += int(spec.sum()) if isinstance(spec, torch.Tensor) else (p.numel() if spec else 0)
    return total


def _reinit(model: nn.Module, seed: int | None) -> nn.Module:
    """A freshly initialised twin of ``model`` (rebuilt from its config when it has one)."""
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        if hasattr(model, "config"):
            fresh = build(model.config())
        else:
            fresh = copy.deepcopy(model)
            for m in fresh.modules():
                if hasattr(m, "reset_parameters"):
                    m.reset_parameters()
    return fresh.to(next(model.parameters()).device)


def last_layer(model: nn.Module) -> str:
    """Module name of the last module (in registration order) that owns parameters."""
    owners = [n for n, m in model.named_modules() if any(True for _ in m.parameters(recurse=False))]
    if not owners:
        raise ValueError("model has no parameters")
    return owners[-1]


def _all(model: nn.Module) -> dict[str, bool]:
    return {n: True for n, _ in model.named_parameters()}


def _head(model: nn.Module) -> dict[str, bool]:
    prefix = last_layer(model)
    prefix = f"{prefix}." if prefix else ""
    return {n: n.startswith(prefix) and "." not in n[len(prefix):]
            for n, _ in model.named_parameters()}


def _biases(model: nn.Module) -> dict[str, bool]:
    biases = set(pac.bias_names(model))
    return {n: n in biases for n, _ in model.named_parameters()}


def _plain(select: Callable[[nn.Module], dict[str, bool]]):
    def run(model: nn.Module, target: Data, **fit_kwargs: Any) -> TransferResult:
        mask = select(model)
        history = fit(model, target, update_mask=mask, **fit_kwargs)
        return TransferResult("", model, history, trainable=_count(model, mask))

    return run


def _scratch(model: nn.Module, target: Data, *, init_seed: int | None = None,
             **fit_kwargs: Any) -> TransferResult:
    fresh = _reinit(model, init_seed if init_seed is not None else fit_kwargs.get("seed"))
    return _plain(_all)(fresh, target, **fit_kwargs)


def _l2sp(model: nn.Module, target: Data, *, alpha: float = 0.01,
          **fit_kwargs: Any) -> TransferResult:
    if alpha < 0:
        raise ValueError(f"l2sp alpha must be >= 0, got {alpha}")
    anchors = {n: p.detach().clone() for n, p in model.named_parameters()}
    result = _plain(_all)(model, target, penalty=L2Penalty(alpha / 2, anchors), **fit_kwargs)
    result.extra["alpha"] = alpha
    return result


def _pac(model: nn.Module, target: Data, *, source: Data | None = None,
         ratio: float = 0.8, scope: str = "global", lam: float = 0.01, lam_sp: float = 0.0,
         train_biases: bool = False, allocate_kwargs: dict[str, Any] | None = None,
         allocated: tuple[nn.Module, pac.Masks] | None = None,
         **fit_kwargs: Any) -> TransferResult:
    extra: dict[str, Any] = {"ratio": ratio, "scope": scope, "lam": lam}
    if allocated is not None:
        model = copy.deepcopy(allocated[0])
        masks = copy.deepcopy(allocated[1])
        masks.require("allocated", action="adapt('pac', allocated=...)")
    else:
        if source is None:
            raise ValueError("method 'pac' needs the source data: pass source=(X, Y) "
                             "(or allocated=(model, masks) from an earlier allocate)")
        pac.check_ratio(ratio)
        masks = pac.prune(model, ratio=ratio, scope=scope)
        alloc_kwargs = {**fit_kwargs, **(allocate_kwargs or {})}
        extra["allocate_history"] = pac.allocate(model, masks, source, lam_sp=lam_sp,
                                                 **alloc_kwargs)
    history = pac.calibrate(model, masks, target, lam=lam, train_biases=train_biases,
                            **fit_kwargs)
    trainable = masks.n_redundant()
    if train_biases:
        params = dict(model.named_parameters())
        trainable += sum(params[n].numel() for n in pac.bias_names(model, masks.essential))
    return TransferResult("", model, history, masks=masks, trainable=trainable, extra=extra)


_RUNNERS: dict[str, Callable[..., TransferResult]] = {
    "scratch": _scratch,
    "finetune": _plain(_all),
    "head": _plain(_head),
    "l2sp": _l2sp,
    "bitfit": _plain(_biases),
    "pac": _pac,
}


def adapt(method: str, source_model: nn.Module, target: Data, *, source: Data | None = None,
          **kwargs: Any) -> TransferResult:
    """Transfer ``source_model`` to ``target`` data with ``method`` (one of :data:`METHODS`).

    ``kwargs`` are method options (``alpha`` for l2sp; ``ratio``, ``scope``, ``lam``,
    ``lam_sp``, ``train_biases``, ``allocate_kwargs``, ``allocated`` for pac; ``init_seed``
    for scratch) and otherwise :func:`pacsim.train.fit` arguments (``epochs`` is required).
    ``source`` is the source training data, required by ``pac`` unless ``allocated`` is given.
    """
    if method not in _RUNNERS:
        raise ValueError(f"unknown transfer method {method!r}; choose one of {list(METHODS)}")
    model = copy.deepcopy(source_model)
    if method == "pac":
        result = _pac(model, target, source=source, **kwargs)
    else:
        result = _RUNNERS[method](model, target, **kwargs)
    result.method = method
    return result
