"""Atomic file creation: write to a temporary file beside the target, then rename."""

from __future__ import annotations

import atexit
import contextlib
import errno
import hashlib
import os
import re
import socket
import stat
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import procutil

_LIVE: dict[Path, int] = {}  # temporary files not yet published or removed: their pid


@atexit.register
def _remove_live() -> None:
    """An interpreter that exits (an uncaught interrupt, a writer never closed) leaves no
    temporary file behind."""
    for tmp, pid in list(_LIVE.items()):
        if pid == os.getpid():  # not in a forked child
            with contextlib.suppress(OSError):
                tmp.unlink()
    _LIVE.clear()


class StaleTempWarning(UserWarning):
    """Hidden temporary files of another (or an interrupted) writer lie beside a target."""


def _host_tag() -> str:
    return hashlib.sha1(socket.gethostname().encode()).hexdigest()[:6]


def _temp_prefix(name: str) -> str:
    """``.NAME.PID-HOST-``: a temporary file names its writer's process and machine."""
    return f".{name}.{os.getpid()}-{_host_tag()}-"


def stale_temps(path: str | os.PathLike[str]) -> None:
    """Remove the hidden temporary files of ``path`` (``.NAME.PID-HOST-<8 random>.tmp``)
    whose writer, on this machine, is dead; warn of the others (a live writer, or an older
    name without a process id)."""
    path = Path(path)
    pat = re.compile(re.escape(f".{path.name}.") + r"(?:(\d+)-([0-9a-f]{6})-)?[a-z0-9_]{8}\.tmp")
    try:
        entries = list(os.scandir(path.parent))
    except OSError:
        return
    host = _host_tag()
    for e in entries:
        m = pat.fullmatch(e.name)
        if m is None or not e.is_file(follow_symlinks=False):
            continue
        pid = None if m.group(1) is None else int(m.group(1))
        tmp = path.parent / e.name
        if pid is not None and m.group(2) == host and not procutil.pid_alive(pid):
            with contextlib.suppress(OSError):
                tmp.unlink()
                warnings.warn(f"{tmp}: removed a stale temporary file (its writer, pid {pid}, "
                              "is gone)", StaleTempWarning, stacklevel=3)
            continue
        if pid == os.getpid():
            continue
        with contextlib.suppress(OSError):
            age = time.time() - e.stat(follow_symlinks=False).st_mtime
            who = f"pid {pid}" if pid is not None else "a writer that named no process"
            warnings.warn(f"{tmp}: a temporary file of another writer ({who}, last written "
                          f"{age:.0f} s ago) lies beside the target; remove it if no run is "
                          "writing there", StaleTempWarning, stacklevel=3)


def not_a_file(path: str | os.PathLike[str]) -> str | None:
    """Why ``path`` cannot be read as a regular file (None when it can): empty name,
    missing, a symbolic-link loop, a folder, a FIFO or device."""
    if str(path) == "":
        return "empty file name"
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "no such file" + (" (a dangling symbolic link)" if os.path.lexists(path) else "")
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "symbolic link loop"
        return exc.strerror or str(exc)
    if stat.S_ISDIR(mode):
        return "is a folder, not a file"
    if not stat.S_ISREG(mode):
        kind = "a FIFO" if stat.S_ISFIFO(mode) else "a device" if (
            stat.S_ISCHR(mode) or stat.S_ISBLK(mode)) else "a socket"
        return f"is {kind}, not a regular file"
    return None


def _writable(folder: Path) -> bool:
    """Whether this process may create files in ``folder`` (permissions, read-only
    file systems)."""
    return os.access(folder, os.W_OK | os.X_OK)


def check_parent(path: str | os.PathLike[str]) -> None:
    """Refuse an empty path, or one below something that is not a folder or a folder
    this process cannot write in (checked before any work, not after it)."""
    if os.fspath(path) == "":
        raise ValueError("output path is empty")
    path = Path(path)
    for up in path.parents:
        if os.path.lexists(up):
            if not up.is_dir():
                raise FileExistsError(f"{up}: is not a folder, so {path} cannot be created")
            if not _writable(up):
                raise PermissionError(errno.EACCES, f"folder not writable, so {path} cannot "
                                      "be created", str(up))
            return


def plain_name(name: str) -> str | None:
    """Why ``name`` is not a plain file name, one that stays in its folder (None when it
    is): empty, ``.``/``..``, a path separator, a leading dot (hidden) or a control
    character."""
    if not name:
        return "is empty"
    if name in (".", ".."):
        return f"is {name!r}"
    seps = {"/", "\\", os.sep, os.altsep or "/"}
    if any(c in name for c in seps):
        return "holds a path separator"
    if name.startswith("."):
        return "starts with a dot"
    if not name.isprintable():
        return "holds a control character"
    return None


def check_target(path: str | os.PathLike[str], overwrite: bool, hint: str) -> None:
    """Refuse to publish onto ``path``: anything that is not a regular file (a device such
    as /dev/null, a folder, a FIFO), always; an existing file or a dangling symbolic
    link, unless ``overwrite``; an empty path or one below a file."""
    check_parent(path)
    path = Path(path)
    if not os.path.lexists(path):
        return
    if path.is_symlink() and not path.exists():
        if not overwrite:
            raise FileExistsError(f"{path}: a dangling symbolic link is there; {hint}")
        return
    if not path.is_file():
        raise FileExistsError(f"{path}: exists and is not a regular file; refusing to "
                              "replace it")
    if not overwrite:
        raise FileExistsError(f"{path}: exists; {hint}")


def check_not_input(out: str | os.PathLike[str], *inputs: str | os.PathLike[str] | None
                    ) -> None:
    """Refuse an output path that is one of the command's inputs (``--overwrite`` would
    destroy the input before it was read through)."""
    for inp in inputs:
        if inp is None or not os.path.exists(out) or not os.path.exists(inp):
            continue
        if os.path.samefile(out, inp):
            raise ValueError(f"{out}: is also an input of this command ({inp}); write the "
                             "output elsewhere")


#: errnos of a write that ran out of room: disk full, file size limit, quota.
DISK_ERRNOS = frozenset(getattr(errno, n) for n in ("ENOSPC", "EFBIG", "EDQUOT")
                        if hasattr(errno, n))


def disk_error(exc: BaseException, path: str | os.PathLike[str]) -> OSError | None:
    """``exc`` (or an exception it was raised from) as a one-line OSError naming
    ``path``, when it is a write that ran out of room (disk full, file too large, quota);
    None otherwise. HDF5 and torch report such a failure as RuntimeError or OSError text
    with ``errno = N`` inside, C++ writers as a RuntimeError raised while the OSError was
    handled: each is found."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        code = cur.errno if isinstance(cur, OSError) else None
        if code not in DISK_ERRNOS:
            m = re.search(r"errno = (\d+)", str(cur))
            code = int(m.group(1)) if m else None
        if code in DISK_ERRNOS:
            return OSError(code, os.strerror(code), os.fspath(path))
        cur = cur.__cause__ or cur.__context__
    return None


def _umask() -> int:
    """The process's umask (read by setting it and restoring it at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


class AtomicFile:
    """A temporary path in the destination folder that becomes ``path`` on :meth:`commit`.

    The rename is atomic on one file system, so ``path`` is either absent (or its old
    version) or complete; :meth:`discard` removes the temporary file. Without
    ``overwrite`` the publish never clobbers: it hard-links the finished file into place,
    which fails if another writer got there first (check-then-rename would silently
    replace that writer's file). Nothing but a regular file is ever replaced.

    While it exists, SIGINT, SIGTERM and SIGHUP raise :class:`procutil.Interrupted`, and
    :meth:`commit` refuses to publish after any of them (even one whose exception was
    swallowed); stale temporary files of ``path`` are swept or reported first.
    """

    def __init__(self, path: str | os.PathLike[str], *, overwrite: bool = False,
                 hint: str = "pass overwrite=True to replace it") -> None:
        check_target(path, overwrite, hint)
        self.path = Path(path)
        self.overwrite = overwrite
        self.hint = hint
        self.path.parent.mkdir(parents=True, exist_ok=True)
        stale_temps(self.path)
        self._since = procutil.count()
        self._signals = procutil.Handled()
        try:
            fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(self.path.name), suffix=".tmp",
                                       dir=self.path.parent)
        except BaseException:
            self._signals.release()
            raise
        self.tmp = Path(tmp)
        _LIVE[self.tmp] = os.getpid()
        try:
            os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600: give what open() would
        except BaseException:
            self.discard()
            raise
        finally:
            os.close(fd)

    def check(self) -> None:
        """Discard and raise :class:`procutil.Interrupted` if a stop signal came since the
        start (the writer's safe points call this)."""
        try:
            procutil.check(self._since)
        except procutil.Interrupted:
            self.discard()
            raise

    def commit(self) -> Path:
        """Publish the temporary file at the destination (see the class notes)."""
        with procutil.deferred():
            try:
                self._publish()
            finally:
                self._signals.release()
        return self.path

    def _publish(self) -> None:
        self.check()
        if self.overwrite:
            try:
                check_target(self.path, True, self.hint)  # it may have changed meanwhile
            except FileExistsError:
                self.discard()
                raise
            os.replace(self.tmp, self.path)
            _LIVE.pop(self.tmp, None)
            return
        try:
            os.link(self.tmp, self.path)
        except FileExistsError:
            self.discard()
            raise FileExistsError(f"{self.path}: appeared while this was being written; "
                                  f"{self.hint}") from None
        except OSError:  # a file system without hard links: the best a rename can do
            os.replace(self.tmp, self.path)
            _LIVE.pop(self.tmp, None)
            return
        self.discard()

    def discard(self) -> None:
        """Remove the temporary file (no error if it is gone)."""
        with procutil.deferred():
            with contextlib.suppress(OSError):
                self.tmp.unlink()
            _LIVE.pop(self.tmp, None)
            self._signals.release()


def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], Any], *,
                 overwrite: bool = True) -> Path:
    """Call ``write(tmp_path)`` and rename the result onto ``path``; clean up on failure."""
    target = AtomicFile(path, overwrite=overwrite)
    try:
        write(target.tmp)
        return target.commit()
    except BaseException:
        target.discard()
        raise
