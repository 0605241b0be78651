"""Benchmarks: suites, the resumable runner and the report.

Submodules load on first use, so ``pacsim report`` (plain JSON and matplotlib) never
imports torch."""

from typing import Any

_SUITE = ("Suite", "SuiteError", "cell_key", "load_suite")


def __getattr__(name: str) -> Any:
    if name in _SUITE:
        from . import suite

        return getattr(suite, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = list(_SUITE)
