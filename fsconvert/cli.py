"""The `fsconvert` command line."""

from __future__ import annotations

import argparse
import os
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from types import ModuleType

from . import __version__
from .errors import FsconvertError, InputError
from .imagestage import ImageOptions
from .loader import parse_exps, parse_ids

IMAGES, CHECKS = "images", "check thresholds"
"""Titles of the argument groups that are also the `image:` and `check:` sections of a batch config."""

CONFIG_EXAMPLE = """\
A config holds the options of `fsconvert to-<format>`, spelt with underscores (see its --help):

  input: /data/facescape/fsmview_trainset   # IMGS_ROOT, a folder holding images/, or one tuple
  mesh_root: /data/facescape/fsmview_models # default: the sibling of IMGS_ROOT holding <id>/<exp>.ply
  ids: 1-20,212                             # or a list; default: all
  exps: [1_neutral, 2_smile]                # or "1,2"; default: all
  out: /data/out                            # OUT/<id>/<exp>/ (several formats: OUT/<format>/<id>/<exp>/)
  format: colmap                            # or a list: [colmap, nerf]
  jobs: 8                                   # default: the number of cores
  overwrite: false
  image:                                    # the "images" options
    scale: 0.25
    principal_point: center
  options:                                  # the "<format> options", one section per format
    colmap: {points: 20000}
  check:                                    # the "check thresholds" (top-level no_check: true skips it)
    max_camera_error: 0.01

Relative paths are relative to the config file. Unknown keys are errors.
"""


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _add_selection(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mesh-root", type=Path, help="MESH_ROOT holding <id>/<exp>.ply (default: a sibling of IMGS_ROOT)")
    p.add_argument("--ids", type=parse_ids, help="subjects of a dataset, e.g. 1-20,212")
    p.add_argument("--exps", type=parse_exps, help="expressions of a dataset, e.g. 1_neutral,4_anger (or 1,4)")


def _add_image_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(IMAGES)
    g.add_argument("--distortion", choices=("undistort", "keep"), default="undistort",
                   help="resample to pinhole (default) or keep the lens model and the original JPEGs")
    g.add_argument("--principal-point", choices=("keep", "center"), default="keep",
                   help="after undistortion: keep the principal point, or centre it (3D Gaussian Splatting)")
    size = g.add_mutually_exclusive_group()
    size.add_argument("--scale", type=float, help="output scale in (0, 1], e.g. 0.25")
    size.add_argument("--max-size", type=int, help="scale down so the long side is at most this many pixels")
    g.add_argument("--upright", action="store_true", help="rotate cameras rolled ~180° upright (K and R follow)")
    g.add_argument("--image-format", choices=("jpg", "png"), default=None, help="format of resampled images")
    g.add_argument("--jpeg-quality", type=int, default=95)
    g.add_argument("--link", choices=("hardlink", "symlink", "copy"), default="hardlink",
                   help="how unmodified originals are placed (hardlink falls back to copy)")
    g.add_argument("--allow-corrupt-images", action="store_true",
                   help="export JPEGs whose data the decoder reports as corrupt (a warning per view) instead of failing")


def _image_options(args: argparse.Namespace, default_format: str) -> ImageOptions:
    return ImageOptions(
        undistort=args.distortion == "undistort",
        principal_point=args.principal_point,
        scale=args.scale,
        max_size=args.max_size,
        upright=args.upright,
        image_format=args.image_format or default_format,
        jpeg_quality=args.jpeg_quality,
        link=args.link,
        allow_corrupt_images=args.allow_corrupt_images,
    )


def _add_check_arguments(p: argparse.ArgumentParser) -> None:
    from .check import Thresholds

    t = Thresholds()
    g = p.add_argument_group(CHECKS)
    g.add_argument("--max-camera-error", type=float, default=t.camera_px,
                   help=f"max re-projection difference in exported pixels (default {t.camera_px})")
    g.add_argument("--min-silhouette-iou", type=float, default=t.silhouette_iou,
                   help=f"min IoU of rendered silhouettes (default {t.silhouette_iou})")
    g.add_argument("--max-depth-error", type=float, default=t.depth_rel,
                   help=f"max mean relative z-depth difference of the renders (default {t.depth_rel:g})")
    g.add_argument("--no-overlays", action="store_true", help="do not write mv_result_<view>.jpg overlays")


def _thresholds(args: argparse.Namespace):
    from .check import Thresholds

    return Thresholds(camera_px=args.max_camera_error, silhouette_iou=args.min_silhouette_iou,
                      depth_rel=args.max_depth_error)


def _add_convert_arguments(p: argparse.ArgumentParser, name: str, module: ModuleType) -> argparse.ArgumentParser:
    """The arguments of `to-<name>` (also what a batch config may hold)."""
    p.add_argument("input", type=Path,
                   help="a tuple folder IMGS_ROOT/<id>/<exp>, or a dataset: IMGS_ROOT or a folder holding images/")
    p.add_argument("-o", "--out", type=Path, required=True,
                   help="output folder; for a dataset, each tuple goes to OUT/<id>/<exp>/")
    p.add_argument("--mesh", type=Path, help="the tuple's mesh (default: MESH_ROOT/<id>/<exp>.ply)")
    _add_selection(p)
    p.add_argument("--include-invalid", action="store_true", help="also export views marked valid=false")
    p.add_argument("--overwrite", action="store_true",
                   help="replace existing outputs that are not up to date (up-to-date ones are skipped)")
    p.add_argument("--force", action="store_true", help="convert again even outputs that are up to date")
    p.add_argument("-j", "--jobs", type=_positive_int, default=os.cpu_count() or 1,
                   help="worker processes (default: the number of cores); a dataset runs one tuple per process")
    p.add_argument("--no-check", action="store_true", help="skip the projection check after export")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    _add_image_arguments(p)
    module.add_arguments(p.add_argument_group(f"{name} options"))
    _add_check_arguments(p)
    p.set_defaults(exporter=module, format=name)
    return p


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
    _add_selection(p)

    p = sub.add_parser("sample", help="generate a synthetic FaceScape-format dataset with known truth")
    p.add_argument("out", type=Path)
    p.add_argument("--subjects", type=int, default=1, help="number of subjects")
    p.add_argument("--exps", default="1_neutral", type=parse_exps, help="expression names")
    p.add_argument("--views", type=int, default=8, help="views per tuple")
    p.add_argument("--long-side", type=int, default=1086, help="image long side in pixels")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true")

    p = sub.add_parser("check", help="re-check an export against its source (reprojection + render)")
    p.add_argument("export", type=Path)
    _add_check_arguments(p)

    p = sub.add_parser("batch", help="convert a dataset as a YAML config says (repeatable, resumable runs)",
                       description="Run `fsconvert to-<format>` from a YAML config.", epilog=CONFIG_EXAMPLE,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", type=Path, help="the YAML config")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")

    for name, module in exporters.items():
        p = sub.add_parser(f"to-{name}", help=module.SUMMARY, description=module.SUMMARY)
        _add_convert_arguments(p, name, module)
    return parser


def _run(args: argparse.Namespace, exporters: dict[str, ModuleType]) -> int:
    if args.command == "info":
        from .info import describe

        print(describe(args.path, mesh_root=args.mesh_root, ids=args.ids, exps=args.exps))
        return 0
    if args.command == "sample":
        from .export import staging
        from .synthetic import make_sample

        with staging(args.out, args.overwrite) as tmp:
            make_sample(tmp, subjects=tuple(str(i + 1) for i in range(args.subjects)), expressions=tuple(args.exps),
                        n_views=args.views, long_side=args.long_side, seed=args.seed)
        print(f"wrote {args.out}/images and {args.out}/models")
        return 0
    if args.command == "check":
        from .check import check_export, format_report

        report = check_export(args.export, _thresholds(args), overlays=not args.no_overlays)
        print(format_report(report))
        return 0 if report.passed else 1
    if args.command == "batch":
        runs = load_config(args.config, exporters)
        return _convert(runs, jobs=runs[0].jobs, quiet=args.quiet or runs[0].quiet, config=args.config)
    return _convert([args], jobs=args.jobs, quiet=args.quiet)


# ---- conversion -----------------------------------------------------------------------------------


def _plan(args: argparse.Namespace) -> tuple[list, Path, bool]:
    """The tuple jobs of one `to-<format>` namespace, the folder to lock, and whether it is one tuple."""
    from .batch import TupleJob
    from .loader import is_tuple_dir, iter_dataset

    module = args.exporter
    default_format = getattr(module, "default_image_format", lambda _args: "jpg")(args)
    options = module.options_from_args(args, _image_options(args, default_format))
    common = dict(
        fmt=args.format, options=options, mesh_root=args.mesh_root, include_invalid=args.include_invalid,
        thresholds=None if args.no_check else _thresholds(args), overlays=not args.no_overlays,
        overwrite=args.overwrite, force=args.force,
    )
    if is_tuple_dir(args.input):
        if args.ids is not None or args.exps is not None:
            raise InputError("--ids/--exps select tuples of a dataset, but this is one tuple folder", file=args.input)
        return [TupleJob(args.input, args.out, mesh=args.mesh, **common)], args.out.absolute().parent, True
    if args.mesh is not None:
        raise InputError("--mesh is one tuple's mesh; for a dataset give --mesh-root", file=args.input)
    refs = list(iter_dataset(args.input, ids=args.ids, exps=args.exps))
    if not refs:
        selected = args.ids is not None or args.exps is not None
        raise InputError("no tuple matches --ids/--exps" if selected
                         else "no tuples here (expected IMGS_ROOT/<id>/<exp>/params.json)", file=args.input)
    return [TupleJob(r.path, args.out / r.subject / r.expression, **common) for r in refs], args.out, False


def _convert(runs: list[argparse.Namespace], *, jobs: int, quiet: bool, config: Path | None = None) -> int:
    from tqdm import tqdm

    from .batch import exit_code, output_lock, run, summary

    plans = []
    for args in runs:
        try:
            plans.append(_plan(args))
        except InputError as exc:
            if config is None or exc.file is not None:
                raise
            raise InputError(exc.reason, file=config, key=exc.key) from None
    todo = [job for p in plans for job in p[0]]
    if len(plans) == 1 and plans[0][2]:
        with output_lock(plans[0][1]):
            (result,) = run(todo, workers=jobs, progress=not quiet)
        return _report_tuple(result, runs[0].format)

    def echo(r) -> None:
        if r.status == "failed":
            tqdm.write(f"fsconvert: {r.name}: {r.reason}", file=sys.stderr)
        elif r.check_passed is False and r.report:
            tqdm.write(f"{r.name}: check failed\n{r.report}", file=sys.stderr)

    start = time.perf_counter()
    with ExitStack() as stack:
        for root in sorted({p[1] for p in plans}):
            stack.enter_context(output_lock(root))
        results = run(todo, workers=jobs, progress=not quiet, on_result=echo)
    print(summary(results, time.perf_counter() - start))
    return exit_code(results)


def _report_tuple(r, fmt: str) -> int:
    """One tuple folder: today's messages and exit codes."""
    from .batch import exit_code

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
            print(r.report)
    return exit_code([r])


# ---- batch config ---------------------------------------------------------------------------------


def load_config(path: Path, exporters: dict[str, ModuleType]) -> list[argparse.Namespace]:
    """A YAML config → one `to-<format>` namespace per format, exactly as the command line would give."""
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
    runs = []
    for name in names:
        parser = _add_convert_arguments(argparse.ArgumentParser(prog=f"fsconvert to-{name}"), name, exporters[name])
        groups = {g.title: {a.dest: a for a in g._group_actions} for g in parser._action_groups}
        fmt_group = f"{name} options"
        named = set().union(*(groups.get(t, {}) for t in (IMAGES, CHECKS, fmt_group)))
        general = {a.dest: a for a in parser._actions if a.dest not in named and a.dest != "help"}
        args = parser.parse_args(["INPUT", "-o", "OUT"])
        for section, actions, prefix in (
            (data, general, ""),
            (sections["image"], groups[IMAGES], "image."),
            (sections["check"], groups[CHECKS], "check."),
            (_mapping(sections["options"].get(name), path, f"options.{name}"), groups.get(fmt_group, {}),
             f"options.{name}."),
        ):
            for key, value in section.items():
                if key not in actions:
                    known = ", ".join(sorted(actions)) or "none"
                    raise InputError(f"unknown key (expected one of: {known})", file=path, key=f"{prefix}{key}")
                setattr(args, key, _config_value(actions[key], value, path, f"{prefix}{key}"))
        if len(names) > 1:
            args.out = args.out / name
        runs.append(args)
    return runs


def _mapping(value: object, path: Path, key: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InputError("expected a mapping", file=path, key=key)
    return value


def _config_value(action: argparse.Action, value: object, path: Path, key: str) -> object:
    """A config value converted and validated as the command line would do for `action`."""
    if action.nargs == 0:  # a flag
        if not isinstance(value, bool):
            raise InputError(f"expected true or false, got {value!r}", file=path, key=key)
        return action.const if value else action.default
    if value is None:
        return action.default
    if isinstance(value, list) and action.type in (parse_ids, parse_exps):
        value = ",".join(map(str, value))
    if isinstance(value, (dict, list, bool)):
        raise InputError(f"expected a single value, got {value!r}", file=path, key=key)
    try:
        converted = action.type(str(value)) if action.type else str(value)
    except (ValueError, TypeError, argparse.ArgumentTypeError, InputError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise InputError(f"invalid value {value!r}: {reason}", file=path, key=key) from None
    if action.choices is not None and converted not in action.choices:
        raise InputError(f"expected one of {', '.join(map(str, action.choices))}, got {value!r}", file=path, key=key)
    if isinstance(converted, Path) and not converted.is_absolute():
        converted = path.parent / converted
    return converted


def main(argv: list[str] | None = None) -> int:
    try:
        from exporters import available

        exporters = available()
        args = build_parser(exporters).parse_args(argv)
        return _run(args, exporters)
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
