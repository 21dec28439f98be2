"""Tests for asgd_jax.decentralized: mixing matrices, peer tables, AD-PSGD and D-PSGD.

Independent references (spec: issue #15): mixing matrices and peer tables built here from the spec's
rules (the 8-worker exponential table written out by hand); numpy.linalg.eigvalsh for the gossip rate;
a float64 NumPy event simulation of AD-PSGD (pure assignment, fixed per-worker times; at an arrival:
average with the peer, then the step with the stale gradient; the worker's next job delayed by the peer
exchange); one D-PSGD round worked out by hand; optax on one worker.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import asgd_jax
from asgd_jax import decentralized, timing
from asgd_jax.decentralized import (ad_psgd, average_model, consensus_distance, dpsgd, mixing_matrix,
                                    peer_table, worker_params)
from asgd_jax.network import network

# --- references: mixing matrices and peer tables from the spec's rules -----------------------------


def ref_ring(n):
    if n == 1:
        return np.ones((1, 1))
    if n == 2:
        return np.full((2, 2), 0.5)
    w = np.zeros((n, n))
    for i in range(n):
        for j in (i, (i + 1) % n, (i - 1) % n):
            w[i, j] = 1 / 3
    return w


def ref_torus(n):
    r = max(d for d in range(1, int(np.sqrt(n)) + 1) if n % d == 0)
    c = n // r
    assert r >= 3 and c >= 3
    w = np.zeros((n, n))
    for a in range(r):
        for b in range(c):
            i = a * c + b
            for aa, bb in ((a, b), ((a + 1) % r, b), ((a - 1) % r, b), (a, (b + 1) % c), (a, (b - 1) % c)):
                w[i, aa * c + bb] = 1 / 5
    return w


def ref_exponential(n):
    if n == 1:
        return [[0]]
    rows = []
    for i in range(n):
        row = []
        for k in range(int(np.floor(np.log2(n - 1))) + 1):
            off = 1 if k == 0 else 1 + 2 ** k
            f, b = (i + off) % n, (i - off) % n
            if f % 2 != i % 2 and b % 2 != i % 2:
                for p in (f, b):
                    if p not in row:
                        row.append(p)
        rows.append(row)
    return rows


# Worked out by hand from the rule (offsets 1, 3, 5): i+1, i-1, i+3, i-3 (i+5, i-5 repeat i-3, i+3).
EXPONENTIAL_8 = [[1, 7, 3, 5], [2, 0, 4, 6], [3, 1, 5, 7], [4, 2, 6, 0],
                 [5, 3, 7, 1], [6, 4, 0, 2], [7, 5, 1, 3], [0, 6, 2, 4]]


def test_reference_exponential_table_by_hand():
    assert ref_exponential(8) == EXPONENTIAL_8
    assert ref_exponential(2) == [[1], [0]]
    assert ref_exponential(4) == [[1, 3], [2, 0], [3, 1], [0, 2]]
    assert ref_exponential(16)[0] == [1, 15, 3, 13, 5, 11, 9, 7]      # offsets 1, 3, 5, 9


# --- mixing matrices ------------------------------------------------------------------------------


@pytest.mark.parametrize("topology,n", [("ring", 1), ("ring", 2), ("ring", 3), ("ring", 8), ("torus", 9),
                                        ("torus", 12), ("torus", 16), ("complete", 1), ("complete", 5)])
def test_mixing_matrix_entries_and_doubly_stochastic(topology, n):
    w = np.asarray(mixing_matrix(topology, n), np.float64)
    ref = {"ring": ref_ring, "torus": ref_torus, "complete": lambda n: np.full((n, n), 1 / n)}[topology](n)
    chex.assert_shape(w, (n, n))
    np.testing.assert_allclose(w, ref, atol=1e-7)
    np.testing.assert_allclose(w, w.T, atol=1e-7)
    np.testing.assert_allclose(w.sum(0), 1.0, atol=1e-6)
    np.testing.assert_allclose(w.sum(1), 1.0, atol=1e-6)
    assert (w >= 0).all()


def test_torus_by_hand_twelve():
    # 12 = 3 x 4: worker 5 = (1, 1); neighbours (0, 1) = 1, (2, 1) = 9, (1, 0) = 4, (1, 2) = 6.
    w = np.asarray(mixing_matrix("torus", 12))
    np.testing.assert_array_equal(np.flatnonzero(w[5]), [1, 4, 5, 6, 9])
    np.testing.assert_allclose(w[5, [1, 4, 5, 6, 9]], 0.2, atol=1e-7)
    # worker 0 = (0, 0): (2, 0) = 8, (1, 0) = 4, (0, 3) = 3, (0, 1) = 1.
    np.testing.assert_array_equal(np.flatnonzero(w[0]), [0, 1, 3, 4, 8])


def test_mixing_matrix_accepts_a_valid_array():
    w = np.array([[0.5, 0.25, 0.25], [0.25, 0.5, 0.25], [0.25, 0.25, 0.5]])
    np.testing.assert_allclose(mixing_matrix(w, 3), w, atol=1e-7)


@pytest.mark.parametrize("bad", [
    ("torus", 8), ("torus", 7), ("torus", 4), ("torus", 6), ("hypercube", 4),
    (np.array([[0.5, 0.5, 0.0], [0.5, 0.5, 0.0], [0.2, 0.3, 0.5]]), 3),          # columns do not sum to 1
    (np.array([[0.6, 0.6], [0.4, 0.4]]), 2),                                        # rows do not sum to 1
    (np.array([[1.5, -0.5], [-0.5, 1.5]]), 2),                                      # negative entries
    (np.kron(np.eye(2), np.full((2, 2), 0.5)), 4),                                 # disconnected
    (np.eye(3), 3),                                                                 # no mixing at all
    (np.full((4, 4), 0.25), 3),                                                     # wrong size
    (np.full((3, 4), 0.25), 3),                                                     # not square
], ids=["torus8", "torus7", "torus4", "torus6", "unknown", "columns", "rows", "negative", "disconnected",
        "identity", "wrong_n", "not_square"])
def test_mixing_matrix_refuses_bad_input(bad):
    with pytest.raises(ValueError):
        mixing_matrix(*bad)


def _gossip_rounds(w_lib, x0, rounds):
    """The library's D-PSGD with zero gradients: gossip alone; the consensus distance after each round."""
    n = x0.shape[0]
    tx = dpsgd(optax.sgd(0.1), n, mixing=w_lib)

    def one_round(carry, _):
        x, s = carry
        for _ in range(n):
            u, s = tx.update(jnp.zeros(x.shape[1:]), s, x)
            x = optax.apply_updates(x, u)
        return (x, s), (consensus_distance(x), x)

    x0 = jnp.asarray(x0, jnp.float32)
    _, (dist, xs) = jax.jit(lambda: jax.lax.scan(one_round, (x0, tx.init(x0)), None, length=rounds))()
    return np.asarray(dist, np.float64), np.asarray(xs, np.float64)


@pytest.mark.parametrize("topology,n", [("ring", 8), ("torus", 12)])
def test_gossip_consensus_rate_is_second_eigenvalue_squared(topology, n):
    w = ref_torus(n) if topology == "torus" else ref_ring(n)
    eig = np.sort(np.abs(np.linalg.eigvalsh(w)))
    lam2 = eig[-2]
    # By hand: ring (1 + 2 cos(2 pi / 8)) / 3; torus 3 x 4: (1 + 2 cos 0 + 2 cos(2 pi / 4)) / 5 = 3/5.
    assert lam2 == pytest.approx(0.8047378541 if topology == "ring" else 0.6, rel=1e-8)
    x0 = np.random.default_rng(0).normal(size=(n, 3))
    rounds = 25
    dist, xs = _gossip_rounds(topology, x0, rounds)
    # The library's rounds are x <- W x (float64 NumPy on the same start).
    x = x0.copy()
    for r in range(rounds):
        x = w @ x
        np.testing.assert_allclose(xs[r], x, rtol=1e-5, atol=1e-5)
    ratios = dist[1:] / dist[:-1]
    np.testing.assert_allclose(ratios[-8:], lam2 ** 2, rtol=2e-2)
    np.testing.assert_allclose(xs[-1].mean(0), x0.mean(0), atol=1e-5)           # the average is kept


def test_complete_graph_reaches_consensus_in_one_round():
    x0 = np.random.default_rng(1).normal(size=(5, 2))
    dist, xs = _gossip_rounds("complete", x0, 1)
    np.testing.assert_allclose(xs[0], np.tile(x0.mean(0), (5, 1)), atol=1e-6)
    assert dist[0] < 1e-10


# --- peer tables ----------------------------------------------------------------------------------


def test_peer_table_exponential_eight_by_hand():
    t = np.asarray(peer_table("exponential", 8))
    assert t.dtype == np.int32
    np.testing.assert_array_equal(t, EXPONENTIAL_8)


@pytest.mark.parametrize("n", [2, 4, 8, 16])
def test_peer_table_exponential_matches_rule(n):
    t = np.asarray(peer_table("exponential", n))
    np.testing.assert_array_equal(t, ref_exponential(n))       # every row has the same length here
    for i in range(n):
        assert all(j % 2 != i % 2 for j in t[i])                # active (odd) <-> passive (even)
        assert i not in t[i]
        for j in t[i]:
            assert i in t[j]                                    # the graph is undirected


def test_peer_table_small_and_ring():
    np.testing.assert_array_equal(peer_table("exponential", 1), [[0]])
    np.testing.assert_array_equal(peer_table("ring", 1), [[0]])
    np.testing.assert_array_equal(peer_table("ring", 2), [[1], [0]])
    np.testing.assert_array_equal(peer_table("ring", 4), [[1, 3], [2, 0], [3, 1], [0, 2]])
    np.testing.assert_array_equal(peer_table("ring", 5), [[1, 4], [2, 0], [3, 1], [4, 2], [0, 3]])


def test_peer_table_custom_list():
    t = np.asarray(peer_table([[1, 2], [0], [0]], 3))
    assert t.dtype == np.int32
    np.testing.assert_array_equal(t, [[1, 2], [0, 0], [0, 0]])     # padded by repeating


@pytest.mark.parametrize("bad", [
    ("exponential", 3), ("exponential", 5), ("exponential", 7),
    ([[1], [0], []], 3),               # isolated worker
    ([[1], [0, 1], [0]], 3),           # worker 1 lists itself
    ([[1], [5], [0]], 3),              # out of range
    ([[1], [-1], [0]], 3),             # out of range
    ([[1], [0]], 3),                   # not one list per worker
], ids=["exp3", "exp5", "exp7", "isolated", "self", "range_high", "range_negative", "count"])
def test_peer_table_refuses_bad_input(bad):
    with pytest.raises(ValueError):
        peer_table(*bad)


# --- consensus distance, average model, worker_params ---------------------------------------------


def test_consensus_distance_and_average_model_against_numpy():
    rng = np.random.default_rng(2)
    tree = {"a": rng.normal(size=(4, 2, 3)).astype(np.float32), "b": rng.normal(size=(4,)).astype(np.float32)}
    jtree = jax.tree.map(jnp.asarray, tree)
    avg = average_model(jtree)
    np.testing.assert_allclose(avg["a"], tree["a"].astype(np.float64).mean(0), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(avg["b"], tree["b"].astype(np.float64).mean(0), rtol=1e-6, atol=1e-7)
    a, b = tree["a"].astype(np.float64), tree["b"].astype(np.float64)
    per_worker = ((a - a.mean(0)) ** 2).sum((1, 2)) + (b - b.mean(0)) ** 2
    np.testing.assert_allclose(consensus_distance(jtree), per_worker.mean(), rtol=1e-5)
    assert float(consensus_distance({"a": jnp.ones((3, 2))})) == 0.0
    np.testing.assert_allclose(jax.jit(consensus_distance)(jtree), per_worker.mean(), rtol=1e-5)


def test_worker_params_picks_the_next_worker():
    x = jnp.arange(8.0).reshape(4, 2)
    tx = ad_psgd(optax.sgd(0.1), 4, peers="ring")
    s = tx.init(x)
    np.testing.assert_array_equal(worker_params(s, x), x[0])
    _, s = tx.update(jnp.zeros(2), s, x)
    assert int(asgd_jax.next_worker(s)) == 1
    np.testing.assert_array_equal(worker_params(s, x), x[1])
    chained = optax.chain(optax.identity(), tx)
    cs = chained.init(x)
    np.testing.assert_array_equal(worker_params(cs, x), x[0])
    # Not a decentralized state: params unchanged.
    ps = asgd_jax.asynchronous(optax.sgd(0.1), 2)
    np.testing.assert_array_equal(worker_params(ps.init(x[0]), x[0]), x[0])


# --- AD-PSGD against a float64 NumPy event simulation ---------------------------------------------


def reference_adpsgd(compute, table, x0, targets, calls, lr, *, momentum=0.0, peer_time=None,
                     model_bytes=1.0):
    """AD-PSGD as the spec describes, fixed per-worker compute times, pure assignment, peers from ``table``.

    Per call: the dispatched worker's gradient ``x_w - targets[w]`` at its current ``x_w``; its job finishes
    at ``max(now, busy_w) + compute[w]``. Once ``n`` jobs are in flight the earliest (no ties) arrives:
    ``x_i, x_j <- (x_i + x_j) / 2`` with ``j`` = its ``k``-th peer, then ``x_i`` takes the SGD (momentum)
    step with the stale gradient; its next job starts after the exchange ``peer_time(i, j)``.
    Returns per call: (x, time, version, last_worker, bytes_sent).
    """
    n = len(compute)
    x = np.array(x0, np.float64)
    mom = np.zeros_like(x)
    now, version, sent, last = 0.0, 0, 0.0, -1
    busy, exchanges, jobs, out, nxt = [0.0] * n, [0] * n, [], [], 0
    for t in range(calls):
        w = nxt
        g = x[w] - targets[w]
        busy[w] = max(now, busy[w]) + compute[w]
        jobs.append(dict(finish=busy[w], seq=t, worker=w, g=g))
        if len(jobs) >= n:
            job = min(jobs, key=lambda j: (j["finish"], j["seq"]))
            assert all(abs(j["finish"] - job["finish"]) > 1e-4 for j in jobs if j is not job), "near tie"
            jobs.remove(job)
            i, now, delay = job["worker"], job["finish"], 0.0
            if n > 1:
                j = table[i][exchanges[i] % len(table[i])]
                exchanges[i] += 1
                x[i] = x[j] = (x[i] + x[j]) / 2
                sent += 2 * model_bytes
                delay = 0.0 if peer_time is None else peer_time(i, j)
            mom[i] = momentum * mom[i] + job["g"]
            x[i] = x[i] - lr * mom[i]
            busy[i] = now + delay
            version, last = version + 1, i
        idle = {j["worker"] for j in jobs}
        nxt = min(k for k in range(n) if k not in idle)
        out.append((x.copy(), now, version, last, sent))
    return out


N4_TIMES = [1.0, 1.37, 1.91, 2.53]
N4_LAT = [0.05, 0.11, 0.17, 0.08]
N4_BW = [100.0, 50.0, 80.0, 200.0]


def _n4_peer_time(i, j):
    return N4_LAT[i] + N4_LAT[j] + 8.0 * max(1 / N4_BW[i], 1 / N4_BW[j])


def _scan_decentralized(tx, x0, targets, calls):
    """``calls`` jitted update calls; the gradient of worker next_worker at worker_params."""
    c = jnp.asarray(targets, jnp.float32)

    def body(carry, _):
        x, s = carry
        i = asgd_jax.next_worker(s)
        g = worker_params(s, x) - c[i]
        u, s = tx.update(g, s, x)
        x = optax.apply_updates(x, u)
        return (x, s), dict(x=x, u=u, time=s.time, version=s.version, worker=s.last_worker,
                            bytes_sent=s.bytes_sent, dispatched=i)

    x0 = jnp.asarray(x0, jnp.float32)
    (x, s), tr = jax.jit(lambda: jax.lax.scan(body, (x0, tx.init(x0)), None, length=calls))()
    return s, jax.tree.map(np.asarray, tr)


def _check_adpsgd(tr, rec, check_bytes=True):
    np.testing.assert_allclose(tr["time"], [r[1] for r in rec], rtol=1e-6, atol=1e-5)
    np.testing.assert_array_equal(tr["worker"], [r[3] for r in rec])
    np.testing.assert_array_equal(tr["version"], [r[2] for r in rec])
    np.testing.assert_allclose(tr["x"], np.stack([r[0] for r in rec]), rtol=2e-5, atol=2e-5)
    if check_bytes:
        np.testing.assert_allclose(tr["bytes_sent"], [r[4] for r in rec], rtol=1e-6)


RNG = np.random.default_rng(5)
X4 = RNG.normal(size=(4, 2))
C4 = RNG.normal(size=(4, 2)) * 2


@pytest.mark.parametrize("with_network,momentum", [(False, 0.0), (True, 0.0), (True, 0.9)],
                         ids=["plain", "network", "network_momentum"])
def test_ad_psgd_matches_numpy_event_simulation(with_network, momentum):
    calls, lr = 30, 0.1
    speeds = timing.per_worker(timing.fixed(1.0), jnp.array(N4_TIMES))
    net = network(latency=N4_LAT, bandwidth=N4_BW, model_bytes=8) if with_network else None
    tx = ad_psgd(optax.sgd(lr, momentum=momentum or None), 4, peers="ring", timing=speeds, network=net)
    _, tr = _scan_decentralized(tx, X4, C4, calls)
    rec = reference_adpsgd(N4_TIMES, [[1, 3], [2, 0], [3, 1], [0, 2]], X4, C4, calls, lr, momentum=momentum,
                           peer_time=_n4_peer_time if with_network else None, model_bytes=8)
    _check_adpsgd(tr, rec, check_bytes=with_network)    # without a network, model_bytes is not given
    # The first n - 1 calls only fill the pool.
    np.testing.assert_array_equal(tr["u"][:3], 0.0)
    np.testing.assert_array_equal(tr["dispatched"][:4], [0, 1, 2, 3])
    # Only the arriving worker and its peer move.
    moved = (np.abs(tr["u"][3:]).sum(-1) > 0).sum(-1)
    assert (moved == 2).all()
    if with_network:
        free = reference_adpsgd(N4_TIMES, [[1, 3], [2, 0], [3, 1], [0, 2]], X4, C4, calls, lr)
        assert rec[-1][1] > free[-1][1] + 0.5                     # exchanges delay the next jobs


def test_ad_psgd_exponential_peers_six_workers():
    n, calls, lr = 6, 36, 0.15
    rng = np.random.default_rng(7)
    x0, c = rng.normal(size=(n, 3)), rng.normal(size=(n, 3))
    times = [1.0, 1.23, 1.49, 1.71, 2.07, 2.39]
    speeds = timing.per_worker(timing.fixed(1.0), jnp.array(times))
    tx = ad_psgd(optax.sgd(lr), n, timing=speeds)                   # default peers: exponential
    _, tr = _scan_decentralized(tx, x0, c, calls)
    table = ref_exponential(n)
    assert table == [[1, 5, 3], [2, 0, 4], [3, 1, 5], [4, 2, 0], [5, 3, 1], [0, 4, 2]]
    rec = reference_adpsgd(times, table, x0, c, calls, lr)
    np.testing.assert_allclose(tr["x"], np.stack([r[0] for r in rec]), rtol=2e-5, atol=2e-5)
    np.testing.assert_array_equal(tr["worker"], [r[3] for r in rec])


def test_ad_psgd_bytes_per_exchange():
    tx = ad_psgd(optax.sgd(0.1), 4, peers="ring", timing=timing.per_worker(1.0, jnp.array(N4_TIMES)),
                 network=network(latency=0.01, model_bytes=8))
    s, tr = _scan_decentralized(tx, X4, C4, 12)
    assert float(s.bytes_sent) == 2 * 8 * int(s.version) and int(s.version) == 9


@pytest.mark.parametrize("law", ["fixed", "exponential"])
def test_ad_psgd_random_peers_are_other_workers(law):
    """Spec: "random": a uniform random other worker *each exchange*, whatever the compute-time law."""
    n = 4
    law = timing.per_worker(1.0, jnp.array(N4_TIMES)) if law == "fixed" else timing.exponential(1.0)
    tx = ad_psgd(optax.sgd(0.1), n, peers="random", timing=law, key=3)
    _, tr = _scan_decentralized(tx, X4, C4, 80)
    peers = []
    for t in range(n - 1, 80):
        moved = np.flatnonzero(np.abs(tr["u"][t]).sum(-1) > 0)
        i = int(tr["worker"][t])
        assert i in moved and len(moved) == 2
        peers.append((i, int(moved[moved != i][0])))
    for i in range(n):
        assert {j for a, j in peers if a == i} == set(range(n)) - {i}


# --- one worker: plain SGD ------------------------------------------------------------------------


@pytest.mark.parametrize("make", [lambda inner: ad_psgd(inner, 1, timing=2.0),
                                  lambda inner: dpsgd(inner, 1, timing=2.0)], ids=["ad_psgd", "dpsgd"])
def test_one_worker_is_plain_sgd(make):
    inner = optax.sgd(0.1, momentum=0.9)
    tx = make(inner)
    x = jnp.array([[1.0, -2.0, 0.5]])
    c = jnp.array([0.3, 0.2, -0.1])
    s = tx.init(x)
    ref, rs = x[0], inner.init(x[0])
    update = jax.jit(tx.update)
    for k in range(10):
        assert int(asgd_jax.next_worker(s)) == 0
        u, s = update(worker_params(s, x) - c, s, x)
        x = optax.apply_updates(x, u)
        ru, rs = inner.update(ref - c, rs, ref)
        ref = optax.apply_updates(ref, ru)
        np.testing.assert_allclose(x[0], ref, rtol=1e-6, atol=1e-7)
    assert int(s.version) == 10
    np.testing.assert_allclose(float(s.time), 20.0, rtol=1e-6)


# --- D-PSGD ---------------------------------------------------------------------------------------


def test_dpsgd_one_round_by_hand():
    # Ring of 4 (1/3 on self and both neighbours); x = 1, 2, 4, 8; targets 0, 1, -1, 2; lr 0.5.
    # W x = (8+1+2)/3, (1+2+4)/3, (2+4+8)/3, (4+8+1)/3; g = x - c = 1, 1, 5, 6;
    # x <- W x - g/2 = 19/6, 11/6, 13/6, 4/3.
    # Time: max compute 2 + gossip. Peer times (lat .1 .2 .3 .4, byte time .1 .05 .1 .2, 2 bytes):
    # (0,1) .5, (0,3) .9, (1,2) .7, (2,3) 1.1 -> worker sums 1.4, 1.2, 1.8, 2.0 -> gossip 2.0, round 4.0.
    net = network(latency=[0.1, 0.2, 0.3, 0.4], bandwidth=[10.0, 20.0, 10.0, 5.0], model_bytes=2)
    speeds = timing.per_worker(timing.fixed(1.0), jnp.array([1.0, 2.0, 1.5, 0.5]))
    tx = dpsgd(optax.sgd(0.5), 4, mixing="ring", timing=speeds, network=net)
    x = jnp.array([[1.0], [2.0], [4.0], [8.0]])
    c = jnp.array([[0.0], [1.0], [-1.0], [2.0]])
    s = tx.init(x)
    update = jax.jit(tx.update)
    for p in range(4):
        assert int(asgd_jax.next_worker(s)) == p
        np.testing.assert_array_equal(worker_params(s, x), x[p])
        u, s = update(x[p] - c[p], s, x)
        if p < 3:
            np.testing.assert_array_equal(u, 0.0)
            assert int(s.version) == 0 and float(s.time) == 0.0
        x = optax.apply_updates(x, u)
    np.testing.assert_allclose(x[:, 0], [19 / 6, 11 / 6, 13 / 6, 4 / 3], rtol=1e-6)
    np.testing.assert_allclose(float(s.time), 4.0, rtol=1e-6)
    assert int(s.version) == 1
    np.testing.assert_allclose(float(s.bytes_sent), 8 * 2)          # degrees 2 each, 2 bytes
    # Without a network: the round lasts the slowest worker.
    tx0 = dpsgd(optax.sgd(0.5), 4, mixing="ring", timing=speeds)
    x0 = jnp.array([[1.0], [2.0], [4.0], [8.0]])
    s0 = tx0.init(x0)
    for p in range(4):
        u, s0 = tx0.update(x0[p] - c[p], s0, x0)
    np.testing.assert_allclose(optax.apply_updates(x0, u)[:, 0], [19 / 6, 11 / 6, 13 / 6, 4 / 3], rtol=1e-6)
    np.testing.assert_allclose(float(s0.time), 2.0, rtol=1e-6)


def reference_dpsgd(w, x0, targets, rounds, lr, round_time):
    x, out = np.array(x0, np.float64), []
    for r in range(rounds):
        x = w @ x - lr * (x - targets)
        out.append((x.copy(), (r + 1) * round_time))
    return out


@pytest.mark.parametrize("mixing", ["ring", "torus", "complete", "array"])
def test_dpsgd_rounds_match_numpy(mixing):
    n = 9
    rng = np.random.default_rng(11)
    x0, c = rng.normal(size=(n, 2)), rng.normal(size=(n, 2))
    if mixing == "array":
        w = 0.5 * np.eye(n) + 0.5 * ref_ring(n)                     # lazy ring
        arg = w
    else:
        w = {"ring": ref_ring, "torus": ref_torus, "complete": lambda n: np.full((n, n), 1 / n)}[mixing](n)
        arg = mixing
    lat = np.linspace(0.01, 0.09, n)
    net = network(latency=lat, model_bytes=4)
    gossip = max(sum(lat[i] + lat[j] for j in range(n) if j != i and w[i, j] > 0) for i in range(n))
    degrees = sum(int(((w[i] > 0) & (np.arange(n) != i)).sum()) for i in range(n))
    tx = dpsgd(optax.sgd(0.2), n, mixing=arg, timing=1.5, network=net)
    s, tr = _scan_decentralized(tx, x0, c, 3 * n)
    rec = reference_dpsgd(w, x0, c, 3, 0.2, 1.5 + gossip)
    for r in range(3):
        np.testing.assert_allclose(tr["x"][(r + 1) * n - 1], rec[r][0], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(tr["time"][(r + 1) * n - 1], rec[r][1], rtol=1e-5)
        np.testing.assert_array_equal(tr["dispatched"][r * n:(r + 1) * n], np.arange(n))
    assert int(s.version) == 3
    np.testing.assert_allclose(float(s.bytes_sent), 3 * degrees * 4, rtol=1e-6)


# --- jit and vmap over learning rates -------------------------------------------------------------


def _train(make, lr, calls, x0, c):
    tx = make(optax.inject_hyperparams(optax.sgd)(learning_rate=lr))
    s, x = tx.init(x0), x0

    def body(carry, _):
        x, s = carry
        u, s = tx.update(worker_params(s, x) - c[asgd_jax.next_worker(s)], s, x)
        return (optax.apply_updates(x, u), s), None

    (x, s), _ = jax.lax.scan(body, (x, s), None, length=calls)
    return x, s.time, s.version


@pytest.mark.parametrize("make", [
    lambda inner: ad_psgd(inner, 4, peers="exponential", timing=timing.per_worker(1.0, jnp.array(N4_TIMES)),
                          network=network(latency=N4_LAT, model_bytes=8)),
    lambda inner: ad_psgd(inner, 4, peers="random", timing=timing.exponential(1.0), key=2),
    lambda inner: dpsgd(inner, 4, mixing="ring", timing=timing.exponential(1.0), key=1,
                        network=network(latency=0.1, bandwidth=100.0, model_bytes=8)),
], ids=["ad_psgd", "ad_psgd_random", "dpsgd"])
def test_vmap_over_learning_rates_equals_one_by_one(make):
    x0 = jnp.asarray(X4, jnp.float32)
    c = jnp.asarray(C4, jnp.float32)
    lrs = jnp.array([0.02, 0.1, 0.3])
    batched = jax.jit(jax.vmap(lambda lr: _train(make, lr, 24, x0, c)))(lrs)
    one = jax.jit(lambda lr: _train(make, lr, 24, x0, c))
    for k in range(3):
        got = one(lrs[k])
        np.testing.assert_allclose(batched[0][k], got[0], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(batched[1][k], got[1], rtol=1e-6)
        assert int(batched[2][k]) == int(got[2])
    assert not np.allclose(batched[0][0], batched[0][2])
    # The same configuration eagerly (no jit) gives the same parameters.
    eager = _train(make, 0.1, 24, x0, c)
    np.testing.assert_allclose(eager[0], batched[0][1], rtol=1e-5, atol=1e-6)


def test_module_exports():
    for name in ("ad_psgd", "dpsgd", "mixing_matrix", "peer_table", "average_model", "consensus_distance",
                 "worker_params"):
        assert callable(getattr(decentralized, name))
