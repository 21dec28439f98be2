"""Slot buffers (a pytree with a leading slot axis, written then read in one O(params) step), and finding a
system's state inside an optimizer state."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def write_then_read(buffer, tree, write, read):
    """Writes ``tree`` into slot ``write`` of ``buffer``, then reads slot ``read``.

    Reading *after* writing (the slot just written may itself be the one read)
    lets XLA update the buffer in place; reading the old buffer before the write
    made XLA:CPU copy every slot on every step. Used by the delay ring buffer
    (:func:`asgd_jax.delayed`) and the parameter server's in-flight gradients.
    """
    buffer = jax.tree.map(
        lambda b, x: jax.lax.dynamic_update_index_in_dim(b, x.astype(b.dtype), write, 0), buffer, tree)
    return buffer, jax.tree.map(lambda b: jax.lax.dynamic_index_in_dim(b, read, keepdims=False), buffer)


def update_row(x, i, fn):
    """``x`` with row ``i`` of its leading axis (``0 <= i < len(x)``) replaced by ``fn(row)``; ``row`` keeps a
    leading axis of length 1 (``x[i:i + 1]``) and ``fn`` must return that shape (elementwise code with a
    ``tree``-shaped operand broadcasts to it).

    The read and the write use one index and one shape, so XLA fuses the read into an in-place write.
    ``jax.lax.dynamic_index_in_dim`` / ``dynamic_update_index_in_dim`` normalise the index on their own and
    drop / add the axis: XLA then read the row in a separate op and, inside a ``lax.cond`` branch, copied
    all of ``x`` twice per call.
    """
    start = (jnp.asarray(i, jnp.int32),) + (jnp.zeros([], jnp.int32),) * (x.ndim - 1)
    row = jax.lax.dynamic_slice(x, start, (1,) + x.shape[1:])
    return jax.lax.dynamic_update_slice(x, fn(row).astype(x.dtype), start)


def find_state(tree, cls):
    """The one ``cls`` instance inside ``tree`` (an optimizer state, also nested in a chain), else ``None``."""
    found = [s for s in jax.tree.leaves(tree, is_leaf=lambda x: isinstance(x, cls)) if isinstance(s, cls)]
    return found[0] if len(found) == 1 else None
