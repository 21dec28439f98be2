r"""Sandblaster L-BFGS (Dean et al. 2012): batch L-BFGS whose gradients come from load-balanced replicas.

A **coordinator** runs batch L-BFGS. Every evaluation of the batch loss and
gradient is cut into :math:`P` *portions* (:math:`P \gg N`, the number of model
replicas); the batch gradient is the sum of the portions' gradients, so the
numbers are those of the batch gradient and the portions only decide how long
the evaluation takes (:func:`schedule`):

* **Load balancing.** Portions are handed out in order, each to the replica that
  is free first (ties: the lowest replica id); replica :math:`r` computes portion
  :math:`p` in :math:`T_{pr} = w_p \cdot s_{pr}`, the portion's work :math:`w_p`
  times a draw :math:`s_{pr}` of the replica's time per unit of work (its speed
  factor, or an :mod:`asgd_jax.timing` model). Fast replicas do more portions.
* **Backup tasks.** Once no portion is left to hand out, a replica that goes idle
  while some portion is unfinished takes a duplicate of the unfinished portion
  whose expected finish is the latest (ties: the lowest portion id); the first
  copy to finish wins and the other copies of that portion are cancelled (their
  replicas go idle at that moment and may take another backup).
* **Baseline** (:func:`fixed_split`): the batch split once into :math:`N` equal
  shares, no backups: the evaluation lasts as long as the slowest share.

The time of one L-BFGS iteration (:func:`lbfgs_iteration`) is the makespan of
every loss-and-gradient evaluation the iteration makes (the line search's
included) plus the coordinator's cost: its vector operations run on the
parameter shards as small commands, each costing ``vector_op_time``.
:func:`minimize` runs the coordinator on a fixed objective (full batch) and
:func:`make_sandblaster_train` on a model and a data set, batch after batch.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from asgd_jax import _checks
from asgd_jax import timing as timing_lib

__all__ = ["Schedule", "Cluster", "Record", "portion_work", "portion_times", "schedule_times", "schedule",
           "fixed_split", "cluster", "lbfgs", "vector_ops", "lbfgs_iteration", "minimize", "SANDBLASTER_HPARAMS",
           "make_sandblaster_train"]

# Hyperparameters of :func:`make_sandblaster_train`'s ``train`` (traced), with defaults: the compute-time
# law's location and spread, the stragglers (as in :func:`asgd_jax.train.make_timing`) and the
# coordinator's time per vector operation.
SANDBLASTER_HPARAMS: dict[str, float] = {"time_mean": 1.0, "time_spread": 0.0, "straggler_fraction": 0.0,
                                         "straggler_slowdown": 1.0, "vector_op_time": 1e-4}


class Schedule(NamedTuple):
    """One batch evaluation on the replicas (:func:`schedule_times`).

    Attributes:
        makespan: float32, when the last portion's first result arrives.
        finish: float32 ``[P]``, when each portion's first result arrives.
        winner: int32 ``[P]``, the replica whose copy of each portion finished first.
        backups: int32, the backup tasks issued (duplicates, winning or not).
    """

    makespan: jax.Array
    finish: jax.Array
    winner: jax.Array
    backups: jax.Array


def _check_work(work) -> None:
    c = _checks.concrete(work)
    if c is not None and np.ndim(c) != 1:
        raise ValueError(f"portion work must be a 1-D array (one entry per portion), got shape {np.shape(c)}.")
    _checks.check_number("portion work", work, positive=True)


def _check_sizes(portions: int, replicas) -> int:
    if isinstance(replicas, bool) or not isinstance(replicas, (int, np.integer)) or replicas < 1:
        raise ValueError(f"replicas must be a Python int >= 1, got {replicas!r}.")
    if portions < replicas:
        raise ValueError(f"{portions} portions for {replicas} replicas: use at least as many portions as replicas.")
    return int(replicas)


def portion_work(batch_size: int, portions: int) -> np.ndarray:
    """Each portion's share of a batch of ``batch_size`` examples cut into ``portions`` near-equal parts.

    Portion :math:`p` holds :math:`n_p` examples (``np.array_split`` sizes) and its work is
    :math:`w_p = n_p / B`, so the works sum to 1: a replica of time per unit of work :math:`s`
    would take :math:`s` for the whole batch.

    Example:
        >>> from asgd_jax.sandblaster import portion_work
        >>> portion_work(10, 4).tolist()
        [0.3, 0.3, 0.2, 0.2]
    """
    _checks.python_int("batch_size", batch_size, 1)
    _checks.python_int("portions", portions, 1)
    if portions > batch_size:
        raise ValueError(f"{portions} portions of a batch of {batch_size}: use at most one portion per example.")
    sizes = np.array([len(a) for a in np.array_split(np.arange(batch_size), portions)], np.float64)
    return sizes / batch_size


def portion_times(work, timing, *, replicas: int | None = None, key=None) -> tuple[jax.Array, jax.Array]:
    r"""The time :math:`T_{pr} = w_p s_{pr}` of every (portion, replica) pair, and its expectation.

    Args:
        work: positive ``[P]`` work of each portion.
        timing: per-replica times per unit of work (a positive ``[N]`` array, the
            speed factors: :math:`s_{pr} = s_r`), or an :mod:`asgd_jax.timing` model
            (:math:`s_{pr}` = an independent draw for replica ``r`` of ``replicas``).
        replicas: :math:`N` (required with a model; with an array, its length).
        key: PRNG key of a random model's draws.

    Returns:
        ``(times, expected)``, float32 ``[P, N]``; ``expected`` uses the model's mean.

    Example:
        >>> import jax.numpy as jnp
        >>> from asgd_jax.sandblaster import portion_times
        >>> t, e = portion_times(jnp.array([1.0, 2.0]), jnp.array([1.0, 3.0]))
        >>> t.tolist()
        [[1.0, 3.0], [2.0, 6.0]]
    """
    _check_work(work)
    work = jnp.asarray(work, jnp.float32)
    if not isinstance(timing, timing_lib.TimingModel):
        _checks.check_number("replica speed factors", timing, positive=True)
        speeds = jnp.asarray(timing, jnp.float32)
        if speeds.ndim != 1:
            raise ValueError("replica speed factors must be a 1-D array (one per replica), or pass a timing model.")
        _check_sizes(work.shape[0], speeds.shape[0])
        times = work[:, None] * speeds[None, :]
        return times, times
    if replicas is None:
        raise ValueError("a timing model needs replicas=<number of replicas>.")
    n = _check_sizes(work.shape[0], replicas)
    ids = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), (work.shape[0], n))
    if timing.is_random and key is None:
        raise ValueError("a random timing model needs key=<PRNG key>.")
    draws = timing.sample(_checks.as_key(key) if timing.is_random else None, ids, n)
    return work[:, None] * draws, work[:, None] * timing.expected(ids, n)


class _Loop(NamedTuple):
    next_portion: jax.Array  # int32: the next portion to hand out (P: all handed out)
    copy_finish: jax.Array  # float32 [N]: when each replica's current copy would finish
    holding: jax.Array  # int32 [N]: the portion each replica computes (-1: none yet)
    retired: jax.Array  # bool [N]: idle for good (nothing left to do)
    best: jax.Array  # float32 [P]: first-result time of each portion (inf: not handed out)
    estimate: jax.Array  # float32 [P]: the coordinator's expected first-result time
    winner: jax.Array  # int32 [P]
    backups: jax.Array  # int32


def _free_at(s: _Loop) -> jax.Array:
    """When each replica goes idle: its copy finishes, or another copy of its portion finishes first."""
    other = jnp.where(s.holding >= 0, s.best[jnp.maximum(s.holding, 0)], jnp.inf)
    return jnp.where(s.retired, jnp.inf, jnp.minimum(s.copy_finish, other))


def _event(times, expected, use_backups: bool, s: _Loop) -> _Loop:
    """The replica that goes idle first (ties: lowest id) takes the next portion, a backup, or retires."""
    P = times.shape[0]
    free = _free_at(s)
    r = jnp.argmin(free)
    now = free[r]
    fresh = s.next_portion < P
    unfinished = s.best > now
    latest = jnp.argmax(jnp.where(unfinished, s.estimate, -jnp.inf))  # ties: the lowest portion id
    backup = ~fresh & jnp.any(unfinished) & use_backups
    issue = fresh | backup
    q = jnp.where(fresh, s.next_portion, latest)
    done, expect = now + times[q, r], now + expected[q, r]
    wins = issue & (done < s.best[q])  # a later copy wins only if strictly earlier
    return _Loop(
        next_portion=s.next_portion + fresh.astype(jnp.int32),
        copy_finish=s.copy_finish.at[r].set(jnp.where(issue, done, s.copy_finish[r])),
        holding=s.holding.at[r].set(jnp.where(issue, q, s.holding[r])),
        retired=s.retired.at[r].set(~issue),
        best=s.best.at[q].set(jnp.where(wins, done, s.best[q])),
        estimate=s.estimate.at[q].set(jnp.where(issue, jnp.minimum(expect, s.estimate[q]), s.estimate[q])),
        winner=s.winner.at[q].set(jnp.where(wins, r, s.winner[q]).astype(jnp.int32)),
        backups=s.backups + backup.astype(jnp.int32),
    )


def schedule_times(times, expected=None, *, backups: bool = True) -> Schedule:
    r"""Load balancing with backup tasks on a given time matrix (the rules of the module docstring).

    An event loop (``lax.while_loop``; jit- and vmap-able): the replica that goes
    idle first (ties: lowest id) takes the next portion (portions in order
    :math:`0, 1, \dots`); once all are handed out it takes, with ``backups``, a
    duplicate of the unfinished portion of latest expected finish
    (:math:`\min` over the portion's copies of start + ``expected``; ties: lowest
    portion id), or, when none is unfinished (or without backups), stays idle.
    A copy finishing at :math:`c` wins when :math:`c` is strictly earlier than
    every earlier copy; a replica whose portion's first result arrives goes
    idle then. Makespan :math:`= \max_p` (first result of :math:`p`).

    Args:
        times: float ``[P, N]``, the time replica ``r`` needs for portion ``p``.
        expected: the coordinator's expected times (default: ``times``, it knows them).
        backups: issue backup tasks (static).

    Returns:
        A :class:`Schedule`.

    Example:
        >>> import jax.numpy as jnp
        >>> from asgd_jax.sandblaster import schedule_times
        >>> t = jnp.array([[1.0, 4.0], [1.0, 4.0], [1.0, 4.0]])   # replica 1 is 4x slower
        >>> s = schedule_times(t, backups=False)   # r0: p0 [0,1], p2 [1,2]; r1: p1 [0,4]
        >>> float(s.makespan), s.winner.tolist()
        (4.0, [0, 1, 0])
        >>> s = schedule_times(t)                  # r0 idle at 2 backs up p1: done at 3
        >>> float(s.makespan), s.winner.tolist(), int(s.backups)
        (3.0, [0, 0, 0], 1)
    """
    times = jnp.asarray(times, jnp.float32)
    expected = times if expected is None else jnp.asarray(expected, jnp.float32)
    if times.ndim != 2 or expected.shape != times.shape:
        raise ValueError(f"times must be [portions, replicas] (and expected alike), got {times.shape}.")
    P, N = times.shape
    _check_sizes(P, N)
    s = _Loop(jnp.int32(0), jnp.zeros([N], jnp.float32), jnp.full([N], -1, jnp.int32), jnp.zeros([N], bool),
              jnp.full([P], jnp.inf, jnp.float32), jnp.full([P], jnp.inf, jnp.float32),
              jnp.full([P], -1, jnp.int32), jnp.int32(0))
    s = jax.lax.while_loop(lambda s: ~jnp.all(s.retired), lambda s: _event(times, expected, backups, s), s)
    return Schedule(makespan=jnp.max(s.best), finish=s.best, winner=s.winner, backups=s.backups)


def schedule(work, timing, *, replicas: int | None = None, key=None, backups: bool = True) -> Schedule:
    r"""One batch evaluation: portions of work ``work`` load-balanced over the replicas, with backup tasks.

    :func:`portion_times` then :func:`schedule_times` (whose docstring gives the rules).

    Args:
        work: positive ``[P]`` work of each portion (e.g. :func:`portion_work`), :math:`P \ge N`.
        timing: per-replica speed factors ``[N]`` or an :mod:`asgd_jax.timing` model.
        replicas: :math:`N` (with a model).
        key: PRNG key of a random model.
        backups: issue backup tasks (static).

    Returns:
        A :class:`Schedule`.

    Example:
        >>> import jax.numpy as jnp
        >>> from asgd_jax.sandblaster import schedule
        >>> s = schedule(jnp.ones(5), jnp.array([1.0, 2.0]), backups=False)
        >>> float(s.makespan), s.winner.tolist()   # r0: p0 [0,1], p2 [1,2], p3 [2,3]; r1: p1 [0,2], p4 [2,4]
        (4.0, [0, 1, 0, 0, 1])
    """
    times, expected = portion_times(work, timing, replicas=replicas, key=key)
    return schedule_times(times, expected, backups=backups)


def fixed_split(work, timing, *, replicas: int | None = None, key=None) -> jax.Array:
    r"""Makespan of the baseline: the portions split once into :math:`N` contiguous near-equal groups, no backups.

    Replica :math:`r` computes group :math:`G_r` (``np.array_split`` of the portions) alone:
    makespan :math:`= \max_r \sum_{p \in G_r} T_{pr}` (the slowest replica's share).

    Example:
        >>> import jax.numpy as jnp
        >>> from asgd_jax.sandblaster import fixed_split
        >>> float(fixed_split(jnp.ones(6), jnp.array([1.0, 1.0, 3.0])))   # 2 portions each, 3x slower
        6.0
    """
    times, _ = portion_times(work, timing, replicas=replicas, key=key)
    P, N = times.shape
    group = np.concatenate([np.full(len(g), i) for i, g in enumerate(np.array_split(np.arange(P), N))])
    mine = jnp.asarray(group)[:, None] == jnp.arange(N)[None, :]
    return jnp.max(jnp.sum(jnp.where(mine, times, 0.0), axis=0))


def _pytree_dataclass(meta):
    def wrap(cls):
        cls = dataclasses.dataclass(frozen=True)(cls)
        data = [f.name for f in dataclasses.fields(cls) if f.name not in meta]
        return jax.tree_util.register_dataclass(cls, data_fields=data, meta_fields=list(meta))
    return wrap


@_pytree_dataclass(meta=("replicas", "backups"))
class Cluster:
    """The simulated machines of Sandblaster (a pytree; build with :func:`cluster`).

    Attributes:
        work: float32 ``[P]``, each portion's work.
        timing: the replicas' times per unit of work (an :mod:`asgd_jax.timing` model).
        vector_op_time: float32, the coordinator's time per vector operation.
        replicas: :math:`N` (static).
        backups: whether backup tasks are issued (static).
    """

    work: Any
    timing: Any
    vector_op_time: Any
    replicas: int
    backups: bool

    def evaluation_times(self, key, count: int) -> tuple[jax.Array, jax.Array]:
        """Makespans and backup counts of ``count`` evaluations (independent draws for a random model)."""
        if not self.timing.is_random:
            s = schedule(self.work, self.timing, replicas=self.replicas, backups=self.backups)
            return jnp.full([count], s.makespan), jnp.full([count], s.backups)
        keys = jax.random.split(_checks.as_key(key), count)
        s = jax.vmap(lambda k: schedule(self.work, self.timing, replicas=self.replicas, key=k,
                                        backups=self.backups))(keys)
        return s.makespan, s.backups


def cluster(work, timing, replicas: int | None = None, *, backups: bool = True, vector_op_time=0.0) -> Cluster:
    """A :class:`Cluster`: portions ``work``, replica ``timing`` (speed factors ``[N]`` or a model).

    Example:
        >>> import jax.numpy as jnp
        >>> from asgd_jax.sandblaster import cluster
        >>> c = cluster(jnp.ones(4), jnp.array([1.0, 2.0]), vector_op_time=0.01)
        >>> c.replicas, c.backups
        (2, True)
    """
    portion_times(work, timing, replicas=replicas, key=0)  # the one-line checks
    if not isinstance(timing, timing_lib.TimingModel):
        replicas = int(np.shape(timing)[0])
        timing = timing_lib.per_worker(timing_lib.fixed(1.0), jnp.asarray(timing, jnp.float32))
    _checks.check_number("vector_op_time", vector_op_time, minimum=0.0)
    return Cluster(work=jnp.asarray(work, jnp.float32), timing=timing,
                   vector_op_time=jnp.asarray(vector_op_time, jnp.float32), replicas=int(replicas),
                   backups=bool(backups))


def lbfgs(memory_size: int = 10, max_linesearch_steps: int = 20) -> optax.GradientTransformationExtraArgs:
    r"""The coordinator's optimizer: ``optax.lbfgs`` with its zoom line search (strong Wolfe conditions).

    ``optax.lbfgs(memory_size, linesearch=optax.scale_by_zoom_linesearch(max_linesearch_steps,
    initial_guess_strategy="one"))``: the direction :math:`-P_k g_k` of the two-loop recursion
    over the last ``memory_size`` pairs, then a step size found by the zoom line search, each of
    whose steps evaluates the loss and its gradient once (its state's
    ``info.num_linesearch_steps``). The value and gradient at the accepted point stay in the
    state, so on a fixed objective the next iteration reuses them
    (``optax.value_and_grad_from_state``).

    Example:
        >>> import jax.numpy as jnp, optax
        >>> from asgd_jax.sandblaster import lbfgs
        >>> tx = lbfgs()
        >>> isinstance(tx, optax.GradientTransformationExtraArgs)
        True
    """
    _checks.python_int("memory_size", memory_size, 1)
    _checks.python_int("max_linesearch_steps", max_linesearch_steps, 1)
    return optax.lbfgs(memory_size=memory_size, linesearch=optax.scale_by_zoom_linesearch(
        max_linesearch_steps=max_linesearch_steps, initial_guess_strategy="one"))


def vector_ops(iteration, evaluations, memory_size: int) -> jax.Array:
    r"""Vector operations the coordinator sends to the shards in L-BFGS iteration ``iteration`` (from 0).

    :math:`4 m + 5 + 2 e` with :math:`m = \min(k, \text{memory})` stored pairs at iteration
    :math:`k` and :math:`e` evaluations: the two-loop recursion (a dot product and an axpy per
    pair in each loop, :math:`4m`), the new pair :math:`s = \Delta w`, :math:`y = \Delta g` and
    :math:`s^\top y` (3), the initial scaling :math:`y^\top y` and its scaling (2), and per
    evaluation the trial point :math:`w + \eta d` and the slope :math:`g^\top d` (2).

    Example:
        >>> from asgd_jax.sandblaster import vector_ops
        >>> int(vector_ops(0, 2, 10)), int(vector_ops(30, 1, 10))
        (9, 47)
    """
    m = jnp.minimum(jnp.asarray(iteration, jnp.int32), memory_size)
    return 4 * m + 5 + 2 * jnp.asarray(evaluations, jnp.int32)


class Record(NamedTuple):
    """One L-BFGS iteration of the coordinator.

    Attributes:
        value: the loss at the new parameters (on this iteration's batch).
        evaluations: int32, loss-and-gradient evaluations of the batch (each one a :func:`schedule`).
        backups: int32, backup tasks issued over those evaluations.
        compute_time: float32, the sum of their makespans.
        coordinator_time: float32, ``vector_op_time`` times :func:`vector_ops`.
        time: float32, ``compute_time + coordinator_time``.
    """

    value: jax.Array
    evaluations: jax.Array
    backups: jax.Array
    compute_time: jax.Array
    coordinator_time: jax.Array
    time: jax.Array


def lbfgs_iteration(tx, value_fn: Callable, params, opt_state, system: Cluster, key, iteration, *,
                    fresh: bool = True, memory_size: int = 10, max_linesearch_steps: int = 20):
    r"""One coordinator iteration: batch gradient, L-BFGS direction, zoom line search, and its simulated time.

    ``fresh`` (static): the objective is a new batch, so its value and gradient at ``params``
    are computed (one evaluation); otherwise they are read from the state when known
    (``optax.value_and_grad_from_state``; computed at the first iteration). Evaluations
    :math:`e` = that one (if made) + the line search's steps; the time is
    :math:`\sum_{j<e} \text{makespan}_j + \text{vector\_op\_time} \cdot` :func:`vector_ops`.

    Args:
        tx: :func:`lbfgs` (``memory_size`` and ``max_linesearch_steps`` as given to it).
        value_fn: the batch loss, ``value_fn(params) -> scalar``.
        params, opt_state: the coordinator's parameters and ``tx``'s state.
        system: the :class:`Cluster`.
        key: PRNG key of this iteration's compute times.
        iteration: the iteration's index (from 0; traced).

    Returns:
        ``(params, opt_state, record)`` with a :class:`Record`.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from asgd_jax.sandblaster import cluster, lbfgs, lbfgs_iteration
        >>> f = lambda w: jnp.sum((w - 3.0) ** 2)
        >>> tx, c = lbfgs(), cluster(jnp.ones(4), jnp.array([1.0, 1.0]))   # makespan 2
        >>> w, s, rec = lbfgs_iteration(tx, f, jnp.zeros(2), tx.init(jnp.zeros(2)), c, 0, 0)
        >>> int(rec.evaluations), float(rec.compute_time)
        (2, 4.0)
    """
    if fresh:
        value, grad = jax.value_and_grad(value_fn)(params)
        first = jnp.int32(1)
    else:
        first = (~jnp.isfinite(optax.tree.get(opt_state, "value"))).astype(jnp.int32)
        value, grad = optax.value_and_grad_from_state(value_fn)(params, state=opt_state)
    updates, opt_state = tx.update(grad, opt_state, params, value=value, grad=grad, value_fn=value_fn)
    params = optax.apply_updates(params, updates)
    evaluations = optax.tree.get(opt_state, "num_linesearch_steps").astype(jnp.int32) + first
    makespans, backups = system.evaluation_times(key, max_linesearch_steps + 1)
    used = jnp.arange(max_linesearch_steps + 1) < evaluations
    compute = jnp.sum(jnp.where(used, makespans, 0.0))
    coordinator = system.vector_op_time * vector_ops(iteration, evaluations, memory_size).astype(jnp.float32)
    record = Record(value=optax.tree.get(opt_state, "value"), evaluations=evaluations,
                    backups=jnp.sum(jnp.where(used, backups, 0)), compute_time=compute,
                    coordinator_time=coordinator, time=compute + coordinator)
    return params, opt_state, record


def minimize(value_fn: Callable, params, system: Cluster, iterations: int, key=0, *, memory_size: int = 10,
             max_linesearch_steps: int = 20):
    r"""Sandblaster L-BFGS on a fixed objective (full batch): ``iterations`` coordinator iterations.

    Returns ``(params, records)``: a :class:`Record` per iteration (leading axis
    ``iterations``) and, as ``records.time``, the simulated time of each one; the clock
    after iteration :math:`k` is ``records.time[:k + 1].sum()``. A ``lax.scan``; jit/vmap-able.

    Example:
        >>> import jax.numpy as jnp
        >>> from asgd_jax.sandblaster import cluster, minimize
        >>> f = lambda w: jnp.sum((w - 3.0) ** 2)
        >>> w, rec = minimize(f, jnp.zeros(2), cluster(jnp.ones(4), jnp.array([1.0, 1.0])), 3)
        >>> w.round(4).tolist(), rec.evaluations.tolist()
        ([3.0, 3.0], [2, 1, 1])
    """
    _checks.python_int("iterations", iterations, 1)
    tx = lbfgs(memory_size, max_linesearch_steps)
    key = _checks.as_key(key)

    def body(carry, k):
        p, s = carry
        p, s, rec = lbfgs_iteration(tx, value_fn, p, s, system, jax.random.fold_in(key, k), k, fresh=False,
                                    memory_size=memory_size, max_linesearch_steps=max_linesearch_steps)
        return (p, s), rec

    (params, _), records = jax.lax.scan(body, (params, tx.init(params)), jnp.arange(iterations))
    return params, records


def _sandblaster_hparams(hparams: Mapping[str, Any]) -> dict[str, Any]:
    """``hparams`` with :data:`SANDBLASTER_HPARAMS`' defaults; one-line errors for unknown keys or bad values."""
    unknown = set(hparams) - set(SANDBLASTER_HPARAMS)
    if unknown:
        raise ValueError(f"unknown Sandblaster hyperparameter(s) {sorted(unknown)}; allowed: "
                         f"{sorted(SANDBLASTER_HPARAMS)}.")
    hp = {**SANDBLASTER_HPARAMS, **hparams}
    _checks.check_number("time_mean", hp["time_mean"], positive=True)
    _checks.check_number("straggler_slowdown", hp["straggler_slowdown"], positive=True)
    for name in ("time_spread", "straggler_fraction", "vector_op_time"):
        _checks.check_number(name, hp[name], minimum=0.0)
    return {k: jnp.asarray(v, jnp.float32) for k, v in hp.items()}


def make_sandblaster_train(model_name: str, dataset, *, batch_size: int, portions: int, replicas: int,
                           iterations: int, timing: str = "fixed", worker_times=(), backups: bool = True,
                           memory_size: int = 10, max_linesearch_steps: int = 20, eval_batch_size: int = 1000):
    r"""Sandblaster L-BFGS on a model and a data set: a pure ``train(key, hparams) -> metrics``.

    The model, its loss (mean cross-entropy), its initial parameters, the data order and the
    test-set evaluation are :class:`asgd_jax.train.Trainer`'s. Iteration :math:`k` takes the
    :math:`k`-th batch of ``batch_size`` examples of the shuffled training set (a fresh order
    every pass; ``batch_size`` = the training set: full-batch L-BFGS, the same objective every
    iteration) and makes one :func:`lbfgs_iteration` on it. Each evaluation of the batch is cut
    into ``portions`` portions (:func:`portion_work`, works summing to 1) scheduled on
    ``replicas`` replicas whose time per unit of work (one whole batch) follows
    :func:`asgd_jax.train.make_timing` (the law ``timing``, ``worker_times``, stragglers).

    Args:
        model_name: a model of :mod:`asgd_jax.models` (``"mlp"``, ``"lenet5"``, ...).
        dataset: an :mod:`asgd_jax.data` data set.
        batch_size, portions, replicas, iterations: static sizes (``replicas <= portions <= batch_size``).
        timing: the compute-time law (:data:`asgd_jax.train.TIMINGS`).
        worker_times: optional per-replica factors (one per replica).
        backups: issue backup tasks (static).
        memory_size, max_linesearch_steps: of :func:`lbfgs`.
        eval_batch_size: test-set chunk evaluated at once.

    Returns:
        ``train(key, hparams)``; ``hparams`` (traced) are :data:`SANDBLASTER_HPARAMS`
        (defaults filled in). Metrics with a leading axis ``iterations``: ``test_accuracy``,
        ``test_loss``, ``collapsed``, ``train_loss`` (the batch loss after the step),
        ``sim_time`` (the clock after the iteration), ``evaluations``, ``backups``,
        ``compute_time``, ``coordinator_time``, ``examples`` (examples whose gradient was
        computed so far, duplicates not counted), ``nonfinite`` and ``diverged``.
        ``train.trainer`` is the :class:`~asgd_jax.train.Trainer`.

    Example:
        >>> import jax, numpy as np
        >>> from asgd_jax.data import make_dataset
        >>> from asgd_jax.sandblaster import make_sandblaster_train
        >>> rng = np.random.default_rng(0)
        >>> x, y = rng.integers(0, 255, (64, 28, 28)), rng.integers(0, 10, 64)
        >>> ds = make_dataset(x, y, x[:16], y[:16], name="noise")
        >>> train = make_sandblaster_train("mlp", ds, batch_size=32, portions=8, replicas=4, iterations=3)
        >>> m = jax.jit(train)(jax.random.key(0), {"straggler_fraction": 0.25, "straggler_slowdown": 4.0})
        >>> m["sim_time"].shape, bool((m["sim_time"][1:] > m["sim_time"][:-1]).all())
        ((3,), True)
    """
    from asgd_jax.train import TIMINGS, Trainer, TrainConfig, make_timing

    trainer = Trainer(TrainConfig(model=model_name, batch_size=batch_size, epochs=1,
                                  eval_batch_size=eval_batch_size), dataset)
    work = portion_work(batch_size, portions)
    _check_sizes(portions, replicas)
    _checks.python_int("iterations", iterations, 1)
    if timing not in TIMINGS:
        raise ValueError(f"unknown timing {timing!r}; choose one of {TIMINGS}.")
    if len(worker_times) not in (0, replicas):
        raise ValueError(f"worker_times must hold one factor per replica ({replicas}), got {len(worker_times)}.")
    tx = lbfgs(memory_size, max_linesearch_steps)
    full = batch_size == trainer.num_train
    step = functools.partial(lbfgs_iteration, tx, fresh=not full, memory_size=memory_size,
                             max_linesearch_steps=max_linesearch_steps)

    def train(key, hparams):
        hp = _sandblaster_hparams(hparams)
        system = cluster(work, make_timing(timing, hp, worker_times), replicas, backups=backups,
                         vector_op_time=hp["vector_op_time"])
        start = trainer.init(trainer.data, key, {"learning_rate": 1.0})  # parameters and data key
        sim_key = jax.random.fold_in(key, 1)

        def body(carry, k):
            params, opt_state, clock, bad = carry
            x, y = _batch(trainer, start.data_key, k, full)
            params, opt_state, rec = step(lambda p: trainer.loss(p, x, y), params, opt_state, system,
                                          jax.random.fold_in(sim_key, k), k)
            ev = trainer.evaluate(trainer.data, params)
            finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(p)) for p in jax.tree.leaves(params)]))
            nonfinite = bad[0] | ~finite | ~jnp.isfinite(ev["test_loss"])
            diverged = bad[1] | nonfinite | ev["collapsed"]
            clock = clock + rec.time
            metrics = {**ev, "train_loss": rec.value, "sim_time": clock, "evaluations": rec.evaluations,
                       "backups": rec.backups, "compute_time": rec.compute_time,
                       "coordinator_time": rec.coordinator_time, "nonfinite": nonfinite, "diverged": diverged}
            return (params, opt_state, clock, (nonfinite, diverged)), metrics

        carry = (start.params, tx.init(start.params), jnp.zeros([], jnp.float32), (jnp.bool_(False),) * 2)
        _, metrics = jax.lax.scan(body, carry, jnp.arange(iterations))
        metrics["examples"] = jnp.cumsum(metrics["evaluations"]) * batch_size
        return metrics

    train.trainer = trainer
    return train


def _batch(trainer, data_key, k, full: bool):
    """Iteration ``k``'s batch: the ``k``-th of the passes over the shuffled training set (all of it if ``full``)."""
    x, y = trainer.data[0], trainer.data[1]
    if full:
        return x, y
    b = trainer.config.batch_size
    order = trainer._order(data_key, k // trainer.steps_per_epoch)
    idx = jax.lax.dynamic_slice_in_dim(order, (k % trainer.steps_per_epoch) * b, b)
    return x[idx], y[idx]
