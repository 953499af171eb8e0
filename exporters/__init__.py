"""Exporters: one module per target format, and the registry that finds them and the programs that read them.

A module provides `NAME`, `SUMMARY`, a frozen `Options` dataclass (first field `image: ImageOptions`),
`write(capture, folder, options, *, workers, progress) -> dict`, `read(folder) -> list[ExportedView]`
and optionally `PROGRAMS`, the programs that read its layout with their loading rules
(`fsconvert.protocol`; README, "Writing an exporter"). `fsconvert.export.export` runs it; its
`to-<name>` command and config keys are generated from `Options` (`fsconvert.options`); the check reaches
a format's programs only through `program` here.

The built-ins are the modules and packages of this package (`builtin`); third parties add theirs in the
`fsconvert.exporters` entry-point group.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
import sys
from collections.abc import Callable
from importlib.metadata import entry_points
from pathlib import Path
from types import ModuleType
from typing import Any

from fsconvert.errors import InputError
from fsconvert.protocol import Program, Reading, missing

GROUP = "fsconvert.exporters"


def builtin() -> list[str]:
    """The formats that come with fsconvert: every module and package of `exporters`."""
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


@functools.cache
def available() -> dict[str, ModuleType]:
    """Exporter name → module: the built-ins, then the entry points of `GROUP`, found once per process
    (`available.cache_clear()` looks again). A module that cannot be imported or lacks part of the
    protocol is left out with one warning line on stderr."""
    found: dict[str, ModuleType] = {}
    names = builtin()
    candidates: list[tuple[str, str, Callable[[], Any]]] = [
        (name, f"exporters.{name}", functools.partial(importlib.import_module, f"exporters.{name}")) for name in names]
    candidates += [(ep.name, ep.value, ep.load) for ep in entry_points(group=GROUP) if ep.name not in names]
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
    print(f"fsconvert: warning: exporter '{name}' {what}", file=sys.stderr)


def get(name: str) -> ModuleType:
    """The exporter module called `name`, or a one-line InputError listing the available ones."""
    exporters = available()
    if name not in exporters:
        raise InputError(f"unknown format '{name}' (available: {', '.join(exporters)})")
    return exporters[name]


def programs(module: ModuleType) -> dict[str, Program]:
    """Program name → its rules, for the programs that read `module`'s layout: its `PROGRAMS`, or one
    program of the format's own name that reads by its `read`."""
    declared: tuple[Program, ...] = getattr(module, "PROGRAMS", ())
    if not declared:
        read: Callable[[Path], list[Any]] = module.read
        declared = (Program(module.NAME, f"fsconvert's reader of the {module.NAME} layout",
                            lambda folder: Reading(read(folder))),)
    return {p.name: p for p in declared}


def program_names() -> list[str]:
    """Every program the registry knows (what `fsconvert check --reader` accepts), sorted."""
    return sorted({name for module in available().values() for name in programs(module)})


def default_program(module: ModuleType, options: Any) -> str:
    """The program the check reads an export written with `options` by: the format's `default_reader`,
    else its first program."""
    choose = getattr(module, "default_reader", None)
    return str(choose(options)) if callable(choose) else next(iter(programs(module)))


def program(module: ModuleType, name: str) -> Program:
    """The rules `name` reads `module`'s layout by, or a one-line InputError saying which programs do."""
    rules = programs(module)
    if name not in rules:
        known = program_names()
        if name not in known:
            raise InputError(f"unknown reader '{name}' (available: {', '.join(known)})")
        raise InputError(f"{name} does not read the {module.NAME} layout (its readers: {', '.join(rules)})")
    return rules[name]
