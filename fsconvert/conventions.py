"""The one place that converts between camera conventions.

Internal convention (FaceScape's, OpenCV's): camera axes x right, y down, z forward; poses are
world→camera 4×4; the centre of the top-left pixel is at (0, 0); distortion is k1 k2 p1 p2 k3.

Everything else an exporter needs is derived here: OpenGL axes (NeRF family, pyrender), camera→world,
the +0.5 corner-origin pixel convention (COLMAP,
nerfstudio, instant-ngp, pyrender), K under resize/crop/90° and 180° rotation, world similarities, projection
matrices K·[R|t] (IDR/NeuS world_mat) and LLFF's [down, right, backwards] camera→world columns.
"""

from __future__ import annotations

from typing import Literal

import cv2
import numpy as np

PIXEL_CENTRE_SHIFT = 0.5
"""Corner-origin principal point = OpenCV principal point + this."""

CV_TO_GL = np.diag([1.0, -1.0, -1.0, 1.0])
"""Right-multiplying a camera→world pose by this flips its camera y and z axes (CV ↔ GL, self-inverse)."""

CV_TO_LLFF = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, -1.0]])
"""Right-multiplying OpenCV camera→world rotation columns (right, down, forward) by this gives LLFF's
(down, right, backwards); self-inverse."""

ROLL_180 = np.diag([-1.0, -1.0, 1.0, 1.0])
"""Left-multiplying a world→camera pose by this rolls the camera 180° about its optical axis."""

TURN_90 = np.array([[0.0, -1.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
"""Left-multiplying a world→camera pose by this turns the camera's image 90° clockwise (x' = −y, y' = x);
its transpose turns it counter-clockwise."""


def homogeneous(Rt: np.ndarray) -> np.ndarray:
    """A 3×4 or 4×4 rigid transform as a 4×4 float64 matrix."""
    Rt = np.asarray(Rt, dtype=np.float64)
    T = np.eye(4)
    T[:3, :4] = Rt[:3, :4]
    return T


def invert_rigid(T: np.ndarray) -> np.ndarray:
    """Exact inverse of a rigid 4×4 transform ([R|t] → [Rᵀ|−Rᵀt])."""
    R, t = T[:3, :3], T[:3, 3]
    inv = np.eye(4)
    inv[:3, :3] = R.T
    inv[:3, 3] = -R.T @ t
    return inv


def w2c_to_c2w(w2c: np.ndarray) -> np.ndarray:
    """World→camera to camera→world, same camera axes."""
    return invert_rigid(homogeneous(w2c))


def c2w_to_w2c(c2w: np.ndarray) -> np.ndarray:
    """Camera→world to world→camera, same camera axes."""
    return invert_rigid(homogeneous(c2w))


def w2c_cv_to_c2w_gl(w2c: np.ndarray) -> np.ndarray:
    """OpenCV world→camera to OpenGL camera→world (NeRF `transform_matrix`, pyrender camera pose)."""
    return w2c_to_c2w(w2c) @ CV_TO_GL


def gl_view_matrix(w2c: np.ndarray) -> np.ndarray:
    """OpenCV world→camera to OpenGL's view matrix (world→camera, y up, looking down −z), computed as
    pyrender computes its V: the general inverse of the camera node's pose (`w2c_cv_to_c2w_gl`)."""
    return np.linalg.inv(w2c_cv_to_c2w_gl(w2c))


def gl_projection_matrix(K: np.ndarray, width: int, height: int, znear: float, zfar: float) -> np.ndarray:
    """OpenGL's projection matrix of pinhole `K` (no skew) for a `width`×`height` viewport and clip range znear..zfar,
    computed as pyrender's IntrinsicsCamera computes it (`pyrender/camera.py`, `get_projection_matrix`) from
    `pyrender_intrinsics`: the same float64 operations, so the same matrix to the last bit."""
    fx, fy, cx, cy = pyrender_intrinsics(K)
    P = np.zeros((4, 4))
    P[0][0] = 2.0 * fx / float(width)
    P[1][1] = 2.0 * fy / float(height)
    P[0][2] = 1.0 - 2.0 * cx / float(width)
    P[1][2] = 2.0 * cy / float(height) - 1.0
    P[3][2] = -1.0
    P[2][2] = (zfar + znear) / (znear - zfar)
    P[2][3] = (2 * zfar * znear) / (znear - zfar)
    return P


def c2w_gl_to_w2c_cv(c2w_gl: np.ndarray) -> np.ndarray:
    """OpenGL camera→world to OpenCV world→camera."""
    return c2w_to_w2c(homogeneous(c2w_gl) @ CV_TO_GL)


def camera_centre(w2c: np.ndarray) -> np.ndarray:
    """Camera centre in world coordinates, C = −Rᵀt."""
    centre: np.ndarray = -w2c[:3, :3].T @ w2c[:3, 3]
    return centre


def quat_wxyz_to_rotation(q: np.ndarray) -> np.ndarray:
    """Rotation matrix of a (w, x, y, z) quaternion (normalised first)."""
    w, x, y, z = np.asarray(q, dtype=np.float64) / np.linalg.norm(q)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])


def K_matrix(fx: float, fy: float, cx: float, cy: float) -> np.ndarray:
    """3×3 pinhole intrinsics."""
    return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])


def focal_from_fov(size: float, fov: float) -> float:
    """Focal length (pixels) giving field of view `fov` (radians) across `size` pixels (Blender's camera_angle_x)."""
    focal: float = 0.5 * size / np.tan(0.5 * fov)  # an np.float64
    return focal


def fov_from_focal(size: float, focal: float) -> float:
    """Field of view (radians) across `size` pixels at focal length `focal`."""
    return 2.0 * float(np.arctan(0.5 * size / focal))


def K_to_corner_origin(K: np.ndarray) -> np.ndarray:
    """OpenCV K (pixel centre at 0) → corner-origin K (pixel centre at 0.5): cx, cy += 0.5."""
    out = np.array(K, dtype=np.float64)
    out[:2, 2] += PIXEL_CENTRE_SHIFT
    return out


def K_from_corner_origin(K: np.ndarray) -> np.ndarray:
    """Corner-origin K → OpenCV K: cx, cy −= 0.5."""
    out = np.array(K, dtype=np.float64)
    out[:2, 2] -= PIXEL_CENTRE_SHIFT
    return out


def resize_K(K: np.ndarray, sx: float, sy: float) -> np.ndarray:
    """K after resizing the image by (sx, sy): f' = f·s, c' = (c + 0.5)·s − 0.5 (OpenCV convention)."""
    out = np.array(K, dtype=np.float64)
    out[0, :] *= sx
    out[1, :] *= sy
    out[0, 2] += PIXEL_CENTRE_SHIFT * sx - PIXEL_CENTRE_SHIFT
    out[1, 2] += PIXEL_CENTRE_SHIFT * sy - PIXEL_CENTRE_SHIFT
    return out


def resize_points(uv: np.ndarray, sx: float, sy: float) -> np.ndarray:
    """Pixel coordinates (N×2, OpenCV convention) after resizing by (sx, sy)."""
    uv = np.asarray(uv, dtype=np.float64)
    resized: np.ndarray = (uv + PIXEL_CENTRE_SHIFT) * np.array([sx, sy]) - PIXEL_CENTRE_SHIFT
    return resized


def crop_K(K: np.ndarray, x0: float, y0: float) -> np.ndarray:
    """K after cropping the image so that pixel (x0, y0) becomes (0, 0)."""
    out = np.array(K, dtype=np.float64)
    out[0, 2] -= x0
    out[1, 2] -= y0
    return out


def reduced_size(size: tuple[int, int], reduce: int) -> tuple[int, int]:
    """(width, height) of a width×height image decoded at 1/`reduce` (JPEG DCT scaling rounds up: ⌈n/r⌉)."""
    return -(-size[0] // reduce), -(-size[1] // reduce)


def image_centre(width: int, height: int) -> np.ndarray:
    """The centre of a width×height image in OpenCV pixel coordinates: ((W−1)/2, (H−1)/2); corner origin (W/2, H/2)."""
    return np.array([(width - 1) / 2.0, (height - 1) / 2.0])


def centred_K(K: np.ndarray, width: int, height: int, rule: CentreRule = "image-centre") -> np.ndarray:
    """K with the principal point where a program puts the centre of a width×height image (`centre_by_rule`)."""
    out = np.array(K, dtype=np.float64)
    out[:2, 2] = centre_by_rule(width, height, rule)
    return out


CentreRule = Literal["image-centre", "half-size"]
"""Where a program puts the principal point of an image it takes as centred, in OpenCV pixel coordinates:
"image-centre" ((W−1)/2, (H−1)/2: the true centre; COLMAP's W/2 in corner origin, 3DGS's FoV-only frustum,
mip-NeRF's `x − W/2 + 0.5`), "half-size" (W/2, H/2: nerf-pytorch and the original NeRF cast the ray of
pixel index i at (i − W/2)/f, `run_nerf_helpers.get_rays_np` with K = [[f, 0, 0.5·W], ...])."""


def centre_by_rule(width: int, height: int, rule: CentreRule) -> np.ndarray:
    """The principal point (OpenCV pixel coordinates) a program assumes for a width×height image (`CentreRule`)."""
    if rule == "half-size":
        return np.array([width / 2.0, height / 2.0])
    return image_centre(width, height)


def rotate180_K(K: np.ndarray, width: int, height: int) -> np.ndarray:
    """K of the image rotated by 180°: c' = (size − 1) − c."""
    out = np.array(K, dtype=np.float64)
    out[0, 2] = width - 1 - out[0, 2]
    out[1, 2] = height - 1 - out[1, 2]
    return out


def rotate180_w2c(w2c: np.ndarray) -> np.ndarray:
    """World→camera pose of the camera rolled 180° about its optical axis."""
    rolled: np.ndarray = ROLL_180 @ homogeneous(w2c)
    return rolled


def rotate180_dist(dist: np.ndarray) -> np.ndarray:
    """Distortion k1 k2 p1 p2 k3 under a 180° roll: radial terms stay, tangential terms change sign."""
    out = np.array(dist, dtype=np.float64)
    out[2:4] *= -1.0
    return out


def turn90(clockwise: bool) -> np.ndarray:
    """3×3 rotation new camera ← old camera of an image turned 90° (clockwise or counter-clockwise)."""
    return TURN_90[:3, :3] if clockwise else TURN_90[:3, :3].T


def rotate90_K(K: np.ndarray, width: int, height: int, clockwise: bool) -> np.ndarray:
    """K of the width×height image turned 90° (it becomes height×width): clockwise, pixel (u, v) moves
    to (height − 1 − v, u); counter-clockwise to (v, width − 1 − u). fx and fy swap."""
    K = np.asarray(K, dtype=np.float64)
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    if clockwise:
        return K_matrix(fy, fx, height - 1 - cy, cx)
    return K_matrix(fy, fx, cy, width - 1 - cx)


def rotate90_w2c(w2c: np.ndarray, clockwise: bool) -> np.ndarray:
    """World→camera pose of the camera whose image is turned 90° (see `rotate90_K`)."""
    turned: np.ndarray = (TURN_90 if clockwise else TURN_90.T) @ homogeneous(w2c)
    return turned


def similarity_matrix(scale: float, rotation: np.ndarray, translation: np.ndarray) -> np.ndarray:
    """4×4 world similarity X' = s·R·X + t."""
    S = np.eye(4)
    S[:3, :3] = scale * np.asarray(rotation, dtype=np.float64)
    S[:3, 3] = translation
    return S


def split_similarity(S: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """(s, R, t) of a 4×4 similarity X' = s·R·X + t."""
    A = np.asarray(S, dtype=np.float64)[:3, :3]
    s = float(np.linalg.norm(A[:, 0]))  # exact for s·I, where the cube root of det(A) is not
    return s, A / s, np.asarray(S, dtype=np.float64)[:3, 3].copy()


def apply_similarity(S: np.ndarray, points: np.ndarray) -> np.ndarray:
    """N×3 points X' = s·R·X + t of the 4×4 similarity `S`."""
    S = np.asarray(S, dtype=np.float64)
    moved: np.ndarray = np.asarray(points, dtype=np.float64) @ S[:3, :3].T + S[:3, 3]
    return moved


def rt_scale_similarity(scale: float, Rt: np.ndarray, unit: float = 1.0) -> np.ndarray:
    """4×4 similarity of a FaceScape `Rt_scale_dict` entry, X' = unit·(R·(scale·X) + t).

    FaceScape aligns a multi-view model to its TU model as X_tu = R·(s·X_mv) + t, TU in millimetres;
    `unit` converts millimetres to the unit wanted (1e-3: metres).
    """
    Rt = np.asarray(Rt, dtype=np.float64)
    return similarity_matrix(unit * scale, Rt[:3, :3], unit * Rt[:3, 3])


def invert_similarity(S: np.ndarray) -> np.ndarray:
    """Exact inverse of X' = s·R·X + t: X = (1/s)·Rᵀ·X' − (1/s)·Rᵀ·t."""
    s, R, t = split_similarity(S)
    return similarity_matrix(1.0 / s, R.T, -(R.T @ t) / s)


def similarity_to_nerfstudio(S: np.ndarray) -> tuple[np.ndarray, float]:
    """nerfstudio's (applied_transform 3×4, applied_scale) of X' = s·R·X + t; it composes them as
    X' = applied_scale · (applied_transform · X), so the stored translation is t / s."""
    s, R, t = split_similarity(S)
    return np.column_stack([R, t / s]), s


def similarity_from_nerfstudio(applied_transform: np.ndarray, applied_scale: float) -> np.ndarray:
    """The 4×4 similarity X' = applied_scale · (applied_transform · X)."""
    A = np.asarray(applied_transform, dtype=np.float64)
    return similarity_matrix(applied_scale, A[:, :3], applied_scale * A[:, 3])


def w2c_in_similar_world(w2c: np.ndarray, S: np.ndarray) -> np.ndarray:
    """World→camera pose in the world X' = s·R·X + t, with the camera frame scaled by s too.

    Projections are unchanged: the new camera sees s·X_cam, the same rays.
    """
    s, R, t = split_similarity(S)
    w2c = homogeneous(w2c)
    out = np.eye(4)
    out[:3, :3] = w2c[:3, :3] @ R.T
    out[:3, 3] = s * w2c[:3, 3] - out[:3, :3] @ t
    return out


def pyrender_intrinsics(K: np.ndarray) -> tuple[float, float, float, float]:
    """(fx, fy, cx, cy) for pyrender's IntrinsicsCamera, which centres pixels at +0.5."""
    Kc = K_to_corner_origin(K)
    return float(Kc[0, 0]), float(Kc[1, 1]), float(Kc[0, 2]), float(Kc[1, 2])


def w2c_cv_to_c2w_llff(w2c: np.ndarray) -> np.ndarray:
    """OpenCV world→camera to LLFF's 3×4 camera→world, rotation columns [down, right, backwards]
    (`Fyusion/LLFF` README, "Using your own poses")."""
    c2w = w2c_to_c2w(w2c)[:3]
    return np.column_stack([c2w[:, :3] @ CV_TO_LLFF, c2w[:, 3]])


def c2w_llff_to_w2c_cv(c2w_llff: np.ndarray) -> np.ndarray:
    """LLFF 3×4 camera→world [down, right, backwards | centre] to OpenCV world→camera 4×4."""
    c2w = np.asarray(c2w_llff, dtype=np.float64)[:3, :4]
    return c2w_to_w2c(np.column_stack([c2w[:, :3] @ CV_TO_LLFF, c2w[:, 3]]))


def projection_matrix(K: np.ndarray, w2c: np.ndarray) -> np.ndarray:
    """4×4 [K·[R|t]; 0 0 0 1]: world → pixels (OpenCV pixel centres) times depth (IDR's world_mat)."""
    P = np.eye(4)
    P[:3, :4] = np.asarray(K, dtype=np.float64) @ homogeneous(w2c)[:3, :4]
    return P


def decompose_projection(P: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(K with K[2,2] = 1, world→camera 4×4) of a 3×4 (or 4×4) projection matrix, by
    cv2.decomposeProjectionMatrix as IDR's and NeuS's `load_K_Rt_from_P` do, in P's precision."""
    P = np.asarray(P)[:3, :4]
    K, R, C = cv2.decomposeProjectionMatrix(P)[:3]
    c2w = np.eye(4)
    c2w[:3, :3] = R.T
    c2w[:3, 3] = (C[:3] / C[3])[:, 0]
    return K / K[2, 2], c2w_to_w2c(c2w)


def bounding_sphere(points: np.ndarray) -> tuple[np.ndarray, float]:
    """(centre, radius): the centre of the axis-aligned bounding box and the largest distance to it
    (NeuS `gen_cameras.py`'s sphere)."""
    points = np.asarray(points, dtype=np.float64)
    centre = (points.min(axis=0) + points.max(axis=0)) / 2
    return centre, float(np.linalg.norm(points - centre, axis=1).max())
