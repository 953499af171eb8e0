"""The `fsconvert` command line: every `to-<format>` command is generated from the settings dataclasses
(`fsconvert.settings`: `Conversion`, `CheckSettings`; `ImageOptions`; the format's `Options`)."""

from __future__ import annotations

import argparse
import functools
import os
import signal
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any, NamedTuple

from tqdm import tqdm

from exporters import available, program_names

from . import __version__
from .alignment import read_rt_scale_dict
from .check import check_export, format_check
from .datasetrun import run_dataset, summary_text
from .engines import require
from .errors import FsconvertError, InputError
from .export import staging
from .imageplan import ImageOptions
from .info import describe, plot_tuple
from .job import TupleJob, TupleResult, exit_code
from .loader import IMAGE_EXT, TupleRef, is_tuple_dir, iter_dataset, parse_exps
from .options import add_arguments, build, from_args
from .protocol import read_manifest
from .runpage import write_run_page
from .settings import (
    CHECKS,
    CONFIG_EXAMPLE,
    IMAGES,
    AlignTo,
    CheckSettings,
    Conversion,
    Run,
    Selection,
    Subset,
    load_config,
    positive_int,
)
from .shards import assignment, describe_shards
from .status import now, status, write_summary
from .threads import limit_threads, stop_on_signals, stop_signal


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
    p.add_argument("--shards", type=positive_int, required=True, help="number of shards N")
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
    p.add_argument("--reader", choices=program_names(),
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
    selection, frame = Selection(**from_args(args, Selection, "")), AlignTo(**from_args(args, AlignTo, ""))
    print(describe(args.path, mesh_root=selection.mesh_root, ids=selection.ids, exps=selection.exps,
                   align=frame.align, units=frame.unit))
    if args.plot is not None:
        plot_tuple(args.path, args.plot, mesh_root=selection.mesh_root, align=frame.align, units=frame.unit)
        print(f"wrote {args.plot}")
    return 0


def _plan_command(args: argparse.Namespace) -> int:
    subset = Subset(**from_args(args, Subset, ""))
    print(describe_shards(_weights(_refs(args.path, subset.ids, subset.exps)), args.shards, listing=args.list))
    return 0


def _status(args: argparse.Namespace) -> int:
    report, complete = status(args.out)
    print(report)
    return 0 if complete else 1


def _sample(args: argparse.Namespace) -> int:
    from .synthetic import make_sample  # trimesh and pyrender: ~1 s that the other commands do not pay

    with staging(args.out, args.overwrite) as tmp:
        make_sample(tmp, subjects=tuple(str(i + 1) for i in range(args.subjects)), expressions=tuple(args.exps),
                    n_views=args.views, long_side=args.long_side, seed=args.seed)
    print(f"wrote {args.out}/images and {args.out}/models")
    return 0


def _check(args: argparse.Namespace) -> int:
    settings = CheckSettings(**from_args(args, CheckSettings, "check"))
    report = check_export(args.export, settings.thresholds, overlays=settings.overlay_policy(single=True),
                          reader=args.reader)
    print(format_check(report))
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

    jobs: list[TupleJob]
    """`fsconvert.job.TupleJob`s."""
    root: Path
    """The output folder (of the dataset, or of the one tuple)."""
    single: bool
    """The input is one tuple folder (not a dataset)."""
    selection: dict[str, int]
    """Every selected tuple of the dataset → its shard index (0 without --shard); only `jobs` run here."""


def _refs(path: Path, ids: set[int] | None, exps: list[str] | None) -> list[TupleRef]:
    refs = list(iter_dataset(path, ids=ids, exps=exps))
    if not refs:
        selected = ids is not None or exps is not None
        raise InputError("no tuple matches --ids/--exps" if selected
                         else "no tuples here (expected IMGS_ROOT/<id>/<exp>/params.json)", file=path)
    return refs


def _weights(refs: list[TupleRef]) -> list[tuple[str, int]]:
    """(name, image count) of dataset tuples, what shards are balanced by."""
    return [(r.name, sum(1 for _ in r.path.glob(f"*{IMAGE_EXT}"))) for r in refs]


def _plan(run: Run) -> Plan:
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
    limit_threads(threads)  # here and in every worker process (they inherit the environment)

    plans = [_plan(r) for r in runs]
    first = runs[0].conversion
    require(first.engine, first.address)
    engine: dict[str, Any] = dict(workers=jobs, engine=first.engine, address=first.address)
    todo = [job for p in plans for job in p.jobs]
    if len(plans) == 1 and plans[0].single:
        (result,) = run_dataset(todo, progress=not quiet, threads=threads, **engine)
        return _report_tuple(result, runs[0].fmt)

    def echo(r: TupleResult) -> None:
        if r.status == "failed":
            tqdm.write(f"fsconvert: {r.name}: {r.reason}", file=sys.stderr)
        elif r.check_passed is False and r.check_text:
            tqdm.write(f"{r.name}: check failed\n{r.check_text}", file=sys.stderr)

    started, start = now(), time.perf_counter()
    for p in plans:
        write_summary(p.root, first.shard, p.selection, p.jobs, engine=first.engine, started=started)
    results = run_dataset(todo, progress=not quiet, on_result=echo, threads=threads, **engine)
    seconds = time.perf_counter() - start
    done, pages = 0, []
    for p in plans:
        mine = results[done:done + len(p.jobs)]
        write_summary(p.root, first.shard, p.selection, p.jobs, engine=first.engine, started=started,
                      results=mine, seconds=seconds)
        pages.append(write_run_page(p.root, mine, first.shard))
        done += len(p.jobs)
    print(("" if first.shard is None else f"shard {first.shard}: ") + summary_text(results, seconds))
    print("report: " + ", ".join(map(str, pages)))
    return exit_code(results)


def _report_tuple(r: TupleResult, fmt: str) -> int:
    """One tuple folder: today's messages and exit codes."""
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
        if r.check_text:
            print(r.check_text)  # it lists the export's warnings
        else:
            for line in read_manifest(r.out_dir).get("warnings", []):
                print(f"warning: {line}")
    return exit_code([r])


# ---- batch config ---------------------------------------------------------------------------------



def main(argv: list[str] | None = None) -> int:
    with stop_on_signals():  # SIGINT and SIGTERM stop a run cleanly: exit 130 and 143
        try:
            args = build_parser(available()).parse_args(argv)
            code: int = args.func(args)  # the command's exit code
            return code
        except FsconvertError as exc:
            print(f"fsconvert: error: {exc}", file=sys.stderr)
            return exc.exit_code
        except KeyboardInterrupt:
            signum = stop_signal() or signal.SIGINT
            print("fsconvert: interrupted" if signum == signal.SIGINT else "fsconvert: terminated", file=sys.stderr)
            return 128 + signum
        except BrokenPipeError:  # output piped into e.g. `head`, which stopped reading
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 0


if __name__ == "__main__":
    sys.exit(main())
