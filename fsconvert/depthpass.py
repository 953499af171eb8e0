"""The depth pass: a mesh drawn into a depth-only framebuffer by a program of its own, on an OSMesa context that
needs no pyrender (`DepthContext`), and its depth buffer read back (`read_depth_buffer`, `linearised`); beside it
the coverage pass, the same mesh drawn into an 8-bit buffer without depth (`read_coverage`): its silhouettes.

`fsconvert.render.Renderer` draws every depth map and silhouette with it, and its colour renders with pyrender; the
memory rules both follow (buffers that grow in steps, heap pages returned when a context goes) live here.
"""

from __future__ import annotations

import ctypes
import math
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

if TYPE_CHECKING:
    import trimesh

    from .mesh import Geometry

BUFFER_STEP = 256
"""The OSMesa buffer grows in steps of this many pixels per side."""


def compare_gl_contexts_by_address() -> None:
    """PyOpenGL 3.1.10 (the version tested) hashes OSMesa/EGL context pointers by address but compares them by
    identity, and returns a new pointer object on every query. pyrender keys its shader cache on the
    current context, so every render missed the cache and compiled a new program, and PyOpenGL's own
    per-context storage grew alike: ~0.8 MB per render, never freed. Equality by address makes the keys
    match, as the hash intends. Still needed with pyrender-maintained 1.0.1 (its renderer.py is 0.1.45's,
    unchanged): without it tests/test_render.py::test_many_renders_do_not_accumulate_memory fails."""
    from OpenGL import _opaque

    def same_address(a: Any, b: object) -> bool:  # a: an _opaque_pointer (ctypes; PyOpenGL is untyped)
        return isinstance(b, _opaque._opaque_pointer) and (
            ctypes.cast(a, ctypes.c_void_p).value == ctypes.cast(b, ctypes.c_void_p).value)

    if "__eq__" not in vars(_opaque._opaque_pointer):
        hash_by_address = _opaque._opaque_pointer.__hash__
        _opaque._opaque_pointer.__eq__ = same_address
        _opaque._opaque_pointer.__hash__ = hash_by_address


def return_freed_memory() -> None:
    """Give the C heap's free pages back to the system (glibc's malloc_trim): Mesa frees a context's buffers and
    the mesh's vertex data into the heap, where they would stay resident through the work that follows (80 MB
    after a 1.3 M-face mesh's 12.6 MP renders, measured). Nothing where the C library has no malloc_trim."""
    trim = getattr(ctypes.CDLL(None), "malloc_trim", None)
    if trim is not None:
        trim(0)


def buffer_side(pixels: int) -> int:
    """`pixels` rounded up to a multiple of BUFFER_STEP."""
    return math.ceil(pixels / BUFFER_STEP) * BUFFER_STEP


class DepthContext:
    """An OSMesa context made without pyrender, with pyrender's attributes (`pyrender/platforms/osmesa.py`): RGBA,
    24-bit depth, an OpenGL 3.3 core profile. Depth passes draw into their own framebuffer (`DepthPass`), so for them
    its own buffer is 1×1, and a process that renders only depth and silhouettes does not import pyrender, trimesh
    and scipy (0.75 s and ~100 MB, measured); colour passes of a mesh file's arrays (`fsconvert.colourpass`) draw
    into its own buffer of `size`, as pyrender's colour renders draw into its context's."""

    def __init__(self, size: tuple[int, int] = (1, 1)) -> None:
        from OpenGL import arrays, osmesa

        compare_gl_contexts_by_address()
        attributes = arrays.GLintArray.asArray([
            osmesa.OSMESA_FORMAT, osmesa.OSMESA_RGBA, osmesa.OSMESA_DEPTH_BITS, 24,
            osmesa.OSMESA_PROFILE, osmesa.OSMESA_CORE_PROFILE,
            osmesa.OSMESA_CONTEXT_MAJOR_VERSION, 3, osmesa.OSMESA_CONTEXT_MINOR_VERSION, 3, 0])
        self._context = osmesa.OSMesaCreateContextAttribs(attributes, None)
        if not self._context:
            raise RuntimeError("OSMesa cannot make an OpenGL 3.3 core context")
        self.size = size
        self._buffer = arrays.GLubyteArray.zeros((size[1], size[0], 4))

    def make_current(self) -> None:
        from OpenGL import GL, osmesa

        if not osmesa.OSMesaMakeCurrent(self._context, self._buffer, GL.GL_UNSIGNED_BYTE, *self.size):
            raise RuntimeError("OSMesa cannot make its context current")

    def delete(self) -> None:
        from OpenGL import osmesa

        osmesa.OSMesaDestroyContext(self._context)


class _Program(NamedTuple):
    """A linked GL program and the locations of its V and P matrices."""

    name: int
    view: int
    projection: int

    @classmethod
    def compiled(cls, vertex: str, fragment: str) -> _Program:
        from OpenGL import GL
        from OpenGL.GL import shaders

        program = shaders.compileProgram(shaders.compileShader(vertex, GL.GL_VERTEX_SHADER),
                                         shaders.compileShader(fragment, GL.GL_FRAGMENT_SHADER), validate=False)
        return cls(program, GL.glGetUniformLocation(program, "V"), GL.glGetUniformLocation(program, "P"))


class _Framebuffer:
    """A framebuffer object with one renderbuffer, grown to the largest width and height drawn (rounded up to
    BUFFER_STEP) and never shrunk: Mesa 22 keeps a deleted buffer's memory until the context goes (~12 MB per
    3 MP size, measured on Debian 12)."""

    def __init__(self, internal_format: int, colour: bool) -> None:
        from OpenGL import GL

        self._format, self._colour = internal_format, colour
        self.name: int = GL.glGenFramebuffers(1)
        self._buffer: int = GL.glGenRenderbuffers(1)
        self._size = (0, 0)

    def bind(self, width: int, height: int) -> None:
        """Bind it, grown first where `width`×`height` does not fit, and draw into its lower-left `width`×`height`."""
        from OpenGL import GL

        GL.glBindFramebuffer(GL.GL_FRAMEBUFFER, self.name)
        if width > self._size[0] or height > self._size[1]:
            self._size = (buffer_side(max(width, self._size[0])), buffer_side(max(height, self._size[1])))
            GL.glDeleteRenderbuffers(1, [self._buffer])
            self._buffer = GL.glGenRenderbuffers(1)
            GL.glBindRenderbuffer(GL.GL_RENDERBUFFER, self._buffer)
            GL.glRenderbufferStorage(GL.GL_RENDERBUFFER, self._format, *self._size)
            attachment = GL.GL_COLOR_ATTACHMENT0 if self._colour else GL.GL_DEPTH_ATTACHMENT
            GL.glFramebufferRenderbuffer(GL.GL_FRAMEBUFFER, attachment, GL.GL_RENDERBUFFER, self._buffer)
            GL.glDrawBuffer(attachment if self._colour else GL.GL_NONE)
            if GL.glCheckFramebufferStatus(GL.GL_FRAMEBUFFER) != GL.GL_FRAMEBUFFER_COMPLETE:
                raise RuntimeError(f"OpenGL cannot make a {self._size[0]}×{self._size[1]} framebuffer")
        GL.glViewport(0, 0, width, height)


class DepthPass:
    """Depth-only and coverage renders of one mesh in the current context: its positions and faces in GL buffers,
    drawn double-sided by programs that write nothing but depth, or 1 wherever a fragment falls, with pyrender's
    own V and P matrices.

    pyrender has no such pass (its DEPTH_ONLY pass culls back faces, which would see through a mesh with
    reversed winding); its colour pass runs the full material shader for every fragment. In llvmpipe
    this pass takes ~0.7× the time (12.6 MP: 0.25 → 0.18 s at 20 000 faces, 0.53 → 0.41 s at 1.3 M).
    Made per context: the context's end frees its objects.
    """

    _VERTEX = """#version 330 core
layout(location = 0) in vec3 position;
uniform mat4 V;
uniform mat4 P;
void main() { gl_Position = P * V * vec4(position, 1.0); }
"""
    _FRAGMENT = """#version 330 core
void main() {}
"""
    _COVERAGE = """#version 330 core
out vec4 covered;
void main() { covered = vec4(1.0); }
"""

    def __init__(self, mesh: trimesh.Trimesh | Geometry) -> None:
        from OpenGL import GL

        self._program = _Program.compiled(self._VERTEX, self._FRAGMENT)
        self._coverage_program: _Program | None = None
        positions = np.ascontiguousarray(mesh.vertices, np.float32)
        indices = np.ascontiguousarray(mesh.faces, np.uint32)
        self._count = indices.size
        self._vao = GL.glGenVertexArrays(1)
        GL.glBindVertexArray(self._vao)
        vertex_buffer, index_buffer = GL.glGenBuffers(2)
        GL.glBindBuffer(GL.GL_ARRAY_BUFFER, vertex_buffer)
        GL.glBufferData(GL.GL_ARRAY_BUFFER, positions.nbytes, positions, GL.GL_STATIC_DRAW)
        GL.glEnableVertexAttribArray(0)
        GL.glVertexAttribPointer(0, 3, GL.GL_FLOAT, GL.GL_FALSE, 0, None)
        GL.glBindBuffer(GL.GL_ELEMENT_ARRAY_BUFFER, index_buffer)
        GL.glBufferData(GL.GL_ELEMENT_ARRAY_BUFFER, indices.nbytes, indices, GL.GL_STATIC_DRAW)
        GL.glBindVertexArray(0)
        self._depth = _Framebuffer(GL.GL_DEPTH_COMPONENT24, colour=False)
        self._coverage: _Framebuffer | None = None

    def draw(self, view: np.ndarray, projection: np.ndarray, width: int, height: int) -> int:
        """Draw into the lower-left `width`×`height` of this pass's depth framebuffer, a 24-bit depth buffer and no
        colour (depth cleared to 1); return it, bound. The context's own buffer would hold a colour texture and
        the caller's colour array besides, ~100 MB at 12.6 MP, that a depth pass never uses."""
        from OpenGL import GL

        self._depth.bind(width, height)
        GL.glEnable(GL.GL_DEPTH_TEST)
        GL.glDepthMask(GL.GL_TRUE)
        GL.glDepthFunc(GL.GL_LESS)
        GL.glDepthRange(0.0, 1.0)
        GL.glColorMask(GL.GL_FALSE, GL.GL_FALSE, GL.GL_FALSE, GL.GL_FALSE)
        GL.glClear(GL.GL_DEPTH_BUFFER_BIT)
        self._draw_mesh(self._program, view, projection)
        GL.glColorMask(GL.GL_TRUE, GL.GL_TRUE, GL.GL_TRUE, GL.GL_TRUE)
        return self._depth.name

    def draw_coverage(self, view: np.ndarray, projection: np.ndarray, width: int, height: int) -> int:
        """Draw into the lower-left `width`×`height` of this pass's coverage framebuffer, 8 bits of one channel and
        no depth buffer (cleared to 0): 255 wherever a fragment falls, clipped as `draw` clips; return it, bound.
        Where `draw` would leave depth below 1 exactly, as long as no fragment's depth reaches 1 (the renderer's
        clip range sees to that), at a quarter of the buffer to read back and no depth to test or write:
        12.6 MP, 20 000 faces, 86 → 55 ms with the read-back."""
        from OpenGL import GL

        if self._coverage is None:
            self._coverage = _Framebuffer(GL.GL_R8, colour=True)
            self._coverage_program = _Program.compiled(self._VERTEX, self._COVERAGE)
        assert self._coverage_program is not None  # made with the framebuffer
        self._coverage.bind(width, height)
        GL.glDisable(GL.GL_DEPTH_TEST)
        GL.glClearColor(0.0, 0.0, 0.0, 0.0)
        GL.glClear(GL.GL_COLOR_BUFFER_BIT)
        self._draw_mesh(self._coverage_program, view, projection)
        return self._coverage.name

    def _draw_mesh(self, program: _Program, view: np.ndarray, projection: np.ndarray) -> None:
        from OpenGL import GL

        GL.glDisable(GL.GL_CULL_FACE)
        GL.glUseProgram(program.name)
        GL.glUniformMatrix4fv(program.view, 1, GL.GL_TRUE, view.astype(np.float32))
        GL.glUniformMatrix4fv(program.projection, 1, GL.GL_TRUE, projection.astype(np.float32))
        GL.glBindVertexArray(self._vao)
        GL.glDrawElements(GL.GL_TRIANGLES, self._count, GL.GL_UNSIGNED_INT, None)
        GL.glBindVertexArray(0)
        GL.glUseProgram(0)
        GL.glFlush()


def read_depth_buffer(out: np.ndarray, first_row: int = 0, framebuffer: int = 0) -> np.ndarray:
    """The depth buffer values (float32 in [0, 1], rows bottom-up) of `framebuffer`'s rows `first_row` (from the
    bottom) on, into n×W `out` (0: the context's own buffer, where colour renders draw)."""
    from OpenGL import GL

    GL.glBindFramebuffer(GL.GL_READ_FRAMEBUFFER, framebuffer)
    GL.glReadBuffer(GL.GL_FRONT if framebuffer == 0 else GL.GL_NONE)
    GL.glReadPixels(0, first_row, out.shape[1], out.shape[0], GL.GL_DEPTH_COMPONENT, GL.GL_FLOAT, out)
    return out


def read_coverage(out: np.ndarray, framebuffer: int) -> np.ndarray:
    """The H×W uint8 `out` read from a coverage `framebuffer` (`DepthPass.draw_coverage`), rows bottom-up."""
    from OpenGL import GL

    GL.glBindFramebuffer(GL.GL_READ_FRAMEBUFFER, framebuffer)
    GL.glReadBuffer(GL.GL_COLOR_ATTACHMENT0)
    # rows of `out` are packed: GL's default pads each to 4 bytes, and would write past the array's end (PyOpenGL
    # sets no alignment where it is given the array)
    GL.glPixelStorei(GL.GL_PACK_ALIGNMENT, 1)
    GL.glReadPixels(0, 0, out.shape[1], out.shape[0], GL.GL_RED, GL.GL_UNSIGNED_BYTE, out)
    return out


def linearised(z: np.ndarray, znear: float, zfar: float) -> np.ndarray:
    """Depth buffer values `z` made z-depth in place (0 for the background), element by element."""
    foreground = z < 1
    z *= np.float32(zfar - znear)
    np.subtract(np.float32(zfar), z, out=z)
    np.divide(np.float32(znear * zfar), z, out=z)
    np.multiply(z, foreground, out=z)
    return z
