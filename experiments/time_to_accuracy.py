"""Time to accuracy: every method of asgd_jax, in simulated time, across compute-time regimes and data splits.

Which method reaches a target first, in the simulated clock, when the workers'
speeds are equal, very uneven, heavy-tailed, changing over time, or when one
worker dies, with the data split evenly (iid) or by worker (heterogeneous)?

**Part 1: AsGrad's logistic regression** (the full grid; :mod:`asgd_jax.problems`,
the non-convex regulariser λ = 0.1). One data set, Synthetic(α, β) of FedProx
(``--lr-data``, 10 blocks, labels flipped with probability ``--label-noise``,
unit-norm samples), split over the ``n`` workers either ``iid`` (equal data:
every worker a random share) or ``contiguous`` (heterogeneous: worker ``i`` the
``i``-th block of the file order, so each holds its own Synthetic block). A job
is worker ``i``'s full local gradient; the goal is ``F = (1/n) Σ f_i``. The
target is ``||∇F(x)|| <= target × ||∇F(x0)||`` (``--target``, relative to the
start ``x0 = 0``); the time to target is the simulated time of the first
evaluation (every ``calls / evals`` gradients) that meets it. Per method,
regime and split, the step sizes (``--step-sizes``) and seeds run as ONE
compiled program (``jit(vmap(vmap(run)))`` over cases and step sizes, as in the
``asgrad`` study; the regimes of one worker count are traced values of one
timing model, so a method has one program per worker count); the best step
size has the smallest mean time to target over seeds (a step size that misses
the target in any seed scores infinity; if every step size misses it, the
method has not reached the target and its row shows its best end ||∇F||).

Methods (``--methods``; S = R = n):

- ``pure``, ``random``, ``shuffle``: ASGD under AsGrad's assignment rules;
- ``ssgd``: synchronous SGD (a barrier every n gradients);
- ``rennala``: Rennala SGD (``max_staleness=0, accumulate=n``);
- ``ringmaster``: Ringmaster ASGD, stale gradients dropped (``max_staleness=n``);
- ``ringmaster_stop``: Ringmaster with calculation stops (``stop_stale=True``);
- ``malenia``: Malenia SGD (``rules.malenia``, S = n);
- ``naive_optimal``: Naive Optimal ASGD (``fastest=m*``, ``m* = optimal_workers(τ, σ², ε)``
  with the expected times τ, σ² the spread of the local gradients at ``x0``,
  ``(1/n) Σ ||∇f_i(x0) − ∇F(x0)||²``, and ε = (target ||∇F(x0)||)²);
- ``mindflayer``: MindFlayer SGD (budget ``--budget`` × the worker's mean time,
  ``max(1, round(τ_max / τ_i))`` attempts per round so that every worker is busy
  for about the slowest one's time);
- ``ringleader``: Ringleader ASGD (``rules.ringleader``);
- ``rescaled``: Rescaled ASGD (``rules.scale_by_compute_time`` of the mean times);
- ``adaptive``: the delay-adaptive step ``γ min(1, n/τ)``.

Compute-time regimes (``--regimes``; worker ``i = 1..n`` has mean time ``τ_i``,
drawn log-normal with σ = ``--jitter`` around it unless said otherwise):

- ``equal``: n = 10, τ_i = 1;
- ``linear10`` / ``linear100``: τ_i = i with n = 10 / 100 (very uneven);
- ``sqrt10`` / ``sqrt100``: τ_i = √i with n = 10 / 100;
- ``heavy``: n = 10, τ_i = 1, log-normal times with a large σ (``--heavy-sigma``,
  default 1.5: a heavy tail, the median 0.32, one job in a hundred ≈ 10×);
- ``varying``: n = 10, τ_i = 1, speeds that change with the clock
  (Tyurin's universal model, ``timing.periodic_speed``): every ``--period / 2``
  time units the even and the odd workers swap speeds 1 and ``--slow-speed``;
- ``failing``: n = 10, τ_i = 1; worker 1 fails for good at simulated time
  ``--fail-at`` (default 2: after about two jobs; for ever, so its data is lost
  to every method that does not keep its gradients).

Each run makes ``--calls-per-worker`` × n update calls (gradients computed:
Rennala's and Ringmaster's discarded ones count, MindFlayer's stopped attempts
count), so the n = 100 regimes get ten times the calls of the n = 10 ones.

**Part 2: LeNet-5 on label-split images** through :class:`asgd_jax.Trainer`
(``--data``: scikit-learn's digits in ``tiny``/``quick``, Fashion-MNIST in
``medium``/``paper``): 10 workers, each holding one class (``data_split="label"``),
the methods of ``--lenet-methods`` by name (``rules=`` of the Trainer:
``"drop"``/``"accumulate"``, ``"malenia"``, ``"ringleader"``, ``"rescaled"``,
``"stop"``, ``"fastest"``; ``server_rule="mindflayer"``) and the regimes of
``--lenet-regimes`` (``linear10`` is ``worker_times`` 1..10; ``heavy`` the
log-normal law with σ = ``--heavy-sigma``; ``equal`` times 1; log-normal with σ =
``--jitter`` otherwise), each over
``--learning-rates`` and ``--lenet-seeds``. Test accuracy is measured once per epoch,
so the time to ``--target-accuracy`` is the simulated time at the end of the
first epoch that reaches it (a coarse clock: epochs of one method differ in
simulated length). **Subset, and why:** a LeNet program compiles for tens of
seconds on a CPU and each (method, regime) is its own program; the ``quick`` and
``medium`` presets take the methods that differ on heterogeneous data (pure,
shuffle, Rennala, Ringmaster, Malenia, Ringleader, Rescaled) and the two regimes
where the papers disagree most (τ_i = i, heavy tails); ``paper`` takes every
method and regime that has a name in the Trainer (no ``naive_optimal``: its m*
needs σ²/ε of the network).

Presets: ``tiny`` (a smoke test: 4 methods x 2 regimes of the logistic part and
2 methods of an MLP on digits; seconds), ``quick`` (every method x regime x
split of the logistic part, 10 x 1 000 samples, 600 calls per worker, 200
evaluations, 2 seeds; LeNet-5 on digits, 7 methods x 2 regimes, 10 epochs
of 44 gradients, target accuracy 0.4: digits split by label learn slowly;
measured: 10 minutes on the 2-core CPU), ``medium`` (the same logistic part with 3 seeds;
LeNet-5 on Fashion-MNIST, 7 methods x 2 regimes, 2 learning rates, 3 epochs,
target accuracy 0.6; measured: 21.5 minutes on the 2-core CPU, 12 for the
logistic part and 9.5 for LeNet-5:
``python -m experiments time_to_accuracy --preset medium --out /tmp/tta/medium``),
``paper`` (a larger problem, 5 seeds, every method and regime of the LeNet part,
20 epochs; a GPU run).

Writes to ``--out`` (default ``runs/time_to_accuracy-<preset>``):
``results.jsonl`` (one line per config: its curve of ||∇F|| or accuracy against
simulated time, its time to target), ``study.json``, ``time_to_target.png``
(heat map: method x regime, one panel per split, log10 of the time to target,
✗ = not reached), ``grad_norm_vs_time.png`` (||∇F|| against simulated time at
the best step size for a few regimes), ``lenet_time_to_accuracy.png`` and
``lenet_accuracy_vs_time.png`` (grouped bars and curves of the LeNet part), and
``report.md``: the fastest method per regime and split, the tables, and each
paper's claim beside a verdict computed from the numbers.
"""

from __future__ import annotations

import dataclasses
import math
import time

import numpy as np

from experiments import asgrad, common, plots, study

NAME = "time_to_accuracy"
HELP = ("time to a target ||grad F|| (logistic regression) / test accuracy (LeNet-5) of every method across "
        "compute-time regimes (equal, tau_i = i, sqrt(i), n = 10/100, heavy tails, time-varying, a failure) "
        "and iid / heterogeneous data")

METHODS = ("pure", "random", "shuffle", "ssgd", "rennala", "ringmaster", "ringmaster_stop", "malenia",
           "naive_optimal", "mindflayer", "ringleader", "rescaled", "adaptive")
METHOD_MAP = {
    "pure": 'asynchronous(sgd, n, assignment="pure")',
    "random": 'asynchronous(sgd, n, assignment="random")',
    "shuffle": 'asynchronous(sgd, n, assignment="shuffle")',
    "ssgd": 'asynchronous(sgd, n, server_rule="sync")',
    "rennala": "asynchronous(sgd, n, max_staleness=0, accumulate=n)",
    "ringmaster": "asynchronous(sgd, n, max_staleness=n)",
    "ringmaster_stop": "asynchronous(sgd, n, max_staleness=n, stop_stale=True)",
    "malenia": "parameter_server(rules.malenia(sgd, n), n)",
    "naive_optimal": "asynchronous(sgd, n, fastest=optimal_workers(tau, sigma2, eps))",
    "mindflayer": "mindflayer(sgd, n, budgets=budget*tau, attempts=max(1, round(tau_max/tau)))",
    "ringleader": "parameter_server(rules.ringleader(sgd, n), n)",
    "rescaled": "parameter_server(chain(rules.scale_by_compute_time(tau), sgd), n)",
    "adaptive": 'asynchronous(sgd, n, staleness_scaling="adaptive")',
}
LABELS = {"pure": "ASGD pure", "random": "ASGD random", "shuffle": "ASGD shuffle", "ssgd": "SSGD",
          "rennala": "Rennala", "ringmaster": "Ringmaster", "ringmaster_stop": "Ringmaster (stops)",
          "malenia": "Malenia", "naive_optimal": "Naive optimal", "mindflayer": "MindFlayer",
          "ringleader": "Ringleader", "rescaled": "Rescaled ASGD", "adaptive": "delay-adaptive"}
# One color per method (13: the ten tab10 colors and three more); the newest methods are dashed in the curves.
COLORS = ("C0", "C1", "C2", "C3", "C4", "C5", "C6", "C7", "C8", "C9", "black", "olive", "navy")
REGIMES = ("equal", "linear10", "sqrt10", "linear100", "sqrt100", "heavy", "varying", "failing")
REGIME_TEXT = {
    "equal": "n = 10, τ_i = 1", "linear10": "n = 10, τ_i = i", "sqrt10": "n = 10, τ_i = √i",
    "linear100": "n = 100, τ_i = i", "sqrt100": "n = 100, τ_i = √i",
    "heavy": "n = 10, τ_i = 1, heavy-tailed log-normal", "varying": "n = 10, τ_i = 1, periodic speeds",
    "failing": "n = 10, τ_i = 1, worker 1 fails for good",
}
SPLITS = ("iid", "contiguous")
SPLIT_TEXT = {"iid": "equal data (iid)", "contiguous": "heterogeneous data (contiguous)"}
# The LeNet part: the methods the Trainer names, and the regimes it can express.
LENET_METHODS = ("pure", "shuffle", "ssgd", "rennala", "ringmaster", "ringmaster_stop", "malenia", "mindflayer",
                 "ringleader", "rescaled", "adaptive")
LENET_REGIMES = ("equal", "linear10", "heavy")
FASHION = "idx:/usr/share/datasets/fashion-mnist"
PARTS = ("logreg", "lenet")

_LR = dict(lr_data="synthetic:1,1", lam=0.1, label_noise=0.1, regimes=list(REGIMES), splits=list(SPLITS),
           methods=list(METHODS), step_sizes=[2.0**-k for k in range(0, 7)], target=0.05, jitter=0.1,
           heavy_sigma=1.5, period=8.0, slow_speed=0.1, fail_at=2.0, budget=2.0, parts=list(PARTS))
_NET = dict(model="lenet5", lenet_methods=["pure", "shuffle", "rennala", "ringmaster", "malenia", "ringleader",
                                           "rescaled"], lenet_regimes=["linear10", "heavy"], batch_size=32,
            momentum=0.0, lenet_seeds=[0])
PRESETS = {
    "tiny": dict(_LR, **{**_NET, "model": "mlp", "lenet_methods": ["pure", "malenia"], "lenet_regimes": ["linear10"]},
                 data="digits", samples_per_block=20, dim=10, calls_per_worker=40, evals=10,
                 regimes=["linear10", "failing"], methods=["pure", "rennala", "malenia", "mindflayer"],
                 step_sizes=[0.5, 0.125], seeds=[0], target=0.5, learning_rates=[0.05], epochs=1,
                 target_accuracy=0.3),
    "quick": dict(_LR, **_NET, data="digits", samples_per_block=1000, dim=40, calls_per_worker=600, evals=200,
                  seeds=[0, 1], learning_rates=[0.01, 0.03], epochs=10, target_accuracy=0.4),
    "medium": dict(_LR, **{**_NET, "batch_size": 64}, data=FASHION, samples_per_block=1000, dim=40,
                   calls_per_worker=600, evals=200, seeds=[0, 1, 2], learning_rates=[0.03, 0.1], epochs=3,
                   target_accuracy=0.6),
    "paper": dict(_LR, **{**_NET, "batch_size": 64, "lenet_methods": list(LENET_METHODS),
                          "lenet_regimes": list(LENET_REGIMES), "lenet_seeds": [0, 1, 2]},
                  data="tfds:fashion_mnist", samples_per_block=2500, dim=300, calls_per_worker=4000, evals=200,
                  seeds=[0, 1, 2, 3, 4], learning_rates=[0.01, 0.03, 0.1], epochs=20, target_accuracy=0.8),
}


def _check_lr_data(spec: str) -> None:
    if not str(spec).startswith("synthetic:"):
        raise common.UsageError(f"--lr-data {spec!r}: write synthetic:<alpha>,<beta> (the study splits one "
                                "Synthetic data set of 10 blocks over 10 or 100 workers).")
    asgrad.parse_data(spec)


OPTIONS = (
    *study.TRAINING,
    study.Option("parts", str, many=True, choices=PARTS, help="logreg (logistic regression), lenet (LeNet-5 "
                 "through the Trainer), or both (default)"),
    study.Option("lr_data", str, check=_check_lr_data, help="synthetic:<alpha>,<beta> for the logistic part"),
    study.Option("samples_per_block", int, low=1, help="logistic part: samples in each of the 10 Synthetic blocks"),
    study.Option("dim", int, low=1, help="logistic part: features"),
    study.Option("label_noise", float, low=0, high=1, help="logistic part: probability of flipping a label"),
    study.Option("lam", float, low=0, help="lambda of the non-convex regulariser (default 0.1)"),
    study.Option("methods", str, many=True, choices=METHODS, help="logistic part: comma-separated subset of "
                 + ",".join(METHODS)),
    study.Option("regimes", str, many=True, choices=REGIMES, help="logistic part: comma-separated subset of "
                 + ",".join(REGIMES)),
    study.Option("splits", str, many=True, choices=SPLITS, help="iid (equal data), contiguous (heterogeneous)"),
    study.Option("step_sizes", float, many=True, above=0, help="logistic part: comma-separated step sizes"),
    study.Option("calls_per_worker", int, low=1, help="logistic part: update calls per run = this x n"),
    study.Option("evals", int, low=1, help="logistic part: evaluations of ||grad F|| per run (must divide "
                 "the calls of every run)"),
    study.Option("target", float, above=0, below=1, help="logistic part: the target ||grad F|| relative to "
                 "||grad F(x0)||, in (0, 1)"),
    study.Option("seeds", int, many=True, help="logistic part: seeds of the simulation"),
    study.Option("jitter", float, low=0, help="sigma of the log-normal times around each mean (default 0.1)"),
    study.Option("heavy_sigma", float, above=0, help="sigma of the log-normal times of regime heavy"),
    study.Option("period", float, above=0, help="period of the speeds of regime varying"),
    study.Option("slow_speed", float, above=0, high=1, help="the slow speed of regime varying (fast: 1)"),
    study.Option("fail_at", float, low=0, help="simulated time at which worker 1 fails in regime failing"),
    study.Option("budget", float, above=0, help="MindFlayer's time budget, in units of each worker's mean time"),
    study.Option("lenet_methods", str, many=True, choices=LENET_METHODS, help="LeNet part: comma-separated "
                 "subset of " + ",".join(LENET_METHODS)),
    study.Option("lenet_regimes", str, many=True, choices=LENET_REGIMES, help="LeNet part: comma-separated "
                 "subset of " + ",".join(LENET_REGIMES)),
    study.Option("model", str, choices=("lenet5", "mlp")),
    study.Option("learning_rates", float, many=True, above=0, help="LeNet part: comma-separated"),
    study.Option("batch_size", int, low=1),
    study.EPOCHS,
    study.momentum_option(help="LeNet part: server SGD momentum (default 0)"),
    study.Option("target_accuracy", float, above=0, below=1, help="LeNet part: the target test accuracy"),
    study.Option("lenet_seeds", int, many=True, help="LeNet part: comma-separated seeds"),
)


# --- settings -------------------------------------------------------------------------------------------


def workers_of(regime: str) -> int:
    return 100 if regime.endswith("100") else 10


def mean_times(regime: str) -> list[float]:
    """Each worker's mean compute time tau_i (workers numbered fastest first)."""
    n = workers_of(regime)
    i = np.arange(1, n + 1, dtype=float)
    return (i if regime.startswith("linear") else np.sqrt(i) if regime.startswith("sqrt") else np.ones(n)).tolist()


def normalize_settings(s: dict, given: set = frozenset()) -> dict:
    """Checks what involves several settings and fills the defaults that depend on others."""
    s = dict(s)
    for k in ("parts", "methods", "regimes", "splits", "lenet_methods", "lenet_regimes"):
        s[k] = list(dict.fromkeys(s[k]))
    s["step_sizes"] = sorted({float(v) for v in s["step_sizes"]}, reverse=True)
    s["learning_rates"] = sorted({float(v) for v in s["learning_rates"]})
    s["seeds"] = list(dict.fromkeys(int(v) for v in s["seeds"]))
    s["lenet_seeds"] = list(dict.fromkeys(int(v) for v in s["lenet_seeds"]))
    if s["calls_per_worker"] < 2:
        raise common.UsageError(f"--calls-per-worker must be >= 2 so that gradients arrive, got {s['calls_per_worker']}.")
    if (10 * s["calls_per_worker"]) % s["evals"]:
        raise common.UsageError(f"--evals must divide the calls of a run (--calls-per-worker x 10 = "
                                f"{10 * s['calls_per_worker']}), got {s['evals']}.")
    if "lenet" in s["parts"] and s["data"] == "digits" and s["batch_size"] * 10 > 1400:
        raise common.UsageError("--batch-size: each of the 10 workers holds one class of digits (about 140 "
                                "images); use a batch size of at most 140.")
    return s


# --- the logistic-regression part ---------------------------------------------------------------------


def regime_case(regime: str, s: dict, calls: int) -> dict:
    """The traced numbers of a regime's timing model (see :func:`regime_timing`), as NumPy arrays."""
    n = workers_of(regime)
    tau = np.asarray(mean_times(regime), np.float32)
    speeds = np.ones((n, 2), np.float32)
    if regime == "varying":
        slow = s["slow_speed"]
        speeds[0::2] = [1.0, slow]
        speeds[1::2] = [slow, 1.0]
    return {
        "tau": tau, "sigma": np.float32(s["heavy_sigma"] if regime == "heavy" else s["jitter"]),
        "speeds": speeds, "period": np.float32(s["period"]),
        "fail_at": np.float32(s["fail_at"] if regime == "failing" else 1e30),
        "attempts": np.maximum(1, np.round(tau.max() / tau)).astype(np.int32),
    }


def regime_timing(case):
    """One timing model for every regime of a worker count: log-normal(1, sigma) x tau_i, periodic speeds,
    worker 0 failing at ``fail_at`` (1e30: never)."""
    from asgd_jax import timing

    base = timing.per_worker(timing.lognormal(1.0, case["sigma"]), case["tau"])
    varying = timing.periodic_speed(base, case["period"], case["speeds"])
    return timing.failing(varying, 0, case["fail_at"])


def make_system(method: str, step, n: int, case: dict, budget: float):
    """The transform of one method (see :data:`METHOD_MAP`), every number traced."""
    import jax.numpy as jnp
    import optax

    from asgd_jax import asynchronous, mindflayer, parameter_server, rules

    sgd, model, key = optax.sgd(step), regime_timing(case), case["seed"]
    if method in ("pure", "random", "shuffle"):
        return asynchronous(sgd, n, timing=model, assignment=method, key=key)
    if method == "ssgd":
        return asynchronous(sgd, n, timing=model, server_rule="sync", key=key)
    if method == "rennala":
        return asynchronous(sgd, n, timing=model, max_staleness=0, accumulate=n, key=key)
    if method in ("ringmaster", "ringmaster_stop"):
        return asynchronous(sgd, n, timing=model, max_staleness=n, stop_stale=method == "ringmaster_stop", key=key)
    if method == "naive_optimal":
        return asynchronous(sgd, n, timing=model, fastest=case["m_star"], key=key)
    if method == "adaptive":
        return asynchronous(sgd, n, timing=model, staleness_scaling="adaptive", key=key)
    if method == "mindflayer":
        return mindflayer(sgd, n, budgets=budget * case["tau"], attempts=case["attempts"], timing=model, key=key)
    server = {"malenia": lambda: rules.malenia(sgd, n), "ringleader": lambda: rules.ringleader(sgd, n),
              "rescaled": lambda: optax.chain(rules.scale_by_compute_time(jnp.asarray(case["tau"])), sgd)}[method]()
    return parameter_server(server, n, timing=model, key=key)


def load_problem(s: dict) -> dict:
    """The Synthetic data set (10 blocks) and, per worker count, the iid and contiguous shards (padded, stacked)."""
    from asgd_jax import problems

    spec = asgrad.parse_data(s["lr_data"])
    A, b, _ = problems.synthetic(spec["alpha"], spec["beta"], 10, s["samples_per_block"], s["dim"],
                                 label_noise=s["label_noise"], unit_norm=True, seed=0)
    out = {"A": A, "b": b, "weights": np.ones(len(b), np.float32), "by_n": {}}
    for n in sorted({workers_of(r) for r in s["regimes"]}):
        if len(b) < n:
            raise common.UsageError(f"--samples-per-block {s['samples_per_block']}: {len(b)} samples cannot be split "
                                    f"over {n} workers; give at least {math.ceil(n / 10)}.")
        pads = []
        for split in SPLITS:
            shards = problems.split_indices(split, n, num_samples=len(b), labels=b, seed=0)
            pads.append(problems.pad_shards(A, b, shards))
        m = max(p[0].shape[1] for p in pads)
        grow = lambda x: np.pad(x, [(0, 0), (0, m - x.shape[1])] + [(0, 0)] * (x.ndim - 2))
        out["by_n"][n] = {k: np.stack([grow(p[j]) for p in pads]) for j, k in enumerate(("A_pad", "b_pad", "w_pad"))}
        out["by_n"][n]["sigma2"] = [local_spread(A, b, s["lam"], p) for p in pads]
    out["norm0"] = float(np.linalg.norm(_np_gradient(np.zeros(A.shape[1]), A, b, s["lam"], out["weights"])))
    return out


def _np_gradient(x, A, b, lam, w):
    """:func:`asgd_jax.problems.logistic_gradient` in float64 NumPy: (1/m) sum_j w_j log(1 + exp(-b_j a_j'x))
    + lam sum x^2/(1 + x^2)."""
    z = b * (A @ x)
    sig = 1.0 / (1.0 + np.exp(z))
    return -(A.T @ (w * b * sig)) / A.shape[0] + lam * 2 * x / (1 + x * x) ** 2


def local_spread(A, b, lam, pad) -> float:
    """sigma^2 = (1/n) sum_i ||grad f_i(x0) - grad F(x0)||^2 at x0 = 0 (the data's heterogeneity)."""
    A_pad, b_pad, w_pad = pad
    x0 = np.zeros(A.shape[1])
    local = np.array([_np_gradient(x0, A_pad[i], b_pad[i], lam, w_pad[i]) for i in range(len(A_pad))])
    return float(np.mean(np.sum((local - local.mean(0)) ** 2, -1)))


def cases_of(s: dict, n: int, problem: dict) -> list[dict]:
    """Every (regime, split, seed) of worker count ``n``, with its traced numbers."""
    from asgd_jax import optimal_workers

    eps = (s["target"] * problem["norm0"]) ** 2
    out = []
    for regime in [r for r in s["regimes"] if workers_of(r) == n]:
        for d, split in enumerate(SPLITS):
            if split not in s["splits"]:
                continue
            case = regime_case(regime, s, s["calls_per_worker"] * n)
            m = int(optimal_workers(case["tau"], problem["by_n"][n]["sigma2"][d], eps))
            for seed in s["seeds"]:
                out.append({"regime": regime, "split": split, "seed": seed,
                            "arrays": {**case, "data": np.int32(d), "seed": np.int32(seed), "m_star": np.int32(m)}})
    return out


def make_program(method: str, n: int, s: dict, problem: dict):
    """``jit(vmap(vmap(run)))``: outer over cases (regime, split, seed), inner over step sizes.

    ``run(step, case) -> (norms[E], times[E], versions[E])``: ||grad F|| after every
    ``calls / evals`` calls, with the simulated time and server steps then.
    """
    import jax
    import jax.numpy as jnp
    import optax

    from asgd_jax import next_worker, problems
    from asgd_jax.simulator import _event_state

    lam, calls = s["lam"], s["calls_per_worker"] * n
    block = calls // s["evals"]
    A, b, w = (jnp.asarray(problem[k]) for k in ("A", "b", "weights"))
    pads = {k: jnp.asarray(v) for k, v in problem["by_n"][n].items() if k != "sigma2"}

    def run(step, case):
        tx = make_system(method, step, n, case, s["budget"])
        x0 = jnp.zeros(A.shape[1], jnp.float32)
        A_pad, b_pad, w_pad = (pads[k][case["data"]] for k in ("A_pad", "b_pad", "w_pad"))

        def call(carry, _):
            x, state = carry
            i = next_worker(state)
            g = problems.logistic_gradient(x, A_pad[i], b_pad[i], lam, w_pad[i])
            updates, state = tx.update(g, state, x)
            return (optax.apply_updates(x, updates), state), None

        def evaluate(carry, _):
            carry, _ = jax.lax.scan(call, carry, None, length=block)
            ev = _event_state(carry[1])
            return carry, (jnp.linalg.norm(problems.logistic_gradient(carry[0], A, b, lam, w)), ev.time, ev.version)

        _, out = jax.lax.scan(evaluate, (x0, tx.init(x0)), None, length=s["evals"])
        return out

    return jax.jit(jax.vmap(jax.vmap(run, in_axes=(0, None)), in_axes=(None, 0)))


def time_to_target(norms, times, threshold: float) -> float | None:
    """The simulated time of the first evaluation with ||grad F|| <= threshold (None: never)."""
    norms = np.asarray([np.inf if v is None else v for v in norms], float)
    hit = np.nonzero(norms <= threshold)[0]
    return float(times[hit[0]]) if hit.size and np.isfinite(times[hit[0]]) else None


def lr_config(s: dict, method: str, regime: str, split: str, step: float, seed: int) -> dict:
    """Everything that determines a logistic-regression result (``method``/``regime`` are labels; the
    system and the regime's numbers are fields)."""
    return {
        "study": NAME, "part": "logreg", "method": method, "regime": regime, "system": METHOD_MAP[method],
        "workers": workers_of(regime), "times": mean_times(regime),
        "time_sigma": s["heavy_sigma"] if regime == "heavy" else s["jitter"],
        "speeds": [[1.0, s["slow_speed"]][:: 1 if i % 2 == 0 else -1] for i in range(10)] if regime == "varying" else None,
        "period": s["period"] if regime == "varying" else None,
        "fail_at": s["fail_at"] if regime == "failing" else None,
        "budget": s["budget"] if method == "mindflayer" else None,
        "lr_data": s["lr_data"], "samples_per_block": s["samples_per_block"], "dim": s["dim"],
        "label_noise": s["label_noise"], "lam": s["lam"], "split": split, "target": s["target"],
        "calls": s["calls_per_worker"] * workers_of(regime), "evals": s["evals"], "step_size": step, "seed": seed,
    }


def lr_configs(s: dict) -> list[dict]:
    if "logreg" not in s["parts"]:
        return []
    return [lr_config(s, m, r, d, g, seed) for m in s["methods"] for r in s["regimes"] for d in s["splits"]
            for g in s["step_sizes"] for seed in s["seeds"]]


def run_method(method: str, n: int, s: dict, problem: dict, configs: list[dict]) -> tuple[list[dict], float]:
    """Every config of ``method`` with ``n`` workers as one program; their records and the seconds taken."""
    import jax
    import jax.numpy as jnp

    from asgd_jax.sweep import config_id

    t0 = time.perf_counter()
    cases = cases_of(s, n, problem)
    steps = list(s["step_sizes"])
    arrays = jax.tree.map(lambda *xs: jnp.asarray(np.stack(xs)), *[c["arrays"] for c in cases])
    norms, times, versions = jax.tree.map(np.asarray, make_program(method, n, s, problem)(
        jnp.asarray(steps, jnp.float32), arrays))
    wall = time.perf_counter() - t0
    index = {(c["regime"], c["split"], c["seed"]): k for k, c in enumerate(cases)}
    block = s["calls_per_worker"] * n // s["evals"]
    threshold = s["target"] * problem["norm0"]
    records = []
    for c in configs:
        k, j = index[(c["regime"], c["split"], c["seed"])], steps.index(c["step_size"])
        g = np.concatenate([[problem["norm0"]], norms[k, j].astype(np.float64)])
        t = np.concatenate([[0.0], times[k, j].astype(np.float64)])
        finite = np.isfinite(g)
        clean = lambda a: [float(v) if np.isfinite(v) else None for v in a]
        ttt = time_to_target(g, t, threshold)
        records.append({
            "config_id": config_id({k2: v for k2, v in c.items() if k2 not in LABEL_FIELDS}), **c,
            "grad_norm": clean(g), "time": clean(t), "calls_at": [block * i for i in range(s["evals"] + 1)],
            "server_steps": int(versions[k, j, -1]), "time_to_target": ttt, "reached": ttt is not None,
            "end_grad_norm": float(np.mean(g[-max(1, s["evals"] // 10):])) if finite.all() else None,
            "diverged": bool(not finite.all()), "m_star": int(cases[k]["arrays"]["m_star"]),
        })
    return records, wall


# --- the LeNet part ---------------------------------------------------------------------------------------


def lenet_grid(method: str, regime: str, s: dict) -> dict:
    """The Trainer config grid of one method and regime (10 workers, label split)."""
    n = 10
    base = {"data": s["data"], "model": s["model"], "optimizer": "sgd", "momentum": s["momentum"],
            "epochs": s["epochs"], "batch_size": s["batch_size"], "system": "async", "workers": n, "max_workers": n,
            "data_split": "label", "seed": s["lenet_seeds"], "learning_rate": s["learning_rates"]}
    if regime == "linear10":
        base.update(timing="lognormal", time_spread=s["jitter"], worker_times=[tuple(float(i + 1) for i in range(n))])
    elif regime == "heavy":
        base.update(timing="lognormal", time_spread=s["heavy_sigma"])
    else:
        base.update(timing="lognormal", time_spread=s["jitter"])
    extra = {
        "pure": {}, "shuffle": {"assignment": "shuffle"}, "ssgd": {"server_rule": "sync"},
        "rennala": {"rules": [("drop", "accumulate")], "max_staleness": 0, "accumulate": n},
        "ringmaster": {"rules": [("drop",)], "max_staleness": n},
        "ringmaster_stop": {"rules": [("drop", "stop")], "max_staleness": n},
        "malenia": {"rules": [("malenia",)], "malenia_batch": float(n)},
        "ringleader": {"rules": [("ringleader",)]}, "rescaled": {"rules": [("rescaled",)]},
        "adaptive": {"rules": [("adaptive",)]},
        "mindflayer": {"server_rule": "mindflayer", "budget": s["budget"], "attempts": 1},
    }[method]
    return {**base, **extra}


def lenet_configs(ctx) -> list[dict]:
    s = ctx.settings
    if "lenet" not in s["parts"]:
        return []
    out = []
    data = ctx.data["lenet"] if ctx.data else None
    for r in s["lenet_regimes"]:
        for c in study.training_configs([(m, lenet_grid(m, r, s)) for m in s["lenet_methods"]],
                                        data and data.num_train):
            out.append({**c, "regime": r, "part": "lenet"})
    return out


def lenet_summary(s: dict, records: list[dict]) -> dict:
    """Per (method, regime): the learning rate with the earliest mean time to the target accuracy (then the best
    final accuracy), its time, final accuracy and curve."""
    out = {}
    for m in s["lenet_methods"]:
        for r in s["lenet_regimes"]:
            rs = [x for x in records if x.get("part") == "lenet" and x["method"] == m and x["regime"] == r]
            if not rs:
                continue
            rows = []
            for lr in s["learning_rates"]:
                runs = [x for x in rs if x["learning_rate"] == lr]
                if not runs:
                    continue
                times = [accuracy_time(x, s["target_accuracy"]) for x in runs]
                t = float(np.mean(times)) if all(v is not None for v in times) else math.inf
                final = float(np.mean([x["test_accuracy"] if x["test_accuracy"] is not None else 0.0 for x in runs]))
                rows.append((t, -final, lr, runs))
            t, neg, lr, runs = min(rows, key=lambda v: v[:2])
            acc = np.mean([[a if a is not None else np.nan for a in x["test_accuracy_per_epoch"]] for x in runs], 0)
            sim = np.mean([x["sim_time_per_epoch"] for x in runs], 0)
            out[(m, r)] = {"time": t if math.isfinite(t) else None, "final": -neg, "lr": lr,
                           "acc": acc.tolist(), "sim_time": sim.tolist()}
    return out


def accuracy_time(record: dict, target: float) -> float | None:
    """The simulated time at the end of the first epoch with test accuracy >= target (None: never)."""
    for a, t in zip(record["test_accuracy_per_epoch"], record["sim_time_per_epoch"]):
        if a is not None and a >= target and t is not None and math.isfinite(t):
            return float(t)
    return None


# --- analysis ---------------------------------------------------------------------------------------------


def best_rows(s: dict, records: list[dict]) -> dict:
    """Per (method, regime, split): the best step size (smallest mean time to target over seeds; a step that
    misses the target in any seed scores infinity), its time, end ||grad F|| and curves."""
    out = {}
    lr = [r for r in records if r.get("part") == "logreg"]
    for m in s["methods"]:
        for reg in s["regimes"]:
            for d in s["splits"]:
                rs = [r for r in lr if r["method"] == m and r["regime"] == reg and r["split"] == d]
                if not rs:
                    continue
                scored = []
                for g in s["step_sizes"]:
                    runs = [r for r in rs if r["step_size"] == g]
                    if not runs:
                        continue
                    tt = [r["time_to_target"] for r in runs]
                    t = float(np.mean(tt)) if all(v is not None for v in tt) else math.inf
                    ends = [r["end_grad_norm"] if r["end_grad_norm"] is not None else math.inf for r in runs]
                    scored.append((t, float(np.mean(ends)), g, runs))
                t, end, g, runs = min(scored, key=lambda v: v[:2])
                out[(m, reg, d)] = {
                    "time": t if math.isfinite(t) else None, "end": end, "step_size": g, "runs": runs,
                    "stalled": all(r["time"][-1] is None for r in runs),
                    "m_star": runs[0].get("m_star"), "server_steps": float(np.mean([r["server_steps"] for r in runs])),
                    "end_time": float(np.nanmean([r["time"][-1] if r["time"][-1] is not None else np.nan
                                                  for r in runs])) if runs else None,
                }
    return out


def winners(s: dict, rows: dict) -> dict:
    """Per (regime, split): the methods sorted by time to target (reached ones only)."""
    out = {}
    for reg in s["regimes"]:
        for d in s["splits"]:
            got = [(rows[(m, reg, d)]["time"], m) for m in s["methods"]
                   if (m, reg, d) in rows and rows[(m, reg, d)]["time"] is not None]
            out[(reg, d)] = [m for _, m in sorted(got)]
    return out


def _t(rows, m, reg, d):
    r = rows.get((m, reg, d))
    return None if r is None else r["time"]


def _fmt_t(v) -> str:
    return "✗" if v is None else f"{v:.4g}"


def _faster(a, b) -> bool | None:
    """Whether time a beats time b (None beats nothing, and loses to any time); None if neither reached."""
    if a is None and b is None:
        return None
    return b is None or (a is not None and a < b)


def claims(s: dict, rows: dict) -> list[str]:
    """The papers' claims, each with a verdict computed from the rows."""
    out = []
    have = lambda *ms: all(any(k[0] == m for k in rows) for m in ms)

    def verdict(ok: bool | None) -> str:
        return "**Holds.**" if ok else ("**Does not hold.**" if ok is not None else "**Undecided** (neither reached the target).")

    uneven = [r for r in ("linear100", "linear10", "sqrt100", "sqrt10") if r in s["regimes"]]
    if have("pure", "rennala", "ringmaster") and uneven and "iid" in s["splits"]:
        parts, oks = [], []
        for reg in uneven:
            p, rn, rm = (_t(rows, m, reg, "iid") for m in ("pure", "rennala", "ringmaster"))
            best = min([v for v in (rn, rm) if v is not None], default=None)
            oks.append(_faster(best, p))
            parts.append(f"{REGIME_TEXT[reg]}: Rennala {_fmt_t(rn)}, Ringmaster {_fmt_t(rm)}, pure ASGD {_fmt_t(p)}")
        ok = all(o for o in oks if o is not None) if any(o is not None for o in oks) else None
        out.append("- **Rennala / Ringmaster beat plain ASGD in time when speeds are very uneven** (Tyurin & "
                   "Richtárik 2023; Maranjyan et al. 2025; equal data). **Measured** (iid split, time to target): "
                   + "; ".join(parts) + f". {verdict(ok)}")
    hetero = [r for r in s["regimes"] if r not in ("equal", "heavy")]
    if have("rennala") and (have("malenia") or have("ringleader")) and "contiguous" in s["splits"] and hetero:
        parts, oks = [], []
        for reg in hetero:
            rn = _t(rows, "rennala", reg, "contiguous")
            ml, rl = _t(rows, "malenia", reg, "contiguous"), _t(rows, "ringleader", reg, "contiguous")
            best = min([v for v in (ml, rl) if v is not None], default=None)
            oks.append(_faster(best, rn))
            parts.append(f"{reg}: Malenia {_fmt_t(ml)}, Ringleader {_fmt_t(rl)}, Rennala {_fmt_t(rn)}")
        ok = all(o for o in oks if o is not None) if any(o is not None for o in oks) else None
        out.append("- **Malenia and Ringleader handle heterogeneous data where Rennala does not** (Tyurin & "
                   "Richtárik 2023; Maranjyan & Richtárik 2026): Rennala's batches come mostly from the fast workers "
                   "and optimise their data. **Measured** (contiguous split, time to target): " + "; ".join(parts)
                   + f". {verdict(ok)}")
    if have("mindflayer") and "heavy" in s["regimes"]:
        parts, oks = [], []
        for d in s["splits"]:
            mf = _t(rows, "mindflayer", "heavy", d)
            others = {m: _t(rows, m, "heavy", d) for m in ("rennala", "ssgd", "malenia") if have(m)}
            best = min([v for v in others.values() if v is not None], default=None)
            oks.append(_faster(mf, best) if others else None)
            parts.append(f"{d}: MindFlayer {_fmt_t(mf)}, " + ", ".join(f"{LABELS[m]} {_fmt_t(v)}" for m, v in others.items()))
        ok = all(o for o in oks if o is not None) if any(o is not None for o in oks) else None
        out.append("- **MindFlayer beats the waiting methods under heavy-tailed times** (Maranjyan et al. 2025): "
                   "budgets cut the tail that Rennala's / SSGD's / Malenia's waits are exposed to. **Measured** "
                   "(heavy regime, against the best of those): " + "; ".join(parts) + f". {verdict(ok)}")
    if have("pure", "shuffle") and "contiguous" in s["splits"]:
        reached = [reg for reg in s["regimes"] if _t(rows, "shuffle", reg, "contiguous") is not None]
        pure_miss = [reg for reg in reached if _t(rows, "pure", reg, "contiguous") is None]
        out.append(f"- **AsGrad: shuffle reaches what pure ASGD cannot on heterogeneous data** (Islamov et al. 2024). "
                   f"**Measured** (contiguous split): shuffle reached the target in {len(reached)} of "
                   f"{len(s['regimes'])} regimes, pure ASGD missed it in {len(pure_miss)} of those "
                   f"({', '.join(pure_miss) or 'none'}). " + verdict(bool(pure_miss) if reached else None))
    if have("rescaled", "pure") and "contiguous" in s["splits"]:
        uneven_h = [r for r in uneven]
        parts = [f"{reg}: Rescaled {_fmt_t(_t(rows, 'rescaled', reg, 'contiguous'))}, pure "
                 f"{_fmt_t(_t(rows, 'pure', reg, 'contiguous'))}" for reg in uneven_h]
        oks = [_faster(_t(rows, "rescaled", reg, "contiguous"), _t(rows, "pure", reg, "contiguous")) for reg in uneven_h]
        ok = all(o for o in oks if o is not None) if any(o is not None for o in oks) else None
        if parts:
            out.append("- **Rescaled ASGD removes pure ASGD's bias towards the fast workers' data** (Mahran et al. "
                       "2026). **Measured** (contiguous split, uneven speeds): " + "; ".join(parts) + f". {verdict(ok)}")
    if have("ssgd") and "failing" in s["regimes"] and "iid" in s["splits"]:
        parts, oks = [], []
        for d in ["iid"]:
            sync = _t(rows, "ssgd", "failing", d)
            asy = [m for m in ("pure", "ringmaster", "rennala") if have(m) and _t(rows, m, "failing", d) is not None]
            oks.append(sync is None and bool(asy))
            parts.append(f"{d}: SSGD {_fmt_t(sync)}; reached by {', '.join(asy) or 'none of pure/ringmaster/rennala'}")
        out.append("- **A dead worker stalls synchronous rounds; asynchronous servers train on** (Dean et al. 2012). "
                   "(With the heterogeneous split the dead worker's block is lost to every method that forgets it.) "
                   "**Measured** (failing regime, equal data): " + "; ".join(parts) + f". {verdict(all(oks))}")
    if have("naive_optimal", "ringmaster") and "iid" in s["splits"] and uneven:
        parts = []
        for reg in uneven:
            r = rows.get(("naive_optimal", reg, "iid"))
            parts.append(f"{reg}: m* = {r['m_star'] if r else '–'}, Naive optimal {_fmt_t(_t(rows, 'naive_optimal', reg, 'iid'))}"
                         f", Ringmaster {_fmt_t(_t(rows, 'ringmaster', reg, 'iid'))}")
        out.append("- **Naive Optimal ASGD (the m* fastest workers) matches Ringmaster's time with equal data** "
                   "(Maranjyan et al. 2025; both optimal up to constants). **Measured** (iid): " + "; ".join(parts)
                   + ". (No verdict: the theory holds up to constants.)")
    return out


# --- report and figures ------------------------------------------------------------------------------------


def report(ctx, rows: dict, lenet: dict, problem) -> str:
    s = ctx.settings
    lines = [f"# Time to accuracy: every method across compute-time regimes and data splits", ""]
    if rows:
        win = winners(s, rows)
        lines += [
            "## Logistic regression (AsGrad's problem)", "",
            f"{s['lr_data']} with labels flipped at {s['label_noise']:g}, 10 blocks × {s['samples_per_block']} "
            f"samples of unit norm, {s['dim']} features, λ = {s['lam']:g}; split iid (equal data) or contiguous "
            f"(heterogeneous: a worker holds its own block). Target: ‖∇F‖ ≤ {s['target']:g} × ‖∇F(x0)‖ = "
            f"{s['target'] * problem['norm0']:.4g}. Each run {s['calls_per_worker']} calls per worker, evaluated "
            f"{s['evals']} times; step sizes {', '.join(asgrad.step_label(g) for g in s['step_sizes'])} × seeds "
            f"{s['seeds']} as one vmapped program per method and worker count; best step size = the smallest "
            "mean time to target (✗: no step size reached the target in every seed; the end ‖∇F‖ is then shown "
            "in brackets; ✗ stalls: the simulated clock went to infinity, e.g. a barrier or a queue waiting for the "
            "dead worker). Times are simulated time units (a mean compute time of 1 = one unit).", "",
            "**Fastest method per regime and split:**", "",
            "| regime | " + " | ".join(SPLIT_TEXT[d] for d in s["splits"]) + " |",
            "|---|" + "---|" * len(s["splits"]),
        ]
        for reg in s["regimes"]:
            cells = []
            for d in s["splits"]:
                w = win[(reg, d)]
                cells.append(f"{LABELS[w[0]]} ({_fmt_t(rows[(w[0], reg, d)]['time'])})" + (
                    f", then {LABELS[w[1]]} ({_fmt_t(rows[(w[1], reg, d)]['time'])})" if len(w) > 1 else "")
                    if w else "none reached the target")
            lines.append(f"| {reg} ({REGIME_TEXT[reg]}) | " + " | ".join(cells) + " |")
        for d in s["splits"]:
            lines += ["", f"**Time to target, {SPLIT_TEXT[d]}** (best step size in brackets after the time):", "",
                      "| method | " + " | ".join(s["regimes"]) + " |", "|---|" + "---:|" * len(s["regimes"])]
            for m in s["methods"]:
                cells = []
                for reg in s["regimes"]:
                    r = rows.get((m, reg, d))
                    if r is None:
                        cells.append("")
                    elif r["time"] is None and r.get("stalled"):
                        cells.append("✗ stalls")
                    elif r["time"] is None:
                        cells.append(f"✗ [{asgrad._fmt(r['end'])}]")
                    else:
                        cells.append(f"{r['time']:.4g} ({asgrad.step_label(r['step_size'])})")
                lines.append(f"| {LABELS[m]} | " + " | ".join(cells) + " |")
        lines += ["", "## Beside the papers", "", *claims(s, rows)]
    if lenet:
        lines += ["", *lenet_report(s, lenet)]
    lines += ["", "Figures: `time_to_target.png` (heat map), `grad_norm_vs_time.png` (‖∇F‖ against simulated time at "
              "the best step size)" + (", `lenet_time_to_accuracy.png`, `lenet_accuracy_vs_time.png`." if lenet else ".")
              + " Methods as systems: " + "; ".join(f"{LABELS[m]} = `{METHOD_MAP[m]}`" for m in s["methods"]) + ".", ""]
    return "\n".join(lines)


def lenet_report(s: dict, lenet: dict) -> list[str]:
    regimes = [r for r in s["lenet_regimes"] if any(k[1] == r for k in lenet)]
    lines = ["## LeNet-5 on label-split data (the Trainer)", "",
             f"{s['model']} on {s['data']}, 10 workers each holding one class, batch {s['batch_size']}, "
             f"{s['epochs']} epoch(s), learning rates {s['learning_rates']}, seeds {s['lenet_seeds']}; methods "
             f"{', '.join(s['lenet_methods'])} (a subset: each method and regime compiles its own LeNet program, "
             f"tens of seconds on a CPU). Target test accuracy {s['target_accuracy']:g}, checked at the end of each "
             "epoch: the time is the simulated time of the first epoch that reached it (✗: none did; the final "
             "accuracy is then in brackets).", "",
             "| method | " + " | ".join(regimes) + " |", "|---|" + "---:|" * len(regimes)]
    for m in s["lenet_methods"]:
        cells = []
        for r in regimes:
            b = lenet.get((m, r))
            cells.append("" if b is None else (f"✗ [{b['final']:.3f}]" if b["time"] is None else
                                               f"{b['time']:.4g} (lr {b['lr']:g}, final {b['final']:.3f})"))
        lines.append(f"| {LABELS[m]} | " + " | ".join(cells) + " |")
    for r in regimes:
        got = sorted((b["time"], m) for (m, rr), b in lenet.items() if rr == r and b["time"] is not None)
        best_final = max(((b["final"], m) for (m, rr), b in lenet.items() if rr == r), default=None)
        lines.append("")
        lines.append(f"- {r}: " + (f"fastest to {s['target_accuracy']:g}: {LABELS[got[0][1]]} ({got[0][0]:.4g})"
                                   if got else f"no method reached {s['target_accuracy']:g}")
                     + (f"; best final accuracy: {LABELS[best_final[1]]} ({best_final[0]:.3f})." if best_final else "."))
    return lines


def make_figures(ctx, rows: dict, lenet: dict) -> None:
    s = ctx.settings
    if rows:
        _heatmap(s, rows, ctx.figure("time_to_target.png"))
        show = [r for r in ("linear100", "linear10", "heavy", "failing") if r in s["regimes"]][:3] or s["regimes"][:1]
        panels = {}
        for reg in show:
            for d in s["splits"]:
                series = []
                for m in s["methods"]:
                    r = rows.get((m, reg, d))
                    if r is None:
                        continue
                    runs = r["runs"]
                    t = np.nanmean([[np.nan if v is None else v for v in x["time"]] for x in runs], 0)
                    g = np.nanmean([[np.nan if v is None else v for v in x["grad_norm"]] for x in runs], 0)
                    k = METHODS.index(m)
                    series.append({"label": f"{LABELS[m]} ({asgrad.step_label(r['step_size'])})", "x": t.tolist(),
                                   "y": g.tolist(), "color": COLORS[k], "ls": "-" if k < 7 else "--"})
                panels[f"{reg}, {d}"] = series
        plots.curve_panels(panels, ctx.figure("grad_norm_vs_time.png"), xlabel="simulated time", ylabel="‖∇F‖",
                           logy=True, cols=len(s["splits"]), title="‖∇F‖ against simulated time (best step size)")
    if lenet:
        regimes = [r for r in s["lenet_regimes"] if any(k[1] == r for k in lenet)]
        values = {(r, m): lenet[(m, r)]["time"] for (m, r) in lenet}
        plots.grouped_bars(regimes, [m for m in s["lenet_methods"]], values, ctx.figure("lenet_time_to_accuracy.png"),
                           ylabel=f"simulated time to accuracy {s['target_accuracy']:g} (no bar: not reached)",
                           logy=any(v is not None and v > 0 for v in values.values()),
                           value_fmt="{:.3g}", legend_outside=True, title=f"{s['model']} on {s['data']}, label split")
        panels = {r: [{"label": LABELS[m], "x": lenet[(m, r)]["sim_time"], "y": lenet[(m, r)]["acc"]}
                      for m in s["lenet_methods"] if (m, r) in lenet] for r in regimes}
        plots.curve_panels(panels, ctx.figure("lenet_accuracy_vs_time.png"), xlabel="simulated time",
                           ylabel="test accuracy", title=f"{s['model']}: test accuracy against simulated time")


def _heatmap(s: dict, rows: dict, path: str) -> None:
    plt = plots._pyplot()
    fig, axes = plt.subplots(1, len(s["splits"]), figsize=(1.1 * len(s["regimes"]) * len(s["splits"]) + 3,
                                                             0.42 * len(s["methods"]) + 2), squeeze=False,
                             constrained_layout=True)
    grids = {}
    for d in s["splits"]:
        grid = grids[d] = np.full((len(s["methods"]), len(s["regimes"])), np.nan)
        for i, m in enumerate(s["methods"]):
            for j, reg in enumerate(s["regimes"]):
                r = rows.get((m, reg, d))
                if r is not None and r["time"] is not None and r["time"] > 0:
                    grid[i, j] = math.log10(r["time"])
    finite = [v for g in grids.values() for v in g[np.isfinite(g)]]
    lo, hi = (min(finite), max(finite)) if finite else (0.0, 1.0)
    for ax, d in zip(axes[0], s["splits"]):
        grid = grids[d]
        im = ax.imshow(grid, cmap="viridis_r", aspect="auto", vmin=lo, vmax=max(hi, lo + 1e-6))
        for i in range(grid.shape[0]):
            for j in range(grid.shape[1]):
                v = grid[i, j]
                light = np.isfinite(v) and (v - lo) < 0.4 * (hi - lo)   # the light end of viridis_r
                ax.text(j, i, "✗" if np.isnan(v) else f"{10 ** v:.3g}", ha="center", va="center", fontsize=6,
                        color="red" if np.isnan(v) else ("black" if light else "white"))
        ax.set_xticks(range(len(s["regimes"])))
        ax.set_xticklabels(s["regimes"], rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(len(s["methods"])))
        ax.set_yticklabels([LABELS[m] for m in s["methods"]], fontsize=8)
        ax.set_title(SPLIT_TEXT[d], fontsize=10)
        fig.colorbar(im, ax=ax, label="log10 simulated time to target")
    plots._save(fig, path, "time to target ‖∇F‖ (✗: not reached)")


# --- the study: how the skeleton runs it ------------------------------------------------------------------


LABEL_FIELDS = ("method", "regime", "part")


def _configs(ctx) -> list[dict]:
    return lr_configs(ctx.settings) + lenet_configs(ctx)


def _load(ctx) -> dict:
    s = ctx.settings
    out = {"logreg": load_problem(s) if "logreg" in s["parts"] else None, "lenet": None}
    if "lenet" in s["parts"]:
        out["lenet"] = study.load_training_data(ctx)
    return out


def _plan(ctx, configs: list[dict]) -> list[study.Unit]:
    s = ctx.settings
    units = []
    for m in s["methods"] if "logreg" in s["parts"] else []:
        for n in sorted({workers_of(r) for r in s["regimes"]}):
            cs = [c for c in configs if c["part"] == "logreg" and c["method"] == m and c["workers"] == n]
            if cs:
                units.append(study.Unit(cs, _lr_runner(m, n, ctx, cs), f"{m} n={n}"))
    lenet = [c for c in configs if c["part"] == "lenet"]
    if lenet:
        units += study.training_plan(dataclasses.replace(ctx, data=ctx.data["lenet"]), lenet)
    return units


def _lr_runner(method, n, ctx, cs):
    def run(_bar):
        records, wall = run_method(method, n, ctx.settings, ctx.data["logreg"], cs)
        got = sum(r["reached"] for r in records)
        print(f"  {method:>15} n={n}: {len(cs)} runs in one program, {wall:.1f} s; {got} reached the target")
        return records

    return run


def _head(ctx) -> str:
    s = ctx.settings
    return (f"(logistic part: {len(s['methods'])} methods x {len(s['regimes'])} regimes x {len(s['splits'])} splits x "
            f"{len(s['step_sizes'])} step sizes x {len(s['seeds'])} seeds; LeNet part: {len(s['lenet_methods'])} methods "
            f"x {len(s['lenet_regimes'])} regimes on {s['data']})")


def _finish(ctx, records) -> tuple[str, list[str]]:
    s = ctx.settings
    rows = best_rows(s, records) if "logreg" in s["parts"] else {}
    lenet = lenet_summary(s, records) if "lenet" in s["parts"] else {}
    make_figures(ctx, rows, lenet)
    lines = []
    if rows:
        for (reg, d), w in winners(s, rows).items():
            lines.append(f"{reg:>10} {d:>10}: " + (f"fastest {LABELS[w[0]]} ({rows[(w[0], reg, d)]['time']:.4g})"
                                                    if w else "none reached the target"))
    return report(ctx, rows, lenet, ctx.data["logreg"] if ctx.data else None), lines


STUDY = study.Study(
    name=NAME, help=HELP, doc=__doc__, presets=PRESETS, options=OPTIONS, configs=_configs, plan=_plan,
    finish=_finish, check=normalize_settings, load=_load, head=_head, label_fields=LABEL_FIELDS,
)
