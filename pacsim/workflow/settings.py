"""The settings of ``pacsim train`` and ``pacsim transfer`` as frozen dataclasses.

Each is checked when made, so a bad value fails before any file is read; the messages
name the command's flags, which is how the command line reports them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..transfer import SelectionConfig
from ..transfer.options import method_options
from ..transfer.registry import get, names
from ..transfer.selection import AUTO_METHODS


@dataclass(frozen=True)
class TrainSettings:
    """How :func:`~pacsim.workflow.train_surrogate` fits a surrogate.

    ``model``: ``"mlp"``, ``"cnn"``, another registered model, or ``"auto"`` (mlp for
    flat samples, cnn for fields), sized from the data; ``options`` are the model's other
    arguments (e.g. ``width``). ``compile``: the training forward through
    ``torch.compile`` (see :func:`pacsim.train.fit`). The rest are :func:`pacsim.train.fit`'s
    arguments of the same names.
    """

    model: str = "auto"
    options: Mapping[str, Any] = field(default_factory=dict)
    epochs: int = 100
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0
    optimizer: str = "adam"
    patience: int | None = None
    lr_schedule: str | None = "cosine"
    device: str = "auto"
    seed: int = 0
    amp: bool = False
    compile: bool | str | Mapping[str, Any] = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "options", dict(self.options or {}))
        if self.epochs < 1:
            raise ValueError(f"--epochs must be >= 1, got {self.epochs}")


@dataclass(frozen=True)
class TransferSettings:
    """How :func:`~pacsim.workflow.transfer_surrogate` adapts a checkpoint to a target.

    ``method``: a registered transfer method, or ``"auto"`` (every method's
    cross-validation on the same folds, the lowest CV loss retrained; ``keep_source``:
    among the PAC methods only). ``n``: target train samples drawn by ``seed`` (default
    all). ``options``: the method's options, fixed rather than searched.
    ``selection="cv"`` chooses the learning rate, the options ``options`` leaves open and
    the step count (up to ``3 * steps``) by ``folds``-fold cross-validation on the target
    samples; ``"fixed"`` trains ``steps`` steps at ``lr``. ``final`` (with CV): keep the
    final retrain's state at the chosen step (``"last"``) or its epoch with the lowest loss
    on the n samples (``"best"``, see :class:`~pacsim.transfer.SelectionConfig`). PAC
    methods: ``source`` is the source data of allocate (default: the file the checkpoint
    records), run for ``allocate_epochs`` (default: a third of the source training's
    epochs); ``setting``
    names the new setting, and ``extend_ratio`` is the share of the newest setting's
    entries a PAC checkpoint frees for it.
    """

    method: str = "pac"
    n: int | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    source: str | os.PathLike[str] | None = None
    selection: str = "cv"
    folds: int = 5
    final: str = SelectionConfig.final
    steps: int = 500
    lr: float = 1e-3
    batch_size: int = 32
    weight_decay: float = 0.0
    allocate_epochs: int | None = None
    device: str = "auto"
    seed: int = 0
    setting: str | None = None
    extend_ratio: float = 0.5
    keep_source: bool = False

    def __post_init__(self) -> None:
        if self.keep_source and self.method != "auto":
            raise ValueError(f"--keep-source chooses among PAC methods with --method auto; "
                             f"{self.method!r} is one method")
        method, auto = self.resolved_method, self.auto
        if method not in names() and not auto:
            raise ValueError(f"unknown method {method!r}; choose one of "
                             f"{[*names(), 'auto']}")
        object.__setattr__(self, "options", dict(self.options or {}))
        if auto and self.options:
            raise ValueError(f"--method {method} takes no --set: each candidate searches its "
                             "own default grid")
        if auto and self.selection != "cv":
            raise ValueError(f"--method {method} chooses by cross-validation: it needs "
                             "--select cv")
        if not auto:
            method_options(method, self.options)  # a bad option fails before any read
        if self.allocate_epochs is not None and self.allocate_epochs < 1:
            raise ValueError(f"--allocate-epochs must be >= 1, got {self.allocate_epochs}")
        _ = self.selection_config  # a bad mode, fold count or final state fails here

    @property
    def resolved_method(self) -> str:
        """The method as the selection knows it: ``auto`` with ``keep_source`` is
        ``auto-keep-source``."""
        return "auto-keep-source" if self.method == "auto" and self.keep_source else self.method

    @property
    def auto(self) -> bool:
        """Whether the method is chosen among candidates by cross-validation."""
        return self.resolved_method in AUTO_METHODS

    @property
    def keeps_source(self) -> bool:
        """Whether the result is a PAC network (its source setting stays exact)."""
        method = self.resolved_method
        return method == "auto-keep-source" or (not self.auto and get(method).keeps_source)

    @property
    def selection_config(self) -> SelectionConfig:
        """The selection's mode, folds and final state as :func:`pacsim.transfer.select`
        takes them."""
        return SelectionConfig(mode=self.selection, folds=self.folds, final=self.final)
