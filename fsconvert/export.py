"""The export framework: `export` runs a format's `write` inside one staging folder, then writes the
manifest, runs the check and writes the batch record there, and renames the folder into place.

`staging` names its temporary folders here and only here; `leftovers` finds those that an interrupted
run left beside an output, for the next run to remove. An exception anywhere (Ctrl-C, or SIGTERM made
one by the command line) removes the staging folder; SIGINT and SIGTERM that arrive while it is being
made or moved into place take effect just after (`_signals_held`), so none is left untracked and the
output is the old one or the new one, never neither.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from types import ModuleType
from typing import Any

from exporters import get

from . import __version__
from .check import CheckReport, Overlays, check_export, overlay_policy
from .errors import OutputError
from .imagestage import keep_previews
from .measure import Thresholds
from .model import Capture
from .options import check_choices
from .protocol import MANIFEST, write_manifest, write_record
from .threads import STOP_SIGNALS, check_stop
from .viewpixels import measured_as_written
from .writers import write_text

_PARTIAL, _OLD = "partial", "old"
"""Suffixes of staging's temporary folders: `.<name>.<random>.partial` (being written) and
`.<name>.<pid>.old` (the replaced output, parked until the new one is in place)."""


@dataclass(frozen=True)
class Exported:
    """What `export` wrote."""

    out_dir: Path
    format: str
    views: tuple[int, ...]
    """Exported view ids."""
    excluded: tuple[int, ...]
    """Views left out because params.json marks them valid=false."""
    manifest: dict[str, Any]
    check: CheckReport | None
    """None when the check was not run."""


def export(
    capture: Capture,
    fmt: str | ModuleType,
    out: str | Path,
    options: Any = None,
    *,
    overwrite: bool = False,
    workers: int = 1,
    progress: bool = False,
    thresholds: Thresholds | None = Thresholds(),
    overlays: Overlays = "all",
    record: dict[str, Any] | None = None,
) -> Exported:
    """Export `capture` in format `fmt` (a name or an exporter module) to the folder `out`.

    One staging folder beside `out` receives, in order: the format's files (`write`), the manifest,
    the check (`thresholds` None skips it; `overlays`: which views get check/mv_result_<view>.jpg) and, when
    `record` (a `fsconvert.job.fingerprint`) is given, the batch record. It then replaces `out`,
    which must not exist unless `overwrite` (and then be an fsconvert export or empty). On any error
    nothing appears and `out` is left as it was. `options` None: the format's defaults.
    """
    module = get(fmt) if isinstance(fmt, str) else fmt
    options = module.Options() if options is None else options
    check_choices(options)
    views, excluded = tuple(v.id for v in capture.views), tuple(v.id for v in capture.excluded)
    report = None
    drawn = thresholds is not None and overlay_policy(overlays) != "none"
    with (staging(out, overwrite) as tmp, keep_previews(drawn) as previews,
          measured_as_written(thresholds is not None) as measured):
        extras = dict(module.write(capture, tmp, options, workers=workers, progress=progress))
        images, used = extras.pop("images", None), extras.pop("options", options)
        if not (isinstance(images, list) and len(images) == len(capture.views)):
            raise TypeError(f"{module.NAME}.write must return 'images': one image name per view "
                            f"({len(capture.views)}), got {images!r}")
        manifest = write_manifest(tmp, module.NAME, capture, used, images, extras)
        if thresholds is not None:
            report = check_export(tmp, thresholds, overlays=overlays, exporter=module, previews=previews,
                                  measured=measured, capture=capture)
        if record is not None:
            write_record(tmp, record, {"views": list(views), "excluded": list(excluded),
                                       "check_passed": None if report is None else bool(report.passed)})
    return Exported(Path(out), module.NAME, views, excluded, manifest,
                    None if report is None else replace(report, export_dir=Path(out)))


@contextmanager
def staging(out_dir: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside `out_dir`; on success it replaces `out_dir` by rename.

    On any error the temporary folder is removed and `out_dir` is left as it was; OS errors (disk
    full, read-only, ...) raised inside become one-line OutputErrors naming final paths. Every
    finished folder holds `MANIFEST` (a minimal one unless the caller wrote it), and `overwrite` only
    replaces such a folder or an empty one: a dataset given as output by mistake is never deleted.
    """
    out_dir = Path(out_dir)
    dest = Path(os.path.abspath(out_dir))  # "out/..", "." have no usable name
    tmp: Path | None = None
    try:
        check_stop()
        with _signals_held():  # else a signal between making the folder and setting `tmp` would leave it behind
            tmp = _staging_folder(dest, overwrite, out_dir)
        yield tmp
        if not (tmp / MANIFEST).is_file():
            (tmp / MANIFEST).parent.mkdir(exist_ok=True)
            write_text(tmp / MANIFEST, json.dumps({"fsconvert": __version__}) + "\n")
        os.chmod(tmp, 0o755)
        check_stop()  # a stopped run publishes nothing more, even where a library swallowed its KeyboardInterrupt
        with _signals_held():  # the old output or the new one, never neither
            _replace(tmp, dest, out_dir)
    except OSError as exc:
        assert tmp is not None  # _staging_folder raises OutputErrors only
        shutil.rmtree(tmp, ignore_errors=True)
        where = str(exc.filename or tmp).replace(str(tmp), str(out_dir))
        raise OutputError(f"{where}: {exc.strerror or exc}") from None
    except OutputError as exc:  # name files by their final path, not the temporary one
        if tmp is None:
            raise
        shutil.rmtree(tmp, ignore_errors=True)
        raise OutputError(str(exc).replace(str(tmp), str(out_dir))) from None
    except BaseException:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        raise


def _staging_folder(dest: Path, overwrite: bool, shown: Path) -> Path:
    """A new `.<name>.<random>.partial` folder beside `dest`, once `dest` may be replaced."""
    try:
        if dest.parent == dest:
            raise OutputError(f"{shown}: cannot replace the root folder")
        _check_replaceable(dest, overwrite, shown)
        dest.parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=f".{_PARTIAL}", dir=dest.parent))
    except OSError as exc:
        raise OutputError(f"{shown}: cannot create output: {exc.strerror or exc}") from None


def _check_replaceable(dest: Path, overwrite: bool, shown: Path) -> None:
    if not dest.exists():
        return
    if not overwrite:
        raise OutputError(f"{shown}: already exists (use --overwrite to replace it)")
    if not dest.is_dir():
        raise OutputError(f"{shown}: exists and is not a folder")
    if not (dest / MANIFEST).is_file() and any(dest.iterdir()):
        raise OutputError(f"{shown}: not written by fsconvert (no {MANIFEST}); refusing to replace it")


def _replace(tmp: Path, dest: Path, shown: Path) -> None:
    old = None
    try:
        if dest.exists():
            old = dest.with_name(f".{dest.name}.{os.getpid()}.{_OLD}")
            os.rename(dest, old)
        os.rename(tmp, dest)
    except OSError as exc:
        reason = f"{shown}: cannot move the finished export into place: {exc.strerror or exc}"
        if old is not None and not dest.exists():
            try:
                os.rename(old, dest)
            except OSError:
                raise OutputError(f"{reason}; the previous one is now {old}") from None
        raise OutputError(reason) from None
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextmanager
def _signals_held() -> Iterator[None]:
    """SIGINT and SIGTERM that arrive while open are delivered when it closes, to the handlers set before (in
    the main thread, which Python's signal handlers run in; elsewhere nothing is held)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    arrived: list[int] = []
    previous = {s: signal.signal(s, lambda signum, _: arrived.append(signum)) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, signal.SIG_DFL if handler is None else handler)  # None: set outside Python
        for signum in dict.fromkeys(arrived):
            signal.raise_signal(signum)


def leftovers(out_dir: Path) -> list[Path]:
    """Temporary folders that an interrupted `staging` of `out_dir` left beside it."""
    pattern = re.compile(rf"^\.{re.escape(out_dir.name)}\..*\.({_PARTIAL}|{_OLD})$")
    try:
        entries = list(out_dir.parent.iterdir())
    except OSError:
        return []
    return [e for e in entries if pattern.match(e.name) and e.is_dir() and not e.is_symlink()]


def remove_leftovers(out_dir: Path) -> None:
    """Remove the `leftovers` of `out_dir` (hold its `fsconvert.job.tuple_lock`: they are not another run's)."""
    for entry in leftovers(out_dir):
        shutil.rmtree(entry, ignore_errors=True)
