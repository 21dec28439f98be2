"""Jain et al. (2018): a learning-rate warm-up helps under delay only at first.

LeNet-5, SGD (momentum 0.9), every gradient applied ``delay`` steps late, with a
linear learning-rate warm-up over ``W`` epochs (the rate grows as
``lr * min(1, step / W)``; ``W = 0`` is no warm-up). For each learning rate the
study runs several warm-up lengths, plus the same learning rate without delay
as a reference, and records test accuracy after every epoch.

Writes ``results.jsonl``, ``curves.png`` (accuracy against epochs, one panel per
learning rate, dotted lines where each warm-up ends) and ``report.md`` (per
config: accuracy when the warm-up ends, the peak, the final accuracy, and the
epoch it diverged) to ``--out``. Rerunning the same command skips finished
configs.
"""

from __future__ import annotations

import math

from experiments import curves, study

NAME = "warmup"
HELP = "Jain et al.: linear learning-rate warm-up under delay, and when its benefit fades"

PRESETS = {
    # About a minute on a laptop CPU (digits).
    "quick": dict(
        data="digits",
        delay=8,
        learning_rates=[0.01, 0.03],
        batch_size=64,
        epochs=10,
        warmup_epochs=[0, 2, 5],
        seeds=[0],
    ),
    # About 8 minutes on a 2-core CPU with real Fashion-MNIST. The learning rates bracket the delay-8
    # cliff at batch 128 (found by a 6-epoch exploration: lr 0.002 trains, 0.004 diverges in epoch 2
    # without warm-up), so some warm-ups rescue a rate and others only delay the fall.
    "medium": dict(
        data="idx:/usr/share/datasets/fashion-mnist",
        delay=8,
        learning_rates=[0.002, 0.004, 0.008, 0.016],
        batch_size=128,
        epochs=8,
        warmup_epochs=[0, 2, 4],
        seeds=[0],
    ),
    # The paper's setting (GPU/TPU).
    "paper": dict(
        data="tfds:mnist",
        delay=8,
        learning_rates=[10.0**e for e in (-2.5, -2.0, -1.5, -1.0)],
        batch_size=64,
        epochs=30,
        warmup_epochs=[0, 1, 2, 5, 10, 20],
        seeds=[0],
    ),
    # A smoke test: seconds.
    "tiny": dict(
        data="digits",
        delay=2,
        learning_rates=[0.03],
        batch_size=128,
        epochs=2,
        warmup_epochs=[0, 1],
        seeds=[0],
    ),
}


OPTIONS = (
    *study.TRAINING,
    study.Option("delay", int, low=0, help="delay in steps"),
    study.Option("learning_rates", float, many=True, above=0, help="comma-separated"),
    study.Option("batch_size", int, low=1),
    study.EPOCHS,
    study.Option("warmup_epochs", float, many=True, low=0,
                 help="comma-separated warm-up lengths in epochs (0: none), e.g. 0,1,3"),
    study.SEEDS,
)


def make_configs(ctx) -> list[dict]:
    """Delayed runs for every (learning rate, warm-up), plus each learning rate without delay or warm-up.

    Labels: ``no-delay`` (the reference), ``warmup-<W>`` (W epochs of warm-up at the delay).
    """
    s = ctx.settings
    num_train = ctx.data and ctx.data.num_train
    steps_per_epoch = (num_train // s["batch_size"]) if num_train and s["batch_size"] > 0 else 1
    base = {
        "data": s["data"],
        "model": "lenet5",
        "optimizer": "sgd",
        "momentum": 0.9,
        "epochs": s["epochs"],
        "batch_size": s["batch_size"],
        "learning_rate": s["learning_rates"],
        "seed": s["seeds"],
    }
    epochs_of = {}
    for w in s["warmup_epochs"]:
        epochs_of.setdefault(int(round(w * steps_per_epoch)), w)
    delayed = {**base, "delay": s["delay"], "warmup_steps": sorted(epochs_of)}
    grids = [("no-delay", {**base, "delay": 0, "warmup_steps": 0}),
             (lambda c: f"warmup-{epochs_of[c['warmup_steps']]:g}", delayed)]
    return study.training_configs(grids, num_train)


def summarize(records: list[dict], steps_per_epoch: int) -> list[dict]:
    """Per config: accuracy when its warm-up ends, its peak (and epoch), final accuracy, divergence."""
    rows = []
    for r in records:
        acc = r["test_accuracy_per_epoch"]
        finite = [(a, e + 1) for e, a in enumerate(acc) if a is not None]
        peak, peak_epoch = max(finite) if finite else (None, None)
        w_epochs = r["warmup_steps"] / steps_per_epoch
        end = min(len(acc), max(1, math.ceil(w_epochs))) if r["warmup_steps"] else None
        rows.append(
            {
                "learning_rate": r["learning_rate"],
                "delay": r["delay"],
                "warmup_epochs": round(w_epochs, 2),
                "acc_at_warmup_end": acc[end - 1] if end else None,
                "peak": peak,
                "peak_epoch": peak_epoch,
                "final": r["test_accuracy"],
                "diverged_epoch": r.get("diverged_epoch"),
            }
        )
    return rows


def report(s: dict, rows: list[dict], dataset_name: str) -> str:
    table = curves.markdown_table(
        [
            "learning rate",
            "delay",
            "warm-up (epochs)",
            "acc at warm-up end",
            "peak acc",
            "peak epoch",
            "final acc",
            "diverged at epoch",
        ],
        [
            [
                r["learning_rate"],
                r["delay"],
                f"{r['warmup_epochs']:g}",
                r["acc_at_warmup_end"],
                r["peak"],
                r["peak_epoch"],
                r["final"],
                r["diverged_epoch"],
            ]
            for r in rows
        ],
        curves.fmt_value,
    )
    lines = [
        f"# Learning-rate warm-up under delay {s['delay']} (Jain et al. 2018) — {dataset_name}",
        "",
        f"LeNet-5, SGD with momentum 0.9, batch {s['batch_size']}, {s['epochs']} epochs; linear warm-up over "
        f"{s['warmup_epochs']} epochs (rows with delay 0 are the same learning rate without delay or warm-up).",
        "",
        table,
        "",
        "**The paper:** a learning-rate warm-up helps only at first; accuracy falls off once the full rate applies.",
        "",
        "**Here:**",
    ]
    for lr in sorted({r["learning_rate"] for r in rows}):
        group = [r for r in rows if r["learning_rate"] == lr and r["delay"] == s["delay"]]
        none = next((r for r in group if r["warmup_epochs"] == 0), None)
        for r in group:
            if r["warmup_epochs"] == 0 or none is None:
                continue
            faded = r["peak"] is not None and (r["final"] is None or r["final"] < r["peak"] - 0.05)
            lines.append(
                f"- lr {lr:.3g}, warm-up {r['warmup_epochs']:g} epochs: peak {curves.fmt_value(r['peak'])} at "
                f"epoch {r['peak_epoch']}, final {curves.fmt_value(r['final'])} "
                f"(no warm-up: final {curves.fmt_value(none['final'])}); "
                + (
                    "the gain faded after the peak (final more than 5 points below it)"
                    if faded
                    else "no fall of more than 5 points after the peak"
                )
                + (f"; diverged at epoch {r['diverged_epoch']}" if r["diverged_epoch"] else "")
                + "."
            )
    return "\n".join(lines) + "\n"


def finish(ctx, records) -> tuple[str, list[str]]:
    s = ctx.settings
    steps_per_epoch = ctx.data.num_train // s["batch_size"]
    rows = summarize(records, steps_per_epoch)
    panels, vlines = {}, {}
    for lr in sorted({r["learning_rate"] for r in records}):
        name = f"lr {lr:.3g}"
        panels[name], vlines[name] = [], []
        for k, r in enumerate(
            sorted(
                (r for r in records if r["learning_rate"] == lr),
                key=lambda r: (r["delay"], r["warmup_steps"]),
            )
        ):
            w = r["warmup_steps"] / steps_per_epoch
            label = "no delay" if r["method"] == "no-delay" else f"delay {r['delay']}, warm-up {w:g} ep"
            style = dict(color="black", linestyle="--") if r["method"] == "no-delay" else dict(color=f"C{k}")
            panels[name].append((label, r["test_accuracy_per_epoch"], style))
            if r["warmup_steps"]:
                vlines[name].append(w)
    curves.accuracy_curves(
        panels,
        ctx.figure("curves.png"),
        vlines=vlines,
        title=f"LeNet-5 on {s['data']}, SGD momentum 0.9, delay {s['delay']}: warm-up lengths",
    )
    return report(s, rows, ctx.data.name), []


STUDY = study.training_study(
    name=NAME, help=HELP, doc=__doc__, presets=PRESETS, options=OPTIONS, configs=make_configs, finish=finish
)
