"""Which pixel measurement the check reports for a view, and the measurements the image stage makes as it writes.

The exported image is re-derived through the camera read back; where that camera puts every ray within
SAME_PIXELS_PX of where the plan's output camera puts it (`pixelcheck.agreement_px`, the camera check's own
numbers say how close), through the plan's camera instead: the same pixels to that, and the same numbers
whichever way they are measured. Three ways, by cost:

- an original placed unchanged (`ViewPlan.resample` false) whose bytes are the source JPEG's is its source:
  nothing to re-derive (`pixelcheck.identical`);
- while an export runs, `measured_as_written` has the image stage measure each image it writes, with the source
  image it has just decoded and the file it has just written, on the stage's threads: the check then uses that
  measurement if the file is still the one measured: the same inode, size and modification and change times
  (nanoseconds; any write sets the change time, which no tool can set back). Hashing the bytes instead cost
  two reads and SHA-256s of each file, ~4 ms per 4344-px JPEG (3 % of its export);
- otherwise (`fsconvert check OUT`, a file changed since, a camera read back differently) the source JPEG
  and the file are decoded again.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from . import conventions as cv
from .errors import InputError
from .imageplan import ViewPlan
from .imagestage import on_written, read_image
from .model import Camera
from .pixelcheck import PixelNumbers, agreement_px, decode_exported, identical, measure_pixels

SAME_PIXELS_PX = 2e-3
"""Read-back cameras within this of the plan's (pixels, everywhere in the image) are measured through the plan's:
a twenty-fifth of the default shift threshold (formats that store float32 or rounded decimals read back 4344-px
views within 6.3e-4 px)."""


FileIdentity = tuple[int, int, int, int, int]
"""A file's device, inode, size, modification and change times (ns): a write changes at least the last."""


@dataclass(frozen=True, eq=False)
class Written:
    """The pixel numbers of one image as the stage wrote it, and the identity of the file they were measured on."""

    identity: FileIdentity
    numbers: PixelNumbers


def _key(path: Path) -> str:
    return os.path.abspath(path)


def _identity(path: Path) -> FileIdentity:
    st = path.stat()
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


@contextmanager
def measured_as_written(enabled: bool = True) -> Iterator[dict[str, Written]]:
    """While open (and `enabled`), every image the image stage resamples is measured right after it is written
    (through its plan's camera); yields the measurements by absolute path, for `view_pixels`. A measurement that
    fails is left out: the check measures from the files and says what is wrong."""
    found: dict[str, Written] = {}

    def measure(plan: ViewPlan, path: Path, source: np.ndarray, data: bytes, rgb: bool) -> None:
        try:
            identity = _identity(path)
            if identity[2] != len(data):  # written again since
                return
            numbers = measure_pixels(source, plan.reduce, plan.view, plan.camera, plan.world_to_cam,
                                     decode_exported(data, path), rgb=rgb)
            if _identity(path) != identity:  # written again meanwhile
                return
        except (InputError, OSError, ValueError, cv2.error):
            return
        found[_key(path)] = Written(identity, numbers)  # one key per thread: no race

    with on_written(measure if enabled else None):
        yield found


def view_pixels(plan: ViewPlan, camera: Camera, w2c: np.ndarray, path: Path,
                measured: Mapping[str, Written]) -> PixelNumbers:
    """The pixel numbers of the exported image at `path`, read with `camera` at pose `w2c` (see the module's
    notes); InputError when the file or the source cannot be read or decoded."""
    try:
        if _identical(plan.camera, plan.world_to_cam, camera, w2c) or \
                agreement_px(plan.camera, plan.world_to_cam, camera, w2c) <= SAME_PIXELS_PX:
            camera, w2c = plan.camera, plan.world_to_cam
            written = measured.get(_key(path))
            if written is not None and written.identity == _identity(path):
                return written.numbers
            if not plan.resample and _same_bytes(path, plan.view.image):
                return identical(camera.size)
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read: {exc.strerror or exc}", file=path) from None
    exported = decode_exported(data, path)
    if exported.luma.shape[::-1] != camera.size:
        raise InputError(f"decodes to {exported.luma.shape[1]}×{exported.luma.shape[0]}, its camera says "
                         f"{camera.width}×{camera.height}", file=path)
    source, reduce = _decode_source(plan)
    return measure_pixels(source, reduce, plan.view, camera, w2c, exported)


def _identical(a: Camera, a_w2c: np.ndarray, b: Camera, b_w2c: np.ndarray) -> bool:
    """The same camera, exactly (most formats read back every digit)."""
    return a.equals(b) and np.array_equal(a_w2c[:3, :3], b_w2c[:3, :3])


def _same_bytes(path: Path, source: Path) -> bool:
    """The exported file holds the source's bytes (a link to it, or a copy); OSError if `path` cannot be read."""
    try:
        original = source.stat()
    except OSError:
        return False
    st = path.stat()
    if (st.st_dev, st.st_ino) == (original.st_dev, original.st_ino):  # linked
        return True
    if st.st_size != original.st_size:
        return False
    data = path.read_bytes()
    try:
        return data == source.read_bytes()
    except OSError:
        return False


def _decode_source(plan: ViewPlan) -> tuple[np.ndarray, int]:
    """The source JPEG at 1/`plan.reduce` as the stage decodes it (at full size where the decoder cannot
    reduce), and the reduction; an allowed corrupt one silently (the export warned already)."""
    view = plan.view
    with contextlib.redirect_stderr(io.StringIO()):
        img = read_image(view.image, plan.reduce, view.id, allow_corrupt=plan.options.allow_corrupt_images)
        if img.shape[1::-1] == cv.reduced_size(view.camera.size, plan.reduce):
            return img, plan.reduce
        return read_image(view.image, 1, view.id, allow_corrupt=plan.options.allow_corrupt_images), 1
