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

METHOD_ORDER = ("scratch", "finetune", "head", "l2sp", "bitfit", "pac")
COLORS = {"scratch": "#999999", "finetune": "#1f77b4", "head": "#9467bd", "l2sp": "#2ca02c",
          "bitfit": "#8c564b", "pac": "#d62728"}


def _ok(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in records if r.get("status") == "ok"]


def methods_in(records: Iterable[dict[str, Any]]) -> list[str]:
    """Methods present, in the canonical order."""
    present = {r["method"] for r in records}
    return [m for m in METHOD_ORDER if m in present] + sorted(present - set(METHOD_ORDER))


def error_vs_n(records: Sequence[dict[str, Any]], pair: str, metric: str = "rmse") -> Figure:
    """Target error against n_target (log-log): mean over seeds, min-max band per method."""
    rs = [r for r in _ok(records) if r["pair"] == pair]
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
        ax.plot(ns, mean, "o-", color=COLORS.get(m), label=m, lw=2 if m == "pac" else 1.2)
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


def forgetting(records: Sequence[dict[str, Any]], metric: str = "rmse") -> Figure:
    """Source error after transfer relative to the source model's own, per pair and method."""
    rs = _ok(records)
    pairs = sorted({r["pair"] for r in rs})
    methods = methods_in(rs)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.4 * len(pairs) + 2), 4))
    width = 0.8 / max(1, len(methods))
    for j, m in enumerate(methods):
        vals = []
        for p in pairs:
            ratio = [r["source_after"][metric] / r["source_before"][metric]
                     for r in rs if r["pair"] == p and r["method"] == m]
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
