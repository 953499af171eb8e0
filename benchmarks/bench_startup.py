"""Start-up: how long the command takes before it does any work, and an export before its first image.

Each command runs in a new process, as a user runs it (`python -c "from fsconvert.cli import main; ..."`, what
the `fsconvert` script does), with its bytecode compiled once beforehand into a cache of its own
(`PYTHONPYCACHEPREFIX`, as an installed package has it; `PYTHONDONTWRITEBYTECODE` would compile every module
at every start). Per round, in turn:

- `python -c pass` and `python -c "import numpy"`: the interpreter, and the floor numpy sets;
- `fsconvert --help`, `fsconvert info TUPLE` (the sample tuple: cameras, images' headers, the mesh);
- `fsconvert to-FORMAT TUPLE -o OUT --no-check -q` for each format of `--formats` (default: every one in
  `FORMATS`, their default options): the time until the first image file appears in the staging folder (polled
  every 2 ms; the image is then decoded, remapped and encoded), and until the command ends.

It prints the median (and the fastest) of the rounds and the load average. `--against DIR` times another
checkout's package the same way, round by round beside this one (e.g. `git archive HEAD~1 | tar -x -C DIR`: the
before of a change), and prints the ratio.

    .venv/bin/python benchmarks/bench_startup.py [--repeat 10] [--against DIR] [--formats colmap,nerf,...]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "samples" / "facescape_sample" / "images" / "1" / "1_neutral"
CLI = "import sys; from fsconvert.cli import main; sys.exit(main())"
POLL_S = 0.002
FORMATS: dict[str, tuple[list[str], str]] = {
    "colmap": ([], "images/*"),
    "nerf": ([], "images/*"),
    "neus": ([], "image/*"),
    "neus2": ([], "images/*"),
    "sdfstudio": ([], "*_rgb.*"),
    "llff": ([], "images/*"),
    "nersemble": (["--assume-metric-scale", "0.04"], "*/*/images/*"),
    "mvsnet": ([], "images/*"),
}
"""Per format: what its export of the sample needs besides the defaults (nersemble: a metric scale, as
tests/conftest.py gives it), and where its images go in the export folder."""


def environment(tree: Path, cache: Path) -> dict[str, str]:
    """The environment of a run of `tree`'s package (run in `tree`: `-c` puts the working directory first on
    the path, then PYTHONPATH); bytecode cached in `cache`."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    return env | {"PYTHONPATH": str(tree), "PYTHONPYCACHEPREFIX": str(cache)}


def wall(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, env=env, cwd=env["PYTHONPATH"], stdout=subprocess.DEVNULL, check=True)
    return time.perf_counter() - start


def first_image(env: dict[str, str], out: Path, fmt: str) -> tuple[float, float]:
    """Seconds from launching `to-FMT` until the first image file exists in its staging folder, and until
    it ends."""
    extra, images = FORMATS[fmt]
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", CLI, f"to-{fmt}", str(SAMPLE), "-o", str(out), "--no-check", "-q",
                             *extra], env=env, cwd=env["PYTHONPATH"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    first = None
    while proc.poll() is None:
        if first is None and any(p.is_file() for p in out.parent.glob(f".{out.name}.*.partial/{images}")):
            first = time.perf_counter() - start
        time.sleep(POLL_S)
    done = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"to-{fmt} failed (exit {proc.returncode})")
    return (done if first is None else first), done


def load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=10, help="rounds (default 10)")
    ap.add_argument("--against", type=Path, metavar="DIR", help="also time the package of this checkout")
    ap.add_argument("--formats", default=",".join(FORMATS), help="the exports timed, comma-separated (default: all)")
    args = ap.parse_args()
    formats = args.formats.split(",")
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown:
        ap.error(f"unknown formats {unknown}; known: {', '.join(FORMATS)}")
    trees = [REPO] + ([args.against.resolve()] if args.against else [])
    py = [sys.executable, "-c"]
    commands = {
        "python -c pass": py + ["pass"],
        "python -c 'import numpy' (floor)": py + ["import numpy"],
        "fsconvert --help": py + [CLI, "--help"],
        "fsconvert info TUPLE": py + [CLI, "info", str(SAMPLE)],
    }
    times: dict[tuple[str, Path], list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="fsconvert-bench-startup-") as tmp:
        envs = {tree: environment(tree, Path(tmp) / f"pycache{i}") for i, tree in enumerate(trees)}
        for tree in trees:  # compile every module once, as an installed package has them
            for fmt in formats:
                first_image(envs[tree], Path(tmp) / "warm" / fmt, fmt)
        print(f"{args.repeat} rounds; {os.cpu_count()} cores; load average {load()}", flush=True)
        for _ in range(args.repeat):
            for tree in trees:
                for name, argv in commands.items():
                    times.setdefault((name, tree), []).append(wall(argv, envs[tree]))
                for fmt in formats:
                    first, done = first_image(envs[tree], Path(tmp) / "out" / fmt, fmt)
                    times.setdefault((f"to-{fmt} TUPLE: first image written", tree), []).append(first)
                    times.setdefault((f"to-{fmt} TUPLE: done (--no-check)", tree), []).append(done)
    header = f"{'median s (fastest)':>40}" + "".join(f"  {t.name or str(t):>18}" for t in trees)
    print(header + ("   ratio" if len(trees) == 2 else ""))
    for name in [n for n, t in times if t == REPO]:
        cells = [times[name, t] for t in trees]
        line = f"{name:>40}" + "".join(f"  {statistics.median(c):7.3f} ({min(c):6.3f})" for c in cells)
        if len(trees) == 2:
            line += f"  {statistics.median(cells[0]) / statistics.median(cells[1]):5.2f}×"
        print(line)
    print(f"load average now {load()} (the machine is shared: compare columns of one run, not runs)")


if __name__ == "__main__":
    main()
