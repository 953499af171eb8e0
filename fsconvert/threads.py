"""How many threads one process's native libraries use: OpenCV, llvmpipe (OSMesa renders), Open3D (OpenMP)."""

from __future__ import annotations

import os

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
