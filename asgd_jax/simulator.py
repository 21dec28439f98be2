r"""Asynchronous parameter servers assembled from parts: events, a gradient pool and chained rules.

:func:`parameter_server` is the part that joins the others: the event model
(:mod:`asgd_jax.events`) decides which job arrives when; the server keeps the
in-flight gradients (and, when a rule needs them, the parameters each job was
computed at) and hands the arriving gradient to a chain of server rules
(:mod:`asgd_jax.rules`) ending in the server optimizer, passing ``staleness``,
``stale_params``, ``active_workers``, ``worker`` and ``accepted`` as optax
extra arguments.
:func:`asynchronous` assembles the common systems from these parts, the way
``optax.adamw`` assembles ``scale_by_adam``; :func:`asgd_jax.synchronous` is the
barrier system.

**One ``update`` call = one gradient computed.** The training loop asks
:func:`next_worker` which worker processes the job dispatched now, computes the
gradient at the current parameters on *that worker's* data and passes it to
``update``. The first ``n - 1`` calls only fill the pool (zero updates, time 0).
With equal fixed times and the pure rule this is exactly
``delayed(inner, n - 1)``. The methods and their citations are in
``docs/methods.md``.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from asgd_jax import _checks, events
from asgd_jax import network as network_lib
from asgd_jax import rules as rules_lib
from asgd_jax import timing as timing_lib
from asgd_jax._buffers import write_then_read
from asgd_jax.events import ASSIGNMENTS, Jobs
from asgd_jax.rules import STALENESS_SCALINGS
from asgd_jax.synchronous import SyncState, synchronous

__all__ = [
    "SimState", "Jobs", "StalenessTrace", "parameter_server", "server_chain", "asynchronous", "next_worker",
    "active_workers", "simulate_staleness", "optimal_workers", "ASSIGNMENTS", "SERVER_RULES", "COMPENSATIONS",
    "STALENESS_SCALINGS",
]

SERVER_RULES = ("async", "sync")
COMPENSATIONS = (None, "dc-c", "dc-a")


@events.reads_events
class SimState(NamedTuple):
    """State of :func:`parameter_server` (and so of :func:`asynchronous`).

    Attributes:
        events: the event model's :class:`~asgd_jax.events.EventState` (pool,
            worker clocks, assignment, simulated time, version).
        grads: gradients of the in-flight jobs, like the parameters with a
            leading axis of ``max_workers`` slots.
        stale_params: the parameters each in-flight job was computed at, same
            layout; ``None`` unless ``keep_params``.
        server_state: the state of the server chain (rules and optimizer); it
            moves only when a job arrives.
        link: the server link's state (:class:`asgd_jax.network.Link`: when it is
            free, messages sent); ``None`` without a network.

    Properties read the event state: ``time`` (the simulated clock), ``version``
    (server steps taken), ``dispatched`` (``update`` calls), ``arrivals``,
    ``last_staleness`` and ``last_worker`` (of the last arrival, -1 before any),
    ``next_worker``; ``bytes_sent`` (0 without a network); ``discarded`` sums the rules' ``discarded`` counters;
    ``invalid`` is true when a traced value (of the events or of a rule) was out
    of its range and was clipped.

    Example:
        >>> import jax.numpy as jnp, optax, asgd_jax
        >>> from asgd_jax import timing
        >>> tx = asgd_jax.asynchronous(optax.sgd(0.1), workers=2,
        ...                            timing=timing.per_worker(1.0, jnp.array([1.0, 3.0])))
        >>> state = tx.init(jnp.zeros(2))
        >>> for _ in range(4):
        ...     _, state = tx.update(jnp.ones(2), state)
        >>> float(state.time), int(state.last_worker), int(state.last_staleness), int(state.next_worker)
        (3.0, 1, 2, 1)
    """

    events: events.EventState
    grads: Any
    stale_params: Any
    server_state: Any
    link: Any = None

    @property
    def bytes_sent(self) -> jax.Array:
        return jnp.zeros([], jnp.float32) if self.link is None else self.link.bytes_sent

    @property
    def invalid(self) -> jax.Array:
        """Whether a traced value of the events or of a rule was out of its range (and clipped)."""
        found = [v for _, v in optax.tree_utils.tree_get_all_with_path(self.server_state, "invalid")]
        return functools.reduce(jnp.logical_or, found, self.events.invalid)

    @property
    def discarded(self) -> jax.Array:
        found = [v for _, v in optax.tree_utils.tree_get_all_with_path(self.server_state, "discarded")]
        return sum(found, jnp.zeros([], jnp.int32))


class StalenessTrace(NamedTuple):
    """Per-arrival output of :func:`simulate_staleness` (arrays of length ``num_arrivals``).

    Attributes:
        staleness: int32, server steps between the job's dispatch and its arrival.
        worker: int32, worker that computed the arriving job.
        time: float32, simulated arrival time.
    """

    staleness: jax.Array
    worker: jax.Array
    time: jax.Array


def simulate_staleness(workers, timing, num_arrivals: int, *, key=0, assignment: str = "pure",
                       max_workers: int | None = None) -> StalenessTrace:
    r"""Runs only the event model (every arrival a server step) and returns each arrival's staleness.

    ``n`` workers with compute times from ``timing``: a start-up fill of ``n - 1``
    dispatches, then one dispatch and one arrival per step. With the same ``key``,
    ``assignment`` and ``timing`` the trace is what :func:`asynchronous`
    sees. With ``timing=normal(1, 0.2)`` and the pure rule this is Jain et al.'s
    Monte Carlo (2018, Figure 1): staleness centred at ``n - 1``.

    Args:
        workers: number of workers ``n`` (traced if ``max_workers`` is given).
        timing: compute-time model or a number (fixed time).
        num_arrivals: static number of arrivals to record.
        key: PRNG key or int seed.
        assignment: ``"pure"``, ``"random"`` or ``"shuffle"``.
        max_workers: static bound on ``workers``.

    Returns:
        A :class:`StalenessTrace` of arrays of length ``num_arrivals``; jit- and
        vmap-compatible (vmap over keys for a Monte Carlo).

    Example:
        >>> import asgd_jax
        >>> from asgd_jax import timing
        >>> trace = asgd_jax.simulate_staleness(8, timing.normal(1.0, 0.2), 2000, key=0)
        >>> round(float(trace.staleness[100:].mean()))     # about n - 1
        7
        >>> asgd_jax.simulate_staleness(3, 1.0, 6).staleness.tolist()
        [0, 1, 2, 2, 2, 2]
    """
    if assignment not in ASSIGNMENTS:
        raise ValueError(f"unknown assignment {assignment!r}; choose one of {ASSIGNMENTS}.")
    num_arrivals = _checks.python_int("num_arrivals", num_arrivals, 1)
    state = events.init(workers, timing=timing, max_workers=max_workers, key=key)

    def body(s, _):
        s, arrival = events.step(s, assignment)
        s = events.record_step(s, arrival.arrived, assignment)
        return s, (arrival.staleness, arrival.worker, s.time)

    length = state.perm.shape[0] - 1 + num_arrivals
    _, (staleness, worker, times) = jax.lax.scan(body, state, None, length=length)
    cut = lambda x: jax.lax.dynamic_slice_in_dim(x, state.workers - 1, num_arrivals)
    return StalenessTrace(staleness=cut(staleness), worker=cut(worker), time=cut(times))


def _stepped(server_state) -> jax.Array | None:
    """The step convention of :mod:`asgd_jax.rules`: every ``stepped`` field true (``None``: no such field)."""
    found = [v for _, v in optax.tree_utils.tree_get_all_with_path(server_state, "stepped")]
    if not found:
        return None
    out = found[0]
    for v in found[1:]:
        out = out & v
    return out


def _has_tables(server_state) -> bool:
    """Whether the chain keeps per-worker tables (a state class with ``per_worker_tables``: Malenia, Ringleader)."""
    marked = lambda x: getattr(type(x), "per_worker_tables", False)
    return any(marked(x) for x in jax.tree.leaves(server_state, is_leaf=marked))


def _accepted(server_state, staleness) -> jax.Array:
    """Whether ``staleness`` is within every ``max_staleness`` limit of the chain (a drop rule keeps it)."""
    out = jnp.ones([], bool)
    for _, limit in optax.tree_utils.tree_get_all_with_path(server_state, "max_staleness"):
        out = out & (staleness <= limit)
    return out


def _stop_stale(ev: events.EventState, server_state) -> events.EventState:
    """Ringmaster's stops: cancel the jobs whose staleness now exceeds the chain's ``max_staleness`` and
    hand the next job to the lowest idle worker (the pure rule), which restarts it at the current version."""
    too_old = ev.jobs.valid & ~_accepted(server_state, ev.version - ev.jobs.version)
    hit = jnp.zeros(ev.queued.shape, bool).at[ev.jobs.worker].max(too_old)
    ev, _ = events.cancel(ev, hit)
    return events.record_step(ev, False, "pure")


def parameter_server(server: optax.GradientTransformation, workers, *, timing=1.0, assignment: str = "pure",
                     initial_workers=None, add_workers=1, add_every=1, keep_params: bool = False,
                     network: network_lib.Network | None = None, stop_stale: bool = False,
                     max_workers: int | None = None, key=0) -> optax.GradientTransformationExtraArgs:
    r"""An asynchronous parameter server with ``workers`` workers whose arrivals go through ``server``.

    Each ``update(grads, state, params)`` is one gradient, computed at ``params``
    on the data of worker :func:`next_worker` ``(state)``. The call dispatches
    that job (:func:`asgd_jax.events.step`) and stores its gradient; once the pool
    is full the earliest job arrives and its gradient :math:`g` goes through
    ``server`` with the extra arguments ``staleness``, ``stale_params`` (the
    parameters the job was computed at, when ``keep_params``), ``active_workers``,
    ``worker`` and ``accepted`` (the staleness is within every ``max_staleness``
    field of the chain's state, i.e. no drop rule will discard it: rules with a
    memory, such as DC-ASGD-a's mean square, learn only from accepted arrivals).
    The server's version counts the arrivals that were steps: all of them,
    unless a rule withholds a step by the ``stepped`` convention of
    :mod:`asgd_jax.rules`. A call without an arrival, or whose arrival was not a
    step, emits zero updates; the chain's state moves only on arrivals.

    **Communication** (``network``, :mod:`asgd_jax.network`): the server's link
    serves one message at a time. Each call first sends the current model to
    the dispatched job's worker :math:`w` (served at :math:`\max(\text{now},
    \text{free})`, taking :math:`M_w`); the worker computes once it has it. The
    arriving job's push is served at :math:`\max(\text{ready}, \text{free})`
    and the clock moves to its end, where the server applies it. Jobs still pop
    in the order their gradients are ready (a first-come first-served link);
    the server answers an arrival (the next pull) before it reads later pushes.

    **Stops** (``stop_stale=True``, Ringmaster ASGD with calculation stops,
    Maranjyan et al. 2025): after every server step, each in-flight job whose
    staleness now exceeds the chain's ``max_staleness`` (:math:`R`) is stopped
    (:func:`asgd_jax.events.cancel`; its gradient is void) and its worker
    restarts at the current parameters: the next calls, one per stopped worker,
    dispatch those restarts (zero updates, the pure rule). No arrival is then
    ever older than :math:`R`. Needs the pure assignment and a ``max_staleness``
    in the chain (e.g. :func:`asgd_jax.rules.drop_stale`).

    Args:
        server: the server chain: rules of :mod:`asgd_jax.rules` (or your own)
            ending in the server optimizer, e.g.
            ``optax.chain(rules.scale_by_staleness(), optax.sgd(0.1))``.
        workers: :math:`n \ge 1` (traced if ``max_workers`` bounds it).
        timing: compute-time model (:mod:`asgd_jax.timing`) or a positive number.
        assignment: ``"pure"``, ``"random"`` or ``"shuffle"``.
        initial_workers, add_workers, add_every: gradual introduction
            (:func:`asgd_jax.events.init`).
        keep_params: store the parameters of every in-flight job (for
            :func:`asgd_jax.rules.dc_asgd`).
        network: a :class:`asgd_jax.network.Network` (``None``: messages cost nothing).
        stop_stale: stop and restart jobs that became too stale (above).
        max_workers: static pool size (default ``workers``).
        key: PRNG key or int seed of the simulation.

    Returns:
        An ``optax.GradientTransformationExtraArgs`` whose state is a :class:`SimState`.

    Example:
        >>> import jax.numpy as jnp, optax, asgd_jax
        >>> from asgd_jax import rules
        >>> drop_old = lambda staleness, active_workers, **_: staleness > 2 * active_workers
        >>> tx = asgd_jax.parameter_server(rules.accumulate(optax.sgd(0.1), skip=drop_old), workers=4)
        >>> s = tx.init(jnp.zeros(2))
        >>> for _ in range(10):
        ...     u, s = tx.update(jnp.ones(2), s, jnp.zeros(2))
        >>> int(s.arrivals), int(s.version), int(s.discarded)   # staleness 3 <= 8: all kept
        (7, 7, 0)
    """
    if assignment not in ASSIGNMENTS:
        raise ValueError(f"unknown assignment {assignment!r}; choose one of {ASSIGNMENTS}.")
    server = optax.with_extra_args_support(server)
    make_events = lambda: events.init(workers, timing=timing, max_workers=max_workers, key=key,
                                      initial_workers=initial_workers, add_workers=add_workers,
                                      add_every=add_every)
    size = make_events().perm.shape[0]  # validates the arguments now
    network_lib.check(network, size)
    if stop_stale and assignment != "pure":
        raise ValueError(f"stop_stale restarts a stopped worker at once, which needs assignment='pure', "
                         f"got {assignment!r}.")
    if stop_stale and not optax.tree_utils.tree_get_all_with_path(jax.eval_shape(server.init, jnp.zeros([])), "max_staleness"):
        raise ValueError("stop_stale needs a staleness limit in the server chain (e.g. rules.drop_stale(inner, R)).")

    def init_fn(params):
        slots = lambda: jax.tree.map(lambda p: jnp.zeros((size,) + jnp.shape(p), jnp.result_type(p)), params)
        return SimState(events=make_events(), grads=slots(), stale_params=slots() if keep_params else None,
                        server_state=server.init(params), link=network_lib.link(network, params, size))

    def update_fn(updates, state: SimState, params=None, **extra_args):
        active = events.active_workers(state.events)
        ev, link = state.events, state.link
        if link is not None:  # the pull: the server sends its model to the dispatched job's worker
            w = ev.next_worker
            got, free = network_lib.serve(link.free, ev.time, network_lib.server_message_time(link.network, w))
            ev = ev._replace(busy_until=ev.busy_until.at[w].max(got))
        ev, arrival = events.step(ev, assignment)
        if link is not None:  # the push of the arriving job, first come first served
            done, pushed = network_lib.serve(
                free, arrival.time, network_lib.server_message_time(link.network, arrival.worker))
            arrival = arrival._replace(time=jnp.where(arrival.arrived, done, arrival.time))
            ev = ev._replace(time=jnp.where(arrival.arrived, done, ev.time))
            link = link._replace(free=jnp.where(arrival.arrived, pushed, free),
                                 messages=link.messages + 1 + arrival.arrived.astype(jnp.int32))
        grads, g = write_then_read(state.grads, updates, arrival.new_slot, arrival.slot)
        stale_params, stale = state.stale_params, None
        if stale_params is not None:
            if params is None:
                raise ValueError("keep_params (DC-ASGD) needs params: call update(grads, state, params).")
            stale_params, stale = write_then_read(stale_params, params, arrival.new_slot, arrival.slot)

        def serve(g, server_state, stale):
            return server.update(g, server_state, params, staleness=arrival.staleness, stale_params=stale,
                                 active_workers=active, worker=arrival.worker,
                                 accepted=_accepted(server_state, arrival.staleness), **extra_args)

        def wait(g, server_state, stale):  # no arrival: the chain's state stays
            shapes = jax.eval_shape(serve, g, server_state, stale)[0]
            return jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), shapes), server_state

        if _has_tables(state.server_state):  # a cond: the n rows are written in place, not selected
            new_updates, server_state = jax.lax.cond(arrival.arrived, serve, wait, g, state.server_state, stale)
        else:  # a select keeps the updates fused with apply_updates (XLA:CPU may contract p - lr * g)
            new_updates, new_server = serve(g, state.server_state, stale)
            server_state = jax.tree.map(lambda a, b: jnp.where(arrival.arrived, a, b), new_server,
                                        state.server_state)
        stepped = _stepped(server_state)
        stepped = arrival.arrived if stepped is None else arrival.arrived & stepped
        ev = events.record_step(ev, stepped, assignment)
        if stop_stale:
            ev = _stop_stale(ev, server_state)
        out = jax.tree.map(lambda u: jnp.where(stepped, u, jnp.zeros_like(u)), new_updates)
        return out, SimState(events=ev, grads=grads, stale_params=stale_params, server_state=server_state,
                             link=link)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def server_chain(inner, *, compensation=None, dc_lambda=None, dc_momentum=0.95, dc_eps=1e-7,
                 clip_norm=None, staleness_scaling=None, max_staleness=None, accumulate=1):
    """The chain :func:`asynchronous` builds: compensation, clipping, staleness scaling, then drop/accumulate.

    Rules that are off are left out, so the state holds only the rules in use.

    Example:
        >>> import optax
        >>> from asgd_jax.simulator import server_chain
        >>> tx = server_chain(optax.sgd(0.1), compensation="dc-a", max_staleness=4)
        >>> import jax.numpy as jnp; [type(s).__name__ for s in tx.init(jnp.zeros(1))]
        ['DCAdaptiveState', 'AccumulateState']
    """
    if compensation not in COMPENSATIONS:
        raise ValueError(f"unknown compensation {compensation!r}; choose one of {COMPENSATIONS}.")
    parts = []
    if compensation is not None:
        parts.append(rules_lib.dc_asgd(compensation[-1], dc_lambda, dc_momentum, dc_eps))
    if clip_norm is not None:
        parts.append(rules_lib.clip_by_global_norm(clip_norm))
    if staleness_scaling is not None:
        parts.append(rules_lib.scale_by_staleness(staleness_scaling))
    if max_staleness is not None or not _checks.is_value(accumulate, 1):
        inner = rules_lib.accumulate(inner, accumulate, max_staleness=max_staleness)
    return optax.chain(*parts, inner) if parts else inner


def asynchronous(
    inner: optax.GradientTransformation,
    workers: int | jax.Array,
    *,
    timing: timing_lib.TimingModel | float = 1.0,
    assignment: str = "pure",
    server_rule: str = "async",
    compensation: str | None = None,
    dc_lambda: float | jax.Array | None = None,
    dc_momentum: float | jax.Array = 0.95,
    dc_eps: float | jax.Array = 1e-7,
    staleness_scaling: str | Callable[[jax.Array], jax.Array] | None = None,
    max_staleness: int | jax.Array | None = None,
    accumulate: int | jax.Array = 1,
    backup_workers: int | jax.Array = 0,
    initial_workers: int | jax.Array | None = None,
    add_workers: int | jax.Array = 1,
    add_every: int | jax.Array = 1,
    clip_norm: float | jax.Array | None = None,
    network: network_lib.Network | None = None,
    communication: str = "server",
    stop_stale: bool = False,
    fastest: int | jax.Array | None = None,
    max_workers: int | None = None,
    key: int | jax.Array = 0,
) -> optax.GradientTransformationExtraArgs:
    r"""Simulates asynchronous SGD with ``workers`` workers around the server optimizer ``inner``.

    Each ``update(grads, state, params)`` call is one gradient, computed at the
    current ``params`` on the data of worker :func:`next_worker` ``(state)``. The
    event model (module docstring): the job is dispatched to that worker and
    finishes at :math:`\max(\text{now}, \text{busy}_j) + T_j`; after the start-up
    fill of ``n - 1`` calls, the earliest-finishing job :math:`(g, v, m)` arrives
    (ties: earliest dispatched), the clock moves to its finish time, and its
    staleness is :math:`\tau = \text{version} - v`.

    **Server rule ``"async"``**: :func:`parameter_server` around the chain of
    :func:`server_chain`, the rules in this order (each left out when off):

    1. compensation (DC-ASGD, :func:`asgd_jax.rules.dc_asgd`), with :math:`w` the
       current parameters and :math:`w_{bak}` those the job was computed at:
       :math:`\tilde g = g + \lambda_t \odot g \odot g \odot (w - w_{bak})`, where
       ``"dc-c"``: :math:`\lambda_t = \lambda` (default 0.04); ``"dc-a"``:
       :math:`MS \leftarrow \mu MS + (1-\mu) g^2`,
       :math:`\lambda_t = \lambda_0 / \sqrt{MS + \epsilon}` elementwise (default
       :math:`\lambda_0 = 2`, :math:`\mu = 0.95`, :math:`\epsilon = 10^{-7}`).
       **(choice)** One backup per in-flight job, as in the paper (not MXNet's
       single copy); ``MS`` is updated with the arriving gradient *before*
       :math:`\lambda_t` is computed.
    2. clipping to global norm ``clip_norm`` (:func:`asgd_jax.rules.clip_by_global_norm`).
    3. staleness scaling (:func:`asgd_jax.rules.scale_by_staleness`): ``"adaptive"``
       :math:`s = \min(1, n/\tau)` (:math:`n` = active workers), ``"inverse"``
       :math:`s = 1/\max(\tau, 1)`, or a callable ``s(tau)``.
    4. dropping and accumulation (:func:`asgd_jax.rules.accumulate`): arrivals with
       :math:`\tau >` ``max_staleness`` (:math:`R`) are ignored (Ringmaster ASGD;
       their worker still gets a new job); accepted arrivals are summed and the
       server steps with their average once ``accumulate`` (:math:`k`) of them
       arrived (Aji & Heafield 2019). ``k = 1`` applies every arrival (ASGD).

    Rennala SGD (Tyurin & Richtárik 2023) is ``max_staleness=0,
    accumulate=S`` with the pure rule: workers restart at the current version,
    the server steps on the average of ``S`` gradients computed at it, and older
    gradients are discarded. ``stop_stale=True`` (with ``max_staleness=R``) is
    Ringmaster's variant with calculation stops: a job is stopped as soon as its
    staleness exceeds :math:`R` and its worker restarts at the current
    parameters (:func:`parameter_server`). ``fastest=m`` is Naive Optimal ASGD
    (Maranjyan et al. 2025): only workers ``0 .. m-1`` ever get a job (number the
    workers fastest first; :func:`optimal_workers` gives the paper's :math:`m^*`).

    **Server rule ``"sync"``**: :func:`asgd_jax.synchronous` (SSGD with a barrier;
    backup workers, Chen et al. 2017). Calls come in rounds of :math:`M` = active workers; call ``p`` of a
    round is worker ``p``'s job, computed at the round's parameters. With
    :math:`b` = ``backup_workers`` and :math:`N = M - b`, the first :math:`N` jobs
    to finish (ties: lower worker id) are averaged and applied on the round's last
    call, :math:`\text{inner}(\frac1N \sum_{i \in \text{first } N} g_i)`; the clock
    moves to the :math:`N`-th finish time, the other :math:`b` jobs are cancelled
    and every worker starts the next round at the new parameters then. Staleness
    is 0. **(choice)** All :math:`M` times of a round are drawn when the round
    starts (same law as drawing them at dispatch), so the winners are known when
    each gradient arrives and no gradient buffer is needed; cancelled jobs still
    cost their ``update`` call (honest accounting), and the assignment rule does
    not apply (every worker gets one job per round).

    **Assignment** (AsGrad, Islamov et al. 2024): ``"pure"`` gives the next job to
    the worker that just finished; ``"random"`` to a uniform active worker;
    ``"shuffle"`` to ``perm[t mod n]`` with a fresh permutation every ``n``
    dispatches. **(choice)** Start-up hands the first ``n`` jobs to workers
    ``0, ..., n-1`` in order (the first shuffle window); a worker handed several
    jobs runs them in order without idling.

    **Gradual introduction** (Downpour's warm start): the active worker count
    after :math:`v` server steps is
    :math:`\min(n, n_0 + a \lfloor v / e \rfloor)` (``initial_workers``,
    ``add_workers``, ``add_every``); each newly active worker gets a job at once
    (that call fills the pool and emits zero updates). Downpour's warm start:
    ``initial_workers=1, add_every=W, add_workers=n-1``.

    Shapes are fixed by ``max_workers``, ``server_rule``, ``compensation``,
    ``assignment``, ``staleness_scaling`` and whether ``accumulate`` and
    ``clip_norm`` are in use (static). Every numeric value (``workers``, the
    compute-time model's parameters, :math:`\lambda`, :math:`R`, :math:`k`,
    :math:`b`, the introduction schedule, ``clip_norm``, ``key``) is stored in
    the state by ``init`` and read from there by ``update``, so it may be a traced
    value of a vmapped sweep; the learning rate lives in ``inner`` (use
    ``optax.inject_hyperparams``). ``update`` takes its switches from the state's
    structure, so an ``update`` built with other numeric values still works.

    Args:
        inner: the server optimizer, any optax transformation.
        workers: number of workers :math:`n \ge 1` (``N + b`` for the sync rule).
            May be traced if ``max_workers`` bounds it.
        timing: compute-time model (:mod:`asgd_jax.timing`) or a number (a fixed
            time).
        assignment: ``"pure"``, ``"random"`` or ``"shuffle"``.
        server_rule: ``"async"`` or ``"sync"``.
        compensation: ``None``, ``"dc-c"`` or ``"dc-a"`` (async only).
        dc_lambda: :math:`\lambda` (dc-c, default 0.04) or :math:`\lambda_0`
            (dc-a, default 2.0).
        dc_momentum: :math:`\mu` of dc-a.
        dc_eps: :math:`\epsilon` of dc-a.
        staleness_scaling: ``None``, ``"adaptive"``, ``"inverse"`` or a function
            of the int32 staleness returning a scalar factor (async only).
        max_staleness: drop arrivals with staleness above this :math:`R \ge 0`
            (async only; ``None``: keep all).
        accumulate: arrivals per server step :math:`k \ge 1` (async only). Any
            value other than a concrete 1 (e.g. a traced one) allocates the
            accumulator.
        backup_workers: :math:`b \ge 0` of the sync rule (clipped to ``M - 1``).
        initial_workers: active workers at the start (default: all).
        add_workers: workers added at each introduction.
        add_every: server steps between introductions.
        clip_norm: clip each arrival to this global norm (``None``: no clipping).
        network: a :class:`asgd_jax.network.Network`: every pull and push costs
            time on the server's link, which serves one message at a time
            (:func:`parameter_server`); ``None``: messages cost nothing.
        communication: sync rule only: ``"server"`` (pulls and pushes through the
            server's link) or ``"allreduce"`` (AllReduce-SGD: a ring all-reduce
            after the slowest worker; :func:`asgd_jax.synchronous`).
        stop_stale: async only, with ``max_staleness``: stop jobs that became
            staler than :math:`R` and restart their workers (pure rule).
        fastest: async only: use only the ``m`` first workers (traced allowed;
            the workers' expected times must not decrease with the id).
        max_workers: static bound on ``workers`` (default ``workers``).
        key: PRNG key or int seed of the simulation (times and assignment).

    Returns:
        An ``optax.GradientTransformationExtraArgs`` whose state is a
        :class:`SimState`. ``update(grads, state, params=None, **extra_args)``
        passes ``params`` and extra arguments on to ``inner``; compensation needs
        ``params``.

    Raises:
        ValueError: an unknown rule name, an option the chosen server rule does
            not use, or an out-of-range concrete value.

    Example:
        >>> import jax, jax.numpy as jnp, optax, asgd_jax
        >>> from asgd_jax import timing
        >>> data = jnp.array([1.0, 2.0, 3.0])   # worker i's loss: (w - data[i])^2 / 2
        >>> speeds = timing.per_worker(timing.fixed(1.0), jnp.array([1.0, 2.0, 3.0]))
        >>> for rule in ("pure", "shuffle"):
        ...     tx = asgd_jax.asynchronous(optax.sgd(0.02), workers=3, timing=speeds, assignment=rule)
        ...     @jax.jit
        ...     def step(params, state):
        ...         i = asgd_jax.next_worker(state)   # this gradient uses worker i's data
        ...         updates, state = tx.update(params - data[i], state, params)
        ...         return optax.apply_updates(params, updates), state
        ...     params, state, tail = jnp.zeros(()), tx.init(jnp.zeros(())), []
        ...     for t in range(600):
        ...         params, state = step(params, state)
        ...         tail.append(params)
        ...     print(rule, round(float(jnp.mean(jnp.stack(tail[300:]))), 1))
        pure 1.6
        shuffle 2.0
        >>> int(state.version), int(state.dispatched)   # 2 start-up calls emit no step
        (598, 600)

        Pure ASGD weights worker ``i``'s data by its speed ``1/s_i``
        (minimiser 1.64); shuffle weights every worker equally (minimiser 2).

    References:
        Dean et al. 2012 (Downpour); Zheng et al. 2017 (DC-ASGD); Chen et al. 2017
        (backup workers); Aji & Heafield 2019; Mishchenko et al. 2022; Tyurin &
        Richtárik 2023 (Rennala); Islamov et al. 2024 (AsGrad); Maranjyan et al.
        2025 (Ringmaster). See docs/methods.md.
    """
    if server_rule not in SERVER_RULES:
        raise ValueError(f"unknown server_rule {server_rule!r}; choose one of {SERVER_RULES}.")
    if server_rule == "sync":
        unused = {"compensation": compensation is not None,
                  "staleness_scaling": staleness_scaling is not None,
                  "max_staleness": max_staleness is not None,
                  "accumulate": not _checks.is_value(accumulate, 1)}
        bad = [name for name, flag in unused.items() if flag]
        if bad:
            raise ValueError(f"{', '.join(bad)} has no effect with server_rule='sync' (every gradient has "
                             f"staleness 0 and a round averages its first N); drop it or use server_rule='async'.")
        if assignment not in ASSIGNMENTS:
            raise ValueError(f"unknown assignment {assignment!r}; choose one of {ASSIGNMENTS}.")
        return synchronous(inner, workers, backup_workers=backup_workers, timing=timing,
                           initial_workers=initial_workers, add_workers=add_workers, add_every=add_every,
                           clip_norm=clip_norm, network=network, communication=communication,
                           max_workers=max_workers, key=key)
    if not _checks.is_value(backup_workers, 0):
        raise ValueError("backup_workers needs server_rule='sync'.")
    if communication != "server":
        raise ValueError(f"communication={communication!r} needs server_rule='sync'; an asynchronous "
                         "parameter server communicates through its link ('server').")
    if stop_stale and max_staleness is None:
        raise ValueError("stop_stale stops jobs staler than max_staleness; give max_staleness=R.")
    if fastest is not None:
        initial_workers, add_workers = _fastest(fastest, initial_workers, timing, workers, max_workers)
    chain = server_chain(inner, compensation=compensation, dc_lambda=dc_lambda, dc_momentum=dc_momentum,
                         dc_eps=dc_eps, clip_norm=clip_norm, staleness_scaling=staleness_scaling,
                         max_staleness=max_staleness, accumulate=accumulate)
    return parameter_server(chain, workers, timing=timing, assignment=assignment,
                            initial_workers=initial_workers, add_workers=add_workers, add_every=add_every,
                            keep_params=compensation is not None, network=network, stop_stale=stop_stale,
                            max_workers=max_workers, key=key)


def _fastest(m, initial_workers, timing, workers, max_workers):
    """``fastest=m``: ``initial_workers=m, add_workers=0``, checking that the workers are numbered fastest first."""
    if initial_workers is not None:
        raise ValueError("fastest=m already sets the active workers; drop initial_workers.")
    _checks.check_int("fastest", m, 1)
    size = _checks.static_bound("workers", workers, max_workers, "max_workers")
    means = _checks.concrete(timing_lib.as_timing(timing).expected(jnp.arange(size), size))
    if means is not None and not (means[1:] >= means[:-1]).all():
        raise ValueError(f"fastest=m uses workers 0 .. m-1, so number the workers fastest first; their expected "
                         f"times are {means.tolist()}.")
    return m, 0


def optimal_workers(times, sigma2, eps) -> jax.Array:
    r"""Naive Optimal ASGD's worker count (Maranjyan, Tyurin & Richtárik 2025): the :math:`m` minimising the time bound.

    With the compute times sorted, :math:`\tau_1 \le \dots \le \tau_n`,

    .. math:: m^* = \arg\min_{m \in [n]} \Big(\frac1m \sum_{i=1}^m \frac1{\tau_i}\Big)^{-1}
              \Big(1 + \frac{\sigma^2}{m\varepsilon}\Big),

    the time complexity of asynchronous SGD on the :math:`m` fastest workers up to
    the factor :math:`L\Delta/\varepsilon`. Ties: the smallest :math:`m`.

    Args:
        times: ``[n]`` positive (mean) compute times, in any order (traced allowed).
        sigma2: the gradient noise :math:`\sigma^2 \ge 0`.
        eps: the target :math:`\varepsilon > 0` (:math:`E\|\nabla f\|^2 \le \varepsilon`).

    Returns:
        int32 :math:`m^*` (pass it as ``asynchronous(..., fastest=m)``).

    Example:
        >>> import jax.numpy as jnp, asgd_jax
        >>> times = jnp.array([1.0, 1.0, 2.0, 100.0])
        >>> int(asgd_jax.optimal_workers(times, 0.0, 1.0)), int(asgd_jax.optimal_workers(times, 30.0, 1.0))
        (1, 3)
    """
    _checks.check_number("optimal_workers(times)", times, positive=True)
    _checks.check_number("optimal_workers(sigma2)", sigma2, minimum=0.0)
    _checks.check_number("optimal_workers(eps)", eps, positive=True)
    tau = jnp.sort(jnp.asarray(times, jnp.float32))
    m = jnp.arange(1, tau.shape[0] + 1, dtype=jnp.float32)
    bound = m / jnp.cumsum(1.0 / tau) * (1.0 + jnp.asarray(sigma2, jnp.float32) / (m * eps))
    return (jnp.argmin(bound) + 1).astype(jnp.int32)


def _event_state(state) -> events.EventState:
    """The event state inside an optimizer state (also nested in a chain, tuple or dict)."""
    found = optax.tree_utils.tree_get_all_with_path(
        state, "events", filtering=lambda path, value: isinstance(value, events.EventState))
    if len(found) != 1:
        raise ValueError(f"expected exactly one SimState or SyncState (an 'events' field) inside the optimizer "
                         f"state, found {len(found)}.")
    return found[0][1]


def next_worker(state) -> jax.Array:
    """The worker whose data the next ``update`` call's gradient must be computed on.

    Reads the event state of :func:`asynchronous`, :func:`parameter_server` or
    :func:`asgd_jax.synchronous`, also when the transform is nested in a chain.
    An int32 scalar: index the worker's data shard with it (works under ``jit``
    and ``vmap``).

    Example:
        >>> import jax.numpy as jnp, optax, asgd_jax
        >>> tx = optax.chain(optax.clip(1.0), asgd_jax.asynchronous(optax.sgd(0.1), workers=2))
        >>> state = tx.init(jnp.zeros(3))
        >>> int(asgd_jax.next_worker(state))
        0
    """
    return _event_state(state).next_worker


def active_workers(state) -> jax.Array:
    r"""Workers active after the server steps taken so far: :math:`\min(n, n_0 + a\lfloor v/e\rfloor)`.

    Example:
        >>> import jax.numpy as jnp, optax, asgd_jax
        >>> tx = asgd_jax.asynchronous(optax.sgd(0.1), workers=4, initial_workers=1, add_every=10)
        >>> int(asgd_jax.active_workers(tx.init(jnp.zeros(3))))
        1
    """
    return events.active_workers(_event_state(state))
