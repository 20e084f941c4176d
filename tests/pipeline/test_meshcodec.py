"""pipeline/meshcodec.py: the mesh codec round-trips exactly, with compact dtypes, empty meshes included."""

from __future__ import annotations

import numpy as np
import trimesh

from pipeline.meshcodec import decode_mesh, encode_mesh, meshes_from_bytes, meshes_to_bytes


def _coloured_box() -> trimesh.Trimesh:
    box = trimesh.creation.box()
    box.visual.vertex_colors = np.tile(np.array([[10, 20, 30, 255]], np.uint8), (len(box.vertices), 1))
    return box


def test_encode_uses_compact_dtypes():
    arrays = encode_mesh(_coloured_box())
    assert arrays["vertices"].dtype == np.float32 and arrays["vertices"].shape == (8, 3)
    assert arrays["faces"].dtype == np.int32 and arrays["faces"].shape == (12, 3)
    assert arrays["colors"].dtype == np.uint8 and arrays["colors"].shape == (8, 4)


def test_round_trip_keeps_geometry_and_colours_and_empty_meshes():
    box = _coloured_box()
    blob = meshes_to_bytes([encode_mesh(box), encode_mesh(trimesh.Trimesh())])
    again, empty = (decode_mesh(m) for m in meshes_from_bytes(blob))
    assert np.array_equal(again.faces, box.faces) and np.allclose(again.vertices, box.vertices)
    assert np.array_equal(again.visual.vertex_colors, box.visual.vertex_colors)
    assert len(empty.faces) == 0 and len(empty.vertices) == 0
