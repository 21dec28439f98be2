"""The benchmark's memory table: peak memory per config of a LeNet-5 group, estimated and measured.

For each batch size of ``--batch-sizes``, the benchmark's trainer (LeNet-5, SGD
with momentum, ``max_delay`` 8, the random MNIST-shaped data of ``--samples``
images plus 1 000 test images) is compiled for two group sizes
(``--memory-configs``, default 1 and 8 configs), without running it, and XLA's
buffer assignment of the epoch program is read from ``memory_analysis()``:
arguments + outputs − the outputs that reuse donated arguments (aliases) +
temporaries is the memory the program holds at its peak. The difference
between the two group sizes, per config, is the **measured per-config
memory**; what is left at zero configs is the shared part (the data set).
That is set beside :func:`asgd_jax.sweep.config_memory_bytes`, the estimate the
engine plans chunks with, and both are turned into the largest group that fits
a 24 GiB CPU and an 80 GiB GPU by the engine's rule (80 % of the memory, less
the data set, divided by the per-config figure).

**(choice)** Why ``memory_analysis()`` and not the process's resident memory:
it is XLA's own account of the very program the engine runs, exact and the
same on every run; the resident memory also holds the compiler, Python and
jax's runtime, and its peak (``ru_maxrss``) only grows within a process, so it
cannot be split per group size. The process's peak is reported beside it, for
reference only. On a GPU the same code measures the GPU program (its fusions
differ from XLA:CPU's).
"""

from __future__ import annotations

import dataclasses
import json
import os
import resource

from experiments import common
from experiments.study import Option

# The machines the table sizes groups for: (label, bytes).
MACHINES = (("24 GiB CPU", 24 * 2**30), ("80 GiB GPU", 80 * 2**30))
# The share of a device's memory the engine lets a group use (asgd_jax.sweep.max_configs_per_device).
USABLE_FRACTION = 0.8


def compiled_bytes(trainer, configs: int) -> dict:
    """XLA's memory account of ``trainer``'s vmapped epoch program for ``configs`` configs (compiled, not run).

    ``total`` = arguments + outputs − aliased outputs (donated state) + temporaries.
    """
    import jax
    import jax.numpy as jnp

    fns = trainer.vmapped()
    keys = jax.random.split(jax.random.key(0), configs)
    hp = {"learning_rate": jnp.full((configs,), 0.01), "delay": jnp.arange(configs) % (trainer.config.max_delay + 1),
          "momentum": jnp.full((configs,), 0.9)}
    state = jax.eval_shape(fns["init"], trainer.data, keys, hp)
    m = fns["epoch"].lower(trainer.data, state).compile().memory_analysis()
    out = {"argument_bytes": int(m.argument_size_in_bytes), "output_bytes": int(m.output_size_in_bytes),
           "alias_bytes": int(m.alias_size_in_bytes), "temp_bytes": int(m.temp_size_in_bytes)}
    out["total_bytes"] = out["argument_bytes"] + out["output_bytes"] - out["alias_bytes"] + out["temp_bytes"]
    return out


def memory_row(trainer, sizes: tuple[int, int], machines=MACHINES) -> dict:
    """One batch size's row: the estimate, the two compiled programs, the per-config slope and what fits on
    each of ``machines``."""
    from asgd_jax.sweep import _tree_bytes, config_memory_bytes, max_configs_per_device

    small, big = sizes
    programs = {k: compiled_bytes(trainer, k) for k in sizes}
    per_config = (programs[big]["total_bytes"] - programs[small]["total_bytes"]) / (big - small)
    shared = programs[small]["total_bytes"] - small * per_config
    estimate = config_memory_bytes(trainer)
    data = _tree_bytes(trainer.data)
    fits = {}
    for label, budget in machines:
        room = USABLE_FRACTION * budget - shared
        fits[label] = {"budget_bytes": budget, "microbatch": trainer.microbatch,
                       "configs_by_measured": max(0, int(room // per_config)),
                       "configs_by_estimate": max_configs_per_device(trainer, budget, fraction=USABLE_FRACTION)}
    return {
        "batch_size": trainer.config.batch_size,
        "microbatch": trainer.microbatch,
        "max_delay": trainer.config.max_delay,
        "eval_chunk": trainer.eval_chunk,
        "estimate_bytes_per_config": estimate,
        "measured_bytes_per_config": per_config,
        "estimate_over_measured": estimate / per_config,
        "measured_shared_bytes": shared,
        "data_bytes": data,
        "programs": {str(k): v for k, v in programs.items()},
        "fits": fits,
    }


def memory_table(dataset, batch_sizes, sizes: tuple[int, int] = (1, 8)) -> dict:
    """The ``"memory"`` entry of benchmark.json: a row per batch size (see :func:`memory_row`).

    Each row measures the program this backend runs by default (``microbatch="auto"``: on a CPU, LeNet-5
    batches of 128 or more take micro-batches of 32; ``eval_batch_size="auto"``: on a CPU, LeNet-5's test
    set in chunks of 100). A GPU takes the whole batch and chunks of 1 000, so where the two differ the GPU
    column comes from the program with a GPU's defaults (``row["whole_batch"]``), compiled here too.
    """
    from asgd_jax import TrainConfig, Trainer
    from asgd_jax.train import eval_chunk_size

    rows = []
    for b in batch_sizes:
        config = TrainConfig(batch_size=b, epochs=2, max_delay=8)
        trainer = Trainer(config, dataset)
        row = memory_row(trainer, sizes)
        gpu_chunk = eval_chunk_size(config, trainer.num_test, "gpu")
        gpu = dataclasses.replace(config, microbatch=0, eval_batch_size=gpu_chunk)
        if row["microbatch"] or row["eval_chunk"] != gpu.eval_batch_size:
            whole = memory_row(Trainer(gpu, dataset), sizes, MACHINES[1:])
            row["fits"].update(whole["fits"])
            row["whole_batch"] = {k: whole[k] for k in ("estimate_bytes_per_config", "measured_bytes_per_config",
                                                        "estimate_over_measured", "measured_shared_bytes",
                                                        "programs")}
        rows.append(row)
    return {
        "model": "lenet5",
        "measurement": "XLA memory_analysis() of the compiled vmapped epoch program (arguments + outputs - "
                       "aliased outputs + temporaries); per config = the difference between the two group "
                       "sizes / their difference",
        "group_sizes": list(sizes),
        "usable_fraction": USABLE_FRACTION,
        "rows": rows,
        "process_peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,  # Linux: KiB
    }


def print_table(memory: dict) -> None:
    """A short table: estimate vs measured per config, and the largest group per machine."""
    mib = 2**20
    machines = [label for label, _ in MACHINES]
    print(f"\nmemory per config of a LeNet-5 group (max delay 8; measured: XLA's compiled epoch program, "
          f"K = {memory['group_sizes'][0]} vs {memory['group_sizes'][1]}):")
    print(f"{'batch':>6} {'micro':>6} {'estimate':>10} {'measured':>10} {'est/meas':>8}  "
          + "  ".join(f"{m + ' (meas / est)':>26}" for m in machines))

    def line(batch, micro, r, fits):
        print(f"{batch:>6} {micro or 'whole':>6} {r['estimate_bytes_per_config'] / mib:>7.1f} MiB "
              f"{r['measured_bytes_per_config'] / mib:>6.1f} MiB {r['estimate_over_measured']:>7.2f}x  "
              + "  ".join(f"{fits[m]['configs_by_measured']:>14} / {fits[m]['configs_by_estimate']:<9}"
                          if m in fits else f"{'':>26}" for m in machines))

    for r in memory["rows"]:
        if "whole_batch" in r:  # the CPU's program, then the GPU's (whole batch, evaluation chunks of 1 000)
            line(r["batch_size"], r["microbatch"], r, {machines[0]: r["fits"][machines[0]]})
            line(r["batch_size"], None, r["whole_batch"], {m: r["fits"][m] for m in machines[1:]})
        else:
            line(r["batch_size"], r["microbatch"], r, r["fits"])
    print(f"(largest group in configs, {memory['usable_fraction']:.0%} of the memory less the data set; "
          f"process peak RSS {memory['process_peak_rss_bytes'] / 2**30:.2f} GiB)")


def run(args, rest=None) -> int:
    """``benchmark --only memory`` (``rest`` None), or the default run: ``rest(args)`` (the other tables),
    then the memory table added to its benchmark.json."""
    if rest is not None:
        args._memory_done = True  # the other tables, through benchmark.run, without coming back here
        rc = rest(args)
        if rc:
            return rc
    samples = Option("samples", int, low=1).parse(args.samples)
    batch_sizes = Option("batch_sizes", int, many=True, low=1, high=samples).parse(args.batch_sizes)
    sizes = Option("memory_configs", int, many=True, low=1).parse(args.memory_configs)
    if len(sizes) != 2 or sizes[0] >= sizes[1]:
        raise common.UsageError(f"--memory-configs wants two group sizes, the smaller first (e.g. 1,8); "
                                f"got {args.memory_configs}.")
    out = common.prepare_out_dir(args.out)
    from experiments.benchmark import _write_table, random_mnist_dataset

    ds = random_mnist_dataset(samples)  # the benchmark's data set
    memory = memory_table(ds, batch_sizes, tuple(sizes))
    print_table(memory)
    table, path = {"memory": memory}, os.path.join(out, "benchmark.json")
    if rest is not None and os.path.exists(path):  # the default run: the other tables are already there
        with open(path, encoding="utf-8") as f:
            table = {**json.load(f), **table}
    return _write_table(out, table)
