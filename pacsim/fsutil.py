"""Atomic file creation: write to a temporary file beside the target, then rename."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


class AtomicFile:
    """A temporary path in the destination folder that becomes ``path`` on :meth:`commit`.

    The rename is atomic on one file system, so ``path`` is either absent (or its old
    version) or complete; :meth:`discard` removes the temporary file.
    """

    def __init__(self, path: str | os.PathLike[str], *, overwrite: bool = False,
                 hint: str = "pass overwrite=True to replace it") -> None:
        self.path = Path(path)
        if self.path.exists() and not overwrite:
            raise FileExistsError(f"{self.path}: exists; {hint}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp",
                                   dir=self.path.parent)
        os.close(fd)
        self.tmp = Path(tmp)

    def commit(self) -> Path:
        """Rename the temporary file onto the destination."""
        os.replace(self.tmp, self.path)
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
