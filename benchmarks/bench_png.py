"""PNG formats against the PNG bound of the writer fsconvert uses (`fsconvert.writers.png_bytes`: fpng for 8-bit
colour, OpenCV for 16-bit), and Open3D against a bound that includes its 16-bit depth encode.

On a synthetic full-size tuple (6 unique 4344-px views from `fsconvert.synthetic.make_sample`, hard-linked into
`--views`, with the mesh also as a 1.3 M-face dense scan, `fsconvert.synthetic.dense_scan`; cached):

- bound: per view, the JPEG decoded by simplejpeg (reduced like the stage), one `cv2.remap` with the plan's maps
  computed beforehand, then the format's encodes, nothing written: neus `png_bytes` of BGR and of the view's mask
  (rendered beforehand, as NeuS writes it: OpenCV's grey PNG); nerf --variant
  blender the alpha (source coverage, computed beforehand) merged on (`cv2.merge`) and `png_bytes` of BGRA;
  open3d a JPEG (quality 95) and `png_bytes` of the view's uint16 depth map (rendered beforehand). "1" is one
  process, "N" is one process per core at once, each on its share of the views, timed from a common start (a
  barrier) to the last one's end: the machine's bound, which threads of one process cannot exceed;
- command: `fsconvert to-neus|to-nerf --variant blender|to-open3d TUPLE -o OUT -j 1` and `-j N`, `--no-check`,
  end to end in a new process, with its peak RSS; each also with the dense mesh (`--mesh`);
- for reference, neus's bound with OpenCV's PNG writer for its images (what fsconvert used before).

Each round runs everything in turn and prints the load average; the end prints the medians: views/s, each command
÷ its bound (-j 1 ÷ bound 1, -j N ÷ bound N; targets ≥ 0.85 for the PNG formats, ≥ 0.7 for open3d), -j N ÷ -j 1,
and open3d dense ÷ light (target ≤ 1.25).

    .venv/bin/python benchmarks/bench_png.py [--views 12] [--repeat 3] [--cache DIR] [--quick]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import queue
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import cv2
import numpy as np
import simplejpeg
from bench_batch import DENSE, SUBJECTS, dataset

import fsconvert  # noqa: F401  (headless rendering set-up)
from exporters import get
from fsconvert import conventions as cv
from fsconvert.imageplan import ImageOptions, ViewPlan, plan_views
from fsconvert.loader import load_capture
from fsconvert.writers import encoded, png_bytes

LONG_SIDE = 4344
UNIQUE = 6
QUALITY = 95
REPO = Path(__file__).resolve().parent.parent
FORMATS = {"neus": ["to-neus"], "blender": ["to-nerf", "--variant", "blender"], "open3d": ["to-open3d"]}
"""The commands (and bound kinds) compared; "open3d dense" is open3d's command with the dense mesh."""

Measured = tuple[float, int, list[int]]
"""(seconds, peak RSS in MB, its helper processes' peaks in MB) of one run."""


def sample(cache: Path, views: int) -> tuple[Path, Path]:
    """(tuple folder, dense mesh): `views` views hard-linked from UNIQUE rendered once, cached (bench_batch's
    dataset: its first subject's tuple and dense scan)."""
    root = dataset(cache, views, UNIQUE, LONG_SIDE)
    return root / "images" / SUBJECTS[0] / "1_neutral", root / DENSE / SUBJECTS[0] / "1_neutral.ply"


def bound_plans(kind: str, tuple_dir: Path) -> list[ViewPlan]:
    """The plans the format's export makes (its default image options)."""
    capture = load_capture(tuple_dir)
    if kind == "blender":
        from exporters.nerf.writer import Options, effective_image_options

        return plan_views(capture.views, effective_image_options(capture, Options(variant="blender")))
    image: ImageOptions = get("neus" if kind == "neus-opencv" else kind).Options().image
    return plan_views(capture.views, image)


def bound_worker(kind: str, tuple_dir: Path, share: list[int], start: mp.synchronize.Barrier,
                 out: mp.Queue[tuple[float, float]]) -> None:
    """One process of the bound: prepare its views' inputs, wait for the others, time its views."""
    cv2.setNumThreads(1)
    every = bound_plans(kind, tuple_dir)
    plans = [every[k] for k in share]
    data = [p.view.image.read_bytes() for p in plans]
    maps = [(np.ascontiguousarray(mx), np.ascontiguousarray(my)) for mx, my in (p.maps() for p in plans)]
    sizes = [cv.reduced_size(p.view.camera.size, p.reduce) for p in plans]
    alphas = [np.where((mx >= 0) & (mx <= w - 1) & (my >= 0) & (my <= h - 1), 255, 0).astype(np.uint8)
              for (mx, my), (w, h) in zip(maps, sizes)]
    depths: list[np.ndarray] = []
    masks: list[np.ndarray] = []
    if kind.startswith("neus"):
        from fsconvert.depthproducts import render_masks
        from fsconvert.mesh import capture_geometry

        geometry = capture_geometry(load_capture(tuple_dir), "the bound's masks")
        found = dict(render_masks(geometry, plans))
        masks = [found[k] for k in range(len(plans))]
    if kind == "open3d":
        import exporters.open3d as o3d_format
        from fsconvert.depthproducts import depth_pngs
        from fsconvert.mesh import capture_mesh

        mesh = capture_mesh(load_capture(tuple_dir), "the bound's depth maps")
        scale = o3d_format.depth_scale(o3d_format._max_depth(mesh.vertices, every))  # depth_pngs takes it as float32
        rendered = {k: png for k, png, _ in depth_pngs(mesh, plans, scale)}
        depths = [rendered[k] for k in range(len(plans))]
    start.wait()
    t0 = time.monotonic()  # one clock for every process
    for k in range(len(plans)):
        w, h = sizes[k]
        img = simplejpeg.decode_jpeg(data[k], "BGR", min_height=h, min_width=w)
        img = cv2.remap(img, *maps[k], cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
        if kind == "neus":
            png_bytes(img)
            png_bytes(masks[k])
        elif kind == "neus-opencv":
            encoded(img, ".png")
            png_bytes(masks[k])
        elif kind == "blender":
            png_bytes(cv2.merge([*cv2.split(img), alphas[k]]))
        else:
            encoded(img, ".jpg", [cv2.IMWRITE_JPEG_QUALITY, QUALITY])
            png_bytes(depths[k])
    out.put((t0, time.monotonic()))


def bound(kind: str, tuple_dir: Path, views: int, processes: int) -> float:
    """Seconds from the common start to the last process's end, `processes` processes over `views` views."""
    context = mp.get_context("spawn")
    start = context.Barrier(processes)
    out: mp.Queue[tuple[float, float]] = context.Queue()
    workers = [context.Process(target=bound_worker, args=(kind, tuple_dir, list(range(i, views, processes)), start,
                                                          out)) for i in range(processes)]
    for w in workers:
        w.start()
    spans = []
    for _ in workers:
        try:
            spans.append(out.get(timeout=600))
        except queue.Empty:  # a bound process died before reporting
            raise SystemExit(f"bench_png: a bound process ended without a result (exit codes "
                             f"{[w.exitcode for w in workers]})") from None
    for w in workers:
        w.join()
    return max(e for _, e in spans) - min(s for s, _ in spans)


def command(fmt: str, tuple_dir: Path, out: Path, jobs: int, mesh: Path | None = None) -> Measured:
    """(seconds, peak RSS in MB, its helper processes' peaks) of the format's command in a new process
    (`measured`)."""
    return measured(FORMATS[fmt], tuple_dir, out, jobs, mesh)


def measured(command: list[str], tuple_dir: Path, out: Path, jobs: int,
             mesh: Path | None = None) -> Measured:
    """(seconds, peak RSS in MB: its VmHWM, read every 10 ms while it runs, and the same of each of its child
    processes: the PNG encoders of its image threads) of `fsconvert COMMAND TUPLE -o OUT -j JOBS --no-check` in a
    new process."""
    args = [str(Path(sys.executable).parent / "fsconvert"), *command, str(tuple_dir), "-o", str(out),
            "-j", str(jobs), "--no-check", "-q", "--overwrite", "--force", *(["--mesh", str(mesh)] if mesh else [])]
    start = time.perf_counter()
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL)
    peak = 0
    children: dict[str, int] = {}
    while proc.poll() is None:
        peak = max(peak, _peak_mb(proc.pid))
        try:
            for child in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split():
                children[child] = max(children.get(child, 0), _peak_mb(int(child)))
        except OSError:  # exiting
            pass
        time.sleep(0.01)
    seconds = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(f"{' '.join(args)} exited {proc.returncode}")
    return seconds, peak, sorted(mb for mb in children.values() if mb)


def _peak_mb(pid: int) -> int:
    """VmHWM of process `pid` in MB (0 once it is gone)."""
    try:
        return int(Path(f"/proc/{pid}/status").read_text().split("VmHWM:")[1].split()[0]) // 1024
    except (OSError, IndexError):
        return 0


def helpers_mb(peaks: list[int]) -> str:
    """The helper processes' peaks, as "n × MB" (their largest), or "" without any."""
    return f"{len(peaks)} × {max(peaks)} MB" if peaks else ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--views", type=int, default=12)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "fsconvert-bench-png")
    parser.add_argument("--quick", action="store_true", help="one round")
    args = parser.parse_args()
    repeat = 1 if args.quick else args.repeat
    cores = os.cpu_count() or 1
    tuple_dir, dense = sample(args.cache, args.views)
    n = len(load_capture(tuple_dir).views)
    import fpng

    print(f"{n} views of {LONG_SIDE}×{LONG_SIDE * 2 // 3}, {cores} cores, python {sys.version.split()[0]}, "
          f"fpng {fpng.__version__}, OpenCV {cv2.__version__}, simplejpeg {simplejpeg.__version__}")
    work = Path(tempfile.mkdtemp(prefix="bench-png-"))

    def bound_run(kind: str, processes: int) -> Measured:
        """`bound` as a run: no command, so no peak RSS or helpers."""
        return bound(kind, tuple_dir, n, processes), 0, []

    runs: dict[str, Callable[[], Measured]] = {}
    for kind in ("neus", "blender", "open3d", "neus-opencv"):
        runs[f"{kind} bound 1"] = partial(bound_run, kind, 1)
        runs[f"{kind} bound {cores}"] = partial(bound_run, kind, cores)
    for fmt in FORMATS:
        for jobs in (1, cores):
            runs[f"{fmt} -j {jobs}"] = partial(command, fmt, tuple_dir, work / fmt, jobs)
    for fmt in FORMATS:
        for jobs in (1, cores):
            runs[f"{fmt} dense -j {jobs}"] = partial(command, fmt, tuple_dir, work / f"{fmt}-dense", jobs, dense)
    times: dict[str, list[float]] = {name: [] for name in runs}
    rss: dict[str, int] = {}
    helpers: dict[str, list[int]] = {}
    loads = []
    try:
        for r in range(repeat):
            loads.append(os.getloadavg()[0])
            line = [f"round {r + 1}: load {'/'.join(f'{x:.2f}' for x in os.getloadavg())}"]
            for name, fn in runs.items():
                seconds, mb, children = fn()
                times[name].append(seconds)
                rss[name] = max(rss.get(name, 0), mb)
                helpers[name] = max(helpers.get(name, []), children, key=lambda c: (max(c, default=0), len(c)))
                line.append(f"{name} {seconds:.2f} s")
            print(";  ".join(line), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    med = {name: statistics.median(t) for name, t in times.items()}
    rounds = f"{repeat} round" + ("s" if repeat != 1 else "")
    print(f"\nmedian of {rounds} (1-min load at the rounds' starts: median {statistics.median(loads):.2f}, "
          f"min {min(loads):.2f}, max {max(loads):.2f})")
    print(f"{'':22}{'seconds':>9}{'views/s':>9}{'÷ bound':>9}{'÷ -j 1':>8}{'peak RSS':>10}  PNG helpers' peak")
    for name, t in med.items():
        kind, _, what = name.rpartition(" ")
        if " bound " in name or name.startswith("neus-opencv"):
            print(f"{name:22}{t:9.2f}{n / t:9.2f}")
            continue
        jobs = int(what)
        base = "open3d" if kind.startswith("open3d") else kind.split(" ")[0]
        ratio = med[f"{base} bound {jobs}"] / t
        speedup = f"{med[f'{kind} 1'] / t:8.2f}" if jobs > 1 else f"{'':8}"
        print(f"{name:22}{t:9.2f}{n / t:9.2f}{ratio:9.2f}{speedup}{rss[name]:7d} MB  {helpers_mb(helpers[name])}")
    for jobs in (1, cores):
        print(f"open3d dense ÷ light at -j {jobs}: {med[f'open3d dense -j {jobs}'] / med[f'open3d -j {jobs}']:.2f}"
              " (target ≤ 1.25)")
    print("targets: neus and blender ÷ bound ≥ 0.85, open3d ÷ bound ≥ 0.7; peak RSS < 700 MB with the dense mesh")


if __name__ == "__main__":
    main()
