"""Load FaceScape tuples (params.json + N.jpg + mesh) and enumerate datasets, validating every value."""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TypeGuard

import numpy as np
from PIL import Image, UnidentifiedImageError

from . import conventions as cv
from .alignment import DEFAULT_UNITS, align_tuple
from .errors import InputError, Where
from .jsonvalues import matrix, read_json, reason, rigid, show
from .mesh import read_geometry
from .model import Camera, Capture, View

PARAMS = "params.json"
IMAGE_EXT = ".jpg"
REQUIRED_KEYS = ("K", "Rt", "distortion", "width", "height")
OPTIONAL_KEYS = ("valid", "matches", "sn", "ori")
_KEY = re.compile(r"^(?P<view>[^_]+)_(?P<key>.+)$")
MAX_SIDE = 65535
"""Largest image width or height (JPEG's limit)."""
MAX_ID_DIGITS = 9
"""Longest view id (longer ones come from damaged files; Python refuses int() beyond 4300 digits)."""
JPEG_END = b"\xff\xd9"
JPEG_TAIL_BYTES = 65536
"""A complete JPEG has its end marker within this many bytes of the end of the file."""
EXIF_ORIENTATION = 0x0112
_ORIENTATION_WARNED: set[Path] = set()
"""Tuples whose EXIF orientations this process has warned about (once each, however often loaded)."""


def is_tuple_dir(path: Path) -> bool:
    return (Path(path) / PARAMS).is_file()


def load_capture(
    tuple_dir: str | Path,
    *,
    mesh: str | Path | None = None,
    mesh_root: str | Path | None = None,
    include_invalid: bool = False,
    require_mesh: bool = True,
    align: str | Path | None = None,
    units: str = DEFAULT_UNITS,
) -> Capture:
    """Load one tuple `IMGS_ROOT/<id>/<exp>/` with its cameras, images and mesh path.

    Views marked valid=false are left out (listed in `Capture.excluded`) unless `include_invalid`.
    With `require_mesh`, the mesh is read once to prove it readable (faces, finite vertices; without
    trimesh for a binary PLY: `fsconvert.mesh.read_geometry`).
    With `align` (a FaceScape Rt_scale_dict.json), the poses are in the tuple's TU frame, in `units`
    (`fsconvert.mesh.capture_mesh` aligns the mesh alike).
    """
    tuple_dir = Path(tuple_dir)
    params_path = tuple_dir / PARAMS
    if not params_path.is_file():
        raise InputError(f"no {PARAMS} here (expected IMGS_ROOT/<id>/<exp>/{PARAMS})", file=tuple_dir)
    views = [_make_view(tuple_dir, vid, entry, params_path) for vid, entry in parse_params(params_path).items()]
    alignment = None
    if align is not None:
        alignment = align_tuple(align, tuple_dir.parent.name, tuple_dir.name, units)
        S = alignment.similarity
        views = [replace(v, world_to_cam=cv.w2c_in_similar_world(v.world_to_cam, S)) for v in views]
    kept = [v for v in views if v.valid or include_invalid]
    if not kept:
        raise InputError("no valid view (every view has valid=false)", file=params_path)
    kept = [replace(v, exif_orientation=_check_image(v, params_path)) for v in kept]
    _warn_orientation(tuple_dir, kept)
    mesh_path = Path(mesh) if mesh is not None else find_mesh(tuple_dir, mesh_root)
    if require_mesh:
        if mesh_path is None:
            raise InputError(
                "mesh not found: expected MESH_ROOT/<id>/<exp>.ply beside the images root; "
                "give --mesh or --mesh-root",
                file=tuple_dir,
            )
        read_geometry(mesh_path)
    where = layout_path(tuple_dir)
    return Capture(
        subject=where.parent.name,
        expression=where.name,
        root=tuple_dir,
        views=kept,
        mesh=mesh_path,
        excluded=[v for v in views if not v.valid and not include_invalid],
        alignment=alignment,
    )


def parse_params(path: Path) -> dict[int, dict[str, object]]:
    """Group params.json keys by view id (taken from the keys, sorted numerically)."""
    data = read_json(path)
    if not isinstance(data, dict):
        raise InputError("expected a JSON object of '<view>_<key>' entries", file=path)
    views: dict[int, dict[str, object]] = {}
    spelled: dict[int, str] = {}
    for name, value in data.items():
        m = _KEY.fullmatch(name)
        if not m or m["key"] not in REQUIRED_KEYS + OPTIONAL_KEYS:
            raise InputError(
                f"unknown key (expected '<view>_<{'|'.join(REQUIRED_KEYS + OPTIONAL_KEYS)}>')", file=path, key=name
            )
        if not m["view"].isdigit() or not m["view"].isascii():
            raise InputError("view id is not a non-negative integer", file=path, key=name)
        if len(m["view"]) > MAX_ID_DIGITS:
            raise InputError(f"view id longer than {MAX_ID_DIGITS} digits", file=path, key=name)
        vid = int(m["view"])
        if spelled.setdefault(vid, m["view"]) != m["view"]:
            raise InputError(f"duplicate view id {vid} (also spelled '{spelled[vid]}')", file=path, key=name)
        views.setdefault(vid, {})[m["key"]] = value
    if not views:
        raise InputError("no views", file=path)
    for vid, entry in views.items():
        for key in REQUIRED_KEYS:
            if key not in entry:
                raise InputError("missing key", file=path, view=vid, key=f"{spelled[vid]}_{key}")
    return dict(sorted(views.items()))


def _make_view(tuple_dir: Path, vid: int, entry: dict[str, object], path: Path) -> View:
    def where(key: str) -> Where:
        return {"file": path, "view": vid, "key": f"{vid}_{key}"}

    K = matrix(entry["K"], {(3, 3), (4, 4)}, where("K"))
    if K.shape == (4, 4) and not np.array_equal(K[3], [0, 0, 0, 1]) and not np.array_equal(K[:, 3], [0, 0, 0, 1]):
        raise InputError("a 4×4 K must have a last row or column of (0, 0, 0, 1)", **where("K"))
    K = K[:3, :3]
    if not np.array_equal(K[2], [0, 0, 1]) or K[1, 0] != 0:
        raise InputError("K must be [[fx, 0, cx], [0, fy, cy], [0, 0, 1]]", **where("K"))
    if K[0, 0] <= 0 or K[1, 1] <= 0:
        raise InputError(f"focal length must be positive (fx={K[0, 0]:g}, fy={K[1, 1]:g})", **where("K"))
    if abs(K[0, 1]) > 1e-9 * K[0, 0]:
        raise InputError("non-zero skew is not supported", **where("K"))
    K[0, 1] = 0.0

    Rt = rigid(entry["Rt"], where("Rt"))

    dist = matrix(entry["distortion"], {(5,), (4,), (1, 5), (1, 4)}, where("distortion")).ravel()
    dist = np.concatenate([dist, np.zeros(5 - dist.size)])

    width, height = (_image_side(entry[k], where(k)) for k in ("width", "height"))
    if not (0 <= K[0, 2] < width and 0 <= K[1, 2] < height):
        raise InputError(f"principal point ({K[0, 2]:g}, {K[1, 2]:g}) outside the {width}×{height} image", **where("K"))

    valid = entry.get("valid", True)
    if isinstance(valid, int) and not isinstance(valid, bool) and valid in (0, 1):
        valid = bool(valid)
    if not isinstance(valid, bool):
        raise InputError(f"expected true or false, got {show(valid)}", **where("valid"))
    matches = entry.get("matches", 0)
    if not _is_integer(matches):
        raise InputError(f"expected an integer, got {show(matches)}", **where("matches"))
    sn, ori = (entry.get(k, "") for k in ("sn", "ori"))
    for key, value in (("sn", sn), ("ori", ori)):
        if not isinstance(value, (str, int)) or isinstance(value, bool):
            raise InputError(f"expected a string, got {show(value)}", **where(key))

    return View(
        id=vid,
        image=tuple_dir / f"{vid}{IMAGE_EXT}",
        camera=Camera(width=width, height=height, K=K, dist=dist),
        world_to_cam=Rt,
        valid=valid,
        sn=str(sn),
        ori=str(ori),
        matches=int(matches),
    )


def _is_integer(value: object) -> TypeGuard[int | float]:
    """An int, or a float with an integer value (JSON writers differ); never a bool."""
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (isinstance(value, float) and value.is_integer())


def _image_side(value: object, where: Where) -> int:
    if not _is_integer(value) or value <= 0:
        raise InputError(f"expected a positive integer, got {show(value)}", **where)
    if value > MAX_SIDE:
        raise InputError(f"{show(value)} pixels is beyond JPEG's limit of {MAX_SIDE}", **where)
    return int(value)


def _check_image(view: View, params_path: Path) -> int:
    """Check that the view's image is a readable, complete image of the size params.json gives (the stored
    pixel grid: EXIF orientation is ignored, as PIL, simplejpeg and most training loaders ignore it); return
    its EXIF Orientation (1 without one)."""
    if not view.image.is_file():
        raise InputError("image missing", file=view.image, view=view.id)
    try:
        with Image.open(view.image) as im:
            size = im.size
            if im.format == "JPEG" and not _jpeg_complete(view.image, im.tile[0][2] if im.tile else 0):
                raise InputError("truncated JPEG (no end marker after the image data)", file=view.image, view=view.id)
            orientation = exif_orientation(im)
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise InputError(f"not a readable image: {reason(exc)}", file=view.image, view=view.id) from None
    if size != view.camera.size:
        raise InputError(
            f"image is {size[0]}×{size[1]} but {params_path} says {view.camera.width}×{view.camera.height}",
            file=view.image,
            view=view.id,
        )
    return orientation


def exif_orientation(im: Image.Image) -> int:
    """The EXIF Orientation of an opened image as readers act on it: 2–8 turn or mirror the pixels; none, 1, or
    any other value (a damaged or non-integer tag) leaves them as stored: 1. Pillow's `ImageOps.exif_transpose`
    looks the value up in a table of 2–8 (PIL/ImageOps.py); OpenCV's imread switches on 2–8 and keeps the pixels
    otherwise (imgcodecs, loadsave.cpp `ApplyExifOrientation`); tests/test_pixel_check.py reads tags 0 and 9
    through both."""
    orientation = im.getexif().get(EXIF_ORIENTATION, 1)
    return orientation if isinstance(orientation, int) and 1 <= orientation <= 8 else 1


def _warn_orientation(tuple_dir: Path, views: list[View]) -> None:
    """One line on stderr per tuple whose JPEGs carry an EXIF Orientation other than 1 (once per process)."""
    turned = [v for v in views if v.exif_orientation != 1]
    if not turned:
        return
    where = layout_path(tuple_dir)
    if where in _ORIENTATION_WARNED:
        return
    _ORIENTATION_WARNED.add(where)
    tags = sorted({v.exif_orientation for v in turned})
    print(f"fsconvert: warning: {where.parent.name}/{where.name}: views {', '.join(str(v.id) for v in turned)} "
          f"carry EXIF Orientation {', '.join(map(str, tags))}: ignored (params.json gives the stored pixel grid, "
          "as PIL and most loaders read it; OpenCV's imread would turn them); exported re-encoded without it",
          file=sys.stderr)


def _jpeg_complete(path: Path, data_start: int) -> bool:
    """An end-of-image marker follows the first scan's data, near the end of the file.

    Entropy-coded data never contains FF D9, so a file cut anywhere in its image data fails this;
    only the tail is read (decoders accept a cut file silently, filling it with grey).
    """
    with open(path, "rb") as f:
        size = f.seek(0, 2)
        f.seek(max(data_start, size - JPEG_TAIL_BYTES))
        return JPEG_END in f.read()


# ---- dataset layout -------------------------------------------------------------------------------


def layout_path(path: str | Path) -> Path:
    """`path` made absolute as the dataset lays it out: symbolic links are kept, not followed.

    Ids, expressions and recorded paths come from this, never from where a link points (tuple folders
    linked in from shared storage keep their `<id>/<exp>`). Relative paths start at the shell's
    working folder ($PWD, which keeps the links it was reached through) when that is the current one.
    """
    path = Path(path)
    if not path.is_absolute():
        cwd = os.environ.get("PWD", "")
        try:
            logical = os.path.isabs(cwd) and os.path.samefile(cwd, ".")
        except OSError:
            logical = False
        path = Path(cwd if logical else os.getcwd()) / path
    return Path(os.path.normpath(path))


def find_mesh(tuple_dir: Path, mesh_root: str | Path | None = None) -> Path | None:
    """`MESH_ROOT/<id>/<exp>.ply` for `IMGS_ROOT/<id>/<exp>/`; MESH_ROOT given, or a sibling of IMGS_ROOT.

    The ids come from the folders' names in the dataset (`layout_path`), not from link targets.
    """
    tuple_dir = layout_path(tuple_dir)
    rel = Path(tuple_dir.parent.name) / f"{tuple_dir.name}.ply"
    if mesh_root is not None:
        return Path(mesh_root) / rel
    imgs_root = tuple_dir.parent.parent
    found = sorted(p / rel for p in imgs_root.parent.iterdir() if p != imgs_root and (p / rel).is_file())
    return found[0] if len(found) == 1 else None


@dataclass(frozen=True)
class TupleRef:
    """A tuple of a dataset: `IMGS_ROOT/<subject>/<expression>/`."""

    subject: str
    expression: str
    path: Path

    @property
    def name(self) -> str:
        return f"{self.subject}/{self.expression}"


def images_root(path: str | Path) -> Path:
    """The IMGS_ROOT of a dataset given either it or a folder holding it as `images/`."""
    path = Path(path)
    if not path.is_dir():
        raise InputError("no such folder", file=path)
    if (path / "images").is_dir() and not any(path.glob(f"*/*/{PARAMS}")):
        return path / "images"
    return path


def iter_dataset(
    root: str | Path, *, ids: set[int] | None = None, exps: list[str] | None = None
) -> Iterator[TupleRef]:
    """Tuples under IMGS_ROOT, sorted by numeric subject id then expression, filtered by selection."""
    root = images_root(root)
    found = sorted(
        (p.parent for p in root.glob(f"*/*/{PARAMS}")),
        key=lambda p: (_natural(p.parent.name), _natural(p.name)),
    )
    for path in found:
        subject, expression = path.parent.name, path.name
        if ids is not None and not (subject.isdigit() and int(subject) in ids):
            continue
        if exps is not None and not any(_exp_matches(expression, e) for e in exps):
            continue
        yield TupleRef(subject, expression, path)


def parse_ids(spec: str) -> set[int]:
    """'1-20,212' → {1, …, 20, 212}."""
    ids: set[int] = set()
    for part in filter(None, (p.strip() for p in spec.split(","))):
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not m:
            raise InputError(f"bad id selection '{part}' in '{spec}' (use e.g. 1-20,212)")
        lo, hi = int(m[1]), int(m[2] or m[1])
        if hi < lo:
            raise InputError(f"bad id range '{part}' (end before start)")
        ids.update(range(lo, hi + 1))
    if not ids:
        raise InputError(f"empty id selection '{spec}'")
    return ids


def parse_exps(spec: str) -> list[str]:
    """'1_neutral,4_anger' (or '1,4': the number before '_') → a list of expression selectors."""
    exps = [p.strip() for p in spec.split(",") if p.strip()]
    if not exps:
        raise InputError(f"empty expression selection '{spec}'")
    return exps


def _exp_matches(expression: str, selector: str) -> bool:
    return expression == selector or expression.split("_", 1)[0] == selector


def _natural(name: str) -> tuple[int | str, ...]:
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name))
