r"""Communication times: links with a latency and a bandwidth, a parameter server's congested link.

A message of :math:`B` bytes between two ends costs the latencies of both ends
plus :math:`B` times the slower end's time per byte (:math:`1/\text{bandwidth}`):

* worker :math:`w` :math:`\leftrightarrow` server:
  :math:`\ell_w + \ell_S + B \max(\beta_w, \beta_S)`;
* worker :math:`i \leftrightarrow j`: :math:`\ell_i + \ell_j + B \max(\beta_i, \beta_j)`;
* ring all-reduce over :math:`n` workers: :math:`2(n-1)` steps that each move
  :math:`B/n` over every ring link at once and last as long as the slowest link,
  :math:`2(n-1)\max_i\big(\ell_i + \ell_{i+1} + \tfrac{B}{n}\max(\beta_i, \beta_{i+1})\big)`
  (so :math:`2\tfrac{n-1}{n} B/\text{bandwidth}` plus latencies on equal links).

A parameter server serves its link **one message at a time**
(:func:`serve`): pulls and pushes queue up behind each other, so its throughput
caps and staleness grows as workers are added. :func:`asgd_jax.asynchronous`,
:func:`asgd_jax.synchronous` and the decentralized systems
(:mod:`asgd_jax.decentralized`) take a :class:`Network`; every field is an array
in their state, so a sweep over bandwidth is one program. With zero latency and
infinite bandwidth every time is that of the system without a network.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from asgd_jax import _checks

__all__ = ["Network", "Link", "network", "link", "tree_bytes", "with_size", "server_message_time", "peer_message_time",
           "ring_allreduce_time", "serve", "fifo_finish"]


class Network(NamedTuple):
    r"""Link parameters (float32 arrays; per-worker fields are scalars or ``[P]`` vectors).

    Attributes:
        latency: each worker's link latency :math:`\ell_w`.
        byte_time: each worker's time per byte :math:`\beta_w = 1/\text{bandwidth}` (0: unlimited).
        server_latency: the server link's latency :math:`\ell_S`.
        server_byte_time: the server link's time per byte :math:`\beta_S`.
        model_bytes: bytes :math:`B` of one message (a model or a gradient); NaN until a
            transform's ``init`` fills it from the parameters (:func:`with_size`).
    """

    latency: jax.Array
    byte_time: jax.Array
    server_latency: jax.Array
    server_byte_time: jax.Array
    model_bytes: jax.Array


class Link(NamedTuple):
    """The communication part of a system's state.

    Attributes:
        network: the :class:`Network` (per-worker fields ``[P]``, ``model_bytes`` known).
        free: float32, when the server's link is next free (unused by systems without a server).
        messages: int32, model-sized messages sent so far (an all-reduce of :math:`n` workers
            counts :math:`2(n-1)`).
    """

    network: Network
    free: jax.Array
    messages: jax.Array

    @property
    def bytes_sent(self) -> jax.Array:
        """Bytes sent so far, ``messages * model_bytes`` (float32)."""
        return self.messages.astype(jnp.float32) * self.network.model_bytes


def link(net: Network | None, params, size: int, *, per_worker_axis: bool = False) -> Link | None:
    """A fresh :class:`Link` for ``net`` (``None`` without a network): link free at time 0, nothing sent."""
    if net is None:
        return None
    return Link(network=with_size(net, params, size, per_worker_axis=per_worker_axis),
                free=jnp.zeros([], jnp.float32), messages=jnp.zeros([], jnp.int32))


def _byte_time(name, bandwidth):
    c = _checks.concrete(bandwidth)
    if c is not None:
        try:
            c = np.asarray(c, np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be a number of bytes per time unit, got {bandwidth!r}.") from None
        if c.ndim > 1 or np.any(np.isnan(c)) or not np.all(c > 0):
            raise ValueError(f"{name} must be > 0 bytes per time unit (inf: no transfer cost), got {bandwidth!r}.")
    return (1.0 / jnp.asarray(bandwidth, jnp.float32)).astype(jnp.float32)


def network(latency=0.0, bandwidth=float("inf"), *, server_latency=0.0, server_bandwidth=float("inf"),
            model_bytes=None) -> Network:
    r"""A :class:`Network`: latencies (time units) and bandwidths (bytes per time unit).

    Args:
        latency: each worker's link latency, a number or one per worker (>= 0).
        bandwidth: each worker's link bandwidth, a number or one per worker (> 0;
            ``inf``: no transfer cost). A slower link for chosen workers: a vector.
        server_latency: the parameter server link's latency (>= 0).
        server_bandwidth: the parameter server link's bandwidth (> 0); e.g.
            ``bandwidth / n`` for a server link shared by ``n`` workers.
        model_bytes: bytes of one message; ``None``: the parameters' size, filled
            in by the transform's ``init`` (:func:`tree_bytes`).

    Example:
        >>> from asgd_jax import network
        >>> net = network.network(latency=0.1, bandwidth=1000.0, model_bytes=400)
        >>> round(float(network.server_message_time(net, 0)), 6)     # 0.1 + 400 / 1000
        0.5
    """
    for name, value in (("latency", latency), ("server_latency", server_latency)):
        _checks.check_number(name, value, minimum=0.0)
        c = _checks.concrete(value)
        if c is not None and c.ndim > (1 if name == "latency" else 0):
            raise ValueError(f"{name} must be a number{' or one per worker' if name == 'latency' else ''}.")
    if model_bytes is not None:
        _checks.check_number("model_bytes", model_bytes, minimum=0.0)
    return Network(
        latency=jnp.asarray(latency, jnp.float32), byte_time=_byte_time("bandwidth", bandwidth),
        server_latency=jnp.asarray(server_latency, jnp.float32),
        server_byte_time=_byte_time("server_bandwidth", server_bandwidth).reshape(()),
        model_bytes=jnp.asarray(jnp.nan if model_bytes is None else model_bytes, jnp.float32))


def tree_bytes(params) -> int:
    """Bytes of a pytree of arrays (every leaf's size times its item size).

    Example:
        >>> import jax.numpy as jnp
        >>> from asgd_jax.network import tree_bytes
        >>> tree_bytes({"w": jnp.zeros((3, 4)), "b": jnp.zeros(4, jnp.float16)})
        56
    """
    itemsize = lambda x: np.dtype(x.dtype).itemsize if hasattr(x, "dtype") else jnp.result_type(x).itemsize
    return int(sum(np.prod(np.shape(x), dtype=np.int64) * itemsize(x)
                   for x in jax.tree.leaves(params)))


def check(net: Network | None, size: int) -> None:
    """One-line ``ValueError`` unless ``net`` is ``None`` or a :class:`Network` with a value per worker."""
    if net is None:
        return
    if not isinstance(net, Network):
        raise ValueError(f"network must be an asgd_jax.network.Network (asgd_jax.network.network(...)), "
                         f"got {type(net).__name__}.")
    for name in ("latency", "byte_time"):
        c = _checks.concrete(getattr(net, name))
        if c is not None and c.ndim == 1 and c.shape[0] < size:
            what = "latencies" if name == "latency" else "bandwidths"
            raise ValueError(f"the network has {c.shape[0]} {what} for {size} workers; give one each.")


def with_size(net: Network, params, size: int, *, per_worker_axis: bool = False) -> Network:
    """``net`` with per-worker fields broadcast to ``[size]`` and ``model_bytes`` filled from ``params``
    if unknown (``per_worker_axis``: ``params`` has a leading worker axis, one model is one row)."""
    check(net, size)
    per = lambda x: jnp.broadcast_to(x, (size,)) if jnp.ndim(x) == 0 else x[:size]
    model = tree_bytes(params) // (size if per_worker_axis else 1)
    known = net.model_bytes
    return net._replace(latency=per(net.latency), byte_time=per(net.byte_time),
                        model_bytes=jnp.where(jnp.isnan(known), jnp.float32(model), known).astype(jnp.float32))


def server_message_time(net: Network, worker) -> jax.Array:
    r"""Time of one message between ``worker`` and the server: :math:`\ell_w + \ell_S + B\max(\beta_w, \beta_S)`."""
    pick = lambda x: x if jnp.ndim(x) == 0 else x[worker]
    return (pick(net.latency) + net.server_latency
            + _transfer(net.model_bytes, jnp.maximum(pick(net.byte_time), net.server_byte_time)))


def peer_message_time(net: Network, i, j) -> jax.Array:
    r"""Time of one message between workers ``i`` and ``j``: :math:`\ell_i + \ell_j + B\max(\beta_i, \beta_j)`."""
    pick = lambda x, w: x if jnp.ndim(x) == 0 else x[w]
    return (pick(net.latency, i) + pick(net.latency, j)
            + _transfer(net.model_bytes, jnp.maximum(pick(net.byte_time, i), pick(net.byte_time, j))))


def _transfer(size, byte_time):
    """``size * byte_time``, 0 when the link is unlimited (also for an unknown size)."""
    return jnp.where(byte_time > 0, size * byte_time, 0.0).astype(jnp.float32)


def ring_allreduce_time(net: Network, workers) -> jax.Array:
    r"""Ring all-reduce over workers ``0 .. n-1``: :math:`2(n-1)` steps, each as slow as the slowest ring link.

    Example:
        >>> from asgd_jax import network
        >>> net = network.network(latency=0.0, bandwidth=100.0, model_bytes=300)
        >>> round(float(network.ring_allreduce_time(net, 3)), 6)   # 2 * 2 * (300 / 3) / 100
        4.0
    """
    n = jnp.asarray(workers, jnp.int32)
    size = 1 if jnp.ndim(net.latency) == 0 else net.latency.shape[0]
    ids = jnp.arange(size, dtype=jnp.int32)
    nxt = jnp.where(ids + 1 >= n, 0, ids + 1)
    chunk = net.model_bytes / n.astype(jnp.float32)
    per = lambda x, w: jnp.broadcast_to(x, (size,)) if jnp.ndim(x) == 0 else x[w]
    link = (per(net.latency, ids) + per(net.latency, nxt)
            + _transfer(chunk, jnp.maximum(per(net.byte_time, ids), per(net.byte_time, nxt))))
    slowest = jnp.max(jnp.where(ids < n, link, 0.0))
    return jnp.where(n > 1, 2.0 * (n - 1).astype(jnp.float32) * slowest, 0.0).astype(jnp.float32)


def serve(link_free, request, duration) -> tuple[jax.Array, jax.Array]:
    """One message on a link serving one at a time: it starts at ``max(request, link_free)``.

    Returns ``(done, new link_free)`` (the same time)."""
    done = jnp.maximum(request, link_free) + duration
    return done, done


def fifo_finish(ready, duration, link_free) -> jax.Array:
    r"""End times of messages served first-come first-served on one link, in the given order.

    :math:`d_k = \max(r_k, d_{k-1}) + t_k` with :math:`d_0` = ``link_free``, in
    closed form :math:`d_k = S_k + \max(d_0, \max_{j \le k}(r_j - S_{j-1}))`,
    :math:`S_k = \sum_{l \le k} t_l` (vectorized, no loop).

    Example:
        >>> import jax.numpy as jnp
        >>> from asgd_jax.network import fifo_finish
        >>> fifo_finish(jnp.array([1.0, 1.0, 5.0]), jnp.array([2.0, 2.0, 2.0]), 0.0).tolist()
        [3.0, 5.0, 7.0]
    """
    s = jnp.cumsum(duration)
    start = jax.lax.cummax(ready - (s - duration))
    return s + jnp.maximum(link_free, start)
