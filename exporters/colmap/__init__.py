"""COLMAP workspace: `images/<name>` + `sparse/0/{cameras,images,points3D}.{bin|txt}` + `points3D.ply`.

One COLMAP camera per view (corner-origin principal point); PINHOLE after undistortion, OPENCV or
FULL_OPENCV (k3 ≠ 0) when the lens model is kept. points3D are mesh surface samples with real
tracks: each point is observed by the views whose rendered depth agrees with it, at its projection
through the full output camera. The model is built with pycolmap ≥ 4.0 and written as the legacy
three files (no rigs/frames: every COLMAP reader since 3.x, and read_write_model-style parsers, load
those and any ≥ 3.12 reader recreates the same trivial rigs and frames). `points3D.ply` beside them
(x y z nx ny nz red green blue) initialises 3D Gaussian Splatting.

`--model-format bin|txt|both` (`--text` is `txt`, as it always was): the binary model, COLMAP's text model
(`src/colmap/scene/reconstruction_io_text.cc`: doubles at precision 17, two lines per image, the second
always written), or both side by side, the same model. COLMAP and pycolmap (`Reconstruction::Read`) and 3DGS
(`scene/dataset_readers.py`) read the .bin where both exist; OpenMVS's InterfaceCOLMAP reads the .txt first
(`apps/InterfaceCOLMAP/InterfaceCOLMAP.cpp`, DetermineInputSource; only .txt before OpenMVS 1.1.1), from
`<-i>/sparse/`, PINHOLE cameras only: give it a folder whose `sparse` links to this `sparse/0`.

`--for 3dgs` writes what 3DGS's reader (PINHOLE only, principal point assumed at the centre) reads
without loss: centred principal points and, by default, each view cropped to the largest centred
rectangle with source data in every pixel (`--border crop`; K exact); with `--border keep|cover`
the frame stays and `masks/<image name>.png` (COLMAP's mask naming, 0 = no source data) is written.
`--for 3dgs --depths` adds 3DGS's depth priors for `train.py -d depths`: `depths/<image stem>.png`, the
mesh's inverse depth in 16 bits, and `sparse/0/depth_params.json` {image stem: {"scale", "offset"}}, read as
png / 2**16 × scale + offset = 1/z in the model's units (rule and sources: `depths`).

The programs the check reads an export by (`PROGRAMS`; `fsconvert check --reader`): "colmap" (default),
"3dgs" (the default for `--for 3dgs`; with depth priors, also those, each compared with 1/z of the points3D
its view observes) and "openmvs".
"""

from .layout import MAX_DEPTH_TOLERANCE, NAME, SAMPLE_SEED, SPARSE, require_pycolmap
from .programs import PROGRAMS, read
from .writer import SUMMARY, Options, default_reader, reader_warnings, sample_surface, write

__all__ = ["MAX_DEPTH_TOLERANCE", "NAME", "PROGRAMS", "SAMPLE_SEED", "SPARSE", "SUMMARY", "Options", "default_reader",
           "read", "reader_warnings", "require_pycolmap", "sample_surface", "write"]
