"""Tests for asgd_jax.delay: the constant-delay transform ``delayed``.

The rule (docs/methods.md#constant-delay-jain-et-al-2018): with ``g_t`` the gradient passed at step ``t``,
``u_t = 0`` for ``t < d`` (the inner optimizer's state does not move) and
``u_t = inner(g_{t-d}, w_t)`` for ``t >= d``. The references below are plain
NumPy (float64) implementations of SGD with momentum, Adam, Adagrad and of the
delay rule (a ``collections.deque`` FIFO), written from the formulas and not
from the library.
"""

from __future__ import annotations

import collections
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from asgd_jax.delay import DelayedState, delayed

# --- NumPy references ---------------------------------------------------------------------------


class NpSGD:
    """optax.sgd: trace = g + momentum * trace; update = -lr * trace."""

    def __init__(self, lr, momentum=0.0):
        self.lr, self.momentum = lr, momentum

    def init(self, w):
        return np.zeros_like(w, np.float64)

    def update(self, g, trace):
        trace = g + self.momentum * trace
        return -self.lr * trace, trace


class NpAdam:
    """optax.adam defaults: b1=.9, b2=.999, eps=1e-8, eps_root=0, count starts at 1."""

    def __init__(self, lr, b1=0.9, b2=0.999, eps=1e-8):
        self.lr, self.b1, self.b2, self.eps = lr, b1, b2, eps

    def init(self, w):
        return (0, np.zeros_like(w, np.float64), np.zeros_like(w, np.float64))

    def update(self, g, state):
        count, mu, nu = state
        count += 1
        mu = self.b1 * mu + (1 - self.b1) * g
        nu = self.b2 * nu + (1 - self.b2) * g * g
        mu_hat = mu / (1 - self.b1**count)
        nu_hat = nu / (1 - self.b2**count)
        return -self.lr * mu_hat / (np.sqrt(nu_hat) + self.eps), (count, mu, nu)


class NpAdagrad:
    """optax.adagrad: acc = acc + g^2 (acc_0 = 0.1); update = -lr * g / sqrt(acc + eps)."""

    def __init__(self, lr, initial=0.1, eps=1e-7):
        self.lr, self.initial, self.eps = lr, initial, eps

    def init(self, w):
        return np.full_like(w, self.initial, np.float64)

    def update(self, g, acc):
        acc = acc + g * g
        return -self.lr * g / np.sqrt(acc + self.eps), acc


class NpDelayed:
    """The delay rule with its own FIFO: g_t goes in, g_{t-d} comes out once t >= d."""

    def __init__(self, inner, d):
        self.inner, self.d = inner, d

    def init(self, w):
        return (collections.deque(), self.inner.init(w))

    def update(self, g, state):
        fifo, inner_state = state
        fifo.append(np.array(g, np.float64))
        if len(fifo) > self.d:
            u, inner_state = self.inner.update(fifo.popleft(), inner_state)
        else:
            u = np.zeros_like(g, np.float64)
        return u, (fifo, inner_state)


def np_clip_by_global_norm(g, max_norm):
    norm = np.sqrt(np.sum(g * g))
    return g if norm < max_norm else g * (max_norm / norm)


# --- a small least-squares problem --------------------------------------------------------------


_RNG = np.random.default_rng(1234)
A = _RNG.normal(size=(8, 5)) / np.sqrt(8.0)
B = _RNG.normal(size=(8,))
W0 = _RNG.normal(size=(5,))


def np_grad(w):
    """Gradient of 0.5 * ||A w - b||^2."""
    return A.T @ (A @ w - B)


def jnp_grad(w):
    return jax.grad(lambda v: 0.5 * jnp.sum((jnp.asarray(A) @ v - jnp.asarray(B)) ** 2))(w)


def np_trajectory(opt, steps, w0=W0):
    w = np.array(w0, np.float64)
    state = opt.init(w)
    ws = []
    for _ in range(steps):
        u, state = opt.update(np_grad(w), state)
        w = w + u
        ws.append(w.copy())
    return np.stack(ws)


# --- tests --------------------------------------------------------------------------------------


class TrajectoryTest(chex.TestCase):
    """50 steps on the quadratic, gradient at the current parameters, float64 throughout."""

    @chex.variants(with_jit=True, without_jit=True)
    def test_matches_numpy_reference(self):
        steps = 50
        cases = [
            ("sgd", lambda: optax.sgd(0.05, momentum=0.9), lambda: NpSGD(0.05, 0.9)),
            ("adam", lambda: optax.adam(0.05), lambda: NpAdam(0.05)),
        ]
        with jax.enable_x64(True):
            for name, make_tx, make_np in cases:
                for d in (0, 1, 3):
                    with self.subTest(optimizer=name, delay=d):
                        expected = np_trajectory(NpDelayed(make_np(), d), steps)
                        tx = delayed(make_tx(), d)
                        update = self.variant(tx.update)
                        w = jnp.asarray(W0, jnp.float64)
                        state = tx.init(w)
                        ws = []
                        for _ in range(steps):
                            u, state = update(jnp_grad(w), state, w)
                            w = optax.apply_updates(w, u)
                            ws.append(w)
                        got = jnp.stack(ws)
                        self.assertEqual(got.dtype, jnp.float64)
                        chex.assert_trees_all_close(got, expected, rtol=1e-6, atol=1e-12)
                        # The trajectory really moves (so the comparison means something).
                        self.assertGreater(float(np.abs(expected[-1] - W0).max()), 1e-2)

    def test_delays_give_different_trajectories(self):
        # Guards the reference: if delay were ignored, all trajectories would coincide.
        t0 = np_trajectory(NpDelayed(NpSGD(0.05, 0.9), 0), 20)
        t3 = np_trajectory(NpDelayed(NpSGD(0.05, 0.9), 3), 20)
        self.assertGreater(float(np.abs(t0 - t3).max()), 1e-3)
        np.testing.assert_array_equal(t3[:3], np.broadcast_to(W0, (3, 5)))


class DelayZeroTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_delay_zero_is_inner_exactly(self):
        inners = {
            "sgd_momentum": lambda: optax.sgd(0.1, momentum=0.9),
            "adam": lambda: optax.adam(1e-2),
            "clip_adam": lambda: optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-2)),
        }
        rng = np.random.default_rng(0)
        grads = [
            {
                "w": jnp.asarray(rng.normal(size=(3, 2)), jnp.float32),
                "b": jnp.asarray(rng.normal(size=(2,)), jnp.float32),
            }
            for _ in range(15)
        ]
        params0 = {"w": jnp.ones((3, 2), jnp.float32), "b": jnp.zeros((2,), jnp.float32)}
        for name, make in inners.items():
            for max_delay in (None, 4):
                with self.subTest(inner=name, max_delay=max_delay):
                    inner = make()
                    tx = delayed(make(), 0, max_delay=max_delay)
                    inner_update = self.variant(inner.update)
                    tx_update = self.variant(tx.update)
                    p_ref, s_ref = params0, inner.init(params0)
                    p, s = params0, tx.init(params0)
                    # max_delay=None (so 0) takes no buffer path: bit-for-bit inner. With a
                    # bound > 0 the select-based path is the same maths, but XLA may fuse it
                    # differently under jit (seen: 1 ulp in Adam), so it gets a 1-ulp-level check.
                    if max_delay is None:
                        check = chex.assert_trees_all_equal
                    else:
                        check = lambda a, b: chex.assert_trees_all_close(a, b, rtol=1e-6, atol=0)
                    for g in grads:
                        u_ref, s_ref = inner_update(g, s_ref, p_ref)
                        u, s = tx_update(g, s, p)
                        check(u, u_ref)
                        p_ref = optax.apply_updates(p_ref, u_ref)
                        p = optax.apply_updates(p, u)
                    check(p, p_ref)
                    check(s.inner_state, s_ref)
                    self.assertEqual(int(s.step), len(grads))


class HandDerivedTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_sgd_delay_two(self):
        # g_t = 1, 2, 3, 4; d = 2: u_0 = u_1 = 0, u_2 = -0.1 * g_0 = -0.1, u_3 = -0.1 * g_1 = -0.2.
        tx = delayed(optax.sgd(0.1), 2)
        update = self.variant(tx.update)
        params = jnp.array([1.0])
        state = tx.init(params)
        got = []
        for g in (1.0, 2.0, 3.0, 4.0):
            u, state = update(jnp.array([g]), state, params)
            got.append(float(u[0]))
        np.testing.assert_allclose(got, [0.0, 0.0, -0.1, -0.2], rtol=1e-6, atol=0)
        self.assertEqual(got[:2], [0.0, 0.0])

    @chex.variants(with_jit=True, without_jit=True)
    def test_momentum_delay_two(self):
        # momentum 0.5, d = 2: trace_2 = g_0 = 1 -> u_2 = -0.1; trace_3 = g_1 + 0.5 * 1 = 2.5
        # -> u_3 = -0.25; trace_4 = g_2 + 0.5 * 2.5 = 4.25 -> u_4 = -0.425.
        tx = delayed(optax.sgd(0.1, momentum=0.5), 2)
        update = self.variant(tx.update)
        params = jnp.array([0.0])
        state = tx.init(params)
        got = []
        for g in (1.0, 2.0, 3.0, 4.0, 5.0):
            u, state = update(jnp.array([g]), state, params)
            got.append(float(u[0]))
        np.testing.assert_allclose(got, [0.0, 0.0, -0.1, -0.25, -0.425], rtol=1e-6, atol=0)


class StartUpTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_inner_state_frozen_during_first_d_steps(self):
        d = 3
        params = {"a": jnp.arange(4.0), "b": jnp.ones((2, 3))}
        for make in (lambda: optax.adam(0.1), lambda: optax.sgd(0.1, momentum=0.9)):
            inner = make()
            tx = delayed(make(), d)
            update = self.variant(tx.update)
            state = tx.init(params)
            fresh = inner.init(params)
            for t in range(d):
                g = jax.tree.map(lambda p, t=t: p + t + 1.0, params)
                u, state = update(g, state, params)
                chex.assert_trees_all_equal(u, jax.tree.map(jnp.zeros_like, params))
                chex.assert_trees_all_equal(state.inner_state, fresh)
                self.assertEqual(int(state.step), t + 1)
            # Step d applies g_0 = params + 1: inner state moves, update is inner's first update.
            u, state = update(jax.tree.map(jnp.zeros_like, params), state, params)
            u_ref, s_ref = inner.update(jax.tree.map(lambda p: p + 1.0, params), fresh, params)
            chex.assert_trees_all_close(u, u_ref, rtol=1e-6)
            chex.assert_trees_all_close(state.inner_state, s_ref, rtol=1e-6)
            with self.assertRaises(AssertionError):
                chex.assert_trees_all_equal(state.inner_state, fresh)


def _run_delay(d, grads, w0, max_delay):
    """Runs delayed(sgd momentum) on the quadratic with lax.scan; returns the trajectory."""
    tx = delayed(optax.sgd(0.05, momentum=0.9), d, max_delay=max_delay)
    a, b = jnp.asarray(A, jnp.float32), jnp.asarray(B, jnp.float32)

    def step(carry, _):
        w, s = carry
        g = a.T @ (a @ w - b)
        u, s = tx.update(g, s, w)
        w = optax.apply_updates(w, u)
        return (w, s), w

    _, ws = jax.lax.scan(step, (w0, tx.init(w0)), None, length=grads)
    return ws


class VmapDelayTest(chex.TestCase):
    def test_vmap_over_delays_equals_one_by_one(self):
        steps = 30
        w0 = jnp.asarray(W0, jnp.float32)
        delays = jnp.array([0, 1, 2, 3], jnp.int32)
        vmapped = jax.jit(jax.vmap(lambda d: _run_delay(d, steps, w0, 3)))(delays)
        self.assertEqual(vmapped.shape, (4, steps, 5))
        for i, d in enumerate([0, 1, 2, 3]):
            alone = jax.jit(functools.partial(_run_delay, d, steps, w0, None))()
            chex.assert_trees_all_close(vmapped[i], alone, rtol=1e-5, atol=1e-6)
            # And both follow the NumPy reference (float32 run, loose tolerance).
            expected = np_trajectory(NpDelayed(NpSGD(0.05, 0.9), d), steps)
            chex.assert_trees_all_close(vmapped[i], expected.astype(np.float32), rtol=1e-4, atol=1e-5)
        # Distinct delays really produce distinct trajectories.
        self.assertGreater(float(jnp.abs(vmapped[0] - vmapped[3]).max()), 1e-3)


class CompositionTest(chex.TestCase):
    def _grads(self, steps, size=4, scale=3.0, seed=0):
        rng = np.random.default_rng(seed)
        return [scale * rng.normal(size=(size,)) for _ in range(steps)]

    def _run_jax(self, tx, grads, update_fn=None, params=None):
        params = jnp.zeros(grads[0].shape, jnp.float32) if params is None else params
        state = tx.init(params)
        update = update_fn or tx.update
        out = []
        for g in grads:
            u, state = update(jnp.asarray(g, jnp.float32), state, params)
            out.append(u)
        return jnp.stack(out), state

    def _run_np(self, opt, grads, pre=lambda g: g):
        state = opt.init(grads[0])
        out = []
        for g in grads:
            u, state = opt.update(pre(g), state)
            out.append(u)
        return np.stack(out)

    @chex.variants(with_jit=True, without_jit=True)
    def test_inside_chain_and_around_chain(self):
        grads = self._grads(12)
        clip = lambda g: np_clip_by_global_norm(g, 1.0)
        expected = self._run_np(NpDelayed(NpSGD(0.1, 0.9), 2), grads, pre=clip)
        self.assertTrue(all(np.linalg.norm(g) > 1.0 for g in grads))  # clipping is active
        outer = optax.chain(optax.clip_by_global_norm(1.0), delayed(optax.sgd(0.1, momentum=0.9), 2))
        inner = delayed(optax.chain(optax.clip_by_global_norm(1.0), optax.sgd(0.1, momentum=0.9)), 2)
        for tx in (outer, inner):
            got, _ = self._run_jax(tx, grads, self.variant(tx.update))
            chex.assert_trees_all_close(got, expected.astype(np.float32), rtol=1e-5, atol=1e-6)

    @chex.variants(with_jit=True, without_jit=True)
    def test_inject_hyperparams_inner(self):
        grads = self._grads(10, scale=1.0, seed=1)
        inner = optax.inject_hyperparams(optax.sgd)(learning_rate=0.1, momentum=0.9)
        tx = delayed(inner, 2)
        update = self.variant(tx.update)
        params = jnp.zeros((4,), jnp.float32)
        state = tx.init(params)
        ref = NpDelayed(NpSGD(0.1, 0.9), 2)
        ref_state = ref.init(grads[0])
        for t, g in enumerate(grads):
            if t == 5:
                # Change the learning rate where it lives: in the inner state.
                hp = dict(state.inner_state.hyperparams)
                self.assertIn("learning_rate", hp)
                hp["learning_rate"] = jnp.asarray(0.01, hp["learning_rate"].dtype)
                state = state._replace(inner_state=state.inner_state._replace(hyperparams=hp))
                ref.inner.lr = 0.01
            u, state = update(jnp.asarray(g, jnp.float32), state, params)
            u_ref, ref_state = ref.update(g, ref_state)
            chex.assert_trees_all_close(u, u_ref.astype(np.float32), rtol=1e-5, atol=1e-7)
            # Hyperparameters survive the start-up steps unchanged.
            self.assertAlmostEqual(float(state.inner_state.hyperparams["momentum"]), 0.9, places=6)
        self.assertAlmostEqual(float(state.inner_state.hyperparams["learning_rate"]), 0.01, places=7)

    @chex.variants(with_jit=True, without_jit=True)
    def test_adagrad_inner(self):
        grads = self._grads(10, scale=1.0, seed=2)
        expected = self._run_np(NpDelayed(NpAdagrad(0.1), 3), grads)
        tx = delayed(optax.adagrad(0.1), 3)
        got, _ = self._run_jax(tx, grads, self.variant(tx.update))
        chex.assert_trees_all_close(got, expected.astype(np.float32), rtol=1e-5, atol=1e-7)

    @chex.variants(with_jit=True, without_jit=True)
    def test_pytree_params(self):
        rng = np.random.default_rng(3)
        shapes = {"dense": {"kernel": (3, 4), "bias": (4,)}, "scale": (), "conv": (2, 2, 1, 3)}
        params = jax.tree.map(
            lambda s: jnp.zeros(s, jnp.float32), shapes, is_leaf=lambda x: isinstance(x, tuple)
        )
        steps, d = 8, 2
        grads = [jax.tree.map(lambda p: rng.normal(size=p.shape), params) for _ in range(steps)]
        tx = delayed(optax.adam(0.1), d)
        update = self.variant(tx.update)
        state = tx.init(params)
        chex.assert_trees_all_equal_shapes(
            state.buffer, jax.tree.map(lambda p: jnp.zeros((d + 1,) + p.shape), params)
        )
        got = []
        for g in grads:
            u, state = update(jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), g), state, params)
            got.append(u)
        # Adam is elementwise: the reference runs leaf by leaf.
        for leaf in range(len(jax.tree.leaves(grads[0]))):
            seq = [jax.tree.leaves(g)[leaf] for g in grads]
            ref = NpDelayed(NpAdam(0.1), d)
            s = ref.init(np.asarray(seq[0]))
            for t in range(steps):
                u_ref, s = ref.update(np.asarray(seq[t]), s)
                chex.assert_trees_all_close(
                    jax.tree.leaves(got[t])[leaf], u_ref.astype(np.float32), rtol=1e-5, atol=1e-7
                )
        chex.assert_trees_all_equal_structs(got[-1], params)

    @chex.variants(with_jit=True, without_jit=True)
    def test_extra_args_reach_inner(self):
        def scale_by_kwarg():
            def init_fn(params):
                return optax.EmptyState()

            def update_fn(updates, state, params=None, *, factor, **extra):
                del params, extra
                return jax.tree.map(lambda u: u * factor, updates), state

            return optax.GradientTransformationExtraArgs(init_fn, update_fn)

        tx = delayed(scale_by_kwarg(), 1)
        update = self.variant(tx.update)
        params = jnp.zeros((2,))
        state = tx.init(params)
        u0, state = update(jnp.array([1.0, 2.0]), state, params, factor=10.0)
        u1, state = update(jnp.array([3.0, 4.0]), state, params, factor=-2.0)
        chex.assert_trees_all_close(u0, jnp.zeros(2))
        # u_1 = factor_1 * g_0.
        chex.assert_trees_all_close(u1, jnp.array([-2.0, -4.0]))


class BadInputTest(chex.TestCase):
    def test_negative_delay(self):
        with pytest.raises(ValueError, match=r"delay must be >= 0.*-1"):
            delayed(optax.sgd(0.1), -1)

    def test_delay_above_max_delay(self):
        with pytest.raises(ValueError, match=r"delay=4 exceeds max_delay=3"):
            delayed(optax.sgd(0.1), 4, max_delay=3)

    def test_non_integer_delay(self):
        for bad in (1.5, 2.0, "2", jnp.array([1, 2])):
            with pytest.raises(ValueError, match=r"delay must be a scalar integer"):
                delayed(optax.sgd(0.1), bad)

    def test_traced_delay_without_max_delay(self):
        def build(d):
            tx = delayed(optax.sgd(0.1), d)
            return tx.init(jnp.zeros(2)).step

        with pytest.raises(ValueError, match=r"traced delay.*max_delay"):
            jax.jit(build)(2)
        # With a bound it traces fine.
        jax.jit(lambda d: delayed(optax.sgd(0.1), d, max_delay=3).init(jnp.zeros(2)).step)(2)

    def test_bad_max_delay(self):
        with pytest.raises(ValueError, match=r"max_delay must be a non-negative"):
            delayed(optax.sgd(0.1), 0, max_delay=-1)


class MemoryTest(chex.TestCase):
    def test_buffer_leading_axis(self):
        params = {"w": jnp.zeros((3, 4)), "b": jnp.zeros((4,))}
        # max_delay + 1 slots (g_t is written before g_{t-d} is read); none without delay.
        for d, max_delay, slots in ((0, None, 0), (0, 0, 0), (3, None, 4), (1, 5, 6), (2, 2, 3)):
            with self.subTest(delay=d, max_delay=max_delay):
                state = delayed(optax.sgd(0.1), d, max_delay=max_delay).init(params)
                self.assertIsInstance(state, DelayedState)
                chex.assert_shape(state.buffer["w"], (slots, 3, 4))
                chex.assert_shape(state.buffer["b"], (slots, 4))
                self.assertEqual(int(state.delay), d)
