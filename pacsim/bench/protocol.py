"""The fair protocol: what a benchmark cell is and how it is measured.

Per (pair, seed) one source model and, per allocate configuration of the PAC-family
methods, one PAC-allocated model are trained and cached (:func:`prepare`); every method
and target size of that seed starts from them. Per (pair, seed) the target subsets are
nested prefixes of one permutation of the target pool, shared by every method. Every
method is either chosen by K-fold cross-validation on its target samples only (learning
rate, its own options and the step count, from grids of equal size; the suite's
``selection``) or trained for the same fixed number of steps (``selection = "fixed"``),
with the same optimiser, and the final model is evaluated on the held-out target test
set and, through its source view, on the source test set (:func:`run_cell`). Cache names carry
a hash of the configuration that shaped the cached model.
"""

from __future__ import annotations

import hashlib
import platform
import time
import traceback
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import __version__
from ..data import H5Dataset, Normalizer
from ..device import resolve_device
from ..fsutil import atomic_write
from ..io import CheckpointError, load_checkpoint, save_checkpoint
from ..metrics import SOURCE_METRICS, TARGET_METRICS, Accumulator
from ..models.sizing import for_data
from ..pac import Masks
from ..sims import recipes
from ..train import fit, predict
from ..transfer import Budget, SelectRequest, TransferResult, select_many
from ..transfer.methods import prune_and_allocate
from ..transfer.selection import will_stack
from .suite import Cell, PairSpec, Suite, config_hash

PRED_SAMPLES = 2000
Pair = tuple[torch.Tensor, torch.Tensor]


def model_for(spec: PairSpec, input_shape: tuple[int, ...], target_shape: tuple[int, ...]
              ) -> nn.Module:
    """The pair's model, sized from the data."""
    cfg = dict(spec.model)
    name = cfg.pop("name")
    try:
        return for_data(name, input_shape, target_shape, cfg)
    except ValueError as exc:
        raise ValueError(f"pair {spec.name}: {exc}") from None


def stacks_cells(suite: Suite, pair: str, device: str) -> bool:
    """Whether the cells of ``pair`` train as ``fit_many`` stacks under the suite's
    ``stack`` on ``device`` (:func:`pacsim.transfer.selection.will_stack`): then
    training several of its cells together shares their stacks. Reads only the data's
    shapes."""
    spec = suite.pairs[pair]
    info = H5Dataset(spec.recipe.file(suite.data_dir, "source"), "train",
                     normalize=False).info
    model = model_for(spec, info.input_shape, info.target_shape)
    return will_stack(model, suite.stack, {"device": device})


@dataclass
class PairData:
    """A pair's splits, normalised with the source statistics, plus physical targets.
    ``source_val`` is None when the source file has no validation split."""

    normalizer: Normalizer
    source_train: Pair
    source_val: Pair | None
    source_test: Pair
    source_test_y: torch.Tensor
    target_pool: Pair
    target_test: Pair
    target_test_y: torch.Tensor
    input_shape: tuple[int, ...]
    target_shape: tuple[int, ...]

    @classmethod
    def load(cls, files: dict[str, Path]) -> PairData:
        src = H5Dataset(files["source"], "train", normalize=True)
        norm = src.normalizer
        assert norm is not None

        def split(side: str, name: str) -> tuple[Pair, torch.Tensor]:
            x, y = H5Dataset(files[side], name, normalize=False, in_memory=True).arrays()
            return ((torch.from_numpy(norm.inputs(x)), torch.from_numpy(norm.targets(y))),
                    torch.from_numpy(y))

        (st, _), (ste, ste_y) = split("source", "train"), split("source", "test")
        sval = split("source", "val")[0] if len(src.info.splits["val"]) else None
        (tp, _), (tte, tte_y) = split("target", "train"), split("target", "test")
        return cls(norm, st, sval, ste, ste_y, tp, tte, tte_y, src.info.input_shape,
                   src.info.target_shape)

    def physical(self, model: nn.Module, data: Pair, truth: torch.Tensor
                 ) -> tuple[dict[str, float], torch.Tensor]:
        """Metrics in physical units and the physical predictions."""
        pred = self.normalizer.inverse_targets(predict(model, data[0]))
        return Accumulator().update(pred, truth).compute(), pred

    def subset(self, seed: int, n: int) -> Pair:
        """The first ``n`` of a seed's permutation of the target pool (nested in n)."""
        pool = self.target_pool[0].shape[0]
        if n > pool:
            raise ValueError(f"n_target={n} exceeds the target pool of {pool} samples")
        idx = torch.from_numpy(np.random.default_rng(seed).permutation(pool)[:n])
        return self.target_pool[0][idx], self.target_pool[1][idx]


def fingerprint(*tensors: torch.Tensor) -> str:
    """Short hash of tensor contents (to prove methods saw the same inputs)."""
    h = hashlib.sha1()
    for t in tensors:
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def versions() -> dict[str, str]:
    """Software versions recorded with every cell."""
    return {"pacsim": __version__, "torch": torch.__version__,
            "python": platform.python_version()}


def error_text(exc: BaseException) -> str:
    """``Type: message`` on one line."""
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"


class Context:
    """Per-process state: the suite, the device, loaded pair data and cached models."""

    def __init__(self, suite: Suite, out: str | Path, device: str | torch.device = "cpu"
                 ) -> None:
        self.suite = suite
        self.out = Path(out)
        self.device = resolve_device(device)
        self._data: dict[str, PairData] = {}
        self._models: dict[Path, tuple[nn.Module, Masks | None, dict[str, Any]]] = {}

    def files(self, pair: str) -> dict[str, Path]:
        r = self.suite.pairs[pair].recipe
        return {side: r.file(self.suite.data_dir, side) for side in recipes.SIDES}

    def data(self, pair: str) -> PairData:
        if pair not in self._data:
            self._data[pair] = PairData.load(self.files(pair))
        return self._data[pair]

    def source_cache(self, pair: str, seed: int) -> Path:
        """Cache file of the source model, named by the hash of its configuration."""
        tag = config_hash(self.suite.source_config(pair, seed), 12)
        return self.out / "cache" / f"source_{pair}_s{seed}_{tag}.pt"

    def allocate_cache(self, pair: str, seed: int, method: str) -> Path | None:
        """Cache file of the PAC-allocated model ``method`` starts from (None if none);
        methods with the same allocate configuration share it."""
        cfg = self.suite.allocate_config(pair, seed, method)
        if cfg is None:
            return None
        return self.out / "cache" / f"alloc_{pair}_s{seed}_{config_hash(cfg, 12)}.pt"

    def fit_kwargs(self, pair: str, seed: int) -> dict[str, Any]:
        t = self.suite.pairs[pair].train
        return {"lr": t.lr, "weight_decay": t.weight_decay, "optimizer": t.optimizer,
                "device": self.device, "seed": seed, "progress": False}

    def load(self, path: Path) -> tuple[nn.Module, Masks | None, dict[str, Any]]:
        """A cached checkpoint, read once per process."""
        if path not in self._models:
            self._models[path] = load_checkpoint(path)
        return self._models[path]


def prepare(ctx: Context, pair: str, seed: int, methods: list[str] | None = None
            ) -> dict[str, str]:
    """Train and cache what the cells of ``pair`` and ``seed`` start from: the source
    model and the allocated model of each PAC-family method in ``methods`` (default:
    every method of the suite). Never raises for a failed training: returns, per method
    that cannot run, the one-line reason (``"source model: ..."``, ``"allocated model:
    ..."``)."""
    methods = list(ctx.suite.methods) if methods is None else list(methods)
    try:
        _prepare_source(ctx, pair, seed)
    except Exception as exc:  # noqa: BLE001 - recorded on every cell of the group
        return {m: f"source model: {error_text(exc)}" for m in methods}
    failures: dict[str, str] = {}
    outcome: dict[Path, str | None] = {}
    for m in methods:
        path = ctx.allocate_cache(pair, seed, m)
        if path is None:
            continue
        if path not in outcome:
            try:
                _prepare_allocated(ctx, pair, seed, m, path)
                outcome[path] = None
            except Exception as exc:  # noqa: BLE001 - recorded on the method's cells
                outcome[path] = f"allocated model: {error_text(exc)}"
        if outcome[path] is not None:
            failures[m] = outcome[path]  # type: ignore[assignment]
    return failures


def _cached(ctx: Context, path: Path) -> bool:
    """Whether a usable cached model is at ``path``; a damaged one (caches are written
    atomically, so only the disk or a hand can damage one) is trained again."""
    if not path.exists():
        return False
    try:
        ctx.load(path)
    except CheckpointError as exc:
        warnings.warn(f"{exc}; training it again", stacklevel=2)
        return False
    return True


def _prepare_source(ctx: Context, pair: str, seed: int) -> None:
    path = ctx.source_cache(pair, seed)
    if _cached(ctx, path):
        return
    spec = ctx.suite.pairs[pair]
    data = ctx.data(pair)
    torch.manual_seed(seed)
    model = model_for(spec, data.input_shape, data.target_shape)
    t0 = time.perf_counter()
    fit(model, data.source_train, epochs=spec.train.source_epochs,
        batch_size=spec.train.source_batch_size, lr_schedule="cosine",
        **ctx.fit_kwargs(pair, seed))
    meta = {"seconds": time.perf_counter() - t0,
            "source": data.physical(model, data.source_test, data.source_test_y)[0],
            "zero_shot": data.physical(model, data.target_test, data.target_test_y)[0],
            "config": ctx.suite.source_config(pair, seed)}
    # the name is a hash of the configuration: a file already there is the same model
    save_checkpoint(path, model.cpu(), meta=meta, normalizer=data.normalizer, overwrite=True)


def _prepare_allocated(ctx: Context, pair: str, seed: int, method: str, path: Path) -> None:
    if _cached(ctx, path):
        return
    spec = ctx.suite.pairs[pair]
    data = ctx.data(pair)
    model, _, _ = load_checkpoint(ctx.source_cache(pair, seed))
    t0 = time.perf_counter()
    masks, info = prune_and_allocate(
        model, data.source_train, ctx.suite.method(pair, method).options,
        source_val=data.source_val, epochs=spec.train.allocate_epochs,
        batch_size=spec.train.source_batch_size, lr_schedule="cosine",
        **ctx.fit_kwargs(pair, seed))
    info["history"] = info["history"].to_dict()
    meta = {"seconds": time.perf_counter() - t0,
            "source": data.physical(model, data.source_test, data.source_test_y)[0],
            "summary": masks.summary(), "allocate": info,
            "config": ctx.suite.allocate_config(pair, seed, method)}
    save_checkpoint(path, model.cpu(), masks.to("cpu"), meta=meta, normalizer=data.normalizer,
                    overwrite=True)


def run_cell(ctx: Context, cell: Cell) -> dict[str, Any]:
    """Train one method on one target subset and measure everything the report needs;
    returns the cell's record (its identity included). Needs :func:`prepare` first."""
    return run_batch(ctx, [cell])[0]


def run_batch(ctx: Context, cells: Sequence[Cell]) -> list[dict[str, Any]]:
    """:func:`run_cell` for several cells at once: their transfers are chosen and trained
    together (:func:`pacsim.transfer.select_many`: with the suite's ``stack``, every
    cross-validation and final training that can share a ``fit_many`` stack does), then
    each cell is measured and recorded on its own, with ``selection["batch"]`` cells
    trained together and an equal share of the wall time in ``seconds``. If the batch
    fails as a whole, each cell runs alone, so one bad cell fails only its own record."""
    cells = [Cell(*c) for c in cells]
    if len(cells) > 1:
        try:
            return _run_together(ctx, cells)
        except Exception:  # noqa: BLE001 - retried one by one; errors land per cell
            out = []
            for cell in cells:
                try:
                    out.append(run_cell(ctx, cell))
                except Exception as exc:  # noqa: BLE001 - a failed cell is a record
                    out.append(error_record(ctx.suite, cell, error_text(exc),
                                            traceback.format_exc(limit=5)))
            return out
    return _run_together(ctx, cells)


def _run_together(ctx: Context, cells: list[Cell]) -> list[dict[str, Any]]:
    requests = []
    for cell in cells:
        pair, method, n_target, seed = cell
        source_model = ctx.load(ctx.source_cache(pair, seed))[0]
        extra: dict[str, Any] = {}
        alloc_path = ctx.allocate_cache(pair, seed, method)
        if alloc_path is not None:
            alloc_model, alloc_masks, _ = ctx.load(alloc_path)
            extra["allocated"] = (alloc_model, alloc_masks)
        mcfg = ctx.suite.method(pair, method)
        target = ctx.data(pair).subset(seed, n_target)
        requests.append(SelectRequest(method, source_model, target, seed, mcfg.grid,
                                      mcfg.options.to_dict(), extra))
    budget, shared = _shared(cells, ctx)
    t0 = time.perf_counter()
    results = select_many(requests, budget, selection=ctx.suite.selection, **shared)
    seconds = (time.perf_counter() - t0) / len(cells)
    out = []
    for cell, req, res in zip(cells, requests, results):
        res.selection = {**(res.selection or {}), "batch": len(cells)}
        out.append(_record(ctx, cell, req, res, seconds))
    return out


def _shared(cells: list[Cell], ctx: Context) -> tuple[Budget, dict[str, Any]]:
    """The budget and other training arguments the cells of a batch share (one pair's):
    ValueError if they are of several pairs."""
    pairs = {c.pair for c in cells}
    if len(pairs) > 1:
        raise ValueError(f"a batch of cells needs one pair, got {sorted(pairs)}")
    pair = cells[0].pair
    spec = ctx.suite.pairs[pair]
    kw = {k: v for k, v in ctx.fit_kwargs(pair, cells[0].seed).items()
          if k not in ("seed", "lr")}
    budget = Budget(steps=spec.train.target_steps, lr=spec.train.lr,
                    batch_size=spec.train.batch_size, stack=ctx.suite.stack)
    return budget, kw


def _record(ctx: Context, cell: Cell, req: SelectRequest, res: TransferResult,
            seconds: float) -> dict[str, Any]:
    """The record of one measured cell."""
    pair, method, n_target, seed = cell
    spec = ctx.suite.pairs[pair]
    data = ctx.data(pair)
    source_model, _, src_meta = ctx.load(ctx.source_cache(pair, seed))
    tgt, pred = data.physical(res.model, data.target_test, data.target_test_y)
    with res.source_view() as m:
        src_after = data.physical(m, data.source_test, data.source_test_y)[0]
    record: dict[str, Any] = {
        **ctx.suite.identity(cell), "status": "ok",
        "target": {k: tgt[k] for k in TARGET_METRICS},
        "source_after": {k: src_after[k] for k in SOURCE_METRICS},
        "source_before": {k: src_meta["source"][k] for k in SOURCE_METRICS},
        "zero_shot": {k: src_meta["zero_shot"][k] for k in SOURCE_METRICS},
        "trainable": res.trainable, "n_params": sum(p.numel() for p in res.model.parameters()),
        "memory_bytes": res.serving_bytes(), "network_bytes": res.network_bytes(),
        "selection": res.selection,
        "steps": res.history.steps, "seconds": seconds,
        "source_fingerprint": fingerprint(*source_model.state_dict().values()),
        "target_fingerprint": fingerprint(*req.target),
        "device": str(ctx.device), "versions": versions(),
    }
    alloc_path = ctx.allocate_cache(pair, seed, method)
    if alloc_path is not None:
        alloc_meta = ctx.load(alloc_path)[2]
        record["pac"] = {"allocated_source_rmse": alloc_meta["source"]["rmse"],
                         "summary": alloc_meta["summary"],
                         "allocate": {k: v for k, v in alloc_meta["allocate"].items()
                                      if k != "history"}}
    if seed == ctx.suite.seeds[0] and n_target == max(spec.n_target):
        _save_predictions(ctx, cell, data, pred)
    return record


def _save_predictions(ctx: Context, cell: Cell, data: PairData, pred: torch.Tensor) -> None:
    """Target-test predictions of one cell (physical units) for the report's figures."""
    pair, method, n, seed = cell
    folder = ctx.out / "predictions"
    folder.mkdir(parents=True, exist_ok=True)
    k = min(PRED_SAMPLES, pred.shape[0])
    inputs = data.normalizer.inverse_inputs(data.target_test[0][:k].numpy())
    arrays = {"pred": pred[:k].numpy(), "truth": data.target_test_y[:k].numpy(),
              "inputs": inputs}
    # atomically: a re-run cell replaces its file, and a kill must not leave half of it
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: numpy would add ".npz" to a name
            np.savez_compressed(f, **arrays)

    atomic_write(folder / f"{pair}_{method}_n{n}_s{seed}.npz", write, overwrite=True)


def error_record(suite: Suite, cell: Cell, error: str, trace: str | None = None
                 ) -> dict[str, Any]:
    """The record of a cell that could not be measured."""
    rec = {**suite.identity(cell), "status": "error", "error": error, "versions": versions()}
    if trace:
        rec["traceback"] = trace
    return rec
