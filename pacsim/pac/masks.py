"""The :class:`Masks` object: which weight entries belong to the source, and PAC's stage."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

STAGES = ("pruned", "allocated", "calibrated", "extended")
#: Names of the first two settings of every PAC network.
SOURCE, TARGET = "source", "target"

#: Layers whose weight is always a prunable matrix or kernel, whatever its shape.
MATRIX_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d,
                 nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
#: Normalisation layers: their parameters are never pruned.
NORM_LAYERS = tuple(t for t in (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm,
                                getattr(nn, "RMSNorm", None)) if t is not None)


def _is_weight(owner: nn.Module, leaf: str, p: nn.Parameter) -> bool:
    if leaf == "bias" or p.dim() < 2 or isinstance(owner, NORM_LAYERS):
        return False
    if isinstance(owner, MATRIX_LAYERS):
        return True
    return sum(s > 1 for s in p.shape) >= 2


def _matching(names: Iterable[str], patterns: Iterable[str]) -> dict[str, list[str]]:
    """For each pattern, the names it matches (in the order of ``names``)."""
    names = list(names)
    return {pat: [n for n in names if fnmatch.fnmatchcase(n, pat)] for pat in patterns}


def prunable_weights(model: nn.Module, include: Iterable[str] | None = None,
                     exclude: Iterable[str] = ()) -> dict[str, nn.Parameter]:
    """The prunable parameters of ``model`` by name, in parameter order.

    The rule: every weight of rank >= 2, real or complex (complex entries are ranked
    by their modulus), that is not a bias (a parameter named ``bias``), not a
    parameter of a normalisation layer (BatchNorm, InstanceNorm, GroupNorm, LayerNorm,
    RMSNorm) and not an elementwise scale (a tensor with at most one axis longer than
    1 outside a Linear/Conv layer, such as neuraloperator's soft gates (1, C, 1)). So:
    Linear and Conv weights, as in the paper, the spectral weights of Fourier layers,
    embedding tables.

    ``include``: name patterns that replace the rule (any parameter may be named);
    ``exclude``: name patterns left out. Patterns are ``fnmatch`` patterns on
    parameter names (``*`` also matches dots; a plain name matches itself); one that
    matches nothing is a ValueError naming it.
    """
    params = dict(model.named_parameters())
    if include is not None:
        hits = _matching(params, [include] if isinstance(include, str) else include)
        unmatched = sorted(pat for pat, found in hits.items() if not found)
        if unmatched:
            raise ValueError(f"include matches no parameter: {unmatched}")
        chosen = {n for found in hits.values() for n in found}
        out = {n: p for n, p in params.items() if n in chosen}
    else:
        owners = dict(model.named_modules())
        out = {}
        for name, p in params.items():
            mod_name, _, leaf = name.rpartition(".")
            if _is_weight(owners[mod_name], leaf, p):
                out[name] = p
    hits = _matching(out, [exclude] if isinstance(exclude, str) else exclude)
    unmatched = sorted(pat for pat, found in hits.items() if not found)
    if unmatched:
        raise ValueError(f"exclude names no prunable weight: {unmatched}")
    dropped = {n for found in hits.values() for n in found}
    return {n: p for n, p in out.items() if n not in dropped}


def bias_names(model: nn.Module, exclude: Iterable[str] = ()) -> list[str]:
    """Names of bias parameters (any parameter called ``bias``), minus ``exclude``."""
    skip = set(exclude)
    return [n for n, _ in model.named_parameters()
            if n.rsplit(".", 1)[-1] == "bias" and n not in skip]


class StageError(RuntimeError):
    """A PAC step was called in the wrong order (e.g. calibrate before allocate)."""


@dataclass
class Masks:
    """Which setting owns each prunable entry of one network, and PAC's stage.

    ``essential[name]`` is a bool tensor, True where the entry is kept for the source
    task; the rest are redundant and belong to the target. ``source_state`` holds the
    source values of anything calibrate lets diverge outside the redundant entries
    (BatchNorm running statistics, biases with ``train_biases=True``) so that
    :func:`pacsim.pac.source_view` can put them back.

    Several targets (:func:`pacsim.pac.extend`): ``settings`` names them in order
    (``"source"``, ``"target"``, then each added one), ``owner[name]`` is the index of
    the setting that owns each entry (None while there are only two: the source owns
    the essential entries, the target the rest), and ``setting_state[s]`` holds, for
    setting ``s`` after the first target, what its calibrate let diverge, as it was
    before (``source_state`` plays that part for the first target).
    """

    essential: dict[str, torch.Tensor]
    ratio: float
    scope: str = "global"
    stage: str = "pruned"
    source_state: dict[str, torch.Tensor] = field(default_factory=dict)
    settings: list[str] = field(default_factory=lambda: [SOURCE, TARGET])
    owner: dict[str, torch.Tensor] | None = None
    setting_state: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise ValueError(f"unknown PAC stage {self.stage!r}; expected one of {STAGES}")
        for name, m in self.essential.items():
            if not isinstance(m, torch.Tensor) or m.dtype != torch.bool:
                raise ValueError(f"essential[{name!r}] must be a bool tensor")
        if (len(self.settings) < 2 or len(set(self.settings)) != len(self.settings)
                or not all(isinstance(s, str) and s for s in self.settings)):
            raise ValueError(f"settings must be two or more distinct names, got "
                             f"{self.settings!r}")
        if self.owner is not None:
            for name, m in self.essential.items():
                o = self.owner.get(name)
                if o is None or o.shape != m.shape or o.dtype != torch.uint8:
                    raise ValueError(f"owner[{name!r}] must be a uint8 tensor of shape "
                                     f"{tuple(m.shape)}")
                if not torch.equal(o == 0, m) or int(o.max()) >= len(self.settings):
                    raise ValueError(f"owner[{name!r}] disagrees with the essential mask "
                                     "or names an unknown setting")
        elif len(self.settings) > 2:
            raise ValueError("more than two settings need an owner per entry")
        unknown = sorted(set(self.setting_state) - set(self.settings[2:]))
        if unknown:
            raise ValueError(f"setting_state names unknown settings {unknown}")

    # ----------------------------------------------------------------- settings
    def index(self, setting: str | int) -> int:
        """Position of ``setting`` (a name or an index) in :attr:`settings`."""
        if isinstance(setting, int) and not isinstance(setting, bool) \
                and 0 <= setting < len(self.settings):
            return setting
        if isinstance(setting, str) and setting in self.settings:
            return self.settings.index(setting)
        raise ValueError(f"unknown setting {setting!r}; this network serves "
                         f"{', '.join(self.settings)}")

    @property
    def latest(self) -> int:
        """Index of the newest setting: the one calibrate trains."""
        return len(self.settings) - 1

    def owners(self) -> dict[str, torch.Tensor]:
        """The owning setting's index of every prunable entry (uint8)."""
        if self.owner is not None:
            return self.owner
        return {n: (~m).to(torch.uint8) for n, m in self.essential.items()}

    def owned_by(self, setting: str | int) -> dict[str, torch.Tensor]:
        """Bool masks of the entries that ``setting`` owns."""
        k = self.index(setting)
        return {n: o == k for n, o in self.owners().items()}

    def visible_to(self, setting: str | int) -> dict[str, torch.Tensor]:
        """Bool masks of the entries ``setting``'s network uses: its own and those of
        every setting before it."""
        k = self.index(setting)
        return {n: o <= k for n, o in self.owners().items()}

    def state_before(self, setting: str | int) -> dict[str, torch.Tensor]:
        """What ``setting``'s calibrate let diverge, as it was before (saved in place)."""
        k = self.index(setting)
        if k == 0:
            raise ValueError("the source setting is never calibrated")
        if k == 1:
            return self.source_state
        return self.setting_state.setdefault(self.settings[k], {})

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
        if self.owner is not None:
            self.owner = {n: o.to(device) for n, o in self.owner.items()}
        self.setting_state = {s: {n: t.to(device) for n, t in st.items()}
                              for s, st in self.setting_state.items()}
        return self

    def state_dict(self) -> dict[str, Any]:
        """Tensors and plain values only, loadable with ``torch.load(weights_only=True)``."""
        return {
            "ratio": float(self.ratio),
            "scope": self.scope,
            "stage": self.stage,
            "essential": {n: m.cpu() for n, m in self.essential.items()},
            "source_state": {n: t.cpu() for n, t in self.source_state.items()},
            "settings": list(self.settings),
            "owner": None if self.owner is None else {n: o.cpu() for n, o in self.owner.items()},
            "setting_state": {s: {n: t.cpu() for n, t in st.items()}
                              for s, st in self.setting_state.items()},
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
            owner = state.get("owner")
            return cls(essential=dict(state["essential"]), ratio=float(state["ratio"]),
                       scope=str(state["scope"]), stage=str(state["stage"]),
                       source_state=dict(state.get("source_state", {})),
                       settings=[str(s) for s in state.get("settings", [SOURCE, TARGET])],
                       owner=None if owner is None else dict(owner),
                       setting_state={str(s): dict(st) for s, st in
                                      state.get("setting_state", {}).items()})
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not a Masks state dict: {exc}") from exc
