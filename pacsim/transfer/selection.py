"""Target-only hyper-parameter selection for every transfer method: :func:`select`,
configured by :class:`SelectionConfig` (``"cv"`` or ``"fixed"``).

K-fold cross-validation on the ``n`` target samples (scikit-learn's ``KFold``, or
``GroupKFold`` where samples come in groups such as trajectories): for each
configuration of the method's grid (scikit-learn's ``ParameterGrid``; the learning rate
and the method's own options) every fold trains once for ``max_steps`` optimiser steps
and records its validation loss after every epoch. The step count is read off the mean
fold curve, jointly with the configuration, and the method is then retrained on all
``n`` samples with what was chosen. Only the ``target`` samples passed in are ever used:
test data cannot influence the choice.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np
import torch
from sklearn.model_selection import GroupKFold, KFold, ParameterGrid
from torch import nn

from ..data.batches import as_tensor
from ..device import resolve_device
from ..many import OUT_OF_MEMORY, fit_many, not_vectorisable
from ..train import Data, History, TrainingDiverged
from .methods import (
    TrainingPlan,
    TransferResult,
    adapt,
    allocated_model,
    check_allocated,
    options_record,
    training_plan,
)
from .options import DEFAULT_GRIDS, TRAIN_GRID_KEYS, PACBaseOptions, check_grid, method_options
from .registry import get, names

SELECTION_MODES = ("cv", "fixed")
#: SelectionConfig.final's values.
FINAL_STATES = ("last", "best")


@dataclass(frozen=True)
class SelectionConfig:
    """``mode="cv"``: K-fold cross-validation on the target samples only (``folds``
    folds; the step count is read off the mean fold curve up to ``max_steps``; the
    method's grid is searched), then a retrain on all samples. ``mode="fixed"``: the
    method's options and the fixed step budget, nothing chosen. ``max_steps=None`` means
    three times the fixed budget."""

    mode: str = "cv"
    folds: int = 5
    max_steps: int | None = None
    #: Extensions of a grid axis (or of the step horizon) past its edge, per direction;
    #: 0 searches the grid as given.
    extend: int = 3
    #: The step horizon's cap, in multiples of the fixed budget.
    max_factor: int = 30
    #: Successive halving's reduction factor (0, the default: every configuration trains
    #: its whole horizon): at rungs of the horizon (H / eta^k) only the best 1/eta of a
    #: round's configurations, by their mean fold curve so far, train on. Off by default:
    #: on the quick suite a factor of 3 chose as exhaustive search in 75 % of the cells
    #: for 1.41x fewer CV steps (benchmarks/README.md).
    halving: int = 0
    #: Which state of the final retrain (all n samples, the chosen step count) is kept:
    #: ``"best"`` (the default), the epoch with the lowest loss on those n samples, so a
    #: loss spike of a high learning rate near the chosen step is not what the transfer
    #: delivers (it reads the target samples only); or ``"last"``, the state at the
    #: chosen step, what pacsim kept before (benchmarks/README.md, ``final_state.py``).
    final: str = "best"

    def __post_init__(self) -> None:
        if self.mode not in SELECTION_MODES:
            raise ValueError(f"selection mode must be one of {list(SELECTION_MODES)}, "
                             f"got {self.mode!r}")
        if isinstance(self.folds, bool) or not isinstance(self.folds, int) or self.folds < 2:
            raise ValueError(f"selection folds must be an integer >= 2, got {self.folds!r}")
        if self.max_steps is not None and (isinstance(self.max_steps, bool)
                                           or not isinstance(self.max_steps, int)
                                           or self.max_steps < 1):
            raise ValueError(f"selection max_steps must be a positive integer, "
                             f"got {self.max_steps!r}")
        for key, low in (("extend", 0), ("max_factor", 1), ("halving", 0)):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ValueError(f"selection {key} must be an integer >= {low}, got {v!r}")
        if self.halving == 1:
            raise ValueError("selection halving must be 0 (off) or a factor >= 2, got 1")
        if self.final not in FINAL_STATES:
            raise ValueError(f"selection final must be one of {list(FINAL_STATES)}, "
                             f"got {self.final!r}")

    @classmethod
    def from_value(cls, raw: str | Mapping[str, Any] | None) -> SelectionConfig:
        """From a suite's ``selection = "cv"`` or ``selection = {mode=..., folds=...}``."""
        if raw is None:
            return cls()
        if isinstance(raw, str):
            return cls(mode=raw)
        if not isinstance(raw, Mapping):
            raise ValueError(f"selection must be a string or a table, got {raw!r}")
        keys = [f.name for f in fields(cls)]
        unknown = sorted(set(raw) - set(keys))
        if unknown:
            raise ValueError(f"selection has no key {unknown[0]!r} "
                             f"(its keys: {', '.join(keys)})")
        return cls(**dict(raw))

    def to_dict(self) -> dict[str, Any]:
        """JSON-able copy (:meth:`from_value` reads it back)."""
        return asdict(self)

    def identity_dict(self) -> dict[str, Any]:
        """:meth:`to_dict` for a benchmark cell's identity: ``final`` only where it is not
        ``"last"``, so the cells run before it existed, which kept the last state, keep
        their identities."""
        out = self.to_dict()
        if out["final"] == "last":
            del out["final"]
        return out


@dataclass(frozen=True)
class Budget:
    """The fixed training the transfers of a selection share: ``steps`` optimiser steps
    (the whole training with ``mode="fixed"``; with CV the base of the step horizon, see
    :attr:`SelectionConfig.max_steps`), learning rate ``lr`` (where the grid does not
    choose it) and ``batch_size`` (capped at each training set's size). ``stack``: how
    the cross-validation trains, not what (True, False or ``"auto"``, see
    :func:`select`)."""

    steps: int
    lr: float = 1e-3
    batch_size: int = 32
    stack: bool | str = False

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if self.stack not in (True, False, "auto"):
            raise ValueError(f"stack must be True, False or 'auto', got {self.stack!r}")

    @classmethod
    def of(cls, budget: Budget | None, kwargs: dict[str, Any]) -> Budget:
        """``budget``, or one from the keywords ``steps``, ``lr``, ``batch_size`` and
        ``stack`` taken out of ``kwargs`` (the spelling :func:`select` also accepts);
        TypeError when neither or both are given."""
        given = {f.name: kwargs.pop(f.name) for f in fields(cls) if f.name in kwargs}
        if budget is not None and not isinstance(budget, Budget):
            raise TypeError(f"budget must be a Budget, got {type(budget).__name__}")
        if budget is None:
            if "steps" not in given:
                raise TypeError("missing the training budget: budget=Budget(steps=...) "
                                "(or steps=...)")
            return cls(**given)
        if given:
            raise TypeError(f"{', '.join(given)} given beside budget: set them in the "
                            "Budget")
        return budget


#: Points kept per recorded CV curve (the curve itself is evaluated at every epoch).
CURVE_POINTS = 60


def _as_pair(target: Data, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    if not (isinstance(target, (tuple, list)) and len(target) == 2):
        raise TypeError(f"selection needs the {what} data as a pair (X, Y) of tensors or arrays")
    x, y = (as_tensor(a, f"{what} {w}") for a, w in zip(target, ("inputs", "targets")))
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"{what} inputs and targets differ in sample count: "
                         f"{x.shape[0]} and {y.shape[0]}")
    return x, y


def _step_curve(val_steps: list[int], val_loss: list[float], grid: np.ndarray) -> np.ndarray:
    """A fold's loss at each step of ``grid``: the last evaluation at or before it."""
    if not val_steps:  # e.g. fit stopped by a diverged first epoch
        return np.full(grid.shape, np.inf)
    idx = np.searchsorted(np.asarray(val_steps), grid, side="right") - 1
    losses = np.asarray(val_loss, dtype=np.float64)
    return np.where(idx >= 0, losses[np.clip(idx, 0, None)], np.inf)


def _fold_curve(h: History, grid: np.ndarray) -> np.ndarray:
    """:func:`_step_curve` of one fold, NaN from the end of the first epoch whose
    training or validation loss was not finite: a diverged fold, whether ``fit`` stopped
    there (one by one) or the stack went on (where the validation loss may still look
    finite)."""
    curve = _step_curve(h.val_steps, h.val_loss, grid)
    def finite(e: int) -> bool:  # epoch e's losses (a diverged fit recorded no val)
        return math.isfinite(h.train_loss[e]) and (
            e >= len(h.val_loss) or math.isfinite(h.val_loss[e]))

    bad = next((e for e in range(len(h.train_loss)) if not finite(e)), None)
    if bad is None:
        return curve
    return np.where(grid >= (h.val_steps[bad] if bad < len(h.val_steps) else h.steps),
                    np.nan, curve)


def _thin(steps: np.ndarray, loss: np.ndarray, points: int = CURVE_POINTS) -> list[list[float]]:
    keep = np.unique(np.linspace(0, len(steps) - 1, min(points, len(steps))).round().astype(int))
    return [[int(steps[i]), float(loss[i])] for i in keep]


def _config_key(config: Mapping[str, Any]) -> str:
    return ",".join(f"{k}={config[k]}" for k in sorted(config)) or "default"


@dataclass
class SelectRequest:
    """One transfer for :func:`select_many`: ``method`` from ``source_model`` to
    ``target`` with its own ``seed``, ``grid`` and fixed ``options``; ``extra`` holds
    its own :func:`adapt` keywords (``allocated``, ``source``, ``source_val``, ...)."""

    method: str
    source_model: nn.Module
    target: Data
    seed: int = 0
    grid: Mapping[str, list[Any]] | list[Mapping[str, list[Any]]] | None = None
    options: Mapping[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    #: Each target sample's group (e.g. its trajectory), or None: the CV folds keep
    #: groups whole (scikit-learn's ``GroupKFold``), so no fold validates on states of a
    #: trajectory it trained on.
    groups: Any = None


def select(method: str, source_model: nn.Module, target: Data, budget: Budget | None = None,
           *, selection: SelectionConfig | None = None,
           grid: Mapping[str, list[Any]] | None = None,
           options: Mapping[str, Any] | None = None, seed: int = 0,
           **kwargs: Any) -> TransferResult:
    """Choose ``method``'s hyper-parameters on ``target`` only, then transfer with them.

    ``budget``: the fixed training (:class:`Budget`: ``steps``, ``lr``, ``batch_size``,
    ``stack``), or those four as keywords (``steps=500, lr=...``), not both.
    ``selection``: :class:`SelectionConfig` (default: 5-fold CV); with CV the step count
    is chosen from 1 to ``selection.max_steps`` (default ``3 * steps``). ``grid``: option
    -> candidate values (default :data:`~pacsim.transfer.options.DEFAULT_GRIDS`);
    ``options``: the method's other options, fixed. The keyword ``groups`` (one id per
    target sample, e.g. its trajectory) keeps each group in one fold, so correlated
    samples never sit on both sides of a fold's boundary. Other keywords go to
    :func:`adapt` (``source``, ``allocated``, ``device``, ``weight_decay``, ...).
    The result's ``selection`` says what was chosen, the CV loss and the mean curves.

    ``stack=True`` (the budget's) trains the folds x configurations of the cross-validation,
    and then the final model, as stacks of models (:func:`pacsim.train.fit_many`, one
    stack per fold size) instead of one by one: the same trainings (same batches, masks
    and pulls) up to float rounding, several times faster for small models; models
    ``fit_many`` cannot stack (BatchNorm, dropout) and trainer options it does not take
    train one by one. ``stack="auto"`` stacks where it was measured faster: everywhere
    on CUDA, and on the CPU for models without 2D/3D convolutions, spectral ones
    included (a stack of 2D CNNs ran 0.86x as fast on 2 CPU cores, of 2D FNOs 0.6-1.0x;
    MLPs 1.4-2.6x, 1D CNNs 1.5x as fast, whole benchmark cells; 1D FNOs 1.7x, training
    steps).
    :func:`select_many` does the same for many transfers at once.
    """
    budget = Budget.of(budget, kwargs)
    groups = kwargs.pop("groups", None)
    request = SelectRequest(method, source_model, target, seed, grid, options, kwargs,
                            groups)
    return select_many([request], budget, selection=selection)[0]


@dataclass
class _Search:
    """A cross-validated request, ready to train: data, configurations, folds. Every
    configuration comes from one table of the grid (``origins``) and trains for its own
    step horizon (``horizons``); ``axes`` holds the values tried so far of each numeric
    axis of each table, edge extensions included."""

    method: str
    source_model: nn.Module
    x: torch.Tensor
    y: torch.Tensor
    base: dict[str, Any]
    seed: int
    kwargs: dict[str, Any]
    configs: list[dict[str, Any]]
    splits: list[Any]
    stacked: bool
    origins: list[int] = field(default_factory=list)
    horizons: list[int] = field(default_factory=list)
    axes: dict[tuple[int, str], list[float]] = field(default_factory=dict)
    extended: Counter[tuple[int, str, int]] = field(default_factory=Counter)
    #: Configurations successive halving stopped (never chosen).
    pruned: set[int] = field(default_factory=set)
    #: Optimiser steps the cross-validation trained, over every fold and configuration.
    cv_steps: int = 0
    #: What PAC's allocate did when this search ran it (ratio used and why), else None.
    allocate: dict[str, Any] | None = None

    def train_args(self) -> dict[str, Any]:
        """The trainer arguments a stack of this search's trainings passes to fit_many."""
        return {k: self.kwargs[k] for k in _STACK_ARGS if k in self.kwargs}

    def key(self, c: int, base_horizon: int) -> str:
        """Configuration ``c``'s name in the recorded curves (its horizon when extended)."""
        key = _config_key(self.configs[c])
        return key if self.horizons[c] == base_horizon else f"{key},steps<={self.horizons[c]}"

    def add(self, config: dict[str, Any], origin: int, horizon: int) -> int | None:
        """Add a configuration (None if it was tried already); its index."""
        for c, (other, h) in enumerate(zip(self.configs, self.horizons)):
            if other == config and h == horizon and self.origins[c] == origin:
                return None
        self.configs.append(config)
        self.origins.append(origin)
        self.horizons.append(horizon)
        for key, value in config.items():
            if (origin, key) in self.axes and value not in self.axes[(origin, key)]:
                self.axes[(origin, key)] = sorted([*self.axes[(origin, key)], value])
        return len(self.configs) - 1


def select_many(requests: Sequence[SelectRequest], budget: Budget | None = None, *,
                selection: SelectionConfig | None = None,
                max_stack: int | str | None = "auto", **kwargs: Any) -> list[TransferResult]:
    """:func:`select` for many transfers at once, one result per request, in order.

    Each request is exactly what :func:`select` would do with its own method, target, seed,
    grid, options and ``extra`` keywords plus the shared ``budget`` (or its keywords, as
    for :func:`select`) and ``kwargs`` (``device``, ``weight_decay``, ...). With the
    budget's ``stack``, the cross-validation trainings of *all* requests that can share
    a stack (one architecture, same fold size) run as one ``fit_many`` call per fold
    size, and their final retrains as one more, each model with its own data, seed,
    learning rate, mask, pull and step count: a sweep's cells of one pair and target
    size, across methods and seeds, train together.
    ``max_stack`` caps the models of one ``fit_many`` call (None: no cap; ``"auto"``:
    none on CUDA, :data:`CPU_MAX_STACK` on the CPU, where very large stacks ran slower);
    a stack that runs out of device memory is trained in halves.
    """
    selection = selection or SelectionConfig()
    budget = Budget.of(budget, kwargs)
    steps, lr, batch_size = budget.steps, budget.lr, budget.batch_size
    if selection.mode != "fixed" and ("schedule_steps" in kwargs
                                      or any("schedule_steps" in r.extra for r in requests)):
        raise ValueError("schedule_steps is not a selection argument: cross-validation "
                         "anneals a schedule over max_steps and retrains along that path")
    asked = list(requests)
    requests, owners = _expand_auto(asked, kwargs, selection)
    results: list[TransferResult | None] = [None] * len(requests)
    searches: dict[int, _Search] = {}
    for i, req in enumerate(requests):
        rkw = {**kwargs, **req.extra}
        if asked[owners[i]].method in AUTO_METHODS and not get(req.method).allocates:
            rkw = {k: v for k, v in rkw.items() if k not in _PAC_ONLY}
        x, y = _as_pair(req.target, "target")
        base = dict(req.options or {})
        method_options(req.method, base)  # refuse a bad option before any training
        if selection.mode == "fixed":
            res = adapt(req.method, req.source_model, (x, y), options=base, steps=steps,
                        lr=lr, batch_size=min(batch_size, x.shape[0]), seed=req.seed, **rkw)
            res.selection = {"mode": "fixed", "chosen": {}, "steps": res.history.steps}
            results[i] = res
        else:
            searches[i] = _search(req, x, y, base, selection, budget, rkw)
    if not searches:
        return results  # type: ignore[return-value]
    max_steps = selection.max_steps or 3 * steps
    cap = max(max_steps, selection.max_factor * steps)
    stacked = [i for i, s in searches.items() if s.stacked]
    _max_stack(max_stack, "cpu")  # a bad value is refused before any training
    for s in searches.values():
        s.horizons = [max_steps] * len(s.configs)
    todo = {i: list(range(len(s.configs))) for i, s in searches.items()}
    histories: dict[int, Histories] = {i: [] for i in searches}
    while True:
        # train what is new (the grid, then each round's extensions), stacked where asked
        rounds = {i: _Halving(s, todo[i], selection.halving, batch_size)
                  for i, s in searches.items() if todo[i]}
        trained = _histories_stacked([(searches[i], todo[i], rounds[i]) for i in stacked
                                      if todo[i]], lr, batch_size, max_stack)
        for i, s in searches.items():
            if not todo[i]:
                continue
            new = trained[id(s)] if s.stacked else _runs_one_by_one(s, todo[i], lr,
                                                                    batch_size)
            s.cv_steps += sum(h.steps for hs in new for h in hs)
            histories[i].extend(rounds[i].settle(new))
        choices = {i: _choose_or_none(s, histories[i], max_steps,
                                      asked[owners[i]].method in AUTO_METHODS)
                   for i, s in searches.items()}
        todo = {i: [] if choices[i] is None else _extend(
                    s, choices[i][0], choices[i][1], selection.extend, max_steps, cap)
                for i, s in searches.items()}
        if not any(todo.values()):
            break
    picks = _auto_picks(asked, requests, owners, choices)
    searches = {i: s for i, s in searches.items()
                if asked[owners[i]].method not in AUTO_METHODS or i in picks}
    stacked = [i for i in stacked if i in searches]
    finals = {i: _resolve(s.configs[choices[i][0]], s.base, lr) for i, s in searches.items()}
    done = _finals_stacked({i: searches[i] for i in stacked}, finals, choices, batch_size,
                           max_stack, selection.final)
    for i, s in searches.items():
        c, best_step, best_loss, curves = choices[i]
        horizon = s.horizons[c]
        res = done.get(i)
        if res is None:
            res = adapt(s.method, s.source_model, (s.x, s.y), **finals[i], steps=best_step,
                        batch_size=min(batch_size, len(s.x)), seed=s.seed,
                        **_final_val(s, selection.final),
                        **_final_schedule(s.kwargs, horizon), **s.kwargs)
        if s.allocate is not None:
            res.extra["allocate"] = s.allocate
        edges = _edges(s, c, best_step, selection.extend, max_steps, cap)
        res.selection = {
            "mode": "cv", "folds": len(s.splits), "max_steps": max_steps,
            "stacked": s.stacked, "chosen": dict(s.configs[c]), "steps": best_step,
            "cv_loss": best_loss, "horizon": horizon, "interior": not edges,
            "edges": edges, "configs": len(s.configs), "halved": len(s.pruned),
            "trainings": len(s.configs) * len(s.splits),
            "cv_steps": s.cv_steps, "final": selection.final, "curves": curves,
        }
        if i in picks:
            res.selection["auto"] = picks[i]
        results[i] = res
    out: list[TransferResult | None] = [None] * len(asked)
    for j, res in enumerate(results):
        if res is not None:  # an auto request's candidates that lost have no result
            out[owners[j]] = res
    return out  # type: ignore[return-value]


class _Candidates(Mapping[str, tuple[str, ...]]):
    """``auto`` method -> its candidates, read from the registry when asked."""

    _FLAGS: dict[str, dict[str, bool]] = {
        "auto": {"default": True}, "auto-keep-source": {"default": True, "keeps_source": True}}

    def __getitem__(self, name: str) -> tuple[str, ...]:
        return names(**self._FLAGS[name])

    def __iter__(self) -> Iterator[str]:
        return iter(self._FLAGS)

    def __len__(self) -> int:
        return len(self._FLAGS)


#: ``auto`` methods: every default method's cross-validation on the same folds, the
#: lowest CV loss wins and only it is retrained; ``auto-keep-source`` chooses among the
#: methods that keep the source (PAC's).
AUTO_METHODS: Mapping[str, tuple[str, ...]] = _Candidates()
_PAC_ONLY = ("source", "source_val", "allocate_kwargs", "allocated")


def _expand_auto(requests: list[SelectRequest], kwargs: Mapping[str, Any],
                 selection: SelectionConfig
                 ) -> tuple[list[SelectRequest], list[int]]:
    """Requests with every ``auto`` request replaced by one per candidate method (same
    seed, hence the same folds); for each, the index of the request it stands for."""
    out: list[SelectRequest] = []
    owners: list[int] = []
    for a, req in enumerate(requests):
        if req.method not in AUTO_METHODS:
            out.append(req)
            owners.append(a)
            continue
        if selection.mode != "cv":
            raise ValueError(f"method {req.method!r} chooses by cross-validation: it needs "
                             "selection mode 'cv'")
        if req.options or req.grid is not None:
            raise ValueError(f"method {req.method!r} takes no options or grid: each "
                             "candidate searches its own default grid")
        given = {**kwargs, **req.extra}
        if "allocated" in given:
            raise ValueError(f"method {req.method!r} allocates for each PAC method itself: "
                             "pass source=(X, Y), not allocated=")
        candidates = [m for m in AUTO_METHODS[req.method]
                      if not get(m).allocates or given.get("source") is not None]
        if not any(get(m).allocates for m in candidates) and req.method != "auto":
            raise ValueError(f"method {req.method!r} needs the source data: pass "
                             "source=(X, Y)")
        for m in candidates:
            out.append(SelectRequest(m, req.source_model, req.target, req.seed, None, None,
                                     dict(req.extra), req.groups))
            owners.append(a)
    return out, owners


def _auto_picks(asked: list[SelectRequest], requests: list[SelectRequest],
                owners: list[int], choices: Mapping[int, Choice | None]
                ) -> dict[int, dict[str, Any]]:
    """For each ``auto`` request, its candidate with the lowest CV loss (first in method
    order on a tie): request index -> what the record says of the pick."""
    picks = {}
    for a, req in enumerate(asked):
        mine = [i for i, o in enumerate(owners) if o == a]
        if req.method not in AUTO_METHODS or not mine:
            continue
        losses = {requests[i].method: math.inf if choices[i] is None else choices[i][2]
                  for i in mine}
        ok = [i for i in mine if choices[i] is not None]
        if not ok:
            raise ValueError(f"{req.method}: cross-validation produced no finite validation "
                             "loss for any method")
        best = min(ok, key=lambda i: choices[i][2])
        picks[best] = {"method": req.method, "pick": requests[best].method,
                       "cv_loss": losses}
    return picks


def _choose_or_none(s: _Search, histories: Histories, max_steps: int, candidate: bool
                    ) -> Choice | None:
    """:func:`_choose`; for a candidate of ``auto``, None instead of an error when every
    configuration diverged (auto then picks among the others)."""
    try:
        return _choose(s, histories, max_steps)
    except ValueError:
        if not candidate:
            raise
        return None


def _search(req: SelectRequest, x: torch.Tensor, y: torch.Tensor, base: dict[str, Any],
            selection: SelectionConfig, budget: Budget, kwargs: dict[str, Any]) -> _Search:
    """Check a request and lay out its cross-validation (PAC allocates here, once)."""
    n = x.shape[0]
    opts = method_options(req.method, base)
    allocate = None
    if get(req.method).allocates and kwargs.get("allocated") is None:
        assert isinstance(opts, PACBaseOptions)
        # one allocate for every fold and configuration (it never sees target data)
        src = kwargs.pop("source", None)
        if src is None:
            raise ValueError(f"method {req.method!r} needs the source data: pass "
                             "source=(X, Y) (or allocated=(model, masks) from an earlier "
                             "allocate)")
        alloc_model, alloc_masks, info = allocated_model(
            req.source_model, src, opts, source_val=kwargs.pop("source_val", None),
            allocate_kwargs=kwargs.pop("allocate_kwargs", None), lr=budget.lr,
            steps=budget.steps, batch_size=budget.batch_size, seed=req.seed,
            **{k: v for k, v in kwargs.items() if k in ("device", "weight_decay",
                                                          "optimizer", "progress")})
        kwargs["allocated"] = (alloc_model, alloc_masks)
        allocate = {k: v for k, v in info.items() if k != "history"}
    elif kwargs.get("allocated") is not None:
        check_allocated(req.method, opts, base, kwargs["allocated"][1])
    splits = cv_splits(n, selection.folds, req.seed, req.groups)
    space = check_grid(req.method, DEFAULT_GRIDS[req.method] if req.grid is None
                       else req.grid)
    tables = space if isinstance(space, list) else [space]
    search = _Search(req.method, req.source_model, x, y, base, req.seed, kwargs, [],
                     splits, will_stack(req.source_model, budget.stack, kwargs),
                     allocate=allocate)
    for t, table in enumerate(tables):
        search.axes.update({(t, k): sorted(v) for k, v in table.items() if _numeric(v)})
        for config in ParameterGrid(table) if table else [{}]:
            search.add(dict(config), t, 0)
    return search


def cv_splits(n: int, folds: int, seed: int, groups: Any = None
              ) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train, validation) positions of ``n`` samples for ``folds``-fold CV, shuffled by
    ``seed`` (fewer folds when there are fewer samples, or groups). With ``groups`` (one id
    per sample) every group lies in one validation fold (``GroupKFold``)."""
    if groups is None:
        k = min(folds, n)
        if k < 2:
            raise ValueError(f"cross-validation needs at least 2 target samples, got {n}")
        return list(KFold(k, shuffle=True, random_state=seed).split(np.arange(n)))
    g = np.asarray(groups)
    if g.shape != (n,):
        raise ValueError(f"groups must hold one id per target sample ({n}), got shape "
                         f"{g.shape}")
    k = min(folds, np.unique(g).size)
    if k < 2:
        raise ValueError("cross-validation needs target samples from at least 2 groups "
                         "(trajectories), got 1")
    return list(GroupKFold(k, shuffle=True, random_state=seed).split(np.arange(n), groups=g))


Choice = tuple[int, int, float, dict[str, list[list[float]]]]

#: A chosen step count above this share of its configuration's horizon is at the
#: horizon's edge: the horizon doubles (up to the cap) and the configuration trains again.
EDGE_FRACTION = 0.9
#: The step of an extension of a one-valued axis (a value that has no neighbour yet).
DEFAULT_STEP = 3.0
#: Bounds no extension crosses: the learning rate's top.
AXIS_BOUNDS = {"lr": (0.0, 1.0)}


def _numeric(values: Sequence[Any]) -> bool:
    """Whether a grid axis is numeric (floats, not bools): one CV may extend past its edge."""
    return all(isinstance(v, float) for v in values)


def _choose(s: _Search, histories: Histories, max_steps: int) -> Choice:
    """The configuration (its index) and step count with the lowest mean fold curve
    (first minimum wins: grid order, then fewest steps), its CV loss and the thinned
    curves. A configuration where a fold diverged (a training loss not finite) is never
    chosen; nor is one successive halving stopped or a finite longer run superseded,
    unless no other configuration is left."""
    curves, finite = {}, {}
    for c, hs in enumerate(histories):
        grid_steps = np.arange(1, s.horizons[c] + 1)
        curve = np.mean([_fold_curve(h, grid_steps) for h in hs], axis=0)
        cut = max((h.steps for h in hs), default=0)
        if c in s.pruned and 0 < cut < len(grid_steps):  # halving stopped it: its curve
            grid_steps, curve = grid_steps[:cut], curve[:cut]
        curves[s.key(c, max_steps)] = _thin(grid_steps, curve)
        if not np.isnan(curve).any():
            finite[c] = (grid_steps, curve)
    if not finite:
        raise ValueError("cross-validation produced no finite validation loss")
    scheduled = s.kwargs.get("lr_schedule") is not None
    first = [c for c in finite if c not in s.pruned
             and (scheduled or not _superseded(s, c, finite))]
    best, best_step, best_loss = None, 1, math.inf
    for c in first or list(finite):
        grid_steps, curve = finite[c]
        i = int(np.argmin(curve))
        if curve[i] < best_loss:
            best, best_step, best_loss = c, int(grid_steps[i]), float(curve[i])
    assert best is not None
    return best, best_step, best_loss, curves


def _superseded(s: _Search, c: int, finite: Mapping[int, Any] | None = None) -> bool:
    """Whether configuration ``c`` also trained, without diverging, for a longer horizon:
    with a constant learning rate that curve holds this one (the same steps, up to
    rounding), so only the longer one is chosen from."""
    return any(other == s.configs[c] and h > s.horizons[c] and o == s.origins[c]
               and (finite is None or k in finite)
               for k, (other, h, o) in enumerate(zip(s.configs, s.horizons, s.origins)))


def _axis_edges(s: _Search, c: int) -> list[tuple[str, float, int, float]]:
    """(axis, value, direction, step) for each numeric axis where configuration ``c``
    sits at an edge of the values tried: direction +1 at the top, -1 at the bottom (both
    for a one-valued axis); ``step`` the geometric factor to the next value out."""
    out = []
    for key, value in s.configs[c].items():
        vals = s.axes.get((s.origins[c], key))
        if not vals:
            continue
        for direction, edge, near in ((1, vals[-1], vals[-2] if len(vals) > 1 else None),
                                      (-1, vals[0], vals[1] if len(vals) > 1 else None)):
            if value != edge:
                continue
            step = (edge / near) ** direction if near and edge else DEFAULT_STEP
            out.append((key, value, direction, max(step, 1.0 + 1e-9)))
    return out


def _next_value(key: str, value: float, direction: int, step: float) -> float | None:
    """The next value out from an edge (3 significant digits), None past a bound."""
    low, high = AXIS_BOUNDS.get(key, (0.0, math.inf))
    if value <= 0:
        return None  # a geometric axis cannot move out from 0
    nxt = min(float(f"{value * step ** direction:.3g}"), high)  # the bound itself is last
    return nxt if low < nxt <= high and nxt != value else None


def _extend(s: _Search, c: int, best_step: int, extend: int, base: int, cap: int
            ) -> list[int]:
    """Configurations to train next because configuration ``c`` was chosen at an edge:
    one per numeric axis at its edge (the value one geometric step out, up to ``extend``
    steps per axis and direction) and, when the chosen step count is at the horizon, the
    same configuration with its horizon doubled (up to ``extend`` doublings of the
    ``base`` horizon and at most ``cap``). Their indices."""
    new = []
    for key, value, direction, step in _axis_edges(s, c):
        counted = (s.origins[c], key, direction)
        nxt = _next_value(key, value, direction, step)
        if s.extended[counted] >= extend or nxt is None:
            continue
        if key not in TRAIN_GRID_KEYS:
            try:
                method_options(s.method, {**s.base, key: nxt})
            except ValueError:
                continue  # past what the option allows
        added = s.add({**s.configs[c], key: nxt}, s.origins[c], s.horizons[c])
        if added is not None:
            s.extended[counted] += 1
            new.append(added)
    h = s.horizons[c]
    if best_step > EDGE_FRACTION * h and h < min(cap, base << extend):
        added = s.add(dict(s.configs[c]), s.origins[c], min(2 * h, cap))
        if added is not None:
            new.append(added)
    return new


def _edges(s: _Search, c: int, best_step: int, extend: int, base: int, cap: int
           ) -> list[str]:
    """Where the final choice still sits at an edge, and why it could not move on."""
    out = []
    for key, value, direction, step in _axis_edges(s, c):
        side = "top" if direction > 0 else "bottom"
        why = ("a bound" if _next_value(key, value, direction, step) is None
               else "the extension limit" if s.extended[(s.origins[c], key, direction)]
               >= extend else "an option's limit")
        out.append(f"{key}={value:g} at the {side} of its grid ({why})")
    h = s.horizons[c]
    if best_step > EDGE_FRACTION * h:
        why = "the step cap" if h >= cap else "the extension limit"
        out.append(f"steps={best_step} at the horizon {h} ({why})")
    return out


Histories = list[list[History]]  # per configuration, per fold

#: Models in one ``fit_many`` call at most on the CPU under ``max_stack="auto"``.
CPU_MAX_STACK = 160


def _device_kind(device: Any) -> str:
    """``"cuda"``, ``"cpu"``, ...: the kind of ``device`` (``"auto"`` resolved here; a
    named device is not checked, so a CPU-only driver can plan for GPU workers)."""
    return resolve_device(device).type if device == "auto" else torch.device(device).type


def _max_stack(value: int | str | None, device: Any) -> int | None:
    if value == "auto":
        return None if _device_kind(device) == "cuda" else CPU_MAX_STACK
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                              or value < 1):
        raise ValueError(f"max_stack must be None, 'auto' or an integer >= 1, got {value!r}")
    return value  # type: ignore[return-value]

#: Trainer arguments a stacked cross-validation passes on to ``fit_many``.
_STACK_ARGS = ("device", "weight_decay", "optimizer", "loss", "lr_schedule")


def will_stack(model: nn.Module, stack: bool | str, kwargs: Mapping[str, Any]) -> bool:
    """Whether :func:`select` with ``stack`` and trainer keywords ``kwargs`` (``device``,
    ...) trains ``model``'s cross-validation as ``fit_many`` stacks."""
    extra = set(kwargs) - set(_STACK_ARGS) - {"allocated", "progress", "source"}
    if not stack or extra or not_vectorisable(model) is not None:
        return False
    if stack == "auto" and _device_kind(kwargs.get("device", "auto")) == "cpu":
        return not _grid_convolutions(model)
    return True


def _grid_convolutions(model: nn.Module) -> bool:
    """Whether ``model`` convolves over 2D/3D grids, in space or in Fourier space (a
    model whose class declares ``grid_convolution``, as an FNO with ``dim >= 2`` does):
    stacks of those ran slower than one by one on the CPU."""
    return any(isinstance(m, (nn.Conv2d, nn.Conv3d)) or getattr(m, "grid_convolution", False)
               for m in model.modules())


class _Halving:
    """Successive halving over one training round of a search: at rungs of the horizon
    (H / eta^k, as many as it takes to keep one configuration) the round's configurations
    still training are ranked by the lowest value so far of their mean fold curve, over
    the folds whose training size is fold 0's (the decision folds, which share epoch
    ends); the best ceil(alive / eta) train on. A rung is decided at the first epoch end
    at or after it, from the losses up to there only, so deciding inside a stack
    (:meth:`decide`) and replaying the rule on whole histories afterwards (:meth:`settle`)
    stop the same configurations at the same step. A stopped configuration is never
    chosen: with every fold it trails a survivor at its rung, and a survivor's best so
    far is at least as good as its own."""

    def __init__(self, s: _Search, which: list[int], eta: int, batch_size: int) -> None:
        self.s, self.which, self.eta = s, list(which), eta
        horizons = {s.horizons[c] for c in which}
        self.horizon = horizons.pop() if len(horizons) == 1 else 0
        sizes = [len(train) for train, _ in s.splits]
        self.decision = [f for f, n in enumerate(sizes) if n == sizes[0]]
        self.per_epoch = [-(-n // min(batch_size, n)) for n in sizes]
        count = len(self.which)
        self.rungs: list[int] = []
        if eta >= 2 and count >= 2 and self.horizon:
            levels = math.ceil(math.log(count) / math.log(eta) - 1e-9)
            self.rungs = sorted({self.epoch_end(0, self.horizon // eta**k)
                                 for k in range(1, levels + 1)} - {self.horizon})
        self.alive = list(range(count))
        self.cuts: dict[int, int] = {}  # position -> step of the decision that stopped it
        self.next = 0

    def epoch_end(self, fold: int, step: int) -> int:
        """The first epoch end of ``fold`` at or after ``step`` (at most the horizon)."""
        e = self.per_epoch[fold]
        return min(max(1, -(-step // e)) * e, self.horizon)

    def _decide_at(self, step: int, folds: Mapping[tuple[int, int], History]) -> None:
        grid = np.arange(1, step + 1)
        score = {}
        for pos in self.alive:
            curve = np.mean([_fold_curve(folds[(pos, f)], grid) for f in self.decision],
                            axis=0)
            score[pos] = math.inf if np.isnan(curve).any() else float(curve.min())
        ranked = sorted(self.alive, key=lambda p: (score[p], p))
        keep = -(-len(ranked) // self.eta)
        for pos in ranked[keep:]:
            self.cuts[pos] = step
        self.alive = sorted(ranked[:keep])

    def decide(self, done: int, folds: Mapping[tuple[int, int], History]) -> None:
        """Inside a stack, at an epoch end: decide every rung reached, if the stack holds
        the decision folds of every configuration still training."""
        while self.next < len(self.rungs) and self.rungs[self.next] <= done:
            if any((p, f) not in folds for p in self.alive for f in self.decision):
                return
            self._decide_at(self.rungs[self.next], folds)
            self.next += 1

    def stops(self, pos: int, fold: int, done: int) -> bool:
        """Whether the training of ``(pos, fold)`` stops at the epoch end ``done``."""
        return pos in self.cuts and done >= self.epoch_end(fold, self.cuts[pos])

    def settle(self, histories: Histories) -> Histories:
        """The round's histories with the rule replayed on them: a stopped configuration's
        folds cut at their first epoch end at or after its rung (what a stack that
        stopped them recorded); marks them in the search's ``pruned``."""
        self.alive, self.cuts, self.next = list(range(len(self.which))), {}, 0
        for rung in self.rungs:
            self._decide_at(rung, {(p, f): histories[p][f] for p in self.alive
                                   for f in self.decision})
        out = []
        for pos, hs in enumerate(histories):
            if pos in self.cuts:
                self.s.pruned.add(self.which[pos])
                hs = [_truncate(h, self.epoch_end(f, self.cuts[pos]), self.per_epoch[f])
                      for f, h in enumerate(hs)]
            out.append(hs)
        return out


def _truncate(h: History, step: int, per_epoch: int) -> History:
    """``h`` as if its training had stopped at the epoch end ``step``."""
    epochs = sum(1 for e in range(len(h.train_loss)) if (e + 1) * per_epoch <= step
                 or (e + 1 == len(h.train_loss) and h.steps <= step))
    vals = sum(1 for v in h.val_steps if v <= step)
    best = [i for i in range(vals) if math.isfinite(h.val_loss[i])]
    b = min(best, key=lambda i: h.val_loss[i]) if best else None
    return dataclasses.replace(
        h, train_loss=h.train_loss[:epochs], val_loss=h.val_loss[:vals],
        val_steps=h.val_steps[:vals], epochs_run=epochs, steps=min(h.steps, step),
        best_epoch=b, best_val=None if b is None else h.val_loss[b])


def _stack_pruner(group: list[_Job]) -> Any:
    """fit_many's ``prune`` for a stack of CV trainings: each search round's halving
    decides where it can and stops the trainings of the configurations it dropped."""
    mine = [(k, job.halving) for k, job in enumerate(group) if job.halving is not None
            and job.halving[0].rungs]
    if not mine:
        return None

    def prune(done: int, alive: Sequence[int], histories: Sequence[History]) -> list[int]:
        live = set(alive)
        rounds: dict[int, tuple[_Halving, dict[tuple[int, int], History]]] = {}
        for k, (halving, pos, f) in mine:
            folds = rounds.setdefault(id(halving), (halving, {}))[1]
            if k in live:
                folds[(pos, f)] = histories[k]
        for halving, folds in rounds.values():
            halving.decide(done, folds)
        return [k for k, (halving, pos, f) in mine
                if k in live and halving.stops(pos, f, done)]

    return prune


def _runs_one_by_one(s: _Search, which: Sequence[int], lr: float, batch_size: int
                     ) -> Histories:
    out = []
    for c in which:
        hs = []
        for train_idx, val_idx in s.splits:
            try:
                h = adapt(s.method, s.source_model, (s.x[train_idx], s.y[train_idx]),
                          val=(s.x[val_idx], s.y[val_idx]), restore_best=False,
                          **_resolve(s.configs[c], s.base, lr), steps=s.horizons[c],
                          batch_size=min(batch_size, len(train_idx)), seed=s.seed,
                          **_final_schedule(s.kwargs, s.horizons[c]), **s.kwargs).history
            except TrainingDiverged as err:
                # as in a stack: the fold's curve is NaN from the diverged epoch on
                # (_fold_curve) and its configuration is never chosen
                h = err.history
            hs.append(h)
        out.append(hs)
    return out


@dataclass
class _Job:
    """One model of a stack: its plan, data, learning rate, seed and step budget."""

    plan: TrainingPlan
    train: tuple[torch.Tensor, torch.Tensor]
    val: tuple[torch.Tensor, torch.Tensor] | None
    lr: float
    seed: int
    steps: int
    train_args: dict[str, Any]
    #: (the search round's halving, configuration position, fold), for CV trainings
    halving: tuple[Any, int, int] | None = None


def _stack_key(job: _Job, batch_size: int) -> tuple[Any, ...]:
    """Jobs with equal keys can share one ``fit_many`` call."""
    model = job.plan.model
    arch = getattr(model, "config", None)
    arch = repr(arch()) if callable(arch) else type(model).__qualname__
    shapes = tuple((n, tuple(p.shape), p.dtype) for n, p in model.named_parameters())
    data = tuple((tuple(t.shape[1:]), t.dtype) for t in job.train)
    args = tuple(sorted((k, repr(v)) for k, v in job.train_args.items()))
    # a schedule anneals over one horizon: per-model budgets share a stack only with one
    budget = job.steps if job.train_args.get("lr_schedule") is not None \
        and "schedule_steps" not in job.train_args else None
    return (arch, shapes, data, len(job.train[0]), min(batch_size, len(job.train[0])),
            args, budget)


def _chunks(members: list[int], limit: int | None) -> list[list[int]]:
    """``members`` in consecutive chunks of at most ``limit``, as even as possible."""
    if limit is None or len(members) <= limit:
        return [members]
    count = -(-len(members) // limit)
    size = -(-len(members) // count)
    return [members[i : i + size] for i in range(0, len(members), size)]


def _run_jobs(jobs: list[_Job], batch_size: int, restore_best: bool,
              max_stack: int | str | None) -> list[History]:
    """Every job trained, stacked by :func:`_stack_key` (one ``fit_many`` per group, or
    per chunk of at most ``max_stack`` models, see :func:`_max_stack`)."""
    groups: dict[tuple[Any, ...], list[int]] = {}
    for j, job in enumerate(jobs):
        groups.setdefault(_stack_key(job, batch_size), []).append(j)
    out: list[History] = [History()] * len(jobs)
    chunks = [(k, c) for k, g in groups.items() for c in _chunks(
        g, _max_stack(max_stack, jobs[g[0]].train_args.get("device", "auto")))]
    for key, members in chunks:
        for j, h in zip(members, _fit_stack([jobs[j] for j in members], key[4],
                                            restore_best)):
            out[j] = h
    return out


def _fit_stack(group: list[_Job], batch_size: int, restore_best: bool) -> list[History]:
    """One ``fit_many`` call for ``group``; a stack the device has no memory for is
    trained in halves (each model's training does not depend on its stack-mates, and a
    stacked ``fit_many`` writes nothing back before it ends)."""
    try:
        return fit_many(
            [g.plan.model for g in group], [g.train for g in group],
            update_masks=[g.plan.update_mask for g in group],
            penalties=[g.plan.penalty for g in group],
            val=[g.val for g in group] if any(g.val is not None for g in group) else None,
            lr=[g.lr for g in group], seeds=[g.seed for g in group],
            steps=[g.steps for g in group], batch_size=batch_size, restore_best=restore_best,
            on_divergence="keep", prune=_stack_pruner(group), **group[0].train_args)
    except OUT_OF_MEMORY:
        # models fit_many trains one by one (its fallback) need no less memory in halves
        if len(group) == 1 or not_vectorisable(group[0].plan.model) is not None:
            raise
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    half = len(group) // 2
    warnings.warn(f"a stack of {len(group)} models ran out of device memory: training it "
                  f"as stacks of {half} and {len(group) - half}", stacklevel=2)
    return (_fit_stack(group[:half], batch_size, restore_best)
            + _fit_stack(group[half:], batch_size, restore_best))


def _histories_stacked(work: list[tuple[_Search, list[int], _Halving]], lr: float,
                       batch_size: int, max_stack: int | str | None) -> dict[int, Histories]:
    """The same trainings as :func:`_runs_one_by_one` for every search's listed
    configurations, stacked: search id -> histories of those configurations, in order.
    Each search's successive halving stops configurations inside the stacks."""
    jobs: list[_Job] = []
    where: list[tuple[int, int, int]] = []  # (search, position in its list, fold)
    for si, (s, which, _) in enumerate(work):
        train_args = s.train_args()
        for pos, c in enumerate(which):
            resolved = _resolve(s.configs[c], s.base, lr)
            opts = method_options(s.method, resolved["options"])
            for f, (train_idx, val_idx) in enumerate(s.splits):
                plan = training_plan(s.method, s.source_model, opts, seed=s.seed,
                                     allocated=s.kwargs.get("allocated"))
                jobs.append(_Job(plan, (s.x[train_idx], s.y[train_idx]),
                                 (s.x[val_idx], s.y[val_idx]), resolved["lr"], s.seed,
                                 s.horizons[c],
                                 {**train_args, **_final_schedule(s.kwargs, s.horizons[c])}))
                where.append((si, pos, f))
    for job, (si, pos, f) in zip(jobs, where):
        job.halving = (work[si][2], pos, f)
    histories = _run_jobs(jobs, batch_size, restore_best=False, max_stack=max_stack)
    out: dict[int, Histories] = {
        id(s): [[History()] * len(s.splits) for _ in which] for s, which, _ in work}
    for (si, pos, f), h in zip(where, histories):
        out[id(work[si][0])][pos][f] = h
    return out


def _final_schedule(train_args: Mapping[str, Any], max_steps: int) -> dict[str, Any]:
    """A final retrain with a learning-rate schedule follows the folds' path (annealed
    over ``max_steps``) and stops at the chosen step: the path the choice was made on."""
    return {"schedule_steps": max_steps} if train_args.get("lr_schedule") else {}


def _final_val(s: _Search, final: str) -> dict[str, Any]:
    """The final retrain's validation data: its own samples under ``final="best"`` (the
    epoch with the lowest loss on them is kept), none under ``"last"``."""
    return {"val": (s.x, s.y)} if final == "best" else {}


def _finals_stacked(searches: dict[int, _Search], finals: dict[int, dict[str, Any]],
                    choices: dict[int, Choice], batch_size: int, max_stack: int | str | None,
                    final: str = "last") -> dict[int, TransferResult]:
    """The final retrains of stacked searches (all n samples, the chosen configuration
    and step count), stacked; the same trainings :func:`adapt` would run."""
    jobs, order = [], []
    for i, s in searches.items():
        opts = method_options(s.method, finals[i]["options"])
        plan = training_plan(s.method, s.source_model, opts, seed=s.seed,
                             allocated=s.kwargs.get("allocated"), final=True,
                             device=s.kwargs.get("device", "auto"))
        horizon = s.horizons[choices[i][0]]
        jobs.append(_Job(plan, (s.x, s.y), _final_val(s, final).get("val"), finals[i]["lr"],
                         s.seed, choices[i][1],
                         {**s.train_args(), **_final_schedule(s.kwargs, horizon)}))
        order.append((i, opts))
    out = {}
    for (i, opts), job, h in zip(order, jobs, _run_jobs(jobs, batch_size, restore_best=True,
                                                        max_stack=max_stack)):
        s = searches[i]
        bad = [v for v in h.train_loss if not math.isfinite(v)]
        if bad:  # as fit() refuses a diverged training
            raise TrainingDiverged(f"{s.method}: the final training diverged (loss "
                                   f"{bad[0]}); lower lr", h)
        res = job.plan.result(h)
        res.method = s.method
        res.extra["options"] = options_record(opts, res.masks)
        out[i] = res
    return out


def _resolve(config: Mapping[str, Any], base: Mapping[str, Any], lr: float) -> dict[str, Any]:
    """adapt() keywords for one grid configuration: options plus the training keys."""
    train = {k: config[k] for k in TRAIN_GRID_KEYS if k in config}
    options = {**base, **{k: v for k, v in config.items() if k not in TRAIN_GRID_KEYS}}
    return {"options": options, "lr": train.get("lr", lr)}
