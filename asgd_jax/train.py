"""Training: ``make_train(config, dataset)`` → a pure ``train(key, hparams)``.

The pattern is PureJaxRL's: everything that fixes shapes (model, optimizer
family, batch size, epochs, maximum delay) is a static :class:`TrainConfig`;
everything a sweep varies (learning rate, delay, momentum, ..., and the seed
through ``key``) is a traced ``hparams`` dict. ``jax.jit(jax.vmap(train))``
then runs a whole group of configs as one program.

The step is kept apart from the loop that drives it. :class:`Trainer` exposes
``init``, ``step``, ``end_epoch`` and ``epoch``; ``train`` composes them with
``lax.scan`` (one program per epoch; the default everywhere). :func:`run_configs`
can also drive jitted steps from Python (``loop="step"``), which was faster on
XLA:CPU while LeNet-5's convolutions lowered to slow convolution kernels inside
loops (shared/PERF_NOTES.md); both loops compute the same numbers.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from asgd_jax.delay import delayed
from asgd_jax.models import make_model

__all__ = [
    "OPTIMIZERS",
    "GENERIC_HPARAMS",
    "TrainConfig",
    "TrainState",
    "Trainer",
    "make_train",
    "make_optimizer",
    "normalize_hparams",
    "run_configs",
    "default_loop",
]

# Per optimizer family: the hyperparameters a sweep may vary, with defaults.
# ``learning_rate`` has no default: every config must give it.
OPTIMIZERS: dict[str, dict[str, float]] = {
    "sgd": {"momentum": 0.9},
    "adam": {"b1": 0.9, "b2": 0.999, "eps": 1e-8},
    "adagrad": {"initial_accumulator_value": 0.1, "eps": 1e-7},
}
_FACTORIES = {"sgd": optax.sgd, "adam": optax.adam, "adagrad": optax.adagrad}
# Hyperparameters of every family, with defaults: the delay in steps, and the length of a
# linear learning-rate warm-up in steps (0: none). Both are integers.
GENERIC_HPARAMS: dict[str, int] = {"delay": 0, "warmup_steps": 0}


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """What fixes the compiled program's shapes (one value per sweep group).

    Attributes:
        model: ``"lenet5"`` or ``"mlp"``.
        optimizer: server optimizer family, a key of :data:`OPTIMIZERS`.
        batch_size: samples per gradient.
        epochs: passes over the training set (``num_train // batch_size`` steps
            each; the remainder of a shuffled epoch is dropped).
        max_delay: static bound on the per-config ``delay`` hyperparameter.
        eval_batch_size: test-set chunk evaluated at once (memory, not maths).
    """

    model: str = "lenet5"
    optimizer: str = "sgd"
    batch_size: int = 64
    epochs: int = 30
    max_delay: int = 0
    eval_batch_size: int = 1000

    def validate(self, num_train: int | None = None) -> None:
        """Raises a one-line ``ValueError`` for a config that cannot run."""
        from asgd_jax.models import MODELS

        if self.model not in MODELS:
            raise ValueError(f"unknown model {self.model!r}; choose one of {sorted(MODELS)}.")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; choose one of {sorted(OPTIMIZERS)}.")
        for name in ("batch_size", "epochs", "eval_batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}.")
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


class TrainState(NamedTuple):
    """Everything one run carries between steps (a pytree; vmap adds a config axis)."""

    params: Any
    opt_state: Any
    data_key: jax.Array  # PRNG key of the run's data order
    order: jax.Array  # int32[steps_per_epoch * batch_size]: this epoch's sample order
    step: jax.Array  # int32: step within the epoch
    epoch: jax.Array  # int32: epochs completed
    loss_sum: jax.Array  # float32: sum of this epoch's training losses
    warmup_steps: jax.Array  # float32: length of the linear learning-rate warm-up (0: none)
    nonfinite: jax.Array  # bool: a non-finite loss or parameter was seen
    diverged: jax.Array  # bool: nonfinite, or the model collapsed at an epoch end


def with_defaults(optimizer: str, hparams: Mapping[str, Any]) -> dict[str, Any]:
    """``hparams`` with the optimizer family's defaults and ``delay=0`` filled in.

    Checks the keys only (values may be traced): a one-line ``ValueError`` for
    an unknown optimizer, an unknown key, or a missing ``learning_rate``.
    """
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}; choose one of {sorted(OPTIMIZERS)}.")
    allowed = {"learning_rate", *GENERIC_HPARAMS, *OPTIMIZERS[optimizer]}
    unknown = set(hparams) - allowed
    if unknown:
        raise ValueError(
            f"unknown hyperparameter(s) {sorted(unknown)} for optimizer {optimizer!r}; "
            f"allowed: {sorted(allowed)}."
        )
    if "learning_rate" not in hparams:
        raise ValueError("every config needs a learning_rate.")
    return {**OPTIMIZERS[optimizer], **GENERIC_HPARAMS, **hparams}


def normalize_hparams(
    optimizer: str, hparams: Mapping[str, Any], max_delay: int | None = None
) -> dict[str, float]:
    """Checks a config's hyperparameters and fills the optimizer's defaults.

    Returns a dict with ``learning_rate``, ``delay`` and the optimizer's own
    keys (:data:`OPTIMIZERS`). Raises a one-line ``ValueError`` for a missing or
    non-positive learning rate, a negative delay or one above ``max_delay``, or an
    unknown key.
    """
    out = with_defaults(optimizer, hparams)
    lr = float(out["learning_rate"])
    if not lr > 0 or not np.isfinite(lr):
        raise ValueError(f"learning_rate must be a positive number, got {out['learning_rate']!r}.")
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


def make_optimizer(
    optimizer: str, hparams: Mapping[str, Any], max_delay: int
) -> optax.GradientTransformation:
    """The server optimizer of a config: ``delayed(inject_hyperparams(family)(...))``.

    Every numeric hyperparameter lives in the optimizer state (via
    ``optax.inject_hyperparams``; the delay in :class:`~asgd_jax.DelayedState`),
    so ``update`` reads them from the state and one compiled step serves every
    config of a vmapped group.
    """
    opt_kwargs = {k: v for k, v in hparams.items() if k not in GENERIC_HPARAMS}
    inner = optax.inject_hyperparams(_FACTORIES[optimizer])(**opt_kwargs)
    return delayed(inner, hparams["delay"], max_delay=max_delay)


def _cross_entropy(logits, labels):
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


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
        self.steps_per_epoch = self.num_train // config.batch_size
        self.model = make_model(config.model, int(dataset.num_classes))
        self.input_shape = tuple(int(s) for s in dataset.x_train.shape[1:])
        self.data = tuple(
            jnp.asarray(a) for a in (dataset.x_train, dataset.y_train, dataset.x_test, dataset.y_test)
        )
        # Evaluation reads the test set in equal chunks; padding is masked out.
        self.eval_chunk = min(config.eval_batch_size, self.num_test)
        self.eval_chunks = -(-self.num_test // self.eval_chunk)
        self._vmapped = None
        self._replicated = {}
        # ``update`` reads every hyperparameter (learning rate, momentum, delay) from the
        # optimizer state that ``init`` built for each config; the values given here only
        # fix the state's structure, so one instance serves every config of the group.
        self._update_tx = make_optimizer(
            config.optimizer, normalize_hparams(config.optimizer, {"learning_rate": 1.0}), config.max_delay
        )

    # -- pieces -----------------------------------------------------------------
    def _order(self, data_key, epoch):
        perm = jax.random.permutation(jax.random.fold_in(data_key, epoch), self.num_train)
        return perm[: self.steps_per_epoch * self.config.batch_size].astype(jnp.int32)

    def init(self, data, key, hparams) -> TrainState:
        """A fresh run: parameters from ``key``, optimizer state holding ``hparams``."""
        del data
        init_key, data_key = jax.random.split(key)
        params = self.model.init(init_key, jnp.zeros((1,) + self.input_shape, jnp.float32))["params"]
        hp = with_defaults(self.config.optimizer, hparams)
        hp = {k: jnp.asarray(v, jnp.int32 if k == "delay" else jnp.float32) for k, v in hp.items()}
        warmup_steps = hp.pop("warmup_steps")
        tx = make_optimizer(self.config.optimizer, hp, self.config.max_delay)
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
        )

    def loss(self, params, x, y):
        return _cross_entropy(self.model.apply({"params": params}, x), y)

    def step(self, data, state: TrainState) -> TrainState:
        """One gradient on the next batch of this epoch's order, through the delayed optimizer."""
        x_train, y_train = data[0], data[1]
        b = self.config.batch_size
        idx = jax.lax.dynamic_slice_in_dim(state.order, state.step * b, b)
        loss, grads = jax.value_and_grad(self.loss)(state.params, x_train[idx], y_train[idx])
        updates, opt_state = self._update_tx.update(grads, state.opt_state, state.params)
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
        )

    def evaluate(self, data, params) -> dict[str, jax.Array]:
        """Test accuracy, mean cross-entropy and collapse over the whole test set.

        ``collapsed`` is true when the network computes a constant function on
        the test set: every image gets the same logits, up to
        ``1e-6 * (1 + max |logit|)``. That is where a run whose learning rate
        is past the stability cliff usually ends (all ReLUs dead after a blown-up
        step), with a finite loss and one class's share as its accuracy.
        """
        x_test, y_test = data[2], data[3]
        n, c = self.num_test, self.eval_chunk
        pad = self.eval_chunks * c - n
        xs = jnp.pad(x_test, ((0, pad),) + ((0, 0),) * (x_test.ndim - 1)).reshape(
            (self.eval_chunks, c) + x_test.shape[1:]
        )
        ys = jnp.pad(y_test, (0, pad)).reshape(self.eval_chunks, c)
        mask = (jnp.arange(self.eval_chunks * c) < n).reshape(self.eval_chunks, c)
        reference = self.model.apply({"params": params}, x_test[:1])[0]

        def chunk(_, xym):
            x, y, m = xym
            logits = self.model.apply({"params": params}, x)
            losses = optax.softmax_cross_entropy_with_integer_labels(logits, y)
            correct = jnp.argmax(logits, -1) == y
            spread = jnp.where(m[:, None], jnp.abs(logits - reference), 0.0).max()
            size = jnp.where(m[:, None], jnp.abs(logits), 0.0).max()
            return None, (
                jnp.sum(jnp.where(m, correct, False)),
                jnp.sum(jnp.where(m, losses, 0.0)),
                spread,
                size,
            )

        _, (correct, losses, spread, size) = jax.lax.scan(chunk, None, (xs, ys, mask))
        return {
            "test_accuracy": correct.sum() / n,
            "test_loss": losses.sum() / n,
            "collapsed": spread.max() <= 1e-6 * (1.0 + size.max()),
        }

    def end_epoch(self, data, state: TrainState) -> tuple[TrainState, dict[str, jax.Array]]:
        """Evaluates, records the epoch's metrics and draws the next epoch's order.

        Metrics: ``test_accuracy``, ``test_loss``, ``train_loss`` (mean over the
        epoch's steps), ``nonfinite`` (a NaN/inf loss or parameter has been seen
        so far), ``collapsed`` (see :meth:`evaluate`) and ``diverged``: either
        of the two at this epoch or before.
        """
        ev = self.evaluate(data, state.params)
        finite = jnp.all(jnp.array([jnp.all(jnp.isfinite(p)) for p in jax.tree.leaves(state.params)]))
        nonfinite = state.nonfinite | ~finite | ~jnp.isfinite(ev["test_loss"])
        diverged = state.diverged | nonfinite | ev["collapsed"]
        metrics = {
            **ev,
            "train_loss": state.loss_sum / self.steps_per_epoch,
            "nonfinite": nonfinite,
            "diverged": diverged,
        }
        epoch = state.epoch + 1
        new = state._replace(
            order=self._order(state.data_key, epoch),
            step=jnp.zeros([], jnp.int32),
            epoch=epoch,
            loss_sum=jnp.zeros([], jnp.float32),
            nonfinite=nonfinite,
            diverged=diverged,
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


def default_loop() -> str:
    """``"scan"`` (each epoch's steps inside ``lax.scan``, one call per epoch) on every backend.

    On XLA:CPU the scanned LeNet-5 step used to be about 3.5× slower than the
    same step jitted at top level (shared/PERF_NOTES.md); with the space-to-depth
    LeNet-5 of :mod:`asgd_jax.models` (matmuls and elementwise pools only) the
    scan is the faster driver there too: 22 000 vs 20 500 config-samples/s at
    batch 64 and 24 500 vs 15 200 at batch 512 for one config on a 2-core CPU
    (``python -m experiments benchmark``).
    """
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
            (fast on XLA:CPU); ``"auto"``: :func:`default_loop`.
        on_epoch: called after each epoch with ``(epoch_index, metrics)`` (NumPy
            arrays with leading axis ``K``), e.g. for a progress bar.
        mesh: shard the config axis over this 1-D mesh's devices (``K`` must be
            a multiple of its size); the data set is replicated on each. The
            compiled programs are the same; each device runs ``K / devices``
            configs. ``None``: the default device.

    Returns:
        NumPy metrics with shape ``(K, epochs)``.
    """
    loop = default_loop() if loop == "auto" else loop
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
    state = fns["init"](data, keys, dict(hparams))
    history = []
    for e in range(trainer.config.epochs):
        if loop == "scan":
            state, metrics = fns["epoch"](data, state)
        else:
            for _ in range(trainer.steps_per_epoch):
                state = fns["step"](data, state)
            state, metrics = fns["end_epoch"](data, state)
        metrics = jax.tree.map(np.asarray, metrics)
        history.append(metrics)
        if on_epoch is not None:
            on_epoch(e, metrics)
    return {k: np.stack([h[k] for h in history], axis=1) for k in history[0]}
