"""Best setting per method, mean curves and tables: shared by the studies of asynchronous systems."""

from __future__ import annotations

from collections import defaultdict
from typing import Callable, Hashable, Mapping, Sequence

import numpy as np

from experiments import curves


def _mean(values) -> float | None:
    vals = [np.nan if v is None else float(v) for v in values]
    if not vals or all(np.isnan(vals)):
        return None
    return float(np.nanmean(vals))


def mean_curve(curves_: Sequence[Sequence[float | None]], *, skip_nan: bool = True) -> np.ndarray:
    """The mean of equal-length curves (``None``: NaN); ``skip_nan``: NaNs left out of each point's mean."""
    arr = np.array([[np.nan if v is None else v for v in c] for c in curves_], float)
    if not skip_nan:
        return np.mean(arr, axis=0)
    with np.errstate(all="ignore"):
        return np.atleast_1d(np.nanmean(arr, axis=0) if arr.size else arr)


def mean_list(curves_: Sequence[Sequence[float | None]]) -> list[float | None]:
    """:func:`mean_curve` as a list, ``None`` where no finite value was averaged."""
    return [None if not np.isfinite(v) else float(v) for v in mean_curve(curves_)]


def score(record: Mapping) -> float:
    """A run's final test accuracy (a diverged run keeps what it reached; no number: -inf)."""
    v = record.get("test_accuracy")
    return float(v) if v is not None else float("-inf")


def best_settings(
    records: Sequence[Mapping],
    panel: Callable[[Mapping], Hashable],
    setting: Callable[[Mapping], tuple],
) -> dict[tuple, dict]:
    """Per (panel, the record's ``method`` label): the setting (learning rate, lambda, ...) with the highest final test accuracy.

    Seeds of one setting are averaged first. Returns ``(panel, method) ->`` a dict
    with ``setting``, ``final`` (mean final accuracy), ``peak`` (mean over seeds of
    each run's best epoch), ``acc`` (mean accuracy per epoch), ``time`` (mean
    simulated time per epoch), ``diverged`` (any seed), ``seeds``, and ``all``:
    every setting's mean final accuracy, in setting order.
    """
    cells: dict[tuple, dict[tuple, list]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        cells[(panel(r), r["method"])][setting(r)].append(r)
    out = {}
    for key, by_setting in cells.items():
        summary = []
        for st, rs in sorted(by_setting.items()):
            finals = [score(r) for r in rs]
            mean_final = float(np.mean(finals)) if all(np.isfinite(finals)) else _mean([r["test_accuracy"] for r in rs])
            summary.append((st, mean_final, rs))
        st, final, rs = max(summary, key=lambda t: -np.inf if t[1] is None else t[1])
        out[key] = {
            "setting": st,
            "final": final,
            "peak": _mean([max((a for a in r["test_accuracy_per_epoch"] if a is not None), default=None)
                           for r in rs]),
            "acc": mean_list([r["test_accuracy_per_epoch"] for r in rs]),
            "time": mean_list([r.get("sim_time_per_epoch") or [] for r in rs]),
            "diverged": any(r["diverged"] for r in rs),
            "seeds": len(rs),
            "all": [(s_, f_) for s_, f_, _ in summary],
        }
    return out


def fmt_acc(v) -> str:
    return "–" if v is None else f"{v:.4f}"


def best_table(best: Mapping[tuple, dict], panels: Sequence, methods: Sequence[str], panel_name: Callable,
               setting_names: Sequence[str], setting_fmt: Callable) -> str:
    """A markdown table: per panel and method, the chosen setting, final and peak accuracy, end time."""
    header = [*["panel"], "method", *setting_names, "final test acc", "peak test acc", "simulated time at end",
              "diverged"]
    rows = []
    for p in panels:
        for m in methods:
            b = best.get((p, m))
            if b is None:
                continue
            rows.append([panel_name(p), m, *setting_fmt(m, b["setting"]), fmt_acc(b["final"]),
                         fmt_acc(b["peak"]), "–" if not b["time"] or b["time"][-1] is None else f"{b['time'][-1]:.0f}",
                         "yes" if b["diverged"] else "no"])
    return curves.markdown_table(header, rows)
