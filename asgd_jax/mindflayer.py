r"""MindFlayer SGD (Maranjyan, Shaikh Omar & Richtárik, UAI 2025) as an optax transform.

For random, possibly heavy-tailed compute times. Every round starts all
workers at the current point :math:`x^k`. Worker :math:`i` makes :math:`B_i`
attempts one after the other, each with a time budget :math:`t_i`: an attempt
whose compute time :math:`\eta_{ij}` is at most :math:`t_i` delivers its
gradient, a longer one is stopped at :math:`t_i` and delivers nothing. The
server waits until every worker has made its :math:`B_i` attempts (worker
:math:`i` is busy :math:`\sum_j \min(\eta_{ij}, t_i)`; the round lasts the
longest of these) and steps with

.. math:: x^{k+1} = x^k - \gamma\, \frac{1}{B} \sum_{i=1}^n \sum_{j=1}^{B_i}
          \mathbb 1[\eta_{ij} \le t_i]\, \nabla f(x^k; \xi_{ij}),
          \qquad B = \sum_{i=1}^n p_i B_i,

:math:`p_i = P(\eta_i \le t_i)`: :math:`B` is the expected number of gradients,
so the estimator is unbiased. With deterministic times and :math:`t_i \ge
\tau_i` every attempt succeeds and this is Rennala SGD with a fixed allocation.

Calls come in rounds of :math:`A = \sum_i B_i` calls: call ``p`` of a round is
one attempt, worker 0's :math:`B_0` attempts first, then worker 1's, ...
(:func:`asgd_jax.next_worker` names the worker); each computes its gradient at
the round's parameters, and the round's last call steps. A stopped attempt
still costs its ``update`` call (its gradient is ignored) and counts in
``discarded``. Methods and citations: ``docs/methods.md``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from asgd_jax import _checks, events

__all__ = ["MindFlayerState", "mindflayer", "success_probs"]


@events.reads_events
class MindFlayerState(NamedTuple):
    """State of :func:`mindflayer`.

    Attributes:
        events: the clock and the worker of the next call (an :class:`~asgd_jax.events.EventState`;
            ``in_flight`` is the position in the round, ``busy_until[i]`` when worker ``i``'s last
            attempt of the round ends).
        budgets: float32 ``[P]``, the time budgets :math:`t_i`.
        attempts: int32 ``[P]``, the attempts per round :math:`B_i`.
        probs: float32 ``[P]``, the success probabilities :math:`p_i`.
        acc: sum of the round's successful gradients, like the parameters.
        successes: int32, successful attempts in the current round.
        discarded: int32, attempts stopped at their budget so far.
        inner_state: the server optimizer's state; it moves once per round.

    ``invalid``: a traced value out of range (the events', a negative number of attempts, a round
    with no attempt, :math:`B = 0`).
    """

    events: events.EventState
    budgets: jax.Array
    attempts: jax.Array
    probs: jax.Array
    acc: Any
    successes: jax.Array
    discarded: jax.Array
    inner_state: Any

    @property
    def invalid(self) -> jax.Array:
        b, active = self.attempts, jnp.arange(self.attempts.shape[0]) < self.events.workers
        expected = jnp.sum(jnp.where(active, self.probs * b, 0.0))
        return self.events.invalid | jnp.any(b < 0) | (jnp.sum(jnp.where(active, b, 0)) < 1) | ~(expected > 0)


def success_probs(timing, budgets, workers: int, draws: int = 4096) -> jax.Array:
    r""":math:`p_i = P(\eta_i \le t_i)` for workers ``0 .. workers-1``: exact for deterministic times, else
    the fraction of ``draws`` samples within budget (a fixed key). Clock-dependent models are sampled at
    time 0 (``sample``); give ``probs`` to :func:`mindflayer` yourself if that is not what you want.

    Example:
        >>> import jax.numpy as jnp
        >>> from asgd_jax import timing
        >>> success_probs(timing.per_worker(1.0, jnp.array([1.0, 3.0])), 2.0, 2).tolist()
        [1.0, 0.0]
    """
    ids = jnp.arange(workers, dtype=jnp.int32)
    t = jnp.broadcast_to(jnp.asarray(budgets, jnp.float32), (workers,))
    n = draws if timing.is_random else 1
    eta = timing.sample(jax.random.key(0), jnp.broadcast_to(ids, (n, workers)), workers)
    return jnp.mean((eta <= t).astype(jnp.float32), 0)


def _check(budgets, attempts, probs, size: int) -> None:
    """One-line errors for concrete values; per-worker arrays must cover the ``size`` workers."""
    _checks.check_number("mindflayer(budgets)", budgets, positive=True)
    b = _checks.concrete(attempts)
    if b is not None and (not np.issubdtype(b.dtype, np.integer) or np.any(b < 0) or int(np.sum(b)) < 1):
        raise ValueError(f"mindflayer(attempts) must be integers >= 0, some positive, got {attempts!r}.")
    if probs is not None:
        _checks.check_number("mindflayer(probs)", probs, minimum=0.0)
        p = _checks.concrete(probs)
        if p is not None and not (np.all(p <= 1) and np.any(p > 0)):
            raise ValueError(f"mindflayer(probs) must be probabilities in [0, 1], not all 0, got {probs!r}.")
    for name, x in (("budgets", budgets), ("attempts", attempts), ("probs", probs)):
        if x is not None and (np.ndim(x) not in (0, 1) or (np.ndim(x) == 1 and np.shape(x)[0] < size)):
            raise ValueError(f"mindflayer({name}) must be one number or one per worker ({size}), "
                             f"got shape {np.shape(x)}.")


def _per_worker(x, size, dtype):
    x = jnp.asarray(x, dtype)
    return jnp.broadcast_to(x, (size,)) if x.ndim == 0 else x[:size]


def _attempt(ev, budgets, attempts, active):
    """The worker of this call, whether its attempt succeeds, and the new ``busy_until``."""
    cum = jnp.cumsum(jnp.where(active, attempts, 0))
    p = ev.in_flight
    w = jnp.minimum(jnp.sum(cum <= p), cum.shape[0] - 1).astype(jnp.int32)
    key, k_time = jax.random.split(ev.key) if ev.timing.is_random else (ev.key, ev.key)
    start = ev.busy_until[w]
    eta = ev.timing.sample_at(k_time, w[None], ev.workers, start)[0]
    ok = eta <= budgets[w]
    busy = ev.busy_until.at[w].set(start + jnp.minimum(eta, budgets[w]))
    nxt = jnp.minimum(jnp.sum(cum <= p + 1), cum.shape[0] - 1).astype(jnp.int32)
    first = jnp.argmax(cum > 0).astype(jnp.int32)
    return w, ok, busy, key, p >= cum[-1] - 1, nxt, first


def mindflayer(inner: optax.GradientTransformation, workers, *, budgets, attempts, timing=1.0, probs=None,
               max_workers: int | None = None, key=0) -> optax.GradientTransformationExtraArgs:
    r"""MindFlayer SGD around the server optimizer ``inner`` (see the module docstring).

    Args:
        inner: the server optimizer (the paper: SGD with step :math:`\gamma`).
        workers: :math:`n` (traced if ``max_workers`` bounds it).
        budgets: :math:`t_i > 0`, one number or one per worker (traced allowed).
        attempts: :math:`B_i \ge 0` attempts per round, one number or one per worker (traced allowed).
        timing: compute-time model (of one attempt) or a positive number.
        probs: :math:`p_i`, one number or one per worker; ``None``: :func:`success_probs` (at ``init``).
        max_workers: static bound on ``workers``.
        key: PRNG key or int seed.

    Example:
        >>> import jax.numpy as jnp, optax, asgd_jax
        >>> from asgd_jax import timing
        >>> tx = asgd_jax.mindflayer(optax.sgd(1.0), 2, budgets=2.0, attempts=jnp.array([2, 1]),
        ...                          timing=timing.per_worker(1.0, jnp.array([1.0, 3.0])))
        >>> s = tx.init(jnp.zeros(1))
        >>> for g in (1.0, 3.0, 9.0):       # worker 0: two attempts of 1; worker 1: one attempt, stopped at 2
        ...     u, s = tx.update(jnp.array([g]), s)
        >>> u, float(s.time), int(s.discarded)  # B = 1 * 2 + 0 * 1: -(1 + 3) / 2
        (Array([-2.], dtype=float32), 2.0, 1)
    """
    inner = optax.with_extra_args_support(inner)
    ev0 = lambda: events.init(workers, timing=timing, max_workers=max_workers, key=key)
    size = ev0().perm.shape[0]  # validates now, not at init
    _check(budgets, attempts, probs, size)

    def init_fn(params):
        ev = ev0()
        t, b = _per_worker(budgets, size, jnp.float32), _per_worker(attempts, size, jnp.int32)
        p = success_probs(ev.timing, t, size) if probs is None else _per_worker(probs, size, jnp.float32)
        ev = ev._replace(next_worker=jnp.argmax(b > 0).astype(jnp.int32))   # the round's first attempt
        zero = jnp.zeros([], jnp.int32)
        acc = jax.tree.map(lambda x: jnp.zeros(jnp.shape(x), jnp.result_type(x)), params)
        return MindFlayerState(events=ev, budgets=t, attempts=b, probs=p, acc=acc, successes=zero,
                               discarded=zero, inner_state=inner.init(params))

    def update_fn(updates, state: MindFlayerState, params=None, **extra_args):
        ev = state.events
        active = jnp.arange(size) < ev.workers
        w, ok, busy, key, barrier, nxt, first = _attempt(ev, state.budgets, state.attempts, active)
        acc = jax.tree.map(lambda a, g: a + jnp.where(ok, g, 0).astype(a.dtype), state.acc, updates)
        successes = state.successes + ok.astype(jnp.int32)
        apply = barrier & (successes > 0)
        expected = jnp.sum(jnp.where(active, state.probs * state.attempts, 0.0))
        inv = 1.0 / jnp.where(expected > 0, expected, 1.0)
        step_grads = jax.tree.map(lambda a: (a * inv).astype(a.dtype), acc)
        new_updates, new_inner = inner.update(step_grads, state.inner_state, params, **extra_args)
        now = jnp.where(barrier, jnp.max(jnp.where(active, busy, ev.time)), ev.time)
        zero = jnp.zeros([], jnp.int32)
        ev = ev._replace(
            time=now, version=ev.version + apply.astype(jnp.int32), dispatched=ev.dispatched + 1,
            arrivals=ev.arrivals + ok.astype(jnp.int32), last_staleness=zero, last_worker=w,
            next_worker=jnp.where(barrier, first, nxt), in_flight=jnp.where(barrier, zero, ev.in_flight + 1),
            busy_until=jnp.where(barrier, now, busy), key=key)
        state = state._replace(
            events=ev, acc=jax.tree.map(lambda a: jnp.where(barrier, jnp.zeros_like(a), a), acc),
            successes=jnp.where(barrier, zero, successes),
            discarded=state.discarded + (~ok).astype(jnp.int32),
            inner_state=jax.tree.map(lambda a, b: jnp.where(apply, a, b), new_inner, state.inner_state))
        return jax.tree.map(lambda u: jnp.where(apply, u, jnp.zeros_like(u)), new_updates), state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
