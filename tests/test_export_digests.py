"""Byte-identical regression: the bundled sample exported in every format, with option sets covering
the code paths, must reproduce the stored digest list (relative path → sha256) file for file.

Only what differs per machine and checkout is normalised before hashing, in the files that hold it
(manifest.json, record.json, check.json and the check page index.html): the sample's absolute path becomes
`<SAMPLE>`, and the record's size/mtime stats of the source files become null. Everything else is
compared byte for byte, with the floating-point kernels tests/conftest.py pins (OpenBLAS and numpy pick
theirs by CPU). After a deliberate change of the output, regenerate the list with
`python tests/test_export_digests.py` and say why in the commit message.
"""

from __future__ import annotations

if __name__ == "__main__":  # run as a script: the suite's pinned floating-point kernels, before numpy loads
    import conftest  # noqa: F401

import hashlib  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

import fsconvert  # noqa: F401, E402  (headless rendering set-up)
from fsconvert.cli import main  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SAMPLE_ROOT = REPO / "samples" / "facescape_sample"
SAMPLE = SAMPLE_ROOT / "images" / "1" / "1_neutral"
DIGESTS = Path(__file__).resolve().parent / "data" / "export_digests.json"
PLACEHOLDER = "<SAMPLE>"
NORMALISED = {"manifest.json", "record.json", "check.json", "index.html"}
_STAT = re.compile(r'("(?:stat|[^"/]+\.jpg)": )\[\s*\d+,\s*\d+\s*\]')
"""A record's `[size, mtime_ns]` of the mesh ("stat") and of each source image ("<n>.jpg")."""

CASES: dict[str, list[str]] = {
    "colmap": ["to-colmap"],
    "colmap-text-keep": ["to-colmap", "--text", "--distortion", "keep"],
    "colmap-image-colors-upright-center": ["to-colmap", "--point-colors", "image", "--upright",
                                           "--principal-point", "center", "--max-size", "600"],
    "nerf": ["to-nerf"],
    "nerf-sphere-masks-depth": ["to-nerf", "--normalize", "sphere", "--masks", "--depth"],
    "nerf-keep-masks-depth-scaled-split": ["to-nerf", "--distortion", "keep", "--masks", "--depth", "--scale", "0.5",
                                           "--split", "0.5,0.25,0.25", "--normalize", "cameras"],
    "nerf-blender-masks": ["to-nerf", "--variant", "blender", "--masks"],
    "nerf-blender-upright": ["to-nerf", "--format", "blender", "--upright", "--scale", "0.5"],
    "open3d": ["to-open3d"],
    "open3d-fuse-upright": ["to-open3d", "--fuse", "--upright", "--principal-point", "center", "--scale", "0.5"],
    "facescape": ["to-facescape"],
    "facescape-scale": ["to-facescape", "--scale", "0.5"],
    "facescape-keep-upright": ["to-facescape", "--distortion", "keep", "--upright", "--link", "copy"],
    "neus": ["to-neus"],
    "mvsnet": ["to-mvsnet"],
    "mvsnet-patchmatchnet-shared-32": ["to-mvsnet", "--for", "patchmatchnet", "--intrinsics", "shared",
                                       "--size-multiple", "32", "--max-size", "800"],
    "llff": ["to-llff"],
    "llff-mipnerf-per-view-lossy": ["to-llff", "--for", "mipnerf", "--intrinsics", "per-view", "--allow-lossy"],
    "colmap-3dgs-shared-alpha": ["to-colmap", "--for", "3dgs", "--intrinsics", "shared", "--border", "crop",
                                 "--image-format", "png", "--alpha", "subject", "--upright", "--scale", "0.5"],
}
EXIT = {"llff-mipnerf-per-view-lossy": 1}
"""Cases whose check fails by design: per-view LLFF holds images of several sizes, which its readers stack (the
check names the stop and the views' loss)."""


def export(case: str, out: Path) -> None:
    argv = [*CASES[case][:1], str(SAMPLE), "-o", str(out), "-q", "-j", "1", *CASES[case][1:]]
    assert main(argv) == EXIT.get(case, 0), argv


def digests(out: Path) -> dict[str, str]:
    """Relative path → sha256 of every file below `out`, the machine-dependent fields normalised."""
    root = json.dumps(str(SAMPLE_ROOT.resolve()))[1:-1].encode()
    found = {}
    for path in sorted(p for p in out.rglob("*") if p.is_file()):
        data = path.read_bytes()
        if path.name in NORMALISED:
            data = data.replace(root, PLACEHOLDER.encode())
            if path.name == "record.json":
                data = _STAT.sub(r"\1null", data.decode()).encode()
        found[path.relative_to(out).as_posix()] = hashlib.sha256(data).hexdigest()
    return found


@pytest.fixture(scope="module")
def stored() -> dict[str, dict[str, str]]:
    return json.loads(DIGESTS.read_text())


def test_every_case_is_stored(stored):
    assert sorted(stored) == sorted(CASES)


@pytest.mark.parametrize("case", sorted(CASES))
def test_export_is_byte_identical(case: str, stored, tmp_path: Path, capsys):
    export(case, tmp_path / case)
    capsys.readouterr()
    found, want = digests(tmp_path / case), stored[case]
    assert sorted(found) == sorted(want), "different files"
    changed = [name for name in want if found[name] != want[name]]
    assert not changed, f"{len(changed)} file(s) differ: {', '.join(changed)}"


def test_one_changed_byte_is_caught(tmp_path: Path, stored):
    export("facescape-scale", tmp_path / "out")
    assert digests(tmp_path / "out") == stored["facescape-scale"]
    image = tmp_path / "out" / "0.jpg"
    data = bytearray(image.read_bytes())
    data[len(data) // 2] ^= 1
    image.write_bytes(bytes(data))
    assert digests(tmp_path / "out")["0.jpg"] != stored["facescape-scale"]["0.jpg"]
    manifest = tmp_path / "out" / "fsconvert" / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"scale": 0.5', '"scale": 0.50'))
    assert digests(tmp_path / "out")["fsconvert/manifest.json"] != stored["facescape-scale"]["fsconvert/manifest.json"]


def regenerate() -> None:
    """Write the digest list from the current code (run this file as a script)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        table = {}
        for case in CASES:
            export(case, Path(tmp) / case)
            table[case] = digests(Path(tmp) / case)
    DIGESTS.write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")
    print(f"wrote {DIGESTS}: {sum(map(len, table.values()))} files in {len(table)} exports")


if __name__ == "__main__":
    sys.exit(regenerate())
