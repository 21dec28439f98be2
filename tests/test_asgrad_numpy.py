"""The NumPy re-implementation of AsGrad's loop: its gradient against asgd_jax's, its iterates and delays
against hand-derived sequences, and the speed comparison on a tiny problem."""

import numpy as np
import pytest

from asgd_jax import problems
from experiments import asgrad_numpy

LAM = 0.1


def _data(n=3, m=4, d=5, seed=0):
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((n * m, d))
    b = np.where(rng.random(n * m) < 0.5, -1.0, 1.0)
    return A, b


def _plain_gradient(x, A, b):
    """-(1/m) sum_k b_k a_k sigmoid(-b_k a_k'x) + lam * 2x / (1 + x^2)^2, written out row by row."""
    g = np.zeros_like(x)
    for a, y in zip(A, b):
        g -= y * a / (1.0 + np.exp(y * (a @ x)))
    return g / len(b) + LAM * 2 * x / (1 + x * x) ** 2


@pytest.mark.parametrize("copy_rows", [True, False])
def test_gradients_equal_asgd_jax_logistic_gradient(copy_rows):
    n, m = 3, 4
    A, b = _data(n, m)
    oracle = asgrad_numpy.LogReg(A, b, n, m, LAM, copy_rows=copy_rows)
    x = np.random.default_rng(1).standard_normal(A.shape[1])
    for i in range(n):
        rows = slice(i * m, (i + 1) * m)
        expected = problems.logistic_gradient(x.astype(np.float32), A[rows].astype(np.float32),
                                              b[rows].astype(np.float32), LAM)
        np.testing.assert_allclose(oracle.local_gradient(x, i), np.asarray(expected), rtol=1e-5, atol=1e-6)
    full = problems.logistic_gradient(x.astype(np.float32), A.astype(np.float32), b.astype(np.float32), LAM)
    np.testing.assert_allclose(oracle.full_gradient(x), np.asarray(full), rtol=1e-5, atol=1e-6)


def test_iterates_and_delays_hand_derived_with_fixed_times():
    # Two workers, fixed times 1 and 2 ticks. Initial jobs g0(x0), g1(x0), times left [1, 2].
    # it 0: tick -> [0, 1]; worker 0 (delay 0 - 0 = 0): x1 = x0 - lr g0(x0); worker 0 computes g0(x1), stamp 0.
    # it 1: tick -> [0, 0]; worker 0 (argmin: lowest id; delay 1 - 0 = 1): x2 = x1 - lr g0(x1); g0(x2), stamp 1.
    # it 2: worker 1 already at 0 (delay 2 - 0 = 2): x3 = x2 - lr g1(x0); g1(x3), stamp 2; times [1, 2].
    # it 3: tick -> [0, 1]; worker 0 (delay 3 - 1 = 2): x4 = x3 - lr g0(x2).
    n, m, lr = 2, 4, 0.3
    A, b = _data(n, m, d=3)
    g0 = lambda x: _plain_gradient(x, A[:m], b[:m])
    g1 = lambda x: _plain_gradient(x, A[m:], b[m:])
    x0 = np.array([0.5, -1.0, 2.0])
    x1 = x0 - lr * g0(x0)
    x2 = x1 - lr * g0(x1)
    x3 = x2 - lr * g1(x0)
    x4 = x3 - lr * g0(x2)
    nodes = asgrad_numpy.Nodes([1, 2], asgrad_numpy.LogReg(A, b, n, m, LAM), delay_type="fixed")
    out = asgrad_numpy.run_optimizer(x0, nodes, lr, 4, eval_every=2)
    assert out["delays"] == [0, 1, 2, 2]
    assert out["workers"] == [0, 0, 1, 0]
    np.testing.assert_allclose(out["x"], x4, rtol=1e-12)
    full = lambda x: (_plain_gradient(x, A[:m], b[:m]) + _plain_gradient(x, A[m:], b[m:])) / 2
    np.testing.assert_allclose(out["grad_norms"], [np.linalg.norm(full(x)) for x in (x0, x2, x4)], rtol=1e-12)


def test_equal_fixed_times_cycle_through_the_workers():
    # n workers with equal fixed times: round robin in id order; a job's delay counts the iterations since
    # it was handed out, n once every worker has had a second job.
    n = 3
    A, b = _data(n, 2, d=2)
    nodes = asgrad_numpy.Nodes([1, 1, 1], asgrad_numpy.LogReg(A, b, n, 2, LAM), delay_type="fixed")
    out = asgrad_numpy.run_optimizer(np.zeros(2), nodes, 0.1, 9)
    assert out["workers"] == [0, 1, 2] * 3
    assert out["delays"] == [0, 1, 2] + [3] * 6


def test_normal_times_are_positive_and_favour_fast_workers():
    A, b = _data(4, 3, d=2)
    nodes = asgrad_numpy.Nodes([1, 2, 3, 4], asgrad_numpy.LogReg(A, b, 4, 3, LAM))
    out = asgrad_numpy.run_optimizer(np.zeros(2), nodes, 0.1, 400)
    counts = np.bincount(out["workers"], minlength=4)
    assert counts[0] > counts[1] > counts[3] > 0 and min(out["delays"]) >= 0
    with pytest.raises(ValueError, match="delay_type"):
        asgrad_numpy.Nodes([1], asgrad_numpy.LogReg(A[:3], b[:3], 1, 3, LAM), delay_type="poisson")


def test_compare_on_a_tiny_problem():
    r = asgrad_numpy.compare(iterations=20, numpy_iterations=5, rounds=1, samples_per_worker=10, dim=4, workers=3,
                             seeds=(0, 1), step_sizes=[0.5, 0.25], pause=0.0)
    assert r["runs"] == 4 and r["iterations"] == 20 and r["workers"] == 3 and r["dim"] == 4
    for k in ("jax_run_iterations_per_s", "numpy_run_iterations_per_s", "numpy_view_run_iterations_per_s"):
        assert r[k] > 0
    assert r["ratio"] == pytest.approx(r["jax_run_iterations_per_s"] / r["numpy_run_iterations_per_s"])
    assert r["jax_run_iterations_per_s"] == pytest.approx(4 * 20 / r["jax_best_s"])
    assert r["numpy_run_iterations_per_s"] == pytest.approx((3 + 5) / r["numpy_best_s"])
    with pytest.raises(ValueError, match="multiple of 100"):
        asgrad_numpy.compare(iterations=150)
