"""fsconvert: FaceScape multi-view tuples to COLMAP, NeRF and Open3D, with a re-projection proof."""

import os
import zlib  # noqa: F401  (must load before pycolmap: pycolmap 4.2.1 exports its own zlib symbols, and PNG
#              encoding then aborts with "free(): invalid pointer" unless the system zlib came first)

# Headless rendering: OSMesa samples depth at exact pixel centres (EGL's MSAA blit does not), and it
# must be chosen before pyrender or OpenGL is imported.
os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")

__version__ = "0.1.0"
