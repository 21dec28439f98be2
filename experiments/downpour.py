"""Downpour SGD (Dean et al. 2012): SGD vs Adagrad on the server, warm start, gradual introduction, stragglers.

``n`` workers (``--workers``, default 8) train asynchronously against one
parameter server (the event-model simulator :func:`asgd_jax.asynchronous`, pure
assignment: a replica that pushed its gradient fetches the current parameters
and starts again). A fraction of them are stragglers (``--straggler-fraction``,
default 0.25, ``--straggler-slowdown`` times slower, default 4; the others have
normal compute times of mean 1 and spread 0.2). Methods:

- ``sgd`` / ``adagrad``: the server optimizer is plain SGD or Adagrad
  (per-parameter learning rates, which Dean et al. found made Downpour far more
  robust), all ``n`` workers from the start;
- ``+warm``: Downpour's warm start: one replica trains alone for ``W`` server
  steps (``--warm-epochs`` of gradients), then the other ``n - 1`` join at once
  (``initial_workers=1, add_workers=n-1, add_every=W``);
- ``+gradual``: gradual worker introduction: one replica, then one more every
  ``W / (n - 1)`` server steps (all ``n`` active after about ``W``);
- ``ssgd``: the synchronous reference with SGD: every round waits for the
  slowest worker (a straggler), averages the ``n`` gradients and steps.

**(choice)** Downpour's ``n_fetch``/``n_push`` are 1 (every gradient is pushed
and the replica fetches before its next one) and the parameters are one shard;
every gradient is computed on the next batch of the epoch's order (iid batches).
An epoch is the same number of gradients for every method; simulated time is in
mean gradient times of a fast worker.

For each method the learning rates are swept (SGD: ``--sgd-learning-rates``,
Adagrad: ``--adagrad-learning-rates``) and the best (highest final test
accuracy, mean over seeds) is reported. Writes to ``--out`` (default
``runs/downpour-<preset>``): ``results.jsonl``, ``accuracy_vs_epoch.png`` and
``accuracy_vs_time.png`` (best setting per method), ``best_per_method.png``
(best final accuracy and the spread over learning rates), ``report.md`` (the
tables, accuracy reached within a common simulated-time budget, and the
findings beside the paper's,
docs/methods.md#downpour-sgd-and-sandblaster-l-bfgs-dean-et-al-2012).
Rerunning the same command skips finished configs.

Presets: ``tiny`` (a smoke test, an MLP, seconds), ``quick`` (LeNet-5 on
``digits``, under 3 minutes on a 2-core CPU), ``medium`` (LeNet-5 on real
Fashion-MNIST, 3 epochs; 11.6 minutes measured on a busy 2-core CPU), ``paper`` (LeNet-5 on MNIST,
32 workers, 30 epochs; for a GPU).
"""

from __future__ import annotations

import numpy as np

from experiments import async_results, curves, plots, study

NAME = "downpour"
HELP = "Dean et al. (Downpour): SGD vs Adagrad server, warm start / gradual introduction, under stragglers"

OPTIMIZERS = ("sgd", "adagrad")
INTROS = ("none", "warm", "gradual")
COLORS = {"sgd": "tab:blue", "adagrad": "tab:red", "ssgd": "tab:gray"}
LINES = {"none": "-", "warm": "--", "gradual": ":"}

_COMMON = dict(optimizers=list(OPTIMIZERS), intros=list(INTROS), ssgd=True, straggler_fraction=0.25,
               straggler_slowdown=4.0, timing="normal", time_spread=0.2, momentum=0.0, seeds=[0])
PRESETS = {
    # A smoke test: an MLP, one learning rate per optimizer, 1 epoch.
    "tiny": dict(_COMMON, data="digits", model="mlp", workers=4, sgd_learning_rates=[0.1],
                 adagrad_learning_rates=[0.05], warm_epochs=0.5, batch_size=64, epochs=1),
    # Under 3 minutes on a 2-core CPU: LeNet-5 on the bundled digits.
    "quick": dict(_COMMON, data="digits", model="lenet5", workers=8, sgd_learning_rates=[0.02, 0.05, 0.1],
                  adagrad_learning_rates=[0.01, 0.03], warm_epochs=1.0, batch_size=32, epochs=8),
    # LeNet-5 on real Fashion-MNIST, 21 configs x 3 epochs: 11.6 minutes measured on the busy 2-core CPU.
    "medium": dict(_COMMON, data="idx:/usr/share/datasets/fashion-mnist", model="lenet5", workers=8,
                   sgd_learning_rates=[0.02, 0.05, 0.1], adagrad_learning_rates=[0.003, 0.01, 0.03],
                   warm_epochs=0.5, batch_size=64, epochs=3),
    # A larger system for a GPU: LeNet-5 on MNIST, 32 workers, 30 epochs.
    "paper": dict(_COMMON, data="tfds:mnist", model="lenet5", workers=32, sgd_learning_rates=[0.01, 0.03, 0.1],
                  adagrad_learning_rates=[0.003, 0.01, 0.03, 0.1], warm_epochs=2.0, batch_size=64, epochs=30),
}


OPTIONS = (
    *study.TRAINING,
    study.Option("model", str, choices=("lenet5", "mlp")),
    study.Option("workers", int, low=2, help="number of workers n >= 2 (Downpour needs several replicas)"),
    study.Option("optimizers", str, many=True, choices=OPTIMIZERS,
                 help="comma-separated subset of sgd,adagrad (the server optimizer)"),
    study.Option("intros", str, many=True, choices=INTROS, help="comma-separated subset of none,warm,gradual"),
    study.Option("ssgd", bool, store=False, flag="--no-ssgd", help="leave out the synchronous reference"),
    study.Option("sgd_learning_rates", float, many=True, above=0, help="comma-separated"),
    study.Option("adagrad_learning_rates", float, many=True, above=0, help="comma-separated"),
    study.Option("warm_epochs", float, above=0, help="warm start / introduction length W in epochs of gradients"),
    study.Option("straggler_fraction", float, low=0, high=1, help="fraction of the workers that are stragglers"),
    study.Option("straggler_slowdown", float, above=0, help="how many times slower a straggler is"),
    *study.timing_options("std of normal / sigma of lognormal / half-width of uniform (default 0.2)"),
    study.momentum_option(help="momentum of the SGD server (default 0)"),
    study.Option("batch_size", int, low=1),
    study.EPOCHS,
    study.SEEDS,
)


def intro_steps(s: dict, num_train: int | None) -> int:
    """``W``: the warm start's length in server steps (``warm_epochs`` epochs of gradients)."""
    steps_per_epoch = num_train // s["batch_size"] if num_train else 1
    return max(1, int(round(s["warm_epochs"] * steps_per_epoch)))


def intro_hparams(intro: str, workers: int, w: int) -> dict:
    """The introduction schedule of :func:`asgd_jax.asynchronous` for ``intro`` (``none``, ``warm``, ``gradual``).

    ``warm``: 1 worker for ``W`` server steps, then all; ``gradual``: 1 worker, one
    more every ``max(1, W // (n - 1))`` server steps.
    """
    if intro == "none":
        return {"initial_workers": 0}
    if intro == "warm":
        return {"initial_workers": 1, "add_workers": workers - 1, "add_every": w}
    return {"initial_workers": 1, "add_workers": 1, "add_every": max(1, w // (workers - 1))}


def make_configs(ctx) -> list[dict]:
    """Per server optimizer and introduction its learning rates, then SSGD (SGD) as the synchronous reference.

    Labels: the optimizer, with ``+warm`` / ``+gradual`` when workers are introduced over time; ``ssgd``.
    """
    s = ctx.settings
    num_train = ctx.data and ctx.data.num_train
    w = intro_steps(s, num_train)
    base = {
        "data": s["data"], "model": s["model"], "epochs": s["epochs"], "batch_size": s["batch_size"],
        "system": "async", "timing": s["timing"], "time_spread": s["time_spread"], "workers": s["workers"],
        "straggler_fraction": s["straggler_fraction"], "straggler_slowdown": s["straggler_slowdown"],
        "seed": s["seeds"],
    }
    grids = []
    for opt in s["optimizers"]:
        extra = {"momentum": s["momentum"]} if opt == "sgd" else {}
        for intro in s["intros"]:
            grids.append((opt + ("" if intro == "none" else f"+{intro}"),
                          {**base, "optimizer": opt, **extra, "learning_rate": s[f"{opt}_learning_rates"],
                           **intro_hparams(intro, s["workers"], w)}))
    if s["ssgd"]:
        grids.append(("ssgd", {**base, "optimizer": "sgd", "momentum": s["momentum"], "server_rule": "sync",
                               "learning_rate": s["sgd_learning_rates"]}))
    return study.training_configs(grids, num_train)


def methods_of(s: dict) -> list[str]:
    out = [opt + ("" if intro == "none" else f"+{intro}") for opt in s["optimizers"] for intro in s["intros"]]
    return out + (["ssgd"] if s["ssgd"] else [])


def _style(method: str) -> dict:
    opt, _, intro = method.partition("+")
    return dict(color=COLORS[opt], ls=LINES[intro or "none"] if opt != "ssgd" else "-.")


def accuracy_at(b: dict, t: float) -> float | None:
    """Accuracy of the last epoch that ended by simulated time ``t`` (None if none did)."""
    got = None
    for time_, acc in zip(b["time"], b["acc"]):
        if time_ is not None and time_ <= t + 1e-6:
            got = acc
    return got


def spread(b: dict) -> tuple[float | None, float | None]:
    """Worst and best mean final accuracy over the learning-rate grid (robustness to the learning rate)."""
    finals = [f for _, f in b["all"] if f is not None]
    return (min(finals), max(finals)) if finals else (None, None)


def report(s: dict, best: dict, methods: list[str], dataset_name: str, w: int) -> str:
    key = lambda m: ("all", m)
    table = async_results.best_table(best, ["all"], methods, lambda _: f"n = {s['workers']}", ["learning rate"],
                                     lambda m, st: [curves.fmt_value(st[0])])
    ends = [best[key(m)]["time"][-1] for m in methods if key(m) in best and best[key(m)]["time"]
            and best[key(m)]["time"][-1] is not None]
    budget = min(ends) if ends else None
    rows = []
    for m in methods:
        b = best.get(key(m))
        if b is None:
            continue
        lo, hi = spread(b)
        rows.append([m, async_results.fmt_acc(lo), async_results.fmt_acc(hi),
                     async_results.fmt_acc(accuracy_at(b, budget) if budget else None)])
    stragglers = int(np.floor(s["straggler_fraction"] * s["workers"] + 0.5))
    lines = [
        f"# Downpour SGD (Dean et al. 2012) — {s['model']} on {dataset_name}",
        "",
        f"n = {s['workers']} workers, {stragglers} of them stragglers ({s['straggler_slowdown']:g}× slower), "
        f"{study.timing_text(s)}; batch {s['batch_size']} per gradient, "
        f"{s['epochs']} epochs of gradients; warm start / introduction over W = {w} server steps "
        f"({s['warm_epochs']:g} epochs); SGD server momentum {s['momentum']:g}, learning rates "
        f"{', '.join(f'{v:g}' for v in s['sgd_learning_rates'])}; Adagrad learning rates "
        f"{', '.join(f'{v:g}' for v in s['adagrad_learning_rates'])}; seeds {s['seeds']}. Best learning rate per "
        "method (highest final test accuracy, mean over seeds).",
        "",
        table,
        "",
        f"Robustness to the learning rate, and accuracy within a common simulated-time budget (the earliest end "
        f"of any method, {budget:.0f} time units; the last epoch finished by then):" if budget else "",
        "",
        curves.markdown_table(["method", "worst final acc over the lr grid", "best final acc",
                               "acc by the time budget"], rows),
        "",
        "**The paper (Dean et al. 2012):** Adagrad (per-parameter learning rates) made Downpour far more robust; a warm "
        "start (one replica alone before the others join) helped; asynchronous training keeps going when replicas "
        "are slow or fail, where synchronous SGD waits for the slowest.",
        "",
        "**Here:**",
        "",
        *findings(s, best, methods, budget),
        "",
        "Caveats: one seed per setting unless more are given (differences of a few tenths of a point are within "
        "noise); a small learning-rate grid; one parameter shard and n_fetch = n_push = 1.",
    ]
    return "\n".join(lines) + "\n"


def findings(s: dict, best: dict, methods: list[str], budget: float | None) -> list[str]:
    key = lambda m: ("all", m)
    fin = {m: best[key(m)]["final"] for m in methods if key(m) in best}
    lines = []
    if "sgd" in fin and "adagrad" in fin and fin["sgd"] is not None and fin["adagrad"] is not None:
        d = (fin["adagrad"] - fin["sgd"]) * 100
        lo_s, _ = spread(best[key("sgd")])
        lo_a, _ = spread(best[key("adagrad")])
        worse = "" if lo_s is None or lo_a is None else (
            f"; worst learning rate of the grid: Adagrad {lo_a:.4f}, SGD {lo_s:.4f}")
        lines.append(f"- Adagrad vs SGD server (all workers from the start): best final accuracy "
                     f"{fin['adagrad']:.4f} vs {fin['sgd']:.4f} ({d:+.2f} points){worse}.")
    for opt in s["optimizers"]:
        for intro in ("warm", "gradual"):
            m = f"{opt}+{intro}"
            if m in fin and opt in fin and fin[m] is not None and fin[opt] is not None:
                d = (fin[m] - fin[opt]) * 100
                what = "warm start" if intro == "warm" else "gradual introduction"
                lines.append(f"- {opt} with {what}: {fin[m]:.4f} vs {fin[opt]:.4f} without ({d:+.2f} points; "
                             f"{'helped' if d > 0 else 'did not help'}).")
    if "ssgd" in fin and budget is not None:
        b_s = best[key("ssgd")]
        asyncs = [m for m in methods if m != "ssgd" and key(m) in best and best[key(m)]["time"]]
        if asyncs and b_s["time"] and b_s["time"][-1] is not None:
            t_async = float(np.mean([best[key(m)]["time"][-1] for m in asyncs]))
            lines.append(f"- Stragglers: SSGD needed {b_s['time'][-1]:.0f} time units for the {s['epochs']} epochs "
                         f"of gradients, the asynchronous runs {t_async:.0f} on average "
                         f"({b_s['time'][-1] / t_async:.1f}× longer); within the budget of {budget:.0f} units SSGD "
                         f"reached {async_results.fmt_acc(accuracy_at(b_s, budget))} and the best asynchronous "
                         f"method {async_results.fmt_acc(max((accuracy_at(best[key(m)], budget) or 0) for m in asyncs))}.")
    return lines


def plot(ctx, s: dict, best: dict, methods: list[str], dataset_name: str) -> None:
    by_epoch, by_time = [], []
    for m in methods:
        b = best.get(("all", m))
        if b is None:
            continue
        label = f"{m} (lr {b['setting'][0]:g})"
        by_epoch.append(dict(label=label, x=list(range(1, len(b["acc"]) + 1)), y=b["acc"], **_style(m)))
        by_time.append(dict(label=label, x=b["time"], y=b["acc"], **_style(m)))
    title = f"Downpour: {s['model']} on {dataset_name}, n = {s['workers']} with stragglers"
    plots.accuracy_panels({"against epochs": by_epoch}, ctx.figure("accuracy_vs_epoch.png"),
                          xlabel="epoch (gradients / steps per epoch)", title=title)
    plots.accuracy_panels({"against simulated time": by_time}, ctx.figure("accuracy_vs_time.png"),
                          xlabel="simulated time (mean fast-worker gradient times)", title=title)
    values = {}
    for m in methods:
        b = best.get(("all", m))
        if b is None:
            continue
        lo, hi = spread(b)
        values[("best lr", m)], values[("worst lr", m)] = hi, lo
    finals = [v for v in values.values() if v is not None]
    low = max(0.0, min(finals) - 0.05) if finals else 0.0
    plots.grouped_bars(["best lr", "worst lr"], methods, values, ctx.figure("best_per_method.png"),
                       ylabel="final test accuracy", title=title, ylim=(low, 1.0))


def finish(ctx, records) -> tuple[str, list[str]]:
    s = ctx.settings
    best = async_results.best_settings(records, lambda r: "all", lambda r: (r["learning_rate"],))
    methods = methods_of(s)
    plot(ctx, s, best, methods, ctx.data.name)
    return report(s, best, methods, ctx.data.name, intro_steps(s, ctx.data.num_train)), []


STUDY = study.training_study(
    name=NAME, help=HELP, doc=__doc__, presets=PRESETS, options=OPTIONS, configs=make_configs, finish=finish
)
