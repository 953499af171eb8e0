"""Exporters: one module per target format.

A module provides `NAME`, `SUMMARY`, a frozen `Options` dataclass (first field `image: ImageOptions`),
`write(capture, folder, options, *, workers, progress) -> dict` and `read(folder) -> list[ExportedView]`
(`fsconvert.protocol`; README, "Writing an exporter"). `fsconvert.export.export` runs it; its
`to-<name>` command and config keys are generated from `Options` (`fsconvert.options`).

The built-ins are `BUILTIN`; third parties add theirs in the `fsconvert.exporters` entry-point group.
"""

from __future__ import annotations

import importlib
import sys
from importlib.metadata import entry_points
from types import ModuleType

from fsconvert.protocol import missing

GROUP = "fsconvert.exporters"
BUILTIN = ("colmap", "nerf", "open3d", "facescape")
_WARNED: set[str] = set()


def available() -> dict[str, ModuleType]:
    """Exporter name → module: the built-ins, then the entry points of `GROUP`. A module that cannot be
    imported or lacks part of the protocol is left out with one warning line on stderr."""
    found: dict[str, ModuleType] = {}
    candidates = [(name, f"exporters.{name}", lambda n=name: importlib.import_module(f"exporters.{n}"))
                  for name in BUILTIN]
    candidates += [(ep.name, ep.value, ep.load) for ep in entry_points(group=GROUP) if ep.name not in BUILTIN]
    for name, where, load in candidates:
        try:
            module = load()
        except Exception as exc:  # a broken third-party plugin must not break the CLI
            _warn(name, f"failed to load ({where}): {exc}")
            continue
        lacks = missing(module)
        if getattr(module, "NAME", name) != name:
            lacks.append(f"NAME = '{name}' (it is {module.NAME!r})")
        if lacks:
            _warn(name, f"is unusable ({where}): missing {', '.join(lacks)}")
            continue
        found[name] = module
    return dict(sorted(found.items()))


def _warn(name: str, what: str) -> None:
    """Once per process (a command looks exporters up more than once)."""
    line = f"fsconvert: warning: exporter '{name}' {what}"
    if line not in _WARNED:
        _WARNED.add(line)
        print(line, file=sys.stderr)


def get(name: str) -> ModuleType:
    exporters = available()
    if name not in exporters:
        from fsconvert.errors import InputError

        raise InputError(f"unknown format '{name}' (available: {', '.join(exporters)})")
    return exporters[name]
