"""A model trained on normalised data, wrapped to take and give physical units."""

from __future__ import annotations

import torch
from torch import nn

from ..data.stats import Normalizer


class PhysicalModel(nn.Module):
    """``model`` trained on normalised data, wrapped to take and give physical units."""

    def __init__(self, model: nn.Module, normalizer: Normalizer) -> None:
        super().__init__()
        self.model = model
        for name in ("input_mean", "input_std", "target_mean", "target_std"):
            self.register_buffer(name, torch.as_tensor(getattr(normalizer, name),
                                                       dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.model((x - self.input_mean) / self.input_std)
        return y * self.target_std + self.target_mean
