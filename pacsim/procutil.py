"""Processes and signals: interrupts that always stop a write, workers that die with
their parent.

SIGINT, SIGTERM and SIGHUP are handled alike while :func:`handled` is active (the CLI,
and every atomic file being written): the handler counts the signal and raises
:class:`Interrupted`. A raise can be swallowed (inside a finaliser, Python prints
"Exception ignored in ..." and goes on), so writers also compare :func:`count` with the
value they started with at their safe points (:func:`check`) and never publish after an
interrupt. Inside :func:`deferred` (cleanup that must finish) the raise waits for the end
of the block.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

SIGNALS = tuple(getattr(signal, s) for s in ("SIGINT", "SIGTERM", "SIGHUP")
                if hasattr(signal, s))


class Interrupted(KeyboardInterrupt):
    """A stop signal (SIGINT, SIGTERM or SIGHUP) arrived; ``signum`` says which."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"interrupted by {signal.Signals(signum).name}")
        self.signum = signum


class _State:
    count = 0  # stop signals seen by this process
    last = signal.SIGINT
    defer = 0  # depth of deferred() blocks
    pending = False
    depth = 0  # depth of handled() blocks
    saved: dict[int, Any] = {}
    hook: Any = sys.__unraisablehook__


def _handler(signum: int, frame: Any) -> None:
    _State.count += 1
    _State.last = signum
    if _State.defer:
        _State.pending = True
        return
    raise Interrupted(signum)


def count() -> int:
    """How many stop signals this process has received while they were handled."""
    return _State.count


def last_signal() -> int | None:
    """The last stop signal this process received while they were handled, or None."""
    return _State.last if _State.count else None


def check(since: int) -> None:
    """Raise :class:`Interrupted` if a stop signal arrived after :func:`count` was
    ``since`` (also one whose exception was swallowed)."""
    if _State.count > since:
        raise Interrupted(_State.last)


def _ours_to_take(sig: int, current: Any) -> bool:
    if current in (signal.SIG_DFL, _handler):
        return True
    return sig == signal.SIGINT and current is signal.default_int_handler


@contextlib.contextmanager
def handled() -> Iterator[None]:
    """Turn SIGINT, SIGTERM and SIGHUP into :class:`Interrupted` for the block (in the main
    thread, where they still have Python's default handling; nested blocks are fine)."""
    main = threading.current_thread() is threading.main_thread()
    if main and _State.depth == 0:
        _State.saved = {}
        for sig in SIGNALS:
            current = signal.getsignal(sig)
            if _ours_to_take(sig, current):
                _State.saved[sig] = current
                signal.signal(sig, _handler)
        _State.hook, sys.unraisablehook = sys.unraisablehook, _unraisable
    _State.depth += main
    try:
        yield
    finally:
        _State.depth -= main
        if main and _State.depth == 0:
            for sig, old in _State.saved.items():
                if signal.getsignal(sig) is _handler:
                    signal.signal(sig, old)
            _State.saved = {}
            if sys.unraisablehook is _unraisable:
                sys.unraisablehook = _State.hook


def _unraisable(info: Any) -> None:
    """A stop signal that lands in a finaliser cannot propagate: say nothing (no
    traceback); :func:`check` raises it at the next check, as the count says."""
    if not isinstance(info.exc_value, Interrupted):
        _State.hook(info)


class Handled:
    """:func:`handled` held from one call to another (``release`` is idempotent)."""

    def __init__(self) -> None:
        self._cm: contextlib.AbstractContextManager[None] | None = handled()
        self._cm.__enter__()

    def release(self) -> None:
        if self._cm is not None:
            cm, self._cm = self._cm, None
            cm.__exit__(None, None, None)


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Hold back the :class:`Interrupted` of a stop signal until the block has finished."""
    _State.defer += 1
    try:
        yield
    except BaseException:
        _State.defer -= 1
        if _State.defer == 0:
            _State.pending = False  # already leaving by an exception
        raise
    _State.defer -= 1
    if _State.defer == 0 and _State.pending:
        _State.pending = False
        raise Interrupted(_State.last)


def die_with(parent: int) -> None:
    """End this process when ``parent`` ends, even by SIGKILL (``PR_SET_PDEATHSIG`` on
    Linux, plus a watchdog thread elsewhere and for the race at start-up)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # PDEATHSIG
    if os.getppid() != parent:  # the parent died before the line above
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.2)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def format_bytes(b: float) -> str:
    """``b`` bytes in decimal units, 3 significant digits (``"1.2 GB"``)."""
    for unit in ("B", "kB", "MB", "GB"):
        if b < 1000:
            return f"{b:.3g} {unit}"
        b /= 1000
    return f"{b:.3g} TB"


def available_memory() -> int | None:
    """Bytes of memory available to new allocations (Linux ``MemAvailable``), else None."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this machine (True when unsure)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True
    return True
