"""How the MVSNet family reads `cams/*_cam.txt`, `pair.txt` and `images/`: one rule per program (see the
package docstring for the depth-line forms and what each program does to the images)."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from fsconvert import conventions as cv
from fsconvert.errors import InputError
from fsconvert.model import Camera
from fsconvert.protocol import ExportedView, Program, Reading

IMAGES, CAMS, DEPTHS, PAIR = "images", "cams", "depths", "pair.txt"
MVSNET_MAX_D = 256
"""MVSNet test.py's `max_d`: DEPTH_NUM when the depth line has two tokens (`load_cam`)."""
CASMVSNET_NDEPTHS, CASMVSNET_INTERVAL_SCALE = 192, 1.06
"""CasMVSNet test.py's `--numdepth` default, and the `--interval_scale` its README runs with (general_eval.py's
default; test.py requires the flag)."""
CASMVSNET_MAX_W, CASMVSNET_MAX_H, CASMVSNET_BASE = 1152, 864, 32
"""CasMVSNet test.py's `--max_w`, `--max_h` defaults and `scale_mvs_input`'s base."""


def casmvsnet_size(width: int, height: int) -> tuple[float, float]:
    """The (width, height) CasMVSNet resizes an image to (`scale_mvs_input`, its float arithmetic: a
    multiple of 32, scaled down first to fit --max_w × --max_h)."""
    w, h, base = width, height, CASMVSNET_BASE
    if h > CASMVSNET_MAX_H or w > CASMVSNET_MAX_W:
        scale = 1.0 * CASMVSNET_MAX_H / h
        if scale * w > CASMVSNET_MAX_W:
            scale = 1.0 * CASMVSNET_MAX_W / w
        return scale * w // base * base, scale * h // base * base
    return 1.0 * w // base * base, 1.0 * h // base * base


def casmvsnet_offset(width: int, height: int) -> float:
    """How far (exported pixels) CasMVSNet's camera is off in an image of this size: it scales K by s
    without the half-pixel term (c·s for (c + 0.5)·s − 0.5), a shift of 0.5/s − 0.5 on each axis."""
    new_w, new_h = casmvsnet_size(width, height)
    if not (new_w and new_h):
        return float("inf")
    return float(np.hypot(0.5 * width / new_w - 0.5, 0.5 * height / new_h - 0.5))


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


# ---- the programs' reading rules ----------------------------------------------------------------------


def _mvsnet(folder: Path) -> Reading:
    """MVSNet / R-MVSNet (YoYo000/MVSNet `mvsnet/preprocess.py` load_cam, `mvsnet/test.py`): whitespace tokens
    into float64, 1…16 E, 18…26 K; 29 tokens: min, interval, DEPTH_NUM = max_d; 30: min, interval, num;
    31: min, interval, num, max (any other count: all four 0). The hypotheses run from min to max (token 3),
    else to min + (num − 1)·interval (test.py's depth_end), with interval_scale 1 (test.py's flag defaults to
    0.8: pass --interval_scale 1). The images at their size (test.py's --max_w, --max_h set to it)."""
    return _reading(folder, _mvsnet_view, lambda views: [], skip_sourceless=False)


def _mvsnet_view(folder: Path, path: Path, name: str) -> ExportedView:
    words = _text(path).split()
    if len(words) < 27:
        raise InputError(f"load_cam stops (IndexError): {len(words)} tokens, the intrinsic ends at token 26",
                         file=path)
    try:
        E = np.array(words[1:17], dtype=np.float64).reshape(4, 4)
        K = np.array(words[18:27], dtype=np.float64).reshape(3, 3)
        depth = [float(w) for w in words[27:31]] if len(words) in (29, 30, 31) else [0.0] * 4
    except ValueError as exc:
        raise InputError(f"load_cam stops: {exc}", file=path) from None
    lo, interval = depth[0], depth[1]
    if len(depth) == 4:
        hi = depth[3]
    else:
        num = depth[2] if len(depth) == 3 else MVSNET_MAX_D
        hi = lo + interval * (num - 1)
    return ExportedView(name, Camera(*_image_size(folder / name), K), E, (lo, hi))


def _casmvsnet(folder: Path) -> Reading:
    """CasMVSNet (alibaba/cascade-stereo `CasMVSNet/datasets/general_eval.py`; TransMVSNet's general_eval is the
    same): read_cam_file by line index in float32 (lines 1-4 E, 7-9 K, line 11 min, interval [, num]: with
    ≥ 3 tokens max = min + int(num)·interval and interval = (max − min)/ndepths), interval × interval_scale,
    `np.arange(min, interval·(ndepths − 0.5) + min, interval)` hypotheses; `scale_mvs_input` resizes the image
    to (w', h') with K rows × w'/w, h'/h (c·s: no half-pixel term), the camera here mapped back to the exported
    image by the exact rule. Within a batch it resizes each source view to the reference view's size."""
    return _reading(folder, _casmvsnet_view, _casmvsnet_sizes, skip_sourceless=True)


def _casmvsnet_view(folder: Path, path: Path, name: str) -> ExportedView:
    E, K32, depth = _cam_lines(path, "CasMVSNet's read_cam_file")
    W, H = _image_size(folder / name)
    new_w, new_h = casmvsnet_size(W, H)
    if not (new_w and new_h):
        raise InputError(f"{name} is {W}×{H}: CasMVSNet's scale_mvs_input resizes it to {new_w:g}×{new_h:g} "
                         "(cv2.resize stops)", file=path)
    K32[:2, :] /= 4.0  # read_cam_file; the stage-3 projection multiplies by 4 again
    K32[0, :] *= new_w / W  # scale_mvs_input, in place in float32
    K32[1, :] *= new_h / H
    K32[:2, :] = K32[:2, :] * 4
    K = cv.resize_K(K32.astype(np.float64), W / new_w, H / new_h)
    try:
        lo, interval = float(depth[0]), float(depth[1])
        if len(depth) >= 3:
            hi = lo + int(float(depth[2])) * interval
            interval = (hi - lo) / CASMVSNET_NDEPTHS
        interval *= CASMVSNET_INTERVAL_SCALE
        values = np.arange(lo, interval * (CASMVSNET_NDEPTHS - 0.5) + lo, interval, dtype=np.float32)
    except (IndexError, ValueError, ZeroDivisionError, OverflowError) as exc:
        raise InputError(f"CasMVSNet's read_cam_file stops on line 11 {' '.join(depth)!r}: "
                         f"{type(exc).__name__}: {exc}", file=path) from None
    if not values.size:
        raise InputError(f"CasMVSNet samples no depth from line 11 {' '.join(depth)!r}", file=path)
    return ExportedView(name, Camera(W, H, K), E, (float(values[0]), float(values[-1])))


def _casmvsnet_sizes(views: list[ExportedView]) -> list[str]:
    """general_eval.py `__getitem__`: a source view whose resized image differs from the reference view's is
    resized again to it (cv2.resize, K rows scaled by the ratio): misread."""
    resized = [casmvsnet_size(*v.camera.size) for v in views]
    other = next((k for k, size in enumerate(resized) if size != resized[0]), None)
    if other is None:
        return []
    a, b = views[other], views[0]
    return [f"resizes each source view to its reference view's size (general_eval.py __getitem__, K scaled by the "
            f"ratio without the half-pixel term): {a.name} goes in at {_size(resized[other])}, {b.name} at "
            f"{_size(resized[0])}"]


def _patchmatchnet(folder: Path) -> Reading:
    """PatchmatchNet (FangjinhuaWang/PatchmatchNet `datasets/data_io.py` read_cam_file, `datasets/mvs.py`):
    by line index in float32, line 11 `depth_params` = np.fromstring(float32): depth_min = [0], depth_max =
    [1], whatever else the line holds; images as they are (`--image_max_dim -1`)."""
    return _reading(folder, _patchmatchnet_view, lambda views: [], skip_sourceless=True)


def _patchmatchnet_view(folder: Path, path: Path, name: str) -> ExportedView:
    E, K32, depth = _cam_lines(path, "PatchmatchNet's read_cam_file")
    params = _fromstring(depth)
    if len(params) < 2:
        raise InputError(f"PatchmatchNet stops (IndexError): line 11 holds {len(params)} number(s), it takes "
                         "depth_params[0] and [1]", file=path)
    K = K32.astype(np.float64)
    return ExportedView(name, Camera(*_image_size(folder / name), K), E, (float(params[0]), float(params[1])))


PROGRAMS = (
    Program("mvsnet", "MVSNet / R-MVSNet load_cam: whitespace tokens, 'MIN INTERVAL [NUM [MAX]]', images at their "
            "size (--for mvsnet)", _mvsnet),
    Program("casmvsnet", "CasMVSNet / TransMVSNet general_eval: line-indexed float32, 'MIN INTERVAL [NUM]' × 1.06 "
            "over 192 hypotheses, images resized to multiples of 32 with K scaled without the half-pixel term "
            "(--for mvsnet)", _casmvsnet),
    Program("patchmatchnet", "PatchmatchNet: line-indexed float32, line 11 read as 'MIN MAX', images as they are "
            "(--for patchmatchnet)", _patchmatchnet),
)


def _reading(folder: Path, view: Callable[[Path, Path, str], ExportedView],
             problems: Callable[[list[ExportedView]], list[str]], *, skip_sourceless: bool) -> Reading:
    """Every `cams/*_cam.txt` read by `view`, except the views pair.txt leaves out (the programs run one
    reference view per pair.txt entry; CasMVSNet and PatchmatchNet skip those with no source view)."""
    cams = sorted((Path(folder) / CAMS).glob("*_cam.txt"))
    if not cams:
        raise InputError(f"no {CAMS}/*_cam.txt", file=folder)
    sources = _pair_sources(Path(folder) / PAIR)
    views, unread = [], {}
    for path in cams:
        stem = path.name[:-len("_cam.txt")]
        name = f"{IMAGES}/{stem}.jpg"
        count = sources.get(int(stem)) if stem.isdigit() else None
        if count is None:
            unread[name] = f"{PAIR} does not list view {stem} as a reference view"
        elif count == 0 and skip_sourceless:
            unread[name] = f"{PAIR} lists no source view for it (the program skips it)"
        else:
            views.append(view(Path(folder), path, name))
    return Reading(views, unread, problems(views))


def _pair_sources(path: Path) -> dict[int, int]:
    """Reference view id → the number of its source views, read line by line as the programs do."""
    lines = _lines(path)
    try:
        n = int(lines[0])
        return {int(lines[1 + 2 * k]): len(lines[2 + 2 * k].split()[1::2]) for k in range(n)}
    except (IndexError, ValueError) as exc:
        raise InputError(f"the programs stop reading it: {type(exc).__name__}: {exc}", file=path) from None


def _cam_lines(path: Path, who: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(E float32 → float64, K float32, the tokens of line 11) of a cam.txt read as the line-indexed
    read_cam_file do: `np.fromstring(' '.join(lines[1:5]), np.float32, sep=' ').reshape(4, 4)`, lines 7-9."""
    lines = [line.rstrip() for line in _lines(path)]
    if len(lines) < 12:
        raise InputError(f"{who} stops (IndexError): {len(lines)} lines, the depth line is line 11", file=path)
    E, K = _fromstring(" ".join(lines[1:5]).split()), _fromstring(" ".join(lines[7:10]).split())
    if E.size != 16 or K.size != 9:
        raise InputError(f"{who} stops (reshape): lines 1-4 hold {E.size} numbers (4×4 extrinsic) and lines 7-9 "
                         f"{K.size} (3×3 intrinsic)", file=path)
    return E.reshape(4, 4).astype(np.float64), K.reshape(3, 3), lines[11].split()


def _fromstring(words: list[str]) -> np.ndarray:
    """np.fromstring(..., np.float32, sep=' '): the numbers up to the first token that is not one."""
    values: list[float] = []
    for word in words:
        try:
            values.append(float(word))
        except ValueError:
            break
    return np.array(values, dtype=np.float64).astype(np.float32)


def _lines(path: Path) -> list[str]:
    """`open(path).readlines()`: universal newlines, split at '\\n' only."""
    return io.StringIO(_text(path), newline=None).readlines()


def _text(path: Path) -> str:
    try:
        return path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read: {getattr(exc, 'strerror', None) or exc}", file=path) from None


def _size(size: tuple[float, float]) -> str:
    return f"{size[0]:g}×{size[1]:g}"
