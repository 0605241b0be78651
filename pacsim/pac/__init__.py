"""PAC-Net: prune, allocate, calibrate, and the source view of a calibrated model."""

from .masks import Masks, StageError, bias_names, prunable_weights
from .prune import DEFAULT_RATIO, SCOPES, check_ratio, prune
from .steps import (
    PAPER_LAM,
    SUBSPACES,
    allocate,
    calibrate,
    calibrate_penalty,
    calibrate_update,
)
from .view import source_view

__all__ = ["DEFAULT_RATIO", "Masks", "PAPER_LAM", "SCOPES", "SUBSPACES", "StageError",
           "allocate", "bias_names", "calibrate", "calibrate_penalty", "calibrate_update",
           "check_ratio",
           "prunable_weights", "prune", "source_view"]
