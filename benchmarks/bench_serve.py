"""Service overhead: the same job through HTTP (`triposr-serve start`, as a user runs it) vs in-process.

    python benchmarks/bench_serve.py --model-source /tmp/fullckpt   # from shared/tools/make_full_ckpt.py
    python benchmarks/bench_serve.py --model-source tests/fixtures/tiny --frames 8 --repeats 3

Both paths run the same stage functions (pipeline/runner.py) on the same generated ring video with the same
parameters (default: 1 frame, mc_resolution 128): preprocess (u2netp) -> encode + marching cubes -> fuse ->
export. The in-process path runs in this process before the service starts and again after it stopped (an
idle Ray does not steal its CPU, and the machine's drift is seen); in between, `triposr-serve start` runs as a
subprocess with its own sizing for this machine (the CPU shares and torch threads a user gets), and the job is
submitted over HTTP, followed and downloaded. Prints median seconds of each and `http/in_process`. Not a test.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

FULL_CKPT = Path("/tmp/fullckpt")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def in_process(video: Path, out_dir: Path, params, settings, repeats: int, warmup: int) -> list[float]:
    import numpy as np
    import torch

    from pipeline.matting import BackgroundRemover
    from pipeline.runner import run_pipeline
    from triposr import load_model

    torch.manual_seed(0)
    torch.set_num_threads(settings.torch_threads)
    model = load_model(settings.model_source, device="cpu", chunk_size=settings.chunk_size)
    remover = BackgroundRemover(settings.rembg_model, settings.rembg_dir, download=False)
    with torch.inference_mode():  # the same small warm-up encode a Reconstruct replica does in __init__
        model.encode([np.full((64, 64, 3), 128, np.uint8)])
    times = []
    for i in range(warmup + repeats):
        t0 = time.perf_counter()
        report = run_pipeline(video, out_dir / f"local_{i}.glb", params, model=model, remover=remover)
        elapsed = time.perf_counter() - t0
        print(f"  in-process run {i}{' (warm-up)' if i < warmup else ''}: {elapsed:.2f}s {_stages(report)}")
        if i >= warmup:
            times.append(elapsed)
    del model
    return times


def over_http(video: Path, params, settings, repeats: int, warmup: int) -> list[float]:
    import subprocess

    import httpx

    port = free_port()
    cmd = [sys.executable, "-m", "serve_app.cli", "start", "--port", str(port),
           "--data-dir", str(settings.data_dir), "--model-source", settings.model_source,
           "--rembg-model", settings.rembg_model, "--rembg-dir", str(settings.rembg_dir)]  # fmt: skip
    service = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 600
        while True:
            if service.poll() is not None:
                raise RuntimeError("triposr-serve start exited")
            try:
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("service not ready in 600 s")
            time.sleep(0.5)
        times = []
        cpu: dict[str, float] = {}
        with httpx.Client(base_url=base, timeout=600) as client:
            for i in range(warmup + repeats):
                before = cpu_by_process(service.pid)
                t0 = time.perf_counter()
                with video.open("rb") as f:
                    response = client.post(
                        "/reconstruct", files={"video": (video.name, f)}, data=_form(params)
                    )
                response.raise_for_status()
                job_id = response.json()["job_id"]
                # Follow the job as the CLI does (SSE), not by polling: 20 status requests a second would
                # cost the 2-core machine a share of a core that the job itself needs.
                with client.stream("GET", f"/reconstruct/events/{job_id}") as events:
                    for line in events.iter_lines():
                        if line.startswith("data: ") and '"state": "' in line:
                            state = json.loads(line[6:])["state"]
                            if state in ("succeeded", "failed", "cancelled"):
                                break
                doc = client.get(f"/reconstruct/status/{job_id}").json()
                if doc["state"] != "succeeded":
                    raise RuntimeError(f"job failed: {doc['error']}")
                glb = client.get(f"/reconstruct/result/{job_id}")
                glb.raise_for_status()
                elapsed = time.perf_counter() - t0
                print(f"  http run {i}{' (warm-up)' if i < warmup else ''}: {elapsed:.2f}s "
                      f"{_stages({'timings': doc['timings']})}")  # fmt: skip
                if i >= warmup:
                    times.append(elapsed)
                    for pid, (name, secs) in cpu_by_process(service.pid).items():
                        name = name.split(".")[0]  # an actor's title names the method it runs now
                        cpu[name] = cpu.get(name, 0.0) + secs - before.get(pid, (name, 0.0))[1]
        total = sum(times)
        print("  service CPU per second of HTTP job, by process (the Reconstruct replica is the forward):")
        for name, secs in sorted(cpu.items(), key=lambda kv: -kv[1])[:8]:
            print(f"    {secs / total:6.3f}  {name}")
        print(f"    {sum(cpu.values()) / total:6.3f}  all")
        return times
    finally:
        import signal

        service.send_signal(signal.SIGINT)
        service.wait(timeout=60)


def cpu_by_process(root: int) -> dict[int, tuple[str, float]]:
    """Title and CPU seconds so far of every process under `root` (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            pid, rest = stat.read_text().split(" (", 1)
            children.setdefault(int(rest.rsplit(") ", 1)[1].split()[1]), []).append(int(pid))
        except (OSError, ValueError, IndexError):
            continue
    out: dict[int, tuple[str, float]] = {}
    todo = [root]
    while todo:
        pid = todo.pop()
        todo += children.get(pid, [])
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()
            title = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
        except (OSError, IndexError):
            continue
        ticks = int(fields[11]) + int(fields[12])
        out[pid] = (title.rsplit("/", 1)[-1][:60], ticks / os.sysconf("SC_CLK_TCK"))
    return out


def _form(params) -> dict[str, str]:
    return {
        k: str(v).lower() if isinstance(v, bool) else str(v)
        for k, v in params.to_dict().items()
        if v is not None
    }


def _stages(report: dict) -> str:
    t = report["timings"]
    return " ".join(f"{k}={t[k]:.2f}" for k in ("queue_wait", "preprocess", "reconstruct", "merge") if k in t)


def main() -> None:
    from pipeline.params import JobParams
    from serve_app.settings import Settings
    from tests.media import make_ring_video

    default_model = (
        FULL_CKPT if (FULL_CKPT / "model.ckpt").is_file() else ROOT / "tests" / "fixtures" / "tiny"
    )
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model-source", default=str(default_model))
    ap.add_argument("--frames", type=int, default=1)
    ap.add_argument("--mc-resolution", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2, help="torch threads in-process")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        video = make_ring_video(tmp_path / "ring.mp4", width=320, height=240, fps=24, duration_s=4.0).path
        settings = Settings().merged(
            {
                "data_dir": str(tmp_path / "data"),
                "model_source": args.model_source,
                "model_device": "cpu",
                "rembg_model": "u2netp",
                "rembg_dir": str(ROOT / "models" / "rembg"),
                "torch_threads": args.threads,
            }
        )
        params = JobParams(num_frames=args.frames, mc_resolution=args.mc_resolution)
        import torch

        print(
            f"device: CPU ({os.cpu_count()} cores, torch {torch.__version__}, {args.threads} threads); "
            f"model {args.model_source}; {args.frames} frames, mc_resolution {args.mc_resolution}"
        )
        # In-process before and after the service (A-B-A): this machine's speed drifts by 10 % over minutes,
        # and one in-process block before would charge that drift to the service.
        before = in_process(video, tmp_path, params, settings, args.repeats, args.warmup)
        http = over_http(video, params, settings, args.repeats, args.warmup)
        after = in_process(video, tmp_path, params, settings, args.repeats, args.warmup)

    local = before + after
    med_local, med_http = statistics.median(local), statistics.median(http)
    print(f"in-process medians before / after the service: {statistics.median(before):.2f} / "
          f"{statistics.median(after):.2f} s")  # fmt: skip
    print(f"in-process median: {med_local * 1000:.0f} ms  ({', '.join(f'{t:.2f}' for t in local)} s)")
    print(f"http       median: {med_http * 1000:.0f} ms  ({', '.join(f'{t:.2f}' for t in http)} s)")
    print(
        f"http/in_process = {med_http / med_local:.3f}x  (overhead {100 * (med_http / med_local - 1):+.1f}%)"
    )


if __name__ == "__main__":
    main()
