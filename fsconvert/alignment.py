"""FaceScape's `Rt_scale_dict.json`: per tuple, the similarity from its SfM frame to its TU model.

Structure `{"<id>": {"<expression number>": [s, Rt]}}` with Rt 3×4 (or 4×4 with a last row 0 0 0 1):
X_tu = R·(s·X_mv) + t, TU in millimetres (facescape-peers.md §0). A tuple `<id>/<n>_<name>` uses the
entry `[id][n]`. The whole file is validated when read, so that a damaged dict fails before anything
is written; a missing entry fails only the tuple that needs it.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import conventions as cv
from .errors import InputError, Where
from .jsonvalues import read_json, rigid, show

UNITS = {"mm": 1.0, "m": 1e-3}
"""Output unit → a millimetre (TU's unit) in that unit."""
DEFAULT_UNITS = "mm"

Entry = tuple[float, np.ndarray]
"""(s, Rt 3×4) of one tuple."""


@dataclass(frozen=True, eq=False)
class Alignment:
    """The similarity a capture is aligned with: its dict entry and the output unit."""

    path: Path
    subject: str
    expression: str
    """The entry's keys: subject id and expression number."""
    scale: float
    Rt: np.ndarray
    units: str = DEFAULT_UNITS

    @property
    def similarity(self) -> np.ndarray:
        """4×4 X' = unit·(R·(s·X) + t), from the tuple's SfM frame to the aligned frame."""
        return cv.rt_scale_similarity(self.scale, self.Rt, UNITS[self.units])

    @property
    def units_per_metre(self) -> float:
        return 1e3 * UNITS[self.units]

    def record(self) -> dict[str, object]:
        """What the manifest keeps: the dict and entry (FaceScape's scale s among them), the units, and the
        4×4 similarity from the SfM frame (to see that the dict is still the same)."""
        return {
            "rt_scale_dict": str(self.path.resolve()),
            "entry": [self.subject, self.expression],
            "units": self.units,
            "scale": self.scale,
            "similarity": self.similarity.tolist(),
        }


def check_units(units: str) -> str:
    if units not in UNITS:
        raise InputError(f"units must be one of {', '.join(UNITS)}, got {units!r}")
    return units


def expression_number(expression: str) -> str:
    """The dict's expression key of a tuple folder name: '4_anger' → '4'."""
    return expression.split("_", 1)[0]


def align_tuple(path: str | Path, subject: str, expression: str, units: str = DEFAULT_UNITS) -> Alignment:
    """The alignment of tuple `<subject>/<expression>` from the dict at `path`, or a one-line InputError."""
    path = Path(path)
    check_units(units)
    table = read_rt_scale_dict(path)
    number = expression_number(expression)
    if subject not in table:
        raise InputError(f"no entry for subject {subject} (tuple {subject}/{expression})", file=path, key=subject)
    if number not in table[subject]:
        raise InputError(f"no entry for expression {number} (tuple {subject}/{expression})", file=path,
                         key=f"{subject}.{number}")
    scale, Rt = table[subject][number]
    return Alignment(path, subject, number, scale, Rt, units)


def read_rt_scale_dict(path: str | Path) -> dict[str, dict[str, Entry]]:
    """The validated dict (parsed once per file version per process)."""
    path = Path(path)
    if not path.is_file():
        raise InputError("alignment file not found", file=path)
    stat = path.stat()
    return _parse(path, stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=2)
def _parse(path: Path, size: int, mtime_ns: int) -> dict[str, dict[str, Entry]]:
    data = read_json(path)
    if not isinstance(data, dict) or not data:
        raise InputError(f"expected a JSON object {{id: {{expression: [scale, Rt 3×4]}}}}, got {show(data)}",
                         file=path)
    table: dict[str, dict[str, Entry]] = {}
    for subject, expressions in data.items():
        if not isinstance(expressions, dict):
            raise InputError(f"expected an object {{expression: [scale, Rt 3×4]}}, got {show(expressions)}",
                             file=path, key=subject)
        table[subject] = {exp: _entry(value, path, f"{subject}.{exp}") for exp, value in expressions.items()}
    return table


def _entry(value: object, path: Path, key: str) -> Entry:
    where: Where = {"file": path, "key": key}
    if not isinstance(value, list) or len(value) != 2:
        raise InputError(f"expected [scale, Rt 3×4], got {show(value)}", **where)
    scale, Rt = value
    if not _positive_finite(scale):
        raise InputError(f"scale must be a positive finite number, got {show(scale)}", **where)
    try:
        return float(scale), rigid(Rt, where)
    except InputError as exc:
        raise InputError(f"Rt: {exc.reason}", **where) from None


def _positive_finite(value: object) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(float(value)) and value > 0
    except OverflowError:  # an integer beyond float range
        return False
