"""The Trainer's communication and decentralized systems against independent references.

- AD-PSGD through ``TrainConfig(server_rule="ad-psgd")`` step by step against a NumPy re-simulation
  (hand-written MLP backprop from test_train_async; events with fixed per-worker times, pure rule; on arrival
  average with the ring peer, then an SGD step with the stale gradient computed at the worker's own model).
- One worker: AD-PSGD, D-PSGD, AllReduce-SGD and SSGD train exactly like the delay-0 path (plain SGD).
- A network of zero cost changes nothing; a costly one moves the clock by hand-derived amounts.
- Bad configs give one-line errors before compiling; config ids of configs without the new fields are unchanged.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

from asgd_jax import sweep
from asgd_jax.train import TrainConfig, Trainer, make_train
from test_train_async import BATCH, NUM_TRAIN, _dataset, _flat, _np_grad


def _trainer(n, **static):
    cfg = TrainConfig(model="mlp", batch_size=BATCH, epochs=1, system="async", max_workers=n, **static)
    return Trainer(cfg, _dataset())


def _reference_ad_psgd(x0, order, x, y, *, steps, lr, times, latency=0.0):
    """AD-PSGD on the ring: x0 is one model (list of arrays); returns every worker's models after each call."""
    n = len(times)
    models = [[a.copy() for a in x0] for _ in range(n)]
    now, busy, pool, seq, nxt, exchanges = 0.0, [0.0] * n, [], 0, 0, [0] * n
    history = []
    for t in range(steps):
        idx = order[t * BATCH:(t + 1) * BATCH]
        g = _np_grad(models[nxt], x[idx], y[idx])          # at the worker's own model, now
        finish = max(now, busy[nxt]) + times[nxt]
        busy[nxt] = finish
        pool.append(dict(finish=finish, seq=seq, worker=nxt, grad=g))
        seq += 1
        if len(pool) >= n:
            job = min(pool, key=lambda j: (j["finish"], j["seq"]))
            pool.remove(job)
            now, i = job["finish"], job["worker"]
            ring = [(i + 1) % n, (i - 1) % n] if n > 2 else [1 - i]
            j = ring[exchanges[i] % len(ring)]
            exchanges[i] += 1
            avg = [(a + b) / 2 for a, b in zip(models[i], models[j])]
            models[j] = [a.copy() for a in avg]
            models[i] = [a - lr * gi for a, gi in zip(avg, job["grad"])]
            busy[i] = max(busy[i], now + 2 * latency)      # the averaging message: latency at both ends
        history.append([[a.copy() for a in m] for m in models])
        in_flight = {jb["worker"] for jb in pool}
        nxt = next(w for w in range(n) if w not in in_flight)
    return history


@pytest.mark.parametrize("latency", [0.0, 0.25])  # dyadic: float32 and float64 clocks agree exactly
def test_trainer_ad_psgd_matches_numpy_reference(latency):
    n, steps, lr = 3, NUM_TRAIN // BATCH, 0.5  # one epoch: 12 calls
    trainer = _trainer(n, server_rule="ad-psgd", topology="ring", network=True)
    hp = {"learning_rate": lr, "workers": n, "straggler_fraction": 1 / 3, "straggler_slowdown": 2.5,
          "momentum": 0.0, "latency": latency}
    init, step = jax.jit(trainer.init), jax.jit(trainer.step)
    state = init(trainer.data, jax.random.key(0), hp)
    one = jax.tree.map(lambda a: a[0], state.params)
    ds = _dataset()
    x = np.asarray(ds.x_train, np.float64).reshape(NUM_TRAIN, -1)
    ref = _reference_ad_psgd(_flat(one), np.asarray(state.order), x, np.asarray(ds.y_train), steps=steps,
                             lr=lr, times=[1.0, 1.0, 2.5], latency=latency)
    for t in range(steps):
        state = step(trainer.data, state)
        for w in range(n):
            got = _flat(jax.tree.map(lambda a: a[w], state.params))
            for k, (a, r) in enumerate(zip(got, ref[t][w])):
                np.testing.assert_allclose(a, r, rtol=1e-4, atol=1e-5, err_msg=f"call {t}, worker {w}, array {k}")
    spread = max(np.abs(a - b).max() for a, b in zip(ref[-1][0], ref[-1][2]))
    assert spread > 1e-3  # the workers' models differ: the comparison is not of one shared model


def _metrics(static, hp, epochs=2):
    cfg = TrainConfig(model="mlp", batch_size=BATCH, epochs=epochs, **static)
    train = jax.jit(make_train(cfg, _dataset()))
    return jax.tree.map(np.asarray, train(jax.random.key(3), hp))


@pytest.mark.parametrize("rule", ["ad-psgd", "d-psgd", "allreduce", "sync"])
def test_one_worker_is_plain_sgd(rule):
    plain = _metrics({}, {"learning_rate": 0.3, "momentum": 0.9})
    got = _metrics({"system": "async", "max_workers": 1, "server_rule": rule, "network": True},
                   {"learning_rate": 0.3, "momentum": 0.9, "workers": 1, "latency": 0.1, "bandwidth": 1e3})
    for k in ("test_accuracy", "test_loss", "train_loss"):
        np.testing.assert_allclose(got[k], plain[k], rtol=1e-5, atol=1e-6, err_msg=k)


@pytest.mark.parametrize("rule", ["async", "sync"])
def test_zero_cost_network_changes_nothing(rule):
    base = {"system": "async", "max_workers": 4, "server_rule": rule, "timing": "exponential"}
    hp = {"learning_rate": 0.1, "workers": 4}
    without = _metrics(base, hp)
    free = _metrics({**base, "network": True}, {**hp, "latency": 0.0, "bandwidth": 0.0, "server_bandwidth": 0.0})
    for k in ("test_accuracy", "train_loss", "sim_time", "server_steps"):
        np.testing.assert_array_equal(free[k], without[k], err_msg=k)
    assert np.all(free["bytes_sent"] > 0)


def test_allreduce_clock_by_hand():
    # 2 workers, fixed times 1: a round = 1 + ring all-reduce 2 * (2 - 1) * (2 * 0.25) = 2.0; 96 // 8 = 12
    # gradients per epoch = 6 rounds = 12.0 per epoch; each round sends 2 * (2 - 1) model-sized messages.
    got = _metrics({"system": "async", "max_workers": 2, "server_rule": "allreduce", "network": True},
                   {"learning_rate": 0.1, "workers": 2, "latency": 0.25})
    np.testing.assert_allclose(got["sim_time"], [12.0, 24.0], rtol=1e-6)
    trainer = _trainer(2, server_rule="allreduce", network=True)
    size = sum(int(np.prod(a.shape)) * 4 for a in jax.tree.leaves(
        jax.eval_shape(trainer.init, trainer.data, jax.random.key(0), {"learning_rate": 0.1, "workers": 2})
        .params))
    np.testing.assert_allclose(got["bytes_sent"], [12 * size, 24 * size], rtol=1e-6)


@pytest.mark.parametrize("static, hp, match", [
    ({"server_rule": "ad-psgd"}, {"workers": 3}, "workers=3 must equal max_workers=4"),
    ({"server_rule": "ad-psgd"}, {"workers": 4, "warmup_steps": 5}, "no warm-up"),
    ({"server_rule": "d-psgd", "topology": "torus"}, {"workers": 4}, "torus"),
    ({"server_rule": "ad-psgd", "topology": "bogus"}, {"workers": 4}, "unknown peers"),
    ({"server_rule": "ad-psgd", "rules": ("clip",)}, {"workers": 4, "clip_norm": 1.0}, "no server"),
    ({"server_rule": "async", "topology": "ring"}, {"workers": 4}, "topology applies"),
    ({"server_rule": "async", "network": True}, {"workers": 4, "bandwidth": -1.0}, "bandwidth must be"),
])
def test_bad_decentralized_configs_are_one_line(static, hp, match):
    config = {"model": "mlp", "batch_size": 8, "epochs": 1, "learning_rate": 0.1, "system": "async",
              "max_workers": 4, **static, **hp}
    with pytest.raises(ValueError, match=match) as e:
        sweep.normalize_config(config, NUM_TRAIN)
    assert "\n" not in str(e.value)


def test_odd_workers_refuse_the_exponential_graph():
    with pytest.raises(ValueError, match="even number of workers"):
        sweep.normalize_config({"model": "mlp", "batch_size": 8, "epochs": 1, "learning_rate": 0.1,
                                "system": "async", "max_workers": 5, "workers": 5, "server_rule": "ad-psgd"})


def test_new_fields_are_absent_from_configs_that_do_not_use_them():
    c = sweep.normalize_config({"model": "mlp", "batch_size": 8, "epochs": 1, "learning_rate": 0.1,
                                "system": "async", "workers": 4})
    assert "topology" not in c and "network" not in c and "latency" not in c
    d = sweep.normalize_config({"model": "mlp", "batch_size": 8, "epochs": 1, "learning_rate": 0.1,
                                "system": "async", "workers": 4, "server_rule": "ad-psgd", "network": True})
    assert d["network"] is True and d["latency"] == 0.0 and sweep.config_id(c) != sweep.config_id(d)


def _reference_local_accumulation(x0, order, x, y, *, steps, lr, times, tau):
    """Downpour with one shard, n_fetch = n_push = tau, no local step, SGD server, no network (NumPy, float64).

    Call t: the free replica computes the gradient of batch t at its local copy (a job of its fixed time);
    once all replicas are busy the earliest job ends (ties: dispatch order): the replica adds the gradient
    to its sum; every tau-th of its steps it pushes the sum (the server steps by -lr * sum) and fetches.
    Returns the server's model after each call.
    """
    n = len(times)
    server = [a.copy() for a in x0]
    local = [[a.copy() for a in x0] for _ in range(n)]
    acc = [[np.zeros_like(a) for a in x0] for _ in range(n)]
    done, now, busy, pool, seq, nxt, history = [0] * n, 0.0, [0.0] * n, [], 0, 0, []
    for t in range(steps):
        idx = order[t * BATCH:(t + 1) * BATCH]
        g = _np_grad(local[nxt], x[idx], y[idx])
        finish = max(now, busy[nxt]) + times[nxt]
        busy[nxt] = finish
        pool.append(dict(finish=finish, seq=seq, worker=nxt, grad=g))
        seq += 1
        if len(pool) >= n:
            job = min(pool, key=lambda j: (j["finish"], j["seq"]))
            pool.remove(job)
            now, r = job["finish"], job["worker"]
            acc[r] = [a + gi for a, gi in zip(acc[r], job["grad"])]
            done[r] += 1
            if done[r] % tau == 0:
                server = [s - lr * a for s, a in zip(server, acc[r])]
                acc[r] = [np.zeros_like(a) for a in acc[r]]
                local[r] = [s.copy() for s in server]
        history.append([s.copy() for s in server])
        in_flight = {jb["worker"] for jb in pool}
        nxt = next(w for w in range(n) if w not in in_flight)
    return history


@pytest.mark.parametrize("tau", [1, 3])
def test_trainer_downpour_local_accumulation_matches_numpy_reference(tau):
    n, steps, lr = 3, NUM_TRAIN // BATCH, 0.3  # one epoch: 12 calls
    trainer = _trainer(n, server_rule="downpour")
    hp = {"learning_rate": lr, "workers": n, "straggler_fraction": 1 / 3, "straggler_slowdown": 2.5,
          "momentum": 0.0, "n_fetch": tau, "n_push": tau}
    init, step = jax.jit(trainer.init), jax.jit(trainer.step)
    state = init(trainer.data, jax.random.key(0), hp)
    ds = _dataset()
    x = np.asarray(ds.x_train, np.float64).reshape(NUM_TRAIN, -1)
    ref = _reference_local_accumulation(_flat(state.params), np.asarray(state.order), x, np.asarray(ds.y_train),
                                        steps=steps, lr=lr, times=[1.0, 1.0, 2.5], tau=tau)
    moved = 0
    for t in range(steps):
        state = step(trainer.data, state)
        for k, (a, r) in enumerate(zip(_flat(state.params), ref[t])):
            np.testing.assert_allclose(a, r, rtol=1e-4, atol=1e-5, err_msg=f"call {t}, array {k}")
        moved += max(np.abs(a - b).max() for a, b in zip(ref[t], ref[t - 1])) > 0 if t else 0
    assert 0 < moved < steps - 1  # the server moved, and not at every call


@pytest.mark.parametrize("hp, match", [
    ({"workers": 4, "n_push": 0}, "n_push must be an integer >= 1"),
    ({"workers": 4, "local_learning_rate": -0.1}, "local_learning_rate must be"),
    ({"workers": 3}, "workers=3 must equal it"),
])
def test_bad_downpour_configs_are_one_line(hp, match):
    config = {"model": "mlp", "batch_size": 8, "epochs": 1, "learning_rate": 0.1, "system": "async",
              "max_workers": 4, "server_rule": "downpour", **hp}
    with pytest.raises(ValueError, match=match) as e:
        sweep.normalize_config(config, NUM_TRAIN)
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="takes no server rules"):
        TrainConfig(system="async", max_workers=4, server_rule="downpour", rules=("clip",)).validate()


def test_trainer_downpour_shard_staleness_matches_event_reference():
    """shards=4, shard latencies spread over [0, 2] (0.25, 0.75, 1.25, 1.75), replica latency 0.25, no bandwidth limit,
    fixed times 1, 1, 2.5: each shard's mean staleness after each epoch against the NumPy event re-simulation of
    test_downpour_sharded (staleness depends only on the times, so the reference steps a zero gradient)."""
    from test_downpour_sharded import Sgd, fixed_finish, reference

    n, shards, epochs = 3, 4, 2
    got = _metrics({"system": "async", "max_workers": n, "server_rule": "downpour", "shards": shards,
                    "network": True},
                   {"learning_rate": 0.1, "workers": n, "straggler_fraction": 1 / 3, "straggler_slowdown": 2.5,
                    "latency": 0.25, "shard_latency": 2.0}, epochs=epochs)
    calls = NUM_TRAIN // BATCH
    delay = [[0.5 + 0.5 * s for s in range(shards)] for _ in range(n)]
    snaps, _ = reference(n, fixed_finish([1.0, 1.0, 2.5]), lambda r, x: np.zeros_like(x), np.zeros(shards),
                             [1] * shards, lambda size: Sgd(0.0, size), epochs * calls - (n - 1), delay=delay)
    for e in range(epochs):
        snap = snaps[(e + 1) * calls - n]
        want = snap["total"] / np.maximum(snap["version"], 1)
        np.testing.assert_allclose(got["shard_staleness"][e], want, rtol=1e-6, err_msg=f"epoch {e + 1}")
        assert got["sim_time"][e] == snap["time"]
    assert len(set(np.round(got["shard_staleness"][-1], 6))) > 1    # the shards saw different staleness


def test_trainer_failure_ssgd_stalls_asgd_trains_on_by_hand():
    """2 workers, fixed times 1; worker 1 is down in [2.5, 10). 12 gradients per epoch.
    SSGD: rounds end at 1, 2, then the third waits for worker 1's lost job, redone from 10: 11, then 12, 13, 14
    (epoch 1), 15, ..., 20 (epoch 2). ASGD: worker 1's job started at 2 is lost (arrives at 11); worker 0 goes
    on alone, one arrival per time unit: call k >= 6 at time k - 3, so call 12 at 9; from 11 both arrive
    twice per unit (calls 14, 15 at 11, ..., call 24 at 16)."""
    base = {"system": "async", "max_workers": 2, "failures": True}
    hp = {"learning_rate": 0.1, "workers": 2, "fail_worker": 1, "fail_at": 2.5, "return_at": 10.0}
    ssgd = _metrics({**base, "server_rule": "sync"}, hp)
    asgd = _metrics({**base, "server_rule": "async"}, hp)
    np.testing.assert_allclose(ssgd["sim_time"], [14.0, 20.0])
    np.testing.assert_allclose(asgd["sim_time"], [9.0, 16.0])
    never = _metrics({**base, "server_rule": "async"}, {**hp, "return_at": float("inf")})
    np.testing.assert_allclose(never["sim_time"], [9.0, 21.0])     # worker 0 alone from time 3 on
    assert not never["invalid"].any() and np.isfinite(never["test_loss"]).all()


@pytest.mark.parametrize("static, hp, match", [
    ({"server_rule": "async", "shards": 2}, {}, "shards applies to server_rule='downpour'"),
    ({"server_rule": "downpour"}, {"shard_latency": 1.0}, "shard_latency needs network=True"),
    ({"server_rule": "sync", "failures": True}, {"fail_worker": 4}, "fail_worker must be an integer in"),
    ({"server_rule": "sync", "failures": True}, {"fail_at": 5.0, "return_at": 2.0}, "return_at must be"),
    ({"server_rule": "sync", "failures": True}, {"fail_at": -1.0}, "fail_at must be"),
])
def test_bad_shard_and_failure_configs_are_one_line(static, hp, match):
    config = {"model": "mlp", "batch_size": 8, "epochs": 1, "learning_rate": 0.1, "system": "async",
              "max_workers": 4, "workers": 4, **static, **hp}
    with pytest.raises(ValueError, match=match) as e:
        sweep.normalize_config(config, NUM_TRAIN)
    assert "\n" not in str(e.value)
