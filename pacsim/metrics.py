"""Regression metrics on tensors, exact over batches of unequal size.

Every metric is computed from mergeable sufficient statistics (sums, a maximum and the
targets' moments merged with Chan's update, in float64 on the tensors' device), so a
:class:`Accumulator` fed batch by batch gives what the one-shot function gives on the
concatenated data (to float64 rounding), and accumulating on
a GPU needs no host synchronisation until :meth:`Accumulator.compute`.
"""

from __future__ import annotations

import torch

from .data.stats import merge_moments
from .metric_names import (  # noqa: F401 - the names live there, importable without torch
    ABSOLUTE_METRICS,
    METRICS,
    PRIMARY,
    SOURCE_METRICS,
    TARGET_METRICS,
)

_EPS = 1e-12


def _check(pred: torch.Tensor, target: torch.Tensor) -> None:
    if pred.shape != target.shape:
        raise ValueError(
            f"prediction shape {tuple(pred.shape)} != target shape {tuple(target.shape)}"
        )
    if pred.dim() == 0 or pred.shape[0] == 0:
        raise ValueError(
            f"metrics need at least one sample on axis 0, got shape {tuple(pred.shape)}"
        )


class Accumulator:
    """Accumulates the statistics behind :data:`METRICS` over batches (samples on axis 0)."""

    def __init__(self) -> None:
        self._n = 0
        self._s: dict[str, torch.Tensor] = {}
        self._mean_t = self._m2_t = torch.zeros(())

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> Accumulator:
        """Add one batch; returns ``self`` so calls chain."""
        _check(pred, target)
        p = pred.detach().reshape(pred.shape[0], -1).double()
        t = target.detach().reshape(target.shape[0], -1).double()
        err = p - t
        sq = err.square()
        batch = {
            "sse": sq.sum(),
            "sae": err.abs().sum(),
            "max": err.abs().max(),
            "rel": (sq.sum(1).sqrt() / t.square().sum(1).sqrt().clamp_min(_EPS)).sum(),
            "sse_out": sq.sum(0),
        }
        mean_t = t.mean(0)
        m2_t = (t - mean_t).square().sum(0)
        n_b = p.shape[0]
        if not self._s:
            self._s = batch
            self._mean_t, self._m2_t = mean_t, m2_t
        else:
            if batch["sse_out"].shape != self._s["sse_out"].shape:
                raise ValueError(
                    f"batch has {batch['sse_out'].numel()} outputs per sample, earlier batches "
                    f"had {self._s['sse_out'].numel()}"
                )
            for k, v in batch.items():
                self._s[k] = torch.maximum(self._s[k], v) if k == "max" else self._s[k] + v
            _, self._mean_t, self._m2_t = merge_moments(self._n, self._mean_t, self._m2_t,
                                                        n_b, mean_t, m2_t)
        self._n += n_b
        return self

    @property
    def count(self) -> int:
        """Number of samples seen."""
        return self._n

    def compute(self) -> dict[str, float]:
        """All metrics of everything seen so far."""
        if not self._s:
            raise ValueError("no batches were accumulated")
        n = self._n
        s = {k: v.cpu() for k, v in self._s.items()}
        d = s["sse_out"].numel()
        ss_tot = self._m2_t.cpu()
        # constant targets: a spread below float64 noise relative to their mean
        zero_var = ss_tot <= n * (_EPS * self._mean_t.cpu().abs().clamp_min(1.0)).square()
        r2_out = torch.where(
            zero_var,
            (s["sse_out"] <= _EPS).double(),
            1.0 - s["sse_out"] / ss_tot.clamp_min(_EPS),
        )
        return {
            "rmse": float((s["sse"] / (n * d)).sqrt()),
            "nrmse": float(s["rel"] / n),
            "mae": float(s["sae"] / (n * d)),
            "max_error": float(s["max"]),
            "r2": float(r2_out.mean()),
        }


def _one(name: str, pred: torch.Tensor, target: torch.Tensor) -> float:
    return Accumulator().update(pred, target).compute()[name]


def rmse(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Root mean squared error over all entries."""
    return _one("rmse", pred, target)


def nrmse(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Per-sample relative L2 error ``||pred_i - y_i|| / ||y_i||``, averaged over samples."""
    return _one("nrmse", pred, target)


def mae(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Mean absolute error over all entries."""
    return _one("mae", pred, target)


def max_error(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Largest absolute error of any entry."""
    return _one("max_error", pred, target)


def r2(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Coefficient of determination per output entry, averaged (scikit-learn's uniform average)."""
    return _one("r2", pred, target)
