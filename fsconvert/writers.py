"""Every file the project writes goes through here: bytes, text and JSON (atomically where asked), PNG and
JPEG, binary PLY and .npz. Failures become one-line OutputErrors naming the file.

Output bytes depend on the content alone, never on the Python release, the CPU or the time: the .npz
container is built here (zipfile's headers change between Python patch releases), and JSON is written
with a fixed layout.

PNG: 8-bit colour (RGB, RGBA) is encoded by fpng (`fpng` on PyPI, py-fpng-nb: Richard Geldreich's fpng, its
commit f614589 of 2024-08, in a nanobind module), grey and 16-bit images by OpenCV (libpng), and so are masks
whatever their channels (sdfstudio's are three: OpenCV encodes them row by row, where fpng holds ~100 MB more
for a 12.6 MP view, and a mask compresses to a few kB). For a 4344×2896 view on one core: fpng 0.078 s CPU and
12.0 MB, OpenCV's default (libpng at level 1, sub filter, RLE) 0.25 s and 11.4 MB; Pillow at level 1,
imagecodecs' libpng and libspng took 0.84, 0.40 and 0.73 s (benchmarks/README.md).
fpng is one pass of the `up` filter and its own deflate (RLE matches, pre-trained Huffman tables), one
thread, no zlib: its bytes depend on the pixels alone (its SIMD paths compute what its scalar ones do), where
libpng's depend on the system's libz.so.1 too (OpenCV's and Pillow's wheels link it: a zlib-ng-compat libz
writes other bytes). Its files carry fpng's private ancillary chunk `fdEC`, which readers skip. Its binding
holds the GIL while it encodes, so the image stage's threads hand their PNGs to helper processes
(`fsconvert.pngprocess`, `png_bytes`' `fpng_encode`) that run the same fpng.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import struct
import zlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import cv2
import fpng
import numpy as np

from .errors import OutputError

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_UINT16_PNG = (cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_UP, cv2.IMWRITE_PNG_COMPRESSION, 1)
_PLY_TYPES = {"f8": "double", "f4": "float", "u1": "uchar"}
_NUMBER_LIST = re.compile(r"\[\s*([-+.\deE,\s]+?)\s*\]")
_ZIP_VERSION = 20
"""ZIP 2.0: stored entries, no ZIP64 (every entry and the archive stay below 4 GiB)."""
_ZIP_DOS_DATE = (1980 - 1980) << 9 | 1 << 5 | 1
"""1980-01-01, the earliest DOS date (time 00:00:00): no clock in the bytes."""


def write_bytes(path: Path, data: bytes | bytearray) -> None:
    """Write `data` to `path`; OS errors become an OutputError naming the file."""
    try:
        Path(path).write_bytes(data)
    except OSError as exc:
        raise OutputError(f"{path}: cannot write: {exc.strerror or exc}") from None


def write_text(path: Path, text: str) -> None:
    """Write UTF-8 `text` to `path`."""
    write_bytes(path, text.encode("utf-8"))


def write_json(path: Path, data: object, *, compact_numbers: bool = False) -> None:
    """Indented JSON and a final newline; `compact_numbers` puts every list of numbers on one line (a matrix
    is then one row per line, as NeRF tools write transforms.json)."""
    text = json.dumps(data, indent=2)
    if compact_numbers:
        text = _NUMBER_LIST.sub(lambda m: "[" + ", ".join(x.strip() for x in m[1].split(",")) + "]", text)
    write_text(path, text + "\n")


def replace_atomically(path: Path, data: bytes) -> None:
    """Write `data` beside `path` and rename it into place: a reader sees the old file or the new one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise OutputError(f"{path}: cannot write: {exc.strerror or exc}") from None


def write_png(path: Path, img: np.ndarray) -> None:
    """Lossless PNG of an OpenCV-ordered image (grey, BGR, BGRA; uint8 or uint16), as `png_bytes` encodes it."""
    write_bytes(path, png_bytes(img, path))


def png_bytes(img: np.ndarray, path: Path | None = None, *, fpng_encode: Callable[[np.ndarray], bytes] | None = None,
              rgb: bool = False) -> bytes:
    """A PNG of `img` (grey H×W or H×W×1, BGR H×W×3 or BGRA H×W×4, as OpenCV holds images; uint8 or uint16),
    decoded by PIL, OpenCV and imageio to the same pixels: 8-bit BGR(A) through fpng (see the module's notes),
    anything else through OpenCV, 16-bit with the `up` filter at zlib level 1 (a 12.6 MP depth map: 0.11 s and
    2.1 MB, against 0.14 s and 3.6 MB with `up` and RLE, 0.15 s and 5.2 MB by default). `path` names the file
    in errors. `fpng_encode`: what runs fpng on the RGB(A) pixels instead of its binding here
    (`pngprocess.FpngProcess`). `rgb`: 8-bit colour is in RGB(A) order already, as the image stage decodes its
    sources for PNGs: no reordered copy (a 12.6 MP RGBA view's is 50 MB, ~17 ms, beside fpng's own ~100 MB)."""
    if img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] in (3, 4):
        return _fpng(img, path, fpng_encode or fpng.fpng_ext.encode_ndarray, rgb)
    return encoded(img, ".png", _UINT16_PNG if img.dtype == np.uint16 else (), path)


def _fpng(img: np.ndarray, path: Path | None, encode: Callable[[np.ndarray], bytes], rgb: bool) -> bytes:
    """fpng's PNG of 8-bit BGR(A) pixels, or with `rgb` RGB(A) (it takes RGB(A): BGR(A) is reordered into a copy)."""
    if rgb:
        pixels = np.ascontiguousarray(img)
    else:
        pixels = cv2.cvtColor(img, cv2.COLOR_BGR2RGB if img.shape[2] == 3 else cv2.COLOR_BGRA2RGBA)
    # fpng's binding returns empty bytes where fpng fails (its error is constructed, never thrown)
    data = encode(pixels)
    if not data.startswith(_PNG_SIGNATURE):
        raise OutputError(f"{path or 'PNG'}: fpng cannot encode a {img.shape[1]}×{img.shape[0]} image")
    return data


def write_encoded(path: Path, img: np.ndarray, ext: str, params: Sequence[int] = ()) -> None:
    """cv2.imencode to `ext` (BGR order, as OpenCV holds images) and write."""
    write_bytes(path, encoded(img, ext, params, path))


def encoded(img: np.ndarray, ext: str, params: Sequence[int] = (), path: Path | None = None) -> bytes:
    """cv2.imencode's bytes of `img` as `ext` with `params`; `path` names the file in errors."""
    try:
        ok, buf = cv2.imencode(ext, img, list(params))
    except cv2.error:  # what it cannot hold (dtype, channels) it asserts rather than returns
        ok = False
    if not ok:
        raise OutputError(f"{path or ext}: cannot encode a {img.dtype} image of shape {img.shape} as {ext}")
    return bytes(buf)


def ply_vertices(xyz: np.ndarray, normals: np.ndarray | None = None, rgb: np.ndarray | None = None, *,
                 xyz_type: str = "<f4", normal_type: str = "<f4") -> np.ndarray:
    """A structured vertex array: x y z, then nx ny nz with normals, then red green blue (uchar) with rgb."""
    fields = [(n, xyz_type) for n in "xyz"]
    fields += [(f"n{n}", normal_type) for n in "xyz"] if normals is not None else []
    fields += [(n, "u1") for n in ("red", "green", "blue")] if rgb is not None else []
    vertex = np.empty(len(xyz), np.dtype(fields))
    for i, n in enumerate("xyz"):
        vertex[n] = xyz[:, i]
        if normals is not None:
            vertex[f"n{n}"] = normals[:, i]
    if rgb is not None:
        vertex["red"], vertex["green"], vertex["blue"] = np.asarray(rgb).T
    return vertex


def write_ply(path: Path, vertices: np.ndarray, faces: np.ndarray | None = None, *,
              comment: str | None = None) -> None:
    """Binary little-endian PLY of a structured vertex array (f8 double, f4 float, u1 uchar) and
    optional triangles (F×3 vertex indices, written as `list uchar int vertex_indices`)."""
    names = vertices.dtype.names or ()
    props = "".join(f"property {_PLY_TYPES[vertices.dtype[n].str[1:]]} {n}\n" for n in names)
    header = "ply\nformat binary_little_endian 1.0\n" + (f"comment {comment}\n" if comment else "")
    header += f"element vertex {len(vertices)}\n{props}"
    body = vertices.tobytes()
    if faces is not None:
        header += f"element face {len(faces)}\nproperty list uchar int vertex_indices\n"
        table = np.empty(len(faces), np.dtype([("count", "u1"), ("index", "<i4", 3)]))
        table["count"], table["index"] = 3, faces
        body += table.tobytes()
    write_bytes(path, (header + "end_header\n").encode("ascii") + body)


def npy_bytes(array: np.ndarray) -> bytes:
    """One array as a .npy file (`np.lib.format`, what np.save writes; no pickled objects)."""
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.asarray(array), allow_pickle=False)
    return buf.getvalue()


def npy_buffer(shape: tuple[int, ...], dtype: str) -> tuple[bytearray, np.ndarray]:
    """The bytes of a .npy file of an array of `shape` and `dtype` (C order) as `npy_bytes` writes it, with the
    array still to fill, and the array viewing them: the file made in place (a 12.6 MP float32 map is 50 MB
    once, where `npy_bytes` of it holds the array, its stream and the bytes taken from it)."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
                                                  "fortran_order": False, "shape": shape})
    start = header.tell()
    data = bytearray(start + math.prod(shape) * np.dtype(dtype).itemsize)
    data[:start] = header.getvalue()
    return data, np.frombuffer(data, dtype, offset=start).reshape(shape)


def npz_bytes(arrays: Mapping[str, np.ndarray]) -> bytes:
    """An uncompressed .npz: one `<key>.npy` per array (`np.lib.format`, as np.savez writes them) in a ZIP
    built here with fixed fields (version 2.0, stored, DOS date 1980-01-01, no extra fields), so that the
    bytes depend on the arrays alone. np.load reads it like np.savez's; zipfile's own headers differ
    between Python patch releases (3.11.2 writes version 20 where 3.11.7 writes 45)."""
    entries, directory, offset = [], [], 0
    for key, value in arrays.items():
        data, name = npy_bytes(value), f"{key}.npy".encode()
        crc = zlib.crc32(data)
        local = struct.pack("<4s5H3I2H", b"PK\x03\x04", _ZIP_VERSION, 0, 0, 0, _ZIP_DOS_DATE, crc, len(data),
                            len(data), len(name), 0)
        directory.append(struct.pack("<4s6H3I5H2I", b"PK\x01\x02", _ZIP_VERSION, _ZIP_VERSION, 0, 0, 0,
                                     _ZIP_DOS_DATE, crc, len(data), len(data), len(name), 0, 0, 0, 0, 0, offset)
                         + name)
        entries.append(local + name + data)
        offset += len(local) + len(name) + len(data)
    central = b"".join(directory)
    if offset + len(central) >= 1 << 32:
        raise OutputError("arrays too large for a .npz without ZIP64 (4 GiB)")
    end = struct.pack("<4s4H2IH", b"PK\x05\x06", 0, 0, len(directory), len(directory), len(central), offset, 0)
    return b"".join(entries) + central + end
