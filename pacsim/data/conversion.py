"""Converting trajectories of The Well or PDEBench into pacsim-h5 (input, target) pairs.

``pairs="next"``: the state at step t -> the state at step t + ``stride``, for every t.
``pairs="ic-to-T"``: the initial state -> the state at step ``t_index`` (default: the
last). The output is written by :class:`~pacsim.data.DatasetWriter`: streamed, published
atomically, splits and train statistics as the writer makes them. Root attributes record
the provenance: ``source_file``, ``source_format``, ``dataset_name``, ``pairs``,
``t_index`` or ``stride``, ``input_channels``, ``target_channels``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from ..fsutil import check_not_input
from .errors import DatasetError
from .format import FORMAT, attr_value, open_h5
from .pdebench import PDEBenchFile
from .pdebench import detect as detect_pdebench
from .the_well import PAIRS, WellFile, is_the_well

FORMATS = ("the_well", "pdebench")


def detect_format(path: str | os.PathLike[str]) -> str:
    """``"the_well"`` or ``"pdebench"``; :class:`DatasetError` for anything else."""
    path = Path(path)
    with open_h5(path) as f:
        if attr_value(f.attrs.get("format")) == FORMAT:
            raise DatasetError(f"{path}: already a pacsim-h5 file, nothing to convert")
        if is_the_well(f):
            return "the_well"
        if detect_pdebench(f) is not None:
            return "pdebench"
        raise DatasetError(f"{path}: neither a file of The Well nor a PDEBench file "
                           f"(top-level keys: {sorted(f.keys())[:8]})")


def _field_list(fields: str | Sequence[str] | None) -> list[str] | None:
    if fields is None:
        return None
    names = fields.split(",") if isinstance(fields, str) else list(fields)
    return [n.strip() for n in names if n.strip()]


def convert(path: str | os.PathLike[str], out: str | os.PathLike[str], *, pairs: str = "next",
            t_index: int | None = None, fields: str | Sequence[str] | None = None,
            stride: int = 1, overwrite: bool = False, seed: int = 0,
            split: Sequence[float] = (0.8, 0.1, 0.1)) -> Path:
    """Convert a file of The Well or PDEBench at ``path`` into a pacsim-h5 file at ``out``.

    ``fields`` selects fields by name (a list, or one comma-separated string): The Well's
    field names, or the datasets of a single-file PDEBench layout. ``t_index`` applies
    to ``pairs="ic-to-T"``, ``stride`` to ``pairs="next"``. Returns ``out``.

    Raises :class:`DatasetError` (one line naming the file) for an unreadable or foreign
    source, a bad ``t_index``/``stride``/field name, or NaN/inf in the data; ``ValueError``
    for an unknown ``pairs``; ``FileExistsError`` if ``out`` exists and not ``overwrite``.
    Nothing is left at ``out`` after a failure.
    """
    if pairs not in PAIRS:
        raise ValueError(f"pairs must be one of {PAIRS}, got {pairs!r}")
    if pairs == "next" and t_index is not None:
        raise ValueError("t_index applies to pairs='ic-to-T' only")
    if pairs == "ic-to-T" and stride != 1:
        raise ValueError("stride applies to pairs='next' only")
    path, names = Path(path), _field_list(fields)
    check_not_input(out, path)
    if detect_format(path) == "the_well":
        with WellFile(path, fields=names) as wf:
            return wf.to_pacsim(out, pairs=pairs, t_index=t_index, stride=stride, seed=seed,
                                split=split, overwrite=overwrite)
    with PDEBenchFile(path, fields=names) as pb:
        mode = "final" if pairs == "ic-to-T" else "step"
        ti = -1 if t_index is None else t_index
        attrs = {"source_file": path.name, "source_format": "pdebench",
                 "dataset_name": path.stem, "pairs": pairs,
                 "input_channels": list(pb.fields), "target_channels": list(pb.fields)}
        if pairs == "ic-to-T":
            attrs["t_index"] = ti % pb.n_times  # to_pacsim refuses one out of range
        else:
            attrs["stride"] = int(stride)
        return pb.to_pacsim(out, mode=mode, t_index=ti, stride=stride, seed=seed, split=split,
                            overwrite=overwrite, attrs=attrs)
