"""Train a surrogate on a pacsim-h5 file, and transfer it to another setting's file.

These are ``pacsim train`` and ``pacsim transfer`` as functions. Both write a pacsim
checkpoint (model config, weights, PAC masks, the normalisation and a record of the data)
and return a summary dict; their settings are :class:`TrainSettings` and
:class:`TransferSettings`, checked before any file is read. Under ``torchrun`` they
train data-parallel (see :mod:`pacsim.distributed`): every rank reads its share of each
batch lazily from the file and only rank 0 prints and writes.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import pac
from ..data import H5Dataset, Normalizer
from ..data.format import FileInfo
from ..distributed import init_from_env, is_main, launched
from ..fsutil import check_not_input
from ..io import load_checkpoint, save_checkpoint
from ..models.physical import PhysicalModel
from ..models.sizing import default_model, for_data
from ..train import History, evaluate, fit
from ..transfer import Budget, TransferResult, select
from ..transfer.options import DEFAULT_GRIDS, TRAIN_GRID_KEYS
from .provenance import check_out, check_shapes, data_record, file_fingerprint, file_info
from .settings import TrainSettings, TransferSettings

Log = Callable[[str], Any]

#: Source data beyond this size stays on disk during allocate (read batch by batch).
_IN_MEMORY = "auto"


def _split(path: str | os.PathLike[str], split: str, normalize: bool | Normalizer
           ) -> H5Dataset | None:
    """One split of a file (None when empty); read lazily under torchrun."""
    ds = H5Dataset(path, split, normalize=normalize,
                   in_memory=False if launched() else _IN_MEMORY)
    return ds if len(ds) else None


def _trainable(ds: H5Dataset | None) -> Any:
    """What the trainer should get: the tensors when in memory, else the dataset."""
    if ds is None:
        return None
    return ds.tensors() if ds.in_memory else ds


def physical_metrics(model: nn.Module, normalizer: Normalizer, path: str | os.PathLike[str],
                     split: str, *, masks: pac.Masks | None = None, per_channel: bool = False,
                     device: str | torch.device | None = None) -> dict[str, Any] | None:
    """Metrics in physical units of ``model`` (trained on normalised data) on one split
    of ``path``; through the source view when ``masks`` are given. None for an empty split."""
    ds = _split(path, split, normalize=False)
    if ds is None:
        return None
    phys = PhysicalModel(model, normalizer)
    if masks is None:
        return evaluate(phys, ds, per_channel=per_channel, device=device)
    with pac.source_view(model, masks):
        return evaluate(phys, ds, per_channel=per_channel, device=device)


def _log(log: Log | None) -> Log:
    return (log or print) if is_main() else (lambda _msg: None)


def train_surrogate(data: str | os.PathLike[str], out: str | os.PathLike[str],
                    settings: TrainSettings | None = None, *, overwrite: bool = False,
                    progress: bool | None = None, log: Log | None = None) -> dict[str, Any]:
    """Fit a surrogate on ``data``'s train split, keep the epoch with the lowest loss on
    its val split, and write the checkpoint ``out``, as ``settings`` say (default
    :class:`TrainSettings`'s defaults).

    Returns the checkpoint's metadata (what was trained on, how, and its val metrics).
    """
    s = TrainSettings() if settings is None else settings
    say = _log(log)
    check_out(out, overwrite, data)
    info = file_info(data)
    name = default_model(info.input_shape) if s.model == "auto" else s.model
    torch.manual_seed(s.seed)
    net = for_data(name, info.input_shape, info.target_shape, s.options)
    dev = init_from_env(s.device)
    train = _split(data, "train", normalize=True)
    if train is None:
        raise ValueError(f"{data}: the train split is empty")
    val = _split(data, "val", normalize=True)
    if val is None:
        say(f"note: {data} has no val split; the last epoch is kept")
    say(f"training {name} ({sum(p.numel() for p in net.parameters()):,} parameters) on "
        f"{len(train)} samples of {data}, device {dev}")
    _check_training_memory(net, name, dev)
    history = _fit(net, name, (train, val), s, dev, progress)
    normalizer = train.normalizer
    assert normalizer is not None
    metrics = {"val": physical_metrics(net, normalizer, data, "val", device=dev)}
    meta = {
        "kind": "source",
        "model": name,
        "data": data_record(data, info),
        "train": _train_record(s, history),
        "metrics": metrics,
    }
    if metrics["val"] is not None:
        say(f"val RMSE {metrics['val']['rmse']:.4g} (physical units), nRMSE "
            f"{metrics['val']['nrmse']:.4g}, best epoch {(history.best_epoch or 0) + 1} "
            f"of {history.epochs_run}")
    _write(out, net, None, meta, normalizer, overwrite, say)
    return meta


def _fit(net: nn.Module, name: str, splits: tuple[H5Dataset, H5Dataset | None],
         s: TrainSettings, dev: torch.device, progress: bool | None) -> History:
    """Train ``net`` on the train and val ``splits``; running out of memory is one
    ValueError that names the model and what to try."""
    train, val = splits
    try:
        return fit(net, _trainable(train), val=_trainable(val), epochs=s.epochs, lr=s.lr,
                   batch_size=s.batch_size, weight_decay=s.weight_decay, optimizer=s.optimizer,
                   patience=s.patience, lr_schedule=s.lr_schedule, device=dev, seed=s.seed,
                   amp=s.amp, compile=s.compile, progress=progress if is_main() else False,
                   desc="train")
    except (MemoryError, RuntimeError) as exc:  # the allocator's, CUDA's out of memory
        text = str(exc).lower()
        if isinstance(exc, MemoryError) or "alloc" in text or "out of memory" in text:
            raise ValueError(f"not enough memory to train the model {name} on {dev} "
                             f"({_param_bytes(net) / 1e9:.3g} GB of parameters; try a "
                             "smaller model or --batch-size)") from None
        raise


def _train_record(s: TrainSettings, history: History) -> dict[str, Any]:
    """The checkpoint's record of how the source model was trained."""
    return {"epochs": s.epochs, "batch_size": s.batch_size, "lr": s.lr,
            "weight_decay": s.weight_decay, "optimizer": s.optimizer, "patience": s.patience,
            "lr_schedule": s.lr_schedule, "seed": s.seed, "amp": s.amp,
            "compile": s.compile if isinstance(s.compile, (bool, str)) else repr(s.compile),
            "best_epoch": history.best_epoch,
            "epochs_run": history.epochs_run, "seconds": history.seconds}


def _write(out: str | os.PathLike[str], model: nn.Module, masks: pac.Masks | None,
           meta: dict[str, Any], normalizer: Normalizer, overwrite: bool, say: Log) -> None:
    """Write the checkpoint (atomically, on rank 0 only) and say so."""
    if is_main():
        save_checkpoint(out, model, masks=masks, meta=meta, normalizer=normalizer,
                        overwrite=overwrite)
        say(f"wrote {out}")


#: Training holds about this many copies of the parameters: the weights, their
#: gradients, two Adam moments and the best epoch's weights.
_TRAINING_COPIES = 5


def _param_bytes(net: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in net.parameters())


def _check_training_memory(net: nn.Module, name: str, dev: torch.device) -> None:
    """Refuse, before the first epoch, a model whose training state cannot fit in the
    memory of ``dev`` (checked where it can be measured: CPU memory, CUDA free memory)."""
    from ..procutil import available_memory

    need = _TRAINING_COPIES * _param_bytes(net)
    avail: int | None = None
    if dev.type == "cuda":
        with contextlib.suppress(RuntimeError):
            avail = torch.cuda.mem_get_info(dev)[0]
    elif dev.type == "cpu" and (free := available_memory()) is not None:
        avail = free + _param_bytes(net)  # the weights are already in memory
    if avail is not None and need > avail:
        raise ValueError(f"not enough memory to train the model {name}: "
                         f"{sum(p.numel() for p in net.parameters()):,} parameters need "
                         f"about {need / 1e9:.3g} GB on {dev} (weights, gradients, "
                         f"optimiser state), {avail / 1e9:.3g} GB available")


def _grid_without(method: str, fixed: set[str]) -> Any:
    """The method's default grid less the options the user fixed."""
    grid = DEFAULT_GRIDS[method]
    tables = grid if isinstance(grid, list) else [grid]
    kept: list[dict[str, Any]] = []
    for table in tables:
        t = {k: v for k, v in table.items() if k not in fixed}
        if t not in kept:
            kept.append(t)
    kept = [t for t in kept if t] or [{}]
    return kept if len(kept) > 1 else kept[0]


def _recorded_files(meta: dict[str, Any]) -> list[str]:
    """The data files a checkpoint's metadata names (its source, its settings' data)."""
    setting_data = meta.get("setting_data")
    records = [meta.get("data"), meta.get("source_data"),
               *(setting_data.values() if isinstance(setting_data, dict) else [])]
    return [r["file"] for r in records if isinstance(r, dict) and isinstance(r.get("file"), str)]


def _source_data(ckpt: str | os.PathLike[str], meta: dict[str, Any],
                 source: str | os.PathLike[str] | None
                 ) -> tuple[Path, FileInfo, dict[str, Any]]:
    """The source data for PAC's allocate, validated, with its record: ``source`` or
    the file the checkpoint records (refused when its bytes changed since)."""
    recorded: dict[str, Any] = {}
    if source is not None:
        path = Path(source)
    else:
        recorded = (meta.get("source_data") if meta.get("kind") == "target"
                    else meta.get("data")) or {}
        if not isinstance(recorded, dict) or not isinstance(recorded.get("file"), str):
            raise ValueError(f"{ckpt} records no source data file; pass --source SOURCE.h5")
        path = Path(recorded["file"])
        if not path.is_file():
            raise FileNotFoundError(f"{path}: the source data recorded in {ckpt} is gone; "
                                    "pass --source SOURCE.h5")
    info = file_info(path)
    rec = data_record(path, info)
    if recorded.get("fingerprint") and rec["fingerprint"] != recorded["fingerprint"]:
        raise ValueError(f"{path} changed since {ckpt} was trained on it; pass --source "
                         "SOURCE.h5 to use it anyway")
    return path, info, rec


def _previous_samples(ckpt: str | os.PathLike[str], meta: dict[str, Any],
                      normalizer: Normalizer, say: Log) -> tuple[Any, Any] | None:
    """The samples a PAC checkpoint's newest setting was calibrated on (its recorded file,
    ``n`` and seed), so that setting can retrain what ``extend`` leaves it; None (with a
    note) when the file is gone or changed."""
    rec = meta.get("data") or {}
    path = Path(rec.get("file", ""))
    if not rec.get("file") or not path.is_file() or (
            rec.get("fingerprint") and file_fingerprint(path) != rec["fingerprint"]):
        say(f"note: the data {ckpt} was calibrated on is gone or changed; its setting "
            "keeps its remaining entries without retraining")
        return None
    pool = H5Dataset(path, "train", normalize=normalizer)
    n = int(meta.get("n") or len(pool))
    return pool.subset(n, seed=int(meta.get("seed", 0))) if n < len(pool) else pool.tensors()


def transfer_surrogate(checkpoint: str | os.PathLike[str], target: str | os.PathLike[str],
                       out: str | os.PathLike[str],
                       settings: TransferSettings | None = None, *,
                       overwrite: bool = False, progress: bool | None = None,
                       log: Log | None = None) -> dict[str, Any]:
    """Transfer the surrogate in ``checkpoint`` to ``target``'s train split and write
    ``out``, as ``settings`` say (default :class:`TransferSettings`'s defaults: PAC,
    hyper-parameters chosen by 5-fold CV on every target sample).

    PAC methods prune and allocate on the source data and store their masks, so the
    source view keeps serving the source setting. The target data is normalised with
    the checkpoint's statistics: one normalisation serves both settings. From a PAC
    checkpoint, PAC adds one more setting to the same network (:func:`pacsim.pac.extend`
    frees ``extend_ratio`` of the newest setting's entries for it, after retraining that
    setting's remaining entries for ``steps`` steps on the samples it was calibrated on,
    when its recorded file is unchanged; every earlier setting stays exact).
    ``method="auto"`` records the pick and every candidate's CV loss.
    Returns the new checkpoint's metadata.
    """
    s = TransferSettings() if settings is None else settings
    say = _log(log)
    check_out(out, overwrite, checkpoint, target, s.source)
    ckpt = _load(checkpoint, out)
    extending = _check_request(ckpt, s)
    normalizer = Normalizer.from_dict(ckpt.meta["normalizer"])
    extension = _extend(ckpt, normalizer, s, say) if extending else None
    info = _target_info(ckpt, target)
    dev = init_from_env(s.device)
    sample = _target_sample(target, info, normalizer, s)
    source = _source_inputs(ckpt, normalizer, s, extending, say)
    before = physical_metrics(ckpt.model, normalizer, target, "val", device=dev)
    res = _run(ckpt.model, sample, source, s, dev, progress, say)
    after = physical_metrics(res.model, normalizer, target, "val", device=dev)
    record = _record(ckpt, sample, res, s, {"target_val_before": before, "target_val": after})
    _report(say, "target val", before, after)
    if res.masks is not None:
        _record_settings(record, res.masks, ckpt, s, extension, say)
    if res.masks is not None and source.path is not None:
        record["source_data"] = source.record
        src_before, src_after = _source_metrics(ckpt, res, source.path, normalizer,
                                                extending, dev)
        record["metrics"].update(source_val_before=src_before, source_val_view=src_after)
        _report(say, "source val (source view)", src_before, src_after)
    _say_choice(say, s.resolved_method, res, sample.n)
    _write(out, res.model, res.masks, record, normalizer, overwrite, say)
    return record


@dataclass(frozen=True)
class _Checkpoint:
    """A loaded checkpoint and the path it came from."""

    path: str | os.PathLike[str]
    model: nn.Module
    masks: pac.Masks | None
    meta: dict[str, Any]


@dataclass(frozen=True)
class _Sample:
    """The target samples the transfer trains on (``groups``: their trajectories)."""

    path: str | os.PathLike[str]
    info: FileInfo
    n: int
    x: torch.Tensor
    y: torch.Tensor
    groups: Any


@dataclass(frozen=True)
class _Source:
    """What the transfer takes of the source: :func:`select`'s keywords for it, and the
    source data file (None when none is read) with its record."""

    kwargs: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None
    record: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class _Extension:
    """A setting added to a PAC network: the setting that gave up entries for it, and
    whether that setting was retrained on its own data."""

    newest: str
    retrained: bool


def _load(checkpoint: str | os.PathLike[str], out: str | os.PathLike[str]) -> _Checkpoint:
    """The checkpoint to transfer; refused when ``out`` is data it records (a PAC
    transfer may read it back) or it has no normalisation statistics."""
    model, masks, meta = load_checkpoint(checkpoint)
    check_not_input(out, *_recorded_files(meta))  # data the checkpoint may read back
    if "normalizer" not in meta:
        raise ValueError(f"{checkpoint} has no normalisation statistics (not written by "
                         "pacsim train)")
    return _Checkpoint(checkpoint, model, masks, meta)


def _check_request(ckpt: _Checkpoint, s: TransferSettings) -> bool:
    """Refuse a method or setting name that does not fit the checkpoint; True when PAC
    adds a setting to a PAC network."""
    method, is_pac = s.resolved_method, s.keeps_source
    if method == "auto" and ckpt.masks is not None:
        raise ValueError(f"{ckpt.path} is a PAC network: name the method that adds a "
                         "setting to it (--method pac), or --method auto --keep-source")
    extending = is_pac and ckpt.masks is not None
    setting = s.setting
    if setting is not None and not is_pac:
        raise ValueError(f"--setting names a setting of a PAC network; {method!r} makes one "
                         "network per setting")
    if setting is not None and not extending and (not setting.strip() or setting == "source"):
        raise ValueError(f"--setting {setting!r}: the new setting needs a non-empty name other "
                         "than 'source' (the source model's setting)")
    if extending and setting is None:
        assert ckpt.masks is not None
        raise ValueError(f"{ckpt.path} is already a PAC network serving "
                         f"{', '.join(ckpt.masks.settings)}; name the new setting with "
                         "--setting NAME to add it")
    return extending


def _extend(ckpt: _Checkpoint, normalizer: Normalizer, s: TransferSettings,
            say: Log) -> _Extension:
    """Free entries of the PAC network's newest setting for the new one (in place),
    retraining what that setting keeps on its own samples when they can be read."""
    assert ckpt.masks is not None and s.setting is not None
    previous = _previous_samples(ckpt.path, ckpt.meta, normalizer, say)
    retrain = ({} if previous is None else
               {"data": previous, "steps": s.steps, "lr": s.lr, "seed": s.seed,
                "batch_size": min(s.batch_size, len(previous[0])), "device": s.device,
                "weight_decay": s.weight_decay, "progress": False})
    newest = ckpt.masks.settings[ckpt.masks.latest]  # gives up entries to the new setting
    pac.extend(ckpt.model, ckpt.masks, s.setting, ratio=s.extend_ratio, **retrain)
    return _Extension(newest, retrained=previous is not None)


def _target_info(ckpt: _Checkpoint, target: str | os.PathLike[str]) -> FileInfo:
    """The target file, validated and checked against the model's sample shapes."""
    info = file_info(target)
    check_shapes(ckpt.model, ckpt.meta, ckpt.path, target, info)
    return info


def _target_sample(target: str | os.PathLike[str], info: FileInfo, normalizer: Normalizer,
                   s: TransferSettings) -> _Sample:
    """``s.n`` samples of the target's train split drawn by ``s.seed`` (default all),
    normalised with the checkpoint's statistics."""
    pool = H5Dataset(target, "train", normalize=normalizer)
    n_avail = len(pool)
    n = n_avail if s.n is None else s.n
    if not 0 < n <= n_avail:
        raise ValueError(f"--n {n}: {target} has {n_avail} samples in its train split")
    pos = pool.draw(n, seed=s.seed) if n < n_avail else slice(None)
    x, y = pool.tensors() if n == n_avail else pool[pos]
    groups = None if pool.groups is None else pool.groups[pos]  # CV keeps trajectories whole
    return _Sample(target, info, n, x, y, groups)


def _source_inputs(ckpt: _Checkpoint, normalizer: Normalizer, s: TransferSettings,
                   extending: bool, say: Log) -> _Source:
    """The source side of the transfer. Adding a setting: the PAC network itself (its
    source data only checks the source view, when it can be found). A PAC method or
    ``auto``: the source data allocate trains on (``auto`` goes on without the PAC
    methods, with a note, when there is none)."""
    if extending:
        try:
            path, _, record = _source_data(ckpt.path, ckpt.meta, s.source)
        except (ValueError, FileNotFoundError) as exc:
            say(f"note: no source view check ({exc})")
            path, record = None, {}
        return _Source({"allocated": (ckpt.model, ckpt.masks)}, path, record)
    if not (s.keeps_source or s.auto):
        return _Source()
    try:
        path, info, record = _source_data(ckpt.path, ckpt.meta, s.source)
    except (ValueError, FileNotFoundError) as exc:
        if s.keeps_source:
            raise
        say(f"note: auto without the PAC methods ({exc})")
        return _Source()
    return _Source(_allocate_inputs(ckpt, path, info, normalizer, s), path, record)


def _allocate_inputs(ckpt: _Checkpoint, path: Path, info: FileInfo, normalizer: Normalizer,
                     s: TransferSettings) -> dict[str, Any]:
    """:func:`select`'s keywords for PAC's allocate: the source train and val splits
    (normalised as the target) and the allocate budget, from the source training's
    epochs and batch size unless ``s.allocate_epochs`` is given."""
    check_shapes(ckpt.model, ckpt.meta, ckpt.path, path, info)
    train = _split(path, "train", normalize=normalizer)
    if train is None:
        raise ValueError(f"{path}: the train split is empty")
    val = _split(path, "val", normalize=normalizer)
    tr = ckpt.meta.get("train") or {}
    if not isinstance(tr, dict) or not all(
            isinstance(tr.get(k, 1), int) and tr.get(k, 1) >= 1
            for k in ("epochs", "batch_size")):
        raise ValueError(f"{ckpt.path}: damaged metadata (train epochs and batch_size "
                         "must be whole numbers >= 1)")
    epochs = (max(1, int(tr.get("epochs", 30)) // 3) if s.allocate_epochs is None
              else s.allocate_epochs)
    return {"source": _trainable(train), "source_val": _trainable(val),
            "allocate_kwargs": {"epochs": epochs, "batch_size": int(tr.get("batch_size", 64))}}


def _run(model: nn.Module, sample: _Sample, source: _Source, s: TransferSettings,
         dev: torch.device, progress: bool | None, say: Log) -> TransferResult:
    """Transfer ``model`` to the sample: one method, or ``auto``'s pick, with its
    hyper-parameters fixed or chosen by cross-validation on the sample."""
    method, cfg = s.resolved_method, s.selection_config
    say(f"{method}: {sample.n} target samples of {sample.path}, selection {s.selection}"
        + (f" ({cfg.folds}-fold CV)" if s.selection == "cv" else "") + f", device {dev}")
    fixed = set(s.options) | ({"lr"} if s.selection == "fixed" else set())
    grid = (_grid_without(method, fixed - set(TRAIN_GRID_KEYS))
            if s.selection == "cv" and not s.auto else None)
    budget = Budget(steps=s.steps, lr=s.lr, batch_size=s.batch_size,
                    stack="auto" if not launched() else False)
    return select(method, model, (sample.x, sample.y), budget, selection=cfg, grid=grid,
                  options=dict(s.options), seed=s.seed, device=dev,
                  weight_decay=s.weight_decay, progress=progress if is_main() else False,
                  groups=sample.groups, **source.kwargs)


def _record(ckpt: _Checkpoint, sample: _Sample, res: TransferResult, s: TransferSettings,
            metrics: dict[str, Any]) -> dict[str, Any]:
    """The new checkpoint's metadata: what was transferred, on which data, how, and
    the target metrics."""
    return {
        "kind": "target",
        "model": ckpt.meta.get("model"),
        "method": res.method,
        "options": res.extra.get("options", {}),
        "selection": {k: v for k, v in (res.selection or {}).items() if k != "curves"},
        "n": sample.n,
        "seed": s.seed,
        "source_checkpoint": {"file": str(Path(ckpt.path).resolve()),
                              "kind": ckpt.meta.get("kind")},
        "data": data_record(sample.path, sample.info),
        "source_data": ckpt.meta.get("data"),
        "train": {"steps": res.history.steps, "batch_size": s.batch_size, "lr": s.lr,
                  "weight_decay": s.weight_decay, "seconds": res.history.seconds},
        "metrics": metrics,
    }


def _record_settings(record: dict[str, Any], masks: pac.Masks, ckpt: _Checkpoint,
                     s: TransferSettings, extension: _Extension | None, say: Log) -> None:
    """Name the PAC network's new setting and record every setting's data; an added
    setting also says which setting gave up entries for it."""
    if extension is None and s.setting is not None:
        masks.settings[1] = s.setting
    name = masks.settings[masks.latest]
    record["settings"] = list(masks.settings)
    record["setting_data"] = {**ckpt.meta.get("setting_data", {}), name: record["data"]}
    if extension is None:
        return
    older = masks.settings[:-2]
    how = ("was retrained on its own data" if extension.retrained else
           "keeps its remaining entries without retraining")
    record["extended"] = {"setting": extension.newest, "ratio": s.extend_ratio,
                          "retrained": extension.retrained}
    say(f"added setting {name!r}: {extension.newest!r} gave up {s.extend_ratio:.0%} of its "
        f"entries to it and {how}, so its error changes"
        + (f"; {', '.join(repr(o) for o in older)} "
           + ("keeps its" if len(older) == 1 else "keep their") + " exact weights"
           if older else ""))


def _source_metrics(ckpt: _Checkpoint, res: TransferResult, path: Path,
                    normalizer: Normalizer, extending: bool, dev: torch.device
                    ) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """The source val metrics before the transfer (as the checkpoint recorded them, else
    measured) and through the new network's source view."""
    recorded = ckpt.meta.get("metrics") or {}
    before = recorded.get("source_val_before") if extending else recorded.get("val")
    if before is None:
        before = physical_metrics(ckpt.model, normalizer, path, "val", device=dev)
    after = physical_metrics(res.model, normalizer, path, "val", masks=res.masks, device=dev)
    return before, after


def _say_choice(say: Log, method: str, res: TransferResult, n: int) -> None:
    """Say what ``auto`` picked and what cross-validation chose."""
    if res.selection and "auto" in res.selection:
        losses = res.selection["auto"]["cv_loss"]
        say(f"{method} picked {res.method} (CV loss "
            + ", ".join(f"{m} {v:.4g}" for m, v in sorted(losses.items(), key=lambda kv: kv[1]))
            + ")")
    if res.selection and res.selection.get("mode") == "cv":
        say(f"chosen by CV on the {n} target samples: {json.dumps(res.selection['chosen'])}, "
            f"{res.selection['steps']} steps")


def _report(say: Log, what: str, before: dict[str, Any] | None,
            after: dict[str, Any] | None) -> None:
    if before is None or after is None:
        say(f"{what}: no samples")
        return
    say(f"{what} RMSE: {before['rmse']:.4g} before -> {after['rmse']:.4g} after "
        f"(nRMSE {before['nrmse']:.4g} -> {after['nrmse']:.4g})")
