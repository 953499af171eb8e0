"""The exporter protocol: what a format module provides (`missing` checks it), how a program reads an
export back (`ExportedView`, `Reading`, `Program`), and what the framework writes into every export
beside the format's files (the manifest, the batch record).

A format module has `NAME`, `SUMMARY`, a frozen `Options` dataclass whose first field is
`image: ImageOptions`, `write(capture, folder, options, *, workers, progress) -> dict` and
`read(folder) -> list[ExportedView]` (README, "Writing an exporter"). Optionally `PROGRAMS`, the
programs that read its layout, each with its own loading rules (`Program`; without it, one program of
the format's name that reads by `read`), and `default_reader(options) -> str`, the program the check
reads an export by (without it, the first of `PROGRAMS`). `write` may return a `"warnings"` list of
lines (printed in the summary, copied into check/check.json).
"""

from __future__ import annotations

import dataclasses
import json
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from . import __version__
from .errors import InputError
from .imageplan import ImageOptions
from .loader import layout_path
from .model import Camera, Capture
from .options import to_dict
from .writers import write_json, write_text

MANIFEST = Path("fsconvert") / "manifest.json"
"""Inside the export; not at the top level, where instant-ngp would load any *.json as a dataset."""
RECORD = Path("fsconvert") / "record.json"
"""Inside batch exports, written last: the fingerprint of the inputs and settings, and the outcome."""
CHECK_DIR = Path("check")
"""The check's results inside an export: numbers, page, rig plot, overlays `mv_result_<view>.jpg`."""
CHECK_JSON = CHECK_DIR / "check.json"
CHECK_PAGE = CHECK_DIR / "index.html"
RIG = CHECK_DIR / "rig.png"


@dataclass(frozen=True, eq=False)
class ExportedView:
    """One view as the target's reader sees it, converted back to the internal convention."""

    name: str
    """Image path relative to the export folder, as the target stores it."""
    camera: Camera
    world_to_cam: np.ndarray
    depth_range: tuple[float, float] | None = None
    """The z-depths the program samples this view between (MVSNet's depth hypotheses, LLFF's near and far),
    in the export's world units; None where it takes none from the export."""


@dataclass(frozen=True)
class Reading:
    """An export as one program reads it."""

    views: list[ExportedView]
    unread: dict[str, str] = field(default_factory=dict)
    """Image name → why this program leaves the view out (e.g. a split file it never opens)."""
    problems: list[str] = field(default_factory=list)
    """Where the program stops on, or misreads, the export as a whole (it stacks images of several sizes,
    it reads one K for all): one line each, naming the first offending view."""


@dataclass(frozen=True)
class Program:
    """A program that reads a format's layout, and its loading rules: `read` turns an export folder into
    the cameras that program would use (internal convention), keeping out what it ignores (3DGS: the
    principal point) and naming the views it would not load; a one-line InputError where it would stop."""

    name: str
    """What `fsconvert check --reader` calls it."""
    summary: str
    """What the program reads, and what it ignores or rejects."""
    read: Callable[[Path], Reading]


def missing(module: ModuleType) -> list[str]:
    """What `module` lacks of the protocol ([] when it is a usable exporter)."""
    lacks = [n for n in ("NAME", "SUMMARY") if not isinstance(getattr(module, n, None), str)]
    options = getattr(module, "Options", None)
    if not (isinstance(options, type) and dataclasses.is_dataclass(options)):
        lacks.append("Options (a dataclass)")
    else:
        if not options.__dataclass_params__.frozen:  # type: ignore[attr-defined]
            lacks.append("Options frozen")
        fields = dataclasses.fields(options)
        if not fields or fields[0].name != "image" or typing.get_type_hints(options)["image"] is not ImageOptions:
            lacks.append("Options.image: ImageOptions (the first field)")
    lacks += [n for n in ("write", "read") if not callable(getattr(module, n, None))]
    programs = getattr(module, "PROGRAMS", ())
    if not (isinstance(programs, tuple) and all(isinstance(p, Program) for p in programs)):
        lacks.append("PROGRAMS as a tuple of fsconvert.protocol.Program")
    return lacks


def write_manifest(out_dir: Path, fmt: str, capture: Capture, options: Any, names: Sequence[str],
                   extra: dict[str, Any]) -> dict[str, Any]:
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
        **({"alignment": capture.alignment.record()} if capture.alignment else {}),
        "options": to_dict(options),
        "views": [{"id": v.id, "name": n} for v, n in zip(capture.views, names)],
        "excluded": [v.id for v in capture.excluded],
        **extra,
    }
    path = out_dir / MANIFEST
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, manifest)
    return manifest


def read_manifest(export_dir: str | Path) -> dict[str, Any]:
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


def write_record(export_dir: Path, fingerprint: dict[str, Any], result: dict[str, Any]) -> None:
    path = export_dir / RECORD
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, json.dumps({"fingerprint": fingerprint, "result": result}, indent=1, sort_keys=True) + "\n")


def read_record(out_dir: Path) -> dict[str, Any] | None:
    """The record of an export, or None when absent or unreadable (then it is not up to date)."""
    try:
        record = json.loads((Path(out_dir) / RECORD).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or not isinstance(record.get("fingerprint"), dict):
        return None
    result = record.get("result")
    if not isinstance(result, dict) or not {"views", "excluded", "check_passed"} <= result.keys():
        return None
    return record
