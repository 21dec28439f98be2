"""Tests of the newest methods: Ringmaster with stops, Naive Optimal ASGD (fastest m*), Malenia SGD,
Ringleader ASGD, Rescaled ASGD (through asgd_jax.parameter_server/asynchronous) and MindFlayer SGD
(asgd_jax.mindflayer).

Independent reference: a float64 NumPy event simulation written here from the method descriptions in
docs/methods.md (pure rule: the worker that finishes, or that was stopped, restarts at the current
point; ties go to the earlier dispatch), with each server rule as plain NumPy: Malenia's per-worker sums
and harmonic-mean condition, Ringleader's collect/update phases with the temporary table, Rescaled's
tau_i / harmonic-mean factor, Ringmaster's stops; MindFlayer's rounds of budgeted attempts as their own
loop. The problem is the heterogeneous quadratic of test_simulator (worker i minimises
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
from asgd_jax.mindflayer import success_probs

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
    """The two phases as written by the authors: collect into the table until every worker has a gradient
    (no step); then one step per worker (the filling arrival first, then each other worker's first arrival,
    added to its entry before the step), later arrivals of a worker that stepped go to a temporary table;
    after the n-th step the temporary table replaces the table."""
    table, temp, st = {}, {}, dict(owes=None)     # owes: None in phase 1, else the workers still to step

    def server(g, worker, tau, n):
        if st["owes"] is not None and worker not in st["owes"]:
            temp.setdefault(worker, []).append(g)
            return None
        table.setdefault(worker, []).append(g)
        if st["owes"] is None:
            if len(table) < n:
                return None
            st["owes"] = set(range(n)) - {worker}
        else:
            st["owes"].remove(worker)
        step = sum(np.mean(table[i], axis=0) for i in range(n)) / n
        if not st["owes"]:
            table.clear()
            table.update(temp)
            temp.clear()
            st["owes"] = None
        return step

    return server


def test_ringleader_matches_the_reference_and_bounds_the_delay():
    times = [1.0, 1.25, 2.5, 6.0]
    tx = asgd_jax.parameter_server(rules.ringleader(optax.sgd(LR), 4), 4,
                                   timing=timing.per_worker(1.0, jnp.array(times)))
    s, tr = check(tx, times, 80, ringleader_ref())
    assert tr["staleness"].max() <= 2 * 4 - 2           # the paper's bound 2n - 2
    assert int(s.discarded) == 0


def test_ringleader_cycle_by_hand():
    """n = 2, the rule alone. Collect 1, 3 (worker 0) and 8 (worker 1, fills: step -(2 + 8)/2); worker 1's 2
    goes to the temporary table; worker 0's 5 joins its entry (1, 3, 5) and steps -(3 + 8)/2, the cycle's
    second step; the temporary table replaces the table, so worker 0's 6 fills it with worker 1's 2:
    -(6 + 2)/2 (the old 8 is gone)."""
    tx = rules.ringleader(optax.sgd(1.0), 3)
    s = tx.init(jnp.zeros(2))
    steps = []
    for w, g in [(0, 1.0), (0, 3.0), (1, 8.0), (1, 2.0), (0, 5.0), (0, 6.0), (0, 4.0), (1, 10.0)]:
        u, s = tx.update(jnp.full(2, g), s, worker=w, active_workers=2)
        steps.append(float(u[0]))
    # then worker 0 (4) has stepped: to the temporary table; worker 1's 10 joins (2, 10): -(6 + 6)/2
    assert steps == [0.0, 0.0, -5.0, 0.0, -5.5, -4.0, 0.0, -6.0]


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


# --- MindFlayer SGD: rounds of B_i attempts with budgets t_i ---------------------------------------------


class _Alternating(timing.TimingModel):
    """An attempt of worker i started at time s takes base_i, or 2 base_i when floor(s) is odd."""

    is_random = False

    def __init__(self, base):
        self.base = jnp.asarray(base, jnp.float32)

    def sample(self, key, worker, num_workers=1):
        return self.sample_at(key, worker, num_workers, 0.0)

    def sample_at(self, key, worker, num_workers, now):
        odd = jnp.floor(jnp.asarray(now, jnp.float32)) % 2 == 1
        return self.base[worker] * jnp.where(odd, 2.0, 1.0)


jax.tree_util.register_pytree_node(_Alternating, lambda m: ((m.base,), None), lambda _, c: _Alternating(*c))


def mindflayer_ref(base, budgets, attempts, probs, calls):
    """Rounds as the paper's algorithm: all workers start at x^k; worker i makes attempts[i] attempts in a
    row, an attempt longer than budgets[i] is stopped there and delivers nothing; the server waits for all
    and steps with (sum of delivered gradients) / sum_i probs[i] attempts[i]. One call per attempt."""
    w, now, traj, clock = W0.astype(np.float64), 0.0, [], []
    expected = sum(p * b for p, b in zip(probs, attempts))
    while len(traj) < calls:
        acc, got, ends = np.zeros_like(w), 0, []
        for i, b in enumerate(attempts):
            t = now
            for _ in range(b):
                eta = base[i] * (2.0 if math.floor(t) % 2 == 1 else 1.0)
                if eta <= budgets[i]:
                    acc, got = acc + grad_np(w, i), got + 1
                t += min(eta, budgets[i])
                traj.append(w.copy())
                clock.append(now)
            ends.append(t)
        now = max(ends)
        if got:
            w = w - LR * acc / expected
        traj[-1], clock[-1] = w.copy(), now
    return np.array(traj[:calls]), np.array(clock[:calls])


def test_mindflayer_hand_worked_round():
    """Times 1, 3 and budget 2: worker 0's two attempts deliver at 1 and 2; worker 1's attempt is stopped
    at 2. p = (1, 0) (exact for fixed times), B = 2: the step is the mean of worker 0's two gradients."""
    tx = asgd_jax.mindflayer(optax.sgd(1.0), 2, budgets=2.0, attempts=jnp.array([2, 1]),
                             timing=timing.per_worker(1.0, jnp.array([1.0, 3.0])))
    s = tx.init(jnp.zeros(1))
    assert s.probs.tolist() == [1.0, 0.0] and int(asgd_jax.next_worker(s)) == 0
    seen = []
    for g in (2.0, 4.0, 100.0, 6.0):
        worker = int(asgd_jax.next_worker(s))
        u, s = tx.update(jnp.array([g]), s)
        seen.append((worker, float(u[0]), float(s.time)))
    assert seen == [(0, 0.0, 0.0), (0, 0.0, 0.0), (1, -3.0, 2.0), (0, 0.0, 2.0)]
    assert int(s.version) == 1 and int(s.discarded) == 1 and int(s.arrivals) == 3


@pytest.mark.parametrize("budgets,attempts", [([1.0, 2.0, 1.5], [2, 1, 3]), ([3.0, 0.75, 4.0], [1, 4, 0]),
                                              ([1.0, 1.75, 1.5], [0, 2, 1])])
def test_mindflayer_matches_the_reference(budgets, attempts):
    base, probs = [0.75, 1.5, 1.0], [0.5, 1.0, 0.75]
    tx = asgd_jax.mindflayer(optax.sgd(LR), 3, budgets=jnp.array(budgets), attempts=jnp.array(attempts),
                             probs=jnp.array(probs), timing=_Alternating(base))
    _, s, tr = run(tx, 48)
    traj, clock = mindflayer_ref(base, budgets, attempts, probs, 48)
    np.testing.assert_allclose(tr["w"], traj, rtol=2e-5, atol=2e-6)
    np.testing.assert_allclose(tr["time"], clock)
    assert int(s.discarded) > 0 and int(s.version) > 3
    workers = [i for i, b in enumerate(attempts) for _ in range(b)]
    assert tr["worker"].tolist() == (workers * 48)[:48]


def test_mindflayer_vmaps_over_budgets():
    """One compiled program over the budgets; each config equals its own reference run."""
    base, attempts, probs = [0.75, 1.5, 1.0], [2, 1, 3], [1.0, 1.0, 1.0]
    make = lambda t: asgd_jax.mindflayer(optax.sgd(LR), 3, budgets=t, attempts=jnp.array(attempts),
                                         probs=jnp.array(probs), timing=_Alternating(base))
    grid = jnp.array([[1.0, 2.0, 1.5], [2.0, 4.0, 2.0]])
    w, _, tr = run_vmapped(make, grid, 30)
    for k, budgets in enumerate(grid.tolist()):
        traj, clock = mindflayer_ref(base, budgets, attempts, probs, 30)
        np.testing.assert_allclose(tr["w"][k], traj, rtol=2e-5, atol=2e-6)
        np.testing.assert_allclose(tr["time"][k], clock)


def test_mindflayer_success_probs_and_unbiased_step():
    """Exponential times: p_i = 1 - exp(-t_i / mean_i). With a constant gradient g the expected step is g
    (the estimator divides by B = sum p_i B_i, the expected number of delivered gradients)."""
    means, t = jnp.array([1.0, 2.0]), jnp.array([1.0, 0.5])
    model = timing.per_worker(timing.exponential(1.0), means)
    exact = 1 - np.exp(-np.array([1.0, 0.25]))
    np.testing.assert_allclose(success_probs(model, t, 2), exact, atol=0.03)
    tx = asgd_jax.mindflayer(optax.sgd(1.0), 2, budgets=t, attempts=jnp.array([3, 5]), probs=exact,
                             timing=model, key=1)
    _, s, tr = run(tx, 8 * 4000, w0=jnp.zeros(DIM), grad_fn=lambda w, i: jnp.ones(DIM))
    steps = -np.diff(np.concatenate([[0.0], tr["w"][:, 0]]))[7::8]
    assert abs(steps.mean() - 1.0) < 0.03


# --- budgeted clock (timeout and resend until success) with Rennala's server ------------------------------


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


def test_budgeted_clock_restarts_with_rennalas_server():
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
    (lambda: asgd_jax.mindflayer(optax.sgd(0.1), 2, budgets=0.0, attempts=1), r"budgets\) must be > 0"),
    (lambda: asgd_jax.mindflayer(optax.sgd(0.1), 2, budgets=1.0, attempts=jnp.array([0, 0])), "some positive"),
    (lambda: asgd_jax.mindflayer(optax.sgd(0.1), 2, budgets=1.0, attempts=jnp.array([1, -1])), "some positive"),
    (lambda: asgd_jax.mindflayer(optax.sgd(0.1), 2, budgets=1.0, attempts=1, probs=1.5), "probabilities"),
    (lambda: asgd_jax.mindflayer(optax.sgd(0.1), 3, budgets=jnp.ones(2), attempts=1), "one per worker"),
])
def test_bad_values_are_one_line_errors(make, match):
    with pytest.raises(ValueError, match=match) as err:
        make()
    assert "\n" not in str(err.value)


def test_malenia_and_budgets_vmap_over_their_numbers():
    """One compiled program over Malenia's S and over the budgeted clock's budget (each = its own run)."""
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


def test_library_sources_hold_no_control_characters():
    """A docstring written as a plain (not raw) string turns \\tau, \\frac, \\nabla into tab, form feed,
    newline...: no asgd_jax source may hold such characters."""
    import pathlib
    root = pathlib.Path(asgd_jax.__file__).parent
    bad = [f"{p.name}:{k + 1}" for p in sorted(root.glob("*.py"))
           for k, line in enumerate(p.read_text().split("\n")) if any(c in line for c in "\t\a\b\v\f")]
    assert not bad, bad
