"""The `fsconvert` command line: every `to-<format>` command and batch config is generated from
dataclasses (`Conversion`, `ImageOptions`, the format's `Options`, `CheckSettings`; see `fsconvert.options`)."""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from types import ModuleType
from typing import Any, NamedTuple

from . import __version__
from .alignment import DEFAULT_UNITS, UNITS, read_rt_scale_dict
from .check import Thresholds, overlay_policy
from .engines import Engine
from .errors import FsconvertError, InputError
from .imagestage import ImageOptions
from .loader import parse_exps, parse_ids
from .options import add_arguments, build, from_args, from_mapping, option
from .readers import READERS
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


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _overlay_policy(text: str) -> str | int:
    try:
        return overlay_policy(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


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
    jobs: int = option(default_factory=lambda: os.cpu_count() or 1, flags=("-j", "--jobs"), parse=_positive_int,
                       help="worker processes (default: the number of cores); a dataset runs one tuple per process")
    threads: int = option(1, "threads per process for OpenCV, rendering (llvmpipe) and Open3D: -j N uses N cores",
                          parse=_positive_int)
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
    overlays: str | int | None = option(
        None, "which views get a check/mv_result_<view>.jpg overlay: all, none, the failing ones, or the failing "
        f"ones plus N evenly spaced others (default: all for a tuple, {DATASET_OVERLAYS} for a dataset)",
        parse=_overlay_policy, metavar="all|none|failed|N")
    no_overlays: bool = option(False, "the same as --overlays none")

    @property
    def thresholds(self) -> Thresholds:
        return Thresholds(camera_px=self.max_camera_error, silhouette_iou=self.min_silhouette_iou,
                          depth_rel=self.max_depth_error)

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


def _add_convert_arguments(p: argparse.ArgumentParser, name: str, module: ModuleType) -> None:
    add_arguments(p, Conversion, "")
    add_arguments(p.add_argument_group(IMAGES), ImageOptions, "image")
    add_arguments(p.add_argument_group(f"{name} options"), module.Options, "options")
    add_arguments(p.add_argument_group(CHECKS), CheckSettings, "check")
    p.set_defaults(func=functools.partial(_convert_command, fmt=name, module=module))


def build_parser(exporters: dict[str, ModuleType]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fsconvert",
        description="Convert FaceScape multi-view tuples to other 3D formats and prove each conversion "
        "by re-projecting the mesh through the exported cameras.",
    )
    parser.add_argument("--version", action="version", version=f"fsconvert {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("info", help="summarise a tuple or a dataset")
    p.add_argument("path", type=Path, help="a tuple folder (with params.json) or a dataset root")
    add_arguments(p, Selection, "")
    add_arguments(p, AlignTo, "")
    p.add_argument("--plot", type=Path, metavar="PNG",
                   help="also draw a tuple's camera rig (source cameras around the mesh) into this PNG")
    p.set_defaults(func=_info)

    p = sub.add_parser("plan", help="print how --shard I/N splits the selected tuples of a dataset")
    p.add_argument("path", type=Path, help="a dataset root (IMGS_ROOT, or a folder holding images/)")
    add_arguments(p, Subset, "")
    p.add_argument("--shards", type=_positive_int, required=True, help="number of shards N")
    p.add_argument("--list", action="store_true", help="also print each tuple with its shard index")
    p.set_defaults(func=_plan_command)

    p = sub.add_parser("status", help="what a dataset run into OUT has done: done, running, failed, stale, missing")
    p.add_argument("out", type=Path, help="the OUT folder of a dataset conversion")
    p.set_defaults(func=_status)

    p = sub.add_parser("sample", help="generate a synthetic FaceScape-format dataset with known truth")
    p.add_argument("out", type=Path)
    p.add_argument("--subjects", type=int, default=1, help="number of subjects")
    p.add_argument("--exps", default="1_neutral", type=parse_exps, help="expression names")
    p.add_argument("--views", type=int, default=8, help="views per tuple")
    p.add_argument("--long-side", type=int, default=1086, help="image long side in pixels")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=_sample)

    p = sub.add_parser("check", help="re-check an export against its source (reprojection + render)")
    p.add_argument("export", type=Path)
    p.add_argument("--reader", choices=tuple(READERS),
                   help="judge the export by this program's loading rules (default: the program its format is "
                   "meant for)")
    add_arguments(p.add_argument_group(CHECKS), CheckSettings, "check")
    p.set_defaults(func=_check)

    p = sub.add_parser("batch", help="convert a dataset as a YAML config says (repeatable, resumable runs)",
                       description="Run `fsconvert to-<format>` from a YAML config.", epilog=CONFIG_EXAMPLE,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", type=Path, help="the YAML config")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=functools.partial(_batch, exporters=exporters))

    for name, module in exporters.items():
        _add_convert_arguments(sub.add_parser(f"to-{name}", help=module.SUMMARY, description=module.SUMMARY),
                               name, module)
    return parser


# ---- commands -------------------------------------------------------------------------------------


def _info(args: argparse.Namespace) -> int:
    from .info import describe, plot_tuple

    selection, frame = Selection(**from_args(args, Selection, "")), AlignTo(**from_args(args, AlignTo, ""))
    print(describe(args.path, mesh_root=selection.mesh_root, ids=selection.ids, exps=selection.exps,
                   align=frame.align, units=frame.unit))
    if args.plot is not None:
        plot_tuple(args.path, args.plot, mesh_root=selection.mesh_root, align=frame.align, units=frame.unit)
        print(f"wrote {args.plot}")
    return 0


def _plan_command(args: argparse.Namespace) -> int:
    from .shards import describe

    subset = Subset(**from_args(args, Subset, ""))
    print(describe(_weights(_refs(args.path, subset.ids, subset.exps)), args.shards, listing=args.list))
    return 0


def _status(args: argparse.Namespace) -> int:
    from .status import status

    report, complete = status(args.out)
    print(report)
    return 0 if complete else 1


def _sample(args: argparse.Namespace) -> int:
    from .export import staging
    from .synthetic import make_sample

    with staging(args.out, args.overwrite) as tmp:
        make_sample(tmp, subjects=tuple(str(i + 1) for i in range(args.subjects)), expressions=tuple(args.exps),
                    n_views=args.views, long_side=args.long_side, seed=args.seed)
    print(f"wrote {args.out}/images and {args.out}/models")
    return 0


def _check(args: argparse.Namespace) -> int:
    from .check import check_export, format_report

    settings = CheckSettings(**from_args(args, CheckSettings, "check"))
    report = check_export(args.export, settings.thresholds, overlays=settings.overlay_policy(single=True),
                          reader=args.reader)
    print(format_report(report))
    return 0 if report.passed else 1


def _batch(args: argparse.Namespace, exporters: dict[str, ModuleType]) -> int:
    runs = load_config(args.config, exporters)
    first = runs[0].conversion
    return _convert(runs, jobs=first.jobs, threads=first.threads, quiet=args.quiet or first.quiet)


def _convert_command(args: argparse.Namespace, fmt: str, module: ModuleType) -> int:
    options = build(module.Options, from_args(args, module.Options, "options"), from_args(args, ImageOptions, "image"))
    run = Run(fmt, Conversion(**from_args(args, Conversion, "")), options,
              CheckSettings(**from_args(args, CheckSettings, "check")))
    c = run.conversion
    return _convert([run], jobs=c.jobs, threads=c.threads, quiet=c.quiet)


# ---- conversion -----------------------------------------------------------------------------------


class Plan(NamedTuple):
    """The tuple jobs of one `Run`."""

    jobs: list
    """`fsconvert.batch.TupleJob`s."""
    root: Path
    """The output folder (of the dataset, or of the one tuple)."""
    single: bool
    """The input is one tuple folder (not a dataset)."""
    selection: dict[str, int]
    """Every selected tuple of the dataset → its shard index (0 without --shard); only `jobs` run here."""


def _refs(path: Path, ids: set[int] | None, exps: list[str] | None) -> list:
    from .loader import iter_dataset

    refs = list(iter_dataset(path, ids=ids, exps=exps))
    if not refs:
        selected = ids is not None or exps is not None
        raise InputError("no tuple matches --ids/--exps" if selected
                         else "no tuples here (expected IMGS_ROOT/<id>/<exp>/params.json)", file=path)
    return refs


def _weights(refs: list) -> list[tuple[str, int]]:
    """(name, image count) of dataset tuples, what shards are balanced by."""
    from .loader import IMAGE_EXT

    return [(r.name, sum(1 for _ in r.path.glob(f"*{IMAGE_EXT}"))) for r in refs]


def _plan(run: Run) -> Plan:
    from .batch import TupleJob
    from .loader import is_tuple_dir
    from .shards import assignment

    c = run.conversion
    single = is_tuple_dir(c.input)
    common = dict(
        fmt=run.fmt, options=run.options, mesh_root=c.mesh_root, include_invalid=c.include_invalid,
        thresholds=None if c.no_check else run.check.thresholds, overlays=run.check.overlay_policy(single),
        overwrite=c.overwrite, force=c.force, align=c.align, units=c.unit,
    )
    if c.align is not None:
        read_rt_scale_dict(c.align)  # a damaged dict fails here, before any tuple is written
    if single:
        for given, what in ((c.ids is not None or c.exps is not None, "--ids/--exps select tuples"),
                            (c.shard is not None, "--shard splits the tuples")):
            if given:
                raise InputError(f"{what} of a dataset, but this is one tuple folder", file=c.input)
        return Plan([TupleJob(source=c.input, out_dir=c.out, mesh=c.mesh, **common)], c.out, True, {})
    if c.mesh is not None:
        raise InputError("--mesh is one tuple's mesh; for a dataset give --mesh-root", file=c.input)
    refs = _refs(c.input, c.ids, c.exps)
    shard_of = assignment(_weights(refs), c.shard.count) if c.shard else {r.name: 0 for r in refs}
    mine = [r for r in refs if c.shard is None or shard_of[r.name] == c.shard.index]
    return Plan([TupleJob(source=r.path, out_dir=c.out / r.subject / r.expression, **common) for r in mine], c.out,
                False, shard_of)


def _convert(runs: list[Run], *, jobs: int, threads: int, quiet: bool) -> int:
    from tqdm import tqdm

    from .batch import exit_code, run, summary
    from .engines import require
    from .report import write_run_report
    from .status import now, write_summary
    from .threads import limit_threads

    limit_threads(threads)  # here and in every worker process (they inherit the environment)

    plans = [_plan(r) for r in runs]
    first = runs[0].conversion
    require(first.engine, first.address)
    engine = dict(workers=jobs, engine=first.engine, address=first.address)
    todo = [job for p in plans for job in p.jobs]
    if len(plans) == 1 and plans[0].single:
        (result,) = run(todo, progress=not quiet, threads=threads, **engine)
        return _report_tuple(result, runs[0].fmt)

    def echo(r) -> None:
        if r.status == "failed":
            tqdm.write(f"fsconvert: {r.name}: {r.reason}", file=sys.stderr)
        elif r.check_passed is False and r.report:
            tqdm.write(f"{r.name}: check failed\n{r.report}", file=sys.stderr)

    started, start = now(), time.perf_counter()
    for p in plans:
        write_summary(p.root, first.shard, p.selection, p.jobs, engine=first.engine, started=started)
    results = run(todo, progress=not quiet, on_result=echo, threads=threads, **engine)
    seconds = time.perf_counter() - start
    done, pages = 0, []
    for p in plans:
        mine = results[done:done + len(p.jobs)]
        write_summary(p.root, first.shard, p.selection, p.jobs, engine=first.engine, started=started,
                      results=mine, seconds=seconds)
        pages.append(write_run_report(p.root, mine, first.shard))
        done += len(p.jobs)
    print(("" if first.shard is None else f"shard {first.shard}: ") + summary(results, seconds))
    print("report: " + ", ".join(map(str, pages)))
    return exit_code(results)


def _report_tuple(r, fmt: str) -> int:
    """One tuple folder: today's messages and exit codes."""
    from .batch import exit_code
    from .protocol import read_manifest

    if r.status == "failed":
        print(f"fsconvert: error: {r.reason}", file=sys.stderr)
        return 2
    if r.excluded:
        print(f"{r.name}: left out {len(r.excluded)} view(s) marked valid=false: {list(r.excluded)}", file=sys.stderr)
    if r.status == "skipped":
        check = {None: "not checked", True: "check passed", False: "check FAILED"}[r.check_passed]
        print(f"{r.out_dir}: up to date ({fmt}, {r.views} views, {check}); nothing to do (--force converts again)")
    else:
        print(f"wrote {r.out_dir} ({fmt}, {r.views} views)")
        if r.report:
            print(r.report)  # it lists the export's warnings
        else:
            for line in read_manifest(r.out_dir).get("warnings", []):
                print(f"warning: {line}")
    return exit_code([r])


# ---- batch config ---------------------------------------------------------------------------------


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


def _mapping(value: object, path: Path, key: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InputError("expected a mapping", file=path, key=key)
    return value


def main(argv: list[str] | None = None) -> int:
    try:
        from exporters import available

        args = build_parser(available()).parse_args(argv)
        return args.func(args)
    except FsconvertError as exc:
        print(f"fsconvert: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("fsconvert: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into e.g. `head`, which stopped reading
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
