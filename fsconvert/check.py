"""The check: an export read back by the rules of the program it is for, every view measured against the source.

For every view of the manifest, `fsconvert.measure` compares the read-back camera with the source
camera carried through the image plan, renders the mesh through both, and compares the exported image with
the source image re-derived through the read-back camera (shift, NCC, differences, colour order, alpha).
Which views get an overlay is the overlay policy (every failing view does, unless overlays are off). The numbers go to
`check/check.json`, a page for people to `check/index.html` (`fsconvert.checkpage`) with the camera rig in
`check/rig.png` (`fsconvert.rig`). The renders draw the mesh's render proxy (a dense scan's ~100 000-face
clustered copy: both cameras see the same geometry, so camera errors show alike). The program's rules come
from the format's module through the registry (`exporters.program`). Views missing from the read-back,
extra ones and unreadable exports are failures, never skipped.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from exporters import default_program, get, program

from .checkpage import write_check_page
from .errors import FsconvertError, OutputError
from .imageplan import plan_views
from .imagestage import PREVIEW_MAX_SIDE
from .loader import load_capture
from .measure import Thresholds, ViewCheck, measure_view
from .mesh import capture_drawn, capture_geometry, subsample
from .model import Capture
from .options import from_dict
from .protocol import CHECK_DIR, CHECK_JSON, RIG, ExportedView, read_manifest
from .render import Renderer
from .rig import Frustum, plot_rig
from .viewpixels import Written
from .writers import write_json

Overlays = bool | str | int
"""The overlay policy: "all" (True), "none" (False), "failed" (failing views only) or N (failing views
plus N views evenly spaced in view order); as given on the command line, `--overlays all|none|failed|N`."""


def overlay_policy(value: Overlays) -> str | int:
    """The canonical policy: "all", "none", or the number of views sampled besides failing ones ("failed": 0).
    A value that is none of these raises argparse.ArgumentTypeError (what the command line reports)."""
    if value is True or value == "all":
        return "all"
    if value is False or value == "none":
        return "none"
    if value == "failed":
        return 0
    if isinstance(value, int) and value >= 0:
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    raise argparse.ArgumentTypeError(f"expected all, none, failed or a number of views, got {value!r}")


def policy_key(overlays: Overlays) -> bool | str:
    """The overlay policy as records hold it: true (all) and false (none), as before other policies
    existed, else "failed" or "failed+N" (never a number: JSON's 1 would compare equal to true)."""
    policy = overlay_policy(overlays)
    return {"all": True, "none": False}.get(str(policy), "failed" if policy == 0 else f"failed+{policy}")


def overlay_sample(policy: str | int, n_views: int) -> set[int]:
    """Positions (in view order) of the views that get an overlay whether they pass or fail."""
    if policy == "all":
        return set(range(n_views))
    if policy == "none" or policy == 0 or n_views == 0:
        return set()
    assert isinstance(policy, int), policy  # overlay_policy's strings are "all" and "none"
    return set(np.linspace(0, n_views - 1, min(policy, n_views)).round().astype(int).tolist())


@dataclass
class CheckReport:
    """The whole check: per-view numbers, export-level problems, and the thresholds they were held to."""

    export_dir: Path
    format: str
    source: str
    thresholds: Thresholds
    views: list[ViewCheck]
    problems: list[str]
    """Export-level failures: read-back errors, extra or unknown views."""
    reader: str = ""
    """The program whose loading rules read the export back (one of the format's `PROGRAMS`)."""
    warnings: list[str] = field(default_factory=list)
    """The export's warnings (its manifest's): what a target program will do to it."""
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return not self.problems and bool(self.views) and all(v.passed for v in self.views)

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "format": self.format,
            "reader": self.reader,
            "source": self.source,
            "warnings": self.warnings,
            "thresholds": asdict(self.thresholds),
            "problems": self.problems,
            "views": [{**asdict(v), "passed": v.passed} for v in self.views],
        }  # no run time: a rerun on the same inputs writes the same bytes


def check_export(
    export_dir: str | Path,
    thresholds: Thresholds = Thresholds(),
    *,
    overlays: Overlays = "all",
    max_points: int = 1000,
    render_max_side: int = PREVIEW_MAX_SIDE,
    exporter: ModuleType | None = None,
    reader: str | None = None,
    previews: Mapping[Path, np.ndarray] | None = None,
    measured: Mapping[str, Written] | None = None,
    capture: Capture | None = None,
) -> CheckReport:
    """Check every view of the export at `export_dir`; write `check/check.json`, `check/index.html`,
    `check/rig.png` and the overlays the policy `overlays` asks for (`Overlays`).

    The export is read back by the rules of the program `reader` (`fsconvert check --reader`), by default
    the program its format is meant for (`exporters.default_program`); a program that does not read the
    format is a failure of the check.
    `max_points` mesh vertices (evenly spaced) are compared per view (a camera read differently moves pixels
    along a smooth field: with 1000, the largest move is within 6 % of all 10 242 vertices' of the sample, for
    random focal, principal point, distortion and rotation errors); renders and overlays are made at
    1/r of the exported size, r the smallest of 1, 2, 4, 8 giving a long side ≤ `render_max_side` (the
    sizes a JPEG decodes to directly: the overlay needs no resampling). `exporter`: the format module
    (default: the installed one named by the manifest). `previews`: exported images at that size by path
    (`imagestage.keep_previews`), drawn on instead of decoding the files. `measured`: the pixel measurements
    the image stage made as it wrote the export (`viewpixels.measured_as_written`), used where the files are
    unchanged. `capture`: the source tuple as the export loaded it (default: loaded again from the manifest's
    source).
    """
    start = time.perf_counter()
    policy = overlay_policy(overlays)
    export_dir = Path(export_dir)
    manifest = read_manifest(export_dir)
    module = get(manifest["format"]) if exporter is None else exporter
    options = from_dict(module.Options, manifest["options"])
    src = manifest["source"]
    aligned = manifest.get("alignment")
    if capture is None:
        capture = load_capture(src["tuple"], mesh=src["mesh"], include_invalid=src["include_invalid"],
                               **({"align": aligned["rt_scale_dict"], "units": aligned["units"]} if aligned else {}))
    plans = {p.view.id: p for p in plan_views(capture.views, options.image)}
    reader = default_program(module, options) if reader is None else reader
    report = CheckReport(export_dir, manifest["format"], capture.name, thresholds, [], [], reader,
                         list(manifest.get("warnings", [])))
    if aligned:
        assert capture.world is not None  # load_capture with `align` gives the capture its alignment
        if not np.allclose(capture.world, aligned["similarity"], rtol=1e-12, atol=0):
            report.problems.append(f"the alignment in {aligned['rt_scale_dict']} is not the one the export "
                                   "recorded (the file changed since): checked against the file's")

    read_failed, unread = False, {}
    try:
        reading = program(module, reader).read(export_dir)
        readback, unread = reading.views, reading.unread
        report.problems += [f"{reader}: {problem}" for problem in reading.problems]
    except Exception as exc:  # any reader failure is a finding of the check, not a crash
        reason = str(exc) if isinstance(exc, FsconvertError) else f"{type(exc).__name__}: {exc}"
        report.problems.append(f"read-back failed: {reason}")
        readback, read_failed = [], True
    by_name: dict[str, ExportedView] = {}
    for exported in readback:
        if exported.name in by_name:
            report.problems.append(f"read-back holds '{exported.name}' twice")
        by_name[exported.name] = exported
    names = {entry["name"] for entry in manifest["views"]}
    extra = sorted(set(by_name) - names)
    if extra:
        report.problems.append(f"read-back has {len(extra)} view(s) not in the manifest: {', '.join(extra)}")
    dropped = sorted(set(plans) - {entry["id"] for entry in manifest["views"]})
    if dropped:
        report.problems.append(f"source view(s) {dropped} are not in the export manifest")

    points = subsample(capture_geometry(capture, "the check").vertices, max_points)
    out_dir = export_dir / CHECK_DIR
    _clear(out_dir)
    sampled = overlay_sample(policy, len(manifest["views"]))
    # the renders compare two cameras through one geometry: a dense scan's light proxy serves as well
    with Renderer(capture_drawn(capture, "the check")) as renderer:
        for i, entry in enumerate(manifest["views"]):
            result = ViewCheck(int(entry["id"]), entry["name"])
            report.views.append(result)
            plan, view = plans.get(result.id), by_name.get(result.name)
            if plan is None:
                result.problems.append(f"view {result.id} is not in the source tuple")
            elif view is None:
                if result.name in unread:
                    result.problems.append(f"{report.reader} does not read this view: {unread[result.name]}")
                else:
                    result.problems.append("not read back: the reader failed" if read_failed
                                           else "missing from the read-back (dropped view)")
            else:
                measure_view(result, plan, view, points, renderer, export_dir, thresholds, render_max_side,
                            None if policy == "none" else out_dir, i in sampled, report.reader, previews or {},
                            measured or {})
    write_json(export_dir / CHECK_JSON, report.to_dict())
    invalid = {v.id for v in capture.views if not v.valid}
    _plot(export_dir / RIG, report, manifest["format"], by_name, invalid, points)
    write_check_page(export_dir, report.to_dict(), manifest, invalid)
    report.seconds = time.perf_counter() - start
    return report


def _plot(path: Path, report: CheckReport, fmt: str, by_name: dict[str, ExportedView], invalid: set[int],
          points: np.ndarray) -> None:
    """The rig of the read-back cameras: failing views in red (drawn last), views marked valid=false dashed."""
    frustums = [Frustum(str(v.id), view.camera, view.world_to_cam,
                        "failed" if not v.passed else "invalid" if v.id in invalid else "ok")
                for v in sorted(report.views, key=lambda v: not v.passed)
                if (view := by_name.get(v.name)) is not None]
    missing = [v.id for v in report.views if v.name not in by_name]
    title = f"{fmt} export of {report.source}: {len(frustums)} read-back cameras"
    plot_rig(path, frustums, points, title + (f" (not read back: {missing})" if missing else ""))



def format_check(report: CheckReport) -> str:
    """One line per view (id, name, camera max/mean px, IoU, depth, pixel shift and NCC, PASS/FAIL and why) and
    a summary."""
    name_w = max([4] + [len(v.name) for v in report.views])
    lines = [f"{'view':>5}  {'name':<{name_w}}  {'cam max px':>10}  {'cam mean px':>11}  {'IoU':>6}  "
             f"{'depth rel':>9}  {'px shift':>8}  {'px NCC':>7}  result"]
    for v in report.views:
        why = f"  {'; '.join(v.problems)}" if v.problems else ""
        lines.append(f"{v.id:>5}  {v.name:<{name_w}}  {_num(v.camera_max_px, '10.2e')}  "
                     f"{_num(v.camera_mean_px, '11.2e')}  {_num(v.iou, '6.4f')}  {_num(v.depth_rel, '9.1e')}  "
                     f"{_num(v.pixel_shift_px, '8.4f')}  {_num(v.pixel_ncc, '7.5f')}  "
                     f"{'PASS' if v.passed else 'FAIL'}{why}")
    lines += [f"FAIL: {p}" for p in report.problems]
    lines += [f"warning: {w}" for w in report.warnings]
    unrendered = sum(v.passed and v.render_size is None for v in report.views)
    if unrendered:
        lines.append(f"IoU/depth —: {unrendered} view(s) not rendered (read-back camera identical to the expected "
                     "one, no overlay asked)")
    passed = sum(v.passed for v in report.views)
    t = report.thresholds
    lines.append(
        f"{'PASS' if report.passed else 'FAIL'}: {passed}/{len(report.views)} views of the {report.format} export "
        f"of {report.source}{_read_by(report)} within {t.camera_px:g} px, IoU ≥ {t.silhouette_iou:g}, "
        f"depth ≤ {t.depth_rel:g}, pixels within {t.pixel_shift_px:g} px and NCC ≥ {t.pixel_ncc:g} "
        f"({report.seconds:.1f} s; every number in {CHECK_JSON})"
    )
    return "\n".join(lines)


def _read_by(report: CheckReport) -> str:
    return "" if report.reader == report.format else f" read by {report.reader}'s rules"


def _num(value: float | None, fmt: str) -> str:
    width = int(fmt.split(".")[0])
    return f"{'—':>{width}}" if value is None else format(value, fmt)



def _clear(out_dir: Path) -> None:
    """Remove the previous check's results (stale overlays of views that are now gone)."""
    try:
        out_dir.mkdir(exist_ok=True)
        for old in out_dir.glob("mv_result_*.jpg"):
            old.unlink()
    except OSError as exc:
        raise OutputError(f"{out_dir}: cannot write the check results: {exc.strerror or exc}") from None


