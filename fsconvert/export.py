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

    On any error the temporary folder is removed and `out_dir` is left as it was.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise OutputError(f"{out_dir}: already exists (use --overwrite to replace it)")
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputError(f"{out_dir}: exists and is not a folder")
    parent = out_dir.absolute().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".partial", dir=parent))
    except OSError as exc:
        raise OutputError(f"{out_dir}: cannot create output: {exc.strerror or exc}") from None
    try:
        yield tmp
        os.chmod(tmp, 0o755)
        _replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _replace(tmp: Path, out_dir: Path) -> None:
    old = None
    try:
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.{os.getpid()}.old")
            os.rename(out_dir, old)
        os.rename(tmp, out_dir)
    except OSError as exc:
        if old is not None and not out_dir.exists():
            os.rename(old, out_dir)
        raise OutputError(f"{out_dir}: cannot move the finished export into place: {exc.strerror or exc}") from None
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
            "tuple": str(capture.root.resolve()),
            "mesh": str(capture.mesh.resolve()) if capture.mesh else None,
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
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"not an fsconvert export (no {MANIFEST})", file=export_dir) from None
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"unreadable manifest: {exc}", file=path) from None


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

