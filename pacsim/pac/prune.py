"""Step 1 of PAC: magnitude pruning that splits weights into essential and redundant."""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Iterable

import numpy as np
import torch
from torch import nn

from .masks import Masks, prunable_weights

SCOPES = ("global", "layer")
#: The paper's pruning ratio: 80 % of the prunable weights are freed.
DEFAULT_RATIO = 0.8


def check_ratio(ratio: float) -> float:
    """Validate a pruning ratio: a real number strictly between 0 and 1 (a Python or
    numpy scalar, or a one-element real tensor)."""
    if isinstance(ratio, torch.Tensor) and ratio.numel() == 1 \
            and not ratio.is_complex() and ratio.dtype != torch.bool:
        ratio = ratio.item()
    if isinstance(ratio, bool) or isinstance(ratio, np.bool_) \
            or not isinstance(ratio, numbers.Real):
        raise ValueError(f"pruning ratio must lie in (0, 1), got {ratio!r} (not a real number)")
    if not (math.isfinite(ratio) and 0.0 < ratio < 1.0):
        raise ValueError(f"pruning ratio must lie in (0, 1), got {ratio!r}")
    return float(ratio)


def _redundant_count(ratio: float, n: int) -> int:
    return int(round(ratio * n))


def _keep_mask(magnitudes: torch.Tensor, k: int) -> torch.Tensor:
    """True except for the k smallest entries; ties go to the lower flat index first."""
    keep = torch.ones_like(magnitudes, dtype=torch.bool)
    if k > 0:
        order = torch.argsort(magnitudes, stable=True)
        keep[order[:k]] = False
    return keep


@torch.no_grad()
def prune(model: nn.Module, ratio: float = DEFAULT_RATIO, scope: str = SCOPES[0],
          include: Iterable[str] | None = None, exclude: Iterable[str] = ()) -> Masks:
    """Mark the ``ratio`` share of smallest-magnitude weights as redundant and zero them.

    What is pruned follows :func:`pacsim.pac.prunable_weights`: every weight of rank
    >= 2, real or complex (complex entries ranked by modulus), biases, normalisation
    parameters and elementwise scales never; ``include`` (name patterns) replaces that
    rule, ``exclude`` (name patterns) leaves tensors out. ``scope="global"`` ranks all
    entries together (exactly ``round(ratio * N)`` become redundant), ``"layer"`` ranks
    each tensor on its own (``round(ratio * N_l)`` per tensor). Ties are broken
    deterministically by position.
    """
    ratio = check_ratio(ratio)
    if scope not in SCOPES:
        raise ValueError(f"unknown pruning scope {scope!r}; choose one of {SCOPES}")
    weights = prunable_weights(model, include, exclude)
    if not weights:
        raise ValueError("model has no prunable weight tensors (rank >= 2) to prune")
    for name, w in weights.items():
        if not bool(torch.isfinite(w).all()):
            raise ValueError(f"weight {name!r} contains NaN or inf; cannot rank by magnitude")

    if scope == "global":
        # abs(): the modulus of complex entries
        flat = torch.cat([w.detach().abs().flatten().float() for w in weights.values()])
        keep_flat = _keep_mask(flat, _redundant_count(ratio, flat.numel()))
        sizes = [w.numel() for w in weights.values()]
        keeps = dict(zip(weights, torch.split(keep_flat, sizes)))
        essential = {n: keeps[n].view(w.shape).clone() for n, w in weights.items()}
    else:
        essential = {
            n: _keep_mask(w.detach().abs().flatten().float(),
                          _redundant_count(ratio, w.numel())).view(w.shape)
            for n, w in weights.items()
        }
    dead = [n for n, m in essential.items() if not bool(m.any())]
    if dead:
        warnings.warn(f"pruning freed every entry of {len(dead)} tensor(s) ({dead[0]}, ...): "
                      "the source model loses them; scope='layer' ranks each tensor on its "
                      "own (global ranking favours tensors initialised at a larger scale, "
                      "such as an FNO's spectral weights)", stacklevel=3)
    for name, w in weights.items():
        w.masked_fill_(~essential[name], 0.0)
    return Masks(essential=essential, ratio=ratio, scope=scope, stage="pruned")
