"""User-facing errors: one line on stderr, exit code 2, no traceback."""

from __future__ import annotations

from pathlib import Path


class FsconvertError(Exception):
    """An error caused by the user's input or environment, reported as one line."""

    exit_code = 2


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
            where.append(f"key '{key}'")
        super().__init__(": ".join(where + [message]))


class OutputError(FsconvertError):
    """The output cannot be written (exists, read-only, disk full, ...)."""
