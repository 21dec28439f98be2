"""Test-session setup: one persistent XLA compilation cache for the whole run.

Many tests compile the same programs (a study's tiny preset, LeNet-5's step at the same shapes), in this
process and in the subprocesses some tests start (the notebook's kernel, the multi-process sweeps). JAX's
persistent cache (a fresh temporary folder per session; ``JAX_COMPILATION_CACHE_DIR`` set beforehand wins)
lets each such program compile once. Only compilation is shared: every test still traces and runs its own.
"""

import atexit
import os
import shutil
import tempfile

if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _cache = tempfile.mkdtemp(prefix="asgd-jax-test-xla-cache-")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache  # subprocesses inherit it
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)
