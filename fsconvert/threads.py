"""How many threads one process's native libraries use: OpenCV, llvmpipe (OSMesa renders), Open3D (OpenMP)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import cv2

RENDER_AND_OPENMP = ("LP_NUM_THREADS", "OMP_NUM_THREADS")
"""Read when llvmpipe creates its first context and when Open3D loads: set them before either."""


def limit_threads(threads: int, *, override: bool = True) -> None:
    """Use at most `threads` threads per library in this process (and in processes it spawns).

    `override=False` keeps values the environment already sets (a user's LP_NUM_THREADS, say).
    """
    cv2.setNumThreads(threads)
    for name in RENDER_AND_OPENMP:
        if override or name not in os.environ:
            os.environ[name] = str(threads)


@contextmanager
def opencv_threads(threads: int) -> Iterator[None]:
    """OpenCV's thread count set to `threads` while open, then put back as it was.

    The setting is process-wide (OpenCV holds one, `cv::setNumThreads`), not per calling thread: a pool of
    N Python threads each calling OpenCV opens this with 1 around the whole pool, so that N threads use N
    cores instead of each cv2 call also fanning out over every core (fsconvert.imagestage.run_plans).
    """
    previous = cv2.getNumThreads()
    cv2.setNumThreads(threads)
    try:
        yield
    finally:
        cv2.setNumThreads(previous)
