"""MVSNet / DTU: `images/%08d.jpg`, `cams/%08d_cam.txt`, `pair.txt`, optional `depths/%08d.pfm`.

The layout MVSNet, R-MVSNet, CasMVSNet, PatchmatchNet and TransMVSNet test on (`YoYo000/MVSNet`
README, "File Formats"; `mvsnet/preprocess.py`, `mvsnet/colmap2mvsnet.py`):

    OUT/images/<id>.jpg        undistorted (the cameras have no lens model), %08d of the FaceScape view id
    OUT/cams/<id>_cam.txt      "extrinsic", the 4×4 world→camera matrix (OpenCV axes) row by row,
                               "intrinsic", the 3×3 K row by row (OpenCV pixel centres: colmap2mvsnet
                               copies COLMAP's cx without shifting it, which is ambiguous; the warping of
                               MVSNet uses integer pixel coordinates, i.e. this convention), then
                               DEPTH_MIN DEPTH_INTERVAL DEPTH_NUM DEPTH_MAX
    OUT/pair.txt               the number of views, then per reference view its id and a line
                               "K id score id score …": the K = min(10, N − 1) best source views
    OUT/depths/<id>.pfm        with --depths: z-depth, float32 "Pf" little-endian, rows bottom to top,
                               0 = background (the DTU depth maps' layout)

`load_cam` splits the file into whitespace tokens: token 0 "extrinsic", 1…16 E, 17 "intrinsic",
18…26 K, then 2, 3 or 4 depth values (with 2 DEPTH_NUM is the network's max_d and DEPTH_MAX =
MIN + INTERVAL·NUM; with 3 the same DEPTH_MAX). All four are written, so the range is explicit.
The depth range of a view is that of the mesh it sees (z-depth rendered through its camera), widened
by `depth_margin` of its extent on both sides; DEPTH_INTERVAL = (MAX − MIN) / (NUM − 1), as
colmap2mvsnet computes it. Images are always JPEG (`--image-format` does not apply).

View selection follows colmap2mvsnet: for every pair of views, each mesh vertex both see adds
exp(−(θ − θ0)² / (2σ²)), θ the angle in degrees between the rays from the vertex to the two camera
centres, θ0 = 5°, σ = σ1 = 1 below θ0 and σ2 = 10 above (its defaults). The score matrix is
symmetric; a view is never its own source (colmap2mvsnet lists it with score 0 when N ≤ 10).
The network needs every image of a batch at one size: mixed portrait and landscape views are written
as they are (each camera exact), with a warning.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from fsconvert import conventions as cv
from fsconvert.depthproducts import depth_range, point_visibility, render_depths
from fsconvert.errors import InputError
from fsconvert.imageplan import ImageOptions, plan_views
from fsconvert.imagestage import warn_mixed_sizes, write_images
from fsconvert.mesh import capture_mesh
from fsconvert.model import Camera, Capture
from fsconvert.options import option
from fsconvert.protocol import ExportedView
from fsconvert.writers import write_bytes

NAME = "mvsnet"
SUMMARY = "MVSNet / DTU cams/*_cam.txt + pair.txt (MVSNet, CasMVSNet, PatchmatchNet, TransMVSNet)"

IMAGES, CAMS, DEPTHS, PAIR = "images", "cams", "depths", "pair.txt"
SOURCES = 10
"""Source views listed per reference view (colmap2mvsnet)."""
THETA0, SIGMA1, SIGMA2 = 5.0, 1.0, 10.0
"""colmap2mvsnet's view-selection defaults (degrees)."""
VISIBILITY_TOLERANCE = 0.01
"""Relative depth tolerance of the visibility test of the view-selection points."""


@dataclass(frozen=True)
class Options:
    image: ImageOptions = field(default_factory=ImageOptions)
    depth_num: int = option(192, "DEPTH_NUM: depth hypotheses per view (MVSNet's max_d)")
    depth_margin: float = option(0.05, "widen each view's visible mesh depth range by this fraction of it, "
                                 "on both sides")
    depths: bool = option(False, "render z-depth maps into depths/<id>.pfm (float32, 0 = background)")

    def __post_init__(self) -> None:
        if self.depth_num < 2:
            raise InputError(f"depth_num must be at least 2, got {self.depth_num}")
        if not (np.isfinite(self.depth_margin) and self.depth_margin >= 0):
            raise InputError(f"depth_margin must be a number ≥ 0, got {self.depth_margin}")
        if not self.image.undistort:
            raise InputError("MVSNet cameras hold no lens distortion: use --distortion undistort")
        object.__setattr__(self, "image", replace(self.image, image_format="jpg"))  # loaders open images/%08d.jpg


def write(capture: Capture, folder: Path, options: Options, *, workers: int, progress: bool) -> dict[str, Any]:
    mesh = capture_mesh(capture, "the MVSNet export (depth ranges, view selection)")
    plans = plan_views(capture.views, options.image)
    if progress:
        warn_mixed_sizes(NAME, plans, "MVSNet")
    stems = [f"{p.view.id:08d}" for p in plans]
    names = [f"{IMAGES}/{s}.jpg" for s in stems]
    write_images(plans, names, folder, workers=workers, progress=progress)
    if options.depths:
        (folder / DEPTHS).mkdir()
    ranges: list[tuple[float, float]] = [(0.0, 0.0)] * len(plans)
    for i, depth in render_depths(mesh, plans, progress=progress):
        ranges[i] = depth_range(depth, options.depth_margin, plans[i].view.id)
        if options.depths:
            write_bytes(folder / DEPTHS / f"{stems[i]}.pfm", pfm_bytes(depth))
    (folder / CAMS).mkdir()
    for plan, stem, (lo, hi) in zip(plans, stems, ranges):
        write_bytes(folder / CAMS / f"{stem}_cam.txt",
                            cam_text(plan.world_to_cam, plan.camera.K, lo, hi, options.depth_num).encode("ascii"))
    seen = [s for s, _ in point_visibility(mesh, plans, mesh.vertices, VISIBILITY_TOLERANCE,
                                                   progress=progress)]
    scores = view_scores(np.array([p.view.centre for p in plans]), mesh.vertices, seen)
    write_bytes(folder / PAIR, pair_text([p.view.id for p in plans], scores).encode("ascii"))
    return {"images": names}


def cam_text(w2c: np.ndarray, K: np.ndarray, depth_min: float, depth_max: float, depth_num: int) -> str:
    """One `_cam.txt` (full float precision; colmap2mvsnet's layout)."""
    interval = (depth_max - depth_min) / (depth_num - 1)
    rows = ["extrinsic", *(_row(r) for r in cv.homogeneous(w2c)), "", "intrinsic", *(_row(r) for r in K), "",
            f"{_num(depth_min)} {_num(interval)} {depth_num} {_num(depth_max)}"]
    return "\n".join(rows) + "\n"


def _row(values: np.ndarray) -> str:
    return " ".join(_num(v) for v in values)


def _num(x: float) -> str:
    return repr(float(x))


def view_scores(centres: np.ndarray, points: np.ndarray, seen: list[np.ndarray]) -> np.ndarray:
    """N×N symmetric colmap2mvsnet scores from the points both views see (zero diagonal)."""
    n = len(centres)
    scores = np.zeros((n, n))
    for i in range(n):
        for j in range(i + 1, n):
            X = points[seen[i] & seen[j]]
            a, b = centres[i] - X, centres[j] - X
            cos = np.einsum("ij,ij->i", a, b) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
            theta = np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))
            sigma = np.where(theta <= THETA0, SIGMA1, SIGMA2)
            scores[i, j] = scores[j, i] = float(np.exp(-((theta - THETA0) ** 2) / (2 * sigma**2)).sum())
    return scores


def pair_text(ids: list[int], scores: np.ndarray) -> str:
    """pair.txt: per reference view its best min(10, N − 1) source views, best first (ties by id)."""
    lines = [str(len(ids))]
    for i, ref in enumerate(ids):
        order = sorted((j for j in range(len(ids)) if j != i), key=lambda j: (-scores[i, j], ids[j]))[:SOURCES]
        lines += [str(ref), " ".join([str(len(order)), *(f"{ids[j]} {scores[i, j]:.6f}" for j in order)])]
    return "\n".join(lines) + "\n"


def pfm_bytes(depth: np.ndarray) -> bytes:
    """A greyscale little-endian PFM ("Pf", scale −1), rows stored bottom to top (MVSNet's write_pfm)."""
    data = np.ascontiguousarray(np.flipud(depth.astype("<f4")))
    return f"Pf\n{depth.shape[1]} {depth.shape[0]}\n-1.000000\n".encode("ascii") + data.tobytes()



# ---- read ------------------------------------------------------------------------------------------


def read(folder: str | Path) -> list[ExportedView]:
    """Every `cams/*_cam.txt` parsed as `load_cam` does (whitespace tokens), with its `images/` JPEG."""
    folder = Path(folder)
    cams = sorted((folder / CAMS).glob("*_cam.txt"))
    if not cams:
        raise InputError(f"no {CAMS}/*_cam.txt", file=folder)
    views = []
    for path in cams:
        w2c, K, _ = parse_cam(path)
        name = f"{IMAGES}/{path.name[:-len('_cam.txt')]}.jpg"
        views.append(ExportedView(name, Camera(*_image_size(folder / name), K), w2c))
    return views


def parse_cam(path: Path) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    """(E 4×4, K 3×3, depth values) of a cam.txt, by token position like `load_cam`."""
    try:
        words = path.read_text(encoding="ascii").split()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read: {getattr(exc, 'strerror', None) or exc}", file=path) from None
    if len(words) not in (29, 30, 31) or words[0] != "extrinsic" or words[17] != "intrinsic":
        raise InputError(f"expected 'extrinsic' + 16 numbers, 'intrinsic' + 9, 2 to 4 depth values; "
                         f"found {len(words)} tokens", file=path)
    try:
        E = np.array(words[1:17], dtype=np.float64).reshape(4, 4)
        K = np.array(words[18:27], dtype=np.float64).reshape(3, 3)
        depth = tuple(float(w) for w in words[27:])
    except ValueError as exc:
        raise InputError(f"not a number: {exc}", file=path) from None
    if not (np.isfinite(E).all() and np.isfinite(K).all()):
        raise InputError("extrinsic and intrinsic must be finite", file=path)
    return E, K, depth


def _image_size(path: Path) -> tuple[int, int]:
    try:
        with Image.open(path) as im:
            return im.size
    except FileNotFoundError:
        raise InputError("image not found", file=path) from None
    except OSError as exc:
        raise InputError(f"not a readable image: {exc}", file=path) from None
