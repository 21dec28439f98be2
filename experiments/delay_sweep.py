"""Jain et al. (2018), Figure 2: test accuracy over learning rate × batch size × delay.

LeNet-5, SGD with momentum 0.9, each gradient applied ``delay`` steps late
(``asgd_jax.delayed``). Writes ``results.jsonl`` (one line per config) and
``heatmap.png`` (one panel per delay; rows = learning rate, columns = batch
size), ``cliff.png`` and ``report.md`` (per delay and batch size, the largest
learning rate whose runs neither diverged nor ended at chance accuracy, and
how it moves with delay) to
``--out``. Rerunning the same command skips finished configs.
"""

from __future__ import annotations

import numpy as np

from experiments import curves, plots, study

NAME = "delay_sweep"
HELP = "Jain et al. Fig. 2: accuracy heatmaps over learning rate x batch size x delay (LeNet-5, SGD+momentum)"


def _half_decades(lo: float, hi: float) -> list[float]:
    """10^lo, 10^(lo+0.5), ..., 10^hi."""
    n = int(round((hi - lo) * 2)) + 1
    return [float(10.0 ** (lo + 0.5 * i)) for i in range(n)]


# LeNet-5 + SGD with momentum 0.9 (the paper's); the quick/medium grid: 6 learning rates x 2 batch sizes x 3 delays.
_JAIN = dict(model="lenet5", optimizer="sgd", momentum=0.9, seeds=[0])
_SMALL_GRID = dict(learning_rates=_half_decades(-3.0, -0.5), batch_sizes=[64, 256], delays=[0, 2, 8])
PRESETS = {
    # A few minutes on a 2-core laptop CPU; the largest learning rate diverges.
    "quick": dict(_JAIN, **_SMALL_GRID, data="digits", epochs=10),
    # About 12 minutes on a 2-core CPU with real Fashion-MNIST (apt-get install dataset-fashion-mnist).
    "medium": dict(_JAIN, **_SMALL_GRID, data="idx:/usr/share/datasets/fashion-mnist", epochs=6),
    # Jain et al.'s Figure 2 protocol (for a GPU/TPU): 300 configs, 30 epochs.
    # docs/methods.md#constant-delay-jain-et-al-2018
    "paper": dict(_JAIN, data="tfds:mnist", learning_rates=_half_decades(-5.0, -0.5),
                  batch_sizes=[64, 128, 256, 512, 1024], delays=[0, 1, 2, 4, 6, 8], epochs=30),
    # A smoke test: seconds.
    "tiny": dict(_JAIN, data="digits", learning_rates=[0.01, 10.0], batch_sizes=[128], delays=[0, 1], epochs=1),
}


OPTIONS = (
    *study.TRAINING,
    study.Option("learning_rates", float, many=True, above=0, help="comma-separated, e.g. 1e-3,1e-2"),
    study.Option("batch_sizes", int, many=True, low=1, help="comma-separated, e.g. 64,128"),
    study.Option("delays", int, many=True, low=0, help="comma-separated delays in steps, e.g. 0,2,8"),
    study.SEEDS,
    study.EPOCHS,
    study.Option("optimizer", str, choices=("sgd", "adam", "adagrad")),
    study.momentum_option(help="SGD momentum (default 0.9)",
                 applies=study.only_for("optimizer", ("sgd",))),
    study.Option("model", str, choices=("lenet5", "mlp")),
)


def make_configs(ctx) -> list[dict]:
    """The study's grid as normalized configs, labelled with the optimizer."""
    s = ctx.settings
    grid = {
        "data": s["data"],
        "model": s["model"],
        "optimizer": s["optimizer"],
        "epochs": s["epochs"],
        "batch_size": s["batch_sizes"],
        "learning_rate": s["learning_rates"],
        "delay": s["delays"],
        "seed": s["seeds"],
    }
    if s["optimizer"] == "sgd":
        grid["momentum"] = s["momentum"]
    return study.training_configs([(s["optimizer"], grid)], ctx.data and ctx.data.num_train)


def finish(ctx, records) -> tuple[str, list[str]]:
    s, dataset = ctx.settings, ctx.data
    plots.delay_heatmaps(
        records,
        ctx.figure("heatmap.png"),
        title=f"{s['model']} on {s['data']}, {s['optimizer']}, {s['epochs']} epochs: final test accuracy",
    )
    stable = largest_stable(records, chance=1.0 / dataset.num_classes)
    plot_cliff(stable, ctx.figure("cliff.png"), title=f"{s['model']} on {s['data']}, {s['optimizer']}")
    return report(s, records, stable, dataset.name), [summary_table(records)]


CHANCE_MARGIN = 0.05


def largest_stable(records, chance: float | None = None) -> dict[tuple[int, int], float | None]:
    """``(delay, batch_size) -> `` the largest learning rate none of whose runs (seeds) failed.

    ``None`` when every learning rate failed. A run failed when it *diverged* (the
    result's flag: a NaN/inf loss or parameter, or a model that ended as a constant
    function) or, given ``chance`` (``1 / classes``), when its final test accuracy is
    at most ``chance + 0.05``: past the cliff a run can end at chance accuracy with
    logits that still differ a little between images.
    """
    out = {}
    for d in sorted({r["delay"] for r in records}):
        for b in sorted({r["batch_size"] for r in records}):
            ok = {}
            for r in records:
                if r["delay"] == d and r["batch_size"] == b:
                    acc = r["test_accuracy"]
                    at_chance = chance is not None and (acc is None or acc <= chance + CHANCE_MARGIN)
                    ok[r["learning_rate"]] = ok.get(r["learning_rate"], True) and not (r["diverged"] or at_chance)
            if ok:
                good = [lr for lr, fine in ok.items() if fine]
                out[(d, b)] = max(good) if good else None
    return out


def plot_cliff(stable, path: str, title: str = "") -> None:
    """The largest stable learning rate against delay, one line per batch size."""
    plt = plots._pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.8), constrained_layout=True)
    for k, b in enumerate(sorted({b for _, b in stable})):
        pts = sorted((d, lr) for (d, bb), lr in stable.items() if bb == b and lr is not None)
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", color=f"C{k}", label=f"batch {b}")
    ax.set_yscale("log")
    ax.set_xlabel("delay (steps)")
    ax.set_ylabel("largest learning rate that trained")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    ax.set_title(title or "the stability cliff against delay", fontsize=10)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _lr(v) -> str:
    return "all diverged" if v is None else f"{v:.3g}"


def report(s: dict, records, stable, dataset_name: str) -> str:
    """The study's findings beside the paper's, every statement computed from the records."""
    delays = sorted({d for d, _ in stable})
    batches = sorted({b for _, b in stable})
    table = curves.markdown_table(
        ["delay", *[f"batch {b}" for b in batches]],
        [[d, *[stable.get((d, b)) for b in batches]] for d in delays],
        lambda v: "all diverged" if v is None else (f"{v:.3g}" if isinstance(v, float) else str(v)),
    )
    best = {}
    for d in delays:
        rs = [r for r in records if r["delay"] == d and r["test_accuracy"] is not None]
        if rs:
            top = max(rs, key=lambda r: r["test_accuracy"])
            best[d] = (top["test_accuracy"], top["learning_rate"], top["batch_size"])
    lines = [
        f"# Delay sweep (Jain et al. 2018, Figure 2) — {dataset_name}",
        "",
        f"{s['model']}, {s['optimizer']}"
        + (f" (momentum {s['momentum']})" if s["optimizer"] == "sgd" else "")
        + f", {s['epochs']} epochs, seeds {s['seeds']}. A run *diverged* when a loss or parameter became "
        "NaN/inf or the model ended as a constant function (chance accuracy).",
        "",
        f"Largest learning rate that did not fail (diverge, or end within {CHANCE_MARGIN} of chance accuracy), "
        "per delay and batch size:",
        "",
        table,
        "",
        "Best final test accuracy per delay: "
        + "; ".join(f"delay {d}: {a:.3f} (lr {lr:.3g}, batch {b})" for d, (a, lr, b) in best.items())
        + ".",
        "",
        "**The paper** (MNIST, 30 epochs): accuracy rises smoothly with the learning rate, then falls off a cliff "
        "(divergence, chance accuracy); the more delay, the smaller the learning rate at which the cliff comes.",
        "",
        "**Here:**",
    ]
    for b in batches:
        seq = [(d, stable.get((d, b))) for d in delays]
        known = [(d, lr) for d, lr in seq if lr is not None]
        never_up = all(
            (b2 is None) or (a2 is not None and b2 <= a2) for (_, a2), (_, b2) in zip(seq, seq[1:])
        )
        moved = f"from {_lr(seq[0][1])} at delay {seq[0][0]} to {_lr(seq[-1][1])} at delay {seq[-1][0]}"
        lines.append(
            f"- batch {b}: the largest stable learning rate went {moved}; it "
            + ("never grew with delay" if never_up else "grew with delay at least once")
            + ("" if known else " (every learning rate diverged)")
            + "."
        )
    return "\n".join(lines) + "\n"


def summary_table(records) -> str:
    """Per delay: test accuracy, rows = learning rate, columns = batch size († = diverged)."""
    delays = sorted({r["delay"] for r in records})
    lrs = sorted({r["learning_rate"] for r in records})
    bss = sorted({r["batch_size"] for r in records})
    lines = []
    for d in delays:
        acc, div, cnt = plots.accuracy_grid(records, d, lrs, bss)
        lines.append(f"delay {d}: final test accuracy (rows: learning rate, columns: batch size)")
        lines.append("  " + "lr".ljust(10) + "".join(f"{b:>9}" for b in bss))
        for i, lr in enumerate(lrs):
            cells = []
            for j in range(len(bss)):
                if cnt[i, j] == 0:
                    cells.append(f"{'':>9}")
                else:
                    v = "nan" if np.isnan(acc[i, j]) else f"{acc[i, j]:.3f}"
                    cells.append(f"{v + ('†' if div[i, j] else ' '):>9}")
            lines.append("  " + f"{lr:<10.3g}" + "".join(cells))
    return "\n".join(lines)


STUDY = study.training_study(
    name=NAME, help=HELP, doc=__doc__, presets=PRESETS, options=OPTIONS, configs=make_configs, finish=finish
)
