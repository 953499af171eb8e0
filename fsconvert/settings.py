"""The settings of a conversion, as dataclasses: each field is a command-line flag and a YAML config key
(`fsconvert.options`). `load_config` turns a YAML config into the same `Run`s the command line gives."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, replace
from pathlib import Path
from types import ModuleType
from typing import Any

from .alignment import DEFAULT_UNITS, UNITS
from .check import overlay_policy
from .engines import Engine
from .errors import InputError
from .imageplan import ImageOptions
from .loader import parse_exps, parse_ids
from .measure import Thresholds
from .options import build, from_mapping, option
from .shards import Shard, parse_shard

IMAGES, CHECKS = "images", "check thresholds"
"""Titles of the argument groups that are also the `image:` and `check:` sections of a batch config."""
DATASET_OVERLAYS = 2
"""Default overlay policy of a dataset run: failing views plus this many (a single tuple: all views)."""

CONFIG_EXAMPLE = """\
A config holds the options of `fsconvert to-<format>`, spelt with underscores (see its --help):

  input: /data/facescape/fsmview_trainset   # IMGS_ROOT, a folder holding images/, or one tuple
  mesh_root: /data/facescape/fsmview_models # default: the sibling of IMGS_ROOT holding <id>/<exp>.ply
  ids: 1-20,212                             # or a list; default: all
  exps: [1_neutral, 2_smile]                # or "1,2"; default: all
  out: /data/out                            # OUT/<id>/<exp>/ (several formats: OUT/<format>/<id>/<exp>/)
  format: colmap                            # or a list: [colmap, nerf]
  align: /data/facescape/Rt_scale_dict.json # optional: the TU frame, metric (units: mm, the default, or m)
  jobs: 8                                   # default: the number of cores
  shard: 0/4                                # only shard 0 of 4 (e.g. one task of a job array)
  engine: dask                              # or ray; default local
  address: tcp://scheduler:8786             # the engine's cluster (default: a local one of `jobs`)
  overwrite: false
  image:                                    # the "images" options
    scale: 0.25
    principal_point: center
  options:                                  # the "<format> options", one section per format
    colmap: {points: 20000}
  check:                                    # the "check thresholds" (top-level no_check: true skips it)
    max_camera_error: 0.01
    overlays: failed                        # all, none, failed, or N: failing views plus N others

Relative paths are relative to the config file. Unknown keys are errors.
"""



def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value




@dataclass(frozen=True, kw_only=True)
class Subset:
    """Which tuples of a dataset."""

    ids: set[int] | None = option(None, "subjects of a dataset, e.g. 1-20,212", parse=parse_ids)
    exps: list[str] | None = option(None, "expressions of a dataset, e.g. 1_neutral,4_anger (or 1,4)",
                                    parse=parse_exps)


@dataclass(frozen=True, kw_only=True)
class AlignTo:
    """FaceScape's metric TU frame (every `to-<format>`, a config's top level, and `info`)."""

    align: Path | None = option(None, "FaceScape's Rt_scale_dict.json: cameras, mesh, points and depth in the "
                                      "tuple's TU frame, metric", metavar="RT_SCALE_DICT")
    units: str | None = option(None, f"unit of the aligned frame (default {DEFAULT_UNITS}, TU's; needs --align)",
                               choices={u: u for u in UNITS})

    def __post_init__(self) -> None:
        if self.units is not None and self.align is None:
            raise InputError("--units sets the unit of the aligned frame: give --align RT_SCALE_DICT too")

    @property
    def unit(self) -> str:
        return self.units or DEFAULT_UNITS


@dataclass(frozen=True, kw_only=True)
class Selection(Subset):
    """Which tuples of a dataset, and where their meshes are."""

    mesh_root: Path | None = option(None, "MESH_ROOT holding <id>/<exp>.ply (default: a sibling of IMGS_ROOT)")


@dataclass(frozen=True, kw_only=True)
class Conversion(AlignTo, Selection):
    """The arguments of every `to-<format>` besides image, format and check options (a config's top level)."""

    input: Path = option(help="a tuple folder IMGS_ROOT/<id>/<exp>, or a dataset: IMGS_ROOT or a folder holding "
                              "images/", flags=())
    out: Path = option(help="output folder; for a dataset, each tuple goes to OUT/<id>/<exp>/", flags=("-o", "--out"))
    mesh: Path | None = option(None, "the tuple's mesh (default: MESH_ROOT/<id>/<exp>.ply)")
    include_invalid: bool = option(False, "also export views marked valid=false")
    overwrite: bool = option(False, "replace existing outputs that are not up to date (up-to-date ones are skipped)")
    force: bool = option(False, "convert again even outputs that are up to date")
    jobs: int = option(default_factory=lambda: os.cpu_count() or 1, flags=("-j", "--jobs"), parse=positive_int,
                       help="cores to use (default: all): one tuple's images on N threads; a dataset's tuples on N "
                            "processes, one tuple each")
    threads: int = option(1, "threads per process for OpenCV, rendering (llvmpipe) and Open3D: -j N uses N cores",
                          parse=positive_int)
    no_check: bool = option(False, "skip the projection check after export")
    quiet: bool = option(False, "no progress bars", flags=("-q", "--quiet"))
    shard: Shard | None = option(None, "convert only shard I of N of the selected tuples, I from 0 (e.g. "
                                 "$SLURM_ARRAY_TASK_ID/8); see `fsconvert plan`", parse=parse_shard, metavar="I/N")
    engine: Engine = option("local", "where the worker processes run: this machine, a Dask or a Ray cluster")
    address: str | None = option(None, "the engine's cluster: dask tcp://host:8786; ray auto, host:6379 or "
                                 "ray://host:10001 (default: start a local one of -j workers)")


@dataclass(frozen=True)
class CheckSettings:
    """The "check thresholds" options (a config's `check:` section)."""

    max_camera_error: float = option(Thresholds.camera_px, "max re-projection difference in exported pixels")
    min_silhouette_iou: float = option(Thresholds.silhouette_iou, "min IoU of rendered silhouettes")
    max_depth_error: float = option(Thresholds.depth_rel, "max mean relative z-depth difference of the renders")
    max_pixel_shift: float = option(Thresholds.pixel_shift_px, "max shift in exported pixels of the exported image "
                                    "against the source re-derived through the read-back camera (textured tiles)")
    min_pixel_ncc: float = option(Thresholds.pixel_ncc, "min NCC of the exported image's luma with the re-derived "
                                  "one")
    max_pixel_diff: float = option(Thresholds.pixel_diff, "max mean absolute luma difference (8-bit levels) from the "
                                   "re-derived image")
    max_block_diff: float = option(Thresholds.block_diff, "max mean absolute luma difference (8-bit levels) within "
                                   "any 64-pixel block (local damage)")
    max_alpha_error: float = option(Thresholds.alpha_error, "max fraction of pixels whose alpha contradicts the "
                                    "export's alpha option")
    overlays: str | int | None = option(
        None, "which views get a check/mv_result_<view>.jpg overlay: all, none, the failing ones, or the failing "
        f"ones plus N evenly spaced others (default: all for a tuple, {DATASET_OVERLAYS} for a dataset)",
        parse=overlay_policy, metavar="all|none|failed|N")
    no_overlays: bool = option(False, "the same as --overlays none")

    @property
    def thresholds(self) -> Thresholds:
        return Thresholds(camera_px=self.max_camera_error, silhouette_iou=self.min_silhouette_iou,
                          depth_rel=self.max_depth_error, pixel_shift_px=self.max_pixel_shift,
                          pixel_ncc=self.min_pixel_ncc, pixel_diff=self.max_pixel_diff,
                          block_diff=self.max_block_diff, alpha_error=self.max_alpha_error)

    def overlay_policy(self, single: bool) -> str | int:
        """--no-overlays, --overlays, or the default for one tuple (all) or a dataset run."""
        if self.no_overlays:
            return "none"
        if self.overlays is not None:
            return self.overlays
        return "all" if single else DATASET_OVERLAYS


@dataclass(frozen=True)
class Run:
    """One `to-<format>` command: from the command line, or one format of a batch config."""

    fmt: str
    conversion: Conversion
    options: Any
    """The format's Options."""
    check: CheckSettings



def load_config(path: Path, exporters: dict[str, ModuleType]) -> list[Run]:
    """A YAML config → one `Run` per format, exactly as the command line would give."""
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read: {getattr(exc, 'strerror', None) or exc}", file=path) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1} column {mark.column + 1}" if mark else ""
        raise InputError(f"invalid YAML: {getattr(exc, 'problem', None) or exc}{where}", file=path) from None
    if not isinstance(data, dict):
        raise InputError("expected a mapping of settings (see `fsconvert batch --help`)", file=path)
    data = dict(data)
    for key in ("input", "out", "format"):
        if data.get(key) is None:
            raise InputError("missing key", file=path, key=key)
    names = data.pop("format")
    names = [names] if isinstance(names, str) else names
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise InputError("expected a format name or a list of them", file=path, key="format")
    for n in names:
        if n not in exporters:
            raise InputError(f"unknown format '{n}' (available: {', '.join(exporters)})", file=path, key="format")
    sections = {s: _mapping(data.pop(s, None), path, s) for s in ("image", "check", "options")}
    for n in sections["options"]:
        if n not in names:
            raise InputError(f"options for a format not in 'format' ({', '.join(names)})", file=path,
                             key=f"options.{n}")
    conversion = Conversion(**from_mapping(Conversion, data, file=path, base=path.parent))
    image = from_mapping(ImageOptions, sections["image"], file=path, prefix="image.")
    check = CheckSettings(**from_mapping(CheckSettings, sections["check"], file=path, prefix="check."))
    runs = []
    for name in names:
        cls = exporters[name].Options
        prefix = f"options.{name}"
        values = from_mapping(cls, _mapping(sections["options"].get(name), path, prefix), file=path,
                              prefix=f"{prefix}.")
        try:
            options = build(cls, values, image)
        except InputError as exc:
            if exc.file is not None:
                raise
            raise InputError(exc.reason, file=path, key=exc.key) from None
        out = conversion.out / name if len(names) > 1 else conversion.out
        runs.append(Run(name, replace(conversion, out=out), options, check))
    return runs


def _mapping(value: object, path: Path, key: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InputError("expected a mapping", file=path, key=key)
    return value
