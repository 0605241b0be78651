"""Many small models of one architecture trained at once: :func:`fit_many`.

A benchmark sweep is thousands of small, independent trainings of identical
architectures; on a GPU each of them alone is a few dozen tiny kernel launches. Here K
models become one stack: their trainable parameters live side by side in one flat
``(K, P)`` tensor, one ``torch.func.vmap(grad_and_value(...))`` call over
``functional_call`` gives all K losses and gradients, and one Adam/AdamW/SGD update over
that tensor moves all K models, each with its own learning rate (a ``(K, 1)`` factor),
data, shuffling seed, update mask and L2 pull.

Exactness is enforced as in :mod:`pacsim.exact`, by the same idea and the same classes:
every model's ``update_mask`` and ``penalty`` are first resolved and checked by one
:class:`~pacsim.exact.UpdateMask` and one :class:`~pacsim.exact.L2Pull` per model, exactly
as :func:`pacsim.train.fit` does, and then stacked: :class:`StackedUpdateMask` restores
every frozen entry from its snapshot with one ``torch.where`` after each optimiser step
(``UpdateMask.after_step`` over K models), and :class:`StackedL2Pull` adds
``2 w_k (p - anchor_k)`` to the stacked gradient (``L2Pull.apply`` over K models). Each
step runs them in ``fit``'s order through
:class:`~pacsim.training.core.StackedMaskedStep`. So per model, every frozen entry keeps
its exact bits and every PAC invariant holds.

The optimiser reproduces ``torch.optim``'s single-tensor CPU arithmetic (learning rate
times bias correction computed in double and rounded once, as torch passes it to the
kernel), so with the same gradients the updates match ``fit``'s bit for bit; the batched
kernels of ``vmap`` round differently from one model's, so results agree with ``fit``
closely rather than bitwise. The loop has no host synchronisation per step (per-step
factors are precomputed once an epoch; losses are read once an epoch, as ``fit`` does).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, grad_and_value, vmap

from .data.batches import _TensorBatches, batches
from .device import resolve_device
from .exact import L2Penalty, L2Pull, MaskSpec, UpdateMask
from .training.config import FIT_ONLY, TrainConfig, resolve_config
from .training.core import (
    History,
    StackedMaskedStep,
    TrainingDiverged,
    check_fit_options,
    check_float32,
    check_output_shape,
    make_loss,
    schedule_horizon,
)
from .training.single import fit

Pair = tuple[Any, Any]
_BETAS = (0.9, 0.999)
_EPS = 1e-8
_MOMENTUM = 0.9
#: torch.OutOfMemoryError (torch >= 2.5; before, only the CUDA one existed).
OUT_OF_MEMORY = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)
_DEFAULTS = TrainConfig()


# ----------------------------------------------------------------------------- layout


@dataclass(frozen=True)
class _Slot:
    name: str
    shape: torch.Size
    offset: int
    size: int
    complex: bool  # stored as (real, imaginary) pairs, 2 columns an entry


def _real_entries(t: torch.Tensor) -> torch.Tensor:
    """``t`` as the flat real columns of its slot: a complex tensor as its (real,
    imaginary) pairs."""
    return torch.view_as_real(t).reshape(-1) if t.is_complex() else t.reshape(-1)


class _Layout:
    """Where each parameter that any model trains lives in the flat real ``(K, P)``
    tensor. A complex parameter (an FNO's spectral weights) takes two columns an entry,
    its real and imaginary parts: ``torch.optim`` updates complex parameters through the
    same real view, so the stacked optimiser's arithmetic is unchanged."""

    def __init__(self, model: nn.Module, names: list[str]) -> None:
        params = dict(model.named_parameters())
        self.slots: list[_Slot] = []
        offset = 0
        for name in names:
            p = params[name]
            size = p.numel() * (2 if p.is_complex() else 1)
            self.slots.append(_Slot(name, p.shape, offset, size, p.is_complex()))
            offset += size
        self.width = offset
        self.sizes = [s.size for s in self.slots]

    def flat(self, models: Sequence[nn.Module]) -> torch.Tensor:
        """The stacked flat parameters ``(K, P)`` of ``models`` (a copy)."""
        rows = []
        for m in models:
            params = dict(m.named_parameters())
            rows.append(torch.cat([_real_entries(params[s.name].detach())
                                   for s in self.slots]))
        return torch.stack(rows)

    def unflatten(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """One model's parameters from its flat vector (last axis), by name: views, and
        for a complex parameter a complex tensor built from its column pairs."""
        lead = flat.shape[:-1]
        chunks = flat.split(self.sizes, dim=-1)
        out = {}
        for s, c in zip(self.slots, chunks):
            if s.complex:
                pairs = c.view(*lead, *s.shape, 2)
                out[s.name] = torch.complex(pairs[..., 0], pairs[..., 1])
            else:
                out[s.name] = c.view(*lead, *s.shape)
        return out

    def write_back(self, models: Sequence[nn.Module], flat: torch.Tensor) -> None:
        """Copy each model's row of ``flat`` into its parameters."""
        with torch.no_grad():
            for k, m in enumerate(models):
                params = dict(m.named_parameters())
                for name, value in self.unflatten(flat[k]).items():
                    params[name].copy_(value)


def _resolve_mask(model: nn.Module, spec: MaskSpec | None, device: torch.device
                  ) -> dict[str, bool | torch.Tensor]:
    """Name -> True / False / bool tensor, resolved and checked by :class:`UpdateMask`."""
    um = UpdateMask(model, spec, device)
    names = {id(p): n for n, p in model.named_parameters()}
    out: dict[str, bool | torch.Tensor] = {names[id(p)]: True for p in um.full}
    out.update({names[id(p)]: False for p in um.frozen})
    out.update({names[id(pp.param)]: pp.keep for pp in um.partial})
    return out


# ----------------------------------------------------------------------------- exactness


class StackedUpdateMask:
    """:class:`pacsim.exact.UpdateMask` for a stack of K models in one flat tensor.

    ``keeps[k]`` is model k's resolved mask (name -> True, False or a bool tensor, as
    :class:`UpdateMask` classifies it). Columns that every model trains are left alone;
    the rest (laid out first by :func:`fit_many`, ``restore_width`` columns) are restored
    from a snapshot after every step: one in-place ``torch.where``, the same operation as
    ``UpdateMask.after_step``. A tensor one model freezes and another trains is simply an
    all-False slice for the first.
    """

    def __init__(self, keeps: Sequence[dict[str, bool | torch.Tensor]], layout: _Layout,
                 flat: torch.Tensor) -> None:
        restore = [s for s in layout.slots
                   if any(keep[s.name] is not True for keep in keeps)]
        self.width = sum(s.size for s in restore)
        if self.width == 0:
            self.keep = self.snapshot = None
            return
        rows = []
        for keep in keeps:
            parts = []
            for s in restore:
                entry = keep[s.name]
                if isinstance(entry, torch.Tensor):
                    entry = entry.to(flat.device)
                    if s.complex:  # one mask entry for the real and imaginary columns
                        entry = entry.unsqueeze(-1).expand(*entry.shape, 2)
                    parts.append(entry.reshape(-1))
                else:
                    parts.append(torch.full((s.size,), bool(entry), device=flat.device))
            rows.append(torch.cat(parts))
        self.keep = torch.stack(rows)
        self.snapshot = flat[:, : self.width].clone()

    def keep_rows(self, at: torch.Tensor) -> None:
        """Only the models at rows ``at`` train on."""
        if self.keep is not None and self.snapshot is not None:
            self.keep, self.snapshot = self.keep[at], self.snapshot[at]

    @torch.no_grad()
    def after_step(self, flat: torch.Tensor) -> None:
        """Put every frozen entry of every model back to its exact snapshot value."""
        if self.keep is not None:
            seg = flat[:, : self.width]
            torch.where(self.keep, seg, self.snapshot, out=seg)


class StackedL2Pull:
    """:class:`pacsim.exact.L2Pull` for a stack: ``grad += C * p - A`` on flat tensors.

    Built from one :class:`L2Pull` per model (which checks names and shapes and holds the
    precomputed ``2 w anchor``): ``C[k]`` is ``2 w_k`` on the columns model k pulls and 0
    elsewhere, ``A[k]`` is ``2 w_k anchor_k`` on its anchored columns. The arithmetic per
    entry is ``L2Pull.apply``'s (add ``2 w p``, then subtract ``2 w anchor``); a zero
    coefficient adds exactly nothing.
    """

    def __init__(self, pulls: Sequence[L2Pull | None], models: Sequence[nn.Module],
                 layout: _Layout, flat: torch.Tensor) -> None:
        self.coef: torch.Tensor | None = None
        self.anchor: torch.Tensor | None = None
        offsets = {s.name: s for s in layout.slots}
        for k, (pull, model) in enumerate(zip(pulls, models)):
            if pull is None:
                continue
            names = {id(p): n for n, p in model.named_parameters()}
            if self.coef is None:
                self.coef = torch.zeros_like(flat)
            for p in pull.to_zero + pull.to_anchor:
                s = offsets[names[id(p)]]
                self.coef[k, s.offset : s.offset + s.size] = pull.scale
            for p, scaled in zip(pull.to_anchor, pull.scaled_anchors):
                if self.anchor is None:
                    self.anchor = torch.zeros_like(flat)
                s = offsets[names[id(p)]]
                self.anchor[k, s.offset : s.offset + s.size] = _real_entries(scaled)

    def keep_rows(self, at: torch.Tensor) -> None:
        """Only the models at rows ``at`` train on."""
        if self.coef is not None:
            self.coef = self.coef[at]
        if self.anchor is not None:
            self.anchor = self.anchor[at]

    def apply(self, grad: torch.Tensor, flat: torch.Tensor) -> None:
        """Add the pulls to the stacked gradient in place."""
        if self.coef is not None:
            grad.addcmul_(self.coef, flat)
        if self.anchor is not None:
            grad.sub_(self.anchor)


# ----------------------------------------------------------------------------- optimiser


class _StackedOptimizer:
    """Adam, AdamW or SGD (momentum 0.9) on one flat ``(K, P)`` tensor, with per-model
    learning rates, following ``torch.optim``'s single-tensor arithmetic."""

    def __init__(self, name: str, flat: torch.Tensor, weight_decay: float) -> None:
        self.name = name
        self.wd = weight_decay
        self.exp_avg = torch.zeros_like(flat)
        self.exp_avg_sq = torch.zeros_like(flat) if name != "sgd" else None
        # Workspaces: large fresh CPU allocations cost page faults on every step.
        self.denom = torch.empty_like(flat) if name != "sgd" else None
        self.scaled = torch.empty_like(flat) if name != "sgd" else None
        self.step_count = 0

    def keep_rows(self, rows: Sequence[int]) -> None:
        """Only the models at ``rows`` train on: their moments, smaller workspaces."""
        at = torch.tensor(list(rows), device=self.exp_avg.device)
        self.exp_avg = self.exp_avg[at]
        if self.exp_avg_sq is not None:
            self.exp_avg_sq = self.exp_avg_sq[at]
            self.denom = torch.empty_like(self.exp_avg)
            self.scaled = torch.empty_like(self.exp_avg)

    def factors(self, lrs: torch.Tensor, first_step: int) -> dict[str, torch.Tensor]:
        """Per-step, per-model factors for steps ``first_step, first_step + 1, ...`` from
        their learning rates ``lrs`` (S, K) in double, rounded to float32 once, exactly as
        torch rounds a Python scalar for its kernels."""
        steps = torch.arange(first_step, first_step + lrs.shape[0], dtype=torch.float64)
        out: dict[str, torch.Tensor] = {}
        if self.name == "sgd":
            out["neg_lr"] = (-lrs).float()
        else:
            bc1 = 1 - _BETAS[0] ** steps
            out["neg_step"] = (-(lrs / bc1[:, None])).float()
            if self.name == "adamw" and self.wd != 0:
                out["decay"] = (1 - lrs * self.wd).float()
        return out

    @torch.no_grad()
    def step(self, flat: torch.Tensor, grad: torch.Tensor, f: dict[str, torch.Tensor],
             i: int) -> None:
        """One update of every model (``grad`` is used as scratch); ``f`` from
        :meth:`factors`, ``i`` the row."""
        self.step_count += 1
        if self.name == "sgd":
            if self.wd != 0:
                grad.add_(flat, alpha=self.wd)
            if self.step_count == 1:
                self.exp_avg.copy_(grad)
            else:
                self.exp_avg.mul_(_MOMENTUM).add_(grad)
            flat.addcmul_(self.exp_avg, f["neg_lr"][i][:, None])
            return
        if self.wd != 0:
            if self.name == "adamw":
                flat.mul_(f["decay"][i][:, None])
            else:
                grad.add_(flat, alpha=self.wd)
        assert self.exp_avg_sq is not None and self.denom is not None and self.scaled is not None
        beta1, beta2 = _BETAS
        self.exp_avg.lerp_(grad, 1 - beta1)
        self.exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        bc2_sqrt = (1 - beta2**self.step_count) ** 0.5
        torch.sqrt(self.exp_avg_sq, out=self.denom).div_(bc2_sqrt).add_(_EPS)
        torch.mul(self.exp_avg, f["neg_step"][i][:, None], out=self.scaled)
        flat.addcdiv_(self.scaled, self.denom)


def _lr_table(lrs: Sequence[float], total_steps: int, schedule: str | None
              ) -> Callable[[int, int], torch.Tensor]:
    """``table(first, count)``: the learning rate of every model at steps
    ``first .. first + count - 1`` (0-based), as ``fit``'s optimiser and scheduler set them."""
    base = torch.tensor(list(lrs), dtype=torch.float64)
    if schedule is None:
        return lambda first, count: base.expand(count, -1)
    dummy = torch.optim.SGD([{"params": [torch.zeros(1)], "lr": lr} for lr in lrs])
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(dummy, T_max=total_steps)
    state = {"next": 0}

    def table(first: int, count: int) -> torch.Tensor:
        assert first == state["next"], "learning rates are read in order"
        rows = []
        for _ in range(count):
            rows.append([g["lr"] for g in dummy.param_groups])
            dummy.step()
            sched.step()
        state["next"] = first + count
        return torch.tensor(rows, dtype=torch.float64)

    return table


# ----------------------------------------------------------------------------- stack


@dataclass
class _ValGroup:
    """Validation sets of one shape, stacked: evaluated in one vmapped pass."""

    ks: list[int]
    rows: torch.Tensor | None  # rows of the stack, None when every model is in the group
    x: torch.Tensor
    y: torch.Tensor


def _val_groups(val_b: Sequence[_TensorBatches | None], device: torch.device
                ) -> list[_ValGroup]:
    by_shape: dict[tuple[Any, ...], list[int]] = {}
    for k, b in enumerate(val_b):
        if b is not None:
            by_shape.setdefault((tuple(b.x.shape), tuple(b.y.shape)), []).append(k)
    groups = []
    for ks in by_shape.values():
        items = [b for k in ks if (b := val_b[k]) is not None]
        rows = None if len(ks) == len(val_b) else torch.tensor(ks, device=device)
        groups.append(_ValGroup(ks, rows, torch.stack([b.x for b in items]),
                                torch.stack([b.y for b in items])))
    return groups


class _Stack:
    """K models as one: trainable parameters in a flat ``(K, P)`` tensor (columns that
    some model partly freezes first), the rest stacked per name, one meta-device copy of
    the architecture for ``functional_call``, and the stacked mask and pull."""

    def __init__(self, models: Sequence[nn.Module],
                 keeps: Sequence[dict[str, bool | torch.Tensor]],
                 pulls: Sequence[L2Pull | None], loss_fn: Callable[..., torch.Tensor]) -> None:
        params = [dict(m.named_parameters()) for m in models]
        names = list(params[0])
        live = [n for n in names if any(keep[n] is not False for keep in keeps)]
        live.sort(key=lambda n: all(keep[n] is True for keep in keeps))  # stable
        self.layout = _Layout(models[0], live)
        self.flat = self.layout.flat(models)
        self.fixed = {n: torch.stack([p[n].detach() for p in params])
                      for n in names if n not in set(live)}
        self.buffers = {n: torch.stack([dict(m.named_buffers())[n] for m in models])
                        for n, _ in models[0].named_buffers()}
        self.mask = StackedUpdateMask(keeps, self.layout, self.flat)
        self.pull = StackedL2Pull(pulls, models, self.layout, self.flat)
        base = copy.deepcopy(models[0]).to("meta")
        layout = self.layout

        def one_loss(theta: torch.Tensor, fixed: dict[str, torch.Tensor],
                     buffers: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor
                     ) -> torch.Tensor:
            pred = functional_call(base, (layout.unflatten(theta), fixed, buffers), (x,))
            return loss_fn(pred.float(), y)

        self.base = base.train()
        self._grads = vmap(grad_and_value(one_loss))
        self._losses = vmap(one_loss)

    def keep_rows(self, rows: Sequence[int]) -> None:
        """Only the models at ``rows`` train on (successive halving stopped the rest)."""
        at = torch.tensor(list(rows), device=self.flat.device)
        self.flat = self.flat[at]
        self.fixed = {n: t[at] for n, t in self.fixed.items()}
        self.buffers = {n: t[at] for n, t in self.buffers.items()}
        self.mask.keep_rows(at)
        self.pull.keep_rows(at)

    def grads_and_losses(self, x: torch.Tensor, y: torch.Tensor
                         ) -> tuple[torch.Tensor, torch.Tensor]:
        """Flat gradients ``(K, P)`` and losses ``(K,)`` of a stacked batch ``(K, B, ...)``."""
        return self._grads(self.flat, self.fixed, self.buffers, x, y)

    @torch.no_grad()
    def val_losses(self, groups: Sequence[_ValGroup], batch_size: int,
                   flat: torch.Tensor | None = None, members: Sequence[int] | None = None
                   ) -> dict[int, float]:
        """Mean validation loss of every model (of ``members``, default all) that has a
        validation set, as ``fit`` computes it (eval mode, batches of ``batch_size`` in
        order, float64 sums), at parameters ``flat`` (default: the stack's)."""
        out: dict[int, float] = {}
        if not groups:
            return out
        flat = self.flat if flat is None else flat
        self.base.eval()
        for g in groups:
            theta = _rows(flat, g.rows)
            fixed = {name: _rows(t, g.rows) for name, t in self.fixed.items()}
            buffers = {name: _rows(t, g.rows) for name, t in self.buffers.items()}
            total = torch.zeros(len(g.ks), dtype=torch.float64, device=self.flat.device)
            n = g.x.shape[1]
            for i in range(0, n, batch_size):
                xb, yb = g.x[:, i : i + batch_size], g.y[:, i : i + batch_size]
                total += self._losses(theta, fixed, buffers, xb, yb).double() * xb.shape[1]
            out.update({k: v / n for k, v in zip(g.ks, total.tolist())})
        self.base.train()
        if members is not None:
            keep = set(members)
            out = {k: v for k, v in out.items() if k in keep}
        return out


def _rows(t: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
    return t if rows is None else t.index_select(0, rows)


# ----------------------------------------------------------------------------- checks


def not_vectorisable(model: nn.Module) -> str | None:
    """Why ``model`` cannot train inside a stack, or None."""
    for name, m in model.named_modules():
        if isinstance(m, (nn.modules.batchnorm._BatchNorm,
                          nn.modules.instancenorm._InstanceNorm)) and m.track_running_stats:
            return (f"{name} ({type(m).__name__}) updates its running statistics in train "
                    f"mode")
        if isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0:
            return (f"{name} ({type(m).__name__}) draws random numbers, which a stack "
                    f"cannot draw per model as fit does")
    return None  # other precisions than float32 (complex64) are refused by check_float32


def _probe(model: nn.Module, x: torch.Tensor, y: torch.Tensor, names: list[str],
           same_shapes: bool) -> set[str]:
    """One forward and backward of ``model`` on the sample ``(x, y)`` before a stack
    trains: with ``same_shapes`` (a built-in loss), outputs and targets must have one
    shape, as :func:`pacsim.train.fit` checks (no silent broadcasting); returns the
    parameters among ``names`` the forward pass does not use. In a stack they would get
    a zero gradient (and weight decay); ``fit`` gets none for them, and its optimiser
    leaves them alone."""
    params = dict(model.named_parameters())
    probe = {n: params[n].detach().clone().requires_grad_() for n in names}
    with torch.enable_grad():
        out = functional_call(model, probe, (x,))
    if same_shapes:
        check_output_shape(out, y)
    if not names:
        return set()
    if not out.requires_grad:
        return set(names)
    grads = torch.autograd.grad(out.float().sum(), list(probe.values()), allow_unused=True)
    return {n for n, g in zip(probe, grads) if g is None}


def _signature(model: nn.Module) -> list[tuple[str, str, tuple[int, ...], torch.dtype]]:
    sig = [("param", n, tuple(p.shape), p.dtype) for n, p in model.named_parameters()]
    sig += [("buffer", n, tuple(b.shape), b.dtype) for n, b in model.named_buffers()]
    return sig


def _check_architectures(models: Sequence[nn.Module]) -> None:
    first = models[0]
    config = getattr(first, "config", None)
    sig0 = _signature(first)
    for k, m in enumerate(models[1:], start=1):
        if type(m) is not type(first):
            raise ValueError(f"fit_many needs one architecture: models[{k}] is a "
                             f"{type(m).__name__}, models[0] a {type(first).__name__}")
        if callable(config) and m.config() != first.config():  # type: ignore[operator]
            raise ValueError(f"fit_many needs one architecture: models[{k}].config() "
                             f"{m.config()} differs from models[0]'s {first.config()}")
        sig = _signature(m)
        if sig != sig0:
            diff = next((a, b) for a, b in zip(sig + [None] * len(sig0),  # type: ignore[list-item]
                                               sig0 + [None] * len(sig)) if a != b)
            raise ValueError(f"fit_many needs one architecture: models[{k}] has {diff[0]}, "
                             f"models[0] has {diff[1]}")


def _per_model(value: Any, k: int, what: str) -> list[Any]:
    if value is None:
        return [None] * k
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise ValueError(f"{what} must be a list with one entry per model, "
                         f"got {type(value).__name__}")
    if len(value) != k:
        raise ValueError(f"{what} has {len(value)} entries for {k} models")
    return list(value)


def _pair(data: Any, k: int, batch_size: int, device: torch.device, what: str
          ) -> _TensorBatches:
    if not (isinstance(data, (tuple, list)) and len(data) == 2):
        raise TypeError(f"{what}[{k}] must be an in-memory pair (X, Y) of tensors or arrays, "
                        f"got {type(data).__name__}")
    b = batches(data, batch_size, device, name=f"{what}[{k}]")
    assert isinstance(b, _TensorBatches)
    return b


def _stack_data(items: Sequence[_TensorBatches], what: str
                ) -> tuple[torch.Tensor, torch.Tensor]:
    ns = [b.n for b in items]
    if len(set(ns)) > 1:
        raise ValueError(f"fit_many needs the same number of samples in every {what} set "
                         f"within a call, got {ns}")
    for k, b in enumerate(items[1:], start=1):
        for name, a, ref in (("inputs", b.x, items[0].x), ("targets", b.y, items[0].y)):
            if a.shape != ref.shape or a.dtype != ref.dtype:
                raise ValueError(f"{what}[{k}] {name} are {a.dtype} {tuple(a.shape)}, "
                                 f"{what}[0] {name} {ref.dtype} {tuple(ref.shape)}")
    return torch.stack([b.x for b in items]), torch.stack([b.y for b in items])


class _EarlyStops:
    """Per-model step budgets inside one stack: the stack trains to the largest budget,
    and a model whose budget ends earlier has its parameters saved right after its last
    step (and its later losses masked out), so it ends exactly where ``fit`` with its own
    budget ends. The step numbers at which models stop are known up front: no host sync.
    A stopped row keeps training in the stack; nothing of it is read again."""

    def __init__(self, budgets: Sequence[int], total: int, flat: torch.Tensor) -> None:
        self.ends: dict[int, torch.Tensor] = {}
        for step in sorted({s for s in budgets if s < total}):
            self.ends[step] = torch.tensor([k for k, s in enumerate(budgets) if s == step],
                                           device=flat.device)
        idle = [s == 0 for s in budgets]  # ``fit(steps=0)`` trains nothing
        self.active = torch.tensor([not z for z in idle], device=flat.device)
        self.saved = flat.clone() if self.ends or any(idle) else None
        self.stopped = torch.tensor(idle, dtype=torch.bool, device=flat.device)[:, None]

    def after_step(self, step: int, flat: torch.Tensor) -> None:
        """Save the models whose budget ends at ``step`` (1-based)."""
        rows = self.ends.get(step)
        if rows is None or self.saved is None:
            return
        self.saved.index_copy_(0, rows, flat.index_select(0, rows))
        self.active.index_fill_(0, rows, False)
        self.stopped.index_fill_(0, rows, True)

    def current(self, flat: torch.Tensor) -> torch.Tensor:
        """The parameters every model has now: its saved row once it stopped."""
        if self.saved is None:
            return flat
        return torch.where(self.stopped, self.saved, flat)


# ----------------------------------------------------------------------------- fit_many


def _record_epoch(histories: Sequence[History], members: Sequence[int], epoch: int,
                  steps: Sequence[int], running: Sequence[float], seen: Sequence[int],
                  val_loss: dict[int, float]) -> list[int]:
    """Append one epoch to the histories of ``members`` (the models that trained in it)
    as ``fit`` does; the members whose validation loss improved."""
    improved = []
    for k in members:
        h = histories[k]
        h.train_loss.append(running[k] / seen[k])
        h.epochs_run = epoch + 1
        h.steps = steps[k]
        if k in val_loss:
            if h.record_val(epoch, steps[k], val_loss[k]):  # never a diverged epoch
                improved.append(k)
        else:
            h.best_epoch = epoch
    return improved


def _one_by_one(why: str, models: Sequence[nn.Module], datasets: Sequence[Pair],
                each: Sequence[tuple[TrainConfig, dict[str, Any]]], on_divergence: str
                ) -> list[History]:
    """``fit_many``'s fallback: ``fit(models[k], datasets[k], config_k, **kwargs_k)`` for
    every k (``each[k]``), with a warning saying ``why``; on an error every model is put
    back."""
    warnings.warn(f"fit_many: training the {len(models)} models one by one with fit(): "
                  f"{why}", stacklevel=4)
    saved = [copy.deepcopy(m.state_dict()) for m in models]  # any failure: put back
    out = []
    for k, (m, d, (config, kw)) in enumerate(zip(models, datasets, each)):
        try:
            out.append(fit(m, d, config, callbacks=(), **kw))
        except TrainingDiverged as exc:
            if on_divergence == "keep":
                out.append(exc.history)
                continue
            for model, state in zip(models, saved):
                model.load_state_dict(state)
            raise TrainingDiverged(f"models[{k}]: {exc}; no model was changed",
                                   exc.history) from None
        except BaseException:  # out of memory, say: a caller may retry the stack
            for model, state in zip(models, saved):
                model.load_state_dict(state)
            raise
    return out


def _drop_unused(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                 keeps: list[dict[str, bool | torch.Tensor]],
                 pens: Sequence[L2Penalty | None], budgets: Sequence[int] | None,
                 same_shapes: bool) -> bool:
    """Freeze, in every model's mask ``keeps[k]``, the parameters the forward pass does
    not use (see :func:`_probe`), refusing what ``fit`` would refuse; True if any."""
    unused = _probe(model, x, y, [name for name in keeps[0]
                                  if any(keep[name] is not False for keep in keeps)],
                    same_shapes=same_shapes)
    if not unused:
        return False
    for k, (keep, pen) in enumerate(zip(keeps, pens)):
        trains = budgets is None or budgets[k] > 0  # fit(steps=0) refuses nothing
        for name in unused:  # fit's optimiser skips a parameter without a gradient
            if (trains and keep[name] is not False and pen is not None
                    and pen.weight != 0 and name in pen.anchors):
                # fit's L2Pull refuses this at its first step
                raise RuntimeError(f"a penalised parameter received no gradient: "
                                   f"{name!r} (models[{k}]) is not used by the forward "
                                   "pass")
            keep[name] = False
        if trains and all(e is False for e in keep.values()):
            raise ValueError(f"nothing to train in models[{k}]: the forward pass uses "
                             "none of its trainable parameters")
    return True


def _budgets(steps: int | Sequence[int] | None, k_models: int, lr_schedule: str | None
             ) -> list[int] | None:
    """Per-model step budgets from ``steps`` (None: an epoch budget)."""
    if steps is None or isinstance(steps, int):
        return None if steps is None else [steps] * k_models
    budgets = _per_model(steps, k_models, "steps")
    for k, s in enumerate(budgets):
        if isinstance(s, bool) or not isinstance(s, int) or s < 0:
            raise ValueError(f"steps[{k}] must be an integer >= 0, got {s!r}")
    if lr_schedule is not None and len(set(budgets)) > 1:
        raise ValueError("per-model step budgets need a constant learning rate "
                         f"(lr_schedule=None) or one schedule_steps: {lr_schedule!r} "
                         "anneals over one budget")
    return budgets


def fit_many(
    models: Sequence[nn.Module],
    datasets: Sequence[Pair],
    config: TrainConfig | None = None,
    *,
    update_masks: Sequence[MaskSpec | None] | None = None,
    penalties: Sequence[L2Penalty | None] | None = None,
    seeds: Sequence[int | None] | None = None,
    val: Sequence[Pair | None] | None = None,
    prune: Callable[[int, Sequence[int], Sequence[History]], Iterable[int]] | None = None,
    **overrides: Any,
) -> list[History]:
    """Train K models of one architecture at once; one :class:`History` per model.

    ``config`` (a :class:`~pacsim.training.config.TrainConfig`) and keyword ``overrides``
    of its fields are the training options, as for :func:`pacsim.train.fit`; fit's own
    options (``patience``, ``clip_grad``, ``amp``, ``freeze_bn_stats``, ``compile``,
    ``channels_last``) must keep their defaults. Per model k, this is
    :func:`pacsim.train.fit` ``(models[k], datasets[k], update_mask=update_masks[k],
    penalty=penalties[k], seed=seeds[k], lr=lr[k], val=val[k], ...)`` with the shared
    options (budget, batch size, optimiser, weight decay, loss, schedule,
    ``restore_best``): same shuffling (one generator per seed,
    ``fit``'s permutation rule), same exact update masks, same L2 pull, same selection of
    the best validation epoch. ``datasets`` are in-memory pairs ``(X, Y)`` with the same
    number of samples and shapes (vectorised batches); ``val`` sets may differ in size.
    ``lr`` is one float or one per model; so is ``steps`` (each model stops after its
    own budget, its later updates discarded, as ``fit(steps=steps[k])``; with a
    schedule, all anneal over ``schedule_steps``). ``History.seconds`` is each model's share of
    the stack's wall time. The trained weights are written into ``models``. A parameter
    the forward pass does not use is left alone, as ``fit``'s optimiser leaves it.

    Models with BatchNorm statistics or dropout cannot share a stack:
    they are trained one by one through ``fit``, with a warning saying why; so are models
    whose first stacked step ``torch.func.vmap`` refuses (a forward that reads a tensor's
    value on the host, say), before any of them has changed. Complex parameters (an FNO's
    spectral weights) stack as their real and imaginary parts. A callable ``loss`` should
    work under ``vmap``, or the models train one by one.

    A model whose epoch training loss is not finite diverged. ``on_divergence="raise"``
    (as ``fit``): :class:`~pacsim.train.TrainingDiverged` naming it, with its history,
    and no model is changed. ``"keep"``: every model trains on; a diverged model's
    history shows its non-finite losses (cross-validation rules such a configuration
    out); its weights are not finite, or with ``val`` and ``restore_best`` those of its
    best finite validation epoch (its starting weights if none was finite).

    ``prune(steps, alive, histories)``, called after every epoch with the steps done, the
    indices of the models still training and every model's history, returns models to
    stop now (successive halving: the stack then trains only the others, so a stopped
    model costs nothing more). A stopped model keeps its weights and its history ends
    there; the others train on exactly as without it. Models trained one by one (the
    fallback) train their whole budget. Needs ``restore_best=False`` when ``val`` is given.
    """
    cfg = resolve_config(config, overrides, "fit_many")
    for name in FIT_ONLY:
        if getattr(cfg, name) != getattr(_DEFAULTS, name):
            raise ValueError(f"fit_many takes no {name}={getattr(cfg, name)!r} (an option of "
                             f"fit alone); leave it at {getattr(_DEFAULTS, name)!r}")
    epochs, steps, lr, batch_size = cfg.epochs, cfg.steps, cfg.lr, cfg.batch_size
    weight_decay, optimizer, loss = cfg.weight_decay, cfg.optimizer, cfg.loss
    restore_best, lr_schedule = cfg.restore_best, cfg.lr_schedule
    schedule_steps, on_divergence = cfg.schedule_steps, cfg.on_divergence
    if prune is not None and restore_best and val is not None \
            and any(v is not None for v in val):
        raise ValueError("fit_many's prune needs restore_best=False: a stopped model keeps "
                         "the weights it has")
    models = list(models)
    k_models = len(models)
    if k_models == 0:
        raise ValueError("fit_many needs at least one model")
    if len({id(m) for m in models}) != k_models:
        raise ValueError("fit_many got the same model object more than once")
    datasets = _per_model(datasets, k_models, "datasets")
    masks_in = _per_model(update_masks, k_models, "update_masks")
    pens = _per_model(penalties, k_models, "penalties")
    seeds_in = _per_model(seeds, k_models, "seeds")
    vals = _per_model(val, k_models, "val")
    lrs = ([float(lr)] * k_models if isinstance(lr, (int, float))
           else [float(v) for v in _per_model(lr, k_models, "lr")])
    budgets = _budgets(steps, k_models, lr_schedule if schedule_steps is None else None)
    check_fit_options(epochs, None if budgets is None else max(budgets, default=0), lrs,
                      weight_decay, optimizer, lr_schedule)
    _check_architectures(models)
    check_float32(models[0])  # one architecture, dtypes included
    loss_fn = make_loss(loss)
    dev = resolve_device(cfg.device)

    # the fallback's fit runs: fit raises on divergence, _one_by_one applies on_divergence
    shared = dataclasses.replace(cfg, device=dev, on_divergence="raise")
    each = [(dataclasses.replace(shared, lr=r, steps=st),
             dict(val=v, update_mask=um, penalty=pen, seed=s))
            for v, st, r, um, pen, s in zip(vals, budgets or [None] * k_models, lrs,
                                            masks_in, pens, seeds_in)]

    def one_by_one(why: str) -> list[History]:
        return _one_by_one(why, models, datasets, each, on_divergence)

    why = not_vectorisable(models[0])
    if why is not None:
        return one_by_one(why)
    for m in models:
        m.to(dev)
    train = [_pair(d, k, batch_size, dev, "datasets") for k, d in enumerate(datasets)]
    x_all, y_all = _stack_data(train, "datasets")
    del train
    n = x_all.shape[1]
    val_b = [None if v is None else _pair(v, k, batch_size, dev, "val")
             for k, v in enumerate(vals)]
    for k, b in enumerate(val_b):
        if b is not None and (b.x.shape[1:], b.y.shape[1:]) != (x_all.shape[2:],
                                                                 y_all.shape[2:]):
            raise ValueError(f"val[{k}] samples are {tuple(b.x.shape[1:])} -> "
                             f"{tuple(b.y.shape[1:])}, the training samples "
                             f"{tuple(x_all.shape[2:])} -> {tuple(y_all.shape[2:])}")
    keeps = [_resolve_mask(m, s, dev) for m, s in zip(models, masks_in)]

    def build_pulls() -> list[L2Pull | None]:
        return [None if pen is None else L2Pull.build(
                    m, pen, [p for name, p in m.named_parameters() if keep[name] is not False],
                    dev)
                for m, pen, keep in zip(models, pens, keeps)]

    pulls = build_pulls()
    histories = [History() for _ in models]
    if epochs == 0 or (budgets is not None and max(budgets) == 0):
        return histories
    for k, keep in enumerate(keeps):
        if budgets is not None and budgets[k] == 0:
            continue  # fit(steps=0) trains nothing, so it has nothing to refuse
        if all(e is False for e in keep.values()):
            raise ValueError(f"nothing to train in models[{k}]: update_masks[{k}] freezes "
                             f"every parameter")
    if _drop_unused(models[0], x_all[0, :1], y_all[0, :1], keeps, pens, budgets,
                    same_shapes=isinstance(loss, str)):
        pulls = build_pulls()
    stack = _Stack(models, keeps, pulls, loss_fn)
    opt = _StackedOptimizer(optimizer, stack.flat, weight_decay)
    step = StackedMaskedStep(stack.mask, stack.pull, opt)
    per_epoch = -(-n // batch_size)
    if budgets is not None:
        total_steps = max(budgets)
    else:
        assert epochs is not None
        total_steps = epochs * per_epoch
        budgets = [total_steps] * k_models
    early = _EarlyStops(budgets, total_steps, stack.flat)
    lr_rows = _lr_table(lrs, schedule_horizon(schedule_steps, total_steps), lr_schedule)
    gens = []
    for s in seeds_in:
        if s is None:
            s = int(torch.randint(0, 2**62, ()).item())
        gens.append(torch.Generator().manual_seed(s))
    rows = _Rows(list(range(k_models)), x_all, y_all, val_b, budgets, dev)
    with_val = [k for k, v in enumerate(val_b) if v is not None]
    best_flat = stack.flat.clone() if restore_best and with_val else None
    finished: torch.Tensor | None = None  # rows of models that left the stack
    t0 = time.perf_counter()
    done = 0
    epoch = 0
    while done < total_steps:
        count = min(per_epoch, total_steps - done)
        f = {key: t.to(dev, non_blocking=True)
             for key, t in opt.factors(rows.lrs(lr_rows(done, count)), done + 1).items()}
        k_now = len(rows.ids)
        perm = torch.stack([torch.randperm(n, generator=gens[k]) for k in rows.ids])
        perm = (perm + rows.offsets).to(dev, non_blocking=True)
        running = torch.zeros(k_now, device=dev)
        members = [r for r in range(k_now) if rows.budgets[r] > done]
        for i in range(count):
            idx = perm[:, i * batch_size : (i + 1) * batch_size]
            b = idx.shape[1]
            idx = idx.reshape(-1)
            xb = rows.x_flat.index_select(0, idx).view(k_now, b, *rows.x_flat.shape[1:])
            yb = rows.y_flat.index_select(0, idx).view(k_now, b, *rows.y_flat.shape[1:])
            if done or i:
                grad, losses = stack.grads_and_losses(xb, yb)
            else:  # the first step: no model has changed yet, so fit can still take over
                try:
                    grad, losses = stack.grads_and_losses(xb, yb)
                except OUT_OF_MEMORY:
                    raise  # select_many trains such a stack in halves
                except Exception as exc:  # vmap's refusals share no exception type
                    detail = (str(exc).strip().splitlines() or [""])[0][:200]
                    return one_by_one(f"torch.func.vmap cannot run its training step "
                                      f"({type(exc).__name__}: {detail})")
            step(stack.flat, grad, f, i)  # pull, optimiser, frozen entries back to their bits
            running += torch.where(early.active, losses.detach(), 0.0) * b
            early.after_step(done + i + 1, stack.flat)
        # samples each model saw this epoch: full batches, the last one possibly short
        sizes = [min(batch_size, n - i * batch_size) for i in range(count)]
        seen = [sum(sizes[: max(0, min(count, s - done))]) for s in rows.budgets]
        done += count
        trained = early.current(stack.flat)
        row_histories = [histories[k] for k in rows.ids]
        improved = _record_epoch(row_histories, members, epoch,
                                 [min(done, s) for s in rows.budgets], running.tolist(), seen,
                                 stack.val_losses(rows.groups, batch_size, trained, members))
        bad = [rows.ids[r] for r in members
               if not math.isfinite(histories[rows.ids[r]].train_loss[-1])
               or (rows.ids[r] in with_val
                   and not math.isfinite(histories[rows.ids[r]].val_loss[-1]))]
        if bad and on_divergence == "raise":
            raise TrainingDiverged.because(
                f"the training or validation loss of models[{bad[0]}] is not finite in epoch "
                f"{epoch + 1}", "no model was changed", histories[bad[0]])
        if best_flat is not None and improved:
            at = torch.tensor(improved, device=dev)
            best_flat.index_copy_(0, at, trained.index_select(0, at))
        epoch += 1
        alive = [k for k, b in zip(rows.ids, rows.budgets) if b > done]
        stop = set() if prune is None or not alive else {
            int(k) for k in prune(done, alive, histories)} & set(alive)
        leave = [r for r, k in enumerate(rows.ids) if k in stop or rows.budgets[r] <= done]
        if stop and len(leave) < len(rows.ids):
            finished = _set_rows(finished, trained, rows.ids, leave, k_models)
            keep = [r for r in range(len(rows.ids)) if r not in set(leave)]
            stack.keep_rows(keep)
            opt.keep_rows(keep)
            rows.keep(keep)
            early = _EarlyStops(rows.budgets, max(rows.budgets), stack.flat)
            total_steps = max(rows.budgets)
        elif stop:  # every model stops: nothing left to train
            break
    flat = early.current(stack.flat)
    if best_flat is not None:
        at = torch.tensor(with_val, device=dev)
        flat.index_copy_(0, at, best_flat.index_select(0, at))
    if finished is not None:
        flat = _set_rows(finished, flat, rows.ids, list(range(len(rows.ids))), k_models)
    stack.layout.write_back(models, flat)
    seconds = (time.perf_counter() - t0) / k_models
    for h in histories:
        h.seconds = seconds
    return histories


def _set_rows(full: torch.Tensor | None, part: torch.Tensor, ids: Sequence[int],
              rows: Sequence[int], k_models: int) -> torch.Tensor:
    """``full`` (K, P), created on first use, with the rows ``rows`` of ``part`` (whose
    row r is model ``ids[r]``) written in at their models' places."""
    if full is None:
        full = part.new_zeros((k_models, *part.shape[1:]))
    at = torch.tensor([ids[r] for r in rows], dtype=torch.long, device=part.device)
    full.index_copy_(0, at, part.index_select(
        0, torch.tensor(list(rows), dtype=torch.long, device=part.device)))
    return full


class _Rows:
    """The models a stack still trains (``ids``, one per row) and their per-row data:
    training samples, validation groups, budgets, learning-rate columns."""

    def __init__(self, ids: list[int], x_all: torch.Tensor, y_all: torch.Tensor,
                 val_b: Sequence[_TensorBatches | None], budgets: list[int],
                 dev: torch.device) -> None:
        self.ids, self.x_all, self.y_all = ids, x_all, y_all
        self.val_b, self.all_budgets, self.dev = list(val_b), list(budgets), dev
        self._layout()

    def _layout(self) -> None:
        k, n = self.x_all.shape[:2]
        self.offsets = (torch.arange(k) * n)[:, None]
        self.x_flat = self.x_all.reshape(k * n, *self.x_all.shape[2:])
        self.y_flat = self.y_all.reshape(k * n, *self.y_all.shape[2:])
        self.groups = _val_groups([self.val_b[i] for i in self.ids], self.dev)
        self.budgets = [self.all_budgets[i] for i in self.ids]

    def lrs(self, table: torch.Tensor) -> torch.Tensor:
        """The learning-rate table (steps, every model) cut to the rows still training."""
        if len(self.ids) == table.shape[1]:
            return table
        return table[:, self.ids]

    def keep(self, rows: Sequence[int]) -> None:
        at = torch.tensor(list(rows), device=self.x_all.device)
        self.ids = [self.ids[r] for r in rows]
        self.x_all = self.x_all.index_select(0, at)
        self.y_all = self.y_all.index_select(0, at)
        self._layout()


__all__ = ["StackedL2Pull", "StackedUpdateMask", "fit_many"]
