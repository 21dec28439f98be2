"""Plots of the studies (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Mapping, Sequence

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def lr_label(lr: float) -> str:
    """``0.0031622`` → ``'$10^{-2.5}$'`` for half-decade powers of ten, else ``'3.16e-03'``."""
    e = math.log10(lr)
    if abs(e * 2 - round(e * 2)) < 1e-6:
        return f"$10^{{{round(e * 2) / 2:g}}}$"
    return f"{lr:.3g}"


def accuracy_grid(records: Sequence[Mapping], delay: int, lrs: Sequence[float], batch_sizes: Sequence[int]):
    """Mean final test accuracy over seeds, rows = learning rate, columns = batch size.

    Returns ``(acc, diverged_fraction, count)`` arrays of shape (len(lrs), len(batch_sizes)); a
    diverged run counts with the accuracy it reached (chance level, as in the paper).
    """
    cells = defaultdict(list)
    for r in records:
        if r["delay"] == delay:
            cells[(r["learning_rate"], r["batch_size"])].append(r)
    acc = np.full((len(lrs), len(batch_sizes)), np.nan)
    div = np.zeros_like(acc)
    cnt = np.zeros_like(acc, dtype=int)
    for i, lr in enumerate(lrs):
        for j, bs in enumerate(batch_sizes):
            rs = cells.get((lr, bs), [])
            if rs:
                vals = [r["test_accuracy"] if r["test_accuracy"] is not None else np.nan for r in rs]
                acc[i, j] = np.nanmean(vals) if not all(np.isnan(vals)) else np.nan
                div[i, j] = np.mean([bool(r["diverged"]) for r in rs])
                cnt[i, j] = len(rs)
    return acc, div, cnt


def delay_heatmaps(records: Sequence[Mapping], path: str, title: str = "") -> None:
    """Jain et al. Figure 2: one panel per delay, rows = learning rate, columns = batch size.

    Each cell shows the final test accuracy (mean over seeds); cells whose runs
    diverged (NaN/inf) are hatched and marked with a dagger.
    """
    plt = _pyplot()
    delays = sorted({r["delay"] for r in records})
    lrs = sorted({r["learning_rate"] for r in records})
    bss = sorted({r["batch_size"] for r in records})
    n = len(delays)
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(
        rows,
        cols,
        figsize=(1.2 + 1.15 * len(bss) * cols + 1.0, 0.8 + 0.42 * len(lrs) * rows + 0.6),
        squeeze=False,
        constrained_layout=True,
    )
    im = None
    for k, d in enumerate(delays):
        ax = axes[k // cols][k % cols]
        acc, div, cnt = accuracy_grid(records, d, lrs, bss)
        im = ax.imshow(acc, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
        for i in range(len(lrs)):
            for j in range(len(bss)):
                if cnt[i, j] == 0:
                    continue
                v = acc[i, j]
                text = "nan" if np.isnan(v) else f"{v:.2f}"
                if div[i, j] > 0:
                    text += "†"
                    ax.add_patch(
                        plt.Rectangle(
                            (j - 0.5, i - 0.5), 1, 1, fill=False, hatch="///", edgecolor="white", linewidth=0
                        )
                    )
                ax.text(
                    j,
                    i,
                    text,
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="black" if (not np.isnan(v) and v > 0.6) else "white",
                )
        ax.set_title(f"delay {d}")
        ax.set_xticks(range(len(bss)), [str(b) for b in bss])
        ax.set_yticks(range(len(lrs)), [lr_label(lr) for lr in lrs])
        ax.set_xlabel("batch size")
        if k % cols == 0:
            ax.set_ylabel("learning rate")
    for k in range(n, rows * cols):
        axes[k // cols][k % cols].axis("off")
    if im is not None:
        fig.colorbar(im, ax=axes, shrink=0.8, label="test accuracy († diverged)")
    if title:
        fig.suptitle(title)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def staleness_histogram(
    staleness: Sequence[int],
    counts: Sequence[int],
    path: str,
    *,
    expected: float | None = None,
    mu: float | None = None,
    sigma: float | None = None,
    title: str = "",
) -> None:
    """Jain et al. Figure 1: the staleness histogram in integer bins, as a density.

    ``staleness`` and ``counts`` are the bins (consecutive integers) and their
    counts. Overlays the normal pdf of mean ``mu`` and std ``sigma`` (when
    ``sigma > 0``) and a vertical line at ``expected`` (``N - 1``).
    """
    plt = _pyplot()
    values = np.asarray(staleness, dtype=float)
    counts = np.asarray(counts, dtype=float)
    density = counts / counts.sum()  # bins of width 1: fraction of arrivals = density
    fig, ax = plt.subplots(figsize=(7.5, 4.8), constrained_layout=True)
    ax.bar(
        values,
        density,
        width=1.0,
        color="tab:blue",
        alpha=0.6,
        edgecolor="white",
        label=f"simulated ({int(counts.sum())} arrivals)",
    )
    if mu is not None and sigma is not None and sigma > 0:
        x = np.linspace(min(values.min(), mu - 4 * sigma), max(values.max(), mu + 4 * sigma), 400)
        pdf = np.exp(-0.5 * ((x - mu) / sigma) ** 2) / (sigma * math.sqrt(2 * math.pi))
        ax.plot(x, pdf, color="tab:red", lw=2, label=f"normal fit: μ = {mu:.2f}, σ = {sigma:.2f}")
    if expected is not None:
        ax.axvline(expected, color="black", ls="--", lw=1.5, label=f"N − 1 = {expected:g}")
    ax.set_xlabel("staleness τ (server updates between a gradient's pull and its arrival)")
    ax.set_ylabel("density (fraction of arrivals)")
    ax.set_ylim(bottom=0)
    ax.legend(loc="upper right", fontsize=9)
    if title:
        ax.set_title(title, fontsize=10)
    fig.savefig(path, dpi=120)
    plt.close(fig)
