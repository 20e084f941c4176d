"""A Ray head and a `ray job submit` on a machine that never ran Ray: an empty HOME, no ~/.ray, no token."""

from __future__ import annotations

import subprocess

import pytest

from tests.ops.raycluster import RAY_BIN, start_head


@pytest.mark.ray
@pytest.mark.timeout(300)
def test_head_and_job_submit_work_with_an_empty_home(tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    head = start_head(num_cpus=1, num_gpus=0)
    try:
        job = subprocess.run(
            [str(RAY_BIN), "job", "submit", "--address", head.dashboard_url, "--",
             "python", "-c", "import ray; ray.init(); print('cpus', ray.cluster_resources()['CPU'])"],
            env=head.env(), capture_output=True, text=True, timeout=180,
        )  # fmt: skip
    finally:
        head.stop()
    assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
    assert "cpus 1.0" in job.stdout
    assert not (home / ".ray").exists()  # the token came from the head's own temp dir, not from HOME
