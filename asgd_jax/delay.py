"""Constant-delay gradients: the delay buffer of Jain et al. (2018).

A synchronous optimizer wrapped so that the gradient computed at step ``t`` is
applied ``d`` steps later, at step ``t + d``. A constant delay ``d`` stands for
``d + 1`` equally fast asynchronous workers (docs/methods.md).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from asgd_jax import _checks
from asgd_jax._buffers import write_then_read

__all__ = ["DelayedState", "delayed", "validate_delay"]


class DelayedState(NamedTuple):
    """State of :func:`delayed`.

    Attributes:
        step: int32 scalar, the number of gradients received so far (``t``).
        delay: int32 scalar, the delay ``d`` in steps. It lives in the state, like
            the hyperparameters of :func:`optax.inject_hyperparams`, so a vmapped
            sweep can give every config its own delay inside one compiled program.
        buffer: ring buffer of gradients, a pytree like the parameters with a
            leading axis of ``max_delay + 1`` slots (0 when ``max_delay == 0``).
            Gradient ``g_t`` is written to slot ``t mod (max_delay + 1)`` and
            read back ``d`` steps later.
        inner_state: the wrapped optimizer's state. It only moves on steps that
            apply a gradient.
        invalid: bool, whether a traced ``delay`` was outside ``[0, max_delay]``
            (it then runs clipped: check this flag rather than trust the delay).
    """

    step: jax.Array
    delay: jax.Array
    buffer: Any
    inner_state: Any
    invalid: jax.Array


def validate_delay(delay, max_delay: int | None) -> int:
    """Checks ``delay`` / ``max_delay`` and returns the static bound ``max_delay``.

    Raises a one-line ``ValueError`` for a negative delay, a delay above
    ``max_delay``, or a traced delay without ``max_delay``. Delays that are traced
    values cannot be checked here; :func:`delayed` clips them to
    ``[0, max_delay]``.
    """
    if max_delay is not None:
        if isinstance(max_delay, bool) or int(max_delay) != max_delay or max_delay < 0:
            raise ValueError(f"max_delay must be a non-negative Python int, got {max_delay!r}.")
        max_delay = int(max_delay)
    concrete = _checks.concrete(delay)  # None for a traced delay
    if concrete is None:
        if max_delay is None:
            raise ValueError(
                "delayed(): a traced delay needs a static bound; pass max_delay=<largest delay>."
            )
        return max_delay
    if concrete.shape != () or not np.issubdtype(concrete.dtype, np.integer):
        raise ValueError(f"delay must be a scalar integer number of steps, got {delay!r}.")
    d = int(concrete)
    if d < 0:
        raise ValueError(f"delay must be >= 0 (steps between computing and applying a gradient), got {d}.")
    if max_delay is None:
        max_delay = d
    elif d > max_delay:
        raise ValueError(f"delay={d} exceeds max_delay={max_delay}; raise max_delay to at least {d}.")
    return max_delay


def delayed(
    inner: optax.GradientTransformation,
    delay: int | jax.Array,
    *,
    max_delay: int | None = None,
) -> optax.GradientTransformationExtraArgs:
    r"""Applies each gradient ``delay`` steps after it was computed.

    With ``g_t`` the gradient passed to ``update`` at step ``t = 0, 1, ...`` and
    ``d = delay``, the wrapper emits

    .. math::

        u_t = \begin{cases} 0 & t < d \\
                            \mathrm{inner}(g_{t-d}, w_t) & t \ge d \end{cases}

    where ``inner(g, w_t)`` is the wrapped optimizer's update for gradient ``g``
    at the current parameters ``w_t``; its state advances only when ``t >= d``.
    So the first ``d`` calls return zeros and leave ``inner`` untouched, and
    ``delay=0`` is ``inner``: bit for bit when ``max_delay == 0`` (the default
    for ``delay=0``), and up to float rounding (XLA may fuse the selected
    branch differently, a 1-ulp effect) with a larger ``max_delay``. This is
    the constant-delay model of asynchronous SGD with ``d + 1`` equally fast
    workers (Jain et al., 2018).

    Gradients sit in a ring buffer of ``max_delay + 1`` slots (one holds the
    gradient just received; no buffer when ``max_delay == 0``). ``delay`` may be a traced integer (under ``jit`` or
    ``vmap``) as long as ``max_delay`` bounds it statically; it is stored in the
    state, so one compiled program serves every delay up to ``max_delay``.

    Args:
        inner: any optax transformation (``optax.sgd``, ``optax.adam``, an
            ``optax.inject_hyperparams`` optimizer, a chain ...).
        delay: steps between computing a gradient and applying it, ``>= 0``.
            A traced delay is clipped to ``[0, max_delay]``, and the state's
            ``invalid`` flag records that it was.
        max_delay: static upper bound on ``delay``; defaults to ``delay`` (which
            must then be concrete).

    Returns:
        An ``optax.GradientTransformationExtraArgs`` whose state is a
        :class:`DelayedState`. Extra keyword arguments of ``update`` are passed on
        to ``inner``.

    Raises:
        ValueError: negative ``delay``, ``delay > max_delay``, or a traced delay
            without ``max_delay``.

    Example:
        >>> import jax.numpy as jnp, optax, asgd_jax
        >>> tx = asgd_jax.delayed(optax.sgd(0.1), delay=2)
        >>> params = jnp.array([1.0])
        >>> state = tx.init(params)
        >>> for t in range(4):
        ...   grads = jnp.array([float(t + 1)])   # g_0 = 1, g_1 = 2, ...
        ...   updates, state = tx.update(grads, state, params)
        ...   print(t, updates)
        0 [0.]
        1 [0.]
        2 [-0.1]
        3 [-0.2]

    References:
        Jain, Srinivasan, Barekatain, "An analysis of the delayed gradients problem
        in asynchronous SGD", ICLR 2018 workshop.
    """
    max_delay = validate_delay(delay, max_delay)
    inner = optax.with_extra_args_support(inner)
    slots = max_delay + 1 if max_delay else 0  # no buffer at all without delay

    def init_fn(params):
        buffer = jax.tree.map(lambda p: jnp.zeros((slots,) + jnp.shape(p), jnp.result_type(p)), params)
        given = jnp.asarray(delay, jnp.int32)
        d = jnp.clip(given, 0, max_delay)
        return DelayedState(
            step=jnp.zeros([], jnp.int32), delay=d, buffer=buffer, inner_state=inner.init(params),
            invalid=given != d,
        )

    def update_fn(updates, state, params=None, **extra_args):
        t, d = state.step, state.delay
        if max_delay == 0:
            stale, buffer = updates, state.buffer
        else:
            # Write g_t first, then read g_{t-d}: with max_delay + 1 slots, g_{t-d} is still
            # there for every d <= max_delay (d == 0 reads g_t back).
            buffer, stale = write_then_read(state.buffer, updates, jnp.mod(t, slots), jnp.mod(t - d, slots))
        new_updates, new_inner = inner.update(stale, state.inner_state, params, **extra_args)
        if max_delay == 0:
            out_updates, out_inner = new_updates, new_inner
        else:
            ready = t >= d
            out_updates = jax.tree.map(lambda u: jnp.where(ready, u, jnp.zeros_like(u)), new_updates)
            out_inner = jax.tree.map(
                lambda new, old: jnp.where(ready, new, old), new_inner, state.inner_state
            )
        return out_updates, DelayedState(
            step=optax.safe_increment(t), delay=d, buffer=buffer, inner_state=out_inner, invalid=state.invalid
        )

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
