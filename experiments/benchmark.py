"""Throughput of the sweep engine: config-samples per second, one config vs a vmapped group.

Trains LeNet-5 with delayed SGD (momentum 0.9) on random MNIST-shaped data and
times whole epochs after a warm-up epoch (compilation excluded), for each batch
size and each way of driving a group of K configs:

* ``step, K=1``: one config, a jitted step called from Python per step;
* ``step, vmap K``: K configs vmapped into one step;
* ``step, K x chunk 1``: K configs one after another through the same program;
* ``scan, K=1`` / ``scan, vmap K``: one config / K configs vmapped, the epoch's
  steps inside ``lax.scan``;
* ``engine``: what :func:`asgd_jax.sweep.run_group` does by default on this backend
  (:func:`asgd_jax.train.default_loop`, :func:`asgd_jax.sweep.default_chunk_size` per
  device, and the configs laid over this process's devices when it has several:
  ``python -m experiments`` makes a CPU one device per core; :func:`engine_layout`);
  the other rows run on one device;
* ``torch`` (with ``--torch``): the PyTorch baseline of experiments/torch_baseline.py
  (delayed ``torch.optim.SGD``, delay 4, configs one by one), timed the same way.

A summary per batch size gives the ratio engine / torch and the fraction of the
machine's arithmetic limit reached: LeNet-5's useful FLOPs per training sample
(:func:`lenet5_flops_per_sample`) × samples/s over a measured float32 matmul
peak (:func:`matmul_peak_flops`, measured before each batch size's rows and after
the last; the highest counts, and ``matmul_peak_measurements`` keeps them all).

It also measures the cost of the simulation itself: one jitted LeNet-5 step
(gradient + server update) through ``asgd_jax.asynchronous`` with 16 workers
(and through ``delayed``, ``synchronous``, and the decentralized ``ad_psgd`` and
``dpsgd`` holding 16 models, with a network), against the same step with plain
optax SGD, as ratios of time per step (the best of several interleaved rounds).
Every variant computes one gradient per step, so the ratio is the cost per
gradient against the same work done as separate single-model runs; the row
``16 separate runs, vmapped`` gives that work batched (its time per gradient).
Each row also gives the bytes the compiled step's ``copy`` instructions write
(:func:`copied_bytes`, ``copied_mib``): a state table XLA could not update in
place shows up there as whole-table copies.

``--only transformer`` times the Transformer language model instead
(``--transformer``, default ``transformer:layers=2,width=128,heads=4,context=128``):
tokens per second of its training step (Adam) on random bytes, per batch size of
``--text-batch-sizes`` windows, epochs of ``--text-steps`` steps plus an
evaluation of 16 windows, for the engine (its default driver and chunk, and one
config in ``lax.scan``) and, with ``--torch``, the same model and batch as a
plain PyTorch loop (:func:`experiments.torch_baseline.measure_transformer`).

``--only memory`` (and the default run, after the other tables) measures the peak memory per config of a
LeNet-5 group, the estimate :func:`asgd_jax.sweep.config_memory_bytes` against XLA's compiled program, and
the largest group that fits a 24 GiB CPU and an 80 GiB GPU (experiments/bench_memory.py; ``"memory"`` in
benchmark.json).

``--gpu-report`` is the whole GPU check in one run (experiments/gpu_report.py): the throughput table at the
size of the paper grid's groups with the PyTorch baseline, ``delay_sweep --preset paper --data random:60000``
timed, and the goals met or not, in ``gpu_report.json``; it refuses to run without a GPU/TPU unless
``--allow-cpu``.

The ``asgrad`` entry (with ``--only asgrad``, ``--only throughput`` and the
default run; :mod:`experiments.asgrad_numpy`): run-iterations per second
(gradients computed per run) of the ``asgrad`` study's compiled program for
``pure`` (5 seeds x 10 step sizes = 50 runs of 1 000 calls in one call, the
``medium`` problem: 10 workers x 2 500 samples, 300 features, float32) against
a NumPy re-implementation of AsGrad's own loop (their ``Nodes`` /
``run_optimizer``, without its per-step full-gradient evaluation; float64, one
run of 300 steps), timed in the same process, interleaved, best of 3 rounds,
compilation excluded, and their ratio; also the ratio against the NumPy loop
with slice views instead of the authors' row copies. Measured figures and what
limits them: README, "Speed".

``--only microbatch``: the engine (as in the throughput table) per batch size with the whole batch per
gradient (``TrainConfig(microbatch=0)``) and with micro-batches of 16, 32 and 64 samples, interleaved in one
process, the best of 2 rounds each; the ratio to the whole batch (``"microbatch"`` in benchmark.json; what
``microbatch="auto"`` picks is :func:`asgd_jax.train.microbatch_size`).

Prints tables and writes ``benchmark.json`` to ``--out``.
"""

from __future__ import annotations

import json
import os
import platform
import re
import time

import numpy as np

from experiments import common
from experiments.study import Option

NAME = "benchmark"
HELP = "throughput (config-samples/s) of one LeNet-5 config vs a vmapped group, per loop driver"


def add_arguments(p) -> None:
    p.add_argument("--batch-sizes", default="64,512", help="comma-separated (default 64,512)")
    p.add_argument("--configs", default=8, help="K, configs in a group (default 8)")
    p.add_argument("--samples", default=8192, help="training samples per epoch (default 8192)")
    p.add_argument(
        "--workers", default=16, help="simulated workers for the overhead table (default 16)"
    )
    p.add_argument("--only", choices=["throughput", "overhead", "transformer", "memory", "asgrad", "microbatch"],
                   help="run one table: throughput, overhead or memory (LeNet-5), transformer (tokens/s), "
                   "asgrad (the asgrad study's program vs AsGrad's NumPy loop; also part of throughput and the "
                   "default run), or microbatch (the engine with and without micro-batches, per batch size)")
    p.add_argument("--memory-configs", default="1,8",
                   help="the memory table's two group sizes, compiled and compared (default 1,8)")
    p.add_argument("--gpu-report", action="store_true",
                   help="the whole GPU check in one run (experiments/gpu_report.py): throughput at the "
                        "paper grid's group size with PyTorch, the grid's wall time, the goals; writes "
                        "gpu_report.json")
    p.add_argument("--allow-cpu", action="store_true", help="--gpu-report: run on a CPU too (a smoke run)")
    p.add_argument("--grid-preset", default="paper",
                   help="--gpu-report: the delay_sweep preset timed (default paper)")
    p.add_argument("--grid-data", default="random:60000",
                   help="--gpu-report: the grid's data, random:<n> (default random:60000; n is also the "
                        "throughput table's samples)")
    p.add_argument("--budget", default=480, help="--gpu-report: seconds for the whole report (default 480)")
    p.add_argument("--transformer", default="transformer:layers=2,width=128,heads=4,context=128",
                   help="the Transformer of --only transformer (a model spec)")
    p.add_argument("--text-batch-sizes", default="8,32", help="--only transformer: windows per step (default 8,32)")
    p.add_argument("--text-steps", default=30, help="--only transformer: steps per timed epoch (default 30)")
    p.add_argument(
        "--torch",
        action="store_true",
        help="also time the PyTorch baseline (experiments/torch_baseline.py; needs torch) in the same run",
    )
    p.add_argument("--out", default=os.path.join("runs", "benchmark"), help="output directory")


def lenet5_flops_per_sample(channels: int = 1, classes: int = 10) -> int:
    """Useful FLOPs of one LeNet-5 training sample (forward + backward), multiply-adds × 2.

    Forward multiply-adds per layer (28×28 input): conv 1 ``28·28 · 5·5·C · 6``
    (117 600 for C = 1), conv 2 ``10·10 · 5·5·6 · 16`` (240 000), dense
    ``400·120 + 120·84 + 84·classes`` (58 920): 416 520 in all. The backward
    pass costs one more of each for the weight gradients and one more of each
    for the input gradients, except into the image (conv 1). Elementwise work
    (ReLU, pools, loss, optimizer) is not counted. For C = 1 and 10 classes:
    2 · (3 · 416 520 − 117 600) = 2 263 920.

    >>> lenet5_flops_per_sample()
    2263920
    """
    conv1 = 28 * 28 * 5 * 5 * channels * 6
    conv2 = 10 * 10 * 5 * 5 * 6 * 16
    dense = 400 * 120 + 120 * 84 + 84 * classes
    forward = conv1 + conv2 + dense
    return 2 * (3 * forward - conv1)


def matmul_peak_flops(n: int = 1024, repeats: int = 10) -> float:
    """Float32 FLOP/s of the best of ``repeats`` jitted ``n×n @ n×n`` matmuls (``2·n³`` FLOPs each)."""
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    f = jax.jit(lambda a: a @ a)
    jax.block_until_ready(f(a))
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(f(a))
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def random_mnist_dataset(samples: int):
    """The benchmark's data: ``samples`` random 28×28 uint8 images with random labels, the first 1 000 also the test set."""
    from asgd_jax.data import make_dataset

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (samples, 28, 28), dtype=np.uint8)
    y = rng.integers(0, 10, samples)
    return make_dataset(x, y, x[:1000], y[:1000], name="random-mnist-shaped")


def engine_layout(k: int | None = None) -> tuple[object, int, str]:
    """What :func:`asgd_jax.sweep.run_group` does with a group of ``k`` configs by default here.

    Returns ``(mesh, per_call, label)``: its ``mesh="auto"`` (this process's devices when it has several,
    else ``None``), the configs of one call over all devices (:func:`asgd_jax.sweep.default_chunk_size`
    per device; the whole group, ``k`` rounded up to the devices, where that is ``None``) and a row label.
    """
    import jax

    from asgd_jax.sweep import default_chunk_size, local_mesh
    from asgd_jax.train import default_loop

    devices = jax.local_device_count()
    mesh = local_mesh() if devices > 1 else None
    chunk = default_chunk_size()
    per_call = chunk * devices if chunk else -(-(k or 1) // devices) * devices
    where = f" over {devices} devices" if mesh is not None else ""
    return mesh, per_call, f"engine ({default_loop()}, chunk {per_call}{where})"


def _measure(trainer, k: int, loop: str, chunk: int | None, mesh=None) -> float:
    """Config-samples per second of the fastest epoch after the first, per call (``chunk`` 0 or None: all ``k`` at once).

    The first epoch of each call compiles or warms up; of the others (``trainer.config.epochs - 1``) the
    fastest is timed, as the PyTorch rows are (:func:`experiments.torch_baseline.measure`).

    ``mesh``: lay each call's configs over its devices, as :func:`asgd_jax.sweep.run_group` does when
    this process has several (``chunk`` then counts the configs of one call, all devices together).
    """
    import jax
    import jax.numpy as jnp
    from asgd_jax import run_configs

    size = chunk or k
    keys = jax.random.split(jax.random.key(0), size)
    hp = {
        "learning_rate": jnp.full((size,), 0.01),
        "delay": jnp.arange(size) % (trainer.config.max_delay + 1),
        "momentum": jnp.full((size,), 0.9),
    }
    times = []
    for _ in range(k // size):
        marks = []
        run_configs(trainer, keys, hp, loop=loop, mesh=mesh,
                    on_epoch=lambda e, m: marks.append(time.perf_counter()))
        times.append(min(np.diff(marks)))  # epochs after the first: no compilation
    return k * trainer.steps_per_epoch * trainer.config.batch_size / sum(times)


# Copies of the model that the overhead table's variants hold per simulated worker, all together (the
# parameters and states of every row: in-flight gradient pools, Malenia's and Ringleader's tables, Downpour's
# local/accrued/pending copies, the stacked models of AD-PSGD and D-PSGD): 44.2 measured with 16 workers
# (jax.eval_shape of every row's params and state), with room.
_COPIES_PER_WORKER = 50


def _check_overhead_memory(workers: int) -> None:
    """One-line UsageError when the overhead table's states for ``workers`` workers cannot fit in memory."""
    import jax

    import asgd_jax
    from asgd_jax.sweep import device_memory_bytes

    shapes = jax.eval_shape(lambda: asgd_jax.LeNet5().init(jax.random.key(0), np.zeros((1, 28, 28, 1)))["params"])
    params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes))
    need = _COPIES_PER_WORKER * workers * params * 4
    have = device_memory_bytes()
    if have is not None and need > 0.8 * have:
        most = max(1, int(0.8 * have // (_COPIES_PER_WORKER * params * 4)))
        raise common.UsageError(
            f"--workers {workers}: the overhead table holds about {need / 2**30:.1f} GiB of worker state "
            f"({_COPIES_PER_WORKER} copies of LeNet-5's {params} parameters per worker), more than the "
            f"{0.8 * have / 2**30:.1f} GiB usable here; use at most --workers {most}."
        )


# The overhead table's groups, in order, and the first row of each (the rows of a group follow it).
_OVERHEAD_GROUPS = (("event model", "plain optax SGD"), ("server rules", "clip + staleness-adaptive step"),
                    ("compute-time models", "stragglers 10 % x5"), ("rounds, Downpour, MindFlayer", "sync "),
                    ("one model per worker", "AD-PSGD, "), ("context", None))


def _overhead_group(names: list[str], name: str) -> str:
    """The group of row ``name`` (rows in table order ``names``; see :data:`_OVERHEAD_GROUPS`)."""
    starts = [(next((i for i, v in enumerate(names) if first is not None and v.startswith(first)), len(names) - 1),
               group) for group, first in _OVERHEAD_GROUPS]
    return [group for i, group in starts if i <= names.index(name)][-1]


def _overhead_variants(workers: int) -> tuple[dict, dict]:
    """The overhead table's systems, grouped: ``(one server model, one model per worker)``, name -> transform.

    Every system takes one gradient per ``update`` (16 workers by default) of the same LeNet-5 step; the
    first group keeps one server model (the event model and the rules around it, the synchronous and
    Downpour servers, MindFlayer), the second one model per worker (AD-PSGD, D-PSGD).
    """
    import jax.numpy as jnp
    import optax

    import asgd_jax
    from asgd_jax import downpour, network, rules, timing

    sgd = optax.sgd(0.01, momentum=0.9)
    n = workers
    normal = timing.normal(1.0, 0.2)
    speeds = timing.per_worker(timing.normal(1.0, 0.2), jnp.arange(1, n + 1, dtype=jnp.float32))
    net = network.network(0.001, 5e6, server_bandwidth=5e6 / n)
    ps = lambda server, **kw: asgd_jax.parameter_server(server, n, timing=kw.pop("timing", normal), **kw)
    one = {
        # the event model (asgd_jax.asynchronous) and its assignment rules
        "plain optax SGD": sgd,
        f"delayed, d={n - 1}": asgd_jax.delayed(sgd, n - 1),
        f"async {n}, pure, fixed": asgd_jax.asynchronous(sgd, n),
        f"async {n}, shuffle, lognormal": asgd_jax.asynchronous(
            sgd, n, timing=timing.lognormal(1.0, 0.5), assignment="shuffle"),
        f"async {n}, random, DC-ASGD-a": asgd_jax.asynchronous(
            sgd, n, timing=normal, assignment="random", compensation="dc-a"),
        f"async {n}, pure, network": asgd_jax.asynchronous(sgd, n, timing=normal, network=net),
        # server rules
        "clip + staleness-adaptive step": asgd_jax.asynchronous(
            sgd, n, timing=normal, clip_norm=1.0, staleness_scaling="adaptive"),
        f"Rennala, S={n}": asgd_jax.asynchronous(sgd, n, timing=speeds, max_staleness=0, accumulate=n),
        f"Ringmaster, R={n // 2}, stop": asgd_jax.asynchronous(
            sgd, n, timing=speeds, max_staleness=max(n // 2, 1), stop_stale=True),
        f"fastest m={max(n // 2, 1)}": asgd_jax.asynchronous(sgd, n, timing=speeds, fastest=max(n // 2, 1)),
        f"Malenia, S={n}": ps(rules.malenia(sgd, n, batch=n), timing=speeds),
        "Ringleader": ps(rules.ringleader(sgd, n), timing=speeds),
        "Rescaled": ps(optax.chain(rules.scale_by_compute_time(jnp.arange(1, n + 1, dtype=jnp.float32)), sgd),
                       timing=speeds),
        "gradual introduction": asgd_jax.asynchronous(
            sgd, n, timing=normal, initial_workers=max(n // 4, 1), add_workers=max(n // 4, 1), add_every=n),
        # compute-time models
        "stragglers 10 % x5": asgd_jax.asynchronous(sgd, n, timing=timing.stragglers(normal, 0.1, 5.0)),
        "budgeted Pareto": asgd_jax.asynchronous(
            sgd, n, timing=timing.budgeted(timing.pareto(1.0, 1.5), 3.0)),
        "time-varying speed": asgd_jax.asynchronous(
            sgd, n, timing=timing.piecewise_speed(normal, [0.0, 50.0], [1.0, 0.5], period=100.0)),
        "a failing worker": asgd_jax.asynchronous(sgd, n, timing=timing.failing(normal, 0, 10.0, 60.0)),
        # synchronous rounds, Downpour, MindFlayer
        f"sync {n}, {min(2, n - 1)} backups": asgd_jax.asynchronous(
            sgd, n, timing=normal, server_rule="sync", backup_workers=min(2, n - 1)),
        f"AllReduce {n}, network": asgd_jax.asynchronous(
            sgd, n, timing=normal, server_rule="sync", communication="allreduce", network=net),
        "Downpour, 1 shard": downpour.downpour(sgd, n, timing=normal),
        "Downpour, 4 shards, fetch4/push2": downpour.downpour(
            sgd, n, shards=4, n_fetch=4, n_push=2, local_learning_rate=0.01, timing=normal,
            network=network.network(0.001, 5e6), shard_latency=jnp.array([0.0, 0.001, 0.002, 0.003])),
        "MindFlayer, budget 2": asgd_jax.mindflayer(
            sgd, n, budgets=2.0, attempts=1, timing=timing.lognormal(1.0, 0.5)),
    }
    stacked = {
        f"AD-PSGD, {n} models, network": asgd_jax.ad_psgd(
            sgd, n, peers="exponential" if n % 2 == 0 or n == 1 else "ring", timing=normal,
            network=network.network(0.001, 5e6)),
        f"AD-PSGD, {n} models, random": asgd_jax.ad_psgd(sgd, n, peers="random", timing=normal),
        f"D-PSGD, {n} models, ring": asgd_jax.dpsgd(sgd, n, timing=normal),
        f"D-PSGD, {n} models, complete, net": asgd_jax.dpsgd(
            sgd, n, mixing="complete", timing=normal, network=network.network(0.001, 5e6)),
    }
    return one, stacked


_ITEM_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4, "f32": 4,
               "s64": 8, "u64": 8, "f64": 8}
_COPY = re.compile(r"= (\w+)\[([\d,]*)\]\S* copy\(")
_COMPUTATION = re.compile(r"^(?:ENTRY )?(%[\w.\-]+) ", re.M)
_FUSED = re.compile(r" fusion\(.*?calls=(%[\w.\-]+)")


def copied_bytes(hlo_text: str) -> int:
    """Bytes that the ``copy`` instructions of a compiled XLA program write (its ``as_text()``): those of the
    entry computation and of the computations it calls (``lax.cond`` branches and loop bodies count once,
    whether they run or not), not those inside a fusion (a layout change computed on the fly, no buffer).

    A copy of a whole state table is how XLA:CPU keeps a buffer it cannot update in place; the overhead
    table reports this per system so such a copy shows up next to its cost.
    """
    fused = set(_FUSED.findall(hlo_text))
    total, inside = 0, None
    for line in hlo_text.splitlines():
        head = _COMPUTATION.match(line)
        if head and line.rstrip().endswith("{"):
            inside = head.group(1)
            continue
        match = _COPY.search(line)
        if match and inside not in fused:
            dtype, dims = match.groups()
            size = int(np.prod([int(d) for d in dims.split(",") if d], dtype=np.int64))
            total += size * _ITEM_BYTES.get(dtype, 4)
    return total


def _overhead(batch: int, workers: int, rounds: int = 7, steps: int = 60, model=None) -> list[dict]:
    """Time per jitted LeNet-5 step (or ``model``'s) for plain SGD and for simulated systems around it (one gradient
    per step)."""
    import jax
    import jax.numpy as jnp
    import optax

    import asgd_jax
    from asgd_jax import decentralized as dec

    model = model or asgd_jax.LeNet5()
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.random((batch, 28, 28, 1), dtype=np.float32))
    y = jnp.asarray(rng.integers(0, 10, batch))
    params0 = model.init(jax.random.key(0), x[:1])["params"]

    def loss(p):
        return optax.softmax_cross_entropy_with_integer_labels(model.apply({"params": p}, x), y).mean()

    sgd = optax.sgd(0.01, momentum=0.9)
    n = workers
    variants, stacked = _overhead_variants(n)
    variants.update(stacked)
    steps_fns, states, copies = {}, {}, {}
    for name, tx in variants.items():

        def step(p, s, tx=tx):  # the gradient at the worker's model (its own row, or a Downpour local copy)
            updates, s = tx.update(jax.grad(loss)(dec.worker_params(s, p)), s, p)
            return optax.apply_updates(p, updates), s

        p = dec.replicate(params0, n) if name in stacked else params0
        p = jax.tree.map(jnp.copy, p)
        s = jax.tree.map(jnp.copy, tx.init(p))  # no buffer shared inside the state (both are donated)
        steps_fns[name] = jax.jit(step, donate_argnums=(0, 1)).lower(p, s).compile()
        copies[name] = copied_bytes(steps_fns[name].as_text())
        states[name] = steps_fns[name](p, s)  # warm up
    # the same work as n separate single-model runs, batched: one vmapped call is n gradients
    runs = f"{n} separate runs, vmapped"

    def separate(p, s):
        def one(p, s):
            updates, s = sgd.update(jax.grad(loss)(p), s, p)
            return optax.apply_updates(p, updates), s
        return jax.vmap(one)(p, s)

    p = jax.tree.map(jnp.copy, dec.replicate(params0, n))
    s = jax.vmap(sgd.init)(p)
    steps_fns[runs] = jax.jit(separate, donate_argnums=(0, 1)).lower(p, s).compile()
    copies[runs] = copied_bytes(steps_fns[runs].as_text())
    states[runs] = steps_fns[runs](p, s)
    variants[runs] = None
    best = {name: float("inf") for name in variants}
    order = list(variants)
    for r in range(rounds):  # interleaved, so a busy moment hurts every variant alike; each round starts one
        for name in order[r:] + order[:r]:  # later, so no variant always runs after the 16-model one (cold caches)
            p, s = states[name]
            jax.block_until_ready(p)
            t0 = time.perf_counter()
            for _ in range(steps):
                p, s = steps_fns[name](p, s)
            jax.block_until_ready(p)
            per_gradient = (time.perf_counter() - t0) / steps / (n if name == runs else 1)
            best[name] = min(best[name], per_gradient)
            states[name] = (p, s)
    base = best["plain optax SGD"]
    names = list(best)
    return [
        {"batch_size": batch, "variant": name, "ms_per_step": 1e3 * t, "ratio_to_plain": t / base,  # per gradient
         "models": n if name in stacked or name == runs else 1, "group": _overhead_group(names, name),
         "copied_mib": copies[name] / 2**20}
        for name, t in best.items()
    ]


def _measure_text(trainer, k: int, loop: str, chunk: int | None, mesh=None) -> float:
    """Config-tokens per second of one epoch after a warm-up epoch (Adam, lr 1e-3, no warm-up)."""
    import jax
    import jax.numpy as jnp
    from asgd_jax import run_configs

    size = chunk or k
    keys = jax.random.split(jax.random.key(0), size)
    hp = {"learning_rate": jnp.full((size,), 1e-3)}
    times = []
    for _ in range(k // size):
        marks = []
        run_configs(trainer, keys, hp, loop=loop, mesh=mesh,
                    on_epoch=lambda e, m: marks.append(time.perf_counter()))
        times.append(marks[1] - marks[0])  # the second epoch: no compilation
    return k * trainer.steps_per_epoch * trainer.config.batch_size * trainer.input_shape[0] / sum(times)


def _transformer_rows(args) -> list[dict]:
    """Tokens/s of the Transformer's training step: the engine's drivers and (``--torch``) PyTorch."""
    from asgd_jax import TrainConfig, Trainer
    from asgd_jax.data import text_dataset
    from asgd_jax.models import parse_model

    try:
        opts = parse_model(args.transformer)[1]
    except ValueError as e:
        raise common.UsageError(f"--transformer: {e}") from None
    batches = Option("text_batch_sizes", int, many=True, low=1, high=4096).parse(args.text_batch_sizes)
    steps = Option("text_steps", int, low=1).parse(args.text_steps)
    t = opts["context"]
    stream = np.random.default_rng(0).integers(0, 256, 4096 * t + 16 * t + 1).astype(np.uint8)
    ds = text_dataset(stream, t, None, test=stream[-(16 * t + 1):], name="random-bytes")
    rows, torch_rates = [], {}
    if args.torch:  # PyTorch first: XLA's CPU threads, once started, slow PyTorch's OpenMP threads in this process
        from experiments import torch_baseline

        for b in batches:
            torch_rates[b] = torch_baseline.measure_transformer(
                b, layers=opts["layers"], width=opts["width"], heads=opts["heads"], context=t, steps=steps,
                threads=os.cpu_count() or 1, epochs=3)
    for b in batches:
        trainer = Trainer(TrainConfig(model=args.transformer, optimizer="adam", batch_size=b, epochs=2,
                                      steps_per_epoch=steps), ds)
        mesh, per_call, engine = engine_layout()
        for label, k, loop, chunk, on in ((engine, per_call, "auto", per_call, mesh),
                                          ("scan, K=1", 1, "scan", 0, None)):
            rate = _measure_text(trainer, k, loop, chunk, on)
            rows.append({"batch_size": b, "driver": label, "configs": k, "tokens_per_s": rate,
                         "engine": label == engine})
            print(f"batch {b:4d} x {t} tokens  {label:<22} {rate:10.0f} config-tokens/s", flush=True)
        if args.torch:
            label = f"torch, {os.cpu_count() or 1} threads"
            rate = torch_rates[b]
            rows.append({"batch_size": b, "driver": label, "configs": 1, "tokens_per_s": rate, "torch": True})
            print(f"batch {b:4d} x {t} tokens  {label:<22} {rate:10.0f} tokens/s", flush=True)
    for b in batches:
        eng = next(r["tokens_per_s"] for r in rows if r["batch_size"] == b and r.get("engine"))
        tor = next((r["tokens_per_s"] for r in rows if r["batch_size"] == b and r.get("torch")), None)
        if tor:
            print(f"batch {b:4d}  engine/torch {eng / tor:.2f}x")
    return rows


def _write_table(out: str, table: dict) -> int:
    """Writes ``benchmark.json``: the machine (backend, devices, versions), then ``table``."""
    import jax

    info = {"backend": jax.default_backend(), "devices": [str(d) for d in jax.devices()], "jax": jax.__version__,
            "machine": platform.machine(), "cpus": os.cpu_count(), **table}
    with open(os.path.join(out, "benchmark.json"), "w", encoding="utf-8") as f:
        json.dump(info, f, indent=2)
    print(f"wrote {os.path.join(out, 'benchmark.json')}")
    return 0


def _microbatch_rows(ds, batch_sizes: list[int], sizes=(0, 16, 32, 64), rounds: int = 2) -> list[dict]:
    """The engine's config-samples/s per batch size and micro-batch (0: the whole batch), best of ``rounds``."""
    from asgd_jax import TrainConfig, Trainer

    mesh, per_call, engine = engine_layout()
    rows = []
    for b in batch_sizes:
        trainers = {m: Trainer(TrainConfig(batch_size=b, epochs=4, max_delay=8, microbatch=m), ds)
                    for m in sizes if m < b}  # each compiles once; the rounds reuse its programs
        best = {}
        for _ in range(rounds):
            for m, trainer in trainers.items():
                best[m] = max(best.get(m, 0.0), _measure(trainer, per_call, "auto", per_call, mesh))
        for m, rate in best.items():
            rows.append({"batch_size": b, "microbatch": m, "driver": engine, "config_samples_per_s": rate,
                         "ratio_to_whole_batch": rate / best[0]})
            print(f"batch {b:5d}  microbatch {m or 'whole':>5}  {rate:10.0f} config-samples/s  "
                  f"{rate / best[0]:5.2f}x whole batch", flush=True)
    return rows


def run(args) -> int:
    if args.gpu_report:
        from experiments import gpu_report

        return gpu_report.run(args)
    if args.only == "memory" or (args.only is None and not getattr(args, "_memory_done", False)):
        from experiments import bench_memory

        return bench_memory.run(args, rest=None if args.only == "memory" else run)
    if args.only == "transformer":
        out = common.prepare_out_dir(args.out)
        return _write_table(out, {"model": args.transformer, "transformer": _transformer_rows(args)})
    if args.only == "asgrad":
        out = common.prepare_out_dir(args.out)
        from experiments import asgrad_numpy

        return _write_table(out, {"asgrad": asgrad_numpy.benchmark_entry()})
    args.samples = samples = Option("samples", int, low=1).parse(args.samples)
    batch_sizes = Option("batch_sizes", int, many=True, low=1, high=samples).parse(args.batch_sizes)
    args.configs = Option("configs", int, low=1).parse(args.configs)
    args.workers = Option("workers", int, low=1).parse(args.workers)
    if args.only not in ("throughput", "microbatch"):
        _check_overhead_memory(args.workers)
    out = common.prepare_out_dir(args.out)
    from asgd_jax import TrainConfig, Trainer

    ds = random_mnist_dataset(args.samples)
    if args.only == "microbatch":
        return _write_table(out, {"microbatch": _microbatch_rows(ds, batch_sizes)})
    k = args.configs
    rows, overhead, peaks = [], [], []
    for b in batch_sizes if args.only != "overhead" else []:
        # The peak is measured before each batch size's rows and after the last, and the highest counts: on a
        # shared machine one short measurement can read half the real peak (208-408 GFLOP/s in one minute
        # here), which would double the fraction of the peak reported.
        peaks.append(matmul_peak_flops(repeats=20))
        trainer = Trainer(TrainConfig(batch_size=b, epochs=4, max_delay=8), ds)
        mesh, per_call, engine = engine_layout(k)
        rows_k = -(-k // per_call) * per_call
        for label, kk, loop, chunk, on in (
            (engine, rows_k, "auto", per_call, mesh),
            ("step, K=1", 1, "step", 0, None),
            (f"step, vmap {k}", k, "step", 0, None),
            (f"step, {k} x chunk 1", k, "step", 1, None),
            ("scan, K=1", 1, "scan", 0, None),
            (f"scan, vmap {k}", k, "scan", 0, None),
        ):
            rate = _measure(trainer, kk, loop, chunk, on)
            rows.append(
                {
                    "batch_size": b,
                    "driver": label,
                    "configs": kk,
                    "config_samples_per_s": rate,
                    "engine": label == engine,
                }
            )
            print(f"batch {b:5d}  {label:<22} {rate:10.0f} config-samples/s", flush=True)
        if args.torch:
            from experiments import torch_baseline

            label = f"torch, {os.cpu_count() or 1} threads"
            rate = torch_baseline.measure(b, delay=4, samples=args.samples, threads=os.cpu_count() or 1)
            rows.append(
                {"batch_size": b, "driver": label, "configs": 1, "config_samples_per_s": rate, "torch": True}
            )
            print(f"batch {b:5d}  {label:<22} {rate:10.0f} config-samples/s", flush=True)
    summary = []
    if rows:
        peaks.append(matmul_peak_flops(repeats=20))
        peak = max(peaks)
        flops = lenet5_flops_per_sample()
        print(
            f"\nmatmul peak {peak / 1e9:.0f} GFLOP/s (f32 1024^3, jitted; the highest of "
            f"{', '.join(f'{p / 1e9:.0f}' for p in peaks)}); LeNet-5 {flops / 1e6:.2f} MFLOP/sample"
        )
        for b in batch_sizes:
            mine = [r for r in rows if r["batch_size"] == b]
            eng = next(r["config_samples_per_s"] for r in mine if r.get("engine"))
            tor = next((r["config_samples_per_s"] for r in mine if r.get("torch")), None)
            row = {
                "batch_size": b,
                "engine_config_samples_per_s": eng,
                "torch_samples_per_s": tor,
                "ratio_engine_to_torch": None if tor is None else eng / tor,
                "engine_fraction_of_peak": eng * flops / peak,
                "torch_fraction_of_peak": None if tor is None else tor * flops / peak,
            }
            summary.append(row)
            ratio = "" if tor is None else f"  engine/torch {row['ratio_engine_to_torch']:.2f}x"
            tfrac = "" if tor is None else f", torch {100 * row['torch_fraction_of_peak']:.1f} %"
            print(f"batch {b:5d}{ratio}  of peak: engine {100 * row['engine_fraction_of_peak']:.1f} %{tfrac}")
    for b in batch_sizes if args.only != "throughput" else []:
        for row in _overhead(b, args.workers):
            overhead.append(row)
            print(
                f"batch {b:5d}  {row['variant']:<32} {row['ms_per_step']:8.2f} ms/step  "
                f"{row['ratio_to_plain']:5.2f}x plain  copies {row['copied_mib']:5.2f} MiB",
                flush=True,
            )
    info = {
        "rows": rows,
        "summary": summary,
        "matmul_peak_flops": peak if rows else None,
        "matmul_peak_measurements": peaks,
        "lenet5_flops_per_sample": lenet5_flops_per_sample(),
        "overhead": overhead,
    }
    if args.only != "overhead":  # the asgrad study's program vs AsGrad's NumPy loop
        from experiments import asgrad_numpy

        info["asgrad"] = asgrad_numpy.benchmark_entry()
    return _write_table(out, info)
