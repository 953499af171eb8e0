"""Remap maps and the arrays they are made in: undistortion maps computed coarse and upsampled (`CoarseMaps`, any
band of rows at full resolution), and each thread's reusable scratch arrays (`SCRATCH`) that the image stage
decodes, maps and remaps into.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import cv2
import numpy as np

from . import conventions as cv

_MAP_STEP = 4
"""Undistortion maps are computed every this many source pixels (decoded) and upsampled."""


class Scratch(threading.local):
    """Arrays reused from view to view, per thread: a 12.6 MP view's decoded and remapped images are ~76 MB,
    whose first touch (page faults) costs ~10 ms whenever they are allocated afresh."""

    def __init__(self) -> None:
        self.buffers: dict[str, np.ndarray] = {}

    def array(self, name: str, shape: tuple[int, ...], dtype: type) -> np.ndarray:
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        buf = self.buffers.get(name)
        if buf is None or buf.size < nbytes:
            buf = self.buffers[name] = np.empty(nbytes, np.uint8)
        return buf[:nbytes].view(dtype).reshape(shape)

    def release(self) -> None:
        self.buffers.clear()


SCRATCH = Scratch()
"""This thread's reusable map and image arrays (the image stage releases them after a run)."""


def undistort_maps(
    K_src: np.ndarray,
    dist: np.ndarray,
    R: np.ndarray | None,
    K_out: np.ndarray,
    size: tuple[int, int],
) -> tuple[np.ndarray, np.ndarray]:
    """`cv2.initUndistortRectifyMap`'s float32 maps (output pixel → source pixel), in ~40 % of its time
    (`CoarseMaps`)."""
    return CoarseMaps.of(K_src, dist, R, K_out, size).fine((0, size[1]))


@dataclass(frozen=True, eq=False)
class CoarseMaps:
    """Undistortion maps every s-th output pixel, from which `fine` gives any rows at full resolution.

    The map is smooth, so it is computed on the output image padded by s pixels on every side and
    downsampled by s (s output pixels span _MAP_STEP source pixels), then upsampled back by the integer
    factor s with cv2.resize, whose pixel-centre convention is the one resize_K encodes; the padding keeps
    every kept pixel between coarse samples. Measured ≤ 7e-4 px from the iterative inverse at 1/4 scale,
    where cv2.remap resolves positions to 1/32 px. A band of rows is upsampled from the coarse rows around it
    (one more on each side: bilinear reads two), at the same fractional positions: the same values as the
    whole image's, bit for bit (tests/test_imagestage.py).
    """

    maps: tuple[np.ndarray, np.ndarray]
    step: int
    width: int

    @classmethod
    def of(cls, K_src: np.ndarray, dist: np.ndarray, R: np.ndarray | None, K_out: np.ndarray,
           size: tuple[int, int]) -> CoarseMaps:
        s, (w, h) = max(1, int(_MAP_STEP * K_out[0, 0] / K_src[0, 0])), size
        coarse = tuple(n + 1 for n in cv.reduced_size((w + s, h + s), s))
        K_coarse = cv.resize_K(cv.crop_K(K_out, -s, -s), 1 / s, 1 / s)
        mx, my = cv2.initUndistortRectifyMap(K_src, dist, R, K_coarse, coarse, cv2.CV_32FC1)
        return cls((mx, my), s, w)

    def fine(self, rows: tuple[int, int], *, scratch: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """The float32 maps of output rows [rows[0], rows[1]) (views of larger arrays); `scratch`: in this
        thread's reusable arrays."""
        s, coarse_h = self.step, self.maps[0].shape[0]
        top, bottom = rows[0] + s, rows[1] + s  # rows of the padded output
        c0, c1 = max(0, top // s - 1), min(coarse_h, -(-bottom // s) + 1)
        size = (self.maps[0].shape[1] * s, (c1 - c0) * s)
        dst = (SCRATCH.array(name, size[::-1], np.float32) if scratch else None for name in ("map x", "map y"))
        mx, my = (cv2.resize(m[c0:c1], size, dst=d, interpolation=cv2.INTER_LINEAR)[top - c0 * s:bottom - c0 * s,
                                                                                      s:s + self.width]
                  for m, d in zip(self.maps, dst))
        return mx, my
