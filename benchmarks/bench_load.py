"""Heavy load on the HTTP service (loopback only, bounded): status latency, overload answers, slow uploads.

    python benchmarks/bench_load.py                       # tiny model, u2netp; about 3 minutes
    python benchmarks/bench_load.py --clients 100 --phase-s 20

An asyncio + aiohttp harness against a real local Ray Serve app (tiny TripoSR, rembg u2netp), three phases:

1. `--clients` concurrent clients while 4 jobs run: half poll `GET /reconstruct/status/{id}` (every
   `--poll-s`), half hold `GET /reconstruct/events/{id}` SSE streams. Prints status p50/p99 and errors.
2. 5 x `max_queued_jobs` submissions at once with jobs already running: prints p99 time to the 503 answers,
   how many were accepted, and the ingress replica's RSS before and after.
3. `--clients` slow-drip uploads (1 KB every 0.25 s) and then 8 full-speed 3 MB uploads, while `/healthz` is
   probed every 50 ms: prints `/healthz` p50/p99 under each.

Targets from issue 10: status p99 < 100 ms with 0 errors, 503 p99 < 100 ms, ingress RSS growth < 64 MB,
`/healthz` p99 < 200 ms under slow drip (< 50 ms under 8 uploads). Wall times on a shared machine move with
its load; the process CPU seconds of the harness are printed too. Not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MAX_QUEUED_JOBS = 20
TERMINAL = {"succeeded", "failed", "cancelled"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def ms(values: list[float]) -> str:
    return f"p50 {pct(values, 50) * 1000:.1f} ms, p99 {pct(values, 99) * 1000:.1f} ms (n={len(values)})"


def ingress_pid() -> int | None:
    from tests.hostile.replicas import replica_pids

    return next((pid for name, pid in replica_pids().items() if "#Ingress#" in name), None)


def cpu_s(pid: int | None) -> float:
    """User + system CPU seconds of a process so far (the ingress replica's cost, load-independent)."""
    import psutil

    if not pid:
        return float("nan")
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


def rss_mb(pid: int | None) -> float:
    import psutil

    return psutil.Process(pid).memory_info().rss / 1024**2 if pid else float("nan")


def form(video: bytes, **fields: str):
    import aiohttp

    data = aiohttp.FormData()
    data.add_field("video", video, filename="ring.mp4", content_type="video/mp4")
    for name, value in fields.items():
        data.add_field(name, value)
    return data


async def submit(client, video: bytes, **fields) -> tuple[int, float, str | None]:
    t0 = time.perf_counter()
    async with client.post("/reconstruct", data=form(video, **fields)) as response:
        doc = await response.json(content_type=None)
        status = response.status
    return status, time.perf_counter() - t0, doc.get("job_id") if status == 202 else None


async def get_json(client, path: str) -> dict:
    async with client.get(path) as response:
        return await response.json(content_type=None)


async def wait_all(client, job_ids: list[str], timeout_s: float) -> dict[str, str]:
    states: dict[str, str] = {}
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and len(states) < len(job_ids):
        for job_id in job_ids:
            if job_id not in states:
                state = (await get_json(client, f"/reconstruct/status/{job_id}"))["state"]
                if state in TERMINAL:
                    states[job_id] = state
        await asyncio.sleep(0.5)
    return states


def session(url: str, connections: int, timeout_s: float):
    """One aiohttp session for many simulated clients: its pool costs the harness little CPU (httpx's
    pool, with hundreds of connections, took most of a core of this 2-core machine from the service)."""
    import aiohttp

    return aiohttp.ClientSession(
        url, connector=aiohttp.TCPConnector(limit=connections), timeout=aiohttp.ClientTimeout(total=timeout_s)
    )


async def phase_status_and_sse(client, url: str, video: bytes, clients: int, poll_s: float, seconds: float):
    import aiohttp

    jobs = [(await submit(client, video))[2] for _ in range(4)]
    latencies: list[float] = []
    errors: list[str] = []
    stop = time.monotonic() + seconds

    async def poller(i: int, c) -> None:
        job_id = jobs[i % len(jobs)]
        await asyncio.sleep(poll_s * i / clients)  # spread the pollers over the period, as real clients are
        while time.monotonic() < stop:
            t0 = time.perf_counter()
            try:
                async with c.get(f"/reconstruct/status/{job_id}") as r:
                    await r.read()
                    latencies.append(time.perf_counter() - t0)
                    if r.status != 200:
                        errors.append(f"status {r.status}")
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                errors.append(type(exc).__name__)
            await asyncio.sleep(poll_s)

    async def streamer(i: int, c) -> None:
        job_id = jobs[i % len(jobs)]
        while time.monotonic() < stop:  # reopen after the job ends, so the stream count stays up
            try:
                async with c.get(f"/reconstruct/events/{job_id}") as r:
                    if r.status != 200:
                        errors.append(f"sse {r.status}")
                        return
                    async for _ in r.content:
                        if time.monotonic() > stop:
                            return
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                errors.append(f"sse {type(exc).__name__}")
                return
            await asyncio.sleep(poll_s)

    async with session(url, clients + 10, seconds + 60) as c:
        await asyncio.gather(*(poller(i, c) if i % 2 else streamer(i, c) for i in range(clients)))
    states = await wait_all(client, jobs, timeout_s=300)
    ok = sum(1 for s in states.values() if s == "succeeded")
    print(f"[1] {clients} clients ({clients // 2} polling every {poll_s}s, {clients - clients // 2} SSE) for "
          f"{seconds:.0f}s beside 4 jobs: status {ms(latencies)}, errors {len(errors)} "
          f"{sorted(set(errors))[:5]}; jobs succeeded {ok}/4")  # fmt: skip


async def phase_overload(client, video: bytes, max_queued: int):
    pid = ingress_pid()
    before = rss_mb(pid)
    results = await asyncio.gather(*(submit(client, video) for _ in range(5 * max_queued)))
    refused = [t for status, t, _ in results if status == 503]
    accepted = [job for status, _, job in results if status == 202]
    others = sorted({status for status, _, _ in results if status not in (202, 503)})
    after = rss_mb(pid)
    for job_id in accepted:  # free the cluster for the next phase
        async with client.delete(f"/jobs/{job_id}") as r:
            await r.read()
    print(f"[2] {5 * max_queued} submissions at once (max_queued_jobs {max_queued}): "
          f"{len(accepted)} accepted, {len(refused)} got 503, other statuses {others}; "
          f"time to 503 {ms(refused)}; ingress RSS "
          f"{before:.0f} MB -> {after:.0f} MB (+{after - before:.1f} MB)")  # fmt: skip


async def probe_healthz(url: str, stop: asyncio.Event, out: list[float], errors: list[str]) -> None:
    import aiohttp

    async with session(url, 2, 10) as c:
        while not stop.is_set():
            t0 = time.perf_counter()
            try:
                async with c.get("/healthz") as r:
                    await r.read()
                    out.append(time.perf_counter() - t0)
                    if r.status != 200:
                        errors.append(str(r.status))
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                errors.append(type(exc).__name__)
            await asyncio.sleep(0.05)


async def phase_uploads(url: str, clients: int, seconds: float):
    import aiohttp

    head = b'--bnd\r\nContent-Disposition: form-data; name="video"; filename="drip.bin"\r\n\r\n'
    tail = b"\r\n--bnd--\r\n"
    headers = {"Content-Type": "multipart/form-data; boundary=bnd"}

    async def drip():
        yield head
        stop = time.monotonic() + seconds
        while time.monotonic() < stop:
            yield b"d" * 1024
            await asyncio.sleep(0.25)
        yield tail

    async def fast():
        yield head
        for _ in range(48):
            yield os.urandom(64 * 1024)
        yield tail

    for label, body, n in (("slow-drip", drip, clients), ("full-speed 3 MB", fast, 8)):
        healthz: list[float] = []
        errors: list[str] = []
        statuses: list[int] = []
        stop = asyncio.Event()
        probe = asyncio.create_task(probe_healthz(url, stop, healthz, errors))

        async def upload(c) -> None:
            try:
                async with c.post("/reconstruct", data=body(), headers=headers) as r:  # noqa: B023
                    await r.read()
                    statuses.append(r.status)  # noqa: B023
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                errors.append(f"upload {type(exc).__name__}")  # noqa: B023

        async with session(url, n + 5, seconds + 60) as c:
            await asyncio.gather(*(upload(c) for _ in range(n)))
        stop.set()
        await probe
        print(f"[3] /healthz under {n} {label} uploads: {ms(healthz)}, errors {len(errors)} "
              f"{sorted(set(errors))[:5]}; upload answers {sorted(set(statuses))}")  # fmt: skip


async def run(url: str, video: bytes, args: argparse.Namespace) -> None:
    pid = ingress_pid()
    async with session(url, 200, 120) as client:
        c0 = cpu_s(pid)
        await phase_status_and_sse(client, url, video, args.clients, args.poll_s, args.phase_s)
        c1 = cpu_s(pid)
        # jobs that occupy the runners, so the next submissions queue up to the limit
        running = [(await submit(client, video))[2] for _ in range(4)]
        await phase_overload(client, video, MAX_QUEUED_JOBS)
        c2 = cpu_s(pid)
        print(f"ingress replica CPU s: phase 1 {c1 - c0:.1f}, phase 2 {c2 - c1:.1f}")
        for job_id in running:
            async with client.delete(f"/jobs/{job_id}") as r:
                await r.read()


async def run_uploads(url: str, args: argparse.Namespace) -> None:
    pid = ingress_pid()
    c0 = cpu_s(pid)
    await phase_uploads(url, args.clients, args.phase_s)
    print(f"ingress replica CPU s: phase 3 {cpu_s(pid) - c0:.1f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clients", type=int, default=200)
    ap.add_argument("--poll-s", type=float, default=0.5)
    ap.add_argument("--phase-s", type=float, default=20.0, help="seconds of phase 1 and of the slow drip")
    ap.add_argument("--ingress-max-ongoing", type=int, default=None, help="default: serve_config.yaml's")
    args = ap.parse_args()

    import ray
    import yaml
    from ray import serve

    from serve_app.application import build
    from serve_app.exposure import PROXY_CALLBACK, PROXY_CALLBACK_ENV
    from serve_app.settings import Settings
    from tests.media import make_ring_video

    config = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    ingress = next(d for d in config["applications"][0]["deployments"] if d["name"] == "Ingress")
    max_ongoing = args.ingress_max_ongoing or ingress["max_ongoing_requests"]
    tmp = Path(tempfile.mkdtemp(prefix="bench_load_"))
    video = make_ring_video(tmp / "ring.mp4", width=160, height=120, fps=12, duration_s=2.0).path.read_bytes()
    settings = Settings().merged({
        "data_dir": str(tmp / "data"), "model_source": str(ROOT / "tests" / "fixtures" / "tiny"),
        "model_device": "cpu", "rembg_model": "u2netp", "rembg_dir": str(ROOT / "models" / "rembg"),
        "default_mc_resolution": 32, "default_num_frames": 2, "max_queued_jobs": MAX_QUEUED_JOBS,
        "upload_limit_bytes": 8_000_000, "min_free_disk_bytes": 0,
        "max_queued_jobs_per_client": 10_000,  # one client address here: measure the global limit's 503
    })  # fmt: skip
    os.environ.setdefault(PROXY_CALLBACK_ENV, PROXY_CALLBACK)
    ray.init(
        num_cpus=6, num_gpus=1, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}},
    )  # fmt: skip
    port = free_port()
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        options = {"Ingress": {"max_ongoing_requests": max_ongoing,
                               "max_queued_requests": ingress.get("max_queued_requests", -1)}}  # fmt: skip
        serve.run(build(settings, options), name="bench_load", route_prefix="/")
        print(f"ingress max_ongoing_requests {max_ongoing}, max_queued_requests "
              f"{ingress.get('max_queued_requests')}; {os.cpu_count()} CPUs, load average "
              f"{os.getloadavg()[0]:.1f}")  # fmt: skip
        cpu0 = time.process_time()
        t0 = time.perf_counter()
        asyncio.run(run(f"http://127.0.0.1:{port}", video, args))
        # Uploads in flight count against max_queued_jobs (the burst of phase 2 is refused before its bodies
        # are read), so phase 3 runs with a queue limit above its upload count: all of them are read.
        serve.run(
            build(settings.merged({"max_queued_jobs": 10 * args.clients}), options),
            name="bench_load", route_prefix="/",
        )  # fmt: skip
        asyncio.run(run_uploads(f"http://127.0.0.1:{port}", args))
        print(f"harness: {time.perf_counter() - t0:.0f} s wall, {time.process_time() - cpu0:.1f} s CPU")
    finally:
        serve.shutdown()
        ray.shutdown()


if __name__ == "__main__":
    main()
