"""The COLMAP workspace's names and constants, and the model-file plumbing the writer and the programs'
reading rules share: pycolmap's version gate, loading `sparse/0`, the binary records' walk, COLMAP cameras
as internal ones."""

from __future__ import annotations

import re
import signal
import struct
import threading
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np

from fsconvert import conventions as cv
from fsconvert.errors import InputError
from fsconvert.model import Camera
from fsconvert.threads import STOP_SIGNALS

if TYPE_CHECKING:  # pycolmap's own stubs; at run time the module comes from require_pycolmap
    from pycolmap import Camera as ColmapCamera
    from pycolmap import Reconstruction

NAME = "colmap"

IMAGES = Path("images")
SPARSE = Path("sparse") / "0"
PLY = "points3D.ply"
MASKS = Path("masks")
DEPTHS = Path("depths")
"""3DGS's depth priors, `train.py -d depths`: `depths/<image name without extension>.png`."""
DEPTH_PARAMS = "depth_params.json"
"""In `sparse/0`: {image name without extension: {"scale", "offset"}}."""
MODEL_FILES = ("cameras", "images", "points3D")
"""The legacy three files every COLMAP reader since 3.x (and OpenMVS, 3DGS, read_write_model copies) loads."""
MODEL_FORMATS = {"bin": ("bin",), "txt": ("txt",), "both": ("bin", "txt")}
"""`--model-format` → the encodings written (COLMAP, pycolmap and 3DGS read .bin where both are present;
OpenMVS's InterfaceCOLMAP reads .txt first)."""
FOR_3DGS = "`fsconvert to-colmap --for 3dgs`"
GAUSSIAN_MODELS = ("SIMPLE_PINHOLE", "PINHOLE")
"""The only COLMAP models 3DGS's reader accepts ("only undistorted datasets ... supported")."""
MIN_PYCOLMAP_READ = (3, 12)
"""`Image.cam_from_world()` became a method (poses on frames) in 3.12."""
WRITE_API = ("add_camera_with_trivial_rig", "add_image_with_trivial_frame")
"""Reconstruction methods added in pycolmap 4.0 that `write` builds the model with."""
SAMPLE_SEED = 0
MAX_DEPTH_TOLERANCE = 0.05
"""Looser depth tests let hidden surfaces in (and could out-vote the visible ones on normal orientation)."""

INVDEPTH_STEPS = 2**16
"""3DGS divides the 16-bit depth PNG by 2**16 (graphdeco-inria/gaussian-splatting `utils/camera_utils.py`,
`loadCam`: `cv2.imread(depth_path, -1).astype(np.float32) / float(2**16)`)."""
INVDEPTH_MAX = INVDEPTH_STEPS - 1
RELIABLE_SCALE = (0.2, 5.0)
"""3DGS drops a view's depth prior (depth_mask zeroed, depth_reliable False) when its scale is outside
[0.2, 5] × med_scale, med_scale the median of the positive scales (`scene/dataset_readers.py`
readColmapSceneInfo; `scene/cameras.py` Camera.__init__)."""


def depth_key(name: str) -> str:
    """The depth_params.json key and depth PNG stem 3DGS derives from a COLMAP image name: the name without
    its last extension (`scene/dataset_readers.py` readColmapCameras: `n_remove = len(name.split('.')[-1]) + 1`,
    `name[:-n_remove]`; a name without a dot loses all of itself)."""
    return name[: -(len(name.split(".")[-1]) + 1)]


def require_pycolmap(*, write: bool, module: ModuleType | None = None) -> ModuleType:
    """The pycolmap module (or `module`, for tests), or a one-line InputError naming found vs needed."""
    if module is None:
        try:
            module = _import_pycolmap()
        except ImportError:
            raise InputError("pycolmap is not installed (pip install 'pycolmap>=4.0')") from None
    found = getattr(module, "__version__", "unknown")
    numbers = tuple(int(n) for n in re.findall(r"\d+", found)[:2])
    missing = [f for f in WRITE_API if not hasattr(module.Reconstruction, f)] if write else []
    if numbers < MIN_PYCOLMAP_READ or missing:
        need = "4.0 (Reconstruction." + " / ".join(WRITE_API) + ")" if write else "3.12"
        role = "exporter" if write else "reader"
        raise InputError(f"pycolmap {found} found; the COLMAP {role} needs pycolmap ≥ {need}")
    return module


def _import_pycolmap() -> ModuleType:
    """pycolmap, with this process's SIGINT and SIGTERM handlers kept: its import installs glog's failure handler,
    which answers SIGTERM with a stack dump and death (the command line's stops the run and removes its staging)."""
    handlers = {s: signal.getsignal(s) for s in STOP_SIGNALS}
    import pycolmap

    if threading.current_thread() is threading.main_thread():  # the only thread that may set handlers
        for s, handler in handlers.items():
            if handler is not None:
                signal.signal(s, handler)
    return pycolmap


def load_model(out_dir: str | Path) -> Reconstruction:
    """The pycolmap Reconstruction of `out_dir/sparse/0` (bin, else txt); one-line InputErrors."""
    pycolmap = require_pycolmap(write=False)
    sparse = Path(out_dir) / SPARSE
    if not sparse.is_dir():
        raise InputError(f"no COLMAP model folder {SPARSE}", file=out_dir)
    _check_binary_layout(pycolmap, sparse)
    try:
        rec: Reconstruction = pycolmap.Reconstruction(str(sparse))
        return rec
    except Exception as exc:  # pycolmap raises ValueError/RuntimeError with COLMAP's check message
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[-1]
        raise InputError(f"not a readable COLMAP model: {reason}", file=sparse) from None


def _check_binary_layout(pycolmap: ModuleType, sparse: Path) -> None:
    """Walk the records of a binary model (formats.md §1.3): they must end exactly at each file's end.

    COLMAP trusts the counts it reads, so a truncated or corrupt file costs minutes and gigabytes
    before a bad_alloc; here it is a one-line error.
    """
    models = [m for m in pycolmap.CameraModelId.__members__.values() if m.name != "INVALID"]
    n_params = {int(m): len(pycolmap.Camera.create_from_model_id(1, m, 1.0, 1, 1).params) for m in models}

    def camera(data: bytes, off: int) -> int:
        return off + 24 + 8 * n_params[struct.unpack_from("<i", data, off + 4)[0]]

    def image(data: bytes, off: int) -> int:
        off = data.index(b"\0", off + 64) + 1
        return off + 8 + 24 * int(struct.unpack_from("<Q", data, off)[0])

    def point(data: bytes, off: int) -> int:
        return off + 51 + 8 * int(struct.unpack_from("<Q", data, off + 43)[0])

    walks = (("cameras.bin", camera), ("images.bin", image), ("points3D.bin", point))
    if not all((sparse / name).is_file() for name, _ in walks):
        return  # COLMAP reads the text model then
    for name, record in walks:
        path = sparse / name
        data = path.read_bytes()
        try:
            (count,), off = struct.unpack_from("<Q", data), 8
            for _ in range(count):
                if off >= len(data):  # records missing
                    off = -1
                    break
                off = record(data, off)
        except (struct.error, ValueError, KeyError):
            off = -1
        if off != len(data):
            raise InputError("truncated or corrupt: its records do not end at the end of the file", file=path)


def internal_camera(camera: ColmapCamera, where: Path | None = None) -> Camera:
    """A pycolmap camera as an internal Camera; InputError for models k1 k2 p1 p2 k3 cannot hold."""
    model, p = camera.model.name, [float(x) for x in camera.params]
    if model in ("SIMPLE_PINHOLE", "SIMPLE_RADIAL", "RADIAL"):  # f cx cy [k1 [k2]]
        (fx, cx, cy), fy, coeffs = p[:3], p[0], p[3:]
    elif model in ("PINHOLE", "OPENCV", "FULL_OPENCV"):  # fx fy cx cy [k1 k2 p1 p2 [k3 k4 k5 k6]]
        (fx, fy, cx, cy), coeffs = p[:4], p[4:9]
        if any(p[9:]):
            raise InputError(f"camera {camera.camera_id}: FULL_OPENCV k4..k6 = {p[9:]} cannot be represented "
                             "(internal model is k1 k2 p1 p2 k3)", file=where)
    else:
        raise InputError(f"camera {camera.camera_id}: COLMAP model {model} cannot be represented by "
                         "k1 k2 p1 p2 k3", file=where)
    K = cv.K_from_corner_origin(cv.K_matrix(fx, fy, cx, cy))
    return Camera(int(camera.width), int(camera.height), K, np.asarray((coeffs + [0.0] * 5)[:5]))
