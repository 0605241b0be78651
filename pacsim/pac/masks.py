"""The :class:`Masks` object: which weight entries belong to the source, and PAC's stage."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

STAGES = ("pruned", "allocated", "calibrated")

PRUNABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d,
            nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def prunable_weights(model: nn.Module) -> dict[str, nn.Parameter]:
    """Weight tensors of Linear/Conv layers, by parameter name (biases and norms excluded)."""
    out: dict[str, nn.Parameter] = {}
    for mod_name, mod in model.named_modules():
        if isinstance(mod, PRUNABLE) and isinstance(getattr(mod, "weight", None), nn.Parameter):
            out[f"{mod_name}.weight" if mod_name else "weight"] = mod.weight
    return out


def bias_names(model: nn.Module, exclude: Iterable[str] = ()) -> list[str]:
    """Names of bias parameters (any parameter called ``bias``), minus ``exclude``."""
    skip = set(exclude)
    return [n for n, _ in model.named_parameters()
            if n.rsplit(".", 1)[-1] == "bias" and n not in skip]


class StageError(RuntimeError):
    """A PAC step was called in the wrong order (e.g. calibrate before allocate)."""


@dataclass
class Masks:
    """Source/target split of a pruned model.

    ``essential[name]`` is a bool tensor, True where the entry is kept for the source
    task; the rest are redundant and belong to the target. ``source_state`` holds the
    source values of anything calibrate lets diverge outside the redundant entries
    (BatchNorm running statistics, biases with ``train_biases=True``) so that
    :func:`pacsim.pac.source_view` can put them back.
    """

    essential: dict[str, torch.Tensor]
    ratio: float
    scope: str = "global"
    stage: str = "pruned"
    source_state: dict[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise ValueError(f"unknown PAC stage {self.stage!r}; expected one of {STAGES}")
        for name, m in self.essential.items():
            if not isinstance(m, torch.Tensor) or m.dtype != torch.bool:
                raise ValueError(f"essential[{name!r}] must be a bool tensor")

    # ----------------------------------------------------------------- queries
    @property
    def redundant(self) -> dict[str, torch.Tensor]:
        """Complement of :attr:`essential`: entries that belong to the target."""
        return {n: ~m for n, m in self.essential.items()}

    def n_redundant(self) -> int:
        """Total number of redundant (target) entries."""
        return sum(int((~m).sum()) for m in self.essential.values())

    def n_total(self) -> int:
        """Total number of prunable entries."""
        return sum(m.numel() for m in self.essential.values())

    def summary(self) -> list[dict[str, Any]]:
        """One row per pruned tensor: name, shape, size, essential count and share."""
        rows = []
        for name, m in self.essential.items():
            kept = int(m.sum())
            rows.append({"name": name, "shape": list(m.shape), "numel": m.numel(),
                         "essential": kept, "essential_share": kept / m.numel()})
        return rows

    def check_model(self, model: nn.Module) -> dict[str, nn.Parameter]:
        """The masked weights of ``model``, checked against these masks."""
        params = dict(model.named_parameters())
        missing = sorted(set(self.essential) - set(params))
        if missing:
            raise ValueError(f"masks do not fit this model: it has no parameters {missing}")
        for name, m in self.essential.items():
            if params[name].shape != m.shape:
                raise ValueError(
                    f"mask {name!r} has shape {tuple(m.shape)}, "
                    f"the model's weight has {tuple(params[name].shape)}"
                )
        return {name: params[name] for name in self.essential}

    def require(self, *stages: str, action: str) -> None:
        """Refuse ``action`` unless the masks are in one of ``stages``."""
        if self.stage not in stages:
            raise StageError(f"{action} needs masks in stage {' or '.join(stages)}; "
                             f"they are {self.stage!r}")

    # ----------------------------------------------------------------- movement / io
    def to(self, device: torch.device | str) -> Masks:
        """Move every tensor to ``device`` in place; returns ``self``."""
        self.essential = {n: m.to(device) for n, m in self.essential.items()}
        self.source_state = {n: t.to(device) for n, t in self.source_state.items()}
        return self

    def state_dict(self) -> dict[str, Any]:
        """Tensors and plain values only, loadable with ``torch.load(weights_only=True)``."""
        return {
            "ratio": float(self.ratio),
            "scope": self.scope,
            "stage": self.stage,
            "essential": {n: m.cpu() for n, m in self.essential.items()},
            "source_state": {n: t.cpu() for n, t in self.source_state.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> Masks:
        """Replace this object's contents by ``state``; returns ``self``."""
        other = Masks.from_state_dict(state)
        self.__dict__.update(other.__dict__)
        return self

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> Masks:
        """Inverse of :meth:`state_dict`."""
        try:
            return cls(essential=dict(state["essential"]), ratio=float(state["ratio"]),
                       scope=str(state["scope"]), stage=str(state["stage"]),
                       source_state=dict(state.get("source_state", {})))
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not a Masks state dict: {exc}") from exc
