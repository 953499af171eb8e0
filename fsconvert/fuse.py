"""TSDF fusion of RGB-D frames into a triangle mesh with Open3D's ScalableTSDFVolume.

Open3D's legacy pipeline uses the internal convention: OpenCV camera axes, `extrinsic` = world→camera,
the top-left pixel centre at (0, 0), no lens distortion, z-depth. Needs open3d 0.19 (in 0.20 the
ScalableTSDFVolume returns empty meshes).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
from tqdm import tqdm

from .errors import InputError
from .model import Camera

SDF_TRUNC_VOXELS = 4.0
"""Default truncation distance of the signed distance field, in voxels."""


@dataclass(frozen=True, eq=False)
class RGBDFrame:
    """One RGB-D image pair: 8-bit RGB colour, uint16 depth (raw / depth_scale = z-depth), pinhole camera."""

    color: Path
    depth: Path
    camera: Camera
    world_to_cam: np.ndarray


def integrate(
    frames: Sequence[RGBDFrame],
    *,
    voxel_size: float,
    depth_scale: float,
    depth_trunc: float,
    sdf_trunc: float | None = None,
    progress: bool = False,
) -> Any:  # an o3d.geometry.TriangleMesh (open3d has no type information)
    """Fuse `frames` into an `o3d.geometry.TriangleMesh` with vertex colours (world units of the poses).

    `depth_scale`: raw depth units per world unit; depths ≥ `depth_trunc` (world units) are ignored.
    """
    import open3d as o3d

    if voxel_size <= 0 or depth_scale <= 0 or depth_trunc <= 0:
        raise InputError("voxel_size, depth_scale and depth_trunc must be positive")
    volume = o3d.pipelines.integration.ScalableTSDFVolume(
        voxel_length=voxel_size,
        sdf_trunc=sdf_trunc if sdf_trunc is not None else SDF_TRUNC_VOXELS * voxel_size,
        color_type=o3d.pipelines.integration.TSDFVolumeColorType.RGB8,
    )
    for frame in tqdm(frames, desc="fuse", unit="img", disable=not progress, leave=False):
        cam = frame.camera
        if cam.has_distortion:
            raise InputError("TSDF fusion needs undistorted (pinhole) frames", file=frame.color)
        color = _read(o3d, frame.color, cam, channels=3, dtype=np.uint8)
        depth = _read(o3d, frame.depth, cam, channels=1, dtype=np.uint16)
        rgbd = o3d.geometry.RGBDImage.create_from_color_and_depth(
            color, depth, depth_scale=depth_scale, depth_trunc=depth_trunc, convert_rgb_to_intensity=False
        )
        intrinsic = o3d.camera.PinholeCameraIntrinsic(cam.width, cam.height, cam.K)
        volume.integrate(rgbd, intrinsic, np.asarray(frame.world_to_cam, dtype=np.float64))
    mesh = volume.extract_triangle_mesh()
    mesh.compute_vertex_normals()
    return mesh


def _read(o3d: ModuleType, path: Path, cam: Camera, *, channels: int, dtype: type) -> Any:  # an o3d.geometry.Image
    """An image read by Open3D, checked against the camera size and the expected pixel type."""
    with o3d.utility.VerbosityContextManager(o3d.utility.VerbosityLevel.Error):
        image = o3d.io.read_image(str(path))
    if image.is_empty():
        raise InputError("Open3D cannot read this image", file=path)
    pixels = np.asarray(image)
    height, width = pixels.shape[:2]
    if (width, height) != cam.size:
        raise InputError(f"image is {width}×{height}, its camera {cam.width}×{cam.height}", file=path)
    got = pixels.shape[2] if pixels.ndim == 3 else 1
    if got != channels or pixels.dtype != dtype:
        want = f"{channels} channel(s) of {np.dtype(dtype).name}"
        raise InputError(f"expected {want}, got {got} of {pixels.dtype.name}", file=path)
    return image
