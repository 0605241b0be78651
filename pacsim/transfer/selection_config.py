"""How hyper-parameters are chosen: :class:`SelectionConfig` (``"cv"`` or ``"fixed"``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

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
