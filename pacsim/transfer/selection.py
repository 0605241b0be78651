"""Target-only hyper-parameter selection for every transfer method: :func:`select`,
configured by :class:`SelectionConfig` (``"cv"`` or ``"fixed"``).

K-fold cross-validation on the ``n`` target samples (scikit-learn's ``KFold``): for each
configuration of the method's grid (scikit-learn's ``ParameterGrid``; the learning rate
and the method's own options) every fold trains once for ``max_steps`` optimiser steps
and records its validation loss after every epoch. The step count is read off the mean
fold curve, jointly with the configuration, and the method is then retrained on all
``n`` samples with what was chosen. Only the ``target`` samples passed in are ever used:
test data cannot influence the choice.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from sklearn.model_selection import KFold, ParameterGrid
from torch import nn

from ..data.batches import as_tensor
from ..device import resolve_device
from ..many import fit_many, not_vectorisable
from ..train import Data, History
from .methods import TransferResult, adapt, allocated_model, training_plan
from .options import DEFAULT_GRIDS, TRAIN_GRID_KEYS, PACOptions, check_grid, method_options

SELECTION_MODES = ("cv", "fixed")


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

    @classmethod
    def from_value(cls, raw: str | Mapping[str, Any] | None) -> SelectionConfig:
        """From a suite's ``selection = "cv"`` or ``selection = {mode=..., folds=...}``."""
        if raw is None:
            return cls()
        if isinstance(raw, str):
            return cls(mode=raw)
        if not isinstance(raw, Mapping):
            raise ValueError(f"selection must be a string or a table, got {raw!r}")
        unknown = sorted(set(raw) - {"mode", "folds", "max_steps"})
        if unknown:
            raise ValueError(f"selection has no key {unknown[0]!r} "
                             "(its keys: mode, folds, max_steps)")
        return cls(**dict(raw))

    def to_dict(self) -> dict[str, Any]:
        """JSON-able copy."""
        return asdict(self)


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
    idx = np.searchsorted(np.asarray(val_steps), grid, side="right") - 1
    losses = np.asarray(val_loss, dtype=np.float64)
    return np.where(idx >= 0, losses[np.clip(idx, 0, None)], np.inf)


def _thin(steps: np.ndarray, loss: np.ndarray, points: int = CURVE_POINTS) -> list[list[float]]:
    keep = np.unique(np.linspace(0, len(steps) - 1, min(points, len(steps))).round().astype(int))
    return [[int(steps[i]), float(loss[i])] for i in keep]


def _config_key(config: Mapping[str, Any]) -> str:
    return ",".join(f"{k}={config[k]}" for k in sorted(config)) or "default"


def select(method: str, source_model: nn.Module, target: Data, *,
           selection: SelectionConfig | None = None, steps: int,
           grid: Mapping[str, list[Any]] | None = None,
           options: Mapping[str, Any] | None = None, lr: float = 1e-3, batch_size: int = 32,
           seed: int = 0, stack: bool | str = False, **kwargs: Any) -> TransferResult:
    """Choose ``method``'s hyper-parameters on ``target`` only, then transfer with them.

    ``selection``: :class:`SelectionConfig` (default: 5-fold CV). ``steps``: the fixed
    budget; with CV the step count is chosen from 1 to ``selection.max_steps`` (default
    ``3 * steps``). ``grid``: option -> candidate values (default
    :data:`~pacsim.transfer.options.DEFAULT_GRIDS`); ``options``: the method's other
    options, fixed. ``batch_size`` is capped at the training-set size. Other keywords go
    to :func:`adapt` (``source``, ``allocated``, ``device``, ``weight_decay``, ...).
    The result's ``selection`` says what was chosen, the CV loss and the mean curves.

    ``stack=True`` trains the folds x configurations of the cross-validation as stacks of
    models (:func:`pacsim.train.fit_many`, one stack per fold size) instead of one by one:
    the same trainings (same batches, masks and pulls) up to float rounding, several
    times faster for small models; models ``fit_many`` cannot stack (BatchNorm, dropout,
    complex weights) and trainer options it does not take train one by one.
    ``stack="auto"`` stacks where it was measured faster: everywhere on CUDA, and on the
    CPU for models without 2D/3D convolutions (a stack of 2D CNNs ran 0.86x as fast on
    2 CPU cores; MLPs 1.4-2.6x, 1D CNNs 1.5x as fast, whole benchmark cells).
    """
    selection = selection or SelectionConfig()
    x, y = _as_pair(target, "target")
    n = x.shape[0]
    base = dict(options or {})
    method_options(method, base)  # refuse a bad option before any training
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if selection.mode == "fixed":
        res = adapt(method, source_model, (x, y), options=base, steps=steps, lr=lr,
                    batch_size=min(batch_size, n), seed=seed, **kwargs)
        res.selection = {"mode": "fixed", "chosen": {}, "steps": res.history.steps}
        return res

    opts = method_options(method, base)
    if isinstance(opts, PACOptions) and kwargs.get("allocated") is None:
        # one allocate for every fold and configuration (it never sees target data)
        src = kwargs.pop("source", None)
        if src is None:
            raise ValueError(f"method {method!r} needs the source data: pass source=(X, Y) "
                             "(or allocated=(model, masks) from an earlier allocate)")
        alloc_model, alloc_masks, _ = allocated_model(
            source_model, src, opts, source_val=kwargs.pop("source_val", None),
            allocate_kwargs=kwargs.pop("allocate_kwargs", None), lr=lr, steps=steps,
            batch_size=batch_size, seed=seed,
            **{k: v for k, v in kwargs.items() if k in ("device", "weight_decay",
                                                          "optimizer", "progress")})
        kwargs["allocated"] = (alloc_model, alloc_masks)
    folds = min(selection.folds, n)
    if folds < 2:
        raise ValueError(f"cross-validation needs at least 2 target samples, got {n}")
    max_steps = selection.max_steps or 3 * steps
    space = check_grid(method, DEFAULT_GRIDS[method] if grid is None else grid)
    configs = list(ParameterGrid(space)) if space else [{}]
    splits = list(KFold(folds, shuffle=True, random_state=seed).split(np.arange(n)))
    grid_steps = np.arange(1, max_steps + 1)
    stacked = _stackable(source_model, kwargs, stack)
    runs = _runs_stacked if stacked else _runs_one_by_one
    histories = runs(method, source_model, x, y, configs, splits, base, lr, max_steps,
                     batch_size, seed, kwargs)
    curves = {_config_key(c): np.mean([_step_curve(h.val_steps, h.val_loss, grid_steps)
                                       for h in hs], axis=0)
              for c, hs in zip(configs, histories)}
    best_key, best_config, best_step, best_loss = None, configs[0], 1, math.inf
    for config in configs:  # first minimum wins: grid order, then fewest steps
        key = _config_key(config)
        i = int(np.argmin(curves[key]))
        if curves[key][i] < best_loss:
            best_key, best_config, best_step, best_loss = key, config, int(grid_steps[i]), \
                float(curves[key][i])
    if best_key is None:
        raise ValueError("cross-validation produced no finite validation loss")
    res = adapt(method, source_model, (x, y), **_resolve(best_config, base, lr),
                steps=best_step, batch_size=min(batch_size, n), seed=seed, **kwargs)
    res.selection = {
        "mode": "cv", "folds": folds, "max_steps": max_steps, "stacked": stacked,
        "chosen": dict(best_config), "steps": best_step, "cv_loss": best_loss,
        "curves": {k: _thin(grid_steps, c) for k, c in curves.items()},
    }
    return res


Histories = list[list[History]]  # per configuration, per fold

#: Trainer arguments a stacked cross-validation passes on to ``fit_many``.
_STACK_ARGS = ("device", "weight_decay", "optimizer", "loss", "lr_schedule")


def _stackable(model: nn.Module, kwargs: Mapping[str, Any], stack: bool | str) -> bool:
    if stack not in (True, False, "auto"):
        raise ValueError(f"stack must be True, False or 'auto', got {stack!r}")
    extra = set(kwargs) - set(_STACK_ARGS) - {"allocated", "progress", "source"}
    if not stack or extra or not_vectorisable(model) is not None:
        return False
    if stack == "auto" and resolve_device(kwargs.get("device", "auto")).type == "cpu":
        return not any(isinstance(m, (nn.Conv2d, nn.Conv3d)) for m in model.modules())
    return True


def _runs_one_by_one(method: str, source_model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                     configs: list[dict[str, Any]], splits: list[Any], base: dict[str, Any],
                     lr: float, max_steps: int, batch_size: int, seed: int,
                     kwargs: dict[str, Any]) -> Histories:
    out = []
    for config in configs:
        hs = []
        for train_idx, val_idx in splits:
            res = adapt(method, source_model, (x[train_idx], y[train_idx]),
                        val=(x[val_idx], y[val_idx]), restore_best=False,
                        **_resolve(config, base, lr), steps=max_steps,
                        batch_size=min(batch_size, len(train_idx)), seed=seed, **kwargs)
            hs.append(res.history)
        out.append(hs)
    return out


def _runs_stacked(method: str, source_model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                  configs: list[dict[str, Any]], splits: list[Any], base: dict[str, Any],
                  lr: float, max_steps: int, batch_size: int, seed: int,
                  kwargs: dict[str, Any]) -> Histories:
    """The same trainings as :func:`_runs_one_by_one`, as one ``fit_many`` per fold size."""
    jobs = []  # (config index, fold index, plan, lr)
    for c, config in enumerate(configs):
        resolved = _resolve(config, base, lr)
        opts = method_options(method, resolved["options"])
        for f in range(len(splits)):
            plan = training_plan(method, source_model, opts, seed=seed,
                                 allocated=kwargs.get("allocated"))
            jobs.append((c, f, plan, resolved["lr"]))
    out: Histories = [[History()] * len(splits) for _ in configs]
    sizes = sorted({len(splits[f][0]) for _, f, _, _ in jobs})
    train_args = {k: kwargs[k] for k in _STACK_ARGS if k in kwargs}
    for size in sizes:
        group = [j for j in jobs if len(splits[j[1]][0]) == size]
        histories = fit_many(
            [p.model for _, _, p, _ in group],
            [(x[splits[f][0]], y[splits[f][0]]) for _, f, _, _ in group],
            update_masks=[p.update_mask for _, _, p, _ in group],
            penalties=[p.penalty for _, _, p, _ in group],
            val=[(x[splits[f][1]], y[splits[f][1]]) for _, f, _, _ in group],
            lr=[r for _, _, _, r in group], seeds=[seed] * len(group), steps=max_steps,
            batch_size=min(batch_size, size), restore_best=False, **train_args)
        for (c, f, _, _), h in zip(group, histories):
            out[c][f] = h
    return out


def _resolve(config: Mapping[str, Any], base: Mapping[str, Any], lr: float) -> dict[str, Any]:
    """adapt() keywords for one grid configuration: options plus the training keys."""
    train = {k: config[k] for k in TRAIN_GRID_KEYS if k in config}
    options = {**base, **{k: v for k, v in config.items() if k not in TRAIN_GRID_KEYS}}
    return {"options": options, "lr": train.get("lr", lr)}
