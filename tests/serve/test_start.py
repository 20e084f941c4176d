"""`triposr-serve start` as a newcomer runs it: a real subprocess on this machine, given 2 logical CPUs.

Each test reads the Ray temp dir the service prints ("Ray logs: DIR") and checks, after the service ended,
that no process of that Ray is left (`pids_using`). Signals are sent to the service's own pid only.
"""

from __future__ import annotations

import io
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image

from serve_app.launcher import pids_using
from tests.media import ring_image
from tests.serve.conftest import free_port, wait_terminal

pytestmark = [pytest.mark.ray, pytest.mark.timeout(420)]

STOP_LIMIT_S = 10.0  # the promise: SIGINT/SIGTERM -> gone, at any moment


class Service:
    """One `triposr-serve start` subprocess; its combined output goes to a file the test can read."""

    def __init__(self, tmp_path: Path, args: list[str], env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = tmp_path / f"start-{self.port}.log"
        cmd = [sys.executable, "-m", "serve_app.cli", "start", "--port", str(self.port),
               "--data-dir", str(tmp_path / "data"), "--num-cpus", "2", *args]  # fmt: skip
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)

    @property
    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def ray_dir(self, timeout_s: float = 60.0) -> Path:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            match = re.search(r"Ray logs: (\S+?)\)", self.output)
            if match:
                return Path(match.group(1))
            assert self.proc.poll() is None, self.output
            time.sleep(0.1)
        raise AssertionError(f"no Ray temp dir printed:\n{self.output}")

    def wait_for(self, text: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while text not in self.output:
            assert self.proc.poll() is None, f"service exited before {text!r}:\n{self.output}"
            assert time.monotonic() < deadline, f"no {text!r} after {timeout_s} s:\n{self.output}"
            time.sleep(0.1)

    def wait_ready(self, timeout_s: float = 300.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"service exited:\n{self.output}"
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise AssertionError(f"not ready in {timeout_s} s:\n{self.output}")

    def stop(self, sig: signal.Signals) -> float:
        """Send `sig` to the service; seconds until it exited."""
        t0 = time.monotonic()
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError(f"{sig.name} did not stop the service in 30 s:\n{self.output}") from None
        return time.monotonic() - t0

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


def _assert_nothing_left(ray_dir: Path) -> None:
    deadline = time.monotonic() + 3.0  # killed children may take a moment to be reaped by init
    while (left := pids_using(ray_dir)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not left, f"processes of the service's Ray still running: {left}"


def _photo_filling_the_picture() -> bytes:
    """Like a phone photo of a cat filling the frame: the object runs out of the picture on one side."""
    buf = io.BytesIO()
    Image.fromarray(ring_image(640, 480, radius=0.4, centre=(0.2, 0.5))).save(buf, format="JPEG", quality=92)
    return buf.getvalue()


def _glb_extras(data: bytes) -> dict:
    import pygltflib

    gltf = pygltflib.GLTF2.load_from_bytes(data)
    return gltf.scenes[0].extras


@pytest.fixture
def local_args(tiny_model_dir, rembg_dir) -> list[str]:
    return ["--model-source", str(tiny_model_dir), "--rembg-model", "u2netp", "--rembg-dir", str(rembg_dir)]


def test_start_fits_two_cpus_runs_a_photo_job_and_stops_on_sigint(tmp_path, local_args):
    """On a 2-CPU node every deployment schedules; the only photo a user has, object cut by the border,
    still gives a mesh, with a warning; Ctrl-C then leaves nothing running."""
    service = Service(tmp_path, local_args)
    try:
        ray_dir = service.ray_dir()
        service.wait_ready()
        with httpx.Client(base_url=service.url, timeout=60) as client:
            response = client.post(
                "/reconstruct",
                files={"file": ("cat.jpg", _photo_filling_the_picture(), "image/jpeg")},
                data={"mc_resolution": "32"},
            )
            assert response.status_code == 202, response.text
            job_id = response.json()["job_id"]
            doc = wait_terminal(client, job_id, timeout_s=240)
            assert doc["state"] == "succeeded", doc
            (warning,) = doc["warnings"]
            assert warning["code"] == "cut_by_border" and "step back" in warning["message"]
            result = client.get(f"/reconstruct/result/{job_id}")
            assert result.status_code == 200
            assert _glb_extras(result.content)["job"]["warnings"] == doc["warnings"]
        assert "ready at" in service.output
        assert service.stop(signal.SIGINT) < STOP_LIMIT_S
        assert service.proc.returncode == 0, service.output
        _assert_nothing_left(ray_dir)
        assert not ray_dir.exists()  # a clean stop leaves no temp dir behind
    finally:
        service.kill()


@pytest.mark.parametrize(
    ("sig", "moment"),
    [(signal.SIGINT, "starting Ray"), (signal.SIGTERM, "deploying")],
    ids=["sigint-while-ray-starts", "sigterm-while-deploying"],
)
def test_a_stop_signal_during_startup_ends_it_quickly_and_cleanly(tmp_path, local_args, sig, moment):
    service = Service(tmp_path, local_args)
    try:
        ray_dir = service.ray_dir()
        service.wait_for(moment, timeout_s=120)
        time.sleep(1.0)  # inside ray.init / the deploy, not at its first line
        assert service.stop(sig) < STOP_LIMIT_S, service.output
        _assert_nothing_left(ray_dir)
    finally:
        service.kill()


def test_start_without_weights_says_why_in_one_line(tmp_path, rembg_dir):
    import os

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "empty-hf")}
    env.pop("TRIPOSR_SERVE_MODEL_SOURCE", None)
    service = Service(tmp_path, ["--rembg-model", "u2netp", "--rembg-dir", str(rembg_dir)], env=env)
    try:
        ray_dir = service.ray_dir()
        service.proc.wait(timeout=240)
        out = service.output
        assert service.proc.returncode == 1, out
        errors = [line for line in out.splitlines() if line.startswith("error:")]
        assert len(errors) == 1, out
        expected = "error: Reconstruct cannot start: ModelNotFoundError: cannot get config.yaml"
        assert errors[0].startswith(expected), errors
        assert "hf download stabilityai/TripoSR" in errors[0]
        assert "Traceback" not in out
        _assert_nothing_left(ray_dir)
    finally:
        service.kill()


def test_check_config_names_what_does_not_fit(tmp_path):
    """The shipped serve_config.yaml on a 2-CPU machine without a GPU: refused with the key to change; on the
    cluster.yaml cluster at its largest: fits."""
    root = Path(__file__).resolve().parents[2]
    cli = [sys.executable, "-m", "serve_app.cli", "check-config", str(root / "serve_config.yaml")]
    small = subprocess.run([*cli, "--num-cpus", "2", "--num-gpus", "0"], capture_output=True, text=True)
    assert small.returncode == 2, small
    (line,) = small.stderr.strip().splitlines()
    assert line.startswith("error: Reconstruct cannot start: each of its 1 replica(s)")
    assert "asks for {CPU 1, GPU 0.5}" in line
    assert "deployments[Reconstruct] ray_actor_options" in line
    big = subprocess.run([*cli, "--cluster", str(root / "cluster.yaml")], capture_output=True, text=True)
    assert big.returncode == 0, big
    assert big.stdout.startswith("ok: 4 replica(s) of 4 deployment(s) fit")

    bad = tmp_path / "bad.yaml"
    doc = {"applications": [{"name": "triposr", "import_path": "serve_app:app", "args": {"chunk_size": 0}}]}
    bad.write_text(json.dumps(doc))
    refused = subprocess.run([*cli[:-1], str(bad)], capture_output=True, text=True)
    assert refused.returncode == 2 and "chunk_size must be >= 1" in refused.stderr, refused
