#!/bin/sh
# The whole GPU check in one command, on a CUDA (or TPU) machine with this project installed
# (pip install -U "jax[cuda12]" && pip install ".[bench]"); it installs nothing itself.
# Runs `python -m experiments benchmark --gpu-report` (experiments/gpu_report.py): the throughput table at the
# paper grid's group size with the PyTorch baseline, `delay_sweep --preset paper --data random:60000` timed, and
# the goals; writes runs/gpu-check/gpu_report.json in at most 8 minutes. Extra arguments are passed on.
set -e
cd "$(dirname "$0")/.."
exec python -m experiments benchmark --gpu-report --out runs/gpu-check "$@"
