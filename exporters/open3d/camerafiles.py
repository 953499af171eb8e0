"""Open3D's camera files, byte for byte as Open3D 0.19 writes them, without importing Open3D (~2 s, ~200 MB).

- JSON (`trajectory.json`, `intrinsics/<stem>.json`): Open3D serialises its objects with jsoncpp 1.9.4's
  `StreamWriterBuilder` (Open3D `cpp/open3d/io/file_format/FileJSON.cpp`: indentation "\\t", no comments;
  `3rdparty/jsoncpp/jsoncpp.cmake` pins 1.9.4). Its `BuiltStyledStreamWriter` (jsoncpp
  `src/lib_json/json_writer.cpp`) sorts keys, writes `"key" : `, puts an object or a multi-line array on the
  next line at the key's indent, keeps an array of scalars on one line as `[ a, b ]` when it is shorter than 74
  characters, writes doubles with `%.17g` plus ".0" when that has no '.' or 'e', and ends without a newline.
  Matrices are column-major (`IJsonConvertible::EigenMatrix3dToJsonArray`, `EigenMatrix4dToJsonArray`).
- LOG (`trajectory.log`, Open3D `cpp/open3d/io/file_format/FileLOG.cpp`): per frame `i i i+1`, then the
  camera→world matrix `extrinsic.inverse()` row by row with `%.8f`. The inverse is Eigen's 4×4 SSE2 inverse for
  doubles (`Eigen/src/LU/arch/InverseSize4.h`; Open3D pins Eigen da790959 and builds without FMA), which
  `eigen_inverse` repeats operation for operation: the sign of its near-zero bottom row (`-0.00000000`) and
  every printed digit depend on it.

tests/test_open3d.py compares every writer here with Open3D's own, byte for byte, on random and extreme values.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np

from fsconvert.model import Camera

JsonValue = dict[str, "JsonValue"] | list["JsonValue"] | float | int | str

RIGHT_MARGIN = 74
"""jsoncpp puts an array of scalars on one line when the line would be shorter than this."""


def intrinsic_json(camera: Camera) -> str:
    """`write_pinhole_camera_intrinsic`'s file: PinholeCameraIntrinsic(width, height, K)."""
    return _jsoncpp(_intrinsic(camera))


def trajectory_json(cameras: Sequence[Camera], world_to_cams: Sequence[np.ndarray]) -> str:
    """`write_pinhole_camera_trajectory`'s .json: one PinholeCameraParameters per camera and extrinsic."""
    parameters: list[JsonValue] = [
        {"class_name": "PinholeCameraParameters", "extrinsic": _column_major(w2c), "intrinsic": _intrinsic(camera),
         "version_major": 1, "version_minor": 0}
        for camera, w2c in zip(cameras, world_to_cams, strict=True)]
    return _jsoncpp({"class_name": "PinholeCameraTrajectory", "parameters": parameters,
                     "version_major": 1, "version_minor": 0})


def trajectory_log(world_to_cams: Sequence[np.ndarray]) -> str:
    """`write_pinhole_camera_trajectory`'s .log: the Redwood camera→world matrices, 8 decimals."""
    lines = []
    for i, cam_to_world in enumerate(eigen_inverse(np.asarray(world_to_cams, dtype=np.float64))):
        lines.append(f"{i} {i} {i + 1}\n")
        lines += [" ".join(f"{x:.8f}" for x in row) + "\n" for row in cam_to_world]  # C's %.8f
    return "".join(lines)


def eigen_inverse(matrices: np.ndarray) -> np.ndarray:
    """Inverses of (N, 4, 4) float64 matrices computed as Eigen's `compute_inverse_size4<…, double, …>` does on
    SSE2: the adjugate by 2×2 blocks divided by the determinant, each float operation in Eigen's order (numpy's
    elementwise operations round as SSE2's do; without FMA there is nothing to fuse).

    Eigen reads the column-major storage as rows, so the blocks below are those of the transpose; its lanes are
    the last axis of the (N, 2) arrays (`_shuffle` and `_lane` are `_mm_shuffle_pd` and Eigen's `vec2d_duplane`).
    """
    t = np.swapaxes(matrices, -1, -2)
    a1, a2, b1, b2 = t[:, 0, 0:2], t[:, 1, 0:2], t[:, 0, 2:4], t[:, 1, 2:4]
    c1, c2, d1, d2 = t[:, 2, 0:2], t[:, 3, 0:2], t[:, 2, 2:4], t[:, 3, 2:4]
    det_a, det_b, det_c, det_d = (_det2(upper, lower) for upper, lower in ((a1, a2), (b1, b2), (c1, c2), (d1, d2)))
    # AB = A# B and DC = D# C, where # is the adjugate
    ab1 = b1 * _lane(a2, 1) - b2 * _lane(a1, 1)
    ab2 = b2 * _lane(a1, 0) - b1 * _lane(a2, 0)
    dc1 = c1 * _lane(d2, 1) - c2 * _lane(d1, 1)
    dc2 = c2 * _lane(d1, 0) - c1 * _lane(d2, 0)
    # det = |A||D| + |B||C| - trace(A# B D# C)
    trace = ab1 * _shuffle(dc1, dc2, 0) + ab2 * _shuffle(dc1, dc2, 3)
    trace = trace + _lane(trace, 1)
    det = _lane(det_a * det_d + det_b * det_c - trace, 0)
    reciprocal = 1.0 / det
    # the blocks of the adjugate
    ia1 = a1 * _lane(det_d, 0) - (dc1 * _lane(b1, 0) + dc2 * _lane(b1, 1))
    ia2 = a2 * _lane(det_d, 0) - (dc1 * _lane(b2, 0) + dc2 * _lane(b2, 1))
    ib1 = c1 * _lane(det_b, 0) - (d1 * _shuffle(ab2, ab1, 1) - _shuffle(d1, d1, 1) * _shuffle(ab2, ab1, 2))
    ib2 = c2 * _lane(det_b, 0) - (d2 * _shuffle(ab2, ab1, 1) - _shuffle(d2, d2, 1) * _shuffle(ab2, ab1, 2))
    ic1 = b1 * _lane(det_c, 0) - (a1 * _shuffle(dc2, dc1, 1) - _shuffle(a1, a1, 1) * _shuffle(dc2, dc1, 2))
    ic2 = b2 * _lane(det_c, 0) - (a2 * _shuffle(dc2, dc1, 1) - _shuffle(a2, a2, 1) * _shuffle(dc2, dc1, 2))
    id1 = d1 * _lane(det_a, 0) - (ab1 * _lane(c1, 0) + ab2 * _lane(c1, 1))
    id2 = d2 * _lane(det_a, 0) - (ab1 * _lane(c2, 0) + ab2 * _lane(c2, 1))
    positive_negative = reciprocal * np.array([1.0, -1.0])  # Eigen flips the lanes' sign bits: exact, as is this
    negative_positive = reciprocal * np.array([-1.0, 1.0])
    out = np.empty_like(t)
    for rows, cols, (upper, lower) in ((slice(0, 2), slice(0, 2), (ia1, ia2)), (slice(0, 2), slice(2, 4), (ib1, ib2)),
                                       (slice(2, 4), slice(0, 2), (ic1, ic2)), (slice(2, 4), slice(2, 4), (id1, id2))):
        out[:, rows, cols] = np.stack([_shuffle(lower, upper, 3) * positive_negative,
                                       _shuffle(lower, upper, 0) * negative_positive], axis=1)
    return np.swapaxes(out, -1, -2)


def _det2(upper: np.ndarray, lower: np.ndarray) -> np.ndarray:
    """Lane 0: the 2×2 determinant upper[0]·lower[1] − upper[1]·lower[0], as Eigen's first lane holds it."""
    products = upper * _shuffle(lower, lower, 1)
    det: np.ndarray = products - _lane(products, 1)
    return det


def _shuffle(a: np.ndarray, b: np.ndarray, mask: int) -> np.ndarray:
    """`_mm_shuffle_pd(a, b, mask)`: lane 0 from a, lane 1 from b, chosen by the mask's two low bits."""
    return np.stack([a[:, mask & 1], b[:, (mask >> 1) & 1]], axis=1)


def _lane(a: np.ndarray, lane: int) -> np.ndarray:
    """Both lanes set to `a`'s `lane`."""
    return np.repeat(a[:, lane:lane + 1], 2, axis=1)


def _intrinsic(camera: Camera) -> dict[str, JsonValue]:
    return {"height": camera.height, "intrinsic_matrix": _column_major(camera.K), "width": camera.width}


def _column_major(matrix: np.ndarray) -> list[JsonValue]:
    return [float(x) for x in np.asarray(matrix, dtype=np.float64).T.reshape(-1)]


def _jsoncpp(root: JsonValue) -> str:
    """`root` as jsoncpp's BuiltStyledStreamWriter writes it with a tab of indentation (module docstring); for the
    values Open3D's cameras hold, which have no empty array or object (jsoncpp writes those as `[]` and `{}`)."""
    out: list[str] = []
    indent = ""
    indented = True  # the writer's `indented_`: the line is already where the next value goes

    def on_new_line(text: str) -> None:  # BuiltStyledStreamWriter::writeWithIndent
        nonlocal indented
        if not indented:
            out.append("\n" + indent)
        out.append(text)
        indented = False

    def write(value: JsonValue) -> None:
        nonlocal indent, indented
        if isinstance(value, dict):
            on_new_line("{")
            indent += "\t"
            for i, key in enumerate(sorted(value)):
                on_new_line(json.dumps(key) + " : ")
                write(value[key])
                out.append("," if i < len(value) - 1 else "")
            indent = indent[:-1]
            on_new_line("}")
        elif isinstance(value, list):
            one_line = _one_line(value)
            if one_line is not None:
                out.append(one_line)
                return
            on_new_line("[")
            indent += "\t"
            for i, item in enumerate(value):
                if isinstance(item, dict | list):
                    if not indented:
                        out.append("\n" + indent)
                    indented = True
                    write(item)
                    indented = False
                else:
                    on_new_line(_scalar(item))
                out.append("," if i < len(value) - 1 else "")
            indent = indent[:-1]
            on_new_line("]")
        else:
            out.append(_scalar(value))

    write(root)
    return "".join(out)


def _one_line(items: list[JsonValue]) -> str | None:
    """`[ a, b ]` where jsoncpp's isMultilineArray says the array of scalars fits on one line, else None."""
    if len(items) * 3 >= RIGHT_MARGIN or any(isinstance(item, dict | list) for item in items):
        return None
    texts = [_scalar(item) for item in items]
    if 4 + (len(items) - 1) * 2 + sum(map(len, texts)) >= RIGHT_MARGIN:
        return None
    return "[ " + ", ".join(texts) + " ]"


def _scalar(value: JsonValue) -> str:
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, int):
        return str(value)
    text = f"{value:.17g}"  # C's %.17g: both round correctly and drop trailing zeros
    return text if "." in text or "e" in text else text + ".0"
