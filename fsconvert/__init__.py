"""fsconvert: FaceScape multi-view tuples to COLMAP, NeRF and Open3D, with a re-projection proof."""

import os
import zlib  # noqa: F401  (must load before pycolmap: pycolmap 4.2.1 exports its own zlib symbols, and PNG

#              encoding then aborts with "free(): invalid pointer" unless the system zlib came first)
import numpy as np

# Headless rendering: OSMesa samples depth at exact pixel centres (EGL's MSAA blit does not), and it
# must be chosen before pyrender or OpenGL is imported.
os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")
# pyrender 0.1.45 still uses np.infty, removed in numpy 2.
if not hasattr(np, "infty"):
    np.inf = np.inf

__version__ = "0.1.0"
