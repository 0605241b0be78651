"""Use a checkpoint on a pacsim-h5 file: predictions to a new file, or metrics.

``pacsim predict`` and ``pacsim evaluate`` as functions. Both work in physical units
(the checkpoint's normalisation is applied and undone) and read the file batch by batch,
so a file larger than memory works; ``source_view=True`` asks a PAC checkpoint for its
source setting.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import pac
from ..data.errors import DatasetError
from ..data.format import SPLITS, first_non_finite, open_h5
from ..data.reader import H5Dataset, read_rows
from ..data.stats import Normalizer
from ..data.writer import DatasetWriter
from ..device import resolve_device
from ..io import load_checkpoint
from ..metrics import ABSOLUTE_METRICS
from ..models.physical import PhysicalModel
from ..train import evaluate
from .provenance import check_out, check_shapes, file_fingerprint, file_info

PREDICT_SPLITS = (*SPLITS, "all")


def view_setting(source_view: bool, setting: str | None) -> str | None:
    """The setting ``--source-view`` and ``--setting`` ask for together (``source_view``
    is ``setting="source"``); both naming different settings is refused."""
    if source_view and setting not in (None, pac.SOURCE):
        raise ValueError(f"--source-view is --setting source, not --setting {setting}")
    return pac.SOURCE if source_view else setting


@contextlib.contextmanager
def _served(checkpoint: str | os.PathLike[str], setting: str | None, device: str
            ) -> Iterator[tuple[nn.Module, nn.Module, pac.Masks | None, dict[str, Any]]]:
    """``(physical model, bare model, masks, meta)``; inside ``setting``'s view if asked."""
    model, masks, meta = load_checkpoint(checkpoint)
    if setting is not None and masks is None:
        raise ValueError(f"{checkpoint} is not a PAC checkpoint (it has no masks); "
                         f"--{'source-view' if setting == pac.SOURCE else 'setting'} "
                         "needs one")
    phys = (PhysicalModel(model, Normalizer.from_dict(meta["normalizer"]))
            if "normalizer" in meta else model)
    phys.to(resolve_device(device)).eval()  # the wrapped model moves with it
    if setting is not None:
        assert masks is not None
        with pac.view(model, masks, setting):
            yield phys, model, masks, meta
    else:
        yield phys, model, masks, meta


def _check_split(split: str, allowed: tuple[str, ...]) -> None:
    if split not in allowed:
        raise ValueError(f"split must be one of {list(allowed)}, got {split!r}")


def evaluate_file(checkpoint: str | os.PathLike[str], data: str | os.PathLike[str], *,
                  split: str = "test", source_view: bool = False, setting: str | None = None,
                  device: str = "auto") -> dict[str, Any]:
    """Metrics of the checkpoint on one split of ``data``, in physical units: RMSE,
    nRMSE (mean relative L2 per sample, as PDEBench defines it), MAE, max error, R2, and
    per output channel for fields. ``setting`` (``source_view``: ``"source"``): that
    setting's network of a PAC checkpoint."""
    _check_split(split, SPLITS)
    info = file_info(data)
    setting = view_setting(source_view, setting)
    with _served(checkpoint, setting, device) as (phys, model, _, meta):
        check_shapes(model, meta, checkpoint, data, info)
        ds = H5Dataset(data, split, normalize=False)
        if not len(ds):
            raise ValueError(f"{data}: split {split!r} has no samples")
        metrics = evaluate(phys, ds, per_channel=True, device=resolve_device(device))
        if not all(np.isfinite(metrics[k]) for k in ABSOLUTE_METRICS):
            raise ValueError(_not_finite(checkpoint, _first_non_finite_prediction(
                phys, ds, resolve_device(device)), data, "no metrics"))
    return {"checkpoint": str(checkpoint), "data": str(data), "split": split,
            "n": int(info.splits[split].size), "setting": setting, **metrics}


def _not_finite(checkpoint: str | os.PathLike[str], row: int | None,
                inputs: str | os.PathLike[str], outcome: str) -> str:
    """The one line of a model whose predictions are not finite (predict and evaluate)."""
    which = "a prediction" if row is None else f"its prediction for sample {row}"
    return (f"{checkpoint}: {which} of {inputs} is not finite (a diverged model, or inputs "
            f"far outside its training range); {outcome}")


def _first_non_finite_prediction(phys: nn.Module, ds: H5Dataset, dev: torch.device,
                                 batch_size: int = 1024) -> int | None:
    """The file row of the first sample of ``ds`` whose prediction is not finite."""
    with torch.no_grad():
        for lo in range(0, len(ds), batch_size):
            pos = np.arange(lo, min(lo + batch_size, len(ds)))
            x, _ = ds[pos]
            bad = first_non_finite(phys(x.to(dev)).float().cpu().numpy())
            if bad is not None:
                return int(ds.indices[pos[bad]])
    return None


def predict_file(checkpoint: str | os.PathLike[str], inputs: str | os.PathLike[str],
                 out: str | os.PathLike[str], *, split: str = "test", setting: str | None = None,
                 batch_size: int = 1024, device: str = "auto", overwrite: bool = False) -> Path:
    """Predict the ``inputs`` of one split of a pacsim-h5 file (``"all"``: every sample,
    in file order) and write ``out``: a pacsim-h5 file with those inputs, the predictions
    as ``targets`` (physical units), all samples in its test split, and the checkpoint,
    source file and view in its attributes. Streams ``batch_size`` samples at a time;
    the file appears only when complete. ``setting``: that setting's network of a PAC
    checkpoint (``"source"``: its source view, ``pacsim predict --source-view``)."""
    _check_split(split, PREDICT_SPLITS)
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    check_out(out, overwrite, checkpoint, inputs)
    info = file_info(inputs)
    rows = (np.arange(info.n) if split == "all" else np.sort(info.splits[split]))
    if rows.size == 0:
        raise ValueError(f"{inputs}: split {split!r} has no samples")
    dev = resolve_device(device)
    attrs = {"predicted_by": str(Path(checkpoint).resolve()),
             "checkpoint_fingerprint": file_fingerprint(checkpoint),
             "predicted_from": str(Path(inputs).resolve()),
             "predicted_split": split, "predicted_setting": setting or "",
             "source_view": setting == pac.SOURCE}
    with _served(checkpoint, setting, device) as (phys, model, _, meta), \
            open_h5(Path(inputs)) as f, torch.no_grad():
        check_shapes(model, meta, checkpoint, inputs, info, targets=False)
        writer: DatasetWriter | None = None
        try:
            for lo in range(0, rows.size, batch_size):
                x = read_rows(f["inputs"], rows[lo:lo + batch_size])
                if (bad := first_non_finite(x)) is not None:
                    raise DatasetError(f"{inputs}: inputs contain NaN or inf (sample "
                                       f"{int(rows[lo + bad])}); nothing was written")
                pred = phys(torch.from_numpy(np.ascontiguousarray(x, np.float32)).to(dev))
                pred = pred.float().cpu().numpy()
                if (bad := first_non_finite(pred)) is not None:  # the model's fault
                    raise ValueError(_not_finite(checkpoint, int(rows[lo + bad]), inputs,
                                                 "nothing was written"))
                if writer is None:
                    writer = DatasetWriter(
                        out, input_shape=info.input_shape, target_shape=pred.shape[1:],
                        simulator=str(info.attrs.get("simulator", "unknown")),
                        setting=str(info.attrs.get("setting", "unknown")),
                        params=info.params, seed=int(info.attrs.get("seed", 0)),
                        coords=info.coords or None, input_names=info.input_names,
                        split=(0.0, 0.0, 1.0), overwrite=overwrite, attrs=attrs)
                writer.append(x, pred)
        except BaseException:
            if writer is not None:
                writer.abort()
            raise
    assert writer is not None
    return writer.close()
