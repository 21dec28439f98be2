r"""Model parallelism: one model's neurons split over machines, for real (a device mesh) and in time.

**For real.** An :class:`asgd_jax.MLP`'s dense layers are split over the ``"model"``
axis of a 2-D :class:`jax.sharding.Mesh` (``replicas x partitions``), Megatron
style: in each pair of layers the first is split by **columns** (each partition
holds a slice of the hidden units, :math:`h_k = \mathrm{relu}(x W_{:,k} + b_k)`,
no communication) and the second by **rows**
(:math:`y = \sum_k h_k W_{k,:} + b`, one ``psum`` over the partitions); a last
unpaired layer is replicated. Along the ``"replicas"`` axis every replica has
its own parameters and its own data (a leading replica axis on every leaf), as
Downpour's model replicas do; ``average=True`` averages the gradients over the
replicas instead (synchronous data parallelism). See :func:`forward`,
:func:`loss_and_grad`, :func:`train_step`.

**In time.** One replica's step on :math:`p` machines (:func:`step_time`,
:func:`speedup`):

.. math::

    T(p) = \frac{F}{p\,s}\,\mathbb{E}\big[\max_{i \le p} X_i\big] + C(p) + o,
    \qquad X_i = e^{\sigma Z_i - \sigma^2/2},\ Z_i \sim \mathcal N(0, 1),

with :math:`F` the step's FLOPs, :math:`s` a machine's FLOP/s, :math:`X_i` machine
:math:`i`'s slowness this step (mean 1; the step waits for the slowest), :math:`o`
a fixed per-step overhead and :math:`C(p)` the time of the activations crossing
partition boundaries, each message costing :math:`2\ell + B\beta` as in
:func:`asgd_jax.network.peer_message_time` and a machine sending its messages one
after another. :class:`FullyConnected`: every machine sends its slice of every
hidden layer's activations to the :math:`p - 1` others (growing with :math:`p`);
:class:`LocallyConnected`: machines own tiles of a grid and send only the halo at
tile edges to at most 4 neighbours (shrinking per machine as :math:`p` grows).
:func:`speech_model`, :func:`image_model` and :func:`cluster`'s defaults give the
shape of Dean et al. (2012)'s Figure 3.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.scipy.special import log_ndtr
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from asgd_jax import _checks
from asgd_jax import network as _network

__all__ = ["REPLICA_AXIS", "MODEL_AXIS", "make_mesh", "partition_specs", "replicate", "shard_params", "forward",
           "loss_and_grad", "train_step", "Cluster", "cluster", "FullyConnected", "LocallyConnected",
           "fully_connected", "locally_connected", "speech_model", "image_model", "expected_max", "step_time",
           "speedup"]

REPLICA_AXIS = "replicas"
MODEL_AXIS = "model"


# --- for real: a partitioned MLP on a 2-D mesh ---------------------------------------------------------


def make_mesh(replicas: int, partitions: int, devices=None) -> Mesh:
    """A ``replicas x partitions`` :class:`~jax.sharding.Mesh`, axes (:data:`REPLICA_AXIS`, :data:`MODEL_AXIS`).

    Args:
        replicas: model replicas (each its own data), a Python int >= 1.
        partitions: machines (devices) per replica, a Python int >= 1.
        devices: the devices to use (default: ``jax.devices()``); the first
            ``replicas * partitions`` are laid out row by row.

    Example:
        >>> from asgd_jax import model_parallel as mp
        >>> mesh = mp.make_mesh(1, 1)
        >>> mesh.axis_names, dict(mesh.shape)
        (('replicas', 'model'), {'replicas': 1, 'model': 1})
    """
    replicas = _checks.python_int("replicas", replicas, 1)
    partitions = _checks.python_int("partitions", partitions, 1)
    devices = list(jax.devices() if devices is None else devices)
    need = replicas * partitions
    if need > len(devices):
        raise ValueError(f"a {replicas} x {partitions} mesh needs {need} devices but {len(devices)} are available; "
                         f"use fewer replicas or partitions (CPU: set XLA_FLAGS=--xla_force_host_platform_device_count"
                         f"={need} before importing jax).")
    return Mesh(np.asarray(devices[:need], dtype=object).reshape(replicas, partitions), (REPLICA_AXIS, MODEL_AXIS))


def _layers(params) -> int:
    """The number of dense layers of MLP params ``{"Dense_i": {"kernel", "bias"}}`` (one-line error if not)."""
    ok = isinstance(params, dict) and len(params) > 0
    n = len(params) if ok else 0
    ok = ok and all(isinstance(params.get(f"Dense_{i}"), dict)
                    and set(params[f"Dense_{i}"]) == {"kernel", "bias"} for i in range(n))
    if not ok:
        raise ValueError("params must be an asgd_jax.MLP's params ({'Dense_0': {'kernel', 'bias'}, ...}) "
                         "with a leading replica axis (model_parallel.replicate).")
    return n


def _roles(n: int) -> list[str]:
    """Layer roles: pairs (column, row), a last unpaired layer replicated."""
    return ["column", "row"] * (n // 2) + ["replicated"] * (n % 2)


def partition_specs(params) -> dict:
    """The :class:`~jax.sharding.PartitionSpec` of every leaf of replicated MLP params.

    A column layer's kernel ``[R, in, out]`` is split over its outputs and its
    bias too; a row layer's kernel over its inputs (its bias is kept whole);
    a replicated layer is kept whole. The leading replica axis is split over
    :data:`REPLICA_AXIS`.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from asgd_jax import MLP, model_parallel as mp
        >>> params = MLP(hidden=(8,), num_classes=3).init(jax.random.key(0), jnp.zeros((1, 2, 2, 1)))["params"]
        >>> specs = mp.partition_specs(mp.replicate(params, 2))
        >>> specs["Dense_0"]["kernel"], specs["Dense_1"]["kernel"], specs["Dense_1"]["bias"]
        (P('replicas', None, 'model'), P('replicas', 'model', None), P('replicas',))
    """
    roles = _roles(_layers(params))
    spec = {"column": (P(REPLICA_AXIS, None, MODEL_AXIS), P(REPLICA_AXIS, MODEL_AXIS)),
            "row": (P(REPLICA_AXIS, MODEL_AXIS, None), P(REPLICA_AXIS)),
            "replicated": (P(REPLICA_AXIS), P(REPLICA_AXIS))}
    return {f"Dense_{i}": dict(zip(("kernel", "bias"), spec[r])) for i, r in enumerate(roles)}


def replicate(params, replicas: int):
    """``replicas`` copies of one model's params stacked on a leading replica axis.

    Example:
        >>> import jax.numpy as jnp
        >>> from asgd_jax import model_parallel as mp
        >>> mp.replicate({"w": jnp.ones(3)}, 2)["w"].shape
        (2, 3)
    """
    replicas = _checks.python_int("replicas", replicas, 1)
    return jax.tree.map(lambda x: jnp.broadcast_to(x, (replicas,) + jnp.shape(x)), params)


def _check(params, mesh: Mesh, x=None, y=None) -> None:
    """One-line errors for params, data and mesh that do not fit together."""
    if not isinstance(mesh, Mesh) or tuple(mesh.axis_names) != (REPLICA_AXIS, MODEL_AXIS):
        raise ValueError("mesh must be a jax.sharding.Mesh with axes ('replicas', 'model') (model_parallel.make_mesh).")
    n, parts, reps = _layers(params), mesh.shape[MODEL_AXIS], mesh.shape[REPLICA_AXIS]
    for i, role in enumerate(_roles(n)):
        kernel = params[f"Dense_{i}"]["kernel"]
        if jnp.ndim(kernel) != 3:
            raise ValueError("params need a leading replica axis (model_parallel.replicate(params, replicas)).")
        if role == "column" and kernel.shape[2] % parts:
            raise ValueError(f"hidden layer {i} has {kernel.shape[2]} units, not divisible by {parts} partitions; "
                             f"choose a width that is a multiple of {parts}.")
    r = params["Dense_0"]["kernel"].shape[0]
    if r % reps:
        raise ValueError(f"{r} replicas of params do not divide over the mesh's {reps} replica rows.")
    for name, a in (("x", x), ("y", y)):
        if a is not None and (jnp.ndim(a) < 2 or a.shape[0] != r):
            raise ValueError(f"{name} must have a leading replica axis of {r} then a batch axis, got shape "
                             f"{jnp.shape(a)}.")


def shard_params(params, mesh: Mesh):
    """``params`` placed on ``mesh`` by :func:`partition_specs` (each device holds only its slices).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from asgd_jax import MLP, model_parallel as mp
        >>> params = MLP(hidden=(4,), num_classes=2).init(jax.random.key(0), jnp.zeros((1, 1, 3, 1)))["params"]
        >>> placed = mp.shard_params(mp.replicate(params, 1), mp.make_mesh(1, 1))
        >>> placed["Dense_0"]["kernel"].sharding.spec
        P('replicas', None, 'model')
    """
    _check(params, mesh)
    return jax.tree.map(lambda a, s: jax.device_put(a, NamedSharding(mesh, s)), params, partition_specs(params))


def _local_forward(params, x):
    """One replica's logits on one partition (inside ``shard_map``): column, row + psum, replicated."""
    roles = _roles(len(params))
    h = x.reshape(x.shape[0], -1)
    for i, role in enumerate(roles):
        layer = params[f"Dense_{i}"]
        z = h @ layer["kernel"]
        if role == "row":
            z = jax.lax.psum(z, MODEL_AXIS)
        h = z + layer["bias"]
        if i + 1 < len(roles):
            h = jax.nn.relu(h)
    return h


def _local_loss(params, x, y):
    return optax.softmax_cross_entropy_with_integer_labels(_local_forward(params, x), y).mean()


def forward(params, x, mesh: Mesh) -> jax.Array:
    r"""The logits of every replica, computed with the layers split over the mesh's ``"model"`` axis.

    Args:
        params: MLP params with a leading replica axis ``R`` (:func:`replicate`);
            ``R`` a multiple of the mesh's replica rows, the column layers'
            widths multiples of its partitions.
        x: inputs ``[R, batch, ...]`` (flattened after the batch axis), replica
            ``r``'s on row ``r`` of the mesh.
        mesh: from :func:`make_mesh`.

    Returns:
        logits ``[R, batch, classes]``, the unpartitioned MLP's up to float rounding.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from asgd_jax import MLP, model_parallel as mp
        >>> model = MLP(hidden=(4,), num_classes=3)
        >>> params = model.init(jax.random.key(0), jnp.zeros((1, 2, 2, 1)))["params"]
        >>> x = jax.random.normal(jax.random.key(1), (5, 2, 2, 1))
        >>> logits = mp.forward(mp.replicate(params, 1), x[None], mp.make_mesh(1, 1))
        >>> bool(jnp.allclose(logits[0], model.apply({"params": params}, x), atol=1e-6))
        True
    """
    _check(params, mesh, x)
    return _forward_fn(mesh, len(params))(params, x)


@functools.lru_cache(maxsize=64)
def _forward_fn(mesh: Mesh, layers: int):
    specs = partition_specs({f"Dense_{i}": {"kernel": 0, "bias": 0} for i in range(layers)})
    return jax.jit(jax.shard_map(jax.vmap(_local_forward), mesh=mesh, in_specs=(specs, P(REPLICA_AXIS)),
                                 out_specs=P(REPLICA_AXIS)))


def loss_and_grad(params, x, y, mesh: Mesh, *, average: bool = False):
    r"""Every replica's mean softmax cross-entropy on its batch and its gradient, on the 2-D mesh.

    The gradient of a split layer is computed where its slice lives (the
    backward pass of the row layer's ``psum`` hands every partition the whole
    output gradient); nothing is gathered.

    Args:
        params, x, mesh: as for :func:`forward`.
        y: integer labels ``[R, batch]``.
        average: ``True``: every replica gets the mean of the ``R`` gradients
            (one ``pmean`` over the replica axis); ``False``: its own.

    Returns:
        ``(loss [R], grads)``, ``grads`` laid out like ``params``.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from asgd_jax import MLP, model_parallel as mp
        >>> params = MLP(hidden=(4,), num_classes=3).init(jax.random.key(0), jnp.zeros((1, 2, 2, 1)))["params"]
        >>> loss, grads = mp.loss_and_grad(mp.replicate(params, 1), jnp.ones((1, 5, 2, 2, 1)),
        ...                                jnp.zeros((1, 5), jnp.int32), mp.make_mesh(1, 1))
        >>> loss.shape, grads["Dense_0"]["kernel"].shape
        ((1,), (1, 4, 4))
    """
    _check(params, mesh, x, y)
    return _loss_and_grad_fn(mesh, len(params), bool(average))(params, x, y)


@functools.lru_cache(maxsize=64)
def _loss_and_grad_fn(mesh: Mesh, layers: int, average: bool):
    specs = partition_specs({f"Dense_{i}": {"kernel": 0, "bias": 0} for i in range(layers)})

    def local(p, xs, ys):
        loss, grads = jax.vmap(jax.value_and_grad(_local_loss))(p, xs, ys)
        if average:
            mean = jax.lax.pmean(jax.tree.map(lambda g: g.mean(0), grads), REPLICA_AXIS)
            grads = jax.tree.map(lambda m, g: jnp.broadcast_to(m, g.shape), mean, grads)
        return loss, grads

    return jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(specs, P(REPLICA_AXIS), P(REPLICA_AXIS)),
                                 out_specs=(P(REPLICA_AXIS), specs)))


def train_step(optimizer: optax.GradientTransformation, mesh: Mesh, *, average: bool = False):
    r"""A jitted training step ``step(params, opt_state, x, y) -> (params, opt_state, loss)`` on ``mesh``.

    :func:`loss_and_grad`, then ``optimizer`` on every replica's gradient
    (vmapped over the replica axis; start from ``jax.vmap(optimizer.init)(params)``)
    and :func:`optax.apply_updates`; the new parameters keep
    :func:`partition_specs`' layout.

    Example:
        >>> import jax, jax.numpy as jnp, optax
        >>> from asgd_jax import MLP, model_parallel as mp
        >>> params = mp.replicate(MLP(hidden=(4,), num_classes=2).init(
        ...     jax.random.key(0), jnp.zeros((1, 1, 2, 1)))["params"], 1)
        >>> opt = optax.sgd(0.1)
        >>> step = mp.train_step(opt, mp.make_mesh(1, 1))
        >>> x, y = jnp.ones((1, 3, 1, 2, 1)), jnp.zeros((1, 3), jnp.int32)
        >>> params, state, loss0 = step(params, jax.vmap(opt.init)(params), x, y)
        >>> _, _, loss1 = step(params, state, x, y)
        >>> bool(loss1[0] < loss0[0])
        True
    """
    if not isinstance(optimizer, optax.GradientTransformation):
        raise ValueError(f"optimizer must be an optax.GradientTransformation, got {type(optimizer).__name__}.")

    @jax.jit
    def step(params, opt_state, x, y):
        loss, grads = loss_and_grad(params, x, y, mesh, average=average)
        updates, opt_state = jax.vmap(optimizer.update)(grads, opt_state, params)
        new = optax.apply_updates(params, updates)
        shardings = jax.tree.map(lambda s: NamedSharding(mesh, s), partition_specs(params))
        return jax.lax.with_sharding_constraint(new, shardings), opt_state, loss

    def checked(params, opt_state, x, y):
        _check(params, mesh, x, y)
        return step(params, opt_state, x, y)

    return checked


# --- in time: one replica's step split over p machines -------------------------------------------------


def _pytree_dataclass(cls):
    cls = dataclasses.dataclass(frozen=True)(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    return jax.tree_util.register_dataclass(cls, data_fields=names, meta_fields=[])


def _f32(x) -> jax.Array:
    return jnp.asarray(x, jnp.float32)


@_pytree_dataclass
class Cluster:
    """The machines a replica runs on (build with :func:`cluster`).

    Attributes:
        flops_per_second: one machine's speed :math:`s`.
        sigma: log-normal spread :math:`\\sigma` of a machine's slowness in a step (0: none).
        overhead: fixed time :math:`o` of every step (time units).
        network: an :class:`asgd_jax.network.Network` with one latency and bandwidth for every machine.
    """

    flops_per_second: Any
    sigma: Any
    overhead: Any
    network: _network.Network


def cluster(flops_per_second=5e10, *, latency=6e-4, bandwidth=1.25e8, overhead=0.08, sigma=0.2) -> Cluster:
    r"""A :class:`Cluster`. Defaults: a 2012 machine, 50 GFLOP/s, on 1 Gbit/s Ethernet with 0.6 ms per message end.

    Times are in seconds. With these defaults, :func:`speech_model` and
    :func:`image_model` have the shape of Dean et al. (2012)'s Figure 3
    (a peak of about 2.2x at 8 machines; about 12.8x at 81).

    Args:
        flops_per_second: one machine's speed (> 0).
        latency: each end's latency :math:`\ell` (>= 0); a message costs :math:`2\ell + B/\text{bandwidth}`.
        bandwidth: bytes per second of a machine's link (> 0; ``inf``: free transfers).
        overhead: fixed time added to every step (>= 0).
        sigma: spread of a machine's slowness :math:`X = e^{\sigma Z - \sigma^2/2}` (>= 0; mean 1).

    Example:
        >>> from asgd_jax import model_parallel as mp
        >>> c = mp.cluster(1e9, latency=0.0, bandwidth=float("inf"), overhead=0.0, sigma=0.0)
        >>> float(c.flops_per_second)
        1000000000.0
    """
    _checks.check_number("flops_per_second", flops_per_second, positive=True)
    for name, value in (("overhead", overhead), ("sigma", sigma)):
        _checks.check_number(name, value, minimum=0.0)
        c = _checks.concrete(value)
        if c is not None and c.ndim:
            raise ValueError(f"{name} must be a scalar.")
    net = _network.network(latency=latency, bandwidth=bandwidth)
    if net.latency.ndim or net.byte_time.ndim:
        raise ValueError("latency and bandwidth must be scalars (every machine has the same link).")
    return Cluster(_f32(flops_per_second), _f32(sigma), _f32(overhead), net)


def _message(net: _network.Network, size) -> jax.Array:
    """One message of ``size`` bytes between two machines (:func:`asgd_jax.network.peer_message_time`)."""
    return _network.peer_message_time(net._replace(model_bytes=_f32(size)), 0, 1)


@_pytree_dataclass
class FullyConnected:
    r"""A fully connected model whose every layer's units are split over the machines (:func:`fully_connected`).

    Each of the hidden layers :math:`k = 1..L-1` (widths :math:`w_k`) sends, in the
    forward pass its activations and in the backward pass their gradients, so
    each machine sends its slice of :math:`A_k = w_k\,b\,v` bytes (batch
    :math:`b`, :math:`v` bytes a value) to the :math:`p-1` others, one message
    after another:

    .. math:: C(p) = 2 \sum_k (p - 1)\,\big(2\ell + \beta A_k / p\big).
    """

    widths: Any
    batch: Any
    bytes_per_value: Any

    @property
    def params(self) -> jax.Array:
        """Weights :math:`\\sum_k w_k w_{k+1}` (biases left out)."""
        w = _f32(self.widths)
        return jnp.sum(w[:-1] * w[1:])

    @property
    def flops(self) -> jax.Array:
        """FLOPs of a step: :math:`6 \\times` weights :math:`\\times` batch (forward 2, backward 4 per weight)."""
        return 6.0 * self.params * _f32(self.batch)

    def communication_time(self, machines, net: _network.Network) -> jax.Array:
        """:math:`C(p)` on ``net`` for ``machines`` :math:`= p`."""
        p = _f32(machines)
        sizes = _f32(self.widths)[1:-1] * _f32(self.batch) * _f32(self.bytes_per_value) / p
        return 2.0 * (p - 1.0) * jnp.sum(_message(net, sizes))


_MAX_ROWS = 128  # grid rows searched for a locally connected model: machines up to 128**2


def _grid_rows(p) -> jax.Array:
    """Rows :math:`a` of the most nearly square grid :math:`a \\times p/a` (the largest divisor :math:`\\le\\sqrt p`)."""
    p = jnp.asarray(p, jnp.int32)
    d = jnp.arange(1, _MAX_ROWS + 1, dtype=jnp.int32)
    return jnp.max(jnp.where((p % d == 0) & (d * d <= p), d, 1))


@_pytree_dataclass
class LocallyConnected:
    r"""A stack of locally connected layers on an image split into tiles (:func:`locally_connected`).

    ``layers`` layers of ``channels`` maps of ``height x width`` units, each unit
    seeing a ``receptive x receptive`` window (untied weights), so the halo is
    :math:`h = \lfloor r/2 \rfloor` units. :math:`p` machines own the tiles of an
    :math:`a \times p/a` grid (:math:`a` the largest divisor of :math:`p` with
    :math:`a^2 \le p`); the slowest machine, an interior one, has
    :math:`n_v = \min(a-1, 2)` neighbours above/below and :math:`n_h = \min(p/a - 1, 2)`
    beside it. Each of the :math:`L-1` boundaries between layers is crossed forwards
    and backwards:

    .. math:: C(p) = 2(L-1)\Big[n_v\big(2\ell + \beta\, h \tfrac{W}{p/a} c\,b\,v\big)
              + n_h\big(2\ell + \beta\, h \tfrac{H}{a} c\,b\,v\big)\Big].

    Corner halos are left out; a tile is assumed at least :math:`h` wide.
    """

    height: Any
    width: Any
    in_channels: Any
    channels: Any
    receptive: Any
    layers: Any
    batch: Any
    bytes_per_value: Any

    @property
    def params(self) -> jax.Array:
        """Weights :math:`H W c r^2 (c_0 + (L-1) c)`."""
        h, w, c, r = (_f32(v) for v in (self.height, self.width, self.channels, self.receptive))
        return h * w * c * r * r * (_f32(self.in_channels) + (_f32(self.layers) - 1.0) * c)

    @property
    def flops(self) -> jax.Array:
        """FLOPs of a step: :math:`6 \\times` weights :math:`\\times` batch."""
        return 6.0 * self.params * _f32(self.batch)

    def communication_time(self, machines, net: _network.Network) -> jax.Array:
        """:math:`C(p)` on ``net`` for ``machines`` :math:`= p`."""
        rows = _grid_rows(machines).astype(jnp.float32)
        cols = _f32(machines) / rows
        halo = jnp.floor(_f32(self.receptive) / 2.0)
        unit = halo * _f32(self.channels) * _f32(self.batch) * _f32(self.bytes_per_value)
        vertical = jnp.minimum(rows - 1.0, 2.0) * _message(net, unit * _f32(self.width) / cols)
        horizontal = jnp.minimum(cols - 1.0, 2.0) * _message(net, unit * _f32(self.height) / rows)
        return 2.0 * (_f32(self.layers) - 1.0) * (vertical + horizontal)


def fully_connected(widths, *, batch=128, bytes_per_value=4) -> FullyConnected:
    """A :class:`FullyConnected` model of layer widths ``widths`` (input first, output last).

    Example:
        >>> from asgd_jax import model_parallel as mp
        >>> m = mp.fully_connected([10, 20, 5], batch=2)
        >>> float(m.params), float(m.flops)       # 10*20 + 20*5;  6 * 300 * 2
        (300.0, 3600.0)
    """
    w = _checks.concrete(widths)
    if w is not None and (w.ndim != 1 or w.shape[0] < 2 or not np.all(w >= 1)):
        raise ValueError(f"widths must list at least 2 layer widths >= 1 (input ... output), got {widths!r}.")
    _checks.check_number("batch", batch, positive=True)
    _checks.check_number("bytes_per_value", bytes_per_value, positive=True)
    return FullyConnected(_f32(widths), _f32(batch), _f32(bytes_per_value))


def locally_connected(height, width, *, in_channels, channels, receptive, layers, batch=8,
                      bytes_per_value=4) -> LocallyConnected:
    """A :class:`LocallyConnected` model (``layers`` untied ``receptive x receptive`` layers on ``height x width``).

    Example:
        >>> from asgd_jax import model_parallel as mp
        >>> m = mp.locally_connected(4, 4, in_channels=1, channels=2, receptive=3, layers=2, batch=1)
        >>> float(m.params)                         # 4*4 * 2 * 3*3 * (1 + 2)
        864.0
    """
    for name, value in (("height", height), ("width", width), ("in_channels", in_channels),
                        ("channels", channels), ("receptive", receptive), ("layers", layers), ("batch", batch),
                        ("bytes_per_value", bytes_per_value)):
        _checks.check_number(name, value, positive=True)
    return LocallyConnected(*(_f32(v) for v in (height, width, in_channels, channels, receptive, layers, batch,
                                                 bytes_per_value)))


def speech_model() -> FullyConnected:
    """Figure 3's 42M-parameter fully connected speech model: 440 inputs, 4 x 2560 hidden, 8192 outputs, batch 128.

    Example:
        >>> from asgd_jax import model_parallel as mp
        >>> round(float(mp.speech_model().params) / 1e6, 1)
        41.8
    """
    return fully_connected([440, 2560, 2560, 2560, 2560, 8192], batch=128)


def image_model() -> LocallyConnected:
    """Figure 3's 1.7B-parameter locally connected image model: 3 layers of 8 maps, 200 x 200, 17 x 17 fields, batch 8.

    Example:
        >>> from asgd_jax import model_parallel as mp
        >>> round(float(mp.image_model().params) / 1e9, 2)
        1.76
    """
    return locally_connected(200, 200, in_channels=3, channels=8, receptive=17, layers=3, batch=8)


_Z = np.linspace(-12.0, 12.0, 4801)


def expected_max(sigma, machines) -> jax.Array:
    r""":math:`\mathbb E[\max_{i\le p} X_i]` of :math:`p` log-normal slownesses :math:`X = e^{\sigma Z - \sigma^2/2}`.

    .. math:: \int e^{\sigma z - \sigma^2/2}\, p\,\varphi(z)\,\Phi(z)^{p-1}\, dz

    by the trapezoid rule on :math:`z \in [-12, 12]` (step 0.005; accurate for
    :math:`\sigma \lesssim 3`); exactly 1 for :math:`\sigma = 0` or :math:`p = 1`.

    Example:
        >>> from asgd_jax import model_parallel as mp
        >>> round(float(mp.expected_max(0.2, 1)), 4), round(float(mp.expected_max(0.0, 8)), 4)
        (1.0, 1.0)
    """
    s, p = _f32(sigma), _f32(machines)
    z = jnp.asarray(_Z, jnp.float32)
    log_w = s * z - 0.5 * s * s + jnp.log(p) - 0.5 * z * z - 0.5 * np.log(2 * np.pi) + (p - 1.0) * log_ndtr(z)
    value = jnp.sum(jnp.exp(log_w)) * float(_Z[1] - _Z[0])
    return jnp.where((s == 0) | (p == 1), 1.0, value)


def _check_machines(machines, max_machines):
    c = _checks.concrete(machines)
    if c is not None:
        if c.ndim or not np.issubdtype(c.dtype, np.integer) or int(c) < 1 or int(c) > _MAX_ROWS ** 2:
            raise ValueError(f"machines must be an integer in [1, {_MAX_ROWS ** 2}], got {machines!r}.")
    if max_machines is not None:
        _checks.python_int("max_machines", max_machines, 1)


def step_time(shape, machines, cluster: Cluster | None = None, *, key=None, max_machines=None) -> jax.Array:
    r"""One replica's step time on ``machines`` machines: :math:`T(p)` of the module docstring.

    Args:
        shape: a :class:`FullyConnected` or :class:`LocallyConnected` model.
        machines: :math:`p`, an integer in ``[1, 16384]`` (traced under ``jit``/``vmap``).
        cluster: a :class:`Cluster` (default :func:`cluster`'s).
        key: ``None``: the expected time (:func:`expected_max`); a PRNG key: one
            draw of the :math:`p` slownesses.
        max_machines: with ``key`` and a traced ``machines``, a static bound on it.

    Example:
        >>> from asgd_jax import model_parallel as mp
        >>> c = mp.cluster(100.0, latency=0.5, bandwidth=10.0, overhead=1.0, sigma=0.0)
        >>> m = mp.fully_connected([1, 10, 1], batch=1, bytes_per_value=1)   # 20 weights, 120 FLOPs
        >>> round(float(mp.step_time(m, 2, c)), 5)    # 120/2/100 + 2*1*(2*0.5 + 5/10) + 1
        4.6
    """
    _check_machines(machines, max_machines)
    if not isinstance(shape, (FullyConnected, LocallyConnected)):
        raise ValueError(f"shape must be a FullyConnected or LocallyConnected model, got {type(shape).__name__}.")
    cl = _default_cluster() if cluster is None else cluster
    p = _f32(machines)
    if key is None:
        slowest = expected_max(cl.sigma, p)
    else:
        bound = _checks.static_bound("machines", machines, max_machines, "max_machines")
        z = jax.random.normal(_checks.as_key(key), (bound,), jnp.float32)
        x = jnp.exp(cl.sigma * z - 0.5 * cl.sigma * cl.sigma)
        slowest = jnp.max(jnp.where(jnp.arange(bound) < p, x, 0.0))
    return shape.flops / cl.flops_per_second / p * slowest + shape.communication_time(p, cl.network) + cl.overhead


def _default_cluster() -> Cluster:
    return cluster()


def speedup(shape, machines, cluster: Cluster | None = None, *, key=None, max_machines=None) -> jax.Array:
    r"""Speed-up of one replica's step on ``machines`` machines: :math:`\mathbb E[T(1)] / T(p)`.

    ``T(p)`` expected (``key=None``) or drawn (a key); see :func:`step_time`.
    ``jit``/``vmap``-able over ``machines`` (and over the model's and cluster's fields).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from asgd_jax import model_parallel as mp
        >>> s = jax.vmap(lambda p: mp.speedup(mp.speech_model(), p))(jnp.arange(1, 33))
        >>> int(jnp.argmax(s)) + 1, round(float(s.max()), 1)        # Figure 3: a peak of 2.2x at 8
        (8, 2.2)
        >>> round(float(mp.speedup(mp.image_model(), 81)), 1)       # Figure 3: > 12x at 81
        12.8
    """
    return step_time(shape, 1, cluster) / step_time(shape, machines, cluster, key=key, max_machines=max_machines)
