"""The results file of a benchmark run, ``results.jsonl``: one JSON record per finished
cell, appended and fsync'ed at once. Plain JSON I/O, no torch, so reports start fast."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..fsutil import not_a_file
from ..metric_names import PRIMARY

RESULTS = "results.jsonl"


#: Keys of every record, and the metrics a finished (``status == "ok"``) cell must carry.
KEYS = ("pair", "method", "n_target", "seed", "status")
OK_METRICS = ("target", "zero_shot", "source_before", "source_after")


def record_problem(rec: Any, complete: bool = False) -> str | None:
    """Why ``rec`` is not a record (None when it is); ``complete``: also a finished cell
    without the metrics a report needs."""
    if not isinstance(rec, dict):
        return f"a JSON {type(rec).__name__}, not an object"
    missing = [k for k in KEYS if k not in rec]
    if complete and rec.get("status") == "ok":
        missing += [k for k in OK_METRICS
                    if not isinstance(rec.get(k), dict) or PRIMARY not in rec[k]]
    if missing:
        return f"lacks {', '.join(repr(k) for k in missing)}"
    wrong = [k for k in ("n_target", "seed") if not _is_int(rec[k])]
    if complete and rec.get("status") == "ok":
        wrong += [f"{k}.{PRIMARY}" for k in OK_METRICS if not _is_number(rec[k][PRIMARY])]
        pac = rec.get("pac")
        if pac is not None and not (isinstance(pac, dict) and isinstance(
                pac.get("summary", []), list)):
            wrong.append("pac.summary")
    return f"has a wrong type in {', '.join(repr(k) for k in wrong)}" if wrong else None


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def read_results(out: str | os.PathLike[str], warn: Callable[[str], None] | None = None,
                 complete: bool = False) -> list[dict[str, Any]]:
    """Records of ``out/results.jsonl``, skipping lines that are not records (a torn last
    line of a killed run among them; with ``complete``, finished cells without their
    metrics too); ``warn`` hears of each by line number."""
    path = Path(out) / RESULTS
    if not os.path.lexists(path):
        return []
    why = not_a_file(path)
    if why is not None:
        raise ValueError(f"{path}: {why}")
    records = []
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            problem: str | None = "not valid JSON"
        else:
            problem = record_problem(rec, complete)
        if problem is None:
            records.append(rec)
        elif warn is not None:
            warn(f"{path}: line {number} skipped: {problem}")
    return records


def append_record(out: Path, record: dict[str, Any]) -> None:
    path = out / RESULTS
    with open(path, "a+b") as f:
        f.seek(0, os.SEEK_END)
        if f.tell() > 0:  # repair a torn last line left by a killed run
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                f.write(b"\n")
        f.write((json.dumps(record) + "\n").encode())
        f.flush()
        os.fsync(f.fileno())


def latest(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The last record of each (pair, method, n_target, seed), in file order: a re-run
    after a changed option appends the cell again, and only the newest one counts."""
    last: dict[tuple[Any, ...], dict[str, Any]] = {}
    for r in records:
        key = (r.get("pair"), r.get("method"), r.get("n_target"), r.get("seed"))
        last.pop(key, None)
        last[key] = r
    return list(last.values())
