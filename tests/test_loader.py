"""The loader on params.json shapes found in the wild, on dataset layouts, and on malformed values."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import trimesh

from fsconvert.errors import InputError
from fsconvert.loader import find_mesh, iter_dataset, load_capture, parse_exps, parse_ids

W, H = 48, 32
TINY_PLY = trimesh.creation.box().export(file_type="ply", encoding="ascii")
"""A valid 8-vertex, 12-face mesh: the loader proves the mesh readable."""


def view_params(vid: int, *, portrait: bool = False, valid: bool = True) -> dict:
    w, h = (H, W) if portrait else (W, H)
    a = 0.1 * vid
    R = [[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]]
    return {
        f"{vid}_K": [[190.0, 0, w / 2 + 1.5], [0, 190.0, h / 2 - 2.25], [0, 0, 1]],
        f"{vid}_Rt": [R[0] + [0.01], R[1] + [-0.02], R[2] + [3.0]],
        f"{vid}_distortion": [0.2, 0.01, 1e-4, -2e-4, 0.0],
        f"{vid}_width": w,
        f"{vid}_height": h,
        f"{vid}_matches": 1000 + vid,
        f"{vid}_valid": valid,
        f"{vid}_sn": f"SN{vid:04d}",
        f"{vid}_ori": f"IMG_{vid:04d}.JPG",
    }


def write_tuple(tuple_dir: Path, params: dict, mesh: bool = True) -> Path:
    tuple_dir.mkdir(parents=True, exist_ok=True)
    (tuple_dir / "params.json").write_text(json.dumps(params))
    for key, value in params.items():
        if key.endswith("_width"):
            vid = key.split("_")[0]
            h = max(1, int(params.get(f"{vid}_height", H)))
            cv2.imwrite(str(tuple_dir / f"{vid}.jpg"), np.full((h, max(1, int(value)), 3), 90, np.uint8))
    if mesh:
        mesh_path = tuple_dir.parent.parent.parent / "models" / tuple_dir.parent.name / f"{tuple_dir.name}.ply"
        mesh_path.parent.mkdir(parents=True, exist_ok=True)
        mesh_path.write_bytes(TINY_PLY)
    return tuple_dir


@pytest.fixture
def tuple_dir(tmp_path: Path) -> Path:
    params = {}
    for vid, kw in ((0, {}), (1, {"portrait": True}), (2, {"valid": False}), (5, {})):
        params |= view_params(vid, **kw)
    return write_tuple(tmp_path / "images" / "212" / "4_anger", params)


def test_loads_views_from_keys_and_skips_invalid(tuple_dir: Path):
    cap = load_capture(tuple_dir)
    assert [v.id for v in cap.views] == [0, 1, 5]  # ids from the keys, not 0..len//9
    assert [v.id for v in cap.excluded] == [2]
    assert (cap.subject, cap.expression) == ("212", "4_anger")
    assert cap.mesh == tuple_dir.parent.parent.parent / "models" / "212" / "4_anger.ply"
    v1 = cap.view(1)
    assert v1.camera.size == (H, W) and v1.camera.is_portrait
    assert v1.image == tuple_dir / "1.jpg" and v1.sn == "SN0001" and v1.matches == 1001
    assert v1.camera.K[0, 2] == H / 2 + 1.5 and v1.world_to_cam.shape == (4, 4)
    assert np.allclose(v1.camera.dist, [0.2, 0.01, 1e-4, -2e-4, 0.0])
    assert [v.id for v in load_capture(tuple_dir, include_invalid=True).views] == [0, 1, 2, 5]


def test_accepts_4x4_K_and_Rt_float_sizes_and_any_key_order(tmp_path: Path):
    p = view_params(3)
    p["3_K"] = [row + [0.0] for row in p["3_K"]] + [[0, 0, 0, 1]]
    p["3_Rt"] = p["3_Rt"] + [[0, 0, 0, 1]]
    p["3_width"], p["3_height"] = float(W), float(H)
    shuffled = dict(reversed(list(p.items())))
    ref = load_capture(write_tuple(tmp_path / "a" / "images" / "1" / "e", view_params(3)), require_mesh=False).views[0]
    got = load_capture(write_tuple(tmp_path / "b" / "images" / "1" / "e", shuffled), require_mesh=False).views[0]
    assert got.camera.equals(ref.camera) and np.array_equal(got.world_to_cam, ref.world_to_cam)
    assert isinstance(got.camera.width, int)


def test_optional_keys_may_be_missing(tmp_path: Path):
    p = {k: v for k, v in view_params(0).items() if k.split("_", 1)[1] in ("K", "Rt", "distortion", "width", "height")}
    cap = load_capture(write_tuple(tmp_path / "images" / "1" / "e", p), require_mesh=False)
    assert cap.views[0].valid and cap.views[0].sn == ""


def test_mesh_given_explicitly_or_by_root(tuple_dir: Path, tmp_path: Path):
    other = tmp_path / "elsewhere" / "212" / "4_anger.ply"
    other.parent.mkdir(parents=True)
    other.write_bytes(TINY_PLY)
    assert load_capture(tuple_dir, mesh=other).mesh == other
    assert find_mesh(tuple_dir, tmp_path / "elsewhere") == other
    # two candidate sibling roots are ambiguous: not guessed
    assert find_mesh(tuple_dir) is None


def test_dataset_enumeration_and_selection(tmp_path: Path):
    for sid in ("1", "2", "10", "212"):
        for exp in ("1_neutral", "4_anger"):
            write_tuple(tmp_path / "images" / sid / exp, view_params(0), mesh=False)
    names = [r.name for r in iter_dataset(tmp_path)]
    assert names[:3] == ["1/1_neutral", "1/4_anger", "2/1_neutral"] and len(names) == 8
    assert names[-2:] == ["212/1_neutral", "212/4_anger"]  # numeric, not lexical, order
    sel = [r.name for r in iter_dataset(tmp_path / "images", ids=parse_ids("1-2,212"), exps=parse_exps("4"))]
    assert sel == ["1/4_anger", "2/4_anger", "212/4_anger"]
    assert parse_ids("1-3,7") == {1, 2, 3, 7}
    for bad in ("a", "3-1", ""):
        with pytest.raises(InputError):
            parse_ids(bad)


MALFORMED = {
    "K 2×3": ("0_K", [[1, 0, 1], [0, 1, 1]], "view 0: key '0_K': expected 4×4 or 3×3 numbers, got 2×3"),
    "Rt 3×3": ("0_Rt", np.eye(3).tolist(), "key '0_Rt': expected 4×4 or 3×4 numbers, got 3×3"),
    "NaN in K": ("0_K", [[float("nan"), 0, 1], [0, 1, 1], [0, 0, 1]], "key '0_K': contains NaN or infinity"),
    "negative focal": ("0_K", [[-5.0, 0, 20], [0, 5, 10], [0, 0, 1]], "key '0_K': focal length must be positive"),
    "not a rotation": ("0_Rt", [[1, 0.1, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]], "key '0_Rt': R is not a rotation"),
    "det -1": ("0_Rt", [[-1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]], "key '0_Rt': R has determinant −1"),
    "zero width": ("0_width", 0, "key '0_width': expected a positive integer, got 0"),
    "fractional height": ("0_height", 31.5, "key '0_height': expected a positive integer, got 31.5"),
    "distortion length 3": ("0_distortion", [0.1, 0.2, 0.3], "key '0_distortion': expected"),
    "valid as string": ("0_valid", "yes", "key '0_valid': expected true or false"),
    "extra key": ("0_focal", 3, "key '0_focal': unknown key"),
    "non-numeric id": ("a_K", [[1, 0, 1], [0, 1, 1], [0, 0, 1]], "key 'a_K': view id is not a non-negative integer"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_values_name_file_view_and_key(tmp_path: Path, case: str):
    key, value, message = MALFORMED[case]
    params = view_params(0) | {key: value}
    d = write_tuple(tmp_path / "images" / "1" / "e", params)
    with pytest.raises(InputError) as err:
        load_capture(d)
    text = str(err.value)
    assert text.startswith(str(d / "params.json")) and message in text, text
    assert "\n" not in text


def test_duplicate_view_ids_and_missing_keys(tmp_path: Path):
    d = write_tuple(tmp_path / "images" / "1" / "e", view_params(0))
    text = (d / "params.json").read_text()
    (d / "params.json").write_text(text.replace('"0_sn"', '"00_sn"'))
    with pytest.raises(InputError, match="key '00_sn': duplicate view id 0"):
        load_capture(d)
    (d / "params.json").write_text(text[:-1] + ', "0_K": [[1, 0, 1], [0, 1, 1], [0, 0, 1]]}')
    with pytest.raises(InputError, match="key '0_K': duplicate key"):
        load_capture(d)
    p = view_params(0)
    del p["0_Rt"]
    (d / "params.json").write_text(json.dumps(p))
    with pytest.raises(InputError, match="view 0: key '0_Rt': missing key"):
        load_capture(d)


def test_images_missing_wrong_size_or_corrupt(tuple_dir: Path):
    (tuple_dir / "5.jpg").unlink()
    with pytest.raises(InputError, match=r"5\.jpg: view 5: image missing"):
        load_capture(tuple_dir)
    cv2.imwrite(str(tuple_dir / "5.jpg"), np.zeros((H + 1, W, 3), np.uint8))
    with pytest.raises(InputError, match=r"view 5: image is 48×33 but \S*/params\.json says 48×32"):
        load_capture(tuple_dir)
    (tuple_dir / "5.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(InputError, match=r"view 5: not a readable image"):
        load_capture(tuple_dir)
    (tuple_dir / "2.jpg").unlink()  # an excluded view needs no image
    (tuple_dir / "5.jpg").unlink()
    (tuple_dir / "params.json").write_text(
        json.dumps({k: v for k, v in json.loads((tuple_dir / "params.json").read_text()).items() if not k.startswith("5_")})
    )
    assert [v.id for v in load_capture(tuple_dir).views] == [0, 1]


def test_every_view_invalid_and_not_json(tmp_path: Path):
    d = write_tuple(tmp_path / "images" / "1" / "e", view_params(0, valid=False) | view_params(1, valid=False))
    with pytest.raises(InputError, match="no valid view"):
        load_capture(d)
    (d / "params.json").write_text("{not json")
    with pytest.raises(InputError, match=r"params.json: invalid JSON: .* line 1 column 2"):
        load_capture(d)
    (d / "params.json").write_text("[1, 2]")
    with pytest.raises(InputError, match="expected a JSON object"):
        load_capture(d)


def test_truncated_jpegs_are_refused_complete_ones_with_trailing_bytes_load(tuple_dir: Path):
    """Decoders accept a cut JPEG silently (grey fill), so the loader looks for the end marker after
    the image data: progressive files and bytes appended after the marker still load."""
    img = cv2.imread(str(tuple_dir / "5.jpg"))
    ok, progressive = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])
    assert ok
    (tuple_dir / "5.jpg").write_bytes(progressive.tobytes())
    (tuple_dir / "0.jpg").write_bytes((tuple_dir / "0.jpg").read_bytes() + b"\0" * 5000 + b"maker trailer")
    assert [v.id for v in load_capture(tuple_dir).views] == [0, 1, 5]
    (tuple_dir / "5.jpg").write_bytes(progressive.tobytes()[:-2])
    assert cv2.imread(str(tuple_dir / "5.jpg")).shape == img.shape  # what the loader must not trust
    with pytest.raises(InputError, match=r"5\.jpg: view 5: truncated JPEG \(no end marker after the image data\)"):
        load_capture(tuple_dir)


def test_mesh_is_parsed_once_per_file_version(tmp_path: Path):
    from fsconvert.mesh import load_mesh

    path = tmp_path / "m.ply"
    trimesh.creation.icosphere(subdivisions=1).export(path)
    first, second = load_mesh(path), load_mesh(path)
    assert first is second  # the kept parse, shared: callers read it and never change it
    trimesh.creation.icosphere(subdivisions=2).export(path)  # a new version of the file is parsed again
    assert len(load_mesh(path).vertices) == 162
