"""The results file of a benchmark run, ``results.jsonl``: one JSON record per finished
cell, appended and fsync'ed at once. Plain JSON I/O, no torch, so reports start fast."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

RESULTS = "results.jsonl"


def read_results(out: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Records of ``out/results.jsonl``; a torn last line (killed mid-write) is ignored."""
    path = Path(out) / RESULTS
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
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
