"""One training configuration for both trainers: :class:`TrainConfig`.

:func:`pacsim.train.fit` and :func:`pacsim.train.fit_many` take a ``TrainConfig`` (or
none) plus keyword overrides of its fields, so a run's hyper-parameters are one value
that can be stored, compared and passed on, while ``fit(model, data, lr=..., steps=...)``
keeps working.
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .core import check_budget, check_option_values, make_loss

ON_DIVERGENCE = ("raise", "keep")


@dataclass(frozen=True)
class TrainConfig:
    """How a model is trained: budget, optimiser, loss, selection and execution options.

    The budget is ``epochs`` passes or exactly ``steps`` optimiser steps; a trainer needs
    exactly one of them (a config may leave both unset and get one as an override).
    ``fit_many`` also takes ``lr`` and ``steps`` as one value per model. ``patience``,
    ``clip_grad``, ``amp``, ``freeze_bn_stats``, ``compile`` and ``channels_last`` are
    :func:`~pacsim.train.fit`'s alone (``fit_many`` refuses other values than their
    defaults); see ``fit`` for what each does. ``on_divergence``: ``"raise"`` a
    :class:`~pacsim.train.TrainingDiverged` when a loss is not finite, or ``"keep"`` its
    history: ``fit`` then returns it (the model left at its best epoch, else that epoch's
    start), ``fit_many`` trains the other models on.

    Values are checked here, each on its own; a ValueError names the bad one.
    """

    epochs: int | None = None
    steps: int | Sequence[int] | None = None
    lr: float | Sequence[float] = 1e-3
    batch_size: int = 64
    weight_decay: float = 0.0
    optimizer: str = "adam"
    loss: str | Callable[..., torch.Tensor] = "mse"
    restore_best: bool = True
    lr_schedule: str | None = None
    schedule_steps: int | None = None
    patience: int | None = None
    clip_grad: float | None = None
    amp: bool = False
    freeze_bn_stats: bool = False
    compile: bool | str | Mapping[str, Any] = False
    channels_last: bool | None = None
    device: str | torch.device = "auto"
    on_divergence: str = "raise"

    def __post_init__(self) -> None:
        steps = self.steps
        if _many(steps):
            object.__setattr__(self, "steps", tuple(steps))  # type: ignore[arg-type]
            for k, s in enumerate(self.steps):  # type: ignore[arg-type]
                if isinstance(s, bool) or not isinstance(s, int) or s < 0:
                    raise ValueError(f"steps[{k}] must be an integer >= 0, got {s!r}")
            steps = None
        if _many(self.lr):
            object.__setattr__(self, "lr", tuple(self.lr))  # type: ignore[arg-type]
        lrs = self.lr if isinstance(self.lr, tuple) else (self.lr,)
        for v in lrs:
            if not isinstance(v, numbers.Real):
                raise ValueError(f"lr must be a number (for fit_many, one per model), "
                                 f"got {type(v).__name__}")
        check_option_values(self.epochs, steps, lrs, self.weight_decay, self.optimizer,
                            self.lr_schedule, self.clip_grad)
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {self.batch_size}")
        if self.schedule_steps is not None and (isinstance(self.schedule_steps, bool)
                                                or not isinstance(self.schedule_steps, int)):
            raise ValueError(f"schedule_steps must be an integer >= the budget, got "
                             f"{self.schedule_steps!r}")
        if self.patience is not None and self.patience < 1:
            raise ValueError(f"patience must be >= 1, got {self.patience}")
        if self.channels_last is not None and not isinstance(self.channels_last, bool):
            raise ValueError(f"channels_last must be None, True or False, got "
                             f"{self.channels_last!r}")
        if self.on_divergence not in ON_DIVERGENCE:
            raise ValueError(f"on_divergence must be 'raise' or 'keep', got "
                             f"{self.on_divergence!r}")
        make_loss(self.loss)  # an unknown name is refused here
        if self.compile is not False:
            from .single import compile_options  # the mode's default depends on the device

            compile_options(self.compile, torch.device("cpu"))

    def check_budget(self) -> None:
        """ValueError unless exactly one of ``epochs`` and ``steps`` is set."""
        check_budget(self.epochs, self.steps)

    def updated(self, overrides: Mapping[str, Any], caller: str = "TrainConfig") -> TrainConfig:
        """This config with ``overrides`` (field name -> value). A budget given alone
        replaces the config's (``steps=`` clears ``epochs`` and the reverse). An unknown
        name is a TypeError naming it and the valid ones."""
        unknown = sorted(set(overrides) - set(FIELDS))
        if unknown:
            raise TypeError(f"{caller}() got an unexpected keyword argument {unknown[0]!r}; "
                            f"the TrainConfig fields are {', '.join(FIELDS)}")
        if not overrides:
            return self
        changes = dict(overrides)
        budget = {"epochs", "steps"} & set(changes)
        if len(budget) == 1:
            changes[({"epochs", "steps"} - budget).pop()] = None
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """The fields by name (values as they are)."""
        return {f: getattr(self, f) for f in FIELDS}


#: The field names of :class:`TrainConfig`, in order.
FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(TrainConfig))
#: The fields only :func:`~pacsim.train.fit` honours.
FIT_ONLY = ("patience", "clip_grad", "amp", "freeze_bn_stats", "compile", "channels_last")


def _many(value: Any) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, (str, bytes))


def resolve_config(config: TrainConfig | None, overrides: Mapping[str, Any], caller: str,
                   also: Sequence[str] = ()) -> TrainConfig:
    """``config`` (default: ``TrainConfig()``) with the keyword ``overrides`` of
    ``caller`` applied (see :meth:`TrainConfig.updated`); ``also``: further keywords
    ``caller`` takes, named with the fields when a keyword is unknown."""
    unknown = sorted(set(overrides) - set(FIELDS))
    if unknown:
        raise TypeError(f"{caller}() got an unexpected keyword argument {unknown[0]!r}; "
                        f"it takes the TrainConfig fields {', '.join(FIELDS)}"
                        + (f" and {', '.join(also)}" if also else ""))
    if config is None:
        config = TrainConfig()
    elif not isinstance(config, TrainConfig):
        raise TypeError(f"{caller}() takes a TrainConfig as config, got "
                        f"{type(config).__name__}")
    return config.updated(overrides, caller)
