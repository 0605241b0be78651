"""The one error type of the data layer."""

from __future__ import annotations


class DatasetError(ValueError):
    """A data file is missing, unreadable, foreign or inconsistent.

    The message is one line that names the file and the problem.
    """
