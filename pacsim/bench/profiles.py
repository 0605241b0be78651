"""Which method to use: ``auto`` from the cells a suite ran, ratios to the per-problem
best baseline, and performance profiles (Dolan and More, 2002). Torch-free.

A *problem* is one (pair, n_target). A method's error on it is its mean target RMSE over
the seeds where every method finished (:func:`~pacsim.plots.paired`). ``auto`` and
``auto-keep-source`` are derived per (pair, n, seed) from the cells already run: the
method whose cross-validation loss on the target samples (the same folds for every
method of a cell) was lowest, among every method or among the PAC methods; no extra
training and no test data.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from ..method_names import DERIVED, METHODS, PAC_METHODS, is_baseline
from ..plots import methods_in, ok_records, paired

#: Derived methods: their candidates.
AUTO_CANDIDATES: dict[str, tuple[str, ...]] = {"auto": METHODS,
                                               "auto-keep-source": PAC_METHODS}
#: The profile's factors tau.
TAUS = tuple(float(t) for t in np.round(np.linspace(1.0, 3.0, 81), 3))

Records = list[dict[str, Any]]


def cv_loss(record: dict[str, Any]) -> float | None:
    """A cell's cross-validation loss, None where it was not chosen by CV."""
    sel = record.get("selection") or {}
    v = sel.get("cv_loss") if sel.get("mode") == "cv" else None
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None


def auto_records(records: Iterable[dict[str, Any]]) -> Records:
    """One derived record per (pair, n, seed) and ``auto`` method: a copy of the cell whose
    CV loss was lowest among the candidates that finished there, with ``method`` set to
    the derived name and ``auto`` naming the pick and every candidate's CV loss. Ties go
    to the first in method order. Cells without a CV loss are never candidates."""
    cells: dict[tuple[str, int, int], dict[str, dict[str, Any]]] = defaultdict(dict)
    for r in ok_records(records):
        if r["method"] in METHODS and cv_loss(r) is not None:
            cells[(r["pair"], r["n_target"], r["seed"])][r["method"]] = r
    out = []
    for (_pair, _n, _seed), by_method in sorted(cells.items()):
        for name, candidates in AUTO_CANDIDATES.items():
            losses = {m: cv_loss(by_method[m]) for m in candidates if m in by_method}
            if not losses:
                continue
            pick = min(losses, key=lambda m: (losses[m], candidates.index(m)))
            out.append({**by_method[pick], "method": name,
                        "auto": {"method": name, "pick": pick, "cv_loss": losses}})
    return out


def problem_means(records: Iterable[dict[str, Any]], metric: str = "rmse"
                  ) -> dict[tuple[str, int], dict[str, float]]:
    """(pair, n) -> method -> mean target error over the seeds every method finished."""
    ok = ok_records(records)
    out = {}
    for pair, n in sorted({(r["pair"], r["n_target"]) for r in ok}):
        rs = paired(ok, pair, n)
        by: dict[str, list[float]] = defaultdict(list)
        for r in rs:
            by[r["method"]].append(float(r["target"][metric]))
        if by:
            out[(pair, n)] = {m: float(np.mean(v)) for m, v in by.items()}
    return out


def ratios_to_best(means: dict[tuple[str, int], dict[str, float]],
                   reference: Sequence[str] | None = None
                   ) -> dict[str, dict[tuple[str, int], float]]:
    """method -> problem -> its mean error / the lowest mean error of ``reference``'s
    methods on that problem (default: the baselines present, see
    :func:`~pacsim.method_names.is_baseline`; problems without any reference method are
    left out)."""
    out: dict[str, dict[tuple[str, int], float]] = defaultdict(dict)
    for problem, by in means.items():
        best = _best(by, [m for m in by if is_baseline(m)] if reference is None
                     else reference)
        if best is None:
            continue
        for m, v in by.items():
            out[m][problem] = _ratio(v, best)
    return dict(out)


def _best(by: dict[str, float], reference: Sequence[str]) -> float | None:
    """The lowest finite error of ``reference``'s methods (None if none is finite)."""
    ref = [by[m] for m in reference if m in by and math.isfinite(by[m])]
    return min(ref) if ref else None


def _ratio(value: float, best: float) -> float:
    """``value / best``: inf for an error that is not finite (a failure is the worst
    outcome, never left out), 1 where both are 0."""
    if not math.isfinite(value):
        return math.inf
    if best <= 0:
        return 1.0 if value <= best else math.inf
    return value / best


def ratio_summary(ratios: dict[str, dict[tuple[str, int], float]]
                  ) -> list[dict[str, Any]]:
    """Per method: geometric mean and worst ratio over the problems it ran, and the
    problem of the worst; sorted safest first (lowest worst, then geometric mean)."""
    rows = []
    for m, by in ratios.items():
        vals = [v for v in by.values() if not math.isnan(v)]
        if not vals:
            continue
        worst = max(by, key=lambda p: by[p] if not math.isnan(by[p]) else -1)
        with np.errstate(divide="ignore"):
            geo = float(np.exp(np.mean(np.log(vals))))
        rows.append({"method": m, "geomean": geo, "worst": float(max(vals)),
                     "worst_at": worst, "problems": len(vals)})
    return sorted(rows, key=lambda r: (r["worst"], r["geomean"], r["method"]))


def performance_profile(means: dict[tuple[str, int], dict[str, float]],
                        methods: Sequence[str], taus: Sequence[float] = TAUS,
                        reference: Sequence[str] | None = None
                        ) -> dict[str, list[float]]:
    """Dolan-More profile: per method, for each tau the share of problems where its mean
    error is within ``tau`` times the best of ``reference`` (default: ``methods``). A
    problem where a method did not run counts as not within any tau. Problems without a
    reference method are left out."""
    reference = list(methods if reference is None else reference)
    probs = [p for p, by in means.items() if _best(by, reference) is not None]
    out = {}
    for m in methods:
        r = []
        for p in probs:
            by, best = means[p], _best(means[p], reference)
            assert best is not None
            r.append(_ratio(by[m], best) if m in by else math.inf)
        arr = np.asarray(r, dtype=float)
        out[m] = [float(np.mean(arr <= t * (1 + 1e-12))) if len(arr) else 0.0 for t in taus]
    return out


def first_lines(records: Iterable[dict[str, Any]]) -> list[str]:
    """The answer to "which method should I use?" in two lines: the safest single method
    against the per-problem best baseline, and how ``auto`` does (empty without a
    baseline)."""
    records = list(records)
    rows = ratio_summary(ratios_to_best(problem_means(records)))
    single = [r for r in rows if r["method"] not in DERIVED]
    if not single:
        return []
    best = single[0]
    nxt = single[1] if len(single) > 1 else None
    lines = [f"- **Safest single method: `{best['method']}`**, {best['geomean']:.3f}x the "
             f"per-problem best baseline in geometric mean and {best['worst']:.2f}x at worst "
             f"({_where(best['worst_at'])}) over {best['problems']} (pair, n) problems"
             + (f"; next `{nxt['method']}` ({nxt['geomean']:.3f}x, worst "
                f"{nxt['worst']:.2f}x)." if nxt else ".")
             + " The best baseline of each problem is known only in hindsight (test data)."]
    for r in rows:
        if r["method"] in AUTO_CANDIDATES:
            lines.append(f"- **`{r['method']}`** (the lowest CV loss of "
                         f"{', '.join(AUTO_CANDIDATES[r['method']])}, chosen on target "
                         f"samples only): {r['geomean']:.3f}x in geometric mean, "
                         f"{r['worst']:.2f}x at worst ({_where(r['worst_at'])}).")
    return lines


def _where(problem: tuple[str, int]) -> str:
    return f"{problem[0]} n={problem[1]}"


def edge_cells(records: Iterable[dict[str, Any]]) -> list[str]:
    """One line per finished cell whose final choice still sits at an edge of its grid or
    step horizon, with the reason the selection recorded."""
    out = []
    for r in ok_records(records):
        sel = r.get("selection") or {}
        if r["method"] in DERIVED or sel.get("mode") != "cv" or sel.get("interior", True):
            continue
        edges = "; ".join(str(e) for e in sel.get("edges") or []) or "at an edge"
        out.append(f"`{r['pair']}|{r['method']}|{r['n_target']}|{r['seed']}`: {edges}")
    return out


def selection_cost(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per method over its CV cells: mean configurations searched, mean trainings (folds
    x configurations), mean cell seconds and the share of cells chosen in the interior."""
    by: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in ok_records(records):
        if (r.get("selection") or {}).get("mode") == "cv" and r["method"] not in DERIVED:
            by[r["method"]].append(r)
    rows = []
    for m in methods_in({"method": m} for m in by):
        rs = by[m]
        sels = [r["selection"] for r in rs]
        configs = [s["configs"] for s in sels if isinstance(s.get("configs"), int)]
        trains = [s["trainings"] for s in sels if isinstance(s.get("trainings"), int)]
        rows.append({
            "method": m, "cells": len(rs),
            "configs": float(np.mean(configs)) if configs else None,
            "trainings": float(np.mean(trains)) if trains else None,
            "seconds": float(np.mean([float(r.get("seconds") or 0.0) for r in rs])),
            "interior": (float(np.mean([bool(s["interior"]) for s in known]))
                         if (known := [s for s in sels if "interior" in s]) else None)})
    return rows
