"""DC-ASGD (Zheng et al. 2017): delay-compensated ASGD against ASGD, SSGD and sequential SGD.

Every method is the event-model simulator :func:`asgd_jax.asynchronous` around
plain SGD (the server optimizer; momentum 0 by default, as in the paper's update
rule), trained through :class:`asgd_jax.Trainer` with ``system="async"``:

- ``sgd``: sequential SGD, one worker (the baseline; in every panel);
- ``asgd``: ``M`` workers, every arriving gradient applied (pure assignment);
- ``ssgd``: ``server_rule="sync"``: the ``M`` gradients of a round are computed at
  the same parameters, averaged and applied when the slowest has arrived;
- ``dc-c``: ``compensation="dc-c"``, ``g + λ g⊙g⊙(w − w_bak)`` with constant λ
  (``--lambdas-c``);
- ``dc-a``: ``compensation="dc-a"``, ``λ_t = λ0 / sqrt(MS + ε)`` with
  ``MS ← 0.95 MS + 0.05 g²`` (``--lambdas-a`` for λ0).

One ``update`` call is one gradient on the next batch of the epoch's order (iid
batches: **(choice)** every worker samples the whole training set, as in the
paper's CIFAR-10 runs), so an epoch is the same number of gradients for every
method; ASGD and DC-ASGD leave ``M - 1`` gradients in flight at the end, SSGD
applies one averaged step per ``M`` gradients. Compute times: ``--timing normal``
with mean 1 and ``--time-spread 0.2`` by default (Jain et al.'s model), so
simulated time counts mean gradient times. For each ``M`` (``--workers``,
default 4, 8, 16) and method, learning rates (and λ for DC) are swept, each
method's best setting is the one with the highest final test accuracy (mean
over seeds), and ``M`` values share one compiled program per method
(``max_workers`` = the largest ``M``).

Writes to ``--out`` (default ``runs/dc_asgd-<preset>``): ``results.jsonl``
(per config: its fields, accuracy/loss per epoch, ``sim_time_per_epoch``,
``server_steps_per_epoch``), ``accuracy_vs_epoch.png`` and
``accuracy_vs_time.png`` (best setting per method, one panel per ``M``),
``best_per_method.png`` (best final accuracy per method and ``M``),
``lambda.png`` (final accuracy against λ per DC variant) and ``report.md``
(tables and the measured ordering beside the paper's claims,
docs/methods.md#dc-asgd-zheng-et-al-2017). Rerunning the
same command skips finished configs.

Presets: ``tiny`` (a smoke test, an MLP, seconds), ``quick`` (LeNet-5 on
``digits``, under 3 minutes on a 2-core CPU), ``medium`` (LeNet-5 on real
Fashion-MNIST, 3 epochs; 7 minutes measured on a busy 2-core CPU) and ``paper``
(the paper's setting, for a GPU/TPU: :class:`asgd_jax.ResNet20` on ``tfds:cifar10``,
M = 4, 8, batch 128, 160 epochs, λ grids around the paper's defaults 0.04 and
λ0 = 2). Models (``--model``): ``lenet5``, ``mlp`` or ``resnet20``.

ResNet-20 differs from the paper's in its normalization, **(choice)**: GroupNorm
instead of BatchNorm, because the training state here is the parameters alone (no
running statistics) and GroupNorm normalizes each sample on its own, so a
gradient does not depend on the batch it shares with other samples (Hsieh et al.
2020 recommend GroupNorm for distributed training); see the model's docstring.
The runs here also have no data augmentation and a constant learning rate (the
library has no step-decay schedule), so absolute accuracies are not the paper's;
the comparison between methods is the point. On a CPU ``--loop auto`` (the
default) drives ResNet-20 with jitted steps (``--loop step``): XLA:CPU runs its
convolution gradients far slower inside a ``lax.scan`` epoch (see
:func:`asgd_jax.default_loop`).
"""

from __future__ import annotations

from experiments import async_results, curves, plots, study

NAME = "dc_asgd"
HELP = "Zheng et al. (DC-ASGD): ASGD vs SSGD vs DC-ASGD-c/-a vs sequential SGD, M = 4, 8, 16, lambda swept"

METHODS = ("sgd", "asgd", "ssgd", "dc-c", "dc-a")
METHOD_LABELS = {
    "sgd": "sequential SGD (1 worker)",
    "asgd": "ASGD",
    "ssgd": "SSGD",
    "dc-c": "DC-ASGD-c",
    "dc-a": "DC-ASGD-a",
}
STYLE = {
    "sgd": dict(color="black", ls=":"),
    "asgd": dict(color="tab:blue", ls="-"),
    "ssgd": dict(color="tab:gray", ls="--"),
    "dc-c": dict(color="tab:orange", ls="-"),
    "dc-a": dict(color="tab:red", ls="-"),
}
MODELS = ("lenet5", "mlp", "resnet20")

_COMMON = dict(methods=list(METHODS), momentum=0.0, timing="normal", time_spread=0.2, seeds=[0])
PRESETS = {
    # A smoke test: an MLP, two worker counts, one setting each, 1 epoch.
    "tiny": dict(_COMMON, data="digits", model="mlp", workers=[2, 4], learning_rates=[0.1], lambdas_c=[0.04],
                 lambdas_a=[2.0], batch_size=64, epochs=1),
    # Under 3 minutes on a 2-core CPU: LeNet-5 on the bundled digits.
    "quick": dict(_COMMON, data="digits", model="lenet5", workers=[4, 8, 16], learning_rates=[0.02, 0.05],
                  lambdas_c=[0.04, 1.0], lambdas_a=[0.5, 2.0], batch_size=32, epochs=8),
    # LeNet-5 on real Fashion-MNIST, 57 settings x 2 seeds = 114 configs x 3 epochs: 8.7 minutes measured on
    # the 2-core CPU. lr 0.1 joins the grid (seed 0 alone put DC-ASGD-a's best M = 8 setting there) and two
    # seeds, because single runs at these learning rates differ by a point or more between seeds.
    "medium": dict(_COMMON, data="idx:/usr/share/datasets/fashion-mnist", model="lenet5", workers=[4, 8, 16],
                   learning_rates=[0.02, 0.05, 0.1], lambdas_c=[0.04, 1.0], lambdas_a=[0.5, 2.0], batch_size=64,
                   epochs=3, seeds=[0, 1]),
    # The paper's setting: ResNet-20 (GroupNorm, see asgd_jax.ResNet20) on CIFAR-10, M = 4 and 8, batch 128,
    # 160 epochs, the paper's default lambdas (0.04, lambda0 = 2) inside the swept grids. A GPU/TPU run:
    # 34 configs of 160 epochs.
    "paper": dict(_COMMON, data="tfds:cifar10", model="resnet20", workers=[4, 8], learning_rates=[0.1, 0.5],
                  lambdas_c=[0.04, 0.1, 1.0], lambdas_a=[0.5, 1.0, 2.0], batch_size=128, epochs=160),
}


OPTIONS = (
    *study.TRAINING,
    study.Option("model", str, choices=MODELS,
                 help="lenet5, mlp or resnet20 (the paper's, GroupNorm; on a CPU --loop auto = step)"),
    study.Option("methods", str, many=True, choices=METHODS, help="comma-separated subset of " + ",".join(METHODS)),
    study.Option("workers", int, many=True, low=2, help="comma-separated worker counts M >= 2 (sequential SGD, "
                 "M = 1, is the method sgd)"),
    study.Option("learning_rates", float, many=True, above=0, help="comma-separated"),
    study.Option("lambdas_c", float, many=True, low=0,
                 help="comma-separated lambda >= 0 of DC-ASGD-c (the paper's default: 0.04)"),
    study.Option("lambdas_a", float, many=True, low=0,
                 help="comma-separated lambda_0 >= 0 of DC-ASGD-a (the paper's default: 2)"),
    study.Option("batch_size", int, low=1),
    study.EPOCHS,
    study.momentum_option(help="server SGD momentum (default 0, the paper's plain update)"),
    *study.timing_options("std of normal / sigma of lognormal / half-width of uniform (default 0.2)"),
    study.SEEDS,
)


def make_configs(ctx) -> list[dict]:
    """Sequential SGD per learning rate, then per M: ASGD, SSGD, DC-ASGD-c x lambda, DC-ASGD-a x lambda0."""
    s = ctx.settings
    bound = max(s["workers"])
    base = {
        "data": s["data"], "model": s["model"], "optimizer": "sgd", "momentum": s["momentum"],
        "epochs": s["epochs"], "batch_size": s["batch_size"], "system": "async", "timing": s["timing"],
        "time_spread": s["time_spread"], "seed": s["seeds"], "learning_rate": s["learning_rates"],
    }
    many = {**base, "workers": s["workers"], "max_workers": bound}
    grids = {
        "sgd": {**many, "workers": 1},  # one worker: plain SGD, in ASGD's compiled program
        "asgd": many,
        "ssgd": {**many, "server_rule": "sync"},
        "dc-c": {**many, "compensation": "dc-c", "dc_lambda": s["lambdas_c"]},
        "dc-a": {**many, "compensation": "dc-a", "dc_lambda": s["lambdas_a"]},
    }
    return study.training_configs([(m, g) for m, g in grids.items() if m in s["methods"]],
                                  ctx.data and ctx.data.num_train)


def _setting(r: dict) -> tuple:
    return (r["learning_rate"], r.get("dc_lambda"))


def _setting_fmt(method, setting) -> list[str]:
    lr, lam = setting
    return [curves.fmt_value(lr), "–" if lam is None else f"{lam:g}"]


def summarize(records: list[dict], workers: list[int]) -> dict:
    """Best setting per (M, method); sequential SGD is copied into every M."""
    best = async_results.best_settings(records, lambda r: r["workers"], _setting)
    for m in workers:
        if (1, "sgd") in best:
            best[(m, "sgd")] = best[(1, "sgd")]
    return best


def _compare(best, m, a, b) -> tuple[float, float] | None:
    x, y = best.get((m, a)), best.get((m, b))
    if x is None or y is None or x["final"] is None or y["final"] is None:
        return None
    return x["final"], y["final"]


def findings(best: dict, workers: list[int], methods: list[str]) -> list[str]:
    """Lines of the report comparing the measured ordering with the paper's (Zheng et al. 2017)."""
    lines = []
    for m in workers:
        ranked = sorted((mt for mt in methods if (m, mt) in best and best[(m, mt)]["final"] is not None),
                        key=lambda mt: -best[(m, mt)]["final"])
        order = " > ".join(f"{METHOD_LABELS[mt]} {best[(m, mt)]['final']:.4f}" for mt in ranked)
        lines.append(f"- **M = {m}**, best final test accuracy per method: {order}.")
        checks = []
        for a, b, text in (("dc-a", "dc-c", "DC-ASGD-a ≥ DC-ASGD-c"), ("dc-c", "ssgd", "DC-ASGD-c ≥ SSGD"),
                           ("ssgd", "asgd", "SSGD ≥ ASGD"), ("dc-a", "asgd", "DC-ASGD-a ≥ ASGD")):
            c = _compare(best, m, a, b)
            if c is not None:
                d = (c[0] - c[1]) * 100
                checks.append(f"{text}: {'held' if d >= 0 else 'did not hold'} ({d:+.2f} points)")
        if m == 4:
            c = _compare(best, m, "dc-a", "sgd")
            if c is not None:
                d = (c[0] - c[1]) * 100
                checks.append(f"DC-ASGD-a ≥ sequential SGD (the paper's M = 4 claim): "
                              f"{'held' if d >= 0 else 'did not hold'} ({d:+.2f} points)")
        full = [_compare(best, m, a, b) for a, b in (("dc-a", "dc-c"), ("dc-c", "ssgd"), ("ssgd", "asgd"))]
        if all(c is not None for c in full):
            held = all(c[0] >= c[1] for c in full)
            checks.append(f"the paper's whole ordering DC-ASGD-a > DC-ASGD-c > SSGD ≥ ASGD "
                          f"{'held' if held else 'did not hold'}")
        if checks:
            lines.append("  " + "; ".join(checks) + ".")
    return lines


def headline(best: dict, m: int = 8) -> str | None:
    c = _compare(best, m, "dc-a", "asgd")
    if c is None:
        return None
    d = (c[0] - c[1]) * 100
    return (f"At M = {m}, DC-ASGD-a's best final test accuracy is {c[0]:.4f} against ASGD's {c[1]:.4f}: "
            f"{d:+.2f} points, so DC-ASGD-a ≥ ASGD {'held' if d >= 0 else 'did NOT hold'} here.")


def lambda_table(best: dict, workers: list[int], methods: list[str]) -> str:
    rows = []
    for m in workers:
        for mt in ("dc-c", "dc-a"):
            b = best.get((m, mt))
            if mt not in methods or b is None:
                continue
            per_lambda: dict[float, float] = {}
            for (lr, lam), final in b["all"]:
                if final is not None and (lam not in per_lambda or final > per_lambda[lam]):
                    per_lambda[lam] = final
            rows.append([m, METHOD_LABELS[mt], ", ".join(f"λ={lam:g}: {acc:.4f}" for lam, acc in
                                                          sorted(per_lambda.items()))])
    return curves.markdown_table(["M", "method", "best final accuracy over learning rates, per λ"], rows)


def report(s: dict, best: dict, dataset_name: str, steps_per_epoch: int) -> str:
    methods = [m for m in METHODS if m in s["methods"]]
    table = async_results.best_table(best, s["workers"], methods, lambda m: f"M = {m}",
                                     ["learning rate", "λ"], _setting_fmt)
    lines = [
        f"# DC-ASGD (Zheng et al. 2017) — {s['model']} on {dataset_name}",
        "",
        f"Plain SGD server (momentum {s['momentum']:g}), batch {s['batch_size']} per gradient, {s['epochs']} epochs "
        f"({steps_per_epoch} gradients per epoch for every method), M = {', '.join(map(str, s['workers']))} workers "
        f"with {study.timing_text(s)}; learning rates "
        f"{', '.join(f'{v:g}' for v in s['learning_rates'])}; DC-ASGD-c λ ∈ {{{', '.join(f'{v:g}' for v in s['lambdas_c'])}}}, "
        f"DC-ASGD-a λ0 ∈ {{{', '.join(f'{v:g}' for v in s['lambdas_a'])}}}; seeds {s['seeds']}. Per M and method, "
        "the setting with the highest final test accuracy (mean over seeds); sequential SGD (1 worker) is the same "
        "run in every M. Simulated time is in mean gradient times (sequential SGD: one per gradient).",
        "",
        table,
        "",
        "λ sweeps (best learning rate per λ):",
        "",
        lambda_table(best, s["workers"], methods),
        "",
        "**The paper (Zheng et al. 2017):** on CIFAR-10 with ResNet and M = 4 and 8 workers, test error ordered "
        "DC-ASGD-a < DC-ASGD-c < SSGD ≤ ASGD; at M = 4 DC-ASGD-a even beat sequential SGD.",
        "",
        "**Here:**",
        "",
        *findings(best, s["workers"], methods),
    ]
    h = headline(best)
    if h:
        lines += ["", f"**{h}**"]
    if s["model"] == "resnet20":
        model_caveat = ("ResNet-20 with GroupNorm instead of the paper's BatchNorm, no data augmentation "
                        "and a constant learning rate (no step decay)")
    else:
        model_caveat = f"{s['model']} rather than the paper's ResNet-20 on CIFAR-10"
    lines += [
        "",
        f"Caveats: {_seeds_phrase(s['seeds'])}, so differences of a few tenths of a point are "
        f"within run-to-run noise; a small grid of learning rates and λ; {model_caveat}; SSGD is compared at an "
        "equal number of gradients (it applies one averaged step per M of them).",
    ]
    return "\n".join(lines) + "\n"


def _seeds_phrase(seeds) -> str:
    if len(seeds) == 1:
        return "one seed per setting"
    return f"each number is the mean over {len(seeds)} seeds (a single seed can differ from it by a point or more)"


def plot(ctx, s: dict, best: dict, dataset_name: str) -> None:
    methods = [m for m in METHODS if m in s["methods"]]
    by_epoch, by_time = {}, {}
    for m in s["workers"]:
        name = f"M = {m}"
        by_epoch[name], by_time[name] = [], []
        for mt in methods:
            b = best.get((m, mt))
            if b is None:
                continue
            lr, lam = b["setting"]
            label = f"{METHOD_LABELS[mt]} (lr {lr:g}" + (f", λ {lam:g})" if lam is not None else ")")
            epochs = list(range(1, len(b["acc"]) + 1))
            by_epoch[name].append(dict(label=label, x=epochs, y=b["acc"], **STYLE[mt]))
            by_time[name].append(dict(label=label, x=b["time"], y=b["acc"], **STYLE[mt]))
    title = f"{s['model']} on {dataset_name}: best setting per method"
    plots.accuracy_panels(by_epoch, ctx.figure("accuracy_vs_epoch.png"), xlabel="epoch", title=title)
    plots.accuracy_panels(by_time, ctx.figure("accuracy_vs_time.png"),
                          xlabel="simulated time (mean gradient times, log scale)", title=title, logx=True)
    values = {(f"M = {m}", mt): best[(m, mt)]["final"] for m in s["workers"] for mt in methods if (m, mt) in best}
    finals = [v for v in values.values() if v is not None]
    low = max(0.0, min(finals) - 0.05) if finals else 0.0
    plots.grouped_bars([f"M = {m}" for m in s["workers"]], methods, values,
                       ctx.figure("best_per_method.png"), ylabel="best final test accuracy",
                       title=title, colors={k: v["color"] for k, v in STYLE.items()}, ylim=(low, 1.0))
    lam_panels = {}
    for mt in ("dc-c", "dc-a"):
        if mt not in methods:
            continue
        series = []
        for i, m in enumerate(s["workers"]):
            b = best.get((m, mt))
            if b is None:
                continue
            per_lambda: dict[float, float] = {}
            for (lr, lam), final in b["all"]:
                if final is not None and (lam not in per_lambda or final > per_lambda[lam]):
                    per_lambda[lam] = final
            lams = sorted(per_lambda)
            series.append(dict(label=f"M = {m}", x=lams, y=[per_lambda[v] for v in lams], color=f"C{i}"))
        lam_panels[METHOD_LABELS[mt] + (" (λ)" if mt == "dc-c" else " (λ0)")] = series
    if lam_panels:
        plots.accuracy_panels(lam_panels, ctx.figure("lambda.png"), xlabel="λ (log scale)",
                              title="final test accuracy against λ (best learning rate)", logx=True)


def finish(ctx, records) -> tuple[str, list[str]]:
    s = ctx.settings
    best = summarize(records, s["workers"])
    plot(ctx, s, best, ctx.data.name)
    return report(s, best, ctx.data.name, ctx.data.num_train // s["batch_size"]), []


def check(s: dict, given: set) -> dict:
    from asgd_jax.train import default_loop

    if "loop" not in given and s["model"] == "resnet20" and default_loop(s["model"]) == "step":
        print("dc_asgd: ResNet-20 on a CPU: jitted steps driven from Python (--loop step), not lax.scan epochs")
    return s


STUDY = study.training_study(
    name=NAME, help=HELP, doc=__doc__, presets=PRESETS, options=OPTIONS, configs=make_configs, finish=finish,
    check=check,
)
