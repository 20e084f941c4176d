"""Time fuse_meshes on 8 synthetic tyre frames of ~100k faces each (the size TripoSR gives at resolution 256).

Prints the per-stage breakdown (cleaning, alignment, field, marching cubes, colours) as wall seconds, the
process CPU seconds (honest on a shared machine), and the export time. Seeds are fixed; one warm-up run on
small frames loads the libraries first. Usage: python benchmarks/bench_fusion.py [--frames 8] [--resolution
160] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.machine import cpu_name
from pipeline.export import export_result
from pipeline.fusion import fuse_meshes
from tests import shapes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--resolution", type=int, nargs="+", default=[128, 160])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    # 720 x 70 grid -> 100,800 faces per frame
    truth = shapes.tyre(n_theta=720, n_profile=70)
    turns = np.linspace(0.0, 360.0, args.frames, endpoint=False)
    meshes, _ = shapes.make_frames(truth, turns, seed=0)
    meshes[-1] = shapes.corrupted(meshes[-1], np.random.default_rng(1))
    print(
        f"machine: {cpu_name()}, {os.cpu_count()} cpus, "
        f"load {os.getloadavg()[0]:.1f}"
    )
    print(f"input: {len(meshes)} frames x {len(meshes[0].faces):,} faces (1 corrupted)")

    small, _ = shapes.make_frames(shapes.tyre(n_theta=60, n_profile=16), [0, 90], seed=0)
    fuse_meshes(small, resolution=32)  # warm-up: imports, caches

    for resolution in args.resolution:
        walls, cpus, stages = [], [], []
        for _ in range(args.repeat):
            w0, c0 = time.perf_counter(), time.process_time()
            result = fuse_meshes(meshes, resolution=resolution)
            walls.append(time.perf_counter() - w0)
            cpus.append(time.process_time() - c0)
            stages.append((result.report["timings_s"], result.report["cpu_s"]))
        with tempfile.TemporaryDirectory() as tmp:
            e0 = time.perf_counter()
            export_result(result, Path(tmp) / "out.glb")
            export_s = time.perf_counter() - e0
        med = {k: statistics.median(s[0][k] for s in stages) for k in stages[0][0]}
        med_cpu = {k: statistics.median(s[1][k] for s in stages) for k in stages[0][1]}
        print(
            f"\nresolution {resolution}: median of {args.repeat}: wall {statistics.median(walls):.2f} s, "
            f"cpu {statistics.median(cpus):.2f} s; output {result.report['faces']:,} faces, "
            f"rejected {[f['index'] for f in result.report['frames_rejected']]}"
        )
        for key in ("clean", "align", "field", "marching_cubes", "colours"):
            print(
                f"  {key:15s} wall {med[key]:6.2f} s  cpu {med_cpu[key]:6.2f} s"
                f"  ({med_cpu[key] / med_cpu['total']:5.1%} of cpu)"
            )
        print(f"  {'export (glb)':15s} {export_s:6.2f} s")


if __name__ == "__main__":
    main()
