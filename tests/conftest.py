"""Test-session setup: XLA compiles the tests' programs without its expensive optimisation passes, and
``-n auto`` (pytest-xdist, pyproject.toml) starts one test process per core, at most 8.

Almost all of a test's time on a CPU is XLA compiling a program it then runs for a few tiny steps, and most
of compilation is LLVM optimising the generated code. The tests check maths, not speed, so they ask XLA for
its quickest compilation (``--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true``,
what ``jax.config.jax_disable_most_optimizations`` sets); the whole suite then runs in about
three quarters of the time (1 200 s -> 877 s in one process on the 2-core CPU).
The flags are appended to any ``XLA_FLAGS`` already set, reach the subprocesses some tests start (the
notebook's kernel, the multi-process sweeps, the CLI runs) through the environment, and change no result
beyond float rounding. ``ASGD_TEST_OPTIMIZED=1`` keeps XLA's usual optimisation, to test the code exactly as
users compile it.
"""

import os

FAST_COMPILE_FLAGS = ("--xla_backend_optimization_level=0", "--xla_llvm_disable_expensive_passes=true")

if os.environ.get("ASGD_TEST_OPTIMIZED", "") in ("", "0"):
    _flags = os.environ.get("XLA_FLAGS", "").split()
    _flags += [f for f in FAST_COMPILE_FLAGS if f.split("=")[0] not in {g.split("=")[0] for g in _flags}]
    os.environ["XLA_FLAGS"] = " ".join(_flags)  # read when JAX first starts its backend, after this file


def pytest_xdist_auto_num_workers(config):
    """``-n auto`` (pyproject.toml): one test process per usable core, at most 8 (each holds its own JAX)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cores, 8))
