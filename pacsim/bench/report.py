"""``pacsim report DIR``: tables, figures and a plain-language summary of a results folder.

The verdicts compare ``pac`` (and, beside it, ``pac-paper``) with the *best baseline*: per
(pair, n) the lowest mean target error of the five baselines (scratch, finetune, head,
l2sp, bitfit). The trade-off view puts target error against source forgetting and counts
the memory each method needs to serve both settings. No torch: the report reads plain
JSON and starts fast.
"""

from __future__ import annotations

import json
import math
import os
import sys
import zipfile
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from .. import plots
from ..fsutil import atomic_write
from ..method_names import PAC_METHODS, is_baseline
from ..metric_names import PRIMARY
from ..plots import (
    forgetting_ratio,
    methods_in,
    non_dominated,
    ok_records,
    paired,
    tradeoff_points,
)
from .profiles import (
    TAUS,
    auto_records,
    edge_cells,
    first_lines,
    performance_profile,
    problem_means,
    ratio_summary,
    ratios_to_best,
    selection_cost,
)
from .results import RESULTS, latest, read_results

#: The reference of the paired win-rate tables.
REF = "finetune"
#: Target error of PAC / best baseline: below WIN wins, above LOSE loses, between ties.
WIN, LOSE = 0.99, 1.01
#: The seed-noise interval of a ratio: paired bootstrap over seeds (at least MIN_SEEDS).
LEVEL, RESAMPLES, MIN_SEEDS = 0.95, 4000, 3
#: The trade-off criterion: within TARGET_TOL of the best target error (over every method)
#: and forgetting (source error after / unpruned source model's) at most FORGET_TOL.
TARGET_TOL, FORGET_TOL = 0.05, 1.05
#: How the hyper-parameters of a cell were chosen (``selection.mode``); absent = "fixed".
SELECTION_LABELS = {
    "fixed": "fixed budget, no selection",
    "cv": "K-fold CV on target samples only",
    "oracle": "oracle: chosen on test data, not a fair comparison",
}

Records = list[dict[str, Any]]
Grid = dict[tuple[str, str, int], dict[int, float]]


def grid(records: Iterable[dict[str, Any]], metric: str = PRIMARY) -> Grid:
    """(pair, method, n_target) -> {seed: target error}."""
    out: Grid = defaultdict(dict)
    for r in ok_records(records):
        out[(r["pair"], r["method"], r["n_target"])][r["seed"]] = r["target"][metric]
    return out


def win_rate(g: Grid, pair: str, method: str, n: int, ref: str = REF) -> float | None:
    """Share of seeds where ``method`` has lower target error than ``ref`` (paired)."""
    a, b = g.get((pair, method, n), {}), g.get((pair, ref, n), {})
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return None
    return float(np.mean([a[s] < b[s] for s in seeds]))


def verdict(ratio: float) -> str:
    """"wins" (< 0.99x the best baseline), "ties" (0.99-1.01x) or "loses" (> 1.01x);
    "undefined" for a NaN ratio (an error that is not a number), never a tie."""
    if math.isnan(ratio):
        return "undefined"
    return "wins" if ratio < WIN else "loses" if ratio > LOSE else "ties"


def _ratio_text(ratio: float) -> str:
    return "NaN error" if math.isnan(ratio) else f"{ratio:.2f}x"


def ratio_interval(a: Iterable[float], b: Iterable[float], level: float = LEVEL,
                   resamples: int = RESAMPLES) -> tuple[float, float] | None:
    """Paired bootstrap interval of ``mean(a) / mean(b)`` over seeds (``a[i]`` and
    ``b[i]`` from one seed): seeds drawn with replacement, the central ``level`` share of
    the resampled ratios. None below :data:`MIN_SEEDS` seeds or with a value that is not
    finite (its ratio is not defined either). Deterministic (a fixed generator). With a
    handful of seeds it is a rough guide to how much of a difference the seeds alone
    make, not a test."""
    x, y = np.asarray(list(a), dtype=float), np.asarray(list(b), dtype=float)
    if len(x) != len(y):
        raise ValueError(f"paired values: {len(x)} against {len(y)}")
    if len(x) < MIN_SEEDS or not (np.isfinite(x).all() and np.isfinite(y).all()):
        return None
    idx = np.random.default_rng(0).integers(0, len(x), size=(resamples, len(x)))
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = x[idx].mean(axis=1) / y[idx].mean(axis=1)
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(ratios, [tail, 100 - tail])
    return float(lo), float(hi)


def comparisons(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (pair, n) with a baseline: ``pair``, ``n``, ``best`` (the best
    baseline), ``base`` (its mean target error), ``seeds`` (how many the means are over:
    those where every method finished, :func:`~pacsim.plots.paired`) and ``of`` (seeds
    with any finished cell) and, per PAC method present, its ratio to the best baseline
    under the method's name and that ratio's seed-noise interval under ``"<method> ci"``
    (:func:`ratio_interval`; None with fewer than :data:`MIN_SEEDS` seeds)."""
    records = list(records)
    ok = ok_records(records)
    rows = []
    for pair, n in sorted({(r["pair"], r["n_target"]) for r in ok}):
        rs = paired(ok, pair, n)
        means = {m: float(np.mean([r["target"]["rmse"] for r in rs if r["method"] == m]))
                 for m in methods_in(rs)}
        base = {m: v for m, v in means.items() if is_baseline(m) and not math.isnan(v)}
        if not base:
            continue
        best = min(base, key=base.get)
        row: dict[str, Any] = {
            "pair": pair, "n": n, "best": best, "base": base[best],
            "seeds": len({r["seed"] for r in rs}),
            "of": len({r["seed"] for r in ok if r["pair"] == pair and r["n_target"] == n})}
        per_seed = {m: {r["seed"]: r["target"]["rmse"] for r in rs if r["method"] == m}
                    for m in means}
        seeds = sorted(per_seed[best])
        for m in PAC_METHODS:
            if m in means and base[best] > 0:
                row[m] = means[m] / base[best]
                row[f"{m} ci"] = ratio_interval([per_seed[m][s] for s in seeds],
                                                [per_seed[best][s] for s in seeds])
        rows.append(row)
    return rows


def _ns(ns: Iterable[int]) -> str:
    ns = list(ns)
    return "n=" + ", ".join(str(n) for n in ns)


def summary_lines(records: Iterable[dict[str, Any]]) -> list[str]:
    """Plain-language findings: where PAC wins, ties and loses against the best baseline
    (every pair and n), the trade-off criterion, and forgetting."""
    records = list(records)
    ok = ok_records(records)
    rows = comparisons(records)
    lines = []
    apart = sorted(k for k in {(r["pair"], r["n_target"]) for r in ok} if not paired(ok, *k))
    if apart:
        lines.append("- **Not compared** (no seed where every method finished): "
                     + ", ".join(f"{p} n={n}" for p, n in apart) + ".")
    for m in PAC_METHODS[::-1]:
        mine = [r for r in rows if m in r]
        if not mine:
            continue
        count = Counter(verdict(r[m]) for r in mine)
        who = "PAC overall** (pacsim's recipe, `pac`)" if m == "pac" else \
            "The paper's recipe overall** (`pac-paper`)"
        undefined = (f", has an error that is not a number (NaN) at {count['undefined']}"
                     if count["undefined"] else "")
        lines.append(f"- **{who}: wins at {count['wins']}, ties at {count['ties']}{undefined} "
                     f"and loses at {count['loses']} of the {len(mine)} (pair, n) "
                     "combinations against "
                     f"the best baseline (the lowest mean target RMSE of "
                     f"{', '.join(m for m in methods_in(ok) if is_baseline(m))}, over the seeds "
                     "where every method finished).")
    for pair in sorted({r["pair"] for r in rows}):
        mine = [r for r in rows if r["pair"] == pair]
        parts = [f"n={r['n']}: PAC {verdict(r['pac'])} ({_ratio_text(r['pac'])}"
                 + ("" if math.isnan(r["pac"]) else " the best baseline")
                 + f", {r['best']}{_partial(r)})" for r in mine if "pac" in r]
        text = "; ".join(parts)
        paper = [r for r in mine if "pac-paper" in r]
        if paper:
            groups: dict[str, list[str]] = defaultdict(list)
            for r in paper:
                groups[verdict(r["pac-paper"])].append(
                    f"{r['n']} ({_ratio_text(r['pac-paper'])}{_partial(r)})")
            said = "; ".join(f"{v} at n={', '.join(groups[v])}"
                             for v in ("wins", "ties", "loses", "undefined") if groups[v])
            text += (". " if text else "") + f"pac-paper {said}"
        if text:
            lines.append(f"- **{pair}**: {text}.")
    noise = _noise_line(rows)
    if noise:
        lines.append(noise)
    qual = tradeoff_table(records)
    if qual:
        count = Counter(m for row in qual for m in row["qualify"])
        methods = methods_in({"method": m} for row in qual for m in row["points"])
        text = ", ".join(f"{m} at {count[m]}" for m in methods if count[m])
        none = [m for m in methods if not count[m]]
        lines.append(f"- **Trade-off** (within {TARGET_TOL:.0%} of the best target RMSE of "
                     f"every method and forgetting <= {FORGET_TOL:g}x, means over seeds): "
                     + (f"{text} of the {len(qual)} (pair, n) combinations" if text else
                        f"no method at any of the {len(qual)} (pair, n) combinations")
                     + (f"; never {', '.join(none)}" if text and none else "") + ".")
    forget: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in ok:
        forget[r["method"]][r["pair"]].append(forgetting_ratio(r))
    if forget:
        # per pair the mean ratio; across pairs the geometric mean, so no pair dominates
        gm = {m: float(np.exp(np.mean([np.log(np.mean(v)) for v in by_pair.values()])))
              for m, by_pair in forget.items()}
        text = ", ".join(f"{m} {gm[m]:.2f}x" for m in sorted(gm, key=gm.get))
        lines.append(f"- **Forgetting** (source RMSE after transfer / before; geometric mean "
                     f"over pairs): {text}. PAC is evaluated through its source view, which "
                     "reproduces the allocated source model exactly; its ratio reflects only "
                     "the prune-and-retrain step.")
    return lines


def _noise_line(rows: list[dict[str, Any]]) -> str | None:
    """How many PAC / best-baseline ratios lie clear of the seed noise (their interval
    excludes 1) and which do not, per PAC method; None without intervals."""
    parts = []
    for m in PAC_METHODS[::-1]:
        mine = [r for r in rows if r.get(f"{m} ci") is not None]
        if not mine:
            continue
        worse = [r for r in mine if r[f"{m} ci"][0] > 1]
        better = [r for r in mine if r[f"{m} ci"][1] < 1]
        within = [f"{r['pair']} n={r['n']}" for r in mine if r not in worse + better]
        parts.append(f"`{m}` clearly better at {len(better)}, clearly worse at {len(worse)} "
                     f"of {len(mine)}" + (f" (within the noise: {', '.join(within)})"
                                          if within else ""))
    if not parts:
        return None
    return (f"- **Seed noise** ({LEVEL:.0%} paired bootstrap interval over seeds of the "
            f"ratio to the best baseline; a rough guide with a few seeds): "
            + "; ".join(parts) + ".")


def _partial(row: dict[str, Any]) -> str:
    """What a comparison row leaves out: the seeds where some method failed."""
    return "" if row["seeds"] == row["of"] else \
        f"; on the {row['seeds']} of {row['of']} seeds where every method finished"


def verdict_table(records: Iterable[dict[str, Any]]) -> list[str]:
    """Markdown table "PAC / best baseline target RMSE": a row per pair and PAC method, a
    column per n (a wins is in bold)."""
    rows = comparisons(records)
    ns = sorted({r["n"] for r in rows})
    if not any(m in r for r in rows for m in PAC_METHODS):
        return []
    md = ["| pair | method | " + " | ".join(f"n={n}" for n in ns) + " |",
          "|---|---|" + "---|" * len(ns)]
    for pair in sorted({r["pair"] for r in rows}):
        by_n = {r["n"]: r for r in rows if r["pair"] == pair}
        for m in PAC_METHODS[::-1]:
            if not any(m in r for r in by_n.values()):
                continue
            cells = []
            for n in ns:
                r = by_n.get(n, {})
                if m not in r:
                    cells.append("-")
                    continue
                s = "NaN error" if math.isnan(r[m]) else f"{r[m]:.2f} {verdict(r[m])}"
                s = f"**{s}**" if verdict(r[m]) == "wins" else s
                ci = r.get(f"{m} ci")
                cells.append(s if ci is None else f"{s} ({ci[0]:.2f}-{ci[1]:.2f})")
            md.append(f"| {pair} | {m} | " + " | ".join(cells) + " |")
    return md


def tradeoff_table(records: Iterable[dict[str, Any]], pair: str | None = None
                   ) -> list[dict[str, Any]]:
    """Per (pair, n): ``points`` (method -> (forgetting, target error), means over seeds),
    ``best`` (the method with the lowest target error, any method), ``qualify`` (methods
    within TARGET_TOL of it with forgetting <= FORGET_TOL) and ``front`` (non-dominated)."""
    ok = [r for r in ok_records(records) if pair is None or r["pair"] == pair]
    out = []
    for p, n in sorted({(r["pair"], r["n_target"]) for r in ok}):
        pts = tradeoff_points(ok, p, n)
        finite = {m: v for m, v in pts.items() if all(math.isfinite(x) for x in v)}
        if not finite:
            continue
        best = min(finite, key=lambda m: finite[m][1])
        limit = finite[best][1] * (1 + TARGET_TOL)
        qualify = [m for m, (f, e) in finite.items() if e <= limit and f <= FORGET_TOL]
        out.append({"pair": p, "n": n, "points": pts, "best": best, "qualify": qualify,
                    "front": non_dominated(pts)})
    return out


def memory_bytes(record: dict[str, Any]) -> int | None:
    """Bytes to serve both the source and the target setting: the record's
    ``memory_bytes``, else from ``n_params`` (float32): two networks, or for PAC one network
    plus a 1-bit mask per prunable entry (saved source biases not known then); else None."""
    if record.get("memory_bytes") is not None:
        return int(record["memory_bytes"])
    n_params = record.get("n_params")
    if n_params is None:
        return None
    summary = (record.get("pac") or {}).get("summary")
    if record["method"] in PAC_METHODS or summary:
        masked = sum(int(row["numel"]) for row in summary or [])
        return int(n_params) * 4 + math.ceil(masked / 8)
    return 2 * int(n_params) * 4


def _bytes(b: float) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if b >= size:
            return f"{b / size:.3g} {unit}"
    return f"{int(b)} B"


def _typical(values: list[Any]) -> Any:
    """The most frequent value (ties: the first in sorted string order)."""
    count = Counter(values)
    return min(count, key=lambda v: (-count[v], str(v)))


def network_bytes(records: list[dict[str, Any]]) -> int | None:
    """Bytes of one network of a pair: the records' ``network_bytes``, else half of what
    a baseline (two networks) needs, else the parameters as float32; None without any."""
    own = [int(r["network_bytes"]) for r in records if r.get("network_bytes") is not None]
    if own:
        return _typical(own)
    two = [r["memory_bytes"] for r in records if r.get("memory_bytes") is not None
           and r["method"] not in PAC_METHODS and not (r.get("pac") or {}).get("summary")]
    if two:
        return _typical(two) // 2
    params = [r["n_params"] for r in records if r.get("n_params") is not None]
    return 4 * int(_typical(params)) if params else None


def memory_table(records: Iterable[dict[str, Any]], pair: str) -> list[str]:
    """Markdown table of the memory each method of ``pair`` needs to serve both settings."""
    rs = [r for r in ok_records(records) if r["pair"] == pair]
    md = ["| method | parameters | memory to serve both settings | worst / one network |",
          "|---|---|---|---|"]
    one = network_bytes(rs)
    for m in methods_in(rs):
        mine = [r for r in rs if r["method"] == m]
        params = [r["n_params"] for r in mine if r.get("n_params") is not None]
        mem = [b for b in map(memory_bytes, mine) if b is not None]
        p = _typical(params) if params else None
        b = _typical(mem) if mem else None
        # the head copy of PAC's head rung varies by cell: the worst cell is the claim
        spread = f" (up to {_bytes(max(mem))})" if len(set(mem)) > 1 else ""
        worst = max(mem) if mem else None
        md.append(f"| {m} | {'-' if p is None else f'{p:,}'} | "
                  f"{'-' if b is None else _bytes(b) + spread} | "
                  f"{f'{worst / one:.2f}x' if worst is not None and one else '-'} |")
    return md


def selection_mode(record: dict[str, Any]) -> str:
    """How the cell's hyper-parameters were chosen; records without ``selection`` (older
    runs) used the fixed budget."""
    sel = record.get("selection")
    return str(sel.get("mode") or "fixed") if isinstance(sel, dict) else "fixed"


def final_state(record: dict[str, Any]) -> str:
    """Which state of the final retrain a selected cell kept: "best" (its lowest-loss
    epoch) or "last" (the chosen step's; what records from before the choice existed
    kept)."""
    sel = record.get("selection") or {}
    config = (record.get("config") or {}).get("selection")
    return str(sel.get("final") or (config.get("final") if isinstance(config, dict) else None)
               or "last")


def _label(mode: str, rs: list[dict[str, Any]]) -> str:
    label = SELECTION_LABELS.get(mode, f"{mode} (unknown selection mode)")
    if mode == "cv":
        cv = [r for r in rs if selection_mode(r) == "cv"]
        folds = sorted({r["selection"]["folds"] for r in cv if r["selection"].get("folds")})
        if folds:
            label += f" (K = {', '.join(map(str, folds))})"
        best = sum(final_state(r) == "best" for r in cv)
        label += (" and the final retrain's state at the chosen step" if not best else
                  " and the final retrain's lowest-loss epoch" if best == len(cv) else
                  f" and the final retrain's lowest-loss epoch in {best} of {len(cv)} cells "
                  "(the state at the chosen step in the others)")
    return label


def selection_header(records: Iterable[dict[str, Any]]) -> str:
    """One sentence: how hyper-parameters were chosen, per method where they differ."""
    rs = ok_records(records)
    modes = {selection_mode(r) for r in rs}
    if len(modes) <= 1:
        mode = next(iter(modes), "fixed")
        return f"Hyper-parameters: {_label(mode, rs)}, for every method."
    parts = []
    for m in methods_in(rs):
        mine = [r for r in rs if r["method"] == m]
        count = Counter(selection_mode(r) for r in mine)
        if len(count) == 1:
            parts.append(f"{m}: {_label(next(iter(count)), mine)}")
        else:
            parts.append(f"{m}: mixed (" + ", ".join(
                f"{_label(k, mine)} in {v} cells" for k, v in sorted(count.items())) + ")")
    return "Hyper-parameters differ between methods: " + "; ".join(parts) + "."


def _value(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return json.dumps(v)
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def chosen_table(records: Iterable[dict[str, Any]]) -> list[str]:
    """Markdown table: per pair and method, the most frequent choice of each option (with
    the share of cells) and the median chosen steps, over the cells whose hyper-parameters
    were selected (``selection.chosen`` present and the mode not "fixed")."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in ok_records(records):
        sel = r.get("selection")
        if isinstance(sel, dict) and "chosen" in sel and selection_mode(r) != "fixed":
            groups[(r["pair"], r["method"])].append(sel)
    if not groups:
        return []
    md = ["| pair | method | cells | most frequent choice (share of cells) | median steps "
          "(range) |", "|---|---|---|---|---|"]
    for pair in sorted({p for p, _ in groups}):
        for m in methods_in({"method": m} for p, m in groups if p == pair):
            sels = groups[(pair, m)]
            keys = sorted({k for s in sels for k in (s.get("chosen") or {})})
            opts = []
            for k in keys:
                vals = [_value((s.get("chosen") or {}).get(k)) for s in sels
                        if k in (s.get("chosen") or {})]
                top = _typical(vals)
                opts.append(f"{k}={top} ({vals.count(top)}/{len(sels)})")
            steps = [s["steps"] for s in sels if s.get("steps") is not None]
            st = (f"{float(np.median(steps)):g} ({min(steps)}-{max(steps)})" if steps else "-")
            md.append(f"| {pair} | {m} | {len(sels)} | {', '.join(opts) or '-'} | {st} |")
    return md


def _fmt(v: float) -> str:
    return f"{v:.3g}" if abs(v) >= 1e-3 else f"{v:.2e}"


def _stderr(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def write_report(out: str | os.PathLike[str], warn: Callable[[str], None] = _stderr) -> Path:
    """Write ``out/report.md`` and its PNG figures; returns the report path.

    Unusable lines of the results file are skipped, each reported through ``warn``; a
    folder without one successful cell is a ``ValueError``.
    """
    import matplotlib.pyplot as plt  # after ..plots, which picks a headless backend

    out = Path(out)
    if os.path.lexists(out) and not out.is_dir():
        raise ValueError(f"{out}: not a results folder")
    records = latest(read_results(out, warn, complete=True))
    if not records:
        raise ValueError(f"{out}: no results ({RESULTS} missing or empty, or every line "
                         "skipped)")
    ok = ok_records(records)
    failed = [r for r in records if r.get("status") != "ok"]
    if not ok:
        first = str(failed[0].get("error", "no error recorded")).strip().splitlines()
        raise ValueError(f"{out}: no successful cells ({len(failed)} failed; first: "
                         f"{(first or ['?'])[0][:160]})")
    run = records
    records = records + auto_records(records)  # auto, derived from the cells' CV losses
    ok = ok_records(records)
    g = grid(records)
    figdir = out / "figures"
    figdir.mkdir(parents=True, exist_ok=True)

    def save(fig: Any, name: str) -> str:
        try:  # atomically, as report.md: a kill never leaves half a PNG
            atomic_write(figdir / name, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
        finally:
            plt.close(fig)
        return f"figures/{name}"

    pairs = sorted({r["pair"] for r in ok})
    first = ok[0] if ok else records[0]
    md = [f"# pacsim benchmark report: `{out.name}`", ""]
    answer = first_lines(records)
    if answer:
        md += answer + [""]
    md += [f"{len(ok_records(run))} cells finished, {len(failed)} failed; device "
           f"`{first.get('device', '?')}`, versions `{first.get('versions', {})}`.", ""]
    machine = out / "machine.json"
    machine_info: dict[str, Any] = {}
    if machine.exists():
        info = machine_info = json.loads(machine.read_text())
        md += [f"Run on {info.get('cpu', '?')} ({info.get('cpu_count', '?')} cores"
               + (f", GPU {info['gpu']}" if info.get("gpu") else "")
               + f"), suite `{info.get('suite', '?')}`, {info.get('jobs', '?')} job(s).", ""]
    md += _incomplete_lines(run, machine_info)
    md += [selection_header(records), ""]
    md += ["## Summary", ""] + summary_lines(records) + [""]
    table = verdict_table(records)
    if table:
        md += [f"PAC / best baseline target RMSE (means over seeds; below {WIN} wins, "
               f"{WIN}-{LOSE} ties, above {LOSE} loses; in brackets, from {MIN_SEEDS} "
               f"seeds on, the ratio's {LEVEL:.0%} paired bootstrap interval over seeds: "
               "where it holds 1, the seeds alone could turn the verdict):",
               ""] + table + [""]
    md += _which_method_section(records, save)
    modes = {selection_mode(r) for r in ok}
    how = ("the same step budget and options" if modes == {"fixed"} else
           "the same folds and grid budget, hyper-parameters chosen on the target samples "
           "only" if modes == {"cv"} else "the hyper-parameters stated above")
    md += ["Target error is the RMSE on a large held-out target test set in physical units, "
           "mean +- std over seeds; the best mean per column is in bold. Every method starts "
           f"from the same source model and sees the same target subset and {how}.", ""]
    for pair in pairs:
        rs = [r for r in ok if r["pair"] == pair]
        methods = methods_in(rs)
        ns = sorted({r["n_target"] for r in rs})
        zs = np.mean([r["zero_shot"]["rmse"] for r in rs])
        md += [f"## {pair}", "", f"Zero-shot target RMSE of the source model: {_fmt(zs)}.", ""]
        md += ["| method | " + " | ".join(f"n={n}" for n in ns) + " |",
               "|---|" + "---|" * len(ns)]
        best = {n: min((np.mean(list(g[(pair, m, n)].values())), m) for m in methods
                       if g.get((pair, m, n)))[1] for n in ns}
        for m in methods:
            cells = []
            for n in ns:
                v = list(g.get((pair, m, n), {}).values())
                if not v:
                    cells.append("-")
                    continue
                s = f"{_fmt(float(np.mean(v)))} +- {_fmt(float(np.std(v)))}"
                cells.append(f"**{s}**" if best[n] == m else s)
            md.append(f"| {m} | " + " | ".join(cells) + " |")
        md += ["", f"Paired win rate against {REF} (share of seeds with lower target error):",
               "", "| method | " + " | ".join(f"n={n}" for n in ns) + " |",
               "|---|" + "---|" * len(ns)]
        for m in methods:
            if m == REF:
                continue
            rates = [win_rate(g, pair, m, n) for n in ns]
            md.append(f"| {m} | " + " | ".join("-" if w is None else f"{w:.0%}" for w in rates)
                      + " |")
        fig_path = save(plots.error_vs_n(rs, pair), f"{pair}_error_vs_n.png")
        md += ["", f"![target error against n_target]({fig_path})", ""]
        md += _tradeoff_section(rs, pair, save)
        md += _prediction_figures(out, pair, rs, save, warn)
        pac_rows = [r for m in PAC_METHODS[::-1] for r in rs
                    if r["method"] == m and (r.get("pac") or {}).get("summary")]
        if pac_rows:
            fig = plots.essential_share(pac_rows[0]["pac"]["summary"],
                                        f"{pair}: {pac_rows[0]['method']} essential weights "
                                        "per layer")
            md += [f"![PAC essential share]({save(fig, f'{pair}_pac_layers.png')})", ""]
    md += _source_models(ok, pairs)
    md += ["## Forgetting of the source task", "",
           "Source test RMSE after transfer (PAC: through its source view), mean over every "
           "cell, and its ratio to the source model's own source RMSE.", ""]
    methods = methods_in(ok)
    md += ["| pair | source model | " + " | ".join(methods) + " |",
           "|---|---|" + "---|" * len(methods)]
    for pair in pairs:
        rs = [r for r in ok if r["pair"] == pair]
        before = np.mean([r["source_before"]["rmse"] for r in rs])
        cells = []
        for m in methods:
            v = [r["source_after"]["rmse"] for r in rs if r["method"] == m]
            cells.append(f"{_fmt(float(np.mean(v)))} ({np.mean(v) / before:.2f}x)" if v else "-")
        md.append(f"| {pair} | {_fmt(float(before))} | " + " | ".join(cells) + " |")
    md += ["", f"![forgetting]({save(plots.forgetting(ok), 'forgetting.png')})", ""]
    chosen = chosen_table(run)
    if chosen:
        md += ["## Chosen hyper-parameters", "",
               "Over the cells whose hyper-parameters were selected: per option the value "
               "chosen most often, and the median number of steps chosen.", ""] + chosen + [""]
    md += compute_section(ok_records(run), machine_info)
    if failed:
        md += ["## Failed cells", ""]
        md += [f"- `{r['pair']}|{r['method']}|{r['n_target']}|{r['seed']}`: {r.get('error')}"
               for r in failed]
        md.append("")
    text = "\n".join(md)
    return atomic_write(out / "report.md", lambda tmp: Path(tmp).write_text(text))


def _which_method_section(records: Records, save: Any) -> list[str]:
    """Every method (and ``auto``) against the per-problem best baseline, the performance
    profile, what selection cost per method, and the cells still chosen at an edge."""
    means = problem_means(records)
    rows = ratio_summary(ratios_to_best(means))
    if not rows:
        return []
    md = ["## Which method to use", "",
          "Each method's mean target RMSE over the per-problem best baseline (a problem is "
          "one pair and n; the best baseline is picked per problem on test data, so it is "
          "an oracle no single method can be known to match in advance). `auto` picks, per "
          "cell, the method with the lowest cross-validation loss on the target samples; "
          "`auto-keep-source` only among the PAC methods, which keep the source exactly.", "",
          "| method | geometric mean | worst | worst at | problems |", "|---|---|---|---|---|"]
    md += [f"| {r['method']} | {r['geomean']:.3f} | {r['worst']:.2f} | {r['worst_at'][0]} "
           f"n={r['worst_at'][1]} | {r['problems']} |" for r in rows]
    methods = methods_in({"method": m} for by in means.values() for m in by)
    prof = performance_profile(means, methods, TAUS, reference=[
        m for m in methods if m not in ("auto", "auto-keep-source")])
    fig = save(plots.performance_profile(prof, TAUS), "performance_profile.png")
    at = [1.0, 1.05, 1.15, 1.5]
    md += ["", "Performance profile (Dolan and More): the share of problems where a method's "
           "mean error is within tau times the best method's.", "",
           f"![performance profile]({fig})", "",
           "| method | " + " | ".join(f"tau={t:g}" for t in at) + " |",
           "|---|" + "---|" * len(at)]
    for m in methods:
        md.append(f"| {m} | " + " | ".join(f"{prof[m][TAUS.index(t)]:.0%}" for t in at)
                  + " |")
    cost = selection_cost(records)
    if cost:
        md += ["", "Selection cost per cell (cross-validation on the target samples, edge "
               "extensions included, and the final retrain; a batched cell's seconds are "
               "its share of the batch):", "",
               "| method | cells | configurations | trainings | seconds | chosen inside "
               "every grid axis and horizon |", "|---|---|---|---|---|---|"]
        md += [f"| {c['method']} | {c['cells']} | {_mean(c['configs'])} | "
               f"{_mean(c['trainings'])} | {c['seconds']:.1f} | "
               f"{'-' if c['interior'] is None else format(c['interior'], '.0%')} |"
               for c in cost]
    edges = edge_cells(records)
    md += ["", f"Cells whose final choice is still at an edge: {len(edges)}."]
    if edges:
        md += [""] + [f"- {e}" for e in edges]
    return md + [""]


def _incomplete_lines(records: Records, machine: dict[str, Any]) -> list[str]:
    """The pairs whose planned cells (``machine.json``'s ``planned``, written by the
    runner) have not all finished: a suite committed in parts says what is missing."""
    planned = machine.get("planned")
    if not isinstance(planned, dict):
        return []
    done = Counter(r["pair"] for r in ok_records(records))
    short = [f"{p} ({done.get(p, 0)} of {n})" for p, n in sorted(planned.items())
             if isinstance(n, int) and done.get(p, 0) < n]
    if not short:
        return []
    return [f"**Incomplete**: cells finished of those planned, per pair: {', '.join(short)}; "
            "its numbers cover the finished cells only.", ""]


def _mean(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


def compute_section(ok: list[dict[str, Any]], machine: dict[str, Any]) -> list[str]:
    """Where the time went: per pair the cells, how they trained (stacked, batched) and
    their seconds (a batched cell's is its equal share of the batch), and the runs' wall
    time from ``machine.json`` (a resumed suite has several runs)."""
    md = ["## Compute", "",
          "| pair | cells | stacked | batched (cells a task, most) | cell seconds (sum) "
          "| median per cell [s] |", "|---|---|---|---|---|---|"]
    for pair in sorted({r["pair"] for r in ok}):
        rs = [r for r in ok if r["pair"] == pair]
        secs = [float(r.get("seconds") or 0.0) for r in rs]
        sel = [r.get("selection") or {} for r in rs]
        stacked = sum(bool(s.get("stacked")) for s in sel)
        batch = max((int(s.get("batch") or 1) for s in sel), default=1)
        md.append(f"| {pair} | {len(rs)} | {stacked} | {'-' if batch == 1 else batch} | "
                  f"{sum(secs):.0f} | {float(np.median(secs)):.1f} |")
    runs = [r for r in machine.get("runs", []) if isinstance(r, dict)]
    if runs:
        wall = sum(float(r.get("seconds", 0.0)) for r in runs)
        cells = sum(int(r.get("ok", 0)) + int(r.get("failed", 0)) for r in runs)
        cut = sum(r.get("ended") != "done" for r in runs)
        md += ["", f"Wall time: {wall:.0f} s for {cells} cells in {len(runs)} run(s)"
               + (f", {cut} of them interrupted" if cut else "")
               + f", {machine.get('jobs', '?')} job(s) (from `machine.json`; data building "
               "not included)."]
    return md + [""]


def _source_models(ok: list[dict[str, Any]], pairs: list[str]) -> list[str]:
    """Each pair's source model on its source test set: the architectures side by side."""
    md = ["## Source models", "",
          "Each pair's source model on the source test set, mean over seeds: RMSE in "
          "physical units and nRMSE (the relative L2 error per sample, averaged, as "
          "PDEBench defines it).", "",
          "| pair | model | source RMSE | source nRMSE |", "|---|---|---|---|"]
    for pair in pairs:
        first: dict[tuple[Any, ...], dict[str, Any]] = {}
        for r in ok:  # one record per source model (pair, seed)
            if r["pair"] == pair:
                first.setdefault((r["seed"],), r)
        rs = list(first.values())
        model = (rs[0].get("config") or {}).get("model", {}).get("name", "?")
        rmse = np.mean([r["source_before"]["rmse"] for r in rs])
        nrmse = np.mean([r["source_before"]["nrmse"] for r in rs])
        md.append(f"| {pair} | {model} | {_fmt(float(rmse))} | {_fmt(float(nrmse))} |")
    return md + [""]


def _tradeoff_section(rs: Records, pair: str, save: Any) -> list[str]:
    rows = tradeoff_table(rs, pair)
    if not rows:
        return []
    fig = save(plots.tradeoff(rs, pair), f"{pair}_tradeoff.png")
    md = ["### Trade-off: target error against source forgetting", "",
          f"![target error against forgetting]({fig})",
          "", f"Methods within {TARGET_TOL:.0%} of the best target RMSE (over every method) "
          f"and with forgetting <= {FORGET_TOL:g}x, means over seeds; non-dominated: no other "
          "method has both lower target error and lower forgetting.", "",
          f"| n | best target RMSE | within {TARGET_TOL:.0%} and forgetting <= "
          f"{FORGET_TOL:g}x | non-dominated |", "|---|---|---|---|"]
    for row in rows:
        e = row["points"][row["best"]][1]
        md.append(f"| {row['n']} | {_fmt(e)} ({row['best']}) | "
                  f"{', '.join(row['qualify']) or 'none'} | {', '.join(row['front']) or '-'} |")
    if not any(memory_bytes(r) is not None for r in rs):
        return md + ["", "Memory to serve both settings: not in these records (no "
                     "`memory_bytes` or `n_params`).", ""]
    md += ["", "Memory to serve both settings (each tensor at its own element size; records "
           "without `memory_bytes`: 4 bytes a parameter): PAC keeps one network, a 1-bit mask "
           "per prunable weight and the source biases it saved; every other method keeps "
           "two networks. `-`: not in the records.", ""]
    return md + memory_table(rs, pair) + [""]


def _prediction_figures(out: Path, pair: str, rs: Records, save: Any,
                        warn: Callable[[str], None]) -> list[str]:
    """Predicted against true for the PAC cell of ``pair`` in the records (the largest
    n, the first seed), from its saved test predictions; an unreadable file is skipped."""
    md: list[str] = []
    cells = sorted((r for r in rs if r["method"] in PAC_METHODS),
                   key=lambda r: (r["method"] != "pac", -r["n_target"], r["seed"]))
    path = next((p for r in cells if (p := out / "predictions" / f"{pair}_{r['method']}_n"
                                      f"{r['n_target']}_s{r['seed']}.npz").is_file()), None)
    if path is None:
        return md
    try:
        with np.load(path, allow_pickle=False) as z:
            pred, truth = z["pred"], z["truth"]
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        warn(f"{path}: unreadable predictions, figure skipped ({str(exc)[:120]})")
        return md
    tag = path.stem.removeprefix(f"{pair}_")
    fig = plots.scatter(pred, truth, f"{pair}: PAC ({tag})")
    md += [f"![predicted vs true]({save(fig, f'{pair}_scatter.png')})", ""]
    if truth.ndim in (3, 4):
        fig = plots.field_panels(truth, pred, 3, f"{pair}: PAC ({tag})")
        md += [f"![fields]({save(fig, f'{pair}_fields.png')})", ""]
    return md
