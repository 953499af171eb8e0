"""Options dataclasses → flags and config keys: each type's command line and YAML give the same values,
bad values are one-line errors naming the key, image defaults follow the format, manifests round-trip."""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from exporters import nerf
from fsconvert.errors import InputError
from fsconvert.imageplan import ImageOptions
from fsconvert.options import add_arguments, build, check_choices, from_args, from_dict, from_mapping, option, to_dict


@dataclass(frozen=True)
class Toy:
    image: ImageOptions = field(default_factory=ImageOptions)
    flag: bool = option(False, "a flag")
    count: int = option(3, "an int")
    ratio: float | None = option(None, "an optional float")
    mode: Literal["a", "b"] = option("a", "a choice", aliases=("--kind",), image_defaults={"b": {"image_format": "png"}})
    triple: tuple[float, float, float] | None = option(None, "three numbers")
    where: Path | None = option(None, "a path")
    hidden: int = option(0, cli=False)
    on: bool = option(True, "words for a bool", name="switch", choices={"yes": True, "no": False})
    plain: int = field(default=7, metadata={"help": "field(metadata=...) works too"})


def parse(argv: list[str]) -> dict:
    parser = argparse.ArgumentParser()
    add_arguments(parser, Toy, "options")
    return from_args(parser.parse_args(argv), Toy, "options")


def test_command_line_and_config_give_the_same_values(tmp_path: Path):
    argv = ["--flag", "--count", "5", "--ratio", "0.5", "--kind", "b", "--triple", "0.8,0.1,0.1", "--where", "x",
            "--switch", "no", "--plain", "8"]
    config = {"flag": True, "count": 5, "ratio": 0.5, "mode": "b", "triple": [0.8, 0.1, 0.1], "where": "x",
              "switch": "no", "plain": 8}
    want = {"flag": True, "count": 5, "ratio": 0.5, "mode": "b", "triple": (0.8, 0.1, 0.1), "where": Path("x"),
            "on": False, "plain": 8}
    assert parse(argv) == want
    assert from_mapping(Toy, config, file=tmp_path / "c.yaml") == want
    assert from_mapping(Toy, config, file=tmp_path / "c.yaml", base=tmp_path)["where"] == tmp_path / "x"
    assert from_mapping(Toy, {"triple": "0.8,0.1,0.1"}, file=tmp_path / "c.yaml") == {"triple": (0.8, 0.1, 0.1)}
    assert parse([]) == {} and from_mapping(Toy, {"ratio": None}, file=tmp_path / "c.yaml") == {}


def test_unset_values_keep_the_dataclass_defaults_and_imply_image_defaults():
    assert build(Toy, parse([])) == Toy()
    toy = build(Toy, parse(["--mode", "b"]), {"scale": 0.5})
    assert (toy.mode, toy.image.image_format, toy.image.scale) == ("b", "png", 0.5)
    assert build(Toy, parse(["--mode", "b"]), {"image_format": "jpg"}).image.image_format == "jpg"  # given wins
    blender = build(nerf.Options, {"variant": "blender"}, {})
    assert blender.image == ImageOptions(image_format="png", intrinsics="shared")
    assert nerf.Options(variant="blender").image == blender.image  # the same from Python


@pytest.mark.parametrize("config, message", [
    ({"cont": 1}, "key 'options.toy.cont': unknown key (expected one of: count, flag, mode, plain, ratio, switch, "
                  "triple, where)"),
    ({"hidden": 1}, "key 'options.toy.hidden': unknown key"),
    ({"flag": "yes"}, "key 'options.toy.flag': expected true or false, got 'yes'"),
    ({"count": 1.5}, "key 'options.toy.count': invalid value 1.5: invalid literal for int()"),
    ({"mode": "c"}, "key 'options.toy.mode': expected one of a, b, got 'c'"),
    ({"triple": [1, 2]}, "key 'options.toy.triple': invalid value '1,2': expected 3 comma-separated numbers"),
    ({"count": [1]}, "key 'options.toy.count': expected a single value, got [1]"),
])
def test_config_errors_name_the_key(tmp_path: Path, config: dict, message: str):
    with pytest.raises(InputError) as caught:
        from_mapping(Toy, config, file=tmp_path / "c.yaml", prefix="options.toy.")
    assert str(caught.value).startswith(f"{tmp_path / 'c.yaml'}: ") and message in str(caught.value)


def test_command_line_errors(capsys):
    for argv, message in ((["--mode", "c"], "invalid choice: 'c'"), (["--count", "x"], "invalid int value: 'x'"),
                          (["--triple", "1,2"], "expected 3 comma-separated numbers, got '1,2'")):
        with pytest.raises(SystemExit):
            parse(argv)
        assert message in capsys.readouterr().err


def test_literal_values_are_checked_once_from_the_type():
    with pytest.raises(InputError, match="mode must be one of a, b, got 'c'"):
        check_choices(Toy(mode="c"))
    with pytest.raises(InputError, match="link must be one of hardlink, symlink, copy, got 'cp'"):
        ImageOptions(link="cp")


def test_fields_the_command_line_cannot_express_are_refused():
    @dataclass(frozen=True)
    class Typo:
        value: int = field(default=1, metadata={"halp": "typo"})

    with pytest.raises(TypeError, match=r"Typo.value: unknown metadata \['halp'\]"):
        add_arguments(argparse.ArgumentParser(), Typo, "")

    @dataclass(frozen=True)
    class Stuck:
        on: bool = True  # a store_true flag could never turn it off

    with pytest.raises(TypeError, match="Stuck.on: a flag defaults to False"):
        add_arguments(argparse.ArgumentParser(), Stuck, "")


def test_manifest_form_round_trips():
    options = nerf.Options(image=ImageOptions(scale=0.5, principal_point="center", fov_x=0.3), split=(0.5, 0.25, 0.25))
    data = to_dict(options)
    assert data["split"] == [0.5, 0.25, 0.25] and data["image"]["fov_x"] == 0.3
    assert from_dict(nerf.Options, data) == options
    assert [f.name for f in dataclasses.fields(nerf.Options)][0] == "image"


def test_config_and_command_line_build_the_same_runs(tmp_path: Path):
    from exporters import available
    from fsconvert.cli import build_parser
    from fsconvert.settings import load_config

    exporters = available()
    config = tmp_path / "run.yaml"
    config.write_text("input: data\nout: out\nformat: [colmap, nerf]\njobs: 3\n"
                      "image: {scale: 0.5, principal_point: center, distortion: undistort}\n"
                      "options: {colmap: {points: 2000, text: true}, nerf: {variant: blender, split: [0.5, 0.25, 0.25]}}\n"
                      "check: {max_camera_error: 0.002, no_overlays: true}\n")
    runs = {run.fmt: run for run in load_config(config, exporters)}
    common = ["--scale", "0.5", "--principal-point", "center", "--distortion", "undistort", "-j", "3",
              "--max-camera-error", "0.002", "--no-overlays"]
    for fmt, extra in (("colmap", ["--points", "2000", "--text"]), ("nerf", ["--format", "blender", "--split",
                                                                            "0.5,0.25,0.25"])):
        args = build_parser(exporters).parse_args([f"to-{fmt}", str(tmp_path / "data"), "-o", str(tmp_path / "out"),
                                                   *common, *extra])
        module = exporters[fmt]
        options = build(module.Options, from_args(args, module.Options, "options"),
                        from_args(args, ImageOptions, "image"))
        assert runs[fmt].options == options
        assert runs[fmt].conversion.out == tmp_path / "out" / fmt and runs[fmt].conversion.jobs == 3
        assert runs[fmt].check.thresholds.camera_px == 0.002 and runs[fmt].check.no_overlays
    assert runs["nerf"].options.image.image_format == "png" and runs["colmap"].options.image.image_format == "jpg"
