"""The CLI: user mistakes print one line and exit 1 (no traceback); `run` reconstructs in-process."""

from __future__ import annotations

import trimesh

from serve_app.cli import main


def test_missing_input_is_one_line_error(capsys, tmp_path):
    assert main(["run", str(tmp_path / "missing.mp4")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error:") and "Traceback" not in err and err.count("\n") == 1


def test_unreachable_service_is_one_line_error(capsys):
    assert main(["status", "AAAAAAAAAAAAAAAAAAAAAA", "--url", "http://127.0.0.1:9"]) == 1
    assert "cannot reach" in capsys.readouterr().err


def test_invalid_parameter_is_reported(capsys, ring_video, tiny_model_dir):
    assert main(["run", str(ring_video), "--num-frames", "99", "--model-source", str(tiny_model_dir)]) == 1
    assert "num_frames" in capsys.readouterr().err


def test_run_reconstructs_in_process(capsys, ring_video, tiny_model_dir, rembg_dir, tmp_path):
    out = tmp_path / "tyre.glb"
    args = [
        "run",
        str(ring_video),
        "-o",
        str(out),
        "--model-source",
        str(tiny_model_dir),
        "--device",
        "cpu",
        "--rembg-model",
        "u2netp",
        "--rembg-dir",
        str(rembg_dir),
        "--num-frames",
        "2",
        "--mc-resolution",
        "32",
    ]
    assert main(args) == 0, capsys.readouterr().err
    assert "saved" in capsys.readouterr().out
    assert len(trimesh.load(out).geometry) >= 1


def test_serve_proxy_plain_text_answers_become_one_readable_line():
    import httpx
    import pytest

    from serve_app.cli import CLIError, _check

    dropped = httpx.Response(503, text="Request dropped due to backpressure", headers={"Retry-After": "2"})
    with pytest.raises(CLIError, match=r"HTTP 503: the service is overloaded .*; retry in 2 s"):
        _check(dropped)
    with pytest.raises(CLIError, match=r"HTTP 408: the request took longer than"):
        _check(httpx.Response(408, text="Request abc timed out after 600.0s."))
    envelope = {"error": {"code": "too_many_jobs", "message": "you have 32 queued jobs"}}
    with pytest.raises(CLIError, match=r"too_many_jobs: you have 32 queued jobs \(HTTP 429; retry in 30 s\)"):
        _check(httpx.Response(429, json=envelope, headers={"Retry-After": "30"}))
