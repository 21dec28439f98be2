"""`python -m experiments delay_distribution` (Jain et al. Figure 1), run in-process.

Independent references: staleness sequences worked out by hand for fixed compute
times (equal workers; one straggler twice as slow), and a NumPy Monte Carlo
written from the method descriptions in docs/methods.md (constant delay)
that shares no code with the event model: with
the pure rule every worker is an independent renewal process (it restarts the
moment its gradient arrives), so a gradient's staleness is the number of
arrivals of all workers strictly between its pull (the worker's previous
arrival, or time 0) and its own arrival.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from experiments import delay_distribution as dd
from experiments.__main__ import main

SUMMARY_KEYS = {
    "workers",
    "timing",
    "assignment",
    "seed",
    "warmup",
    "arrivals",
    "mean",
    "std",
    "min",
    "max",
    "normal_fit",
    "expected_mean",
    "histogram",
}


def run_study(tmp_path, *argv):
    out = tmp_path / "out"
    assert main(["delay_distribution", "--out", str(out), *argv]) == 0
    (summary,) = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    return summary, np.load(out / "staleness.npy"), out


def reference_staleness(n, draw, warmup, num, seed):
    """Staleness of arrivals ``warmup .. warmup + num - 1`` (time order), pure rule, by renewal processes."""
    rng = np.random.default_rng(seed)
    rounds = (warmup + num) // n + 50
    finish = np.cumsum(draw(rng, (n, rounds)), axis=1)  # worker i's k-th arrival time
    start = np.concatenate([np.zeros((n, 1)), finish[:, :-1]], axis=1)  # when it pulled that job
    everything = np.sort(finish.ravel())
    assert finish[:, -1].min() > everything[warmup + num - 1]  # no worker ran out of simulated rounds
    tau = np.searchsorted(everything, finish, "left") - np.searchsorted(everything, start, "right")
    return tau.ravel()[np.argsort(finish.ravel(), kind="stable")][warmup : warmup + num]


def truncated_normal(rng, shape, mean=1.0, std=0.2):
    x = rng.normal(mean, std, shape)
    while (x <= 0).any():
        x[x <= 0] = rng.normal(mean, std, int((x <= 0).sum()))
    return x


def test_fixed_times_end_to_end_spike_at_n_minus_1(tmp_path, capsys):
    # Equal fixed times: the workers finish in the same order every round, so between a worker's pull
    # and its arrival each of the other N - 1 workers arrives exactly once.
    n = 5
    summary, staleness, out = run_study(
        tmp_path, "--workers", str(n), "--timing", "fixed", "--arrivals", "200"
    )
    assert SUMMARY_KEYS <= set(summary)
    assert summary["timing"] == {"model": "fixed", "mean": 1.0}
    assert (summary["workers"], summary["arrivals"], summary["warmup"]) == (n, 200, 10 * n)
    assert staleness.dtype == np.int32 and staleness.tolist() == [n - 1] * 200
    assert (summary["mean"], summary["std"], summary["min"], summary["max"]) == (n - 1, 0.0, n - 1, n - 1)
    assert summary["normal_fit"] == {"mu": n - 1, "sigma": 0.0}
    assert summary["expected_mean"] == n - 1
    assert summary["histogram"] == {"staleness": [n - 1], "count": [200]}
    assert (out / "histogram.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    stdout = capsys.readouterr().out
    assert "mean 4.000" in stdout and "N - 1 = 4" in stdout


def test_warmup_zero_keeps_the_start_up(tmp_path):
    # Every worker pulls version 0 at start-up: the first N arrivals have staleness 0, 1, ..., N - 1.
    _, staleness, _ = run_study(
        tmp_path, "--workers", "4", "--timing", "fixed", "--warmup", "0", "--arrivals", "9"
    )
    assert staleness.tolist() == [0, 1, 2, 3, 3, 3, 3, 3, 3]


def test_one_straggler_by_hand(tmp_path):
    # 4 workers, time 1, worker 3 takes 2 (ties: the earliest pull arrives first). From t = 2 on, a
    # period of 2 time units has 7 arrivals: at even t the straggler (6 arrivals since its pull at t-2)
    # then the 3 fast ones (3 each), at odd t the 3 fast ones (2 each). 700 arrivals = 100 periods.
    summary, _, _ = run_study(
        tmp_path,
        "--workers",
        "4",
        "--timing",
        "fixed",
        "--stragglers",
        "0.25",
        "--slowdown",
        "2",
        "--arrivals",
        "700",
    )
    assert summary["histogram"] == {"staleness": [2, 3, 4, 5, 6], "count": [300, 300, 0, 0, 100]}
    assert summary["timing"]["straggler_workers"] == 1
    assert summary["mean"] == pytest.approx(3.0)
    assert summary["std"] == pytest.approx(np.sqrt(12 / 7))


@pytest.mark.parametrize(
    "argv, draw, tol",
    [
        ([], truncated_normal, 0.15),
        (
            ["--timing", "uniform", "--low", "0.5", "--high", "1.5"],
            lambda r, s: r.uniform(0.5, 1.5, s),
            0.125,
        ),
    ],
    ids=["normal(1,0.2)", "uniform(0.5,1.5)"],
)
def test_random_times_match_an_independent_monte_carlo(tmp_path, argv, draw, tol):
    # N = 8, 4000 arrivals after the default warm-up (10 N). Mean: N jobs are always in flight and
    # every arrival ages the other N - 1 by one update, so mean = N - 1 + (S_first - S_last) / 4000
    # with S the total age of the jobs in flight (about N (N - 1) / 2 = 28, spread ~ N * std); 0.1
    # would need S to move by 400. Over 200 seeds of the reference the mean never left 7 ± 0.002.
    # Std: over 200 seeds of the reference the std of 4000 arrivals varies by 0.030 (normal) and
    # 0.025 (uniform); the tolerances are 5 of those.
    n = 8
    summary, staleness, _ = run_study(
        tmp_path, "--workers", str(n), "--arrivals", "4000", "--seed", "3", *argv
    )
    assert staleness.size == summary["arrivals"] == 4000
    assert abs(summary["mean"] - (n - 1)) < 0.1
    ref = [reference_staleness(n, draw, 10 * n, 4000, seed) for seed in range(20)]
    assert abs(np.mean([r.mean() for r in ref]) - (n - 1)) < 0.01
    assert summary["std"] == pytest.approx(np.mean([r.std() for r in ref]), abs=tol)
    assert summary["normal_fit"]["mu"] == pytest.approx(staleness.mean())
    assert summary["normal_fit"]["sigma"] == pytest.approx(staleness.std())


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--workers", "0"], "--workers (each value) must be >= 1"),
        (["--workers", "-3"], "--workers (each value) must be >= 1"),
        (["--sigma", "-0.1"], "--sigma must be >= 0"),
        (["--timing", "gamma"], "--timing: unknown 'gamma'; choose from fixed, normal"),
        (["--assignment", "lifo"], "--assignment: unknown 'lifo'"),
        (["--arrivals", "0"], "--arrivals must be >= 1"),
        (["--warmup", "-1"], "--warmup must be >= 0"),
        (["--mean", "0"], "--mean must be > 0"),
        (["--timing", "fixed", "--sigma", "0.3"], "--sigma applies only to --timing normal/lognormal (got fixed)"),
        (["--low", "0.5"], "--low applies only to --timing uniform (got normal)"),
        (["--timing", "uniform", "--low", "2", "--high", "1"], "--high must be >= --low"),
        (["--stragglers", "1.5"], "--stragglers must be <= 1"),
        (["--slowdown", "3"], "--slowdown applies only with --stragglers"),
    ],
)
def test_bad_input_one_line_error(tmp_path, capsys, argv, match):
    out = tmp_path / "out"
    assert main(["delay_distribution", "--out", str(out), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    assert err.startswith("python -m experiments delay_distribution: error: ")
    assert match in err
    assert not out.exists()  # stopped before simulating or writing anything


def test_unknown_option(capsys):
    with pytest.raises(SystemExit) as e:
        main(["delay_distribution", "--no-such-option", "1"])
    assert e.value.code == 2
    assert "unrecognized arguments: --no-such-option" in capsys.readouterr().err


# ---- N sweep: --preset quick|medium|paper, --workers-list ----------------------------------------------

RECORD_KEYS = SUMMARY_KEYS | {"config_id", "study", "skewness", "excess_kurtosis"}


def run_sweep(out, *argv):
    assert main(["delay_distribution", "--out", str(out), *argv]) == 0
    lines = (out / "results.jsonl").read_text().splitlines()
    return lines, [json.loads(line) for line in lines]


def test_sweep_writes_results_plots_report_and_reruns_safely(tmp_path, capsys):
    out = tmp_path / "sweep"
    # a quick-like sweep with tiny runs; N listed out of order: sorted
    lines, records = run_sweep(out, "--preset", "quick", "--workers", "3,2", "--arrivals", "200")
    assert [r["workers"] for r in records] == [2, 3]
    for r in records:
        assert RECORD_KEYS <= set(r)
        n = r["workers"]
        assert (r["arrivals"], r["warmup"], r["expected_mean"]) == (200, 10 * n, n - 1)
        assert r["timing"] == {"model": "normal", "mean": 1.0, "sigma": 0.2}
        assert sum(r["histogram"]["count"]) == 200
        assert abs(r["mean"] - (n - 1)) < 0.1  # N jobs in flight: the mean is N - 1 up to a boundary term
    for png in ("mean_vs_workers.png", "histograms.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    growth = dd.std_growth(records)
    assert growth["large"] is None and growth["all"]["workers"] == [2, 3]
    assert not (out / "staleness.npy").exists()  # kept for a single N only
    capsys.readouterr()

    # A rerun grown by one N simulates only that N and rewrites no line.
    grown, records = run_sweep(out, "--preset", "quick", "--workers", "2,3,5", "--arrivals", "200")
    assert "2 already in" in capsys.readouterr().out
    assert grown[:2] == lines and [r["workers"] for r in records] == [2, 3, 5]
    assert json.loads((out / "study.json").read_text())["settings"]["workers"] == [2, 3, 5]


def test_sweep_fixed_times_mean_exactly_n_minus_1(tmp_path):
    # Equal fixed times (hand-derived, as in test_fixed_times_end_to_end_spike_at_n_minus_1): after the
    # start-up every arrival has seen each of the other N - 1 workers arrive exactly once, so every N has
    # mean N - 1, std 0, min = max = N - 1. N = 1: always 0.
    out = tmp_path / "fixed"
    _, records = run_sweep(out, "--workers", "1,2,4", "--timing", "fixed", "--arrivals", "50")
    for r, n in zip(records, [1, 2, 4], strict=True):
        assert (r["workers"], r["mean"], r["std"], r["min"], r["max"]) == (n, n - 1, 0.0, n - 1, n - 1)
        assert r["histogram"] == {"staleness": [n - 1], "count": [50]}
        assert r["skewness"] is None and r["excess_kurtosis"] is None  # undefined without spread
    assert (out / "mean_vs_workers.png").exists() and (out / "histograms.png").exists()


def test_presets_n_and_run_lengths():
    assert dd.PRESETS["paper"]["workers"] == [2**k + 1 for k in range(9)]  # N - 1 = 1 ... 256
    paper = [dd.settings_of(dd.PRESETS["paper"], n) for n in dd.PRESETS["paper"]["workers"]]
    assert [(s["workers"], s["arrivals"], s["warmup"]) for s in paper][::4] == [
        (2, 20000, 20),
        (17, 20000, 170),
        (257, 25700, 2570),
    ]
    assert paper[0]["timing"] == {"model": "normal", "mean": 1.0, "sigma": 0.2}
    assert dd.settings_of(dd.PRESETS["medium"], 257)["arrivals"] == 12850 and len(dd.PRESETS["quick"]["workers"]) == 5
    assert dd.STUDY.default_preset == "single" and dd.PRESETS["single"]["workers"] == [16]


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--workers", "0,3"], "--workers (each value) must be >= 1, got 0"),
        (["--workers", "2,x"], "--workers (each value): 'x' is not an integer"),
        (["--workers", ","], "--workers needs at least one value"),
        (["--workers", "2,,4"], "has an empty item"),
        (["--workers", "2,4,2"], "'2' is given twice"),
        (["--preset", "quick", "--arrivals", "0"], "--arrivals must be >= 1"),
        (["--workers", "2", "--timing", "fixed", "--sigma", "0.1"], "--sigma applies only to"),
    ],
)
def test_sweep_bad_input_one_line_error(tmp_path, capsys, argv, match):
    out = tmp_path / "out"
    assert main(["delay_distribution", "--out", str(out), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    assert err.startswith("python -m experiments delay_distribution: error: ")
    assert match in err
    assert not out.exists()


def test_single_n_report(tmp_path):
    summary, _, out = run_study(tmp_path, "--workers", "3", "--timing", "fixed", "--arrivals", "30")
    assert (summary["mean"], summary["std"], summary["arrivals"]) == (2.0, 0.0, 30)
    assert summary["skewness"] is None  # std 0: no shape
    assert (out / "histogram.png").exists() and (out / "report.md").exists()
