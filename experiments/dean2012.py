"""Dean et al. 2012 (DistBelief), Figures 3-5: model parallelism, Downpour, Sandblaster, shards, failures.

Dean, Corrado, Monga, Chen, Devin, Le, Mao, Ranzato, Senior, Tucker, Yang and
Ng ("Large scale distributed deep networks", NIPS 2012). Four parts, each a set
of configs of one results file:

1. **Model parallelism in time** (Figure 3). The speed-up of one replica's step
   against the machines it is split over, :func:`asgd_jax.model_parallel.speedup`,
   for the paper's two model shapes: the 42M-parameter fully connected speech
   model and the 1.7B-parameter locally connected image model, expected (the
   slowest machine's expected slowness) and sampled (``--draws`` draws of the
   per-machine slowness, mean and standard deviation).
2. **Accuracy against time, time to accuracy against machines** (Figures 4-5),
   on real data with :class:`asgd_jax.Trainer` (``system="async"``, compute
   times ``Normal(1, s²)`` per gradient of ``--batch-size`` examples):
   single-replica SGD (one worker), Downpour SGD and Downpour + Adagrad
   (``server_rule="downpour"``, ``n_fetch = n_push = 1`` as in the paper's
   experiments) and synchronous SGD (``"sync"``) with ``--replicas`` replicas
   (one machine each), each over its learning-rate grid; Sandblaster L-BFGS
   (:func:`asgd_jax.sandblaster.make_sandblaster_train`) on batches of
   ``--lbfgs-batch`` examples cut into ``--portions`` portions, with
   ``--sandblaster-replicas`` replicas and backup tasks. A replica's time for a
   whole L-BFGS batch is ``lbfgs_batch / batch_size`` gradient times, so every
   method's clock is in the same unit. Time to accuracy: the simulated time of
   the first evaluation at or above ``--target``.
3. **Per-shard staleness** (Downpour's sharded server). Downpour + Adagrad with
   ``--staleness-replicas`` replicas and ``S`` in ``--shard-counts`` server
   shards on a network: a whole-model message takes ``--message-time`` on a
   shard's link (each shard moves only its slice), replica links are unlimited,
   and the shards' latencies spread evenly over ``[0, L]`` for ``L`` in
   ``--shard-latencies`` (``TrainConfig(shards=S)``, ``shard_latency=L``).
   Records each shard's mean staleness over the pushes it applied.
4. **A replica failing** mid-run (``TrainConfig(failures=True)``): replica 0
   is down from ``--fail-at`` to ``--return-at`` (fractions of Downpour's
   failure-free run time) for Downpour + Adagrad and synchronous SGD with
   ``--failure-replicas`` replicas: Downpour trains on, SSGD stalls.

**(choice)** Evaluation happens once per epoch; ``--train-examples`` (a prefix of
the training set) makes epochs short so the curves have enough points. Every
SGD config computes the same number of gradients (``--epochs``); the methods
differ in how fast the simulated clock runs. Momentum ``--momentum`` (default
0: Downpour's plain SGD).

Writes to ``--out`` (default ``runs/dean2012-<preset>``): ``results.jsonl``,
``model_parallel.png``, ``accuracy_vs_time.png``, ``time_to_accuracy.png``,
``staleness.png``, ``failure.png`` and ``report.md`` (the tables and the
paper's findings, each with a verdict computed from the numbers). Rerunning the
same command skips finished configs.

Presets: ``tiny`` (a smoke test: an MLP on ``digits``, seconds), ``quick``
(LeNet-5 on ``digits``, a few minutes on a 2-core CPU), ``medium`` (LeNet-5 on
15 000 Fashion-MNIST images, 49 configs; about 12 minutes measured on a busy 2-core CPU) and
``paper`` (LeNet-5 on all of ``tfds:mnist``, up to 32 replicas and 512
Sandblaster replicas; a GPU run).
"""

from __future__ import annotations

import math

import numpy as np

from experiments import async_results, curves, plots, study
from experiments.common import UsageError

NAME = "dean2012"
HELP = ("Dean et al. 2012 (DistBelief): model-parallel speed-up, Downpour / Adagrad / Sandblaster / SSGD "
        "accuracy against time and machines, per-shard staleness, a failing replica")

SGD_METHODS = ("single", "downpour_sgd", "downpour_adagrad", "ssgd")
METHODS = SGD_METHODS + ("sandblaster",)
LABELS = {"single": "single-replica SGD", "downpour_sgd": "Downpour SGD", "downpour_adagrad": "Downpour + Adagrad",
          "ssgd": "synchronous SGD", "sandblaster": "Sandblaster L-BFGS"}
STYLE = {"single": dict(color="black", ls=":"), "downpour_sgd": dict(color="tab:blue", ls="-"),
         "downpour_adagrad": dict(color="tab:red", ls="-"), "ssgd": dict(color="tab:gray", ls="--"),
         "sandblaster": dict(color="tab:green", ls="-.")}
SHAPES = ("speech", "image")
SHAPE_LABELS = {"speech": "speech model (42M parameters, fully connected)",
                "image": "image model (1.7B parameters, locally connected)"}
PARTS = ("speedup", "train", "staleness", "failure")
FASHION = "idx:/usr/share/datasets/fashion-mnist"
SPEECH_MACHINES = [1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64]
IMAGE_MACHINES = [1, 4, 9, 16, 25, 36, 49, 64, 81, 100, 144]

_COMMON = dict(parts=list(PARTS), momentum=0.0, timing="normal", time_spread=0.2, draws=64,
               vector_op_time=1e-3, message_time=0.5, shard_counts=[1, 4, 16], fail_at=0.3, return_at=0.6,
               seeds=[0], speech_machines=SPEECH_MACHINES, image_machines=IMAGE_MACHINES)
PRESETS = {
    # A smoke test: an MLP on digits, 2 epochs, one learning rate per method.
    "tiny": dict(_COMMON, data="digits", model="mlp", train_examples=0, batch_size=32, epochs=2, replicas=[2],
                 sgd_learning_rates=[0.1], adagrad_learning_rates=[0.03], lbfgs_batch=256, portions=16,
                 sandblaster_replicas=[4], iterations=4, staleness_replicas=2, shard_counts=[1, 4],
                 shard_latencies=[0.0, 1.0], failure_replicas=2, target=0.5, draws=8,
                 speech_machines=[1, 4, 8, 16], image_machines=[1, 16, 81]),
    # LeNet-5 on the bundled digits (1437 training images): minutes on a 2-core CPU.
    "quick": dict(_COMMON, data="digits", model="lenet5", train_examples=0, batch_size=16, epochs=8,
                  replicas=[2, 4, 8], sgd_learning_rates=[0.03, 0.1], adagrad_learning_rates=[0.01, 0.03],
                  lbfgs_batch=512, portions=64, sandblaster_replicas=[8, 32], iterations=30,
                  staleness_replicas=8, shard_latencies=[0.0, 2.0], failure_replicas=8, target=0.9),
    # LeNet-5 on 15 000 Fashion-MNIST training images (234 gradients per epoch), 8 epochs.
    # Sandblaster: full-batch L-BFGS on the 15 000 images (batches of 3000 stalled near 0.67 test accuracy).
    "medium": dict(_COMMON, data=FASHION, model="lenet5", train_examples=15000, batch_size=64, epochs=8,
                   replicas=[2, 4, 8], sgd_learning_rates=[0.01, 0.03, 0.1], adagrad_learning_rates=[0.003, 0.01, 0.03],
                   lbfgs_batch=15000, portions=512, sandblaster_replicas=[16, 64, 256], iterations=60,
                   staleness_replicas=8, shard_latencies=[0.0, 4.0], failure_replicas=8, target=0.8),
    # A GPU run: LeNet-5 on all of MNIST, up to 32 replicas, Sandblaster with up to 512.
    "paper": dict(_COMMON, data="tfds:mnist", model="lenet5", train_examples=0, batch_size=64, epochs=10,
                  replicas=[4, 8, 16, 32], sgd_learning_rates=[0.01, 0.03, 0.1],
                  adagrad_learning_rates=[0.003, 0.01, 0.03, 0.1], lbfgs_batch=6000, portions=1024,
                  sandblaster_replicas=[64, 128, 256, 512], iterations=100, staleness_replicas=32,
                  shard_latencies=[0.0, 4.0, 16.0], failure_replicas=32, target=0.98, seeds=[0, 1]),
}

OPTIONS = (
    *study.TRAINING,
    study.Option("model", str, choices=("lenet5", "mlp")),
    study.Option("parts", str, many=True, choices=PARTS, help="comma-separated subset of " + ",".join(PARTS)),
    study.Option("train_examples", int, low=0, help="train on the first N training examples (0: all)"),
    study.Option("batch_size", int, low=1, help="examples per SGD gradient (one time unit of compute)"),
    study.EPOCHS,
    study.Option("replicas", int, many=True, low=2, help="replica counts of Downpour and SSGD, e.g. 2,4,8"),
    study.Option("sgd_learning_rates", float, many=True, above=0, help="comma-separated (single, Downpour SGD, SSGD)"),
    study.Option("adagrad_learning_rates", float, many=True, above=0, help="comma-separated (Downpour + Adagrad)"),
    study.momentum_option(help="momentum of the SGD server (default 0)"),
    *study.timing_options("std of normal / sigma of lognormal / half-width of uniform (default 0.2)"),
    study.Option("lbfgs_batch", int, low=1, help="Sandblaster's batch (examples per L-BFGS iteration)"),
    study.Option("portions", int, low=1, help="portions each L-BFGS batch is cut into"),
    study.Option("sandblaster_replicas", int, many=True, low=1, help="Sandblaster replica counts, e.g. 16,64"),
    study.Option("iterations", int, low=1, help="L-BFGS iterations"),
    study.Option("vector_op_time", float, low=0, help="the coordinator's time per vector operation"),
    study.Option("staleness_replicas", int, low=2, help="Downpour replicas of the staleness part"),
    study.Option("shard_counts", int, many=True, low=1, help="server shard counts S, e.g. 1,4,16"),
    study.Option("shard_latencies", float, many=True, low=0, help="shard latency spreads L, e.g. 0,4"),
    study.Option("message_time", float, above=0, help="time of a whole-model message on a shard's link"),
    study.Option("failure_replicas", int, low=2, help="replicas of the failure part"),
    study.Option("fail_at", float, low=0, help="when replica 0 fails, a fraction of the failure-free run time"),
    study.Option("return_at", float, low=0, help="when it returns, a fraction of the failure-free run time"),
    study.Option("target", float, above=0, below=1, help="the test accuracy whose time is compared"),
    study.Option("draws", int, low=1, help="draws of the per-machine slowness per machine count (part 1)"),
    study.SEEDS,
)


# --- configs -----------------------------------------------------------------------------------------------


def _num_train(s: dict, data) -> int:
    """Training examples the SGD methods see (a guess of 1000 before the data is read)."""
    n = data.num_train if data is not None else 1000
    return min(n, s["train_examples"]) if s["train_examples"] else n


def run_time(s: dict, replicas: int, num_train: int) -> float:
    """Downpour's failure-free run time: every gradient takes 1 on average, ``replicas`` at once."""
    return s["epochs"] * (num_train // s["batch_size"]) / replicas


def shard_bandwidth(s: dict, data=None) -> float:
    """A shard link's bandwidth: the whole model's bytes in ``message_time``."""
    from experiments.ad_psgd import model_bytes

    shape = tuple(data.image_shape) if data is not None else (28, 28, 1)
    return model_bytes(s["model"], shape, int(data.num_classes) if data is not None else 10) / s["message_time"]


def _sgd_grid(s: dict, method: str, replicas: int) -> dict:
    rule = {"single": "async", "ssgd": "sync"}.get(method, "downpour")
    adagrad = method == "downpour_adagrad"
    return {"data": s["data"], "model": s["model"], "batch_size": s["batch_size"], "epochs": s["epochs"],
            "system": "async", "server_rule": rule, "workers": replicas, "max_workers": replicas,
            "timing": s["timing"], "time_spread": s["time_spread"], "seed": s["seeds"],
            "optimizer": "adagrad" if adagrad else "sgd",
            "learning_rate": s["adagrad_learning_rates" if adagrad else "sgd_learning_rates"],
            **({} if adagrad else {"momentum": s["momentum"]}), "train_examples": s["train_examples"]}


def trainer_configs(s: dict, data) -> list[dict]:
    """Parts 2 (the SGD methods), 3 (shards) and 4 (failures) as :class:`asgd_jax.Trainer` configs."""
    n = _num_train(s, data)
    grids = []
    if "train" in s["parts"]:
        grids.append(("single", "train", _sgd_grid(s, "single", 1)))
        grids += [(m, "train", _sgd_grid(s, m, r)) for r in s["replicas"] for m in SGD_METHODS[1:]]
    if "staleness" in s["parts"]:
        r = s["staleness_replicas"]
        net = {"network": True, "latency": 0.0, "bandwidth": 0.0, "server_bandwidth": shard_bandwidth(s, data),
               "learning_rate": s["adagrad_learning_rates"][len(s["adagrad_learning_rates"]) // 2]}
        grids += [("downpour_adagrad", "staleness", {**_sgd_grid(s, "downpour_adagrad", r), **net, "shards": k,
                                                     "shard_latency": s["shard_latencies"]})
                  for k in s["shard_counts"]]
    if "failure" in s["parts"]:
        r = s["failure_replicas"]
        t = run_time(s, r, n)
        fail = {"failures": True, "fail_worker": 0, "fail_at": s["fail_at"] * t, "return_at": s["return_at"] * t}
        grids += [(m, "failure", {**_sgd_grid(s, m, r), **fail}) for m in ("downpour_adagrad", "ssgd")]
    out = []
    for method, part, grid in grids:
        sub = grid.pop("train_examples")
        for c in study.training_configs([(method, grid)], n):
            out.append({**c, **({"train_examples": sub} if sub else {}), "part": part})
    return out


def other_configs(s: dict) -> list[dict]:
    """Part 1 (one config per model shape) and Sandblaster (one per replica count and seed)."""
    out = []
    if "speedup" in s["parts"]:
        out += [{"part": "speedup", "method": "model_parallel", "shape": sh, "machines": s[f"{sh}_machines"],
                 "draws": s["draws"], "seed": s["seeds"][0]} for sh in SHAPES]
    if "train" in s["parts"]:
        keys = ("data", "model", "batch_size", "lbfgs_batch", "portions", "iterations", "timing", "time_spread",
                "vector_op_time", "train_examples")
        out += [{"part": "train", "method": "sandblaster", **{k: s[k] for k in keys}, "workers": r, "seed": seed}
                for r in s["sandblaster_replicas"] for seed in s["seeds"]]
    return out


def check(s: dict, given: set) -> dict:
    if "train_examples" in given and s["train_examples"] and s["train_examples"] < s["batch_size"]:
        raise UsageError(f"--train-examples {s['train_examples']} is smaller than --batch-size {s['batch_size']}.")
    for r in s["sandblaster_replicas"]:
        if "train" in s["parts"] and not r <= s["portions"] <= s["lbfgs_batch"]:
            raise UsageError(f"Sandblaster needs replicas <= portions <= lbfgs batch, got {r}, {s['portions']}, "
                             f"{s['lbfgs_batch']}; change --sandblaster-replicas, --portions or --lbfgs-batch.")
    if not s["fail_at"] < s["return_at"]:
        raise UsageError(f"--return-at {s['return_at']:g} must be after --fail-at {s['fail_at']:g}.")
    return s


def make_configs(ctx) -> list[dict]:
    s = ctx.settings
    if "staleness" in s["parts"]:
        from experiments.ad_psgd import model_bytes

        shape = tuple(ctx.data.image_shape) if ctx.data is not None else (28, 28, 1)
        params = model_bytes(s["model"], shape) // 4
        if max(s["shard_counts"]) > params:
            raise UsageError(f"--shard-counts {max(s['shard_counts'])} is more than the model's {params} parameters.")
    if ctx.data is not None and "train" in s["parts"] and s["lbfgs_batch"] > _num_train(s, ctx.data):
        raise UsageError(f"--lbfgs-batch {s['lbfgs_batch']} is larger than the training set "
                         f"({_num_train(s, ctx.data)} examples); lower it.")
    return trainer_configs(s, ctx.data) + other_configs(s)


def load(ctx):
    """The data, cut to its first ``train_examples`` training examples when that is set."""
    from asgd_jax.data import Dataset

    data = study.load_training_data(ctx)
    n = ctx.settings["train_examples"]
    if not n or n >= data.num_train:
        return data
    return Dataset(data.x_train[:n], data.y_train[:n], data.x_test, data.y_test, num_classes=data.num_classes,
                   name=f"{data.name} (first {n} training examples)")


# --- units: the Trainer's chunks, Sandblaster runs, speed-up curves -----------------------------------------


def _speedup_unit(config: dict):
    def run(_bar):
        import jax

        from asgd_jax import model_parallel as mp

        shape = mp.speech_model() if config["shape"] == "speech" else mp.image_model()
        keys = jax.random.split(jax.random.key(config["seed"]), config["draws"])
        expected, mean, std = [], [], []
        for p in config["machines"]:
            expected.append(float(mp.speedup(shape, p)))
            draws = np.asarray(jax.vmap(lambda k, p=p: mp.speedup(shape, p, key=k))(keys))
            mean.append(float(draws.mean()))
            std.append(float(draws.std()))
        from asgd_jax.sweep import config_id

        return [{"config_id": config_id({k: v for k, v in config.items() if k not in ("method", "part")}),
                 **config, "speedup": expected, "sampled_mean": mean, "sampled_std": std, "test_accuracy": None}]

    return run


def _sandblaster_unit(config: dict, data):
    def run(_bar):
        import jax

        from asgd_jax.sandblaster import make_sandblaster_train
        from asgd_jax.sweep import config_id

        c = config
        train = make_sandblaster_train(c["model"], data, batch_size=c["lbfgs_batch"], portions=c["portions"],
                                       replicas=c["workers"], iterations=c["iterations"], timing=c["timing"])
        scale = c["lbfgs_batch"] / c["batch_size"]  # one whole L-BFGS batch, in SGD gradient times
        hp = {"time_mean": scale, "time_spread": c["time_spread"] * scale, "vector_op_time": c["vector_op_time"]}
        m = jax.tree.map(np.asarray, jax.jit(train)(jax.random.key(c["seed"]), hp))
        fin = lambda v: float(v) if np.isfinite(v) else None
        acc = [fin(v) for v in m["test_accuracy"]]
        return [{"config_id": config_id({k: v for k, v in c.items() if k not in ("method", "part")}), **c,
                 "test_accuracy": acc[-1], "test_accuracy_per_epoch": acc,
                 "sim_time_per_epoch": [fin(v) for v in m["sim_time"]],
                 "examples_per_epoch": [int(v) for v in m["examples"]], "backups": int(m["backups"].sum()),
                 "diverged": bool(m["diverged"][-1])}]

    return run


def plan(ctx, configs: list[dict]) -> list[study.Unit]:
    trained = [c for c in configs if "system" in c]
    units = study.training_plan(ctx, trained) if trained else []
    for c in configs:
        if c["method"] == "model_parallel":
            units.append(study.Unit([c], _speedup_unit(c), f"speed-up {c['shape']}"))
        elif c["method"] == "sandblaster":
            units.append(study.Unit([c], _sandblaster_unit(c, ctx.data), f"Sandblaster {c['workers']} replicas"))
    return units


# --- analysis ----------------------------------------------------------------------------------------------


def time_to(acc, time, target: float) -> float | None:
    """The simulated time of the first evaluation at or above ``target`` (None: never)."""
    for a, t in zip(acc, time):
        if a is not None and t is not None and a >= target:
            return t
    return None


def summarize_training(records: list[dict], target: float) -> dict:
    """Per (machines, method) of part 2: the best learning rate's curves, final accuracy and time to target."""
    rs = [r for r in records if r["part"] == "train"]
    best = async_results.best_settings(rs, lambda r: r["workers"], lambda r: (r.get("learning_rate", 0.0),))
    for b in best.values():
        b["to_target"] = time_to(b["acc"], b["time"], target)
    return best


def speedup_verdicts(records: list[dict]) -> tuple[list[dict], dict]:
    curves_ = {r["shape"]: r for r in records if r["part"] == "speedup"}
    checks = []
    sp = curves_.get("speech")
    if sp is not None:
        k = int(np.argmax(sp["speedup"]))
        peak_p, peak = sp["machines"][k], sp["speedup"][k]
        slows = sp["speedup"][-1] < peak
        checks.append(dict(claim="the speech model peaks at a few machines (paper: 2.2x at 8) and slows beyond",
                           text=f"peak {peak:.2f}x at {peak_p} machines; {sp['speedup'][-1]:.2f}x at "
                                f"{sp['machines'][-1]}", ok=2 <= peak_p <= 16 and 1.5 <= peak <= 3.5 and slows))
    im = curves_.get("image")
    if im is not None:
        ms, s = im["machines"], im["speedup"]
        upto = [i for i, p in enumerate(ms) if p <= 81]
        at = upto[-1] if upto else 0
        rising = all(b >= a for a, b in zip(s[: at + 1], s[1: at + 1]))
        checks.append(dict(claim="the image model keeps gaining (paper: more than 12x at 81 machines)",
                           text=f"{s[at]:.2f}x at {ms[at]} machines (sampled {im['sampled_mean'][at]:.2f} ± "
                                f"{im['sampled_std'][at]:.2f}); rising up to there: {'yes' if rising else 'no'}",
                           ok=(s[at] >= 12 if ms[at] == 81 else None) if rising else False))
    return checks, curves_


def training_verdicts(best: dict, target: float) -> list[dict]:
    def t(m, r):
        return best.get((r, m), {}).get("to_target")

    out = []
    single = t("single", 1)
    others = [(m, r, t(m, r)) for (r, m) in best if m != "single" and t(m, r) is not None]
    if others:
        faster = [x for x in others if single is None or x[2] < single]
        out.append(dict(claim=f"single-replica SGD is the slowest to reach {target:g}",
                        text=f"single {curves.fmt_value(single)}; {len(faster)} of {len(others)} other runs "
                             "that reach it are faster", ok=len(faster) == len(others)))
    rs = sorted({r for (r, m) in best if m == "downpour_adagrad"})
    pairs = [(r, t("downpour_adagrad", r), t("downpour_sgd", r)) for r in rs if (r, "downpour_sgd") in best]
    if pairs:
        ok = all(a is not None and (b is None or a <= b) for _, a, b in pairs)
        out.append(dict(claim="Adagrad makes Downpour faster to the target",
                        text="; ".join(f"{r} replicas: Adagrad {curves.fmt_value(a)} vs SGD {curves.fmt_value(b)}"
                                       for r, a, b in pairs), ok=ok))
    sb = sorted((r, t("sandblaster", r)) for (r, m) in best if m == "sandblaster")
    if sb and rs:
        dp_r = max(rs)
        dp = t("downpour_adagrad", dp_r)
        small_r, small = sb[0]
        ok = dp is not None and (small is None or dp <= small)
        out.append(dict(claim="at modest scale Downpour + Adagrad is the best trade-off (faster than Sandblaster "
                              "with more machines)",
                        text=f"Downpour + Adagrad with {dp_r} machines: {curves.fmt_value(dp)}; Sandblaster with "
                             f"{small_r}: {curves.fmt_value(small)}", ok=ok))
        big_r, big = sb[-1]
        catches = big is not None and dp is not None and big <= 1.5 * dp
        reached = max((x for x in best[(big_r, "sandblaster")]["acc"] if x is not None), default=None)
        out.append(dict(claim="Sandblaster catches up only with many more machines (its time to the target within "
                              "1.5x of Downpour + Adagrad's)",
                        text=f"Sandblaster with {big_r} machines: {curves.fmt_value(big)} (with {small_r}: "
                             f"{curves.fmt_value(small)}; best accuracy reached {async_results.fmt_acc(reached)}); "
                             f"Downpour + Adagrad with {dp_r}: {curves.fmt_value(dp)}"
                             + ("" if big is not None else "; more machines shorten Sandblaster's iterations, not "
                                "the number it needs"), ok=None if dp is None else catches))
    return out


def staleness_rows(records: list[dict]) -> list[dict]:
    rows = []
    for r in records:
        if r["part"] == "staleness" and r.get("shard_staleness"):
            st = [v for v in r["shard_staleness"] if v is not None]
            rows.append(dict(shards=r.get("shards", 1), latency=r["shard_latency"], mean=float(np.mean(st)),
                             lo=float(min(st)), hi=float(max(st)), acc=r["test_accuracy"], per_shard=st))
    return sorted(rows, key=lambda x: (x["latency"], x["shards"]))


def failure_rows(records: list[dict], best: dict, s: dict) -> list[dict]:
    """Per method of part 4: the best lr's final accuracy and end time, against the same method without failure."""
    fail = [r for r in records if r["part"] == "failure"]
    fb = async_results.best_settings(fail, lambda r: r["workers"], lambda r: (r["learning_rate"],))
    rows = []
    for (n, m), b in sorted(fb.items(), key=lambda kv: METHODS.index(kv[0][1])):
        ref = best.get((n, m))
        r0 = next(r for r in fail if r["method"] == m)
        end, ref_end = b["time"][-1], (ref["time"][-1] if ref else None)
        rows.append(dict(method=m, replicas=n, lr=b["setting"][0], final=b["final"], end=end,
                         ref_final=ref["final"] if ref else None, ref_end=ref_end,
                         lost=None if end is None or ref_end is None else end - ref_end,
                         down=r0["return_at"] - r0["fail_at"], fail_at=r0["fail_at"], return_at=r0["return_at"],
                         acc=b["acc"], time=b["time"], ref_acc=ref["acc"] if ref else None,
                         ref_time=ref["time"] if ref else None))
    return rows


def failure_verdict(rows: list[dict]) -> list[dict]:
    by = {r["method"]: r for r in rows}
    dp, ss = by.get("downpour_adagrad"), by.get("ssgd")
    if dp is None or ss is None or dp["lost"] is None or ss["lost"] is None:
        return []
    share = dp["down"] / dp["replicas"]  # what Downpour loses if the others go on at full speed
    ok = dp["lost"] <= 1.5 * share and ss["lost"] >= 0.9 * ss["down"]
    return [dict(claim="when a replica fails Downpour keeps training (it loses about the failed replica's share, "
                       "down time / replicas); synchronous SGD stalls until it returns (it loses the whole down time)",
                 text=f"replica 0 of {dp['replicas']} down for {dp['down']:.1f} time units (share "
                      f"{share:.1f}); the run ends {dp['lost']:.1f} later for Downpour + Adagrad, {ss['lost']:.1f} "
                      "later for SSGD", ok=ok)]


# --- report and figures ------------------------------------------------------------------------------------


def _verdict_lines(checks: list[dict]) -> list[str]:
    lines = []
    for c in checks:
        v = "not tested" if c["ok"] is None else "agrees" if c["ok"] else "does not agree"
        lines.append(f"- **{v}**: {c['claim']}: {c['text']}.")
    return lines or ["- (not run)"]


def report(ctx, records: list[dict]) -> tuple[str, list[str]]:
    s = ctx.settings
    target = s["target"]
    sp_checks, sp = speedup_verdicts(records)
    best = summarize_training(records, target)
    tr_checks = training_verdicts(best, target)
    st_rows = staleness_rows(records)
    fr = failure_rows(records, best, s)
    fr_checks = failure_verdict(fr)
    n = _num_train(s, ctx.data)
    lines = [f"# Dean et al. 2012 (DistBelief) — {s['model']} on {ctx.data.name}", "",
             f"{n} training examples, batch {s['batch_size']} per gradient (one time unit), {s['epochs']} epochs of "
             f"{n // s['batch_size']} gradients per SGD config; {study.timing_text(s)}; seeds {s['seeds']}.", "",
             "## 1. Model parallelism in time (Figure 3)", ""]
    if sp:
        rows = []
        for sh in SHAPES:
            r = sp.get(sh)
            if r is not None:
                rows += [[sh, p, f"{e:.2f}", f"{m:.2f} ± {d:.2f}"]
                         for p, e, m, d in zip(r["machines"], r["speedup"], r["sampled_mean"], r["sampled_std"])]
        lines += [curves.markdown_table(["model", "machines", "speed-up (expected)",
                                         f"sampled (mean ± std of {s['draws']})"], rows), ""]
    lines += _verdict_lines(sp_checks) + ["", f"## 2. Accuracy against time; time to {target:g} (Figures 4-5)", ""]
    rows = []
    for (r, m), b in sorted(best.items(), key=lambda kv: (METHODS.index(kv[0][1]), kv[0][0])):
        lr = "" if m == "sandblaster" else f"{b['setting'][0]:g}"
        rows.append([LABELS[m], r, lr, async_results.fmt_acc(b["final"]), curves.fmt_value(b["time"][-1]),
                     curves.fmt_value(b["to_target"]), "yes" if b["diverged"] else ""])
    lines += [curves.markdown_table(["method", "machines", "best lr", "final accuracy", "sim. time at end",
                                     f"time to {target:g}", "diverged"], rows), ""]
    lines += _verdict_lines(tr_checks)
    lines += ["", "## 3. Per-shard staleness (Downpour's sharded server)", "",
              f"Downpour + Adagrad, {s['staleness_replicas']} replicas, learning rate "
              f"{s['adagrad_learning_rates'][len(s['adagrad_learning_rates']) // 2]:g} (the middle of its grid); "
              f"a whole-model message takes "
              f"{s['message_time']:g} on a shard's link (each shard moves its slice only); shard latencies spread "
              "evenly over [0, L]. Mean staleness of the pushes each shard applied.", ""]
    rows = [[x["shards"], f"{x['latency']:g}", f"{x['mean']:.2f}", f"{x['lo']:.2f} – {x['hi']:.2f}",
             async_results.fmt_acc(x["acc"])] for x in st_rows]
    lines += [curves.markdown_table(["shards S", "latency spread L", "mean staleness", "min – max over shards",
                                     "final accuracy"], rows) if rows else "(not run)", ""]
    if st_rows:
        lines.append("The paper states that shards apply updates independently, so they see different numbers and "
                     "orders of updates; it gives no staleness figures to compare with.")
    lines += ["", "## 4. A replica failing mid-run", ""]
    rows = [[LABELS[x["method"]], x["replicas"], f"{x['lr']:g}", async_results.fmt_acc(x["final"]),
             async_results.fmt_acc(x["ref_final"]), curves.fmt_value(x["end"]), curves.fmt_value(x["ref_end"])]
            for x in fr]
    if fr:
        lines += [f"Replica 0 is down from {fr[0]['fail_at']:.1f} to {fr[0]['return_at']:.1f}.", "",
                  curves.markdown_table(["method", "replicas", "best lr", "final accuracy", "without failure",
                                         "sim. time at end", "without failure"], rows), ""]
    lines += _verdict_lines(fr_checks)
    lines += ["", "Caveats: one data set far smaller than the paper's speech and image tasks; one machine per replica "
              "in parts 2-4; simulated time comes from the library's compute-time and link models, not a cluster."]
    all_checks = sp_checks + tr_checks + fr_checks
    summary = [f"{'agrees' if c['ok'] else 'not tested' if c['ok'] is None else 'does not agree'}: {c['claim']}"
               for c in all_checks]
    plot(ctx, sp, best, st_rows, fr)
    return "\n".join(lines) + "\n", summary


def plot(ctx, sp: dict, best: dict, st_rows: list[dict], fr: list[dict]) -> None:
    s = ctx.settings
    title = f"{s['model']} on {ctx.data.name}"
    if sp:
        panels = {SHAPE_LABELS[sh]: [dict(label="expected", x=sp[sh]["machines"], y=sp[sh]["speedup"]),
                                     dict(label=f"sampled mean ({s['draws']} draws)", x=sp[sh]["machines"],
                                          y=sp[sh]["sampled_mean"], ls="--")] for sh in SHAPES if sh in sp}
        plots.curve_panels(panels, ctx.figure("model_parallel.png"), xlabel="machines per replica",
                           ylabel="speed-up of one step", title="Model parallelism in time (Dean et al. Figure 3)")
    if best:
        panels = {}
        for (r, m), b in sorted(best.items(), key=lambda kv: (kv[0][0], METHODS.index(kv[0][1]))):
            key = "Sandblaster L-BFGS" if m == "sandblaster" else f"{r} replicas"
            if m == "single":
                continue
            panels.setdefault(key, []).append(dict(label=f"{LABELS[m]}" + (f" ({r})" if m == "sandblaster" else ""),
                                                   x=b["time"], y=b["acc"], **STYLE[m]))
        one = best.get((1, "single"))
        if one is not None:
            for series in panels.values():
                series.insert(0, dict(label=LABELS["single"], x=one["time"], y=one["acc"], **STYLE["single"]))
        plots.accuracy_panels(panels, ctx.figure("accuracy_vs_time.png"), xlabel="simulated time (log)", logx=True,
                              title=title + ": test accuracy (best lr) against simulated time")
        series = []
        for m in METHODS:
            pts = sorted((r, b["to_target"]) for (r, mm), b in best.items() if mm == m)
            if pts:
                series.append(dict(label=LABELS[m], x=[p for p, _ in pts], y=[v for _, v in pts], **STYLE[m]))
        plots.curve_panels({f"time to {s['target']:g} test accuracy": series}, ctx.figure("time_to_accuracy.png"),
                           xlabel="machines (replicas)", ylabel="simulated time (log)", logy=True, title=title)
    if st_rows:
        groups = [f"S={x}" for x in dict.fromkeys(r["shards"] for r in st_rows)]
        lats = [f"L={x:g}" for x in dict.fromkeys(r["latency"] for r in st_rows)]
        values = {(f"S={r['shards']}", f"L={r['latency']:g}"): r["mean"] for r in st_rows}
        plots.grouped_bars(groups, lats, values, ctx.figure("staleness.png"), ylabel="mean staleness over shards",
                           title=title + ": Downpour's per-shard staleness", value_fmt="{:.2f}")
    if fr:
        series = []
        for x in fr:
            st = STYLE[x["method"]]
            series.append(dict(label=f"{LABELS[x['method']]}, replica 0 fails", x=x["time"], y=x["acc"], **st))
            if x["ref_acc"]:
                series.append(dict(label=f"{LABELS[x['method']]}, no failure", x=x["ref_time"], y=x["ref_acc"],
                                   color=st["color"], ls=":"))
        name = f"{fr[0]['replicas']} replicas"
        plots.accuracy_panels({name: series}, ctx.figure("failure.png"), xlabel="simulated time",
                              vlines={name: [fr[0]["fail_at"], fr[0]["return_at"]]},
                              title=title + ": a replica down between the dotted lines")


def head(ctx) -> str:
    return study.training_head(ctx)


STUDY = study.Study(
    name=NAME, help=HELP, doc=__doc__, presets=PRESETS, options=OPTIONS, configs=make_configs, plan=plan,
    finish=report, check=check, load=load, head=head, label_fields=("method", "part"),
    record_fields=("test_accuracy",),
)
