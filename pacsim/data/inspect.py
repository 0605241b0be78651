"""``pacsim inspect``: describe a pacsim-h5, The Well or PDEBench file."""

from __future__ import annotations

import json
import math
import os
import pickle
import signal
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from .errors import DatasetError
from .format import FORMAT, first_non_finite, open_h5, unreadable, validate
from .pdebench import PDEBenchFile, detect
from .the_well import WellFile, is_the_well

PROVENANCE = ("source_file", "source_format", "dataset_name", "pairs", "t_index", "stride",
              "input_channels", "target_channels")


def _dataset_info(ds: h5py.Dataset) -> dict[str, Any]:
    return {"shape": list(ds.shape), "dtype": str(ds.dtype),
            "chunks": None if ds.chunks is None else list(ds.chunks),
            "compression": ds.compression}


def _summary(a: np.ndarray) -> Any:
    a = np.asarray(a, dtype=np.float64).reshape(-1)
    if a.size <= 8:
        return [round(float(v), 6) for v in a]
    return {"n": int(a.size), "min": float(a.min()), "max": float(a.max())}


def check_values(f: h5py.File, path: Path, names: tuple[str, ...] = ("inputs", "targets"),
                 block_bytes: int = 64 * 2**20) -> None:
    """Scan datasets block by block; :class:`DatasetError` at the first NaN or inf."""
    for name in names:
        ds = f[name]
        step = max(1, block_bytes // max(1, ds.dtype.itemsize * int(np.prod(ds.shape[1:]))))
        for lo in range(0, ds.shape[0], step):
            bad = first_non_finite(ds[lo:lo + step])
            if bad is not None:
                raise DatasetError(f"{path}: {name} contain NaN or inf (sample {lo + bad})")


def describe(path: str | os.PathLike[str], check: bool = False) -> dict[str, Any]:
    """A JSON-able description of a data file; ``check`` also scans every value.

    Any failure inside HDF5 on a damaged file becomes a one-line :class:`DatasetError`.
    """
    try:
        return _describe(path, check)
    except DatasetError:
        raise
    except (OSError, RuntimeError, KeyError, TypeError, ValueError, AttributeError,
            IndexError, UnicodeDecodeError) as exc:
        raise unreadable(Path(path), exc) from None


def describe_isolated(path: str | os.PathLike[str], check: bool = False) -> dict[str, Any]:
    """:func:`describe` in a forked child, for files that may be damaged: if HDF5 itself
    crashes (a segmentation fault inside the library), the result is a one-line
    :class:`DatasetError` naming the file instead of a dead process. Without ``fork``
    (not POSIX) it is :func:`describe`."""
    if not hasattr(os, "fork"):
        return describe(path, check)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: describe, send the outcome to the parent, never return
        code = 0
        try:
            os.close(read)
            try:
                msg: dict[str, Any] = {"ok": describe(path, check)}
            except DatasetError as exc:
                msg = {"error": str(exc)}
            with os.fdopen(write, "wb") as out:
                pickle.dump(msg, out)
        except BaseException:  # noqa: BLE001 - the parent reports a child without an answer
            code = 1
        os._exit(code)
    os.close(write)
    with os.fdopen(read, "rb") as inp:
        text = inp.read()
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status) or not text:
        why = (f"HDF5 crashed reading it ({signal.Signals(os.WTERMSIG(status)).name})"
               if os.WIFSIGNALED(status) else "reading it failed")
        raise DatasetError(f"{path}: {why}; the file is damaged or not HDF5")
    msg = pickle.loads(text)  # written by our own child just now
    if "error" in msg:
        raise DatasetError(msg["error"])
    return msg["ok"]


def _describe(path: str | os.PathLike[str], check: bool) -> dict[str, Any]:
    if os.fspath(path) == "":
        raise DatasetError("empty file name")
    path = Path(path)
    with open_h5(path) as f:
        base: dict[str, Any] = {"path": str(path), "file_size": path.stat().st_size}
        if f.attrs.get("format") in (FORMAT, FORMAT.encode()):
            info = validate(f, path)
            if check:
                check_values(f, path)
            out = {**base, "format": FORMAT, "format_version": info.attrs["format_version"],
                   "simulator": info.attrs["simulator"], "setting": info.attrs["setting"],
                   "params": info.params, "seed": int(info.attrs["seed"]),
                   "created_with": info.attrs["created_with"], "n_samples": info.n,
                   "datasets": {n: _dataset_info(f[n]) for n in ("inputs", "targets", "params")
                                if n in f},
                   "splits": {k: int(v.size) for k, v in info.splits.items()},
                   "coords": {k: _summary(v) for k, v in info.coords.items()}}
            if info.groups is not None:  # trajectories per split
                out["groups"] = {k: int(np.unique(info.groups[v]).size)
                                 for k, v in info.splits.items()}
            if info.input_names is not None:
                out["input_names"] = info.input_names
            if info.sample_param_names is not None:
                out["sample_param_names"] = info.sample_param_names
            if info.normalizer is not None:
                out["stats"] = {k: _summary(v) for k, v in info.normalizer.__dict__.items()}
            source = {k: info.attrs[k] for k in PROVENANCE if k in info.attrs}
            if source:
                out["source"] = source
            return out
        well = is_the_well(f)
        if not well and detect(f) is None:
            raise DatasetError(f"{path}: neither a pacsim-h5 nor a PDEBench file, nor one of "
                               f"The Well (top-level keys: {sorted(f.keys())[:8]})")
    if well:
        with WellFile(path) as wf:
            return {**base, "format": "the_well", **wf.describe(),
                    "coords": {k: _summary(v) for k, v in wf.coords.items()}}
    with PDEBenchFile(path) as pb:
        return {**base, "format": f"pdebench ({pb.layout} layout)", "n_trajectories": pb.n,
                "n_times": pb.n_times, "state_shape": list(pb.state_shape),
                "fields": list(pb.fields), "params": pb.attrs,
                "coords": {k: _summary(v) for k, v in pb.coords.items()}}


def printable(text: str) -> str:
    """``text`` with control and other non-printable characters escaped (``\\x1b``), so
    a file's strings cannot drive the terminal."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _cleaned(obj: Any, text: bool) -> Any:
    """``obj`` with strings made printable (``text``) or non-finite floats as None."""
    if isinstance(obj, dict):
        return {_cleaned(k, text): _cleaned(v, text) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_cleaned(v, text) for v in obj]
    if text and isinstance(obj, str):
        return printable(obj)
    if not text and isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def to_json(d: dict[str, Any]) -> str:
    """Strict JSON for :func:`describe`'s output: NaN and inf become null."""
    return json.dumps(_cleaned(d, text=False), indent=2, allow_nan=False)


def render(d: dict[str, Any]) -> str:
    """Human-readable text for :func:`describe`'s output, control characters escaped."""
    d = _cleaned(d, text=True)
    size = d["file_size"]
    unit = next(u for u, s in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3), ("B", 0)) if size >= s)
    scale = {"GB": 1e9, "MB": 1e6, "kB": 1e3, "B": 1}[unit]
    lines = [f"{d['path']}  ({size / scale:.1f} {unit})", f"format      {d['format']}"
             + (f" v{d['format_version']}" if "format_version" in d else "")]
    if "simulator" in d:
        lines += [f"simulator   {d['simulator']} / setting {d['setting']} / seed {d['seed']}",
                  f"created     pacsim {d['created_with']}",
                  f"params      {json.dumps(d['params'])}",
                  f"samples     {d['n_samples']}  (splits: "
                  + ", ".join(f"{k} {v}" for k, v in d["splits"].items()) + ")"]
        for name, ds in d["datasets"].items():
            lines.append(f"{name:<11} {tuple(ds['shape'])} {ds['dtype']}  chunks "
                         f"{None if ds['chunks'] is None else tuple(ds['chunks'])}  "
                         f"compression {ds['compression']}")
        if "groups" in d:
            lines.append("groups      " + ", ".join(f"{k} {v}" for k, v in d["groups"].items())
                         + " (trajectories; no split shares one)")
        if "input_names" in d:
            lines.append(f"input names {d['input_names']}")
        if "sample_param_names" in d:
            lines.append(f"param names {d['sample_param_names']}")
        for k, v in d.get("stats", {}).items():
            lines.append(f"stats       {k} = {v}")
        if "source" in d:
            lines.append(f"source      {json.dumps(d['source'])}")
    elif d["format"] == "the_well":
        grid = ", ".join(f"{n}={s}" for n, s in zip(d["spatial_dims"], d["grid"]))
        lines += [f"dataset     {d['dataset_name']}  ({d['grid_type']} grid {grid})",
                  f"trajectories {d['n_trajectories']} x {d['n_steps']} time steps",
                  f"params      {json.dumps(d['params'])}"]
        for name, fl in d["fields"].items():
            varies = [w for w, k in (("time", "time_varying"), ("sample", "sample_varying"))
                      if fl[k]]
            lines.append(f"field t{fl['order']}  {name} {tuple(fl['shape'])}  varies in "
                         f"{' and '.join(varies) or 'neither time nor sample'}")
        if d["boundary_conditions"]:
            lines.append(f"boundaries  {json.dumps(d['boundary_conditions'])}")
        lines += [f"inputs      {d['input_channels']}",
                  f"targets     {d['target_channels']}"]
    else:
        lines += [f"trajectories {d['n_trajectories']} x {d['n_times']} time steps, state "
                  f"{tuple(d['state_shape'])} (fields {d['fields']})",
                  f"params      {json.dumps(d['params'])}"]
    for k, v in d["coords"].items():
        lines.append(f"coords/{k:<4} {v}")
    return "\n".join(lines)
