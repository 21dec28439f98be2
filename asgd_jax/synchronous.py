r"""Synchronous SGD with a barrier and backup workers, as an optax transform.

Calls come in rounds of :math:`M` active workers: call ``p`` of a round is
worker ``p``'s job, computed at the round's parameters. With :math:`b` backup
workers and :math:`N = M - b`, the first :math:`N` jobs to finish (ties: lower
worker id) are averaged and applied on the round's last call,
:math:`\text{inner}(\frac1N \sum_{i \in \text{first } N} g_i)`; the clock moves
to the :math:`N`-th finish time, the :math:`b` late jobs are cancelled and every
worker starts the next round at the new parameters (Chen et al. 2017). With
:math:`b = 0` this is SSGD: the round waits for the slowest worker.

**Communication** (``network``, :mod:`asgd_jax.network`). ``"server"``: the
server's link serves one message at a time; at the round's start it sends the
model to workers :math:`0, \dots, M-1` in turn (worker :math:`p` computes once
it has it), then serves the pushes of the first :math:`N` gradients first come
first served (:func:`asgd_jax.network.fifo_finish`); the step happens when the
:math:`N`-th push ends. ``"allreduce"`` (AllReduce-SGD, no server, ``b = 0``):
every worker starts at once; the step happens a ring all-reduce
(:func:`asgd_jax.network.ring_allreduce_time`) after the slowest worker.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from asgd_jax import _checks, events
from asgd_jax import network as network_lib
from asgd_jax import rules as rules_lib

__all__ = ["SyncState", "synchronous", "COMMUNICATIONS"]

COMMUNICATIONS = ("server", "allreduce")


@events.reads_events
class SyncState(NamedTuple):
    """State of :func:`synchronous`.

    Attributes:
        events: the clock, the round's jobs and the introduction schedule, an
            :class:`~asgd_jax.events.EventState` (``in_flight`` is the position
            in the round, ``jobs.finish`` the round's finish times).
        backup_workers: int32, :math:`b`.
        discarded: int32, cancelled late jobs so far.
        acc: sum of the round's winning gradients, like the parameters.
        clip_state: state of the per-gradient clipping (``None`` without it).
        inner_state: the server optimizer's state; it moves once per round.
        link: the communication state (:class:`asgd_jax.network.Link`), ``None``
            without a network.

    The fields ``time``, ``version``, ``dispatched``, ``arrivals``,
    ``last_staleness`` (always 0), ``last_worker`` and ``next_worker`` read the
    event state; ``invalid``: a traced value out of range (the events', or
    ``backup_workers`` outside ``[0, workers - 1]``, which is clipped).
    """

    events: events.EventState
    backup_workers: jax.Array
    discarded: jax.Array
    acc: Any
    clip_state: Any
    inner_state: Any
    link: Any = None

    @property
    def bytes_sent(self) -> jax.Array:
        return jnp.zeros([], jnp.float32) if self.link is None else self.link.bytes_sent

    @property
    def invalid(self) -> jax.Array:
        b = self.backup_workers
        return self.events.invalid | (b < 0) | (b >= self.events.workers)



def _pulls(link, rounds):
    """Each worker's pull time this round (0 for workers not active)."""
    ids = jnp.arange(link.network.latency.shape[0], dtype=jnp.int32)
    return jnp.where(ids < rounds, network_lib.server_message_time(link.network, ids), 0.0)


def _round_end(link, communication, start, finish, order, rounds, used_n, barrier):
    """When a round that started at ``start`` steps, with communication; and the link's new state."""
    net = link.network
    if communication == "server":  # pushes of the winners, first come first served after the pulls
        push = jnp.where(jnp.arange(order.shape[0]) < used_n, network_lib.server_message_time(net, order), 0.0)
        done = network_lib.fifo_finish(finish[order], push, start + jnp.sum(_pulls(link, rounds)))[used_n - 1]
        sent = rounds + used_n
    else:
        done = finish[order[used_n - 1]] + network_lib.ring_allreduce_time(net, rounds)
        sent = 2 * (rounds - 1)
    return done, link._replace(free=jnp.where(barrier, done, link.free),
                               messages=link.messages + jnp.where(barrier, sent, 0))


def synchronous(inner: optax.GradientTransformation, workers, *, backup_workers=0, timing=1.0,
                initial_workers=None, add_workers=1, add_every=1, clip_norm=None,
                network: network_lib.Network | None = None, communication: str = "server",
                max_workers: int | None = None, key=0) -> optax.GradientTransformationExtraArgs:
    r"""Synchronous SGD around the server optimizer ``inner``, with ``backup_workers`` (see the module docstring).

    **(choice)** All :math:`M` times of a round are drawn when the round starts
    (the same law as drawing them at dispatch), so the winners are known as each
    gradient arrives and no gradient buffer is needed; cancelled jobs still cost
    their ``update`` call (honest accounting). ``clip_norm`` clips each gradient
    before the average. Workers may be introduced gradually, as in
    :func:`asgd_jax.events.init`.

    Args:
        inner: the server optimizer.
        workers: :math:`M = N + b` (traced if ``max_workers`` bounds it).
        backup_workers: :math:`b \ge 0` (clipped to :math:`M - 1` when traced).
        timing: compute-time model or a positive number.
        initial_workers, add_workers, add_every: gradual introduction.
        clip_norm: clip each gradient to this global norm (``None``: no clipping).
        network: a :class:`asgd_jax.network.Network` (``None``: messages cost nothing).
        communication: ``"server"`` (a parameter server's link) or ``"allreduce"``
            (a ring all-reduce; needs ``backup_workers=0``); see the module docstring.
        max_workers: static bound on ``workers``.
        key: PRNG key or int seed.

    Example:
        >>> import jax.numpy as jnp, optax, asgd_jax
        >>> tx = asgd_jax.synchronous(optax.sgd(1.0), workers=3, backup_workers=1)
        >>> s = tx.init(jnp.zeros(1))
        >>> for g in (1.0, 2.0, 6.0):           # equal times: workers 0 and 1 win the round
        ...     u, s = tx.update(jnp.array([g]), s)
        >>> u, int(s.version), int(s.discarded)
        (Array([-1.5], dtype=float32), 1, 1)
    """
    _checks.check_int("backup_workers", backup_workers, 0)
    c = _checks.concrete(workers)
    if c is not None and _checks.concrete(backup_workers) is not None and c.shape == ():
        if int(backup_workers) >= int(c):
            raise ValueError(f"backup_workers={int(backup_workers)} leaves no worker to wait for "
                             f"among workers={int(c)}; use at most {int(c) - 1}.")
    if communication not in COMMUNICATIONS:
        raise ValueError(f"unknown communication {communication!r}; choose one of {COMMUNICATIONS}.")
    if communication == "allreduce" and not _checks.is_value(backup_workers, 0):
        raise ValueError("communication='allreduce' waits for every worker; drop backup_workers (or use 'server').")
    clip = None if clip_norm is None else rules_lib.clip_by_global_norm(clip_norm)
    inner = optax.with_extra_args_support(inner)
    ev0 = lambda: events.init(workers, timing=timing, max_workers=max_workers, key=key,
                              initial_workers=initial_workers, add_workers=add_workers, add_every=add_every)
    size = ev0().perm.shape[0]  # validates now, not at init
    network_lib.check(network, size)

    def init_fn(params):
        zeros = jax.tree.map(lambda p: jnp.zeros(jnp.shape(p), jnp.result_type(p)), params)
        return SyncState(events=ev0(), backup_workers=jnp.array(backup_workers, jnp.int32),
                         discarded=jnp.zeros([], jnp.int32), acc=zeros,
                         clip_state=None if clip is None else clip.init(params), inner_state=inner.init(params),
                         link=network_lib.link(network, params, size))

    def update_fn(updates, state: SyncState, params=None, **extra_args):
        ev = state.events
        size = ev.perm.shape[0]
        key, k_time = jax.random.split(ev.key) if ev.timing.is_random else (ev.key, ev.key)
        ids = jnp.arange(size, dtype=jnp.int32)
        rounds = events.active_workers(ev)                                  # M workers this round
        used_n = rounds - jnp.clip(state.backup_workers, 0, rounds - 1)     # N
        p = ev.in_flight                                                    # position = worker
        start = p == 0
        link = state.link
        begin = ev.time if link is None or communication != "server" else ev.time + jnp.cumsum(_pulls(link, rounds))
        drawn = begin + ev.timing.sample_at(k_time, ids, ev.workers, begin)
        finish = jnp.where(start, jnp.where(ids < rounds, drawn, jnp.inf), ev.jobs.finish)
        order = jnp.argsort(finish, stable=True).astype(jnp.int32)         # ties: lower worker id
        winner = jnp.argmax(order == p) < used_n
        g, clip_state = updates, state.clip_state
        if clip is not None:
            g, clip_state = clip.update(g, clip_state, params)
        acc = jax.tree.map(lambda a, x: a + jnp.where(winner, x, 0).astype(a.dtype), state.acc, g)
        barrier = p >= rounds - 1
        inv = 1.0 / used_n.astype(jnp.float32)
        step_grads = jax.tree.map(lambda a: (a * inv).astype(a.dtype), acc)
        new_updates, new_inner = inner.update(step_grads, state.inner_state, params, **extra_args)
        last = order[used_n - 1]
        done, zero = finish[last], jnp.zeros([], jnp.int32)
        if link is not None:
            done, link = _round_end(link, communication, ev.time, finish, order, rounds, used_n, barrier)
        now = jnp.where(barrier, done, ev.time)
        jobs = events.Jobs(finish=finish, seq=jnp.where(start, ev.dispatched + ids, ev.jobs.seq),
                           version=jnp.full([size], ev.version, jnp.int32), worker=ids,
                           valid=(ids <= p) & (ids < rounds) & ~barrier)
        ev = ev._replace(
            time=now, version=ev.version + barrier.astype(jnp.int32), dispatched=ev.dispatched + 1,
            arrivals=ev.arrivals + jnp.where(barrier, used_n, zero),
            last_staleness=jnp.where(barrier, zero, ev.last_staleness),
            last_worker=jnp.where(barrier, last, ev.last_worker),
            next_worker=jnp.where(barrier, zero, p + 1), in_flight=jnp.where(barrier, zero, p + 1),
            busy_until=jnp.where(barrier, now, jnp.where(ids == p, finish, ev.busy_until)), jobs=jobs, key=key)
        state = SyncState(
            events=ev, backup_workers=state.backup_workers,
            discarded=state.discarded + jnp.where(barrier, rounds - used_n, zero),
            acc=jax.tree.map(lambda a: jnp.where(barrier, jnp.zeros_like(a), a), acc), clip_state=clip_state,
            inner_state=jax.tree.map(lambda a, b: jnp.where(barrier, a, b), new_inner, state.inner_state),
            link=link)
        return jax.tree.map(lambda u: jnp.where(barrier, u, jnp.zeros_like(u)), new_updates), state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
