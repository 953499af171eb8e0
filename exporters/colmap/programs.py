"""How programs read the COLMAP workspace: one rule per program, each turning an export into the cameras that
program would use (internal convention).

| program | reads | ignores / rejects |
|---|---|---|
| colmap | sparse/0 .bin, else .txt (all three files of one encoding) | — (every camera model) |
| 3dgs | sparse/0 .bin, else .txt; with `-d depths` the depth priors | cx, cy; models but (SIMPLE_)PINHOLE |
| openmvs | `<-i>/sparse/` .txt, else .bin, file by file | models but PINHOLE |
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fsconvert import conventions as cv
from fsconvert.errors import InputError
from fsconvert.model import Camera
from fsconvert.protocol import ExportedView, Program, Reading

from .depths import read_depth_priors
from .layout import GAUSSIAN_MODELS, IMAGES, MODEL_FILES, SPARSE, internal_camera, load_model


def read(out_dir: str | Path) -> list[ExportedView]:
    """Read `out_dir/sparse/0` with pycolmap; cameras back in the internal convention, in image-id order."""
    rec = load_model(out_dir)
    sparse = Path(out_dir) / SPARSE
    views = []
    for image_id in sorted(rec.images):
        image = rec.images[image_id]
        camera = internal_camera(rec.cameras[image.camera_id], sparse)
        views.append(ExportedView(str(IMAGES / image.name), camera, cv.homogeneous(image.cam_from_world().matrix())))
    return views


def read_3dgs(folder: Path) -> Reading:
    """3D Gaussian Splatting's COLMAP scene loading (graphdeco-inria `scene/dataset_readers.py`,
    `readColmapSceneInfo`): `sparse/0` (bin, else txt), PINHOLE / SIMPLE_PINHOLE only, FovX = 2·atan(W/2fx),
    FovY = 2·atan(H/2fy), the principal point at the image centre whatever the file says, image
    `images/<basename(name)>`, cameras sorted by name. With depth priors in the export, also how `train.py -d
    depths` reads them (`depths.read_depth_priors`): problems where 3DGS misreads or drops one."""
    rec = load_model(folder)
    views = []
    for image in sorted(rec.images.values(), key=lambda im: im.name):
        camera = rec.cameras[image.camera_id]
        if camera.model.name not in GAUSSIAN_MODELS:
            raise InputError(f"camera {camera.camera_id} is {camera.model.name}: 3DGS's reader accepts only "
                             f"{' / '.join(GAUSSIAN_MODELS)} (\"Colmap camera model not handled\")",
                             file=folder / SPARSE)
        p = [float(x) for x in camera.params]
        fx, fy = (p[0], p[0]) if camera.model.name == "SIMPLE_PINHOLE" else (p[0], p[1])
        W, H = int(camera.width), int(camera.height)
        K = cv.K_from_corner_origin(cv.K_matrix(fx, fy, W / 2, H / 2))  # FoV only: a symmetric frustum
        name = (IMAGES / os.path.basename(image.name)).as_posix()
        views.append(ExportedView(name, Camera(W, H, K), cv.homogeneous(image.cam_from_world().matrix())))
    return Reading(views, problems=read_depth_priors(folder, rec))


# ---- OpenMVS ---------------------------------------------------------------------------------------

OPENMVS_MODEL = "PINHOLE"
"""The one model OpenMVS's COLMAP import reads ("only PINHOLE camera model supported for the moment")."""


def read_openmvs(folder: Path) -> Reading:
    """OpenMVS's `InterfaceCOLMAP -i DIR` (cdcseacave/openMVS `apps/InterfaceCOLMAP/InterfaceCOLMAP.cpp`,
    ImportScene, v2.3.0): DIR/`sparse/`{cameras,images,points3D}, each file `.txt` if it opens, else `.bin`
    (1.1 and older: `.txt` only). DIR/sparse is COLMAP's undistorted dense layout: it is this export's
    `sparse/0` (give InterfaceCOLMAP a folder whose `sparse` is a link to it, and `--image-folder images/`).

    Text as its `NextLine` reads it: lines trimmed of spaces, blank and `#` lines skipped, except that an
    image's second line may be blank (`#` lines are skipped there too); reading a file stops at the first
    record that does not parse. Cameras: only PINHOLE, `fx fy cx cy` with cx, cy − 0.5 (COLMAP's pixel centre
    at 0.5): reading stops at the first other model, and an image of an unread camera makes `mapCameras.at`
    throw. Images: `images/<NAME>`, pose R(q), C = −R(q)ᵀt. Points: a point without a track ends the file.
    A binary model is read by the same rules as COLMAP's layout (`load_model`), PINHOLE only."""
    sparse = folder / SPARSE
    if all((sparse / f"{stem}.txt").is_file() for stem in MODEL_FILES):
        return _openmvs_text(sparse)
    if not all((sparse / f"{stem}.txt").is_file() or (sparse / f"{stem}.bin").is_file() for stem in MODEL_FILES):
        raise InputError(f"OpenMVS needs {', '.join(MODEL_FILES)} (.txt or .bin)", file=sparse)
    rec = load_model(folder)
    cameras = {i: rec.cameras[i] for i in sorted(rec.cameras)}
    stop = next((i for i, c in cameras.items() if c.model.name != OPENMVS_MODEL), None)
    read_ids = [i for i in cameras if stop is None or i < stop]
    views, unread = [], {}
    for image_id in sorted(rec.images):
        image = rec.images[image_id]
        name = (IMAGES / image.name).as_posix()
        if image.camera_id not in read_ids:
            unread[name] = f"its camera {image.camera_id} is not read (OpenMVS stops at a non-PINHOLE camera)"
            continue
        views.append(ExportedView(name, internal_camera(rec.cameras[image.camera_id], sparse),
                                  cv.homogeneous(image.cam_from_world().matrix())))
    problems = [] if stop is None else [_not_pinhole(stop, cameras[stop].model.name, len(unread))]
    return Reading(views, unread, problems)


def _not_pinhole(camera_id: int, model: str, lost: int) -> str:
    return (f"camera {camera_id} is {model}: OpenMVS reads PINHOLE cameras only and stops reading cameras there "
            f"(\"no valid cameras (make sure they are in PINHOLE model)\", or mapCameras.at throws for the {lost} "
            "image(s) of the cameras after it)")


@dataclass
class _Lines:
    """A text file as `std::getline` hands it out, and OpenMVS's `NextLine` on top."""

    lines: list[str]
    trailing_newline: bool
    at: int = 0

    @classmethod
    def of(cls, path: Path) -> _Lines:
        try:
            text = path.read_text(encoding="utf-8", errors="surrogateescape")
        except OSError as exc:
            raise InputError(f"cannot read: {exc.strerror or exc}", file=path) from None
        lines = text.split("\n") if text else []
        if text.endswith("\n"):
            lines.pop()  # the getline after the last newline extracts nothing: it fails
        return cls(lines, text.endswith("\n"))

    def next(self, ignore_empty: bool = True) -> list[str] | None:
        """The tokens of the next line NextLine returns, or None where it returns false (end of file)."""
        while True:
            if self.at >= len(self.lines):
                return None
            line = self.lines[self.at].strip(" ")
            self.at += 1
            good = self.at < len(self.lines) or self.trailing_newline
            if not (((ignore_empty and not line) or line.startswith("#")) and good):
                return line.split()


def _openmvs_text(sparse: Path) -> Reading:
    cameras: dict[int, Camera] = {}
    path = sparse / "cameras.txt"
    lines, problems = _Lines.of(path), []
    while (tokens := lines.next()) is not None:
        if len(tokens) >= 2 and tokens[1] != OPENMVS_MODEL:
            problems.append(_not_pinhole(int(tokens[0]) if tokens[0].isdigit() else -1, tokens[1], 0))
            break
        try:
            camera_id, width, height = int(tokens[0]), int(tokens[2]), int(tokens[3])
            fx, fy, cx, cy = (float(t) for t in tokens[4:8])
        except (ValueError, IndexError):
            break
        cameras[camera_id] = Camera(width, height, cv.K_from_corner_origin(cv.K_matrix(fx, fy, cx, cy)))
    if not cameras:
        raise InputError((problems or ["no valid cameras (make sure they are in PINHOLE model)"])[0], file=path)
    views, unread, image_ids = [], {}, set()
    path = sparse / "images.txt"
    lines = _Lines.of(path)
    while (tokens := lines.next()) is not None:
        try:
            image_id, camera_id = int(tokens[0]), int(tokens[8])
            q, t = np.array([float(v) for v in tokens[1:5]]), np.array([float(v) for v in tokens[5:8]])
            name = tokens[9]
        except (ValueError, IndexError):
            break
        if lines.next(ignore_empty=False) is None:  # the keypoint line: without it the image is not added
            break
        image_ids.add(image_id)
        shown = (IMAGES / name).as_posix()
        if camera_id not in cameras:
            unread[shown] = f"its camera {camera_id} is not read (OpenMVS's mapCameras.at throws)"
            continue
        R = cv.quat_wxyz_to_rotation(q)
        views.append(ExportedView(shown, cameras[camera_id], cv.homogeneous(np.column_stack([R, t]))))
    if unread and not problems:
        problems.append(f"{len(unread)} image(s) name cameras OpenMVS has not read: mapCameras.at throws")
    problems += _openmvs_points(sparse / "points3D.txt", image_ids)
    return Reading(views, unread, problems)


def _openmvs_points(path: Path, image_ids: set[int]) -> list[str]:
    """Where OpenMVS would stop in points3D.txt (a record that does not parse, a point without a track, a track
    naming an image it has not read)."""
    lines = _Lines.of(path)
    count = 0
    while (tokens := lines.next()) is not None:
        try:
            int(tokens[0])
            [float(v) for v in tokens[1:4]]
            [int(v) for v in tokens[4:7]]
            float(tokens[7])
            track = [int(v) for v in tokens[8:]]
        except (ValueError, IndexError):
            return [f"points3D.txt: OpenMVS stops reading points at line {lines.at} (does not parse), after {count}"]
        if len(track) < 2:
            return [f"points3D.txt: OpenMVS stops reading points at line {lines.at} (a point without a track), "
                    f"after {count}"]
        unknown = sorted(set(track[0::2]) - image_ids)
        if unknown:
            return [f"points3D.txt line {lines.at}: track names image {unknown[0]}, which OpenMVS has not read "
                    "(mapImages.at throws)"]
        count += 1
    return []


PROGRAMS = (
    Program("colmap", "COLMAP (and pycolmap): sparse/0 as it is, every camera model", lambda f: Reading(read(f))),
    Program("3dgs", "3D Gaussian Splatting: sparse/0, PINHOLE / SIMPLE_PINHOLE only, cx, cy ignored; with "
            "depths/, train.py -d depths' depth priors", read_3dgs),
    Program("openmvs", "OpenMVS InterfaceCOLMAP: the model as <-i>/sparse/ (.txt first), PINHOLE only",
            read_openmvs),
)
