"""``pacsim report DIR``: tables, figures and a plain-language summary of a results folder."""

from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from ..fsutil import atomic_write
from .results import RESULTS, read_results

REF = "finetune"


def _ok(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in records if r.get("status") == "ok"]


def grid(records: list[dict[str, Any]], metric: str = "rmse"
         ) -> dict[tuple[str, str, int], dict[int, float]]:
    """(pair, method, n_target) -> {seed: target error}."""
    out: dict[tuple[str, str, int], dict[int, float]] = defaultdict(dict)
    for r in _ok(records):
        out[(r["pair"], r["method"], r["n_target"])][r["seed"]] = r["target"][metric]
    return out


def win_rate(g: dict[tuple[str, str, int], dict[int, float]], pair: str, method: str, n: int,
             ref: str = REF) -> float | None:
    """Share of seeds where ``method`` has lower target error than ``ref`` (paired)."""
    a, b = g.get((pair, method, n), {}), g.get((pair, ref, n), {})
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return None
    return float(np.mean([a[s] < b[s] for s in seeds]))


def _fmt(v: float) -> str:
    return f"{v:.3g}" if abs(v) >= 1e-3 else f"{v:.2e}"


def summary_lines(records: list[dict[str, Any]]) -> list[str]:
    """Plain-language findings: PAC against the best baseline at the extreme sizes."""
    from ..plots import methods_in

    g = grid(records)
    ok = _ok(records)
    lines = []
    for pair in sorted({r["pair"] for r in ok}):
        ns = sorted({r["n_target"] for r in ok if r["pair"] == pair})
        methods = methods_in([r for r in ok if r["pair"] == pair])
        if "pac" not in methods or len(methods) < 2:
            continue
        parts = []
        for n in (ns[0], ns[-1]) if len(ns) > 1 else (ns[0],):
            means = {m: np.mean(list(g[(pair, m, n)].values())) for m in methods
                     if g.get((pair, m, n))}
            if "pac" not in means:
                continue
            base = {m: v for m, v in means.items() if m != "pac"}
            best = min(base, key=base.get)
            ratio = means["pac"] / base[best]
            verdict = "wins" if ratio < 0.99 else "loses" if ratio > 1.01 else "ties"
            parts.append(f"n={n}: PAC {verdict} ({ratio:.2f}x the best baseline, {best})")
        lines.append(f"- **{pair}**: " + "; ".join(parts) + ".")
    forget: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in ok:
        forget[r["method"]][r["pair"]].append(r["source_after"]["rmse"]
                                              / r["source_before"]["rmse"])
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


def write_report(out: str | os.PathLike[str]) -> Path:
    """Write ``out/report.md`` and its PNG figures; returns the report path."""
    import matplotlib.pyplot as plt

    from .. import plots

    out = Path(out)
    records = read_results(out)
    if not records:
        raise ValueError(f"{out}: no results ({RESULTS} missing or empty)")
    ok = _ok(records)
    failed = [r for r in records if r.get("status") != "ok"]
    g = grid(records)
    figdir = out / "figures"
    figdir.mkdir(parents=True, exist_ok=True)

    def save(fig: Any, name: str) -> str:
        fig.savefig(figdir / name, dpi=110)
        plt.close(fig)
        return f"figures/{name}"

    pairs = sorted({r["pair"] for r in ok})
    first = ok[0] if ok else records[0]
    md = [f"# pacsim benchmark report: `{out.name}`", ""]
    md += [f"{len(ok)} cells finished, {len(failed)} failed; device "
           f"`{first.get('device', '?')}`, versions `{first.get('versions', {})}`.", ""]
    machine = out / "machine.json"
    if machine.exists():
        info = json.loads(machine.read_text())
        md += [f"Run on {info.get('cpu', '?')} ({info.get('cpu_count', '?')} cores"
               + (f", GPU {info['gpu']}" if info.get("gpu") else "")
               + f"), suite `{info.get('suite', '?')}`, {info.get('jobs', '?')} job(s).", ""]
    md += ["## Summary", ""] + summary_lines(records) + [""]
    md += ["Target error is the RMSE on a large held-out target test set in physical units, "
           "mean +- std over seeds; the best mean per column is in bold. Every method starts "
           "from the same source model and sees the same target subset and step budget.", ""]
    for pair in pairs:
        rs = [r for r in ok if r["pair"] == pair]
        methods = plots.methods_in(rs)
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
        md += _prediction_figures(out, pair, rs, save)
        pac_rows = [r for r in rs if r["method"] == "pac" and "pac" in r]
        if pac_rows:
            fig = plots.essential_share(pac_rows[0]["pac"]["summary"],
                                        f"{pair}: PAC essential weights per layer")
            md += [f"![PAC essential share]({save(fig, f'{pair}_pac_layers.png')})", ""]
    md += ["## Forgetting of the source task", "",
           "Source test RMSE after transfer (PAC: through its source view), mean over every "
           "cell, and its ratio to the source model's own source RMSE.", ""]
    methods = plots.methods_in(ok)
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
    if failed:
        md += ["## Failed cells", ""]
        md += [f"- `{r['pair']}|{r['method']}|{r['n_target']}|{r['seed']}`: {r.get('error')}"
               for r in failed]
        md.append("")
    text = "\n".join(md)
    return atomic_write(out / "report.md", lambda tmp: Path(tmp).write_text(text))


def _prediction_figures(out: Path, pair: str, rs: list[dict[str, Any]], save: Any) -> list[str]:
    from .. import plots

    md = []
    folder = out / "predictions"
    files = sorted(folder.glob(f"{pair}_pac_n*_s*.npz")) if folder.is_dir() else []
    if not files:
        return md
    with np.load(files[0]) as z:
        pred, truth = z["pred"], z["truth"]
    tag = files[0].stem.removeprefix(f"{pair}_")
    fig = plots.scatter(pred, truth, f"{pair}: PAC ({tag})")
    md += [f"![predicted vs true]({save(fig, f'{pair}_scatter.png')})", ""]
    if truth.ndim in (3, 4):
        fig = plots.field_panels(truth, pred, 3, f"{pair}: PAC ({tag})")
        md += [f"![fields]({save(fig, f'{pair}_fields.png')})", ""]
    return md
