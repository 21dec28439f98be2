"""Tests for asgd_jax.timing: compute-time models sampled from explicit PRNG keys.

References are closed-form moments (NumPy / math), checked by Monte Carlo with
tolerances of several standard errors, and exact values for the deterministic
models and wrappers.
"""

from __future__ import annotations

import doctest
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import asgd_jax
from asgd_jax import timing

KEY = jax.random.key(0)
DRAWS = 40_000


def _draws(model, worker=0, num_workers=1, n=DRAWS, key=KEY):
    return np.asarray(model.sample(key, jnp.full((n,), worker, jnp.int32), num_workers), np.float64)


def test_fixed_is_constant_and_broadcasts():
    t = timing.fixed(2.5).sample(KEY, jnp.zeros((2, 3), jnp.int32))
    chex.assert_shape(t, (2, 3))
    assert t.dtype == jnp.float32
    np.testing.assert_array_equal(t, 2.5)
    np.testing.assert_array_equal(timing.fixed(2.5).expected(jnp.arange(4)), 2.5)


@pytest.mark.parametrize("mean,std", [(1.0, 0.2), (0.3, 1.0), (2.0, 0.0)])
def test_normal_truncated_to_positive(mean, std):
    model = timing.normal(mean, std)
    t = _draws(model)
    assert t.min() > 0 if std > 0 else np.all(t == mean)
    # Mean of N(m, s^2) truncated to (0, inf): m + s * phi(a) / (1 - Phi(a)), a = -m/s.
    if std > 0:
        a = -mean / std
        phi = math.exp(-a * a / 2) / math.sqrt(2 * math.pi)
        ref = mean + std * phi / (1 - 0.5 * (1 + math.erf(a / math.sqrt(2))))
    else:
        ref = mean
    np.testing.assert_allclose(float(model.expected(jnp.int32(0))), ref, rtol=1e-5)
    np.testing.assert_allclose(t.mean(), ref, atol=5 * (t.std() + 1e-12) / math.sqrt(DRAWS) + 1e-6)


def test_exponential_moments():
    t = _draws(timing.exponential(2.0))
    assert t.min() >= 0
    np.testing.assert_allclose(t.mean(), 2.0, atol=5 * 2.0 / math.sqrt(DRAWS))
    np.testing.assert_allclose(t.std(), 2.0, rtol=0.05)


def test_lognormal_mean_parameterisation():
    model = timing.lognormal(3.0, 0.5)
    t = _draws(model)
    sd = 3.0 * math.sqrt(math.exp(0.25) - 1)
    np.testing.assert_allclose(t.mean(), 3.0, atol=5 * sd / math.sqrt(DRAWS))
    np.testing.assert_allclose(np.log(t).std(), 0.5, rtol=0.03)
    np.testing.assert_allclose(float(model.expected(0)), 3.0)


def test_uniform_range_and_mean():
    t = _draws(timing.uniform(1.0, 3.0))
    assert t.min() >= 1.0 and t.max() < 3.0
    np.testing.assert_allclose(t.mean(), 2.0, atol=5 * (2 / math.sqrt(12)) / math.sqrt(DRAWS))
    np.testing.assert_allclose(float(timing.uniform(1.0, 3.0).expected(0)), 2.0)


def test_per_worker_scales_each_worker():
    model = timing.per_worker(timing.exponential(1.0), jnp.array([1.0, 2.0, 4.0]))
    for w, s in enumerate([1.0, 2.0, 4.0]):
        t = _draws(model, worker=w)
        np.testing.assert_allclose(t.mean(), s, atol=5 * s / math.sqrt(DRAWS))
    np.testing.assert_allclose(model.expected(jnp.arange(3)), [1.0, 2.0, 4.0])
    # Same key, same worker: the base draw times the scale.
    ids = jnp.array([0, 1, 2])
    base = timing.exponential(1.0).sample(KEY, ids)
    np.testing.assert_allclose(model.sample(KEY, ids), base * jnp.array([1.0, 2.0, 4.0]), rtol=1e-6)


@pytest.mark.parametrize("n,fraction,expected", [(10, 0.3, 3), (8, 0.25, 2), (4, 0.0, 0), (4, 1.0, 4), (5, 0.5, 3)])
def test_stragglers_are_the_last_round_fraction(n, fraction, expected):
    model = timing.stragglers(timing.fixed(1.0), fraction, 7.0)
    t = np.asarray(model.sample(KEY, jnp.arange(n), n))
    ref = np.where(np.arange(n) >= n - expected, 7.0, 1.0)
    np.testing.assert_array_equal(t, ref)
    np.testing.assert_array_equal(model.expected(jnp.arange(n), n), ref)


def test_wrappers_compose():
    model = timing.per_worker(timing.stragglers(timing.fixed(2.0), 0.5, 3.0), jnp.array([1.0, 10.0, 100.0, 1000.0]))
    np.testing.assert_allclose(model.sample(KEY, jnp.arange(4), 4), [2.0, 20.0, 600.0, 6000.0])
    nested = timing.stragglers(timing.per_worker(timing.lognormal(1.0, 0.3), jnp.ones(4)), 0.25, 2.0)
    assert nested.sample(KEY, jnp.arange(4), 4).shape == (4,)


def test_models_are_pytrees_usable_under_jit_and_vmap():
    model = timing.per_worker(timing.normal(1.0, 0.1), jnp.array([1.0, 2.0]))
    leaves = jax.tree.leaves(model)
    assert len(leaves) == 3

    @jax.jit
    def mean_time(mean, key):
        m = timing.per_worker(timing.normal(mean, 0.1), jnp.array([1.0, 2.0]))
        return m.sample(key, jnp.zeros(5000, jnp.int32)).mean()

    means = jax.vmap(mean_time, in_axes=(0, None))(jnp.array([1.0, 2.0, 4.0]), KEY)
    np.testing.assert_allclose(means, [1.0, 2.0, 4.0], rtol=0.02)
    # A model passed through jit as an argument.
    f = jax.jit(lambda m, k: m.sample(k, jnp.arange(2), 2))
    np.testing.assert_allclose(f(model, KEY), model.sample(KEY, jnp.arange(2), 2), rtol=1e-6)


def test_same_key_same_draws_and_independent_elements():
    model = timing.exponential(1.0)
    ids = jnp.zeros(8, jnp.int32)
    np.testing.assert_array_equal(model.sample(KEY, ids), model.sample(KEY, ids))
    assert len(np.unique(np.asarray(model.sample(KEY, ids)))) == 8
    assert not np.array_equal(model.sample(KEY, ids), model.sample(jax.random.key(1), ids))


def test_as_timing():
    assert timing.as_timing(2.0) == timing.fixed(2.0)
    m = timing.exponential(1.0)
    assert timing.as_timing(m) is m
    with pytest.raises(ValueError, match="timing"):
        timing.as_timing(None)


def test_docstring_examples(monkeypatch):
    monkeypatch.setattr(asgd_jax, "timing", timing, raising=False)
    result = doctest.testmod(timing, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
    for name in timing.__all__:
        assert getattr(timing, name).__doc__, name


def test_constructors_refuse_bad_concrete_values_in_one_line():
    """A negative, zero or NaN time would run the clock backwards or make it NaN: refused before anything runs."""
    import asgd_jax
    from asgd_jax import events

    bad = [lambda: timing.fixed(-1.0), lambda: timing.fixed(0.0), lambda: timing.exponential(-1.0),
           lambda: timing.normal(float("nan"), 0.1), lambda: timing.normal(1.0, -0.1),
           lambda: timing.lognormal(1.0, float("inf")), lambda: timing.uniform(2.0, 1.0),
           lambda: timing.stragglers(1.0, fraction=2.0), lambda: timing.stragglers(1.0, 0.5, slowdown=0.0),
           lambda: timing.per_worker(1.0, jnp.array([1.0, -2.0])),
           lambda: events.init(3, timing=timing.per_worker(1.0, jnp.array([1.0, 2.0]))),
           lambda: asgd_jax.asynchronous(optax.sgd(0.1), 2, timing=-1.0)]
    for make in bad:
        with pytest.raises(ValueError) as e:
            make()
        assert "\n" not in str(e.value)
