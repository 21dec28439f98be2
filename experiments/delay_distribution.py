"""Jain et al. (2018), Figure 1: Monte Carlo of the staleness of asynchronous gradients.

``N`` workers each compute one gradient after another; the time between two
submissions of one worker is ``Normal(1, sigma^2)`` truncated to positive times
(``--sigma 0.2`` as in the paper). With the pure rule a worker pulls the model
again right after its gradient arrives. The staleness of a gradient is the
number of server updates between its pull and its arrival; the paper finds it
close to normal, centred at ``N - 1`` (shared/PAPERS.md §1).

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

Writes to ``--out`` (default ``runs/delay_distribution``): ``summary.json``
(settings; mean, std, min, max, skewness and excess kurtosis of the staleness;
the maximum-likelihood normal fit, i.e. the sample mean and the sample std with
ddof = 0; the expected mean ``N - 1``; the histogram counts), ``histogram.png``
(the histogram in integer bins as a density, the fitted normal pdf and a line at
``N - 1``), ``staleness.npy`` (int32, the recorded staleness in arrival order)
and ``report.md`` (the numbers beside the paper's claim).

N sweep (the paper's figure over N). ``--preset quick|medium|paper`` runs one
simulation per N and writes to ``--out`` (default
``runs/delay_distribution-<preset>``):

- ``paper``: N = 2, 3, 5, 9, 17, 33, 65, 129, 257 (powers of two plus one, so
  ``N - 1`` = 1 ... 256, the delays of the paper's Figure 3), ``max(20000, 100 N)``
  arrivals per N (the single-N default); 1-2 s per N, mostly compilation (17 s in
  all on a busy 2-core CPU).
- ``medium``: the same N, ``max(10000, 50 N)`` arrivals.
- ``quick``: N = 2, 5, 17, 65, 257, ``max(2000, 20 N)`` arrivals (seconds).

Every preset discards a warm-up of ``10 N`` arrivals and uses the timing flags
(default ``Normal(1, 0.2^2)``, the paper's). ``--workers-list 2,4,8`` replaces
the preset's N (sorted, duplicates dropped); given without ``--preset`` it runs
the ``paper`` run lengths into ``runs/delay_distribution-sweep``.
``--arrivals`` and ``--warmup`` given with a sweep apply to every N. ``--workers``
means one N: it cannot be combined with ``--preset`` or ``--workers-list`` (a
one-line error names the flag to use). Neither given: the single-N mode with
``--workers`` (default 16) described above.

A sweep writes ``results.jsonl`` (one JSON object per N: ``config_id``, the
settings, mean, std, min, max, skewness, excess kurtosis, the normal fit, the
expected mean ``N - 1``, the histogram counts and the simulation time),
``mean_vs_workers.png`` (mean ± std against N on log-2 axes with the line
``N - 1``; beside it the std against N with a power-law fit),
``histograms.png`` (up to six N, each with its normal fit) and ``report.md``
(a table per N and the measured findings beside the paper's claim, every
statement computed from the records). Rerun-safe: ``results.jsonl`` is an
:class:`experiments.common.ResultsFile` keyed by the settings of one N, so a
rerun (or a sweep grown by more N) simulates only the N not yet recorded and
appends; earlier lines are never rewritten. The plots and ``report.md`` are
rebuilt from the records of the N asked for. Per-N staleness arrays are not
kept in a sweep (the histogram counts in the records hold every value). The two
modes write different files except ``report.md``, so a sweep refuses an
``--out`` that holds a single-N ``summary.json`` and the single-N mode refuses
one that holds a sweep's ``results.jsonl``.

Why the spread grows about like ``sigma (N - 1)`` (a heuristic, for reading the
report): between a gradient's pull and its arrival lies one compute time
``T ~ Normal(1, sigma^2)``, during which each of the other ``N - 1`` workers
arrives about ``T`` times; so the staleness is roughly ``(N - 1) T`` plus a
per-worker rounding term of variance ``O(N - 1)``, and its std tends to
``sigma (N - 1)`` for large N.
"""

from __future__ import annotations

import json
import math
import os
import time

import numpy as np

from experiments import common, plots

NAME = "delay_distribution"
HELP = "Jain et al. Fig. 1: Monte Carlo of the staleness of N asynchronous workers (centred at N - 1)"

TIMINGS = ("normal", "fixed", "exponential", "lognormal", "uniform")
ASSIGNMENTS = ("pure", "random", "shuffle")
DEFAULTS = dict(workers=16, timing="normal", mean=1.0, sigma=0.2, low=0.5, high=1.5, slowdown=5.0)
PAPER_WORKERS = [2, 3, 5, 9, 17, 33, 65, 129, 257]  # N - 1 = 1, 2, 4, ..., 256
WARMUP_ROUNDS = 10  # warm-up arrivals per worker, every mode
# An N sweep: the N and the arrivals recorded per N, max(min_arrivals, arrivals_per_worker * N).
PRESETS = {
    "quick": {"workers": [2, 5, 17, 65, 257], "min_arrivals": 2000, "arrivals_per_worker": 20},
    "medium": {"workers": PAPER_WORKERS, "min_arrivals": 10000, "arrivals_per_worker": 50},
    "paper": {"workers": PAPER_WORKERS, "min_arrivals": 20000, "arrivals_per_worker": 100},
}
SINGLE = PRESETS["paper"]  # the single-N run lengths
PAPER_TIMING = {"model": "normal", "mean": 1.0, "sigma": 0.2}


def add_arguments(p) -> None:
    p.add_argument(
        "--workers",
        type=int,
        help="number of workers N of a single-N run (default 16); not with --preset or --workers-list",
    )
    p.add_argument(
        "--preset",
        metavar="NAME",
        help="run an N sweep: quick (N = 2, 5, 17, 65, 257; seconds), medium or paper "
        "(N = 2, 3, 5, ..., 257; under a minute); see the description above",
    )
    p.add_argument(
        "--workers-list",
        metavar="N1,N2,...",
        help="the N of a sweep, e.g. 2,4,8 (replaces the preset's; alone: the paper preset's run lengths)",
    )
    p.add_argument(
        "--timing",
        default=DEFAULTS["timing"],
        metavar="MODEL",
        help="compute-time model: " + ", ".join(TIMINGS) + " (default normal, truncated to positive times)",
    )
    p.add_argument(
        "--mean", type=float, help="mean compute time of normal, fixed, exponential, lognormal (default 1)"
    )
    p.add_argument(
        "--sigma",
        type=float,
        help="std of --timing normal, or the std of log T for lognormal (default 0.2)",
    )
    p.add_argument("--low", type=float, help="lower end of --timing uniform (default 0.5)")
    p.add_argument("--high", type=float, help="upper end of --timing uniform (default 1.5)")
    p.add_argument(
        "--stragglers",
        type=float,
        default=0.0,
        metavar="FRACTION",
        help="the last round(FRACTION * N) workers are --slowdown times slower (default 0)",
    )
    p.add_argument(
        "--slowdown", type=float, metavar="C", help="compute-time factor of the stragglers (default 5)"
    )
    p.add_argument(
        "--assignment",
        default="pure",
        metavar="RULE",
        help="who gets the next job: pure (the worker that just finished; the paper), random, shuffle",
    )
    p.add_argument(
        "--arrivals",
        type=int,
        help="arrivals recorded after the warm-up, every N (default max(20000, 100 N); presets: their own)",
    )
    p.add_argument(
        "--warmup", type=int, help="arrivals discarded first, start-up included, every N (default 10 N)"
    )
    p.add_argument("--seed", type=int, default=0, help="PRNG seed (default 0)")
    p.add_argument(
        "--out",
        help=f"output directory (default: runs/{NAME}, a sweep runs/{NAME}-<preset> or runs/{NAME}-sweep)",
    )


def _positive(name: str, value: float) -> None:
    if not (math.isfinite(value) and value > 0):
        raise common.UsageError(f"--{name} must be a positive number, got {value}.")


def settings_from_args(args) -> dict:
    """The single-N settings, every value checked (one-line :class:`common.UsageError`)."""
    n = DEFAULTS["workers"] if args.workers is None else args.workers
    if n < 1:
        raise common.UsageError(f"--workers must be >= 1, got {n}.")
    return _settings(args, n, SINGLE)


def sweep_from_args(args) -> tuple[str | None, list[dict]] | None:
    """``(preset, settings of every N)`` of an N sweep, or ``None`` for the single-N mode.

    ``--preset`` or ``--workers-list`` make a sweep; ``--workers`` with either
    is contradictory (one-line :class:`common.UsageError`).
    """
    preset = args.preset
    if preset is not None and preset not in PRESETS:
        raise common.UsageError(f"unknown --preset {preset!r}; choose one of {', '.join(PRESETS)}.")
    if args.workers is not None and (preset is not None or args.workers_list is not None):
        given = "--preset" if preset is not None else "--workers-list"
        raise common.UsageError(
            f"--workers runs a single N and contradicts {given} (an N sweep); "
            f"sweep with --workers-list N1,N2,... or drop {given}."
        )
    if preset is None and args.workers_list is None:
        return None
    lengths = PRESETS[preset or "paper"]
    if args.workers_list is None:
        ns = list(lengths["workers"])
    else:
        ns = sorted(set(common.parse_list(args.workers_list, int, "workers-list")))
        if ns[0] < 1:
            raise common.UsageError(f"--workers-list: every N must be >= 1, got {ns[0]}.")
    return preset, [_settings(args, n, lengths) for n in ns]


def _settings(args, n: int, lengths: dict) -> dict:
    """The settings of one N (``lengths``: the preset giving the default number of arrivals)."""
    model = args.timing
    if model not in TIMINGS:
        raise common.UsageError(f"unknown --timing {model!r}; choose one of {', '.join(TIMINGS)}.")
    if args.assignment not in ASSIGNMENTS:
        raise common.UsageError(
            f"unknown --assignment {args.assignment!r}; choose one of {', '.join(ASSIGNMENTS)}."
        )
    uses = {"mean": model != "uniform", "sigma": model in ("normal", "lognormal"), "low": model == "uniform"}
    uses["high"] = uses["low"]
    for flag, used in uses.items():
        if getattr(args, flag) is not None and not used:
            raise common.UsageError(f"--{flag} does not apply to --timing {model}; leave it out.")
    t = {"model": model}
    if uses["mean"]:
        t["mean"] = DEFAULTS["mean"] if args.mean is None else args.mean
        _positive("mean", t["mean"])
    if uses["sigma"]:
        t["sigma"] = DEFAULTS["sigma"] if args.sigma is None else args.sigma
        if not (math.isfinite(t["sigma"]) and t["sigma"] >= 0):
            raise common.UsageError(f"--sigma must be >= 0, got {t['sigma']}.")
    if uses["low"]:
        t["low"] = DEFAULTS["low"] if args.low is None else args.low
        t["high"] = DEFAULTS["high"] if args.high is None else args.high
        _positive("low", t["low"])
        if not (math.isfinite(t["high"]) and t["high"] >= t["low"]):
            raise common.UsageError(f"--high must be >= --low ({t['low']}), got {t['high']}.")
    fraction = args.stragglers
    if not (0.0 <= fraction <= 1.0):
        raise common.UsageError(f"--stragglers must be a fraction in [0, 1], got {fraction}.")
    if fraction > 0:
        t["stragglers"] = fraction
        t["slowdown"] = DEFAULTS["slowdown"] if args.slowdown is None else args.slowdown
        _positive("slowdown", t["slowdown"])
        # the same count as asgd_jax.timing.stragglers: the last floor(p * N + 1/2) workers
        t["straggler_workers"] = math.floor(fraction * n + 0.5)
    elif args.slowdown is not None:
        raise common.UsageError("--slowdown applies only with --stragglers FRACTION > 0.")
    if args.arrivals is None:
        arrivals = max(lengths["min_arrivals"], lengths["arrivals_per_worker"] * n)
    else:
        arrivals = args.arrivals
    if arrivals < 1:
        raise common.UsageError(f"--arrivals must be >= 1, got {arrivals}.")
    warmup = WARMUP_ROUNDS * n if args.warmup is None else args.warmup
    if warmup < 0:
        raise common.UsageError(f"--warmup must be >= 0, got {warmup}.")
    return dict(
        workers=n, timing=t, assignment=args.assignment, arrivals=arrivals, warmup=warmup, seed=args.seed
    )


def timing_model(t: dict):
    """The :mod:`asgd_jax.timing` model of the settings' ``timing`` entry."""
    from asgd_jax import timing

    model = t["model"]
    if model == "normal":
        base = timing.normal(t["mean"], t["sigma"])
    elif model == "fixed":
        base = timing.fixed(t["mean"])
    elif model == "exponential":
        base = timing.exponential(t["mean"])
    elif model == "lognormal":
        base = timing.lognormal(t["mean"], t["sigma"])
    else:
        base = timing.uniform(t["low"], t["high"])
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
    lo, hi = int(staleness.min()), int(staleness.max())
    counts = np.bincount(staleness - lo, minlength=hi - lo + 1)
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
        min=lo,
        max=hi,
        skewness=skewness,
        excess_kurtosis=excess_kurtosis,
        # maximum-likelihood normal fit: the sample mean and the (ddof = 0) sample std
        normal_fit=dict(mu=float(x.mean()), sigma=float(x.std())),
        expected_mean=s["workers"] - 1,
        histogram=dict(staleness=list(range(lo, hi + 1)), count=[int(c) for c in counts]),
    )


def run(args) -> int:
    sweep = sweep_from_args(args)  # every check before anything compiles or is written
    if sweep is not None:
        return run_sweep(args, *sweep)
    s = settings_from_args(args)
    out = args.out or os.path.join("runs", NAME)
    if os.path.exists(os.path.join(out, "results.jsonl")):
        raise common.UsageError(
            f"--out {out!r} holds an N sweep (results.jsonl) whose report.md a single-N run would "
            "overwrite; choose another --out."
        )
    out = common.prepare_out_dir(out)
    label = timing_label(s["timing"], s["workers"])
    t0 = time.perf_counter()
    staleness = simulate(s)
    wall = time.perf_counter() - t0
    summary = summarize(staleness, s)
    summary["wall_s"] = wall
    with open(os.path.join(out, "summary.json"), "w", encoding="utf-8") as f:
        json.dump(common.jsonable(summary), f, indent=2)
    np.save(os.path.join(out, "staleness.npy"), staleness)
    n, fit = s["workers"], summary["normal_fit"]
    plots.staleness_histogram(
        summary["histogram"]["staleness"],
        summary["histogram"]["count"],
        os.path.join(out, "histogram.png"),
        expected=n - 1,
        mu=fit["mu"],
        sigma=fit["sigma"],
        title=f"Staleness of {n} asynchronous workers, compute time ~ {label}\n"
        f"{s['assignment']} assignment, {summary['arrivals']} arrivals after a warm-up of {s['warmup']}",
    )
    print(f"{NAME}: {n} workers, compute time ~ {label}, {s['assignment']} assignment, seed {s['seed']}")
    print(
        f"  {summary['arrivals']} arrivals after {s['warmup']} warm-up: staleness mean {summary['mean']:.3f} "
        f"(expected N - 1 = {n - 1}), std {summary['std']:.3f}, min {summary['min']}, max {summary['max']}"
    )
    print(f"  normal fit: mu = {fit['mu']:.3f}, sigma = {fit['sigma']:.3f}")
    _write_text(os.path.join(out, "report.md"), single_report(summary))
    print(
        f"  simulated in {wall:.1f} s; wrote summary.json, histogram.png, staleness.npy, report.md to {out}"
    )
    return 0


def run_sweep(args, preset: str | None, settings: list[dict]) -> int:
    """One simulation per N not yet in ``results.jsonl``, then the plots and ``report.md`` of all N."""
    out = args.out or os.path.join("runs", f"{NAME}-{preset or 'sweep'}")
    if os.path.exists(os.path.join(out, "summary.json")):
        raise common.UsageError(
            f"--out {out!r} holds a single-N run (summary.json) whose report.md a sweep would overwrite; "
            "choose another --out."
        )
    out = common.prepare_out_dir(out)
    results = common.ResultsFile(os.path.join(out, "results.jsonl"))
    if results.skipped_lines:
        print(
            f"warning: skipped {results.skipped_lines} unreadable line(s) of {results.path} (a killed run?)"
        )
    configs = [{"study": NAME, **s} for s in settings]
    todo = [(c, s) for c, s in zip(configs, settings) if not results.has(c)]
    ns = [s["workers"] for s in settings]
    label = timing_label(settings[-1]["timing"], ns[-1])
    print(
        f"{NAME}: N sweep ({preset or 'custom'}) over N = {', '.join(map(str, ns))}; compute time ~ {label}, "
        f"{settings[0]['assignment']} assignment, seed {settings[0]['seed']}; "
        f"{len(configs) - len(todo)} N already in {results.path}"
    )
    from asgd_jax.sweep import config_id

    for c, s in todo:
        t0 = time.perf_counter()
        staleness = simulate(s)
        summary = summarize(staleness, s)
        summary["wall_s"] = time.perf_counter() - t0
        results.append([{"config_id": config_id(c), **summary}])
        print(
            f"  N = {s['workers']:>4}: {summary['arrivals']} arrivals, mean {summary['mean']:.3f} "
            f"(N - 1 = {s['workers'] - 1}), std {summary['std']:.3f}, min {summary['min']}, "
            f"max {summary['max']} ({summary['wall_s']:.1f} s)"
        )
    records = results.select(configs)
    growth = std_growth(records)
    timing = records[0]["timing"]
    sigma = timing["sigma"] if _is_plain_normal(timing) else None
    title = f"Staleness of N asynchronous workers, compute time ~ {timing_label(timing, ns[-1])}"
    plots.staleness_vs_workers(
        [r["workers"] for r in records],
        [r["mean"] for r in records],
        [r["std"] for r in records],
        os.path.join(out, "mean_vs_workers.png"),
        fit=growth["large"] or growth["all"],
        sigma=sigma,
        title=title
        + f"\n{records[0]['assignment']} assignment; arrivals per N: "
        + ", ".join(str(r["arrivals"]) for r in records),
    )
    panels = [
        {
            "workers": r["workers"],
            "staleness": r["histogram"]["staleness"],
            "count": r["histogram"]["count"],
            "mu": r["normal_fit"]["mu"],
            "sigma": r["normal_fit"]["sigma"],
        }
        for r in histogram_picks(records)
    ]
    plots.staleness_histogram_panels(panels, os.path.join(out, "histograms.png"), title=title)
    _write_text(os.path.join(out, "report.md"), sweep_report(records, preset, growth))
    print(markdown_table(records))
    print(f"wrote results.jsonl, mean_vs_workers.png, histograms.png, report.md to {out}")
    return 0


def _write_text(path: str, text: str) -> None:
    """Writes ``text`` to ``path`` whole or not at all (a temporary file renamed over it)."""
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


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
    "**Paper** (Jain et al. 2018, Figure 1; shared/PAPERS.md §1): with N workers whose time between two "
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
    walls = [r.get("wall_s") for r in records]
    wall = f"{sum(walls):.1f} s" if all(w is not None for w in walls) else "not recorded"
    lengths = f"the `{preset}` preset" if preset else "`--workers-list` with the paper preset's run lengths"
    settings = (
        f"N = {', '.join(map(str, ns))} ({lengths}); compute time ~ {timing_label(timing, ns[-1])}; "
        f"{records[0]['assignment']} assignment; seed {records[0]['seed']}. Per N, a warm-up of "
        + ", ".join(str(r["warmup"]) for r in records)
        + " arrivals is discarded, then "
        + ", ".join(str(r["arrivals"]) for r in records)
        + f" arrivals are recorded. Simulation time, summed over N as recorded: {wall}."
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
