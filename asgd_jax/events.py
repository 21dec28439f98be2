r"""The event model: workers, a pool of in-flight jobs and a simulated clock, as a pure state.

Every asynchronous system of asgd_jax runs on this module. :class:`EventState`
holds the pool of in-flight jobs, each worker's queue and clock, the assignment
rule's state and the simulated time (no gradients: the transforms built on it
keep those). Pure functions move it:

* :func:`step` dispatches the job of ``next_worker``: worker :math:`j` finishes
  it at :math:`\max(\text{now}, \text{busy}_j) + T`, :math:`T` drawn from
  :math:`j`'s compute-time model (which may depend on the worker and the clock;
  ``TimingModel.sample_at``), so a worker handed several jobs runs them in
  order without idling. Once the pool holds a job per active worker, the
  earliest finish arrives (ties: earliest dispatched), the clock moves to it and
  its staleness is :math:`\tau = \text{version} - v_{\text{job}}`. Returns an
  :class:`Arrival`.
* :func:`record_step` counts a server step if the server took one (``version``
  counts only steps taken) and picks the next job's worker.
* :func:`cancel` abandons a worker's in-flight jobs (it is free at once).

Assignment (AsGrad, Islamov et al. 2024): ``"pure"``, the lowest-id active
worker with nothing in flight (in steady state the one that just finished);
``"random"``, a uniform active worker; ``"shuffle"``, ``perm[t mod n]`` with a
fresh permutation every ``n`` dispatches. Workers not started yet come first,
in id order. The first ``n - 1`` steps only fill the pool. With equal fixed
times and the pure rule every arrival has staleness ``n - 1``, the constant
delay of :func:`asgd_jax.delayed`. Gradual introduction: after :math:`v`
server steps :math:`\min(n, n_0 + a\lfloor v/e \rfloor)` workers are active.
:func:`asgd_jax.simulate_staleness` is a scan over :func:`step`. Methods and
citations: ``docs/methods.md``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from asgd_jax import _checks
from asgd_jax import timing as timing_lib

__all__ = ["ASSIGNMENTS", "Jobs", "EventState", "Arrival", "init", "step", "record_step", "cancel",
           "active_workers", "reads_events"]

ASSIGNMENTS = ("pure", "random", "shuffle")
_INT_MAX = int(np.iinfo(np.int32).max)


class Jobs(NamedTuple):
    """The pool of in-flight jobs, one entry per slot (``P`` slots): each job's ``finish`` time (float32),
    dispatch index ``seq`` (the tie-break), ``version`` it was computed at, ``worker``, and whether the slot
    is ``valid`` (holds an in-flight job).
    """

    finish: jax.Array
    seq: jax.Array
    version: jax.Array
    worker: jax.Array
    valid: jax.Array


class EventState(NamedTuple):
    """The event model's state (arrays; ``P`` = the pool size ``max_workers``).

    ``time`` (float32): finish time of the last arrival (0 during start-up);
    ``version``: server steps taken; ``dispatched``, ``arrivals``: jobs so far;
    ``last_staleness``, ``last_worker``: of the last arrival (-1 before any);
    ``next_worker``: the worker of the job the next :func:`step` dispatches;
    ``in_flight``: jobs in the pool; ``started``: workers that had a job;
    ``queued[P]``, ``busy_until[P]``: per worker, its jobs in flight and when
    its last one finishes; ``jobs``: the pool; ``perm[P]``, ``perm_pos``: the
    shuffle rule's permutation; ``key``, ``assign_key``: PRNG keys of times and
    of the next assignment draw; ``timing``: the compute-time model (a pytree);
    ``workers``, ``initial_workers``, ``add_workers``, ``add_every``: :math:`n`
    and the introduction schedule (int32); ``invalid`` (bool): a traced value
    was out of range (workers outside ``[1, P]``, ...) and was clipped.
    """

    time: jax.Array
    version: jax.Array
    dispatched: jax.Array
    arrivals: jax.Array
    last_staleness: jax.Array
    last_worker: jax.Array
    next_worker: jax.Array
    in_flight: jax.Array
    started: jax.Array
    queued: jax.Array
    busy_until: jax.Array
    jobs: Jobs
    perm: jax.Array
    perm_pos: jax.Array
    key: jax.Array
    assign_key: jax.Array
    timing: Any
    workers: jax.Array
    initial_workers: jax.Array
    add_workers: jax.Array
    add_every: jax.Array
    invalid: jax.Array


class Arrival(NamedTuple):
    """What one :func:`step` did: whether a job ``arrived`` (false while the pool fills), its ``worker``,
    ``staleness``, finish ``time``, dispatch ``version`` and pool ``slot``, and the ``new_slot`` of the job
    dispatched in this step (int32 scalars; ``time`` float32).
    """

    arrived: jax.Array
    worker: jax.Array
    staleness: jax.Array
    time: jax.Array
    version: jax.Array
    slot: jax.Array
    new_slot: jax.Array


_READ_THROUGH = ("time", "version", "dispatched", "arrivals", "last_staleness", "last_worker", "next_worker",
                 "jobs", "invalid")


def reads_events(cls):
    """Class decorator: a state with an ``events`` field reads ``time``, ``version``, ... through it."""
    for name in (n for n in _READ_THROUGH if n not in cls.__dict__):  # a class may define its own
        setattr(cls, name, property(lambda self, name=name: getattr(self.events, name)))
    return cls


def init(workers, *, timing=1.0, max_workers: int | None = None, key=0, initial_workers=None,
         add_workers=1, add_every=1) -> EventState:
    """A fresh event model: no job in flight, clock at 0, the first job for worker 0.

    Args:
        workers: number of workers :math:`n \\ge 1` (traced if ``max_workers`` bounds it).
        timing: compute-time model or a positive number (a fixed time).
        max_workers: static pool size (default ``workers``).
        key: PRNG key or int seed.
        initial_workers: active workers at the start :math:`n_0` (default all).
        add_workers: workers added at each introduction :math:`a \\ge 0`.
        add_every: server steps between introductions :math:`e \\ge 1`.

    Example:
        >>> from asgd_jax import events
        >>> s = events.init(3, timing=2.0)
        >>> int(s.workers), s.jobs.valid.tolist(), int(s.next_worker)
        (3, [False, False, False], 0)
    """
    size = _checks.static_bound("workers", workers, max_workers, "max_workers")
    _checks.check_int("add_workers", add_workers, 0)
    _checks.check_int("add_every", add_every, 1)
    if initial_workers is not None:
        _checks.check_int("initial_workers", initial_workers, 1)
    model = timing_lib.as_timing(timing)
    model.check_workers(size)  # per-worker scales, failing worker ids
    i32, zero = (lambda x: jnp.array(x, jnp.int32)), (lambda: jnp.zeros([], jnp.int32))
    n, key = jnp.clip(i32(workers), 1, size), jnp.copy(_checks.as_key(key))
    init_n = n if initial_workers is None else i32(initial_workers)
    invalid = (i32(workers) != n) | (init_n < 1) | (i32(add_workers) < 0) | (i32(add_every) < 1)
    return EventState(
        time=jnp.zeros([], jnp.float32), version=zero(), dispatched=zero(), arrivals=zero(),
        last_staleness=i32(-1), last_worker=i32(-1), next_worker=zero(), in_flight=zero(),
        started=zero(), queued=jnp.zeros([size], jnp.int32), busy_until=jnp.zeros([size], jnp.float32),
        jobs=Jobs(finish=jnp.full([size], jnp.inf, jnp.float32), seq=jnp.zeros([size], jnp.int32),
                  version=jnp.zeros([size], jnp.int32), worker=jnp.zeros([size], jnp.int32),
                  valid=jnp.zeros([size], bool)),
        perm=jnp.arange(size, dtype=jnp.int32), perm_pos=zero(), key=key, assign_key=jnp.copy(key),
        timing=jax.tree.map(lambda x: jnp.array(x, jnp.float32), model), workers=n,
        initial_workers=jnp.array(init_n), add_workers=i32(add_workers), add_every=i32(add_every),
        invalid=invalid)


def active_workers(state: EventState, version=None) -> jax.Array:
    r"""Active workers after ``version`` server steps (default: the state's): :math:`\min(n, n_0 + a\lfloor
    v/e\rfloor)`."""
    version = state.version if version is None else version
    grown = state.initial_workers + state.add_workers * (version // jnp.maximum(state.add_every, 1))
    return jnp.clip(grown, 1, state.workers)


def _earliest(jobs: Jobs) -> jax.Array:
    """Slot of the valid job with the earliest finish; ties: the earliest dispatched."""
    finish = jnp.where(jobs.valid, jobs.finish, jnp.inf)
    candidates = jobs.valid & (finish == jnp.min(finish))
    return jnp.argmin(jnp.where(candidates, jobs.seq, _INT_MAX)).astype(jnp.int32)


def step(state: EventState, assignment: str = "pure") -> tuple[EventState, Arrival]:
    """Dispatches the job of ``state.next_worker``; pops the earliest job once the pool is full.

    Leaves ``version`` and ``next_worker`` alone: call :func:`record_step` next.
    When nothing is random (fixed times, the pure rule) the key is not split.
    """
    if assignment == "pure" and not state.timing.is_random:
        key = k_time = k_assign = state.key
    else:
        key, k_time, k_assign = jax.random.split(state.key, 3)
    w = state.next_worker
    jobs = state.jobs
    new = jnp.argmin(jobs.valid).astype(jnp.int32)  # first free slot
    start = jnp.maximum(state.time, state.busy_until[w])
    finish = start + state.timing.sample_at(k_time, w, state.workers, start)
    jobs = Jobs(finish=jobs.finish.at[new].set(finish), seq=jobs.seq.at[new].set(state.dispatched),
                version=jobs.version.at[new].set(state.version), worker=jobs.worker.at[new].set(w),
                valid=jobs.valid.at[new].set(True))
    queued = state.queued.at[w].add(1)
    in_flight = state.in_flight + 1
    popped = in_flight >= active_workers(state)
    slot = _earliest(jobs)
    staleness = state.version - jobs.version[slot]
    worker = jobs.worker[slot]
    arrival = Arrival(arrived=popped, worker=worker, staleness=staleness, time=jobs.finish[slot],
                      version=jobs.version[slot], slot=slot, new_slot=new)
    state = state._replace(
        time=jnp.where(popped, jobs.finish[slot], state.time), dispatched=state.dispatched + 1,
        arrivals=state.arrivals + popped.astype(jnp.int32),
        last_staleness=jnp.where(popped, staleness, state.last_staleness),
        last_worker=jnp.where(popped, worker, state.last_worker),
        in_flight=in_flight - popped.astype(jnp.int32), started=jnp.maximum(state.started, w + 1),
        queued=queued.at[worker].add(-popped.astype(jnp.int32)), busy_until=state.busy_until.at[w].set(finish),
        jobs=jobs._replace(valid=jobs.valid.at[slot].set(~popped)), key=key, assign_key=k_assign)
    return state, arrival


def _random_permutation(key, active, size) -> jax.Array:
    """A uniform permutation of ``0 .. active-1`` in the first ``active`` entries."""
    ids = jnp.arange(size)
    u = jnp.where(ids < active, jax.random.bits(key, (size,), jnp.uint32) >> 1, jnp.uint32(2 ** 31))
    return jnp.argsort(u, stable=True).astype(jnp.int32)


def record_step(state: EventState, stepped, assignment: str = "pure") -> EventState:
    """Counts a server step if ``stepped``, then picks the worker of the next job.

    Example:
        >>> from asgd_jax import events
        >>> s = events.init(2, timing=1.0)
        >>> for _ in range(3):
        ...     s, a = events.step(s)
        ...     s = events.record_step(s, a.arrived)
        >>> int(s.version), int(s.last_staleness), int(s.next_worker)
        (2, 1, 1)
    """
    state = state._replace(version=state.version + jnp.asarray(stepped).astype(jnp.int32))
    active = active_workers(state)
    perm, pos = state.perm, state.perm_pos
    ids = jnp.arange(perm.shape[0], dtype=jnp.int32)
    if assignment == "pure":
        idle = (ids < active) & (state.queued == 0)
        return state._replace(next_worker=jnp.argmax(idle).astype(jnp.int32))
    fill = state.started < active
    if assignment == "random":
        chosen = jax.random.randint(state.assign_key, (), 0, active, jnp.int32)
    elif assignment == "shuffle":
        new_window = (pos == 0) | (pos >= active)
        idx = jnp.where(new_window, 0, pos)
        fresh = _random_permutation(state.assign_key, active, perm.shape[0])
        perm = jnp.where(new_window & ~fill, fresh, perm)
        chosen = perm[idx]
        nxt = idx + 1
        pos = jnp.where(fill, pos, jnp.where(nxt >= active, 0, nxt))
    else:
        raise ValueError(f"unknown assignment {assignment!r}; choose one of {ASSIGNMENTS}.")
    return state._replace(
        next_worker=jnp.where(fill, state.started, chosen).astype(jnp.int32), perm=perm, perm_pos=pos)


def cancel(state: EventState, worker) -> tuple[EventState, jax.Array]:
    """Abandons every in-flight job of ``worker`` (an id, or a ``bool[P]`` mask of workers); it is free now.

    Returns the new state and a ``bool[P]`` mask of the cancelled slots (their
    gradients are void). The pool then holds fewer jobs than active workers, so
    the next :func:`step` only dispatches: give ``worker`` its new job by setting
    ``next_worker`` (``state._replace(next_worker=worker)``), which restarts it
    at the current version (Ringmaster's stop variant, a timed-out request resent).

    Example:
        >>> from asgd_jax import events
        >>> s, _ = events.step(events.init(2, timing=1.0))
        >>> s, mask = events.cancel(s, 0)
        >>> mask.tolist(), int(s.in_flight), int(s.queued[0])
        ([True, False], 0, 0)
    """
    jobs, who = state.jobs, jnp.asarray(worker)
    hit = who if who.dtype == bool else jnp.arange(state.queued.shape[0]) == who
    mask = jobs.valid & hit[jobs.worker]
    return state._replace(
        jobs=jobs._replace(valid=jobs.valid & ~mask, finish=jnp.where(mask, jnp.inf, jobs.finish)),
        in_flight=state.in_flight - jnp.sum(mask).astype(jnp.int32), queued=jnp.where(hit, 0, state.queued),
        busy_until=jnp.where(hit, state.time, state.busy_until)), mask
