"""AsGrad's heterogeneous-data question on a network: does shuffling workers pay off for LeNet-5 too?

Islamov et al. (2024) show on logistic regression that when every worker holds
its own data and the workers' speeds differ, pure ASGD over-weights the fast
workers' data (worker ``i`` contributes a share of the updates ``∝ 1/s_i``)
while the random and shuffle assignment rules give every worker the same share.
This study asks the same question of a network: LeNet-5 (or an MLP) trained by
:class:`asgd_jax.Trainer` with ``system="async"`` and ``data_split="label"``
(worker ``i`` holds the ``i``-th block of the training set sorted by label; with
10 workers and 10 classes, one class each), mean compute times ``1, 2, ..., n``
(``worker_times``; ``--timing`` gives the law around each mean), and the
methods

- ``pure``, ``random``, ``shuffle``: ASGD under AsGrad's three assignment rules;
- ``rennala``: Rennala SGD (``rules=("drop", "accumulate")``, ``max_staleness=0``,
  ``accumulate=S``, pure rule);
- ``ringmaster``: Ringmaster ASGD (``rules=("drop",)``, ``max_staleness=R``,
  pure rule),

each over a learning-rate grid and seeds, one vmapped program per method. The
server is plain SGD (``--momentum 0`` by default, AsGrad's ``x ← x − γ g``). An
epoch is ``num_train // batch_size`` gradients for every method, so methods
compare at equal gradients (iterations); the simulated clock compares them in
time. See docs/methods.md for the methods.

Writes to ``--out`` (default ``runs/heterogeneous-<preset>``): ``results.jsonl``
(per config: accuracy and loss per epoch, ``sim_time_per_epoch``,
``server_steps_per_epoch``, ``per_class_accuracy`` and ``worker_gradients`` at the
end), ``accuracy.png`` (best learning rate per method, test accuracy against
gradients and against simulated time), ``per_class.png`` (final accuracy per
class), ``shares.png`` (each worker's share of the gradients the server used, with pure
ASGD's ``∝ 1/s_i`` prediction) and ``report.md``.

Presets: ``tiny`` (an MLP on ``digits``, 4 workers, seconds), ``quick`` (LeNet-5
on ``digits``, 10 workers, about 2 minutes on a 2-core CPU), ``medium`` (LeNet-5
on real Fashion-MNIST, 10 workers, 3 epochs, 3 learning rates, 2 seeds) and
``paper`` (Fashion-MNIST through tfds, 20 epochs, a wider grid; a GPU run).
"""

from __future__ import annotations

import numpy as np

from experiments import async_results, curves, plots, study

NAME = "heterogeneous"
HELP = "AsGrad's question on LeNet-5: label-split data over workers of speeds 1..n; pure/random/shuffle/Rennala/Ringmaster"

METHODS = ("pure", "random", "shuffle", "rennala", "ringmaster")
LABELS = {"pure": "pure ASGD", "random": "random ASGD", "shuffle": "shuffle ASGD", "rennala": "Rennala SGD",
          "ringmaster": "Ringmaster ASGD"}
STYLE = {"pure": dict(color="tab:blue"), "random": dict(color="tab:orange"), "shuffle": dict(color="tab:green"),
         "rennala": dict(color="tab:red", ls="--"), "ringmaster": dict(color="tab:purple", ls="--")}
FASHION = "idx:/usr/share/datasets/fashion-mnist"

_COMMON = dict(methods=list(METHODS), split="label", momentum=0.0, timing="fixed", time_spread=0.0, seeds=[0])
PRESETS = {
    "tiny": dict(_COMMON, data="digits", model="mlp", workers=4, learning_rates=[0.05], batch_size=32, epochs=1,
                 rennala_batch=2, ringmaster_r=4),
    "quick": dict(_COMMON, data="digits", model="lenet5", workers=10, learning_rates=[0.01, 0.03, 0.1],
                  batch_size=32, epochs=8, rennala_batch=4, ringmaster_r=10),
    "medium": dict(_COMMON, data=FASHION, model="lenet5", workers=10, learning_rates=[0.01, 0.03, 0.1],
                   batch_size=64, epochs=3, rennala_batch=4, ringmaster_r=10, seeds=[0, 1]),
    "paper": dict(_COMMON, data="tfds:fashion_mnist", model="lenet5", workers=10,
                  learning_rates=[0.003, 0.01, 0.03, 0.1, 0.3], batch_size=64, epochs=20, rennala_batch=4,
                  ringmaster_r=10, seeds=[0, 1, 2]),
}

OPTIONS = (
    *study.TRAINING,
    study.Option("model", str, choices=("lenet5", "mlp")),
    study.Option("methods", str, many=True, choices=METHODS, help="comma-separated subset of " + ",".join(METHODS)),
    study.Option("workers", int, low=2, help="workers n; worker i's mean compute time is i + 1"),
    study.Option("split", str, choices=("label", "dirichlet", "contiguous", "iid"),
                 help="how the training set is split over the workers (label: sorted by label)"),
    study.Option("learning_rates", float, many=True, above=0, help="comma-separated"),
    study.Option("batch_size", int, low=1),
    study.EPOCHS,
    study.momentum_option(help="server SGD momentum (default 0)"),
    study.Option("rennala_batch", int, low=1, help="Rennala's S: gradients of the current version per step"),
    study.Option("ringmaster_r", int, low=0, help="Ringmaster's R: drop arrivals staler than this"),
    *study.timing_options("std of normal / sigma of lognormal / half-width of uniform, relative to the mean"),
    study.SEEDS,
)


def make_configs(ctx) -> list[dict]:
    s = ctx.settings
    n = s["workers"]
    base = {"data": s["data"], "model": s["model"], "optimizer": "sgd", "momentum": s["momentum"],
            "epochs": s["epochs"], "batch_size": s["batch_size"], "system": "async", "workers": n,
            "max_workers": n, "timing": s["timing"], "time_spread": s["time_spread"],
            # one grid value each (a tuple would be a grid axis)
            "worker_times": [tuple(float(i + 1) for i in range(n))], "data_split": s["split"],
            "seed": s["seeds"], "learning_rate": s["learning_rates"]}
    grids = {
        "pure": {**base, "assignment": "pure"},
        "random": {**base, "assignment": "random"},
        "shuffle": {**base, "assignment": "shuffle"},
        "rennala": {**base, "rules": [("drop", "accumulate")], "max_staleness": 0, "accumulate": s["rennala_batch"]},
        "ringmaster": {**base, "rules": [("drop",)], "max_staleness": s["ringmaster_r"]},
    }
    return study.training_configs([(m, grids[m]) for m in METHODS if m in s["methods"]],
                                  ctx.data and ctx.data.num_train)


def summarize(records: list[dict]) -> dict:
    """Per method: the best learning rate (mean final accuracy over seeds) and its curves, classes and shares."""
    best = async_results.best_settings(records, lambda r: 0, lambda r: (r["learning_rate"],))
    out = {}
    for (_, method), b in best.items():
        rs = [r for r in records if r["method"] == method and (r["learning_rate"],) == b["setting"]]
        steps = np.array([r["worker_gradients"] for r in rs], float)
        shares = (steps / np.maximum(steps.sum(1, keepdims=True), 1)).mean(0)
        per_class = async_results.mean_list([r["per_class_accuracy"] for r in rs])
        out[method] = {**b, "lr": b["setting"][0], "per_class": per_class, "shares": shares.tolist(),
                       "worst_class": min((v for v in per_class if v is not None), default=None),
                       "end_time": b["time"][-1] if b["time"] else None,
                       "server_steps": float(np.mean([r["server_steps_per_epoch"][-1] for r in rs]))}
    return out


def accuracy_by_time(b: dict, t: float) -> float | None:
    """The accuracy of the last epoch that ended by simulated time ``t`` (None: none did)."""
    done = [a for a, tt in zip(b["acc"], b["time"]) if tt is not None and tt <= t * (1 + 1e-9)]
    return done[-1] if done else None


def findings(best: dict, n: int, grid: list[float]) -> list[str]:
    lines = []
    pure, shuffle = best.get("pure"), best.get("shuffle")
    if pure and shuffle and pure["final"] is not None and shuffle["final"] is not None:
        d = (shuffle["final"] - pure["final"]) * 100
        lines.append(f"- At equal gradients, shuffle's best final accuracy is {shuffle['final']:.4f} against pure's "
                     f"{pure['final']:.4f} ({d:+.2f} points); worst class {curves.fmt_value(shuffle['worst_class'])} "
                     f"against {curves.fmt_value(pure['worst_class'])}. So on this network the advantage shuffle "
                     f"has on AsGrad's logistic regression {'carries over' if d > 0 else 'does NOT carry over'} "
                     "when methods are compared per gradient.")
        t = pure["end_time"]
        at = accuracy_by_time(shuffle, t) if t else None
        if at is not None:
            lines.append(f"- In simulated time, by the time pure ASGD finishes ({t:.4g}), shuffle had reached "
                         f"{at:.4f} against pure's {pure['final']:.4f}: shuffle waits for the slow workers, so "
                         f"per unit of time its advantage {'holds' if at > pure['final'] else 'is lost'}.")
        elif t:
            lines.append(f"- In simulated time, shuffle had not finished one epoch when pure ASGD finished "
                         f"({t:.4g}): per unit of time pure ASGD is ahead.")
        shares = pure["shares"]
        if len(shares) == n:
            pred = (1 / np.arange(1, n + 1)) / (1 / np.arange(1, n + 1)).sum()
            dev = np.max(np.abs(np.array(shares) - pred) / pred)
            lines.append(f"- Pure ASGD's shares of the gradients the server used run from {shares[0]:.1%} (fastest worker) to "
                         f"{shares[-1]:.1%} (slowest); the 1/s_i law predicts {pred[0]:.1%} to {pred[-1]:.1%} "
                         f"(largest relative deviation {dev:.1%}). Shuffle's run from {min(shuffle['shares']):.1%} "
                         f"to {max(shuffle['shares']):.1%} (equal: {1 / n:.1%}).")
    for m in ("rennala", "ringmaster"):
        b = best.get(m)
        if b and b["final"] is not None:
            slow = float(np.sum(b["shares"][n // 2:]))
            lines.append(f"- {LABELS[m]}: best final accuracy {b['final']:.4f} (lr {b['lr']:g}) after "
                         f"{b['server_steps']:.0f} server steps, simulated time {curves.fmt_value(b['end_time'])}; "
                         f"the slower half of the workers supplied {slow:.1%} of the gradients it used (pure ASGD: "
                         f"{float(np.sum(pure['shares'][n // 2:])) if pure else float('nan'):.1%}), so the classes "
                         "only they hold are barely learned: dropping stale gradients discards exactly the slow "
                         "workers' data.")
    edge = [LABELS[m] for m in METHODS if m in best and len(grid) > 1 and best[m]["lr"] in (min(grid), max(grid))]
    if edge:
        lines.append(f"- The best learning rate of {', '.join(edge)} is at the edge of the grid; a wider grid may "
                     "change their numbers.")
    return lines


def report(ctx, best: dict) -> str:
    s = ctx.settings
    methods = [m for m in METHODS if m in best]
    rows = [[LABELS[m], f"{best[m]['lr']:g}", async_results.fmt_acc(best[m]["final"]),
             async_results.fmt_acc(best[m]["worst_class"]), f"{best[m]['server_steps']:.0f}",
             curves.fmt_value(best[m]["end_time"]), "yes" if best[m]["diverged"] else ""] for m in methods]
    table = curves.markdown_table(["method", "best lr", "final accuracy", "worst class", "server steps",
                                   "simulated time", "diverged"], rows)
    grads = s["epochs"] * (ctx.data.num_train // s["batch_size"])
    return "\n".join([
        f"# Heterogeneous data on a network — {s['model']} on {ctx.data.name}",
        "",
        f"{s['workers']} workers, the training set split by {s['split']} (worker i holds its own block), mean "
        f"compute times 1, 2, …, {s['workers']} ({s['timing']} law); plain SGD server (momentum {s['momentum']:g}), "
        f"batch {s['batch_size']}, {s['epochs']} epoch(s) = {grads} gradients per run; learning rates "
        f"{', '.join(f'{v:g}' for v in s['learning_rates'])}; seeds {s['seeds']}; Rennala S = {s['rennala_batch']}, "
        f"Ringmaster R = {s['ringmaster_r']}. Per method, the learning rate with the best final test accuracy "
        "(mean over seeds).",
        "",
        table,
        "",
        "**On logistic regression (AsGrad, Islamov et al. 2024):** with heterogeneous data, pure ASGD over-weights "
        "the fast workers' data and converges to a biased point; shuffle and random give every worker the same share "
        "and reach a far smaller gradient norm.",
        "",
        "**Here:**",
        "",
        *findings(best, s["workers"], s["learning_rates"]),
        "",
        f"Caveats: {len(s['seeds'])} seed(s) and a small learning-rate grid; accuracy per class is on the test set.",
    ]) + "\n"


def plot(ctx, best: dict) -> None:
    s = ctx.settings
    methods = [m for m in METHODS if m in best]
    steps = ctx.data.num_train // s["batch_size"]
    by_grad, by_time = [], []
    for m in methods:
        b = best[m]
        label = f"{LABELS[m]} (lr {b['lr']:g})"
        by_grad.append(dict(label=label, x=[steps * (e + 1) for e in range(len(b["acc"]))], y=b["acc"], **STYLE[m]))
        by_time.append(dict(label=label, x=b["time"], y=b["acc"], **STYLE[m]))
    title = f"{s['model']} on {ctx.data.name}, {s['workers']} workers split by {s['split']}"
    plots.accuracy_panels({"against gradients": by_grad, "against simulated time": by_time},
                          ctx.figure("accuracy.png"), xlabel="gradients | simulated time", title=title)
    classes = [str(c) for c in range(len(best[methods[0]]["per_class"]))]
    values = {(c, m): best[m]["per_class"][int(c)] for c in classes for m in methods}
    plots.grouped_bars(classes, methods, values, ctx.figure("per_class.png"), ylabel="final test accuracy",
                       title=title + ": accuracy per class", colors={m: STYLE[m]["color"] for m in methods},
                       ylim=(0.0, 1.0))
    n = s["workers"]
    pred = (1 / np.arange(1, n + 1)) / (1 / np.arange(1, n + 1)).sum()
    plots.worker_shares([LABELS[m] for m in methods], [best[m]["shares"] for m in methods],
                        ctx.figure("shares.png"), predicted=pred.tolist(),
                        title=title + ": share of server steps per worker")


def finish(ctx, records) -> tuple[str, list[str]]:
    best = summarize(records)
    plot(ctx, best)
    lines = [f"{LABELS[m]}: final accuracy {async_results.fmt_acc(best[m]['final'])} (lr {best[m]['lr']:g})"
             for m in METHODS if m in best]
    return report(ctx, best), lines


STUDY = study.training_study(
    name=NAME, help=HELP, doc=__doc__, presets=PRESETS, options=OPTIONS, configs=make_configs, finish=finish)
