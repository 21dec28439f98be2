"""Tests for asgd_jax.microbatch and the training step's micro-batches (TrainConfig.microbatch).

References: the closed-form mean squared error and its gradient in NumPy (float64), and
``jax.value_and_grad`` of the whole batch's mean loss for LeNet-5.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from asgd_jax import LeNet5
from asgd_jax.data import make_dataset
from asgd_jax.microbatch import microbatched_value_and_grad
from asgd_jax.train import TrainConfig, Trainer, eval_chunk_size, make_train, microbatch_size


def _mse(w, x, y):
    return jnp.mean((x @ w - y) ** 2)


@pytest.mark.parametrize("size", [None, 1, 3, np.int64(4), 5, 10, 64])
def test_matches_numpy_least_squares(size):
    rng = np.random.default_rng(0)
    x, y, w = rng.normal(size=(10, 3)), rng.normal(size=10), rng.normal(size=3)
    r = x @ w - y
    want_value, want_grad = np.mean(r**2), 2 * x.T @ r / len(y)  # derived by hand
    value, grad = jax.jit(microbatched_value_and_grad(_mse, size))(
        jnp.asarray(w, jnp.float32), jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32)
    )
    np.testing.assert_allclose(value, want_value, rtol=1e-5)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-5, atol=1e-6)


def test_uneven_micro_batches_are_weighted_by_their_size():
    # 7 samples in micro-batches of 3: 3 + 3 + 1. The lone last sample must weigh 1/7, not 1/3.
    x = jnp.arange(7.0)[:, None]
    y = jnp.zeros(7)
    value, grad = microbatched_value_and_grad(_mse, 3)(jnp.ones(1), x, y)
    np.testing.assert_allclose(value, np.mean(np.arange(7.0) ** 2), rtol=1e-6)  # 13
    np.testing.assert_allclose(grad, [2 * np.mean(np.arange(7.0) ** 2)], rtol=1e-6)


def test_lenet5_gradient_matches_whole_batch():
    model = LeNet5()
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.uniform(size=(64, 28, 28, 1)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 10, 64))
    params = model.init(jax.random.key(0), x[:1])["params"]

    def loss(p, x, y):
        logits = model.apply({"params": p}, x)
        return jnp.mean(jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, y[:, None], 1)[:, 0])

    want = jax.jit(jax.value_and_grad(loss))(params, x, y)
    for size in (16, 24, 32):
        got = jax.jit(microbatched_value_and_grad(loss, size))(params, x, y)
        chex.assert_trees_all_close(got, want, rtol=2e-5, atol=2e-7)


@pytest.mark.parametrize("size", [0, -2, 2.5, True, "32"])
def test_bad_size(size):
    with pytest.raises(ValueError, match="size must be a positive integer or None"):
        microbatched_value_and_grad(_mse, size)


def test_microbatch_size_rule():
    assert microbatch_size(TrainConfig(batch_size=512), "cpu") == 32  # LeNet-5 on XLA:CPU
    assert microbatch_size(TrainConfig(batch_size=128), "cpu") == 32
    assert microbatch_size(TrainConfig(batch_size=127), "cpu") is None  # fewer than four micro-batches
    assert microbatch_size(TrainConfig(batch_size=64), "cpu") is None
    assert microbatch_size(TrainConfig(batch_size=512), "gpu") is None
    assert microbatch_size(TrainConfig(model="mlp", batch_size=512), "cpu") is None
    assert microbatch_size(TrainConfig(batch_size=512, microbatch=0), "cpu") is None
    assert microbatch_size(TrainConfig(batch_size=512, microbatch=100), "gpu") == 100
    assert microbatch_size(TrainConfig(batch_size=64, microbatch=64), "cpu") is None


@pytest.mark.parametrize("bad", [-1, 1.5, None, "fast", True])
def test_bad_microbatch_is_one_line(bad):
    with pytest.raises(ValueError, match="microbatch must be 'auto' or a non-negative integer") as e:
        TrainConfig(microbatch=bad).validate()
    assert "\n" not in str(e.value)


def test_training_with_micro_batches_keeps_the_maths():
    rng = np.random.default_rng(2)
    x = rng.integers(0, 256, (96, 28, 28), dtype=np.uint8)
    y = rng.integers(0, 10, 96)
    ds = make_dataset(x, y, x[:32], y[:32], name="random")
    hp = {"learning_rate": 0.05, "momentum": 0.9, "delay": 1}
    out = {}
    for mb in (0, 20):  # 48 = 2 x 20 + 8: the scan and the smaller last micro-batch
        cfg = TrainConfig(batch_size=48, epochs=2, max_delay=2, microbatch=mb)
        out[mb] = jax.jit(make_train(cfg, ds))(jax.random.key(3), hp)
        assert Trainer(cfg, ds).microbatch == (mb or None)
    chex.assert_trees_all_close(out[20]["train_loss"], out[0]["train_loss"], rtol=1e-4)
    chex.assert_trees_all_close(out[20]["test_accuracy"], out[0]["test_accuracy"], atol=1 / 32 + 1e-6)


def test_eval_chunk_size_rule():
    assert eval_chunk_size(TrainConfig(), 10_000, "cpu") == 100  # LeNet-5 on XLA:CPU
    assert eval_chunk_size(TrainConfig(), 10_000, "gpu") == 1000
    assert eval_chunk_size(TrainConfig(model="mlp"), 10_000, "cpu") == 1000
    assert eval_chunk_size(TrainConfig(), 64, "cpu") == 64  # never more than the test set
    assert eval_chunk_size(TrainConfig(eval_batch_size=24), 10_000, "gpu") == 24
    with pytest.raises(ValueError, match="eval_batch_size must be a positive integer or .auto."):
        TrainConfig(eval_batch_size="big").validate()


def test_lenet_evaluation_in_chunks_matches_numpy():
    """LeNet-5's test metrics in the CPU default chunks of 100 (250 images: 3 chunks, the last padded by 50)
    against NumPy on the logits of the whole test set at once."""
    x = np.random.default_rng(1).integers(0, 256, (300, 28, 28), dtype=np.uint8)
    y = np.random.default_rng(2).integers(0, 10, 300)
    ds = make_dataset(x[:50], y[:50], x[50:], y[50:], name="chunks")
    trainer = Trainer(TrainConfig(batch_size=25, epochs=1), ds)
    assert trainer.eval_chunk == (100 if jax.default_backend() == "cpu" else 250)
    params = trainer.model.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))["params"]
    ev = jax.jit(trainer.evaluate)(trainer.data, params)
    logits = np.asarray(trainer.model.apply({"params": params}, trainer.data[2]), np.float64)
    z = logits - logits.max(1, keepdims=True)
    nll = -(z[np.arange(250), y[50:]] - np.log(np.exp(z).sum(1)))
    np.testing.assert_allclose(float(ev["test_accuracy"]), np.mean(logits.argmax(1) == y[50:]), atol=1e-9)
    np.testing.assert_allclose(float(ev["test_loss"]), nll.mean(), rtol=1e-5)
