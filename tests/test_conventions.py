"""Each conversion of fsconvert.conventions against an independent computation."""

from __future__ import annotations

import cv2
import numpy as np
import pycolmap
import pytest
from helpers import rotation_to_quat_wxyz
from scipy.spatial.transform import Rotation

from fsconvert import conventions as cv


def random_pose(rng: np.random.Generator) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3] = Rotation.random(random_state=rng.integers(1 << 31)).as_matrix()
    T[:3, 3] = rng.normal(size=3)
    return T


def project(K, dist, w2c, X):
    rvec, _ = cv2.Rodrigues(w2c[:3, :3])
    uv, _ = cv2.projectPoints(X.reshape(-1, 1, 3), rvec, w2c[:3, 3], K, dist)
    return uv.reshape(-1, 2)


@pytest.fixture
def rng():
    return np.random.default_rng(7)


def test_invert_rigid_matches_numpy_inverse(rng):
    for _ in range(20):
        T = random_pose(rng)
        assert np.abs(cv.invert_rigid(T) - np.linalg.inv(T)).max() < 1e-12


def test_gl_pose_flips_camera_y_and_z(rng):
    """In the OpenGL camera frame a point has coordinates (x, −y, −z) of its OpenCV camera coordinates."""
    w2c = random_pose(rng)
    X = rng.normal(size=(50, 3))
    p_cv = X @ w2c[:3, :3].T + w2c[:3, 3]
    c2w_gl = cv.w2c_cv_to_c2w_gl(w2c)
    p_gl = (np.c_[X, np.ones(50)] @ np.linalg.inv(c2w_gl).T)[:, :3]
    assert np.abs(p_gl - p_cv * [1, -1, -1]).max() < 1e-12
    assert np.abs(cv.c2w_gl_to_w2c_cv(c2w_gl) - w2c).max() < 1e-12
    # the camera centre is the translation of the camera→world pose
    assert np.abs(c2w_gl[:3, 3] - cv.camera_centre(w2c)).max() < 1e-12


def test_gl_view_matrix_maps_world_to_gl_camera_coordinates(rng):
    """OpenGL's view matrix gives (x, −y, −z) of the OpenCV camera coordinates, with (0, 0, 0, 1) last row."""
    w2c = random_pose(rng)
    X = rng.normal(size=(50, 3))
    p_cv = X @ w2c[:3, :3].T + w2c[:3, 3]
    V = cv.gl_view_matrix(w2c)
    assert np.abs((np.c_[X, np.ones(50)] @ V.T)[:, :3] - p_cv * [1, -1, -1]).max() < 1e-12
    assert np.array_equal(V[3], [0, 0, 0, 1])


def test_quaternion_matches_scipy_and_round_trips(rng):
    mats = [Rotation.random(random_state=s).as_matrix() for s in range(200)]
    mats += [np.diag([1.0, -1, -1]), np.diag([-1.0, 1, -1]), np.diag([-1.0, -1, 1]), np.eye(3)]
    for R in mats:
        q = rotation_to_quat_wxyz(R)
        x, y, z, w = Rotation.from_matrix(R).as_quat()
        ref = np.array([w, x, y, z]) * (1 if w >= 0 else -1)
        assert q[0] >= 0
        assert np.abs(q - ref).max() < 1e-12 or abs(q[0]) < 1e-12 and np.abs(np.abs(q) - np.abs(ref)).max() < 1e-12
        assert np.abs(cv.quat_wxyz_to_rotation(q) - R).max() < 1e-12


def test_corner_origin_K_matches_pycolmap_projection(rng):
    """pycolmap (pixel centre at 0.5) projects like OpenCV (centre at 0) + 0.5 with K_to_corner_origin."""
    K = cv.K_matrix(4321.0, 4321.0, 570.3, 351.9)
    Kc = cv.K_to_corner_origin(K)
    cam = pycolmap.Camera(camera_id=1, model="PINHOLE", width=1086, height=724,
                          params=[Kc[0, 0], Kc[1, 1], Kc[0, 2], Kc[1, 2]])
    pts = np.c_[rng.uniform(-0.1, 0.1, (100, 2)), np.ones(100)] * rng.uniform(1, 5, (100, 1))
    uv_colmap = cam.img_from_cam(pts)
    uv_cv = project(K, np.zeros(5), np.eye(4), pts)
    assert np.abs(uv_colmap - (uv_cv + 0.5)).max() < 1e-9
    assert np.abs(cv.K_from_corner_origin(Kc) - K).max() == 0


def blob(shape, centre, sigma=3.0):
    y, x = np.mgrid[: shape[0], : shape[1]].astype(np.float64)
    return np.exp(-((x - centre[0]) ** 2 + (y - centre[1]) ** 2) / (2 * sigma**2))


def centroid(img):
    y, x = np.mgrid[: img.shape[0], : img.shape[1]]
    return np.array([(img * x).sum(), (img * y).sum()]) / img.sum()


@pytest.mark.parametrize("factor", [2, 4, 8])
def test_resize_points_match_a_block_average_resample(factor):
    """Brute force: average factor×factor blocks; a blob's centroid moves as resize_points says."""
    h, w = 48 * factor, 64 * factor
    centre = (w * 0.41 + 0.37, h * 0.53 + 0.21)
    img = blob((h, w), centre, sigma=2.0 * factor)
    small = img.reshape(h // factor, factor, w // factor, factor).mean(axis=(1, 3))
    expected = cv.resize_points(np.array([centre]), 1 / factor, 1 / factor)[0]
    assert np.abs(centroid(small) - expected).max() < 1e-6
    # K follows the same rule: the principal point maps like any pixel, the focal scales
    K = cv.K_matrix(1000.0, 1000.0, *centre)
    K2 = cv.resize_K(K, 1 / factor, 1 / factor)
    assert np.abs(K2[:2, 2] - expected).max() < 1e-12 and K2[0, 0] == 1000.0 / factor


def test_resize_K_with_separate_scales_matches_projection(rng):
    """Projecting with resize_K(K, sx, sy) = projecting with K then mapping pixels (c+0.5)s−0.5."""
    K = cv.K_matrix(4300.0, 4300.0, 560.2, 349.7)
    dist = np.array([0.3, 0.05, 4e-4, -2e-4, 0.1])
    w2c = np.eye(4)
    X = np.c_[rng.uniform(-0.1, 0.1, (100, 2)), np.full(100, 1.0)]
    sx, sy = 362 / 1086, 241 / 724
    uv = project(K, dist, w2c, X)
    uv_small = project(cv.resize_K(K, sx, sy), dist, w2c, X)
    assert np.abs(uv_small - ((uv + 0.5) * [sx, sy] - 0.5)).max() < 1e-9


def test_crop_K_matches_array_crop():
    img = blob((120, 160), (71.3, 40.6))
    crop = img[10:110, 20:150]
    K = cv.crop_K(cv.K_matrix(1, 1, 71.3, 40.6), 20, 10)
    assert np.abs(centroid(crop) - K[:2, 2]).max() < 1e-6


def test_rotate180_matches_a_rotated_image(rng):
    """A camera rolled 180° with rotated K, pose and distortion sees each point at (W−1−u, H−1−v)."""
    W, H = 1086, 724
    K = cv.K_matrix(4300.0, 4300.0, 560.2, 349.7)
    dist = np.array([0.3, 0.05, 4e-4, -2e-4, 0.1])
    w2c = random_pose(rng)
    X = cv.camera_centre(w2c) + (np.c_[rng.uniform(-0.1, 0.1, (100, 2)), np.ones(100)] * 3) @ w2c[:3, :3]
    uv = project(K, dist, w2c, X)
    uv_rot = project(cv.rotate180_K(K, W, H), cv.rotate180_dist(dist), cv.rotate180_w2c(w2c), X)
    assert np.abs(uv_rot - ([W - 1, H - 1] - uv)).max() < 1e-9
    # and matches the pixels of a 180°-rotated image array
    img = blob((H, W), tuple(uv[0]))
    assert np.abs(centroid(cv2.rotate(img, cv2.ROTATE_180)) - uv_rot[0]).max() < 1e-6


@pytest.mark.parametrize("clockwise", [True, False])
def test_rotate90_matches_a_turned_image_array(rng, clockwise):
    """A pinhole camera turned 90° with rotate90_K/rotate90_w2c sees each point where the image array turned
    by np.rot90 has it; fx and fy swap, and the turned image is H×W."""
    W, H = 724, 1086
    K = cv.K_matrix(4300.0, 4310.0, 355.2, 560.7)
    w2c = random_pose(rng)
    X = cv.camera_centre(w2c) + (np.c_[rng.uniform(-0.05, 0.05, (20, 2)), np.ones(20)] * 3) @ w2c[:3, :3]
    uv = project(K, np.zeros(5), w2c, X)
    K_t, w2c_t = cv.rotate90_K(K, W, H, clockwise), cv.rotate90_w2c(w2c, clockwise)
    uv_t = project(K_t, np.zeros(5), w2c_t, X)
    assert (K_t[0, 0], K_t[1, 1]) == (4310.0, 4300.0)
    assert np.abs(w2c_t[:3, :3] @ w2c_t[:3, :3].T - np.eye(3)).max() < 1e-12
    assert np.abs(cv.turn90(clockwise) @ w2c[:3, :3] - w2c_t[:3, :3]).max() < 1e-15
    for p, p_t in zip(uv[:3], uv_t[:3]):
        turned = np.rot90(blob((H, W), tuple(p)), k=-1 if clockwise else 1)
        assert turned.shape == (W, H)
        assert np.abs(centroid(turned) - p_t).max() < 1e-6


def test_centred_K_is_the_image_centre_in_both_conventions():
    K = cv.centred_K(cv.K_matrix(10, 10, 3, 4), 1086, 724)
    assert tuple(K[:2, 2]) == (542.5, 361.5)
    assert tuple(cv.K_to_corner_origin(K)[:2, 2]) == (543.0, 362.0)
    for w, h in ((1086, 724), (7, 4)):  # the mean of the pixel centres 0 … W−1, 0 … H−1
        assert tuple(cv.image_centre(w, h)) == (np.arange(w).mean(), np.arange(h).mean())


def test_similar_world_keeps_projections(rng):
    K = cv.K_matrix(4300.0, 4300.0, 560.2, 349.7)
    w2c = random_pose(rng)
    X = cv.camera_centre(w2c) + (np.c_[rng.uniform(-0.1, 0.1, (100, 2)), np.ones(100)] * 3) @ w2c[:3, :3]
    S = cv.similarity_matrix(0.037, Rotation.random(random_state=3).as_matrix(), rng.normal(size=3))
    s, R, t = cv.split_similarity(S)
    assert abs(s - 0.037) < 1e-14 and abs(np.linalg.det(R) - 1) < 1e-12
    w2c_new = cv.w2c_in_similar_world(w2c, S)
    X_new = X @ S[:3, :3].T + S[:3, 3]
    assert np.abs(project(K, np.zeros(5), w2c_new, X_new) - project(K, np.zeros(5), w2c, X)).max() < 1e-8
    assert np.abs(w2c_new[:3, :3] @ w2c_new[:3, :3].T - np.eye(3)).max() < 1e-12


def test_pyrender_intrinsics_are_corner_origin():
    assert cv.pyrender_intrinsics(cv.K_matrix(100, 90, 31.5, 23.0)) == (100.0, 90.0, 32.0, 23.5)


@pytest.mark.parametrize("size", [(640, 480), (2896, 4344), (333, 17)])
def test_gl_projection_matrix_is_pyrenders_to_the_bit(rng, size):
    import pyrender

    for _ in range(5):
        K = cv.K_matrix(*rng.uniform(200, 5000, 2), *(rng.uniform(0.2, 0.8, 2) * size))
        znear, zfar = sorted(rng.uniform(0.01, 900, 2))
        theirs = pyrender.IntrinsicsCamera(*cv.pyrender_intrinsics(K), znear=znear, zfar=zfar)
        assert np.array_equal(cv.gl_projection_matrix(K, *size, znear, zfar), theirs.get_projection_matrix(*size))


def test_similarity_inverse_and_nerfstudio_record(rng):
    S = cv.similarity_matrix(2.75, Rotation.random(random_state=5).as_matrix(), rng.normal(size=3))
    assert np.abs(cv.invert_similarity(S) - np.linalg.inv(S)).max() < 1e-12
    A, s = cv.similarity_to_nerfstudio(S)
    X = rng.normal(size=(20, 3))
    # nerfstudio's own composition of the record: X' = applied_scale · (applied_transform · X)
    assert np.abs(s * (X @ A[:, :3].T + A[:, 3]) - (X @ S[:3, :3].T + S[:3, 3])).max() < 1e-12
    assert np.abs(cv.similarity_from_nerfstudio(A, s) - S).max() < 1e-12


def test_focal_and_fov_are_inverse_and_match_the_pinhole_edge_ray():
    f = cv.focal_from_fov(1086, 0.25)
    # the image edge (corner origin: x = 0 and x = W) is seen at ±fov/2 from the centred principal point
    assert abs(np.arctan(543 / f) - 0.125) < 1e-15
    assert abs(cv.fov_from_focal(1086, f) - 0.25) < 1e-15


def _to_tu(points: np.ndarray, s: float, R: np.ndarray, t: np.ndarray, unit: float = 1.0) -> np.ndarray:
    """FaceScape's alignment X_tu = R·(s·X) + t, point by point, times `unit`."""
    return np.array([unit * (R @ (s * np.asarray(x)) + t) for x in points])


def _assert_close(found: np.ndarray, expected: np.ndarray) -> None:
    assert np.abs(np.asarray(found) - expected).max() <= 1e-12 * np.abs(expected).max()


def test_rt_scale_similarity_is_facescapes_formula(rng):
    R, t, s = Rotation.random(random_state=4).as_matrix(), rng.normal(size=3) * 100, 37.5
    X = rng.normal(size=(20, 3))
    for unit in (1.0, 1e-3):
        S = cv.rt_scale_similarity(s, np.column_stack([R, t]), unit)
        homogeneous = (S @ np.column_stack([X, np.ones(len(X))]).T).T[:, :3]
        _assert_close(homogeneous, _to_tu(X, s, R, t, unit))
        _assert_close(cv.apply_similarity(S, X), _to_tu(X, s, R, t, unit))


def test_aligned_pose_sees_the_aligned_point_at_the_same_pixel_and_scaled_depth(rng):
    R, t, s = Rotation.random(random_state=6).as_matrix(), rng.normal(size=3), 25.0
    S = cv.rt_scale_similarity(s, np.column_stack([R, t]))
    w2c = cv.homogeneous(np.column_stack([Rotation.random(random_state=7).as_matrix(), [0.1, -0.2, 3.0]]))
    X = rng.normal(size=(10, 3)) * 0.3
    cam = X @ w2c[:3, :3].T + w2c[:3, 3]
    new = cv.w2c_in_similar_world(w2c, S)
    cam_new = _to_tu(X, s, R, t) @ new[:3, :3].T + new[:3, 3]
    _assert_close(cam_new, s * cam)  # the same rays, depth in the new unit
    assert np.abs(new[:3, :3].T @ new[:3, :3] - np.eye(3)).max() < 1e-15


def test_llff_columns_match_nerf_pytorch_permutation(rng):
    """nerf-pytorch's `load_llff_data` turns LLFF columns (d, r, b) into (r, −d, b) = OpenGL (right, up, back)."""
    for _ in range(10):
        w2c = random_pose(rng)
        llff = cv.w2c_cv_to_c2w_llff(w2c)
        gl = np.concatenate([llff[:, 1:2], -llff[:, 0:1], llff[:, 2:]], 1)
        assert np.abs(gl - cv.w2c_cv_to_c2w_gl(w2c)[:3]).max() < 1e-12
        assert np.abs(cv.c2w_llff_to_w2c_cv(llff) - w2c).max() < 1e-12
        # column 0 points down the image: a world point one unit along it moves +v in the camera
        c = cv.camera_centre(w2c)
        down = (w2c[:3, :3] @ (c + llff[:, 0] + w2c[:3, :3].T @ [0, 0, 1]) + w2c[:3, 3])
        assert np.abs(down - [0, 1, 1]).max() < 1e-12


def test_projection_matrix_projects_like_opencv_and_decomposes_back(rng):
    for _ in range(10):
        w2c = random_pose(rng)
        K = cv.K_matrix(*rng.uniform(500, 5000, 2), *rng.uniform(100, 1000, 2))
        X = rng.normal(size=(30, 3)) + cv.camera_centre(w2c) + w2c[2, :3] * 10  # in front
        P = cv.projection_matrix(K, w2c)
        h = np.c_[X, np.ones(30)] @ P.T
        assert np.abs(h[:, 3] - 1).max() == 0
        assert np.abs(h[:, :2] / h[:, 2:3] - project(K, np.zeros(5), w2c, X)).max() < 1e-9
        K2, w2c2 = cv.decompose_projection(P * rng.uniform(0.1, 10))  # defined up to scale
        assert np.abs(K2 - K).max() < 1e-6 * K.max()
        assert np.abs(w2c2 - w2c).max() < 1e-9


def test_decomposition_matches_scipy_rq(rng):
    """K·R of the 3×3 block by an independent RQ decomposition (positive diagonal), camera centre as P's null vector."""
    from scipy.linalg import null_space, rq

    w2c = random_pose(rng)
    P = cv.projection_matrix(cv.K_matrix(1200, 1210, 300, 200), w2c)[:3]
    Kr, R = rq(P[:, :3])
    S = np.diag(np.sign(np.diag(Kr)))
    Kr, R = Kr @ S, S @ R
    K, w2c2 = cv.decompose_projection(P)
    C = null_space(P)[:, 0]
    assert np.abs(K - Kr / Kr[2, 2]).max() < 1e-9
    assert np.abs(w2c2[:3, :3] - R).max() < 1e-12
    assert np.abs(cv.camera_centre(w2c2) - C[:3] / C[3]).max() < 1e-12


def test_bounding_sphere_holds_every_point_and_touches_one(rng):
    X = rng.normal(size=(200, 3)) * [1, 2, 3] + 5
    centre, r = cv.bounding_sphere(X)
    assert np.abs(centre - (X.min(0) + X.max(0)) / 2).max() == 0
    d = np.linalg.norm(X - centre, axis=1)
    assert d.max() == r and (d <= r).all()
