"""What every pacsim trainer shares: :class:`History`, :class:`TrainingDiverged`, the
option checks, and :class:`MaskedStep`, the one place that orders an optimiser step so
that frozen entries keep their exact bits.

:func:`pacsim.train.fit` (one model) and :func:`pacsim.many.fit_many` (a vectorised stack
of models) both step through a :class:`MaskedStep`; the pieces it orders are
:class:`pacsim.exact.UpdateMask` and :class:`pacsim.exact.L2Pull` (or their stacked forms
in :mod:`pacsim.many`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..exact import L2Pull, UpdateMask

OPTIMIZERS = ("adam", "adamw", "sgd")
LOSSES = ("mse", "l1", "huber")


@dataclass
class History:
    """What happened during :func:`fit`: per-epoch losses and the selected epoch."""

    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    val_steps: list[int] = field(default_factory=list)
    best_epoch: int | None = None
    best_val: float | None = None
    epochs_run: int = 0
    steps: int = 0
    seconds: float = 0.0
    stopped_early: bool = False

    def to_dict(self) -> dict[str, Any]:
        """JSON-able copy."""
        return dict(self.__dict__)

    def record_val(self, epoch: int, steps: int, loss: float) -> bool:
        """Append epoch ``epoch``'s validation ``loss`` (after ``steps`` steps); True when
        it is the best so far (a loss that is not finite never is)."""
        self.val_loss.append(loss)
        self.val_steps.append(steps)
        if math.isfinite(loss) and (self.best_val is None or loss < self.best_val):
            self.best_val, self.best_epoch = loss, epoch
            return True
        return False


class TrainingDiverged(ValueError):
    """:func:`fit` stopped because an epoch's training or validation loss was not
    finite; ``history`` is what ran up to and including that epoch."""

    def __init__(self, message: str, history: History) -> None:
        super().__init__(message)
        self.history = history

    @classmethod
    def because(cls, what: str, outcome: str, history: History) -> TrainingDiverged:
        """The error every trainer raises: ``what`` went wrong, ``outcome`` for the
        models, and the usual remedy."""
        return cls(f"training diverged: {what}; {outcome}; check the data for NaN/inf and "
                   "lower lr", history)


# ----------------------------------------------------------------------------- the step


class MaskedStep:
    """One optimiser step that keeps every frozen entry's exact bits, in one fixed order.

    After ``backward``: add the L2 pull to the gradients, clip the trainable entries'
    gradient norm, step the optimiser, and last restore the frozen entries (momentum,
    Adam's moments and decoupled weight decay move entries whose gradient is zero, so
    nothing may run between the optimiser and the restore). This class is one model
    (:class:`UpdateMask`, :class:`L2Pull`, a ``torch.optim`` optimiser, gradients in
    ``.grad``); :class:`StackedMaskedStep` is the same order over a stack of models.
    """

    def __init__(self, mask: UpdateMask, pull: L2Pull | None,
                 optimizer: torch.optim.Optimizer, clip_grad: float | None = None) -> None:
        self.mask: Any = mask
        self.pull: Any = pull
        self.optimizer: Any = optimizer
        self.clip_grad = clip_grad

    def __call__(self, *state: Any) -> None:
        """The update; ``state`` goes to every part (nothing for one model)."""
        if self.pull is not None:
            self._pull(*state)
        self._clip(*state)
        self._step(*state)
        self._restore(*state)  # frozen entries back to their exact bits

    def zero_grad(self) -> None:
        """Drop the gradients before the next ``backward``."""
        self.optimizer.zero_grad(set_to_none=True)

    def _pull(self) -> None:
        self.pull.apply()

    def _clip(self) -> None:
        self.mask.before_step(self.clip_grad)

    def _step(self) -> None:
        self.optimizer.step()

    def _restore(self) -> None:
        self.mask.after_step()


class StackedMaskedStep(MaskedStep):
    """:class:`MaskedStep` for K models in one flat ``(K, P)`` tensor
    (:mod:`pacsim.many`): ``state`` is ``(flat, grad, factors, row)``, the parameters,
    their gradients and the optimiser's per-step factors; no gradient clipping."""

    def __init__(self, mask: Any, pull: Any, optimizer: Any) -> None:
        super().__init__(mask, pull, optimizer)

    def _pull(self, flat: torch.Tensor, grad: torch.Tensor, *_: Any) -> None:
        self.pull.apply(grad, flat)

    def _clip(self, *_: Any) -> None:
        pass

    def _step(self, flat: torch.Tensor, grad: torch.Tensor, factors: dict[str, torch.Tensor],
              row: int) -> None:
        self.optimizer.step(flat, grad, factors, row)

    def _restore(self, flat: torch.Tensor, *_: Any) -> None:
        self.mask.after_step(flat)


# ----------------------------------------------------------------------------- pieces


def make_loss(loss: str | Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """The loss function ``loss`` names (a callable is used as it is)."""
    if callable(loss):
        return loss
    table = {
        "mse": nn.functional.mse_loss,
        "l1": nn.functional.l1_loss,
        "huber": nn.functional.huber_loss,
    }
    if loss not in table:
        raise ValueError(f"unknown loss {loss!r}; choose one of {LOSSES} or pass a callable")
    return table[loss]


def make_optimizer(name: str, params: list[nn.Parameter], lr: float, weight_decay: float
                   ) -> torch.optim.Optimizer:
    """Adam, AdamW or SGD (momentum 0.9) over ``params``."""
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}; choose one of {OPTIMIZERS}")


def schedule_horizon(schedule_steps: int | None, budget: int) -> int:
    """The steps a learning-rate schedule anneals over: ``schedule_steps``, else the
    budget (never fewer: past its horizon a cosine schedule would rise again)."""
    if schedule_steps is None:
        return budget
    if isinstance(schedule_steps, bool) or not isinstance(schedule_steps, int) \
            or schedule_steps < budget:
        raise ValueError(f"schedule_steps must be an integer >= the budget ({budget} steps), "
                         f"got {schedule_steps!r}")
    return schedule_steps


def check_output_shape(pred: torch.Tensor, y: torch.Tensor, what: str = "the targets"
                       ) -> None:
    """Outputs and targets of one shape, as a built-in loss needs: a broadcast loss would
    give a wrong number, not an error."""
    if pred.shape != y.shape:
        raise ValueError(f"the model gives outputs of shape {tuple(pred.shape[1:])} per "
                         f"sample, {what} have {tuple(y.shape[1:])}: data and model do not "
                         "match")


def check_float32(model: nn.Module) -> None:
    """The trainers feed float32 batches (complex64 for spectral weights): refuse a model
    of another precision with a clear message rather than a dtype error mid-step."""
    other = sorted({str(p.dtype).removeprefix("torch.") for p in model.parameters()
                    if p.dtype not in (torch.float32, torch.complex64)})
    if other:
        raise ValueError(f"pacsim trains float32 models; this one has {', '.join(other)} "
                         "parameters (convert it with model.float())")


def check_fit_options(epochs: int | None, steps: int | None, lrs: Sequence[float],
                      weight_decay: float, optimizer: str, lr_schedule: str | None,
                      clip_grad: float | None = None) -> None:
    """Check the budget and optimiser options of :func:`fit` (and ``fit_many``: one
    learning rate per model); ValueError names the bad one."""
    check_budget(epochs, steps)
    check_option_values(epochs, steps, lrs, weight_decay, optimizer, lr_schedule, clip_grad)


def check_budget(epochs: int | None, steps: Any) -> None:
    """A training budget is exactly one of ``epochs`` and ``steps``."""
    if (epochs is None) == (steps is None):
        raise ValueError("give exactly one of epochs= and steps=")


def check_option_values(epochs: int | None, steps: int | None, lrs: Sequence[float],
                        weight_decay: float, optimizer: str, lr_schedule: str | None,
                        clip_grad: float | None = None) -> None:
    """:func:`check_fit_options` without the budget rule: each value on its own."""
    for name, value in (("epochs", epochs), ("steps", steps)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise ValueError(f"{name} must be a whole number, got {value!r}")
        if value is not None and value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")
    if clip_grad is not None and not (isinstance(clip_grad, (int, float))
                                      and math.isfinite(clip_grad) and clip_grad > 0):
        raise ValueError(f"clip_grad must be None or a finite positive number, got "
                         f"{clip_grad!r}")
    bad_lr = [v for v in lrs if not (math.isfinite(v) and v > 0)]
    if bad_lr:
        raise ValueError(f"lr must be a finite positive number, got {bad_lr[0]}")
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}; choose one of {OPTIMIZERS}")
    if lr_schedule not in (None, "cosine"):
        raise ValueError(f"unknown lr_schedule {lr_schedule!r}; choose None or 'cosine'")
