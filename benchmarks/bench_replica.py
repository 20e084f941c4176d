"""Reconstruct replica pipelining: frames/s of `pipeline.reconstructor.Reconstructor` with batches of 8
frames and two batches in flight (what the deployment's `@serve.batch(max_concurrent_batches=2)` gives),
before (device lock held through marching cubes and mesh building, the old replica) and after (lock only
around encode and the density and colour queries), alternated in one run on the same model and frames.

    python benchmarks/bench_replica.py                                  # tiny fixture model (fast)
    python benchmarks/bench_replica.py --model /tmp/fullckpt --batches 2  # full size (minutes on CPU)

Prints frames/s, process CPU seconds, and the share of wall time the device lock was held ("model busy").
On a CPU-only machine the "device" is the same cores the CPU pool uses, so overlap buys far less than on a
GPU, where the device would otherwise sit idle during marching cubes. Not a test.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.bench_model import ring_image  # noqa: E402
from benchmarks.machine import cpu_name  # noqa: E402
from pipeline.parallel import cpu_workers  # noqa: E402
from pipeline.reconstructor import Reconstructor  # noqa: E402


def run(recon: Reconstructor, frames: list[np.ndarray], res: int, batches: int, pipelined: bool) -> dict:
    """`batches` batches of all `frames`, two callers in flight; returns frames/s, CPU s, busy share."""
    todo = list(range(batches))
    lock = threading.Lock()
    before = recon.stats()

    def caller() -> None:
        while True:
            with lock:
                if not todo:
                    return
                todo.pop()
            if pipelined:
                recon.reconstruct(frames, [res] * len(frames))
            else:
                with recon.device_lock:  # the old replica: everything under the device lock
                    recon.reconstruct(frames, [res] * len(frames))

    wall, cpu = time.perf_counter(), time.process_time()
    threads = [threading.Thread(target=caller) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    after = recon.stats()
    device = after["device_s"] - before["device_s"]  # seconds in encode + queries, either way
    return {"fps": batches * len(frames) / wall, "wall": wall, "cpu": cpu, "busy": device / wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=str(ROOT / "tests/fixtures/tiny"))
    ap.add_argument("--frames", type=int, default=8, help="frames per batch")
    ap.add_argument("--batches", type=int, default=4, help="batches per measurement")
    ap.add_argument("--rounds", type=int, default=2, help="before/after alternations")
    ap.add_argument("--resolution", type=int, default=256)
    ap.add_argument("--cpu-workers", type=int, default=0, help="CPU pool size (0 = this process's CPUs)")
    args = ap.parse_args()

    import torch

    import triposr

    model = triposr.load_model(args.model, "cpu")
    workers = args.cpu_workers or cpu_workers()
    recon = Reconstructor(model, cpu_workers=workers, overlap=True)  # "before" holds the lock itself
    rng = np.random.default_rng(0)
    base = ring_image(model.config.cond_image_size)
    frames = [np.roll(base, int(s), axis=1) for s in rng.integers(-20, 20, args.frames)]
    print(f"machine: {cpu_name()}, {os.cpu_count()} cpus, load {os.getloadavg()[0]:.1f}; torch "
          f"{torch.get_num_threads()} threads, CPU pool {workers}; model {args.model}; "
          f"{args.batches} x {args.frames} frames at mesh@{args.resolution}, 2 in flight")  # fmt: skip
    run(recon, frames[:2], args.resolution, 1, True)  # warm-up
    results: dict[str, list[dict]] = {"before": [], "after": []}
    for rnd in range(args.rounds):
        for name in ["before", "after"] if rnd % 2 == 0 else ["after", "before"]:
            r = run(recon, frames, args.resolution, args.batches, pipelined=name == "after")
            results[name].append(r)
            print(f"  round {rnd + 1} {name:6s}: {r['fps']:.3f} frames/s, {r['wall']:.1f} s wall, "
                  f"{r['cpu']:.1f} s CPU, model busy {r['busy']:.0%} of wall", flush=True)  # fmt: skip
    med = {k: {m: float(np.median([r[m] for r in v])) for m in v[0]} for k, v in results.items()}
    b, a = med["before"], med["after"]
    print(f"before: {b['fps']:.3f} frames/s, model busy {b['busy']:.0%}; after: {a['fps']:.3f} frames/s, "
          f"model busy {a['busy']:.0%}; after/before = {a['fps'] / b['fps']:.3f}x frames/s, "
          f"{a['cpu'] / b['cpu']:.3f}x CPU s")  # fmt: skip
    recon.close()


if __name__ == "__main__":
    main()
