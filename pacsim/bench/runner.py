"""``pacsim bench``: run a suite under the fair protocol, resumably, in parallel.

A cell's identity is the hash of its resolved configuration (:meth:`Suite.cell_id`):
a re-run skips cells with an ok record of the same identity and runs the others, saying
why (:func:`plan_suite`: new, changed, failed). Each finished cell is appended to
``results.jsonl`` the moment it completes, so a killed run loses only the cells in
flight. The protocol (what a cell is and how it is measured) is
:mod:`pacsim.bench.protocol`; scheduling and worker processes are
:mod:`pacsim.bench.execute` (local) or :mod:`pacsim.bench.ray_executor` (Ray), two
adapters behind the same planning and appending.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..fsutil import atomic_write
from ..sims import recipes
from . import execute, ray_executor
from .results import RESULTS, append_record, read_results
from .suite import Cell, Suite, cell_key, load_suite

__all__ = ["Plan", "RunOptions", "plan_suite", "run_suite"]


@dataclass
class Plan:
    """What a run of a suite would do: per cell to run, why (``new``, ``changed``,
    ``failed``) and a detail (what changed, the earlier error)."""

    total: int
    done: int = 0
    kept_failed: int = 0
    todo: list[tuple[Cell, str, str]] = field(default_factory=list)

    def cells(self) -> list[Cell]:
        return [c for c, _, _ in self.todo]

    def count(self, reason: str) -> int:
        return sum(r == reason for _, r, _ in self.todo)


def _flat(obj: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(obj, dict):
        return {prefix: obj}
    out: dict[str, Any] = {}
    for k, v in obj.items():
        out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def config_diff(old: dict[str, Any] | None, new: dict[str, Any], limit: int = 3) -> str:
    """The first differences between two cell configurations, as ``key: old -> new``."""
    if not old:
        return "recorded without a configuration"
    a, b = _flat(old), _flat(new)
    keys = [k for k in dict.fromkeys([*b, *a]) if a.get(k) != b.get(k)]
    shown = [f"{k}: {json.dumps(a.get(k))} -> {json.dumps(b.get(k))}" for k in keys[:limit]]
    more = f", and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(shown) + more


def plan_suite(suite: Suite, records: Sequence[dict[str, Any]], retry_failed: bool = False
               ) -> Plan:
    """Which cells of ``suite`` to run given the ``records`` already written.

    A cell is done when its newest record (the one the report shows,
    :func:`~pacsim.bench.results.latest`) is
    a success of the suite's configuration: after an option is changed and changed back,
    the cell runs again rather than leave the other configuration's numbers in the
    report."""
    last = {cell_key(r["pair"], r["method"], r["n_target"], r["seed"]): r for r in records
            if {"pair", "method", "n_target", "seed"} <= set(r)}
    plan = Plan(len(suite.cells()))
    for cell in suite.cells():
        rec = last.get(cell_key(*cell))
        if rec is not None and rec.get("cell_id") == suite.cell_id(cell):
            if rec.get("status") == "ok":
                plan.done += 1
            elif retry_failed:
                plan.todo.append((cell, "failed", str(rec.get("error", ""))[:100]))
            else:
                plan.kept_failed += 1
        elif rec is not None:
            old = rec.get("config")
            plan.todo.append((cell, "changed", config_diff(old, suite.cell_config(cell))))
        else:
            plan.todo.append((cell, "new", ""))
    return plan


def _summary(suite: Suite, plan: Plan, how: str, out: Path) -> str:
    kept = (f"; {plan.kept_failed} failed cell(s) kept (--retry-failed runs them again)"
            if plan.kept_failed else "")
    return (f"suite {suite.name}: {plan.total} cells, {plan.done} already done, "
            f"{len(plan.todo)} to run ({plan.count('new')} new, {plan.count('changed')} "
            f"changed, {plan.count('failed')} failed){kept}; {how}; results in "
            f"{out / RESULTS}")


def _dry_run(suite: Suite, plan: Plan, log: Callable[[str], Any]) -> None:
    for recipe in suite.data_recipes():
        for side in recipes.SIDES:
            reason = recipes.check_file(recipe, side, suite.data_dir)
            if reason is not None:
                verb = "built" if reason == "missing" else f"rebuilt ({reason})"
                log(f"  data {recipe.file(suite.data_dir, side)} would be {verb}")
    for cell, reason, detail in plan.todo:
        log(f"  {cell_key(*cell)} {reason}" + (f" ({detail})" if detail else ""))


@dataclass(frozen=True)
class RunOptions:
    """How a suite's cells execute, never what they compute (no cell's identity depends
    on it); checked when made, with the messages of the ``pacsim bench`` flags.

    ``executor="local"``: ``jobs`` processes (default 1) on ``devices``
    (``"cuda:0,cuda:1"``, a list, or None for every visible CUDA device, else the CPU),
    each worker on one device, round robin. ``executor="ray"``: Ray tasks of
    ``cpus_per_cell`` CPUs and ``gpus_per_cell`` GPUs each, on the cluster at ``address``
    (``"auto"`` or ``"HOST:PORT"``) or, without one, on an embedded Ray of
    ``jobs * cpus_per_cell`` CPUs (default: every core); :meth:`ray_options` is what the
    Ray executor gets. ``stack``: whether each cell's cross-validation trains its folds x
    configurations as ``fit_many`` stacks (True, False, or ``"auto"``: where measured
    faster, see :func:`pacsim.transfer.select`). ``batch_cells``: at most this many cells
    of one pair and target size (any method and seed) train together as one task, their
    stacks shared (:func:`pacsim.transfer.select_many`); 1 is one cell a task,
    ``"auto"`` is :func:`auto_batch_cells`, only for pairs whose cells stack. Records stay
    one per cell, the same with or without up to float rounding."""

    jobs: int | None = None
    devices: str | Sequence[str] | None = None
    executor: str = "local"
    address: str | None = None
    cpus_per_cell: float = 1.0
    gpus_per_cell: float = 0.0
    stack: bool | str = "auto"
    batch_cells: int | str = "auto"

    def __post_init__(self) -> None:
        check_batch_cells(self.batch_cells)
        if self.jobs is not None and self.jobs < 1:
            raise ValueError(f"--jobs must be >= 1, got {self.jobs}")
        if self.executor not in ("local", "ray"):
            raise ValueError(f"--executor must be local or ray, got {self.executor!r}")
        if self.stack not in (True, False, "auto"):
            raise ValueError(f"stack must be True, False or 'auto', got {self.stack!r}")
        if self.executor == "ray":
            if self.devices is not None:
                raise ValueError("--devices is for --executor local; on Ray each cell gets "
                                 "--gpus-per-cell GPUs from Ray")
            self.ray_options()  # RayOptions checks the address and the per-cell resources
        elif self.address is not None or self.cpus_per_cell != 1 or self.gpus_per_cell != 0:
            raise ValueError("--address, --cpus-per-cell and --gpus-per-cell need "
                             "--executor ray")

    def ray_options(self) -> ray_executor.RayOptions:
        """The Ray executor's options: an embedded Ray of ``jobs`` cells' CPUs."""
        num_cpus = None if self.jobs is None else math.ceil(self.jobs * self.cpus_per_cell)
        return ray_executor.RayOptions(self.address, num_cpus, self.cpus_per_cell,
                                       self.gpus_per_cell)


@dataclass(frozen=True)
class _Setup:
    """A run's :class:`RunOptions` resolved on this machine: the Ray executor's options
    (None: local processes), the local jobs and devices, whether cells train on CUDA, and
    how many cells a task holds at most (``k``)."""

    options: RunOptions
    ray: ray_executor.RayOptions | None
    jobs: int | None
    devices: list[str]
    cuda: bool
    k: int

    @classmethod
    def resolve(cls, options: RunOptions) -> _Setup:
        """Check Ray is installed or the devices exist, and resolve them."""
        if options.executor == "ray":
            ray_executor.require_ray()
            ray, jobs, devs = options.ray_options(), options.jobs, []
            cuda = options.gpus_per_cell > 0
        else:
            ray, jobs = None, options.jobs or 1
            devs = execute.resolve_devices(options.devices)
            cuda = all(d.startswith("cuda") for d in devs)
        return cls(options, ray, jobs, devs, cuda, auto_batch_cells(options.batch_cells, cuda))

    def describe(self) -> str:
        """How the cells run, for the run's summary line."""
        how = (self.ray.describe() if self.ray is not None else
               f"{self.jobs} job(s) on {','.join(self.devices)}")
        if self.k > 1:
            how += (f", up to {self.k} cells a task" if self.options.batch_cells != "auto"
                    else f", up to {self.k} cells a task where they stack")
        return how


def run_suite(suite_path: str | os.PathLike[str], out: str | os.PathLike[str],
              options: RunOptions | None = None, *, data_dir: str | None = None,
              retry_failed: bool = False, dry_run: bool = False,
              log: Callable[[str], Any] = print) -> Path:
    """Run (or resume) a suite into ``out``; returns the results file.

    ``options``: how the cells execute (:class:`RunOptions`; default: one local job).
    ``data_dir`` overrides the suite's. ``retry_failed`` runs cells whose newest record
    is a failure again. ``dry_run`` only says what would run and why. A second run on the
    same ``out`` is refused (:class:`execute.FolderBusy`).
    """
    if options is None:
        options = RunOptions()
    if os.path.lexists(out) and not Path(out).is_dir():
        raise ValueError(f"{out}: exists and is not a folder; --out names the results folder")
    suite = dataclasses.replace(load_suite(suite_path, data_dir=data_dir), stack=options.stack)
    out = Path(out)
    setup = _Setup.resolve(options)
    how = setup.describe()
    if dry_run:  # with the seeds max_seeds adds where the suite's seeds have all finished
        records = read_results(out)
        suite = _with_seeds(suite, records, log)
        plan = plan_suite(suite, records, retry_failed)
        log(_summary(suite, plan, how, out))
        _dry_run(suite, plan, log)
        return out / RESULTS
    if setup.ray is not None and setup.ray.address is not None:
        ray_executor.check_address(setup.ray.address)  # fail fast, before data is built
    with execute.folder_lock(out):
        execute.repair_tail(out / RESULTS)
        (out / "cache").mkdir(parents=True, exist_ok=True)
        for recipe in suite.data_recipes():
            recipes.build(recipe, suite.data_dir,
                          log=lambda m: None if m.endswith("skipped") else log(m))
        while True:  # the suite's seeds, then more where PAC's verdict is within noise
            plan = plan_suite(suite, read_results(out), retry_failed)
            log(_summary(suite, plan, how, out))
            if plan.todo:
                _run_plan(suite, out, plan, setup, log)
            grown = _with_seeds(suite, read_results(out), log)
            if grown is suite:
                break
            suite = grown
    return out / RESULTS


def _with_seeds(suite: Suite, records: Sequence[dict[str, Any]],
                log: Callable[[str], Any]) -> Suite:
    """``suite`` with ``max_seeds`` applied: every (pair, n) whose suite seeds have all
    finished and where PAC's ratio to the best baseline has a seed interval holding 1
    (judged on the suite's seeds only, so a resumed run decides alike) runs on up to
    ``max_seeds`` seeds (the next integers after the suite's). The same object when
    nothing is added, so the runner's loop ends."""
    if suite.max_seeds is None or suite.max_seeds <= len(suite.seeds):
        return suite
    from .report import comparisons

    extra = dict(suite.extra_seeds)
    current = [r for r in records if r.get("pair") in suite.pairs  # the suite's seeds:
               and r.get("method") in suite.methods and r.get("seed") in suite.seeds
               and r.get("cell_id") == suite.cell_id(
                   Cell(r["pair"], r["method"], r["n_target"], r["seed"]))]
    more = [s for s in range(max(suite.seeds) + 1, max(suite.seeds) + 1 + suite.max_seeds)
            ][: suite.max_seeds - len(suite.seeds)]
    for row in comparisons(current):
        key = (row["pair"], row["n"])
        ci = row.get("pac ci")
        if (key in extra or row["pair"] not in suite.pairs
                or row["n"] not in suite.pairs[row["pair"]].n_target
                or row["seeds"] < len(suite.seeds) or ci is None or not ci[0] <= 1 <= ci[1]):
            continue
        extra[key] = more
        log(f"{row['pair']} n={row['n']}: PAC / best baseline {row['pac']:.2f} "
            f"({ci[0]:.2f}-{ci[1]:.2f}) is within the seeds' noise: {len(more)} more seeds")
    return suite if extra == suite.extra_seeds else dataclasses.replace(
        suite, extra_seeds=extra)


def _run_plan(suite: Suite, out: Path, plan: Plan, setup: _Setup,
              log: Callable[[str], Any]) -> None:
    """Execute a plan's cells with the local processes or Ray."""
    kind = "cuda" if setup.cuda else "cpu"
    value = setup.options.batch_cells
    if setup.ray is None:
        assert setup.jobs is not None
        jobs = min(setup.jobs, len(plan.todo))
        batch = _batch_sizes(suite, value, setup.k, kind, plan.cells(), jobs)
        _write_machine(out, suite, {"executor": "local", "jobs": setup.jobs,
                                    "devices": setup.devices, "batch_cells": batch})
        run = functools.partial(execute.run_cells, jobs=jobs, devices=setup.devices,
                                batch=batch)
        _execute(suite, out, plan.cells(), run, log)
        return
    ray_opts = setup.ray
    with ray_executor.connect(ray_opts, log) as ray:
        cluster = ray.cluster_resources()
        batch = _batch_sizes(suite, value, setup.k, kind, plan.cells(),
                             ray_opts.slots(cluster))
        _write_machine(out, suite, {"executor": "ray", **dataclasses.asdict(ray_opts),
                                    "jobs": ray_opts.slots(cluster),
                                    "cluster": cluster, "batch_cells": batch})
        run = functools.partial(ray_executor.run_cells, options=ray_opts, batch=batch)
        _execute(suite, out, plan.cells(), run, log)


#: Cells a task trains together under ``batch_cells="auto"``, on CUDA and on the CPU,
#: for pairs whose cells stack (``benchmarks/batch_cells.py``: on 2 CPU cores the quick
#: suite's MLP pairs ran 4.5-5.7x and its 1D-CNN pair 1.7x faster with 14 cells a task).
AUTO_BATCH_CUDA = 64
AUTO_BATCH_CPU = 64


def check_batch_cells(value: int | str) -> None:
    """ValueError unless ``value`` is ``"auto"`` or an integer >= 1."""
    if value == "auto":
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"--batch-cells must be auto or an integer >= 1, got {value!r}")


def auto_batch_cells(value: int | str, cuda: bool) -> int:
    """How many cells a task trains together: ``value``, or for ``"auto"``
    :data:`AUTO_BATCH_CUDA` on CUDA and :data:`AUTO_BATCH_CPU` on the CPU."""
    check_batch_cells(value)
    if value == "auto":
        return AUTO_BATCH_CUDA if cuda else AUTO_BATCH_CPU
    return int(value)


def _batch_sizes(suite: Suite, value: int | str, k: int, device: str, todo: list[Cell],
                 slots: int) -> dict[str, int]:
    """Cells a task holds per pair: ``k`` for every pair when given. Under ``"auto"``
    only pairs whose cells stack are batched (elsewhere a batch gains nothing), and a
    pair's batches are made small enough to give each of the ``slots`` parallel tasks
    one (one batch of a lone pair would leave the other jobs idle: on 2 CPU cores that
    made it slower than one cell a task)."""
    from .execute import batch_key
    from .protocol import stacks_cells

    if value != "auto" or k == 1:
        return {p: k for p in suite.pairs}
    per_key = collections.Counter(batch_key(c) for c in todo)
    sizes = {}
    for p in suite.pairs:
        try:
            stacks = stacks_cells(suite, p, device)
        except Exception:  # noqa: BLE001 - a pair that cannot even build fails in prepare
            stacks = False
        most = max((v for key, v in per_key.items() if key[0] == p), default=1)
        # a cluster still waiting for its autoscaler may report no slots yet
        sizes[p] = min(k, max(1, -(-most // max(1, slots)))) if stacks else 1
    return sizes


def _write_machine(out: Path, suite: Suite, execution: dict[str, Any]) -> None:
    """The driver's machine and how the cells were executed, beside the results."""
    import torch

    from ..sysinfo import describe

    devices = execution.get("devices") or ["cpu"]
    planned: dict[str, int] = {}
    for cell in suite.cells():
        planned[cell.pair] = planned.get(cell.pair, 0) + 1
    info = {**describe(torch.device(devices[0])), "suite": str(suite.path), **execution,
            "planned": planned, "runs": _machine(out).get("runs", [])}
    _write_json(out / MACHINE, info)


#: The driver's machine, how the cells were executed and every run's wall time.
MACHINE = "machine.json"


def _machine(out: Path) -> dict[str, Any]:
    """``out/machine.json``, or {} where it is missing or unreadable."""
    try:
        info = json.loads((out / MACHINE).read_text())
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def _write_json(path: Path, info: dict[str, Any]) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(info, indent=2)))


def _log_run(out: Path, run: dict[str, Any]) -> None:
    """Append one run (cells, wall seconds, how it ended) to ``machine.json``'s runs: a
    resumed suite's wall time is their sum."""
    info = _machine(out)
    info["runs"] = [*info.get("runs", []), run]
    _write_json(out / MACHINE, info)


def _execute(suite: Suite, out: Path, todo: list[Cell], run: Callable[..., None],
             log: Callable[[str], Any]) -> None:
    """Run ``todo`` with ``run`` (an executor's ``run_cells``), appending each record the
    moment it arrives and logging progress."""
    t0 = time.perf_counter()
    counts = {"ok": 0, "error": 0}

    def record(cell: Cell, rec: dict[str, Any]) -> None:
        rec = {**suite.identity(cell), **rec}
        append_record(out, rec)
        counts["ok" if rec["status"] == "ok" else "error"] += 1
        i = counts["ok"] + counts["error"]
        eta = (time.perf_counter() - t0) / i * (len(todo) - i)
        status = "ok" if rec["status"] == "ok" else f"FAILED ({rec['error'][:120]})"
        log(f"[{i}/{len(todo)}] {cell_key(*cell)} {status}; {len(todo) - i} left, "
            f"ETA {eta:.0f} s")

    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    ended = "interrupted"
    try:
        run(suite, out, todo, record=record)
        ended = "done"
    finally:
        seconds = time.perf_counter() - t0
        try:
            _log_run(out, {"started": started, "cells": len(todo), "ok": counts["ok"],
                           "failed": counts["error"], "seconds": round(seconds, 3),
                           "ended": ended})
        except OSError as err:  # never hide the run's own outcome behind its log
            log(f"warning: could not log the run in {out / MACHINE}: {err}")
    log(f"done: {counts['ok']} ok, {counts['error']} failed in {seconds:.0f} s")
