"""Frame preprocessing speed: sequential vs seek frame selection on a 1080p 30 s clip, rembg per frame.

    python benchmarks/bench_frames.py [--models-dir models/rembg] [--repeats 3] [--seconds 30]
                                      [--video clip.mp4]

Generates (into a temp folder unless --video is given) a 1920x1080, 30 fps, 30 s H.264 clip of the
turning ring with a keyframe every second (like phone cameras), then times `select_frames(..., 8)` in
both modes on the same file (median of `--repeats` runs after one warm-up run each) and u2netp's mask
time per selected frame. Prints the CPU, frames/s (video frames covered per wall-clock second), frames
decoded, and seek/sequential.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.machine import cpu_name  # noqa: E402
from pipeline.frames import select_frames  # noqa: E402
from pipeline.matting import BackgroundRemover  # noqa: E402
from tests.media import make_ring_video  # noqa: E402


def timed(fn, repeats: int) -> tuple[float, float, object]:
    """(median wall s, median process CPU s, last result) over `repeats` runs after one warm-up run.

    CPU seconds (all threads of this process) are reported beside wall time because a shared machine's load
    inflates wall time far more than CPU time.
    """
    fn()  # warm-up: imports, decoder and scaler set-up, page cache
    walls, cpus, result = [], [], None
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        result = fn()
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
    return statistics.median(walls), statistics.median(cpus), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models-dir", type=Path, default=ROOT / "models" / "rembg")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--num-frames", type=int, default=8)
    parser.add_argument("--video", type=Path, help="use this clip instead of generating one")
    args = parser.parse_args()

    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"device: {cpu_name()}, {os.cpu_count()} logical CPUs, load average {load} (others skew times)")
    with tempfile.TemporaryDirectory() as tmp:
        if args.video:
            path = args.video
        else:
            t0 = time.perf_counter()
            clip = make_ring_video(
                Path(tmp) / "ring1080.mp4",
                width=1920,
                height=1080,
                fps=30,
                duration_s=args.seconds,
                period_s=6.0,
            )
            path = clip.path
            print(
                f"clip: 1920x1080, 30 fps, {clip.num_frames} frames, {path.stat().st_size / 1e6:.1f} MB, "
                f"generated in {time.perf_counter() - t0:.1f} s"
            )

        results = {}
        for mode in ("sequential", "seek", "auto"):
            t, cpu, sel = timed(lambda m=mode: select_frames(path, args.num_frames, mode=m), args.repeats)
            frames = sel.info.num_frames or round(sel.info.duration_s * sel.info.fps)
            results[mode] = (t, cpu)
            print(
                f"select_frames {mode:10s}: median {t * 1000:6.0f} ms wall {cpu * 1000:6.0f} ms CPU  "
                f"{frames / t:6.1f} video frames/s  {sel.decoded_frames:4d} decoded ({sel.mode})  "
                f"chosen at {[c.index for c in sel.candidates]}"
            )
        seq, seek = results["sequential"], results["seek"]
        print(f"seek/sequential = {seek[0] / seq[0]:.2f}x wall, {seek[1] / seq[1]:.2f}x CPU")

        remover = BackgroundRemover("u2netp", args.models_dir, download=False)
        images = [c.image for c in sel.candidates]
        remover.mask(images[0])  # warm-up
        per_frame, per_frame_cpu = [], []
        for img in images:
            w0, c0 = time.perf_counter(), time.process_time()
            remover.mask(img)
            per_frame.append(time.perf_counter() - w0)
            per_frame_cpu.append(time.process_time() - c0)
        h, w = images[0].shape[:2]
        print(
            f"rembg u2netp mask on {w}x{h}: median {statistics.median(per_frame) * 1000:.0f} ms/frame wall, "
            f"{statistics.median(per_frame_cpu) * 1000:.0f} ms CPU (min wall {min(per_frame) * 1000:.0f}, "
            f"max {max(per_frame) * 1000:.0f}, {len(per_frame)} frames)"
        )
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS of this process (clip generation included): {rss:.0f} MB")


if __name__ == "__main__":
    main()
