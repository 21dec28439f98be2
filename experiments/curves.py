"""Accuracy-vs-epoch figures and markdown tables shared by the studies."""

from __future__ import annotations

import math
from typing import Callable, Mapping, Sequence

import numpy as np

from experiments import plots


def accuracy_curves(
    panels: Mapping[str, Sequence[tuple[str, Sequence[float | None], dict]]],
    path: str,
    title: str = "",
    vlines: Mapping[str, Sequence[float]] | None = None,
) -> None:
    """Test accuracy against epochs, one panel per key of ``panels``.

    Args:
        panels: panel title → list of ``(label, accuracy per epoch, matplotlib kwargs)``;
            ``None`` entries (non-finite results) are drawn as gaps.
        path: the PNG to write.
        title: the figure's title.
        vlines: optional panel title → x positions (epochs) of dashed vertical lines.
    """
    plt = plots._pyplot()
    n = len(panels)
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(4.6 * cols, 3.4 * rows), squeeze=False, constrained_layout=True, sharey=True
    )
    for k, (name, curves) in enumerate(panels.items()):
        ax = axes[k // cols][k % cols]
        for label, acc, kwargs in curves:
            y = np.array([np.nan if a is None else a for a in acc], float)
            ax.plot(np.arange(1, len(y) + 1), y, label=label, **kwargs)
        for x in (vlines or {}).get(name, []):
            ax.axvline(x, color="grey", linestyle=":", linewidth=1)
        ax.set_title(name)
        ax.set_xlabel("epoch")
        ax.set_ylim(0.0, 1.0)
        ax.grid(alpha=0.3)
        if k % cols == 0:
            ax.set_ylabel("test accuracy")
        ax.legend(fontsize=7, loc="lower right")
    for k in range(n, rows * cols):
        axes[k // cols][k % cols].axis("off")
    if title:
        fig.suptitle(title)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence], fmt: Callable = str) -> str:
    """A GitHub-flavoured markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        lines.append("| " + " | ".join(fmt(v) for v in r) + " |")
    return "\n".join(lines)


def fmt_value(v) -> str:
    """Numbers for tables: accuracies with 3 decimals, learning rates in short scientific form."""
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.3g}" if (abs(v) < 1e-2 or abs(v) >= 1e3) and v != 0 else f"{v:.3f}"
    return str(v)
