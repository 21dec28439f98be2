"""What every study shares: argument checks, the results file, progress bars."""

from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Any, Iterable, Mapping

import numpy as np

from asgd_jax.sweep import config_id


class UsageError(Exception):
    """Bad input from the command line: printed as one line, exit status 2."""


def parse_list(text: str, kind=float, name: str = "value") -> list:
    """``"1e-3,1e-2"`` → ``[0.001, 0.01]``; one-line :class:`UsageError` otherwise."""
    items = [t.strip() for t in str(text).split(",") if t.strip()]
    if not items:
        raise UsageError(f"--{name} needs at least one value, e.g. --{name} 1,2.")
    out = []
    for t in items:
        try:
            if kind is int:
                v = float(t)
                if v != int(v):
                    raise ValueError
                out.append(int(v))
            else:
                out.append(kind(t))
        except ValueError:
            raise UsageError(
                f"--{name}: {t!r} is not a{'n integer' if kind is int else ' number'}."
            ) from None
    return out


def jsonable(x: Any) -> Any:
    """Non-finite floats become ``None`` (strict JSON has no NaN); NumPy scalars become Python."""
    if isinstance(x, Mapping):
        return {k: jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if hasattr(x, "item") and not isinstance(x, (str, bytes)):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


# Fields of a result that vary from run to run (wall time): kept out of results.jsonl, in timing.jsonl.
VOLATILE_FIELDS = ("seconds",)


class ResultsFile:
    """An append-only ``results.jsonl``: one JSON object per finished config.

    Records already in the file are read at start-up, so a rerun of the same
    command skips the configs it has (keyed by ``config_id``) and never
    rewrites what is there. Each finished chunk's lines are appended in one
    write and fsync'ed. A last line cut short by a killed run is moved to
    ``results.jsonl.partial`` (kept, not lost) and its config is run again, so
    a resumed sweep ends with the same ``results.jsonl`` as an uninterrupted one.
    Wall times go to ``timing.jsonl`` beside it, so ``results.jsonl`` holds only
    what the configs determine.

    ``extra_paths``: more results files to read (the per-process files of a
    multi-host sweep); appends go to ``path`` only.
    """

    def __init__(self, path: str, extra_paths: Iterable[str] = ()):
        self.path = path
        self.timing_path = os.path.join(os.path.dirname(path) or ".", "timing.jsonl")
        self.records: dict[str, dict] = {}
        self.skipped_lines = 0
        self.repaired = _cut_partial_line(path)
        for p in [path, *extra_paths]:
            if os.path.exists(p):
                self._read(p)

    def _read(self, path: str) -> None:
        with open(path, encoding="utf-8") as f:
            for line in f:
                line = line.strip()
                if not line:
                    continue
                try:
                    rec = json.loads(line)
                    self.records.setdefault(rec["config_id"], rec)
                except (json.JSONDecodeError, KeyError, TypeError):
                    self.skipped_lines += 1

    def has(self, config: Mapping[str, Any]) -> bool:
        return config_id(config) in self.records

    def append(self, results: Iterable[Mapping[str, Any]]) -> None:
        """Appends the results not yet in the file (one write, fsync'ed); their wall times go to timing.jsonl."""
        lines, timings = [], []
        for r in results:
            rec = jsonable({k: v for k, v in dict(r).items() if k not in VOLATILE_FIELDS})
            if rec["config_id"] in self.records:
                continue
            self.records[rec["config_id"]] = rec
            lines.append(json.dumps(rec, sort_keys=False))
            volatile = {k: r[k] for k in VOLATILE_FIELDS if k in r}
            if volatile:
                timings.append(json.dumps(jsonable({"config_id": rec["config_id"], **volatile})))
        _append_lines(self.path, lines)
        _append_lines(self.timing_path, timings)

    def select(self, configs: Iterable[Mapping[str, Any]]) -> list[dict]:
        """The stored records of ``configs``, in their order (missing ones left out)."""
        out = []
        for c in configs:
            rec = self.records.get(config_id(c))
            if rec is not None:
                out.append(rec)
        return out


def _append_lines(path: str, lines: list[str]) -> None:
    if not lines:
        return
    data = ("\n".join(lines) + "\n").encode("utf-8")
    if os.path.exists(path) and os.path.getsize(path) > 0 and not _ends_with_newline(path):
        data = b"\n" + data
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def _cut_partial_line(path: str) -> bool:
    """Moves a last line without its newline (a killed write) to ``path + ".partial"``; True if it did."""
    if not os.path.exists(path) or os.path.getsize(path) == 0 or _ends_with_newline(path):
        return False
    with open(path, "rb") as f:
        data = f.read()
    keep = data.rfind(b"\n") + 1
    with open(path + ".partial", "ab") as f:
        f.write(data[keep:] + b"\n")
    with open(path, "r+b") as f:
        f.truncate(keep)
        f.flush()
        os.fsync(f.fileno())
    return True


def _ends_with_newline(path: str) -> bool:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


def prepare_out_dir(path: str) -> str:
    """Creates the output directory (and parents); one-line error if it cannot."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise UsageError(f"--out {path!r} is a file; give a directory.")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise UsageError(
            f"cannot create --out {path!r}: {e.strerror}; choose a writable directory."
        ) from None
    return path


def progress(**kwargs):
    """A tqdm bar on stderr (plain text when stderr is not a terminal)."""
    from tqdm.auto import tqdm

    kwargs.setdefault("file", sys.stderr)
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(**kwargs)


def check_source(spec: str) -> None:
    """Validates a ``--data`` spec without reading it (one-line UsageError)."""
    from experiments import sources

    try:
        sources.parse_source(spec)
    except sources.DataSourceError as e:
        raise UsageError(str(e)) from None


def load_data(spec: str, data_dir: str | None = None):
    """Reads a ``--data`` source and puts it on the device once, for every group of a study."""
    from experiments import sources

    try:
        return sources.load_source(spec, data_dir=data_dir).to_device()
    except sources.DataSourceError as e:
        raise UsageError(str(e)) from None


def run_sweep(
    study: str, out: str, configs: list[dict], dataset, settings: dict, *, loop="auto", chunk_size=None
) -> tuple[list[dict], int, float]:
    """Trains the configs not yet in ``out/results.jsonl``, appending each chunk's results as it finishes.

    Every group is planned first (chunks, device memory: a config too large for
    a device stops the sweep here, before anything compiles); each chunk's
    configs are sharded over this process's devices. With several processes
    (``jax.distributed``), process ``p`` runs every ``P``-th remaining chunk and
    appends to ``results.p<p>.jsonl``; process 0 merges them into
    ``results.jsonl`` at the end. Writes ``out/study.json`` (the settings), shows
    progress bars over configs and epochs, and returns ``(records of all configs
    in their order, configs run now, seconds)``.
    """
    import jax

    from asgd_jax import Trainer, sweep

    pid, nproc = jax.process_index(), jax.process_count()
    main_path = os.path.join(out, "results.jsonl")
    parts = [os.path.join(out, f"results.p{k}.jsonl") for k in range(nproc)] if nproc > 1 else []
    results = ResultsFile(
        parts[pid] if parts else main_path, extra_paths=[main_path, *parts] if parts else ()
    )
    if results.repaired:
        print(f"note: moved the cut-off last line of {results.path} to {results.path}.partial (a killed run)")
    if results.skipped_lines:
        print(f"warning: skipped {results.skipped_lines} unreadable line(s) of {results.path}")
    mesh = sweep.local_mesh() if jax.local_device_count() > 1 else None
    devices = 1 if mesh is None else mesh.devices.size
    plans = []
    try:
        for g in sweep.group_configs(configs):
            trainer = Trainer(g.train_config, dataset)
            fit = sweep.max_configs_per_device(trainer)
            plans += [
                (trainer, ch)
                for ch in sweep.plan_chunks(g, chunk_size=chunk_size, num_devices=devices, max_per_device=fit)
            ]
    except sweep.SweepMemoryError as e:
        raise UsageError(str(e)) from None
    todo = [(t, ch) for t, ch in plans if not all(results.has(c) for c in ch.configs)]
    mine = todo[pid::nproc]
    with open(os.path.join(out, "study.json"), "w", encoding="utf-8") as f:
        json.dump({"study": study, "settings": settings, "num_configs": len(configs)}, f, indent=2)
    num_todo = sum(sum(not results.has(c) for c in ch.configs) for _, ch in mine)
    where = f" over {devices} devices" if devices > 1 else ""
    where += f", process {pid} of {nproc}" if nproc > 1 else ""
    print(
        f"{study}: {len(configs)} configs on {dataset.name} ({dataset.num_train} train / {dataset.num_test} test), "
        f"{sum(results.has(c) for c in configs)} already in {results.path}; "
        f"{len(mine)} chunk(s) to run{where}"
    )
    t0 = time.perf_counter()
    with progress(total=num_todo, desc="configs", unit="cfg", position=0) as bar:
        for trainer, chunk in mine:
            tc = trainer.config
            bar.set_postfix_str(
                f"group {tc.optimizer} bs={tc.batch_size} max_delay={tc.max_delay} ({len(chunk.configs)} cfgs)"
            )
            with progress(total=tc.epochs, desc="  epochs", unit="ep", position=1, leave=False) as epochs:

                def on_epoch(e, metrics, epochs=epochs):
                    epochs.update(1)
                    epochs.set_postfix_str(f"acc={np.nanmax(metrics['test_accuracy']):.3f}")

                chunk_results = sweep.run_chunk(chunk, trainer, loop=loop, mesh=mesh, on_epoch=on_epoch)
            before = len(results.records)
            results.append(chunk_results)
            bar.update(len(results.records) - before)
    wall = time.perf_counter() - t0
    if parts:
        results = _merge_process_results(main_path, parts, configs, pid)
    return results.select(configs), num_todo, wall


def _merge_process_results(main_path: str, parts: list[str], configs: list[dict], pid: int) -> ResultsFile:
    """After every process finished: process 0 appends the per-process results to results.jsonl in config order."""
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices("asgd_jax run_sweep: all chunks done")
    merged = ResultsFile(main_path)
    if pid == 0:
        everything = ResultsFile(main_path, extra_paths=parts)
        merged.append([r for r in everything.select(configs)])
        for p in parts:
            if os.path.exists(p):
                os.remove(p)
    multihost_utils.sync_global_devices("asgd_jax run_sweep: merged")
    return ResultsFile(main_path)


def configs_from_grids(grids: list[dict], num_train: int | None) -> list[dict]:
    """Every config of ``grids`` (each expanded by :func:`asgd_jax.sweep.expand_grid`), normalized and checked;
    a bad value raises :class:`UsageError` with the library's one-line message."""
    from asgd_jax.sweep import expand_grid, normalize_config

    try:
        return [normalize_config(c, num_train) for g in grids for c in expand_grid(g)]
    except ValueError as e:
        raise UsageError(str(e)) from None


def run_study(study: str, args, settings: dict, make_configs):
    """The shared start of a training study: every check before any data is read or compiled, then the sweep.

    ``make_configs(settings, num_train)`` builds the study's normalized configs (``num_train=None`` checks
    what it can before the data set is read). Returns ``(out, dataset, records, configs_run, seconds)``.
    """
    check_source(settings["data"])
    make_configs(settings, None)
    out = prepare_out_dir(args.out or os.path.join("runs", f"{study}-{args.preset}"))
    dataset = load_data(settings["data"], args.data_dir)
    configs = make_configs(settings, dataset.num_train)  # now also checks batch size <= training set
    records, ran, wall = run_sweep(
        study, out, configs, dataset, settings, loop=args.loop, chunk_size=args.chunk_size
    )
    return out, dataset, records, ran, wall


def finish_study(out: str, report_text: str, ran: int, wall: float, figures: list[str]) -> int:
    """Writes ``out/report.md``, prints the report and what the run wrote; returns the exit status 0."""
    with open(os.path.join(out, "report.md"), "w", encoding="utf-8") as f:
        f.write(report_text)
    print(report_text)
    wrote = ", ".join(["results.jsonl", *figures, "report.md"])
    print(f"ran {ran} configs in {wall:.1f} s; wrote {wrote} to {out}")
    return 0
