"""One interface for every transfer method: :func:`adapt`.

Each method copies the source model and trains a precisely defined subset of it on the
target data with :func:`pacsim.train.fit`; the source model itself is never modified.

=========  ===================================================================
scratch    fresh initialisation of the same architecture, target data only
finetune   every parameter
head       the model's head: the submodule it names as such (``HEAD_MODULE``; the
           FNO's projection), else the last layer that has parameters
l2sp       every parameter, with ``alpha/2 * ||w - w_source||^2`` (Li et al., 2018)
bitfit     biases only
pac        prune + allocate on ``source`` until the source error is back, then
           calibrate the freed entries on the target (pacsim's recipe)
pac-paper  the paper's recipe: fixed allocate budget, ``lam = 0.01`` on every freed entry
=========  ===================================================================
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import inspect
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .. import pac
from ..device import resolve_device
from ..exact import L2Penalty, MaskSpec
from ..method_names import METHODS as _NAMES
from ..method_names import PAC_METHODS as _KEEP_SOURCE
from ..models.registry import build, head_names
from ..train import Data, History, fit, mean_loss
from ..training.config import FIELDS as TRAIN_FIELDS
from ..training.single import CALLBACK_KEYWORDS
from .options import (
    L2SPOptions,
    Options,
    PACBaseOptions,
    PACOptions,
    PACPaperOptions,
    ScratchOptions,
    method_options,
)
from .registry import Method, PlanBuilder, PlanContext, get, names, register


@dataclass
class TransferResult:
    """The adapted model, PAC's masks (else None), the target training history and, from
    :func:`pacsim.transfer.select`, what was chosen and the cross-validation curves."""

    method: str
    model: nn.Module
    history: History
    masks: pac.Masks | None = None
    trainable: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    selection: dict[str, Any] | None = None

    def network_bytes(self) -> int:
        """Bytes of one network: its parameters and buffers at their own element sizes
        (a complex spectral weight takes twice a float32's)."""
        return sum(t.numel() * t.element_size()
                   for t in [*self.model.parameters(), *self.model.buffers()])

    def serving_bytes(self) -> int:
        """Bytes needed to serve both the source and the target setting: PAC keeps one
        network, a 1-bit mask per prunable entry and the source's own copies of what
        calibrate let diverge (biases, BatchNorm statistics); every other method needs
        the source network beside the adapted one."""
        net = self.network_bytes()
        if self.masks is None:
            return 2 * net
        saved = sum(t.numel() * t.element_size() for t in self.masks.source_state.values())
        return net + math.ceil(self.masks.n_total() / 8) + saved

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


def _all(model: nn.Module) -> dict[str, bool]:
    return {n: True for n, _ in model.named_parameters()}


def _head(model: nn.Module) -> dict[str, bool]:
    names = set(head_names(model))
    return {n: n in names for n, _ in model.named_parameters()}


def _biases(model: nn.Module) -> dict[str, bool]:
    biases = set(pac.bias_names(model))
    return {n: n in biases for n, _ in model.named_parameters()}


@dataclass
class TrainingPlan:
    """What a method trains on the target: a copy of the source model (fresh for
    scratch, the allocated model for PAC), which entries may change and the L2 pull.
    :func:`adapt` runs one plan through :func:`~pacsim.train.fit`;
    :func:`~pacsim.transfer.select` can run many through ``fit_many``."""

    model: nn.Module
    update_mask: MaskSpec
    penalty: L2Penalty | None = None
    #: PAC's own copy of the masks, calibrate's bookkeeping done (a ``final`` plan)
    masks: pac.Masks | None = None
    #: What turns the trained model into the result's (e.g. merging an adapter into
    #: plain weights of the registered model class); None: the model as trained.
    finish: Callable[[nn.Module], nn.Module] | None = None

    def result(self, history: History) -> TransferResult:
        """The :class:`TransferResult` once ``model`` has trained on this plan."""
        if self.masks is not None:
            self.masks.stage = "calibrated"
        trainable = _count(self.model, self.update_mask)
        model = self.model if self.finish is None else self.finish(self.model)
        return TransferResult("", model, history, masks=self.masks, trainable=trainable)


def _copy(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model)


def _scratch_plan(source_model: nn.Module, opts: Options, ctx: PlanContext) -> TrainingPlan:
    assert isinstance(opts, ScratchOptions)
    model = _reinit(source_model, opts.init_seed if opts.init_seed is not None else ctx.seed)
    return TrainingPlan(model, _all(model))


def _masked_plan(select: Callable[[nn.Module], dict[str, bool]]) -> PlanBuilder:
    """A plan builder that trains ``select(copy)`` of a copy of the source model."""
    def plan(source_model: nn.Module, opts: Options, ctx: PlanContext) -> TrainingPlan:
        model = _copy(source_model)
        return TrainingPlan(model, select(model))
    return plan


def _l2sp_plan(source_model: nn.Module, opts: Options, ctx: PlanContext) -> TrainingPlan:
    assert isinstance(opts, L2SPOptions)
    model = _copy(source_model)
    anchors = {n: p.detach().clone() for n, p in model.named_parameters()}
    return TrainingPlan(model, _all(model), L2Penalty(opts.alpha / 2, anchors))


def _pac_plan(source_model: nn.Module, opts: Options, ctx: PlanContext) -> TrainingPlan:
    """PAC's calibrate from ``ctx.allocated``: a ``final`` plan gets its own copy of the
    masks with calibrate's bookkeeping done (:func:`pacsim.pac.begin_calibrate`, on
    ``ctx.device``), so that its result serves both settings; a plan for a
    cross-validation fold shares the allocated masks and keeps no result."""
    assert isinstance(opts, PACBaseOptions)
    if ctx.allocated is None:
        raise ValueError(f"method {ctx.method!r} plans from an allocated (model, masks)")
    model = copy.deepcopy(ctx.allocated[0])
    if ctx.final:
        masks = copy.deepcopy(ctx.allocated[1])
        # after allocate, or after extend() for one more setting in the same network
        masks.require("allocated", "extended", action=f"adapt({ctx.method!r}, allocated=...)")
        update, penalty = pac.begin_calibrate(
            model, masks, opts.lam, opts.train_biases, opts.subspace,
            fit_kwargs={"device": ctx.device})
        return TrainingPlan(model, update, penalty, masks)
    masks = ctx.allocated[1]
    update = pac.calibrate_update(model, masks, opts.subspace, opts.train_biases)
    return TrainingPlan(model, update, pac.calibrate_penalty(masks, update, opts.lam))


#: The learning rates every method without options of its own searches.
LR_GRID = [3e-4, 1e-3, 3e-3, 1e-2]

# The built-in methods, in report order. Selection grids: 4 configurations (PAC's 5);
# the learning rate for methods without options of their own; L2-SP's strength beside
# it; for PAC a ladder of calibration subspaces (the target's own biases, the head's
# freed entries, the target's own copy of the whole head, every freed entry: a superset
# of BitFit, head and fine-tuning on one network that keeps the source) with the
# learning rate. The step count is chosen on top of the grid, from the mean
# cross-validation curve; a choice at the edge of a numeric axis (or of the step
# horizon) extends that axis geometrically and searches on
# (:class:`pacsim.transfer.SelectionConfig`'s ``extend``).
register(Method("scratch", ScratchOptions, {"lr": list(LR_GRID)}, _scratch_plan))
register(Method("finetune", Options, {"lr": list(LR_GRID)}, _masked_plan(_all)))
register(Method("head", Options, {"lr": list(LR_GRID)}, _masked_plan(_head)))
# from fine-tuning's learning rates; alpha from nearly none (fine-tuning) to strong
register(Method("l2sp", L2SPOptions, {"lr": [1e-3, 1e-2], "alpha": [1e-4, 1e-2]},
                _l2sp_plan))
register(Method("bitfit", Options, {"lr": list(LR_GRID)}, _masked_plan(_biases)))
register(Method("pac-paper", PACPaperOptions, {"lr": list(LR_GRID)}, _pac_plan,
                keeps_source=True, allocates=True))
# a ladder of calibration subspaces, smallest to largest target capacity
register(Method("pac", PACOptions, [{"subspace": ["biases", "last", "head"], "lr": [1e-2]},
                                    {"subspace": ["all"], "lr": [1e-3, 1e-2]}],
                _pac_plan, keeps_source=True, allocates=True))
assert names(default=True) == _NAMES and names(keeps_source=True) == _KEEP_SOURCE, \
    "pacsim.method_names lists the built-in methods in registration order"


def training_plan(method: str, source_model: nn.Module, opts: Options, *,
                  allocated: tuple[nn.Module, pac.Masks] | None = None,
                  seed: int | None = None, final: bool = False,
                  device: str | torch.device = "auto") -> TrainingPlan:
    """The :class:`TrainingPlan` of ``method`` with options ``opts``, built by the
    method's registered plan builder (PAC methods need ``allocated``, the model and
    masks after allocate); the source model is copied.

    A ``final`` PAC plan gets its own copy of the masks with calibrate's bookkeeping
    done, so that its :meth:`TrainingPlan.result` serves both settings; a plan for a
    cross-validation fold shares the allocated masks and keeps no result."""
    ctx = PlanContext(method, seed=seed, allocated=allocated, final=final, device=device)
    return get(method).plan(source_model, opts, ctx)


def source_loss(model: nn.Module, data: Data, loss: Any = "mse",
                batch_size: int = 1024) -> float:
    """Mean ``loss`` of ``model`` on ``data``, measured as ``fit`` measures validation
    losses (so it compares with them)."""
    return mean_loss(model, data, loss=loss, batch_size=batch_size)


def prune_and_allocate(model: nn.Module, source: Data, opts: PACBaseOptions, *,
                       source_val: Data | None = None, **fit_kwargs: Any
                       ) -> tuple[pac.Masks, dict[str, Any]]:
    """PAC's first two steps on ``model`` (in place) with the recipe in ``opts``.

    ``allocate="fixed"`` runs the given budget (``epochs`` or ``steps`` in
    ``fit_kwargs``). ``allocate="source"`` first measures the unpruned model's source
    loss (on ``source_val``, else on ``source``), then retrains for at most
    ``allocate_max_factor`` times the budget, stopping after ``allocate_patience`` epochs
    without improvement (or, where :meth:`~PACBaseOptions.stops_at_reference`, once the
    pruned model is back at the unpruned loss) and keeping the best epoch. Where
    the recipe asks for a recovered source (:meth:`PACOptions.recovery`) and the best
    epoch is not within that factor of the unpruned loss, the pruning ratio backs off
    (:meth:`PACOptions.ratios`) and allocate runs again from the unpruned weights; if no
    ratio recovers, the one with the lowest source loss is kept.
    Returns the masks and a record of what happened (``ratio`` used, ``reason``, and
    per ratio tried its ``loss_ratio`` to the unpruned model).
    """
    yardstick = source_val if source_val is not None else source
    info: dict[str, Any] = {"allocate": opts.allocate}
    if opts.allocate != "source":
        masks = pac.prune(model, ratio=opts.ratio, scope=opts.scope)
        info["history"] = pac.allocate(model, masks, source, lam_sp=opts.lam_sp, **fit_kwargs)
        info["ratio"] = opts.ratio
        return masks, info
    model.to(resolve_device(fit_kwargs.get("device", "auto")))
    # the loss allocate's validation uses (fit's), so the two compare
    info["unpruned_loss"] = reference = source_loss(
        model, yardstick, fit_kwargs.get("loss", "mse"), fit_kwargs.get("batch_size", 64))
    budget = dict(fit_kwargs)
    for key in ("epochs", "steps"):
        if budget.get(key) is not None:
            budget[key] = math.ceil(budget[key] * opts.allocate_max_factor)
    tolerance = opts.recovery()
    ratios = opts.ratios()
    unpruned = copy.deepcopy(model.state_dict()) if len(ratios) > 1 else None
    tries: list[dict[str, Any]] = []
    best: tuple[float, dict[str, Any], pac.Masks, History] | None = None
    for i, ratio in enumerate(ratios):
        if i:
            model.load_state_dict(unpruned)
        masks = pac.prune(model, ratio=ratio, scope=opts.scope)
        history = pac.allocate(
            model, masks, source, lam_sp=opts.lam_sp, val=yardstick,
            patience=opts.allocate_patience, restore_best=True,
            stop_when=(lambda h: h.val_loss[-1] <= reference)
            if opts.stops_at_reference() else None, **budget)
        loss = history.best_val
        share = loss / reference if reference > 0 else (1.0 if loss <= 0 else math.inf)
        recovered = tolerance is None or share <= tolerance
        tries.append({"ratio": ratio, "loss": loss, "loss_ratio": share,
                      "recovered": recovered})
        if best is None or loss < best[0]:
            state = copy.deepcopy(model.state_dict()) if not recovered and i + 1 < len(ratios) \
                else None
            best = (loss, state, masks, history)
        if recovered:
            break
    assert best is not None
    loss, state, masks, history = best
    if state is not None:  # the lowest loss came from an earlier ratio
        model.load_state_dict(state)
    info.update(allocated_loss=loss, ratio=masks.ratio, tries=tries, history=history)
    if tolerance is None:
        info["reason"] = "the recipe's ratio"
    elif next(t["recovered"] for t in tries if t["ratio"] == masks.ratio):
        info["reason"] = (f"source recovered within {tolerance:g}x at ratio {masks.ratio:g}"
                          + (f" after backing off from {ratios[0]:g}" if len(tries) > 1 else ""))
    else:
        info["reason"] = (f"no ratio down to {ratios[-1]:g} recovered the source within "
                          f"{tolerance:g}x; kept ratio {masks.ratio:g}, the lowest source loss")
    return masks, info


#: Trainer arguments that belong to calibrate only, never to allocate.
_CALIBRATE_ONLY = ("val", "patience", "restore_best", "stop_when")


def allocated_model(source_model: nn.Module, source: Data, opts: PACBaseOptions, *,
                    source_val: Data | None = None,
                    allocate_kwargs: dict[str, Any] | None = None, **fit_kwargs: Any
                    ) -> tuple[nn.Module, pac.Masks, dict[str, Any]]:
    """A pruned and allocated copy of ``source_model`` (see :func:`prune_and_allocate`).

    Allocate trains with ``fit_kwargs`` (less calibrate-only arguments such as ``val``)
    updated by ``allocate_kwargs``; an ``epochs`` there replaces a ``steps`` and back."""
    model = copy.deepcopy(source_model)
    kwargs = {k: v for k, v in fit_kwargs.items() if k not in _CALIBRATE_ONLY}
    alloc = dict(allocate_kwargs or {})
    if "epochs" in alloc or "steps" in alloc:
        kwargs.pop("epochs", None)
        kwargs.pop("steps", None)
    kwargs.update(alloc)
    masks, info = prune_and_allocate(model, source, opts, source_val=source_val, **kwargs)
    return model, masks, info


def check_allocated(method: str, opts: Options, given: Iterable[str],
                    masks: pac.Masks) -> None:
    """Refuse a ``ratio`` or ``scope`` given with ``allocated=`` that its masks could not
    have come from: allocate is done, so they would be recorded and silently ignored.
    A ratio is consistent when the masks' ratio is one the recipe tries
    (:meth:`PACOptions.ratios`: the ratio itself, or one it backs off to)."""
    if not get(method).allocates:
        return
    assert isinstance(opts, PACBaseOptions)
    given = set(given)
    if "scope" in given and opts.scope != masks.scope:
        raise ValueError(f"method {method!r}: scope {opts.scope!r} disagrees with the "
                         f"allocated masks (scope {masks.scope!r}); allocate is done, "
                         "leave scope out or allocate again")
    if "ratio" in given and not any(math.isclose(masks.ratio, r, abs_tol=1e-9)
                                    for r in opts.ratios()):
        raise ValueError(f"method {method!r}: ratio {opts.ratio:g} disagrees with the "
                         f"allocated masks (ratio {masks.ratio:g}); allocate is done, "
                         "leave ratio out or allocate again")


def options_record(opts: Options, masks: pac.Masks | None) -> dict[str, Any]:
    """The options a result records: ``opts``, with a PAC network's pruning ratio and
    scope as its masks hold them (a backed-off ratio, or those of ``allocated=``)."""
    out = opts.to_dict()
    if masks is not None and isinstance(opts, PACBaseOptions):
        out.update(ratio=float(masks.ratio), scope=masks.scope)
    return out


def _run(method: str, model: nn.Module, target: Data, opts: Options, *,
         source: Data | None = None, source_val: Data | None = None,
         allocate_kwargs: dict[str, Any] | None = None,
         allocated: tuple[nn.Module, pac.Masks] | None = None,
         **fit_kwargs: Any) -> TransferResult:
    """One method's transfer: allocate first where the method plans from an allocated
    model (and none is given), then its final plan trained by :func:`fit`."""
    extra: dict[str, Any] = {}
    if get(method).allocates and allocated is None:
        if source is None:
            raise ValueError(f"method {method!r} needs the source data: pass source=(X, Y) "
                             "(or allocated=(model, masks) from an earlier allocate)")
        assert isinstance(opts, PACBaseOptions)
        alloc_model, alloc_masks, info = allocated_model(
            model, source, opts, source_val=source_val, allocate_kwargs=allocate_kwargs,
            **fit_kwargs)
        allocated = (alloc_model, alloc_masks)
        extra["allocate_history"] = info.pop("history")
        extra["allocate"] = info
    plan = training_plan(method, model, opts, allocated=allocated, final=True,
                         seed=fit_kwargs.get("seed"), device=fit_kwargs.get("device", "auto"))
    result = plan.result(fit(plan.model, target, update_mask=plan.update_mask,
                             penalty=plan.penalty, **fit_kwargs))
    result.extra.update(extra)
    return result


#: The trainer keywords adapt passes on: fit's keywords and the TrainConfig fields.
_FIT_ARGS = ((set(inspect.signature(fit).parameters) | set(TRAIN_FIELDS)
              | set(CALLBACK_KEYWORDS)) - {"model", "train", "update_mask", "config", "overrides"})


def adapt(method: str, source_model: nn.Module, target: Data, *, source: Data | None = None,
          options: Mapping[str, Any] | Options | None = None, **kwargs: Any) -> TransferResult:
    """Transfer ``source_model`` to ``target`` data with ``method`` (a registered method,
    :mod:`pacsim.transfer.registry`; the built-ins are :data:`METHODS`).

    Method options (see :mod:`pacsim.transfer.options`: ``alpha`` for l2sp; ``ratio``,
    ``lam``, ``subspace``, ``train_biases``, ``allocate``, ... for pac and pac-paper;
    ``init_seed`` for scratch) come in ``options`` or as keyword arguments; an unknown
    option is a ValueError naming it. PAC also takes ``source_val`` (data judging
    allocate), ``allocate_kwargs`` (trainer arguments of allocate) and ``allocated``
    (a cached ``(model, masks)`` after allocate). Every other keyword goes to
    :func:`pacsim.train.fit` (``epochs`` or ``steps`` is required). ``source`` is the
    source training data, required by PAC unless ``allocated`` is given. The source
    model is never modified.
    """
    entry = get(method)
    raw = (options.to_dict() if isinstance(options, Options) else dict(options or {}))
    # any method's option name is an option (a wrong one is refused by name below)
    any_option = {f.name for n in names() for f in dataclasses.fields(get(n).options)}
    raw.update({k: kwargs.pop(k) for k in list(kwargs) if k in any_option})
    given = set(raw)
    opts = method_options(method, raw)
    pac_only = {"source_val", "allocate_kwargs", "allocated"} & set(kwargs)
    if pac_only and not entry.allocates:
        raise ValueError(f"method {method!r} takes no {sorted(pac_only)[0]!r}")
    if kwargs.get("allocated") is not None:
        check_allocated(method, opts, given, kwargs["allocated"][1])
    unknown = sorted(set(kwargs) - _FIT_ARGS - pac_only)
    if unknown:
        raise ValueError(f"adapt() got an unknown argument {unknown[0]!r} (neither a "
                         f"{method!r} option nor a fit() argument)")
    # every plan copies the source model (or allocate's copy) before training
    result = _run(method, source_model, target, opts, source=source, **kwargs)
    result.method = method
    result.extra["options"] = options_record(opts, result.masks)
    return result
