"""Tests of the newest methods: Ringmaster with stops, Naive Optimal ASGD (fastest m*), Malenia SGD,
Ringleader ASGD, Rescaled ASGD and MindFlayer SGD's budgets, through asgd_jax.parameter_server/asynchronous.

Independent reference: a float64 NumPy event simulation written here from the method descriptions in
docs/methods.md (pure rule: the worker that finishes, or that was stopped, restarts at the current
point; ties go to the earlier dispatch), with each server rule as plain NumPy: Malenia's per-worker sums
and harmonic-mean condition, Ringleader's table/buffer/rounds, Rescaled's tau_i / harmonic-mean factor,
Ringmaster's stops. The problem is the heterogeneous quadratic of test_simulator (worker i minimises
1/2 w'A_i w - b_i'w); compute times are dyadic so float32 clocks tie the same way as float64.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import asgd_jax
from asgd_jax import rules, timing

from test_simulator import DIM, W0, grad_np, run, run_vmapped

TIMES4 = [1.0, 1.25, 2.5, 6.0]
LR = 0.05


def reference(times, calls, server, *, m=None, stop=None):
    """Call-by-call simulation of the event model with the pure rule (float64).

    ``server(g, worker, staleness, n)`` returns the step (or None) and ``stop`` is ``R`` for Ringmaster's
    stops. Returns the parameters after each call and the arrivals (worker, time, staleness).
    """
    n = len(times) if m is None else m
    w, version, now, seq = W0.astype(np.float64), 0, 0.0, 0
    jobs, idle, traj, arrivals = {}, list(range(n)), [], []   # jobs: worker -> (finish, seq, version, grad)
    for _ in range(calls):
        i = min(idle)
        idle.remove(i)
        jobs[i] = (now + times[i], seq, version, grad_np(w, i))
        seq += 1
        if len(jobs) == n:
            j = min(jobs, key=lambda k: jobs[k][:2])
            finish, _, v, g = jobs.pop(j)
            now, tau = finish, version - v
            arrivals.append((j, now, tau))
            step = server(g, j, tau, n)
            if step is not None:
                w, version = w - LR * step, version + 1
            idle.append(j)
            if stop is not None:
                for k in [k for k in jobs if version - jobs[k][2] > stop]:
                    del jobs[k]
                    idle.append(k)
        traj.append(w.copy())
    return np.array(traj), arrivals


def arrivals_of(tr):
    new = np.diff(np.concatenate([[0], tr["arrivals"]])) > 0
    return list(zip(tr["last_worker"][new].tolist(), tr["time"][new].tolist(), tr["staleness"][new].tolist()))


def check(tx, times, calls, server, **kwargs):
    _, s, tr = run(tx, calls)
    traj, arrivals = reference(times, calls, server, **kwargs)
    assert arrivals_of(tr) == arrivals
    np.testing.assert_allclose(tr["w"], traj, rtol=2e-5, atol=2e-6)
    return s, tr


def plain(g, worker, tau, n):
    return g


def drop_above(r):
    return lambda g, worker, tau, n: g if tau <= r else None


# --- Ringmaster ASGD with calculation stops -----------------------------------------------------------------


def test_ringmaster_stops_match_the_reference_and_never_deliver_stale_gradients():
    speeds = timing.per_worker(1.0, jnp.array(TIMES4))
    tx = asgd_jax.asynchronous(optax.sgd(LR), 4, timing=speeds, max_staleness=2, stop_stale=True)
    s, tr = check(tx, TIMES4, 60, drop_above(2), stop=2)
    assert tr["staleness"].max() <= 2 and int(s.discarded) == 0
    stopped = int(s.dispatched) - int(s.arrivals) - int(s.events.in_flight)
    assert stopped > 0                                # worker 3 (time 6) is stopped again and again
    # without stops the same R drops gradients after they were computed
    _, s2, _ = run(asgd_jax.asynchronous(optax.sgd(LR), 4, timing=speeds, max_staleness=2), 60)
    assert int(s2.discarded) > 0


def test_ringmaster_stops_vmap_over_r():
    speeds = timing.per_worker(1.0, jnp.array(TIMES4))
    make = lambda r: asgd_jax.parameter_server(rules.drop_stale(optax.sgd(LR), r), 4, timing=speeds,
                                               stop_stale=True)
    w, _, _ = run_vmapped(make, jnp.array([1, 3]), 40)
    for k, r in enumerate([1, 3]):
        np.testing.assert_allclose(w[k], reference(TIMES4, 40, drop_above(r), stop=r)[0][-1], rtol=2e-5)


# --- Naive Optimal ASGD ---------------------------------------------------------------------------------


def test_fastest_m_workers_match_the_reference_and_vmap_over_m():
    speeds = timing.per_worker(1.0, jnp.array(TIMES4))
    make = lambda m: asgd_jax.asynchronous(optax.sgd(LR), 4, timing=speeds, fastest=m)
    w, _, tr = run_vmapped(make, jnp.array([1, 2, 3]), 30)
    for k, m in enumerate([1, 2, 3]):
        traj, arrivals = reference(TIMES4, 30, plain, m=m)
        np.testing.assert_allclose(tr["w"][k], traj, rtol=2e-5, atol=2e-6)
        assert set(tr["worker"][k].tolist()) == set(range(m))


def test_optimal_workers_is_the_argmin_of_the_time_bound():
    rng = np.random.default_rng(0)
    for _ in range(20):
        times = rng.choice([0.5, 1.0, 2.0, 4.0, 8.0, 64.0], size=6)
        sigma2, eps = float(rng.choice([0.0, 1.0, 8.0, 64.0])), 1.0
        tau = np.sort(times)
        bounds = [(1 / np.mean(1 / tau[:m])) * (1 + sigma2 / (m * eps)) for m in range(1, 7)]
        assert int(asgd_jax.optimal_workers(times, sigma2, eps)) == int(np.argmin(bounds)) + 1
    # no noise: one fastest worker; huge noise: all workers
    assert int(asgd_jax.optimal_workers(jnp.array([1.0, 2.0, 4.0]), 0.0, 1.0)) == 1
    assert int(asgd_jax.optimal_workers(jnp.array([1.0, 2.0, 4.0]), 1e6, 1.0)) == 3


# --- Malenia SGD -----------------------------------------------------------------------------------------


def malenia_ref(batch=None):
    sums, counts = {}, {}

    def server(g, worker, tau, n):
        if tau > 0:
            return None
        sums[worker] = sums.get(worker, 0) + g
        counts[worker] = counts.get(worker, 0) + 1
        s = n if batch is None else batch
        if len(counts) < n or s * sum(1 / counts[i] for i in range(n)) > n * n * (1 + 1e-6):
            return None
        step = sum(sums[i] / counts[i] for i in range(n)) / n
        sums.clear()
        counts.clear()
        return step

    return server


@pytest.mark.parametrize("batch", [None, 6.0])
def test_malenia_matches_the_reference(batch):
    times = [1.0, 1.5, 4.0]
    tx = asgd_jax.parameter_server(rules.malenia(optax.sgd(LR), 3, batch), 3,
                                   timing=timing.per_worker(1.0, jnp.array(times)))
    s, tr = check(tx, times, 60, malenia_ref(batch))
    assert int(s.version) > 3 and int(s.discarded) > 0


def test_malenia_weights_workers_equally():
    """Long run on worker i's loss 1/2 (w - c_i)^2 (no noise): Malenia's fixed point is the mean of c_i,
    while plain ASGD's is weighted towards the fast worker."""
    c = jnp.array([0.0, 1.0, 8.0])
    speeds = timing.per_worker(1.0, jnp.array([1.0, 2.0, 8.0]))

    def final(server):
        tx = asgd_jax.parameter_server(server, 3, timing=speeds)
        w, _, _ = run(tx, 3000, w0=jnp.zeros(DIM), grad_fn=lambda w, i: w - c[i])
        return float(w[0])

    assert abs(final(rules.malenia(optax.sgd(0.5), 3)) - 3.0) < 1e-3
    assert final(optax.sgd(0.05)) < 2.0


# --- Ringleader ASGD -------------------------------------------------------------------------------------


def ringleader_ref():
    table, buf, cnt, filled, updated = {}, {}, {}, set(), set()

    def server(g, worker, tau, n):
        full = len(filled) == n
        buf[worker] = buf.get(worker, 0) + g
        cnt[worker] = cnt.get(worker, 0) + 1
        if worker in updated or (worker in filled and not full):
            return None                                   # buffered
        table[worker] = buf.pop(worker) / cnt.pop(worker)
        filled.add(worker)
        if len(filled) < n:
            return None
        updated.add(worker)
        if len(updated) == n:
            updated.clear()
        return sum(table[i] for i in range(n)) / n

    return server


def test_ringleader_matches_the_reference_and_bounds_the_delay():
    times = [1.0, 1.25, 2.5, 6.0]
    tx = asgd_jax.parameter_server(rules.ringleader(optax.sgd(LR), 4), 4,
                                   timing=timing.per_worker(1.0, jnp.array(times)))
    s, tr = check(tx, times, 80, ringleader_ref())
    assert tr["staleness"].max() <= 2 * 4 - 2           # the paper's bound 2n - 2
    assert int(s.discarded) == 0


def test_ringleader_weights_workers_equally():
    c = jnp.array([0.0, 1.0, 8.0])
    tx = asgd_jax.parameter_server(rules.ringleader(optax.sgd(0.2), 3), 3,
                                   timing=timing.per_worker(1.0, jnp.array([1.0, 2.0, 8.0])))
    w, _, _ = run(tx, 3000, w0=jnp.zeros(DIM), grad_fn=lambda w, i: w - c[i])
    assert abs(float(w[0]) - 3.0) < 1e-3


# --- Rescaled ASGD -----------------------------------------------------------------------------------------


def test_rescaled_matches_the_reference_and_vmaps_over_times():
    def make(times):
        server = optax.chain(rules.scale_by_compute_time(times), optax.sgd(LR))
        return asgd_jax.parameter_server(server, 4, timing=timing.per_worker(1.0, times))

    grid = jnp.array([TIMES4, [1.0, 1.0, 2.0, 4.0]])
    w, _, tr = run_vmapped(make, grid, 40)
    for k, times in enumerate(grid.tolist()):
        hmean = len(times) / sum(1 / t for t in times)
        traj, _ = reference(times, 40, lambda g, worker, tau, n: g * times[worker] / hmean)
        np.testing.assert_allclose(tr["w"][k], traj, rtol=2e-5, atol=2e-6)


def test_rescaled_removes_the_bias_towards_fast_workers():
    """Mean of the tail of w on 1/2 (w - c_i)^2 with times 1, 2, 3: about the mean of c (2), not 1.64."""
    c, times = jnp.array([1.0, 2.0, 3.0]), jnp.array([1.0, 2.0, 3.0])
    server = optax.chain(rules.scale_by_compute_time(times), optax.sgd(0.02))
    tx = asgd_jax.parameter_server(server, 3, timing=timing.per_worker(1.0, times))
    _, _, tr = run(tx, 1200, w0=jnp.zeros(DIM), grad_fn=lambda w, i: w - c[i])
    assert abs(tr["w"][600:, 0].mean() - 2.0) < 0.02


# --- MindFlayer SGD: budgets with Rennala's server --------------------------------------------------------


def rennala_ref(batch):
    acc = []

    def server(g, worker, tau, n):
        if tau > 0:
            return None
        acc.append(g)
        if len(acc) < batch:
            return None
        step = sum(acc) / batch
        acc.clear()
        return step

    return server


class _TwoAttempts(timing.TimingModel):
    """Worker 0's attempts take 1; worker 1's take 3 then 1.5 (then 1.5 ...)."""

    is_random = False

    def sample(self, key, worker, num_workers=1):
        first = jnp.arange(jnp.shape(worker)[0]).reshape((-1,) + (1,) * (jnp.ndim(worker) - 1)) == 0
        return jnp.where(jnp.asarray(worker) == 0, 1.0, jnp.where(first, 3.0, 1.5)).astype(jnp.float32)


jax.tree_util.register_pytree_node(_TwoAttempts, lambda m: ((), None), lambda _, __: _TwoAttempts())


def test_mindflayer_budget_restarts_with_rennalas_server():
    """Budget 2: worker 1's first attempt (3) is abandoned at 2 and the next (1.5) succeeds: jobs take 3.5."""
    model = timing.budgeted(_TwoAttempts(), 2.0)
    tx = asgd_jax.asynchronous(optax.sgd(LR), 2, timing=model, max_staleness=0, accumulate=2)

    check(tx, [1.0, 3.5], 30, rennala_ref(2))


# --- errors ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("make,match", [
    (lambda: asgd_jax.asynchronous(optax.sgd(0.1), 2, stop_stale=True), "give max_staleness"),
    (lambda: asgd_jax.asynchronous(optax.sgd(0.1), 2, max_staleness=1, stop_stale=True, assignment="shuffle"),
     "assignment='pure'"),
    (lambda: asgd_jax.parameter_server(optax.sgd(0.1), 2, stop_stale=True), "staleness limit"),
    (lambda: asgd_jax.asynchronous(optax.sgd(0.1), 3, timing=timing.per_worker(1.0, jnp.array([2.0, 1.0, 3.0])),
                                   fastest=2), "fastest first"),
    (lambda: asgd_jax.asynchronous(optax.sgd(0.1), 3, fastest=2, initial_workers=1), "drop initial_workers"),
    (lambda: asgd_jax.asynchronous(optax.sgd(0.1), 3, fastest=0), "fastest must be >= 1"),
    (lambda: rules.malenia(optax.sgd(0.1), 3, batch=0.0), r"malenia\(batch\) must be > 0"),
    (lambda: rules.malenia(optax.sgd(0.1), 0), "max_workers"),
    (lambda: rules.ringleader(optax.sgd(0.1), 2.5), "max_workers"),
    (lambda: rules.scale_by_compute_time(jnp.array([1.0, -1.0])), "must be > 0"),
    (lambda: asgd_jax.optimal_workers(jnp.array([1.0]), 1.0, 0.0), r"eps\) must be > 0"),
])
def test_bad_values_are_one_line_errors(make, match):
    with pytest.raises(ValueError, match=match) as err:
        make()
    assert "\n" not in str(err.value)


def test_malenia_and_budgets_vmap_over_their_numbers():
    """One compiled program over Malenia's S and over MindFlayer's budget, each config equal to its own run."""
    times = [1.0, 1.5, 4.0]
    speeds = timing.per_worker(1.0, jnp.array(times))
    make = lambda s: asgd_jax.parameter_server(rules.malenia(optax.sgd(LR), 3, s), 3, timing=speeds)
    w, _, _ = run_vmapped(make, jnp.array([3.0, 6.0]), 40)
    for k, s in enumerate([3.0, 6.0]):
        np.testing.assert_allclose(w[k], reference(times, 40, malenia_ref(s))[0][-1], rtol=2e-5, atol=2e-6)
    make = lambda b: asgd_jax.asynchronous(optax.sgd(LR), 2, timing=timing.budgeted(_TwoAttempts(), b),
                                           max_staleness=0, accumulate=2)
    _, s, tr = run_vmapped(make, jnp.array([2.0, 4.0]), 20)
    # budget 4: worker 1's first attempt (3) succeeds, jobs take 3; budget 2: 3.5 (above)
    assert arrivals_of(jax.tree.map(lambda x: x[1], tr)) == reference([1.0, 3.0], 20, rennala_ref(2))[1]
    assert arrivals_of(jax.tree.map(lambda x: x[0], tr)) == reference([1.0, 3.5], 20, rennala_ref(2))[1]
