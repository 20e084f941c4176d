"""Jobs survive the cluster: replicas of every deployment killed (-9) mid-run, a poison input, on the
three-node local cluster of tests/ops/servecluster.py (workers without the ingress's disk).

Lean on purpose (tiny model, 2 frames at mc_resolution 32, `best` merge, small videos without rembg): the
point is the failure handling, not the model. The poison frame needs the test-only fault hook, armed through
the worker deployments' runtime_env (`TRIPOSR_TEST_FAULTS`, see deployments/faults.py).
"""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from serve_app.jobs import JobStore
from tests.media import make_ring_video, png_bytes
from tests.ops.raycluster import can_hide_paths
from tests.ops.servecluster import cluster_service, kill9

pytestmark = [
    pytest.mark.ray,
    pytest.mark.skipif(not can_hide_paths(), reason="needs root for unshare --mount + tmpfs"),
]

TERMINAL = {"succeeded", "failed", "cancelled"}
BUSY_STATES = {
    "Preprocess": {"preprocessing"}, "Reconstruct": {"reconstructing"}, "Export": {"merging"},
    "Ingress": {"preprocessing", "reconstructing"},
}  # fmt: skip
LEAKS = ("pid", "ip:", "192.", "127.0.0.1", "actor", "traceback", "/tmp", "/work")


def poison_png() -> bytes:
    """The fault hook's marker: a magenta/black checkerboard (>= 25% exact magenta after framing)."""
    yy, xx = np.mgrid[:256, :256]
    image = np.zeros((256, 256, 3), np.uint8)
    image[(yy // 32 + xx // 32) % 2 == 0] = (255, 0, 255)
    return png_bytes(image)


def status(client: httpx.Client, job_id: str) -> dict | None:
    """The status document, or None while the ingress is down (the proxy answers 5xx or nothing)."""
    try:
        response = client.get(f"/reconstruct/status/{job_id}")
    except httpx.HTTPError:
        return None
    return response.json() if response.status_code == 200 else None


def wait_all(client: httpx.Client, ids: list[str], timeout_s: float) -> dict[str, dict]:
    deadline = time.monotonic() + timeout_s
    docs: dict[str, dict] = {}
    while time.monotonic() < deadline:
        for job_id in ids:
            if job_id not in docs or docs[job_id]["state"] not in TERMINAL:
                doc = status(client, job_id)
                if doc is not None:
                    docs[job_id] = doc
        if len(docs) == len(ids) and all(d["state"] in TERMINAL for d in docs.values()):
            return docs
        time.sleep(0.5)
    raise AssertionError(f"jobs still active after {timeout_s:.0f} s: {[d['state'] for d in docs.values()]}")


def submit(client: httpx.Client, name: str, data: bytes, mime: str, field: str = "video", **form) -> str:
    for _ in range(60):  # the ingress may be restarting
        try:
            response = client.post("/reconstruct", files={field: (name, data, mime)}, data=form)
        except httpx.HTTPError:
            response = None
        if response is not None and response.status_code == 202:
            return response.json()["job_id"]
        time.sleep(1.0)
    raise AssertionError("could not submit a job")


@pytest.fixture(scope="module")
def cluster(tiny_model_dir, rembg_dir):
    args = {
        "model_source": str(tiny_model_dir), "model_device": "cpu", "rembg_model": "u2netp",
        "rembg_dir": str(rembg_dir), "default_mc_resolution": 32, "default_num_frames": 2,
        "default_merge": "best", "default_remove_background": False, "upload_limit_bytes": 4_000_000,
    }  # fmt: skip
    # A long batch window so the poison frame and its neighbours' frames meet in one forward pass.
    with cluster_service(
        args, faults=True, reconstruct_user_config={"max_batch_size": 8, "batch_wait_timeout_s": 3.0}
    ) as service:
        yield service


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    return make_ring_video(
        tmp_path_factory.mktemp("chaos") / "ring.mp4", width=160, height=120, fps=12, duration_s=2.0
    ).path


def result_writes(data_dir: Path, job_id: str) -> int:
    """How many times the ingress wrote this job's result (the store logs one `result` event per write)."""
    store = JobStore(data_dir / "jobs.sqlite3")
    try:
        return sum(1 for e in store.events_since(job_id) if e["kind"] == "result")
    finally:
        store.close()


@pytest.mark.timeout(600)
def test_poison_input_ends_worker_crashed_and_its_batch_mates_succeed(cluster, video):
    with httpx.Client(base_url=cluster.url, timeout=60) as client:
        mates = [submit(client, "ring.mp4", video.read_bytes(), "video/mp4") for _ in range(2)]
        poison = submit(client, "p.png", poison_png(), "image/png", field="images", num_frames="1")
        docs = wait_all(client, [*mates, poison], timeout_s=400)
    bad = docs[poison]
    assert bad["state"] == "failed" and bad["error"]["code"] == "worker_crashed", bad
    message = bad["error"]["message"]
    assert "crash" in message and not any(leak in message.lower() for leak in LEAKS), message
    for job_id in mates:
        assert docs[job_id]["state"] == "succeeded", docs[job_id]
        assert result_writes(cluster.data_dir, job_id) == 1
    # They shared a forward pass with the poison frame (so lost it once) and were retried without it.
    assert sum(docs[j]["report"]["retries"].get("reconstruct", 0) for j in mates) >= 1, docs


@pytest.mark.timeout(900)
def test_jobs_survive_killed_replicas_of_every_deployment_and_the_ingress(cluster, video):
    rng = random.Random(7)
    data = video.read_bytes()
    killed: list[str] = []
    stop = threading.Event()

    def killer(client: httpx.Client, ids: list[str]) -> None:
        # Every worker deployment at least once, then the ingress once while jobs run, then more workers.
        plan = ["Preprocess", "Reconstruct", "Export", "Ingress", "Reconstruct", "Preprocess", "Export"]
        for target in plan:
            if stop.wait(3.0):
                return
            # Kill while some job is in that stage (the Ingress: while any job runs, so one has to resume).
            wanted = BUSY_STATES[target]
            deadline = time.monotonic() + 20
            while not stop.is_set() and time.monotonic() < deadline:
                docs = [status(client, j) for j in list(ids)]
                if any(d and d["state"] in wanted for d in docs):
                    break
                time.sleep(0.1)
            pids = cluster.replica_pids(target)
            if not pids:
                continue
            kill9(rng.choice(pids))
            killed.append(target)

    ids: list[str] = []
    with httpx.Client(base_url=cluster.url, timeout=30) as client:
        thread = threading.Thread(target=killer, args=(client, ids), daemon=True)
        thread.start()
        # 12 jobs, then more while the killer is still at work (a fast service would otherwise finish them all
        # before every deployment was hit): at most 3 unfinished at a time, 40 in all, 300 s.
        deadline = time.monotonic() + 300
        while len(ids) < 12 or (thread.is_alive() and len(ids) < 40 and time.monotonic() < deadline):
            docs = [status(client, j) for j in ids] if len(ids) >= 12 else []
            if len(ids) < 12 or sum(1 for d in docs if not d or d["state"] not in TERMINAL) < 3:
                ids.append(submit(client, f"ring{len(ids)}.mp4", data, "video/mp4"))
            time.sleep(1.0)
        try:
            docs = wait_all(client, ids, timeout_s=600)
        finally:
            stop.set()
            thread.join(timeout=120)
    assert {"Preprocess", "Reconstruct", "Export", "Ingress"} <= set(killed), killed
    states = [d["state"] for d in docs.values()]
    assert states == ["succeeded"] * len(ids), [(d["state"], d["error"]) for d in docs.values()]
    writes = [result_writes(cluster.data_dir, job_id) for job_id in ids]
    assert writes == [1] * len(ids), writes
    runs = sum(d["attempts"] for d in docs.values())
    retries = sum(sum(d["report"]["retries"].values()) for d in docs.values())
    print(f"chaos: killed {killed}; {len(ids)}/{len(ids)} succeeded, {runs} runs, {retries} stage retries")
    assert runs >= len(ids)
