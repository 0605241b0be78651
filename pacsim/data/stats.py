"""Normalisation statistics: computed in one streaming pass, applied the same way at
train and predict time, inverted for outputs, and saved with checkpoints."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

_TINY = 1e-12


def stat_shape(sample_shape: tuple[int, ...]) -> tuple[int, ...]:
    """Shape of per-feature statistics for samples of ``sample_shape``.

    Tabular samples ``(d,)`` get one value per feature; fields ``(C, X[, Y])`` one per
    channel, shaped ``(C, 1[, 1])`` so they broadcast over the grid; scalars one value.
    """
    if len(sample_shape) == 0:
        return ()
    if len(sample_shape) == 1:
        return (sample_shape[0],)
    return (sample_shape[0],) + (1,) * (len(sample_shape) - 1)


def merge_moments(n_a: int, mean_a: Any, m2_a: Any, n_b: int, mean_b: Any, m2_b: Any
                  ) -> tuple[int, Any, Any]:
    """Chan's parallel update: count, mean and sum of squared deviations of two blocks
    merged (numpy arrays or torch tensors alike), stable where sum-of-squares is not."""
    n = n_a + n_b
    delta = mean_b - mean_a
    return n, mean_a + delta * (n_b / n), m2_a + m2_b + delta**2 * (n_a * n_b / n)


class RunningMoments:
    """Mean and variance per feature/channel over blocks of samples (Chan's merge, float64)."""

    def __init__(self, sample_shape: tuple[int, ...]) -> None:
        self.shape = stat_shape(tuple(sample_shape))
        self._axes = (0,) + tuple(range(2, len(sample_shape) + 1)) if len(sample_shape) > 1 \
            else (0,)
        self.count = 0
        self.mean = np.zeros(self.shape)
        self.m2 = np.zeros(self.shape)

    def update(self, block: np.ndarray) -> None:
        """Add a block of samples (samples on axis 0)."""
        if block.shape[0] == 0:
            return
        b = block.astype(np.float64, copy=False)
        n_b = b.size // int(np.prod(self.shape, dtype=np.int64) or 1)
        mean_b = b.mean(axis=self._axes).reshape(self.shape)
        m2_b = ((b - mean_b) ** 2).sum(axis=self._axes).reshape(self.shape)
        self.count, self.mean, self.m2 = merge_moments(self.count, self.mean, self.m2,
                                                       n_b, mean_b, m2_b)

    def std(self) -> np.ndarray:
        """Population standard deviation; constant features get 1 so nothing divides by 0.
        Constant means a spread below float rounding of the mean (relative, so a feature
        in small SI units, 1e-13 with a 10 % spread, still counts as varying)."""
        std = np.sqrt(self.m2 / max(self.count, 1))
        floor = np.maximum(_TINY * np.abs(self.mean), np.finfo(np.float32).tiny)
        return np.where(std > floor, std, 1.0)


@dataclass
class Normalizer:
    """``(x - mean) / std`` for inputs and targets, with the inverse for outputs."""

    input_mean: np.ndarray
    input_std: np.ndarray
    target_mean: np.ndarray
    target_std: np.ndarray

    def inputs(self, x: Any) -> Any:
        """Normalise inputs (numpy array or tensor, samples on axis 0)."""
        return (x - self._like(self.input_mean, x)) / self._like(self.input_std, x)

    def targets(self, y: Any) -> Any:
        """Normalise targets."""
        return (y - self._like(self.target_mean, y)) / self._like(self.target_std, y)

    def inverse_inputs(self, x: Any) -> Any:
        """Map normalised inputs back to physical units."""
        return x * self._like(self.input_std, x) + self._like(self.input_mean, x)

    def inverse_targets(self, y: Any) -> Any:
        """Map normalised outputs back to physical units."""
        return y * self._like(self.target_std, y) + self._like(self.target_mean, y)

    @staticmethod
    def _like(stat: np.ndarray, ref: Any) -> Any:
        if isinstance(ref, np.ndarray):
            return stat.astype(ref.dtype, copy=False)
        import torch

        return torch.as_tensor(stat, dtype=ref.dtype, device=ref.device)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (nested lists keep the broadcasting shapes)."""
        return {k: np.asarray(getattr(self, k), dtype=np.float64).tolist()
                for k in ("input_mean", "input_std", "target_mean", "target_std")}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Normalizer:
        """Inverse of :meth:`to_dict`."""
        try:
            return cls(**{k: np.asarray(d[k], dtype=np.float32)
                          for k in ("input_mean", "input_std", "target_mean", "target_std")})
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not a normalizer description: {exc}") from exc

    def check(self) -> None:
        """Raise ``ValueError`` unless every mean is finite, every std finite and positive,
        and each side's mean and std have one shape."""
        for side in ("input", "target"):
            mean, std = getattr(self, f"{side}_mean"), getattr(self, f"{side}_std")
            if mean.shape != std.shape:
                raise ValueError(f"normalizer {side}_mean has shape {list(mean.shape)} but "
                                 f"{side}_std {list(std.shape)}")
            if not np.isfinite(mean).all():
                raise ValueError(f"normalizer {side}_mean holds NaN or inf")
            if not (np.isfinite(std).all() and (std > 0).all()):
                raise ValueError(f"normalizer {side}_std must be finite and positive "
                                 f"(min {float(np.min(std)) if std.size else 'n/a'})")
