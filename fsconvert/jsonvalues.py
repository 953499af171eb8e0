"""Reading JSON inputs and validating their values, for one-line InputErrors naming file and key."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .errors import InputError, Where

ROTATION_TOL = 1e-6
"""Largest |RᵀR − I| accepted for a rotation."""


def read_json(path: Path) -> object:
    """The parsed JSON file (duplicate keys refused), or a one-line InputError naming the file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read: {reason(exc)}", file=path) from None
    try:
        return json.loads(text, object_pairs_hook=lambda pairs: _no_duplicates(pairs, path))
    except json.JSONDecodeError as exc:
        raise InputError(f"invalid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}", file=path) from None
    except RecursionError:
        raise InputError("invalid JSON: nested too deeply", file=path) from None
    except ValueError as exc:  # e.g. an integer longer than Python converts (4300 digits)
        raise InputError(f"invalid JSON: {exc}", file=path) from None


def _no_duplicates(pairs: list[tuple[str, object]], path: Path) -> dict[str, object]:
    seen: dict[str, object] = {}
    for key, value in pairs:
        if key in seen:
            raise InputError("duplicate key", file=path, key=key)
        seen[key] = value
    return seen


def matrix(value: object, shapes: set[tuple[int, ...]], where: Where) -> np.ndarray:
    """`value` as a finite float64 array of one of `shapes`; `where` locates the InputError."""
    wanted = " or ".join("×".join(map(str, s)) for s in sorted(shapes, reverse=True))
    if not numbers_only(value):
        raise InputError(f"expected {wanted} numbers, got {show(value)}", **where)
    try:
        arr = np.array(value, dtype=np.float64)
    except ValueError:
        raise InputError(f"expected {wanted} numbers, got rows of different lengths", **where) from None
    except OverflowError:
        raise InputError("contains an integer too large for a float", **where) from None
    if arr.shape not in shapes:
        got = "×".join(map(str, arr.shape)) if arr.ndim else "a single number"
        raise InputError(f"expected {wanted} numbers, got {got}", **where)
    if not np.isfinite(arr).all():
        raise InputError("contains NaN or infinity", **where)
    return arr


def rigid(value: object, where: Where) -> np.ndarray:
    """A 3×4 or 4×4 [R|t] (last row 0 0 0 1, R a rotation) as a 3×4 array."""
    Rt = matrix(value, {(3, 4), (4, 4)}, where)
    if Rt.shape == (4, 4) and not np.array_equal(Rt[3], [0, 0, 0, 1]):
        raise InputError("a 4×4 Rt must have a last row of (0, 0, 0, 1)", **where)
    R = Rt[:3, :3]
    with np.errstate(over="ignore", invalid="ignore"):
        ortho = float(np.abs(R.T @ R - np.eye(3)).max())
    if not ortho <= ROTATION_TOL:
        raise InputError(f"R is not a rotation (max |RᵀR − I| = {ortho:.2g})", **where)
    if np.linalg.det(R) < 0:
        raise InputError("R has determinant −1 (a reflection, not a rotation)", **where)
    return Rt[:3]


def numbers_only(value: object) -> bool:
    """True for a number or nested lists of numbers (no strings, booleans or nulls that numpy would coerce)."""
    if isinstance(value, list):
        return all(numbers_only(v) for v in value)
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def show(value: object, limit: int = 40) -> str:
    """A short repr of a JSON value for a one-line message."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def reason(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


def read_object(path: Path) -> dict[str, object]:
    """The JSON file at `path`, which must hold an object (`read_json`)."""
    data = read_json(path)
    if not isinstance(data, dict):
        raise InputError(f"expected a JSON object, got {show(data)}", file=path)
    return data


def number(obj: dict[str, object], key: str, where: Where) -> float:
    """`obj[key]` as a finite float (not a boolean); `where` locates the InputError."""
    value = obj.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
        raise InputError("missing or not a number" if value is None else f"not a number: {show(value)}", **where)
    return float(value)


def text(obj: dict[str, object], key: str, where: Where) -> str:
    """`obj[key]` as a non-empty string; `where` locates the InputError."""
    value = obj.get(key)
    if not isinstance(value, str) or not value:
        raise InputError("missing or not a string", **where)
    return value
