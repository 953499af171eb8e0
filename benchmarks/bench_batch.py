"""Whole-dataset conversion throughput: every exporter against two image baselines, with a dense mesh
against the light one, the whole machine against one core, the projection check's share, peak RSS.

- per core: one process, one OpenCV and one llvmpipe thread, one tuple; images/s of `fsconvert.export.export`
  (check off) at scale 1 and 1/4, against the naive loop (full `cv2.imread`, `cv2.undistort`, `cv2.resize`
  INTER_AREA, `cv2.imwrite`) and the raw OpenCV bound (decode reduced like the stage, `cv2.remap` with
  maps precomputed outside the timing, encode; same sizes, JPEG quality 95). The check's own time
  (`CheckReport.seconds`) inside an export with the check, with and without overlays.
- dense mesh: at scale 1, each exporter (and nerf with --masks --depth) with the tuple's mesh subdivided to
  ≥ 1 M faces with a scan-like relief (`fsconvert.synthetic.dense_scan`), against the light mesh
  (20 480 faces), export and export + check, in the same round.
- whole machine: the real command (`fsconvert to-<format> DATASET -o OUT -j N`, export + check, its
  default of one thread per worker) on four tuples with 1 worker and with one per core; images/s
  against cores × the one-core OpenCV bound, against that bound run in one process per core at
  once (what the cores deliver to image work together: shared memory bandwidth and clocks), and
  against cores × the same command on one core; the peak RSS (VmHWM) of every worker, with the
  dense mesh too.
- fingerprint: the resume record's cost per tuple (stat of the images) against hashing them.

Targets: ≥ 0.85× the bound at scale 1; ≥ 3× the naive loop at 1/4; dense ≤ 1.25× light; whole machine
≥ 0.85× (cores × one-core bound); check ≤ 15 % of the export time; peak RSS per worker < 700 MB.

    .venv/bin/python benchmarks/bench_batch.py [--quick] [--formats colmap,nerf] [--sections dense,machine]

Input: four synthetic tuples (`fsconvert.synthetic.make_sample`, ~8 s per 4344-px view to render): a few
unique views are rendered once, then hard-linked into 60-view tuples (decoding cost does not depend
on which view it is); cached in $TMPDIR/fsconvert-bench-batch with the dense meshes (dense/models/).
--quick: 12 views of 2172×1448 (a few minutes).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

os.environ.setdefault("LP_NUM_THREADS", "1")  # one render thread, before OSMesa loads: per-core numbers

import cv2
import numpy as np
import trimesh

import fsconvert  # noqa: F401  (headless rendering set-up)
from exporters import available
from fsconvert.check import check_export
from fsconvert.export import Exported, export
from fsconvert.imageplan import ImageOptions, ViewPlan, plan_views
from fsconvert.imagestage import read_image
from fsconvert.job import fingerprint
from fsconvert.loader import load_capture
from fsconvert.measure import Thresholds
from fsconvert.model import Capture, View

if TYPE_CHECKING:
    from multiprocessing.queues import Queue
    from multiprocessing.synchronize import Barrier

QUALITY = 95
SUBJECTS = ("1", "2", "3", "4")
DENSE = Path("dense") / "models"
"""MESH_ROOT of the dense meshes (not a sibling of images/, where the light ones are found by default)."""
DENSE_FACES = 1_000_000
WHOLE_MACHINE = ("colmap", "nerf", "facescape", "open3d")
SECTIONS = ("per-core", "dense", "machine", "fingerprint")

BoundJob = tuple[View, int, np.ndarray, np.ndarray]
"""(view, reduce, map x, map y): one image of the raw OpenCV bound."""


@dataclass(frozen=True)
class PerCore:
    """images/s per core by (name, scale): of the baselines ("naive", "bound"), and of the exporters with
    their check time / export time with overlays and without."""

    baselines: dict[tuple[str, float], float]
    exports: dict[tuple[str, float], tuple[float, float, float]]


def dataset(cache: Path, views: int, unique: int, long_side: int) -> Path:
    """A cached dataset root: SUBJECTS × 1_neutral, `views` valid views each, hard-linked from `unique`;
    `models/` holds the light meshes, `dense/models/` the same ones as dense scans."""
    root = cache / f"{long_side}px-{views}views"
    if (root / DENSE / SUBJECTS[-1] / "1_neutral.ply").is_file():
        return root
    from fsconvert.synthetic import dense_scan, make_sample

    print(f"rendering {unique} synthetic {long_side}-px views into {root} (cached for later runs) ...", flush=True)
    cache.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=cache))
    (src,) = make_sample(tmp / "src", n_views=unique, long_side=long_side)
    params = json.loads((src / "params.json").read_text())
    valid = [v for v in range(unique) if params.get(f"{v}_valid", True)]
    light = tmp / "src" / "models" / "1" / "1_neutral.ply"
    dense = tmp / "src" / "dense.ply"
    dense.write_bytes(trimesh.exchange.ply.export_ply(dense_scan(load_mesh(light), DENSE_FACES), encoding="binary"))
    for subject in SUBJECTS:
        dest = tmp / "images" / subject / "1_neutral"
        dest.mkdir(parents=True)
        out: dict[str, object] = {}
        for i in range(views):
            v = valid[i % len(valid)]
            os.link(src / f"{v}.jpg", dest / f"{i}.jpg")
            out |= {f"{i}_{k.split('_', 1)[1]}": value for k, value in params.items() if k.split("_", 1)[0] == str(v)}
        (dest / "params.json").write_text(json.dumps(out))
        for models, mesh in (("models", light), (DENSE, dense)):
            (tmp / models / subject).mkdir(parents=True)
            shutil.copyfile(mesh, tmp / models / subject / "1_neutral.ply")
    shutil.rmtree(root, ignore_errors=True)
    os.rename(tmp, root)
    return root


def load_mesh(path: Path) -> trimesh.Trimesh:
    """The mesh of a one-mesh file, as trimesh reads it unprocessed."""
    mesh = trimesh.load(path, process=False)
    assert isinstance(mesh, trimesh.Trimesh), path
    return mesh


def naive(plans: list[ViewPlan], out: Path) -> None:
    for i, p in enumerate(plans):
        img = cv2.imread(str(p.view.image))
        assert img is not None, p.view.image
        src = p.view.camera
        img = cv2.undistort(img, src.K, src.dist)
        if p.camera.size != src.size:
            img = cv2.resize(img, p.camera.size, interpolation=cv2.INTER_AREA)
        cv2.imwrite(str(out / f"{i}.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, QUALITY])


def bound(jobs: list[BoundJob], out: Path) -> None:
    for i, (view, reduce, mx, my) in enumerate(jobs):
        img = read_image(view.image, reduce)
        img = cv2.remap(img, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
        cv2.imwrite(str(out / f"{i}.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, QUALITY])


def bound_jobs(plans: list[ViewPlan]) -> list[BoundJob]:
    """(view, reduce, map x, map y) per plan, each map computed once per source image file (the views
    are hard-linked copies of a few: 60 views of 12.6 MP would otherwise hold ~6 GB of maps)."""
    maps: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for p in plans:
        maps.setdefault(os.stat(p.view.image).st_ino, p.maps())
    return [(p.view, p.reduce, *maps[os.stat(p.view.image).st_ino]) for p in plans]


def _bound_process(tuple_dir: Path, out: Path, barrier: Barrier, times: Queue[float]) -> None:
    cv2.setNumThreads(1)
    jobs = bound_jobs(plan_views(load_capture(tuple_dir).views, ImageOptions(jpeg_quality=QUALITY)))
    barrier.wait()
    times.put(timed(bound, jobs, out))


def parallel_bound(tuple_dir: Path, processes: int, tmp: Path) -> float:
    """images/s of the raw OpenCV bound at scale 1 run by `processes` processes at once (one thread each,
    started together): what this machine's cores deliver to image work when all of them do it."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(processes)
    times: Queue[float] = context.Queue()
    outs = [Path(tempfile.mkdtemp(dir=tmp)) for _ in range(processes)]
    procs = [context.Process(target=_bound_process, args=(tuple_dir, out, barrier, times)) for out in outs]
    for proc in procs:
        proc.start()
    seconds = [times.get() for _ in procs]
    for proc, out in zip(procs, outs):
        proc.join()
        shutil.rmtree(out)
    return processes * len(load_capture(tuple_dir).views) / max(seconds)


def timed(fn: Callable[..., object], *args: object) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def check_seconds(exported: Exported) -> float:
    """`CheckReport.seconds` of an export that ran the check."""
    assert exported.check is not None
    return exported.check.seconds


def per_core(capture: Capture, formats: list[str], tmp: Path, repeat: int,
             scales: tuple[float, ...] = (1.0, 0.25)) -> PerCore:
    """images/s per core of the baselines and exporters at scale 1 and 1/4, with each exporter's check
    time / export time. Best of `repeat` rounds; each round runs every method once, so that load from
    other processes on a shared machine hits them alike."""
    exporters = available()
    n = len(capture.views)
    few = replace(capture, views=capture.views[:2])
    for fmt in formats:  # untimed warm-up: lazy imports (open3d takes seconds), GL context
        export(few, exporters[fmt], tmp / f"warm-{fmt}", thresholds=None)
        check_export(tmp / f"warm-{fmt}")
    best_baselines: dict[tuple[str, float], float] = {}
    best_exports: dict[tuple[str, float], tuple[float, ...]] = {}
    for scale in scales:
        image = ImageOptions(scale=None if scale == 1 else scale, jpeg_quality=QUALITY)
        plans = plan_views(capture.views, image)
        jobs = bound_jobs(plans)
        for _ in range(repeat):
            for name, fn, arg in (("naive", naive, plans), ("bound", bound, jobs)):
                out = Path(tempfile.mkdtemp(dir=tmp))
                best_baselines[name, scale] = min(best_baselines.get((name, scale), np.inf), timed(fn, arg, out))
                shutil.rmtree(out)
            for fmt in formats:
                out, module = tmp / f"{fmt}-{scale:g}", exporters[fmt]
                options = module.Options(image=image)
                export_s = timed(lambda: export(capture, module, out, options, overwrite=True, thresholds=None))
                # the check as the command runs it, inside the export (overlays drawn on the stage's previews)
                check_s = check_seconds(export(capture, module, out, options, overwrite=True))
                bare_s = check_seconds(export(capture, module, out, options, overwrite=True, overlays=False))
                old = best_exports.get((fmt, scale), (np.inf,) * 3)
                best_exports[fmt, scale] = tuple(min(a, b) for a, b in zip(old, (export_s, check_s, bare_s)))
                shutil.rmtree(out)
    return PerCore(baselines={key: n / t for key, t in best_baselines.items()},
                   exports={key: (n / t[0], t[1] / t[0], t[2] / t[0]) for key, t in best_exports.items()})


def dense_vs_light(capture: Capture, dense_mesh: Path, formats: list[str], tmp: Path, repeat: int
                   ) -> dict[tuple[str, str], tuple[float, float]]:
    """Seconds (export, export + check) at scale 1 with the light and the dense mesh, best of `repeat`;
    nerf also with --masks --depth (its products rendered from the full mesh)."""
    exporters = available()
    variants: list[tuple[str, dict[str, bool]]] = [(fmt, {}) for fmt in formats]
    variants += [("nerf", {"masks": True, "depth": True})] if "nerf" in formats else []
    best: dict[tuple[str, str], tuple[float, float]] = {}
    for _ in range(repeat):
        for fmt, extra in variants:
            for label, mesh in (("light", capture.mesh), ("dense", dense_mesh)):
                module, out = exporters[fmt], tmp / f"dense-{fmt}"
                options = module.Options(image=ImageOptions(jpeg_quality=QUALITY), **extra)
                start = time.perf_counter()
                check_s = check_seconds(export(replace(capture, mesh=mesh), module, out, options, overwrite=True))
                total_s = time.perf_counter() - start
                key = (fmt + "".join(f" --{k}" for k in extra), label)
                old = best.get(key, (np.inf, np.inf))
                best[key] = (min(old[0], total_s - check_s), min(old[1], total_s))
                shutil.rmtree(out)
    return best


def run_command(fmt: str, root: Path, out: Path, jobs: int, mesh_root: Path | None = None
                ) -> tuple[float, list[int], int]:
    """Wall time of `fsconvert to-<fmt>`, the peak RSS (bytes) of each worker process, and the exit code."""
    cmd = [sys.executable, "-m", "fsconvert.cli", f"to-{fmt}", str(root), "-o", str(out), "-q", "-j", str(jobs)]
    cmd += ["--mesh-root", str(mesh_root)] if mesh_root else []
    env = {k: v for k, v in os.environ.items() if k not in ("LP_NUM_THREADS", "OMP_NUM_THREADS")}
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, env=env)  # its default: one thread per worker
    peaks: dict[int, int] = {}
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            for pid in [proc.pid, *_children(proc.pid)]:
                peaks[pid] = max(peaks.get(pid, 0), _vm_hwm(pid))
            stop.wait(0.1)

    watcher = threading.Thread(target=poll)
    watcher.start()
    code = proc.wait()
    wall = time.perf_counter() - start
    stop.set()
    watcher.join()
    # with 1 job the command itself is the worker; with more, its spawned children are
    workers = [peaks[proc.pid]] if jobs == 1 else [v for pid, v in peaks.items() if pid != proc.pid and v > 0]
    shutil.rmtree(out, ignore_errors=True)
    return wall, sorted(workers, reverse=True)[:jobs], code


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _vm_hwm(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def fingerprint_cost(root: Path) -> tuple[float, float]:
    """Milliseconds per tuple: the record's fingerprint (stat), and sha256 of every image instead."""
    tuple_dir = root / "images" / SUBJECTS[0] / "1_neutral"
    mesh = root / "models" / SUBJECTS[0] / "1_neutral.ply"
    options = available()["facescape"].Options()
    stat_s = timed(lambda: [fingerprint(tuple_dir, mesh, "facescape", options, False, Thresholds(), True)
                            for _ in range(20)]) / 20
    hash_s = timed(lambda: [hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(tuple_dir.glob("*.jpg"))])
    return stat_s * 1e3, hash_s * 1e3


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="12 views of 2172×1448 per tuple (a few minutes)")
    parser.add_argument("--formats", help="comma-separated exporters (default: all)")
    parser.add_argument("--repeat", type=int, help="rounds of the per-core timings, best counts (default 2; quick 1)")
    parser.add_argument("--sections", default=",".join(SECTIONS),
                        help=f"comma-separated parts to run (default: all of {','.join(SECTIONS)})")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "fsconvert-bench-batch")
    args = parser.parse_args()
    views, unique, long_side = (12, 4, 2172) if args.quick else (60, 6, 4344)
    repeat = args.repeat or (1 if args.quick else 2)
    formats = args.formats.split(",") if args.formats else list(available())
    sections = args.sections.split(",")
    if unknown := set(sections) - set(SECTIONS):
        parser.error(f"unknown sections {sorted(unknown)}: choose from {','.join(SECTIONS)}")
    root = dataset(args.cache, views, unique, long_side)
    capture = load_capture(root / "images" / SUBJECTS[0] / "1_neutral")
    dense_mesh = root / DENSE / SUBJECTS[0] / "1_neutral.ply"
    w, h = max(v.camera.size for v in capture.views)
    cores = os.cpu_count() or 1
    cv2.setNumThreads(1)
    print(f"{len(SUBJECTS)} tuples × {views} views of {w}×{h} (hard-linked from {unique - 1} rendered), "
          f"{cores} cores, OpenCV {cv2.__version__}; load average {_load()}")

    with tempfile.TemporaryDirectory() as tmp:
        if "per-core" in sections:
            rates = per_core(capture, formats, Path(tmp), repeat)
            print_per_core(rates, formats)
        elif "machine" in sections:  # its ratio needs the one-core bound only
            rates = per_core(capture, [], Path(tmp), repeat, scales=(1.0,))
        if "dense" in sections:
            print_dense(capture, dense_mesh, formats, Path(tmp), repeat)
        if "machine" in sections:
            print_machine(root, views, [f for f in WHOLE_MACHINE if f in formats], rates.baselines["bound", 1.0],
                          Path(tmp))
    if "fingerprint" in sections:
        stat_ms, hash_ms = fingerprint_cost(root)
        print(f"resume fingerprint per tuple: {stat_ms:.2f} ms (params.json sha256 + image stat) vs {hash_ms:.0f} ms "
              f"to hash the {views} images; load average now {_load()}")


def print_per_core(rates: PerCore, formats: list[str]) -> None:
    print("\nper core (1 process, 1 OpenCV and 1 render thread), images/s; check = check time / export time,"
          " with overlays (the default) / without (--overlays none)")
    print(f"{'':>10}  {'scale 1':>8}  {'÷ bound':>14}  {'scale 1/4':>9}  {'÷ naive':>14}  "
          f"{'check at 1':>21}  {'check at 1/4':>21}")
    for name in ("naive", "bound"):
        print(f"{name:>10}  {rates.baselines[name, 1.0]:>8.2f}  {'':>14}  {rates.baselines[name, 0.25]:>9.2f}")
    for fmt in formats:
        (r1, *c1), (r4, *c4) = rates.exports[fmt, 1.0], rates.exports[fmt, 0.25]
        b, nv = r1 / rates.baselines["bound", 1.0], r4 / rates.baselines["naive", 0.25]
        checks = "  ".join(" / ".join(f"{100 * x:>3.0f} % {verdict(x <= 0.15)}" for x in c) for c in (c1, c4))
        print(f"{fmt:>10}  {r1:>8.2f}  {b:>8.2f}× {verdict(b >= 0.85)}  {r4:>9.2f}  {nv:>8.2f}× "
              f"{verdict(nv >= 3)}  {checks}")
    print(f"load average {_load()}")


def print_dense(capture: Capture, dense_mesh: Path, formats: list[str], tmp: Path, repeat: int) -> None:
    assert capture.mesh is not None  # the dataset's light mesh
    dense_faces = len(load_mesh(dense_mesh).faces)
    light_faces = len(load_mesh(capture.mesh).faces)
    times = dense_vs_light(capture, dense_mesh, formats, tmp, repeat)
    print(f"\ndense mesh ({dense_faces} faces) against the light one ({light_faces}), scale 1, one core, seconds")
    print(f"{'':>24}  {'export light':>12}  {'dense':>7}  {'ratio':>12}  {'+ check light':>13}  {'dense':>7}  "
          f"{'ratio':>12}")
    for name in dict.fromkeys(k[0] for k in times):
        (el, cl), (ed, cd) = times[name, "light"], times[name, "dense"]
        print(f"{name:>24}  {el:>12.2f}  {ed:>7.2f}  {ed / el:>5.2f}× {verdict(ed / el <= 1.25)}  {cl:>13.2f}  "
              f"{cd:>7.2f}  {cd / cl:>5.2f}× {verdict(cd / cl <= 1.25)}")
    print(f"load average {_load()}")


def print_machine(root: Path, views: int, formats: list[str], bound_rate: float, tmp: Path) -> None:
    cores = os.cpu_count() or 1
    images = len(SUBJECTS) * views
    machine_bound = parallel_bound(root / "images" / SUBJECTS[0] / "1_neutral", cores, tmp)
    print(f"\nthe OpenCV bound at scale 1 in {cores} processes at once: {machine_bound:.2f} images/s = "
          f"{machine_bound / (cores * bound_rate):.2f}× ({cores} × the one-core bound {bound_rate:.2f})")
    print(f"whole machine, `fsconvert to-<format>` on {len(SUBJECTS)} tuples (export + check), one thread per "
          f"worker; images/s with {cores} workers ÷ ({cores} × the one-core bound) and "
          f"÷ ({cores} × the same command with 1 worker)")
    peaks = []
    for fmt in formats:
        t1, rss1, code1 = run_command(fmt, root, tmp / "j1", 1)
        tn, rssn, coden = run_command(fmt, root, tmp / "jn", cores)
        _, rssd, coded = run_command(fmt, root, tmp / "jd", cores, root / DENSE)
        machine, scaling = images / tn / (cores * bound_rate), t1 / tn / cores
        peaks += rss1 + rssn + rssd
        mb = ", ".join(f"{r / 2**20:.0f}" for r in rssn + rssd)
        print(f"{fmt:>10}  1 worker {t1:6.1f} s, {cores} workers {tn:6.1f} s ({images / tn:5.2f} images/s): "
              f"{machine:.2f}× bound {verdict(machine >= 0.85)} ({images / tn / machine_bound:.2f}× the bound in "
              f"{cores} processes), {scaling:.2f}× one core {verdict(scaling >= 0.85)};"
              f" peak RSS per worker {mb} MB (light, dense)"
              + ("" if code1 == coden == coded == 0 else f"  (exit codes {code1}, {coden}, {coded})"))
    if peaks:
        print(f"peak RSS per worker: max {max(peaks) / 2**20:.0f} MB {verdict(max(peaks) < 700 * 2**20)}; "
              f"load average {_load()}")


def _load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


if __name__ == "__main__":
    main()
