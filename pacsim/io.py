"""Checkpoints: one file with tensors and a JSON config, loaded without unpickling code.

A checkpoint is written with :func:`torch.save` but holds only tensors, strings and
numbers, so :func:`load_checkpoint` can use ``torch.load(weights_only=True)``: a crafted
file cannot execute code. The model is rebuilt from its registry config
(:func:`pacsim.models.build`). Writes go to a temporary file in the same folder that is
renamed into place, so an interrupted save never leaves a half-written checkpoint.
"""

from __future__ import annotations

import copy
import json
import os
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import __version__
from .data.stats import Normalizer, stat_shape
from .fsutil import atomic_write, disk_error, not_a_file
from .models.physical import PhysicalModel
from .models.registry import build, model_class, registered
from .pac.masks import Masks
from .pac.view import view as pac_view

FORMAT = "pacsim-checkpoint"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A file is missing, unreadable, or not a pacsim checkpoint."""


def save_checkpoint(path: str | os.PathLike[str], model: nn.Module, masks: Masks | None = None,
                    meta: dict[str, Any] | None = None,
                    normalizer: Normalizer | None = None, overwrite: bool = False) -> Path:
    """Save ``model`` (a registered pacsim model), optional PAC ``masks`` and JSON ``meta``.

    Like the data writers, an existing file is kept unless ``overwrite`` (and nothing but
    a regular file is ever replaced); the write is atomic.

    ``normalizer``: the data statistics the model was trained with; they come back as
    ``meta["normalizer"]`` and :func:`load_predictor` uses them to predict in physical units.
    Models are float32 (complex64 spectral weights), as pacsim trains them; another
    precision is refused, since loading rebuilds float32 models.
    """
    if not hasattr(model, "config"):
        raise ValueError(
            f"{type(model).__name__} has no config(); register it with "
            "@pacsim.models.register(name) and subclass pacsim.models.Configurable"
        )
    from .train import check_float32

    check_float32(model)  # loads rebuild float32 models: another precision would not survive
    try:
        meta_json = json.dumps(meta or {})
    except TypeError as exc:
        raise ValueError(f"checkpoint meta must be JSON-serialisable: {exc}") from exc
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    # what load_checkpoint refuses is never written: NaN/inf weights, unusable statistics
    _check_finite(state, f"{path}: not saved: ")
    if normalizer is not None:
        try:
            _check_normalizer(normalizer, model.config(), meta or {})
        except ValueError as exc:
            raise ValueError(f"{path}: not saved: {exc}") from None
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "created_with": __version__,
        "config": json.dumps(model.config()),
        "state_dict": state,
        "masks": None if masks is None else masks.state_dict(),
        "meta": meta_json,
        "normalizer": None if normalizer is None else json.dumps(normalizer.to_dict()),
    }
    return atomic_write(path, lambda tmp: _write(payload, tmp, path), overwrite=overwrite)


def _write(payload: dict[str, Any], tmp: Path, path: str | os.PathLike[str]) -> None:
    """``torch.save`` into ``tmp`` through a file object (the archive's root folder is
    then ``archive/``, not the temporary name); a full disk is one OSError naming
    ``path`` (torch reports it as a RuntimeError of its zip writer)."""
    try:
        with open(tmp, "wb") as f:
            torch.save(payload, f)
    except (OSError, RuntimeError) as exc:
        err = disk_error(exc, path)
        if err is not None:
            raise err from None
        if isinstance(exc, OSError):
            raise OSError(exc.errno, exc.strerror or str(exc), os.fspath(path)) from None
        raise


def load_checkpoint(path: str | os.PathLike[str], map_location: str | torch.device = "cpu"
                    ) -> tuple[nn.Module, Masks | None, dict[str, Any]]:
    """Load ``(model, masks, meta)`` from a file written by :func:`save_checkpoint`; the
    model and masks on ``map_location``."""
    why = not_a_file(path)
    path = Path(path)
    if why is not None:
        why = "no such checkpoint file" if why == "no such file" else why
        raise CheckpointError(f"{path}: {why}")
    with open(path, "rb") as f:
        if f.read(8) == b"\x89HDF\r\n\x1a\n":  # the HDF5 signature
            raise CheckpointError(f"{path}: an HDF5 data file, not a pacsim checkpoint")
    _check_archive(path)
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure means "not a checkpoint we trust"
        if "weights only load failed" in str(exc).lower():
            first = "contains pickled code or objects; refused"
        else:
            text = str(exc).strip()
            first = text.splitlines()[0][:200] if text else type(exc).__name__
        raise CheckpointError(f"{path}: not a pacsim checkpoint ({first})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a pacsim checkpoint (no '{FORMAT}' marker)")
    if payload.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: unsupported checkpoint version {payload.get('format_version')!r} "
            f"(this pacsim reads version {FORMAT_VERSION})"
        )
    try:
        model = build(json.loads(payload["config"]))
        _load_state(model, payload["state_dict"])
        if isinstance(map_location, (str, torch.device)):
            model.to(map_location)  # with the masks, which torch.load put there
        masks = None if payload["masks"] is None else Masks.from_state_dict(payload["masks"])
        if masks is not None:
            masks.check_model(model)
        meta = json.loads(payload["meta"])
        if payload.get("normalizer") is not None:
            meta["normalizer"] = json.loads(payload["normalizer"])
            _check_normalizer(Normalizer.from_dict(meta["normalizer"]), model.config(), meta)
        _check_finite(payload["state_dict"])
    except (KeyError, ValueError, RuntimeError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: damaged pacsim checkpoint ({first[:200]})") from None
    return model, masks, meta


def _check_archive(path: Path) -> None:
    """Verify the CRC-32 that torch's zip archive records for every member (torch.load
    itself does not), so a flipped bit in a weight is refused rather than loaded."""
    try:
        if not zipfile.is_zipfile(path):
            return  # not an archive: torch.load says what it is
        with zipfile.ZipFile(path) as zf:
            bad = zf.testzip()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError,
            NotImplementedError) as exc:
        raise CheckpointError(f"{path}: damaged checkpoint (its zip archive is "
                              f"unreadable: {str(exc).strip() or type(exc).__name__})") from None
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    if bad is not None:
        member = bad.split("/", 1)[-1]  # without the archive's root folder
        raise CheckpointError(f"{path}: damaged checkpoint (member {member!r} fails its CRC "
                              "check: the file was changed or corrupted after saving)")


def _load_state(model: nn.Module, state: Any) -> None:
    """``load_state_dict`` that names missing, unexpected and mis-shaped entries."""
    if not isinstance(state, dict):
        raise ValueError("state_dict is not a mapping")
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {list(state[k].shape)} (model {list(v.shape)})" for k, v in own.items()
              if isinstance(state.get(k), torch.Tensor) and state[k].shape != v.shape]
    parts = [f"{what} {', '.join(keys[:5])}" + (f" and {len(keys) - 5} more" if len(keys) > 5
                                                  else "")
             for what, keys in (("missing", missing), ("unexpected", unexpected),
                                ("wrong shape", shapes)) if keys]
    if parts:
        raise ValueError(f"weights do not fit the {type(model).__name__}: " + "; ".join(parts))
    model.load_state_dict(state)


def _check_finite(state: dict[str, Any], prefix: str = "") -> None:
    """Refuse NaN or inf in any floating-point (or complex) tensor of a state dict."""
    bad = [k for k, v in state.items() if isinstance(v, torch.Tensor)
           and (v.is_floating_point() or v.is_complex()) and not bool(torch.isfinite(v).all())]
    if bad:
        raise ValueError(f"{prefix}weights hold NaN or inf: {', '.join(bad[:5])}")


def _expected_stat_shapes(config: dict[str, Any], meta: dict[str, Any]
                          ) -> tuple[tuple[int, ...] | None, tuple[int, ...] | None]:
    """Statistics shapes implied by the recorded data shapes, else by the model config."""
    data = meta.get("data")
    if isinstance(data, dict) and "input_shape" in data and "target_shape" in data:
        return (stat_shape(tuple(data["input_shape"])),
                stat_shape(tuple(data["target_shape"])))
    name = config.get("name")
    shapes = model_class(name).stat_shapes(config) if name in registered() else None
    return shapes if shapes is not None else (None, None)


def _check_normalizer(norm: Normalizer, config: dict[str, Any], meta: dict[str, Any]) -> None:
    """Finite statistics, positive stds, shapes that fit the data or the model."""
    norm.check()
    expected = _expected_stat_shapes(config, meta)
    for side, want in zip(("input", "target"), expected):
        have = tuple(getattr(norm, f"{side}_mean").shape)
        if want is not None and have != want:
            raise ValueError(f"normalizer {side} statistics have shape {list(have)}, the "
                             f"model's data needs {list(want)}")
        dim = config.get("in_dim" if side == "input" else "out_dim")
        if want is None and len(have) == 1 and isinstance(dim, int) and have[0] != dim:
            raise ValueError(f"normalizer {side} statistics have {have[0]} features, the "
                             f"model {dim}")


def load_predictor(path: str | os.PathLike[str], map_location: str | torch.device = "cpu",
                   setting: str | None = None) -> nn.Module:
    """The checkpoint's model in eval mode, mapping physical inputs to physical outputs.

    Without saved statistics this is the bare model. ``setting``: for a PAC checkpoint,
    the network of that setting (``"source"``, ``"target"`` or a name given to
    :func:`pacsim.pac.extend`), as a model of its own.
    """
    model, masks, meta = load_checkpoint(path, map_location)
    if setting is not None:
        if masks is None:
            raise CheckpointError(f"{path}: not a PAC checkpoint (no masks); it serves one "
                                  "setting only")
        with pac_view(model, masks, setting) as m:
            model = copy.deepcopy(m)
    if "normalizer" in meta:
        model = PhysicalModel(model, Normalizer.from_dict(meta["normalizer"]))
    return model.eval()
