"""asgd_jax._buffers.update_row (a row of a per-worker table read and rewritten in place) against NumPy."""

import chex
import jax
import jax.numpy as jnp
import numpy as np

from asgd_jax._buffers import update_row


def numpy_update_row(x, i, restart, g):
    """The rule the tables use: row ``i`` becomes ``(0 if restart else x[i]) + g``; the other rows stay."""
    out = np.array(x, copy=True)
    out[i] = (0.0 if restart else x[i]) + g
    return out


def _rule(restart, g):
    return lambda row: jnp.where(restart, jnp.zeros_like(row), row) + g


def test_update_row_matches_numpy_on_every_row_and_leaf_rank():
    rng = np.random.default_rng(0)
    for shape in [(5,), (4, 3), (3, 2, 5, 2)]:
        x = rng.standard_normal(shape).astype(np.float32)
        g = rng.standard_normal(shape[1:]).astype(np.float32)
        for i in range(shape[0]):
            for restart in (False, True):
                got = jax.jit(update_row, static_argnums=2)(jnp.asarray(x), i, _rule(restart, jnp.asarray(g)))
                chex.assert_trees_all_equal(np.asarray(got), numpy_update_row(x, i, restart, g))


def test_update_row_under_a_cond_and_vmapped_over_tables_and_rows():
    """As the parameter server calls it: inside a ``lax.cond`` branch, with the tables and rows vmapped."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 6, 4)).astype(np.float32)   # 3 tables of 6 rows
    g = rng.standard_normal((3, 4)).astype(np.float32)
    rows, restart, go = np.array([0, 5, 2]), np.array([False, True, False]), np.array([True, True, False])

    def one(x, i, r, g, go):
        return jax.lax.cond(go, lambda x: update_row(x, i, _rule(r, g)), lambda x: x, x)

    got = np.asarray(jax.jit(jax.vmap(one))(x, rows, restart, g, go))
    want = np.stack([numpy_update_row(x[k], rows[k], restart[k], g[k]) if go[k] else x[k] for k in range(3)])
    chex.assert_trees_all_equal(got, want)
