r"""Compute-time models: how long a worker takes to compute one gradient.

Every model is a small frozen dataclass registered as a JAX pytree whose fields
are its parameters (numbers or arrays, possibly traced). A model is sampled from
an explicit PRNG key::

    times = model.sample(key, worker, num_workers)

where ``worker`` is an integer array of worker ids (any shape) and
``num_workers`` the number of workers in the system; ``times`` is a positive
float32 array of ``worker``'s shape, one independent draw per element. Because
a model is a pytree, :func:`asgd_jax.simulator.asynchronous` keeps it in its
state, so a vmapped sweep may give every config its own time parameters inside
one compiled program.

Base distributions (the same law for every worker): :func:`fixed`,
:func:`normal` (truncated to positive times), :func:`exponential`,
:func:`lognormal`, :func:`uniform`. Wrappers that make workers differ, and that
compose with any model (wrappers included): :func:`per_worker` (worker ``i``'s
times scaled by ``scales[i]``) and :func:`stragglers` (the last fraction ``p`` of
the workers ``c`` times slower). ``model.expected(worker, num_workers)`` gives the
expected compute time. :func:`failing` takes a worker down for a while (or for
good); it depends on the clock, through ``sample_at``.

Heavy tails: :func:`pareto` (and :func:`lognormal` with a large ``sigma``);
:func:`budgeted` cuts a tail by abandoning and restarting attempts past a time
budget until one succeeds (MindFlayer's timeout as a clock; MindFlayer SGD's
rounds of a fixed number of attempts: :func:`asgd_jax.mindflayer`). Time-varying
speeds (Tyurin's universal computation model: a job of work :math:`W` started at :math:`t_0` ends when
:math:`\int_{t_0}^t v_i = W`): :func:`piecewise_speed`, :func:`periodic_speed`,
:func:`random_walk_speed`. Clock-dependent models go outside the clock-free
wrappers (:func:`per_worker`, :func:`stragglers` and :func:`budgeted` refuse
them); :func:`failing` composes with all of them.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import ndtr

from asgd_jax import _checks

__all__ = [
    "TimingModel", "Fixed", "Normal", "Exponential", "LogNormal", "Uniform", "PerWorker",
    "Stragglers", "Failing", "Pareto", "TimeVarying", "Budgeted", "fixed", "normal", "exponential", "lognormal",
    "uniform", "per_worker", "stragglers", "failing", "pareto", "piecewise_speed", "periodic_speed",
    "random_walk_speed", "budgeted", "as_timing", "LAWS", "from_name",
]

# The base laws :func:`from_name` knows, by name (what a command line or a config file names).
LAWS = ("fixed", "normal", "exponential", "lognormal", "uniform")


def _f32(x) -> jax.Array:
    return jnp.asarray(x, jnp.float32)


def _pytree_dataclass(cls):
    """Frozen dataclass whose fields are pytree children (traceable parameters), except those marked
    ``metadata=dict(static=True)`` (shape-fixing Python ints)."""
    cls = dataclasses.dataclass(frozen=True)(cls)
    fields = dataclasses.fields(cls)
    meta = [f.name for f in fields if f.metadata.get("static")]
    data = [f.name for f in fields if not f.metadata.get("static")]
    return jax.tree_util.register_dataclass(cls, data_fields=data, meta_fields=meta)


class TimingModel:
    """Base class of compute-time models (see the module docstring).

    ``is_random`` (static) says whether :meth:`sample` uses its key; the
    simulator skips drawing keys when nothing in the system is random.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from asgd_jax import timing
        >>> model = timing.stragglers(timing.exponential(1.0), fraction=0.5, slowdown=4.0)
        >>> model.expected(jnp.arange(4), num_workers=4)
        Array([1., 1., 4., 4.], dtype=float32)
        >>> model.sample(jax.random.key(0), jnp.arange(4), num_workers=4).shape, model.is_random
        ((4,), True)
    """

    is_random = True

    def sample(self, key: jax.Array, worker: Any, num_workers: Any = 1) -> jax.Array:
        """Draws one compute time per element of ``worker`` (float32, positive)."""
        raise NotImplementedError

    def expected(self, worker: Any, num_workers: Any = 1) -> jax.Array:
        """The expected compute time of each element of ``worker`` (float32)."""
        raise NotImplementedError

    def sample_at(self, key: jax.Array, worker: Any, num_workers: Any, now: Any) -> jax.Array:
        """Draws the time of a job that ``worker`` starts at clock time ``now``.

        The event model (:mod:`asgd_jax.events`) calls this. The laws here do not
        depend on the clock, so it is :meth:`sample`; a model whose speeds change
        over time overrides it.
        """
        del now
        return self.sample(key, worker, num_workers)

    def check_workers(self, size: int) -> None:
        """One-line ``ValueError`` if the model's per-worker parameters do not fit ``size`` workers
        (the event model calls it); wrappers check their ``base`` too."""
        base = getattr(self, "base", None)
        if isinstance(base, TimingModel):
            base.check_workers(size)


@_pytree_dataclass
class Fixed(TimingModel):
    r"""Every job takes exactly ``time``: :math:`T = t`. Build with :func:`fixed`."""

    time: Any
    is_random = False

    def sample(self, key, worker, num_workers=1):
        del key, num_workers
        return jnp.broadcast_to(_f32(self.time), jnp.shape(worker))

    def expected(self, worker, num_workers=1):
        return self.sample(None, worker, num_workers)


@_pytree_dataclass
class Normal(TimingModel):
    r"""Normal times truncated to positive values. Build with :func:`normal`."""

    mean: Any
    std: Any

    def sample(self, key, worker, num_workers=1):
        del num_workers
        m, s = _f32(self.mean), _f32(self.std)
        safe = jnp.where(s > 0, s, 1.0)
        z = jax.random.truncated_normal(key, -m / safe, jnp.inf, jnp.shape(worker), jnp.float32)
        return jnp.maximum(m + jnp.where(s > 0, s, 0.0) * z, 0.0)

    def expected(self, worker, num_workers=1):
        m, s = _f32(self.mean), _f32(self.std)
        safe = jnp.where(s > 0, s, 1.0)
        alpha = -m / safe
        pdf = jnp.exp(-0.5 * alpha ** 2) / jnp.sqrt(2 * jnp.pi)
        value = jnp.where(s > 0, m + s * pdf / ndtr(-alpha), m)
        return jnp.broadcast_to(value, jnp.shape(worker))


@_pytree_dataclass
class Exponential(TimingModel):
    r"""Exponential times of mean ``mean``. Build with :func:`exponential`."""

    mean: Any

    def sample(self, key, worker, num_workers=1):
        del num_workers
        return _f32(self.mean) * jax.random.exponential(key, jnp.shape(worker), jnp.float32)

    def expected(self, worker, num_workers=1):
        return jnp.broadcast_to(_f32(self.mean), jnp.shape(worker))


@_pytree_dataclass
class LogNormal(TimingModel):
    r"""Log-normal times with mean ``mean``. Build with :func:`lognormal`."""

    mean: Any
    sigma: Any

    def sample(self, key, worker, num_workers=1):
        del num_workers
        s = _f32(self.sigma)
        z = jax.random.normal(key, jnp.shape(worker), jnp.float32)
        return _f32(self.mean) * jnp.exp(s * z - 0.5 * s * s)

    def expected(self, worker, num_workers=1):
        return jnp.broadcast_to(_f32(self.mean), jnp.shape(worker))


@_pytree_dataclass
class Uniform(TimingModel):
    r"""Uniform times on ``[low, high)``. Build with :func:`uniform`."""

    low: Any
    high: Any

    def sample(self, key, worker, num_workers=1):
        del num_workers
        return jax.random.uniform(key, jnp.shape(worker), jnp.float32, _f32(self.low), _f32(self.high))

    def expected(self, worker, num_workers=1):
        return jnp.broadcast_to(0.5 * (_f32(self.low) + _f32(self.high)), jnp.shape(worker))


@_pytree_dataclass
class PerWorker(TimingModel):
    r"""Worker ``i``'s times are ``scales[i]`` times a draw of ``base``. Build with :func:`per_worker`."""

    base: Any
    scales: Any

    @property
    def is_random(self):
        return self.base.is_random

    def check_workers(self, size):
        c = _checks.concrete(self.scales)
        if c is not None and (c.ndim != 1 or c.shape[0] < size):
            raise ValueError(f"per_worker timing has {c.size} scale(s) for {size} workers; give one each.")
        super().check_workers(size)

    def _scale(self, worker):
        return jnp.take(_f32(self.scales), jnp.asarray(worker, jnp.int32), mode="clip")

    def sample(self, key, worker, num_workers=1):
        return self._scale(worker) * self.base.sample(key, worker, num_workers)

    def expected(self, worker, num_workers=1):
        return self._scale(worker) * self.base.expected(worker, num_workers)


@_pytree_dataclass
class Stragglers(TimingModel):
    r"""The last ``round(fraction · n)`` workers are ``slowdown`` times slower. Build with :func:`stragglers`."""

    base: Any
    fraction: Any
    slowdown: Any

    @property
    def is_random(self):
        return self.base.is_random

    def is_straggler(self, worker, num_workers):
        """Whether each worker id is a straggler: ``worker >= n - floor(fraction * n + 1/2)``."""
        n = jnp.asarray(num_workers, jnp.int32)
        count = jnp.floor(_f32(self.fraction) * n.astype(jnp.float32) + 0.5).astype(jnp.int32)
        return jnp.asarray(worker, jnp.int32) >= n - count

    def _factor(self, worker, num_workers):
        return jnp.where(self.is_straggler(worker, num_workers), _f32(self.slowdown), 1.0)

    def sample(self, key, worker, num_workers=1):
        return self._factor(worker, num_workers) * self.base.sample(key, worker, num_workers)

    def expected(self, worker, num_workers=1):
        return self._factor(worker, num_workers) * self.base.expected(worker, num_workers)


@_pytree_dataclass
class Failing(TimingModel):
    r"""Worker ``worker`` is down during ``[fail_at, return_at)``. Build with :func:`failing`."""

    base: Any
    worker: Any
    fail_at: Any
    return_at: Any

    @property
    def is_random(self):
        return self.base.is_random

    def check_workers(self, size):
        c = _checks.concrete(self.worker)
        if c is not None and int(c) >= size:
            raise ValueError(f"failing(worker={int(c)}) names no worker: ids are 0 .. {size - 1}.")
        super().check_workers(size)

    def sample(self, key, worker, num_workers=1):
        return self.base.sample(key, worker, num_workers)

    def expected(self, worker, num_workers=1):
        return self.base.expected(worker, num_workers)

    def sample_at(self, key, worker, num_workers, now):
        now = _f32(now)
        t = self.base.sample_at(key, worker, num_workers, now)
        fail, back = _f32(self.fail_at), _f32(self.return_at)
        hit = (jnp.asarray(worker, jnp.int32) == jnp.asarray(self.worker, jnp.int32)) & (now < back)
        lost = hit & (now + t > fail)
        finite = jnp.isfinite(back)  # never back: no redo (a clock-dependent base is NaN at t = inf)
        redo = self.base.sample_at(key, worker, num_workers,
                                   jnp.broadcast_to(jnp.where(finite, back, 0.0), jnp.shape(now)))
        redo = jnp.where(finite, redo, 0.0)
        # now < back, so back - now > 0 (inf when the worker never returns)
        return jnp.where(lost, (back - jnp.where(lost, now, 0.0)) + redo, t)


def _clock_dependent(model) -> bool:
    """Whether ``model`` (or a model it wraps) overrides ``sample_at``: its times depend on the clock."""
    if type(model).sample_at is not TimingModel.sample_at:
        return True
    base = getattr(model, "base", None)
    return isinstance(base, TimingModel) and _clock_dependent(base)


def _refuse_clock(name: str, base) -> None:
    if _clock_dependent(base):
        raise ValueError(f"{name}(base): base depends on the clock (failing, time-varying speeds) and {name} "
                         f"would ignore that; put the clock-dependent model outside, e.g. failing({name}(...), ...).")


@_pytree_dataclass
class Pareto(TimingModel):
    r"""Pareto times :math:`T = s\,U^{-1/\alpha}`. Build with :func:`pareto`."""

    scale: Any
    alpha: Any

    def sample(self, key, worker, num_workers=1):
        del num_workers
        a = jnp.broadcast_to(_f32(self.alpha), jnp.shape(worker))
        return _f32(self.scale) * jax.random.pareto(key, a, jnp.shape(worker), jnp.float32)

    def expected(self, worker, num_workers=1):
        a, s = _f32(self.alpha), _f32(self.scale)
        value = jnp.where(a > 1, a * s / jnp.where(a > 1, a - 1, 1.0), jnp.inf)
        return jnp.broadcast_to(value, jnp.shape(worker))


def _rows(table, worker, shape):
    """``table[worker]`` for a per-worker ``[P, K]`` table, else ``table`` broadcast to ``shape + (K,)``."""
    table = _f32(table)
    if table.ndim == 2:
        return table[jnp.asarray(worker, jnp.int32)]
    return jnp.broadcast_to(table, tuple(shape) + table.shape[-1:])


def _take(x, k):
    return jnp.take_along_axis(x, k[..., None], -1)[..., 0]


@_pytree_dataclass
class TimeVarying(TimingModel):
    r"""Speeds that vary with the clock (piecewise constant, optionally periodic). Build with
    :func:`piecewise_speed`, :func:`periodic_speed` or :func:`random_walk_speed`."""

    base: Any
    breakpoints: Any
    speeds: Any
    period: Any

    @property
    def is_random(self):
        return self.base.is_random

    def check_workers(self, size):
        c = _checks.concrete(self.speeds)
        if c is not None and c.ndim == 2 and c.shape[0] < size:
            raise ValueError(f"time-varying speeds have {c.shape[0]} rows for {size} workers; give one row "
                             "per worker (or one row for all).")
        super().check_workers(size)

    def sample(self, key, worker, num_workers=1):
        return self.sample_at(key, worker, num_workers, 0.0)

    def expected(self, worker, num_workers=1):
        return self.base.expected(worker, num_workers)

    def _profile(self, v):
        """Per segment: its start, the work done before it (``start``) and by its end (``end``)."""
        b, period = _f32(self.breakpoints), _f32(self.period)
        periodic = jnp.isfinite(period)
        length = jnp.concatenate([b[1:], jnp.where(periodic, period, jnp.inf)[None]]) - b
        finite = jnp.isfinite(length)
        piece = v * jnp.where(finite, length, 0.0)
        start = jnp.cumsum(piece, -1) - piece
        end = start + jnp.where(finite, piece, jnp.where(v > 0, jnp.inf, 0.0))
        return b, periodic, jnp.where(periodic, period, 1.0), start, end

    def sample_at(self, key, worker, num_workers, now):
        work = self.base.sample_at(key, worker, num_workers, now)
        now = jnp.broadcast_to(_f32(now), jnp.shape(work))
        v = _rows(self.speeds, worker, jnp.shape(work))
        b, periodic, period, start, end = self._profile(v)
        K, total = b.shape[0], end[..., -1]                      # total: the work of one period
        # work done by `now`: whole periods, then the segment `now` lies in
        m = jnp.where(periodic, jnp.floor(now / period), 0.0)
        s = now - m * period
        k = jnp.clip(jnp.sum(b <= s[..., None], -1) - 1, 0, K - 1)
        target = m * jnp.where(periodic, total, 0.0) + _take(start, k) + _take(v, k) * (s - b[k]) + work
        # the first time the work reaches `target`
        per = jnp.where(periodic & (total > 0), total, 1.0)
        m = jnp.where(periodic, jnp.ceil(target / per) - 1.0, 0.0)
        r = target - m * jnp.where(periodic, total, 0.0)
        j = jnp.sum(end < r[..., None], -1)
        jc = jnp.minimum(j, K - 1)
        vj = _take(v, jc)
        t = m * period + b[jc] + jnp.maximum(r - _take(start, jc), 0.0) / jnp.where(vj > 0, vj, 1.0)
        t = jnp.where(j >= K, jnp.inf, jnp.maximum(t, now))
        return t - now


@_pytree_dataclass
class Budgeted(TimingModel):
    r"""Each attempt gets a time budget; an attempt past it is abandoned and restarted. Build with
    :func:`budgeted`."""

    base: Any
    budget: Any
    attempts: int = dataclasses.field(default=32, metadata=dict(static=True))

    @property
    def is_random(self):
        return self.base.is_random

    def check_workers(self, size):
        c = _checks.concrete(self.budget)
        if c is not None and c.ndim == 1 and c.shape[0] < size:
            raise ValueError(f"budgeted(budget) has {c.shape[0]} entries for {size} workers; give one per worker.")
        super().check_workers(size)

    def sample(self, key, worker, num_workers=1):
        w = jnp.asarray(worker, jnp.int32)
        draws = self.base.sample(key, jnp.broadcast_to(w, (self.attempts,) + w.shape), num_workers)
        budget = _f32(self.budget)
        t = budget[w] if budget.ndim == 1 else jnp.broadcast_to(budget, w.shape)
        ok = draws <= t
        first = jnp.argmax(ok, 0)
        took = first.astype(jnp.float32) * t + jnp.take_along_axis(draws, first[None], 0)[0]
        return jnp.where(ok.any(0), took, jnp.inf)

    def expected(self, worker, num_workers=1):
        w = jnp.asarray(worker, jnp.int32)
        draws = self.sample(jax.random.key(0), jnp.broadcast_to(w, (4096,) + w.shape), num_workers)
        return jnp.mean(draws, 0)


def fixed(time=1.0) -> Fixed:
    r"""Constant compute time: every job takes :math:`T = t`.

    Args:
        time: the compute time ``t > 0`` (a number or a traced scalar).

    Returns:
        A :class:`Fixed` model.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from asgd_jax import timing
        >>> timing.fixed(2.0).sample(jax.random.key(0), jnp.arange(3))
        Array([2., 2., 2.], dtype=float32)
    """
    _checks.check_number("fixed(time)", time, positive=True)
    return Fixed(time)


def normal(mean=1.0, std=0.2) -> Normal:
    r"""Normal compute times truncated to positive values.

    :math:`T \sim \mathcal N(\mu, \sigma^2)` conditioned on :math:`T > 0`; with
    :math:`\alpha = -\mu/\sigma` its expectation is
    :math:`\mu + \sigma\,\varphi(\alpha)/(1 - \Phi(\alpha))` (just :math:`\mu`
    when :math:`\mu \gg \sigma`). ``std = 0`` gives the fixed time ``mean``.
    Jain et al.'s Monte Carlo (2018, Figure 1) uses ``normal(1.0, 0.2)``.

    Args:
        mean: :math:`\mu > 0`.
        std: :math:`\sigma \ge 0`.

    Returns:
        A :class:`Normal` model.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from asgd_jax import timing
        >>> t = timing.normal(1.0, 0.2).sample(jax.random.key(0), jnp.zeros(10000, int))
        >>> bool(t.min() > 0), round(float(t.mean()), 1)
        (True, 1.0)
    """
    _checks.check_number("normal(mean)", mean, positive=True)
    _checks.check_number("normal(std)", std, minimum=0.0)
    return Normal(mean, std)


def exponential(mean=1.0) -> Exponential:
    r"""Exponential compute times: :math:`T \sim \mathrm{Exp}(1/\mu)`, :math:`E[T] = \mu`.

    Args:
        mean: :math:`\mu > 0`.

    Returns:
        An :class:`Exponential` model.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from asgd_jax import timing
        >>> t = timing.exponential(2.0).sample(jax.random.key(0), jnp.zeros(20000, int))
        >>> round(float(t.mean()), 1)
        2.0
    """
    _checks.check_number("exponential(mean)", mean, positive=True)
    return Exponential(mean)


def lognormal(mean=1.0, sigma=0.5) -> LogNormal:
    r"""Log-normal compute times parameterised by their mean.

    :math:`T = \mu \exp(\sigma Z - \sigma^2/2)` with :math:`Z \sim \mathcal N(0, 1)`,
    so :math:`E[T] = \mu` and :math:`\log T` has standard deviation :math:`\sigma`.
    **(choice)** ``mean`` is the mean of :math:`T` (not of :math:`\log T`), so that
    :func:`per_worker` scales stay mean compute times for every base model.

    Args:
        mean: :math:`\mu > 0`, the expected time.
        sigma: :math:`\sigma \ge 0`, the spread of :math:`\log T`.

    Returns:
        A :class:`LogNormal` model.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from asgd_jax import timing
        >>> t = timing.lognormal(1.0, 0.5).sample(jax.random.key(0), jnp.zeros(20000, int))
        >>> round(float(t.mean()), 1)
        1.0
    """
    _checks.check_number("lognormal(mean)", mean, positive=True)
    _checks.check_number("lognormal(sigma)", sigma, minimum=0.0)
    return LogNormal(mean, sigma)


def uniform(low=0.5, high=1.5) -> Uniform:
    r"""Uniform compute times: :math:`T \sim U[a, b)`, :math:`E[T] = (a + b)/2`.

    Args:
        low: :math:`a > 0`.
        high: :math:`b \ge a`.

    Returns:
        A :class:`Uniform` model.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from asgd_jax import timing
        >>> t = timing.uniform(1.0, 3.0).sample(jax.random.key(0), jnp.zeros(1000, int))
        >>> bool(t.min() >= 1.0), bool(t.max() < 3.0)
        (True, True)
    """
    _checks.check_number("uniform(low)", low, positive=True)
    _checks.check_number("uniform(high)", high, positive=True)
    lo, hi = _checks.concrete(low), _checks.concrete(high)
    if lo is not None and hi is not None and not (hi >= lo).all():
        raise ValueError(f"uniform needs low <= high, got low={low!r}, high={high!r}.")
    return Uniform(low, high)


def per_worker(base: TimingModel | float, scales) -> PerWorker:
    r"""Heterogeneous workers: worker ``i``'s time is ``scales[i]`` times a draw of ``base``.

    :math:`T_i = s_i \cdot T` with :math:`T \sim` ``base``; with a base of mean 1
    (``fixed(1.0)``, ``exponential(1.0)``, ...), :math:`s_i` is worker ``i``'s mean
    compute time, as in AsGrad's experiments (``s_i = 1, 2, ..., 10``;
    docs/methods.md). Give ``scales`` one entry per worker up to the
    simulator's ``max_workers`` (the event model refuses fewer).

    Args:
        base: any model (or a number, meaning ``fixed(number)``).
        scales: positive array of per-worker factors ``s_i``.

    Returns:
        A :class:`PerWorker` model.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from asgd_jax import timing
        >>> model = timing.per_worker(timing.fixed(1.0), jnp.arange(1.0, 4.0))
        >>> model.sample(jax.random.key(0), jnp.arange(3))
        Array([1., 2., 3.], dtype=float32)
    """
    _checks.check_number("per_worker(scales)", scales, positive=True)
    _refuse_clock("per_worker", as_timing(base))
    return PerWorker(as_timing(base), scales)


def stragglers(base: TimingModel | float, fraction=0.1, slowdown=5.0) -> Stragglers:
    r"""Persistent stragglers: a fraction ``p`` of the workers is ``c`` times slower.

    With ``n`` workers, the last :math:`k = \lfloor p n + 1/2 \rfloor` workers
    (ids ``n - k, ..., n - 1``) are stragglers: :math:`T_i = c \cdot T` for them
    and :math:`T_i = T` for the others, :math:`T \sim` ``base``. **(choice)** The
    stragglers are fixed worker ids (the last ones, so that growing ``p`` only adds
    stragglers) rather than a random subset; combine with :func:`per_worker` for
    any other pattern. ``n`` is the total worker count the simulator passes (not
    the number of workers active during a gradual introduction).

    Args:
        base: any model (or a number, meaning ``fixed(number)``).
        fraction: :math:`p \in [0, 1]`.
        slowdown: :math:`c > 0` (``c > 1`` slows the stragglers down).

    Returns:
        A :class:`Stragglers` model.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from asgd_jax import timing
        >>> model = timing.stragglers(timing.fixed(1.0), fraction=0.25, slowdown=10.0)
        >>> model.sample(jax.random.key(0), jnp.arange(8), num_workers=8)
        Array([ 1.,  1.,  1.,  1.,  1.,  1., 10., 10.], dtype=float32)
    """
    _checks.check_number("stragglers(fraction)", fraction, minimum=0.0)
    c = _checks.concrete(fraction)
    if c is not None and not (c <= 1).all():
        raise ValueError(f"stragglers(fraction) must be in [0, 1], got {fraction!r}.")
    _checks.check_number("stragglers(slowdown)", slowdown, positive=True)
    _refuse_clock("stragglers", as_timing(base))
    return Stragglers(as_timing(base), fraction, slowdown)


def failing(base: TimingModel | float, worker, fail_at, return_at=float("inf")) -> Failing:
    r"""A failure: worker ``worker`` is down during :math:`[t_f, t_r)`; the others are unaffected.

    A job that ``worker`` starts at ``now`` and that takes :math:`T` (a draw of
    ``base``) finishes at ``now + T`` if that is at most :math:`t_f`; otherwise its
    work is lost and redone once the worker is back: it finishes at
    :math:`t_r + T'`, :math:`T'` the base time of a job started at :math:`t_r`
    (the same draw for a base that ignores the clock), and at :math:`\infty` when
    :math:`t_r = \infty` (the worker never returns). A job started at or after
    :math:`t_r` takes :math:`T`. Every system then handles the failure its own
    way: asynchronous ones train on with the other workers (the lost job arrives
    late, very stale, or never), synchronous rounds wait for the worker (the
    clock stalls until :math:`t_r + T'`, for ever if it never returns).
    Several failures: nest ``failing`` (the outer one sees the inner one's
    times). Keep ``failing`` outside :func:`per_worker` and :func:`stragglers`
    (they scale ``base.sample``, which ignores the clock). ``expected`` is the
    base's (the time while up).

    Args:
        base: any model (or a number, meaning ``fixed(number)``).
        worker: the failing worker's id (``>= 0``; the event model refuses ids
            it does not have).
        fail_at: :math:`t_f \ge 0`.
        return_at: :math:`t_r \ge t_f` (default ``inf``: never returns).

    Returns:
        A :class:`Failing` model (all numbers may be traced).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from asgd_jax import timing
        >>> model = timing.failing(timing.fixed(1.0), worker=2, fail_at=2.5, return_at=10.0)
        >>> model.sample_at(jax.random.key(0), jnp.arange(3), 3, 2.0)    # worker 2's job is lost: 10 + 1 - 2
        Array([1., 1., 9.], dtype=float32)
        >>> model.sample_at(jax.random.key(0), jnp.arange(3), 3, 1.0)    # finishes at 2 <= 2.5
        Array([1., 1., 1.], dtype=float32)
    """
    _checks.check_int("failing(worker)", worker, 0)
    _checks.check_number("failing(fail_at)", fail_at, minimum=0.0)
    r = _checks.concrete(return_at)
    if r is not None:
        try:
            r = np.asarray(r, np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"failing(return_at) must be a number, got {return_at!r}.") from None
        if r.shape != () or np.isnan(r):
            raise ValueError(f"failing(return_at) must be a number (inf: never returns), got {return_at!r}.")
        f = _checks.concrete(fail_at)
        if f is not None and not r >= f:
            raise ValueError(f"failing: the worker returns (return_at={return_at!r}) before it fails "
                             f"(fail_at={fail_at!r}); give return_at >= fail_at.")
    if _checks.concrete(fail_at) is not None and np.shape(fail_at) != ():
        raise ValueError(f"failing(fail_at) must be one number, got {fail_at!r}; nest failing for more failures.")
    return Failing(as_timing(base), worker, fail_at, return_at)


def pareto(scale=1.0, alpha=2.0) -> Pareto:
    r"""Heavy-tailed Pareto compute times: :math:`T = s\,U^{-1/\alpha}`, :math:`U \sim U(0, 1]`.

    :math:`P(T > t) = (s/t)^\alpha` for :math:`t \ge s`: the minimum time is :math:`s`,
    :math:`E[T] = \alpha s/(\alpha - 1)` for :math:`\alpha > 1` (infinite otherwise) and the
    variance is infinite for :math:`\alpha \le 2`. MindFlayer SGD (Maranjyan et al. 2025) targets
    such laws; the log-normal with a large :math:`\sigma` is the other heavy tail here.

    Args:
        scale: :math:`s > 0`, the smallest possible time.
        alpha: the tail index :math:`\alpha > 0` (smaller: heavier tail).

    Returns:
        A :class:`Pareto` model (both numbers may be traced).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from asgd_jax import timing
        >>> model = timing.pareto(scale=1.0, alpha=3.0)
        >>> t = model.sample(jax.random.key(0), jnp.zeros(100000, int))
        >>> bool(t.min() >= 1.0), round(float(t.mean()), 1), float(model.expected(0))
        (True, 1.5, 1.5)
    """
    _checks.check_number("pareto(scale)", scale, positive=True)
    _checks.check_number("pareto(alpha)", alpha, positive=True)
    return Pareto(scale, alpha)


def _check_profile(name: str, breakpoints, speeds, period) -> None:
    """One-line errors for a concrete speed profile (see :func:`piecewise_speed`)."""
    _checks.check_number(f"{name}(breakpoints)", breakpoints, minimum=0.0)
    _checks.check_number(f"{name}(speeds)", speeds, minimum=0.0)
    b, v, p = (_checks.concrete(x) for x in (breakpoints, speeds, period))
    if b is not None:
        if b.ndim != 1 or b.shape[0] < 1 or b[0] != 0 or not np.all(np.diff(b) > 0):
            raise ValueError(f"{name}(breakpoints) must be a 1-D increasing array starting at 0, got {breakpoints!r}.")
    if v is not None and (v.ndim not in (1, 2) or (b is not None and v.shape[-1] != b.shape[0])):
        raise ValueError(f"{name}(speeds) must have one speed per segment (shape [K] or [workers, K]), "
                         f"got shape {v.shape}.")
    if p is not None:
        p = np.asarray(p, np.float64)
        if p.shape != () or np.isnan(p) or (b is not None and not p > b[-1]):
            raise ValueError(f"{name}(period) must be a number past the last breakpoint (inf: not periodic), "
                             f"got {period!r}.")
        if v is not None and np.isinf(p) and not np.all(v[..., -1] > 0):
            raise ValueError(f"{name}: the last speed must be > 0 (a job would never finish); use failing() "
                             "for a worker that leaves for good.")
        if v is not None and np.isfinite(p) and not np.all(v.sum(-1) > 0):
            raise ValueError(f"{name}: a periodic profile needs a positive speed somewhere in the period.")


def piecewise_speed(base: TimingModel | float, breakpoints, speeds, period=float("inf")) -> TimeVarying:
    r"""Time-varying speeds (Tyurin's universal computation model) with piecewise-constant speeds.

    Worker :math:`i` computes at speed :math:`v_i(t)` (work per unit time),
    :math:`v_i(t) = v_{ik}` for :math:`b_k \le t < b_{k+1}` (the last value holds for
    ever, or the profile repeats every ``period``). A job of work :math:`W` (a draw
    of ``base``: its time at speed 1) started at :math:`t_0` ends at the first
    :math:`t` with

    .. math:: \int_{t_0}^{t} v_i(s)\,ds = W.

    A zero speed is an outage (the job waits); per-worker differences in work go
    in ``base`` (e.g. :func:`per_worker`). ``expected`` is the base's (the time at
    speed 1). Nest it inside :func:`failing` if you like; keep it outside
    :func:`per_worker`, :func:`stragglers` and :func:`budgeted` (they ignore the
    clock, and refuse it).

    Args:
        base: the work of one job (any clock-free model, or a number).
        breakpoints: ``[K]`` segment starts :math:`0 = b_0 < b_1 < \dots`.
        speeds: ``[K]`` (all workers) or ``[workers, K]`` speeds :math:`v \ge 0`.
        period: :math:`P > b_{K-1}` to repeat the profile every :math:`P`
            (segment :math:`K-1` lasts until :math:`P`); ``inf``: no repetition.

    Returns:
        A :class:`TimeVarying` model (every number may be traced).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from asgd_jax import timing
        >>> model = timing.piecewise_speed(2.0, breakpoints=[0.0, 2.0], speeds=[1.0, 0.5])
        >>> # started at 1: one unit of work by 2, the second at speed 1/2 by 4
        >>> model.sample_at(jax.random.key(0), jnp.arange(1), 1, 1.0)
        Array([3.], dtype=float32)
    """
    _check_profile("piecewise_speed", breakpoints, speeds, period)
    return TimeVarying(as_timing(base), breakpoints, speeds, period)


def periodic_speed(base: TimingModel | float, period, speeds) -> TimeVarying:
    r"""Periodic speeds: ``K`` equal segments of a period :math:`P` (day and night, a shared machine).

    :math:`v_i(t) = v_{ik}` for :math:`t \bmod P \in [kP/K, (k+1)P/K)`; a job of
    work :math:`W` ends when :math:`\int v = W` (:func:`piecewise_speed`).

    Args:
        base: the work of one job (clock-free model or number).
        period: :math:`P > 0`.
        speeds: ``[K]`` or ``[workers, K]`` speeds :math:`\ge 0`, some positive.

    Returns:
        A :class:`TimeVarying` model.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from asgd_jax import timing
        >>> model = timing.periodic_speed(3.0, period=4.0, speeds=[1.0, 0.0])  # idle half the time
        >>> model.sample_at(jax.random.key(0), jnp.arange(1), 1, 1.0)         # work 1..2, 4..6
        Array([5.], dtype=float32)
    """
    _checks.check_number("periodic_speed(period)", period, positive=True)
    k = np.shape(speeds)[-1] if np.ndim(speeds) else 1
    breakpoints = jnp.asarray(period, jnp.float32) * jnp.arange(k, dtype=jnp.float32) / k
    _check_profile("periodic_speed", np.arange(k) / k if _checks.concrete(period) is None else breakpoints,
                   speeds, period if _checks.concrete(period) is not None else 1.0)
    return TimeVarying(as_timing(base), breakpoints, speeds, period)


def random_walk_speed(base: TimingModel | float, key, num_steps: int, *, step=1.0, sigma=0.5,
                      workers: int = 1) -> TimeVarying:
    r"""Speeds that follow a geometric random walk: :math:`\log v` moves by :math:`\sigma Z` every ``step``.

    Worker :math:`i`: :math:`v_{i0} = 1`, :math:`\log v_{i,k+1} = \log v_{ik} + \sigma Z_{ik}`,
    :math:`Z_{ik} \sim \mathcal N(0, 1)` independent, on segments :math:`[k\delta, (k+1)\delta)`
    (:math:`\delta` = ``step``) for ``num_steps`` segments; the last speed holds afterwards.
    The walk is drawn once, from ``key`` (a pytree like any other model, so a vmapped sweep may
    give every config its own walk); the job's work is a draw of ``base``.

    Args:
        base: the work of one job (clock-free model or number).
        key: PRNG key or int seed of the walk.
        num_steps: static number of segments ``K >= 1``.
        step: segment length :math:`\delta > 0`.
        sigma: :math:`\sigma \ge 0` (0: constant speed 1).
        workers: static number of rows (one walk per worker).

    Returns:
        A :class:`TimeVarying` model.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from asgd_jax import timing
        >>> model = timing.random_walk_speed(1.0, key=0, num_steps=100, step=0.5, sigma=0.3, workers=4)
        >>> model.speeds.shape, bool((model.speeds[:, 0] == 1).all())
        ((4, 100), True)
        >>> t = model.sample_at(jax.random.key(1), jnp.arange(4), 4, 10.0)
        >>> bool((t > 0).all())
        True
    """
    num_steps = _checks.python_int("random_walk_speed(num_steps)", num_steps, 1)
    workers = _checks.python_int("random_walk_speed(workers)", workers, 1)
    _checks.check_number("random_walk_speed(step)", step, positive=True)
    _checks.check_number("random_walk_speed(sigma)", sigma, minimum=0.0)
    z = jax.random.normal(_checks.as_key(key), (workers, num_steps - 1), jnp.float32)
    log_v = jnp.concatenate([jnp.zeros((workers, 1)), jnp.cumsum(_f32(sigma) * z, -1)], -1)
    breakpoints = _f32(step) * jnp.arange(num_steps, dtype=jnp.float32)
    return TimeVarying(as_timing(base), breakpoints, jnp.exp(log_v), jnp.inf)


def budgeted(base: TimingModel | float, budget, attempts: int = 32) -> Budgeted:
    r"""Time budgets: an attempt longer than the budget is abandoned and restarted until one succeeds.

    Worker :math:`i` draws attempt times :math:`T_1, T_2, \dots` from ``base``; an
    attempt with :math:`T_j > t_i` is stopped at :math:`t_i` and a new one starts
    (a fresh sample, so the gradient is a new draw too). The job takes

    .. math:: (J - 1)\,t_i + T_J, \qquad J = \min\{j : T_j \le t_i\},

    and :math:`\infty` if none of the first ``attempts`` succeeds (so a budget
    below a fixed time never finishes). With a heavy-tailed base this cuts the
    tail at the price of restarts. ``expected`` is a Monte Carlo mean (4096
    draws, a fixed key). This is MindFlayer SGD's timeout ("if the timeout
    expires, resend the request") as a clock for any server; MindFlayer itself
    makes a fixed number of attempts per worker and round and keeps only the
    successful ones: :func:`asgd_jax.mindflayer`.

    Args:
        base: a clock-free model (or a number).
        budget: :math:`t_i > 0`, one number or one per worker.
        attempts: static cap on the attempts of one job (``>= 1``).

    Returns:
        A :class:`Budgeted` model (``budget`` may be traced).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from asgd_jax import timing
        >>> model = timing.budgeted(timing.pareto(1.0, 0.8), budget=2.0)   # infinite-mean times
        >>> t = model.sample(jax.random.key(0), jnp.zeros(50000, int))
        >>> bool(jnp.isfinite(t).all()), round(float(t.mean()), 1)   # 2 (1 - p)/p + E[T | T <= 2]
        (True, 4.1)
    """
    _refuse_clock("budgeted", as_timing(base))
    _checks.check_number("budgeted(budget)", budget, positive=True)
    attempts = _checks.python_int("budgeted(attempts)", attempts, 1)
    return Budgeted(as_timing(base), budget, attempts)


def as_timing(model) -> TimingModel:
    """Returns ``model`` itself if it is a :class:`TimingModel`, else ``fixed(model)``.

    Example:
        >>> from asgd_jax import timing
        >>> timing.as_timing(2.0)
        Fixed(time=2.0)
    """
    if isinstance(model, TimingModel):
        return model
    if model is None:
        raise ValueError("timing must be a compute-time model (asgd_jax.timing) or a positive number, got None.")
    _checks.check_number("timing", model, positive=True)
    return Fixed(model)


def from_name(name: str, mean=1.0, spread=0.0) -> TimingModel:
    r"""A base law by name, parameterised by its location ``mean`` and a ``spread``.

    ======================  ============================================
    ``name``                model
    ======================  ============================================
    ``"fixed"``             ``fixed(mean)`` (``spread`` unused)
    ``"normal"``            ``normal(mean, std=spread)``
    ``"exponential"``       ``exponential(mean)`` (``spread`` unused)
    ``"lognormal"``         ``lognormal(mean, sigma=spread)``
    ``"uniform"``           ``uniform(mean - spread, mean + spread)``
    ======================  ============================================

    The one place where a name (a command-line option, a config field) becomes a
    model; ``mean`` and ``spread`` may be traced.

    Args:
        name: one of :data:`LAWS`.
        mean: the location :math:`\mu` (the mean, except for the truncated normal,
            whose mean is slightly above :math:`\mu` when :math:`\sigma` is large).
        spread: the normal's standard deviation, the log-normal's :math:`\sigma`
            or the uniform's half-width.

    Raises:
        ValueError: an unknown name.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from asgd_jax import timing
        >>> timing.from_name("uniform", 2.0, 0.5)
        Uniform(low=1.5, high=2.5)
        >>> timing.from_name("fixed", 3.0).sample(jax.random.key(0), jnp.arange(2))
        Array([3., 3.], dtype=float32)
    """
    if name == "fixed":
        return fixed(mean)
    if name == "normal":
        return normal(mean, spread)
    if name == "exponential":
        return exponential(mean)
    if name == "lognormal":
        return lognormal(mean, spread)
    if name == "uniform":
        return uniform(mean - spread, mean + spread)
    raise ValueError(f"unknown timing law {name!r}; choose one of {', '.join(LAWS)}.")
