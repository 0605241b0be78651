"""Figures for benchmark results and predictions; each function returns a Figure.

Usable from Jupyter (the figure displays) and by ``pacsim report`` (which saves it).
Matplotlib runs headless (Agg) unless a backend was chosen already, so nothing pops up.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

import matplotlib

if "MPLBACKEND" not in os.environ and matplotlib.get_backend().lower() not in (
        "module://matplotlib_inline.backend_inline", "nbagg", "widget", "ipympl"):
    matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from matplotlib.ticker import FuncFormatter, NullFormatter  # noqa: E402

# Methods in display order: the five baselines, then the PAC family (torch-free names).
from .method_names import METHODS as METHOD_ORDER  # noqa: E402
from .method_names import PAC_METHODS  # noqa: E402

COLORS = {"scratch": "#999999", "finetune": "#1f77b4", "head": "#9467bd", "l2sp": "#2ca02c",
          "bitfit": "#8c564b", "pac-paper": "#ff7f0e", "pac": "#d62728", "auto": "#000000",
          "auto-keep-source": "#e377c2", "lora": "#17becf"}


def ok_records(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The finished cells (``status == "ok"``)."""
    return [r for r in records if r.get("status") == "ok"]


def methods_in(records: Iterable[dict[str, Any]]) -> list[str]:
    """Methods present, in the canonical order."""
    present = {r["method"] for r in records}
    return [m for m in METHOD_ORDER if m in present] + sorted(present - set(METHOD_ORDER))


def paired(records: Iterable[dict[str, Any]], pair: str, n: int) -> list[dict[str, Any]]:
    """The finished cells of ``pair`` at ``n`` on the seeds where every method present
    there finished: means over them compare methods on the same seeds (a method that
    failed on a hard seed is not averaged over the easy ones only)."""
    rs = [r for r in ok_records(records) if r["pair"] == pair and r["n_target"] == n]
    by_method: dict[str, set[Any]] = {}
    for r in rs:
        by_method.setdefault(r["method"], set()).add(r["seed"])
    common = set.intersection(*by_method.values()) if by_method else set()
    return [r for r in rs if r["seed"] in common]


def forgetting_ratio(record: dict[str, Any], metric: str = "rmse") -> float:
    """Source error after transfer / the unpruned source model's (nan if undefined)."""
    before = record["source_before"][metric]
    return record["source_after"][metric] / before if before > 0 else float("nan")


def tradeoff_points(records: Iterable[dict[str, Any]], pair: str, n: int,
                    metric: str = "rmse") -> dict[str, tuple[float, float]]:
    """method -> (forgetting, target error) of ``pair`` at ``n`` target samples, each the
    mean over the seeds every method finished (:func:`paired`), canonical method order."""
    rs = paired(records, pair, n)
    out = {}
    for m in methods_in(rs):
        mine = [r for r in rs if r["method"] == m]
        out[m] = (float(np.mean([forgetting_ratio(r, metric) for r in mine])),
                  float(np.mean([r["target"][metric] for r in mine])))
    return out


def non_dominated(points: dict[str, tuple[float, float]]) -> list[str]:
    """Keys of the Pareto front of ``points`` (both coordinates: lower is better): no other
    point is at least as good in both and strictly better in one. NaN points never are."""
    ok = {k: v for k, v in points.items() if np.all(np.isfinite(v))}
    return [k for k, (x, y) in ok.items()
            if not any(x2 <= x and y2 <= y and (x2 < x or y2 < y) for x2, y2 in ok.values())]


def error_vs_n(records: Sequence[dict[str, Any]], pair: str, metric: str = "rmse") -> Figure:
    """Target error against n_target (log-log): mean over seeds, min-max band per method."""
    rs = [r for r in ok_records(records) if r["pair"] == pair]
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for m in methods_in(rs):
        by_n: dict[int, list[float]] = defaultdict(list)
        for r in rs:
            if r["method"] == m:
                by_n[r["n_target"]].append(r["target"][metric])
        ns = sorted(by_n)
        mean = np.array([np.mean(by_n[n]) for n in ns])
        lo = np.array([np.min(by_n[n]) for n in ns])
        hi = np.array([np.max(by_n[n]) for n in ns])
        ax.plot(ns, mean, "o-", color=COLORS.get(m), label=m, lw=2 if m in PAC_METHODS else 1.2)
        ax.fill_between(ns, lo, hi, color=COLORS.get(m), alpha=0.15)
    zs = [r["zero_shot"][metric] for r in rs]
    if zs:
        ax.axhline(float(np.mean(zs)), color="k", ls=":", lw=1, label="source, zero-shot")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("target samples")
    ax.set_ylabel(f"target test {metric.upper()}")
    ax.set_title(pair)
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    return fig


def performance_profile(profile: dict[str, Sequence[float]], taus: Sequence[float]) -> Figure:
    """Dolan-More performance profile: per method, the share of problems within a factor
    tau of the best method's error, against tau (higher and further left is better)."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for m, shares in profile.items():
        ax.step(taus, shares, where="post", color=COLORS.get(m), label=m,
                lw=2.2 if m in PAC_METHODS or m.startswith("auto") else 1.2,
                ls="--" if m.startswith("auto") else "-")
    ax.set_xlim(taus[0], taus[-1])
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("tau (error / best method's error on the problem)")
    ax.set_ylabel("share of (pair, n) problems within tau")
    ax.set_title("Performance profile")
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    return fig


def forgetting(records: Sequence[dict[str, Any]], metric: str = "rmse") -> Figure:
    """Source error after transfer relative to the source model's own, per pair and method."""
    rs = ok_records(records)
    pairs = sorted({r["pair"] for r in rs})
    methods = methods_in(rs)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.4 * len(pairs) + 2), 4))
    width = 0.8 / max(1, len(methods))
    for j, m in enumerate(methods):
        vals = []
        for p in pairs:
            ratio = [forgetting_ratio(r, metric) for r in rs
                     if r["pair"] == p and r["method"] == m]
            vals.append(np.mean(ratio) if ratio else np.nan)
        ax.bar(np.arange(len(pairs)) + (j - (len(methods) - 1) / 2) * width, vals, width,
               color=COLORS.get(m), label=m)
    ax.axhline(1.0, color="k", lw=1)
    ax.set_yscale("log")
    ax.set_xticks(np.arange(len(pairs)), pairs)
    ax.set_ylabel(f"source {metric.upper()} after / before transfer")
    ax.set_title("Forgetting of the source task (1 = none)")
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    return fig


def _plain_log_ticks(axis: Any, lo: float, hi: float) -> None:
    """Tick labels of a log axis as plain numbers; minor ones (all, or only 2, 3 and 5, or
    2 and 5 of each decade) only where the axis spans too few decades to read without."""
    keep = (2, 3, 4, 5, 6, 7, 8, 9) if hi / lo <= 3 else (2, 3, 5) if hi / lo <= 30 else \
        (2, 5) if hi / lo <= 200 else ()

    def minor(v: float, _pos: Any) -> str:
        mantissa = round(v / 10 ** np.floor(np.log10(v) + 1e-9), 6) if v > 0 else 0
        return f"{v:g}" if mantissa in keep else ""

    axis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
    axis.set_minor_formatter(FuncFormatter(minor) if keep else NullFormatter())


def tradeoff(records: Sequence[dict[str, Any]], pair: str, ns: Sequence[int] | None = None,
             metric: str = "rmse", target_tol: float = 0.05, forget_tol: float = 1.05
             ) -> Figure:
    """Target error against source forgetting for every method of ``pair``: one panel per
    ``n`` (default: the smallest and the largest), each point the mean over seeds with the
    standard deviation of the target error as a bar.

    Forgetting is the source error after transfer over the unpruned source model's (log
    axis; 1 = the source kept). Non-dominated methods (the Pareto front: no other method is
    better in both) are ringed and joined; the shaded corner holds the methods within
    ``target_tol`` of the best target error with forgetting at most ``forget_tol``.
    """
    rs = [r for r in ok_records(records) if r["pair"] == pair]
    if ns is None:
        present = sorted({r["n_target"] for r in rs})
        ns = sorted({present[0], present[-1]}) if present else []
    ncol = max(1, len(ns))
    fig, axes = plt.subplots(1, ncol, figsize=(5.0 * ncol + 1.9, 4.4), squeeze=False)
    for ax, n in zip(axes[0], ns):
        pts = tradeoff_points(rs, pair, n, metric)
        front = non_dominated(pts)
        finite = {m: v for m, v in pts.items() if np.all(np.isfinite(v))}
        if not finite:
            continue
        sd = {m: float(np.std([r["target"][metric] for r in rs
                               if r["method"] == m and r["n_target"] == n])) for m in finite}
        xs = [x for x, _ in finite.values()]
        best = min(y for _, y in finite.values())
        lo = min(max(y - sd[m], 0.5 * y) for m, (_, y) in finite.items())
        hi = max(y + sd[m] for m, (_, y) in finite.items())
        log_y = hi / max(lo, 1e-300) > 5
        left, right = min(min(xs), 1.0) / 1.3, max(max(xs), forget_tol) * 1.8
        pad = 0.08 * (hi - lo) or 0.05 * hi
        bottom, top = (lo / 1.3, hi * 1.3) if log_y else (max(0.0, lo - pad), hi + pad)
        ax.fill_between([left, forget_tol], bottom, best * (1 + target_tol), color="#2ca02c",
                        alpha=0.25, lw=0)
        ax.axvline(1.0, color="k", ls=":", lw=0.8)
        if len(front) > 1:
            fx, fy = zip(*sorted(finite[m] for m in front))
            ax.plot(fx, fy, "k--", lw=0.8, zorder=2)
        for m, (x, y) in finite.items():
            pac = m in PAC_METHODS
            ax.errorbar(x, y, yerr=sd[m], fmt="*" if pac else "o", ms=15 if pac else 8,
                        color=COLORS.get(m), elinewidth=0.8, mec="k" if m in front else "w",
                        mew=1.6 if m in front else 0.5, zorder=4 if pac else 3)
        ax.set_xscale("log")
        ax.set_xlim(left, right)
        if log_y:
            ax.set_yscale("log")
            _plain_log_ticks(ax.yaxis, bottom, top)
        _plain_log_ticks(ax.xaxis, left, right)
        ax.set_ylim(bottom, top)
        ax.set_xlabel("source forgetting: source RMSE after / unpruned source model")
        ax.set_ylabel(f"target test {metric.upper()} (mean over seeds)")
        ax.set_title(f"{pair}, n = {n}")
        ax.grid(True, which="both", alpha=0.3)
    handles: list[Any] = [
        Line2D([], [], ls="", marker="*" if m in PAC_METHODS else "o", color=COLORS.get(m),
               ms=12 if m in PAC_METHODS else 7, mec="w", mew=0.5, label=m)
        for m in methods_in(rs)]
    handles += [Line2D([], [], ls="--", lw=0.8, color="k", marker="o", mfc="w", mec="k",
                       mew=1.6, label="non-dominated\n(ringed, joined)"),
                Patch(color="#2ca02c", alpha=0.25, lw=0, label=f"within {target_tol:.0%} of "
                      f"the best\ntarget error and\nforgetting <= {forget_tol:g}x")]
    fig.tight_layout(rect=(0, 0, 1 - 1.9 / fig.get_figwidth(), 1))
    fig.legend(handles=handles, loc="center right", fontsize=8, frameon=False)
    return fig


def scatter(pred: np.ndarray, truth: np.ndarray, title: str = "", max_points: int = 20000
            ) -> Figure:
    """Predicted against true values (all outputs pooled)."""
    p, t = np.ravel(pred), np.ravel(truth)
    if p.size > max_points:
        idx = np.random.default_rng(0).choice(p.size, max_points, replace=False)
        p, t = p[idx], t[idx]
    fig, ax = plt.subplots(figsize=(4.2, 4))
    ax.scatter(t, p, s=3, alpha=0.3)
    lo, hi = float(min(t.min(), p.min())), float(max(t.max(), p.max()))
    ax.plot([lo, hi], [lo, hi], "k--", lw=1)
    ax.set_xlabel("true")
    ax.set_ylabel("predicted")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def field_panels(truth: np.ndarray, pred: np.ndarray, n: int = 3, title: str = "") -> Figure:
    """Truth, prediction and error for the first ``n`` samples of 1D or 2D fields.

    Arrays are (N, C, X) or (N, C, X, Y); the first channel is shown.
    """
    n = min(n, truth.shape[0])
    dim = truth.ndim - 2
    if dim not in (1, 2):
        raise ValueError(f"field_panels needs (N, C, X[, Y]) arrays, got shape {truth.shape}")
    fig, axes = plt.subplots(n, 3 if dim == 2 else 2, figsize=(9 if dim == 2 else 8, 2.4 * n),
                             squeeze=False)
    for i in range(n):
        t, p = truth[i, 0], pred[i, 0]
        if dim == 1:
            axes[i, 0].plot(t, "k", label="truth")
            axes[i, 0].plot(p, "r--", label="prediction")
            axes[i, 1].plot(p - t, "b")
            axes[i, 0].set_ylabel(f"sample {i}")
            axes[i, 1].set_ylabel("error")
            if i == 0:
                axes[i, 0].legend(fontsize=8)
        else:
            vmin, vmax = float(t.min()), float(t.max())
            for ax, img, name in ((axes[i, 0], t, "truth"), (axes[i, 1], p, "prediction")):
                im = ax.imshow(img.T, origin="lower", vmin=vmin, vmax=vmax, cmap="viridis")
                ax.set_title(name if i == 0 else "")
                fig.colorbar(im, ax=ax, fraction=0.046)
            im = axes[i, 2].imshow((p - t).T, origin="lower", cmap="RdBu_r")
            axes[i, 2].set_title("error" if i == 0 else "")
            fig.colorbar(im, ax=axes[i, 2], fraction=0.046)
            for ax in axes[i]:
                ax.set_xticks([])
                ax.set_yticks([])
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def essential_share(summary: Sequence[dict[str, Any]], title: str = "") -> Figure:
    """PAC's share of essential (source) weights per pruned tensor."""
    names = [row["name"].removesuffix(".weight") for row in summary]
    share = [row["essential_share"] for row in summary]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.45 * len(names) + 2), 3.6))
    ax.bar(np.arange(len(names)), share, color=COLORS["pac"])
    ax.set_xticks(np.arange(len(names)), names, rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("essential share")
    ax.set_ylim(0, 1)
    ax.set_title(title or "Essential weights per layer")
    fig.tight_layout()
    return fig
