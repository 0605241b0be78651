"""Execution of a suite's cells: which process runs which task, on which device, when.

Three kinds of task: ``prepare`` (the cached models of one pair and seed), ``cell``
and ``batch`` (several cells of one pair and target size trained together).
:func:`schedule` keeps at most ``slots`` tasks in flight, starts a cell as soon as its
own (pair, seed) is prepared (ready cells first, then the next prepare: no global
barrier) and hands every record over the moment its task completes, in any order.

:func:`run_cells` runs them locally: in this process with one job, else in a pool of
spawned worker processes, each bound to one device (round robin over ``devices``).
Workers die with the runner (``PR_SET_PDEATHSIG`` on Linux, plus a watchdog thread).
:func:`folder_lock` makes a results folder belong to one run at a time.
"""

from __future__ import annotations

import concurrent.futures as cf
import concurrent.futures.process  # noqa: F401 - cf.process.BrokenProcessPool
import contextlib
import multiprocessing as mp
import os
import pickle
import re
import traceback
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..procutil import die_with

if TYPE_CHECKING:  # a worker imports this module first: keep it free of torch
    from .suite import Cell, Suite

Submit = Callable[[str, tuple[Any, ...]], "cf.Future[Any]"]
Record = Callable[["Cell", dict[str, Any]], None]


class RunnerError(RuntimeError):
    """The run itself broke (a worker process died); finished cells are saved."""


class FolderBusy(ValueError):
    """Another run holds the results folder."""


# ----------------------------------------------------------------------------- devices


def cuda_count() -> int:
    """Number of visible CUDA devices (0 without CUDA)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def resolve_devices(spec: str | Sequence[str] | None) -> list[str]:
    """Devices from ``"cuda:0,cuda:1"``, a list, or None / ``"auto"`` (every visible CUDA
    device, else the CPU); ValueError names a device that is malformed or absent."""
    if spec is None or spec == "auto":
        n = cuda_count()
        return [f"cuda:{i}" for i in range(n)] or ["cpu"]
    items = [d.strip() for d in (spec.split(",") if isinstance(spec, str) else spec)]
    for d in items:
        m = re.fullmatch(r"cpu|cuda(?::(\d+))?", d)
        if m is None:
            raise ValueError(f"--devices: {d!r} is not a device (use cpu, cuda or cuda:N)")
        if d.startswith("cuda") and int(m.group(1) or 0) >= cuda_count():
            raise ValueError(f"--devices: {d} is not available (this machine has "
                             f"{cuda_count()} CUDA device(s))")
    if not items:
        raise ValueError("--devices: no device given")
    return items


def worker_devices(devices: Sequence[str], jobs: int) -> list[str]:
    """The device of each of ``jobs`` workers: round robin, one worker per device first."""
    return [devices[i % len(devices)] for i in range(jobs)]


# ----------------------------------------------------------------------------- scheduling


def batch_key(cell: Cell) -> tuple[str, int]:
    """Cells that may train together (``--batch-cells``): one pair (one architecture,
    step budget and batch size) and one target size (one fold size), any method or seed."""
    return (cell[0], cell[2])


def batch_sizes(batch: int | Mapping[str, int], pairs: Iterable[str]) -> dict[str, int]:
    """Cells a task of each pair holds at most: ``batch`` for all, or per pair (1 where a
    mapping does not name it); ValueError for a size below 1."""
    out = {p: (batch.get(p, 1) if isinstance(batch, Mapping) else batch) for p in pairs}
    bad = {p: k for p, k in out.items() if not isinstance(k, int) or k < 1}
    if bad:
        raise ValueError(f"batch sizes must be integers >= 1, got {bad}")
    return out


def schedule(todo: Sequence[Cell], submit: Submit, *, slots: int, record: Record,
             batch: int | Mapping[str, int] = 1) -> None:
    """Prepare each (pair, seed) of ``todo`` and run its cells, at most ``slots`` tasks at
    a time; ``record(cell, rec)`` gets each cell's record as soon as it exists. A
    prepare returns ``{method: reason}`` for methods that cannot run; their cells are
    recorded as errors with that reason. A broken worker pool propagates.

    ``batch=1``: one task per cell, started as soon as its own (pair, seed) is prepared.
    ``batch=K > 1``: cells of one :func:`batch_key` run as tasks of up to K cells; the
    prepares go first, and a partial batch starts once every seed of its pair is
    prepared (or nothing else is left to wait for). ``batch`` may also map pairs to
    their K (pairs not named: 1)."""
    from .suite import Cell

    sizes = batch_sizes(batch, {c[0] for c in todo})
    groups: dict[tuple[str, int], list[Cell]] = {}
    for c in todo:
        groups.setdefault((c[0], c[3]), []).append(Cell(*c))
    unprepared: dict[str, int] = {}
    for pair, _ in groups:
        unprepared[pair] = unprepared.get(pair, 0) + 1
    waiting, ready = deque(groups), deque[Cell]()
    batching = any(k > 1 for k in sizes.values())
    inflight: dict[cf.Future[Any], tuple[int, str, Any]] = {}
    seq = 0

    def take(force: bool) -> list[Cell] | None:
        for key in dict.fromkeys(batch_key(c) for c in ready):
            cells = [c for c in ready if batch_key(c) == key]
            size = sizes[key[0]]
            if len(cells) >= size or unprepared[key[0]] == 0 or force:
                chosen = cells[:size]
                for c in chosen:
                    ready.remove(c)
                return chosen
        return None

    while waiting or ready or inflight:
        while len(inflight) < slots and (ready or waiting):
            seq += 1
            if batching:
                cells = None if waiting else take(force=not inflight)
            else:
                cells = [ready.popleft()] if ready else None
            if cells is None and waiting:
                g = waiting.popleft()
                methods = list(dict.fromkeys(c.method for c in groups[g]))
                inflight[submit("prepare", (g[0], g[1], methods))] = (seq, "prepare", g)
            elif cells is None:
                break
            elif len(cells) == 1 and sizes[cells[0].pair] == 1:
                inflight[submit("cell", tuple(cells[0]))] = (seq, "cell", cells[0])
            else:
                args = tuple(tuple(c) for c in cells)
                inflight[submit("batch", args)] = (seq, "batch", cells)
        done, _ = cf.wait(list(inflight), return_when=cf.FIRST_COMPLETED)
        for fut in sorted(done, key=lambda f: inflight[f][0]):
            _, kind, item = inflight.pop(fut)
            try:
                result = fut.result()
            except cf.process.BrokenProcessPool:
                raise
            except Exception as exc:  # noqa: BLE001 - a task that could not even run
                result = {"status": "error", "error": f"{type(exc).__name__}: {exc}"}
                if kind == "prepare":
                    result = {c.method: f"prepare: {result['error']}" for c in groups[item]}
                elif kind == "batch":
                    result = [result] * len(item)
            if kind == "cell":
                record(item, result)
                continue
            if kind == "batch":
                for cell, rec in zip(item, result):
                    record(cell, rec)
                continue
            unprepared[item[0]] -= 1
            for cell in groups[item]:
                if cell.method in result:
                    record(cell, {"status": "error", "error": result[cell.method]})
                else:
                    ready.append(cell)


def run_task(ctx: Any, kind: str, args: tuple[Any, ...]) -> Any:
    """One task in the process holding ``ctx`` (a :class:`protocol.Context`): a
    ``prepare``, a ``cell`` or a ``batch`` of cells (a list of records). A cell that
    fails becomes an error record, never an exception."""
    from .protocol import error_text, prepare, run_batch, run_cell, versions
    from .suite import Cell

    if kind == "prepare":
        pair, seed, methods = args
        return prepare(ctx, pair, seed, methods)
    try:
        if kind == "batch":
            return run_batch(ctx, [Cell(*c) for c in args])
        return run_cell(ctx, Cell(*args))
    except Exception as exc:  # noqa: BLE001 - a failed cell is a result, not a crash
        rec = {"status": "error", "error": error_text(exc),
               "traceback": traceback.format_exc(limit=5), "versions": versions()}
        return [rec] * len(args) if kind == "batch" else rec


def _finished(fn: Callable[[], Any]) -> cf.Future[Any]:
    fut: cf.Future[Any] = cf.Future()
    try:
        fut.set_result(fn())
    except Exception as exc:  # noqa: BLE001 - handed over like a pool would
        fut.set_exception(exc)
    return fut


# ----------------------------------------------------------------------------- workers

_CTX: Any = None


def _init_worker(suite: bytes, out: str, devices: Any, threads: int, parent: int) -> None:
    die_with(parent)  # first: the suite's unpickling imports torch (seconds)
    import torch

    from .protocol import Context

    global _CTX
    torch.set_num_threads(threads)
    _CTX = Context(pickle.loads(suite), out, devices.get())


def _worker_task(kind: str, args: tuple[Any, ...]) -> Any:
    return run_task(_CTX, kind, args)


def run_cells(suite: Suite, out: Path, todo: Sequence[Cell], *, jobs: int,
              devices: Sequence[str], record: Record,
              batch: int | Mapping[str, int] = 1) -> None:
    """Run ``todo`` with ``jobs`` processes over ``devices``, ``batch`` cells a task at
    most (see :func:`schedule`); ``record`` gets each record as it completes.
    RunnerError if a worker process dies."""
    if jobs == 1:
        from .protocol import Context

        ctx = Context(suite, out, devices[0])
        schedule(todo, lambda kind, args: _finished(lambda: run_task(ctx, kind, args)),
                 slots=1, record=record, batch=batch)
        return
    spawn = mp.get_context("spawn")
    queue = spawn.SimpleQueue()
    for d in worker_devices(devices, jobs):
        queue.put(d)
    threads = max(1, (os.cpu_count() or 1) // jobs)
    pool = cf.ProcessPoolExecutor(jobs, mp_context=spawn, initializer=_init_worker,
                                  initargs=(pickle.dumps(suite), str(out), queue, threads,
                                            os.getpid()))
    try:
        schedule(todo, lambda kind, args: pool.submit(_worker_task, kind, args), slots=jobs,
                 record=record, batch=batch)
    except cf.process.BrokenProcessPool as exc:
        pool.shutdown(wait=False, cancel_futures=True)
        raise RunnerError(f"a worker process died ({exc}); finished cells are saved, "
                          "run again to resume") from None
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


# ----------------------------------------------------------------------------- folder


@contextlib.contextmanager
def folder_lock(out: Path) -> Iterator[None]:
    """Hold ``out/.lock`` (an exclusive ``flock``) for the block; FolderBusy at once if
    another process holds it. The lock goes with the process, also when it is killed."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: no lock
        yield
        return
    out.mkdir(parents=True, exist_ok=True)
    with open(out / ".lock", "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            pid = f.read().strip()
            who = f" (pid {pid})" if pid else ""
            raise FolderBusy(f"{out}: another pacsim bench is running on this folder{who}; "
                             "wait for it to end or choose another --out") from None
        f.truncate(0)
        f.write(f"{os.getpid()}\n")
        f.flush()
        yield


def repair_tail(path: Path) -> None:
    """Cut a torn last line (a run killed mid-write), so the file holds whole records."""
    if not path.exists():
        return
    data = path.read_bytes()
    if not data or data.endswith(b"\n"):
        return
    with open(path, "r+b") as f:
        f.truncate(data.rfind(b"\n") + 1)
        f.flush()
        os.fsync(f.fileno())
