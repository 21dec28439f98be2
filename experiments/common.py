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


class ResultsFile:
    """An append-only ``results.jsonl``: one JSON object per finished config.

    Records already in the file are read at start-up, so a rerun of the same
    command skips the configs it has (keyed by ``config_id``) and never
    rewrites what is there. Lines are appended and fsync'ed per finished chunk;
    a line cut short by a killed run is skipped when reading, with a warning.
    """

    def __init__(self, path: str):
        self.path = path
        self.records: dict[str, dict] = {}
        self.skipped_lines = 0
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                for line in f:
                    line = line.strip()
                    if not line:
                        continue
                    try:
                        rec = json.loads(line)
                        self.records[rec["config_id"]] = rec
                    except (json.JSONDecodeError, KeyError, TypeError):
                        self.skipped_lines += 1

    def has(self, config: Mapping[str, Any]) -> bool:
        return config_id(config) in self.records

    def append(self, results: Iterable[Mapping[str, Any]]) -> None:
        lines = []
        for r in results:
            rec = jsonable(dict(r))
            self.records[rec["config_id"]] = rec
            lines.append(json.dumps(rec, sort_keys=False))
        if not lines:
            return
        needs_newline = (
            os.path.exists(self.path) and os.path.getsize(self.path) > 0 and not _ends_with_newline(self.path)
        )
        with open(self.path, "a", encoding="utf-8") as f:
            if needs_newline:
                f.write("\n")
            f.write("\n".join(lines) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def select(self, configs: Iterable[Mapping[str, Any]]) -> list[dict]:
        """The stored records of ``configs``, in their order (missing ones left out)."""
        out = []
        for c in configs:
            rec = self.records.get(config_id(c))
            if rec is not None:
                out.append(rec)
        return out


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

    Writes ``out/study.json`` (the settings), shows progress bars over configs and
    epochs, and returns ``(records of all configs in their order, configs run now, seconds)``.
    """
    from asgd_jax.sweep import group_configs, run_group

    results = ResultsFile(os.path.join(out, "results.jsonl"))
    if results.skipped_lines:
        print(
            f"warning: skipped {results.skipped_lines} unreadable line(s) of {results.path} (a killed run?)"
        )
    todo = [c for c in configs if not results.has(c)]
    groups = group_configs(todo)
    with open(os.path.join(out, "study.json"), "w", encoding="utf-8") as f:
        json.dump({"study": study, "settings": settings, "num_configs": len(configs)}, f, indent=2)
    print(
        f"{study}: {len(configs)} configs on {dataset.name} ({dataset.num_train} train / {dataset.num_test} test), "
        f"{len(configs) - len(todo)} already in {results.path}; {len(groups)} group(s) to run"
    )
    t0 = time.perf_counter()
    with progress(total=len(todo), desc="configs", unit="cfg", position=0) as bar:
        for g in groups:
            tc = g.train_config
            bar.set_postfix_str(
                f"group {tc.optimizer} bs={tc.batch_size} max_delay={tc.max_delay} ({len(g.configs)} cfgs)"
            )
            epochs = progress(total=tc.epochs, desc="  epochs", unit="ep", position=1, leave=False)

            def on_epoch(ci, e, metrics, epochs=epochs):
                if e == 0:
                    epochs.reset()
                epochs.update(1)
                epochs.set_postfix_str(f"acc={np.nanmax(metrics['test_accuracy']):.3f}")

            def on_chunk(chunk_results):
                results.append(chunk_results)
                bar.update(len(chunk_results))

            run_group(g, dataset, loop=loop, chunk_size=chunk_size, on_epoch=on_epoch, on_chunk=on_chunk)
            epochs.close()
    return results.select(configs), len(todo), time.perf_counter() - t0


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
