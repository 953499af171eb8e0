"""Image stage throughput (undistort + scale + write) on 4344×2896 JPEGs, against two baselines.

- stage: `plan_views` + `run_plans` (maps computed per view, reduced JPEG decode, one remap, encode);
- naive: what conversion scripts do: full `cv2.imread`, `cv2.undistort`, `cv2.resize` (INTER_AREA), `cv2.imwrite`;
- bound: raw OpenCV on the stage's own work: decode (reduced like the stage) + `cv2.remap` with maps
  precomputed outside the timing + encode, same output sizes and quality.

All three run in this process with OpenCV's default threads and write JPEG quality 95 into a temp
folder. Targets: stage/bound ≥ 0.85 at scale 1, stage/naive ≥ 3 at scale 1/4. Also timed: the stage
with 2 worker processes, and the projection check of a FaceScape export (its share of export time).

    .venv/bin/python benchmarks/bench_images.py [--quick] [--views N] [--repeat R] [--cache DIR]

The synthetic input (`fsconvert.synthetic.make_sample`, ~8 s per view to render) is cached in
`--cache` (default: $TMPDIR/fsconvert-bench-images).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

import fsconvert  # noqa: F401  (headless rendering set-up)
from fsconvert.imageplan import ImageOptions, ViewPlan, plan_views
from fsconvert.imagestage import read_image, run_plans
from fsconvert.loader import load_capture
from fsconvert.model import View

LONG_SIDE = 4344
QUALITY = 95


def sample(cache: Path, views: int) -> Path:
    """The cached tuple folder with `views` synthetic 4344-px views (generated on first use)."""
    root = cache / f"{LONG_SIDE}px-{views}views"
    tuple_dir = root / "images" / "1" / "1_neutral"
    if not (tuple_dir / "params.json").is_file():
        from fsconvert.synthetic import make_sample

        print(f"generating {views} synthetic {LONG_SIDE}-px views in {root} (cached for later runs) ...")
        tmp = Path(tempfile.mkdtemp(dir=cache))
        make_sample(tmp, n_views=views, long_side=LONG_SIDE)
        shutil.rmtree(root, ignore_errors=True)
        os.rename(tmp, root)
    return tuple_dir


def stage(plans: list[ViewPlan], out: Path, workers: int = 1) -> None:
    run_plans([(p, out / f"{i}{p.suffix}") for i, p in enumerate(plans)], workers=workers)


def naive(plans: list[ViewPlan], out: Path) -> None:
    for i, p in enumerate(plans):
        img = cv2.imread(str(p.view.image))
        assert img is not None, p.view.image
        src = p.view.camera
        img = cv2.undistort(img, src.K, src.dist, None, _full_size_K(p))
        if p.camera.size != src.size:
            img = cv2.resize(img, p.camera.size, interpolation=cv2.INTER_AREA)
        cv2.imwrite(str(out / f"{i}.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, QUALITY])


def bound(jobs: list[tuple[View, int, np.ndarray, np.ndarray]], out: Path) -> None:
    for i, (view, reduce, mx, my) in enumerate(jobs):
        img = read_image(view.image, reduce)
        img = cv2.remap(img, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
        cv2.imwrite(str(out / f"{i}.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, QUALITY])


def _full_size_K(plan: ViewPlan) -> np.ndarray:
    """The output K at source size (cv2.undistort keeps the size; the resize comes after)."""
    src, (w, h) = plan.view.camera, plan.camera.size
    sx, sy = w / src.width, h / src.height
    K = plan.camera.K.copy()
    K[0] = (K[0] + [0, 0, 0.5]) / sx - [0, 0, 0.5]
    K[1] = (K[1] + [0, 0, 0.5]) / sy - [0, 0, 0.5]
    return K


def best_times(methods: dict[str, Callable[[Path], None]], repeat: int) -> dict[str, float]:
    """Fastest of `repeat` runs per method, after an untimed warm-up round. Rounds interleave the
    methods so that load from other processes on a shared machine hits them alike."""
    times: dict[str, list[float]] = {name: [] for name in methods}
    for i in range(repeat + 1):
        for name, fn in methods.items():
            with tempfile.TemporaryDirectory() as out:
                start = time.perf_counter()
                fn(Path(out))
                if i:
                    times[name].append(time.perf_counter() - start)
    return {name: min(t) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 images, one timed run each")
    parser.add_argument("--views", type=int, default=4, help="synthetic views to generate (default 4)")
    parser.add_argument("--copies", type=int, default=3,
                        help="each run converts every view this many times (amortises the -j2 pool start)")
    parser.add_argument("--repeat", type=int, default=5, help="runs per measurement; the fastest counts")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "fsconvert-bench-images")
    args = parser.parse_args()
    repeat = 1 if args.quick else args.repeat
    args.cache.mkdir(parents=True, exist_ok=True)
    capture = load_capture(sample(args.cache, max(args.views, 3)), include_invalid=True)
    views = capture.views[:2] if args.quick else capture.views * args.copies
    n = len(views)
    print(f"{n} images ({len(capture.views)} views) of {LONG_SIDE}×{round(LONG_SIDE * 2 / 3)} px, "
          f"OpenCV {cv2.__version__} with {cv2.getNumThreads()} threads, {os.cpu_count()} cores, best of {repeat}")
    print(f"{'scale':>6}  {'stage':>9}  {'stage -j2':>9}  {'naive':>9}  {'bound':>9}  {'stage/bound':>11}  "
          f"{'stage/naive':>11}   (images/s)")
    rates = {}
    for scale in (1.0, 0.25):
        plans = plan_views(views, ImageOptions(scale=None if scale == 1 else scale, jpeg_quality=QUALITY))
        jobs = [(p.view, p.reduce, *p.maps()) for p in plans]
        t = best_times({
            "stage": lambda out: stage(plans, out),
            "stage -j2": lambda out: stage(plans, out, workers=2),
            "naive": lambda out: naive(plans, out),
            "bound": lambda out: bound(jobs, out),
        }, repeat)
        rates[scale] = r = {k: n / v for k, v in t.items()}
        print(f"{scale:>6g}  " + "  ".join(f"{r[k]:>9.2f}" for k in t)
              + f"  {r['stage'] / r['bound']:>11.2f}  {r['stage'] / r['naive']:>11.2f}")
    print(f"targets: stage/bound at scale 1 = {rates[1.0]['stage'] / rates[1.0]['bound']:.2f} (≥ 0.85), "
          f"stage/naive at scale 1/4 = {rates[0.25]['stage'] / rates[0.25]['naive']:.2f} (≥ 3)")

    from exporters import facescape
    from fsconvert.check import check_export
    from fsconvert.export import export

    with tempfile.TemporaryDirectory() as tmp:
        for scale in (1.0, 0.25):
            options = facescape.Options(image=ImageOptions(scale=None if scale == 1 else scale))
            out = Path(tmp) / f"export-{scale:g}"
            start = time.perf_counter()
            export(capture, facescape, out, options, workers=2, thresholds=None)
            export_s = time.perf_counter() - start
            start = time.perf_counter()
            report = check_export(out)
            check_s = time.perf_counter() - start
            print(f"facescape export of {len(capture.views)} views at scale {scale:g}, 2 workers: {export_s:.2f} s; "
                  f"check {check_s:.2f} s "
                  f"({100 * check_s / export_s:.0f} % of the export; passed: {report.passed})")


if __name__ == "__main__":
    main()
