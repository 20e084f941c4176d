"""pipeline/runner.py: a whole job in-process (tiny model, real u2netp), and the stages over bytes."""

from __future__ import annotations

import numpy as np
import pytest
import trimesh

from pipeline.params import JobParams
from pipeline.runner import preprocess_files, run_pipeline


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


def test_preprocess_files_reads_uploaded_bytes_without_a_shared_path(tmp_path, remover):
    from tests.media import make_ring_video

    video = make_ring_video(tmp_path / "ring.mp4", width=160, height=120, fps=12, duration_s=2.0).path
    payload = preprocess_files([("ring.mp4", video.read_bytes())], JobParams(num_frames=2), remover)
    assert payload["kind"] == "video"
    assert payload["frames"].shape == (2, 512, 512, 3) and payload["frames"].dtype == np.uint8
    assert len(payload["scores"]) == 2
