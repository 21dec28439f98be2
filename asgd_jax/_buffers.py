"""Slot buffers (a pytree with a leading slot axis, written then read in one O(params) step), and finding a
system's state inside an optimizer state."""

from __future__ import annotations

import jax


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


def find_state(tree, cls):
    """The one ``cls`` instance inside ``tree`` (an optimizer state, also nested in a chain), else ``None``."""
    found = [s for s in jax.tree.leaves(tree, is_leaf=lambda x: isinstance(x, cls)) if isinstance(s, cls)]
    return found[0] if len(found) == 1 else None
