"""The sweep engine: a grid of configs → groups of equal shapes → one program each.

A *config* is a flat dict: the static fields of :class:`~asgd_jax.TrainConfig`
(``model``, ``optimizer``, ``batch_size``, ``epochs``), the hyperparameters a
group vmaps over (``learning_rate``, ``delay`` and the optimizer's own keys,
e.g. ``momentum``) and ``seed``. Configs that share the static fields form a
:class:`Group`; its ``max_delay`` is the largest delay among them, so every
delay of a group runs in the same compiled program. A group is trained by
:func:`run_group`, which vmaps :class:`~asgd_jax.Trainer` over its configs in
chunks of ``chunk_size``.

A config with ``system="async"`` trains through the event model
(:func:`asgd_jax.asynchronous`) instead of a constant delay: its static fields
add :data:`ASYNC_STATIC_FIELDS` (``max_workers`` defaults to its ``workers``),
and it vmaps over ``workers``, ``dc_lambda``, the compute-time model's numbers
and the introduction schedule (:data:`asgd_jax.train.ASYNC_HPARAMS`) instead of
``delay``; its results add ``sim_time_per_epoch`` and ``server_steps_per_epoch``.

A config's result depends only on the config itself (its seed fixes the
initial parameters and the data order), never on the group or chunk it ran in.
:func:`config_id` names a config stably, so a driver can skip configs whose
results it already has.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import os
import time
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from asgd_jax.train import INT_HPARAMS, TrainConfig, Trainer, hparam_names, normalize_hparams, run_configs

__all__ = [
    "STATIC_FIELDS",
    "ASYNC_STATIC_FIELDS",
    "OPTIONAL_STATIC_FIELDS",
    "GENERAL_OPTIONAL_FIELDS",
    "DESCRIPTIVE_FIELDS",
    "Group",
    "expand_grid",
    "normalize_config",
    "config_id",
    "group_configs",
    "default_chunk_size",
    "mesh_for_group",
    "CONFIG_AXIS",
    "local_mesh",
    "SweepMemoryError",
    "config_memory_bytes",
    "device_memory_bytes",
    "max_configs_per_device",
    "Chunk",
    "plan_chunks",
    "run_chunk",
    "run_group",
]

# The mesh axis a group's configs are laid along.
CONFIG_AXIS = "configs"

# Fields that fix a compiled program's shapes: configs differing here never share a group.
STATIC_FIELDS = ("model", "optimizer", "batch_size", "epochs")
# Static fields of configs with ``system="async"`` (present only in those configs, so configs of the
# delay system keep the fields, and the config_id, they always had). ``max_workers`` defaults to the
# config's ``workers``.
ASYNC_STATIC_FIELDS = ("system", "max_workers", "server_rule", "compensation", "assignment", "timing")
# Static fields of asynchronous configs present only when they differ from their defaults (so configs
# that do not use them keep their config_id): server rules by name, per-worker data, per-worker times.
OPTIONAL_STATIC_FIELDS = ("rules", "data_split", "split_alpha", "worker_times", "topology", "network", "shards",
                          "failures")
# Static fields of every config present only when they differ from their defaults (so configs that do
# not use them keep their config_id): ``steps_per_epoch`` (evaluation periods shorter than a pass) and
# ``microbatch`` (the training step's micro-batch: speed, not maths).
GENERAL_OPTIONAL_FIELDS = ("steps_per_epoch", "microbatch")
# Fields that describe a config without entering training (they enter config_id and grouping).
DESCRIPTIVE_FIELDS = ("data",)
_CONFIG_DEFAULTS = {"model": "lenet5", "optimizer": "sgd", "seed": 0, "delay": 0}


def expand_grid(grid: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The Cartesian product of a grid, in a stable order (last key varies fastest).

    Values that are lists or tuples are axes of the grid; any other value is
    fixed for every config.

    Example:
        >>> from asgd_jax.sweep import expand_grid
        >>> expand_grid({"learning_rate": [0.1, 0.01], "delay": [0, 4], "batch_size": 64})
        ... # doctest: +NORMALIZE_WHITESPACE
        [{'learning_rate': 0.1, 'delay': 0, 'batch_size': 64},
          {'learning_rate': 0.1, 'delay': 4, 'batch_size': 64},
          {'learning_rate': 0.01, 'delay': 0, 'batch_size': 64},
          {'learning_rate': 0.01, 'delay': 4, 'batch_size': 64}]
    """
    keys = list(grid)
    axes = [list(v) if isinstance(v, (list, tuple)) else [v] for v in grid.values()]
    for k, axis in zip(keys, axes):
        if not axis:
            raise ValueError(f"grid axis {k!r} is empty; give it at least one value.")
    return [dict(zip(keys, values)) for values in itertools.product(*axes)]


def normalize_config(config: Mapping[str, Any], num_train: int | None = None) -> dict[str, Any]:
    """Fills defaults and checks one config; raises a one-line ``ValueError``.

    The result holds the descriptive fields given (``data``: the source the
    config trains on), every static field, ``seed``, ``learning_rate``, ``delay``
    and the optimizer's own hyperparameters with their defaults, so two configs
    that train identically also compare (and :func:`config_id`) equal.
    """
    cfg = {**_CONFIG_DEFAULTS, **config}
    missing = [k for k in ("batch_size", "epochs", "learning_rate") if k not in cfg]
    if missing:
        raise ValueError(f"config {dict(config)} lacks {missing}.")
    static = {k: cfg[k] for k in STATIC_FIELDS}
    for k in GENERAL_OPTIONAL_FIELDS:
        v = cfg.pop(k, None)
        if v is not None:
            static[k] = v
    system = cfg.pop("system", "delay")
    if system != "delay":
        if "delay" in config:
            raise ValueError("delay applies to system='delay' only; system='async' has workers instead.")
        del cfg["delay"]
        defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
        workers = cfg.get("workers", 1)
        static["system"] = system
        static["max_workers"] = cfg.pop("max_workers", workers if _is_int(workers) and workers >= 1 else 1)
        for k in ASYNC_STATIC_FIELDS[2:]:
            static[k] = cfg.pop(k, defaults[k])
        for k in OPTIONAL_STATIC_FIELDS:
            v = cfg.pop(k, defaults[k])
            v = tuple(v) if isinstance(v, (list, tuple)) else v
            if v != defaults[k]:
                static[k] = v
    else:
        extra = [k for k in ASYNC_STATIC_FIELDS[1:] + OPTIONAL_STATIC_FIELDS if k in cfg]
        if extra:
            raise ValueError(f"{extra[0]} applies to system='async' only; set system='async' or drop it.")
    tc = TrainConfig(**static)
    tc.validate(num_train)
    seed = cfg["seed"]
    if not _is_int(seed) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}.")
    described = {k: str(cfg[k]) for k in DESCRIPTIVE_FIELDS if k in cfg}
    hp = {
        k: v for k, v in cfg.items() if k not in STATIC_FIELDS and k not in DESCRIPTIVE_FIELDS and k != "seed"
    }
    hp = normalize_hparams(cfg["optimizer"], hp, config=tc if system != "delay" else None)
    if num_train is not None:
        _check_trains(tc, hp, num_train)
    return {
        **described,
        **static,
        "seed": int(seed),
        **{k: (int(v) if k in INT_HPARAMS else float(v)) for k, v in hp.items()},
    }


def _check_trains(tc: TrainConfig, hp: Mapping[str, Any], num_train: int) -> None:
    """Refuses a config whose run would take no server step at all (it would be written as a result)."""
    per_epoch = tc.steps_per_epoch or num_train // tc.batch_size
    grads = tc.epochs * per_epoch
    run = f"a run of {grads} gradients ({tc.epochs} epoch(s) of {per_epoch})"
    if tc.system == "delay":
        if hp["delay"] >= grads:
            raise ValueError(f"delay={hp['delay']} applies no gradient in {run}; use a delay below {grads} "
                             "or more epochs.")
        return
    n = hp["workers"]
    if (n > grads) if tc.server_rule == "sync" else (n - 1 >= grads):
        raise ValueError(f"workers={n} take no server step in {run}; use fewer workers or more epochs.")


def _is_int(x) -> bool:
    return not isinstance(x, bool) and isinstance(x, (int, np.integer))


def config_id(config: Mapping[str, Any]) -> str:
    """A stable 12-hex-digit name of a normalized config (its JSON, hashed)."""
    text = json.dumps(dict(config), sort_keys=True, default=float)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


@dataclasses.dataclass(frozen=True)
class Group:
    """Configs that share every shape: one compiled program trains them all."""

    train_config: TrainConfig
    configs: tuple[dict[str, Any], ...]

    def hparam_names(self) -> list[str]:
        return hparam_names(self.train_config)


def group_configs(configs: Sequence[Mapping[str, Any]], *, eval_batch_size: int | str = "auto") -> list[Group]:
    """Groups normalized configs by their static fields (first-seen order).

    A group's ``max_delay`` is the largest delay among its configs. Asynchronous
    configs (``system="async"``) also share :data:`ASYNC_STATIC_FIELDS`.
    """
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for c in configs:
        key = (
            tuple(c[k] for k in STATIC_FIELDS)
            + tuple(c.get(k) for k in DESCRIPTIVE_FIELDS)
            + tuple(c.get(k) for k in ASYNC_STATIC_FIELDS)
            + tuple(c.get(k) for k in OPTIONAL_STATIC_FIELDS)
            + tuple(c.get(k) for k in GENERAL_OPTIONAL_FIELDS)
        )
        groups.setdefault(key, []).append(dict(c))
    out = []
    for key, members in groups.items():
        system = {k: members[0][k] for k in ASYNC_STATIC_FIELDS + OPTIONAL_STATIC_FIELDS + GENERAL_OPTIONAL_FIELDS
                  if k in members[0]}
        tc = TrainConfig(
            **dict(zip(STATIC_FIELDS, key[: len(STATIC_FIELDS)])),
            max_delay=max(c.get("delay", 0) for c in members),
            eval_batch_size=eval_batch_size,
            **system,
        )
        out.append(Group(tc, tuple(members)))
    return out


def default_chunk_size() -> int | None:
    """Configs vmapped per device and call: on a CPU 1 per device when the process has several, else 2; the
    whole group (``None``) on an accelerator.

    A CPU split into one device per core (``jax.config.update("jax_num_cpu_devices", n)`` or
    ``XLA_FLAGS=--xla_force_host_platform_device_count=n`` before JAX starts; ``python -m experiments``
    does this) runs one config per core, each device's program without intra-op synchronisation; a CPU
    that is one device keeps two cores busy with two configs per call, and more configs only add memory
    traffic, not parallelism (measured figures are in the README's Speed section). An accelerator wants
    the whole group (capped by :func:`max_configs_per_device`).

    >>> default_chunk_size() in (1, 2, None)
    True
    """
    if jax.default_backend() != "cpu":
        return None
    return 1 if jax.local_device_count() > 1 else 2


def local_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D :class:`jax.sharding.Mesh` over this process's devices, axis :data:`CONFIG_AXIS`.

    A group's configs are laid along this axis: each device trains its share
    of a chunk (the vmapped config axis is sharded, the data replicated).

    Example:
        >>> from asgd_jax.sweep import local_mesh
        >>> mesh = local_mesh()
        >>> mesh.axis_names, mesh.devices.size == jax.local_device_count()
        (('configs',), True)
    """
    devices = jax.local_devices() if devices is None else list(devices)
    return Mesh(np.asarray(devices), (CONFIG_AXIS,))


def _resolve_mesh(mesh) -> Mesh | None:
    if isinstance(mesh, str):
        if mesh != "auto":
            raise ValueError(f"mesh must be a jax.sharding.Mesh, None or 'auto', got {mesh!r}.")
        return local_mesh() if jax.local_device_count() > 1 else None
    return mesh


def mesh_for_group(mesh: Mesh | None, num_configs: int) -> Mesh | None:
    """``mesh`` cut to its first ``num_configs`` devices when a group has fewer configs than it has devices.

    A chunk is padded to a multiple of the mesh's devices with copies of its last
    config; for a group of fewer configs than devices those copies would only
    take cores from the real configs (on a 2-core CPU split into one device per
    core, a lone LeNet-5 config at batch 512 padded to both devices trained at
    about 17 000 samples/s, against 28 000 on one device using both cores'
    threads).

    Example:
        >>> from asgd_jax.sweep import local_mesh, mesh_for_group
        >>> mesh_for_group(local_mesh(), 1).devices.size
        1
    """
    if mesh is None or num_configs >= mesh.devices.size:
        return mesh
    return Mesh(np.asarray(mesh.devices).reshape(-1)[: max(1, num_configs)], mesh.axis_names)


class SweepMemoryError(ValueError):
    """A single config of a group needs more device memory than a device has."""


def _tree_bytes(tree) -> int:
    def nbytes(x):
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            itemsize = 8  # a threefry key is two uint32 words
        else:
            itemsize = np.dtype(x.dtype).itemsize
        return int(np.prod(x.shape, dtype=np.int64)) * itemsize

    return sum(nbytes(x) for x in jax.tree.leaves(tree))


# Primitives whose outputs XLA does not keep as buffers of their own: views (reshape, squeeze, expand_dims,
# slices) and broadcasts, which become bitcasts or fuse into the op that reads them.
_VIEW_PRIMITIVES = frozenset({"reshape", "squeeze", "expand_dims", "broadcast_in_dim", "slice"})


def config_memory_bytes(trainer: Trainer) -> int:
    """An estimate of the device memory one config of ``trainer``'s group needs, in bytes.

    Computed from shapes only (``jax.eval_shape`` and the forward pass's jaxpr;
    nothing is compiled), as the sum of

    * the training state (parameters, optimizer state including the delay
      buffer of ``max_delay + 1`` gradients, data order) once: the epoch and
      step programs donate it, so their output reuses its buffers;
    * three more copies of the parameters (gradient, update, temporaries);
    * the larger of the training step's and the evaluation's working memory.
      Training keeps the forward pass's values of one batch (of one
      micro-batch, ``Trainer.microbatch``, plus the gathered batch and the
      gradient's running sum) for the backward pass: every value the forward
      computes (unfused, from its jaxpr) except views and broadcasts
      (reshapes, slices: XLA makes them bitcasts or fuses them into their
      reader). Evaluation is forward only: it holds about two
      values at a time, counted as twice the largest value of one evaluation
      chunk's forward pass.

    **(choice)** An estimate, not XLA's exact figure. Against XLA's own buffer
    assignment (``memory_analysis()`` of the compiled epoch program, the
    per-config slope between two group sizes; ``python -m experiments benchmark
    --only memory``), on XLA:CPU it was +1 % to +12 % above for LeNet-5 and
    +3 % to +22 % for the MLP (batch sizes 64 to 1024), +77 % for ResNet-20
    (batch 32: its GroupNorm chains fuse). An earlier rule, which counted the
    state twice and every forward value twice for the larger of the batch and
    the evaluation chunk, was 9x XLA's figure for LeNet-5.

    The shared data set is not included; see :func:`max_configs_per_device`.
    """
    key = jax.random.key(0)
    hp = {n: 0 if n in INT_HPARAMS else 0.0 for n in hparam_names(trainer.config)}
    state = jax.eval_shape(trainer.init, trainer.data, key, hp)
    params = state.params  # decentralized: one model per worker (gradient, update, temporaries stacked too)
    one = (jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape[1:], s.dtype), params)
           if getattr(trainer, "decentralized", False) else params)
    dtype = getattr(trainer, "input_dtype", jnp.float32)

    def forward_values(n: int) -> list[int]:  # bytes of each value the forward pass of n samples keeps
        x = jax.ShapeDtypeStruct((n,) + trainer.input_shape, dtype)
        jaxpr = jax.make_jaxpr(lambda p, x: trainer.model.apply({"params": p}, x))(one, x).jaxpr
        return [_tree_bytes([v.aval for v in eqn.outvars]) for eqn in jaxpr.eqns
                if eqn.primitive.name not in _VIEW_PRIMITIVES] or [0]

    micro = getattr(trainer, "microbatch", None)
    training = sum(forward_values(micro or trainer.config.batch_size))
    if micro:  # the gathered batch and the gradient's running sum stay alive beside one micro-batch's values
        training += _tree_bytes(jax.ShapeDtypeStruct((trainer.config.batch_size,) + trainer.input_shape, dtype))
        training += _tree_bytes(one)
    evaluation = 2 * max(forward_values(trainer.eval_chunk))
    return _tree_bytes(state) + 3 * _tree_bytes(params) + max(training, evaluation)


def device_memory_bytes(device: jax.Device | None = None) -> int | None:
    """Memory one device may use: its allocator's limit (GPU/TPU), else the host's RAM per local device.

    ``None`` when it cannot be told.
    """
    device = device or jax.local_devices()[0]
    try:
        stats = device.memory_stats()
    except Exception:  # noqa: BLE001 - some backends raise instead of returning None
        stats = None
    if stats and stats.get("bytes_limit"):
        return int(stats["bytes_limit"])
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None
    return int(ram) // max(1, jax.local_device_count())


def max_configs_per_device(
    trainer: Trainer, budget: int | None = None, *, fraction: float = 0.8
) -> int | None:
    """How many configs of ``trainer``'s group fit on one device at once (``None``: no limit known).

    ``budget`` is the device's memory in bytes (default :func:`device_memory_bytes`);
    ``fraction`` of it, less the replicated data set, is shared by the configs.
    Raises a one-line :class:`SweepMemoryError` naming the size needed when not
    even one config fits, before anything is compiled.
    """
    budget = device_memory_bytes() if budget is None else int(budget)
    if budget is None:
        return None
    per_config = config_memory_bytes(trainer)
    room = int(budget * fraction) - _tree_bytes(trainer.data)
    if room < per_config:
        tc = trainer.config
        raise SweepMemoryError(
            f"one config of group (model={tc.model}, optimizer={tc.optimizer}, batch_size={tc.batch_size}, "
            f"max_delay={tc.max_delay}) needs about {_gib(per_config)} of device memory beside the data set's "
            f"{_gib(_tree_bytes(trainer.data))}, but a device has {_gib(budget)} ({fraction:.0%} usable); "
            "lower batch_size or the largest delay, or use a device with more memory."
        )
    return room // per_config


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**27 else f"{n / 2**20:.1f} MiB"


@dataclasses.dataclass(frozen=True)
class Chunk:
    """Configs of one group trained by one call of the compiled programs.

    ``size`` is the vmapped size: ``len(configs)`` rounded up to a multiple of
    the number of devices; the extra slots repeat the last config and their
    results are dropped.
    """

    group: Group
    index: int
    configs: tuple[dict[str, Any], ...]
    size: int


def plan_chunks(
    group: Group, *, chunk_size: int | None = None, num_devices: int = 1, max_per_device: int | None = None
) -> list[Chunk]:
    """Splits a group into chunks (see :func:`run_group` for ``chunk_size``).

    The split depends only on the group and these arguments, never on which
    configs already have results, so a resumed sweep runs each remaining chunk
    exactly as an uninterrupted one would.

    Example:
        >>> from asgd_jax.sweep import expand_grid, normalize_config, group_configs, plan_chunks
        >>> configs = [normalize_config(c) for c in expand_grid(
        ...     {"learning_rate": [0.1, 0.01, 0.001], "batch_size": 32, "epochs": 1})]
        >>> [(len(c.configs), c.size) for c in plan_chunks(group_configs(configs)[0], chunk_size=2, num_devices=2)]
        [(2, 2), (1, 2)]
    """
    n, d = len(group.configs), max(1, int(num_devices))
    if chunk_size is None:
        per_device = default_chunk_size()
        size = n if per_device is None else per_device * d
    elif int(chunk_size) == 0:
        size = n
    elif int(chunk_size) < 0:
        raise ValueError(f"chunk_size must be >= 0 (0: the whole group), got {chunk_size}.")
    else:
        size = int(chunk_size)
    size = -(-size // d) * d  # a multiple of the number of devices
    if max_per_device is not None:
        size = min(size, max(1, int(max_per_device)) * d)
    chunks = []
    for ci, start in enumerate(range(0, n, size)):
        members = group.configs[start : start + size]
        chunks.append(Chunk(group, ci, tuple(members), -(-len(members) // d) * d))
    return chunks


def _finite_or_none(x: float) -> float | None:
    x = float(x)
    return x if np.isfinite(x) else None


def run_chunk(
    chunk: Chunk,
    trainer: Trainer,
    *,
    loop: str = "auto",
    mesh: Mesh | None = None,
    on_epoch: Callable[[int, dict[str, np.ndarray]], None] | None = None,
) -> list[dict[str, Any]]:
    """Trains one :class:`Chunk` (padded to ``chunk.size``, sharded over ``mesh``); one result per config."""
    configs = list(chunk.configs)
    padded = configs + [configs[-1]] * (chunk.size - len(configs))
    names = chunk.group.hparam_names()
    keys = jax.vmap(jax.random.key)(jnp.asarray([c["seed"] for c in padded], jnp.uint32))
    hparams = {
        n: jnp.asarray([c[n] for c in padded], jnp.int32 if n in INT_HPARAMS else jnp.float32)
        for n in names
    }
    t0 = time.perf_counter()
    metrics = run_configs(trainer, keys, hparams, loop=loop, on_epoch=on_epoch, mesh=mesh)
    seconds = (time.perf_counter() - t0) / len(configs)
    results = []
    for i, c in enumerate(configs):
        r = {"config_id": config_id(c), **c}
        for m in ("test_accuracy", "test_loss", "train_loss"):
            per_epoch = [_finite_or_none(v) for v in metrics[m][i]]
            r[m] = per_epoch[-1]
            r[m + "_per_epoch"] = per_epoch
        for m in ("bits_per_byte", "perplexity"):  # text: the test loss in bits per byte, and its perplexity
            if m in metrics:
                per_epoch = [_finite_or_none(v) for v in metrics[m][i]]
                r[m], r[m + "_per_epoch"] = per_epoch[-1], per_epoch
        for flag in ("nonfinite", "collapsed", "diverged"):
            r[flag] = bool(metrics[flag][i, -1])
        r["diverged_epoch"] = (int(np.argmax(metrics["diverged"][i])) + 1) if r["diverged"] else None
        if "sim_time" in metrics:  # asynchronous systems: the simulated clock and server steps per epoch
            r["sim_time_per_epoch"] = [_finite_or_none(v) for v in metrics["sim_time"][i]]
            r["server_steps_per_epoch"] = [int(v) for v in metrics["server_steps"][i]]
        if "per_class_accuracy" in metrics:  # per-worker data: accuracy per class, server steps per worker
            r["per_class_accuracy"] = [_finite_or_none(v) for v in metrics["per_class_accuracy"][i, -1]]
        if "invalid" in metrics and bool(metrics["invalid"][i, -1]):  # a traced value out of range
            r["invalid"] = True
        if "worker_gradients" in metrics:
            r["worker_gradients"] = [int(v) for v in metrics["worker_gradients"][i, -1]]
        if "shard_staleness" in metrics:  # Downpour: each shard's mean staleness over the run
            r["shard_staleness"] = [_finite_or_none(v) for v in metrics["shard_staleness"][i, -1]]
        if "bytes_sent" in metrics:  # a network or a decentralized system
            r["bytes_sent_per_epoch"] = [_finite_or_none(v) for v in metrics["bytes_sent"][i]]
        for m in ("worker0_accuracy", "consensus_distance"):  # decentralized: per epoch, like test_accuracy
            if m in metrics:
                r[m + "_per_epoch"] = [_finite_or_none(v) for v in metrics[m][i]]
        r["seconds"] = seconds
        results.append(r)
    return results


def run_group(
    group: Group,
    dataset,
    *,
    loop: str = "auto",
    chunk_size: int | None = None,
    on_epoch: Callable[[int, int, dict[str, np.ndarray]], None] | None = None,
    on_chunk: Callable[[list[dict[str, Any]]], None] | None = None,
    trainer: Trainer | None = None,
    mesh: Mesh | None | str = "auto",
    memory_budget: int | None = None,
    skip: Callable[[Mapping[str, Any]], bool] | None = None,
) -> list[dict[str, Any]]:
    """Trains every config of a group and returns one result dict per config.

    Args:
        group: from :func:`group_configs`.
        dataset: an :class:`asgd_jax.data.Dataset`.
        loop: see :func:`asgd_jax.run_configs`.
        chunk_size: configs vmapped per call (``None``: :func:`default_chunk_size`
            per device; ``0``: the whole group), rounded up to a multiple of the
            mesh's devices and lowered to what fits in device memory. Every
            chunk reuses the same compiled program.
        on_epoch: ``on_epoch(chunk_index, epoch, metrics)`` after each epoch.
        on_chunk: ``on_chunk(results)`` after each chunk, with its results: a
            driver can save them at once.
        trainer: reuse a :class:`~asgd_jax.Trainer` built for ``group.train_config``.
        mesh: lay each chunk's configs over this mesh's devices (``"auto"``:
            :func:`local_mesh` when this process has several devices; ``None``:
            the default device). A chunk that does not divide evenly is padded
            with copies of its last config, whose results are dropped.
        memory_budget: bytes of memory per device (default: :func:`device_memory_bytes`);
            chunks are made small enough to fit (:func:`max_configs_per_device`).
        skip: ``skip(config) -> bool``; a chunk whose configs are all skipped is
            not run (a resumed sweep). Chunks are planned from the whole group
            first, so the chunks that do run are the same as in a full run.

    Returns:
        Per config of the chunks run: its :func:`config_id`, the config's fields, then ``test_accuracy``,
        ``test_loss`` and ``train_loss`` of the last epoch, the same per epoch (``*_per_epoch``),
        ``nonfinite`` (a NaN/inf loss or parameter was seen), ``collapsed`` (the
        model ended as a constant function), ``diverged`` (either, at any epoch
        end) with ``diverged_epoch`` (1-based, ``None`` if it never did), and ``seconds``
        (its chunk's wall time divided by the chunk's number of configs, compilation included).
        Non-finite numbers are ``None``.
    """
    trainer = trainer or Trainer(group.train_config, dataset)
    mesh = mesh_for_group(_resolve_mesh(mesh), len(group.configs))
    num_devices = 1 if mesh is None else int(mesh.devices.size)
    fit = max_configs_per_device(trainer, memory_budget)
    results = []
    for chunk in plan_chunks(group, chunk_size=chunk_size, num_devices=num_devices, max_per_device=fit):
        if skip is not None and all(skip(c) for c in chunk.configs):
            continue
        cb = None if on_epoch is None else (lambda e, m, ci=chunk.index: on_epoch(ci, e, m))
        chunk_results = run_chunk(chunk, trainer, loop=loop, mesh=mesh, on_epoch=cb)
        if on_chunk is not None:
            on_chunk(chunk_results)
        results.extend(chunk_results)
    return results
