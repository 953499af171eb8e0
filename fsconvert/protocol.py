"""The exporter protocol: what a format module provides (`missing` checks it), the read-back type,
and what the framework writes into every export beside it (the manifest, the batch record).

A format module has `NAME`, `SUMMARY`, a frozen `Options` dataclass whose first field is
`image: ImageOptions`, `write(capture, folder, options, *, workers, progress) -> dict` and
`read(folder) -> list[ExportedView]` (README, "Writing an exporter"). Optionally
`default_reader(options) -> str`, the program whose loading rules the check applies (a key of
`fsconvert.readers.READERS`; without it, `read`), and a `"warnings"` list of lines among what
`write` returns (printed in the summary, copied into check/check.json).
"""

from __future__ import annotations

import dataclasses
import json
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from . import __version__
from .errors import InputError
from .imagestage import ImageOptions
from .loader import layout_path
from .model import Camera, Capture
from .options import to_dict

MANIFEST = Path("fsconvert") / "manifest.json"
"""Inside the export; not at the top level, where instant-ngp would load any *.json as a dataset."""
RECORD = Path("fsconvert") / "record.json"
"""Inside batch exports, written last: the fingerprint of the inputs and settings, and the outcome."""


@dataclass(frozen=True, eq=False)
class ExportedView:
    """One view as the target's reader sees it, converted back to the internal convention."""

    name: str
    """Image path relative to the export folder, as the target stores it."""
    camera: Camera
    world_to_cam: np.ndarray


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
    return lacks


def write_manifest(out_dir: Path, fmt: str, capture: Capture, options: Any, names: Sequence[str],
                   extra: dict) -> dict:
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
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


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


def write_record(export_dir: Path, fingerprint: dict, result: dict) -> None:
    path = export_dir / RECORD
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"fingerprint": fingerprint, "result": result}, indent=1, sort_keys=True) + "\n")


def read_record(out_dir: Path) -> dict | None:
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
