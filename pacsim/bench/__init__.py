"""Benchmarks: suites, the resumable runner and the report."""

from .suite import Suite, SuiteError, cell_key, load_suite

__all__ = ["Suite", "SuiteError", "cell_key", "load_suite"]
