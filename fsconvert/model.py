"""The capture model: cameras, views and a tuple, in the internal (FaceScape/OpenCV) convention."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np

from . import conventions as cv
from .alignment import Alignment

UNDISTORT_CRITERIA = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 100, 1e-12)
"""Termination of every iterative undistortion (cv2.undistortPoints): converged to ~1e-12 px."""


@dataclass(frozen=True, eq=False)
class Camera:
    """Intrinsics: image size, 3×3 K (top-left pixel centre at (0, 0)), distortion k1 k2 p1 p2 k3."""

    width: int
    height: int
    K: np.ndarray
    dist: np.ndarray = field(default_factory=lambda: np.zeros(5))

    def __post_init__(self) -> None:
        object.__setattr__(self, "K", np.asarray(self.K, dtype=np.float64).reshape(3, 3))
        object.__setattr__(self, "dist", np.asarray(self.dist, dtype=np.float64).reshape(5))

    @property
    def fx(self) -> float:
        return float(self.K[0, 0])

    @property
    def fy(self) -> float:
        return float(self.K[1, 1])

    @property
    def cx(self) -> float:
        return float(self.K[0, 2])

    @property
    def cy(self) -> float:
        return float(self.K[1, 2])

    @property
    def size(self) -> tuple[int, int]:
        """(width, height)."""
        return self.width, self.height

    @property
    def has_distortion(self) -> bool:
        return bool(np.any(self.dist != 0))

    @property
    def is_portrait(self) -> bool:
        return self.height > self.width

    def pinhole(self) -> Camera:
        """The same camera without distortion."""
        return replace(self, dist=np.zeros(5))

    def project(self, points_cam: np.ndarray) -> np.ndarray:
        """Project N×3 camera-frame points to N×2 pixels, with distortion (cv2.projectPoints; the same
        arithmetic in numpy without distortion, ~10× faster)."""
        pts = np.asarray(points_cam, dtype=np.float64).reshape(-1, 3)
        if not self.has_distortion:
            return pts[:, :2] / pts[:, 2:] * [self.fx, self.fy] + [self.cx, self.cy]
        uv, _ = cv2.projectPoints(pts.reshape(-1, 1, 3), np.zeros(3), np.zeros(3), self.K, self.dist)
        return uv.reshape(-1, 2)

    def border_rays(self, reduce: int = 1) -> np.ndarray:
        """N×2 normalised undistorted coordinates (x, y) of the border of the image's data: every pixel
        centre of the outermost rows and columns of the image decoded at 1/`reduce`, in full-resolution
        pixels (what undistortion can bring into an output frame)."""
        W, H = cv.reduced_size(self.size, reduce)
        u, v = np.arange(W, dtype=np.float64), np.arange(H, dtype=np.float64)
        border = np.concatenate([np.column_stack([u, np.zeros(W)]), np.column_stack([u, np.full(W, H - 1.0)]),
                                 np.column_stack([np.zeros(H), v]), np.column_stack([np.full(H, W - 1.0), v])])
        full = cv.resize_points(border, reduce, reduce)
        xy = cv2.undistortPoints(full.reshape(-1, 1, 2), self.K, self.dist, criteria=UNDISTORT_CRITERIA)
        return np.asarray(xy).reshape(-1, 2)

    def equals(self, other: Camera, atol: float = 0.0) -> bool:
        return (
            self.size == other.size
            and np.allclose(self.K, other.K, rtol=0, atol=atol)
            and np.allclose(self.dist, other.dist, rtol=0, atol=atol)
        )


@dataclass(frozen=True, eq=False)
class View:
    """One image of a tuple with its camera and world→camera pose."""

    id: int
    image: Path
    camera: Camera
    world_to_cam: np.ndarray
    valid: bool = True
    sn: str = ""
    ori: str = ""
    matches: int = 0
    exif_orientation: int = 1
    """The JPEG's EXIF Orientation tag (1 without one). Ignored: params.json describes the stored pixel grid
    (its width and height), which is what fsconvert reads everywhere; a view whose tag is not 1 is
    re-encoded without it, never placed as it is (OpenCV's imread would turn it)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "world_to_cam", cv.homogeneous(self.world_to_cam))

    @property
    def R(self) -> np.ndarray:
        return self.world_to_cam[:3, :3]

    @property
    def t(self) -> np.ndarray:
        return self.world_to_cam[:3, 3]

    @property
    def cam_to_world(self) -> np.ndarray:
        return cv.w2c_to_c2w(self.world_to_cam)

    @property
    def centre(self) -> np.ndarray:
        """Camera centre in world coordinates."""
        return cv.camera_centre(self.world_to_cam)

    @property
    def c2w_opengl(self) -> np.ndarray:
        """Camera→world pose with OpenGL camera axes (x right, y up, z backwards)."""
        return cv.w2c_cv_to_c2w_gl(self.world_to_cam)

    def to_camera(self, points_world: np.ndarray) -> np.ndarray:
        """N×3 world points in this camera's frame."""
        in_camera: np.ndarray = np.asarray(points_world, dtype=np.float64) @ self.R.T + self.t
        return in_camera

    def project(self, points_world: np.ndarray) -> np.ndarray:
        """N×2 pixels of N×3 world points (with distortion)."""
        return self.camera.project(self.to_camera(points_world))


@dataclass
class Capture:
    """One FaceScape tuple: a subject's expression seen by many views, and its mesh."""

    subject: str
    expression: str
    root: Path
    views: list[View]
    mesh: Path | None = None
    excluded: list[View] = field(default_factory=list)
    """Views left out because params.json marks them valid=false."""
    alignment: Alignment | None = None
    """The similarity from the files' SfM frame to the frame of `views` and of `fsconvert.mesh.capture_mesh`."""

    @property
    def world(self) -> np.ndarray | None:
        """4×4 similarity from the files' frame (params.json, the mesh file) to the capture's frame; None: the same."""
        return None if self.alignment is None else self.alignment.similarity

    @property
    def name(self) -> str:
        return f"{self.subject}/{self.expression}"

    def view(self, view_id: int) -> View:
        for v in self.views:
            if v.id == view_id:
                return v
        raise KeyError(view_id)
