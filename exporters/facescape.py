"""FaceScape format itself: undistorted and/or resized images + params.json in the internal convention.

The minimal export: it exercises the image stage and the check on their own, and gives users a
smaller or undistorted copy of a tuple that every FaceScape tool still reads.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fsconvert.errors import InputError
from fsconvert.imageplan import ImageOptions, frame_record, plan_views
from fsconvert.imagestage import write_images
from fsconvert.loader import PARAMS, load_capture
from fsconvert.model import Capture
from fsconvert.protocol import ExportedView
from fsconvert.writers import write_text

NAME = "facescape"
SUMMARY = "FaceScape layout (N.jpg + params.json), undistorted and/or resized"


@dataclass(frozen=True)
class Options:
    image: ImageOptions = field(default_factory=ImageOptions)

    def __post_init__(self) -> None:
        if self.image.image_format != "jpg":
            raise InputError("the FaceScape layout holds .jpg images only")


def write(capture: Capture, folder: Path, options: Options, *, workers: int, progress: bool) -> dict[str, Any]:
    """Write `{view}.jpg` and `params.json` (K 3×3, Rt 3×4, distortion, size, ...)."""
    plans = plan_views(capture.views, options.image)
    names = [f"{p.view.id}.jpg" for p in plans]
    params: dict[str, object] = {}
    for p in plans:
        v = p.view
        params |= {
            f"{v.id}_K": p.camera.K.tolist(),
            f"{v.id}_Rt": p.world_to_cam[:3].tolist(),
            f"{v.id}_distortion": p.camera.dist.tolist(),
            f"{v.id}_width": p.camera.width,
            f"{v.id}_height": p.camera.height,
            f"{v.id}_matches": v.matches,
            f"{v.id}_valid": v.valid,
            f"{v.id}_sn": v.sn,
            f"{v.id}_ori": v.ori,
        }
    write_images(plans, names, folder, workers=workers, progress=progress)
    write_text(folder / PARAMS, json.dumps(params, indent=1) + "\n")
    return {"images": names, **frame_record(capture.views, options.image)}


def read(out_dir: str | Path) -> list[ExportedView]:
    """Read back with fsconvert's own FaceScape loader (all views, valid or not)."""
    capture = load_capture(out_dir, include_invalid=True, require_mesh=False)
    return [ExportedView(v.image.name, v.camera, v.world_to_cam) for v in capture.views]
