"""Atomic file creation: write to a temporary file beside the target, then rename."""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


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


def check_parent(path: str | os.PathLike[str]) -> None:
    """Refuse an empty path, or one below something that is not a folder."""
    if os.fspath(path) == "":
        raise ValueError("output path is empty")
    path = Path(path)
    for up in path.parents:
        if os.path.lexists(up):
            if not up.is_dir():
                raise FileExistsError(f"{up}: is not a folder, so {path} cannot be created")
            return


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
    """

    def __init__(self, path: str | os.PathLike[str], *, overwrite: bool = False,
                 hint: str = "pass overwrite=True to replace it") -> None:
        check_target(path, overwrite, hint)
        self.path = Path(path)
        self.overwrite = overwrite
        self.hint = hint
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp",
                                   dir=self.path.parent)
        try:
            os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600: give what open() would
        finally:
            os.close(fd)
        self.tmp = Path(tmp)

    def commit(self) -> Path:
        """Publish the temporary file at the destination (see the class notes)."""
        if self.overwrite:
            try:
                check_target(self.path, True, self.hint)  # it may have changed meanwhile
            except FileExistsError:
                self.discard()
                raise
            os.replace(self.tmp, self.path)
            return self.path
        try:
            os.link(self.tmp, self.path)
        except FileExistsError:
            self.discard()
            raise FileExistsError(f"{self.path}: appeared while this was being written; "
                                  f"{self.hint}") from None
        except OSError:  # a file system without hard links: the best a rename can do
            os.replace(self.tmp, self.path)
            return self.path
        self.discard()
        return self.path

    def discard(self) -> None:
        """Remove the temporary file (no error if it is gone)."""
        with contextlib.suppress(OSError):
            self.tmp.unlink()


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
