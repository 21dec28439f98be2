"""Accuracy-vs-epoch figures and markdown tables shared by the studies."""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

from experiments import plots


def accuracy_curves(
    panels: Mapping[str, Sequence[tuple[str, Sequence[float | None], dict]]],
    path: str,
    title: str = "",
    vlines: Mapping[str, Sequence[float]] | None = None,
) -> None:
    """Test accuracy against epochs, one panel per key of ``panels`` (drawn by :func:`plots.accuracy_panels`).

    Args:
        panels: panel title → list of ``(label, accuracy per epoch, style)``; ``style`` may give
            ``color`` and ``linestyle``; ``None`` entries (non-finite results) are drawn as gaps.
        path: the PNG to write.
        title: the figure's title.
        vlines: optional panel title → x positions (epochs) of dotted vertical lines.
    """
    unknown = {k for curves in panels.values() for _, _, style in curves for k in style} - {"color", "linestyle"}
    if unknown:
        raise ValueError(f"accuracy_curves styles take color and linestyle only, not {sorted(unknown)}.")
    series = {
        name: [
            dict(label=label, x=list(range(1, len(acc) + 1)), y=list(acc),
                 **{k: v for k, v in (("color", style.get("color")), ("ls", style.get("linestyle"))) if v})
            for label, acc, style in curves
        ]
        for name, curves in panels.items()
    }
    plots.accuracy_panels(series, path, xlabel="epoch", title=title, vlines=vlines)


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
