"""The composable core: events, chained server rules, the step convention, synchronous, the Trainer's reach.

Independent references: event sequences worked by hand; the float64 NumPy event simulator of
``test_simulator.reference_async`` (its own FIFO queues and server rules, written from the method
descriptions, not from the library); for the Trainer's per-worker data, properties of the batches
(every batch inside the shard of the worker that computes it, each shard walked as a permutation).
"""

from __future__ import annotations

import ast
import functools
import os
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import asgd_jax
from asgd_jax import events, rules, timing
from asgd_jax.data import make_dataset
from asgd_jax.train import TrainConfig, Trainer

from test_simulator import DIM, SPEEDS3, W0, grad_jax, reference_async, run


# --- events ------------------------------------------------------------------------------------------


def test_events_hand_worked_and_version_counts_only_steps():
    """2 workers, times 1 and 3 (pure rule); arrivals as worked by hand; record_step(False) keeps the version."""
    s = events.init(2, timing=timing.per_worker(1.0, jnp.array([1.0, 3.0])))
    seen = []
    for t in range(6):
        s, a = events.step(s)
        s = events.record_step(s, a.arrived & (t != 3))  # the arrival of call 3 is not a step
        seen.append((bool(a.arrived), int(a.worker), float(a.time), int(a.staleness)))
    # By hand: call 0 fills the pool; w0@1 (v0, tau 0); w0@2 (dispatched at v1, tau 0); at time 3 w1's job
    # (v0) and w0's (v2) tie and the earlier dispatched arrives: w1, tau 2, not a step; then w0@3 (v2, tau 0
    # since the version stayed 2) and w0@4 (v3, tau 0).
    assert seen == [(False, 0, 1.0, 0), (True, 0, 1.0, 0), (True, 0, 2.0, 0), (True, 1, 3.0, 2),
                    (True, 0, 3.0, 0), (True, 0, 4.0, 0)]
    assert int(s.version) == 4 and int(s.arrivals) == 5


def test_events_cancel_restarts_a_worker_now():
    """Worker 1 (time 3) is cancelled at time 1 and restarted: its job now finishes at 1 + 3 = 4, not 3."""
    s = events.init(2, timing=timing.per_worker(1.0, jnp.array([1.0, 3.0])))
    s, _ = events.step(s)                        # w0 dispatched (finishes 1)
    s = events.record_step(s, False)
    s, a = events.step(s)                        # w1 dispatched (finishes 3); w0 arrives at 1
    assert (int(a.worker), float(a.time)) == (0, 1.0)
    s = events.record_step(s, True)
    s, mask = events.cancel(s, 1)
    assert mask.tolist() == [False, True] and int(s.in_flight) == 0
    s = s._replace(next_worker=jnp.int32(1))
    s, a = events.step(s)                        # restart w1 at time 1: pool 1 < 2 active, nothing arrives
    assert not bool(a.arrived) and float(s.jobs.finish[a.new_slot]) == 4.0
    s = events.record_step(s, False)             # pure rule: w0 is idle, gets the next job (finishes 2)
    s, a = events.step(s)
    assert (int(a.worker), float(a.time), int(a.staleness)) == (0, 2.0, 0)


class _Slowdown(timing.TimingModel):
    """Times 1 before clock 2.5, then 10 (a time-varying speed)."""

    is_random = False

    def sample(self, key, worker, num_workers=1):
        return jnp.ones(jnp.shape(worker), jnp.float32)

    def sample_at(self, key, worker, num_workers, now):
        return jnp.where(now < 2.5, 1.0, 10.0) * jnp.ones(jnp.shape(worker), jnp.float32)


jax.tree_util.register_pytree_node(_Slowdown, lambda m: ((), None), lambda _, __: _Slowdown())


def test_compute_time_may_depend_on_the_clock():
    trace = asgd_jax.simulate_staleness(1, _Slowdown(), 5)
    # One worker: jobs start at 0, 1, 2 (time 1 each), then at 3 and 13 (time 10).
    np.testing.assert_array_equal(trace.time, [1.0, 2.0, 3.0, 13.0, 23.0])


# --- rules, chained ------------------------------------------------------------------------------------


class _DropOldState(NamedTuple):
    stepped: jax.Array
    discarded: jax.Array
    inner_state: Any


def _drop_older_than_workers_minus_one(inner):
    """A user's own rule, written only from the documented step convention (not with rules.accumulate)."""
    inner = optax.with_extra_args_support(inner)

    def init(params):
        return _DropOldState(jnp.zeros([], bool), jnp.zeros([], jnp.int32), inner.init(params))

    def update(g, state, params=None, *, staleness, active_workers, **extra):
        keep = staleness <= active_workers - 1
        u, new_inner = inner.update(g, state.inner_state, params, **extra)
        inner_state = jax.tree.map(lambda a, b: jnp.where(keep, a, b), new_inner, state.inner_state)
        u = jax.tree.map(lambda x: jnp.where(keep, x, 0.0), u)
        return u, _DropOldState(keep, state.discarded + (~keep).astype(jnp.int32), inner_state)

    return optax.GradientTransformationExtraArgs(init, update)


@pytest.mark.parametrize("how", ["own rule", "skip predicate"])
def test_a_users_drop_rule_matches_the_numpy_reference(how):
    """Ringmaster with R = n - 1 = 2, expressed by a user: same parameters, versions and discards as the reference."""
    inner = optax.sgd(0.1)
    server = (_drop_older_than_workers_minus_one(inner) if how == "own rule" else
              rules.accumulate(inner, skip=lambda staleness, active_workers, **_: staleness > active_workers - 1))
    tx = asgd_jax.parameter_server(server, 3, timing=SPEEDS3)
    w, s, tr = run(tx, 40)
    ref, arrivals = reference_async(3, [1.0, 2.0, 3.0], 40, 0.1, max_staleness=2)
    np.testing.assert_allclose(tr["w"], ref, rtol=1e-5, atol=1e-6)
    dropped = sum(tau > 2 for *_, tau in arrivals)
    assert dropped > 0 and int(s.discarded) == dropped and int(s.version) == len(arrivals) - dropped


def test_chain_order_is_rule_order():
    """clip then scale (the reference's order) matches; scale then clip differs on this run."""
    scale = lambda tau: 1.0 / max(tau, 1)
    ref, _ = reference_async(3, [1.0, 2.0, 3.0], 30, 0.1, clip=0.5, scale=scale)
    ordered = optax.chain(rules.clip_by_global_norm(0.5), rules.scale_by_staleness("inverse"), optax.sgd(0.1))
    _, _, tr = run(asgd_jax.parameter_server(ordered, 3, timing=SPEEDS3), 30)
    np.testing.assert_allclose(tr["w"], ref, rtol=1e-5, atol=1e-6)
    swapped = optax.chain(rules.scale_by_staleness("inverse"), rules.clip_by_global_norm(0.5), optax.sgd(0.1))
    _, _, tr2 = run(asgd_jax.parameter_server(swapped, 3, timing=SPEEDS3), 30)
    assert np.abs(tr2["w"][-1] - ref[-1]).max() > 1e-4


def test_dc_asgd_a_learns_only_from_kept_arrivals():
    """DC-ASGD-a + Ringmaster: the mean square skips dropped arrivals, as in the reference."""
    tx = asgd_jax.asynchronous(optax.sgd(0.1), 3, timing=SPEEDS3, compensation="dc-a", dc_lambda=0.3,
                               max_staleness=1)
    _, _, tr = run(tx, 30)
    ref, arrivals = reference_async(3, [1.0, 2.0, 3.0], 30, 0.1, comp="dc-a", lam=0.3, max_staleness=1)
    assert any(tau > 1 for *_, tau in arrivals)
    np.testing.assert_allclose(tr["w"], ref, rtol=1e-5, atol=1e-6)


def test_rules_refuse_bad_values_in_one_line():
    for make, match in [(lambda: rules.clip_by_global_norm(-1.0), "clip_norm"),
                        (lambda: rules.clip_by_global_norm(float("nan")), "clip_norm"),
                        (lambda: rules.dc_asgd("c", -1.0), "dc_lambda"),
                        (lambda: rules.dc_asgd("x"), "kind"),
                        (lambda: rules.accumulate(optax.sgd(0.1), 0), "accumulate"),
                        (lambda: rules.accumulate(optax.sgd(0.1), 1, max_staleness=-1), "max_staleness"),
                        (lambda: rules.scale_by_staleness("bogus"), "staleness_scaling"),
                        (lambda: asgd_jax.synchronous(optax.sgd(0.1), 3, backup_workers=3), "backup_workers")]:
        with pytest.raises(ValueError, match=match) as e:
            make()
        assert "\n" not in str(e.value)


def test_synchronous_is_its_own_transform():
    """SSGD of 3 workers: one step per round on the average, at the slowest worker's time."""
    tx = asgd_jax.synchronous(optax.sgd(0.1), 3, timing=SPEEDS3)
    w, s, tr = run(tx, 6)
    w0 = np.asarray(W0)
    g = np.mean([np.asarray(grad_jax(jnp.asarray(w0, jnp.float32), i)) for i in range(3)], axis=0)
    np.testing.assert_allclose(tr["w"][2], w0 - 0.1 * g, rtol=1e-6)
    assert tr["time"][2::3].tolist() == [3.0, 6.0] and int(s.version) == 2 and isinstance(s, asgd_jax.SyncState)


def test_library_functions_are_short_and_events_module_small():
    """No function of asgd_jax/ over 80 lines of code (docstrings and comments excluded)."""
    root = os.path.join(os.path.dirname(__file__), "..", "asgd_jax")
    long = []
    for name in sorted(os.listdir(root)):
        if not name.endswith(".py"):
            continue
        src = open(os.path.join(root, name)).read()
        lines = src.splitlines()
        for node in ast.walk(ast.parse(src)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                span = set(range(node.lineno, node.end_lineno + 1))
                first = node.body[0]
                if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                    span -= set(range(first.lineno, first.end_lineno + 1))
                code = [i for i in span if lines[i - 1].strip() and not lines[i - 1].strip().startswith("#")]
                if len(code) > 80:
                    long.append(f"{name}:{node.name} ({len(code)})")
    assert not long, long
    assert len(open(os.path.join(root, "events.py")).read().splitlines()) <= 300


# --- the Trainer reaches every rule and gives workers their own data ---------------------------------


@functools.cache
def _labelled():
    rng = np.random.default_rng(3)
    y = np.repeat(np.arange(4), 24)
    x = rng.uniform(0, 1, (96, 6, 6))
    return make_dataset(x, y, x[:20], y[:20], name="toy", max_value=1.0, num_classes=4)


def test_per_worker_batches_come_from_the_workers_own_shard():
    cfg = TrainConfig(model="mlp", batch_size=6, epochs=1, system="async", max_workers=4,
                      timing="fixed", assignment="shuffle", data_split="label")
    trainer = Trainer(cfg, _labelled())
    data = trainer.data
    hp = {"learning_rate": 0.1, "workers": 4, "time_mean": 1.0}
    state = jax.jit(trainer.init)(data, jax.random.key(0), hp)
    step, batch = jax.jit(trainer.step), jax.jit(trainer.batch_indices)
    y = np.asarray(_labelled().y_train)
    seen = {w: [] for w in range(4)}
    for _ in range(16):
        w = int(asgd_jax.next_worker(state.opt_state))
        idx, _ = batch(data, state)
        labels = set(y[np.asarray(idx)].tolist())
        assert labels == {w}, (w, labels)      # the label split gives worker w exactly class w
        seen[w] += np.asarray(idx).tolist()
        state = step(data, state)
    for w in range(4):                          # each walk through a 24-sample shard is a permutation
        assert len(seen[w]) == 24 and len(set(seen[w])) == 24
    _, metrics = jax.jit(trainer.end_epoch)(data, state)
    assert metrics["per_class_accuracy"].shape == (4,)
    steps = metrics["worker_gradients"].tolist()       # 13 arrivals after 3 start-up calls, 4 jobs per worker
    assert sum(steps) == 13 and max(steps) <= 4


def test_trainer_reaches_drop_and_accumulate_rules():
    """Rennala through a TrainConfig: only staleness-0 arrivals count, a step per S = 2 of them."""
    cfg = TrainConfig(model="mlp", batch_size=8, epochs=1, system="async", max_workers=3,
                      rules=("drop", "accumulate"))
    trainer = Trainer(cfg, _labelled())
    hp = {"learning_rate": 0.1, "workers": 3, "max_staleness": 0, "accumulate": 2,
          "straggler_fraction": 1 / 3, "straggler_slowdown": 2.5}
    state = jax.jit(trainer.init)(trainer.data, jax.random.key(0), hp)
    step = jax.jit(trainer.step)
    for _ in range(12):
        state = step(trainer.data, state)
    sim = state.opt_state
    # By hand (times 1, 1, 2.5; pure rule): arrivals w0@1 w1@1 (tau 0, 0: step 1), w0@2 (v0: dropped),
    # w1@2, w2@2.5 (v0: dropped), w0@3 (step 2), w1@3 (v1: dropped), w0@4, w1@4 (step 3), w2@5 (v1: dropped).
    assert (int(sim.arrivals), int(sim.version), int(sim.discarded)) == (10, 3, 4)


def test_trainer_refuses_rules_without_their_values_and_a_split_with_fewer_workers():
    cfg = TrainConfig(model="mlp", batch_size=8, epochs=1, system="async", max_workers=3, rules=("clip",))
    with pytest.raises(ValueError, match="clip_norm"):
        asgd_jax.normalize_hparams("sgd", {"learning_rate": 0.1, "workers": 3}, config=cfg)
    cfg = TrainConfig(model="mlp", batch_size=8, epochs=1, system="async", max_workers=3, data_split="iid")
    with pytest.raises(ValueError, match="max_workers"):
        asgd_jax.normalize_hparams("sgd", {"learning_rate": 0.1, "workers": 2}, config=cfg)
    with pytest.raises(ValueError, match="rules"):
        TrainConfig(model="mlp", system="async", max_workers=3, rules=("nope",)).validate()
    with pytest.raises(ValueError, match="does not apply"):
        TrainConfig(model="mlp", system="async", max_workers=3, server_rule="sync", rules=("drop",)).validate()


def test_a_custom_server_callable_builds_the_system_from_traced_values():
    """server=(inner, hparams, key) -> system: the Trainer vmaps a user's hyperparameter through it."""

    def server(inner, hp, key):
        chain = optax.chain(rules.scale_by_staleness(lambda tau: hp["damp"] ** tau), inner)
        return asgd_jax.parameter_server(chain, hp["workers"], max_workers=3, key=key)

    cfg = TrainConfig(model="mlp", batch_size=8, epochs=1, system="async", max_workers=3, server=server,
                      server_hparams=(("damp", 1.0),))
    trainer = Trainer(cfg, _labelled())
    hp = {"learning_rate": jnp.array([0.1, 0.1]), "workers": jnp.array([3, 3]), "damp": jnp.array([1.0, 0.0])}
    keys = jax.random.split(jax.random.key(0), 2)
    fns = trainer.vmapped()
    state = fns["init"](trainer.data, keys, hp)
    for _ in range(6):
        state = fns["step"](trainer.data, state)
    p = jax.tree.leaves(state.params)
    # damp 0 zeroes every stale gradient (staleness 2 in steady state) -> the two configs differ.
    assert max(float(jnp.abs(a[0] - a[1]).max()) for a in p) > 1e-6
    chex.assert_equal(int(state.opt_state.version[0]), int(state.opt_state.version[1]))


def test_traced_out_of_range_values_are_recorded_not_hidden():
    """A traced delay above max_delay (clipped by the transform), a negative lr, workers above the bound: flagged."""
    cfg = TrainConfig(model="mlp", batch_size=8, epochs=1, max_delay=3)
    trainer = Trainer(cfg, _labelled())
    hp = {"learning_rate": jnp.array([0.1, 0.1, -0.1]), "delay": jnp.array([3, 7, 0])}
    fns = trainer.vmapped()
    state = fns["init"](trainer.data, jax.random.split(jax.random.key(0), 3), hp)
    _, metrics = fns["end_epoch"](trainer.data, state)
    assert metrics["invalid"].tolist() == [False, True, True]
    cfg = TrainConfig(model="mlp", batch_size=8, epochs=1, system="async", max_workers=4, rules=("accumulate",))
    trainer = Trainer(cfg, _labelled())
    hp = {"learning_rate": jnp.array([0.1, 0.1, 0.1]), "workers": jnp.array([4, 8, 2]),
          "accumulate": jnp.array([1, 1, 0])}
    state = trainer.vmapped()["init"](trainer.data, jax.random.split(jax.random.key(0), 3), hp)
    assert state.invalid.tolist() == [False, True, True]


def test_runs_that_cannot_train_are_refused_before_compiling():
    from asgd_jax.sweep import normalize_config

    base = dict(model="mlp", batch_size=32, epochs=1, learning_rate=0.1)   # 96 // 32 = 3 gradients
    with pytest.raises(ValueError, match="delay=3 applies no gradient in a run of 3 gradients"):
        normalize_config({**base, "delay": 3}, 96)
    with pytest.raises(ValueError, match="workers=4 take no server step"):
        normalize_config({**base, "system": "async", "workers": 4}, 96)
    with pytest.raises(ValueError, match="momentum"):
        normalize_config({**base, "momentum": -1.0}, 96)
    assert normalize_config({**base, "delay": 2}, 96)["delay"] == 2


def test_transforms_flag_traced_values_they_clip():
    """Under jit nothing can raise: the states carry an 'invalid' flag for values they had to clip."""
    w = jnp.zeros(2)
    delayed = jax.jit(lambda d: asgd_jax.delayed(optax.sgd(0.1), d, max_delay=3).init(w).invalid)
    assert [bool(delayed(d)) for d in (0, 3, 7, -1)] == [False, False, True, True]
    pool = jax.jit(lambda n, r: asgd_jax.asynchronous(optax.sgd(0.1), n, max_workers=4, max_staleness=r).init(w).invalid)
    assert [bool(pool(n, r)) for n, r in ((4, 0), (8, 0), (0, 0), (2, -1))] == [False, True, True, True]
    sync = jax.jit(lambda b: asgd_jax.synchronous(optax.sgd(0.1), 4, backup_workers=b).init(w).invalid)
    assert [bool(sync(b)) for b in (0, 3, 4, -1)] == [False, False, True, True]
