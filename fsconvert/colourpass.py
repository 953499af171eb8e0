"""The colour pass of a mesh file's arrays: what pyrender's unlit (FLAT) render of the same mesh draws, pixel for
pixel and depth for depth, without importing pyrender (and with it trimesh and scipy: ~0.95 s per process).

It runs pyrender's own flat shaders (`pyrender/shaders/flat.vert`, `flat.frag`, read from its installed package and
given the defines `Renderer._get_primitive_program` gives them, as `shader_program.ShaderProgram._load` does) on the
vertex layout pyrender uploads (`primitive.Primitive._add_to_context`: interleaved float32 positions and RGBA colours,
`utils.format_color_array`'s u8 / 255, an instanced identity model matrix), with pyrender's GL state
(`renderer.py`: `_forward_pass`, `_configure_forward_pass_viewport`, `_bind_and_draw_primitive`) for the material
`fsconvert.render` gives such a mesh: vertex colours blended (SRC_ALPHA, ONE_MINUS_SRC_ALPHA) onto the background,
or mid grey, opaque, where the mesh has no colours (pyrender-maintained 1.0.1's files). It draws into
the context's own buffer (`DepthContext` of the size pyrender's context would have): llvmpipe rasterises a
framebuffer object, or a buffer of another height, a hair differently (tests/test_render.py compares this pass with
pyrender's render, bit for bit).
"""

from __future__ import annotations

import ctypes
import importlib.util
import re
from pathlib import Path

import numpy as np

from .mesh import Geometry

GREY = (0.5, 0.5, 0.5, 1.0)
"""The base colour of a mesh without colours, here and in the material `fsconvert.render` gives pyrender."""
_FLOAT = 4


def _pyrender_shader(name: str, defines: dict[str, int]) -> str:
    """pyrender's shader `name` as its ShaderProgram loads it: `#ifdef X` / `#ifndef X` made `#if 1` or `#if 0`, and
    every define's name replaced by its value."""
    spec = importlib.util.find_spec("pyrender")  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("pyrender is not installed: its shaders draw colour renders")
    text = (Path(spec.submodule_search_locations[0]) / "shaders" / name).read_text()
    text = re.sub(r"#ifdef\s+([a-zA-Z_][a-zA-Z_0-9]*)\s*$", lambda m: "#if 1" if m[1] in defines else "#if 0", text,
                  flags=re.MULTILINE)
    text = re.sub(r"#ifndef\s+([a-zA-Z_][a-zA-Z_0-9]*)\s*$", lambda m: "#if 0" if m[1] in defines else "#if 1", text,
                  flags=re.MULTILINE)
    for name_, value in defines.items():
        text = text.replace(name_, str(value))
    return text


class ColourPass:
    """Colour renders of one mesh in the current context (made per context: the context's end frees its objects)."""

    def __init__(self, mesh: Geometry) -> None:
        from OpenGL import GL
        from OpenGL.GL import shaders

        self._coloured = mesh.colors is not None
        # the locations pyrender numbers (position 0, then COLOR_0, then the instance matrix) and its material's
        defines = {"COLOR_0_LOC": 1, "INST_M_LOC": 2} if self._coloured else {"INST_M_LOC": 1}
        defines |= {"MAX_DIRECTIONAL_LIGHTS": 0, "MAX_SPOT_LIGHTS": 0, "MAX_POINT_LIGHTS": 0,
                    "USE_METALLIC_MATERIAL": 1}
        self._program = shaders.compileProgram(
            shaders.compileShader(_pyrender_shader("flat.vert", defines), GL.GL_VERTEX_SHADER),
            shaders.compileShader(_pyrender_shader("flat.frag", defines), GL.GL_FRAGMENT_SHADER), validate=False)
        self._uniforms = {name: GL.glGetUniformLocation(self._program, name)
                          for name in ("V", "P", "M", "material.base_color_factor")}
        vertices = np.asarray(mesh.vertices, np.float32)
        sizes = [3]
        if mesh.colors is not None:  # RGBA as pyrender's format_color_array makes it of trimesh's RGBA uint8
            rgba = np.column_stack([mesh.colors, np.full(len(mesh.colors), 255, np.uint8)])
            vertices = np.hstack((vertices, (rgba / 255.0).astype(np.float32)))
            sizes.append(4)
        data = np.ascontiguousarray(vertices.reshape(-1), np.float32)
        indices = np.ascontiguousarray(mesh.faces, np.uint32)
        self._count = indices.size
        self._vao = GL.glGenVertexArrays(1)
        GL.glBindVertexArray(self._vao)
        vertex_buffer, pose_buffer, index_buffer = GL.glGenBuffers(3)
        GL.glBindBuffer(GL.GL_ARRAY_BUFFER, vertex_buffer)
        GL.glBufferData(GL.GL_ARRAY_BUFFER, data.nbytes, data, GL.GL_STATIC_DRAW)
        offset = 0
        for location, size in enumerate(sizes):
            GL.glVertexAttribPointer(location, size, GL.GL_FLOAT, GL.GL_FALSE, _FLOAT * sum(sizes),
                                     ctypes.c_void_p(_FLOAT * offset))
            GL.glEnableVertexAttribArray(location)
            offset += size
        pose = np.ascontiguousarray(np.eye(4).reshape(-1), np.float32)  # one instance, at the identity
        GL.glBindBuffer(GL.GL_ARRAY_BUFFER, pose_buffer)
        GL.glBufferData(GL.GL_ARRAY_BUFFER, pose.nbytes, pose, GL.GL_STATIC_DRAW)
        for column in range(4):
            location = len(sizes) + column
            GL.glEnableVertexAttribArray(location)
            GL.glVertexAttribPointer(location, 4, GL.GL_FLOAT, GL.GL_FALSE, _FLOAT * 16,
                                     ctypes.c_void_p(_FLOAT * 4 * column))
            GL.glVertexAttribDivisor(location, 1)
        GL.glBindBuffer(GL.GL_ELEMENT_ARRAY_BUFFER, index_buffer)
        GL.glBufferData(GL.GL_ELEMENT_ARRAY_BUFFER, indices.nbytes, indices, GL.GL_STATIC_DRAW)
        GL.glBindVertexArray(0)

    def draw(self, view: np.ndarray, projection: np.ndarray, width: int, height: int,
             background: tuple[float, float, float, float]) -> None:
        """Draw into the lower-left `width`×`height` of the context's own buffer, cleared to `background` (RGBA in
        [0, 1]) and depth 1, double-sided; read it back with `read_color_buffer` and
        `fsconvert.depthpass.read_depth_buffer`."""
        from OpenGL import GL

        GL.glBindFramebuffer(GL.GL_FRAMEBUFFER, 0)
        GL.glViewport(0, 0, width, height)
        GL.glEnable(GL.GL_DEPTH_TEST)
        GL.glDepthMask(GL.GL_TRUE)
        GL.glDepthFunc(GL.GL_LESS)
        GL.glDepthRange(0.0, 1.0)
        GL.glClearColor(*background)
        GL.glClear(GL.GL_COLOR_BUFFER_BIT | GL.GL_DEPTH_BUFFER_BIT)
        GL.glEnable(GL.GL_BLEND)
        if self._coloured:  # pyrender's vertex-coloured material blends; its plain one replaces
            GL.glBlendFunc(GL.GL_SRC_ALPHA, GL.GL_ONE_MINUS_SRC_ALPHA)
        else:
            GL.glBlendFunc(GL.GL_ONE, GL.GL_ZERO)
        GL.glPolygonMode(GL.GL_FRONT_AND_BACK, GL.GL_FILL)
        GL.glDisable(GL.GL_CULL_FACE)
        GL.glUseProgram(self._program)
        GL.glUniformMatrix4fv(self._uniforms["V"], 1, GL.GL_TRUE, view.astype(np.float32))
        GL.glUniformMatrix4fv(self._uniforms["P"], 1, GL.GL_TRUE, projection.astype(np.float32))
        GL.glUniformMatrix4fv(self._uniforms["M"], 1, GL.GL_TRUE, np.eye(4, dtype=np.float32))
        GL.glUniform4fv(self._uniforms["material.base_color_factor"], 1,
                        np.array((1.0, 1.0, 1.0, 1.0) if self._coloured else GREY, np.float32))
        GL.glBindVertexArray(self._vao)
        GL.glDrawElementsInstanced(GL.GL_TRIANGLES, self._count, GL.GL_UNSIGNED_INT, ctypes.c_void_p(0), 1)
        GL.glBindVertexArray(0)
        GL.glUseProgram(0)
        GL.glDisable(GL.GL_BLEND)
        GL.glFlush()


def read_color_buffer(width: int, height: int) -> np.ndarray:
    """The lower-left `width`×`height` RGB of the context's own buffer, top row first (pyrender's read_color_buf)."""
    from OpenGL import GL

    GL.glBindFramebuffer(GL.GL_READ_FRAMEBUFFER, 0)
    GL.glReadBuffer(GL.GL_FRONT)
    data = GL.glReadPixels(0, 0, width, height, GL.GL_RGB, GL.GL_UNSIGNED_BYTE)
    return np.flip(np.frombuffer(data, np.uint8).reshape(height, width, 3), axis=0)
