"""Where PAC pays: PAC against the best baseline as the model widens.

For each width, a suite is written from the full suite's pairs with the model's width
replaced (an MLP's hidden layers, an FNO's ``hidden_channels``) and run by the benchmark
runner under the full protocol (every method chosen by the same target-only
cross-validation, edges extended). Per (pair, n, width) it reports PAC's mean target
RMSE over the best baseline's with the seeds' bootstrap interval
(:func:`pacsim.bench.report.comparisons`), PAC's source view against the unpruned model,
the pruning ratio allocate kept, and the smallest width from which PAC stays within
``--within`` (1.02) of the best baseline. Writes ``summary.json``, ``pac_width.md`` and
``pac_width.png`` into ``--work``; each width's run resumes (``--work/w<W>``). Usage:
``python benchmarks/pac_width.py --work benchmarks/results/pac_width
[--pairs friedman pendulum burgers1d] [--widths 32 64 128 256 512 1024] [--n 10 100]
[--seeds 0 1 2 3 4] [--jobs 2] [--report-only]``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import tomllib
import torch

from pacsim.bench.report import comparisons
from pacsim.bench.results import latest, read_results
from pacsim.bench.runner import RunOptions, run_suite
from pacsim.plots import ok_records
from pacsim.sysinfo import one_line

BASE = Path(__file__).parent / "suites" / "full.toml"
BASELINES = ["scratch", "finetune", "head", "l2sp", "bitfit"]


def _toml(value: Any) -> str:
    """``value`` as a TOML value (tables inline)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {_toml(v)}" for k, v in value.items()) \
            + " }"
    raise TypeError(f"no TOML for {value!r}")


def widened(model: dict[str, Any], width: int) -> dict[str, Any]:
    """``model`` (a suite's model table) at ``width``: every hidden layer of an MLP, the
    channels of an FNO."""
    out = dict(model)
    if out["name"] == "mlp":
        out["hidden"] = [width] * len(out.get("hidden", [128, 128]))
    elif out["name"] == "fno":
        out["hidden_channels"] = width
    else:
        raise SystemExit(f"no width rule for model {out['name']!r}")
    return out


def pair_spec(base: Path, raw: dict[str, Any], pair: str, out: Path) -> dict[str, Any]:
    """A copy of ``base``'s ``[pair.NAME]`` table for a suite written into the folder
    ``out``: its recipe path made relative to ``out`` (as a suite's recipes are), so the
    suite still loads from another checkout of the repository."""
    if pair not in raw["pair"]:
        raise SystemExit(f"{base}: no pair {pair!r}")
    spec = dict(raw["pair"][pair])
    recipe = (base.parent / spec["recipe"]).resolve()
    spec["recipe"] = Path(os.path.relpath(recipe, out.resolve())).as_posix()
    return spec


def pair_lines(pair: str, spec: dict[str, Any]) -> list[str]:
    """``spec`` as a suite's ``[pair.NAME]`` table."""
    return ["", f"[pair.{pair}]"] + [f"{k} = {_toml(v)}" for k, v in spec.items()]


def write_suite(base: Path, pairs: list[str], width: int, ns: list[int], seeds: list[int],
                methods: list[str], out: Path) -> Path:
    """The base suite's ``pairs`` at ``width``, sizes ``ns``, ``seeds``, ``methods``."""
    raw = tomllib.loads(base.read_text())
    lines = [f"# {base.name}'s pairs at width {width} (benchmarks/pac_width.py)",
             f'name = "pac-width-{width}"', f"seeds = {_toml(seeds)}",
             f"n_target = {_toml(ns)}", f"methods = {_toml(methods)}",
             f"selection = {_toml(raw['selection'])}",
             # the base suite's datasets: the same recipes and sizes, built once
             f"data_dir = {_toml(raw.get('data_dir', 'datasets/built/' + raw['name']))}",
             "", "[train]"]
    lines += [f"{k} = {_toml(v)}" for k, v in raw["train"].items()]
    for pair in pairs:
        spec = pair_spec(base, raw, pair, out)
        spec["model"] = widened(spec["model"], width)
        spec.pop("n_target", None)
        if isinstance(spec.get("method"), dict):
            spec["method"] = {m: o for m, o in spec["method"].items() if m in methods}
            if not spec["method"]:
                spec.pop("method")
        lines += pair_lines(pair, spec)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "suite.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def summarise(work: Path, widths: list[int]) -> list[dict[str, Any]]:
    """One row per (pair, n, width) from the runs under ``work``."""
    rows = []
    for w in widths:
        results = work / f"w{w}"
        if not (results / "results.jsonl").exists():
            continue
        records = latest(read_results(results))
        ok = ok_records(records)
        for row in comparisons(records):
            pac = [r for r in ok if (r["pair"], r["n_target"], r["method"])
                   == (row["pair"], row["n"], "pac")]
            if "pac" not in row or not pac:
                continue
            ci = row.get("pac ci")
            rows.append({
                "pair": row["pair"], "n": row["n"], "width": w, "best": row["best"],
                "ratio": row["pac"], "ci": ci, "seeds": row["seeds"],
                "source": float(np.mean([r["source_after"]["rmse"] / r["source_before"]["rmse"]
                                         for r in pac])),
                "ratios_kept": sorted({(r.get("pac") or {}).get("allocate", {}).get("ratio")
                                       for r in pac} - {None}),
                "params": pac[0]["n_params"]})
    return rows


def pays_from(rows: list[dict[str, Any]], within: float) -> dict[tuple[str, int], int | None]:
    """(pair, n) -> the smallest width from which PAC's ratio stays <= ``within`` at
    every wider width measured (None: not even at the widest)."""
    out: dict[tuple[str, int], int | None] = {}
    for key in sorted({(r["pair"], r["n"]) for r in rows}):
        series = sorted((r["width"], r["ratio"]) for r in rows if (r["pair"], r["n"]) == key)
        start = None
        for w, ratio in reversed(series):
            if not ratio <= within:
                break
            start = w
        out[key] = start
    return out


def table(rows: list[dict[str, Any]], within: float) -> list[str]:
    lines = ["| pair | n | width | params | PAC / best baseline (seed interval) | best | "
             "PAC source / unpruned | ratio kept | seeds |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["pair"], r["n"], r["width"])):
        ci = f" ({r['ci'][0]:.2f}-{r['ci'][1]:.2f})" if r["ci"] else ""
        kept = ", ".join(f"{k:g}" for k in r["ratios_kept"]) or "-"
        lines.append(f"| {r['pair']} | {r['n']} | {r['width']} | {r['params']} | "
                     f"{r['ratio']:.3f}{ci} | {r['best']} | {r['source']:.3f} | {kept} | "
                     f"{r['seeds']} |")
    lines.append("")
    for (pair, n), w in pays_from(rows, within).items():
        lines.append(f"- {pair} n={n}: " + (f"PAC within {within}x of the best baseline from "
                                           f"width {w} on" if w is not None else
                                           f"PAC not within {within}x at any width measured"))
    return lines


def figure(rows: list[dict[str, Any]], within: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for key in sorted({(r["pair"], r["n"]) for r in rows}):
        rs = sorted((r for r in rows if (r["pair"], r["n"]) == key), key=lambda r: r["width"])
        x = [r["width"] for r in rs]
        line, = ax.plot(x, [r["ratio"] for r in rs], marker="o", label=f"{key[0]} n={key[1]}")
        lo = [r["ci"][0] if r["ci"] else r["ratio"] for r in rs]
        hi = [r["ci"][1] if r["ci"] else r["ratio"] for r in rs]
        ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.15)
    ax.axhline(1.0, color="k", lw=0.8)
    ax.axhline(within, color="k", lw=0.8, ls="--", label=f"{within}x")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("model width (MLP hidden units, FNO channels)")
    ax.set_ylabel("PAC target RMSE / best baseline's")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--base", type=Path, default=BASE)
    ap.add_argument("--pairs", nargs="+", default=["friedman", "pendulum", "burgers1d"])
    ap.add_argument("--widths", nargs="+", type=int, default=[32, 64, 128, 256, 512, 1024])
    ap.add_argument("--n", nargs="+", type=int, default=[10, 100])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    ap.add_argument("--methods", nargs="+", default=[*BASELINES, "pac"])
    ap.add_argument("--within", type=float, default=1.02)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args()
    if "pac" not in args.methods or not set(args.methods) & set(BASELINES):
        raise SystemExit("--methods needs pac and at least one baseline")
    seconds = {}
    if not args.report_only:
        for w in args.widths:
            out = args.work / f"w{w}"
            suite = write_suite(args.base, args.pairs, w, args.n, args.seeds, args.methods, out)
            t0 = time.perf_counter()
            run_suite(suite, out, RunOptions(jobs=args.jobs, devices=args.device),
                      log=lambda m: None)
            seconds[w] = time.perf_counter() - t0
            print(f"width {w}: {seconds[w]:.0f} s", flush=True)
    rows = summarise(args.work, args.widths)
    if not rows:
        raise SystemExit(f"{args.work}: no finished width")
    machine = one_line(torch.device(args.device))
    lines = [f"Measured on {machine}; pairs {', '.join(args.pairs)}, n {args.n}, seeds "
             f"{args.seeds}, methods {', '.join(args.methods)}.", "", *table(rows, args.within)]
    print("\n".join(lines))
    (args.work / "pac_width.md").write_text("\n".join(lines) + "\n")
    summary = {"machine": machine, "within": args.within, "rows": rows,
               "seconds": seconds, "pays_from": {f"{p} n={n}": w for (p, n), w in
                                                  pays_from(rows, args.within).items()}}
    (args.work / "summary.json").write_text(json.dumps(summary, indent=1, default=float) + "\n")
    figure(rows, args.within, args.work / "pac_width.png")


if __name__ == "__main__":
    main()
