"""Training: ``make_train(config, dataset)`` → a pure ``train(key, hparams)``.

The pattern is PureJaxRL's: everything that fixes shapes (model, optimizer
family, batch size, epochs, maximum delay) is a static :class:`TrainConfig`;
everything a sweep varies (learning rate, delay, momentum, ..., and the seed
through ``key``) is a traced ``hparams`` dict. ``jax.jit(jax.vmap(train))``
then runs a whole group of configs as one program.

The step is kept apart from the loop that drives it. :class:`Trainer` exposes
``init``, ``step``, ``end_epoch`` and ``epoch``; ``train`` composes them with
``lax.scan`` (one program per epoch; the default everywhere). :func:`run_configs`
can also drive jitted steps from Python (``loop="step"``), the faster driver on
XLA:CPU for models with real convolutions (ResNet-20, see :func:`default_loop`);
both loops compute the same numbers.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from asgd_jax import decentralized as dec
from asgd_jax import network as network_lib
from asgd_jax import problems
from asgd_jax import timing as timing_lib
from asgd_jax.delay import delayed
from asgd_jax.microbatch import microbatched_value_and_grad
from asgd_jax.models import make_model, parse_model
from asgd_jax.simulator import ASSIGNMENTS, COMPENSATIONS, SimState, _event_state, asynchronous, next_worker

__all__ = [
    "OPTIMIZERS",
    "GENERIC_HPARAMS",
    "SYSTEMS",
    "TIMINGS",
    "RULES",
    "RULE_HPARAMS",
    "ASYNC_HPARAMS",
    "NETWORK_HPARAMS",
    "DOWNPOUR_HPARAMS",
    "FAILURE_HPARAMS",
    "SERVER_RULES",
    "DECENTRALIZED",
    "DC_LAMBDA_DEFAULTS",
    "INT_HPARAMS",
    "hparam_names",
    "make_timing",
    "TrainConfig",
    "TrainState",
    "Trainer",
    "make_train",
    "make_optimizer",
    "make_network",
    "normalize_hparams",
    "run_configs",
    "default_loop",
    "CPU_MICROBATCH",
    "microbatch_size",
    "CPU_EVAL_CHUNK",
    "eval_chunk_size",
]

# Per optimizer family: the hyperparameters a sweep may vary, with defaults.
# ``learning_rate`` has no default: every config must give it.
OPTIMIZERS: dict[str, dict[str, float]] = {
    "sgd": {"momentum": 0.9},
    "adam": {"b1": 0.9, "b2": 0.999, "eps": 1e-8},
    "adagrad": {"initial_accumulator_value": 0.1, "eps": 1e-7},
}
_FACTORIES = {"sgd": optax.sgd, "adam": optax.adam, "adagrad": optax.adagrad}
# The range [low, high) of each optimizer hyperparameter (checked for concrete values).
_OPTIMIZER_RANGES: dict[str, dict[str, tuple[float, float]]] = {
    "sgd": {"momentum": (0.0, 1.0)},
    "adam": {"b1": (0.0, 1.0), "b2": (0.0, 1.0), "eps": (1e-30, np.inf)},
    "adagrad": {"initial_accumulator_value": (0.0, np.inf), "eps": (1e-30, np.inf)},
}
# Hyperparameters of every family, with defaults: the delay in steps, and the length of a
# linear learning-rate warm-up in steps (0: none). Both are integers.
GENERIC_HPARAMS: dict[str, int] = {"delay": 0, "warmup_steps": 0}

# The system around the server optimizer: ``"delay"`` (every gradient applied ``delay`` steps late,
# :func:`asgd_jax.delayed`) or ``"async"`` (the event model of :func:`asgd_jax.asynchronous`).
SYSTEMS = ("delay", "async")
# Compute-time laws of ``system="async"`` (:func:`asgd_jax.timing.from_name` with location ``time_mean``
# and spread ``time_spread``).
TIMINGS = timing_lib.LAWS
# Server rules a config can add by name (``TrainConfig.rules``), each with its traced hyperparameter:
# ``"clip"`` clips each gradient to ``clip_norm``; ``"adaptive"``/``"inverse"`` scale it by its staleness;
# ``"drop"`` drops arrivals older than ``max_staleness`` (Ringmaster); ``"accumulate"`` steps on the mean
# of ``accumulate`` arrivals (Aji & Heafield; with ``drop`` and ``max_staleness=0``, Rennala SGD);
# ``"backup"`` gives the sync rule ``backup_workers`` backup workers. The newest methods (docs/methods.md,
# "The newest methods"): ``"stop"`` stops and restarts jobs staler than ``max_staleness`` (Ringmaster with
# calculation stops; needs ``"drop"``); ``"fastest"`` gives jobs to workers ``0 .. fastest - 1`` only (Naive
# Optimal ASGD); ``"malenia"`` (Malenia SGD, batch ``malenia_batch``) and ``"ringleader"`` (Ringleader ASGD)
# replace the drop/accumulate stepper; ``"rescaled"`` scales worker i's gradient by its expected compute
# time over their harmonic mean (Rescaled ASGD).
RULES = ("clip", "adaptive", "inverse", "drop", "accumulate", "backup", "stop", "fastest", "malenia",
         "ringleader", "rescaled")
RULE_HPARAMS: dict[str, str] = {"clip": "clip_norm", "drop": "max_staleness", "accumulate": "accumulate",
                                "backup": "backup_workers", "fastest": "fastest", "malenia": "malenia_batch"}
# The rules that need a parameter server built from the rules of :mod:`asgd_jax.rules` (not ``asynchronous``).
FRONTIER_RULES = ("malenia", "ringleader", "rescaled")
# Hyperparameters of ``system="async"`` (traced: one program serves every value), with defaults.
# ``initial_workers = 0`` means all ``workers`` from the start (no gradual introduction).
ASYNC_HPARAMS: dict[str, float] = {
    "workers": 1,
    "initial_workers": 0,
    "add_workers": 1,
    "add_every": 1,
    "time_mean": 1.0,
    "time_spread": 0.0,
    "straggler_fraction": 0.0,
    "straggler_slowdown": 1.0,
}
# Systems of ``system="async"`` (``TrainConfig.server_rule``): an asynchronous parameter server, SSGD
# through a parameter server, AllReduce-SGD, the decentralized AD-PSGD and D-PSGD (one model per worker),
# and Downpour's replicas with local copies (one shard; ``n_fetch`` / ``n_push``: local accumulation).
SERVER_RULES = ("async", "sync", "allreduce", "ad-psgd", "d-psgd", "downpour", "mindflayer")
DECENTRALIZED = ("ad-psgd", "d-psgd")
# Hyperparameters of ``TrainConfig(network=True)``: link latency and bandwidth of every worker and the
# server's link bandwidth (bytes per time unit; 0 = unlimited), traced like the compute-time model's.
NETWORK_HPARAMS: dict[str, float] = {"latency": 0.0, "bandwidth": 0.0, "server_bandwidth": 0.0}
# Hyperparameters of ``server_rule="downpour"`` (:func:`asgd_jax.downpour.downpour`, traced): a replica
# fetches every ``n_fetch`` and pushes its summed gradients every ``n_push`` of its steps, and steps its
# local copy by ``local_learning_rate`` in between (0: every gradient at the fetched parameters); with a
# network, shard ``s`` of ``S`` has the latency ``shard_latency * (s + 1/2) / S`` (spread evenly over
# ``[0, shard_latency]``, mean ``shard_latency / 2`` for every ``S``), so shards see pushes at other times.
DOWNPOUR_HPARAMS: dict[str, float] = {"n_fetch": 1, "n_push": 1, "local_learning_rate": 0.0, "shard_latency": 0.0}
# Hyperparameters of ``TrainConfig(failures=True)`` (:func:`asgd_jax.timing.failing`, traced): worker
# ``fail_worker`` is down during ``[fail_at, return_at)`` of simulated time (``inf``: it never returns).
FAILURE_HPARAMS: dict[str, float] = {"fail_worker": 0, "fail_at": 0.0, "return_at": float("inf")}
# Hyperparameters of ``server_rule="mindflayer"`` (:func:`asgd_jax.mindflayer`, traced): every worker makes
# ``attempts`` attempts per round, each with the time budget ``budget`` times the worker's expected compute time.
MINDFLAYER_HPARAMS: dict[str, float] = {"budget": 2.0, "attempts": 1}
# DC-ASGD's lambda (``"dc-c"``) or lambda_0 (``"dc-a"``) when a config does not give ``dc_lambda``.
DC_LAMBDA_DEFAULTS: dict[str, float] = {"dc-c": 0.04, "dc-a": 2.0}
# Hyperparameters that are integers (the others are float32).
INT_HPARAMS = frozenset({"delay", "warmup_steps", "workers", "initial_workers", "add_workers", "add_every",
                         "max_staleness", "accumulate", "backup_workers", "n_fetch", "n_push", "fail_worker",
                         "fastest", "attempts"})


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """What fixes the compiled program's shapes (one value per sweep group).

    Attributes:
        model: ``"lenet5"``, ``"mlp"``, ``"resnet20"`` or a Transformer spec
            ``"transformer:layers=2,width=128,heads=4,context=128"``
            (:func:`asgd_jax.models.parse_model`; for a text data set).
        optimizer: server optimizer family, a key of :data:`OPTIMIZERS`.
        batch_size: samples per gradient (text: windows per gradient).
        epochs: passes over the training set (``num_train // batch_size`` steps
            each; the remainder of a shuffled epoch is dropped), or evaluation
            periods of ``steps_per_epoch`` steps.
        steps_per_epoch: ``None`` (a whole pass) or the steps between two
            evaluations: each epoch then trains on the first
            ``steps_per_epoch * batch_size`` samples of a fresh permutation (a
            random subset), so a large training set gives curves with many points.
        max_delay: static bound on the per-config ``delay`` hyperparameter.
        eval_batch_size: test-set images (or token windows) evaluated at once
            (memory and speed, not maths: the test metrics are the same up to
            the float rounding of summing per-chunk losses). ``"auto"``
            (default): on XLA:CPU the model's :data:`CPU_EVAL_CHUNK` (LeNet-5:
            100, where a chunk of 1 000 images ran 3x slower per image), else
            1 000 (see :func:`eval_chunk_size`).
        system: ``"delay"`` (default: :func:`~asgd_jax.delayed`, the constant
            delay ``delay``) or ``"async"``: the server optimizer wrapped in the
            event model :func:`~asgd_jax.asynchronous`, whose numbers
            (:data:`ASYNC_HPARAMS`: ``workers``, the compute-time model, the
            introduction schedule, ``dc_lambda``) are traced hyperparameters.
            The fields below apply to ``"async"`` only.
        max_workers: static bound on the ``workers`` hyperparameter (the pool size).
        server_rule: ``"async"`` (apply each arrival), ``"sync"`` (SSGD: a
            barrier every ``workers`` gradients, their average applied),
            ``"allreduce"`` (AllReduce-SGD: SSGD whose round ends with a ring
            all-reduce instead of the server's pulls and pushes), or the
            decentralized ``"ad-psgd"`` / ``"d-psgd"``
            (:mod:`asgd_jax.decentralized`: one model per worker, so
            ``workers`` must equal ``max_workers``; ``test_accuracy`` is that of
            the average model, with ``worker0_accuracy`` and
            ``consensus_distance`` beside it; no warm-up), or ``"downpour"``
            (:func:`asgd_jax.downpour.downpour` with one shard: every replica
            keeps a local copy, fetches every ``n_fetch`` and pushes its summed
            gradients every ``n_push`` of its steps, :data:`DOWNPOUR_HPARAMS`;
            ``n_fetch = n_push = tau`` with no local step is local accumulation
            as in Aji & Heafield's code; ``workers`` must equal ``max_workers``;
            ``shards`` server shards; records add ``shard_staleness``, each
            shard's mean staleness over the pushes it applied), or
            ``"mindflayer"`` (:func:`asgd_jax.mindflayer`: rounds of
            ``attempts`` budgeted attempts per worker, :data:`MINDFLAYER_HPARAMS`;
            no rules; ``worker_gradients`` are not counted).
        shards: the number of server shards of ``server_rule="downpour"``
            (contiguous slices of the flattened parameters, default 1).
        failures: a worker fails (:func:`asgd_jax.timing.failing` around the
            compute-time model) with the traced :data:`FAILURE_HPARAMS`:
            asynchronous systems train on, synchronous rounds stall until it
            returns.
        topology: the peers of ``"ad-psgd"`` (:data:`asgd_jax.decentralized.PEERS`,
            default ``"exponential"``) or the mixing matrix of ``"d-psgd"``
            (:data:`asgd_jax.decentralized.TOPOLOGIES`, default ``"ring"``).
        network: communication costs time (:mod:`asgd_jax.network`), with the
            traced hyperparameters :data:`NETWORK_HPARAMS` and the model's real
            size in bytes; adds ``bytes_sent`` to the metrics.
        compensation: ``None``, ``"dc-c"`` or ``"dc-a"`` (DC-ASGD; async rule only).
        assignment: ``"pure"``, ``"random"`` or ``"shuffle"`` (who gets the next job).
        timing: compute-time law, one of :data:`TIMINGS`, wrapped in
            :func:`asgd_jax.timing.stragglers` (``straggler_fraction`` of the
            workers ``straggler_slowdown`` times slower; 0 and 1 by default).
        rules: server rules added by name, a tuple of :data:`RULES`; each
            brings its traced hyperparameter (:data:`RULE_HPARAMS`), which the
            config must give (``backup_workers`` defaults to 0). The chain is
            :func:`asgd_jax.server_chain`'s: compensation, clipping, staleness
            scaling, then drop/accumulate. ``"malenia"``, ``"ringleader"``
            and ``"rescaled"`` (:data:`FRONTIER_RULES`, pure assignment, no
            compensation) build :func:`asgd_jax.parameter_server` around
            clipping, staleness scaling, Rescaled ASGD's
            :func:`asgd_jax.rules.scale_by_compute_time` (the expected times of
            the compute-time model), then Malenia's or Ringleader's server or
            the stepper; ``"stop"`` (with ``"drop"``) and ``"fastest"`` combine
            with either path.
        server: a callable ``server(inner, hparams, key)`` returning the whole
            system around the server optimizer ``inner`` (e.g. an
            :func:`asgd_jax.parameter_server` around your own chain), built
            from the config's traced ``hparams`` at every step; replaces the
            switches above. Its extra hyperparameters are named, with defaults,
            in ``server_hparams`` (a tuple of ``(name, default)`` pairs).
        data_split: ``None`` (one shuffled order of the whole training set) or
            a split of :data:`asgd_jax.problems.SPLITS` (``"iid"``,
            ``"contiguous"``, ``"label"``, ``"dirichlet"`` with
            ``split_alpha``): the training set is split over the ``workers``
            (which must then equal ``max_workers``) and every gradient is
            taken on a batch of the shard of :func:`asgd_jax.next_worker`.
            Each worker walks through its own shard in an order reshuffled
            every epoch. Adds ``per_class_accuracy`` and ``worker_gradients``
            (per worker, the gradients an asynchronous server used, i.e. did
            not drop) to the metrics.
        split_alpha: the Dirichlet concentration of ``data_split="dirichlet"``.
        worker_times: per-worker factors on the compute time (one per worker up
            to ``max_workers``; :func:`asgd_jax.timing.per_worker`): with a law
            of mean 1, worker ``i``'s mean compute time (AsGrad's ``1, ..., 10``).
        microbatch: samples per micro-batch of the training step's gradient
            (:func:`asgd_jax.microbatch.microbatched_value_and_grad`: the batch's
            mean gradient, summed micro-batch by micro-batch; memory and speed,
            not maths, up to float rounding). ``0``: the whole batch at once.
            ``"auto"`` (default): on XLA:CPU, micro-batches of the model's
            :data:`CPU_MICROBATCH` (LeNet-5: 32) for batches of at least four
            of them (where it is measured faster), else the whole batch.
    """

    model: str = "lenet5"
    optimizer: str = "sgd"
    batch_size: int = 64
    epochs: int = 30
    max_delay: int = 0
    eval_batch_size: int | str = "auto"
    system: str = "delay"
    max_workers: int = 1
    server_rule: str = "async"
    compensation: str | None = None
    assignment: str = "pure"
    timing: str = "fixed"
    rules: tuple[str, ...] = ()
    server: Callable | None = None
    server_hparams: tuple[tuple[str, float], ...] = ()
    data_split: str | None = None
    split_alpha: float = 1.0
    worker_times: tuple[float, ...] = ()
    topology: str | None = None
    network: bool = False
    shards: int = 1
    failures: bool = False
    steps_per_epoch: int | None = None
    microbatch: int | str = "auto"

    def validate(self, num_train: int | None = None) -> None:
        """Raises a one-line ``ValueError`` for a config that cannot run."""
        from asgd_jax.models import parse_model

        parse_model(self.model)  # a one-line ValueError for an unknown model or bad transformer options
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; choose one of {sorted(OPTIMIZERS)}.")
        for name in ("batch_size", "epochs", "eval_batch_size"):
            value = getattr(self, name)
            if name == "eval_batch_size" and value == "auto":
                continue
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
                also = " or 'auto'" if name == "eval_batch_size" else ""
                raise ValueError(f"{name} must be a positive integer{also}, got {value!r}.")
        if (
            isinstance(self.max_delay, bool)
            or not isinstance(self.max_delay, (int, np.integer))
            or self.max_delay < 0
        ):
            raise ValueError(f"max_delay must be a non-negative integer, got {self.max_delay!r}.")
        if num_train is not None and self.batch_size > num_train:
            raise ValueError(
                f"batch_size={self.batch_size} is larger than the training set ({num_train} samples); "
                f"use a batch size of at most {num_train}."
            )
        spe = self.steps_per_epoch
        if spe is not None:
            if isinstance(spe, bool) or not isinstance(spe, (int, np.integer)) or spe < 1:
                raise ValueError(f"steps_per_epoch must be a positive integer (None: a whole pass), got {spe!r}.")
            if num_train is not None and spe > num_train // self.batch_size:
                raise ValueError(f"steps_per_epoch={spe} needs more than the training set's {num_train} samples at "
                                 f"batch_size={self.batch_size}; use at most {num_train // self.batch_size}.")
        mb = self.microbatch
        if mb != "auto" and (isinstance(mb, bool) or not isinstance(mb, (int, np.integer)) or mb < 0):
            raise ValueError(f"microbatch must be 'auto' or a non-negative integer (0: the whole batch), got {mb!r}.")
        self._validate_system()

    def _validate_system(self) -> None:
        if self.system not in SYSTEMS:
            raise ValueError(f"unknown system {self.system!r}; choose one of {SYSTEMS}.")
        defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
        async_fields = ("max_workers", "server_rule", "compensation", "assignment", "timing", "rules", "server",
                        "server_hparams", "data_split", "worker_times", "topology", "network", "shards",
                        "failures")
        if self.system == "delay":
            changed = [f for f in async_fields if getattr(self, f) != defaults[f]]
            if changed:
                raise ValueError(f"{changed[0]} applies to system='async' only; set system='async' or drop it.")
            return
        if self.max_delay != 0:
            raise ValueError("max_delay applies to system='delay' only; system='async' has workers instead.")
        mw = self.max_workers
        if isinstance(mw, bool) or not isinstance(mw, (int, np.integer)) or mw < 1:
            raise ValueError(f"max_workers must be a positive integer, got {mw!r}.")
        for name, allowed in (
            ("server_rule", SERVER_RULES),
            ("compensation", COMPENSATIONS),
            ("assignment", ASSIGNMENTS),
            ("timing", TIMINGS),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(f"unknown {name} {getattr(self, name)!r}; choose one of {allowed}.")
        if self.server_rule != "async" and self.compensation is not None:
            raise ValueError("compensation (DC-ASGD) needs server_rule='async' (the other systems have no stale "
                             "gradients to compensate at a server).")
        if isinstance(self.shards, bool) or not isinstance(self.shards, (int, np.integer)) or self.shards < 1:
            raise ValueError(f"shards must be a positive integer, got {self.shards!r}.")
        if self.shards != 1 and self.server_rule != "downpour":
            raise ValueError("shards applies to server_rule='downpour' only; drop it.")
        self._validate_topology()
        self._validate_rules()

    def _validate_topology(self) -> None:
        rule = self.server_rule
        if rule in DECENTRALIZED:
            if self.rules or self.server is not None or self.assignment != "pure":
                raise ValueError(f"server_rule={rule!r} has no server: drop rules, server and assignment.")
            if self.topology is not None:  # raises the library's one-line error for a bad name or size
                (dec.peer_table if rule == "ad-psgd" else dec.mixing_matrix)(self.topology, self.max_workers)
            elif rule == "ad-psgd":
                dec.peer_table("exponential", self.max_workers)
        elif self.topology is not None:
            raise ValueError("topology applies to server_rule='ad-psgd' or 'd-psgd' only; drop it.")
        if rule in ("allreduce", "downpour", "mindflayer") and (self.rules or self.server is not None or self.assignment != "pure"):
            raise ValueError(f"server_rule={rule!r} takes no server rules, server or assignment; drop them.")

    def _validate_rules(self) -> None:
        rules = tuple(self.rules)
        unknown = [r for r in rules if r not in RULES]
        if unknown or len(set(rules)) != len(rules):
            raise ValueError(f"rules must be distinct names of {RULES}, got {rules!r}.")
        sync_only = {"backup"}
        async_only = {"adaptive", "inverse", "drop", "accumulate", "stop", "fastest", *FRONTIER_RULES}
        wrong = [r for r in rules if r in (sync_only if self.server_rule == "async" else async_only)]
        if wrong:
            raise ValueError(f"rule {wrong[0]!r} does not apply to server_rule={self.server_rule!r}.")
        if "adaptive" in rules and "inverse" in rules:
            raise ValueError("choose one staleness scaling: 'adaptive' or 'inverse'.")
        self._validate_frontier_rules(rules)
        if self.server is not None and (rules or self.compensation is not None):
            raise ValueError("server= builds the whole system; drop rules and compensation (put them in it).")
        if self.data_split is not None and self.data_split not in problems.SPLITS:
            raise ValueError(f"unknown data_split {self.data_split!r}; choose one of {problems.SPLITS}.")
        if not (np.isfinite(self.split_alpha) and self.split_alpha > 0):
            raise ValueError(f"split_alpha must be a positive number, got {self.split_alpha!r}.")
        times = np.asarray(self.worker_times, np.float64)
        if times.size and (times.shape != (self.max_workers,) or not np.all(np.isfinite(times) & (times > 0))):
            raise ValueError(f"worker_times must hold max_workers={self.max_workers} positive numbers, "
                             f"got {self.worker_times!r}.")


    def _validate_frontier_rules(self, rules: tuple[str, ...]) -> None:
        servers = [r for r in rules if r in ("malenia", "ringleader", "drop", "accumulate")]
        if ("malenia" in rules or "ringleader" in rules) and len(servers) > 1:
            raise ValueError(f"rules {servers[0]!r} and {servers[1]!r} are two server steppers; choose one.")
        if "stop" in rules and "drop" not in rules:
            raise ValueError("rule 'stop' (Ringmaster's calculation stops) needs 'drop' (the staleness limit "
                             "max_staleness).")
        pure_only = [r for r in rules if r in ("stop", "malenia", "ringleader")]
        if pure_only and self.assignment != "pure":
            raise ValueError(f"rule {pure_only[0]!r} restarts workers at the current point: it needs "
                             f"assignment='pure', got {self.assignment!r}.")
        if any(r in FRONTIER_RULES for r in rules) and self.compensation is not None:
            raise ValueError("compensation (DC-ASGD) does not combine with rules 'malenia', 'ringleader', "
                             "'rescaled'; drop one.")


class TrainState(NamedTuple):
    """Everything one run carries between steps (a pytree; vmap adds a config axis)."""

    params: Any
    opt_state: Any
    data_key: jax.Array  # PRNG key of the run's data order
    order: jax.Array  # int32[steps_per_epoch * batch_size]: this epoch's sample order (with a data_split:
    #                   int32[workers, largest shard], each worker's order of its shard's positions)
    step: jax.Array  # int32: step within the epoch
    epoch: jax.Array  # int32: epochs completed
    loss_sum: jax.Array  # float32: sum of this epoch's training losses
    warmup_steps: jax.Array  # float32: length of the linear learning-rate warm-up (0: none)
    nonfinite: jax.Array  # bool: a non-finite loss or parameter was seen
    diverged: jax.Array  # bool: nonfinite, or the model collapsed at an epoch end
    hparams: Any = None  # dict of the config's traced hyperparameters (the system is rebuilt from them)
    cursor: Any = None  # int32[workers]: with a data_split, each worker's position in its shard order
    worker_gradients: Any = None  # int32[workers]: with a data_split, the gradients of each worker the server used
    invalid: Any = None  # bool: a (traced) hyperparameter is out of its range (see Trainer.invalid)


def _defaults(optimizer: str, config: TrainConfig | None) -> dict[str, Any]:
    """Every hyperparameter of a config other than ``learning_rate``, with its default."""
    if config is None or config.system == "delay":
        return {**OPTIMIZERS[optimizer], **GENERIC_HPARAMS}
    out = {**OPTIMIZERS[optimizer], "warmup_steps": 0, **ASYNC_HPARAMS}
    if config.compensation is not None:
        out["dc_lambda"] = DC_LAMBDA_DEFAULTS[config.compensation]
    if config.network:
        out.update(NETWORK_HPARAMS)
    if config.server_rule == "downpour":
        out.update(DOWNPOUR_HPARAMS)
    if config.failures:
        out.update(FAILURE_HPARAMS)
    if config.server_rule == "mindflayer":
        out.update(MINDFLAYER_HPARAMS)
    for rule in config.rules:
        if rule in RULE_HPARAMS:  # required (None), except the backup workers
            out[RULE_HPARAMS[rule]] = 0 if rule == "backup" else None
    out.update(dict(config.server_hparams))
    return out


def hparam_names(config: TrainConfig) -> list[str]:
    """The traced hyperparameters of a static config, in a fixed order.

    ``learning_rate``, then for ``system="delay"`` ``delay`` and ``warmup_steps``,
    for ``system="async"`` ``warmup_steps``, :data:`ASYNC_HPARAMS` and (with
    compensation) ``dc_lambda``; the optimizer family's own keys come first in
    the async case.

    Example:
        >>> from asgd_jax.train import TrainConfig, hparam_names
        >>> hparam_names(TrainConfig(optimizer="sgd"))
        ['learning_rate', 'delay', 'warmup_steps', 'momentum']
        >>> hparam_names(TrainConfig(system="async", max_workers=4, compensation="dc-a"))[-1]
        'dc_lambda'
    """
    if config.system == "delay":
        return ["learning_rate", *GENERIC_HPARAMS, *OPTIMIZERS[config.optimizer]]
    return ["learning_rate", *_defaults(config.optimizer, config)]


def with_defaults(
    optimizer: str, hparams: Mapping[str, Any], config: TrainConfig | None = None
) -> dict[str, Any]:
    """``hparams`` with the optimizer family's defaults and ``delay=0`` filled in.

    With an asynchronous ``config`` (``system="async"``) the defaults are those of
    :data:`ASYNC_HPARAMS` (and ``dc_lambda`` when compensating) instead of ``delay``.
    Checks the keys only (values may be traced): a one-line ``ValueError`` for
    an unknown optimizer, an unknown key, or a missing ``learning_rate``.
    """
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}; choose one of {sorted(OPTIMIZERS)}.")
    defaults = _defaults(optimizer, config)
    allowed = {"learning_rate", *defaults}
    unknown = set(hparams) - allowed
    if unknown:
        system = "" if config is None or config.system == "delay" else " with system='async'"
        hint = ""
        if "delay" in unknown and system:
            hint = " (system='async' has workers instead of delay)"
        elif "dc_lambda" in unknown:
            hint = " (dc_lambda needs compensation='dc-c' or 'dc-a' with system='async')"
        raise ValueError(
            f"unknown hyperparameter(s) {sorted(unknown)} for optimizer {optimizer!r}{system}; "
            f"allowed: {sorted(allowed)}{hint}."
        )
    if "learning_rate" not in hparams:
        raise ValueError("every config needs a learning_rate.")
    out = {**defaults, **hparams}
    missing = [k for k, v in out.items() if v is None]
    if missing:
        rule = {v: k for k, v in RULE_HPARAMS.items()}.get(missing[0], "?")
        raise ValueError(f"rule {rule!r} needs the hyperparameter {missing[0]}; give it in the config.")
    return out


def normalize_hparams(
    optimizer: str,
    hparams: Mapping[str, Any],
    max_delay: int | None = None,
    config: TrainConfig | None = None,
) -> dict[str, float]:
    """Checks a config's hyperparameters and fills the optimizer's defaults.

    Returns a dict with ``learning_rate``, ``delay`` and the optimizer's own
    keys (:data:`OPTIMIZERS`). Raises a one-line ``ValueError`` for a missing or
    non-positive learning rate, a negative delay or one above ``max_delay``, or an
    unknown key. With an asynchronous ``config`` the keys are those of
    :func:`hparam_names` and the checks are ``1 <= workers <= max_workers``,
    ``initial_workers >= 0`` (0: all), ``add_workers >= 0``, ``add_every >= 1``,
    ``time_mean > 0``, ``time_spread >= 0``, ``0 <= straggler_fraction <= 1``,
    ``straggler_slowdown > 0`` and ``dc_lambda >= 0``.
    """
    out = with_defaults(optimizer, hparams, config)
    lr = float(out["learning_rate"])
    if not lr > 0 or not np.isfinite(lr):
        raise ValueError(f"learning_rate must be a positive number, got {out['learning_rate']!r}.")
    for k, (low, high) in _OPTIMIZER_RANGES[optimizer].items():
        v = out[k]
        if isinstance(v, bool) or not np.isfinite(float(v)) or not low <= float(v) < high:
            raise ValueError(f"{k} must be a number in [{low:g}, {high:g}), got {v!r}.")
    if config is not None and config.system == "async":
        return _normalize_async(out, config)
    delay = out["delay"]
    if isinstance(delay, bool) or int(delay) != delay or delay < 0:
        raise ValueError(f"delay must be a non-negative integer number of steps, got {delay!r}.")
    if max_delay is not None and delay > max_delay:
        raise ValueError(f"delay={delay} exceeds max_delay={max_delay}; raise max_delay to at least {delay}.")
    warmup = out["warmup_steps"]
    if isinstance(warmup, bool) or int(warmup) != warmup or warmup < 0:
        raise ValueError(f"warmup_steps must be a non-negative integer (0: no warm-up), got {warmup!r}.")
    out["delay"], out["warmup_steps"] = int(delay), int(warmup)
    return out


def _normalize_async(out: dict[str, Any], config: TrainConfig) -> dict[str, Any]:
    def integer(name, low, high=None, what=""):
        v = out[name]
        ok = not isinstance(v, bool) and np.isfinite(float(v)) and int(v) == v and v >= low
        if not ok or (high is not None and v > high):
            bound = f"an integer in [{low}, {high}]" if high is not None else f"an integer >= {low}"
            raise ValueError(f"{name} must be {bound}{what}, got {v!r}.")
        out[name] = int(v)

    def number(name, ok, what):
        v = out[name]
        if isinstance(v, bool) or not np.isfinite(float(v)) or not ok(float(v)):
            raise ValueError(f"{name} must be {what}, got {v!r}.")
        out[name] = float(v)

    integer("warmup_steps", 0, what=" (0: no warm-up)")
    integer("workers", 1, config.max_workers, what=" (max_workers bounds it)")
    integer("initial_workers", 0, config.max_workers, what=" (0: all workers from the start)")
    integer("add_workers", 0)
    integer("add_every", 1, what=" server steps")
    number("time_mean", lambda v: v > 0, "a positive number")
    number("time_spread", lambda v: v >= 0, "a number >= 0")
    number("straggler_fraction", lambda v: 0 <= v <= 1, "in [0, 1]")
    number("straggler_slowdown", lambda v: v > 0, "a positive number")
    if "dc_lambda" in out:
        number("dc_lambda", lambda v: v >= 0, "a number >= 0")
    if "clip_norm" in out:
        number("clip_norm", lambda v: v > 0, "a positive number")
    if "max_staleness" in out:
        integer("max_staleness", 0)
    if "accumulate" in out:
        integer("accumulate", 1)
    if "backup_workers" in out:
        integer("backup_workers", 0, out["workers"] - 1, what=" (at least one worker must be waited for)")
    if "fastest" in out:
        integer("fastest", 1, out["workers"], what=" (the fastest workers that get jobs; workers bounds it)")
        if out["initial_workers"]:
            raise ValueError("rule 'fastest' sets the active workers; drop initial_workers.")
    if "malenia_batch" in out:
        number("malenia_batch", lambda v: v > 0, "a positive number (Malenia's S)")
    if config.server_rule == "mindflayer":
        number("budget", lambda v: v > 0, "a positive number (times each worker's expected compute time)")
        integer("attempts", 1, what=" (attempts per worker and round)")
    if config.network:
        for k in NETWORK_HPARAMS:
            number(k, lambda v: v >= 0, "a number >= 0" + (" (0: unlimited)" if "bandwidth" in k else ""))
    _normalize_downpour_failures(out, config, integer, number)
    if config.server_rule in DECENTRALIZED:
        if out["workers"] != config.max_workers:
            raise ValueError(f"server_rule={config.server_rule!r} keeps one model per worker: workers="
                             f"{out['workers']} must equal max_workers={config.max_workers}.")
        if out["warmup_steps"] or out["initial_workers"]:
            raise ValueError(f"server_rule={config.server_rule!r} has no warm-up or gradual introduction; "
                             "drop warmup_steps and initial_workers.")
    if config.data_split is not None and out["workers"] != config.max_workers:
        raise ValueError(f"data_split splits the data over max_workers={config.max_workers} workers; "
                         f"workers={out['workers']} must equal it (use one group per worker count).")
    for k, _ in config.server_hparams:
        number(k, lambda v: True, "a finite number")
    for k in OPTIMIZERS[config.optimizer]:
        out[k] = float(out[k])
    out["learning_rate"] = float(out["learning_rate"])
    return out


def _normalize_downpour_failures(out, config: TrainConfig, integer, number) -> None:
    if config.server_rule == "downpour":
        integer("n_fetch", 1)
        integer("n_push", 1)
        number("local_learning_rate", lambda v: v >= 0, "a number >= 0 (0: no local steps)")
        number("shard_latency", lambda v: v >= 0, "a number >= 0")
        if out["shard_latency"] and not config.network:
            raise ValueError("shard_latency needs network=True (messages take no time without a network).")
        if out["workers"] != config.max_workers or out["initial_workers"]:
            raise ValueError(f"server_rule='downpour' runs all max_workers={config.max_workers} replicas from the "
                             f"start: workers={out['workers']} must equal it; drop initial_workers.")
    if config.failures:
        integer("fail_worker", 0, config.max_workers - 1, what=" (a worker id)")
        number("fail_at", lambda v: v >= 0, "a number >= 0 (simulated time)")
        v = out["return_at"]
        if isinstance(v, bool) or np.isnan(float(v)) or not float(v) >= out["fail_at"]:
            raise ValueError(f"return_at must be a number >= fail_at={out['fail_at']:g} (inf: never returns), "
                             f"got {v!r}.")
        out["return_at"] = float(v)


def make_timing(name: str, hparams: Mapping[str, Any], worker_times=()) -> timing_lib.TimingModel:
    r"""The compute-time model of an asynchronous config: a law of :data:`TIMINGS` with stragglers.

    With :math:`\mu` = ``time_mean``, :math:`s` = ``time_spread``, :math:`p` =
    ``straggler_fraction`` and :math:`c` = ``straggler_slowdown``:
    ``stragglers(base, p, c)`` where ``base`` is ``fixed(μ)``, ``normal(μ, s)``,
    ``exponential(μ)`` or ``lognormal(μ, s)``; the last :math:`\lfloor pn + 1/2 \rfloor`
    of the ``n`` workers take :math:`c` times longer. Values may be traced.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from asgd_jax.train import make_timing
        >>> model = make_timing("fixed", {"time_mean": 2.0, "time_spread": 0.0,
        ...                               "straggler_fraction": 0.25, "straggler_slowdown": 3.0})
        >>> model.sample(jax.random.key(0), jnp.arange(4), num_workers=4)
        Array([2., 2., 2., 6.], dtype=float32)
    """
    if name not in TIMINGS:
        raise ValueError(f"unknown timing {name!r}; choose one of {TIMINGS}.")
    base = timing_lib.from_name(name, hparams["time_mean"], hparams["time_spread"])
    if len(worker_times):
        base = timing_lib.per_worker(base, jnp.asarray(worker_times, jnp.float32))
    return timing_lib.stragglers(base, hparams["straggler_fraction"], hparams["straggler_slowdown"])


def make_network(hparams: Mapping[str, Any]) -> network_lib.Network:
    r"""The network of a config with ``network=True``: :data:`NETWORK_HPARAMS`, a bandwidth of 0 meaning unlimited.

    Example:
        >>> from asgd_jax.train import make_network
        >>> net = make_network({"latency": 0.1, "bandwidth": 0.0, "server_bandwidth": 1e6})
        >>> float(net.byte_time), float(net.server_byte_time)
        (0.0, 9.999999974752427e-07)
    """
    unlimited = lambda b: jnp.where(jnp.asarray(b, jnp.float32) > 0, jnp.asarray(b, jnp.float32), jnp.inf)
    return network_lib.network(latency=jnp.asarray(hparams["latency"], jnp.float32),
                               bandwidth=unlimited(hparams["bandwidth"]),
                               server_bandwidth=unlimited(hparams["server_bandwidth"]))


def make_optimizer(
    optimizer: str,
    hparams: Mapping[str, Any],
    max_delay: int,
    config: TrainConfig | None = None,
    key: jax.Array | int = 0,
) -> optax.GradientTransformation:
    r"""The server optimizer of a config, inside the config's system.

    ``system="delay"`` (or no ``config``): ``delayed(inject_hyperparams(family)(...), delay)``.
    ``system="async"``: ``asynchronous(inject_hyperparams(family)(...), workers, ...)``
    with the config's static switches (``server_rule``, ``compensation``,
    ``assignment``, ``max_workers``), the compute-time model
    :func:`make_timing`, the introduction schedule (``initial_workers`` 0 meaning
    all workers), ``dc_lambda`` and the simulation's ``key``. Every numeric
    hyperparameter lives in the optimizer state (via ``optax.inject_hyperparams``;
    the delay in :class:`~asgd_jax.DelayedState`, the system's numbers in
    :class:`~asgd_jax.SimState`), so ``update`` reads them from the state and one
    compiled step serves every config of a vmapped group.

    Example:
        >>> import jax.numpy as jnp
        >>> from asgd_jax.train import TrainConfig, make_optimizer, normalize_hparams
        >>> cfg = TrainConfig(system="async", max_workers=3, compensation="dc-c")
        >>> hp = normalize_hparams("sgd", {"learning_rate": 0.1, "workers": 3}, config=cfg)
        >>> tx = make_optimizer("sgd", hp, 0, cfg)
        >>> state = tx.init(jnp.zeros(2))
        >>> int(state.events.workers), round(float(state.server_state[0].dc_lambda), 6)
        (3, 0.04)
    """
    skip = {*GENERIC_HPARAMS, *ASYNC_HPARAMS, *NETWORK_HPARAMS, *DOWNPOUR_HPARAMS, *FAILURE_HPARAMS, "dc_lambda",
            *RULE_HPARAMS.values(), *MINDFLAYER_HPARAMS}
    if config is not None:
        skip |= {k for k, _ in config.server_hparams}
    opt_kwargs = {k: v for k, v in hparams.items() if k not in skip}
    inner = optax.inject_hyperparams(_FACTORIES[optimizer])(**opt_kwargs)
    if config is None or config.system == "delay":
        return delayed(inner, hparams["delay"], max_delay=max_delay)
    if config.server is not None:
        return config.server(inner, hparams, key)
    workers = hparams["workers"]
    i32 = lambda name, default: jnp.asarray(hparams.get(name, default), jnp.int32)
    net = make_network(hparams) if config.network else None
    timing = make_timing(config.timing, hparams, config.worker_times)
    if config.failures:
        timing = timing_lib.failing(timing, i32("fail_worker", 0), hparams["fail_at"], hparams["return_at"])
    if config.server_rule == "ad-psgd":
        return dec.ad_psgd(inner, config.max_workers, peers=config.topology or "exponential", timing=timing,
                           network=net, key=key)
    if config.server_rule == "d-psgd":
        return dec.dpsgd(inner, config.max_workers, mixing=config.topology or "ring", timing=timing, network=net,
                         key=key)
    if config.server_rule == "downpour":
        from asgd_jax.downpour import downpour

        spread = (jnp.arange(config.shards, dtype=jnp.float32) + 0.5) / config.shards
        return downpour(inner, config.max_workers, shards=config.shards, n_fetch=i32("n_fetch", 1),
                        n_push=i32("n_push", 1),
                        local_learning_rate=jnp.asarray(hparams["local_learning_rate"], jnp.float32),
                        timing=timing, network=net, key=key,
                        shard_latency=None if net is None else hparams["shard_latency"] * spread)
    if config.server_rule == "mindflayer" or any(r in FRONTIER_RULES for r in config.rules):
        return _frontier_system(inner, config, hparams, timing, net, key)
    rules = config.rules
    scaling = "adaptive" if "adaptive" in rules else "inverse" if "inverse" in rules else None
    stepper = "drop" in rules or "accumulate" in rules
    initial, add = _introduction(config, hparams)
    return asynchronous(
        inner,
        jnp.asarray(workers, jnp.int32),
        timing=timing,
        assignment=config.assignment,
        server_rule="async" if config.server_rule == "async" else "sync",
        communication="allreduce" if config.server_rule == "allreduce" else "server",
        network=net,
        compensation=config.compensation,
        dc_lambda=hparams.get("dc_lambda"),
        staleness_scaling=scaling,
        # With either rule on, the drop/accumulate stepper is always in the chain (R = int32 max: keep all).
        max_staleness=i32("max_staleness", np.iinfo(np.int32).max) if stepper else None,
        accumulate=i32("accumulate", 1) if "accumulate" in rules else 1,
        backup_workers=i32("backup_workers", 0) if "backup" in rules else 0,
        clip_norm=jnp.asarray(hparams["clip_norm"], jnp.float32) if "clip" in rules else None,
        initial_workers=initial,
        add_workers=add,
        add_every=jnp.asarray(hparams["add_every"], jnp.int32),
        stop_stale="stop" in rules,
        max_workers=config.max_workers,
        key=key,
    )


def _introduction(config: TrainConfig, hparams: Mapping[str, Any]) -> tuple[jax.Array, jax.Array]:
    """``(initial_workers, add_workers)``: 0 initial workers meaning all; rule ``"fastest"``: ``(fastest, 0)``."""
    if "fastest" in config.rules:  # Naive Optimal ASGD: the first `fastest` workers, never more
        return jnp.asarray(hparams["fastest"], jnp.int32), jnp.zeros([], jnp.int32)
    initial = hparams["initial_workers"]
    initial = jnp.where(jnp.asarray(initial) > 0, initial, hparams["workers"]).astype(jnp.int32)
    return initial, jnp.asarray(hparams["add_workers"], jnp.int32)


def _frontier_system(inner, config: TrainConfig, hparams: Mapping[str, Any], timing, net, key):
    """MindFlayer (``server_rule="mindflayer"``) or a parameter server around :data:`FRONTIER_RULES` (rules=).

    The chain: clipping, staleness scaling, Rescaled ASGD's scaling by the expected compute times of
    ``timing``, then Malenia's server, Ringleader's server, the drop/accumulate stepper or ``inner``.
    """
    from asgd_jax import rules as rules_lib
    from asgd_jax.mindflayer import mindflayer
    from asgd_jax.simulator import parameter_server

    size, names = config.max_workers, config.rules
    workers = jnp.asarray(hparams["workers"], jnp.int32)
    expected = timing.expected(jnp.arange(size), size)
    if config.server_rule == "mindflayer":
        return mindflayer(inner, workers, budgets=jnp.asarray(hparams["budget"], jnp.float32) * expected,
                          attempts=jnp.asarray(hparams["attempts"], jnp.int32), timing=timing, max_workers=size,
                          key=key)
    chain = []
    if "clip" in names:
        chain.append(rules_lib.clip_by_global_norm(jnp.asarray(hparams["clip_norm"], jnp.float32)))
    if "adaptive" in names or "inverse" in names:
        chain.append(rules_lib.scale_by_staleness("adaptive" if "adaptive" in names else "inverse"))
    if "rescaled" in names:
        chain.append(rules_lib.scale_by_compute_time(expected))
    if "malenia" in names:
        last = rules_lib.malenia(inner, size, batch=jnp.asarray(hparams["malenia_batch"], jnp.float32))
    elif "ringleader" in names:
        last = rules_lib.ringleader(inner, size)
    elif "drop" in names or "accumulate" in names:
        last = rules_lib.accumulate(inner, jnp.asarray(hparams.get("accumulate", 1), jnp.int32),
                                    max_staleness=jnp.asarray(hparams.get("max_staleness", np.iinfo(np.int32).max),
                                                              jnp.int32))
    else:
        last = inner
    initial, add = _introduction(config, hparams)
    return parameter_server(optax.chain(*chain, last), workers, timing=timing, assignment=config.assignment,
                            initial_workers=initial, add_workers=add,
                            add_every=jnp.asarray(hparams["add_every"], jnp.int32), network=net,
                            stop_stale="stop" in names, max_workers=size, key=key)


def _count_used(counts, before, after):
    """``counts`` plus one for the worker of this call's arrival if the server used it (not dropped).

    Asynchronous servers only (:class:`~asgd_jax.SimState`); a synchronous round's gradients are all
    used by construction, so its counts stay as they are.
    """
    found = [s for s in jax.tree.leaves((before, after), is_leaf=lambda x: isinstance(x, SimState))
             if isinstance(s, SimState)]
    if len(found) != 2:
        return counts
    b, a = found
    used = (a.arrivals > b.arrivals) & (a.discarded == b.discarded)
    return counts.at[a.last_worker].add(used.astype(jnp.int32))


# Micro-batch sizes ``TrainConfig(microbatch="auto")`` uses on XLA:CPU, by model, for batches of at least four
# micro-batches (measured in the README's Speed section: LeNet-5 in micro-batches of 32 ran 1.04x as fast at batch
# 128, 1.29x at 512, 1.44x at 1 024, the same at 64; the MLP ran slower).
CPU_MICROBATCH = {"lenet5": 32}


def microbatch_size(config: TrainConfig, backend: str | None = None) -> int | None:
    """The micro-batch of ``config``'s training step on ``backend`` (default: JAX's), ``None`` for the whole batch."""
    mb = config.microbatch
    if mb == "auto":
        on_cpu = (backend or jax.default_backend()) == "cpu"
        mb = CPU_MICROBATCH.get(parse_model(config.model)[0], 0) if on_cpu else 0
        mb = mb if config.batch_size >= 4 * mb else 0
    return int(mb) if 0 < mb < config.batch_size else None


# Test-set chunks ``TrainConfig(eval_batch_size="auto")`` evaluates at once on XLA:CPU, by model (the README's
# Speed section: LeNet-5's forward pass ran 21 / 7.2 / 7.0 / 8.8 us per image in chunks of 1 000 / 200 / 100 / 50
# on a 2-core AMD EPYC, its activations for 1 000 images far past the caches; the MLP was fastest at 1 000).
CPU_EVAL_CHUNK = {"lenet5": 100}


def eval_chunk_size(config: TrainConfig, num_test: int, backend: str | None = None) -> int:
    """Test-set entries :meth:`Trainer.evaluate` runs at once: ``config.eval_batch_size``, or for ``"auto"`` the
    model's :data:`CPU_EVAL_CHUNK` on XLA:CPU and 1 000 elsewhere; at most ``num_test``.

    Example:
        >>> from asgd_jax.train import TrainConfig, eval_chunk_size
        >>> eval_chunk_size(TrainConfig(), 10_000, "cpu"), eval_chunk_size(TrainConfig(), 10_000, "gpu")
        (100, 1000)
    """
    chunk = config.eval_batch_size
    if chunk == "auto":
        on_cpu = (backend or jax.default_backend()) == "cpu"
        chunk = CPU_EVAL_CHUNK.get(parse_model(config.model)[0], 1000) if on_cpu else 1000
    return max(1, min(int(chunk), num_test))


def _cross_entropy(logits, labels):
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def _check_model_data(config: TrainConfig, model, dataset) -> bool:
    """Whether ``dataset`` is text; a one-line ``ValueError`` when the model and the data do not go together."""
    from asgd_jax.models import Transformer

    x = dataset.x_train
    text = getattr(x, "ndim", 0) == 2 and np.dtype(x.dtype) == np.int32
    if isinstance(model, Transformer) != text:
        what = "token windows (N, T)" if text else f"images {tuple(x.shape[1:])}"
        want = "a transformer:... model" if text else "an image model (lenet5, mlp, resnet20)"
        raise ValueError(f"model {config.model!r} does not fit data set {dataset.name!r} of {what}; use {want}.")
    if text and x.shape[1] > model.context:
        raise ValueError(f"data set {dataset.name!r} has windows of {x.shape[1]} tokens, longer than the model's "
                         f"context={model.context}; use context={x.shape[1]} or shorter windows.")
    if text and config.data_split in ("label", "dirichlet"):
        raise ValueError(f"data_split={config.data_split!r} splits by class label; text has none: use 'iid' or "
                         "'contiguous'.")
    return text


class Trainer:
    """The pieces of one training run for a static config and a data set.

    All methods are pure functions of single-config values; vmap them for a
    group. ``data`` is the pytree ``(x_train, y_train, x_test, y_test)`` passed
    explicitly (rather than captured) so compiled programs take it as an input.
    """

    def __init__(self, config: TrainConfig, dataset):
        config.validate(int(dataset.x_train.shape[0]))
        self.config = config
        self.num_train = int(dataset.x_train.shape[0])
        self.num_test = int(dataset.x_test.shape[0])
        self.steps_per_epoch = config.steps_per_epoch or self.num_train // config.batch_size
        self.model = make_model(config.model, int(dataset.num_classes))
        self.input_shape = tuple(int(s) for s in dataset.x_train.shape[1:])
        self.text = _check_model_data(config, self.model, dataset)
        self.input_dtype = jnp.int32 if self.text else jnp.float32
        self.microbatch = microbatch_size(config)
        self.data = tuple(
            jnp.asarray(a) for a in (dataset.x_train, dataset.y_train, dataset.x_test, dataset.y_test)
        )
        # Evaluation reads the test set in equal chunks; padding is masked out.
        self.eval_chunk = eval_chunk_size(config, self.num_test)
        self.eval_chunks = -(-self.num_test // self.eval_chunk)
        self._vmapped = None
        self._replicated = {}
        self.num_classes = int(dataset.num_classes)
        self.decentralized = config.system == "async" and config.server_rule in DECENTRALIZED
        self.split = config.data_split
        if self.split is not None:
            # Per-worker shards as a padded index table: shards[w, :sizes[w]] are worker w's samples.
            shards = problems.split_indices(self.split, config.max_workers, labels=np.asarray(dataset.y_train),
                                            alpha=config.split_alpha)
            if min(len(sh) for sh in shards) < 1:
                raise ValueError(f"data_split={self.split!r} leaves a worker without data; use fewer workers.")
            table = np.zeros((len(shards), max(len(sh) for sh in shards)), np.int32)
            for w, sh in enumerate(shards):
                table[w, : len(sh)] = sh
            self.shard_sizes = np.array([len(sh) for sh in shards], np.int32)
            self.data = self.data + (jnp.asarray(table), jnp.asarray(self.shard_sizes))

    # -- pieces -----------------------------------------------------------------
    def _order(self, data_key, epoch):
        key = jax.random.fold_in(data_key, epoch)
        if self.split is not None:  # each worker's shard positions in a fresh random order, padding last
            width = self.data[4].shape[1]
            u = jax.random.uniform(key, (len(self.shard_sizes), width))
            u = jnp.where(jnp.arange(width) < jnp.asarray(self.shard_sizes)[:, None], u, 2.0)
            return jnp.argsort(u, axis=1).astype(jnp.int32)
        perm = jax.random.permutation(key, self.num_train)
        return perm[: self.steps_per_epoch * self.config.batch_size].astype(jnp.int32)

    def _system(self, hparams, key=0) -> optax.GradientTransformation:
        """The config's system around its server optimizer, built from (traced) ``hparams``."""
        return make_optimizer(self.config.optimizer, hparams, self.config.max_delay, self.config, key)

    def init(self, data, key, hparams) -> TrainState:
        """A fresh run: parameters from ``key``, optimizer state holding ``hparams``."""
        del data
        init_key, data_key = jax.random.split(key)
        params = self.model.init(init_key, jnp.zeros((1,) + self.input_shape, self.input_dtype))["params"]
        if self.decentralized:  # one model per worker, all starting from the same
            params = dec.replicate(params, self.config.max_workers)
        hp = with_defaults(self.config.optimizer, hparams, self.config)
        ints = INT_HPARAMS - {"warmup_steps"}  # the warm-up length is kept as float32
        hp = {k: jnp.asarray(v, jnp.int32 if k in ints else jnp.float32) for k, v in hp.items()}
        invalid = self.invalid(hp)
        warmup_steps = hp.pop("warmup_steps")
        # The simulation's key (compute times, assignment draws) is derived from the run's key,
        # apart from the initial parameters' and the data order's.
        tx = self._system(hp, jax.random.fold_in(key, 1))
        per_worker = (lambda: jnp.zeros([self.config.max_workers], jnp.int32)) if self.split else (lambda: None)
        return TrainState(
            params=params,
            opt_state=tx.init(params),
            data_key=data_key,
            order=self._order(data_key, 0),
            step=jnp.zeros([], jnp.int32),
            epoch=jnp.zeros([], jnp.int32),
            loss_sum=jnp.zeros([], jnp.float32),
            warmup_steps=warmup_steps,
            nonfinite=jnp.zeros([], bool),
            diverged=jnp.zeros([], bool),
            hparams=hp,
            invalid=invalid,
            cursor=per_worker(),
            worker_gradients=per_worker(),
        )

    def invalid(self, hp: Mapping[str, Any]) -> jax.Array:
        """Whether any hyperparameter of ``hp`` is out of its range (a bool; works on traced values).

        Concrete values are refused by :func:`normalize_hparams`; values traced
        under ``jit``/``vmap`` cannot raise, and the transforms clip some of them
        (a delay above ``max_delay`` runs as ``max_delay``), so the run records
        this flag (the metric ``invalid``) instead of passing silently. Checked:
        every value finite; ``learning_rate > 0``; the optimizer's ranges;
        ``0 <= delay <= max_delay``; ``1 <= workers <= max_workers``;
        ``0 <= initial_workers <= max_workers``; ``add_workers >= 0``,
        ``add_every >= 1``; ``time_mean > 0``, ``time_spread >= 0``,
        ``0 <= straggler_fraction <= 1``, ``straggler_slowdown > 0``;
        ``dc_lambda >= 0``, ``clip_norm > 0``, ``max_staleness >= 0``,
        ``accumulate >= 1``, ``0 <= backup_workers < workers``; ``warmup_steps >= 0``;
        ``latency``, ``bandwidth``, ``server_bandwidth >= 0``; decentralized:
        ``workers == max_workers``, no warm-up, no gradual introduction; Downpour:
        ``n_fetch, n_push >= 1``, ``local_learning_rate >= 0``, ``shard_latency >= 0``,
        ``workers == max_workers``, no gradual introduction; failures: ``0 <= fail_worker < max_workers``,
        ``0 <= fail_at <= return_at`` (``return_at`` may be ``inf``).
        """
        c = self.config
        ok = [jnp.isfinite(jnp.asarray(v, jnp.float32)) if k != "return_at" else ~jnp.isnan(jnp.asarray(v))
              for k, v in hp.items()]  # return_at = inf: the worker never returns
        get = lambda k: jnp.asarray(hp[k])
        between = lambda k, lo, hi: (get(k) >= lo) & (get(k) <= hi)
        ok.append(get("learning_rate") > 0)
        for k, (low, high) in _OPTIMIZER_RANGES[c.optimizer].items():
            ok.append((get(k) >= low) & (get(k) < high))
        if "delay" in hp:
            ok.append(between("delay", 0, c.max_delay))
        ranges = {"workers": (1, c.max_workers), "initial_workers": (0, c.max_workers), "add_workers": (0, np.inf),
                  "add_every": (1, np.inf), "time_spread": (0, np.inf), "straggler_fraction": (0, 1),
                  "dc_lambda": (0, np.inf), "max_staleness": (0, np.inf), "accumulate": (1, np.inf),
                  "warmup_steps": (0, np.inf), "n_fetch": (1, np.inf), "n_push": (1, np.inf),
                  "local_learning_rate": (0, np.inf), "shard_latency": (0, np.inf), "fail_at": (0, np.inf),
                  "fail_worker": (0, c.max_workers - 1), "attempts": (1, np.inf)}
        ok += [between(k, lo, hi) for k, (lo, hi) in ranges.items() if k in hp]
        ok += [get(k) > 0 for k in ("time_mean", "straggler_slowdown", "clip_norm", "malenia_batch", "budget")
               if k in hp]
        if "fastest" in hp:
            ok.append((get("fastest") >= 1) & (get("fastest") <= get("workers")))
        ok += [get(k) >= 0 for k in NETWORK_HPARAMS if k in hp]
        if self.decentralized:
            ok += [get("workers") == c.max_workers, get("warmup_steps") == 0, get("initial_workers") == 0]
        if c.server_rule == "downpour":
            ok += [get("workers") == c.max_workers, get("initial_workers") == 0]
        if c.failures:
            ok.append(get("return_at") >= get("fail_at"))
        if "backup_workers" in hp:
            ok.append((get("backup_workers") >= 0) & (get("backup_workers") < get("workers")))
        return ~jnp.all(jnp.stack([jnp.asarray(o, bool) for o in ok]))

    def loss(self, params, x, y):
        return _cross_entropy(self.model.apply({"params": params}, x), y)

    def batch_indices(self, data, state: TrainState) -> tuple[jax.Array, Any]:
        """The training-set indices of the next gradient's batch, and the new per-worker cursors.

        Without a data split: the next ``batch_size`` entries of this epoch's
        order. With one: the next ``batch_size`` samples of the shard of
        :func:`asgd_jax.next_worker` in that worker's order, wrapping around.
        """
        b = self.config.batch_size
        if self.split is None:
            return jax.lax.dynamic_slice_in_dim(state.order, state.step * b, b), state.cursor
        w = next_worker(state.opt_state)
        pos = (state.cursor[w] + jnp.arange(b)) % data[5][w]
        return data[4][w, state.order[w, pos]], state.cursor.at[w].add(b)

    def step(self, data, state: TrainState) -> TrainState:
        """One gradient on the next batch of this epoch's order, through the config's system (delay or async)."""
        x_train, y_train = data[0], data[1]
        idx, cursor = self.batch_indices(data, state)
        at = dec.worker_params(state.opt_state, state.params)  # a decentralized worker's own model
        loss, grads = microbatched_value_and_grad(self.loss, self.microbatch)(at, x_train[idx], y_train[idx])
        updates, opt_state = self._system(state.hparams).update(grads, state.opt_state, state.params)
        worker_gradients = state.worker_gradients
        if worker_gradients is not None:
            worker_gradients = _count_used(worker_gradients, state.opt_state, opt_state)
        # Linear warm-up: the step-t update is scaled by min(1, (t + 1) / W), t counting
        # gradients from 0. For SGD, Adam and Adagrad the learning rate is optax's last,
        # multiplicative stage, so this is exactly the learning rate lr * min(1, (t + 1) / W).
        t = (state.epoch * self.steps_per_epoch + state.step).astype(jnp.float32)
        w = state.warmup_steps
        factor = jnp.where(w > 0, jnp.minimum(1.0, (t + 1.0) / jnp.maximum(w, 1.0)), 1.0)
        updates = jax.tree.map(lambda u: u * factor.astype(u.dtype), updates)
        params = optax.apply_updates(state.params, updates)
        return state._replace(
            params=params,
            opt_state=opt_state,
            step=state.step + 1,
            loss_sum=state.loss_sum + loss,
            nonfinite=state.nonfinite | ~jnp.isfinite(loss),
            cursor=cursor,
            worker_gradients=worker_gradients,
        )

    def evaluate(self, data, params) -> dict[str, jax.Array]:
        """Test accuracy, mean cross-entropy and collapse over the whole test set.

        ``collapsed`` is true when the network computes a constant function on
        the test set: every image gets the same logits, up to
        ``1e-6 * (1 + max |logit|)``. That is where a run whose learning rate
        is past the stability cliff usually ends (all ReLUs dead after a blown-up
        step), with a finite loss and one class's share as its accuracy.

        Text (token windows ``(N, T)``): accuracy and loss are per token, over
        all ``N·T`` next-byte predictions of the test set (``test_loss`` in nats
        per byte), and the metrics add ``bits_per_byte = test_loss / ln 2`` and
        ``perplexity = exp(test_loss)``.
        """
        x_test, y_test = data[2], data[3]
        n, c = self.num_test, self.eval_chunk
        pad = self.eval_chunks * c - n
        xs = jnp.pad(x_test, ((0, pad),) + ((0, 0),) * (x_test.ndim - 1)).reshape(
            (self.eval_chunks, c) + x_test.shape[1:]
        )
        ys = jnp.pad(y_test, ((0, pad),) + ((0, 0),) * (y_test.ndim - 1)).reshape(
            (self.eval_chunks, c) + y_test.shape[1:]
        )
        mask = (jnp.arange(self.eval_chunks * c) < n).reshape(self.eval_chunks, c)
        reference = self.model.apply({"params": params}, x_test[:1])[0]
        classes = self.num_classes
        along = lambda m, a: m.reshape(m.shape + (1,) * (a.ndim - 1))  # the example mask, broadcast over a

        def chunk(_, xym):
            x, y, m = xym
            logits = self.model.apply({"params": params}, x)
            losses = optax.softmax_cross_entropy_with_integer_labels(logits, y)
            correct = jnp.argmax(logits, -1) == y
            spread = jnp.where(along(m, logits), jnp.abs(logits - reference), 0.0).max()
            size = jnp.where(along(m, logits), jnp.abs(logits), 0.0).max()
            mc = along(m, correct)
            out = (jnp.sum(jnp.where(mc, correct, False)), jnp.sum(jnp.where(mc, losses, 0.0)), spread, size)
            if self.split is None:
                return None, out
            by_class = jnp.zeros([classes], jnp.float32).at[y].add(jnp.where(mc & correct, 1.0, 0.0))
            count = jnp.zeros([classes], jnp.float32).at[y].add(jnp.where(mc, 1.0, 0.0))
            return None, out + (by_class, count)

        _, results = jax.lax.scan(chunk, None, (xs, ys, mask))
        correct, losses, spread, size = results[:4]
        predictions = n * int(np.prod(y_test.shape[1:], dtype=np.int64))  # one per image, or per token
        out = {
            "test_accuracy": correct.sum() / predictions,
            "test_loss": losses.sum() / predictions,
            "collapsed": spread.max() <= 1e-6 * (1.0 + size.max()),
        }
        if self.text:
            out["bits_per_byte"] = out["test_loss"] / jnp.log(2.0)
            out["perplexity"] = jnp.exp(out["test_loss"])
        if self.split is not None:  # accuracy on each class's test images (NaN for a class with none)
            out["per_class_accuracy"] = results[4].sum(0) / results[5].sum(0)
        return out

    def end_epoch(self, data, state: TrainState) -> tuple[TrainState, dict[str, jax.Array]]:
        """Evaluates, records the epoch's metrics and draws the next epoch's order.

        Metrics: ``test_accuracy``, ``test_loss``, ``train_loss`` (mean over the
        epoch's steps), ``nonfinite`` (a NaN/inf loss or parameter has been seen
        so far), ``collapsed`` (see :meth:`evaluate`) and ``diverged``: either
        of the two at this epoch or before. For ``system="async"`` also
        ``sim_time`` (the simulated clock, :attr:`SimState.time`) and
        ``server_steps`` (updates the server applied, :attr:`SimState.version`;
        decentralized: gradient steps of AD-PSGD, rounds of D-PSGD); with a
        network or decentralized, ``bytes_sent``; decentralized, the accuracy
        metrics are the average model's, plus ``worker0_accuracy`` and
        ``consensus_distance`` (:func:`asgd_jax.decentralized.consensus_distance`).
        """
        model = dec.average_model(state.params) if self.decentralized else state.params
        ev = self.evaluate(data, model)
        finite = jnp.all(jnp.array([jnp.all(jnp.isfinite(p)) for p in jax.tree.leaves(state.params)]))
        nonfinite = state.nonfinite | ~finite | ~jnp.isfinite(ev["test_loss"])
        diverged = state.diverged | nonfinite | ev["collapsed"]
        metrics = {
            **ev,
            "train_loss": state.loss_sum / self.steps_per_epoch,
            "nonfinite": nonfinite,
            "diverged": diverged,
        }
        if self.config.system == "async":
            sim = _event_state(state.opt_state)
            metrics["sim_time"] = sim.time
            metrics["server_steps"] = sim.version
            if self.config.server_rule == "downpour":  # each shard's mean staleness so far
                dp = jax.tree.leaves(state.opt_state, is_leaf=lambda x: hasattr(x, "staleness_sum"))[0]
                metrics["shard_staleness"] = dp.staleness_sum / jnp.maximum(dp.shard_version, 1)
            if self.config.network or self.decentralized:
                metrics["bytes_sent"] = jax.tree.leaves(
                    state.opt_state, is_leaf=lambda x: hasattr(x, "bytes_sent") and hasattr(x, "events"))[0].bytes_sent
        if self.decentralized:
            first = jax.tree.map(lambda x: x[0], state.params)
            metrics["worker0_accuracy"] = self.evaluate(data, first)["test_accuracy"]
            metrics["consensus_distance"] = dec.consensus_distance(state.params)
        if state.worker_gradients is not None:
            metrics["worker_gradients"] = state.worker_gradients
        if state.invalid is not None:
            metrics["invalid"] = state.invalid
        epoch = state.epoch + 1
        new = state._replace(
            order=self._order(state.data_key, epoch),
            step=jnp.zeros([], jnp.int32),
            epoch=epoch,
            loss_sum=jnp.zeros([], jnp.float32),
            nonfinite=nonfinite,
            diverged=diverged,
            cursor=None if state.cursor is None else jnp.zeros_like(state.cursor),
        )
        return new, metrics

    def epoch(self, data, state: TrainState) -> tuple[TrainState, dict[str, jax.Array]]:
        """One epoch as a ``lax.scan`` over steps, then :meth:`end_epoch`."""
        state, _ = jax.lax.scan(
            lambda s, _: (self.step(data, s), None), state, None, length=self.steps_per_epoch
        )
        return self.end_epoch(data, state)

    def train_with_data(self, data, key, hparams) -> dict[str, jax.Array]:
        """The whole run as one program; metrics have a leading epoch axis."""
        state = self.init(data, key, hparams)
        _, metrics = jax.lax.scan(lambda s, _: self.epoch(data, s), state, None, length=self.config.epochs)
        return metrics

    def train(self, key, hparams) -> dict[str, jax.Array]:
        """``train(key, hparams)``: the pure function PureJaxRL's pattern asks for."""
        return self.train_with_data(self.data, key, hparams)

    def data_on(self, mesh: jax.sharding.Mesh):
        """``data`` replicated on every device of ``mesh`` (copied once per mesh, then cached)."""
        if mesh not in self._replicated:
            replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
            self._replicated[mesh] = jax.device_put(self.data, replicated)
        return self._replicated[mesh]

    def vmapped(self) -> dict[str, Callable]:
        """``jit(vmap(...))`` of ``init``, ``step``, ``end_epoch`` and ``epoch`` over a leading config axis.

        Built once per trainer and reused, so every chunk of configs of a group
        runs the same compiled programs (a new chunk size compiles once more).
        The state argument is donated.
        """
        if self._vmapped is None:
            self._vmapped = {
                "init": jax.jit(jax.vmap(self.init, in_axes=(None, 0, 0))),
                "step": jax.jit(jax.vmap(self.step, in_axes=(None, 0)), donate_argnums=1),
                "end_epoch": jax.jit(jax.vmap(self.end_epoch, in_axes=(None, 0)), donate_argnums=1),
                "epoch": jax.jit(jax.vmap(self.epoch, in_axes=(None, 0)), donate_argnums=1),
            }
        return self._vmapped


def make_train(
    config: TrainConfig, dataset
) -> Callable[[jax.Array, Mapping[str, Any]], dict[str, jax.Array]]:
    """Returns a pure ``train(key, hparams) -> metrics`` for one static config.

    ``hparams`` holds ``learning_rate``, optionally ``delay`` (``<= max_delay``,
    default 0), ``warmup_steps`` (a linear learning-rate warm-up over that many
    steps, default 0: none) and the optimizer family's own keys, defaulting to
    :data:`OPTIMIZERS` (e.g. ``momentum=0.9`` for SGD). ``key`` fixes the initial parameters and the data order. Metrics
    (``test_accuracy``, ``test_loss``, ``train_loss``, ``nonfinite``,
    ``collapsed``, ``diverged``; see :meth:`Trainer.end_epoch`) have a leading
    axis of length ``config.epochs``. The returned function is pure:
    jit it, vmap it over keys and hparams, or both. The :class:`Trainer` is at
    ``train.trainer``.

    Example:
        >>> import jax, jax.numpy as jnp, numpy as np
        >>> from asgd_jax import TrainConfig, make_train
        >>> from asgd_jax.data import make_dataset
        >>> rng = np.random.default_rng(0)
        >>> x, y = rng.integers(0, 255, (64, 28, 28)), rng.integers(0, 10, 64)
        >>> ds = make_dataset(x, y, x[:16], y[:16], name="noise")
        >>> train = make_train(TrainConfig(model="mlp", batch_size=16, epochs=2, max_delay=2), ds)
        >>> hparams = {"learning_rate": jnp.array([0.01, 0.1]), "delay": jnp.array([0, 2])}
        >>> keys = jax.random.split(jax.random.key(0), 2)
        >>> metrics = jax.jit(jax.vmap(train))(keys, hparams)
        >>> metrics["test_accuracy"].shape   # (configs, epochs)
        (2, 2)
    """
    trainer = Trainer(config, dataset)

    def train(key, hparams):
        return trainer.train(key, hparams)

    train.trainer = trainer
    return train


def default_loop(model: str | None = None) -> str:
    """The loop driver ``loop="auto"`` means: ``"scan"``, except ``"step"`` for ResNet-20 on a CPU.

    ``"scan"`` runs each epoch's steps inside ``lax.scan`` (one call per epoch);
    with the space-to-depth LeNet-5 of :mod:`asgd_jax.models` (matmuls and
    elementwise pools only) it is the faster driver on every backend.
    :class:`~asgd_jax.models.ResNet20` keeps real convolutions, whose gradients
    XLA:CPU runs far slower inside a scanned loop than in a step jitted at top
    level, so ``model="resnet20"`` on the CPU backend gets ``"step"``. Measured
    figures: the README's Speed section (``python -m experiments benchmark``).

    Args:
        model: the config's model name (``TrainConfig.model``); ``None`` for the
            default driver of models without convolutions.

    >>> default_loop("lenet5")
    'scan'
    """
    if model == "resnet20" and jax.default_backend() == "cpu":
        return "step"
    return "scan"


def run_configs(
    trainer: Trainer,
    keys: jax.Array,
    hparams: Mapping[str, jax.Array],
    *,
    loop: str = "auto",
    on_epoch: Callable[[int, dict[str, np.ndarray]], None] | None = None,
    mesh: jax.sharding.Mesh | None = None,
) -> dict[str, np.ndarray]:
    """Trains a group of configs at once (vmapped) and returns their metrics.

    Args:
        trainer: the group's :class:`Trainer`.
        keys: PRNG keys, one per config (leading axis ``K``).
        hparams: dict of arrays with leading axis ``K``.
        loop: ``"scan"``: one compiled program per epoch (steps in ``lax.scan``);
            ``"step"``: one compiled, vmapped step called from Python per step
            (fast on XLA:CPU); ``"auto"``: :func:`default_loop` of the trainer's model.
        on_epoch: called after each epoch with ``(epoch_index, metrics)`` (NumPy
            arrays with leading axis ``K``), e.g. for a progress bar.
        mesh: shard the config axis over this 1-D mesh's devices (``K`` must be
            a multiple of its size); the data set is replicated on each. The
            compiled programs are the same; each device runs ``K / devices``
            configs. ``None``: the default device.

    Returns:
        NumPy metrics with shape ``(K, epochs)``.
    """
    loop = default_loop(trainer.config.model) if loop == "auto" else loop
    if loop not in ("scan", "step"):
        raise ValueError(f"unknown loop {loop!r}; choose 'scan', 'step' or 'auto'.")
    data = trainer.data
    if mesh is not None:
        devices = int(mesh.devices.size)
        if mesh.devices.ndim != 1 or keys.shape[0] % devices:
            raise ValueError(
                f"{keys.shape[0]} configs cannot be split evenly over a mesh of shape {mesh.devices.shape}; "
                "use a 1-D mesh and pad the configs to a multiple of its size."
            )
        along = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(mesh.axis_names[0]))
        keys, hparams = jax.device_put((keys, dict(hparams)), along)
        data = trainer.data_on(mesh)
    fns = trainer.vmapped()
    # XLA lays out leaves that a program returns as constants (zero biases and optimizer buffers after
    # init, the step counter reset at an epoch's end) replicated, and the others sharded: without putting
    # every leaf back along the config axis, the next call would compile the epoch a second time.
    along_configs = (lambda s: s) if mesh is None else (lambda s: jax.device_put(s, along))
    state = along_configs(fns["init"](data, keys, dict(hparams)))
    history = []
    for e in range(trainer.config.epochs):
        if loop == "scan":
            state, metrics = fns["epoch"](data, state)
        else:
            for _ in range(trainer.steps_per_epoch):
                state = fns["step"](data, state)
            state, metrics = fns["end_epoch"](data, state)
        state = along_configs(state)
        metrics = jax.tree.map(np.asarray, metrics)
        history.append(metrics)
        if on_epoch is not None:
            on_epoch(e, metrics)
    return {k: np.stack([h[k] for h in history], axis=1) for k in history[0]}
