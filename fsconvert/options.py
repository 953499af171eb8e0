"""Options dataclasses as command-line flags, YAML config keys and manifest JSON.

A field's type states its allowed values once (bool → flag, Literal → choices, `X | None`, fixed
tuples of numbers as "a,b,c"), its default is the dataclass default, and `option(...)` (or
`field(metadata=...)` with the same keys) adds help and spelling. Unset flags and keys are not
passed: the dataclass decides defaults and validates in `__post_init__`.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar

from .errors import InputError

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

T = TypeVar("T", bound="DataclassInstance")
METADATA = {"help", "name", "flags", "aliases", "choices", "parse", "metavar", "exclusive", "cli", "image_defaults"}
"""The field-metadata keys read here (others are refused: a misspelt key would be silently ignored)."""


def option(default: Any = MISSING, help: str = "", *, default_factory: Any = MISSING, name: str | None = None,
           flags: tuple[str, ...] | None = None, aliases: tuple[str, ...] = (),
           choices: dict[str, object] | None = None, parse: Callable[[str], object] | None = None,
           metavar: str | None = None, exclusive: str | None = None, cli: bool = True,
           image_defaults: dict[object, dict[str, object]] | None = None) -> Any:
    """A dataclass field with the metadata this module reads (see the module docstring and the README)."""
    given: dict[str, object] = dict(help=help, name=name, flags=flags, aliases=aliases, choices=choices, parse=parse,
                                    metavar=metavar, exclusive=exclusive, image_defaults=image_defaults)
    metadata = {k: v for k, v in given.items() if v or (k == "flags" and v is not None)}
    if not cli:
        metadata["cli"] = False
    return dataclasses.field(default=default, default_factory=default_factory, metadata=metadata)


@dataclass(frozen=True)
class Setting:
    """One field as one flag and one config key."""

    field: str
    key: str
    """Config key and argparse dest suffix."""
    flags: tuple[str, ...]
    """Option strings; empty for a positional argument."""
    help: str
    default: Any
    """The dataclass default (MISSING: required)."""
    parse: Callable[[str], Any] | None
    """Text → value; None for a bool flag and for choices."""
    choices: dict[str, Any] | None
    """Words → values."""
    metavar: str | None
    exclusive: str | None
    sequence: bool
    """A config may give a list (joined with commas before parsing)."""
    path: bool
    image_defaults: dict[Any, dict[str, Any]]

    @property
    def is_flag(self) -> bool:
        return self.parse is None and self.choices is None

    def from_config(self, value: object, file: Path, key: str, base: Path | None) -> Any:
        """A YAML value checked and converted as the command line would (MISSING for null)."""
        if self.is_flag:
            if not isinstance(value, bool):
                raise InputError(f"expected true or false, got {value!r}", file=file, key=key)
            return value
        if value is None:
            return MISSING
        if isinstance(value, list) and self.sequence:
            value = ",".join(map(str, value))
        if isinstance(value, (dict, list, bool)):
            raise InputError(f"expected a single value, got {value!r}", file=file, key=key)
        if self.choices is not None:
            if str(value) not in self.choices:
                raise InputError(f"expected one of {', '.join(self.choices)}, got {value!r}", file=file, key=key)
            return self.choices[str(value)]
        assert self.parse is not None  # not a flag and no choices: settings() gave it a parser
        try:
            converted = self.parse(str(value))
        except (ValueError, TypeError, argparse.ArgumentTypeError, InputError) as exc:
            reason = getattr(exc, "reason", None) or exc
            raise InputError(f"invalid value {value!r}: {reason}", file=file, key=key) from None
        if self.path and base is not None and not converted.is_absolute():
            converted = base / converted
        return converted


@functools.cache
def settings(cls: type) -> tuple[Setting, ...]:
    """The command-line/config settings of a dataclass: its fields except nested dataclasses and `cli: False`."""
    hints = _hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        meta = f.metadata
        if set(meta) - METADATA:
            raise TypeError(f"{cls.__qualname__}.{f.name}: unknown metadata {sorted(set(meta) - METADATA)}")
        if not meta.get("cli", True) or dataclasses.is_dataclass(hints[f.name]):
            continue
        tp = _unwrap_optional(hints[f.name])
        origin, args = typing.get_origin(tp), typing.get_args(tp)
        choices, parse = meta.get("choices"), meta.get("parse")
        if choices is None and parse is None:
            if origin is Literal:
                choices = {str(a): a for a in args}
            elif tp in (int, float, str, Path):
                parse = tp
            elif origin is tuple and all(a in (int, float, Ellipsis) for a in args):
                parse = _number_tuple(args)
            elif tp is not bool:
                raise TypeError(f"{cls.__qualname__}.{f.name}: type {tp} needs `parse` metadata")
        default = f.default if f.default_factory is MISSING else f.default_factory()
        if choices is None and parse is None and default is not False:
            raise TypeError(f"{cls.__qualname__}.{f.name}: a flag defaults to False (or give `choices`)")
        key = meta.get("name", f.name)
        flags = meta.get("flags")
        flags = (f"--{key.replace('_', '-')}",) if flags is None else tuple(flags)
        out.append(Setting(
            field=f.name, key=key, flags=flags + tuple(meta.get("aliases", ())), help=meta.get("help", ""),
            default=default, parse=parse, choices=choices, metavar=meta.get("metavar"),
            exclusive=meta.get("exclusive"), sequence=origin in (tuple, list, set), path=tp is Path,
            image_defaults=meta.get("image_defaults", {}),
        ))
    return tuple(out)


def nested(cls: type) -> dict[str, type]:
    """Field name → dataclass type of the nested dataclass fields (an exporter's `image: ImageOptions`)."""
    hints = _hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if dataclasses.is_dataclass(hints[f.name])}


def check_choices(options: Any) -> None:
    """InputError when a Literal-typed field (of nested options too) holds a value its type does not allow."""
    cls: type = type(options)
    hints = _hints(cls)
    for f in dataclasses.fields(options):
        value, tp = getattr(options, f.name), hints[f.name]
        if dataclasses.is_dataclass(value):
            check_choices(value)
        elif typing.get_origin(tp) is Literal and value not in typing.get_args(tp):
            allowed = ", ".join(map(str, typing.get_args(tp)))
            raise InputError(f"{f.name} must be one of {allowed}, got {value!r}")


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _unwrap_optional(tp: Any) -> Any:
    """X for `X | None`, else the type itself."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _number_tuple(args: tuple[Any, ...]) -> Callable[[str], tuple[float, ...]]:
    """The parser of `tuple[float, float, float]`, `tuple[int, ...]` and the like: "a,b,c"."""
    variable = args[-1] is Ellipsis

    def numbers(text: str) -> tuple[float, ...]:
        parts = text.split(",")
        if not variable and len(parts) != len(args):
            raise argparse.ArgumentTypeError(f"expected {len(args)} comma-separated numbers, got {text!r}")
        return tuple(kind(p) for kind, p in zip([args[0]] * len(parts) if variable else args, parts))

    numbers.__name__ = "comma-separated numbers"
    return numbers


# ---- the command line ------------------------------------------------------------------------------


def dest(section: str, setting: Setting) -> str:
    return f"{section}.{setting.key}" if section else setting.key


class Arguments(Protocol):
    """An argparse parser or argument group."""

    def add_argument(self, *flags: str, **kwargs: Any) -> argparse.Action: ...

    def add_mutually_exclusive_group(self, *, required: bool = False) -> Arguments: ...


def add_arguments(group: Arguments, cls: type, section: str) -> None:
    """One argument per setting of `cls`; values land in `args.<section>.<key>` (None when not given)."""
    exclusive: dict[str, Arguments] = {}
    for s in settings(cls):
        target = group
        if s.exclusive:
            if s.exclusive not in exclusive:
                exclusive[s.exclusive] = group.add_mutually_exclusive_group()
            target = exclusive[s.exclusive]
        kwargs: dict[str, Any] = {"help": _help(s)}
        if s.flags:
            kwargs |= {"dest": dest(section, s), "default": None, "required": s.default is MISSING}
        else:
            kwargs["metavar"] = s.key
        if s.is_flag:
            kwargs["action"] = "store_true"
        elif s.choices is not None:
            kwargs["choices"] = list(s.choices)
        else:
            kwargs |= {"type": s.parse, "metavar": s.metavar or (s.key.upper() if s.flags else s.key)}
        target.add_argument(*(s.flags or (dest(section, s),)), **kwargs)


def _help(s: Setting) -> str:
    shown = s.default not in (MISSING, None, False) and "default" not in s.help
    if s.choices is not None and shown:
        word = next((w for w, v in s.choices.items() if v == s.default), s.default)
        return f"{s.help} (default {word})".strip()
    return f"{s.help} (default {s.default})".strip() if shown else s.help


def from_args(args: argparse.Namespace, cls: type, section: str) -> dict[str, Any]:
    """Field name → value of the settings given on the command line."""
    values = {}
    for s in settings(cls):
        raw = getattr(args, dest(section, s))
        if raw is not None:
            values[s.field] = s.choices[raw] if s.choices is not None else raw
    return values


# ---- config files ----------------------------------------------------------------------------------


def from_mapping(cls: type, mapping: Mapping[str, object], *, file: Path, prefix: str = "",
                 base: Path | None = None) -> dict[str, Any]:
    """Field name → value of a config section; unknown keys and bad values are one-line InputErrors
    naming `prefix + key`. Relative paths are taken relative to `base`."""
    known = {s.key: s for s in settings(cls)}
    values = {}
    for key, value in mapping.items():
        s = known.get(key)
        if s is None:
            raise InputError(f"unknown key (expected one of: {', '.join(sorted(known)) or 'none'})", file=file,
                             key=f"{prefix}{key}")
        converted = s.from_config(value, file, f"{prefix}{key}", base)
        if converted is not MISSING:
            values[s.field] = converted
    return values


# ---- building and the manifest form ----------------------------------------------------------------


def build(cls: type[T], values: Mapping[str, Any], image: Mapping[str, Any] | None = None) -> T:
    """`cls(**values)`, its nested `image` options made from, in order: the class's own default for the
    field (a format's defaults, e.g. one shared frame), the image defaults that the chosen values imply
    (`image_defaults` metadata), and `image`."""
    kwargs = dict(values)
    defaults = {f.name: f for f in dataclasses.fields(cls)}
    for name, nested_cls in nested(cls).items():
        field = defaults[name]
        base = field.default_factory() if field.default_factory is not MISSING else nested_cls()
        implied: dict[str, Any] = {}
        for s in settings(cls):
            implied |= s.image_defaults.get(kwargs.get(s.field, s.default), {})
        kwargs[name] = dataclasses.replace(base, **{**implied, **(image or {})})
    return cls(**kwargs)


def to_dict(options: Any) -> dict[str, Any]:
    """The JSON form stored in manifests and records (tuples become lists)."""
    data: dict[str, Any] = json.loads(json.dumps(dataclasses.asdict(options)))
    return data


def from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """Rebuild a (possibly nested) options dataclass from `to_dict` output."""
    kinds = nested(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        value = data[f.name]
        if f.name in kinds and isinstance(value, dict):
            value = from_dict(kinds[f.name], value)
        kwargs[f.name] = tuple(value) if isinstance(value, list) else value
    return cls(**kwargs)
