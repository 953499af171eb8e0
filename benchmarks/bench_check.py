"""The pixel check's cost against the export's: per core, at full size (4344×2896) and at 1/4.

For each format and scale, best of `--repeat` rounds (each round runs everything once, so that load from other
processes on a shared machine hits all alike), one process, one OpenCV and one llvmpipe thread, `-j 1`:

- export: `fsconvert.export.export` with the check off (`thresholds=None`): the format's work alone;
- the same export with the check on and no overlays (`--overlays none`), as the command runs it, and in it:
  - pixels (stage): the image stage measuring each image as it writes it (`viewpixels.measured_as_written`);
  - pixels (check): the check finding each view's pixel numbers (`viewpixels.view_pixels`: the stage's
    measurement taken after hashing the file, or measured from the files);
  - check: `check_export` as a whole (cameras, renders, rig plot, page; pixels (check) included);
- pixels (files): `view_pixels` without the stage's measurements, as `fsconvert check OUT` measures;
- floor: decoding every exported file as the pixel check decodes it (luma of a JPEG), which any comparison of
  the exported pixels with the source has to pay.

Each is given in ms per view, wall (`time.perf_counter`) / CPU of this process (`time.process_time`: less
sensitive to other processes on a shared machine), and the ratios to the export. Target (issue 26): the pixel
check ≤ 15 % of the export at full size and at 1/4; the pixel work (stage + check) is that, "check (all)" adds
the camera check, the read-back, check.json, the rig plot and the page (per-tuple costs spread over its views).

    .venv/bin/python benchmarks/bench_check.py                      # 23-view tuple of 4344×2896, best of 3
    .venv/bin/python benchmarks/bench_check.py --quick              # 4 views, best of 1
    .venv/bin/python benchmarks/bench_check.py --formats facescape,colmap

Input: `fsconvert sample --long-side 4344` (`fsconvert.synthetic.make_sample`, ~8 s per view to render), cached
in $TMPDIR/fsconvert-bench-check.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

os.environ.setdefault("LP_NUM_THREADS", "1")  # one render thread, before OSMesa loads: per-core numbers

import cv2
import numpy as np

import fsconvert  # noqa: F401  (headless rendering set-up)
from exporters import available
from fsconvert import export as export_module
from fsconvert import measure, viewpixels
from fsconvert.check import check_export
from fsconvert.export import export
from fsconvert.imageplan import ImageOptions, ViewPlan
from fsconvert.imagestage import WrittenCallback
from fsconvert.loader import load_capture
from fsconvert.model import Camera
from fsconvert.pixelcheck import PixelNumbers, decode_exported
from fsconvert.protocol import read_manifest
from fsconvert.viewpixels import Written

LONG_SIDE = 4344
SCALES = (1.0, 0.25)

T = TypeVar("T")
OnWritten = Callable[[WrittenCallback | None], AbstractContextManager[None]]
"""`imagestage.on_written`, as `viewpixels` calls it."""
ViewPixels = Callable[[ViewPlan, Camera, np.ndarray, Path, Mapping[str, Written]], PixelNumbers]
"""`viewpixels.view_pixels`, as `measure` calls it."""


def sample(cache: Path, views: int) -> Path:
    """The cached tuple folder of a `views`-view synthetic sample of LONG_SIDE pixels."""
    from fsconvert.synthetic import make_sample  # lazy: only to render an uncached sample

    root = cache / f"{LONG_SIDE}px-{views}views"
    found = sorted(root.glob("images/*/*/params.json"))
    if found:
        return found[0].parent
    print(f"rendering {views} synthetic {LONG_SIDE}-px views into {root} (cached for later runs) ...", flush=True)
    tmp = Path(tempfile.mkdtemp(dir=cache))
    (tuple_dir,) = make_sample(tmp, n_views=views, long_side=LONG_SIDE)
    os.rename(tmp, root)
    return root / tuple_dir.relative_to(tmp)


class Clock:
    """Wall and CPU seconds of a block, accumulated."""

    def __init__(self) -> None:
        self.wall = self.cpu = 0.0

    def run(self, fn: Callable[[], T]) -> T:
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            return fn()
        finally:
            self.wall += time.perf_counter() - wall
            self.cpu += time.process_time() - cpu


@contextmanager
def replaced(module: ModuleType, name: str, replace: Callable[[T], T]) -> Iterator[None]:
    """While open, `module.name` is `replace(original)`."""
    original = getattr(module, name)
    setattr(module, name, replace(original))
    try:
        yield
    finally:
        setattr(module, name, original)


def timed(module: ModuleType, name: str, clock: Clock) -> AbstractContextManager[None]:
    """While open, `module.name` (a function) runs under `clock`."""

    def under_clock(original: Callable[..., Any]) -> Callable[..., Any]:
        return lambda *args, **kwargs: clock.run(lambda: original(*args, **kwargs))

    return replaced(module, name, under_clock)


def timed_stage(clock: Clock) -> AbstractContextManager[None]:
    """While open, the image stage's pixel measurements (the callback `measured_as_written` registers) run
    under `clock`."""

    def callbacks_under_clock(original: OnWritten) -> OnWritten:
        def on_written(callback: WrittenCallback | None) -> AbstractContextManager[None]:
            if callback is None:
                return original(None)
            return original(lambda *args: clock.run(lambda: callback(*args)))

        return on_written

    return replaced(viewpixels, "on_written", callbacks_under_clock)


def without_measurements(view_pixels: ViewPixels) -> ViewPixels:
    """`view_pixels` given none of the stage's measurements: it measures from the files."""
    return lambda plan, camera, w2c, path, measured: view_pixels(plan, camera, w2c, path, {})


def from_files(out: Path, clock: Clock) -> None:
    """The check's pixel numbers of every view of `out` measured from the files, as `fsconvert check OUT` does."""
    with timed(measure, "view_pixels", clock), replaced(measure, "view_pixels", without_measurements):
        check_export(out, overlays="none")


def floor(out: Path) -> Clock:
    """Decoding what the pixel check has to decode of each exported file."""
    clock = Clock()
    for entry in read_manifest(out)["views"]:
        path = out / entry["name"]
        clock.run(lambda: decode_exported(path.read_bytes(), path))
    return clock


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="4 views, one round")
    parser.add_argument("--formats", default="facescape,colmap,nerf", help="comma-separated formats")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--views", type=int, default=23, help="views rendered (one is marked invalid); FaceScape "
                        "tuples hold 19-68, most near 30 or 55, and the per-tuple costs weigh 3x more on 8 than on 23")
    args = parser.parse_args()
    cv2.setNumThreads(1)
    views, repeat = (4, 1) if args.quick else (args.views, args.repeat)
    cache = Path(os.environ.get("TMPDIR", tempfile.gettempdir())) / "fsconvert-bench-check"
    cache.mkdir(parents=True, exist_ok=True)
    capture = load_capture(sample(cache, views))
    formats = args.formats.split(",")
    modules = available()
    tmp = Path(tempfile.mkdtemp(dir=cache))
    names = ("export", "export+check", "pixels (stage)", "pixels (check)", "check", "pixels (files)", "floor")
    try:
        warm = tmp / "warm"  # untimed: lazy imports, the GL context
        export(capture, modules[formats[0]], warm, thresholds=None)
        check_export(warm, overlays="none")
        best: dict[tuple[str, float], dict[str, tuple[float, float]]] = {}
        for _ in range(repeat):
            for scale in SCALES:
                image = ImageOptions(scale=None if scale == 1 else scale)
                for fmt in formats:
                    module, out = modules[fmt], tmp / f"{fmt}-{scale:g}"
                    clocks = {name: Clock() for name in names}
                    options = module.Options(image=image)
                    clocks["export"].run(lambda: export(capture, module, out, options, overwrite=True,
                                                        thresholds=None))
                    with (timed_stage(clocks["pixels (stage)"]),
                          timed(measure, "view_pixels", clocks["pixels (check)"]),
                          timed(export_module, "check_export", clocks["check"])):
                        clocks["export+check"].run(lambda: export(capture, module, out, options, overwrite=True,
                                                                  overlays="none"))
                    from_files(out, clocks["pixels (files)"])
                    clocks["floor"] = floor(out)
                    old = best.setdefault((fmt, scale), {})
                    for name, c in clocks.items():
                        w, p = old.get(name, (float("inf"), float("inf")))
                        old[name] = (min(w, c.wall), min(p, c.cpu))
                    shutil.rmtree(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    n = len(capture.views)
    size = "×".join(map(str, capture.views[0].camera.size))
    with open("/proc/loadavg") as f:
        load = f.read().split()[:3]
    print(f"{n} views of {size}, best of {repeat}, one core, load average {' '.join(load)} at the end;")
    print("ms per view, wall/CPU, and as a share of the export (wall/CPU)")
    print(f"{'format':>10} {'scale':>5}  {'export':>9}  {'pixels: stage + check':>27}  {'check (all)':>21}  "
          f"{'pixels from files':>21}  {'decode floor':>21}")
    for (fmt, scale), t in best.items():
        e = t["export"]
        pixels = tuple(a + b for a, b in zip(t["pixels (stage)"], t["pixels (check)"]))
        check = tuple(a + b for a, b in zip(t["pixels (stage)"], t["check"]))

        def ms(pair: tuple[float, ...]) -> str:
            return "/".join(f"{1e3 * t / n:.{0 if t / n >= 0.01 else 1}f}" for t in pair)

        def cell(pair: tuple[float, ...]) -> str:
            return f"{ms(pair)} {100 * pair[0] / e[0]:.0f}%/{100 * pair[1] / e[1]:.0f}%"

        print(f"{fmt:>10} {scale:>5g}  {ms(e):>9}  {cell(pixels):>27}  "
              f"{cell(check):>21}  {cell(t['pixels (files)']):>21}  {cell(t['floor']):>21}")
    print("target: the pixel check (pixel work: stage + check) ≤ 15 % of the export; check (all) for the whole check")


if __name__ == "__main__":
    main()
