"""NeuS/IDR, MVSNet/DTU and LLFF exports read back by independent implementations of their loaders'
rules (written from NeuS `models/dataset.py`, MVSNet `preprocess.py` and nerf-pytorch `load_llff.py`,
not by calling the exporters' readers) on the synthetic sample: portrait, rolled, off-centre and k3 views."""

from __future__ import annotations

import re
import shutil
import threading
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
from helpers import exported_once, footprint, format_files, output_pixels, plans_by_name, visible_depths
from PIL import Image

from exporters import llff, mvsnet, neus
from exporters.mvsnet import writer as mvsnet_writer
from fsconvert.check import check_export
from fsconvert.cli import main
from fsconvert.errors import InputError
from fsconvert.export import export
from fsconvert.imageplan import ImageOptions
from fsconvert.loader import load_capture
from fsconvert.mesh import load_mesh
from fsconvert.protocol import read_manifest
from fsconvert.render import Renderer

PX_TOL = 0.01
IOU_MIN = 0.99
HALF = ImageOptions(scale=0.5)
SHARED_HALF = ImageOptions(scale=0.5, intrinsics="shared")
CASES = {
    "neus": ("neus", neus.Options()),
    "neus-upright-cameras": ("neus", neus.Options(image=replace(SHARED_HALF, upright=True), sphere="cameras",
                                                  idr_keys=True)),
    "neus-per-view": ("neus", neus.Options(image=HALF)),
    "mvsnet": ("mvsnet", mvsnet.Options(image=HALF, depths=True)),
    "mvsnet-upright": ("mvsnet", mvsnet.Options(image=ImageOptions(upright=True), depth_num=64, depth_margin=0.2)),
    "llff": ("llff", llff.Options(image=SHARED_HALF)),
    "llff-upright": ("llff", llff.Options(image=replace(SHARED_HALF, upright=True, scale=None))),
    "llff-mipnerf": ("llff", llff.Options(image=SHARED_HALF, target="mipnerf")),
    "llff-lossy": ("llff", llff.Options(image=HALF, allow_lossy=True)),
}
"""Every case exports the whole sample (portrait and landscape views, a rolled one, k3 ≠ 0): the
shared frame holds them all; neus-per-view and llff-lossy keep each view's size, which their programs
cannot load."""












@pytest.fixture(scope="module")
def exported(capture, tmp_path_factory):
    """case → Exported (written and checked once per module, on first use)."""
    return exported_once(capture, tmp_path_factory.mktemp("research"), CASES)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.count_nonzero(a & b) / np.count_nonzero(a | b))


# ---- NeuS `models/dataset.py` rules -----------------------------------------------------------------


def neus_load(out: Path, cameras: str = "cameras_sphere.npz") -> list[dict]:
    """n = sorted image/*.png, stacked (np.stack: one size, or ValueError); world_mat_k, scale_mat_k as
    float32; P = (world_mat @ scale_mat)[:3]; cv2.decomposeProjectionMatrix; K / K[2,2]; pose = [Rᵀ | t[:3]/t[3]]
    (camera→world, normalized world). IDR's SceneDataset reads `cameras.npz` the same way."""
    images = sorted((out / "image").glob("*.png"))
    stacked = np.stack([cv2.imread(str(image)) for image in images])  # NeuS's own stacking: raises on two sizes
    assert stacked.shape[0] == len(images)
    cams = np.load(out / cameras)
    views = []
    for k, image in enumerate(images):
        world_mat = cams[f"world_mat_{k}"].astype(np.float32)
        scale_mat = cams[f"scale_mat_{k}"].astype(np.float32)
        K, R, t = cv2.decomposeProjectionMatrix((world_mat @ scale_mat)[:3, :4])[:3]
        pose = np.eye(4, dtype=np.float32)
        pose[:3, :3] = R.T
        pose[:3, 3] = (t[:3] / t[3])[:, 0]
        views.append({"name": f"image/{image.name}", "K": K / K[2, 2], "pose": pose, "scale_mat": scale_mat})
    return views


def neus_project(view: dict, X: np.ndarray) -> np.ndarray:
    """World points → the unit-sphere world (scale_mat⁻¹) → NeuS's camera → pixels (integer pixel centres)."""
    S = view["scale_mat"].astype(np.float64)
    X_unit = (X - S[:3, 3]) / S[0, 0]
    pose = view["pose"].astype(np.float64)
    X_cam = (X_unit - pose[:3, 3]) @ pose[:3, :3]
    uvw = X_cam @ view["K"].T
    return uvw[:, :2] / uvw[:, 2:]


@pytest.mark.parametrize("case, cameras", [("neus", "cameras_sphere.npz"), ("neus-upright-cameras", "cameras.npz")])
def test_neus_and_idr_loaders_reproject_the_mesh(case, cameras, exported, capture, vertices):
    result = exported(case)
    assert result.check.passed, [v.problems for v in result.check.views]
    plans = plans_by_name(result.out_dir, capture, neus)
    views = neus_load(result.out_dir, cameras)
    assert [v["name"] for v in views] == list(plans)  # k-th sorted image ↔ world_mat_k ↔ k-th view
    worst = 0.0
    for view in views:
        plan = plans[view["name"]]
        idx, want = output_pixels(plan, vertices)
        worst = max(worst, float(np.abs(neus_project(view, vertices[idx]) - want).max()))
        with Image.open(result.out_dir / view["name"]) as im:
            assert im.size == plan.camera.size and im.format == "PNG"
    print(f"{case}: NeuS's float32 decomposition reads the mesh {worst:.2e} px off at worst")
    assert worst < PX_TOL


def test_per_view_neus_stops_neus_and_the_check_names_it(exported, capture):
    result = exported("neus-per-view")
    with pytest.raises(ValueError, match="all input arrays must have the same shape"):
        neus_load(result.out_dir)
    problems = result.check.problems
    assert len(problems) == 1 and problems[0].startswith("neus: stacks every image (np.stack")
    assert re.search(r": image/\d+\.png is \d+×\d+, image/000\.png \d+×\d+$", problems[0]), problems[0]
    assert all(v.passed for v in result.check.views)  # each camera is exact: the stop is the export's


def test_neus_mesh_is_inside_the_unit_sphere_and_masks_match_a_render(exported, capture, vertices):
    result = exported("neus")
    views = neus_load(result.out_dir)
    S = views[0]["scale_mat"].astype(np.float64)
    r = np.linalg.norm((vertices - S[:3, 3]) / S[0, 0], axis=1)
    assert r.max() == pytest.approx(1 / 1.1, rel=1e-6)  # the bounding sphere with the 1.1 margin
    plans = plans_by_name(result.out_dir, capture, neus)
    with Renderer(load_mesh(capture.mesh)) as renderer:
        for view in views:
            plan = plans[view["name"]]
            mask = cv2.imread(str(result.out_dir / view["name"].replace("image/", "mask/")), cv2.IMREAD_GRAYSCALE)
            assert set(np.unique(mask)) <= {0, 255}
            render = renderer.render(plan.camera, plan.world_to_cam, depth_only=True)
            covered = footprint(plan)  # the shared frame holds pixels without source data: never in the mask
            assert not (mask > 0)[~covered].any()
            assert iou(mask > 0, render.mask & covered) >= IOU_MIN


def test_neus_cameras_sphere_is_outside_every_camera(exported, capture):
    result = exported("neus-upright-cameras")
    assert (result.out_dir / "cameras.npz").read_bytes() == (result.out_dir / "cameras_sphere.npz").read_bytes()
    keys = set(np.load(result.out_dir / "cameras_sphere.npz").files)
    assert {"camera_mat_0", "camera_mat_inv_0", "world_mat_inv_0", "scale_mat_inv_0"} <= keys
    for view in neus_load(result.out_dir):
        assert np.linalg.norm(view["pose"][:3, 3]) > 1.5  # the camera centre, in unit-sphere coordinates


def test_neus_masks_rendered_beside_the_images_are_the_serial_bytes(exported, capture, tmp_path):
    # -j 2: the silhouettes render on a second thread while the images are made, then meet their footprints;
    # the fixture's export ran at -j 1: the images, then each mask rendered with its footprint
    overlapped = export(capture, neus, tmp_path / "j2", CASES["neus"][1], thresholds=None, workers=2).out_dir
    serial, found = format_files(exported("neus").out_dir), format_files(overlapped)
    assert sorted(found) == sorted(serial) and len([n for n in found if n.startswith(f"{neus.MASKS}/")]) == 7
    assert [n for n in serial if found[n] != serial[n]] == []


@pytest.mark.parametrize("workers", [1, 2])
def test_neus_alpha_subject_masks_reuse_its_silhouettes(exported, capture, tmp_path, workers):
    # with alpha "subject" the masks are the alpha's silhouettes within the footprints (rendered once, before or
    # ahead of the images): the same masks as the default export's, which renders them for the masks alone
    options = neus.Options(image=replace(CASES["neus"][1].image, alpha="subject"))
    out = export(capture, neus, tmp_path / "alpha", options, thresholds=None, workers=workers).out_dir
    plain, found = format_files(exported("neus").out_dir), format_files(out)
    masks = [n for n in plain if n.startswith(f"{neus.MASKS}/")]
    assert len(masks) == 7 and [n for n in masks if found[n] != plain[n]] == []
    assert found[f"{neus.IMAGES}/000.png"] != plain[f"{neus.IMAGES}/000.png"]  # the alpha changed the images


def test_neus_image_error_stops_the_silhouettes_beside_it(sample_tuple, capture, tmp_path):
    tuple_dir = shutil.copytree(sample_tuple, tmp_path / "tuple")
    path = tuple_dir / "1.jpg"
    data = bytearray(path.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 4096] = np.random.default_rng(5).integers(0, 256, 4096, np.uint8).tobytes()
    path.write_bytes(bytes(data))
    corrupt = load_capture(tuple_dir, mesh=capture.mesh)
    with pytest.raises(InputError, match=r"1\.jpg.*view 1.*corrupt JPEG data"):
        export(corrupt, neus, tmp_path / "out", neus.Options(image=SHARED_HALF), thresholds=None, workers=2)
    assert not (tmp_path / "out").exists()
    assert not [t.name for t in threading.enumerate() if t.name.startswith("fsconvert-masks")]


# ---- MVSNet `preprocess.py` rules -------------------------------------------------------------------


def mvsnet_cam(path: Path) -> dict:
    """load_cam: whitespace tokens; 1..16 extrinsic, 18..26 intrinsic, 27.. depth min, interval, num, max."""
    words = path.read_text().split()
    E = np.array(words[1:17], dtype=float).reshape(4, 4)
    K = np.array(words[18:27], dtype=float).reshape(3, 3)
    return {"E": E, "K": K, "depth": [float(w) for w in words[27:]]}


def mvsnet_pairs(out: Path) -> dict[int, list[tuple[int, float]]]:
    words = (out / "pair.txt").read_text().split()
    n, at, pairs = int(words[0]), 1, {}
    for _ in range(n):
        ref, count = int(words[at]), int(words[at + 1])
        pairs[ref] = [(int(words[at + 2 + 2 * k]), float(words[at + 3 + 2 * k])) for k in range(count)]
        at += 2 + 2 * count
    assert at == len(words)
    return pairs


def read_pfm(path: Path) -> np.ndarray:
    data = path.read_bytes()
    header = re.match(rb"(Pf)\n(\d+) (\d+)\n(-?[\d.]+)\n", data)
    w, h, scale = int(header[2]), int(header[3]), float(header[4])
    return np.flipud(np.frombuffer(data[header.end():], "<f4" if scale < 0 else ">f4").reshape(h, w))




@pytest.mark.parametrize("case", ["mvsnet", "mvsnet-upright"])
def test_mvsnet_loader_reprojects_the_mesh_and_depth_ranges_hold_it(case, exported, capture, vertices):
    result = exported(case)
    assert result.check.passed, [v.problems for v in result.check.views]
    plans = plans_by_name(result.out_dir, capture, mvsnet)
    num = CASES[case][1].depth_num
    worst = 0.0
    with Renderer(load_mesh(capture.mesh)) as renderer:
        for name, plan in plans.items():
            assert re.fullmatch(r"images/\d{8}\.jpg", name)
            cam = mvsnet_cam(result.out_dir / "cams" / f"{Path(name).stem}_cam.txt")
            idx, want = output_pixels(plan, vertices)
            uvw = np.c_[vertices[idx], np.ones(len(idx))] @ cam["E"].T[:, :3] @ cam["K"].T
            worst = max(worst, float(np.abs(uvw[:, :2] / uvw[:, 2:] - want).max()))
            lo, interval, n, hi = cam["depth"]
            assert n == num and lo + interval * (n - 1) == pytest.approx(hi, rel=1e-12)
            z = visible_depths(renderer, plan, vertices)
            assert len(z) > 100 and lo <= z.min() and z.max() <= hi and lo > 0
    assert worst < PX_TOL


def test_mvsnet_pairs_are_symmetric_and_the_best_is_the_nearest_camera(exported, capture, vertices):
    result = exported("mvsnet")
    pairs = mvsnet_pairs(result.out_dir)
    ids = [v.id for v in capture.views]
    assert sorted(pairs) == ids
    centre = (vertices.min(0) + vertices.max(0)) / 2
    directions = {v.id: (v.centre - centre) / np.linalg.norm(v.centre - centre) for v in capture.views}
    for ref, sources in pairs.items():
        assert len(sources) == min(10, len(ids) - 1) and ref not in [s for s, _ in sources]
        assert [s for _, s in sources] == sorted((s for _, s in sources), reverse=True) and sources[0][1] > 0
        for src, score in sources:
            back = dict(pairs[src])
            assert back[ref] == score  # symmetric
        nearest = max((i for i in ids if i != ref), key=lambda i: directions[i] @ directions[ref])
        assert sources[0][0] == nearest


def test_view_scores_follow_colmap2mvsnet_point_by_point():
    """colmap2mvsnet's calc_score, one point at a time, on random cameras and visibility."""
    rng = np.random.default_rng(5)
    centres, points = rng.normal(size=(5, 3)) * 10, rng.normal(size=(200, 3))
    seen = [rng.random(200) < 0.7 for _ in centres]
    scores = mvsnet_writer.view_scores(centres, points, seen)
    for i in range(5):
        for j in range(5):
            want = 0.0
            for p in points[seen[i] & seen[j]] if i != j else []:
                a, b = centres[i] - p, centres[j] - p
                theta = np.degrees(np.arccos(a @ b / np.linalg.norm(a) / np.linalg.norm(b)))
                sigma = 1.0 if theta <= 5.0 else 10.0
                want += np.exp(-(theta - 5.0) ** 2 / (2 * sigma**2))
            assert scores[i, j] == pytest.approx(want, rel=1e-12, abs=1e-300)
    text = mvsnet_writer.pair_text([3, 8, 9, 11, 20], scores)
    assert text.splitlines()[0] == "5" and text.splitlines()[1] == "3"
    assert text.splitlines()[2].split()[0] == "4"


def test_mvsnet_depth_maps_are_the_rendered_depth(exported, capture):
    result = exported("mvsnet")
    plans = plans_by_name(result.out_dir, capture, mvsnet)
    with Renderer(load_mesh(capture.mesh)) as renderer:
        for name, plan in plans.items():
            depth = read_pfm(result.out_dir / "depths" / f"{Path(name).stem}.pfm")
            render = renderer.render(plan.camera, plan.world_to_cam, depth_only=True)
            assert depth.shape == render.depth.shape and iou(depth > 0, render.mask) >= IOU_MIN
            both = (depth > 0) & render.mask
            assert np.abs(depth[both] - render.depth[both]).max() <= 1e-4 * depth.max()  # float32 GL depth


# ---- nerf-pytorch `load_llff.py` rules ---------------------------------------------------------------


def llff_load(out: Path) -> list[dict]:
    """_load_data: rows ↔ sorted images/ (JPG/jpg/png), stacked (np.stack: one size, or ValueError); every
    row's H, W := the stack's; load_llff_data: columns [1, −0, 2] (OpenGL right, up, back); run_nerf: hwf of
    poses[0] for all."""
    arr = np.load(out / "poses_bounds.npy")
    poses = arr[:, :-2].reshape([-1, 3, 5]).transpose([1, 2, 0])
    files = sorted(f for f in (out / "images").iterdir() if f.name.endswith(("JPG", "jpg", "png")))
    assert poses.shape[-1] == len(files)
    imgs = np.stack([cv2.imread(str(f)) for f in files], -1)
    h, w = imgs.shape[:2]
    poses[:2, 4, :] = np.array([h, w]).reshape([2, 1])
    poses = np.concatenate([poses[:, 1:2, :], -poses[:, 0:1, :], poses[:, 2:, :]], 1)
    poses = np.moveaxis(poses, -1, 0)
    H, W, focal = poses[0, :3, -1]
    return [{"name": f"images/{f.name}", "c2w": p[:3, :4], "H": H, "W": W, "focal": focal,
             "bounds": arr[i, -2:]} for i, (f, p) in enumerate(zip(files, poses))]


def llff_project(view: dict, X: np.ndarray, reader: str = "nerf-pytorch") -> np.ndarray:
    """The pixel index whose ray passes X, inverting each trainer's ray rule (OpenGL camera, one focal):
    nerf-pytorch `get_rays_np`: dirs = ((i − W/2)/f, −(j − H/2)/f, −1); mip-NeRF: ((i − W/2 + 0.5)/f, ...)."""
    c2w = view["c2w"]
    Xg = (X - c2w[:, 3]) @ c2w[:, :3]
    f = view["focal"]
    half = 0.0 if reader == "nerf-pytorch" else 0.5
    return np.column_stack([f * Xg[:, 0] / -Xg[:, 2] + view["W"] / 2 - half,
                            -f * Xg[:, 1] / -Xg[:, 2] + view["H"] / 2 - half])


@pytest.mark.parametrize("case, reader", [("llff", "nerf-pytorch"), ("llff-upright", "nerf-pytorch"),
                                          ("llff-mipnerf", "mipnerf")])
def test_llff_loaders_reproject_the_mesh_and_bounds_hold_it(case, reader, exported, capture, vertices):
    result = exported(case)
    assert result.check.passed, [v.problems for v in result.check.views]
    plans = plans_by_name(result.out_dir, capture, llff)
    assert len(plans) == len(capture.views) and not any(p.camera.is_portrait for p in plans.values())
    views = llff_load(result.out_dir)
    assert [v["name"] for v in views] == list(plans)
    worst, other = 0.0, 0.0
    wrong = "mipnerf" if reader == "nerf-pytorch" else "nerf-pytorch"
    with Renderer(load_mesh(capture.mesh)) as renderer:
        for view in views:
            plan = plans[view["name"]]
            assert plan.camera.fx == plan.camera.fy == view["focal"]
            idx, want = output_pixels(plan, vertices)
            worst = max(worst, float(np.abs(llff_project(view, vertices[idx], reader) - want).max()))
            other = max(other, float(np.abs(llff_project(view, vertices[idx], wrong) - want).max()))
            z = visible_depths(renderer, plan, vertices)
            near, far = view["bounds"]
            assert len(z) > 100 and 0 < near <= z.min() and z.max() <= far
    assert worst < PX_TOL and other == pytest.approx(0.5, abs=1e-6)  # the other trainer: half a pixel off


def test_llff_for_mipnerf_read_by_nerf_pytorch_fails_the_check(exported, tmp_path, capsys):
    out = exported("llff-mipnerf").out_dir
    assert main(["check", str(out), "--reader", "nerf-pytorch", "--overlays", "none"]) == 1
    lines = [line for line in capsys.readouterr().out.splitlines() if "FAIL" in line]
    assert lines and all("nerf-pytorch reads this view 0.7071 px off" in line for line in lines[:-1])


def test_llff_refuses_mixed_sizes_and_measures_the_loss_when_allowed(exported, capture, tmp_path, capsys):
    code = main(["to-llff", str(capture.root), "-o", str(tmp_path / "out"), "-q", "-j", "1", "--intrinsics", "per-view"])
    assert code == 2 and "--allow-lossy" in capsys.readouterr().err and not (tmp_path / "out").exists()
    result = exported("llff-lossy")
    with pytest.raises(ValueError, match="all input arrays must have the same shape"):
        llff_load(result.out_dir)
    report = result.check
    assert [p.split(":")[0] for p in report.problems] == ["nerf-pytorch"] and "np.stack" in report.problems[0]
    portrait = {v.id for v in capture.views if v.camera.is_portrait}
    assert portrait and not report.passed
    for v in report.views:
        if v.id in portrait:
            assert not v.passed and v.camera_max_px > 10
        else:
            assert v.passed and v.camera_max_px < PX_TOL


# ---- negative controls: a wrong convention fails the check -------------------------------------------


def test_transposed_world_mat_fails_the_check(exported, tmp_path):
    out = copy_export(exported("neus").out_dir, tmp_path)
    cams = dict(np.load(out / "cameras_sphere.npz"))
    np.savez(out / "cameras_sphere.npz", **{k: v.T if k.startswith("world_mat_") else v for k, v in cams.items()})
    assert_check_fails(out)


def test_c2w_in_cam_txt_fails_the_check(exported, tmp_path):
    out = copy_export(exported("mvsnet").out_dir, tmp_path)
    for path in (out / "cams").glob("*_cam.txt"):
        cam = mvsnet_cam(path)
        path.write_text(mvsnet_writer.cam_text(np.linalg.inv(cam["E"]), cam["K"], cam["depth"][0], cam["depth"][3],
                                        int(cam["depth"][2])))
    assert_check_fails(out)


def test_missing_llff_axis_permutation_fails_the_check(exported, tmp_path):
    out = copy_export(exported("llff").out_dir, tmp_path)
    rows = np.load(out / "poses_bounds.npy")
    poses = rows[:, :15].reshape(-1, 3, 5)
    poses[:, :, :3] = poses[:, :, [1, 0, 2]] * [1, 1, -1]  # back to OpenCV (right, down, forward) columns
    rows[:, :15] = poses.reshape(-1, 15)
    np.save(out / "poses_bounds.npy", rows)
    assert_check_fails(out)


def copy_export(src: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(src, tmp_path / src.name))


def assert_check_fails(out: Path) -> None:
    report = check_export(out, overlays=False)
    assert not report.passed and all(not v.passed for v in report.views)


# ---- the command line ----------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt, files", [
    ("neus", ["cameras_sphere.npz", "image/000.png", "mask/000.png"]),
    ("mvsnet", ["pair.txt", "cams/00000000_cam.txt", "images/00000000.jpg"]),
])
def test_cli_exports_and_checks(fmt, files, sample_tuple, tmp_path, capsys):
    out = tmp_path / fmt
    assert main([f"to-{fmt}", str(sample_tuple), "-o", str(out), "-q", "-j", "1", "--max-size", "400"]) == 0
    assert all((out / f).is_file() for f in files)
    assert "PASS" in capsys.readouterr().out


def test_yaml_batch_passes_image_and_format_options(sample_root, tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text(f"input: {sample_root}\nout: {tmp_path / 'out'}\nformat: [neus, mvsnet]\njobs: 1\n"
                      "image: {max_size: 300, upright: true}\n"
                      "options: {neus: {sphere: cameras, idr_keys: true}, mvsnet: {depth_num: 64, depths: true}}\n")
    assert main(["batch", str(config), "-q"]) == 0
    neus_out, mvsnet_out = (tmp_path / "out" / fmt / "1" / "1_neutral" for fmt in ("neus", "mvsnet"))
    manifest = read_manifest(neus_out)
    assert manifest["options"]["sphere"] == "cameras" and manifest["options"]["image"]["upright"]
    assert "camera_mat_inv_0" in np.load(neus_out / "cameras_sphere.npz").files
    with Image.open(neus_out / "image" / "000.png") as im:
        assert max(im.size) == 300
    assert mvsnet_cam(mvsnet_out / "cams" / "00000000_cam.txt")["depth"][2] == 64
    assert len(list((mvsnet_out / "depths").glob("*.pfm"))) == len(manifest["views"])
