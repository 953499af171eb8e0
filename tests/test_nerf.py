"""NeRF exporter: transforms.json read back by nerfstudio's and instant-ngp's rules, Blender variant,
masks, depth, normalization, mesh and point cloud, on the synthetic sample (known truth)."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import expected_pixels
from helpers import footprint
from PIL import Image

from exporters import nerf
from exporters.nerf import layout, writer
from fsconvert import conventions as cv
from fsconvert.errors import InputError
from fsconvert.export import export as export_to
from fsconvert.imageplan import ImageOptions, ViewPlan, plan_views
from fsconvert.loader import load_capture
from fsconvert.mesh import load_mesh
from fsconvert.options import from_dict
from fsconvert.protocol import read_manifest

CASES = {
    "undistort-sphere": nerf.Options(normalize="sphere", masks=True, depth=True),
    "keep-none": nerf.Options(image=ImageOptions(undistort=False), normalize="none"),
    "undistort-none-quarter": nerf.Options(image=ImageOptions(scale=0.25, upright=True), normalize="none",
                                           split=(0.6, 0.2, 0.2)),
    "keep-sphere-quarter": nerf.Options(image=ImageOptions(undistort=False, scale=0.25), normalize="sphere",
                                        masks=True, depth=True),
    "undistort-cameras-quarter": nerf.Options(image=ImageOptions(scale=0.25), normalize="cameras", radius=2.0),
    "blender-quarter": nerf.Options(image=ImageOptions(scale=0.25, image_format="png", intrinsics="shared"),
                                    variant="blender", masks=True),
}
NS_CASES = [c for c in CASES if not c.startswith("blender")]
PX_TOL = 0.01
REL_TOL = 1e-9
NGP_EXTENSIONS = ("png", "jpg", "jpeg", "bmp", "gif", "tga", "pic", "pnm", "psd", "exr")


@pytest.fixture(scope="module")
def capture(sample_tuple):
    return load_capture(sample_tuple)


@pytest.fixture(scope="module")
def vertices(capture) -> np.ndarray:
    return np.asarray(load_mesh(capture.mesh).vertices, dtype=np.float64)


@pytest.fixture(scope="module")
def export(capture, tmp_path_factory):
    """case → export folder, written once per module on first use."""
    root, done = tmp_path_factory.mktemp("nerf"), {}

    def get(case: str) -> Path:
        if case not in done:
            done[case] = export_to(capture, nerf, root / case, CASES[case], thresholds=None).out_dir
        return done[case]

    return get


def planned(out: Path, capture) -> dict[str, ViewPlan]:
    """Manifest name → the image-stage plan rebuilt from the manifest's options (as the check does)."""
    manifest = read_manifest(out)
    options = from_dict(nerf.Options, manifest["options"])
    plans = {p.view.id: p for p in plan_views(capture.views, options.image)}
    return {v["name"]: plans[v["id"]] for v in manifest["views"]}


def distort(x: np.ndarray, y: np.ndarray, k1=0.0, k2=0.0, k3=0.0, k4=0.0, p1=0.0, p2=0.0):
    """nerfstudio's PERSPECTIVE lens (camera_utils): radial 1 + k1 r² + k2 r⁴ + k3 r⁶ + k4 r⁸, OpenCV p1 p2."""
    r2 = x * x + y * y
    radial = 1 + r2 * (k1 + r2 * (k2 + r2 * (k3 + r2 * k4)))
    return x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x), y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y


# ---- nerfstudio `nerfstudio-data` rules (formats.md §2.3.1), implemented here ----------------------


def ns_parse(data: Path) -> dict:
    """transforms.json as nerfstudio's parser reads it (orientation/centre 'none', no auto scale):
    top-level intrinsics win, else every frame must have them; file_path with extension, relative to
    the data folder, opened as is; frames sorted by file name; distortion top-level or per frame."""
    meta = json.loads((data / "transforms.json").read_text())
    assert meta.get("camera_model", "PERSPECTIVE") in ("OPENCV", "PINHOLE", "PERSPECTIVE")
    fixed_distortion = any(k in meta for k in ("k1", "k2", "k3", "p1", "p2"))
    frames = []
    for frame in sorted(meta["frames"], key=lambda f: str(data / f["file_path"])):
        src = {k: (meta if k in meta else frame)[k] for k in ("fl_x", "fl_y", "cx", "cy", "h", "w")}
        lens = meta if fixed_distortion else frame
        path = data / frame["file_path"]
        assert Path(frame["file_path"]).suffix and path.is_file(), frame["file_path"]  # no extension inference
        frames.append({
            "name": frame["file_path"], "path": path, **{k: float(v) for k, v in src.items()},
            "dist": {k: float(lens.get(k, 0.0)) for k in ("k1", "k2", "k3", "k4", "p1", "p2")},
            "c2w": np.array(frame["transform_matrix"], dtype=np.float64),
            "mask": data / frame["mask_path"] if "mask_path" in frame else None,
            "depth": data / frame["depth_file_path"] if "depth_file_path" in frame else None,
        })
    for key in ("mask", "depth"):  # all frames or none
        assert len({f[key] is None for f in frames}) == 1
    return {"meta": meta, "frames": frames,
            "applied_transform": np.array(meta.get("applied_transform", np.eye(4)[:3]), dtype=np.float64),
            "applied_scale": float(meta.get("applied_scale", 1.0))}


def ns_project(frame: dict, X_file: np.ndarray, pixel_offset: float = 0.5) -> np.ndarray:
    """Pixels (OpenCV convention) of file-frame points: nerfstudio's rays go through pixel index +
    0.5, coord = ((u − cx)/fx, (v − cy)/fy) distorted, then y and z flipped to OpenGL."""
    c2w = frame["c2w"]
    Xg = (X_file - c2w[:3, 3]) @ c2w[:3, :3]  # OpenGL camera axes
    x, y = Xg[:, 0] / -Xg[:, 2], Xg[:, 1] / Xg[:, 2]
    xd, yd = distort(x, y, **frame["dist"])
    return np.column_stack([frame["fl_x"] * xd + frame["cx"], frame["fl_y"] * yd + frame["cy"]]) - pixel_offset


def to_file_frame(ns: dict, X: np.ndarray) -> np.ndarray:
    """nerfstudio's composition: X_file = applied_scale · (applied_transform · X)."""
    A = ns["applied_transform"]
    return ns["applied_scale"] * (X @ A[:, :3].T + A[:, 3])


# ---- instant-ngp loader rules (formats.md §2.1), implemented here -----------------------------------


def ngp_resolve(json_dir: Path, file_path: str) -> Path:
    path = json_dir / file_path.replace("\\", "/")
    if not path.suffix and not path.exists():
        for ext in NGP_EXTENSIONS:
            if path.with_name(f"{path.name}.{ext}").exists():
                return path.with_name(f"{path.name}.{ext}")
    return path


def ngp_parse(data: Path) -> list[dict]:
    """Every *.json in the folder is a dataset; focal fl_x (fl_y defaults to it), per-frame values
    override top-level ones; cx/cy are stored as cx/w, cy/h from the SAME object; the resolution is
    the image file's; lens k1 k2 p1 p2 only (k3 is overwritten by p1)."""
    frames = []
    for path in sorted(data.glob("*.json")):
        meta = json.loads(path.read_text())
        for frame in meta["frames"]:
            lens = {"fx": None, "fy": None, "pp": [0.5, 0.5], "dist": {}}
            for obj in (meta, frame):
                if "fl_x" in obj:
                    lens["fx"] = lens["fy"] = obj["fl_x"]
                if "fl_y" in obj:
                    lens["fy"] = obj["fl_y"]
                if "cx" in obj:
                    lens["pp"][0] = obj["cx"] / obj["w"]  # KeyError without w beside cx
                if "cy" in obj:
                    lens["pp"][1] = obj["cy"] / obj["h"]
                lens["dist"] |= {k: obj[k] for k in ("k1", "k2", "p1", "p2") if k in obj}
            image = ngp_resolve(path.parent, frame["file_path"])
            with Image.open(image) as im:
                res = np.array(im.size, dtype=np.float64)
            frames.append({"path": image, "res": res, **lens, "m": ngp_matrix(np.array(frame["transform_matrix"]))})
    return frames


def ngp_matrix(c2w: np.ndarray, scale: float = writer.NGP_SCALE, offset: float = 0.5) -> np.ndarray:
    """instant-ngp's nerf_matrix_to_ngp: columns 1, 2 negated, translation·scale + offset, rows xyz ← yzx."""
    m = np.array(c2w[:3, :4], dtype=np.float64)
    m[:, 1:3] *= -1
    m[:, 3] = m[:, 3] * scale + offset
    return m[[1, 2, 0]]


def ngp_project(frame: dict, X_file: np.ndarray, scale: float = writer.NGP_SCALE, offset: float = 0.5) -> np.ndarray:
    """Pixels (OpenCV convention) of file-frame points through instant-ngp's camera: rays through
    (pixel + 0.5)/res, principal point pp·res, focal fl in pixels, OpenCV k1 k2 p1 p2."""
    X_ngp = (X_file * scale + offset)[:, [1, 2, 0]]
    d = (X_ngp - frame["m"][:, 3]) @ frame["m"][:, :3]
    xd, yd = distort(d[:, 0] / d[:, 2], d[:, 1] / d[:, 2], **frame["dist"])
    pp = np.array(frame["pp"]) * frame["res"]
    return np.column_stack([frame["fx"] * xd, frame["fy"] * yd]) + pp - 0.5


# ---- read-back and check ---------------------------------------------------------------------------


@pytest.mark.parametrize("case", list(CASES))
def test_read_back_equals_the_planned_cameras_in_the_source_frame(case, export, capture):
    out = export(case)
    plans = planned(out, capture)
    views = {v.name: v for v in nerf.read(out)}
    assert sorted(views) == sorted(plans)
    for name, plan in plans.items():
        v = views[name]
        assert v.camera.size == plan.camera.size
        assert np.abs(v.camera.K - plan.camera.K).max() <= REL_TOL * plan.camera.fx
        assert np.abs(v.camera.dist - plan.camera.dist).max() <= REL_TOL
        assert np.abs(v.world_to_cam[:3, :3] - plan.world_to_cam[:3, :3]).max() <= REL_TOL
        assert np.abs(v.world_to_cam[:3, 3] - plan.world_to_cam[:3, 3]).max() <= REL_TOL * np.linalg.norm(
            plan.world_to_cam[:3, 3])


@pytest.mark.parametrize("case", ["undistort-sphere", "keep-none", "keep-sphere-quarter", "blender-quarter"])
def test_projection_check_passes(case, export):
    from fsconvert.check import check_export

    report = check_export(export(case))  # with overlays every view is rendered
    assert report.passed, (report.problems, [v.problems for v in report.views])
    assert max(v.camera_max_px for v in report.views) <= PX_TOL
    assert min(v.iou for v in report.views) >= 0.99


# ---- transforms.json through the readers' own rules -------------------------------------------------


@pytest.mark.parametrize("case", NS_CASES)
def test_nerfstudio_rules_reproject_the_mesh_exactly(case, export, capture, vertices):
    out = export(case)
    plans, ns = planned(out, capture), ns_parse(out)
    assert ns["meta"]["camera_model"] == "OPENCV"
    X_file = to_file_frame(ns, vertices)
    worst, shifted = 0.0, []
    for frame in ns["frames"]:
        assert (frame["w"], frame["h"]) == Image.open(frame["path"]).size
        idx, expected = expected_pixels(plans[frame["name"]], vertices)
        assert len(idx) > 1000
        worst = max(worst, np.abs(ns_project(frame, X_file[idx]) - expected).max())
        shifted.append(np.abs(ns_project(frame, X_file[idx], pixel_offset=0.0) - expected).min())
    assert worst <= PX_TOL
    # negative control: ignoring the +0.5 pixel-centre convention puts every point 0.5 px off
    assert min(shifted) > 0.49


def test_nerfstudio_rules_without_applied_transform_miss(export, capture, vertices):
    """Negative control: the file frame is the normalized one; skipping applied_* misplaces the mesh."""
    out = export("undistort-sphere")
    plans, ns = planned(out, capture), ns_parse(out)
    frame = ns["frames"][0]
    idx, expected = expected_pixels(plans[frame["name"]], vertices)
    assert np.abs(ns_project(frame, to_file_frame(ns, vertices[idx])) - expected).max() <= PX_TOL
    assert np.median(np.linalg.norm(ns_project(frame, vertices[idx]) - expected, axis=1)) > 100


@pytest.mark.parametrize("case", ["undistort-sphere", "undistort-none-quarter", "keep-none"])
def test_instant_ngp_rules_reproject_the_mesh(case, export, capture, vertices):
    """Exact for pinhole views and views without k3; the k3 view is the documented instant-ngp limit."""
    out = export(case)
    plans, ns = planned(out, capture), ns_parse(out)
    frames = ngp_parse(out)
    assert [p.name for p in out.glob("*.json")] == ["transforms.json"]  # instant-ngp loads every *.json
    assert len(frames) == len(plans)
    X_file = to_file_frame(ns, vertices)
    errors, rescaled = {}, {}
    for frame in frames:
        name = frame["path"].relative_to(out).as_posix()
        idx, expected = expected_pixels(plans[name], vertices)
        errors[name] = np.abs(ngp_project(frame, X_file[idx]) - expected).max()
        # the projection does not depend on instant-ngp's scene scale and offset
        c2w = next(f["c2w"] for f in ns["frames"] if f["name"] == name)
        moved = ngp_project({**frame, "m": ngp_matrix(c2w, 0.7, 0.1)}, X_file[idx], 0.7, 0.1)
        rescaled[name] = np.abs(moved - expected).max()
    k3 = {n for n, p in plans.items() if p.camera.dist[4] != 0}
    assert max(e for n, e in errors.items() if n not in k3) <= PX_TOL
    assert max(e for n, e in rescaled.items() if n not in k3) <= PX_TOL
    if case == "keep-none":
        # instant-ngp drops k3: measurable (here ~1e-3 px: long lenses, small r⁶) where all else is ~1e-12
        assert len(k3) == 1 and min(errors[n] for n in k3) > 1e-4


def test_instant_ngp_needs_w_h_beside_cx_and_probes_extensions(tmp_path):
    """The test parser's own rules, checked on hand-made files."""
    (tmp_path / "images").mkdir()
    Image.new("RGB", (8, 6)).save(tmp_path / "images" / "a.png")
    assert ngp_resolve(tmp_path, "images/a") == tmp_path / "images" / "a.png"
    assert ngp_resolve(tmp_path, "images\\a.png") == tmp_path / "images" / "a.png"
    frame = {"file_path": "images/a", "transform_matrix": np.eye(4).tolist(), "fl_x": 10, "cx": 4.5}
    (tmp_path / "t.json").write_text(json.dumps({"frames": [frame]}))
    with pytest.raises(KeyError):
        ngp_parse(tmp_path)


def test_transforms_layout(export):
    out = export("undistort-none-quarter")
    meta = json.loads((out / "transforms.json").read_text())
    assert [p.name for p in out.glob("*.json")] == ["transforms.json"]
    assert meta["camera_model"] == "OPENCV"
    assert meta["applied_transform"] == [[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]]
    assert meta["applied_scale"] == 1.0
    assert meta["ply_file_path"] == "points3D.ply" and (out / "points3D.ply").is_file()
    names = [f["file_path"] for f in meta["frames"]]
    assert all(Path(n).suffix == ".jpg" and (out / n).is_file() for n in names)
    assert len({Path(n).name for n in names}) == len(names)  # nerfstudio flattens images_N/<basename>
    for f in meta["frames"]:
        assert {"fl_x", "fl_y", "cx", "cy", "w", "h", "transform_matrix"} <= set(f)
        assert not {"k1", "k2", "k3", "p1", "p2"} & set(f)  # undistorted: pinhole
    # the split lists partition the frames, interleaved and deterministic
    splits = [meta[f"{s}_filenames"] for s in layout.SPLITS]
    assert sorted(sum(splits, [])) == sorted(names)
    assert [len(s) for s in splits] == [4, 2, 1]
    assert splits == [[n for n, k in zip(names, writer.assign_splits(len(names), (0.6, 0.2, 0.2))) if k == i]
                      for i in range(3)]


def test_aabb_scale_holds_cameras_and_mesh(export, vertices):
    for case in ("undistort-sphere", "undistort-none-quarter"):
        out = export(case)
        ns = ns_parse(out)
        scale = ns["meta"]["aabb_scale"]
        centres = np.array([f["c2w"][:3, 3] for f in ns["frames"]])
        extent = max(np.abs(to_file_frame(ns, vertices)).max(), np.abs(centres).max())
        half = scale / (2 * writer.NGP_SCALE)
        assert scale in (1, 2, 4, 8, 16, 32, 64, 128) and extent <= half and (scale == 1 or extent > half / 2)
    assert writer.aabb_scale(1.0) == 1 and writer.aabb_scale(1.6) == 2 and writer.aabb_scale(6.1) == 8
    assert writer.aabb_scale(1e6) == 128


def test_split_assignment():
    assert writer.assign_splits(7, (0.8, 0.1, 0.1)) == [0, 0, 0, 1, 0, 0, 2]
    counts = np.bincount(writer.assign_splits(100, (0.8, 0.1, 0.1)), minlength=3)
    assert counts.tolist() == [80, 10, 10]
    assert writer.assign_splits(5, None) is None


# ---- distortion ------------------------------------------------------------------------------------


def test_keep_distortion_maps_coefficients_and_warns_once_about_k3(capture, tmp_path):
    out = export_to(capture, nerf, tmp_path / "keep", nerf.Options(image=ImageOptions(undistort=False)),
                 thresholds=None).out_dir
    warnings = [line for line in read_manifest(out).get("warnings", []) if "k3" in line]
    assert len(warnings) == 1 and "instant-ngp" in warnings[0]
    frames = {f["file_path"]: f for f in json.loads((out / "transforms.json").read_text())["frames"]}
    for name, plan in planned(out, capture).items():
        k1, k2, p1, p2, k3 = plan.view.camera.dist
        assert [frames[name][k] for k in ("k1", "k2", "k3", "p1", "p2")] == [k1, k2, k3, p1, p2]
        assert os.path.samefile(out / name, plan.view.image)  # original JPEG, linked
    undistorted = export_to(capture, nerf, tmp_path / "undistort", nerf.Options(), thresholds=None).out_dir
    assert "warnings" not in read_manifest(undistorted)


# ---- masks and depth -------------------------------------------------------------------------------


def source_silhouette_in_output(renderer, plan: ViewPlan) -> np.ndarray:
    """The mesh silhouette as the SOURCE camera sees it (distorted), carried into the output image by
    the image stage's own remap (full-resolution decode), where the output has source pixels only (at
    full resolution and at the plan's decode reduction: a frame that covers the source reaches its
    edge, where the two differ by a fraction of a pixel)."""
    from fsconvert.render import distorted_render

    src = plan.view
    sil = distorted_render(renderer, src.camera, src.world_to_cam, depth_only=True).mask.astype(np.float32)
    mx, my = replace(plan, reduce=1).maps()
    carried = cv2.remap(sil, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    data = cv2.remap(np.ones_like(sil), mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    return (carried > 0.5) & (data > 0.999) & footprint(plan)


def off_edge(a: np.ndarray, truth: np.ndarray) -> int:
    """Pixels where `a` and `truth` disagree farther than 1 px from the edge of `truth`."""
    m, k = truth.astype(np.uint8), np.ones((3, 3), np.uint8)
    return int(np.count_nonzero((a ^ truth) & (cv2.dilate(m, k) == cv2.erode(m, k))))


@pytest.mark.parametrize("case", ["undistort-sphere", "keep-sphere-quarter"])
def test_masks_match_the_mesh_silhouette_in_the_exported_image(case, export, capture):
    from fsconvert.render import Renderer, distorted_render

    out = export(case)
    plans, ns = planned(out, capture), ns_parse(out)
    ious, off, naive = [], [], []
    with Renderer(load_mesh(capture.mesh)) as renderer:
        for frame in ns["frames"]:
            plan = plans[frame["name"]]
            mask = cv2.imread(str(frame["mask"]), cv2.IMREAD_UNCHANGED)
            assert mask.dtype == np.uint8 and mask.ndim == 2 and set(np.unique(mask)) == {0, 255}
            assert mask.shape == (plan.camera.height, plan.camera.width)
            truth = source_silhouette_in_output(renderer, plan)
            ious.append(iou(mask > 0, truth))
            off.append(off_edge(mask > 0, truth))
            if case == "undistort-sphere":  # negative control: the source (distorted) image's silhouette
                src = plan.view
                naive.append(off_edge(distorted_render(renderer, src.camera, src.world_to_cam, depth_only=True).mask,
                                      truth))
    assert min(ious) >= 0.99, ious
    assert max(off) == 0, off
    assert not naive or max(naive) > 100, naive


def _scale(plan: ViewPlan) -> tuple[float, float]:
    return plan.camera.width / plan.view.camera.width, plan.camera.height / plan.view.camera.height


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.count_nonzero(a & b) / np.count_nonzero(a | b))


@pytest.mark.parametrize("case", ["undistort-sphere", "keep-sphere-quarter"])
def test_depth_is_mesh_z_in_nerfstudio_units(case, export, capture, vertices):
    """value × depth_unit_scale_factor × applied_scale (nerfstudio's composition) = z-depth in the
    file frame at visible vertices, to 0.1 %; i.e. value × 0.001 = z in source units."""
    out = export(case)
    plans, ns = planned(out, capture), ns_parse(out)
    mesh = load_mesh(capture.mesh)
    unit = ns["meta"]["depth_unit_scale_factor"]
    assert unit == 0.001
    s = ns["applied_scale"]
    X_file = to_file_frame(ns, vertices)
    worst, wrong_unit, seen = 0.0, [], []
    for frame in ns["frames"]:
        plan = plans[frame["name"]]
        depth = cv2.imread(str(frame["depth"]), cv2.IMREAD_UNCHANGED)
        assert depth.dtype == np.uint16 and depth.shape == (plan.camera.height, plan.camera.width)
        idx, uv = expected_pixels(plan, vertices)
        to_camera = plan.view.centre - vertices[idx]
        facing = np.einsum("ij,ij->i", mesh.vertex_normals[idx], to_camera) > 0.3 * np.linalg.norm(to_camera, axis=1)
        idx, uv = idx[facing], uv[facing]
        z_file = -((X_file[idx] - frame["c2w"][:3, 3]) @ frame["c2w"][:3, :3])[:, 2]  # OpenGL looks down −z
        d = bilinear(depth.astype(np.float64), uv) * unit * s
        # visible, on a locally smooth surface (no occlusion edge or ridge to interpolate across)
        visible = (np.abs(d - z_file) < 0.01 * z_file) & (planarity(depth.astype(np.float64), uv) < 5e-4)
        seen.append(visible.mean())
        worst = max(worst, (np.abs(d[visible] - z_file[visible]) / z_file[visible]).max())
        # negative control: the PNG read as millimetres of the normalized frame (without applied_scale)
        wrong_unit.append(np.nanmedian(np.abs(d / s - z_file) / z_file))
    assert min(seen) > 0.5, seen
    assert worst <= 1e-3
    assert min(wrong_unit) > 0.5


def bilinear(img: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Bilinear samples at OpenCV pixel coordinates; NaN unless all four neighbours are foreground."""
    H, W = img.shape
    x0, y0 = np.floor(uv[:, 0]).astype(int), np.floor(uv[:, 1]).astype(int)
    ok = (x0 >= 0) & (y0 >= 0) & (x0 + 1 < W) & (y0 + 1 < H)
    x0, y0 = np.where(ok, x0, 0), np.where(ok, y0, 0)
    fx, fy = uv[:, 0] - x0, uv[:, 1] - y0
    c = [img[y0 + dy, x0 + dx] for dy in (0, 1) for dx in (0, 1)]
    ok &= np.all(np.array(c) > 0, axis=0)
    value = (c[0] * (1 - fx) + c[1] * fx) * (1 - fy) + (c[2] * (1 - fx) + c[3] * fx) * fy
    return np.where(ok, value, np.nan)


def planarity(img: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Largest residual of a plane fitted to the 3×3 pixels around each point, relative to the depth
    (inf at the border or touching the background)."""
    H, W = img.shape
    x, y = np.rint(uv[:, 0]).astype(int), np.rint(uv[:, 1]).astype(int)
    ok = (x >= 1) & (y >= 1) & (x + 1 < W) & (y + 1 < H)
    x, y = np.where(ok, x, 1), np.where(ok, y, 1)
    offsets = [(dx, dy) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    window = np.stack([img[y + dy, x + dx] for dx, dy in offsets], axis=1)
    design = np.array([[dx, dy, 1.0] for dx, dy in offsets])
    residual = window - (window @ np.linalg.pinv(design).T) @ design.T
    rel = np.abs(residual).max(axis=1) / np.maximum(window.min(axis=1), 1e-12)
    return np.where(ok & (window.min(axis=1) > 0), rel, np.inf)


def test_depth_overflow_is_refused(capture, tmp_path):
    with pytest.raises(InputError, match="uint16"):
        export_to(capture, nerf, tmp_path / "d",
                  nerf.Options(image=ImageOptions(scale=0.25), depth=True, depth_unit=1e-4))
    assert not (tmp_path / "d").exists()


# ---- mesh and point cloud --------------------------------------------------------------------------


def ply_header(path: Path) -> list[str]:
    with open(path, "rb") as f:
        lines = []
        while (line := f.readline().decode("ascii").strip()) != "end_header":
            lines.append(line)
    return lines


@pytest.mark.parametrize("case", ["undistort-sphere", "undistort-cameras-quarter", "keep-none"])
def test_mesh_and_point_cloud_are_in_the_normalized_frame(case, export, vertices):
    import open3d as o3d
    import trimesh

    out = export(case)
    ns = ns_parse(out)
    expected = to_file_frame(ns, vertices)
    tol = REL_TOL * np.abs(expected).max()
    mesh = trimesh.load(out / "mesh.ply", process=False)
    assert np.abs(np.asarray(mesh.vertices) - expected).max() <= tol
    cloud = o3d.io.read_point_cloud(str(out / ns["meta"]["ply_file_path"]))  # nerfstudio's reader
    assert np.abs(np.asarray(cloud.points) - expected).max() <= tol
    assert np.asarray(cloud.colors).shape == (len(vertices), 3)
    props = [line.split()[-1] for line in ply_header(out / "points3D.ply") if line.startswith("property")]
    assert props == ["x", "y", "z", "nx", "ny", "nz", "red", "green", "blue"]  # 3DGS fetchPly
    normals = np.asarray(cloud.normals)
    assert np.abs(np.linalg.norm(normals, axis=1) - 1).max() < 1e-5
    # outward normals: pointing away from the normalized mesh centre on this star-shaped head
    centre = expected.mean(axis=0)
    assert np.mean(np.einsum("ij,ij->i", normals, expected - centre) > 0) > 0.95
    if case == "undistort-sphere":
        lo, hi = expected.min(axis=0), expected.max(axis=0)
        assert np.abs((lo + hi) / 2).max() < 1e-12
        assert abs(np.linalg.norm(expected - (lo + hi) / 2, axis=1).max() - 1.0) < 1e-12
    if case == "undistort-cameras-quarter":
        centres = np.array([f["c2w"][:3, 3] for f in ns["frames"]])
        assert np.abs(centres.mean(axis=0)).max() < 1e-12
        assert abs(np.linalg.norm(centres, axis=1).max() - 2.0) < 1e-12


# ---- Blender variant -------------------------------------------------------------------------------


def test_blender_variant(export, capture, vertices):
    out = export("blender-quarter")
    files = sorted(p.name for p in out.glob("*.json"))
    assert files == ["transforms_test.json", "transforms_train.json", "transforms_val.json"]
    plans = planned(out, capture)
    seen, worst, centred_off, stacked = [], 0.0, [], []
    for split in layout.SPLITS:
        meta = json.loads((out / f"transforms_{split}.json").read_text())
        split_images = []
        fov = meta["camera_angle_x"]
        A, s = np.array(meta["applied_transform"]), meta["applied_scale"]
        assert meta["frames"], split
        for frame in meta["frames"]:
            assert not Path(frame["file_path"]).suffix
            image = out / (frame["file_path"].replace("./", "") + ".png")
            rgba = cv2.imread(str(image), cv2.IMREAD_UNCHANGED)
            H, W = rgba.shape[:2]
            assert rgba.shape[2] == 4  # the mask is the alpha channel
            split_images.append(rgba)
            name = image.relative_to(out).as_posix()
            plan = plans[name]
            seen.append(name)
            f = 0.5 * W / np.tan(0.5 * fov)
            assert abs(f - plan.camera.fx) <= REL_TOL * f and abs(f - plan.camera.fy) <= REL_TOL * f
            idx, expected = expected_pixels(plan, vertices)
            Xf = s * (vertices[idx] @ A[:, :3].T + A[:, 3])
            c2w = np.array(frame["transform_matrix"])
            Xg = (Xf - c2w[:3, 3]) @ c2w[:3, :3]
            # load_blender + run_nerf_helpers.get_rays_np: the ray of pixel index (i, j) is ((i − W/2)/f, −(j − H/2)/f, −1)
            uv = np.column_stack([f * Xg[:, 0] / -Xg[:, 2] + W / 2, f * Xg[:, 1] / Xg[:, 2] + H / 2])
            worst = max(worst, np.abs(uv - expected).max())
            # negative control: the views' own (off-centre) principal points are not what Blender assumes
            centred_off.append(np.abs(plan.view.camera.K[:2, 2] * _scale(plan) - [W / 2, H / 2]).max())
            truth = (rgba[..., 3] > 0)
            assert truth.any() and not truth.all()
        stacked.append(np.array(split_images))  # load_blender: np.array(imgs) per split, then one concatenation
    assert np.concatenate(stacked, 0).shape[0] == len(seen)
    assert sorted(seen) == sorted(plans)
    assert worst <= PX_TOL
    assert max(centred_off) > 1
    assert (out / "points3d.ply").is_file() and not (out / "points3D.ply").exists()
    props = [line.split()[-1] for line in ply_header(out / "points3d.ply") if line.startswith("property")]
    assert props == ["x", "y", "z", "nx", "ny", "nz", "red", "green", "blue"]


def test_blender_alpha_is_the_silhouette(export, capture):
    from fsconvert.render import Renderer

    out = export("blender-quarter")
    plans = planned(out, capture)
    ious, off = [], []
    with Renderer(load_mesh(capture.mesh)) as renderer:
        for name, plan in plans.items():
            alpha = cv2.imread(str(out / name), cv2.IMREAD_UNCHANGED)[..., 3]
            truth = source_silhouette_in_output(renderer, plan)
            ious.append(iou(alpha > 0, truth))
            off.append(off_edge(alpha > 0, truth))
    assert min(ious) >= 0.99 and max(off) == 0, (ious, off)


# ---- options and reader errors -----------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, message", [
    ({"variant": "blender", "image": ImageOptions(undistort=False, image_format="png")}, "distortion"),
    ({"variant": "blender", "image": ImageOptions(image_format="jpg", scale=0.5)}, "png"),
    ({"variant": "blender", "image": ImageOptions(image_format="png"), "depth": True}, "depth"),
    ({"split": (0.5, 0.2, 0.2)}, "split"),
    ({"split": (0.0, 0.5, 0.5)}, "split"),
    ({"radius": 0.0}, "radius"),
    ({"normalize": "unit"}, "normalize"),
])
def test_impossible_options_are_input_errors(kwargs, message):
    with pytest.raises(InputError, match=message):
        nerf.Options(**kwargs)


def test_blender_with_an_empty_split_is_refused(capture, tmp_path):
    opts = nerf.Options(image=ImageOptions(scale=0.25, image_format="png"), variant="blender", split=(1.0, 0.0, 0.0))
    with pytest.raises(InputError, match="every split"):
        export_to(capture, nerf, tmp_path / "b", opts)


def test_reader_rules_on_hand_written_files(tmp_path):
    """Top-level intrinsics win, distortion_params is [k1 k2 k3 k4 p1 p2], 3×4 poses are accepted,
    applied_* are undone; missing keys and k4 are one-line InputErrors."""
    (tmp_path / "img").mkdir()
    Image.new("RGB", (40, 30)).save(tmp_path / "img" / "a.png")
    c2w_gl = cv.w2c_cv_to_c2w_gl(cv.homogeneous(np.column_stack([np.eye(3), [0.1, 0.2, 3.0]])))
    meta = {"fl_x": 50.0, "fl_y": 51.0, "cx": 20.0, "cy": 15.0, "w": 40, "h": 30,
            "distortion_params": [0.1, 0.2, 0.3, 0.0, 0.01, 0.02],
            "applied_transform": [[1, 0, 0, 1.0], [0, 1, 0, 0], [0, 0, 1, 0]], "applied_scale": 2.0,
            "frames": [{"file_path": "img/a.png", "fl_x": 99.0, "transform_matrix": c2w_gl[:3].tolist()}]}
    (tmp_path / "transforms.json").write_text(json.dumps(meta))
    (view,) = nerf.read(tmp_path)
    assert view.name == "img/a.png"
    assert np.allclose(view.camera.K, [[50, 0, 19.5], [0, 51, 14.5], [0, 0, 1]], rtol=0, atol=1e-12)
    assert np.allclose(view.camera.dist, [0.1, 0.2, 0.01, 0.02, 0.3], rtol=0, atol=0)
    # file frame X' = 2·(X + (1, 0, 0)): the source camera centre is X'/2 − (1, 0, 0)
    assert np.allclose(cv.camera_centre(view.world_to_cam), [-0.1 / 2 - 1, -0.2 / 2, -3.0 / 2], atol=1e-12)
    no_focal = json.loads(json.dumps(meta))
    del no_focal["fl_x"], no_focal["frames"][0]["fl_x"]
    k4 = {**meta, "distortion_params": [0, 0, 0, 0.5, 0, 0]}
    missing = {**meta, "frames": [{**meta["frames"][0], "file_path": "img/b.png"}]}
    for bad, key in ((no_focal, r"frames\[0\]\.fl_x"), (k4, r"frames\[0\].*k4"), (missing, r"b\.png")):
        (tmp_path / "transforms.json").write_text(json.dumps(bad))
        with pytest.raises(InputError, match=key):
            nerf.read(tmp_path)
