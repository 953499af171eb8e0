"""sdfstudio's meta_data.json, read back here by sdfstudio's own parser rules (re-implemented below, not through
exporters.sdfstudio): autonomousvision/sdfstudio `nerfstudio/data/dataparsers/sdfstudio_dataparser.py` (frames,
float32 `torch.tensor`, `camera_to_worlds[:, 0:3, 1:3] *= -1`, one height/width, foreground masks `[..., :1] / 255`,
sensor depth `np.load`) and `nerfstudio/cameras/cameras.py` (the ray of pixel index i through i + 0.5:
direction ((x − cx)/fx, −(y − cy)/fy, −1) rotated by camera_to_worlds[:3, :3], origin camera_to_worlds[:3, 3])."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from conftest import expected_pixels
from helpers import exported_once, footprint, plans_by_name
from PIL import Image

from exporters import sdfstudio
from fsconvert.cli import main
from fsconvert.framing import capture_up, is_rolled
from fsconvert.imageplan import ImageOptions
from fsconvert.mesh import load_mesh
from fsconvert.model import Capture
from fsconvert.render import Renderer

PX_TOL = 0.01
REL_TOL = 1e-9
SHARED_HALF = ImageOptions(scale=0.5, intrinsics="shared", image_format="png")
CASES = {
    "shared": sdfstudio.Options(image=SHARED_HALF, masks=True, depth=True),
    "upright": sdfstudio.Options(image=replace(SHARED_HALF, upright=True), collider="sphere", margin=1.3),
    "per-view": sdfstudio.Options(image=ImageOptions(scale=0.5, image_format="png")),
}
"""Every case exports the whole sample (landscape and portrait views, a rolled one, k3 ≠ 0)."""








# ---- sdfstudio's parser, re-implemented ----------------------------------------------------------------


@pytest.fixture(scope="module")
def exported(capture, tmp_path_factory):
    """case → Exported (written and checked once per module, on first use)."""
    return exported_once(capture, tmp_path_factory.mktemp("sdfstudio"), {c: ("sdfstudio", o) for c, o in CASES.items()})


def parse(out: Path) -> dict:
    """SDFStudio._generate_dataparser_outputs with its defaults (no auto_orient, scale_factor 1): per frame
    `torch.tensor(intrinsics)`, `torch.tensor(camtoworld)` (float32), fx = K[0,0], fy = K[1,1], cx = K[0,2],
    cy = K[1,2]; the stacked poses' columns 1 and 2 negated (OpenCV → nerfstudio's OpenGL camera)."""
    meta = json.loads((out / "meta_data.json").read_text())
    frames = meta["frames"]
    K = np.stack([np.array(f["intrinsics"], dtype=np.float32) for f in frames])
    c2w = np.stack([np.array(f["camtoworld"], dtype=np.float32) for f in frames])
    c2w[:, 0:3, 1:3] *= -1
    return {"meta": meta, "names": [f["rgb_path"] for f in frames], "fx": K[:, 0, 0], "fy": K[:, 1, 1],
            "cx": K[:, 0, 2], "cy": K[:, 1, 2], "c2w": c2w[:, :3, :4], "height": meta["height"],
            "width": meta["width"]}


def project(cams: dict, k: int, X: np.ndarray) -> np.ndarray:
    """Where camera k's rays meet world points X (file world), as OpenCV pixel indices: the inverse of
    `_generate_rays_from_coords` (d = R·((x − cx)/fx, −(y − cy)/fy, −1), x = i + 0.5): in the camera,
    p = Rᵀ(X − o); x = cx + fx·p₀/(−p₂), y = cy − fy·p₁/(−p₂); the pixel index is x − 0.5."""
    c2w = cams["c2w"][k].astype(np.float64)
    p = (X - c2w[:, 3]) @ c2w[:, :3]
    x = float(cams["cx"][k]) + float(cams["fx"][k]) * p[:, 0] / -p[:, 2]
    y = float(cams["cy"][k]) - float(cams["fy"][k]) * p[:, 1] / -p[:, 2]
    return np.column_stack([x, y]) - 0.5


def to_file_world(meta: dict, X: np.ndarray) -> np.ndarray:
    """Source points in the file's world: worldtogt⁻¹ (worldtogt maps the file's world to the source's)."""
    S = np.array(meta["worldtogt"], dtype=np.float64)
    Xh = np.linalg.solve(S, np.column_stack([X, np.ones(len(X))]).T).T
    return Xh[:, :3]


def worst_px(out: Path, capture: Capture, vertices: np.ndarray) -> float:
    """The largest distance, over every view, between sdfstudio's projection of the mesh vertices and the
    source camera's (carried into the exported image)."""
    cams, plans = parse(out), plans_by_name(out, capture, sdfstudio)
    X = to_file_world(cams["meta"], vertices)
    worst = 0.0
    for k, name in enumerate(cams["names"]):
        idx, want = expected_pixels(plans[name], vertices)
        worst = max(worst, float(np.abs(project(cams, k, X[idx]) - want).max()))
    return worst


# ---- the cameras ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["shared", "upright"])
def test_sdfstudio_parser_reprojects_the_mesh_in_every_view(case, exported, capture, vertices):
    result = exported(case)
    assert result.check.passed, [v.problems for v in result.check.views] + result.check.problems
    up = capture_up(capture.views)
    kinds = {("portrait" if v.camera.is_portrait else "landscape", is_rolled(v, up)) for v in capture.views}
    assert {k for k, _ in kinds} == {"portrait", "landscape"} and any(r for _, r in kinds)  # all of them below
    cams = parse(result.out_dir)
    assert len(cams["names"]) == len(capture.views)
    for name in cams["names"]:
        with Image.open(result.out_dir / name) as im:
            assert im.size == (cams["width"], cams["height"]) and im.mode == "RGB"
    worst = worst_px(result.out_dir, capture, vertices)
    print(f"{case}: sdfstudio's float32 cameras read the mesh {worst:.2e} px from the source cameras at worst")
    assert worst < PX_TOL


def test_worldtogt_maps_the_file_world_back_to_the_source(exported, capture, vertices):
    result = exported("shared")
    cams, plans = parse(result.out_dir), plans_by_name(result.out_dir, capture, sdfstudio)
    S = np.array(cams["meta"]["worldtogt"], dtype=np.float64)
    X = to_file_world(cams["meta"], vertices)
    back = X @ S[:3, :3].T + S[:3, 3]
    assert np.abs(back - vertices).max() <= REL_TOL * np.abs(vertices).max()
    # the object: its bounding sphere (box centre, largest distance) times the 1.1 margin is the unit sphere
    assert np.abs((X.min(axis=0) + X.max(axis=0)) / 2).max() < REL_TOL
    assert np.linalg.norm(X, axis=1).max() == pytest.approx(1 / 1.1, rel=REL_TOL)
    # the file's camera centres (float64 JSON, as written) are the source cameras' through worldtogt
    meta = cams["meta"]
    for frame in meta["frames"]:
        centre = np.array(frame["camtoworld"], dtype=np.float64)[:3, 3]
        source = plans[frame["rgb_path"]].view.centre
        assert np.abs(S[:3, :3] @ centre + S[:3, 3] - source).max() <= REL_TOL * np.abs(source).max()
    box = meta["scene_box"]
    assert box["aabb"] == [[-1, -1, -1], [1, 1, 1]] and box["radius"] == 1 and box["collider_type"] == "near_far"
    distances = [np.linalg.norm(np.array(f["camtoworld"])[:3, 3]) for f in meta["frames"]]
    assert box["near"] == pytest.approx(min(distances) - 1) and box["far"] == pytest.approx(max(distances) + 1)
    assert meta["camera_model"] == "OPENCV" and meta["has_mono_prior"] is False and meta["pairs"] is None
    upright = json.loads((exported("upright").out_dir / "meta_data.json").read_text())
    assert upright["scene_box"]["collider_type"] == "sphere" and not upright["has_foreground_mask"]


# ---- masks and sensor depth --------------------------------------------------------------------------------


def test_foreground_masks_and_sensor_depth_are_the_rendered_mesh(exported, capture):
    """Masks: as the parser loads them (`np.array(Image.open(...), dtype="uint8")[..., :1] / 255`) exactly the
    silhouette of the mesh rendered through the plan's camera AND the pixels with source data. Depth: as
    `np.load` gives it, bit for bit the float32 of the rendered z-depth divided by worldtogt's scale (the
    file's units; a rounding of ≤ 0.5 ulp, 3e-8 relative)."""
    result = exported("shared")
    cams, plans = parse(result.out_dir), plans_by_name(result.out_dir, capture, sdfstudio)
    meta = cams["meta"]
    assert meta["has_foreground_mask"] is True and meta["has_sensor_depth"] is True
    scale = float(np.array(meta["worldtogt"])[0, 0])
    with Renderer(load_mesh(capture.mesh)) as renderer:
        for frame in meta["frames"]:
            plan = plans[frame["rgb_path"]]
            mask = np.array(Image.open(result.out_dir / frame["foreground_mask"]), dtype="uint8")[..., :1] / 255.0
            assert mask.shape == (cams["height"], cams["width"], 1) and set(np.unique(mask)) <= {0.0, 1.0}
            render = renderer.render(plan.camera, plan.world_to_cam, depth_only=True)
            covered = footprint(plan)
            assert 0 < (mask[..., 0] > 0).sum() < (render.depth > 0).sum()  # the shared frame's empty border
            assert np.array_equal(mask[..., 0] > 0, (render.depth > 0) & covered)
            depth = np.load(result.out_dir / frame["sensor_depth_path"])
            assert depth.dtype == np.float32 and depth.shape == (cams["height"], cams["width"])
            want = (render.depth.astype(np.float64) / scale).astype(np.float32)
            assert np.array_equal(depth, want)
            z = render.depth > 0
            rel = np.abs(depth[z].astype(np.float64) * scale - render.depth[z]) / render.depth[z]
            assert rel.max() < 1e-7 and not depth[~z].any()


def test_sensor_depth_places_the_surface_on_the_file_cameras_rays(exported, capture, vertices):
    """Independent of the renderer: the mesh vertices a view sees lie at the depth the file gives at their
    nearest pixel, in the file's world (z of the nerfstudio camera, −p₂), within the surface's change over half a
    pixel; the others are behind that surface (occluded), but for a few at silhouettes where rounding to the
    nearest pixel falls off the mesh's edge."""
    result = exported("shared")
    cams, plans = parse(result.out_dir), plans_by_name(result.out_dir, capture, sdfstudio)
    X = to_file_world(cams["meta"], vertices)
    for k, frame in enumerate(cams["meta"]["frames"]):
        depth = np.load(result.out_dir / frame["sensor_depth_path"]).astype(np.float64)
        idx, _ = expected_pixels(plans[frame["rgb_path"]], vertices)
        uv = np.rint(project(cams, k, X[idx])).astype(int)
        inside = np.all((uv >= 0) & (uv < [cams["width"], cams["height"]]), axis=1)
        c2w = cams["c2w"][k].astype(np.float64)
        z = -((X[idx][inside] - c2w[:, 3]) @ c2w[:, :3])[:, 2]
        d = depth[uv[inside, 1], uv[inside, 0]]
        seen = np.abs(d - z) < 2e-3 * z  # the vertex is the surface the view sees there
        behind = d > z * (1 + 2e-3)  # the depth would put the surface behind a vertex: only at silhouette pixels
        assert seen.mean() > 0.3 and behind.mean() < 1e-2, (seen.mean(), behind.mean())


# ---- what sdfstudio would misread ---------------------------------------------------------------------------


def test_per_view_sizes_are_named_as_the_misread_they_are(exported):
    result = exported("per-view")
    assert not result.check.passed
    (problem,) = result.check.problems
    assert problem.startswith("sdfstudio: casts every camera's rays over meta_data.json's "), problem


def test_a_one_channel_mask_is_named(exported, tmp_path):
    out = copy_export(exported("shared").out_dir, tmp_path)
    meta = json.loads((out / "meta_data.json").read_text())
    path = out / meta["frames"][1]["foreground_mask"]
    Image.open(path).convert("L").save(path)
    loaded = np.array(Image.open(path), dtype="uint8")[..., :1]  # the parser's own indexing
    assert loaded.shape == (meta["height"], 1)  # its first column, not a channel
    assert main(["check", str(out), "--overlays", "none"]) == 1
    problems = json.loads((out / "check" / "check.json").read_text())["problems"]
    assert any("foreground_mask[..., :1]" in p and meta["frames"][1]["foreground_mask"] in p for p in problems)


def test_nerfstudio_sdfstudio_data_rules_pass(exported):
    out = exported("shared").out_dir
    assert main(["check", str(out), "--reader", "nerfstudio-sdfstudio-data", "--overlays", "none"]) == 0


# ---- negative controls: a wrong convention fails the check -------------------------------------------------


def flip_gl(frame: dict) -> None:
    """camtoworld written as OpenGL (the flip the parser does, done once more by the writer)."""
    frame["camtoworld"] = (np.array(frame["camtoworld"]) @ np.diag([1.0, -1.0, -1.0, 1.0])).tolist()


def no_half_pixel(frame: dict) -> None:
    """cx, cy written as OpenCV's (pixel centres at integers), without nerfstudio's + 0.5."""
    K = np.array(frame["intrinsics"])
    K[:2, 2] -= 0.5
    frame["intrinsics"] = K.tolist()


def as_w2c(frame: dict) -> None:
    """camtoworld written as world→camera."""
    frame["camtoworld"] = np.linalg.inv(np.array(frame["camtoworld"])).tolist()


@pytest.mark.parametrize("change", [flip_gl, no_half_pixel, as_w2c], ids=lambda f: f.__name__)
def test_a_wrong_convention_fails_the_check(change, exported, capture, vertices, tmp_path):
    out = copy_export(exported("shared").out_dir, tmp_path)
    meta = json.loads((out / "meta_data.json").read_text())
    for frame in meta["frames"]:
        change(frame)
    (out / "meta_data.json").write_text(json.dumps(meta))
    assert main(["check", str(out), "--overlays", "none"]) == 1
    assert worst_px(out, capture, vertices) > 0.4  # sdfstudio's own rays see it too (≥ the half pixel)


def copy_export(src: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(src, tmp_path / src.name))
