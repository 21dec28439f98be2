"""A batch's mean loss and gradient, computed micro-batch by micro-batch.

On XLA:CPU a LeNet-5 training step runs faster on 32 samples at a time than on
a whole batch of 512 (its activations then stay in a core's cache; measured in
the README's Speed section), so the training step can sum the gradient over
micro-batches. The maths is the batch's: in exact arithmetic the result equals
``jax.value_and_grad(loss)(params, *batch)``; in float32 it differs by rounding
(the sums run in another order).
"""

from __future__ import annotations

import numbers
from typing import Callable

import jax
import jax.numpy as jnp

__all__ = ["microbatched_value_and_grad"]


def microbatched_value_and_grad(loss: Callable, size: int | None) -> Callable:
    """``jax.value_and_grad(loss)`` of a batch mean, evaluated ``size`` samples at a time.

    ``loss(params, *batch)`` must be the mean over the leading axis of every
    array of ``batch`` of a per-sample loss (no statistic across samples, such
    as batch normalization's). For a batch of ``b = q·size + r`` samples
    (``0 ≤ r < size``) split into ``q`` micro-batches ``B_1 … B_q`` of ``size``
    samples and a last one ``B_r`` of ``r``, with ``L_c`` the loss of micro-batch
    ``c`` (its own mean), the returned function gives

        L = (size · Σ_c L_c + r · L_r) / b        and the same combination of the ∇L_c,

    the batch's mean loss and its gradient. The ``q`` equal micro-batches run
    in a ``lax.scan`` (one micro-batch's activations are alive at a time), the
    last one after it. ``size`` ``None`` or at least ``b``: one call of
    ``jax.value_and_grad(loss)`` on the whole batch.

    Args:
        loss: ``loss(params, *batch) -> scalar``, a mean over the batch.
        size: samples per micro-batch (a positive integer) or ``None``.

    Returns:
        ``f(params, *batch) -> (loss, grads)``, as ``jax.value_and_grad(loss)``.

    Example:
        >>> import jax.numpy as jnp
        >>> from asgd_jax.microbatch import microbatched_value_and_grad
        >>> loss = lambda w, x, y: jnp.mean((x @ w - y) ** 2)
        >>> x, y = jnp.arange(10.0).reshape(5, 2), jnp.arange(5.0)
        >>> value, grad = microbatched_value_and_grad(loss, 2)(jnp.ones(2), x, y)
        >>> float(value), grad.tolist()   # = mean((x @ 1 - y)^2), 2 xᵀ(x @ 1 - y) / 5
        (67.0, [80.0, 94.0])
    """
    if size is not None and (isinstance(size, bool) or not isinstance(size, numbers.Integral) or size < 1):
        raise ValueError(f"size must be a positive integer or None, got {size!r}.")
    whole = jax.value_and_grad(loss)

    def value_and_grad(params, *batch):
        b = jax.tree.leaves(batch)[0].shape[0]
        if size is None or size >= b:
            return whole(params, *batch)
        m = int(size)
        q, r = divmod(b, m)

        def body(total, part):
            return jax.tree.map(jnp.add, total, whole(params, *part)), None

        head = jax.tree.map(lambda a: a[: q * m].reshape((q, m) + a.shape[1:]), batch)
        zero = jax.tree.map(jnp.zeros_like, jax.eval_shape(whole, params, *jax.tree.map(lambda a: a[0], head)))
        total, _ = jax.lax.scan(body, zero, head)
        total = jax.tree.map(lambda t: t * (m / b), total)
        if r:
            value, grads = whole(params, *jax.tree.map(lambda a: a[q * m :], batch))
            total = jax.tree.map(lambda t, v: t + v * (r / b), total, (value, grads))
        return total

    return value_and_grad
