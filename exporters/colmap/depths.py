"""3D Gaussian Splatting's depth priors (`train.py -d depths`): written from the mesh, and read back as 3DGS
reads them.

What 3DGS reads (graphdeco-inria/gaussian-splatting, 2024 depth regularisation):
- `scene/dataset_readers.py` readColmapSceneInfo: with `-d DIR`, `sparse/0/depth_params.json` must exist
  (else "depth_params.json file not found" and exit); `med_scale` = the median of the positive "scale" of
  every entry (0 if none) is written into every entry, overwriting any given; a value without "scale" (a
  top-level "med_scale" number, say) exits. readColmapCameras: key and PNG stem = the image name without its
  last extension (`depth_key`), PNG `<source>/DIR/<key>.png`; a missing key prints "not found in
  depths_params" and leaves the PNG unscaled.
- `utils/camera_utils.py` loadCam: `cv2.imread(png, -1).astype(float32) / 2**16` (a missing or unreadable
  PNG raises).
- `scene/cameras.py` Camera: the map is resized to the training resolution, negative values set to 0, then,
  when scale > 0, `map * scale + offset`; `depth_mask` is all ones (no per-pixel mask: the image's alpha is
  not used for depth), and the view's prior is dropped (mask zeroed, depth_reliable False) when its scale is
  outside [0.2, 5] × med_scale.
- `train.py`: the loss `|render_pkg["depth"] − invdepthmap| · depth_mask`, the rasteriser's inverse depth,
  which is 0 where no Gaussian covers a pixel.

The rule written here. A view's PNG holds the inverse z-depth 1/z of the exact mesh rendered through its
output camera (`depthproducts.depth_bands`), 0 where the mesh is not seen; offset = 0, so that 0 decodes to
inverse depth 0, "nothing here", what the rasteriser renders for an empty pixel (3DGS has no per-pixel depth
mask: a positive offset would put a surface behind every background pixel). scale = the view's largest
inverse depth × 2**16 / (2**16 − 1): its nearest surface point is PNG value 65535, the whole 16-bit range
spans the view's own depths, and decoding is exact to half a step (scale / 2**17). Every positive scale is
raised to at least a quarter of the largest one, so that all lie within 4× of each other and of their median:
3DGS keeps every view's prior ([0.2, 5]). A view that sees no mesh gets an all-zero PNG and scale 0: a
warning, not an error, because its image and camera are still right and 3DGS trains it photometrically;
scale 0 is what `utils/make_depth_scale.py` writes for a view it cannot fit, and 3DGS then drops that view's
prior (0 < 0.2 × med_scale) and leaves it out of the median. No view seeing the mesh is an error (the
median would be 0 and 3DGS would keep every all-zero prior).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from fsconvert import conventions as cv
from fsconvert.depthproducts import Posed, depth_bands, depth_map
from fsconvert.errors import InputError
from fsconvert.jsonvalues import number, read_json
from fsconvert.writers import write_json, write_png

from .layout import DEPTH_PARAMS, DEPTHS, INVDEPTH_MAX, INVDEPTH_STEPS, NAME, RELIABLE_SCALE, SPARSE, depth_key

if TYPE_CHECKING:
    from pycolmap import Image as ColmapImage
    from pycolmap import Reconstruction

    from fsconvert.mesh import Geometry

SCALE_SPREAD = 4.0
"""Positive scales lie within this factor of the largest: inside 3DGS's [0.2, 5] × median."""
PRIOR_TOL = 1e-4
"""Largest median relative difference between a view's decoded prior and 1/z of the points3D it observes
(the 16-bit quantisation is ~1e-5 of the view's nearest inverse depth)."""


def inverse_depth(z: np.ndarray) -> np.ndarray:
    """1/z where the mesh is seen (z > 0), 0 elsewhere (float64)."""
    z64 = z.astype(np.float64)
    out: np.ndarray = np.divide(1.0, z64, out=np.zeros_like(z64), where=z64 > 0)
    return out


def own_scale(nearest: float) -> float:
    """The scale that puts a view's largest inverse depth at PNG value 65535."""
    return nearest * INVDEPTH_STEPS / INVDEPTH_MAX


def encode(inv: np.ndarray, scale: float) -> np.ndarray:
    """uint16 PNG values of an inverse-depth map: round(inv / scale · 2**16), 3DGS decoding png / 2**16 · scale."""
    if scale <= 0:
        return np.zeros(inv.shape, np.uint16)
    return np.clip(np.rint(inv / scale * INVDEPTH_STEPS), 0, INVDEPTH_MAX).astype(np.uint16)


_ROWS = 256
"""Rows of a depth map converted at a time: float64 temporaries of a band, not of a whole 12.6 MP map (100 MB
each)."""


def _row_bands(z: np.ndarray) -> list[slice]:
    return [slice(top, top + _ROWS) for top in range(0, len(z), _ROWS)]


def _prior(z: np.ndarray, scale: float) -> np.ndarray:
    """`encode(inverse_depth(z), scale)`, a band of rows at a time: the same values."""
    png = np.empty(z.shape, np.uint16)
    for rows in _row_bands(z):
        png[rows] = encode(inverse_depth(z[rows]), scale)
    return png


def spread_scales(nearest: np.ndarray) -> np.ndarray:
    """Per view: its own scale, raised to ≥ the largest / SCALE_SPREAD; 0 for a view that sees no mesh."""
    own = nearest * INVDEPTH_STEPS / INVDEPTH_MAX
    floor = own.max() / SCALE_SPREAD
    scales: np.ndarray = np.where(nearest > 0, np.maximum(own, floor), 0.0)
    return scales


def write_depth_priors(mesh: Geometry, plans: Sequence[Posed], names: list[str], ids: list[int],
                       folder: Path, *, progress: bool) -> tuple[dict[str, Any], list[str]]:
    """`depths/<key>.png` and `sparse/0/depth_params.json` (see the module docstring); (manifest record,
    warnings)."""
    keys = [depth_key(n) for n in names]
    (folder / DEPTHS).mkdir()
    nearest, written = np.zeros(len(plans)), np.zeros(len(plans))
    for i, bands in depth_bands(mesh, plans, progress=progress, desc="depth priors"):
        z = depth_map(bands, plans[i].camera.size)
        nearest[i] = max((inverse_depth(z[rows]).max(initial=0.0) for rows in _row_bands(z)), default=0.0)
        written[i] = own_scale(nearest[i])
        write_png(folder / DEPTHS / f"{keys[i]}.png", _prior(z, written[i]))
    if not nearest.any():
        raise InputError("--depths: no view sees the mesh (3DGS would keep every all-zero prior)")
    scales = spread_scales(nearest)
    raised = [i for i in range(len(plans)) if scales[i] != written[i]]
    if raised:  # views far behind the others: coarser steps, decoding as exact; drawn again (a view's depth does
        # not depend on the views drawn before it, `depth_bands`)
        for k, bands in depth_bands(mesh, [plans[i] for i in raised], progress=progress, desc="depth priors"):
            i = raised[k]
            write_png(folder / DEPTHS / f"{keys[i]}.png", _prior(depth_map(bands, plans[i].camera.size), scales[i]))
    write_json(folder / SPARSE / DEPTH_PARAMS, {k: {"scale": float(s), "offset": 0.0} for k, s in zip(keys, scales)})
    unseen = [ids[i] for i in range(len(plans)) if nearest[i] == 0]
    warnings = []
    if unseen:
        warnings.append(f"{NAME}: views {unseen} see no mesh: their {DEPTHS}/ PNGs are 0 and {DEPTH_PARAMS} gives "
                        "them scale 0, so 3DGS drops their depth prior (scale < 0.2 × med_scale) and trains them "
                        "on the image alone")
    positive = scales[scales > 0]
    record = {"folder": DEPTHS.as_posix(), "params": (SPARSE / DEPTH_PARAMS).as_posix(), "offset": 0.0,
              "med_scale": float(np.median(positive)), "raised": [ids[i] for i in raised], "no_mesh": unseen}
    return record, warnings


# ---- read ------------------------------------------------------------------------------------------


def read_depth_priors(folder: Path, rec: Reconstruction) -> list[str]:
    """Problems with the depth priors as `train.py -d depths` reads them (nothing when the export has none);
    an InputError where 3DGS stops. Each prior is also compared with 1/z of the points3D its view observes:
    the decoded inverse depth must be the model's (median relative difference ≤ PRIOR_TOL)."""
    path, depths = folder / SPARSE / DEPTH_PARAMS, folder / DEPTHS
    if not path.exists() and not depths.exists():
        return []
    if not path.is_file():
        raise InputError(f"{DEPTHS}/ without {SPARSE / DEPTH_PARAMS}: 3DGS exits (\"depth_params.json file not "
                         "found\")", file=folder)
    params = read_json(path)
    if not isinstance(params, dict) or not all(isinstance(v, dict) for v in params.values()):
        raise InputError("every value must be an object {\"scale\", \"offset\"}: 3DGS exits reading its scales",
                         file=path)
    scales = {k: number(v, "scale", {"file": path, "key": f"{k}.scale"}) for k, v in params.items()}
    positive = [s for s in scales.values() if s > 0]
    med = float(np.median(positive)) if positive else 0.0
    lo, hi = RELIABLE_SCALE[0] * med, RELIABLE_SCALE[1] * med
    images = sorted(rec.images.values(), key=lambda im: im.name)
    found: dict[str, list[str]] = {"missing": [], "dropped": [], "empty": [], "off": []}
    worst = 0.0
    for image in images:
        key = depth_key(image.name)
        inv = _decode(depths / f"{key}.png")
        if key not in params:
            found["missing"].append(f"'{key}'")
            continue
        scale = scales[key]
        if scale > 0:
            inv = inv * np.float32(scale) + np.float32(number(params[key], "offset",
                                                              {"file": path, "key": f"{key}.offset"}))
        reliable = not (scale < lo or scale > hi)
        if not reliable:
            if inv.any():
                found["dropped"].append(f"'{key}' (scale {scale:.6g})")
            continue
        if not inv.any():
            found["empty"].append(f"'{key}'")
            continue
        off = _prior_error(inv, image, rec)
        if off is not None and off > PRIOR_TOL:
            found["off"].append(f"'{key}'")
            worst = max(worst, off)
    extra = [f"'{k}'" for k in sorted(set(params) - {depth_key(im.name) for im in images})]
    problems = []
    if found["missing"]:
        problems.append(f"{DEPTH_PARAMS} has no entry for {_some(found['missing'])}: 3DGS prints \"not found in "
                        f"depths_params\" and trains on {DEPTHS}/<key>.png unscaled (png / 2**16)")
    if extra:
        problems.append(f"{DEPTH_PARAMS} names {_some(extra)}, no image's: 3DGS counts their scales in med_scale")
    if found["dropped"]:
        problems.append(f"3DGS drops the depth prior of {_some(found['dropped'])}: scale outside "
                        f"[{RELIABLE_SCALE[0]:g}, {RELIABLE_SCALE[1]:g}] × med_scale {med:.6g}")
    if found["empty"]:
        problems.append(f"3DGS keeps an all-zero depth prior (nothing anywhere) for {_some(found['empty'])}")
    if found["off"]:
        problems.append(f"the depth prior of {_some(found['off'])} (png / 2**16 × scale + offset) is up to "
                        f"{worst:.3g} (median relative) off 1/z of the points3D the view observes (> {PRIOR_TOL:g}):"
                        " 3DGS's depth loss would pull the Gaussians off the surface")
    return problems


def _decode(png: Path) -> np.ndarray:
    """The PNG as 3DGS loads it (float32, / 2**16, first channel, negatives 0); InputError where it raises."""
    raw = cv2.imread(str(png), cv2.IMREAD_UNCHANGED) if png.is_file() else None
    if raw is None:
        raise InputError("missing or unreadable: 3DGS's loadCam raises", file=png)
    inv: np.ndarray = raw.astype(np.float32) / np.float32(INVDEPTH_STEPS)
    if inv.ndim != 2:
        inv = inv[..., 0]
    inv[inv < 0] = 0
    return inv


def _prior_error(inv: np.ndarray, image: ColmapImage, rec: Reconstruction) -> float | None:
    """Median |prior · z − 1| over the points3D the image observes (the prior read bilinearly at each
    observation, pixel centres at +0.5 in COLMAP's coordinates, scaled to the PNG's size as
    utils/make_depth_scale.py does); None when it observes none."""
    observed = [(p.xy, p.point3D_id) for p in image.points2D if p.has_point3D()]
    if not observed:
        return None
    xy = np.array([o[0] for o in observed], dtype=np.float64)
    X = np.array([rec.points3D[o[1]].xyz for o in observed], dtype=np.float64)
    T = image.cam_from_world().matrix()
    z = X @ T[2, :3] + T[2, 3]
    s = inv.shape[0] / rec.cameras[image.camera_id].height
    px = cv.resize_points(xy - cv.PIXEL_CENTRE_SHIFT, s, s).astype(np.float32).reshape(-1, 1, 2)
    prior = cv2.remap(inv, px[..., 0], px[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE).reshape(-1)
    return float(np.median(np.abs(prior.astype(np.float64) * z - 1.0)))


def _some(items: list[str], shown: int = 3) -> str:
    """a, b, c and N more."""
    head = ", ".join(items[:shown])
    return head + (f" and {len(items) - shown} more" if len(items) > shown else "")
