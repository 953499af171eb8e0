"""The pixel check's cost against the export's: per core, at full size (4344×2896) and at 1/4.

For each format and scale, best of `--repeat` rounds (each round runs everything once, so that load from other
processes on a shared machine hits all alike), one process, one OpenCV and one llvmpipe thread:

- export: `fsconvert.export.export` with the check off (its images written by the stage in this process);
- check: `fsconvert.check.check_export` on that export without overlays (`--overlays none`), and inside it the
  pixel check alone (`measure._pixel_fidelity`, timed where `measure_view` calls it);
- floor: decoding every view's source JPEG at the reduction the pixel check uses (`read_image`) and the exported
  file, which any comparison of the exported pixels with the source has to pay.

Each is given in seconds (wall, `time.perf_counter`) and CPU seconds of this process (`time.process_time`: less
sensitive to other processes on a shared machine), and the ratios to the export. Target: the check ≤ 15 % of
the export.

    .venv/bin/python benchmarks/bench_check.py                      # 8-view tuple of 4344×2896, best of 3
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
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("LP_NUM_THREADS", "1")  # one render thread, before OSMesa loads: per-core numbers

import cv2

import fsconvert  # noqa: F401  (headless rendering set-up)
from exporters import available
from fsconvert import measure
from fsconvert.check import check_export
from fsconvert.export import export
from fsconvert.imageplan import ImageOptions
from fsconvert.imagestage import read_image
from fsconvert.loader import load_capture
from fsconvert.protocol import read_manifest

LONG_SIDE = 4344
SCALES = (1.0, 0.25)


def sample(cache: Path, views: int) -> Path:
    """The cached tuple folder of a `views`-view synthetic sample of LONG_SIDE pixels."""
    from fsconvert.synthetic import make_sample

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

    def run(self, fn: Callable[[], object]) -> None:
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        self.wall += time.perf_counter() - wall
        self.cpu += time.process_time() - cpu


def pixel_clock() -> Clock:
    """A clock that `measure._pixel_fidelity` runs under from now on (the check looks it up at each call)."""
    clock, original = Clock(), measure._pixel_fidelity

    def timed(*args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        clock.run(lambda: original(*args, **kwargs))

    measure._pixel_fidelity = timed
    return clock


def floor(out: Path, capture) -> Clock:
    """Decoding what the pixel check has to decode: each source at the check's reduction, each exported file."""
    from exporters import default_program, get, program
    from fsconvert.options import from_dict

    manifest = read_manifest(out)
    module = get(manifest["format"])
    options = from_dict(module.Options, manifest["options"])
    views = {v.name: v for v in program(module, default_program(module, options)).read(out).views}
    clock = Clock()
    for entry in manifest["views"]:
        src, read = capture.view(entry["id"]), views[entry["name"]]
        reduce = measure._source_reduction(src.camera, read.camera)
        clock.run(lambda: (read_image(src.image, reduce), measure._decode_exported(out / entry["name"])))
    return clock


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="4 views, one round")
    parser.add_argument("--formats", default="facescape,colmap,nerf", help="comma-separated formats")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--views", type=int, default=8)
    args = parser.parse_args()
    cv2.setNumThreads(1)
    views, repeat = (4, 1) if args.quick else (args.views, args.repeat)
    cache = Path(os.environ.get("TMPDIR", tempfile.gettempdir())) / "fsconvert-bench-check"
    cache.mkdir(parents=True, exist_ok=True)
    capture = load_capture(sample(cache, views))
    formats = args.formats.split(",")
    modules = available()
    pixels = pixel_clock()
    tmp = Path(tempfile.mkdtemp(dir=cache))
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
                    clocks = {"export": Clock(), "check": Clock()}
                    clocks["export"].run(lambda: export(capture, module, out, module.Options(image=image),
                                                        overwrite=True, thresholds=None))
                    pixels.wall = pixels.cpu = 0.0
                    clocks["check"].run(lambda: check_export(out, overlays="none"))
                    clocks["pixels"] = pixels
                    clocks["floor"] = floor(out, capture)
                    old = best.setdefault((fmt, scale), {})
                    for name, c in clocks.items():
                        w, p = old.get(name, (float("inf"), float("inf")))
                        old[name] = (min(w, c.wall), min(p, c.cpu))
                    shutil.rmtree(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    n = len(capture.views)
    size = "×".join(map(str, capture.views[0].camera.size))
    print(f"{n} views of {size}, best of {repeat}, one core; ms per view (wall / CPU) and the share of the export")
    print(f"{'format':>10} {'scale':>5}  {'export':>13}  {'check':>13} {'÷ export':>13}  {'pixel check':>13} "
          f"{'÷ export':>13}  {'decode floor':>13} {'÷ export':>13}")
    for (fmt, scale), t in best.items():
        e = t["export"]

        def ms(pair: tuple[float, float]) -> str:
            return f"{f'{1e3 * pair[0] / n:.0f}/{1e3 * pair[1] / n:.0f}':>13}"

        def share(pair: tuple[float, float]) -> str:
            return f"{f'{100 * pair[0] / e[0]:.0f}%/{100 * pair[1] / e[1]:.0f}%':>13}"

        print(f"{fmt:>10} {scale:>5g}  {ms(e)}  {ms(t['check'])} {share(t['check'])}  {ms(t['pixels'])} "
              f"{share(t['pixels'])}  {ms(t['floor'])} {share(t['floor'])}")
    print("target: check ≤ 15 % of the export")


if __name__ == "__main__":
    main()
