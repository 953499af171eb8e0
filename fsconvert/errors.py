"""User-facing errors: one line on stderr, exit code 2, no traceback."""

from __future__ import annotations

from pathlib import Path
from typing import TypedDict

MAX_KEY_CHARS = 80
"""Longer keys (from damaged files) are shortened in messages."""


def one_line(text: str) -> str:
    """`text` with every non-printable character (newline, escape, lone surrogate, ...) escaped."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


class Where(TypedDict, total=False):
    """Where a bad value is, as InputError takes it: `InputError(message, **where)`."""

    file: str | Path | None
    view: int | str | None
    key: str | None


class FsconvertError(Exception):
    """An error caused by the user's input or environment, reported as one printable line."""

    exit_code = 2

    def __str__(self) -> str:
        return one_line(super().__str__())


class InputError(FsconvertError):
    """Bad input, located by file, view and key where they apply."""

    def __init__(
        self,
        message: str,
        *,
        file: str | Path | None = None,
        view: int | str | None = None,
        key: str | None = None,
    ) -> None:
        self.file, self.view, self.key, self.reason = file, view, key, message
        where = [str(file)] if file is not None else []
        if view is not None:
            where.append(f"view {view}")
        if key is not None:
            shown = key if len(key) <= MAX_KEY_CHARS else key[:MAX_KEY_CHARS] + "…"
            where.append(f"key '{shown}'")
        super().__init__(": ".join(where + [message]))


class OutputError(FsconvertError):
    """The output cannot be written (exists, read-only, disk full, ...)."""
