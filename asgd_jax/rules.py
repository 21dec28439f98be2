r"""Server rules: what the server does with an arriving gradient, as optax transforms you chain.

A parameter server (:func:`asgd_jax.parameter_server`) hands each arriving
gradient to a chain of rules ending in the server optimizer, and passes what
the rules need about the arrival as optax extra arguments:

========================  ===============================================================
extra argument            meaning
========================  ===============================================================
``staleness``             int32, server steps since the gradient's job was dispatched
``stale_params``          the parameters the gradient was computed at (``None`` unless
                          the server keeps them: ``keep_params=True``)
``active_workers``        int32, workers active before this step (:math:`n`)
``worker``                int32, the worker that computed the gradient
``accepted``              bool, the staleness is within every ``max_staleness`` field of the
                          chain (no drop rule will discard the arrival)
========================  ===============================================================

The rules, in the order you would usually chain them::

    optax.chain(
        rules.dc_asgd("a"),                     # DC-ASGD compensation (needs stale_params)
        rules.clip_by_global_norm(1.0),         # optax's clipping, its threshold in the state
        rules.scale_by_staleness("adaptive"),   # delay-adaptive step min(1, n / tau)
        rules.accumulate(optax.sgd(0.1), every=4, max_staleness=8),  # drop / accumulate, then step
    )

The chain's order is the order the rules act in. Every numeric value lives in
the rule's state, so a vmapped sweep can vary it and an ``update`` built with
other values still works.

**Withholding a step.** A rule that may decide that an arrival is not a server
step (dropped, or accumulated for later) keeps a boolean field named
``stepped`` in its state, true when its last update stepped; the parameter
server counts a step (``version`` + 1) only when every ``stepped`` field in the
chain's state is true, and a rule that withholds a step emits zero updates and
leaves the optimizer it wraps untouched. :func:`accumulate` is such a rule (the
optax ``MultiSteps`` pattern: it wraps the server optimizer). A field named
``discarded`` (int32) counts arrivals a rule threw away; the state's
``discarded`` property sums them, and a field named ``max_staleness`` is a
staleness limit the server reports to the other rules as ``accepted``. A rule
of your own follows the same conventions, e.g. "drop gradients older than twice
the worker count" as a skip predicate of :func:`accumulate`::

    rules.accumulate(optax.sgd(0.1), skip=lambda staleness, active_workers, **_: staleness > 2 * active_workers)

The methods and their citations are in ``docs/methods.md``.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from asgd_jax import _checks
from asgd_jax._buffers import update_row

__all__ = ["DCState", "DCAdaptiveState", "AccumulateState", "MaleniaState", "RingleaderState", "ComputeTimeState",
           "STALENESS_SCALINGS", "dc_asgd", "scale_by_staleness", "clip_by_global_norm", "accumulate", "drop_stale",
           "rennala", "malenia", "ringleader", "scale_by_compute_time"]

STALENESS_SCALINGS = ("adaptive", "inverse")


def _select(flag, new, old):
    return jax.tree.map(lambda a, b: jnp.where(flag, a, b), new, old)


class DCState(NamedTuple):
    """State of :func:`dc_asgd` ``("c")``: the constant :math:`\\lambda`."""

    dc_lambda: jax.Array


class DCAdaptiveState(NamedTuple):
    """State of :func:`dc_asgd` ``("a")``: :math:`\\lambda_0`, :math:`\\mu`, :math:`\\epsilon` and ``MS``."""

    dc_lambda: jax.Array
    momentum: jax.Array
    eps: jax.Array
    mean_square: Any


def dc_asgd(kind: str = "c", dc_lambda=None, momentum=0.95, eps=1e-7) -> optax.GradientTransformationExtraArgs:
    r"""Delay compensation (DC-ASGD, Zheng et al. 2017): a first-order Taylor correction of a stale gradient.

    With :math:`w` the current parameters and :math:`w_{bak}` those the gradient
    was computed at (the extra argument ``stale_params``):

    .. math:: \tilde g = g + \lambda_t \odot g \odot g \odot (w - w_{bak})

    ``kind="c"``: :math:`\lambda_t = \lambda` (default 0.04). ``kind="a"``:
    :math:`MS \leftarrow \mu MS + (1-\mu) g^2`, then
    :math:`\lambda_t = \lambda_0 / \sqrt{MS + \epsilon}` elementwise (defaults
    :math:`\lambda_0 = 2`, :math:`\mu = 0.95`, :math:`\epsilon = 10^{-7}`).
    **(choice)** One :math:`w_{bak}` per in-flight job, as in the paper; ``MS``
    moves only with arrivals the server keeps (the extra argument ``accepted``
    that :func:`asgd_jax.parameter_server` passes: within every
    ``max_staleness`` of the chain).

    Args:
        kind: ``"c"`` (constant) or ``"a"`` (adaptive).
        dc_lambda: :math:`\lambda` or :math:`\lambda_0` (``>= 0``).
        momentum: :math:`\mu \in [0, 1)` of ``"a"``.
        eps: :math:`\epsilon > 0` of ``"a"``.

    Example:
        >>> import jax.numpy as jnp, asgd_jax
        >>> tx = asgd_jax.rules.dc_asgd("c", dc_lambda=0.5)
        >>> g, w, w_bak = jnp.array([2.0]), jnp.array([1.0]), jnp.array([0.0])
        >>> tx.update(g, tx.init(w), w, stale_params=w_bak)[0]      # 2 + 0.5 * 4 * 1
        Array([4.], dtype=float32)
    """
    if kind not in ("c", "a"):
        raise ValueError(f"unknown DC-ASGD kind {kind!r}; choose 'c' (constant lambda) or 'a' (adaptive).")
    if dc_lambda is None:
        dc_lambda = 2.0 if kind == "a" else 0.04
    _checks.check_number("dc_lambda", dc_lambda, minimum=0.0)
    if kind == "a":
        _checks.check_number("dc_momentum", momentum, minimum=0.0)
        _checks.check_number("dc_eps", eps, positive=True)
    f32 = lambda x: jnp.array(x, jnp.float32)

    def init_fn(params):
        if kind == "c":
            return DCState(f32(dc_lambda))
        ms = jax.tree.map(lambda p: jnp.zeros(jnp.shape(p), jnp.result_type(p)), params)
        return DCAdaptiveState(f32(dc_lambda), f32(momentum), f32(eps), ms)

    def update_fn(updates, state, params=None, *, stale_params=None, accepted=True, **extra_args):
        del extra_args
        if params is None or stale_params is None:
            raise ValueError("dc_asgd needs params and stale_params: use it inside "
                             "asgd_jax.parameter_server(..., keep_params=True).")
        if kind == "c":
            lam = jax.tree.map(lambda x: state.dc_lambda, updates)
        else:
            mu, eps_ = state.momentum, state.eps
            ms = jax.tree.map(lambda m, x: mu * m + (1 - mu) * x * x, state.mean_square, updates)
            lam = jax.tree.map(lambda m: state.dc_lambda / jnp.sqrt(m + eps_), ms)
            state = state._replace(mean_square=_select(accepted, ms, state.mean_square))
        out = jax.tree.map(lambda x, l, w, b: (x + l * x * x * (w - b)).astype(x.dtype),
                           updates, lam, params, stale_params)
        return out, state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def scale_by_staleness(scaling: str | Callable[[jax.Array], jax.Array] = "adaptive"
                       ) -> optax.GradientTransformationExtraArgs:
    r"""Scales a gradient by a function of its staleness :math:`\tau` (extra argument ``staleness``).

    ``"adaptive"``: :math:`s = \min(1, n/\tau)` with :math:`n` = ``active_workers``
    (the delay-adaptive step of Mishchenko et al. 2022 and Koloskova et al. 2022);
    ``"inverse"``: :math:`s = 1/\max(\tau, 1)`; or any callable ``s(tau)``
    returning a scalar. **(choice)** The gradient is scaled before the server
    optimizer, which for (momentum) SGD is the delay-adaptive step size; an
    adaptive optimizer such as Adam largely undoes a gradient scale.

    Example:
        >>> import jax.numpy as jnp, asgd_jax
        >>> tx = asgd_jax.rules.scale_by_staleness("adaptive")
        >>> tx.update(jnp.ones(2), tx.init(jnp.ones(2)), staleness=8, active_workers=4)[0]
        Array([0.5, 0.5], dtype=float32)
    """
    if not (scaling in STALENESS_SCALINGS or callable(scaling)):
        raise ValueError(f"unknown staleness_scaling {scaling!r}; choose one of {STALENESS_SCALINGS} "
                         "or pass a function of the staleness.")

    def update_fn(updates, state, params=None, *, staleness, active_workers=None, **extra_args):
        del params, extra_args
        tau = jnp.asarray(staleness).astype(jnp.float32)
        if scaling == "adaptive":
            factor = jnp.minimum(1.0, jnp.asarray(active_workers).astype(jnp.float32) / jnp.maximum(tau, 1.0))
        elif scaling == "inverse":
            factor = 1.0 / jnp.maximum(tau, 1.0)
        else:
            factor = jnp.asarray(scaling(jnp.asarray(staleness)), jnp.float32)
        return jax.tree.map(lambda x: (x * factor).astype(x.dtype), updates), state

    return optax.GradientTransformationExtraArgs(lambda params: optax.EmptyState(), update_fn)


def clip_by_global_norm(max_norm) -> optax.GradientTransformationExtraArgs:
    r"""``optax.clip_by_global_norm`` with its threshold in the state: :math:`g \min(1, c/\|g\|)`.

    Example:
        >>> import jax.numpy as jnp, asgd_jax
        >>> tx = asgd_jax.rules.clip_by_global_norm(1.0)
        >>> tx.update(jnp.array([3.0, 4.0]), tx.init(jnp.zeros(2)))[0]
        Array([0.6, 0.8], dtype=float32)
    """
    _checks.check_number("clip_norm", max_norm, positive=True)
    return optax.with_extra_args_support(
        optax.inject_hyperparams(optax.clip_by_global_norm)(max_norm=max_norm))


class AccumulateState(NamedTuple):
    """State of :func:`accumulate`.

    Attributes:
        every: int32, arrivals per server step :math:`k`.
        max_staleness: int32, drop arrivals older than this :math:`R` (int32 max: keep all).
        acc: sum of the accepted gradients of the current step (``None`` when ``k`` is 1).
        count: int32, gradients in ``acc``.
        stepped: bool, whether the last update was a server step (the step convention).
        discarded: int32, arrivals dropped so far.
        inner_state: the wrapped optimizer's state; it moves only on steps.
        invalid: bool, a traced ``every < 1`` or ``max_staleness < 0`` (which would act as 1 / drop all).
    """

    every: jax.Array
    max_staleness: jax.Array
    acc: Any
    count: jax.Array
    stepped: jax.Array
    discarded: jax.Array
    inner_state: Any
    invalid: jax.Array


def accumulate(inner: optax.GradientTransformation, every=1, *, max_staleness=None,
               skip: Callable[..., jax.Array] | None = None) -> optax.GradientTransformationExtraArgs:
    r"""Drops and accumulates arrivals, then steps ``inner`` on their average (``MultiSteps`` with a skip rule).

    An arrival is dropped when its ``staleness`` exceeds ``max_staleness``
    (:math:`R`; Ringmaster ASGD, Maranjyan et al. 2025) or when ``skip(**extra_args)``
    is true. Accepted arrivals are summed; once ``every`` (:math:`k`) have
    arrived the wrapped optimizer steps with their average,
    :math:`\text{inner}(\frac1k\sum_{i=1}^k g_i)` (global accumulation, Aji &
    Heafield 2019); other calls emit zeros and leave ``inner``'s state alone.
    ``every=1`` steps on every accepted arrival. Rennala SGD (Tyurin & Richtárik
    2023) is ``max_staleness=0, every=S`` (:func:`rennala`). The state's
    ``stepped`` and ``discarded`` fields follow the step convention of this module.

    Args:
        inner: the server optimizer (any optax transformation).
        every: :math:`k \ge 1`; any value other than a concrete 1 allocates the accumulator.
        max_staleness: :math:`R \ge 0` or ``None`` (keep all).
        skip: optional predicate of the extra arguments (``staleness``,
            ``active_workers``, ``worker``, ...) returning a bool: drop the arrival.

    Example:
        >>> import jax.numpy as jnp, optax, asgd_jax
        >>> tx = asgd_jax.rules.accumulate(optax.sgd(1.0), every=2)
        >>> s = tx.init(jnp.zeros(1))
        >>> u1, s = tx.update(jnp.array([1.0]), s, staleness=0)
        >>> u2, s = tx.update(jnp.array([3.0]), s, staleness=0)
        >>> u1, u2, bool(s.stepped)        # the second call steps with the mean, 2
        (Array([0.], dtype=float32), Array([-2.], dtype=float32), True)
    """
    _checks.check_int("accumulate", every, 1)
    if max_staleness is not None:
        _checks.check_int("max_staleness", max_staleness, 0)
    inner = optax.with_extra_args_support(inner)
    single = _checks.is_value(every, 1)
    limit = jnp.iinfo(jnp.int32).max if max_staleness is None else max_staleness

    def init_fn(params):
        acc = None if single else jax.tree.map(lambda p: jnp.zeros(jnp.shape(p), jnp.result_type(p)), params)
        i32 = lambda x: jnp.array(x, jnp.int32)
        return AccumulateState(every=i32(every), max_staleness=i32(limit), acc=acc, count=i32(0),
                               stepped=jnp.zeros([], bool), discarded=i32(0), inner_state=inner.init(params),
                               invalid=(i32(every) < 1) | (i32(limit) < 0))

    def update_fn(updates, state, params=None, **extra_args):
        used = jnp.asarray(extra_args.get("staleness", 0)) <= state.max_staleness
        if skip is not None:
            used = used & ~jnp.asarray(skip(**extra_args), bool)
        acc, count = state.acc, state.count
        if acc is None:
            apply, step_grads = used, updates
        else:
            acc = jax.tree.map(lambda a, x: a + jnp.where(used, x, 0).astype(a.dtype), acc, updates)
            count = count + used.astype(jnp.int32)
            apply = used & (count >= state.every)
            inv = 1.0 / jnp.maximum(count, 1).astype(jnp.float32)
            step_grads = jax.tree.map(lambda a: (a * inv).astype(a.dtype), acc)
            acc = jax.tree.map(lambda a: jnp.where(apply, jnp.zeros_like(a), a), acc)
            count = jnp.where(apply, 0, count)
        new_updates, new_inner = inner.update(step_grads, state.inner_state, params, **extra_args)
        out = jax.tree.map(lambda u: jnp.where(apply, u, jnp.zeros_like(u)), new_updates)
        return out, state._replace(acc=acc, count=count, stepped=apply,
                                   discarded=state.discarded + (~used).astype(jnp.int32),
                                   inner_state=_select(apply, new_inner, state.inner_state))

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def drop_stale(inner: optax.GradientTransformation, max_staleness) -> optax.GradientTransformationExtraArgs:
    """Ringmaster ASGD's rule: ``accumulate(inner, 1, max_staleness=R)`` (ignore arrivals older than ``R``).

    Example:
        >>> import jax.numpy as jnp, optax, asgd_jax
        >>> tx = asgd_jax.rules.drop_stale(optax.sgd(1.0), 2)
        >>> u, s = tx.update(jnp.ones(1), tx.init(jnp.zeros(1)), staleness=3)
        >>> u, int(s.discarded)
        (Array([0.], dtype=float32), 1)
    """
    return accumulate(inner, 1, max_staleness=max_staleness)


def rennala(inner: optax.GradientTransformation, batch) -> optax.GradientTransformationExtraArgs:
    """Rennala SGD's server: ``accumulate(inner, S, max_staleness=0)`` (with the pure assignment rule).

    Example:
        >>> import jax.numpy as jnp, optax, asgd_jax
        >>> tx = asgd_jax.rules.rennala(optax.sgd(1.0), 3)
        >>> int(tx.init(jnp.zeros(1)).every), int(tx.init(jnp.zeros(1)).max_staleness)
        (3, 0)
    """
    return accumulate(inner, batch, max_staleness=0)


def _per_worker(params, size):
    return jax.tree.map(lambda p: jnp.zeros((size,) + jnp.shape(p), jnp.result_type(p)), params)


def _row_mean(table, weights):
    """:math:`\\sum_i w_i\\,\\text{table}_i` over the leading worker axis."""
    return jax.tree.map(lambda t: jnp.tensordot(weights.astype(t.dtype), t, axes=1), table)


def _add_row(table, worker, tree, restart):
    """``table`` plus ``tree`` in row ``worker`` only (O(one model), in place); ``restart``: the row is stale
    (its count is 0) and is overwritten, :math:`0 + g`, exactly what a cleared row gives."""
    def one(t, g):
        return update_row(t, worker, lambda row: jnp.where(restart, jnp.zeros_like(row), row) + g.astype(t.dtype))
    return jax.tree.map(one, table, tree)


def _valid_rows(table, counts):
    """``table`` with the rows of count 0 read as zero (the lazily cleared rows of :func:`_add_row`)."""
    keep = lambda t: jnp.where((counts > 0).reshape((-1,) + (1,) * (t.ndim - 1)), t, jnp.zeros_like(t))
    return jax.tree.map(keep, table)


def _step_if(apply, inner, table, weights, inner_state, params, counts=None, pick=None, **extra_args):
    """``(updates, inner_state)``: :math:`\\text{inner}(\\sum_i w_i\\,\\text{table}_i)` when ``apply``, else
    zeros and the state as it was (``counts``: rows of count 0 read as zero; ``pick``: ``table`` is a pair
    of tables, the second one used where ``pick``). A cond: the table (all workers' rows) is read only on a
    step."""
    def step(table, inner_state):
        if pick is not None:
            table = jax.tree.map(lambda a, b: jnp.where(pick, b, a), *table)
        return inner.update(_row_mean(table if counts is None else _valid_rows(table, counts), weights),
                            inner_state, params, **extra_args)

    def idle(table, inner_state):
        shapes = jax.eval_shape(step, table, inner_state)[0]
        return jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), shapes), inner_state

    return jax.lax.cond(apply, step, idle, table, inner_state)


class MaleniaState(NamedTuple):
    """State of :func:`malenia`: the batch :math:`S` (0: the active worker count), ``max_staleness`` (0),
    per-worker ``sums`` and ``counts`` of the gradients at the current iterate (a row whose count is 0 is
    stale and reads as zero: a step resets the counts and leaves the rows), ``stepped``, ``discarded``,
    the wrapped optimizer's state and ``invalid`` (a traced negative ``S``)."""

    per_worker_tables = True  # parameter_server updates this state under a cond (rows in place)

    batch: jax.Array
    max_staleness: jax.Array
    sums: Any
    counts: jax.Array
    stepped: jax.Array
    discarded: jax.Array
    inner_state: Any
    invalid: jax.Array


def malenia(inner: optax.GradientTransformation, max_workers: int, batch=None
            ) -> optax.GradientTransformationExtraArgs:
    r"""Malenia SGD's server (Tyurin & Richtárik 2023): per-worker sums, every worker weighted equally.

    Only gradients computed at the current iterate are kept (staleness 0;
    the others are discarded and their worker restarts at the current point,
    as in Rennala). Worker :math:`i`'s kept gradients are summed, :math:`G_i`,
    and counted, :math:`B_i`. The server steps once

    .. math:: \Big(\frac1n \sum_{i=1}^n \frac1{B_i}\Big)^{-1} \ge \frac{S}{n},

    (every worker has contributed, and the harmonic mean of the counts is at
    least :math:`S/n`) with :math:`\text{inner}\big(\frac1n\sum_i G_i/B_i\big)`, then
    clears the sums. :math:`n` is the extra argument ``active_workers``; the
    paper's batch is :math:`S = \max(\lceil\sigma^2/\varepsilon\rceil, n)`; default
    :math:`S = n` (one gradient from every worker suffices). **(choice)** We step
    as soon as the harmonic mean reaches :math:`S/n`; a later restatement of the
    algorithm waits until it exceeds :math:`S/n` (docs/methods.md). The
    comparison allows a relative :math:`10^{-6}` so that float32 rounding of the
    harmonic mean does not delay a step that is due.

    Args:
        inner: the server optimizer.
        max_workers: static pool size (the parameter server's ``max_workers``).
        batch: :math:`S > 0` (traced allowed) or ``None`` (:math:`S = n`).

    Example:
        >>> import jax.numpy as jnp, optax, asgd_jax
        >>> tx = asgd_jax.rules.malenia(optax.sgd(1.0), 2)
        >>> s = tx.init(jnp.zeros(1))
        >>> kw = dict(staleness=0, active_workers=2)
        >>> u, s = tx.update(jnp.array([1.0]), s, worker=0, **kw)      # worker 1 has not contributed
        >>> u, s = tx.update(jnp.array([3.0]), s, worker=0, **kw)
        >>> u, s = tx.update(jnp.array([8.0]), s, worker=1, **kw)      # (1/2)(4/2 + 8/1) = 5
        >>> u, bool(s.stepped)
        (Array([-5.], dtype=float32), True)
    """
    size = _checks.python_int("malenia(max_workers)", max_workers, 1)
    if batch is not None:
        _checks.check_number("malenia(batch)", batch, positive=True)
    inner = optax.with_extra_args_support(inner)

    def init_fn(params):
        b = jnp.array(0.0 if batch is None else batch, jnp.float32)
        return MaleniaState(batch=b, max_staleness=jnp.zeros([], jnp.int32), sums=_per_worker(params, size),
                            counts=jnp.zeros([size], jnp.int32), stepped=jnp.zeros([], bool),
                            discarded=jnp.zeros([], jnp.int32), inner_state=inner.init(params),
                            invalid=jnp.asarray(batch is not None) & (b <= 0))

    def update_fn(updates, state, params=None, *, staleness, worker, active_workers, **extra_args):
        fresh = jnp.asarray(staleness) <= state.max_staleness
        n = jnp.asarray(active_workers, jnp.int32)
        # rows of count 0 are stale (cleared lazily: a step resets the counts, not the n rows)
        sums = _add_row(state.sums, worker, jax.tree.map(lambda g: jnp.where(fresh, g, 0), updates),
                        state.counts[worker] == 0)
        counts = state.counts.at[worker].add(fresh.astype(jnp.int32))
        active = jnp.arange(size) < n
        inv = jnp.where(active, jnp.where(counts > 0, 1.0 / jnp.maximum(counts, 1), jnp.inf), 0.0)
        nf = n.astype(jnp.float32)
        s = jnp.where(state.batch > 0, state.batch, nf)
        apply = fresh & (s * jnp.sum(inv) <= nf * nf * (1 + 1e-6))
        out, inner_state = _step_if(apply, inner, sums, jnp.where(active, 1.0 / jnp.maximum(counts, 1), 0.0) / nf,
                                    state.inner_state, params, counts, staleness=staleness, worker=worker,
                                    active_workers=active_workers, **extra_args)
        return out, state._replace(sums=sums, counts=jnp.where(apply, 0, counts), stepped=apply,
                                   discarded=state.discarded + (~fresh).astype(jnp.int32), inner_state=inner_state)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


class RingleaderState(NamedTuple):
    """State of :func:`ringleader`: the gradient table (per-worker ``sums`` and ``counts`` of the current
    cycle), the temporary table (``next_sums``, ``next_counts``: what workers deliver after their step of
    the cycle), ``updating`` (phase 2), ``owes`` (the workers whose step of the cycle is still due),
    ``stepped`` and the wrapped optimizer's state. In both tables a row whose count is 0 is stale and
    reads as zero (the tables are cleared by resetting the counts). The two tables are two buffers that
    trade roles at a transition: ``sums`` holds the table and ``next_sums`` the temporary one unless
    ``swapped``, then the other way round (``counts``/``next_counts`` always count the table / the temporary
    table); nothing is copied."""

    per_worker_tables = True  # parameter_server updates this state under a cond (rows in place)

    sums: Any
    counts: jax.Array
    next_sums: Any
    next_counts: jax.Array
    updating: jax.Array
    owes: jax.Array
    stepped: jax.Array
    inner_state: Any
    swapped: jax.Array


def ringleader(inner: optax.GradientTransformation, max_workers: int) -> optax.GradientTransformationExtraArgs:
    r"""Ringleader ASGD's server (Maranjyan & Richtárik, ICLR 2026): a gradient table, one step per worker.

    No gradient is discarded, whatever its staleness. The server keeps a table
    (per worker :math:`i`, the sum :math:`G_i` and number :math:`b_i` of its
    gradients in the table) and a temporary table. A cycle has two phases.
    **Phase 1 (collect):** every arrival is added to its worker's entry, no
    step, until every active worker has an entry. **Phase 2 (update):** the
    arrival that fills the table, and then the first arrival of each other
    worker (added to its entry first), each makes one step with the table,

    .. math:: x \leftarrow x + \text{inner}\Big(\frac1n \sum_{i=1}^n \frac{G_i}{b_i}\Big)

    (averaged within, then across workers); an arrival of a worker that has
    already stepped in this cycle goes to the temporary table. After the
    :math:`n`-th step the old gradients are removed: the temporary table
    becomes the table, and phase 1 starts again. Each worker triggers exactly
    one step per cycle and no worker waits (every delay is at most
    :math:`2n - 2`). Written from the authors' description of the phases (the
    paper's poster: collect, one update per worker with a temporary table,
    then remove the old gradients) and their experiment code.

    Args:
        inner: the server optimizer (the paper: SGD).
        max_workers: static pool size (the parameter server's ``max_workers``).

    Example:
        >>> import jax.numpy as jnp, optax, asgd_jax
        >>> tx = asgd_jax.rules.ringleader(optax.sgd(1.0), 2)
        >>> s = tx.init(jnp.zeros(1))
        >>> steps = []
        >>> for w, g in [(0, 1.0), (0, 3.0), (1, 8.0), (1, 2.0), (0, 5.0), (0, 6.0)]:
        ...     u, s = tx.update(jnp.array([g]), s, worker=w, active_workers=2)
        ...     steps.append(float(u[0]))
        >>> steps     # collect 1, 3; 8 fills: -(2+8)/2; 2 to the temporary table; 5: -(3+8)/2; then -(6+2)/2
        [0.0, 0.0, -5.0, 0.0, -5.5, -4.0]
    """
    size = _checks.python_int("ringleader(max_workers)", max_workers, 1)
    inner = optax.with_extra_args_support(inner)

    def init_fn(params):
        false, zero = jnp.zeros([size], bool), jnp.zeros([size], jnp.int32)
        return RingleaderState(sums=_per_worker(params, size), counts=zero,
                               next_sums=_per_worker(params, size), next_counts=zero,
                               updating=jnp.zeros([], bool), owes=false, stepped=jnp.zeros([], bool),
                               inner_state=inner.init(params), swapped=jnp.zeros([], bool))

    def update_fn(updates, state, params=None, *, worker, active_workers, **extra_args):
        ids = jnp.arange(size)
        active, me = ids < jnp.asarray(active_workers, jnp.int32), ids == worker
        to_next = state.updating & ~state.owes[worker]               # already stepped in this cycle
        # rows of count 0 are stale (cleared lazily: a transition resets the counts, not the n rows)
        add = lambda on, table, count: _add_row(table, worker, jax.tree.map(lambda g: jnp.where(on, g, 0), updates),
                                                count[worker] == 0)
        counts = state.counts.at[worker].add((~to_next).astype(jnp.int32))
        next_counts = state.next_counts.at[worker].add(to_next.astype(jnp.int32))
        flip = state.swapped  # buffer ``sums`` holds the table unless flipped (then ``next_sums`` does)
        sums = add(jnp.where(flip, to_next, ~to_next), state.sums, jnp.where(flip, state.next_counts, state.counts))
        next_sums = add(jnp.where(flip, ~to_next, to_next), state.next_sums,
                        jnp.where(flip, state.counts, state.next_counts))
        fills = ~state.updating & jnp.all((counts > 0) | ~active)    # phase 1 ends with this arrival
        apply = fills | (state.updating & state.owes[worker])
        owes = jnp.where(fills, active & ~me, state.owes & ~(me & apply))
        done = (state.updating | fills) & ~jnp.any(owes)             # the cycle's n-th step: transition
        out, inner_state = _step_if(apply, inner, (sums, next_sums),
                                    jnp.where(active, 1.0 / jnp.maximum(counts, 1), 0.0) / jnp.sum(active),
                                    state.inner_state, params, counts, pick=flip, worker=worker,
                                    active_workers=active_workers, **extra_args)
        return out, RingleaderState(  # a transition: the buffers trade roles, the temporary table's counts move
            sums=sums, counts=jnp.where(done, next_counts, counts), next_sums=next_sums,
            next_counts=jnp.where(done, 0, next_counts), updating=(state.updating | fills) & ~done,
            owes=owes & ~done, stepped=apply, inner_state=inner_state, swapped=flip ^ done)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


class ComputeTimeState(NamedTuple):
    """State of :func:`scale_by_compute_time`: each worker's (mean) compute time ``times[P]``."""

    times: jax.Array


def scale_by_compute_time(times) -> optax.GradientTransformationExtraArgs:
    r"""Rescaled ASGD (Mahran, Maranjyan & Richtárik 2026): worker :math:`i`'s step proportional to its time.

    .. math:: g \leftarrow \frac{\tau_i}{\bar\tau}\, g, \qquad
              \bar\tau = \Big(\frac1n \sum_{j<n} \frac1{\tau_j}\Big)^{-1},

    with :math:`\tau_i` worker :math:`i`'s (mean) compute time and :math:`n` the
    active workers. Worker :math:`i` delivers about :math:`1/\tau_i` gradients per
    unit time, so each worker contributes the same total step per unit time and
    plain ASGD's bias towards the fast workers' data goes away. **(choice)** The
    normalisation :math:`\bar\tau` (the harmonic mean) keeps the average step per
    arrival equal to the inner learning rate; the paper states the step sizes up
    to this constant. With random times use the means
    (``timing.expected(jnp.arange(P), P)``).

    Args:
        times: ``[P]`` positive compute times, one per worker (traced allowed).

    Example:
        >>> import jax.numpy as jnp, asgd_jax
        >>> tx = asgd_jax.rules.scale_by_compute_time(jnp.array([1.0, 3.0]))
        >>> tx.update(jnp.ones(1), tx.init(jnp.ones(1)), worker=1, active_workers=2)[0]   # 3 / 1.5
        Array([2.], dtype=float32)
    """
    _checks.check_number("scale_by_compute_time(times)", times, positive=True)
    if _checks.concrete(times) is not None and jnp.ndim(times) != 1:
        raise ValueError(f"scale_by_compute_time(times) must be one time per worker (1-D), got {times!r}.")

    def update_fn(updates, state, params=None, *, worker, active_workers, **extra_args):
        del params, extra_args
        active = jnp.arange(state.times.shape[0]) < jnp.asarray(active_workers, jnp.int32)
        mean = jnp.sum(active) / jnp.sum(jnp.where(active, 1.0 / state.times, 0.0))
        factor = state.times[worker] / mean
        return jax.tree.map(lambda x: (x * factor).astype(x.dtype), updates), state

    return optax.GradientTransformationExtraArgs(lambda p: ComputeTimeState(jnp.asarray(times, jnp.float32)),
                                                 update_fn)
