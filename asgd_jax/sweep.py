"""The sweep engine: a grid of configs → groups of equal shapes → one program each.

A *config* is a flat dict: the static fields of :class:`~asgd_jax.TrainConfig`
(``model``, ``optimizer``, ``batch_size``, ``epochs``), the hyperparameters a
group vmaps over (``learning_rate``, ``delay`` and the optimizer's own keys,
e.g. ``momentum``) and ``seed``. Configs that share the static fields form a
:class:`Group`; its ``max_delay`` is the largest delay among them, so every
delay of a group runs in the same compiled program. A group is trained by
:func:`run_group`, which vmaps :class:`~asgd_jax.Trainer` over its configs in
chunks of ``chunk_size``.

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
import time
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from asgd_jax.train import GENERIC_HPARAMS, OPTIMIZERS, TrainConfig, Trainer, normalize_hparams, run_configs

__all__ = [
    "STATIC_FIELDS",
    "DESCRIPTIVE_FIELDS",
    "Group",
    "expand_grid",
    "normalize_config",
    "config_id",
    "group_configs",
    "default_chunk_size",
    "run_group",
]

# Fields that fix a compiled program's shapes: configs differing here never share a group.
STATIC_FIELDS = ("model", "optimizer", "batch_size", "epochs")
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
    TrainConfig(**static).validate(num_train)
    seed = cfg["seed"]
    if not _is_int(seed) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}.")
    described = {k: str(cfg[k]) for k in DESCRIPTIVE_FIELDS if k in cfg}
    hp = {
        k: v for k, v in cfg.items() if k not in STATIC_FIELDS and k not in DESCRIPTIVE_FIELDS and k != "seed"
    }
    hp = normalize_hparams(cfg["optimizer"], hp)
    return {
        **described,
        **static,
        "seed": int(seed),
        **{k: (int(v) if k in GENERIC_HPARAMS else float(v)) for k, v in hp.items()},
    }


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
        return ["learning_rate", *GENERIC_HPARAMS, *OPTIMIZERS[self.train_config.optimizer]]


def group_configs(configs: Sequence[Mapping[str, Any]], *, eval_batch_size: int = 1000) -> list[Group]:
    """Groups normalized configs by their static fields (first-seen order).

    A group's ``max_delay`` is the largest delay among its configs.
    """
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for c in configs:
        key = tuple(c[k] for k in STATIC_FIELDS) + tuple(c.get(k) for k in DESCRIPTIVE_FIELDS)
        groups.setdefault(key, []).append(dict(c))
    out = []
    for key, members in groups.items():
        tc = TrainConfig(
            **dict(zip(STATIC_FIELDS, key[: len(STATIC_FIELDS)])),
            max_delay=max(c["delay"] for c in members),
            eval_batch_size=eval_batch_size,
        )
        out.append(Group(tc, tuple(members)))
    return out


def default_chunk_size() -> int | None:
    """Configs vmapped per call: 1 on CPU, the whole group (``None``) elsewhere.

    On XLA:CPU, vmapping a convolution over per-config kernels turns it into a
    grouped convolution that runs about 3× slower per config than K separate
    calls of the same compiled step (measured for LeNet-5 at batch 64, K = 8),
    so CPU runs a group's configs one after another through one program.
    """
    return 1 if jax.default_backend() == "cpu" else None


def _finite_or_none(x: float) -> float | None:
    x = float(x)
    return x if np.isfinite(x) else None


def run_group(
    group: Group,
    dataset,
    *,
    loop: str = "auto",
    chunk_size: int | None = None,
    on_epoch: Callable[[int, int, dict[str, np.ndarray]], None] | None = None,
    on_chunk: Callable[[list[dict[str, Any]]], None] | None = None,
    trainer: Trainer | None = None,
) -> list[dict[str, Any]]:
    """Trains every config of a group and returns one result dict per config.

    Args:
        group: from :func:`group_configs`.
        dataset: an :class:`asgd_jax.data.Dataset`.
        loop: see :func:`asgd_jax.run_configs`.
        chunk_size: configs vmapped per call (``None``: :func:`default_chunk_size`;
            ``0``: the whole group). Every chunk reuses the same compiled program.
        on_epoch: ``on_epoch(chunk_index, epoch, metrics)`` after each epoch.
        on_chunk: ``on_chunk(results)`` after each chunk, with its results: a
            driver can save them at once.
        trainer: reuse a :class:`~asgd_jax.Trainer` built for ``group.train_config``.

    Returns:
        Per config: its :func:`config_id`, the config's fields, then ``test_accuracy``, ``test_loss`` and
        ``train_loss`` of the last epoch, the same per epoch (``*_per_epoch``),
        ``nonfinite`` (a NaN/inf loss or parameter was seen), ``collapsed`` (the
    model ended as a constant function), ``diverged`` (either, at any epoch
    end) with ``diverged_epoch`` (1-based, ``None`` if it never did), and ``seconds``
        (its chunk's wall time divided by the chunk's size, compilation included).
        Non-finite numbers are ``None``.
    """
    trainer = trainer or Trainer(group.train_config, dataset)
    if chunk_size is None:
        chunk_size = default_chunk_size()
    configs = list(group.configs)
    size = len(configs) if not chunk_size else int(chunk_size)
    names = group.hparam_names()
    results = []
    for ci, start in enumerate(range(0, len(configs), size)):
        chunk = configs[start : start + size]
        keys = jax.vmap(jax.random.key)(jnp.asarray([c["seed"] for c in chunk], jnp.uint32))
        hparams = {
            n: jnp.asarray([c[n] for c in chunk], jnp.int32 if n in GENERIC_HPARAMS else jnp.float32)
            for n in names
        }
        t0 = time.perf_counter()
        cb = None if on_epoch is None else (lambda e, m, ci=ci: on_epoch(ci, e, m))
        metrics = run_configs(trainer, keys, hparams, loop=loop, on_epoch=cb)
        seconds = (time.perf_counter() - t0) / len(chunk)
        chunk_results = []
        for i, c in enumerate(chunk):
            r = {"config_id": config_id(c), **c}
            for m in ("test_accuracy", "test_loss", "train_loss"):
                per_epoch = [_finite_or_none(v) for v in metrics[m][i]]
                r[m] = per_epoch[-1]
                r[m + "_per_epoch"] = per_epoch
            for flag in ("nonfinite", "collapsed", "diverged"):
                r[flag] = bool(metrics[flag][i, -1])
            r["diverged_epoch"] = (int(np.argmax(metrics["diverged"][i])) + 1) if r["diverged"] else None
            r["seconds"] = seconds
            chunk_results.append(r)
        if on_chunk is not None:
            on_chunk(chunk_results)
        results.extend(chunk_results)
    return results
