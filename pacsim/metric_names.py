"""The metrics' names, defined once and importable without torch (the report reads
records by them); :mod:`pacsim.metrics` computes them and re-exports these names."""

#: Every metric :meth:`pacsim.metrics.Accumulator.compute` returns, in display order.
METRICS = ("rmse", "nrmse", "mae", "max_error", "r2")
#: The metric results are ranked by; every recorded error section holds it.
PRIMARY = "rmse"
#: What a benchmark cell records of its target test set.
TARGET_METRICS = ("rmse", "nrmse", "max_error", "r2")
#: What a benchmark cell records of a source test set (before, after, zero-shot).
SOURCE_METRICS = ("rmse", "nrmse")
#: Errors in the targets' units, finite whenever every prediction is finite (nRMSE and R2
#: also divide by the targets' spread).
ABSOLUTE_METRICS = ("rmse", "mae", "max_error")

assert {PRIMARY, *TARGET_METRICS, *SOURCE_METRICS, *ABSOLUTE_METRICS} <= set(METRICS)
