"""Jain et al. (2018), Figure 1: Monte Carlo of the staleness of asynchronous gradients.

``N`` workers each compute one gradient after another; the time between two
submissions of one worker is ``Normal(1, sigma^2)`` truncated to positive times
(``--sigma 0.2`` as in the paper). With the pure rule a worker pulls the model
again right after its gradient arrives. The staleness of a gradient is the
number of server updates between its pull and its arrival; the paper finds it
close to normal, centred at ``N - 1`` (docs/methods.md#constant-delay-jain-et-al-2018).

Other compute-time models (``--timing``, ``--stragglers``) and the AsGrad
assignment rules (``--assignment``) show how the shape changes. The mean stays
``N - 1`` in every steady state: ``N`` jobs are always in flight and each
arrival ages the other ``N - 1`` by one server update (Little's law).

Recorded arrivals. The first ``N`` arrivals are the start-up (every worker
pulled version 0, so their staleness is 0, 1, ..., N - 1), and all workers start
in phase at time 0. ``--warmup`` arrivals (default ``10 N``, i.e. ten rounds)
are discarded before ``--arrivals`` are recorded (default ``max(20000, 100 N)``).
For ``N = 16``, ``sigma = 0.2`` the spread of the staleness stops changing after
about five rounds (std over 200 seeds: 4.6 in round 0, 3.5 in round 5, 3.4 ± 0.1
from then on), so ten rounds is a safe margin. With less spread the workers
stay in phase longer (about ``0.2 / sigma^2`` rounds: 80 for ``sigma = 0.05``,
which ``--warmup 1600`` covers for 16 workers); raise ``--warmup`` then.

Presets (``--preset``): ``single`` (the default: N = 16 with ``max(20000, 100 N)``
arrivals), ``tiny`` (N = 2, 5; seconds), ``quick`` (N = 2, 5, 17, 65, 257,
``max(2000, 20 N)`` arrivals), ``medium`` (N = 2, 3, 5, 9, 17, 33, 65, 129, 257,
powers of two plus one so that ``N - 1`` = 1 ... 256 are the delays of the
paper's Figure 3, ``max(10000, 50 N)`` arrivals) and ``paper`` (the same N,
``max(20000, 100 N)`` arrivals). ``--workers N`` or ``--workers N1,N2,...``
replaces the preset's N (sorted); ``--arrivals`` and ``--warmup`` apply to every
N. Every N discards a warm-up of ``10 N`` arrivals and uses the timing options
(default ``Normal(1, 0.2^2)``, the paper's).

Writes to ``--out`` (default ``runs/delay_distribution-<preset>``):
``results.jsonl`` (one JSON object per N: ``config_id``, the settings, mean,
std, min, max, skewness, excess kurtosis, the maximum-likelihood normal fit,
i.e. the sample mean and the sample std with ddof = 0, the expected mean
``N - 1``, the histogram counts and the simulation time) and ``report.md`` (the
numbers beside the paper's claim, every statement computed from the records).
With one N also ``histogram.png`` (the histogram in integer bins as a density,
the fitted normal pdf and a line at ``N - 1``) and ``staleness.npy`` (int32, the
recorded staleness in arrival order); with several ``mean_vs_workers.png``
(mean ± std against N on log-2 axes with the line ``N - 1``; beside it the std
against N with a power-law fit) and ``histograms.png`` (up to six N, each with
its normal fit). Rerun-safe: a rerun (or a sweep grown by more N) simulates
only the N not yet in ``results.jsonl`` and appends; earlier lines are never
rewritten.

Why the spread grows about like ``sigma (N - 1)`` (a heuristic, for reading the
report): between a gradient's pull and its arrival lies one compute time
``T ~ Normal(1, sigma^2)``, during which each of the other ``N - 1`` workers
arrives about ``T`` times; so the staleness is roughly ``(N - 1) T`` plus a
per-worker rounding term of variance ``O(N - 1)``, and its std tends to
``sigma (N - 1)`` for large N.
"""

from __future__ import annotations

import math
import os
import time

import numpy as np

from asgd_jax.timing import LAWS

from experiments import common, plots, study

NAME = "delay_distribution"
HELP = "Jain et al. Fig. 1: Monte Carlo of the staleness of N asynchronous workers (centred at N - 1)"

ASSIGNMENTS = ("pure", "random", "shuffle")
DEFAULTS = dict(timing="normal", mean=1.0, sigma=0.2, low=0.5, high=1.5, slowdown=5.0)
PAPER_WORKERS = [2, 3, 5, 9, 17, 33, 65, 129, 257]  # N - 1 = 1, 2, 4, ..., 256
WARMUP_ROUNDS = 10  # warm-up arrivals per worker, every preset
_RUN = dict(timing="normal", mean=None, sigma=None, low=None, high=None, stragglers=0.0, slowdown=None,
            assignment="pure", arrivals=None, warmup=None, seed=0)
# The N and the arrivals recorded per N, max(min_arrivals, arrivals_per_worker * N).
PRESETS = {
    "single": dict(_RUN, workers=[16], min_arrivals=20000, arrivals_per_worker=100),
    "tiny": dict(_RUN, workers=[2, 5], min_arrivals=500, arrivals_per_worker=20),
    "quick": dict(_RUN, workers=[2, 5, 17, 65, 257], min_arrivals=2000, arrivals_per_worker=20),
    "medium": dict(_RUN, workers=PAPER_WORKERS, min_arrivals=10000, arrivals_per_worker=50),
    "paper": dict(_RUN, workers=PAPER_WORKERS, min_arrivals=20000, arrivals_per_worker=100),
}
PAPER_TIMING = {"model": "normal", "mean": 1.0, "sigma": 0.2}


def _with_stragglers(s: dict) -> str | None:
    return None if s["stragglers"] > 0 else "applies only with --stragglers FRACTION > 0; leave it out."


OPTIONS = (
    study.Option("workers", int, many=True, low=1, metavar="N1,N2,...",
                 help="the numbers of workers N (replaces the preset's; one N: a single histogram)"),
    study.Option("timing", str, choices=LAWS,
                 help="compute-time model: " + ", ".join(LAWS) + " (default normal, truncated to positive times)"),
    study.Option("mean", float, above=0, applies=study.not_for("timing", ("uniform",)),
                 help="mean compute time of normal, fixed, exponential, lognormal (default 1)"),
    study.Option("sigma", float, low=0, applies=study.only_for("timing", ("normal", "lognormal")),
                 help="std of --timing normal, or the std of log T for lognormal (default 0.2)"),
    study.Option("low", float, above=0, applies=study.only_for("timing", ("uniform",)),
                 help="lower end of --timing uniform (default 0.5)"),
    study.Option("high", float, above=0, applies=study.only_for("timing", ("uniform",)),
                 help="upper end of --timing uniform (default 1.5)"),
    study.Option("stragglers", float, low=0, high=1, metavar="FRACTION",
                 help="the last round(FRACTION * N) workers are --slowdown times slower (default 0)"),
    study.Option("slowdown", float, above=0, metavar="C", applies=_with_stragglers,
                 help="compute-time factor of the stragglers (default 5)"),
    study.Option("assignment", str, choices=ASSIGNMENTS,
                 help="who gets the next job: pure (the worker that just finished; the paper), random, shuffle"),
    study.Option("arrivals", int, low=1, help="arrivals recorded after the warm-up, every N "
                 "(default max(min_arrivals, arrivals_per_worker N) of the preset)"),
    study.Option("warmup", int, low=0, help="arrivals discarded first, start-up included, every N (default 10 N)"),
    study.Option("seed", int, help="PRNG seed (default 0)"),
)


def check(s: dict, given: set) -> dict:
    if s["timing"] == "uniform":
        low = DEFAULTS["low"] if s["low"] is None else s["low"]
        high = DEFAULTS["high"] if s["high"] is None else s["high"]
        if not high >= low:
            raise common.UsageError(f"--high must be >= --low ({low}), got {high}.")
    s = dict(s)
    s["workers"] = sorted(s["workers"])
    return s


def settings_of(s: dict, n: int) -> dict:
    """The settings of one N: what determines its simulation (the config, with the study's name)."""
    model = s["timing"]
    t = {"model": model}
    if model != "uniform":
        t["mean"] = DEFAULTS["mean"] if s["mean"] is None else s["mean"]
    if model in ("normal", "lognormal"):
        t["sigma"] = DEFAULTS["sigma"] if s["sigma"] is None else s["sigma"]
    if model == "uniform":
        t["low"] = DEFAULTS["low"] if s["low"] is None else s["low"]
        t["high"] = DEFAULTS["high"] if s["high"] is None else s["high"]
    if s["stragglers"] > 0:
        t["stragglers"] = s["stragglers"]
        t["slowdown"] = DEFAULTS["slowdown"] if s["slowdown"] is None else s["slowdown"]
        # the same count as asgd_jax.timing.stragglers: the last floor(p * N + 1/2) workers
        t["straggler_workers"] = math.floor(s["stragglers"] * n + 0.5)
    arrivals = s["arrivals"] if s["arrivals"] is not None else max(s["min_arrivals"], s["arrivals_per_worker"] * n)
    warmup = WARMUP_ROUNDS * n if s["warmup"] is None else s["warmup"]
    return dict(workers=n, timing=t, assignment=s["assignment"], arrivals=arrivals, warmup=warmup, seed=s["seed"])


def timing_model(t: dict):
    """The :mod:`asgd_jax.timing` model of the settings' ``timing`` entry."""
    from asgd_jax import timing

    if t["model"] == "uniform":
        base = timing.uniform(t["low"], t["high"])  # its ends as given (mean ± half-width could round)
    else:
        base = timing.from_name(t["model"], t["mean"], t.get("sigma", 0.0))
    if "stragglers" in t:
        return timing.stragglers(base, t["stragglers"], t["slowdown"])
    return base


def timing_label(t: dict, workers: int) -> str:
    """``{"model": "normal", "mean": 1, "sigma": 0.2}`` → ``'Normal(1, 0.2²) truncated to > 0'``."""
    model = t["model"]
    if model == "normal":
        label = f"Normal({t['mean']:g}, {t['sigma']:g}²) truncated to > 0"
    elif model == "fixed":
        label = f"fixed {t['mean']:g}"
    elif model == "exponential":
        label = f"Exponential(mean {t['mean']:g})"
    elif model == "lognormal":
        label = f"LogNormal(mean {t['mean']:g}, σ of log {t['sigma']:g})"
    else:
        label = f"Uniform[{t['low']:g}, {t['high']:g})"
    if "stragglers" in t:
        label += f"; {t['straggler_workers']} of {workers} workers {t['slowdown']:g}× slower"
    return label


def simulate(s: dict) -> np.ndarray:
    """The recorded staleness (int32, arrival order): warm-up dropped."""
    from asgd_jax import simulate_staleness

    trace = simulate_staleness(
        s["workers"],
        timing_model(s["timing"]),
        s["warmup"] + s["arrivals"],
        key=s["seed"],
        assignment=s["assignment"],
    )
    return np.asarray(trace.staleness, dtype=np.int32)[s["warmup"] :]


def summarize(staleness: np.ndarray, s: dict) -> dict:
    """Statistics of the recorded staleness, the normal fit and the histogram counts."""
    x = staleness.astype(np.float64)
    bins, counts = plots.integer_histogram(staleness)
    d = x - x.mean()
    m2 = float(np.mean(d**2))
    # shape against a normal (0 and 0 there); undefined (NaN, None in JSON) without spread
    skewness = float(np.mean(d**3)) / m2**1.5 if m2 > 0 else math.nan
    excess_kurtosis = float(np.mean(d**4)) / m2**2 - 3.0 if m2 > 0 else math.nan
    return dict(
        study=NAME,
        workers=s["workers"],
        timing=s["timing"],
        assignment=s["assignment"],
        seed=s["seed"],
        warmup=s["warmup"],
        arrivals=int(staleness.size),
        mean=float(x.mean()),
        std=float(x.std()),
        min=bins[0],
        max=bins[-1],
        skewness=skewness,
        excess_kurtosis=excess_kurtosis,
        # maximum-likelihood normal fit: the sample mean and the (ddof = 0) sample std
        normal_fit=dict(mu=float(x.mean()), sigma=float(x.std())),
        expected_mean=s["workers"] - 1,
        histogram=dict(staleness=bins, count=counts),
    )


# --- the study: how the skeleton runs it ------------------------------------------------------------------


def _configs(ctx) -> list[dict]:
    return [{"study": NAME, **settings_of(ctx.settings, n)} for n in ctx.settings["workers"]]


def _plan(ctx, configs: list[dict]) -> list[study.Unit]:
    """One simulation per N; a single N also keeps its staleness in arrival order (``staleness.npy``)."""
    from asgd_jax.sweep import config_id

    def unit(c):
        def run(_bar):
            s = {k: v for k, v in c.items() if k != "study"}
            t0 = time.perf_counter()
            staleness = simulate(s)
            summary = summarize(staleness, s)
            summary["wall_s"] = time.perf_counter() - t0
            if len(configs) == 1:
                tmp = os.path.join(ctx.out, ".tmp-staleness.npy")
                np.save(tmp, staleness)
                os.replace(tmp, os.path.join(ctx.out, "staleness.npy"))
            print(
                f"  N = {s['workers']:>4}: {summary['arrivals']} arrivals, mean {summary['mean']:.3f} "
                f"(N - 1 = {s['workers'] - 1}), std {summary['std']:.3f}, min {summary['min']}, "
                f"max {summary['max']} ({summary['wall_s']:.1f} s)"
            )
            return [{"config_id": config_id(c), **summary}]

        return study.Unit([c], run, f"N = {c['workers']}")

    return [unit(c) for c in configs]


def _head(ctx) -> str:
    c = _configs(ctx)
    return (f"(N = {', '.join(str(x['workers']) for x in c)}); compute time ~ "
            f"{timing_label(c[-1]['timing'], c[-1]['workers'])}, {c[0]['assignment']} assignment, seed {c[0]['seed']}")


def _finish(ctx, records) -> tuple[str, list[str]]:
    if len(records) == 1:
        r = records[0]
        n, fit = r["workers"], r["normal_fit"]
        plots.staleness_histogram(
            r["histogram"]["staleness"], r["histogram"]["count"], ctx.figure("histogram.png"),
            expected=n - 1, mu=fit["mu"], sigma=fit["sigma"],
            title=f"Staleness of {n} asynchronous workers, compute time ~ {timing_label(r['timing'], n)}\n"
            f"{r['assignment']} assignment, {r['arrivals']} arrivals after a warm-up of {r['warmup']}",
        )
        return single_report(r), [f"  normal fit: mu = {fit['mu']:.3f}, sigma = {fit['sigma']:.3f}"]
    growth = std_growth(records)
    ns = [r["workers"] for r in records]
    timing = records[0]["timing"]
    sigma = timing["sigma"] if _is_plain_normal(timing) else None
    title = f"Staleness of N asynchronous workers, compute time ~ {timing_label(timing, ns[-1])}"
    plots.staleness_vs_workers(
        ns, [r["mean"] for r in records], [r["std"] for r in records], ctx.figure("mean_vs_workers.png"),
        fit=growth["large"] or growth["all"], sigma=sigma,
        title=title + f"\n{records[0]['assignment']} assignment; arrivals per N: "
        + ", ".join(str(r["arrivals"]) for r in records),
    )
    panels = [
        {"workers": r["workers"], "staleness": r["histogram"]["staleness"], "count": r["histogram"]["count"],
         "mu": r["normal_fit"]["mu"], "sigma": r["normal_fit"]["sigma"]}
        for r in histogram_picks(records)
    ]
    plots.staleness_histogram_panels(panels, ctx.figure("histograms.png"), title=title)
    return sweep_report(records, ctx.preset, growth), [markdown_table(records)]


STUDY = study.Study(
    name=NAME, help=HELP, doc=__doc__, presets=PRESETS, options=OPTIONS, configs=_configs, plan=_plan,
    finish=_finish, check=check, head=_head, default_preset="single",
)


def _is_plain_normal(timing: dict) -> bool:
    return timing["model"] == "normal" and "stragglers" not in timing


def histogram_picks(records: list[dict], k: int = 6) -> list[dict]:
    """Up to ``k`` records spread evenly over the sweep, the smallest and largest N included."""
    if len(records) <= k:
        return list(records)
    idx = sorted({round(i * (len(records) - 1) / (k - 1)) for i in range(k)})
    return [records[i] for i in idx]


def _loglog_fit(rs: list[dict]) -> dict:
    x = np.log([r["workers"] - 1 for r in rs])
    y = np.log([r["std"] for r in rs])
    slope, intercept = np.polyfit(x, y, 1)
    return {"slope": float(slope), "coef": float(np.exp(intercept)), "workers": [r["workers"] for r in rs]}


def std_growth(records: list[dict]) -> dict:
    """Least-squares fits of ``log std = log coef + slope · log(N - 1)``.

    ``all``: over every N >= 2 with std > 0 (needs two such N); ``large``: over
    the larger half of those N (at least two; only when there are four or more).
    ``None`` where there are too few points.
    """
    usable = [r for r in records if r["workers"] >= 2 and r["std"] is not None and r["std"] > 0]
    fits = {"all": None, "large": None}
    if len(usable) >= 2:
        fits["all"] = _loglog_fit(usable)
    if len(usable) >= 4:
        fits["large"] = _loglog_fit(usable[len(usable) // 2 :])
    return fits


def _num(x, fmt: str = ".3f") -> str:
    return "–" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, fmt)


def markdown_table(records: list[dict]) -> str:
    """One row per N: mean, std and extremes of the staleness, and the distance of the mean from N - 1."""
    head = (
        "| N | arrivals | mean | N − 1 | abs(mean − (N − 1)) | std | std / (N − 1) | min | max "
        "| skewness | excess kurtosis |\n"
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    )
    rows = []
    for r in records:
        n = r["workers"]
        rows.append(
            f"| {n} | {r['arrivals']} | {r['mean']:.3f} | {n - 1} | {abs(r['mean'] - (n - 1)):.4f} "
            f"| {r['std']:.3f} | {_num(r['std'] / (n - 1) if n > 1 else None)} | {r['min']} | {r['max']} "
            f"| {_num(r['skewness'])} | {_num(r['excess_kurtosis'])} |"
        )
    return "\n".join([head, *rows])


def _paper_note(records: list[dict]) -> str:
    """A sentence naming how the settings differ from the paper's, or '' when they match."""
    diffs = []
    timing = records[0]["timing"]
    base = {k: v for k, v in timing.items() if k not in ("stragglers", "slowdown", "straggler_workers")}
    if base != PAPER_TIMING:
        diffs.append(f"compute time ~ {timing_label(base, 2)}")
    if "stragglers" in timing:
        diffs.append(f"the last round({timing['stragglers']:g} N) workers {timing['slowdown']:g}× slower")
    if records[0]["assignment"] != "pure":
        diffs.append(f"{records[0]['assignment']} assignment")
    if not diffs:
        return ""
    return (
        "\n\nThese settings differ from the paper's (compute time Normal(1, 0.2²), pure assignment, equal "
        f"workers): {'; '.join(diffs)}. The comparison is with a variant of the paper's experiment."
    )


PAPER_CLAIM = (
    "**Paper** (Jain et al. 2018, Figure 1): with N workers whose time between two "
    "submissions is Normal(1, 0.2²), the number of server updates between a gradient's pull and its arrival "
    'is "close to normal, centred at N − 1".'
)


def sweep_report(records: list[dict], preset: str | None, growth: dict) -> str:
    """``report.md`` of an N sweep: settings, the table, and the measured findings beside the paper's."""
    ns = [r["workers"] for r in records]
    timing = records[0]["timing"]
    dev = [abs(r["mean"] - (r["workers"] - 1)) for r in records]
    worst = int(np.argmax(dev))
    wr = records[worst]
    centre = (
        f"- **Centre.** Over the {len(records)} values of N, the largest abs(mean − (N − 1)) is "
        f"{dev[worst]:.4f}, at N = {wr['workers']}"
    )
    if wr["workers"] > 1:
        centre += f" ({100 * dev[worst] / (wr['workers'] - 1):.3g} % of N − 1"
        centre += f", {100 * dev[worst] / wr['std']:.3g} % of that N's std)" if wr["std"] > 0 else ")"
    centre += "."
    shaped = [r for r in records if r["skewness"] is not None and math.isfinite(r["skewness"])]
    if shaped:
        sk = [r["skewness"] for r in shaped]
        ku = [r["excess_kurtosis"] for r in shaped]
        ws = shaped[int(np.argmax(np.abs(sk)))]["workers"]
        wk = shaped[int(np.argmax(np.abs(ku)))]["workers"]
        shape = (
            f"- **Shape.** Skewness lies between {min(sk):.3f} and {max(sk):.3f} and excess kurtosis between "
            f"{min(ku):.3f} and {max(ku):.3f} (both 0 for a normal distribution); the largest abs(skewness) is "
            f"at N = {ws}, the largest abs(excess kurtosis) at N = {wk}."
        )
        if len(shaped) >= 2:
            first, last = shaped[0], shaped[-1]
            shape += (
                f" From N = {first['workers']} to N = {last['workers']}, abs(skewness) goes from "
                f"{abs(first['skewness']):.3f} to {abs(last['skewness']):.3f} and abs(excess kurtosis) from "
                f"{abs(first['excess_kurtosis']):.3f} to {abs(last['excess_kurtosis']):.3f}."
            )
        if len(shaped) < len(records):
            shape += " N with std 0 (a single value) have neither and are left out."
        shape += (
            f" At N = {records[0]['workers']} the staleness takes the values {records[0]['min']}…"
            f"{records[0]['max']}."
        )
    else:
        shape = "- **Shape.** Every N has std 0: the staleness is a single value, no spread to compare."
    fit_all, fit_large = growth["all"], growth["large"]
    if fit_all is None:
        spread = "- **Spread.** Fewer than two N with std > 0: no growth rate to fit."
    else:
        spread = (
            "- **Spread.** A least-squares fit of log std against log(N − 1) gives std ∝ (N − 1)^b with "
            f"b = {fit_all['slope']:.3f} over N = {fit_all['workers'][0]}…{fit_all['workers'][-1]}"
        )
        if fit_large is not None:
            spread += f" and b = {fit_large['slope']:.3f} over the larger N = " + ", ".join(
                map(str, fit_large["workers"])
            )
        spread += "."
        last = records[-1]
        if last["workers"] > 1:
            spread += f" At N = {last['workers']}, std / (N − 1) = {last['std'] / (last['workers'] - 1):.4f}"
            if _is_plain_normal(timing):
                spread += f" (the compute time's σ is {timing['sigma']:g})"
            spread += "."
    lengths = f"the `{preset}` preset's run lengths"
    settings = (
        f"N = {', '.join(map(str, ns))} ({lengths}); compute time ~ {timing_label(timing, ns[-1])}; "
        f"{records[0]['assignment']} assignment; seed {records[0]['seed']}. Per N, a warm-up of "
        + ", ".join(str(r["warmup"]) for r in records)
        + " arrivals is discarded, then "
        + ", ".join(str(r["arrivals"]) for r in records)
        + " arrivals are recorded (wall times per N: `timing.jsonl`)."
    )
    return "\n".join(
        [
            "# Staleness against the number of workers (Jain et al. 2018, Figure 1)",
            "",
            settings,
            "",
            markdown_table(records),
            "",
            "## Beside the paper",
            "",
            PAPER_CLAIM + _paper_note(records),
            "",
            "**Measured** (computed from `results.jsonl`):",
            "",
            centre,
            shape,
            spread,
            "",
            "Figures: `mean_vs_workers.png` (left: mean ± 1 std against N with the line N − 1; right: the std "
            "against N with the fit"
            + (" and the line σ·(N − 1)" if _is_plain_normal(timing) else "")
            + "), `histograms.png` (N = "
            + ", ".join(str(r["workers"]) for r in histogram_picks(records))
            + ", each with its normal fit and the line N − 1).",
            "",
        ]
    )


def single_report(summary: dict) -> str:
    """``report.md`` of a single-N run: the statistics beside the paper's claim."""
    n = summary["workers"]
    dev = abs(summary["mean"] - (n - 1))
    rel = f" ({100 * dev / (n - 1):.3g} % of N − 1)" if n > 1 else ""
    shape = (
        f"skewness {_num(summary['skewness'])} and excess kurtosis {_num(summary['excess_kurtosis'])} "
        "(both 0 for a normal distribution)"
        if summary["std"] > 0
        else "std 0: a single value, no shape to compare"
    )
    return "\n".join(
        [
            f"# Staleness of {n} asynchronous workers (Jain et al. 2018, Figure 1)",
            "",
            (
                f"Compute time ~ {timing_label(summary['timing'], n)}; {summary['assignment']} assignment; "
                f"seed {summary['seed']}; {summary['arrivals']} arrivals recorded after a warm-up of "
                f"{summary['warmup']}."
            ),
            "",
            markdown_table([summary]),
            "",
            PAPER_CLAIM + _paper_note([summary]),
            "",
            (
                f"**Measured:** mean {summary['mean']:.4f} against N − 1 = {n - 1}, abs(mean − (N − 1)) = "
                f"{dev:.4f}{rel}; std {summary['std']:.3f}; {shape}. Histogram with the normal fit: "
                "`histogram.png`; an N sweep: `--preset quick|medium|paper`."
            ),
            "",
        ]
    )
