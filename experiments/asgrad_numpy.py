"""AsGrad's own simulation loop in NumPy, and its speed beside the ``asgrad`` study's program.

A re-implementation (written here, not copied) of the loop of the authors' code,
github.com/Rustem-Islamov/AsGrad-public (commit 00ee5d9): their ``Nodes``
class (nodes.py), ``LogReg.local_gradient`` (oracles.py), ``nonconvex_reg`` and
``run_optimizer`` (utils.py), for what the ``asgrad`` study's ``pure`` method
simulates: ``assign_type="pure"``, full local gradients (``batch_size=None``)
and their ``delay_type="normal"`` compute times (``"fixed"`` too, for tests).
What their loop does, and so what :func:`run_optimizer` here does:

- ``Nodes.init``: every worker ``i`` starts a job, the gradient of its local
  objective at ``x_init`` (computed at once, stamped with iteration 0); the
  legacy global NumPy generator is seeded with 42 (``np.random.seed(42)``), one
  shuffle of the permutation array is drawn from it, then each worker's time
  left ``|N(s_i, s_i^2)| + 1`` (a float; ``fixed``: ``s_i``).
- each iteration: ``decrease_time`` subtracts 1 from every time left until one
  is ``<= 0`` (whole ticks, a Python ``while`` loop); ``get_update`` picks the
  worker with the smallest time left (``argmin``: ties to the lowest id), pops
  its oldest job (gradient and dispatch iteration ``pi``; staleness
  ``iteration - pi``); the server steps ``x = x - lr * grad``; ``assign_new_job``
  computes the same worker's next gradient at (a copy of) the new ``x`` right
  away, stamps it with the iteration, and draws its time left
  ``int(|N(s_i, s_i^2)|) + 1`` (``fixed``: ``s_i``).
- the local gradient of worker ``i`` (rows ``i*m .. (i+1)*m``):
  ``-(1/m) A_i^T (b_i * e^{-z} / (1 + e^{-z})) + lam * 2x / (1 + x^2)^2`` with
  ``z = b_i * (A_i x)``, in float64 like theirs (their data are float64 arrays).

Left out, as the comparison asks: their ``run_optimizer`` evaluates the full
gradient norm ``||grad F(x)||`` after every iteration (one pass over all the
data per step, ``n`` times a local gradient's cost); here it is evaluated only
if asked (``eval_every``). Kept: their per-iteration Python bookkeeping (a dict
of job lists, a multiset of active workers, ``sum()`` over a boolean array) and
their oracle's row selection by an index array (``A[np.array(range(l, r))]``,
a copy of the worker's block, twice per gradient); ``copy_rows=False`` uses a
slice view instead (the same numbers, less memory traffic), reported beside it.
Their multiset package is replaced by :class:`collections.Counter` (the same
``[i] += 1`` / ``-= 1`` operations). Their ``random`` and ``shuffle`` rules are
not reproduced (the benchmark runs ``pure``). Checked against the authors' own
files (a :class:`collections.Counter` standing in for ``multiset``) on a
4-worker problem, ``normal`` and ``fixed`` times, 300 steps: the same delays and
bitwise the same ``||grad F||`` after every step.

:func:`compare` times this loop (one run at a time, as the authors run their
grid) against the ``asgrad`` study's compiled program for ``pure``
(:func:`experiments.asgrad.make_program`: 5 seeds x 10 step sizes, 50 runs, in
one call) on the study's ``medium`` problem (Synthetic(1, 1), 10 workers x
2 500 samples, 300 features), in one process, interleaved, best of several
rounds, compilation excluded. A run-iteration is one gradient computed by one
run: the study's calls (start-up included; it also evaluates ``||grad F||``
every 100 calls, which the NumPy loop does not) and the NumPy loop's ``n``
initial gradients plus one per iteration.
"""

from __future__ import annotations

import collections
import time

import numpy as np

__all__ = ["LogReg", "Nodes", "nonconvex_reg", "run_optimizer", "compare", "benchmark_entry", "BENCHMARK"]


def nonconvex_reg(x: np.ndarray) -> np.ndarray:
    """Gradient of AsGrad's regulariser ``sum_j x_j^2 / (1 + x_j^2)``: ``2x / (1 + x^2)^2``."""
    return 2 * x / (1 + x**2) ** 2


class LogReg:
    """Logistic regression on ``n`` contiguous blocks of ``m`` rows, with AsGrad's regulariser.

    ``local_gradient(x, i)`` is the gradient of worker ``i``'s objective
    (rows ``i*m .. (i+1)*m``); ``full_gradient(x)`` that of their mean.
    """

    def __init__(self, X, y, n: int, m: int, lam: float, *, copy_rows: bool = True):
        self.X = np.asarray(X, np.float64)
        self.y = np.asarray(y, np.float64)
        self.n, self.m, self.lam, self.copy_rows = n, m, lam, copy_rows
        if self.X.shape != (n * m, self.X.shape[1]) or self.y.shape != (n * m,):
            raise ValueError(f"X must be ({n * m}, d) and y ({n * m},), got {self.X.shape} and {self.y.shape}.")

    def _rows(self, i: int):
        lo, hi = i * self.m, (i + 1) * self.m
        return np.array(range(lo, hi)) if self.copy_rows else slice(lo, hi)

    def local_gradient(self, x: np.ndarray, i: int) -> np.ndarray:
        rows = self._rows(i)
        z = self.y[rows] * np.dot(self.X[rows], x)
        e = np.exp(-z)
        coef = -(e / (1 + e)) * self.y[rows]
        return np.dot(self.X[rows].T, coef) / self.m + self.lam * nonconvex_reg(x)

    def full_gradient(self, x: np.ndarray) -> np.ndarray:
        z = self.y * np.dot(self.X, x)
        e = np.exp(-z)
        coef = -(e / (1 + e)) * self.y
        return np.dot(self.X.T, coef) / (self.n * self.m) + self.lam * nonconvex_reg(x)


class Nodes:
    """The workers of AsGrad's simulation (pure assignment): jobs in flight, times left, a tick clock.

    Args:
        speeds: mean compute time ``s_i`` of each worker.
        oracle: a :class:`LogReg` (its ``local_gradient`` is a job).
        delay_type: ``"normal"`` (AsGrad's) or ``"fixed"`` (time ``s_i`` every job).
        seed: seed of the legacy NumPy generator the times are drawn from (theirs: 42).
    """

    def __init__(self, speeds, oracle: LogReg, delay_type: str = "normal", seed: int = 42):
        if delay_type not in ("normal", "fixed"):
            raise ValueError(f"delay_type must be 'normal' or 'fixed', got {delay_type!r}.")
        self.speeds = np.asarray(speeds, np.float64)
        self.num_nodes = len(self.speeds)
        self.oracle, self.delay_type, self.seed = oracle, delay_type, seed
        self.rng = np.random.default_rng(seed)  # their server generator: reshuffles the permutation array
        self.permutation = np.arange(self.num_nodes)

    def init(self, x_init: np.ndarray) -> None:
        """Every worker starts a job at ``x_init``; times left drawn (see the module docstring)."""
        self.random = np.random.RandomState(self.seed)  # their np.random.seed(42), without the global state
        self.iteration = 0
        self.jobs = {i: [(self.oracle.local_gradient(x_init, i), 0)] for i in range(self.num_nodes)}
        self.active = collections.Counter(range(self.num_nodes))
        self.random.shuffle(self.permutation)  # their permutation array (read by 'shuffle' only)
        if self.delay_type == "normal":
            self.time_left = np.array(
                [np.abs(self.random.normal(s, s)) + 1 for s in self.speeds], np.float64)
        else:
            self.time_left = self.speeds.copy()
        self.last = None

    def is_ready(self) -> bool:
        return sum(self.time_left <= 0) >= 1

    def decrease_time(self) -> None:
        """Whole ticks until some worker is done."""
        self.previous_time_left = self.time_left.copy()
        while not self.is_ready():
            self.time_left -= 1

    def get_update(self) -> tuple[np.ndarray, int]:
        """The finished worker's oldest job: its gradient and staleness."""
        self.decrease_time()
        i = int(np.argmin(self.time_left))
        self.time_left[i] = np.inf
        self.last = i
        grad, stamp = self.jobs[i].pop(0)
        self.active[i] -= 1
        return grad, self.iteration - stamp

    def assign_new_job(self, x: np.ndarray) -> None:
        """Pure: the worker that finished computes its next gradient at ``x`` and draws its time."""
        i = self.last
        self.jobs[i].append((self.oracle.local_gradient(x, i), self.iteration))
        self.active[i] += 1
        s = self.speeds[i]
        if self.delay_type == "normal":
            self.time_left[i] = np.abs(self.random.normal(s, s)).astype(np.int64) + 1
        else:
            self.time_left[i] = s
        self.iteration += 1
        if self.iteration % self.num_nodes == 0:
            self.rng.shuffle(self.permutation)
        self.last = None


def run_optimizer(x_init, nodes: Nodes, lr: float, num_iter: int, *, eval_every: int | None = None) -> dict:
    """``num_iter`` server steps of pure asynchronous SGD, AsGrad's loop without its per-step evaluation.

    Returns ``{"x", "delays", "workers", "grad_norms"}``: the last iterate, the
    staleness and worker of every applied gradient, and ``||grad F(x)||`` at the
    start and after every ``eval_every`` steps (empty when ``None``).
    """
    nodes.init(x_init)
    x = np.array(x_init, np.float64)
    delays, workers, norms = [], [], []
    if eval_every:
        norms.append(np.linalg.norm(nodes.oracle.full_gradient(x)))
    for it in range(num_iter):
        nodes.decrease_time()
        grad, delay = nodes.get_update()
        workers.append(nodes.last)
        x = x - lr * grad
        nodes.assign_new_job(np.copy(x))
        delays.append(delay)
        if eval_every and (it + 1) % eval_every == 0:
            norms.append(np.linalg.norm(nodes.oracle.full_gradient(x)))
    return {"x": x, "delays": delays, "workers": workers, "grad_norms": norms}


#: What ``python -m experiments benchmark`` measures (:func:`compare`'s arguments; a test makes them small).
BENCHMARK = {"iterations": 1000, "numpy_iterations": 300, "rounds": 3}


def _settings(iterations: int, samples_per_worker: int, dim: int, workers: int, seeds, step_sizes) -> dict:
    from experiments import asgrad

    if iterations % 100 and iterations >= 100:
        raise ValueError(f"iterations must be below 100 or a multiple of 100, got {iterations}.")
    s = dict(asgrad.PRESETS["medium"], samples_per_worker=samples_per_worker, dim=dim, workers=workers,
             iterations=iterations, evals=max(1, iterations // 100), methods=["pure"], seeds=list(seeds),
             step_sizes=list(asgrad.ASGRAD_STEPS if step_sizes is None else step_sizes), speeds=None)
    return asgrad.normalize_settings(s)


def compare(iterations: int = 1000, numpy_iterations: int = 300, rounds: int = 3, *, samples_per_worker: int = 2500,
            dim: int = 300, workers: int = 10, seeds=(0, 1, 2, 3, 4), step_sizes=None,
            numpy_step: float = 2.0**-5, pause: float = 0.2) -> dict:
    """Run-iterations per second of the ``asgrad`` study's program and of AsGrad's NumPy loop, same problem.

    The study's side is :func:`experiments.asgrad.make_program` for ``pure``
    on the ``medium`` preset's problem (sizes as given): ``len(seeds) x
    len(step_sizes)`` runs of ``iterations`` calls in one call of the compiled
    program, ``||grad F||`` evaluated every 100 calls. Its first call
    (compilation) is not timed. The NumPy side is :func:`run_optimizer` on the
    same data (float64), ``numpy_iterations`` steps at ``numpy_step``, one run,
    with the authors' row copies and (``view``) with slice views. ``rounds``
    rounds, each timing every side once, ``pause`` seconds apart (so that
    XLA's threads are idle when NumPy's start); the best round of each side counts.

    Returns a dict: ``jax_run_iterations_per_s``, ``numpy_run_iterations_per_s``
    and their ``ratio``; ``numpy_view_run_iterations_per_s`` and ``ratio_view``;
    ``runs``, ``iterations``, ``numpy_iterations``, ``workers``,
    ``samples_per_worker``, ``dim``, ``seeds``, ``step_sizes``, ``rounds``,
    ``jax_first_call_s`` (compilation included) and the seconds of each side's best round.
    """
    import jax
    import jax.numpy as jnp

    from experiments import asgrad

    s = _settings(iterations, samples_per_worker, dim, workers, seeds, step_sizes)
    problem = asgrad.load_problem(s)
    n, m = s["workers"], s["samples_per_worker"]
    t0 = time.perf_counter()
    program = asgrad.make_program("pure", s, problem)
    steps = jnp.asarray(s["step_sizes"], jnp.float32)
    seed_array = jnp.asarray(s["seeds"], jnp.int32)
    jax.block_until_ready(program(steps, seed_array))
    first_call = time.perf_counter() - t0
    oracles = {"numpy": LogReg(problem["A"], problem["b"], n, m, s["lam"], copy_rows=True),
               "numpy_view": LogReg(problem["A"], problem["b"], n, m, s["lam"], copy_rows=False)}
    x0 = np.zeros(problem["A"].shape[1])
    for oracle in oracles.values():  # warm-up (BLAS threads, first-touch of the float64 copy)
        run_optimizer(x0, Nodes(s["speeds"], oracle), numpy_step, min(5, numpy_iterations))
    best = {"jax": float("inf"), **{k: float("inf") for k in oracles}}
    for _ in range(rounds):
        t0 = time.perf_counter()
        jax.block_until_ready(program(steps, seed_array))
        best["jax"] = min(best["jax"], time.perf_counter() - t0)
        for name, oracle in oracles.items():
            time.sleep(pause)
            t0 = time.perf_counter()
            run_optimizer(x0, Nodes(s["speeds"], oracle), numpy_step, numpy_iterations)
            best[name] = min(best[name], time.perf_counter() - t0)
        time.sleep(pause)
    runs = len(s["seeds"]) * len(s["step_sizes"])
    jax_rate = runs * iterations / best["jax"]
    rates = {k: (n + numpy_iterations) / best[k] for k in oracles}  # gradients computed, start-up included
    return {
        "jax_run_iterations_per_s": jax_rate, "numpy_run_iterations_per_s": rates["numpy"],
        "ratio": jax_rate / rates["numpy"], "numpy_view_run_iterations_per_s": rates["numpy_view"],
        "ratio_view": jax_rate / rates["numpy_view"], "runs": runs, "iterations": iterations,
        "numpy_iterations": numpy_iterations, "workers": n, "samples_per_worker": m, "dim": s["dim"],
        "seeds": s["seeds"], "step_sizes": s["step_sizes"], "rounds": rounds, "jax_first_call_s": first_call,
        "jax_best_s": best["jax"], "numpy_best_s": best["numpy"], "numpy_view_best_s": best["numpy_view"],
        "jax_dtype": "float32", "numpy_dtype": "float64",
    }


def benchmark_entry() -> dict:
    """:func:`compare` with :data:`BENCHMARK`, printed as one line (the ``asgrad`` entry of benchmark.json)."""
    r = compare(**BENCHMARK)
    print(f"asgrad  jax {r['jax_run_iterations_per_s']:.0f} run-iterations/s ({r['runs']} runs in one program)  "
          f"numpy {r['numpy_run_iterations_per_s']:.0f} run-iterations/s (one run)  ratio {r['ratio']:.1f}x  "
          f"(numpy with slice views {r['numpy_view_run_iterations_per_s']:.0f}, ratio {r['ratio_view']:.1f}x)",
          flush=True)
    return r
