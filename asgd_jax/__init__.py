"""asgd_jax: asynchronous SGD by simulation, as composable optax transforms.

Every asynchronous scheme is a server optimizer (any optax transformation) plus
a model of the system around it. The transforms here are pure, so a whole
training run is one jitted program and a sweep is ``jit(vmap(train))``.
"""

from asgd_jax.delay import DelayedState, delayed
from asgd_jax.models import LeNet5, MLP, ResNet20, Transformer, count_params, make_model
from asgd_jax.train import (
    OPTIMIZERS,
    TrainConfig,
    Trainer,
    TrainState,
    default_loop,
    make_optimizer,
    make_train,
    normalize_hparams,
    run_configs,
)
from asgd_jax import data, decentralized, downpour, events, microbatch, model_parallel, network, problems, rules
from asgd_jax import sandblaster
from asgd_jax import timing
from asgd_jax.decentralized import DecentralizedState, ad_psgd, dpsgd
from asgd_jax.synchronous import SyncState, synchronous
from asgd_jax.mindflayer import MindFlayerState, mindflayer
from asgd_jax.simulator import (
    COMPENSATIONS,
    SERVER_RULES,
    STALENESS_SCALINGS,
    ASSIGNMENTS,
    Jobs,
    SimState,
    StalenessTrace,
    active_workers,
    asynchronous,
    parameter_server,
    server_chain,
    next_worker,
    optimal_workers,
    simulate_staleness,
)

__version__ = "0.1.0"

__all__ = [
    "DelayedState",
    "delayed",
    "LeNet5",
    "MLP",
    "ResNet20",
    "Transformer",
    "count_params",
    "make_model",
    "OPTIMIZERS",
    "TrainConfig",
    "Trainer",
    "TrainState",
    "default_loop",
    "make_optimizer",
    "make_train",
    "normalize_hparams",
    "run_configs",
    "data",
    "problems",
    "timing",
    "asynchronous",
    "parameter_server",
    "server_chain",
    "synchronous",
    "SyncState",
    "mindflayer",
    "MindFlayerState",
    "events",
    "rules",
    "network",
    "decentralized",
    "downpour",
    "sandblaster",
    "microbatch",
    "model_parallel",
    "ad_psgd",
    "dpsgd",
    "DecentralizedState",
    "next_worker",
    "active_workers",
    "simulate_staleness",
    "optimal_workers",
    "SimState",
    "Jobs",
    "StalenessTrace",
    "ASSIGNMENTS",
    "SERVER_RULES",
    "COMPENSATIONS",
    "STALENESS_SCALINGS",
]
