"""What every study shares: the results file, the output folder, atomic writes, progress bars, data."""

from __future__ import annotations

import json
import math
import os
import sys
from typing import Any, Iterable, Mapping

from asgd_jax.sweep import config_id


class UsageError(Exception):
    """Bad input from the command line: printed as one line, exit status 2."""


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
    """A tqdm bar on stderr; none when stderr is not a terminal."""
    from tqdm.auto import tqdm

    kwargs.setdefault("file", sys.stderr)
    kwargs.setdefault("dynamic_ncols", True)
    kwargs.setdefault("disable", None)  # no bar (no escape sequences) when stderr is not a terminal
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


def write_text(path: str, text: str) -> None:
    """Writes ``text`` to ``path`` whole or not at all (a temporary file renamed over it)."""
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)
