"""Throughput of the sweep engine: config-samples per second, one config vs a vmapped group.

Trains LeNet-5 with delayed SGD (momentum 0.9) on random MNIST-shaped data and
times whole epochs after a warm-up epoch (compilation excluded), for each batch
size and each way of driving a group of K configs:

* ``step, K=1``: one config, a jitted step called from Python per step;
* ``step, vmap K``: K configs vmapped into one step;
* ``step, K x chunk 1``: K configs one after another through the same program
  (what the sweep engine does on CPU);
* ``scan, vmap K``: K configs vmapped, the epoch's steps inside ``lax.scan``;
* ``torch`` (with ``--torch``): the PyTorch baseline of experiments/torch_baseline.py
  (delayed ``torch.optim.SGD``, delay 4, configs one by one), timed the same way.

It also measures the cost of the simulation itself: one jitted LeNet-5 step
(gradient + server update) through ``asgd_jax.asynchronous`` with 16 workers
(and through ``delayed``), against the same step with plain optax SGD, as
ratios of time per step (the best of several interleaved rounds).

Prints tables and writes ``benchmark.json`` to ``--out``.
"""

from __future__ import annotations

import json
import os
import platform
import time

import numpy as np

from experiments import common

NAME = "benchmark"
HELP = "throughput (config-samples/s) of one LeNet-5 config vs a vmapped group, per loop driver"


def add_arguments(p) -> None:
    p.add_argument("--batch-sizes", default="64,512", help="comma-separated (default 64,512)")
    p.add_argument("--configs", type=int, default=8, help="K, configs in a group (default 8)")
    p.add_argument("--samples", type=int, default=8192, help="training samples per epoch (default 8192)")
    p.add_argument(
        "--workers", type=int, default=16, help="simulated workers for the overhead table (default 16)"
    )
    p.add_argument("--only", choices=["throughput", "overhead"], help="run one of the two tables")
    p.add_argument(
        "--torch",
        action="store_true",
        help="also time the PyTorch baseline (experiments/torch_baseline.py; needs torch) in the same run",
    )
    p.add_argument("--out", default=os.path.join("runs", "benchmark"), help="output directory")


def _measure(trainer, k: int, loop: str, chunk: int) -> float:
    """Config-samples per second of one epoch after a warm-up epoch."""
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
        run_configs(trainer, keys, hp, loop=loop, on_epoch=lambda e, m: marks.append(time.perf_counter()))
        times.append(marks[1] - marks[0])  # the second epoch: no compilation
    return k * trainer.steps_per_epoch * trainer.config.batch_size / sum(times)


def _overhead(batch: int, workers: int, rounds: int = 7, steps: int = 60) -> list[dict]:
    """Time per jitted LeNet-5 step for plain SGD and for simulated systems around it."""
    import jax
    import jax.numpy as jnp
    import optax

    import asgd_jax
    from asgd_jax import timing

    model = asgd_jax.LeNet5()
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.random((batch, 28, 28, 1), dtype=np.float32))
    y = jnp.asarray(rng.integers(0, 10, batch))
    params0 = model.init(jax.random.key(0), x[:1])["params"]

    def loss(p):
        return optax.softmax_cross_entropy_with_integer_labels(model.apply({"params": p}, x), y).mean()

    sgd = optax.sgd(0.01, momentum=0.9)
    n = workers
    variants = {
        "plain optax SGD": sgd,
        f"delayed, d={n - 1}": asgd_jax.delayed(sgd, n - 1),
        f"async {n}, pure, fixed": asgd_jax.asynchronous(sgd, n),
        f"async {n}, shuffle, lognormal": asgd_jax.asynchronous(
            sgd, n, timing=timing.lognormal(1.0, 0.5), assignment="shuffle"
        ),
        f"async {n}, random, DC-ASGD-a": asgd_jax.asynchronous(
            sgd, n, timing=timing.normal(1.0, 0.2), assignment="random", compensation="dc-a"
        ),
        f"sync {n}, 2 backups": asgd_jax.asynchronous(
            sgd, n, timing=timing.normal(1.0, 0.2), server_rule="sync", backup_workers=2
        ),
    }
    steps_fns, states = {}, {}
    for name, tx in variants.items():

        def step(p, s, tx=tx):
            updates, s = tx.update(jax.grad(loss)(p), s, p)
            return optax.apply_updates(p, updates), s

        steps_fns[name] = jax.jit(step, donate_argnums=(0, 1))
        p = jax.tree.map(jnp.copy, params0)
        states[name] = steps_fns[name](p, tx.init(p))  # compile + warm up
    best = {name: float("inf") for name in variants}
    for _ in range(rounds):  # interleaved, so a busy moment hurts every variant alike
        for name in variants:
            p, s = states[name]
            jax.block_until_ready(p)
            t0 = time.perf_counter()
            for _ in range(steps):
                p, s = steps_fns[name](p, s)
            jax.block_until_ready(p)
            best[name] = min(best[name], (time.perf_counter() - t0) / steps)
            states[name] = (p, s)
    base = best["plain optax SGD"]
    return [
        {"batch_size": batch, "variant": name, "ms_per_step": 1e3 * t, "ratio_to_plain": t / base}
        for name, t in best.items()
    ]


def run(args) -> int:
    batch_sizes = common.parse_list(args.batch_sizes, int, "batch-sizes")
    if args.configs < 1:
        raise common.UsageError(f"--configs must be >= 1, got {args.configs}.")
    if args.workers < 1:
        raise common.UsageError(f"--workers must be >= 1, got {args.workers}.")
    if any(b < 1 or b > args.samples for b in batch_sizes):
        raise common.UsageError(f"--batch-sizes must lie in [1, --samples={args.samples}].")
    out = common.prepare_out_dir(args.out)
    import jax
    from asgd_jax import TrainConfig, Trainer
    from asgd_jax.data import make_dataset

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (args.samples, 28, 28), dtype=np.uint8)
    y = rng.integers(0, 10, args.samples)
    ds = make_dataset(x, y, x[:1000], y[:1000], name="random-mnist-shaped")
    k = args.configs
    rows, overhead = [], []
    for b in batch_sizes if args.only != "overhead" else []:
        trainer = Trainer(TrainConfig(batch_size=b, epochs=2, max_delay=8), ds)
        for label, kk, loop, chunk in (
            ("step, K=1", 1, "step", 0),
            (f"step, vmap {k}", k, "step", 0),
            (f"step, {k} x chunk 1", k, "step", 1),
            (f"scan, vmap {k}", k, "scan", 0),
        ):
            rate = _measure(trainer, kk, loop, chunk)
            rows.append({"batch_size": b, "driver": label, "configs": kk, "config_samples_per_s": rate})
            print(f"batch {b:5d}  {label:<18} {rate:10.0f} config-samples/s", flush=True)
        if args.torch:
            from experiments import torch_baseline

            label = f"torch, {os.cpu_count() or 1} threads"
            rate = torch_baseline.measure(b, delay=4, samples=args.samples, threads=os.cpu_count() or 1)
            rows.append({"batch_size": b, "driver": label, "configs": 1, "config_samples_per_s": rate})
            print(f"batch {b:5d}  {label:<18} {rate:10.0f} config-samples/s", flush=True)
    for b in batch_sizes if args.only != "throughput" else []:
        for row in _overhead(b, args.workers):
            overhead.append(row)
            print(
                f"batch {b:5d}  {row['variant']:<32} {row['ms_per_step']:8.2f} ms/step  "
                f"{row['ratio_to_plain']:5.2f}x plain",
                flush=True,
            )
    info = {
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "jax": jax.__version__,
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "rows": rows,
        "overhead": overhead,
    }
    with open(os.path.join(out, "benchmark.json"), "w", encoding="utf-8") as f:
        json.dump(info, f, indent=2)
    print(f"wrote {os.path.join(out, 'benchmark.json')}")
    return 0
