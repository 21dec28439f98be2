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
(settings; mean, std, min, max of the staleness; the maximum-likelihood normal
fit, i.e. the sample mean and the sample std with ddof = 0; the expected mean
``N - 1``; the histogram counts), ``histogram.png`` (the histogram in integer
bins as a density, the fitted normal pdf and a line at ``N - 1``) and
``staleness.npy`` (int32, the recorded staleness in arrival order).
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


def add_arguments(p) -> None:
    p.add_argument(
        "--workers", type=int, default=DEFAULTS["workers"], help="number of workers N (default 16)"
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
        "--arrivals", type=int, help="arrivals recorded after the warm-up (default max(20000, 100 N))"
    )
    p.add_argument("--warmup", type=int, help="arrivals discarded first, start-up included (default 10 N)")
    p.add_argument("--seed", type=int, default=0, help="PRNG seed (default 0)")
    p.add_argument(
        "--out", default=os.path.join("runs", NAME), help="output directory (default: %(default)s)"
    )


def _positive(name: str, value: float) -> None:
    if not (math.isfinite(value) and value > 0):
        raise common.UsageError(f"--{name} must be a positive number, got {value}.")


def settings_from_args(args) -> dict:
    """The study's settings, every value checked (one-line :class:`common.UsageError`)."""
    n = args.workers
    if n < 1:
        raise common.UsageError(f"--workers must be >= 1, got {n}.")
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
    arrivals = max(20000, 100 * n) if args.arrivals is None else args.arrivals
    if arrivals < 1:
        raise common.UsageError(f"--arrivals must be >= 1, got {arrivals}.")
    warmup = 10 * n if args.warmup is None else args.warmup
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
        # maximum-likelihood normal fit: the sample mean and the (ddof = 0) sample std
        normal_fit=dict(mu=float(x.mean()), sigma=float(x.std())),
        expected_mean=s["workers"] - 1,
        histogram=dict(staleness=list(range(lo, hi + 1)), count=[int(c) for c in counts]),
    )


def run(args) -> int:
    s = settings_from_args(args)  # every check before anything compiles
    out = common.prepare_out_dir(args.out)
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
    print(f"  simulated in {wall:.1f} s; wrote summary.json, histogram.png, staleness.npy to {out}")
    return 0
