"""The Trainer's asynchronous system (TrainConfig(system="async")) against independent references.

- A plain NumPy re-implementation of the event model (docs/methods.md#the-event-model) and of the server rules
  (ASGD, DC-ASGD-c, DC-ASGD-a, SSGD, gradual introduction) on the MLP (hand-written backprop), with fixed compute
  times, step by step against ``Trainer.step``; its first arrivals are also checked against a
  hand-simulated order.
- One worker is plain SGD: the same metrics as the existing delay path with delay 0.
- ``workers = d + 1`` equal fixed workers are the constant delay ``d``.
- Bad input gives one-line errors before anything compiles.

Data: 96 train / 24 test random 6x6 images, 3 classes; every program is a small MLP's (fast).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from asgd_jax import sweep
from asgd_jax.data import make_dataset
from asgd_jax.train import TrainConfig, Trainer, hparam_names, make_train, normalize_hparams

NUM_TRAIN, NUM_TEST, NUM_CLASSES, BATCH = 96, 24, 3, 8


@functools.cache
def _dataset():
    rng = np.random.default_rng(1)
    y = rng.integers(0, NUM_CLASSES, NUM_TRAIN + NUM_TEST)
    x = rng.uniform(0, 0.5, (NUM_TRAIN + NUM_TEST, 6, 6))
    x[np.arange(len(y)), y, y] += 0.5  # a learnable signal: pixel (y, y) is bright
    return make_dataset(
        x[:NUM_TRAIN], y[:NUM_TRAIN], x[NUM_TRAIN:], y[NUM_TRAIN:], name="toy", max_value=1.0,
        num_classes=NUM_CLASSES,
    )


# --- an independent NumPy reference ----------------------------------------------------------------


LAYERS = ("Dense_0", "Dense_1", "Dense_2")


def _flat(params):
    """The MLP's parameters as a list [k0, b0, k1, b1, k2, b2] of float64 arrays."""
    return [np.asarray(params[n][k], np.float64) for n in LAYERS for k in ("kernel", "bias")]


def _np_grad(p, x, y):
    """Backprop by hand: mean softmax cross-entropy of the ReLU MLP x -> dense -> relu -> dense -> relu -> dense."""
    hs, h = [x], x
    for i in range(2):
        h = np.maximum(h @ p[2 * i] + p[2 * i + 1], 0.0)
        hs.append(h)
    z = h @ p[4] + p[5]
    z = z - z.max(-1, keepdims=True)
    d = np.exp(z) / np.exp(z).sum(-1, keepdims=True)
    d[np.arange(len(y)), y] -= 1.0
    d /= len(y)
    grads = [None] * 6
    for i in (2, 1, 0):
        grads[2 * i], grads[2 * i + 1] = hs[i].T @ d, d.sum(0)
        if i:
            d = (d @ p[2 * i].T) * (hs[i] > 0)
    return grads


def reference_run(params0, order, x, y, *, steps, lr, times, rule="async", compensation=None, lam=0.0,
                  initial=None, add=1, every=1, mu=0.95, eps=1e-7):
    """Re-simulates ``steps`` update calls of n = len(times) workers with fixed times, pure assignment.

    Written from the method descriptions in docs/methods.md (event model, DC-ASGD, SSGD), not from the library:
    each call computes a gradient at the current w on the next batch and dispatches it to the
    chosen worker (finish = max(now, busy) + time); while the pool holds the active workers' jobs,
    the earliest finish (ties: earliest dispatched) arrives and is applied (with DC compensation
    against the w its job was computed at). Sync: rounds of n calls at the same w, the average
    applied at the round's last call. Returns the parameters after every call, the arrivals
    (worker, staleness, time) and, per call, the last arrival so far ((-1, -1, 0.0) before any).
    """
    n = len(times)
    w = [np.asarray(a, np.float64) for a in params0]
    zeros = lambda: [np.zeros_like(a) for a in w]
    initial = n if initial is None else initial
    now, version, seq = 0.0, 0, 0
    busy = [0.0] * n
    pool = []  # dicts: finish, seq, version, worker, grad, w_bak
    ms = zeros()
    nxt = 0
    history, arrivals, last = [], [], []
    acc = zeros()
    for t in range(steps):
        idx = order[t * BATCH:(t + 1) * BATCH]
        g = _np_grad(w, x[idx], y[idx])
        if rule == "sync":
            acc = [a + gi for a, gi in zip(acc, g)]
            if (t + 1) % n == 0:  # the barrier: every worker's job of this round has arrived
                w = [wi - lr * a / n for wi, a in zip(w, acc)]
                acc = zeros()
                now += max(times)
                arrivals.append((sorted(range(n), key=lambda i: times[i])[-1], 0, now))
            history.append([a.copy() for a in w])
            last.append(arrivals[-1] if arrivals else (-1, -1, 0.0))
            continue
        active = min(n, initial + add * (version // every))
        finish = max(now, busy[nxt]) + times[nxt]
        busy[nxt] = finish
        pool.append(dict(finish=finish, seq=seq, version=version, worker=nxt, grad=g, bak=[a.copy() for a in w]))
        seq += 1
        if len(pool) >= active:
            job = min(pool, key=lambda j: (j["finish"], j["seq"]))
            pool.remove(job)
            now = job["finish"]
            arrivals.append((job["worker"], version - job["version"], now))
            g = job["grad"]
            if compensation is not None:
                if compensation == "dc-a":
                    ms = [mu * m + (1 - mu) * gi * gi for m, gi in zip(ms, g)]
                    lams = [lam / np.sqrt(m + eps) for m in ms]
                else:
                    lams = [lam] * len(g)
                g = [gi + li * gi * gi * (wi - bi) for gi, li, wi, bi in zip(g, lams, w, job["bak"])]
            w = [wi - lr * gi for wi, gi in zip(w, g)]
            version += 1
        history.append([a.copy() for a in w])
        last.append(arrivals[-1] if arrivals else (-1, -1, 0.0))
        active = min(n, initial + add * (version // every))
        in_flight = {j["worker"] for j in pool}
        nxt = next(i for i in range(active) if i not in in_flight)  # pure: lowest idle active worker
    return history, arrivals, last


# --- the Trainer's system, step by step -------------------------------------------------------------


def _async_trainer(max_workers, **static):
    cfg = TrainConfig(model="mlp", batch_size=BATCH, epochs=1, system="async", max_workers=max_workers, **static)
    return Trainer(cfg, _dataset())


def _trainer_run(trainer, hparams, steps, seed=0):
    init, step = jax.jit(trainer.init), jax.jit(trainer.step)
    state = init(trainer.data, jax.random.key(seed), hparams)
    start = state
    out, last = [], []
    for _ in range(steps):
        state = step(trainer.data, state)
        out.append(_flat(state.params))
        sim = state.opt_state
        last.append((int(sim.last_worker), int(sim.last_staleness), float(sim.time)))
    return start, out, last


# n = 3 workers, fixed times 1, 1 and 2.5 (worker 2 a straggler: fraction 1/3, slowdown 2.5).
TIMES = [1.0, 1.0, 2.5]
SYSTEM_HP = {"workers": 3, "straggler_fraction": 1 / 3, "straggler_slowdown": 2.5, "momentum": 0.0}


@pytest.mark.parametrize(
    "static, extra, lam",
    [
        ({}, {}, 0.0),  # plain ASGD
        ({"compensation": "dc-c"}, {"dc_lambda": 2.0}, 2.0),
        ({"compensation": "dc-a"}, {"dc_lambda": 0.5}, 0.5),
        ({"server_rule": "sync"}, {}, 0.0),
        ({}, {"initial_workers": 1, "add_workers": 1, "add_every": 2}, 0.0),  # gradual introduction
    ],
    ids=["asgd", "dc-c", "dc-a", "ssgd", "gradual"],
)
def test_trainer_async_matches_numpy_reference(static, extra, lam):
    steps, lr = 11, 0.5
    trainer = _async_trainer(3, **static)
    hp = {"learning_rate": lr, **SYSTEM_HP, **extra}
    start, got, got_last = _trainer_run(trainer, hp, steps)
    p0 = _flat(start.params)
    ds = _dataset()
    x = np.asarray(ds.x_train, np.float64).reshape(NUM_TRAIN, -1)
    history, arrivals, last = reference_run(
        p0, np.asarray(start.order), x, np.asarray(ds.y_train), steps=steps, lr=lr,
        times=TIMES, rule=static.get("server_rule", "async"), compensation=static.get("compensation"),
        lam=lam, initial=extra.get("initial_workers"), add=extra.get("add_workers", 1),
        every=extra.get("add_every", 1),
    )
    for t, (params, ref) in enumerate(zip(got, history)):
        for k, (a, r) in enumerate(zip(params, ref)):
            np.testing.assert_allclose(a, r, rtol=1e-4, atol=1e-5, err_msg=f"call {t}, array {k}")
    # The parameters moved (the comparison is not between two unchanged starts).
    assert max(np.abs(a - b).max() for a, b in zip(history[-1], p0)) > 1e-2
    # The same events: after every call, the last arrival's worker, staleness and time.
    assert [(w, s) for w, s, _ in got_last] == [(w, s) for w, s, _ in last]
    np.testing.assert_allclose([t for *_, t in got_last], [t for *_, t in last], rtol=1e-6)
    if static.get("server_rule") == "sync":
        # Rounds of 3 calls; each barrier waits for the straggler: clock 2.5, 5.0, 7.5.
        assert [t for *_, t in got_last][2::3] == pytest.approx([2.5, 5.0, 7.5])
        return
    if "initial_workers" not in extra:
        # Hand-simulated: calls 0-2 fill the pool (finishes 1, 1, 2.5); then arrivals
        # w0 (t=1, staleness 0), w1 (t=1, 1), w0 (t=2, 1), w1 (t=2, 1), w2 (t=2.5, 4), w0 (t=3, 2).
        assert arrivals[:6] == [(0, 0, 1.0), (1, 1, 1.0), (0, 1, 2.0), (1, 1, 2.0), (2, 4, 2.5), (0, 2, 3.0)]
    else:
        # Gradual: worker 0 alone for 2 server steps (staleness 0, sequential SGD), then one more
        # worker every 2 server steps.
        assert [a[:2] for a in arrivals[:3]] == [(0, 0), (0, 0), (0, 0)]
        assert any(a[0] == 1 for a in arrivals) and any(a[0] == 2 for a in arrivals)
    if static.get("compensation"):
        # The compensation matters here: plain ASGD's trajectory differs.
        plain, _, _ = reference_run(
            p0, np.asarray(start.order), x, np.asarray(ds.y_train), steps=steps, lr=lr,
            times=TIMES)
        assert max(np.abs(a - b).max() for a, b in zip(plain[-1], history[-1])) > 1e-4


# --- equalities with the delay path -----------------------------------------------------------------


def test_async_workers_equal_the_delay_path_one_worker_plain_sgd():
    """workers = 1 is plain SGD (delay 0) and workers = d + 1 equal fixed workers are delay d, vmapped."""
    base = dict(model="mlp", batch_size=BATCH, epochs=2)
    keys = jax.random.split(jax.random.key(5), 2)
    hp = {"learning_rate": jnp.array([0.3, 0.3]), "momentum": jnp.array([0.9, 0.5])}
    delay = jax.jit(jax.vmap(make_train(TrainConfig(**base, max_delay=3), _dataset())))(
        keys, {**hp, "delay": jnp.array([0, 3])})
    workers = jax.jit(jax.vmap(make_train(TrainConfig(**base, system="async", max_workers=4), _dataset())))(
        keys, {**hp, "workers": jnp.array([1, 4]), "time_mean": jnp.array([2.0, 1.0])})
    for k in ("test_accuracy", "test_loss", "train_loss"):
        np.testing.assert_allclose(np.asarray(workers[k]), np.asarray(delay[k]), rtol=1e-5, atol=1e-6, err_msg=k)
    assert "sim_time" not in delay
    steps = NUM_TRAIN // BATCH
    # One worker, every job 2.0 long, applied as it arrives: the clock is 2 per gradient. Four workers of
    # time 1: the first 3 calls only fill the pool (3 fewer server steps); then the 4 jobs of a round
    # arrive together, the k-th arrival (from 0) at time 1 + k // 4.
    pops = np.array([steps - 3, 2 * steps - 3])
    np.testing.assert_allclose(np.asarray(workers["sim_time"]), [[2.0 * steps, 4.0 * steps], 1 + (pops - 1) // 4])
    np.testing.assert_array_equal(np.asarray(workers["server_steps"]), [[steps, 2 * steps],
                                                                        [steps - 3, 2 * steps - 3]])
    assert float(delay["train_loss"][0, 1]) < float(delay["train_loss"][0, 0])  # it trains


# --- bad input --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "config, match",
    [
        ({"system": "async", "compensation": "dc-x"}, r"unknown compensation 'dc-x'"),
        ({"system": "async", "compensation": "dc-c", "dc_lambda": -0.1}, r"dc_lambda must be a number >= 0"),
        ({"system": "async", "workers": 0}, r"workers must be an integer in \[1, "),
        ({"system": "async", "workers": 5, "max_workers": 4}, r"workers must be an integer in \[1, 4\]"),
        ({"system": "async", "max_workers": 0}, r"max_workers must be a positive integer"),
        ({"system": "async", "delay": 2}, r"delay applies to system='delay' only"),
        ({"system": "async", "dc_lambda": 0.1}, r"dc_lambda needs compensation"),
        ({"system": "async", "server_rule": "sync", "compensation": "dc-a"}, r"needs server_rule='async'"),
        ({"system": "async", "timing": "pareto"}, r"unknown timing 'pareto'"),
        ({"system": "async", "straggler_fraction": 1.5}, r"straggler_fraction must be in \[0, 1\]"),
        ({"system": "async", "add_every": 0}, r"add_every must be an integer >= 1"),
        ({"system": "warp"}, r"unknown system 'warp'"),
        ({"compensation": "dc-a"}, r"compensation applies to system='async' only"),
    ],
)
def test_bad_async_configs_fail_in_one_line_before_compiling(config, match, monkeypatch):
    def no_compile(*a, **k):
        raise AssertionError("compiled before checking")

    monkeypatch.setattr(jax, "jit", no_compile)
    with pytest.raises(ValueError, match=match) as exc:
        sweep.normalize_config({"learning_rate": 0.1, "batch_size": 8, "epochs": 1, **config}, num_train=96)
    assert "\n" not in str(exc.value)


def test_trainconfig_rejects_async_fields_without_async_system():
    with pytest.raises(ValueError, match=r"max_workers applies to system='async' only"):
        make_train(TrainConfig(model="mlp", batch_size=8, max_workers=4), _dataset())


def test_hparam_names_and_defaults():
    delay_cfg = TrainConfig(optimizer="adagrad")
    assert hparam_names(delay_cfg) == ["learning_rate", "delay", "warmup_steps", "initial_accumulator_value", "eps"]
    cfg = TrainConfig(system="async", max_workers=8, compensation="dc-c")
    names = hparam_names(cfg)
    assert "delay" not in names and names[0] == "learning_rate" and names[-1] == "dc_lambda"
    out = normalize_hparams("sgd", {"learning_rate": 0.1, "workers": 8.0}, config=cfg)
    assert out["workers"] == 8 and isinstance(out["workers"], int)
    assert out["dc_lambda"] == 0.04 and out["initial_workers"] == 0
    assert normalize_hparams("sgd", {"learning_rate": 0.1}, config=TrainConfig(
        system="async", compensation="dc-a"))["dc_lambda"] == 2.0
    # Delay configs keep exactly the fields (and so the config_id) they always had.
    c = sweep.normalize_config({"learning_rate": 0.1, "batch_size": 8, "epochs": 1})
    assert set(c) == {"model", "optimizer", "batch_size", "epochs", "seed", "learning_rate", "delay",
                      "warmup_steps", "momentum"}
    a = sweep.normalize_config({"learning_rate": 0.1, "batch_size": 8, "epochs": 1, "system": "async", "workers": 4})
    assert a["max_workers"] == 4 and a["server_rule"] == "async" and a["compensation"] is None
    assert sweep.config_id(a) != sweep.config_id(c)
