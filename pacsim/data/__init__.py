"""The data layer: the pacsim-h5 format, its writer and readers, and a PDEBench reader."""

from . import pdebench
from .errors import DatasetError
from .format import FORMAT, FORMAT_VERSION, FileInfo, chunk_rows, open_h5, validate
from .inspect import describe, render
from .reader import H5Dataset, loader, open_splits, read_rows
from .stats import Normalizer, PhysicalModel, RunningMoments
from .writer import DatasetWriter, split_indices, write_dataset

__all__ = ["DatasetError", "DatasetWriter", "FORMAT", "FORMAT_VERSION", "FileInfo",
           "H5Dataset", "Normalizer", "PhysicalModel", "RunningMoments", "chunk_rows",
           "describe", "loader", "open_h5", "open_splits", "pdebench", "read_rows", "render",
           "split_indices", "validate", "write_dataset"]
