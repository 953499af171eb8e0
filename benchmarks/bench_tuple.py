"""One tuple on all cores: the image stage's threads (`-j N`) against the bound of the libraries it runs.

On a synthetic full-size tuple (`fsconvert.synthetic.make_sample`, 4344-px views; cached), with OpenCV at one
thread as the command line sets it (`--threads 1`):

- bound 1 / bound N: the stage's own libraries alone on every view: simplejpeg's decode of the JPEG bytes (read
  beforehand, decoded reduced like the stage) into a reused array, one `cv2.remap` with the plan's float maps
  computed beforehand into a reused array, `cv2.imencode` JPEG quality 95 (nothing written); on 1 thread, then
  on all cores at once (a pool of os.cpu_count() threads over the views, each with its own arrays);
- stage 1 / stage N: `write_images` for colmap's default plans (`plan_views` with its default image options),
  workers=1 and workers=os.cpu_count(): maps computed per view, files written;
- command 1 / command N: `fsconvert to-colmap TUPLE -o OUT -j 1` and `-j N` with `--no-check`, end to end
  (a new process: imports, loading, the image stage, points3D, the model files);
- dataset N: `fsconvert to-colmap DATASET -o OUT -j N --no-check` on a dataset of `--dataset` copies of the tuple
  (hard links; 2 × cores + 1 by default: at least twice the cores, and odd, so that with 2 workers the last tuple
  is alone), end to end, as a ratio to the
  all-core bound of its views (every core busy to the last view: the last tuple's views take the cores the
  finished workers gave back), and the seconds the last tuple ran alone (from the second-to-last record to the
  last); `--against DIR` also runs another checkout's package (`git archive REV | tar -x -C DIR`) in each round.

Each round runs them all in turn (a shared machine's load falls on all of them alike) and prints the load average;
the end prints the medians of the rounds, each stage as a ratio to the all-core bound (views/s over views/s, target
≥ 0.85) and the N-worker runs against their own one-worker runs (target ≥ 1.7 on 2 cores).

    .venv/bin/python benchmarks/bench_tuple.py [--views 23] [--repeat 5] [--cache DIR] [--no-command] [--dataset N]
        [--against DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import cv2
import numpy as np
import simplejpeg

import fsconvert  # noqa: F401  (headless rendering set-up)
from exporters import get
from fsconvert import conventions as cv
from fsconvert.imageplan import ViewPlan, plan_views
from fsconvert.imagestage import stems, write_images
from fsconvert.loader import load_capture

LONG_SIDE = 4344
QUALITY = 95
REPO = Path(__file__).resolve().parent.parent


def sample(cache: Path, views: int) -> Path:
    """The cached tuple folder with `views` synthetic full-size views (generated on first use, ~8 s a view)."""
    root = cache / f"{LONG_SIDE}px-{views}views"
    tuple_dir = root / "images" / "1" / "1_neutral"
    if not (tuple_dir / "params.json").is_file():
        from fsconvert.synthetic import make_sample

        print(f"generating {views} synthetic {LONG_SIDE}-px views in {root} (cached for later runs) ...", flush=True)
        cache.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=cache))
        make_sample(tmp, n_views=views, long_side=LONG_SIDE)
        shutil.rmtree(root, ignore_errors=True)
        os.rename(tmp, root)
    return tuple_dir


class Bound:
    """The stage's libraries alone: decode, remap with precomputed maps, encode (inputs prepared outside timing)."""

    def __init__(self, plans: list[ViewPlan]) -> None:
        self.plans = plans
        self.data = [p.view.image.read_bytes() for p in plans]
        self.maps = [tuple(np.ascontiguousarray(m) for m in p.maps()) for p in plans]
        self.local = threading.local()

    def view(self, k: int) -> int:
        plan = self.plans[k]
        w, h = cv.reduced_size(plan.view.camera.size, plan.reduce)
        decoded = getattr(self.local, "decoded", None)
        if decoded is None or decoded.size < w * h * 3:
            decoded = self.local.decoded = np.empty(w * h * 3, np.uint8)
        img = simplejpeg.decode_jpeg(self.data[k], "BGR", min_height=h, min_width=w, buffer=decoded[:w * h * 3])
        shape = (plan.camera.height, plan.camera.width, 3)
        dst = getattr(self.local, "dst", None)
        if dst is None or dst.shape != shape:
            dst = self.local.dst = np.empty(shape, np.uint8)
        mx, my = self.maps[k]
        out = cv2.remap(img, mx, my, cv2.INTER_LINEAR, dst=dst, borderMode=cv2.BORDER_CONSTANT)
        ok, buf = cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, QUALITY])
        assert ok
        return len(buf)

    def run(self, threads: int) -> None:
        if threads == 1:
            for k in range(len(self.plans)):
                self.view(k)
            return
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(self.view, range(len(self.plans))))


def timed(work: Callable[[], object]) -> float:
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


def command(tuple_dir: Path, out: Path, jobs: int) -> None:
    fsconvert_bin = Path(sys.executable).parent / "fsconvert"
    subprocess.run([str(fsconvert_bin), "to-colmap", str(tuple_dir), "-o", str(out), "-j", str(jobs), "--no-check",
                    "-q", "--overwrite", "--force"], check=True, cwd=REPO, stdout=subprocess.DEVNULL)


def make_dataset(tuple_dir: Path, tuples: int, root: Path) -> Path:
    """A dataset of `tuples` copies of the tuple and its mesh, hard-linked (decoding does not depend on the view)."""
    source = tuple_dir.parent.parent.parent
    for i in range(1, tuples + 1):
        (root / "images" / str(i) / tuple_dir.name).mkdir(parents=True)
        for f in tuple_dir.iterdir():
            os.link(f, root / "images" / str(i) / tuple_dir.name / f.name)
        (root / "models" / str(i)).mkdir(parents=True)
        mesh = f"{tuple_dir.name}.ply"
        os.link(source / "models" / tuple_dir.parent.name / mesh, root / "models" / str(i) / mesh)
    return root


def dataset_command(root: Path, out: Path, jobs: int, checkout: Path = REPO) -> float:
    """The dataset run, in a new process of `checkout`'s package; the seconds its last tuple ran alone."""
    shutil.rmtree(out, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "fsconvert.cli", "to-colmap", str(root), "-o", str(out), "-j", str(jobs),
                    "--no-check", "-q"], check=True, cwd=checkout, env={**os.environ, "PYTHONPATH": str(checkout)},
                   stdout=subprocess.DEVNULL)
    done = sorted(p.stat().st_mtime for p in out.glob("*/*/fsconvert/record.json"))
    return done[-1] - done[-2] if len(done) > 1 else 0.0


def load() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--views", type=int, default=23)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "fsconvert-bench-tuple")
    parser.add_argument("--no-command", action="store_true", help="skip the end-to-end command")
    parser.add_argument("--dataset", type=int, metavar="TUPLES",
                        help="tuples in the dataset run (copies of the tuple; default 2 × cores + 1; 0 skips it)")
    parser.add_argument("--against", type=Path, metavar="DIR", help="also the dataset run of the checkout in DIR")
    args = parser.parse_args()

    cores = os.cpu_count() or 1
    if args.dataset is None:
        args.dataset = 2 * cores + 1
    cv2.setNumThreads(1)  # as the command line sets it (--threads 1); the stage's pool sets 1 itself
    tuple_dir = sample(args.cache, args.views)
    plans = plan_views(load_capture(tuple_dir).views, get("colmap").Options().image)
    names = [f"{s}{p.suffix}" for s, p in zip(stems([p.view for p in plans]), plans)]
    sizes = sorted({p.camera.size for p in plans})
    reductions = ",".join(str(r) for r in sorted({p.reduce for p in plans}))
    print(f"{len(plans)} views ({', '.join(f'{w}×{h}' for w, h in sizes)}, decoded at 1/{reductions}), {cores} cores, "
          f"python {sys.version.split()[0]}, OpenCV {cv2.__version__}, simplejpeg {simplejpeg.__version__}")
    bound = Bound(plans)
    work = Path(tempfile.mkdtemp(prefix="bench-tuple-"))

    def stage(workers: int) -> None:
        folder = work / f"stage-{workers}"
        shutil.rmtree(folder, ignore_errors=True)
        write_images(plans, names, folder, workers=workers)

    runs: dict[str, Callable[[], object]] = {
        "bound 1": lambda: bound.run(1),
        f"bound {cores}": lambda: bound.run(cores),
        "stage 1": lambda: stage(1),
        f"stage {cores}": lambda: stage(cores),
    }
    if not args.no_command:
        runs["command -j 1"] = lambda: command(tuple_dir, work / "cmd-1", 1)
        runs[f"command -j {cores}"] = lambda: command(tuple_dir, work / f"cmd-{cores}", cores)
    alone: dict[str, list[float]] = {}
    if args.dataset:
        root = make_dataset(tuple_dir, args.dataset, work / "dataset")

        def dataset_run(name: str, checkout: Path) -> None:
            """`dataset_command` of `checkout`, with the seconds its last tuple ran alone kept under `name`."""
            alone[name].append(dataset_command(root, work / "dataset-out", cores, checkout))

        for name, checkout in [(f"dataset -j {cores}", REPO)] + ([(f"against -j {cores}", args.against)]
                                                                  if args.against else []):
            alone[name] = []
            runs[name] = partial(dataset_run, name, checkout)
    times: dict[str, list[float]] = {name: [] for name in runs}
    loads = []
    try:
        stage(1)  # warm the page cache and the allocator once
        for r in range(args.repeat):
            loads.append(os.getloadavg()[0])
            line = [f"round {r + 1}: load {load()}"]
            for name, fn in runs.items():
                times[name].append(timed(fn))
                line.append(f"{name} {times[name][-1]:.2f} s")
            print(";  ".join(line), flush=True)
        files = sorted((work / "stage-1").iterdir())
        same = all(a.read_bytes() == (work / f"stage-{cores}" / a.name).read_bytes() for a in files)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    med = {name: statistics.median(t) for name, t in times.items()}
    n = len(plans)
    counts = {name: n * (args.dataset if name in alone else 1) for name in med}
    rounds = f"{args.repeat} round" + ("s" if args.repeat != 1 else "")
    print(f"\nmedian of {rounds} (1-min load at the rounds' starts: median {statistics.median(loads):.2f}, "
          f"min {min(loads):.2f}, max {max(loads):.2f}); stage output identical at 1 and {cores} workers: {same}")
    print(f"{'':16}{'seconds':>9}{'views/s':>9}{'÷ bound ' + str(cores):>11}{'÷ own 1':>9}{'last alone s':>14}")
    bound_rate = n / med[f"bound {cores}"]
    for name, t in med.items():
        own = name.replace(f" {cores}", " 1") if name.endswith(f" {cores}") and cores > 1 else None
        ratio = f"{counts[name] / t / bound_rate:11.2f}" if not name.startswith("command") else f"{'':11}"
        speedup = f"{med[own] / t:9.2f}" if own in med else f"{'':9}"
        last = f"{statistics.median(alone[name]):14.2f}" if name in alone else ""
        print(f"{name:16}{t:9.2f}{counts[name] / t:9.2f}{ratio}{speedup}{last}")
    print(f"targets: stage {cores} ÷ bound {cores} ≥ 0.85; stage {cores} ÷ stage 1 ≥ {0.85 * cores:.2f}"
          + (f"; dataset -j {cores} ÷ bound {cores} ≥ 0.85 (end to end: imports, meshes and models included)"
             if args.dataset else ""))


if __name__ == "__main__":
    main()
