"""fsconvert: FaceScape multi-view tuples to the formats of other 3D tools, with a proof of every conversion."""

import os

# zlib must load before pycolmap: pycolmap 4.2.1 exports its own zlib symbols, and PNG encoding then aborts
# with "free(): invalid pointer" unless the system zlib came first.
import zlib  # noqa: F401

# Headless rendering: OSMesa samples depth at exact pixel centres (EGL's MSAA blit does not), and it
# must be chosen before pyrender or OpenGL is imported.
os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")

__version__ = "0.1.0"
