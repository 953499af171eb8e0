"""The `fsconvert` command line."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from types import ModuleType

from . import __version__
from .errors import FsconvertError
from .imagestage import ImageOptions
from .loader import parse_exps, parse_ids


def _add_selection(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mesh-root", type=Path, help="MESH_ROOT holding <id>/<exp>.ply (default: a sibling of IMGS_ROOT)")
    p.add_argument("--ids", type=parse_ids, help="subjects of a dataset, e.g. 1-20,212")
    p.add_argument("--exps", type=parse_exps, help="expressions of a dataset, e.g. 1_neutral,4_anger (or 1,4)")


def _add_image_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("images")
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
    )


def _add_check_arguments(p: argparse.ArgumentParser) -> None:
    from .check import Thresholds

    t = Thresholds()
    g = p.add_argument_group("check thresholds")
    g.add_argument("--max-camera-error", type=float, default=t.camera_px,
                   help=f"max re-projection difference in exported pixels (default {t.camera_px})")
    g.add_argument("--min-silhouette-iou", type=float, default=t.silhouette_iou,
                   help=f"min IoU of rendered silhouettes (default {t.silhouette_iou})")
    g.add_argument("--no-overlays", action="store_true", help="do not write mv_result_<view>.jpg overlays")


def _thresholds(args: argparse.Namespace):
    from .check import Thresholds

    return Thresholds(camera_px=args.max_camera_error, silhouette_iou=args.min_silhouette_iou)


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

    for name, module in exporters.items():
        p = sub.add_parser(f"to-{name}", help=module.SUMMARY, description=module.SUMMARY)
        p.add_argument("input", type=Path, help="a tuple folder IMGS_ROOT/<id>/<exp> (or a dataset root)")
        p.add_argument("-o", "--out", type=Path, required=True, help="output folder")
        p.add_argument("--mesh", type=Path, help="the tuple's mesh (default: MESH_ROOT/<id>/<exp>.ply)")
        _add_selection(p)
        p.add_argument("--include-invalid", action="store_true", help="also export views marked valid=false")
        p.add_argument("--overwrite", action="store_true", help="replace an existing output")
        p.add_argument("-j", "--jobs", type=int, default=os.cpu_count() or 1, help="worker processes")
        p.add_argument("--no-check", action="store_true", help="skip the projection check after export")
        p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
        _add_image_arguments(p)
        module.add_arguments(p.add_argument_group(f"{name} options"))
        _add_check_arguments(p)
        p.set_defaults(exporter=module)
    return parser


def _run(args: argparse.Namespace) -> int:
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
    return _export(args)


def _export(args: argparse.Namespace) -> int:
    from .check import check_export, format_report
    from .loader import load_capture

    module = args.exporter
    default_format = getattr(module, "default_image_format", lambda _args: "jpg")(args)
    image = _image_options(args, default_format)
    options = module.options_from_args(args, image)
    capture = load_capture(args.input, mesh=args.mesh, mesh_root=args.mesh_root, include_invalid=args.include_invalid)
    if capture.excluded:
        print(f"{capture.name}: left out {len(capture.excluded)} view(s) marked valid=false: "
              f"{[v.id for v in capture.excluded]}", file=sys.stderr)
    module.write(capture, args.out, options, overwrite=args.overwrite, workers=args.jobs, progress=not args.quiet)
    print(f"wrote {args.out} ({module.NAME}, {len(capture.views)} views)")
    if args.no_check:
        return 0
    report = check_export(args.out, _thresholds(args), overlays=not args.no_overlays)
    print(format_report(report))
    return 0 if report.passed else 1


def main(argv: list[str] | None = None) -> int:
    try:
        from exporters import available

        args = build_parser(available()).parse_args(argv)
        return _run(args)
    except FsconvertError as exc:
        print(f"fsconvert: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("fsconvert: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
