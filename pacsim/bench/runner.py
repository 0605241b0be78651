"""``pacsim bench``: run a suite under the fair protocol, resumably, in parallel.

Per (pair, seed) one source model and one PAC-allocated model are trained and cached;
every method and target size of that seed starts from them. Per (pair, seed) the
target subsets are nested prefixes of one permutation of the target pool, shared by
every method. Every method trains for the same number of optimiser steps on the target
with the same optimiser and learning rate, and the final model is evaluated (no
selection on test data). Each finished cell is appended to ``results.jsonl`` at once;
a re-run skips finished cells.
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import json
import math
import multiprocessing as mp
import os
import platform
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import __version__
from ..data import H5Dataset, Normalizer
from ..io import load_checkpoint, save_checkpoint
from ..metrics import Accumulator
from ..models import CNN, MLP
from ..pac import Masks, allocate, prune
from ..sims import recipes
from ..sysinfo import describe
from ..train import fit, predict, resolve_device
from ..transfer import adapt
from .results import RESULTS, append_record, read_results
from .suite import PairSpec, cell_key, load_suite

PRED_SAMPLES = 2000


# ----------------------------------------------------------------------------- data


def model_for(spec: PairSpec, input_shape: tuple[int, ...], target_shape: tuple[int, ...]
              ) -> nn.Module:
    """The pair's model, sized from the data."""
    cfg = dict(spec.model)
    name = cfg.pop("name")
    if name == "mlp":
        return MLP(int(np.prod(input_shape)), int(np.prod(target_shape)),
                   out_shape=list(target_shape) if len(target_shape) > 1 else None, **cfg)
    if len(input_shape) < 2:
        raise ValueError(f"pair {spec.name}: a CNN needs field inputs (C, X[, Y]), "
                         f"got {input_shape}")
    return CNN(len(input_shape) - 1, input_shape[0], target_shape[0], **cfg)


@dataclass
class PairData:
    """A pair's splits, normalised with the source statistics, plus physical targets."""

    normalizer: Normalizer
    source_train: tuple[torch.Tensor, torch.Tensor]
    source_test: tuple[torch.Tensor, torch.Tensor]
    source_test_y: torch.Tensor
    target_pool: tuple[torch.Tensor, torch.Tensor]
    target_test: tuple[torch.Tensor, torch.Tensor]
    target_test_y: torch.Tensor
    input_shape: tuple[int, ...]
    target_shape: tuple[int, ...]

    @classmethod
    def load(cls, files: dict[str, Path]) -> PairData:
        src = H5Dataset(files["source"], "train", normalize=True)
        norm = src.normalizer
        assert norm is not None

        def split(side: str, name: str) -> tuple[tuple[torch.Tensor, torch.Tensor],
                                                 torch.Tensor]:
            x, y = H5Dataset(files[side], name, normalize=False, in_memory=True).arrays()
            return ((torch.from_numpy(norm.inputs(x)), torch.from_numpy(norm.targets(y))),
                    torch.from_numpy(y))

        (st, _), (ste, ste_y) = split("source", "train"), split("source", "test")
        (tp, _), (tte, tte_y) = split("target", "train"), split("target", "test")
        return cls(norm, st, ste, ste_y, tp, tte, tte_y, src.info.input_shape,
                   src.info.target_shape)

    def physical(self, model: nn.Module, data: tuple[torch.Tensor, torch.Tensor],
                 truth: torch.Tensor) -> tuple[dict[str, float], torch.Tensor]:
        """Metrics in physical units and the physical predictions."""
        pred = self.normalizer.inverse_targets(predict(model, data[0]))
        return Accumulator().update(pred, truth).compute(), pred

    def subset(self, seed: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
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


# ----------------------------------------------------------------------------- work


class Context:
    """Per-process state: the suite, loaded pair data, loaded cached models."""

    def __init__(self, suite_path: str, out: str, data_dir: str, device: str) -> None:
        self.suite = load_suite(suite_path, data_dir=data_dir)
        self.out = Path(out)
        self.device = resolve_device(device)
        self._data: dict[str, PairData] = {}
        self._models: dict[str, Any] = {}

    def files(self, pair: str) -> dict[str, Path]:
        r = self.suite.pairs[pair].recipe
        return {side: r.file(self.suite.data_dir, side) for side in recipes.SIDES}

    def data(self, pair: str) -> PairData:
        if pair not in self._data:
            self._data[pair] = PairData.load(self.files(pair))
        return self._data[pair]

    def cache(self, kind: str, pair: str, seed: int) -> Path:
        """Cache file of the source or PAC-allocated model; the name carries a hash of
        everything that shaped it, so changing a suite never reuses a stale model."""
        spec = self.suite.pairs[pair]
        t = spec.train
        keys: list[Any] = [spec.model, spec.recipe.parts["source"].n, spec.recipe.seed,
                           t["source_epochs"], t["lr"], t["source_batch_size"],
                           t["weight_decay"], t["optimizer"]]
        if kind == "pac":
            opts = self.suite.methods.get("pac", {})
            keys += [opts.get("ratio", 0.8), opts.get("scope", "global"),
                     opts.get("lam_sp", 0.0), t["allocate_epochs"]]
        tag = hashlib.sha1(json.dumps(keys, sort_keys=True).encode()).hexdigest()[:8]
        return self.out / "cache" / f"{kind}_{pair}_s{seed}_{tag}.pt"

    def fit_kwargs(self, pair: str, seed: int) -> dict[str, Any]:
        t = self.suite.pairs[pair].train
        return {"lr": t["lr"], "weight_decay": t["weight_decay"], "optimizer": t["optimizer"],
                "device": self.device, "seed": seed, "progress": False}

    def load_cached(self, kind: str, pair: str, seed: int) -> tuple[nn.Module, Masks | None,
                                                                    dict[str, Any]]:
        path = self.cache(kind, pair, seed)
        if path not in self._models:
            self._models[path] = load_checkpoint(path)
        model, masks, meta = self._models[path]
        return model, masks, meta


def prepare(ctx: Context, pair: str, seed: int) -> None:
    """Train and cache the source model and, if PAC runs, its allocated model."""
    spec = ctx.suite.pairs[pair]
    data = ctx.data(pair)
    t = spec.train
    src_path = ctx.cache("source", pair, seed)
    if not src_path.exists():
        torch.manual_seed(seed)
        model = model_for(spec, data.input_shape, data.target_shape)
        t0 = time.perf_counter()
        fit(model, data.source_train, epochs=t["source_epochs"],
            batch_size=t["source_batch_size"], lr_schedule="cosine", **ctx.fit_kwargs(pair, seed))
        meta = {"seconds": time.perf_counter() - t0,
                "source": data.physical(model, data.source_test, data.source_test_y)[0],
                "zero_shot": data.physical(model, data.target_test, data.target_test_y)[0]}
        save_checkpoint(src_path, model.cpu(), meta=meta, normalizer=data.normalizer)
    if "pac" in ctx.suite.methods:
        pac_path = ctx.cache("pac", pair, seed)
        if not pac_path.exists():
            model, _, _ = load_checkpoint(src_path)
            opts = ctx.suite.methods["pac"]
            t0 = time.perf_counter()
            masks = prune(model, ratio=opts.get("ratio", 0.8), scope=opts.get("scope", "global"))
            allocate(model, masks, data.source_train, lam_sp=opts.get("lam_sp", 0.0),
                     epochs=t["allocate_epochs"], batch_size=t["source_batch_size"],
                     lr_schedule="cosine", **ctx.fit_kwargs(pair, seed))
            meta = {"seconds": time.perf_counter() - t0,
                    "source": data.physical(model, data.source_test, data.source_test_y)[0],
                    "summary": masks.summary()}
            save_checkpoint(pac_path, model.cpu(), masks.to("cpu"), meta=meta,
                            normalizer=data.normalizer)


def run_cell(ctx: Context, pair: str, method: str, n_target: int, seed: int) -> dict[str, Any]:
    """Train one method on one target subset and measure everything the report needs."""
    spec = ctx.suite.pairs[pair]
    data = ctx.data(pair)
    t = spec.train
    source_model, _, src_meta = ctx.load_cached("source", pair, seed)
    target = data.subset(seed, n_target)
    batch = min(t["batch_size"], n_target)
    epochs = max(1, math.ceil(t["target_steps"] / math.ceil(n_target / batch)))
    opts = dict(ctx.suite.methods[method])
    extra: dict[str, Any] = {}
    if method == "pac":
        alloc_model, alloc_masks, alloc_meta = ctx.load_cached("pac", pair, seed)
        extra["allocated"] = (alloc_model, alloc_masks)
        for k in ("ratio", "scope", "lam_sp"):
            opts.pop(k, None)
    t0 = time.perf_counter()
    res = adapt(method, source_model, target, epochs=epochs, batch_size=batch,
                **ctx.fit_kwargs(pair, seed), **opts, **extra)
    seconds = time.perf_counter() - t0
    tgt, pred = data.physical(res.model, data.target_test, data.target_test_y)
    with res.source_view() as m:
        src_after = data.physical(m, data.source_test, data.source_test_y)[0]
    record: dict[str, Any] = {
        "pair": pair, "method": method, "n_target": n_target, "seed": seed,
        "status": "ok",
        "target": {k: tgt[k] for k in ("rmse", "nrmse", "max_error", "r2")},
        "source_after": {k: src_after[k] for k in ("rmse", "nrmse")},
        "source_before": {k: src_meta["source"][k] for k in ("rmse", "nrmse")},
        "zero_shot": {k: src_meta["zero_shot"][k] for k in ("rmse", "nrmse")},
        "trainable": res.trainable, "steps": res.history.steps, "seconds": seconds,
        "source_fingerprint": fingerprint(*source_model.state_dict().values()),
        "target_fingerprint": fingerprint(*target),
        "device": str(ctx.device), "versions": versions(),
    }
    if method == "pac":
        record["pac"] = {"allocated_source_rmse": alloc_meta["source"]["rmse"],
                         "summary": alloc_meta["summary"]}
    if seed == ctx.suite.seeds[0] and n_target == max(spec.n_target):
        _save_predictions(ctx, pair, method, n_target, seed, data, pred)
    return record


def _save_predictions(ctx: Context, pair: str, method: str, n: int, seed: int,
                      data: PairData, pred: torch.Tensor) -> None:
    """Target-test predictions of one cell (physical units) for the report's figures."""
    folder = ctx.out / "predictions"
    folder.mkdir(parents=True, exist_ok=True)
    k = min(PRED_SAMPLES, pred.shape[0])
    inputs = data.normalizer.inverse_inputs(data.target_test[0][:k].numpy())
    np.savez_compressed(folder / f"{pair}_{method}_n{n}_s{seed}.npz", pred=pred[:k].numpy(),
                        truth=data.target_test_y[:k].numpy(), inputs=inputs)


def versions() -> dict[str, str]:
    """Software versions recorded with every cell."""
    return {"pacsim": __version__, "torch": torch.__version__,
            "python": platform.python_version()}


# ----------------------------------------------------------------------------- driver

_CTX: Context | None = None


def _init_worker(suite_path: str, out: str, data_dir: str, device: str, threads: int) -> None:
    global _CTX
    torch.set_num_threads(threads)
    _CTX = Context(suite_path, out, data_dir, device)
    if mp.parent_process() is not None:
        _exit_with_parent()


def _exit_with_parent() -> None:
    """End this worker when the runner dies (e.g. killed), instead of training on."""
    import threading

    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def _task(kind: str, args: tuple[Any, ...]) -> dict[str, Any] | None:
    assert _CTX is not None
    if kind == "prepare":
        prepare(_CTX, *args)
        return None
    pair, method, n, seed = args
    try:
        return run_cell(_CTX, pair, method, n, seed)
    except Exception as exc:  # noqa: BLE001 - a failed cell is a result, not a crash
        return {"pair": pair, "method": method, "n_target": n, "seed": seed,
                "status": "error", "error": f"{type(exc).__name__}: {exc}",
                "traceback": traceback.format_exc(limit=5), "versions": versions()}


def run_suite(suite_path: str | os.PathLike[str], out: str | os.PathLike[str], *,
              jobs: int = 1, device: str = "auto", data_dir: str | None = None,
              retry_failed: bool = False, log: Callable[[str], Any] = print) -> Path:
    """Run (or resume) a suite into ``out``; returns the results file."""
    suite = load_suite(suite_path, data_dir=data_dir)
    if jobs < 1:
        raise ValueError(f"--jobs must be >= 1, got {jobs}")
    out = Path(out)
    (out / "cache").mkdir(parents=True, exist_ok=True)
    for spec in suite.pairs.values():
        recipes.build(spec.recipe, suite.data_dir, log=lambda m: None)
    done = {cell_key(r["pair"], r["method"], r["n_target"], r["seed"])
            for r in read_results(out) if r.get("status") == "ok" or not retry_failed}
    todo = [c for c in suite.cells() if cell_key(*c) not in done]
    log(f"suite {suite.name}: {len(suite.cells())} cells, {len(suite.cells()) - len(todo)} "
        f"already done, {len(todo)} to run with {jobs} job(s); results in {out / RESULTS}")
    if not todo:
        return out / RESULTS
    run_info = {**describe(resolve_device(device)), "suite": str(suite.path), "jobs": jobs}
    (out / "machine.json").write_text(json.dumps(run_info, indent=2))
    groups = sorted({(c[0], c[3]) for c in todo})
    args = (str(suite.path), str(out), str(suite.data_dir), device,
            max(1, (os.cpu_count() or 1) // jobs))
    if jobs == 1:
        _init_worker(*args[:4], torch.get_num_threads())
        _run(_Deferred, groups, todo, out, log)
    else:
        with cf.ProcessPoolExecutor(jobs, mp_context=mp.get_context("spawn"),
                                    initializer=_init_worker, initargs=args) as pool:
            _run(lambda kind, a: pool.submit(_task, kind, a), groups, todo, out, log)
    return out / RESULTS


class _Done:
    """An already known result, shaped like a future."""

    def __init__(self, value: Any) -> None:
        self._value = value

    def result(self) -> Any:
        return self._value


class _Deferred:
    """A task run in this process when its result is asked for, so that with one job
    each cell is appended as soon as it finishes."""

    def __init__(self, kind: str, args: tuple[Any, ...]) -> None:
        self._call = (kind, args)

    def result(self) -> Any:
        return _task(*self._call)


def _run(submit: Callable[[str, tuple[Any, ...]], Any], groups: list[tuple[str, int]],
         todo: list[tuple[str, str, int, int]], out: Path, log: Callable[[str], Any]) -> None:
    prep = {g: submit("prepare", g) for g in groups}
    failed_groups = {}
    for g, fut in prep.items():
        try:
            fut.result()
        except cf.process.BrokenProcessPool:
            raise  # the run itself broke: record nothing, a re-run resumes
        except Exception as exc:  # noqa: BLE001 - recorded on each cell of the group
            failed_groups[g] = f"{type(exc).__name__}: {exc}"
    t0 = time.perf_counter()
    futures = []
    for cell in todo:
        g = (cell[0], cell[3])
        if g in failed_groups:
            futures.append((cell, _Done({"pair": cell[0], "method": cell[1],
                                         "n_target": cell[2], "seed": cell[3],
                                         "status": "error",
                                         "error": f"source model: {failed_groups[g]}"})))
        else:
            futures.append((cell, submit("cell", cell)))
    for i, (cell, fut) in enumerate(futures, 1):
        record = fut.result()
        append_record(out, record)
        elapsed = time.perf_counter() - t0
        eta = elapsed / i * (len(futures) - i)
        status = "ok" if record["status"] == "ok" else f"FAILED ({record['error'][:80]})"
        log(f"[{i}/{len(futures)}] {cell_key(*cell)} {status}; {len(futures) - i} left, "
            f"ETA {eta:.0f} s")
