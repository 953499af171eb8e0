"""MVSNet / DTU: `images/%08d.jpg`, `cams/%08d_cam.txt`, `pair.txt`, optional `depths/%08d.pfm`.

The layout MVSNet, R-MVSNet, CasMVSNet, PatchmatchNet and TransMVSNet test on (`YoYo000/MVSNet`
README, "File Formats"; `mvsnet/preprocess.py`, `mvsnet/colmap2mvsnet.py`):

    OUT/images/<id>.jpg        undistorted (the cameras have no lens model), %08d of the FaceScape view id
    OUT/cams/<id>_cam.txt      line 0 "extrinsic", lines 1-4 the 4×4 world→camera matrix (OpenCV axes) row
                               by row, line 6 "intrinsic", lines 7-9 the 3×3 K row by row (OpenCV pixel
                               centres: colmap2mvsnet copies COLMAP's cx without shifting it, which is
                               ambiguous; the warping of MVSNet uses integer pixel coordinates, i.e. this
                               convention), line 11 the depth line, in the capture's world units
    OUT/pair.txt               the number of views, then per reference view its id and a line
                               "K id score id score …": the K = min(10, N − 1) best source views
    OUT/depths/<id>.pfm        with --depths: z-depth, float32 "Pf" little-endian, rows bottom to top,
                               0 = background (the DTU depth maps' layout)

The programs read the depth line two incompatible ways, so `--for` picks the form (never one that a
program it is for misreads):

- `--for mvsnet` (default): `DEPTH_MIN DEPTH_INTERVAL DEPTH_NUM DEPTH_MAX`, for MVSNet / R-MVSNet
  (`load_cam`: whitespace tokens, 27… min, interval, [num, [max]]), CasMVSNet and TransMVSNet's
  `general_eval` dataset (`read_cam_file`: line 11, min, interval, and with ≥ 3 tokens
  max = min + int(num)·interval, then `ndepths` hypotheses from min at (max − min)/ndepths ×
  interval_scale). DEPTH_INTERVAL = (MAX − MIN) / (NUM − 1), as colmap2mvsnet computes it.
- `--for patchmatchnet`: `DEPTH_MIN DEPTH_MAX`, for PatchmatchNet (`datasets/data_io.py` read_cam_file:
  `depth_params[0]`, `[1]`; a 4-token line gives it depth_max = the interval, below min). CasMVSNet and
  MVSNet read this line's MAX as the interval: wrong. (TransMVSNet's `tnt_eval` dataset reads `MIN MAX`
  too, but from `cams_1/` at Tanks and Temples' per-scene sizes: it does not read this layout.)

The depth range of a view is that of the mesh it sees (z-depth rendered through its camera), widened by
`depth_margin` of its extent on both sides. Images are always JPEG (`--image-format` does not apply).

The programs the check reads an export by (`PROGRAMS`; `fsconvert check --reader`):
"mvsnet" (load_cam with interval_scale 1, images at their size: the default for `--for mvsnet`; MVSNet's
test.py defaults --interval_scale to 0.8, with which R-MVSNet samples only the near 80 % of the range, and
resizes (K scaled without the half-pixel term) and crops by --max_w/--max_h: pass 1, and the image size, a
multiple of 8, as --max_w/--max_h), "casmvsnet" (line-indexed,
float32, and `scale_mvs_input`: every image resized to a multiple of 32 within 1152×864 with K scaled
without the half-pixel term, so an image whose size is not such a multiple is read a fraction of a pixel
off: the export warns with the number; `--intrinsics shared --size-multiple 32` with the frame within
1152×864, e.g. `--max-size 1152` for FaceScape's 3:2 views, makes it exact) and
"patchmatchnet" (line-indexed, float32, images as they are with `--image_max_dim -1`: the default for
`--for patchmatchnet`).

View selection follows colmap2mvsnet: for every pair of views, each mesh vertex both see adds
exp(−(θ − θ0)² / (2σ²)), θ the angle in degrees between the rays from the vertex to the two camera
centres, θ0 = 5°, σ = σ1 = 1 below θ0 and σ2 = 10 above (its defaults). The score matrix is
symmetric; a view is never its own source (colmap2mvsnet lists it with score 0 when N ≤ 10).
The networks need every image of a batch at one size: mixed portrait and landscape views are written
as they are (each camera exact), with a warning.
"""

from .programs import PROGRAMS, read
from .writer import NAME, SUMMARY, Options, default_reader, write

__all__ = ["NAME", "PROGRAMS", "SUMMARY", "Options", "default_reader", "read", "write"]
