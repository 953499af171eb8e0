"""The NeRF layouts' names and constants, shared by the writer and the programs' reading rules."""

from __future__ import annotations

NAME = "nerf"
SPLITS = ("train", "val", "test")
TRANSFORMS = "transforms.json"
IMAGES, MASKS, DEPTHS = "images", "masks", "depths"
MESH = "mesh.ply"
POINTS = "points3D.ply"
BLENDER_POINTS = "points3d.ply"
"""3DGS's Blender reader loads `points3d.ply` (else it draws 100k random points)."""
CAMERA_MODEL = "OPENCV"
PERSPECTIVE_MODELS = ("SIMPLE_PINHOLE", "PINHOLE", "SIMPLE_RADIAL", "RADIAL", "OPENCV")
"""nerfstudio camera models that are the perspective k1..k4 p1 p2 model."""
ALIGNMENT_KEY = "fsconvert_alignment"
"""transforms.json key recording the Rt_scale_dict similarity the world frame is already in."""
LEGACY_APPLIED_TRANSFORM = [[0, 1, 0, 0], [1, 0, 0, 0], [0, 0, -1, 0]]
"""nerfstudio assumes this when applied_transform is absent and colmap/sparse/0 exists."""
GAUSSIAN_SPLITS = ("train", "test")
"""The Blender split files 3DGS's reader opens (`readNerfSyntheticInfo`): never transforms_val.json."""
