"""The data layer: the pacsim-h5 format, its writer and readers, readers of PDEBench and
The Well, and ``convert`` from those into pacsim-h5.

The torch-based readers (``H5Dataset``, ``loader``, ...) load on first use, so tools that
only write or inspect files (``pacsim simulate``, ``pacsim inspect``) start quickly.
"""

from typing import Any

from .conversion import convert, detect_format
from .errors import DatasetError
from .format import FORMAT, FORMAT_VERSION, FileInfo, chunk_rows, open_h5, validate
from .inspect import describe, render
from .stats import Normalizer, RunningMoments
from .the_well import WellFile
from .writer import DatasetWriter, split_indices, write_dataset

_LAZY = {"H5Dataset", "SampleMap", "loader", "open_splits", "read_rows"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from . import reader

        return getattr(reader, name)
    if name == "pdebench":
        from . import pdebench

        return pdebench
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["DatasetError", "DatasetWriter", "FORMAT", "FORMAT_VERSION", "FileInfo",
           "H5Dataset", "Normalizer", "RunningMoments", "SampleMap", "WellFile", "chunk_rows",
           "convert", "describe", "detect_format", "loader", "open_h5", "open_splits",
           "pdebench", "read_rows", "render", "split_indices", "validate", "write_dataset"]
