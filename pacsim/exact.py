"""Where the source is kept exact: :class:`UpdateMask` and the L2 pull :class:`L2Pull`.

Every trainer in pacsim (``pacsim.train.fit``, ``fit_many`` and anything that trains
through them: PAC's allocate and calibrate, every transfer baseline, the benchmark)
enforces "which entries may change" here and nowhere else, each optimiser step ordered by
:class:`pacsim.training.core.MaskedStep`.

The invariant: after every optimiser step, every entry that the mask freezes holds
exactly the bits it had when the :class:`UpdateMask` was built. Zero gradients are not
enough for that: momentum, Adam's moments and decoupled weight decay move entries whose
gradient is zero. So frozen *entries* of partly trainable tensors are restored from a
snapshot after each step (one in-place ``torch.where`` per tensor), and wholly frozen
tensors never reach the optimiser at all (``requires_grad`` is switched off for the
duration of training and switched back afterwards). Real and complex parameters alike.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import torch
from torch import nn

#: Parameter name -> True (trainable), False (frozen) or a bool tensor per entry.
MaskSpec = Mapping[str, bool | torch.Tensor]


@dataclass(frozen=True)
class L2Penalty:
    """``weight * sum ||p - anchor||^2`` over the named parameters (anchor None: zero);
    for complex parameters ``|p - anchor|^2`` per entry.

    Applied as its exact gradient ``2 * weight * (p - anchor)`` by :class:`L2Pull` (for
    complex entries too: that is the gradient torch's autograd gives for ``|z|^2``),
    added to the parameter gradients inside the update step rather than built into the
    autograd graph, which keeps it almost free. Frozen entries are unaffected (their
    gradient is discarded). ``History.train_loss`` reports the data loss without it.
    """

    weight: float
    anchors: Mapping[str, torch.Tensor | None]

    def __post_init__(self) -> None:
        if not self.weight >= 0:
            raise ValueError(f"penalty weight must be >= 0, got {self.weight}")


@dataclass
class _Partial:
    param: nn.Parameter
    keep: torch.Tensor  # True where the entry may change
    frozen: torch.Tensor  # ~keep
    snapshot: torch.Tensor


class UpdateMask:
    """Which entries of ``model`` may change while training, enforced to the bit.

    ``spec``: parameter name -> bool (whole tensor) or bool tensor (per entry); names it
    leaves out are frozen; ``None`` trains every parameter with ``requires_grad``.
    Use :meth:`frozen_tensors` around the training loop;
    :class:`~pacsim.training.core.MaskedStep` calls :meth:`before_step` between
    ``backward`` and ``optimizer.step`` and :meth:`after_step` right after it.
    """

    def __init__(self, model: nn.Module, spec: MaskSpec | None, device: torch.device) -> None:
        params = dict(model.named_parameters())
        if spec is not None:
            unknown = sorted(set(spec) - set(params))
            if unknown:
                raise ValueError(f"update_mask names unknown parameters: {unknown}")
        self.full: list[nn.Parameter] = []
        self.partial: list[_Partial] = []
        self.frozen: list[nn.Parameter] = []
        for name, p in params.items():
            entry: bool | torch.Tensor = True if spec is None else spec.get(name, False)
            if not p.requires_grad:
                entry = False
            if isinstance(entry, torch.Tensor):
                if entry.dtype != torch.bool or entry.shape != p.shape:
                    raise ValueError(
                        f"update_mask[{name!r}] must be a bool tensor of shape "
                        f"{tuple(p.shape)}, got {entry.dtype} {tuple(entry.shape)}")
                n_keep = int(entry.sum())
                if n_keep == p.numel():
                    entry = True
                elif n_keep == 0:
                    entry = False
            if entry is True:
                self.full.append(p)
            elif entry is False:
                self.frozen.append(p)
            else:
                keep = entry.to(device)
                self.partial.append(_Partial(p, keep, ~keep, p.detach().clone()))

    @property
    def trainable(self) -> list[nn.Parameter]:
        """Parameters with at least one trainable entry (what the optimiser gets)."""
        return self.full + [pp.param for pp in self.partial]

    @contextlib.contextmanager
    def frozen_tensors(self) -> Iterator[None]:
        """Switch ``requires_grad`` off for wholly frozen tensors, and back on exit."""
        previous = {p: p.requires_grad for p in self.frozen}
        try:
            for p in self.frozen:
                p.requires_grad_(False)
            yield
        finally:
            for p, rg in previous.items():
                p.requires_grad_(rg)

    def before_step(self, clip_grad: float | None = None) -> None:
        """Clip the gradient norm of the trainable entries only (frozen entries' share
        is zeroed first so it cannot count)."""
        if clip_grad is None:
            return
        for pp in self.partial:
            if pp.param.grad is not None:
                pp.param.grad.masked_fill_(pp.frozen, 0.0)
        nn.utils.clip_grad_norm_(self.trainable, clip_grad)

    @torch.no_grad()
    def after_step(self) -> None:
        """Put every frozen entry back to its exact snapshot value."""
        for pp in self.partial:
            torch.where(pp.keep, pp.param, pp.snapshot, out=pp.param)


class L2Pull:
    """The gradient of an :class:`L2Penalty`, ``2 w (p - anchor)``, added in place to the
    gradients of the penalised *trainable* parameters (frozen ones are skipped)."""

    def __init__(self, model: nn.Module, penalty: L2Penalty, trainable: list[nn.Parameter],
                 device: torch.device) -> None:
        params = dict(model.named_parameters())
        unknown = sorted(set(penalty.anchors) - set(params))
        if unknown:
            raise ValueError(f"penalty names unknown parameters: {unknown}")
        self.scale = 2.0 * penalty.weight
        live = set(trainable)
        self.to_zero: list[nn.Parameter] = []
        self.to_anchor: list[nn.Parameter] = []
        self.scaled_anchors: list[torch.Tensor] = []  # 2 w * anchor, precomputed
        for name, anchor in penalty.anchors.items():
            p = params[name]
            if p not in live:
                continue
            if anchor is None:
                self.to_zero.append(p)
                continue
            if anchor.shape != p.shape:
                raise ValueError(f"penalty anchor {name!r} has shape {tuple(anchor.shape)}, "
                                 f"the parameter has {tuple(p.shape)}")
            self.to_anchor.append(p)
            self.scaled_anchors.append(anchor.detach().to(device, p.dtype) * self.scale)

    @classmethod
    def build(cls, model: nn.Module, penalty: L2Penalty | None,
              trainable: list[nn.Parameter], device: torch.device) -> L2Pull | None:
        """The pull of ``penalty``, or None when there is nothing to pull."""
        if penalty is None or penalty.weight == 0:
            return None
        pull = cls(model, penalty, trainable, device)
        return pull if pull.to_zero or pull.to_anchor else None

    @torch.no_grad()
    def apply(self) -> None:
        """Add the pull to the current gradients."""
        params = self.to_anchor + self.to_zero
        if any(p.grad is None for p in params):
            raise RuntimeError("a penalised parameter received no gradient")
        torch._foreach_add_([p.grad for p in params], params, alpha=self.scale)
        if self.to_anchor:
            torch._foreach_sub_([p.grad for p in self.to_anchor], self.scaled_anchors)
