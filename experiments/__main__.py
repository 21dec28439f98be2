"""``python -m experiments <study> [options]``: run a study; ``--help`` lists them."""

from __future__ import annotations

import argparse
import importlib
import sys

# study name -> module; each module has NAME, HELP, add_arguments(parser) and run(args).
STUDIES = {
    "delay_sweep": "experiments.delay_sweep",
    "delay_distribution": "experiments.delay_distribution",
    "adam_vs_sgd": "experiments.adam_vs_sgd",
    "warmup": "experiments.warmup",
    "benchmark": "experiments.benchmark",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m experiments",
        description="Run an asgd_jax study. Each writes results.jsonl and plots to --out; "
        "`python -m experiments <study> --help` shows its options.",
    )
    sub = parser.add_subparsers(dest="study", metavar="<study>", title="studies")
    for name, module_name in STUDIES.items():
        module = importlib.import_module(module_name)
        sp = sub.add_parser(
            name,
            help=module.HELP,
            description=(module.__doc__ or "").strip(),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(sp)
        sp.set_defaults(_module=module)
    return parser


def main(argv=None) -> int:
    from experiments.common import UsageError

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.study is None:
        parser.print_help()
        return 2
    try:
        return args._module.run(args)
    except UsageError as e:
        print(f"python -m experiments {args.study}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
