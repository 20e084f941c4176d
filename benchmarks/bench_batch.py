"""Items per minute: the Ray Data batch path vs the same items through the HTTP service one by one.

    python benchmarks/bench_batch.py [--items 6] [--num-frames 4] [--mc-resolution 64] [--merge best]
                                     [--model-source DIR]

Both paths run on one private local Ray head (tests/ops/raycluster.py: its own ports and temp dir, a logical
GPU so the fractional-GPU actor/replica schedules) with the same generated ring videos, the same job
parameters, the same model (default: the tiny fixture model, so the numbers measure orchestration and
CPU stages, not a full-size TripoSR forward) and rembg u2netp. `--merge best` is the default because the
TSDF fusion of `fused` costs the same per item on both paths and, on a small CPU machine, dwarfs everything
else; pass `--merge fused` to measure the product default.

- batch: `serve_app.batch.run_batch` from this driver, cold: the wall time includes starting the Ray Data
  workers and loading the model in the actor, as every `ray job submit` run pays it.
- HTTP: the Serve app deployed once (its deploy time is printed apart), one warm-up job, then each item
  POSTed to /reconstruct, polled to `succeeded` and its GLB downloaded before the next one is sent.
Prints the device, each path's wall time and items/min, batch/HTTP as a throughput ratio, and which of the
service's custom metrics (ray_triposr_*) Ray's Prometheus endpoint exported during the HTTP jobs.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script from anywhere: the project and tests/ helpers import
from benchmarks.machine import cpu_name  # noqa: E402


def make_inputs(folder: Path, count: int) -> list[Path]:
    from tests.media import make_ring_video

    folder.mkdir(parents=True, exist_ok=True)
    # Different marker speeds so no two items are byte-identical.
    return [
        make_ring_video(folder / f"tyre{i:02d}.mp4", duration_s=2.0, fps=12, period_s=3.0 + i).path
        for i in range(count)
    ]


def run_batch_path(inputs: Path, out: Path, settings, params) -> tuple[float, dict]:
    from serve_app.batch import Capacity, discover_items, run_batch

    items = discover_items(inputs, out, params)
    capacity = Capacity(gpus_per_actor=0.5, min_actors=1, max_actors=1, batch_size=2)
    start = time.perf_counter()
    summary = run_batch(items, out, settings, capacity)
    return time.perf_counter() - start, summary


def run_http_path(videos: list[Path], warmup: Path, settings, params) -> tuple[float, float]:
    import httpx
    from ray import serve
    from ray.serve.context import _get_global_client

    from serve_app.application import build
    from tests.ops.raycluster import free_port

    serve.start(http_options={"host": "127.0.0.1", "port": free_port()})
    t0 = time.perf_counter()
    serve.run(build(settings), name="triposr", route_prefix="/")
    deploy_s = time.perf_counter() - t0
    url = f"http://127.0.0.1:{_get_global_client().http_config.port}"
    fields = {
        "num_frames": str(params.num_frames),
        "mc_resolution": str(params.mc_resolution),
        "merge": params.merge.value,
    }
    try:
        with httpx.Client(base_url=url, timeout=120) as client:
            _one_job(client, warmup, fields)
            start = time.perf_counter()
            for video in videos:
                _one_job(client, video, fields)
            return time.perf_counter() - start, deploy_s
    finally:
        serve.shutdown()


def _one_job(client, video: Path, fields: dict[str, str]) -> None:
    with video.open("rb") as f:
        response = client.post("/reconstruct", files={"video": (video.name, f, "video/mp4")}, data=fields)
    response.raise_for_status()
    job_id = response.json()["job_id"]
    while True:
        doc = client.get(f"/reconstruct/status/{job_id}").json()
        if doc["state"] in {"succeeded", "failed", "cancelled"}:
            break
        time.sleep(0.1)
    if doc["state"] != "succeeded":
        raise RuntimeError(f"HTTP job for {video.name} ended {doc['state']}: {doc.get('error')}")
    client.get(f"/reconstruct/result/{job_id}").raise_for_status()


def scrape_custom_metrics(port: int, timeout_s: float = 30.0) -> set[str]:
    """Names of the ray_triposr_* series on Ray's Prometheus endpoint (metrics arrive every few seconds)."""
    import httpx

    deadline = time.monotonic() + timeout_s
    names: set[str] = set()
    while time.monotonic() < deadline:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        lines = [line for line in text.splitlines() if line.startswith("ray_triposr_")]
        names = {line.split("{")[0].split(" ")[0] for line in lines}
        if any(n.startswith("ray_triposr_jobs_total") for n in names):
            break
        time.sleep(2)
    return names


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=6)
    parser.add_argument("--num-frames", type=int, default=4)
    parser.add_argument("--mc-resolution", type=int, default=64)
    parser.add_argument("--merge", default="best", choices=["fused", "best", "all"])
    parser.add_argument("--model-source", default=str(ROOT / "tests" / "fixtures" / "tiny"))
    args = parser.parse_args()

    import logging

    # The private head runs with Ray's token auth (tests/ops/raycluster.py); this driver must send the token.
    os.environ["RAY_AUTH_MODE"] = "token"
    import ray

    from pipeline.params import JobParams
    from serve_app.settings import Settings
    from tests.ops.raycluster import start_head

    sys.path.insert(0, str(ROOT / "scripts"))
    from fetch_test_models import DEFAULT_DEST, fetch_u2netp

    logging.basicConfig(level=logging.WARNING)
    rembg_dir = fetch_u2netp(DEFAULT_DEST).parent
    params = JobParams.from_mapping(
        {"num_frames": args.num_frames, "mc_resolution": args.mc_resolution, "merge": args.merge}
    )
    work = Path(tempfile.mkdtemp(prefix="bench-batch-"))
    settings = Settings().merged(
        {
            "data_dir": str(work / "data"),
            "model_source": args.model_source,
            "model_device": "cpu",
            "rembg_model": "u2netp",
            "rembg_dir": str(rembg_dir),
            "default_num_frames": args.num_frames,
            "default_mc_resolution": args.mc_resolution,
        }
    )
    videos = make_inputs(work / "inputs", args.items)
    warmup = make_inputs(work / "warmup", 1)[0]

    head = start_head(num_cpus=4, num_gpus=1)
    try:
        ray.init(address=head.gcs_address, log_to_driver=False,
                 runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})  # fmt: skip
        batch_s, summary = run_batch_path(work / "inputs", work / "batch-out", settings, params)
        http_s, deploy_s = run_http_path(videos, warmup, settings, params)
        exported = scrape_custom_metrics(head.metrics_port)
    finally:
        ray.shutdown()
        head.stop()

    ok = summary["counts"].get("succeeded", 0)
    batch_rate = 60.0 * ok / batch_s
    http_rate = 60.0 * args.items / http_s
    print(f"device: {cpu_name()} ({len(os.sched_getaffinity(0))} cores), no GPU "
          f"(logical GPU for scheduling); model: {args.model_source}")  # fmt: skip
    print(f"items: {args.items} ring videos, num_frames={args.num_frames}, "
          f"mc_resolution={args.mc_resolution}, merge={args.merge}")  # fmt: skip
    print(f"batch (Ray Data, cold, 1 actor @ 0.5 GPU, batch_size 2): {batch_s:7.1f} s  "
          f"{batch_rate:6.2f} items/min  ({ok}/{args.items} succeeded)")  # fmt: skip
    print(
        f"HTTP one by one (warm; deploy took {deploy_s:.1f} s):   {http_s:7.1f} s  {http_rate:6.2f} items/min"
    )
    print(f"batch/HTTP throughput = {batch_rate / http_rate:.2f}x")
    print("custom metrics exported: " + (", ".join(sorted(exported)) or "none within 30 s"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
