"""Tests for asgd_jax.simulator: the asynchronous system as one optax transform.

Independent references: event sequences worked out by hand (3 workers with
fixed times 1, 2, 3); a NumPy event simulator written from the method
descriptions in docs/methods.md with explicit per-worker FIFO queues (a worker starts its next
queued job when the running one finishes) and the server rules (DC-ASGD-c/-a,
staleness scaling, Ringmaster, accumulation, clipping) in float64; plain optax
on averaged gradients for the synchronous rule; ``delayed`` for the
constant-delay consequence.
"""

from __future__ import annotations

import collections
import doctest

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import asgd_jax
from asgd_jax import simulator, timing
from asgd_jax.delay import delayed
from asgd_jax.simulator import SimState, asynchronous, next_worker, simulate_staleness

SPEEDS3 = timing.per_worker(timing.fixed(1.0), jnp.array([1.0, 2.0, 3.0]))
DIM = 3


# --- a small heterogeneous problem: worker i minimises 1/2 w'A_i w - b_i'w -------------------------

_A = np.array([[1.0, 0.5, 2.0], [0.3, 1.5, 1.0], [2.0, 1.0, 0.4], [0.8, 0.8, 0.8], [1.2, 0.2, 1.7],
               [0.5, 2.0, 1.1]])
_B = np.array([[1.0, -1.0, 0.5], [2.0, 0.0, -1.0], [-0.5, 1.0, 1.5], [0.3, 0.3, -0.3], [1.0, 1.0, 1.0],
               [-1.0, 0.5, 0.2]])
W0 = np.array([0.5, -0.3, 0.8])


def grad_jax(w, i):
    return jnp.asarray(_A, jnp.float32)[i] * w - jnp.asarray(_B, jnp.float32)[i]


def grad_np(w, i):
    return _A[i] * w - _B[i]


def scan(tx, calls, w0=W0, grad_fn=grad_jax, state_fn=None):
    """``calls`` update calls in a scan; returns final (w, state) and a per-call trace."""

    def body(carry, _):
        w, s = carry
        i = next_worker(s)
        u, s = tx.update(grad_fn(w, i), s, w)
        w = optax.apply_updates(w, u)
        return (w, s), dict(w=w, u=u, worker=i, time=s.time, staleness=s.last_staleness,
                            last_worker=s.last_worker, arrivals=s.arrivals, version=s.version,
                            discarded=s.discarded)

    w0 = jnp.asarray(w0, jnp.float32)
    s = tx.init(w0) if state_fn is None else state_fn(tx.init(w0))
    (w, s), trace = jax.lax.scan(body, (w0, s), None, length=calls)
    return w, s, trace


def run(tx, calls, **kwargs):
    """:func:`scan` compiled once; the trace as NumPy arrays."""
    w, s, trace = jax.jit(lambda: scan(tx, calls, **kwargs))()
    return w, s, jax.tree.map(np.asarray, trace)


def run_vmapped(make_tx, hparams, calls, **kwargs):
    """One compiled program for a batch of configs ``make_tx(hp)``; traces with a leading config axis."""
    w, s, trace = jax.jit(jax.vmap(lambda hp: scan(make_tx(hp), calls, **kwargs)))(hparams)
    return w, s, jax.tree.map(np.asarray, trace)


def run_delayed(tx, calls):
    """Parameter trajectory of a transform without next_worker (worker 0's gradient every call)."""

    def step(carry, _):
        w, s = carry
        u, s = tx.update(grad_jax(w, 0), s, w)
        w = optax.apply_updates(w, u)
        return (w, s), w

    w0 = jnp.asarray(W0, jnp.float32)
    return jax.lax.scan(step, (w0, tx.init(w0)), None, length=calls)[1]


def arrivals_of(trace):
    """(worker, time, staleness) of each call that had an arrival."""
    new = np.diff(np.concatenate([[0], trace["arrivals"]])) > 0
    return trace["last_worker"][new], trace["time"][new], trace["staleness"][new]


# --- NumPy reference: FIFO queues per worker, async server rules ---------------------------------


def reference_async(n, times, calls, lr, *, dispatch=None, comp=None, lam=None, mu=0.95, eps=1e-7,
                    scale=None, max_staleness=None, k=1, clip=None):
    """Event-by-event simulation of the event model (docs/methods.md#the-event-model), plain SGD as server.

    The server steps by ``lr``.

    ``times[j]``: worker j's fixed compute time. ``dispatch``: the worker of each call
    (default: the pure rule). Returns the parameter trajectory and the arrivals.
    """
    w = W0.astype(np.float64)
    version, now, in_flight = 0, 0.0, 0
    running = {}                                   # worker -> job being computed
    queues = collections.defaultdict(collections.deque)
    ms = np.zeros(DIM)
    acc, acc_n = np.zeros(DIM), 0
    nxt = 0
    traj, arrivals = [], []
    lam = (2.0 if comp == "dc-a" else 0.04) if lam is None else lam

    def start(job, at):
        job["finish"] = at + times[job["worker"]]
        running[job["worker"]] = job

    for t in range(calls):
        worker = nxt if dispatch is None else int(dispatch[t])
        job = dict(seq=t, g=grad_np(w, worker), w_bak=w.copy(), version=version, worker=worker)
        if worker in running:
            queues[worker].append(job)            # FIFO: starts when the running job ends
        else:
            start(job, now)
        in_flight += 1
        if in_flight >= n:
            job = min(running.values(), key=lambda j: (j["finish"], j["seq"]))
            del running[job["worker"]]
            now, in_flight = job["finish"], in_flight - 1
            if queues[job["worker"]]:
                start(queues[job["worker"]].popleft(), now)
            tau = version - job["version"]
            arrivals.append((job["worker"], now, tau))
            if max_staleness is None or tau <= max_staleness:
                g = job["g"]
                if comp == "dc-c":
                    g = g + lam * g * g * (w - job["w_bak"])
                elif comp == "dc-a":
                    ms = mu * ms + (1 - mu) * g * g
                    g = g + lam / np.sqrt(ms + eps) * g * g * (w - job["w_bak"])
                if clip is not None:
                    norm = np.linalg.norm(g)
                    g = g * min(1.0, clip / norm)
                if scale is not None:
                    g = g * scale(tau)
                acc, acc_n = acc + g, acc_n + 1
                if acc_n == k:
                    w = w - lr * acc / k
                    version += 1
                    acc, acc_n = np.zeros(DIM), 0
            nxt = job["worker"]
        else:
            nxt = t + 1
        traj.append(w.copy())
    return np.array(traj), arrivals


# --- the event model: hand-worked sequences -------------------------------------------------------


def test_pure_rule_hand_worked_three_workers():
    tx = asynchronous(optax.sgd(0.1), 3, timing=SPEEDS3)
    _, _, tr = run(tx, 9)
    # Calls 0, 1 fill the pool at time 0; then one arrival per call (worked by hand in the module docs).
    np.testing.assert_array_equal(tr["u"][:2], 0.0)
    assert np.all(np.abs(tr["u"][2:]).sum(-1) > 0)
    np.testing.assert_array_equal(tr["worker"], [0, 1, 2, 0, 1, 0, 2, 0, 1])
    workers, times, staleness = arrivals_of(tr)
    np.testing.assert_array_equal(workers, [0, 1, 0, 2, 0, 1, 0])
    np.testing.assert_array_equal(times, [1, 2, 2, 3, 3, 4, 4])
    np.testing.assert_array_equal(staleness, [0, 1, 1, 3, 1, 3, 1])
    np.testing.assert_array_equal(tr["version"], [0, 0, 1, 2, 3, 4, 5, 6, 7])


def test_fifo_queues_hand_worked_forced_dispatches():
    """Dispatch sequence forced by overriding ``next_worker``: queued jobs start when the worker is free."""
    tx = asynchronous(optax.sgd(0.1), 3, timing=SPEEDS3)
    forced = [0, 1, 2, 0, 0, 2, 1, 1, 0]
    state, w = tx.init(jnp.asarray(W0, jnp.float32)), jnp.asarray(W0, jnp.float32)
    update = jax.jit(tx.update)
    out = []
    for t, j in enumerate(forced):
        state = state._replace(events=state.events._replace(next_worker=jnp.int32(j)))
        u, state = update(grad_jax(w, j), state, w)
        w = optax.apply_updates(w, u)
        if t >= 2:
            out.append((int(state.last_worker), float(state.time), int(state.last_staleness)))
    # By hand: worker 1 gets two jobs at time 3 and 5, the second queued behind the first (finish 5, 7).
    assert out == [(0, 1, 0), (1, 2, 1), (0, 2, 1), (2, 3, 3), (0, 3, 2), (1, 5, 1), (2, 6, 3)]
    np.testing.assert_array_equal(state.events.busy_until, [6.0, 7.0, 6.0])


@pytest.mark.parametrize("assignment", ["random", "shuffle"])
def test_random_and_shuffle_match_numpy_queue_reference(assignment):
    tx = asynchronous(optax.sgd(0.05), 3, timing=SPEEDS3, assignment=assignment, key=3)
    calls = 40
    w, _, tr = run(tx, calls)
    ref_w, ref_arrivals = reference_async(3, [1.0, 2.0, 3.0], calls, 0.05, dispatch=tr["worker"])
    workers, times, staleness = arrivals_of(tr)
    np.testing.assert_array_equal(workers, [a[0] for a in ref_arrivals])
    np.testing.assert_allclose(times, [a[1] for a in ref_arrivals])
    np.testing.assert_array_equal(staleness, [a[2] for a in ref_arrivals])
    np.testing.assert_allclose(tr["w"], ref_w, rtol=1e-5, atol=1e-6)
    assert len(set(tr["worker"][3:].tolist())) == 3


def test_pure_rule_matches_numpy_reference():
    tx = asynchronous(optax.sgd(0.05), 3, timing=SPEEDS3)
    _, _, tr = run(tx, 40)
    ref_w, ref_arrivals = reference_async(3, [1.0, 2.0, 3.0], 40, 0.05)
    np.testing.assert_array_equal(arrivals_of(tr)[0], [a[0] for a in ref_arrivals])
    np.testing.assert_allclose(tr["w"], ref_w, rtol=1e-5, atol=1e-6)


def test_shuffle_dispatches_each_worker_once_per_window():
    n = 5
    tx = asynchronous(optax.sgd(0.01), n, timing=timing.exponential(1.0), assignment="shuffle", key=1)
    _, _, tr = run(tx, 40 * n)
    windows = tr["worker"].reshape(-1, n)
    for window in windows:
        assert sorted(window.tolist()) == list(range(n))
    np.testing.assert_array_equal(windows[0], np.arange(n))       # start-up window
    assert len({tuple(wd) for wd in windows[1:].tolist()}) > 5    # fresh permutations


def test_random_assignment_is_uniform_over_workers():
    n = 4
    tx = asynchronous(optax.sgd(0.01), n, timing=1.0, assignment="random", key=2)
    _, _, tr = run(tx, 1000)
    counts = np.bincount(tr["worker"], minlength=n)
    np.testing.assert_allclose(counts / counts.sum(), 1 / n, atol=0.05)


# --- staleness without training -------------------------------------------------------------------


def test_pure_rule_arrival_shares_proportional_to_speed():
    n = 5
    s = np.arange(1.0, n + 1)
    trace = simulate_staleness(n, timing.per_worker(timing.fixed(1.0), jnp.asarray(s)), 3000)
    shares = np.bincount(np.asarray(trace.worker), minlength=n) / 3000
    np.testing.assert_allclose(shares, (1 / s) / (1 / s).sum(), atol=0.003)


@pytest.mark.parametrize("assignment", ["random", "shuffle"])
def test_random_and_shuffle_give_equal_shares(assignment):
    n = 5
    model = timing.per_worker(timing.exponential(1.0), jnp.arange(1.0, n + 1))
    trace = simulate_staleness(n, model, 3000, assignment=assignment, key=4)
    shares = np.bincount(np.asarray(trace.worker), minlength=n) / 3000
    np.testing.assert_allclose(shares, 1 / n, atol=0.03 if assignment == "random" else 0.004)


def test_simulate_staleness_matches_the_transform():
    model = timing.per_worker(timing.exponential(1.0), jnp.array([1.0, 1.5, 2.0, 4.0]))
    trace = simulate_staleness(4, model, 50, key=7, assignment="random")
    tx = asynchronous(optax.sgd(0.01), 4, timing=model, assignment="random", key=7)
    _, _, tr = run(tx, 53)
    workers, times, staleness = arrivals_of(tr)
    np.testing.assert_array_equal(trace.worker, workers)
    np.testing.assert_array_equal(trace.staleness, staleness)
    np.testing.assert_allclose(trace.time, times)


def test_simulate_staleness_jain_monte_carlo_and_vmap():
    # Jain et al. Figure 1: Normal(1, 0.2^2) times, staleness centred at N - 1.
    keys = jax.random.split(jax.random.key(0), 4)
    sim = jax.jit(jax.vmap(lambda k: simulate_staleness(8, timing.normal(1.0, 0.2), 1000, key=k)))
    trace = sim(keys)
    chex.assert_shape(trace.staleness, (4, 1000))
    np.testing.assert_allclose(np.asarray(trace.staleness)[:, 100:].mean(), 7.0, atol=0.05)
    assert np.all(np.diff(np.asarray(trace.time), axis=1) >= 0)
    # A traced worker count under a static bound.
    f = jax.jit(jax.vmap(lambda n: simulate_staleness(n, 1.0, 30, max_workers=6).staleness))
    st = np.asarray(f(jnp.array([2, 6])))
    np.testing.assert_array_equal(st[0, 5:], 1)
    np.testing.assert_array_equal(st[1, 10:], 5)


def test_fixed_equal_times_steady_staleness_is_n_minus_1():
    trace = simulate_staleness(6, 1.0, 40)
    np.testing.assert_array_equal(np.asarray(trace.staleness)[:6], np.arange(6))
    np.testing.assert_array_equal(np.asarray(trace.staleness)[6:], 5)
    np.testing.assert_array_equal(np.asarray(trace.worker), np.arange(40) % 6)


# --- consistency with the constant-delay transform ------------------------------------------------


def test_equals_delayed_bitwise_eagerly():
    """Op by op (no jit, so no fusion differences) the two trajectories are bitwise identical."""
    d = 2
    sim, ref = asynchronous(optax.sgd(0.05, momentum=0.9), d + 1, timing=0.7), delayed(optax.sgd(0.05, momentum=0.9), d)
    w1 = w2 = jnp.asarray(W0, jnp.float32)
    s1, s2 = sim.init(w1), ref.init(w2)
    for t in range(8):
        u1, s1 = sim.update(grad_jax(w1, 0), s1, w1)
        u2, s2 = ref.update(grad_jax(w2, 0), s2, w2)
        w1, w2 = optax.apply_updates(w1, u1), optax.apply_updates(w2, u2)
        np.testing.assert_array_equal(w1, w2)
        assert int(s1.last_staleness) == (-1 if t < d else min(t - d, d))


@pytest.mark.parametrize("make_inner", [lambda: optax.sgd(0.05, momentum=0.9), lambda: optax.adam(0.05)],
                         ids=["sgd_momentum", "adam"])
def test_equals_delayed_vmapped_over_delays(make_inner):
    """Traced worker counts n = d + 1 (under max_workers) against traced delays d (under max_delay)."""
    calls, delays = 25, jnp.array([0, 1, 3, 4])
    _, _, tr_sim = run_vmapped(
        lambda d: asynchronous(make_inner(), d + 1, max_workers=5, timing=timing.fixed(0.7)), delays, calls,
        grad_fn=lambda w, i: grad_jax(w, 0))
    traj = jax.jit(jax.vmap(lambda d: run_delayed(delayed(make_inner(), d, max_delay=4), calls)))(delays)
    np.testing.assert_allclose(tr_sim["w"], traj, rtol=1e-6, atol=1e-7)
    for c, d in enumerate(delays.tolist()):
        np.testing.assert_array_equal(tr_sim["staleness"][c, d:], np.minimum(np.arange(calls - d), d))


# --- server rules against the NumPy reference -----------------------------------------------------


@pytest.mark.parametrize("assignment", ["pure", "shuffle"])
@pytest.mark.parametrize("comp,lams", [("dc-c", [0.04, 0.7]), ("dc-a", [2.0, 0.5])])
def test_dc_asgd_matches_numpy(comp, lams, assignment):
    make = lambda lam: asynchronous(optax.sgd(0.1), 3, timing=SPEEDS3, compensation=comp, dc_lambda=lam,
                                    assignment=assignment, key=5)
    _, _, tr = run_vmapped(make, jnp.array(lams), 30)
    for c, lam in enumerate(lams):
        ref_w, _ = reference_async(3, [1.0, 2.0, 3.0], 30, 0.1, comp=comp, lam=lam, dispatch=tr["worker"][c])
        np.testing.assert_allclose(tr["w"][c], ref_w, rtol=2e-5, atol=2e-6)
        # The compensation term is not trivially zero here.
        plain, _ = reference_async(3, [1.0, 2.0, 3.0], 30, 0.1, dispatch=tr["worker"][c])
        assert np.abs(plain[-1] - ref_w[-1]).max() > 1e-4


def test_dc_asgd_default_lambdas():
    s_c = asynchronous(optax.sgd(0.1), 2, compensation="dc-c").init(jnp.zeros(2))
    s_a = asynchronous(optax.sgd(0.1), 2, compensation="dc-a").init(jnp.zeros(2))
    dc_c, dc_a = s_c.server_state[0], s_a.server_state[0]
    assert float(dc_c.dc_lambda) == pytest.approx(0.04)
    assert float(dc_a.dc_lambda) == 2.0
    assert float(dc_a.momentum) == pytest.approx(0.95)
    assert not hasattr(dc_c, "mean_square") and dc_a.mean_square.shape == (2,)
    assert asynchronous(optax.sgd(0.1), 2).init(jnp.zeros(2)).stale_params is None


@pytest.mark.parametrize("rule,fn", [("adaptive", lambda tau: min(1.0, 3 / max(tau, 1))),
                                     ("inverse", lambda tau: 1.0 / max(tau, 1)),
                                     (lambda tau: jnp.exp(-0.5 * tau), lambda tau: np.exp(-0.5 * tau))],
                         ids=["adaptive", "inverse", "callable"])
def test_staleness_scaling_matches_numpy(rule, fn):
    tx = asynchronous(optax.sgd(0.3), 3, timing=SPEEDS3, staleness_scaling=rule)
    _, _, tr = run(tx, 30)
    ref_w, _ = reference_async(3, [1.0, 2.0, 3.0], 30, 0.3, scale=fn)
    np.testing.assert_allclose(tr["w"], ref_w, rtol=2e-5, atol=2e-6)


def test_ringmaster_drops_stale_arrivals():
    tx = asynchronous(optax.sgd(0.1), 3, timing=SPEEDS3, max_staleness=1)
    _, state, tr = run(tx, 40)
    ref_w, arrivals = reference_async(3, [1.0, 2.0, 3.0], 40, 0.1, max_staleness=1)
    np.testing.assert_allclose(tr["w"], ref_w, rtol=1e-5, atol=1e-6)
    dropped = sum(a[2] > 1 for a in arrivals)
    assert dropped > 0 and int(state.discarded) == dropped
    np.testing.assert_array_equal(arrivals_of(tr)[2], [a[2] for a in arrivals])
    # A dropped arrival emits a zero update.
    assert np.all(tr["u"][np.flatnonzero(tr["discarded"][1:] > tr["discarded"][:-1]) + 1] == 0)


@pytest.mark.parametrize("k", [2, 3])
def test_accumulate_k_matches_numpy(k):
    tx = asynchronous(optax.sgd(0.2), 3, timing=SPEEDS3, accumulate=k, assignment="random", key=9)
    _, state, tr = run(tx, 40)
    ref_w, _ = reference_async(3, [1.0, 2.0, 3.0], 40, 0.2, k=k, dispatch=tr["worker"])
    np.testing.assert_allclose(tr["w"], ref_w, rtol=1e-5, atol=1e-6)
    assert int(state.version) == (40 - 2) // k


def test_rennala_is_drop_stale_plus_accumulate():
    n, S = 4, 3
    model = timing.per_worker(timing.fixed(1.0), jnp.array([1.0, 1.3, 2.1, 3.7]))
    tx = asynchronous(optax.sgd(0.2), n, timing=model, max_staleness=0, accumulate=S)
    _, state, tr = run(tx, 60, grad_fn=lambda w, i: grad_jax(w, i))
    ref_w, arrivals = reference_async(n, [1.0, 1.3, 2.1, 3.7], 60, 0.2, max_staleness=0, k=S)
    np.testing.assert_allclose(tr["w"], ref_w, rtol=1e-5, atol=1e-6)
    used = [a for a in arrivals if a[2] == 0]
    assert int(state.version) == len(used) // S and int(state.discarded) == len(arrivals) - len(used)
    assert int(state.discarded) > 0


def test_clipping_matches_numpy():
    tx = asynchronous(optax.sgd(0.2), 3, timing=SPEEDS3, clip_norm=0.5)
    _, _, tr = run(tx, 30)
    ref_w, _ = reference_async(3, [1.0, 2.0, 3.0], 30, 0.2, clip=0.5)
    np.testing.assert_allclose(tr["w"], ref_w, rtol=2e-5, atol=2e-6)


# --- synchronous rules ----------------------------------------------------------------------------


def test_ssgd_equals_optax_on_the_average():
    n, rounds = 4, 6
    model = timing.per_worker(timing.exponential(1.0), jnp.array([1.0, 2.0, 3.0, 4.0]))
    tx = asynchronous(optax.sgd(0.1, momentum=0.9), n, timing=model, server_rule="sync", key=3)
    _, state, tr = run(tx, n * rounds)
    np.testing.assert_array_equal(tr["worker"], np.tile(np.arange(n), rounds))
    # Reference: plain optax on the average of the n workers' gradients at the same parameters.
    ref = optax.sgd(0.1, momentum=0.9)
    w = jnp.asarray(W0, jnp.float32)
    s = ref.init(w)
    for r in range(rounds):
        g = jnp.mean(jnp.stack([grad_jax(w, i) for i in range(n)]), 0)
        u, s = ref.update(g, s, w)
        w = optax.apply_updates(w, u)
        np.testing.assert_allclose(tr["w"][(r + 1) * n - 1], w, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(tr["u"][r * n:(r + 1) * n - 1], 0.0)
    np.testing.assert_array_equal(tr["version"], np.repeat(np.arange(rounds + 1), [n - 1] + [n] * (rounds - 1) + [1]))
    assert int(state.arrivals) == n * rounds and int(state.discarded) == 0
    assert np.all(tr["staleness"][n - 1:] == 0)
    # The clock moves by the slowest worker of each round.
    barrier_times = tr["time"][n - 1::n]
    assert np.all(np.diff(barrier_times) > 0)


def test_ssgd_round_time_is_the_slowest_worker():
    tx = asynchronous(optax.sgd(0.1), 3, timing=SPEEDS3, server_rule="sync")
    _, _, tr = run(tx, 9)
    np.testing.assert_array_equal(tr["time"], [0, 0, 3, 3, 3, 6, 6, 6, 9])


def test_backup_workers_use_exactly_the_first_n():
    times = [3.0, 1.0, 4.0, 2.0, 5.0]
    tx = asynchronous(optax.sgd(0.1), 5, timing=timing.per_worker(timing.fixed(1.0), jnp.array(times)),
                      server_rule="sync", backup_workers=2)
    _, state, tr = run(tx, 10)
    w = jnp.asarray(W0, jnp.float32)
    for r in range(2):
        g = jnp.mean(jnp.stack([grad_jax(w, i) for i in (1, 3, 0)]), 0)   # the 3 fastest
        w = w - 0.1 * g
        np.testing.assert_allclose(tr["w"][5 * r + 4], w, rtol=1e-6)
    np.testing.assert_array_equal(tr["time"][[4, 9]], [3.0, 6.0])          # 3rd finish of each round
    assert int(state.discarded) == 4 and int(state.arrivals) == 6 and int(state.last_worker) == 0


def test_backup_workers_with_random_times():
    n_total, b = 6, 2
    tx = asynchronous(optax.sgd(0.1), n_total, timing=timing.exponential(1.0), server_rule="sync",
                      backup_workers=b, key=11)
    w0 = jnp.asarray(W0, jnp.float32)
    s = tx.init(w0)
    s1 = jax.jit(tx.update)(grad_jax(w0, 0), s, w0)[1]   # the round's times are drawn at its first call
    finish = np.asarray(s1.jobs.finish)
    winners = np.argsort(finish, kind="stable")[: n_total - b]
    w, state, tr = run(tx, n_total)
    g = np.mean([grad_np(W0, i) for i in winners], 0)
    np.testing.assert_allclose(tr["w"][-1], W0 - 0.1 * g, rtol=1e-5)
    assert float(state.time) == pytest.approx(np.sort(finish)[n_total - b - 1])


# --- gradual introduction -------------------------------------------------------------------------


def test_gradual_introduction_pure_hand_worked():
    # One worker alone for 3 server steps, then all three (Downpour's warm start).
    tx = asynchronous(optax.sgd(0.1), 3, timing=1.0, initial_workers=1, add_every=3, add_workers=2)
    _, state, tr = run(tx, 10)
    assert int(simulator.active_workers(tx.init(jnp.zeros(3)))) == 1
    np.testing.assert_array_equal(tr["worker"], [0, 0, 0, 0, 1, 2, 0, 1, 2, 0])
    np.testing.assert_array_equal(tr["version"], [1, 2, 3, 3, 3, 4, 5, 6, 7, 8])
    np.testing.assert_array_equal(tr["time"], [1, 2, 3, 3, 3, 4, 4, 4, 5, 5])
    assert np.all(tr["u"][[3, 4]] == 0)
    assert int(simulator.active_workers(state)) == 3


def test_gradual_introduction_random_starts_new_workers_in_order():
    tx = asynchronous(optax.sgd(0.1), 4, timing=timing.exponential(1.0), assignment="random",
                      initial_workers=2, add_every=5, add_workers=1, key=1)
    _, state, tr = run(tx, 60)
    first = [int(np.flatnonzero(tr["worker"] == j)[0]) for j in range(4)]
    assert first[0] == 0 and first[1] == 1 and first[2] < first[3]
    # Worker 2 starts right after the 5th server step, worker 3 after the 10th.
    assert tr["version"][first[2] - 1] == 5 and tr["version"][first[3] - 1] == 10
    assert int(simulator.active_workers(state)) == 4


def test_gradual_introduction_sync_rounds_grow():
    tx = asynchronous(optax.sgd(0.1), 4, timing=1.0, server_rule="sync",
                      initial_workers=2, add_every=2, add_workers=2)
    _, state, tr = run(tx, 12)
    np.testing.assert_array_equal(tr["worker"], [0, 1, 0, 1, 0, 1, 2, 3, 0, 1, 2, 3])
    np.testing.assert_array_equal(tr["version"], [0, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4])


# --- jit, vmap, API -------------------------------------------------------------------------------


def test_jit_and_eager_agree():
    tx = asynchronous(optax.adam(0.05), 4, timing=timing.lognormal(1.0, 0.5), assignment="shuffle",
                      compensation="dc-a", accumulate=2, max_staleness=4, clip_norm=3.0,
                      staleness_scaling="adaptive", key=2)
    w_jit, s_jit, tr = run(tx, 12)
    w = jnp.asarray(W0, jnp.float32)
    s = tx.init(w)
    for t in range(12):
        u, s = tx.update(grad_jax(w, next_worker(s)), s, w)
        w = optax.apply_updates(w, u)
    np.testing.assert_allclose(w, w_jit, rtol=1e-5, atol=1e-6)
    assert int(s.version) == int(s_jit.version) and int(s.arrivals) == int(s_jit.arrivals)
    np.testing.assert_allclose(s.time, s_jit.time, rtol=1e-6)


def _make_tx(hp):
    inner = optax.inject_hyperparams(optax.sgd)(learning_rate=hp["lr"], momentum=0.9)
    return asynchronous(inner, hp["workers"], max_workers=6, timing=timing.normal(hp["mean"], 0.3),
                        assignment="random", compensation="dc-c", dc_lambda=hp["lam"],
                        max_staleness=hp["R"], accumulate=hp["k"], key=hp["key"])


def test_vmap_over_configs_equals_one_by_one():
    configs = dict(lr=jnp.array([0.05, 0.1, 0.02]), workers=jnp.array([2, 6, 4]), mean=jnp.array([1.0, 2.0, 0.5]),
                   lam=jnp.array([0.0, 0.5, 2.0]), R=jnp.array([100, 3, 1]), k=jnp.array([1, 2, 3]),
                   key=jnp.array([0, 1, 2]))

    def train(hp):
        tx = _make_tx(hp)
        w0 = jnp.asarray(W0, jnp.float32)

        def body(carry, _):
            w, s = carry
            u, s = tx.update(grad_jax(w, next_worker(s)), s, w)
            return (optax.apply_updates(w, u), s), None

        (w, s), _ = jax.lax.scan(body, (w0, tx.init(w0)), None, length=40)
        return w, s.version, s.time, s.discarded

    batched = jax.jit(jax.vmap(train))(configs)
    for c in range(3):
        one = jax.jit(train)(jax.tree.map(lambda x: x[c], configs))
        for got, want in zip(batched, one):
            np.testing.assert_allclose(got[c], want, rtol=1e-5, atol=1e-6)
    assert len(set(np.asarray(batched[1]).tolist())) > 1


def test_update_reads_values_from_state():
    """An update function built with other numeric values (same rules) reads the state's."""
    a = asynchronous(optax.sgd(0.1), 3, timing=SPEEDS3, max_staleness=1, accumulate=jnp.int32(2),
                     max_workers=3)
    b = asynchronous(optax.sgd(0.1), 2, timing=5.0, max_staleness=0, accumulate=jnp.int32(3), max_workers=3)
    w = jnp.asarray(W0, jnp.float32)
    sa, sb = a.init(w), a.init(w)
    for _ in range(20):
        ua, sa = a.update(grad_jax(w, sa.next_worker), sa, w)
        ub, sb = b.update(grad_jax(w, sb.next_worker), sb, w)
        np.testing.assert_array_equal(ua, ub)
        w = w + ua
    assert int(sa.version) == int(sb.version)


def test_next_worker_inside_a_chain_and_state_fields():
    tx = optax.chain(optax.clip_by_global_norm(1.0), asynchronous(optax.sgd(0.1), 3, timing=SPEEDS3))
    s = tx.init(jnp.zeros(DIM))
    assert int(next_worker(s)) == 0
    _, s = tx.update(jnp.ones(DIM), s, jnp.zeros(DIM))
    assert int(next_worker(s)) == 1
    sim = s[1]
    assert isinstance(sim, SimState)
    assert int(sim.last_staleness) == -1 and int(sim.last_worker) == -1 and float(sim.time) == 0.0
    with pytest.raises(ValueError, match="SimState"):
        next_worker(optax.sgd(0.1).init(jnp.zeros(2)))


def test_no_gradient_copies_per_worker_when_not_needed():
    w = {"a": jnp.zeros((5, 7)), "b": jnp.zeros(3)}
    s = asynchronous(optax.sgd(0.1), 16, timing=1.0).init(w)
    chex.assert_shape(s.grads["a"], (16, 5, 7))
    assert s.stale_params is None and jax.tree.leaves(s.server_state) == []   # no rule state
    s = asynchronous(optax.sgd(0.1), 16, server_rule="sync", backup_workers=2).init(w)
    assert isinstance(s, asgd_jax.SyncState) and s.acc["a"].shape == (5, 7)


def test_validation_errors():
    sgd = optax.sgd(0.1)
    with pytest.raises(ValueError, match="assignment"):
        asynchronous(sgd, 3, assignment="round-robin")
    with pytest.raises(ValueError, match="server_rule"):
        asynchronous(sgd, 3, server_rule="hogwild")
    with pytest.raises(ValueError, match="compensation"):
        asynchronous(sgd, 3, compensation="dc")
    with pytest.raises(ValueError, match="staleness_scaling"):
        asynchronous(sgd, 3, staleness_scaling="sqrt")
    with pytest.raises(ValueError, match="workers"):
        asynchronous(sgd, 0)
    with pytest.raises(ValueError, match="max_workers"):
        asynchronous(sgd, 5, max_workers=4)
    with pytest.raises(ValueError, match="max_workers"):
        jax.jit(lambda n: asynchronous(sgd, n).init(jnp.zeros(2)))(3)
    with pytest.raises(ValueError, match="sync"):
        asynchronous(sgd, 3, server_rule="sync", compensation="dc-c")
    with pytest.raises(ValueError, match="backup_workers"):
        asynchronous(sgd, 3, backup_workers=1)
    with pytest.raises(ValueError, match="accumulate"):
        asynchronous(sgd, 3, accumulate=0)
    with pytest.raises(ValueError, match="max_staleness"):
        asynchronous(sgd, 3, max_staleness=-1)
    with pytest.raises(ValueError, match="params"):
        tx = asynchronous(sgd, 1, compensation="dc-c")
        tx.update(jnp.ones(2), tx.init(jnp.zeros(2)))
    with pytest.raises(ValueError, match="num_arrivals"):
        simulate_staleness(3, 1.0, 0)


def test_docstring_examples(monkeypatch):
    for name in simulator.__all__:
        monkeypatch.setattr(asgd_jax, name, getattr(simulator, name), raising=False)
    monkeypatch.setattr(asgd_jax, "timing", timing, raising=False)
    result = doctest.testmod(simulator, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
    for name in simulator.__all__:
        obj = getattr(simulator, name)
        if callable(obj):
            assert obj.__doc__, name
