"""Plots of the studies (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str, title: str = "", *, axes=None, used: int | None = None, fontsize=11) -> None:
    """Hides the unused panels of a grid, sets the title, writes ``path`` and closes the figure."""
    import matplotlib.pyplot as plt

    if axes is not None:
        flat = [ax for row in axes for ax in row]
        for ax in flat[used:]:
            ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=fontsize)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def integer_histogram(values) -> tuple[list[int], list[int]]:
    """The counts of integer ``values`` in the consecutive bins ``min .. max`` (empty: no bins)."""
    values = np.asarray(values, dtype=np.int64)
    if values.size == 0:
        return [], []
    lo, hi = int(values.min()), int(values.max())
    return list(range(lo, hi + 1)), np.bincount(values - lo, minlength=hi - lo + 1).tolist()


def _rebin(values, counts, max_bins: int):
    """Integer bins merged ``width`` at a time so that at most ``max_bins`` remain: (centres, counts, width)."""
    values, counts = np.asarray(values, dtype=int), np.asarray(counts, dtype=float)
    width = max(1, math.ceil(len(values) / max_bins))
    pad = (-len(counts)) % width
    counts = np.concatenate([counts, np.zeros(pad)]).reshape(-1, width).sum(axis=1)
    return values[0] + width * np.arange(len(counts)) + (width - 1) / 2, counts, width


def _normal_pdf(x, mu: float, sigma: float):
    return np.exp(-0.5 * ((x - mu) / sigma) ** 2) / (sigma * math.sqrt(2 * math.pi))


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
    _save(fig, path)


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
        pdf = _normal_pdf(x, mu, sigma)
        ax.plot(x, pdf, color="tab:red", lw=2, label=f"normal fit: μ = {mu:.2f}, σ = {sigma:.2f}")
    if expected is not None:
        ax.axvline(expected, color="black", ls="--", lw=1.5, label=f"N − 1 = {expected:g}")
    ax.set_xlabel("staleness τ (server updates between a gradient's pull and its arrival)")
    ax.set_ylabel("density (fraction of arrivals)")
    ax.set_ylim(bottom=0)
    ax.legend(loc="upper right", fontsize=9)
    if title:
        ax.set_title(title, fontsize=10)
    _save(fig, path)


def staleness_vs_workers(
    workers: Sequence[int],
    means: Sequence[float],
    stds: Sequence[float],
    path: str,
    *,
    fit: Mapping | None = None,
    sigma: float | None = None,
    title: str = "",
) -> None:
    """Jain et al. Figure 1 over N: mean staleness ± std against N (log-2 axes) with the ``N − 1`` line.

    Left panel: the mean with error bars of one std and the line ``N − 1``. Right
    panel: the std against N; ``fit`` (``{"coef", "slope", "workers"}``: std ≈
    ``coef · (N − 1)^slope`` fitted over the N in ``workers``) adds the fitted
    power law, ``sigma`` the reference line ``sigma · (N − 1)``. Points with a
    non-positive value cannot be drawn on the log axes and are left out.
    """
    plt = _pyplot()
    n = np.asarray(workers, dtype=float)
    mean = np.asarray(means, dtype=float)
    std = np.asarray(stds, dtype=float)
    grid = np.geomspace(max(n.min(), 1.5), n.max(), 200) if n.max() > 1 else n
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12.0, 4.8), sharex=True, constrained_layout=True)
    ax.plot(grid, grid - 1, color="black", ls="--", lw=1.5, label="N − 1 (the paper's centre)")
    shown = mean > 0
    ax.errorbar(
        n[shown],
        mean[shown],
        yerr=std[shown],
        fmt="o",
        color="tab:blue",
        ecolor="tab:blue",
        capsize=4,
        ms=5,
        label="simulated mean ± 1 std",
    )
    bx_shown = std > 0
    bx.plot(n[bx_shown], std[bx_shown], "o", color="tab:orange", ms=5, label="simulated std")
    if fit is not None:
        fn = np.asarray(fit["workers"], dtype=float)
        fx = np.geomspace(fn.min(), fn.max(), 100)
        bx.plot(
            fx,
            fit["coef"] * (fx - 1) ** fit["slope"],
            color="tab:orange",
            lw=1.5,
            label=f"fit: std ∝ (N − 1)^{fit['slope']:.2f} (N = {int(fn.min())}…{int(fn.max())})",
        )
    if sigma is not None and sigma > 0:
        bx.plot(grid, sigma * (grid - 1), color="gray", ls=":", lw=1.5, label=f"σ·(N − 1), σ = {sigma:g}")
    if not bx_shown.any():
        bx.text(0.5, 0.5, "std 0 at every N", ha="center", va="center", transform=bx.transAxes)
    ticks = sorted({int(v) for v in n})
    for a, ylabel, drawn in (
        (ax, "staleness τ (server updates)", shown.any() or n.max() > 1),
        (bx, "std of the staleness", bx_shown.any()),
    ):
        a.set_xscale("log", base=2)
        if drawn:  # a log axis needs a positive value
            a.set_yscale("log", base=2)
            a.legend(loc="upper left", fontsize=9)
        a.set_xticks(ticks, [str(t) for t in ticks])
        a.minorticks_off()
        a.set_xlabel("workers N (log₂ scale)")
        a.set_ylabel(ylabel + (" (log₂ scale)" if drawn else ""))
        a.grid(True, which="major", alpha=0.3)
    if shown.any():
        lows = mean[shown] - std[shown]
        ax.set_ylim(bottom=0.5 * min(mean[shown].min(), lows[lows > 0].min(initial=np.inf)))
    ax.set_title("mean staleness against N", fontsize=10)
    bx.set_title("spread of the staleness against N", fontsize=10)
    _save(fig, path, title)


def staleness_histogram_panels(panels: Sequence[Mapping], path: str, *, title: str = "", max_bins: int = 60):
    """Small multiples of :func:`staleness_histogram`, one panel per N.

    Each panel is a mapping with ``workers``, ``staleness`` and ``count`` (the
    integer bins and their counts), ``mu`` and ``sigma`` (the normal fit). A
    histogram with more than ``max_bins`` integer bins is drawn in wider bins of
    ``w`` consecutive integers (``w`` named in the panel title), still as a
    density per unit of staleness.
    """
    plt = _pyplot()
    k = len(panels)
    cols = min(k, 3)
    rows = math.ceil(k / cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(4.3 * cols, 3.3 * rows + 0.5), squeeze=False, constrained_layout=True
    )
    for i, p in enumerate(panels):
        ax = axes[i // cols][i % cols]
        values = np.asarray(p["staleness"], dtype=int)
        counts = np.asarray(p["count"], dtype=float)
        total = counts.sum()
        centres, counts, width = _rebin(values, counts, max_bins)
        density = counts / (total * width)
        ax.bar(centres, density, width=width, color="tab:blue", alpha=0.6, edgecolor="white")
        top = density.max()
        mu, sigma, n = p["mu"], p["sigma"], p["workers"]
        if sigma is not None and sigma > 0:
            x = np.linspace(min(values.min(), mu - 4 * sigma), max(values.max(), mu + 4 * sigma), 300)
            pdf = _normal_pdf(x, mu, sigma)
            ax.plot(x, pdf, color="tab:red", lw=1.8, label=f"normal fit μ={mu:.2f}, σ={sigma:.2f}")
            top = max(top, pdf.max())
        ax.axvline(n - 1, color="black", ls="--", lw=1.2, label=f"N − 1 = {n - 1}")
        ax.set_title(
            f"N = {n}, {int(total)} arrivals" + (f", bins of {width}" if width > 1 else ""), fontsize=10
        )
        ax.set_xlabel("staleness τ", fontsize=9)
        ax.set_ylabel("density", fontsize=9)
        ax.set_ylim(0, 1.35 * top)  # room for the legend above the peak
        ax.legend(loc="upper right", fontsize=7.5)
    _save(fig, path, title, axes=axes, used=k, fontsize=11)


# --- asgrad: methods on heterogeneous logistic regression ----------------------------------------------

_METHOD_STYLE = {
    "pure": ("tab:red", "-"),
    "random": ("tab:orange", "-"),
    "shuffle": ("tab:blue", "-"),
    "ssgd": ("black", "--"),
    "rennala": ("tab:purple", "-."),
    "ringmaster": ("tab:brown", "-."),
    "adaptive": ("tab:green", ":"),
}


def _method_style(name: str, i: int):
    return _METHOD_STYLE.get(name, (f"C{i % 10}", "-"))


def grad_norm_curves(series: Sequence[Mapping], path: str, *, title: str = "") -> None:
    """‖∇F(x)‖ of each method (its best step size) against gradients computed and against simulated time.

    ``series``: mappings with ``method``, ``label``, ``calls``, ``time`` and
    ``grad_norm`` (equal-length sequences; ``None``/non-finite points are not
    drawn). Two panels, log-scale y: left against ``calls``, right against ``time``.
    """
    plt = _pyplot()
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(13.0, 4.8), constrained_layout=True)
    for i, s in enumerate(series):
        color, ls = _method_style(s["method"], i)
        y = np.array([np.nan if v is None else v for v in s["grad_norm"]], dtype=float)
        y[~np.isfinite(y) | (y <= 0)] = np.nan
        for a, xkey in ((ax, "calls"), (bx, "time")):
            a.plot(np.asarray(s[xkey], dtype=float), y, color=color, ls=ls, lw=1.5, label=s["label"])
    for a, xlabel in (
        (ax, "gradients computed (update calls)"),
        (bx, "simulated time"),
    ):
        a.set_yscale("log")
        a.set_xlabel(xlabel)
        a.set_ylabel("‖∇F(x)‖ (full gradient, log scale)")
        a.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    ax.set_title("against iterations", fontsize=10)
    bx.set_title("against simulated time", fontsize=10)
    _save(fig, path, title)


MAX_BARS = 40  # workers up to which worker_shares draws bars (one per worker and method)


def worker_shares(
    methods: Sequence[str],
    shares: Sequence[Sequence[float]],
    path: str,
    *,
    predicted: Sequence[float] | None = None,
    title: str = "",
) -> None:
    """Grouped bars: each method's share of the applied updates per worker, with reference lines.

    ``shares[i][w]`` is method ``i``'s fraction of applied gradients that came
    from worker ``w``. A dashed line marks the equal share ``1/n``; ``predicted``
    (e.g. pure ASGD's ``∝ 1/s_w``) is drawn as black markers.
    """
    plt = _pyplot()
    shares = np.asarray(shares, dtype=float)
    k, n = shares.shape
    bars = n <= MAX_BARS  # beyond, one line per method: the figure's size and cost stay bounded in n
    fig, ax = plt.subplots(figsize=(max(7.5, 0.9 * n + 3) if bars else 10, 4.6), constrained_layout=True)
    width = 0.8 / k
    x = np.arange(n) if bars else np.arange(1, n + 1)
    for i, name in enumerate(methods):
        color, _ = _method_style(name, i)
        if bars:
            ax.bar(x - 0.4 + width * (i + 0.5), shares[i], width=width, color=color, alpha=0.8, label=name)
        else:
            ax.plot(x, shares[i], color=color, lw=1.2, alpha=0.85, label=name)
    ax.axhline(1.0 / n, color="gray", ls="--", lw=1.2, label=f"equal share 1/n = {1 / n:.3g}")
    if predicted is not None:
        if bars:
            ax.plot(x, predicted, "k_", ms=18, mew=2.5, label="∝ 1/(mean compute time)")
        else:
            ax.plot(x, predicted, "k:", lw=1.5, label="∝ 1/(mean compute time)")
    if bars:
        ax.set_xticks(x, [str(w + 1) for w in range(n)])
    ax.set_xlabel("worker (ordered by mean compute time)")
    ax.set_ylabel("share of applied updates")
    ax.legend(fontsize=8, ncol=2)
    ax.grid(True, axis="y", alpha=0.3)
    if title:
        ax.set_title(title, fontsize=10)
    _save(fig, path)


def staleness_by_method(panels: Sequence[Mapping], path: str, *, title: str = "", max_bins: int = 60) -> None:
    """One staleness histogram per method (fraction of arrivals per integer staleness).

    ``panels``: mappings with ``method``, ``staleness`` (consecutive integer
    bins), ``count``, and optionally ``threshold`` (a staleness above which
    arrivals were dropped, drawn as a red line) and ``note`` (added to the title).
    Wide histograms are drawn in bins of several integers.
    """
    plt = _pyplot()
    k = len(panels)
    cols = min(k, 4)
    rows = math.ceil(k / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.8 * cols, 3.0 * rows + 0.5), squeeze=False,
                             constrained_layout=True)
    for i, p in enumerate(panels):
        ax = axes[i // cols][i % cols]
        values = np.asarray(p["staleness"], dtype=int)
        counts = np.asarray(p["count"], dtype=float)
        total = counts.sum()
        color, _ = _method_style(p["method"], i)
        if total > 0:
            centres, counts, width = _rebin(values, counts, max_bins)
            ax.bar(centres, counts / total, width=width, color=color, alpha=0.7, edgecolor="white")
            mean = float(np.dot(np.asarray(p["staleness"], float), np.asarray(p["count"], float)) / total)
            ax.axvline(mean, color="black", ls="--", lw=1.0, label=f"mean {mean:.1f}")
        if p.get("threshold") is not None:
            ax.axvline(p["threshold"] + 0.5, color="tab:red", lw=1.2, label=f"dropped above R = {p['threshold']}")
        name = p["method"] + (f" ({p['note']})" if p.get("note") else "")
        ax.set_title(f"{name}: {int(total)} arrivals", fontsize=9)
        ax.set_xlabel("staleness τ", fontsize=9)
        ax.set_ylabel("fraction of arrivals", fontsize=9)
        if total > 0 or p.get("threshold") is not None:
            ax.legend(fontsize=7.5, loc="upper right")
    _save(fig, path, title, axes=axes, used=k, fontsize=11)


def step_size_scores(
    methods: Sequence[str], step_sizes: Sequence[float], scores: Sequence[Sequence[float]], path: str,
    *, ylabel: str = "best ‖∇F(x)‖ reached", title: str = "",
) -> None:
    """Each method's score against the step size (log-log), its best step circled.

    ``scores[i][j]``: method ``i`` at ``step_sizes[j]`` (non-finite: diverged, not drawn).
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.6), constrained_layout=True)
    steps = np.asarray(step_sizes, dtype=float)
    for i, name in enumerate(methods):
        color, ls = _method_style(name, i)
        y = np.array([np.nan if v is None else v for v in scores[i]], dtype=float)
        y[~np.isfinite(y) | (y <= 0)] = np.nan
        ax.plot(steps, y, color=color, ls=ls, marker="o", ms=4, lw=1.3, label=name)
        if np.isfinite(y).any():
            j = int(np.nanargmin(y))
            ax.plot(steps[j], y[j], "o", ms=11, mfc="none", mec=color, mew=2)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("step size γ (log₂ scale)")
    ax.set_ylabel(ylabel + " (log scale)")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    if title:
        ax.set_title(title, fontsize=10)
    _save(fig, path)


def _plain_log_labels(axis) -> None:
    """Tick labels of a log axis written as plain numbers (``20``, ``1.5``), not ``2×10^1``: the labels
    matplotlib adds within a decade then fit side by side."""
    from matplotlib.ticker import LogFormatter

    axis.set_major_formatter(LogFormatter(labelOnlyBase=False))
    axis.set_minor_formatter(LogFormatter(labelOnlyBase=False))


def accuracy_panels(
    panels: Mapping[str, Sequence[Mapping]], path: str, *, xlabel: str | Mapping[str, str], title: str = "",
    logx: bool | Sequence[str] = False, vlines: Mapping[str, Sequence[float]] | None = None,
    cols: int | None = None,
) -> None:
    """Test accuracy curves, one panel per key of ``panels`` (shared y axis from 0 to 1).

    ``panels``: panel title → mappings with ``label``, ``x``, ``y`` (equal-length
    sequences; ``None`` points are gaps) and optional ``color``, ``ls``.
    ``xlabel``: one label for every panel, or panel title → label.
    ``logx``: every panel's x axis logarithmic (``True``) or those of the panel titles given.
    ``vlines``: optional panel title → x positions of dotted grey vertical lines.
    ``cols``: panels per row (default: up to 3).
    """
    plt = _pyplot()
    n = max(1, len(panels))
    cols = min(n, cols or 3)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.8 * cols, 3.6 * rows), squeeze=False,
                             constrained_layout=True, sharey=True)
    for k, (name, series) in enumerate(panels.items()):
        ax = axes[k // cols][k % cols]
        any_positive_x = False
        for i, s in enumerate(series):
            x = np.array([np.nan if v is None else v for v in s["x"]], float)
            y = np.array([np.nan if v is None else v for v in s["y"]], float)
            any_positive_x |= bool(np.any(x[np.isfinite(x)] > 0))
            ax.plot(x, y, marker="o", ms=3, lw=1.5, label=s["label"], color=s.get("color", f"C{i % 10}"),
                    ls=s.get("ls", "-"))
        for v in (vlines or {}).get(name, []):
            ax.axvline(v, color="grey", linestyle=":", linewidth=1)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel(xlabel if isinstance(xlabel, str) else xlabel.get(name, ""))
        log = logx is True or (not isinstance(logx, bool) and name in logx)
        if log and any_positive_x:  # a panel with no positive x (e.g. no server step yet) stays linear
            ax.set_xscale("log")
            _plain_log_labels(ax.xaxis)
        ax.set_ylim(0.0, 1.0)
        ax.grid(alpha=0.3)
        if k % cols == 0:
            ax.set_ylabel("test accuracy")
        ax.legend(fontsize=7, loc="lower right")
    _save(fig, path, title, axes=axes, used=n, fontsize=11)


def grouped_bars(
    groups: Sequence[str], methods: Sequence[str], values: Mapping[tuple[str, str], float | None], path: str, *,
    ylabel: str, title: str = "", colors: Mapping[str, str] | None = None, ylim: tuple[float, float] | None = None,
    logy: bool = False, value_fmt: str = "{:.3f}", legend_outside: bool = False,
) -> None:
    """One cluster of bars per group (e.g. worker count), one bar per method, each labelled with its value.

    ``values[(group, method)]``: the bar's height (missing or ``None``: no bar; with ``logy``, also a
    height <= 0). ``value_fmt``: how each bar's label writes its value. ``legend_outside``: the legend
    below the axes (it then hides no bar).
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(5.0, 1.2 * len(groups) * len(methods) * 0.45 + 2), 4.2),
                           constrained_layout=True)
    width = 0.8 / max(1, len(methods))
    for j, m in enumerate(methods):
        xs, hs = [], []
        for i, g in enumerate(groups):
            v = values.get((g, m))
            if v is not None and np.isfinite(v) and (v > 0 or not logy):
                xs.append(i + (j - (len(methods) - 1) / 2) * width)
                hs.append(v)
        color = (colors or {}).get(m, f"C{j % 10}")
        bars = ax.bar(xs, hs, width=width * 0.95, label=m, color=color)
        for b, h in zip(bars, hs):
            ax.annotate(value_fmt.format(h), (b.get_x() + b.get_width() / 2, h), ha="center", va="bottom", fontsize=6,
                        rotation=90, xytext=(0, 2), textcoords="offset points")
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(groups)
    ax.set_ylabel(ylabel)
    if logy:
        ax.set_yscale("log")
        tops = [v for v in values.values() if v is not None and np.isfinite(v) and v > 0]
        if ylim is None and tops:  # room above the tallest bar for its label
            ax.set_ylim(top=max(tops) * 2.5)
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.grid(axis="y", alpha=0.3)
    if legend_outside:
        ax.legend(fontsize=8, ncol=len(methods), loc="upper center", bbox_to_anchor=(0.5, -0.1))
    else:
        ax.legend(fontsize=7, ncol=min(len(methods), 4), loc="lower right")
    if title:
        ax.set_title(title, fontsize=10)
    _save(fig, path)


def curve_panels(
    panels: Mapping[str, Sequence[Mapping]], path: str, *, xlabel: str, ylabel: str, title: str = "",
    logy: bool = False, cols: int | None = None, logx: bool = False,
    hlines: Mapping[str, Sequence[float]] | None = None,
) -> None:
    """Curves of any metric, one panel per key of ``panels`` (each panel its own y range).

    ``panels``: panel title → mappings with ``label``, ``x``, ``y`` (``None`` points are gaps; with
    ``logy``, so are values <= 0) and optional ``color``, ``ls``. ``cols``: panels per row (default: up to 3).
    ``logx``: logarithmic x axes. ``hlines``: optional panel title → y values of dashed grey horizontal lines.
    """
    plt = _pyplot()
    n = max(1, len(panels))
    cols = min(n, cols or 3)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.8 * cols, 3.6 * rows), squeeze=False, constrained_layout=True)
    for k, (name, series) in enumerate(panels.items()):
        ax = axes[k // cols][k % cols]
        drawn = False
        for i, s in enumerate(series):
            x = np.array([np.nan if v is None else v for v in s["x"]], float)
            y = np.array([np.nan if v is None else v for v in s["y"]], float)
            if logy:
                y[~(y > 0)] = np.nan
            drawn |= bool(np.isfinite(y).any())
            ax.plot(x, y, marker="o", ms=3, lw=1.5, label=s["label"], color=s.get("color", f"C{i % 10}"),
                    ls=s.get("ls", "-"))
        if logy and drawn:
            ax.set_yscale("log")
        if logx and drawn:
            ax.set_xscale("log")
            _plain_log_labels(ax.xaxis)
        for v in (hlines or {}).get(name, []):
            ax.axhline(v, color="grey", linestyle="--", linewidth=1)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
        if k % cols == 0:
            ax.set_ylabel(ylabel)
        if series:
            ax.legend(fontsize=7, loc="best")
    _save(fig, path, title, axes=axes, used=n, fontsize=11)
