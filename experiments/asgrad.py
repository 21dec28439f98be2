"""AsGrad (Islamov et al. 2024): which worker gets the next job, on heterogeneous data.

``n`` workers (default 10) with mean compute times ``s_i = 1, 2, ..., n`` each
hold their own shard of a logistic regression problem with AsGrad's non-convex
regulariser (:mod:`asgd_jax.problems`); worker ``i``'s job is the full gradient of
its local objective ``f_i`` at the parameters it was handed, and the goal is
``F = (1/n) sum_i f_i``. Every method is the event-model simulator
:func:`asgd_jax.asynchronous` around plain SGD with step ``gamma``:

- ``pure``: ``assignment="pure"``, the next job goes to the worker that just
  finished (classic ASGD);
- ``random``: ``assignment="random"``, to a uniform random worker;
- ``shuffle``: ``assignment="shuffle"``, to ``perm[t mod n]``, a fresh random
  permutation every ``n`` jobs (AsGrad's new method);
- ``ssgd``: ``server_rule="sync"``, synchronous SGD: every worker computes at
  the same ``x``, the server waits for all ``n`` and steps with their average;
- ``rennala``: ``max_staleness=0, accumulate=S`` with the pure rule (Rennala
  SGD, Tyurin & Richtárik 2023): the server steps with the average of ``S``
  gradients computed at the current ``x`` and discards older ones
  (``--rennala-batch``, default ``S = n``);
- ``ringmaster``: ``max_staleness=R`` with the pure rule (Ringmaster ASGD,
  Maranjyan et al. 2025): arrivals with staleness above ``R`` are ignored
  (``--ringmaster-r``, default ``R = n``);
- ``adaptive``: ``staleness_scaling="adaptive"`` with the pure rule (the
  delay-adaptive step of Mishchenko et al. 2022): step ``gamma * min(1, n/tau)``.

Per method, the step sizes (default ``2^-1 ... 2^-10``, AsGrad's) and seeds run
as ONE compiled program, ``jit(vmap(vmap(run)))`` over seeds and step sizes (on a CPU
``jit(lax.map(vmap(run)))``, seeds one after another: see ``make_program``): a
``lax.scan`` of ``--iterations`` update calls (one call = one gradient computed,
start-up included), evaluating the full gradient norm ``||grad F(x)||`` every
``--iterations / --evals`` calls. The event model depends on the seed only, so
within a seed all step sizes share one event trace and worker ``i``'s shard is
multiplied by all their parameters at once. A run's end ``||grad F||`` is the
mean over its last 10 % of evaluations (where it ended up; a minimum over
iterates would reward a lucky dip of an oscillating run); a method's best step
size has the smallest end ``||grad F||``, averaged over seeds.

Compute times: ``--timing normal`` (default) is AsGrad's model, a normal with
standard deviation equal to its mean (their code: ``|N(s_i, s_i^2)| + 1``,
rounded to ticks), here truncated to positive times and rescaled so that worker
``i``'s mean compute time is exactly ``s_i``; ``exponential``, ``lognormal``
and ``fixed`` have mean ``s_i`` too (``--speeds`` sets the ``s_i``).

Data (``--data``): ``synthetic:<alpha>,<beta>`` (default ``synthetic:1,1``):
Synthetic(alpha, beta) of FedProx with binary labels, one block of
``--samples-per-worker`` samples and ``--dim`` features per worker
(:func:`asgd_jax.problems.synthetic`, seed 0), ``--label-noise`` of the labels
flipped (default 0.1) and every sample scaled to unit norm. **(choice)** Without
the noise the data are nearly separable and ``||grad F||`` gets small far from
any stationary point, where large stale steps throw the iterates; with raw
FedProx feature norms (about ``sqrt(d (1 + beta^2))``) the loss is so steep that
the best step sizes fall below AsGrad's grid. Or ``libsvm:<path>``, a LIBSVM
file such as AsGrad's w7a, used as it is. ``--split``: ``contiguous`` (default:
in file order, AsGrad's; for synthetic data each worker gets its own block),
``iid``, ``label`` (sorted by label) or ``dirichlet`` (``--dirichlet-alpha``).

Presets: ``tiny`` (a smoke test, seconds), ``quick`` (default; Synthetic(1, 1),
10 x 200 samples, 60 features, 20 000 iterations, 5 seeds; about 35 s on a
2-core CPU), ``medium`` (Synthetic(1, 1) the size of w7a: 10 x 2 500 samples,
300 features, 30 000 iterations, 5 seeds; about 20 minutes on a 2-core CPU),
``paper`` (AsGrad's protocol on w7a: ``--data libsvm:<path to w7a>``,
contiguous split, 40 000 iterations, 5 seeds; for a GPU).

Writes to ``--out`` (default ``runs/asgrad-<preset>``): ``results.jsonl`` (one
line per method x step size x seed: the settings, the ``||grad F||`` curve with
its call counts, simulated times and server steps, the minimum, end and last
``||grad F||``, applied updates per worker and their shares, the staleness
histogram of the arrivals, arrivals and discarded arrivals), ``study.json``,
``grad_norm.png`` (each method at its best step size: ``||grad F||`` against
iterations and against simulated time), ``step_sizes.png`` (end
``||grad F||`` per step size), ``shares.png`` (share of applied updates per
worker), ``staleness.png`` (staleness histograms per method) and ``report.md``
(the measured findings beside the papers' claims). Rerun-safe: methods whose
configs are all in ``results.jsonl`` are not run again.
"""

from __future__ import annotations

import math
import os
import time

import numpy as np

from asgd_jax.problems import SPLITS

from experiments import async_results, common, plots, sources, study

NAME = "asgrad"
HELP = (
    "AsGrad (Islamov et al. 2024): pure/random/shuffle ASGD, SSGD, Rennala, Ringmaster, delay-adaptive "
    "on heterogeneous logistic regression (||grad F|| vs iterations and time, update shares, staleness)"
)

METHODS = ("pure", "random", "shuffle", "ssgd", "rennala", "ringmaster", "adaptive")
#: What each method is in :func:`asgd_jax.asynchronous` (``S``, ``R``: --rennala-batch, --ringmaster-r).
METHOD_MAP = {
    "pure": 'assignment="pure" (ASGD: the worker that finished gets the next job)',
    "random": 'assignment="random" (the next job goes to a uniform random worker)',
    "shuffle": 'assignment="shuffle" (perm[t mod n], a fresh permutation every n jobs)',
    "ssgd": 'server_rule="sync" (barrier; average of all n gradients at the same x)',
    "rennala": 'assignment="pure", max_staleness=0, accumulate=S (Rennala SGD)',
    "ringmaster": 'assignment="pure", max_staleness=R (Ringmaster ASGD)',
    "adaptive": 'assignment="pure", staleness_scaling="adaptive" (step γ·min(1, n/τ))',
}
TIMINGS = ("normal", "exponential", "lognormal", "fixed")  # the laws of asgd_jax.timing.LAWS AsGrad uses
DEFAULT_SIGMA = {"normal": 1.0, "lognormal": 0.5}
ASGRAD_STEPS = [2.0**-k for k in range(1, 11)]

_COMMON = {
    "split": "contiguous", "dirichlet_alpha": None, "workers": 10, "speeds": None, "timing": "normal",
    "sigma": None, "lam": 0.1, "step_sizes": ASGRAD_STEPS, "methods": list(METHODS), "rennala_batch": None,
    "ringmaster_r": None, "label_noise": 0.1,
}
PRESETS = {
    # A smoke test (seconds): every method, two step sizes.
    "tiny": dict(_COMMON, data="synthetic:1,1", samples_per_worker=20, dim=10, iterations=200, evals=20,
                 step_sizes=[2.0**-1, 2.0**-4], seeds=[0]),
    # About 35 s on a 2-core CPU (mostly compilation): 7 programs of 50 runs.
    "quick": dict(_COMMON, data="synthetic:1,1", samples_per_worker=200, dim=60, iterations=20000,
                  evals=200, seeds=[0, 1, 2, 3, 4]),
    # Synthetic data the size of w7a (24 692 x 300): 350 runs of 30 000 update calls, 8.5 minutes measured on
    # the 2-core CPU (30-90 s per method's 50 runs).
    "medium": dict(_COMMON, data="synthetic:1,1", samples_per_worker=2500, dim=300, iterations=30000,
                   evals=300, seeds=[0, 1, 2, 3, 4]),
    # AsGrad's protocol on LIBSVM's w7a, for a GPU; pass --data libsvm:<path>. The method:
    # docs/methods.md#assignment-rules-pure-random-shuffle-asgrad-islamov-et-al-2024
    "paper": dict(_COMMON, data="libsvm:data/w7a", samples_per_worker=None, dim=None, iterations=40000,
                  evals=400, seeds=[0, 1, 2, 3, 4]),
}


def _synthetic_only(s: dict) -> str | None:
    if not str(s["data"]).startswith("synthetic:"):
        return "applies only to synthetic data (a LIBSVM file has its own size); leave it out."
    return None


def _check_data(spec: str) -> None:
    parse_data(spec)


OPTIONS = (
    study.Option("data", str, check=_check_data, help="synthetic:<alpha>,<beta> (Synthetic(alpha, beta), FedProx's "
                 "generator with binary labels, one block per worker) or " + sources.LIBSVM_HELP),
    study.Option("split", str, choices=SPLITS, help="how the samples are divided among the workers: contiguous "
                 "(file order, AsGrad's; default), iid, label (sorted by label), dirichlet (see --dirichlet-alpha)"),
    study.Option("dirichlet_alpha", float, above=0, applies=study.only_for("split", ("dirichlet",)),
                 help="concentration of --split dirichlet (default 0.5)"),
    study.Option("workers", int, low=1, help="number of workers n (default 10)"),
    study.Option("speeds", float, many=True, above=0, unique=False, metavar="S1,S2,...",
                 help="mean compute time of each worker (default 1,2,...,n)"),
    study.Option("timing", str, choices=TIMINGS, help="compute-time law, each with mean s_i: normal (default; "
                 "AsGrad's, std = --sigma x mean, truncated to > 0), exponential, lognormal, fixed"),
    study.Option("sigma", float, low=0, applies=study.only_for("timing", tuple(DEFAULT_SIGMA)),
                 help="spread: normal's std / mean before truncation (default 1, AsGrad's) or lognormal's std "
                 "of log T (default 0.5)"),
    study.Option("samples_per_worker", int, low=1, applies=_synthetic_only,
                 help="synthetic data: samples per worker"),
    study.Option("dim", int, low=1, applies=_synthetic_only, help="synthetic data: features"),
    study.Option("label_noise", float, low=0, high=1, applies=_synthetic_only,
                 help="synthetic data: probability of flipping each label (default 0.1; 0 leaves the data nearly "
                 "separable, see the description)"),
    study.Option("lam", float, low=0, help="lambda of the non-convex regulariser (default 0.1)"),
    study.Option("methods", str, many=True, choices=METHODS,
                 help="comma-separated subset of " + ",".join(METHODS) + " (default all)"),
    study.Option("step_sizes", float, many=True, above=0, help="comma-separated step sizes (default 2^-1, ..., 2^-10)"),
    study.Option("iterations", int, low=1, help="update calls (gradients computed) per run"),
    study.Option("evals", int, low=1, help="evaluations of ||grad F|| per run (must divide --iterations)"),
    study.Option("seeds", int, many=True, help="comma-separated seeds of the simulation (compute times, assignment)"),
    study.Option("rennala_batch", int, low=1, help="Rennala's S, gradients per step (default n)"),
    study.Option("ringmaster_r", int, low=0, help="Ringmaster's R, the largest staleness kept (default n)"),
)


# --- settings ------------------------------------------------------------------------------------------


def parse_data(spec: str) -> dict:
    """``synthetic:1,1`` → ``{"kind": "synthetic", "alpha": 1.0, "beta": 1.0}``; ``libsvm:p`` → ``{"kind": "libsvm", "path": p}``."""
    if not isinstance(spec, str) or ":" not in spec:
        raise common.UsageError(f"--data {spec!r}: write synthetic:<alpha>,<beta> or libsvm:<path>.")
    kind, _, arg = spec.partition(":")
    if kind == "synthetic":
        parts = [t.strip() for t in arg.split(",")]
        try:
            alpha, beta = (float(t) for t in parts)
        except ValueError:
            raise common.UsageError(
                f"--data {spec!r}: write synthetic:<alpha>,<beta> with two numbers >= 0, e.g. synthetic:1,1."
            ) from None
        if not all(math.isfinite(v) and v >= 0 for v in (alpha, beta)):
            raise common.UsageError(f"--data {spec!r}: alpha and beta must be numbers >= 0.")
        return {"kind": "synthetic", "alpha": alpha, "beta": beta}
    if kind == "libsvm":
        try:
            sources.parse_libsvm(spec)
        except sources.DataSourceError as e:
            raise common.UsageError(str(e)) from None
        return {"kind": "libsvm", "path": arg}
    raise common.UsageError(f"--data {spec!r}: unknown source; write synthetic:<alpha>,<beta> or libsvm:<path>.")


def normalize_settings(s: dict, given: set = frozenset()) -> dict:
    """Checks what involves several settings and fills the defaults that depend on others (``speeds``, ``S``,
    ``R``, ``sigma``); the option table has checked each value on its own."""
    s = dict(s)
    data = parse_data(s["data"])
    n = s["workers"]
    if data["kind"] != "synthetic":
        s["samples_per_worker"] = s["dim"] = s["label_noise"] = None  # the file decides
    if s["split"] == "dirichlet":
        s["dirichlet_alpha"] = 0.5 if s.get("dirichlet_alpha") is None else s["dirichlet_alpha"]
    speeds = s.get("speeds")
    speeds = [float(i + 1) for i in range(n)] if speeds is None else [float(v) for v in speeds]
    if len(speeds) != n:
        raise common.UsageError(f"--speeds has {len(speeds)} values for {n} workers; give one per worker.")
    s["speeds"] = speeds
    if s["timing"] in DEFAULT_SIGMA:
        s["sigma"] = DEFAULT_SIGMA[s["timing"]] if s.get("sigma") is None else float(s["sigma"])
    else:
        s["sigma"] = None
    s["methods"] = list(dict.fromkeys(s["methods"]))
    s["step_sizes"] = sorted({float(v) for v in s["step_sizes"]}, reverse=True)
    s["seeds"] = list(dict.fromkeys(int(v) for v in s["seeds"]))
    if s["iterations"] < n:
        raise common.UsageError(f"--iterations must be >= --workers ({n}) so that a gradient arrives, got {s['iterations']}.")
    if s["iterations"] % s["evals"]:
        raise common.UsageError(f"--evals must divide --iterations ({s['iterations']}), got {s['evals']}.")
    s["rennala_batch"] = n if s.get("rennala_batch") is None else s["rennala_batch"]
    s["ringmaster_r"] = n if s.get("ringmaster_r") is None else s["ringmaster_r"]
    return s


def timing_config(s: dict) -> dict:
    t = {"model": s["timing"]}
    if s["timing"] in DEFAULT_SIGMA:
        t["sigma"] = s["sigma"]
    return t


def make_configs(s: dict, method: str) -> list[dict]:
    """The configs of one method (step-size major, then seed): everything that determines a result."""
    base = {
        "study": NAME, "data": s["data"], "split": s["split"], "workers": s["workers"], "speeds": s["speeds"],
        "timing": timing_config(s), "lam": s["lam"], "iterations": s["iterations"], "evals": s["evals"],
    }
    if s["split"] == "dirichlet":
        base["dirichlet_alpha"] = s["dirichlet_alpha"]
    if s["data"].startswith("synthetic:"):
        base.update(samples_per_worker=s["samples_per_worker"], dim=s["dim"], label_noise=s["label_noise"],
                    unit_norm=True, data_seed=0)
    base["method"] = method
    if method == "rennala":
        base["rennala_batch"] = s["rennala_batch"]
    if method == "ringmaster":
        base["ringmaster_r"] = s["ringmaster_r"]
    return [dict(base, step_size=g, seed=seed) for g in s["step_sizes"] for seed in s["seeds"]]


# --- the problem and the program -----------------------------------------------------------------------


def load_problem(s: dict) -> dict:
    """Features, labels and the worker shards, as NumPy arrays (one-line UsageError on bad data)."""
    from asgd_jax import problems

    data = parse_data(s["data"])
    n = s["workers"]
    if data["kind"] == "synthetic":
        A, b, _ = problems.synthetic(data["alpha"], data["beta"], n, s["samples_per_worker"], s["dim"],
                                     label_noise=s["label_noise"], unit_norm=True, seed=0)
    else:
        try:
            A, b = sources.load_libsvm(s["data"])
        except sources.DataSourceError as e:
            raise common.UsageError(str(e)) from None
    try:
        shards = problems.split_indices(
            s["split"], n, num_samples=len(b), labels=b, alpha=s["dirichlet_alpha"] or 1.0, seed=0
        )
    except ValueError as e:
        raise common.UsageError(f"--split {s['split']}: {e}") from None
    A_pad, b_pad, w_pad = problems.pad_shards(A, b, shards)
    return {
        "A": A, "b": b, "weights": problems.shard_weights(shards, len(b)), "shards": shards,
        "A_pad": A_pad, "b_pad": b_pad, "w_pad": w_pad,
    }


def timing_model(s: dict):
    """Per-worker compute times of mean ``s_i`` (see the module docstring)."""
    import jax.numpy as jnp

    from asgd_jax import timing

    mean, spread = 1.0, s["sigma"] or 0.0
    if s["timing"] == "normal" and spread > 0:
        # rescaled so that the truncated normal's mean is exactly 1 (AsGrad's std = mean)
        mean = 1.0 / float(timing.normal(1.0, spread).expected(0))
        spread = mean * spread
    return timing.per_worker(timing.from_name(s["timing"], mean, spread), jnp.asarray(s["speeds"], jnp.float32))


def method_options(method: str, s: dict) -> dict:
    """Keyword arguments of :func:`asgd_jax.asynchronous` for one method."""
    if method in ("pure", "random", "shuffle"):
        return {"assignment": method}
    if method == "ssgd":
        return {"server_rule": "sync"}
    if method == "rennala":
        return {"assignment": "pure", "max_staleness": 0, "accumulate": s["rennala_batch"]}
    if method == "ringmaster":
        return {"assignment": "pure", "max_staleness": s["ringmaster_r"]}
    return {"assignment": "pure", "staleness_scaling": "adaptive"}


def make_program(method: str, s: dict, problem: dict, seeds_in_sequence: bool | None = None):
    """One compiled program over seeds (outer) and step sizes (inner, vmapped) for one method.

    ``seeds_in_sequence`` (default: on a CPU) runs the seeds one after another,
    ``jit(lax.map(vmap(run)))`` (split over the local devices, if several:
    :func:`_seeds_over_devices`); otherwise ``jit(vmap(vmap(run)))``. Worker
    ``i``'s shard is indexed out of the stacked ``A_pad`` (seeds vmapped: one
    copy per seed and call, cheap on a GPU).
    Called with ``(steps[G], seeds[S])``, every output has leading axes ``(S, G)``.
    ``run(step, seed)`` returns ``(norm0, norms[E], times[E], versions[E], trace)``:
    ``||grad F||`` at ``x0 = 0`` and after every block of ``iterations / evals``
    calls, the simulated time and server steps then, and per call
    ``(dispatched worker, gradients used, arrivals, last worker, last staleness)``.
    """
    import jax
    import jax.numpy as jnp
    import optax

    from asgd_jax import asynchronous, next_worker, problems

    n, lam = s["workers"], s["lam"]
    block = s["iterations"] // s["evals"]
    sequence = jax.default_backend() == "cpu" if seeds_in_sequence is None else seeds_in_sequence
    A, b, w = (jnp.asarray(problem[k]) for k in ("A", "b", "weights"))
    # Worker i's shard is indexed out of the stacked arrays. In sequence the worker is one number per call and
    # XLA reads the shard in place (8 % more run-iterations/s than picking one array per worker with
    # lax.switch, jax 0.10.2 on a 2-core AMD EPYC, same numbers bit for bit); seeds vmapped, it is a gather of
    # one copy per seed (on XLA:CPU half of the program's time, hence lax.map there).
    stacked = [jnp.asarray(problem[k]) for k in ("A_pad", "b_pad", "w_pad")]

    def local_gradient(x, worker):
        return problems.logistic_gradient(x, *(a[worker] for a in stacked[:2]), lam, stacked[2][worker])
    model = timing_model(s)
    options = method_options(method, s)

    def full_norm(x):
        return jnp.linalg.norm(problems.logistic_gradient(x, A, b, lam, w))

    def run(step, seed):
        tx = asynchronous(optax.sgd(step), n, timing=model, key=seed, **options)
        x0 = jnp.zeros(A.shape[1], jnp.float32)

        def call(carry, _):
            x, state = carry
            worker = next_worker(state)
            g = local_gradient(x, worker)
            arrivals, discarded = state.arrivals, state.discarded
            updates, state = tx.update(g, state, x)
            x = optax.apply_updates(x, updates)
            popped = state.arrivals - arrivals
            used = popped - (state.discarded - discarded)
            return (x, state), (worker, used, popped, state.last_worker, state.last_staleness)

        def evaluate(carry, _):
            carry, trace = jax.lax.scan(call, carry, None, length=block)
            x, state = carry
            return carry, (full_norm(x), state.time, state.version, trace)

        _, (norms, times, versions, trace) = jax.lax.scan(evaluate, (x0, tx.init(x0)), None, length=s["evals"])
        return full_norm(x0), norms, times, versions, trace

    # The event model (times, assignment, who computes the next gradient) depends on the seed only, so inside
    # the vmap over step sizes the worker stays unbatched: worker i's gradient for all step sizes' parameters
    # at once is a matrix product. Seeds vmapped, the worker is batched (a gather of each seed's shard),
    # hence lax.map in sequence.
    runs = jax.vmap(run, in_axes=(0, None))
    if sequence:
        return _seeds_over_devices(lambda steps, seeds: jax.lax.map(lambda seed: runs(steps, seed), seeds))
    return jax.jit(jax.vmap(runs, in_axes=(None, 0)))


def _seeds_over_devices(program):
    """``program(steps, seeds)`` jitted, its runs split over the local devices (``shard_map``), if several.

    ``python -m experiments`` makes each CPU core a JAX device: each core then runs its share in sequence.
    With ``S`` seeds on ``D`` devices, each device runs ``S // D`` whole seeds (all step sizes) and a
    ``1 / D`` slice of the step sizes of each of the ``S % D`` seeds left over (step sizes padded with the
    last one to a multiple of ``D``, the padding dropped). A seed's call costs much the same for 5 step sizes
    as for 10 (the shard is read from memory either way: 194 against 254 us here), so for 5 seeds on 2 cores
    this beats padding the seeds to 6 (2 x 254 + 194 against 3 x 254 us per call and core). Every run is
    computed as on one device, the same numbers bit for bit (the vmapped step sizes do not interact).
    """
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import Mesh, PartitionSpec as P

    devices = jax.local_devices()
    if len(devices) < 2:
        return jax.jit(program)
    mesh = Mesh(np.array(devices), ("runs",))
    count = len(devices)
    compiled = {}

    def split(steps, whole, chunk, left):
        # whole: this device's whole seeds (all step sizes); left: the seeds left over, on this device's
        # slice of the step sizes. Either may be empty (then its part is skipped when tracing).
        return (program(steps, whole) if whole.shape[0] else None,
                program(chunk, left) if left.shape[0] else None)

    def call(steps, seeds):
        n_whole = len(seeds) - len(seeds) % count
        whole, left = seeds[:n_whole], seeds[n_whole:]
        # At least 2 step sizes per device: a slice of one would be a matrix-vector product, rounded otherwise.
        pad = max(2, -(-len(steps) // count)) * count - len(steps)
        chunk = jnp.concatenate([steps, jnp.repeat(steps[-1:], pad)]) if pad else steps
        key = (n_whole, len(left), len(steps))
        if key not in compiled:
            # check_vma=False: the event model's scan carries start from constants (unvarying over the mesh)
            specs = dict(in_specs=(P(), P("runs"), P("runs"), P()), out_specs=(P("runs"), P(None, "runs")))
            compiled[key] = jax.jit(jax.shard_map(split, mesh=mesh, check_vma=False, **specs))
        out_whole, out_left = compiled[key](steps, whole, chunk, left)
        if out_left is not None:
            out_left = jax.tree.map(lambda a: a[:, : len(steps)], out_left)
        if out_whole is None:
            return out_left
        if out_left is None:
            return out_whole
        return jax.tree.map(lambda a, b: jnp.concatenate([a, b]), out_whole, out_left)

    return call


def _histogram(values: np.ndarray) -> dict:
    bins, counts = plots.integer_histogram(values)
    return {"staleness": bins, "count": counts}


def summarize_run(method: str, s: dict, norm0, norms, times, versions, trace) -> dict:
    """The results of one config from its program outputs (NumPy, one config's slice)."""
    n = s["workers"]
    worker, used, popped, last_worker, last_staleness = (np.asarray(a).reshape(-1) for a in trace)
    curve = np.concatenate([[norm0], np.asarray(norms, np.float64)])
    steps = int(versions[-1])
    if method == "ssgd":
        # Every gradient of a finished round enters its average: rounds of n calls, worker p = call p.
        counts = np.bincount(worker[: steps * n], minlength=n)
        stale = np.zeros(int(popped.sum()), np.int64)
    else:
        counts = np.bincount(last_worker[used > 0], minlength=n)
        stale = last_staleness[popped > 0].astype(np.int64)
    finite = np.isfinite(curve)
    block = s["iterations"] // s["evals"]
    return {
        "grad_norm": curve.tolist(),
        "calls": [block * i for i in range(s["evals"] + 1)],
        "time": [0.0, *np.asarray(times, np.float64).tolist()],
        "server_steps": [0, *np.asarray(versions).astype(int).tolist()],
        "min_grad_norm": float(curve[finite].min()) if finite.any() else None,
        "tail_grad_norm": float(np.mean(curve[-tail_length(s["evals"]):])),
        "final_grad_norm": float(curve[-1]),
        "diverged": bool(not finite.all()),
        "updates_per_worker": counts.tolist(),
        "shares": (counts / max(1, counts.sum())).tolist(),
        "arrivals": int(popped.sum()),
        "discarded": int(popped.sum() - used.sum()),
        "staleness_histogram": _histogram(stale),
    }


def run_method(method: str, s: dict, problem: dict, configs: list[dict]) -> tuple[list[dict], float]:
    """Runs every config of one method as one program; returns their records and the seconds taken."""
    import jax
    import jax.numpy as jnp

    t0 = time.perf_counter()
    program = make_program(method, s, problem)
    steps = sorted({c["step_size"] for c in configs}, reverse=True)
    seeds = sorted({c["seed"] for c in configs})
    outputs = program(jnp.asarray(steps, jnp.float32), jnp.asarray(seeds, jnp.int32))
    norm0, norms, times, versions, trace = jax.tree.map(np.asarray, outputs)
    wall = time.perf_counter() - t0
    from asgd_jax.sweep import config_id

    records = []
    for c in configs:
        i = (seeds.index(c["seed"]), steps.index(c["step_size"]))
        out = summarize_run(method, s, norm0[i], norms[i], times[i], versions[i], [a[i] for a in trace])
        records.append({"config_id": config_id(c), **c, **out, "seconds": wall / len(configs)})
    return records, wall


# --- analysis ------------------------------------------------------------------------------------------


TAIL = 0.1  # the end of a run: its last 10 % of evaluations


def tail_length(evals: int) -> int:
    """Evaluations in the end of a run of ``evals`` evaluations (at least one)."""
    return max(1, round(TAIL * evals))


def _score(r: dict) -> float:
    v = r.get("tail_grad_norm")
    return float("inf") if v is None or r.get("diverged") or not math.isfinite(v) else float(v)


def best_runs(s: dict, records: list[dict]) -> dict:
    """Per method: each step size's score and the best step's runs.

    The score of a step size is the mean over seeds of ``tail_grad_norm``, the
    mean ||grad F|| over the last 10 % of a run's evaluations: where the run
    ended up, robust to a single iterate's oscillation (a minimum over iterates
    rewards a lucky dip of an oscillating run). Diverged runs score infinity.
    """
    out = {}
    for method in s["methods"]:
        rs = [r for r in records if r["method"] == method]
        if not rs:
            continue
        scores = []
        for g in s["step_sizes"]:
            vals = [_score(r) for r in rs if r["step_size"] == g]
            scores.append(float(np.mean(vals)) if vals else float("inf"))
        j = int(np.argmin(scores))
        best = [r for r in rs if r["step_size"] == s["step_sizes"][j]]
        out[method] = {"scores": scores, "step_size": s["step_sizes"][j], "score": scores[j], "runs": best}
    return out


def tail_at(runs: list[dict], t: float, evals: int) -> float:
    """Mean over seeds of the mean ||grad F|| over the last ``tail_length(evals)`` evaluations at time <= ``t``."""
    vals = []
    for r in runs:
        g = np.array([np.inf if v is None else v for v in r["grad_norm"]], float)
        before = g[np.asarray(r["time"]) <= t]
        vals.append(float(np.mean(before[-tail_length(evals):])))
    return float(np.mean(vals))


def expected_pure_shares(s: dict) -> np.ndarray:
    """Pure ASGD's share of worker i in steady state: its arrival rate 1/s_i over the sum of rates."""
    rate = 1.0 / np.asarray(s["speeds"], float)
    return rate / rate.sum()


def analyse(s: dict, records: list[dict]) -> dict:
    best = best_runs(s, records)
    n = s["workers"]
    rows = {}
    for method, b in best.items():
        runs = b["runs"]
        shares = np.mean([r["shares"] for r in runs], axis=0)
        hist = _pool_histograms([r["staleness_histogram"] for r in runs])
        total = sum(hist["count"])
        mean_tau = (
            float(np.dot(hist["staleness"], hist["count"]) / total) if total else float("nan")
        )
        rows[method] = {
            "step_size": b["step_size"], "end": b["score"], "scores": b["scores"],
            "min": float(np.mean([_finite(r["min_grad_norm"]) for r in runs])),
            "end_time": float(np.mean([r["time"][-1] for r in runs])),
            "server_steps": float(np.mean([r["server_steps"][-1] for r in runs])),
            "arrivals": float(np.mean([r["arrivals"] for r in runs])),
            "discarded": float(np.mean([r["discarded"] for r in runs])),
            "shares": shares.tolist(), "share_dev": float(np.max(np.abs(n * shares - 1.0))),
            "staleness": hist, "staleness_mean": mean_tau,
            "staleness_max": max(hist["staleness"]) if total else None,
            "runs": runs,
        }
    horizon = min(r["end_time"] for r in rows.values()) if rows else 0.0
    for r in rows.values():
        r["at_horizon"] = tail_at(r["runs"], horizon, s["evals"])
    return {"rows": rows, "horizon": horizon, "pure_law": expected_pure_shares(s).tolist()}


def _finite(v) -> float:
    return float("inf") if v is None else float(v)


def _pool_histograms(hists: list[dict]) -> dict:
    counts: dict[int, int] = {}
    for h in hists:
        for v, c in zip(h["staleness"], h["count"]):
            counts[v] = counts.get(v, 0) + c
    if not counts:
        return {"staleness": [], "count": []}
    lo, hi = min(counts), max(counts)
    return {"staleness": list(range(lo, hi + 1)), "count": [counts.get(v, 0) for v in range(lo, hi + 1)]}


# --- report ------------------------------------------------------------------------------------------


def step_label(g: float) -> str:
    """``0.125`` → ``'2^-3'``; other values in ``%g``."""
    e = math.log2(g)
    return f"2^{round(e)}" if abs(e - round(e)) < 1e-9 else f"{g:g}"


def _fmt(x, spec=".3g") -> str:
    return "–" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, spec)


def data_label(s: dict, problem_shape: tuple[int, int] | None = None) -> str:
    data = parse_data(s["data"])
    if data["kind"] == "synthetic":
        text = (f"Synthetic({data['alpha']:g}, {data['beta']:g}) with binary labels ({100 * s['label_noise']:g} % "
                f"flipped), {s['workers']} × {s['samples_per_worker']} samples of unit norm, {s['dim']} features")
    else:
        text = f"LIBSVM file `{data['path']}`"
        if problem_shape is not None:
            text += f" ({problem_shape[0]} samples, {problem_shape[1]} features)"
    split = s["split"] + (f" (α = {s['dirichlet_alpha']:g})" if s["split"] == "dirichlet" else "")
    return f"{text}; {split} split"


def speeds_text(speeds, most: int = 12) -> str:
    """The mean compute times, all of them up to ``most``, else the first and last few."""
    if len(speeds) <= most:
        return ", ".join(f"{v:g}" for v in speeds)
    return ", ".join(f"{v:g}" for v in speeds[:5]) + ", …, " + ", ".join(f"{v:g}" for v in speeds[-3:])


def timing_label(s: dict) -> str:
    speeds = speeds_text(s["speeds"])
    if s["timing"] == "normal":
        law = f"normal with std = {s['sigma']:g} × mean before truncation to > 0 (AsGrad's model)"
    elif s["timing"] == "lognormal":
        law = f"log-normal (σ of log T = {s['sigma']:g})"
    else:
        law = s["timing"]
    return f"mean compute times s_i = {speeds}; {law}"


def report(s: dict, analysis: dict, preset: str | None, problem_shape=None) -> str:
    """``report.md``: the settings, a table per method and per worker, and the findings beside the papers."""
    rows, horizon = analysis["rows"], analysis["horizon"]
    n = s["workers"]
    tail = tail_length(s["evals"])
    lines = [
        "# AsGrad: job assignment and server rules on heterogeneous data",
        "",
        (
            f"Logistic regression with the non-convex regulariser λ Σ x_j²/(1 + x_j²), λ = {s['lam']:g}, on "
            f"{data_label(s, problem_shape)}; {n} workers, {timing_label(s)}. Each run: {s['iterations']} update "
            f"calls (one call = one full local gradient computed), ‖∇F‖ of F = (1/n) Σ f_i evaluated every "
            f"{s['iterations'] // s['evals']} calls; step sizes "
            f"{', '.join(step_label(g) for g in s['step_sizes'])} run as one vmapped program per method; seeds "
            f"{', '.join(map(str, s['seeds']))}" + (f" (`{preset}` preset)." if preset else ".")
        ),
        "",
        (
            f"**How methods are compared.** ‖∇F‖ at the end of a run is the mean of its last {tail} evaluations "
            f"(the last {100 * TAIL:g} % of the run: where it ended up, robust to the oscillation of single "
            "iterates); a method's best γ is the step size with the smallest end ‖∇F‖, averaged over seeds, and "
            "every number below is that step's, averaged over seeds. Iterations are gradients computed (update "
            "calls, the cost unit of every method; SSGD and Rennala take several per server step). ‖∇F‖ at t* is "
            f"the same end-of-run mean taken over the evaluations up to simulated time t* = {horizon:.4g}, the "
            "earliest time at which a method used up its iterations, so that every method is compared over "
            "the same simulated time."
        ),
        "",
        (
            "| method | in `asynchronous(sgd(γ), n, ...)` | best γ | end ‖∇F‖ | min ‖∇F‖ | ‖∇F‖ at t* "
            "| simulated time | server steps | discarded | staleness mean / max | max abs(n·share − 1) |"
        ),
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for m, r in rows.items():
        opts = ", ".join(f"{k}={v!r}".replace("'", '"') for k, v in method_options(m, s).items())
        lines.append(
            f"| {m} | `{opts}` | {step_label(r['step_size'])} | {_fmt(r['end'])} | {_fmt(r['min'])} "
            f"| {_fmt(r['at_horizon'])} | {r['end_time']:.4g} | {r['server_steps']:.0f} | {r['discarded']:.0f} "
            f"| {_fmt(r['staleness_mean'], '.2f')} / {_fmt(r['staleness_max'], 'd')} | {r['share_dev']:.3f} |"
        )
    law = np.asarray(analysis["pure_law"])
    # Every worker's column up to plots.MAX_BARS workers; beyond, the 5 fastest and the 5 slowest (the figure
    # shows all).
    cols = list(range(n)) if n <= plots.MAX_BARS else [*range(5), None, *range(n - 5, n)]

    def pct(values) -> str:
        return " | ".join(f"{100 * values[i]:.1f}" if i is not None else "…" for i in cols)

    lines += [
        "",
        (
            "Share of applied updates per worker (%, mean over seeds; a gradient is applied when it enters a "
            "server step" + ("" if n <= plots.MAX_BARS else f"; workers 1-5 and {n - 4}-{n} of {n}, all in "
                             "`shares.png`") + "):"
        ),
        "",
        "| method | " + " | ".join(f"w{i + 1} (s={s['speeds'][i]:g})" if i is not None else "…" for i in cols)
        + " |",
        "|---|" + "---:|" * len(cols),
        "| ∝ 1/s_i (pure's law) | " + pct(law) + " |",
    ]
    for m, r in rows.items():
        lines.append(f"| {m} | " + pct(r["shares"]) + " |")
    lines += ["", "## Beside the papers", ""]
    lines += findings(s, analysis)
    lines += [
        "",
        (
            "Figures: `grad_norm.png` (‖∇F‖ of each method at its best γ against iterations and against "
            "simulated time, mean over seeds), `step_sizes.png` (end ‖∇F‖ against the step size), `shares.png` "
            "(share of applied updates per worker, with pure's 1/s_i law), `staleness.png` (staleness of the "
            "arrivals per method, seeds pooled)."
        ),
        "",
    ]
    return "\n".join(lines)


def _slowest(s: dict) -> int:
    return int(np.argmax(s["speeds"]))


def _fastest(s: dict) -> int:
    return int(np.argmin(s["speeds"]))


def findings(s: dict, analysis: dict) -> list[str]:
    """The papers' claims, each followed by what this run measured (computed from the records)."""
    rows = analysis["rows"]
    n = s["workers"]
    law = np.asarray(analysis["pure_law"])
    t_star = f"t* = {analysis['horizon']:.4g}"
    out = []
    if "pure" in rows:
        sh = np.asarray(rows["pure"]["shares"])
        rel = np.abs(sh / law - 1.0)
        corr = float(np.corrcoef(sh, law)[0, 1]) if n > 1 and np.std(sh) > 0 and np.std(law) > 0 else float("nan")
        out.append(
            "- **AsGrad, pure ASGD** (Islamov et al. 2024): a worker with mean compute time "
            "s_i contributes a share ∝ 1/s_i of the updates, so the fast workers' data dominate. **Measured:** "
            f"pure's shares run from {100 * sh[_fastest(s)]:.1f} % (fastest worker) to {100 * sh[_slowest(s)]:.1f} % "
            f"(slowest); against the 1/s_i law the largest relative deviation is {100 * rel.max():.1f} % (worker "
            f"{int(rel.argmax()) + 1}), correlation {_fmt(corr, '.4f')}. "
            + ("Holds (within ±15 %)." if rel.max() <= 0.15 else "Deviates by more than 15 % from the law.")
        )
    for m in ("shuffle", "random"):
        if m in rows:
            dev = rows[m]["share_dev"]
            rule = "a fresh permutation every n jobs" if m == "shuffle" else "a uniform random worker per job"
            verdict = "Holds (within ±10 %)." if dev <= 0.10 else "Does not hold within ±10 %."
            out.append(
                f"- **AsGrad, {m}** ({rule}): every worker's data gets the same share 1/n = {100 / n:.1f} % of "
                f"the updates. **Measured:** every share lies within ±{100 * dev:.1f} % of 1/n. {verdict}"
            )
    if "pure" in rows and "shuffle" in rows:
        p, q = rows["pure"], rows["shuffle"]
        verdict = "Holds" if q["end"] < p["end"] else "Does not hold"
        text = (
            "- **AsGrad, convergence** (their w7a and phishing figures): with heterogeneous data, shuffle reaches "
            "a lower ‖∇f‖ than pure ASGD in the same number of iterations; pure ASGD heads for a stationary "
            "point of the speed-weighted objective Σ_i (1/s_i) f_i / Σ_i (1/s_i), not of F. **Measured** after "
            f"{s['iterations']} iterations, each at its best γ: end ‖∇F‖ {_fmt(q['end'])} for shuffle (γ = "
            f"{step_label(q['step_size'])}) against {_fmt(p['end'])} for pure (γ = {step_label(p['step_size'])})"
        )
        text += f", {p['end'] / q['end']:.3g} times lower. {verdict}." if q["end"] > 0 else f". {verdict}."
        if "random" in rows:
            text += f" Random: {_fmt(rows['random']['end'])} (γ = {step_label(rows['random']['step_size'])})."
        text += (
            f" In simulated time pure does more steps: shuffle used {q['end_time']:.4g} time units for its "
            f"iterations, pure {p['end_time']:.4g}, because shuffle queues jobs on the slow workers. At "
            f"{t_star}: shuffle {_fmt(q['at_horizon'])}, pure {_fmt(p['at_horizon'])}"
            + (f", random {_fmt(rows['random']['at_horizon'])}." if "random" in rows else ".")
        )
        out.append(text)
    if "ssgd" in rows:
        r = rows["ssgd"]
        out.append(
            "- **Synchronous SGD**: every step averages all n gradients at the same x: no "
            "staleness and every worker's data counted equally (with full local gradients a step is gradient "
            "descent on F), but each step waits for the slowest worker. **Measured:** end ‖∇F‖ "
            f"{_fmt(r['end'])} (γ = {step_label(r['step_size'])}) after {r['server_steps']:.0f} steps made of "
            f"{s['iterations']} gradients, in simulated time {r['end_time']:.4g}; at {t_star}: "
            f"{_fmt(r['at_horizon'])}."
        )
    if "adaptive" in rows:
        r = rows["adaptive"]
        text = (
            "- **Delay-adaptive step** (Mishchenko et al. 2022; Koloskova et al. 2022): "
            "scaling the step of a gradient with staleness τ by min(1, n/τ) makes the guarantees depend on n, "
            "not on the largest delay. **Measured:** end ‖∇F‖ "
            f"{_fmt(r['end'])} at γ = {step_label(r['step_size'])} (staleness mean "
            f"{_fmt(r['staleness_mean'], '.2f')}, max {_fmt(r['staleness_max'], 'd')})"
        )
        if "pure" in rows:
            p = rows["pure"]
            text += (
                f"; pure: {_fmt(p['end'])} at γ = {step_label(p['step_size'])}. It has pure's event model and "
                "assignment, hence pure's update shares: the scaling tames stale steps but does not remove the "
                "bias towards the fast workers' data."
            )
        else:
            text += "."
        out.append(text)
    if "rennala" in rows:
        r = rows["rennala"]
        out.append(
            "- **Rennala SGD** (Tyurin & Richtárik 2023; §6): optimal time complexity when all workers hold the "
            f"same data. Here (S = {s['rennala_batch']}) each step averages the first S gradients computed at "
            f"the current x, which come mostly from the fast workers; {r['discarded']:.0f} of "
            f"{r['arrivals']:.0f} arrivals, computed at an older x, are discarded. **Measured:** the fastest "
            f"worker supplies {100 * r['shares'][_fastest(s)]:.1f} % of the applied gradients, the slowest "
            f"{100 * r['shares'][_slowest(s)]:.1f} %; end ‖∇F‖ {_fmt(r['end'])} (γ = "
            f"{step_label(r['step_size'])}) after {r['server_steps']:.0f} server steps; at {t_star}: "
            f"{_fmt(r['at_horizon'])}. Its optimality assumes equal data, which this setting does not have."
        )
    if "ringmaster" in rows:
        r = rows["ringmaster"]
        out.append(
            "- **Ringmaster ASGD** (Maranjyan et al. 2025; §6): ASGD that ignores gradients with staleness above "
            f"R = {s['ringmaster_r']}; optimal time complexity under arbitrary speeds, for equal data. "
            f"**Measured:** {r['discarded']:.0f} of {r['arrivals']:.0f} arrivals dropped "
            f"({100 * r['discarded'] / max(1.0, r['arrivals']):.1f} %), mostly the slow workers': the slowest "
            f"worker's share of the applied updates is {100 * r['shares'][_slowest(s)]:.1f} %; end ‖∇F‖ "
            f"{_fmt(r['end'])} (γ = {step_label(r['step_size'])}); at {t_star}: {_fmt(r['at_horizon'])}."
        )
    if len(s["step_sizes"]) > 2:
        edge = [m for m, r in rows.items() if r["step_size"] in (s["step_sizes"][0], s["step_sizes"][-1])]
        if edge:
            out.append(
                f"- **Step-size grid.** The best γ of {', '.join(edge)} is at an end of the grid "
                f"({step_label(s['step_sizes'][0])} … {step_label(s['step_sizes'][-1])}); beyond it they might "
                "do better (`step_sizes.png`)."
            )
    return out


# --- entry point -------------------------------------------------------------------------------------


def make_figures(s: dict, analysis: dict, figure) -> None:
    """The figures, each drawn to ``figure(name)``."""
    rows = analysis["rows"]
    title = "\n".join([*data_label(s).split("; "),
                       f"{s['workers']} workers, s_i = {speeds_text(s['speeds'])}"])
    series = []
    for m, r in rows.items():
        series.append({
            "method": m, "label": f"{m} (γ = {step_label(r['step_size'])})",
            "calls": r["runs"][0]["calls"],
            "time": async_results.mean_curve([x["time"] for x in r["runs"]], skip_nan=False),
            "grad_norm": async_results.mean_curve([x["grad_norm"] for x in r["runs"]], skip_nan=False),
        })
    plots.grad_norm_curves(series, figure("grad_norm.png"), title=title)
    plots.step_size_scores(list(rows), s["step_sizes"], [r["scores"] for r in rows.values()],
                           figure("step_sizes.png"), title=title,
                           ylabel=f"‖∇F‖ at the end (mean of the last {100 * TAIL:g} %)")
    plots.worker_shares(list(rows), [r["shares"] for r in rows.values()], figure("shares.png"),
                        predicted=analysis["pure_law"], title="share of applied updates per worker: " + title)
    panels = []
    for m, r in rows.items():
        panels.append({
            "method": m, "staleness": r["staleness"]["staleness"], "count": r["staleness"]["count"],
            "threshold": s["ringmaster_r"] if m == "ringmaster" else (0 if m == "rennala" else None),
        })
    plots.staleness_by_method(panels, figure("staleness.png"), title="staleness of the arrivals: " + title)


# --- the study: how the skeleton runs it ------------------------------------------------------------------


def _configs(ctx) -> list[dict]:
    return [c for m in ctx.settings["methods"] for c in make_configs(ctx.settings, m)]


def _plan(ctx, configs: list[dict]) -> list[study.Unit]:
    """One unit per method: its step sizes and seeds run as one compiled program."""
    s = ctx.settings

    def unit(m):
        def run(_bar):
            cs = [c for c in configs if c["method"] == m]
            records, wall = run_method(m, s, ctx.data, cs)
            best = best_runs({**s, "methods": [m]}, records)[m]
            print(f"  {m:>10}: {len(cs)} runs in one program, {wall:.1f} s; best γ = "
                  f"{step_label(best['step_size'])}, end ‖∇F‖ {_fmt(best['score'])}")
            return records

        return study.Unit([c for c in configs if c["method"] == m], run, m)

    return [unit(m) for m in s["methods"]]


def _head(ctx) -> str:
    s = ctx.settings
    return (f"({len(s['methods'])} methods x {len(s['step_sizes'])} step sizes x {len(s['seeds'])} seeds, "
            f"{s['iterations']} iterations each) on {data_label(s, ctx.data['A'].shape)}; {s['workers']} workers, "
            f"{timing_label(s)}")


def _finish(ctx, records) -> tuple[str, list[str]]:
    analysis = analyse(ctx.settings, records)
    make_figures(ctx.settings, analysis, ctx.figure)
    return report(ctx.settings, analysis, ctx.preset, ctx.data["A"].shape), []


STUDY = study.Study(
    name=NAME, help=HELP, doc=__doc__, presets=PRESETS, options=OPTIONS, configs=_configs, plan=_plan,
    finish=_finish, check=normalize_settings, load=lambda ctx: load_problem(ctx.settings), head=_head,
    label_fields=(),  # the method is part of every config (and of its config_id)
    study_json=lambda ctx: {"num_samples": ctx.data["A"].shape[0], "num_features": ctx.data["A"].shape[1]},
)
