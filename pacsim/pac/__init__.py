"""PAC-Net: prune, allocate, calibrate, the source view of a calibrated model, and more
settings in one network (extend, view)."""

from .extend import extend
from .masks import SOURCE, TARGET, Masks, StageError, bias_names, prunable_weights
from .prune import DEFAULT_RATIO, SCOPES, check_ratio, prune
from .steps import (
    PAPER_LAM,
    SUBSPACES,
    allocate,
    begin_calibrate,
    calibrate,
    calibrate_penalty,
    calibrate_update,
)
from .view import source_view, view

__all__ = ["DEFAULT_RATIO", "SCOPES", "SOURCE", "SUBSPACES", "TARGET", "PAPER_LAM", "Masks",
           "StageError", "allocate", "begin_calibrate", "bias_names", "calibrate",
           "calibrate_penalty", "calibrate_update", "check_ratio", "extend",
           "prunable_weights", "prune", "source_view", "view"]
