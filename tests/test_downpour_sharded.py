"""Downpour SGD with a sharded server, and replica failures (issue #16).

Independent references: times worked by hand for ``timing.failing`` under ASGD and SSGD; a plain-Python
float64 event simulation of Downpour written from the paper's client and the spec (a heap of step ends,
shard arrivals and fetch reads; per-shard SGD / Adagrad in NumPy; ties: messages before step ends, in
send order); a push's contents and the local steps worked by hand; ``asgd_jax.asynchronous`` for the
one-shard, fetch-and-push-every-step case.
"""

from __future__ import annotations

import heapq

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import asgd_jax
from asgd_jax import timing
from asgd_jax.downpour import downpour, replica_params, shard_bounds
from asgd_jax.network import network

# --- timing.failing: hand-worked times ------------------------------------------------------------------

FAIL = timing.failing(1.0, worker=2, fail_at=2.5, return_at=10.0)


def _run(tx, calls):
    s, seen = tx.init(jnp.zeros(1)), []
    for _ in range(calls):
        _, s = tx.update(jnp.ones(1), s)
        seen.append((int(s.last_worker), float(s.time), int(s.last_staleness)))
    return s, seen


def test_failing_asgd_trains_on_and_the_lost_job_arrives_after_the_return():
    # 3 workers, time 1. Calls 3-8: w0, w1, w2 arrive at 1, then at 2 (staleness 0, 1, 2 then 2, 2, 2).
    # Call 9 dispatches w2 at 2: it would end at 3 > 2.5, so it is redone from 10 and ends at 11. Until
    # then w0 and w1 alternate at 3, 3, 4, 4, ..., 10, 10 with staleness 1 (only two jobs cycle). At 11
    # three jobs tie; w2's was dispatched first (call 9, at version 6) and arrives at version 22: tau 16.
    _, seen = _run(asgd_jax.asynchronous(optax.sgd(0.1), 3, timing=FAIL), 26)
    assert seen[2:8] == [(0, 1.0, 0), (1, 1.0, 1), (2, 1.0, 2), (0, 2.0, 2), (1, 2.0, 2), (2, 2.0, 2)]
    assert seen[8:10] == [(0, 3.0, 2), (1, 3.0, 2)]
    assert seen[10:24] == [(w, float(t), 1) for t in range(4, 11) for w in (0, 1)]
    assert seen[24] == (2, 11.0, 16)


def test_failing_for_good_asgd_goes_on_with_two_workers():
    s, seen = _run(asgd_jax.asynchronous(optax.sgd(0.1), 3, timing=timing.failing(1.0, 2, 2.5)), 40)
    assert all(w in (0, 1) for w, _, _ in seen[8:]) and seen[-1][1] == 18.0    # two arrivals per time unit
    assert int(s.version) == 38 and np.isinf(float(s.events.busy_until[2]))


def test_failing_ssgd_stalls_until_the_worker_returns():
    times = [t for _, t, _ in _run(asgd_jax.synchronous(optax.sgd(0.1), 3, timing=FAIL), 15)[1]]
    assert times[2::3] == [1.0, 2.0, 11.0, 12.0, 13.0]       # the third round waits for 10 + 1
    times = [t for _, t, _ in _run(asgd_jax.synchronous(optax.sgd(0.1), 3, timing=timing.failing(1.0, 2, 2.5)),
                                   12)[1]]
    assert times[2::3][:2] == [1.0, 2.0] and all(np.isinf(t) for t in times[8:])


def test_failing_sample_at_by_hand_and_nested():
    k, w = jax.random.key(0), jnp.arange(3)
    at = lambda m, now: m.sample_at(k, w, 3, now).tolist()
    assert at(FAIL, 1.5) == [1.0, 1.0, 1.0]          # ends at 2.5: done just in time
    assert at(FAIL, 5.0) == [1.0, 1.0, 6.0]          # started while down: 10 + 1 - 5
    assert at(FAIL, 10.0) == [1.0, 1.0, 1.0]         # back
    both = timing.failing(FAIL, worker=0, fail_at=0.5, return_at=3.0)
    assert at(both, 0.0) == [4.0, 1.0, 1.0]
    assert at(timing.failing(2.0, 1, 0.0), 0.0)[1] == float("inf")
    np.testing.assert_allclose(at(FAIL, 1.6), [1.0, 1.0, 9.4], rtol=1e-6)
    f = jax.jit(lambda back: timing.failing(1.0, 2, 2.5, back).sample_at(k, w, 3, 2.0))
    assert f(20.0).tolist() == [1.0, 1.0, 19.0]
    assert not FAIL.is_random and timing.failing(timing.exponential(1.0), 0, 1.0).is_random


@pytest.mark.parametrize("make, match", [
    (lambda: timing.failing(1.0, 0, -1.0), "fail_at"),
    (lambda: timing.failing(1.0, 0, 5.0, 2.0), "before it fails"),
    (lambda: timing.failing(1.0, -1, 1.0), r"failing\(worker\) must be >= 0"),
    (lambda: timing.failing(1.0, 0, 1.0, float("nan")), "return_at"),
    (lambda: asgd_jax.asynchronous(optax.sgd(0.1), 3, timing=timing.failing(1.0, 3, 1.0)), "names no worker"),
    (lambda: downpour(optax.sgd(0.1), 2, timing=timing.failing(1.0, 5, 1.0)), "names no worker"),
    (lambda: downpour(optax.sgd(0.1), 2, n_push=0), "n_push"),
    (lambda: downpour(optax.sgd(0.1), 2, n_fetch=0), "n_fetch"),
    (lambda: downpour(optax.sgd(0.1), 2, shards=4).init(jnp.zeros(3)), "shards=4"),
    (lambda: downpour(optax.sgd(0.1), 2, shards=[1, 1]).init(jnp.zeros(3)), "sum to"),
    (lambda: downpour(optax.sgd(0.1), 2, shard_latency=1.0), "need a network"),
    (lambda: downpour(optax.sgd(0.1), 2, shards=2, network=network(), shard_latency=[1.0, 2.0, 3.0]), "one per shard"),
    (lambda: downpour(optax.sgd(0.1), 2, local_learning_rate=-1.0), "local_learning_rate"),
])
def test_bad_input_one_line(make, match):
    with pytest.raises(ValueError, match=match) as e:
        make()
    assert "\n" not in str(e.value)


# --- the reference: a plain-Python event simulation of Downpour ----------------------------------------


class Sgd:
    def __init__(self, lr, size):
        self.lr = lr

    def step(self, x, g):
        return x - self.lr * g


class Adagrad:
    def __init__(self, lr, size):
        self.lr, self.sos = lr, np.full(size, 0.1)

    def step(self, x, g):
        self.sos = self.sos + g * g
        return x - self.lr * g / np.sqrt(self.sos + 1e-7)


def reference(R, finish, grad, x0, sizes, opt, steps, *, n_fetch=1, n_push=1, alpha=0.0, delay=None):
    """Downpour by events. ``finish(r, start)``: when replica r's step started at ``start`` ends;
    ``grad(r, x)``; ``delay[r][s]``: message time between replica r and shard s (None: 0).

    Returns one snapshot per finished replica step (after that step's push and fetch), and each shard's
    arrival order (replica ids).
    """
    S = len(sizes)
    cuts = np.concatenate([[0], np.cumsum(sizes)])
    delay = np.zeros((R, S)) if delay is None else np.asarray(delay, float)
    x = np.array(x0, float)
    opts = [opt(sizes[s]) for s in range(S)]
    local = [x.copy() for _ in range(R)]
    acc = [np.zeros_like(x) for _ in range(R)]
    nsteps, fetched, push_done = [0] * R, np.zeros((R, S), int), [0.0] * R
    version, stale, total = np.zeros(S, int), np.full(S, -1), np.zeros(S, int)
    heap, counters = [], {"d": 0, "m": 0, "push": 0, "fetch": 0}
    order = [[] for _ in range(S)]

    def dispatch(r, start):
        g = grad(r, local[r])
        local[r] = local[r] - alpha * g
        acc[r] = acc[r] + g
        heapq.heappush(heap, (finish(r, start), 1, counters["d"], ("end", r)))
        counters["d"] += 1

    def message(t, what):
        heapq.heappush(heap, (t, 0, counters["m"], what))
        counters["m"] += 1

    def deliver(t, what):
        if what[0] == "push":                       # shard s applies r's push, in its arrival order
            _, r, s, g, base = what
            a, b = cuts[s], cuts[s + 1]
            stale[s] = version[s] - base[s]
            total[s] += stale[s]
            x[a:b] = opts[s].step(x[a:b], g[a:b])
            version[s] += 1
            order[s].append(r)
        else:                                       # r reads every shard as it is now, then starts again
            r = what[1]
            local[r], fetched[r] = x.copy(), version.copy()
            counters["fetch"] += 1
            start = t + delay[r].max()
            if (nsteps[r] + 1) % n_push == 0:       # one push at a time
                start = max(start, push_done[r])
            dispatch(r, start)

    for r in range(R):
        dispatch(r, 0.0)
    snaps = []
    while len(snaps) < steps:
        t, kind, _, what = heapq.heappop(heap)
        if kind == 0:
            deliver(t, what)
            continue
        r = what[1]
        nsteps[r] += 1
        k = nsteps[r]
        if k % n_push == 0:
            for s in range(S):
                message(t + delay[r, s], ("push", r, s, acc[r].copy(), fetched[r].copy()))
            push_done[r] = t + delay[r].max()
            acc[r] = np.zeros_like(x)
            counters["push"] += 1
        if k % n_fetch == 0:
            message(t, ("fetch", r))
        else:
            dispatch(r, max(t, push_done[r]) if (k + 1) % n_push == 0 else t)
        while heap[0][1] == 0 and heap[0][0] <= t:    # this step's instant messages (push, then fetch)
            tt, _, _, w = heapq.heappop(heap)
            deliver(tt, w)
        snaps.append(dict(x=x.copy(), version=version.copy(), stale=stale.copy(), total=total.copy(), time=t,
                          pushes=counters["push"], fetches=counters["fetch"], steps=list(nsteps)))
    return snaps, order


# --- the library against the reference -------------------------------------------------------------------

D = 7
H = np.array([1.0, 2.0, 0.5, 1.5, 1.0, 3.0, 0.8])
CENTRES = np.array([[1.0, -1.0, 2.0, 0.5, 0.0, 1.0, -2.0],
                    [0.0, 1.0, 1.0, -0.5, 2.0, 0.0, 1.0],
                    [2.0, 0.0, -1.0, 1.0, 1.0, -1.0, 0.0]])
X0 = np.linspace(-1.0, 1.0, D)


def grad_np(r, x):
    return H[:len(x)] * (x - CENTRES[r, :len(x)])


def run_lib(tx, calls, d=D):
    """Every call's (server x, shard versions, shard staleness, time, pushes, fetches, steps)."""
    h, centres = jnp.asarray(H[:d], jnp.float32), jnp.asarray(CENTRES[:, :d], jnp.float32)

    @jax.jit
    def step(x, s):
        r = asgd_jax.next_worker(s)
        u, s = tx.update(h * (replica_params(s, x) - centres[r]), s, x)
        return optax.apply_updates(x, u), s

    x = jnp.asarray(X0[:d], jnp.float32)
    s, out = tx.init(x), []
    for _ in range(calls):
        x, s = step(x, s)
        out.append(dict(x=np.asarray(x), version=np.asarray(s.shard_version), stale=np.asarray(s.shard_staleness),
                        total=np.asarray(s.staleness_sum),
                        time=float(s.time), pushes=int(s.pushes), fetches=int(s.fetches), steps=s.steps.tolist()))
    return out, s


def fixed_finish(times, fail=None):
    """Replica r's step started at ``start`` ends at start + times[r]; ``fail = (r, at, back)``: a step of r
    that would end after ``at`` is lost and redone from ``back``."""

    def finish(r, start):
        end = start + times[r]
        if fail is not None and r == fail[0] and start < fail[2] and end > fail[1]:
            return fail[2] + times[r]
        return end

    return finish


def delays(sizes, latency, byte_time, shard_latency, shard_byte_time):
    """d[r][s] = l_r + l_s + B_s max(beta_r, beta_s), B_s = 4 bytes per float32 parameter."""
    return [[latency[r] + shard_latency[s] + 4 * sizes[s] * max(byte_time[r], shard_byte_time[s])
             for s in range(len(sizes))] for r in range(len(latency))]


def compare(lib, snaps, R):
    for c, got in enumerate(lib[R - 1:]):
        want = snaps[c]
        np.testing.assert_allclose(got["x"], want["x"], rtol=2e-5, atol=2e-6, err_msg=f"call {c + R}")
        assert got["version"].tolist() == want["version"].tolist(), c
        assert got["stale"].tolist() == want["stale"].tolist(), c
        assert got["total"].tolist() == want["total"].tolist(), c
        assert got["time"] == pytest.approx(want["time"], rel=1e-6), c
        assert (got["pushes"], got["fetches"], got["steps"]) == (want["pushes"], want["fetches"], want["steps"]), c


def test_two_shards_see_pushes_in_different_orders_by_hand():
    """Replica 0: a slow link (1 byte per time unit, no latency); replica 1: latency 8, unlimited bandwidth.
    Shards of 1 and 3 float32 (4 and 12 bytes): d = [[4, 12], [8, 8]]. Both replicas end step 1 at time 1
    and push: shard 0 gets replica 0's push at 5, replica 1's at 9; shard 1 replica 1's at 9, replica 0's
    at 13. Replica 1 resumes at 9 (its fetch's slowest reply), ends at 10 and fetches versions [2, 1];
    replica 0 resumes at 13, ends at 14 (shard 1 applies its push at 13, staleness 1 - 0)."""
    sizes = [1, 3]
    net = network(latency=[0.0, 8.0], bandwidth=[1.0, float("inf")])
    tx = downpour(optax.adagrad(0.3), 2, shards=sizes, timing=1.0, network=net)
    lib, s = run_lib(tx, 6, d=4)
    assert [c["time"] for c in lib] == [0.0, 1.0, 1.0, 10.0, 14.0, 19.0]
    assert [c["version"].tolist() for c in lib[3:]] == [[2, 1], [2, 2], [4, 3]]
    # at 19 shard 0 applies replica 1's push sent at 10, then replica 0's sent at 14 (both arrive at 18);
    # both gradients were computed at the fetch of time 1 (versions [0, 0]): staleness 3 - 0 and 2 - 0
    assert [c["stale"].tolist() for c in lib[3:]] == [[1, 0], [1, 1], [3, 2]]
    d = delays(sizes, [0.0, 8.0], [1.0, 0.0], [0.0, 0.0], [0.0, 0.0])
    assert d == [[4.0, 12.0], [8.0, 8.0]]
    snaps, order = reference(2, fixed_finish([1.0, 1.0]), grad_np, X0[:4], sizes,
                             lambda n: Adagrad(0.3, n), 5, delay=d)
    assert order[0][:4] == [0, 1, 1, 0] and order[1][:3] == [1, 0, 1]   # at 18, shard 0: sent at 10 first
    compare(lib, snaps, 2)      # the library's parameters follow these orders (Adagrad steps do not commute)
    assert float(s.bytes_sent) == (int(s.pushes) + int(s.fetches)) * 16.0


CONFIGS = {
    # name: (R, times, fail, sizes, n_fetch, n_push, alpha, optimizer, network kwargs or None); dyadic
    # numbers, so float32 clocks are exact and ties are the same ties as in the float64 reference
    "one shard, every step": (3, [1.0, 2.0, 3.0], None, [7], 1, 1, 0.0, "adagrad", None),
    "two shards, links": (3, [1.0, 1.25, 1.75], None, [2, 5], 2, 1, 0.05, "adagrad",
                          dict(latency=[0.25, 0.125, 0.75], byte_time=[1 / 32, 0.0, 1 / 16],
                               shard_latency=[0.0625, 0.5], shard_byte_time=[0.0, 0.0])),
    "three shards, push every 3, a failure": (3, [1.0, 1.25, 0.875], (1, 4.0, 9.0), [3, 2, 2], 1, 3, 0.1, "sgd",
                                              dict(latency=[0.25, 0.25, 0.5], byte_time=[0.0, 1 / 64, 0.0],
                                                   shard_latency=[0.0, 0.375, 0.125],
                                                   shard_byte_time=[1 / 128, 0.0, 0.0])),
    "fetch rarer than push": (2, [1.0, 1.5], None, [4, 3], 3, 2, 0.1, "adagrad",
                              dict(latency=[1.5, 0.25], byte_time=[0.0, 0.0], shard_latency=[0.0, 2.0],
                                   shard_byte_time=[0.0, 0.0])),
    "a replica lost for good": (3, [1.0, 1.0, 1.0], (2, 3.5, float("inf")), [1, 6], 2, 2, 0.05, "sgd", None),
}


def build(name, key=0):
    R, times, fail, sizes, n_fetch, n_push, alpha, opt, net = CONFIGS[name]
    model = timing.per_worker(1.0, jnp.asarray(times))
    if fail is not None:
        model = timing.failing(model, *fail)
    inv = lambda bt: [1 / b if b > 0 else float("inf") for b in bt]
    kw = {} if net is None else dict(
        network=network(latency=net["latency"], bandwidth=inv(net["byte_time"])),
        shard_latency=net["shard_latency"], shard_bandwidth=inv(net["shard_byte_time"]))
    inner = optax.adagrad(0.4) if opt == "adagrad" else optax.sgd(0.05)
    tx = downpour(inner, R, shards=sizes, n_fetch=n_fetch, n_push=n_push, local_learning_rate=alpha,
                  timing=model, key=key, **kw)
    d = None if net is None else delays(sizes, net["latency"], net["byte_time"], net["shard_latency"],
                                        net["shard_byte_time"])
    ref = lambda steps: reference(R, fixed_finish(times, fail), grad_np, X0, sizes,
                                  (lambda n: Adagrad(0.4, n)) if opt == "adagrad" else (lambda n: Sgd(0.05, n)),
                                  steps, n_fetch=n_fetch, n_push=n_push, alpha=alpha, delay=d)
    return tx, R, ref


@pytest.mark.parametrize("name", list(CONFIGS))
def test_thirty_calls_match_the_event_reference(name):
    """Parameters, per-shard versions and staleness, clock, push / fetch / step counts after every call."""
    tx, R, ref = build(name)
    lib, s = run_lib(tx, 32)
    snaps, order = ref(32 - (R - 1))
    compare(lib, snaps, R)
    assert not bool(s.invalid)
    if name == "two shards, links":       # the shards' arrival orders differ on this run
        assert order[0] != order[1]
    if name == "a replica lost for good":
        assert s.steps.tolist()[2] == 3 and sum(s.steps.tolist()) == 32 - (R - 1)


def test_push_contents_local_steps_and_counts_by_hand():
    """One replica, n_fetch = 2, n_push = 3, alpha = 0.1, server SGD(1), the k-th gradient = k.
    Local copy: 0 -> -0.1 -> -0.3, fetch (x = 0) -> 0 -> -0.3 -> push 1+2+3 = 6 (x = -6), fetch -> -6 ->
    -6.5 -> push 4+5+6 = 15 (x = -21) and fetch -> -21."""
    tx = optax.chain(optax.identity(), downpour(optax.sgd(1.0), 1, n_fetch=2, n_push=3, local_learning_rate=0.1))
    x = jnp.zeros(1)
    s, seen, ups = tx.init(x), [], []
    for k in range(1, 8):
        seen.append(float(replica_params(s, x)[0]))
        assert int(asgd_jax.next_worker(s)) == 0
        u, s = tx.update(jnp.array([float(k)]), s, x)
        x = optax.apply_updates(x, u)
        ups.append(float(u[0]))
    np.testing.assert_allclose(seen, [0.0, -0.1, 0.0, -0.3, -6.0, -6.5, -21.0], atol=1e-6)
    assert ups == [0.0, 0.0, -6.0, 0.0, 0.0, -15.0, 0.0]
    dp = s[1]
    assert (int(dp.pushes), int(dp.fetches), dp.steps.tolist(), float(dp.time)) == (2, 3, [7], 7.0)
    assert dp.shard_staleness.tolist() == [0]


@pytest.mark.parametrize("model", [timing.per_worker(1.0, jnp.array([1.0, 2.0, 3.0])), timing.normal(1.0, 0.3)])
def test_one_shard_fetch_and_push_every_step_is_asynchronous(model):
    """S = 1, n_fetch = n_push = 1, no network: the same parameters, clock and staleness as pure ASGD."""
    inner = optax.adagrad(0.3)
    dp = downpour(inner, 3, timing=model, key=7, local_learning_rate=0.2)   # overwritten by every fetch
    asgd = asgd_jax.asynchronous(inner, 3, timing=model, key=7)
    h, centres = jnp.asarray(H, jnp.float32), jnp.asarray(CENTRES, jnp.float32)
    xs = {}
    for name, tx in (("dp", dp), ("asgd", asgd)):
        @jax.jit
        def step(x, s, tx=tx):
            u, s = tx.update(h * (replica_params(s, x) - centres[asgd_jax.next_worker(s)]), s, x)
            return optax.apply_updates(x, u), s

        x = jnp.asarray(X0, jnp.float32)
        s, trace = tx.init(x), []
        for _ in range(30):
            x, s = step(x, s)
            stale = s.shard_staleness[0] if name == "dp" else s.last_staleness
            trace.append((np.asarray(x), float(s.time), int(stale), int(s.last_worker)))
        xs[name] = trace
    for (xa, ta, sa, wa), (xb, tb, sb, wb) in zip(xs["dp"], xs["asgd"]):
        np.testing.assert_allclose(xa, xb, rtol=1e-6, atol=1e-7)
        assert (ta, wa) == (tb, wb) and (sa == sb or sb == -1)


def test_jit_vmap_over_traced_numbers():
    """A vmapped sweep over alpha, n_fetch and a shard latency equals the separate runs."""
    h, centres = jnp.asarray(H, jnp.float32), jnp.asarray(CENTRES, jnp.float32)

    def run(alpha, n_fetch, lat):
        tx = downpour(optax.sgd(0.05), 3, shards=[3, 4], n_fetch=n_fetch, local_learning_rate=alpha,
                      timing=timing.per_worker(1.0, jnp.array([1.0, 1.5, 2.0])),
                      network=network(latency=0.1), shard_latency=jnp.stack([lat, 0.0]))

        def body(carry, _):
            x, s = carry
            u, s = tx.update(h * (replica_params(s, x) - centres[asgd_jax.next_worker(s)]), s, x)
            return (optax.apply_updates(x, u), s), None

        x = jnp.asarray(X0, jnp.float32)
        (x, s), _ = jax.lax.scan(body, (x, tx.init(x)), None, length=25)
        return x, s.time, s.shard_version

    grid = (jnp.array([0.0, 0.1, 0.2]), jnp.array([1, 2, 3]), jnp.array([0.0, 0.5, 1.5]))
    batched = jax.jit(jax.vmap(run))(*grid)
    for i in range(3):
        one = jax.jit(run)(*(g[i] for g in grid))
        chex.assert_trees_all_close(jax.tree.map(lambda b: b[i], batched), one, rtol=1e-6)
    assert len(set(np.asarray(batched[1]).tolist())) == 3


def test_shard_bounds_and_leaf_shards():
    params = {"a": jnp.zeros((2, 2)), "b": jnp.zeros(3), "c": jnp.zeros(())}
    assert shard_bounds(params, 1) == ((0, 8),)
    assert shard_bounds(params, 3) == ((0, 3), (3, 6), (6, 8))
    assert shard_bounds(params, "leaf") == ((0, 4), (4, 7), (7, 8))
    tx = downpour(optax.sgd(0.1), 2, shards="leaf")
    s = tx.init(params)
    assert len(s.shard_state) == 3 and s.shard_version.shape == (3,)
    u, s = tx.update(jax.tree.map(jnp.ones_like, params), s, params)
    u, s = tx.update(jax.tree.map(jnp.ones_like, params), s, params)
    chex.assert_trees_all_close(u, jax.tree.map(lambda p: jnp.full_like(p, -0.1), params))
    assert s.shard_version.tolist() == [1, 1, 1]
