"""What a checkpoint remembers of its data, and the checks that use it."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data.format import FileInfo, open_h5, validate
from ..data.inspect import describe_isolated
from ..fsutil import check_not_input, check_target, not_a_file

_OVERWRITE_HINT = "pass --overwrite (overwrite=True) to replace it"


def file_fingerprint(path: str | os.PathLike[str]) -> str:
    """SHA-256 of the file's bytes (first 16 hex digits), read in 4 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(4 << 20):
            h.update(block)
    return h.hexdigest()[:16]


def file_info(path: str | os.PathLike[str]) -> FileInfo:
    """Validate a pacsim-h5 file; a missing one is a FileNotFoundError naming it.

    The first read of a user's file happens in a forked child (:func:`describe_isolated`),
    so a file that crashes HDF5 itself ends in one :class:`DatasetError` line."""
    path = Path(path)
    why = not_a_file(path)
    if why is not None:
        raise FileNotFoundError(f"{path}: " + ("no such data file" if why == "no such file"
                                               else why))
    describe_isolated(path)
    with open_h5(path) as f:
        return validate(f, path)


def data_record(path: str | os.PathLike[str], info: FileInfo) -> dict[str, Any]:
    """The record a checkpoint keeps of a data file: where, which bytes, what setting."""
    return {
        "file": str(Path(path).resolve()),
        "fingerprint": file_fingerprint(path),
        "simulator": info.attrs.get("simulator"),
        "setting": info.attrs.get("setting"),
        "params": info.params,
        "input_shape": list(info.input_shape),
        "target_shape": list(info.target_shape),
    }


def check_out(path: str | os.PathLike[str] | None, overwrite: bool,
              *inputs: str | os.PathLike[str] | None) -> None:
    """Refuse an existing ``--out`` before any work is done (the write checks again), and
    one that is any of the command's ``inputs``, overwrite or not."""
    if path is not None:
        check_not_input(path, *inputs)
        check_target(Path(path), overwrite, _OVERWRITE_HINT)


def check_shapes(model: nn.Module, meta: dict[str, Any], ckpt: str | os.PathLike[str],
                 data: str | os.PathLike[str], info: FileInfo, targets: bool = True) -> None:
    """Refuse data whose sample shapes the checkpoint's model was not made for
    (``targets=False``: the inputs only, e.g. to predict).

    Checkpoints written by ``pacsim train`` record their shapes; for others one sample
    of zeros is passed through the model."""
    rec = meta.get("data") or {}
    want_x = tuple(rec["input_shape"]) if "input_shape" in rec else None
    want_y = tuple(rec["target_shape"]) if "target_shape" in rec else None
    if want_x is None:
        try:
            with torch.no_grad():
                was = model.training
                model.eval()
                out = model(torch.zeros((1, *info.input_shape)))
                model.train(was)
            want_x, want_y = info.input_shape, tuple(out.shape[1:])
        except Exception:  # noqa: BLE001 - any failure means "wrong input shape"
            want_x = None
    if want_x != info.input_shape or (targets and want_y != info.target_shape):
        made = (f"inputs {want_x} -> targets {want_y}" if want_x is not None
                else f"other inputs than {info.input_shape}")
        raise ValueError(f"{ckpt} was made for {made}; {data} has inputs "
                         f"{info.input_shape} -> targets {info.target_shape}")
