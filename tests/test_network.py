"""Tests for asgd_jax.network: message times and communication at the parameter server.

Independent references (spec: issue #15, "communication and decentralized systems"): message times
worked out by hand; a plain-Python float64 event simulator of ``asynchronous(..., network=...)`` (pull at
dispatch, pushes served FIFO at pop on the server's one link), checked on the spec's hand-worked
2-worker example and on a 3-worker case worked out by hand; plain SGD in float64 on the arriving
gradients; round times of ``synchronous(..., network=...)`` worked out by hand.
"""

from __future__ import annotations

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import asgd_jax
from asgd_jax import network as network_lib
from asgd_jax import timing
from asgd_jax.network import (network, peer_message_time, ring_allreduce_time, server_message_time,
                              tree_bytes)

SPEEDS3 = timing.per_worker(timing.fixed(1.0), jnp.array([1.0, 2.0, 3.0]))
TARGETS3 = np.array([1.0, -2.0, 3.0])   # worker i's loss (x - TARGETS3[i])^2 / 2


# --- message times, by hand -----------------------------------------------------------------------


def test_network_fields():
    net = network(latency=[0.1, 0.2], bandwidth=[4.0, float("inf")], server_latency=0.3,
                  server_bandwidth=2.0, model_bytes=12)
    np.testing.assert_allclose(net.latency, [0.1, 0.2], rtol=1e-6)
    np.testing.assert_allclose(net.byte_time, [0.25, 0.0], rtol=1e-6)       # 1 / bandwidth, inf -> 0
    np.testing.assert_allclose(net.server_latency, 0.3, rtol=1e-6)
    np.testing.assert_allclose(net.server_byte_time, 0.5, rtol=1e-6)
    np.testing.assert_allclose(net.model_bytes, 12.0)
    default = network()
    assert float(default.latency) == 0.0 and float(default.byte_time) == 0.0
    assert float(default.server_latency) == 0.0 and float(default.server_byte_time) == 0.0
    assert math.isnan(float(default.model_bytes))                              # "take it from params"
    for leaf in jax.tree.leaves(net):
        assert leaf.dtype == jnp.float32


def test_server_message_time_by_hand():
    # Per-worker links: latency [0.1, 0.2, 0.3], bandwidth [100, 50, 200]; server: 0.05, 80; 4 bytes.
    # w: lat[w] + 0.05 + 4 * max(1/bw[w], 1/80) = 0.1+0.05+0.05, 0.2+0.05+0.08, 0.3+0.05+0.05.
    net = network(latency=[0.1, 0.2, 0.3], bandwidth=[100.0, 50.0, 200.0], server_latency=0.05,
                  server_bandwidth=80.0, model_bytes=4)
    for w, want in enumerate([0.2, 0.33, 0.4]):
        np.testing.assert_allclose(server_message_time(net, w), want, rtol=1e-6)
    # Scalar fields: the same link for every worker.
    net = network(latency=0.5, bandwidth=10.0, server_latency=0.25, server_bandwidth=20.0, model_bytes=3)
    for w in range(3):
        np.testing.assert_allclose(server_message_time(net, w), 0.5 + 0.25 + 3 * 0.1, rtol=1e-6)
    # Infinite bandwidth everywhere: only latencies.
    net = network(latency=0.5, model_bytes=1e6)
    np.testing.assert_allclose(server_message_time(net, 0), 0.5, rtol=1e-6)


def test_peer_message_time_by_hand():
    # latency [0.1, 0.2, 0.3, 0.4], bandwidth [10, 20, 10, 5] (byte time .1, .05, .1, .2), 2 bytes.
    net = network(latency=[0.1, 0.2, 0.3, 0.4], bandwidth=[10.0, 20.0, 10.0, 5.0], model_bytes=2,
                  server_latency=7.0, server_bandwidth=0.001)    # the server's link plays no part
    by_hand = {(0, 1): 0.3 + 0.2, (1, 0): 0.3 + 0.2, (0, 3): 0.5 + 0.4, (1, 2): 0.5 + 0.2,
               (2, 3): 0.7 + 0.4, (1, 3): 0.6 + 0.4, (0, 2): 0.4 + 0.2}
    for (i, j), want in by_hand.items():
        np.testing.assert_allclose(peer_message_time(net, i, j), want, rtol=1e-6)
    net = network(latency=0.25, bandwidth=8.0, model_bytes=4)
    np.testing.assert_allclose(peer_message_time(net, 0, 1), 0.25 + 0.25 + 0.5, rtol=1e-6)


def test_ring_allreduce_time_by_hand():
    # n = 3 ring 0 -> 1 -> 2 -> 0, 12 bytes, chunks of 4 bytes; latency [.2, .4, .1], bandwidth [4, 6, 12]:
    # link (0,1): .6 + 4 * .25 = 1.6; (1,2): .5 + 4/6; (2,0): .3 + 4 * .25 = 1.3 -> 2 * 2 * 1.6 = 6.4.
    net = network(latency=[0.2, 0.4, 0.1], bandwidth=[4.0, 6.0, 12.0], model_bytes=12)
    np.testing.assert_allclose(ring_allreduce_time(net, 3), 6.4, rtol=1e-6)
    # n = 2: 2 steps over the link (0, 1): 2 * (.2 + .4 + 6 * max(.25, 1/6)) = 2 * 2.1.
    np.testing.assert_allclose(ring_allreduce_time(net, 2), 4.2, rtol=1e-6)
    # n = 1: no communication.
    assert float(ring_allreduce_time(net, 1)) == 0.0
    # Scalar fields: 2(n-1) * (2 lat + bytes/n * byte_time); n = 4: 6 * (0.2 + 2 * 0.5) = 7.2.
    net = network(latency=0.1, bandwidth=2.0, model_bytes=8)
    np.testing.assert_allclose(ring_allreduce_time(net, 4), 7.2, rtol=1e-6)


def test_message_times_under_jit():
    net = network(latency=[0.1, 0.2, 0.3], bandwidth=[100.0, 50.0, 200.0], server_latency=0.05,
                  server_bandwidth=80.0, model_bytes=4)
    f = jax.jit(lambda net, w: (server_message_time(net, w), peer_message_time(net, w, (w + 1) % 3)))
    s, p = f(net, jnp.int32(1))
    np.testing.assert_allclose(s, 0.33, rtol=1e-6)
    np.testing.assert_allclose(p, 0.5 + 4 * 0.02, rtol=1e-6)


def test_tree_bytes():
    tree = {"a": jnp.zeros((2, 3), jnp.float32), "b": [jnp.zeros(5, jnp.int8)], "c": jnp.zeros(4, jnp.bfloat16),
            "d": None}
    assert tree_bytes(tree) == 24 + 5 + 8
    assert tree_bytes(jnp.zeros(())) == 4
    assert tree_bytes({}) == 0


def test_tree_bytes_numpy_leaves_keep_their_itemsize():
    """Spec: sum of leaf sizes * itemsize (network(): 'sum of leaf nbytes'); a NumPy float64 leaf has 8."""
    assert tree_bytes({"a": np.zeros(3, np.float64), "b": np.zeros(2, np.int16)}) == 24 + 4


@pytest.mark.parametrize("kwargs", [
    dict(bandwidth=-1.0), dict(bandwidth=0.0), dict(latency=-0.1), dict(latency=float("nan")),
    dict(bandwidth=float("nan")), dict(bandwidth=[1.0, 0.0]), dict(latency=[0.1, -0.2]),
    dict(server_bandwidth=0.0), dict(server_bandwidth=-3.0), dict(server_latency=-1.0),
    dict(server_latency=float("nan")), dict(server_bandwidth=float("nan")),
], ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()))
def test_network_refuses_bad_values(kwargs):
    with pytest.raises(ValueError):
        network(**kwargs)


# --- the parameter server's link: a float64 reference ---------------------------------------------


def reference_ps(n, compute, msg, calls, *, lr=0.0, x0=0.0, targets=None, model_bytes=1.0,
                 check_ties=True):
    """Plain-Python event simulation of asynchronous(..., network=...), pure rule, fixed compute times.

    ``compute[w]``, ``msg[w]``: worker w's compute time and server message time. Per call: pull to the
    dispatched worker on the one server link (``s = max(now, link_free)``), compute from
    ``max(link_free, end of its previous job)``; once ``n`` jobs are in flight, the earliest ready
    (ties: earliest dispatched) pops and its push is served FIFO at ``max(ready, link_free)``; the clock
    moves to the push's end. The server applies ``x <- x - lr * (x_dispatch - targets[w])`` per arrival.
    Returns one record per call: (time, version, last_worker, last_staleness, bytes_sent, x).
    """
    now, link_free, version, sent = 0.0, 0.0, 0, 0.0
    busy = [0.0] * n
    jobs = []                        # dicts: ready, seq, version, worker, x
    last_worker, last_staleness = -1, -1
    x, nxt, out = float(x0), 0, []
    for t in range(calls):
        w = nxt
        s = max(now, link_free)
        link_free = s + msg[w]
        sent += model_bytes
        start = max(link_free, busy[w])
        busy[w] = start + compute[w]
        jobs.append(dict(ready=busy[w], seq=t, version=version, worker=w, x=x))
        if len(jobs) >= n:
            job = min(jobs, key=lambda j: (j["ready"], j["seq"]))
            others = [j["ready"] for j in jobs if j is not job]
            assert not check_ties or all(abs(r - job["ready"]) > 1e-4 for r in others), "near tie"
            jobs.remove(job)
            s = max(job["ready"], link_free)
            link_free = s + msg[job["worker"]]
            sent += model_bytes
            now = link_free
            last_worker, last_staleness = job["worker"], version - job["version"]
            if targets is not None:
                x = x - lr * (job["x"] - targets[job["worker"]])
            version += 1
        busy_ids = {j["worker"] for j in jobs}
        nxt = min(i for i in range(n) if i not in busy_ids)      # pure rule: lowest-id idle worker
        out.append((now, version, last_worker, last_staleness, sent, x))
    return out


def test_reference_reproduces_spec_example():
    rec = reference_ps(2, [1.0, 1.0], [0.5, 0.5], 4)
    assert [r[0] for r in rec] == [0.0, 2.0, 3.0, 4.0]
    assert [r[2] for r in rec] == [-1, 0, 1, 0]


def _run(tx, calls, targets, x0=0.0):
    """``calls`` jitted update calls on the scalar quadratic; a per-call trace."""

    def body(carry, _):
        x, s = carry
        i = asgd_jax.next_worker(s)
        u, s = tx.update(x - jnp.asarray(targets, jnp.float32)[i], s, x)
        x = optax.apply_updates(x, u)
        return (x, s), dict(x=x, time=s.time, version=s.version, worker=s.last_worker,
                            staleness=s.last_staleness, bytes_sent=s.bytes_sent, dispatched=i)

    x0 = jnp.asarray(x0, jnp.float32)
    (x, s), tr = jax.jit(lambda: jax.lax.scan(body, (x0, tx.init(x0)), None, length=calls))()
    return s, jax.tree.map(np.asarray, tr)


def _check_against(tr, rec):
    np.testing.assert_allclose(tr["time"], [r[0] for r in rec], rtol=1e-6, atol=1e-5)
    np.testing.assert_array_equal(tr["version"], [r[1] for r in rec])
    np.testing.assert_array_equal(tr["worker"], [r[2] for r in rec])
    np.testing.assert_array_equal(tr["staleness"], [r[3] for r in rec])
    np.testing.assert_allclose(tr["bytes_sent"], [r[4] for r in rec], rtol=1e-6)


@pytest.mark.parametrize("make", ["asynchronous", "parameter_server"])
def test_ps_spec_hand_worked_two_workers(make):
    """The spec's example: fixed compute 1.0, every message 0.5 -> times 2.0, 3.0, 4.0."""
    net = network(latency=0.5)
    if make == "asynchronous":
        tx = asgd_jax.asynchronous(optax.sgd(0.1), 2, timing=1.0, network=net)
    else:
        tx = asgd_jax.parameter_server(optax.sgd(0.1), 2, timing=1.0, network=net)
    update = jax.jit(tx.update)
    s, x, times, workers = tx.init(jnp.zeros(())), jnp.zeros(()), [], []
    for _ in range(4):
        u, s = update(jnp.ones(()), s, x)
        times.append(float(s.time))
        workers.append(int(s.last_worker))
    assert times == [0.0, 2.0, 3.0, 4.0]
    assert workers == [-1, 0, 1, 0]
    # model_bytes taken from the parameters (a float32 scalar: 4 bytes); 4 pulls + 3 pushes.
    assert float(s.bytes_sent) == 7 * 4
    rec = reference_ps(2, [1.0, 1.0], [0.5, 0.5], 4, model_bytes=4)
    assert [r[0] for r in rec] == times and rec[-1][4] == float(s.bytes_sent)


NET3 = dict(latency=[0.1, 0.2, 0.3], bandwidth=[100.0, 50.0, 200.0], server_latency=0.05,
            server_bandwidth=80.0)
MSG3 = [0.2, 0.33, 0.4]    # server_message_time of NET3 with 4 bytes (test_server_message_time_by_hand)


def test_ps_three_workers_hand_worked():
    # By hand (compute 1, 2, 3; messages .2, .33, .4):
    # call 0: pull w0 [0, .2], ready 1.2; call 1: pull w1 [.2, .53], ready 2.53;
    # call 2: pull w2 [.53, .93], ready 3.93; w0 pops, push [1.2, 1.4] -> 1.4 (staleness 0)
    # call 3: pull w0 [1.4, 1.6], ready 2.6; w1 pops (2.53), push [2.53, 2.86] -> 2.86 (staleness 1)
    # call 4: pull w1 [2.86, 3.19], ready 5.19; w0 pops (2.6), push [3.19, 3.39] -> 3.39 (staleness 1)
    # call 5: pull w0 [3.39, 3.59], ready 4.59; w2 pops (3.93), push [3.93, 4.33] -> 4.33 (staleness 3)
    # call 6: pull w2 [4.33, 4.73], ready 7.73; w0 pops (4.59), push [4.73, 4.93] -> 4.93 (staleness 1)
    by_hand_time = [0, 0, 1.4, 2.86, 3.39, 4.33, 4.93]
    by_hand_worker = [-1, -1, 0, 1, 0, 2, 0]
    by_hand_staleness = [-1, -1, 0, 1, 1, 3, 1]
    rec = reference_ps(3, [1.0, 2.0, 3.0], MSG3, 7, model_bytes=4)
    np.testing.assert_allclose([r[0] for r in rec], by_hand_time, rtol=1e-12, atol=1e-12)
    assert [r[2] for r in rec] == by_hand_worker and [r[3] for r in rec] == by_hand_staleness

    tx = asgd_jax.asynchronous(optax.sgd(0.1), 3, timing=SPEEDS3, network=network(**NET3, model_bytes=4))
    s, tr = _run(tx, 7, TARGETS3)
    np.testing.assert_allclose(tr["time"], by_hand_time, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(tr["worker"], by_hand_worker)
    np.testing.assert_array_equal(tr["staleness"], by_hand_staleness)
    np.testing.assert_array_equal(tr["dispatched"], [0, 1, 2, 0, 1, 0, 2])
    np.testing.assert_allclose(tr["bytes_sent"], 4 * np.array([1, 2, 4, 6, 8, 10, 12]))


def test_ps_three_workers_match_reference_and_train():
    """40 calls: times, staleness, bytes and the parameters against the float64 reference."""
    calls, lr = 40, 0.1
    tx = asgd_jax.asynchronous(optax.sgd(lr), 3, timing=SPEEDS3, network=network(**NET3))  # bytes from params
    s, tr = _run(tx, calls, TARGETS3, x0=0.5)
    rec = reference_ps(3, [1.0, 2.0, 3.0], MSG3, calls, lr=lr, x0=0.5, targets=TARGETS3, model_bytes=4)
    _check_against(tr, rec)
    np.testing.assert_allclose(tr["x"], [r[5] for r in rec], rtol=1e-5, atol=1e-6)
    # Communication slows the system: the same calls without a network end earlier.
    rec0 = reference_ps(3, [1.0, 2.0, 3.0], [0.0] * 3, calls, check_ties=False)
    assert rec[-1][0] > rec0[-1][0] + 1.0


def test_ps_twenty_calls_training_slow_link():
    """A slow server link (messages longer than compute) reorders arrivals; the parameters still match."""
    net = network(latency=[0.71, 0.23, 0.47], server_latency=0.3, model_bytes=4)
    msg = [1.01, 0.53, 0.77]
    tx = asgd_jax.asynchronous(optax.sgd(0.2), 3, timing=SPEEDS3, network=net)
    s, tr = _run(tx, 20, TARGETS3, x0=-1.0)
    rec = reference_ps(3, [1.0, 2.0, 3.0], msg, 20, lr=0.2, x0=-1.0, targets=TARGETS3, model_bytes=4)
    _check_against(tr, rec)
    # The link, not compute, sets the pace: round robin (without a network: 0, 1, 0, 2, 0, 1, ...).
    np.testing.assert_array_equal(tr["worker"][2:], np.arange(18) % 3)
    np.testing.assert_allclose(tr["x"], [r[5] for r in rec], rtol=1e-5, atol=1e-6)


def test_zero_cost_network_is_exactly_asynchronous():
    calls = 30
    law = timing.exponential(1.0)
    plain = asgd_jax.asynchronous(optax.sgd(0.1), 3, timing=law, key=4)
    free = asgd_jax.asynchronous(optax.sgd(0.1), 3, timing=law, key=4, network=network())
    s0, tr0 = _run_plain(plain, calls)
    s1, tr1 = _run(free, calls, TARGETS3, x0=0.5)
    np.testing.assert_array_equal(tr1["time"], tr0["time"])
    np.testing.assert_array_equal(tr1["x"], tr0["x"])
    np.testing.assert_array_equal(tr1["worker"], tr0["worker"])
    np.testing.assert_array_equal(tr1["staleness"], tr0["staleness"])
    assert len(set(np.diff(tr0["time"][2:]).round(6).tolist())) > 5      # really random times
    assert float(s1.bytes_sent) == 4 * (calls + calls - 2)


def _run_plain(tx, calls):
    """Like :func:`_run` for a state without ``bytes_sent``."""

    def body(carry, _):
        x, s = carry
        i = asgd_jax.next_worker(s)
        u, s = tx.update(x - jnp.asarray(TARGETS3, jnp.float32)[i], s, x)
        x = optax.apply_updates(x, u)
        return (x, s), dict(x=x, time=s.time, worker=s.last_worker, staleness=s.last_staleness)

    x0 = jnp.asarray(0.5, jnp.float32)
    (x, s), tr = jax.jit(lambda: jax.lax.scan(body, (x0, tx.init(x0)), None, length=calls))()
    return s, jax.tree.map(np.asarray, tr)


# --- synchronous with communication ---------------------------------------------------------------


def reference_sync_server(compute, msg, rounds, used):
    """Round end times of synchronous(..., communication="server"): pulls 0..M-1 in order, then the first
    ``used`` ready jobs' pushes FIFO (ready order, ties lower id) on the same link."""
    now, ends = 0.0, []
    m = len(compute)
    for _ in range(rounds):
        t, ready = now, []
        for p in range(m):
            t += msg[p]
            ready.append((t + compute[p], p))
        link_free = t
        for r, p in sorted(ready)[:used]:
            link_free = max(r, link_free) + msg[p]
        now = link_free
        ends.append(now)
    return ends


def _sync_run(tx, rounds, m, w0, grads_of):
    s, w = tx.init(w0), w0
    update = jax.jit(tx.update)
    times, ws, sent = [], [], []
    for _ in range(rounds):
        for p in range(m):
            assert int(asgd_jax.next_worker(s)) == p
            u, s = update(grads_of(w, p), s, w)
            w = optax.apply_updates(w, u)
        times.append(float(s.time))
        ws.append(np.asarray(w))
        sent.append(float(getattr(s, "bytes_sent", 0.0)))
    return times, ws, sent, s


C3 = jnp.array([[1.0, 0.0], [-1.0, 2.0], [0.5, 0.5]])   # worker p's loss ||w - C3[p]||^2 / 2


def test_sync_server_hand_worked():
    # Compute [3, .5, 1]; messages lat [.2, .4, .1] + server .1 = [.3, .5, .2]; 10 bytes.
    # Pulls: w0 gets it at .3, w1 at .8, w2 at 1.0 -> ready 3.3, 1.3, 2.0; link free at 1.0.
    # Pushes in ready order: w1 [1.3, 1.8], w2 [2.0, 2.2], w0 [3.3, 3.6] -> the round ends at 3.6.
    # With one backup worker (N = 2): the step happens at 2.2.
    net = network(latency=[0.2, 0.4, 0.1], server_latency=0.1, model_bytes=10)
    compute = [3.0, 0.5, 1.0]
    speeds = timing.per_worker(timing.fixed(1.0), jnp.array(compute))
    assert reference_sync_server(compute, [0.3, 0.5, 0.2], 2, 3) == pytest.approx([3.6, 7.2])
    assert reference_sync_server(compute, [0.3, 0.5, 0.2], 2, 2) == pytest.approx([2.2, 4.4])
    lr = 0.3
    grads_of = lambda w, p: w - C3[p]
    w0 = jnp.array([2.0, -1.0])
    for b, by_hand in ((0, [3.6, 7.2, 10.8]), (1, [2.2, 4.4, 6.6])):
        tx = asgd_jax.synchronous(optax.sgd(lr), 3, backup_workers=b, timing=speeds, network=net,
                                  communication="server")
        times, ws, sent, _ = _sync_run(tx, 3, 3, w0, grads_of)
        np.testing.assert_allclose(times, by_hand, rtol=1e-6)
        np.testing.assert_allclose(sent, 10 * (3 + 3 - b) * np.arange(1, 4))
        # Parameters: plain SGD on the average of the winners' gradients (the 3 - b first ready: w1, w2, w0).
        w = np.array([2.0, -1.0])
        winners = [1, 2, 0][:3 - b]
        for r in range(3):
            w = w - lr * np.mean([w - np.asarray(C3[p], np.float64) for p in winners], 0)
            np.testing.assert_allclose(ws[r], w, rtol=1e-5, atol=1e-6)


def test_sync_server_link_queue_hand_worked():
    # Messages longer than compute: M = 3, compute .5 each, messages 1.0 each.
    # Pulls end at 1, 2, 3 -> ready 1.5, 2.5, 3.5; pushes queue behind the last pull: [3, 4], [4, 5], [5, 6].
    net = network(latency=1.0, model_bytes=2)
    tx = asgd_jax.synchronous(optax.sgd(0.1), 3, timing=0.5, network=net, communication="server")
    times, _, sent, _ = _sync_run(tx, 2, 3, jnp.zeros(2), lambda w, p: w - C3[p])
    np.testing.assert_allclose(times, [6.0, 12.0], rtol=1e-6)
    assert reference_sync_server([0.5] * 3, [1.0] * 3, 2, 3) == pytest.approx([6.0, 12.0])
    np.testing.assert_allclose(sent, [12.0, 24.0])


def test_sync_allreduce_hand_worked():
    # Compute [3, .5, 1]: the slowest is ready at now + 3; ring allreduce of 12 bytes with latency
    # [.2, .4, .1], bandwidth [4, 6, 12]: 6.4 (test_ring_allreduce_time_by_hand) -> rounds of 9.4.
    net = network(latency=[0.2, 0.4, 0.1], bandwidth=[4.0, 6.0, 12.0], model_bytes=12)
    speeds = timing.per_worker(timing.fixed(1.0), jnp.array([3.0, 0.5, 1.0]))
    lr = 0.2
    tx = asgd_jax.synchronous(optax.sgd(lr), 3, timing=speeds, network=net, communication="allreduce")
    times, ws, sent, _ = _sync_run(tx, 3, 3, jnp.array([2.0, -1.0]), lambda w, p: w - C3[p])
    np.testing.assert_allclose(times, [9.4, 18.8, 28.2], rtol=1e-6)
    np.testing.assert_allclose(sent, 2 * 2 * 12 * np.arange(1, 4))
    w = np.array([2.0, -1.0])
    for r in range(3):
        w = w - lr * np.mean([w - np.asarray(C3[p], np.float64) for p in range(3)], 0)
        np.testing.assert_allclose(ws[r], w, rtol=1e-5, atol=1e-6)
    # Two workers: 2 steps over link (0, 1): 2 * (.6 + 6 * .25) = 4.2 after the slower's 3.0.
    speeds2 = timing.per_worker(timing.fixed(1.0), jnp.array([3.0, 0.5]))
    net2 = network(latency=[0.2, 0.4], bandwidth=[4.0, 6.0], model_bytes=12)
    tx = asgd_jax.synchronous(optax.sgd(lr), 2, timing=speeds2, network=net2, communication="allreduce")
    times, _, sent, _ = _sync_run(tx, 2, 2, jnp.array([2.0, -1.0]), lambda w, p: w - C3[p])
    np.testing.assert_allclose(times, [7.2, 14.4], rtol=1e-6)
    np.testing.assert_allclose(sent, [24.0, 48.0])


def test_sync_allreduce_refuses_backup_workers():
    with pytest.raises(ValueError):
        asgd_jax.synchronous(optax.sgd(0.1), 3, backup_workers=1, network=network(latency=0.1),
                             communication="allreduce")


def test_sync_without_or_with_free_network_is_unchanged():
    speeds = timing.per_worker(timing.fixed(1.0), jnp.array([3.0, 0.5, 1.0]))
    plain = asgd_jax.synchronous(optax.sgd(0.2), 3, timing=speeds)
    times0, ws0, _, _ = _sync_run(plain, 3, 3, jnp.array([2.0, -1.0]), lambda w, p: w - C3[p])
    np.testing.assert_array_equal(times0, [3.0, 6.0, 9.0])          # today's: the slowest worker
    for comm in ("server", "allreduce"):
        tx = asgd_jax.synchronous(optax.sgd(0.2), 3, timing=speeds, network=network(), communication=comm)
        times, ws, _, _ = _sync_run(tx, 3, 3, jnp.array([2.0, -1.0]), lambda w, p: w - C3[p])
        np.testing.assert_array_equal(times, times0)
        np.testing.assert_array_equal(np.stack(ws), np.stack(ws0))
