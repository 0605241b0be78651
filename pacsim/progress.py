"""The one progress bar: tqdm on a terminal (or when asked), nothing otherwise."""

from __future__ import annotations

import sys
from typing import Any


def progress_bar(enabled: bool | None, total: int, desc: str, unit: str = "it",
                 leave: bool = True) -> Any:
    """A tqdm bar, or None when ``enabled`` is False (None: only on a terminal)."""
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, leave=leave)
