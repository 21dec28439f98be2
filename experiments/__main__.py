"""``python -m experiments <study> [options]``: run a study; ``--help`` lists them."""

from __future__ import annotations

import argparse
import functools
import importlib
import sys

# study name -> module; a study module has STUDY (an experiments.study.Study); a tool (benchmark) has
# NAME, HELP, add_arguments(parser) and run(args).
STUDIES = {
    "delay_sweep": "experiments.delay_sweep",
    "delay_distribution": "experiments.delay_distribution",
    "adam_vs_sgd": "experiments.adam_vs_sgd",
    "warmup": "experiments.warmup",
    "benchmark": "experiments.benchmark",
    "asgrad": "experiments.asgrad",
    "dc_asgd": "experiments.dc_asgd",
    "downpour": "experiments.downpour",
    "heterogeneous": "experiments.heterogeneous",
    "ad_psgd": "experiments.ad_psgd",
    "dean2012": "experiments.dean2012",
    "transformer_async": "experiments.transformer_async",
    "time_to_accuracy": "experiments.time_to_accuracy",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m experiments",
        description="Run an asgd_jax study. Each writes results.jsonl and plots to --out; "
        "`python -m experiments <study> --help` shows its options.",
    )
    parser.add_argument(
        "--distributed",
        action="store_true",
        help="several hosts: call jax.distributed.initialize() first (coordinator from the environment: "
        "TPU pod, SLURM, Open MPI, or JAX_COORDINATOR_ADDRESS/JAX_NUM_PROCESSES/JAX_PROCESS_ID); each host "
        "runs its share of the chunks; --out must be on a file system every host sees",
    )
    sub = parser.add_subparsers(dest="study", metavar="<study>", title="studies")
    for name, module_name in STUDIES.items():
        module = importlib.import_module(module_name)
        study = getattr(module, "STUDY", None)
        sp = sub.add_parser(
            name,
            help=study.help if study else module.HELP,
            description=(module.__doc__ or "").strip(),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        if study is not None:
            study.add_arguments(sp)
            sp.set_defaults(_run=functools.partial(_run_study, study))
        else:
            module.add_arguments(sp)
            sp.set_defaults(_run=module.run)
    return parser


def main(argv=None) -> int:
    from experiments.common import UsageError

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.study is None:
        parser.print_help()
        return 2
    try:
        if args.distributed:
            _initialize_distributed()
        return args._run(args)
    except UsageError as e:
        print(f"python -m experiments {args.study}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"python -m experiments {args.study}: interrupted; the results already written stay (rerun the "
              "same command to resume).", file=sys.stderr)
        return 130


def _run_study(study, args) -> int:
    from experiments import study as skeleton

    return skeleton.run(study, args)


def _initialize_distributed() -> None:
    import os

    import jax

    from experiments.common import UsageError

    env = {
        "coordinator_address": os.environ.get("JAX_COORDINATOR_ADDRESS"),
        "num_processes": os.environ.get("JAX_NUM_PROCESSES"),
        "process_id": os.environ.get("JAX_PROCESS_ID"),
    }
    kwargs = {k: (int(v) if k != "coordinator_address" else v) for k, v in env.items() if v is not None}
    try:
        jax.distributed.initialize(**kwargs)
    except (ValueError, RuntimeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UsageError(
            f"--distributed: jax.distributed.initialize() failed ({first}); on a cluster without auto-detection "
            "set JAX_COORDINATOR_ADDRESS=host:port, JAX_NUM_PROCESSES and JAX_PROCESS_ID on every host."
        ) from None


def _one_cpu_device_per_core() -> None:
    """Splits the CPU into one JAX device per core (at most 8) before JAX starts, unless the user chose.

    The sweep engine then lays a chunk's configs over the cores, one config per core and device
    (``asgd_jax.sweep.run_group``'s ``mesh="auto"``), instead of one program whose small operations are
    split across both threads: at batch 64 on a 2-core CPU about 1.4x the config-samples/s (README, Speed).
    The device count of an accelerator is not touched; set ``JAX_NUM_CPU_DEVICES=1`` to keep one CPU device.
    """
    import os

    if "JAX_NUM_CPU_DEVICES" in os.environ or "xla_force_host_platform_device_count" in os.environ.get(
            "XLA_FLAGS", ""):
        return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if cores > 1:
        import jax

        jax.config.update("jax_num_cpu_devices", min(cores, 8))


if __name__ == "__main__":
    _one_cpu_device_per_core()
    sys.exit(main())
