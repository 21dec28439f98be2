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

__all__ = ["DCState", "DCAdaptiveState", "AccumulateState", "STALENESS_SCALINGS", "dc_asgd",
           "scale_by_staleness", "clip_by_global_norm", "accumulate", "drop_stale", "rennala"]

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
