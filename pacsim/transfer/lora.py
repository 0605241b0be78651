"""LoRA as a transfer baseline: method ``lora`` (Hu et al., 2021), through peft.

Every layer peft's LoRA supports (``nn.Linear``, ``nn.Conv1d/2d/3d``) gets a low-rank
update ``W + (alpha / r) * B A``; only ``A`` and ``B`` train, through the same trainer
as every other method (an update mask), so selection, stacking and the benchmark run it
as they run the others. After training the update is merged into the weights and the
adapter removed: the result is a plain model of the registered class (its checkpoint a
plain state dict). Biases, normalisation layers and an FNO's spectral weights are not
adapted; on an FNO the lifting, projection and channel-MLP convolutions are, not the
skip convolutions (neuraloperator reads their ``out_channels``, which peft's wrapper
does not pass on). Opt-in (not in :data:`pacsim.transfer.METHODS`): it needs the
``lora`` extra (``pip install 'pacsim[lora]'``).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .methods import LR_GRID, TrainingPlan
from .options import Options
from .registry import Method, PlanContext, register

#: Layer types LoRA adapts (those peft's LoRA supports).
LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
#: Parents that read their layer's attributes, which a peft-wrapped layer lacks.
_SKIP_PARENTS = ("Flattened1dConv",)
_ADAPTER = "default"


@dataclass(frozen=True)
class LoRAOptions(Options):
    """``r``: rank of each low-rank update; ``alpha``: its scale is ``alpha / r``
    (None: ``r``, a scale of 1); ``dropout``: on the adapters' input (0 keeps the
    models stackable)."""

    r: int = 4
    alpha: float | None = None
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.r < 1:
            raise ValueError(f"lora r must be an integer >= 1, got {self.r!r}")
        if self.alpha is not None and not (math.isfinite(self.alpha) and self.alpha > 0):
            raise ValueError(f"lora alpha must be a finite number > 0, got {self.alpha!r}")
        if not (math.isfinite(self.dropout) and 0.0 <= self.dropout < 1.0):
            raise ValueError(f"lora dropout must lie in [0, 1), got {self.dropout!r}")


def lora_targets(model: nn.Module) -> list[str]:
    """Names of the modules of ``model`` that LoRA adapts."""
    return [name for name, m in model.named_modules()
            if isinstance(m, LAYERS) and name
            and type(model.get_submodule(name.rpartition(".")[0])).__name__
            not in _SKIP_PARENTS]


def _peft() -> Any:
    try:
        import peft
    except ImportError:
        raise ImportError("method 'lora' needs peft: pip install 'pacsim[lora]'") from None
    return peft


def merge(model: nn.Module) -> nn.Module:
    """``model`` with every LoRA adapter merged into its layer's weights and removed (in
    place; returned): the registered model class with its own parameter names."""
    from peft.tuners.lora import LoraLayer

    for name, m in list(model.named_modules()):
        if isinstance(m, LoraLayer):
            m.merge(adapter_names=[_ADAPTER])
            parent, _, leaf = name.rpartition(".")
            setattr(model.get_submodule(parent), leaf, m.get_base_layer())
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def _plan(source_model: nn.Module, opts: Options, ctx: PlanContext) -> TrainingPlan:
    """A copy of the source model with LoRA adapters (initialised from the training
    seed, the global random state untouched); only the adapters train."""
    assert isinstance(opts, LoRAOptions)
    peft = _peft()
    model = copy.deepcopy(source_model)
    targets = lora_targets(model)
    if not targets:
        raise ValueError(f"method 'lora': {type(model).__name__} has no layer LoRA adapts "
                         f"({', '.join(t.__name__ for t in LAYERS)})")
    config = peft.LoraConfig(r=opts.r, lora_alpha=opts.r if opts.alpha is None else opts.alpha,
                             lora_dropout=opts.dropout, target_modules=targets)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0 if ctx.seed is None else ctx.seed)
        model = peft.inject_adapter_in_model(config, model, adapter_name=_ADAPTER)
    update = {n: ".lora_" in n for n, _ in model.named_parameters()}
    return TrainingPlan(model, update, finish=merge)


register(Method("lora", LoRAOptions, {"lr": list(LR_GRID)}, _plan, default=False))
