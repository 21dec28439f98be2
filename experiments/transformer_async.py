"""Asynchronous SGD for a Transformer language model (Aji & Heafield 2019): plain, accumulated, synchronous.

Aji and Heafield ("Making asynchronous stochastic gradient descent work for
Transformers", WNGT 2019) find that

1. plain asynchronous SGD converges poorly for Transformers, or diverges;
2. summing about one gradient per worker at the server before applying it
   (global accumulation) restores convergence,
3. reaches the synchronous run's quality about 1.36x faster than synchronous
   training,
4. and is more robust to the learning rate (here: no more learning rates of the
   grid diverge, and the final loss moves less with the learning rate, than
   for plain asynchronous SGD).

They separate the batch-size effect from staleness with synchronous training at
the per-worker batch. Here a byte-level decoder-only Transformer
(:class:`asgd_jax.Transformer`, pre-LayerNorm) is trained on UTF-8 text
(``text:<path>``, default the Debian ``fortunes`` corpus; test loss in bits per
byte) by an Adam server with a linear learning-rate warm-up
(``--warmup-steps``, in gradients), ``N`` workers (``--workers``, default 4 and
8) with ``Normal(1, s^2)`` compute times (``--time-spread``), per-worker batch
``b`` (``--batch-size`` windows), each method over the same learning-rate grid
and seeds as one vmapped program per method and ``N``:

- ``sync``: synchronous, ``N`` workers x batch ``b`` (``server_rule="sync"``:
  every ``N`` gradients, their average; a round waits for the slowest worker);
- ``sync1``: synchronous with batch ``b`` only (one worker): the batch-size
  effect alone, as the paper does;
- ``async``: asynchronous, each arrival applied (staleness about ``N - 1``);
- ``global``: asynchronous with global accumulation, the server steps on the
  mean of ``k = N`` arrivals (``rules=("accumulate",)``, ``accumulate=N``);
- ``local``: asynchronous with local accumulation: each worker sums ``tau``
  gradients at its fetched parameters, then pushes and fetches
  (``server_rule="downpour"``, ``n_fetch = n_push = tau``, ``--tau``);
- ``dcasgd``: asynchronous with DC-ASGD-a's delay compensation (Zheng et al.
  2017; ``compensation="dc-a"``, lambda_0 = 2), another fix of staleness, for
  comparison;
- ``adaptive`` (not in the presets' methods): the delay-adaptive step
  ``min(1, N/staleness)`` (``rules=("adaptive",)``); it scales the gradient
  before the Adam server, whose update ignores a gradient's scale, so it
  changes almost nothing here.

Every method computes the same number of gradients (``--epochs`` evaluations,
``--steps-per-epoch`` gradients apart, each on a fresh random subset of the
training windows), so curves compare per gradient and in simulated time (units
of a gradient's mean compute time). Per method and ``N`` the learning rate with
the lowest final test loss (mean over seeds) is its best; the target is the
synchronous run's best final test loss; the time to target is the simulated time
at which a method's mean curve first reaches it (linear between evaluations).

Writes to ``--out`` (default ``runs/transformer_async-<preset>``):
``results.jsonl``, ``curves.png`` (best learning rate: bits per byte against
gradients and against simulated time, the target dashed), ``learning_rates.png``
(final bits per byte against the learning rate per method: robustness) and
``report.md`` (tables; each of the paper's findings with a verdict computed from
the numbers; ``--tolerance`` in bits per byte says what counts as "as good").

Presets: ``tiny`` (a smoke test), ``quick`` (minutes on a laptop CPU), ``medium``
(about 20 minutes on a 2-core CPU), ``paper`` (a wider, deeper model and longer
runs: a GPU run).
"""

from __future__ import annotations

import math

import numpy as np

from experiments import curves, plots, study
from experiments.common import UsageError, check_source

NAME = "transformer_async"
HELP = ("Aji & Heafield (2019): a byte-level Transformer LM trained by synchronous, plain asynchronous, globally and "
        "locally accumulated asynchronous SGD (Adam server with warm-up); bits per byte against gradients and time")

METHODS = ("sync", "sync1", "async", "global", "local", "dcasgd", "adaptive")
# The presets' methods: the delay-adaptive step is left out by default, since with an Adam server it changes
# (almost) nothing: it scales the gradient by min(1, N / staleness) before Adam, whose update is invariant to a
# gradient's scale, and the staleness of N workers is mostly below N anyway.
DEFAULT_METHODS = ("sync", "sync1", "async", "global", "local", "dcasgd")
LABELS = {"sync": "synchronous N x b", "sync1": "synchronous, batch b", "async": "asynchronous",
          "global": "async, global accumulation k = N", "local": "async, local accumulation tau",
          "dcasgd": "async, DC-ASGD-a", "adaptive": "async, delay-adaptive step"}
STYLE = {"sync": dict(color="black", ls="-"), "sync1": dict(color="tab:gray", ls=":"),
         "async": dict(color="tab:red", ls="-"), "global": dict(color="tab:blue", ls="-"),
         "local": dict(color="tab:green", ls="--"), "dcasgd": dict(color="tab:purple", ls="-."),
         "adaptive": dict(color="tab:orange", ls="-.")}
FORTUNES = "text:/usr/share/games/fortunes"
PAPER_SPEEDUP = 1.36

_COMMON = dict(data=FORTUNES, methods=list(DEFAULT_METHODS), timing="normal", time_spread=0.2, seeds=[0, 1],
               tolerance=0.05, heads=4)
PRESETS = {
    # A smoke test: a one-layer model, 4 workers, one learning rate and seed, 2 evaluations of 8 gradients.
    "tiny": dict(_COMMON, layers=1, width=32, heads=2, context=32, workers=[4], batch_size=4, learning_rates=[3e-3],
                 seeds=[0], epochs=2, steps_per_epoch=8, warmup_steps=4, tau=2, test_windows=16),
    # Minutes on a laptop CPU: 2 layers of width 64, context 64; 6 evaluations of 40 gradients of 8 windows
    # (66 runs in 11 programs, each compiling in about 15 s: 8 minutes measured on a 2-core CPU shared with
    # another job, 5.6 minutes of CPU time).
    "quick": dict(_COMMON, layers=2, width=64, context=64, workers=[4, 8], batch_size=8,
                  learning_rates=[1e-3, 3e-3, 1e-2], epochs=6, steps_per_epoch=40, warmup_steps=40, tau=4,
                  test_windows=64),
    # About 20 minutes on a 2-core CPU: 66 runs of 320 gradients, 11 programs (measured 20.3 minutes, 1 216 s,
    # with other work on the cores; about 20 s per run in chunks of 2, each program compiling in about 10 s).
    "medium": dict(_COMMON, layers=2, width=128, context=128, workers=[4, 8], batch_size=8,
                   learning_rates=[1e-3, 3e-3, 1e-2], epochs=8, steps_per_epoch=40, warmup_steps=60, tau=4,
                   test_windows=128),
    # A GPU run: 6 layers of width 512, context 256, batch 32 windows per worker, 40 evaluations of 500 gradients.
    "paper": dict(_COMMON, layers=6, width=512, heads=8, context=256, workers=[4, 8], batch_size=32,
                  learning_rates=[1e-4, 3e-4, 1e-3, 3e-3], epochs=40, steps_per_epoch=500, warmup_steps=2000, tau=4,
                  test_windows=1024),
}


def _check_data(spec: str) -> None:
    """One-line UsageError unless ``spec`` is a text source that exists (the default's error names the fix)."""
    if not (spec.startswith("text:") or spec.startswith("tfds:")):
        raise UsageError(f"--data {spec}: this study trains a language model on text; give text:<file or folder> "
                         "(e.g. text:/usr/share/games/fortunes) or tfds:tiny_shakespeare.")
    try:
        check_source(spec)
    except UsageError as e:
        hint = "; or pass --data text:<file or folder>" if spec == FORTUNES else ""
        raise UsageError(f"{e}{hint}") from None


OPTIONS = (
    study.Option("data", str, check=_check_data,
                 help="text:<UTF-8 file or folder> (default text:/usr/share/games/fortunes: apt-get install fortunes) "
                 "or tfds:tiny_shakespeare"),
    study.DATA_DIR, study.LOOP, study.CHUNK_SIZE,
    study.Option("methods", str, many=True, choices=METHODS,
                 help="comma-separated subset of " + ",".join(METHODS) + " (default all but adaptive)"),
    study.Option("workers", int, many=True, low=2, high=64, help="comma-separated worker counts N, e.g. 4,8"),
    study.Option("learning_rates", float, many=True, above=0, help="Adam learning rates, the same for every method"),
    study.Option("batch_size", int, low=1, help="windows per gradient (per worker)"),
    study.Option("layers", int, low=1), study.Option("width", int, low=1), study.Option("heads", int, low=1),
    study.Option("context", int, low=2, help="bytes per window (the model's context)"),
    study.EPOCHS,
    study.Option("steps_per_epoch", int, low=1, help="gradients between two evaluations"),
    study.Option("warmup_steps", int, low=0, help="linear learning-rate warm-up, in gradients"),
    study.Option("tau", int, low=1, help="local accumulation: gradients a worker sums before it pushes and fetches"),
    study.Option("test_windows", int, low=1, help="test windows evaluated (evenly spaced over the test text)"),
    study.Option("time_spread", float, low=0, help="std of the normal compute time (mean 1)"),
    study.Option("tolerance", float, low=0, help="bits per byte within which a final loss counts as reaching the "
                 "synchronous one (default 0.05)"),
    study.SEEDS,
)


def model_spec(s: dict) -> str:
    """The Transformer spec of the settings (:func:`asgd_jax.models.parse_model`)."""
    return f"transformer:layers={s['layers']},width={s['width']},heads={s['heads']},context={s['context']}"


def method_system(method: str, n: int, tau: int) -> dict:
    """The config fields that make ``method`` with ``n`` workers (see the module docstring)."""
    if method == "sync":
        return {"server_rule": "sync", "workers": n}
    if method == "sync1":
        return {"server_rule": "sync", "workers": 1}
    if method == "async":
        return {"server_rule": "async", "workers": n}
    if method == "global":
        return {"server_rule": "async", "workers": n, "rules": [("accumulate",)], "accumulate": n}
    if method == "local":
        return {"server_rule": "downpour", "workers": n, "n_fetch": tau, "n_push": tau}
    if method == "dcasgd":
        return {"server_rule": "async", "workers": n, "compensation": "dc-a"}
    if method == "adaptive":
        return {"server_rule": "async", "workers": n, "rules": [("adaptive",)]}
    raise ValueError(f"unknown method {method!r}; choose one of {METHODS}.")


def make_configs(ctx) -> list[dict]:
    s = ctx.settings
    _check_data(s["data"])  # before anything is read or written: a missing corpus says how to get it
    try:
        from asgd_jax.models import parse_model

        parse_model(model_spec(s))
    except ValueError as e:
        raise UsageError(str(e)) from None
    base = {"data": s["data"], "model": model_spec(s), "optimizer": "adam", "epochs": s["epochs"],
            "steps_per_epoch": s["steps_per_epoch"], "batch_size": s["batch_size"], "system": "async",
            "timing": s["timing"], "time_spread": s["time_spread"], "warmup_steps": s["warmup_steps"],
            "seed": s["seeds"], "learning_rate": s["learning_rates"]}
    grids = []
    for m in METHODS:
        if m not in s["methods"]:
            continue
        for n in ([1] if m == "sync1" else s["workers"]):  # sync1 has one worker: the same runs for every N
            system = method_system(m, n, s["tau"])
            grids.append((m, {**base, **system, "max_workers": system["workers"]}))
    num_train = None if ctx.data is None else ctx.data.num_train
    return study.training_configs(grids, num_train)


def load(ctx):
    from experiments import sources

    s = ctx.settings
    try:
        return sources.load_text_source(s["data"], s["context"], max_test_windows=s["test_windows"],
                                        data_dir=ctx.run["data_dir"]).to_device()
    except sources.DataSourceError as e:
        hint = ("; install the corpus with apt-get install fortunes, or pass --data text:<file or folder>"
                if s["data"] == FORTUNES else "")
        raise UsageError(str(e) + hint) from None


def head(ctx) -> str:
    d = ctx.data
    return (f"on {d.name} ({d.num_train} train / {d.num_test} test windows of {d.image_shape[0]} bytes, "
            f"{model_spec(ctx.settings)})")


# --- analysis ----------------------------------------------------------------------------------------------


def _mean_curves(rs: list[dict], key: str) -> list[float | None]:
    arr = np.array([[np.nan if v is None else v for v in (r.get(key) or [])] for r in rs], float)
    if arr.size == 0:
        return []
    with np.errstate(all="ignore"):
        m = np.nanmean(arr, axis=0) if not np.isnan(arr).all() else np.full(arr.shape[1], np.nan)
        m = np.where(np.isnan(arr).any(axis=0), np.nan, m)  # a point any seed lost (diverged) is lost
    return [None if not np.isfinite(v) else float(v) for v in m]


def _final(r: dict) -> float:
    v = r.get("bits_per_byte")
    return float(v) if v is not None and not r.get("diverged") else math.inf


def time_to_target(times, losses, target: float) -> float | None:
    """The simulated time at which a curve first reaches ``target`` (linear between evaluations; None: never).

    >>> time_to_target([10, 20, 30], [3.0, 2.0, 1.0], 1.5)
    25.0
    """
    prev = None
    for t, v in zip(times, losses):
        if t is None or v is None:
            prev = None
            continue
        if v <= target:
            if prev is None or prev[1] == v:
                return float(t)
            (t0, v0) = prev
            return float(t0 + (t - t0) * (v0 - target) / (v0 - v))
        prev = (t, v)
    return None


def summarize(records: list[dict], workers: list[int], steps_per_epoch: int) -> dict:
    """Per (N, method): every learning rate's mean final bits per byte, the best one, its mean curves."""
    out = {}
    for n in workers:
        for m in METHODS:
            rs = [r for r in records if r["method"] == m and (m == "sync1" or r["workers"] == n)]
            if not rs:
                continue
            by_lr = {}
            for lr in sorted({r["learning_rate"] for r in rs}):
                group = [r for r in rs if r["learning_rate"] == lr]
                finals = [_final(r) for r in group]
                by_lr[lr] = {"final": float(np.mean(finals)) if all(map(math.isfinite, finals)) else math.inf,
                             "diverged": any(r.get("diverged") for r in group), "runs": group}
            lr = min(by_lr, key=lambda k: (by_lr[k]["final"], k))
            group = by_lr[lr]["runs"]
            bpb = _mean_curves(group, "bits_per_byte_per_epoch")
            out[(n, m)] = {
                "lr": lr, "final": by_lr[lr]["final"], "bpb": bpb,
                "time": _mean_curves(group, "sim_time_per_epoch"),
                "steps": _mean_curves(group, "server_steps_per_epoch"),
                "gradients": [steps_per_epoch * (e + 1) for e in range(len(bpb))],
                "accuracy": _mean_curves(group, "test_accuracy_per_epoch"),
                "all": {k: (v["final"], v["diverged"]) for k, v in by_lr.items()},
            }
    for n in workers:
        sync = out.get((n, "sync"))
        target = None if sync is None or not math.isfinite(sync["final"]) else sync["final"]
        for m in METHODS:
            b = out.get((n, m))
            if b is None:
                continue
            b["target"] = target
            b["time_to_target"] = None if target is None else time_to_target(b["time"], b["bpb"], target)
    return out


def sensitivity(b: dict) -> tuple[int, float]:
    """How much a method's final loss depends on the learning rate: (diverged learning rates, mean excess).

    The mean excess is the mean over the learning rates that did not diverge of (final loss − the method's
    best final loss), in bits per byte.

    >>> sensitivity({"all": {0.1: (2.0, False), 0.3: (2.5, False), 1.0: (math.inf, True)}})
    (1, 0.25)
    """
    finals = [f for f, d in b["all"].values() if not d and math.isfinite(f)]
    diverged = sum(1 for f, d in b["all"].values() if d or not math.isfinite(f))
    return diverged, (float(np.mean(finals) - min(finals)) if finals else math.inf)


def _fmt(v, digits=3) -> str:
    return "–" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.{digits}f}"


def verdicts(best: dict, workers: list[int], tolerance: float) -> list[dict]:
    """The paper's four findings, each with per-N evidence ``(text, passed)`` and a verdict computed from them."""
    def verdict(checks):
        known = [ok for _, ok in checks if ok is not None]
        return "not tested" if not known else "agrees" if all(known) else "does not agree"

    def get(n, m):
        return best.get((n, m))

    out = []
    checks = []
    for n in workers:
        a, s = get(n, "async"), get(n, "sync")
        if a and s and math.isfinite(s["final"]):
            worse = a["final"] > s["final"] + tolerance
            div = [lr for lr, (f, d) in a["all"].items() if d and not s["all"].get(lr, (0, False))[1]]
            text = (f"N = {n}: asynchronous {_fmt(a['final'])} bits/byte at its best lr {a['lr']:g} vs synchronous "
                    f"{_fmt(s['final'])}" + (f"; diverged at lr {', '.join(f'{v:g}' for v in div)} where "
                                             "synchronous did not" if div else ""))
            checks.append((text, worse or bool(div)))
    out.append({"claim": "plain asynchronous SGD converges poorly (final test loss worse than synchronous by more "
                f"than {tolerance:g} bits/byte) or diverges", "checks": checks, "verdict": verdict(checks)})
    checks = []
    for n in workers:
        g, s = get(n, "global"), get(n, "sync")
        if g and s and math.isfinite(s["final"]):
            checks.append((f"N = {n}: global accumulation {_fmt(g['final'])} bits/byte vs synchronous "
                           f"{_fmt(s['final'])}", g["final"] <= s["final"] + tolerance))
    out.append({"claim": f"global accumulation (k = N) restores convergence (final test loss within {tolerance:g} "
                "bits/byte of synchronous)", "checks": checks, "verdict": verdict(checks)})
    checks = []
    for n in workers:
        g, s = get(n, "global"), get(n, "sync")
        if g and s and s.get("time_to_target") is not None:
            tg, ts = g.get("time_to_target"), s["time_to_target"]
            ratio = None if tg is None or tg <= 0 else ts / tg
            checks.append((f"N = {n}: synchronous reaches its final {_fmt(s['target'])} bits/byte at simulated "
                           f"time {_fmt(ts, 1)}, global accumulation at {_fmt(tg, 1)}"
                           + ("" if ratio is None else f": {ratio:.2f}x faster (paper: {PAPER_SPEEDUP}x)"),
                           ratio is not None and ratio > 1.0))
    out.append({"claim": f"global accumulation reaches the synchronous run's final test loss faster than synchronous "
                f"training (paper: about {PAPER_SPEEDUP}x)", "checks": checks, "verdict": verdict(checks)})
    checks = []
    for n in workers:
        g, a, s = get(n, "global"), get(n, "async"), get(n, "sync")
        if g and a and len(g["all"]) > 1:
            (dg, eg), (da, ea) = sensitivity(g), sensitivity(a)
            text = (f"N = {n}: over the {len(g['all'])} learning rates, global accumulation diverged at {dg} and ended "
                    f"on average {_fmt(eg, 2)} bits/byte above its best; asynchronous diverged at {da} and ended "
                    f"{_fmt(ea, 2)} above its best")
            if s and math.isfinite(s["final"]):
                near = lambda b: sum(f <= s["final"] + tolerance for f, _ in b["all"].values())
                text += (f" (learning rates within {tolerance:g} bits/byte of synchronous: global accumulation "
                         f"{near(g)}, asynchronous {near(a)}, synchronous {near(s)})")
            checks.append((text, (dg, eg) <= (da, ea)))
    out.append({"claim": "global accumulation is more robust to the learning rate than plain asynchronous SGD (no "
                "more diverged learning rates, and, at equal divergences, a final loss that moves less with the "
                "learning rate)", "checks": checks, "verdict": verdict(checks)})
    return out


def report(ctx, best: dict, found: list[dict]) -> str:
    s = ctx.settings
    workers = s["workers"]
    lrs = s["learning_rates"]
    rows = []
    for n in workers:
        for m in METHODS:
            b = best.get((n, m))
            if b is None:
                continue
            t, t_sync = b.get("time_to_target"), best.get((n, "sync"), {}).get("time_to_target")
            speed = None if t is None or t_sync is None or t <= 0 else t_sync / t
            per_lr = (b["all"].get(lr, (None, False)) for lr in lrs)
            rows.append([n, LABELS[m], f"{b['lr']:g}", _fmt(b["final"]),
                         _fmt(b["accuracy"][-1] if b["accuracy"] else None),
                         _fmt(b["time"][-1] if b["time"] else None, 1), _fmt(t, 1),
                         "–" if speed is None else f"{speed:.2f}x",
                         " ".join("†" if d else _fmt(f, 2) for f, d in per_lr)])
    table = curves.markdown_table(
        ["N", "method", "best lr", "final bits/byte", "next-byte accuracy", "simulated time at end",
         "time to sync's final loss", "speed-up vs sync", "final bits/byte per lr (" + ", ".join(f"{v:g}" for v in lrs)
         + "; † diverged)"], rows)
    d = ctx.data
    grads = s["epochs"] * s["steps_per_epoch"]
    lines = [
        f"# Asynchronous SGD for a Transformer — {model_spec(s)} on {d.name}",
        "",
        f"Byte-level language model (vocabulary 256), windows of {s['context']} bytes: {d.num_train} training and "
        f"{d.num_test} test windows (the last 10 % of the text is the test text). Adam server (learning rates "
        f"{', '.join(f'{v:g}' for v in lrs)}) with a linear warm-up over {s['warmup_steps']} gradients; "
        f"{grads} gradients of {s['batch_size']} windows per run ({s['epochs']} evaluations, {s['steps_per_epoch']} "
        f"gradients apart); workers N = {', '.join(map(str, workers))} with {study.timing_text(s)}; local "
        f"accumulation tau = {s['tau']}; seeds {s['seeds']}. Per method and N, the learning rate with the lowest "
        "final test loss (mean over seeds); the target is the synchronous run's final test loss; times are "
        "simulated, in mean gradient compute times (the synchronous batch-b run has one worker).",
        "",
        table,
        "",
        "## The paper's findings (Aji & Heafield 2019), checked against these numbers",
        "",
    ]
    for i, c in enumerate(found, 1):
        lines.append(f"{i}. **{c['verdict']}**: {c['claim']}.")
        lines += [f"   - {text}{'' if ok is None else ' — ' + ('yes' if ok else 'no')}" for text, ok in c["checks"]]
    lines += ["", f"Caveats: {len(s['seeds'])} seed(s), {len(lrs)} learning rate(s), {grads} gradients per run on a "
              "small model and corpus (the paper trains a Transformer-base translation model to convergence and "
              "reports BLEU); time to target is read off the evaluation points (linear between them); simulated "
              "time comes from the compute-time model, not a measured cluster."]
    return "\n".join(lines) + "\n"


def plot(ctx, best: dict) -> None:
    s = ctx.settings
    title = f"{s['layers']} layers x {s['width']}, context {s['context']}, on {ctx.data.name}"
    curves_, by_lr, targets = {}, {}, {}
    for n in s["workers"]:  # one row per N: against gradients (left), against simulated time (right)
        g, t, l = f"N = {n}: against gradients", f"N = {n}: against simulated time", f"N = {n}"
        curves_[g], curves_[t], by_lr[l] = [], [], []
        for m in METHODS:
            b = best.get((n, m))
            if b is None:
                continue
            label = f"{LABELS[m]} (lr {b['lr']:g})"
            curves_[g].append(dict(label=label, x=b["gradients"], y=b["bpb"], **STYLE[m]))
            curves_[t].append(dict(label=label, x=b["time"], y=b["bpb"], **STYLE[m]))
            lrs = sorted(b["all"])
            finals = [b["all"][v][0] if math.isfinite(b["all"][v][0]) else None for v in lrs]
            by_lr[l].append(dict(label=LABELS[m], x=lrs, y=finals, **STYLE[m]))
            if b.get("target") is not None:
                targets[g] = targets[t] = targets[l] = [b["target"]]
    plots.curve_panels(curves_, ctx.figure("curves.png"), xlabel="gradients (left), simulated time (right)",
                       ylabel="test loss (bits per byte)", cols=2, hlines=targets,
                       title=f"{title}\ntest loss at each method's best learning rate (dashed: synchronous final)")
    plots.curve_panels(by_lr, ctx.figure("learning_rates.png"), xlabel="learning rate", ylabel="final bits per byte",
                       logx=True, hlines=targets, title=f"{title}\nfinal test loss per learning rate (gaps: diverged)")


def finish(ctx, records) -> tuple[str, list[str]]:
    s = ctx.settings
    best = summarize(records, s["workers"], s["steps_per_epoch"])
    found = verdicts(best, s["workers"], s["tolerance"])
    plot(ctx, best)
    return report(ctx, best, found), [f"finding {i}: {c['verdict']}" for i, c in enumerate(found, 1)]


def check(s: dict, given: set) -> dict:
    if s["width"] % s["heads"]:
        raise UsageError(f"--heads {s['heads']} does not divide --width {s['width']}; choose a width that is a "
                         "multiple of the heads.")
    if "local" in s["methods"] and s["tau"] > s["steps_per_epoch"] * s["epochs"] // max(s["workers"]):
        raise UsageError(f"--tau {s['tau']}: a worker computes only about {s['steps_per_epoch'] * s['epochs']} / "
                         f"{max(s['workers'])} gradients in a run; use a smaller tau or more gradients.")
    return s


STUDY = study.training_study(
    name=NAME, help=HELP, doc=__doc__, presets=PRESETS, options=OPTIONS, configs=make_configs, finish=finish,
    check=check, load=load, head=head, record_fields=("bits_per_byte",),
)
