"""Execution on Ray (``pacsim bench --executor ray``): the same cells, prepared and
measured by the same protocol, scheduled as Ray core tasks on one machine or a cluster.

An adapter beside :func:`execute.run_cells`: same arguments, same ``record`` callback
(the runner's planning and appending are untouched). Per (pair, seed) one ``prepare``
task trains and caches the source and allocated models; every cell task of that group
takes the prepare's ObjectRef as an argument, so Ray starts a cell the moment its own
group is ready (no barrier). The driver appends each record as it arrives
(``ray.wait``), so killing the driver loses only the cells in flight.

Data and caches are NOT shipped through the object store: the suite's ``data_dir``, the
results folder and its ``cache/`` must be on a path every node can read and write (a
shared filesystem). Workers read the HDF5 files and the cached checkpoints from disk;
only the suite (kilobytes), cell names and records travel through Ray.

A worker that dies mid-task is retried once (``max_retries=1``); if it dies again the
cell is recorded as failed and the run goes on.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import re
import signal
import socket
import threading
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .execute import Record, RunnerError, batch_key, batch_sizes, run_task

if TYPE_CHECKING:
    from .suite import Cell, Suite

CONNECT_TIMEOUT_S = 25.0  # an unreachable --address fails well within 30 s
CRASH_ENV = "PACSIM_TEST_CRASH"  # tests: cell keys whose worker dies (every try)
CRASH_ONCE_ENV = "PACSIM_TEST_CRASH_ONCE"  # tests: cell keys whose worker dies once


@dataclass(frozen=True)
class RayOptions:
    """Where and how to run on Ray (from ``pacsim bench``'s flags:
    :meth:`pacsim.bench.runner.RunOptions.ray_options`).

    ``address``: None starts an embedded Ray on this machine with ``num_cpus`` CPUs
    (default: every core); ``"auto"`` or ``"HOST:PORT"`` joins a running cluster.
    ``cpus_per_cell`` / ``gpus_per_cell``: the resources of each task (fractional GPUs
    let several cells share one device)."""

    address: str | None = None
    num_cpus: int | None = None
    cpus_per_cell: float = 1.0
    gpus_per_cell: float = 0.0

    def __post_init__(self) -> None:
        if not self.cpus_per_cell > 0:
            raise ValueError(f"--cpus-per-cell must be > 0, got {self.cpus_per_cell}")
        if self.gpus_per_cell < 0:
            raise ValueError(f"--gpus-per-cell must be >= 0, got {self.gpus_per_cell}")
        if self.gpus_per_cell > 1 and self.gpus_per_cell != int(self.gpus_per_cell):
            raise ValueError(f"--gpus-per-cell above 1 must be a whole number, got "
                             f"{self.gpus_per_cell}")
        if self.address is not None and self.address != "auto" and _host_port(
                self.address) is None:
            raise ValueError(f"--address: {self.address!r} is not auto or HOST:PORT")

    def slots(self, cluster: dict[str, float]) -> int:
        """How many cells ``cluster`` (``ray.cluster_resources()``) runs at once."""
        n = cluster.get("CPU", 0) / self.cpus_per_cell
        if self.gpus_per_cell:
            n = min(n, cluster.get("GPU", 0) / self.gpus_per_cell)
        return int(n + 1e-9)

    def describe(self) -> str:
        where = "embedded Ray" if self.address is None else f"Ray at {self.address}"
        gpus = f", {self.gpus_per_cell:g} GPU" if self.gpus_per_cell else ""
        return f"{where}, {self.cpus_per_cell:g} CPU{gpus} per cell"


def _host_port(address: str) -> tuple[str, int] | None:
    m = re.fullmatch(r"\[?([^\s\[\]]+?)\]?:(\d{1,5})", address.strip())
    if m is None or not 0 < int(m.group(2)) < 65536:
        return None
    return m.group(1), int(m.group(2))


def require_ray() -> Any:
    """The ``ray`` module, or ValueError saying how to install it."""
    try:
        import ray
    except ImportError:
        raise ValueError("--executor ray needs Ray: pip install 'pacsim[ray]' "
                         "(or pip install 'ray>=2.9')") from None
    return ray


def check_address(address: str, timeout: float = 10.0) -> str:
    """The cluster address ``address`` stands for (``auto``: RAY_ADDRESS or the cluster
    ``ray start`` left on this machine), after checking that something listens there;
    ValueError in one line otherwise."""
    require_ray()
    resolved = address
    if address == "auto":
        try:
            from ray._private.services import canonicalize_bootstrap_address_or_die

            resolved = canonicalize_bootstrap_address_or_die("auto")
        except (ImportError, AttributeError):  # a Ray without that helper: let init say
            return address
        except Exception as exc:  # noqa: BLE001 - ConnectionError, ValueError
            raise ValueError(f"--address auto: no running Ray cluster found on this "
                             f"machine ({_first_sentence(exc)}); start one with "
                             f"`ray start --head` or give HOST:PORT") from None
    hp = _host_port(resolved)
    if hp is None:
        raise ValueError(f"--address: {resolved!r} is not HOST:PORT")
    try:
        with socket.create_connection(hp, timeout=timeout):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ValueError(f"--address {address}: no Ray cluster reachable at "
                         f"{hp[0]}:{hp[1]} ({reason})") from None
    return resolved


def _first_sentence(exc: BaseException) -> str:
    while exc.__cause__ is not None:
        exc = exc.__cause__
    text = " ".join(str(exc).split())
    return text.split(". ")[0].rstrip(".")


def _chain_text(exc: BaseException | None) -> str:
    parts = []
    while exc is not None:
        parts.append(str(exc))
        exc = exc.__cause__ or exc.__context__
    return " ".join(parts)


@contextmanager
def connect(options: RayOptions, log: Any = print) -> Iterator[Any]:
    """Start an embedded Ray or join ``options.address`` for the block and leave it after;
    a Ray this process has already initialised is used as it is and left running.
    ValueError (one line) if the cluster cannot be reached within ~25 s."""
    ray = require_ray()
    if ray.is_initialized():
        yield ray
        return
    quiet = {"log_to_driver": False, "logging_level": logging.ERROR,
             "include_dashboard": False}
    with _our_stop_signals():
        if options.address is None:
            ncpu = options.num_cpus or os.cpu_count() or 1
            ray.init(address="local", num_cpus=ncpu, **quiet)
        else:
            check_address(options.address)
            _init_with_timeout(ray, options.address, quiet)
    try:
        res = ray.cluster_resources()
        log(f"ray: {len(ray.nodes())} node(s), {res.get('CPU', 0):g} CPU(s), "
            f"{res.get('GPU', 0):g} GPU(s)")
        _check_feasible(ray, options)
        yield ray
    finally:
        ray.shutdown()


@contextmanager
def _our_stop_signals() -> Iterator[None]:
    """Keep this process's SIGINT, SIGTERM and SIGHUP handlers through ``ray.init``.

    ``ray.init`` installs a SIGTERM handler that calls ``sys.exit``, which ends the driver
    with status 1 and a dump of Ray's C++ threads; with pacsim's handler back, SIGTERM
    stops the run as Ctrl-C does (finished cells saved, Ray shut down, exit 143)."""
    from .. import procutil

    main = threading.current_thread() is threading.main_thread()
    saved = {sig: signal.getsignal(sig) for sig in procutil.SIGNALS} if main else {}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            if handler is not None and signal.getsignal(sig) is not handler:
                signal.signal(sig, handler)


def _init_with_timeout(ray: Any, address: str, kwargs: dict[str, Any]) -> None:
    """``ray.init(address)`` that gives up after CONNECT_TIMEOUT_S (Ray itself retries
    for minutes against a port that answers TCP but is no Ray head)."""
    kwargs = {k: v for k, v in kwargs.items() if k != "include_dashboard"}
    outcome: dict[str, BaseException | None] = {}

    def init() -> None:
        try:
            ray.init(address=address, **kwargs)
            outcome["error"] = None
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            outcome["error"] = exc

    worker_log = logging.getLogger("ray._private.worker")
    level = worker_log.level
    worker_log.setLevel(logging.ERROR)  # "SIGTERM handler is not set" from the thread
    try:
        t = threading.Thread(target=init, name="ray-connect", daemon=True)
        t.start()
        t.join(CONNECT_TIMEOUT_S)
    finally:
        worker_log.setLevel(level)
    if "error" not in outcome:
        raise ValueError(f"--address {address}: no Ray cluster answered within "
                         f"{CONNECT_TIMEOUT_S:.0f} s")
    exc = outcome["error"]
    if exc is not None:
        hint = ""
        if "AuthToken" in _chain_text(exc):
            hint = ("; the cluster uses token authentication: set RAY_AUTH_MODE=token and "
                    "its token (RAY_AUTH_TOKEN or ~/.ray/auth_token) here too")
        raise ValueError(f"--address {address}: could not join the Ray cluster "
                         f"({_first_sentence(exc)}){hint}")


# ----------------------------------------------------------------------------- workers

_CONTEXTS: dict[tuple[str, str], Any] = {}


@dataclass(frozen=True)
class _Env:
    """What every task of one run needs; the suite stays in the object store, wrapped in
    a list so Ray does not fetch it for tasks whose worker already holds the Context."""

    token: str
    suite: list[Any]
    out: str
    threads: int
    gpu: bool


def _device(gpu: bool) -> str:
    """This task's device: its GPU from Ray (CUDA_VISIBLE_DEVICES is left alone, so a
    reused worker can serve any GPU of its node), else the CPU."""
    if not gpu:
        return "cpu"
    import ray

    ids = [str(i) for i in ray.get_gpu_ids()]
    visible = [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")
               if d.strip()]
    first = ids[0] if ids else "0"
    return f"cuda:{visible.index(first) if first in visible else int(first)}"


def _context(env: _Env) -> Any:
    """The worker's Context for this run and device, built once per worker process."""
    import torch

    device = _device(env.gpu)
    key = (env.token, device)
    ctx = _CONTEXTS.get(key)
    if ctx is None:
        import ray

        from .protocol import Context

        for k in [k for k in _CONTEXTS if k[0] != env.token]:
            del _CONTEXTS[k]  # an earlier run's state
        ctx = _CONTEXTS[key] = Context(ray.get(env.suite[0]), env.out, device)
    torch.set_num_threads(env.threads)
    return ctx


def _prepare_task(env: _Env, pair: str, seed: int, methods: list[str]) -> dict[str, str]:
    return run_task(_context(env), "prepare", (pair, seed, methods))


def _cell_task(env: _Env, failures: dict[str, str], cell: tuple[Any, ...]) -> dict[str, Any]:
    """One cell; ``failures`` is its group's prepare result (resolved by Ray first)."""
    if cell[1] in failures:
        return {"status": "error", "error": failures[cell[1]]}
    _crash_for_tests(env, cell)
    return run_task(_context(env), "cell", cell)


def _batch_task(env: _Env, cells: list[tuple[Any, ...]], seeds: list[int],
                *failures: dict[str, str]) -> list[dict[str, Any]]:
    """Cells of one pair and target size trained together; ``failures[i]`` is the
    prepare result of ``seeds[i]`` (resolved by Ray first). Cells whose prepare failed
    get its error; the others run as one batch."""
    by_seed = dict(zip(seeds, failures))
    runnable = [c for c in cells if c[1] not in by_seed[c[3]]]
    for c in runnable:
        _crash_for_tests(env, c)
    done = iter(run_task(_context(env), "batch", tuple(runnable)) if runnable else [])
    return [{"status": "error", "error": by_seed[c[3]][c[1]]} if c[1] in by_seed[c[3]]
            else next(done) for c in cells]


def _crash_for_tests(env: _Env, cell: tuple[Any, ...]) -> None:
    """Kill this worker mid-cell when a test asks (env vars naming ``pair|method|n|seed``
    keys, comma separated): PACSIM_TEST_CRASH on every try, PACSIM_TEST_CRASH_ONCE on the
    first try only."""
    always, once = os.environ.get(CRASH_ENV, ""), os.environ.get(CRASH_ONCE_ENV, "")
    if not (always or once):
        return
    from .suite import cell_key

    key = cell_key(*cell)
    if key in always.split(","):
        os._exit(17)
    if key in once.split(","):
        marker = Path(env.out) / f".crashed-{key.replace('|', '_')}"
        if not marker.exists():
            marker.touch()
            os._exit(17)


# ----------------------------------------------------------------------------- driver


def run_cells(suite: Suite, out: Path, todo: Sequence[Cell], *, options: RayOptions,
              record: Record, batch: int | Mapping[str, int] = 1) -> None:
    """Run ``todo`` as Ray tasks on the connected cluster (see :func:`connect`), one
    cell a task or, with ``batch > 1`` (for all pairs or per pair), up to ``batch``
    cells of one :func:`~pacsim.bench.execute.batch_key` a task (after their seeds'
    prepares);
    ``record`` gets each cell's record as it arrives, in completion order."""
    ray = require_ray()
    from .suite import Cell

    suite = dataclasses.replace(suite, data_dir=Path(suite.data_dir).resolve())
    gpu = options.gpus_per_cell > 0
    env = _Env(uuid.uuid4().hex, [ray.put(suite)], str(Path(out).resolve()),
               max(1, math.floor(options.cpus_per_cell)), gpu)
    opts: dict[str, Any] = {"num_cpus": options.cpus_per_cell,
                            "num_gpus": options.gpus_per_cell, "max_retries": 1}
    if gpu:  # keep workers (and their loaded data) across cells; pick the GPU ourselves
        opts.update(max_calls=0, runtime_env={
            "env_vars": {"RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES": "1"}})
    prepare, cell_fn = ray.remote(**opts)(_prepare_task), ray.remote(**opts)(_cell_task)
    batch_fn = ray.remote(**opts)(_batch_task)

    groups: dict[tuple[str, int], list[Cell]] = {}
    for c in todo:
        groups.setdefault((c[0], c[3]), []).append(Cell(*c))
    sizes = batch_sizes(batch, {c[0] for c in todo})
    pending: dict[Any, tuple[list[Cell], list[Any]]] = {}
    preps = {}
    for (pair, seed), cells in groups.items():
        methods = list(dict.fromkeys(c.method for c in cells))
        preps[(pair, seed)] = p = prepare.remote(env, pair, seed, methods)
        if sizes[pair] == 1:
            for c in cells:
                pending[cell_fn.remote(env, p, tuple(c))] = ([c], [p])
    by_key: dict[tuple[str, int], list[Cell]] = {}
    for c in todo:
        if sizes[c[0]] > 1:
            by_key.setdefault(batch_key(c), []).append(Cell(*c))
    for (pair, _), cells in by_key.items():
        for i in range(0, len(cells), sizes[pair]):
            chunk = cells[i : i + sizes[pair]]
            seeds = list(dict.fromkeys(c.seed for c in chunk))
            refs = [preps[(pair, s)] for s in seeds]
            ref = batch_fn.remote(env, [tuple(c) for c in chunk], seeds, *refs)
            pending[ref] = (chunk, refs)
    while pending:  # an exception or a kill ends the driver; Ray ends its tasks
        done, rest = ray.wait(list(pending), num_returns=1)
        if rest:  # and whatever else finished meanwhile
            done += ray.wait(rest, num_returns=len(rest), timeout=0)[0]
        for ref in done:
            cells, refs = pending.pop(ref)
            result = _result(ray, ref, refs)
            if len(cells) > 1 and isinstance(result, dict) and \
                    result["error"].startswith(_CRASHES):
                # a worker died in a batch: each of its cells gets its own tries
                for c in cells:
                    p = preps[(c.pair, c.seed)]
                    pending[cell_fn.remote(env, p, tuple(c))] = ([c], [p])
                continue
            if isinstance(result, dict):  # one cell's record, or a whole batch failed
                for c in cells:
                    record(c, result)
            else:
                for c, rec in zip(cells, result):
                    record(c, rec)


def _result(ray: Any, ref: Any, preps: list[Any]) -> Any:
    """A task's result (a cell's record, or a batch's records), or one error record
    when the task could not finish."""
    from ray import exceptions as rex

    from .protocol import error_text

    try:
        return ray.get(ref)
    except (rex.RaySystemError, rex.GetTimeoutError) as exc:
        raise RunnerError(f"lost the Ray cluster ({_first_sentence(exc)}); finished cells "
                          "are saved, run again to resume") from None
    except Exception as exc:  # noqa: BLE001 - the cell's failure, recorded
        error = _task_error(exc, error_text)
    prep_done, _ = ray.wait(preps, num_returns=len(preps), timeout=0)
    for prep in prep_done:  # a failed prepare fails its cells: say so, as locally
        try:
            ray.get(prep)
        except Exception as exc:  # noqa: BLE001
            return {"status": "error", "error": f"prepare: {_task_error(exc, error_text)}"}
    return {"status": "error", "error": error}


#: How :func:`_task_error` starts the error of a task whose worker died.
_CRASHES = ("WorkerCrashedError", "NodeDiedError", "OutOfMemoryError")


def _task_error(exc: BaseException, error_text: Any) -> str:
    from ray import exceptions as rex

    if isinstance(exc, (rex.WorkerCrashedError, rex.NodeDiedError)):
        return (f"{type(exc).__name__}: the Ray worker died during the cell (tried twice): "
                f"{_first_sentence(exc)}")
    cause = getattr(exc, "cause", None)
    if isinstance(exc, rex.RayTaskError) and isinstance(cause, BaseException):
        return error_text(cause)
    return error_text(exc)


def _check_feasible(ray: Any, options: RayOptions) -> None:
    """Refuse per-task resources no node has (the tasks would wait for ever), unless an
    autoscaler may add such a node: then only warn."""
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    fits = any(r.get("CPU", 0) >= options.cpus_per_cell
               and r.get("GPU", 0) >= options.gpus_per_cell for r in nodes)
    if fits:
        return
    most = max(((r.get("CPU", 0), r.get("GPU", 0)) for r in nodes), default=(0, 0))
    msg = (f"no Ray node has {options.cpus_per_cell:g} CPU(s) and "
           f"{options.gpus_per_cell:g} GPU(s) for a cell (the largest has {most[0]:g} CPU(s) "
           f"and {most[1]:g} GPU(s)); lower --cpus-per-cell / --gpus-per-cell")
    if options.address is None:
        raise ValueError(msg)
    logging.getLogger(__name__).warning("%s; waiting for an autoscaler", msg)

