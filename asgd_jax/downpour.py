r"""Downpour SGD (Dean et al. 2012): model replicas against a sharded parameter server.

``R`` model replicas each keep a **local copy** of the parameters; the server's
parameters (the ``params`` of this optax transform, no replica axis) are split
into ``S`` **shards** that apply pushes independently. **One ``update`` call =
one gradient** of replica :func:`asgd_jax.next_worker` ``(state)``, computed at
that replica's local copy, :func:`replica_params` ``(state, params)``, on its
data. Replica :math:`r`'s client (the paper's appendix), step :math:`k = 1, 2,
\dots`:

* compute :math:`g` at the local copy :math:`x_r`; :math:`x_r \leftarrow x_r -
  \alpha g` (a local step, ``local_learning_rate``), accrued :math:`a_r
  \leftarrow a_r + g`;
* when the step ends (time :math:`t`, from :mod:`asgd_jax.events`), if
  :math:`k \bmod n_\text{push} = 0`: push :math:`a_r` (then :math:`a_r = 0`);
  shard :math:`s` receives its slice at :math:`t + d_{r,s}`;
* if :math:`k \bmod n_\text{fetch} = 0`: fetch. Each shard's slice is read as it
  is at :math:`t`; :math:`x_r` becomes the server's parameters and the replica's
  next step starts when the last reply is in, :math:`t + \max_s d_{r,s}`.

Shard :math:`s` applies pushes in **its own arrival order** (ties: the order
they were sent) with its own copy of the server optimizer ``inner`` on its
slice, counts its ``version`` and records the staleness of each push, its
version minus the version the replica had last fetched from it when it
pushed. Message times (:mod:`asgd_jax.network`): a shard message carries only
that shard's :math:`B_s` bytes, :math:`d_{r,s} = \ell_r + \ell_{S,s} +
B_s\max(\beta_r, \beta_{S,s})`, each message independent (shard links are not
congested); shards of other sizes or latencies so see pushes in other orders.
Replicas may fail (:func:`asgd_jax.timing.failing`): the others train on.
Methods, citations and choices: ``docs/methods.md``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from asgd_jax._buffers import find_state, update_row
from asgd_jax import _checks, events
from asgd_jax import network as network_lib

__all__ = ["DownpourState", "ShardLinks", "downpour", "replica_params", "shard_bounds"]

_INT_MAX = int(np.iinfo(np.int32).max)


class ShardLinks(NamedTuple):
    """Message-time parameters (float32): per replica ``latency[R]``, ``byte_time[R]``; per shard
    ``shard_latency[S]``, ``shard_byte_time[S]`` and ``shard_bytes[S]`` (:math:`B_s`)."""

    latency: jax.Array
    byte_time: jax.Array
    shard_latency: jax.Array
    shard_byte_time: jax.Array
    shard_bytes: jax.Array

    def message_time(self, replica) -> jax.Array:
        r"""``[S]``: :math:`d_{r,s} = \ell_r + \ell_{S,s} + B_s\max(\beta_r, \beta_{S,s})` (0 bytes cost 0)."""
        beta = jnp.maximum(self.byte_time[replica], self.shard_byte_time)
        return (self.latency[replica] + self.shard_latency
                + jnp.where(beta > 0, self.shard_bytes * beta, 0.0)).astype(jnp.float32)


@events.reads_events
class DownpourState(NamedTuple):
    """State of :func:`downpour` (``R`` replicas, ``S`` shards, ``D`` parameters, flattened).

    Attributes:
        events: the replicas' jobs and the clock (:class:`asgd_jax.events.EventState`, pure
            rule); its ``version`` counts finished replica steps.
        local: ``[R, D]``, each replica's copy (already moved by the local step of its job in flight).
        accrued: ``[R, D]``, each replica's gradients since its last push (the row still holds the pushed
            sum until the replica's next gradient: it is cleared then, when ``steps % n_push == 0``).
        steps: int32 ``[R]``, steps each replica finished.
        pending: ``[R, D]``, each replica's last push; ``arrive[R, S]`` (float32) when it reaches each
            shard (``inf``: already applied there); ``pending_seq[R]`` its send order;
            ``pending_base[R, S]`` the shard versions the replica had fetched when it pushed.
        fetched: int32 ``[R, S]``, the shard versions of each replica's last fetch.
        push_done: float32 ``[R]``, when each replica's last push has reached every shard.
        shard_version: int32 ``[S]``, pushes each shard applied.
        shard_staleness: int32 ``[S]``, staleness of each shard's last applied push (-1 before any).
        staleness_sum: int32 ``[S]``, the sum of the staleness of every push each shard applied
            (``staleness_sum / shard_version``: each shard's mean staleness).
        shard_state: a tuple of ``S`` states of ``inner``, one per shard.
        pushes, fetches: int32 counts (the start does not count as a fetch).
        n_fetch, n_push: int32; local_learning_rate: float32 :math:`\\alpha`.
        links: :class:`ShardLinks`, ``None`` without a network (every message takes 0).
        overrun: bool, a push was overwritten before it reached every shard (cannot happen
            with positive compute times).

    ``time``, ``next_worker``, ``dispatched``, ``arrivals`` read the events; ``bytes_sent`` is
    ``(pushes + fetches)`` model-sized messages; ``invalid`` includes ``overrun``.
    """

    events: events.EventState
    local: jax.Array
    accrued: jax.Array
    steps: jax.Array
    pending: jax.Array
    arrive: jax.Array
    pending_seq: jax.Array
    pending_base: jax.Array
    fetched: jax.Array
    push_done: jax.Array
    shard_version: jax.Array
    shard_staleness: jax.Array
    staleness_sum: jax.Array
    shard_state: Any
    pushes: jax.Array
    fetches: jax.Array
    n_fetch: jax.Array
    n_push: jax.Array
    local_learning_rate: jax.Array
    links: Any = None
    overrun: Any = None

    @property
    def bytes_sent(self) -> jax.Array:
        if self.links is None:
            return jnp.zeros([], jnp.float32)
        return (self.pushes + self.fetches).astype(jnp.float32) * jnp.sum(self.links.shard_bytes)

    @property
    def invalid(self) -> jax.Array:
        return self.events.invalid | self.overrun


def shard_bounds(params, shards=1) -> tuple[tuple[int, int], ...]:
    """The shards' ``(start, stop)`` in the flattened parameters (``jax.flatten_util.ravel_pytree`` order).

    ``shards``: an int ``S`` (``S`` contiguous slices, sizes differing by at most one, the first ones
    larger), ``"leaf"`` (one shard per leaf) or a sequence of sizes summing to the parameter count.

    Example:
        >>> import jax.numpy as jnp
        >>> from asgd_jax.downpour import shard_bounds
        >>> params = {"a": jnp.zeros(3), "b": jnp.zeros((2, 2))}
        >>> shard_bounds(params, 3), shard_bounds(params, "leaf")
        (((0, 3), (3, 5), (5, 7)), ((0, 3), (3, 7)))
    """
    sizes_of_leaves = [int(np.prod(np.shape(x), dtype=np.int64)) for x in jax.tree.leaves(params)]
    d = sum(sizes_of_leaves)
    if isinstance(shards, str):
        if shards != "leaf":
            raise ValueError(f"unknown shards {shards!r}; give a number of shards, 'leaf' or a list of sizes.")
        sizes = [s for s in sizes_of_leaves if s > 0]
    elif isinstance(shards, (int, np.integer)) and not isinstance(shards, bool):
        if not 1 <= shards <= max(d, 1):
            raise ValueError(f"shards={shards} must be in [1, {d}] (the parameter count): a shard needs a "
                             "parameter.")
        sizes = [len(a) for a in np.array_split(np.arange(d), shards)]
    else:
        sizes = [int(s) for s in shards]
        if not sizes or min(sizes) < 1 or sum(sizes) != d:
            raise ValueError(f"shard sizes {sizes} must be >= 1 and sum to the parameter count {d}.")
    stops = np.cumsum(sizes)
    return tuple((int(b - s), int(b)) for s, b in zip(sizes, stops))


def _links(net, params, bounds, replicas, shard_latency, shard_bandwidth) -> ShardLinks:
    """The network's per-replica fields and the shards' latencies, byte times and bytes."""
    size = lambda x: int(np.prod(np.shape(x), dtype=np.int64))
    item = np.concatenate([np.full(size(x), np.dtype(jnp.result_type(x)).itemsize)
                           for x in jax.tree.leaves(params)] or [np.zeros(0)])
    natural = np.array([item[a:b].sum() for a, b in bounds], np.float64)
    net = network_lib.with_size(net, params, replicas)  # model_bytes: given, or the parameters' bytes
    shard_bytes = net.model_bytes * jnp.asarray(natural / max(natural.sum(), 1.0), jnp.float32)
    s = len(bounds)
    lat = net.server_latency if shard_latency is None else jnp.asarray(shard_latency, jnp.float32)
    bt = net.server_byte_time if shard_bandwidth is None else (1.0 / jnp.asarray(shard_bandwidth, jnp.float32))
    for name, x in (("shard_latency", lat), ("shard_bandwidth", bt)):
        if jnp.ndim(x) == 1 and jnp.shape(x)[0] != s:
            raise ValueError(f"{name} has {jnp.shape(x)[0]} values for {s} shards; give a number or one per shard.")
    return ShardLinks(latency=net.latency, byte_time=net.byte_time,
                      shard_latency=jnp.broadcast_to(lat, (s,)).astype(jnp.float32),
                      shard_byte_time=jnp.broadcast_to(bt, (s,)).astype(jnp.float32), shard_bytes=shard_bytes)


def _check_shard_links(shard_latency, shard_bandwidth, shards) -> None:
    count = shards if isinstance(shards, int) else None if isinstance(shards, str) else len(shards)
    for name, value, positive in (("shard_latency", shard_latency, False),
                                  ("shard_bandwidth", shard_bandwidth, True)):
        if value is None:
            continue
        c = _checks.concrete(value)
        if c is not None and (c.ndim > 1 or (c.ndim == 1 and count is not None and c.shape[0] != count)):
            raise ValueError(f"{name} must be a number or one per shard ({count if count else 'S'}), "
                             f"got shape {c.shape}.")
        if positive:
            c = None if c is None else np.asarray(c, np.float64)
            if c is not None and (np.any(np.isnan(c)) or not np.all(c > 0)):
                raise ValueError(f"shard_bandwidth must be > 0 bytes per time unit (inf: no transfer cost), "
                                 f"got {value!r}.")
        else:
            _checks.check_number(name, value, minimum=0.0)


def _earliest_due(arrive, seq, now):
    """Per shard: whether a push is due (arrived by ``now``) and the slot of the earliest (ties: sent first)."""
    due = (arrive <= now) & jnp.isfinite(arrive)                          # [R, S]
    first = jnp.min(jnp.where(due, arrive, jnp.inf), axis=0)
    cand = due & (arrive == first)
    slot = jnp.argmin(jnp.where(cand, seq[:, None], _INT_MAX), axis=0).astype(jnp.int32)
    return jnp.any(due, axis=0), slot


def _apply_due(inner, bounds, state: DownpourState, server, delta, now):
    """Every shard applies, in its arrival order, the pushes that reached it by ``now``."""

    def body(carry):
        delta, arrive, shard_state, version, staleness, total = carry
        some, slot = _earliest_due(arrive, state.pending_seq, now)
        new_states = []
        for s, (a, b) in enumerate(bounds):  # S static slices: O(D) per round
            g = jax.lax.dynamic_index_in_dim(state.pending, slot[s], keepdims=False)[a:b]
            u, st = inner.update(g, shard_state[s], server[a:b] + delta[a:b])
            delta = delta.at[a:b].add(jnp.where(some[s], u, jnp.zeros_like(u)).astype(delta.dtype))
            new_states.append(jax.tree.map(lambda x, y: jnp.where(some[s], x, y), st, shard_state[s]))
        ids = jnp.arange(len(bounds))
        tau = version - state.pending_base[slot, ids]
        arrive = arrive.at[slot, ids].set(jnp.where(some, jnp.inf, arrive[slot, ids]))
        return (delta, arrive, tuple(new_states), version + some.astype(jnp.int32),
                jnp.where(some, tau, staleness), total + jnp.where(some, tau, 0))

    cond = lambda carry: jnp.any((carry[1] <= now) & jnp.isfinite(carry[1]))
    init = (delta, state.arrive, state.shard_state, state.shard_version, state.shard_staleness,
            state.staleness_sum)
    delta, arrive, shard_state, version, staleness, total = jax.lax.while_loop(cond, body, init)
    return delta, state._replace(arrive=arrive, shard_state=shard_state, shard_version=version,
                                 shard_staleness=staleness, staleness_sum=total)


def _set_row_if(x, i, write, row):
    """``x`` with row ``i`` set to ``row`` where ``write``; unchanged otherwise. A scatter to an
    out-of-range row (dropped) rather than ``x[i] = where(write, row, x[i])``: XLA updates ``x`` in place
    (a read-modify-write of a row after a write to another row made it copy all of ``x`` every call)."""
    return x.at[jnp.where(write, i, x.shape[0])].set(row.astype(x.dtype), mode="drop")


def _push(state: DownpourState, r, t, push, delays):
    """Replica ``r`` pushes its accrued gradient at time ``t`` (if ``push``); its row of ``accrued`` is
    cleared at its next accrual (``update``), not here."""
    arrive = jnp.where(push, t + delays, state.arrive[r])
    overrun = state.overrun | (push & jnp.any(jnp.isfinite(state.arrive[r])))
    # ``shard_version >= 0`` always holds; it makes the write wait for the loop that read ``pending`` just
    # before (_apply_due), so XLA writes the row in place instead of copying all of ``pending`` every call.
    write = push & jnp.all(state.shard_version >= 0)
    return state._replace(
        pending=_set_row_if(state.pending, r, write, state.accrued[r]),
        arrive=state.arrive.at[r].set(arrive),
        pending_seq=state.pending_seq.at[r].set(jnp.where(push, state.pushes, state.pending_seq[r])),
        pending_base=state.pending_base.at[r].set(jnp.where(push, state.fetched[r], state.pending_base[r])),
        push_done=state.push_done.at[r].set(jnp.where(push, t + jnp.max(delays), state.push_done[r])),
        pushes=state.pushes + push.astype(jnp.int32), overrun=overrun)


def _finish_step(inner, bounds, state: DownpourState, server, delta, arrival):
    """Apply what reached the shards by now; the arriving replica pushes, fetches, and may start again when."""
    r, t, arrived = arrival.worker, arrival.time, arrival.arrived
    now = state.events.time
    delta, state = _apply_due(inner, bounds, state, server, delta, now)
    k = state.steps[r] + 1
    delays = (jnp.zeros([len(bounds)], jnp.float32) if state.links is None
              else state.links.message_time(r))
    state = _push(state, r, t, arrived & (k % state.n_push == 0), delays)
    delta, state = _apply_due(inner, bounds, state, server, delta, now)  # a push with no delay, at once
    fetch = arrived & (k % state.n_fetch == 0)
    fresh = server + delta
    ev = state.events
    busy = jnp.where(fetch, jnp.maximum(ev.busy_until[r], t + jnp.max(delays)), ev.busy_until[r])
    # one push at a time per replica: a step that will end in a push starts once the last one is delivered
    busy = jnp.where(arrived & ((k + 1) % state.n_push == 0), jnp.maximum(busy, state.push_done[r]), busy)
    return delta, state._replace(
        events=ev._replace(busy_until=ev.busy_until.at[r].set(busy)),
        local=_set_row_if(state.local, r, fetch, fresh),
        fetched=state.fetched.at[r].set(jnp.where(fetch, state.shard_version, state.fetched[r])),
        steps=state.steps.at[r].add(arrived.astype(jnp.int32)), fetches=state.fetches + fetch.astype(jnp.int32))


def downpour(inner: optax.GradientTransformation, replicas: int, *, shards=1, n_fetch=1, n_push=1,
             local_learning_rate=0.0, timing=1.0, network: network_lib.Network | None = None,
             shard_latency=None, shard_bandwidth=None, key=0) -> optax.GradientTransformationExtraArgs:
    r"""Downpour SGD: ``replicas`` replicas, a server of ``shards`` shards running ``inner`` (module docstring).

    ``update(grads, state, params)`` takes one gradient of replica
    :func:`asgd_jax.next_worker`, computed at :func:`replica_params`, and
    returns the change of the server's parameters ``params`` (zero until a push
    reaches a shard). The replicas' steps are jobs of :mod:`asgd_jax.events`
    with the pure rule; the first ``R - 1`` calls only start replicas, every
    later call finishes one step. With ``shards=1``, ``n_fetch = n_push = 1`` and
    no network this is :func:`asgd_jax.asynchronous` with the same ``inner``.

    ``inner`` runs on each shard's flat slice with its own state, so it must be
    **elementwise** (SGD, Adagrad as in the paper, Adam, ...) to mean the same
    as on the whole model: anything that couples coordinates (a global-norm
    clip) acts per shard, and a step counter counts the shard's own pushes.

    Args:
        inner: the server optimizer, e.g. ``optax.adagrad(0.1)``.
        replicas: :math:`R`, a Python int.
        shards: an int :math:`S` (contiguous slices of the flattened parameters),
            ``"leaf"`` (one per leaf) or a list of sizes (:func:`shard_bounds`).
        n_fetch: fetch every :math:`n_\text{fetch} \ge 1` steps (traced allowed).
        n_push: push every :math:`n_\text{push} \ge 1` steps (traced allowed).
        local_learning_rate: :math:`\alpha \ge 0` of the local steps (0: a replica
            computes every gradient until its next fetch at the fetched parameters).
        timing: compute-time model or a positive number; replicas fail with
            :func:`asgd_jax.timing.failing`.
        network: a :class:`asgd_jax.network.Network` (per-replica latency and
            bandwidth; its server fields are every shard's unless given below;
            ``model_bytes`` is split over the shards by their share of the
            parameters' bytes). ``None``: messages take no time.
        shard_latency: :math:`\ell_{S,s}`, a number or one per shard (needs ``network``).
        shard_bandwidth: :math:`1/\beta_{S,s}`, a number or one per shard (needs ``network``).
        key: PRNG key or int seed (compute times).

    Example:
        >>> import jax.numpy as jnp, optax, asgd_jax
        >>> from asgd_jax.downpour import downpour, replica_params
        >>> tx = downpour(optax.sgd(0.5), 2, shards=2, n_fetch=2, local_learning_rate=0.5)
        >>> x = jnp.zeros(2)
        >>> state = tx.init(x)
        >>> for _ in range(5):                    # every replica's loss ||x - 1||^2 / 2
        ...     u, state = tx.update(replica_params(state, x) - 1.0, state, x)
        ...     x = optax.apply_updates(x, u)
        >>> x.tolist(), state.shard_version.tolist(), int(state.fetches)   # stale pushes overshoot
        ([1.5, 1.5], [4, 4], 2)
    """
    replicas = _checks.python_int("replicas", replicas, 1)
    _checks.check_int("n_fetch", n_fetch, 1)
    _checks.check_int("n_push", n_push, 1)
    _checks.check_number("local_learning_rate", local_learning_rate, minimum=0.0)
    if network is None and (shard_latency is not None or shard_bandwidth is not None):
        raise ValueError("shard_latency and shard_bandwidth need a network; pass "
                         "network=asgd_jax.network.network().")
    _check_shard_links(shard_latency, shard_bandwidth, shards)
    inner = optax.with_extra_args_support(inner)
    make_events = lambda: events.init(replicas, timing=timing, key=key)
    make_events()  # validates now
    network_lib.check(network, replicas)

    def init_fn(params):
        bounds = shard_bounds(params, shards)
        flat, _ = ravel_pytree(params)
        s, i32 = len(bounds), (lambda x: jnp.asarray(x, jnp.int32))
        rows = jnp.broadcast_to(flat, (replicas,) + flat.shape)
        links = None if network is None else _links(network, params, bounds, replicas, shard_latency,
                                                    shard_bandwidth)
        return DownpourState(
            events=make_events(), local=jnp.array(rows), accrued=jnp.zeros_like(rows),
            steps=jnp.zeros([replicas], jnp.int32), pending=jnp.zeros_like(rows),
            arrive=jnp.full([replicas, s], jnp.inf, jnp.float32), pending_seq=jnp.zeros([replicas], jnp.int32),
            pending_base=jnp.zeros([replicas, s], jnp.int32), fetched=jnp.zeros([replicas, s], jnp.int32),
            push_done=jnp.zeros([replicas], jnp.float32), shard_version=jnp.zeros([s], jnp.int32),
            shard_staleness=jnp.full([s], -1, jnp.int32), staleness_sum=jnp.zeros([s], jnp.int32),
            shard_state=tuple(inner.init(flat[a:b]) for a, b in bounds), pushes=i32(0), fetches=i32(0),
            n_fetch=i32(n_fetch), n_push=i32(n_push),
            local_learning_rate=jnp.asarray(local_learning_rate, jnp.float32), links=links,
            overrun=jnp.zeros([], bool))

    def update_fn(updates, state: DownpourState, params=None, **extra_args):
        del extra_args
        if params is None:
            raise ValueError("downpour needs the server's parameters: call update(grads, state, params).")
        bounds = shard_bounds(params, shards)
        server, unravel = ravel_pytree(params)
        g, _ = ravel_pytree(updates)
        w = state.events.next_worker  # this call's gradient: its local step and accrual happen now
        state = state._replace(
            local=update_row(state.local, w, lambda row: row - state.local_learning_rate.astype(g.dtype) * g),
            # a row is cleared lazily: zero if the replica's last finished step pushed it (and at the start)
            accrued=update_row(state.accrued, w,
                               lambda row: jnp.where(state.steps[w] % state.n_push == 0, 0.0, row) + g))
        ev, arrival = events.step(state.events, "pure")
        state = state._replace(events=ev)
        delta, state = _finish_step(inner, bounds, state, server, jnp.zeros_like(server), arrival)
        state = state._replace(events=events.record_step(state.events, arrival.arrived, "pure"))
        return unravel(delta), state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def replica_params(state, params):
    """The parameters the next gradient must be computed at: the local copy of replica
    :func:`asgd_jax.next_worker` for a :func:`downpour` state (found inside ``state``, also in a chain),
    shaped like the server's ``params``; ``params`` itself for any other state.

    Example:
        >>> import jax.numpy as jnp, optax
        >>> from asgd_jax.downpour import downpour, replica_params
        >>> tx = downpour(optax.sgd(1.0), 2, local_learning_rate=0.1)
        >>> state = tx.init({"w": jnp.ones(2)})
        >>> replica_params(state, {"w": jnp.zeros(2)})["w"].tolist()     # the start's copy, not the server's
        [1.0, 1.0]
    """
    dp = find_state(state, DownpourState)
    if dp is None:
        return params
    _, unravel = ravel_pytree(params)
    return unravel(dp.local[dp.events.next_worker])
