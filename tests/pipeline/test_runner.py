"""pipeline/runner.py: a whole job in-process (tiny model, real u2netp), and the per-frame mesh files."""

from __future__ import annotations

import numpy as np
import pytest
import trimesh

from pipeline.params import JobParams
from pipeline.runner import load_mesh, run_pipeline, save_mesh


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from triposr import load_model

    return load_model(str(tiny_model_dir), device="cpu")


def test_run_pipeline_writes_a_glb_and_reports_frames_and_timings(tmp_path, tiny, remover):
    from tests.media import make_ring_video

    video = make_ring_video(tmp_path / "ring.mp4", width=160, height=120, fps=12, duration_s=2.0).path
    report = run_pipeline(video, tmp_path / "out.glb", JobParams(num_frames=2, mc_resolution=32),
                          model=tiny, remover=remover)  # fmt: skip
    assert report["kind"] == "video"
    assert sum(f["chosen"] for f in report["frames"]) == 2
    assert {"preprocess", "reconstruct", "merge", "total"} <= set(report["timings"])
    scene = trimesh.load(report["result_path"])
    assert sum(len(g.faces) for g in scene.geometry.values()) > 0


def test_mesh_files_round_trip_exactly_including_colours_and_empty(tmp_path):
    box = trimesh.creation.box()
    box.visual.vertex_colors = np.tile(np.array([[10, 20, 30, 255]], np.uint8), (len(box.vertices), 1))
    again = load_mesh(save_mesh(box, tmp_path / "m.npz"))
    assert np.array_equal(again.faces, box.faces) and np.allclose(again.vertices, box.vertices)
    assert np.array_equal(again.visual.vertex_colors, box.visual.vertex_colors)
    assert len(load_mesh(save_mesh(trimesh.Trimesh(), tmp_path / "e.npz")).faces) == 0
