r"""The asynchronous system as one optax transform (shared/DESIGN.md, "The event model").

:func:`asynchronous` wraps any optax optimizer (the *server* optimizer) in a
simulation of the system around it: ``n`` workers with their own compute-time
models (:mod:`asgd_jax.timing`), a pool of in-flight jobs on a simulated clock,
a rule that picks which worker gets the next job (AsGrad's pure, random and
shuffle rules) and a server rule deciding what to do with an arriving gradient
(apply it, compensate it, scale it, drop it, or accumulate it). Everything lives
in a :class:`SimState` of arrays, so a run is a ``lax.scan`` and a sweep is
``jit(vmap(train))``.

**One ``update`` call = one gradient computed.** The training loop asks
:func:`next_worker` which worker processes the job dispatched now, computes the
gradient at the current parameters on *that worker's* data and passes it to
``update``. The transform then

1. *dispatches* the job to worker ``j``: it finishes at
   ``max(now, busy_until[j]) + T`` with ``T`` drawn from ``j``'s compute-time
   model, and ``busy_until[j]`` moves to that time (a worker handed several jobs
   runs them in order, FIFO, without idling);
2. once the pool holds ``n`` jobs, *pops* the earliest finish (ties: earliest
   dispatched); the clock moves to its finish time and its staleness is
   ``version - job.version`` (``version`` = server steps taken so far);
3. applies the server rule through the inner optimizer; a step the server does
   not take emits zero updates and leaves the inner state untouched;
4. picks the worker of the next job.

The first ``n - 1`` calls only fill the pool (zero updates, time 0). With equal
fixed times and the pure rule this is exactly ``delayed(inner, n - 1)``.

:func:`simulate_staleness` runs the same event model without training (the Monte
Carlo of Jain et al.'s Figure 1).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from asgd_jax import timing as timing_lib

__all__ = [
    "SimState", "Jobs", "StalenessTrace", "asynchronous", "next_worker", "active_workers",
    "simulate_staleness", "ASSIGNMENTS", "SERVER_RULES", "COMPENSATIONS", "STALENESS_SCALINGS",
]

ASSIGNMENTS = ("pure", "random", "shuffle")
SERVER_RULES = ("async", "sync")
COMPENSATIONS = (None, "dc-c", "dc-a")
STALENESS_SCALINGS = (None, "adaptive", "inverse")
_INT_MAX = int(np.iinfo(np.int32).max)


class Jobs(NamedTuple):
    """The pool of in-flight jobs, one entry per slot (``max_workers`` slots).

    Attributes:
        finish: float32[P], simulated time at which the job finishes.
        seq: int32[P], dispatch index of the job (the tie-break: earliest first).
        version: int32[P], server version the job's gradient was computed at.
        worker: int32[P], worker processing the job.
        valid: bool[P], whether the slot holds an in-flight job.

    Example:
        >>> import jax.numpy as jnp, optax, asgd_jax
        >>> tx = asgd_jax.asynchronous(optax.sgd(0.1), workers=3, timing=2.0)
        >>> state = tx.init(jnp.zeros(2))
        >>> for _ in range(2):
        ...     _, state = tx.update(jnp.ones(2), state)
        >>> state.jobs.valid.tolist(), state.jobs.finish[:2].tolist()   # two jobs in flight
        ([True, True, False], [2.0, 2.0])
    """

    finish: jax.Array
    seq: jax.Array
    version: jax.Array
    worker: jax.Array
    valid: jax.Array


class SimState(NamedTuple):
    """State of :func:`asynchronous` (every field an array or a pytree of arrays).

    Attributes:
        time: float32, the simulated clock: finish time of the last arrival
            (0 during start-up).
        version: int32, server steps taken (updates applied) so far.
        dispatched: int32, jobs dispatched so far = ``update`` calls.
        arrivals: int32, jobs that have arrived at the server.
        discarded: int32, arrivals the server did not use: dropped as too stale
            (Ringmaster, Rennala) or cancelled (backup workers).
        last_staleness: int32, staleness of the last arrival (-1 before any).
        last_worker: int32, worker of the last arrival (-1 before any).
        next_worker: int32, worker that processes the job of the next ``update``
            call; compute the next gradient on this worker's data.
        in_flight: int32, jobs in the pool between calls (``async``), or the
            position in the current round (``sync``).
        started: int32, workers that have received their first job (workers
            start in id order).
        queued: int32[P], per worker: its jobs in flight (running or queued).
        busy_until: float32[P], per worker: when its last queued job finishes.
        jobs: :class:`Jobs`, the pool.
        perm: int32[P], the shuffle rule's current permutation of the workers.
        perm_pos: int32, position within ``perm``.
        key: PRNG key of the simulation (compute times, assignment draws).
        timing: the compute-time model (:mod:`asgd_jax.timing`), a pytree of arrays.
        hparams: dict of scalar arrays, the values a sweep may vary: ``workers``,
            ``initial_workers``, ``add_workers``, ``add_every``, ``max_staleness``,
            ``accumulate``, ``backup_workers`` and, when in use, ``clip_norm``,
            ``dc_lambda``, ``dc_momentum``, ``dc_eps``.
        grads: gradients of in-flight jobs, like the parameters with a leading
            axis of ``max_workers`` slots (``None`` for the ``sync`` rule).
        backups: parameters each in-flight job was computed at (``w_bak``), same
            layout; ``None`` unless compensation is on.
        acc: running sum of accepted gradients of the current step, like the
            parameters; ``None`` when the server applies every arrival.
        acc_count: int32, gradients in ``acc``.
        mean_square: DC-ASGD-a's ``MS``, like the parameters; ``None`` otherwise.
        inner_state: the wrapped optimizer's state; it moves only on server steps.

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

    time: jax.Array
    version: jax.Array
    dispatched: jax.Array
    arrivals: jax.Array
    discarded: jax.Array
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
    timing: Any
    hparams: dict
    grads: Any
    backups: Any
    acc: Any
    acc_count: jax.Array
    mean_square: Any
    inner_state: Any


class StalenessTrace(NamedTuple):
    """Per-arrival output of :func:`simulate_staleness` (arrays of length ``num_arrivals``).

    Attributes:
        staleness: int32, server steps between the job's dispatch and its arrival.
        worker: int32, worker that computed the arriving job.
        time: float32, simulated arrival time.

    Example:
        >>> import asgd_jax
        >>> trace = asgd_jax.simulate_staleness(3, 1.0, 6)
        >>> trace.staleness.tolist(), trace.worker.tolist()
        ([0, 1, 2, 2, 2, 2], [0, 1, 2, 0, 1, 2])
    """

    staleness: jax.Array
    worker: jax.Array
    time: jax.Array


# --- validation -----------------------------------------------------------------------------------


def _concrete(value):
    """``value`` as a NumPy array, or ``None`` if it is traced."""
    try:
        return np.asarray(value)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return None


def _check_int(name, value, minimum, maximum=None):
    """Checks a concrete scalar integer (traced values pass unchecked)."""
    c = _concrete(value)
    if c is None:
        return
    if c.shape != () or not np.issubdtype(c.dtype, np.integer):
        raise ValueError(f"{name} must be a scalar integer, got {value!r}.")
    if int(c) < minimum or (maximum is not None and int(c) > maximum):
        bound = f"in [{minimum}, {maximum}]" if maximum is not None else f">= {minimum}"
        raise ValueError(f"{name} must be {bound}, got {int(c)}.")


def _is_concrete_value(value, target) -> bool:
    c = _concrete(value)
    return c is not None and c.shape == () and c == target


def _workers_bound(workers, max_workers) -> int:
    if max_workers is not None:
        if isinstance(max_workers, bool) or int(max_workers) != max_workers or max_workers < 1:
            raise ValueError(f"max_workers must be a positive Python int, got {max_workers!r}.")
        max_workers = int(max_workers)
    c = _concrete(workers)
    if c is None:
        if max_workers is None:
            raise ValueError("a traced worker count needs a static bound; pass max_workers=<largest count>.")
        return max_workers
    if c.shape != () or not np.issubdtype(c.dtype, np.integer) or int(c) < 1:
        raise ValueError(f"workers must be a positive scalar integer, got {workers!r}.")
    if max_workers is None:
        return int(c)
    if int(c) > max_workers:
        raise ValueError(f"workers={int(c)} exceeds max_workers={max_workers}; raise max_workers.")
    return max_workers


def _as_key(key) -> jax.Array:
    """A typed PRNG key from an int seed, a typed key or a raw ``uint32[2]`` key."""
    key = jnp.asarray(key) if not isinstance(key, jax.Array) else key
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        return key
    if key.shape == () and jnp.issubdtype(key.dtype, jnp.integer):
        return jax.random.key(key)
    return jax.random.wrap_key_data(key.astype(jnp.uint32))


# --- the event model ------------------------------------------------------------------------------


def _active(hp, version) -> jax.Array:
    """Active workers after ``version`` server steps: ``min(n, n0 + add * floor(v / every))``."""
    grown = hp["initial_workers"] + hp["add_workers"] * (version // jnp.maximum(hp["add_every"], 1))
    return jnp.clip(grown, 1, hp["workers"])


def _earliest(jobs: Jobs) -> jax.Array:
    """Slot of the valid job with the earliest finish; ties: the earliest dispatched."""
    finish = jnp.where(jobs.valid, jobs.finish, jnp.inf)
    candidates = jobs.valid & (finish == jnp.min(finish))
    return jnp.argmin(jnp.where(candidates, jobs.seq, _INT_MAX)).astype(jnp.int32)


class _Arrival(NamedTuple):
    popped: jax.Array     # bool: a job arrived in this call
    slot: jax.Array       # its slot
    new_slot: jax.Array   # slot of the job dispatched in this call
    staleness: jax.Array
    worker: jax.Array


def _dispatch_and_pop(state: SimState, assignment: str) -> tuple[SimState, _Arrival, jax.Array]:
    """Event model, steps 1–2: dispatch the job of ``state.next_worker``, pop when the pool is full.

    Updates the pool, the worker clocks, the simulated time and the arrival
    counters; leaves ``version``, ``next_worker`` and the buffers alone. Returns
    the new state, the arrival and the key for the assignment draw. When nothing
    is random (fixed times, pure rule) the key is left as it is.
    """
    hp = state.hparams
    if assignment == "pure" and not state.timing.is_random:
        key = k_time = k_assign = state.key
    else:
        key, k_time, k_assign = jax.random.split(state.key, 3)
    w = state.next_worker
    jobs = state.jobs
    new = jnp.argmin(jobs.valid).astype(jnp.int32)  # first free slot
    duration = state.timing.sample(k_time, w, hp["workers"])
    finish = jnp.maximum(state.time, state.busy_until[w]) + duration
    jobs = Jobs(
        finish=jobs.finish.at[new].set(finish),
        seq=jobs.seq.at[new].set(state.dispatched),
        version=jobs.version.at[new].set(state.version),
        worker=jobs.worker.at[new].set(w),
        valid=jobs.valid.at[new].set(True))
    busy_until = state.busy_until.at[w].set(finish)
    queued = state.queued.at[w].add(1)
    in_flight = state.in_flight + 1
    popped = in_flight >= _active(hp, state.version)
    slot = _earliest(jobs)
    staleness = state.version - jobs.version[slot]
    worker = jobs.worker[slot]
    jobs = jobs._replace(valid=jobs.valid.at[slot].set(~popped))
    queued = queued.at[worker].add(-popped.astype(jnp.int32))
    state = state._replace(
        time=jnp.where(popped, jobs.finish[slot], state.time),
        dispatched=state.dispatched + 1,
        arrivals=state.arrivals + popped.astype(jnp.int32),
        last_staleness=jnp.where(popped, staleness, state.last_staleness),
        last_worker=jnp.where(popped, worker, state.last_worker),
        in_flight=in_flight - popped.astype(jnp.int32),
        started=jnp.maximum(state.started, w + 1), queued=queued,
        busy_until=busy_until, jobs=jobs, key=key)
    return state, _Arrival(popped, slot, new, staleness, worker), k_assign


def _random_permutation(key, active, size) -> jax.Array:
    """A uniform permutation of ``0 .. active-1`` in the first ``active`` entries."""
    ids = jnp.arange(size)
    u = jnp.where(ids < active, jax.random.bits(key, (size,), jnp.uint32) >> 1, jnp.uint32(2 ** 31))
    return jnp.argsort(u, stable=True).astype(jnp.int32)


def _assign_next(state: SimState, arrival: _Arrival, k_assign, assignment: str) -> SimState:
    """Event model, step 4: the worker of the next job (after the server rule moved ``version``).

    Pure: the lowest-id active worker with no job in flight (at start-up the
    workers in id order, in steady state the worker that just finished, after an
    introduction that worker and then the new ones). Random and shuffle: workers
    not started yet first, in id order (start-up, introductions); then random,
    uniform over active workers; shuffle, ``perm[pos]`` with a fresh permutation
    every ``active`` rule-based dispatches.
    """
    active = _active(state.hparams, state.version)
    perm, pos = state.perm, state.perm_pos
    ids = jnp.arange(perm.shape[0], dtype=jnp.int32)
    if assignment == "pure":
        idle = (ids < active) & (state.queued == 0)
        return state._replace(next_worker=jnp.argmax(idle).astype(jnp.int32))
    fill = state.started < active
    if assignment == "random":
        chosen = jax.random.randint(k_assign, (), 0, active, jnp.int32)
    else:  # shuffle
        new_window = (pos == 0) | (pos >= active)
        idx = jnp.where(new_window, 0, pos)
        fresh = _random_permutation(k_assign, active, perm.shape[0])
        perm = jnp.where(new_window & ~fill, fresh, perm)
        chosen = perm[idx]
        nxt = idx + 1
        pos = jnp.where(fill, pos, jnp.where(nxt >= active, 0, nxt))
    return state._replace(
        next_worker=jnp.where(fill, state.started, chosen).astype(jnp.int32), perm=perm, perm_pos=pos)


# --- the transform --------------------------------------------------------------------------------


def _select(flag, new, old):
    return jax.tree.map(lambda a, b: jnp.where(flag, a, b), new, old)


def _write_then_read(buffer, tree, write, read):
    """Writes ``tree`` into slot ``write`` of a slot buffer, then reads slot ``read``: O(params) work.

    Reading *after* writing (the new job may itself be the one read) lets XLA
    update the buffer in place; reading the old buffer before the write made
    XLA:CPU copy every slot on every step.
    """
    buffer = jax.tree.map(
        lambda b, x: jax.lax.dynamic_update_index_in_dim(b, x.astype(b.dtype), write, 0), buffer, tree)
    return buffer, jax.tree.map(lambda b: jax.lax.dynamic_index_in_dim(b, read, keepdims=False), buffer)


def _clip(tree, clip_norm):
    norm = optax.tree.norm(tree)
    factor = jnp.where(norm > clip_norm, clip_norm / jnp.where(norm > 0, norm, 1.0), 1.0)
    return jax.tree.map(lambda g: (g * factor).astype(g.dtype), tree)


def _scale_factor(scaling, staleness, active):
    tau = staleness.astype(jnp.float32)
    if scaling is None:
        return None
    if scaling == "adaptive":
        return jnp.minimum(1.0, active.astype(jnp.float32) / jnp.maximum(tau, 1.0))
    if scaling == "inverse":
        return 1.0 / jnp.maximum(tau, 1.0)
    return jnp.asarray(scaling(staleness), jnp.float32)


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

    **Server rule ``"async"``** (ASGD, Downpour, DC-ASGD, Ringmaster, Rennala,
    Aji & Heafield). The arriving gradient is transformed, in this order:

    1. compensation (DC-ASGD, Zheng et al. 2017), with :math:`w` the current
       parameters and :math:`w_{bak}` those the job was computed at:
       :math:`\tilde g = g + \lambda_t \odot g \odot g \odot (w - w_{bak})`, where
       ``"dc-c"``: :math:`\lambda_t = \lambda` (default 0.04); ``"dc-a"``:
       :math:`MS \leftarrow \mu MS + (1-\mu) g^2`,
       :math:`\lambda_t = \lambda_0 / \sqrt{MS + \epsilon}` elementwise (default
       :math:`\lambda_0 = 2`, :math:`\mu = 0.95`, :math:`\epsilon = 10^{-7}`).
       **(choice)** One backup per in-flight job, as in the paper (not MXNet's
       single copy); ``MS`` is updated with the arriving gradient *before*
       :math:`\lambda_t` is computed, and only for arrivals the server uses.
    2. clipping to global norm ``clip_norm``: :math:`g \leftarrow g \min(1, c/\|g\|)`.
    3. staleness scaling: :math:`g \leftarrow s(\tau) g` with ``"adaptive"``
       :math:`s = \min(1, n/\tau)` (Mishchenko et al. 2022; :math:`n` = active
       workers), ``"inverse"`` :math:`s = 1/\max(\tau, 1)`, or a callable
       ``s(tau)``. **(choice)** The gradient handed to ``inner`` is scaled, which
       for (momentum) SGD is the delay-adaptive step size; adaptive optimizers
       such as Adam largely undo a gradient scale.
    4. dropping: arrivals with :math:`\tau >` ``max_staleness`` (:math:`R`) are
       ignored (Ringmaster ASGD); their worker still gets a new job.
    5. accumulation: the server sums accepted arrivals and steps with their
       average once ``accumulate`` (:math:`k`) of them arrived:
       :math:`\text{inner}(\frac1k\sum_{i=1}^k g_i)` (Aji & Heafield 2019).
       ``k = 1`` applies every arrival (ASGD).

    Rennala SGD (Tyurin & Richtárik 2023) is ``max_staleness=0,
    accumulate=S`` with the pure rule: workers restart at the current version,
    the server steps on the average of ``S`` gradients computed at it, and older
    gradients are discarded.

    **Server rule ``"sync"``** (SSGD with a barrier; backup workers, Chen et al.
    2017). Calls come in rounds of :math:`M` = active workers; call ``p`` of a
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
        2025 (Ringmaster). See shared/PAPERS.md.
    """
    if assignment not in ASSIGNMENTS:
        raise ValueError(f"unknown assignment {assignment!r}; choose one of {ASSIGNMENTS}.")
    if server_rule not in SERVER_RULES:
        raise ValueError(f"unknown server_rule {server_rule!r}; choose one of {SERVER_RULES}.")
    if compensation not in COMPENSATIONS:
        raise ValueError(f"unknown compensation {compensation!r}; choose one of {COMPENSATIONS}.")
    if not (staleness_scaling in STALENESS_SCALINGS or callable(staleness_scaling)):
        raise ValueError(f"unknown staleness_scaling {staleness_scaling!r}; choose one of "
                         f"{STALENESS_SCALINGS} or pass a function of the staleness.")
    if server_rule == "sync":
        unused = {"compensation": compensation is not None,
                  "staleness_scaling": staleness_scaling is not None,
                  "max_staleness": max_staleness is not None,
                  "accumulate": not _is_concrete_value(accumulate, 1)}
        bad = [name for name, flag in unused.items() if flag]
        if bad:
            raise ValueError(f"{', '.join(bad)} has no effect with server_rule='sync' (every gradient has "
                             f"staleness 0 and a round averages its first N); drop it or use server_rule='async'.")
    elif not _is_concrete_value(backup_workers, 0):
        raise ValueError("backup_workers needs server_rule='sync'.")
    size = _workers_bound(workers, max_workers)
    _check_int("accumulate", accumulate, 1)
    _check_int("backup_workers", backup_workers, 0)
    _check_int("add_workers", add_workers, 0)
    _check_int("add_every", add_every, 1)
    if max_staleness is not None:
        _check_int("max_staleness", max_staleness, 0)
    if initial_workers is not None:
        _check_int("initial_workers", initial_workers, 1)
    model = timing_lib.as_timing(timing)
    if dc_lambda is None:
        dc_lambda = 2.0 if compensation == "dc-a" else 0.04
    inner = optax.with_extra_args_support(inner)
    accumulating = server_rule == "sync" or not _is_concrete_value(accumulate, 1)

    def init_fn(params):
        # Fresh arrays for every leaf (copies of the caller's arrays), so the state can be donated.
        i32 = lambda x: jnp.array(x, jnp.int32)
        f32 = lambda x: jnp.array(x, jnp.float32)
        n = jnp.clip(i32(workers), 1, size)
        hparams = {
            "workers": n,
            "initial_workers": jnp.array(n) if initial_workers is None else i32(initial_workers),
            "add_workers": i32(add_workers),
            "add_every": i32(add_every),
            "max_staleness": i32(_INT_MAX if max_staleness is None else max_staleness),
            "accumulate": i32(accumulate),
            "backup_workers": i32(backup_workers),
        }
        if clip_norm is not None:
            hparams["clip_norm"] = f32(clip_norm)
        if compensation is not None:
            hparams["dc_lambda"] = f32(dc_lambda)
        if compensation == "dc-a":
            hparams["dc_momentum"] = f32(dc_momentum)
            hparams["dc_eps"] = f32(dc_eps)
        slots = lambda: jax.tree.map(
            lambda p: jnp.zeros((size,) + jnp.shape(p), jnp.result_type(p)), params)
        like = lambda: jax.tree.map(lambda p: jnp.zeros(jnp.shape(p), jnp.result_type(p)), params)
        zero = lambda: jnp.zeros([], jnp.int32)
        return SimState(
            time=jnp.zeros([], jnp.float32), version=zero(), dispatched=zero(), arrivals=zero(),
            discarded=zero(), last_staleness=i32(-1), last_worker=i32(-1), next_worker=zero(),
            in_flight=zero(), started=zero(), queued=jnp.zeros([size], jnp.int32),
            busy_until=jnp.zeros([size], jnp.float32),
            jobs=Jobs(finish=jnp.full([size], jnp.inf, jnp.float32), seq=jnp.zeros([size], jnp.int32),
                      version=jnp.zeros([size], jnp.int32), worker=jnp.zeros([size], jnp.int32),
                      valid=jnp.zeros([size], bool)),
            perm=jnp.arange(size, dtype=jnp.int32), perm_pos=zero(), key=jnp.copy(_as_key(key)),
            timing=jax.tree.map(f32, model), hparams=hparams,
            grads=slots() if server_rule == "async" else None,
            backups=slots() if compensation is not None else None,
            acc=like() if accumulating else None, acc_count=zero(),
            mean_square=like() if compensation == "dc-a" else None,
            inner_state=inner.init(params))

    def async_update(updates, state: SimState, params=None, **extra_args):
        hp = state.hparams
        version = state.version
        state, arrival, k_assign = _dispatch_and_pop(state, assignment)
        popped, slot, new = arrival.popped, arrival.slot, arrival.new_slot
        # Store the new job's gradient, then read the arriving job's (possibly the new one).
        grads_buffer, g = _write_then_read(state.grads, updates, new, slot)
        backups, mean_square = state.backups, state.mean_square
        used = popped & (arrival.staleness <= hp["max_staleness"])
        if backups is not None:
            if params is None:
                raise ValueError("compensation (DC-ASGD) needs params: call update(grads, state, params).")
            backups, w_bak = _write_then_read(backups, params, new, slot)
            if mean_square is not None:
                mu, eps = hp["dc_momentum"], hp["dc_eps"]
                new_ms = jax.tree.map(lambda m, x: mu * m + (1 - mu) * x * x, mean_square, g)
                lam = jax.tree.map(lambda m: hp["dc_lambda"] / jnp.sqrt(m + eps), new_ms)
                mean_square = _select(used, new_ms, mean_square)
            else:
                lam = jax.tree.map(lambda x: hp["dc_lambda"], g)
            g = jax.tree.map(lambda x, l, w, b: (x + l * x * x * (w - b)).astype(x.dtype),
                             g, lam, params, w_bak)
        if "clip_norm" in hp:
            g = _clip(g, hp["clip_norm"])
        factor = _scale_factor(staleness_scaling, arrival.staleness, _active(hp, version))
        if factor is not None:
            g = jax.tree.map(lambda x: (x * factor).astype(x.dtype), g)
        acc, acc_count = state.acc, state.acc_count
        if acc is None:
            apply, step_grads = used, g
        else:
            acc = jax.tree.map(lambda a, x: a + jnp.where(used, x, 0).astype(a.dtype), acc, g)
            acc_count = acc_count + used.astype(jnp.int32)
            apply = used & (acc_count >= hp["accumulate"])
            inv = 1.0 / jnp.maximum(acc_count, 1).astype(jnp.float32)
            step_grads = jax.tree.map(lambda a: (a * inv).astype(a.dtype), acc)
            acc = jax.tree.map(lambda a: jnp.where(apply, jnp.zeros_like(a), a), acc)
            acc_count = jnp.where(apply, 0, acc_count)
        new_updates, new_inner = inner.update(step_grads, state.inner_state, params, **extra_args)
        state = state._replace(
            version=version + apply.astype(jnp.int32),
            discarded=state.discarded + (popped & ~used).astype(jnp.int32),
            grads=grads_buffer, backups=backups, acc=acc, acc_count=acc_count,
            mean_square=mean_square, inner_state=_select(apply, new_inner, state.inner_state))
        state = _assign_next(state, arrival, k_assign, assignment)
        return jax.tree.map(lambda u: jnp.where(apply, u, jnp.zeros_like(u)), new_updates), state

    def sync_update(updates, state: SimState, params=None, **extra_args):
        hp = state.hparams
        key, k_time = jax.random.split(state.key) if state.timing.is_random else (state.key, state.key)
        ids = jnp.arange(size, dtype=jnp.int32)
        rounds = _active(hp, state.version)                 # M workers this round
        used_n = rounds - jnp.clip(hp["backup_workers"], 0, rounds - 1)   # N
        p = state.in_flight                                  # position in the round = worker
        start = p == 0
        drawn = state.time + state.timing.sample(k_time, ids, hp["workers"])
        finish = jnp.where(start, jnp.where(ids < rounds, drawn, jnp.inf), state.jobs.finish)
        order = jnp.argsort(finish, stable=True).astype(jnp.int32)   # ties: lower worker id
        rank = jnp.argmax(order == p)
        winner = rank < used_n
        g = updates
        if "clip_norm" in hp:
            g = _clip(g, hp["clip_norm"])
        acc = jax.tree.map(lambda a, x: a + jnp.where(winner, x, 0).astype(a.dtype), state.acc, g)
        barrier = p >= rounds - 1
        inv = 1.0 / used_n.astype(jnp.float32)
        step_grads = jax.tree.map(lambda a: (a * inv).astype(a.dtype), acc)
        new_updates, new_inner = inner.update(step_grads, state.inner_state, params, **extra_args)
        last = order[used_n - 1]
        now = jnp.where(barrier, finish[last], state.time)
        zero = jnp.zeros([], jnp.int32)
        jobs = Jobs(finish=finish, seq=jnp.where(start, state.dispatched + ids, state.jobs.seq),
                    version=jnp.full([size], state.version, jnp.int32), worker=ids,
                    valid=(ids <= p) & (ids < rounds) & ~barrier)
        state = state._replace(
            time=now, version=state.version + barrier.astype(jnp.int32),
            dispatched=state.dispatched + 1,
            arrivals=state.arrivals + jnp.where(barrier, used_n, zero),
            discarded=state.discarded + jnp.where(barrier, rounds - used_n, zero),
            last_staleness=jnp.where(barrier, zero, state.last_staleness),
            last_worker=jnp.where(barrier, last, state.last_worker),
            next_worker=jnp.where(barrier, zero, p + 1),
            in_flight=jnp.where(barrier, zero, p + 1),
            busy_until=jnp.where(barrier, now, jnp.where(ids == p, finish, state.busy_until)),
            jobs=jobs, key=key,
            acc=jax.tree.map(lambda a: jnp.where(barrier, jnp.zeros_like(a), a), acc),
            acc_count=jnp.where(barrier, zero, state.acc_count + winner.astype(jnp.int32)),
            inner_state=_select(barrier, new_inner, state.inner_state))
        return jax.tree.map(lambda u: jnp.where(barrier, u, jnp.zeros_like(u)), new_updates), state

    update_fn = async_update if server_rule == "async" else sync_update
    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _find_state(state) -> SimState:
    if isinstance(state, SimState):
        return state
    children = state.values() if isinstance(state, dict) else state if isinstance(state, (tuple, list)) else ()
    found = [s for s in (_find_state_or_none(c) for c in children) if s is not None]
    if len(found) != 1:
        raise ValueError(f"expected exactly one SimState inside the optimizer state, found {len(found)}.")
    return found[0]


def _find_state_or_none(state):
    try:
        return _find_state(state)
    except ValueError:
        return None


def next_worker(state) -> jax.Array:
    """The worker whose data the next ``update`` call's gradient must be computed on.

    Reads :attr:`SimState.next_worker` from the state of :func:`asynchronous`,
    also when that transform is nested in a chain (``optax.chain``, tuples,
    dicts). An int32 scalar: index the worker's data shard with it (works under
    ``jit`` and ``vmap``).

    Example:
        >>> import jax.numpy as jnp, optax, asgd_jax
        >>> tx = optax.chain(optax.clip(1.0), asgd_jax.asynchronous(optax.sgd(0.1), workers=2))
        >>> state = tx.init(jnp.zeros(3))
        >>> int(asgd_jax.next_worker(state))
        0
    """
    return _find_state(state).next_worker


def active_workers(state) -> jax.Array:
    r"""Workers active after the server steps taken so far: :math:`\min(n, n_0 + a\lfloor v/e\rfloor)`.

    Example:
        >>> import jax.numpy as jnp, optax, asgd_jax
        >>> tx = asgd_jax.asynchronous(optax.sgd(0.1), workers=4, initial_workers=1, add_every=10)
        >>> int(asgd_jax.active_workers(tx.init(jnp.zeros(3))))
        1
    """
    state = _find_state(state)
    return _active(state.hparams, state.version)


def simulate_staleness(
    workers: int | jax.Array,
    timing: timing_lib.TimingModel | float,
    num_arrivals: int,
    *,
    key: int | jax.Array = 0,
    assignment: str = "pure",
    max_workers: int | None = None,
) -> StalenessTrace:
    r"""Runs only the event model and returns the staleness of every arrival.

    The system of :func:`asynchronous` with the ``"async"`` server rule applying
    every arrival (so the version counts arrivals): ``n`` workers with compute
    times from ``timing``, start-up fill of ``n - 1`` dispatches, then one
    dispatch and one arrival per step. With the same ``key``, ``assignment`` and
    ``timing`` the trace is exactly what :func:`asynchronous` would see. With
    ``timing=normal(1, 0.2)`` and the pure rule this is Jain et al.'s Monte Carlo
    (shared/PAPERS.md §1, Figure 1): staleness centred at ``n - 1``.

    Args:
        workers: number of workers ``n`` (traced if ``max_workers`` is given).
        timing: compute-time model or a number (fixed time).
        num_arrivals: static number of arrivals to record.
        key: PRNG key or int seed.
        assignment: ``"pure"``, ``"random"`` or ``"shuffle"``.
        max_workers: static bound on ``workers``.

    Returns:
        A :class:`StalenessTrace` of arrays of length ``num_arrivals``. Jit- and
        vmap-compatible (e.g. vmap over keys for a Monte Carlo).

    Example:
        >>> import asgd_jax
        >>> from asgd_jax import timing
        >>> trace = asgd_jax.simulate_staleness(8, timing.normal(1.0, 0.2), 2000, key=0)
        >>> round(float(trace.staleness[100:].mean()))     # about n - 1
        7
        >>> trace.worker.shape, trace.time.dtype
        ((2000,), dtype('float32'))
    """
    if assignment not in ASSIGNMENTS:
        raise ValueError(f"unknown assignment {assignment!r}; choose one of {ASSIGNMENTS}.")
    if isinstance(num_arrivals, bool) or int(num_arrivals) != num_arrivals or num_arrivals < 1:
        raise ValueError(f"num_arrivals must be a positive Python int, got {num_arrivals!r}.")
    size = _workers_bound(workers, max_workers)
    state = asynchronous(optax.identity(), workers, timing=timing, assignment=assignment,
                         max_workers=size, key=key).init(jnp.zeros([0]))
    state = state._replace(grads=None)

    def step(s, _):
        s, arrival, k_assign = _dispatch_and_pop(s, assignment)
        s = s._replace(version=s.version + arrival.popped.astype(jnp.int32))
        s = _assign_next(s, arrival, k_assign, assignment)
        return s, (arrival.staleness, arrival.worker, s.time)

    length = size - 1 + int(num_arrivals)
    _, (staleness, worker, times) = jax.lax.scan(step, state, None, length=length)
    first = state.hparams["workers"] - 1
    cut = lambda x: jax.lax.dynamic_slice_in_dim(x, first, int(num_arrivals))
    return StalenessTrace(staleness=cut(staleness), worker=cut(worker), time=cut(times))
