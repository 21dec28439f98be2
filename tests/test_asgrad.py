"""`python -m experiments asgrad` (AsGrad, Islamov et al. 2024): the program against NumPy, end to end, bad input.

Independent references: pure ASGD with fixed compute times and synchronous SGD
re-simulated in plain NumPy (float64) from the method descriptions in
docs/methods.md (AsGrad's assignment rules; synchronous SGD), with the loss
gradient of tests/test_problems.py; no code shared with the event model.
"""

from __future__ import annotations

import heapq
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from sklearn.datasets import dump_svmlight_file

from experiments import asgrad
from experiments.__main__ import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPEEDS = [1.0, 1.37, 2.21]  # fixed times without near-ties over the horizon (checked below)


def np_grad(x, A, b, lam=0.1):
    """∇f of the mean logistic loss plus λ Σ x_j²/(1 + x_j²), by the chain rule (as in test_problems.py)."""
    z = b * (A @ x)
    return -(A.T @ (b / (1.0 + np.exp(z)))) / len(b) + lam * 2 * x / (1 + x * x) ** 2


def small_settings(**overrides):
    s = dict(asgrad.PRESETS["tiny"], workers=3, speeds=SPEEDS, timing="fixed", samples_per_worker=8, dim=5,
             iterations=60, evals=60, step_sizes=[0.5], seeds=[0], methods=["pure"])
    s.update(overrides)
    return asgrad.normalize_settings(s)


def np_full_grad(x, problem):
    A, b = problem["A"].astype(np.float64), problem["b"].astype(np.float64)
    return np.mean([np_grad(x, A[sh], b[sh]) for sh in problem["shards"]], axis=0)


def reference_pure(problem, speeds, step, calls):
    """Pure ASGD by an event queue: ||grad F|| and time after every call (0 .. calls)."""
    A, b = problem["A"].astype(np.float64), problem["b"].astype(np.float64)
    shards = problem["shards"]
    n = len(speeds)
    x = np.zeros(A.shape[1])
    local = lambda i, x: np_grad(x, A[shards[i]], b[shards[i]])
    queue = [(speeds[i], i, i, local(i, x)) for i in range(n)]  # (finish, dispatch order, worker, gradient)
    heapq.heapify(queue)
    seq, now = n, 0.0
    norms, times, finishes, counts = [np.linalg.norm(np_full_grad(x, problem))], [0.0], [], np.zeros(n, int)
    for c in range(calls):
        if c >= n - 1:  # from call n - 1 on, every call sees one arrival
            now, _, w, g = heapq.heappop(queue)
            finishes.append(now)
            counts[w] += 1
            x = x - step * g
            heapq.heappush(queue, (now + speeds[w], seq, w, local(w, x)))  # the same worker, its own data
            seq += 1
        norms.append(np.linalg.norm(np_full_grad(x, problem)))
        times.append(now)
    return np.array(norms), np.array(times), np.array(finishes), counts


def test_pure_asgd_matches_a_numpy_event_queue():
    s = small_settings()
    problem = asgrad.load_problem(s)
    (record,), _ = asgrad.run_method("pure", s, problem, asgrad.make_configs(s, "pure"))
    norms, times, finishes, counts = reference_pure(problem, SPEEDS, 0.5, s["iterations"])
    assert np.diff(np.unique(np.round(finishes, 9))).min() > 1e-3  # no near-tie that float32 could reorder
    assert record["calls"] == list(range(61))
    np.testing.assert_allclose(record["time"], times, rtol=1e-6)
    np.testing.assert_allclose(record["grad_norm"], norms, rtol=2e-4, atol=1e-6)
    assert record["updates_per_worker"] == counts.tolist()
    assert record["server_steps"][-1] == record["arrivals"] == 58 and record["discarded"] == 0


def test_ssgd_is_gradient_descent_on_F():
    s = small_settings(methods=["ssgd"], step_sizes=[0.5, 0.25])
    problem = asgrad.load_problem(s)
    records, _ = asgrad.run_method("ssgd", s, problem, asgrad.make_configs(s, "ssgd"))
    for r in records:
        x, norms = np.zeros(5), []
        for _ in range(21):
            norms.append(np.linalg.norm(np_full_grad(x, problem)))
            x = x - r["step_size"] * np_full_grad(x, problem)
        expected = [norms[j // 3] for j in range(61)]  # a step after every 3 calls (one per worker)
        np.testing.assert_allclose(r["grad_norm"], expected, rtol=2e-4, atol=1e-6)
        np.testing.assert_allclose(r["time"], [2.21 * (j // 3) for j in range(61)], rtol=1e-6)
        assert r["shares"] == [1 / 3] * 3 and r["staleness_histogram"] == {"staleness": [0], "count": [60]}


def test_tiny_preset_end_to_end(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "experiments", "asgrad", "--preset", "tiny", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    for name in ("grad_norm.png", "step_sizes.png", "shares.png", "staleness.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(records) == 7 * 2 * 1
    assert {r["method"] for r in records} == set(asgrad.METHODS)
    by = {(r["method"], r["step_size"]): r for r in records}
    for r in records:
        assert len(r["grad_norm"]) == len(r["time"]) == len(r["calls"]) == 21 and not r["diverged"]
        assert sum(r["shares"]) == pytest.approx(1.0)
        assert sum(r["updates_per_worker"]) == r["arrivals"] - r["discarded"] or r["method"] == "ssgd"
        assert sum(r["staleness_histogram"]["count"]) == r["arrivals"]
    n = 10
    pure, shuffle = by[("pure", 0.5)]["shares"], by[("shuffle", 0.5)]["shares"]
    assert pure[0] > 0.25 and pure[-1] < 0.06  # pure: the fastest worker dominates (law: 34 % and 3.4 %)
    assert max(abs(n * v - 1) for v in shuffle) < 0.25  # shuffle: about 1/n each, even in 191 arrivals
    assert by[("ssgd", 0.5)]["shares"] == [0.1] * n
    assert by[("ringmaster", 0.5)]["discarded"] > 0 and by[("rennala", 0.5)]["discarded"] > 0
    assert by[("pure", 0.5)]["staleness_histogram"] == by[("adaptive", 0.5)]["staleness_histogram"]
    report = (out / "report.md").read_text()
    assert "## Beside the papers" in report and "| shuffle |" in report and "1/s_i" in report
    study = json.loads((out / "study.json").read_text())
    assert study["settings"]["iterations"] == 200
    # a rerun skips every config and leaves results.jsonl as it was
    before = (out / "results.jsonl").read_bytes()
    assert main(["asgrad", "--preset", "tiny", "--out", str(out)]) == 0
    assert (out / "results.jsonl").read_bytes() == before


def test_libsvm_data_through_the_study(tmp_path, capsys):
    rng = np.random.default_rng(0)
    X = rng.random((40, 6)) * (rng.random((40, 6)) < 0.5)
    X[0, -1] = 1.0
    y = np.where(np.arange(40) < 25, -1.0, 1.0)  # sorted by label, like w7a: contiguous split is label-skewed
    path = tmp_path / "toy.svm"
    dump_svmlight_file(X, y, str(path), zero_based=False)
    out = tmp_path / "out"
    argv = ["asgrad", "--data", f"libsvm:{path}", "--workers", "4", "--methods", "pure,shuffle",
            "--iterations", "40", "--evals", "4", "--step-sizes", "0.5", "--out", str(out)]
    assert main(argv) == 0
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert {r["method"] for r in records} == {"pure", "shuffle"} and records[0]["data"] == f"libsvm:{path}"
    assert "40 samples, 6 features" in (out / "report.md").read_text()


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--methods", "pure,hogwild"], "--methods (each value): unknown 'hogwild'"),
        (["--iterations", "100", "--evals", "7"], "--evals must divide --iterations"),
        (["--speeds", "1,2"], "--speeds has 2 values for 10 workers"),
        (["--split", "sorted"], "--split: unknown 'sorted'"),
        (["--dirichlet-alpha", "0.5"], "--dirichlet-alpha applies only to --split dirichlet"),
        (["--split", "dirichlet", "--dirichlet-alpha", "0"], "--dirichlet-alpha must be > 0"),
        (["--data", "libsvm:/no/such/file"], "no such file /no/such/file"),
        (["--data", "synthetic:1"], "synthetic:<alpha>,<beta>"),
        (["--data", "csv:x"], "unknown source"),
        (["--timing", "fixed", "--sigma", "1"], "--sigma applies only to --timing normal/lognormal (got fixed)"),
        (["--step-sizes", "0.5,-1"], "--step-sizes (each value) must be > 0"),
        (["--step-sizes", "0.5,0.25,0.5"], "'0.5' is given twice"),
        (["--label-noise", "2"], "--label-noise must be <= 1"),
        (["--iterations", "5"], "--iterations must be >= --workers"),
    ],
)
def test_bad_input_is_one_line(tmp_path, capsys, argv, match):
    assert main(["asgrad", "--preset", "tiny", "--out", str(tmp_path / "o"), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert match in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "o").exists()  # checked before anything is written


def test_libsvm_only_options(tmp_path, capsys):
    path = tmp_path / "d.svm"
    path.write_text("1 1:1\n-1 2:1\n1 1:2\n-1 2:2\n")
    assert main(["asgrad", "--data", f"libsvm:{path}", "--dim", "3", "--out", str(tmp_path / "o")]) == 2
    assert "--dim applies only to synthetic data" in capsys.readouterr().err


@pytest.mark.parametrize("law", ["fixed", "exponential"])
def test_timing_laws_without_a_spread_run(tmp_path, law):
    out = tmp_path / law
    argv = ["asgrad", "--preset", "tiny", "--timing", law, "--methods", "pure", "--step-sizes", "0.5",
            "--out", str(out)]
    assert main(argv) == 0
    (r,) = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert r["timing"] == {"model": law} and r["arrivals"] > 0
    assert r["shares"][0] > r["shares"][-1]  # pure: the fastest worker (s_1 = 1) supplies the most updates


def test_seeds_in_sequence_and_vmapped_compute_the_same_runs():
    """make_program's two layouts (seeds by lax.map with a switch over shards; seeds vmapped with the shard
    indexed per call) give the same event traces and the same ||grad F|| up to float32 rounding."""
    import jax
    import jax.numpy as jnp

    s = small_settings(timing="normal", sigma=1.0, speeds=None, seeds=[0, 1, 2], step_sizes=[0.5, 0.125],
                       methods=["random"], iterations=40, evals=4)
    problem = asgrad.load_problem(s)
    args = (jnp.asarray(s["step_sizes"], jnp.float32), jnp.asarray(s["seeds"], jnp.int32))
    seq, vm = (jax.tree.map(np.asarray, asgrad.make_program("random", s, problem, flag)(*args)) for flag in (True, False))
    norm0, norms, times, versions, trace = seq
    assert norms.shape == (3, 2, 4)
    assert not np.array_equal(trace[0][0, 0], trace[0][1, 0])  # the seeds dispatch different workers
    np.testing.assert_allclose(norm0, vm[0], rtol=1e-6)
    np.testing.assert_allclose(norms, vm[1], rtol=1e-5)
    for a, b in zip([times, versions, *trace], [vm[2], vm[3], *vm[4]]):
        if np.issubdtype(a.dtype, np.floating):  # simulated times: sums of sampled durations, float32 rounding
            np.testing.assert_allclose(a, b, rtol=1e-6)
        else:  # versions, worker ids, delays: exactly equal
            np.testing.assert_array_equal(a, b)


_TWO_DEVICES = """
import json, sys
import jax
jax.config.update("jax_num_cpu_devices", 2)
import jax.numpy as jnp, numpy as np
sys.path.insert(0, {root!r})
from experiments import asgrad
from tests.test_asgrad import small_settings

s = small_settings(timing="normal", sigma=1.0, speeds=None, seeds=[0, 1, 2], step_sizes=[0.5, 0.25, 0.125],
                   methods=["random"], iterations=40, evals=4)
problem = asgrad.load_problem(s)
args = (jnp.asarray(s["step_sizes"], jnp.float32), jnp.asarray(s["seeds"], jnp.int32))
split = asgrad.make_program("random", s, problem, True)(*args)     # seeds in sequence, split over 2 devices
devices = len(split[1].sharding.device_set)
vm = asgrad.make_program("random", s, problem, False)(*args)       # seeds vmapped, one device
print(json.dumps({{"devices": jax.device_count(), "split_over": devices,
                  "split": jax.tree.map(lambda a: np.asarray(a).tolist(), split),
                  "vmapped": jax.tree.map(lambda a: np.asarray(a).tolist(), vm)}}))
"""


def test_seeds_split_over_devices_compute_the_same_runs():
    """With several devices (python -m experiments: one per CPU core) the runs are split over them: of 3 seeds on 2
    devices, seeds 0 and 1 whole (one per device) and seed 2's 3 step sizes padded to 4 and split 2 + 2, the
    padding dropped: the same traces and ||grad F|| as the one-device vmapped layout."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, "-c", _TWO_DEVICES.format(root=root)], cwd=root, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["devices"] == 2 and out["split_over"] == 2
    split, vm = out["split"], out["vmapped"]
    np.testing.assert_allclose(split[0], vm[0], rtol=1e-6)
    np.testing.assert_allclose(split[1], vm[1], rtol=1e-5)
    assert np.asarray(split[1]).shape == (3, 3, 4)
    np.testing.assert_allclose(split[2], vm[2], rtol=1e-6)                 # simulated times
    for a, b in zip([split[3], *split[4]], [vm[3], *vm[4]]):               # versions, workers, delays: exact
        np.testing.assert_array_equal(a, b)
