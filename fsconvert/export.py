"""What every exporter shares: staging into a temporary folder, the manifest, and the read-back type."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from . import __version__
from .errors import InputError, OutputError
from .imagestage import ViewPlan, run_plans
from .loader import layout_path
from .model import Camera, Capture

MANIFEST = Path("fsconvert") / "manifest.json"
"""Inside the export; not at the top level, where instant-ngp would load any *.json as a dataset."""

T = TypeVar("T")


@dataclass(frozen=True, eq=False)
class ExportedView:
    """One view as the target's reader sees it, converted back to the internal convention."""

    name: str
    """Image path relative to the export folder, as the target stores it."""
    camera: Camera
    world_to_cam: np.ndarray


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
    try:
        if dest.parent == dest:
            raise OutputError(f"{out_dir}: cannot replace the root folder")
        _check_replaceable(dest, overwrite, out_dir)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".partial", dir=dest.parent))
    except OSError as exc:
        raise OutputError(f"{out_dir}: cannot create output: {exc.strerror or exc}") from None
    try:
        yield tmp
        if not (tmp / MANIFEST).is_file():
            (tmp / MANIFEST).parent.mkdir(exist_ok=True)
            (tmp / MANIFEST).write_text(json.dumps({"fsconvert": __version__}) + "\n")
        os.chmod(tmp, 0o755)
        _replace(tmp, dest, out_dir)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        where = str(exc.filename or tmp).replace(str(tmp), str(out_dir))
        raise OutputError(f"{where}: {exc.strerror or exc}") from None
    except OutputError as exc:  # name files by their final path, not the temporary one
        shutil.rmtree(tmp, ignore_errors=True)
        raise OutputError(str(exc).replace(str(tmp), str(out_dir))) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


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
            old = dest.with_name(f".{dest.name}.{os.getpid()}.old")
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


def write_images(
    plans: Sequence[ViewPlan], names: Sequence[str], out_dir: Path, *, workers: int = 1, progress: bool = False
) -> None:
    """Run the image stage for each plan into `out_dir/name` (folders created as needed)."""
    dests = [out_dir / n for n in names]
    for d in {d.parent for d in dests}:
        d.mkdir(parents=True, exist_ok=True)
    run_plans(zip(plans, dests), workers=workers, progress=progress)


def write_manifest(
    out_dir: Path, fmt: str, capture: Capture, options: Any, names: Sequence[str], extra: dict | None = None
) -> None:
    """Record what was exported from what, so that `fsconvert check` can redo the comparison later."""
    manifest = {
        "fsconvert": __version__,
        "format": fmt,
        "source": {
            "tuple": str(layout_path(capture.root)),
            "mesh": str(layout_path(capture.mesh)) if capture.mesh else None,
            "subject": capture.subject,
            "expression": capture.expression,
            "include_invalid": any(not v.valid for v in capture.views),
        },
        "options": options_to_dict(options),
        "views": [{"id": v.id, "name": n} for v, n in zip(capture.views, names)],
        "excluded": [v.id for v in capture.excluded],
        **(extra or {}),
    }
    path = out_dir / MANIFEST
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(manifest, indent=2) + "\n")


def read_manifest(export_dir: str | Path) -> dict:
    path = Path(export_dir) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"not an fsconvert export (no {MANIFEST})", file=export_dir) from None
    except (OSError, ValueError) as exc:
        raise InputError(f"unreadable manifest: {exc}", file=path) from None
    if not isinstance(manifest, dict) or "format" not in manifest:
        raise InputError("not an export (fsconvert wrote this folder, but not with a to-<format> command)", file=path)
    return manifest


def options_to_dict(options: Any) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(options)))


def options_from_dict(cls: type[T], data: dict) -> T:
    """Rebuild a (possibly nested) options dataclass from `options_to_dict` output."""
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        value = data[f.name]
        default = cls.__dataclass_fields__[f.name].default_factory  # type: ignore[attr-defined]
        if isinstance(value, dict) and default is not dataclasses.MISSING and dataclasses.is_dataclass(default):
            value = options_from_dict(default, value)
        kwargs[f.name] = tuple(value) if isinstance(value, list) else value
    return cls(**kwargs)

