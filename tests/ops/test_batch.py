"""Batch runs (serve_app/batch.py): item discovery, resume and summary without Ray, then one real
`ray job submit` against a private local head node with the tiny TripoSR model and real rembg u2netp.
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import numpy as np
import pytest

from pipeline.params import JobParams, MeshFormat
from serve_app import batch
from tests.media import make_ring_video

ROOT = Path(__file__).resolve().parents[2]
RAY_BIN = Path(sys.executable).with_name("ray")


# ------------------------------------------------------------------------------------------------ no Ray


def test_folder_entries_become_items_with_unique_ids(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    for name in ("tyre a.mp4", "tyre a.mov", "b.png", ".hidden.mp4"):
        (src / name).write_bytes(b"x")
    (src / "photos").mkdir()
    items = batch.discover_items(src, tmp_path / "out", JobParams())
    assert [it.item_id for it in items] == ["b", "photos", "tyre_a", "tyre_a-2"]
    assert items[0].output == (tmp_path / "out" / "b.glb").resolve()
    assert all(it.params == JobParams() for it in items)


def test_output_folder_inside_the_input_folder_is_not_an_item(tmp_path):
    (tmp_path / "v.mp4").write_bytes(b"x")
    (tmp_path / "out").mkdir()
    items = batch.discover_items(tmp_path, tmp_path / "out", JobParams())
    assert [it.item_id for it in items] == ["v"]


def test_manifest_columns_override_params_and_a_bad_row_fails_alone(tmp_path):
    (tmp_path / "clips").mkdir()
    manifest = tmp_path / "list.csv"
    manifest.write_text(
        "id,input,num_frames,format\nfront,clips/a.mp4,4,obj\n,clips/b.mp4,,\nbad,clips/c.mp4,999,\n"
    )
    items = batch.discover_items(manifest, tmp_path / "out", JobParams(num_frames=6))
    front, b, bad = items
    assert (front.item_id, front.params.num_frames, front.params.format) == ("front", 4, MeshFormat.OBJ)
    assert front.output.name == "front.obj"
    assert front.input == (tmp_path / "clips" / "a.mp4").resolve()
    assert (b.item_id, b.params.num_frames) == ("b", 6)
    assert bad.params is None and bad.error.startswith("num_frames:")


def test_manifest_with_unknown_column_is_refused(tmp_path):
    manifest = tmp_path / "list.csv"
    manifest.write_text("input,colour\na.mp4,red\n")
    with pytest.raises(batch.BatchInputError, match="colour"):
        batch.discover_items(manifest, tmp_path / "out", JobParams())


def test_items_with_an_existing_output_are_done(tmp_path):
    for name in ("a.mp4", "b.mp4"):
        (tmp_path / name).write_bytes(b"x")
    out = tmp_path / "out"
    out.mkdir()
    (out / "b.glb").write_bytes(b"glb")
    (out / ".a.partial.glb").write_bytes(b"half")  # an interrupted write does not count as done
    todo, done = batch.split_done(batch.discover_items(tmp_path, out, JobParams()))
    assert [it.item_id for it in todo] == ["a"]
    assert [it.item_id for it in done] == ["b"]


def test_meshes_survive_packing():
    import trimesh

    box = trimesh.creation.box()
    box.visual.vertex_colors = np.tile([10, 20, 30, 255], (len(box.vertices), 1)).astype(np.uint8)
    empty = trimesh.Trimesh()
    back = batch.unpack_meshes(batch.pack_meshes([box, empty]))
    assert len(back) == 2
    np.testing.assert_allclose(back[0].vertices, box.vertices, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(back[0].faces, box.faces)
    np.testing.assert_array_equal(back[0].visual.vertex_colors, box.visual.vertex_colors)
    assert len(back[1].vertices) == 0


def test_summary_is_written_as_json_and_csv(tmp_path):
    blank = dict.fromkeys(batch.SUMMARY_FIELDS, "")
    rows = [
        {**blank, "item_id": "a", "status": "succeeded", "preprocess_s": 1.23456},
        {**blank, "item_id": "b", "status": "failed", "error": "bad, really"},
    ]
    batch.write_summary({"counts": {"succeeded": 1, "failed": 1}, "items": rows}, tmp_path, "stats text")
    assert json.loads((tmp_path / "summary.json").read_text())["items"][1]["error"] == "bad, really"
    with (tmp_path / "summary.csv").open() as f:
        lines = list(csv.DictReader(f))
    assert [(r["item_id"], r["status"]) for r in lines] == [("a", "succeeded"), ("b", "failed")]
    assert lines[0]["preprocess_s"] == "1.235" and lines[1]["error"] == "bad, really"
    assert (tmp_path / "ray_data_stats.txt").read_text() == "stats text"


def test_dry_run_lists_what_would_run_and_what_is_skipped(tmp_path, capsys):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.mp4").write_bytes(b"x")
    (tmp_path / "in" / "b.mp4").write_bytes(b"x")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "a.glb").write_bytes(b"x")
    code = batch.main(["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--dry-run"])
    out = capsys.readouterr().out.splitlines()
    assert code == 0
    assert [line.split()[:2] for line in out] == [["skip", "a"], ["run", "b"]]


def test_invalid_job_parameter_on_the_command_line_is_an_error(tmp_path, capsys):
    (tmp_path / "in").mkdir()
    code = batch.main(["--input", str(tmp_path / "in"), "--output", str(tmp_path / "o"), "--num-frames", "0"])
    assert code == 1
    assert "num_frames" in capsys.readouterr().err


def test_capacity_defaults_follow_the_cluster():
    args = batch._parser().parse_args(["--input", "i", "--output", "o"])
    on_gpus = batch._capacity(args, cluster_gpus=2.0)
    assert (on_gpus.gpus_per_actor, on_gpus.min_actors, on_gpus.max_actors) == (0.5, 1, 4)
    on_cpu = batch._capacity(args, cluster_gpus=0.0)
    assert (on_cpu.gpus_per_actor, on_cpu.max_actors) == (0.0, 1)
    with pytest.raises(ValueError, match="actors"):
        batch.Capacity(min_actors=3, max_actors=2)


# ------------------------------------------------------------------------------------- ray job submit


@pytest.fixture
def own_tmp():
    """A temp dir outside pytest's basetemp: concurrent pytest sessions of other suites on this machine rotate
    (delete) older `pytest-of-<user>/pytest-N` dirs, which must not happen under a running Ray job."""
    path = Path(tempfile.mkdtemp(prefix="ops-batch-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def ray_head():
    from tests.ops.raycluster import start_head

    head = start_head(num_cpus=4, num_gpus=1)
    yield head
    head.stop()


def _write_inputs(src: Path) -> None:
    src.mkdir()
    for i in range(3):
        make_ring_video(src / f"tyre{i}.mp4", duration_s=1.5, fps=12, period_s=3.0 + i)
    good = (src / "tyre0.mp4").read_bytes()
    # Container header intact, the rest garbage: detected as a video, fails to decode.
    (src / "corrupt.mp4").write_bytes(good[:48] + bytes(range(256)) * 8)
    make_ring_video(src / "done.mp4", duration_s=1.0, fps=12)


def _submit(cmd: list[str], head, timeout_s: float) -> subprocess.CompletedProcess:
    """Run `ray job submit` (blocking); past the deadline stop the job and fail with its logs."""
    submission_id = f"batch-test-{uuid.uuid4().hex[:8]}"
    cmd = [*cmd[:3], "--submission-id", submission_id, *cmd[3:]]
    try:
        return subprocess.run(cmd, env=head.env(), capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        ray, env = str(RAY_BIN), head.env()
        logs = subprocess.run([ray, "job", "logs", submission_id], env=env, capture_output=True, text=True)
        subprocess.run([ray, "job", "stop", submission_id], env=env, capture_output=True)
        pytest.fail(f"batch job did not finish in {timeout_s:.0f} s; log tail:\n{logs.stdout[-5000:]}")


@pytest.mark.ray
@pytest.mark.timeout(420)
def test_ray_job_submit_runs_the_batch_and_reports_every_item(own_tmp, ray_head, rembg_dir, tiny_model_dir):
    import trimesh

    src, out = own_tmp / "in", own_tmp / "out"
    _write_inputs(src)
    out.mkdir()
    done_marker = b"already reconstructed by an earlier run"
    (out / "done.glb").write_bytes(done_marker)

    cmd = [
        str(RAY_BIN), "job", "submit", "--address", ray_head.dashboard_url, "--working-dir", str(ROOT),
        "--", "python", "-m", "serve_app.batch", "--input", str(src), "--output", str(out),
        # Relative: resolved inside the uploaded working dir, as a user's `--working-dir .` run would be.
        "--model-source", str(tiny_model_dir.relative_to(ROOT)),
        "--rembg-model", "u2netp", "--rembg-dir", str(rembg_dir),
        # `best` skips the TSDF fusion, which dominates the run on a 2-core machine; `fused` runs the same
        # stage function (pipeline.runner.merge_stage) with another strategy.
        "--num-frames", "3", "--mc-resolution", "32", "--merge", "best",
        "--gpus-per-actor", "0.5", "--actors", "1", "--batch-size", "2", "--no-progress",
    ]  # fmt: skip
    proc = _submit(cmd, ray_head, timeout_s=300)
    logs = proc.stdout[-6000:] + proc.stderr[-3000:]
    assert proc.returncode == 0, logs
    assert "succeeded" in proc.stdout, logs

    summary = json.loads((out / "summary.json").read_text())
    by_id = {row["item_id"]: row for row in summary["items"]}
    assert set(by_id) == {"corrupt", "done", "tyre0", "tyre1", "tyre2"}, logs
    assert summary["counts"] == {"succeeded": 3, "failed": 1, "skipped": 1}, by_id

    corrupt = by_id["corrupt"]
    assert corrupt["status"] == "failed" and corrupt["failed_stage"] == "preprocess"
    assert corrupt["error_code"] in {"video_decode_error", "unsupported_media", "invalid_input"}, corrupt
    assert corrupt["error"], corrupt
    assert not (out / "corrupt.glb").exists()

    assert by_id["done"]["status"] == "skipped"
    assert (out / "done.glb").read_bytes() == done_marker  # untouched

    for name in ("tyre0", "tyre1", "tyre2"):
        row = by_id[name]
        assert row["status"] == "succeeded", row
        assert row["frames_used"] == 3 and row["error"] == ""
        assert row["preprocess_s"] > 0 and row["reconstruct_s"] > 0 and row["merge_s"] > 0
        assert Path(row["output"]) == out / f"{name}.glb"
        mesh = trimesh.load(out / f"{name}.glb", force="mesh")
        assert len(mesh.vertices) > 0 and len(mesh.faces) > 0
        report = json.loads((out / f"{name}.report.json").read_text())
        assert sum(f["chosen"] for f in report["frames"]) == 3
    # The actor packed items together: at least one reconstruct call held two items' frames.
    assert max(by_id[n]["batch_items"] for n in ("tyre0", "tyre1", "tyre2")) == 2
    assert (out / "summary.csv").read_text().count("\n") == 6
    assert "MapBatches(Reconstructor)" in (out / "ray_data_stats.txt").read_text()
    assert not list(out.glob(".*.tmp"))  # no temporary file of the atomic writer is left behind

    # Running it again is a resume: every finished item is skipped, only the failed one would run again.
    todo, _ = batch.split_done(batch.discover_items(src, out, JobParams()))
    assert [it.item_id for it in todo] == ["corrupt"]
