"""Exporters: one module per target format.

An exporter module provides:

- ``NAME`` and ``SUMMARY`` (one line, shown by ``fsconvert --help``);
- ``Options``: a frozen dataclass with an ``image: ImageOptions`` field plus format options;
- ``add_arguments(group)`` and ``options_from_args(args, image: ImageOptions) -> Options`` for its
  ``to-<name>`` command (``default_image_format(args)`` optionally picks "jpg" or "png");
- ``write(capture, out_dir, options=Options(), *, overwrite=False, workers=1, progress=False) -> Path``:
  writes atomically (``fsconvert.export.staging``) and records ``fsconvert/manifest.json``;
- ``read(out_dir) -> list[ExportedView]``: the export read back through the target's own reader,
  cameras in the internal convention.

Built-ins are listed in the ``fsconvert.exporters`` entry-point group, where third parties add theirs.
"""

from __future__ import annotations

import importlib
import sys
from importlib.metadata import entry_points
from types import ModuleType

GROUP = "fsconvert.exporters"
BUILTIN = ("colmap", "nerf", "open3d", "facescape")


def available() -> dict[str, ModuleType]:
    """Exporter name → module: the entry points, plus the built-ins when not installed as a package."""
    found: dict[str, ModuleType] = {}
    for ep in entry_points(group=GROUP):
        try:
            found[ep.name] = ep.load()
        except Exception as exc:  # a broken third-party plugin must not break the CLI
            print(f"fsconvert: warning: exporter '{ep.name}' failed to load: {exc}", file=sys.stderr)
    for name in BUILTIN:
        if name not in found:
            try:
                found[name] = importlib.import_module(f"exporters.{name}")
            except ImportError as exc:
                print(f"fsconvert: warning: exporter '{name}' is unavailable: {exc}", file=sys.stderr)
    return dict(sorted(found.items()))


def get(name: str) -> ModuleType:
    exporters = available()
    if name not in exporters:
        from fsconvert.errors import InputError

        raise InputError(f"unknown format '{name}' (available: {', '.join(exporters)})")
    return exporters[name]
