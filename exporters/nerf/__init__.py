"""NeRF family: `transforms.json` (nerfstudio, instant-ngp) or Blender `transforms_{train,val,test}.json`.

Default format, one folder that nerfstudio's `nerfstudio-data` parser and instant-ngp load unmodified:

    OUT/transforms.json        camera_model OPENCV, applied_transform + applied_scale, aabb_scale,
                               ply_file_path, optional train/val/test_filenames, and per frame
                               file_path (with extension), transform_matrix (camera→world, OpenGL
                               axes), fl_x fl_y cx cy (pixel corner origin: OpenCV c + 0.5) w h,
                               k1 k2 k3 p1 p2 when the lens model is kept, mask_path, depth_file_path
    OUT/images/<id>.<ext>      OUT/masks/<id>.png (255 = mesh, within the undistorted image's data)
    OUT/depths/<id>.png        (uint16 z-depth, 0 = background)
    OUT/mesh.ply  OUT/points3D.ply (x y z nx ny nz red green blue: mesh vertices, splatting init)

`--variant blender` writes `transforms_{train,val,test}.json` (camera_angle_x, file_path without
extension; `--for 3dgs`: train and test only) and RGBA PNG images for the original NeRF, 3DGS and
nerfstudio's `blender-data`, which read one horizontal FoV and assume a centred principal point:
portrait views are turned landscape (K and R exact), every view keeps its focal and gets the width
that gives the widest view's FoV and the height that holds all its source pixels, and alpha is 0
where a pixel has no source data (with `--masks`, outside the mesh too). The point cloud is
`points3d.ply`, the name 3DGS's Blender reader looks for.

Normalization is a world similarity X' = s·R·X + t (R = I here). The files hold the normalized frame
and record it the way nerfstudio composes it, X' = applied_scale · (applied_transform · X), i.e.
applied_transform = [R | t/s], applied_scale = s. Depth PNGs store z-depth in steps of
`depth_unit_scale_factor` units of the SOURCE frame (before normalization): nerfstudio reads value ×
depth_unit_scale_factor × dataparser_scale, and its dataparser_scale already includes applied_scale.

An aligned capture (`--align`, FaceScape's Rt_scale_dict) IS the source frame here: cameras, mesh,
points and depth are in TU millimetres (or metres), applied_transform/applied_scale hold only the
normalization on top, and `fsconvert_alignment` records the similarity from the SfM frame. Putting
the alignment into applied_scale instead would make nerfstudio scale the ply_file_path points and
the depth a second time. Depth PNGs of an aligned capture are in millimetres by default
(`depth_unit` is then in metres); depth_unit_scale_factor says what one step is in the file's unit.
"""

from .layout import NAME
from .programs import PROGRAMS, read
from .writer import SUMMARY, Options, default_reader, write

__all__ = ["NAME", "PROGRAMS", "SUMMARY", "Options", "default_reader", "read", "write"]
