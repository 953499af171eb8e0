"""Run summaries of a dataset output, and `fsconvert status OUT`: what is done, running, failed, stale, missing.

Every dataset run (each shard of a sharded one) writes `OUT/fsconvert/summary[-shard-I-of-N].json`
when it starts and again when it ends: the whole selection with each tuple's shard, the settings,
and its own tuples' results. The per-tuple records stay the truth about what is done; the
summaries add what should be there, and why a tuple failed.
"""

from __future__ import annotations

import datetime
import fcntl
import json
import os
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import __version__
from .errors import FsconvertError, OutputError
from .job import INPUT_KEYS, TupleJob, TupleResult, changed, inputs, lock_path
from .protocol import CHECK_JSON, RECORD, read_record
from .shards import Shard
from .writers import replace_atomically

FOLDER = Path("fsconvert")
"""Inside OUT, beside the OUT/<id>/<exp> tuples."""


def summary_path(root: Path, shard: Shard | None) -> Path:
    name = "summary.json" if shard is None else f"summary-shard-{shard.index}-of-{shard.count}.json"
    return root / FOLDER / name


def write_summary(
    root: Path, shard: Shard | None, selection: dict[str, int], jobs: Sequence[TupleJob], *, engine: str,
    started: datetime.datetime, results: Sequence[TupleResult] | None = None, seconds: float | None = None,
) -> None:
    """Write (atomically) the summary of this run: `selection` maps every selected tuple to its shard
    index (0 unsharded); `results` None means the run has started and not finished."""
    summary = {
        "fsconvert": __version__,
        "shard": None if shard is None else [shard.index, shard.count],
        "engine": engine,
        "host": socket.gethostname(),
        "started": started.isoformat(timespec="seconds"),
        "finished": None if results is None else now().isoformat(timespec="seconds"),
        "seconds": seconds,
        "settings": _settings(jobs),
        "selection": selection,
        "tuples": {r.name: {"status": r.status, "reason": r.reason, "views": r.views, "check_passed": r.check_passed}
                   for r in results or ()},
    }
    path = summary_path(root, shard)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{path.parent}: cannot write the run summary: {exc.strerror or exc}") from None
    replace_atomically(path, (json.dumps(summary, indent=1) + "\n").encode())


def _settings(jobs: Sequence[TupleJob]) -> dict[str, Any] | None:
    """The fingerprint's settings part (format, options, check, version), the same for every job of a run."""
    for job in jobs:
        try:
            return {k: v for k, v in job.fingerprint.items() if k not in INPUT_KEYS}
        except FsconvertError:  # an unreadable tuple: reported by its conversion
            continue
    return None


def now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _summaries(root: Path) -> list[dict[str, Any]]:
    """The readable summaries, oldest start first."""
    found = []
    for path in sorted((root / FOLDER).glob("summary*.json")):
        try:
            summary = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(summary, dict) and isinstance(summary.get("selection"), dict):
            found.append(summary)
    return sorted(found, key=lambda s: str(s.get("started")))


def _running(out_dir: Path) -> bool:
    """Whether a process holds the tuple's lock (is converting it now)."""
    try:
        fd = os.open(lock_path(out_dir), os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def _staleness(record: dict[str, Any], settings: dict[str, Any] | None) -> str:
    """Why a record no longer matches the tuple's current inputs and the run's settings ("" if it does)."""
    old = record["fingerprint"]
    mesh = old.get("mesh")
    try:
        current = inputs(Path(old["source"]), Path(mesh["path"]) if isinstance(mesh, dict) else None)
    except (FsconvertError, KeyError, TypeError) as exc:
        return f"source unreadable: {exc}"
    new = json.loads(json.dumps({**old, **(settings or {}), "fsconvert": __version__, **current}))
    return "" if new == old else changed(old, new)


def status(root: str | Path) -> tuple[str, bool]:
    """The report of `fsconvert status OUT`, and whether every selected tuple is done with a passed check."""
    root = Path(root)
    if not root.is_dir():
        raise FsconvertError(f"{root}: no such folder")
    summaries = _summaries(root)
    shard_of: dict[str, str] = {}
    failures: dict[str, str] = {}
    settings: dict[str, dict[str, Any] | None] = {}
    for s in summaries:  # later runs win
        count = s["shard"][1] if s.get("shard") else None
        for name, index in s["selection"].items():
            shard_of[name] = "" if count is None else f" (shard {index}/{count})"
            settings[name] = s.get("settings")
        for name, t in s.get("tuples", {}).items():
            if t.get("status") == "failed":
                failures[name] = t.get("reason", "")
            else:
                failures.pop(name, None)
    records = {f"{p.parent.parent.parent.name}/{p.parent.parent.name}": p.parent.parent
               for p in root.glob(f"*/*/{RECORD}")}
    names = sorted(shard_of.keys() | records.keys())
    lines: dict[str, list[str]] = {k: [] for k in ("done", "running", "failed", "stale", "missing")}
    check_failed = []
    for name in names:
        out_dir = root / name
        record = read_record(out_dir) if name in records else None
        where = shard_of.get(name, "")
        if _running(out_dir):
            lines["running"].append(f"  running  {name}{where}")
        elif record is not None and not (why := _staleness(record, settings.get(name))):
            lines["done"].append(name)
            if record["result"]["check_passed"] is False:
                check_failed.append(f"  check failed {name}: see {out_dir / CHECK_JSON}")
        elif record is not None:
            lines["stale"].append(f"  stale    {name}{where}: {why}")
        elif name in failures:
            lines["failed"].append(f"  failed   {name}{where}: {failures[name]}")
        else:
            lines["missing"].append(f"  missing  {name}{where}")
    counts = ", ".join(f"{k} {len(v)}" for k, v in lines.items())
    head = [f"{root}: {len(names)} tuples: {counts}" + (f" ({len(check_failed)} with a failed check)"
                                                          if check_failed else "")]
    if not summaries:
        head.append("  (no run summary in OUT/fsconvert/: only tuples with a record are known)")
    for s in summaries:
        shard = f"shard {s['shard'][0]}/{s['shard'][1]}" if s.get("shard") else "run"
        state = f"finished {s['finished']}" if s.get("finished") else "not finished (running, or stopped)"
        head.append(f"  {shard}: started {s.get('started')} on {s.get('host')} ({s.get('engine')}), {state}")
    body = [line for k in ("running", "failed", "stale", "missing") for line in lines[k]] + check_failed
    complete = len(lines["done"]) == len(names) and not check_failed
    return "\n".join(head + body), complete
