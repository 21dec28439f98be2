"""Tests of the heavy-tailed, time-varying and budgeted compute-time models (asgd_jax.timing).

Independent references: finish times worked by hand; a float64 NumPy integrator of the speed
profile that walks the segments one by one (written from the universal computation model: a job of
work W started at t0 ends when the integral of the speed from t0 reaches W), not from the library's
closed form; closed-form Pareto moments and tail; for budgets, attempt sequences worked by hand and
the renewal formula E = t(1 - p)/p + E[T | T <= t]. Times are dyadic so float32 clocks are exact.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import asgd_jax
from asgd_jax import network, timing

KEY = jax.random.key(0)


def finish_ref(t0, work, breakpoints, speeds, period=math.inf):
    """Walks the profile segment by segment in float64 until the work is done."""
    b, v = np.asarray(breakpoints, np.float64), np.asarray(speeds, np.float64)
    t, left = float(t0), float(work)
    while left > 0:
        m = math.floor(t / period) if math.isfinite(period) else 0
        s = t - m * period if math.isfinite(period) else t
        k = int(np.searchsorted(b, s, side="right") - 1)
        end = b[k + 1] if k + 1 < len(b) else (period if math.isfinite(period) else math.inf)
        end_abs = m * period + end if math.isfinite(period) else end
        if v[k] > 0 and v[k] * (end_abs - t) >= left:
            return t + left / v[k]
        left -= v[k] * (end_abs - t)
        t = end_abs
    return t


def _finish(model, worker, now, num_workers=1):
    return float(now + model.sample_at(KEY, jnp.int32(worker), num_workers, jnp.float32(now)))


# --- Pareto ----------------------------------------------------------------------------------------------


def test_pareto_minimum_mean_and_tail():
    model = timing.pareto(scale=0.5, alpha=3.0)
    t = np.asarray(model.sample(KEY, jnp.zeros(200_000, jnp.int32)), np.float64)
    assert t.min() >= 0.5
    np.testing.assert_allclose(t.mean(), 0.75, rtol=0.02)                 # alpha s / (alpha - 1)
    for x in (1.0, 2.0):
        np.testing.assert_allclose((t > x).mean(), (0.5 / x) ** 3, atol=4e-3)  # P(T > x) = (s/x)^alpha
    assert float(model.expected(0)) == 0.75
    assert float(timing.pareto(1.0, 1.0).expected(0)) == math.inf       # infinite mean for alpha <= 1


def test_pareto_is_traced_and_vmappable():
    means = jax.vmap(lambda a: timing.pareto(1.0, a).sample(KEY, jnp.zeros(50_000, jnp.int32)).mean())(
        jnp.array([2.5, 4.0]))
    np.testing.assert_allclose(means, [2.5 / 1.5, 4.0 / 3.0], rtol=0.05)


# --- time-varying speeds -----------------------------------------------------------------------------------


PROFILE = dict(breakpoints=[0.0, 2.0, 3.0, 6.0], speeds=[1.0, 0.0, 0.5, 2.0])


@pytest.mark.parametrize("now,work", [(0.0, 1.0), (1.0, 2.0), (2.5, 1.0), (0.0, 6.0), (5.0, 0.5), (7.0, 3.0)])
def test_piecewise_finish_times_by_hand_and_by_integration(now, work):
    model = timing.piecewise_speed(work, **PROFILE)
    got = _finish(model, 0, now)
    assert got == finish_ref(now, work, PROFILE["breakpoints"], PROFILE["speeds"])
    # by hand for two of them: from 1, one unit by 2, nothing in [2, 3), one unit at 1/2 by 5
    if (now, work) == (1.0, 2.0):
        assert got == 5.0
    if (now, work) == (0.0, 6.0):                   # 2 by t=2, 1.5 by t=6, 2.5 at speed 2: 7.25
        assert got == 7.25


@pytest.mark.parametrize("now,work", [(0.0, 1.0), (1.0, 2.0), (3.5, 5.0), (9.0, 0.25), (4.0, 1.5), (2.0, 1.5)])
def test_periodic_finish_times_match_the_integrator(now, work):
    model = timing.periodic_speed(work, period=4.0, speeds=[1.0, 0.0, 0.5, 2.0])
    ref = finish_ref(now, work, [0.0, 1.0, 2.0, 3.0], [1.0, 0.0, 0.5, 2.0], period=4.0)
    assert _finish(model, 0, now) == ref


def test_per_worker_rows_and_a_worker_array():
    speeds = jnp.array([[1.0, 0.5], [0.25, 4.0]])
    model = timing.piecewise_speed(timing.per_worker(1.0, jnp.array([1.0, 2.0])), [0.0, 4.0], speeds)
    t = model.sample_at(KEY, jnp.arange(2), 2, jnp.float32(3.0))
    # worker 0: work 1 from 3: 1 by 4 at speed 1 -> 1; worker 1: work 2: 0.25 by 4, then 1.75 at 4 -> 4.4375
    np.testing.assert_array_equal(np.asarray(t) + 3.0, [4.0, 4.4375])
    assert [finish_ref(3.0, w, [0, 4], s) for w, s in zip([1.0, 2.0], speeds.tolist())] == [4.0, 4.4375]


def test_random_walk_speeds_follow_the_integrator():
    model = timing.random_walk_speed(1.5, key=3, num_steps=16, step=0.5, sigma=0.4, workers=3)
    v = np.asarray(model.speeds, np.float64)
    np.testing.assert_allclose(np.diff(np.log(v), axis=1).std(), 0.4, rtol=0.35)
    for w in range(3):
        for now in (0.0, 1.25, 7.5, 9.0):
            np.testing.assert_allclose(_finish(model, w, now, 3), finish_ref(now, 1.5, np.arange(16) * 0.5, v[w]),
                                       rtol=1e-5)


def test_time_varying_runs_in_the_event_model_and_vmaps_over_speeds():
    """One worker, work 1, speed 1 until 2 then s: arrivals at 1, 2, then every 1/s (simulate_staleness)."""

    def times(s):
        model = timing.piecewise_speed(1.0, jnp.array([0.0, 2.0]), jnp.stack([jnp.float32(1.0), s]))
        return asgd_jax.simulate_staleness(1, model, 5).time

    out = jax.jit(jax.vmap(times))(jnp.array([0.5, 2.0]))
    np.testing.assert_array_equal(out, [[1.0, 2.0, 4.0, 6.0, 8.0], [1.0, 2.0, 2.5, 3.0, 3.5]])


def test_failing_composes_with_time_varying_speeds():
    """Speed 2 after t = 2; worker 0 down during [2.5, 6): a job started at 2 (done at 2.5 + ...) is lost."""
    speeds = timing.piecewise_speed(1.0, [0.0, 2.0], [1.0, 2.0])
    model = timing.failing(speeds, worker=0, fail_at=2.25, return_at=6.0)
    assert _finish(model, 0, 2.0) == 6.5                    # lost at 2.25 (would end 2.5), redone from 6
    assert _finish(model, 0, 1.0) == 2.0                    # ends at 2 <= 2.25
    assert _finish(model, 1, 2.0) == 2.5                    # another worker is unaffected


def test_network_composes_with_time_varying_speeds():
    """Zero latency and unlimited bandwidth: the same clock as without a network (one compiled program)."""
    speeds = timing.piecewise_speed(timing.per_worker(1.0, jnp.array([1.0, 2.0, 3.0])), [0.0, 4.0], [1.0, 0.5])

    def run(net):
        tx = asgd_jax.asynchronous(optax.sgd(0.1), 3, timing=speeds, network=net)
        s = tx.init(jnp.zeros(2))
        for _ in range(12):
            _, s = tx.update(jnp.ones(2), s)
        return float(s.time), int(s.last_worker)

    assert run(None) == run(network.network(latency=0.0, bandwidth=float("inf")))


# --- budgets (timeout and resend until success; MindFlayer SGD itself is in test_frontier_methods) -------


class _Attempts(timing.TimingModel):
    """Attempt ``j`` of every job takes ``seq[j]`` (for hand-worked budgets)."""

    is_random = False

    def __init__(self, seq):
        self.seq = seq

    def sample(self, key, worker, num_workers=1):
        seq = jnp.asarray(self.seq + [0.5] * 64, jnp.float32)[: jnp.shape(worker)[0]]
        return jnp.broadcast_to(seq.reshape((-1,) + (1,) * (jnp.ndim(worker) - 1)), jnp.shape(worker))


def test_budgeted_attempts_by_hand():
    # budget 2: 5 and 3 are abandoned at 2 each, 1.5 succeeds: 2 + 2 + 1.5
    assert float(timing.budgeted(_Attempts([5.0, 3.0, 1.5]), 2.0).sample(KEY, jnp.int32(0))) == 5.5
    assert float(timing.budgeted(_Attempts([1.75]), 2.0).sample(KEY, jnp.int32(0))) == 1.75
    # a fixed time over the budget never finishes; per-worker budgets
    t = timing.budgeted(timing.fixed(3.0), jnp.array([2.0, 4.0])).sample(KEY, jnp.arange(2))
    assert t.tolist() == [math.inf, 3.0]
    assert float(timing.budgeted(_Attempts([5.0] * 3), 2.0, attempts=3).sample(KEY, jnp.int32(0))) == math.inf


def test_budgeted_mean_is_the_renewal_formula():
    """Exponential(1) attempts, budget t: E = t (1 - p)/p + E[T | T <= t], p = 1 - e^-t."""
    b = 1.0
    model = timing.budgeted(timing.exponential(1.0), b)
    t = np.asarray(model.sample(KEY, jnp.zeros(100_000, jnp.int32)), np.float64)
    p = 1 - math.exp(-b)
    cond = (1 - math.exp(-b) * (1 + b)) / p
    ref = b * (1 - p) / p + cond
    np.testing.assert_allclose(t.mean(), ref, rtol=0.01)
    np.testing.assert_allclose(float(model.expected(0)), ref, rtol=0.05)
    assert t.max() <= 64 * b


# --- composition rules and errors --------------------------------------------------------------------------


@pytest.mark.parametrize("make,match", [
    (lambda: timing.pareto(0.0, 2.0), r"pareto\(scale\) must be > 0"),
    (lambda: timing.pareto(1.0, -1.0), r"pareto\(alpha\) must be > 0"),
    (lambda: timing.piecewise_speed(1.0, [1.0, 2.0], [1.0, 1.0]), "starting at 0"),
    (lambda: timing.piecewise_speed(1.0, [0.0, 2.0, 1.0], [1.0, 1.0, 1.0]), "increasing"),
    (lambda: timing.piecewise_speed(1.0, [0.0, 2.0], [1.0]), "one speed per segment"),
    (lambda: timing.piecewise_speed(1.0, [0.0, 2.0], [1.0, -1.0]), r"speeds\) must be >= 0"),
    (lambda: timing.piecewise_speed(1.0, [0.0, 2.0], [1.0, 0.0]), "last speed must be > 0"),
    (lambda: timing.piecewise_speed(1.0, [0.0, 2.0], [1.0, 1.0], period=1.0), "past the last breakpoint"),
    (lambda: timing.periodic_speed(1.0, 4.0, [0.0, 0.0]), "positive speed somewhere"),
    (lambda: timing.periodic_speed(1.0, -4.0, [1.0]), r"period\) must be > 0"),
    (lambda: timing.random_walk_speed(1.0, 0, num_steps=0), "num_steps"),
    (lambda: timing.budgeted(1.0, 0.0), r"budget\) must be > 0"),
    (lambda: timing.per_worker(timing.failing(1.0, 0, 1.0), [1.0]), "depends on the clock"),
    (lambda: timing.stragglers(timing.periodic_speed(1.0, 4.0, [1.0]), 0.5, 2.0), "depends on the clock"),
    (lambda: timing.budgeted(timing.periodic_speed(1.0, 4.0, [1.0]), 2.0), "depends on the clock"),
])
def test_bad_values_are_one_line_errors(make, match):
    with pytest.raises(ValueError, match=match) as err:
        make()
    assert "\n" not in str(err.value)


def test_per_worker_rows_must_cover_the_workers():
    model = timing.piecewise_speed(1.0, [0.0, 1.0], jnp.ones((2, 2)))
    with pytest.raises(ValueError, match="2 rows for 3 workers"):
        asgd_jax.events.init(3, timing=model)
    with pytest.raises(ValueError, match="one per worker"):
        asgd_jax.events.init(3, timing=timing.budgeted(1.0, jnp.ones(2)))


def test_failing_forever_around_time_varying_speeds_is_inf_not_nan():
    """A worker that never returns has an infinite job also when the base's speed depends on the clock (the redo
    at t = inf is never evaluated into the result)."""
    model = timing.failing(timing.periodic_speed(1.0, 4.0, [1.0, 0.5]), worker=0, fail_at=0.5)
    t = model.sample_at(jax.random.key(0), jnp.arange(2), 2, 0.0)
    assert np.isinf(float(t[0])) and float(t[1]) == 1.0
    back = timing.failing(timing.periodic_speed(1.0, 4.0, [1.0, 0.5]), worker=0, fail_at=0.5, return_at=3.0)
    # lost at 0.5, redone from 3: half a unit of work at speed 1/2 by 4, the other half at speed 1 by 4.5
    assert float(back.sample_at(jax.random.key(0), jnp.arange(1), 2, 0.0)[0]) == 4.5
