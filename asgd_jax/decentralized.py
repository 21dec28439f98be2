r"""Decentralized SGD: one model per worker, no parameter server (AD-PSGD, D-PSGD).

The parameters carry a **leading worker axis**: leaf ``x`` of shape ``[n, ...]``
holds :math:`x_1, \dots, x_n` (build them with :func:`replicate`). As for the
parameter-server systems, **one ``update`` call = one gradient**: the training
loop computes it at :func:`worker_params` (the model of worker
:func:`asgd_jax.next_worker`, no worker axis) on that worker's data, and the
returned updates move every row that changed.

* :func:`ad_psgd` — asynchronous decentralized parallel SGD (Lian et al. 2018).
  Each worker computes a gradient at its own model as it was when the job
  started; **(choice)** when worker :math:`i`'s gradient :math:`g_i` arrives,
  :math:`i` first averages with one peer :math:`j`,
  :math:`x_i, x_j \leftarrow \tfrac12(x_i + x_j)`, then steps with its own
  optimizer, :math:`x_i \leftarrow x_i + \text{inner}_i(g_i)`. The averaging
  costs time on the :math:`i`–:math:`j` link only: :math:`i` starts its next job
  a :func:`~asgd_jax.network.peer_message_time` later. Peers: the bipartite
  exponential graph of the authors' code (``"exponential"``), a ``"ring"``,
  ``"random"`` or your own lists (:func:`peer_table`).
* :func:`dpsgd` — D-PSGD (Lian et al. 2017): synchronous rounds; once all
  :math:`n` gradients (each at its worker's round model) are in,
  :math:`x \leftarrow W x` with a doubly stochastic mixing matrix :math:`W`
  (:func:`mixing_matrix`), then every worker steps. The round waits for the
  slowest worker and for the gossip.
* AllReduce-SGD is :func:`asgd_jax.synchronous` with
  ``communication="allreduce"`` (one model: every worker holds the same).

Metrics: :func:`average_model` :math:`\bar x`, :func:`consensus_distance`
:math:`\frac1n\sum_i\|x_i - \bar x\|^2`; the states count ``bytes_sent``.
Methods and citations: ``docs/methods.md``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from asgd_jax import _checks, events
from asgd_jax import network as network_lib
from asgd_jax._buffers import write_then_read, find_state

__all__ = ["TOPOLOGIES", "PEERS", "DecentralizedState", "mixing_matrix", "peer_table", "ad_psgd", "dpsgd",
           "replicate", "average_model", "consensus_distance", "worker_params"]

TOPOLOGIES = ("ring", "torus", "complete")
PEERS = ("exponential", "ring", "random")


def _torus_shape(n: int) -> tuple[int, int]:
    r = max(d for d in range(1, int(np.sqrt(n)) + 1) if n % d == 0)
    if r < 3:
        raise ValueError(f"a torus needs n = r * c workers with r, c >= 3 (e.g. 9, 12, 16), got n={n}; "
                         "use topology='ring'.")
    return r, n // r


def mixing_matrix(topology, workers: int) -> np.ndarray:
    r"""A doubly stochastic mixing matrix :math:`W` (float64 ``[n, n]``) for D-PSGD.

    ``"ring"``: :math:`\tfrac13` on itself and on each neighbour :math:`i \pm 1`
    (:math:`n = 2`: all :math:`\tfrac12`); ``"torus"``: an :math:`r \times c` grid
    (:math:`r` the largest divisor of :math:`n` up to :math:`\sqrt n`, both
    :math:`\ge 3`) with wrap-around, :math:`\tfrac15` on itself and on its 4
    neighbours; ``"complete"``: all :math:`\tfrac1n`. An array is checked:
    square :math:`n \times n`, nonnegative, rows and columns summing to 1, and
    connected (second largest :math:`|\lambda| < 1`); otherwise a one-line
    ``ValueError``. Gossip alone, :math:`x \leftarrow Wx`, shrinks the distance
    to consensus by :math:`\lambda_2^2` per round (symmetric :math:`W`).

    Example:
        >>> from asgd_jax.decentralized import mixing_matrix
        >>> (mixing_matrix("ring", 4) * 3).round(6).tolist()
        [[1.0, 1.0, 0.0, 1.0], [1.0, 1.0, 1.0, 0.0], [0.0, 1.0, 1.0, 1.0], [1.0, 0.0, 1.0, 1.0]]
    """
    n = _checks.python_int("workers", workers, 1)
    if isinstance(topology, str):
        if topology not in TOPOLOGIES:
            raise ValueError(f"unknown topology {topology!r}; choose one of {TOPOLOGIES} or give a matrix.")
        w = np.zeros((n, n))
        if topology == "complete" or n <= 2 and topology == "ring":
            return np.full((n, n), 1.0 / n)
        if topology == "ring":
            for i in range(n):
                for j in (i - 1, i, i + 1):
                    w[i, j % n] = 1.0 / 3.0
            return w
        r, c = _torus_shape(n)
        for a in range(r):
            for b in range(c):
                i = a * c + b
                for aa, bb in ((a, b), ((a + 1) % r, b), ((a - 1) % r, b), (a, (b + 1) % c), (a, (b - 1) % c)):
                    w[i, aa * c + bb] = 0.2
        return w
    try:
        w = np.asarray(topology, np.float64)
    except (TypeError, ValueError):
        raise ValueError("a mixing matrix must be an n x n array of numbers.") from None
    if w.shape != (n, n):
        raise ValueError(f"the mixing matrix has shape {w.shape}; it must be {n} x {n} for {n} workers.")
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise ValueError("a mixing matrix must have finite, nonnegative entries.")
    if not (np.allclose(w.sum(0), 1, atol=1e-6) and np.allclose(w.sum(1), 1, atol=1e-6)):
        raise ValueError("the mixing matrix is not doubly stochastic: every row and column must sum to 1.")
    if n > 1 and np.sort(np.abs(np.linalg.eigvals(w)))[-2] >= 1 - 1e-6:
        raise ValueError("the mixing matrix does not connect every worker (an isolated worker or a split "
                         "graph never reaches consensus); add edges between the groups.")
    return w


def peer_table(peers, workers: int) -> np.ndarray:
    r"""Each worker's rotating list of peers for :func:`ad_psgd`, int32 ``[n, L]`` (rows padded by repeating).

    ``"exponential"``: the bipartite exponential graph of the AD-PSGD reference
    code: even ids are passive, odd ids active; for
    :math:`k = 0, \dots, \lfloor\log_2(n-1)\rfloor` the offset is 1 (:math:`k=0`)
    or :math:`1 + 2^k`, and peers :math:`i + \text{off}` then
    :math:`i - \text{off}` (mod :math:`n`) are added when both are on the other
    side (needs an even :math:`n`). ``"ring"``: :math:`i+1, i-1`.
    ``"random"``: a uniform other worker at each exchange (the table is unused).
    A list of ``n`` lists of ids is checked: no empty list (isolated worker), no
    worker listing itself, ids in range. Worker :math:`i`'s :math:`k`-th exchange
    uses entry :math:`k \bmod L_i` of its list.

    Example:
        >>> from asgd_jax.decentralized import peer_table
        >>> peer_table("exponential", 8).tolist()[:2]
        [[1, 7, 3, 5], [2, 0, 4, 6]]
    """
    n = _checks.python_int("workers", workers, 1)
    if isinstance(peers, str):
        if peers not in PEERS:
            raise ValueError(f"unknown peers {peers!r}; choose one of {PEERS} or give one list of peers per worker.")
        if n == 1:
            return np.zeros((1, 1), np.int32)
        if peers == "exponential" and n % 2:
            raise ValueError(f"the bipartite exponential graph pairs even and odd workers: it needs an even "
                             f"number of workers, got {n}; use peers='ring' or 'random'.")
        lists = []
        for i in range(n):
            row = []
            if peers == "exponential":
                for k in range(int(np.floor(np.log2(n - 1))) + 1):
                    off = 1 if k == 0 else 1 + 2 ** k
                    f, b = (i + off) % n, (i - off) % n
                    if f % 2 != i % 2 and b % 2 != i % 2:
                        row += [p for p in dict.fromkeys((f, b)) if p not in row]
            else:
                row = [p for p in dict.fromkeys([(i + 1) % n, (i - 1) % n])]
            lists.append(row)
    else:
        lists = [list(map(int, row)) for row in peers]
        if len(lists) != n:
            raise ValueError(f"give one list of peers per worker: {len(lists)} lists for {n} workers.")
        for i, row in enumerate(lists):
            if not row:
                raise ValueError(f"worker {i} has no peer (an isolated worker never averages); give it one.")
            if any(p == i for p in row) or any(not 0 <= p < n for p in row):
                raise ValueError(f"worker {i}'s peers {row} must be other workers' ids in [0, {n - 1}].")
    width = max(len(r) for r in lists)
    return np.array([[r[k % len(r)] for k in range(width)] for r in lists], np.int32)


def replicate(params, workers: int):
    """Every leaf stacked ``workers`` times on a new leading axis (all workers start from one model).

    Example:
        >>> import jax.numpy as jnp
        >>> from asgd_jax.decentralized import replicate
        >>> replicate({"w": jnp.ones(3)}, 4)["w"].shape
        (4, 3)
    """
    n = _checks.python_int("workers", workers, 1)
    return jax.tree.map(lambda p: jnp.broadcast_to(p, (n,) + jnp.shape(p)), params)


def average_model(params):
    r""":math:`\bar x = \frac1n \sum_i x_i` (the mean over the leading worker axis)."""
    return jax.tree.map(lambda x: jnp.mean(x, axis=0), params)


def consensus_distance(params) -> jax.Array:
    r""":math:`\frac1n\sum_i \|x_i - \bar x\|^2`, the squared norm over all leaves together.

    Example:
        >>> import jax.numpy as jnp
        >>> from asgd_jax.decentralized import consensus_distance
        >>> float(consensus_distance({"w": jnp.array([[0.0, 0.0], [2.0, 0.0]])}))   # (1 + 1) / 2
        1.0
    """
    leaves = jax.tree.leaves(params)
    n = leaves[0].shape[0]
    sq = sum(jnp.sum(jnp.square(x - jnp.mean(x, axis=0)).astype(jnp.float32)) for x in leaves)
    return sq / n


@events.reads_events
class DecentralizedState(NamedTuple):
    """State of :func:`ad_psgd` and :func:`dpsgd`.

    Attributes:
        events: the clock, jobs and next worker (:class:`asgd_jax.events.EventState`);
            ``version`` counts gradient steps (AD-PSGD) or rounds (D-PSGD).
        grads: in-flight gradients (AD-PSGD: one per pool slot) or the round's
            gradients (D-PSGD: one per worker; after a round's last call, that
            round's update, overwritten row by row in the next round), leading axis ``n``.
        inner_state: every worker's optimizer state (leading axis ``n``).
        exchanges: int32 ``[n]``, averagings each worker started (AD-PSGD).
        peers: int32 ``[n, L]`` peer lists (AD-PSGD) or float32 ``[n, n]`` mixing matrix (D-PSGD).
        link: the communication state (:class:`asgd_jax.network.Link`), ``None`` without a network.
    """

    events: events.EventState
    grads: Any
    inner_state: Any
    exchanges: jax.Array
    peers: jax.Array
    link: Any = None

    @property
    def bytes_sent(self) -> jax.Array:
        return jnp.zeros([], jnp.float32) if self.link is None else self.link.bytes_sent


def _check_params(params, n: int) -> None:
    for x in jax.tree.leaves(params):
        if jnp.ndim(x) < 1 or jnp.shape(x)[0] != n:
            raise ValueError(f"decentralized parameters need a leading axis of {n} workers (one model each), "
                             f"got a leaf of shape {jnp.shape(x)}; use asgd_jax.decentralized.replicate(params, {n}).")


def _row(tree, i):
    return jax.tree.map(lambda x: jax.lax.dynamic_index_in_dim(x, i, keepdims=False), tree)


def _set_row(tree, i, row):
    return jax.tree.map(lambda x, r: jax.lax.dynamic_update_index_in_dim(x, r.astype(x.dtype), i, 0), tree, row)


def _initializer(inner, n, peers, timing, network, key):
    """Validates the events and network now; returns ``init(params)`` of a :class:`DecentralizedState`."""
    make_events = lambda: events.init(n, timing=timing, key=key)
    make_events()
    network_lib.check(network, n)

    def init_fn(params):
        _check_params(params, n)
        return DecentralizedState(
            events=make_events(), grads=jax.tree.map(jnp.zeros_like, params),
            inner_state=jax.vmap(inner.init)(params), exchanges=jnp.zeros([n], jnp.int32), peers=peers,
            link=network_lib.link(network, params, n, per_worker_axis=True))

    return init_fn


def ad_psgd(inner: optax.GradientTransformation, workers: int, *, peers="exponential", timing=1.0,
            network: network_lib.Network | None = None, key=0) -> optax.GradientTransformationExtraArgs:
    r"""AD-PSGD (Lian et al. 2018) around each worker's optimizer ``inner`` (see the module docstring).

    The jobs follow :mod:`asgd_jax.events` with the pure rule (a worker starts
    its next job when it is done with the last one and its averaging); the
    first :math:`n-1` calls only fill the pool. With one worker this is plain
    SGD with ``inner``.

    Args:
        inner: every worker's optimizer (its state gets a leading worker axis).
        workers: :math:`n`, a Python int (the parameters' leading axis).
        peers: ``"exponential"``, ``"ring"``, ``"random"`` or one list of peer ids
            per worker (:func:`peer_table`).
        timing: compute-time model or a positive number.
        network: a :class:`asgd_jax.network.Network`: an averaging with peer
            :math:`j` delays worker :math:`i`'s next job by the
            :math:`i`–:math:`j` message time (``None``: free).
        key: PRNG key or int seed (compute times, random peers).

    Example:
        >>> import jax.numpy as jnp, optax
        >>> from asgd_jax import decentralized as dec, next_worker
        >>> targets = jnp.array([0.0, 4.0])                  # worker i's loss: (x - targets[i])^2 / 2
        >>> tx = dec.ad_psgd(optax.sgd(0.5), 2, peers="ring")
        >>> x = dec.replicate(jnp.zeros(()), 2)
        >>> state = tx.init(x)
        >>> for _ in range(3):
        ...     i = next_worker(state)
        ...     u, state = tx.update(dec.worker_params(state, x) - targets[i], state, x)
        ...     x = optax.apply_updates(x, u)
        >>> x.tolist()      # worker 0 stepped to 0, then worker 1 averaged (0) and stepped to 2
        [0.0, 2.0]
    """
    n = _checks.python_int("workers", workers, 1)
    table = None if peers == "random" else peer_table(peers, n)
    if peers == "random":
        peer_table(peers, n)  # validates the name
    inner = optax.with_extra_args_support(inner)
    init_fn = _initializer(inner, n, jnp.zeros([n, 1], jnp.int32) if table is None else jnp.asarray(table),
                           timing, network, key)

    def update_fn(updates, state: DecentralizedState, params=None, **extra_args):
        if params is None:
            raise ValueError("ad_psgd needs the stacked parameters: call update(grads, state, params).")
        ev, arrival = events.step(state.events, "pure")
        grads, g = write_then_read(state.grads, updates, arrival.new_slot, arrival.slot)
        i, arrived = arrival.worker, arrival.arrived
        k = state.exchanges[i]
        if table is None:  # a uniform other worker
            draw = jax.random.fold_in(ev.assign_key, ev.arrivals)  # a fresh key per exchange
            other = jax.random.randint(draw, (), 0, max(n - 1, 1), jnp.int32)
            j = jnp.where(n > 1, other + (other >= i), i).astype(jnp.int32)
        else:
            j = state.peers[i, k % state.peers.shape[1]]
        xi, xj, old = _row(params, i), _row(params, j), _row(state.inner_state, i)

        def exchange(xi, xj, old, g):  # x_i, x_j <- (x_i + x_j) / 2, then x_i steps: the two rows' changes
            avg = jax.tree.map(lambda a, b: (a + b) / 2, xi, xj)
            step, si = inner.update(g, old, avg, **extra_args)
            return (jax.tree.map(lambda a, x: a - x, avg, xj),
                    jax.tree.map(lambda a, u, x: a + u - x, avg, step, xi), si)

        # A cond, not a select: its rows are materialized (O(one model)), so the writes below are in place;
        # with the rows fused into them XLA:CPU copied all n models of params and inner_state per step.
        dj, di, si = jax.lax.cond(arrived, exchange, lambda xi, xj, old, g: (
            jax.tree.map(jnp.zeros_like, xj), jax.tree.map(jnp.zeros_like, xi), old), xi, xj, old, g)
        out = _set_row(_set_row(jax.tree.map(jnp.zeros_like, params), j, dj), i, di)
        inner_state = _set_row(state.inner_state, i, si)
        link = state.link
        if link is not None:
            free = arrival.time + network_lib.peer_message_time(link.network, i, j)
            busy = ev.busy_until.at[i].max(jnp.where(arrived, free, 0.0))
            ev = ev._replace(busy_until=busy)
            link = link._replace(messages=link.messages + 2 * (arrived & (i != j)).astype(jnp.int32))
        ev = events.record_step(ev, arrived, "pure")
        return out, DecentralizedState(
            events=ev, grads=grads, inner_state=inner_state,
            exchanges=state.exchanges.at[i].add(arrived.astype(jnp.int32)), peers=state.peers, link=link)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def dpsgd(inner: optax.GradientTransformation, workers: int, *, mixing="ring", timing=1.0,
          network: network_lib.Network | None = None, key=0) -> optax.GradientTransformationExtraArgs:
    r"""D-PSGD (Lian et al. 2017): synchronous rounds of gossip :math:`x \leftarrow Wx` and local steps.

    Calls come in rounds of :math:`n`: call :math:`p` is worker :math:`p`'s
    gradient at its round model :math:`x_p`. The round's last call applies
    :math:`x_i \leftarrow (Wx)_i + \text{inner}_i(g_i)` to every worker (with
    SGD, :math:`x \leftarrow Wx - \gamma G`); the others emit zero updates. The
    clock moves to the slowest worker's finish plus the gossip time
    :math:`\max_i \sum_{j \ne i, W_{ij} > 0} M_{ij}` (each worker sends its model
    to its neighbours one after another). Compute times of a round are drawn at
    its start, as in :func:`asgd_jax.synchronous`.

    Args:
        inner: every worker's optimizer.
        workers: :math:`n`, a Python int.
        mixing: ``"ring"``, ``"torus"``, ``"complete"`` or a doubly stochastic
            matrix (:func:`mixing_matrix`).
        timing: compute-time model or a positive number.
        network: a :class:`asgd_jax.network.Network` (``None``: gossip is free).
        key: PRNG key or int seed.

    Example:
        >>> import jax.numpy as jnp, optax
        >>> from asgd_jax import decentralized as dec
        >>> tx = dec.dpsgd(optax.sgd(1.0), 3, mixing="complete")
        >>> x = jnp.array([0.0, 3.0, 6.0])
        >>> state = tx.init(x)
        >>> for g in (1.0, 1.0, 1.0):
        ...     u, state = tx.update(jnp.array(g), state, x)
        >>> (x + u).tolist(), int(state.version)     # mean 3, minus one step
        ([2.0, 2.0, 2.0], 1)
    """
    n = _checks.python_int("workers", workers, 1)
    w = mixing_matrix(mixing, n)
    adjacency = (w > 0) & ~np.eye(n, dtype=bool)
    inner = optax.with_extra_args_support(inner)
    init_fn = _initializer(inner, n, jnp.asarray(w, jnp.float32), timing, network, key)

    def update_fn(updates, state: DecentralizedState, params=None, **extra_args):
        if params is None:
            raise ValueError("dpsgd needs the stacked parameters: call update(grads, state, params).")
        ev = state.events
        ids = jnp.arange(n, dtype=jnp.int32)
        key, k_time = jax.random.split(ev.key) if ev.timing.is_random else (ev.key, ev.key)
        p = ev.in_flight
        drawn = ev.time + ev.timing.sample_at(k_time, ids, n, ev.time)
        finish = jnp.where(p == 0, drawn, ev.jobs.finish)
        grads = _set_row(state.grads, p, updates)
        barrier = p >= n - 1

        def round_end(grads, inner_state, params):  # x <- Wx, then every worker steps
            mixed = jax.tree.map(lambda x: jnp.einsum("ij,j...->i...", state.peers.astype(x.dtype), x), params)
            step, new_inner = jax.vmap(lambda g, s, x: inner.update(g, s, x, **extra_args))(
                grads, inner_state, mixed)
            return jax.tree.map(lambda m, u, x: m + u - x, mixed, step, params), new_inner

        # A cond: the mixing (n^2 models' worth of multiply-adds) and the n steps run once per round, not per call.
        # Its result takes the gradient table's buffer (the next round writes every row before reading one), and
        # between rounds the table passes through untouched: no n-model buffer of zeros is written per call, and
        # the select below fuses into the caller's apply_updates (nograd cost per call 0.39 -> 0.15-0.18 ms,
        # 16 LeNet-5 models, 2-core AMD EPYC).
        grads, inner_state = jax.lax.cond(barrier, round_end, lambda g, s, x: (g, s), grads, state.inner_state,
                                          params)
        out = jax.tree.map(lambda b: jnp.where(barrier, b, jnp.zeros_like(b)), grads)
        done, link = jnp.max(finish), state.link
        if link is not None:
            t = network_lib.peer_message_time(link.network, ids[:, None], ids[None, :])
            done = done + jnp.max(jnp.sum(jnp.where(adjacency, t, 0.0), axis=1))
            link = link._replace(messages=link.messages + jnp.where(barrier, int(adjacency.sum()), 0))
        zero = jnp.zeros([], jnp.int32)
        ev = ev._replace(
            time=jnp.where(barrier, done, ev.time), version=ev.version + barrier.astype(jnp.int32),
            dispatched=ev.dispatched + 1, arrivals=ev.arrivals + jnp.where(barrier, n, 0),
            last_staleness=jnp.where(barrier, zero, ev.last_staleness),
            last_worker=jnp.where(barrier, jnp.argmax(finish).astype(jnp.int32), ev.last_worker),
            next_worker=jnp.where(barrier, zero, p + 1), in_flight=jnp.where(barrier, zero, p + 1),
            jobs=ev.jobs._replace(finish=finish), key=key)
        return out, state._replace(events=ev, grads=grads, inner_state=inner_state, link=link)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def worker_params(state, params):
    """The model the next gradient must be computed at: row :func:`asgd_jax.next_worker` of ``params`` for a
    decentralized system (found inside ``state``, also in a chain), the replica's local copy for
    :func:`asgd_jax.downpour.downpour`, ``params`` itself otherwise."""
    dec = find_state(state, DecentralizedState)
    if dec is None:
        from asgd_jax.downpour import replica_params  # a Downpour replica's local copy; else params
        return replica_params(state, params)
    return _row(params, dec.events.next_worker)
