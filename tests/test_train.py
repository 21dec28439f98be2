"""Tests for asgd_jax.train: make_train, Trainer, run_configs, normalize_hparams.

Data: a synthetic 4-class problem whose label is the brightest quadrant of a 28x28 image, small
enough (256 train / 64 test) that every compiled program here is an MLP's and takes about a second.
"""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from asgd_jax.data import make_dataset
from asgd_jax.train import TrainConfig, make_train, normalize_hparams, run_configs

NUM_TRAIN, NUM_TEST, NUM_CLASSES = 256, 64, 4


def _quadrant_images(rng, n):
    """Uniform noise in [0, 0.4]; the quadrant named by the label gets +0.5."""
    x = rng.uniform(0.0, 0.4, size=(n, 28, 28))
    y = rng.integers(0, NUM_CLASSES, size=n)
    for i, label in enumerate(y):
        r, c = divmod(int(label), 2)
        x[i, 14 * r : 14 * (r + 1), 14 * c : 14 * (c + 1)] += 0.5
    return x, y


@functools.cache
def _dataset():
    rng = np.random.default_rng(0)
    x_train, y_train = _quadrant_images(rng, NUM_TRAIN)
    x_test, y_test = _quadrant_images(rng, NUM_TEST)
    return make_dataset(
        x_train, y_train, x_test, y_test, name="quadrants", max_value=1.0, num_classes=NUM_CLASSES
    )


# One static config shared by most tests, so its programs compile once.
CONFIG = TrainConfig(model="mlp", optimizer="sgd", batch_size=32, epochs=3, max_delay=3)


@functools.cache
def _train():
    return make_train(CONFIG, _dataset())


@functools.cache
def _single():
    return jax.jit(_train())


@functools.cache
def _batched():
    return jax.jit(jax.vmap(_train()))


def _hp(lr, delay=0, momentum=0.9):
    return {"learning_rate": jnp.float32(lr), "delay": jnp.int32(delay), "momentum": jnp.float32(momentum)}


# Three configs differing in learning rate, delay, momentum and seed (all stable).
SWEEP = {
    "learning_rate": np.array([0.05, 0.02, 0.02], np.float32),
    "delay": np.array([0, 2, 3], np.int32),
    "momentum": np.array([0.9, 0.9, 0.5], np.float32),
}
SWEEP_SEEDS = (11, 12, 13)


def _sweep_keys():
    return jnp.stack([jax.random.key(s) for s in SWEEP_SEEDS])


def _config(i):
    return {k: jnp.asarray(v[i]) for k, v in SWEEP.items()}


# --- an independent MLP forward pass and cross-entropy --------------------------------------------


def mlp_forward(params, x):
    h = x.reshape(x.shape[0], -1)
    for name in ("Dense_0", "Dense_1"):
        h = jnp.maximum(h @ params[name]["kernel"] + params[name]["bias"], 0.0)
    return h @ params["Dense_2"]["kernel"] + params["Dense_2"]["bias"]


def cross_entropy(params, x, y):
    logits = mlp_forward(params, x)
    z = logits - jnp.max(logits, axis=-1, keepdims=True)
    log_p = z - jnp.log(jnp.sum(jnp.exp(z), axis=-1, keepdims=True))
    return -jnp.mean(log_p[jnp.arange(y.shape[0]), y])


# Jitted once: op by op, the gradient would compile every primitive separately.
_ce = jax.jit(cross_entropy)
_grad_ce = jax.jit(jax.grad(cross_entropy))


# --- make_train / train -------------------------------------------------------------------------


class TrainTest(chex.TestCase):
    def test_metric_shapes_ranges_and_learning(self):
        metrics = _single()(jax.random.key(0), _hp(0.05))
        self.assertLessEqual({"test_accuracy", "test_loss", "train_loss", "diverged"}, set(metrics))
        for name, value in metrics.items():
            chex.assert_shape(value, (CONFIG.epochs,), custom_message=name)
        chex.assert_type(metrics["diverged"], bool)
        acc = np.asarray(metrics["test_accuracy"])
        self.assertTrue(np.all((acc >= 0) & (acc <= 1)))
        # Accuracy is a count over the 64 test images.
        np.testing.assert_allclose(acc * NUM_TEST, np.round(acc * NUM_TEST), atol=1e-4)
        for name in ("test_loss", "train_loss"):
            value = np.asarray(metrics[name])
            self.assertTrue(np.all(np.isfinite(value) & (value >= 0)), msg=name)
        self.assertFalse(np.any(np.asarray(metrics["diverged"])))
        # Learns: chance is 0.25; this problem is easy.
        self.assertGreater(float(acc[-1]), 0.9)
        self.assertLess(float(metrics["train_loss"][-1]), float(metrics["train_loss"][0]))
        self.assertLess(float(metrics["train_loss"][0]), np.log(NUM_CLASSES))

    def test_divergence_is_a_flag_not_an_exception(self):
        bad = _single()(jax.random.key(0), _hp(1e4))
        np.testing.assert_array_equal(np.asarray(bad["diverged"]), [True] * CONFIG.epochs)
        good = _single()(jax.random.key(0), _hp(1e-3))
        np.testing.assert_array_equal(np.asarray(good["diverged"]), [False] * CONFIG.epochs)

    def test_deterministic(self):
        a = _single()(jax.random.key(5), _hp(0.02, delay=1))
        b = _single()(jax.random.key(5), _hp(0.02, delay=1))
        chex.assert_trees_all_equal(a, b)
        # A different seed gives a different run (so equality above means something).
        c = _single()(jax.random.key(6), _hp(0.02, delay=1))
        self.assertFalse(np.array_equal(np.asarray(a["train_loss"]), np.asarray(c["train_loss"])))

    def test_vmap_equals_one_by_one(self):
        batched = _batched()(_sweep_keys(), {k: jnp.asarray(v) for k, v in SWEEP.items()})
        for name, value in batched.items():
            chex.assert_shape(value, (3, CONFIG.epochs), custom_message=name)
        for i, seed in enumerate(SWEEP_SEEDS):
            alone = _single()(jax.random.key(seed), _config(i))
            row = jax.tree.map(lambda v, i=i: v[i], batched)
            chex.assert_trees_all_close(row, alone, rtol=1e-5, atol=1e-5)
        # The three configs really differ.
        losses = np.asarray(batched["train_loss"])
        self.assertGreater(float(np.abs(losses[0] - losses[1]).max()), 1e-3)
        self.assertGreater(float(np.abs(losses[1] - losses[2]).max()), 1e-3)

    def test_run_configs_step_and_scan_loops_equal_train(self):
        trainer = _train().trainer
        sweep = {k: jnp.asarray(v) for k, v in SWEEP.items()}
        reference = jax.tree.map(np.asarray, _batched()(_sweep_keys(), sweep))
        by_loop = {}
        for loop in ("step", "scan"):
            calls = []
            out = run_configs(
                trainer, _sweep_keys(), sweep, loop=loop, on_epoch=lambda e, m, calls=calls: calls.append(e)
            )
            self.assertEqual(calls, list(range(CONFIG.epochs)))
            for name, value in out.items():
                self.assertIsInstance(value, np.ndarray)
                chex.assert_shape(value, (3, CONFIG.epochs), custom_message=name)
            by_loop[loop] = out
        chex.assert_trees_all_close(by_loop["step"], by_loop["scan"], rtol=1e-5, atol=1e-5)
        chex.assert_trees_all_close(by_loop["scan"], reference, rtol=1e-5, atol=1e-5)
        with pytest.raises(ValueError, match=r"unknown loop 'fast'"):
            run_configs(trainer, _sweep_keys(), SWEEP, loop="fast")

    def test_hparam_defaults_and_unknown_keys(self):
        # Only the outputs read here are computed (the rest of init is dead code): compiles fast.
        trainer = _train().trainer

        @jax.jit
        def optimizer_hparams(key, hparams):
            opt_state = trainer.init(trainer.data, key, hparams).opt_state
            return opt_state.delay, opt_state.inner_state.hyperparams

        delay, hp = optimizer_hparams(jax.random.key(0), {"learning_rate": jnp.float32(0.05)})
        # make_train documents delay as optional; sgd's momentum defaults to OPTIMIZERS["sgd"] = 0.9.
        self.assertEqual(int(delay), 0)
        self.assertEqual(set(hp), {"learning_rate", "momentum"})
        np.testing.assert_allclose(float(hp["momentum"]), 0.9, rtol=1e-6)
        np.testing.assert_allclose(float(hp["learning_rate"]), 0.05, rtol=1e-6)
        with pytest.raises(ValueError, match=r"b1"):
            optimizer_hparams(jax.random.key(0), {"learning_rate": jnp.float32(0.05), "b1": jnp.float32(0.9)})


# --- the training step against a hand-written gradient ------------------------------------------


# Full-batch SGD: the batch is the whole training set, so the sample order does not matter.
FULL_BATCH = TrainConfig(model="mlp", optimizer="sgd", batch_size=NUM_TRAIN, epochs=1, max_delay=3)


@functools.cache
def _full_batch_fns():
    trainer = make_train(FULL_BATCH, _dataset()).trainer
    return trainer, jax.jit(trainer.init), jax.jit(trainer.step)


class StepTest(chex.TestCase):
    def _start(self, lr, delay):
        trainer, init, _ = _full_batch_fns()
        state = init(trainer.data, jax.random.key(3), _hp(lr, delay=delay, momentum=0.0))
        return trainer, state

    def test_one_step_is_params_minus_lr_grad(self):
        lr = 0.5
        trainer, state = self._start(lr, delay=0)
        x = jnp.asarray(_dataset().x_train)
        y = jnp.asarray(_dataset().y_train)
        params0 = state.params
        grad0 = _grad_ce(params0, x, y)
        expected = jax.tree.map(lambda p, g: p - lr * g, params0, grad0)
        # Jitted only: op-by-op the MLP step costs seconds of per-op compiles on CPU.
        new = _full_batch_fns()[2](trainer.data, state)
        chex.assert_trees_all_close(new.params, expected, rtol=1e-5, atol=1e-6)
        # The step moved the parameters by a visible amount, and logged the loss at params0.
        self.assertGreater(max(float(jnp.abs(g).max()) for g in jax.tree.leaves(grad0)) * lr, 1e-3)
        np.testing.assert_allclose(float(new.loss_sum), float(_ce(params0, x, y)), rtol=1e-5)
        self.assertEqual(int(new.step), 1)

    def test_delay_leaves_params_unchanged_then_applies_old_gradients(self):
        # delay 2, momentum 0, full batch: g_0 = g_1 = g_2 = grad(params0) since params do not move
        # for two steps; so params after steps 1..5 are p0, p0, p0 - lr g, p0 - 2 lr g, p0 - 3 lr g.
        lr, d = 0.1, 2
        trainer, state = self._start(lr, delay=d)
        step = _full_batch_fns()[2]
        params0 = state.params
        grad0 = _grad_ce(params0, jnp.asarray(_dataset().x_train), jnp.asarray(_dataset().y_train))
        history = []
        for _ in range(5):
            state = step(trainer.data, state)
            history.append(state.params)
            # Rewind to the epoch's start (the one full batch), as end_epoch would, minus evaluation.
            state = state._replace(step=jnp.zeros_like(state.step))
        for t in range(d):
            chex.assert_trees_all_equal(history[t], params0)
        for t, k in ((2, 1), (3, 2), (4, 3)):
            expected = jax.tree.map(lambda p, g, k=k: p - k * lr * g, params0, grad0)
            chex.assert_trees_all_close(history[t], expected, rtol=1e-5, atol=1e-6)

    def test_warmup_scales_the_learning_rate_linearly(self):
        # warmup_steps W = 4, momentum 0, delay 0, full batch: step t (from 0) moves the parameters by
        # lr * min(1, (t + 1) / W) * grad(params_t); checked for t = 0..5 against a hand-written gradient.
        lr, w = 0.3, 4
        trainer, init, step = _full_batch_fns()
        hp = {**_hp(lr, delay=0, momentum=0.0), "warmup_steps": jnp.asarray(w)}
        state = init(trainer.data, jax.random.key(3), hp)
        x, y = jnp.asarray(_dataset().x_train), jnp.asarray(_dataset().y_train)
        for t in range(6):
            before = state.params
            expected = jax.tree.map(
                lambda p, g, t=t: p - lr * min(1.0, (t + 1) / w) * g, before, _grad_ce(before, x, y)
            )
            state = step(trainer.data, state)
            chex.assert_trees_all_close(state.params, expected, rtol=1e-5, atol=1e-6)
            state = state._replace(step=jnp.zeros_like(state.step), epoch=state.epoch + 1)

    def test_evaluate_with_ragged_chunks(self):
        # 64 test images in chunks of 24: 3 chunks, the last padded by 8 (masked out).
        cfg = TrainConfig(model="mlp", batch_size=32, epochs=1, eval_batch_size=24)
        trainer = make_train(cfg, _dataset()).trainer
        _, state = self._start(0.1, delay=0)
        params = state.params
        ev = jax.jit(trainer.evaluate)(trainer.data, params)
        acc, loss = ev["test_accuracy"], ev["test_loss"]
        ds = _dataset()
        logits = jax.jit(mlp_forward)(params, jnp.asarray(ds.x_test))
        expected_acc = float(np.mean(np.argmax(np.asarray(logits), -1) == ds.y_test))
        expected_loss = float(_ce(params, jnp.asarray(ds.x_test), jnp.asarray(ds.y_test)))
        np.testing.assert_allclose(float(acc), expected_acc, atol=1e-6)
        np.testing.assert_allclose(float(loss), expected_loss, rtol=1e-5)
        # Random initial weights on varied images: not a constant function.
        self.assertFalse(bool(ev["collapsed"]))


# --- bad input ----------------------------------------------------------------------------------


class BadInputTest(chex.TestCase):
    def test_bad_configs(self):
        ds = _dataset()
        cases = [
            ({"batch_size": NUM_TRAIN + 1}, r"batch_size=257 is larger than the training set \(256"),
            ({"batch_size": 0}, r"batch_size must be a positive integer, got 0"),
            ({"epochs": -1}, r"epochs must be a positive integer"),
            ({"optimizer": "rmsprop"}, r"unknown optimizer 'rmsprop'"),
            ({"model": "resnet"}, r"unknown model 'resnet'"),
            ({"max_delay": -1}, r"max_delay must be a non-negative integer"),
        ]
        for kwargs, match in cases:
            with self.subTest(**kwargs), pytest.raises(ValueError, match=match):
                make_train(TrainConfig(**{"model": "mlp", **kwargs}), ds)

    def test_normalize_hparams(self):
        # Defaults are filled in and the delay becomes an int.
        self.assertEqual(
            normalize_hparams("sgd", {"learning_rate": 0.1}),
            {"learning_rate": 0.1, "delay": 0, "warmup_steps": 0, "momentum": 0.9},
        )
        out = normalize_hparams("adam", {"learning_rate": 1e-3, "delay": 2.0}, max_delay=2)
        self.assertEqual(out["delay"], 2)
        self.assertIsInstance(out["delay"], int)
        self.assertEqual((out["b1"], out["b2"], out["eps"]), (0.9, 0.999, 1e-8))
        cases = [
            ("sgd", {"learning_rate": 0.0}, None, r"learning_rate must be a positive number"),
            ("sgd", {"learning_rate": -0.1}, None, r"learning_rate must be a positive number"),
            ("sgd", {"learning_rate": float("nan")}, None, r"learning_rate must be a positive number"),
            ("sgd", {"learning_rate": float("inf")}, None, r"learning_rate must be a positive number"),
            ("sgd", {}, None, r"needs a learning_rate"),
            ("sgd", {"learning_rate": 0.1, "delay": -1}, None, r"delay must be a non-negative integer"),
            ("sgd", {"learning_rate": 0.1, "delay": 1.5}, None, r"delay must be a non-negative integer"),
            ("sgd", {"learning_rate": 0.1, "delay": 4}, 3, r"delay=4 exceeds max_delay=3"),
            ("sgd", {"learning_rate": 0.1, "b1": 0.9}, None, r"unknown hyperparameter\(s\) \['b1'\]"),
            ("rmsprop", {"learning_rate": 0.1}, None, r"unknown optimizer 'rmsprop'"),
        ]
        for optimizer, hparams, max_delay, match in cases:
            with self.subTest(optimizer=optimizer, hparams=hparams), pytest.raises(ValueError, match=match):
                normalize_hparams(optimizer, hparams, max_delay)
