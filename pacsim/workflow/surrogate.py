"""Train a surrogate on a pacsim-h5 file, and transfer it to another setting's file.

These are ``pacsim train`` and ``pacsim transfer`` as functions. Both write a pacsim
checkpoint (model config, weights, PAC masks, the normalisation and a record of the data)
and return a summary dict. Under ``torchrun`` they train data-parallel (see
:mod:`pacsim.distributed`): every rank reads its share of each batch lazily from the
file and only rank 0 prints and writes.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Mapping
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
from ..train import evaluate, fit
from ..transfer import SelectionConfig, select
from ..transfer.options import DEFAULT_GRIDS, TRAIN_GRID_KEYS, method_options
from ..transfer.registry import get, names
from ..transfer.selection import AUTO_METHODS
from .provenance import check_out, check_shapes, data_record, file_fingerprint, file_info

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


def train_surrogate(data: str | os.PathLike[str], out: str | os.PathLike[str], *,
                    model: str = "auto", options: Mapping[str, Any] | None = None,
                    epochs: int = 100, batch_size: int = 64, lr: float = 1e-3,
                    weight_decay: float = 0.0, optimizer: str = "adam",
                    patience: int | None = None, lr_schedule: str | None = "cosine",
                    device: str = "auto", seed: int = 0, amp: bool = False,
                    compile: bool | str | Mapping[str, Any] = False, overwrite: bool = False,
                    progress: bool | None = None, log: Log | None = None) -> dict[str, Any]:
    """Fit a surrogate on ``data``'s train split, keep the epoch with the lowest loss on
    its val split, and write the checkpoint ``out``.

    ``model``: ``"mlp"``, ``"cnn"`` or ``"auto"`` (mlp for flat samples, cnn for fields),
    sized from the data; ``options`` are the model's other arguments (e.g. ``width``).
    ``compile``: the training forward through ``torch.compile`` (see
    :func:`pacsim.train.fit`). Returns the checkpoint's metadata (what was trained on,
    how, and its val metrics).
    """
    say = _log(log)
    if epochs < 1:
        raise ValueError(f"--epochs must be >= 1, got {epochs}")
    check_out(out, overwrite, data)
    info = file_info(data)
    name = default_model(info.input_shape) if model == "auto" else model
    torch.manual_seed(seed)
    net = for_data(name, info.input_shape, info.target_shape, options)
    dev = init_from_env(device)
    train = _split(data, "train", normalize=True)
    if train is None:
        raise ValueError(f"{data}: the train split is empty")
    val = _split(data, "val", normalize=True)
    if val is None:
        say(f"note: {data} has no val split; the last epoch is kept")
    say(f"training {name} ({sum(p.numel() for p in net.parameters()):,} parameters) on "
        f"{len(train)} samples of {data}, device {dev}")
    _check_training_memory(net, name, dev)
    try:
        history = fit(net, _trainable(train), val=_trainable(val), epochs=epochs, lr=lr,
                      batch_size=batch_size, weight_decay=weight_decay, optimizer=optimizer,
                      patience=patience, lr_schedule=lr_schedule, device=dev, seed=seed,
                      amp=amp, compile=compile, progress=progress if is_main() else False,
                      desc="train")
    except (MemoryError, RuntimeError) as exc:  # the allocator's, CUDA's out of memory
        text = str(exc).lower()
        if isinstance(exc, MemoryError) or "alloc" in text or "out of memory" in text:
            raise ValueError(f"not enough memory to train the model {name} on {dev} "
                             f"({_param_bytes(net) / 1e9:.3g} GB of parameters; try a "
                             "smaller model or --batch-size)") from None
        raise
    normalizer = train.normalizer
    assert normalizer is not None
    metrics = {"val": physical_metrics(net, normalizer, data, "val", device=dev)}
    meta = {
        "kind": "source",
        "model": name,
        "data": data_record(data, info),
        "train": {"epochs": epochs, "batch_size": batch_size, "lr": lr,
                  "weight_decay": weight_decay, "optimizer": optimizer, "patience": patience,
                  "lr_schedule": lr_schedule, "seed": seed, "amp": amp,
                  "compile": compile if isinstance(compile, (bool, str)) else repr(compile),
                  "best_epoch": history.best_epoch,
                  "epochs_run": history.epochs_run, "seconds": history.seconds},
        "metrics": metrics,
    }
    if metrics["val"] is not None:
        say(f"val RMSE {metrics['val']['rmse']:.4g} (physical units), nRMSE "
            f"{metrics['val']['nrmse']:.4g}, best epoch {(history.best_epoch or 0) + 1} "
            f"of {history.epochs_run}")
    if is_main():
        save_checkpoint(out, net, meta=meta, normalizer=normalizer, overwrite=overwrite)
        say(f"wrote {out}")
    return meta


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
                       out: str | os.PathLike[str], *, method: str = "pac",
                       n: int | None = None, options: Mapping[str, Any] | None = None,
                       source: str | os.PathLike[str] | None = None,
                       selection: str = "cv", folds: int = 5, steps: int = 500,
                       lr: float = 1e-3, batch_size: int = 32, weight_decay: float = 0.0,
                       allocate_epochs: int | None = None, device: str = "auto",
                       seed: int = 0, setting: str | None = None, extend_ratio: float = 0.5,
                       keep_source: bool = False, overwrite: bool = False,
                       progress: bool | None = None, log: Log | None = None
                       ) -> dict[str, Any]:
    """Transfer the surrogate in ``checkpoint`` to ``target``'s train split (its first
    ``n`` samples drawn by ``seed``, default all) with ``method`` and write ``out``.

    ``selection="cv"`` chooses the learning rate, the method's options that ``options``
    does not fix, and the step count (up to ``3 * steps``) by ``folds``-fold
    cross-validation on those samples only, then retrains on all of them;
    ``"fixed"`` trains ``steps`` steps at ``lr`` with ``options``. PAC methods prune and
    allocate on the source data (``source`` or the file the checkpoint records) for up to
    ``allocate_epochs`` (default: a third of the source training's epochs) and store
    their masks, so the source view keeps serving the source setting.
    The target data is normalised with the checkpoint's statistics: one normalisation
    serves both settings. ``setting`` names the new setting of a PAC network (default
    ``"target"``); from a PAC checkpoint it is required and adds one more setting to the
    same network (:func:`pacsim.pac.extend` frees ``extend_ratio`` of the newest
    setting's entries for it, after retraining that setting's remaining entries for
    ``steps`` steps on the samples it was calibrated on, when its recorded file is
    unchanged; every earlier setting stays exact).
    ``method="auto"`` runs every method's cross-validation on the same folds and
    retrains the one with the lowest CV loss (``keep_source``: among the PAC methods only,
    so the source view stays exact); the checkpoint records the pick and every
    candidate's CV loss.
    Returns the new checkpoint's metadata.
    """
    say = _log(log)
    if keep_source and method != "auto":
        raise ValueError(f"--keep-source chooses among PAC methods with --method auto; "
                         f"{method!r} is one method")
    if method == "auto" and keep_source:
        method = "auto-keep-source"
    auto = method in AUTO_METHODS
    if method not in names() and not auto:
        raise ValueError(f"unknown method {method!r}; choose one of "
                         f"{[*names(), 'auto']}")
    opts = dict(options or {})
    if auto and opts:
        raise ValueError(f"--method {method} takes no --set: each candidate searches its own "
                         "default grid")
    if auto and selection != "cv":
        raise ValueError(f"--method {method} chooses by cross-validation: it needs --select cv")
    if not auto:
        method_options(method, opts)  # a bad option fails before anything is read
    if allocate_epochs is not None and allocate_epochs < 1:
        raise ValueError(f"--allocate-epochs must be >= 1, got {allocate_epochs}")
    cfg = SelectionConfig(mode=selection, folds=folds)
    check_out(out, overwrite, checkpoint, target, source)
    model, masks, meta = load_checkpoint(checkpoint)
    check_not_input(out, *_recorded_files(meta))  # data the checkpoint may read back
    if "normalizer" not in meta:
        raise ValueError(f"{checkpoint} has no normalisation statistics (not written by "
                         "pacsim train)")
    is_pac = method == "auto-keep-source" or (not auto and get(method).keeps_source)
    if method == "auto" and masks is not None:
        raise ValueError(f"{checkpoint} is a PAC network: name the method that adds a "
                         "setting to it (--method pac), or --method auto --keep-source")
    extending = is_pac and masks is not None
    if setting is not None and not is_pac:
        raise ValueError(f"--setting names a setting of a PAC network; {method!r} makes one "
                         "network per setting")
    if setting is not None and not extending and (not setting.strip() or setting == "source"):
        raise ValueError(f"--setting {setting!r}: the new setting needs a non-empty name other "
                         "than 'source' (the source model's setting)")
    if extending and setting is None:
        assert masks is not None
        raise ValueError(f"{checkpoint} is already a PAC network serving "
                         f"{', '.join(masks.settings)}; name the new setting with "
                         "--setting NAME to add it")
    normalizer = Normalizer.from_dict(meta["normalizer"])
    if extending:
        assert masks is not None and setting is not None
        previous = _previous_samples(checkpoint, meta, normalizer, say)
        retrain = ({} if previous is None else
                   {"data": previous, "steps": steps, "lr": lr, "seed": seed,
                    "batch_size": min(batch_size, len(previous[0])), "device": device,
                    "weight_decay": weight_decay, "progress": False})
        newest = masks.settings[masks.latest]  # gives up entries to the new setting
        pac.extend(model, masks, setting, ratio=extend_ratio, **retrain)
    info = file_info(target)
    check_shapes(model, meta, checkpoint, target, info)
    dev = init_from_env(device)
    pool = H5Dataset(target, "train", normalize=normalizer)
    n_avail = len(pool)
    n = n_avail if n is None else n
    if not 0 < n <= n_avail:
        raise ValueError(f"--n {n}: {target} has {n_avail} samples in its train split")
    pos = pool.draw(n, seed=seed) if n < n_avail else slice(None)
    x, y = pool.tensors() if n == n_avail else pool[pos]
    groups = None if pool.groups is None else pool.groups[pos]  # CV keeps trajectories whole
    kwargs: dict[str, Any] = {}
    src_path: Path | None = None
    src_record: dict[str, Any] = {}
    if extending:
        kwargs["allocated"] = (model, masks)
        try:
            src_path, _, src_record = _source_data(checkpoint, meta, source)
        except (ValueError, FileNotFoundError) as exc:
            say(f"note: no source view check ({exc})")
    elif is_pac or auto:
        try:
            src_path, src_info, src_record = _source_data(checkpoint, meta, source)
        except (ValueError, FileNotFoundError) as exc:
            if is_pac:
                raise
            say(f"note: auto without the PAC methods ({exc})")
    if src_path is not None and not extending:
        check_shapes(model, meta, checkpoint, src_path, src_info)
        src_train = _split(src_path, "train", normalize=normalizer)
        if src_train is None:
            raise ValueError(f"{src_path}: the train split is empty")
        src_val = _split(src_path, "val", normalize=normalizer)
        tr = meta.get("train") or {}
        if not isinstance(tr, dict) or not all(
                isinstance(tr.get(k, 1), int) and tr.get(k, 1) >= 1
                for k in ("epochs", "batch_size")):
            raise ValueError(f"{checkpoint}: damaged metadata (train epochs and batch_size "
                             "must be whole numbers >= 1)")
        alloc_epochs = (max(1, int(tr.get("epochs", 30)) // 3) if allocate_epochs is None
                        else allocate_epochs)
        kwargs.update(source=_trainable(src_train), source_val=_trainable(src_val),
                      allocate_kwargs={"epochs": alloc_epochs,
                                       "batch_size": int(tr.get("batch_size", 64))})
    before = physical_metrics(model, normalizer, target, "val", device=dev)
    say(f"{method}: {n} target samples of {target}, selection {selection}"
        + (f" ({cfg.folds}-fold CV)" if selection == "cv" else "") + f", device {dev}")
    fixed = set(opts) | ({"lr"} if selection == "fixed" else set())
    grid = (_grid_without(method, fixed - set(TRAIN_GRID_KEYS))
            if selection == "cv" and not auto else None)
    res = select(method, model, (x, y), selection=cfg, steps=steps, grid=grid, options=opts,
                 lr=lr, batch_size=batch_size, seed=seed, device=dev,
                 weight_decay=weight_decay, progress=progress if is_main() else False,
                 stack="auto" if not launched() else False,
                 groups=groups, **kwargs)
    after = physical_metrics(res.model, normalizer, target, "val", device=dev)
    record: dict[str, Any] = {
        "kind": "target",
        "model": meta.get("model"),
        "method": res.method,
        "options": res.extra.get("options", {}),
        "selection": {k: v for k, v in (res.selection or {}).items() if k != "curves"},
        "n": n,
        "seed": seed,
        "source_checkpoint": {"file": str(Path(checkpoint).resolve()),
                              "kind": meta.get("kind")},
        "data": data_record(target, info),
        "source_data": meta.get("data"),
        "train": {"steps": res.history.steps, "batch_size": batch_size, "lr": lr,
                  "weight_decay": weight_decay, "seconds": res.history.seconds},
        "metrics": {"target_val_before": before, "target_val": after},
    }
    _report(say, "target val", before, after)
    if res.masks is not None:
        if not extending and setting is not None:
            res.masks.settings[1] = setting
        name = res.masks.settings[res.masks.latest]
        record["settings"] = list(res.masks.settings)
        record["setting_data"] = {**meta.get("setting_data", {}), name: record["data"]}
        if extending:
            older = res.masks.settings[:-2]
            how = ("was retrained on its own data" if previous is not None else
                   "keeps its remaining entries without retraining")
            record["extended"] = {"setting": newest, "ratio": extend_ratio,
                                  "retrained": previous is not None}
            say(f"added setting {name!r}: {newest!r} gave up {extend_ratio:.0%} of its "
                f"entries to it and {how}, so its error changes"
                + (f"; {', '.join(repr(o) for o in older)} "
                   + ("keeps its" if len(older) == 1 else "keep their") + " exact weights"
                   if older else ""))
    if res.masks is not None and src_path is not None:
        record["source_data"] = src_record
        src_before = ((meta.get("metrics") or {}).get("source_val_before") if extending
                      else (meta.get("metrics") or {}).get("val"))
        if src_before is None:
            src_before = physical_metrics(model, normalizer, src_path, "val", device=dev)
        src_after = physical_metrics(res.model, normalizer, src_path, "val",
                                     masks=res.masks, device=dev)
        record["metrics"].update(source_val_before=src_before, source_val_view=src_after)
        _report(say, "source val (source view)", src_before, src_after)
    if res.selection and "auto" in res.selection:
        losses = res.selection["auto"]["cv_loss"]
        say(f"{method} picked {res.method} (CV loss "
            + ", ".join(f"{m} {v:.4g}" for m, v in sorted(losses.items(), key=lambda kv: kv[1]))
            + ")")
    if res.selection and res.selection.get("mode") == "cv":
        say(f"chosen by CV on the {n} target samples: {json.dumps(res.selection['chosen'])}, "
            f"{res.selection['steps']} steps")
    if is_main():
        save_checkpoint(out, res.model, masks=res.masks, meta=record, normalizer=normalizer,
                        overwrite=overwrite)
        say(f"wrote {out}")
    return record


def _report(say: Log, what: str, before: dict[str, Any] | None,
            after: dict[str, Any] | None) -> None:
    if before is None or after is None:
        say(f"{what}: no samples")
        return
    say(f"{what} RMSE: {before['rmse']:.4g} before -> {after['rmse']:.4g} after "
        f"(nRMSE {before['nrmse']:.4g} -> {after['nrmse']:.4g})")
