"""pipeline/export.py: GLB upright (Y-up, front +Z), linear COLOR_0, extras, valid for a second reader
(pygltflib); OBJ/PLY on request; decimation, real-size scaling, atomic writes, bad parameters."""

from __future__ import annotations

import json
import struct

import numpy as np
import pygltflib
import pytest
import trimesh

from pipeline.errors import InvalidParameter
from pipeline.export import Z_UP_TO_Y_UP, export_result, linear_to_srgb, srgb_to_linear
from pipeline.fusion import FusionResult, fuse_meshes
from pipeline.params import MeshFormat
from tests import shapes

REPORT = {"strategy": "fused", "frames_used": [0, 2], "degenerate_axis": False, "faces": 0}


def _tall_box() -> trimesh.Trimesh:
    """Native-frame box: 0.2 along X (towards the camera), 0.4 along Y, 1.0 up (Z); its +X face is red."""
    box = trimesh.creation.box(extents=[0.2, 0.4, 1.0])
    box = box.subdivide().subdivide()
    colours = np.tile(np.array([40, 40, 40, 255], np.uint8), (len(box.vertices), 1))
    colours[box.vertices[:, 0] > 0.099] = [200, 30, 30, 255]
    box.visual.vertex_colors = colours
    return box


def _result(mesh: trimesh.Trimesh) -> FusionResult:
    return FusionResult(mesh=mesh, scene=None, report=dict(REPORT, faces=len(mesh.faces)))


def _loaded_mesh(path) -> trimesh.Trimesh:
    scene = trimesh.load(path, force="scene")
    (mesh,) = scene.geometry.values()
    return mesh


def test_export_glb_round_trips_vertex_count_and_stands_up_y(tmp_path):
    box = _tall_box()
    path = export_result(_result(box), tmp_path / "out.glb")
    mesh = _loaded_mesh(path)
    assert len(mesh.vertices) == len(box.vertices) and len(mesh.faces) == len(box.faces)
    assert mesh.extents == pytest.approx([0.4, 1.0, 0.2], abs=1e-6)  # native Z (1.0) is now Y
    # the camera side (native +X, red) faces glTF's front (+Z)
    colours = mesh.visual.vertex_attributes["color"]
    red = colours[:, 0] > 0.3
    assert red.any() and np.all(mesh.vertices[red, 2] > 0.099)
    assert mesh.volume > 0  # still outward-wound: the rotation is proper


def test_glb_colours_are_linear_and_metadata_in_extras(tmp_path):
    box = _tall_box()
    metadata = {
        "params": {"num_frames": 8, "merge": "fused"},
        "model_id": "stabilityai/TripoSR",
        "job_id": "j1",
    }
    path = export_result(_result(box), tmp_path / "out.glb", metadata=metadata)
    scene = trimesh.load(path, force="scene")
    assert scene.metadata["job"] == metadata
    assert scene.metadata["fusion"]["frames_used"] == [0, 2]
    assert scene.metadata["export"]["up_axis"] == "+Y"
    (mesh,) = scene.geometry.values()
    loaded = np.asarray(mesh.visual.vertex_attributes["color"], dtype=np.float64)[:, :3]
    # vertices keep their order through our writer; compare against the linearised sRGB input
    want = srgb_to_linear(box.visual.vertex_colors[:, :3] / 255.0)
    assert loaded == pytest.approx(want, abs=1e-6)
    rubber = box.visual.vertex_colors[:, 0] == 40
    assert loaded[rubber] == pytest.approx(((40 / 255 + 0.055) / 1.055) ** 2.4, rel=1e-6)  # 0.0212, not 0.157


def test_glb_is_valid_for_pygltflib(tmp_path):
    box = _tall_box()
    path = export_result(_result(box), tmp_path / "out.glb", metadata={"model_id": "m"})
    raw = path.read_bytes()
    magic, version, length = struct.unpack_from("<III", raw)
    assert (magic, version, length) == (0x46546C67, 2, len(raw))
    gltf = pygltflib.GLTF2().load_binary(path)
    assert gltf.asset.version == "2.0"
    assert gltf.scenes[gltf.scene].extras["job"] == {"model_id": "m"}
    (prim,) = gltf.meshes[0].primitives
    pos = gltf.accessors[prim.attributes.POSITION]
    col = gltf.accessors[prim.attributes.COLOR_0]
    nor = gltf.accessors[prim.attributes.NORMAL]
    idx = gltf.accessors[prim.indices]
    assert pos.count == col.count == nor.count == len(box.vertices)
    assert (col.type, col.componentType) == ("VEC3", pygltflib.FLOAT)
    assert pos.min is not None and pos.max is not None
    assert idx.count == 3 * len(box.faces) and idx.componentType == pygltflib.UNSIGNED_INT
    blob = gltf.binary_blob()
    assert gltf.buffers[0].byteLength == len(blob)
    for view in gltf.bufferViews:
        assert view.byteOffset % 4 == 0 and view.byteOffset + view.byteLength <= len(blob)
    view = gltf.bufferViews[idx.bufferView]
    indices = np.frombuffer(blob, np.uint32, idx.count, view.byteOffset)
    assert indices.max() < pos.count
    view = gltf.bufferViews[nor.bufferView]
    normals = np.frombuffer(blob, np.float32, 3 * nor.count, view.byteOffset).reshape(-1, 3)
    assert np.linalg.norm(normals, axis=1) == pytest.approx(1.0, abs=1e-5)
    material = gltf.materials[prim.material]
    assert material.pbrMetallicRoughness.metallicFactor == 0.0


def test_fused_result_exports_with_report_and_scene_nodes(tmp_path):
    truth = shapes.blob(subdivisions=3)
    meshes, _ = shapes.make_frames(truth, [0, 120, 240], seed=1, noise=0.002)
    fused = fuse_meshes(meshes, resolution=48)
    path = export_result(fused, tmp_path / "fused.glb", metadata={"job_id": "abc"})
    scene = trimesh.load(path, force="scene")
    assert scene.metadata["fusion"]["frames_used"] == [0, 1, 2]
    assert len(next(iter(scene.geometry.values())).vertices) == len(fused.mesh.vertices)
    everything = fuse_meshes(meshes, strategy="all")
    path = export_result(everything, tmp_path / "all.glb")
    gltf = pygltflib.GLTF2().load_binary(path)
    assert sorted(n.name for n in gltf.nodes) == ["frame_000", "frame_001", "frame_002"]


@pytest.mark.parametrize("fmt", [MeshFormat.OBJ, MeshFormat.PLY])
def test_obj_and_ply_on_request_y_up_with_srgb_colours(tmp_path, fmt):
    box = _tall_box()
    path = export_result(_result(box), tmp_path / f"out.{fmt.value}", format=fmt)
    mesh = trimesh.load(path, force="mesh", process=False)
    assert mesh.extents == pytest.approx([0.4, 1.0, 0.2], abs=1e-5)
    assert len(mesh.faces) == len(box.faces)
    colours = mesh.visual.vertex_colors[:, :3]
    assert {tuple(c) for c in np.unique(colours, axis=0)} == {(40, 40, 40), (200, 30, 30)}


def test_object_size_scales_the_largest_dimension_to_metres(tmp_path):
    path = export_result(_result(_tall_box()), tmp_path / "out.glb", object_size_m=0.72)
    mesh = _loaded_mesh(path)
    assert mesh.extents.max() == pytest.approx(0.72, rel=1e-6)
    assert mesh.extents == pytest.approx(np.array([0.4, 1.0, 0.2]) * 0.72, rel=1e-6)
    matrix = np.array(trimesh.load(path, force="scene").metadata["export"]["matrix_from_native"])
    assert mesh.bounds == pytest.approx(
        trimesh.transform_points(_tall_box().bounds, matrix)[[0, 1]], abs=1e-6
    )
    assert trimesh.load(path, force="scene").metadata["export"]["units"] == "m"


def test_target_faces_decimates_and_keeps_colours(tmp_path):
    blob = shapes.blob(subdivisions=5)  # 20480 faces
    path = export_result(_result(blob), tmp_path / "out.glb", target_faces=2000)
    mesh = _loaded_mesh(path)
    assert 1500 <= len(mesh.faces) <= 2100
    assert mesh.visual.vertex_attributes["color"].shape == (len(mesh.vertices), 3)
    assert trimesh.load(path, force="scene").metadata["export"]["faces"] == len(mesh.faces)


def test_write_is_atomic_and_replaces_an_existing_file(tmp_path):
    target = tmp_path / "out.glb"
    target.write_bytes(b"old")
    with pytest.raises(InvalidParameter, match="metadata"):
        export_result(_result(_tall_box()), target, metadata={"bad": object()})
    assert target.read_bytes() == b"old"
    export_result(_result(_tall_box()), target)
    assert target.read_bytes()[:4] == b"glTF"
    assert [p.name for p in tmp_path.iterdir()] == ["out.glb"]  # no temp files left


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"format": "fbx"}, "format"),
        ({"object_size_m": 0.0}, "object_size_m"),
        ({"target_faces": 3}, "target_faces"),
        ({"target_faces": "many"}, "target_faces"),
    ],
)
def test_bad_export_parameters_raise_invalid_parameter(tmp_path, kwargs, field):
    with pytest.raises(InvalidParameter) as info:
        export_result(_result(_tall_box()), tmp_path / "x.glb", **kwargs)
    assert info.value.field == field
    assert not (tmp_path / "x.glb").exists()


def test_empty_result_is_refused(tmp_path):
    with pytest.raises(InvalidParameter, match="no faces"):
        export_result(_result(trimesh.Trimesh()), tmp_path / "x.glb")


def test_srgb_linear_conversions_match_the_standard_curve():
    assert srgb_to_linear(np.array([0.0, 0.04045, 0.5, 1.0])) == pytest.approx(
        [0.0, 0.0031308, 0.2140, 1.0], abs=1e-4
    )
    values = np.linspace(0, 1, 101)
    assert linear_to_srgb(srgb_to_linear(values)) == pytest.approx(values, abs=1e-9)


def test_orientation_matrix_is_a_proper_rotation_taking_z_to_y_and_x_to_z():
    rot = Z_UP_TO_Y_UP[:3, :3]
    assert np.linalg.det(rot) == pytest.approx(1.0)
    assert rot @ [0, 0, 1] == pytest.approx([0, 1, 0])
    assert rot @ [1, 0, 0] == pytest.approx([0, 0, 1])
    assert json.loads(json.dumps(Z_UP_TO_Y_UP.tolist()))  # plain data, usable in reports


def test_glb_extras_keep_null_and_empty_values(tmp_path):
    """pygltflib drops None and empty containers when it serialises; the report must keep them verbatim."""
    box = _tall_box()
    path = export_result(_result(box), tmp_path / "out.glb", metadata={"source": None, "tags": []})
    extras = pygltflib.GLTF2().load_binary(path).scenes[0].extras
    assert extras["job"] == {"source": None, "tags": []}
    assert extras["export"]["object_size_m"] is None
    assert extras["export"]["target_faces"] is None


def test_export_orientation_matches_the_model_cli():
    """`python -m triposr` and the service must agree on which way the object faces."""
    from triposr.mesh import GLTF_FROM_NATIVE

    np.testing.assert_array_equal(Z_UP_TO_Y_UP, GLTF_FROM_NATIVE)
