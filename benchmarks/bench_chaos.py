"""Fault tolerance on a three-node local cluster: what a kill -9 of a replica costs a job, and how soon a job
of a dead ingress runs again.

    python benchmarks/bench_chaos.py                  # tiny model, 4 frames at mc_resolution 64, fused
    python benchmarks/bench_chaos.py --repeats 3

The cluster is tests/ops/servecluster.py's (head: Ingress + data dir; node A: Preprocess + Export; node B:
Reconstruct; worker nodes in their own mount namespace, needs root). First `--baseline` jobs run alone, one at
a time, without faults. Then, for each worker deployment and repeat, one job is submitted and its stage's
replica is killed (-9) while that stage runs; its extra latency is its latency minus the baseline median.
Last, the Ingress replica is killed while a job reconstructs; the time from the kill to the job's next claim
(the `preprocessing` event of its re-run, read from the job store) is the resume time. Prints jobs lost,
duplicate result writes, p50/p95 extra latency per kill and the resume time (targets 0 / 0 / < 15 s).
Not a test.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

STAGE_STATE = {"Preprocess": "preprocessing", "Reconstruct": "reconstructing", "Export": "merging"}


def submit(client: httpx.Client, video: Path) -> str:
    response = client.post("/reconstruct", files={"video": ("ring.mp4", video.read_bytes(), "video/mp4")})
    response.raise_for_status()
    return response.json()["job_id"]


def poll(client: httpx.Client, job_id: str) -> dict | None:
    try:
        response = client.get(f"/reconstruct/status/{job_id}")
    except httpx.HTTPError:
        return None
    return response.json() if response.status_code == 200 else None


def wait_state(client: httpx.Client, job_id: str, states: set[str], timeout_s: float = 600) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        doc = poll(client, job_id)
        if doc is not None and doc["state"] in states | {"succeeded", "failed", "cancelled"}:
            return doc
        time.sleep(0.05)
    raise TimeoutError(f"job {job_id} not in {states} after {timeout_s} s")


def events(data_dir: Path, job_id: str) -> list[dict]:
    from serve_app.jobs import JobStore

    store = JobStore(data_dir / "jobs.sqlite3")
    try:
        return store.events_since(job_id)
    finally:
        store.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2, help="kills per worker deployment")
    parser.add_argument("--baseline", type=int, default=3, help="fault-free jobs for the baseline")
    args = parser.parse_args()

    from datetime import datetime

    from benchmarks.machine import cpu_name
    from tests.media import make_ring_video
    from tests.ops.servecluster import cluster_service, kill9

    print(f"machine: {cpu_name()}; shared with other work, so read differences, not absolute times")
    rembg_dir = ROOT / "models" / "rembg"
    service_args = {
        "model_source": str(ROOT / "tests" / "fixtures" / "tiny"), "model_device": "cpu",
        "rembg_model": "u2netp", "rembg_dir": str(rembg_dir), "default_num_frames": 4,
        "default_mc_resolution": 64, "default_merge": "fused", "default_remove_background": False,
    }  # fmt: skip
    with cluster_service(service_args) as cluster, httpx.Client(base_url=cluster.url, timeout=60) as client:
        video = make_ring_video(cluster.base / "inputs" / "ring.mp4", width=160, height=120, fps=12,
                                duration_s=3.0).path  # fmt: skip
        ids: list[str] = []

        def run_one(kill: str | None) -> float:
            t0 = time.monotonic()
            job_id = submit(client, video)
            ids.append(job_id)
            if kill is not None:
                doc = wait_state(client, job_id, {STAGE_STATE[kill]})
                if doc["state"] == STAGE_STATE[kill]:
                    time.sleep(0.2)
                    for pid in cluster.replica_pids(kill):
                        kill9(pid)
            wait_state(client, job_id, set())
            return time.monotonic() - t0

        run_one(None)  # warm-up: first calls load what each replica imports lazily
        ids.clear()
        base = [run_one(None) for _ in range(args.baseline)]
        base_median = statistics.median(base)
        print(f"baseline: {len(base)} jobs, median {base_median:.2f} s")
        extra: dict[str, list[float]] = {}
        for target in STAGE_STATE:
            for _ in range(args.repeats):
                extra.setdefault(target, []).append(run_one(target) - base_median)
                time.sleep(2.0)  # the replacement replica starts before the next episode

        # Ingress death: kill it while a job reconstructs; the job's re-claim is its resume.
        job_id = submit(client, video)
        ids.append(job_id)
        wait_state(client, job_id, {"reconstructing"})
        killed_at = time.time()
        for pid in cluster.replica_pids("Ingress"):
            kill9(pid)
        wait_state(client, job_id, set(), timeout_s=300)
        claims = [e for e in events(cluster.data_dir, job_id) if e["state"] == "preprocessing"]
        resumed = [datetime.fromisoformat(e["at"]).timestamp() - killed_at for e in claims]
        resumed = [r for r in resumed if r > 0]

        docs = [wait_state(client, j, set()) for j in ids]
        lost = sum(1 for d in docs if d["state"] != "succeeded")
        writes = [sum(1 for e in events(cluster.data_dir, j) if e["kind"] == "result") for j in ids]
        duplicates = sum(max(0, w - 1) for w in writes)
        retries = sum(sum(d["report"].get("retries", {}).values()) for d in docs if d["report"])

    all_extra = sorted(x for xs in extra.values() for x in xs)
    print(f"jobs: {len(ids)}, lost: {lost}, duplicate result writes: {duplicates}, stage retries: {retries}")
    for target, xs in extra.items():
        print(f"kill {target}: extra latency per kill " + ", ".join(f"{x:+.2f} s" for x in xs))
    q = statistics.quantiles(all_extra, n=20, method="inclusive") if len(all_extra) > 1 else all_extra * 19
    print(f"extra latency per kill: p50 {statistics.median(all_extra):.2f} s, p95 {q[18]:.2f} s "
          f"(n={len(all_extra)})")  # fmt: skip
    print("ingress death -> resumed job: " + (f"{resumed[0]:.2f} s" if resumed else "not resumed"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
