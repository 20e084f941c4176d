"""pipeline/fusion.py (+ alignment.py): turns recovered, no reflection, outliers rejected, the fused surface
beats every noisy frame, symmetric objects reported as degenerate, bad input handled."""

from __future__ import annotations

import json

import numpy as np
import pytest
import trimesh

from pipeline.alignment import turn_and_tilt_deg
from pipeline.errors import FusionError, InvalidParameter
from pipeline.fusion import FusionResult, fuse_meshes
from pipeline.params import MergeStrategy
from tests import shapes

TURNS = [0.0, 55.0, 110.0, 170.0, 230.0, 290.0]
CORRUPTED = 4
RESOLUTION = 96


def _expected_output_matrix(report: dict, true_matrices: list[np.ndarray], index: int) -> np.ndarray:
    """Where frame `index` should land: the reference's input->output transform times its true pose."""
    ref = report["reference_frame"]
    to_output = np.array(report["frames"][ref]["transform"])
    return to_output @ true_matrices[ref] @ np.linalg.inv(true_matrices[index])


def _rotation_part(matrix: np.ndarray) -> tuple[np.ndarray, float]:
    linear = np.asarray(matrix)[:3, :3]
    scale = float(np.cbrt(np.linalg.det(linear)))
    return linear / scale, scale


@pytest.fixture(scope="module")
def tyre_case():
    """A marked tyre seen in 6 noisy, turned, tilted, scaled, shifted frames; frame 4 is corrupted."""
    truth = shapes.tyre(n_theta=160, n_profile=40)
    meshes, matrices = shapes.make_frames(truth, TURNS, seed=3)
    meshes[CORRUPTED] = shapes.corrupted(meshes[CORRUPTED], np.random.default_rng(5))
    scores = [0.7, 0.9, 0.8, 0.6, 1.0, 0.5]  # the corrupted frame scores best: the reference must not be it
    result = fuse_meshes(meshes, scores=scores, resolution=RESOLUTION)
    return truth, meshes, matrices, result


def test_recovered_turns_within_2_degrees_and_never_mirrored(tyre_case):
    _, _, matrices, result = tyre_case
    report = result.report
    for frame in report["frames"]:
        if not frame["kept"] or frame.get("reference"):
            continue
        got = np.array(frame["transform"])
        assert np.linalg.det(got[:3, :3]) > 0
        rot_got, scale_got = _rotation_part(got)
        assert np.linalg.det(rot_got) == pytest.approx(1.0, abs=1e-6)
        rot_want, scale_want = _rotation_part(_expected_output_matrix(report, matrices, frame["index"]))
        assert shapes.rotation_angle_deg(rot_got.T @ rot_want) < 2.0, frame
        turn_want, _ = turn_and_tilt_deg(rot_want)
        assert abs((frame["turn_deg"] - turn_want + 180.0) % 360.0 - 180.0) < 2.0
        assert scale_got == pytest.approx(scale_want, rel=0.02)
    assert report["degenerate_axis"] is False


def test_corrupted_frame_rejected_as_outlier(tyre_case):
    _, _, _, result = tyre_case
    report = result.report
    assert report["frames_rejected"] == [{"index": CORRUPTED, "reason": "alignment_outlier"}]
    assert report["frames_used"] == [i for i in range(len(TURNS)) if i != CORRUPTED]
    assert report["reference_frame"] == 1  # best score among frames of plausible shape (4 scored higher)
    kept_errors = [f["alignment_error"] for f in report["frames"] if f["kept"] and not f.get("reference")]
    assert report["frames"][CORRUPTED]["alignment_error"] > 3 * max(kept_errors)


def test_fused_surface_is_closer_to_truth_than_any_noisy_frame(tyre_case):
    truth, meshes, matrices, result = tyre_case
    ref = result.report["reference_frame"]
    to_truth = np.linalg.inv(np.array(result.report["frames"][ref]["transform"]) @ matrices[ref])
    fused = result.mesh.copy()
    fused.apply_transform(to_truth)
    fused_error = shapes.chamfer(fused, truth)
    frame_errors = []
    for i, mesh in enumerate(meshes):
        if i == CORRUPTED:
            continue
        frame = mesh.copy()
        frame.apply_transform(np.linalg.inv(matrices[i]))  # each noisy frame at its *true* pose
        frame_errors.append(shapes.chamfer(frame, truth))
    assert fused_error < 0.85 * min(frame_errors), (fused_error, frame_errors)


def test_fused_mesh_is_watertight_with_colours_from_the_frames(tyre_case):
    truth, _, matrices, result = tyre_case
    mesh = result.mesh
    assert mesh.is_watertight and mesh.volume > 0
    assert result.report["watertight"] is True
    assert result.report["faces"] == len(mesh.faces)
    colours = mesh.visual.vertex_colors[:, :3].astype(int)
    yellow = (colours[:, 0] > 150) & (colours[:, 2] < 110)
    dark = colours.max(axis=1) < 80
    assert dark.mean() > 0.7  # rubber almost everywhere
    assert yellow.sum() > 20  # the marker survives fusion, where the marker is
    ref = result.report["reference_frame"]
    to_truth = np.linalg.inv(np.array(result.report["frames"][ref]["transform"]) @ matrices[ref])
    marker_z = trimesh.transform_points(mesh.vertices[yellow], to_truth)[:, 2]
    assert np.median(marker_z) > truth.bounds[1, 2] - 0.05


def test_report_is_json_able_with_timings(tyre_case):
    report = tyre_case[3].report
    again = json.loads(json.dumps(report))
    assert again["strategy"] == "fused"
    assert set(again["timings_s"]) >= {"clean", "align", "field", "marching_cubes", "colours", "total"}
    for frame in again["frames"]:
        assert {"index", "kept", "reason", "alignment_error", "turn_deg", "transform"} <= set(frame)


def test_plain_torus_is_reported_degenerate_not_failed():
    truth = shapes.torus(n_theta=120, n_profile=32)
    meshes, matrices = shapes.make_frames(truth, [0, 70, 150, 230], seed=11)
    result = fuse_meshes(meshes, resolution=64)
    report = result.report
    assert report["degenerate_axis"] is True
    assert any("rotationally symmetric" in w for w in report["warnings"])
    assert report["frames_rejected"] == []
    assert all(f["turn_deg"] is None for f in report["frames"] if not f.get("reference"))
    assert result.mesh.is_watertight
    ref = report["reference_frame"]
    fused = result.mesh.copy()
    fused.apply_transform(np.linalg.inv(np.array(report["frames"][ref]["transform"]) @ matrices[ref]))
    assert shapes.chamfer(fused, truth) < 0.01


def test_asymmetric_blob_aligns_from_arbitrary_turns():
    truth = shapes.blob(subdivisions=3)
    meshes, matrices = shapes.make_frames(truth, [0, 95, 200, 300], seed=2, noise=0.003)
    result = fuse_meshes(meshes, strategy="all", resolution=48)
    report = result.report
    assert report["degenerate_axis"] is False
    for frame in report["frames"]:
        if frame.get("reference"):
            continue
        rot_got, _ = _rotation_part(np.array(frame["transform"]))
        rot_want, _ = _rotation_part(_expected_output_matrix(report, matrices, frame["index"]))
        assert shapes.rotation_angle_deg(rot_got.T @ rot_want) < 2.0


def test_open_frames_clipped_like_triposr_box_still_fuse_watertight():
    truth = shapes.blob(subdivisions=3)
    meshes, matrices = shapes.make_frames(truth, [0, 90, 180, 270], seed=2, noise=0.003)
    for mesh in meshes:  # cut the top off each frame: an open mesh, as when the object leaves TripoSR's box
        mesh.update_faces(mesh.triangles_center[:, 2] < 0.5)
        mesh.remove_unreferenced_vertices()
        assert not mesh.is_watertight
    result = fuse_meshes(meshes, resolution=64)
    assert result.report["frames_rejected"] == []
    assert result.mesh.is_watertight
    ref = result.report["reference_frame"]
    fused = result.mesh.copy()
    fused.apply_transform(np.linalg.inv(np.array(result.report["frames"][ref]["transform"]) @ matrices[ref]))
    assert shapes.chamfer(fused, truth) < 0.012


def test_identical_frames_are_all_kept():
    mesh = shapes.blob(subdivisions=3)
    result = fuse_meshes([mesh.copy() for _ in range(4)], resolution=48)
    assert result.report["frames_rejected"] == []
    assert max(f["alignment_error"] for f in result.report["frames"]) < 0.01


def test_strategy_all_gives_one_scene_node_per_kept_frame():
    truth = shapes.blob(subdivisions=3)
    meshes, _ = shapes.make_frames(truth, [0, 120, 240], seed=4, noise=0.002)
    result = fuse_meshes(meshes, strategy=MergeStrategy.ALL)
    assert isinstance(result, FusionResult) and result.mesh is None
    assert sorted(result.scene.graph.nodes_geometry) == ["frame_000", "frame_001", "frame_002"]
    assert result.report["faces"] == sum(len(g.faces) for g in result.scene.geometry.values())
    # aligned frames overlap: every node's centre is near the origin (the reference centroid)
    for node in result.scene.graph.nodes_geometry:
        _, geom = result.scene.graph[node]
        assert np.linalg.norm(result.scene.geometry[geom].centroid) < 0.03


def test_strategy_best_returns_the_best_scoring_frame_cleaned():
    truth = shapes.blob(subdivisions=3)
    meshes, _ = shapes.make_frames(truth, [0, 120, 240], seed=4)
    result = fuse_meshes(meshes, strategy="best", scores=[0.1, 0.9, 0.5])
    assert result.report["reference_frame"] == 1
    assert len(result.mesh.faces) == len(meshes[1].faces)
    assert np.allclose(result.mesh.centroid, 0.0, atol=0.01)
    assert result.report["frames_used"] == [1]
    assert {f["reason"] for f in result.report["frames_rejected"]} == {"not_used_by_strategy_best"}


def test_floaters_are_dropped_and_counted():
    main = shapes.blob(subdivisions=3)
    floater = trimesh.creation.icosphere(subdivisions=1, radius=0.03)
    floater.apply_translation([0.8, 0.0, 0.0])
    result = fuse_meshes([trimesh.util.concatenate([main, floater])], strategy="best")
    assert result.report["frames"][0]["dropped_components"] == 1
    assert len(result.mesh.faces) == len(main.faces)


def test_no_meshes_raises_fusion_error():
    with pytest.raises(FusionError, match="no meshes"):
        fuse_meshes([])


def test_only_empty_meshes_raise_fusion_error_naming_each_reason():
    nan_mesh = shapes.blob(subdivisions=1)
    nan_mesh.vertices = np.full_like(nan_mesh.vertices, np.nan)
    with pytest.raises(FusionError, match=r"frame 0: empty, frame 1: non_finite, frame 2: empty"):
        fuse_meshes([trimesh.Trimesh(), nan_mesh, None])


def test_empty_and_nan_frames_are_skipped_and_partial_nan_cleaned():
    truth = shapes.blob(subdivisions=3)
    meshes, _ = shapes.make_frames(truth, [0, 100, 200], seed=6, noise=0.002)
    holed = meshes[2].copy()
    vertices = holed.vertices.copy()
    vertices[:5] = np.nan
    holed.vertices = vertices
    result = fuse_meshes([meshes[0], trimesh.Trimesh(), meshes[1], holed], resolution=48)
    frames = result.report["frames"]
    assert frames[1]["kept"] is False and frames[1]["reason"] == "empty"
    assert frames[3]["kept"] is True and frames[3]["non_finite_vertices"] == 5
    assert result.report["frames_used"] == [0, 2, 3]
    assert np.isfinite(result.mesh.vertices).all() and result.mesh.is_watertight


def test_one_frame_returns_it_unfused_with_a_warning():
    mesh = shapes.blob(subdivisions=3)
    result = fuse_meshes([mesh])
    assert result.report["strategy"] == "best" and result.report["strategy_requested"] == "fused"
    assert "only one usable frame" in result.report["warnings"][0]
    assert len(result.mesh.faces) == len(mesh.faces)
    assert result.report["degenerate_axis"] is None


def test_one_frame_with_strategy_all_is_a_one_node_scene():
    result = fuse_meshes([trimesh.Trimesh(), shapes.blob(subdivisions=2)], strategy="all")
    assert result.mesh is None and list(result.scene.graph.nodes_geometry) == ["frame_001"]
    assert result.report["frames_used"] == [1]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"scores": [1.0]}, "scores"),
        ({"scores": ["x", 1.0]}, "scores"),
        ({"resolution": 8}, "resolution"),
        ({"strategy": "average"}, "merge"),
    ],
)
def test_bad_parameters_raise_invalid_parameter(kwargs, field):
    meshes = [shapes.blob(subdivisions=1)] * 2
    with pytest.raises(InvalidParameter) as info:
        fuse_meshes(meshes, **kwargs)
    assert info.value.field == field


def test_worker_threads_do_not_change_the_fused_mesh(tyre_case):
    _, meshes, _, result = tyre_case
    scores = [0.7, 0.9, 0.8, 0.6, 1.0, 0.5]
    one = fuse_meshes(meshes, scores=scores, resolution=RESOLUTION, workers=1)
    three = fuse_meshes(meshes, scores=scores, resolution=RESOLUTION, workers=3)
    for other in (one, three):
        np.testing.assert_array_equal(other.mesh.vertices, result.mesh.vertices)
        np.testing.assert_array_equal(other.mesh.faces, result.mesh.faces)
        np.testing.assert_array_equal(other.mesh.visual.vertex_colors, result.mesh.visual.vertex_colors)
        assert other.report["frames_used"] == result.report["frames_used"]
