"""One tuple's job: export, check and record it under its lock, or skip it when its record is up to date.

`convert_tuple` exports one tuple, checks it and writes `fsconvert/record.json` (a fingerprint of
everything the output depends on) inside the one staging folder of `fsconvert.export.export`, so a
tuple appears complete or not at all, while holding the tuple's lock, so it is never converted twice
at once. A rerun skips tuples whose record matches. The engines (`fsconvert.engines`) run `TupleJob`s;
the dataset run (`fsconvert.datasetrun`) spreads them over processes.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from functools import cached_property
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

from exporters import get

from . import __version__
from .alignment import DEFAULT_UNITS
from .check import Overlays, format_check, policy_key
from .errors import FsconvertError, InputError, OutputError
from .export import export, remove_leftovers
from .loader import IMAGE_EXT, PARAMS, find_mesh, layout_path, load_capture
from .measure import Thresholds
from .options import to_dict
from .protocol import read_record

Status = Literal["converted", "skipped", "failed"]
STATUSES: tuple[Status, ...] = ("converted", "skipped", "failed")




@dataclass(frozen=True)
class TupleResult:
    """What happened to one tuple."""

    name: str
    """`<id>/<exp>`."""
    out_dir: Path
    status: Status
    views: int = 0
    excluded: tuple[int, ...] = ()
    """Views left out because params.json marks them valid=false."""
    check_passed: bool | None = None
    """None when the check was not run."""
    check_text: str = ""
    """The check's text (`fsconvert.check.format_check`) when it ran in this call."""
    reason: str = ""
    """Why the tuple failed (one line)."""
    seconds: float = 0.0


@dataclass(frozen=True, kw_only=True)
class TupleJob:
    """One tuple to convert: the arguments of `convert_tuple` (picklable when `fmt` is a name)."""

    source: Path
    out_dir: Path
    fmt: str | ModuleType
    options: Any = None
    mesh: Path | None = None
    mesh_root: Path | None = None
    include_invalid: bool = False
    thresholds: Thresholds | None = Thresholds()
    """None skips the projection check."""
    overlays: Overlays = "all"
    """The check's overlay policy (`fsconvert.check.Overlays`)."""
    overwrite: bool = False
    force: bool = False
    align: Path | None = None
    """FaceScape Rt_scale_dict.json to align the tuple with (None: its SfM frame)."""
    units: str = DEFAULT_UNITS

    @property
    def name(self) -> str:
        where = layout_path(self.source)
        return f"{where.parent.name}/{where.name}"

    @property
    def images(self) -> int:
        """Image files in the tuple folder (for progress)."""
        return sum(1 for _ in self.source.glob(f"*{IMAGE_EXT}"))

    def up_to_date(self) -> TupleResult | None:
        """The "skipped" result when the output's record matches the inputs and settings, else None."""
        return self._skipped(read_record(self.out_dir))

    def convert(self, workers: int = 1, progress: bool = False) -> TupleResult:
        """Convert, check and record (or skip); FsconvertErrors become a "failed" result."""
        start = time.perf_counter()
        out_dir = self.out_dir
        try:
            fp = self.fingerprint  # first: an unreadable tuple fails here, naming its params.json
            with tuple_lock(out_dir):
                remove_leftovers(out_dir)
                old = read_record(out_dir)
                skipped = self._skipped(old)
                if skipped is not None:
                    return replace(skipped, seconds=time.perf_counter() - start)
                if out_dir.exists() and not (self.overwrite or self.force):
                    why = ("not written by fsconvert" if old is None
                           else f"out of date: {changed(old['fingerprint'], fp)}")
                    raise OutputError(f"{out_dir}: already exists, {why} (use --overwrite to replace it)")
                capture = load_capture(self.source, mesh=self._mesh, include_invalid=self.include_invalid,
                                       align=self.align, units=self.units)
                done = export(capture, self._exporter, out_dir, self._options, overwrite=True, workers=workers,
                              progress=progress, thresholds=self.thresholds, overlays=self.overlays, record=fp)
        except FsconvertError as exc:
            return TupleResult(self.name, out_dir, "failed", reason=str(exc), seconds=time.perf_counter() - start)
        check = done.check
        return TupleResult(self.name, out_dir, "converted", len(done.views), done.excluded,
                           None if check is None else bool(check.passed), "" if check is None else format_check(check),
                           seconds=time.perf_counter() - start)

    def _skipped(self, old: dict[str, Any] | None) -> TupleResult | None:
        if self.force or old is None or old.get("fingerprint") != self.fingerprint:
            return None
        done = old["result"]
        return TupleResult(self.name, self.out_dir, "skipped", len(done["views"]), tuple(done["excluded"]),
                           done["check_passed"])

    @property
    def _exporter(self) -> ModuleType:
        return get(self.fmt) if isinstance(self.fmt, str) else self.fmt

    @property
    def _options(self) -> Any:
        return self._exporter.Options() if self.options is None else self.options

    @property
    def _mesh(self) -> Path | None:
        return Path(self.mesh) if self.mesh is not None else find_mesh(self.source, self.mesh_root)

    @cached_property
    def fingerprint(self) -> dict[str, Any]:
        """What the output's record must hold for it to be up to date (`fingerprint`). Computed once per
        tuple: `run_dataset` after `up_to_date` reuses it (pickled with the job into a worker)."""
        return fingerprint(self.source, self._mesh, self._exporter.NAME, self._options, self.include_invalid,
                           self.thresholds, self.overlays, self.align, self.units)


def convert_tuple(
    source: str | Path,
    out_dir: str | Path,
    fmt: str | ModuleType,
    options: Any = None,
    *,
    mesh: str | Path | None = None,
    mesh_root: str | Path | None = None,
    include_invalid: bool = False,
    thresholds: Thresholds | None = Thresholds(),
    overlays: Overlays = "all",
    overwrite: bool = False,
    force: bool = False,
    align: str | Path | None = None,
    units: str = DEFAULT_UNITS,
    workers: int = 1,
    progress: bool = False,
) -> TupleResult:
    """Export the tuple folder `source` to `out_dir` in format `fmt`, check it, record it.

    Skips (status "skipped") when `out_dir` holds a record of the same inputs and settings, unless
    `force`. An existing output that is not up to date is replaced only with `overwrite`. Any
    `FsconvertError` gives status "failed" with a one-line reason; other exceptions are bugs and raise.
    The projection check runs with `thresholds` (like the command line's defaults); None skips it.
    `align` (FaceScape's Rt_scale_dict.json) exports the tuple in its TU frame, in `units` (mm or m).
    It holds the tuple's lock (`tuple_lock`) meanwhile, waiting for another run converting the same
    tuple to finish, then removes the temporary folders an interrupted run on this tuple left.
    """
    job = TupleJob(source=Path(source), out_dir=Path(out_dir), fmt=fmt, options=options,
                   mesh=None if mesh is None else Path(mesh), mesh_root=None if mesh_root is None else Path(mesh_root),
                   include_invalid=include_invalid, thresholds=thresholds, overlays=overlays, overwrite=overwrite,
                   force=force, align=None if align is None else Path(align), units=units)
    return job.convert(workers=workers, progress=progress)


# ---- the record -----------------------------------------------------------------------------------


def fingerprint(
    source: Path, mesh: Path | None, fmt: str, options: Any, include_invalid: bool, thresholds: Thresholds | None,
    overlays: Overlays, align: Path | None = None, units: str = DEFAULT_UNITS,
) -> dict[str, Any]:
    """Everything an export depends on: the settings, and the `inputs` (params.json, images, mesh).

    Images are fingerprinted by size and mtime_ns, not hashed: the whole fingerprint takes ~0.7 ms per
    60-view tuple, while hashing reads its 100–300 MB of JPEGs (~75 ms per 100 MB from the page cache,
    about a second from disk; benchmarks/bench_batch.py).
    """
    fp = {
        "fsconvert": __version__,
        "format": fmt,
        "options": to_dict(options),
        "include_invalid": include_invalid,
        "check": None if thresholds is None else {"thresholds": asdict(thresholds), "overlays": policy_key(overlays)},
        **inputs(source, mesh),
    }
    if align is not None:
        fp["alignment"] = {"path": str(align.resolve()), "stat": _stat(align), "units": units}
    record: dict[str, Any] = json.loads(json.dumps(fp))  # as it reads back from the record (tuples become lists)
    return record


INPUT_KEYS = ("source", "params_sha256", "images", "mesh")
"""The keys of `inputs` in a fingerprint; the others are the settings."""


def inputs(source: Path, mesh: Path | None) -> dict[str, Any]:
    """The part of a fingerprint read from the tuple: params.json hash, image and mesh size + mtime."""
    params = source / PARAMS
    try:
        digest = hashlib.sha256(params.read_bytes()).hexdigest()
    except OSError as exc:
        raise InputError(f"cannot read: {exc.strerror or exc}", file=params) from None
    return {
        "source": str(layout_path(source)),
        "params_sha256": digest,
        "images": {p.name: _stat(p) for p in sorted(source.glob(f"*{IMAGE_EXT}"))},
        "mesh": None if mesh is None else {"path": str(layout_path(mesh)), "stat": _stat(mesh)},
    }


def _stat(path: Path) -> list[int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


def changed(old: dict[str, Any] | None, new: dict[str, Any]) -> str:
    """Which parts of a fingerprint differ, for messages ("images 3.jpg, 7.jpg changed")."""
    old = old if isinstance(old, dict) else {}
    keys = [k for k in new if old.get(k) != new[k]]
    if "images" in keys:
        old_images = old.get("images")
        before: dict[str, Any] = old_images if isinstance(old_images, dict) else {}
        names = sorted(k for k in before.keys() | new["images"].keys() if before.get(k) != new["images"].get(k))
        keys[keys.index("images")] = "images " + ", ".join(names[:3]) + (" …" if len(names) > 3 else "")
    return ", ".join(keys) + " changed"




# ---- the lock -------------------------------------------------------------------------------------


def lock_path(out_dir: Path) -> Path:
    """The lock file of a tuple's output: `.<name>.lock` beside it, there while a process holds it."""
    out_dir = Path(os.path.abspath(out_dir))
    return out_dir.with_name(f".{out_dir.name}.lock")


@contextmanager
def tuple_lock(out_dir: Path, wait: bool = True) -> Iterator[bool]:
    """Hold the exclusive lock of the output `out_dir` (an flock on `lock_path`); yields whether it is held.

    Without `wait`, yields False at once when another process holds it. The kernel releases the
    lock when its process dies (on NFS, when its lease expires), so a killed run never blocks the
    next. The holder removes the file when done; a waiter then finds the file it locked gone, and
    locks the current one instead.
    """
    path = lock_path(out_dir)
    told = False
    while True:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise OutputError(f"{path.parent}: cannot create output: {exc.strerror or exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not wait:
                os.close(fd)
                yield False
                return
            if not told:
                print(f"fsconvert: waiting for another fsconvert run converting {out_dir}", file=sys.stderr)
                told = True
            fcntl.flock(fd, fcntl.LOCK_EX)
        if _same_file(fd, path):
            break
        os.close(fd)
    try:
        yield True
    finally:
        path.unlink(missing_ok=True)
        os.close(fd)


def _same_file(fd: int, path: Path) -> bool:
    try:
        st = path.stat()
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)




def counts(results: Sequence[TupleResult]) -> dict[Status, int]:
    """How many tuples were converted, skipped (up to date) and failed."""
    return {s: sum(r.status == s for r in results) for s in STATUSES}


def exit_code(results: Sequence[TupleResult]) -> int:
    """2 if a tuple failed, 1 if a check failed, else 0."""
    if any(r.status == "failed" for r in results):
        return 2
    return 1 if any(r.check_passed is False for r in results) else 0
