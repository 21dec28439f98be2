"""``python -m experiments benchmark --gpu-report``: the whole GPU check in one run, one JSON.

On a machine with a GPU (or TPU) and this project installed, it

1. prints the devices, and refuses to go on (one line, exit status 2, before
   anything is compiled) when jax has only a CPU, unless ``--allow-cpu`` (a
   smoke run);
2. times the throughput table at the size of the timed grid's groups: ``K`` =
   the most configs :func:`asgd_jax.sweep.group_configs` puts in one group of
   ``delay_sweep --preset <--grid-preset>`` (60 for ``paper``: 10 learning rates
   × 6 delays per batch size), on ``n`` random MNIST-shaped images (``n`` of
   ``--grid-data random:<n>``), per batch size of ``--batch-sizes``: the engine
   (its default driver and chunk, as :func:`experiments.benchmark._measure`
   times it) and, when ``torch`` can be imported, the PyTorch baseline
   (:func:`experiments.torch_baseline.measure`, on the GPU when torch sees one; it shares the GPU with
   the memory jax preallocated, which leaves it a quarter: plenty for LeNet-5);
3. runs ``delay_sweep --preset <--grid-preset> --data <--grid-data>`` in this
   process, into a fresh temporary folder (so nothing is skipped as already
   done), and times it: ``grid.wall_s`` is the whole command (data, compiling,
   training, report), ``grid.training_s`` the sum of its chunks' wall times;
4. writes ``gpu_report.json`` to ``--out`` after every step: backend, devices,
   versions, the throughput rows and their engine/PyTorch ratios, the grid's
   times, and the goals (the Figure 2 grid in at most 120 s; at least 50×
   PyTorch's samples/s at batch 64) with whether each was met (``null``: not
   measured, or not measured at the goal's size).

A budget guard (``--budget``, default 480 s): each step runs under a timer set
to what is left of the budget; a step the timer stops (at the next return to
Python, at most an epoch later) is marked ``"stopped at the budget"``, later
steps ``"skipped: budget spent"``, and the JSON is written all the same.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import platform
import signal
import tempfile
import time


from experiments import common
from experiments.study import Option

# The goals of issue 19, as (key, description, limit).
GRID_GOAL_S = 120.0
TORCH_GOAL_RATIO = 50.0
TORCH_GOAL_BATCH = 64
PAPER_GRID = ("paper", "random:60000")


class _OverBudget(BaseException):
    """Raised by the budget timer; a BaseException so that no ``except Exception`` on the way swallows it."""


@contextlib.contextmanager
def _deadline(seconds: float):
    """Raises :class:`_OverBudget` in this (the main) thread once ``seconds`` have passed."""

    def ring(signum, frame):
        raise _OverBudget()

    previous = signal.signal(signal.SIGALRM, ring)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.001))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def grid_group_size(preset: str) -> tuple[int, int, int]:
    """``(configs, groups, largest group)`` of ``delay_sweep --preset preset`` (from its configs; no data read)."""
    from asgd_jax import sweep
    from experiments import delay_sweep, study

    s = dict(delay_sweep.PRESETS[preset])
    ctx = study.Context(delay_sweep.STUDY, preset, s, set(), {})
    configs = [{k: v for k, v in c.items() if k != "method"} for c in delay_sweep.make_configs(ctx)]
    groups = sweep.group_configs(configs)
    return len(configs), len(groups), max(len(g.configs) for g in groups)


def _parse(args) -> dict:
    """The report's settings from the command line; one-line UsageErrors."""
    from experiments import delay_sweep

    if args.grid_preset not in delay_sweep.PRESETS:
        raise common.UsageError(f"--grid-preset {args.grid_preset!r}: choose one of {', '.join(delay_sweep.PRESETS)}.")
    scheme, _, n = args.grid_data.partition(":")
    if scheme != "random" or not n.isdigit() or int(n) < 1:
        raise common.UsageError(f"--grid-data {args.grid_data!r}: write random:<n>, e.g. random:60000 (the report "
                                "times random data of MNIST's size; no download).")
    samples = int(n)
    return {
        "samples": samples,
        "batch_sizes": Option("batch_sizes", int, many=True, low=1, high=samples).parse(args.batch_sizes),
        "budget": Option("budget", float, above=0).parse(args.budget),
        "preset": args.grid_preset,
        "data": args.grid_data,
    }


def _throughput(report: dict, s: dict, k: int, torch_device: str | None) -> None:
    """Fills ``report["throughput"]`` row by row (PyTorch first: it shares the machine with nothing yet)."""
    from asgd_jax import TrainConfig, Trainer
    from experiments import benchmark

    rows = report["throughput"]
    if torch_device is not None:
        from experiments import torch_baseline

        for b in s["batch_sizes"]:
            rate = torch_baseline.measure(b, delay=4, samples=s["samples"], threads=os.cpu_count() or 1,
                                          device=torch_device)
            rows.append({"batch_size": b, "driver": f"torch ({torch_device})", "configs": 1,
                         "config_samples_per_s": rate, "torch": True})
            print(f"batch {b:5d}  {rows[-1]['driver']:<26} {rate:12.0f} samples/s", flush=True)
    ds = benchmark.random_mnist_dataset(s["samples"])
    mesh, per_call, label = benchmark.engine_layout(k)  # what run_group does with the group here
    kk = -(-k // per_call) * per_call
    label += f", K={kk}"
    for b in s["batch_sizes"]:
        trainer = Trainer(TrainConfig(batch_size=b, epochs=2, max_delay=8), ds)
        rate = benchmark._measure(trainer, kk, "auto", per_call, mesh)
        rows.append({"batch_size": b, "driver": label, "configs": kk, "config_samples_per_s": rate, "engine": True})
        print(f"batch {b:5d}  {label:<26} {rate:12.0f} config-samples/s", flush=True)


def _summary(rows: list[dict]) -> list[dict]:
    out = []
    for b in sorted({r["batch_size"] for r in rows}):
        eng = next((r["config_samples_per_s"] for r in rows if r["batch_size"] == b and r.get("engine")), None)
        tor = next((r["config_samples_per_s"] for r in rows if r["batch_size"] == b and r.get("torch")), None)
        out.append({"batch_size": b, "engine_config_samples_per_s": eng, "torch_samples_per_s": tor,
                    "ratio_engine_to_torch": eng / tor if eng and tor else None})
    return out


def _grid(report: dict, s: dict) -> None:
    """Runs and times the grid in this process, in a temporary folder; fills ``report["grid"]``."""
    from experiments.__main__ import main as cli

    grid = report["grid"]
    with tempfile.TemporaryDirectory(prefix="gpu-report-grid-") as tmp:
        t0 = time.perf_counter()
        rc = cli(["delay_sweep", "--preset", s["preset"], "--data", s["data"], "--out", tmp])
        grid["wall_s"] = time.perf_counter() - t0
        if rc != 0:
            raise RuntimeError(f"delay_sweep exited with status {rc}")
        with open(os.path.join(tmp, "timing.jsonl"), encoding="utf-8") as f:
            seconds = [json.loads(line)["seconds"] for line in f if line.strip()]
        grid["configs_run"] = len(seconds)
        grid["training_s"] = float(sum(seconds))


def _goals(report: dict, s: dict) -> dict:
    grid, at_paper = report["grid"], (s["preset"], s["data"]) == PAPER_GRID
    wall = grid.get("wall_s") if grid["status"] == "done" else None
    ratio = next((r["ratio_engine_to_torch"] for r in report["summary"] if r["batch_size"] == TORCH_GOAL_BATCH),
                 None)
    at_size = report["throughput_at_paper_size"]
    return {
        "grid_wall_s": {"goal": f"the Figure 2 grid (delay_sweep --preset paper --data random:60000) in at most "
                                f"{GRID_GOAL_S:g} s", "limit_s": GRID_GOAL_S, "value": wall,
                        "met": (wall <= GRID_GOAL_S) if wall is not None and at_paper else None},
        "torch_ratio_batch_64": {"goal": f"at least {TORCH_GOAL_RATIO:g}x PyTorch's samples/s at batch "
                                         f"{TORCH_GOAL_BATCH}, at the paper grid's group size",
                                 "min_ratio": TORCH_GOAL_RATIO, "value": ratio,
                                 "met": (ratio >= TORCH_GOAL_RATIO) if ratio is not None and at_size else None},
    }


def _write(out: str, report: dict) -> str:
    path = os.path.join(out, "gpu_report.json")
    common.write_text(path, json.dumps(common.jsonable(report), indent=2))
    return path


def run(args) -> int:
    """``benchmark --gpu-report``; see the module docstring."""
    s = _parse(args)
    import jax

    backend = jax.default_backend()
    if backend == "cpu" and not args.allow_cpu:
        raise common.UsageError("--gpu-report needs a GPU or TPU, and jax sees only a CPU here (for CUDA: pip "
                                "install -U \"jax[cuda12]\"); add --allow-cpu for a smoke run on the CPU.")
    t_start = time.perf_counter()
    out = common.prepare_out_dir(args.out)
    devices = [str(d) for d in jax.devices()]
    print(f"backend {backend}; devices: {', '.join(devices)}", flush=True)
    configs, groups, k = grid_group_size(s["preset"])
    torch_device = None
    if importlib.util.find_spec("torch") is not None:
        import torch

        torch_device = "cuda" if backend == "gpu" and torch.cuda.is_available() else "cpu"
    report = {
        "backend": backend, "devices": devices, "jax": jax.__version__,
        "torch": None if torch_device is None else __import__("torch").__version__, "torch_device": torch_device,
        "machine": platform.machine(), "cpus": os.cpu_count(), "budget_s": s["budget"],
        "command": f"python -m experiments benchmark --gpu-report --grid-preset {s['preset']} --grid-data "
                   f"{s['data']} --batch-sizes {','.join(map(str, s['batch_sizes']))} --budget {s['budget']:g}"
                   + (" --allow-cpu" if args.allow_cpu else ""),
        "group_configs": k, "samples": s["samples"],
        "throughput_at_paper_size": (s["preset"], s["data"]) == PAPER_GRID,
        "throughput": [], "summary": [], "steps": {},
        "grid": {"preset": s["preset"], "data": s["data"], "configs": configs, "groups": groups},
    }
    print(f"the {s['preset']} grid: {configs} configs in {groups} groups of up to {k}; throughput at K={k} on "
          f"{s['samples']} samples; PyTorch: {torch_device or 'not installed'}", flush=True)
    steps = (("throughput", lambda: _throughput(report, s, k, torch_device)), ("grid", lambda: _grid(report, s)))
    for name, step in steps:
        left = s["budget"] - (time.perf_counter() - t_start)
        t0 = time.perf_counter()
        if left <= 0:
            status = "skipped: budget spent"
        else:
            try:
                with _deadline(left):
                    step()
                status = "done"
            except _OverBudget:
                status = "stopped at the budget"
            except Exception as e:  # noqa: BLE001 - the report says what failed and goes on to the next step
                status = f"failed: {type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
        report["steps"][name] = {"status": status, "seconds": time.perf_counter() - t0}
        if name == "grid":
            report["grid"]["status"] = status
        report["summary"] = _summary(report["throughput"])
        report["goals"] = _goals(report, s) if "status" in report["grid"] else None
        report["elapsed_s"] = time.perf_counter() - t_start
        _write(out, report)
        print(f"{name}: {status} ({report['steps'][name]['seconds']:.1f} s)", flush=True)
    for r in report["summary"]:
        ratio = r["ratio_engine_to_torch"]
        print(f"batch {r['batch_size']:5d}  engine/torch " + ("n/a" if ratio is None else f"{ratio:.2f}x"))
    for g in report["goals"].values():
        met = {True: "met", False: "NOT met", None: "not measured" if g["value"] is None else
               "not measured at the goal's size"}[g["met"]]
        value = "n/a" if g["value"] is None else f"{g['value']:.2f}"
        print(f"goal: {g['goal']}: {value} -> {met}")
    print(f"wrote {_write(out, report)} in {report['elapsed_s']:.1f} s")
    return 0
