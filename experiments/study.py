"""The one skeleton every study runs on.

A study (a module of :mod:`experiments`) supplies a :class:`Study`: its presets
(dicts of settings), a declarative table of :class:`Option` (each overrides one
setting), ``configs`` (the configs of its settings, each carrying its own
``"method"`` label), ``plan`` (the configs split into units, each of which
trains a group of configs and returns their records) and ``finish`` (analysis,
figures and report text from the records).

:func:`run` owns everything else, the same way for every study: the command
line built from the option tables; every check before any data is read or
anything compiles (one-line :class:`~experiments.common.UsageError`); the
output folder; resume (an append-only :class:`~experiments.common.ResultsFile`
keyed by ``config_id``: rerunning the same command skips finished configs and
never rewrites a line); ``study.json``; several processes (``--distributed``:
process ``p`` runs every ``P``-th unit still to do, then process 0 merges);
progress bars; atomic writes of the figures and ``report.md``; the final
summary line.

``config_id`` is the library's hash of a config *without* its label fields
(``Study.label_fields``, default ``("method",)``), so results folders written
before the labels existed still resume, and two methods that happen to be the
same config (e.g. Downpour's warm start and gradual introduction with two
workers) share one record while each keeps its own row.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import time
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from experiments import sources
from experiments.common import (
    ResultsFile,
    UsageError,
    check_source,
    jsonable,
    load_data,
    claim_out_dir,
    prepare_out_dir,
    progress,
    write_text,
)


# --- options -----------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Option:
    """One command-line option: the setting it overrides, its type and what values it accepts.

    ``kind``: ``int``, ``float``, ``str`` or ``bool`` (a flag that stores ``store``).
    ``many``: a comma-separated list (no empty item; no value twice unless not ``unique``).
    ``low``/``high``: inclusive bounds; ``above``/``below``: exclusive bounds.
    ``choices``: the allowed values. ``check``: ``value -> None`` raising UsageError.
    ``applies``: ``settings -> None`` when the option applies to them, else the fix to print.
    ``run_option``: how to run, not what (kept out of the settings in ``study.json``).
    """

    key: str
    kind: type = float
    many: bool = False
    help: str = ""
    low: float | None = None
    high: float | None = None
    above: float | None = None
    below: float | None = None
    choices: Sequence | None = None
    check: Callable[[Any], None] | None = None
    applies: Callable[[dict], str | None] | None = None
    run_option: bool = False
    unique: bool = True
    store: Any = True
    flag: str | None = None
    metavar: str | None = None

    @property
    def name(self) -> str:
        return self.flag or "--" + self.key.replace("_", "-")

    def parse(self, text) -> Any:
        """The value of ``text`` (a list when ``many``), checked; one-line UsageError otherwise."""
        if self.kind is bool:
            return self.store
        if not self.many:
            return self._item(str(text).strip())
        items = [t.strip() for t in str(text).split(",")]
        if not any(items):
            raise UsageError(f"{self.name} needs at least one value, e.g. {self.name} {self._example()}.")
        if not all(items):
            raise UsageError(f"{self.name} {text!r} has an empty item; write e.g. {self.name} {self._example()}.")
        values = [self._item(t) for t in items]
        if not self.unique:
            return values
        seen = set()
        for t, v in zip(items, values):
            if v in seen:
                raise UsageError(f"{self.name}: {t!r} is given twice; give each value once.")
            seen.add(v)
        return values

    def _example(self) -> str:
        if self.choices:
            return ",".join(map(str, list(self.choices)[:2]))
        return "1,2" if self.kind is int else "0.1,0.2" if self.kind is float else "a,b"

    def _item(self, t: str) -> Any:
        what = f"{self.name}" + (" (each value)" if self.many else "")
        if self.kind in (int, float):
            try:
                v = float(t)
            except ValueError:
                raise UsageError(
                    f"{what}: {t!r} is not a{'n integer' if self.kind is int else ' number'}."
                ) from None
            if not math.isfinite(v):
                raise UsageError(f"{what}: {t!r} is not a finite number.")
            if self.kind is int:
                if v != int(v):
                    raise UsageError(f"{what}: {t!r} is not an integer.")
                v = int(v)
            self.check_range(v)
        else:
            v = t
            if not v:
                raise UsageError(f"{self.name} needs a value.")
        if self.choices is not None and v not in self.choices:
            raise UsageError(f"{what}: unknown {v!r}; choose from {', '.join(map(str, self.choices))}.")
        if self.check is not None:
            self.check(v)
        return v

    def check_range(self, v) -> None:
        what = self.name + (" (each value)" if self.many else "")
        if self.above is not None and not v > self.above:
            raise UsageError(f"{what} must be > {self.above:g}, got {v:g}.")
        if self.low is not None and v < self.low:
            raise UsageError(f"{what} must be >= {self.low:g}, got {v:g}.")
        if self.high is not None and v > self.high:
            raise UsageError(f"{what} must be <= {self.high:g}, got {v:g}.")
        if self.below is not None and not v < self.below:
            raise UsageError(f"{what} must be < {self.below:g}, got {v:g}.")


def not_for(key: str, values: Iterable, why: str = "") -> Callable[[dict], str | None]:
    """``applies=`` for an option that means nothing when ``settings[key]`` is one of ``values``."""
    values = tuple(values)

    def applies(s: dict) -> str | None:
        if s.get(key) in values:
            return f"does not apply to --{key.replace('_', '-')} {s[key]}{why}; leave it out."
        return None

    return applies


def only_for(key: str, values: Iterable, why: str = "") -> Callable[[dict], str | None]:
    """``applies=`` for an option that means something only when ``settings[key]`` is one of ``values``."""
    values = tuple(values)

    def applies(s: dict) -> str | None:
        if s.get(key) not in values:
            return (f"applies only to --{key.replace('_', '-')} {'/'.join(map(str, values))} (got {s.get(key)})"
                    f"{why}; leave it out.")
        return None

    return applies


# Options shared by the studies that train through asgd_jax.Trainer.
DATA = Option("data", str, help=sources.SOURCES_HELP, check=check_source)
def _tfds_only(s: dict) -> str | None:
    if not str(s.get("data", "")).startswith("tfds:"):
        return f"applies only to --data tfds:<name> (got {s.get('data')}); leave it out."
    return None


DATA_DIR = Option("data_dir", str, help="TFDS data directory (tfds: sources only)", run_option=True,
                  applies=_tfds_only)
LOOP = Option("loop", str, choices=("auto", "step", "scan"), run_option=True,
              help="scan (auto): each epoch one compiled program; step: one jitted step per call from Python")
CHUNK_SIZE = Option("chunk_size", int, low=0, run_option=True,
                    help="configs vmapped per call and device (default: 1 per core on CPU, which runs as one "
                    "device per core; 2 on a CPU left as one device; the whole group on GPU/TPU; 0 = whole group)")
MICROBATCH = Option("microbatch", int, low=0, run_option=True,
                    help="samples per micro-batch of each gradient, summed (speed and memory; the same maths up to "
                    "float rounding; 0 = the whole batch; default: auto, 32 for LeNet-5 batches of 128+ on a CPU)")
SEEDS = Option("seeds", int, many=True, help="comma-separated seeds, e.g. 0,1,2")
EPOCHS = Option("epochs", int, low=1)


def momentum_option(help: str = "SGD momentum", **kw) -> Option:
    """``--momentum``: a number in [0, 1) (1 never forgets a gradient; above 1 or below 0 diverges)."""
    return Option("momentum", float, low=0, below=1, help=help, **kw)
TRAINING = (DATA, DATA_DIR, LOOP, CHUNK_SIZE, MICROBATCH)
RUN_DEFAULTS = {"loop": "auto", "chunk_size": None, "data_dir": None, "microbatch": None}


def timing_options(spread_help: str, laws: Sequence[str] | None = None) -> tuple[Option, Option]:
    """``--timing`` (a law of :data:`asgd_jax.timing.LAWS`) and ``--time-spread`` (its spread)."""
    from asgd_jax.timing import LAWS

    laws = tuple(laws or LAWS)
    return (
        Option("timing", str, choices=laws, help="compute-time law, mean 1: " + ", ".join(laws)),
        Option("time_spread", float, low=0, help=spread_help,
               applies=not_for("timing", ("fixed", "exponential"), " (no spread)")),
    )


def timing_text(s: dict) -> str:
    """How a report names the compute-time law of ``s`` (the spread only where the law has one)."""
    if s["timing"] in ("fixed", "exponential"):
        return f"{s['timing']} compute times (mean 1)"
    return f"{s['timing']} compute times (mean 1, spread {s['time_spread']:g})"


# --- the study -----------------------------------------------------------------------------------------


@dataclasses.dataclass
class Context:
    """What a study's functions see: the settings, where to write, the data, how to run."""

    study: "Study"
    preset: str
    settings: dict
    given: set
    run: dict
    out: str = ""
    data: Any = None
    _figures: list = dataclasses.field(default_factory=list)

    def figure(self, name: str) -> str:
        """The path to draw figure ``name`` to (renamed into place once the report is written)."""
        self._figures.append(name)
        return os.path.join(self.out, f".tmp-{os.getpid()}-{name}")  # per process: several may write at once


@dataclasses.dataclass
class Unit:
    """A group of configs trained together: ``run(bar)`` returns their records (``bar``: the configs bar)."""

    configs: list
    run: Callable[[Any], list]
    label: str = ""


@dataclasses.dataclass
class Study:
    """A study: presets, options, configs, how to run them, and what to make of the records.

    ``configs(ctx) -> list[dict]`` is first called with ``ctx.data = None`` (every
    check that needs no data), then with the loaded data. ``load(ctx)`` reads the
    data (default: none). ``plan(ctx, configs) -> list[Unit]``. ``finish(ctx,
    records) -> (report text, summary lines to print)``; figures go to
    ``ctx.figure(name)``. ``check(settings, given) -> settings`` does the checks
    that involve several settings and fills defaults that depend on others.
    ``head(ctx) -> str`` names the data in the first line printed.
    """

    name: str
    help: str
    doc: str
    presets: dict
    options: Sequence[Option]
    configs: Callable
    plan: Callable
    finish: Callable
    default_preset: str | None = "quick"
    check: Callable | None = None
    load: Callable | None = None
    head: Callable | None = None
    label_fields: tuple = ("method",)
    out_default: Callable | None = None
    study_json: Callable | None = None
    record_fields: tuple = ()  # fields finish() reads as numbers: each record must hold a number or null there

    def config_id(self, config: dict) -> str:
        from asgd_jax.sweep import config_id

        return config_id({k: v for k, v in config.items() if k not in self.label_fields})

    # --- the command line

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("--preset", choices=list(self.presets), default=self.default_preset,
                       help="settings to start from" + (f" (default {self.default_preset})" if self.default_preset
                                                       else "") + "; the options below override them")
        p.add_argument("--out", help=f"output directory (default runs/{self.name}-<preset>)")
        for o in self.options:
            if o.kind is bool:
                p.add_argument(o.name, dest=o.key, action="store_true", help=o.help)
            else:
                metavar = o.metavar or ("V1,V2,..." if o.many else None)
                help_ = o.help + (f" ({', '.join(map(str, o.choices))})" if o.choices and not o.many and
                                  o.help and "," not in o.help else "")
                p.add_argument(o.name, dest=o.key, help=help_ or None, metavar=metavar)

    def settings_from_args(self, args) -> tuple[dict, set, dict]:
        """``(settings, names of the settings given, run options)``: the preset with every override checked."""
        preset = args.preset or self.default_preset
        s = dict(self.presets[preset])
        run_opts = dict(RUN_DEFAULTS)
        given = set()
        for o in self.options:
            raw = getattr(args, o.key, None)
            if raw is None or raw is False:
                continue
            value = o.parse(raw)
            given.add(o.key)
            (run_opts if o.run_option else s)[o.key] = value
        for o in self.options:
            if o.key in given and o.applies is not None:
                why = o.applies({**s, **run_opts})
                if why:
                    raise UsageError(f"{o.name} {why}")
        if self.check is not None:
            s = self.check(s, given) or s
        return s, given, run_opts


# --- the driver -------------------------------------------------------------------------------------------


def run(study: Study, args) -> int:
    """Runs ``study`` as the command line ``args`` asks (see the module docstring)."""
    import jax

    settings, given, run_opts = study.settings_from_args(args)
    preset = args.preset or study.default_preset
    ctx = Context(study, preset, settings, given, run_opts)
    study.configs(ctx)  # every check that needs no data, before anything is read or written
    default_out = study.out_default(ctx) if study.out_default else f"{study.name}-{preset}"
    ctx.out = prepare_out_dir(args.out or os.path.join("runs", default_out))  # writable, checked
    json_path = os.path.join(ctx.out, "study.json")
    data_source = settings.get("data")
    info = {"study": study.name, "data": data_source, "preset": preset,
            "settings": {k: v for k, v in settings.items()}, "num_configs": None}
    if claim_out_dir(ctx.out, study.name, data_source) is None:  # another study or data source: refused
        write_text(json_path, json.dumps(jsonable(info), indent=2))  # the folder is this study's from now on
    if study.load is not None:
        ctx.data = study.load(ctx)
    configs = study.configs(ctx)
    ids = [study.config_id(c) for c in configs]
    unique = list({i: c for i, c in reversed(list(zip(ids, configs)))}.items())[::-1]

    pid, nproc = jax.process_index(), jax.process_count()
    main_path = os.path.join(ctx.out, "results.jsonl")
    parts = [os.path.join(ctx.out, f"results.p{k}.jsonl") for k in range(nproc)] if nproc > 1 else []
    results = ResultsFile(parts[pid] if parts else main_path, extra_paths=[main_path, *parts] if parts else ())
    results.check_numbers(ids, study.record_fields)  # the report will read them: refused now, not after training
    if results.repaired:
        print(f"note: moved the cut-off last line of {results.path} to {results.path}.partial (a killed run)")
    units = study.plan(ctx, [c for _, c in unique])
    todo = [u for u in units if not all(study.config_id(c) in results.records for c in u.configs)]
    mine = todo[pid::nproc]
    info["num_configs"] = len(configs)
    if study.study_json is not None:
        info.update(study.study_json(ctx))
    num_todo = sum(sum(study.config_id(c) not in results.records for c in u.configs) for u in mine)
    devices = jax.local_device_count()
    where = f" over {devices} devices" if devices > 1 else ""
    where += f", process {pid} of {nproc}" if nproc > 1 else ""
    head = f" {study.head(ctx)}" if study.head else ""
    print(f"{study.name}: {len(configs)} configs{head}, "
          f"{sum(i in results.records for i in ids)} already in {results.path}; {len(mine)} chunk(s) to run{where}")
    t0 = time.perf_counter()
    with progress(total=num_todo, desc="configs", unit="cfg", position=0) as bar:
        for u in mine:
            if u.label:
                bar.set_postfix_str(u.label)
            records = u.run(bar)
            before = len(results.records)
            results.append(records)
            bar.update(len(results.records) - before)
    wall = time.perf_counter() - t0
    if parts:
        results = _merge_process_results(main_path, parts, ids, pid)
    records = []
    for i, c in zip(ids, configs):
        rec = results.records.get(i)
        if rec is not None:
            rec = dict(rec)
            rec.update({k: c[k] for k in study.label_fields if k in c})
            records.append(rec)
    text, lines = study.finish(ctx, records)
    figures = list(dict.fromkeys(ctx._figures))
    for name in figures:
        os.replace(os.path.join(ctx.out, f".tmp-{os.getpid()}-{name}"), os.path.join(ctx.out, name))
    write_text(os.path.join(ctx.out, "report.md"), text)
    write_text(json_path, json.dumps(jsonable(info), indent=2))
    for line in lines:
        print(line)
    print(text)
    wrote = ", ".join(["results.jsonl", *figures, "report.md"])
    print(f"ran {num_todo} configs in {wall:.1f} s; wrote {wrote} to {ctx.out}")
    return 0


def _merge_process_results(main_path: str, parts: list[str], ids: list[str], pid: int) -> ResultsFile:
    """After every process finished: process 0 appends the per-process results to results.jsonl in config order."""
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices("asgd_jax study: all chunks done")
    merged = ResultsFile(main_path)
    if pid == 0:
        everything = ResultsFile(main_path, extra_paths=parts)
        merged.append([everything.records[i] for i in dict.fromkeys(ids) if i in everything.records])
        for p in parts:
            if os.path.exists(p):
                os.remove(p)
    multihost_utils.sync_global_devices("asgd_jax study: merged")
    return ResultsFile(main_path)


# --- studies that train through asgd_jax.Trainer -----------------------------------------------------------


def training_configs(grids: list[tuple[str, dict]], num_train: int | None) -> list[dict]:
    """Every config of ``grids`` (``(method label, grid)`` pairs, each expanded by
    :func:`asgd_jax.sweep.expand_grid`), normalized, checked and labelled; a label may be a function of
    the config."""
    from asgd_jax.sweep import expand_grid, normalize_config

    try:  # with num_train, normalize_config also refuses runs that would take no server step
        return [{**normalize_config(c, num_train), "method": m(c) if callable(m) else m}
                for m, g in grids for c in expand_grid(g)]
    except ValueError as e:
        raise UsageError(str(e)) from None


def load_training_data(ctx: Context):
    """Reads ``settings["data"]`` and puts it on the device once, for every group of the study."""
    return load_data(ctx.settings["data"], ctx.run["data_dir"])


def training_head(ctx: Context) -> str:
    d = ctx.data
    return f"on {d.name} ({d.num_train} train / {d.num_test} test)"


def training_plan(ctx: Context, configs: list[dict]) -> list[Unit]:
    """The configs grouped by shape and cut into chunks (device memory checked here, before anything compiles)."""
    import jax

    from asgd_jax import Trainer, sweep

    local = sweep.local_mesh() if jax.local_device_count() > 1 else None
    plain = [{k: v for k, v in c.items() if k not in ctx.study.label_fields} for c in configs]
    units = []
    try:
        for g in sweep.group_configs(plain):
            try:  # the config against the data (e.g. a split that leaves a worker without data)
                tc = g.train_config
                if ctx.run.get("microbatch") is not None:
                    tc = dataclasses.replace(tc, microbatch=ctx.run["microbatch"])
                trainer = Trainer(tc, ctx.data)
            except ValueError as e:
                raise UsageError(str(e)) from None
            mesh = sweep.mesh_for_group(local, len(g.configs))  # a lone config keeps every core's threads
            devices = 1 if mesh is None else mesh.devices.size
            fit = sweep.max_configs_per_device(trainer)
            for ch in sweep.plan_chunks(g, chunk_size=ctx.run["chunk_size"], num_devices=devices,
                                        max_per_device=fit):
                tc = trainer.config
                units.append(Unit(list(ch.configs), _chunk_runner(ch, trainer, ctx.run["loop"], mesh),
                                  f"group {tc.optimizer} bs={tc.batch_size} max_delay={tc.max_delay} "
                                  f"({len(ch.configs)} cfgs)"))
    except sweep.SweepMemoryError as e:
        raise UsageError(str(e)) from None
    return units


def _chunk_runner(chunk, trainer, loop, mesh):
    from asgd_jax import sweep

    def run_chunk(_bar):
        with progress(total=trainer.config.epochs, desc="  epochs", unit="ep", position=1, leave=False) as epochs:

            def on_epoch(e, metrics):
                epochs.update(1)
                epochs.set_postfix_str(f"acc={np.nanmax(metrics['test_accuracy']):.3f}")

            return sweep.run_chunk(chunk, trainer, loop=loop, mesh=mesh, on_epoch=on_epoch)

    return run_chunk


def training_study(**kw) -> Study:
    """A :class:`Study` that trains through :class:`asgd_jax.Trainer` (data, chunks, memory plan)."""
    kw.setdefault("load", load_training_data)
    kw.setdefault("plan", training_plan)
    kw.setdefault("head", training_head)
    kw.setdefault("record_fields", ("test_accuracy",))
    return Study(**kw)
