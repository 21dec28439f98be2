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
VOLATILE_FIELDS = ("seconds", "wall_s")


class ResultsFile:
    """An append-only ``results.jsonl``: one JSON object per finished config.

    Records already in the file are read at start-up, so a rerun of the same
    command skips the configs it has (keyed by ``config_id``) and never
    rewrites what is there. Each finished chunk's lines are appended in one
    write and fsync'ed. A last line cut short by a killed run is moved to
    ``results.jsonl.partial`` (kept, not lost) and its config is run again, so
    a resumed sweep ends with the same ``results.jsonl`` as an uninterrupted one.
    Wall times go to ``timing.jsonl`` beside it (written just before the
    results; a config rerun after a kill may have two lines there, the last
    counts), so ``results.jsonl`` holds only what the configs determine.

    ``extra_paths``: more results files to read (the per-process files of a
    multi-host sweep); appends go to ``path`` only. A line that is not a record
    (not UTF-8, not JSON, no ``config_id``) anywhere but at the cut-off end, or a
    results "file" that is a directory, is a one-line UsageError naming the file
    and line, raised before anything is moved or written: a corrupt or foreign
    file is never mixed with new records. ``repair=False``: read only.
    """

    def __init__(self, path: str, extra_paths: Iterable[str] = (), repair: bool = True):
        self.path = path
        self.timing_path = os.path.join(os.path.dirname(path) or ".", "timing.jsonl")
        self.records: dict[str, dict] = {}
        self.line_of: dict[str, tuple[str, int]] = {}  # config_id -> (file, line number)
        self.skipped_lines = 0  # kept for callers; a line that cannot be read is now an error
        paths = [path, *extra_paths]
        for p in paths:
            if os.path.isdir(p):
                raise UsageError(f"{p} is a directory, not a results file; move it away or choose another --out.")
        for p in paths:  # every complete line is checked before anything is moved or written
            if os.path.exists(p):
                self._read(p)
        self.repaired = _cut_partial_line(path) if repair else False

    def _read(self, path: str) -> None:
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            raise UsageError(f"cannot read {path}: {e.strerror}; check its permissions or choose another --out.") from None
        lines = data.split(b"\n")
        tail = lines.pop()  # b"" when the file ends with a newline; else a line cut short by a killed write
        fix = ("the file is corrupt or not an asgd_jax results file: move it away (or delete that line, "
               "whose config then runs again) and rerun")
        for n, raw in enumerate(lines, 1):
            if not raw.strip():
                continue
            try:
                rec = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError as e:
                raise UsageError(f"{path} line {n}: byte {raw[e.start]:#04x} is not UTF-8 text; {fix}.") from None
            except json.JSONDecodeError as e:
                raise UsageError(f"{path} line {n}: not a JSON record ({e.msg}); {fix}.") from None
            if not isinstance(rec, dict) or not isinstance(rec.get("config_id"), str):
                raise UsageError(f"{path} line {n}: not a record with a config_id; {fix}.")
            if rec["config_id"] not in self.records:
                self.records[rec["config_id"]] = rec
                self.line_of[rec["config_id"]] = (path, n)
        if tail and not _looks_like_cut_record(tail):
            raise UsageError(f"{path} line {len(lines) + 1}: not a JSON record (nor one cut short by a killed run); "
                             f"{fix}.")

    def check_numbers(self, ids: Iterable[str], fields: Iterable[str]) -> None:
        """One-line UsageError if a record of ``ids`` lacks one of ``fields`` or holds something other than a
        number or null there (a file edited by hand, or another program's)."""
        fields = tuple(fields)
        for i in ids:
            rec = self.records.get(i)
            if rec is None:
                continue
            for k in fields:
                v = rec.get(k, _MISSING)
                if v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)):
                    continue
                path, n = self.line_of.get(i, (self.path, 0))
                what = f"has no {k!r}" if v is _MISSING else f"holds {v!r} as {k!r}, not a number"
                raise UsageError(
                    f"{path} line {n}: the record of config {i} {what}; the file was edited or is not this "
                    "study's: move it away (or delete that line, whose config then runs again) and rerun."
                )

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
        # timings first: a run killed between the two writes reruns those configs and logs their time
        # again (the last line of a config_id counts), instead of leaving a result with no wall time
        _append_lines(self.timing_path, timings)
        _append_lines(self.path, lines)

    def select(self, configs: Iterable[Mapping[str, Any]]) -> list[dict]:
        """The stored records of ``configs``, in their order (missing ones left out)."""
        out = []
        for c in configs:
            rec = self.records.get(config_id(c))
            if rec is not None:
                out.append(rec)
        return out


_MISSING = object()


def _looks_like_cut_record(tail: bytes) -> bool:
    """True if ``tail`` can be the start of a line this module writes (ASCII JSON of a dict)."""
    return tail.lstrip().startswith(b"{") and all(32 <= b < 127 for b in tail.strip())


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
    """Creates the output directory (and parents) and checks it is writable; one-line error if not."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise UsageError(f"--out {path!r} is a file; give a directory.")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise UsageError(
            f"cannot create --out {path!r}: {e.strerror}; choose a writable directory."
        ) from None
    check_writable(path)
    return path


def check_writable(path: str) -> None:
    """One-line UsageError unless a file can be created in directory ``path`` (checked by creating one)."""
    probe = os.path.join(path, f".write-check-{os.getpid()}")
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        raise UsageError(
            f"cannot write to --out {path!r}: {e.strerror or e}; choose a writable directory."
        ) from None


def claim_out_dir(path: str, study: str, data: str | None) -> dict | None:
    """Checks that the folder ``path`` belongs to ``study`` on ``data`` (its ``study.json``), before any work.

    A folder holds one study on one data source: another study or another data source in a folder that
    already has a ``study.json`` (or, for a folder from before ``study.json``, records of another data
    source in ``results.jsonl``) is refused with a one-line UsageError, so nothing of the first is
    overwritten or mixed. Returns the ``study.json`` found (``None`` if none).
    """
    json_path = os.path.join(path, "study.json")
    info = None
    if os.path.lexists(json_path):
        try:
            with open(json_path, encoding="utf-8") as f:
                info = json.load(f)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            why = getattr(e, "strerror", None) or getattr(e, "msg", None) or type(e).__name__
            raise UsageError(
                f"{json_path} cannot be read ({why}); it records which study owns --out {path!r}: "
                "restore it, or choose another --out."
            ) from None
        if not isinstance(info, dict) or not isinstance(info.get("study"), str):
            raise UsageError(f"{json_path} does not name a study; restore it, or choose another --out.")
        if not [f for f in os.listdir(path) if f != "study.json"]:
            return None  # claimed by a run that stopped before writing anything (e.g. bad data): free again
        if info["study"] != study:
            raise UsageError(
                f"--out {path!r} holds the study {info['study']} ({json_path}); a folder holds one study: "
                f"choose another --out for {study}."
            )
        theirs = info.get("data", (info.get("settings") or {}).get("data"))
        if theirs != data:
            raise UsageError(
                f"--out {path!r} holds {study} on --data {theirs} ({json_path}), not {data}; a folder holds one "
                "data source: choose another --out (or rerun with the same --data)."
            )
        return info
    results = os.path.join(path, "results.jsonl")
    if data is not None and os.path.isfile(results):  # a folder from before study.json
        others = {r.get("data") for r in ResultsFile(results, repair=False).records.values()} - {None, data}
        if others:
            raise UsageError(
                f"{results} holds results on --data {sorted(others)[0]}, not {data}; a folder holds one data "
                "source: choose another --out."
            )
    return None


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
    tmp = f"{path}.tmp{os.getpid()}"  # per process: two processes of one sweep may write the same file
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)
