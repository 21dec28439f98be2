"""AD-PSGD (Lian et al. 2018) against AllReduce-SGD, parameter-server SSGD and ASGD, and D-PSGD, on a network.

Lian, Zhang, Zhang and Liu ("Asynchronous decentralized parallel stochastic
gradient descent", ICML 2018) claim that AD-PSGD

1. converges per epoch about as well as AllReduce-SGD;
2. runs each epoch several times faster than the synchronous methods when one
   worker is slow (a heterogeneous environment) or the network is congested;
3. while a parameter server suffers when its link congests.

Every method trains :class:`asgd_jax.Trainer` with ``system="async"`` and
``network=True`` (communication costs simulated time, :mod:`asgd_jax.network`),
SGD with momentum 0.9 (``--momentum``) on every worker or server, the same
learning-rate grid for each:

- ``allreduce``: AllReduce-SGD (``server_rule="allreduce"``): every round waits
  for the slowest worker, then a ring all-reduce of the ``n`` gradients;
- ``ssgd``: SSGD through a parameter server (``"sync"``): the server sends the
  model to each worker in turn, then receives the gradients one at a time;
- ``asgd``: ASGD through a parameter server (``"async"``): every gradient is a
  pull and a push on the server's link;
- ``dpsgd``: D-PSGD (``"d-psgd"``), synchronous gossip on a ring;
- ``adpsgd``: AD-PSGD (``"ad-psgd"``), pairwise averaging with the bipartite
  exponential graph's peers.

The decentralized methods keep one model per worker; their accuracy is that of
the average model (``worker0_accuracy`` and ``consensus_distance`` are recorded
too). Scenarios (``--scenarios``), each a set of traced hyperparameters, so all
scenarios and learning rates of one method are one vmapped program:

- ``homogeneous``: every worker's compute time ``Normal(1, s²)``
  (``--time-spread``, default 0.1); every link, the server's included, has the
  bandwidth ``bandwidth = model bytes / message_time`` (``--message-time``,
  default 0.05: one model message takes 5 % of a gradient's compute time) and
  the latency ``--latency`` (default 0.001);
- ``slow2``, ``slow4``, ``slow16``: one worker (``straggler_fraction = 1/n``)
  2, 4 or 16 times slower (``straggler_slowdown``);
- ``congested``: the server's link ``n`` times slower than a worker's
  (``server_bandwidth = bandwidth / n``, as if its link were shared by the
  ``n`` workers); the worker links as in ``homogeneous``.

The model's size is the real one (the bytes of the initialized parameters). An
epoch is ``num_train // batch_size`` gradients for every method, so methods
compare per epoch at equal gradients, and in simulated time (units of a
gradient's mean compute time).

Writes to ``--out`` (default ``runs/ad_psgd-<preset>``): ``results.jsonl``,
``accuracy.png`` (best learning rate per method and scenario: test accuracy
against epochs and against simulated time), ``time_per_epoch.png`` (simulated
time per epoch per method and scenario), ``consensus.png`` (D-PSGD's and
AD-PSGD's distance to consensus per epoch) and ``report.md`` (a table per
scenario and method; the three claims, each with a verdict computed from the
numbers: ``--tolerance`` for "close", ``--speedup`` for "several times").
Rerunning the same command skips finished configs.

Presets: ``tiny`` (a smoke test: an MLP on ``digits``, 4 workers, 1 epoch),
``quick`` (LeNet-5 on ``digits``, 8 workers), ``medium`` (LeNet-5 on real
Fashion-MNIST, 16 workers, 3 learning rates, 4 epochs; 15 to 25 minutes on a 2-core CPU) and ``paper``
(ResNet-20 on ``tfds:cifar10``, 16 workers, ``--workers`` up to 128; a GPU run).
"""

from __future__ import annotations

import numpy as np

from experiments import async_results, curves, plots, study

NAME = "ad_psgd"
HELP = ("Lian et al. (AD-PSGD): AllReduce / PS SSGD / PS ASGD / D-PSGD / AD-PSGD with a slow worker or a "
        "congested server link, time per epoch and accuracy")

METHODS = ("allreduce", "ssgd", "asgd", "dpsgd", "adpsgd")
LABELS = {"allreduce": "AllReduce-SGD", "ssgd": "SSGD (server)", "asgd": "ASGD (server)",
          "dpsgd": "D-PSGD (ring)", "adpsgd": "AD-PSGD"}
# server_rule and topology of each method (None: the rule has no topology)
SYSTEMS = {"allreduce": ("allreduce", None), "ssgd": ("sync", None), "asgd": ("async", None),
           "dpsgd": ("d-psgd", "ring"), "adpsgd": ("ad-psgd", "exponential")}
STYLE = {"allreduce": dict(color="tab:gray", ls="--"), "ssgd": dict(color="tab:blue", ls=":"),
         "asgd": dict(color="tab:orange", ls=":"), "dpsgd": dict(color="tab:green", ls="-"),
         "adpsgd": dict(color="tab:red", ls="-")}
SCENARIOS = ("homogeneous", "slow2", "slow4", "slow16", "congested")
SLOWDOWNS = {"slow2": 2.0, "slow4": 4.0, "slow16": 16.0}
MODELS = ("lenet5", "mlp", "resnet20")
FASHION = "idx:/usr/share/datasets/fashion-mnist"

_COMMON = dict(methods=list(METHODS), scenarios=list(SCENARIOS), momentum=0.9, timing="normal", time_spread=0.1,
               message_time=0.05, latency=0.001, tolerance=0.02, speedup=2.0, seeds=[0])
PRESETS = {
    # A smoke test: an MLP, 4 workers, one epoch, one learning rate (25 configs in 5 programs).
    "tiny": dict(_COMMON, data="digits", model="mlp", workers=4, learning_rates=[0.05], batch_size=32, epochs=1),
    # LeNet-5 on the bundled digits, 8 workers: 5 methods x 5 scenarios x 3 learning rates = 75 configs.
    "quick": dict(_COMMON, data="digits", model="lenet5", workers=8, learning_rates=[0.02, 0.05, 0.1],
                  batch_size=16, epochs=6),
    # LeNet-5 on real Fashion-MNIST, 16 workers: 75 configs of 4 epochs. Measured on the 2-core CPU when idle:
    # an epoch of a config costs about 1.8 s (AllReduce-SGD) to 4.2 s (AD-PSGD), so about 15 minutes in all;
    # on the same CPU shared with other work (load 4) the whole run took about 25 minutes. lr 0.3 is left
    # out: AllReduce-SGD diverged there.
    "medium": dict(_COMMON, data=FASHION, model="lenet5", workers=16, learning_rates=[0.01, 0.03, 0.1],
                   batch_size=64, epochs=4),
    # ResNet-20 (GroupNorm, see asgd_jax.ResNet20) on CIFAR-10, 16 workers with batch 128 each, 4 learning
    # rates x 5 scenarios x 5 methods = 100 configs of 60 epochs: a GPU run.
    "paper": dict(_COMMON, data="tfds:cifar10", model="resnet20", workers=16,
                  learning_rates=[0.01, 0.03, 0.1, 0.3], batch_size=128, epochs=60),
}

OPTIONS = (
    *study.TRAINING,
    study.Option("model", str, choices=MODELS, help="lenet5, mlp or resnet20"),
    study.Option("methods", str, many=True, choices=METHODS, help="comma-separated subset of " + ",".join(METHODS)),
    study.Option("scenarios", str, many=True, choices=SCENARIOS,
                 help="comma-separated subset of " + ",".join(SCENARIOS)),
    study.Option("workers", int, low=2, high=128,
                 help="workers n (2 to 128; even for AD-PSGD's bipartite exponential peers)"),
    study.Option("learning_rates", float, many=True, above=0, help="comma-separated, the same grid for every method"),
    study.Option("batch_size", int, low=1),
    study.EPOCHS,
    study.momentum_option(help="SGD momentum of every worker and server (default 0.9)"),
    *study.timing_options("std of normal / sigma of lognormal / half-width of uniform, relative to the mean "
                          "(default 0.1)"),
    study.Option("message_time", float, above=0,
                 help="time of one model message on a worker's link, in gradient compute times (default 0.05): "
                 "bandwidth = model bytes / message time"),
    study.Option("latency", float, low=0, help="every link's latency, in gradient compute times (default 0.001)"),
    study.Option("tolerance", float, low=0, high=1,
                 help="claim 1: AD-PSGD's final accuracy within this of AllReduce's (default 0.02)"),
    study.Option("speedup", float, above=1,
                 help="claims 2 and 3: the factor that counts as 'several times' (default 2)"),
    study.SEEDS,
)


def model_bytes(model: str, image_shape=(28, 28, 1), num_classes: int = 10) -> int:
    """Bytes of the model's parameters as :class:`asgd_jax.Trainer` initializes them (shapes only, no compute)."""
    import jax
    import jax.numpy as jnp

    from asgd_jax import make_model
    from asgd_jax.network import tree_bytes

    net = make_model(model, num_classes)
    shapes = jax.eval_shape(lambda: net.init(jax.random.key(0), jnp.zeros((1, *image_shape), jnp.float32)))
    return tree_bytes(shapes["params"])


def links(settings: dict, data=None) -> dict:
    """The model's bytes and the worker links' bandwidth (bytes per time unit) and latency for ``settings``.

    Without ``data`` (the checks before anything is read) a 28x28 grey image stands for the input."""
    shape = tuple(data.image_shape) if data is not None else (28, 28, 1)
    classes = int(data.num_classes) if data is not None else 10
    size = model_bytes(settings["model"], shape, classes)
    return {"model_bytes": size, "bandwidth": size / settings["message_time"], "latency": settings["latency"]}


def scenario_hparams(name: str, n: int, bandwidth: float, latency: float) -> dict:
    """The traced hyperparameters of scenario ``name`` with ``n`` workers (see the module docstring)."""
    out = {"straggler_fraction": 0.0, "straggler_slowdown": 1.0, "latency": latency, "bandwidth": bandwidth,
           "server_bandwidth": bandwidth}
    if name in SLOWDOWNS:
        out.update(straggler_fraction=1.0 / n, straggler_slowdown=SLOWDOWNS[name])
    elif name == "congested":
        out["server_bandwidth"] = bandwidth / n
    elif name != "homogeneous":
        raise ValueError(f"unknown scenario {name!r}; choose one of {SCENARIOS}.")
    return out


def make_configs(ctx) -> list[dict]:
    s = ctx.settings
    n = s["workers"]
    net = links(s, ctx.data)
    base = {"data": s["data"], "model": s["model"], "optimizer": "sgd", "momentum": s["momentum"],
            "epochs": s["epochs"], "batch_size": s["batch_size"], "system": "async", "workers": n, "max_workers": n,
            "timing": s["timing"], "time_spread": s["time_spread"], "network": True, "seed": s["seeds"],
            "learning_rate": s["learning_rates"]}
    configs = []
    for m in METHODS:
        if m not in s["methods"]:
            continue
        rule, topology = SYSTEMS[m]
        system = {"server_rule": rule, **({"topology": topology} if topology else {})}
        for sc in SCENARIOS:
            if sc in s["scenarios"]:
                grid = {**base, **system, **scenario_hparams(sc, n, net["bandwidth"], net["latency"])}
                configs += [{**c, "scenario": sc}
                            for c in study.training_configs([(m, grid)], ctx.data and ctx.data.num_train)]
    return configs


# --- analysis ----------------------------------------------------------------------------------------------


def _per_epoch(values, epochs: int) -> float | None:
    """The mean per epoch of a cumulative per-epoch series (its last value / epochs)."""
    return None if not values or values[-1] is None else values[-1] / epochs


def summarize(records: list[dict], epochs: int) -> dict:
    """Per (scenario, method): the best learning rate (mean final accuracy over seeds), its curves and costs."""
    best = async_results.best_settings(records, lambda r: r["scenario"], lambda r: (r["learning_rate"],))
    out = {}
    for (sc, m), b in best.items():
        rs = [r for r in records if r["scenario"] == sc and r["method"] == m and (r["learning_rate"],) == b["setting"]]
        mean = lambda key: (async_results.mean_list([r[key] for r in rs]) if all(r.get(key) for r in rs)
                            else [None] * epochs)
        time = b["time"]
        out[(sc, m)] = {
            **b, "lr": b["setting"][0], "time_per_epoch": _per_epoch(time, epochs),
            "bytes_per_epoch": _per_epoch(mean("bytes_sent_per_epoch"), epochs),
            "steps_per_epoch": _per_epoch(mean("server_steps_per_epoch"), epochs),
            "consensus": mean("consensus_distance_per_epoch"), "worker0": mean("worker0_accuracy_per_epoch"),
        }
    return out


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b not in (None, 0) else None


def claims(best: dict, tolerance: float, speedup: float) -> list[dict]:
    """The paper's three claims, each with the numbers it rests on and a verdict computed from them.

    Each claim is a dict with ``claim`` (the paper's words), ``checks`` (lines of evidence, each
    ``(text, passed)``; passed None: not measurable here) and ``verdict``: ``"agrees"`` when every
    measurable check passes, ``"does not agree"`` when one fails, ``"not tested"`` when none is measurable.
    """
    def get(sc, m, key):
        b = best.get((sc, m))
        return None if b is None else b[key]

    def verdict(checks):
        known = [ok for _, ok in checks if ok is not None]
        return "not tested" if not known else "agrees" if all(known) else "does not agree"

    out = []
    # 1. Per-epoch convergence close to AllReduce-SGD's (the homogeneous scenario; the others for information).
    checks = []
    for sc in SCENARIOS:
        a, r = get(sc, "adpsgd", "final"), get(sc, "allreduce", "final")
        if a is None or r is None:
            continue
        gap = a - r
        ca, cr = get(sc, "adpsgd", "acc"), get(sc, "allreduce", "acc")
        gaps = [(abs(x - y), x - y, e) for e, (x, y) in enumerate(zip(ca, cr), 1) if x is not None and y is not None]
        text = f"{sc}: AD-PSGD {a:.4f} vs AllReduce-SGD {r:.4f} after {len(ca)} epoch(s), gap {gap:+.4f}"
        if len(gaps) > 1:
            _, worst, epoch = max(gaps)
            text += f" (largest gap over the epochs: {worst:+.4f} at epoch {epoch})"
        checks.append((text + ("" if sc == "homogeneous" else " [information]"),
                       abs(gap) <= tolerance if sc == "homogeneous" else None))
    if not any(ok is not None for _, ok in checks):
        checks.append(("needs the methods adpsgd and allreduce and the scenario homogeneous", None))
    out.append({"claim": f"AD-PSGD's per-epoch convergence is close to AllReduce-SGD's (final test accuracy at the "
                         f"best learning rate within {tolerance:g} of AllReduce-SGD's, homogeneous scenario)",
                "checks": checks, "verdict": verdict(checks)})
    # 2. Several times faster per epoch with a slow worker (against AllReduce-SGD and SSGD) and on a congested
    #    network (against SSGD; AllReduce-SGD has no server link, so congestion there is for information).
    checks = []
    for sc, baselines in (("slow16", ("allreduce", "ssgd")), ("congested", ("ssgd", "allreduce"))):
        for m in baselines:
            ratio = _ratio(get(sc, m, "time_per_epoch"), get(sc, "adpsgd", "time_per_epoch"))
            if ratio is None:
                continue
            informative = sc == "congested" and m == "allreduce"
            checks.append((f"{sc}: {LABELS[m]}'s time per epoch is {ratio:.2f}x AD-PSGD's"
                           + (" [information: the congested link is the server's, which AllReduce-SGD does not "
                              "use]" if informative else ""),
                           None if informative else ratio >= speedup))
    if not any(ok is not None for _, ok in checks):
        checks.append(("needs the method adpsgd, allreduce or ssgd, and the scenario slow16 or congested", None))
    out.append({"claim": f"each AD-PSGD epoch is several times (>= {speedup:g}x) faster with a slow worker "
                         "(slow16: than AllReduce-SGD and SSGD) and on a congested network (than SSGD)",
                "checks": checks, "verdict": verdict(checks)})
    # 3. A parameter server suffers when its link congests (and AD-PSGD does not).
    checks = []
    for m in ("ssgd", "asgd", "adpsgd"):
        ratio = _ratio(get("congested", m, "time_per_epoch"), get("homogeneous", m, "time_per_epoch"))
        if ratio is None:
            continue
        server = m != "adpsgd"
        checks.append((f"{LABELS[m]}: time per epoch congested / homogeneous = {ratio:.2f}"
                       + ("" if server else " [information: no server]"), ratio >= speedup if server else None))
    if not any(ok is not None for _, ok in checks):
        checks.append(("needs the method ssgd or asgd and the scenarios homogeneous and congested", None))
    out.append({"claim": f"a parameter server suffers when its link congests (SSGD's and ASGD's time per epoch "
                         f">= {speedup:g}x their homogeneous one)", "checks": checks, "verdict": verdict(checks)})
    return out


def _mb(v) -> str:
    return "–" if v is None else f"{v / 1e6:.3g}"


def report(ctx, best: dict, net: dict, verdicts: list[dict]) -> str:
    s = ctx.settings
    n, epochs = s["workers"], s["epochs"]
    methods = [m for m in METHODS if any((sc, m) in best for sc in SCENARIOS)]
    scenarios = [sc for sc in SCENARIOS if any((sc, m) in best for m in METHODS)]
    rows = []
    for sc in scenarios:
        ref = best.get((sc, "adpsgd"), {}).get("time_per_epoch")
        for m in methods:
            b = best.get((sc, m))
            if b is None:
                continue
            t = b["time_per_epoch"]
            w0 = b["worker0"][-1] if b["worker0"] and b["worker0"][-1] is not None else None
            rows.append([sc, LABELS[m], f"{b['lr']:g}", async_results.fmt_acc(b["final"]),
                         async_results.fmt_acc(w0) if m in ("dpsgd", "adpsgd") else "",
                         curves.fmt_value(t), curves.fmt_value(_ratio(t, ref)), _mb(b["bytes_per_epoch"]),
                         "yes" if b["diverged"] else ""])
    table = curves.markdown_table(["scenario", "method", "best lr", "final accuracy", "worker 0 accuracy",
                                   "sim. time / epoch", "× AD-PSGD's time", "MB sent / epoch", "diverged"], rows)
    steps = ctx.data.num_train // s["batch_size"]
    home = [(m, best[("homogeneous", m)]["bytes_per_epoch"]) for m in methods if ("homogeneous", m) in best]
    bytes_line = ""
    if home:
        size = net["model_bytes"]
        bytes_line = ("Bytes sent per epoch (homogeneous): " + "; ".join(
            f"{LABELS[m]} {_mb(v)} MB ({v / size:.0f} model messages, {v / size / steps:.2f} per gradient)"
            for m, v in home if v is not None) + ". The methods move about the same bytes per gradient; "
            "what differs is where they go: every parameter-server byte crosses the one server link, the "
            "decentralized and all-reduce bytes are spread over the workers' links.")
    lines = [
        f"# AD-PSGD on a simulated network — {s['model']} on {ctx.data.name}",
        "",
        f"{n} workers, {study.timing_text(s)}; SGD with momentum "
        f"{s['momentum']:g}, batch {s['batch_size']} per gradient, {epochs} epoch(s) of {steps} gradients; "
        f"learning rates {', '.join(f'{v:g}' for v in s['learning_rates'])} for every method; seeds {s['seeds']}. "
        f"The model has {net['model_bytes']:,} bytes of parameters; a worker's link moves it in "
        f"{s['message_time']:g} time units (bandwidth {net['bandwidth']:,.0f} bytes per time unit, latency "
        f"{s['latency']:g}); the server's link is as fast except in `congested` ({n}× slower). Scenarios: "
        "`slowK`: one worker K times slower. Per method and scenario, the learning rate with the best final test "
        "accuracy (mean over seeds); decentralized accuracies are the average model's. Simulated time is in mean "
        "gradient compute times.",
        "",
        table,
        "",
        bytes_line,
        "",
        "## The paper's claims (Lian et al. 2018), checked against these numbers",
        "",
    ]
    for i, c in enumerate(verdicts, 1):
        lines.append(f"{i}. **{c['verdict']}**: {c['claim']}.")
        lines += [f"   - {text}{'' if ok is None else ' — ' + ('yes' if ok else 'no')}" for text, ok in c["checks"]]
    grid = s["learning_rates"]
    edges = []
    for side, value in (("smallest", min(grid)), ("largest", max(grid))):
        at = [m for m in methods if len(grid) > 1 and any(best.get((sc, m), {}).get("lr") == value for sc in scenarios)]
        if at:
            edges.append(f"the {side} ({value:g}) for {', '.join(LABELS[m] for m in at)}")
    lines += ["", f"Caveats: {len(s['seeds'])} seed(s), {len(grid)} learning rate(s), {epochs} epoch(s); simulated "
              "time comes from the library's compute-time and link models, not from a measured cluster."
              + (f" The best learning rate is at an edge of the grid in some scenario: {'; '.join(edges)}; a wider "
                 "grid may change those methods' accuracies (not their times per epoch)." if edges else "")]
    return "\n".join(lines) + "\n"


def plot(ctx, best: dict) -> None:
    s = ctx.settings
    methods = [m for m in METHODS if any((sc, m) in best for sc in SCENARIOS)]
    scenarios = [sc for sc in SCENARIOS if any((sc, m) in best for m in METHODS)]
    title = f"{s['model']} on {ctx.data.name}, {s['workers']} workers"
    panels, xlabels, logx = {}, {}, []
    for sc in scenarios:
        by_epoch, by_time = [], []
        for m in methods:
            b = best.get((sc, m))
            if b is None:
                continue
            label = f"{LABELS[m]} (lr {b['lr']:g})"
            by_epoch.append(dict(label=label, x=list(range(1, len(b["acc"]) + 1)), y=b["acc"], **STYLE[m]))
            by_time.append(dict(label=label, x=b["time"], y=b["acc"], **STYLE[m]))
        panels[f"{sc}: against epochs"], panels[f"{sc}: against simulated time"] = by_epoch, by_time
        xlabels[f"{sc}: against epochs"], xlabels[f"{sc}: against simulated time"] = "epoch", "simulated time (log)"
        logx.append(f"{sc}: against simulated time")
    plots.accuracy_panels(panels, ctx.figure("accuracy.png"), xlabel=xlabels, logx=logx, cols=2,
                          title=title + ": test accuracy (best lr)")
    values = {(sc, m): best[(sc, m)]["time_per_epoch"] for sc in scenarios for m in methods if (sc, m) in best}
    plots.grouped_bars(scenarios, [LABELS[m] for m in methods], {(sc, LABELS[m]): v for (sc, m), v in values.items()},
                       ctx.figure("time_per_epoch.png"), ylabel="simulated time per epoch (log scale)",
                       title=title + ": simulated time per epoch", logy=True, value_fmt="{:.3g}", legend_outside=True,
                       colors={LABELS[m]: STYLE[m]["color"] for m in methods})
    cons = {}
    for sc in scenarios:
        cons[sc] = [dict(label=f"{LABELS[m]} (lr {best[(sc, m)]['lr']:g})",
                         x=list(range(1, len(best[(sc, m)]["consensus"]) + 1)), y=best[(sc, m)]["consensus"],
                         **STYLE[m]) for m in ("dpsgd", "adpsgd") if (sc, m) in best]
    plots.curve_panels(cons, ctx.figure("consensus.png"), xlabel="epoch",
                       ylabel="consensus distance (1/n) Σ‖x_i − x̄‖²", logy=True,
                       title=title + ": distance to consensus (decentralized methods, best lr)")


def finish(ctx, records) -> tuple[str, list[str]]:
    s = ctx.settings
    best = summarize(records, s["epochs"])
    net = links(s, ctx.data)
    verdicts = claims(best, s["tolerance"], s["speedup"])
    plot(ctx, best)
    lines = [f"claim {i}: {c['verdict']}" for i, c in enumerate(verdicts, 1)]
    return report(ctx, best, net, verdicts), lines


def check(s: dict, given: set) -> dict:
    from asgd_jax.train import default_loop

    if "loop" not in given and s["model"] == "resnet20" and default_loop(s["model"]) == "step":
        print("ad_psgd: ResNet-20 on a CPU: jitted steps driven from Python (--loop step), not lax.scan epochs")
    return s


STUDY = study.training_study(
    name=NAME, help=HELP, doc=__doc__, presets=PRESETS, options=OPTIONS, configs=make_configs, finish=finish,
    check=check, label_fields=("method", "scenario"),
    study_json=lambda ctx: {"links": links(ctx.settings, ctx.data)},
)
