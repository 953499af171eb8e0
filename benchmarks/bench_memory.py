"""Peak RSS of every format's mesh work with a dense scan, against issue 27's "< 700 MB per worker".

On bench_png's cached tuple (`--views` 4344×2896 views hard-linked from 6 rendered ones, and the same mesh as a
1.3 M-face dense scan, `fsconvert.synthetic.dense_scan`), each command below runs end to end in a new process
with `--mesh DENSE --no-check`, at `-j 1` and at `-j N` (N = the machine's cores), and its peak RSS (VmHWM, read
every 10 ms) is printed beside its seconds, with that of its PNG encoder processes (`fsconvert.pngprocess`, one
per image thread at `-j N` where the format writes 8-bit PNGs: "+ n × MB", the largest). The options are those
that read or render the mesh: points3D, depth maps, masks, silhouettes for alpha "subject", depth ranges, the
unit sphere, the mesh written out. One process is one dataset worker: a dataset run holds this per worker.

    .venv/bin/python benchmarks/bench_memory.py [--views 12] [--cache DIR] [--only neus,open3d]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from bench_png import LONG_SIDE, helpers_mb, measured, sample

import fsconvert  # noqa: F401  (headless rendering set-up)
from fsconvert.loader import load_capture

TARGET_MB = 700
CASES = {
    "colmap": ["to-colmap"],
    "colmap 3dgs": ["to-colmap", "--for", "3dgs", "--depths", "--alpha", "subject", "--image-format", "png"],
    "nerf": ["to-nerf", "--masks", "--depth"],
    "blender": ["to-nerf", "--variant", "blender", "--alpha", "subject"],
    "mvsnet": ["to-mvsnet", "--depths"],
    "llff": ["to-llff"],
    "nersemble": ["to-nersemble", "--assume-metric-scale", "0.001"],
    "neus": ["to-neus"],
    "neus2": ["to-neus2"],
    "sdfstudio": ["to-sdfstudio", "--masks", "--depth"],
    "open3d": ["to-open3d"],
}
"""Name → the command and its options (`fsconvert COMMAND TUPLE ...`)."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--views", type=int, default=12)
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "fsconvert-bench-png")
    parser.add_argument("--only", help="comma-separated names of CASES")
    args = parser.parse_args()
    cases = {name: CASES[name] for name in args.only.split(",")} if args.only else CASES
    cores = os.cpu_count() or 1
    tuple_dir, dense = sample(args.cache, args.views)
    n = len(load_capture(tuple_dir).views)
    print(f"{n} views of {LONG_SIDE}×{LONG_SIDE * 2 // 3}, the {dense.name} dense scan, {cores} cores, "
          f"python {sys.version.split()[0]}; peak RSS per process (target < {TARGET_MB} MB)")
    print(f"{'':>12}  {'command':<64} {'-j 1':>14} {f'-j {cores}':>28}")
    work = Path(tempfile.mkdtemp(prefix="bench-memory-"))
    over = []
    for name, command in cases.items():
        cells = []
        for jobs in (1, cores):
            seconds, peak, children = measured(command, tuple_dir, work / name, jobs, dense)
            cells.append(f"{seconds:5.1f} s {peak:4d} MB" + (f" + {helpers_mb(children)}" if children else ""))
            if peak >= TARGET_MB:
                over.append(f"{name} -j {jobs}")
        print(f"{name:>12}  {' '.join(command):<64} {cells[0]:>14} {cells[1]:>28}", flush=True)
    print(f"at or over {TARGET_MB} MB: {', '.join(over) if over else 'none'}")


if __name__ == "__main__":
    main()
